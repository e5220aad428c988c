-- mod_minimix's XEP-0313 (MAM v2) answers from the room log, for rooms that keep no archive of their own.
--
-- A room whose disco#info lacks urn:xmpp:mam:2 (known through
-- minimix_roominfo.lib.lua, asked at each join of the account) gets
-- the feature added to the disco#info answers the account's devices get
-- (never to what the module itself learns),
-- and a device's MAM query to it is answered here, from the room log,
-- within the account's membership spans.  A room with an archive answers
-- its own queries: they pass through unchanged.

local st = require "util.stanza";
local datetime = require "util.datetime";
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local rsm = require "util.rsm";
local new_id = require "util.id".medium;
local now = require "util.time".now;
local filters = require "util.filters";

local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_mam_ext = "urn:xmpp:mam:2#extended";
local xmlns_disco_info = "http://jabber.org/protocol/disco#info";
local xmlns_forward = "urn:xmpp:forward:0";
local xmlns_delay = "urn:xmpp:delay";
local xmlns_sid = "urn:xmpp:sid:0";
local xmlns_dataforms = "jabber:x:data";
local xmlns_rsm = "http://jabber.org/protocol/rsm";

-- What one read of the store takes at most, while a page is looked for
-- (the first read takes the page and one more).
local CHUNK_MAX = 1000;

local lib = {};

-- Without the answers, the room's messages pass as they came.
function lib.stamp(stanza) return stanza; end

