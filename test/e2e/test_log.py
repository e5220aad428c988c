"""End-to-end tests of mod_minimix's room log (minimix_log.lib.lua).

Two local accounts, alice and bob on localhost (the host with the module),
are occupants of one room; carol on plain.localhost (no module) speaks.
The MUC component archives its rooms (mod_muc_mam), which adds XEP-0359
stanza-ids and keeps the rooms' history across restarts.

What is proven:

1. Once per room: every groupchat message with a body, and each subject
   change, is in the "minimix_log" archive store once, whatever the number
   of local accounts that received it, with the room's stanza-id (the
   store's key on SQL), the sender's nick as 'with', and the message as
   the room sent it; on the internal store, SQLite and PostgreSQL.
2. No duplicates across a crash: the history the re-joins bring after a
   kill -9 overlaps what was logged, and nothing is written twice.  Writes
   wait for a flush interval, and a clean shutdown writes what waits.
3. Retention: entries older than minimix_log_expires_after are deleted by
   the periodic job; each room keeps its latest minimix_log_max_per_room.
4. Storage faults lose no delivery: with the PostgreSQL server stopped in
   the middle of traffic, alice's sessions get every message, the module
   logs one error line, the log_write_failures counter counts, and after
   the server is back the queued messages are written, once each.
5. minimix_archive_in_mam: each room message is once in each local
   account's own XEP-0313 archive, found by a query filtered 'with' the
   room; off by default.
"""

import asyncio
import re
import time
import xml.etree.ElementTree as ET

import pytest

from .clients import P, join_room, create_room, NS_SID
from .prosody_env import free_port
from .storages import archive_entries
from .test_catchup import restart
from .test_operators import fetch_metrics, openmetrics_options
from .world import run

ALICE = "alice@localhost"
BOB = "bob@localhost"
MUC_MAM = {"modules_enabled": ["e2e_spy", "muc_mam"]}
PERSISTENT = {"muc#roomconfig_persistentroom": True}
NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"


def make_env(prosody_factory, storage, **kw):
    storage = dict(storage)
    pg = storage.pop("_pg", None)
    kw.setdefault("muc_options", dict(MUC_MAM))
    env = prosody_factory(**storage, **kw)
    env.pg = pg
    return env


# ---- reading the log store back -------------------------------------------------

def log_entries(env, room):
    """The room log of room on localhost (storages.archive_entries)."""
    return archive_entries(env, room, "minimix_log")


