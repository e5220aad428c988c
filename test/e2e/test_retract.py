"""End-to-end tests of retractions and moderations in the room log.

alice (phone, laptop, tablet) is on localhost (the host with the module)
with minimix_archive_in_mam on; carol, who owns the room, and bob speak
from plain.localhost (no module).  The room archives (mod_muc_mam), so its
messages carry the room's XEP-0359 stanza-ids, which retractions name.

What is proven:

1. XEP-0424: carol retracts her message (by the room's stanza-id) while
   alice's laptop and tablet are away.  The laptop's catch-up from the log
   (maxstanzas='50') and the tablet's from the catch-up ring
   (maxstanzas='3', which the ring answers whole) hold a tombstone with the
   XEP-0424 <retracted/> marker in its place, never the body; the room log
   and alice's archive copy hold the tombstone under the same stanza-id;
   on the internal store, SQLite and PostgreSQL.  The older fastened form
   (urn:xmpp:message-retract:0) does the same.
2. A retraction from someone else (bob retracting carol's message) changes
   nothing: the laptop's catch-up has the body; carol's own retraction
   afterwards still withdraws it.
3. XEP-0425 through mod_muc_moderation (Debian's prosody-modules, which
   announces urn:xmpp:message-moderate:0 from the room's bare JID): carol,
   a moderator, removes bob's message with a reason; the laptop's catch-up
   has a tombstone with the reason instead of the body, and so do the log
   and the archive copy.
"""

import asyncio
import os
import time

import pytest

from .clients import P, join_room, create_room, NS_SID
from .conftest import PLUGIN_DIR
from .storages import archive_entries
from .test_catchup import catch_up
from .test_log import wait_entries
from .world import run

NS_RETRACT = "urn:xmpp:message-retract:1"
NS_RETRACT0 = "urn:xmpp:message-retract:0"
NS_FASTEN = "urn:xmpp:fasten:0"
NS_MODERATE0 = "urn:xmpp:message-moderate:0"
NS_MODERATE = "urn:xmpp:message-moderate:1"
PERSISTENT = {"muc#roomconfig_persistentroom": True}
MODERATION_DIR = "/usr/lib/prosody/modules/mod_muc_moderation"


def make_env(prosody_factory, storage, tmp_path=None, moderation=False, **kw):
    storage = dict(storage)
    pg = storage.pop("_pg", None)
    modules = ["e2e_spy", "muc_mam"]
    if moderation:
        modules.append("muc_moderation")
        # only that module of the package: the directory it is in also
        # holds Prosody 0.12's own modules, which 13 must not load
        plugins = tmp_path / "community"
        plugins.mkdir()
        os.symlink(MODERATION_DIR, plugins / "mod_muc_moderation")
        kw["plugin_paths"] = [PLUGIN_DIR, str(plugins)]
    host_options = {"minimix_archive_in_mam": True,
                    # the file store's pass writes withdrawals this often
                    "minimix_withdraw_interval": 2}
    host_options.update(kw.pop("host_options", {}))
    env = prosody_factory(**storage, muc_options={"modules_enabled": modules},
                          host_options=host_options, **kw)
    env.pg = pg
    return env


def room_sid(s, room):
    for sid in s.xml.findall("{%s}stanza-id" % NS_SID):
        if sid.get("by") == room:
            return sid.get("id")
    return None


async def in_room(w, name):
    """carol creates the room; alice's phone, laptop and tablet and bob
    join.  Returns (room, carol, bob, phone, laptop, tablet)."""
    room = w.room(name)
    carol = await w.connect("carol", "desk")
    await create_room(carol, room, "carol", whois="anyone", subject="Retractions",
                      config=PERSISTENT)
    bob = await w.connect("bob", "desk")
    phone = await w.connect("alice", "phone")
    laptop = await w.connect("alice", "laptop")
    tablet = await w.connect("alice", "tablet")
    await join_room(bob, room, "bob")
    for c in (phone, laptop, tablet):
        await join_room(c, room, "alice")
    return room, carol, bob, phone, laptop, tablet


