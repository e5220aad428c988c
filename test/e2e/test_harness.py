"""Checks of the end-to-end harness itself (plain Prosody, no module)."""

import asyncio

from .clients import P, join_room, create_room
from .prosody_env import ProsodyEnv
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
