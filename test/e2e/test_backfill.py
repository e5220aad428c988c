"""End-to-end tests of the backfill: the room log filled from the room's
own archive (XEP-0313) after a gap (minimix_backfill.lib.lua).

What is proven:

1. Federation (federation_env.py): alice on a.test (the module) is in a
   room on conference.b.test that keeps 5 messages of history and archives
   everything (mod_muc_mam).  a.test is killed (kill -9) and stays down
   while bob says 30 messages; it comes back, the account joins again by
   itself (its re-join's history brings 5 of them) and the backfill reads
   the room's archive.  A device joining with maxstanzas='50' gets all 30,
   in order, once each, after what it had seen before, each with a
   XEP-0203 delay from the room; the room log holds each once.
2. A room that lies (a hand-driven external component as the room
   service): after a 332 re-join it advertises urn:xmpp:mam:2 and answers
   every archive query with a page that never completes, more results
   than asked, results from another room's JID, forwarded messages not
   from the room and not groupchat.  The backfill stops at
   minimix_backfill_max_pages, takes at most a page's worth of each page,
   writes nothing foreign, and the message the room says during the
   backfill is logged after it (the log keeps the room's order).
"""

import asyncio
import re
import time

import pytest

from .clients import P, join_room, create_room
from .federation_env import Federation, run_federation, ACCOUNT_DOMAIN
from .prosody_env import CHECKOUT
from .storages import archive_entries
from .test_federation import federation_factory, speak_and_wait  # noqa: F401 (fixture)
from .test_hostile import HostileService, EVIL, EVIL_SECRET
from .world import run

ALICE_FED = "alice@" + ACCOUNT_DOMAIN
ALICE = "alice@localhost"
NS_DELAY = "urn:xmpp:delay"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


async def log_line(server, pattern, timeout=30, since=0):
    """Wait for a line of the server's log matching pattern."""
    deadline = time.monotonic() + timeout
    while True:
        text = server.read_log()[since:]
        m = re.search(pattern, text)
        if m:
            return m
        assert time.monotonic() < deadline, "never logged %r:\n%s" % (pattern, server.tail(40))
        await asyncio.sleep(0.2)


def catch_up_bodies(got, room):
    """The bodies of the room messages between the self-presence and the
    subject; each has one delay from the room."""
    selfs = [i for i, s in enumerate(got) if s.name == "presence" and s.is_self_presence]
    out = []
    for s in got[selfs[-1] + 1:]:
        if s.name != "message" or s.body is None:
            continue
        delays = [d for d in s.xml.findall("{%s}delay" % NS_DELAY) if d.get("from") == room]
        assert len(delays) == 1, "not one delay from the room: %s" % s
        out.append(s.body)
    return out


@pytest.mark.parametrize("storage", ["internal", "sqlite"])
def test_what_was_said_while_the_server_was_down_comes_from_the_rooms_archive(
        federation_factory, storage):  # noqa: F811
    """XEP-0313 §4 (the room's archive, queried by the account after the
    last message its log holds) fills what XEP-0045 §7.2.15 history
    (5 messages here) cannot: all 30 messages said while a.test was down
    reach a device joining afterwards, in order, once.  A second local
    account in the room (ctl) joins again too: the room is backfilled
    once."""
    fed = federation_factory(
        account_options={"storage": storage},
        room_options={"muc_options": {"modules_enabled": ["e2e_spy", "e2e_s2s_spy", "muc_mam"]}})
    gap = ["while down %02d" % i for i in range(30)]

    async def scenario(w):
        room = w.room("backfill")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Backfill",
                          config={"muc#roomconfig_persistentroom": True,
                                  "muc#roomconfig_historylength": 5})
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice")
        ctl = await w.connect("ctl", "desk")
        await join_room(ctl, room, "ctl")
        for body in ("before 1", "before 2"):
            await speak_and_wait(bob, room, body, phone, ctl)
        deadline = time.monotonic() + 20
        while [e["body"] for e in archive_entries(fed.account, room, "minimix_log", host=ACCOUNT_DOMAIN)
               if e["body"]] != ["before 1", "before 2"]:
            assert time.monotonic() < deadline, "the log never held the first two"
            await asyncio.sleep(0.2)
        for c in (phone, ctl):
            await c.abort()
            w.clients.remove(c)
        fed.account.kill()
        for body in gap:
            bob.groupchat(room, body)
        await bob.wait_for(P(name="message", body=gap[-1]), what="the last one at bob")
        fed.account.start()
        await log_line(fed.account, r"Backfilled \d+ message\(s\) of %s" % re.escape(room),
                       timeout=60)
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 50})
        assert catch_up_bodies(got, room) == ["before 1", "before 2"] + gap, \
            phone.transcript()
        # the log once the writer wrote the last one
        deadline = time.monotonic() + 20
        while True:
            logged = [e["body"] for e in archive_entries(fed.account, room, "minimix_log",
                                                         host=ACCOUNT_DOMAIN) if e["body"]]
            if gap[-1] in logged or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert logged == ["before 1", "before 2"] + gap, logged
        await log_line(fed.account, r"ctl@a\.test is in %s(.|\n)*ctl@a\.test is in %s"
                       % (re.escape(room), re.escape(room)))
        text = fed.account.read_log()
        assert len(re.findall(r"Backfilled \d+ message\(s\) of %s" % re.escape(room), text)) == 1, \
            text
    run_federation(fed, scenario, timeout=180)


