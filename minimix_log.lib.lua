-- mod_minimix's room log: every room message written once per room, durably, for the devices that were away.
--
-- Every room message the accounts of this host
-- receive, written once per room through Prosody's storage API (an archive
-- store, so the file store, SQLite and PostgreSQL all work), with its
-- retention, its fault handling and the opt-in copy into each account's
-- own XEP-0313 archive.  mod_minimix.lua loads it with module:require and
-- hands it each room message; nothing here decides what reaches a session.
--
-- One archive per room: the store's "username" is the room's JID, the item
-- is the message as the room sent it (without 'to', with its <delay/> and
-- <stanza-id/>), 'with' is the sender's nick (the room for the room's own
-- messages), 'when' the time the room said it.

local st = require "util.stanza";
local new_cache = require "util.cache".new;
local time = require "util.time";
local sha1 = require "util.hashes".sha1;
local sha256 = require "util.hashes".sha256;
local datetime = require "util.datetime";
local random_bytes = require "util.random".bytes;
local xml_parse = require "util.xml".parse;
local logsql = module:require("minimix_logsql");
local logfile = module:require("minimix_logfile");

-- A random (version 4) UUID from one read of 16 bytes: the stanza-id the
-- module stamps on each message of a room without an archive.
-- util.uuid.generate reads six times and builds a dozen strings for one.
local UUID = "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x";
local function new_uuid()
	local b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, b16 =
		random_bytes(16):byte(1, 16);
	return UUID:format(b1, b2, b3, b4, b5, b6, b7 & 0x0f | 0x40, b8, b9 & 0x3f | 0x80, b10,
		b11, b12, b13, b14, b15, b16);
end

local xmlns_sid = "urn:xmpp:sid:0";
local xmlns_delay = "urn:xmpp:delay";
-- the module's own mark on a logged message: when it was said, exactly
local xmlns_said = "urn:xmpp:minimix:said:0";
-- the log's item where a store takes it as text (see log_value)
local xmlns_logged = "urn:xmpp:minimix:logged:0";
-- XEP-0424 retractions (the current and the fastened form), XEP-0425
-- moderations (the current and the form mod_muc_moderation sends), and
-- what tells an occupant from another (XEP-0421, the room's muc#user item)
local xmlns_retract = "urn:xmpp:message-retract:1";
local xmlns_retract0 = "urn:xmpp:message-retract:0";
local xmlns_fasten = "urn:xmpp:fasten:0";
local xmlns_moderate = "urn:xmpp:message-moderate:1";
local xmlns_moderate0 = "urn:xmpp:message-moderate:0";
local xmlns_occupant_id = "urn:xmpp:occupant-id:0";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

-- Rooms whose recent message ids are remembered, and how many ids each: a
-- room's copies for its local accounts come within moments of each other,
-- and the history a re-join brings is a room's latest messages.
local ROOMS, IDS_PER_ROOM = 1024, 128;
-- (account, message) pairs already copied into the accounts' archives
local MAM_SEEN = 4096;
-- How long writes wait after a failure: from 1 s, doubling, at most this.
local RETRY_MAX = 16;
-- How soon a write that failed while others went through is tried again
-- (a second failure then is a refusal of that message).
local RETRY_SOON = 0.1;
-- What one timer tick writes at most, so that a backlog drains while
-- delivery and the other rooms go on.
local BATCH_ITEMS, BATCH_SECONDS = 100, 0.05;
-- The pause before the next batch: not 0, which util.timer may run within
-- the same turn of the server's loop, before any I/O.
local NEXT_BATCH = 0.01;
-- What a waiting message costs besides its XML, counted in the byte bound.
local ENTRY_OVERHEAD = 200;
-- A store user the file store names with more bytes than this (each byte
-- outside [A-Za-z0-9] takes three) goes under a digest of its name: a file
-- name has at most 255 bytes, and the store adds ".list" and "~".
local FILE_NAME_MAX = 200;
-- Truncating to the store's quota keeps this fraction of it: the file
-- store rewrites a room's whole list for it, so not every hundredth write.
local TRUNCATE_TO = 0.9;
-- The retention job goes through this many rooms (or BATCH_SECONDS) per
-- timer tick: on the file store each is a read of its whole list.
local CLEANUP_ROOMS_PER_TICK = 4;

local day = 86400;
local multipliers = { d = day, w = day * 7, m = 31 * day, y = 365.2425 * day };

-- "1w", "2d", "3600": seconds, as mod_mam reads archive_expires_after;
-- "never": nil; anything else: false.
local function parse_duration(value)
	value = tostring(value):lower();
	if value == "never" then return nil; end
	local n, m = value:match("^%s*(%d+)%s*([dwmy]?)%s*$");
	if not n then return false; end
	return tonumber(n) * (multipliers[m] or 1);
end

-- drivers' errors can end in a newline (libpq's do)
local function oneline(err)
	return (tostring(err):gsub("%s+", " "):gsub(" $", ""));
end

local function positive_option(name, default)
	local v = module:get_option_number(name, default);
	if v < 0 or v ~= v then
		module:log("warn", "%s must not be negative; using %s", name, tostring(default));
		return default;
	end
	return v;
end

local enabled = module:get_option_boolean("minimix_log", true);
local in_mam = module:get_option_boolean("minimix_archive_in_mam", false);
local expires_option = module:get_option_string("minimix_log_expires_after", "1w");
local expires_after = parse_duration(expires_option);
if expires_after == false then
	module:log("error", "Could not read minimix_log_expires_after %q; using one week", expires_option);
	expires_after = 7 * day;
end
local max_per_room = math.max(1, math.floor(positive_option("minimix_log_max_per_room", 10000)));
local flush_interval = positive_option("minimix_log_flush_interval", 100) / 1000;
local cleanup_interval = math.max(1, positive_option("minimix_log_cleanup_interval", 3600));
local queue_max = math.max(1, math.floor(positive_option("minimix_log_queue_max", 10000)));
-- at least one message at the s2s stanza limit (256 KiB) fits
local queue_bytes = math.max(262144 + 4096, math.floor(positive_option("minimix_log_queue_bytes", 16 * 1024 * 1024)));

-- A XEP-0082 stamp read to the fraction of a second (0.12's
-- util.datetime.parse drops fractions), and one written with them.
local function parse_stamp(text)
	local t = text and datetime.parse(text);
	if not t then return nil; end
	local frac = text:match("T%d%d:%d%d:%d%d(%.%d+)");
	return math.floor(t) + (frac and tonumber("0" .. frac) or 0);
end

local function exact_stamp(t)
	local whole = math.floor(t);
	local micro = math.floor((t - whole) * 1e6 + 0.5);
	if micro >= 1e6 then whole, micro = whole + 1, 0; end
	return os.date("!%Y-%m-%dT%H:%M:%S", whole) .. (".%06dZ"):format(micro);
end

-- Ids longer than this are never kept whole, nor used as a store's key:
-- a room (a remote one, or any occupant of a room without mod_muc_mam)
-- chooses them, up to the stanza size limit, and each one kept would be
-- kept per room, per membership and in the account's record.  Such an id
-- stands as "#" and the 40 hex digits of its SHA-1: the shim reads a
-- room's stanza-id through this too, so every memory of it agrees.  Nor
-- is it the store's key (PostgreSQL's index row overflows at about 4 KB):
-- dedupe_key makes it a digest, which is never one.
local ID_MAX = 256;
local function bounded_id(id)
	if id and #id > ID_MAX then return "#" .. sha1(id, true); end
	return id;
end

-- The log's items -------------------------------------------------------------

-- A message is logged as the room sent it, without 'to', with the log's
-- <said/> mark of the exact time the room said it (a live message).
-- Where a store takes it as text cheaply (the file store; SQL, through
-- the batch), the item is instead a <logged/> element of the module's:
-- its one text child is the message's XML, the text the shim already
-- made of it for the sessions (m.payload), and its 'said' attribute the
-- mark.  The file store then serialises one string instead of a tree,
-- and nothing is cloned; the SQL batch writes that text with the mark put
-- in, the row mod_storage_sql writes for the stanza.  Logs written before
-- hold the stanza itself, and so do tombstones: every reader of the log
-- goes through decode, which takes both.
local function is_logged(item)
	return item.name == "logged" and item.attr.xmlns == xmlns_logged;
end

-- The message an item holds, with its mark: the item itself if it is the
-- stanza, else a new stanza parsed from its text (nil if that is not XML).
local function decode(item)
	if not is_logged(item) then return item; end
	local text = item[1];
	local stanza = type(text) == "string" and xml_parse(text);
	if not stanza then return nil; end
	local said = item.attr.said;
	if said then stanza:tag("said", { xmlns = xmlns_said, at = said }):up(); end
	return stanza;
end

