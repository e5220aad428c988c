-- mod_minimix's room log on mod_storage_sql: one SQL transaction per flush instead of one per message.
--
-- What one pass of the log's
-- writer takes, written in one SQL transaction instead of one per message.
--
-- mod_storage_sql's archive append commits each item (on SQLite a journal
-- sync each), and a transaction around appends does not help: util.sql's
-- engine:transaction commits at every level.  So a batch goes through the
-- very engine the store uses (Prosody shares them between modules in
-- module:shared("/*/sql/connections"), by util.sql.db2uri of the host's
-- `sql` option) with the rows the store's append writes: the same columns,
-- the value serialised as the store does a stanza ("xml", its text), a
-- given key replacing an item with that key, and otherwise a new key of
-- the store's own kind (a UUID; a time-ordered one on 13).  archive:find
-- reads them as it reads its own.
--
-- The store counts each user's items in a cache (its quota and the total
-- of a whole-archive query); rows it did not write would leave that count
-- short, so after each batch the written users' counts are dropped, to be
-- counted again at their next use.  That cache is a local of
-- mod_storage_sql, reached through its append's upvalues: where it cannot
-- be found, or the store has a quota (its append says "quota-limit", which
-- the log's writer answers by making room), there is no batching, and the
-- writer appends one by one as it does on every other store.
--
-- A batch is all or nothing: if any row fails, util.sql rolls all back
-- (and retries the whole batch once on a new connection if the old one
-- broke), and the writer then writes those messages one by one, which is
-- how it tells a refused message from a store that is away.

local jid_join = require "util.jid".join;
local uuid = require "util.uuid";
local st = require "util.stanza";
local resolve_relative_path = require "util.paths".resolve_relative_path;

local new_key = uuid.v7 or uuid.generate;

-- util.sql (LuaDBI) and 13's util.sqlite3 (LuaSQLite3) name engines alike;
-- loaded at the first batch, as mod_storage_sql has loaded one by then
local function get_db2uri()
	for _, name in ipairs({ "util.sql", "util.sqlite3" }) do
		local ok, lib = pcall(require, name);
		if ok and type(lib) == "table" and lib.db2uri then return lib.db2uri; end
	end
	return nil;
end

local DELETE_SQL = [[
DELETE FROM "prosodyarchive"
WHERE "host"=? AND "user"=? AND "store"=? AND "key"=?;
]];
local INSERT_SQL = [[
INSERT INTO "prosodyarchive"
("host", "user", "store", "when", "with", "key", "type", "value")
VALUES (?,?,?,?,?,?,?,?);
]];

local function upvalue(fn, wanted)
	if type(fn) ~= "function" then return nil; end
	for i = 1, 255 do
		local name, value = debug.getupvalue(fn, i);
		if name == nil then return nil; end
		if name == wanted then return value; end
	end
	return nil;
end

-- The engine mod_storage_sql made for this host's `sql` option (as it
-- normalises it: an SQLite file relative to the data directory).
local function find_engine()
	local db2uri = get_db2uri();
	if not db2uri then return nil, "no util.sql"; end
	local params = module:get_option("sql", { driver = "SQLite3" });
	if type(params) ~= "table" or not params.driver then return nil, "no sql option"; end
	local database = params.database;
	if params.driver == "SQLite3" and database ~= ":memory:" then
		local data = prosody and prosody.paths and prosody.paths.data or ".";
		database = resolve_relative_path(data, database or "prosody.sqlite");
	end
	local engines = module:shared("/*/sql/connections");
	local engine = engines[db2uri({ driver = params.driver, database = database,
		username = params.username, password = params.password, host = params.host,
		port = params.port })];
	if type(engine) ~= "table" or type(engine.transaction) ~= "function" then
		return nil, "mod_storage_sql's engine not found";
	end
	return engine;
end

local lib = { upvalue = upvalue };

-- For the writer of store (opened as store_name, driven by driver_name):
-- a function that writes a list of entries ({ user, key, value, when,
-- with }) in one transaction, returning true (each entry's written_key is
-- then the key it got), or nil and the error (then nothing was written).  nil and why when the store is not one this can
-- batch for.  text(value): the XML text of an entry's value, as the
-- store's append writes a stanza (nil: tostring; the room log gives the
-- text it already has, instead of a stanza to serialise).
function lib.batcher(store, store_name, driver_name, text)
	if driver_name ~= "sql" then return nil, "not mod_storage_sql"; end
	if type(store) ~= "table" or store.caps and store.caps.quota then
		return nil, "the store has a quota";
	end
	local counts = upvalue(store.append, "archive_item_count_cache");
	if type(counts) ~= "table" or type(counts.set) ~= "function" then
		return nil, "the store's item counts not found";
	end
	local host = module.host;
	text = text or tostring;
	local engine, not_found;
	return function(entries)
		-- looked up at the first batch, when mod_storage_sql has made it;
		-- not found then, never: the writer goes one by one
		if not engine then
			if not_found then return nil, not_found; end
			engine, not_found = find_engine();
			if not engine then return nil, not_found; end
		end
		local ok, err = engine:transaction(function()
			for _, e in ipairs(entries) do
				if not st.is_stanza(e.value) then error("not a stanza"); end
				local value = text(e.value);
				local key = e.key;
				if key then
					engine:delete(DELETE_SQL, host, e.user, store_name, key);
				else
					key = new_key();
				end
				engine:insert(INSERT_SQL, host, e.user, store_name, e.when or os.time(), e.with or "",
					key, "xml", value);
				-- the key the entry got, as the store's append returns it
				e.written_key = key;
			end
		end);
		for _, e in ipairs(entries) do counts:set(jid_join(e.user, host, store_name), nil); end
		if not ok then return nil, tostring(err); end
		return true;
	end;
end

return lib;
