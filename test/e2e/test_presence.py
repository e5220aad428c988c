"""End-to-end tests of the presences the module makes in a room's name.

alice@localhost (the host runs mod_minimix) has the sessions phone and
laptop; bob on plain.localhost (no module) owns the room.  Prosody's MUC
gives every occupant a XEP-0421 occupant id.

What is proven:

1. XEP-0421 on made presences: a device that leaves while another keeps
   the account in gets an unavailable self-presence made by the module;
   it carries the account's occupant-id as the room gave it, and so does
   the last device's, when the account leaves.
"""

from .clients import P, join_room
from .test_semantics import alice_in_room, make_env, marks, self_unavailable
from .world import run

NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"


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
