"""End-to-end tests of mod_minimix with the room on another server.

Two Prosody instances federate over s2s on loopback (federation_env.py):
a.test on 127.A.B.2 serves the account under test, alice (sessions phone
= P, laptop = L, tablet = T), and loads mod_minimix; b.test on 127.A.B.3
serves the observers bob and carol and the MUC service conference.b.test,
and never loads the module.  Every stanza between alice and the room
crosses the s2s link; test-only spies log what arrives over s2s on either
side (mod_e2e_s2s_spy) and every error that reaches a room (mod_e2e_spy).

The behaviours of the foundation tests hold for a remote room: join, fork,
later session, leave, disconnect, kicks, nicks, private messages, IQs and
catch-up; and one copy per account crosses the link where plain MUC sends
one per session.  When the link fails or the room's server restarts,
joined sessions end up in the room again without a client action.

Each test states in its docstring the XEP-0045 behaviour it proves.  Only
waiting uses timeouts; no assertion depends on how long anything took.
MINIMIX_E2E_PLAIN=1 runs the same tests against plain Prosody MUC, where
the account-level behaviours fail.
"""

import asyncio
import datetime
import os
import time
import warnings

import pytest

from .clients import P, join_seen, NS_PING, from_room, join_room, create_room
from .federation_env import Federation, run_federation, ACCOUNT_DOMAIN, UNREACHABLE_DOMAIN
from .prosody_env import CHECKOUT
from .storages import archive_entries
from .world import next_second
from .test_foundation import check_join_sequence, exactly_once, subject_message

ALICE = "alice@" + ACCOUNT_DOMAIN
PLAIN = os.environ.get("MINIMIX_E2E_PLAIN", "") not in ("", "0")
PLUGIN_DIR = os.environ.get("MINIMIX_E2E_PLUGIN_DIR") or CHECKOUT

NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CARBONS = "urn:xmpp:carbons:2"
NS_FORWARD = "urn:xmpp:forward:0"

# How long the account may take, once the room can be reached again, to
# find out by itself that the room lost it and to join again.  The module
# pings (XEP-0410) 5 s after an s2s link to the room's host went down and
# every minimix_ping_interval seconds (default 300); the tests run with the
# default unless they say otherwise.
BACK_IN_ROOM = 30.0
# A short minimix_ping_interval, for the tests of the periodic self-ping.
SHORT_PING_INTERVAL = 4
# How long the room's server stays down in the "long" restarts: longer than
# the 5 s after which the module checks once the link went down.
LONG_DOWNTIME = 8.0


# ---- fixtures -----------------------------------------------------------------