async def say(speaker, room, phone, text):
    """speaker says text; returns the room's stanza-id of it (as alice's
    phone got it)."""
    m = phone.mark()
    speaker.groupchat(room, text)
    got = await phone.wait_for(P(name="message", frm_bare=room, body=text), since=m,
                               what="%r at the phone" % text)
    sid = room_sid(got, room)
    assert sid, "no stanza-id by the room: %s" % got
    return sid


async def sent_to_room(client, room, phone, xml, marker):
    """client sends xml (a groupchat message with marker as its id); wait
    until alice's phone has it: the module handled it by then."""
    m = phone.mark()
    client.send(xml)
    await phone.wait_for(P(name="message", frm_bare=room, id=marker), since=m,
                         what="%s at the phone" % marker)


def retract_xml(room, sid, marker, form=1):
    if form == 1:
        inner = "<retract xmlns='%s' id='%s'/>" % (NS_RETRACT, sid)
    else:
        inner = ("<apply-to xmlns='%s' id='%s'><retract xmlns='%s'/></apply-to>"
                 % (NS_FASTEN, sid, NS_RETRACT0))
    return "<message to='%s' type='groupchat' id='%s'>%s</message>" % (room, marker, inner)


def retracted(s):
    return s.xml.find("{%s}retracted" % NS_RETRACT)


async def away_catch_up(w, room, name, maxstanzas):
    """alice's device name joins again with maxstanzas; its catch-up, all
    of its room messages between self-presence and subject."""
    c = await w.connect("alice", name)
    _, got = await join_room(c, room, "alice", history={"maxstanzas": maxstanzas})
    selfs = [i for i, s in enumerate(got) if s.name == "presence" and s.is_self_presence]
    msgs = [s for s in got[selfs[-1] + 1:-1] if s.name == "message"]
    await c.disconnect()
    return msgs


def entry_by_sid(entries, sid):
    found = [e for e in entries if e["sid"] == sid]
    assert len(found) == 1, entries
    return found[0]


async def copies(env, room, sid, pred, what):
    """alice's own archive (minimix_archive_in_mam) once its entry with sid
    satisfies pred."""
    deadline = time.monotonic() + 20
    while True:
        entries = archive_entries(env, "alice", "archive", room=room)
        found = [e for e in entries if e["sid"] == sid]
        if found and pred(found[0]):
            return found[0]
        assert time.monotonic() < deadline, "alice's archive never showed %s: %s" % (what, entries)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("form", [1, 0], ids=["retract1", "fastened0"])
def test_a_retraction_while_away_never_brings_the_body_back(prosody_factory, storage, form):
    """XEP-0424 §4 (groupchat, by the room's stanza-id): a device that was
    away gets the tombstone in place of the retracted message, from the log
    and from the ring; the log and the account's archive copy hold it."""
    if form == 0 and storage.get("storage") != "internal":
        pytest.skip("the older form is the same code path; one storage suffices")
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        room, carol, bob, phone, laptop, tablet = await in_room(w, "retract%d" % form)
        await laptop.disconnect()
        await tablet.disconnect()
        await say(carol, room, phone, "before")
        secret = await say(carol, room, phone, "secret")
        await say(carol, room, phone, "after")
        await copies(env, room, secret, lambda e: e["body"] == "secret", "the copy")
        await sent_to_room(carol, room, phone, retract_xml(room, secret, "r-1", form), "r-1")
        entries = await wait_entries(env, room, lambda es: any(
            e["sid"] == secret and e["body"] is None for e in es), "the tombstone")
        assert [e["body"] for e in entries if e["body"]].count("secret") == 0, entries
        await copies(env, room, secret, lambda e: e["body"] is None, "the copy's tombstone")
        # the log (asking more than the ring holds) and the ring (3)
        for name, n in (("laptop", 50), ("tablet", 3)):
            msgs = await away_catch_up(w, room, name, n)
            assert [m.body for m in msgs if m.body] == ["before", "after"], (name, msgs)
            tomb = [m for m in msgs if retracted(m) is not None]
            assert len(tomb) == 1 and room_sid(tomb[0], room) == secret, (name, [str(m) for m in msgs])
            assert msgs.index(tomb[0]) == 1, (name, [str(m) for m in msgs])
            assert all("secret" not in str(m) for m in msgs), (name, [str(m) for m in msgs])
    run(env, scenario, timeout=120)


