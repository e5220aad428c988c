"""End-to-end tests of the room log on the default file store: what one
flush of the log's writer queued for a room goes into the room's list in
one append (minimix_logfile.lib.lua), read back by the store as its own
items, on Prosody 0.12 and 13 (whose list index is built again from the
list).

alice (phone and laptop) is on localhost, the host with the module; carol
speaks from plain.localhost.  The rooms keep no history of their own, so a
catch-up can only come from the room log.  The log's flush interval is 3 s
here, so that the messages of a test are queued for one flush.

What is proven:

1. 12 messages said within one flush interval, after a first one, are
   written by one batch
   (the module's debug line), all in the room's list in order, each with a
   key of its own, the time it was said and the speaker's nick; a device
   that was away gets all 12 from the log, in order, and pages through
   them with MAM (on 13 through the list's index).
2. Bodies with line breaks, lines that begin like an item of the list,
   quotes and backslashes come back whole, in the catch-up and in MAM.
"""

import time

from .clients import P, join_room
from .storages import archive_entries
from .test_catchup import make_env, setup_room, logged, catch_up
from .test_log import minimix_lines
from .test_mam import query, bodies
from .world import run

FLUSH = {"minimix_log_flush_interval": 3000}


def file_env(prosody_factory):
    return make_env(prosody_factory, {"storage": "internal"}, debug=True, host_options=dict(FLUSH))


def batch_lines(env):
    return minimix_lines(env, "debug", r"^Wrote \d+ message\(s\) to the room log in one batch")


async def say_within_one_flush(room, carol, laptop, texts):
    """carol says texts; the laptop gets the last (the room said them
    all, well within the 3 s flush interval)."""
    m = laptop.mark()
    for t in texts:
        carol.groupchat(room, t)
    await laptop.wait_for(P(name="message", frm_bare=room, body=texts[-1]), since=m)


async def phone_comes_back(w, room, said):
    """The phone joins again: its catch-up from the log is all that was
    said, in order, and MAM ends with the same messages."""
    phone = await w.connect("alice", "phone")
    _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
    assert [b for b, _ in catch_up(got, room)] == said
    _, results = await query(phone, room)
    assert bodies(results)[-len(said):] == said, results


def test_one_flush_writes_a_rooms_messages_in_one_append(prosody_factory):
    """The phone goes away; carol says 12 messages within one flush
    interval (after a first one).  One batch writes them; the list holds them in order with keys, times and
    nicks; the phone, back, gets them from the log and through MAM."""
    env = file_env(prosody_factory)
    first = "before the batch"
    texts = ["file batch %02d" % i for i in range(12)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "file-batch")
        carol.groupchat(room, first)
        await logged(env, room, [first])
        await phone.disconnect()
        t0 = time.time()
        await say_within_one_flush(room, carol, laptop, texts)
        t1 = time.time()
        await logged(env, room, [first] + texts)
        lines = batch_lines(env)
        assert any(" 12 message(s) " in line for line in lines), lines
        entries = archive_entries(env, room, "minimix_log")
        assert [e["body"] for e in entries] == [first] + texts, entries
        keys = [e["key"] for e in entries]
        assert len(set(keys)) == len(keys) and all(keys), keys
        for e in entries[1:]:
            assert int(t0) <= int(e["when"]) <= t1, (t0, e, t1)
            assert e["with"] == "carol", e
        await phone_comes_back(w, room, [first] + texts)
    run(env, scenario, timeout=120)


def test_any_text_comes_back_whole(prosody_factory):
    """Bodies with line breaks, lines that begin as the list's items do,
    quotes, backslashes and non-ASCII text, written by one batch, come back
    whole in the phone's catch-up and through MAM."""
    env = file_env(prosody_factory)
    first = "before the batch"
    texts = ["two lines\nitem({name=\"x\"});", "quotes \" ' and \\ backslashes \\n ]]",
             "\nitem(\n", "UTF-8 \u20ac \u00f6 \U0001d11e and a tab\there"]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "file-texts")
        carol.groupchat(room, first)
        await logged(env, room, [first])
        await phone.disconnect()
        await say_within_one_flush(room, carol, laptop, texts)
        await logged(env, room, [first] + texts)
        assert any(" 4 message(s) " in line for line in batch_lines(env)), batch_lines(env)
        await phone_comes_back(w, room, [first] + texts)
    run(env, scenario, timeout=120)
