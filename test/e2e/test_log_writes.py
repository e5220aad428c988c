"""End-to-end tests of the room log's write path (minimix_log.lib.lua's
writers): what a refusal, an outage and a reload cost.

alice (phone and laptop) is on localhost, the host with the module; bob
and carol speak from plain.localhost.  The rooms keep no history of their
own (muc#roomconfig_historylength 0), so a catch-up can only come from the
room log.

What is proven:

1. A refusal is not an outage: a room whose name the file store cannot
   make a file name of (240 letters) does not stop the log of another,
   ordinary room; its messages are logged under a digest of its JID.  A
   device away from the ordinary room while messages are said in both gets
   everything said there after a clean restart.
2. During a long PostgreSQL outage the log's write queue, bounded in bytes
   (minimix_log_queue_bytes), gives up the oldest messages first and says
   so once; after the server is back the newest are in the log.
3. A reload (module:reload in the admin shell) during an outage keeps what
   waits: it is written once the server is back.
4. On PostgreSQL, a message carrying a 4 KiB <stanza-id/> 'by' the room
   (more than the store's index takes as a key) is logged without that key,
   and the log goes on.
5. The copies into the accounts' own archives (minimix_archive_in_mam)
   honour the store's quota as mod_mam does: the oldest entries go, with
   one warning per account and no line per message.
"""

import asyncio
import hashlib
import os
import time

from .clients import NS_SID, P, join_room, create_room
from .storages import archive_entries
from .test_catchup import NO_HISTORY, make_env, setup_room, say, logged, catch_up, restart
from .test_log import minimix_lines
from .world import run

# a room JID's local part the file store cannot name (with "%40" and the
# MUC domain, over 255 bytes)
LONG_NAME = "a" * 240


def digest_user(room):
    return "minimix-" + hashlib.sha256(room.encode()).hexdigest()


async def wait_for_line(env, level, pattern, timeout=30):
    deadline = time.monotonic() + timeout
    while not minimix_lines(env, level, pattern):
        assert time.monotonic() < deadline, "no %s line /%s/:\n%s" % (level, pattern, env.tail(30))
        await asyncio.sleep(0.2)


def pg_storage(postgres_server):
    pg = postgres_server
    return {"storage": "postgres", "sql": pg.sql_settings(pg.create_database()), "_pg": pg}


# the log on PostgreSQL, every other store on files
PG_LOG_ONLY = {"storage": {"accounts": "internal", "minimix_log": "sql"},
               "default_storage": "internal"}
PG_ERRORS = [r" localhost:minimix\terror\tCannot write to the room log",
             r" sql\terror\t", r"storage_sql\terror\t"]


# ---- 1. a refusal is not an outage ------------------------------------------------

def test_a_room_the_file_store_cannot_name_does_not_stop_the_log_of_another(prosody_factory):
    """bob creates a room with a 240-letter name, carol an ordinary one;
    alice's phone and laptop are in both.  The phone goes away; bob and
    carol speak in turn in both rooms.  Both logs get every message, the
    long-named room's under the digest of its JID; no message is given up.
    After a clean restart the account is back in both rooms by itself and
    the phone joining the ordinary room with maxstanzas='100' gets all that
    was said there while it was away."""
    env = make_env(prosody_factory, {"storage": "internal"})
    ordinary = ["ordinary %d" % i for i in range(6)]
    longs = ["long %d" % i for i in range(6)]

    async def scenario(w):
        room, carol, phone, laptop, _ = await setup_room(w, "ordinary")
        long_room = w.room(LONG_NAME)
        bob = await w.connect("bob", "desk")
        await create_room(bob, long_room, "bob", whois="anyone", config=NO_HISTORY)
        await join_room(phone, long_room, "alice")
        await join_room(laptop, long_room, "alice")
        await phone.disconnect()
        # in turn, each received before the next is said: the long-named
        # room's first message comes first
        for o, l in zip(ordinary, longs):
            for speaker, r, t in ((bob, long_room, l), (carol, room, o)):
                m = laptop.mark()
                speaker.groupchat(r, t)
                await laptop.wait_for(P(name="message", frm_bare=r, body=t), since=m,
                                      what="%r at the laptop" % t)
        await logged(env, room, ordinary)
        deadline = time.monotonic() + 20
        while True:
            got = [e["body"] for e in archive_entries(env, digest_user(long_room), "minimix_log",
                                                      room=long_room)]
            if got == longs:
                break
            assert time.monotonic() < deadline, "the long-named room's log: %s" % got
            await asyncio.sleep(0.2)
        assert not minimix_lines(env, "warn", "Giving up"), minimix_lines(env, "warn", "")

        await restart(w, env, room)
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == ordinary
    run(env, scenario, timeout=120)


# ---- 2. bounded in bytes -----------------------------------------------------------

def test_an_outage_longer_than_the_byte_bound_gives_up_the_oldest_once(prosody_factory,
                                                                       postgres_server):
    """The log on PostgreSQL, minimix_log_queue_bytes at its least (about
    260 KiB).  The server stops; carol says 40 messages of 10 KiB, which
    alice's sessions all get.  One warning says the queue is full; after the
    server is back the log holds the newest messages said during the outage
    and not the oldest, each once, and the one said afterwards."""
    storage = pg_storage(postgres_server)
    env = make_env(prosody_factory, storage, global_options=PG_LOG_ONLY,
                   host_options={"minimix_log_queue_bytes": 1})
    env.pg = postgres_server
    env.allowed_errors = PG_ERRORS
    pad = "x" * 10240
    during = ["down %02d %s" % (i, pad) for i in range(40)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "bytes")
        await say(carol, room, [phone, laptop, bob], ["up"])
        await logged(env, room, ["up"])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, postgres_server.pause)
        try:
            for t in during:
                await say(carol, room, [phone, laptop], [t])
            await wait_for_line(env, "warn", "queue is full")
        finally:
            await loop.run_in_executor(None, postgres_server.resume)
        await say(carol, room, [phone, laptop], ["back"])
        await logged(env, room, ["back"] + during[-10:], timeout=120)
        await w.quiet(1)
        got = [e["body"] for e in archive_entries(env, room, "minimix_log")]
        kept = [t for t in during if t in got]
        assert kept and kept == during[len(during) - len(kept):], \
            "not the newest: %s" % [t[:7] for t in kept]
        assert len(kept) < len(during), "nothing was given up"
        assert len(got) == len(set(got)), "written twice"
        assert len(minimix_lines(env, "warn", "queue is full")) == 1, minimix_lines(env, "warn", "")
    run(env, scenario, timeout=240)


