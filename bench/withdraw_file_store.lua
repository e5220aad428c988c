-- Retractions in the room log on Prosody's file store: a room with 2,001
-- messages logged through minimix_log.lib.lua and mod_storage_internal
-- (both as Prosody loads them, with a stand-in for the module API and the
-- timers, run here one by one), then its sender retracts the oldest, and
-- N-1 more, one a second.  Prints the longest handling of a retraction,
-- the longest pause of the server (that or a single timer callback), the
-- total time spent withdrawing and the rewrites of the room's list, as
-- JSON.
--
--   lua5.4 bench/withdraw_file_store.lua [lib] [out.json]
--
-- lib: the log library to measure (default ./minimix_log.lib.lua), e.g. a
-- copy of an older version, to compare.  MINIMIX_BENCH_WITHDRAW_MESSAGES
-- (2001) and MINIMIX_BENCH_WITHDRAWALS (20) change the sizes; PROSODY_SRC
-- (/usr/lib/prosody) the Prosody whose store is used.
local lib_path = arg[1] or "./minimix_log.lib.lua";
local out_path = arg[2];
local messages = tonumber(os.getenv("MINIMIX_BENCH_WITHDRAW_MESSAGES")) or 2001;
local withdrawals = tonumber(os.getenv("MINIMIX_BENCH_WITHDRAWALS")) or 20;
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

local function run_due(until_)
	local worst, total = 0, 0;
	while true do
		table.sort(timers, function(a, b) return a.due < b.due; end);
		local t = timers[1];
		if not t or t.due > until_ then break; end
		table.remove(timers, 1);
		now = math.max(now, t.due);
		local t0 = clock();
		local again = t.fn();
		local took = clock() - t0;
		if type(again) == "number" then timers[#timers+1] = { due = now + again, fn = t.fn }; end
		worst, total = math.max(worst, took), total + took;
	end
	now = math.max(now, until_);
	return worst, total;
end

local function said(i, body)
	local m = st.message({ from = ROOM .. "/dan", type = "groupchat", id = "m" .. i })
		:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = "sid-" .. i }):up()
		:tag("occupant-id", { xmlns = "urn:xmpp:occupant-id:0", id = "dan-occupant" }):up();
	if body then m:text_tag("body", body); end
	return m;
end

-- the room's messages, logged as they come
for i = 1, messages do
	lib.message("alice@localhost", ROOM, "dan", said(i, ("message %d "):format(i) .. ("x"):rep(80)),
		{ stamp = now, delayed = false });
	now = now + 0.05;
	run_due(now);
end
run_due(now + 1);

local rewrites = 0;
local list_store = dm.list_store;
dm.list_store = function(...)
	rewrites = rewrites + 1;
	return list_store(...);
end

-- the sender retracts the oldest, then more, one a second
local worst, total, handling = 0, 0, 0;
for i = 1, withdrawals do
	local r = said(messages + i);
	r:tag("retract", { xmlns = "urn:xmpp:message-retract:1", id = "sid-" .. i }):up();
	local t0 = clock();
	lib.withdraw("alice@localhost", ROOM, lib.withdrawal(r, "dan"), r, nil);
	local took = clock() - t0;
	worst, total, handling = math.max(worst, took), total + took, math.max(handling, took);
	local w, t = run_due(now + 1);
	worst, total = math.max(worst, w), total + t;
end
-- and the background pass, if any, has its turn
local w, t = run_due(now + 3600);
worst, total = math.max(worst, w), total + t;

local tombstones = 0;
for _, item in store:find(ROOM, {}) do
	if item:get_child("retracted", "urn:xmpp:message-retract:1") then tombstones = tombstones + 1; end
end
local result = string.format(
	'{"lib": %q, "messages": %d, "withdrawals": %d, "longest_retraction_ms": %.1f, "longest_pause_ms": %.1f, "total_ms": %.1f, "rewrites": %d, "tombstones": %d}',
	lib_path, messages, withdrawals, handling * 1000, worst * 1000, total * 1000, rewrites, tombstones);
print(result);
if out_path then
	local f = assert(io.open(out_path, "w"));
	f:write(result, "\n");
	f:close();
end
os.execute("rm -rf " .. dir);
