-- mod_e2e_s2s_spy: test-only observer for the federation tests.
--
-- Loaded by test/e2e/federation_env.py on a VirtualHost or a MUC component.
-- It changes nothing: it logs, with the marker "E2E-S2S in <host>", every
-- stanza that reaches this host over a server-to-server stream, so that
-- the tests can count what crossed the link.  Error replies that Prosody
-- makes up itself when an outgoing s2s connection fails come from a dummy
-- s2sin session; they never crossed a link and are not logged.

local function spy(event)
	local origin = event.origin;
	if origin and origin.type == "s2sin" and not origin.dummy then
		module:log("info", "E2E-S2S in %s %s", module.host, tostring(event.stanza));
	end
end

-- Priority 2000: before anything else (mod_e2e_spy, mod_muc, mod_minimix).
for _, kind in ipairs({ "message", "presence", "iq" }) do
	for _, to in ipairs({ "bare", "full", "host" }) do
		module:hook(kind .. "/" .. to, spy, 2000);
	end
end