@pytest.fixture
def federation_factory(request):
    """make(account_options=, room_options=) -> a started Federation."""
    feds = []

    def make(account_options=None, room_options=None):
        fed = Federation(minimix=not PLAIN, plugin_paths=[PLUGIN_DIR],
                         account_options=account_options, room_options=room_options)
        feds.append(fed)
        fed.start()
        return fed

    yield make

    rep = getattr(request.node, "rep_call", None)
    failed = rep is not None and rep.failed
    problems = []
    for fed in feds:
        fed.stop()
        for server in fed.servers:
            if failed:
                print(server.tail(80))
            errors = server.log_errors()
            if errors:
                problems.append("%s:\n%s" % (server.log_path, "\n".join(errors[:40])))
            if server.crashes:
                problems.append("%s: Prosody %s" % (server.name, "; ".join(server.crashes)))
            if server.stalled:
                warnings.warn("%s: Prosody %s" % (server.name, "; ".join(server.stalled)))
            late = server.log_errors(during_shutdown=True)
            if late:
                warnings.warn("errors in the %s server's log during shutdown (%s):\n%s"
                              % (server.name, server.log_path, "\n".join(late[:20])))
        fed.cleanup()
    if problems and not failed:
        pytest.fail("errors in the Prosody logs:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture
def federation(federation_factory):
    return federation_factory()


# ---- helpers ----------------------------------------------------------------

def no_errors_crossed(fed, since):
    """No error stanza from the account's server reached the room's server
    (a bounce to the room gets the account kicked), and none reached a
    room at all (mod_e2e_spy)."""
    crossed = fed.room.crossed(since=since, type="error")
    assert not crossed, "errors crossed the link to the room's server:\n" + \
        "\n".join(map(str, crossed))
    bounces = fed.room.spy_errors()
    assert not bounces, "errors reached a room:\n" + "\n".join(bounces)


def stamp(t):
    """XEP-0082 date-time, UTC, whole seconds."""
    return datetime.datetime.fromtimestamp(int(t), datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


async def kick(moderator, room, nick, reason="out"):
    """XEP-0045 8.2: a moderator kicks an occupant (role none)."""
    m = moderator.mark()
    iq_id = moderator.iq(room, "set", "<query xmlns='%s'><item nick='%s' role='none'>"
                         "<reason>%s</reason></item></query>" % (NS_MUC_ADMIN, nick, reason))
    res = await moderator.wait_for(P(name="iq", id=iq_id), since=m, what="kick result")
    assert res.type == "result", res


async def ban(admin, room, jid, reason="banned"):
    """XEP-0045 9.1: an admin bans a user (affiliation outcast)."""
    m = admin.mark()
    iq_id = admin.iq(room, "set", "<query xmlns='%s'><item affiliation='outcast' jid='%s'>"
                     "<reason>%s</reason></item></query>" % (NS_MUC_ADMIN, jid, reason))
    res = await admin.wait_for(P(name="iq", id=iq_id), since=m, what="ban result")
    assert res.type == "result", res


async def speak_and_wait(speaker, room, body, *listeners):
    """speaker says body; wait until the speaker's reflection and every
    listener's copy arrived."""
    marks = [(c, c.mark()) for c in (speaker,) + listeners]
    speaker.groupchat(room, body)
    for c, m in marks:
        await c.wait_for(P(name="message", type="groupchat", body=body), since=m,
                         what="%r at %s" % (body, c.name))


async def back_in_room(w, room, sessions, observer, mo, marks, what):
    """Without any client action the account joins room again: observer
    sees alice enter (7.2.3 broadcast), each joined session gets a new
    available self-presence (110); then a message from observer reaches
    every session once."""
    await observer.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                            since=mo, timeout=BACK_IN_ROOM,
                            what="alice back in the room (%s), at %s" % (what, observer.name))
    for c in sessions:
        await c.wait_for(P(name="presence", frm=room + "/alice", type="available", codes={110}),
                         since=marks[c], timeout=BACK_IN_ROOM,
                         what="a new self-presence at %s (%s)" % (c.name, what))
    ms = [(c, c.mark()) for c in sessions]
    observer.groupchat(room, "welcome back")
    for c, m in ms:
        await exactly_once(c, P(name="message", type="groupchat", body="welcome back"),
                           since=m, what="the room's message after %s, at %s" % (what, c.name))


# ---- 1. join over s2s ---------------------------------------------------------

def test_first_join_over_s2s(federation):
    """XEP-0045 7.2 (entering a room) with the room on another server: the
    join reaches the room from the account's bare JID, once; the joining
    session gets the other occupants' presences, its self-presence (110,
    with its join's id) last among them, the history (7.2.15, delayed) and
    the subject (7.2.16) last.  In the non-anonymous room (7.2.4) the others
    see the account, alice@a.test, as the occupant's real JID.  Another
    session of the account that did not join gets no room traffic."""
    fed = federation

    async def scenario(w):
        room = w.room("first")
        bob = await w.connect("bob", "desk")
        carol = await w.connect("carol", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Federation")
        await join_room(carol, room, "carol")
        await speak_and_wait(bob, room, "history one", carol)
        await speak_and_wait(bob, room, "history two", carol)

        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mb, ml, mp, ms = bob.mark(), l.mark(), p.mark(), fed.room.log_mark()
        p.join(room, "alice", id="fed-join-1")
        seq = await p.collect(subject_message(room), since=mp, what="subject")
        self_p = check_join_sequence(seq, room, "alice", ["bob", "carol"], "Federation",
                                     p.jid, history=["history one", "history two"])
        assert self_p.id == "fed-join-1", "self-presence lost the join's id: %s" % self_p
        seen = await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"),
                                  since=mb, what="alice's join as seen by bob")
        assert seen.item is not None and seen.item.get("jid") == ALICE, \
            "bob should see the account (bare JID) as the occupant: %s" % seen
        await l.assert_nothing(from_room(room), since=ml, what="room traffic at L (not joined)")
        joins = fed.room.crossed(since=ms, name="presence", to=room + "/alice")
        assert [j.frm for j in joins] == [ALICE], \
            "one join from the bare JID should cross the link: %s" % joins
    run_federation(fed, scenario)


def test_join_to_unreachable_server_fails_at_the_asking_session(federation):
    """XEP-0045 7.2 error case over s2s (RFC 6120 8.3.3.16, remote-server-
    not-found / remote-server-timeout): when the room's server cannot be
    reached, the presence error reaches only the session that asked, with
    its join's id, and leaves no membership behind: another session's join
    gets its own error rather than a cached "joined"."""
    fed = federation

    async def scenario(w):
        room = "lost@" + UNREACHABLE_DOMAIN
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mp, ml = p.mark(), l.mark()
        p.join(room, "alice", id="lost-join-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="join error")
        assert err.error[1] in ("remote-server-not-found", "remote-server-timeout"), err
        assert err.id == "lost-join-1", "error lost the join's id: %s" % err
        assert err.to == p.jid, err
        await l.assert_nothing(from_room(room), since=ml, what="the error at L")

        ml = l.mark()
        l.join(room, "alice", id="lost-join-2")
        err2 = await l.wait_for(P(name="presence", frm_bare=room, type="error"), since=ml,
                                what="second join error")
        assert err2.id == "lost-join-2", err2
        assert not l.matching(P(name="presence", frm_bare=room, codes={110}), since=ml), \
            "a failed join must not leave a membership behind:\n" + l.transcript(ml)
    run_federation(fed, scenario)


# ---- 2. fork, and one copy per account crosses the link --------------------------

def test_fork_sends_one_copy_per_account_over_the_link(federation):
    """XEP-0045 7.4 (a message to all occupants) with two joined sessions:
    the room sends one copy to its occupant, the account, so exactly one
    copy crosses the link, and the account's server forks it to each
    joined session once, addressed to its full JID; a session that did not
    join gets nothing.  The other way, a session's message crosses once,
    from the bare JID, with the client's id and XEP-0359 origin-id intact,
    and the room's reflection reaches every joined session.  (Plain MUC:
    two occupants, two copies of everything.)"""
    fed = federation

    async def scenario(w):
        room = w.room("fork")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml, mt, ma = p.mark(), l.mark(), t.mark(), fed.account.log_mark()
        bob.groupchat(room, "to everyone", id="bob-gc-1")
        for c, m in ((p, mp), (l, ml)):
            s = await exactly_once(c, P(name="message", type="groupchat", body="to everyone"),
                                   since=m, what="bob's groupchat at " + c.name)
            assert s.frm == room + "/bob" and s.to == c.jid, s
        await t.assert_nothing(from_room(room), since=mt, what="room traffic at T (not joined)")
        copies = fed.account.crossed(since=ma, name="message", body="to everyone")
        assert [c.to for c in copies] == [ALICE], \
            "exactly one copy, to the account, should cross the link: %s" % copies

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        ma, mr = fed.account.log_mark(), fed.room.log_mark()
        p.groupchat(room, "from the phone", id="p-gc-1", origin_id="p-origin-1")
        s = await exactly_once(bob, P(name="message", body="from the phone"), since=mb,
                               what="alice's message at bob")
        assert s.frm == room + "/alice" and s.origin_id == "p-origin-1", s
        for c, m in ((p, mp), (l, ml)):
            r = await exactly_once(c, P(name="message", body="from the phone"), since=m,
                                   what="reflection at " + c.name)
            assert r.frm == room + "/alice" and r.to == c.jid, r
            assert r.id == "p-gc-1", "reflection lost the id: %s" % r
            assert r.origin_id == "p-origin-1", "reflection lost the origin-id: %s" % r
        out = fed.room.crossed(since=mr, name="message", body="from the phone")
        assert [(m.frm, m.id) for m in out] == [(ALICE, "p-gc-1")], \
            "one message from the bare JID, with the client's id, should cross: %s" % out
        back = fed.account.crossed(since=ma, name="message", body="from the phone")
        assert len(back) == 1, "one reflection should cross back: %s" % back
    run_federation(fed, scenario)


def test_room_log_is_written_once_for_two_accounts_over_the_link(federation):
    """Two accounts of a.test in a room on conference.b.test each get their
    own copy of every message over the link; the account server's room log
    (README "Room log") holds each message once.  The room keeps no
    archive, so its messages carry no stanza-id: the copies are told apart
    by sender, message id and body."""
    fed = federation

    async def scenario(w):
        room = w.room("logged")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        c = await w.connect("carol", "home", host=ACCOUNT_DOMAIN)
        await join_room(p, room, "alice")
        await join_room(c, room, "carol")
        mp, mc, ma = p.mark(), c.mark(), fed.account.log_mark()
        texts = ["over the link %d" % i for i in range(3)]
        for t in texts:
            bob.groupchat(room, t)
        for cl, m in ((p, mp), (c, mc)):
            for t in texts:
                await exactly_once(cl, P(name="message", body=t), since=m,
                                   what="%r at %s" % (t, cl.name))
        copies = fed.account.crossed(since=ma, name="message", body=texts[0])
        assert sorted(x.to for x in copies) == [ALICE, "carol@" + ACCOUNT_DOMAIN], copies
        # One more message, after both copies of every text reached the
        # account's server: the log is written in the order messages
        # come, so once it holds this one, a second copy of any text
        # would be there too.
        bob.groupchat(room, "last")
        for cl, m in ((p, mp), (c, mc)):
            await cl.wait_for(P(name="message", body="last"), since=m,
                              what="'last' at %s" % cl.name)
        deadline = time.monotonic() + 15
        while True:
            got = [e["body"] for e in archive_entries(fed.account, room, "minimix_log",
                                                      host=ACCOUNT_DOMAIN) if e["body"]]
            if "last" in got:
                break
            assert time.monotonic() < deadline, "the room log never held 'last': %r" % got
            await asyncio.sleep(0.2)
        assert got == texts + ["last"], "the room log holds %r" % got
    run_federation(fed, scenario)


# ---- 3. later session -----------------------------------------------------------

def test_later_session_joins_without_crossing_the_link(federation):
    """XEP-0045 7.2.3 as seen by a second session of an occupant already in
    the remote room: occupants' presences, its self-presence (110) last,
    then the subject (7.2.16), all from the account's server, with nothing
    sent to the room (the others see no presence of alice).  A new
    occupant's entry reaches every joined session, and a session joining
    after that finds it in its replay."""
    fed = federation

    async def scenario(w):
        room = w.room("later")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Later")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_seen(bob, room, "alice")

        mb, ml, mr = bob.mark(), l.mark(), fed.room.log_mark()
        l.join(room, "alice", id="later-join-1")
        seq = await l.collect(subject_message(room), since=ml, what="subject at L")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "Later", l.jid, history=None)
        assert self_p.id == "later-join-1", self_p
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob (second join)")
        crossed = fed.room.crossed(since=mr, frm_bare=ALICE)
        assert not crossed, "a later session's join crossed the link: %s" % crossed

        carol = await w.connect("carol", "desk")
        mp, ml = p.mark(), l.mark()
        await join_room(carol, room, "carol")
        for c, m in ((p, mp), (l, ml)):
            s = await exactly_once(c, P(name="presence", frm=room + "/carol", type="available"),
                                   since=m, what="carol's join at " + c.name)
            assert s.to == c.jid, s

        t = await w.connect("alice", "tablet")
        mb, mr = bob.mark(), fed.room.log_mark()
        _, seq = await join_room(t, room, "alice", id="tablet-join-1")
        check_join_sequence(seq, room, "alice", ["bob", "carol"], "Later", t.jid, history=None)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob (third join)")
        assert not fed.room.crossed(since=mr, frm_bare=ALICE)
    run_federation(fed, scenario)


# ---- 4. leave --------------------------------------------------------------------

def test_leave_over_s2s(federation):
    """XEP-0045 7.14 (exiting a room) with a remote room: a session that
    leaves gets its unavailable self-presence (110) from its own server and
    nothing crosses the link; when the last session leaves, the account's
    one unavailable presence crosses and the others see the occupant
    leave.  Afterwards the account can enter again (7.2)."""
    fed = federation

    async def scenario(w):
        room = w.room("leave")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml, mr = bob.mark(), p.mark(), l.mark(), fed.room.log_mark()
        p.leave(room, "alice", id="p-leave-1")
        u = await p.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                             since=mp, what="P's unavailable self-presence")
        assert 110 in u.codes and u.to == p.jid, u
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="alice's presence at bob after P left")
        assert not fed.room.crossed(since=mr, frm_bare=ALICE), "P's leave crossed the link"
        mp = p.mark()
        await speak_and_wait(bob, room, "after P left", l)
        await p.assert_nothing(from_room(room), since=mp, what="room traffic at P after leaving")

        ml, mr = l.mark(), fed.room.log_mark()
        l.leave(room, "alice", id="l-leave-1")
        u = await l.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                             since=ml, what="L's unavailable self-presence")
        assert 110 in u.codes, u
        gone = await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable"),
                                  since=mb, what="alice leaving, at bob")
        assert 110 not in gone.codes, gone
        leaves = fed.room.crossed(since=mr, name="presence", frm_bare=ALICE)
        assert [(x.frm, x.type) for x in leaves] == [(ALICE, "unavailable")], leaves

        mb = bob.mark()
        _, seq = await join_room(p, room, "alice", id="p-rejoin-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", p.jid,
                                     history=["after P left"])
        assert self_p.id == "p-rejoin-1", self_p
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"), since=mb,
                           what="alice entering again, at bob")
    run_federation(fed, scenario)


