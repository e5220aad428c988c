"""End-to-end tests of mod_minimix's foundation behaviours.

The account (bare JID) is the XEP-0045 occupant; its client sessions keep
speaking plain MUC.  Each test runs against its own Prosody with
alice@localhost (sessions phone = P, laptop = L, tablet = T; the host runs
mod_minimix) and the observers bob and carol, who by default live on
plain.localhost, a host without the module, so that what they see is what
the room sends.  Each test states in its docstring the XEP-0045 behaviour
it proves.  Run the same tests with
MINIMIX_E2E_PLAIN=1 to see them against plain Prosody MUC, where the
account-level behaviours fail.

Only waiting uses timeouts; no assertion depends on how long anything took.
"""

import asyncio
import datetime
import re
import time

import pytest

from .clients import P, join_seen, from_room, join_room, create_room, NS_DELAY
from .world import run, next_second

ALICE = "alice@localhost"


# ---- helpers ----------------------------------------------------------------

def presences(seq):
    return [s for s in seq if s.name == "presence"]


def messages(seq):
    return [s for s in seq if s.name == "message"]


def subject_message(room, subject=None):
    """The room's subject message (Prosody sends it last in a join)."""
    if subject is None:
        return P(name="message", frm_bare=room, fn=lambda s: s.subject is not None and s.body is None)
    return P(name="message", frm_bare=room, subject=subject,
             fn=lambda s: s.body is None)


async def exactly_once(client, pred, since, what):
    """pred arrives at client, and after a quiet window still only once."""
    s = await client.wait_for(pred, since=since, what=what)
    await client.assert_nothing(P(fn=lambda x: pred(x) and x.index != s.index), since=since,
                                what="a second copy of " + what)
    return s


def check_join_sequence(seq, room, nick, others, subject, session_jid, history=()):
    """XEP-0045 7.2.2-7.2.15 order: the other occupants' presences, the
    self-presence (110) last among presences, then history (delayed), then
    the subject.  history: the expected bodies, or None when any (delayed)
    history is acceptable (a later session's replay need not repeat it).
    Returns the self-presence."""
    room_seq = [s for s in seq if s.frm_bare == room]
    for s in room_seq:
        assert s.to == session_jid, "room stanza not addressed to %s: %s" % (session_jid, s)
        assert s.type != "error", "error during join: %s" % s
    pres = presences(room_seq)
    msgs = messages(room_seq)
    assert pres, "no presence from the room in %s" % room_seq
    assert msgs, "no subject from the room"
    last_pres = max(s.index for s in pres)
    first_msg = min(s.index for s in msgs)
    assert last_pres < first_msg, "a message came before the last presence:\n%s" % \
        "\n".join(map(str, room_seq))
    self_p = pres[-1]
    assert self_p.frm == "%s/%s" % (room, nick), "last presence is not the self-presence: %s" % self_p
    assert 110 in self_p.codes, "self-presence without status 110: %s" % self_p
    assert self_p.type is None, self_p
    for s in pres[:-1]:
        assert 110 not in s.codes, "more than one self-presence: %s" % s
    got_others = [s.frm for s in pres[:-1]]
    assert sorted(got_others) == sorted("%s/%s" % (room, o) for o in others), \
        "occupant presences %s, expected %s" % (got_others, others)
    hist = msgs[:-1]
    if history is not None:
        assert [m.body for m in hist] == list(history), "history %s" % [str(m) for m in hist]
    for m in hist:
        assert m.has_delay, "history message without <delay/>: %s" % m
    subj = msgs[-1]
    assert subj.subject == subject and subj.body is None, "subject last expected, got %s" % subj
    return self_p


# ---- 1. first join ----------------------------------------------------------

