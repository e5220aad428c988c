-- mod_bench_probe: benchmark-only; loaded by bench/bench_server.py on the
-- user VirtualHosts, never in production.  Answers IQ gets to the host:
--
--   <probe xmlns='urn:minimix:bench'/>
--       after two full garbage collections, the Lua heap size in bytes:
--       <probe xmlns='urn:minimix:bench' lua='12345'/>
--
--   <profile xmlns='urn:minimix:bench' action='start'/>
--   <profile xmlns='urn:minimix:bench' action='stop' file='/path'/>
--       a sampling profile of Lua functions by VM instructions (a count
--       hook every 1000 instructions) in the main thread and in the stanza
--       threads of every c2s session, written to `file` on stop.  Time
--       spent in C functions is not seen (use perf for that).  The
--       collector is stopped meanwhile, so that the heap's growth is what
--       was allocated: the stop's reply says how much (kb='...'), and the
--       file has a second table, the KB allocated between two samples
--       given to the function of the later one (a sample's worth of
--       instructions: where the allocations are, roughly).
local st = require "util.stanza";

module:hook("iq-get/host/urn:minimix:bench:probe", function(event)
	collectgarbage("collect");
	collectgarbage("collect");
	local bytes = math.floor(collectgarbage("count") * 1024);
	event.origin.send(st.reply(event.stanza)
		:tag("probe", { xmlns = "urn:minimix:bench", lua = tostring(bytes) }));
	return true;
end);

local EVERY = 1000;
local counts, total = {}, 0;
local allocs, heap_last = {}, 0;

local function hook()
	local heap = collectgarbage("count");
	local info = debug.getinfo(2, "Sn");
	if not info then return; end
	local key = info.short_src .. ":" .. (info.linedefined or 0)
		.. (info.name and (" " .. info.name) or "");
	counts[key] = (counts[key] or 0) + 1;
	total = total + 1;
	allocs[key] = (allocs[key] or 0) + (heap - heap_last);
	-- what the hook allocated itself is not counted
	heap_last = collectgarbage("count");
end

local function write_table(f, title, map, sum)
	local rows = {};
	for k, n in pairs(map) do rows[#rows+1] = { k, n }; end
	table.sort(rows, function(a, b) return a[2] > b[2]; end);
	f:write(title);
	for i = 1, math.min(#rows, 60) do
		f:write(string.format("%6.2f%%  %s\n", rows[i][2] * 100 / math.max(sum, 1), rows[i][1]));
	end
end

local function each_thread(fn)
	for _, session in pairs(prosody.full_sessions) do
		local r = session.thread;
		if r and type(r.thread) == "thread" then fn(r.thread); end
	end
end

module:hook("iq-get/host/urn:minimix:bench:profile", function(event)
	local p = event.stanza.tags[1];
	local kb; -- the KB allocated while profiling (on stop)
	if p.attr.action == "start" then
		counts, total, allocs = {}, 0, {};
		collectgarbage("collect");
		collectgarbage("stop");
		heap_last = collectgarbage("count");
		each_thread(function(co) debug.sethook(co, hook, "", EVERY); end);
		debug.sethook(hook, "", EVERY);
		-- timers run in the main thread: hook it from there
		module:add_timer(0, function() debug.sethook(hook, "", EVERY); end);
	else
		each_thread(function(co) debug.sethook(co); end);
		debug.sethook();
		module:add_timer(0, function() debug.sethook(); end);
		-- what was allocated since the last sample is not counted
		kb = 0;
		for _, n in pairs(allocs) do kb = kb + n; end
		collectgarbage("restart");
		local f = io.open(p.attr.file, "w");
		if f then
			write_table(f, string.format("# %d samples, one per %d Lua VM instructions\n", total, EVERY),
				counts, total);
			write_table(f, string.format("\n# %.0f KB allocated, by the function sampled after it\n", kb),
				allocs, kb);
			f:close();
		end
	end
	event.origin.send(st.reply(event.stanza)
		:tag("profile", { xmlns = "urn:minimix:bench", samples = tostring(total),
			kb = kb and string.format("%.1f", kb) }));
	return true;
end);
