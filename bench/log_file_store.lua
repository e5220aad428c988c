-- The room log on Prosody's file store at its steady state: a room that
-- holds 10,000 entries (the store's quota and minimix_log_max_per_room)
-- gets N more messages, one per flush, through minimix_log.lib.lua and
-- mod_storage_internal, both as Prosody loads them (with a stand-in for
-- the module API and the timers, run here one by one).  Prints the mean
-- write time per message and the longest single timer callback (the
-- longest pause of the server), as JSON.
--
--   lua5.4 bench/log_file_store.lua [lib] [out.json]
--
-- lib: the log library to measure (default ./minimix_log.lib.lua), e.g. a
-- copy of an older version, to compare.  MINIMIX_BENCH_LOG_MESSAGES (3000)
-- and MINIMIX_BENCH_LOG_ENTRIES (10000) change the sizes; PROSODY_SRC
-- (/usr/lib/prosody) the Prosody whose store is used.
local lib_path = arg[1] or "./minimix_log.lib.lua";
local out_path = arg[2];
local messages = tonumber(os.getenv("MINIMIX_BENCH_LOG_MESSAGES")) or 3000;
local entries = tonumber(os.getenv("MINIMIX_BENCH_LOG_ENTRIES")) or 10000;
local src = os.getenv("PROSODY_SRC") or "/usr/lib/prosody";
package.path = src .. "/?.lua;" .. package.path;
package.cpath = src .. "/?.so;" .. package.cpath;
local f = assert(io.open(src .. "/util/datamanager.lua"));
local v13 = f:read("a"):find("prosody.util.logger", 1, true);
f:close();
if v13 then
	-- 13.0 requires its own modules as "prosody.util.x", and so does
	-- "util.x" where that exists
	package.path = src .. "/../?.lua;" .. package.path;
	package.cpath = src .. "/../?.so;" .. package.cpath;
	table.insert(package.searchers, 2, function(name)
		if not name:match("^util%.")
			or not package.searchpath("prosody." .. name, package.path .. ";" .. package.cpath) then
			return nil;
		end
		return function() return require("prosody." .. name); end;
	end);
end

local socket_ok, socket = pcall(require, "socket");
local clock = socket_ok and socket.gettime or os.clock;

local dir = os.tmpname();
os.remove(dir);
assert(os.execute("mkdir -p " .. dir));
local dm = require "util.datamanager";
dm.set_data_path(dir);
package.loaded["core.storagemanager"] = { olddm = dm, get_driver = function()
	return {}, "internal";
end };
package.loaded["prosody.core.storagemanager"] = package.loaded["core.storagemanager"];

-- the virtual clock the module's timers run on, and its real time
local now = 1700000000;
local timers = {};
package.loaded["util.time"] = { now = function() return now; end };
package.loaded["prosody.util.time"] = package.loaded["util.time"];

local function fake_module(options)
	local m = { host = "localhost", timers = timers };
	function m:get_option_number(name, default)
		local v = options[name];
		if v == nil then return default; end
		return v;
	end
	m.get_option = m.get_option_number;
	m.get_option_integer = m.get_option_number;
	m.get_option_period = m.get_option_number;
	m.get_option_boolean = m.get_option_number;
	function m:get_option_string(name, default)
		local v = options[name];
		if v == nil then return default; end
		return tostring(v);
	end
	function m:log() end
	function m:shared() return {}; end
	function m:metric()
		return { with_labels = function() return { add = function() end }; end };
	end
	function m:add_timer(delay, fn) timers[#timers+1] = { due = now + delay, fn = fn }; end
	function m:hook_global() end
	-- the log's own libraries, from beside the library measured
	function m:require(name)
		local g = setmetatable({ module = m }, { __index = _G });
		return assert(loadfile((lib_path:match("^(.*/)") or "./") .. name .. ".lib.lua", "t", g))();
	end
	return m;
end

local function load_in(path, module)
	local g = setmetatable({ module = module }, { __index = _G });
	return assert(loadfile(path, "t", g))();
end

local storage = fake_module({});
local driver;
function storage:provides(_, d) driver = d; end
load_in(src .. "/modules/mod_storage_internal.lua", storage);

local log = fake_module({ minimix_log_cleanup_interval = 1e9 });
function log:open_store(name, kind) return driver:open(name, kind); end
local lib = load_in(lib_path, log);

local st = require "util.stanza";
local ROOM = "room@muc.example";
local store = driver:open("minimix_log", "archive");
-- the room's log at its quota, written as the store writes it
for i = 1, entries do
	local m = st.message({ from = ROOM .. "/dan", type = "groupchat" }):text_tag("body", "old " .. i);
	assert(store:append(ROOM, nil, m, now - entries + i, "dan"));
end

-- the callbacks that took 50 ms or more: the server stalls
local stalls = 0;
local function run_due()
	local worst, total = 0, 0;
	while true do
		table.sort(timers, function(a, b) return a.due < b.due; end);
		local t = timers[1];
		if not t or t.due > now then break; end
		table.remove(timers, 1);
		local t0 = clock();
		local again = t.fn();
		local took = clock() - t0;
		if type(again) == "number" then timers[#timers+1] = { due = now + again, fn = t.fn }; end
		worst, total = math.max(worst, took), total + took;
		if took >= 0.05 then stalls = stalls + 1; end
	end
	return worst, total;
end

local worst, total = 0, 0;
for i = 1, messages do
	local m = st.message({ from = ROOM .. "/dan", type = "groupchat", id = "m" .. i })
		:text_tag("body", "message " .. i)
		:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = "sid-" .. i }):up();
	lib.message("alice@localhost", ROOM, "dan", m, { stamp = now, delayed = false });
	now = now + 1;
	local w, t = run_due();
	worst, total = math.max(worst, w), total + t;
end

local kept = 0;
for _ in store:find(ROOM, {}) do kept = kept + 1; end
local result = string.format(
	'{"lib": %q, "entries": %d, "messages": %d, "mean_write_ms": %.3f, "longest_pause_ms": %.1f, "stalls_50ms": %d, "kept": %d}',
	lib_path, entries, messages, total / messages * 1000, worst * 1000, stalls, kept);
print(result);
if out_path then
	local f = assert(io.open(out_path, "w"));
	f:write(result, "\n");
	f:close();
end
os.execute("rm -rf " .. dir);