def test_first_join_sequence_and_account_is_occupant(prosody):
    """XEP-0045 7.2 (entering a room), 7.2.3 (presence order: existing
    occupants, then self-presence with status 110 last), 7.2.15 (history
    after presence), 7.2.16 (subject last), and the stanza id of the join
    echoed on the self-presence.  In a non-anonymous room (muc#roomconfig_
    whois=anyone, 7.2.4) the other occupants see the real JID of the new
    occupant: it is the account, alice@localhost (bare), not the session."""
    async def scenario(w):
        room = w.room("first")
        bob = await w.connect("bob", "desk")
        carol = await w.connect("carol", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Foundation")
        await join_room(carol, room, "carol")
        mc = carol.mark()
        bob.groupchat(room, "history one")
        bob.groupchat(room, "history two")
        await carol.wait_for(P(name="message", body="history two"), since=mc)

        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb, ml, mp = bob.mark(), l.mark(), p.mark()
        p.join(room, "alice", id="first-join-1")
        seq = await p.collect(subject_message(room), since=mp, what="subject")
        self_p = check_join_sequence(seq, room, "alice", ["bob", "carol"], "Foundation",
                                     p.jid, history=["history one", "history two"])
        assert self_p.id == "first-join-1", "self-presence lost the join's id: %s" % self_p

        seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                                  since=mb, what="alice's join as seen by bob")
        assert seen.item is not None and seen.item.get("jid") == ALICE, \
            "bob should see the account (bare JID) as the occupant: %s" % seen
        await l.assert_nothing(from_room(room), since=ml, what="room traffic at L (not joined)")
        await bob.assert_nothing(P(name="presence", frm=room + "/alice",
                                   fn=lambda s: s.index != seen.index),
                                 since=mb, what="a second presence of alice")
    run(prosody, scenario)


