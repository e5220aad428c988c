"""End-to-end tests of mod_minimix's persistence, catch-up and reload.

The account alice@localhost (sessions phone = P, laptop = L, tablet = T, on
the host with mod_minimix) is the occupant; the observers bob and carol
live on plain.localhost, a host without the module, so that what they see
is what the room sends.  Rooms are persistent (muc#roomconfig_persistentroom)
and the MUC component archives them (mod_muc_mam), so that rooms and their
history survive a restart of the server as they would in production.

What is proven:

1. Persistence: memberships (room, nick, password, last stanza-id and time
   seen) are kept in the "minimix" store; after a restart, or a crash
   (SIGKILL during traffic), the account is back in its rooms with no
   client online, each room joined once; rooms that refuse the account
   (forbidden, registration-required, gone) are dropped with a log line
   and forgotten; unreachable rooms are retried with growing delays and
   kept.
2. Catch-up: a session joining a room the account is in gets the room's
   latest messages as its <history/> asks (XEP-0045 7.2.15), with XEP-0203
   <delay from=room stamp=.../>, after its self-presence and before the
   subject, including what was said while no session was joined.
3. Reload: module:reload (admin shell) makes no leave or join in the room,
   and joined sessions keep receiving and speaking.
4. Storage: the storage-dependent scenarios run on Prosody's internal
   (file) store, on mod_storage_sql with SQLite3 (lua-dbi-sqlite3), and on
   mod_storage_sql with a PostgreSQL server started on loopback for the
   session (storages.py, fixtures `storage` and `postgres_server` in
   conftest.py).

Only waiting uses timeouts; the backoff test checks lower bounds on the
delays between attempts, which the server's timers guarantee.
"""

import asyncio
import datetime
import itertools
import json
import os
import re
import time

import pytest

from .clients import P, join_room, create_room, config_form, NS_DELAY, NS_SID, NS_MUC_OWNER
from .storages import read_store_file, lua_read_store, sqlite_rows
from .world import run, next_second

ALICE = "alice@localhost"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"

PERSISTENT = {"muc#roomconfig_persistentroom": True}
# The spy (errors reaching rooms) and the room archive, which also keeps
# the rooms' history across restarts and adds XEP-0359 stanza-ids.
MUC_MAM = {"modules_enabled": ["e2e_spy", "muc_mam"]}


# ---- storage setups (storages.py, fixtures in conftest.py) ---------------------

def make_env(prosody_factory, storage, **kw):
    """A started server for this storage setup, with the room archive and a
    debug log (join attempts are counted in it)."""
    storage = dict(storage)
    pg = storage.pop("_pg", None)
    kw.setdefault("debug", True)
    kw.setdefault("muc_options", dict(MUC_MAM))
    host = {"minimix_seen_interval": 1}
    host.update(kw.pop("host_options", {}))
    env = prosody_factory(host_options=host, **storage, **kw)
    env.pg = pg
    return env


# ---- reading the store back -----------------------------------------------------

_LUA_DUMP = r"""
local t = assert(load(STORE_TEXT, "=dat", "t", {}))()
for room, rec in pairs(t or {}) do
  for k, v in pairs(rec) do
    io.write(room, "\31", k, "\31", type(v), "\31", tostring(v), "\30")
  end
  io.write(room, "\31", "", "\31", "nil", "\31", "", "\30")
end
"""


def stored_rooms(env, user="alice"):
    """What mod_minimix stored for user@localhost, read from the storage
    itself: {room: {field: value}}."""
    if env.storage == "internal":
        path = os.path.join(env.data_dir, "localhost", "minimix", user + ".dat")
        text = read_store_file(path)
        if text is None:
            return {}
        out = {}
        for row in lua_read_store(_LUA_DUMP, text, path).split("\x1e"):
            if not row:
                continue
            room, key, typ, value = row.split("\x1f")
            rec = out.setdefault(room, {})
            if key:
                rec[key] = float(value) if typ == "number" else value
        return out
    query = ('SELECT "key", "type", "value" FROM "prosody" WHERE "host" = %s AND "user" = %s '
             'AND "store" = %s')
    if env.storage == "sqlite":
        rows = sqlite_rows(env.sqlite_path, query % ("?", "?", "?"), ("localhost", user, "minimix"))
    else:
        rows = env.pg.query(env.sql["database"],
                            query % (":'v1'", ":'v2'", ":'v3'") + ";", "localhost", user, "minimix")
    out = {}
    for key, typ, value in rows:
        assert typ == "json", "membership %s stored as %s: %r" % (key, typ, value)
        out[key] = json.loads(value)
    return out


