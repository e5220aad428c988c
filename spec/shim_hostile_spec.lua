-- Specs for what the shim does with stanzas it does not expect, with many
-- remote domains, and across a reload: nothing a client or a remote entity
-- sends may raise, and what the module does not handle passes on unchanged.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire = mock.load_shim, mock.new_session, mock.fire;
local advance = mock.advance;

local MUC = "http://jabber.org/protocol/muc";
local MUC_USER = MUC .. "#user";
local ROOM = "room@muc.example";

local function join(to, id)
	return st.presence({ to = to, id = id }):tag("x", { xmlns = MUC }):up();
end

local function self_presence(room, nick, codes)
	local p = st.presence({ from = room .. "/" .. nick, to = "alice@localhost" })
		:tag("x", { xmlns = MUC_USER })
			:tag("item", { affiliation = "none", role = "participant" }):up();
	for _, c in ipairs(codes or { 110 }) do p:tag("status", { code = tostring(c) }):up(); end
	return p:up();
end

describe("mod_minimix lost server-to-server links", function()
	local function lose(env, remote)
		env.hooks["s2sout-destroyed"].fn({ session = { to_host = remote } });
	end
	-- alice is in a room on the remote domain
	local function in_room_on(env, P, remote)
		local room = "room@" .. remote;
		fire(env, "pre-presence/full", P, join(room .. "/alice", "j-" .. remote));
		fire(env, "presence/bare", nil, self_presence(room, "alice"));
	end
	-- the link comes back: the self-pings it makes to rooms on the domain
	local function regain(env, remote)
		env.sent = {};
		env.hooks["s2sout-established"].fn({ session = { to_host = remote } });
		advance(env, 2);
		local pings = {};
		for _, s in ipairs(env.sent) do
			if s.name == "iq" and s:get_child("ping", "urn:xmpp:ping")
					and s.attr.to == "room@" .. remote .. "/alice" then
				pings[#pings+1] = s;
			end
		end
		return #pings, pings[1];
	end
	local function answer(env, ping)
		fire(env, "iq/bare", nil, st.iq({ type = "result", id = ping.attr.id,
			from = ping.attr.to, to = "alice@localhost" }));
	end

	it("are remembered for a bounded number of domains, the oldest forgotten first", function()
		local env = load_shim();
		local P = new_session(env, "phone");
		in_room_on(env, P, "d1.example");
		in_room_on(env, P, "d20000.example");
		local before = collectgarbage("count");
		for i = 1, 20000 do lose(env, "d" .. i .. ".example"); end
		advance(env, 3700); -- the pings go out and time out, unanswered
		collectgarbage(); collectgarbage();
		-- 20000 domains would take well over a megabyte of Lua heap
		assert.is_true(collectgarbage("count") - before < 1024,
			("lost links took %.0f KB"):format(collectgarbage("count") - before));
		assert.equal(0, (regain(env, "d1.example")), "forgotten: lost longest ago");
		local n, ping = regain(env, "d20000.example");
		assert.equal(1, n, "the newest is remembered");
		answer(env, ping);
		assert.equal(0, (regain(env, "d20000.example")), "asked once per loss");
	end);

	it("survive a reload, and the reloaded configuration's limits apply", function()
		local env = load_shim({ minimix_history_size = 10 });
		local P = new_session(env, "phone");
		fire(env, "pre-presence/full", P, join(ROOM .. "/alice", "j1"));
		fire(env, "presence/bare", nil, self_presence(ROOM, "alice"));
		for i = 1, 5 do
			fire(env, "message/bare", nil, st.message({ from = ROOM .. "/bob", to = "alice@localhost",
				type = "groupchat", id = "m" .. i }):text_tag("body", "m" .. i));
		end
		assert.matches("5 message%(s%) held", env.g.memberships("alice@localhost"));
		lose(env, "muc.example");
		local data = env.module.save();
		env.module.unload();

		local env2 = load_shim({ minimix_history_size = 2 });
		env2.module.restore(data);
		assert.matches("2 message%(s%) held", env2.g.memberships("alice@localhost"));
		assert.equal(1, (regain(env2, "muc.example")));
		-- the handed-over core keeps working at the new size
		env2.bare["alice@localhost"] = env.bare["alice@localhost"];
		fire(env2, "message/bare", nil, st.message({ from = ROOM .. "/bob", to = "alice@localhost",
			type = "groupchat", id = "m6" }):text_tag("body", "m6"));
		assert.matches("2 message%(s%) held", env2.g.memberships("alice@localhost"));
		assert.equal("m6", P.got[#P.got].attr.id);
	end);
end);

describe("mod_minimix replaying large stanzas", function()
	it("keeps what it parsed for replay bounded in bytes (minimix_max_parsed_bytes)", function()
		local env = load_shim({ minimix_max_parsed_bytes = 64 * 1024 });
		local P = new_session(env, "phone");
		local L = new_session(env, "laptop");
		fire(env, "pre-presence/full", P, join(ROOM .. "/alice", "j1"));
		for i = 1, 50 do
			fire(env, "presence/bare", nil, st.presence({ from = ROOM .. "/o" .. i, to = "alice@localhost" })
				:text_tag("status", ("%05d"):format(i):rep(4000))
				:tag("x", { xmlns = MUC_USER }):tag("item", { affiliation = "none", role = "participant" }):up():up());
		end
		fire(env, "presence/bare", nil, self_presence(ROOM, "alice"));
		P.got, P.wire = {}, {};
		collectgarbage(); collectgarbage();
		local before = collectgarbage("count");
		fire(env, "pre-presence/full", L, join(ROOM .. "/alice", "j2"));
		assert.equal(51, #L.got, "every occupant and the self-presence replayed");
		L.got, L.wire = {}, {};
		collectgarbage(); collectgarbage();
		local grown = collectgarbage("count") - before;
		-- 50 texts of 20 KB, parsed: over 2 MB when all are kept
		assert.is_true(grown < 512, ("the replay left %.0f KB behind"):format(grown));
	end);
end);

describe("mod_minimix with random stanzas", function()
	-- A small deterministic generator, so that a failure can be replayed.
	local seed = tonumber(os.getenv("MINIMIX_SPEC_SEED")) or 20240611;
	local state = seed;
	local function rand(n)
		state = (state * 1103515245 + 12345) % 2147483648;
		return state % n + 1;
	end
	local function pick(list) return list[rand(#list)]; end
	local function maybe(v) if rand(3) == 1 then return nil; end return v; end

	local long = ("x"):rep(1100);
	local jids = {
		false, "", ROOM, ROOM .. "/", ROOM .. "/bob", ROOM .. "/alice", "@muc.example",
		"room@", "/x", "ROOM@MUC.EXAMPLE/bob", "alice@localhost", "alice@localhost/phone",
		"a@b@c/d", ROOM .. "/" .. long, "room@[::1]/x", "Ärger@muc.example/Ö", "other@muc.example/bob",
		"muc.example", "room@muc.example/bob/extra", long .. "@muc.example",
		"joining@muc.example/alice", "joining@muc.example/bob",
	};
	local types = {
		false, "", "Chat", "x-foo", "chat", "groupchat", "GROUPCHAT", "normal", "headline", "error",
		"available", "unavailable", "subscribe", "probe", "get", "set", "result", "GET",
	};
	local numbers = {
		"1e999", "-1e999", "-1", "0", "3", "nan", "0x10", "abc", "99999999999999999999999", "2.5",
		"", " 7 ", "inf",
	};
	local stamps = {
		"2020-01-01T00:00:00Z", "99999-01-01T00:00:00Z", "0000-00-00T00:00:00Z", "garbage", "",
		"2020-13-45T99:99:99Z", "-2020-01-01T00:00:00Z",
	};
	local ids = { false, "", "j1", "m1", long, "mmx-00000000000000000000000000000000" };

	local function attrs(list)
		local a = {};
		for k, values in pairs(list) do
			local v = maybe(pick(values));
			if v then a[k] = v; end
		end
		return a;
	end

	local children = {
		function(s) -- a MUC join, with history and password
			s:tag("x", { xmlns = MUC });
			if rand(2) == 1 then
				s:tag("history", attrs({ maxstanzas = numbers, maxchars = numbers,
					seconds = numbers, since = stamps })):up();
			end
			if rand(2) == 1 then s:text_tag("password", pick({ "", "secret", long })); end
			s:up();
		end,
		function(s) -- muc#user with random status codes, item, destroy
			s:tag("x", { xmlns = MUC_USER });
			for _ = 1, rand(4) - 1 do
				s:tag("status", attrs({ code = { "110", "303", "307", "332", "333", "201", "abc",
					"1e999", "-1", "110.5", "99999999999999999999" } })):up();
			end
			if rand(2) == 1 then
				s:tag("item", attrs({ nick = { "", "bob", "alice", long }, affiliation = { "owner", "", "x" },
					role = { "none", "moderator", "" } })):up();
			end
			if rand(4) == 1 then s:tag("destroy"):up(); end
			s:up();
		end,
		function(s) s:text_tag("body", pick({ "", "hi", long })); end,
		function(s) s:text_tag("subject", pick({ "", "topic" })); end,
		function(s) s:text_tag("show", pick({ "", "away", "chat", "bogus", "xa" })); end,
		function(s)
			s:tag("delay", { xmlns = "urn:xmpp:delay", from = pick({ ROOM, "x" }), stamp = pick(stamps) }):up();
		end,
		function(s)
			s:tag("stanza-id", attrs({ by = { ROOM, "" }, id = { "s1", "" } })):up();
			s.tags[#s.tags].attr.xmlns = "urn:xmpp:sid:0";
		end,
		function(s) s:tag("result", { xmlns = "urn:xmpp:mam:2", queryid = pick({ "q", "" }) }):up(); end,
		function(s) s:tag("query", { xmlns = "urn:xmpp:mam:2", queryid = maybe("q") }):up(); end,
		function(s) s:tag("ping", { xmlns = "urn:xmpp:ping" }):up(); end,
		function(s)
			s:tag("error", attrs({ type = { "cancel", "wait", "", "bogus" } }))
				:tag(pick({ "not-acceptable", "item-not-found", "remote-server-timeout", "x" }),
					{ xmlns = "urn:ietf:params:xml:ns:xmpp-stanzas" }):up():up();
		end,
		function(s) s:text(pick({ "text", "" })); end,
	};

	local room_jids = { ROOM, ROOM .. "/bob", ROOM .. "/alice", "joining@muc.example/alice" };
	local function random_stanza(name, incoming)
		local s = st.stanza(name, attrs({ to = jids, from = jids, type = types, id = ids }));
		-- mostly traffic between the account and its rooms
		if rand(4) > 1 then
			if incoming then
				s.attr.to, s.attr.from = "alice@localhost", pick(room_jids);
			else
				s.attr.to = pick(room_jids);
			end
		end
		for _ = 1, rand(4) - 1 do pick(children)(s); end
		return s;
	end

	-- Same element: name, attributes, children in order, text.
	local function same(a, b)
		if type(a) ~= type(b) then return false; end
		if type(a) == "string" then return a == b; end
		if a.name ~= b.name or #a ~= #b then return false; end
		for k, v in pairs(a.attr) do if b.attr[k] ~= v then return false; end end
		for k, v in pairs(b.attr) do if a.attr[k] ~= v then return false; end end
		for i = 1, #a do if not same(a[i], b[i]) then return false; end end
		return true;
	end

	it("never raises, and passes on unchanged what it does not handle", function()
		local env = load_shim();
		local P = new_session(env, "phone");
		local L = new_session(env, "laptop");
		-- a joined room, and one that stays joining
		fire(env, "pre-presence/full", P, join(ROOM .. "/alice", "j1"));
		fire(env, "presence/bare", nil, self_presence(ROOM, "alice"));
		fire(env, "pre-presence/full", L, join(ROOM .. "/alice", "j2"));
		fire(env, "pre-presence/full", L, join("joining@muc.example/alice", "j3"));
		local s2s = { type = "s2sin", host = "localhost" };
		local anonymous = { type = "c2s", host = "localhost" };
		local outgoing = { "pre-presence/full", "pre-presence/bare", "pre-message/full",
			"pre-message/bare", "pre-iq/full", "pre-iq/bare" };
		local incoming = { "presence/bare", "message/bare", "iq/bare" };
		local handled, passed = 0, 0;
		for i = 1, 4000 do
			local hook, origin;
			if rand(2) == 1 then
				hook, origin = pick(outgoing), pick({ P, L, P, L, P, L, s2s, anonymous });
			else
				hook, origin = pick(incoming), pick({ false, s2s });
			end
			if i % 400 == 0 then
				-- the account joins again now and then, so joined rooms stay
				fire(env, "pre-presence/full", P, join(ROOM .. "/alice", "again"));
				fire(env, "presence/bare", nil, self_presence(ROOM, "alice"));
			end
			local stanza = random_stanza(hook:match("(%a+)/"), origin ~= P and origin ~= L);
			local before = st.clone(stanza);
			local ok, result = pcall(fire, env, hook, origin or nil, stanza);
			assert(ok, ("stanza %d (seed %d) to %s raised: %s\n%s"):format(i, seed, hook,
				tostring(result), tostring(before)));
			if result then
				handled = handled + 1;
			else
				passed = passed + 1;
				assert(same(before, stanza), ("stanza %d (seed %d) to %s changed although passed on:\n%s\n%s")
					:format(i, seed, hook, tostring(before), tostring(stanza)));
			end
			if i % 500 == 0 then
				local failed = pcall(env.hooks["delivery/failure"].fn, { session = pick({ P, L }), stanza = stanza });
				assert.is_true(failed);
			end
		end
		-- both outcomes were exercised
		assert.is_true(handled > 100, "handled " .. handled);
		assert.is_true(passed > 100, "passed " .. passed);
		-- and the module still works: a room message reaches the joined phone
		P.got = {};
		local msg = st.message({ from = ROOM .. "/bob", to = "alice@localhost", type = "groupchat", id = "last" })
			:text_tag("body", "still here");
		if env.g.memberships("alice@localhost"):find(ROOM .. " as", 1, true) then
			assert.is_true(fire(env, "message/bare", nil, msg));
		end
	end);
end);
