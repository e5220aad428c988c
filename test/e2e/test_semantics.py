"""End-to-end tests of mod_minimix's room semantics beyond the foundation:
removals, nicknames, private messages, IQs, the account's presence and
joins that race.

As in test_foundation.py: alice@localhost (the host runs mod_minimix) has
the sessions phone = P, laptop = L and tablet = T; the observers bob and
carol live on plain.localhost, without the module, so what they see is
what the room sends.  Each test states in its docstring the XEP behaviour
it proves.  Run the same tests with MINIMIX_E2E_PLAIN=1 to see them against
plain Prosody MUC.

The MUC component also loads test/e2e/plugins/mod_e2e_muc_control.lua, a
test-only plugin that makes the room do what Prosody 0.12 cannot be asked
to do over XMPP: forget an occupant silently, react to a bounce (333),
remove an occupant with a status code (332), hold joins for a while.

Negative checks ("X gets nothing") mostly use sync(): a ping round trip to
the server, first from the client that acted, then from the observers.
Prosody handles a local stanza and everything it causes in one go, so once
an observer has its ping answer it has everything that stanza caused; no
assertion depends on how long anything took.  Where a timer is involved a
quiet window (w.quiet()) is used as in test_foundation.py.
"""

import pytest

from .clients import (P, from_room, join_room, create_room, config_form, new_id,
                      NS_MUC_USER, NS_MUC_OWNER)
from .test_foundation import check_join_sequence, subject_message
from .world import run

ALICE = "alice@localhost"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_VCARD = "vcard-temp"
NS_MAM = "urn:xmpp:mam:2"
NS_CLIENT = "jabber:client"
NS_CONTROL = "urn:minimix:e2e:muc"   # mod_e2e_muc_control

MUC_TEST_MODULES = ["e2e_spy", "e2e_muc_control"]


def q(tag, ns):
    return "{%s}%s" % (ns, tag)


# ---- environment ------------------------------------------------------------------

def make_env(prosody_factory, muc_modules=(), host_options=None, **kw):
    """A Prosody whose MUC component also loads mod_e2e_muc_control (and
    muc_modules).  minimix_rejoin_delay is 1 s so that a 332 re-join comes
    soon."""
    muc_options = dict(kw.pop("muc_options", {}))
    muc_options["modules_enabled"] = MUC_TEST_MODULES + list(muc_modules)
    ho = {"minimix_rejoin_delay": 1}
    ho.update(host_options or {})
    return prosody_factory(muc_options=muc_options, host_options=ho, **kw)


@pytest.fixture
def env(prosody_factory):
    return make_env(prosody_factory)


# ---- helpers ----------------------------------------------------------------------

def domain_of(jid):
    return jid.split("@", 1)[-1].split("/", 1)[0]


async def sync(*clients):
    """A ping round trip to its own server from each client, in order.
    Call it on the client that acted first, then on the observers: when an
    observer's answer is in, whatever the server routed to it before (all
    that the actor's stanzas caused) is in its log too."""
    for c in clients:
        m = c.mark()
        id = c.ping(domain_of(c.jid), id=new_id("sync"))
        await c.wait_for(P(name="iq", id=id), since=m, what="sync ping answer")


def none_since(client, pred, since, what):
    bad = client.matching(pred, since)
    assert not bad, "%s: must not receive %s, got:\n%s" % (client.name, what,
                                                          "\n".join(map(str, bad)))


def only(client, pred, since, what):
    """Exactly one stanza matching pred since `since`; returns it."""
    got = client.matching(pred, since)
    assert len(got) == 1, "%s: expected exactly one %s, got %d:\n%s" % (
        client.name, what, len(got), client.transcript(since))
    return got[0]


def marks(*clients):
    return [c.mark() for c in clients]


async def iq_ok(client, to, type, payload, what):
    """Send an IQ, wait for its answer, fail unless it is a result."""
    m = client.mark()
    id = client.iq(to, type, payload)
    r = await client.wait_for(P(name="iq", id=id), since=m, what=what)
    assert r.type == "result", "%s failed: %s" % (what, r)
    return r


def admin_item(reason=None, **attrs):
    inner = "<reason>%s</reason>" % reason if reason else ""
    a = "".join(" %s='%s'" % kv for kv in attrs.items())
    return "<query xmlns='%s'><item%s>%s</item></query>" % (NS_MUC_ADMIN, a, inner)


async def configure(owner, room, fields):
    """XEP-0045 10.2: the owner submits the room configuration form."""
    return await iq_ok(owner, room, "set", "<query xmlns='%s'>%s</query>"
                       % (NS_MUC_OWNER, config_form(fields)), "room configuration")


async def control(client, op, room, jid=ALICE, **attrs):
    """Ask mod_e2e_muc_control to act on room (see the plugin)."""
    m = client.mark()
    id = new_id("control")
    a = "".join(" %s='%s'" % kv for kv in dict(op=op, room=room, jid=jid, **attrs).items())
    client.send("<message to='%s' id='%s'><control xmlns='%s'%s/></message>"
                % (room.split("@", 1)[1], id, NS_CONTROL, a))
    r = await client.wait_for(P(name="message", id=id), since=m, what="control %s" % op)
    done = r.xml.find(q("done", NS_CONTROL))
    assert done is not None, "control %s failed: %s" % (op, r)
    return int(done.get("count"))


async def alice_in_room(w, name, subject=None, sessions=("phone", "laptop"), config=None,
                        password=None):
    """bob creates a non-anonymous room (as owner); alice's sessions join it
    one after the other.  Returns (room, bob, [sessions])."""
    room = w.room(name)
    bob = await w.connect("bob", "desk")
    await create_room(bob, room, "bob", whois="anyone", subject=subject, config=config,
                      password=password)
    out = []
    for res in sessions:
        c = await w.connect("alice", res)
        await join_room(c, room, "alice", password=password)
        out.append(c)
    return room, bob, out


def self_unavailable(room, nick="alice", codes=()):
    return P(name="presence", frm="%s/%s" % (room, nick), type="unavailable",
             codes={110} | set(codes))


def alice_presence(room, nick="alice", **kw):
    """A presence of alice's occupant (as bob sees it)."""
    return P(name="presence", frm="%s/%s" % (room, nick), **kw)


