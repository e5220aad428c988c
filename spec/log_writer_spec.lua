-- Specs for the room log's write path (minimix_log.lib.lua's writers),
-- loaded into a mocked Prosody `module` with fake archive stores and a
-- clock and timers the specs move: what a refusal and an outage cost, the
-- bounds of what waits, the batches a backlog drains in, retention, the
-- accounts' archive quota and a reload.
local st = require "util.stanza";
local sha256 = require "util.hashes".sha256;

local ROOM, OTHER = "room@muc.example", "other@muc.example";

local log_mock = require "log_mock";
local load_log, advance, count_logs = log_mock.load_log, log_mock.advance, log_mock.count_logs;

local function msg(room, nick, body, sid)
	local m = st.message({ from = room .. "/" .. nick, type = "groupchat", to = "alice@localhost" })
		:text_tag("body", body);
	if sid then m:tag("stanza-id", { xmlns = "urn:xmpp:sid:0", by = room, id = sid }):up(); end
	return m;
end

local said = 0;
local function say(env, room, body, opts)
	opts = opts or {};
	said = said + 1;
	env.lib.message(opts.account or "alice@localhost", room, "dan",
		msg(room, "dan", body, opts.sid or ("sid-" .. said)), { stamp = env.clock + 0.25, delayed = false });
end

