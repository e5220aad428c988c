"""End-to-end tests of the catch-up a later session gets from the room log.

alice (phone and laptop) and bob, both on localhost (the host with the
module), are occupants of one room that keeps no history of its own
(muc#roomconfig_historylength 0) and archives nothing (no mod_muc_mam);
carol on plain.localhost (no module) speaks.  Each test runs on the
internal store, SQLite and PostgreSQL.

What is proven:

1. A device away for 60 messages gets all 60 when it joins again with
   maxstanzas='100', between its self-presence and the subject, in order,
   each with a XEP-0203 delay from the room; `since` gives exactly what
   was said after it (the ring in memory holds 50 only).
2. Restarts: after a clean restart and after a kill -9, the devices that
   were away get everything said while they were away, although the room
   keeps nothing and the module's memory was lost.
3. Spans: an account that left gets nothing of what was said while it was
   out, although bob, another local account, stayed in and the log holds
   it; what was said since it is back, it gets.
4. An upgrade: a log on the file store written as an earlier version kept
   its messages (the stanza itself, not its text) is caught up from as
   before, with what is said after the upgrade.
"""

import asyncio
import datetime
import os
import re
import time

import pytest

from .clients import P, join_room, create_room
from .storages import archive_entries, lua_read_store, read_store_file, _encode_node
from .test_persistence import stored_rooms
from .world import run

ALICE = "alice@localhost"
NS_DELAY = "urn:xmpp:delay"
# a room that keeps no history and archives nothing: the catch-up can
# only come from the room log
NO_HISTORY = {"muc#roomconfig_persistentroom": True, "muc#roomconfig_historylength": 0}


def make_env(prosody_factory, storage, **kw):
    storage = dict(storage)
    pg = storage.pop("_pg", None)
    kw.setdefault("muc_options", {"modules_enabled": ["e2e_spy"]})
    env = prosody_factory(**storage, **kw)
    env.pg = pg
    return env


def stamp(t):
    """XEP-0082 with microseconds."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stamp(text):
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z$", text)
    assert m, text
    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return t + (float(m.group(2)) if m.group(2) else 0.0)


async def setup_room(w, name, before_joins=None):
    """carol creates the room (no history, not archived); alice's phone
    and laptop and bob join (after before_joins(bob), when given).
    Returns (room, carol, phone, laptop, bob)."""
    room = w.room(name)
    carol = await w.connect("carol", "desk")
    await create_room(carol, room, "carol", whois="anyone", config=NO_HISTORY)
    phone = await w.connect("alice", "phone")
    laptop = await w.connect("alice", "laptop")
    bob = await w.connect("bob", "home", host="localhost")
    if before_joins:
        await before_joins(bob)
    for c, nick in ((phone, "alice"), (laptop, "alice"), (bob, "bob")):
        await join_room(c, room, nick)
    return room, carol, phone, laptop, bob


async def say(carol, room, receivers, texts):
    """carol says texts; every receiver gets the last one."""
    marks = [c.mark() for c in receivers]
    for t in texts:
        carol.groupchat(room, t)
    for c, m in zip(receivers, marks):
        await c.wait_for(P(name="message", frm_bare=room, body=texts[-1]), since=m,
                         what="%r at %s" % (texts[-1], c.name))


async def logged(env, room, texts, timeout=20):
    """Wait until the room log holds every text (written by the module)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [e["body"] for e in archive_entries(env, room, "minimix_log")]
        if all(t in got for t in texts):
            return
        assert time.monotonic() < deadline, "the room log never held them all: %s" % got
        await asyncio.sleep(0.2)


def catch_up(got, room):
    """The room messages with a body between the self-presence and the
    subject of a join sequence; checks each has one delay from the room.
    Returns [(body, delay stamp)]."""
    selfs = [i for i, s in enumerate(got) if s.name == "presence" and s.is_self_presence]
    assert selfs, [str(s) for s in got]
    subject = [i for i, s in enumerate(got) if s.name == "message" and s.subject is not None
               and s.body is None]
    assert subject and subject[-1] == len(got) - 1, [str(s) for s in got]
    out = []
    for i, s in enumerate(got):
        if s.name != "message" or s.body is None:
            continue
        assert selfs[-1] < i < subject[-1], "out of place: %s" % s
        delays = [d for d in s.xml.findall("{%s}delay" % NS_DELAY) if d.get("from") == room]
        assert len(delays) == 1, "not one delay from the room: %s" % s
        out.append((s.body, parse_stamp(delays[0].get("stamp"))))
    return out



async def rejoined(env, room, account=ALICE, timeout=20):
    """Wait until account is in room again after a restart."""
    deadline = time.monotonic() + timeout
    while not re.search(r"\t%s is in %s" % (re.escape(account), re.escape(room)),
                        env.read_log().split("Hello and welcome to Prosody")[-1]):
        assert time.monotonic() < deadline, "%s did not join again:\n%s" % (
            account, env.tail(30))
        await asyncio.sleep(0.2)


