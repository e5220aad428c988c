-- mod_e2e_muc_control: test-only remote control of Prosody's MUC, for the
-- end-to-end tests (test/e2e/test_semantics.py).
--
-- Load it on the MUC component next to mod_e2e_spy (muc_options
-- modules_enabled; plugin_paths must include test/e2e/plugins, which
-- prosody_env.py adds with spy=True).  Never load it on a real server: it
-- obeys anyone.
--
-- It lets a test make the room do what Prosody 0.12's MUC cannot be asked
-- to do over XMPP, or does only on rare events.  A client sends to the
-- component's host:
--
--   <message to='conference.localhost' id='X'>
--     <control xmlns='urn:minimix:e2e:muc' op='OP' room='ROOM' jid='BARE'
--              code='CODE' seconds='N'/>
--   </message>
--
-- and gets back <message from='conference.localhost' id='X'><done
-- xmlns='urn:minimix:e2e:muc' op='OP' count='N'/></message> after the room
-- has acted (everything below is synchronous, so whatever the room
-- broadcast was routed before the answer), or <failed .../> with a reason.
--
-- Operations (BARE: the occupant's real bare JID; every session of it):
--   forget   the room forgets the occupant silently: no presence to anyone
--            (as a room that restarted without its occupants, or lost them)
--   kickable the room gets an error stanza from the occupant's real JID
--            (recipient-unavailable) and reacts as it does to a bounce:
--            room:handle_kickable(), status 333 (technical problem)
--   remove   the occupant is removed with status CODE (e.g. 332: system
--            shutdown, as a remote service going down announces it), the
--            way Prosody removes occupants itself (role none, unavailable
--            presence to everyone, the occupant's own with 110)
--   hold     join presences (with the MUC <x/>) from BARE to ROOM are held
--            for N seconds before the room sees them (a slow room, a join
--            in flight); seconds='0' stops holding
local st = require "util.stanza";
local jid_bare = require "util.jid".bare;

local xmlns = "urn:minimix:e2e:muc";
local xmlns_muc = "http://jabber.org/protocol/muc";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local muc = module:depends("muc");

local holding = {};   -- [room .. " " .. bare] = seconds
local passing = setmetatable({}, { __mode = "k" }); -- stanzas released

local function occupants_of(room, bare)
	local out = {};
	for _, occupant in room:each_occupant() do
		if occupant.bare_jid == bare then
			out[#out+1] = occupant;
		end
	end
	return out;
end

local ops = {};

function ops.forget(room, bare)
	local found = occupants_of(room, bare);
	for _, occupant in ipairs(found) do
		occupant.role = nil;
		room:save_occupant(occupant);
	end
	return #found;
end

function ops.kickable(room, bare)
	local n = 0;
	for _, occupant in ipairs(occupants_of(room, bare)) do
		local sessions = {};
		for real_jid in occupant:each_session() do
			sessions[#sessions+1] = real_jid;
		end
		for _, real_jid in ipairs(sessions) do
			local bounce = st.message({ from = real_jid, to = occupant.nick, type = "error" })
				:tag("error", { type = "cancel" })
					:tag("recipient-unavailable", { xmlns = "urn:ietf:params:xml:ns:xmpp-stanzas" }):up()
				:up();
			if room:handle_kickable(nil, bounce) then n = n + 1; end
		end
	end
	return n;
end

function ops.remove(room, bare, attr)
	local code = attr.code or "332";
	local found = occupants_of(room, bare);
	for _, occupant in ipairs(found) do
		local prev_role = occupant.role;
		occupant.role = nil;
		room:save_occupant(occupant);
		local x = st.stanza("x", { xmlns = xmlns_muc_user })
			:tag("status", { code = code }):up();
		room:publicise_occupant_status(occupant, x, nil, nil, nil, prev_role);
		module:fire_event("muc-occupant-left", { room = room; nick = occupant.nick; occupant = occupant });
	end
	return #found;
end

function ops.hold(room, bare, attr)
	local seconds = tonumber(attr.seconds) or 0;
	holding[room.jid .. " " .. bare] = seconds > 0 and seconds or nil;
	return 1;
end

module:hook("message/host", function(event)
	local stanza = event.stanza;
	local control = stanza:get_child("control", xmlns);
	if not control then return; end
	local attr = control.attr;
	local reply = st.message({ from = module.host, to = stanza.attr.from, id = stanza.attr.id });
	local op, room = ops[attr.op or ""], attr.room and muc.get_room_from_jid(attr.room);
	if not op or not room or not attr.jid then
		reply:tag("failed", { xmlns = xmlns, op = attr.op,
			reason = not op and "unknown op" or not room and "no such room" or "no jid" });
	else
		local n = op(room, jid_bare(attr.jid), attr);
		module:log("info", "E2E-CONTROL %s %s %s: %d", attr.op, attr.room, attr.jid, n);
		reply:tag("done", { xmlns = xmlns, op = attr.op, count = tostring(n) });
	end
	module:send(reply);
	return true;
end, 1000);

-- Held joins: the room sees them `seconds` later, as if they had just come.
module:hook("presence/full", function(event)
	local stanza = event.stanza;
	if passing[stanza] or stanza.attr.type ~= nil or not stanza:get_child("x", xmlns_muc) then
		return;
	end
	local seconds = holding[jid_bare(stanza.attr.to) .. " " .. jid_bare(stanza.attr.from or "")];
	if not seconds then return; end
	module:log("info", "E2E-CONTROL holding the join of %s for %ss", stanza.attr.from, seconds);
	module:add_timer(seconds, function()
		passing[stanza] = true;
		module:fire_event("presence/full", event);
		passing[stanza] = nil;
	end);
	return true;
end, 2000);
