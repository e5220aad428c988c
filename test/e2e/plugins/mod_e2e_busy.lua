-- mod_e2e_busy: test-only switch that keeps the server's main loop busy.
--
-- Loaded on a VirtualHost by the end-to-end tests.  Prosody 0.12's
-- net.server (epoll) runs its timers only when no connection has anything
-- to read, so a server under a steady stream of stanzas runs none for as
-- long as the stream lasts.  While on, a UDP socket sends itself a datagram
-- each time it reads one: it is always readable and every other connection
-- is still served; on 0.12 no timer runs meanwhile (13.0's loop runs them
-- between rounds of events all the same).  A local session asks:
--
--   <iq type='set' to='localhost' id='...'>
--     <busy xmlns='urn:minimix:e2e:busy' state='on'/>   (or 'off')
--   </iq>
--
-- The answer is an empty result.  So that a test that never says 'off'
-- cannot spin for ever, it stops by itself after LIMIT seconds (read from
-- the clock on each turn: timers are what it starves).

local server = require "net.server";
local socket = require "socket";
local st = require "util.stanza";
local now = require "util.time".now;

local xmlns_busy = "urn:minimix:e2e:busy";
local LIMIT = 60;

local spinning = nil; -- { sock, watch, since, turns }

local function stop(why)
	local s = spinning;
	if not s then return; end
	spinning = nil;
	s.watch:close();
	s.sock:close();
	module:log("info", "E2E-BUSY off (%s) after %d turns", why, s.turns);
end

local function start()
	if spinning then return; end
	local sock = assert(socket.udp());
	assert(sock:setsockname("127.0.0.1", 0));
	local ip, port = sock:getsockname();
	assert(sock:setpeername(ip, port));
	sock:settimeout(0);
	local s = { sock = sock, since = now(), turns = 0 };
	s.watch = server.watchfd(sock, function()
		sock:receive();
		s.turns = s.turns + 1;
		if now() - s.since > LIMIT then
			stop("time limit");
			return;
		end
		sock:send("x");
	end);
	spinning = s;
	sock:send("x");
	module:log("info", "E2E-BUSY on");
end

module:hook("iq-set/host/" .. xmlns_busy .. ":busy", function(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "c2s" then return; end
	local state = stanza.tags[1].attr.state;
	if state == "on" then
		start();
	elseif state == "off" then
		stop("asked");
	else
		origin.send(st.error_reply(stanza, "modify", "bad-request", "state is 'on' or 'off'"));
		return true;
	end
	origin.send(st.reply(stanza));
	return true;
end);

-- A loop that never idles would keep the server from shutting down.
module:hook_global("server-stopping", function()
	stop("shutdown");
end);

function module.unload()
	stop("unloaded");
end
