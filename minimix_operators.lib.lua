-- mod_minimix's operator interface: what the running Prosody offers, metrics, ad-hoc and admin shell commands.

local datetime = require "util.datetime";
local dataforms = require "util.dataforms";
local jid_split = require "util.jid".split;
local jid_prep = require "util.jid".prep;
local jid_bare = require "util.jid".bare;

local operators = {};

local mm;

-- What the running Prosody offers (0.12 or 13): the one place that tells
-- them apart.  Code elsewhere asks this table, never a version.
local offers = {
	-- 13: roles and permissions (module:default_permission, module:may),
	-- which ad-hoc commands are checked against; 0.12 has neither, its
	-- ad-hoc commands are for "local_user"s.
	roles = type(module.default_permission) == "function" and type(module.may) == "function";
	-- 13: mod_admin_shell takes commands from modules ("shell-command"
	-- items); 0.12's shell only runs Lua lines against the module table.
	-- Both came with 13.0: its version says so, and a build without a
	-- version number ("hg:…") is told by its roles API.
	shell_commands = false;
	-- 13: util.datetime writes fractions of a second, and 13's MUC stamps
	-- its history with them; 0.12's takes whole seconds only (a fraction
	-- is an error there).
	fractional_stamps = false;
};
do
	local major = tonumber(tostring(prosody.version or ""):match("^(%d+)%."));
	if major then
		offers.shell_commands = major >= 13;
	else
		offers.shell_commands = offers.roles;
	end
	local ok, text = pcall(datetime.datetime, 0.5);
	offers.fractional_stamps = ok and type(text) == "string" and text:find(".", 1, true) ~= nil;
end
operators.offers = offers;

-- Statistics, in Prosody's own views (admin shell, OpenMetrics).
operators.metrics = {
	deliveries = module:metric("counter", "deliveries", "",
		"Room stanzas forked to client sessions", {}):with_labels();
	replays = module:metric("counter", "replays", "",
		"Cached room stanzas replayed to client sessions that joined later", {}):with_labels();
	bounces = module:metric("counter", "suppressed_bounces", "",
		"Undeliverable forks kept from bouncing back to rooms", {}):with_labels();
	events = module:metric("counter", "account_events", "",
		"Accounts joining, leaving, removed from and re-joining rooms", { "event" });
	refusals = module:metric("counter", "refusals", "",
		"Requests refused by a limit or as malformed", { "reason" });
	pushes = module:metric("counter", "pushes", "",
		"Room messages pushed to devices away (sent), held back by the room's setting (held), gathered into a later push (gathered)", { "outcome" });
	state = module:metric("gauge", "state", "",
		"Accounts with memberships, memberships, joined sessions, pending IQs", { "kind" });
};
local metric_state = operators.metrics.state;

-- Account-level control (XEP-0050 ad-hoc commands) --------------------------------
-- Each command acts on the account of whoever runs it: its own sessions only.

-- Who may run a command.  13: the permission "adhoc:<node>", which every
-- role of a local account has by default (prosody:guest and up, so that
-- anonymous accounts may too, as on 0.12); an operator's role settings can
-- take it away.  0.12: any user of this host ("local_user").
local function adhoc_permission(node)
	if not offers.roles then return "local_user"; end
	module:default_permission("prosody:guest", "adhoc:" .. node);
	return "check";
end

