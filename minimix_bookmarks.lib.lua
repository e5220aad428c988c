-- mod_minimix's bookmark synchronisation: XEP-0402 bookmarks with autojoin are the account's memberships.

-- A conference bookmark with autojoin makes the account join (nick from the
-- bookmark, else the localpart; password from the bookmark), even with no
-- session online; retracting it, or autojoin false, makes the account leave.
-- The other way round, when the account leaves a room or is removed, the
-- bookmark's autojoin is turned off, so that no client joins it again.

local st = require "util.stanza";
local jid_split = require "util.jid".split;

local xmlns_bookmarks = "urn:xmpp:bookmarks:1";

local bookmarks = {};

local mm, mod_pep;

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

-- Who wants to know of a changed bookmark (bookmarks.watch).
local watchers = {};

local function bookmark_changed(username, room_jid, item)
	local account = username .. "@" .. module.host;
	local room = mm.prep_room(room_jid);
	if not room then
		module:log("debug", "Ignoring a bookmark of %s for %q: not a room JID", account, room_jid);
		return;
	end
	for _, watcher in ipairs(watchers) do watcher(account, room); end
	local autojoin, nick, password = bookmark_fields(item);
	local ctx = { account = account, room = room };
	local rooms = bookmarked[account] or {};
	bookmarked[account] = rooms;
	if autojoin then
		rooms[room] = room_jid; -- the item's own id, for bookmarks.follows
		mm.perform(ctx, mm.core:restore(account, room, nick or username, password));
	else
		rooms[room] = nil;
		mm.perform(ctx, mm.core:account_leave(account, room));
	end
end

local function bookmarks_gone(username)
	local account = username .. "@" .. module.host;
	for _, watcher in ipairs(watchers) do watcher(account, nil); end
	for room in pairs(bookmarked[account] or {}) do
		mm.perform({ account = account, room = room }, mm.core:account_leave(account, room));
	end
	bookmarked[account] = nil;
end

-- The account left a room, or was removed: its bookmark's autojoin goes off.
function bookmarks.follows(account, room)
	if not mod_pep then return; end
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

-- fn(account, room) after a bookmark of the account changed (room nil:
-- all of them went), whatever its autojoin says.
function bookmarks.watch(fn)
	watchers[#watchers+1] = fn;
end

-- The account's bookmark of room (a pubsub item), or nil: none, or the
-- bookmarks are off.
function bookmarks.item(account, room)
	if not mod_pep then return nil; end
	local username = jid_split(account);
	local id = bookmarked[account] and bookmarked[account][room];
	if type(id) ~= "string" then id = room; end
	local service = mod_pep.get_pep_service(username);
	local ok, found, items = pcall(service.get_items, service, xmlns_bookmarks, true, id);
	if not ok then
		module:log("warn", "Could not read the bookmark of %s for %s: %s", account, room, found);
		return nil;
	end
	return found and items and items[id] or nil;
end

-- The store of every account's bookmarks, for the start-up restore to list
-- (minimix_persist.lib.lua); nil with the bookmarks off.
function bookmarks.archive()
	return mod_pep and module:open_store("pep_" .. xmlns_bookmarks, "archive");
end

-- At start-up: the account joins the rooms of its bookmarks with autojoin.
function bookmarks.reconcile(username)
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

-- mm: the module's shared table (mod_minimix.lua)
function bookmarks.init(shared)
	mm = shared;
	if not module:get_option_boolean("minimix_bookmarks", true) then return bookmarks; end
	mod_pep = module:depends("pep");
	-- Clients that write XEP-0048 bookmarks (private XML storage), and
	-- those that use XEP-0402 only when the server offers
	-- urn:xmpp:bookmarks:1#compat-pep, reach the bookmarks above only
	-- through mod_bookmarks.  Checked once the host's modules are loaded
	-- (a timer runs after the configuration's modules, at start-up too).
	module:add_timer(0, function()
		local ok, modulemanager = pcall(require, "core.modulemanager");
		if ok and not modulemanager.is_loaded(module.host, "bookmarks") then
			module:log("warn", "mod_bookmarks is not loaded on %s: clients that write XEP-0048 bookmarks, "
				.. "or use XEP-0402 only with compat-pep (Gajim), do not get their bookmarks as memberships; "
				.. "add \"bookmarks\" to modules_enabled", module.host);
		end
	end);
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
	return bookmarks;
end

return bookmarks;
