-- Specs for the Lua binding of the core (minimix.so): misuse raises,
-- refusals come back as nil plus stable tokens, decisions as tables.
local minimix = require "minimix";

local function ops(actions)
	local out = {};
	for i, a in ipairs(actions or {}) do out[i] = a.op; end
	return out;
end

local SELF = '<presence from="r@c/alice"><x xmlns="http://jabber.org/protocol/muc#user">'
	.. '<item affiliation="none" role="participant"/><status code="110"/></x></presence>';

describe("minimix.new", function()
	it("makes a state with default limits", function()
		local s = minimix.new();
		local l = s:limits();
		assert.equal(256, l.max_rooms);
		assert.equal(32, l.max_sessions);
		assert.equal(2000, l.max_occupants);
		assert.equal(300, l.rejoin_grace);
		s:close();
	end);

	it("takes limits from options", function()
		local s = minimix.new({ max_rooms = 3, max_sessions = 2, rejoin_grace = 42 });
		assert.equal(3, s:limits().max_rooms);
		assert.equal(2, s:limits().max_sessions);
		assert.equal(42, s:limits().rejoin_grace);
	end);

	it("raises on bad options", function()
		assert.has_error(function() minimix.new({ max_rooms = 0 }) end);
		assert.has_error(function() minimix.new({ max_rooms = "many" }) end);
		assert.has_error(function() minimix.new(42) end);
	end);

	it("shows counts in tostring and survives close twice", function()
		local s = minimix.new();
		s:join("a@h", "p", "r@c", "alice");
		assert.equal("minimix.state (accounts=1, rooms=1, sessions=1)", tostring(s));
		s:close();
		s:close();
		assert.equal("minimix.state (closed)", tostring(s));
		assert.has_error(function() s:stats() end);
	end);

	it("closes with a to-be-closed variable", function()
		local s = minimix.new();
		do
			local t <close> = s; -- luacheck: ignore 211
		end
		assert.equal("minimix.state (closed)", tostring(s));
	end);
end);