local function logged(env, user, store)
	local out = {};
	for _, it in ipairs(env.stores[store or "minimix_log"].items) do
		if not user or it.user == user then out[#out+1] = log_mock.message_of(it.value):get_child_text("body"); end
	end
	return out;
end

local function dropped(env, kind)
	local c = env.metrics.log_dropped.by[kind or "log"];
	return c and c.total or 0;
end

describe("the room log's writes", function()
	describe("tell a refusal from an outage", function()
		it("give up a room the store refuses, once logged, and hold up no other room", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.refuse[ROOM] = "value too long for type";
			say(env, ROOM, "bad 1");
			say(env, OTHER, "good 1");
			say(env, ROOM, "bad 2");
			say(env, OTHER, "good 2");
			advance(env, 0.1);
			assert.same({ "good 1", "good 2" }, logged(env, OTHER), "the other room is written at once");
			advance(env, 1);
			assert.same({}, logged(env, ROOM));
			assert.equal(2, dropped(env));
			assert.equal(1, count_logs(env, "warn", "Giving up writing a message of " .. ROOM:gsub("%p", "%%%0")
				.. " to the room log: value too long"));
			assert.equal(0, count_logs(env, "error", "Cannot write"), "not an outage");
			-- the room is written again once the store takes it
			store.refuse[ROOM] = nil;
			say(env, ROOM, "fine again");
			advance(env, 0.1);
			assert.same({ "fine again" }, logged(env, ROOM));
			assert.equal(0, (env.lib.pending()), "nothing waits");
		end);

		it("logs a refusal once per cause, whatever sizes the driver's message names", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			local append = store.append;
			function store.append(self, user, key, value, ...)
				if user == ROOM then
					self.appends = self.appends + 1;
					return nil, ("index row size %d exceeds maximum 2704"):format(#tostring(value));
				end
				return append(self, user, key, value, ...);
			end
			for i = 1, 5 do
				say(env, ROOM, string.rep("b", i));
				say(env, OTHER, "good " .. i);
			end
			advance(env, 2);
			assert.equal(5, dropped(env));
			assert.equal(1, count_logs(env, "warn", "Giving up"));
			assert.equal(5, #logged(env, OTHER));
		end);

		it("gives up a refused room's message that came alone once another room's writes go through", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.refuse[ROOM] = "cannot name it";
			say(env, ROOM, "bad");
			advance(env, 0.1);
			-- alone, a refusal looks like an outage: it waits
			assert.equal(0, dropped(env));
			say(env, OTHER, "good");
			advance(env, 0.1);
			assert.same({ "good" }, logged(env, OTHER), "not kept for the back-off");
			advance(env, 0.2);
			assert.equal(1, dropped(env));
			assert.equal(0, (env.lib.pending()));
		end);

		it("gives up a refused message with others behind it in the only room with work", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.refuse_body = "bad";
			say(env, ROOM, "bad");
			say(env, ROOM, "a");
			say(env, ROOM, "b");
			advance(env, 0.1);
			-- alone, the first refusal looks like an outage
			assert.same({}, logged(env, ROOM));
			advance(env, 1);
			-- tried again, then the message behind it: the store takes that
			advance(env, 1);
			assert.same({ "a", "b" }, logged(env, ROOM));
			assert.equal(1, dropped(env));
			assert.equal(0, (env.lib.pending()));
			assert.equal(1, count_logs(env, "info", "Writing to the room log again"));
		end);

		-- the store comes back as the head fails for the second time (its
		-- reconnection), or after the try at once that follows: either way
		-- it takes the head, and the message behind it, no proof of a
		-- refusal, is written after it
		for failures, when in pairs({ [2] = "as it comes back", [3] = "between the head's tries" }) do
			it("gives up nothing when the store comes back " .. when, function()
				local env = load_log();
				local store = env.stores.minimix_log;
				store.fail_next = failures;
				say(env, ROOM, "first");
				say(env, ROOM, "second");
				advance(env, 0.1);
				advance(env, 1);
				advance(env, 1);
				assert.same({ "first", "second" }, logged(env, ROOM));
				assert.equal(0, dropped(env));
			end);
		end

		it("gives up a refused message that came alone in the only room with work", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.refuse_body = "bad";
			say(env, ROOM, "bad");
			advance(env, 0.1);
			advance(env, 1);
			-- the store answers reads but does not take it: refused
			assert.equal(1, dropped(env));
			assert.equal(0, (env.lib.pending()));
			say(env, ROOM, "good");
			advance(env, 0.2);
			assert.same({ "good" }, logged(env, ROOM));
		end);

		it("keeps everything through an outage, trying each room once per attempt", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			say(env, ROOM, "r1");
			say(env, OTHER, "o1");
			advance(env, 0.1);
			local tried = store.appends;
			assert.equal(2, tried, "each room's head once");
			say(env, ROOM, "r2");
			say(env, OTHER, "o2");
			advance(env, 0.5);
			assert.equal(tried, store.appends, "rooms that failed wait for the back-off");
			advance(env, 60);
			assert.equal(0, dropped(env));
			assert.equal(1, count_logs(env, "error", "Cannot write to the room log"));
			store.fail = nil;
			advance(env, 16);
			assert.same({ "r1", "r2" }, logged(env, ROOM));
			assert.same({ "o1", "o2" }, logged(env, OTHER));
			assert.equal(0, count_logs(env, "warn", "Giving up"));
		end);

		it("starts the back-off again at 1 s after a recovery", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			say(env, ROOM, "one");
			advance(env, 0.1);
			-- long enough for the back-off to reach its longest
			advance(env, 1 + 2 + 4 + 8 + 16 + 16);
			store.fail = nil;
			advance(env, 16);
			assert.same({ "one" }, logged(env));
			-- a second outage: the first retry comes 1 s after the first failure
			store.fail = "connection refused";
			say(env, ROOM, "two");
			advance(env, 0.1);
			local before = store.appends;
			store.fail = nil;
			advance(env, 1.05);
			assert.equal(before + 1, store.appends, "retried after 1 s");
			assert.same({ "one", "two" }, logged(env));
		end);
	end);

	describe("names and keys the store can take", function()
		local long_room = string.rep("a", 240) .. "@muc.localhost";

		it("put a room the file store cannot name under a digest, and read it back there", function()
			local env = load_log({ minimix_log_cleanup_interval = 60, minimix_log_max_per_room = 1 }, "internal");
			say(env, long_room, "long one");
			say(env, long_room, "long two");
			say(env, ROOM, "short");
			advance(env, 0.1);
			local digest = "minimix-" .. sha256(long_room, true);
			assert.same({ "long one", "long two" }, logged(env, digest));
			assert.same({ "short" }, logged(env, ROOM), "ordinary rooms keep their names");
			local got = env.lib.replay(long_room, { spans = { { env.clock - 10 } }, maxstanzas = 10 });
			assert.equal(2, #got);
			assert.equal("long two", got[2][1]:get_child_text("body"));
			advance(env, 60);
			assert.same({ "long two" }, logged(env, digest), "retention works on the digest name");
		end);

		it("keep the names on SQL, where a long name is no trouble", function()
			local env = load_log();
			say(env, long_room, "long");
			advance(env, 0.1);
			assert.same({ "long" }, logged(env, long_room));
		end);

		it("never make an over-long stanza-id the store's key", function()
			local env = load_log();
			local long_sid = string.rep("x", 257);
			say(env, ROOM, "long id", { sid = long_sid });
			say(env, ROOM, "fair id", { sid = string.rep("y", 256) });
			advance(env, 0.1);
			local items = env.stores.minimix_log.items;
			assert.equal(2, #items);
			assert.not_equal(long_sid, items[1].key);
			assert.equal(long_sid, items[1].value:get_child("stanza-id", "urn:xmpp:sid:0").attr.id,
				"kept in the message");
			assert.equal(string.rep("y", 256), items[2].key);
		end);
	end);

	describe("bounds what waits", function()
		local function big(n) return string.rep("z", n); end

		it("in bytes: the oldest go first, said once per outage", function()
			local env = load_log({ minimix_log_queue_bytes = 1 });
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			-- the smallest bound holds about 260 KiB
			for i = 1, 10 do say(env, ROOM, i .. big(50000)); end
			advance(env, 40);
			local n, _, bytes = env.lib.pending();
			assert.truthy(n < 10 and n >= 4, n);
			assert.truthy(bytes <= 262144 + 4096, bytes);
			assert.equal(10 - n, dropped(env));
			assert.equal(1, count_logs(env, "warn", "queue is full"));
			store.fail = nil;
			advance(env, 16);
			local got = logged(env);
			assert.equal(n, #got);
			assert.equal("10", got[#got]:match("^%d+"), "the newest are kept");
			assert.equal(tostring(10 - n + 1), got[1]:match("^%d+"));
			-- a new outage says it again
			store.fail = "connection refused";
			for i = 1, 10 do say(env, ROOM, i .. big(50000)); end
			assert.equal(2, count_logs(env, "warn", "queue is full"));
		end);

		it("in count too, across rooms, oldest first", function()
			local env = load_log({ minimix_log_queue_max = 3 });
			env.stores.minimix_log.fail = "connection refused";
			say(env, ROOM, "r1");
			say(env, OTHER, "o1");
			say(env, ROOM, "r2");
			say(env, OTHER, "o2");
			say(env, ROOM, "r3");
			env.stores.minimix_log.fail = nil;
			advance(env, 20);
			assert.same({ "r2", "r3" }, logged(env, ROOM));
			assert.same({ "o2" }, logged(env, OTHER));
			assert.equal(2, dropped(env));
		end);
	end);

	describe("drains a backlog", function()
		it("a batch per tick, the rooms in turn, with the rest on later ticks", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			for i = 1, 500 do say(env, ROOM, "r" .. i); end
			say(env, OTHER, "other");
			advance(env, 0.1);
			store.fail = nil;
			local per_tick, last = {}, 0;
			advance(env, 20, function()
				local n = #store.items;
				if n > last then per_tick[#per_tick+1] = n - last; end
				last = n;
			end);
			assert.equal(501, #store.items);
			assert.truthy(#per_tick >= 5, "in batches: " .. #per_tick);
			for _, n in ipairs(per_tick) do assert.truthy(n <= 100, n); end
			local first_other;
			for i, it in ipairs(store.items) do
				if it.user == OTHER then first_other = i; end
			end
			assert.truthy(first_other <= 100, "the other room is not behind the backlog: " .. first_other);
			assert.same({ "r1", "r2" }, { logged(env, ROOM)[1], logged(env, ROOM)[2] }, "each room in order");
		end);

		it("writes everything at shutdown, in one go", function()
			local env = load_log();
			for i = 1, 250 do say(env, ROOM, "r" .. i); end
			env.hooks["server-cleanup"]();
			assert.equal(250, #env.stores.minimix_log.items);
		end);
	end);

	describe("a reload", function()
		it("hands what waits to the new instance, which writes it", function()
			local env = load_log();
			local store = env.stores.minimix_log;
			store.fail = "connection refused";
			say(env, ROOM, "waited 1");
			say(env, OTHER, "waited 2");
			advance(env, 0.1);
			local saved = env.lib.save();
			env.module.loaded = false;
			local new = load_log(nil, nil, nil, env.stores);
			new.lib.restore(saved);
			assert.same({ 2, 0 }, { (new.lib.pending()), (select(2, new.lib.pending())) });
			store.fail = nil;
			advance(env, 60);
			assert.equal(0, #store.items, "the old instance writes nothing");
			advance(new, 0.2);
			assert.same({ "waited 1" }, logged(new, ROOM));
			assert.same({ "waited 2" }, logged(new, OTHER));
		end);
	end);

	describe("through mod_minimix.lua", function()
		local mock = require "shim_mock";
		local MUC = "http://jabber.org/protocol/muc";

		-- alice's phone in room@muc.example; a message waits to be logged
		local function waiting_message()
			local env = mock.load_shim();
			local P = mock.new_session(env, "phone");
			mock.fire(env, "pre-presence/full", P, st.presence({ to = "room@muc.example/alice", id = "j1" })
				:tag("x", { xmlns = MUC }):up());
			local self = st.presence({ from = "room@muc.example/alice", to = "alice@localhost" })
				:tag("x", { xmlns = MUC .. "#user" }):tag("item", { affiliation = "none", role = "participant" }):up()
				:tag("status", { code = "110" }):up():up();
			mock.fire(env, "presence/bare", nil, self);
			mock.fire(env, "message/bare", nil, st.message({ from = "room@muc.example/carol", to = "alice@localhost",
				type = "groupchat", id = "m1" }):text_tag("body", "waiting"));
			assert.equal(0, #env.logged, "not written yet");
			return env;
		end

		it("a reload hands what waits to the new instance", function()
			local env = waiting_message();
			local saved = env.module.save();
			env.module.unload();
			local env2 = mock.load_shim();
			env2.module.restore(saved);
			mock.advance(env2, 1);
			assert.equal(1, #env2.logged);
			assert.equal("waiting", env2.logged[1].value:get_child_text("body"));
		end);

		it("unloading writes what waits", function()
			local env = waiting_message();
			env.module.unload();
			assert.equal(1, #env.logged);
		end);
	end);

	describe("retention", function()
		it("goes through the rooms a few per tick", function()
			local env = load_log({ minimix_log_max_per_room = 1, minimix_log_cleanup_interval = 60 });
			for i = 1, 10 do
				local room = "room" .. i .. "@muc.example";
				say(env, room, "a");
				say(env, room, "b");
			end
			advance(env, 1);
			local store = env.stores.minimix_log;
			local per_tick, last = {}, 0;
			advance(env, 60, function()
				local n = #store.deletes;
				if n > last then per_tick[#per_tick+1] = n - last; end
				last = n;
			end);
			assert.equal(10, #store.items, "each room keeps its latest");
			assert.truthy(#per_tick >= 3, #per_tick);
			for _, n in ipairs(per_tick) do assert.truthy(n <= 4 * 2, n); end
		end);
	end);

	describe("the accounts' own archives", function()
		it("make room at their quota with one warning, no error per message", function()
			local env = load_log({ minimix_archive_in_mam = true, archive_expires_after = "never" });
			local archive = env.stores.archive;
			archive.quota, archive.caps = 10, { quota = 10, truncate = true };
			for i = 1, 25 do say(env, ROOM, "m" .. i); end
			advance(env, 1);
			local got = logged(env, "alice", "archive");
			assert.equal("m25", got[#got]);
			assert.truthy(#got <= 10, #got);
			assert.equal(0, dropped(env, "mam"));
			assert.equal(1, count_logs(env, "warn", "archive of alice is at its quota"));
			assert.equal(0, count_logs(env, "error", "."));
		end);

		it("remove expired entries first, as mod_mam", function()
			local env = load_log({ minimix_archive_in_mam = true, archive_expires_after = "1d" });
			local archive = env.stores.archive;
			archive.quota, archive.caps = 3, { quota = 3, truncate = true };
			for i = 1, 3 do say(env, ROOM, "old" .. i); end
			advance(env, 1);
			advance(env, 2 * 86400);
			say(env, ROOM, "new");
			advance(env, 1);
			assert.same({ "new" }, logged(env, "alice", "archive"));
		end);

		it("stop the copies, said once, when the store cannot make room", function()
			local env = load_log({ minimix_archive_in_mam = true, archive_expires_after = "never" });
			env.stores.archive.quota = 2;
			for i = 1, 5 do say(env, ROOM, "m" .. i); end
			advance(env, 1);
			assert.same({ "m1", "m2" }, logged(env, "alice", "archive"));
			assert.equal(3, dropped(env, "mam"));
			assert.equal(1, count_logs(env, "warn", "Giving up writing a message of " .. ROOM:gsub("%p", "%%%0")
				.. " to the accounts' archives: quota%-limit"));
			assert.equal(0, count_logs(env, "error", "."));
			assert.same({ "m1", "m2", "m3", "m4", "m5" }, logged(env), "the room log goes on");
		end);
	end);
end);
