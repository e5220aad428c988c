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
-- (/usr/lib/prosody) the Prosody whose store is used (bench/file_store_harness.lua).
local lib_path = arg[1] or "./minimix_log.lib.lua";
local out_path = arg[2];
local messages = tonumber(os.getenv("MINIMIX_BENCH_WITHDRAW_MESSAGES")) or 2001;
local withdrawals = tonumber(os.getenv("MINIMIX_BENCH_WITHDRAWALS")) or 20;
local h = dofile((arg[0]:match("^(.*/)") or "./") .. "file_store_harness.lua")(lib_path);
local lib, store, st, dm, clock, ROOM = h.lib, h.store, h.st, h.dm, h.clock, h.ROOM;

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
		{ stamp = h:now(), delayed = false });
	h:advance(0.05);
	h:run_due();
end
h:run_due(h:now() + 1);

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
	local w, t = h:run_due(h:now() + 1);
	worst, total = math.max(worst, w), total + t;
end
-- and the background pass, if any, has its turn
local w, t = h:run_due(h:now() + 3600);
worst, total = math.max(worst, w), total + t;

local tombstones = 0;
for _, item in store:find(ROOM, {}) do
	if item:get_child("retracted", "urn:xmpp:message-retract:1") then tombstones = tombstones + 1; end
end
local result = string.format(
	'{"lib": %q, "messages": %d, "withdrawals": %d, "longest_retraction_ms": %.1f, "longest_pause_ms": %.1f, "total_ms": %.1f, "rewrites": %d, "tombstones": %d}',
	lib_path, messages, withdrawals, handling * 1000, worst * 1000, total * 1000, rewrites, tombstones);
h:finish(result, out_path);
