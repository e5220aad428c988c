"""Federation benchmark: a room on one Prosody, its accounts on another.

Run by `make bench`; alone:

    make && /usr/bin/python3 bench/bench_federation.py [results.json]

Two servers from test/e2e/federation_env.py (server-to-server on loopback
addresses of this process's own, dialback, no TLS): the room
bench@conference.b.test and its sender on b.test, FA accounts with D
sessions each on a.test.  "module" loads mod_minimix on a.test (as
configured by default: the room log on the file store), "plain" does not:
each session joins the remote room as its own occupant session (same nick).
The sender posts FM messages, paced as in bench_server.py; every session
counts the copies it gets.  Measured from just before the first message to
the last copy:

- bytes over the link: the bytes sent and received on the TCP connections
  between the two servers' s2s ports (`ss -ti`, counted on the connecting
  side of each connection, so once), both directions;
- CPU of each server (/proc/<pid>/schedstat, else utime+stime).

Per room message, median of FREPEAT runs per mode (the order of the modes
rotates); module against plain MUC in the same run.  The s2s spies of the
end-to-end tests are off.  Nothing is asserted.

Sizes: MINIMIX_BENCH_FED_ACCOUNTS (FA, 20), MINIMIX_BENCH_FED_SESSIONS
(1,3), MINIMIX_BENCH_FED_MESSAGES (FM, 200), MINIMIX_BENCH_FED_REPEAT (3).
"""

import asyncio
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(CHECKOUT, "test"))
sys.path.insert(0, HERE)

from e2e.federation_env import (Federation, ACCOUNT_ADDRESS, ROOM_ADDRESS,  # noqa: E402
                                ACCOUNT_DOMAIN, ROOM_DOMAIN, MUC_DOMAIN, S2S_PORT)
from e2e.prosody_env import PROSODY_VERSION  # noqa: E402
from bench_server import (env_int, cpu_seconds, sched_seconds, settle, bounded, close_all,  # noqa: E402
                          finish, PASSWORD, MARKER, WINDOW)
from rawxmpp import Session  # noqa: E402

FA = env_int("MINIMIX_BENCH_FED_ACCOUNTS", 20)
FM = env_int("MINIMIX_BENCH_FED_MESSAGES", 200)
FDS = [int(x) for x in os.environ.get("MINIMIX_BENCH_FED_SESSIONS", "1,3").split(",")]
FREPEAT = env_int("MINIMIX_BENCH_FED_REPEAT", 3)


def link_bytes():
    """Bytes sent plus received on every established TCP connection to
    either server's s2s port, counted on the side that connected (the one
    whose peer is the port), so each connection once."""
    total = 0
    for address in (ACCOUNT_ADDRESS, ROOM_ADDRESS):
        out = subprocess.run(["ss", "-tinH", "state", "established",
                              "dst", "%s:%d" % (address, S2S_PORT)],
                             capture_output=True, text=True, check=True).stdout
        for word in out.split():
            for key in ("bytes_sent:", "bytes_received:"):
                if word.startswith(key):
                    total += int(word[len(key):])
    return total


def cpu(pid):
    """CPU seconds of a server: the scheduler's nanoseconds where the
    kernel gives them, else utime+stime in clock ticks."""
    s = sched_seconds(pid)
    return s if s is not None else cpu_seconds(pid)