async def wait_stored(env, pred, what, timeout=15):
    """Poll the store until pred(stored rooms) holds; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        rooms = stored_rooms(env)
        if pred(rooms):
            return rooms
        if time.monotonic() > deadline:
            raise AssertionError("store (%s) never showed %s; it holds:\n%r"
                                 % (env.storage, what, rooms))
        await asyncio.sleep(0.2)


# ---- the log --------------------------------------------------------------------

def current_run(env):
    """The log of the running (or last) server process only."""
    text = env.read_log()
    i = text.rfind("Hello and welcome to Prosody")
    return text[i:] if i >= 0 else text


def join_attempts(env, room):
    """Joins the module sent to room as the account since the server started
    (its debug line "<account> joins <room> as <nick>")."""
    return re.findall(r"\t%s joins %s as " % (re.escape(ALICE), re.escape(room)),
                      current_run(env))


def joins_by_room(env, rooms):
    return {r: len(join_attempts(env, r)) for r in rooms}


async def wait_log(env, pattern, what, timeout=15, count=1):
    """Wait until the current run's log matches pattern count times."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, current_run(env))
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("log never showed %s (%d of %d):\n%s"
                                 % (what, len(found), count, env.tail(40)))
        await asyncio.sleep(0.1)


# ---- stanzas --------------------------------------------------------------------

def stanza_id(s, room):
    for sid in s.xml.findall("{%s}stanza-id" % NS_SID):
        if sid.get("by") == room:
            return sid.get("id")
    return None


def delay_of(s):
    d = s.xml.find("{%s}delay" % NS_DELAY)
    return None if d is None else (d.get("from"), d.get("stamp"))