def test_someone_elses_retraction_changes_nothing(prosody_factory, storage):
    """XEP-0424 §6: only the sender may retract; bob's retraction of
    carol's message leaves the log, the copy and the catch-up as they were."""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        room, carol, bob, phone, laptop, tablet = await in_room(w, "not-yours")
        await laptop.disconnect()
        said = await say(carol, room, phone, "carol's own")
        await copies(env, room, said, lambda e: e["body"] == "carol's own", "the copy")
        await sent_to_room(bob, room, phone, retract_xml(room, said, "r-bob"), "r-bob")
        msgs = await away_catch_up(w, room, "laptop", 50)
        assert [m.body for m in msgs if m.body] == ["carol's own"], [str(m) for m in msgs]
        assert not [m for m in msgs if retracted(m) is not None]
        assert entry_by_sid(archive_entries(env, room, "minimix_log"), said)["body"] == "carol's own"
        assert (await copies(env, room, said, lambda e: True, "the copy"))["body"] == "carol's own"
        # and it does not stand in the way of the sender's own
        await sent_to_room(carol, room, phone, retract_xml(room, said, "r-carol"), "r-carol")
        await wait_entries(env, room, lambda es: any(
            e["sid"] == said and e["body"] is None for e in es), "the tombstone")
    run(env, scenario, timeout=120)


@pytest.mark.skipif(not os.path.isdir(MODERATION_DIR), reason="prosody-modules is not installed")
def test_a_moderation_tombstones_the_message(prosody_factory, tmp_path):
    """XEP-0425 through mod_muc_moderation: carol (owner, so moderator)
    moderates bob's message with a reason; the room announces it from its
    bare JID; alice's laptop, away meanwhile, gets a tombstone with the
    reason in its place; the log and the archive copy hold it."""
    env = make_env(prosody_factory, {"storage": "internal"}, tmp_path=tmp_path, moderation=True)

    async def scenario(w):
        room, carol, bob, phone, laptop, tablet = await in_room(w, "moderated")
        await laptop.disconnect()
        await tablet.disconnect()
        spam = await say(bob, room, phone, "spam spam")
        await say(bob, room, phone, "fine")
        await copies(env, room, spam, lambda e: e["body"] == "spam spam", "the copy")
        m = phone.mark()
        iq = carol.iq(room, "set", "<apply-to xmlns='%s' id='%s'><moderate xmlns='%s'>"
                      "<retract xmlns='%s'/><reason>no spam</reason></moderate></apply-to>"
                      % (NS_FASTEN, spam, NS_MODERATE0, NS_RETRACT0))
        await carol.wait_for(P(name="iq", id=iq, type="result"), what="the moderation's result")
        await phone.wait_for(P(name="message", frm=room), since=m, what="the announcement")
        await wait_entries(env, room, lambda es: any(
            e["sid"] == spam and e["body"] is None for e in es), "the tombstone")
        await copies(env, room, spam, lambda e: e["body"] is None, "the copy's tombstone")
        msgs = await away_catch_up(w, room, "laptop", 50)
        assert [x.body for x in msgs if x.body] == ["fine"], [str(x) for x in msgs]
        tomb = [x for x in msgs if retracted(x) is not None]
        assert len(tomb) == 1 and room_sid(tomb[0], room) == spam, [str(x) for x in msgs]
        assert retracted(tomb[0]).findtext("{%s}reason" % NS_RETRACT) == "no spam", str(tomb[0])
        assert retracted(tomb[0]).find("{%s}moderated" % NS_MODERATE) is not None, str(tomb[0])
    run(env, scenario, timeout=120)