-- One membership per line: room, nick, state, sessions joined and what is
-- held for catch-up; with_resources: and the joined sessions' resources.
local function memberships_lines(account, with_resources)
	local lines = {};
	for _, m in ipairs(mm.core:memberships(account)) do
		local line = ("%s as %s (%s): %d session(s) joined, %d message(s) held for catch-up")
			:format(m.room, m.nick, m.state, m.sessions, m.history);
		if with_resources then
			local joined = {};
			for _, s in ipairs(mm.core:sessions(account, m.room)) do
				if s.joined then joined[#joined+1] = s.resource; end
			end
			table.sort(joined);
			line = line .. "; sessions: " .. (#joined > 0 and table.concat(joined, ", ") or "none");
		end
		lines[#lines+1] = line;
	end
	table.sort(lines);
	return lines;
end

local function memberships_text(account)
	local lines = memberships_lines(account);
	if #lines == 0 then return "The account is in no rooms."; end
	return table.concat(lines, "\n");
end

-- The account running a command: only this host's (13's roles could let
-- an admin of another host through).
local function command_account(data)
	local username, host = jid_split(data.from);
	if not username or host ~= module.host then return nil; end
	return username .. "@" .. host;
end

local not_local = { status = "error", error = { type = "auth", condition = "forbidden",
	text = "Only accounts of this server have group chats here" } };

-- The account leaves rooms; how many it left at once, and how many it is
-- leaving (the room has not confirmed yet: it will within
-- minimix_join_timeout).
local function leave_rooms(account, rooms)
	local left, leaving = 0, 0;
	for _, room in ipairs(rooms) do
		if mm.perform({ account = account, room = room }, mm.core:account_leave(account, room)) then
			-- a local room answers from inside the send
			if mm.core:member(account, room) then
				leaving = leaving + 1;
			else
				left = left + 1;
			end
		end
	end
	return left, leaving;
end

local function leave_text(left, leaving, room)
	if room then
		if left > 0 then return "Left " .. room; end
		return "Leaving " .. room .. ": the room has not confirmed yet";
	end
	if leaving == 0 then return ("Left %d room(s)"):format(left); end
	return ("Left %d room(s); leaving %d more: the rooms have not confirmed yet"):format(left, leaving);
end

local leave_form = dataforms.new({
	title = "Leave a group chat";
	{ name = "FORM_TYPE", type = "hidden", value = "urn:xmpp:minimix:leave" };
	{ name = "room", type = "list-single", label = "Room", required = true };
});

local function provide_commands()
	local adhoc_new = module:require("adhoc").new;
	module:depends("adhoc");

	module:provides("adhoc", adhoc_new("Group chats: list", "urn:xmpp:minimix#list",
		function(_, data)
			local account = command_account(data);
			if not account then return not_local; end
			return { status = "completed", info = memberships_text(account) };
		end, adhoc_permission("urn:xmpp:minimix#list")));

	module:provides("adhoc", adhoc_new("Group chats: leave one", "urn:xmpp:minimix#leave",
		function(_, data, state)
			local account = command_account(data);
			if not account then return not_local; end
			if data.action == "cancel" then return { status = "canceled" }; end
			if not state then
				local rooms = {};
				for _, m in ipairs(mm.core:memberships(account)) do rooms[#rooms+1] = m.room; end
				table.sort(rooms);
				if #rooms == 0 then return { status = "completed", info = "The account is in no rooms." }; end
				return { status = "executing", actions = { "complete" }, form = { layout = leave_form,
					values = { room = rooms } } }, "leave";
			end
			local fields, err = leave_form:data(data.form);
			local room = not err and mm.prep_room(fields.room);
			if not room then
				return { status = "completed", error = { message = "Choose a room to leave." } };
			end
			fields.room = room;
			local left, leaving = leave_rooms(account, { fields.room });
			if left + leaving == 0 then
				return { status = "completed", error = { message = "The account is not in " .. fields.room } };
			end
			return { status = "completed", info = leave_text(left, leaving, fields.room) };
		end, adhoc_permission("urn:xmpp:minimix#leave")));

	module:provides("adhoc", adhoc_new("Group chats: leave all", "urn:xmpp:minimix#leave-all",
		function(_, data)
			local account = command_account(data);
			if not account then return not_local; end
			local rooms = {};
			for _, m in ipairs(mm.core:memberships(account)) do rooms[#rooms+1] = m.room; end
			return { status = "completed", info = leave_text(leave_rooms(account, rooms)) };
		end, adhoc_permission("urn:xmpp:minimix#leave-all")));
end

-- For operators, from Prosody's admin shell (prosodyctl shell) -----------------------

-- An account of this host, as Prosody prepares JIDs; nil for anything else.
local function operator_account(jid)
	local account = jid_bare(jid_prep(tostring(jid or "")) or "");
	if not account or select(2, jid_split(account)) ~= module.host
		or not jid_split(account) then
		return nil;
	end
	return account;
end

-- ok, text
local function operator_leave(jid, room)
	local account = operator_account(jid);
	if not account then return false, "Not an account of " .. module.host .. ": " .. tostring(jid); end
	local norm = mm.prep_room(room);
	if not norm then return false, "Not a room JID: " .. tostring(room); end
	local left, leaving = leave_rooms(account, { norm });
	if left + leaving == 0 then
		return false, account .. " is not in " .. norm;
	end
	if left > 0 then return true, account .. " leaves " .. norm; end
	return true, account .. " is leaving " .. norm .. ": the room has not confirmed yet";
end

local function state_text()
	local stats = mm.core:stats();
	return ("%d account(s) in rooms, %d membership(s), %d session(s) joined, %d IQ(s) waiting for a room")
		:format(stats.accounts, stats.memberships, stats.sessions, stats.iqs);
end

-- 0.12 (and 13): Lua lines reaching the module table (this library runs in
-- the module's environment, so these are its functions):
--   > hosts["example.com"].modules.minimix.memberships("user@example.com")
--   > hosts["example.com"].modules.minimix.leave("user@example.com", "room@muc.example.com")
--   > hosts["example.com"].modules.minimix.state()
function memberships(account) -- luacheck: ignore 131
	return memberships_text(operator_account(account) or tostring(account));
end

function leave(account, room) -- luacheck: ignore 131
	return select(2, operator_leave(account, room));
end

function state() -- luacheck: ignore 131
	return state_text();
end

-- 13: commands of their own section, e.g. `prosodyctl shell minimix
-- memberships user@example.com` or, in the shell, minimix:memberships("user@example.com").
local function provide_shell_commands()
	local function command(name, desc, args, handler)
		module:add_item("shell-command", {
			section = "minimix"; section_desc = "Accounts in group chats (mod_minimix)";
			name = name; desc = desc; handler = handler;
			args = args; host_selector = args[1].name;
		});
	end
	command("memberships", "List an account's rooms, with the sessions joined to each",
		{ { name = "jid", type = "string" } }, function(self, jid)
			local account = operator_account(jid);
			if not account then return false, "Not an account of " .. module.host .. ": " .. tostring(jid); end
			local lines = memberships_lines(account, true);
			for _, line in ipairs(lines) do self.session.print(line); end
			return true, ("%s is in %d room(s)"):format(account, #lines);
		end);
	command("leave", "Make an account leave a room (every session of it)",
		{ { name = "jid", type = "string" }, { name = "room", type = "string" } }, function(_, jid, room)
			return operator_leave(jid, room);
		end);
	command("state", "Count the host's accounts in rooms, memberships, joined sessions and waiting IQs",
		{ { name = "host", type = "string" } }, function()
			return true, state_text();
		end);
end

-- mm: the module's shared table (mod_minimix.lua)
function operators.init(shared)
	mm = shared;
	module:hook_global("stats-update", function()
		local stats = mm.core:stats();
		metric_state:with_labels("accounts"):set(stats.accounts);
		metric_state:with_labels("memberships"):set(stats.memberships);
		metric_state:with_labels("sessions"):set(stats.sessions);
		metric_state:with_labels("iqs"):set(stats.iqs);
	end);
	provide_commands();
	if offers.shell_commands then provide_shell_commands(); end
	return operators;
end

return operators;
