"""End-to-end tests for operators: install, observe, log, admin shell.

README.markdown, "Installing": `luarocks make --tree <installer_plugin_path>`
and `make install DESTDIR=... PREFIX=/usr` give a working module with
nothing from the checkout; "Observing": statistics through Prosody's
statistics API (OpenMetrics on /metrics) and one info line per account
join, leave, removal; and the shell functions `memberships` and `leave`
of mod_minimix.lua, run with `prosodyctl shell`.

As everywhere in test/e2e, alice (the account under test) is on
"localhost" (mod_minimix) and bob observes from "plain.localhost": every
effect on a room is checked from bob's side.
"""

import asyncio
import functools
import os
import re
import shutil
import stat
import subprocess
import urllib.request
from xml.sax.saxutils import escape, quoteattr

import pytest

from .clients import P, join_room, create_room
from .prosody_env import CHECKOUT, PROSODY13_DIR, PROSODY_VERSION, free_port
from .world import run

ALICE = "alice@localhost"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"

# Prosody's OpenMetrics (0.12 and 13) renders module:metric("counter", "deliveries")
# of mod_minimix as prosody_mod_minimix__deliveries_total{host="localhost"}
# ('/' in "prosody_mod_minimix/deliveries" becomes "__").
METRIC = "prosody_mod_minimix__"

PLAIN = os.environ.get("MINIMIX_E2E_PLAIN", "") not in ("", "0")
needs_module = pytest.mark.skipif(PLAIN, reason="operator tests need mod_minimix")


# ---- helpers ----------------------------------------------------------------

# The module's libraries (module:require), which every install ships beside
# mod_minimix.lua.
LIBS = sorted(f for f in os.listdir(CHECKOUT) if f.startswith("minimix_") and f.endswith(".lib.lua"))

def copy_tracked_sources(dest):
    """The checkout's tracked files (as they are in the work tree) in dest:
    luarocks and make build in place, which must not touch the checkout."""
    files = subprocess.run(["git", "-C", CHECKOUT, "ls-files", "-z"], check=True,
                           capture_output=True).stdout.decode().split("\0")
    for f in files:
        src = os.path.join(CHECKOUT, f)
        if not f or not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, f))
    return dest


def build_products():
    """What the checkout's own build made, to check that nothing changed it."""
    out = {}
    for name in ("minimix.so", "minimix.o", "lua_bindings.o"):
        p = os.path.join(CHECKOUT, name)
        if os.path.exists(p):
            st = os.stat(p)
            out[name] = (st.st_mtime_ns, st.st_size)
    return out


def loaded_libraries(env):
    """Paths of the shared objects mapped into the running Prosody."""
    with open("/proc/%d/maps" % env.proc.pid) as f:
        return {line.split()[-1] for line in f if line.rstrip().endswith(".so")}


def from_checkout(libs):
    """The libraries of the checkout among libs (not Prosody 13's own,
    which tools/prosody13.sh unpacks inside the checkout)."""
    return sorted(x for x in libs if x.startswith(CHECKOUT + os.sep)
                  and not x.startswith(PROSODY13_DIR + os.sep))


def same_file(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


async def fork_check(w, room_name):
    """bob's message reaches both joined sessions of alice, once each
    (XEP-0045 7.4), and the room saw one occupant alice (bare JID)."""
    room = w.room(room_name)
    bob = await w.connect("bob", "desk")
    await create_room(bob, room, "bob", whois="anyone")
    p = await w.connect("alice", "phone")
    l = await w.connect("alice", "laptop")
    mb = bob.mark()
    await join_room(p, room, "alice")
    await join_room(l, room, "alice")
    seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"), since=mb,
                              what="alice entering, at bob")
    assert seen.item.get("jid") == ALICE, seen
    mp, ml = p.mark(), l.mark()
    bob.groupchat(room, "to both sessions")
    for c, m in ((p, mp), (l, ml)):
        s = await c.wait_for(P(name="message", body="to both sessions"), since=m,
                             what="bob's message at " + c.name)
        assert s.to == c.jid and s.frm == room + "/bob", s
    await w.quiet()
    for c, m in ((p, mp), (l, ml)):
        assert len(c.matching(P(name="message", body="to both sessions"), since=m)) == 1, \
            c.transcript(m)
    assert len(bob.matching(P(name="presence", frm=room + "/alice"), since=mb)) == 1, \
        bob.transcript(mb)