describe("minimix.state decisions", function()
	local s;
	before_each(function() s = minimix.new({ max_rooms = 1 }); end);
	after_each(function() s:close(); end);

	it("raises on misuse", function()
		assert.has_error(function() s:join("a@h", "p", "r@c") end);
		assert.has_error(function() s:join({}, "p", "r@c", "n") end);
		assert.has_error(function() s:room_presence("a@h", "r@c", "n", "available") end);
		assert.has_error(function() s:room_presence("a@h", "r@c", "n", { type = "bogus" }) end);
		assert.has_error(function() s:room_presence("a@h", "r@c", "n", { payload = 42 }) end);
		assert.has_error(function() minimix.new().join(42) end);
	end);

	it("takes a message type it does not know as normal (RFC 6121 5.2.2), never raising", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		for _, t in ipairs({ "Chat", "x-foo", "", "GROUPCHAT", "normal\0x" }) do
			-- a private message of an unknown type is a normal one: the account's
			local handled, actions = s:message_out("a@h", "p", "r@c", "bob", t, "m1");
			assert.is_true(handled, t);
			assert.equal("send_as_account", actions[1].op);
			-- to the room itself, only groupchat is the room's business
			assert.is_false((s:message_out("a@h", "p", "r@c", nil, t, "m2")), t);
			-- from an occupant: a private message to the joined sessions
			handled, actions = s:room_message("a@h", "r@c", "bob", { type = t, body = true });
			assert.is_true(handled, t);
			assert.same({ "deliver" }, ops(actions));
			-- from the room itself: the server's to deliver
			assert.is_false((s:room_message("a@h", "r@c", nil, { type = t, body = true })), t);
		end
		assert.is_false((s:message_out("a@h", "p", "r@c", nil, nil, "m3")));
	end);

	it("keeps a table's fields alive while it uses them, whatever __index hands out", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		local id = ("m"):rep(60);
		assert.is_true((s:message_out("a@h", "p", "r@c", nil, "groupchat", id)));
		-- every access makes a fresh (long, so not interned) string and
		-- collects what nothing holds any more
		local fresh = setmetatable({}, { __index = function(_, k)
			collectgarbage();
			collectgarbage();
			if k == "type" then return "error"; end
			if k == "id" then return ("m"):rep(60); end
			if k == "queryid" or k == "stanza_id" then return ("q"):rep(60); end
		end });
		for _ = 1, 3 do
			local handled, actions = s:room_message("a@h", "r@c", nil, fresh);
			assert.is_true(handled);
			assert.same({ { op = "deliver", room = "r@c", resource = "p" } }, actions);
			assert.is_true((s:message_out("a@h", "p", "r@c", nil, "groupchat", id)));
		end
		local pfresh = setmetatable({}, { __index = function(_, k)
			collectgarbage();
			if k == "type" then return "error"; end
			if k == "id" then return ("m"):rep(60); end
			if k == "condition" or k == "new_nick" or k == "affiliation" or k == "role" then
				return ("c"):rep(60);
			end
		end });
		local handled, actions = s:room_presence("a@h", "r@c", "bob", pfresh);
		assert.is_true(handled);
		assert.same({ { op = "deliver", room = "r@c", resource = "p" } }, actions);
	end);

	it("takes any number a client put in <history/>: infinite, negative, huge", function()
		local t = minimix.new();
		t:join("a@h", "p", "r@c", "alice", "j1");
		t:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		for i = 1, 3 do
			t:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true, stamp = 100 + i,
				payload = "<message type='groupchat'><body>" .. i .. "</body></message>" });
		end
		local function replayed(history)
			local handled, actions = t:join("a@h", "l", "r@c", "alice", "j2", nil, nil, nil, history, 200);
			assert.is_true(handled);
			local n = 0;
			for _, a in ipairs(actions) do if a.stamp then n = n + 1; end end
			return n;
		end
		assert.equal(3, replayed({ maxstanzas = math.huge }));
		assert.equal(3, replayed({ maxstanzas = 2^80, maxchars = 1e308 }));
		assert.equal(0, replayed({ maxstanzas = -math.huge }));
		assert.equal(0, replayed({ maxstanzas = -1 }));
		assert.equal(0, replayed({ maxchars = -2^70 }));
		assert.equal(2, replayed({ maxstanzas = 2.5 }));
		assert.equal(3, replayed({ seconds = math.huge }));
		assert.equal(0, replayed({ seconds = -math.huge }));
		assert.equal(3, replayed({ since = -math.huge }));
		assert.equal(0, replayed({ since = math.huge }));
		assert.equal(3, replayed({ maxstanzas = 0/0, maxchars = 0/0, seconds = 0/0, since = 0/0 }));
		t:close();
	end);

	it("asks to send the join from the request, first", function()
		local handled, actions = s:join("a@h", "p", "r@c", "alice", "j1");
		assert.is_true(handled);
		assert.same({ { op = "send_join", room = "r@c", nick = "alice", from_request = true } }, actions);
		assert.equal("joining", s:member("a@h", "r@c"));
	end);

	it("returns nil and a stable token on refusal, state unchanged", function()
		assert.is_true((s:join("a@h", "p", "r@c", "alice")));
		local ok, token, condition, etype, text = s:join("a@h", "p", "r2@c", "alice");
		assert.is_nil(ok);
		assert.equal("room-limit", token);
		assert.equal("resource-constraint", condition);
		assert.equal("wait", etype);
		assert.is_string(text);
		assert.is_nil(s:member("a@h", "r2@c"));
		assert.equal(1, s:stats().memberships);
		local ok2, token2, condition2 = s:join("a@h", "p", "r@c", "");
		assert.is_nil(ok2);
		assert.equal("invalid", token2);
		assert.equal("jid-malformed", condition2);
	end);

	-- Every refusal the binding can produce, with its stable token and the
	-- stanza error the shim sends (RFC 6120 8.3); the state is unchanged.
	-- (no-memory cannot be provoked from Lua; the Check suite pins it.)
	describe("refusals", function()
		local function refused(want, ok, token, condition, etype, text)
			assert.is_nil(ok);
			assert.same(want, { token, condition, etype });
			assert.is_string(text);
			assert.is_true(#text > 0);
		end

		it("room-limit", function()
			s:join("a@h", "p", "r@c", "alice");
			refused({ "room-limit", "resource-constraint", "wait" }, s:join("a@h", "p", "r2@c", "alice"));
			refused({ "room-limit", "resource-constraint", "wait" }, s:restore("a@h", "r2@c", "alice"));
			assert.is_nil(s:member("a@h", "r2@c"));
		end);

		it("invalid", function()
			refused({ "invalid", "jid-malformed", "modify" }, s:join("a@h", "p", "r@c", ""));
			refused({ "invalid", "jid-malformed", "modify" }, s:join("a@h", "p", "r@c", string.rep("n", 1024)));
			refused({ "invalid", "jid-malformed", "modify" }, s:restore("a@h", "not a room", "alice"));
			assert.equal(0, s:stats().memberships);
		end);

		it("session-limit", function()
			local t <close> = minimix.new({ max_sessions = 1 });
			t:join("a@h", "p", "r@c", "alice");
			refused({ "session-limit", "resource-constraint", "wait" }, t:join("a@h", "l", "r@c", "alice"));
			assert.equal(1, t:stats().sessions);
		end);

		it("iq-limit", function()
			local t <close> = minimix.new({ max_iqs = 1 });
			t:join("a@h", "p", "r@c", "alice");
			t:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
			assert.is_true((t:iq_out("a@h", "p", "r@c", "bob", "q1", nil, false, 0)));
			refused({ "iq-limit", "resource-constraint", "wait" }, t:iq_out("a@h", "p", "r@c", "bob", "q2", nil, false, 0));
			assert.equal(1, t:stats().iqs);
		end);

		it("no password-required: a later session of a joined account needs no password", function()
			s:join("a@h", "p", "r@c", "alice", "j1", "secret");
			s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
			assert.is_true((s:join("a@h", "l", "r@c", "alice", "j2")));
			assert.equal("secret", s:memberships("a@h")[1].password, "kept for automatic re-joins");
			assert.equal(2, #s:sessions("a@h", "r@c"));
		end);
	end);

	it("keeps the room's stanza-id as the last message seen, not the message id", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		s:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true, stamp = 5,
			id = "msg-1", stanza_id = "sid-1", payload = "<message type='groupchat'><body>x</body></message>" });
		assert.equal("sid-1", s:memberships("a@h")[1].last_id);
		assert.equal(5, s:memberships("a@h")[1].last_stamp);
	end);

	it("passes traffic that is not the module's", function()
		local handled, actions = s:room_message("a@h", "x@c", "bob", { type = "groupchat", body = true });
		assert.is_false(handled);
		assert.is_nil(actions);
		assert.is_false((s:message_out("a@h", "p", "x@c", nil, "groupchat", "m1")));
	end);

	it("completes the join and forks to every session", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:join("a@h", "l", "r@c", "alice", "j2");
		local handled, actions = s:room_presence("a@h", "r@c", "alice",
			{ type = "available", codes = { 110 }, affiliation = "none", role = "participant", payload = SELF, id = "j1" });
		assert.is_true(handled);
		assert.same({ { op = "deliver", room = "r@c", resource = "p", id = "j1" },
			{ op = "deliver", room = "r@c", resource = "l", id = "j2" } }, actions);
		assert.equal("joined", s:member("a@h", "r@c"));
		handled, actions = s:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true });
		assert.is_true(handled);
		assert.same({ "deliver", "deliver" }, ops(actions));
		assert.same({ { resource = "p", joined = true }, { resource = "l", joined = true } },
			s:sessions("a@h", "r@c"));
	end);

	it("gives a room message's plain copies as the sessions' resources when asked to be lean", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:join("a@h", "l", "r@c", "alice", "j2");
		s:room_presence("a@h", "r@c", "alice",
			{ type = "available", codes = { 110 }, affiliation = "none", role = "participant", payload = SELF, id = "j1" });
		local handled, actions = s:room_message("a@h", "r@c", "bob",
			{ type = "groupchat", body = true, payload = "<message/>" }, true);
		assert.is_true(handled);
		assert.same({ "p", "l" }, actions);
		handled, actions = s:room_message("a@h", "r@c", "bob", { type = "chat", body = true }, true);
		assert.is_true(handled);
		assert.same({ "p", "l" }, actions);
		-- not asked: tables, as every other call gives them
		handled, actions = s:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true }, false);
		assert.same({ { op = "deliver", room = "r@c", resource = "p" }, { op = "deliver", room = "r@c", resource = "l" } },
			actions);
		-- not a room's business: as without
		assert.is_false((s:room_message("a@h", "x@c", "bob", { type = "groupchat", body = true }, true)));
	end);

	it("replays the cache to a later session, with 210 when the nick differs", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:room_presence("a@h", "r@c", "bob", { payload = '<presence from="r@c/bob"/>' });
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		s:room_message("a@h", "r@c", nil, { type = "groupchat", subject = true,
			payload = '<message from="r@c" type="groupchat"><subject>s</subject></message>' });
		local handled, actions = s:join("a@h", "l", "r@c", "other", "j2");
		assert.is_true(handled);
		assert.same({ "replay", "replay", "replay" }, ops(actions));
		assert.equal('<presence from="r@c/bob"/>', actions[1].payload);
		assert.equal(SELF, actions[2].payload);
		assert.equal("j2", actions[2].id);
		assert.same({ 210 }, actions[2].codes);
		assert.matches("<subject>", actions[3].payload);
	end);

	it("reflects a leave while another session stays, then the account leaves", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		s:join("a@h", "l", "r@c", "alice", "j2");
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, affiliation = "member", payload = SELF });
		local _, actions = s:leave("a@h", "p", "r@c", "x1");
		assert.same({ { op = "reflect_leave", room = "r@c", resource = "p", nick = "alice", id = "x1", affiliation = "member" } }, actions);
		_, actions = s:leave("a@h", "l", "r@c", "x2");
		assert.same({ { op = "send_as_account", room = "r@c" } }, actions);
		assert.equal("leaving", s:member("a@h", "r@c"));
		_, actions = s:room_presence("a@h", "r@c", "alice", { type = "unavailable", codes = { 110 } });
		assert.same({ { op = "deliver", room = "r@c", resource = "l" } }, actions);
		assert.is_nil(s:member("a@h", "r@c"));
	end);

	it("drops a session's error to a joined room and swallows delivery failures", function()
		s:join("a@h", "p", "r@c", "alice");
		local handled, actions = s:message_out("a@h", "p", "r@c", "bob", "error");
		assert.is_true(handled);
		assert.same({ { op = "drop", room = "r@c" } }, actions);
		assert.is_true((s:delivery_failed("a@h", "r@c")));
		assert.is_false((s:delivery_failed("a@h", "elsewhere@c")));
	end);

	it("hands out the accounts whose memberships changed, once", function()
		s:join("a@h", "p", "r@c", "alice", "j1");
		assert.same({}, s:take_dirty(2), "a join not yet confirmed is not worth storing");
		local _, _, event = s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = SELF });
		assert.equal("joined", event);
		assert.same({ "a@h" }, s:take_dirty(2));
		assert.same({}, s:take_dirty(1));
		s:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true, stamp = 5,
			payload = "<message type='groupchat'><body>x</body></message>" });
		assert.same({}, s:take_dirty(2), "a message seen is level 1 only");
		assert.same({ "a@h" }, s:take_dirty(1));
		assert.has_error(function() s:take_dirty(3) end);
	end);

	it("keeps a room's stanza once for every account that gets it, whatever string carries it", function()
		local t = minimix.new();
		local body = '<message from="r@c/bob" type="groupchat"><body>' .. string.rep("x", 64) .. "</body></message>";
		for _, account in ipairs({ "a@h", "b@h" }) do
			t:join(account, "p", "r@c", account:sub(1, 1), "j");
			t:room_presence(account, "r@c", account:sub(1, 1), { codes = { 110 }, payload = SELF });
		end
		local before = t:stats().payloads;
		-- the same string for both accounts, then an equal text in another string
		local copy = body:sub(1, 40) .. body:sub(41);
		for _, text in ipairs({ body, body, copy }) do
			for _, account in ipairs({ "a@h", "b@h" }) do
				local handled, actions = t:room_message(account, "r@c", "bob",
					{ type = "groupchat", body = true, stamp = 1, payload = text });
				assert.is_true(handled);
				assert.same({ "deliver" }, ops(actions));
			end
		end
		assert.equal(before + 1, t:stats().payloads);
		local _, actions = t:join("a@h", "l", "r@c", "a", "j2", nil, nil, nil, { maxstanzas = 3 });
		local replayed = 0;
		for _, a in ipairs(actions) do
			if a.op == "replay" and a.payload == body then replayed = replayed + 1; end
		end
		assert.equal(3, replayed);
		-- gone with the memberships, but for the last text the state holds
		t:account_leave("a@h", "r@c");
		t:room_presence("a@h", "r@c", "a", { type = "unavailable", codes = { 110 } });
		t:account_leave("b@h", "r@c");
		t:room_presence("b@h", "r@c", "b", { type = "unavailable", codes = { 110 } });
		assert.equal(0, t:stats().memberships);
		assert.is_true(t:stats().payloads <= 1);
		t:room_message("a@h", "r@c", "bob", { type = "groupchat", body = true, payload = "<message/>" });
		t:close();
	end);

	it("lists memberships and stats", function()
		s:join("a@h", "p", "r@c", "alice", nil, "secret");
		local list = s:memberships("a@h");
		assert.equal(1, #list);
		assert.equal("r@c", list[1].room);
		assert.equal("alice", list[1].nick);
		assert.equal("secret", list[1].password);
		assert.equal("joining", list[1].state);
		assert.same({}, s:memberships("nobody@h"));
		local stats = s:stats();
		assert.equal(1, stats.accounts);
		assert.equal(1, stats.sessions);
		s:session_gone("a@h", "p");
		assert.equal(0, s:stats().sessions);
		assert.equal(1, s:stats().memberships);
	end);
end);

