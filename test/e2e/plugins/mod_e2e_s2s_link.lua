-- mod_e2e_s2s_link: test-only switch for the federation tests.
--
-- Loaded by test/e2e/federation_env.py on both servers' VirtualHosts.  A
-- local session takes this server's s2s link down and up again:
--
--   <iq type='set' to='a.test' id='...'>
--     <link xmlns='urn:minimix:e2e:s2s-link' state='down'/>   (or 'up')
--   </iq>
--
-- down: the s2s port is closed (connections are refused, so the other
-- server can neither connect to this one nor verify its dialback keys) and
-- every s2s stream, incoming and outgoing, is cut without a word, as when
-- the network fails.  up: the port is opened again; streams are made again
-- on demand.  The answer is an empty result once it is done.

local portmanager = require "core.portmanager";
local st = require "util.stanza";

local xmlns_link = "urn:minimix:e2e:s2s-link";

local function cut(session)
	local conn = session.conn;
	if conn then
		-- no </stream>: the other side sees the TCP connection end
		conn:close();
	end
end

local function all_s2s()
	local out = {};
	for session in pairs(prosody.incoming_s2s) do
		out[#out+1] = session;
	end
	for _, host in pairs(prosody.hosts) do
		for _, session in pairs(host.s2sout or {}) do
			out[#out+1] = session;
		end
	end
	return out;
end

module:hook("iq-set/host/" .. xmlns_link .. ":link", function(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "c2s" then return; end
	local state = stanza.tags[1].attr.state;
	if state == "down" then
		portmanager.deactivate("s2s");
		local sessions = all_s2s();
		for _, session in ipairs(sessions) do cut(session); end
		module:log("info", "E2E-S2S-LINK down: port closed, %d streams cut", #sessions);
	elseif state == "up" then
		portmanager.activate("s2s");
		module:log("info", "E2E-S2S-LINK up: port open");
	else
		origin.send(st.error_reply(stanza, "modify", "bad-request", "state is 'down' or 'up'"));
		return true;
	end
	origin.send(st.reply(stanza));
	return true;
end);
