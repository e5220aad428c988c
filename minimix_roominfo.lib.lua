-- mod_minimix's knowledge of each room's disco#info features, one cache and one query for the whole module.
--
-- What a room offers (urn:xmpp:mam:2, muc_membersonly, muc_nonanonymous,
-- ...) is learnt from the module's own query as the account (concurrent
-- asks wait for one query; the answer is waited for DISCO_TIMEOUT; a room
-- that did not answer is asked again RETRY_AFTER later, not at every
-- message) and from the answers passing to the account's devices (read
-- before anything adds to them: minimix_mam.lib.lua adds mam:2 for the
-- devices alone).  Forgotten when the account joins the room again (the
-- room may have changed meanwhile) and on status 104 and 170-174.  The
-- module's own answers stop here: no device sees them, nothing adds to
-- them.

local st = require "util.stanza";
local new_cache = require "util.cache".new;
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local new_id = require "util.id".medium;
local now = require "util.time".now;

local xmlns_disco_info = "http://jabber.org/protocol/disco#info";
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";

-- Rooms whose features are kept (the least recently used go first).
local ROOMS = 4096;
-- How long the module's query may take; how long a room that did not
-- answer is not asked again; how many wait for one query (more are told
-- "not known" at once).
local DISCO_TIMEOUT, RETRY_AFTER, MAX_WAITING = 30, 60, 64;
-- Status codes after which a room's features may have changed
-- (XEP-0045: 104 configuration, 170-174 logging and anonymity).
local REFRESH_CODES = { ["104"] = true, ["170"] = true, ["171"] = true, ["172"] = true,
	["173"] = true, ["174"] = true };

local roominfo = {};

-- room -> { features = set } or { failed = when }
local known = new_cache(ROOMS);
-- room -> the query in flight { id, account, callbacks }; id -> room of
-- the queries sent lately, so that a late answer stops here too
local asking, asked = {}, new_cache(1024);
local watchers = {};
local mm;
-- Whether every join asks at once (minimix_mam.lib.lua must know before
-- the room's first message), or the room is asked when a library needs it.
local eager = false;

local function split_room(to)
	local node, host, res = jid_split(to);
	if not node or not host or res then return nil; end
	return node .. "@" .. host;
end

local function changed(room, features)
	for _, fn in ipairs(watchers) do fn(room, features); end
end

-- The room's features (a set: var -> true), or nil when not known.
function roominfo.features(room)
	local entry = known:get(room);
	return entry and entry.features or nil;
end

-- A disco#info answer's <query/> from room: its features, kept.
function roominfo.learn(room, query)
	local features = {};
	for feature in query:childtags("feature") do
		if feature.attr.var then features[feature.attr.var] = true; end
	end
	known:set(room, { features = features });
	changed(room, features);
	return features;
end

function roominfo.forget(room)
	if known:get(room) then
		known:set(room, nil);
		changed(room, nil);
	end
end

local function done(room, features)
	local q = asking[room];
	if not q then return; end
	asking[room] = nil;
	-- (a device's answer meanwhile tells as much)
	features = features or roominfo.features(room);
	if not features then known:set(room, { failed = now() }); end
	for _, callback in ipairs(q.callbacks) do callback(features); end
end

-- callback(features or nil), at once when known (or failed lately), else
-- when the room answers; the query goes as account.  A local room answers
-- before this returns.
function roominfo.ask(room, account, callback)
	local entry = known:get(room);
	if entry and (entry.features or now() - entry.failed < RETRY_AFTER) then
		if callback then callback(entry.features); end
		return;
	end
	local q = asking[room];
	if q then
		if not callback then return; end
		if #q.callbacks >= MAX_WAITING then return callback(nil); end
		q.callbacks[#q.callbacks+1] = callback;
		return;
	end
	local id = "minimix-roominfo-" .. new_id();
	q = { id = id, account = account, callbacks = { callback } };
	asking[room] = q;
	asked:set(id, room);
	module:log("debug", "Asking %s what it offers", room);
	module:add_timer(DISCO_TIMEOUT, function()
		if asking[room] == q then
			module:log("debug", "%s did not say what it offers", room);
			done(room, nil);
		end
	end);
	module:send(st.iq({ type = "get", from = account, to = room, id = id }):query(xmlns_disco_info));
end

-- fn(room, features or nil) whenever what is known of a room changes.
function roominfo.watch(fn) watchers[#watchers+1] = fn; end

-- Every join asks at once (see eager).
function roominfo.ask_at_join() eager = true; end

-- The account sends a join of its own to room (a first join, or again
-- after a gap): the room may have changed while the account was out.  A
-- query in flight for another account's join is this join's too; one the
-- account sent before (a join again) asked the room as it was: asked
-- again, and what waited for it waits for the new one.
function roominfo.joining(account, room)
	local q = asking[room];
	if q and q.account ~= account then return; end
	asking[room] = nil;
	roominfo.forget(room);
	if not q and not eager then return; end
	local waiting = q and q.callbacks or {};
	roominfo.ask(room, account, function(features)
		for _, callback in ipairs(waiting) do callback(features); end
	end);
end

function roominfo.init(shared)
	mm = shared;

	-- The room's answers to the module's own queries: kept, and stopped
	-- (no device asked them).  Priority 12: before minimix_mam.lib.lua
	-- (11) adds to what goes to the devices.
	module:hook("iq/bare", function(event)
		local stanza = event.stanza;
		local t = stanza.attr.type;
		local id = stanza.attr.id;
		local room = id and asked:get(id);
		if not room or (t ~= "result" and t ~= "error") or stanza.attr.from ~= room then return; end
		asked:set(id, nil);
		local q = asking[room];
		if not q or q.id ~= id then return true; end -- too late, or a join asked again
		local query = t == "result" and stanza:get_child("query", xmlns_disco_info);
		done(room, query and roominfo.learn(room, query) or nil);
		return true;
	end, 12);

	-- What the room offers may have changed: forgotten and asked again;
	-- the account's join is complete (110): asked, if unknown (both when
		-- eager; else when a library needs it).  Priority
	-- 11: before the main module hands the stanza on (10).
	local function refresh(event)
		local stanza = event.stanza;
		local x = stanza:get_child("x", xmlns_muc_user);
		local room = x and stanza.attr.from and split_room((stanza.attr.from:gsub("/.*$", "")));
		if not room then return; end
		local account = stanza.attr.to and jid_prep(stanza.attr.to);
		local ask = false;
		for status in x:childtags("status") do
			if REFRESH_CODES[status.attr.code] then
				module:log("debug", "%s changed its configuration: what it offers is asked again", room);
				roominfo.forget(room);
				ask = true;
			elseif eager and status.attr.code == "110" and stanza.name == "presence"
				and stanza.attr.type == nil and not known:get(room) then
				ask = true;
			end
		end
		if ask and eager and account and mm.core:member(account, room) then roominfo.ask(room, account); end
	end
	module:hook("message/bare", refresh, 11);
	module:hook("presence/bare", refresh, 11);
end

return roominfo;
