-- The mocked Prosody module environment the room log's specs load
-- minimix_log.lib.lua into: fake archive stores, options, logs, metrics,
-- and a clock and timers the specs move.
local st = require "util.stanza";

-- A fake archive store: append/find/delete/users/count as Prosody's
-- drivers, with switches to fail: fail (the store away: every write and
-- read), refuse (per user),
-- refuse_body (the message with that body), fail_next (the next N writes),
-- reads_ok (fail fails writes only),
-- raise, quota (items per user), caps.
local function fake_archive()
	local s = { items = {}, appends = 0, deletes = {}, refuse = {}, caps = {} };
	function s:append(user, key, value, when, with)
		self.appends = self.appends + 1;
		if self.raise then error(self.raise); end
		if self.fail then return nil, self.fail; end
		if (self.fail_next or 0) > 0 then
			self.fail_next = self.fail_next - 1;
			return nil, "Failed to connect to database";
		end
		if self.refuse[user] then return nil, self.refuse[user]; end
		if self.refuse_body and value:get_child_text("body") == self.refuse_body then
			return nil, "this message is refused";
		end
		if self.quota and self:count(user) >= self.quota then return nil, "quota-limit"; end
		if key then
			for i = #self.items, 1, -1 do
				if self.items[i].user == user and self.items[i].key == key then table.remove(self.items, i); end
			end
		end
		key = key or ("gen" .. self.appends);
		self.items[#self.items+1] = { user = user, key = key, value = st.clone(value), when = when, with = with };
		return key;
	end
	function s:find(user, query)
		local out = {};
		query = query or {};
		self.finds = (self.finds or 0) + 1;
		-- a store that is away answers no read either (a full disk, with
		-- reads_ok, still does)
		if self.fail and not self.reads_ok then return nil, self.fail; end
		for _, it in ipairs(self.items) do
			if it.user == user and (not query.start or it.when >= query.start)
				and (not query["end"] or it.when <= query["end"]) then
				table.insert(out, query.reverse and 1 or #out + 1, it);
			end
		end
		if query.before then
			-- the items after `before` in the query's order
			local r, past = {}, false;
			for _, it in ipairs(out) do
				if past then r[#r+1] = it; end
				if it.key == query.before then past = true; end
			end
			out = r;
		end
		if query.limit then for i = #out, query.limit + 1, -1 do out[i] = nil; end end
		local i = 0;
		return function()
			i = i + 1;
			local it = out[i];
			if it then return it.key, st.clone(it.value), it.when, it.with; end
		end;
	end
	function s:delete(user, query)
		self.deletes[#self.deletes+1] = { user = user, query = query };
		local keep, mine, before = {}, {}, #self.items;
		for _, it in ipairs(self.items) do
			if it.user ~= user then
				keep[#keep+1] = it;
			elseif not (query["end"] and it.when <= query["end"]) then
				mine[#mine+1] = it;
			end
		end
		if query.truncate and #mine > query.truncate then
			table.move(mine, #mine - query.truncate + 1, #mine, 1);
			for i = #mine, query.truncate + 1, -1 do mine[i] = nil; end
		end
		for _, it in ipairs(mine) do keep[#keep+1] = it; end
		self.items = keep;
		return before - #keep;
	end
	function s:users()
		local seen, list = {}, {};
		for _, it in ipairs(self.items) do
			if not seen[it.user] then seen[it.user] = true; list[#list+1] = it.user; end
		end
		local i = 0;
		return function() i = i + 1; return list[i]; end;
	end
	-- in place, as Prosody's drivers do: same key, same position, same time
	function s:get(user, key)
		if self.fail then return nil, self.fail; end
		for _, it in ipairs(self.items) do
			if it.user == user and it.key == key then return st.clone(it.value), it.when, it.with; end
		end
		return nil, "item-not-found";
	end
	function s:set(user, key, value)
		if self.fail then return nil, self.fail; end
		for _, it in ipairs(self.items) do
			if it.user == user and it.key == key then
				it.value = st.clone(value);
				return true;
			end
		end
		return nil, "item-not-found";
	end
	function s:count(user)
		local n = 0;
		for _, it in ipairs(self.items) do if it.user == user then n = n + 1; end end
		return n;
	end
	return s;
end

-- A fake keyval store: get/set/users, with a switch to fail.
local function fake_keyval()
	local s = { data = {}, sets = 0 };
	function s:get(user) return self.data[user]; end
	function s:set(user, value)
		if self.fail then return nil, self.fail; end
		self.sets = self.sets + 1;
		self.data[user] = value;
		return true;
	end
	function s:users()
		local list = {};
		for user in pairs(self.data) do list[#list+1] = user; end
		local i = 0;
		return function() i = i + 1; return list[i]; end;
	end
	return s;
end

-- Load the library with options; driver: the storage driver's name;
-- shared: module:shared()'s tables; stores: the stores of an earlier
-- instance (a reload or a restart).
local function load_log(options, driver, shared, stores, real_datamanager)
	local env = { logs = {}, timers = {}, hooks = {}, clock = 1700000000, metrics = {},
		stores = stores or { minimix_log = fake_archive(), archive = fake_archive() }, shared = shared or {} };
	local module = { host = "localhost" };
	function module:shared(path)
		env.shared[path] = env.shared[path] or {};
		return env.shared[path];
	end
	local function opt(name, default)
		local v = (options or {})[name];
		if v == nil then return default; end
		return v;
	end
	function module:get_option(name, default) return opt(name, default); end
	function module:get_option_number(name, default) return opt(name, default); end
	function module:get_option_boolean(name, default) return opt(name, default); end
	function module:get_option_string(name, default)
		local v = opt(name, default);
		return v ~= nil and tostring(v) or nil;
	end
	function module:log(level, fmt, ...)
		env.logs[#env.logs+1] = { level, fmt:format(...) };
	end
	function module:metric(_, name)
		local m = { by = {} };
		function m:with_labels(label)
			m.by[label] = m.by[label] or { total = 0, add = function(c, n) c.total = c.total + n; end };
			return m.by[label];
		end
		env.metrics[name] = m;
		return m;
	end
	function module:open_store(name, kind)
		if kind == nil then
			-- a keyval store, kept across instances as the archives are
			env.stores[name] = env.stores[name] or fake_keyval();
			return env.stores[name];
		end
		assert(kind == "archive");
		env.opened = env.opened or {};
		env.opened[#env.opened+1] = name;
		return assert(env.stores[name], name);
	end
	function module:add_timer(delay, fn)
		env.timers[#env.timers+1] = { due = env.clock + delay, fn = fn, seq = #env.timers };
	end
	function module:hook_global(name, fn) env.hooks[name] = fn; end
	local g = setmetatable({ module = module }, { __index = _G });
	function module:require(name)
		return assert(loadfile("./" .. name .. ".lib.lua", "t", g))();
	end
	function module:hook(name, fn) env.hooks[name] = fn; end
	local saved = { package.loaded["util.time"], package.loaded["core.storagemanager"],
		package.loaded["util.datamanager"] };
	-- the file store's lists, as mod_storage_internal keeps them: the
	-- fake archive's items, each list read or rewritten whole (counted)
	env.rewrites = {};
	package.loaded["util.datamanager"] = real_datamanager or {
		list_load = function(user, host, store)
			assert(host == "localhost");
			local s, out = assert(env.stores[store], store), {};
			for _, it in ipairs(s.items) do
				if it.user == user then
					local item = st.preserialize(st.clone(it.value));
					item.key, item.when, item.with = it.key, it.when, it.with;
					out[#out+1] = item;
				end
			end
			if #out == 0 then return nil; end
			return out;
		end,
		list_store = function(user, host, store, items)
			assert(host == "localhost");
			local s = assert(env.stores[store], store);
			if s.fail then return nil, s.fail; end
			env.rewrites[user] = (env.rewrites[user] or 0) + 1;
			local keep = {};
			for _, it in ipairs(s.items) do if it.user ~= user then keep[#keep+1] = it; end end
			for _, item in ipairs(items or {}) do
				keep[#keep+1] = { user = user, key = item.key, value = st.deserialize(item), when = item.when,
					with = item.with };
			end
			s.items = keep;
			return true;
		end,
	};
	package.loaded["util.time"] = { now = function() return env.clock; end,
		monotonic = function() return env.clock; end };
	package.loaded["core.storagemanager"] = { get_driver = function(host, store)
		assert(host == "localhost" and (store == "minimix_log" or store == "archive"));
		return {}, driver or "sql";
	end };
	local chunk = assert(loadfile("./minimix_log.lib.lua", "t", g));
	local ok, lib = pcall(chunk);
	package.loaded["util.time"], package.loaded["core.storagemanager"] = saved[1], saved[2];
	package.loaded["util.datamanager"] = saved[3];
	assert(ok, lib);
	env.lib, env.module = lib, module;
	return env;
end

-- Run the timers due within `seconds`, each as its own tick, the earliest
-- set first among those due together (a callback returning a number runs
-- again that many seconds later).  on_tick(env) runs after each.
local function advance(env, seconds, on_tick)
	local stop = env.clock + seconds;
	while true do
		table.sort(env.timers, function(a, b)
			if a.due ~= b.due then return a.due < b.due; end
			return a.seq < b.seq;
		end);
		local t = env.timers[1];
		if not t or t.due > stop then break; end
		table.remove(env.timers, 1);
		env.clock = math.max(env.clock, t.due);
		local again = t.fn();
		if type(again) == "number" then
			env.timers[#env.timers+1] = { due = env.clock + again, fn = t.fn, seq = #env.timers + 1000 };
		end
		if on_tick then on_tick(env); end
	end
	env.clock = stop;
end

-- The message a stored item of the room log holds: the item itself, or,
-- where the log stores its text (a <logged/> element: the file store, the
-- SQL batch), the message parsed from that text, with its <said/> mark
-- from the element's attribute.
local function message_of(value)
	if value.name ~= "logged" or value.attr.xmlns ~= "urn:xmpp:minimix:logged:0" then return value; end
	local m = assert(require "util.xml".parse(value[1]));
	if value.attr.said then m:tag("said", { xmlns = "urn:xmpp:minimix:said:0", at = value.attr.said }):up(); end
	return m;
end

return {
	fake_archive = fake_archive;
	message_of = message_of;
	load_log = load_log;
	advance = advance;
	-- the same count as the shim's specs
	count_logs = require "shim_mock".count_logs;
};