def show_of(s):
    e = s.child("show")
    return None if e is None else (e.text or "")


def status_of(s):
    e = s.child("status")
    return None if e is None else (e.text or "")


async def join_sequence_after(client, room, since, what):
    """The stanzas from the room from `since` up to the subject message."""
    seq = await client.collect(subject_message(room), since=since, what=what)
    return [s for s in seq if s.frm_bare == room]


# ==== 1. removals ================================================================

@pytest.mark.parametrize("how", ["kick", "ban"])
def test_kick_or_ban_reaches_every_joined_session_and_ends_the_membership(env, how):
    """XEP-0045 8.2 (kicking an occupant: unavailable presence with status
    110 and 307, role none, the moderator's reason) and 9.1 (banning a user:
    110 and 301, affiliation outcast): the occupant is the account, so every
    joined session (P and L) gets the room's removal, a session that did not
    join (T) nothing; the others see the occupant leave with 307/301.  The
    membership ends: the room's traffic stops, and the account's next join
    is a real join the room answers (7.2.3 sequence after a kick; after a
    ban 7.2.7 forbidden, to the asking session alone, with its id; after
    the ban is lifted, a normal join)."""
    code = 307 if how == "kick" else 301

    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, how, subject="Removal")
        t = await w.connect("alice", "tablet")
        mb, mp, ml, mt = marks(bob, p, l, t)
        if how == "kick":
            await iq_ok(bob, room, "set", admin_item(nick="alice", role="none", reason="Behave"),
                        "kick")
        else:
            await iq_ok(bob, room, "set",
                        admin_item(jid=ALICE, affiliation="outcast", reason="Behave"), "ban")
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={code}), since=m,
                                 what="alice's removal (%d) at %s" % (code, c.name))
            assert u.to == c.jid, u
            assert u.item is not None and u.item.get("role") == "none", u
            if how == "ban":
                assert u.item.get("affiliation") == "outcast", u
            reason = u.muc_user.find(q("item", NS_MUC_USER) + "/" + q("reason", NS_MUC_USER))
            assert reason is not None and reason.text == "Behave", "reason lost: %s" % u
        seen = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                                  what="alice's removal at bob")
        assert code in seen.codes and 110 not in seen.codes, seen

        # The membership is over: nothing of the room reaches alice any more.
        mb2 = bob.mark()
        bob.groupchat(room, "after the %s" % how)
        await bob.wait_for(P(name="message", body="after the %s" % how), since=mb2)
        await sync(bob, p, l, t)
        for c, m in ((p, mp), (l, ml)):
            only(c, P(name="presence", frm_bare=room), m, "presence from the room")
            none_since(c, P(name="message", frm_bare=room), m, "room messages after the removal")
        none_since(t, from_room(room), mt, "room traffic at T (never joined)")

        if how == "ban":
            mb, mp, ml, mt = marks(bob, p, l, t)
            p.join(room, "alice", id="banned-join-1")
            err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                                   what="join error for the banned account")
            assert err.error == ("auth", "forbidden"), err
            assert err.id == "banned-join-1" and err.to == p.jid, err
            await sync(p, l, t, bob)
            assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
            none_since(l, from_room(room), ml, "room traffic at L")
            none_since(t, from_room(room), mt, "room traffic at T")
            none_since(bob, alice_presence(room), mb, "a presence of alice")
            await iq_ok(bob, room, "set", admin_item(jid=ALICE, affiliation="none"), "unban")

        # The account can enter again: the room sees a new join.
        joiner = p if how == "kick" else l
        other = l if how == "kick" else p
        mb, mo = marks(bob, other)
        _, seq = await join_room(joiner, room, "alice", id="again-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "Removal", joiner.jid,
                                     history=["after the %s" % how])
        assert self_p.id == "again-1", self_p
        await bob.wait_for(alice_presence(room, type="available"), since=mb,
                           what="alice entering again, at bob")
        await sync(joiner, other)
        none_since(other, from_room(room), mo, "room traffic at the session that did not rejoin")
    run(env, scenario)


