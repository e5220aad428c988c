-- mod_e2e_spy: test-only observer for the end-to-end tests.
--
-- Loaded on the MUC component by test/e2e/prosody_env.py (spy=True).  It
-- changes nothing: it logs, with the marker "E2E-SPY", every error stanza
-- that reaches a room, so that the tests can see bounces that Prosody's
-- MUC would otherwise drop silently (an error from a JID that is not an
-- occupant's real JID is ignored; from one that is, it kicks).

local function spy(event)
	local stanza = event.stanza;
	if stanza.attr.type == "error" then
		module:log("info", "E2E-SPY error-to-room %s", tostring(stanza));
	end
end

-- Priority 1000: before mod_muc sees (and possibly consumes) the stanza.
for _, kind in ipairs({ "message", "presence", "iq" }) do
	for _, to in ipairs({ "bare", "full", "host" }) do
		module:hook(kind .. "/" .. to, spy, 1000);
	end
end