# ---- 5. disconnect ---------------------------------------------------------------

@pytest.mark.parametrize("how", ["abrupt", "clean"])
def test_disconnect_detaches_the_session_only(federation, how):
    """XEP-0045 7.14 applies to the occupant, the account: a session that
    disconnects without leaving (TCP closed, or </stream> without a MUC
    leave) is detached, nothing about it crosses to the remote room (no
    unavailable presence), the other joined session keeps receiving, and
    the same resource reconnecting gets no room traffic until it joins
    again, then the later-session sequence (7.2.3) without a new join in
    the room."""
    fed = federation

    async def scenario(w):
        room = w.room("disconnect-" + how)
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Stay")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, ml, mr = bob.mark(), l.mark(), fed.room.log_mark()
        if how == "abrupt":
            await p.abort()
        else:
            await p.disconnect()
        await l.wait_for(P(name="presence", frm=p.jid, type="unavailable"), since=ml,
                         what="P's session ending, seen by L")
        await speak_and_wait(bob, room, "after P vanished", l)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"),
                                 since=mb, what="a presence of alice at bob")
        assert not fed.room.crossed(since=mr, frm_bare=ALICE), \
            "P's disconnection crossed the link: %s" % fed.room.crossed(since=mr, frm_bare=ALICE)

        p2 = await w.connect("alice", "phone")
        m2 = p2.mark()
        await speak_and_wait(bob, room, "before P rejoins", l)
        await p2.assert_nothing(from_room(room), since=m2,
                                what="room traffic at the reconnected P before it joins")
        mb, m2 = bob.mark(), p2.mark()
        p2.join(room, "alice", id="rejoin-1")
        seq = await p2.collect(subject_message(room), since=m2, what="subject at P")
        check_join_sequence(seq, room, "alice", ["bob"], "Stay", p2.jid, history=None)
        await bob.assert_nothing(P(name="presence", frm=room + "/alice"), since=mb,
                                 what="a presence of alice at bob")
    run_federation(fed, scenario)


