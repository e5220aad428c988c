-- mod_minimix's copies to client sessions: one serialization per room stanza, parsed caches for replays, no bounces.

local st = require "util.stanza";
local xml_parse = require "util.xml".parse;
local new_cache = require "util.cache".new;

local bare_sessions = prosody.bare_sessions;
local xml_escape = st.xml_escape;

local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

local send = {};

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
local parsed_max_bytes;
local parsed_bytes = 0;
local parsed = new_cache(256, function(payload) parsed_bytes = parsed_bytes - #payload; end);
function send.parse_cached(payload)
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
send.shared_unchanged = shared_unchanged;

function send.shared_payload(stanza)
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

function send.to_session(account, resource, stanza, id, codes, dropped)
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

function send.as_account(stanza, account, id)
	stanza.attr.from = account;
	if id then stanza.attr.id = id; end
	module:send(stanza);
end

-- mm: the module's shared table (mod_minimix.lua)
function send.init(mm)
	-- Text bytes of the cached stanzas kept parsed for replay (above).
	parsed_max_bytes = mm.limit_option("minimix_max_parsed_bytes", 512 * 1024);
	return send;
end

return send;
