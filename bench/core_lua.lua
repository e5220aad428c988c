-- core_lua.lua - the core benchmark's scenario (see bench_core.c) in Lua 5.4:
--
--   lua5.4 bench/core_lua.lua lua2018 [results.json]
--       the decisions kept in plain Lua tables, as the 2018 mod_minimix of
--       prosody-modules kept them: data[user][room] = { joined = nick,
--       presence = { [occupant JID] = stanza clone }, subject = ... }, each
--       session's joined_rooms[room] = nick, and a fork that walks the
--       account's sessions and picks those that joined the room.  The 2018
--       module keeps no catch-up history: compare with the core's
--       "routing only" figure.
--
--   lua5.4 bench/core_lua.lua binding [results.json]
--       the same calls through minimix.so (./minimix.so), the way the shim
--       makes them: what the core costs Prosody once argument checks and
--       the decision tables are counted.
--
-- Sizes come from the same MINIMIX_BENCH_* variables as bench_core.  Time
-- is os.clock() (process CPU time: the benchmark is single-threaded and
-- CPU-bound); memory is collectgarbage("count") after full collections
-- (lua2018) or VmRSS (binding, whose state lives in the C heap).

local impl, out_path = arg[1], arg[2];
if impl ~= "lua2018" and impl ~= "binding" then
	io.stderr:write("usage: lua5.4 bench/core_lua.lua lua2018|binding [results.json]\n");
	os.exit(2);
end

package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "./?.so;/usr/lib/prosody/?.so;" .. package.cpath;
local st = require "util.stanza";

local function env(name, default)
	local v = os.getenv(name);
	if v == nil or v == "" then return default; end
	local n = math.tointeger(tonumber(v));
	if not n or n < 1 then
		io.stderr:write(name .. " must be a positive integer\n");
		os.exit(2);
	end
	return n;
end

local A = env("MINIMIX_BENCH_ACCOUNTS", 20000);
local J = env("MINIMIX_BENCH_ROOMS", 10);
local D = env("MINIMIX_BENCH_SESSIONS", 3);
local S = env("MINIMIX_BENCH_ROOM_SIZE", 100);
local ROUNDS = env("MINIMIX_BENCH_ROUNDS", 3);
local OA = env("MINIMIX_BENCH_SHARED_ACCOUNTS", 1000);
local OO = env("MINIMIX_BENCH_SHARED_OCCUPANTS", 1000);
local CA = env("MINIMIX_BENCH_CYCLE_ACCOUNTS", 100);
local C = env("MINIMIX_BENCH_CYCLES", 100);
assert(A % S == 0, "accounts must be a multiple of the room size");

