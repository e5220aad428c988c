"""End-to-end tests of what happens around the account's automatic re-join
of a room (after a removal with 332, system shutdown, or 333, technical
problem): the devices that join meanwhile, and the catch-up of the time
the account was out.

alice@localhost (the host runs mod_minimix) has the sessions phone,
laptop and tablet; bob on plain.localhost (no module) owns the rooms and
speaks; carol@localhost, a second account on the module's host, stays in
the room while alice is out, so the room log keeps what is said then.
The MUC component loads test/e2e/plugins/mod_e2e_muc_control.lua to
remove alice with a code or to hold her joins (see test_semantics.py).
minimix_rejoin_delay is an hour: a re-join after a 332 happens only when
a device asks to join, so nothing depends on how long anything takes.
"""

from .clients import P, join_room, create_room
from .test_catchup import catch_up, logged
from .test_foundation import check_join_sequence
from .test_semantics import (control, marks, self_unavailable, alice_presence,
                             join_sequence_after, make_env as semantics_env)
from .world import run

import pytest


def make_env(prosody_factory, **host_options):
    ho = {"minimix_rejoin_delay": 3600}
    ho.update(host_options)
    return semantics_env(prosody_factory, host_options=ho)


async def say(speaker, room, receivers, texts):
    """speaker says texts; every receiver gets the last one."""
    ms = marks(*receivers)
    for t in texts:
        speaker.groupchat(room, t)
    for c, m in zip(receivers, ms):
        await c.wait_for(P(name="message", frm_bare=room, body=texts[-1]), since=m,
                         what="%r at %s" % (texts[-1], c.name))


def test_device_joining_during_the_rejoin_wait_uses_the_stored_password(prosody_factory):
    """XEP-0045 7.2.6 (password-protected room) with the account as the
    occupant: the account entered with the password; the room removes it
    with 332 (system shutdown) and the account waits to join again.  A new
    device joins meanwhile without the password (as later devices may): the
    account joins now with the password it entered with, the device gets
    the join sequence (self-presence with its own id), the waiting phone
    gets it again, and the membership stays (no <not-authorized/>, the room
    traffic reaches both)."""
    env = make_env(prosody_factory)

    async def scenario(w):
        room = w.room("locked-wait")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", password="s3cret")
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice", password="s3cret")
        await bob.wait_for(alice_presence(room, type="available"))
        mb, mp = marks(bob, p)
        assert await control(bob, "remove", room, code="332") == 1
        u = await p.wait_for(self_unavailable(room, codes={332}), since=mp,
                             what="the 332 removal")
        gone = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                                  what="alice's removal at bob")
        l = await w.connect("alice", "laptop")
        _, seq = await join_room(l, room, "alice", id="no-pw-wait")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid, history=None)
        assert self_p.id == "no-pw-wait", self_p
        seq = await join_sequence_after(p, room, u.index + 1, "the phone's join sequence again")
        check_join_sequence(seq, room, "alice", ["bob"], "", p.jid, history=None)
        await bob.wait_for(alice_presence(room, type="available"), since=gone.index + 1,
                           what="alice entering again, at bob")
        await say(bob, room, [p, l], ["still in"])
        assert "not-authorized" not in env.read_log()
    run(env, scenario)


@pytest.mark.parametrize("code", [332, 333])
def test_catch_up_across_a_rejoin_reads_the_gap_from_the_log(prosody_factory, code):
    """XEP-0045 7.2.14 (discussion history) for a device that joins after
    the account was out of the room for a while and came back.  The room
    keeps 2 messages of history; alice's phone saw before 1..6; alice is
    removed (332, or 333 with her re-join held by the room) while carol,
    another account of the host, stays in and the log keeps gap 1..5; the
    account joins again (the room's history of it holds 2 at most); bob
    says one more.  The tablet asking for 5 messages gets gap 2..5 and the
    last, once each, in order: the messages of the gap the account missed
    come from the room log, not what the account held from before the gap."""
    env = make_env(prosody_factory)
    before = ["before %d" % i for i in range(1, 7)]
    gap = ["gap %d" % i for i in range(1, 6)]

    async def scenario(w):
        room = w.room("gap-%d" % code)
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone",
                          config={"muc#roomconfig_persistentroom": True,
                                  "muc#roomconfig_historylength": 2})
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice", history={"maxstanzas": 0})
        carol = await w.connect("carol", "desk", host="localhost")
        await join_room(carol, room, "carol", history={"maxstanzas": 0})
        await say(bob, room, [p, carol], before)
        mb, mp = marks(bob, p)
        if code == 333:
            # the account joins again at once: the room holds that join
            # while the gap is said
            await control(bob, "hold", room, seconds="4")
            assert await control(bob, "kickable", room) >= 1
        else:
            assert await control(bob, "remove", room, code="332") == 1
        u = await p.wait_for(self_unavailable(room, codes={code}), since=mp,
                             what="the %d removal" % code)
        gone = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                                  what="alice's removal at bob")
        await say(bob, room, [carol], gap)
        await logged(env, room, gap)
        if code == 332:
            # a device's join makes the account join again now
            l = await w.connect("alice", "laptop")
            await join_room(l, room, "alice")
        await join_sequence_after(p, room, u.index + 1, "the phone's join sequence again")
        await bob.wait_for(alice_presence(room, type="available"), since=gone.index + 1,
                           what="alice entering again, at bob")
        await say(bob, room, [p, carol], ["after"])
        await logged(env, room, ["after"])
        t = await w.connect("alice", "tablet")
        _, got = await join_room(t, room, "alice", history={"maxstanzas": 5})
        assert [b for b, _ in catch_up(got, room)] == gap[1:] + ["after"], \
            [str(s) for s in got]
    run(env, scenario, timeout=120)


def test_later_device_joins_past_a_subject_and_self_presence_beyond_the_byte_limits(
        prosody_factory):
    """XEP-0045 7.2.3 and 7.2.15 (a join ends with the self-presence, then
    the subject) with minimix_max_membership_bytes at 1000: the room's
    subject (3000 bytes) and the account's self-presence (carrying a status
    of 3000 bytes from the phone) do not fit, so the module keeps neither.
    The phone gets both live; a later device still completes its join: a
    self-presence (110, its own join id) built by the module, with the
    account's XEP-0421 occupant-id as the room gave it, and an empty
    subject, and then the room's traffic."""
    env = make_env(prosody_factory, minimix_max_membership_bytes=1000)
    topic = "t" * 3000

    async def scenario(w):
        room = w.room("big-subject")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject=topic)
        p = await w.connect("alice", "phone")
        mp = p.mark()
        p.join(room, "alice", extra="<status>%s</status>" % ("s" * 3000))
        got = await p.wait_for(P(name="message", frm_bare=room,
                                 fn=lambda s: s.subject is not None and s.body is None),
                               since=mp, what="the phone's subject")
        assert got.subject == topic
        own = p.matching(P(name="presence", frm=room + "/alice", codes={110}), since=mp)
        oid = own[0].xml.find("{urn:xmpp:occupant-id:0}occupant-id")
        assert oid is not None and oid.get("id"), own[0]
        l = await w.connect("alice", "laptop")
        _, seq = await join_room(l, room, "alice", id="later-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid, history=None)
        assert self_p.id == "later-1", self_p
        assert len(str(self_p)) < 1000, self_p
        stub_oid = self_p.xml.find("{urn:xmpp:occupant-id:0}occupant-id")
        assert stub_oid is not None and stub_oid.get("id") == oid.get("id"), self_p
        await say(bob, room, [p, l], ["past the limits"])
    run(env, scenario)