@pytest.mark.parametrize("how", ["affiliation", "members-only"])
def test_members_only_removal_reaches_every_joined_session(env, how):
    """XEP-0045 9.4 / 9.5 (a member's affiliation removed in a members-only
    room: unavailable presence with status 321) and 10.2 (the room made
    members-only: non-members removed with status 322): every joined
    session of the account gets the unavailable presence with 110 and the
    code; the membership ends, so the next join goes to the room, which
    refuses it with 7.2.8 registration-required, to the asking session
    only, with its id; once alice is a member again, a join succeeds."""
    code = 321 if how == "affiliation" else 322

    async def scenario(w):
        config = {"muc#roomconfig_membersonly": True} if how == "affiliation" else None
        room = w.room("members-" + how)
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", config=config)
        if how == "affiliation":
            await iq_ok(bob, room, "set", admin_item(jid=ALICE, affiliation="member"),
                        "make alice a member")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mb, mp, ml = marks(bob, p, l)
        if how == "affiliation":
            await iq_ok(bob, room, "set", admin_item(jid=ALICE, affiliation="none"),
                        "remove alice's membership")
        else:
            await configure(bob, room, {"muc#roomconfig_membersonly": True})
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={code}), since=m,
                                 what="alice's removal (%d) at %s" % (code, c.name))
            assert u.to == c.jid and u.item.get("role") == "none", u
        if how == "affiliation":
            # Prosody 0.12 tells the others of a 322 removal only when the
            # removed occupant's old role is passed on; members_only.lib.lua
            # does not pass it, so bob hears nothing then.
            seen = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                                      what="alice's removal at bob")
            assert code in seen.codes, seen
        await sync(bob, p, l)
        for c, m in ((p, mp), (l, ml)):
            only(c, from_room(room), m, "room traffic after the removal")

        mb, mp, ml = marks(bob, p, l)
        p.join(room, "alice", id="nonmember-join-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="join error for a non-member")
        assert err.error == ("auth", "registration-required"), err
        assert err.id == "nonmember-join-1" and err.to == p.jid, err
        await sync(p, l, bob)
        assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
        none_since(l, from_room(room), ml, "room traffic at L")
        none_since(bob, alice_presence(room), mb, "a presence of alice")

        await iq_ok(bob, room, "set", admin_item(jid=ALICE, affiliation="member"),
                    "make alice a member again")
        mb = bob.mark()
        _, seq = await join_room(l, room, "alice", id="member-join-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid, history=None)
        assert self_p.id == "member-join-1", self_p
        await bob.wait_for(alice_presence(room, type="available"), since=mb,
                           what="alice entering again, at bob")
    run(env, scenario)


def test_room_destruction_reaches_every_joined_session(env):
    """XEP-0045 10.9 (destroying a room): each occupant gets an unavailable
    presence whose muc#user <x/> holds <destroy jid='alternate venue'> with
    the owner's <reason/> (and status 110 for the occupant itself); every
    joined session of the account gets it.  The membership ends: a later
    join to the old address is a real join, which the destroyed persistent
    room (Prosody's tombstone) refuses with <gone/> naming the alternate
    venue, to the asking session only; the account can enter the
    alternate venue with the normal join sequence (7.2.3)."""
    async def scenario(w):
        alt = w.room("alternate")
        bob = await w.connect("bob", "desk")
        await create_room(bob, alt, "bob", whois="anyone", subject="New home")
        room = w.room("doomed")
        await create_room(bob, room, "bob", whois="anyone",
                          config={"muc#roomconfig_persistentroom": True})
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml, mt = marks(p, l, t)
        await iq_ok(bob, room, "set", "<query xmlns='%s'><destroy jid='%s'><reason>Moving on"
                    "</reason></destroy></query>" % (NS_MUC_OWNER, alt), "destroy")
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room), since=m,
                                 what="the room's destruction at " + c.name)
            d = u.muc_user.find(q("destroy", NS_MUC_USER))
            assert d is not None and d.get("jid") == alt, "no <destroy/> with the venue: %s" % u
            r = d.find(q("reason", NS_MUC_USER))
            assert r is not None and r.text == "Moving on", "reason lost: %s" % u
            assert u.to == c.jid, u
        await sync(p, l, t)
        for c, m in ((p, mp), (l, ml)):
            only(c, from_room(room), m, "room traffic")
        none_since(t, from_room(room), mt, "room traffic at T")

        # The membership is gone: T's join goes to the (tombstoned) room.
        mp, ml, mt = marks(p, l, t)
        t.join(room, "alice", id="tomb-join-1")
        err = await t.wait_for(P(name="presence", frm_bare=room, type="error"), since=mt,
                               what="join error at T")
        assert err.error == ("cancel", "gone"), \
            "expected the room's <gone/>, got (a cached replay?):\n" + t.transcript(mt)
        assert err.id == "tomb-join-1", err
        await sync(t, p, l)
        assert t.matching(from_room(room), since=mt) == [err], t.transcript(mt)
        none_since(p, from_room(room), mp, "room traffic at P")
        none_since(l, from_room(room), ml, "room traffic at L")

        mb = bob.mark()
        _, seq = await join_room(p, alt, "alice", id="alt-join-1")
        self_p = check_join_sequence(seq, alt, "alice", ["bob"], "New home", p.jid, history=[])
        assert self_p.id == "alt-join-1", self_p
        await bob.wait_for(alice_presence(alt, type="available"), since=mb,
                           what="alice entering the alternate venue")
    run(env, scenario)