def test_join_error_conflict_reaches_only_the_joining_session(prosody):
    """XEP-0045 7.2.9 (nickname conflict: presence error <conflict/>, type
    cancel, from room/nick, with the join's id) goes to the session that
    asked only; a failed join leaves no membership behind, so another
    session of the account can then enter normally (7.2)."""
    async def scenario(w):
        room = w.room("conflict")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb, ml, mp = bob.mark(), l.mark(), p.mark()
        p.join(room, "bob", id="conflict-join-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="join error")
        assert err.error == ("cancel", "conflict"), err
        assert err.id == "conflict-join-1", "error lost the join's id: %s" % err
        assert err.frm == room + "/bob" and err.to == p.jid, err
        await l.assert_nothing(from_room(room), since=ml, what="room traffic at L")
        assert p.matching(from_room(room), since=mp) == [err], \
            "P got more than the error:\n" + p.transcript(mp)
        assert not bob.matching(P(frm=room + "/alice"), since=mb)

        ml = l.mark()
        _, seq = await join_room(l, room, "alice", id="after-conflict-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid)
        assert self_p.id == "after-conflict-1", self_p
        seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                                  since=mb, what="alice's join as seen by bob")
        assert seen.item.get("jid") == ALICE, seen
        await p.assert_nothing(from_room(room), since=err.index + 1, what="room traffic at P")
    run(prosody, scenario)


def test_join_error_password_reaches_only_the_joining_session(prosody):
    """XEP-0045 7.2.6 (password-protected room: a join without the password
    gets presence error <not-authorized/>, type auth, with the join's id)
    goes to the asking session only; the account is left outside, and a
    later join with the password (7.2.6 example) succeeds."""
    async def scenario(w):
        room = w.room("secret")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", password="s3cret")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb, ml, mp = bob.mark(), l.mark(), p.mark()
        p.join(room, "alice", id="nopass-join-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="join error")
        assert err.error == ("auth", "not-authorized"), err
        assert err.id == "nopass-join-1", err
        await l.assert_nothing(from_room(room), since=ml, what="room traffic at L")
        assert p.matching(from_room(room), since=mp) == [err], p.transcript(mp)
        assert not bob.matching(P(frm=room + "/alice"), since=mb)

        _, seq = await join_room(l, room, "alice", id="pass-join-1", password="s3cret")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", l.jid)
        assert self_p.id == "pass-join-1", self_p
        seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                                  since=mb, what="alice's join as seen by bob")
        assert seen.item.get("jid") == ALICE, seen
    run(prosody, scenario)


# ---- 2. fork ------------------------------------------------------------------

def test_groupchat_is_forked_to_joined_sessions_only(prosody):
    """XEP-0045 7.4 (a message to all occupants is delivered to each
    occupant): every joined session of the account gets the room's message
    exactly once, addressed to its full JID; a session of the same account
    that did not join gets no room traffic.  Messages from outside the room
    (RFC 6121 8.5.2: chat to the bare JID, and to a full JID) are delivered
    as usual."""
    async def scenario(w):
        room = w.room("fork")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        mp, ml, mt = p.mark(), l.mark(), t.mark()
        bob.groupchat(room, "to everyone", id="bob-gc-1")
        for c, m in ((p, mp), (l, ml)):
            s = await exactly_once(c, P(name="message", type="groupchat", body="to everyone"),
                                   since=m, what="bob's groupchat at " + c.name)
            assert s.frm == room + "/bob", s
            assert s.to == c.jid, "not addressed to the session's full JID: %s" % s
        await t.assert_nothing(from_room(room), since=mt, what="room traffic at T (not joined)")

        mp, ml, mt = p.mark(), l.mark(), t.mark()
        bob.message(ALICE, "direct chat", type="chat", id="bob-chat-1")
        for c, m in ((p, mp), (l, ml), (t, mt)):
            s = await c.wait_for(P(name="message", frm=bob.jid, body="direct chat"), since=m,
                                 what="bob's chat at " + c.name)
            assert s.type == "chat", s
        mt = t.mark()
        bob.message(t.jid, "only to the tablet", type="chat")
        await t.wait_for(P(name="message", frm=bob.jid, body="only to the tablet"), since=mt)
    run(prosody, scenario)


# ---- 3. speak -----------------------------------------------------------------

def test_message_from_a_session_is_sent_as_the_account(prosody):
    """XEP-0045 7.4 (sending a message to all occupants): the room
    broadcasts it from room/nick, and reflects it to the sender with the
    message's id and XEP-0359 origin-id intact, so that every session of
    the sending occupant (the account) can recognise its own message."""
    async def scenario(w):
        room = w.room("speak")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        p.groupchat(room, "hello from the phone", id="p-gc-1", origin_id="p-origin-1")
        s = await exactly_once(bob, P(name="message", body="hello from the phone"), since=mb,
                               what="alice's message at bob")
        assert s.frm == room + "/alice" and s.type == "groupchat", s
        assert s.origin_id == "p-origin-1", s
        for c, m in ((p, mp), (l, ml)):
            r = await exactly_once(c, P(name="message", body="hello from the phone"), since=m,
                                   what="reflection at " + c.name)
            assert r.frm == room + "/alice" and r.type == "groupchat" and r.to == c.jid, r
            assert r.id == "p-gc-1", "reflection lost the id: %s" % r
            assert r.origin_id == "p-origin-1", "reflection lost the origin-id: %s" % r
    run(prosody, scenario)


# ---- 4. later session -------------------------------------------------------

def test_later_session_gets_cached_state_without_a_second_join(prosody):
    """XEP-0045 7.2.3 as seen by a second session of an occupant already in
    the room: it gets the occupants' presences, its self-presence (110)
    last, then the subject (7.2.16), while the room sees no new join (the
    other occupants get no presence for alice).  The cache follows the room:
    a new occupant's presence (7.2.3 broadcast) reaches every joined session,
    and a session joining later finds it in its replay."""
    async def scenario(w):
        room = w.room("later")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Later")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        l.join(room, "alice", id="later-join-1")
        seq = await l.collect(subject_message(room), since=ml, what="subject at L")
        check_join_sequence(seq, room, "alice", ["bob"], "Later", l.jid, history=None)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob (second join)")

        carol = await w.connect("carol", "desk")
        mp, ml = p.mark(), l.mark()
        await join_room(carol, room, "carol")
        for c, m in ((p, mp), (l, ml)):
            s = await c.wait_for(P(name="presence", frm=room + "/carol", type="available"),
                                 since=m, what="carol's join at " + c.name)
            assert s.to == c.jid, s

        t = await w.connect("alice", "tablet")
        mb = bob.mark()
        _, seq = await join_room(t, room, "alice", id="tablet-join-1")
        check_join_sequence(seq, room, "alice", ["bob", "carol"], "Later", t.jid, history=None)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob (third join)")
    run(prosody, scenario)


def delay_stamps(msg, room):
    """The XEP-0203 delays of a message: exactly one, from the room; returns
    its stamp as seconds since 1970."""
    delays = msg.xml.findall("{%s}delay" % NS_DELAY)
    assert len(delays) == 1, "want one <delay/>: %s" % msg
    assert delays[0].get("from") == room, "delay not from the room: %s" % msg
    # XEP-0082: fractions of a second are optional (Prosody 13 sends them)
    return datetime.datetime.fromisoformat(delays[0].get("stamp").replace("Z", "+00:00")).timestamp()


def test_later_session_gets_history_it_asks_for_with_delay(prosody):
    """XEP-0045 7.2.15 (discussion history: <history maxstanzas/> limits
    it, each message carries a XEP-0203 delay from the room with the time
    the room got it) for sessions joining after the account: the messages
    said since the account joined come from the room log with one delay,
    from the room JID, stamped when the room sent them.  What the room said
    before the account was in ("before", in the room's own history on the
    account's first join) is the room's to give: the first session got it,
    with the room's delay; later sessions read only the account's span."""
    async def scenario(w):
        room = w.room("catchup")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Catch-up")
        bob.groupchat(room, "before")
        await bob.wait_for(P(name="message", body="before"))
        # in an earlier whole second than the account comes in: the room
        # stamps its history in whole seconds (0.12), which count from the
        # start of their second
        await next_second()
        p = await w.connect("alice", "phone")
        _, seq = await join_room(p, room, "alice")
        check_join_sequence(seq, room, "alice", ["bob"], "Catch-up", p.jid, history=["before"])
        before = [s for s in seq if s.body == "before"][0]
        room_stamp = delay_stamps(before, room)

        said_from = int(time.time())
        mp = p.mark()
        for body in ("one", "two", "three"):
            bob.groupchat(room, body)
            live = await p.wait_for(P(name="message", body=body), since=mp)
            assert not live.has_delay, live
        said_until = time.time()

        l = await w.connect("alice", "laptop")
        _, seq = await join_room(l, room, "alice", history={"maxstanzas": 2})
        check_join_sequence(seq, room, "alice", ["bob"], "Catch-up", l.jid,
                            history=["two", "three"])
        t = await w.connect("alice", "tablet")
        _, seq = await join_room(t, room, "alice", history={"maxstanzas": 10})
        check_join_sequence(seq, room, "alice", ["bob"], "Catch-up", t.jid,
                            history=["one", "two", "three"])
        assert room_stamp, before
        for m in messages(seq)[:-1]:
            stamp = delay_stamps(m, room)
            assert said_from <= stamp <= said_until, \
                "delay not when the room sent it (%s..%s): %s" % (said_from, said_until, m)
    run(prosody, scenario)


# ---- 5. leave -------------------------------------------------------------------

def test_session_leave_and_last_session_leave(prosody):
    """XEP-0045 7.14 (exiting a room): a session that leaves gets its
    unavailable self-presence (110) and no more room traffic; the account
    stays an occupant while another session is in, so the room shows no
    departure.  When the last session leaves, the account exits: that
    session gets its unavailable self-presence and the other occupants see
    the occupant leave.  Afterwards the account can enter again (7.2)."""
    async def scenario(w):
        room = w.room("leave")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        p.leave(room, "alice", id="p-leave-1")
        u = await p.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                             since=mp, what="P's unavailable self-presence")
        assert 110 in u.codes, "unavailable self-presence without 110: %s" % u
        assert u.to == p.jid, u
        assert u.item is not None and u.item.get("role") == "none", u
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="alice's presence at bob after P left")
        await l.assert_nothing(P(name="presence", frm=room + "/alice"), since=ml,
                               what="a self-presence at L after P left")

        mp, ml = p.mark(), l.mark()
        bob.groupchat(room, "after P left")
        await l.wait_for(P(name="message", body="after P left"), since=ml)
        await p.assert_nothing(from_room(room), since=mp, what="room traffic at P after leaving")

        mp, ml = p.mark(), l.mark()
        l.leave(room, "alice", id="l-leave-1")
        u = await l.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                             since=ml, what="L's unavailable self-presence")
        assert 110 in u.codes, u
        gone = await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                                  since=mb, what="alice leaving, at bob")
        assert 110 not in gone.codes, gone
        await p.assert_nothing(from_room(room), since=mp, what="room traffic at P")

        # The membership is over: the account can enter again.
        mb = bob.mark()
        _, seq = await join_room(p, room, "alice", id="p-rejoin-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", p.jid,
                                     history=["after P left"])
        assert self_p.id == "p-rejoin-1", self_p
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"), since=mb,
                           what="alice entering again, at bob")
    run(prosody, scenario)