def test_vanished_smacks_session_bounces_nothing_across_the_link(federation_factory):
    """XEP-0045 9.6 / XEP-0198 6 over s2s: room traffic queued for a session
    with stream management that vanished is not bounced when resumption
    times out; no error crosses the link to the remote room (which would
    remove the account: Prosody kicks with 333), the account stays in,
    and the other joined session keeps receiving."""
    fed = federation_factory(account_options={"smacks_hibernation_time": 2})

    async def scenario(w):
        room = w.room("nobounce")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone", sm=True)
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, ml, mr = bob.mark(), l.mark(), fed.room.log_mark()
        await p.abort()
        ended = P(name="presence", frm=p.jid, type="unavailable")
        n = 0
        while not l.matching(ended, since=ml):
            n += 1
            assert n < 200, "P's hibernating session never ended:\n" + l.transcript(ml)
            await speak_and_wait(bob, room, "while P hibernates %d" % n, l)
            await w.quiet(0.2)
        await speak_and_wait(bob, room, "after the timeout", l)
        await w.quiet()
        kicked = P(name="presence", frm=room + "/alice",
                   fn=lambda s: s.type == "unavailable" or bool({307, 333} & s.codes))
        assert not bob.matching(kicked, since=mb), \
            "alice left or was kicked:\n" + bob.transcript(mb)
        no_errors_crossed(fed, mr)
    run_federation(fed, scenario)


