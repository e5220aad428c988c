#!/usr/bin/python3
"""Run every test suite of mod_minimix and sum them up.

Suites: the Check unit tests of the core (plain, under valgrind, and under
ASan+UBSan), a short libFuzzer run of the core, the busted specs (also under
valgrind) of the binding and the shim, and the end-to-end tests against a
real Prosody, all of them on Prosody 0.12 (the system's) and on Prosody 13.0
(tools/prosody13.sh), the foundation and semantics ones also with Prosody
0.12 and the module under valgrind.  Arguments pick suites by a part of
their name, e.g. `run_suites.py unit spec` or `run_suites.py "Prosody 13"`.  Each suite's own output is shown as it runs; the last line is
"N passed, N failed" over all suites.  Exit status 1 on any failure, and
also when a suite could not run or ran no test.
"""
import os
import re
import subprocess
import sys

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

SUITES = [
    ("unit (Check)", ["./test/check_minimix"], {}, check_counts),
    ("unit (Check under valgrind)",
     ["valgrind", "-q", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
      "--error-exitcode=99", "./test/check_minimix"],
     {"CK_FORK": "no"}, check_counts),
    ("unit (Check under ASan+UBSan)", ["./test/check_minimix_asan"], {}, check_counts),
    ("fuzz (libFuzzer, %s s)" % FUZZ_SECONDS,
     ["./fuzz/fuzz_core", "-max_total_time=" + FUZZ_SECONDS, "-print_final_stats=0",
      "-artifact_prefix=/tmp/minimix-fuzz-"], {}, fuzz_counts),
    ("spec (busted)", ["lua5.4", "/usr/bin/busted"], {}, busted_counts),
    ("spec (busted under valgrind)",
     ["valgrind", "-q", "--keep-debuginfo=yes", "--suppressions=test/valgrind.supp",
      "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
      "--error-exitcode=99", "lua5.4", "/usr/bin/busted"], {}, busted_counts),
    ("end-to-end under valgrind (foundation and semantics, Prosody 0.12 in memcheck)",
     [PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE",
      "test/e2e/test_foundation.py", "test/e2e/test_semantics.py"],
     {"MINIMIX_E2E_VALGRIND": "1", "MINIMIX_PROSODY": "12"}, pytest_counts),
    ("end-to-end on Prosody 0.12 (pytest, the system's Prosody)",
     [PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "test/e2e"],
     {"MINIMIX_PROSODY": "12"}, pytest_counts),
    ("end-to-end on Prosody 13.0 (pytest, Debian's backport unpacked by tools/prosody13.sh)",
     [PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfE", "test/e2e"],
     {"MINIMIX_PROSODY": "13"}, pytest_counts),
]


def main():
    only = sys.argv[1:]
    passed = failed = 0
    broken = []
    for name, cmd, env, parse in SUITES:
        if only and not any(o in name for o in only):
            continue
        print(f"==> {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        sys.stdout.write(proc.stdout)
        counts = parse(proc.stdout)
        if counts is None or sum(counts) == 0:
            broken.append(f"{name}: ran no test (exit {proc.returncode})")
            continue
        ok, bad = counts
        passed += ok
        failed += bad
        if proc.returncode != 0 and bad == 0:
            broken.append(f"{name}: exit {proc.returncode} with no failed test")
        print(f"<== {name}: {ok} passed, {bad} failed", flush=True)
    for b in broken:
        print("SUITE FAILED: " + b)
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and not broken else 1


if __name__ == "__main__":
    sys.exit(main())
