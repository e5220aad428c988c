"""End-to-end tests of what the room log takes for one message: a subject
with a body, a stanza-id by someone else, and stanza-ids of any length.

What is proven:

1. A message with a <subject/> and a <body/> is a message (XEP-0045 8.1),
   not a subject change.  Prosody's MUC (0.12 and 13.0) routes it as an
   ordinary message, whatever the sender's right to change the subject,
   and leaves the room's subject as it was.  A device of alice away while
   bob says three such messages (the same subject on each) gets all three
   on its next join, between its self-presence and the room's subject,
   with and without a clean restart in between, and from the ring in
   memory with the log off; each is logged once, although two local
   accounts received it; on the internal store, SQLite and PostgreSQL.
2. A message carrying a <stanza-id/> that is not by the room, with the id
   of a message the room logged, is logged too and replaces nothing (on
   SQL the room's stanza-id is the entry's key).
3. A 100 KiB stanza-id by the room is logged, but is never the entry's
   key (on PostgreSQL such a key overflows the index row, and the store
   refused the write); the catch-up has the message.
4. Rooms that send 100 KiB stanza-ids (a hostile room service, here an
   external component) grow Prosody's memory by a few MiB only, while no
   device of the account is connected: no id is kept whole, in the log's
   de-duplication memory, a membership's last message seen, or the
   account's record.  A device that joins afterwards gets the catch-up
   and live messages.

Only waiting uses timeouts; no assertion depends on how long anything took.
"""

import asyncio
import random
import string
import time

import pytest

from .clients import P, join_room, NS_SID
from .storages import archive_entries
from .test_catchup import make_env, setup_room, logged, catch_up, restart
from .test_hostile import HostileService, EVIL, EVIL_SECRET, join_by_bookmark, settled, rss_bytes
from .world import run

ALICE = "alice@localhost"
MUC_MAM = {"modules_enabled": ["e2e_spy", "muc_mam"]}


def say_with_subject(sender, room, subject, body, id):
    sender.send("<message to='%s' type='groupchat' id='%s'><subject>%s</subject>"
                "<body>%s</body></message>" % (room, id, subject, body))