async def wait_entries(env, room, pred, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        entries = log_entries(env, room)
        if pred(entries):
            return entries
        if time.monotonic() > deadline:
            raise AssertionError("the room log (%s) never showed %s; it holds:\n%s"
                                 % (env.storage, what, "\n".join(map(str, entries))))
        await asyncio.sleep(0.2)


def bodies(entries):
    return [e["body"] for e in entries if e["body"] is not None]


def has_bodies(*wanted):
    return lambda entries: all(b in bodies(entries) for b in wanted)


def minimix_lines(env, level, pattern):
    """Lines logged by localhost:minimix at level matching pattern."""
    out = []
    for line in env.read_log().splitlines():
        parts = line.split("\t")
        if (len(parts) >= 3 and parts[0].endswith(" localhost:minimix") and parts[1] == level
                and re.search(pattern, parts[2])):
            out.append(line)
    return out


# ---- scenario pieces --------------------------------------------------------------

async def two_accounts_in_room(w, name, subject="Logged"):
    """carol creates the room (persistent, with a subject); alice (two
    sessions) and bob, both on localhost, join it.  Returns (room, carol,
    [alice's sessions], bob)."""
    room = w.room(name)
    carol = await w.connect("carol", "desk")
    await create_room(carol, room, "carol", whois="anyone", subject=subject, config=PERSISTENT)
    phone = await w.connect("alice", "phone")
    laptop = await w.connect("alice", "laptop")
    bob = await w.connect("bob", "home", host="localhost")
    for c, nick in ((phone, "alice"), (laptop, "alice"), (bob, "bob")):
        await join_room(c, room, nick)
    return room, carol, [phone, laptop], bob


async def say_and_wait(carol, room, receivers, *texts):
    """carol says texts; every receiver session gets each once."""
    marks = [c.mark() for c in receivers]
    for t in texts:
        carol.groupchat(room, t)
    for c, m in zip(receivers, marks):
        for t in texts:
            await c.wait_for(P(name="message", frm_bare=room, body=t), since=m,
                             what="%r at %s" % (t, c.name))
    return marks


def check_once(entries, room, texts, subject=None):
    """Each text (and the subject) is in the log exactly once, with its
    stanza-id, 'with' the sender's nick, no 'to'."""
    got = bodies(entries)
    for t in texts:
        assert got.count(t) == 1, "%r logged %d times:\n%s" % (t, got.count(t),
                                                                "\n".join(map(str, entries)))
    for e in entries:
        assert e["to"] is None, "stored with a 'to': %s" % e
        if e["body"] is not None:
            assert e["sid"], "logged without the room's stanza-id: %s" % e
            assert e["with"] == "carol", e
    sids = [e["sid"] for e in entries if e["sid"]]
    assert len(sids) == len(set(sids)), "a stanza-id twice:\n%s" % "\n".join(map(str, entries))
    if subject is not None:
        subjects = [e for e in entries if e["subject"] is not None]
        assert [e["subject"] for e in subjects] == [subject], subjects


# ---- 1. once per room --------------------------------------------------------------

def test_each_room_message_is_logged_once_per_room(prosody_factory, storage):
    """Two local accounts (alice with two sessions, bob) in one room get N
    messages: the room log holds each once, with the room's XEP-0359
    stanza-id (the store's key on SQL drivers), 'with' the sender's nick,
    the time, and the stanza as the room sent it without 'to'; the subject
    the room sent on each join is there once."""
    env = make_env(prosody_factory, storage)
    texts = ["logged %d" % i for i in range(5)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "once")
        before = time.time()
        await say_and_wait(carol, room, alice + [bob], *texts)
        entries = await wait_entries(env, room, has_bodies(*texts), "the five messages")
        await w.quiet(1)   # anything written twice would be there by now
        entries = log_entries(env, room)
        check_once(entries, room, texts, subject="Logged")
        assert bodies(entries) == texts, bodies(entries)
        for e in entries:
            if e["body"] is not None:
                assert int(before) - 1 <= e["when"] <= time.time() + 1, e
                if env.storage != "internal":
                    assert e["key"] == e["sid"], "not keyed by the stanza-id: %s" % e
    run(env, scenario)


# ---- 2. restart ----------------------------------------------------------------------

def test_crash_and_rejoin_history_write_nothing_twice(prosody_factory, storage):
    """After a kill -9 the accounts join again and the room sends its history
    (XEP-0045 7.2.15), which overlaps what was logged (the last message seen
    was never written: minimix_seen_interval is an hour): nothing is logged
    twice, and what is said afterwards is logged."""
    env = make_env(prosody_factory, storage, host_options={"minimix_seen_interval": 3600})
    texts = ["before crash %d" % i for i in range(4)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "crash")
        await say_and_wait(carol, room, alice + [bob], *texts)
        await wait_entries(env, room, has_bodies(*texts), "the messages before the crash")
        # both accounts are back (each got the room's history on its join)
        carol = await restart(w, env, room, kill=True, accounts=(ALICE, BOB))
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice")
        await say_and_wait(carol, room, [phone], "after crash")
        await wait_entries(env, room, has_bodies("after crash"), "the new message")
        await w.quiet(1)
        check_once(log_entries(env, room), room, texts + ["after crash"], subject="Logged")
    run(env, scenario)


def test_what_waits_is_written_at_shutdown(prosody_factory, storage):
    """Writes wait for minimix_log_flush_interval (here a minute, so that
    none is due): a clean shutdown writes what waits, in order."""
    env = make_env(prosody_factory, storage, host_options={"minimix_log_flush_interval": 60000})
    texts = ["waiting %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "waiting")
        await say_and_wait(carol, room, alice + [bob], *texts)
        await w.quiet(1)
        assert bodies(log_entries(env, room)) == [], "written before the flush interval"
        await w.close()
        w.clients.clear()
        env.stop()
        assert bodies(log_entries(env, room)) == texts
        check_once(log_entries(env, room), room, texts, subject="Logged")
    run(env, scenario)


# ---- 3. retention -----------------------------------------------------------------------

def test_expired_entries_are_deleted_by_the_periodic_job(prosody_factory):
    """minimix_log_expires_after (here 3 seconds) with the job every second:
    a logged message is deleted once it is older than that."""
    env = make_env(prosody_factory, {"storage": "internal"}, host_options={
        "minimix_log_expires_after": "3", "minimix_log_cleanup_interval": 1})

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "expiring")
        await say_and_wait(carol, room, alice, "short-lived")
        await wait_entries(env, room, has_bodies("short-lived"), "the message")
        await wait_entries(env, room, lambda es: "short-lived" not in bodies(es),
                           "the message expired", timeout=30)
    run(env, scenario)


def test_each_room_keeps_its_latest_entries(prosody_factory, storage):
    """minimix_log_max_per_room = 3 (no expiry): after six messages the job
    leaves each room its three latest entries."""
    env = make_env(prosody_factory, storage, host_options={
        "minimix_log_expires_after": "never", "minimix_log_max_per_room": 3,
        "minimix_log_cleanup_interval": 1})
    texts = ["capped %d" % i for i in range(6)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "capped")
        await say_and_wait(carol, room, alice, *texts)
        await wait_entries(env, room, lambda es: bodies(es) == texts[-3:] and len(es) == 3,
                           "the latest three messages only", timeout=30)
    run(env, scenario)


# ---- 4. storage faults ---------------------------------------------------------------------

def test_postgresql_outage_loses_no_delivery_and_the_log_resumes(prosody_factory,
                                                                 postgres_server):
    """The room log on PostgreSQL (every other store on files): the server
    stops in the middle of traffic.  alice's two sessions get every
    message; the module logs one error line for the outage; the
    log_write_failures counter counts; after the server is back the
    messages said meanwhile are written, each once, and one line says so."""
    pg = postgres_server
    storage = {"storage": "postgres", "sql": pg.sql_settings(pg.create_database()), "_pg": pg}
    http_port = free_port()
    env = make_env(prosody_factory, storage, global_options={
        "storage": {"accounts": "internal", "minimix_log": "sql"},
        "default_storage": "internal",
        **openmetrics_options(http_port),
    })
    env.allowed_errors = [r" localhost:minimix\terror\tCannot write to the room log",
                          r" sql\terror\t", r"storage_sql\terror\t"]
    before, during, after = ["up %d" % i for i in range(3)], ["down %d" % i for i in range(5)], ["back"]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "outage")
        await say_and_wait(carol, room, alice + [bob], *before)
        await wait_entries(env, room, has_bodies(*before), "the messages before the outage")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pg.pause)
        try:
            for t in during:
                await say_and_wait(carol, room, alice + [bob], t)
            deadline = time.monotonic() + 20
            while not minimix_lines(env, "error", "Cannot write to the room log"):
                assert time.monotonic() < deadline, env.tail(30)
                await asyncio.sleep(0.2)
            # a second failed attempt (the retry): still one error line
            deadline = time.monotonic() + 20
            while (await fetch_metrics(http_port)).get(
                    "log_write_failures_total", 0.0, store="log") < 2:
                assert time.monotonic() < deadline, env.tail(30)
                await asyncio.sleep(0.2)
        finally:
            await loop.run_in_executor(None, pg.resume)
        await say_and_wait(carol, room, alice + [bob], *after)
        # the writes are retried with backoff (at most 16 s apart): under
        # load the server's restart and the next retry can take a while
        await wait_entries(env, room, has_bodies(*(before + during + after)),
                           "every message, after the outage", timeout=120)
        deadline = time.monotonic() + 20
        while not minimix_lines(env, "info", "Writing to the room log again"):
            assert time.monotonic() < deadline, env.tail(30)
            await asyncio.sleep(0.2)
        await w.quiet(1)
        check_once(log_entries(env, room), room, before + during + after)
        assert bodies(log_entries(env, room)) == before + during + after
        assert len(minimix_lines(env, "error", "Cannot write to the room log")) == 1, \
            minimix_lines(env, "error", "")
        # every session got every message once
        for c in alice + [bob]:
            for t in before + during + after:
                assert len(c.matching(P(name="message", body=t))) == 1, c.transcript()
    run(env, scenario, timeout=240)


