"""pytest fixtures for the end-to-end tests.

Each test gets its own Prosody (fresh temp dir, free port) with the
accounts alice, bob and carol on both VirtualHosts: "localhost" (with
mod_minimix) and "plain.localhost" (without; see world.DEFAULT_HOST).  mod_minimix is loaded from the checkout
unless MINIMIX_E2E_PLAIN=1, which runs the same tests against plain
Prosody MUC (to see which behaviours the module adds: those tests fail).

On failure the tail of the Prosody log is printed; an error-level line in
the log (with its traceback) fails the test at teardown, except during the
final shutdown, where it is only a warning.
"""

import os
import re
import warnings

import pytest

from .prosody_env import ProsodyEnv, CHECKOUT, PROSODY, PROSODY_VERSION
from .storages import STORAGES, PostgresServer, lua_module_missing
from .world import USERS

PLAIN = os.environ.get("MINIMIX_E2E_PLAIN", "") not in ("", "0")
# Load mod_minimix.lua (and the minimix.so beside it) from another directory,
# e.g. a build tree or a mutated copy; default: the checkout.
PLUGIN_DIR = os.environ.get("MINIMIX_E2E_PLUGIN_DIR") or CHECKOUT


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_report_header(config):
    mode = "plain MUC (MINIMIX_E2E_PLAIN)" if PLAIN else "mod_minimix from " + PLUGIN_DIR
    return "minimix e2e: %s; Prosody %s (%s)" % (
        mode, "0.12" if PROSODY_VERSION == 12 else PROSODY_VERSION, PROSODY)


def without_allowed(lines, patterns):
    """Error lines (with their continuation lines) but those matching one
    of patterns: a test that causes errors on purpose (a storage outage)
    lists them in env.allowed_errors and checks them itself."""
    out, skip = [], False
    for line in lines:
        if line[:1] in ("\t", " "):
            if not skip:
                out.append(line)
            continue
        skip = any(re.search(p, line) for p in patterns)
        if not skip:
            out.append(line)
    return out


@pytest.fixture
def prosody_factory(request):
    """make(**ProsodyEnv options) -> a started ProsodyEnv with the users
    (start=False: configured, not started)."""
    envs = []

    def make(start=True, **kw):
        kw.setdefault("minimix", not PLAIN)
        kw.setdefault("plugin_paths", [PLUGIN_DIR])
        kw.setdefault("spy", True)
        env = ProsodyEnv(**kw)
        envs.append(env)
        for user, password in USERS.items():
            env.add_user(user, password, env.domain)
            env.add_user(user, password, env.plain_domain)
        if start:
            env.start()
        return env

    yield make

    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    problems = []
    for env in envs:
        env.stop()
        if failed:
            print(env.tail(80))
        errors = without_allowed(env.log_errors(), getattr(env, "allowed_errors", ()))
        if errors:
            problems.append("%s:\n%s" % (env.log_path, "\n".join(errors[:40])))
        if env.crashes:
            problems.append("%s: Prosody %s" % (env.dir, "; ".join(env.crashes)))
        memcheck = env.valgrind_errors()
        if memcheck:
            problems.append("%s:\n%s" % (env.valgrind_log, "\n==".join(memcheck[:10])))
        if env.stalled:
            warnings.warn("%s: Prosody %s" % (env.dir, "; ".join(env.stalled)))
        late = env.log_errors(during_shutdown=True)
        if late:
            warnings.warn("errors in the Prosody log during shutdown (%s):\n%s"
                          % (env.log_path, "\n".join(late[:20])))
        env.cleanup()
    if problems and not failed:
        pytest.fail("errors in the Prosody log:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def prosody(prosody_factory):
    return prosody_factory()


# ---- storage setups (storages.py) --------------------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    pg = PostgresServer()
    reason = pg.unavailable()
    if reason:
        pytest.skip(reason)
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(params=STORAGES)
def storage(request):
    """ProsodyEnv keywords for one storage setup (and the PostgreSQL server,
    as env.pg, for reading the store back)."""
    name = request.param
    if name == "internal":
        return {"storage": "internal"}
    missing = lua_module_missing("dbd.sqlite3" if name == "sqlite" else "dbd.postgresql")
    if missing:
        pytest.skip("lua-dbi-%s is not installed for Lua 5.4 (%s)"
                    % ("sqlite3" if name == "sqlite" else "postgresql", missing))
    if name == "sqlite":
        return {"storage": "sqlite"}
    pg = request.getfixturevalue("postgres_server")
    db = pg.create_database()
    return {"storage": "postgres", "sql": pg.sql_settings(db), "_pg": pg}
