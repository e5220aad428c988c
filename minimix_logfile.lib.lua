-- mod_minimix's room log on the file store: one append per room per flush instead of one per message.
--
-- mod_storage_internal's archive append opens, appends to and closes a
-- room's list file for every message, and clones and serialises each one
-- on the way; in a small room that is most of what the log costs.  A
-- batch writes what one pass of the log's writer took for a room in one
-- append to that file, through util.datamanager (append_raw, the call the
-- store's own list_append ends in), with the items the store's append
-- writes: the value preserialised with its 'when', 'with', 'stamp' and a
-- key of the store's own kind (util.id's medium on 0.12, a UUIDv7 on 13),
-- serialised by util.serialization as util.datamanager does (the log's
-- own items, an element with the message's text, in one format, the text
-- as a long string where it can be one, so that it is not copied).
-- archive:find, retention and MAM read them as the store's own.
--
-- What the store keeps beside its lists is kept right: its cached item
-- count of each room (its quota, reached through its append's upvalues as
-- on SQL) is raised by what was written, and Prosody 13's list index (the
-- .lidx file), which an append elsewhere would leave short, is removed,
-- so 13 builds it again from the list at the next read.  A room whose
-- count is not known yet (its first write since the start) is counted as
-- the store's append counts it, its list read once.  Where a room would
-- pass the store's quota (its append's "quota-limit" is how the writer
-- makes room), or util.datamanager has callbacks (which may redirect or refuse a write), the batch writes
-- nothing and the writer appends one by one, as on every other store.
--
-- A batch writes room after room; the file append of one room is all or
-- nothing.  If one fails, the batch stops there: the entries of the rooms
-- written before are marked (e.batched), so the writer takes them as
-- written and writes the rest one by one, which is how it tells a refused
-- message from a store that is away.

local datamanager = require "util.datamanager";
local serialize = require "util.serialization".serialize;
local datetime = require "util.datetime".datetime;
local jid_join = require "util.jid".join;
local st = require "util.stanza";

local new_key = require "util.uuid".v7 or require "util.id".medium;

