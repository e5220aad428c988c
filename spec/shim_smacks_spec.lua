-- Specs for the shim's XEP-0198 hooks: a hibernating session cannot hold
-- the account in a room, a resumed one can again.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire, advance = mock.load_shim, mock.new_session, mock.fire, mock.advance;
local room_presence = mock.room_presence;

local MUC = "http://jabber.org/protocol/muc";
local MUC_USER = MUC .. "#user";
local ROOM = "room@muc.example";

-- Did the account itself leave the room?
local function account_left(env)
	for _, s in ipairs(env.sent) do
		if s.name == "presence" and s.attr.type == "unavailable" and s.attr.from == "alice@localhost"
			and s.attr.to == ROOM .. "/alice" then
			return true;
		end
	end
	return false;
end

describe("mod_minimix and stream management (XEP-0198)", function()
	local env, P, L;
	before_each(function()
		env = load_shim();
		advance(env, 0);
		P = new_session(env, "phone");
		L = new_session(env, "laptop");
		fire(env, "pre-presence/full", P, st.presence({ to = ROOM .. "/alice", id = "j1" })
			:tag("x", { xmlns = MUC }):up());
		fire(env, "presence/bare", nil, room_presence(ROOM, "alice", { 110 }));
		fire(env, "pre-presence/full", L, st.presence({ to = ROOM .. "/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):up());
		env.sent, P.got, L.got = {}, {}, {};
	end);

	local function laptop_leaves()
		fire(env, "pre-presence/full", L, st.presence({ to = ROOM .. "/alice", type = "unavailable", id = "l1" }));
	end

	it("lets the last connected device's leave be the account's while the other hibernates", function()
		env.hooks["smacks-hibernation-start"].fn({ origin = P, queue = {} });
		laptop_leaves();
		assert.is_true(account_left(env));
	end);

	it("keeps the account in when a device that resumed is still joined", function()
		env.hooks["smacks-hibernation-start"].fn({ origin = P, queue = {} });
		-- mod_smacks (0.12 and 13): `origin` is the new connection's session,
		-- authenticated but never bound (a resumption replaces the bind), and
		-- `resumed` the hibernating session, which takes over its connection
		local connection = { type = "c2s", username = "alice", host = "localhost", full_jid = nil,
			send = function() error("the new connection's session sends nothing after a resumption"); end };
		env.hooks["smacks-hibernation-end"].fn({ origin = connection, resumed = P, queue = {} });
		laptop_leaves();
		assert.is_false(account_left(env), "the resumed phone holds the account in");
		-- the laptop alone is out, and the phone still gets the room's messages
		local out = L.got[#L.got];
		assert.equal("unavailable", out.attr.type);
		assert.truthy(out:get_child("x", MUC_USER));
		local msg = st.message({ from = ROOM .. "/bob", to = "alice@localhost", type = "groupchat", id = "m1" })
			:text_tag("body", "still there?");
		P.got = {};
		fire(env, "message/bare", nil, msg);
		assert.equal(1, #P.got);
		assert.equal("still there?", P.got[1]:get_child_text("body"));
	end);
end);
