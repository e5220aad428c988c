"""End-to-end tests for mod_minimix: a real Prosody, real XMPP clients."""
