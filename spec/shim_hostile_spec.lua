-- Specs for what the shim does with stanzas it does not expect, with many
-- remote domains, and across a reload: nothing a client or a remote entity
-- sends may raise, and what the module does not handle passes on unchanged.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire = mock.load_shim, mock.new_session, mock.fire;

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

local function timers_with_delay(env, delay)
	local n = 0;
	for _, t in ipairs(env.timers or {}) do
		if t.delay == delay then n = n + 1; end
	end
	return n;
end

describe("mod_minimix lost server-to-server links", function()
	local function lose(env, remote)
		env.hooks["s2sout-destroyed"].fn({ session = { to_host = remote } });
	end
	local function regain(env, remote)
		local before = timers_with_delay(env, 1);
		env.hooks["s2sout-established"].fn({ session = { to_host = remote } });
		return timers_with_delay(env, 1) - before;
	end

	it("are remembered for a bounded number of domains, the oldest forgotten first", function()
		local env = load_shim();
		local before = collectgarbage("count");
		for i = 1, 20000 do lose(env, "d" .. i .. ".example"); end
		env.timers = {}; -- the mock's record of the pings asked for
		collectgarbage(); collectgarbage();
		-- 20000 domains would take well over a megabyte of Lua heap
		assert.is_true(collectgarbage("count") - before < 1024,
			("lost links took %.0f KB"):format(collectgarbage("count") - before));
		assert.equal(0, regain(env, "d1.example"), "forgotten: lost longest ago");
		assert.equal(1, regain(env, "d20000.example"), "the newest is remembered");
		assert.equal(0, regain(env, "d20000.example"), "asked once per loss");
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
		lose(env, "lost.example");
		local data = env.module.save();
		env.module.unload();

		local env2 = load_shim({ minimix_history_size = 2 });
		env2.module.restore(data);
		assert.matches("2 message%(s%) held", env2.g.memberships("alice@localhost"));
		assert.equal(1, regain(env2, "lost.example"));
		-- the handed-over core keeps working at the new size
		env2.bare["alice@localhost"] = env.bare["alice@localhost"];
		fire(env2, "message/bare", nil, st.message({ from = ROOM .. "/bob", to = "alice@localhost",
			type = "groupchat", id = "m6" }):text_tag("body", "m6"));
		assert.matches("2 message%(s%) held", env2.g.memberships("alice@localhost"));
		assert.equal("m6", P.got[#P.got].attr.id);
	end);
end);