local clock = os.clock;
local resources = { "phone", "laptop", "desktop", "tablet", "watch", "tv", "car", "web" };
assert(D <= #resources);

local function lua_bytes()
	collectgarbage("collect");
	collectgarbage("collect");
	return collectgarbage("count") * 1024;
end

local function rss_bytes()
	local f = io.open("/proc/self/status");
	local kb = 0;
	for line in f:lines() do
		local v = line:match("^VmRSS:%s*(%d+)");
		if v then kb = tonumber(v); end
	end
	f:close();
	return kb * 1024;
end

local function mem()
	collectgarbage("collect");
	collectgarbage("collect");
	if impl == "binding" then return rss_bytes(); end
	return lua_bytes();
end

local results, order = {}, {};
local function report(key, label, value, unit)
	results[key] = { value = value, unit = unit or "", label = label };
	order[#order+1] = key;
	print(string.format("  %-58s %12.1f %s", label, value, unit or ""));
	io.stdout:flush();
end

local nacc = math.max(A, OA + CA);
local accounts, nicks = {}, {};
for a = 0, nacc - 1 do
	accounts[a] = "u" .. a .. "@localhost";
	nicks[a] = "u" .. a;
end
local nrooms = (A // S) * J;
local rooms = {};
for r = 0, nrooms - 1 do rooms[r] = "room" .. r .. "@conference.localhost"; end
local function room_of(a, j) return (a // S) * J + j; end

local function self_payload(room, nick)
	return "<presence from='" .. room .. "/" .. nick .. "'><x xmlns='http://jabber.org/protocol/muc#user'>"
		.. "<item affiliation='none' role='participant'/><status code='110'/></x></presence>";
end
local function occupant_payload(room, nick, show)
	return "<presence from='" .. room .. "/" .. nick .. "'>"
		.. (show and ("<show>" .. show .. "</show>") or "")
		.. "<c xmlns='http://jabber.org/protocol/caps' hash='sha-1' node='https://example.org' "
		.. "ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/><x xmlns='http://jabber.org/protocol/muc#user'>"
		.. "<item affiliation='none' role='participant'/></x></presence>";
end
local function message_payload(room, seq)
	return "<message type='groupchat' from='" .. room .. "/sender' id='m" .. seq .. "'>"
		.. "<body>Message " .. seq .. " of the benchmark, about as long as a chat line is.</body>"
		.. "<origin-id xmlns='urn:xmpp:sid:0' id='o" .. seq .. "'/>"
		.. "<stanza-id xmlns='urn:xmpp:sid:0' id='sid-" .. seq .. "' by='" .. room .. "'/></message>";
end

-- The stanzas the 2018 module kept (it cloned what the room sent).
local function self_stanza(room, nick)
	return st.presence({ from = room .. "/" .. nick })
		:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
			:tag("item", { affiliation = "none", role = "participant" }):up()
			:tag("status", { code = "110" }):up()
		:up();
end
local function occupant_stanza(room, nick, show)
	local p = st.presence({ from = room .. "/" .. nick });
	if show then p:text_tag("show", show); end
	return p:tag("c", { xmlns = "http://jabber.org/protocol/caps", hash = "sha-1",
			node = "https://example.org", ver = "q07IKJEyjvHSyhy//CH0CxmKi8w=" }):up()
		:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
			:tag("item", { affiliation = "none", role = "participant" }):up()
		:up();
end

-- ---- the two implementations, behind one interface ------------------------
-- Each returns the number of sessions the decision delivers to (or replays
-- to), so that both are checked to decide the same.

local new_impl;

if impl == "lua2018" then
	function new_impl()
		local data = {};  -- user -> room -> { joined, presence, subject }
		local users = {}; -- user -> { sessions = { [resource] = session } }
		local targets, ntargets = {}, 0;
		local I = {};
		-- Prosody's sessions exist with or without the module
		function I.connect(account, resource)
			local u = users[account];
			if not u then u = { sessions = {} }; users[account] = u; end
			u.sessions[resource] = { full_jid = account .. "/" .. resource, resource = resource };
		end
		local function fork(account, room)
			ntargets = 0;
			local u = users[account];
			if u then
				for _, session in pairs(u.sessions) do
					local jr = session.joined_rooms;
					if jr and jr[room] then
						ntargets = ntargets + 1;
						targets[ntargets] = session;
					end
				end
			end
			return ntargets;
		end
		function I.join(account, resource, room, nick)
			local session = users[account].sessions[resource];
			local jr = session.joined_rooms;
			if jr then jr[room] = nick; else session.joined_rooms = { [room] = nick }; end
			local rooms_of = data[account];
			local m = rooms_of and rooms_of[room];
			if m then
				-- replay: every cached presence, then the subject
				ntargets = 0;
				for _, pres in pairs(m.presence) do
					ntargets = ntargets + 1;
					targets[ntargets] = pres;
				end
				if m.subject then ntargets = ntargets + 1; targets[ntargets] = m.subject; end
				return ntargets;
			end
			if not rooms_of then rooms_of = {}; data[account] = rooms_of; end
			rooms_of[room] = { joined = nick, presence = {} };
			return 0; -- send the account's join
		end
		-- the room's presence: cache a clone, fork
		function I.room_presence(account, room, nick, kind, stanza)
			local rooms_of = data[account];
			local m = rooms_of and rooms_of[room];
			if not m then return nil; end
			local from = room .. "/" .. nick;
			if kind == "unavailable" then
				m.presence[from] = nil;
			else
				m.presence[from] = st.clone(stanza);
			end
			return fork(account, room);
		end
		function I.room_message(account, room)
			local rooms_of = data[account];
			if not (rooms_of and rooms_of[room]) then return nil; end
			return fork(account, room);
		end
		-- the 2018 module never let the account leave; a leave here ends
		-- the session's join and, with the last one, the membership
		function I.leave(account, resource, room)
			local session = users[account].sessions[resource];
			session.joined_rooms[room] = nil;
			if next(session.joined_rooms) == nil then session.joined_rooms = nil; end
			for _, s in pairs(users[account].sessions) do
				if s.joined_rooms and s.joined_rooms[room] then return 1; end
			end
			data[account][room] = nil;
			if next(data[account]) == nil then data[account] = nil; end
			return 1;
		end
		function I.room_left() return 0; end
		function I.flush() end
		function I.free() data, users = nil, nil; end
		return I;
	end
else
	local minimix = require "minimix";
	local self_fields = { codes = { 110 }, affiliation = "none", role = "participant" };
	function new_impl()
		local core = minimix.new({});
		local I = {};
		function I.connect() end
		local function n(handled, actions)
			assert(handled ~= nil, actions);
			return actions and #actions or 0;
		end
		function I.join(account, resource, room, nick)
			return n(core:join(account, resource, room, nick, "j"));
		end
		function I.self(account, room, nick, payload)
			self_fields.payload = payload;
			return n(core:room_presence(account, room, nick, self_fields));
		end
		local pres = {};
		function I.room_presence(account, room, nick, kind, _, payload)
			pres.type, pres.payload = kind, payload;
			return n(core:room_presence(account, room, nick, pres));
		end
		function I.room_message(account, room, m)
			return n(core:room_message(account, room, "sender", m));
		end
		function I.leave(account, resource, room)
			return n(core:leave(account, resource, room, "l"));
		end
		local left = { type = "unavailable", codes = { 110 } };
		function I.room_left(account, room, nick)
			return n(core:room_presence(account, room, nick, left));
		end
		function I.flush() core:take_dirty(1); end
		function I.free() core:close(); end
		return I;
	end
end

-- ---- the scenario ----------------------------------------------------------

local t_start = clock();
print(string.format("%s: %d accounts x %d rooms x %d sessions = %d memberships, "
	.. "%d local accounts per room", impl == "lua2018" and "Lua tables (2018 module)"
	or "C core through the Lua binding", A, J, D, A * J, S));
print();

local M = A * J;
local I = new_impl();
for a = 0, A - 1 do
	for k = 1, D do I.connect(accounts[a], resources[k]); end
end
local m0 = mem();

-- joins, group by group (the arguments are built before the clock runs)
local first_t, self_t, later_t = 0, 0, 0;
for g = 0, A // S - 1 do
	local selfs = {};
	for a = g * S, g * S + S - 1 do
		for j = 0, J - 1 do
			local room = rooms[room_of(a, j)];
			selfs[(a - g * S) * J + j] = impl == "lua2018" and self_stanza(room, nicks[a])
				or self_payload(room, nicks[a]);
		end
	end
	local t = clock();
	for a = g * S, g * S + S - 1 do
		for j = 0, J - 1 do
			I.join(accounts[a], resources[1], rooms[room_of(a, j)], nicks[a]);
		end
	end
	first_t = first_t + clock() - t;
	t = clock();
	if impl == "lua2018" then
		for a = g * S, g * S + S - 1 do
			for j = 0, J - 1 do
				local n = I.room_presence(accounts[a], rooms[room_of(a, j)], nicks[a],
					"available", selfs[(a - g * S) * J + j]);
				assert(n == 1);
			end
		end
	else
		for a = g * S, g * S + S - 1 do
			for j = 0, J - 1 do
				local n = I.self(accounts[a], rooms[room_of(a, j)], nicks[a],
					selfs[(a - g * S) * J + j]);
				assert(n == 1);
			end
		end
	end
	self_t = self_t + clock() - t;
	t = clock();
	for a = g * S, g * S + S - 1 do
		for j = 0, J - 1 do
			for k = 2, D do
				I.join(accounts[a], resources[k], rooms[room_of(a, j)], nicks[a]);
			end
		end
	end
	later_t = later_t + clock() - t;
end
I.flush();
local m1 = mem();
report("join_first_ns", "first session's join (account joins)", first_t * 1e9 / M, "ns");
report("self_presence_ns", "room's self-presence completes the join", self_t * 1e9 / M, "ns");
if D > 1 then
	report("join_later_ns", "later session's join (replay from cache)",
		later_t * 1e9 / (M * (D - 1)), "ns");
end
report("join_ns", "join, per session (all of the above / sessions)",
	(first_t + self_t + later_t) * 1e9 / (M * D), "ns");
report("bytes_per_membership", impl == "lua2018" and "Lua heap per membership, after joins"
	or "RSS per membership, after joins", (m1 - m0) / M, "B");

-- fan-out: as bench_core.c, each pass walks every room on its own (pass 1
-- warms up, 2 keeps the message, 3 routes alone), so that a membership's
-- data has left the caches when its next message comes
do
	local t_pass, calls_pass = { 0, 0, 0 }, { 0, 0, 0 };
	local delivered, expected, seq = 0, 0, 0;
	for pass = 1, 3 do
		for _ = 1, pass == 1 and 1 or ROUNDS do
			for ri = 0, nrooms - 1 do
				local g = ri // J;
				local room = rooms[ri];
				seq = seq + 1;
				local m = { type = "groupchat", body = true, id = "m", stamp = 1e9 + seq };
				if pass < 3 then
					m.stanza_id, m.payload = "sid-" .. seq, message_payload(room, seq);
				end
				local t = clock();
				for a = g * S, g * S + S - 1 do
					delivered = delivered + I.room_message(accounts[a], room, m);
				end
				t_pass[pass] = t_pass[pass] + clock() - t;
				calls_pass[pass] = calls_pass[pass] + S;
				expected = expected + S * D;
			end
			I.flush();
		end
	end
	assert(delivered == expected, "deliveries " .. delivered);
	local with_t, warm_t, bare_t = t_pass[2], t_pass[1], t_pass[3];
	local calls, warm_calls = calls_pass[2], calls_pass[1];
	if impl == "binding" then
		report("fanout_ns", "fan-out decision per account per message "
			.. "(payload kept for catch-up)", with_t * 1e9 / calls, "ns");
		report("fanout_session_ns", "  ... per delivered session", with_t * 1e9 / calls / D, "ns");
		report("fanout_first_ns", "  ... a membership's first message (allocates its ring)",
			warm_t * 1e9 / warm_calls, "ns");
		report("fanout_bare_ns", "fan-out decision per account, no payload (routing only)",
			bare_t * 1e9 / calls, "ns");
		report("bytes_per_membership_hist", "RSS per membership, with catch-up history",
			(mem() - m0) / M, "B");
	else
		-- nothing is kept: every pass is the same routing
		local n = calls * 2 + warm_calls;
		report("fanout_bare_ns", "fan-out decision per account per message (routing only)",
			(with_t + bare_t + warm_t) * 1e9 / n, "ns");
		report("fanout_session_ns", "  ... per delivered session",
			(with_t + bare_t + warm_t) * 1e9 / n / D, "ns");
	end
end

-- occupant presences
do
	local add_t, upd_t, del_t, calls = 0, 0, 0, 0;
	for ri = 0, nrooms - 1 do
		local g = ri // J;
		local room = rooms[ri];
		for i = 0, 1 do
			local nick = "remote" .. i;
			local avail_s, away_s, avail_p, away_p;
			if impl == "lua2018" then
				avail_s, away_s = occupant_stanza(room, nick), occupant_stanza(room, nick, "away");
			else
				avail_p, away_p = occupant_payload(room, nick), occupant_payload(room, nick, "away");
			end
			local t = clock();
			for a = g * S, g * S + S - 1 do
				I.room_presence(accounts[a], room, nick, "available", avail_s, avail_p);
			end
			add_t = add_t + clock() - t;
			t = clock();
			for a = g * S, g * S + S - 1 do
				I.room_presence(accounts[a], room, nick, "available", away_s, away_p);
			end
			upd_t = upd_t + clock() - t;
			t = clock();
			for a = g * S, g * S + S - 1 do
				I.room_presence(accounts[a], room, nick, "unavailable");
			end
			del_t = del_t + clock() - t;
			calls = calls + S;
		end
	end
	report("presence_new_ns", "occupant presence per account: new occupant (cached)",
		add_t * 1e9 / calls, "ns");
	report("presence_update_ns", "occupant presence per account: changed", upd_t * 1e9 / calls, "ns");
	report("presence_gone_ns", "occupant presence per account: unavailable", del_t * 1e9 / calls, "ns");
end
I.free();
I = nil;
collectgarbage("collect");

-- shared occupant cache: OA accounts in one room, OO occupants
do
	local room = "big@conference.localhost";
	I = new_impl();
	for a = 0, OA - 1 do I.connect(accounts[a], resources[1]); end
	for a = 0, OA - 1 do
		I.join(accounts[a], resources[1], room, nicks[a]);
		if impl == "lua2018" then
			I.room_presence(accounts[a], room, nicks[a], "available", self_stanza(room, nicks[a]));
		else
			I.self(accounts[a], room, nicks[a], self_payload(room, nicks[a]));
		end
	end
	I.flush();
	local before = impl == "lua2018" and mem() or 0;
	local tt = 0;
	for i = 0, OO - 1 do
		local nick = "occupant" .. i;
		local s_, p_;
		if impl == "lua2018" then s_ = occupant_stanza(room, nick);
		else p_ = occupant_payload(room, nick); end
		local t = clock();
		for a = 0, OA - 1 do
			I.room_presence(accounts[a], room, nick, "available", s_, p_);
		end
		tt = tt + clock() - t;
	end
	local after = impl == "lua2018" and mem() or 0;
	print();
	print(string.format("%d local accounts in one room with %d occupants:", OA, OO));
	-- the binding's cache is in the C heap, where RSS cannot see it once
	-- the allocator reuses what the first part freed: bench_core has it
	if impl == "lua2018" then
		report("shared_cache_bytes", "occupant cache, all accounts (Lua heap)", after - before, "B");
		report("shared_entry_bytes", "  ... per cached entry (account x occupant)",
			(after - before) / (OA * OO), "B");
	end
	report("shared_presence_ns", "  time per occupant presence per account", tt * 1e9 / (OA * OO), "ns");
	I.free();
	I = nil;
	collectgarbage("collect");
end

-- join/leave cycles
do
	local room = "cycle@conference.localhost";
	I = new_impl();
	for a = OA, OA + CA - 1 do
		for k = 1, D do I.connect(accounts[a], resources[k]); end
	end
	local function cycle()
		for a = OA, OA + CA - 1 do
			I.join(accounts[a], resources[1], room, nicks[a]);
			if impl == "lua2018" then
				I.room_presence(accounts[a], room, nicks[a], "available", self_stanza(room, nicks[a]));
			else
				I.self(accounts[a], room, nicks[a], self_payload(room, nicks[a]));
			end
			for k = 2, D do I.join(accounts[a], resources[k], room, nicks[a]); end
		end
		for i = 0, 9 do
			local nick = "other" .. i;
			local s_ = impl == "lua2018" and occupant_stanza(room, nick) or nil;
			local p_ = impl ~= "lua2018" and occupant_payload(room, nick) or nil;
			for a = OA, OA + CA - 1 do
				I.room_presence(accounts[a], room, nick, "available", s_, p_);
			end
		end
		for i = 0, 4 do
			local m = { type = "groupchat", body = true, stamp = 1e9 + i,
				payload = message_payload(room, i) };
			for a = OA, OA + CA - 1 do I.room_message(accounts[a], room, m); end
		end
		for a = OA, OA + CA - 1 do
			for k = 1, D do I.leave(accounts[a], resources[k], room); end
			I.room_left(accounts[a], room, nicks[a]);
		end
		I.flush();
	end
	-- Lua heap: the 2018 tables, or what the binding leaves in Lua (the
	-- core's C heap is bench_core's to measure)
	cycle();
	local after1, half = lua_bytes(), 0;
	for i = 2, C do
		cycle();
		if i - 1 == C // 2 then half = lua_bytes(); end
	end
	local afterN = lua_bytes();
	print();
	print(string.format("%d join/leave cycles of %d accounts x %d sessions "
		.. "(10 occupants, 5 messages each):", C, CA, D));
	report("cycle_growth_bytes", "Lua heap growth from cycle 1 to the last", afterN - after1, "B");
	if C >= 4 then
		report("cycle_growth_half_bytes", "growth over the second half of the cycles",
			afterN - half, "B");
	end
	I.free();
end

local seconds = clock() - t_start;
print(string.format("\n(%.1f s)", seconds));

if out_path then
	local f = assert(io.open(out_path, "w"));
	f:write('{\n  "impl": "', impl, '",\n');
	f:write(string.format('  "params": {"accounts": %d, "rooms_per_account": %d, "sessions": %d, '
		.. '"room_size": %d, "rounds": %d, "shared_accounts": %d, "shared_occupants": %d, '
		.. '"cycle_accounts": %d, "cycles": %d},\n', A, J, D, S, ROUNDS, OA, OO, CA, C));
	f:write(string.format('  "seconds": %.2f,\n  "results": {\n', seconds));
	for i, key in ipairs(order) do
		local r = results[key];
		f:write(string.format('    "%s": {"value": %.3f, "unit": "%s", "label": "%s"}%s\n',
			key, r.value, r.unit, r.label, i < #order and "," or ""));
	end
	f:write("  }\n}\n");
	f:close();
end
