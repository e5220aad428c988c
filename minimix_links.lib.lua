-- mod_minimix's server-to-server links and self-pings: is the account still in its rooms on other servers?

local new_cache = require "util.cache".new;
local now = require "util.time".now;

local links = {};

-- Remote domains whose server-to-server link went down, so that the account
-- asks its rooms there again once the link is back.  Bounded: beyond
-- links_lost_size domains the one lost longest ago is forgotten (its rooms
-- are still pinged every minimix_ping_interval).
local links_lost_size = 1024;
local links_lost = new_cache(links_lost_size);

-- mm: the module's shared table (mod_minimix.lua)
function links.init(mm)
	-- How often the account checks, by XEP-0410 self-ping, that it is still
	-- in each room (and 5 s after a server-to-server link to the room's host
	-- fell).
	local ping_interval = mm.limit_option("minimix_ping_interval", 300);

	-- Is the account still in its rooms?  Rooms drop occupants whose traffic
	-- bounces, which a broken server-to-server link causes without a word to
	-- the account: ask after such a link went down, and now and then.
	module:add_timer(ping_interval, function()
		mm.perform({}, mm.core:ping_due(nil, now()));
		return ping_interval;
	end);

	local function ping_host_later(remote, delay)
		if not remote then return; end
		local ok, err = mm.core:ping_later(remote, delay);
		if not ok then
			module:log("warn", "Could not plan pinging the rooms on %s: %s", remote, err);
		end
	end
	-- A link that fell: ask soon (a failed ask comes back as "ping_later").
	-- A link that came back up after that: the room may have dropped the
	-- account meanwhile, ask again.  A first link needs no asking.
	local function link_down(remote)
		if not remote then return; end
		links_lost:set(remote, true);
		ping_host_later(remote, 5);
	end
	local function link_up(remote)
		if not remote or not links_lost:get(remote) then return; end
		links_lost:set(remote, nil);
		ping_host_later(remote, 1);
	end
	module:hook("s2sout-destroyed", function(event) link_down(event.session.to_host); end);
	module:hook("s2sin-destroyed", function(event) link_down(event.session.from_host); end);
	module:hook("s2sout-established", function(event) link_up(event.session.to_host); end);
	module:hook("s2sin-established", function(event) link_up(event.session.from_host); end);
	return links;
end

-- A reload hands the lost links to the new instance (module.save).
function links.save()
	return links_lost;
end

function links.restore(lost_before)
	-- oldest first, so that the order of forgetting stays
	local lost = {};
	for remote in lost_before:items() do lost[#lost+1] = remote; end
	for i = #lost, 1, -1 do links_lost:set(lost[i], true); end
end

return links;
