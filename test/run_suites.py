#!/usr/bin/python3
"""Run every test suite of mod_minimix and sum them up.

Suites: the Check unit tests of the core (plain, under valgrind, and under
ASan+UBSan), a short libFuzzer run of the core, the busted specs (also under
valgrind, in two halves side by side) of the binding and the shim, and the end-to-end tests against a
real Prosody, all of them on Prosody 0.12 (the system's) and on Prosody 13.0
(tools/prosody13.sh), the foundation and semantics ones also with Prosody
0.12 and the module under valgrind.  Arguments pick suites by a part of
their name, e.g. `run_suites.py unit spec` or `run_suites.py "Prosody 13"`.

The suites are independent, so they run side by side (-j, default all of
them at once), and each end-to-end suite spreads its tests over pytest-xdist
workers (-n; each test starts its own Prosody on free ports, and the
federation tests take loopback addresses of their own): most of an
end-to-end test's time is spent waiting for the server, not on a core.
Each suite's output is buffered and printed whole when the suite ends,
followed by its line "<== name: N passed, N failed"; the last line is
"N passed, N failed" over all suites.  Exit status 1 on any failure, and
also when a suite could not run or ran no test.
"""
import argparse
import glob
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "/usr/bin/python3"


def check_counts(out):
    # "100%: Checks: 42, Failures: 0, Errors: 0"
    m = re.search(r"Checks: (\d+), Failures: (\d+), Errors: (\d+)", out)
    if not m:
        return None
    total, failures, errors = map(int, m.groups())
    return total - failures - errors, failures + errors


def busted_counts(out):
    # "12 successes / 0 failures / 0 errors / 0 pending : 0.1 seconds"
    m = re.search(r"(\d+) successes? / (\d+) failures? / (\d+) errors?", out)
    if not m:
        return None
    ok, failures, errors = map(int, m.groups())
    return ok, failures + errors


def pytest_counts(out):
    # "5 passed, 1 failed, 2 errors in 3.2s" (any order, any subset)
    line = None
    for candidate in out.splitlines():
        if re.search(r"\d+ (passed|failed|error)", candidate) and " in " in candidate:
            line = candidate
    if line is None:
        return None
    def count(word):
        m = re.search(r"(\d+) " + word, line)
        return int(m.group(1)) if m else 0
    return count("passed"), count("failed") + count("error")


def fuzz_counts(out):
    # libFuzzer: "Done 978335 runs in 31 second(s)" when nothing broke
    if re.search(r"^Done \d+ runs", out, re.M):
        return 1, 0
    if "ERROR: libFuzzer" in out or "invariant broken" in out or "SUMMARY:" in out:
        return 0, 1
    return None


FUZZ_SECONDS = os.environ.get("MINIMIX_FUZZ_SECONDS", "30")
E2E = [PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE"]
VALGRIND_BUSTED = ["valgrind", "-q", "--keep-debuginfo=yes", "--suppressions=test/valgrind.supp",
                   "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                   "--error-exitcode=99", "lua5.4", "/usr/bin/busted"]
SLOW_SPEC = "spec/shim_hostile_spec.lua"
OTHER_SPECS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "spec", "*_spec.lua"))
                     if os.path.relpath(p, ROOT) != SLOW_SPEC)

