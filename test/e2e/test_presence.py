"""End-to-end tests of the presences the module makes in a room's name.

alice@localhost (the host runs mod_minimix) has the sessions phone and
laptop; bob on plain.localhost (no module) owns the room.  Prosody's MUC
gives every occupant a XEP-0421 occupant id.

What is proven:

1. XEP-0421 on made presences: a device that leaves while another keeps
   the account in gets an unavailable self-presence made by the module;
   it carries the account's occupant-id as the room gave it, and so does
   the last device's, when the account leaves.
2. Quiet presence: a second device joining with other XEP-0115
   capabilities (and otherwise the same presence) makes the room send no
   presence of the account to its occupants, and the device gets its
   self-presence exactly once; the room never sees a device's caps.
"""

from .clients import P, join_room, create_room
from .test_foundation import subject_message
from .test_semantics import alice_in_room, make_env, marks, self_unavailable
from .world import run

NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_CAPS = "http://jabber.org/protocol/caps"


def caps(ver):
    return "<c xmlns='%s' hash='sha-1' node='https://example.org/%s' ver='%s'/>" % (
        NS_CAPS, ver, ver)


def occupant_id(s):
    e = s.xml.find("{%s}occupant-id" % NS_OCCUPANT_ID)
    return None if e is None else e.get("id")


def test_unavailable_self_presence_carries_the_occupant_id(prosody_factory):
    """XEP-0421 3 (the room adds the occupant id to every presence of the
    occupant): the phone's join self-presence has the account's occupant
    id; the phone leaves while the laptop stays (the module reflects the
    leave): its unavailable self-presence has the same id; the laptop
    leaves (the account's leave): so has its own."""
    env = make_env(prosody_factory)

    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "oid")
        joined = p.matching(P(name="presence", frm=room + "/alice", codes={110}))
        oid = occupant_id(joined[0])
        assert oid, joined[0]
        seen_by_bob = bob.matching(P(name="presence", frm=room + "/alice"))
        assert occupant_id(seen_by_bob[0]) == oid, seen_by_bob[0]

        mp, ml = marks(p, l)
        p.leave(room, "alice", id="p-leave")
        u = await p.wait_for(self_unavailable(room), since=mp, what="the phone's unavailable")
        assert occupant_id(u) == oid, u

        l.leave(room, "alice", id="l-leave")
        u = await l.wait_for(self_unavailable(room), since=ml, what="the laptop's unavailable")
        assert occupant_id(u) == oid, u
    run(env, scenario)


def test_a_second_device_joining_is_not_broadcast(prosody_factory):
    """XEP-0045 7.2 (a join is broadcast to the occupants) as the account
    sees it: the laptop's join is not the account's, and its capabilities
    are not what a person sees.  The phone joins with caps A; bob sees the
    account's presence, without caps.  The laptop joins with caps B: it
    gets one self-presence (110, with its join id) and the subject; then
    it says something: bob gets the message and no presence of alice
    before it, nor does the phone; the laptop still has one
    self-presence."""
    env = make_env(prosody_factory)

    async def scenario(w):
        room = w.room("quiet")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        mb = bob.mark()
        mp = p.mark()
        p.join(room, "alice", extra=caps("phone-A"))
        await p.wait_for(subject_message(room), since=mp, what="the phone's join")
        seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                                  since=mb, what="alice's join at bob")
        assert seen.xml.find("{%s}c" % NS_CAPS) is None, seen

        l = await w.connect("alice", "laptop")
        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        l.join(room, "alice", id="laptop-join", extra=caps("laptop-B"))
        await l.wait_for(subject_message(room), since=ml, what="the laptop's join")
        l.groupchat(room, "marker")
        await bob.wait_for(P(name="message", body="marker"), since=mb, what="the marker at bob")
        await p.wait_for(P(name="message", body="marker"), since=mp, what="the marker at the phone")
        await l.wait_for(P(name="message", body="marker"), since=ml, what="the marker at the laptop")
        for c, m in ((bob, mb), (p, mp)):
            got = c.matching(P(name="presence", frm=room + "/alice"), since=m)
            assert got == [], "%s got a presence of alice: %s" % (c.name, got)
        own = l.matching(P(name="presence", frm=room + "/alice", codes={110}), since=ml)
        assert len(own) == 1 and own[0].id == "laptop-join", l.transcript(ml)
        assert own[0].xml.find("{%s}c" % NS_CAPS) is None, own[0]
    run(env, scenario)
