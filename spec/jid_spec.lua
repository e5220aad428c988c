-- minimix.normalize_jid (the core, for JIDs that did not pass the router)
-- against Prosody's own util.jid.prep (the router's, on ICU): where the
-- core accepts a JID it gives exactly what the router gives; it refuses
-- only malformed IP literals and domains with ASCII a domain name cannot
-- hold, which the router lets through.
local minimix = require "minimix";
local jid_prep = require "util.jid".prep;

local same = {
	-- non-ASCII nodes
	"Ärger@conference.localhost", "ärger@conference.localhost", "ÄRGER@Conference.Localhost",
	"ＡＢＣ@muc.example", "ａｂｃ@ｍｕｃ．ｅｘａｍｐｌｅ", "Ａｒｇｅｒ@muc.example",
	"straße@muc.example", "STRASSE@muc.example", "ΣΑΣ@muc.example", "σας@muc.example",
	"ıI@muc.example", "İstanbul@muc.example", "ǅemal@muc.example", "ⅷ@muc.example",
	"ℌello@muc.example", "a\u{0301}b@muc.example", "ro\u{200B}om@muc.example", "Ω@muc.example",
	"日本語@muc.example", "ｶﾀｶﾅ@muc.example", "x\u{00AD}y@muc.example", "ﬁle@muc.example",
	-- non-ASCII and IDN domains
	"room@bücher.example", "room@BÜCHER.Example.", "room@xn--bcher-kva.example",
	"room@ＥＸＡＭＰＬＥ.ＣＯＭ", "room@straße.example", "room@ΣΑΣ.example", "room@ℌ.example",
	"room@ex\u{200B}ample.com", "room@a\u{0301}.com", "room@١٢٣.com", "room@日本.jp",
	"room@İ.example", "room@ǅ.example",
	-- trailing dots, case, plain forms
	"Room@Conference.Example.ORG", "room@conference.example.org.", "muc.example",
	"MUC.Example.", "room@muc.example/Nick Name", "room@muc.example/ＮＩＣＫ",
	"exa_mple.com", "room@exa_mple.com",
	-- IP literals that are addresses
	"room@127.0.0.1", "room@1.2.3.4", "room@[::1]", "room@[2001:db8::1]", "room@[::ffff:1.2.3.4]",
};

local refused_by_both = {
	"", "@muc.example", "room@", "room@muc.example/", "ro\"om@muc.example", "ro<om@muc.example",
	"a&b@muc.example", "a:b@muc.example", "ro om@muc.example", "a@b@c", ".", "room@.",
	("a"):rep(1024) .. "@muc.example", "room@" .. ("a"):rep(1024), "room@\xc3(.example",
	"\u{0627}1@muc.example",
};

-- accepted by the router, refused by the core: not addresses, not names
local refused_by_core = {
	"room@1.2.3.999", "room@256.1.1.1", "room@1.2.3", "room@01.2.3.4", "room@[zz]",
	"room@[::1", "room@::1]", "room@[1.2.3.4]", "room@[]", "room@exa mple.com", "room@mu<c.example",
};

describe("minimix.normalize_jid", function()
	it("gives what Prosody's util.jid.prep gives for non-ASCII nodes and domains", function()
		for _, jid in ipairs(same) do
			local want = jid_prep(jid);
			assert.is_string(want, "the router refused " .. jid);
			assert.equal(want, (minimix.normalize_jid(jid)), jid);
			-- and is idempotent, as prep is
			assert.equal(want, (minimix.normalize_jid(want)), want);
		end
	end);

	it("refuses what the router refuses", function()
		for _, jid in ipairs(refused_by_both) do
			assert.is_nil(jid_prep(jid), "the router took " .. jid);
			local ok, token = minimix.normalize_jid(jid);
			assert.is_nil(ok, jid);
			assert.equal("invalid", token);
		end
	end);

	it("refuses malformed IP literals and non-names strictly", function()
		for _, jid in ipairs(refused_by_core) do
			assert.is_string(jid_prep(jid), "the router refused " .. jid);
			assert.is_nil((minimix.normalize_jid(jid)), jid);
		end
	end);
end);