# ---- 6. kicks and bans -------------------------------------------------------------

def test_kick_over_s2s_reaches_every_joined_session(federation):
    """XEP-0045 8.2 (kicking an occupant): the kicked occupant, the
    account, gets an unavailable presence with status 307 (and 110, its
    own), which reaches every joined session of the account, and no other;
    the membership is over, so a session's join afterwards is a new entry
    the room and the others see (7.2)."""
    fed = federation

    async def scenario(w):
        room = w.room("kick")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml, mt, mb = p.mark(), l.mark(), t.mark(), bob.mark()
        await kick(bob, room, "alice")
        for c, m in ((p, mp), (l, ml)):
            u = await exactly_once(c, P(name="presence", frm=room + "/alice", type="unavailable"),
                                   since=m, what="the kick at " + c.name)
            assert {110, 307} <= u.codes, "kick without 110 and 307: %s" % u
            assert u.to == c.jid and u.item.get("role") == "none", u
        await t.assert_nothing(from_room(room), since=mt, what="the kick at T (not joined)")
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="unavailable",
                             codes={307}), since=mb, what="the kick at bob")

        mp, ml, mb = p.mark(), l.mark(), bob.mark()
        await speak_and_wait(bob, room, "after the kick")
        await w.quiet()
        for c, m in ((p, mp), (l, ml)):
            assert not c.matching(from_room(room), since=m), \
                "room traffic after the kick:\n" + c.transcript(m)
        _, seq = await join_room(p, room, "alice", id="after-kick-1")
        self_p = check_join_sequence(seq, room, "alice", ["bob"], "", p.jid, history=None)
        assert self_p.id == "after-kick-1", self_p
        await bob.wait_for(P(name="presence", frm=room + "/alice", type="available"), since=mb,
                           what="alice entering again, at bob")
    run_federation(fed, scenario)


def test_ban_over_s2s_ends_membership_and_refuses_rejoin(federation):
    """XEP-0045 9.1 (banning a user): the account, banned by its bare JID,
    gets an unavailable presence with 301 (and 110) at every joined
    session; a later join is refused by the room with <forbidden/>
    (7.2.7), at the session that asked only, with its id."""
    fed = federation

    async def scenario(w):
        room = w.room("ban")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml = p.mark(), l.mark()
        await ban(bob, room, ALICE)
        for c, m in ((p, mp), (l, ml)):
            u = await exactly_once(c, P(name="presence", frm=room + "/alice", type="unavailable"),
                                   since=m, what="the ban at " + c.name)
            assert {110, 301} <= u.codes, "ban without 110 and 301: %s" % u

        mp, ml = p.mark(), l.mark()
        p.join(room, "alice", id="banned-join-1")
        err = await p.wait_for(P(name="presence", frm_bare=room, type="error"), since=mp,
                               what="the refusal")
        assert err.error == ("auth", "forbidden") and err.id == "banned-join-1", err
        await l.assert_nothing(from_room(room), since=ml, what="the refusal at L")
    run_federation(fed, scenario)


# ---- 7. nicks -----------------------------------------------------------------------