def result_xml(room, to, qid, sid, stamp, body, frm=None, type="groupchat", by=None):
    return ("<message from='%s' to='%s'><result xmlns='%s' queryid='%s' id='%s'>"
            "<forwarded xmlns='urn:xmpp:forward:0'><delay xmlns='%s' stamp='%s'/>"
            "<message xmlns='jabber:client' from='%s' type='%s' id='%s'><body>%s</body></message>"
            "</forwarded></result></message>"
            % (by or room, to, NS_MAM, qid, sid, NS_DELAY, stamp, frm or room + "/bob", type,
               sid, body))


async def lying_room_rejoined(w, env, room):
    """alice's phone joins room on the hand-driven service; the room says
    'pre' (with its stanza-id); then it shuts down (332), the account joins
    again, the room answers the join and its disco#info advertises
    urn:xmpp:mam:2.  Returns (svc, phone, svc's mark, phone's mark)."""
    svc = HostileService(env)
    w.clients.append(svc)
    await svc.connect()
    p = await w.connect("alice", "phone")

    def joined(join):
        svc.send("<presence from='%s/alice' to='%s' id='%s'><x xmlns='%s'>"
                 "<item affiliation='none' role='participant'/><status code='110'/></x>"
                 "</presence>" % (room, ALICE, join.id or "", NS_MUC_USER))
        svc.send("<message from='%s' to='%s' type='groupchat'><subject>Lies</subject>"
                 "</message>" % (room, ALICE))

    ms, mp = svc.mark(), p.mark()
    p.join(room, "alice")
    joined(await svc.wait_for(P(name="presence", frm=ALICE, to=room + "/alice"),
                              since=ms, what="the join"))
    await p.wait_for(P(name="message", frm=room, subject="Lies"), since=mp)
    svc.send("<message from='%s/bob' to='%s' type='groupchat' id='pre'><body>pre</body>"
             "<stanza-id xmlns='urn:xmpp:sid:0' by='%s' id='sid-pre'/></message>"
             % (room, ALICE, room))
    await p.wait_for(P(name="message", body="pre"), since=mp)

    # the room shuts down (332): the account joins again a second later
    ms = svc.mark()
    svc.send("<presence from='%s/alice' to='%s' type='unavailable'><x xmlns='%s'>"
             "<item affiliation='none' role='none'/><status code='110'/>"
             "<status code='332'/></x></presence>" % (room, ALICE, NS_MUC_USER))
    join = await svc.wait_for(P(name="presence", frm=ALICE, to=room + "/alice"),
                              since=ms, what="the re-join", timeout=20)
    joined(join)
    disco = await svc.wait_for(P(name="iq", type="get", to=room), since=ms,
                               what="the disco#info query")
    assert disco.xml.find("{%s}query" % NS_DISCO_INFO) is not None, disco
    svc.send("<iq type='result' from='%s' to='%s' id='%s'><query xmlns='%s'>"
             "<identity category='conference' type='text'/><feature var='%s'/>"
             "</query></iq>" % (room, ALICE, disco.id, NS_DISCO_INFO, NS_MAM))
    return svc, p, ms, mp


