"""Checks of the end-to-end harness itself (plain Prosody, no module)."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import types

from .clients import P, join_room, create_room
from .prosody_env import (ProsodyEnv, CHECKOUT, DOMAIN, PLAIN_DOMAIN, MUC_DOMAIN, PROSODY_SOURCE_DIR,
                          free_port)
from .storages import archive_entries
from .world import World, USERS


def test_env_restart_keeps_data_and_port():
    """The harness can stop and restart the same instance: same port, same
    data dir (an account created while it ran still logs in), and a stop is
    a clean SIGTERM shutdown."""
    env = ProsodyEnv(minimix=False)
    try:
        env.add_user("alice", USERS["alice"])
        env.start()
        port = env.port

        async def login():
            w = World(env)
            try:
                c = await w.connect("alice", "check", host=env.domain)
                assert c.connected
                await c.disconnect()
                assert not c.connected
            finally:
                await w.close()

        asyncio.run(login())
        env.restart()
        assert env.port == port and env.running
        asyncio.run(login())
        rc = env.stop()
        assert rc == 0, "prosody exited with %s\n%s" % (rc, env.tail())
        assert "Shutdown complete" in env.read_log()
    finally:
        env.cleanup()


def test_plain_muc_round_trip():
    """Clients connect without TLS, create and configure a room, join it and
    exchange a groupchat message through plain Prosody MUC."""
    env = ProsodyEnv(minimix=False)
    try:
        for u, pw in USERS.items():
            env.add_user(u, pw)
        env.start()

        async def scenario():
            w = World(env)
            try:
                room = w.room("harness")
                bob = await w.connect("bob", "desk", host=env.domain)
                alice = await w.connect("alice", "phone", host=env.domain)
                await create_room(bob, room, "bob", subject="Harness")
                _, seq = await join_room(alice, room, "alice", id="h-join")
                assert seq[-1].subject == "Harness"
                assert [s.id for s in seq if s.is_self_presence] == ["h-join"]
                m = bob.mark()
                alice.groupchat(room, "ping", id="h-1", origin_id="h-o-1")
                got = await bob.wait_for(P(name="message", body="ping"), since=m)
                assert got.frm == room + "/alice" and got.origin_id == "h-o-1"
            finally:
                await w.close()

        asyncio.run(scenario())
    finally:
        env.cleanup()


async def disco_features(client, jid):
    m = client.mark()
    id = client.iq(jid, "get", "<query xmlns='http://jabber.org/protocol/disco#info'/>")
    r = await client.wait_for(P(name="iq", id=id), since=m, what="disco#info of " + jid)
    assert r.type == "result", r
    return [f.get("var") for f in r.xml.iter("{http://jabber.org/protocol/disco#info}feature")]


def test_demo_server_rooms_are_usable_at_once(tmp_path):
    """`make run` (test/e2e/run_server.py): the demo server on a port of its
    own, with the module and the demo accounts.  A room alice@localhost
    makes by joining it, with no configuration form submitted (as a
    first-time user's client does), is open at once: bob@plain.localhost
    joins it right away (a locked room would answer item-not-found,
    XEP-0045 7.2.3 / 10.1.1) and hears what alice says.  The demo runs what
    a real server runs: the account offers XEP-0402 with compat-pep
    (mod_bookmarks) and MAM (mod_mam), the room archives (muc_mam), and
    the module does not warn of a missing mod_bookmarks."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(CHECKOUT, "test", "e2e", "run_server.py"),
         "--port", str(port), "--dir", str(tmp_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the demo server did not listen"
                time.sleep(0.1)
        users = {}
        for u, pw in USERS.items():
            users[(u, DOMAIN)] = users[(u, PLAIN_DOMAIN)] = pw
        demo = types.SimpleNamespace(port=port, users=users, domain=DOMAIN,
                                     muc_domain=MUC_DOMAIN)

        async def scenario():
            w = World(demo)
            try:
                room = w.room("demo-open")
                alice = await w.connect("alice", "phone")
                _, seq = await join_room(alice, room, "alice")
                assert any(201 in s.codes for s in seq if s.is_self_presence), seq
                bob = await w.connect("bob", "desk")
                await join_room(bob, room, "bob")
                m = bob.mark()
                alice.groupchat(room, "open at once")
                await bob.wait_for(P(name="message", body="open at once"), since=m)
                # what a real server runs: bookmarks with compat-pep (Gajim
                # uses XEP-0402 only then), the rooms' archives
                account = await disco_features(alice, "alice@" + DOMAIN)
                assert "urn:xmpp:bookmarks:1#compat-pep" in account, account
                assert "urn:xmpp:mam:2" in account, account
                assert "urn:xmpp:mam:2" in await disco_features(alice, room)
            finally:
                await w.close()

        asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        out = proc.stdout.read().decode(errors="replace")
        proc.stdout.close()
    assert "mod_bookmarks is not loaded" not in out, out


def test_a_missing_mod_bookmarks_is_warned_of_once(prosody_factory):
    """Clients that write XEP-0048 bookmarks, or use XEP-0402 only when
    the server offers compat-pep (Gajim 1.7), reach the module's
    bookmarks-as-membership only through mod_bookmarks: without it the
    module says so once at start-up (for its host only: the host without
    the module says nothing); with it, not at all."""
    env = prosody_factory()
    pattern = "mod_bookmarks is not loaded on localhost"
    deadline = time.monotonic() + 10
    while pattern not in env.read_log():
        assert time.monotonic() < deadline, env.tail(30)
        time.sleep(0.1)
    # a later marker: a client's login, after the start-up timers ran
    asyncio.run(asyncio.wait_for(login_to(env), 30))
    assert env.read_log().count("mod_bookmarks is not loaded") == 1, env.tail(30)

    with_bookmarks = prosody_factory(extra_modules=["pep", "bookmarks"])
    asyncio.run(asyncio.wait_for(login_to(with_bookmarks), 30))
    assert "mod_bookmarks is not loaded" not in with_bookmarks.read_log(), with_bookmarks.tail(30)


async def login_to(env):
    w = World(env)
    try:
        await w.connect("alice", "phone")
    finally:
        await w.close()


_DATAMANAGER_WRITER = r"""
package.path = SRC .. "/?.lua;" .. package.path
package.cpath = SRC .. "/?.so;" .. package.cpath
-- Prosody 13 names its libraries prosody.util.*; its loader maps them
if io.open(SRC .. "/loader.lua") then require "loader" end
local dm = require "util.datamanager"
dm.set_data_path(DATA)
local function item(n)
	return { name = "message", attr = { type = "groupchat" }, { name = "body", attr = {}, "m" .. n },
		key = "k" .. n, when = n, with = "message<groupchat" }
end
io.write("writing\n"); io.flush()
while true do
	local stop = io.open(STOP)
	if stop then stop:close(); break end
	-- as the room log and its retention job do: rewrite, append, empty
	assert(dm.list_store("room", "localhost", "minimix_log", { item(1), item(2), item(3) }))
	assert(dm.list_append("room", "localhost", "minimix_log", item(4)))
	assert(dm.list_store("room", "localhost", "minimix_log", {}))
end
"""


def test_file_store_reads_never_see_a_half_replaced_file(tmp_path):
    """storages.archive_entries() reads a list of Prosody's file store while
    Prosody's own util.datamanager (of the version under test) rewrites
    it, appends to it and removes it, as the room log's retention job
    does: every read gives a version the list had (empty, three items, or
    four), whole; none fails on a file removed or replaced under it."""
    data = tmp_path / "data"
    data.mkdir()
    stop = tmp_path / "stop"
    script = (_DATAMANAGER_WRITER.replace("SRC", repr(PROSODY_SOURCE_DIR))
              .replace("DATA", repr(str(data))).replace("STOP", repr(str(stop))))
    writer = subprocess.Popen(["lua5.4", "-e", script], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    env = types.SimpleNamespace(storage="internal", data_dir=str(data))
    versions = ([], ["m1", "m2", "m3"], ["m1", "m2", "m3", "m4"])
    try:
        assert writer.stdout.readline() == "writing\n", writer.stdout.read()
        for _ in range(300):
            got = [e["body"] for e in archive_entries(env, "room", "minimix_log")]
            assert got in versions
            assert writer.poll() is None, writer.stdout.read()
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0, out


def test_stop_waits_until_the_server_has_handled_a_closed_connection():
    """A client's disconnect the server has not handled yet is seen (its
    socket in CLOSE_WAIT), and the harness's stop waits for it: Prosody
    0.12 runs SIGTERM's handler in the middle of whatever Lua code runs,
    a disconnect's included (prosody_env._wait_disconnects_handled)."""
    env = ProsodyEnv(minimix=False)
    try:
        env.start()
        # (the harness's own probe of the port, closed at once)
        env._wait_disconnects_handled(10)
        assert env._half_closed() == 0
        # a client the server has accepted (a socket of its own)
        accepted = env.read_log().count("Client connected")
        s = socket.create_connection(("127.0.0.1", env.port), timeout=5)
        deadline = time.monotonic() + 10
        while env.read_log().count("Client connected") <= accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(env.proc.pid, signal.SIGSTOP)
        try:
            s.close()
            deadline = time.monotonic() + 5
            while env._half_closed() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert env._half_closed() == 1, "the closed connection is not seen"
        finally:
            os.kill(env.proc.pid, signal.SIGCONT)
        env._wait_disconnects_handled(10)
        assert env._half_closed() == 0
        assert env.stop() == 0
    finally:
        env.cleanup()
