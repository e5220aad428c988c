-- Specs for the MAM answers from the room log (minimix_mam.lib.lua), loaded
-- into a mocked Prosody `module` with a fake core and a fake room log: what
-- a query gets (spans, paging, errors), when it passes through, and what
-- the module learns from a room's disco#info.
local st = require "util.stanza";

local ROOM = "room@muc.example";
local ACCOUNT = "alice@localhost";
local MAM = "urn:xmpp:mam:2";
local RSM = "http://jabber.org/protocol/rsm";
local DISCO = "http://jabber.org/protocol/disco#info";

-- The room log as the store gives it: { key, body, t, with }, oldest first;
-- find reads start/end/with/key/after/before/reverse/limit as Prosody's
-- archive stores do.
local function fake_log(entries)
	local log = { serves = true, entries = entries, finds = 0 };
	function log.find(room, q)
		assert(room == ROOM);
		log.finds = log.finds + 1;
		local list = {};
		for _, e in ipairs(entries) do
			if (not q.start or math.floor(e.t) >= q.start) and (not q["end"] or math.floor(e.t) <= q["end"])
				and (not q.with or e.with == q.with) and (not q.key or e.key == q.key) then
				table.insert(list, q.reverse and 1 or #list + 1, e);
			end
		end
		local mark = q.reverse and q.before or not q.reverse and q.after;
		local i = 0;
		if mark then
			i = nil;
			for j, e in ipairs(list) do if e.key == mark then i = j; end end
			if not i then return nil, "item-not-found"; end
		end
		local n = 0;
		return function()
			i, n = i + 1, n + 1;
			local e = list[i];
			if not e or (q.limit and n > q.limit) then return nil; end
			local item = st.message({ from = ROOM .. "/" .. e.with, type = "groupchat" });
			if e.subject then item:text_tag("subject", e.subject); else item:text_tag("body", e.body); end
			if e.sid then
				item:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = e.sid_by or ROOM, id = e.sid }):up();
			end
			return e.key, item, e.t, 0, e.with;
		end;
	end
	function log.in_spans(t, slack, spans)
		for _, s in ipairs(spans) do
			if t + slack > s[1] and t <= (s[2] or math.huge) then return true; end
		end
		return false;
	end
	function log.parse_stamp(text) return require "util.datetime".parse(text); end
	function log.bounded_id(id) return id; end
	-- the ids handed out, by body (the real log tells copies apart by digest)
	log.stamped = {};
	log.delayed = {};
	function log.stamp_id(room, stanza, delayed)
		assert(room == ROOM);
		local body = stanza:get_child_text("body");
		log.delayed[body] = delayed;
		log.stamped[body] = log.stamped[body] or ("id-" .. body);
		return log.stamped[body];
	end
	return log;
end

