-- Specs for mod_minimix.lua loaded into a mocked Prosody `module`: the shim
-- turns stanzas into core calls and carries out what the core decides.
local st = require "util.stanza";

local MUC = "http://jabber.org/protocol/muc";
local MUC_USER = MUC .. "#user";

local mock = require "shim_mock";
local load_shim, new_session, fire = mock.load_shim, mock.new_session, mock.fire;
local advance, tick_timer = mock.advance, mock.tick_timer;
local prosody13 = mock.prosody13;

local function join(id, nick)
	return st.presence({ to = "room@muc.example/" .. (nick or "alice"), id = id })
		:tag("x", { xmlns = MUC }):up();
end

local function room_presence(nick, codes, attrs)
	local p = st.presence(attrs or {});
	p.attr.from = "room@muc.example/" .. nick;
	p.attr.to = "alice@localhost";
	p:tag("x", { xmlns = MUC_USER }):tag("item", { affiliation = "none", role = "participant" }):up();
	for _, c in ipairs(codes or {}) do p:tag("status", { code = tostring(c) }):up(); end
	return p:up();
end

describe("mod_minimix shim", function()
	local env, P, L;
	before_each(function()
		env = load_shim();
		P = new_session(env, "phone");
		L = new_session(env, "laptop");
	end);

	it("hooks every event once, at the priority its neighbours need", function()
		local want = {
			-- a session's room traffic: after mod_blocklist (100) and
			-- mod_vcard_legacy (1) had their say, before mod_presence (0),
			-- mod_mam (0) and mod_carbons (-0.5) take it for the session's own
			["pre-presence/full"] = 0.5;
			["pre-presence/bare"] = 0.5;
			["pre-message/bare"] = 0.5;
			["pre-message/full"] = 0.5;
			["pre-iq/bare"] = 0.5;
			["pre-iq/full"] = 0.5;
			-- rooms' traffic to the account: after mod_blocklist (100),
			-- before mod_presence (0), mod_mam (0), mod_carbons (-0.5) and
			-- mod_message (-1) hand it to every session, or bounce it
			["presence/bare"] = 10;
			["message/bare"] = 10;
			["iq/bare"] = 10;
			-- before mod_smacks (0) bounces a fork it could not deliver
			["delivery/failure"] = 10;
			-- notifications: the order among their handlers does not matter
			["resource-unbind"] = 0;
			["s2sout-destroyed"] = 0;
			["s2sin-destroyed"] = 0;
			["s2sout-established"] = 0;
			["s2sin-established"] = 0;
			-- before mod_cloud_notify (0) pushes for the unacknowledged
			-- stanzas (minimix_push.lib.lua)
			["smacks-hibernation-start"] = 1;
			["smacks-hibernation-end"] = 0;
			["global:server-stopping"] = 0;
			["global:stats-update"] = 0;
			-- the room log writes what waits (minimix_log.lib.lua)
			["global:server-cleanup"] = 0;
			-- push (minimix_push.lib.lua): before mod_cloud_notify (0)
			-- writes a registration, handles a push service's answer and
			-- before other handlers see a push
			["iq-set/self/urn:xmpp:push:0:enable"] = 10;
			["iq-set/self/urn:xmpp:push:0:disable"] = 10;
			["iq/host"] = 10;
			["resource-bind"] = 0;
			["cloud_notify/push"] = 10;
		};
		local got, hooked = {}, {};
		for name, h in pairs(env.hooks) do got[name] = h.prio; end
		for name in pairs(want) do hooked[name] = 1; end
		assert.same(want, got);
		assert.same(hooked, env.hooked, "each event hooked once");
	end);

	it("records the join before routing it, and routes it from the bare JID", function()
		-- the room answers synchronously, from inside module:send
		env.on_send = function(stanza)
			if stanza.name == "presence" and stanza.attr.type == nil then
				fire(env, "presence/bare", nil, room_presence("alice", { 110 }, { id = stanza.attr.id }));
			end
		end;
		assert.is_true(fire(env, "pre-presence/full", P, join("j1")));
		assert.equal(1, #env.sent);
		assert.equal("alice@localhost", env.sent[1].attr.from);
		assert.equal("room@muc.example/alice", env.sent[1].attr.to);
		assert.equal("j1", env.sent[1].attr.id);
		assert.truthy(env.sent[1]:get_child("x", MUC));
		-- the account asks whether the room keeps an archive, once
		-- (minimix_mam.lib.lua stamps ids in a room without one)
		assert.equal(1, #env.asked);
		assert.equal("alice@localhost", env.asked[1].attr.from);
		assert.equal("room@muc.example", env.asked[1].attr.to);
		assert.truthy(env.asked[1]:get_child("query", "http://jabber.org/protocol/disco#info"));
		assert.equal(1, #P.got);
		assert.equal("alice@localhost/phone", P.got[1].attr.to);
		assert.equal("j1", P.got[1].attr.id);
		assert.equal(0, #L.got);
	end);

	it("forks room messages to the joined sessions only", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", L, join("j2"));
		local T = new_session(env, "tablet");
		P.got, L.got = {}, {};
		local msg = st.message({ from = "room@muc.example/bob", to = "alice@localhost", type = "groupchat", id = "m1" })
			:text_tag("body", "hi");
		assert.is_true(fire(env, "message/bare", nil, msg));
		assert.equal(1, #P.got);
		assert.equal(1, #L.got);
		assert.equal(0, #T.got);
		assert.equal("alice@localhost/laptop", L.got[1].attr.to);
		assert.equal("alice@localhost", msg.attr.to, "the original stanza is restored");
	end);

	it("reads a room message the room hands to each local account as one object once", function()
		-- Prosody's MUC routes one object to all its occupants, changing 'to'
		local B = new_session(env, "desk", nil, "bob");
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", B, join("j2", "bob"));
		local self_bob = room_presence("bob", { 110 });
		self_bob.attr.to = "bob@localhost";
		fire(env, "presence/bare", nil, self_bob);
		P.got, B.got = {}, {};
		local msg = st.message({ from = "room@muc.example/carol", to = "alice@localhost", type = "groupchat",
			id = "m1" }):text_tag("body", "to both");
		assert.is_true(fire(env, "message/bare", nil, msg));
		msg.attr.to = "bob@localhost";
		assert.is_true(fire(env, "message/bare", nil, msg));
		assert.equal(1, #P.got);
		assert.equal(1, #B.got);
		assert.equal("to both", B.got[1]:get_child_text("body"));
		assert.equal("bob@localhost/desk", B.got[1].attr.to);
		advance(env, 1);
		assert.equal(1, #env.logged, "logged once for the room");
		-- the object changed (another message in it): read again
		msg.attr.id, msg.attr.to = "m2", "alice@localhost";
		msg:text_tag("body", "again");
		assert.is_true(fire(env, "message/bare", nil, msg));
		assert.equal(2, #P.got);
		assert.equal("m2", P.got[2].attr.id);
		advance(env, 1);
		assert.equal(2, #env.logged, "the changed message is logged too");
	end);

	describe("sends the room's stanza", function()
		-- Same element: name, attributes, children in order, text.
		local function same_xml(a, b)
			if type(a) == "string" or type(b) == "string" then return a == b; end
			if a.name ~= b.name or #a ~= #b then return false; end
			for k, v in pairs(a.attr) do if b.attr[k] ~= v then return false; end end
			for k, v in pairs(b.attr) do if a.attr[k] ~= v then return false; end end
			for i = 1, #a do if not same_xml(a[i], b[i]) then return false; end end
			return true;
		end
		local function joined(...)
			for i, s in ipairs({ ... }) do
				fire(env, "pre-presence/full", s, join("j" .. i));
				if i == 1 then fire(env, "presence/bare", nil, room_presence("alice", { 110 })); end
				s.got, s.wire = {}, {};
			end
		end
		local function room_message()
			return st.message({ from = "room@muc.example/bob", to = "alice@localhost", type = "groupchat",
					id = "m'1", ["xml:lang"] = "en" })
				:text_tag("body", "1 < 2 & \"3\" > 'x'")
				:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = "s1" }):up();
		end
		local function as_sent_to(stanza, jid)
			local copy = st.clone(stanza);
			copy.attr.to = jid;
			return copy;
		end

		it("serialized once, each session's copy addressed to it", function()
			local O = new_session(env, "o'neil & <co>");
			joined(P, L, O);
			local msg = room_message();
			local mt = getmetatable(msg);
			local tostring_orig, serialized = mt.__tostring, 0;
			mt.__tostring = function(t) serialized = serialized + 1; return tostring_orig(t); end
			local ok, err = pcall(fire, env, "message/bare", nil, msg);
			mt.__tostring = tostring_orig;
			assert(ok, err);
			assert.equal(1, serialized, "one serialization for three sessions");
			for _, s in ipairs({ P, L, O }) do
				assert.equal(1, #s.got);
				assert.is_true(same_xml(as_sent_to(msg, s.full_jid), s.got[1]), s.wire[1]);
			end
			assert.equal("alice@localhost/o'neil & <co>", O.got[1].attr.to);
			assert.equal("alice@localhost", msg.attr.to, "the original stanza is restored");
		end);

		it("as the filters hand it back: a copy, or nothing", function()
			local Q = new_session(env, "queued");
			joined(P, Q);
			-- mod_websocket hands back a copy with its namespace
			local copy;
			P.filters[1] = function(t)
				copy = st.clone(t);
				copy.attr.xmlns = "jabber:client";
				return copy;
			end;
			-- mod_smacks while hibernating: queues a copy, sends nothing
			local queued;
			Q.filters[1] = function(t) queued = st.clone(t); return nil; end;
			local msg = room_message();
			fire(env, "message/bare", nil, msg);
			assert.equal(tostring(copy), P.wire[1], "the filter's copy as it is");
			assert.equal("jabber:client", P.got[1].attr.xmlns);
			assert.equal(P.full_jid, P.got[1].attr.to);
			assert.equal(0, #Q.wire);
			assert.is_true(same_xml(as_sent_to(msg, Q.full_jid), queued));
		end);

		it("as a filter changed it in place", function()
			joined(L);
			L.filters[1] = function(t)
				t:tag("marked", { xmlns = "urn:example:mark" }):up();
				t.attr.type = "normal";
				return t;
			end;
			fire(env, "message/bare", nil, room_message());
			assert.truthy(L.got[1]:get_child("marked", "urn:example:mark"), L.wire[1]);
			assert.equal("normal", L.got[1].attr.type);
			assert.equal(L.full_jid, L.got[1].attr.to);
		end);

		it("through session.send where a session has no rawsend (BOSH)", function()
			local B = new_session(env, "bosh", "bosh");
			joined(P, B);
			local msg = room_message();
			fire(env, "message/bare", nil, msg);
			assert.is_true(same_xml(as_sent_to(msg, B.full_jid), B.got[1]), B.wire[1]);
			assert.is_true(same_xml(as_sent_to(msg, P.full_jid), P.got[1]), P.wire[1]);
		end);

		it("serialized anew once a stanza object changes between accounts", function()
			joined(P);
			local msg = room_message();
			fire(env, "message/bare", nil, msg);
			msg:tag("edited", { xmlns = "urn:example:edit" }):up();
			msg.attr.id = "m2";
			fire(env, "message/bare", nil, msg);
			assert.equal(2, #P.got);
			assert.is_nil(P.got[1]:get_child("edited", "urn:example:edit"));
			assert.truthy(P.got[2]:get_child("edited", "urn:example:edit"), P.wire[2]);
			assert.equal("m2", P.got[2].attr.id);
		end);
	end);

	it("lets traffic from other entities pass untouched", function()
		local msg = st.message({ from = "bob@localhost/x", to = "alice@localhost", type = "chat" }):text_tag("body", "hi");
		assert.is_nil(fire(env, "message/bare", nil, msg));
		local pres = st.presence({ to = "bob@localhost/x" });
		assert.is_nil(fire(env, "pre-presence/full", P, pres));
		assert.equal(0, #env.sent);
	end);

	it("replays the cache to a later session with its own id and 210", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("bob"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		env.sent = {};
		assert.is_true(fire(env, "pre-presence/full", L, join("j2", "ally")));
		assert.equal(0, #env.sent, "no second join in the room");
		assert.equal(2, #L.got);
		assert.equal("room@muc.example/bob", L.got[1].attr.from);
		assert.equal("room@muc.example/alice", L.got[2].attr.from);
		assert.equal("j2", L.got[2].attr.id);
		local codes = {};
		for s in L.got[2]:get_child("x", MUC_USER):childtags("status") do codes[#codes+1] = s.attr.code; end
		assert.same({ "110", "210" }, codes);
	end);

	describe("an IQ the room never answers", function()
		local STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas";
		before_each(function()
			env = load_shim({ minimix_iq_timeout = 10 });
			P = new_session(env, "phone");
			L = new_session(env, "laptop");
			fire(env, "pre-presence/full", P, join("j1"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			fire(env, "pre-presence/full", L, join("j2"));
			advance(env, 0);
			env.sent, P.got, L.got = {}, {}, {};
		end);

		local function ask(id)
			assert.is_true(fire(env, "pre-iq/full", P, st.iq({ to = "room@muc.example/bob", type = "get", id = id })
				:tag("query", { xmlns = "urn:example:unanswered" }):up()));
			local sent = env.sent[#env.sent];
			assert.equal("iq", sent.name);
			assert.equal("alice@localhost", sent.attr.from);
			assert.equal("room@muc.example/bob", sent.attr.to);
			return sent.attr.id;
		end

		local function timed_out(stanza, id)
			assert.equal("iq", stanza.name);
			assert.equal("error", stanza.attr.type);
			assert.equal(id, stanza.attr.id);
			assert.equal("room@muc.example/bob", stanza.attr.from);
			assert.equal("alice@localhost/phone", stanza.attr.to);
			local etype, condition = stanza:get_error();
			assert.equal("wait", etype);
			assert.equal("remote-server-timeout", condition);
			assert.truthy(stanza:get_child("error"):get_child(condition, STANZAS));
		end

		it("fails with remote-server-timeout to the asking session, every time", function()
			local module_id = ask("q1");
			advance(env, 5);
			assert.equal(0, #P.got, "not before minimix_iq_timeout");
			advance(env, 60);
			assert.equal(1, #P.got);
			timed_out(P.got[1], "q1");
			assert.equal(0, #L.got);
			-- a late answer is nobody's any more
			local late = st.iq({ from = "room@muc.example/bob", to = "alice@localhost", type = "result", id = module_id });
			assert.is_nil(fire(env, "iq/bare", nil, late));
			assert.equal(1, #P.got);

			-- the next unanswered IQ times out as well (the clock keeps ticking)
			ask("q2");
			advance(env, 60);
			assert.equal(2, #P.got);
			timed_out(P.got[2], "q2");
			ask("q3");
			advance(env, 3600);
			assert.equal(3, #P.got);
			timed_out(P.got[3], "q3");
			assert.equal(0, #L.got);
		end);
	end);

	it("replays messages with a XEP-0203 delay from the room, stamped when the room sent them", function()
		local DELAY = "urn:xmpp:delay";
		-- without the room log: the in-memory ring
		env = load_shim({ minimix_log = false });
		P = new_session(env, "phone");
		L = new_session(env, "laptop");
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		-- from the room's own history, with the room's delay
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "h1" }):text_tag("body", "old")
			:tag("delay", { xmlns = DELAY, from = "room@muc.example", stamp = "2020-01-02T03:04:05Z" }):up());
		-- live, at the mocked clock: 1700000000
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
			type = "groupchat", id = "m1" }):text_tag("body", "new"));
		assert.is_nil(P.got[#P.got]:get_child("delay", DELAY), "live messages go out as they came");
		env.clock = env.clock + 100;
		fire(env, "pre-presence/full", L, st.presence({ to = "room@muc.example/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):tag("history", { maxstanzas = "5" }):up():up());
		local bodies = {};
		for _, m in ipairs(L.got) do
			if m.name == "message" then
				bodies[#bodies+1] = m:get_child_text("body");
				local delays = {};
				for d in m:childtags("delay", DELAY) do delays[#delays+1] = d; end
				assert.equal(1, #delays, tostring(m));
				assert.equal("room@muc.example", delays[1].attr.from);
				if m.attr.id == "h1" then
					assert.equal("2020-01-02T03:04:05Z", delays[1].attr.stamp);
				else
					assert.equal("2023-11-14T22:13:20Z", delays[1].attr.stamp);
				end
			end
		end
		assert.same({ "old", "new" }, bodies);
	end);

	it("serves a later session's catch-up from the room log, within the account's span", function()
		local DELAY = "urn:xmpp:delay";
		fire(env, "pre-presence/full", P, join("j1"));
		local joined_at = env.clock;
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		-- the room's history of before the account was in: logged, not served
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "h1" }):text_tag("body", "old")
			:tag("delay", { xmlns = DELAY, from = "room@muc.example", stamp = "2020-01-02T03:04:05Z" }):up());
		env.clock = env.clock + 1.5;
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
			type = "groupchat", id = "m1" }):text_tag("body", "new"));
		advance(env, 1); -- written
		env.clock = env.clock + 0.25;
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
			type = "groupchat", id = "m2" }):text_tag("body", "newer")); -- still waiting
		assert.equal(2, #env.logged, "the history and the first live message are written");
		fire(env, "pre-presence/full", L, st.presence({ to = "room@muc.example/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):tag("history", { maxstanzas = "5" }):up():up());
		local bodies, stamps = {}, {};
		for _, m in ipairs(L.got) do
			if m.name == "message" then
				bodies[#bodies+1] = m:get_child_text("body");
				local delays = {};
				for dl in m:childtags("delay", DELAY) do delays[#delays+1] = dl; end
				assert.equal(1, #delays, tostring(m));
				assert.equal("room@muc.example", delays[1].attr.from);
				stamps[#stamps+1] = delays[1].attr.stamp;
				assert.equal("alice@localhost/laptop", m.attr.to);
			end
		end
		assert.same({ "new", "newer" }, bodies);
		-- when the room said it (0.12 writes whole seconds)
		assert.equal(os.date("!%Y-%m-%dT%H:%M:%S", math.floor(joined_at + 1.5)),
			stamps[1]:match("^[^.Z]*"));
		-- the span is stored with the membership, and a restart gives it back
		advance(env, 0);
		local stored = env.stored.alice["room@muc.example"];
		assert.same({ { joined_at } }, stored.spans);
		local env2 = load_shim(nil, function(e) e.stored = env.stored; end);
		advance(env2, 0);
		local m = env2.module.save().core:memberships("alice@localhost")[1];
		assert.same({ { joined_at } }, m.spans);
	end);

	for _, log in ipairs({ false, true }) do
		it("catches up a subject with a body as a message, and keeps the subject a thread does not change ("
				.. (log and "room log" or "ring") .. ")", function()
			-- XEP-0045 §8.1: a <subject/> with a <body/> or a <thread/> is a message
			env = load_shim({ minimix_log = log });
			P = new_session(env, "phone");
			L = new_session(env, "laptop");
			fire(env, "pre-presence/full", P, join("j1"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			local function say(id, subject, body, thread)
				local m = st.message({ from = "room@muc.example/bob", to = "alice@localhost",
					type = "groupchat", id = id }):text_tag("subject", subject);
				if body then m:text_tag("body", body); end
				if thread then m:text_tag("thread", thread); end
				fire(env, "message/bare", nil, m);
			end
			say("s0", "Real");
			for i = 1, 3 do say("m" .. i, "Topic", "said " .. i); end
			say("t1", "Threaded", nil, "th1");
			advance(env, 1);
			fire(env, "pre-presence/full", L, st.presence({ to = "room@muc.example/alice", id = "j2" })
				:tag("x", { xmlns = MUC }):tag("history", { maxstanzas = "10" }):up():up());
			local got = {};
			for _, m in ipairs(L.got) do
				if m.name == "message" then
					got[#got+1] = m:get_child_text("body") or ("subject:" .. m:get_child_text("subject"));
				end
			end
			assert.same({ "said 1", "said 2", "said 3", "subject:Real" }, got);
		end);
	end

	it("reads a room message's children as get_child() finds them", function()
		-- a body, subject or thread counts in no namespace or the
		-- stanza's own; of the room's stanza-ids the last; of its delays
		-- the first; a retraction in XEP-0424's first form withdraws
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		local function say(id, build)
			local m = st.message({ xmlns = "jabber:client", from = "room@muc.example/bob",
				to = "alice@localhost", type = "groupchat", id = id });
			build(m);
			fire(env, "message/bare", nil, m);
		end
		say("m0", function(m)
			m:text_tag("body", "late")
				:tag("delay", { xmlns = "urn:xmpp:delay", from = "room@muc.example", stamp = "2020-01-01T00:00:00Z" }):up()
				:tag("delay", { xmlns = "urn:xmpp:delay", from = "bob@example.com", stamp = "2021-01-01T00:00:00Z" }):up();
		end);
		say("m1", function(m) m:text_tag("body", "own namespace", { xmlns = "jabber:client" }); end);
		say("m2", function(m) m:text_tag("body", "not a body", { xmlns = "urn:example:other" }); end);
		say("s1", function(m)
			m:text_tag("subject", "Topic"):text_tag("thread", "not a thread", { xmlns = "urn:example:other" });
		end);
		say("m3", function(m)
			m:text_tag("body", "stamped");
			for _, sid in ipairs({ { "room@muc.example", "a" }, { "other@muc.example", "x" },
					{ "room@muc.example", "b" } }) do
				m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = sid[1], id = sid[2] }):up();
			end
		end);
		local last = env.module.save().core:memberships("alice@localhost")[1];
		assert.equal("b", last.last_id);
		say("m4", function(m)
			m:text_tag("body", "secret"):tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = "c" }):up();
		end);
		say("r1", function(m)
			m:tag("apply-to", { xmlns = "urn:xmpp:fasten:0", id = "c" })
				:tag("retract", { xmlns = "urn:xmpp:message-retract:0" }):up():up();
		end);
		advance(env, 1);
		-- said (its first delay) before what the device asks for
		fire(env, "pre-presence/full", L, st.presence({ to = "room@muc.example/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):tag("history", { since = "2020-06-01T00:00:00Z" }):up():up());
		local got = {};
		for _, m in ipairs(L.got) do
			if m.name == "message" then
				got[#got+1] = m:get_child_text("body") or m:get_child_text("subject")
					and ("subject:" .. m:get_child_text("subject")) or "withdrawn";
			end
		end
		assert.same({ "own namespace", "stamped", "withdrawn", "subject:Topic" }, got);
	end);

	it("counts a since stamp from its microsecond: a message of that microsecond is included", function()
		-- the clock is finer than a stamp: a client given a message's stamp
		-- (rounded to the microsecond) and asking since it gets that
		-- message again.  1700000001 + 3 * 2^-22 s is exact in a double and
		-- lies just before 22:13:21.000001, its stamp rounded.
		local T = 1700000000;
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		env.clock = T + 0.5;
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
			type = "groupchat", id = "m0" }):text_tag("body", "before"));
		env.clock = T + 1 + 3 * 2^-22;
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
			type = "groupchat", id = "m1" }):text_tag("body", "at"));
		env.clock = T + 2;
		fire(env, "pre-presence/full", L, st.presence({ to = "room@muc.example/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):tag("history", { since = "2023-11-14T22:13:21.000001Z" }):up():up());
		local bodies = {};
		for _, m in ipairs(L.got) do
			if m.name == "message" then bodies[#bodies+1] = m:get_child_text("body"); end
		end
		assert.same({ "at" }, bodies);
	end);

	it("stores memberships as soon as they change, not when the last message seen is written", function()
		env = load_shim({ minimix_seen_interval = 3600 });
		P = new_session(env, "phone");
		fire(env, "pre-presence/full", P, join("j1"));
		advance(env, 1);
		assert.is_nil(env.stored.alice, "a join not yet confirmed is not stored");
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		-- a turn of the main loop, no time passing
		advance(env, 0);
		-- with when the account was in: the span open since its join
		assert.same({ ["room@muc.example"] = { nick = "alice", spans = { { env.clock } } } }, env.stored.alice);
		-- a message seen waits for the periodic write
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "m1" }):text_tag("body", "hi")
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = "s1" }):up());
		advance(env, 1);
		assert.is_nil(env.stored.alice["room@muc.example"].last_id);
		advance(env, 3600);
		assert.equal("s1", env.stored.alice["room@muc.example"].last_id);
		-- the account leaves: forgotten at once
		fire(env, "pre-presence/full", P, st.presence({ to = "room@muc.example/alice", type = "unavailable" }));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }, { type = "unavailable" }));
		advance(env, 0);
		assert.is_nil(env.stored.alice);
	end);

	it("stores the room's stanza-id as the last message seen, not the message's id", function()
		-- the start-up restore has read the store: the account's record may be written
		advance(env, 0);
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "msg-1" }):text_tag("body", "hi")
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "bob@elsewhere.example", id = "other-1" }):up()
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = "room-1" }):up()
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "alice@localhost", id = "mine-1" }):up());
		env.hooks["global:server-stopping"].fn({});
		assert.equal("room-1", env.stored.alice["room@muc.example"].last_id);
		assert.equal(1700000000, env.stored.alice["room@muc.example"].last_stamp);
	end);

	it("keeps and stores a digest of an over-long stanza-id, never the id", function()
		-- the start-up restore has read the store: the account's record may be written
		advance(env, 0);
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		local long = ("x"):rep(100 * 1024);
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "msg-1" }):text_tag("body", "hi")
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = long }):up());
		assert.equal(long, P.got[#P.got]:get_child("stanza-id", "urn:xmpp:sid:0").attr.id, "delivered as sent");
		env.hooks["global:server-stopping"].fn({});
		local last_id = env.stored.alice["room@muc.example"].last_id;
		assert.equal(41, #last_id);
		assert.equal("#" .. require "util.hashes".sha1(long, true), last_id);
		local m = env.module.save().core:memberships("alice@localhost")[1];
		assert.equal(last_id, m.last_id, "the core holds the digest too");
		-- one of 256 bytes is kept as it is
		local edge = ("y"):rep(256);
		fire(env, "message/bare", nil, st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = "msg-2" }):text_tag("body", "hi")
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = edge }):up());
		env.hooks["global:server-stopping"].fn({});
		assert.equal(edge, env.stored.alice["room@muc.example"].last_id);
	end);

	it("knows the last message seen by its digest in the room's history after a restart", function()
		-- the start-up restore has read the store: the account's record may be written
		advance(env, 0);
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		local long = ("x"):rep(100 * 1024);
		local function said(id, sid, body, delayed)
			local m = st.message({ from = "room@muc.example/bob", to = "alice@localhost",
				type = "groupchat", id = id }):text_tag("body", body);
			if delayed then
				m:tag("delay", { xmlns = "urn:xmpp:delay", from = "room@muc.example",
					stamp = "2023-11-14T22:13:20Z" }):up();
			end
			return m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = sid }):up();
		end
		fire(env, "message/bare", nil, said("m1", long, "seen"));
		env.hooks["global:server-stopping"].fn({});
		-- a restart, the ring alone: the room's history is all the later
		-- session gets, so what it skipped shows
		local env2 = load_shim({ minimix_log = false }, function(e) e.stored = env.stored; end);
		advance(env2, 0);
		local L2 = new_session(env2, "laptop");
		fire(env2, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env2, "message/bare", nil, said("m1", long, "seen", true));
		fire(env2, "message/bare", nil, said("m2", "short", "missed", true));
		fire(env2, "pre-presence/full", L2, st.presence({ to = "room@muc.example/alice", id = "j2" })
			:tag("x", { xmlns = MUC }):tag("history", { maxstanzas = "10" }):up():up());
		local bodies = {};
		for _, m in ipairs(L2.got) do
			if m.name == "message" then bodies[#bodies+1] = m:get_child_text("body"); end
		end
		assert.same({ "missed" }, bodies);
	end);

	it("returns the room's error for a message to the session that sent it, by the message's id", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", L, join("j2"));
		env.sent, P.got, L.got = {}, {}, {};
		assert.is_true(fire(env, "pre-message/bare", L, st.message({ to = "room@muc.example", type = "groupchat", id = "g1" })
			:text_tag("body", "too fast")));
		assert.equal("g1", env.sent[1].attr.id);
		local err = st.message({ from = "room@muc.example", to = "alice@localhost", type = "error", id = "g1" })
			:tag("error", { type = "wait" }):tag("resource-constraint", { xmlns = "urn:ietf:params:xml:ns:xmpp-stanzas" }):up():up()
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "room@muc.example", id = "g2" }):up();
		assert.is_true(fire(env, "message/bare", nil, err));
		assert.equal(0, #P.got);
		assert.equal(1, #L.got);
		assert.equal("g1", L.got[1].attr.id);
		assert.equal("error", L.got[1].attr.type);
	end);

	it("replays the self-presence to a later session without the first one's news", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110, 201, 210, 100 }));
		fire(env, "pre-presence/full", L, join("j2"));
		local self;
		for _, s in ipairs(L.got) do
			if s.attr.from == "room@muc.example/alice" then self = s; end
		end
		assert.truthy(self, "the self-presence");
		local codes = {};
		for status in self:get_child("x", MUC_USER):childtags("status") do
			codes[#codes+1] = status.attr.code;
		end
		table.sort(codes);
		assert.same({ "100", "110" }, codes);
	end);

	it("sends a refusal from the core to the asking session only", function()
		env = load_shim({ minimix_max_rooms = 1 });
		P = new_session(env, "phone");
		fire(env, "pre-presence/full", P, join("j1"));
		local second = st.presence({ to = "other@muc.example/alice", id = "j9" }):tag("x", { xmlns = MUC }):up();
		assert.is_true(fire(env, "pre-presence/full", P, second));
		assert.equal(1, #env.sent);
		local err = P.got[#P.got];
		assert.equal("error", err.attr.type);
		assert.equal("j9", err.attr.id);
		local etype, condition = err:get_error();
		assert.equal("wait", etype);
		assert.equal("resource-constraint", condition);
	end);

	it("reflects a leave to the leaving session when another stays", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", L, join("j2"));
		env.sent, P.got = {}, {};
		assert.is_true(fire(env, "pre-presence/full", P,
			st.presence({ to = "room@muc.example/alice", type = "unavailable", id = "x1" })));
		assert.equal(0, #env.sent, "the laptop's presence is the same: the room sees nothing");
		assert.equal(1, #P.got);
		assert.equal("unavailable", P.got[1].attr.type);
		assert.equal("x1", P.got[1].attr.id);
		assert.equal("110", P.got[1]:get_child("x", MUC_USER):get_child("status").attr.code);
	end);

	it("shows the room the next device's presence when the one it showed leaves", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		local away = join("j2"):text_tag("show", "away");
		fire(env, "pre-presence/full", L, away);
		env.sent = {};
		fire(env, "pre-presence/full", P,
			st.presence({ to = "room@muc.example/alice", type = "unavailable", id = "x1" }));
		assert.equal(1, #env.sent);
		local shown = env.sent[1];
		assert.is_nil(shown.attr.type);
		assert.equal("alice@localhost", shown.attr.from);
		assert.equal("room@muc.example/alice", shown.attr.to);
		assert.equal("away", shown:get_child_text("show"));
		assert.is_nil(shown:get_child("x", MUC), "an update, not a second join");
	end);

	it("sends a status update only when it changes what the room sees", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", L, join("j2"));
		env.sent = {};
		-- the laptop goes away: the phone is still available, the room sees nothing
		assert.is_true(fire(env, "pre-presence/full", L,
			st.presence({ to = "room@muc.example/alice", id = "s1" }):text_tag("show", "away")));
		assert.equal(0, #env.sent);
		-- the phone goes xa: the laptop (away) now leads
		assert.is_true(fire(env, "pre-presence/full", P,
			st.presence({ to = "room@muc.example/alice", id = "s2" }):text_tag("show", "xa")));
		assert.equal(1, #env.sent);
		assert.equal("away", env.sent[1]:get_child_text("show"));
		-- the phone is back to chat: it leads, its own stanza goes out
		assert.is_true(fire(env, "pre-presence/full", P,
			st.presence({ to = "room@muc.example/alice", id = "s3" }):text_tag("show", "chat")));
		assert.equal(2, #env.sent);
		assert.equal("chat", env.sent[2]:get_child_text("show"));
		assert.equal("s3", env.sent[2].attr.id);
	end);

	describe("bookmarks", function()
		local service;
		local function bookmark(autojoin, nick)
			local item = st.stanza("item", { xmlns = "http://jabber.org/protocol/pubsub", id = "room@muc.example" })
				:tag("conference", { xmlns = "urn:xmpp:bookmarks:1", autojoin = autojoin, name = "Room" });
			if nick then item:text_tag("nick", nick); end
			return item:up();
		end
		before_each(function()
			local events = require "util.events".new();
			service = { events = events, published = {} };
			service.stored = {};
			function service:get_items(node, _, id)
				local item = self.stored[id];
				return true, item and { [id] = item } or {};
			end
			function service:publish(node, actor, id, item)
				self.published[#self.published+1] = { node = node, id = id, item = st.clone(item) };
				self.stored[id] = item;
				return true;
			end
			env.pep.services.alice = service;
			env.item_handlers["pep-service"].added({ item = { service = service, jid = "alice@localhost" } });
		end);

		it("joins the account, with no session, for an autojoin bookmark", function()
			local item = bookmark("true", "Ally");
			service.stored["room@muc.example"] = item;
			service.events.fire_event("item-published/urn:xmpp:bookmarks:1",
				{ node = "urn:xmpp:bookmarks:1", id = "room@muc.example", item = item });
			assert.equal(1, #env.sent);
			assert.equal("alice@localhost", env.sent[1].attr.from);
			assert.equal("room@muc.example/Ally", env.sent[1].attr.to);
			assert.truthy(env.sent[1]:get_child("x", MUC));
		end);

		it("leaves when the bookmark is retracted, and turns autojoin off when removed", function()
			local item = bookmark("true");
			service.stored["room@muc.example"] = item;
			service.events.fire_event("item-published/urn:xmpp:bookmarks:1",
				{ node = "urn:xmpp:bookmarks:1", id = "room@muc.example", item = item });
			assert.equal("room@muc.example/alice", env.sent[1].attr.to, "the localpart as nick");
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			-- kicked: the bookmark follows
			fire(env, "presence/bare", nil, room_presence("alice", { 110, 307 }, { type = "unavailable" }));
			assert.equal(1, #service.published);
			assert.equal("false", service.published[1].item:get_child("conference", "urn:xmpp:bookmarks:1").attr.autojoin);
			assert.equal("Room", service.published[1].item:get_child("conference", "urn:xmpp:bookmarks:1").attr.name);

			-- join again by bookmark, then retract: the account leaves
			service.stored["room@muc.example"] = bookmark("true");
			service.events.fire_event("item-published/urn:xmpp:bookmarks:1",
				{ node = "urn:xmpp:bookmarks:1", id = "room@muc.example", item = service.stored["room@muc.example"] });
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			env.sent = {};
			service.events.fire_event("item-retracted", { node = "urn:xmpp:bookmarks:1", id = "room@muc.example" });
			assert.equal(1, #env.sent);
			assert.equal("unavailable", env.sent[1].attr.type);
			assert.equal("alice@localhost", env.sent[1].attr.from);
		end);

		it("lists and leaves rooms by ad-hoc command, for the caller's account only", function()
			fire(env, "pre-presence/full", P, join("j1"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			local list, leave_all;
			for _, p in ipairs(env.provided) do
				if p.item.node == "urn:xmpp:minimix#list" then list = p.item; end
				if p.item.node == "urn:xmpp:minimix#leave-all" then leave_all = p.item; end
			end
			local bob = list.handler(list, { from = "bob@localhost/x" });
			assert.equal("The account is in no rooms.", bob.info);
			local mine = list.handler(list, { from = "alice@localhost/phone" });
			assert.matches("room@muc.example as alice %(joined%): 1 session", mine.info);
			env.sent, P.got = {}, {};
			local done = leave_all.handler(leave_all, { from = "alice@localhost/laptop" });
			-- the room has not answered the leave
			assert.equal("Left 0 room(s); leaving 1 more: the rooms have not confirmed yet", done.info);
			assert.equal("unavailable", env.sent[1].attr.type);
			assert.equal("unavailable", P.got[1].attr.type, "the joined session sees itself leave");
			-- a room that answers at once (a local MUC)
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }, { type = "unavailable" }));
			fire(env, "pre-presence/full", P, join("j2"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			env.on_send = function(stanza)
				if stanza.attr.type == "unavailable" then
					fire(env, "presence/bare", nil, room_presence("alice", { 110 }, { type = "unavailable" }));
				end
			end;
			done = leave_all.handler(leave_all, { from = "alice@localhost/laptop" });
			assert.equal("Left 1 room(s)", done.info);
		end);
	end);

	describe("deadlines", function()
		-- timers with a delay (a 0 s timer batches the storage writes)
		local function delayed(e)
			local n = 0;
			for _, t in ipairs(e.timers) do
				if t.delay > 0 then n = n + 1; end
			end
			return n;
		end

		it("are the core's: one repeating timer, none per action", function()
			local tick = tick_timer(env);
			fire(env, "pre-presence/full", P, join("j1"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			-- (after the module's disco#info query of the room, which has its own)
			local timers = delayed(env);
			-- a shutdown: the re-join waits 5 s
			fire(env, "presence/bare", nil, room_presence("alice", { 110, 332 }, { type = "unavailable" }));
			assert.equal(timers, delayed(env), "no timer of its own for the re-join");
			env.sent = {};
			assert.equal(1, tick.fn());
			env.clock = env.clock + 5;
			assert.equal(1, tick.fn(), "it repeats");
			assert.equal(1, #env.sent);
			assert.equal("room@muc.example/alice", env.sent[1].attr.to);
			assert.truthy(env.sent[1]:get_child("x", MUC), "the re-join");
		end);

		it("survive a reload: the new instance's timer fires the old core's waits", function()
			fire(env, "pre-presence/full", P, join("j1"));
			fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
			fire(env, "presence/bare", nil, room_presence("alice", { 110, 332 }, { type = "unavailable" }));
			tick_timer(env).fn(); -- the wait starts
			local saved = env.module.save();
			env.module.unload();
			local env2 = load_shim();
			env2.bare = env.bare;
			env2.module.restore(saved);
			env2.clock = env2.clock + 5;
			tick_timer(env2).fn();
			assert.equal(1, #env2.sent, "the re-join, from the new instance");
			assert.truthy(env2.sent[1]:get_child("x", MUC));
		end);

		it("fail a join the room never answers with remote-server-timeout", function()
			local env2 = load_shim({ minimix_join_timeout = 3, minimix_bookmarks = false });
			local S = new_session(env2, "phone");
			local tick = tick_timer(env2);
			tick.fn();
			fire(env2, "pre-presence/full", S, join("j1"));
			S.got = {};
			env2.clock = env2.clock + 3;
			tick.fn();
			assert.equal(1, #S.got);
			assert.equal("error", S.got[1].attr.type);
			assert.equal("j1", S.got[1].attr.id);
			assert.equal("room@muc.example/alice", S.got[1].attr.from);
			assert.equal("remote-server-timeout", select(2, S.got[1]:get_error()));
		end);
	end);

	it("asks what the running Prosody offers: 13's roles and shell, 0.12's neither", function()
		local function commands(e)
			local out = {};
			for _, p in ipairs(e.provided) do out[p.item.node] = p.item.permission; end
			return out;
		end
		local function shell(e)
			local out = {};
			for _, i in ipairs(e.items) do
				if i.kind == "shell-command" then out[#out+1] = i.item.section .. ":" .. i.item.name; end
			end
			table.sort(out);
			return out;
		end
		assert.same({ ["urn:xmpp:minimix#list"] = "local_user", ["urn:xmpp:minimix#leave"] = "local_user",
			["urn:xmpp:minimix#leave-all"] = "local_user" }, commands(env));
		assert.same({}, shell(env));
		assert.same({}, env.permissions);
		local e13 = load_shim(nil, prosody13);
		assert.same({ ["urn:xmpp:minimix#list"] = "check", ["urn:xmpp:minimix#leave"] = "check",
			["urn:xmpp:minimix#leave-all"] = "check" }, commands(e13));
		assert.same({ ["adhoc:urn:xmpp:minimix#list"] = "prosody:guest",
			["adhoc:urn:xmpp:minimix#leave"] = "prosody:guest",
			["adhoc:urn:xmpp:minimix#leave-all"] = "prosody:guest" }, e13.permissions);
		assert.same({ "minimix:leave", "minimix:memberships", "minimix:state" }, shell(e13));
	end);

	it("never lets a session's bounce or a failed fork reach the room", function()
		fire(env, "pre-presence/full", P, join("j1"));
		env.sent = {};
		local bounce = st.message({ to = "room@muc.example/bob", type = "error" });
		assert.is_true(fire(env, "pre-message/full", P, bounce));
		assert.equal(0, #env.sent);
		local failed = st.message({ from = "room@muc.example/bob", to = "alice@localhost/phone", type = "groupchat" });
		assert.is_true(env.hooks["delivery/failure"].fn({ session = P, stanza = failed }));
		local other = st.message({ from = "bob@localhost/x", to = "alice@localhost/phone", type = "chat" });
		assert.is_nil(env.hooks["delivery/failure"].fn({ session = P, stanza = other }));
	end);

	it("shows the room the next device's presence when the one it showed goes", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		fire(env, "pre-presence/full", L, join("j2"):text_tag("show", "away"));
		env.sent = {};
		env.bare["alice@localhost"].sessions[P.resource] = nil;
		env.hooks["resource-unbind"].fn({ session = P });
		assert.equal(1, #env.sent);
		assert.equal("alice@localhost", env.sent[1].attr.from);
		assert.equal("room@muc.example/alice", env.sent[1].attr.to);
		assert.equal("away", env.sent[1]:get_child_text("show"));
	end);

	it("detaches a session that goes away and keeps the account in", function()
		fire(env, "pre-presence/full", P, join("j1"));
		fire(env, "presence/bare", nil, room_presence("alice", { 110 }));
		env.bare["alice@localhost"].sessions[P.resource] = nil;
		env.hooks["resource-unbind"].fn({ session = P });
		env.sent, P.got = {}, {};
		local msg = st.message({ from = "room@muc.example/bob", to = "alice@localhost", type = "groupchat" });
		assert.is_true(fire(env, "message/bare", nil, msg), "still the account's room");
		assert.equal(0, #env.sent);
		assert.equal(0, #P.got);
	end);
end);
