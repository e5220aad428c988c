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
-- (/usr/lib/prosody) the Prosody whose store is used (bench/file_store_harness.lua).
local lib_path = arg[1] or "./minimix_log.lib.lua";
local out_path = arg[2];
local messages = tonumber(os.getenv("MINIMIX_BENCH_LOG_MESSAGES")) or 3000;
local entries = tonumber(os.getenv("MINIMIX_BENCH_LOG_ENTRIES")) or 10000;
local h = dofile((arg[0]:match("^(.*/)") or "./") .. "file_store_harness.lua")(lib_path);
local lib, store, st, ROOM = h.lib, h.store, h.st, h.ROOM;
-- the room's log at its quota, written as the store writes it
for i = 1, entries do
	local m = st.message({ from = ROOM .. "/dan", type = "groupchat" }):text_tag("body", "old " .. i);
	assert(store:append(ROOM, nil, m, h:now() - entries + i, "dan"));
end

-- the callbacks that took 50 ms or more: the server stalls
local stalls = 0;
local worst, total = 0, 0;
for i = 1, messages do
	local m = st.message({ from = ROOM .. "/dan", type = "groupchat", id = "m" .. i })
		:text_tag("body", "message " .. i)
		:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = "sid-" .. i }):up();
	lib.message("alice@localhost", ROOM, "dan", m, { stamp = h:now(), delayed = false });
	h:advance(1);
	local w, t, s = h:run_due();
	worst, total, stalls = math.max(worst, w), total + t, stalls + s;
end

local kept = 0;
for _ in store:find(ROOM, {}) do kept = kept + 1; end
local result = string.format(
	'{"lib": %q, "entries": %d, "messages": %d, "mean_write_ms": %.3f, "longest_pause_ms": %.1f, "stalls_50ms": %d, "kept": %d}',
	lib_path, entries, messages, total / messages * 1000, worst * 1000, stalls, kept);
h:finish(result, out_path);