# ---- 6. disconnect ------------------------------------------------------------

@pytest.mark.parametrize("how", ["abrupt", "clean"])
def test_disconnect_detaches_the_session_only(prosody, how):
    """XEP-0045 7.14 applies to the occupant, here the account: a session
    that disconnects without leaving the room (TCP closed abruptly, or a
    clean </stream> without a MUC leave) is detached, the account stays in
    the room (no unavailable presence for it), the other joined session
    keeps receiving, and the same resource reconnecting gets no room
    traffic until it joins again, then the later-session sequence (7.2.3)
    with no new join seen by the room."""
    async def scenario(w):
        room = w.room("disconnect-" + how)
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Stay")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, ml = bob.mark(), l.mark()
        if how == "abrupt":
            await p.abort()
        else:
            await p.disconnect()
        # mod_presence tells alice's other sessions when P's session ends.
        await l.wait_for(P(name="presence", frm=p.jid, type="unavailable"), since=ml,
                         what="P's session ending, seen by L")
        bob.groupchat(room, "after P vanished")
        await l.wait_for(P(name="message", body="after P vanished"), since=ml)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice", type="unavailable"),
                                 since=mb, what="alice leaving, at bob")

        p2 = await w.connect("alice", "phone")
        m2 = p2.mark()
        ml = l.mark()
        bob.groupchat(room, "before P rejoins")
        await l.wait_for(P(name="message", body="before P rejoins"), since=ml)
        await p2.assert_nothing(from_room(room), since=m2,
                                what="room traffic at the reconnected P before it joins")

        mb = bob.mark()
        m2 = p2.mark()
        p2.join(room, "alice", id="rejoin-1")
        seq = await p2.collect(subject_message(room), since=m2, what="subject at P")
        check_join_sequence(seq, room, "alice", ["bob"], "Stay", p2.jid, history=None)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob")
        assert not bob.matching(P(name="presence", frm=room + "/alice", type="unavailable"))
    run(prosody, scenario)