async def logged_bodies(env, room, last):
    """The bodies of the room log once it holds last."""
    deadline = time.monotonic() + 20
    while True:
        bodies = [e["body"] for e in archive_entries(env, room, "minimix_log") if e["body"]]
        if last in bodies:
            return bodies
        assert time.monotonic() < deadline, bodies
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("bound", ["pages", "messages"])
def test_a_lying_room_archive_stops_at_the_bounds_and_writes_nothing_foreign(prosody_factory,
                                                                               bound):
    """A room service that answers XEP-0313 queries with endless pages
    (never <fin complete='true'/>), pages larger than the RSM <max/> asked,
    results from another room's JID and forwarded messages not from the
    room: the backfill asks minimix_backfill_max_pages pages and no more,
    writes at most <max/> results of a page, and writes only groupchat
    messages the room forwarded as its own; a message the room says live
    meanwhile is logged after the backfill.  The bound: 3 pages
    (minimix_backfill_max_pages), or 150 results read
    (minimix_backfill_max_messages), after 2 pages here."""
    if bound == "pages":
        options, pages = {"minimix_backfill_max_pages": 3}, 3
    else:
        options, pages = {"minimix_backfill_max_messages": 150}, 2
    env = prosody_factory(host_options=dict(options, minimix_rejoin_delay=1),
                          external_components={EVIL: EVIL_SECRET})
    room = "lies@" + EVIL

    async def scenario(w):
        svc, p, ms, mp = await lying_room_rejoined(w, env, room)
        n = 0
        queries = []
        for page in range(pages):
            q = await svc.wait_for(P(name="iq", type="set", to=room,
                                     fn=lambda s: s.xml.find("{%s}query" % NS_MAM) is not None
                                     and s.id not in [x.id for x in queries]),
                                   since=ms, what="archive query %d" % (page + 1))
            queries.append(q)
            query = q.xml.find("{%s}query" % NS_MAM)
            qid = query.get("queryid")
            asked = int(query.find("{%s}set/{%s}max" % (NS_RSM, NS_RSM)).text)
            after = query.findtext("{%s}set/{%s}after" % (NS_RSM, NS_RSM))
            if page == 0:
                assert after == "sid-pre", "after the log's newest: %s" % q
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
            for i in range(asked + 5):
                n += 1
                body = ("overflow %d" % n) if i >= asked else ("archived %d" % n)
                svc.send(result_xml(room, ALICE, qid, "a%d" % n, stamp, body))
            svc.send(result_xml(room, ALICE, qid, "f%d" % n, stamp, "foreign room %d" % n,
                                by="other@" + EVIL))
            svc.send(result_xml(room, ALICE, qid, "g%d" % n, stamp, "foreign sender %d" % n,
                                frm="other@" + EVIL + "/bob"))
            svc.send(result_xml(room, ALICE, qid, "c%d" % n, stamp, "not groupchat %d" % n,
                                type="chat"))
            if page == 1:
                svc.send("<message from='%s/bob' to='%s' type='groupchat' id='live'>"
                         "<body>live meanwhile</body><stanza-id xmlns='urn:xmpp:sid:0' by='%s' "
                         "id='sid-live'/></message>" % (room, ALICE, room))
                await p.wait_for(P(name="message", body="live meanwhile"), since=mp)
            svc.send("<iq type='result' from='%s' to='%s' id='%s'><fin xmlns='%s'>"
                     "<set xmlns='%s'><first>a%d</first><last>a%d</last></set></fin></iq>"
                     % (room, ALICE, q.id, NS_MAM, NS_RSM, n - asked - 4, n))
        await log_line(env, r"Backfilled \d+ message\(s\) of %s .*max_%s" % (re.escape(room), bound))
        assert len(svc.matching(P(name="iq", type="set", to=room,
                                  fn=lambda s: s.xml.find("{%s}query" % NS_MAM) is not None),
                                since=ms)) == pages
        bodies = await logged_bodies(env, room, "live meanwhile")
        archived = [b for b in bodies if b.startswith("archived")]
        if bound == "pages":
            assert len(archived) == pages * 100, bodies
        else:
            # 107 results in the first page (100 asked), then 150 - 107 asked
            assert len(archived) == 100 + 43, bodies
        assert bodies == ["pre"] + archived + ["live meanwhile"], bodies
        assert not [b for b in bodies if b.startswith(("overflow", "foreign", "not groupchat"))]
        # the foreign results passed on as the server passes any message
        assert not p.matching(P(body="archived 1"), since=mp), p.transcript(mp)
    run(env, scenario, timeout=120)


def test_a_room_that_never_answers_its_archive_query_times_out(prosody_factory):
    """A room that advertises urn:xmpp:mam:2 but never answers the query:
    the backfill gives up after minimix_backfill_timeout, and what the room
    said meanwhile, held for the backfill, is logged then and reaches a
    later device's catch-up."""
    env = prosody_factory(host_options={"minimix_rejoin_delay": 1, "minimix_backfill_timeout": 3},
                          external_components={EVIL: EVIL_SECRET})
    room = "silent@" + EVIL

    async def scenario(w):
        svc, p, ms, mp = await lying_room_rejoined(w, env, room)
        await svc.wait_for(P(name="iq", type="set", to=room,
                             fn=lambda s: s.xml.find("{%s}query" % NS_MAM) is not None),
                           since=ms, what="the archive query")
        svc.send("<message from='%s/bob' to='%s' type='groupchat' id='live'>"
                 "<body>live meanwhile</body><stanza-id xmlns='urn:xmpp:sid:0' by='%s' "
                 "id='sid-live'/></message>" % (room, ALICE, room))
        await p.wait_for(P(name="message", body="live meanwhile"), since=mp)
        await log_line(env, r"of %s .*minimix_backfill_timeout reached" % re.escape(room))
        assert await logged_bodies(env, room, "live meanwhile") == ["pre", "live meanwhile"]
        t = await w.connect("alice", "tablet")
        _, got = await join_room(t, room, "alice", history={"maxstanzas": 10})
        assert catch_up_bodies(got, room) == ["pre", "live meanwhile"], t.transcript()
    run(env, scenario, timeout=120)


