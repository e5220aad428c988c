"""Server benchmark: a real Prosody 0.12, with mod_minimix and with plain MUC.

Run by `make bench` (after the core benchmark); alone:

    make && /usr/bin/python3 bench/bench_server.py [results.json]

Three scenarios, each on a fresh Prosody started by test/e2e/prosody_env.py
(same config both ways, except that "module" loads mod_minimix on the
VirtualHost of the accounts):

fan-out   A accounts x D sessions in one room; a sender (on a host without the
          module) posts M groupchat messages; every session counts the
          messages it gets.  Prosody's CPU time (utime+stime from
          /proc/<pid>/stat) is taken right before the first message and when
          the A*D*M-th copy has arrived; reported per 1000 delivered
          messages, with the peak RSS (VmHWM).  With the module the D
          sessions of an account all join (the account joins once); plain:
          each session joins as its own occupant session, same nick.  Then
          one run per mode under callgrind counts the instructions per
          delivered message, a figure the machine's load cannot change.
many rooms RA accounts x RD sessions spread over RR rooms: Prosody's Lua heap
          (after full collections, mod_bench_probe) and RSS before and after
          the joins, per membership (account in a room).
cycles    CA accounts x D sessions join and leave a room C times: Lua heap
          and RSS after the first 10 cycles and after the last.
small     the room sizes most rooms have (2 accounts x 1 session, 5 x 2,
          20 x 3, 60 x 1): one sender posts SM messages, each after the
          room's echo of the last and a pause (paced, as people talk);
          Prosody's CPU per delivered message for plain MUC, the module
          with its room log on the file store, on SQLite and on
          PostgreSQL (a throw-away server, when this machine has one),
          runs interleaved, module/plain as the median of the runs' ratios.

Nothing is asserted; every figure is printed and written to the JSON file.
Sizes: MINIMIX_BENCH_SERVER_* (see bench/README.md).
"""

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from xml.sax.saxutils import quoteattr

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CHECKOUT, "test", "e2e"))
sys.path.insert(0, HERE)

from prosody_env import ProsodyEnv, PROSODY_VERSION, _encode_node, lua_string  # noqa: E402
from rawxmpp import Session  # noqa: E402

PLUGINS = os.path.join(HERE, "plugins")
PASSWORD = "bench"
MARKER = b"BMK-"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    v = os.environ.get(name, "")
    if not v:
        return default
    n = int(v)
    if n < 1:
        raise SystemExit("%s must be a positive integer" % name)
    return n


A = env_int("MINIMIX_BENCH_SERVER_ACCOUNTS", 50)
M = env_int("MINIMIX_BENCH_SERVER_MESSAGES", 300)
DS = [int(x) for x in os.environ.get("MINIMIX_BENCH_SERVER_SESSIONS", "1,3").split(",")]
REPEAT = env_int("MINIMIX_BENCH_SERVER_REPEAT", 3)
WINDOW = env_int("MINIMIX_BENCH_SERVER_WINDOW", 10)
RA = env_int("MINIMIX_BENCH_SERVER_ROOMS_ACCOUNTS", 1000)
RR = env_int("MINIMIX_BENCH_SERVER_ROOMS", 100)
RD = env_int("MINIMIX_BENCH_SERVER_ROOMS_SESSIONS", 3)
CA = env_int("MINIMIX_BENCH_SERVER_CYCLE_ACCOUNTS", 10)
CYCLES = env_int("MINIMIX_BENCH_SERVER_CYCLES", 100)
# plain MUC: every session joins with the account's nick (one occupant with
# several sessions, as Prosody 0.12 allows), or "distinct": one nick per
# session (one occupant per device)
NICKS = os.environ.get("MINIMIX_BENCH_SERVER_NICKS", "same")
SCENARIOS = set(os.environ.get("MINIMIX_BENCH_SERVER_SCENARIOS",
                               "fanout,rooms,cycles,catchup,mam,small").split(","))
# small rooms: accounts x sessions per room size, messages per run, the
# pause after each message's echo, runs per mode (interleaved), and the
# server setups measured next to plain MUC
SMALL = [tuple(int(n) for n in x.split("x")) for x in
         os.environ.get("MINIMIX_BENCH_SERVER_SMALL", "2x1,5x2,20x3,60x1").split(",") if x]
SM = env_int("MINIMIX_BENCH_SERVER_SMALL_MESSAGES", 400)
SMALL_PACE = float(os.environ.get("MINIMIX_BENCH_SERVER_SMALL_PACE", "0.01"))
SMALL_REPEAT = env_int("MINIMIX_BENCH_SERVER_SMALL_REPEAT", 5)
SMALL_MODES = [m for m in os.environ.get("MINIMIX_BENCH_SERVER_SMALL_MODES",
                                         "module,sqlite,postgres,archived").split(",") if m]
# another checkout of the module (built), to compare with in the same run:
# each setup of SMALL_MODES also runs with it, as "<mode>@base"
BASELINE = os.environ.get("MINIMIX_BENCH_SERVER_BASELINE", "")
# catch-up: CU_LOG messages in the room, then CU_JOINS joins of a later
# device asking for each of CU_ASK messages (maxstanzas); MAM: as many
# queries of each page
CU_LOG = env_int("MINIMIX_BENCH_SERVER_CATCHUP_LOG", 1000)
CU_JOINS = env_int("MINIMIX_BENCH_SERVER_CATCHUP_JOINS", 20)
CU_ASK = [int(x) for x in os.environ.get("MINIMIX_BENCH_SERVER_CATCHUP_ASK", "20,100,500").split(",")]
CONCURRENCY = 50


