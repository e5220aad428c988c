-- LuaRocks package of mod_minimix: the C core with its Lua binding
-- (minimix.so) and the Prosody module (mod_minimix.lua with its libraries,
-- minimix_*.lib.lua).  Install it into the tree Prosody uses for installed
-- plugins:
--   luarocks --lua-version=5.4 make --tree <installer_plugin_path>
-- or let `prosodyctl install` do it.
rockspec_format = "3.0"
package = "mod_minimix"
version = "0.1.0-1"
source = {
	url = "git+file://.",
}
description = {
	summary = "Account-based MUC joining for Prosody: the account is the occupant",
	detailed = [[
		Makes the account (bare JID), not each client session, the occupant
		of XEP-0045 rooms. Clients keep speaking plain MUC; the server forks
		room traffic to the sessions that joined.
	]],
	license = "MIT",
	labels = { "prosody", "xmpp", "muc" },
}
dependencies = {
	"lua >= 5.4, < 5.5",
}
external_dependencies = {
	-- ICU's stringprep, which Prosody's util.encodings uses too
	ICU = { header = "unicode/usprep.h", library = "icuuc" },
	XXHASH = { header = "xxhash.h" }, -- header-only use: nothing to link
}
build = {
	type = "builtin",
	modules = {
		minimix = {
			sources = { "minimix.c", "lua_bindings.c" },
			libraries = { "icuuc", "icudata" },
			incdirs = { "$(ICU_INCDIR)", "$(XXHASH_INCDIR)" },
			libdirs = { "$(ICU_LIBDIR)" },
		},
		mod_minimix = "mod_minimix.lua",
		-- share/lua/5.4/mod_minimix/minimix_log.lua: where Prosody's
		-- module:require("minimix_log") looks in a LuaRocks tree; the
		-- same libraries as the Makefile's LUA_LIBS
		["mod_minimix.minimix_send"] = "minimix_send.lib.lua",
		["mod_minimix.minimix_log"] = "minimix_log.lib.lua",
		["mod_minimix.minimix_persist"] = "minimix_persist.lib.lua",
		["mod_minimix.minimix_bookmarks"] = "minimix_bookmarks.lib.lua",
		["mod_minimix.minimix_links"] = "minimix_links.lib.lua",
		["mod_minimix.minimix_operators"] = "minimix_operators.lib.lua",
		["mod_minimix.minimix_backfill"] = "minimix_backfill.lib.lua",
		["mod_minimix.minimix_mam"] = "minimix_mam.lib.lua",
		["mod_minimix.minimix_logsql"] = "minimix_logsql.lib.lua",
		["mod_minimix.minimix_logfile"] = "minimix_logfile.lib.lua",
		["mod_minimix.minimix_push"] = "minimix_push.lib.lua",
		["mod_minimix.minimix_roominfo"] = "minimix_roominfo.lib.lua",
	},
}