@pytest.mark.parametrize("code", [333, 332])
def test_technical_removal_makes_the_account_join_again(env, code):
    """XEP-0045 (status codes 332: removed because of a system shutdown,
    333: removed because of a technical problem, e.g. a bounce; Prosody
    reacts to an error from an occupant's real JID with 333): every joined
    session gets the unavailable self-presence with 110 and the code, then
    the account joins again by itself (332 after minimix_rejoin_delay) and
    every session gets the normal join sequence again (7.2.3: occupants,
    self-presence 110 last, subject); the room sees the account leave and
    enter again, once each, and a session that never joined sees nothing.
    Prosody 0.12 never sends 332, and 333 only for a bounce the module
    never lets through: mod_e2e_muc_control makes the room do it."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "technical-%d" % code, subject="Again")
        t = await w.connect("alice", "tablet")
        mb, mp, ml, mt = marks(bob, p, l, t)
        if code == 333:
            assert await control(bob, "kickable", room) >= 1
        else:
            assert await control(bob, "remove", room, code="332") == 1
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={code}), since=m,
                                 what="the %d removal at %s" % (code, c.name))
            assert u.to == c.jid, u
            seq = await join_sequence_after(c, room, u.index + 1, "the join sequence again")
            check_join_sequence(seq, room, "alice", ["bob"], "Again", c.jid, history=None)
        gone = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                                  what="alice's removal at bob")
        assert code in gone.codes, gone
        await bob.wait_for(alice_presence(room, type="available"), since=gone.index + 1,
                           what="alice entering again, at bob")
        await w.quiet()
        await sync(bob, p, l, t)
        only(bob, alice_presence(room, type="available"), mb, "alice entering again")
        only(bob, alice_presence(room, type="unavailable"), mb, "alice leaving")
        for c, m in ((p, mp), (l, ml)):
            only(c, P(name="presence", frm=room + "/alice", type="unavailable"), m,
                 "unavailable self-presence")
            only(c, P(name="presence", frm=room + "/alice", type="available", codes={110}), m,
                 "self-presence of the re-join")
        none_since(t, from_room(room), mt, "room traffic at T")

        mp, ml = marks(p, l)
        bob.groupchat(room, "welcome back")
        for c, m in ((p, mp), (l, ml)):
            await c.wait_for(P(name="message", body="welcome back"), since=m,
                             what="room traffic after the re-join at " + c.name)
    run(env, scenario)


# ==== 2. nicknames ==============================================================

def test_nick_taken_and_later_session_with_another_nick(env):
    """XEP-0045 7.2.9 (nickname conflict: presence error <conflict/> from
    room/nick, with the join's id) reaches only the asking session, and the
    failed join leaves no membership (L then joins normally, and a room
    message does not reach P).  A later session asking for a nick other
    than the account's (7.2.11 / status 210: the service assigned or
    modified the nick) gets its self-presence from the account's nick with
    110 and 210 and its own id, and the room sees no new occupant."""
    async def scenario(w):
        room = w.room("nicks")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Nicks")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        mb, mp, ml = marks(bob, p, l)
        p.join(room, "bob", id="taken-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="conflict")
        assert err.error == ("cancel", "conflict") and err.id == "taken-1", err
        await sync(p, l, bob)
        assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
        none_since(l, from_room(room), ml, "room traffic at L")
        none_since(bob, alice_presence(room), mb, "a presence of alice")

        _, seq = await join_room(l, room, "alice", id="l-join-1")
        check_join_sequence(seq, room, "alice", ["bob"], "Nicks", l.jid, history=[])
        await bob.wait_for(alice_presence(room, type="available"), since=mb)
        mp = p.mark()
        bob.groupchat(room, "P is not in")
        await l.wait_for(P(name="message", body="P is not in"))

        mb, mt = marks(bob, t)
        t.join(room, "ally", id="t-other-nick-1")
        seq = await join_sequence_after(t, room, mt, "T's join sequence")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "Nicks", t.jid, history=None)
        assert {110, 210} <= self_p.codes, "no 210 for the assigned nick: %s" % self_p
        assert self_p.id == "t-other-nick-1", self_p
        await sync(t, bob, p)
        none_since(bob, P(name="presence", frm_bare=room, fn=lambda s: s.frm != room + "/bob"),
                   mb, "a new occupant (T's nick)")
        none_since(p, from_room(room), mp, "room traffic at P (its join failed)")
    run(env, scenario)


def test_nick_change_from_one_session_changes_the_account_nick(env):
    """XEP-0045 7.6 (changing nickname: available presence to room/newnick
    without the MUC <x/>): the room announces it once (unavailable from the
    old nick with status 303 and <item nick='new'/>, then available from
    the new nick); every joined session gets both, with 110; the session
    that did not join gets nothing; a session joining later (7.2.3), asking
    for the old nick, is answered with the new one and status 210; the
    account speaks as the new nick (7.4)."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "nickchange", subject="Rename")
        t = await w.connect("alice", "tablet")
        mb, mp, ml, mt = marks(bob, p, l, t)
        p.send("<presence to='%s/alice2' id='nc-1'/>" % room)
        new = await bob.wait_for(alice_presence(room, nick="alice2", type="available"),
                                 since=mb, what="alice2 at bob")
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={303}), since=m,
                                 what="303 at " + c.name)
            assert u.item.get("nick") == "alice2" and u.to == c.jid, u
            s = await c.wait_for(P(name="presence", frm=room + "/alice2", type="available",
                                   codes={110}), since=u.index + 1,
                                 what="new self-presence at " + c.name)
            assert s.to == c.jid, s
        await sync(p, bob, l, t)
        old = only(bob, alice_presence(room, type="unavailable"), mb, "303 from the old nick")
        assert 303 in old.codes and old.item.get("nick") == "alice2", old
        assert old.index < new.index, bob.transcript(mb)
        only(bob, alice_presence(room, nick="alice2"), mb, "presence of the new nick")
        for c, m in ((p, mp), (l, ml)):
            assert len(c.matching(P(name="presence", frm_bare=room), since=m)) == 2, \
                c.transcript(m)
        none_since(t, from_room(room), mt, "room traffic at T")

        mb, mt = marks(bob, t)
        t.join(room, "alice", id="t-old-nick-1")
        seq = await join_sequence_after(t, room, mt, "T's join sequence")
        self_p = check_join_sequence(seq, room, "alice2", ["bob"], "Rename", t.jid, history=None)
        assert 210 in self_p.codes and self_p.id == "t-old-nick-1", self_p

        mp = p.mark()
        l.groupchat(room, "renamed", id="renamed-1")
        got = await bob.wait_for(P(name="message", body="renamed"), since=mb)
        assert got.frm == room + "/alice2", got
        r = await p.wait_for(P(name="message", body="renamed"), since=mp)
        assert r.frm == room + "/alice2", r
        await sync(t, bob)
        none_since(bob, P(name="presence", frm_bare=room), mb, "a presence after T joined")
    run(env, scenario)