def test_nick_change_over_s2s_is_the_accounts(federation):
    """XEP-0045 7.6 (changing nickname) from one device: the room sees the
    account change its nick once (unavailable with 303 and the new nick,
    then the new occupant JID), every joined session gets both with 110;
    a session joining later under the old nick is answered with the
    account's nick and status 210 (7.2.2, the service changed the nick),
    without a new join in the room."""
    fed = federation

    async def scenario(w):
        room = w.room("nicks")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml, mr = bob.mark(), p.mark(), l.mark(), fed.room.log_mark()
        p.presence_update(room, "alicia", id="nick-1")
        change = P(name="presence", frm=room + "/alice", type="unavailable", codes={303})
        new = P(name="presence", frm=room + "/alicia", type="available")
        u = await exactly_once(bob, change, since=mb, what="the nick change at bob")
        assert u.item.get("nick") == "alicia", u
        await bob.wait_for(new, since=mb, what="the new nick at bob")
        for c, m in ((p, mp), (l, ml)):
            u = await exactly_once(c, change, since=m, what="the nick change at " + c.name)
            assert 110 in u.codes and u.item.get("nick") == "alicia", u
            s = await c.wait_for(new, since=m, what="the new self-presence at " + c.name)
            assert 110 in s.codes, s
        sent = fed.room.crossed(since=mr, name="presence", frm_bare=ALICE)
        assert [(x.frm, x.to) for x in sent] == [(ALICE, room + "/alicia")], sent

        t = await w.connect("alice", "tablet")
        mb, mt, mr = bob.mark(), t.mark(), fed.room.log_mark()
        t.join(room, "alice", id="old-nick-join")
        seq = await t.collect(subject_message(room), since=mt, what="subject at T")
        self_p = check_join_sequence(seq, room, "alicia", ["bob"], "", t.jid, history=None)
        assert 210 in self_p.codes, "the account's nick without 210: %s" % self_p
        await bob.assert_nothing(P(name="presence", frm_bare=room,
                                   fn=lambda s: s.frm in (room + "/alice", room + "/alicia")),
                                 since=mb, what="a presence of alice at bob")
        assert not fed.room.crossed(since=mr, frm_bare=ALICE)
    run_federation(fed, scenario)


# ---- 8. private messages ----------------------------------------------------------

def test_private_messages_over_s2s(federation):
    """XEP-0045 7.5 (private messages) with a remote room: a private message
    from a session goes out from the account (the occupant) once, the
    other joined session gets an XEP-0280 'sent' carbon of it; a private
    message to the occupant crosses once and reaches every joined session,
    not a session that did not join."""
    fed = federation

    async def scenario(w):
        room = w.room("pm")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        t = await w.connect("alice", "tablet")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml, mr = bob.mark(), p.mark(), l.mark(), fed.room.log_mark()
        p.message(room + "/bob", "psst bob", type="chat", id="pm-1")
        got = await exactly_once(bob, P(name="message", body="psst bob"), since=mb,
                                 what="alice's private message at bob")
        assert got.frm == room + "/alice" and got.type == "chat", got

        def carbon_of(s):
            sent = s.xml.find("{%s}sent" % NS_CARBONS)
            if sent is None:
                return None
            fwd = sent.find("{%s}forwarded" % NS_FORWARD)
            return None if fwd is None else fwd.find("{jabber:client}message")

        cc = await l.wait_for(P(name="message", fn=lambda s: carbon_of(s) is not None),
                              since=ml, what="a carbon of P's private message at L")
        inner = carbon_of(cc)
        assert inner.get("to") == room + "/bob", cc
        assert inner.findtext("{jabber:client}body") == "psst bob", cc
        assert cc.frm == ALICE, cc
        await p.assert_nothing(P(name="message", fn=lambda s: carbon_of(s) is not None
                                 or s.body == "psst bob"), since=mp, what="P's own message back")
        out = fed.room.crossed(since=mr, name="message", body="psst bob")
        assert [(m.frm, m.to) for m in out] == [(ALICE, room + "/bob")], out

        mp, ml, mt, ma = p.mark(), l.mark(), t.mark(), fed.account.log_mark()
        bob.message(room + "/alice", "psst alice", type="chat", id="pm-2")
        for c, m in ((p, mp), (l, ml)):
            s = await exactly_once(c, P(name="message", body="psst alice"), since=m,
                                   what="bob's private message at " + c.name)
            assert s.frm == room + "/bob" and s.to == c.jid, s
        await t.assert_nothing(P(name="message", body="psst alice"), since=mt,
                               what="bob's private message at T (not joined)")
        assert len(fed.account.crossed(since=ma, name="message", body="psst alice")) == 1
    run_federation(fed, scenario)


# ---- 9. IQs --------------------------------------------------------------------------

