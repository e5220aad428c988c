-- Specs for the room log's batches on the file store (minimix_logfile.lib.lua),
-- against Prosody's own mod_storage_internal and util.datamanager in a
-- scratch directory: a batch's items read back as the store's own, the
-- store's item counts follow, nothing is written where a room's count is
-- not known or would pass the quota, texts of every kind come back whole,
-- and a room whose file cannot be written stops the batch there.
local st = require "util.stanza";
local advance = require "log_mock".advance;
local jid_join = require "util.jid".join;

local ROOM, OTHER = "room@muc.example", "other@muc.example";
local XMLNS_LOGGED = "urn:xmpp:minimix:logged:0";

local function scratch()
	local dir = os.tmpname();
	os.remove(dir);
	assert(os.execute("mkdir -p '" .. dir .. "'"));
	return dir;
end

local function upvalue(fn, wanted)
	for i = 1, 255 do
		local name, value = debug.getupvalue(fn, i);
		if name == nil then return nil; end
		if name == wanted then return value; end
	end
end

-- Prosody's file store (mod_storage_internal) on dir, and the batcher of
-- its minimix_log store.
local function load_store(dir, options)
	local dm = require "util.datamanager";
	dm.set_data_path(dir);
	options = options or {};
	local driver;
	local module = { host = "localhost" };
	function module:get_option_number(name, default) return options[name] or default; end
	function module:get_option(name, default) return options[name] or default; end
	function module:log() end
	function module:provides(_, d) driver = d; end
	function module:require(name)
		return assert(loadfile("./" .. name .. ".lib.lua", "t", setmetatable({ module = module }, { __index = _G })))();
	end
	local saved = package.loaded["core.storagemanager"];
	package.loaded["core.storagemanager"] = { olddm = dm };
	local env = setmetatable({ module = module }, { __index = _G });
	local ok, err = pcall(assert(loadfile("/usr/lib/prosody/modules/mod_storage_internal.lua", "t", env)));
	package.loaded["core.storagemanager"] = saved;
	assert(ok, err);
	local store = driver:open("minimix_log", "archive");
	local lib = assert(loadfile("./minimix_logfile.lib.lua", "t", env))();
	local compact = function(v)
		if v.name == "logged" and #v == 1 and type(v[1]) == "string" then return v[1]; end
	end
	local batch, why = lib.batcher(store, "minimix_log", "internal", compact);
	assert(batch, why);
	return store, batch, upvalue(store.append, "archive_item_count_cache");
end

local function logged(text, said)
	return st.stanza("logged", { xmlns = XMLNS_LOGGED, said = said }):text(text);
end

local function message(body)
	return tostring(st.message({ from = ROOM .. "/dan", type = "groupchat", id = "m-" .. body })
		:text_tag("body", body));
end