async def restart(w, env, room, kill=False, accounts=(ALICE,)):
    """Stop the server (kill -9 it with kill) with every client gone, start
    it again, put carol back in room and wait until each of accounts has
    joined it again.  Returns carol's new client."""
    await w.close()
    w.clients.clear()
    if kill:
        env.kill()
    else:
        env.stop()
    env.start()
    carol = await w.connect("carol", "desk")
    await join_room(carol, room, "carol")
    for account in accounts:
        await rejoined(env, room, account)
    return carol


def test_a_device_away_for_60_messages_gets_all_60(prosody_factory, storage):
    """The phone goes away (its connection closes; the laptop keeps the
    account in); carol says 60 messages, a pause, then 5 more.  The phone
    joins again with maxstanzas='100': all 65 in order, after its
    self-presence and before the subject, each with one delay from the
    room, stamped in order within the time they were said.  Joining again
    with `since` set between the two batches gives exactly the 5."""
    env = make_env(prosody_factory, storage)
    first = ["away %02d" % i for i in range(60)]
    second = ["after %d" % i for i in range(5)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "away")
        await phone.disconnect()
        t0 = time.time()
        await say(carol, room, [laptop, bob], first)
        # the cut once the log holds the first batch: all of it before, the
        # second batch (said after the cut) after
        await logged(env, room, first)
        cut = time.time()
        await say(carol, room, [laptop, bob], second)
        t1 = time.time()
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        served = catch_up(got, room)
        assert [b for b, _ in served] == first + second, served
        stamps = [t for _, t in served]
        assert stamps == sorted(stamps), stamps
        assert t0 - 1 <= stamps[0] and stamps[-1] <= t1 + 1, (t0, stamps, t1)
        # since: exactly what came after
        await phone.disconnect()
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"since": stamp(cut)})
        assert [b for b, _ in catch_up(got, room)] == second
    run(env, scenario, timeout=120)


@pytest.mark.parametrize("how", ["clean", "kill"])
def test_a_restart_loses_nothing_said_while_the_devices_were_away(prosody_factory, storage, how):
    """Both of alice's devices go away (the account stays in); carol says
    5 messages, which the module writes to the log; the server restarts
    (clean, or kill -9) and the account joins again by itself.  The room
    keeps no history: the phone joining with maxstanzas='100' gets the 5
    from the log, in order, with delays from the room."""
    env = make_env(prosody_factory, storage)
    texts = ["while away %d" % i for i in range(5)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "restart-" + how)
        await phone.disconnect()
        await laptop.disconnect()
        await say(carol, room, [bob], texts)
        await logged(env, room, texts)
        await restart(w, env, room, kill=how == "kill")
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == texts
    run(env, scenario, timeout=120)


def test_an_account_that_left_gets_nothing_said_while_it_was_out(prosody_factory, storage):
    """alice's devices leave the room (the account leaves) while bob, on the
    same host, stays in and the log keeps what carol says meanwhile.  The
    laptop joins again (the account's first join: the room's own history,
    none here); carol says one more; the phone joins with maxstanzas='100'
    and gets only what was said since the account is back."""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "left")
        await say(carol, room, [phone, laptop, bob], ["before 1", "before 2"])
        for c in (phone, laptop):
            m = c.mark()
            c.leave(room, "alice")
            await c.wait_for(P(name="presence", frm_bare=room, type="unavailable"), since=m,
                             what="the leave of %s" % c.name)
        deadline = time.monotonic() + 20
        while not re.search(r"\t%s left %s" % (re.escape(ALICE), re.escape(room)), env.read_log()):
            assert time.monotonic() < deadline, env.tail(30)
            await asyncio.sleep(0.2)
        out = ["while out %d" % i for i in range(3)]
        await say(carol, room, [bob], out)
        await logged(env, room, out)
        await join_room(laptop, room, "alice")
        await say(carol, room, [laptop, bob], ["back 1"])
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == ["back 1"]
    run(env, scenario, timeout=120)


# A room log list of the file store as an earlier version of the module
# wrote it: each message itself (without 'to', with the log's <said/> mark)
# where the log now keeps its text in a <logged/> element.  Made with
# Prosody's own libraries, as its file store writes an item.
_AS_BEFORE = r"""
package.path = "/usr/lib/prosody/?.lua;" .. package.path
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath
local st = require "util.stanza"
local xml_parse = require "util.xml".parse
local serialize = require "util.serialization".serialize
local items = {}
assert(load(STORE_TEXT, "=list", "t", { item = function(t) items[#items+1] = t end }))()
for _, t in ipairs(items) do
  local value = t
  if t.name == "logged" and t.attr.xmlns == "urn:xmpp:minimix:logged:0" then
    local m = assert(xml_parse(t[1]))
    if t.attr.said then m:tag("said", { xmlns = "urn:xmpp:minimix:said:0", at = t.attr.said }):up() end
    value = st.preserialize(m)
    value.key, value.when, value.with = t.key, t.when, t.with
    value.attr.stamp = t.attr.stamp
  end
  io.write("item(", serialize(value), ");\n")
end
"""


