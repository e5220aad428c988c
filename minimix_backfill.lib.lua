-- mod_minimix's backfill: the room log filled from the room's own archive (XEP-0313) after a gap.
--
-- A gap: the account was out of a room by no wish of its own, its span
-- kept open (this server restarted or crashed, the server-to-server link
-- was lost, a 332 or 333 removal, a self-ping answered not-acceptable),
-- and it joined again.  The room's history on a re-join is as short as the room keeps it; its
-- archive, which the account may read, has the whole gap.  A backfill
-- runs once per room on this host (as the first local account that is
-- back), asks the room's disco#info whether it archives (urn:xmpp:mam:2,
-- minimix_roominfo.lib.lua: known from the join, as the room said it),
-- then pages through its archive from the newest message the log holds
-- (RSM 'after' its stanza-id, else 'start' its time).  What comes back is
-- written into the log as the room said it, each message once, with the
-- room's times; nothing of it is sent to joined sessions: later sessions
-- get it in their catch-up.  Meanwhile the room's new messages are held
-- by the log (minimix_log.lib.lua) and written after the backfill, so the
-- log stays in the room's order.
--
-- Bounded: messages (minimix_backfill_max_messages), pages
-- (minimix_backfill_max_pages), results per page (PAGE_SIZE), time
-- (minimix_backfill_timeout), backfills at once (MAX_RUNNING).  Only
-- results from the room's own JID for the query asked, forwarding a
-- groupchat message from the room or one of its occupants, are written.

local st = require "util.stanza";
local new_id = require "util.id".medium;
local new_cache = require "util.cache".new;
local datetime = require "util.datetime";
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local now = require "util.time".now;
local xml_parse = require "util.xml".parse;

local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_rsm = "http://jabber.org/protocol/rsm";
local xmlns_forward = "urn:xmpp:forward:0";
local xmlns_delay = "urn:xmpp:delay";
local xmlns_sid = "urn:xmpp:sid:0";
local xmlns_data = "jabber:x:data";