# (name, command, environment, parser, xdist).  The longest suites come
# first, so that with fewer slots (-j) than suites they are not left for last.
SUITES = [
    ("end-to-end on Prosody 13.0 (pytest, Debian's backport unpacked by tools/prosody13.sh)",
     E2E + ["test/e2e"], {"MINIMIX_PROSODY": "13"}, pytest_counts, True),
    ("end-to-end on Prosody 0.12 (pytest, the system's Prosody)",
     E2E + ["test/e2e"], {"MINIMIX_PROSODY": "12"}, pytest_counts, True),
    ("end-to-end under valgrind (foundation and semantics, Prosody 0.12 in memcheck)",
     E2E + ["test/e2e/test_foundation.py", "test/e2e/test_semantics.py"],
     {"MINIMIX_E2E_VALGRIND": "1", "MINIMIX_PROSODY": "12"}, pytest_counts, True),
    # busted under valgrind is one process bound by a core; the shim's
    # hostile-input specs take half of its time, so they run beside the rest
    ("spec (busted under valgrind: %s)" % SLOW_SPEC,
     VALGRIND_BUSTED + [SLOW_SPEC], {}, busted_counts, False),
    ("spec (busted under valgrind: the other specs)",
     VALGRIND_BUSTED + OTHER_SPECS, {}, busted_counts, False),
    ("unit (Check under valgrind)",
     ["valgrind", "-q", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
      "--error-exitcode=99", "./test/check_minimix"],
     {"CK_FORK": "no"}, check_counts, False),
    ("fuzz (libFuzzer, %s s)" % FUZZ_SECONDS,
     ["./fuzz/fuzz_core", "-max_total_time=" + FUZZ_SECONDS, "-print_final_stats=0",
      # per run: two runs side by side never share a crash file
      "-artifact_prefix=/tmp/minimix-fuzz-%d-" % os.getpid()], {}, fuzz_counts, False),
    ("unit (Check under ASan+UBSan)", ["./test/check_minimix_asan"], {}, check_counts, False),
    ("unit (Check)", ["./test/check_minimix"], {}, check_counts, False),
    ("spec (busted)", ["lua5.4", "/usr/bin/busted"], {}, busted_counts, False),
]

# pytest-xdist workers per end-to-end suite, and suites at once.  Measured
# on the 2-core machine (test/e2e/README.md): the end-to-end tests mostly
# wait, so more workers than cores pay off.
DEFAULT_WORKERS = 3
WORKERS_MAX = 16


def have_xdist():
    return importlib.util.find_spec("xdist") is not None


def run_suite(suite, workers, lock, results):
    name, cmd, env, parse, xdist = suite
    cmd = list(cmd)
    if xdist and workers > 1:
        cmd[cmd.index("-q") + 1:cmd.index("-q") + 1] = ["-n", str(workers)]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as e:
        proc = subprocess.CompletedProcess(cmd, 127, "cannot run %s: %s\n" % (cmd[0], e))
    took = time.monotonic() - t0
    counts = parse(proc.stdout)
    with lock:
        # one suite's output at a time, whole: suites run side by side
        print(f"==> {name}: {' '.join(cmd)}", flush=True)
        sys.stdout.write(proc.stdout)
        if counts is None or sum(counts) == 0:
            results.append((0, 0, f"{name}: ran no test (exit {proc.returncode})"))
            print(f"<== {name}: ran no test (exit {proc.returncode}, {took:.0f} s)", flush=True)
            return
        ok, bad = counts
        broken = None
        if proc.returncode != 0 and bad == 0:
            broken = f"{name}: exit {proc.returncode} with no failed test"
        results.append((ok, bad, broken))
        print(f"<== {name}: {ok} passed, {bad} failed ({took:.0f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-j", "--jobs", type=int, default=0,
                    help="suites at once (default 0: all the selected ones)")
    ap.add_argument("-n", "--workers", type=int, default=DEFAULT_WORKERS,
                    help="pytest-xdist workers per end-to-end suite (default %d, "
                         "1: none)" % DEFAULT_WORKERS)
    ap.add_argument("only", nargs="*", help="run only the suites whose name contains one of these")
    args = ap.parse_args()
    workers = max(1, min(args.workers, WORKERS_MAX))
    if workers > 1 and not have_xdist():
        print("pytest-xdist is missing (Debian: python3-pytest-xdist, tools/deps.sh): "
              "the end-to-end tests run one at a time", flush=True)
        workers = 1
    chosen = [s for s in SUITES if not args.only or any(o in s[0] for o in args.only)]
    jobs = len(chosen) if args.jobs <= 0 else min(args.jobs, len(chosen))
    lock = threading.Lock()
    results = []
    t0 = time.monotonic()
    if chosen:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for f in [pool.submit(run_suite, s, workers, lock, results) for s in chosen]:
                f.result()
    passed = sum(r[0] for r in results)
    failed = sum(r[1] for r in results)
    broken = [r[2] for r in results if r[2]]
    if not chosen:
        broken.append("no suite matches %s" % " ".join(args.only))
    for b in broken:
        print("SUITE FAILED: " + b)
    print(f"all suites took {time.monotonic() - t0:.0f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
