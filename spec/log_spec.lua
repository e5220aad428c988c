-- Specs for the room log (minimix_log.lib.lua) loaded into a mocked Prosody
-- `module` with fake archive stores: what is written, once, when, and what
-- happens when the store fails.
local st = require "util.stanza";

local ROOM = "room@muc.example";

local log_mock = require "log_mock";
local load_log, advance, count_logs = log_mock.load_log, log_mock.advance, log_mock.count_logs;
local message_of = log_mock.message_of;

-- A room message: nick, body, stanza-id (by the room) or none, delay stamp.
local function msg(nick, body, sid, opts)
	opts = opts or {};
	local m = st.message({ from = ROOM .. (nick and "/" .. nick or ""), type = "groupchat",
		id = opts.id, to = opts.to or "alice@localhost" });
	if opts.subject then m:text_tag("subject", opts.subject); end
	if body then m:text_tag("body", body); end
	if opts.stamp then
		m:tag("delay", { xmlns = "urn:xmpp:delay", from = ROOM, stamp = opts.stamp }):up();
	end
	if sid then m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = sid }):up(); end
	return m;
end

-- What the shim hands over with each message.
local function deliver(env, account, stanza, delayed)
	local nick = stanza.attr.from:match("/(.*)$");
	env.lib.message(account, ROOM, nick, stanza, { stamp = env.clock + 0.25, delayed = delayed or false });
end

-- The same, with what the shim read of it broken: no time.
local function deliver_broken(env, account, stanza)
	env.lib.message(account, ROOM, "dan", stanza, { delayed = false });
end

