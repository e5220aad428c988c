-- mod_minimix's persistence: memberships written to a store, and joined again by the start-up restore.

local jid_split = require "util.jid".split;
local now = require "util.time".now;

local persist = {};

local mm;

-- Memberships survive restarts here (any storage driver: internal, SQL).
local store = module:open_store("minimix");

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
	for _, m in ipairs(mm.core:memberships(account)) do
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
	for _, account in ipairs(mm.core:take_dirty(level)) do
		write_account(account);
	end
end

-- A membership changed: written at the next turn of the main loop, once for
-- all the changes of this one.  Prosody 0.12's net.server runs timers only
-- when no connection has anything to read: under a steady stream of
-- stanzas that turn waits for as long as the stream lasts, and a crash
-- meanwhile loses which rooms the account is in.  So while a write waits,
-- the stanzas the module handles are watched too, and the first one
-- handled OVERDUE after the change writes it (what changed meanwhile goes
-- with it); the timer, when it comes at last, finds nothing to write.  The
-- watch is hooked only while a write waits: a room message costs nothing
-- more when none does.
local OVERDUE = 0.1;
-- the events of the module's router (mod_minimix.lua), watched before it
local WATCHED = { "presence/bare", "message/bare", "iq/bare", "pre-presence/full",
	"pre-presence/bare", "pre-message/bare", "pre-message/full", "pre-iq/bare", "pre-iq/full" };
local waiting_since = nil; -- when the oldest change not yet written was made
local watch;

local function write_waiting()
	if not waiting_since then return; end
	waiting_since = nil;
	for _, name in ipairs(WATCHED) do module:unhook(name, watch); end
	flush(2);
end

function watch()
	if now() - waiting_since >= OVERDUE then write_waiting(); end
end

function persist.membership_changed()
	if waiting_since then return; end
	waiting_since = now();
	-- before the router and everything else of the module's
	for _, name in ipairs(WATCHED) do module:hook(name, watch, 1000); end
	module:add_timer(0, write_waiting);
end

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
	local core = mm.core;
	local restored = 0;
	for stored, rec in pairs(rooms) do
		-- stored by an older version, or by hand: prepared as the router does
		local room = type(stored) == "string" and (mm.prep_room(stored) or stored);
		if not room or type(rec) ~= "table" or type(rec.nick) ~= "string" then
			module:log("warn", "A stored room of %s is unusable: %s", account, tostring(stored));
		else
			local ctx = { account = account, room = room };
			local handled = mm.perform(ctx, core:restore(account, room, rec.nick,
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
		local archive = mm.bookmarks.archive();
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
				mm.bookmarks.reconcile(username);
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

-- mm: the module's shared table (mod_minimix.lua)
function persist.init(shared)
	mm = shared;
	-- How often the last message seen per room is written (memberships
	-- themselves are written as soon as they change).
	local seen_interval = mm.limit_option("minimix_seen_interval", 30);

	-- The last message seen per room: written now and then, and at shutdown.
	module:add_timer(seen_interval, function()
		flush(1);
		return seen_interval;
	end);
	module:hook_global("server-stopping", function() flush(1); end);
	return persist;
end

function persist.start()
	module:add_timer(0, restore_step);
end

-- A reload hands what the start-up restore has yet to read (and the writes
-- waiting for it) to the new instance, with the core (module.save); an
-- instance that handed nothing read everything.
function persist.save()
	return unread;
end

function persist.restore(unread_before)
	unread = unread_before or { all = false, users = {}, bookmarks_all = false, bookmarks = {},
		held = {}, delay = 1 };
end

return persist;