describe("membership spans and the catch-up from the log", function()
	it("takes the caller's clock, lists the spans and hands out REPLAY_LOG with the clamped request", function()
		local t = 1000.25;
		local s = minimix.new({ log_history = true, history_max = 40, history_default = 7 });
		assert.equal(40, s:limits().history_max);
		assert.is_true(s:limits().log_history);
		assert.equal(500, minimix.new():limits().history_max);
		assert.is_false(minimix.new():limits().log_history);
		s:clock(function() return t; end);
		s:join("a@h", "p", "r@c", "alice", "j1");
		t = 1001.5;
		s:room_presence("a@h", "r@c", "alice", { type = "available", codes = { 110 }, payload = SELF });
		assert.same({ { 1001.5 } }, s:memberships("a@h")[1].spans);
		local _, actions = s:join("a@h", "l", "r@c", "alice", "j2", nil, nil, nil, { maxstanzas = 1000, since = 5 }, 2000);
		local a;
		for _, x in ipairs(actions) do if x.op == "replay_log" then a = x; end end
		assert.truthy(a, table.concat(ops(actions), " "));
		assert.equal("l", a.resource);
		assert.equal(40, a.maxstanzas);
		assert.equal(5, a.since);
		assert.equal(2000, a.now);
		assert.is_nil(a.maxchars);
		assert.same({ { 1001.5 } }, a.spans);
		_, actions = s:join("a@h", "m", "r@c", "alice", "j3");
		for _, x in ipairs(actions) do if x.op == "replay_log" then a = x; end end
		assert.equal(7, a.maxstanzas);
	end);

	it("gives spans back, refusing what breaks a rule", function()
		local s = minimix.new();
		assert.is_nil(s:set_spans("a@h", "r@c", {}));
		s:restore("a@h", "r@c", "alice");
		assert.is_true(s:set_spans("a@h", "r@c", { { 10, 20 }, { 30 } }));
		assert.same({ { 10, 20 }, { 30 } }, s:memberships("a@h")[1].spans);
		local ok, token = s:set_spans("a@h", "r@c", { { 30 }, { 10, 20 } });
		assert.is_nil(ok);
		assert.equal("invalid", token);
		assert.is_nil(s:set_spans("a@h", "r@c", { "x" }));
		assert.same({ { 10, 20 }, { 30 } }, s:memberships("a@h")[1].spans);
		assert.has_error(function() s:clock(42) end);
	end);
end);

describe("stubs for what the byte limits kept from the caches", function()
	it("hands out self_stub with affiliation and role, and subject_stub, as ops", function()
		local s = minimix.new({ max_membership_bytes = #SELF + 10 });
		s:join("a@h", "p", "r@c", "alice", "j1");
		local big = SELF:gsub("</x>", "</x><status>" .. ("x"):rep(200) .. "</status>");
		s:room_presence("a@h", "r@c", "alice", { codes = { 110 }, payload = big,
			affiliation = "member", role = "visitor" });
		s:room_message("a@h", "r@c", nil, { type = "groupchat", subject = true,
			payload = '<message type="groupchat"><subject>' .. ("s"):rep(200) .. '</subject></message>' });
		local handled, actions = s:join("a@h", "l", "r@c", "alice", "j2");
		assert.is_true(handled);
		assert.same({ "self_stub", "subject_stub" }, ops(actions));
		assert.equal("alice", actions[1].nick);
		assert.equal("j2", actions[1].id);
		assert.equal("member", actions[1].affiliation);
		assert.equal("visitor", actions[1].role);
		assert.equal("l", actions[2].resource);
		assert.equal("r@c", actions[2].room);
	end);
end);