def test_refused_nick_change_reaches_only_the_asking_session(env):
    """XEP-0045 7.6.3 (the new nick is in use: presence error <conflict/>
    from room/newnick with the request's id): only the session that asked
    gets the error; the other sessions and the room see nothing, and the
    account keeps its nick (7.4 messages from room/alice, and a later
    session's self-presence is room/alice without 210)."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "nickrefused")
        t = await w.connect("alice", "tablet")
        mb, mp, ml, mt = marks(bob, p, l, t)
        p.send("<presence to='%s/bob' id='nc-taken-1'/>" % room)
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="conflict for the nick change")
        assert err.error == ("cancel", "conflict") and err.id == "nc-taken-1", err
        assert err.to == p.jid, err
        await sync(p, l, t, bob)
        assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
        none_since(l, from_room(room), ml, "room traffic at L")
        none_since(t, from_room(room), mt, "room traffic at T")
        none_since(bob, P(name="presence", frm_bare=room), mb, "a presence")

        p.groupchat(room, "still alice")
        got = await bob.wait_for(P(name="message", body="still alice"), since=mb)
        assert got.frm == room + "/alice", got
        _, seq = await join_room(t, room, "alice", id="t-join-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", t.jid, history=None)
        assert 210 not in self_p.codes, self_p
    run(env, scenario)


# ==== 3. private messages =======================================================

def test_private_messages_go_out_as_the_account_with_carbons(env):
    """XEP-0045 7.5 (sending a private message: to room/nick, type chat,
    delivered from the sender's room/nick) sent by one session goes out
    from the account (bob gets it once, from room/alice); the account's
    other joined session gets a XEP-0280 'sent' carbon (from the bare JID,
    <sent><forwarded><message/></forwarded></sent> holding the message with
    its id and body); the sender gets no copy.  A private message to
    room/alice (7.5) reaches every joined session of the account, not the
    session that did not join."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "private")
        t = await w.connect("alice", "tablet")
        for c in (p, l):
            await iq_ok(c, None, "set", "<enable xmlns='%s'/>" % NS_CARBONS, "enable carbons")
        mb, mp, ml, mt = marks(bob, p, l, t)
        p.message(room + "/bob", "psst bob", type="chat", id="pm-1")
        got = await bob.wait_for(P(name="message", body="psst bob"), since=mb,
                                 what="the private message at bob")
        assert got.frm == room + "/alice" and got.type == "chat", got
        carbon = await l.wait_for(P(name="message", fn=lambda s: s.xml.find(
            q("sent", NS_CARBONS)) is not None), since=ml, what="a 'sent' carbon at L")
        assert carbon.frm == ALICE and carbon.to == l.jid, carbon
        inner = carbon.xml.find("%s/%s/%s" % (q("sent", NS_CARBONS), q("forwarded", NS_FORWARD),
                                              q("message", NS_CLIENT)))
        assert inner is not None, "no forwarded message: %s" % carbon
        assert inner.get("to") == room + "/bob" and inner.get("id") == "pm-1", carbon
        assert inner.get("type") == "chat", carbon
        assert inner.findtext(q("body", NS_CLIENT)) == "psst bob", carbon
        await sync(p, bob, l, t)
        only(bob, P(name="message", body="psst bob"), mb, "the private message")
        only(l, P(name="message"), ml, "carbon")
        none_since(p, P(name="message"), mp, "a copy of its own private message")
        none_since(t, P(name="message"), mt, "the private message at T")

        mb, mp, ml, mt = marks(bob, p, l, t)
        bob.message(room + "/alice", "psst alice", type="chat", id="pm-2")
        for c, m in ((p, mp), (l, ml)):
            s = await c.wait_for(P(name="message", body="psst alice"), since=m,
                                 what="bob's private message at " + c.name)
            assert s.frm == room + "/bob" and s.to == c.jid and s.type == "chat", s
        await sync(bob, p, l, t)
        for c, m in ((p, mp), (l, ml)):
            only(c, P(name="message"), m, "bob's private message")
        none_since(t, P(name="message"), mt, "bob's private message at T (not joined)")
    run(env, scenario)


# ==== 4. IQs ====================================================================

@pytest.fixture
def vcard_env(prosody_factory):
    return make_env(prosody_factory, extra_modules=["vcard"])


def test_iqs_are_answered_to_the_asking_session_only(vcard_env):
    """XEP-0410 (MUC self-ping: an IQ ping to one's own occupant JID is
    answered by the room with a result), XEP-0030 disco#info to the room
    (XEP-0045 6.4) and an IQ to an occupant (XEP-0045 7.5 / XEP-0054 vCard
    of room/bob, which the room passes to bob's bare JID): the answer
    reaches only the session that asked, with its own stanza id; an IQ to
    an occupant who is not there gets the room's <item-not-found/>, again
    only at the asking session, with its id."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "iqs")
        await iq_ok(bob, None, "set", "<vCard xmlns='%s'><FN>Bob Builder</FN></vCard>"
                    % NS_VCARD, "bob's vCard")
        mp, ml, mb = marks(p, l, bob)
        p.ping(room + "/alice", id="self-ping-1")
        r = await p.wait_for(P(name="iq", id="self-ping-1"), since=mp, what="self-ping answer")
        assert r.type == "result" and r.frm == room + "/alice" and r.to == p.jid, r
        await sync(p, l)
        none_since(l, P(name="iq", fn=lambda s: s.frm_bare == room), ml, "the self-ping answer")
        only(p, from_room(room), mp, "the self-ping answer")

        mp, ml = marks(p, l)
        l.iq(room, "get", "<query xmlns='%s'/>" % NS_DISCO_INFO, id="disco-1")
        r = await l.wait_for(P(name="iq", id="disco-1"), since=ml, what="disco#info answer")
        assert r.type == "result" and r.frm == room and r.to == l.jid, r
        ident = r.xml.find(q("query", NS_DISCO_INFO) + "/" + q("identity", NS_DISCO_INFO))
        assert ident is not None and ident.get("category") == "conference", r
        await sync(l, p)
        none_since(p, from_room(room), mp, "L's disco answer")

        mp, ml = marks(p, l)
        p.iq(room + "/bob", "get", "<vCard xmlns='%s'/>" % NS_VCARD, id="vcard-1")
        r = await p.wait_for(P(name="iq", id="vcard-1"), since=mp, what="bob's vCard")
        assert r.type == "result" and r.frm == room + "/bob" and r.to == p.jid, r
        assert r.xml.findtext("%s/%s" % (q("vCard", NS_VCARD), q("FN", NS_VCARD))) \
            == "Bob Builder", r
        await sync(p, l)
        none_since(l, from_room(room), ml, "P's vCard answer")

        mp, ml = marks(p, l)
        l.iq(room + "/nobody", "get", "<vCard xmlns='%s'/>" % NS_VCARD, id="vcard-2")
        r = await l.wait_for(P(name="iq", id="vcard-2"), since=ml, what="error for nobody")
        assert r.type == "error" and r.error[1] == "item-not-found", r
        assert r.frm == room + "/nobody" and r.to == l.jid, r
        await sync(l, p)
        none_since(p, from_room(room), mp, "L's IQ error")
    run(vcard_env, scenario)


@pytest.fixture
def mam_env(prosody_factory):
    return make_env(prosody_factory, muc_modules=["muc_mam"])


def test_room_mam_results_reach_only_the_asking_session(mam_env):
    """XEP-0313 4 / 6.1 (querying a MUC archive: the room sends each result
    as a message with <result queryid='...'/> to the requester, then the
    IQ result with <fin/>): with the account as the requester, the results
    and the final answer (with the session's own id) reach only the session
    that asked, not the account's other joined session."""
    async def scenario(w):
        room = w.room("archive")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        mb = bob.mark()
        bob.groupchat(room, "archived one")
        bob.groupchat(room, "archived two")
        await bob.wait_for(P(name="message", body="archived two"), since=mb)
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml = marks(p, l)
        p.iq(room, "set", "<query xmlns='%s' queryid='q-p-1'/>" % NS_MAM, id="mam-1")
        fin = await p.wait_for(P(name="iq", id="mam-1"), since=mp, what="the MAM answer")
        assert fin.type == "result" and fin.frm == room, fin
        assert fin.xml.find(q("fin", NS_MAM)) is not None, fin
        results = p.matching(P(name="message", fn=lambda s: s.xml.find(q("result", NS_MAM))
                               is not None), since=mp)
        bodies = [r.xml.findtext("%s/%s/%s/%s" % (q("result", NS_MAM), q("forwarded", NS_FORWARD),
                                                  q("message", NS_CLIENT), q("body", NS_CLIENT)))
                  for r in results]
        assert bodies == ["archived one", "archived two"], "results %s\n%s" % (
            bodies, p.transcript(mp))
        for r in results:
            assert r.xml.find(q("result", NS_MAM)).get("queryid") == "q-p-1", r
            assert r.to == p.jid, r
        await sync(p, l)
        none_since(l, from_room(room), ml, "P's archive results")
    run(mam_env, scenario)


def test_self_ping_after_falling_out_joins_again(env):
    """XEP-0410 (MUC self-ping): when the room no longer knows the occupant
    it answers <not-acceptable/>; the answer reaches the session that asked
    (with its id), and the account joins again: every joined session gets
    an unavailable self-presence with 110 and 333 (technical removal),
    then the normal join sequence (XEP-0045 7.2.3); the room sees the
    account enter again.  The room forgets the account silently through
    mod_e2e_muc_control (as a room restarted without its occupants)."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "fellout", subject="Ping")
        t = await w.connect("alice", "tablet")
        assert await control(bob, "forget", room) >= 1
        mb, mp, ml, mt = marks(bob, p, l, t)
        p.ping(room + "/alice", id="self-ping-2")
        r = await p.wait_for(P(name="iq", id="self-ping-2"), since=mp, what="self-ping answer")
        assert r.type == "error" and r.error[1] == "not-acceptable", r
        assert r.to == p.jid, r
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={333}), since=m,
                                 what="110+333 at " + c.name)
            assert u.to == c.jid, u
            seq = await join_sequence_after(c, room, u.index + 1, "the join sequence again")
            check_join_sequence(seq, room, "alice", ["bob"], "Ping", c.jid, history=None)
        await bob.wait_for(alice_presence(room, type="available"), since=mb,
                           what="alice entering again, at bob")
        await sync(p, l, t, bob)
        none_since(l, P(name="iq", frm_bare=room), ml, "the self-ping answer at L")
        none_since(t, from_room(room), mt, "room traffic at T")
        only(bob, alice_presence(room), mb, "alice's new join")
    run(env, scenario)


# ==== 5. the account's presence ===================================================

def test_room_sees_the_most_available_session(env):
    """XEP-0045 7.7 (changing availability status: the occupant's presence
    broadcast to the room) with the account as the occupant: the room sees
    the presence of the most available joined session (chat, available,
    dnd, away, xa) and a change only when what it shows changes.  L joins
    away while P is available: nothing; P goes xa: the room shows L's away;
    P chat: chat; P chat again: nothing; L dnd: nothing; P leaves: the
    room shows L's dnd (no departure)."""
    async def scenario(w):
        room, bob, (p,) = await alice_in_room(w, "ranking", sessions=("phone",))
        l = await w.connect("alice", "laptop")
        mb = bob.mark()

        async def step(actor):
            await sync(actor, bob)
            return [s for s in bob.matching(alice_presence(room), since=mb)]

        ml = l.mark()
        l.join(room, "alice", id="l-away-join", extra="<show>away</show>")
        await l.collect(subject_message(room), since=ml, what="L's join sequence")
        assert await step(l) == [], "L joined away while P is available"

        p.presence_update(room, "alice", show="xa")
        seen = await step(p)
        assert [show_of(s) for s in seen] == ["away"], "P xa: the room shows L's away:\n%s" % (
            "\n".join(map(str, seen)))

        p.presence_update(room, "alice", show="chat")
        seen = await step(p)
        assert [show_of(s) for s in seen] == ["away", "chat"], "\n".join(map(str, seen))

        p.presence_update(room, "alice", show="chat")
        l.presence_update(room, "alice", show="dnd")
        await sync(p)
        seen = await step(l)
        assert [show_of(s) for s in seen] == ["away", "chat"], "\n".join(map(str, seen))

        mp = p.mark()
        p.leave(room, "alice", id="p-leave-1")
        await p.wait_for(self_unavailable(room), since=mp, what="P's leave")
        seen = await step(p)
        assert [(s.type, show_of(s)) for s in seen] == [(None, "away"), (None, "chat"),
                                                        (None, "dnd")], \
            "P left: the room shows L's dnd:\n" + "\n".join(map(str, seen))
    run(env, scenario)


def test_vanished_device_hands_the_presence_to_the_next(env):
    """XEP-0045 7.7 with the account as the occupant: the laptop (available)
    and the phone (away) are joined and the room shows the laptop's
    presence; the laptop's connection drops without a leave (no stream
    management to resume it): the room now sees the account away, the
    phone's presence (no departure: 7.14 is for the last device); and a
    later update from the phone reaches the room."""
    async def scenario(w):
        room, bob, (l,) = await alice_in_room(w, "vanish", sessions=("laptop",))
        p = await w.connect("alice", "phone")
        mp = p.mark()
        p.join(room, "alice", id="p-away-join", extra="<show>away</show>")
        await p.collect(subject_message(room), since=mp, what="P's join sequence")
        await sync(p, bob)
        mb = bob.mark()
        await l.abort()
        away = await bob.wait_for(alice_presence(room), since=mb,
                                  what="alice's presence once the laptop is gone")
        assert away.type is None and show_of(away) == "away", away
        p.presence_update(room, "alice", show="dnd")
        dnd = await bob.wait_for(alice_presence(room), since=away.index + 1,
                                 what="the phone's next update")
        assert dnd.type is None and show_of(dnd) == "dnd", dnd
        await sync(p, bob)
        assert len(bob.matching(alice_presence(room), since=mb)) == 2, bob.transcript(mb)
    run(env, scenario)


def test_equal_sessions_latest_wins_and_same_text_is_silent(env):
    """XEP-0045 7.7 with the account as the occupant, among sessions of the
    same availability: the latest update is what the room shows; a session
    that joins with exactly the presence the room shows, or repeats it,
    changes nothing; a session leaving that the room does not show changes
    nothing; the last session leaving is the occupant's exit (7.14)."""
    async def scenario(w):
        room = w.room("equals")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb = bob.mark()

        async def step(actor):
            await sync(actor, bob)
            return [(s.type, show_of(s), status_of(s))
                    for s in bob.matching(alice_presence(room), since=mb)]

        dnd_meeting = "<show>dnd</show><status>meeting</status>"
        mp = p.mark()
        p.join(room, "alice", extra=dnd_meeting)
        await p.collect(subject_message(room), since=mp, what="P's join")
        assert await step(p) == [(None, "dnd", "meeting")]

        ml = l.mark()
        l.join(room, "alice", extra=dnd_meeting)
        await l.collect(subject_message(room), since=ml, what="L's join")
        assert await step(l) == [(None, "dnd", "meeting")], "L joined with the same presence"

        l.presence_update(room, "alice", show="dnd", status="call")
        assert await step(l) == [(None, "dnd", "meeting"), (None, "dnd", "call")]

        p.presence_update(room, "alice", show="dnd", status="meeting 2")
        assert await step(p) == [(None, "dnd", "meeting"), (None, "dnd", "call"),
                                 (None, "dnd", "meeting 2")]

        p.presence_update(room, "alice", show="dnd", status="meeting 2")
        assert len(await step(p)) == 3, "P repeated what the room shows: nothing to tell"

        ml = l.mark()
        l.leave(room, "alice")
        await l.wait_for(self_unavailable(room), since=ml, what="L's leave")
        assert len(await step(l)) == 3, "L left, the room showed P: nothing to tell"

        mp = p.mark()
        p.leave(room, "alice")
        await p.wait_for(self_unavailable(room), since=mp, what="P's leave")
        seen = await step(p)
        assert len(seen) == 4 and seen[-1][0] == "unavailable", seen
    run(env, scenario)


# ==== 6. joins that race ==========================================================

def test_join_from_a_joined_session_resyncs_only_that_session(env):
    """XEP-0045 7.2.3 again for a session that is already in and sends
    another join (a client that lost track, e.g. after a stream
    resumption failed on its side): it gets the full sequence again (the
    occupants, its self-presence last with 110 and the new join's id, the
    subject, 7.2.16); the account's other session and the room see
    nothing."""
    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "resync", subject="Resync")
        mb = bob.mark()
        bob.groupchat(room, "said before the resync")
        await p.wait_for(P(name="message", body="said before the resync"))
        await l.wait_for(P(name="message", body="said before the resync"))
        mb, mp, ml = marks(bob, p, l)
        p.join(room, "alice", id="resync-1")
        seq = await join_sequence_after(p, room, mp, "the resync")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "Resync", p.jid, history=None)
        assert self_p.id == "resync-1", self_p
        await sync(p, l, bob)
        none_since(l, from_room(room), ml, "room traffic at L")
        none_since(bob, alice_presence(room), mb, "a presence of alice")
    run(env, scenario)


