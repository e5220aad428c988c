-- Specs for the shim's start-up restore when the store does not answer yet
-- (a database still starting): nothing stored is lost, a failed read is
-- never taken for "no rooms", and bookmarks wait for the account's record.
local st = require "util.stanza";

local mock = require "shim_mock";
local load_shim, new_session, fire, advance = mock.load_shim, mock.new_session, mock.fire, mock.advance;
local room_presence, logged = mock.room_presence, mock.count_logs;

local MUC = "http://jabber.org/protocol/muc";
local BOOKMARKS = "urn:xmpp:bookmarks:1";

local function bookmark(id, nick)
	return st.stanza("item", { xmlns = "http://jabber.org/protocol/pubsub", id = id })
		:tag("conference", { xmlns = BOOKMARKS, autojoin = "true", name = "Room" })
			:text_tag("nick", nick):up()
		:up();
end

-- The joins the account sent: { [room] = { nick, since (the <history/>'s) }... } in order
local function joins(env)
	local out = {};
	for _, s in ipairs(env.sent) do
		local x = s.name == "presence" and s.attr.type == nil and s:get_child("x", MUC);
		if x then
			local room, nick = s.attr.to:match("^([^/]*)/(.*)$");
			local h = x:get_child("history");
			out[#out+1] = { room = room, nick = nick, from = s.attr.from, since = h and h.attr.since };
		end
	end
	return out;
end

local function joins_to(env, room)
	local n = 0;
	for _, j in ipairs(joins(env)) do if j.room == room then n = n + 1; end end
	return n;
end

-- A shim whose "minimix" store fails as `fails` says until the failures
-- are used up, each a function(kind, username) returning nil to answer, or
-- how to fail: "raise" or "nil,err".  The bookmarks' archive lists the
-- users of env.pep.services; stored: what the store holds.
local function shim_with_failing_store(stored, fails)
	local calls = { users = 0, get = {} };
	local env = load_shim(nil, function(e, module)
		e.stored = stored;
		local open = module.open_store;
		function module.open_store(self, name, kind)
			if name == "pep_" .. BOOKMARKS and kind == "archive" then
				return { users = function()
					local names = {};
					for username in pairs(e.pep.services) do names[#names+1] = username; end
					local i = 0;
					return function() i = i + 1; return names[i]; end;
				end };
			end
			local s = open(self, name, kind);
			if name ~= "minimix" then return s; end
			local function failing(kind_of_call, username, answer)
				local how = fails(kind_of_call, username);
				if how == "raise" then error("connection refused"); end
				if how == "nil,err" then return nil, "connection refused"; end
				return answer();
			end
			return {
				users = function(store)
					calls.users = calls.users + 1;
					return failing("users", nil, function() return s.users(store); end);
				end;
				get = function(store, username)
					calls.get[username] = (calls.get[username] or 0) + 1;
					return failing("get", username, function() return s.get(store, username); end);
				end;
				set = s.set;
			};
		end
	end);
	env.calls = calls;
	return env;
end

-- Fails the first n calls of that kind (for that user, when given).
local function first(n, kind, how, user)
	local seen = 0;
	return function(k, username)
		if k ~= kind or (user and username ~= user) then return nil; end
		seen = seen + 1;
		if seen <= n then return how; end
	end;
end

local function pep_service(items_by_id)
	local service = { events = require "util.events".new() };
	function service.get_items(_, node, _, id)
		assert(node == BOOKMARKS);
		if id then return true, { [id] = items_by_id[id] }; end
		local items = {};
		for item_id, item in pairs(items_by_id) do
			items[#items+1] = item_id;
			items[item_id] = item;
		end
		table.sort(items);
		return true, items;
	end
	return service;
end

local STAMP = 1699999000;

describe("mod_minimix start-up restore", function()
	for _, how in ipairs({ "raise", "nil,err" }) do
		it("tries again with back-off while the store cannot list its accounts (users() " .. how .. ")", function()
			local stored = { alice = { ["room@muc.example"] = { nick = "Ally", last_stamp = STAMP,
				spans = { { STAMP - 100 } } } } };
			local env = shim_with_failing_store(stored, first(3, "users", how));
			-- a bookmark of the same room under another nick, and one of another room
			env.pep.services.alice = pep_service({
				["room@muc.example"] = bookmark("room@muc.example", "bookmark-nick");
				["other@muc.example"] = bookmark("other@muc.example", "bm");
			});
			local t0 = env.clock;
			advance(env, 0);
			assert.equal(1, env.calls.users);
			assert.same({}, joins(env), "nothing joined from a failed read, not even the bookmarks");
			assert.equal(1, logged(env, "warn", "^Cannot read the stored memberships"));

			-- a device joins another room meanwhile: the stored record stays
			local P = new_session(env, "phone");
			fire(env, "pre-presence/full", P, st.presence({ to = "new@muc.example/alice", id = "j1" })
				:tag("x", { xmlns = MUC }):up());
			fire(env, "presence/bare", nil, room_presence("new@muc.example", "alice", { 110 }));
			advance(env, 0);
			assert.same({ "room@muc.example" }, (function()
				local r = {};
				for room in pairs(env.stored.alice) do r[#r+1] = room; end
				return r;
			end)(), "the rooms joined before the read do not replace those stored");

			-- tried again 1, 2 and 4 s after each failure
			advance(env, 1 - (env.clock - t0));
			assert.equal(2, env.calls.users);
			advance(env, 3 - (env.clock - t0) - 0.001);
			assert.equal(2, env.calls.users);
			advance(env, 0.001);
			assert.equal(3, env.calls.users);
			assert.equal(0, joins_to(env, "room@muc.example"));
			advance(env, 7 - (env.clock - t0));
			assert.equal(4, env.calls.users);

			-- the stored membership, with its nick and since its last
			-- message seen, before the bookmark of the same room
			local j = joins(env);
			assert.equal(1, joins_to(env, "room@muc.example"));
			assert.equal(1, joins_to(env, "other@muc.example"));
			for _, join in ipairs(j) do
				if join.room == "room@muc.example" then
					assert.equal("Ally", join.nick);
					assert.truthy(join.since, "the re-join asks for what was said since the last message seen");
				elseif join.room == "other@muc.example" then
					assert.equal("bm", join.nick);
				end
			end
			-- once: warned when it started, told when it is over
			assert.equal(1, logged(env, "warn", "^Cannot read the stored memberships"));
			assert.equal(1, logged(env, "info", "^The stored memberships are read"));
			-- the write that waited holds both: what was stored and what was joined
			assert.truthy(env.stored.alice["room@muc.example"]);
			assert.same({ { STAMP - 100 } }, env.stored.alice["room@muc.example"].spans);
			assert.truthy(env.stored.alice["new@muc.example"]);

			-- nothing is read or joined again later (the rooms let the account in)
			fire(env, "presence/bare", nil, room_presence("room@muc.example", "Ally", { 110 }));
			fire(env, "presence/bare", nil, room_presence("other@muc.example", "bm", { 110 }));
			env.sent = {};
			advance(env, 120);
			assert.equal(4, env.calls.users);
			assert.same({}, joins(env));
		end);

		it("restores the accounts it could read and tries again for one it could not (get() " .. how .. ")", function()
			local stored = {
				alice = { ["a@muc.example"] = { nick = "alice" } };
				bob = { ["b@muc.example"] = { nick = "bob", last_stamp = STAMP } };
			};
			local env = shim_with_failing_store(stored, first(2, "get", how, "bob"));
			env.pep.services.bob = pep_service({ ["b2@muc.example"] = bookmark("b2@muc.example", "bobby") });
			advance(env, 0);
			assert.equal(1, joins_to(env, "a@muc.example"), "alice is not held up by bob");
			assert.equal(0, joins_to(env, "b@muc.example"));
			assert.equal(0, joins_to(env, "b2@muc.example"), "bob's bookmarks wait for his record");
			assert.equal(1, logged(env, "warn", "the rooms of bob: .*connection refused"));

			-- a device of bob joins another room meanwhile: bob's record stays
			local B = new_session(env, "desk", nil, "bob");
			fire(env, "pre-presence/full", B, st.presence({ to = "new@muc.example/bob", id = "j1" })
				:tag("x", { xmlns = MUC }):up());
			fire(env, "presence/bare", nil, room_presence("new@muc.example", "bob", { 110 }, { to = "bob@localhost" }));
			advance(env, 0);
			assert.same({ ["b@muc.example"] = { nick = "bob", last_stamp = STAMP } }, env.stored.bob);

			advance(env, 1);
			assert.equal(2, env.calls.get.bob);
			assert.equal(0, joins_to(env, "b@muc.example"));
			advance(env, 2);
			assert.equal(3, env.calls.get.bob);
			assert.equal(1, joins_to(env, "b@muc.example"));
			assert.equal(1, joins_to(env, "b2@muc.example"));
			-- alice, read the first time, is neither read nor joined again
			assert.equal(1, env.calls.get.alice);
			assert.equal(1, joins_to(env, "a@muc.example"));
			assert.equal(1, logged(env, "warn", "^Cannot read the stored memberships"));
			assert.equal(1, logged(env, "info", "^The stored memberships are read"));
			assert.truthy(env.stored.bob["b@muc.example"]);
			assert.truthy(env.stored.bob["new@muc.example"]);
			fire(env, "presence/bare", nil, room_presence("a@muc.example", "alice", { 110 }));
			fire(env, "presence/bare", nil, room_presence("b@muc.example", "bob", { 110 }, { to = "bob@localhost" }));
			fire(env, "presence/bare", nil, room_presence("b2@muc.example", "bobby", { 110 }, { to = "bob@localhost" }));
			env.sent = {};
			advance(env, 120);
			assert.equal(3, env.calls.get.bob);
			assert.equal(1, env.calls.get.alice);
			assert.same({}, joins(env));
		end);
	end

	it("waits at most a minute between tries, however long the store is away", function()
		local env = shim_with_failing_store({ alice = { ["room@muc.example"] = { nick = "alice" } } },
			first(12, "users", "raise"));
		local t0 = env.clock;
		advance(env, 0);
		-- 1, 2, 4, 8, 16, 32, then 60 s apart
		local at = 0;
		for i, delay in ipairs({ 1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60 }) do
			at = at + delay;
			advance(env, at - (env.clock - t0) - 0.001);
			assert.equal(i, env.calls.users);
			advance(env, 0.001);
			assert.equal(i + 1, env.calls.users);
		end
		assert.equal(1, joins_to(env, "room@muc.example"));
		assert.equal(1, logged(env, "warn", "^Cannot read the stored memberships"));
	end);

	it("hands what it has yet to read to the instance a reload makes", function()
		local stored = { alice = { ["room@muc.example"] = { nick = "alice" } } };
		local env = shim_with_failing_store(stored, first(1000, "users", "raise"));
		advance(env, 0);
		local saved = env.module.save();
		-- the new instance's store answers
		local env2 = shim_with_failing_store(stored, function() return nil; end);
		env2.module.restore(saved);
		advance(env2, 0);
		assert.equal(1, joins_to(env2, "room@muc.example"));
		-- and an instance reloaded once all was read reads nothing again
		local env3 = shim_with_failing_store(stored, function() return nil; end);
		env3.module.restore(env2.module.save());
		advance(env3, 60);
		assert.equal(0, env3.calls.users);
		assert.same({}, joins(env3));
	end);
end);
