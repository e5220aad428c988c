-- Specs for the memberships' writes on a server too busy to run timers
-- (Prosody 0.12 under a steady stream of stanzas): a membership change is
-- still written, by the first stanza the module handles once it is overdue.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire, advance = mock.load_shim, mock.new_session, mock.fire, mock.advance;
local room_presence = mock.room_presence;

local MUC = "http://jabber.org/protocol/muc";

local function join(nick)
	return st.presence({ to = "room@muc.example/" .. nick, id = "j1" }):tag("x", { xmlns = MUC }):up();
end

local function groupchat(id)
	return st.message({ from = "room@muc.example/carol", to = "alice@localhost", type = "groupchat", id = id })
		:text_tag("body", id);
end

-- The shim, its store's writes counted (env.writes)
-- and the watches it adds to its events counted (watches()).
local function shim()
	local env = load_shim({ minimix_seen_interval = 3600 }, function(e, module)
		e.writes = 0;
		local open = module.open_store;
		function module.open_store(self, name, kind)
			local s = open(self, name, kind);
			if name ~= "minimix" then return s; end
			local set = s.set;
			function s.set(store, user, value)
				e.writes = e.writes + 1;
				return set(store, user, value);
			end
			return s;
		end
	end);
	function env.watches()
		local n = 0;
		for _, hooks in pairs(env.more_hooks) do n = n + #hooks; end
		return n;
	end
	return env;
end

describe("mod_minimix's memberships on a server too busy for timers", function()
	it("are written by the first stanza handled once overdue, and a room message costs nothing more when none waits", function()
		local env = shim();
		-- the start-up restore reads the (empty) store; from now on no timer runs
		advance(env, 0);
		local idle = env.watches();
		local P = new_session(env, "phone");
		fire(env, "pre-presence/full", P, join("alice"));
		fire(env, "presence/bare", nil, room_presence("room@muc.example", "alice", { 110 }));
		assert.is_nil(env.stored.alice, "written at the next turn, not at once");
		-- in the same instant: still waiting, so the changes of one turn go together
		fire(env, "message/bare", nil, groupchat("m1"));
		assert.is_nil(env.stored.alice);
		assert.equal(0, env.writes);
		-- the turn never comes; a stanza handled later writes it
		env.clock = env.clock + 1;
		fire(env, "message/bare", nil, groupchat("m2"));
		local rec = env.stored.alice["room@muc.example"];
		assert.equal("alice", rec.nick);
		assert.same({ { env.clock - 1 } }, rec.spans);
		assert.equal(1, env.writes);
		-- nothing waits: no watch on the module's events, no write per message
		assert.equal(idle, env.watches());
		for i = 3, 10 do
			env.clock = env.clock + 1;
			fire(env, "message/bare", nil, groupchat("m" .. i));
		end
		assert.equal(1, env.writes);
		-- the account leaves: forgotten on the next stanza once overdue
		fire(env, "pre-presence/full", P, st.presence({ to = "room@muc.example/alice", type = "unavailable" }));
		fire(env, "presence/bare", nil, room_presence("room@muc.example", "alice", { 110 }, { type = "unavailable" }));
		assert.truthy(env.stored.alice);
		env.clock = env.clock + 1;
		fire(env, "message/bare", nil, st.message({ from = "bob@localhost/home", to = "alice@localhost",
			type = "chat" }):text_tag("body", "hi"));
		assert.is_nil(env.stored.alice);
		assert.equal(2, env.writes);
		assert.equal(idle, env.watches());
		-- the turn comes at last: its timers find nothing left to write
		advance(env, 0);
		assert.equal(2, env.writes);
	end);

	it("are written at the next turn of the main loop when timers run", function()
		local env = shim();
		advance(env, 0);
		local idle = env.watches();
		local P = new_session(env, "phone");
		fire(env, "pre-presence/full", P, join("alice"));
		fire(env, "presence/bare", nil, room_presence("room@muc.example", "alice", { 110 }));
		advance(env, 0);
		assert.truthy(env.stored.alice["room@muc.example"]);
		assert.equal(1, env.writes);
		assert.equal(idle, env.watches());
		env.clock = env.clock + 1;
		fire(env, "message/bare", nil, groupchat("m1"));
		assert.equal(1, env.writes);
	end);
end);
