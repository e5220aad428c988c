-- Specs for the room log's batches on mod_storage_sql (minimix_logsql.lib.lua
-- and the writer's use of them), with a fake SQL engine in the table
-- Prosody shares them in and a fake store: one transaction per pass, the
-- writer's one-by-one path for a batch that fails (a refusal, an outage),
-- and no batches where the store is not one that can take them.
local st = require "util.stanza";
local xml_parse = require "util.xml".parse;
local db2uri = require "util.sql".db2uri;
local jid_join = require "util.jid".join;

local ROOM, OTHER = "room@muc.example", "other@muc.example";
local SQL = { driver = "PostgreSQL", database = "prosody", host = "db.example" };

local log_mock = require "log_mock";
local load_log, advance, count_logs = log_mock.load_log, log_mock.advance, log_mock.count_logs;

-- A fake mod_storage_sql archive store: the fake archive (for the writer's
-- one-by-one appends), whose append keeps the store's item counts where
-- the library looks for them (an upvalue of that name).
local function sql_store()
	local store = log_mock.fake_archive();
	local archive_item_count_cache = { dropped = {} };
	function archive_item_count_cache:set(k, v)
		if v == nil then self.dropped[#self.dropped+1] = k; end
	end
	local append = store.append;
	function store.append(self, ...)
		local _ = archive_item_count_cache;
		if self.refuse_body then
			local value = select(3, ...);
			if value:get_child_text("body"):find(self.refuse_body, 1, true) then
				self.appends = self.appends + 1;
				return nil, "this message is refused";
			end
		end
		return append(self, ...);
	end
	store.counts = archive_item_count_cache;
	return store;
end

-- A fake util.sql engine writing into that store: rows committed only when
-- the transaction's function returns; down: every transaction fails.
local function sql_engine(store)
	local engine = { transactions = 0, deletes = {} };
	function engine:transaction(fn)
		self.transactions = self.transactions + 1;
		if self.down then return false, "connection refused"; end
		local rows = {};
		self.rows = rows;
		local ok, err = pcall(fn);
		self.rows = nil;
		if not ok then return false, err; end
		for _, r in ipairs(rows) do
			if r.delete then
				for i = #store.items, 1, -1 do
					if store.items[i].user == r.user and store.items[i].key == r.key then table.remove(store.items, i); end
				end
			else
				store.items[#store.items+1] = r;
			end
		end
		return true;
	end
	function engine:delete(_, host, user, store_name, key)
		assert(host == "localhost" and store_name == "minimix_log");
		self.deletes[#self.deletes+1] = key;
		self.rows[#self.rows+1] = { delete = true, user = user, key = key };
	end
	function engine:insert(_, host, user, store_name, when, with, key, kind, value)
		assert(host == "localhost" and store_name == "minimix_log" and kind == "xml");
		if store.refuse_body and value:find(store.refuse_body, 1, true) then error("this message is refused"); end
		self.rows[#self.rows+1] = { user = user, key = key, value = xml_parse(value), when = when, with = with,
			text = value };
	end
	return engine;
end

local function load_sql(options, driver)
	local store = sql_store();
	local engine = sql_engine(store);
	options = options or {};
	options.sql = options.sql or SQL;
	local shared = { ["/*/sql/connections"] = { [db2uri(SQL)] = engine } };
	local env = load_log(options, driver, shared, { minimix_log = store, archive = log_mock.fake_archive() });
	return env, store, engine;
end

local said = 0;
local function say(env, room, body, sid)
	said = said + 1;
	local m = st.message({ from = room .. "/dan", type = "groupchat", to = "alice@localhost" })
		:text_tag("body", body);
	if sid ~= false then
		m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = room, id = sid or ("sid-" .. said) }):up();
	end
	env.lib.message("alice@localhost", room, "dan", m, { stamp = env.clock + 0.25, delayed = false });
end

local function logged(store, user)
	local out = {};
	for _, it in ipairs(store.items) do
		if it.user == user then out[#out+1] = log_mock.message_of(it.value):get_child_text("body"); end
	end
	return out;
end

local function dropped(env)
	local c = env.metrics.log_dropped.by.log;
	return c and c.total or 0;
end

describe("the room log on mod_storage_sql", function()
	it("writes what one flush took in one transaction, in order, with keys, times and nicks", function()
		local env, store, engine = load_sql();
		say(env, ROOM, "one", "sid-one");
		say(env, OTHER, "other one");
		say(env, ROOM, "two", false);
		say(env, ROOM, "three");
		advance(env, 0.1);
		assert.equal(1, engine.transactions);
		assert.equal(0, store.appends, "no append of the store's own");
		assert.same({ "one", "two", "three" }, logged(store, ROOM));
		assert.same({ "other one" }, logged(store, OTHER));
		local by_body = {};
		for _, it in ipairs(store.items) do by_body[it.value:get_child_text("body")] = it; end
		assert.equal("sid-one", by_body.one.key, "the room's stanza-id is the key");
		assert.same({ "sid-one", by_body["other one"].key, by_body.three.key }, engine.deletes,
			"a key replaces an item with that key, as the store's append does");
		-- (0.12's store makes version 4 UUIDs, 13's time-ordered ones)
		local version = require "util.uuid".v7 and "7" or "4";
		assert.truthy(by_body.two.key:match("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-" .. version
			.. "%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"), "the store's kind of key: " .. by_body.two.key);
		assert.are_not.equal(by_body.two.key, by_body["other one"].key);
		assert.equal(math.floor(env.clock - 0.1 + 0.25), by_body.two.when);
		assert.equal("dan", by_body.two.with);
		assert.is_nil(by_body.two.value.attr.to);
		-- the store counts its items again: rows it did not write
		assert.truthy(#store.counts.dropped > 0);
		for _, user in ipairs({ ROOM, OTHER }) do
			local k = jid_join(user, "localhost", "minimix_log");
			local found = false;
			for _, d in ipairs(store.counts.dropped) do found = found or d == k; end
			assert.truthy(found, k);
		end
		assert.equal(0, (env.lib.pending()));
	end);

	it("writes a backlog at shutdown in batches of at most 100", function()
		local env, store, engine = load_sql();
		for i = 1, 250 do say(env, i % 2 == 0 and ROOM or OTHER, "m" .. i); end
		env.hooks["server-cleanup"]();
		assert.equal(3, engine.transactions);
		assert.equal(125, #logged(store, ROOM));
		assert.equal(125, #logged(store, OTHER));
		assert.equal("m2", logged(store, ROOM)[1]);
		assert.equal("m250", logged(store, ROOM)[125]);
	end);

	it("writes the row the store's append writes, from the text the shim made of the message", function()
		local env, store = load_sql();
		local m = st.message({ from = ROOM .. "/dan", type = "groupchat", to = "alice@localhost" })
			:text_tag("body", "one & <two>")
			:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = "sid-x" }):up();
		-- the shim's text of it (m.payload), with other quotes than
		-- Prosody's: the row is that very text, not a serialisation
		local payload = ('<message from="%s/dan" type="groupchat"><body>one &amp; &lt;two&gt;</body>'
			.. '<stanza-id xmlns="urn:xmpp:sid:0" by="%s" id="sid-x"/></message>'):format(ROOM, ROOM);
		env.lib.message("alice@localhost", ROOM, "dan", m, { stamp = 1700000000.5, delayed = false, payload = payload });
		-- and a delayed one (a re-join's history) has no mark
		local d = st.message({ from = ROOM .. "/dan", type = "groupchat", to = "alice@localhost" })
			:text_tag("body", "older")
			:tag("delay", { xmlns = "urn:xmpp:delay", from = ROOM, stamp = "2023-11-14T22:00:00Z" }):up();
		env.lib.message("alice@localhost", ROOM, "dan", d, { stamp = 1699999200, delayed = true });
		advance(env, 0.1);
		assert.equal(2, #store.items);
		assert.equal(payload:sub(1, -#"</message>" - 1)
			.. "<said xmlns='urn:xmpp:minimix:said:0' at='2023-11-14T22:13:20.500000Z'/></message>", store.items[1].text);
		-- what mod_storage_sql's append writes for the stanza the log kept before
		local before = st.clone(m);
		before.attr.to = nil;
		before:tag("said", { xmlns = "urn:xmpp:minimix:said:0", at = "2023-11-14T22:13:20.500000Z" }):up();
		assert.same(st.preserialize(xml_parse(tostring(before))), st.preserialize(store.items[1].value));
		d.attr.to = nil;
		assert.equal(tostring(d), store.items[2].text);
	end);

	it("writes a batch that failed one by one: a refused message alone is given up, nothing held up", function()
		local env, store, engine = load_sql();
		store.refuse_body = "bad";
		say(env, ROOM, "good 1");
		say(env, ROOM, "bad");
		say(env, OTHER, "other");
		say(env, ROOM, "good 2");
		advance(env, 0.1);
		assert.equal(1, engine.transactions, "the batch failed");
		assert.same({ "good 1" }, logged(store, ROOM), "written one by one up to the refused one");
		assert.same({ "other" }, logged(store, OTHER), "another room is not held up");
		advance(env, 1);
		assert.same({ "good 1", "good 2" }, logged(store, ROOM));
		assert.equal(1, dropped(env));
		assert.equal(1, count_logs(env, "warn", "Giving up writing a message of " .. ROOM:gsub("%p", "%%%0")));
		assert.equal(0, count_logs(env, "error", "Cannot write"), "not an outage");
		assert.equal(0, (env.lib.pending()));
		-- and batches again after it
		local before = engine.transactions;
		say(env, ROOM, "good 3");
		say(env, ROOM, "good 4");
		advance(env, 0.1);
		assert.equal(before + 1, engine.transactions);
		assert.same({ "good 1", "good 2", "good 3", "good 4" }, logged(store, ROOM));
	end);

	it("tries no batch while the store is away, and loses nothing of an outage", function()
		local env, store, engine = load_sql();
		engine.down, store.fail = true, "connection refused";
		say(env, ROOM, "a");
		say(env, ROOM, "b");
		advance(env, 0.1);
		assert.equal(1, count_logs(env, "error", "Cannot write to the room log"));
		local tried = engine.transactions;
		say(env, ROOM, "c");
		advance(env, 10);
		assert.equal(tried, engine.transactions, "one by one while it is away");
		engine.down, store.fail = false, nil;
		advance(env, 20);
		assert.same({ "a", "b", "c" }, logged(store, ROOM));
		assert.equal(0, dropped(env));
		assert.equal(0, (env.lib.pending()));
	end);

	it("writes one by one where the store cannot take batches", function()
		for _, case in ipairs({
			{ what = "a store with a quota", setup = function(store) store.caps.quota = 1000; end },
			{ what = "another driver", driver = "internal" },
			{ what = "no engine of this sql option", options = { sql = { driver = "PostgreSQL", database = "elsewhere" } } },
			{ what = "no item counts to keep right", setup = function(store) store.append = log_mock.fake_archive().append; end },
		}) do
			local store = sql_store();
			if case.setup then case.setup(store); end
			local engine = sql_engine(store);
			local options = case.options or {};
			options.sql = options.sql or SQL;
			local env = load_log(options, case.driver, { ["/*/sql/connections"] = { [db2uri(SQL)] = engine } },
				{ minimix_log = store, archive = log_mock.fake_archive() });
			say(env, ROOM, "x");
			say(env, ROOM, "y");
			advance(env, 0.1);
			assert.equal(0, engine.transactions, case.what);
			assert.equal(2, store.appends, case.what);
			assert.same({ "x", "y" }, logged(store, ROOM), case.what);
		end
	end);
end);