-- (a local of another module, found among its functions' upvalues)
local upvalue = module:require("minimix_logsql").upvalue;

-- Whether util.datamanager writes with no callback in the way (none is
-- registered by Prosody itself).
local function no_callbacks()
	local callback = upvalue(datamanager.list_append, "callback");
	local callbacks = upvalue(callback, "callbacks");
	return type(callbacks) == "table" and next(callbacks) == nil;
end

-- Prosody 13 keeps an index beside each list (0.12 has none).
local indexed = datamanager.list_open ~= nil;

-- An item of the room log's own kind, the table util.serialization
-- writes: the name, the attributes, when, with, key and then the one text
-- child (see item_of).
local COMPACT = "item({name=%q;attr={xmlns=%q;stamp=%q};when=%d;with=%q;key=%q;";
local COMPACT_SAID = "item({name=%q;attr={xmlns=%q;said=%q;stamp=%q};when=%d;with=%q;key=%q;";

local lib = {};

-- For the writer of store (opened as store_name, driven by driver_name):
-- compact_text(value), if given, is the text of a value that is an
-- element with only 'xmlns' and 'said' and one text (nil for any other),
-- which is then written without util.serialization's tables.  Returns
-- a function that writes a list of entries ({ user, value, when, with })
-- room by room, returning true (each entry's written_key is then the key
-- it got), or nil and the error (then what was written is marked
-- e.batched).  nil and why when the store is not one this can batch for.
function lib.batcher(store, store_name, driver_name, compact_text)
	if driver_name ~= "internal" then return nil, "not the file store"; end
	if type(store) ~= "table" or type(datamanager.append_raw) ~= "function"
		or type(datamanager.getpath) ~= "function" then
		return nil, "util.datamanager cannot append";
	end
	local counts = upvalue(store.append, "archive_item_count_cache");
	if type(counts) ~= "table" or type(counts.get) ~= "function" or type(counts.set) ~= "function" then
		return nil, "the store's item counts not found";
	end
	local quota = store.caps and store.caps.quota or math.huge;
	local host = module.host;
	-- a stamp for each second, as the store puts on each item
	local last_when, last_stamp;
	-- The item of entry e, as pieces added to parts (their concatenation
	-- is the item's line); returns its key.
	local function item_of(e, parts)
		local value = e.value;
		if not st.is_stanza(value) then error("not a stanza"); end
		local when = e.when or os.time();
		if when ~= last_when then last_when, last_stamp = when, datetime(when); end
		local key = new_key();
		local text = compact_text and compact_text(value);
		local n = #parts;
		if text and math.type(when) == "integer" and type(e.with) == "string" then
			-- one of the room log's items (an element with a text, the
			-- message's): the table serialize makes of it, in one format
			local said = value.attr.said;
			if said then
				parts[n + 1] = COMPACT_SAID:format(value.name, value.attr.xmlns, said, last_stamp, when, e.with, key);
			else
				parts[n + 1] = COMPACT:format(value.name, value.attr.xmlns, last_stamp, when, e.with, key);
			end
			-- (plain finds: memchr; a pattern would cost more than the copy)
			if not text:find("\n", 1, true) and not text:find("\r", 1, true)
				and not text:find("]=]", 1, true) and not (text:byte(-1) == 61 and text:byte(-2) == 93) then
				-- as it is, in a long string (no copy of the text): one
				-- without a line break (13's index takes every line that
				-- starts with "item" for an item's start; Lua's reader
				-- would turn a "\r" into a "\n") nor the string's end,
				-- even with the end's "]" after it
				parts[n + 2], parts[n + 3], parts[n + 4] = "[=[", text, "]=]});\n";
			else
				-- (%q leaves a newline as a backslash and a newline)
				local quoted = ("%q"):format(text);
				if quoted:find("\n", 1, true) then quoted = quoted:gsub("\n", "n"); end
				parts[n + 2], parts[n + 3] = quoted, "});\n";
			end
			return key;
		end
		local item = st.preserialize(value);
		local attr = {};
		for k, v in pairs(value.attr) do attr[k] = v; end
		attr.stamp = last_stamp;
		item.attr, item.when, item.with, item.key = attr, when, e.with, key;
		parts[n + 1] = "item(" .. serialize(item) .. ");\n";
		return key;
	end
	return function(entries)
		if not no_callbacks() then return nil, "util.datamanager has callbacks"; end
		-- the rooms in the order they come, each with its entries in order
		local rooms, by_user = {}, {};
		for _, e in ipairs(entries) do
			if e.key then return nil, "an entry with a key"; end
			local list = by_user[e.user];
			if not list then
				list = {};
				by_user[e.user] = list;
				rooms[#rooms+1] = e.user;
			end
			list[#list+1] = e;
		end
		-- nothing is written unless every room can take its entries
		for _, user in ipairs(rooms) do
			local cache_key = jid_join(user, host, store_name);
			local count = counts:get(cache_key);
			if not count then
				-- counted as the store's append counts (the first write of
				-- a room since the start): its list read whole
				local list, err = datamanager.list_load(user, host, store_name);
				if not list and err then return nil, tostring(err); end
				count = list and #list or 0;
				counts:set(cache_key, count);
			end
			if count + #by_user[user] > quota then return nil, user .. " would pass the store's quota"; end
		end
		for _, user in ipairs(rooms) do
			-- (each item on a line of its own, as the store's append writes it)
			local list, parts, keys = by_user[user], {}, {};
			for i, e in ipairs(list) do keys[i] = item_of(e, parts); end
			local ok, err = datamanager.append_raw(user, host, store_name, "list", table.concat(parts));
			if not ok then return nil, tostring(err); end
			if indexed then
				-- (a missing index is what 13 expects: built at the next read)
				os.remove(datamanager.getpath(user, host, store_name, "lidx"));
			end
			local cache_key = jid_join(user, host, store_name);
			counts:set(cache_key, (counts:get(cache_key) or 0) + #list);
			for i, e in ipairs(list) do e.written_key, e.batched = keys[i], true; end
		end
		return true;
	end;
end

return lib;