# ---- 7. others leave ----------------------------------------------------------

def test_other_occupant_leaving_is_forked_and_forgotten(prosody):
    """XEP-0045 7.14 from the other side: when another occupant exits, every
    joined session of the account gets its unavailable presence, and the
    occupant is gone from the presences a later session gets on entering
    (7.2.3 lists current occupants only)."""
    async def scenario(w):
        room = w.room("others")
        bob = await w.connect("bob", "desk")
        carol = await w.connect("carol", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        await join_room(carol, room, "carol")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml = p.mark(), l.mark()
        bob.leave(room, "bob")
        for c, m in ((p, mp), (l, ml)):
            s = await exactly_once(c, P(name="presence", frm=room + "/bob", type="unavailable"),
                                   since=m, what="bob leaving, at " + c.name)
            assert s.to == c.jid, s

        t = await w.connect("alice", "tablet")
        _, seq = await join_room(t, room, "alice")
        check_join_sequence(seq, room, "alice", ["carol"], "", t.jid, history=None)
    run(prosody, scenario)


# ---- 8. no bounces --------------------------------------------------------------

@pytest.mark.parametrize("other", ["laptop-joined", "alone"])
def test_vanished_smacks_session_causes_no_bounce(prosody_factory, other):
    """XEP-0045 7.14 / 9.6 and XEP-0198 6: room traffic queued for a session
    with stream management that vanished is not bounced back to the room
    when resumption times out (an error from an occupant gets it removed;
    Prosody kicks with status 333, 307 is a kick), and the session's end is
    not a leave: the account stays in the room, no unavailable presence for
    it reaches the others, and the remaining joined session keeps receiving
    ("laptop-joined"); with no other session ("alone") the account is still
    an occupant, which a new session finds by entering without a new join
    (the later-session sequence, 7.2.3)."""
    env = prosody_factory(smacks_hibernation_time=2)

    async def scenario(w):
        room = w.room("nobounce")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Bounce")
        p = await w.connect("alice", "phone", sm=True)
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        if other == "laptop-joined":
            await join_room(l, room, "alice")

        mb, ml = bob.mark(), l.mark()
        await p.abort()
        ended = P(name="presence", frm=p.jid, type="unavailable")
        n = 0
        # bob keeps talking while P's session hibernates, until Prosody
        # gives up on it (mod_presence then tells L that P is gone).
        while not l.matching(ended, since=ml):
            n += 1
            assert n < 200, "P's hibernating session never ended:\n" + l.transcript(ml)
            mb2 = bob.mark()
            bob.groupchat(room, "while P hibernates %d" % n)
            await bob.wait_for(P(name="message", body="while P hibernates %d" % n), since=mb2)
            if other == "laptop-joined":
                await l.wait_for(P(name="message", body="while P hibernates %d" % n), since=ml)
            await w.quiet(0.2)
        mb2 = bob.mark()
        bob.groupchat(room, "after the timeout")
        await bob.wait_for(P(name="message", body="after the timeout"), since=mb2)
        if other == "laptop-joined":
            await l.wait_for(P(name="message", body="after the timeout"), since=ml)
        await w.quiet()
        kicked = P(name="presence", frm=room + "/alice",
                   fn=lambda s: s.type == "unavailable" or bool({307, 333} & s.codes))
        assert not bob.matching(kicked, since=mb), \
            "alice left or was kicked:\n" + bob.transcript(mb)
        assert not bob.matching(P(type="error"), since=mb), bob.transcript(mb)
        # Prosody's MUC drops an error from a JID that is not an occupant's
        # real JID without a trace; mod_e2e_spy shows any that reached it.
        bounces = env.spy_errors()
        assert not bounces, "errors bounced to the room:\n" + "\n".join(bounces)
        assert not l.matching(P(frm_bare=room, fn=lambda s: s.type == "unavailable"
                                and 110 in s.codes), since=ml), l.transcript(ml)
        if other == "alone":
            assert not l.matching(from_room(room), since=ml), l.transcript(ml)
            mb = bob.mark()
            m = l.mark()
            l.join(room, "alice", id="after-hibernation-1")
            seq = await l.collect(subject_message(room), since=m, what="subject at L")
            check_join_sequence(seq, room, "alice", ["bob"], "Bounce", l.jid, history=None)
            await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                     what="a presence of alice at bob (she never left)")
    run(env, scenario)