-- Results asked for per page; more in one page are dropped.
local PAGE_SIZE = 100;
-- Backfills running at once (one per room); a re-join beyond them gets
-- none (its room keeps today's history).
local MAX_RUNNING = 16;
-- A re-join this soon after a backfill of the same room ended (another
-- local account coming back) starts none: the room is done.
local QUIET = 60;
-- The next page waits while the log's writer has more than this waiting
-- (its queue is bounded; a backfill must not push out what it holds).
local WRITER_BACKLOG, BACKLOG_WAIT = 1000, 0.1;
-- Joins sent to rooms, (account, room) -> when sent: a join answered
-- while the membership's span has been open since before it ends a gap.
local JOINS_WAITING = 4096;

local function clamped_option(name, default, min, max)
	local v = module:get_option_number(name, default);
	if v ~= v or v < min or v > max then
		module:log("warn", "%s must be between %d and %d; using %d", name, min, max, default);
		return default;
	end
	return math.floor(v);
end

local enabled = module:get_option_boolean("minimix_backfill", true);
local max_messages = clamped_option("minimix_backfill_max_messages", 10000, 1, 1000000);
local max_pages = clamped_option("minimix_backfill_max_pages", 200, 1, 100000);
local timeout = clamped_option("minimix_backfill_timeout", 300, 1, 86400);

local metric_backfilled = module:metric("counter", "backfilled", "",
	"Room messages written to the room log from the rooms' archives after a gap", {}):with_labels();

local backfill = {};
local mm, roomlog;

local running, nrunning = {}, 0; -- room -> run
local by_query = {}; -- queryid -> run (its page being read)
local ended = new_cache(1024); -- room -> when its last backfill ended
local joins = new_cache(JOINS_WAITING);

local function finish(run, why)
	if run.done then return; end
	run.done = true;
	if run.queryid then by_query[run.queryid] = nil; end
	running[run.room], nrunning = nil, nrunning - 1;
	ended:set(run.room, now());
	roomlog.release(run.room);
	if run.written > 0 or run.pages > 0 then
		module:log("info", "Backfilled %d message(s) of %s from its archive (%d page(s), %d result(s)): %s",
			run.written, run.room, run.pages, run.results, why);
	else
		module:log("debug", "No backfill of %s: %s", run.room, why);
	end
end

-- The first child element called name, whatever its namespace.
local function child_named(parent, name)
	for _, tag in ipairs(parent.tags) do
		if tag.name == name then return tag; end
	end
	return nil;
end

-- A forwarded stanza carries its namespace (jabber:client) on itself and
-- on the children that inherit it; as a stanza of the stream it has none.
local function as_stanza(tag, ns)
	if tag.attr.xmlns == ns then tag.attr.xmlns = nil; end
	for _, child in ipairs(tag.tags) do
		if child.attr.xmlns == ns then as_stanza(child, ns); end
	end
	return tag;
end

-- One result of the page: the forwarded message, as the room said it,
-- written to the log (or, a retraction or moderation, applied to it).
local function take_result(run, result)
	local room = run.room;
	local id = result.attr.id;
	local fwd = result:get_child("forwarded", xmlns_forward);
	local msg = fwd and child_named(fwd, "message");
	if not id or not msg or msg.attr.type ~= "groupchat" or type(msg.attr.from) ~= "string" then return; end
	local node, host, nick = jid_split(jid_prep(msg.attr.from));
	if not node or node .. "@" .. host ~= room then return; end -- not the room's: never written
	local delay = fwd:get_child("delay", xmlns_delay);
	local stamp = delay and roomlog.parse_stamp(delay.attr.stamp);
	if not stamp then return; end
	-- a clock a little ahead is the room's; far in the future, a lie
	if stamp > now() + 300 then return; end
	stamp = math.min(stamp, now());
	local value = as_stanza(st.clone(msg), msg.attr.xmlns);
	value.attr.to = nil;
	-- the room's stanza-id is the archive's id; its delay, the archive's stamp
	value:maptags(function(tag)
		local ns = tag.attr.xmlns;
		if (tag.name == "stanza-id" and ns == xmlns_sid) or (tag.name == "delay" and ns == xmlns_delay) then
			return nil;
		end
		return tag;
	end);
	value:tag("stanza-id", { xmlns = xmlns_sid, by = room, id = id }):up();
	-- the archive's own text: to the fraction of a second when it says so
	value:tag("delay", { xmlns = xmlns_delay, from = room, stamp = delay.attr.stamp }):up();
	local w = roomlog.withdrawal(value, nick);
	if w then
		local kept = mm.core:kept(room, w.id);
		local tomb = roomlog.withdraw(nil, room, w, value, kept and xml_parse(kept));
		if tomb then mm.core:withdraw(room, w.id, tomb); end
	end
	if value:get_child("body") and roomlog.backfilled(room, nick, value, stamp) then
		run.written = run.written + 1;
		metric_backfilled:add(1);
	end
end

local next_page;

local function page_done(run, qid, after, event)
	if by_query[qid] == run then by_query[qid] = nil; end
	if run.done then return; end
	local page = run.page;
	run.page = nil;
	for _, result in ipairs(page) do
		local ok, err = pcall(take_result, run, result);
		if not ok then module:log("warn", "Could not backfill a message of %s: %s", run.room, tostring(err)); end
	end
	local fin = event.stanza:get_child("fin", xmlns_mam);
	local set = fin and fin:get_child("set", xmlns_rsm);
	local last = set and set:get_child_text("last");
	if not fin or fin.attr.complete == "true" or #page == 0 then
		return finish(run, "complete");
	end
	if not last or last == after or run.seen_last[last] then
		return finish(run, "the archive's pages do not advance");
	end
	run.seen_last[last] = true;
	run.after = last;
	return next_page(run);
end

function next_page(run)
	if run.done then return; end
	if run.pages >= max_pages then return finish(run, "minimix_backfill_max_pages reached"); end
	if run.results >= max_messages then return finish(run, "minimix_backfill_max_messages reached"); end
	if not roomlog.holding(run.room) then return finish(run, "new messages filled the hold"); end
	local remaining = run.deadline - now();
	if remaining <= 0 then return finish(run, "minimix_backfill_timeout reached"); end
	if roomlog.pending() > WRITER_BACKLOG then
		module:add_timer(BACKLOG_WAIT, function() next_page(run); end);
		return;
	end
	run.pages = run.pages + 1;
	local qid = new_id();
	run.queryid, run.page = qid, {};
	by_query[qid] = run;
	local after = run.after or run.anchor.id;
	local iq = st.iq({ type = "set", from = run.account, to = run.room, id = new_id() })
		:tag("query", { xmlns = xmlns_mam, queryid = qid });
	if not after and run.anchor.when then
		iq:tag("x", { xmlns = xmlns_data, type = "submit" })
			:tag("field", { var = "FORM_TYPE", type = "hidden" }):text_tag("value", xmlns_mam):up()
			:tag("field", { var = "start" }):text_tag("value", datetime.datetime(math.floor(run.anchor.when))):up()
		:up();
	end
	iq:tag("set", { xmlns = xmlns_rsm })
		:text_tag("max", tostring(math.min(PAGE_SIZE, max_messages - run.results)));
	if after then iq:text_tag("after", after); end
	module:send_iq(iq:reset(), nil, math.max(1, math.ceil(remaining))):next(function(event)
		page_done(run, qid, after, event);
	end, function(err)
		if by_query[qid] == run then by_query[qid] = nil; end
		local condition = type(err) == "table" and err.condition or tostring(err);
		if not run.done and not run.after and after and run.anchor.when and condition == "item-not-found" then
			-- the archive no longer has the log's newest message: from its time
			run.anchor.id = nil;
			return next_page(run);
		end
		finish(run, "the archive query failed: " .. condition);
	end);
end

-- What the room offers is known from the account's join, or asked (the
-- room's new messages are held meanwhile: a room without an archive
-- would not give them back after a crash).
local function start(run)
	mm.roominfo.ask(run.room, run.account, function(features)
		if run.done then return; end
		if not features then return finish(run, "its disco#info is not known"); end
		if features[xmlns_mam] then return next_page(run); end
		finish(run, "the room keeps no archive");
	end);