def test_iqs_over_s2s_reach_only_the_asking_session(federation):
    """XEP-0410 (self-ping to one's own occupant JID) and XEP-0030 (disco
    to the room) from sessions of the account: each IQ crosses the link
    from the account with an id the account's server owns, not the
    client's; the answer reaches only the session that asked, with its own
    id (RFC 6120 8.2.3)."""
    fed = federation

    async def scenario(w):
        room = w.room("iqs")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mp, ml, mr = p.mark(), l.mark(), fed.room.log_mark()
        p.ping(room + "/alice", id="p-ping-1")
        res = await p.wait_for(P(name="iq", id="p-ping-1"), since=mp, what="the self-ping answer")
        assert res.type == "result" and res.frm == room + "/alice" and res.to == p.jid, res
        await l.assert_nothing(P(name="iq"), since=ml, what="P's ping answer at L")
        pings = fed.room.crossed(since=mr, name="iq",
                                 fn=lambda s: s.child("ping", NS_PING) is not None)
        own = [x for x in pings if x.frm == ALICE and x.to == room + "/alice"]
        assert len(own) >= 1 and all(x.id != "p-ping-1" for x in own), \
            "the ping should cross from the account with the module's id: %s" % pings

        mp, ml = p.mark(), l.mark()
        l.iq(room, "get", "<query xmlns='%s'/>" % NS_DISCO_INFO, id="l-disco-1")
        res = await l.wait_for(P(name="iq", id="l-disco-1"), since=ml, what="disco#info answer")
        assert res.type == "result" and res.frm == room and res.to == l.jid, res
        q = res.xml.find("{%s}query" % NS_DISCO_INFO)
        assert q is not None and q.find("{%s}identity" % NS_DISCO_INFO) is not None, res
        await p.assert_nothing(P(name="iq"), since=mp, what="L's disco answer at P")
    run_federation(fed, scenario)


# ---- 10. catch-up --------------------------------------------------------------------

def test_catch_up_over_s2s(federation):
    """XEP-0045 7.2.15 (discussion history, <history maxstanzas/> and
    since) served by the account's server for a remote room: a session
    joining while the account is in the room gets the latest messages as
    its <history/> asks, with XEP-0203 delay stamps, after its
    self-presence and before the subject, and nothing crosses the link; a
    phone that was offline gets what the room said since it left."""
    fed = federation

    async def scenario(w):
        room = w.room("catchup")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Catch up")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice", history={"maxstanzas": 0})
        for body in ("one", "two", "three"):
            await speak_and_wait(bob, room, body, p)

        mr = fed.room.log_mark()
        _, seq = await join_room(l, room, "alice", history={"maxstanzas": 2})
        check_join_sequence(seq, room, "alice", ["bob"], "Catch up", l.jid,
                            history=["two", "three"])
        assert not fed.room.crossed(since=mr, frm_bare=ALICE), "L's join crossed the link"

        await p.abort()
        # delay stamps have whole seconds: step past the last one P saw
        await next_second()
        since = stamp(time.time())
        for body in ("while away 1", "while away 2"):
            await speak_and_wait(bob, room, body, l)
        p2 = await w.connect("alice", "phone")
        _, seq = await join_room(p2, room, "alice", history={"since": since})
        check_join_sequence(seq, room, "alice", ["bob"], "Catch up", p2.jid,
                            history=["while away 1", "while away 2"])
    run_federation(fed, scenario)


# ---- 11. the link fails, the remote server restarts -------------------------------

def test_link_drop_and_return_keeps_the_account_in(federation):
    """A dropped s2s link that comes back at once (both servers up) loses
    nothing: the account is still the occupant, the room's next message
    reaches every joined session once over a new stream, a session's
    message reaches the room, and no error crosses to the room."""
    fed = federation

    async def scenario(w):
        room = w.room("drop")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await join_seen(bob, room, "alice")

        mb, mp, ml, mr = bob.mark(), p.mark(), l.mark(), fed.room.log_mark()
        # Both ends see the cut before the room speaks again: what a server
        # writes on a stream the other end has closed is lost in TCP, for
        # plain MUC as for the module (that loss is what the room archive's
        # backfill is for, not this test).
        await w.link("down", both=True)
        await w.link("up", both=True)
        bob.groupchat(room, "after the drop")
        for c, m in ((p, mp), (l, ml)):
            await exactly_once(c, P(name="message", body="after the drop"), since=m,
                               what="bob's message after the drop at " + c.name)
        await speak_and_wait(p, room, "alice after the drop", bob, l)
        # the module's check after the link fell (XEP-0410) finds it in
        await w.quiet(7)
        assert not bob.matching(P(name="presence", frm=room + "/alice"), since=mb), \
            bob.transcript(mb)
        for c, m in ((p, mp), (l, ml)):
            assert not c.matching(P(name="presence", frm=room + "/alice"), since=m), \
                c.transcript(m)
        no_errors_crossed(fed, mr)
    run_federation(fed, scenario)


@pytest.mark.parametrize("ping_interval", [SHORT_PING_INTERVAL, None],
                         ids=["short-ping-interval", "default-settings"])
