"""End-to-end test of a session that XEP-0198 stream management keeps
hibernating and that resumes: once resumed it holds the account in its
rooms again, as any connected session does.

The account alice@localhost is the occupant (sessions phone and laptop);
the observer bob lives on plain.localhost, a host without the module, so
that what he sees is what the room sends.
"""

import asyncio

import slixmpp

from .clients import P, Client, join_room, create_room
from .test_persistence import wait_log
from .world import run


async def resume(w, old, timeout=10):
    """A new connection that resumes old's hibernating session (XEP-0198
    5): SASL, then <resume previd h/> instead of a resource binding, with
    old's stream id and the count of stanzas it handled (slixmpp's
    stream management answers the server's <r/> from then on).  Returns a
    Client recording what the resumed session receives."""
    c = Client(old.jid, old.password, old.address[1], host=old.address[0],
               name=old.name + " (resumed)")
    w.clients.append(c)
    c._changed = asyncio.Event()
    x = slixmpp.ClientXMPP(old.jid, old.password)
    c.xmpp = x
    x.add_filter("in", c._record)
    x.register_plugin("xep_0198")
    sm = x.plugin["xep_0198"]
    sm.sm_id, sm.handled, sm.allow_resume = old.sm_id, old._sm_h, True
    loop = asyncio.get_running_loop()
    resumed = loop.create_future()

    def done(ok):
        def cb(ev):
            if not resumed.done():
                resumed.set_result(ok)
        return cb

    x.add_event_handler("session_resumed", done(True))
    x.add_event_handler("sm_failed", done(False))
    x.add_event_handler("session_start", done(False))
    x.connect(address=c.address, use_ssl=False, force_starttls=False, disable_starttls=True)
    try:
        ok = await asyncio.wait_for(resumed, timeout)
    except asyncio.TimeoutError:
        x.abort()
        raise ConnectionError("%s: no <resumed/> within %ss" % (old.jid, timeout))
    if not ok:
        raise AssertionError("%s: the resumption failed:\n%s" % (old.jid, c.transcript()))
    return c


def test_resumed_session_holds_the_account_in(prosody_factory):
    """XEP-0045 7.14 (exiting a room) with the account as the occupant, and
    XEP-0198 5 (resumption): the phone's connection drops and its session
    hibernates, then resumes on a new connection.  The laptop, joined too,
    leaves: it gets its own unavailable self-presence, but the room sees no
    leave of the account, since the resumed phone is connected and joined
    (while it hibernated, the laptop's leave would have been the
    account's).  The phone, resumed, still gets what is said in the room."""
    env = prosody_factory(smacks_hibernation_time=120, debug=True)

    async def scenario(w):
        room = w.room("resumed")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone", presence=False)
        enabled = await p.enable_sm(resume=True)
        p.sm_id = enabled.xml.get("id")
        assert p.sm_id, "no resumption offered: %s" % enabled
        p.send("<presence/>")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        await p.abort()
        await wait_log(env, r"Session going into hibernation", "the phone's session hibernating")
        p2 = await resume(w, p)

        mb, ml = bob.mark(), l.mark()
        l.leave(room, "alice", id="laptop-leave")
        out = await l.wait_for(P(name="presence", frm=room + "/alice", type="unavailable",
                                 codes={110}), since=ml, what="the laptop's leave")
        assert out.id == "laptop-leave", out
        await bob.assert_nothing(P(name="presence", frm=room + "/alice", type="unavailable"),
                                 since=mb, what="alice leaving (the resumed phone is joined)")

        m2 = p2.mark()
        bob.groupchat(room, "still there?")
        await p2.wait_for(P(name="message", frm=room + "/bob", body="still there?"), since=m2,
                          what="bob's message at the resumed phone")
        assert not p2.matching(P(name="presence", frm=room + "/alice", type="unavailable"),
                               since=0), p2.transcript()
    run(env, scenario)