-- An item's XML text, as mod_storage_sql writes a stanza: the message's
-- text with the mark put in before its end tag.
local CLOSE = "</message>";
local function item_text(item)
	if not is_logged(item) then return tostring(item); end
	local text, said = item[1], item.attr.said;
	if type(text) ~= "string" then error("an empty log item"); end
	if not said then return text; end
	if text:sub(-#CLOSE) ~= CLOSE then
		local stanza = decode(item);
		if not stanza then error("a log item that is not XML"); end
		return tostring(stanza);
	end
	return text:sub(1, -#CLOSE - 1) .. "<said xmlns='" .. xmlns_said .. "' at='" .. st.xml_escape(said) .. "'/>"
		.. CLOSE;
end

-- The text of a log item that is only that (its 'xmlns', its mark, one
-- text): what the file store's batch writes without serialising a table.
local function compact_text(item)
	if not is_logged(item) or #item ~= 1 or #item.tags ~= 0 or type(item[1]) ~= "string" then return nil; end
	for k in pairs(item.attr) do
		if k ~= "xmlns" and k ~= "said" then return nil; end
	end
	return item[1];
end

-- A stanza's text without its 'to', as the shim's m.payload.
local function text_of(stanza)
	local to = stanza.attr.to;
	stanza.attr.to = nil;
	local text = tostring(stanza);
	stanza.attr.to = to;
	return text;
end

-- Retractions and moderations -----------------------------------------------

-- What a groupchat message withdraws: nil, or { id = the room's stanza-id
-- of the message, moderated = by whom (the room's own announcement), reason }.
-- A retraction is an occupant's (nick), a moderation the room's (no nick):
-- one claiming otherwise withdraws nothing.
local function withdrawal(stanza, nick)
	local r = stanza:get_child("retract", xmlns_retract);
	if r and r.attr.id then
		local mod = r:get_child("moderated", xmlns_moderate);
		if mod then
			if nick then return nil; end
			return { id = r.attr.id, moderated = mod.attr.by or "", reason = r:get_child_text("reason"),
				moderated_ns = xmlns_moderate };
		end
		if not nick then return nil; end
		return { id = r.attr.id };
	end
	local a = stanza:get_child("apply-to", xmlns_fasten);
	if a and a.attr.id then
		local mod = a:get_child("moderated", xmlns_moderate0);
		if mod then
			if nick or not mod:get_child("retract", xmlns_retract0) then return nil; end
			return { id = a.attr.id, moderated = mod.attr.by or "", reason = mod:get_child_text("reason"),
				moderated_ns = xmlns_moderate0 };
		end
		if nick and a:get_child("retract", xmlns_retract0) then return { id = a.attr.id }; end
	end
	return nil;
end

local function room_sid(stanza, room)
	for sid in stanza:childtags("stanza-id", xmlns_sid) do
		if sid.attr.by == room then return sid.attr.id; end
	end
	return nil;
end

-- Who sent a message, as strongly as both messages say: the XEP-0421
-- occupant-id the room gives, else the real JID the room shows, else the
-- nick.
local function occupant_id(stanza)
	local o = stanza:get_child("occupant-id", xmlns_occupant_id);
	return o and o.attr.id;
end

local function real_jid(stanza)
	local x = stanza:get_child("x", xmlns_muc_user);
	local item = x and x:get_child("item");
	local j = item and item.attr.jid;
	return j and (j:match("^([^/]*)") or j);
end

local function identity(stanza)
	return { occupant_id = occupant_id(stanza), real_jid = real_jid(stanza), from = stanza.attr.from };
end

local function same_identity(a, b)
	if a.occupant_id and b.occupant_id then return a.occupant_id == b.occupant_id; end
	if a.real_jid and b.real_jid then return a.real_jid == b.real_jid; end
	return a.from ~= nil and a.from == b.from;
end

local function same_sender(original, retraction)
	return same_identity(identity(original), identity(retraction));
end

-- Whether w may withdraw original: a moderation always, a retraction only
-- from its sender.  A tombstone stays as it is.
local function may_withdraw(original, w, retraction)
	if original:get_child("retracted", xmlns_retract) then return false; end
	return w.moderated ~= nil or same_sender(original, retraction);
end

-- The original without body or any payload: its identity and time (from,
-- id, the room's stanza-id and delay, the log's mark of when it was said),
-- and the XEP-0424 marker, with the moderator and reason of a XEP-0425
-- moderation.
local function tombstone(original, room, w, now)
	local t = st.message({ from = original.attr.from, to = original.attr.to, type = original.attr.type,
		id = original.attr.id });
	for _, tag in ipairs(original.tags) do
		local ns = tag.attr.xmlns;
		if (tag.name == "stanza-id" and ns == xmlns_sid and tag.attr.by == room)
			or (tag.name == "delay" and ns == xmlns_delay)
			or (tag.name == "said" and ns == xmlns_said)
			or (tag.name == "occupant-id" and ns == xmlns_occupant_id) then
			t:add_child(st.clone(tag));
		end
	end
	t:tag("retracted", { xmlns = xmlns_retract, stamp = datetime.datetime(math.floor(now)) });
	if w.moderated then
		t:tag("moderated", { xmlns = xmlns_moderate, by = w.moderated ~= "" and w.moderated or nil }):up();
		if w.reason then t:text_tag("reason", w.reason); end
	end
	return t:up();
end

-- LuaDBI's prepared statements hold a bare pointer to their connection.
-- When a connection breaks, util.sql drops it at once but keeps its
-- prepared statements until the next successful connect: the collector may
-- free the connection first, and the statements' finalizers then use freed
-- memory (Prosody died this way in libpq after PostgreSQL restarts, the
-- outage the log's retries exist for).  Each connection is therefore kept
-- for as long as its table of prepared statements (an ephemeron), so both
-- go in the same cycle, the statements, younger, finalized first.  Once per
-- process, for every engine util.sql makes; harmless for other drivers.
local function anchor(anchors, engine)
	if engine.conn ~= nil and type(engine.prepared) == "table" then
		anchors[engine.prepared] = engine.conn;
	end
end

local function guard_sql_statements()
	local ok, engines = pcall(module.shared, module, "/*/sql/connections");
	if not ok or type(engines) ~= "table" then return; end
	for _, engine in pairs(engines) do
		local mt = type(engine) == "table" and getmetatable(engine);
		local methods = type(mt) == "table" and rawget(mt, "__index");
		if type(methods) == "table" and type(methods.connect) == "function" then
			local anchors = rawget(mt, "minimix_statement_guard");
			if not anchors then
				anchors = setmetatable({}, { __mode = "k" });
				rawset(mt, "minimix_statement_guard", anchors);
				local connect = methods.connect;
				methods.connect = function(self, ...)
					local a, b, c = connect(self, ...);
					anchor(anchors, self);
					return a, b, c;
				end
			end
			anchor(anchors, engine);
		end
	end
end

if not enabled and not in_mam then
	guard_sql_statements();
	return { message = function() end, flush = function() end, cleanup = function() end,
		replay = function() return {}; end, serves = false, parse_stamp = parse_stamp,
		save = function() end, restore = function() end, bounded_id = bounded_id,
		hold = function() return nil; end, holding = function() return false; end,
		release = function() end, backfilled = function() return false; end,
		find = function() return nil, "no room log"; end,
		withdrawal = withdrawal, withdraw = function(_, room, w, stanza, kept)
			-- the ring alone: its copy, if its sender's
			if kept and may_withdraw(kept, w, stanza) then
				return tostring(tombstone(kept, room, w, time.now()));
			end
		end };
end

local metric_writes = module:metric("counter", "log_writes", "",
	"Room messages written to the room log and to the accounts' archives", { "store" });
local metric_failures = module:metric("counter", "log_write_failures", "",
	"Failed writes to the room log and the accounts' archives (retried, or given up when refused)", { "store" });
local metric_dropped = module:metric("counter", "log_dropped", "",
	"Room messages given up on: the write queue overflowed during an outage, or the store refused them", { "store" });

-- About the bytes a stanza takes (its XML unescaped), counted without
-- serializing it where the log keeps the stanza, not its text.
local function stanza_size(t)
	local n = #t.name * 2 + 5;
	for k, v in pairs(t.attr) do n = n + #k + #tostring(v) + 4; end
	for _, child in ipairs(t) do
		if type(child) == "string" then
			n = n + #child;
		else
			n = n + stanza_size(child);
		end
	end
	return n;
end

-- A writer per store (the room log, the accounts' archives), with a queue
-- per store user (a room's log, an account's archive): written on a short
-- timer, a bounded batch per tick, and all at shutdown.  Delivery does
-- not wait for it, except on a server too busy to run its timers, where
-- the message that finds the next pass overdue runs it (see push).
--
-- A write that fails is one of two things.  The store is away (every write
-- fails): everything waits and is tried again, from 1 s, doubling up to
-- RETRY_MAX s, logged once per outage and counted.  Or the store refuses
-- that one item (it raises, it is over a quota, or its write fails while
-- other writes go through): the item is given up, counted in log_dropped
-- and logged once per store user and cause.  The two look the same on a
-- single failed write, so a failed queue stays out of the batch until the
-- next pass, and a head that failed twice, with writes to other queues
-- going through since its first failure, was refused.  While the store
-- seems away, a queue that has not failed yet is tried at once: a room
-- refusing its writes never holds up another room for the back-off.
--
-- Everything waiting is bounded in count (minimix_log_queue_max) and in
-- bytes (minimix_log_queue_bytes) across the store's queues: beyond them
-- the oldest is given up, said once per outage (or until the queues
-- drain).
-- The keys the stores gave the latest messages written without one of
-- ours (the file store's log, every archive copy): (store user, room,
-- stanza-id) -> { key, who = its sender (identity()) }.  A retraction,
-- which names a recent message most of the time, is judged by it and
-- finds the message by its key: on the file store nothing else finds one
-- without reading the room's whole list, which no occupant may make the
-- server do at will.
local SID_KEYS = 8192;
local sid_keys = new_cache(SID_KEYS);

-- Who sent an entry's message (identity()), kept when it was queued.
local function entry_who(e)
	if e.who then return e.who; end
	local v = decode(e.value);
	return v and identity(v) or {};
end

-- kind: "log" or "mam"; on_quota(user, stage): makes room in a full
-- store; batch: writes a list of entries at once (logsql); storable(value):
-- what the store's append takes for a waiting value (nil: the value).
local function new_writer(kind, store, on_quota, batch, storable)
	local w = { kind = kind, store = store };
	local what = kind == "log" and "room log" or "accounts' archives";
	local m_writes, m_failures, m_dropped = metric_writes:with_labels(kind),
		metric_failures:with_labels(kind), metric_dropped:with_labels(kind);
	-- store user -> { head, tail, [i] = entry, listed }: one queue each
	local queues = {};
	-- store users whose queue holds something, in the order they came
	local active = {};
	-- every waiting entry, oldest first, for the bounds (written ones are
	-- marked done and skipped)
	local order, oldest, newest = {}, 1, 0;
	local count, bytes = 0, 0;
	local failing, failures, retry, overflowed = false, 0, 1, false;
	-- passes are numbered: a refusal is a failure with a success since
	local pass_no, last_success = 0, -1;
	local told = new_cache(256); -- (store user, cause) given up and logged
	-- (sizes and counts in a driver's message make no new cause)
	local function cause_key(user, cause)
		return user .. "\0" .. cause:sub(1, 200):gsub("%d+", "#");
	end

	local function trim()
		while oldest <= newest and order[oldest].done do
			order[oldest] = nil;
			oldest = oldest + 1;
		end
		if oldest > newest then oldest, newest = 1, 0; end
	end

	-- the head of its queue leaves, written or given up
	local function pop(q, e)
		q[q.head] = nil;
		q.head = q.head + 1;
		if q.head > q.tail then q.head, q.tail = 1, 0; end
		count, bytes = count - 1, bytes - e.size;
		e.done, e.value = true, nil;
		trim();
	end

	local function give_up(q, e, cause)
		local room = e.room or e.user;
		pop(q, e);
		m_dropped:add(1);
		cause = cause:sub(1, 200);
		local k = cause_key(e.user, cause);
		if not told:get(k) then
			told:set(k, true);
			module:log("warn", "Giving up writing a message of %s to the %s: %s (further ones for the same reason are only counted)",
				room, what, cause);
		end
	end

	-- The oldest waiting entry is the head of its queue: queues fill in
	-- order and are emptied from their heads.
	local function drop_oldest()
		trim();
		local e = order[oldest];
		if not e then return; end
		local q = queues[e.user];
		pop(q, e);
		m_dropped:add(1);
		if not overflowed then
			overflowed = true;
			module:log("warn", "The write queue is full for the %s (%d messages, %d bytes): the oldest are given up until it drains",
				what, count + 1, bytes + e.size);
		end
	end

	local function write(e)
		local value = e.value;
		if storable then value = storable(value); end
		local ok, ret, err = pcall(store.append, store, e.user, e.key, value, e.when, e.with);
		local stage = 1;
		while ok and not ret and err == "quota-limit" and on_quota and on_quota(e.user, stage) do
			-- the store's own per-user limit: make room, as mod_mam does
			ok, ret, err = pcall(store.append, store, e.user, e.key, value, e.when, e.with);
			stage = stage + 1;
		end
		if not ok then return nil, oneline(ret), true; end -- raised: this entry is the problem
		if not ret then return nil, oneline(err or "unknown error"), err == "quota-limit"; end
		if e.sid_key and type(ret) == "string" then
			sid_keys:set(e.sid_key, { key = ret, who = entry_who(e) });
		end
		return true;
	end

	-- Two timers: the next pass (flush interval, back-off or the rest of a
	-- backlog) and, while the store seems away, a try of queues that have
	-- not failed yet.  A timer that was planned later than the one now
	-- planned finds itself stale and does nothing.
	local planned, probe_planned = nil, nil;
	local pass;
	local function schedule(delay, probe)
		local due = time.now() + delay;
		if probe then
			if probe_planned and probe_planned <= due then return; end
			probe_planned = due;
		else
			if planned and planned <= due then return; end
			planned = due;
		end
		module:add_timer(delay, function()
			if probe then
				if probe_planned ~= due then return; end
				probe_planned = nil;
			else
				if planned ~= due then return; end
				planned = nil;
			end
			pass(probe, false);
		end);
	end

	-- Up to budget entries in batches of at most BATCH_ITEMS, taken from
	-- the queues' heads in turn (each queue's in its order), leaving out a
	-- queue whose head failed before.  Returns how many were written, and
	-- the error of a batch that failed (which wrote nothing).
	-- An entry a batch wrote: its key kept for withdrawals, its queue on.
	local function written(e)
		if e.sid_key and type(e.written_key) == "string" then
			sid_keys:set(e.sid_key, { key = e.written_key, who = entry_who(e) });
		end
		pop(queues[e.user], e);
	end

	local function write_batches(budget, whole, started)
		local done = 0;
		while done < budget do
			local list, at, want, more = {}, {}, math.min(budget - done, BATCH_ITEMS), true;
			while more and #list < want do
				more = false;
				for _, user in ipairs(active) do
					local q = queues[user];
					local i = q and (at[user] or q.head);
					if i and i <= q.tail and not q[q.head].fails and #list < want then
						list[#list+1], at[user], more = q[i], i + 1, true;
					end
				end
			end
			if #list == 0 then break; end
			local ok, err = batch(list);
			if not ok then
				-- (a batch of the file store writes room by room: the rooms
				-- written before the one that failed are done)
				local n = 0;
				for _, e in ipairs(list) do
					if e.batched then written(e); n = n + 1; end
				end
				m_writes:add(n);
				return done + n, err or "unknown error";
			end
			for _, e in ipairs(list) do written(e); end
			m_writes:add(#list);
			module:log("debug", "Wrote %d message(s) to the %s in one batch", #list, what);
			done = done + #list;
			local still = {};
			for _, user in ipairs(active) do
				local q = queues[user];
				if q and q.head <= q.tail then still[#still+1] = user; else queues[user] = nil; end
			end
			active = still;
			if not whole and time.now() - started >= BATCH_SECONDS then break; end
		end
		return done;
	end

	-- Whether the store answers at all: a read of a store user nobody
	-- writes (no room JID and no account has a space in it), which costs
	-- the file store one missing file and SQL one indexed query, and fails
	-- as everything does while the store is away.
	local function store_answers()
		local ok, items = pcall(store.find, store, "minimix probe", { limit = 1 });
		return ok and items ~= nil;
	end

	-- One pass: round after round, the head of each queue (a failed queue
	-- sits the pass out), until the batch is written or nothing moves.
	function pass(probe, whole)
		pass_no = pass_no + 1;
		local started, budget = time.now(), whole and math.huge or BATCH_ITEMS;
		local wrote, failed, last_err = false, {}, nil;
		local moved = true;
		if batch and not failing and not probe then
			local n, err = write_batches(budget, whole, started);
			if n > 0 then budget, wrote, last_success = budget - n, true, pass_no; end
			if err then
				module:log("debug", "A batch of writes to the %s failed (%s): writing one by one", what, oneline(err));
			end
		end
		while moved and budget > 0 do
			moved = false;
			local users = active;
			active = {};
			for _, user in ipairs(users) do
				local q = queues[user];
				local e = q and q[q.head];
				if e and not failed[user] and budget > 0 and not (probe and e.fails) then
					budget = budget - 1;
					local ok, err, refused = write(e);
					if ok then
						pop(q, e);
						m_writes:add(1);
						wrote, moved, last_success = true, true, pass_no;
					elseif refused then
						m_failures:add(1);
						give_up(q, e, err);
						moved = true;
					else
						m_failures:add(1);
						failures, last_err = failures + 1, err;
						e.fails, e.first_fail, e.err = (e.fails or 0) + 1, e.first_fail or pass_no, err;
						failed[#failed+1], failed[user] = user, true;
					end
				end
				if q and q.head <= q.tail then
					active[#active+1] = user;
				elseif q then
					queues[user] = nil;
				end
			end
			if not whole and time.now() - started >= BATCH_SECONDS then break; end
		end
		-- A head that failed again, with the store taking other writes
		-- since its first failure, was refused; so is one that fails as
		-- an earlier message of the same queue was refused.
		-- A head that failed twice with nothing else written meanwhile
		-- (its queue may be the only one with work) is told apart once:
		-- tried again at once; if it fails, the store is asked whether it
		-- answers at all (a read of a user nobody writes); if it does, the
		-- head is tried once more, and if the store that answers still
		-- does not take it, it was refused and is given up.  Nothing
		-- behind the head is written first, so the order holds, and a
		-- store that comes back in the middle of this gives up nothing.
		local unexplained, answered = 0, false;
		for _, user in ipairs(failed) do
			local q = queues[user];
			local e = q and q[q.head];
			if e and (e.fails >= 2 and last_success >= e.first_fail
				or told:get(cause_key(user, e.err))) then
				give_up(q, e, e.err);
			elseif e and e.fails == 2 and not probe then
				-- once per head (while the store is away, only heads are
				-- tried): the head again at once, since a failure can be the
				-- store's own reconnection (util.sql retries on a new
				-- connection only once)
				local ok = write(e);
				local answers = not ok and store_answers();
				if answers then ok = write(e); end
				if ok then
					pop(q, e);
					m_writes:add(1);
					wrote, last_success = true, pass_no;
				elseif answers then
					m_failures:add(1);
					give_up(q, e, e.err);
					answered = true;
				else
					m_failures:add(1);
					failures = failures + 1;
					unexplained = unexplained + 1;
				end
			elseif e then
				unexplained = unexplained + 1;
			end
		end
		-- (a store that answers is no longer away, even if it took nothing)
		if (wrote or answered) and failing then
			module:log("info", "Writing to the %s again, after %d failed attempt(s)", what, failures);
			failing, failures, retry, overflowed = false, 0, 1, false;
		elseif not wrote and unexplained > 0 and not failing then
			failing = true;
			module:log("error", "Cannot write to the %s (%s); delivery goes on, writes are retried",
				what, last_err);
		end
		if count == 0 then
			-- nothing waits: a timer still to come has nothing to do
			overflowed, planned = false, nil;
			return true;
		end
		if module.loaded == false or whole then return false; end
		if failing then
			if not probe or not planned then
				schedule(retry);
				retry = math.min(retry * 2, RETRY_MAX);
			end
		elseif #failed > 0 then
			-- a failed head is tried again soon, to tell a refusal
			schedule(math.max(flush_interval, RETRY_SOON));
		else
			-- the rest of a backlog, on the next tick
			schedule(NEXT_BATCH);
		end
		return false;
	end

	-- Write what waits, now (at shutdown): until all is written or the
	-- store takes nothing more.
	function w.flush()
		repeat
			local before = count;
			if pass(false, true) then return true; end
		until count == before;
		return false;
	end

	function w.push(e)
		local v = e.value;
		e.size = (is_logged(v) and #v[1] or stanza_size(v)) + #e.user + ENTRY_OVERHEAD;
		if e.size > queue_bytes then
			m_dropped:add(1);
			module:log("warn", "A message of %s (%d bytes) is larger than minimix_log_queue_bytes: not written to the %s",
				e.room or e.user, e.size, what);
			return;
		end
		while count > 0 and (count >= queue_max or bytes + e.size > queue_bytes) do drop_oldest(); end
		local q = queues[e.user];
		if not q then
			q = { head = 1, tail = 0 };
			queues[e.user] = q;
			active[#active+1] = e.user;
		end
		newest = newest + 1;
		order[newest], e.seq = e, newest;
		q.tail = q.tail + 1;
		q[q.tail] = e;
		count, bytes = count + 1, bytes + e.size;
		if not failing then
			schedule(flush_interval);
		elseif q.head == q.tail then
			-- the store seems away; a queue that has not failed may tell otherwise
			schedule(flush_interval, true);
		end
		-- Prosody 0.12's net.server runs timers only when no connection
		-- has anything to read: under a steady stream of stanzas the pass
		-- (or the retry) waits for seconds, and a crash then loses all
		-- that waited.  A message that finds it overdue runs it, so what
		-- waits stays within one flush interval however busy the server
		-- is; the timer, when it comes at last, finds itself stale.
		if planned and time.now() >= planned then
			planned = nil;
			pass(false, false);
		end
	end

	-- What waits for store user, newest first.
	function w.waiting(user)
		local q = queues[user];
		local i = q and q.tail + 1 or 0;
		return function()
			if not q then return nil; end
			i = i - 1;
			if i >= q.head then return q[i]; end
		end;
	end

	-- What waits, oldest first, handed over (a reload): this writer keeps none.
	function w.save()
		local out = {};
		for i = oldest, newest do
			local e = order[i];
			if e and not e.done then
				out[#out+1] = { user = e.user, room = e.room, key = e.key, value = e.value, when = e.when,
					with = e.with, sid_key = e.sid_key, sid = e.sid, who = e.who };
			end
		end
		queues, active, order, oldest, newest, count, bytes = {}, {}, {}, 1, 0, 0, 0;
		return out;
	end

	-- The first waiting entry of user that match(entry) takes gets the
	-- value make(entry) gives (a tombstone; nil: kept); returns the value
	-- it had.
	function w.replace(user, match, make)
		local q = queues[user];
		if not q then return nil; end
		for i = q.head, q.tail do
			local e = q[i];
			if e and match(e) then
				local old, value = e.value, make(e);
				if value then
					local size = stanza_size(value) + #e.user + ENTRY_OVERHEAD;
					bytes, e.size, e.value = bytes - e.size + size, size, value;
				end
				return old;
			end
		end
		return nil;
	end

	function w.pending() return count, bytes; end
	function w.failing() return failing; end
	return w;
end

-- What makes two copies of a message the same message: the room's
-- stanza-id; for a subject, who set it and to what; otherwise a digest of
-- the sender, the message's id (or, without one, the room's delay stamp)
-- and the body.
local function delay_stamp(stanza, room)
	for delay in stanza:childtags("delay", xmlns_delay) do
		if delay.attr.from == room then return delay.attr.stamp; end
	end
	return nil;
end

-- XEP-0045 §8.1: a message with a <subject/> changes the subject only
-- without a <body/> and without a <thread/>; with either it is a message.
local function is_subject_change(stanza)
	return stanza:get_child("subject") ~= nil and stanza:get_child("body") == nil
		and stanza:get_child("thread") == nil;
end

-- The digest of a message whatever stanza-id it carries: the sender, the
-- message's id (or, without one, the room's delay stamp) and the body.
-- What tells the copies of one message apart in a room that stamps none,
-- where the module stamps its own (minimix_mam.lib.lua).
local function digest_of(stanza, room)
	return "#" .. sha1((stanza.attr.from or "") .. "\0"
		.. (stanza.attr.id or "@" .. (delay_stamp(stanza, room) or "")) .. "\0"
		.. (stanza:get_child_text("body") or ""), true);
end

-- Returns the kind ("subject", "sid" or "digest") and the key, at most
-- 41 bytes for a digest and ID_MAX for a stanza-id.
local function dedupe_key(stanza, room)
	if is_subject_change(stanza) then
		return "subject", sha1((stanza.attr.from or "") .. "\0" .. stanza:get_child_text("subject"), true);
	end
	for sid in stanza:childtags("stanza-id", xmlns_sid) do
		-- only the room's own: anyone can put a stanza-id in a message
		if sid.attr.by == room and sid.attr.id then
			local id = bounded_id(sid.attr.id);
			-- an over-long one is still this message's identity, but no key
			if id ~= sid.attr.id then return "digest", id; end
			return "sid", id;
		end
	end
	return "digest", digest_of(stanza, room);
end

local log_store = enabled and module:open_store("minimix_log", "archive");

-- On mod_storage_sql, a pass's writes in one transaction; on the file
-- store, in one append per room (nil elsewhere).  text(value): a waiting
-- value's XML text (SQL); compact(value): the text of a log item the file
-- store writes as it is.
local function store_batcher(store, store_name, text, compact)
	local ok, sm = pcall(require, "core.storagemanager");
	if not ok or not sm.get_driver then return nil; end
	local ok2, _, driver_name = pcall(sm.get_driver, module.host, store_name);
	local batch, why;
	if ok2 and driver_name == "internal" then
		batch, why = logfile.batcher(store, store_name, driver_name, compact);
	else
		batch, why = logsql.batcher(store, store_name, ok2 and driver_name, text);
	end
	if not batch and ok2 and (driver_name == "sql" or driver_name == "internal") then
		module:log("debug", "Writing to the %s store one message at a time: %s", store_name, why);
	end
	return batch;
end

-- Appending with a key replaces an item with that key: the SQL driver
-- does it with an indexed delete, the file store by rewriting the whole
-- list (tens of ms at a thousand messages).  There the stanza-id stays in
-- the stored message and the store makes up the key.
local keyed, file_store = true, false;
do
	local ok, sm = pcall(require, "core.storagemanager");
	local ok2, _, driver_name = false, nil, nil;
	if ok and sm.get_driver then ok2, _, driver_name = pcall(sm.get_driver, module.host, "minimix_log"); end
	if ok2 and driver_name == "internal" then keyed, file_store = false, true; end
end

-- The store's "username" for a room's log: the room's JID, unless the file
-- store could not make a file name of it; then a digest of it (rooms with
-- ordinary names keep theirs, and what was logged under them).
local store_users = new_cache(1024);
local function store_user(room)
	if not file_store then return room; end
	local user = store_users:get(room);
	if user then return user; end
	-- (worked out once per room: this runs for every message)
	local _, escaped = room:gsub("%W", "");
	user = #room + 2 * escaped <= FILE_NAME_MAX and room or "minimix-" .. sha256(room, true);
	store_users:set(room, user);
	return user;
end

local function truncate_room(user, keep)
	local ok, err = pcall(log_store.delete, log_store, user, { truncate = keep });
	if not ok then module:log("debug", "Could not truncate the log of %s: %s", user, tostring(err)); end
	return ok and err;
end

local log_batch = enabled and store_batcher(log_store, "minimix_log", item_text, compact_text);
-- Whether the log's items are <logged/> text (see decode): on the file
-- store, and on SQL where the batch writes them.  Elsewhere (another
-- driver, SQL one by one: a store with a quota) they are the stanza, as
-- the store's append takes it.
local compact = file_store or log_batch and true or false;

local log_writer = enabled and new_writer("log", log_store, function(user, stage)
	if stage > 1 then return false; end
	local quota = log_store.caps and log_store.caps.quota or max_per_room;
	return truncate_room(user, math.max(1, math.floor(math.min(max_per_room, quota) * TRUNCATE_TO)));
end, log_batch, not file_store and decode or nil);

-- The value logged for stanza: its text (payload, the shim's; nil: made
-- here) and the time it was said (said, a XEP-0082 stamp; nil for a
-- delayed message), as an item of the log (see decode).
local function log_value(stanza, payload, said)
	if compact then
		-- made as st.stanza():text() would, without checking again the
		-- name, the attributes and a text Prosody serialised itself
		return setmetatable({ name = "logged", attr = { xmlns = xmlns_logged, said = said }, tags = {},
			payload or text_of(stanza) }, st.stanza_mt);
	end
	local value = st.clone(stanza);
	value.attr.to = nil;
	if said then value:tag("said", { xmlns = xmlns_said, at = said }):up(); end
	return value;
end

-- The message of a waiting entry, the caller's to change (nil: unreadable).
local function entry_stanza(e)
	local v = decode(e.value);
	if v == e.value then v = st.clone(v); end
	return v;
end

-- The room's stanza-id of a waiting entry's message.
local function entry_sid(e, room)
	if e.sid then return e.sid; end
	local v = decode(e.value);
	return v and room_sid(v, room);
end

-- The accounts' archives honour their quota as mod_mam does: the entries
-- older than archive_expires_after go, else the oldest (to a fraction of
-- the quota), with one warning per account; if neither makes room, the
-- copies are given up (counted, logged once per account).
local mam_store_name = module:get_option_string("archive_store", "archive");
local mam_store = in_mam and module:open_store(mam_store_name, "archive");
local mam_expires = parse_duration(module:get_option_string("archive_expires_after", "1w"));
local mam_full = new_cache(1024);
local mam_writer = in_mam and new_writer("mam", mam_store, function(user, stage)
	if not mam_full:get(user) then
		mam_full:set(user, true);
		module:log("warn", "The archive of %s is at its quota: room messages copied into it make room by removing its oldest entries",
			user);
	end
	if stage == 1 then
		if type(mam_expires) == "number" then
			local ok, deleted = pcall(mam_store.delete, mam_store, user, { ["end"] = time.now() - mam_expires });
			if ok and deleted and deleted ~= 0 then return true; end
		end
		stage = 2;
	end
	local quota = mam_store.caps and mam_store.caps.quota;
	if stage == 2 and quota and mam_store.caps.truncate then
		local ok, deleted = pcall(mam_store.delete, mam_store, user,
			{ truncate = math.max(1, math.floor(quota * TRUNCATE_TO)) });
		return ok and deleted and deleted ~= 0 or false;
	end
	return false;
end, in_mam and store_batcher(mam_store, mam_store_name));
local mam_seen = new_cache(MAM_SEEN);
guard_sql_statements();

-- Per room: the ids of recent messages (and the latest subject) written
-- or found in the store; 'primed' once the store's latest were read.
local rooms = new_cache(ROOMS);

local function room_state(room)
	local r = rooms:get(room);
	if not r then
		r = { ids = new_cache(IDS_PER_ROOM), subject = nil, primed = false,
			-- the ids the module stamped, by the message's digest
			stamped = new_cache(IDS_PER_ROOM) };
		rooms:set(room, r);
	end
	return r;
end

-- After a restart, the history a re-join brings overlaps what was logged:
-- read the room's latest entries once, before the first delayed message.
local function prime(room, r)
	if not log_store then return; end
	local ok, iter = pcall(log_store.find, log_store, store_user(room), { reverse = true, limit = IDS_PER_ROOM });
	if not ok or not iter then
		module:log("debug", "Could not read the log of %s: %s", room, tostring(iter));
		return;
	end
	local keys, subject = {}, nil;
	local read_ok, err = pcall(function()
		for store_key, stored in iter do
			local item = decode(stored);
			local kind, k;
			if item then kind, k = dedupe_key(item, room); end
			if kind == "sid" and not keyed then
				sid_keys:set(room .. "\0" .. k, { key = store_key, who = identity(item) });
			end
			if kind == "sid" then
				-- (the id the module may have stamped on it, found again
				-- for a copy that comes without)
				local d = digest_of(item, room);
				if r.stamped:get(d) == nil then r.stamped:set(d, k); end
			end
			if kind == "subject" then
				subject = subject or k;
			elseif kind then
				keys[#keys+1] = k;
			end
		end
	end);
	if not read_ok then
		module:log("debug", "Could not read the log of %s: %s", room, tostring(err));
		return;
	end
	-- oldest first: the cache keeps the newest
	for i = #keys, 1, -1 do
		if r.ids:get(keys[i]) == nil then r.ids:set(keys[i], true); end
	end
	if r.subject == nil then r.subject = subject; end
	r.primed = true;
end

-- (stanza-ids and digests share the cache: a digest is "#" and 40 hex digits)
local function seen(r, kind, key)
	if kind == "subject" then return r.subject == key; end
	-- (or a copy the module did not stamp of one it stamped: a re-join's
	-- history that came before the room's disco#info answer)
	return r.ids:get(key) ~= nil or kind == "digest" and r.stamped:get(key) ~= nil;
end

local function remember(r, kind, key)
	if kind == "subject" then r.subject = key; else r.ids:set(key, true); end
end

local lib = {};

-- Rooms whose new messages wait while the backfill (minimix_backfill.lib.lua)
-- writes what the room's archive holds of a gap: room -> { entries, keys }.
-- The backfill's messages are older than any of them, and the log is
-- read in the order it was written.
local holds = {};
-- What one room's hold keeps at most: beyond, the hold ends (what it
-- kept is written; the backfill, which would now write older messages
-- after newer ones, stops).
local HOLD_MAX = 5000;

local function release(room)
	local h = holds[room];
	if not h then return; end
	holds[room] = nil;
	for _, e in ipairs(h.entries) do log_writer.push(e); end
end

local function hold_push(room, e, key)
	local h = holds[room];
	h.entries[#h.entries+1], h.keys[key] = e, true;
	if #h.entries >= HOLD_MAX then
		module:log("info", "Stopping the backfill of %s: %d new messages came meanwhile", room, #h.entries);
		release(room);
	end
end

-- A local room hands over one stanza object for all its local accounts,
-- changing only 'to': its key is worked out once.
local last = { stanza = nil, room = nil, from = nil, id = nil, tags = 0, kind = nil, key = nil,
	logged = false };

-- A room message an account received: account (bare JID), room (bare),
-- nick (nil for the room itself), the stanza as the room sent it, and the
-- shim's reading of it: stamp (the room's delay stamp or now) and delayed.
local function message(account, room, nick, stanza, m)
	local kind, key;
	if stanza == last.stanza and room == last.room and stanza.attr.from == last.from
		and stanza.attr.id == last.id and #stanza.tags == last.tags then
		-- another local account's copy: the log has it already
		if last.logged and not mam_writer then return; end
		kind, key = last.kind, last.key;
	else
		kind, key = dedupe_key(stanza, room);
		last.stanza, last.room, last.from, last.id, last.tags = stanza, room, stanza.attr.from,
			stanza.attr.id, #stanza.tags;
		last.kind, last.key, last.logged = kind, key, false;
	end
	if kind == "subject" and not nick and stanza:get_child_text("subject") == "" then
		-- what a room without a subject says on each join: no change
		return;
	end
	local r = room_state(room);
	-- whole seconds: the SQL driver's column is an integer
	local when = math.floor(m.stamp);
	local new = not seen(r, kind, key);
	if new and m.delayed and not r.primed then
		prime(room, r);
		new = not seen(r, kind, key);
	end
	if new then
		remember(r, kind, key);
		if log_writer then
			-- the exact time the room said it (the store's 'when' is
			-- whole seconds on SQL), which membership spans are compared
			-- with; taken off again before a catch-up
			local said = not m.delayed and exact_stamp(m.stamp) or nil;
			local sid_key = not keyed and kind == "sid" and room .. "\0" .. key or nil;
			local e = { user = store_user(room), room = room, value = log_value(stanza, m.payload, said), when = when,
				with = nick or room, key = keyed and kind == "sid" and key or nil, sid_key = sid_key,
				sid = kind == "sid" and key or nil, who = sid_key and identity(stanza) or nil };
			if holds[room] then hold_push(room, e, key); else log_writer.push(e); end
		end
	end
	last.logged = true;
	-- the account's own archive: each message with a body once, live or
	-- new to this host (a re-join's history of what was missed)
	if mam_writer and stanza:get_child("body") and (new or not m.delayed) then
		local username = account:match("^([^@]*)@");
		local seen_key = account .. "\0" .. room .. "\0" .. key;
		if username and not mam_seen:get(seen_key) then
			mam_seen:set(seen_key, true);
			local value = st.clone(stanza);
			value.attr.to = account;
			mam_writer.push({ user = username, room = room, value = value, when = when, with = room,
				sid_key = kind == "sid" and username .. "\0" .. room .. "\0" .. key or nil });
		end
	end
end

-- Delivery never fails because of the log: an error in here is logged
-- (the first ten) and the message goes on to the sessions.
local errors_logged = 0;
function lib.message(...)
	local ok, err = pcall(message, ...);
	if not ok and errors_logged < 10 then
		errors_logged = errors_logged + 1;
		module:log("error", "The room log could not take a message: %s", tostring(err));
	end
end

-- The stanza-id the module stamps on a message of a room that keeps no
-- archive (minimix_mam.lib.lua), the message without any stanza-id by the
-- room: the id its first copy got (another local account's, a remote
-- room's copy to another account, a re-join's history of it), else a new
-- uuid, remembered with the message's digest.
function lib.stamp_id(room, stanza, delayed)
	local r = room_state(room);
	local d = digest_of(stanza, room);
	local id = r.stamped:get(d);
	if id == nil and delayed and not r.primed then
		prime(room, r);
		id = r.stamped:get(d);
	end
	if id == nil then
		id = new_uuid();
		r.stamped:set(d, id);
	end
	return id;
end

-- Write what waits, now (shutdown).
function lib.flush()
	for room in pairs(holds) do release(room); end
	if log_writer then log_writer.flush(); end
	if mam_writer then mam_writer.flush(); end
end

-- Retention: entries older than minimix_log_expires_after go, and each
-- room keeps its latest minimix_log_max_per_room.  The rooms are listed
-- once, then gone through a few per timer tick: on the file store each is
-- a read (and maybe a rewrite) of its whole list.
local cleaning = nil;

local function cleanup_room(user, cut_off)
	if cut_off then
		local deleted, derr = pcall(log_store.delete, log_store, user, { ["end"] = cut_off });
		if not deleted then
			module:log("debug", "Could not expire the log of %s: %s", user, tostring(derr));
		end
	end
	truncate_room(user, max_per_room);
end

local function cleanup_step()
	local c = cleaning;
	if not c then return; end
	local started, done = time.now(), 0;
	while c.next <= #c.list and done < CLEANUP_ROOMS_PER_TICK do
		cleanup_room(c.list[c.next], c.cut_off);
		c.next, done = c.next + 1, done + 1;
		if time.now() - started >= BATCH_SECONDS then break; end
	end
	if c.next > #c.list then
		cleaning = nil;
	elseif module.loaded ~= false then
		module:add_timer(NEXT_BATCH, cleanup_step);
	end
end

-- Starts a round of the job (unless one is still going).
function lib.cleanup()
	if cleaning or not log_store or not log_store.users then return; end
	local list = {};
	local ok, err = pcall(function()
		for user in log_store:users() do list[#list+1] = user; end
	end);
	if not ok then
		module:log("debug", "Could not list the room logs: %s", tostring(err));
		return;
	end
	cleaning = { list = list, next = 1, cut_off = expires_after and time.now() - expires_after };
	cleanup_step();
end

-- Retractions and moderations on the file store ------------------------------

-- There the store's set reads and rewrites a room's whole list (seconds
-- for a few thousand messages, with the server stopped meanwhile), and
-- any occupant may retract their own messages.  So a withdrawal is not
-- written at once: it is kept per store user (a room's log, an account's
-- archive) as its key -> { room, id, at, moderated, reason }, in memory
-- and in a small keyval store (a restart must not hand the body out
-- again), applied to every read of the log (find below), and written by
-- a background pass in one rewrite per store user, at most once every
-- minimix_withdraw_interval seconds, one store user per timer tick.
-- Elsewhere (SQL: an indexed update) the store's set does it at once.
local datamanager = require "util.datamanager";
local withdraw_interval = math.min(86400, math.max(1, positive_option("minimix_withdraw_interval", 60)));
-- Whether a store's set costs a rewrite of the whole list.
local function rewrites_all(store_name)
	local ok, sm = pcall(require, "core.storagemanager");
	if not ok or not sm.get_driver then return false; end
	local ok2, _, driver_name = pcall(sm.get_driver, module.host, store_name);
	return ok2 and driver_name == "internal";
end
local mam_store_name = module:get_option_string("archive_store", "archive");
local defer_log = log_store and file_store;
local defer_mam = mam_store and rewrites_all(mam_store_name);
-- Store users with withdrawals waiting, how many each at most, and how
-- many in all: a store user at its bound, or that takes one beyond the
-- total, is rewritten at the next tick; a withdrawal that finds all the
-- store users taken is written at once, as elsewhere.
local DEFERRED_USERS, DEFERRED_PER_USER, DEFERRED_MAX = 1024, 256, 16384;
local metric_rewrites = module:metric("counter", "log_withdraw_rewrites", "",
	"Rewrites of a room log or an account's archive on the file store that wrote its withdrawals", { "store" });

-- kind ("log", "mam") -> store user -> { entries = key -> withdrawal, n, since }
local deferred = { log = {}, mam = {} };
local deferred_users, deferred_entries = 0, 0;
local deferred_store = (defer_log or defer_mam) and module:open_store("minimix_withdrawn");
-- When the pass runs next (nil: not set), and which of its timers is
-- the current one (a withdrawal due sooner sets another).
local pass_due, pass_gen = nil, 0;

local function user_key(kind, user) return kind .. "\0" .. user; end

local function persist_deferred(kind, user)
	local d = deferred[kind][user];
	local data = nil;
	if d and d.n > 0 then
		data = { kind = kind, user = user, entries = {} };
		for key, e in pairs(d.entries) do
			data.entries[key] = { room = e.room, id = e.id, at = e.at, moderated = e.moderated, reason = e.reason };
		end
	end
	-- the keyval store's user names a file: a digest of kind and user
	local ok, done, err = pcall(deferred_store.set, deferred_store, sha1(user_key(kind, user), true), data);
	if not ok or not done then
		module:log("warn", "Could not keep the withdrawals waiting for %s: %s", user, oneline(ok and err or done));
	end
end

-- The original item of a stored entry made a tombstone, if e withdraws it.
local function overlaid(e, item)
	if not e or room_sid(item, e.room) ~= e.id or item:get_child("retracted", xmlns_retract) then
		return item;
	end
	return tombstone(item, e.room, e, e.at);
end

-- The room log's find, with the withdrawals waiting applied: what any
-- reader of the log that serves a client must use.
local function log_find(room, query)
	local user = store_user(room);
	local iter, err = log_store:find(user, query);
	if not iter then return iter, err; end
	return function()
		local key, item, when, with;
		repeat
			key, item, when, with = iter();
			if key == nil then return nil; end
			item = decode(item);
			-- (an item that is not XML is passed over)
		until item
		local d = deferred.log[user];
		if d then item = overlaid(d.entries[key], item); end
		return key, item, when, with;
	end;
end

-- Writes kind's withdrawals waiting for user in one rewrite of its list.
local function rewrite(kind, user)
	local d = deferred[kind][user];
	if not d then return; end
	local store_name = kind == "log" and "minimix_log" or mam_store_name;
	local items, err = datamanager.list_load(user, module.host, store_name);
	if not items and err then error(err); end
	local n = 0;
	for i, old in ipairs(items or {}) do
		local e = old.key and d.entries[old.key];
		if e then
			local ok, original = pcall(st.deserialize, old);
			if ok and original then original = decode(original); end
			local tomb = ok and original and overlaid(e, original);
			if tomb and tomb ~= original then
				local item = st.preserialize(tomb);
				item.key, item.when, item.with = old.key, old.when, old.with;
				item.attr.stamp = old.attr and old.attr.stamp;
				items[i], n = item, n + 1;
			end
		end
	end
	if n > 0 then
		local ok, serr = datamanager.list_store(user, module.host, store_name, items);
		if not ok then error(serr or "the store did not rewrite it"); end
	end
	deferred[kind][user], deferred_users, deferred_entries = nil, deferred_users - 1, deferred_entries - d.n;
	persist_deferred(kind, user);
	metric_rewrites:with_labels(kind):add(1);
	module:log("debug", "Rewrote the %s of %s with %d withdrawals", kind == "log" and "room log" or "archive", user, n);
end

-- One store user whose withdrawals are due per tick; then wait for the next.
local function pass()
	local now, next_due = time.now(), nil;
	for kind, users in pairs(deferred) do
		for user, d in pairs(users) do
			local due = d.full and now or d.since + withdraw_interval;
			if due <= now and not d.failed_at or (d.failed_at and now - d.failed_at >= RETRY_MAX) then
				local ok, err = pcall(rewrite, kind, user);
				if not ok then
					d.failed_at = now;
					module:log("warn", "Could not write the withdrawals of %s (tried again): %s", user, oneline(err));
				end
				return NEXT_BATCH;
			end
			if d.failed_at then due = d.failed_at + RETRY_MAX; end
			if not next_due or due < next_due then next_due = due; end
		end
	end
	if not next_due or module.loaded == false then return nil; end
	return math.max(NEXT_BATCH, next_due - now);
end

local function schedule(delay)
	local due = time.now() + delay;
	if pass_due and pass_due <= due then return; end
	pass_gen, pass_due = pass_gen + 1, due;
	local gen = pass_gen;
	module:add_timer(delay, function()
		if gen ~= pass_gen then return nil; end
		local again = pass();
		pass_due = again and time.now() + again or nil;
		return again;
	end);
end

-- Keeps withdrawal w (said at now) of the entry key of kind's store user
-- for the pass.  false when no more may wait (the caller writes it now).
local function defer(kind, user, key, room, w, now)
	local d = deferred[kind][user];
	if not d then
		if deferred_users >= DEFERRED_USERS then return false; end
		d = { entries = {}, n = 0, since = now };
		deferred[kind][user], deferred_users = d, deferred_users + 1;
	end
	if not d.entries[key] then
		d.entries[key], d.n = { room = room, id = w.id, at = now, moderated = w.moderated, reason = w.reason }, d.n + 1;
		deferred_entries = deferred_entries + 1;
	end
	if d.n >= DEFERRED_PER_USER or deferred_entries >= DEFERRED_MAX then d.full = true; end
	persist_deferred(kind, user);
	schedule(d.full and NEXT_BATCH or math.max(NEXT_BATCH, d.since + withdraw_interval - now));
	return true;
end

local function deferred_entry(kind, user, key)
	local d = deferred[kind][user];
	return d and d.entries[key];
end

-- The account's own archive is read by mod_mam, which sends each result
-- through the session: a session that queries it while withdrawals wait
-- for its archive gets a filter that puts the tombstone in the forwarded
-- message's place.
local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_forward = "urn:xmpp:forward:0";

local function mam_overlay(stanza, session)
	if deferred_users == 0 or type(stanza) ~= "table" or stanza.name ~= "message" then return stanza; end
	local d = session.username and deferred.mam[session.username];
	local result = d and stanza:get_child("result", xmlns_mam);
	local e = result and result.attr.id and d.entries[result.attr.id];
	local fwd = e and result:get_child("forwarded", xmlns_forward);
	if not fwd then return stanza; end
	fwd:maptags(function(tag)
		if tag.name ~= "message" then return tag; end
		local tomb = overlaid(e, tag);
		if tomb ~= tag then tomb.attr.xmlns = tag.attr.xmlns; end
		return tomb;
	end);
	return stanza;
end

if defer_mam then
	local filters = require "util.filters";
	-- before mod_mam (0) answers it
	module:hook("iq-set/self/" .. xmlns_mam .. ":query", function(event)
		local origin = event.origin;
		if origin.type == "c2s" and origin.username and deferred.mam[origin.username]
			and origin.minimix_mam_overlay ~= mam_overlay then
			-- (an earlier instance's, after a reload, goes)
			if origin.minimix_mam_overlay then
				filters.remove_filter(origin, "stanzas/out", origin.minimix_mam_overlay);
			end
			origin.minimix_mam_overlay = mam_overlay;
			filters.add_filter(origin, "stanzas/out", mam_overlay);
		end
	end, 1);
end

-- After a restart: what waited is read back, and written withdraw_interval
-- from now (the catch-up applies it meanwhile).
if deferred_store then
	local ok, err = pcall(function()
		local now = time.now();
		for name in deferred_store:users() do
			local data = deferred_store:get(name);
			if type(data) == "table" and deferred[data.kind] and type(data.user) == "string"
				and type(data.entries) == "table" and deferred_users < DEFERRED_USERS then
				local d = { entries = {}, n = 0, since = now };
				for key, e in pairs(data.entries) do
					if type(e) == "table" and type(e.room) == "string" and type(e.id) == "string" and d.n < DEFERRED_PER_USER then
						d.entries[key] = { room = e.room, id = e.id, at = tonumber(e.at) or now,
							moderated = e.moderated, reason = e.reason };
						d.n = d.n + 1;
					end
				end
				if d.n > 0 and not deferred[data.kind][data.user] then
					deferred[data.kind][data.user], deferred_users = d, deferred_users + 1;
					deferred_entries = deferred_entries + d.n;
				end
			end
		end
		if deferred_users > 0 then schedule(withdraw_interval); end
	end);
	if not ok then module:log("warn", "Could not read the withdrawals waiting: %s", oneline(err)); end
end

-- The time a logged message was said: its delay from the room, to the
-- fraction of a second, else the store's 'when'.
-- The second result says how exact it is: 0 to the fraction of a second
-- (the log's own mark, a stamp with a fraction), 1 a whole second (the
-- room's stamps on Prosody 0.12, the store's 'when').
local function said_at(item, room, when)
	local said = item:get_child("said", xmlns_said);
	local t = parse_stamp(said and said.attr.at);
	if t then return t, 0; end
	local stamp = delay_stamp(item, room);
	t = parse_stamp(stamp);
	if t then return t, stamp:find("%.%d") and 0 or 1; end
	return when, 1;
end

local function unmark(item)
	item:maptags(function(tag)
		if tag.name == "said" and tag.attr.xmlns == xmlns_said then return nil; end
		return tag;
	end);
	return item;
end

-- A time known to the second only counts from the start of its second:
-- the room's history on a re-join after a crash (what the log lost) may
-- be stamped in the second the account came in.
local function in_spans(t, slack, spans)
	for i = #spans, 1, -1 do
		local span = spans[i];
		if t + slack > span[1] and t <= (span[2] or math.huge) then return true; end
		if t == span[1] then return true; end
	end
	return false;
end

-- The catch-up a later session gets from the log (the core's REPLAY_LOG
-- action a: spans, maxstanzas, maxchars, seconds, since, now): the room's
-- messages said within the spans, newest first until a limit, written or
-- still waiting to be.  Returns them oldest first, as { stanza, time }
-- pairs; the stanzas are the caller's to change.
local PAGE_MAX = 1000;
local function replay(room, a)
	local spans, out = a.spans or {}, {};
	local want = a.maxstanzas or 0;
	if #spans == 0 or want <= 0 or not log_store then return out; end
	local lo, hi = spans[1][1], spans[#spans][2];
	local since = a.since;
	if a.seconds and a.now and (not since or a.now - a.seconds > since) then since = a.now - a.seconds; end
	local chars, full = 0, false;
	local function take(item, t, slack)
		if full or is_subject_change(item) or (since and t < since) or (hi and t > hi)
			or not in_spans(t, slack, spans) then
			return;
		end
		unmark(item);
		local size = #tostring(item);
		if a.maxchars and chars + size > a.maxchars then full = true; return; end
		chars = chars + size;
		out[#out+1] = { item, t };
		if #out >= want then full = true; end
	end
	-- what a backfill holds is the newest, then what waits for the writer
	local h = holds[room];
	for i = h and #h.entries or 0, 1, -1 do
		local e = h.entries[i];
		local v = entry_stanza(e);
		if v then take(v, said_at(v, room, e.when)); end
		if full then break; end
	end
	if log_writer and not full then
		for e in log_writer.waiting(store_user(room)) do
			local v = entry_stanza(e);
			if v then take(v, said_at(v, room, e.when)); end
			if full then break; end
		end
	end
	local before;
	while not full do
		local page = math.min(PAGE_MAX, want - #out + 16);
		local iter, err = log_find(room, { start = math.floor(math.max(lo, since or lo)) - 1,
			["end"] = hi and math.ceil(hi),
			reverse = true, limit = page, before = before });
		if not iter then error(err or "cannot read the room log"); end
		local got = 0;
		for key, item, when in iter do
			got, before = got + 1, key;
			take(item, said_at(item, room, when));
			if full then break; end
		end
		if got < page or before == nil then break; end
	end
	-- oldest first, in the store's order: the order the messages came.
	-- Not by time: a room's own stamps (its history on a re-join, which
	-- fills what a crash lost) are whole seconds on Prosody 0.12.
	local n = #out;
	for i = 1, n // 2 do out[i], out[n + 1 - i] = out[n + 1 - i], out[i]; end
	return out;
end

-- Never raises: a store that cannot be read gives no catch-up (logged).
function lib.replay(room, a)
	local ok, ret = pcall(replay, room, a);
	if not ok then
		module:log("warn", "Could not read the log of %s for a catch-up: %s", room, tostring(ret));
		return {};
	end
	return ret;
end
-- Rooms whose log a moderation read through lately -> when.
local READ_THROUGH_EVERY = 10;
local read_through = new_cache(256);

-- The room's messages withdrawn lately, (room, stanza-id) -> the
-- tombstone: the local accounts' copies of one retraction find it done.
local withdrawn = new_cache(1024);
-- How many of an account's newest archive entries with a room are looked
-- through for a copy to withdraw (older copies keep their body).
local COPY_SCAN = 1000;

-- The stored item with the room's stanza-id id, among what find(query)
-- gives: key, item.
-- The stored item with key, if it is the room's message id: key, item.
local function by_key(store, user, room, id, key)
	if not key then return nil; end
	local found, err = store:get(user, key);
	if found then found = decode(found); end
	if found then
		if room_sid(found, room) == id then return key, found; end
		return nil;
	end
	if err and err ~= "item-not-found" then error(err); end
	return nil;
end

local function find_by_sid(store, user, room, id, query)
	local iter, err = store:find(user, query);
	if not iter then error(err or "cannot read the store"); end
	for key, stored in iter do
		local item = decode(stored);
		if item and room_sid(item, room) == id then return key, item; end
	end
	return nil;
end

-- What withdraw_logged returns for a withdrawal left to the pass.
local DEFERRED = {};

-- The logged message: waiting for the writer (tombstoned there), else in
-- the store (by its key on SQL, else read through, newest first) and set
-- in place, same key, same time, or on the file store left to the pass.
-- Returns false when the sender may not withdraw it, else the tombstone
-- written (DEFERRED: left to the pass; nil: none found).
local function withdraw_logged(room, w, stanza, now)
	local user = store_user(room);
	local allowed, tomb = true, nil;
	local function match(e) return entry_sid(e, room) == w.id; end
	local h = holds[room];
	for _, e in ipairs(h and h.entries or {}) do
		local v = match(e) and decode(e.value);
		if v then
			if not may_withdraw(v, w, stanza) then return false; end
			e.value = tombstone(v, room, w, now);
			return e.value;
		end
	end
	local queued = log_writer.replace(user, match, function(e)
		local v = decode(e.value);
		allowed = v ~= nil and may_withdraw(v, w, stanza);
		if allowed then tomb = tombstone(v, room, w, now); end
		return tomb;
	end);
	if queued then return allowed and tomb; end
	local key, item;
	if keyed and bounded_id(w.id) == w.id then
		-- SQL: the stanza-id is the key, an indexed read
		key, item = by_key(log_store, user, room, w.id, w.id);
	else
		local known = sid_keys:get(room .. "\0" .. w.id);
		if known then
			-- judged before the store is read
			if not w.moderated and not same_identity(known.who, identity(stanza)) then return false; end
			if defer_log and (deferred_entry("log", user, known.key)
				or defer("log", user, known.key, room, w, now)) then
				return DEFERRED;
			end
			key, item = by_key(log_store, user, room, w.id, known.key);
		elseif w.moderated then
			-- the room's own moderation of an older message: read through,
			-- at most once per room per READ_THROUGH_EVERY seconds (a room
			-- could send any number of them)
			local last = read_through:get(room);
			if not last or now - last >= READ_THROUGH_EVERY then
				read_through:set(room, now);
				key, item = find_by_sid(log_store, user, room, w.id, { reverse = true });
			end
		end
		-- else a retraction of a message written before this server
		-- started (and not read back since), or with an id too long to
		-- be a key: not found
	end
	if not item then return nil; end
	if defer_log and deferred_entry("log", user, key) then return DEFERRED; end
	if not may_withdraw(item, w, stanza) then return false; end
	if defer_log and defer("log", user, key, room, w, now) then return DEFERRED; end
	tomb = tombstone(item, room, w, now);
	local ok, err = log_store:set(user, key, tomb);
	if not ok then error(err or "the store did not replace it"); end
	return tomb;
end

-- The account's archive copy, waiting or stored.  verdict: the log's
-- (nil: it had no original to judge by, the copy is judged).
local function withdraw_copy(account, room, w, stanza, verdict, now)
	local username = account:match("^([^@]*)@");
	if not username then return; end
	local function allowed(v)
		if verdict ~= nil then return verdict; end
		return may_withdraw(v, w, stanza);
	end
	local function match(e) return room_sid(e.value, room) == w.id; end
	local queued = mam_writer.replace(username, match, function(e)
		return allowed(e.value) and tombstone(e.value, room, w, now) or nil;
	end);
	if queued then return; end
	local known = sid_keys:get(username .. "\0" .. room .. "\0" .. w.id);
	if defer_mam and known then
		-- judged by the sender recorded when it was copied, not read
		if deferred_entry("mam", username, known.key) then return; end
		local ok;
		if verdict ~= nil then ok = verdict; else ok = w.moderated ~= nil or same_identity(known.who, identity(stanza)); end
		if not ok or defer("mam", username, known.key, room, w, now) then return; end
	end
	local key, item = by_key(mam_store, username, room, w.id, known and known.key);
	if not item and (verdict or (verdict == nil and not log_store and w.moderated)) then
		-- read through only for what the log withdrew (or without a log);
		-- on the file store, where that reads the account's whole list,
		-- at most once per account every READ_THROUGH_EVERY seconds
		local last = defer_mam and read_through:get("\0" .. username);
		if not last or now - last >= READ_THROUGH_EVERY then
			if defer_mam then read_through:set("\0" .. username, now); end
			key, item = find_by_sid(mam_store, username, room, w.id,
				{ with = room, reverse = true, limit = COPY_SCAN });
		end
	end
	if item and allowed(item) and not item:get_child("retracted", xmlns_retract) then
		if defer_mam and (deferred_entry("mam", username, key) or defer("mam", username, key, room, w, now)) then
			return;
		end
		local ok, err = mam_store:set(username, key, tombstone(item, room, w, now));
		if not ok then error(err or "the store did not replace it"); end
	end
end

-- A retraction or moderation w (lib.withdrawal) the account received in
-- stanza: the log's original and the account's copy become tombstones.
-- kept: the catch-up ring's copy (a stanza) or nil.  Returns the
-- tombstone the ring keeps instead (serialized, nil: none).
-- Withdrawals the store could not take (an outage): tried again, from
-- 1 s doubling up to RETRY_MAX, WITHDRAW_TRIES times; at most
-- WITHDRAW_WAITING wait (beyond, the newest is given up, logged).
local WITHDRAW_TRIES, WITHDRAW_WAITING = 12, 256;
local withdraw_waiting = 0;

-- The log's part, then the account's copy: each true when done (found
-- or not), false when the store failed (it is tried again).  Returns
-- the log's verdict (see withdraw_logged) too.
local function withdraw_parts(account, room, w, stanza, now, todo)
	local wk = room .. "\0" .. w.id;
	local done = withdrawn:get(wk);
	if todo.log and done == nil and log_store then
		local ok, tomb = pcall(withdraw_logged, room, w, stanza, now);
		if not ok then
			todo.err = tomb;
		else
			todo.log = false;
			if tomb == DEFERRED then
				-- allowed, and the catch-up's reads apply it
				done = true;
				withdrawn:set(wk, done);
			elseif tomb ~= nil then
				done = tomb and tostring(unmark(st.clone(tomb))) or false;
				-- only what was withdrawn: someone else's retraction must
				-- not stand in the way of the sender's
				if done then withdrawn:set(wk, done); end
			end
		end
	else
		todo.log = false;
	end
	if todo.copy and mam_writer and account and not todo.log then
		local verdict = nil;
		if done ~= nil then verdict = done ~= false; end
		local ok, err = pcall(withdraw_copy, account, room, w, stanza, verdict, now);
		if ok then todo.copy = false; else todo.err = err; end
	end
	return done;
end

local function withdraw_later(account, room, w, stanza, now, todo)
	if withdraw_waiting >= WITHDRAW_WAITING then
		module:log("warn", "Giving up withdrawing message %s of %s from the log: %s", w.id, room, oneline(todo.err));
		return;
	end
	withdraw_waiting = withdraw_waiting + 1;
	local tries, delay = 0, 1;
	module:add_timer(delay, function()
		tries = tries + 1;
		todo.err = nil;
		withdraw_parts(account, room, w, stanza, now, todo);
		if not todo.log and not todo.copy then
			withdraw_waiting = withdraw_waiting - 1;
			return nil;
		end
		if tries >= WITHDRAW_TRIES or module.loaded == false then
			withdraw_waiting = withdraw_waiting - 1;
			module:log("warn", "Giving up withdrawing message %s of %s from the log: %s", w.id, room, oneline(todo.err));
			return nil;
		end
		delay = math.min(delay * 2, RETRY_MAX);
		return delay;
	end);
end

-- A retraction or moderation w (lib.withdrawal) the account received in
-- stanza: the log's original and the account's copy become tombstones.
-- kept: the catch-up ring's copy (a stanza) or nil.  Returns the
-- tombstone the ring keeps instead (serialized, nil: none).
local function withdraw(account, room, w, stanza, kept)
	local now = time.now();
	local todo = { log = true, copy = true };
	local done = withdraw_parts(account, room, w, stanza, now, todo);
	if todo.log or todo.copy then
		module:log("warn", "Could not withdraw message %s of %s from the log now (tried again): %s", w.id, room,
			oneline(todo.err));
		withdraw_later(account, room, w, stanza, now, todo);
	end
	if type(done) == "string" then return done; end
	if done == false then return nil; end
	if kept and may_withdraw(kept, w, stanza) then
		return tostring(tombstone(kept, room, w, now));
	end
	return nil;
end

function lib.withdraw(account, room, w, stanza, kept)
	local ok, ret = pcall(withdraw, account, room, w, stanza, kept);
	if not ok then
		module:log("warn", "Could not withdraw message %s of %s from the log: %s", w.id, room, oneline(ret));
		return nil;
	end
	return ret;
end
lib.withdrawal = withdrawal;

-- The backfill's side (minimix_backfill.lib.lua) ------------------------------

-- Hold room's new messages (until lib.release) and say after what the
-- backfill starts: { id = the room's stanza-id of the newest message the
-- log holds, when = its time } (either may be nil: the log has none).
-- nil when the log is off or the room is held already.
local function hold(room)
	if not log_writer or holds[room] then return nil; end
	local user = store_user(room);
	local anchor = {};
	for e in log_writer.waiting(user) do
		local v = decode(e.value);
		if v then
			anchor.when = anchor.when or said_at(v, room, e.when);
			local id = room_sid(v, room);
			if id then
				anchor.id, anchor.when = id, said_at(v, room, e.when);
				break;
			end
		end
	end
	if not anchor.id then
		local iter = log_store:find(user, { reverse = true, limit = IDS_PER_ROOM });
		for _, stored, when in iter or function() end do
			local item = decode(stored) or st.message();
			if not anchor.when then anchor.when = said_at(item, room, when); end
			local id = room_sid(item, room);
			if id then
				anchor.id = id;
				anchor.when = anchor.when or said_at(item, room, when);
				break;
			end
		end
	end
	holds[room] = { entries = {}, keys = {} };
	return anchor;
end

function lib.hold(room)
	local ok, ret = pcall(hold, room);
	if not ok then
		module:log("warn", "Could not read the log of %s for a backfill: %s", room, oneline(ret));
		return nil;
	end
	return ret;
end

function lib.holding(room) return holds[room] ~= nil; end

-- A message of the room's archive (the room's stanza-id and delay on it,
-- nick nil for the room's own), said at stamp: written to the log unless
-- it has it (or holds it).  Returns whether it was new.
function lib.backfilled(room, nick, stanza, stamp)
	local h = holds[room];
	if not h or not log_writer then return false; end
	local kind, key = dedupe_key(stanza, room);
	if kind == "subject" then return false; end
	local r = room_state(room);
	if not r.primed then prime(room, r); end
	if h.keys[key] or seen(r, kind, key) then return false; end
	remember(r, kind, key);
	local sid_key = not keyed and kind == "sid" and room .. "\0" .. key or nil;
	log_writer.push({ user = store_user(room), room = room, value = log_value(stanza, nil, nil),
		when = math.floor(stamp), with = nick or room, key = keyed and kind == "sid" and key or nil,
		sid_key = sid_key, sid = kind == "sid" and key or nil, who = sid_key and identity(stanza) or nil });
	return true;
end

-- The backfill is over: what the hold kept is written, after it.
lib.release = release;

lib.serves = log_store and true or false;
lib.parse_stamp = parse_stamp;
lib.bounded_id = bounded_id;

-- For the specs and the admin shell: messages (and bytes) waiting.
function lib.pending()
	local n, b = 0, 0;
	if log_writer then n, b = log_writer.pending(); end
	local mn, mb = 0, 0;
	if mam_writer then mn, mb = mam_writer.pending(); end
	return n, mn, b, mb;
end

-- A reload hands what waits to the new instance (mod_minimix.lua's
-- module.save/module.restore): nothing is lost but the new instance's
-- bounds apply, and a store no longer configured drops its part.
function lib.save()
	for room in pairs(holds) do release(room); end
	return { log = log_writer and log_writer.save(), mam = mam_writer and mam_writer.save() };
end

function lib.restore(data)
	if type(data) ~= "table" then return; end
	for _, part in ipairs({ { data.log, log_writer }, { data.mam, mam_writer } }) do
		local entries, writer = part[1], part[2];
		if type(entries) == "table" and writer then
			for _, e in ipairs(entries) do writer.push(e); end
		end
	end
end
lib.keyed = keyed;
lib.parse_duration = parse_duration;

-- For the MAM answers of minimix_mam.lib.lua: the room's log through the
-- store's find (query as for an archive store: start, end, with, after,
-- before, limit, reverse).  What waits for the writer is written first
-- (unless the store is failing), so that it has its key.  The iterator
-- gives key, item (as the room sent it, without the log's mark), the time
-- it was said and its exactness (as said_at), and with; the
-- withdrawals that wait for the file store's pass are applied.  nil, err
-- when the store cannot be read.
function lib.find(room, query)
	if not log_store then return nil, "no room log"; end
	local user = store_user(room);
	if log_writer and log_writer.waiting(user)() and not log_writer.failing() then
		log_writer.flush();
	end
	local ok, iter, err = pcall(log_find, room, query);
	if not ok then return nil, oneline(iter); end
	if not iter then return nil, err; end
	return function()
		local key, item, when, with = iter();
		if key == nil then return nil; end
		local t, slack = said_at(item, room, when);
		return key, unmark(item), t, slack, with;
	end;
end
lib.in_spans = in_spans;

if log_store then
	module:add_timer(cleanup_interval, function()
		lib.cleanup();
		return cleanup_interval;
	end);
end
-- At shutdown, after the sessions and rooms were told (server-stopping),
-- while the storage still works.
module:hook_global("server-cleanup", lib.flush);

return lib;
