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
--       spent in C functions is not seen (use perf for that).
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

local function hook()
	local info = debug.getinfo(2, "Sn");
	if not info then return; end
	local key = info.short_src .. ":" .. (info.linedefined or 0)
		.. (info.name and (" " .. info.name) or "");
	counts[key] = (counts[key] or 0) + 1;
	total = total + 1;
end

local function each_thread(fn)
	for _, session in pairs(prosody.full_sessions) do
		local r = session.thread;
		if r and type(r.thread) == "thread" then fn(r.thread); end
	end
end

module:hook("iq-get/host/urn:minimix:bench:profile", function(event)
	local p = event.stanza.tags[1];
	if p.attr.action == "start" then
		counts, total = {}, 0;
		each_thread(function(co) debug.sethook(co, hook, "", EVERY); end);
		debug.sethook(hook, "", EVERY);
		-- timers run in the main thread: hook it from there
		module:add_timer(0, function() debug.sethook(hook, "", EVERY); end);
	else
		each_thread(function(co) debug.sethook(co); end);
		debug.sethook();
		module:add_timer(0, function() debug.sethook(); end);
		local rows = {};
		for k, n in pairs(counts) do rows[#rows+1] = { k, n }; end
		table.sort(rows, function(a, b) return a[2] > b[2]; end);
		local f = io.open(p.attr.file, "w");
		if f then
			f:write(string.format("# %d samples, one per %d Lua VM instructions\n", total, EVERY));
			for i = 1, math.min(#rows, 60) do
				f:write(string.format("%6.2f%%  %s\n", rows[i][2] * 100 / math.max(total, 1), rows[i][1]));
			end
			f:close();
		end
	end
	event.origin.send(st.reply(event.stanza)
		:tag("profile", { xmlns = "urn:minimix:bench", samples = tostring(total) }));
	return true;
end);
