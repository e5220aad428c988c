-- Specs for withdrawals on the file store (minimix_log.lib.lua): kept per
-- room and applied to every read of the log, written by a background pass
-- in one rewrite per room at most every minimix_withdraw_interval seconds,
-- and kept across a restart.
local st = require "util.stanza";

local ROOM = "room@muc.example";
local RETRACT = "urn:xmpp:message-retract:1";

local log_mock = require "log_mock";
local load_log, advance = log_mock.load_log, log_mock.advance;

local function said(nick, body, sid)
	local m = st.message({ from = ROOM .. "/" .. nick, type = "groupchat", to = "alice@localhost" });
	if body then m:text_tag("body", body); end
	m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = sid }):up();
	return m;
end

local function deliver(env, stanza)
	local nick = stanza.attr.from:match("/(.*)$");
	env.lib.message("alice@localhost", ROOM, nick, stanza, { stamp = env.clock + 0.25, delayed = false });
end

local function retract(env, nick, sid)
	local r = said(nick, nil, "r-" .. sid);
	r:tag("retract", { xmlns = RETRACT, id = sid }):up();
	return env.lib.withdraw("alice@localhost", ROOM, env.lib.withdrawal(r, nick), r, nil);
end

-- The stored item with the room's stanza-id sid (of store, default the log).
local function stored(env, sid, store)
	for _, it in ipairs(env.stores[store or "minimix_log"].items) do
		local m = log_mock.message_of(it.value);
		if m:get_child("stanza-id", "urn:xmpp:sid:0").attr.id == sid then return m; end
	end
end

-- What a device's catch-up gets: sid -> body, or "tombstone"
local function catch_up(env)
	local out = {};
	for _, p in ipairs(env.lib.replay(ROOM, { spans = { { 1600000000 } }, maxstanzas = 1000 })) do
		local m = p[1];
		local sid = m:get_child("stanza-id", "urn:xmpp:sid:0").attr.id;
		out[sid] = m:get_child("retracted", RETRACT) and "tombstone" or m:get_child_text("body");
	end
	return out;
end

local function room(env, n)
	for i = 1, n do deliver(env, said("dan", "m" .. i, "s" .. i)); end
	advance(env, 1);
end