def test_link_outage_removal_is_repaired_without_client_action(federation_factory,
                                                               ping_interval):
    """While the s2s link is down, the room's traffic to the account
    bounces on the room's server and the room removes the account (Prosody:
    status 333, a technical problem); the removal itself cannot reach the
    account's server.  A session speaking meanwhile gets the error, alone.
    Once the link is back, the account finds out by itself (XEP-0410
    self-ping answered not-acceptable) and joins again: the others see it
    enter, each joined session learns it was out (unavailable 110 + 333)
    and gets a new self-presence, and the room's messages reach every
    session again - without any client action.  With the default settings
    the outage outlasts the check 5 s after the link fell, so the account
    must notice when the link is back, not minutes later; with a short
    minimix_ping_interval the periodic self-ping does it."""
    host_options = {} if ping_interval is None else {"minimix_ping_interval": ping_interval}
    fed = federation_factory(account_options={"host_options": host_options})

    async def scenario(w):
        room = w.room("outage")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")

        mr = fed.room.log_mark()
        await w.link("down")
        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        removed = P(name="presence", frm=room + "/alice", type="unavailable", codes={333})
        n = 0
        # A message the room's server wrote on a stream before it noticed
        # the cut may be lost without a bounce: talk until one bounces.
        while not bob.matching(removed, since=mb):
            n += 1
            assert n < 20, "the room never removed alice:\n" + bob.transcript(mb)
            mb2 = bob.mark()
            bob.groupchat(room, "nobody hears this %d" % n)
            try:
                await bob.wait_for(removed, since=mb2, timeout=2)
            except AssertionError:
                pass
        p.groupchat(room, "into the void", id="void-1")
        err = await p.wait_for(P(name="message", id="void-1", type="error"), since=mp,
                               timeout=30,
                               what="the error for P's message while the link is down")
        assert err.frm == room, err
        await w.quiet()
        assert not l.matching(P(id="void-1"), since=ml), l.transcript(ml)

        await w.link("up")
        await back_in_room(w, room, (p, l), bob, mb, {p: mp, l: ml}, "the outage")
        for c, m in ((p, mp), (l, ml)):
            out = c.matching(P(name="presence", frm=room + "/alice", type="unavailable"),
                             since=m)
            assert out and {110, 333} <= out[0].codes, \
                "%s should learn that the account was out (110, 333):\n%s" \
                % (c.name, c.transcript(m))
        assert not fed.room.crossed(since=mr, type="error"), \
            "an error crossed from the account's server to the room's"
    run_federation(fed, scenario, timeout=150)


@pytest.mark.parametrize("how", ["clean", "crash", "crash-long"])
def test_remote_server_restart_sessions_end_up_in_the_room(federation_factory, how):
    """The room's server restarts: cleanly (Prosody saves every room with
    its occupants and restores them, so the account is still in), or after
    a crash (the persistent room comes back without occupants, and does
    not know the account).  Either way, without any client action, the
    joined sessions end up in the room again (after a crash: XEP-0410
    self-ping answered not-acceptable, then a re-join): a new occupant's
    entry and messages reach every joined session once, the new occupant
    sees alice in the room, and no bounce ever crosses to the room.
    "crash-long": the crashed server stays down for LONG_DOWNTIME seconds,
    longer than the module's check 5 s after the link fell; default
    settings throughout."""
    fed = federation_factory()

    async def scenario(w):
        room = w.room("restart-" + how)
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone",
                          config={"muc#roomconfig_persistentroom": True})
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await bob.abort()

        mp, ml = p.mark(), l.mark()
        if how == "clean":
            fed.room.restart()
        else:
            fed.room.kill()
            if how == "crash-long":
                await asyncio.sleep(LONG_DOWNTIME)
            fed.room.start()
        mr = fed.room.log_mark()
        carol = await w.connect("carol", "desk")
        mc = carol.mark()
        _, seq = await join_room(carol, room, "carol")
        alice_in = P(name="presence", frm=room + "/alice", type="available")
        if not any(alice_in(s) for s in seq):
            # after a crash the room no longer knows alice: she comes back
            assert how != "clean", "alice should still be in the room after a clean " \
                "restart:\n" + carol.transcript(mc)
            await carol.wait_for(alice_in, since=mc, timeout=BACK_IN_ROOM,
                                 what="alice back in the room after the crash, at carol")
        for c, m in ((p, mp), (l, ml)):
            await exactly_once(c, P(name="presence", frm=room + "/carol", type="available"),
                               since=m, what="carol entering, at " + c.name)
            own = c.matching(P(name="presence", frm_bare=room, codes={110}), since=m)
            if how == "clean":
                assert not own, "a clean restart of the room's server is no news to %s:\n%s" \
                    % (c.name, c.transcript(m))
            else:
                await c.wait_for(P(name="presence", frm=room + "/alice", type="available",
                                   codes={110}), since=m, timeout=BACK_IN_ROOM,
                                 what="a new self-presence at %s after the crash" % c.name)
        mp, ml = p.mark(), l.mark()
        carol.groupchat(room, "after the restart")
        for c, m in ((p, mp), (l, ml)):
            await exactly_once(c, P(name="message", body="after the restart"), since=m,
                               what="carol's message at " + c.name)
        await speak_and_wait(p, room, "alice after the restart", carol, l)
        no_errors_crossed(fed, mr)
    run_federation(fed, scenario, timeout=150)
