-- The stand-in Prosody both file-store benches run the room log in:
-- minimix_log.lib.lua and mod_storage_internal loaded as Prosody loads
-- them, with a fake module API and timers on a virtual clock, run here one
-- by one.  One copy, so that the two benches measure the same server.
--
--   local h = dofile("bench/file_store_harness.lua")(lib_path)
--
-- returns h.lib (the log library), h.store (the log's archive store),
-- h.dm (util.datamanager, for counting rewrites), h.st (util.stanza),
-- h.clock (real time), h.ROOM, h:now() / h:advance(seconds) on the
-- virtual clock, h:run_due(until_) and h:finish(result, out_path).  PROSODY_SRC
-- (/usr/lib/prosody) chooses the Prosody whose store is used.
return function(lib_path)
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

	local h = { ROOM = "room@muc.example" };
	local socket_ok, socket = pcall(require, "socket");
	h.clock = socket_ok and socket.gettime or os.clock;

	local dir = os.tmpname();
	os.remove(dir);
	assert(os.execute("mkdir -p " .. dir));
	local dm = require "util.datamanager";
	dm.set_data_path(dir);
	h.dm = dm;
	package.loaded["core.storagemanager"] = { olddm = dm, get_driver = function()
		return {}, "internal";
	end };
	package.loaded["prosody.core.storagemanager"] = package.loaded["core.storagemanager"];

	-- the virtual clock the module's timers run on
	local now = 1700000000;
	local timers = {};
	package.loaded["util.time"] = { now = function() return now; end };
	package.loaded["prosody.util.time"] = package.loaded["util.time"];
	function h:now() return now; end
	function h:advance(seconds) now = now + seconds; end

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
	h.lib = load_in(lib_path, log);
	h.st = require "util.stanza";
	h.store = driver:open("minimix_log", "archive");

	-- runs the timers due until until_ (default: now), the clock moving to
	-- each one's time; returns the longest callback, the time spent in all
	-- and the number that took 50 ms or more (the server stalls)
	function h:run_due(until_)
		until_ = until_ or now;
		local worst, total, stalls = 0, 0, 0;
		while true do
			table.sort(timers, function(a, b) return a.due < b.due; end);
			local t = timers[1];
			if not t or t.due > until_ then break; end
			table.remove(timers, 1);
			now = math.max(now, t.due);
			local t0 = h.clock();
			local again = t.fn();
			local took = h.clock() - t0;
			if type(again) == "number" then timers[#timers+1] = { due = now + again, fn = t.fn }; end
			worst, total = math.max(worst, took), total + took;
			if took >= 0.05 then stalls = stalls + 1; end
		end
		now = math.max(now, until_);
		return worst, total, stalls;
	end

	-- prints the result, saves it in out_path if given, and removes the
	-- store's files
	function h:finish(result, out_path)
		print(result);
		if out_path then
			local out = assert(io.open(out_path, "w"));
			out:write(result, "\n");
			out:close();
		end
		os.execute("rm -rf " .. dir);
	end
	return h;
end