# ---- 5. the account's own archive ---------------------------------------------------------------

async def mam_query(client, with_):
    """XEP-0313 query to the own bare JID filtered with=with_; returns the
    forwarded messages (ElementTree elements) in order."""
    qid = "q%d" % int(time.time() * 1000)
    m = client.mark()
    form = ("<x xmlns='jabber:x:data' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'><value>%s</value></field>"
            "<field var='with'><value>%s</value></field></x>" % (NS_MAM, with_))
    iq_id = client.iq(client.jid.split("/")[0], "set",
                      "<query xmlns='%s' queryid='%s'>%s</query>" % (NS_MAM, qid, form))
    res = await client.wait_for(P(name="iq", id=iq_id), since=m, what="MAM query result")
    assert res.type == "result", res
    out = []
    for s in client.stanzas[m:]:
        if s.name != "message":
            continue
        r = s.xml.find("{%s}result" % NS_MAM)
        if r is None or r.get("queryid") != qid:
            continue
        fwd = r.find("{%s}forwarded" % NS_FORWARD)
        out.append(fwd.find("{jabber:client}message"))
    return out


@pytest.mark.parametrize("in_mam", [False, True], ids=["default", "archive_in_mam"])
def test_room_messages_in_the_accounts_own_archive(prosody_factory, in_mam):
    """With minimix_archive_in_mam = true, a XEP-0313 query to the own bare
    JID filtered 'with' the room returns each room message once, for each
    local account in the room (alice with two sessions, bob), with the
    room's stanza-id; off (the default), it returns nothing."""
    opts = {"minimix_archive_in_mam": True} if in_mam else {}
    env = make_env(prosody_factory, {"storage": "internal"}, extra_modules=["mam"],
                   host_options=opts)
    texts = ["archived %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "mine")
        await say_and_wait(carol, room, alice + [bob], *texts)
        await wait_entries(env, room, has_bodies(*texts), "the messages in the room log")
        await w.quiet(1)
        for c in (alice[0], bob):
            got = await mam_query(c, room)
            if not in_mam:
                assert got == [], [ET.tostring(x) for x in got]
                continue
            got_bodies = [x.findtext("{jabber:client}body") for x in got]
            assert got_bodies == texts, got_bodies
            for x in got:
                assert x.get("from") == room + "/carol", ET.tostring(x)
                sid = [s for s in x.findall("{%s}stanza-id" % NS_SID) if s.get("by") == room]
                assert sid, ET.tostring(x)
    run(env, scenario)