@pytest.mark.parametrize("how", ["live", "clean", "ring"])
def test_subject_and_body_messages_are_caught_up(prosody_factory, storage, how):
    """alice's phone goes away (live: the laptop keeps the account in;
    clean: both go, and the server restarts cleanly while the account
    stays a member; ring: as live, with the room log off, so the catch-up
    comes from the ring in memory); bob, a participant who may not change the subject,
    says three messages, each with <subject>Topic</subject> and a body.
    The room delivers them as messages and its subject stays empty.  The
    phone joins with maxstanzas='100' and gets the three, in order, each
    with its <subject/> and a delay from the room, then the room's own
    (empty) subject; the log holds each once."""
    if how == "ring" and storage["storage"] != "internal":
        pytest.skip("the ring is in memory: one store is enough")
    env = make_env(prosody_factory, storage,
                   host_options={"minimix_log": False} if how == "ring" else {})
    texts = ["with a subject %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "subject-body-" + how)
        await phone.disconnect()
        receivers = [laptop, bob, carol]
        if how == "clean":
            await laptop.disconnect()
            receivers = [bob, carol]
        marks = [c.mark() for c in receivers]
        for i, t in enumerate(texts):
            say_with_subject(bob, room, "Topic", t, "sb-%d" % i)
        for c, m in zip(receivers, marks):
            got = await c.wait_for(P(name="message", frm_bare=room, body=texts[-1]), since=m,
                                   what="the last at %s" % c.name)
            assert got.subject == "Topic", got
        # routed as messages: no error to bob, the subject unchanged
        assert not bob.matching(P(name="message", type="error"), since=marks[1]), \
            bob.transcript(marks[1])
        if how != "ring":
            await logged(env, room, texts)
            entries = archive_entries(env, room, "minimix_log")
            assert [e["body"] for e in entries if e["body"] in texts] == texts, entries
        if how == "clean":
            await restart(w, env, room)
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == texts
        caught = [s for s in got if s.name == "message" and s.body in texts]
        assert [s.subject for s in caught] == ["Topic"] * 3, [str(s) for s in caught]
        assert got[-1].subject == "" and got[-1].body is None, got[-1]
        if how != "ring":
            entries = archive_entries(env, room, "minimix_log")
            assert [e["body"] for e in entries if e["body"] in texts] == texts, entries
    run(env, scenario, timeout=120)


def test_a_stanza_id_by_someone_else_is_not_the_rooms(prosody_factory, storage):
    """The room archives (mod_muc_mam), so each message carries the room's
    <stanza-id/>, the log entry's key on SQL.  carol then says a message
    carrying a <stanza-id/> by herself with the id the room gave the first
    one (XEP-0359: only a stanza-id by the room is the room's; the room
    strips only those that claim to be its own).  Both are logged, the
    first under its key still, and a device that was away gets both."""
    env = make_env(prosody_factory, storage, muc_options=dict(MUC_MAM))

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "forged-sid")
        await phone.disconnect()
        m = laptop.mark()
        carol.groupchat(room, "first")
        first = await laptop.wait_for(P(name="message", frm_bare=room, body="first"), since=m)
        sids = [e for e in first.xml.findall("{%s}stanza-id" % NS_SID) if e.get("by") == room]
        assert len(sids) == 1, first
        sid = sids[0].get("id")
        await logged(env, room, ["first"])
        m = laptop.mark()
        carol.send("<message to='%s' type='groupchat' id='forged'><body>forged</body>"
                   "<stanza-id xmlns='%s' by='carol@plain.localhost' id='%s'/></message>"
                   % (room, NS_SID, sid))
        got = await laptop.wait_for(P(name="message", frm_bare=room, body="forged"), since=m)
        assert any(e.get("id") == sid and e.get("by") != room
                   for e in got.xml.findall("{%s}stanza-id" % NS_SID)), got
        await logged(env, room, ["first", "forged"])
        entries = [e for e in archive_entries(env, room, "minimix_log") if e["body"]]
        assert [e["body"] for e in entries] == ["first", "forged"], entries
        assert entries[0]["sid"] == sid, entries
        if env.storage != "internal":
            assert entries[0]["key"] == sid and entries[1]["key"] != sid, entries
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == ["first", "forged"]
    run(env, scenario, timeout=120)


def test_a_huge_stanza_id_is_logged_but_never_a_key(prosody_factory, storage):
    """A room service (an external component the test drives) has alice's
    account in a room through a bookmark and sends three messages whose
    <stanza-id/>s by the room are "s-1", 100 KiB long, and "s-3".  All
    three are logged, in order; on SQL the short ones are their entries'
    keys and the long one is not (a key that long overflows PostgreSQL's
    index row, and the store refused the write).  Its id is random
    letters: a repeated one PostgreSQL would compress.  A device that joins with
    maxstanzas='10' gets the three from the log."""
    env = make_env(prosody_factory, storage, external_components={EVIL: EVIL_SECRET})
    room = "long-id@" + EVIL
    # random letters: PostgreSQL compresses a repeated one to nothing
    long_id = "".join(random.choices(string.ascii_letters, k=100 * 1024))

    async def scenario(w):
        svc = HostileService(env)
        w.clients.append(svc)
        await svc.connect()
        p = await w.connect("alice", "phone")
        await join_by_bookmark(svc, p, room, "Long")
        texts = ["short before", "long", "short after"]
        for sid, text in zip(["s-1", long_id, "s-3"], texts):
            svc.send("<message from='%s/bob' to='%s' type='groupchat' id='%s'><body>%s</body>"
                     "<stanza-id xmlns='%s' by='%s' id='%s'/></message>"
                     % (room, ALICE, sid[:8], text, NS_SID, room, sid))
        await logged(env, room, texts)
        entries = [e for e in archive_entries(env, room, "minimix_log") if e["body"]]
        assert [e["body"] for e in entries] == texts, [e["body"] for e in entries]
        assert [e["sid"] for e in entries] == ["s-1", long_id, "s-3"]
        if env.storage != "internal":
            assert entries[0]["key"] == "s-1" and entries[2]["key"] == "s-3", entries
            assert len(entries[1]["key"]) <= 256, len(entries[1]["key"])
        _, got = await join_room(p, room, "alice", history={"maxstanzas": 10})
        assert [b for b, _ in catch_up(got, room)] == texts
    run(env, scenario, timeout=120)