def is_disco_info(s):
    return s.xml.find("{%s}query" % NS_DISCO_INFO) is not None


def is_mam_query(s):
    return s.xml.find("{%s}query" % NS_MAM) is not None


def test_a_room_without_an_archive_gets_no_archive_query_after_a_gap(prosody_factory):
    """A room that keeps no archive (its disco#info lacks urn:xmpp:mam:2,
    which the module adds for the account's devices only, as their MAM is
    answered from the log): after a 332 re-join, the backfill learns that
    from the room's own answer and sends the room no archive query; what
    the room says next is logged at once and reaches a later device's
    catch-up.  The module asks the room's disco#info once per join, as the
    account, for the MAM answers, the backfill and push together."""
    env = prosody_factory(host_options={"minimix_rejoin_delay": 1},
                          external_components={EVIL: EVIL_SECRET}, debug=True)
    room = "plain@" + EVIL

    async def scenario(w):
        svc = HostileService(env)
        w.clients.append(svc)
        await svc.connect()
        p = await w.connect("alice", "phone")

        def answer_disco(q):
            assert q.frm == ALICE, q
            svc.send("<iq type='result' from='%s' to='%s' id='%s'><query xmlns='%s'>"
                     "<identity category='conference' type='text'/>"
                     "<feature var='http://jabber.org/protocol/muc'/></query></iq>"
                     % (room, ALICE, q.id, NS_DISCO_INFO))

        def joined(join):
            svc.send("<presence from='%s/alice' to='%s' id='%s'><x xmlns='%s'>"
                     "<item affiliation='none' role='participant'/><status code='110'/></x>"
                     "</presence>" % (room, ALICE, join.id or "", NS_MUC_USER))
            svc.send("<message from='%s' to='%s' type='groupchat'><subject>Plain</subject>"
                     "</message>" % (room, ALICE))

        async def join_answered(since, what):
            # the disco#info comes with the join (before it), or after it
            # (from whatever asks once the account is in)
            join = await svc.wait_for(P(name="presence", frm=ALICE, to=room + "/alice"),
                                      since=since, what=what, timeout=20)
            disco = P(name="iq", type="get", to=room, fn=is_disco_info)
            early = svc.matching(disco, since=since)
            for q in early:
                answer_disco(q)
            joined(join)
            if not early:
                answer_disco(await svc.wait_for(disco, since=since, timeout=20,
                                                what="the disco#info of " + what))

        ms0, mp = svc.mark(), p.mark()
        p.join(room, "alice")
        await join_answered(ms0, "the join")
        await p.wait_for(P(name="message", frm=room, subject="Plain"), since=mp)
        svc.send("<message from='%s/bob' to='%s' type='groupchat' id='pre'><body>pre</body>"
                 "</message>" % (room, ALICE))
        await p.wait_for(P(name="message", body="pre"), since=mp)

        # the room shuts down (332): the account joins again a second later
        ms = svc.mark()
        svc.send("<presence from='%s/alice' to='%s' type='unavailable'><x xmlns='%s'>"
                 "<item affiliation='none' role='none'/><status code='110'/>"
                 "<status code='332'/></x></presence>" % (room, ALICE, NS_MUC_USER))
        await join_answered(ms, "the re-join")
        await log_line(env, r"No backfill of %s: the room keeps no archive" % re.escape(room))
        svc.send("<message from='%s/bob' to='%s' type='groupchat' id='live'><body>after</body>"
                 "</message>" % (room, ALICE))
        await p.wait_for(P(name="message", body="after"), since=mp)
        assert await logged_bodies(env, room, "after") == ["pre", "after"]
        t = await w.connect("alice", "tablet")
        _, got = await join_room(t, room, "alice", history={"maxstanzas": 10})
        assert catch_up_bodies(got, room) == ["pre", "after"], t.transcript()
        assert not svc.matching(P(name="iq", to=room, fn=is_mam_query), since=ms0), \
            svc.transcript(ms0)
        # one disco#info per join
        disco = P(name="iq", type="get", to=room, fn=is_disco_info)
        assert len(svc.matching(disco, since=ms)) == 1, svc.transcript(ms0)
        assert len(svc.matching(disco, since=ms0)) == 2, svc.transcript(ms0)
    run(env, scenario, timeout=120)