SMACKS_PROBE = (
    '> (function() local s = prosody.full_sessions["alice@localhost/phone"]; '
    'if not s then return "GONE" end; local q = s.outgoing_stanza_queue; '
    'local t = { "COUNT=" .. (q:count_acked() + q:count_unacked()) .. ";", '
    '"HIBERNATING=" .. tostring(s.hibernating ~= nil) .. ";" }; '
    'for _, x in ipairs(q:table()) do local b = x:get_child_text("body"); '
    'if b then t[#t+1] = "QUEUED[" .. x.attr.to .. "|" .. b .. "]" end end; '
    'return table.concat(t, " ") end)()')


def test_stream_management_counts_and_queues_every_forked_copy(prosody_factory):
    """XEP-0198 4 and 5: the copies a session gets of room traffic pass
    through Prosody's outgoing stanza filters like any stanza sent to it,
    however the module writes them.  mod_smacks counts each one (its count
    equals the stanzas the client received since <enabled/>, which the
    client acknowledges), and while the session hibernates it queues them,
    addressed to that session, for a resumption."""
    env = prosody_factory(smacks_hibernation_time=60, admin_shell=True)

    def probe():
        out = env.shell(SMACKS_PROBE)
        assert "GONE" not in out, out
        count = int(re.search(r"COUNT=(\d+);", out).group(1))
        hibernating = re.search(r"HIBERNATING=(\w+);", out).group(1) == "true"
        return count, hibernating, re.findall(r"QUEUED\[([^|\]]*)\|([^\]]*)\]", out)

    async def scenario(w):
        room = w.room("counted")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Counted")
        p = await w.connect("alice", "phone", sm=True)
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        mp, ml = p.mark(), l.mark()
        for i in range(5):
            bob.groupchat(room, "counted %d" % i)
        for i in range(5):
            await p.wait_for(P(name="message", body="counted %d" % i), since=mp)
            await l.wait_for(P(name="message", body="counted %d" % i), since=ml)
        await w.quiet()
        count, hibernating, _ = probe()
        assert not hibernating
        assert count == p._sm_h, "mod_smacks counted %d stanzas, the phone received %d:\n%s" % (
            count, p._sm_h, p.transcript(mp))

        await p.abort()
        for _ in range(100):
            if probe()[1]:
                break
            await w.quiet(0.1)
        else:
            raise AssertionError("the phone's session never hibernated")
        ml = l.mark()
        for i in range(3):
            bob.groupchat(room, "queued %d" % i)
            await l.wait_for(P(name="message", body="queued %d" % i), since=ml)
        _, hibernating, queued = probe()
        assert hibernating
        assert [q for q in queued if q[1].startswith("queued")] == [
            (p.jid, "queued %d" % i) for i in range(3)], queued
    run(env, scenario)