# What the module may cache for one membership and account here, and what
# the server may grow by while 60 MiB of stanzas pass through it (Lua garbage
# not yet collected, allocator slack): a bound on memory, not a timing.
CACHE_BUDGET = 2 * 1024 * 1024
RSS_BOUND = 16 * 1024 * 1024
ROOMS = 4
MESSAGES = 150


def test_rooms_sending_huge_stanza_ids_do_not_fill_the_memory(prosody_factory):
    """A room service (an external component the test drives) has alice's
    account in 4 rooms through bookmarks; alice's device then disconnects
    and the account stays in.  Each room sends 150 messages, each with a
    <stanza-id/> by the room of 100 KiB (XEP-0359 sets no length).  The
    module keeps no such id whole: Prosody's resident memory grows by less
    than RSS_BOUND (by about 4 MiB, on 0.12 and 13), where it grew by
    about 55 MiB when it kept them.  A
    device that joins afterwards gets its self-presence, the catch-up
    (XEP-0045 7.2.14) and then live messages (7.4).  The memory is read
    once the log has written every message: what waited in its queue, and
    what writing made, count too."""
    env = prosody_factory(host_options={"minimix_max_membership_bytes": CACHE_BUDGET,
                                        "minimix_max_account_bytes": CACHE_BUDGET,
                                        "minimix_max_cache_bytes": CACHE_BUDGET},
                          external_components={EVIL: EVIL_SECRET})
    big = "x" * (100 * 1024)
    rooms = ["huge%d@%s" % (i, EVIL) for i in range(ROOMS)]

    async def scenario(w):
        svc = HostileService(env)
        w.clients.append(svc)
        await svc.connect()
        p = await w.connect("alice", "phone")
        for r in rooms:
            await join_by_bookmark(svc, p, r, "Huge", id="bm-" + r)
        await p.disconnect()

        await settled(svc, rooms[0], "before")
        await w.quiet()
        before = rss_bytes(env.proc.pid)
        for i in range(MESSAGES):
            for r in rooms:
                svc.send("<message from='%s/o%d' to='%s' type='groupchat' id='huge-%d'>"
                         "<body>huge %d</body><stanza-id xmlns='%s' by='%s' id='%s-%d%s'/>"
                         "</message>" % (r, i % 7, ALICE, i, i, NS_SID, r, r, i, big))
        await settled(svc, rooms[0], "after")
        # and the log has written them all: its queue and what writing made
        # are counted too
        deadline = time.monotonic() + 120
        while not all(len([e for e in archive_entries(env, r, "minimix_log") if e["body"]])
                      == MESSAGES for r in rooms):
            assert time.monotonic() < deadline, "the room log never held every message"
            await asyncio.sleep(0.5)
        after = rss_bytes(env.proc.pid)
        grown = after - before
        print("RSS %.1f -> %.1f MiB: grew by %.1f MiB (%d rooms x %d messages with 100 KiB "
              "stanza-ids)" % (before / 2**20, after / 2**20, grown / 2**20, ROOMS, MESSAGES))
        assert grown < RSS_BOUND, "the server grew by %.1f MiB (bound %.1f MiB)" % (
            grown / 2**20, RSS_BOUND / 2**20)

        # the account works on: a device joins, gets the catch-up, then traffic
        p = await w.connect("alice", "laptop")
        mp = p.mark()
        _, seq = await join_room(p, rooms[0], "alice", id="after-flood",
                                 history={"maxstanzas": 3})
        assert [s.id for s in seq if 110 in s.codes] == ["after-flood"], seq
        caught = [s.body for s in seq if s.name == "message" and s.body]
        assert caught == ["huge %d" % i for i in range(MESSAGES - 3, MESSAGES)], caught
        svc.send("<message from='%s/o1' to='%s' type='groupchat' id='after'>"
                 "<body>still here</body></message>" % (rooms[0], ALICE))
        got = await p.wait_for(P(name="message", id="after"), since=mp)
        assert got.body == "still here" and got.to == p.jid, got
    run(env, scenario, timeout=300)