def parse_stamp(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def join_parts(seq, room, nick, session_jid):
    """Split a join sequence (XEP-0045 7.2.3-7.2.16): occupant presences,
    self-presence (110) last among presences, history, subject last.
    Returns (others {nick: presence}, self-presence, history, subject)."""
    room_seq = [s for s in seq if s.frm_bare == room]
    for s in room_seq:
        assert s.to == session_jid, "room stanza not addressed to %s: %s" % (session_jid, s)
        assert s.type != "error", "error during the join: %s" % s
    pres = [s for s in room_seq if s.name == "presence"]
    msgs = [s for s in room_seq if s.name == "message"]
    assert pres and msgs, "incomplete join sequence:\n%s" % "\n".join(map(str, room_seq))
    assert max(s.index for s in pres) < min(s.index for s in msgs), \
        "a message came before the last presence:\n%s" % "\n".join(map(str, room_seq))
    self_p = pres[-1]
    assert self_p.frm == "%s/%s" % (room, nick) and 110 in self_p.codes, \
        "last presence is not the self-presence: %s" % self_p
    subject = msgs[-1]
    assert subject.subject is not None and subject.body is None, \
        "the subject is not last: %s" % subject
    others = {s.frm_resource: s for s in pres[:-1]}
    return others, self_p, msgs[:-1], subject


def check_history(history, room, bodies, not_before=None, not_after=None):
    """history (stanzas) carries exactly bodies, in order, each a groupchat
    from an occupant with <delay from=room stamp=.../> (XEP-0203), the stamps
    in order and (when given) within [not_before, not_after]."""
    got = [m.body for m in history]
    assert got == list(bodies), "history %r, expected %r:\n%s" % (
        got, list(bodies), "\n".join(map(str, history)))
    last, last_whole = None, False
    for m in history:
        assert m.type == "groupchat" and m.frm_bare == room and m.frm_resource, m
        d = delay_of(m)
        assert d is not None, "history message without <delay/>: %s" % m
        assert d[0] == room, "delay not from the room (%s): %s" % (room, m)
        t = parse_stamp(d[1])
        if last is not None:
            # XEP-0082: a stamp without fractions names its whole second
            # (a room's archive on SQL keeps whole seconds; Prosody 13's
            # live stamps have fractions), so two stamps are ordered only
            # to the coarser one's precision
            coarse = "." not in d[1] or last_whole
            assert (int(t) >= int(last)) if coarse else (t >= last), \
                "delay stamps out of order: %s" % m
        if not_before is not None:
            assert t >= int(not_before) - 1, "stamp before the message was sent: %s" % m
        if not_after is not None:
            assert t <= not_after + 1, "stamp after the join: %s" % m
        last, last_whole = t, "." not in d[1]


async def join_and_collect(client, room, nick, history=None, id=None, password=None):
    """Join, and return everything from the room up to the subject."""
    m = client.mark()
    client.join(room, nick, id=id, history=history, password=password)
    end = P(fn=lambda s: s.frm_bare == room and (
        (s.name == "message" and s.subject is not None and s.body is None)
        or (s.name == "presence" and s.type == "error")))
    seq = await client.collect(end, since=m, what="end of the join to %s" % room)
    if seq[-1].name == "presence":
        raise AssertionError("%s: join to %s failed: %s" % (client.name, room, seq[-1]))
    return seq


async def observe_occupants(w, room, res="desk", nick="bob", password=None):
    """bob (a new session) enters room; returns ({nick: presence}, client)."""
    bob = await w.connect("bob", res)
    _, seq = await join_room(bob, room, nick, password=password)
    others, _, _, _ = join_parts(seq, room, nick, bob.jid)
    return others, bob


def assert_alice_present(others, room, nick="alice"):
    assert nick in others, "alice (%s) is not in %s; occupants: %s" % (
        nick, room, sorted(others))
    p = others[nick]
    assert p.type is None, p
    assert p.item is not None and p.item.get("jid") == ALICE, \
        "the occupant is not the account (bare JID): %s" % p


async def say(client, room, *bodies):
    """client says bodies in room; waits for the room's reflection of each."""
    m = client.mark()
    for b in bodies:
        client.groupchat(room, b)
    for b in bodies:
        await client.wait_for(P(name="message", frm_bare=room, body=b), since=m,
                              what="reflection of %r" % b)


async def configure(owner, room, fields):
    m = owner.mark()
    iq_id = owner.iq(room, "set", "<query xmlns='%s'>%s</query>"
                     % (NS_MUC_OWNER, config_form(fields)))
    res = await owner.wait_for(P(name="iq", id=iq_id), since=m, what="owner form result")
    assert res.type == "result", "configuration of %s failed: %s" % (room, res)


async def close_all(w, timeout=15):
    """Close every client (before a restart or a crash), and wait until the
    server (if it runs) has seen each of them go: what it keeps over the
    restart must not depend on how fast it noticed."""
    await w.close()
    w.clients.clear()
    deadline = time.monotonic() + timeout
    while w.env.running and w.env.open_sessions():
        assert time.monotonic() < deadline, \
            "the server never saw these sessions go: %s" % w.env.open_sessions()
        await asyncio.sleep(0.1)


# ---- 1. restart -----------------------------------------------------------------

def test_restart_rejoins_stored_memberships(prosody_factory, storage):
    """After a restart the account is back in each of its rooms with no
    client online (XEP-0045 7.2: the other occupants see it present, as the
    bare JID in a non-anonymous room), with the stored nick and the stored
    password (7.2.6), each room joined once.  The store holds, per room, the
    nick, the password and the last stanza-id (XEP-0359) and time seen.
    The re-join asks for the history since the last message seen (7.2.15),
    and the span the account was in continues over the restart: a phone
    joining after it gets, as history (XEP-0203 delay), from the room log,
    what was said before the restart and what was said after it while no
    session was joined, each once.
    (Prosody's MUC keeps its occupants over a clean shutdown, so here the
    module's own join shows in its log, one per room, and in the catch-up;
    the crash test below has no such help.)"""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        plain, locked = w.room("kept"), w.room("locked")
        bob = await w.connect("bob", "desk")
        await create_room(bob, plain, "bob", whois="anyone", subject="Kept", config=PERSISTENT)
        await create_room(bob, locked, "bob", whois="anyone", password="door-pw",
                          subject="Locked", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        await join_room(p, plain, "alice")
        await join_room(p, locked, "Alice W", password="door-pw")
        mp = p.mark()
        t_before = time.time()
        await say(bob, plain, "before restart 1", "before restart 2")
        await say(bob, locked, "locked before")
        last = await p.wait_for(P(name="message", body="before restart 2"), since=mp)
        last_l = await p.wait_for(P(name="message", body="locked before"), since=mp)
        sid, sid_l = stanza_id(last, plain), stanza_id(last_l, locked)
        assert sid and sid_l, "the room archive added no stanza-id: %s" % last

        rooms = await wait_stored(
            env, lambda r: r.get(plain, {}).get("last_id") == sid
            and r.get(locked, {}).get("last_id") == sid_l,
            "the last stanza-id seen in both rooms")
        assert set(rooms) == {plain, locked}, rooms
        assert rooms[plain].get("nick") == "alice" and not rooms[plain].get("password"), rooms
        assert rooms[locked].get("nick") == "Alice W", rooms
        assert rooms[locked].get("password") == "door-pw", rooms
        for r in (plain, locked):
            stamp = float(rooms[r].get("last_stamp") or 0)
            assert abs(stamp - time.time()) < 3600, "no sensible last time seen: %r" % rooms[r]

        await close_all(w)
        env.restart()
        await wait_log(env, r"Joining 2 stored memberships again", "the restore")
        await wait_log(env, r"%s is in %s" % (re.escape(ALICE), re.escape(locked)),
                       "alice back in the locked room")

        # No client of alice is online; bob finds her in both rooms.
        others, bob = await observe_occupants(w, plain)
        assert_alice_present(others, plain)
        _, seq = await join_room(bob, locked, "bob", password="door-pw")
        others, _, _, _ = join_parts(seq, locked, "bob", bob.jid)
        assert_alice_present(others, locked, "Alice W")
        assert joins_by_room(env, [plain, locked]) == {plain: 1, locked: 1}, \
            "each room joined once after the restart"

        # Catch-up after the restart, from messages no session was joined for.
        t0 = time.time()
        await say(bob, plain, "after restart 1", "after restart 2")
        p2 = await w.connect("alice", "phone")
        mb = bob.mark()
        seq = await join_and_collect(p2, plain, "alice", id="after-restart-join")
        others, self_p, history, subject = join_parts(seq, plain, "alice", p2.jid)
        assert self_p.id == "after-restart-join", self_p
        assert subject.subject == "Kept", subject
        assert "bob" in others, others
        check_history(history, plain, ["before restart 1", "before restart 2",
                                       "after restart 1", "after restart 2"],
                      not_before=t_before, not_after=time.time())
        assert t0 - 1 <= parse_stamp(delay_of(history[2])[1]), history[2]
        # The phone's join is served from the cache: the room sees nothing.
        await bob.assert_nothing(P(name="presence", frm=plain + "/alice"), since=mb,
                                 what="a presence of alice (the phone joins from the cache)")
        rooms = stored_rooms(env)
        assert set(rooms) == {plain, locked}, rooms
        assert joins_by_room(env, [plain, locked]) == {plain: 1, locked: 1}
    run(env, scenario)


# ---- 2. crash ---------------------------------------------------------------------

def test_crash_during_traffic_loses_no_membership(prosody_factory, storage):
    """A crash (SIGKILL, no shutdown at all) while the rooms are busy and
    the last-seen positions are being written loses no membership: after
    the restart the account is an occupant of every room it was in
    (XEP-0045 7.2, seen by a new occupant), each joined once, and not of
    the room it had left (7.14).  Prosody's MUC keeps no occupants over a
    crash, so the presence can only come from the module's own re-join.
    A phone joining afterwards gets history (7.2.15, XEP-0203) in the
    order the room sent it, without duplicates or gaps."""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        busy = [w.room("crash-a"), w.room("crash-b"), w.room("crash-c")]
        left = w.room("crash-left")
        bob = await w.connect("bob", "desk")
        for r in busy + [left]:
            await create_room(bob, r, "bob", whois="anyone", config=PERSISTENT,
                              password="pw-c" if r == busy[2] else None)
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        for r in busy + [left]:
            await join_room(p, r, "alice", password="pw-c" if r == busy[2] else None)
        await join_room(l, busy[0], "alice")
        mb = bob.mark()
        p.leave(left, "alice")
        await bob.wait_for(P(name="presence", frm=left + "/alice", type="unavailable"),
                           since=mb, what="alice leaving " + left)
        await wait_stored(env, lambda r: set(r) == set(busy), "exactly the three busy rooms")

        sent = {r: [] for r in busy}
        stop = asyncio.Event()

        async def traffic():
            for n in itertools.count(1):
                if stop.is_set() or not bob.connected:
                    return
                r = busy[n % 3]
                body = "traffic %d" % n
                try:
                    bob.groupchat(r, body)
                except ConnectionError:
                    return
                sent[r].append(body)
                await asyncio.sleep(0.02)

        task = asyncio.ensure_future(traffic())
        # Let the traffic and a few last-seen writes happen, then crash.
        ml = l.mark()
        await l.wait_for(P(name="message", frm_bare=busy[0],
                           fn=lambda s: (s.body or "").startswith("traffic ")), since=ml)
        await w.quiet(2.5)
        assert not task.done(), "the traffic stopped before the crash"
        env.kill()
        stop.set()
        await asyncio.wait_for(task, 10)
        await close_all(w)

        env.start()
        await wait_log(env, r"Joining 3 stored memberships again", "the restore")
        for r in busy:
            await wait_log(env, r"%s is in %s" % (re.escape(ALICE), re.escape(r)),
                           "alice back in " + r)
        bob = None
        for r in busy:
            others, c = await observe_occupants(w, r, res="desk-" + r.split("@")[0],
                                                password="pw-c" if r == busy[2] else None)
            assert_alice_present(others, r)
            bob = bob or c
        others, _ = await observe_occupants(w, left, res="desk-left")
        assert "alice" not in others, "alice is back in the room she had left: %s" % others[
            "alice"]
        assert joins_by_room(env, busy + [left]) == {busy[0]: 1, busy[1]: 1, busy[2]: 1,
                                                    left: 0}
        rooms = await wait_stored(env, lambda r: set(r) == set(busy),
                                  "the three busy rooms after the crash")
        assert rooms[busy[2]].get("password") == "pw-c", rooms

        await say(bob, busy[0], "after the crash")
        p2 = await w.connect("alice", "phone")
        seq = await join_and_collect(p2, busy[0], "alice", history={"maxstanzas": 50})
        _, _, history, _ = join_parts(seq, busy[0], "alice", p2.jid)
        bodies = [m.body for m in history]
        assert bodies and bodies[-1] == "after the crash", bodies
        before = bodies[:-1]
        if before:
            i = sent[busy[0]].index(before[0]) if before[0] in sent[busy[0]] else -1
            assert i >= 0 and sent[busy[0]][i:i + len(before)] == before, \
                "history is not a run of what bob sent, in order:\n%r\nsent:\n%r" % (
                    bodies, sent[busy[0]])
        check_history(history, busy[0], bodies)
    run(env, scenario)


def test_memberships_are_stored_as_they_change(prosody_factory, storage):
    """Memberships are written as soon as they change, not with the last
    message seen (minimix_seen_interval here is an hour): after the account
    entered two rooms (XEP-0045 7.2) and left one (7.14), a crash (SIGKILL)
    loses neither; after the restart the account is back in the room it
    stayed in (seen by a new occupant, joined once) and not in the other."""
    env = make_env(prosody_factory, storage, host_options={"minimix_seen_interval": 3600})

    async def scenario(w):
        stay, leave = w.room("stored-stay"), w.room("stored-leave")
        bob = await w.connect("bob", "desk")
        for r in (stay, leave):
            await create_room(bob, r, "bob", whois="anyone", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        for r in (stay, leave):
            await join_room(p, r, "alice")
        await wait_stored(env, lambda r: set(r) == {stay, leave}, "both rooms once joined")
        mb = bob.mark()
        p.leave(leave, "alice")
        await bob.wait_for(P(name="presence", frm=leave + "/alice", type="unavailable"),
                           since=mb, what="alice leaving " + leave)
        await wait_stored(env, lambda r: set(r) == {stay}, "the room left forgotten")
        await close_all(w)
        env.kill()
        env.start()
        await wait_log(env, r"Joining 1 stored memberships again", "the restore")
        await wait_log(env, r"%s is in %s" % (re.escape(ALICE), re.escape(stay)),
                       "alice back in " + stay)
        others, _ = await observe_occupants(w, stay, res="desk-stay")
        assert_alice_present(others, stay)
        others, _ = await observe_occupants(w, leave, res="desk-leave")
        assert "alice" not in others, "alice is back in the room she had left: %s" % others
        assert joins_by_room(env, [stay, leave]) == {stay: 1, leave: 0}
    run(env, scenario)


def test_after_a_crash_the_room_is_asked_for_everything_since_the_last_message_seen(
        prosody_factory, storage):
    """The re-join after a crash asks the room for the history since the
    last message seen (XEP-0045 7.2.15, <history since=.../>), not for the
    room's default amount: with the phone offline, bob says more than the
    room sends by default (muc#roomconfig_defaulthistorymessages = 5, room
    history 100); after the crash the phone, asking for up to 50 messages,
    gets every one of them (XEP-0203 delay, in order), and not the message
    the account had seen before (nothing is delivered twice)."""
    env = make_env(prosody_factory, storage, host_options={"minimix_seen_interval": 3600})

    async def scenario(w):
        room = w.room("since")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Since", config=dict(
            PERSISTENT, **{"muc#roomconfig_historylength": 100,
                           "muc#roomconfig_defaulthistorymessages": 5}))
        await say(bob, room, "seen before")
        # said in an earlier whole second than the account came in: the
        # room stamps its history in whole seconds (Prosody 0.12), and a
        # stamp in the second the account came in counts as said while it
        # was in
        await next_second()
        p = await w.connect("alice", "phone")
        _, seq = await join_room(p, room, "alice")
        seen = [s for s in seq if s.body == "seen before"]
        assert seen, "the room sent no history: %s" % seq
        sid = stanza_id(seen[0], room)
        await wait_stored(env, lambda r: r.get(room, {}).get("last_id") == sid,
                          "the last message seen (the history of the join)")
        await p.abort()
        said = ["while away %d" % i for i in range(1, 13)]
        await say(bob, room, *said)
        await close_all(w)
        env.kill()
        env.start()
        await wait_log(env, r"%s is in %s" % (re.escape(ALICE), re.escape(room)),
                       "alice back in the room")
        p2 = await w.connect("alice", "phone")
        seq = await join_and_collect(p2, room, "alice", history={"maxstanzas": 50})
        _, _, history, subject = join_parts(seq, room, "alice", p2.jid)
        assert subject.subject == "Since", subject
        check_history(history, room, said)
        assert joins_by_room(env, [room]) == {room: 1}
    run(env, scenario)


def publish_bookmark(client, room, nick, autojoin=True):
    """XEP-0402: publish a conference bookmark (item id = room JID) with the
    publish-options the XEP asks for.  Returns the IQ id."""
    return client.iq(None, "set", (
        "<pubsub xmlns='%s'><publish node='%s'><item id='%s'>"
        "<conference xmlns='%s' autojoin='%s'><nick>%s</nick></conference></item></publish>"
        "<publish-options><x xmlns='jabber:x:data' type='submit'>"
        "<field var='FORM_TYPE' type='hidden'>"
        "<value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
        "<field var='pubsub#persist_items'><value>true</value></field>"
        "<field var='pubsub#max_items'><value>max</value></field>"
        "<field var='pubsub#send_last_published_item'><value>never</value></field>"
        "<field var='pubsub#access_model'><value>whitelist</value></field>"
        "</x></publish-options></pubsub>")
        % (NS_PUBSUB, NS_BOOKMARKS, room, NS_BOOKMARKS, "true" if autojoin else "false", nick))



async def in_stored_and_bookmarked_rooms(w, env, both, marked, nick="alice",
                                         bookmark_nick="alice"):
    """bob creates the persistent rooms both and marked; alice's phone joins
    both as nick and publishes an autojoin bookmark (XEP-0402) of each under
    bookmark_nick, which joins the account to marked.  Returns once both
    memberships are stored."""
    bob = await w.connect("bob", "desk")
    for r in (both, marked):
        await create_room(bob, r, "bob", whois="anyone", config=PERSISTENT)
    p = await w.connect("alice", "phone")
    await join_room(p, both, nick)
    mb = bob.mark()
    for r in (both, marked):
        m = p.mark()
        iq = publish_bookmark(p, r, bookmark_nick)
        res = await p.wait_for(P(name="iq", id=iq), since=m, what="bookmark published")
        assert res.type == "result", res
    await bob.wait_for(P(name="presence", frm=marked + "/" + bookmark_nick, type="available"),
                       since=mb, what="alice joining the bookmarked room")
    await wait_stored(env, lambda r: set(r) == {both, marked}, "both memberships")


def test_restart_joins_once_with_stored_membership_and_bookmark(prosody_factory, storage):
    """Nothing is joined twice after a crash: a room that is both a stored
    membership and an autojoin bookmark (XEP-0402), and a room known only
    from its autojoin bookmark, are each joined once (XEP-0045 7.2), and
    the other occupants see the account in both."""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        both, marked = w.room("stored-and-bookmarked"), w.room("bookmarked")
        await in_stored_and_bookmarked_rooms(w, env, both, marked)
        await close_all(w)
        env.kill()
        env.start()
        for r in (both, marked):
            await wait_log(env, r"%s is in %s" % (re.escape(ALICE), re.escape(r)),
                           "alice back in " + r)
        await w.quiet()
        for r in (both, marked):
            others, _ = await observe_occupants(w, r, res="desk-" + r.split("@")[0])
            assert_alice_present(others, r)
        assert joins_by_room(env, [both, marked]) == {both: 1, marked: 1}, \
            "a room was joined more than once after the restart"
    run(env, scenario)


# ---- 3. reload --------------------------------------------------------------------

def test_reload_keeps_memberships_and_sessions(prosody_factory, storage):
    """module:reload (Prosody's admin shell) keeps the membership and the
    joined sessions: the room sees neither an exit (XEP-0045 7.14) nor an
    entry (7.2) of the account; every joined session keeps getting the
    room's messages (7.4) exactly once and can speak; a session joining
    afterwards gets the later-session sequence from the cache without a
    join in the room; and memberships made after the reload are stored and
    survive a crash."""
    env = make_env(prosody_factory, storage, admin_shell=True)

    async def scenario(w):
        room, room2 = w.room("reload"), w.room("reload-2")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Reload", config=PERSISTENT)
        await create_room(bob, room2, "bob", whois="anyone", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await wait_stored(env, lambda r: set(r) == {room}, "the membership")

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        before = current_run(env)
        out = env.shell("module:reload('minimix', 'localhost')")
        assert "reloaded" in out.lower(), "the reload failed:\n" + out

        await say(bob, room, "after the reload")
        for c, m in ((p, mp), (l, ml)):
            got = await c.wait_for(P(name="message", body="after the reload"), since=m,
                                   what="bob's message at " + c.name)
            assert got.to == c.jid, got
        ml2 = l.mark()
        p.groupchat(room, "alice after the reload", id="reload-gc-1")
        await bob.wait_for(P(name="message", frm=room + "/alice", body="alice after the reload"),
                           since=mb)
        r = await l.wait_for(P(name="message", body="alice after the reload"), since=ml2)
        assert r.id == "reload-gc-1", r

        seq = await join_and_collect(t, room, "alice", id="tablet-after-reload")
        others, self_p, _, subject = join_parts(seq, room, "alice", t.jid)
        assert "bob" in others and self_p.id == "tablet-after-reload", seq
        assert subject.subject == "Reload", subject

        await w.quiet()
        for c, m in ((p, mp), (l, ml)):
            n = len(c.matching(P(name="message", body="after the reload"), since=m))
            assert n == 1, "%s got bob's message %d times" % (c.name, n)
        assert not p.matching(P(name="presence", frm_bare=room), since=mp), p.transcript(mp)
        assert not l.matching(P(name="presence", frm_bare=room), since=ml), l.transcript(ml)
        assert not bob.matching(P(name="presence", frm=room + "/alice"), since=mb), \
            "the room saw alice leave or join:\n" + bob.transcript(mb)
        after = current_run(env)[len(before):]
        assert not re.search(r"%s (joins|is in|left|is out of) " % re.escape(ALICE), after), \
            "the module joined or left after the reload:\n" + after
        assert not env.spy_errors(), env.spy_errors()

        # The reloaded module stores new memberships, which survive a crash.
        await join_room(p, room2, "alice")
        await wait_stored(env, lambda r: set(r) == {room, room2}, "both memberships")
        await close_all(w)
        env.kill()
        env.start()
        for r in (room, room2):
            others, _ = await observe_occupants(w, r, res="desk-" + r.split("@")[0])
            assert_alice_present(others, r)
        assert joins_by_room(env, [room, room2]) == {room: 1, room2: 1}
    run(env, scenario)


# ---- 4. refusals and transient failures -------------------------------------------

def test_refusing_rooms_are_dropped_unreachable_rooms_retried(prosody_factory, storage):
    """On re-joining after a restart, a room that refuses the account is
    dropped with a log line and forgotten (not joined again after the next
    restart): banned (XEP-0045 7.2.8, forbidden), members-only without
    membership (7.2.7, registration-required), destroyed (10.9; Prosody
    keeps a tombstone and answers gone).  A room that cannot be reached
    (the MUC service down: Prosody answers remote-server-timeout) is kept
    and tried again, each time later; when the service is back after the
    next restart, the account is back in the room."""
    env = make_env(prosody_factory, storage, host_options={"minimix_rejoin_delay": 1})

    async def scenario(w):
        keep, banned = w.room("keep"), w.room("banned")
        members, gone = w.room("members"), w.room("gone")
        rooms = [keep, banned, members, gone]
        bob = await w.connect("bob", "desk")
        for r in rooms:
            await create_room(bob, r, "bob", whois="anyone", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        for r in rooms:
            await join_room(p, r, "alice")
        await wait_stored(env, lambda s: set(s) == set(rooms), "the four memberships")
        await close_all(w)
        env.kill()

        # Without the module, the rooms change while the account is away.
        env.minimix = False
        env.start()
        bob = await w.connect("bob", "desk")
        m = bob.mark()
        ban = bob.iq(banned, "set", "<query xmlns='%s'><item affiliation='outcast' jid='%s'/>"
                     "</query>" % (NS_MUC_ADMIN, ALICE))
        res = await bob.wait_for(P(name="iq", id=ban), since=m)
        assert res.type == "result", res
        await configure(bob, members, {"muc#roomconfig_membersonly": True})
        m = bob.mark()
        destroy = bob.iq(gone, "set", "<query xmlns='%s'><destroy><reason>closed</reason>"
                         "</destroy></query>" % NS_MUC_OWNER)
        res = await bob.wait_for(P(name="iq", id=destroy), since=m)
        assert res.type == "result", res
        await close_all(w)
        env.stop()

        env.minimix = True
        env.start()
        for r, cond in ((banned, "forbidden"), (members, "registration-required"),
                        (gone, "gone")):
            await wait_log(env, r"%s is out of %s \(%s\)" % (re.escape(ALICE), re.escape(r),
                                                            re.escape(cond)),
                           "%s dropped (%s)" % (r, cond))
        await wait_stored(env, lambda s: set(s) == {keep}, "only the room that let alice in")
        others, bob = await observe_occupants(w, keep)
        assert_alice_present(others, keep)
        assert joins_by_room(env, rooms) == {r: 1 for r in rooms}
        await close_all(w)
        env.kill()

        # The MUC service is down: the room is tried again, each time later.
        env.muc_module = None
        env.start()
        again = r"%s joins %s again \(remote-server-timeout\)" % (re.escape(ALICE),
                                                                 re.escape(keep))
        seen = []
        deadline = time.monotonic() + 30
        while len(seen) < 3:
            n = len(re.findall(again, current_run(env)))
            while len(seen) < n:
                seen.append(time.monotonic())
            assert time.monotonic() < deadline, \
                "fewer than 3 attempts at the unreachable room:\n" + env.tail(40)
            await asyncio.sleep(0.05)
        # minimix_rejoin_delay = 1: the retries wait 2 s, then 4 s (timers
        # never fire early; the polling adds at most its own interval).
        gaps = [b - a for a, b in zip(seen, seen[1:])]
        assert gaps[0] >= 1.8 and gaps[1] >= 3.8, "no growing delay between attempts: %r" % gaps
        assert set(stored_rooms(env)) == {keep}, "the unreachable room was dropped"
        assert not re.search(r"is out of %s" % re.escape(keep), current_run(env))
        env.stop()
        assert set(stored_rooms(env)) == {keep}, stored_rooms(env)

        env.muc_module = "muc"
        env.start()
        others, bob = await observe_occupants(w, keep)
        assert_alice_present(others, keep)
        assert joins_by_room(env, rooms) == {keep: 1, banned: 0, members: 0, gone: 0}, \
            "dropped rooms must not be joined again"
    run(env, scenario)


# ---- 5. catch-up ------------------------------------------------------------------

def test_offline_session_catches_up_on_its_next_join(prosody_factory):
    """A session that was offline while the room talked gets, on its next
    join to the room the account stayed in, what was said as history
    (XEP-0045 7.2.15) with XEP-0203 <delay from=room stamp=.../>, in order,
    after its self-presence (7.2.3) and before the subject (7.2.16),
    including messages that arrived while no session was joined; the room
    sees no new join.  The <history/> element is honoured: none (the
    room's default), maxstanzas, maxchars='0', seconds, since."""
    env = make_env(prosody_factory, {"storage": "internal"})

    async def scenario(w):
        room = w.room("catchup")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Catch-up", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        t_start = time.time()
        await say(bob, room, "a1", "a2")
        await p.wait_for(P(name="message", body="a2"))

        await p.abort()          # the phone goes offline; the laptop stays
        ml = l.mark()
        await say(bob, room, "b1", "b2", "b3")
        await l.wait_for(P(name="message", body="b3"), since=ml)
        await l.abort()          # no session joined at all now
        await w.quiet(1.2)       # so that c1 is at least a second after b3
        await say(bob, room, "c1", "c2")
        everything = ["a1", "a2", "b1", "b2", "b3", "c1", "c2"]

        mb = bob.mark()
        p2 = await w.connect("alice", "phone")
        seq = await join_and_collect(p2, room, "alice", id="phone-back")
        others, self_p, history, subject = join_parts(seq, room, "alice", p2.jid)
        assert self_p.id == "phone-back" and "bob" in others, seq
        assert subject.subject == "Catch-up", subject
        check_history(history, room, everything, not_before=t_start, not_after=time.time())
        c1_stamp = delay_of(history[5])[1]

        l2 = await w.connect("alice", "laptop")
        seq = await join_and_collect(l2, room, "alice", history={"maxstanzas": 2})
        check_history(join_parts(seq, room, "alice", l2.jid)[2], room, ["c1", "c2"])

        t = await w.connect("alice", "tablet")
        seq = await join_and_collect(t, room, "alice", history={"maxstanzas": 0})
        check_history(join_parts(seq, room, "alice", t.jid)[2], room, [])
        t2 = await w.connect("alice", "tablet2")
        seq = await join_and_collect(t2, room, "alice", history={"maxchars": 0})
        check_history(join_parts(seq, room, "alice", t2.jid)[2], room, [])
        t3 = await w.connect("alice", "tablet3")
        seq = await join_and_collect(t3, room, "alice", history={"seconds": 3600})
        check_history(join_parts(seq, room, "alice", t3.jid)[2], room, everything)
        t4 = await w.connect("alice", "tablet4")
        seq = await join_and_collect(t4, room, "alice", history={"since": c1_stamp})
        check_history(join_parts(seq, room, "alice", t4.jid)[2], room, ["c1", "c2"])

        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice (sessions join from the cache)")

        # The room stamped each message as it took it in, in its own
        # precision (Prosody 13: fractions of a second), and only then sent
        # it to the account: no catch-up stamp is older than the room's
        # stamp of the same message (else a device mixing the room's history
        # with the catch-up sorts them wrongly).
        carol = await w.connect("carol", "desk")
        seq = await join_and_collect(carol, room, "carol", history={"maxstanzas": 20})
        by_room = {m.body: delay_of(m)[1] for m in join_parts(seq, room, "carol", carol.jid)[2]}
        assert set(everything) <= set(by_room), by_room
        for m in history:
            ours = delay_of(m)[1]
            assert parse_stamp(ours) >= parse_stamp(by_room[m.body]), \
                "catch-up stamp %s of %r is older than the room's %s" % (
                    ours, m.body, by_room[m.body])
    run(env, scenario)


@pytest.mark.parametrize("source", ["log", "ring"])
def test_catch_up_is_bounded(prosody_factory, source):
    """The catch-up history is bounded: a join gets at most
    minimix_history_max messages from the room log (with minimix_log off,
    the module keeps the latest minimix_history_size per membership in
    memory), and a join without <history/> gets minimix_history_default
    (XEP-0045 7.2.15: the service decides how much history to send by
    default), the latest ones, in order."""
    opts = {"minimix_history_default": 3}
    if source == "log":
        opts["minimix_history_max"] = 5
    else:
        opts.update({"minimix_log": False, "minimix_history_size": 5})
    env = make_env(prosody_factory, {"storage": "internal"}, host_options=opts)

    async def scenario(w):
        room = w.room("bounded")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice")
        await p.abort()
        said = ["m%d" % i for i in range(1, 9)]
        await say(bob, room, *said)
        p2 = await w.connect("alice", "phone")
        seq = await join_and_collect(p2, room, "alice")
        check_history(join_parts(seq, room, "alice", p2.jid)[2], room, said[-3:])
        l = await w.connect("alice", "laptop")
        seq = await join_and_collect(l, room, "alice", history={"maxstanzas": 100})
        check_history(join_parts(seq, room, "alice", l.jid)[2], room, said[-5:])
    run(env, scenario)