# ---- both sides through the module --------------------------------------------

def test_two_module_accounts_talk_through_one_room(prosody):
    """XEP-0045 7.2.3, 7.4 with every occupant an account of the module's
    host: bob@localhost (two joined sessions) and alice@localhost (two joined
    sessions).  Each occupant's real JID is its bare JID (non-anonymous
    room, 7.2.4); an occupant's entry (7.2.3) and every message (7.4) reach
    each joined session of the other account once, and the speaker's other
    session gets the reflection with the id and origin-id intact."""
    async def scenario(w):
        room = w.room("both")
        bd = await w.connect("bob", "desk", host="localhost")
        bm = await w.connect("bob", "mobile", host="localhost")
        await create_room(bd, room, "bob", whois="anyone", subject="Both")
        _, seq = await join_room(bm, room, "bob")
        check_join_sequence(seq, room, "bob", [], "Both", bm.jid, history=None)

        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mbd, mbm = bd.mark(), bm.mark()
        _, seq = await join_room(p, room, "alice")
        bob_seen = [s for s in seq if s.frm == room + "/bob"]
        assert bob_seen and bob_seen[0].item.get("jid") == "bob@localhost", bob_seen
        for c, m in ((bd, mbd), (bm, mbm)):
            s = await exactly_once(c, P(name="presence", frm=room + "/alice", type="available"),
                                   since=m, what="alice entering, at " + c.name)
            assert s.item.get("jid") == ALICE and s.to == c.jid, s
        await join_room(l, room, "alice")

        mp, ml, mbd, mbm = p.mark(), l.mark(), bd.mark(), bm.mark()
        p.groupchat(room, "alice to bob", id="a-gc-1", origin_id="a-origin-1")
        for c, m in ((p, mp), (l, ml), (bd, mbd), (bm, mbm)):
            s = await exactly_once(c, P(name="message", body="alice to bob"), since=m,
                                   what="alice's message at " + c.name)
            assert s.frm == room + "/alice" and s.to == c.jid, s
            assert s.origin_id == "a-origin-1", s
        for c in (p, l):
            assert c.matching(P(name="message", body="alice to bob"), since=0)[0].id == "a-gc-1"

        mp, ml, mbd, mbm = p.mark(), l.mark(), bd.mark(), bm.mark()
        bm.groupchat(room, "bob to alice", id="b-gc-1", origin_id="b-origin-1")
        for c, m in ((p, mp), (l, ml), (bd, mbd), (bm, mbm)):
            s = await exactly_once(c, P(name="message", body="bob to alice"), since=m,
                                   what="bob's message at " + c.name)
            assert s.frm == room + "/bob" and s.to == c.jid, s
        for c in (bd, bm):
            r = c.matching(P(name="message", body="bob to alice"), since=0)[0]
            assert r.id == "b-gc-1" and r.origin_id == "b-origin-1", r
    run(prosody, scenario)
