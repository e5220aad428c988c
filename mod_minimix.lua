-- mod_minimix: the account, not each client session, is the occupant of
-- XEP-0045 rooms.  Clients keep speaking plain MUC; this shim hooks their
-- room traffic, asks the C core (minimix.so) what to do, and does it.
--
-- Layers: protocol decisions live in the core (minimix.c); this file only
-- reads stanzas into core calls and carries out the core's actions.  Each
-- other concern is a library beside it, loaded with module:require and
-- handed what it needs in the shared table mm (below):
--   minimix_send.lib.lua       the copies to client sessions
--   minimix_log.lib.lua        the room log and the archive copies
--   minimix_logsql.lib.lua     the room log's writes on SQL, one transaction per flush
--   minimix_backfill.lib.lua   the room log filled from the room's archive after a gap
--   minimix_persist.lib.lua    the stored memberships and the start-up restore
--   minimix_bookmarks.lib.lua  XEP-0402 bookmarks as memberships
--   minimix_links.lib.lua      server-to-server links and self-pings
--   minimix_operators.lib.lua  what Prosody offers, metrics, ad-hoc and shell commands
--   minimix_mam.lib.lua        MAM answered from the room log for rooms without an archive
--   minimix_push.lib.lua       pushes (XEP-0357) for room messages to devices away
--   minimix_roominfo.lib.lua   each room's disco#info features, asked once for all the above

local st = require "util.stanza";
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local xml_parse = require "util.xml".parse;
local now = require "util.time".now;
local datetime = require "util.datetime";

local xmlns_muc = "http://jabber.org/protocol/muc";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";
local xmlns_carbons = "urn:xmpp:carbons:2";
local xmlns_forward = "urn:xmpp:forward:0";
local xmlns_ping = "urn:xmpp:ping";
local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_stanzas = "urn:ietf:params:xml:ns:xmpp-stanzas";
local xmlns_delay = "urn:xmpp:delay";
local xmlns_sid = "urn:xmpp:sid:0";
local xmlns_occupant_id = "urn:xmpp:occupant-id:0";
local xmlns_caps = "http://jabber.org/protocol/caps";

-- Configuration: every limit bounds memory; see README.markdown.
local function limit_option(name, default)
	local v = module:get_option_number(name, default);
	v = math.floor(v);
	if v < 1 then
		module:log("warn", "%s must be at least 1; using %d", name, default);
		v = default;
	end
	return v;
end

local limits = {
	max_rooms = limit_option("minimix_max_rooms", 256);
	max_sessions = limit_option("minimix_max_sessions", 32);
	max_occupants = limit_option("minimix_max_occupants", 2000);
	max_pending = limit_option("minimix_max_pending", 32);
	max_iqs = limit_option("minimix_max_iqs", 16);
	iq_timeout = limit_option("minimix_iq_timeout", 60);
	rejoin_delay = limit_option("minimix_rejoin_delay", 5);
	-- how long the room may keep the account out before a later device
	-- no longer reads the log of that time (see README)
	rejoin_grace = limit_option("minimix_rejoin_grace", 300);
	history_size = limit_option("minimix_history_size", 50);
	history_default = limit_option("minimix_history_default", 20);
	-- the most one join gets from the room log, however much it asks
	history_max = limit_option("minimix_history_max", 500);
	join_timeout = limit_option("minimix_join_timeout", 60);
	-- bytes of room stanzas cached for later sessions (see README)
	max_membership_bytes = limit_option("minimix_max_membership_bytes", 4 * 1024 * 1024);
	max_account_bytes = limit_option("minimix_max_account_bytes", 16 * 1024 * 1024);
	max_cache_bytes = limit_option("minimix_max_cache_bytes", 256 * 1024 * 1024);
};


-- The room log, once per room on this host, and the opt-in copy into the
-- accounts' own archives: minimix_log.lib.lua (README "Room log").
local roomlog = module:require("minimix_log");
-- with the log, a later session's catch-up is read from it (per span)
limits.log_history = roomlog.serves;