local function load_mam(entries, spans, opts)
	opts = opts or {};
	local env = { hooks = {}, sent = {}, logs = {}, posted = {}, timers = {} };
	local module = { host = "localhost" };
	function module:hook(name, fn, prio)
		local list = env.hooks[name] or {};
		list[#list+1] = { fn = fn, prio = prio or 0 };
		table.sort(list, function(a, b) return a.prio > b.prio; end);
		env.hooks[name] = list;
	end
	function module:log(level, fmt, ...) env.logs[#env.logs+1] = { level, fmt:format(...) }; end
	function module:send(stanza)
		env.sent[#env.sent+1] = st.clone(stanza);
		if env.on_send then env.on_send(stanza); end
	end
	function module:add_timer(delay, fn) env.timers[#env.timers+1] = { delay = delay, fn = fn }; end
	function module:get_option_boolean(_, default) return default; end
	local core = {};
	function core:member(account, room) return account == ACCOUNT and room == ROOM and "joined" or nil; end
	function core:memberships(account)
		if account ~= ACCOUNT then return {}; end
		return { { room = ROOM, spans = spans } };
	end
	function core:sessions() return { { resource = "phone", joined = true } }; end
	local mm = { core = core, roomlog = fake_log(entries) };
	function mm.limit_option(_, default) return opts.page_max or default; end
	local g = setmetatable({ module = module, prosody = {
		core_post_stanza = function(origin, stanza) env.posted[#env.posted+1] = { origin, stanza }; end,
	} }, { __index = _G });
	-- what the rooms offer, as the main module shares it
	mm.roominfo = assert(loadfile("./minimix_roominfo.lib.lua", "t", g))();
	mm.roominfo.init(mm);
	local lib = assert(loadfile("./minimix_mam.lib.lua", "t", g))();
	lib.init(mm);
	env.log, env.lib, env.roominfo = mm.roomlog, lib, mm.roominfo;
	return env;
end

local function fire(env, name, event)
	for _, h in ipairs(env.hooks[name] or {}) do
		local ret = h.fn(event);
		if ret ~= nil then return ret; end
	end
end

local function session()
	local s = { type = "c2s", username = "alice", host = "localhost", resource = "phone",
		full_jid = ACCOUNT .. "/phone", got = {} };
	function s.send(stanza) s.got[#s.got+1] = st.clone(stanza); end
	return s;
end

-- A room's disco#info answer to the account, with or without mam:2.
local function disco_answer(id, with_mam)
	local iq = st.iq({ type = "result", from = ROOM, to = ACCOUNT, id = id }):query(DISCO)
		:tag("feature", { var = "http://jabber.org/protocol/muc" }):up();
	if with_mam then iq:tag("feature", { var = MAM }):up(); end
	return iq;
end

-- The room says it has no archive (a device's disco#info answer).
local function no_archive(env)
	local answer = disco_answer("d1", false);
	fire(env, "iq/bare", { stanza = answer });
	return answer;
end

local function query(fields, set, flip)
	local iq = st.iq({ type = "set", to = ROOM, from = ACCOUNT .. "/phone", id = "q1" })
		:tag("query", { xmlns = MAM, queryid = "qid" });
	if fields then
		iq:tag("x", { xmlns = "jabber:x:data", type = "submit" })
			:tag("field", { var = "FORM_TYPE" }):text_tag("value", MAM):up();
		for var, value in pairs(fields) do
			iq:tag("field", { var = var });
			for _, v in ipairs(type(value) == "table" and value or { value }) do iq:text_tag("value", v); end
			iq:up();
		end
		iq:up();
	end
	if set then
		iq:tag("set", { xmlns = RSM });
		for name, text in pairs(set) do
			if text == true then iq:tag(name):up(); else iq:text_tag(name, text); end
		end
		iq:up();
	end
	if flip then iq:tag("flip-page"):up(); end
	return iq:up();
end

-- What a session got for one query: bodies, result ids, the final answer.
local function answered(s)
	local bodies, ids = {}, {};
	local last = s.got[#s.got];
	for _, got in ipairs(s.got) do
		local result = got:get_child("result", MAM);
		if result then
			assert.equal("qid", result.attr.queryid);
			assert.equal(ROOM, got.attr.from);
			local fwd = result:get_child("forwarded", "urn:xmpp:forward:0");
			assert.truthy(fwd:get_child("delay", "urn:xmpp:delay"));
			local body = fwd:get_child("message", "jabber:client"):get_child_text("body");
			assert.truthy(body, "a message, not a subject change");
			bodies[#bodies+1] = body;
			ids[#ids+1] = result.attr.id;
		end
	end
	s.got = {};
	return bodies, ids, last;
end

local function fin(answer)
	local f = answer:get_child("fin", MAM);
	local set = f:get_child("set", RSM);
	return f.attr.complete == "true", set and set:get_child_text("first"), set and set:get_child_text("last");
end

local T0 = 1700000000;
local ENTRIES = {
	{ key = "k1", body = "before", t = T0 + 1, with = "carol" },
	{ key = "k2", body = "one", t = T0 + 11, with = "carol" },
	{ key = "k3", body = "out", t = T0 + 21, with = "carol" },
	{ key = "k4", body = "two", t = T0 + 31, with = "bob" },
	{ key = "k4s", subject = "a subject change is no message", t = T0 + 31, with = "bob" },
	{ key = "k5", body = "three", t = T0 + 32, with = "carol" },
};
-- the account was in from T0+10 to T0+20, and again since T0+30
local SPANS = { { T0 + 10, T0 + 20 }, { T0 + 30 } };

describe("MAM from the room log", function()
	it("adds mam:2 to the disco#info answer of a room without an archive", function()
		local env = load_mam(ENTRIES, SPANS);
		local answer = no_archive(env);
		local vars = {};
		for f in answer.tags[1]:childtags("feature") do vars[f.attr.var] = true; end
		assert.truthy(vars[MAM]);
		assert.truthy(vars[MAM .. "#extended"]);
		-- a room with its archive: left as it was
		local own = disco_answer("d2", true);
		fire(env, "iq/bare", { stanza = own });
		local n = 0;
		for f in own.tags[1]:childtags("feature") do if f.attr.var == MAM then n = n + 1; end end
		assert.equal(1, n);
	end);

	it("answers within the spans, paged, with stable ids", function()
		local env = load_mam(ENTRIES, SPANS);
		no_archive(env);
		local s = session();
		assert.is_true(fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { max = "2" }) }));
		local bodies, ids, answer = answered(s);
		assert.same({ "one", "two" }, bodies);
		assert.same({ "k2", "k4" }, ids);
		local complete, first, last = fin(answer);
		assert.is_false(complete);
		assert.same({ "k2", "k4" }, { first, last });
		fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { max = "2", after = last }) });
		bodies, ids, answer = answered(s);
		assert.same({ "three" }, bodies);
		assert.is_true((fin(answer)));
		-- the last page, flipped
		fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { max = "2", before = true }, true) });
		bodies, _, answer = answered(s);
		assert.same({ "three", "two" }, bodies);
		assert.is_false((fin(answer)));
		-- start, and with an occupant
		fire(env, "pre-iq/bare", { origin = s, stanza = query({ start = "2023-11-14T22:13:50Z" }) });
		assert.same({ "two", "three" }, (answered(s)));
		fire(env, "pre-iq/bare", { origin = s, stanza = query({ with = ROOM .. "/carol" }) });
		assert.same({ "one", "three" }, (answered(s)));
		-- the extended fields: ids, and after-id/before-id (never outside the spans)
		fire(env, "pre-iq/bare", { origin = s, stanza = query({ ids = { "k5", "k2", "k1" } }) });
		assert.same({ "one", "three" }, (answered(s)));
		fire(env, "pre-iq/bare", { origin = s, stanza = query({ ["after-id"] = "k2", ["before-id"] = "k5" }) });
		assert.same({ "two" }, (answered(s)));
	end);

	it("gives the room's stanza-id as the id where the room gave one", function()
		local entries = {
			{ key = "k1", body = "one", t = T0 + 31, with = "carol", sid = "room-sid-1" },
			{ key = "k2", body = "two", t = T0 + 32, with = "carol", sid = "forged", sid_by = "mallory@evil.example" },
			{ key = "k3", body = "three", t = T0 + 33, with = "carol", sid = "room-sid-3" },
		};
		local env = load_mam(entries, SPANS);
		no_archive(env);
		local s = session();
		fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { max = "1" }) });
		local _, ids = answered(s);
		assert.same({ "room-sid-1" }, ids);
		-- and finds it again: the next page after it
		fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { after = "room-sid-1" }) });
		local bodies;
		bodies, ids = answered(s);
		assert.same({ "two", "three" }, bodies);
		assert.same({ "k2", "room-sid-3" }, ids, "a stanza-id by someone else is not the room's");
	end);

	it("never gives more than minimix_mam_max_page", function()
		local env = load_mam(ENTRIES, SPANS, { page_max = 1 });
		no_archive(env);
		local s = session();
		fire(env, "pre-iq/bare", { origin = s, stanza = query(nil, { max = "50" }) });
		local bodies, _, answer = answered(s);
		assert.same({ "one" }, bodies);
		assert.is_false((fin(answer)));
	end);

	it("answers malformed queries with errors", function()
		local env = load_mam(ENTRIES, SPANS);
		no_archive(env);
		local s = session();
		for _, case in ipairs({
			{ query({ colour = "blue" }), "bad-request" },
			{ query({ start = "yesterday" }), "bad-request" },
			{ query(nil, { max = "many" }), "bad-request" },
			{ query({ ["after-id"] = "nope" }), "item-not-found" },
			{ query(nil, { after = "nope" }), "item-not-found" },
			{ query(nil, { before = "nope" }), "item-not-found" },
		}) do
			fire(env, "pre-iq/bare", { origin = s, stanza = case[1] });
			local bodies, _, answer = answered(s);
			assert.same({}, bodies);
			assert.equal("error", answer.attr.type);
			assert.equal(case[2], select(2, answer:get_error()));
		end
	end);

	it("leaves rooms with an archive, and other accounts, to the room", function()
		local env = load_mam(ENTRIES, SPANS);
		fire(env, "iq/bare", { stanza = disco_answer("d2", true) });
		local s = session();
		assert.is_nil(fire(env, "pre-iq/bare", { origin = s, stanza = query() }));
		assert.same({}, s.got);
		local bob = session();
		bob.username, bob.full_jid = "bob", "bob@localhost/phone";
		env = load_mam(ENTRIES, SPANS);
		no_archive(env);
		assert.is_nil(fire(env, "pre-iq/bare", { origin = bob, stanza = query() }));
	end);

	it("asks the room what it offers once, holding the queries meanwhile", function()
		local env = load_mam(ENTRIES, SPANS);
		local s = session();
		assert.is_true(fire(env, "pre-iq/bare", { origin = s, stanza = query() }));
		assert.is_true(fire(env, "pre-iq/bare", { origin = s, stanza = query() }));
		assert.equal(1, #env.sent);
		local ask = env.sent[1];
		assert.equal(ACCOUNT, ask.attr.from);
		assert.equal(ROOM, ask.attr.to);
		assert.is_true(fire(env, "iq/bare", { stanza = disco_answer(ask.attr.id, false) }));
		assert.equal(2, #env.posted, "both held queries go on as if sent now");
		-- now known: answered here
		assert.is_true(fire(env, "pre-iq/bare", { origin = s, stanza = env.posted[1][2] }));
		assert.same({ "one", "two", "three" }, (answered(s)));
	end);

	describe("stamps its own stanza-ids", function()
		local SID = "urn:xmpp:sid:0";
		local function said(body, spoof)
			local m = st.message({ from = ROOM .. "/carol", to = ACCOUNT, type = "groupchat", id = "x" })
				:text_tag("body", body);
			if spoof then m:tag("stanza-id", { xmlns = SID, by = ROOM, id = spoof }):up(); end
			return m;
		end
		local function sids(stanza)
			local out = {};
			for sid in stanza:childtags("stanza-id", SID) do out[#out+1] = sid.attr.by .. " " .. sid.attr.id; end
			return out;
		end

		it("in a room without an archive, on a copy, in place of an occupant's", function()
			local env = load_mam(ENTRIES, SPANS);
			no_archive(env);
			local m = said("hello", "spoofed");
			m:tag("x", { xmlns = "urn:example:x" }):text("in it"):up():text(" ");
			local before = tostring(m);
			local out = env.lib.stamp(m, ACCOUNT);
			assert.not_equal(m, out);
			assert.same({ ROOM .. " id-hello" }, sids(out));
			assert.same({ ROOM .. " spoofed" }, sids(m), "the room's object is left as it is");
			assert.equal(before, tostring(m));
			-- the copy: the room's children and text in their order, the
			-- occupant's claim out, the room's id last
			local function without_sids(text) return (text:gsub("^<message[^>]*>", ""):gsub("<stanza%-id[^>]*/>", "")); end
			assert.equal(without_sids(before), without_sids(tostring(out)));
			assert.equal(3, #out.tags);
			assert.equal("stanza-id", out.tags[3].name);
			assert.equal(out.tags[3], out[#out]);
			-- the room hands the same object to its next local account
			m.attr.to = "bob@localhost";
			assert.equal(m, env.lib.stamp(m, "bob@localhost"), "bob is in no room here");
		end);

		it("telling the log a message the room says it said before (its delay)", function()
			local env = load_mam(ENTRIES, SPANS);
			no_archive(env);
			local m = said("old"):tag("delay", { xmlns = "urn:xmpp:delay", from = ROOM,
				stamp = "2020-01-01T00:00:00Z" }):up();
			env.lib.stamp(m, ACCOUNT);
			m = said("relayed"):tag("delay", { xmlns = "urn:xmpp:delay", from = "elsewhere.example",
				stamp = "2020-01-01T00:00:00Z" }):up();
			env.lib.stamp(m, ACCOUNT);
			assert.same({ old = true, relayed = false }, env.log.delayed);
		end);

		it("on a body in no namespace or the stanza's own only", function()
			local env = load_mam(ENTRIES, SPANS);
			no_archive(env);
			local foreign = st.message({ from = ROOM .. "/carol", to = ACCOUNT, type = "groupchat", id = "f" })
				:text_tag("body", "not a body", { xmlns = "urn:example:other" });
			assert.equal(foreign, env.lib.stamp(foreign, ACCOUNT));
			local own = st.message({ xmlns = "jabber:client", from = ROOM .. "/carol", to = ACCOUNT,
				type = "groupchat", id = "o" }):text_tag("body", "own", { xmlns = "jabber:client" });
			assert.same({ ROOM .. " id-own" }, sids(env.lib.stamp(own, ACCOUNT)));
		end);

		it("once for every local account that gets the room's object", function()
			local env = load_mam(ENTRIES, SPANS);
			no_archive(env);
			local m = said("hello");
			local first = env.lib.stamp(m, ACCOUNT);
			assert.equal(first, env.lib.stamp(m, ACCOUNT));
			assert.same({ ROOM .. " id-hello" }, sids(first));
		end);

		it("never in a room with an archive, nor on a subject change", function()
			local env = load_mam(ENTRIES, SPANS);
			fire(env, "iq/bare", { stanza = disco_answer("d2", true) });
			local m = said("hello", "the-rooms-own");
			assert.equal(m, env.lib.stamp(m, ACCOUNT));
			assert.same({ ROOM .. " the-rooms-own" }, sids(m));
			env = load_mam(ENTRIES, SPANS);
			no_archive(env);
			local subject = st.message({ from = ROOM .. "/carol", to = ACCOUNT, type = "groupchat" })
				:text_tag("subject", "Lunch");
			assert.equal(subject, env.lib.stamp(subject, ACCOUNT));
			-- one that claims an id of the room's loses it all the same
			subject:tag("stanza-id", { xmlns = SID, by = ROOM, id = "spoofed" }):up();
			assert.same({}, sids(env.lib.stamp(subject, ACCOUNT)));
		end);

		it("asks a room once for all that wait, and not at every message once it did not answer", function()
			local env = load_mam(ENTRIES, SPANS);
			local got = {};
			env.roominfo.ask(ROOM, ACCOUNT, function(f) got[#got+1] = f or false; end);
			env.roominfo.ask(ROOM, ACCOUNT, function(f) got[#got+1] = f or false; end);
			assert.equal(1, #env.sent);
			env.timers[#env.timers].fn(); -- no answer in time
			assert.same({ false, false }, got);
			local m = said("hello");
			assert.equal(m, env.lib.stamp(m, ACCOUNT), "not known: as it came");
			env.lib.stamp(said("again"), ACCOUNT);
			assert.equal(1, #env.sent, "not asked again at once");
			-- the late answer is the module's own still: no device gets it
			assert.is_true(fire(env, "iq/bare", { stanza = disco_answer(env.sent[1].attr.id, false) }));
			-- a join asks again
			env.roominfo.joining(ACCOUNT, ROOM);
			assert.equal(2, #env.sent);
		end);

		it("asks the room first when the account joins, once per join", function()
			local env = load_mam(ENTRIES, SPANS);
			env.roominfo.joining(ACCOUNT, ROOM);
			env.roominfo.joining("bob@localhost", ROOM);
			assert.equal(1, #env.sent, "asked with the join, once for both accounts");
			local m = said("hello");
			assert.equal(m, env.lib.stamp(m, ACCOUNT), "not known yet: as it came");
			assert.equal(1, #env.sent);
			assert.equal(DISCO, env.sent[1].tags[1].attr.xmlns);
			fire(env, "iq/bare", { stanza = disco_answer(env.sent[1].attr.id, false) });
			assert.same({ ROOM .. " id-hello" }, sids(env.lib.stamp(said("hello"), ACCOUNT)));
			assert.equal(1, #env.sent, "known: not asked again for a message");
			env.roominfo.joining(ACCOUNT, ROOM);
			assert.equal(2, #env.sent, "a join again: the room may have changed meanwhile");
			-- joined again while that is unanswered: asked again, the late
			-- answer to the first dropped
			env.roominfo.joining(ACCOUNT, ROOM);
			assert.equal(3, #env.sent);
			assert.is_true(fire(env, "iq/bare", { stanza = disco_answer(env.sent[2].attr.id, true) }));
			assert.is_nil(env.roominfo.features(ROOM));
			fire(env, "iq/bare", { stanza = disco_answer(env.sent[3].attr.id, false) });
			assert.is_false(env.roominfo.features(ROOM)[MAM] or false);
		end);
	end);

	it("forgets what a room offers when its configuration changes (104)", function()
		local env = load_mam(ENTRIES, SPANS);
		no_archive(env);
		assert.is_nil(env.roominfo.features(ROOM)[MAM]);
		fire(env, "message/bare", { stanza = st.message({ from = ROOM, to = ACCOUNT, type = "groupchat" })
			:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" }):tag("status", { code = "104" }):up():up() });
		assert.is_nil(env.roominfo.features(ROOM));
		assert.equal(1, #env.sent, "asked again at once");
	end);

	it("adds mam:2 for the devices only, never to the module's own answers", function()
		local env = load_mam(ENTRIES, SPANS);
		local got;
		env.roominfo.ask(ROOM, ACCOUNT, function(features) got = features; end);
		assert.equal(1, #env.sent);
		local answer = disco_answer(env.sent[1].attr.id, false);
		assert.is_true(fire(env, "iq/bare", { stanza = answer }), "the module's own: stopped");
		assert.is_nil(got[MAM]);
		assert.truthy(got["http://jabber.org/protocol/muc"]);
		for f in answer.tags[1]:childtags("feature") do assert.not_equal(MAM, f.attr.var); end
		-- a device's answer, later: the feature added for it, not learnt
		fire(env, "iq/bare", { stanza = disco_answer("d9", false) });
		assert.is_nil(env.roominfo.features(ROOM)[MAM]);
	end);
end);
