-- The mocked Prosody module environment the shim's specs load
-- mod_minimix.lua into: records hooks, sends, logs, timers and the store,
-- and makes client sessions shaped as Prosody's.
local st = require "util.stanza";
local xml_parse = require "util.xml".parse;

-- A fake module environment: records hooks, sends and logs.
local function load_shim(options, env_hook)
	local env = { hooks = {}, sent = {}, logs = {}, bare = {}, items = {}, permissions = {} };
	local module = {
		host = "localhost";
		path = "./mod_minimix.lua";
	};
	function module:add_item(kind, item)
		env.items[#env.items+1] = { kind = kind, item = item };
	end
	function module:get_option_number(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return v;
	end
	function module:get_host_type() return "local"; end
	function module:get_option_string(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return tostring(v);
	end
	function module:get_option_boolean(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return v;
	end
	env.pep = { services = {} };
	-- every account has a PEP service (mod_pep makes one on demand)
	local empty_service = { get_items = function() return true, {}; end };
	function env.pep.get_pep_service(username)
		return env.pep.services[username] or empty_service;
	end
	function module:depends(name)
		if name == "pep" then return env.pep; end
		return {};
	end
	function module:require(name)
		if name:match("^minimix_") then
			-- the module's libraries (the room log, ...), in the same
			-- environment, as Prosody does
			return assert(loadfile("./" .. name .. ".lib.lua", "t", env.g))();
		end
		assert(name == "adhoc");
		return { new = function(title, node, handler, permission)
			return { name = title, node = node, handler = handler, permission = permission };
		end };
	end
	env.provided = {};
	function module:provides(kind, item)
		env.provided[#env.provided+1] = { kind = kind, item = item };
	end
	function module:handle_items(kind, added, removed)
		env.item_handlers = env.item_handlers or {};
		env.item_handlers[kind] = { added = added, removed = removed };
	end
	function module:log(level, fmt, ...)
		env.logs[#env.logs+1] = { level, fmt:format(...) };
	end
	-- Prosody's default priority is 0; each event is hooked once by the
	-- main module: env.hooks and env.hooked hold its hook, env.more_hooks
	-- those a library adds to the same event (fire() runs them all)
	env.hooked, env.more_hooks = {}, {};
	function module:hook(name, fn, prio)
		if env.hooks[name] then
			local more = env.more_hooks[name] or {};
			more[#more+1] = { fn = fn, prio = prio or 0 };
			env.more_hooks[name] = more;
			return;
		end
		env.hooks[name] = { fn = fn, prio = prio or 0 };
		env.hooked[name] = (env.hooked[name] or 0) + 1;
	end
	function module:unhook(name, fn)
		for i, h in ipairs(env.more_hooks[name] or {}) do
			if h.fn == fn then table.remove(env.more_hooks[name], i); return; end
		end
		if env.hooks[name] and env.hooks[name].fn == fn then env.hooks[name] = nil; end
	end
	env.stored = {};
	function module:open_store(name, kind)
		-- the bookmarks' archive, read at start: a driver that cannot list users
		if name == "pep_urn:xmpp:bookmarks:1" and kind == "archive" then return {}; end
		-- the room log: appends are recorded in env.logged
		if name == "minimix_log" and kind == "archive" then
			env.logged = {};
			return { append = function(_, user, key, value, when, with)
				env.logged[#env.logged+1] = { user = user, key = key or tostring(#env.logged + 1),
					value = value, when = when, with = with };
				return env.logged[#env.logged].key;
			end, find = function(_, user, q)
				-- as Prosody's archive stores read a query (start, end,
				-- before, reverse, limit)
				local list = {};
				for _, e in ipairs(env.logged) do
					if e.user == user and (not q.start or e.when >= q.start)
						and (not q["end"] or e.when <= q["end"]) then
						list[#list+1] = e;
					end
				end
				local from, to, step = 1, #list, 1;
				if q.reverse then from, to, step = #list, 1, -1; end
				local out, skipping = {}, q.before ~= nil;
				for i = from, to, step do
					local e = list[i];
					if skipping then
						if e.key == q.before then skipping = false; end
					elseif not q.limit or #out < q.limit then
						out[#out+1] = e;
					end
				end
				local i = 0;
				return function()
					i = i + 1;
					local e = out[i];
					if e then return e.key, e.value, e.when, e.with; end
				end;
			end };
		end
		-- mod_cloud_notify's registrations (minimix_push.lib.lua reads them)
		if name == "cloud_notify" then
			env.push_registrations, env.push_reads = {}, 0;
			return { get = function(_, user)
				env.push_reads = env.push_reads + 1;
				return env.push_registrations[user];
			end };
		end
		assert(name == "minimix");
		return {
			get = function(_, user) return env.stored[user]; end;
			set = function(_, user, value) env.stored[user] = value; return true; end;
			users = function()
				local list = {};
				for user in pairs(env.stored) do list[#list+1] = user; end
				local i = 0;
				return function() i = i + 1; return list[i]; end;
			end;
		};
	end
	function module:metric()
		local m = { values = {} };
		function m:with_labels() return m; end
		function m:add(n) m.total = (m.total or 0) + n; end
		function m:set(v) m.value = v; end
		env.metrics = env.metrics or {};
		env.metrics[#env.metrics+1] = m;
		return m;
	end
	function module:hook_global(name, fn, prio)
		env.hooks["global:" .. name] = { fn = fn, prio = prio or 0 };
		env.hooked["global:" .. name] = (env.hooked["global:" .. name] or 0) + 1;
	end
	-- Timers run on a mocked clock (see advance); a callback returning a
	-- number runs again that many seconds later, as in Prosody.
	env.clock, env.timers = 1700000000, {};
	function module:add_timer(delay, fn)
		env.timers[#env.timers+1] = { due = env.clock + delay, delay = delay, fn = fn };
	end
	-- events the module fires (mod_cloud_notify's "cloud-notify-ping");
	-- env.on_fire(name, data) answers for the module that would hook them
	env.fired = {};
	function module:fire_event(name, data)
		env.fired[#env.fired+1] = { name = name, data = data };
		if env.on_fire then return env.on_fire(name, data); end
	end
	-- the account's disco#info queries of rooms (minimix_roominfo.lib.lua
	-- asks what a room offers) are kept apart, unanswered unless a spec
	-- sets env.on_ask(stanza): the shim's specs see the room traffic
	-- without them
	env.asked = {};
	function module:send(stanza)
		local id = stanza.name == "iq" and stanza.attr.id;
		if id and id:match("^minimix%-roominfo%-") then
			env.asked[#env.asked+1] = st.clone(stanza);
			if env.on_ask then env.on_ask(stanza); end
			return;
		end
		env.sent[#env.sent+1] = st.clone(stanza);
		if env.on_send then env.on_send(stanza); end
	end
	-- IQs the module sends and waits for (module:send_iq), all kept in
	-- env.sent_iqs: with env.on_send_iq(stanza) -> reply stanza set, answered
	-- (or refused) at once; otherwise they wait in env.iqs until a spec
	-- answers them: env.iqs[i].answer(reply_stanza) or .fail(err)
	env.sent_iqs, env.iqs = {}, {};
	function module:send_iq(stanza)
		env.sent_iqs[#env.sent_iqs+1] = st.clone(stanza);
		if env.on_send_iq then
			local reply = env.on_send_iq(stanza);
			local promise = require "util.promise";
			if reply and reply.attr.type == "result" then return promise.resolve({ stanza = reply }); end
			return promise.reject({ condition = "service-unavailable" });
		end
		local entry = { stanza = st.clone(stanza) };
		env.iqs[#env.iqs+1] = entry;
		return { next = function(_, ok, fail)
			entry.answer = function(reply) return ok({ stanza = reply }); end;
			entry.fail = fail;
		end };
	end
	local g = setmetatable({
		module = module;
		prosody = { bare_sessions = env.bare, version = "0.12.3" };
	}, { __index = _G });
	if env_hook then env_hook(env, module, g); end
	env.g = g;
	local chunk = assert(loadfile("./mod_minimix.lua", "t", g));
	local util_time = package.loaded["util.time"];
	package.loaded["util.time"] = { now = function() return env.clock; end,
		monotonic = function() return env.clock; end };
	local ok, err = pcall(chunk);
	package.loaded["util.time"] = util_time;
	assert(ok, err);
	env.module = module;
	return env;
end

-- A session shaped as Prosody's sessionmanager makes them: send runs the
-- "stanzas/out" filters, then rawsend serializes and writes.  What reaches
-- the wire is parsed back into `got`; `wire` keeps the text.
local function new_session(env, resource, shape, user)
	user = user or "alice";
	local s = {
		type = "c2s", username = user, host = "localhost", resource = resource,
		full_jid = user .. "@localhost/" .. resource, got = {}, wire = {}, filters = {},
	};
	local function write(t)
		local text = tostring(t);
		s.wire[#s.wire+1] = text;
		s.got[#s.got+1] = assert(xml_parse(text));
		return true;
	end
	if shape == "bosh" then
		-- mod_bosh: its own send, no rawsend
		function s.send(stanza) return write(stanza); end
	else
		function s.filter(kind, t)
			assert(kind == "stanzas/out");
			for _, f in ipairs(s.filters) do
				t = f(t, s);
				if t == nil then return nil; end
			end
			return t;
		end
		function s.rawsend(t) return write(t); end
		function s.send(t)
			if t.name then t = s.filter("stanzas/out", t); end
			if t then return s.rawsend(t); end
			return true;
		end
	end
	local bare = user .. "@localhost";
	env.bare[bare] = env.bare[bare] or { sessions = {} };
	env.bare[bare].sessions[resource] = s;
	return s;
end

-- Let `seconds` pass on the mocked clock (0: a turn of the main loop):
-- every timer that falls due runs, in the order of its time.
local function advance(env, seconds)
	local target = env.clock + seconds;
	while true do
		local next_i;
		for i, t in ipairs(env.timers) do
			if t.due <= target and (not next_i or t.due < env.timers[next_i].due) then next_i = i; end
		end
		if not next_i then break; end
		local t = table.remove(env.timers, next_i);
		env.clock = math.max(env.clock, t.due);
		local again = t.fn(env.clock);
		if type(again) == "number" then
			env.timers[#env.timers+1] = { due = env.clock + again, delay = again, fn = t.fn };
		end
	end
	env.clock = target;
end

-- The repeating timer that asks the core what is due (every second).
local function tick_timer(env)
	local found;
	for _, t in ipairs(env.timers) do
		if t.delay == 1 then
			if found then error("more than one tick timer", 2); end
			found = t;
		end
	end
	if not found then error("no tick timer", 2); end
	return found;
end

-- An env_hook for load_shim: the module API of Prosody 13 (its version,
-- roles and permissions; shell-command items are recorded either way).
local function prosody13(env, module, g)
	function module:default_permission(role, permission)
		env.permissions[permission] = role;
	end
	function module:may() return true; end
	g.prosody.version = "13.0.1";
end

local function fire(env, name, origin, stanza)
	local event = { origin = origin, stanza = stanza };
	local main = env.hooks[name];
	local hooks = { main };
	for _, h in ipairs(env.more_hooks[name] or {}) do hooks[#hooks+1] = h; end
	table.sort(hooks, function(a, b) return a.prio > b.prio; end);
	for _, h in ipairs(hooks) do
		local ret = h.fn(event);
		if ret ~= nil or h == main then return ret; end
	end
end

-- A room's presence for the account: the occupant room/nick as a
-- participant, with status codes; attrs: the presence's own (to defaults
-- to alice@localhost).
local function room_presence(room, nick, codes, attrs)
	local p = st.presence(attrs or {});
	p.attr.from = room .. "/" .. nick;
	p.attr.to = p.attr.to or "alice@localhost";
	p:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
		:tag("item", { affiliation = "none", role = "participant" }):up();
	for _, c in ipairs(codes or {}) do p:tag("status", { code = tostring(c) }):up(); end
	return p:up();
end

-- How many log lines at `level` match `pattern`.
local function count_logs(env, level, pattern)
	local n = 0;
	for _, l in ipairs(env.logs) do
		if l[1] == level and l[2]:find(pattern) then n = n + 1; end
	end
	return n;
end

return {
	load_shim = load_shim;
	new_session = new_session;
	fire = fire;
	advance = advance;
	tick_timer = tick_timer;
	prosody13 = prosody13;
	room_presence = room_presence;
	count_logs = count_logs;
};
