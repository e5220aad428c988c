-- mod_minimix: the account, not each client session, is the occupant of
-- XEP-0045 rooms.  Clients keep speaking plain MUC; this shim hooks their
-- room traffic, asks the C core (minimix.so) what to do, and does it.
--
-- Layers: protocol decisions live in the core (minimix.c); this file only
-- reads stanzas into core calls and carries out the core's actions.

local st = require "util.stanza";
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local xml_parse = require "util.xml".parse;
local new_cache = require "util.cache".new;
local now = require "util.time".now;
local datetime = require "util.datetime";

local bare_sessions = prosody.bare_sessions;
local xml_escape = st.xml_escape;

local xmlns_muc = "http://jabber.org/protocol/muc";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";
local xmlns_carbons = "urn:xmpp:carbons:2";
local xmlns_forward = "urn:xmpp:forward:0";
local xmlns_ping = "urn:xmpp:ping";
local xmlns_mam = "urn:xmpp:mam:2";
local xmlns_stanzas = "urn:ietf:params:xml:ns:xmpp-stanzas";
local xmlns_delay = "urn:xmpp:delay";
local xmlns_bookmarks = "urn:xmpp:bookmarks:1";
local xmlns_sid = "urn:xmpp:sid:0";

-- What the running Prosody offers (0.12 or 13): the one place that tells
-- them apart.  Code below asks this table, never a version.
local offers = {
	-- 13: roles and permissions (module:default_permission, module:may),
	-- which ad-hoc commands are checked against; 0.12 has neither, its
	-- ad-hoc commands are for "local_user"s.
	roles = type(module.default_permission) == "function" and type(module.may) == "function";
	-- 13: mod_admin_shell takes commands from modules ("shell-command"
	-- items); 0.12's shell only runs Lua lines against the module table.
	-- Both came with 13.0: its version says so, and a build without a
	-- version number ("hg:…") is told by its roles API.
	shell_commands = false;
	-- 13: util.datetime writes fractions of a second, and 13's MUC stamps
	-- its history with them; 0.12's takes whole seconds only (a fraction
	-- is an error there).
	fractional_stamps = false;
};
do
	local major = tonumber(tostring(prosody.version or ""):match("^(%d+)%."));
	if major then
		offers.shell_commands = major >= 13;
	else
		offers.shell_commands = offers.roles;
	end
	local ok, text = pcall(datetime.datetime, 0.5);
	offers.fractional_stamps = ok and type(text) == "string" and text:find(".", 1, true) ~= nil;
end

-- A XEP-0082 stamp as the running Prosody writes them: a catch-up stamp in
-- whole seconds would sort before the room's own stamps of that second.
local function stamp_text(t)
	if offers.fractional_stamps then return datetime.datetime(t); end
	return datetime.datetime(math.floor(t));
end

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

-- Text bytes of the cached stanzas kept parsed for replay (below).
local parsed_max_bytes = limit_option("minimix_max_parsed_bytes", 512 * 1024);

-- How often the last message seen per room is written (memberships
-- themselves are written as soon as they change).
local seen_interval = limit_option("minimix_seen_interval", 30);

-- XEP-0402 bookmarks with autojoin are the account's memberships.
local use_bookmarks = module:get_option_boolean("minimix_bookmarks", true);