@pytest.mark.parametrize("held", [False, True], ids=["back-to-back", "join-in-flight"])
def test_two_sessions_joining_at_once_make_one_join(env, held):
    """XEP-0045 7.2 with two sessions of the account entering at once (joins
    sent back to back without waiting; "join-in-flight": the room sees
    the account's join only later, held by mod_e2e_muc_control, so the
    second session asks while the account's join is under way): the room
    sees one join (bob gets one presence of alice); each session gets the
    whole sequence (7.2.3: occupants, self-presence last with its own join
    id, subject)."""
    async def scenario(w):
        room = w.room("race")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Race")
        bob.groupchat(room, "before the race")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        if held:
            await control(bob, "hold", room, seconds="1.5")
        mb, mp, ml = marks(bob, p, l)
        p.join(room, "alice", id="race-p")
        l.join(room, "alice", id="race-l")
        for c, m, id in ((p, mp, "race-p"), (l, ml, "race-l")):
            seq = await join_sequence_after(c, room, m, "the join sequence at " + c.name)
            self_p = check_join_sequence(seq, room, "alice", ["bob"], "Race", c.jid,
                                         history=None)
            assert self_p.id == id, "%s: self-presence with the wrong id: %s" % (c.name, self_p)
        await bob.wait_for(alice_presence(room, type="available"), since=mb)
        await w.quiet()
        await sync(p, l, bob)
        only(bob, alice_presence(room), mb, "alice's join")
        if held:
            assert "E2E-CONTROL holding" in w.env.read_log(), "no join was held"
        for c, m in ((p, mp), (l, ml)):
            only(c, P(name="presence", codes={110}), m, "self-presence")
    run(env, scenario)