# ---- 3. a reload keeps what waits ----------------------------------------------------

def test_a_reload_during_an_outage_keeps_what_waits(prosody_factory, postgres_server):
    """The log on PostgreSQL; the server stops; carol says 5 messages;
    mod_minimix is reloaded (admin shell); the server comes back: the 5 are
    written, each once, by the reloaded module."""
    storage = pg_storage(postgres_server)
    env = make_env(prosody_factory, storage, global_options=PG_LOG_ONLY, admin_shell=True)
    env.pg = postgres_server
    env.allowed_errors = PG_ERRORS
    during = ["waiting %d" % i for i in range(5)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "reload")
        await say(carol, room, [phone, laptop, bob], ["up"])
        await logged(env, room, ["up"])
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, postgres_server.pause)
        try:
            await say(carol, room, [phone, laptop], during)
            await wait_for_line(env, "error", "Cannot write to the room log")
            out = await loop.run_in_executor(
                None, lambda: env.shell("module:reload('minimix', 'localhost')"))
            assert "reloaded" in out.lower(), "the reload failed:\n" + out
        finally:
            await loop.run_in_executor(None, postgres_server.resume)
        await logged(env, room, during, timeout=120)
        await w.quiet(1)
        got = [e["body"] for e in archive_entries(env, room, "minimix_log")]
        assert got == ["up"] + during, got
    run(env, scenario, timeout=240)


def test_a_4kb_stanza_id_does_not_stop_the_log_on_postgresql(prosody_factory, postgres_server):
    """The log on PostgreSQL; the room (no mod_muc_mam) passes on what its
    occupants send, so carol's message can carry a <stanza-id/> 'by' the
    room of 4 KiB, more than PostgreSQL's index takes as a key (as a
    remote room's own ids can be; minimix_mam is off, or the module would
    put its own id in place of an occupant's).  It is logged (not keyed by
    that id), and the messages after it are logged too, each once;
    nothing is given up and no outage is reported."""
    storage = pg_storage(postgres_server)
    env = make_env(prosody_factory, storage, global_options=PG_LOG_ONLY,
                   host_options={"minimix_mam": False})
    env.pg = postgres_server
    after = ["after %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "longid")
        # random: PostgreSQL compresses a repetitive one into its index
        long_id = os.urandom(2048).hex()
        m = laptop.mark()
        carol.send("<message to='%s' type='groupchat' id='long-sid'><body>long id</body>"
                   "<stanza-id xmlns='%s' by='%s' id='%s'/></message>" % (room, NS_SID, room, long_id))
        await laptop.wait_for(P(name="message", frm_bare=room, body="long id"), since=m)
        await say(carol, room, [phone, laptop], after)
        await logged(env, room, ["long id"] + after)
        await w.quiet(1)
        entries = archive_entries(env, room, "minimix_log")
        assert [e["body"] for e in entries] == ["long id"] + after, entries
        assert entries[0]["sid"] == long_id, "the id is kept in the message"
        assert len(entries[0]["key"]) <= 256, "an over-long id is not the key"
        assert not minimix_lines(env, "error", "Cannot write"), env.tail(30)
        assert not minimix_lines(env, "warn", "Giving up"), env.tail(30)
    run(env, scenario, timeout=120)


# ---- 5. the accounts' archives at their quota --------------------------------------

def test_the_archive_copies_honour_the_accounts_quota(prosody_factory):
    """minimix_archive_in_mam on the file store, whose archives hold 5
    items each (storage_archive_item_limit).  carol says 12 messages in a
    room of alice and bob (both on localhost): each account's archive makes
    room as mod_mam does, its oldest entries going, and holds the newest
    message; one warning per account says its archive is at its quota, and
    no message is reported as given up or failed one by one."""
    env = make_env(prosody_factory, {"storage": "internal"}, extra_modules=["mam"],
                   host_options={"minimix_archive_in_mam": True},
                   global_options={"storage_archive_item_limit": 5})
    texts = ["quota %02d" % i for i in range(12)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "quota")
        await say(carol, room, [phone, laptop, bob], texts)
        await logged(env, room, texts[-3:])
        for user in ("alice", "bob"):
            deadline = time.monotonic() + 20
            while True:
                got = [e["body"] for e in archive_entries(env, user, "archive", room=room)]
                if got and got[-1] == texts[-1]:
                    break
                assert time.monotonic() < deadline, "%s's archive: %s" % (user, got)
                await asyncio.sleep(0.2)
            assert len(got) <= 5, got
            assert got == texts[len(texts) - len(got):], "not the newest: %s" % got
            assert len(minimix_lines(env, "warn", "archive of %s is at its quota" % user)) == 1, \
                minimix_lines(env, "warn", "")
        assert not minimix_lines(env, "warn", "accounts' archives"), minimix_lines(env, "warn", "")
    run(env, scenario, timeout=120)