describe("withdrawals on the file store", function()
	it("wait for the pass, the catch-up and the log's find giving the tombstone meanwhile", function()
		local env = load_log(nil, "internal");
		room(env, 3);
		retract(env, "dan", "s2");
		assert.equal("m2", stored(env, "s2"):get_child_text("body"), "not rewritten yet");
		assert.is_nil(env.rewrites[ROOM]);
		assert.same({ s1 = "m1", s2 = "tombstone", s3 = "m3" }, catch_up(env));
		local found = {};
		for _, item in env.lib.find(ROOM, {}) do
			found[#found+1] = item:get_child_text("body") or "tombstone";
		end
		assert.same({ "m1", "tombstone", "m3" }, found);
		advance(env, 61);
		assert.equal(1, env.rewrites[ROOM]);
		assert.is_nil(stored(env, "s2"):get_child("body"), "the body gone from the store");
		assert.truthy(stored(env, "s2"):get_child("retracted", RETRACT));
		assert.same({ s1 = "m1", s2 = "tombstone", s3 = "m3" }, catch_up(env));
		assert.equal(1, env.metrics.log_withdraw_rewrites.by.log.total);
		assert.same({}, env.stores.minimix_withdrawn.data, "nothing left waiting");
	end);

	it("cost one rewrite per room per interval, however many come", function()
		local env = load_log({ minimix_withdraw_interval = 30 }, "internal");
		room(env, 40);
		for i = 1, 20 do
			retract(env, "dan", "s" .. i);
			advance(env, 1);
		end
		-- the first came 20 s ago: not due yet
		assert.is_nil(env.rewrites[ROOM]);
		advance(env, 11);
		assert.equal(1, env.rewrites[ROOM]);
		for i = 1, 20 do assert.is_nil(stored(env, "s" .. i):get_child("body"), i); end
		assert.equal("m21", stored(env, "s21"):get_child_text("body"));
		-- the next one waits its own interval
		retract(env, "dan", "s21");
		advance(env, 29);
		assert.equal(1, env.rewrites[ROOM]);
		assert.equal("tombstone", catch_up(env).s21);
		advance(env, 2);
		assert.equal(2, env.rewrites[ROOM]);
	end);

	it("are bounded per room: a room with 256 waiting is rewritten at the next tick", function()
		local env = load_log(nil, "internal");
		room(env, 300);
		for i = 1, 255 do retract(env, "dan", "s" .. i); end
		advance(env, 1);
		assert.is_nil(env.rewrites[ROOM]);
		retract(env, "dan", "s256");
		advance(env, 1);
		assert.equal(1, env.rewrites[ROOM]);
		for i = 1, 256 do assert.is_nil(stored(env, "s" .. i):get_child("body"), i); end
		-- the next ones wait their interval again
		retract(env, "dan", "s257");
		advance(env, 59);
		assert.equal(1, env.rewrites[ROOM]);
		advance(env, 2);
		assert.equal(2, env.rewrites[ROOM]);
	end);

	it("rewrite one room per tick", function()
		local env = load_log(nil, "internal");
		local other = "other@muc.example";
		room(env, 2);
		local m = said("eve", "o1", "o1");
		m.attr.from = other .. "/eve";
		m:get_child("stanza-id", "urn:xmpp:sid:0").attr.by = other;
		env.lib.message("alice@localhost", other, "eve", m, { stamp = env.clock, delayed = false });
		advance(env, 1);
		retract(env, "dan", "s1");
		local r = st.message({ from = other .. "/eve", type = "groupchat" })
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = other, id = "r-o1" }):up()
			:tag("retract", { xmlns = RETRACT, id = "o1" }):up();
		env.lib.withdraw("alice@localhost", other, env.lib.withdrawal(r, "eve"), r, nil);
		local ticks = {};
		advance(env, 61, function(e)
			local n = 0;
			for _, c in pairs(e.rewrites) do n = n + c; end
			if n > 0 then ticks[#ticks+1] = n; end
		end);
		assert.equal(1, env.rewrites[ROOM]);
		assert.equal(1, env.rewrites[other]);
		assert.equal(1, ticks[1], "one room in the first tick");
	end);

	it("survive a restart before the pass", function()
		local env = load_log(nil, "internal");
		room(env, 3);
		retract(env, "dan", "s2");
		-- the server stops without a pass: a new instance on the same stores
		local again = load_log(nil, "internal", nil, env.stores);
		assert.same({ s1 = "m1", s2 = "tombstone", s3 = "m3" }, catch_up(again));
		assert.equal("m2", stored(again, "s2"):get_child_text("body"));
		advance(again, 61);
		assert.equal(1, again.rewrites[ROOM]);
		assert.is_nil(stored(again, "s2"):get_child("body"));
	end);

	it("keep someone else's retraction out", function()
		local env = load_log(nil, "internal");
		room(env, 2);
		retract(env, "eve", "s1");
		assert.same({ s1 = "m1", s2 = "m2" }, catch_up(env));
		advance(env, 61);
		assert.is_nil(env.rewrites[ROOM]);
	end);

	it("reach the account's archive copy in one rewrite too", function()
		local env = load_log({ minimix_archive_in_mam = true }, "internal");
		room(env, 3);
		retract(env, "dan", "s1");
		retract(env, "dan", "s3");
		assert.equal("m1", stored(env, "s1", "archive"):get_child_text("body"));
		-- mod_mam's answer to alice's query meanwhile, through her session
		local session = { type = "c2s", username = "alice" };
		env.hooks["iq-set/self/urn:xmpp:mam:2:query"]({ origin = session });
		local function result(sid)
			for _, it in ipairs(env.stores.archive.items) do
				if it.value:get_child("stanza-id", "urn:xmpp:sid:0").attr.id == sid then
					local item = st.clone(it.value);
					item.attr.xmlns = "jabber:client";
					local r = st.message({ to = "alice@localhost/phone" })
						:tag("result", { xmlns = "urn:xmpp:mam:2", id = it.key })
							:tag("forwarded", { xmlns = "urn:xmpp:forward:0" }):add_child(item);
					local fwd = session.filter("stanzas/out", r)
						:get_child("result", "urn:xmpp:mam:2"):get_child("forwarded", "urn:xmpp:forward:0");
					local m = fwd:get_child("message", "jabber:client");
					return m:get_child("retracted", RETRACT) and "tombstone" or m:get_child_text("body");
				end
			end
		end
		assert.equal("tombstone", result("s1"));
		assert.equal("m2", result("s2"));
		assert.equal("tombstone", result("s3"));
		advance(env, 61);
		assert.equal(1, env.rewrites.alice);
		assert.is_nil(stored(env, "s1", "archive"):get_child("body"));
		assert.is_nil(stored(env, "s3", "archive"):get_child("body"));
		assert.equal("m2", stored(env, "s2", "archive"):get_child_text("body"));
	end);

	it("read an account's archive through at most once per 10 s for copies it does not know", function()
		local env = load_log({ minimix_archive_in_mam = true }, "internal");
		room(env, 3);
		-- a restart: the new instance knows none of the copies' keys, and
		-- learns the log's from the re-join's history
		local again = load_log({ minimix_archive_in_mam = true }, "internal", nil, env.stores);
		local h = said("dan", "m3", "s3");
		h:tag("delay", { xmlns = "urn:xmpp:delay", from = ROOM, stamp = "2023-11-14T22:13:20Z" }):up();
		again.lib.message("alice@localhost", ROOM, "dan", h, { stamp = again.clock, delayed = true });
		local finds = again.stores.archive.finds or 0;
		retract(again, "dan", "s1");
		assert.equal(finds + 1, again.stores.archive.finds, "read through for the first");
		retract(again, "dan", "s2");
		assert.equal(finds + 1, again.stores.archive.finds, "not again within 10 s");
		advance(again, 10);
		retract(again, "dan", "s3");
		assert.equal(finds + 2, again.stores.archive.finds, "again after 10 s");
		advance(again, 61);
		assert.is_nil(stored(again, "s1", "archive"):get_child("body"));
		assert.equal("m2", stored(again, "s2", "archive"):get_child_text("body"));
		assert.is_nil(stored(again, "s3", "archive"):get_child("body"));
		-- the log's own are all withdrawn
		for i = 1, 3 do assert.is_nil(stored(again, "s" .. i):get_child("body"), i); end
	end);

	it("are written at once where the store's set is cheap (SQL)", function()
		local env = load_log(nil, "sql");
		room(env, 2);
		retract(env, "dan", "s1");
		assert.is_nil(stored(env, "s1"):get_child("body"));
		assert.same({}, env.rewrites);
	end);

	it("are tried again when the rewrite fails", function()
		local env = load_log(nil, "internal");
		room(env, 2);
		retract(env, "dan", "s1");
		env.stores.minimix_log.fail = "disk full";
		env.stores.minimix_log.reads_ok = true;
		advance(env, 61);
		assert.equal("m1", stored(env, "s1"):get_child_text("body"));
		assert.equal("tombstone", catch_up(env).s1);
		env.stores.minimix_log.fail = nil;
		advance(env, 20);
		assert.is_nil(stored(env, "s1"):get_child("body"));
	end);
end);