def test_password_room_first_join_and_automatic_rejoin(env):
    """XEP-0045 7.2.6 (password-protected room): a join with a wrong
    password gets <not-authorized/> (type auth) with the join's id, only at
    the asking session, and leaves nothing behind; a join with the right
    password enters; the account's own joins carry it: after a technical
    removal (333) the account joins again by itself and the room lets it
    in (every session gets the join sequence again)."""
    async def scenario(w):
        room = w.room("locked")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", password="s3cret")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb, mp, ml = marks(bob, p, l)
        p.join(room, "alice", id="wrong-pw-1", password="nope")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="the password error")
        assert err.error == ("auth", "not-authorized") and err.id == "wrong-pw-1", err
        await sync(p, l, bob)
        assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
        none_since(l, from_room(room), ml, "room traffic at L")
        none_since(bob, alice_presence(room), mb, "a presence of alice")

        await join_room(p, room, "alice", password="s3cret")
        await join_room(l, room, "alice", password="s3cret")
        await bob.wait_for(alice_presence(room, type="available"), since=mb)

        mb, mp, ml = marks(bob, p, l)
        assert await control(bob, "kickable", room) >= 1
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, codes={333}), since=m,
                                 what="the 333 removal at " + c.name)
            seq = await join_sequence_after(c, room, u.index + 1,
                                            "the automatic re-join (with the password)")
            check_join_sequence(seq, room, "alice", ["bob"], "", c.jid, history=None)
        gone = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb)
        await bob.wait_for(alice_presence(room, type="available"), since=gone.index + 1,
                           what="alice entering again, at bob")
    run(env, scenario)


