-- Specs for minimix_push.lib.lua in the mocked module: which room messages
-- wake which registrations (through mod_cloud_notify's events), what the
-- summary says, and what stays cheap.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire, advance = mock.load_shim, mock.new_session, mock.fire, mock.advance;
local room_presence = mock.room_presence;

local MUC = "http://jabber.org/protocol/muc";
local ROOM = "room@muc.example";
local PUSH = "urn:xmpp:push:0";
local DATA = "jabber:x:data";

-- mod_cloud_notify loaded on the host (the push library looks there)
local function with_cloud_notify(_, _, g)
	g.prosody.hosts = { localhost = { modules = { cloud_notify = {} } } };
end

local function message(nick, body, extra)
	local m = st.message({ from = ROOM .. "/" .. nick, to = "alice@localhost", type = "groupchat" })
		:text_tag("body", body);
	if extra then m:add_child(extra); end
	return m;
end

-- What mod_cloud_notify does with a ping for the registrations it is given:
-- a push event per registration, with its own summary, which a handler may
-- change or block.  Returns the summaries sent.
local function cloud_notify(env)
	local sent = {};
	env.on_fire = function(name, data)
		if name ~= "cloud-notify-ping" then return; end
		for id, info in pairs(data.push_services) do
			local payload = st.stanza("notification", { xmlns = PUSH })
				:tag("x", { xmlns = DATA, type = "submit" }):up();
			local iq = st.iq({ type = "set", to = info.jid, from = "localhost", id = "push-" .. #sent })
				:tag("pubsub", { xmlns = "http://jabber.org/protocol/pubsub" })
					:tag("publish", { node = info.node }):tag("item"):add_child(payload);
			local event = { notification_stanza = iq, notification_payload = payload,
				username = data.user, push_info = info, push_summary = { ["message-count"] = "1" } };
			if not env.hooks["cloud_notify/push"].fn(event) then
				sent[#sent+1] = { id = id, summary = event.push_summary, payload = payload };
			end
		end
	end;
	return sent;
end

describe("group chat push", function()
	local env, L, sent;
	before_each(function()
		env = load_shim({ minimix_push_window = 0, push_notification_with_body = true,
			push_notification_with_sender = true }, with_cloud_notify);
		advance(env, 0);
		L = new_session(env, "laptop");
		fire(env, "pre-presence/full", L, st.presence({ to = ROOM .. "/alice", id = "j1" })
			:tag("x", { xmlns = MUC }):up());
		fire(env, "presence/bare", nil, room_presence(ROOM, "alice", { 110 }));
		sent = cloud_notify(env);
	end);

	local function register(resource)
		env.push_registrations.alice = env.push_registrations.alice or {};
		env.push_registrations.alice["push.example<" .. resource] =
			{ jid = "push.example", node = resource, resource = resource };
	end

	it("reads no store per message for an account without registrations", function()
		for i = 1, 5 do fire(env, "message/bare", nil, message("bob", "hey alice " .. i)); end
		assert.equal(1, env.push_reads);
		assert.same({}, env.fired);
	end);

	it("pushes nothing to a registration whose device is connected, reading nothing more", function()
		register("laptop");
		for i = 1, 5 do fire(env, "message/bare", nil, message("bob", "hey alice " .. i)); end
		assert.equal(1, env.push_reads);
		assert.same({}, env.fired);
	end);

	it("asks mod_cloud_notify to push a mention to the device away, with the occupant and the body", function()
		register("phone");
		fire(env, "message/bare", nil, message("bob", "just chatting"));
		fire(env, "message/bare", nil, message("bob", "hey alice, look"));
		-- the decision waits for the room's disco#info, asked once, as the
		-- account, with its join
		assert.equal(1, #env.asked);
		assert.equal(0, #env.sent_iqs);
		local disco = env.asked[1];
		assert.equal(ROOM, disco.attr.to);
		assert.equal("alice@localhost", disco.attr.from);
		assert.truthy(disco:get_child("query", "http://jabber.org/protocol/disco#info"));
		assert.equal(0, #sent);
		fire(env, "iq/bare", nil, st.iq({ type = "result", from = ROOM, to = "alice@localhost", id = disco.attr.id })
			:tag("query", { xmlns = "http://jabber.org/protocol/disco#info" })
				:tag("feature", { var = "muc_open" }):up()
				:tag("feature", { var = "muc_nonanonymous" }):up());
		-- public: the mention alone
		assert.equal(1, #sent);
		assert.equal(ROOM .. "/bob", sent[1].summary["last-message-sender"]);
		assert.equal("hey alice, look", sent[1].summary["last-message-body"]);
		local form = sent[1].payload:get_child("x", DATA);
		assert.truthy(tostring(form):find("hey alice, look", 1, true));
	end);

	it("asks the room's privacy again after a configuration change, and once per join", function()
		register("phone");
		local function answer(i)
			fire(env, "iq/bare", nil, st.iq({ type = "result", from = ROOM, to = "alice@localhost",
				id = env.asked[i].attr.id }):tag("query", { xmlns = "http://jabber.org/protocol/disco#info" }));
		end
		fire(env, "message/bare", nil, message("bob", "one"));
		answer(1);
		fire(env, "message/bare", nil, message("bob", "two"));
		assert.equal(1, #env.asked, "known: not asked again");
		fire(env, "message/bare", nil, st.message({ from = ROOM, to = "alice@localhost", type = "groupchat" })
			:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" }):tag("status", { code = "104" }):up():up());
		fire(env, "message/bare", nil, message("bob", "three"));
		assert.equal(2, #env.asked, "asked again after the 104");
		answer(2);
		-- the join's subject: the join asked already
		fire(env, "message/bare", nil, st.message({ from = ROOM, to = "alice@localhost", type = "groupchat" })
			:tag("subject"):text("a subject"):up());
		fire(env, "message/bare", nil, message("bob", "four"));
		assert.equal(2, #env.asked, "one disco#info per join");
		assert.equal(0, #env.sent_iqs);
	end);

	it("holds mod_cloud_notify's own push of a queued copy, and decides for an unacknowledged one", function()
		register("phone");
		local P = new_session(env, "phone");
		P.push_identifier = "push.example<phone";
		local unacked_plain = message("bob", "plain");
		local unacked_mention = message("bob", "alice: there?");
		env.hooks["smacks-hibernation-start"].fn({ origin = P, queue = { unacked_plain, unacked_mention } });
		P.hibernating = 1;
		local push = env.hooks["cloud_notify/push"].fn;
		assert.is_true(push({ original_stanza = unacked_plain, username = "alice" }));
		assert.is_nil(push({ original_stanza = unacked_mention, username = "alice" }));
		-- a copy queued while hibernating: the library decided when the room sent it
		assert.is_true(push({ original_stanza = st.clone(unacked_mention), username = "alice" }));
		-- not a room the account is in: none of its business
		local other = st.message({ from = "other@muc.example/bob", type = "groupchat" }):text_tag("body", "x");
		assert.is_nil(push({ original_stanza = other, username = "alice" }));
	end);
end);