-- The form fields a query may hold (before-id, after-id and ids are
-- XEP-0313's extended ones, which the answers offer).
local FIELDS = { FORM_TYPE = true, start = true, ["end"] = true, with = true,
	["before-id"] = true, ["after-id"] = true, ids = true };

function lib.init(mm)
	local roomlog = mm.roomlog;
	if not roomlog.serves or not module:get_option_boolean("minimix_mam", true) then return lib; end
	-- the most results one answer gives, whatever a query asks for
	local page_max = math.min(mm.limit_option("minimix_mam_max_page", 100), 1000);

	local roominfo = mm.roominfo;
	-- the room's answers must be known before its first message
	roominfo.ask_at_join();
	-- whether room keeps an archive: nil when not known
	local function archived(room)
		local features = roominfo.features(room);
		if features == nil then return nil; end
		return features[xmlns_mam] == true;
	end

	-- when it was said, to the microsecond where the log knows it (0.12's
	-- util.datetime takes whole seconds only)
	local function stamp(t)
		local whole = math.floor(t);
		local micro = math.floor((t - whole) * 1e6 + 0.5);
		if micro <= 0 or micro >= 1e6 then return datetime.datetime(math.floor(t + 0.5)); end
		return datetime.datetime(whole):gsub("Z$", (".%06dZ"):format(micro));
	end

	local function split_room(to)
		local node, host, res = jid_split(to);
		if not node or not host or res then return nil; end
		return node .. "@" .. host;
	end

	local function account_of(origin)
		if origin.type ~= "c2s" or not origin.username or not origin.resource then return nil; end
		return origin.username .. "@" .. origin.host;
	end

	local function spans_of(account, room)
		for _, m in ipairs(mm.core:memberships(account)) do
			if m.room == room then return m.spans; end
		end
		return nil;
	end

	-- The id a client sees for a logged message: the room's stanza-id
	-- where it gave one (so that it matches what the client got live),
	-- else the log's own key.
	local function archive_id(key, item, room)
		for sid in item:childtags("stanza-id", xmlns_sid) do
			if sid.attr.by == room and sid.attr.id then return roomlog.bounded_id(sid.attr.id); end
		end
		return key;
	end

	-- XEP-0045 8.1: a subject change is no message (a <subject/> without
	-- <body/> and <thread/>); the log keeps them, MAM gives none.
	local function is_subject_change(item)
		return item:get_child("subject") ~= nil and item:get_child("body") == nil
			and item:get_child("thread") == nil;
	end

	-- The query form's fields (nil, condition, text when it is malformed).
	local function read_form(query)
		local q = {};
		local x = query:get_child("x", xmlns_dataforms);
		if not x then return q; end
		for field in x:childtags("field") do
			local var = field.attr.var;
			if not var or not FIELDS[var] then
				return nil, "bad-request", "Unknown field " .. tostring(var);
			end
			if var == "FORM_TYPE" then
				if field:get_child_text("value") ~= xmlns_mam then
					return nil, "bad-request", "The form is not a " .. xmlns_mam .. " query";
				end
			elseif var == "ids" then
				local ids = {};
				for value in field:childtags("value") do ids[#ids+1] = value:get_text(); end
				q.ids = ids;
			else
				local value = field:get_child_text("value");
				if var == "start" or var == "end" then
					local t = value and roomlog.parse_stamp(value);
					if not t then return nil, "bad-request", "Invalid " .. var .. " (XEP-0082 date and time)"; end
					q[var] = t;
				elseif var == "with" then
					q.with = value and jid_prep(value);
					if not q.with then return nil, "bad-request", "Invalid with (a JID)"; end
				elseif value and value ~= "" then
					q[var] = value;
				end
			end
		end
		if q.start and q["end"] and q.start > q["end"] then
			return nil, "bad-request", "start is after end";
		end
		return q;
	end

	local function form_reply(stanza)
		return st.reply(stanza):tag("query", { xmlns = xmlns_mam })
			:tag("x", { xmlns = xmlns_dataforms, type = "form" })
				:tag("field", { var = "FORM_TYPE", type = "hidden" }):text_tag("value", xmlns_mam):up()
				:tag("field", { var = "with", type = "jid-single" }):up()
				:tag("field", { var = "start", type = "text-single" }):up()
				:tag("field", { var = "end", type = "text-single" }):up()
				:tag("field", { var = "before-id", type = "text-single" }):up()
				:tag("field", { var = "after-id", type = "text-single" }):up()
				:tag("field", { var = "ids", type = "text-multi" }):up()
			:up():up();
	end

	-- One page of the room's log within the spans: up to max items in
	-- the query's direction and whether more follow; the items
	-- { id, item, t }, oldest first; or nil, condition, text.
	-- Backwards when a 'before' is given (RSM or before-id).
	local function page(room, spans, q, max)
		local lo, hi = spans[1][1], spans[#spans][2] or now();
		if q.start and q.start > lo then lo = q.start; end
		if q["end"] and q["end"] < hi then hi = q["end"]; end
		local after, before = q.after, q.before;
		local backwards = before ~= nil;
		local nick;
		if q.with then
			local node, host, res = jid_split(q.with);
			-- another JID than the room's or an occupant's: none of its messages
			if not node or node .. "@" .. host ~= room then return {}, false; end
			nick = res or room;
		end
		local ids;
		if q.ids then
			ids = {};
			for _, id in ipairs(q.ids) do ids[id] = true; end
		end
		local out, seen_after, seen_before = {}, after == nil, type(before) ~= "string";
		local more = false;
		if lo > hi then
			-- nothing within: an id asked for is not found either
			if not seen_after or not seen_before then return nil, "item-not-found", "No such message in this range"; end
			return out, false;
		end
		-- An id that is the log's own key (every id on SQL, where the
		-- room's stanza-id is the key) is found at once: the read starts
		-- (or ends) at its time instead of the range's.
		-- (Not on the file store, which reads the room's whole list for it.)
		local mark = backwards and type(before) == "string" and before or not backwards and after;
		local located = false;
		if mark and roomlog.keyed then
			local iter = roomlog.find(room, { key = mark, limit = 1 });
			local key, _, t = nil, nil, nil;
			if iter then key, _, t = iter(); end
			if key ~= nil then
				located = true;
				if backwards and t + 1 < hi then hi = t + 1; end
				if not backwards and t - 1 > lo then lo = t - 1; end
			end
		end
		local function within(t)
			return (not q.start or t >= q.start) and (not q["end"] or t <= q["end"]);
		end
		-- the page and the one after it that tells whether more follow,
		-- then more at a time past what the spans or filters leave out;
		-- the most at once while an id is looked for
		local cont, done = nil, false;
		local chunk = mark and not located and CHUNK_MAX or max + 1;
		-- a message past the page's mark: on the page if the query and the
		-- spans take it; true when the page is full (one more is there)
		local function take(id, item, t, slack)
			if within(t) and roomlog.in_spans(t, slack, spans)
				and (not ids or ids[id]) and not is_subject_change(item) then
				if #out >= max then more = true; return true; end
				out[#out+1] = { id, item, t };
			end
			return false;
		end
		while not done do
			local iter, err = roomlog.find(room, { start = math.floor(lo) - 1, ["end"] = math.ceil(hi),
				with = nick, reverse = backwards, limit = chunk,
				after = not backwards and cont or nil, before = backwards and cont or nil });
			if not iter then
				if cont then return nil, "internal-server-error", "Could not read the room log"; end
				module:log("warn", "Could not read the log of %s for a MAM query: %s", room, tostring(err));
				return nil, "internal-server-error", "Could not read the room log";
			end
			local got = 0;
			for key, item, t, slack in iter do
				got, cont = got + 1, key;
				local id = archive_id(key, item, room);
				if backwards then
					if not seen_before then
						if id == before or key == before then seen_before = true; end
					elseif after and (id == after or key == after) then
						seen_after, done = true, true;
						break;
					elseif take(id, item, t, slack) then
						done = true;
						break;
					end
				else
					if not seen_after then
						if id == after or key == after then seen_after = true; end
					elseif type(before) == "string" and (id == before or key == before) then
						seen_before, done = true, true;
						break;
					elseif take(id, item, t, slack) then
						done = true;
						break;
					end
				end
			end
			if got < chunk then break; end
			chunk = math.min(chunk * 2, CHUNK_MAX);
		end
		if (backwards and not seen_before) or (not backwards and not seen_after) then
			return nil, "item-not-found", "No such message in this room's archive";
		end
		if backwards then
			local n = #out;
			for i = 1, n // 2 do out[i], out[n + 1 - i] = out[n + 1 - i], out[i]; end
		end
		return out, more;
	end

	-- Answer a device's query from the log.
	local function answer(origin, stanza, query, account, room)
		if stanza.attr.type == "get" then
			origin.send(form_reply(stanza));
			return;
		end
		local q, condition, text = read_form(query);
		if not q then
			origin.send(st.error_reply(stanza, "modify", condition, text));
			return;
		end
		local set = rsm.get(query) or {};
		local max = page_max;
		local set_tag = query:get_child("set", xmlns_rsm);
		local max_text = set_tag and set_tag:get_child_text("max");
		if max_text then
			-- util.rsm reads a max that is no number as none
			if not max_text:match("^%s*%d+%s*$") then
				origin.send(st.error_reply(stanza, "modify", "bad-request", "Invalid RSM max"));
				return;
			end
			max = math.min(tonumber(max_text), page_max);
		end
		q.after = set.after or q["after-id"];
		q.before = set.before or q["before-id"];
		if q.after == "" then q.after = nil; end
		local spans = spans_of(account, room);
		local items, more = {}, false;
		if spans and #spans > 0 then
			local why;
			items, more, why = page(room, spans, q, max);
			if not items then
				origin.send(st.error_reply(stanza, more == "internal-server-error" and "wait" or "cancel",
					more, why));
				return;
			end
		elseif q.after or type(q.before) == "string" then
			origin.send(st.error_reply(stanza, "cancel", "item-not-found", "No such message in this room's archive"));
			return;
		end
		local queryid = query.attr.queryid;
		local flip = query:get_child("flip-page") ~= nil;
		local first, last = items[1] and items[1][1], items[#items] and items[#items][1];
		local from, to = 1, #items;
		local step = 1;
		if flip then from, to, step = #items, 1, -1; end
		for i = from, to, step do
			local id, item, t = items[i][1], items[i][2], items[i][3];
			item.attr.xmlns = "jabber:client";
			origin.send(st.message({ to = origin.full_jid, from = room, id = new_id() })
				:tag("result", { xmlns = xmlns_mam, queryid = queryid, id = id })
					:tag("forwarded", { xmlns = xmlns_forward })
						:tag("delay", { xmlns = xmlns_delay, stamp = (stamp(t)) }):up()
						:add_child(item):up():up());
		end
		-- complete: no more in the query's direction
		local reply = st.reply(stanza):tag("fin", { xmlns = xmlns_mam, complete = not more and "true" or nil });
		local out = {};
		if first then out.first, out.last = first, last; end
		reply:add_child(rsm.generate(out));
		origin.send(reply);
		module:log("debug", "Answered a MAM query of %s to %s from the room log: %d results%s",
			origin.full_jid, room, #items, more and ", more follow" or "");
	end

	-- queries held while the room is asked what it offers, once each
	local retried = setmetatable({}, { __mode = "k" });

	-- A device's MAM query to a room.  Priority 0.6: before the main
	-- module's handling of outgoing IQs (0.5), which would send it to the
	-- room as the account's.
	module:hook("pre-iq/bare", function(event)
		local origin, stanza = event.origin, event.stanza;
		local t = stanza.attr.type;
		if t ~= "set" and t ~= "get" then return; end
		local query = stanza.tags[1];
		if not query or query.name ~= "query" or query.attr.xmlns ~= xmlns_mam then return; end
		local account = account_of(origin);
		local room = account and stanza.attr.to and split_room(stanza.attr.to);
		if not room or not stanza.attr.id or not mm.core:member(account, room) then return; end
		local has = archived(room);
		if has == nil then
			if retried[stanza] then return; end -- the room did not say: it answers
			retried[stanza] = true;
			-- held, then handled as if sent now: answered here, or passed
			-- on to the room (a session that went meanwhile asks nothing)
			roominfo.ask(room, account, function()
				if not origin.destroyed then prosody.core_post_stanza(origin, stanza, true); end
			end);
			return true;
		end
		if has then return; end
		answer(origin, stanza, query, account, room);
		return true;
	end, 0.6);

	-- A room's disco#info answer: learnt, and the features added, when
	-- the account is in the room.
	local function disco_answer(query, account, room)
		if not mm.core:member(account, room) then return; end
		if not roominfo.learn(room, query)[xmlns_mam] then
			query:add_direct_child(st.stanza("feature", { var = xmlns_mam }));
			query:add_direct_child(st.stanza("feature", { var = xmlns_mam_ext }));
		end
	end

	local function disco_query(stanza)
		local query = stanza.tags[1];
		if query and query.name == "query" and query.attr.xmlns == xmlns_disco_info
			and not query.attr.node then
			return query;
		end
		return nil;
	end

	-- The room's answers to the account (a joined device's query; the
	-- module's own stop in minimix_roominfo.lib.lua, at 12).  Priority 11: before the main module hands them to
	-- the device that asked (10).
	module:hook("iq/bare", function(event)
		local stanza = event.stanza;
		local t = stanza.attr.type;
		if t ~= "result" and t ~= "error" then return; end
		local room = stanza.attr.from and split_room(stanza.attr.from);
		local account = stanza.attr.to;
		if not room or not account then return; end
		local query = disco_query(stanza);
		if t ==  "result" and query then disco_answer(query, account, room); end
	end, 11);

	-- The room's answers to a device that asked before it joined (clients
	-- look at a room's features before they join it, to decide how they
	-- will catch up).  A local room hands those to the session itself,
	-- past every event: a filter on the session's outgoing stanzas sees
	-- them.  session -> { id -> room }, a few per session.
	local disco_asked = setmetatable({}, { __mode = "k" });
	local DISCO_ASKED_MAX = 8;
	local function disco_filter(stanza, session)
		local asked_by = disco_asked[session];
		local room = asked_by and type(stanza) == "table" and stanza.name == "iq" and stanza.attr.id
			and asked_by.ids[stanza.attr.id];
		if not room or module.loaded == false or stanza.attr.from ~= room then return stanza; end
		asked_by.ids[stanza.attr.id], asked_by.n = nil, asked_by.n - 1;
		local query = stanza.attr.type == "result" and disco_query(stanza);
		if query then disco_answer(query, account_of(session), room); end
		return stanza;
	end

	local function not_joined(account, resource, room)
		for _, s in ipairs(mm.core:sessions(account, room)) do
			if s.resource == resource and s.joined then return false; end
		end
		return true;
	end

	module:hook("pre-iq/bare", function(event)
		local origin, stanza = event.origin, event.stanza;
		if stanza.attr.type ~= "get" or not stanza.attr.id or not disco_query(stanza) then return; end
		local account = account_of(origin);
		local room = account and stanza.attr.to and split_room(stanza.attr.to);
		if not room or not origin.filter or not mm.core:member(account, room)
			or not not_joined(account, origin.resource, room) then
			return;
		end
		local asked_by = disco_asked[origin];
		if not asked_by then
			asked_by = { ids = {}, n = 0 };
			disco_asked[origin] = asked_by;
			filters.add_filter(origin, "stanzas/out", disco_filter, 1);
		end
		if asked_by.n >= DISCO_ASKED_MAX then return; end
		if not asked_by.ids[stanza.attr.id] then
			asked_by.ids[stanza.attr.id], asked_by.n = room, asked_by.n + 1;
		end
	end, 0.6);

	-- Rooms that keep no archive: the module stamps its own stanza-id by
	-- the room on each message with a body (XEP-0359), the id the log
	-- keeps it under and the MAM answers give, so that a client matches
	-- what it got live with what it pages through later; one that an
	-- occupant put in claiming to be the room's goes first (XEP-0359 §5).
	-- A local room hands one object to each of its occupants: a copy is
	-- stamped, once for all the local accounts.
	local last = { stanza = nil, room = nil, from = nil, id = nil, tags = 0, stamped = nil };
	function lib.stamp(stanza, account)
		if stanza.name ~= "message" or stanza.attr.type ~= "groupchat" or not account then return stanza; end
		if stanza == last.stanza and stanza.attr.from == last.from and stanza.attr.id == last.id
			and #stanza.tags == last.tags then
			if not mm.core:member(account, last.room) then return stanza; end
			last.stamped.attr.to = stanza.attr.to;
			return last.stamped;
		end
		local node, host = jid_split(stanza.attr.from);
		local room = node and host and node .. "@" .. host;
		if not room or not mm.core:member(account, room) then return stanza; end
		local known = archived(room);
		if known == nil then
			-- not known (a reload, an answer that never came): asked now; a
			-- local room answers before module:send returns
			roominfo.ask(room, account);
			known = archived(room);
		end
		if known ~= false then return stanza; end
		-- one pass over the children (this runs for every room message):
		-- a body (as get_child("body") finds it), an occupant's claim to
		-- an id of the room's, the room's own delay
		local own = stanza.attr.xmlns;
		local body, claims, delayed = false, false, false;
		local children = stanza.tags;
		for i = 1, #children do
			local tag = children[i];
			local name, xmlns = tag.name, tag.attr.xmlns;
			if name == "body" and (xmlns == nil or xmlns == own) then
				body = true;
			elseif name == "stanza-id" and xmlns == xmlns_sid and tag.attr.by == room then
				claims = true;
			elseif name == "delay" and xmlns == xmlns_delay and tag.attr.from == room then
				delayed = true;
			end
		end
		-- (no message: nothing stamped, only a false claim taken away)
		if not body and not claims then return stanza; end
		-- a copy of the top element that shares the room's children but
		-- the claims: the stamping only changes the copy's own lists, and
		-- every copy the module changes a child of (status codes, the
		-- log's entries, pushes that wait) is a deep clone
		local stamped = st.clone(stanza, true);
		local tags = stamped.tags;
		for i = 1, #stanza do
			local child = stanza[i];
			if not (claims and child.name == "stanza-id" and child.attr.xmlns == xmlns_sid
					and child.attr.by == room) then
				stamped[#stamped+1] = child;
				if child.name then tags[#tags+1] = child; end
			end
		end
		if body then
			stamped:add_direct_child(st.stanza("stanza-id", { xmlns = xmlns_sid, by = room,
				id = roomlog.stamp_id(room, stamped, delayed) }));
		end
		last.stanza, last.room, last.from, last.id, last.tags, last.stamped = stanza, room,
			stanza.attr.from, stanza.attr.id, #stanza.tags, stamped;
		return stamped;
	end

	return lib;
end

return lib;
