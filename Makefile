# mod_minimix - build, test and install.
#
# Plays well with LuaRocks: CC, CFLAGS, LUA_INCDIR, LIBFLAG, INST_LIBDIR,
# INST_LUADIR, PREFIX and DESTDIR can all be overridden.  The module is never
# linked against liblua: Prosody's interpreter provides the Lua API.

CC ?= cc
PKG_CONFIG ?= pkg-config
LUA ?= lua5.4
LUA_INCDIR ?= /usr/include/lua5.4
CFLAGS ?= -O2 -g
LIBFLAG ?= -shared
LDFLAGS ?=
PYTHON ?= /usr/bin/python3

WARN = -std=c99 -Wall -Wextra -pedantic -Wshadow -Wformat=2 -Wmissing-prototypes
PIC = -fPIC -fvisibility=hidden

PREFIX ?= /usr/local
# Debian's Prosody looks for plugins in /usr/lib/prosody/modules (PREFIX=/usr);
# an operator points plugin_paths at INST_LUADIR for anything else (README).
INST_LUADIR ?= $(PREFIX)/lib/prosody/modules
INST_LIBDIR ?= $(INST_LUADIR)

# Prosody's own stringprep (util.encodings on ICU): the core prepares JIDs with it.
JID_LIBS = $(shell $(PKG_CONFIG) --libs icu-uc 2>/dev/null || echo -licuuc -licudata)
CHECK_CFLAGS = $(shell $(PKG_CONFIG) --cflags check 2>/dev/null)
CHECK_LIBS = $(shell $(PKG_CONFIG) --libs check 2>/dev/null)

.PHONY: all check deps unit spec e2e bench install clean distclean run fuzz

all: minimix.so

# The core is compiled without the Lua include path: it must not need it.
minimix.o: minimix.c minimix.h
	$(CC) $(WARN) $(CFLAGS) $(PIC) -c minimix.c -o $@

lua_bindings.o: lua_bindings.c minimix.h
	$(CC) $(WARN) $(CFLAGS) $(PIC) -I$(LUA_INCDIR) -c lua_bindings.c -o $@

minimix.so: minimix.o lua_bindings.o
	$(CC) $(LIBFLAG) $(LDFLAGS) -o $@ minimix.o lua_bindings.o $(JID_LIBS)

# The Check suite links the core alone.
test/check_minimix: test/check_minimix.c minimix.o minimix.h
	$(CC) $(WARN) $(CFLAGS) $(CHECK_CFLAGS) -I. -o $@ test/check_minimix.c minimix.o $(CHECK_LIBS) $(JID_LIBS)

# The Check suite again, under AddressSanitizer and UndefinedBehaviorSanitizer.
SAN = -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all
test/check_minimix_asan: test/check_minimix.c minimix.c minimix.h
	$(CC) $(WARN) -O1 -g $(SAN) $(CHECK_CFLAGS) -I. -o $@ test/check_minimix.c minimix.c $(CHECK_LIBS) $(JID_LIBS)

# libFuzzer harness (clang): random operation sequences, invariants checked
# after every step.  FUZZ_SECONDS bounds a run; make check runs a short one.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 600
fuzz/fuzz_core: fuzz/fuzz_core.c minimix.c minimix.h
	$(FUZZ_CC) -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. -o $@ fuzz/fuzz_core.c minimix.c $(JID_LIBS)

fuzz: fuzz/fuzz_core
	mkdir -p fuzz/corpus
	./fuzz/fuzz_core -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 fuzz/corpus

deps:
	sh tools/deps.sh

# The README's test command: installs what is missing (Prosody 13.0 beside
# the system's 0.12 included), builds, runs every suite (the end-to-end ones
# on both Prosody versions) side by side, the end-to-end ones on
# pytest-xdist workers (test/e2e/README.md), and ends with one line
# "N passed, N failed".
check: deps
	$(MAKE) all test/check_minimix test/check_minimix_asan fuzz/fuzz_core
	$(PYTHON) test/run_suites.py

unit: test/check_minimix
	./test/check_minimix

spec: minimix.so
	$(LUA) /usr/bin/busted

e2e: minimix.so
	$(PYTHON) -m pytest -q test/e2e

# The demo needs only what running needs (not the test tools); with
# MINIMIX_PROSODY=13 it runs on Prosody 13.0 (tools/prosody13.sh).
run:
	sh tools/deps.sh $(if $(filter 13,$(MINIMIX_PROSODY)),run13,run)
	$(MAKE) all
	$(PYTHON) test/e2e/run_server.py

# Benchmarks (README "Performance"; sizes in bench/README.md): they print
# tables and save them in bench/results/, and never assert.
bench/bench_core: bench/bench_core.c minimix.o minimix.h
	$(CC) $(WARN) $(CFLAGS) -I. -o $@ bench/bench_core.c minimix.o $(JID_LIBS)

bench: deps
	$(MAKE) all bench/bench_core
	mkdir -p bench/results
	./bench/bench_core bench/results/core_c.json
	$(LUA) bench/core_lua.lua binding bench/results/core_binding.json
	$(LUA) bench/core_lua.lua lua2018 bench/results/core_lua2018.json
	$(PYTHON) bench/bench_server.py bench/results/server.json
	$(PYTHON) bench/bench_federation.py bench/results/federation.json
	$(LUA) bench/log_file_store.lua ./minimix_log.lib.lua bench/results/log_file_store.json
	$(LUA) bench/withdraw_file_store.lua ./minimix_log.lib.lua bench/results/withdraw_file_store.json
	$(PYTHON) bench/report.py

# The module's libraries, loaded with module:require from beside
# mod_minimix.lua; the rockspec lists the same files (build.modules).
LUA_LIBS = minimix_send.lib.lua minimix_log.lib.lua minimix_persist.lib.lua \
	minimix_bookmarks.lib.lua minimix_links.lib.lua minimix_operators.lib.lua \
	minimix_backfill.lib.lua minimix_mam.lib.lua minimix_logsql.lib.lua minimix_logfile.lib.lua \
	minimix_push.lib.lua minimix_roominfo.lib.lua

install: minimix.so
	install -d $(DESTDIR)$(INST_LUADIR) $(DESTDIR)$(INST_LIBDIR)
	install -m 644 mod_minimix.lua $(DESTDIR)$(INST_LUADIR)/mod_minimix.lua
	install -m 644 $(LUA_LIBS) $(DESTDIR)$(INST_LUADIR)/
	install -m 755 minimix.so $(DESTDIR)$(INST_LIBDIR)/minimix.so

clean:
	rm -f *.o minimix.so test/check_minimix test/check_minimix_asan fuzz/fuzz_core bench/bench_core
	rm -rf test/e2e/__pycache__ .pytest_cache

# Prosody 13.0 unpacked by tools/prosody13.sh (make check fetches it again).
distclean: clean
	rm -rf .prosody13