def test_a_log_written_by_an_earlier_version_is_still_caught_up(prosody_factory):
    """Both of alice's devices go away; carol says 3 messages, logged on the
    file store.  With the server stopped, the room's list becomes what an
    earlier version of the module wrote (each message a stanza; Prosody
    13's index of the list gone, which it builds again).  After the start,
    carol says 2 more; the phone joining with maxstanzas='100' gets all 5,
    in order, each once."""
    env = make_env(prosody_factory, {"storage": "internal"})
    before = ["before %d" % i for i in range(3)]
    after = ["after %d" % i for i in range(2)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "upgrade")
        await phone.disconnect()
        await laptop.disconnect()
        await say(carol, room, [bob], before)
        await logged(env, room, before)
        await w.close()
        w.clients.clear()
        env.stop()
        path = os.path.join(env.data_dir, _encode_node("localhost"), "minimix_log",
                            _encode_node(room) + ".list")
        text = read_store_file(path)
        assert text.count("urn:xmpp:minimix:logged:0") == 3, text
        old = lua_read_store(_AS_BEFORE, text, path)
        assert "urn:xmpp:minimix:logged:0" not in old and old.count("urn:xmpp:minimix:said:0") == 3, old
        with open(path, "w") as f:
            f.write(old)
        try:
            os.remove(path[:-len(".list")] + ".lidx")
        except FileNotFoundError:
            pass
        env.start()
        carol = await w.connect("carol", "desk")
        await join_room(carol, room, "carol")
        await rejoined(env, room)
        await say(carol, room, [], after)
        await logged(env, room, before + after)
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == before + after
    run(env, scenario, timeout=120)


NS_E2E_BUSY = "urn:minimix:e2e:busy"


async def busy(client, state):
    """Turn mod_e2e_busy on or off: while on, the server's loop always has
    something to read, as under a steady stream of stanzas (Prosody 0.12
    then runs no timer)."""
    m = client.mark()
    iq_id = client.iq(client.jid.split("@")[1].split("/")[0], "set",
                      "<busy xmlns='%s' state='%s'/>" % (NS_E2E_BUSY, state))
    res = await client.wait_for(P(name="iq", id=iq_id), since=m, what="busy " + state)
    assert res.type == "result", "the busy switch failed: %s" % res


def test_a_crash_while_the_server_is_too_busy_for_timers_loses_only_what_waits(
        prosody_factory, storage):
    """A server under a steady stream of stanzas runs no timers (Prosody
    0.12's net.server runs them only when no connection has anything to
    read; 13.0 runs them between rounds of events); mod_e2e_busy keeps it
    so, from before alice and bob join: the memberships begin while the
    server is busy.  The phone is away (the laptop keeps the account in);
    carol says one message after another: the log writes them all the same,
    each at most a flush interval late, so that the first is in the store
    while the server is still busy, and alice's membership, written at the
    next turn of the main loop or, when timers do not run, by a later
    stanza, is in the store too.  After a kill -9 (still busy) and a
    restart, the account joins the room again by itself, and the phone
    joining with a maxstanzas above all that was said gets, from the log
    (the room keeps no history), what carol said from the first message
    on, in order, without a gap or a duplicate: at least everything the
    store held before the crash; only the last flush interval may be
    missing."""
    # however many messages were said before the first write: all of them
    env = make_env(prosody_factory, storage, extra_modules=["e2e_busy"],
                   host_options={"minimix_history_max": 100000})

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(
            w, "busy", before_joins=lambda bob: busy(bob, "on"))
        await phone.disconnect()
        said, written, stored = [], [], {}
        deadline = time.monotonic() + 20
        while not said or said[0] not in written or room not in stored:
            assert time.monotonic() < deadline, (
                "not in the store while the server was busy after %d messages: %s%s"
                % (len(said), "" if said and said[0] in written else "the first message; ",
                   "" if room in stored else "alice's membership"))
            said.append("busy %d" % len(said))
            await say(carol, room, [laptop], said[-1:])
            written = [e["body"] for e in archive_entries(env, room, "minimix_log")]
            stored = stored_rooms(env)
        await restart(w, env, room, kill=True)
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice",
                                 history={"maxstanzas": len(said) + 10})
        served = [b for b, _ in catch_up(got, room)]
        assert served == said[:len(served)], "not what was said, in order:\n%r\nsaid:\n%r" % (
            served, said)
        assert len(served) >= len(written), "the store held more before the crash:\n%r\n%r" % (
            written, served)
    run(env, scenario, timeout=120)