-- How often the account checks, by XEP-0410 self-ping, that it is still in
-- each room (and 5 s after a server-to-server link to the room's host fell).
local ping_interval = limit_option("minimix_ping_interval", 300);

-- Memberships survive restarts here (any storage driver: internal, SQL).
local store = module:open_store("minimix");

-- The room log, once per room on this host, and the opt-in copy into the
-- accounts' own archives: minimix_log.lib.lua (README "Room log").
local roomlog = module:require("minimix_log");
-- with the log, a later session's catch-up is read from it (per span)
limits.log_history = roomlog.serves;

-- Statistics, in Prosody's own views (admin shell, OpenMetrics).
local metric_deliveries = module:metric("counter", "deliveries", "",
	"Room stanzas forked to client sessions", {}):with_labels();
local metric_replays = module:metric("counter", "replays", "",
	"Cached room stanzas replayed to client sessions that joined later", {}):with_labels();
local metric_bounces = module:metric("counter", "suppressed_bounces", "",
	"Undeliverable forks kept from bouncing back to rooms", {}):with_labels();
local metric_events = module:metric("counter", "account_events", "",
	"Accounts joining, leaving, removed from and re-joining rooms", { "event" });
local metric_refusals = module:metric("counter", "refusals", "",
	"Requests refused by a limit or as malformed", { "reason" });
local metric_state = module:metric("gauge", "state", "",
	"Accounts with memberships, memberships, joined sessions, pending IQs", { "kind" });

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

-- Remote domains whose server-to-server link went down, so that the account
-- asks its rooms there again once the link is back.  Bounded: beyond
-- links_lost_size domains the one lost longest ago is forgotten (its rooms
-- are still pinged every minimix_ping_interval).
local links_lost_size = 1024;
local links_lost = new_cache(links_lost_size);

-- Reload keeps memberships and sessions: the old core is handed over, and
-- the rooms see nothing of it; the configuration's limits, changed or not,
-- apply to it.  The lost links are handed over too.
local handed_over, reloaded = false, false;
function module.save()
	handed_over = true;
	-- what waits to be written to the room log goes over too
	return { core = core, links_lost = links_lost, log = roomlog.save() };
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
		reloaded = true;
	end
	if data and data.log then roomlog.restore(data.log); end
	if data and data.links_lost then
		-- oldest first, so that the order of forgetting stays
		local lost = {};
		for remote in data.links_lost:items() do lost[#lost+1] = remote; end
		for i = #lost, 1, -1 do links_lost:set(lost[i], true); end
	end
end

function module.unload()
	-- Memberships are the account's, not the module's: unloading leaves the
	-- rooms alone and forgets them; sessions fall back to plain MUC.
	-- On a reload, save() handed the core (and what waits to be written
	-- to the room log) to the new instance: keep it.
	if not handed_over then
		core:close();
		roomlog.flush();
	end
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

-- Serialize a stanza without its 'to', for the core's caches.
local function payload_of(stanza)
	local to = stanza.attr.to;
	stanza.attr.to = nil;
	local s = tostring(stanza);
	stanza.attr.to = to;
	return s;
end

local function add_codes(stanza, codes)
	local x = stanza:get_child("x", xmlns_muc_user);
	if not x then
		stanza:tag("x", { xmlns = xmlns_muc_user });
		x = stanza.tags[#stanza.tags];
		stanza:up();
	end
	for _, code in ipairs(codes) do
		x:tag("status", { xmlns = xmlns_muc_user, code = tostring(code) }):up();
	end
end

-- Cached stanzas are replayed to every device that joins later: parse each
-- text once (the copies are re-addressed, never changed in place).  A
-- parsed presence weighs about 1.7 KB of Lua heap: 256 of them bound the
-- cache near 450 KB, and cover the occupants of most rooms a device joins.
-- The texts are bounded in bytes too (minimix_max_parsed_bytes), so that a
-- room's large stanzas cannot fill the heap; one larger than that is parsed
-- for each replay and not kept.
local parsed_bytes = 0;
local parsed = new_cache(256, function(payload) parsed_bytes = parsed_bytes - #payload; end);
local function parse_cached(payload)
	local stanza = parsed:get(payload);
	if not stanza then
		stanza = xml_parse(payload);
		if stanza and #payload <= parsed_max_bytes then
			parsed:set(payload, stanza);
			parsed_bytes = parsed_bytes + #payload;
			while parsed_bytes > parsed_max_bytes do
				local oldest = parsed:tail();
				parsed:set(oldest, nil); -- a removal: no eviction callback
				parsed_bytes = parsed_bytes - #oldest;
			end
		end
	end
	return stanza;
end

-- Prosody's MUC routes one stanza object to every occupant, changing only
-- 'to'.  Its text without 'to' is taken once, for the core's caches and for
-- the copies: each session then gets that text with its own address put in
-- front, instead of a serialization of its own.  The text stands for the
-- object only while the object is as it was (its attributes and children).
local shared = { stanza = nil, payload = nil, tail = nil, len = 0, tags = 0, nattr = 0, attr = {} };

local function shared_unchanged(stanza)
	if stanza ~= shared.stanza or #stanza ~= shared.len or #stanza.tags ~= shared.tags then
		return false;
	end
	local attr, n = shared.attr, 0;
	for k, v in pairs(stanza.attr) do
		if k ~= "to" then
			if attr[k] ~= v then return false; end
			n = n + 1;
		end
	end
	return n == shared.nattr;
end

local function shared_payload(stanza)
	if not shared_unchanged(stanza) then
		local payload = payload_of(stanza);
		local attr, n = {}, 0;
		for k, v in pairs(stanza.attr) do
			if k ~= "to" then attr[k], n = v, n + 1; end
		end
		shared.stanza, shared.payload, shared.len, shared.tags = stanza, payload, #stanza, #stanza.tags;
		shared.attr, shared.nattr = attr, n;
		-- what follows "<name": attributes and children
		shared.tail = payload:sub(#stanza.name + 2);
	end
	return shared.payload;
end

-- " to='full JID'" of each session, escaped once
local to_attr = setmetatable({}, { __mode = "k" });

-- What session.send does (Prosody's sessionmanager), with the text taken
-- from the shared serialization when the stanza filters (mod_smacks, CSI)
-- handed back the object unchanged.  Sessions without that shape (BOSH)
-- get session.send.
local function send_shared(session, stanza)
	local filter, rawsend = session.filter, session.rawsend;
	if not (filter and rawsend) then return session.send(stanza); end
	local t = filter("stanzas/out", stanza);
	if not t then return true; end
	if t == stanza and shared_unchanged(stanza) then
		local to = to_attr[session];
		if not to then
			to = " to='" .. xml_escape(session.full_jid) .. "'";
			to_attr[session] = to;
		end
		return rawsend("<" .. stanza.name .. to .. shared.tail);
	end
	return rawsend(t);
end

-- Send to one session of the account.  A session that is gone gets nothing
-- and nothing bounces: a bounce to the room would get the account kicked.
-- Without the status codes that were another session's news.
local function drop_codes(stanza, codes)
	local x = stanza:get_child("x", xmlns_muc_user);
	if not x then return; end
	local drop = {};
	for _, code in ipairs(codes) do drop[tostring(code)] = true; end
	x:maptags(function(tag)
		if tag.name == "status" and drop[tag.attr.code] then return nil; end
		return tag;
	end);
end

local function to_session(account, resource, stanza, id, codes, dropped)
	local user = bare_sessions[account];
	local session = user and user.sessions[resource];
	if not session then return; end
	if codes or dropped then
		stanza = st.clone(stanza);
		if dropped then drop_codes(stanza, dropped); end
		if codes then add_codes(stanza, codes); end
	end
	-- re-address, send, restore: as Prosody's MUC does for its occupants
	local old_to, old_id = stanza.attr.to, stanza.attr.id;
	stanza.attr.to = session.full_jid;
	if id then
		stanza.attr.id = id;
		session.send(stanza);
	elseif stanza == shared.stanza then
		send_shared(session, stanza);
	else
		session.send(stanza);
	end
	stanza.attr.to, stanza.attr.id = old_to, old_id;
end

local function as_account(stanza, account, id)
	stanza.attr.from = account;
	if id then stanza.attr.id = id; end
	module:send(stanza);
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

local function occupant_jid(room, nick)
	if nick then return room .. "/" .. nick; end
	return room;
end

local perform;

-- Persistence ---------------------------------------------------------------

-- What the start-up restore has not read yet (restore_step, below): the
-- store's list of accounts (all), the record of each account listed
-- (users), and the bookmarks to reconcile.  An account's record is not
-- written before it was read: the rooms joined meanwhile would replace
-- those stored.  Such a write waits in held until the read.
local unread = { all = true, users = {}, bookmarks_all = true, bookmarks = {}, held = {},
	delay = 1, failing = nil };

local function write_account(account)
	local username = jid_split(account);
	if unread.all or unread.users[username] then
		unread.held[account] = true;
		return;
	end
	local rooms, any = {}, false;
	for _, m in ipairs(core:memberships(account)) do
		if m.persistent then
			rooms[m.room] = { nick = m.nick, password = m.password,
				last_id = m.last_id, last_stamp = m.last_stamp,
				-- when the account was in: what its sessions may read of the log
				spans = m.spans[1] and m.spans or nil };
			any = true;
		end
	end
	local ok, err = store:set(username, any and rooms or nil);
	if not ok then
		module:log("error", "Could not store the rooms of %s: %s", account, err);
	end
end

-- level 2: membership changes only; 1: also the last message seen
local function flush(level)
	for _, account in ipairs(core:take_dirty(level)) do
		write_account(account);
	end
end

local flush_soon = false;
local function membership_changed()
	if flush_soon then return; end
	flush_soon = true;
	module:add_timer(0, function()
		flush_soon = false;
		flush(2);
	end);
end

local bookmark_follows; -- defined with the bookmarks below

local event_log = {
	joined = "%s is in %s";
	left = "%s left %s";
	removed = "%s is out of %s (%s)";
	rejoining = "%s joins %s again (%s)";
};

-- Something happened to a membership: count, log, persist, bookmarks.
local function note_event(account, room, event, reason)
	metric_events:with_labels(event):add(1);
	if reason then
		module:log("info", event_log[event], account, room, reason);
	else
		module:log("info", event_log[event], account, room);
	end
	membership_changed();
	if (event == "left" or event == "removed") and bookmark_follows then
		bookmark_follows(account, room);
	end
end

-- Carry out the core's decision.  ctx: account, room, stanza (the one being
-- handled), origin (the session's, for outgoing stanzas).
-- The core's results: handled, actions, event, reason; or on a refusal
-- nil, token, condition, type, text.
function perform(ctx, handled, actions, event, reason, text)
	if handled == nil then
		-- the core refused (limits, malformed input): the asker alone hears it
		-- (a bookmark or the start-up restore has no stanza and no asker)
		module:log(ctx.origin and "debug" or "warn", "Refused %s to %s for %s: %s",
			ctx.stanza and ctx.stanza.name or "a join", ctx.room, ctx.account, actions);
		metric_refusals:with_labels(actions):add(1);
		if ctx.origin then
			ctx.origin.send(st.error_reply(ctx.stanza, reason, event, text));
		end
		return true;
	end
	if event then note_event(ctx.account, ctx.room, event, reason); end
	if not handled then return nil; end
	if not actions then return true; end
	local stanza = ctx.stanza;
	-- the session's own address, before a rewrite makes it the account's
	local sender = ctx.origin and ctx.origin.full_jid;
	local delivered, replayed = 0, 0;
	for i = 1, #actions do
		local a = actions[i];
		local op, room = a.op, a.room;
		local account = a.account or ctx.account;
		if op == "deliver" then
			to_session(account, a.resource, stanza, a.id, a.codes);
			delivered = delivered + 1;
		elseif op == "replay" then
			replayed = replayed + 1;
			local cached = parse_cached(a.payload);
			if cached then
				if a.stamp and not cached:get_child("delay", xmlns_delay) then
					cached = st.clone(cached);
					-- catch-up: when the room said it (XEP-0203)
					cached:tag("delay", { xmlns = xmlns_delay, from = room,
						stamp = stamp_text(a.stamp) }):up();
				end
				to_session(account, a.resource, cached, a.id, a.codes, a.drop_codes);
			end
		elseif op == "replay_log" then
			-- catch-up from the room log, within the membership's spans
			for _, said in ipairs(roomlog.replay(room, a)) do
				local item = said[1];
				local has_delay = false;
				for delay in item:childtags("delay", xmlns_delay) do
					if delay.attr.from == room then has_delay = true; end
				end
				if not has_delay then
					item:tag("delay", { xmlns = xmlns_delay, from = room, stamp = stamp_text(said[2]) }):up();
				end
				to_session(account, a.resource, item);
				replayed = replayed + 1;
			end
		elseif op == "send_join" then
			if a.from_request then
				local x = a.password and stanza:get_child("x", xmlns_muc);
				if x then
					-- the password the account entered with: a later
					-- device's join may lack it, and a refusal would end
					-- the membership
					x:maptags(function(tag)
						if tag.name == "password" then return nil; end
						return tag;
					end);
					x:text_tag("password", a.password, { xmlns = xmlns_muc });
				end
				as_account(stanza, account);
			else
				local join = st.presence({ from = account, to = room .. "/" .. a.nick })
					:tag("x", { xmlns = xmlns_muc });
				-- explicit namespaces: a local MUC reads the stanza as built
				if a.password then
					join:text_tag("password", a.password, { xmlns = xmlns_muc });
				end
				if a.since then
					join:tag("history", { xmlns = xmlns_muc,
						since = stamp_text(a.since) }):up();
				end
				module:send(join:up());
			end
			module:log("debug", "%s joins %s as %s", account, room, a.nick);
		elseif op == "send_as_account" then
			as_account(stanza, account, a.id);
		elseif op == "send_leave" then
			module:send(st.presence({ from = account, to = room .. "/" .. a.nick, type = "unavailable" }));
		elseif op == "send_presence" then
			local pres = a.payload == "" and st.presence() or xml_parse(a.payload);
			if pres then
				pres.attr.from, pres.attr.to = account, room .. "/" .. a.nick;
				module:send(pres);
			end
		elseif op == "rejoin_later" then
			module:log("debug", "%s joins %s again in %ds", account, room, a.delay);
		elseif op == "event" then
			note_event(account, room, a.event, a.reason);
		elseif op == "join_error" then
			-- the join was never answered: what the room would have said
			to_session(account, a.resource, st.presence({ type = "error", id = a.id,
					from = occupant_jid(room, a.nick) })
				:tag("x", { xmlns = xmlns_muc }):up()
				:tag("error", { type = a.error_type })
					:tag(a.condition, { xmlns = xmlns_stanzas }):up()
				:up());
		elseif op == "self_stub" then
			-- the room's own was beyond the byte limits: a join still ends
			-- with a self-presence
			local pres = st.presence({ from = room .. "/" .. a.nick })
				:tag("x", { xmlns = xmlns_muc_user })
					:tag("item", { xmlns = xmlns_muc_user, affiliation = a.affiliation, role = a.role }):up()
					:tag("status", { xmlns = xmlns_muc_user, code = "110" }):up();
			to_session(account, a.resource, pres:up(), a.id, a.codes);
			replayed = replayed + 1;
		elseif op == "subject_stub" then
			-- and with the subject: the room's was beyond them too
			to_session(account, a.resource, st.message({ from = room, type = "groupchat" })
				:tag("subject"):up());
			replayed = replayed + 1;
		elseif op == "reflect_leave" then
			local pres = st.presence({ from = room .. "/" .. a.nick, type = "unavailable", id = a.id })
				:tag("x", { xmlns = xmlns_muc_user })
					:tag("item", { xmlns = xmlns_muc_user, affiliation = a.affiliation, role = "none" }):up()
					:tag("status", { xmlns = xmlns_muc_user, code = "110" }):up();
			for _, code in ipairs(a.codes or {}) do
				pres:tag("status", { xmlns = xmlns_muc_user, code = tostring(code) }):up();
			end
			to_session(account, a.resource, pres:up());
		elseif op == "carbon" then
			-- XEP-0280 'sent': what another device of the account said
			local copy = st.clone(stanza);
			copy.attr.from, copy.attr.xmlns = sender, "jabber:client";
			to_session(account, a.resource, st.message({ from = account, type = stanza.attr.type })
				:tag("sent", { xmlns = xmlns_carbons })
					:tag("forwarded", { xmlns = xmlns_forward })
						:add_child(copy):up():up());
		elseif op == "send_ping" then
			module:send(st.iq({ type = "get", id = a.id, from = account,
					to = occupant_jid(room, a.nick) })
				:tag("ping", { xmlns = xmlns_ping }):up());
		elseif op == "ping_later" then
			module:log("debug", "Pinging the rooms on %s again in %ds",
				room:match("@(.*)$") or room, a.delay);
		elseif op == "iq_error" then
			to_session(account, a.resource, st.iq({ type = "error", id = a.id,
					from = occupant_jid(room, a.nick) })
				:tag("error", { type = a.error_type })
					:tag(a.condition, { xmlns = xmlns_stanzas }):up()
				:up());
		end
		-- "drop": nothing to do, and the stanza stops here
	end
	if delivered > 0 then metric_deliveries:add(delivered); end
	if replayed > 0 then metric_replays:add(replayed); end
	return true;
end

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
		payload = t ~= "error" and shared_payload(stanza) or nil;
	});
	local ctx = { account = account, room = room, stanza = stanza };
	return perform(ctx, core:room_presence(account, room, nick, p));
end

-- What the shim reads of a room message, for the core and the log.  A local
-- room hands the same object to each of its local accounts (changing only
-- 'to'): it is read once, and again only if the object changed.
local function read_message(stanza, room)
	local t = stanza.attr.type or "normal";
	local body = stanza:get_child("body") ~= nil;
	-- a subject change (XEP-0045 §8.1): a <subject/> with a <body/> or a
	-- <thread/> is a message
	local subject = stanza:get_child("subject") ~= nil and not body
		and stanza:get_child("thread") == nil;
	local result = stanza:get_child("result", xmlns_mam);
	local m = {
		type = t;
		id = stanza.attr.id;
		queryid = result and result.attr.queryid;
		subject = subject;
		body = body;
	};
	if t == "groupchat" and (subject or body) then
		-- the subject and messages are kept for later sessions, and logged
		m.payload = shared_payload(stanza);
		local delay = stanza:get_child("delay", xmlns_delay);
		local stamp = delay and delay.attr.from == room and datetime.parse(delay.attr.stamp);
		m.delayed = stamp and true or false;
		m.stamp = stamp or now();
		for sid in stanza:childtags("stanza-id", xmlns_sid) do
			-- bounded: the core keeps it per membership and stores it
			if sid.attr.by == room then m.stanza_id = roomlog.bounded_id(sid.attr.id); end
		end
	end
	return m;
end
local read = { stanza = nil, room = nil, nick = nil, m = nil };

local function incoming_message(event)
	local stanza = event.stanza;
	local account = stanza.attr.to;
	local room, nick, m;
	if stanza == read.stanza and shared_unchanged(stanza) then
		room, nick, m = read.room, read.nick, read.m;
	else
		room, nick = split_room(stanza.attr.from);
	end
	if not account or not room or not core:member(account, room) then return; end
	if not m then
		m = read_message(stanza, room);
		-- shared_unchanged() vouches for the object only once its payload is taken
		read.stanza, read.room, read.nick, read.m = m.payload and stanza or nil, room, nick, m;
	end
	if m.payload then
		roomlog.message(account, room, nick, stanza, m);
	end
	local ctx = { account = account, room = room, stanza = stanza };
	return perform(ctx, core:room_message(account, room, nick, m));
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

-- Is the account still in its rooms?  Rooms drop occupants whose traffic
-- bounces, which a broken server-to-server link causes without a word to
-- the account: ask after such a link went down, and now and then.
module:add_timer(ping_interval, function()
	perform({}, core:ping_due(nil, now()));
	return ping_interval;
end);

local function ping_host_later(remote, delay)
	if not remote then return; end
	local ok, err = core:ping_later(remote, delay);
	if not ok then
		module:log("warn", "Could not plan pinging the rooms on %s: %s", remote, err);
	end
end
-- A link that fell: ask soon (a failed ask comes back as "ping_later").
-- A link that came back up after that: the room may have dropped the
-- account meanwhile, ask again.  A first link needs no asking.
local function link_down(remote)
	if not remote then return; end
	links_lost:set(remote, true);
	ping_host_later(remote, 5);
end
local function link_up(remote)
	if not remote or not links_lost:get(remote) then return; end
	links_lost:set(remote, nil);
	ping_host_later(remote, 1);
end
module:hook("s2sout-destroyed", function(event) link_down(event.session.to_host); end);
module:hook("s2sin-destroyed", function(event) link_down(event.session.from_host); end);
module:hook("s2sout-established", function(event) link_up(event.session.to_host); end);
module:hook("s2sin-established", function(event) link_up(event.session.from_host); end);

-- The last message seen per room: written now and then, and at shutdown.
module:add_timer(seen_interval, function()
	flush(1);
	return seen_interval;
end);
module:hook_global("server-stopping", function() flush(1); end);

module:hook_global("stats-update", function()
	local stats = core:stats();
	metric_state:with_labels("accounts"):set(stats.accounts);
	metric_state:with_labels("memberships"):set(stats.memberships);
	metric_state:with_labels("sessions"):set(stats.sessions);
	metric_state:with_labels("iqs"):set(stats.iqs);
end);

-- v when it is of that type (a stored field written by hand), else nil
local function opt(v, kind)
	if type(v) == kind then return v; end
end

-- After a restart the accounts join their rooms again: the stored
-- memberships of one account, as read from the store.  How many joins.
local function restore_account(username, rooms)
	local account = username .. "@" .. module.host;
	if type(rooms) ~= "table" then
		module:log("warn", "The stored rooms of %s are unusable (%s): nothing to join", account, type(rooms));
		return 0;
	end
	local restored = 0;
	for stored, rec in pairs(rooms) do
		-- stored by an older version, or by hand: prepared as the router does
		local room = type(stored) == "string" and (prep_room(stored) or stored);
		if not room or type(rec) ~= "table" or type(rec.nick) ~= "string" then
			module:log("warn", "A stored room of %s is unusable: %s", account, tostring(stored));
		else
			local ctx = { account = account, room = room };
			local handled = perform(ctx, core:restore(account, room, rec.nick,
				opt(rec.password, "string"), opt(rec.last_id, "string"), opt(rec.last_stamp, "number")));
			if handled then
				restored = restored + 1;
				if type(rec.spans) == "table" and core:member(account, room) then
					local ok, err = core:set_spans(account, room, rec.spans);
					if not ok then
						module:log("warn", "The stored spans of %s in %s are unusable (%s): its catch-up starts now",
							account, room, err);
					end
				end
			end
		end
	end
	return restored;
end

-- Bookmarks (XEP-0402) ----------------------------------------------------------
-- A conference bookmark with autojoin makes the account join (nick from the
-- bookmark, else the localpart; password from the bookmark), even with no
-- session online; retracting it, or autojoin false, makes the account leave.
-- The other way round, when the account leaves a room or is removed, the
-- bookmark's autojoin is turned off, so that no client joins it again.

local mod_pep = use_bookmarks and module:depends("pep");

local function bookmark_fields(item)
	local conference = item and item:get_child("conference", xmlns_bookmarks);
	if not conference then return false; end
	local autojoin = conference.attr.autojoin == "true" or conference.attr.autojoin == "1";
	return autojoin, conference:get_child_text("nick"), conference:get_child_text("password");
end

-- Rooms each account is in because of an autojoin bookmark: when the whole
-- node goes (a purge, as mod_bookmarks does for an empty legacy list), the
-- account leaves them.
local bookmarked = {};

local function bookmark_changed(username, room_jid, item)
	local account = username .. "@" .. module.host;
	local room = prep_room(room_jid);
	if not room then
		module:log("debug", "Ignoring a bookmark of %s for %q: not a room JID", account, room_jid);
		return;
	end
	local autojoin, nick, password = bookmark_fields(item);
	local ctx = { account = account, room = room };
	local rooms = bookmarked[account] or {};
	bookmarked[account] = rooms;
	if autojoin then
		rooms[room] = room_jid; -- the item's own id, for bookmark_follows
		perform(ctx, core:restore(account, room, nick or username, password));
	else
		rooms[room] = nil;
		perform(ctx, core:account_leave(account, room));
	end
end

local function bookmarks_gone(username)
	local account = username .. "@" .. module.host;
	for room in pairs(bookmarked[account] or {}) do
		perform({ account = account, room = room }, core:account_leave(account, room));
	end
	bookmarked[account] = nil;
end

if use_bookmarks then
	local listeners = {};
	module:handle_items("pep-service", function(event)
		local service, username = event.item.service, jid_split(event.item.jid);
		local function published(e) bookmark_changed(username, e.id, e.item); end
		local function retracted(e)
			if e.node == xmlns_bookmarks then bookmark_changed(username, e.id, nil); end
		end
		local function emptied(e)
			if e.node == xmlns_bookmarks then bookmarks_gone(username); end
		end
		service.events.add_handler("item-published/" .. xmlns_bookmarks, published);
		service.events.add_handler("item-retracted", retracted);
		service.events.add_handler("node-purged", emptied);
		service.events.add_handler("node-deleted", emptied);
		listeners[service] = { published, retracted, emptied };
	end, function(event)
		local service = event.item.service;
		local l = listeners[service];
		if l then
			service.events.remove_handler("item-published/" .. xmlns_bookmarks, l[1]);
			service.events.remove_handler("item-retracted", l[2]);
			service.events.remove_handler("node-purged", l[3]);
			service.events.remove_handler("node-deleted", l[3]);
			listeners[service] = nil;
		end
	end, true);

	function bookmark_follows(account, room)
		local username = jid_split(account);
		-- the item as the client named it (the room is the prepared JID)
		local id = bookmarked[account] and bookmarked[account][room];
		if type(id) == "string" then room = id; end
		local service = mod_pep.get_pep_service(username);
		local ok, items = service:get_items(xmlns_bookmarks, true, room);
		local item = ok and items and items[room];
		if not item or not bookmark_fields(item) then return; end
		item = st.clone(item);
		item:get_child("conference", xmlns_bookmarks).attr.autojoin = "false";
		local published, err = service:publish(xmlns_bookmarks, true, room, item);
		if not published then
			module:log("warn", "Could not turn off autojoin of %s's bookmark for %s: %s",
				account, room, err);
		end
	end
end

-- The start-up restore ---------------------------------------------------------
-- As soon as the server runs (timers start with the main loop, after every
-- host loaded), each account joins its stored rooms, then those of its
-- bookmarks with autojoin (the core never joins a room twice, so the
-- stored membership, with its last message seen and its spans, comes
-- first).  A reload keeps the memberships and sends nothing.
--
-- The store may not answer yet (a database still starting): a failed read
-- is never taken for "no rooms".  What could not be read is read again, 1 s
-- after the first failure, then after twice as long each time, up to
-- restore_max_delay; account by account: one whose record was read is
-- restored at once and never again, one whose record failed waits without
-- holding up the others, and its bookmarks wait for it.  One warning when
-- the reads start failing, one line when all are read.
local restore_max_delay = 60;

-- The names a store lists (its users() iterator, as every driver makes it:
-- a function with its state), as a set; nil, err when it could not list
-- them (raised, or nil, err).
local function list_users(s)
	local r = table.pack(pcall(s.users, s));
	if not r[1] then return nil, tostring(r[2]); end
	if r[2] == nil then
		if r[3] ~= nil then return nil, tostring(r[3]); end
		return {}; -- nothing to list
	end
	local names = {};
	local ok, err = pcall(function()
		for username in r[2], r[3], r[4] do names[username] = true; end
	end);
	if not ok then return nil, tostring(err); end
	return names;
end

-- One account's stored rooms ({} when none are), or nil, err when the
-- store could not read them.
local function read_account(username)
	local ok, rooms, err = pcall(store.get, store, username);
	if not ok then return nil, tostring(rooms); end
	if rooms == nil and err ~= nil then return nil, tostring(err); end
	return rooms or {};
end

local function reconcile_bookmarks(username)
	local service = mod_pep.get_pep_service(username);
	local ok, found, items = pcall(service.get_items, service, xmlns_bookmarks, true);
	if not ok then
		module:log("warn", "Could not read the bookmarks of %s@%s: %s", username, module.host, found);
		return;
	end
	if found and items then
		for _, id in ipairs(items) do
			local item = items[id];
			if bookmark_fields(item) then bookmark_changed(username, id, item); end
		end
	end
end

-- A write that waited for the account's record (write_account)
local function release_held(username)
	local account = username .. "@" .. module.host;
	if unread.held[account] then
		unread.held[account] = nil;
		write_account(account);
	end
end

-- Read what can be read.  Returns nil when all was read, else the delay
-- before the next try.
local function restore_step()
	local failed;
	if unread.all then
		local names, err;
		if store.users then
			names, err = list_users(store);
		else
			module:log("warn", "The storage driver cannot list users: memberships are not restored");
			names = {};
		end
		if names then
			unread.all, unread.users = false, names;
			-- accounts with no record: their waiting writes replace nothing
			for account in pairs(unread.held) do
				local username = jid_split(account);
				if not names[username] then release_held(username); end
			end
		else
			failed = "listing the accounts: " .. err;
		end
	end
	local restored = 0;
	for username in pairs(unread.users) do
		local rooms, err = read_account(username);
		if rooms then
			unread.users[username] = nil;
			restored = restored + restore_account(username, rooms);
			release_held(username);
		else
			failed = failed or ("the rooms of " .. username .. ": " .. err);
		end
	end
	if restored > 0 then
		module:log("info", "Joining %d stored memberships again", restored);
	end
	if unread.bookmarks_all then
		local archive = use_bookmarks and module:open_store("pep_" .. xmlns_bookmarks, "archive");
		if not archive or not archive.users then
			unread.bookmarks_all = false;
		else
			local names, err = list_users(archive);
			if names then
				unread.bookmarks_all, unread.bookmarks = false, names;
			else
				failed = failed or ("listing the bookmarks: " .. err);
			end
		end
	end
	if not unread.all then
		for username in pairs(unread.bookmarks) do
			if not unread.users[username] then
				unread.bookmarks[username] = nil;
				reconcile_bookmarks(username);
			end
		end
	end
	if failed then
		if not unread.failing then
			unread.failing = now();
			module:log("warn", "Cannot read the stored memberships (%s): trying again, "
				.. "the accounts not read yet join their rooms when the store answers", failed);
		end
		local delay = unread.delay;
		unread.delay = math.min(delay * 2, restore_max_delay);
		return delay;
	end
	if unread.failing then
		module:log("info", "The stored memberships are read, %d s after the first failure",
			math.floor(now() - unread.failing + 0.5));
		unread.failing = nil;
	end
	unread.delay = 1;
	return nil;
end

module:add_timer(0, restore_step);

-- A reload hands what the start-up restore has yet to read (and the writes
-- waiting for it) to the new instance, with the core (module.save above);
-- an instance that handed nothing read everything.
do
	local save, restore = module.save, module.restore;
	function module.save()
		local data = save();
		data.unread = unread;
		return data;
	end
	function module.restore(data)
		restore(data);
		if reloaded then
			unread = data.unread or { all = false, users = {}, bookmarks_all = false, bookmarks = {},
				held = {}, delay = 1 };
		end
	end
end

-- Account-level control (XEP-0050 ad-hoc commands) --------------------------------
-- Each command acts on the account of whoever runs it: its own sessions only.

local adhoc_new = module:require("adhoc").new;
local dataforms = require "util.dataforms";
local jid_bare = require "util.jid".bare;
module:depends("adhoc");

-- Who may run a command.  13: the permission "adhoc:<node>", which every
-- role of a local account has by default (prosody:guest and up, so that
-- anonymous accounts may too, as on 0.12); an operator's role settings can
-- take it away.  0.12: any user of this host ("local_user").
local function adhoc_permission(node)
	if not offers.roles then return "local_user"; end
	module:default_permission("prosody:guest", "adhoc:" .. node);
	return "check";
end

-- One membership per line: room, nick, state, sessions joined and what is
-- held for catch-up; with_resources: and the joined sessions' resources.
local function memberships_lines(account, with_resources)
	local lines = {};
	for _, m in ipairs(core:memberships(account)) do
		local line = ("%s as %s (%s): %d session(s) joined, %d message(s) held for catch-up")
			:format(m.room, m.nick, m.state, m.sessions, m.history);
		if with_resources then
			local joined = {};
			for _, s in ipairs(core:sessions(account, m.room)) do
				if s.joined then joined[#joined+1] = s.resource; end
			end
			table.sort(joined);
			line = line .. "; sessions: " .. (#joined > 0 and table.concat(joined, ", ") or "none");
		end
		lines[#lines+1] = line;
	end
	table.sort(lines);
	return lines;
end

local function memberships_text(account)
	local lines = memberships_lines(account);
	if #lines == 0 then return "The account is in no rooms."; end
	return table.concat(lines, "\n");
end

-- The account running a command: only this host's (13's roles could let
-- an admin of another host through).
local function command_account(data)
	local username, host = jid_split(data.from);
	if not username or host ~= module.host then return nil; end
	return username .. "@" .. host;
end

local not_local = { status = "error", error = { type = "auth", condition = "forbidden",
	text = "Only accounts of this server have group chats here" } };

-- The account leaves rooms; how many it left at once, and how many it is
-- leaving (the room has not confirmed yet: it will within
-- minimix_join_timeout).
local function leave_rooms(account, rooms)
	local left, leaving = 0, 0;
	for _, room in ipairs(rooms) do
		if perform({ account = account, room = room }, core:account_leave(account, room)) then
			-- a local room answers from inside the send
			if core:member(account, room) then
				leaving = leaving + 1;
			else
				left = left + 1;
			end
		end
	end
	return left, leaving;
end

local function leave_text(left, leaving, room)
	if room then
		if left > 0 then return "Left " .. room; end
		return "Leaving " .. room .. ": the room has not confirmed yet";
	end
	if leaving == 0 then return ("Left %d room(s)"):format(left); end
	return ("Left %d room(s); leaving %d more: the rooms have not confirmed yet"):format(left, leaving);
end

local leave_form = dataforms.new({
	title = "Leave a group chat";
	{ name = "FORM_TYPE", type = "hidden", value = "urn:xmpp:minimix:leave" };
	{ name = "room", type = "list-single", label = "Room", required = true };
});

module:provides("adhoc", adhoc_new("Group chats: list", "urn:xmpp:minimix#list",
	function(_, data)
		local account = command_account(data);
		if not account then return not_local; end
		return { status = "completed", info = memberships_text(account) };
	end, adhoc_permission("urn:xmpp:minimix#list")));

module:provides("adhoc", adhoc_new("Group chats: leave one", "urn:xmpp:minimix#leave",
	function(_, data, state)
		local account = command_account(data);
		if not account then return not_local; end
		if data.action == "cancel" then return { status = "canceled" }; end
		if not state then
			local rooms = {};
			for _, m in ipairs(core:memberships(account)) do rooms[#rooms+1] = m.room; end
			table.sort(rooms);
			if #rooms == 0 then return { status = "completed", info = "The account is in no rooms." }; end
			return { status = "executing", actions = { "complete" }, form = { layout = leave_form,
				values = { room = rooms } } }, "leave";
		end
		local fields, err = leave_form:data(data.form);
		local room = not err and prep_room(fields.room);
		if not room then
			return { status = "completed", error = { message = "Choose a room to leave." } };
		end
		fields.room = room;
		local left, leaving = leave_rooms(account, { fields.room });
		if left + leaving == 0 then
			return { status = "completed", error = { message = "The account is not in " .. fields.room } };
		end
		return { status = "completed", info = leave_text(left, leaving, fields.room) };
	end, adhoc_permission("urn:xmpp:minimix#leave")));

module:provides("adhoc", adhoc_new("Group chats: leave all", "urn:xmpp:minimix#leave-all",
	function(_, data)
		local account = command_account(data);
		if not account then return not_local; end
		local rooms = {};
		for _, m in ipairs(core:memberships(account)) do rooms[#rooms+1] = m.room; end
		return { status = "completed", info = leave_text(leave_rooms(account, rooms)) };
	end, adhoc_permission("urn:xmpp:minimix#leave-all")));

-- For operators, from Prosody's admin shell (prosodyctl shell) -----------------------

-- An account of this host, as Prosody prepares JIDs; nil for anything else.
local function operator_account(jid)
	local account = jid_bare(jid_prep(tostring(jid or "")) or "");
	if not account or select(2, jid_split(account)) ~= module.host
		or not jid_split(account) then
		return nil;
	end
	return account;
end

-- ok, text
local function operator_leave(jid, room)
	local account = operator_account(jid);
	if not account then return false, "Not an account of " .. module.host .. ": " .. tostring(jid); end
	local norm = prep_room(room);
	if not norm then return false, "Not a room JID: " .. tostring(room); end
	local left, leaving = leave_rooms(account, { norm });
	if left + leaving == 0 then
		return false, account .. " is not in " .. norm;
	end
	if left > 0 then return true, account .. " leaves " .. norm; end
	return true, account .. " is leaving " .. norm .. ": the room has not confirmed yet";
end

local function state_text()
	local stats = core:stats();
	return ("%d account(s) in rooms, %d membership(s), %d session(s) joined, %d IQ(s) waiting for a room")
		:format(stats.accounts, stats.memberships, stats.sessions, stats.iqs);
end

-- 0.12 (and 13): Lua lines reaching the module table:
--   > hosts["example.com"].modules.minimix.memberships("user@example.com")
--   > hosts["example.com"].modules.minimix.leave("user@example.com", "room@muc.example.com")
--   > hosts["example.com"].modules.minimix.state()
function memberships(account) -- luacheck: ignore 131
	return memberships_text(operator_account(account) or tostring(account));
end

function leave(account, room) -- luacheck: ignore 131
	return select(2, operator_leave(account, room));
end

function state() -- luacheck: ignore 131
	return state_text();
end

-- 13: commands of their own section, e.g. `prosodyctl shell minimix
-- memberships user@example.com` or, in the shell, minimix:memberships("user@example.com").
if offers.shell_commands then
	local section, section_desc = "minimix", "Accounts in group chats (mod_minimix)";
	module:add_item("shell-command", {
		section = section; section_desc = section_desc;
		name = "memberships";
		desc = "List an account's rooms, with the sessions joined to each";
		args = { { name = "jid", type = "string" } };
		host_selector = "jid";
		handler = function(self, jid)
			local account = operator_account(jid);
			if not account then return false, "Not an account of " .. module.host .. ": " .. tostring(jid); end
			local lines = memberships_lines(account, true);
			for _, line in ipairs(lines) do self.session.print(line); end
			return true, ("%s is in %d room(s)"):format(account, #lines);
		end;
	});
	module:add_item("shell-command", {
		section = section; section_desc = section_desc;
		name = "leave";
		desc = "Make an account leave a room (every session of it)";
		args = { { name = "jid", type = "string" }, { name = "room", type = "string" } };
		host_selector = "jid";
		handler = function(_, jid, room)
			return operator_leave(jid, room);
		end;
	});
	module:add_item("shell-command", {
		section = section; section_desc = section_desc;
		name = "state";
		desc = "Count the host's accounts in rooms, memberships, joined sessions and waiting IQs";
		args = { { name = "host", type = "string" } };
		host_selector = "host";
		handler = function()
			return true, state_text();
		end;
	});
end

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
module:hook("smacks-hibernation-start", function(event)
	local account, resource = session_account(event.origin);
	if account then core:session_reachable(account, resource, false); end
end);
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
		metric_bounces:add(1);
		return true;
	end
end, 10);