async def run_once(mode, D):
    fed = Federation(minimix=(mode == "module"), plugin_paths=[CHECKOUT],
                     account_options={"s2s_spy": False},
                     room_options={"s2s_spy": False,
                                   "muc_options": {"muc_room_locking": False}})
    for i in range(FA):
        fed.account.add_user("u%d" % i, PASSWORD, ACCOUNT_DOMAIN)
    fed.room.add_user("sender", PASSWORD, ROOM_DOMAIN)
    fed.start()
    room = "bench@%s" % MUC_DOMAIN
    sender = Session("127.0.0.1", fed.room.port, ROOM_DOMAIN, "sender", PASSWORD, "s")
    groups = [[Session("127.0.0.1", fed.account.port, ACCOUNT_DOMAIN, "u%d" % i, PASSWORD,
                       "d%d" % k) for k in range(D)] for i in range(FA)]
    try:
        await sender.connect(timeout=30)
        await sender.join(room, "sender", timeout=30)
        await bounded([s.connect(timeout=30) for g in groups for s in g])

        async def join(i, g):
            for s in g:
                await s.join(room, "u%d" % i, timeout=60)
        await bounded([join(i, g) for i, g in enumerate(groups)])
        pids = {"account": fed.account.proc.pid, "room": fed.room.proc.pid}
        for pid in pids.values():
            await settle(pid)
        everyone = [s for g in groups for s in g]
        for s in everyone:
            s.count(MARKER)
        sender.count(MARKER)
        expected = FA * D * FM
        bytes0 = link_bytes()
        cpu0 = {k: cpu(p) for k, p in pids.items()}
        t0 = time.monotonic()
        sent = 0
        while sent < FM:
            while sent - sender.counted >= WINDOW:
                sender._changed.clear()
                if sent - sender.counted < WINDOW:
                    break
                await asyncio.wait_for(sender._changed.wait(), 60)
            sent += 1
            sender.groupchat(room, "BMK-%d: a message of the benchmark, as long as a "
                             "chat line often is." % sent)
        deadline = time.monotonic() + 120
        while sum(s.counted for s in everyone) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        # the room log writes one flush interval later, in every mode alike
        await asyncio.sleep(0.25)
        cpu1 = {k: cpu(p) for k, p in pids.items()}
        bytes1 = link_bytes()
        got = sum(s.counted for s in everyone)
        return {"mode": mode, "accounts": FA, "sessions": D, "messages": FM,
                "expected": expected, "delivered": got, "wall_s": time.monotonic() - t0,
                "link_bytes_per_message": (bytes1 - bytes0) / FM,
                "account_cpu_ms_per_message": (cpu1["account"] - cpu0["account"]) / FM * 1e3,
                "room_cpu_ms_per_message": (cpu1["room"] - cpu0["room"]) / FM * 1e3}
    finally:
        await close_all(groups)
        await sender.close()
        fed.cleanup()


KEYS = (("link_bytes_per_message", "link bytes", "%8.0f"),
        ("account_cpu_ms_per_message", "a.test CPU ms", "%8.3f"),
        ("room_cpu_ms_per_message", "b.test CPU ms", "%8.3f"))


def main():
    out_path = sys.argv[1] if len(sys.argv) > 1 else None
    t_start = time.monotonic()
    print("Federation: Prosody %s, room on b.test, %d accounts on a.test, %d messages, "
          "repeat %d" % ("0.12" if PROSODY_VERSION == 12 else PROSODY_VERSION, FA, FM, FREPEAT))
    print("Per room message (medians):")
    print("  D  mode      delivered   link bytes  a.test CPU ms  b.test CPU ms")
    results = {"params": {"accounts": FA, "messages": FM, "sessions": FDS,
                          "repeat": FREPEAT}, "runs": [], "summary": []}
    modes = ["plain", "module"]
    for D in FDS:
        runs = {m: [] for m in modes}
        for r in range(FREPEAT):
            order = modes[r % 2:] + modes[:r % 2]
            for mode in order:
                res = asyncio.run(run_once(mode, D))
                res["run"] = r
                runs[mode].append(res)
                results["runs"].append(res)
        med = {m: {k: statistics.median(x[k] for x in runs[m]) for k, _, _ in KEYS}
               for m in modes}
        for mode in modes:
            rs = runs[mode]
            ok = all(x["delivered"] == x["expected"] for x in rs)
            print("  %d  %-7s %11s   %10.0f  %13.3f  %13.3f" % (
                D, mode, "%d%s" % (rs[0]["delivered"], "" if ok else " INCOMPLETE"),
                med[mode]["link_bytes_per_message"], med[mode]["account_cpu_ms_per_message"],
                med[mode]["room_cpu_ms_per_message"]))
        ratios = {k: med["module"][k] / med["plain"][k] if med["plain"][k] else None
                  for k, _, _ in KEYS}
        print("     module/plain: link bytes %s, a.test CPU %s, b.test CPU %s" % tuple(
            "%.2f" % ratios[k] if ratios[k] is not None else "-" for k, _, _ in KEYS))
        results["summary"].append({"sessions": D, "plain": med["plain"],
                                   "module": med["module"], "ratio": ratios})
    finish(results, t_start, out_path)


if __name__ == "__main__":
    main()