local function items(store, user)
	local out = {};
	for key, value, when, with in assert(store:find(user, {})) do
		out[#out+1] = { key = key, value = value, when = when, with = with };
	end
	return out;
end

local function file_lines(dir, user)
	local path = require "util.datamanager".getpath(user, "localhost", "minimix_log", "list");
	local out = {};
	for line in io.lines(path) do out[#out+1] = line; end
	return out;
end

describe("the room log on the file store", function()
	it("writes a batch in one append per room, read back as the store's own items", function()
		local dir = scratch();
		local store, batch, counts = load_store(dir);
		-- the store's own appends first: they count the rooms' items
		assert.truthy(store:append(ROOM, nil, logged(message("first"), "2023-11-14T22:13:20.5Z"), 1700000000, "dan"));
		assert.truthy(store:append(OTHER, nil, logged(message("elsewhere")), 1700000000, OTHER));
		local entries = {
			{ user = ROOM, value = logged(message("two"), "2023-11-14T22:13:21.25Z"), when = 1700000001, with = "dan" },
			{ user = OTHER, value = logged(message("other two")), when = 1700000001, with = "eve" },
			{ user = ROOM, value = logged(message("three")), when = 1700000002, with = ROOM },
			-- not the log's own kind (the accounts' archives): serialised as the store does
			{ user = ROOM, value = st.message({ type = "groupchat" }):text_tag("body", "four"), when = 1700000003,
				with = "dan" },
		};
		assert.is_true(batch(entries));
		local got = items(store, ROOM);
		assert.equal(4, #got);
		assert.same({ message("first"), message("two"), message("three") }, {
			got[1].value[1], got[2].value[1], got[3].value[1] });
		assert.equal("four", got[4].value:get_child_text("body"));
		for i, e in ipairs({ entries[1], entries[3], entries[4] }) do
			local it = got[i + 1];
			assert.equal(e.written_key, it.key);
			assert.is_true(e.batched);
			assert.equal(e.when, it.when);
			assert.equal(e.with, it.with);
		end
		-- the list holds what the store's own append writes, field for field
		local list = require "util.datamanager".list_load(ROOM, "localhost", "minimix_log");
		local function shape(item)
			local keys, attrs = {}, {};
			for k in pairs(item) do keys[#keys+1] = tostring(k); end
			for k in pairs(item.attr) do attrs[#attrs+1] = k; end
			table.sort(keys);
			table.sort(attrs);
			return { keys = keys, attrs = attrs };
		end
		assert.same(shape(list[1]), shape(list[2]));
		assert.equal(require "util.datetime".datetime(1700000001), list[2].attr.stamp);
		assert.equal(require "util.datetime".datetime(1700000003), list[4].attr.stamp);
		assert.equal("2023-11-14T22:13:21.25Z", got[2].value.attr.said);
		assert.is_nil(got[3].value.attr.said);
		assert.equal(XMLNS_LOGGED, got[3].value.attr.xmlns);
		assert.equal(message("two"), got[2].value[1]);
		-- the key of the store's own kind (util.id's medium on 0.12)
		assert.matches("^[%w_-]+$", got[2].key);
		assert.not_equal(got[2].key, got[3].key);
		assert.same({ message("elsewhere"), message("other two") }, {
			items(store, OTHER)[1].value[1], items(store, OTHER)[2].value[1] });
		-- the store's count follows what was written
		assert.equal(4, counts:get(jid_join(ROOM, "localhost", "minimix_log")));
		assert.equal(2, counts:get(jid_join(OTHER, "localhost", "minimix_log")));
	end);

	it("counts a room the store has not counted yet, as its append does, and writes nothing past its quota", function()
		local dir = scratch();
		-- an earlier run's list: three items the store has not counted since the start
		local earlier = load_store(dir);
		for i = 1, 3 do assert.truthy(earlier:append(ROOM, nil, logged(message("old" .. i)), 1700000000, "dan")); end
		local store, batch, counts = load_store(dir, { storage_archive_item_limit = 6 });
		local key = jid_join(ROOM, "localhost", "minimix_log");
		assert.is_nil(counts:get(key));
		local e = { user = ROOM, value = logged(message("one")), when = 1700000001, with = "dan" };
		assert.is_true(batch({ e }));
		assert.equal(4, counts:get(key));
		local more = {};
		for i = 1, 3 do
			more[i] = { user = ROOM, value = logged(message("m" .. i)), when = 1700000001, with = "dan" };
		end
		local ok, err = batch(more);
		assert.is_nil(ok);
		assert.matches("quota", err);
		assert.is_nil(more[1].batched);
		assert.equal(4, #items(store, ROOM));
		assert.is_true(batch({ more[1], more[2] }));
		assert.equal(6, #items(store, ROOM));
		-- and the store's own quota sees the batch's items
		local _, full = store:append(ROOM, nil, logged(message("over")), 1700000002, "dan");
		assert.equal("quota-limit", full);
	end);

	it("keeps any text whole, and no line of the list starts like an item but an item's", function()
		local dir = scratch();
		local store, batch = load_store(dir);
		assert.truthy(store:append(ROOM, nil, logged(message("zero")), 1700000000, "dan"));
		local texts = {
			"line one\nitem({name=\"x\"});\nline three",
			"quotes \" ' and \\ backslashes \\n and ]] ]=] brackets",
			"control \r \t and UTF-8 \226\130\172 ö 𝄞",
			"\n\nitem(",
			"",
			-- (as they are, in a long string)
			"<body>a &amp; b</body> ]] [=[ [[ \\ \" ' ö",
			"ends in ]",
			"ends in ]==",
			-- (not: they would end the long string early)
			"ends in ]=",
			"]=",
		};
		local entries = {};
		for i, t in ipairs(texts) do
			entries[i] = { user = ROOM, value = logged(t, i % 2 == 0 and "2023-11-14T22:13:21Z" or nil),
				when = 1700000001, with = "nick \"with\" quotes\n" };
		end
		assert.is_true(batch(entries));
		local got = items(store, ROOM);
		assert.equal(#texts + 1, #got);
		for i, t in ipairs(texts) do
			assert.equal(t, got[i + 1].value[1] or "");
			assert.equal("nick \"with\" quotes\n", got[i + 1].with);
		end
		local starts = 0;
		for _, line in ipairs(file_lines(dir, ROOM)) do
			if line:sub(1, 4) == "item" then starts = starts + 1; end
		end
		assert.equal(#texts + 1, starts, "Prosody 13 indexes a list by the lines that start with \"item\"");
	end);

	it("stops at a room whose file cannot be written: the rooms before it are written, no later one", function()
		local dir = scratch();
		local store, batch = load_store(dir);
		for _, user in ipairs({ ROOM, OTHER, "third@muc.example" }) do
			assert.truthy(store:append(user, nil, logged(message("zero")), 1700000000, "dan"));
		end
		-- OTHER's list can no longer be opened nor replaced
		local path = require "util.datamanager".getpath(OTHER, "localhost", "minimix_log", "list");
		assert(os.remove(path));
		assert(os.execute("mkdir '" .. path .. "' '" .. path .. "~'"));
		local entries = {
			{ user = ROOM, value = logged(message("one")), when = 1700000001, with = "dan" },
			{ user = OTHER, value = logged(message("other")), when = 1700000001, with = "dan" },
			{ user = "third@muc.example", value = logged(message("third")), when = 1700000001, with = "dan" },
			{ user = ROOM, value = logged(message("two")), when = 1700000001, with = "dan" },
		};
		local ok, err = batch(entries);
		assert.is_nil(ok);
		assert.is_string(err);
		assert.is_true(entries[1].batched);
		assert.is_true(entries[4].batched);
		assert.is_string(entries[1].written_key);
		assert.is_nil(entries[2].batched);
		assert.is_nil(entries[3].batched);
		assert.equal(3, #items(store, ROOM));
		assert.equal(1, #items(store, "third@muc.example"));
	end);

	describe("through the log's writer", function()
		local log_mock = require "log_mock";

		local function load_log(dir)
			local store = load_store(dir);
			local env = log_mock.load_log({}, "internal", nil,
				{ minimix_log = store, archive = log_mock.fake_archive() }, require "util.datamanager");
			return env, store;
		end

		local n = 0;
		local function say(env, room, body)
			n = n + 1;
			local m = st.message({ from = room .. "/dan", type = "groupchat", to = "alice@localhost", id = "w" .. n })
				:text_tag("body", body);
			env.lib.message("alice@localhost", room, "dan", m, { stamp = env.clock + 0.25, delayed = false });
		end

		local function bodies(store, user)
			local out = {};
			for _, it in ipairs(items(store, user)) do
				out[#out+1] = log_mock.message_of(it.value):get_child_text("body");
			end
			return out;
		end

		it("writes a room's messages of a flush in one append, each once, in order", function()
			local dir = scratch();
			local env, store = load_log(dir);
			local appends = 0;
			local append = store.append;
			store.append = function(...) appends = appends + 1; return append(...); end
			say(env, ROOM, "one");
			advance(env, 0.1);
			say(env, ROOM, "two");
			say(env, ROOM, "three");
			say(env, ROOM, "four");
			advance(env, 0.1);
			assert.equal(0, appends, "no append of the store's own");
			assert.same({ "one", "two", "three", "four" }, bodies(store, ROOM));
		end);

		it("takes the rooms a failed batch wrote as written, and writes the others one by one", function()
			local dir = scratch();
			local env, store = load_log(dir);
			local THIRD = "third@muc.example";
			for _, room in ipairs({ ROOM, OTHER, THIRD }) do say(env, room, "zero"); end
			advance(env, 0.1);
			-- OTHER's list can no longer be opened nor replaced
			local path = require "util.datamanager".getpath(OTHER, "localhost", "minimix_log", "list");
			assert(os.remove(path));
			assert(os.execute("mkdir '" .. path .. "' '" .. path .. "~'"));
			say(env, ROOM, "one");
			say(env, OTHER, "other one");
			say(env, THIRD, "third one");
			say(env, ROOM, "two");
			advance(env, 0.1);
			assert.same({ "zero", "one", "two" }, bodies(store, ROOM));
			assert.same({ "zero", "third one" }, bodies(store, THIRD));
			-- OTHER's file comes back: its message is written, once
			assert(os.execute("rmdir '" .. path .. "' '" .. path .. "~'"));
			advance(env, 30);
			assert.same({ "other one" }, bodies(store, OTHER));
			assert.same({ "zero", "one", "two" }, bodies(store, ROOM));
		end);
	end);
end);