async def kick(owner, room, nick, reason="operators"):
    """XEP-0045 8.2: a moderator kicks an occupant (role none)."""
    m = owner.mark()
    id = owner.iq(room, "set", "<query xmlns='%s'><item nick=%s role='none'><reason>%s</reason>"
                  "</item></query>" % (NS_MUC_ADMIN, quoteattr(nick), escape(reason)))
    res = await owner.wait_for(P(name="iq", id=id), since=m, what="kick result")
    assert res.type == "result", res


def parse_metrics(text):
    """OpenMetrics text -> {(name, ((label, value), ...)): float}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([^\s{]+)(?:\{(.*)\})?\s+(\S+)', line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


class Metrics:
    def __init__(self, text):
        self.text = text
        self.values = parse_metrics(text)

    def get(self, name, default=None, **labels):
        labels.setdefault("host", "localhost")
        return self.values.get((METRIC + name, tuple(sorted(labels.items()))), default)

    def minimix_lines(self):
        return "\n".join(ln for ln in self.text.splitlines() if METRIC in ln)


def openmetrics_options(http_port):
    """Global options that serve /metrics (mod_http_openmetrics) on
    127.0.0.1:http_port from Prosody's internal statistics, gathered when
    read, so fetch_metrics sees every count made before it."""
    return {
        "modules_enabled": ["http_openmetrics"],
        "statistics": "internal",
        "statistics_interval": "manual",
        "http_ports": [http_port],
        "http_interfaces": ["127.0.0.1"],
        "openmetrics_allow_cidr": "127.0.0.0/8",
    }


async def fetch_metrics(port):
    def get():
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
            return r.read().decode()
    return Metrics(await asyncio.get_running_loop().run_in_executor(None, get))


def minimix_info_lines(env):
    """Messages of the info lines logged by localhost:minimix, in order."""
    out = []
    for line in env.read_log().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "info" and parts[0].endswith(" localhost:minimix"):
            out.append(parts[2])
    return out


async def wait_log(w, env, count, what, tries=50):
    """Wait until localhost:minimix logged at least count info lines."""
    lines = minimix_info_lines(env)
    for _ in range(tries):
        if len(lines) >= count:
            return lines
        await w.quiet(0.2)
        lines = minimix_info_lines(env)
    raise AssertionError("%s: localhost:minimix info lines:\n%s" % (what, "\n".join(lines)))


async def shell(env, *command, check=True):
    """`prosodyctl shell` (ProsodyEnv.shell) without blocking the clients."""
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(env.shell, *command, check=check))


def module_call(function, *args):
    """The admin shell line calling a function of mod_minimix on localhost."""
    return '> hosts["localhost"].modules.minimix.%s(%s)' % (
        function, ", ".join('"%s"' % a for a in args))


# ---- 1. install -----------------------------------------------------------------

@needs_module
def test_luarocks_install_into_installer_plugin_path(prosody_factory, tmp_path):
    """README, Installing (LuaRocks): `luarocks --lua-version=5.4 make --tree
    <installer_plugin_path>` from a checkout installs
    share/lua/5.4/mod_minimix.lua, its libraries (the room log's
    share/lua/5.4/mod_minimix/minimix_log.lua and the others alike) and
    lib/lua/5.4/minimix.so;
    Prosody (0.12 and 13) with installer_plugin_path set to that tree and
    no plugin path at the checkout finds the module, the module finds its
    libraries in the tree; a two-session join then forks bob's message to both sessions
    (XEP-0045 7.4).  The build happens in a copy: the checkout's own build
    products are untouched."""
    assert not os.path.exists("/usr/lib/prosody/modules/mod_minimix.lua"), \
        "a system-wide mod_minimix would hide what the tree provides"
    before = build_products()
    src = copy_tracked_sources(str(tmp_path / "src"))
    tree = str(tmp_path / "tree")
    res = subprocess.run(["luarocks", "--lua-version=5.4", "make", "--tree", tree,
                          "mod_minimix-0.1.0-1.rockspec"], cwd=src, capture_output=True,
                         timeout=300)
    assert res.returncode == 0, "luarocks make failed:\n%s%s" % (
        res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"))
    lua = os.path.join(tree, "share", "lua", "5.4", "mod_minimix.lua")
    lib = os.path.join(tree, "lib", "lua", "5.4", "minimix.so")
    assert os.path.isfile(lua) and os.path.isfile(lib), os.listdir(tree)
    assert os.path.isfile(os.path.join(tree, "lib", "luarocks", "rocks-5.4", "manifest"))
    assert same_file(lua, os.path.join(CHECKOUT, "mod_minimix.lua"))
    # module:require("minimix_log") looks for it there, and so for the others
    assert "minimix_log.lib.lua" in LIBS, LIBS
    for name in LIBS:
        lib_lua = os.path.join(tree, "share", "lua", "5.4", "mod_minimix",
                               name[:-len(".lib.lua")] + ".lua")
        assert os.path.isfile(lib_lua), os.listdir(os.path.dirname(lua))
        assert same_file(lib_lua, os.path.join(CHECKOUT, name))
    assert build_products() == before, "the checkout's build products changed"

    env = prosody_factory(installer_plugin_path=tree, plugin_paths=[], spy=False,
                          admin_shell=True)
    with open(env.config_path) as f:
        config = f.read()
    assert "installer_plugin_path = %s" % ('"%s"' % tree) in config, config
    assert CHECKOUT not in config, "the config points at the checkout:\n" + config
    assert "LUA_CPATH_5_4" not in env.environ() or CHECKOUT not in env.environ()["LUA_CPATH_5_4"]

    out = env.shell('> hosts["localhost"].modules.minimix.module.path')
    assert lua in out, "mod_minimix was loaded from elsewhere: %s" % out
    libs = loaded_libraries(env)
    assert os.path.realpath(lib) in libs, "minimix.so of the tree is not loaded: %s" % sorted(
        x for x in libs if "minimix" in x)
    assert not from_checkout(libs), from_checkout(libs)

    async def scenario(w):
        await fork_check(w, "installed-rock")
    run(env, scenario)


@needs_module
def test_prosodyctl_install_of_a_binary_rock(prosody_factory, tmp_path):
    """README, Installing (prosodyctl install): a binary rock built from a
    checkout with `luarocks --lua-version=5.4 make --pack-binary-rock`,
    installed with `prosodyctl --config <cfg> install <absolute path of the
    .rock>` (prosodyctl changes to the data directory first, and the
    rockspec's git+file://. source cannot be fetched, hence the packed
    rock), lands in installer_plugin_path; Prosody (0.12 and 13) with no
    plugin path at the checkout then loads the module and its library from
    that tree, and a two-session join forks (XEP-0045 7.4).  Prosody 13.0.1
    exits 0 even when LuaRocks failed, so the tree is checked, not only
    the exit status."""
    before = build_products()
    src = copy_tracked_sources(str(tmp_path / "src"))
    res = subprocess.run(["luarocks", "--lua-version=5.4", "make", "--pack-binary-rock",
                          "mod_minimix-0.1.0-1.rockspec"], cwd=src, capture_output=True,
                         timeout=300)
    assert res.returncode == 0, "luarocks make --pack-binary-rock failed:\n%s%s" % (
        res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"))
    rocks = [f for f in os.listdir(src) if f.startswith("mod_minimix-0.1.0-1.")
             and f.endswith(".rock")]
    assert len(rocks) == 1, os.listdir(src)
    rock = os.path.join(src, rocks[0])
    assert build_products() == before, "the checkout's build products changed"

    tree = str(tmp_path / "tree")
    env = prosody_factory(installer_plugin_path=tree, plugin_paths=[], spy=False,
                          admin_shell=True, start=False)
    rc, out = env.prosodyctl("install", rock)
    lua = os.path.join(tree, "share", "lua", "5.4", "mod_minimix.lua")
    lib = os.path.join(tree, "lib", "lua", "5.4", "minimix.so")
    assert rc == 0 and os.path.isfile(lua) and os.path.isfile(lib), \
        "prosodyctl install exited %s:\n%s" % (rc, out)
    assert same_file(lua, os.path.join(CHECKOUT, "mod_minimix.lua"))
    rc, out = env.prosodyctl("list")
    assert "mod_minimix" in out, "prosodyctl list (exit %s):\n%s" % (rc, out)

    env.start()
    out = env.shell('> hosts["localhost"].modules.minimix.module.path')
    assert lua in out, "mod_minimix was loaded from elsewhere: %s" % out
    libs = loaded_libraries(env)
    assert os.path.realpath(lib) in libs, sorted(x for x in libs if "minimix" in x)
    assert not from_checkout(libs), from_checkout(libs)

    async def scenario(w):
        await fork_check(w, "prosodyctl-rock")
    run(env, scenario)


@needs_module
def test_make_install_destdir_prefix_usr(prosody_factory, tmp_path):
    """README, Installing (make install): `make install DESTDIR=<dir>
    PREFIX=/usr` puts mod_minimix.lua, its libraries (minimix_log.lib.lua and the
    other minimix_*.lib.lua) and minimix.so together in
    <dir>/usr/lib/prosody/modules (Debian Prosody's plugin directory);
    Prosody with plugin_paths at that directory (nothing from the checkout)
    loads them, and a two-session join forks (XEP-0045 7.4)."""
    before = build_products()
    src = copy_tracked_sources(str(tmp_path / "src"))
    dest = str(tmp_path / "dest")
    res = subprocess.run(["make", "install", "DESTDIR=" + dest, "PREFIX=/usr"], cwd=src,
                         capture_output=True, timeout=300)
    assert res.returncode == 0, "make install failed:\n%s%s" % (
        res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace"))
    moddir = os.path.join(dest, "usr", "lib", "prosody", "modules")
    assert "minimix_log.lib.lua" in LIBS, LIBS
    assert sorted(os.listdir(moddir)) == sorted(["minimix.so", "mod_minimix.lua"] + LIBS), \
        os.listdir(moddir)
    for name in ["mod_minimix.lua"] + LIBS:
        assert same_file(os.path.join(moddir, name), os.path.join(CHECKOUT, name))
    assert os.stat(os.path.join(moddir, "minimix.so")).st_mode & stat.S_IXUSR
    assert build_products() == before, "the checkout's build products changed"

    env = prosody_factory(plugin_paths=[moddir], spy=False, checkout_cpath=False)
    libs = loaded_libraries(env)
    assert os.path.realpath(os.path.join(moddir, "minimix.so")) in libs, sorted(
        x for x in libs if "minimix" in x)

    async def scenario(w):
        await fork_check(w, "installed-make")
    run(env, scenario)


# ---- 2. observe ---------------------------------------------------------------------

@needs_module
def test_openmetrics_reflect_joins_forks_and_leaves(prosody_factory):
    """README, Observing: with statistics = "internal" and
    mod_http_openmetrics, /metrics shows mod_minimix's counters and gauges
    (Prosody 0.12 renders them as prosody_mod_minimix__<name>, counters with
    _total, labelled host="localhost"): a first join counts
    account_events{event="joined"} once and its answers as deliveries; a
    later session's cached join sequence counts as replays; bob's message
    counts one delivery per joined session; state{kind=...} follows
    accounts, memberships and sessions; a leave and a kick count "left" and
    "removed"; nothing bounced."""
    http_port = free_port()
    env = prosody_factory(global_options=openmetrics_options(http_port))

    async def scenario(w):
        room = w.room("metrics")
        m0 = await fetch_metrics(http_port)
        assert m0.get("state", kind="memberships") == 0, m0.minimix_lines()
        assert m0.get("state", kind="sessions") == 0, m0.minimix_lines()
        assert m0.get("account_events_total", event="joined") in (None, 0), m0.minimix_lines()
        assert "# TYPE %sdeliveries counter" % METRIC in m0.text, m0.minimix_lines()
        d0 = m0.get("deliveries_total", 0)
        r0 = m0.get("replays_total", 0)

        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        _, p_seq = await join_room(p, room, "alice")
        m1 = await fetch_metrics(http_port)
        assert m1.get("account_events_total", event="joined") == 1, m1.minimix_lines()
        assert m1.get("deliveries_total") - d0 == len(p_seq), \
            "P got %d room stanzas on joining:\n%s" % (len(p_seq), m1.minimix_lines())
        assert m1.get("replays_total", 0) == r0, m1.minimix_lines()

        _, l_seq = await join_room(l, room, "alice")
        m2 = await fetch_metrics(http_port)
        assert m2.get("replays_total") - r0 == len(l_seq), \
            "L got %d cached stanzas on joining:\n%s" % (len(l_seq), m2.minimix_lines())
        assert m2.get("account_events_total", event="joined") == 1, m2.minimix_lines()
        assert m2.get("state", kind="accounts") == 1, m2.minimix_lines()
        assert m2.get("state", kind="memberships") == 1, m2.minimix_lines()
        assert m2.get("state", kind="sessions") == 2, m2.minimix_lines()

        mp, ml = p.mark(), l.mark()
        bob.groupchat(room, "counted")
        for c, m in ((p, mp), (l, ml)):
            await c.wait_for(P(name="message", body="counted"), since=m)
        m3 = await fetch_metrics(http_port)
        assert m3.get("deliveries_total") - m2.get("deliveries_total") == 2, m3.minimix_lines()

        mp, ml = p.mark(), l.mark()
        p.leave(room, "alice")
        await p.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"), since=mp)
        l.leave(room, "alice")
        await l.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"), since=ml)
        m4 = await fetch_metrics(http_port)
        assert m4.get("account_events_total", event="left") == 1, m4.minimix_lines()
        for kind in ("accounts", "memberships", "sessions"):
            assert m4.get("state", kind=kind) == 0, m4.minimix_lines()

        await join_room(p, room, "alice")
        mb = bob.mark()
        await kick(bob, room, "alice")
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable", codes={307}),
                           since=mb)
        await p.wait_for(P(name="presence", frm=room + "/alice", codes={110, 307}), since=mb)
        m5 = await fetch_metrics(http_port)
        assert m5.get("account_events_total", event="joined") == 2, m5.minimix_lines()
        assert m5.get("account_events_total", event="removed") == 1, m5.minimix_lines()
        assert m5.get("state", kind="memberships") == 0, m5.minimix_lines()
        assert m5.get("suppressed_bounces_total", 0) == 0, m5.minimix_lines()
        assert not [k for k in m5.values if k[0] == METRIC + "refusals_total"], m5.minimix_lines()
    run(env, scenario)


# ---- 3. log like Prosody --------------------------------------------------------------

@needs_module
def test_log_one_info_line_per_account_event_none_per_message(prosody):
    """README, Observing: one info line per account join, leave and removal,
    with the room, from localhost:minimix; everything else is debug.  Two
    sessions entering are one account join; a session leaving while another
    is in is no account event; the last leaving is one leave; a kick
    (XEP-0045 8.2) is one removal; messages (bob's forked to both sessions,
    and alice's own) log nothing at info."""
    env = prosody

    async def scenario(w):
        room = w.room("logged")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        assert minimix_info_lines(env) == [], minimix_info_lines(env)

        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        lines = await wait_log(w, env, 1, "the join")
        assert lines == ["%s is in %s" % (ALICE, room)], lines

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        for i in range(5):
            bob.groupchat(room, "bob says %d" % i)
        for i in range(3):
            p.groupchat(room, "alice says %d" % i)
        for c, m in ((p, mp), (l, ml), (bob, mb)):
            await c.wait_for(P(name="message", body="bob says 4"), since=m)
            await c.wait_for(P(name="message", body="alice says 2"), since=m)
        await w.quiet()
        assert minimix_info_lines(env) == lines, \
            "info lines while messages went through:\n" + "\n".join(minimix_info_lines(env))
        said = [ln for ln in env.read_log().splitlines()
                if "\tinfo\t" in ln and ("bob says" in ln or "alice says" in ln)]
        assert not said, "\n".join(said)

        mp = p.mark()
        p.leave(room, "alice")
        await p.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"), since=mp)
        await w.quiet()
        assert minimix_info_lines(env) == lines, minimix_info_lines(env)

        ml = l.mark()
        l.leave(room, "alice")
        await l.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"), since=ml)
        lines = await wait_log(w, env, 2, "the leave")
        assert lines[1:] == ["%s left %s" % (ALICE, room)], lines

        await join_room(p, room, "alice")
        lines = await wait_log(w, env, 3, "the second join")
        mb = bob.mark()
        await kick(bob, room, "alice")
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"), since=mb)
        lines = await wait_log(w, env, 4, "the kick")
        await w.quiet()
        lines = minimix_info_lines(env)
        assert len(lines) == 4, "\n".join(lines)
        assert lines[2] == "%s is in %s" % (ALICE, room), lines
        assert lines[3].startswith("%s is out of %s (" % (ALICE, room)), lines
    run(env, scenario)


# ---- 4. admin shell -------------------------------------------------------------------

@needs_module
def test_admin_shell_memberships_and_leave(prosody_factory):
    """mod_minimix.lua's shell functions, run with `prosodyctl --config <cfg>
    shell '> hosts["localhost"].modules.minimix.memberships("alice@localhost")'`
    (a line starting with '>' is Lua, on 0.12 and 13): memberships lists
    the account's room with nick and sessions; leave(account, room) makes
    the account exit (XEP-0045 7.14): bob sees alice leave, each joined
    session gets its unavailable self-presence (110); afterwards the list
    is empty and a second leave says the account is not in the room.
    Another account's list is its own."""
    env = prosody_factory(admin_shell=True)

    async def scenario(w):
        room = w.room("shell")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        out = await shell(env, module_call("memberships", ALICE))
        assert "%s as alice (joined): 2 session(s) joined" % room in out, out
        out = await shell(env, module_call("memberships", "carol@localhost"))
        assert "The account is in no rooms." in out, out

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        out = await shell(env, module_call("leave", ALICE, room))
        assert "%s leaves %s" % (ALICE, room) in out, out
        gone = await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                                  since=mb, what="alice leaving, at bob")
        assert 110 not in gone.codes and gone.item.get("jid") == ALICE, gone
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(P(name="presence", frm=room + "/alice", type="unavailable",
                                   codes={110}), since=m, what="unavailable at " + c.name)
            assert u.to == c.jid, u
        mb2 = bob.mark()
        bob.groupchat(room, "after the shell")
        await bob.wait_for(P(name="message", body="after the shell"), since=mb2)
        await w.quiet()
        for c, m in ((p, mp), (l, ml)):
            assert not c.matching(P(name="message", body="after the shell"), since=m), \
                c.transcript(m)
        assert len(bob.matching(P(name="presence", frm=room + "/alice"), since=mb)) == 1, \
            bob.transcript(mb)

        out = await shell(env, module_call("memberships", ALICE))
        assert "The account is in no rooms." in out, out
        out = await shell(env, module_call("leave", ALICE, room))
        assert "%s is not in %s" % (ALICE, room) in out, out
    run(env, scenario)


@needs_module
@pytest.mark.skipif(PROSODY_VERSION < 13, reason="Prosody 13's admin shell takes commands "
                    "from modules; on 0.12 the module-table functions serve (test above)")
def test_admin_shell_commands_on_prosody_13(prosody_factory):
    """Prosody 13: mod_minimix adds the admin shell section "minimix"
    (module:add_item("shell-command")), run as `prosodyctl shell minimix
    <command> <args>`: `memberships <jid>` lists each room with nick,
    sessions joined and their resources; `state <host>` counts accounts in
    rooms, memberships, joined sessions and waiting IQs (as the state
    gauges do); `leave <jid> <room>` makes the account exit (XEP-0045
    7.14): bob sees alice leave, each joined session gets its unavailable
    self-presence (110), the other room stays; then memberships and state
    show one room less, and a second leave fails (non-zero exit) saying
    the account is not in the room.  An account of another host, a JID
    that is no room and a host without the module are refused; `help
    minimix` lists the three commands."""
    env = prosody_factory(admin_shell=True)

    async def scenario(w):
        room, room2 = w.room("shell13"), w.room("shell13-b")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        await create_room(bob, room2, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_room(p, room2, "ali")

        out = await shell(env, "minimix", "memberships", ALICE)
        assert re.search(r"^%s as alice \(joined\): 2 session\(s\) joined, \d+ message\(s\) "
                         r"held for catch-up; sessions: laptop, phone$" % re.escape(room),
                         out, re.M), out
        assert re.search(r"^%s as ali \(joined\): 1 session\(s\) joined, .*; sessions: phone$"
                         % re.escape(room2), out, re.M), out
        assert "%s is in 2 room(s)" % ALICE in out, out
        out = await shell(env, "minimix", "memberships", "carol@localhost")
        assert "carol@localhost is in 0 room(s)" in out, out
        out = await shell(env, "minimix", "state", "localhost")
        assert "1 account(s) in rooms, 2 membership(s), 3 session(s) joined, 0 IQ(s)" in out, out

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        out = await shell(env, "minimix", "leave", ALICE, room)
        assert "%s leaves %s" % (ALICE, room) in out, out
        gone = await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                                  since=mb, what="alice leaving, at bob")
        assert 110 not in gone.codes and gone.item.get("jid") == ALICE, gone
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(P(name="presence", frm=room + "/alice", type="unavailable",
                                   codes={110}), since=m, what="unavailable at " + c.name)
            assert u.to == c.jid, u
        await w.quiet()
        assert not bob.matching(P(name="presence", frm=room2 + "/ali"), since=mb), \
            bob.transcript(mb)

        out = await shell(env, "minimix", "memberships", ALICE)
        assert room + " " not in out and "%s as ali" % room2 in out, out
        assert "%s is in 1 room(s)" % ALICE in out, out
        out = await shell(env, "minimix", "state", "localhost")
        assert "1 account(s) in rooms, 1 membership(s), 1 session(s) joined" in out, out

        rc, out = await shell(env, "minimix", "leave", ALICE, room, check=False)
        assert rc != 0 and "%s is not in %s" % (ALICE, room) in out, (rc, out)
        rc, out = await shell(env, "minimix", "leave", ALICE, room2 + "/ali", check=False)
        assert rc != 0 and "Not a room JID" in out, (rc, out)
        rc, out = await shell(env, "minimix", "memberships", "bob@plain.localhost", check=False)
        assert rc != 0 and "not available on plain.localhost" in out, (rc, out)
        rc, out = await shell(env, "minimix", "memberships", "localhost", check=False)
        assert rc != 0 and "Not an account of localhost" in out, (rc, out)

        out = await shell(env, "help minimix")
        for usage in ("memberships <jid>", "leave <jid> <room>", "state <host>"):
            assert "minimix " + usage in out, out
    run(env, scenario)
