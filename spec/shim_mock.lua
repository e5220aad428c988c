-- The mocked Prosody module environment the shim's specs load
-- mod_minimix.lua into: records hooks, sends, logs, timers and the store,
-- and makes client sessions shaped as Prosody's.
local st = require "util.stanza";
local xml_parse = require "util.xml".parse;

-- A fake module environment: records hooks, sends and logs.
local function load_shim(options, env_hook)
	local env = { hooks = {}, sent = {}, logs = {}, bare = {} };
	local module = {
		host = "localhost";
		path = "./mod_minimix.lua";
	};
	function module:get_option_number(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return v;
	end
	function module:get_host_type() return "local"; end
	function module:get_option_boolean(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return v;
	end
	env.pep = { services = {} };
	function env.pep.get_pep_service(username)
		return env.pep.services[username];
	end
	function module:depends(name)
		if name == "pep" then return env.pep; end
		return {};
	end
	function module:require(name)
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
	function module:hook(name, fn, prio)
		env.hooks[name] = { fn = fn, prio = prio or 0 };
	end
	env.stored = {};
	function module:open_store(name)
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
	function module:hook_global(name, fn)
		env.hooks["global:" .. name] = { fn = fn };
	end
	function module:add_timer(delay, fn)
		env.timers = env.timers or {};
		env.timers[#env.timers+1] = { delay = delay, fn = fn };
	end
	function module:send(stanza)
		env.sent[#env.sent+1] = st.clone(stanza);
		if env.on_send then env.on_send(stanza); end
	end
	local g = setmetatable({
		module = module;
		prosody = { bare_sessions = env.bare };
	}, { __index = _G });
	if env_hook then env_hook(env, module, g); end
	env.g = g;
	local chunk = assert(loadfile("./mod_minimix.lua", "t", g));
	chunk();
	env.module = module;
	return env;
end

-- A session shaped as Prosody's sessionmanager makes them: send runs the
-- "stanzas/out" filters, then rawsend serializes and writes.  What reaches
-- the wire is parsed back into `got`; `wire` keeps the text.
local function new_session(env, resource, shape)
	local s = {
		type = "c2s", username = "alice", host = "localhost", resource = resource,
		full_jid = "alice@localhost/" .. resource, got = {}, wire = {}, filters = {},
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
	env.bare["alice@localhost"] = env.bare["alice@localhost"] or { sessions = {} };
	env.bare["alice@localhost"].sessions[resource] = s;
	return s;
end

local function fire(env, name, origin, stanza)
	return env.hooks[name].fn({ origin = origin, stanza = stanza });
end

return {
	load_shim = load_shim;
	new_session = new_session;
	fire = fire;
};
