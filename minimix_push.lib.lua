-- mod_minimix's group chat push: room messages wake the account's devices that are not connected (XEP-0357, through mod_cloud_notify), as its XEP-0492 setting for the room says.

-- The account stays in its rooms while its devices come and go, so it
-- knows of every room message, its own nick there and whether the room is
-- private.  For each room message with a body (not the account's own, not
-- a subject, not history), each XEP-0357 registration of the account whose
-- device has no live session (none at all, or one that XEP-0198 keeps
-- hibernating) gets a push when the account's setting for the room says
-- so: `always`, `on-mention` or `never` from the XEP-0492 <notify/> in the
-- room's XEP-0402 bookmark, else always in a private room (members-only
-- and non-anonymous) and on-mention in a public one.  mod_cloud_notify
-- keeps the registrations and sends the pushes: this file asks it to push
-- for one registration (its "cloud-notify-ping" event) and fills in the
-- summary (its "cloud_notify/push" event); the pushes it would send by
-- itself for a room message (a hibernating session's queued copy) follow
-- the same decision, so no message is pushed twice.  A burst in a room
-- becomes one push per registration per window, its message-count saying
-- how many messages it stands for.
--
-- Nothing here reads storage per message: the registrations (the store
-- mod_cloud_notify writes), the bookmark settings and each room's privacy
-- (minimix_roominfo.lib.lua) are cached, and forgotten when they change (a
-- push enable or disable, a push error, a bookmark publish or retraction, a
-- join of the account, a room's configuration change, status 104 and 170-174).

local st = require "util.stanza";
local jid_split = require "util.jid".split;
local dataform = require "util.dataforms".new;
local new_cache = require "util.cache".new;

local xmlns_push = "urn:xmpp:push:0";
local xmlns_bookmarks = "urn:xmpp:bookmarks:1";
local xmlns_notify = "urn:xmpp:notification-settings:1";
local xmlns_reference = "urn:xmpp:reference:0";
local xmlns_reply = "urn:xmpp:reply:0";
local xmlns_data = "jabber:x:data";

local bare_sessions = prosody.bare_sessions;

local push = {};

-- Configuration (README "Push").
local enabled = module:get_option_boolean("minimix_push", true);
local settings_known = { always = true, ["on-mention"] = true, never = true };
local default_setting = module:get_option_string("minimix_push_default", "auto");
if default_setting ~= "auto" and not settings_known[default_setting] then
	module:log("warn", "minimix_push_default must be auto, always, on-mention or never; using auto");
	default_setting = "auto";
end
-- seconds a room's pushes to one registration are gathered into one
local window = module:get_option_number("minimix_push_window", 3);
if window < 0 or window > 600 then
	module:log("warn", "minimix_push_window must be from 0 to 600 seconds; using 3");
	window = 3;
end
-- the XEP-0030 identity whose XEP-0492 setting a push registration reads
local identity = module:get_option_string("minimix_push_identity", "client/phone");
local identity_category = identity:match("^([^/]*)");
-- what mod_cloud_notify puts into a summary, read from the same options
local include_body = module:get_option_boolean("push_notification_with_body", false);
local include_sender = module:get_option_boolean("push_notification_with_sender", false);
local dummy_body = module:get_option_string("push_notification_important_body", "New Message!");

local mm;
-- the counters by outcome (operators.metrics.pushes)
local pushes_sent, pushes_held, pushes_gathered;

-- mod_cloud_notify on this host: without it there is nothing to push with.
local host_session = prosody.hosts and prosody.hosts[module.host];
local function notify_loaded()
	local loaded = host_session and host_session.modules;
	return loaded ~= nil and loaded.cloud_notify ~= nil;
end

-- Registrations -------------------------------------------------------------

-- account -> list of { id = push identifier, info = what mod_cloud_notify
-- stored for it }, read from its store once, until a change.
local registrations = {};
local notify_store = module:open_store("cloud_notify");

local function registrations_of(account)
	local regs = registrations[account];
	if regs then return regs; end
	local stored, err = notify_store:get((jid_split(account)));
	regs = {};
	if not stored and err then
		-- read again with the next message
		module:log("warn", "Could not read the push registrations of %s: %s", account, err);
		return regs;
	end
	for id, info in pairs(stored or {}) do
		if type(info) == "table" and info.jid then
			regs[#regs+1] = { id = id, info = info };
		end
	end
	registrations[account] = regs;
	return regs;
end

local function forget_registrations(event)
	local origin = event.origin;
	if origin and origin.username then
		registrations[origin.username .. "@" .. module.host] = nil;
	end
end

-- The device's session, found as mod_cloud_notify finds it (the session
-- that enabled push), or by the resource or client id it registered with.
local function device_session(account, reg)
	local user = bare_sessions[account];
	if not user then return nil; end
	local info, sessions = reg.info, user.sessions;
	-- the common case, looked up at once: the device is connected
	local session = info.resource and sessions[info.resource];
	if session then return session; end
	local id, client_id = reg.id, info.client_id;
	for _, s in pairs(sessions) do
		if s.push_identifier == id or (client_id and s.client_id == client_id) then
			return s;
		end
	end
end

-- Settings: XEP-0492 in the room's XEP-0402 bookmark ------------------------

-- account -> room -> { [""] = fallback, ["client"] = ..., ["client/phone"] = ... }
-- (false: none), read from the bookmark once, until the bookmark changes.
local settings = {};

local function parse_notify(item)
	local conference = item and item:get_child("conference", xmlns_bookmarks);
	local extensions = conference and conference:get_child("extensions", xmlns_bookmarks);
	local notify = extensions and extensions:get_child("notify", xmlns_notify);
	if not notify then return false; end
	local found = {};
	for tag in notify:childtags(nil, xmlns_notify) do
		if settings_known[tag.name] then
			local category, kind = tag.attr["identity-category"], tag.attr["identity-type"];
			local key = category and (kind and category .. "/" .. kind or category) or "";
			found[key] = found[key] or tag.name;
		end
	end
	return next(found) and found or false;
end

local function room_setting(account, room)
	local rooms = settings[account];
	if not rooms then
		rooms = {};
		settings[account] = rooms;
	end
	local found = rooms[room];
	if found == nil then
		found = parse_notify(mm.bookmarks.item(account, room));
		rooms[room] = found;
	end
	-- the most specific element for the device's identity (XEP-0492 3)
	return found and (found[identity] or found[identity_category] or found[""]);
end

-- Privacy: XEP-0492's default from the room's disco#info ----------------------

-- "private" or "public" from what the room offers (minimix_roominfo.lib.lua,
-- forgotten at each join of the account and on a configuration change);
-- nil when not known.
local function privacy(room)
	local features = mm.roominfo.features(room);
	if not features then return nil; end
	return features.muc_membersonly and features.muc_nonanonymous and "private" or "public";
end

-- Mentions -----------------------------------------------------------------

local function unescape_uri(s)
	return (s:gsub("%%(%x%x)", function(hex) return string.char(tonumber(hex, 16)); end));
end

-- The body of the room's message: one object reaches every local account
-- in the room, its body is read once.
local body_of, body_text;
local function body(stanza)
	if stanza ~= body_of then
		body_of, body_text = stanza, stanza:get_child_text("body");
	end
	return body_text;
end

local function names(target, account, room, nick)
	return target == account or target == room .. "/" .. nick;
end

-- Why the message mentions the account (its occupant JID or bare JID), or nil.
local function mention_of(stanza, account, room, nick)
	local tags = stanza.tags;
	for i = 1, #tags do
		local tag = tags[i];
		local name, attr = tag.name, tag.attr;
		if name == "reference" and attr.xmlns == xmlns_reference and attr.type == "mention" then
			local target = attr.uri and attr.uri:match("^xmpp:([^?#]+)");
			if target and names(unescape_uri(target), account, room, nick) then
				return "reference";
			end
		elseif name == "reply" and attr.xmlns == xmlns_reply and attr.to
			and names(attr.to, account, room, nick) then
			return "reply";
		end
	end
	local text = body(stanza);
	if text and mm.mention(text, nick) then return "nick"; end
end

-- Pushing --------------------------------------------------------------------

local push_form = dataform {
	{ name = "FORM_TYPE"; type = "hidden"; value = "urn:xmpp:push:summary"; };
	{ name = "message-count"; type = "text-single"; };
	{ name = "pending-subscription-count"; type = "text-single"; };
	{ name = "last-message-sender"; type = "jid-single"; };
	{ name = "last-message-body"; type = "text-single"; };
};

-- The push this file asks mod_cloud_notify for, while it builds it.
local current;
-- the ids of the pushes sent lately -> their account, until answered
local sent = new_cache(256);

local function send_push(account, reg, room, p)
	p.account = account;
	current = p;
	local ok, err = pcall(module.fire_event, module, "cloud-notify-ping", {
		user = (jid_split(account)), push_services = { [reg.id] = reg.info } });
	current = nil;
	if not ok then
		module:log("error", "Push for %s in %s failed: %s", account, room, err);
		return;
	end
	pushes_sent:add(1);
	module:log("debug", "Pushed %s in %s to %s: %d message(s), %s; %s (%s)",
		account, room, reg.id, p.count, p.reason, p.setting, p.source);
end

-- account \0 registration \0 room -> the push gathering in a window
local gathering = {};

local function wake(account, reg, room, stanza, reason, setting, source)
	local p = { stanza = stanza, sender = stanza.attr.from, body = body(stanza), count = 1,
		reason = reason, setting = setting, source = source };
	if window == 0 then return send_push(account, reg, room, p); end
	local key = account .. "\0" .. reg.id .. "\0" .. room;
	local g = gathering[key];
	if g then
		g.count = g.count + 1;
		g.stanza, g.sender, g.body, g.reason = p.stanza, p.sender, p.body, reason;
		pushes_gathered:add(1);
		module:log("debug", "Push for %s in %s to %s gathers %d messages", account, room, reg.id, g.count);
		return;
	end
	gathering[key] = p;
	module:add_timer(window, function()
		gathering[key] = nil;
		local session = device_session(account, reg);
		if session and not session.hibernating then
			module:log("debug", "No push for %s in %s to %s: the device is back", account, room, reg.id);
			return;
		end
		send_push(account, reg, room, p);
	end);
end

-- What the setting says for this message, and why.
local function wanted(setting, stanza, account, room, nick)
	if setting == "always" then return true, "always"; end
	if setting == "never" then return false, "never"; end
	local why = mention_of(stanza, account, room, nick);
	if why == "nick" then return true, "mention (nick)"; end
	if why == "reference" then return true, "mention (reference)"; end
	if why == "reply" then return true, "mention (reply)"; end
	return false, "on-mention, not mentioned";
end

-- The setting for the room, and where it comes from; nil when the room's
-- privacy is yet to be asked.
local function setting_now(account, room)
	local setting = room_setting(account, room);
	if setting then return setting, "bookmark"; end
	if default_setting ~= "auto" then return default_setting, "default"; end
	local kind = privacy(room);
	if kind == "private" then return "always", "private room"; end
	if kind == "public" then return "on-mention", "public room"; end
end

local function decide(account, room, own, stanza, away, n, setting, source)
	local want, reason = wanted(setting, stanza, account, room, own);
	for i = 1, n do
		local reg = away[i];
		if want then
			wake(account, reg, room, stanza, reason, setting, source);
		else
			pushes_held:add(1);
			module:log("debug", "No push for %s in %s to %s: %s; %s (%s)",
				account, room, reg.id, reason, setting, source);
		end
	end
end

-- the registrations of the message at hand whose devices are away
local away = {};

-- A room message for the account (mod_minimix.lua's incoming_message, m as
-- read_message made it).  Returns at once when no registration waits.
function push.message(account, room, nick, stanza, m)
	if m.type ~= "groupchat" then return; end
	if not m.body then return; end
	if m.delayed or not nick then return; end
	local regs = registrations[account];
	if regs == nil then
		if not notify_loaded() then return; end
		regs = registrations_of(account);
	end
	if not regs[1] then return; end
	local n = 0;
	for i = 1, #regs do
		local reg = regs[i];
		local session = device_session(account, reg);
		if not session or session.hibernating then
			n = n + 1;
			away[n] = reg;
		end
	end
	if n == 0 then return; end
	local _, own = mm.core:member(account, room);
	if nick == own then return; end
	local setting, source = setting_now(account, room);
	if setting then
		return decide(account, room, own, stanza, away, n, setting, source);
	end
	-- the decision waits for the room's disco#info: the room re-addresses
	-- its object once it has routed it, and the list is the next message's
	stanza = st.clone(stanza);
	local waiting_regs = { table.unpack(away, 1, n) };
	mm.roominfo.ask(room, account, function()
		local s, src = setting_now(account, room);
		if not s then s, src = "on-mention", "room's privacy unknown"; end
		decide(account, room, own, stanza, waiting_regs, n, s, src);
	end);
end

-- mod_cloud_notify's pushes --------------------------------------------------

-- The stanzas a session had not acknowledged when it went into hibernation,
-- which mod_cloud_notify pushes for then: a room message among them came
-- while the device was connected, so no push went for it yet.
local unacked = setmetatable({}, { __mode = "k" });

-- mod_minimix.lua's smacks-hibernation-start hook, before mod_cloud_notify's.
function push.hibernating(event)
	for _, stanza in ipairs(event.queue or {}) do unacked[stanza] = true; end
end

local function on_push(event)
	if current then
		-- the push asked for above: its summary
		local form = { ["message-count"] = tostring(current.count) };
		if include_sender then form["last-message-sender"] = current.sender; end
		if include_body then
			form["last-message-body"] = current.body;
		elseif dummy_body then
			form["last-message-body"] = dummy_body;
		end
		local payload = event.notification_payload;
		payload:maptags(function(tag)
			if tag.name == "x" and tag.attr.xmlns == xmlns_data then return nil; end
			return tag;
		end);
		payload:add_child(push_form:form(form));
		event.push_summary, event.original_stanza = form, current.stanza;
		event.important = form["last-message-body"] ~= nil;
		sent:set(event.notification_stanza.attr.id, current.account);
		return;
	end
	-- mod_cloud_notify's own push for a copy of a room message of one of
	-- the account's memberships: decided here, once per message
	local stanza = event.original_stanza;
	if not stanza or stanza.name ~= "message" or stanza.attr.type ~= "groupchat" then return; end
	local node, host, nick = jid_split(stanza.attr.from);
	local account = event.username and event.username .. "@" .. module.host;
	if not node or not account then return; end
	local room = node .. "@" .. host;
	local state, own = mm.core:member(account, room);
	if not state then return; end
	if unacked[stanza] and stanza:get_child("body") and nick ~= own then
		unacked[stanza] = nil;
		local setting = setting_now(account, room) or "on-mention";
		local want, reason = wanted(setting, stanza, account, room, own);
		module:log("debug", "%s push for %s in %s (unacknowledged at hibernation): %s",
			want and "A" or "No", account, room, reason);
		(want and pushes_sent or pushes_held):add(1);
		if want then return; end
	end
	event.reason = "mod_minimix pushed (or held) this room message when the room sent it";
	return true;
end

-- mm: the module's shared table (mod_minimix.lua)
function push.init(shared)
	mm = shared;
	local pushes = mm.metrics.pushes;
	pushes_sent, pushes_held = pushes:with_labels("sent"), pushes:with_labels("held");
	pushes_gathered = pushes:with_labels("gathered");
	if not enabled then
		push.message, push.hibernating = function() end, function() end;
		return push;
	end
	-- Priority 10: before mod_cloud_notify (0) handles the IQ and writes
	-- its store; the next room message reads it again.
	module:hook("iq-set/self/" .. xmlns_push .. ":enable", forget_registrations, 10);
	module:hook("iq-set/self/" .. xmlns_push .. ":disable", forget_registrations, 10);
	-- read when a device connects, so that room messages find them read
	module:hook("resource-bind", function(event)
		local session = event.session;
		if session.username and session.host == module.host and notify_loaded() then
			registrations_of(session.username .. "@" .. module.host);
		end
	end);
	-- a push service's error may make mod_cloud_notify drop the registration
	-- (priority 10: before mod_iq (0) hands it to mod_cloud_notify)
	module:hook("iq/host", function(event)
		local stanza = event.stanza;
		local t = stanza.attr.type;
		if t ~= "result" and t ~= "error" then return; end
		local account = sent:get(stanza.attr.id);
		if not account then return; end
		sent:set(stanza.attr.id, nil);
		if t == "error" then registrations[account] = nil; end
	end, 10);
	-- Priority 10: before whatever else hooks the push (0), so that it sees
	-- the summary and the message.
	module:hook("cloud_notify/push", on_push, 10);
	mm.bookmarks.watch(function(account, room)
		local rooms = settings[account];
		if not rooms then return; end
		if room then rooms[room] = nil; else settings[account] = nil; end
	end);
	return push;
end

return push;