# ---- /proc ---------------------------------------------------------------------

def cpu_seconds(pid):
    """utime + stime of the process, in seconds (clock ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_seconds(pid):
    """CPU time from the scheduler, in seconds (nanosecond resolution)."""
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            return int(f.read().split()[0]) / 1e9
    except OSError:
        return None


def system_busy():
    """CPU seconds all processors spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


def memory(pid):
    """(VmRSS, VmHWM) in bytes."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


async def settle(pid, quiet=0.02, interval=0.3, limit=15.0):
    """Wait until the server has been (nearly) idle for an interval."""
    deadline = time.monotonic() + limit
    last = sched_seconds(pid) or cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now = sched_seconds(pid) or cpu_seconds(pid)
        if now - last < quiet * interval:
            return
        last = now


# ---- helpers -------------------------------------------------------------------

class CallgrindEnv(ProsodyEnv):
    """Prosody under valgrind's callgrind: instructions executed, counted
    exactly whatever else the machine does (about 50 times slower)."""

    def command(self):
        # the interpreter itself: /usr/bin/prosody is a #! script, and
        # valgrind would otherwise measure /usr/bin/env, not Prosody
        return ["valgrind", "--tool=callgrind", "--dump-instr=no",
                "--callgrind-out-file=%s" % os.path.join(self.dir, "callgrind.out"),
                "lua5.4"] + super().command()

    def zero(self):
        subprocess.run(["callgrind_control", "-z", str(self.proc.pid)],
                       capture_output=True, check=True, timeout=120)

    def dump(self, annotate_to=None):
        """Dump the counts since zero(); returns (total Ir, Ir in minimix.so)."""
        before = set(os.listdir(self.dir))
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)],
                       capture_output=True, check=True, timeout=300)
        new = sorted(f for f in set(os.listdir(self.dir)) - before
                     if f.startswith("callgrind.out"))
        path = os.path.join(self.dir, new[-1])
        total = None
        with open(path) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    total = int(line.split()[1])
        text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                              capture_output=True, text=True, timeout=300).stdout
        core = 0
        for line in text.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and "minimix.so" in parts[1]:
                try:
                    core += int(parts[0].replace(",", ""))
                except ValueError:
                    pass
        if annotate_to:
            with open(annotate_to, "w") as f:
                f.write(text)
        return total, core


# Server setups.  "module" is the module as configured by default: the room
# log on Prosody's file store.  "nolog" turns the room log off; "sqlite"
# puts the room log (alone) on mod_storage_sql with SQLite3.
MODES = {
    "plain": {"minimix": False},
    "module": {},
    "nolog": {"host_options": {"minimix_log": False}},
    "sqlite": {"storage": "sqlite",
               "global_options": {"storage": {"accounts": "internal", "minimix_log": "sql"},
                                  "default_storage": "internal"}},
}
# Prosody 13's sqlite_tune (0.12 has no such option): WAL and
# synchronous=NORMAL, fewer fsyncs per commit.  It takes effect only through
# LuaSQLite3; through LuaDBI (Debian's) the pragmas run inside a transaction
# and do nothing, which this mode shows.
MODES["sqlite_tuned"] = {"storage": "sqlite", "global_options": dict(
    MODES["sqlite"]["global_options"], sqlite_tune="normal")}
# Group chat push (minimix_push.lib.lua): mod_cloud_notify loaded and one
# XEP-0357 registration per account, written into its store before the
# start.  "push": the registration is the connected device's (d0), so no
# message needs a push, the case most messages are; "push_away": it is a
# phone that is away, so each message is decided for each account (a
# public room without a setting: on-mention, and the benchmark's messages
# name nobody, so nothing is sent).
MODES["push"] = {"extra_modules": ["cloud_notify"], "push_resource": "d0"}
MODES["push_away"] = {"extra_modules": ["cloud_notify"], "push_resource": "phone"}
# The room log's variants and push run in the fan-out scenario next to plain
# MUC and the module (MINIMIX_BENCH_SERVER_LOG_MODES="" leaves them out).
LOG_MODES = [m for m in os.environ.get("MINIMIX_BENCH_SERVER_LOG_MODES",
                                       "nolog,sqlite,push,push_away").split(",")
             if m]
# The room log (alone) on mod_storage_sql with PostgreSQL: a throw-away
# server of the end-to-end tests (test/e2e/storages.py, fsync off), a fresh
# database per run.
MODES["postgres"] = {"storage": "postgres", "global_options": dict(
    MODES["sqlite"]["global_options"])}
# Rooms that archive their messages themselves (muc_mam on the MUC
# component, as most servers run it): plain MUC and the module (the log on
# the default file store) with the same archive; the module's figures there
# are compared with plain_archived, the others' with plain.
MODES["plain_archived"] = {"minimix": False, "muc_mam": True}
MODES["archived"] = {"muc_mam": True}
MODE_NAMES = {"plain": "plain MUC", "module": "mod_minimix", "nolog": "without the log",
              "sqlite": "log on SQLite", "sqlite_tuned": "log on SQLite, sqlite_tune=normal",
              "push": "push, device connected", "push_away": "push, device away",
              "postgres": "log on PostgreSQL"}
POSTGRES = None  # the PostgresServer, while the scenarios that use it run


def write_push_registrations(env, accounts, resource):
    """mod_cloud_notify's store (internal, keyval "cloud_notify"): one
    registration per account, for the device with that resource."""
    # (util.datamanager keeps "_" in store names)
    d = os.path.join(env.data_dir, _encode_node(env.domain), "cloud_notify")
    os.makedirs(d, exist_ok=True)
    for i in range(accounts):
        node = "u%d-%s" % (i, resource)
        with open(os.path.join(d, "u%d.dat" % i), "w") as f:
            f.write("return { [%s] = { jid = \"push.example\"; node = %s; resource = %s;"
                    " timestamp = 0 } };\n" % (lua_string("push.example<" + node),
                                              lua_string(node), lua_string(resource)))


def start_env(mode, accounts, callgrind=False):
    cls = CallgrindEnv if callgrind else ProsodyEnv
    mode, _, base = mode.partition("@")
    kw = dict(MODES[mode])
    if mode == "postgres":
        kw["sql"] = POSTGRES.sql_settings(POSTGRES.create_database())
    kw.setdefault("minimix", True)
    push_resource = kw.pop("push_resource", None)
    muc_options = {"muc_room_locking": False}
    if kw.pop("muc_mam", False):
        muc_options["modules_enabled"] = ["muc_mam"]
    env = cls(plugin_paths=[BASELINE if base else CHECKOUT, PLUGINS],
              extra_modules=["bench_probe"] + kw.pop("extra_modules", []), spy=False,
              muc_options=muc_options, **kw)
    for i in range(accounts):
        env.add_user("u%d" % i, PASSWORD)
    if push_resource:
        write_push_registrations(env, accounts, push_resource)
    env.add_user("sender", PASSWORD, env.plain_domain)
    env.start(timeout=600 if callgrind else 15)
    return env


def account_sessions(env, accounts, sessions):
    """[[Session per device] per account]"""
    return [[Session("127.0.0.1", env.port, env.domain, "u%d" % i, PASSWORD, "d%d" % k)
             for k in range(sessions)] for i in range(accounts)]


async def bounded(coros, limit=CONCURRENCY):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def connect_all(groups, timeout=30.0):
    await bounded([s.connect(timeout=timeout) for g in groups for s in g])


async def join_account(group, room, nick, distinct=False, timeout=30.0):
    # the devices of one account join one after the other, as a user's
    # phone and laptop would; accounts join side by side
    for s in group:
        await s.join(room, "%s-%s" % (nick, s.resource) if distinct else nick, timeout=timeout)


async def leave_account(group, room, nick):
    for s in group:
        await s.leave(room, nick)


async def close_all(groups):
    await asyncio.gather(*(s.close() for g in groups for s in g), return_exceptions=True)


# After the timed runs, for each D, one run per mode under callgrind
# (MINIMIX_BENCH_SERVER_CALLGRIND, on by default): every instruction Prosody
# executes in the message phase (the Lua VM, C libraries, the core), counted
# exactly whatever else the machine does; CG_M messages only, as valgrind is
# slow.  Per-function counts: bench/results/callgrind-<mode>-D<n>.txt (the
# Debian lua5.4 binary is stripped: the VM shows as addresses).
CALLGRIND = os.environ.get("MINIMIX_BENCH_SERVER_CALLGRIND", "1") not in ("", "0")
CG_M = env_int("MINIMIX_BENCH_SERVER_CALLGRIND_MESSAGES", 20)
# Which modes run under callgrind (comma-separated; plain MUC and the module
# always): by default the push modes of LOG_MODES, e.g. "nolog,sqlite" to
# split the module's count into the log's share and the rest.
CG_MODES = os.environ.get("MINIMIX_BENCH_SERVER_CALLGRIND_MODES")
# MINIMIX_BENCH_SERVER_LUACOUNT=1 (off by default): one more run per mode
# and D in which mod_bench_probe counts Lua VM instructions (a hook every
# 1000, in every thread that handles stanzas) and writes the Lua functions
# they were spent in to bench/results/luaprof-<mode>-D<n>.txt, with the
# collector stopped: the bytes the Lua heap grew by per delivered message,
# and roughly where (the same file).
# MINIMIX_BENCH_PERF=1 adds `perf record` of the server to those runs
# (bench/results/perf-<mode>-D<n>.data).  Profiled runs are slower: their
# CPU figures are not reported.
LUACOUNT = os.environ.get("MINIMIX_BENCH_SERVER_LUACOUNT", "") not in ("", "0")
# MINIMIX_BENCH_SERVER_WARMUP=1: the fan-out's room says one message, which
# every session gets, before the measured window
WARMUP = os.environ.get("MINIMIX_BENCH_SERVER_WARMUP", "") not in ("", "0")
PERF = os.environ.get("MINIMIX_BENCH_PERF", "") not in ("", "0")
RESULTS = os.path.join(HERE, "results")


async def profile_start(ctl, pid, name):
    prof = {"name": name}
    await ctl.iq("<profile xmlns='urn:minimix:bench' action='start'/>")
    if PERF:
        import subprocess
        prof["perf"] = subprocess.Popen(
            ["perf", "record", "-q", "-F", "999", "-p", str(pid),
             "-o", os.path.join(RESULTS, "perf-%s.data" % name)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)
    return prof


async def profile_stop(ctl, prof):
    """Stop profiling; returns the Lua VM instructions counted, in thousands,
    and the KB the Lua heap grew by meanwhile (the collector stopped)."""
    if "perf" in prof:
        import signal
        prof["perf"].send_signal(signal.SIGINT)
        prof["perf"].wait(30)
    el = await ctl.iq("<profile xmlns='urn:minimix:bench' action='stop' file=%s/>"
                      % quoteattr(os.path.join(RESULTS, "luaprof-%s.txt" % prof["name"])))
    p = el.find("{urn:minimix:bench}profile")
    if p is None or not p.get("samples"):
        return None, None
    return int(p.get("samples")), float(p.get("kb")) if p.get("kb") else None


# ---- scenarios -----------------------------------------------------------------

async def fanout(mode, D, profile=None):
    """One run; profile: None (timed), "lua" (Lua VM instructions, and perf
    when asked) or "callgrind" (every instruction, CG_M messages)."""
    cg = profile == "callgrind"
    M = CG_M if cg else globals()["M"]
    slow = 60.0 if cg else 1.0  # timeouts stretch under valgrind
    env = start_env(mode, A, callgrind=cg)
    pid = env.proc.pid
    room = "bench@%s" % env.muc_domain
    groups = []
    sender = Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "s")
    ctl = Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "ctl")
    try:
        await sender.connect(timeout=30 * slow)
        await ctl.connect(timeout=30 * slow)  # for the profiling requests; never counts
        await sender.join(room, "sender", timeout=30 * slow)
        groups = account_sessions(env, A, D)
        await connect_all(groups, timeout=30 * slow)
        distinct = mode == "plain" and NICKS == "distinct"
        await bounded([join_account(g, room, "u%d" % i, distinct, timeout=30 * slow)
                       for i, g in enumerate(groups)])
        if WARMUP:
            # what happens once per account and room (push: each account's
            # bookmark and the room's disco#info read for the first
            # decision) stays out of the window
            everyone = [s for g in groups for s in g]
            marks = [s.mark() for s in everyone]
            sender.groupchat(room, "warm-up")
            for s, m in zip(everyone, marks):
                await s.wait_for(lambda e: e.tag.endswith("message") and any(
                    (c.text or "") == "warm-up" for c in e), since=m, timeout=30 * slow,
                    what="the warm-up message")
        # every run starts from a collected heap: the collector's work in the
        # window is then what this run's garbage costs
        lua_heap = await ctl.probe(timeout=60 * slow)
        await settle(pid, limit=15 * min(slow, 4))
        everyone = [s for g in groups for s in g]
        for s in everyone:
            s.count(MARKER)
        sender.count(MARKER)
        expected = A * D * M
        prof = await profile_start(ctl, pid, "%s-D%d" % (mode, D)) if profile == "lua" else None
        if cg:
            env.zero()
        log0 = log_bytes(env, room)
        me0 = time.process_time()
        cpu0, sch0, t0 = cpu_seconds(pid), sched_seconds(pid), time.monotonic()
        busy0 = system_busy()
        sent = 0
        while sent < M:
            # at most WINDOW messages ahead of the room's reflection to the
            # sender: the room has fanned out everything before that
            while sent - sender.counted >= WINDOW:
                sender._changed.clear()
                if sent - sender.counted < WINDOW:
                    break
                await asyncio.wait_for(sender._changed.wait(), 60 * slow)
            sent += 1
            sender.groupchat(room, "BMK-%d: a message of the benchmark, as long as a "
                             "chat line often is." % sent)
        deadline = time.monotonic() + 120 * slow
        while True:
            got = sum(s.counted for s in everyone)
            if got >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.005)
        # the room log writes what it queued one flush interval (100 ms)
        # later: let the last writes into the window, in every mode alike
        await asyncio.sleep(0.25 * slow)
        cpu1, sch1, t1 = cpu_seconds(pid), sched_seconds(pid), time.monotonic()
        busy1, me1 = system_busy(), time.process_time()
        kinstr, kb = await profile_stop(ctl, prof) if profile == "lua" else (None, None)
        ir = ir_core = None
        if cg:
            ir, ir_core = env.dump(os.path.join(RESULTS, "callgrind-%s-D%d.txt" % (mode, D)))
        await asyncio.sleep(0.3)
        got = sum(s.counted for s in everyone)
        rss, hwm = memory(pid)
        # the room log's writes wait for a flush interval: stop the server
        # (it writes what waits) before measuring what it wrote
        env.stop()
        log1 = log_bytes(env, room)
        return {
            "mode": mode, "accounts": A, "sessions": D, "messages": M, "nicks": NICKS,
            "expected": expected, "delivered": got,
            "cpu_s": cpu1 - cpu0,
            "sched_cpu_s": (sch1 - sch0) if sch0 is not None else None,
            "wall_s": t1 - t0,
            # what else kept the machine busy meanwhile (not this server, not
            # these clients): interference makes CPU figures worse, never better
            "other_busy_s": (busy1 - busy0) - (cpu1 - cpu0) - (me1 - me0),
            "cpu_ms_per_1000": (cpu1 - cpu0) / max(got, 1) * 1e6,
            "sched_ms_per_1000": (sch1 - sch0) / max(got, 1) * 1e6 if sch0 is not None else None,
            "rss": rss, "peak_rss": hwm, "lua_heap_before": lua_heap,
            "profiled": profile,
            "lua_kinstr": kinstr,
            "lua_instr_per_delivered": kinstr * 1000 / max(got, 1) if kinstr else None,
            "lua_bytes_per_delivered": kb * 1024 / max(got, 1) if kb else None,
            "ir": ir, "ir_core": ir_core,
            "ir_per_delivered": ir / max(got, 1) if ir else None,
            "log_bytes_per_message": (log1 - log0) / M if log1 is not None else None,
        }
    finally:
        await close_all(groups)
        await sender.close()
        await ctl.close()
        env.cleanup()


async def small_room(mode, A_, D, M_):
    """One run of the small-room scenario: A_ accounts x D sessions in a
    room, M_ messages from one sender, each after the echo of the last and
    SMALL_PACE seconds.  Prosody's CPU from the scheduler (nanoseconds;
    clock ticks are too coarse for a room of two)."""
    env = start_env(mode, A_)
    pid = env.proc.pid
    room = "small@%s" % env.muc_domain
    groups = []
    sender = Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "s")
    try:
        await sender.connect()
        await sender.join(room, "sender")
        groups = account_sessions(env, A_, D)
        await connect_all(groups)
        await bounded([join_account(g, room, "u%d" % i) for i, g in enumerate(groups)])
        # a first message, before the window: what happens once (the SQL
        # store's connection, its tables, the room's first write) is no
        # part of the cost per message
        sender.count(b"warm-up")
        sender.groupchat(room, "warm-up")
        deadline = time.monotonic() + 30
        while sender.counted < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        await settle(pid)
        everyone = [s for g in groups for s in g]
        for s in everyone:
            s.count(MARKER)
        sender.count(MARKER)
        expected = A_ * D * M_
        me0 = time.process_time()
        cpu0, sch0, t0 = cpu_seconds(pid), sched_seconds(pid), time.monotonic()
        busy0 = system_busy()
        for n in range(1, M_ + 1):
            sender.groupchat(room, "BMK-%d: a message of the benchmark, as long as a "
                             "chat line often is." % n)
            deadline = time.monotonic() + 60
            while sender.counted < n and time.monotonic() < deadline:
                sender._changed.clear()
                if sender.counted >= n:
                    break
                try:
                    await asyncio.wait_for(sender._changed.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
            await asyncio.sleep(SMALL_PACE)
        deadline = time.monotonic() + 60
        while sum(s.counted for s in everyone) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        # the last writes of the room log, one flush interval later
        await asyncio.sleep(0.25)
        cpu1, sch1, t1 = cpu_seconds(pid), sched_seconds(pid), time.monotonic()
        busy1, me1 = system_busy(), time.process_time()
        got = sum(s.counted for s in everyone)
        cpu = (sch1 - sch0) if sch0 is not None else (cpu1 - cpu0)
        return {
            "mode": mode, "accounts": A_, "sessions": D, "messages": M_, "pace": SMALL_PACE,
            "expected": expected, "delivered": got,
            "cpu_s": cpu, "tick_cpu_s": cpu1 - cpu0, "wall_s": t1 - t0,
            "other_busy_s": (busy1 - busy0) - (cpu1 - cpu0) - (me1 - me0),
            "cpu_us_per_delivered": cpu / max(got, 1) * 1e6,
        }
    finally:
        await close_all(groups)
        await sender.close()
        env.cleanup()


def small_rooms(results):
    """The small-room scenario: every room size, SMALL_REPEAT rounds of
    every mode, the order rotated each round."""
    global POSTGRES
    modes = ["plain"] + SMALL_MODES
    if "archived" in SMALL_MODES:
        modes.insert(1, "plain_archived")
    if BASELINE:
        modes += ["%s@base" % m for m in SMALL_MODES if m != "plain"]
    if "postgres" in modes:
        # (test/e2e is a package there: storages.py imports relatively)
        sys.path.insert(0, os.path.join(CHECKOUT, "test"))
        from e2e.storages import PostgresServer
        pg = PostgresServer()
        why = pg.unavailable()
        if why:
            print("  (no PostgreSQL: %s)" % why)
            modes = [m for m in modes if not m.startswith("postgres")]
        else:
            POSTGRES = pg.start()
    print()
    print("Small rooms: one sender, %d messages paced (%.0f ms after each echo), "
          "%d interleaved runs" % (SM, SMALL_PACE * 1000, SMALL_REPEAT))
    print("  room     mode             CPU us per delivered, median (runs)   /plain, median (min-max)")
    out = []
    try:
        for A_, D in SMALL:
            runs = {m: [] for m in modes}
            for r in range(SMALL_REPEAT):
                order = modes[r % len(modes):] + modes[:r % len(modes)]
                for mode in order:
                    res = asyncio.run(small_room(mode, A_, D, SM))
                    res["run"] = r
                    runs[mode].append(res)
            row = {"accounts": A_, "sessions": D, "messages": SM, "pace": SMALL_PACE,
                   "repeat": SMALL_REPEAT, "modes": {}}
            for mode in modes:
                rs = runs[mode]
                us = [x["cpu_us_per_delivered"] for x in rs]
                against = "plain_archived" if mode.partition("@")[0] == "archived" else "plain"
                ratios = [x["cpu_us_per_delivered"] / p["cpu_us_per_delivered"]
                          for x, p in zip(rs, runs[against])]
                ok = all(x["delivered"] == x["expected"] for x in rs)
                row["modes"][mode] = {
                    "median_us": statistics.median(us), "runs_us": us,
                    "ratio_median": statistics.median(ratios), "ratios": ratios,
                    "complete": ok,
                    "other_busy_s": [round(x["other_busy_s"], 2) for x in rs]}
                print("  %2dx%d    %-16s %6.1f  (%s)%s   %s" % (
                    A_, D, mode, statistics.median(us), ", ".join("%.1f" % x for x in us),
                    "" if ok else " INCOMPLETE",
                    "" if mode.startswith("plain") else "%.2f (%.2f-%.2f)" % (
                        statistics.median(ratios), min(ratios), max(ratios))))
            out.append(row)
    finally:
        if POSTGRES is not None:
            POSTGRES.stop()
            POSTGRES = None
    results["small"] = out


def log_sessions(env):
    """The sessions of the cases that read the room log: the sender (on
    the plain domain), the account u0's first device, which only counts
    what it gets, and its second one, back later, which is measured."""
    return (Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "s"),
            Session("127.0.0.1", env.port, env.domain, "u0", PASSWORD, "d0"),
            Session("127.0.0.1", env.port, env.domain, "u0", PASSWORD, "d1"))


async def fill_log(sender, device, room):
    """sender and device (of the account u0) connect and join room, then
    sender says CU_LOG messages, paced by what device has received (50
    ahead at most), and the log has its last writes."""
    for s in (sender, device):
        await s.connect()
    await sender.join(room, "sender")
    await device.join(room, "u0")
    device.count(MARKER)
    for n in range(CU_LOG):
        sender.groupchat(room, "BMK-%d: a message of the benchmark, as long as a "
                         "chat line often is." % n)
        if n % 50 == 49:
            deadline = time.monotonic() + 60
            while device.counted < n + 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
    await asyncio.sleep(0.5)  # the log's last writes


async def catchup(mode):
    """Server CPU for a later device's join (self-presence, catch-up,
    subject) asking for maxstanzas in CU_ASK, with CU_LOG messages said
    since the account joined: from the room log (on files, on SQLite) or,
    with the log off, from the in-memory ring (minimix_history_size, 50)."""
    env = start_env(mode, 1)
    pid = env.proc.pid
    room = "catchup@%s" % env.muc_domain
    sender, first, later = log_sessions(env)
    out = {"mode": mode, "log": CU_LOG, "joins": CU_JOINS, "asks": []}
    try:
        await later.connect()
        await fill_log(sender, first, room)
        await settle(pid)
        for ask in CU_ASK:
            served, cpu = 0, 0.0
            for _ in range(CU_JOINS):
                cpu0 = cpu_seconds(pid)
                m0 = later.mark()
                await later.join(room, "u0", maxstanzas=ask, timeout=60)
                cpu += cpu_seconds(pid) - cpu0
                served += sum(1 for e in later.inbox[m0:]
                              if e.tag.endswith("message") and
                              (e.findtext("{jabber:client}body") or "").startswith("BMK-"))
                await later.leave(room, "u0")
            out["asks"].append({"maxstanzas": ask, "cpu_ms_per_join": cpu / CU_JOINS * 1e3,
                                "served_per_join": served / CU_JOINS,
                                "cpu_us_per_served": cpu / max(served, 1) * 1e6})
        return out
    finally:
        await close_all([[sender, first, later]])
        env.cleanup()


async def mam(mode):
    """Server CPU for a MAM query answered from the room log (a room that
    keeps no archive), with CU_LOG messages said since the account joined:
    the first page of 100, the last page of 100 (<before/>), and 20 and
    100 after an id in the middle of the log, CU_JOINS queries each."""
    env = start_env(mode, 1)
    pid = env.proc.pid
    room = "mam@%s" % env.muc_domain
    sender, device, later = log_sessions(env)
    out = {"mode": mode, "log": CU_LOG, "queries": CU_JOINS, "pages": []}

    async def query(rsm):
        m = later.mark()
        qid = "mam-%d" % m
        later.send("<iq type='set' id='%s' to='%s'><query xmlns='urn:xmpp:mam:2'>"
                    "<set xmlns='http://jabber.org/protocol/rsm'>%s</set></query></iq>"
                    % (qid, room, rsm))
        fin = await later.wait_for(lambda e: e.tag.endswith("iq") and e.get("id") == qid,
                                   since=m, timeout=60, what="the MAM answer")
        got = sum(1 for e in later.inbox[m:] if e.find("{urn:xmpp:mam:2}result") is not None)
        last = fin.findtext(".//{http://jabber.org/protocol/rsm}last")
        return got, last

    try:
        await fill_log(sender, device, room)
        await later.connect()
        await later.join(room, "u0", maxstanzas=0)
        # the module learns that the room keeps no archive; an id mid-log
        await query("<max>%d</max>" % (CU_LOG // 2))
        _, middle = await query("<max>%d</max>" % (CU_LOG // 2))
        await settle(pid)
        for name, rsm in (("first 100", "<max>100</max>"),
                          ("last 100", "<max>100</max><before/>"),
                          ("20 after an id", "<max>20</max><after>%s</after>" % middle),
                          ("100 after an id", "<max>100</max><after>%s</after>" % middle)):
            cpu0, served = cpu_seconds(pid), 0
            for _ in range(CU_JOINS):
                got, _ = await query(rsm)
                served += got
                # the inbox holds what was parsed: only this query's
                later.inbox.clear()
            cpu = cpu_seconds(pid) - cpu0
            out["pages"].append({"page": name, "cpu_ms_per_query": cpu / CU_JOINS * 1e3,
                                 "served_per_query": served / CU_JOINS})
        return out
    finally:
        await close_all([[sender, device, later]])
        env.cleanup()


async def many_rooms(mode):
    env = start_env(mode, RA)
    pid = env.proc.pid
    groups = []
    sender = Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "s")
    try:
        await sender.connect()
        groups = account_sessions(env, RA, RD)
        await connect_all(groups)
        await settle(pid)
        lua0 = await sender.probe()
        rss0, _ = memory(pid)
        await bounded([join_account(g, "r%d@%s" % (i % RR, env.muc_domain), "u%d" % i)
                       for i, g in enumerate(groups)])
        await settle(pid)
        lua1 = await sender.probe()
        rss1, hwm = memory(pid)
        return {
            "mode": mode, "accounts": RA, "rooms": RR, "sessions": RD,
            "lua_before": lua0, "lua_after": lua1, "rss_before": rss0, "rss_after": rss1,
            "lua_per_membership": (lua1 - lua0) / RA,
            "rss_per_membership": (rss1 - rss0) / RA,
            "peak_rss": hwm,
        }
    finally:
        await close_all(groups)
        await sender.close()
        env.cleanup()


async def cycles(mode, D):
    env = start_env(mode, CA)
    pid = env.proc.pid
    room = "cycle@%s" % env.muc_domain
    groups = []
    sender = Session("127.0.0.1", env.port, env.plain_domain, "sender", PASSWORD, "s")
    try:
        await sender.connect()
        await sender.join(room, "keeper")  # the room outlives the cycles
        groups = account_sessions(env, CA, D)
        await connect_all(groups)
        marks = {}

        async def one_cycle():
            await bounded([join_account(g, room, "u%d" % i) for i, g in enumerate(groups)])
            await bounded([leave_account(g, room, "u%d" % i) for i, g in enumerate(groups)])

        for c in range(1, CYCLES + 1):
            await one_cycle()
            if c in (10, CYCLES // 2, CYCLES) and c not in marks:
                await settle(pid)
                marks[c] = (await sender.probe(), memory(pid)[0])
        first, half = min(marks), CYCLES // 2
        return {
            "mode": mode, "accounts": CA, "sessions": D, "cycles": CYCLES,
            "marks": {str(k): {"lua": v[0], "rss": v[1]} for k, v in sorted(marks.items())},
            "lua_growth": marks[CYCLES][0] - marks[first][0],
            "rss_growth": marks[CYCLES][1] - marks[first][1],
            "from_cycle": first,
            # once bounded caches (the shim's parsed-stanza cache) are full
            "lua_growth_second_half": marks[CYCLES][0] - marks[half][0],
            "rss_growth_second_half": marks[CYCLES][1] - marks[half][1],
            "half_cycle": half,
        }
    finally:
        await close_all(groups)
        await sender.close()
        env.cleanup()


# ---- report ----------------------------------------------------------------------

def log_bytes(env, room):
    """Bytes the room log takes in the storage: the room's file in the file
    store, the whole database file on SQLite; None without a log."""
    if env.storage == "sqlite":
        return os.path.getsize(env.sqlite_path) if os.path.exists(env.sqlite_path) else 0
    if not env.minimix or env.host_options.get("minimix_log") is False:
        return None
    enc = "".join(c if c.isalnum() else "%%%02x" % ord(c) for c in room)
    path = os.path.join(env.data_dir, "localhost", "minimix_log", enc + ".list")
    return os.path.getsize(path) if os.path.exists(path) else 0


def mb(b):
    return "%.1f" % (b / 1048576)


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    t_start = time.monotonic()
    results = {"params": {"accounts": A, "messages": M, "sessions": DS, "repeat": REPEAT,
                          "window": WINDOW, "rooms_accounts": RA, "rooms": RR,
                          "rooms_sessions": RD, "cycle_accounts": CA, "cycles": CYCLES,
                          "nicks": NICKS, "callgrind_messages": CG_M if CALLGRIND else None},
               "fanout": [], "many_rooms": [], "cycles": []}
    print("Server: Prosody %s (%s), %d accounts in one room, %d messages, repeat %d"
          % ("0.12" if PROSODY_VERSION == 12 else PROSODY_VERSION, platform.node(), A, M, REPEAT))
    print()
    print("  D  mode     delivered   CPU ms per 1000 delivered:      peak RSS MB")
    print("                            best median (each run)")
    summary = []
    modes = ["plain", "module"] + LOG_MODES
    for D in (DS if "fanout" in SCENARIOS else []):
        runs = {m: [] for m in modes}
        for r in range(REPEAT):
            # rotate the order, so that no mode always runs first
            order = modes[r % len(modes):] + modes[:r % len(modes)]
            for mode in order:
                res = asyncio.run(fanout(mode, D))
                res["run"] = r
                runs[mode].append(res)
                results["fanout"].append(res)
        best, med = {}, {}
        for mode in modes:
            rs = runs[mode]
            best[mode] = min(x["cpu_ms_per_1000"] for x in rs)
            med[mode] = statistics.median(x["cpu_ms_per_1000"] for x in rs)
            ok = all(x["delivered"] == x["expected"] for x in rs)
            written = [x["log_bytes_per_message"] for x in rs if x.get("log_bytes_per_message")]
            print("  %d  %-12s %10s   %6.1f %6.1f  (%s)   %s%s" % (
                D, mode, "%d%s" % (rs[0]["delivered"], "" if ok else " INCOMPLETE"),
                best[mode], med[mode], ", ".join("%.1f" % x["cpu_ms_per_1000"] for x in rs),
                "/".join(mb(x["peak_rss"]) for x in rs),
                "   log: %.0f B per message" % statistics.median(written) if written else ""))
        summary.append({"sessions": D,
                        "plain_ms_per_1000": best["plain"], "module_ms_per_1000": best["module"],
                        "ratio": best["module"] / best["plain"],
                        "plain_median": med["plain"], "module_median": med["module"],
                        "ratio_median": med["module"] / med["plain"],
                        "plain_peak_rss": max(x["peak_rss"] for x in runs["plain"]),
                        "module_peak_rss": max(x["peak_rss"] for x in runs["module"]),
                        "other_busy_s": [round(x["other_busy_s"], 2)
                                         for m in modes for x in runs[m]]})
        for mode in modes:
            written = [x["log_bytes_per_message"] for x in runs[mode]
                       if x.get("log_bytes_per_message")]
            summary[-1]["modes"] = summary[-1].get("modes", {})
            summary[-1]["modes"][mode] = {
                "best": best[mode], "median": med[mode],
                "log_bytes_per_message": statistics.median(written) if written else None}
        print("     module/plain: %.2f (best runs), %.2f (medians)"
              % (best["module"] / best["plain"], med["module"] / med["plain"]))
        if CALLGRIND:
            ir = {}
            # push's cost is small beside the noise of CPU time: counted too
            extra = ([m for m in CG_MODES.split(",") if m in MODES and m not in ("plain", "module")]
                     if CG_MODES is not None else [m for m in LOG_MODES if m.startswith("push")])
            for mode in ["plain", "module"] + extra:
                res = asyncio.run(fanout(mode, D, profile="callgrind"))
                res["run"] = "callgrind"
                results["fanout"].append(res)
                ir[mode] = res["ir_per_delivered"]
                if res["delivered"] != res["expected"]:
                    print("     callgrind run of %s INCOMPLETE: %d of %d"
                          % (mode, res["delivered"], res["expected"]))
                if mode == "module":
                    core_share = res["ir_core"] / res["ir"]
            summary[-1].update({"plain_ir": ir["plain"], "module_ir": ir["module"],
                                "ir_ratio": ir["module"] / ir["plain"],
                                "module_ir_core_share": core_share})
            for mode in ir:
                if mode in summary[-1].get("modes", {}):
                    summary[-1]["modes"][mode]["ir"] = ir[mode]
            print("     instructions per delivered message (callgrind, %d messages): "
                  "plain %.0f, module %.0f (%.2f); minimix.so: %.1f %% of the module's"
                  % (CG_M, ir["plain"], ir["module"], ir["module"] / ir["plain"],
                     100.0 * core_share))
            for mode in extra:
                print("     %s: %.0f instructions per delivered message (%.2f of plain MUC's, "
                      "%.3f of the module's)" % (mode, ir[mode], ir[mode] / ir["plain"],
                                                 ir[mode] / ir["module"]))
        if LUACOUNT:
            instr, alloc = {}, {}
            for mode in ["plain", "module"] + LOG_MODES:
                res = asyncio.run(fanout(mode, D, profile="lua"))
                res["run"] = "profiled"
                results["fanout"].append(res)
                instr[mode] = res["lua_instr_per_delivered"]
                alloc[mode] = res["lua_bytes_per_delivered"]
            summary[-1].update({"plain_lua_instr": instr["plain"],
                                "module_lua_instr": instr["module"],
                                "lua_instr_ratio": instr["module"] / instr["plain"]})
            print("     Lua VM instructions per delivered message: plain %.0f, module %.0f"
                  " (%.2f)" % (instr["plain"], instr["module"], instr["module"] / instr["plain"]))
            print("     Lua heap allocated per delivered message: %s" % ", ".join(
                "%s %.0f B" % (m, alloc[m]) for m in alloc if alloc[m] is not None))
    results["fanout_summary"] = summary

    if "rooms" in SCENARIOS:
        print()
        print("Many rooms: %d accounts x %d sessions over %d rooms" % (RA, RD, RR))
        print("  mode     Lua heap/membership   RSS/membership   peak RSS MB")
    for mode in (("plain", "module") if "rooms" in SCENARIOS else ()):
        res = asyncio.run(many_rooms(mode))
        results["many_rooms"].append(res)
        print("  %-7s %14.0f B %15.0f B   %s" % (mode, res["lua_per_membership"],
                                                 res["rss_per_membership"], mb(res["peak_rss"])))

    D = max(DS)
    if "cycles" in SCENARIOS:
        print()
        print("Join/leave cycles: %d accounts x %d sessions, %d cycles" % (CA, D, CYCLES))
        print("  mode     Lua heap growth   RSS growth   (from cycle 10 to %d; from %d to %d)" % (
            CYCLES, CYCLES // 2, CYCLES))
    for mode in (("plain", "module") if "cycles" in SCENARIOS else ()):
        res = asyncio.run(cycles(mode, D))
        results["cycles"].append(res)
        print("  %-7s %13d B %10d B   %13d B %10d B" % (
            mode, res["lua_growth"], res["rss_growth"],
            res["lua_growth_second_half"], res["rss_growth_second_half"]))

    if "catchup" in SCENARIOS:
        print()
        print("Catch-up: a later device's join, %d messages said since the account joined,"
              " %d joins each" % (CU_LOG, CU_JOINS))
        print("  mode     maxstanzas  served  CPU ms per join  CPU us per message served")
        results["catchup"] = []
        for mode in ("module", "sqlite", "nolog"):
            res = asyncio.run(catchup(mode))
            results["catchup"].append(res)
            for a in res["asks"]:
                print("  %-7s %10d %7.0f %16.2f %26.1f" % (
                    mode, a["maxstanzas"], a["served_per_join"], a["cpu_ms_per_join"],
                    a["cpu_us_per_served"]))

    if "mam" in SCENARIOS:
        print()
        print("MAM from the room log: a room without an archive, %d messages said since"
              " the account joined, %d queries each" % (CU_LOG, CU_JOINS))
        print("  mode     page             served  CPU ms per query")
        results["mam"] = []
        for mode in ("module", "sqlite"):
            res = asyncio.run(mam(mode))
            results["mam"].append(res)
            for p in res["pages"]:
                print("  %-7s %-16s %6.0f %17.2f" % (mode, p["page"], p["served_per_query"],
                                                     p["cpu_ms_per_query"]))

    if "small" in SCENARIOS:
        small_rooms(results)

    finish(results, t_start, out_path)


def finish(results, t_start, out_path):
    """A benchmark's last words: how long it took, and its JSON file."""
    results["seconds"] = time.monotonic() - t_start
    print("\n(%.0f s)" % results["seconds"])
    if out_path:
        with open(out_path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