local function logged(env)
	local out = {};
	for _, it in ipairs(env.stores.minimix_log.items) do
		local m = message_of(it.value);
		out[#out+1] = m:get_child_text("body") or ("subject:" .. (m:get_child_text("subject") or ""));
	end
	return out;
end

describe("room log", function()
	it("writes each room message once per room, however many accounts get it", function()
		local env = load_log();
		for _, account in ipairs({ "alice@localhost", "bob@localhost", "carol@localhost" }) do
			deliver(env, account, msg("dan", "one", "sid-1"));
		end
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		deliver(env, "bob@localhost", msg("dan", "two", "sid-2"));
		advance(env, 1);
		assert.same({ "one", "two" }, logged(env));
		local it = env.stores.minimix_log.items[1];
		assert.equal(ROOM, it.user);
		assert.equal("sid-1", it.key, "keyed by the room's stanza-id");
		assert.equal("dan", it.with);
		assert.equal(1700000000, it.when, "whole seconds");
		assert.is_nil(it.value.attr.to, "stored without 'to'");
		assert.equal("sid-1", it.value:get_child("stanza-id", "urn:xmpp:sid:0").attr.id);
		assert.equal(2, env.metrics.log_writes.by.log.total);
	end);

	it("leaves the key to the file store, which rewrites its list for a keyed append", function()
		local env = load_log(nil, "internal");
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		advance(env, 1);
		assert.equal("gen1", env.stores.minimix_log.items[1].key);
		assert.equal("sid-1", message_of(env.stores.minimix_log.items[1].value):get_child("stanza-id", "urn:xmpp:sid:0").attr.id);
	end);

	it("tells messages without a stanza-id apart by sender, id and body", function()
		local env = load_log();
		deliver(env, "alice@localhost", msg("dan", "hi", nil, { id = "m1" }));
		deliver(env, "bob@localhost", msg("dan", "hi", nil, { id = "m1" }));
		deliver(env, "alice@localhost", msg("dan", "hi", nil, { id = "m2" }));
		deliver(env, "alice@localhost", msg("eve", "hi", nil, { id = "m1" }));
		advance(env, 1);
		assert.same({ "hi", "hi", "hi" }, logged(env));
		assert.equal("gen1", env.stores.minimix_log.items[1].key, "no stanza-id: the store's own key");
	end);

	it("writes a subject when it changes, not each time a join repeats it", function()
		local env = load_log();
		deliver(env, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch" }));
		deliver(env, "bob@localhost", msg("dan", nil, nil, { subject = "Lunch" }));
		-- a later join: the room sends the subject again, with a delay
		deliver(env, "carol@localhost", msg("dan", nil, nil, { subject = "Lunch", stamp = "2023-11-14T22:13:20Z" }), true);
		deliver(env, "alice@localhost", msg("eve", nil, nil, { subject = "Dinner" }));
		-- a room without a subject sends an empty one from itself on each join
		deliver(env, "alice@localhost", msg(nil, nil, nil, { subject = "" }));
		-- a subject cleared by an occupant is a change
		deliver(env, "alice@localhost", msg("eve", nil, nil, { subject = "" }));
		advance(env, 1);
		assert.same({ "subject:Lunch", "subject:Dinner", "subject:" }, logged(env));
		assert.equal("dan", env.stores.minimix_log.items[1].with);
	end);

	it("after a restart, writes none of a re-join's history that the store holds", function()
		local env = load_log();
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		deliver(env, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch" }));
		advance(env, 1);
		-- a new instance on the same data (a restart): the room's history
		-- overlaps what was logged, then goes on
		local reopened = load_log();
		reopened.stores.minimix_log.items = env.stores.minimix_log.items;
		local function hist(nick, body, sid)
			deliver(reopened, "alice@localhost", msg(nick, body, sid, { stamp = "2023-11-14T22:13:20Z" }), true);
		end
		hist("dan", "one", "sid-1");
		hist("dan", "two", "sid-2");
		deliver(reopened, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch", stamp = "2023-11-14T22:13:20Z" }), true);
		hist("dan", "three", "sid-3");
		deliver(reopened, "alice@localhost", msg("dan", "four", "sid-4"));
		advance(reopened, 1);
		assert.same({ "one", "two", "subject:Lunch", "three", "four" }, logged(reopened));
	end);

	describe("ids the module stamps in a room without an archive", function()
		-- what minimix_mam.lib.lua does with a message: its stanza-id
		local function stamp(env, stanza, delayed)
			local id = env.lib.stamp_id(ROOM, stanza, delayed);
			stanza:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = ROOM, id = id }):up();
			return id;
		end

		it("gives each message a new uuid, and its other copies the same", function()
			local env = load_log();
			local one = stamp(env, msg("dan", "one", nil, { id = "m1" }));
			local two = stamp(env, msg("dan", "two", nil, { id = "m2" }));
			-- a random UUID (RFC 9562, version 4), lower case
			assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", one);
			assert.equal(one:lower(), one);
			assert.not_equal(one, two);
			-- another account's copy (a remote room sends one each), and a
			-- re-join's history of it (delayed, same sender, id and body)
			assert.equal(one, stamp(env, msg("dan", "one", nil, { id = "m1", to = "bob@localhost" })));
			assert.equal(one, stamp(env, msg("dan", "one", nil, { id = "m1", stamp = "2023-11-14T22:13:20Z" }), true));
			-- the same words from another, or with another id: another message
			assert.not_equal(one, stamp(env, msg("erin", "one", nil, { id = "m1" })));
			assert.not_equal(one, stamp(env, msg("dan", "one", nil, { id = "m3" })));
		end);

		it("keeps the message under its id, once however many copies come", function()
			local env = load_log({}, "sql");
			for _, account in ipairs({ "alice@localhost", "bob@localhost" }) do
				local m = msg("dan", "one", nil, { id = "m1", to = account });
				stamp(env, m);
				deliver(env, account, m);
			end
			advance(env, 1);
			assert.same({ "one" }, logged(env));
			local it = env.stores.minimix_log.items[1];
			assert.equal(it.value:get_child("stanza-id", "urn:xmpp:sid:0").attr.id, it.key);
		end);

		it("after a restart, finds the ids again for a re-join's history, stamped or not", function()
			local env = load_log();
			local m1, m2 = msg("dan", "one", nil, { id = "m1" }), msg("dan", "two", nil, { id = "m2" });
			local id1, id2 = stamp(env, m1), stamp(env, m2);
			deliver(env, "alice@localhost", m1);
			deliver(env, "alice@localhost", m2);
			advance(env, 1);
			local reopened = load_log();
			reopened.stores.minimix_log.items = env.stores.minimix_log.items;
			local h1 = msg("dan", "one", nil, { id = "m1", stamp = "2023-11-14T22:13:20Z" });
			assert.equal(id1, stamp(reopened, h1, true));
			deliver(reopened, "alice@localhost", h1, true);
			-- not stamped: it came before the room's disco#info answer
			deliver(reopened, "alice@localhost", msg("dan", "two", nil, { id = "m2", stamp = "2023-11-14T22:13:20Z" }), true);
			local m3 = msg("dan", "three", nil, { id = "m3" });
			local id3 = stamp(reopened, m3);
			deliver(reopened, "alice@localhost", m3);
			advance(reopened, 1);
			assert.same({ "one", "two", "three" }, logged(reopened));
			assert.is_true(id3 ~= id1 and id3 ~= id2);
		end);
	end);

	it("logs a subject with a body or a thread as a message, not as a subject change", function()
		-- XEP-0045 §8.1: only a <subject/> without <body/> and <thread/>
		-- changes the subject; the same subject on three messages is no repeat
		local env = load_log();
		for i = 1, 3 do
			local with_sid = msg("bob", "said " .. i, "sid-" .. i, { subject = "Topic" });
			deliver(env, "alice@localhost", with_sid);
			deliver(env, "carol@localhost", msg("bob", "said " .. i, "sid-" .. i, { subject = "Topic" }));
			-- without a stanza-id (a room without mod_muc_mam): told apart by id
			deliver(env, "alice@localhost", msg("bob", "plain " .. i, nil, { subject = "Topic", id = "p" .. i }));
		end
		local threaded = msg("bob", nil, "sid-t", { subject = "Topic" });
		threaded:text_tag("thread", "t1");
		deliver(env, "alice@localhost", threaded);
		advance(env, 1);
		assert.same({ "said 1", "plain 1", "said 2", "plain 2", "said 3", "plain 3", "subject:Topic" }, logged(env));
		assert.equal("sid-t", env.stores.minimix_log.items[7].key, "the threaded one is a message too");
		-- and a later session's catch-up has them all, none taken for a subject
		local got = env.lib.replay(ROOM, { spans = { { 1700000000 - 1 } }, maxstanzas = 100 });
		local bodies = {};
		for _, said in ipairs(got) do bodies[#bodies+1] = said[1]:get_child_text("body") or "thread"; end
		assert.same({ "said 1", "plain 1", "said 2", "plain 2", "said 3", "plain 3", "thread" }, bodies);
		-- a subject change after them is still one
		deliver(env, "alice@localhost", msg("bob", nil, nil, { subject = "Topic" }));
		deliver(env, "carol@localhost", msg("bob", nil, nil, { subject = "Topic" }));
		advance(env, 1);
		assert.equal(8, #logged(env));
		assert.equal("subject:Topic", logged(env)[8]);
	end);

	it("after a restart, knows subject and body messages of the re-join's history", function()
		local env = load_log();
		for i = 1, 3 do deliver(env, "alice@localhost", msg("bob", "said " .. i, "sid-" .. i, { subject = "Topic" })); end
		advance(env, 1);
		local reopened = load_log();
		reopened.stores.minimix_log.items = env.stores.minimix_log.items;
		for i = 1, 3 do
			deliver(reopened, "alice@localhost", msg("bob", "said " .. i, "sid-" .. i,
				{ subject = "Topic", stamp = "2023-11-14T22:13:20Z" }), true);
		end
		advance(reopened, 1);
		assert.same({ "said 1", "said 2", "said 3" }, logged(reopened));
	end);

	it("never keeps nor uses as a key a stanza-id longer than 256 bytes", function()
		local env = load_log();
		local long = ("x"):rep(100 * 1024);
		local long2 = ("x"):rep(100 * 1024 - 1) .. "y";
		deliver(env, "alice@localhost", msg("dan", "one", long));
		deliver(env, "bob@localhost", msg("dan", "one", long));
		deliver(env, "alice@localhost", msg("dan", "two", long2));
		deliver(env, "alice@localhost", msg("dan", "edge", ("z"):rep(256)));
		advance(env, 1);
		assert.same({ "one", "two", "edge" }, logged(env));
		local items = env.stores.minimix_log.items;
		assert.equal("gen1", items[1].key, "the store makes up the key");
		assert.equal("gen2", items[2].key);
		assert.equal(("z"):rep(256), items[3].key, "256 bytes are a key");
		assert.equal(long, items[1].value:get_child("stanza-id", "urn:xmpp:sid:0").attr.id,
			"the message is logged as the room sent it");
		-- the digest form the shim uses too: fixed length, one per id
		local d = env.lib.bounded_id(long);
		assert.equal(41, #d);
		assert.equal("#", d:sub(1, 1));
		assert.not_equal(d, env.lib.bounded_id(long2));
		assert.equal("short", env.lib.bounded_id("short"));
		assert.equal(("z"):rep(256), env.lib.bounded_id(("z"):rep(256)));
		-- after a restart the re-join's history brings them again: known
		local reopened = load_log();
		reopened.stores.minimix_log.items = items;
		deliver(reopened, "alice@localhost", msg("dan", "one", long, { stamp = "2023-11-14T22:13:20Z" }), true);
		deliver(reopened, "alice@localhost", msg("dan", "two", long2, { stamp = "2023-11-14T22:13:20Z" }), true);
		advance(reopened, 1);
		assert.same({ "one", "two", "edge" }, logged(reopened));
	end);

	it("does not take a stanza-id by someone else for the room's", function()
		local env = load_log();
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		-- an occupant's message carrying a stanza-id with the same id, not by the room
		local forged = msg("eve", "forged", nil, { id = "f1" });
		forged:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = "eve@elsewhere.example", id = "sid-1" }):up();
		deliver(env, "alice@localhost", forged);
		advance(env, 1);
		assert.same({ "one", "forged" }, logged(env));
		local items = env.stores.minimix_log.items;
		assert.equal("sid-1", items[1].key, "the earlier entry is not replaced");
		assert.not_equal("sid-1", items[2].key);
	end);

	it("after a restart, primes from the room's newest entries, not its oldest", function()
		local env = load_log();
		deliver(env, "alice@localhost", msg("dan", nil, nil, { subject = "Old" }));
		for i = 1, 200 do deliver(env, "alice@localhost", msg("dan", "m" .. i, "sid-" .. i)); end
		deliver(env, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch" }));
		advance(env, 1);
		assert.equal(202, #logged(env));
		local reopened = load_log();
		reopened.stores.minimix_log.items = env.stores.minimix_log.items;
		-- the re-join's history: the room's latest 20, then its subject
		for i = 181, 200 do
			deliver(reopened, "alice@localhost", msg("dan", "m" .. i, "sid-" .. i,
				{ stamp = "2023-11-14T22:13:20Z" }), true);
		end
		deliver(reopened, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch", stamp = "2023-11-14T22:13:20Z" }), true);
		advance(reopened, 1);
		assert.equal(0, reopened.stores.minimix_log.appends, "nothing written again");
		assert.equal(202, #logged(reopened));
		assert.equal(1, reopened.stores.minimix_log.finds, "one read, when the first delayed message came");
	end);

	it("waits for the flush interval, writes in order, and all at shutdown", function()
		local env = load_log({ minimix_log_flush_interval = 500 });
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		assert.same({}, logged(env), "nothing written from inside the delivery");
		advance(env, 0.4);
		assert.same({}, logged(env));
		advance(env, 0.2);
		assert.same({ "one", "two" }, logged(env));
		deliver(env, "alice@localhost", msg("dan", "three", "sid-3"));
		env.hooks["server-cleanup"]();
		assert.same({ "one", "two", "three" }, logged(env));
	end);

	-- net.server runs timers only when no connection has anything to read:
	-- here the clock moves and no timer runs, as under a steady stream of
	-- stanzas, where a crash would otherwise lose all that waited.
	it("writes what waits once it is overdue, on a server too busy for its timers", function()
		local env = load_log({ minimix_log_flush_interval = 100 });
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		env.clock = env.clock + 0.05;
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		assert.same({}, logged(env), "within the flush interval nothing is written");
		env.clock = env.clock + 0.06;
		deliver(env, "alice@localhost", msg("dan", "three", "sid-3"));
		assert.same({ "one", "two", "three" }, logged(env));
		env.clock = env.clock + 0.05;
		deliver(env, "alice@localhost", msg("dan", "four", "sid-4"));
		assert.same({ "one", "two", "three" }, logged(env), "a new interval begins");
		-- the late timers, when they run at last, write nothing twice
		advance(env, 1);
		assert.same({ "one", "two", "three", "four" }, logged(env));
		assert.equal(4, env.stores.minimix_log.appends);
	end);

	it("retries with its growing delays, not per message, on a server too busy for its timers", function()
		local env = load_log({ minimix_log_flush_interval = 100 });
		local store = env.stores.minimix_log;
		store.fail = "connection refused";
		deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
		env.clock = env.clock + 0.2;
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		assert.equal(1, store.appends, "the overdue flush was tried");
		-- the retry is due 1 s after that failure
		for i = 3, 11 do
			env.clock = env.clock + 0.1;
			deliver(env, "alice@localhost", msg("dan", "m" .. i, "sid-" .. i));
		end
		assert.equal(1, store.appends, "not tried again before the retry is due");
		local finds = store.finds or 0;
		env.clock = env.clock + 0.2;
		deliver(env, "alice@localhost", msg("dan", "m12", "sid-12"));
		-- the head, once more at once (a reconnection); then the store is
		-- asked whether it answers at all, and it does not: an outage
		assert.equal(3, store.appends, "the overdue retry was tried");
		assert.equal(finds + 1, store.finds, "the store was asked whether it answers");
		store.fail = nil;
		env.clock = env.clock + 2;
		deliver(env, "alice@localhost", msg("dan", "m13", "sid-13"));
		local want = { "one", "two" };
		for i = 3, 13 do want[#want+1] = "m" .. i; end
		assert.same(want, logged(env));
		assert.equal(1, count_logs(env, "error", "Cannot write"));
		assert.equal(1, count_logs(env, "info", "Writing to the room log again"));
	end);

	it("expires old entries and keeps each room's latest on a periodic job", function()
		assert.equal(7 * 86400, load_log().lib.parse_duration("1w"));
		assert.equal(2 * 86400, load_log().lib.parse_duration("2d"));
		assert.equal(90, load_log().lib.parse_duration(90));
		assert.is_nil(load_log().lib.parse_duration("never"));
		local env = load_log({ minimix_log_expires_after = "2d", minimix_log_max_per_room = 2,
			minimix_log_cleanup_interval = 60 });
		deliver(env, "alice@localhost", msg("dan", "old", "sid-1"));
		advance(env, 1);
		advance(env, 2 * 86400 - 10);
		deliver(env, "alice@localhost", msg("dan", "a", "sid-2"));
		deliver(env, "alice@localhost", msg("dan", "b", "sid-3"));
		deliver(env, "alice@localhost", msg("dan", "c", "sid-4"));
		advance(env, 1);
		assert.same({ "old", "a", "b", "c" }, logged(env), "the job has not run since");
		advance(env, 60);
		assert.same({ "b", "c" }, logged(env));
		local d = env.stores.minimix_log.deletes;
		assert.equal(ROOM, d[#d].user);
		assert.equal(2, d[#d].query.truncate);
	end);

	it("makes room when the store's own quota is reached", function()
		local env = load_log({ minimix_log_max_per_room = 100 });
		env.stores.minimix_log.quota = 100;
		for i = 1, 101 do deliver(env, "alice@localhost", msg("dan", "m" .. i, "sid-" .. i)); end
		advance(env, 1);
		-- truncated to 90% of the quota, so that the file store does not
		-- rewrite the list on every hundredth write
		assert.equal(91, env.stores.minimix_log:count(ROOM));
		assert.equal("m101", logged(env)[91]);
		assert.equal(0, env.metrics.log_dropped.by.log.total);
	end);

	it("lets delivery go on when something in it fails", function()
		local env = load_log();
		assert.has_no.errors(function() deliver_broken(env, "alice@localhost", msg("dan", "one", "sid-1")); end);
		assert.equal(1, count_logs(env, "error", "could not take a message"));
		deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
		advance(env, 1);
		assert.same({ "two" }, logged(env));
	end);

	it("keeps a broken SQL connection until its prepared statements go, so they go first", function()
		-- util.sql, reduced: connect() makes a connection and a new table of
		-- prepared statements; a broken connection is dropped at once, its
		-- statements at the next connect().  LuaDBI's statements point at
		-- their connection without holding it.
		local methods = {};
		function methods:connect()
			self.conn, self.prepared = {}, { {} };
			return true;
		end
		local engine = setmetatable({}, { __index = methods });
		engine:connect();
		local engines = { ["PostgreSQL://db"] = engine };
		load_log({}, "sql", { ["/*/sql/connections"] = engines });
		local weak = setmetatable({}, { __mode = "v" });
		weak.first = engine.conn;
		engine.conn = nil; -- broke
		collectgarbage(); collectgarbage();
		assert.is_not_nil(weak.first); -- its statements are still in engine.prepared
		engine:connect();
		weak.second = engine.conn;
		collectgarbage(); collectgarbage();
		assert.is_nil(weak.first); -- gone, in the same cycle as its statements
		engine.conn = nil; -- connections made later are kept the same way
		collectgarbage(); collectgarbage();
		assert.is_not_nil(weak.second);
		-- a reload wraps connect() once, not again
		local wrapped = methods.connect;
		load_log({}, "sql", { ["/*/sql/connections"] = engines });
		assert.equal(wrapped, methods.connect);
	end)

	describe("when the store fails", function()
		it("logs the outage once, counts each failure, keeps the messages and resumes", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
			deliver(env, "alice@localhost", msg("dan", "two", "sid-2"));
			advance(env, 1);
			advance(env, 20);
			deliver(env, "alice@localhost", msg("dan", "three", "sid-3"));
			advance(env, 60);
			assert.same({}, logged(env));
			assert.equal(1, count_logs(env, "error", "Cannot write to the room log"));
			local failures = env.metrics.log_write_failures.by.log.total;
			assert.truthy(failures >= 4, "retried: " .. failures);
			-- only the head is tried while the store is away, with growing delays
			assert.equal(failures, store.appends);
			store.fail = nil;
			advance(env, 16);
			assert.same({ "one", "two", "three" }, logged(env));
			assert.equal(1, count_logs(env, "info", "Writing to the room log again"));
			assert.equal(1, count_logs(env, "error", "Cannot write"));
			-- a new outage is logged again
			store.fail = "disk full";
			deliver(env, "alice@localhost", msg("dan", "four", "sid-4"));
			advance(env, 1);
			assert.equal(2, count_logs(env, "error", "Cannot write"));
		end);

		it("drops the oldest messages when an outage outlasts the queue", function()
			local env = load_log({ minimix_log_queue_max = 2 });
			env.stores.minimix_log.fail = "connection refused";
			for i = 1, 4 do deliver(env, "alice@localhost", msg("dan", "m" .. i, "sid-" .. i)); end
			assert.equal(2, env.metrics.log_dropped.by.log.total);
			assert.equal(1, count_logs(env, "warn", "queue is full"));
			env.stores.minimix_log.fail = nil;
			advance(env, 20);
			assert.same({ "m3", "m4" }, logged(env));
		end);

		it("gives up on a message the store raises an error for, and writes the next", function()
			local env = load_log();
			env.stores.minimix_log.raise = "cannot serialize";
			deliver(env, "alice@localhost", msg("dan", "bad", "sid-1"));
			advance(env, 1);
			env.stores.minimix_log.raise = nil;
			deliver(env, "alice@localhost", msg("dan", "good", "sid-2"));
			advance(env, 1);
			assert.same({ "good" }, logged(env));
			assert.equal(1, env.metrics.log_dropped.by.log.total);
		end);
	end);

	describe("the accounts' own archives", function()
		it("get nothing by default", function()
			local env = load_log();
			deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
			advance(env, 1);
			assert.same({ "minimix_log" }, env.opened);
			assert.equal(0, #env.stores.archive.items);
		end);

		it("get each room message once per account, with the room as 'with'", function()
			local env = load_log({ minimix_archive_in_mam = true });
			for _, account in ipairs({ "alice@localhost", "bob@localhost" }) do
				deliver(env, account, msg("dan", "one", "sid-1", { to = account }));
				deliver(env, account, msg("dan", "one", "sid-1", { to = account }));
			end
			deliver(env, "alice@localhost", msg("dan", nil, nil, { subject = "Lunch" }));
			advance(env, 1);
			local items = env.stores.archive.items;
			assert.equal(2, #items);
			assert.equal("alice", items[1].user);
			assert.equal("bob", items[2].user);
			assert.equal(ROOM, items[1].with);
			assert.equal("alice@localhost", items[1].value.attr.to);
			assert.same({ "one", "subject:Lunch" }, logged(env), "subjects go to the room log only");
		end);

		it("get no copy of a re-join's history that was logged before", function()
			local env = load_log({ minimix_archive_in_mam = true });
			deliver(env, "alice@localhost", msg("dan", "one", "sid-1"));
			advance(env, 1);
			local store = env.stores.minimix_log;
			local again = load_log({ minimix_archive_in_mam = true });
			again.stores.minimix_log.items = store.items;
			deliver(again, "alice@localhost", msg("dan", "one", "sid-1", { stamp = "2023-11-14T22:13:20Z" }), true);
			deliver(again, "alice@localhost", msg("dan", "missed", "sid-2", { stamp = "2023-11-14T22:13:21Z" }), true);
			advance(again, 1);
			assert.equal(1, #again.stores.archive.items);
			assert.equal("missed", again.stores.archive.items[1].value:get_child_text("body"));
		end);
	end);

	-- on SQL (the stanza) and on the file store (its text, see decode)
	for _, driver in ipairs({ "sql", "internal" }) do
		describe("serves a later session's catch-up (" .. driver .. ")", function()
			local T = 1700000000;
			-- messages said at T + each offset (the store's 'when' whole seconds)
			local function say(env, offsets, flush)
				for _, off in ipairs(offsets) do
					env.clock = T + off;
					env.lib.message("alice@localhost", ROOM, "dan", msg("dan", "m" .. off, "sid-" .. off),
						{ stamp = env.clock, delayed = false });
				end
				if flush ~= false then env.hooks["server-cleanup"](); end
			end
			local function bodies(list)
				local out = {};
				for _, said in ipairs(list) do out[#out+1] = said[1]:get_child_text("body"); end
				return out;
			end

			it("within the spans only, oldest first, to the fraction of a second", function()
				local env = load_log(nil, driver);
				say(env, { 1, 2.2, 2.7, 3, 5, 6.5, 7 });
				-- in from 1.5 to 2.5 (a leave in the middle of second 2), again from 6.5
				local got = env.lib.replay(ROOM, { spans = { { T + 1.5, T + 2.5 }, { T + 6.5 } }, maxstanzas = 100 });
				assert.same({ "m2.2", "m6.5", "m7" }, bodies(got));
				assert.equal(T + 2.2, got[1][2]);
				-- each logged message keeps the exact time the room said it in a delay
				assert.is_nil(got[1][1]:get_child("said", "urn:xmpp:minimix:said:0"), "the mark is taken off");
				assert.equal("2023-11-14T22:13:22.200000Z", message_of(env.stores.minimix_log.items[2].value):get_child("said", "urn:xmpp:minimix:said:0").attr.at);
				assert.same({}, bodies(env.lib.replay(ROOM, { spans = {}, maxstanzas = 100 })));
				assert.same({}, bodies(env.lib.replay(ROOM, { spans = { { T + 8 } }, maxstanzas = 100 })));
			end);

			it("the newest maxstanzas, since, seconds and maxchars exactly", function()
				local env = load_log(nil, driver);
				say(env, { 1, 2, 3, 4, 5 });
				local span = { { T } };
				assert.same({ "m4", "m5" }, bodies(env.lib.replay(ROOM, { spans = span, maxstanzas = 2 })));
				assert.same({ "m3", "m4", "m5" }, bodies(env.lib.replay(ROOM, { spans = span, maxstanzas = 100,
					since = T + 2.5 })));
				assert.same({ "m4", "m5" }, bodies(env.lib.replay(ROOM, { spans = span, maxstanzas = 100,
					seconds = 1.5, now = T + 5.5 })));
				-- sizes as sent: without the log's own mark
				local one = #tostring(env.lib.replay(ROOM, { spans = span, maxstanzas = 1 })[1][1]);
				assert.is_nil(tostring(env.lib.replay(ROOM, { spans = span, maxstanzas = 1 })[1][1]):find("said"));
				assert.same({ "m5" }, bodies(env.lib.replay(ROOM, { spans = span, maxstanzas = 100,
					maxchars = 2 * one - 1 })));
				assert.same({}, bodies(env.lib.replay(ROOM, { spans = span, maxstanzas = 100, maxchars = 0 })));
			end);

			it("what waits for the writer too, once, after what was written", function()
				-- m3 and m4 both wait: a second apart, within the flush interval
				local env = load_log({ minimix_log_flush_interval = 2000 }, driver);
				say(env, { 1, 2 });
				say(env, { 3, 4 }, false);
				assert.equal(2, env.lib.pending());
				assert.same({ "m1", "m2", "m3", "m4" }, bodies(env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 100 })));
				assert.same({ "m4" }, bodies(env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 1 })));
			end);

			it("in the order the messages came, whatever their stamps' precision", function()
				local env = load_log(nil, driver);
				say(env, { 1.5, 2.5 });
				-- what a crash lost, from the room's history on the re-join: whole seconds
				env.lib.message("alice@localhost", ROOM, "dan", msg("dan", "m3", "sid-3",
					{ stamp = "2023-11-14T22:13:22Z" }), { stamp = T + 2, delayed = true });
				env.hooks["server-cleanup"]();
				assert.same({ "m1.5", "m2.5", "m3" }, bodies(env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 100 })));
			end);

			it("counts a time known to the second only from the start of its second", function()
				local env = load_log(nil, driver);
				-- the account came in at T + 2.5; the room's history after a
				-- crash stamps what was said at T + 2.7 as T + 2
				env.lib.message("alice@localhost", ROOM, "dan", msg("dan", "whole", "sid-w",
					{ stamp = "2023-11-14T22:13:22Z" }), { stamp = T + 2, delayed = true });
				env.lib.message("alice@localhost", ROOM, "dan", msg("dan", "exact", "sid-e",
					{ stamp = "2023-11-14T22:13:22.400Z" }), { stamp = T + 2.4, delayed = true });
				env.lib.message("alice@localhost", ROOM, "dan", msg("dan", "older", "sid-o",
					{ stamp = "2023-11-14T22:13:21Z" }), { stamp = T + 1, delayed = true });
				env.hooks["server-cleanup"]();
				assert.same({ "whole" }, bodies(env.lib.replay(ROOM, { spans = { { T + 2.5 } }, maxstanzas = 100 })));
			end);

			it("reads page by page past what the spans leave out", function()
				local env = load_log(nil, driver);
				local offsets = {};
				for i = 1, 600 do offsets[i] = i; end
				say(env, offsets);
				local got = env.lib.replay(ROOM, { spans = { { T + 1, T + 300 }, { T + 551, T + 600 } }, maxstanzas = 320 });
				assert.equal(320, #got);
				assert.equal("m31", got[1][1]:get_child_text("body"));
				assert.equal("m600", got[320][1]:get_child_text("body"));
			end);

			it("skips subjects, and gives nothing when the store cannot be read", function()
				local env = load_log(nil, driver);
				say(env, { 1 });
				env.clock = T + 2;
				env.lib.message("alice@localhost", ROOM, "dan", msg("dan", nil, nil, { subject = "topic" }),
					{ stamp = env.clock, delayed = false });
				env.hooks["server-cleanup"]();
				assert.same({ "m1" }, bodies(env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 100 })));
				env.stores.minimix_log.find = function() error("down"); end;
				assert.same({}, env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 100 }));
				assert.equal(1, count_logs(env, "warn", "catch%-up"));
			end);
		end);
	end
end);

describe("the room log's items on the file store", function()
	local T = 1700000000;
	local SAID = "urn:xmpp:minimix:said:0";

	it("are the text the shim made of the message, with the time it was said, not a copy of the stanza", function()
		local env = load_log(nil, "internal");
		local stanza = msg("dan", "one", "sid-1");
		-- the shim's text of it (m.payload), here written with other quotes
		-- than Prosody's: what is stored is that very text
		local payload = ('<message from="%s/dan" type="groupchat"><body>one</body>'
			.. '<stanza-id xmlns="urn:xmpp:sid:0" by="%s" id="sid-1"/></message>'):format(ROOM, ROOM);
		env.lib.message("alice@localhost", ROOM, "dan", stanza, { stamp = T + 0.5, delayed = false, payload = payload });
		advance(env, 1);
		local item = env.stores.minimix_log.items[1].value;
		assert.equal("logged", item.name);
		assert.equal("urn:xmpp:minimix:logged:0", item.attr.xmlns);
		assert.equal(payload, item[1]);
		assert.equal(1, #item, "one text, no tree");
		assert.equal("2023-11-14T22:13:20.500000Z", item.attr.said);
		assert.equal("alice@localhost", stanza.attr.to, "the room's stanza is left as it was");
		assert.is_nil(stanza:get_child("said", SAID));
		local got = env.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 10 });
		assert.equal(1, #got);
		assert.equal("one", got[1][1]:get_child_text("body"));
		assert.equal("sid-1", got[1][1]:get_child("stanza-id", "urn:xmpp:sid:0").attr.id);
		assert.is_nil(got[1][1]:get_child("said", SAID), "the mark is taken off");
		assert.equal(T + 0.5, got[1][2]);
	end);

	it("give the backfill its anchor, the newest message written or waiting, in either form", function()
		local env = load_log({ minimix_log_flush_interval = 2000 }, "internal");
		local old = msg("dan", "old", "sid-old");
		old.attr.to = nil;
		old:tag("said", { xmlns = SAID, at = "2023-11-14T22:13:21.500000Z" }):up();
		env.stores.minimix_log:append(ROOM, nil, old, T + 1, "dan");
		assert.same({ id = "sid-old", when = T + 1.5 }, env.lib.hold(ROOM));
		env.lib.release(ROOM);
		-- waiting for the writer (a flush interval of 2 s)
		env.clock = T + 3;
		deliver(env, "alice@localhost", msg("dan", "new", "sid-new"));
		assert.equal(1, (env.lib.pending()));
		assert.same({ id = "sid-new", when = T + 3.25 }, env.lib.hold(ROOM));
		env.lib.release(ROOM);
		advance(env, 3);
		assert.equal(0, (env.lib.pending()));
		assert.equal("logged", env.stores.minimix_log.items[2].value.name);
		assert.same({ id = "sid-new", when = T + 3.25 }, env.lib.hold(ROOM));
	end);

	it("are read beside the stanzas an earlier version wrote: catch-up, MAM, a re-join's history, withdrawals", function()
		local env = load_log(nil, "internal");
		-- what an earlier version wrote: the stanza, without 'to', with its mark
		local old = msg("dan", "old", "sid-old");
		old.attr.to = nil;
		old:tag("said", { xmlns = SAID, at = "2023-11-14T22:13:21.500000Z" }):up();
		env.stores.minimix_log:append(ROOM, nil, old, T + 1, "dan");
		env.clock = T + 3;
		deliver(env, "alice@localhost", msg("dan", "new", "sid-new"));
		advance(env, 1);
		assert.equal("logged", env.stores.minimix_log.items[2].value.name);
		local function catch_up(e)
			local out = {};
			for _, p in ipairs(e.lib.replay(ROOM, { spans = { { T } }, maxstanzas = 10 })) do
				assert.is_nil(p[1]:get_child("said", SAID));
				out[#out+1] = { p[1]:get_child("retracted", "urn:xmpp:message-retract:1") and "tombstone"
					or p[1]:get_child_text("body"), p[2] };
			end
			return out;
		end
		assert.same({ { "old", T + 1.5 }, { "new", T + 3.25 } }, catch_up(env));
		local found = {};
		for _, item, t, slack in env.lib.find(ROOM, {}) do
			assert.is_nil(item:get_child("said", SAID));
			found[#found+1] = { item:get_child_text("body"), t, slack };
		end
		assert.same({ { "old", T + 1.5, 0 }, { "new", T + 3.25, 0 } }, found);
		-- a restart: the room's history on the re-join holds both, written once
		local again = load_log(nil, "internal", nil, env.stores);
		again.clock = T + 10;
		deliver(again, "alice@localhost", msg("dan", "old", "sid-old", { stamp = "2023-11-14T22:13:21Z" }), true);
		deliver(again, "alice@localhost", msg("dan", "new", "sid-new", { stamp = "2023-11-14T22:13:23Z" }), true);
		advance(again, 1);
		assert.equal(2, #again.stores.minimix_log.items, "nothing written again");
		-- the old message retracted: a tombstone at once for the catch-up,
		-- and in the list at the pass
		local r = msg("dan", nil, "r-1");
		r:tag("retract", { xmlns = "urn:xmpp:message-retract:1", id = "sid-old" }):up();
		again.lib.withdraw("alice@localhost", ROOM, again.lib.withdrawal(r, "dan"), r, nil);
		assert.same({ { "tombstone", T + 1.5 }, { "new", T + 3.25 } }, catch_up(again));
		advance(again, 120);
		local stored = message_of(again.stores.minimix_log.items[1].value);
		assert.is_nil(stored:get_child("body"));
		assert.truthy(stored:get_child("retracted", "urn:xmpp:message-retract:1"));
		assert.equal("new", message_of(again.stores.minimix_log.items[2].value):get_child_text("body"));
		assert.same({ { "tombstone", T + 1.5 }, { "new", T + 3.25 } }, catch_up(again));
	end);
end);

describe("room log retractions", function()
	local RETRACT = "urn:xmpp:message-retract:1";

	-- a message from nick with an occupant-id and/or the real JID the room shows
	local function said(nick, body, sid, occupant, real)
		local m = msg(nick, body, sid);
		m:tag("origin-id", { xmlns = "urn:xmpp:sid:0", id = "o-" .. sid }):up();
		if occupant then m:tag("occupant-id", { xmlns = "urn:xmpp:occupant-id:0", id = occupant }):up(); end
		if real then
			m:tag("x", { xmlns = "http://jabber.org/protocol/muc#user" })
				:tag("item", { jid = real .. "/res" }):up():up();
		end
		return m;
	end

	-- kept: the ring's copy of the message, if any
	local function retract(env, nick, sid, occupant, real, account, kept)
		local r = said(nick, nil, "r-" .. sid .. "-" .. (nick or "room"), occupant, real);
		r:tag("retract", { xmlns = RETRACT, id = sid }):up();
		local w = env.lib.withdrawal(r, nick);
		if not w then return nil; end
		return env.lib.withdraw(account or "alice@localhost", ROOM, w, r, kept);
	end

	local function entry(env, sid)
		for _, it in ipairs(env.stores.minimix_log.items) do
			local m = message_of(it.value);
			if m:get_child("stanza-id", "urn:xmpp:sid:0").attr.id == sid then return m; end
		end
	end

	for _, case in ipairs({
		{ "the same occupant-id, under another nick", { "dan", "x1" }, { "danny", "x1" }, true },
		{ "another occupant-id, under the same nick", { "dan", "x1" }, { "dan", "x2" }, false },
		{ "the same real JID, without occupant-ids", { "dan", nil, "dan@ex" }, { "dan2", nil, "dan@ex" }, true },
		{ "another real JID, under the same nick", { "dan", nil, "dan@ex" }, { "dan", nil, "eve@ex" }, false },
		{ "the same nick, nothing else", { "dan" }, { "dan" }, true },
		{ "another nick, nothing else", { "dan" }, { "eve" }, false },
	}) do
		it("a retraction by " .. case[1] .. (case[4] and " withdraws" or " leaves") .. " the message", function()
			for _, run in ipairs({ { false, "sql" }, { true, "sql" }, { false, "internal" }, { true, "internal" } }) do
				local written = run[1];
				local env = load_log(nil, run[2]);
				local o = case[2];
				deliver(env, "alice@localhost", said(o[1], "secret", "s1", o[2], o[3]));
				if written then advance(env, 1); end
				local r = case[3];
				local tomb = retract(env, r[1], "s1", r[2], r[3], nil, said(o[1], "secret", "s1", o[2], o[3]));
				-- past the file store's pass (minimix_withdraw_interval)
				advance(env, 61);
				local item = entry(env, "s1");
				if case[4] then
					assert.truthy(tomb, "the ring's tombstone");
					assert.is_nil(item:get_child("body"), "no body");
					assert.is_nil(item:get_child("origin-id", "urn:xmpp:sid:0"), "no other payload");
					assert.truthy(item:get_child("retracted", RETRACT), "the marker");
					assert.equal(ROOM .. "/" .. o[1], item.attr.from);
					assert.not_truthy(tostring(tomb):find("secret"));
				else
					assert.is_nil(tomb);
					assert.equal("secret", item:get_child_text("body"));
				end
			end
		end);
	end

	it("on the file store, judges a retraction by what it wrote, and never reads the whole log for one", function()
		local env = load_log(nil, "internal");
		deliver(env, "alice@localhost", said("dan", "secret", "s1"));
		advance(env, 1);
		local finds = env.stores.minimix_log.finds or 0;
		assert.is_nil(retract(env, "eve", "s1"), "someone else's");
		assert.is_nil(retract(env, "eve", "unknown"), "an id it never wrote");
		assert.equal(finds, env.stores.minimix_log.finds or 0, "no read of the log");
		assert.equal("secret", entry(env, "s1"):get_child_text("body"));
		retract(env, "dan", "s1");
		assert.equal(finds, env.stores.minimix_log.finds or 0, "no read of the log for the sender's either");
		advance(env, 61);
		assert.is_nil(entry(env, "s1"):get_child("body"));
	end);

	it("withdraws once the store is back, when it failed at first", function()
		local env = load_log({ minimix_archive_in_mam = true });
		deliver(env, "alice@localhost", said("dan", "secret", "s1"));
		advance(env, 1);
		env.stores.minimix_log.fail = "connection lost";
		env.stores.archive.fail = "connection lost";
		assert.is_nil(retract(env, "dan", "s1"));
		assert.equal("secret", entry(env, "s1"):get_child_text("body"));
		assert.equal(1, count_logs(env, "warn", "tried again"));
		advance(env, 3);
		assert.equal("secret", entry(env, "s1"):get_child_text("body"), "still failing");
		env.stores.minimix_log.fail = nil;
		env.stores.archive.fail = nil;
		advance(env, 10);
		assert.is_nil(entry(env, "s1"):get_child("body"));
		assert.is_nil(env.stores.archive.items[1].value:get_child("body"), "the copy too");
		assert.equal(0, count_logs(env, "warn", "Giving up"));
	end);

	it("takes a retraction from the room itself, or a moderation from an occupant, for none", function()
		local env = load_log();
		local r = said(nil, nil, "r1");
		r:tag("retract", { xmlns = RETRACT, id = "s1" }):up();
		assert.is_nil(env.lib.withdrawal(r, nil));
		local m = said("eve", nil, "r2");
		m:tag("retract", { xmlns = RETRACT, id = "s1" })
			:tag("moderated", { xmlns = "urn:xmpp:message-moderate:1", by = ROOM .. "/eve" }):up():up();
		assert.is_nil(env.lib.withdrawal(m, "eve"));
		local m0 = said("eve", nil, "r3");
		m0:tag("apply-to", { xmlns = "urn:xmpp:fasten:0", id = "s1" })
			:tag("moderated", { xmlns = "urn:xmpp:message-moderate:0" })
				:tag("retract", { xmlns = "urn:xmpp:message-retract:0" }):up():up():up();
		assert.is_nil(env.lib.withdrawal(m0, "eve"));
		assert.same({ id = "s1", moderated = "", moderated_ns = "urn:xmpp:message-moderate:0" },
			env.lib.withdrawal(m0, nil));
	end);

	it("keeps the moderator's reason, and the account's archive copy becomes a tombstone too", function()
		local env = load_log({ minimix_archive_in_mam = true });
		deliver(env, "alice@localhost", said("dan", "spam", "s1"));
		advance(env, 1);
		local m = said(nil, nil, "r1");
		m:tag("retract", { xmlns = RETRACT, id = "s1" })
			:tag("moderated", { xmlns = "urn:xmpp:message-moderate:1", by = ROOM .. "/mod" }):up()
			:text_tag("reason", "no spam"):up();
		local w = env.lib.withdrawal(m, nil);
		assert.truthy(env.lib.withdraw("alice@localhost", ROOM, w, m, nil));
		local item = entry(env, "s1");
		local marker = item:get_child("retracted", RETRACT);
		assert.equal("no spam", marker:get_child_text("reason"));
		assert.equal(ROOM .. "/mod", marker:get_child("moderated", "urn:xmpp:message-moderate:1").attr.by);
		local copy = env.stores.archive.items[1];
		assert.equal("alice", copy.user);
		assert.is_nil(copy.value:get_child("body"));
		assert.truthy(copy.value:get_child("retracted", RETRACT));
	end);
end);