end

-- The open span of the account's membership, or nil.
local function open_span(account, room)
	for _, info in ipairs(mm.core:memberships(account)) do
		if info.room == room then
			local spans = info.spans or {};
			local last = spans[#spans];
			if last and last[2] == nil then return last, info; end
			return nil;
		end
	end
	return nil;
end

-- The account is in room again (the core's event "joined"): when its span
-- stayed open over a gap, the room's archive fills the log.
local function joined(account, room)
	if not enabled or not roomlog.serves then return; end
	local t = now();
	local key = account .. "\0" .. room;
	local sent = joins:get(key);
	if not sent then return; end
	joins:set(key, nil);
	local span, info = open_span(account, room);
	if not span or span[1] >= sent or running[room] then return; end
	local last_end = ended:get(room);
	if last_end and t - last_end < QUIET then return; end
	if nrunning >= MAX_RUNNING then
		module:log("debug", "No backfill of %s: %d backfills are running", room, nrunning);
		return;
	end
	local anchor = roomlog.hold(room);
	if not anchor then return; end
	if not anchor.id and not anchor.when then anchor.when = info.last_stamp; end
	if not anchor.id and not anchor.when then
		roomlog.release(room);
		return;
	end
	local run = { account = account, room = room, anchor = anchor, deadline = t + timeout,
		pages = 0, results = 0, written = 0, seen_last = {} };
	running[room], nrunning = run, nrunning + 1;
	module:add_timer(timeout, function() finish(run, "minimix_backfill_timeout reached"); end);
	start(run);
end

-- The account sent a join of its own to room.
function backfill.joining(account, room)
	if enabled then joins:set(account .. "\0" .. room, now()); end
end

-- Never raises: the membership goes on without a backfill (logged).
function backfill.joined(account, room)
	local ok, err = pcall(joined, account, room);
	if not ok then
		module:log("warn", "Could not backfill %s: %s", room, tostring(err));
		local run = running[room];
		if run then finish(run, "failed"); elseif roomlog.holding(room) then roomlog.release(room); end
	end
end

-- The archive's results for a backfill's query: from the room itself to
-- the account that asked.  They stop here (true); anything else passes
-- on.  The shim asks first, before it hands room messages to sessions.
function backfill.takes(stanza)
	if nrunning == 0 then return false; end
	local result = stanza:get_child("result", xmlns_mam);
	local run = result and result.attr.queryid and by_query[result.attr.queryid];
	if not run or stanza.attr.from ~= run.room or stanza.attr.to ~= run.account then return false; end
	run.results = run.results + 1;
	if run.page and #run.page < PAGE_SIZE and run.results <= max_messages then
		run.page[#run.page+1] = result;
	end
	return true;
end

function backfill.init(shared, log)
	mm, roomlog = shared, log;
end

-- A reload ends what runs: what the log held is written.
function backfill.stop()
	for _, run in pairs(running) do finish(run, "the module is unloaded"); end
end

return backfill;
