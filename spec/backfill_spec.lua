-- Specs for the backfill (minimix_backfill.lib.lua) through mod_minimix.lua
-- loaded into a mocked Prosody `module`: after a 332 re-join, the room's
-- archive is read page by page into the room log, within its bounds.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire, tick_timer = mock.load_shim, mock.new_session, mock.fire, mock.tick_timer;
local advance, room_presence = mock.advance, mock.room_presence;

local ROOM = "room@muc.example";
local MUC = "http://jabber.org/protocol/muc";
local MAM = "urn:xmpp:mam:2";
local RSM = "http://jabber.org/protocol/rsm";
local DISCO = "http://jabber.org/protocol/disco#info";
local SID = "urn:xmpp:sid:0";

local function groupchat(nick, body, sid)
	return st.message({ from = ROOM .. "/" .. nick, to = "alice@localhost", type = "groupchat" })
		:text_tag("body", body)
		:tag("stanza-id", { xmlns = SID, by = ROOM, id = sid }):up();
end

-- A result of query qid: the archived message id, forwarded from `from`
-- (default the room's bob), sent by `by` (default the room).
local function result(qid, id, body, opts)
	opts = opts or {};
	return st.message({ from = opts.by or ROOM, to = "alice@localhost" })
		:tag("result", { xmlns = MAM, queryid = qid, id = id })
			:tag("forwarded", { xmlns = "urn:xmpp:forward:0" })
				:tag("delay", { xmlns = "urn:xmpp:delay", stamp = opts.stamp or "2023-11-14T22:00:00Z" }):up()
				:tag("message", { xmlns = "jabber:client", from = opts.from or ROOM .. "/bob",
					type = opts.type or "groupchat" })
					:tag("body", { xmlns = "jabber:client" }):text(body):up()
				:up()
			:up()
		:up();
end

local function logged(env)
	local out = {};
	for _, e in ipairs(env.logged) do
		out[#out+1] = e.value:get_child_text("body");
	end
	return out;
end

-- alice is in ROOM; bob said "pre" (logged); the room shuts down (332)
-- and the account joins again.  answer(iq, page) answers the archive's
-- queries (after the disco#info, which advertises MAM unless no_mam).
local function gap(options, answer, no_mam)
	local env = load_shim(options);
	local P = new_session(env, "phone");
	local tick = tick_timer(env);
	-- the room's disco#info, asked as the account with each join
	env.on_ask = function(iq)
		local reply = st.reply(iq):tag("query", { xmlns = DISCO });
		if not no_mam then reply:tag("feature", { var = MAM }):up(); end
		fire(env, "iq/bare", nil, reply:up());
	end
	fire(env, "pre-presence/full", P, st.presence({ to = ROOM .. "/alice", id = "j1" })
		:tag("x", { xmlns = MUC }):up());
	fire(env, "presence/bare", nil, room_presence(ROOM, "alice", { 110 }));
	fire(env, "message/bare", nil, groupchat("bob", "pre", "sid-pre"));
	advance(env, 1);
	env.queries = {};
	env.on_send_iq = function(iq)
		local q = iq:get_child("query", MAM);
		env.queries[#env.queries+1] = q;
		return answer(env, iq, q.attr.queryid, #env.queries);
	end
	fire(env, "presence/bare", nil, room_presence(ROOM, "alice", { 110, 332 }, { type = "unavailable" }));
	tick.fn();
	env.clock = env.clock + 5;
	tick.fn();
	P.got = {};
	fire(env, "presence/bare", nil, room_presence(ROOM, "alice", { 110 }));
	advance(env, 1);
	return env, P;
end

local function fin(iq, last, complete)
	return st.reply(iq):tag("fin", { xmlns = MAM, complete = complete and "true" or nil })
		:tag("set", { xmlns = RSM }):text_tag("last", last):up():up();
end

describe("backfill", function()
	it("reads the archive after the log's newest message, in order, into the log only", function()
		local env, P = gap(nil, function(env, iq, qid, page)
			fire(env, "message/bare", nil, result(qid, "a" .. page, "archived " .. page));
			return fin(iq, "a" .. page, page == 2);
		end);
		assert.equal(2, #env.queries);
		local set = env.queries[1]:get_child("set", RSM);
		assert.equal("sid-pre", set:get_child_text("after"), "after the log's newest stanza-id");
		assert.equal("a1", env.queries[2]:get_child("set", RSM):get_child_text("after"));
		assert.same({ "pre", "archived 1", "archived 2" }, logged(env));
		for _, s in ipairs(P.got) do
			assert.is_nil(s:get_child("result", MAM), "nothing of it reaches the sessions");
		end
	end);

	it("writes only groupchat messages the room forwards as its own", function()
		local env = gap(nil, function(env, iq, qid)
			fire(env, "message/bare", nil, result(qid, "x1", "another room's", { by = "other@muc.example" }));
			fire(env, "message/bare", nil, result(qid, "x2", "not from the room", { from = "other@muc.example/bob" }));
			fire(env, "message/bare", nil, result(qid, "x3", "a chat", { type = "chat" }));
			fire(env, "message/bare", nil, result(qid, "x4", "in the future", { stamp = "2099-01-01T00:00:00Z" }));
			fire(env, "message/bare", nil, result(qid, "ok", "the room's"));
			return fin(iq, "ok", true);
		end);
		assert.same({ "pre", "the room's" }, logged(env));
	end);

	it("stops at minimix_backfill_max_pages of an archive that never completes", function()
		local env = gap({ minimix_backfill_max_pages = 3 }, function(env, iq, qid, page)
			fire(env, "message/bare", nil, result(qid, "p" .. page, "page " .. page));
			return fin(iq, "p" .. page);
		end);
		assert.equal(3, #env.queries);
		assert.same({ "pre", "page 1", "page 2", "page 3" }, logged(env));
	end);

	it("stops when the archive's pages do not advance", function()
		local env = gap(nil, function(env, iq, qid)
			fire(env, "message/bare", nil, result(qid, "same", "same"));
			return fin(iq, "same");
		end);
		assert.equal(2, #env.queries, "the second page ends where the first did");
		assert.same({ "pre", "same" }, logged(env));
	end);

	it("takes at most the page it asked for", function()
		local env = gap(nil, function(env, iq, qid)
			local max = tonumber(iq:get_child("query", MAM):get_child("set", RSM):get_child_text("max"));
			for i = 1, max + 20 do
				fire(env, "message/bare", nil, result(qid, "r" .. i, "r" .. i));
			end
			return fin(iq, "r" .. (max + 20), true);
		end);
		assert.equal(1 + 100, #logged(env));
	end);

	it("does nothing for a room without an archive, and holds nothing back", function()
		local env = gap(nil, function() error("no query expected"); end, true);
		assert.equal(0, #env.queries);
		fire(env, "message/bare", nil, groupchat("bob", "after", "sid-after"));
		advance(env, 1);
		assert.same({ "pre", "after" }, logged(env));
	end);
end);