def test_password_room_later_session_without_the_password(env):
    """XEP-0045 7.2.6 (password-protected room) with the account as the
    occupant: the room checked the password when the account entered; a
    later session of the account joining without the password (clients
    that sync bookmarks often lack it) gets the later-session sequence
    (7.2.3, self-presence with its own id) and the room's traffic; the
    room sees nothing of it."""
    async def scenario(w):
        room, bob, (p,) = await alice_in_room(w, "locked-later", sessions=("phone",),
                                              password="s3cret")
        l = await w.connect("alice", "laptop")
        mb, ml = marks(bob, l)
        l.join(room, "alice", id="no-pw-1")
        seq = await join_sequence_after(l, room, ml, "L's join sequence")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid, history=None)
        assert self_p.id == "no-pw-1", self_p
        assert not l.matching(P(name="presence", frm_bare=room, type="error"), since=ml), \
            l.transcript(ml)
        await sync(l, bob)
        none_since(bob, alice_presence(room), mb, "a presence of alice")
        ml = l.mark()
        bob.groupchat(room, "for L too")
        await l.wait_for(P(name="message", body="for L too"), since=ml)
    run(env, scenario)


# ==== deadlines: every state that waits on the room ends ===========================

def test_unanswered_join_times_out(prosody_factory):
    """XEP-0045 7.2 with a room that never answers the join (its join is
    held by mod_e2e_muc_control): after minimix_join_timeout the session
    that asked gets a presence error <remote-server-timeout/> (type wait,
    RFC 6120 8.3.3.16) with its join's id, from the room JID it joined;
    the membership is gone, so it no longer counts against
    minimix_max_rooms (1 here): the account can join another room."""
    env = make_env(prosody_factory, host_options={"minimix_join_timeout": 2,
                                                  "minimix_max_rooms": 1})

    async def scenario(w):
        room, room2 = w.room("silent"), w.room("answers")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        await create_room(bob, room2, "bob", whois="anyone")
        await control(bob, "hold", room, seconds="3600")
        p = await w.connect("alice", "phone")
        mp = p.mark()
        p.join(room, "alice", id="held-join")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="the timeout of the unanswered join")
        assert err.id == "held-join", err
        assert err.frm == room + "/alice", err
        assert err.error == ("wait", "remote-server-timeout"), err
        # not one room too many: the silent room's membership is gone
        await join_room(p, room2, "alice")
    run(env, scenario)


def test_reload_keeps_a_waiting_rejoin(prosody_factory):
    """module:reload while an automatic re-join waits for its delay (after
    a removal with 332, system shutdown): the re-join still happens (the
    room sees the account enter again and the sessions get the join
    sequence again), from the new instance of the module; Prosody drops
    the old instance's timers, so the wait lives in the core."""
    env = make_env(prosody_factory, admin_shell=True,
                   host_options={"minimix_rejoin_delay": 6})

    async def scenario(w):
        room, bob, (p,) = await alice_in_room(w, "reload-wait", subject="Back",
                                              sessions=("phone",))
        mb, mp = marks(bob, p)
        assert await control(bob, "remove", room, code="332") == 1
        u = await p.wait_for(self_unavailable(room, codes={332}), since=mp,
                             what="the 332 removal")
        out = env.shell("module:reload('minimix', 'localhost')")
        assert "reloaded" in out.lower(), "the reload failed:\n" + out
        seq = await join_sequence_after(p, room, u.index + 1, "the join sequence again")
        check_join_sequence(seq, room, "alice", ["bob"], "Back", p.jid, history=None)
        gone = await bob.wait_for(alice_presence(room, type="unavailable"), since=mb)
        await bob.wait_for(alice_presence(room, type="available"), since=gone.index + 1,
                           what="alice entering again after the reload, at bob")
    run(env, scenario)


# ==== sessions that stream management keeps hibernating ===========================

HIBERNATION_PROBE = (
    '> (function() local s = prosody.full_sessions["alice@localhost/phone"]; '
    'if not s then return "GONE" end; local t = { "HIBERNATING=" .. tostring(s.hibernating ~= nil) .. ";" }; '
    'for _, x in ipairs(s.outgoing_stanza_queue:table()) do '
    'if x.name == "presence" and x.attr.type == "unavailable" then '
    't[#t+1] = "UNAVAILABLE[" .. tostring(x.attr.from) .. "]" end end; '
    'return table.concat(t, " ") end)()')


def test_last_connected_device_leave_is_the_accounts(prosody_factory):
    """XEP-0045 7.14 (exiting a room) with the account as the occupant: the
    phone's client is killed while XEP-0198 keeps its session hibernating;
    the laptop, the last connected device, leaves: the room sees the
    account leave (the hibernating phone does not hold it in), and the
    phone's session holds its own unavailable self-presence from the room,
    queued by stream management for when it resumes."""
    env = make_env(prosody_factory, admin_shell=True, smacks_hibernation_time=120)

    async def scenario(w):
        room, bob, (p, l) = await alice_in_room(w, "hibernate", sessions=("phone", "laptop"))
        await p.enable_sm()
        await p.abort()
        for _ in range(100):
            out = env.shell(HIBERNATION_PROBE)
            if "HIBERNATING=true" in out:
                break
            await w.quiet(0.1)
        else:
            raise AssertionError("the phone never hibernated:\n" + out)
        mb, ml = marks(bob, l)
        l.leave(room, "alice", id="l-leave")
        await l.wait_for(self_unavailable(room), since=ml, what="the laptop's leave")
        await bob.wait_for(alice_presence(room, type="unavailable"), since=mb,
                           what="alice leaving, at bob")
        out = env.shell(HIBERNATION_PROBE)
        assert "UNAVAILABLE[%s/alice]" % room in out, out
    run(env, scenario)


# ==== later devices get their own news only ======================================

def test_later_device_gets_no_room_created_status(env):
    """XEP-0045 10.1.1 (creating a room: the creator's self-presence has
    status 201, the room is locked until configured) with the account as
    the occupant: the phone's join creates the room and the phone gets 201;
    the laptop joining later gets its self-presence (110) without 201,
    which was the phone's news (a client would offer it to configure a
    locked room)."""
    async def scenario(w):
        room = w.room("fresh")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mp = p.mark()
        p.join(room, "alice", id="create-1")
        first = await p.wait_for(P(name="presence", frm=room + "/alice", codes={110}),
                                 since=mp, what="the creator's self-presence")
        assert 201 in first.codes, first
        ml = l.mark()
        l.join(room, "alice", id="later-1")
        later = await l.wait_for(P(name="presence", frm=room + "/alice", codes={110}),
                                 since=ml, what="the later device's self-presence")
        assert later.id == "later-1", later
        assert 201 not in later.codes, later
        assert 210 not in later.codes, later
    run(env, scenario)