-- The other concerns; each starts its hooks and timers in its init (below).
local operators = module:require("minimix_operators");
local offers, metrics = operators.offers, operators.metrics;
local persist = module:require("minimix_persist");
local bookmarks = module:require("minimix_bookmarks");
local links = module:require("minimix_links");
local send = module:require("minimix_send");
local backfill = module:require("minimix_backfill");
local mam = module:require("minimix_mam");
local push = module:require("minimix_push");
local roominfo = module:require("minimix_roominfo");

-- The native core: next to this file first (a checkout or plugin dir),
-- then in the LuaRocks tree this file was installed into (Prosody 0.12 adds
-- the tree's share/ to package.path but not its lib/ to package.cpath), then
-- wherever require finds it.
local function load_native()
	local candidates = {};
	local dir = module.path and module.path:match("^(.*)[/\\][^/\\]*$");
	if dir then
		candidates[#candidates+1] = dir .. "/minimix.so";
		local tree, version = dir:match("^(.*)/share/lua/([%d.]+)$");
		if tree then
			candidates[#candidates+1] = tree .. "/lib/lua/" .. version .. "/minimix.so";
		end
	end
	local errors = {};
	for _, path in ipairs(candidates) do
		local open, err = package.loadlib(path, "luaopen_minimix");
		if open then return open(); end
		errors[#errors+1] = err;
	end
	local ok, lib = pcall(require, "minimix");
	if ok then return lib; end
	errors[#errors+1] = tostring(lib);
	error("mod_minimix needs its native library minimix.so (build it with 'make'): "
		.. table.concat(errors, "; "));
end

if module:get_host_type() ~= "local" then
	error("mod_minimix belongs on a VirtualHost (user accounts), not on " .. module.host);
end

local minimix = load_native();
local core = minimix.new(limits);
-- span boundaries are the times the log's messages are compared with
core:clock(now);

-- A XEP-0082 stamp as the running Prosody writes them: a catch-up stamp in
-- whole seconds would sort before the room's own stamps of that second.
local function stamp_text(t)
	if offers.fractional_stamps then return datetime.datetime(t); end
	return datetime.datetime(math.floor(t));
end

-- Helpers ------------------------------------------------------------------

local function session_account(origin)
	if origin.type ~= "c2s" or not origin.username or not origin.resource then
		return nil;
	end
	return origin.username .. "@" .. origin.host, origin.resource;
end

-- A room JID that did not pass the router (a bookmark, a command, stored
-- data): prepared exactly as the router prepares JIDs, so that the answers
-- the room sends match it, then checked by the core (an IP literal must be
-- an address).  nil when it is not a room JID (node@domain).
local function prep_room(jid)
	local prepped = type(jid) == "string" and jid_prep(jid);
	local room = prepped and minimix.normalize_jid(prepped);
	if not room or not room:find("@", 1, true) or room:find("/", 1, true) then
		return nil;
	end
	return room;
end

local function split_room(to)
	local node, host, nick = jid_split(to);
	if not node or not host then return nil; end
	return node .. "@" .. host, nick;
end

-- A session's presence as the account's presence in a room: without the
-- addressing and without the MUC join element.  A plain available presence
-- is "" (what the account's own join carries).
local function presence_payload(stanza)
	local p = st.clone(stanza);
	p.attr.to, p.attr.from, p.attr.id, p.attr["xml:lang"] = nil, nil, nil, nil;
	p:maptags(function(tag)
		if tag.attr.xmlns == xmlns_muc then return nil; end
		return tag;
	end);
	if #p.tags == 0 and next(p.attr) == nil then return ""; end
	return tostring(p);
end

-- XEP-0115 capabilities are a device's, the room's occupant is the
-- account: a room sees none (the first device's would be wrong for the
-- others, and a device joining with other ones would make every occupant
-- get a new presence of the account that a person cannot see).
local function strip_caps(stanza)
	stanza:maptags(function(tag)
		if tag.name == "c" and tag.attr.xmlns == xmlns_caps then return nil; end
		return tag;
	end);
end

local function occupant_jid(room, nick)
	if nick then return room .. "/" .. nick; end
	return room;
end

-- XEP-0421: the account's occupant id in each room (account NUL room ->
-- id), as the room's self-presence gave it, for the presences the module
-- makes in the room's name; forgotten when the membership ends.
local occupant_ids = {};
local OCCUPANT_ID_MAX = 256;

local function note_occupant_id(account, room, stanza)
	local oid = stanza:get_child("occupant-id", xmlns_occupant_id);
	local id = oid and oid.attr.id;
	if id and #id <= OCCUPANT_ID_MAX then occupant_ids[account .. "\0" .. room] = id; end
end

local function with_occupant_id(pres, account, room)
	local id = occupant_ids[account .. "\0" .. room];
	if id then pres:tag("occupant-id", { xmlns = xmlns_occupant_id, id = id }):up(); end
	return pres;
end

-- What the libraries get from this file: the core (replaced by the one a
-- reload hands over), the options' reader, the helpers they call back
-- (perform, below), the bookmarks, which the start-up restore reads, the
-- room log, which the MAM answers read, what push needs, and what the
-- rooms offer (their disco#info, one copy for all).
local mm = { core = core, limit_option = limit_option, prep_room = prep_room, bookmarks = bookmarks,
	roomlog = roomlog, metrics = metrics, mention = minimix.mention, roominfo = roominfo };
send.init(mm);

local event_log = {
	joined = "%s is in %s";
	left = "%s left %s";
	removed = "%s is out of %s (%s)";
	rejoining = "%s joins %s again (%s)";
};

-- Something happened to a membership: count, log, persist, bookmarks.
local function note_event(account, room, event, reason)
	metrics.events:with_labels(event):add(1);
	if reason then
		module:log("info", event_log[event], account, room, reason);
	else
		module:log("info", event_log[event], account, room);
	end
	persist.membership_changed();
	if event == "joined" then
		-- in again after a gap: the room's archive may fill it
		backfill.joined(account, room);
	end
	if event == "left" or event == "removed" then
		bookmarks.follows(account, room);
	end
end

-- The core's actions, one function each: act[op](ctx, a, account, room),
-- with a the action, account its account (the handled one unless the
-- action names another) and ctx as for perform.  Returns how many stanzas
-- it delivered and how many it replayed (nil: none).  "drop" has none: the
-- stanza stops here.
local act = {};

function act.deliver(ctx, a, account)
	send.to_session(account, a.resource, ctx.stanza, a.id, a.codes);
	return 1, 0;
end

function act.replay(_, a, account, room)
	local cached = send.parse_cached(a.payload);
	if cached then
		if a.stamp and not cached:get_child("delay", xmlns_delay) then
			cached = st.clone(cached);
			-- catch-up: when the room said it (XEP-0203)
			cached:tag("delay", { xmlns = xmlns_delay, from = room,
				stamp = stamp_text(a.stamp) }):up();
		end
		send.to_session(account, a.resource, cached, a.id, a.codes, a.drop_codes);
	end
	return 0, 1;
end

-- catch-up from the room log, within the membership's spans
function act.replay_log(_, a, account, room)
	local replayed = 0;
	for _, said in ipairs(roomlog.replay(room, a)) do
		local item = said[1];
		local has_delay = false;
		for delay in item:childtags("delay", xmlns_delay) do
			if delay.attr.from == room then has_delay = true; end
		end
		if not has_delay then
			item:tag("delay", { xmlns = xmlns_delay, from = room, stamp = stamp_text(said[2]) }):up();
		end
		send.to_session(account, a.resource, item);
		replayed = replayed + 1;
	end
	return 0, replayed;
end

-- The session's own join, as the account's, with the password the account
-- entered with: a later device's join may lack it, and a refusal would end
-- the membership.
local function forward_join(stanza, account, password)
	local x = password and stanza:get_child("x", xmlns_muc);
	if x then
		x:maptags(function(tag)
			if tag.name == "password" then return nil; end
			return tag;
		end);
		x:text_tag("password", password, { xmlns = xmlns_muc });
	end
	send.as_account(stanza, account);
end

-- A join of the account's own (a restore, a bookmark, a re-join).
local function account_join(account, room, a)
	local join = st.presence({ from = account, to = room .. "/" .. a.nick })
		:tag("x", { xmlns = xmlns_muc });
	-- explicit namespaces: a local MUC reads the stanza as built
	if a.password then
		join:text_tag("password", a.password, { xmlns = xmlns_muc });
	end
	if a.since then
		join:tag("history", { xmlns = xmlns_muc, since = stamp_text(a.since) }):up();
	end
	module:send(join:up());
end

function act.send_join(ctx, a, account, room)
	-- what the room offers may have changed while the account was out;
	-- asked ahead of the join (when the MAM answers need it), so that the
	-- answer comes before the room's first message (minimix_roominfo.lib.lua)
	roominfo.joining(account, room);
	if a.from_request then
		forward_join(ctx.stanza, account, a.password);
	else
		account_join(account, room, a);
	end
	-- a re-join (restart, 332, 333, self-ping) may end a gap
	backfill.joining(account, room);
	module:log("debug", "%s joins %s as %s", account, room, a.nick);
end

function act.send_as_account(ctx, a, account)
	send.as_account(ctx.stanza, account, a.id);
end

function act.send_leave(_, a, account, room)
	module:send(st.presence({ from = account, to = room .. "/" .. a.nick, type = "unavailable" }));
end

function act.send_presence(_, a, account, room)
	local pres = a.payload == "" and st.presence() or xml_parse(a.payload);
	if pres then
		pres.attr.from, pres.attr.to = account, room .. "/" .. a.nick;
		module:send(pres);
	end
end

function act.rejoin_later(_, a, account, room)
	module:log("debug", "%s joins %s again in %ds", account, room, a.delay);
end

function act.event(_, a, account, room)
	note_event(account, room, a.event, a.reason);
end

-- the join was never answered: what the room would have said
function act.join_error(_, a, account, room)
	send.to_session(account, a.resource, st.presence({ type = "error", id = a.id,
			from = occupant_jid(room, a.nick) })
		:tag("x", { xmlns = xmlns_muc }):up()
		:tag("error", { type = a.error_type })
			:tag(a.condition, { xmlns = xmlns_stanzas }):up()
		:up());
end

-- the room's own self-presence was beyond the byte limits: a join still
-- ends with a self-presence
function act.self_stub(_, a, account, room)
	local pres = with_occupant_id(st.presence({ from = room .. "/" .. a.nick }), account, room)
		:tag("x", { xmlns = xmlns_muc_user })
			:tag("item", { xmlns = xmlns_muc_user, affiliation = a.affiliation, role = a.role }):up()
			:tag("status", { xmlns = xmlns_muc_user, code = "110" }):up();
	send.to_session(account, a.resource, pres:up(), a.id, a.codes);
	return 0, 1;
end

-- and with the subject: the room's was beyond them too
function act.subject_stub(_, a, account, room)
	send.to_session(account, a.resource, st.message({ from = room, type = "groupchat" })
		:tag("subject"):up());
	return 0, 1;
end

function act.reflect_leave(_, a, account, room)
	local pres = with_occupant_id(st.presence({ from = room .. "/" .. a.nick, type = "unavailable",
			id = a.id }), account, room)
		:tag("x", { xmlns = xmlns_muc_user })
			:tag("item", { xmlns = xmlns_muc_user, affiliation = a.affiliation, role = "none" }):up()
			:tag("status", { xmlns = xmlns_muc_user, code = "110" }):up();
	for _, code in ipairs(a.codes or {}) do
		pres:tag("status", { xmlns = xmlns_muc_user, code = tostring(code) }):up();
	end
	send.to_session(account, a.resource, pres:up());
end

-- XEP-0280 'sent': what another device of the account said, from that
-- session's own address
function act.carbon(ctx, a, account)
	local stanza = ctx.stanza;
	local copy = st.clone(stanza);
	copy.attr.from, copy.attr.xmlns = ctx.origin and ctx.origin.full_jid, "jabber:client";
	send.to_session(account, a.resource, st.message({ from = account, type = stanza.attr.type })
		:tag("sent", { xmlns = xmlns_carbons })
			:tag("forwarded", { xmlns = xmlns_forward })
				:add_child(copy):up():up());
end

function act.send_ping(_, a, account, room)
	module:send(st.iq({ type = "get", id = a.id, from = account, to = occupant_jid(room, a.nick) })
		:tag("ping", { xmlns = xmlns_ping }):up());
end

function act.ping_later(_, a, _, room)
	module:log("debug", "Pinging the rooms on %s again in %ds", room:match("@(.*)$") or room, a.delay);
end

function act.iq_error(_, a, account, room)
	send.to_session(account, a.resource, st.iq({ type = "error", id = a.id,
			from = occupant_jid(room, a.nick) })
		:tag("error", { type = a.error_type })
			:tag(a.condition, { xmlns = xmlns_stanzas }):up()
		:up());
end

-- The occupant ids of the memberships that ended, once the presences
-- made for them are sent.
local function forget_occupant_ids(ctx, event, actions)
	if (event == "left" or event == "removed") and ctx.account and ctx.room then
		occupant_ids[ctx.account .. "\0" .. ctx.room] = nil;
	end
	for i = 1, actions and #actions or 0 do
		local a = actions[i];
		-- (a string is a copy to a session: see perform)
		local account = type(a) == "table" and (a.account or ctx.account);
		if account and a.op == "event" and (a.event == "left" or a.event == "removed") and a.room then
			occupant_ids[account .. "\0" .. a.room] = nil;
		end
	end
end

-- Carry out the core's decision.  ctx: account, room, stanza (the one being
-- handled), origin (the session's, for outgoing stanzas).
-- The core's results: handled, actions, event, reason; or on a refusal
-- nil, token, condition, type, text.
local function perform(ctx, handled, actions, event, reason, text)
	if handled == nil then
		-- the core refused (limits, malformed input): the asker alone hears it
		-- (a bookmark or the start-up restore has no stanza and no asker)
		module:log(ctx.origin and "debug" or "warn", "Refused %s to %s for %s: %s",
			ctx.stanza and ctx.stanza.name or "a join", ctx.room, ctx.account, actions);
		metrics.refusals:with_labels(actions):add(1);
		if ctx.origin then
			ctx.origin.send(st.error_reply(ctx.stanza, reason, event, text));
		end
		return true;
	end
	if event then note_event(ctx.account, ctx.room, event, reason); end
	if not handled or not actions then
		forget_occupant_ids(ctx, event);
		return handled and true or nil;
	end
	local delivered, replayed, events = 0, 0, event ~= nil;
	for i = 1, #actions do
		local a = actions[i];
		if type(a) == "string" then
			-- a copy to session a, nothing more (room_message's lean shape)
			send.to_session(ctx.account, a, ctx.stanza);
			delivered = delivered + 1;
		else
			local op = a.op;
			local f = act[op];
			if f then
				local d, r = f(ctx, a, a.account or ctx.account, a.room);
				delivered, replayed = delivered + (d or 0), replayed + (r or 0);
			end
			if op == "event" then events = true; end
		end
	end
	-- (most decisions, a room message's copies, end no membership)
	if events then forget_occupant_ids(ctx, event, actions); end
	if delivered > 0 then metrics.deliveries:add(delivered); end
	if replayed > 0 then metrics.replays:add(replayed); end
	return true;
end
mm.perform = perform;

-- Outgoing: the account's own sessions talking to rooms -----------------------

local function outgoing_presence(event)
	local origin, stanza = event.origin, event.stanza;
	local account, resource = session_account(origin);
	if not account then return; end
	local room, nick = split_room(stanza.attr.to);
	if not room then return; end
	local t, id = stanza.attr.type, stanza.attr.id;
	local ctx = { account = account, room = room, stanza = stanza, origin = origin };
	if t == nil then
		if not nick then return; end
		local x = stanza:get_child("x", xmlns_muc);
		if x or core:member(account, room) then strip_caps(stanza); end
		local show, payload = stanza:get_child_text("show"), presence_payload(stanza);
		if x then
			local h, history = x:get_child("history"), nil;
			if h then
				-- a stamp names its microsecond, rounded: a message of that
				-- microsecond (a stamp the client was given) is since it
				local since = h.attr.since and roomlog.parse_stamp(h.attr.since);
				history = {
					maxstanzas = tonumber(h.attr.maxstanzas);
					maxchars = tonumber(h.attr.maxchars);
					seconds = tonumber(h.attr.seconds);
					since = since and since - 0.5e-6;
				};
			end
			return perform(ctx, core:join(account, resource, room, nick, id,
				x:get_child_text("password"), show, payload, history, now()));
		end
		return perform(ctx, core:presence_out(account, resource, room, nick, id, show, payload));
	elseif t == "unavailable" then
		return perform(ctx, core:leave(account, resource, room, id));
	elseif t == "error" then
		return perform(ctx, core:message_out(account, resource, room, nick, "error", id));
	end
end

local function outgoing_message(event)
	local origin, stanza = event.origin, event.stanza;
	local account, resource = session_account(origin);
	if not account then return; end
	local room, nick = split_room(stanza.attr.to);
	if not room then return; end
	local ctx = { account = account, room = room, stanza = stanza, origin = origin };
	return perform(ctx, core:message_out(account, resource, room, nick,
		stanza.attr.type or "normal", stanza.attr.id));
end

local function outgoing_iq(event)
	local origin, stanza = event.origin, event.stanza;
	local t = stanza.attr.type;
	if t ~= "get" and t ~= "set" then return; end
	local account, resource = session_account(origin);
	if not account or not stanza.attr.id then return; end
	local room, nick = split_room(stanza.attr.to);
	if not room or not core:member(account, room) then return; end
	local query = stanza:get_child("query", xmlns_mam);
	local is_ping = t == "get" and stanza:get_child("ping", xmlns_ping) ~= nil;
	local ctx = { account = account, room = room, stanza = stanza, origin = origin };
	return perform(ctx, core:iq_out(account, resource, room, nick, stanza.attr.id,
		query and query.attr.queryid, is_ping, now()));
end

-- Priority 0.5: after mod_blocklist (100) and mod_vcard_legacy (1) have had
-- their say on the outgoing stanza, before mod_presence (0), mod_mam (0) and
-- mod_carbons (-0.5), which must not treat room traffic as the session's own.
module:hook("pre-presence/full", outgoing_presence, 0.5);
module:hook("pre-presence/bare", outgoing_presence, 0.5);
module:hook("pre-message/bare", outgoing_message, 0.5);
module:hook("pre-message/full", outgoing_message, 0.5);
module:hook("pre-iq/bare", outgoing_iq, 0.5);
module:hook("pre-iq/full", outgoing_iq, 0.5);

-- Incoming: rooms talking to the account's bare JID --------------------------

local function muc_user_fields(stanza, p)
	local x = stanza:get_child("x", xmlns_muc_user);
	if not x then return p; end
	local codes = {};
	for status in x:childtags("status") do
		codes[#codes+1] = tonumber(status.attr.code);
	end
	p.codes = codes;
	local item = x:get_child("item");
	if item then
		p.affiliation = item.attr.affiliation;
		p.role = item.attr.role;
		p.new_nick = item.attr.nick;
	end
	p.destroyed = x:get_child("destroy") ~= nil;
	return p;
end

local function incoming_presence(event)
	local stanza = event.stanza;
	local t = stanza.attr.type;
	if t ~= nil and t ~= "unavailable" and t ~= "error" then return; end
	local account = stanza.attr.to;
	local room, nick = split_room(stanza.attr.from);
	if not account or not room or not core:member(account, room) then return; end
	local p = muc_user_fields(stanza, {
		type = t or "available";
		condition = t == "error" and select(2, stanza:get_error()) or nil;
		id = stanza.attr.id;
		payload = t ~= "error" and send.shared_payload(stanza) or nil;
	});
	if p.codes and t ~= "error" then
		for _, code in ipairs(p.codes) do
			if code == 110 then note_occupant_id(account, room, stanza); end
		end
	end
	local ctx = { account = account, room = room, stanza = stanza };
	return perform(ctx, core:room_presence(account, room, nick, p));
end

-- What the shim reads of a room message, for the core and the log.  A local
-- room hands the same object to each of its local accounts (changing only
-- 'to'): it is read once, and again only if the object changed.
-- One pass over the children finds what get_child() would (the first of
-- each; body, subject and thread in no namespace or the stanza's own),
-- since this runs for every room message.
local function read_message(stanza, room, nick)
	local t = stanza.attr.type or "normal";
	local own = stanza.attr.xmlns;
	local body, subject, thread, result, delay, sid, withdrawing = false, false, false, nil, nil, nil, false;
	local tags = stanza.tags;
	for i = 1, #tags do
		local tag = tags[i];
		local name, xmlns = tag.name, tag.attr.xmlns;
		if xmlns == nil or xmlns == own then
			if name == "body" then body = true;
			elseif name == "subject" then subject = true;
			elseif name == "thread" then thread = true; end
		end
		if xmlns == xmlns_sid then
			-- the last of the room's own counts, as it always did
			if name == "stanza-id" and tag.attr.by == room then sid = tag; end
		elseif xmlns == xmlns_delay then
			if name == "delay" and not delay then delay = tag; end
		elseif xmlns == xmlns_mam then
			if name == "result" and not result then result = tag; end
		end
		-- what roomlog.withdrawal() looks for, in whatever namespace
		if name == "retract" or name == "apply-to" then withdrawing = true; end
	end
	-- a subject change (XEP-0045 §8.1): a <subject/> with a <body/> or a
	-- <thread/> is a message
	subject = subject and not body and not thread;
	local m = {
		type = t;
		id = stanza.attr.id;
		queryid = result and result.attr.queryid;
		subject = subject;
		body = body;
	};
	if t == "groupchat" and (subject or body) then
		-- the subject and messages are kept for later sessions, and logged
		m.payload = send.shared_payload(stanza);
		local stamp = delay and delay.attr.from == room and datetime.parse(delay.attr.stamp);
		m.delayed = stamp and true or false;
		m.stamp = stamp or now();
		-- bounded: the core keeps it per membership and stores it
		if sid then m.stanza_id = roomlog.bounded_id(sid.attr.id); end
	end
	if t == "groupchat" and withdrawing then
		-- a XEP-0424 retraction or XEP-0425 moderation (minimix_log.lib.lua)
		m.withdraw = roomlog.withdrawal(stanza, nick);
	end
	return m;
end
local read = { stanza = nil, room = nil, nick = nil, m = nil };

local function incoming_message(event)
	local stanza = event.stanza;
	-- a page of a room's archive the backfill asked for
	if backfill.takes(stanza) then return true; end
	local account = stanza.attr.to;
	-- in a room without an archive, the module's stanza-id (minimix_mam.lib.lua)
	stanza = mam.stamp(stanza, account);
	event.stanza = stanza;
	local room, nick, m;
	if stanza == read.stanza and send.shared_unchanged(stanza) then
		room, nick, m = read.room, read.nick, read.m;
	else
		room, nick = split_room(stanza.attr.from);
	end
	if not account or not room or not core:member(account, room) then return; end
	if not m then
		m = read_message(stanza, room, nick);
		-- shared_unchanged() vouches for the object only once its payload is taken
		read.stanza, read.room, read.nick, read.m = m.payload and stanza or nil, room, nick, m;
	end
	if m.payload then
		roomlog.message(account, room, nick, stanza, m);
	end
	if m.withdraw then
		-- the log, the account's archive copy and the catch-up ring keep
		-- a tombstone in place of the message withdrawn
		local kept = core:kept(room, m.withdraw.id);
		local tomb = roomlog.withdraw(account, room, m.withdraw, stanza, kept and xml_parse(kept));
		if tomb then core:withdraw(room, m.withdraw.id, tomb); end
	end
	local ctx = { account = account, room = room, stanza = stanza };
	local handled = perform(ctx, core:room_message(account, room, nick, m, true));
	-- the devices that are away hear of it by push
	push.message(account, room, nick, stanza, m);
	return handled;
end

-- Priority 10: before mod_presence (0), mod_message (-1), mod_carbons (-0.5)
-- and mod_mam (0) see room traffic to the bare JID, which they would hand to
-- every available session, or bounce; after mod_blocklist (100).
-- Answers to the IQs sessions sent through the account.
local function incoming_iq(event)
	local stanza = event.stanza;
	local t = stanza.attr.type;
	if t ~= "result" and t ~= "error" then return; end
	local account = stanza.attr.to;
	local room, nick = split_room(stanza.attr.from);
	if not account or not room or not stanza.attr.id then return; end
	local condition;
	if t == "error" then condition = select(2, stanza:get_error()); end
	local ctx = { account = account, room = room, stanza = stanza };
	return perform(ctx, core:room_iq(account, room, nick, stanza.attr.id, t == "error", condition));
end

module:hook("presence/bare", incoming_presence, 10);
module:hook("message/bare", incoming_message, 10);
module:hook("iq/bare", incoming_iq, 10);

-- Every deadline is the core's (unanswered IQs, joins and leaves, re-join
-- delays, pings asked for later): one repeating timer asks what is due.
-- Each module instance starts its own; a reload hands the core, and with it
-- every deadline, to the new instance, while Prosody drops the old one's
-- timers.
local tick_interval = 1;
module:add_timer(tick_interval, function()
	perform({}, core:tick(now()));
	return tick_interval;
end);

-- The libraries' own hooks, timers, commands and items.
roominfo.init(mm);
links.init(mm);
backfill.init(mm, roomlog);
persist.init(mm);
operators.init(mm);
bookmarks.init(mm);
mam.init(mm);
push.init(mm);
persist.start();

-- Sessions come and go ----------------------------------------------------------

-- A session that went without leaving stays out of the rooms' view: when
-- the room showed its presence, the room now sees the next device's.
module:hook("resource-unbind", function(event)
	local account, resource = session_account(event.session);
	if account then
		perform({ account = account }, core:session_gone(account, resource));
	end
end);

-- A session that stream management keeps hibernating cannot hold the
-- account in a room the user left from the last connected device; what
-- the core sends it meanwhile is queued and delivered when it resumes.
-- Priority 1: before mod_cloud_notify (0) pushes for what the session had
-- not acknowledged, which the push library tells from later copies.
module:hook("smacks-hibernation-start", function(event)
	push.hibernating(event);
	local account, resource = session_account(event.origin);
	if account then core:session_reachable(account, resource, false); end
end, 1);
module:hook("smacks-hibernation-end", function(event)
	local account, resource = session_account(event.resumed or event.origin);
	if account then core:session_reachable(account, resource, true); end
end);

-- mod_smacks reports stanzas it could not deliver before it bounces them; a
-- forked room stanza must never bounce back to the room (Prosody's MUC, and
-- others, kick occupants whose messages bounce).
module:hook("delivery/failure", function(event)
	local session, stanza = event.session, event.stanza;
	local account = session_account(session);
	local room = account and stanza.attr.from and split_room(stanza.attr.from);
	if room and core:delivery_failed(account, room) then
		metrics.bounces:add(1);
		return true;
	end
end, 10);

-- Reload keeps memberships and sessions: the old core is handed over, and
-- the rooms see nothing of it; the configuration's limits, changed or not,
-- apply to it.  The lost links, what waits to be written to the room log,
-- and what the start-up restore has yet to read go over too.
local handed_over, reloaded = false, false;
function module.save()
	handed_over = true;
	return { core = core, links_lost = links.save(), log = roomlog.save(), unread = persist.save(),
		occupant_ids = occupant_ids };
end

function module.restore(data)
	if data and data.core then
		local ok, err = data.core:set_limits(limits);
		if not ok then
			module:log("warn", "Could not apply the new limits: %s", err);
		end
		core:close();
		core = data.core;
		core:clock(now);
		mm.core = core;
		reloaded = true;
	end
	if data and type(data.occupant_ids) == "table" then occupant_ids = data.occupant_ids; end
	if data and data.log then roomlog.restore(data.log); end
	if data and data.links_lost then links.restore(data.links_lost); end
	-- an instance that handed nothing over had read everything
	if reloaded then persist.restore(data.unread); end
end

function module.unload()
	backfill.stop();
	-- Memberships are the account's, not the module's: unloading leaves the
	-- rooms alone and forgets them; sessions fall back to plain MUC.
	-- On a reload, save() handed the core (and what waits to be written
	-- to the room log) to the new instance: keep it.
	if not handed_over then
		core:close();
		roomlog.flush();
	end
end
