"""End-to-end tests of the XEP-0313 (MAM v2) answers the module gives from
the room log for rooms that keep no archive (minimix_mam.lib.lua).

alice (phone and laptop) and bob are on localhost (the host with the
module); carol on plain.localhost (no module) owns the room and speaks.
The rooms keep no history (muc#roomconfig_historylength 0) and, unless
said otherwise, the MUC component does not load muc_mam.

What is proven:

1. A device away while the account stayed in comes back with
   <history maxchars='0'/> (as Gajim joins), finds urn:xmpp:mam:2 in the
   room's disco#info answer (asked before it joins, as clients do, and
   after) and pages through exactly what it missed with
   a MAM query to the room (start, RSM max/after, <before/>, flip-page),
   with the room as the results' sender, a <delay/> each, stable ids and
   <fin complete='true'/> on the last page; nothing from before the
   account's membership began, although the log holds it (bob stayed in).
   On the internal store, SQLite and PostgreSQL.
2. A room with its own archive (muc_mam) answers its own queries: alice's
   session gets what bob (on the host without the module) gets.  When its
   owner turns archiving off (171), the module answers from the log, with
   the ids the room gave.
3. Malformed queries get the XEP-0313 errors: an unknown form field, a
   wrong FORM_TYPE, a date that is none, an RSM max that is no number:
   bad-request; an unknown after-id or RSM after/before: item-not-found.
   Another local account not in the room never reads the log; a page
   never holds more than minimix_mam_max_page results.
4. Over s2s (a room on conference.b.test, federation_env.py): the first
   query waits for the module's own disco#info of the room, as the
   account, over the link; a device's disco#info before it joins shows
   mam:2; queries are answered from the log without crossing the link.
"""

import asyncio
import time
from xml.sax.saxutils import escape

from .clients import P, join_room, create_room
from .test_catchup import NO_HISTORY, logged, make_env, stamp, say
from .test_semantics import configure
from .test_federation import federation, federation_factory  # noqa: F401 (fixtures)
from .federation_env import run_federation, ACCOUNT_DOMAIN
from .storages import archive_entries
from .world import run

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_DELAY = "urn:xmpp:delay"
NS_CLIENT = "jabber:client"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"
ALICE = "alice@" + ACCOUNT_DOMAIN


def q(tag, ns):
    return "{%s}%s" % (ns, tag)


def mam_query(queryid, fields=None, rsm=None, flip=False, form_type=NS_MAM):
    """A MAM v2 <query/>: fields {var: value or [values]}, rsm {name: text
    or None for an empty element}."""
    out = ["<query xmlns='%s' queryid='%s'>" % (NS_MAM, queryid)]
    if fields is not None:
        out.append("<x xmlns='%s' type='submit'><field var='FORM_TYPE' type='hidden'>"
                   "<value>%s</value></field>" % (NS_DATA, form_type))
        for var, value in fields.items():
            values = value if isinstance(value, list) else [value]
            out.append("<field var='%s'>%s</field>" % (
                var, "".join("<value>%s</value>" % escape(v) for v in values)))
        out.append("</x>")
    if rsm:
        out.append("<set xmlns='%s'>" % NS_RSM)
        for name, text in rsm.items():
            out.append("<%s/>" % name if text is None else "<%s>%s</%s>" % (name, escape(text), name))
        out.append("</set>")
    if flip:
        out.append("<flip-page/>")
    out.append("</query>")
    return "".join(out)


_queries = [0]


async def query(client, room, **kw):
    """A MAM query to the room; waits for the answer.  Returns (answer,
    [(result id, body, delay stamp, inner from)] in the order received)."""
    _queries[0] += 1
    queryid = "q%d" % _queries[0]
    m = client.mark()
    id = client.iq(room, "set", mam_query(queryid, **kw))
    answer = await client.wait_for(P(name="iq", id=id), since=m, what="the MAM answer")
    results = []
    for s in client.matching(P(name="message", fn=lambda s: s.xml.find(q("result", NS_MAM))
                                 is not None), since=m):
        r = s.xml.find(q("result", NS_MAM))
        assert r.get("queryid") == queryid, s
        assert s.frm == room and s.to == client.jid, s
        fwd = r.find(q("forwarded", NS_FORWARD))
        inner = fwd.find(q("message", NS_CLIENT))
        delay = fwd.find(q("delay", NS_DELAY))
        assert delay is not None and delay.get("stamp"), s
        results.append((r.get("id"), inner.findtext(q("body", NS_CLIENT)), delay.get("stamp"),
                        inner.get("from")))
    return answer, results


def fin_of(answer):
    assert answer.type == "result", answer
    fin = answer.xml.find(q("fin", NS_MAM))
    assert fin is not None, answer
    s = fin.find(q("set", NS_RSM))
    return (fin.get("complete") in ("true", "1"),
            s.findtext(q("first", NS_RSM)) if s is not None else None,
            s.findtext(q("last", NS_RSM)) if s is not None else None)


async def features(client, room):
    m = client.mark()
    id = client.iq(room, "get", "<query xmlns='%s'/>" % NS_DISCO_INFO)
    r = await client.wait_for(P(name="iq", id=id), since=m, what="disco#info of the room")
    assert r.type == "result", r
    return [f.get("var") for f in r.xml.find(q("query", NS_DISCO_INFO)).findall(q("feature", NS_DISCO_INFO))]


def bodies(results):
    return [b for _, b, _, _ in results]


def test_a_device_away_pages_through_what_it_missed(prosody_factory, storage):
    """carol says "before" while alice is out (bob, another local account,
    keeps the log writing); alice's laptop and phone join, carol says "in";
    the phone goes away and carol says m1, m2, m3.  The phone comes back
    with maxchars='0' (no catch-up in the join), finds mam:2 in the room's
    disco#info before and after it joins, and a query with `start` at the time it went away, two at a
    time, gives m1, m2 then m3 (complete); a query of everything gives
    "in", m1, m2, m3 and never "before"; <before/> gives the last page;
    flip-page reverses it; each message keeps its id across queries."""
    env = make_env(prosody_factory, storage)
    missed = ["m1", "m2", "m3"]

    async def scenario(w):
        room = w.room("gajim")
        carol = await w.connect("carol", "desk")
        await create_room(carol, room, "carol", whois="anyone", config=NO_HISTORY)
        bob = await w.connect("bob", "home", host="localhost")
        await join_room(bob, room, "bob")
        await say(carol, room, [bob], ["before"])
        await logged(env, room, ["before"])
        laptop = await w.connect("alice", "laptop")
        phone = await w.connect("alice", "phone")
        await join_room(laptop, room, "alice")
        await join_room(phone, room, "alice")
        await say(carol, room, [laptop, phone, bob], ["in"])
        await phone.disconnect()
        away = time.time()
        await say(carol, room, [laptop, bob], missed)
        await logged(env, room, missed)

        phone = await w.connect("alice", "phone")
        # as clients look before they join (the answer reaches the session)
        assert NS_MAM in await features(phone, room)
        _, got = await join_room(phone, room, "alice", history={"maxchars": 0})
        assert [s for s in got if s.name == "message" and s.body is not None] == [], got
        assert NS_MAM in await features(phone, room)

        answer, first = await query(phone, room, fields={"start": stamp(away)}, rsm={"max": "2"})
        complete, f, last = fin_of(answer)
        assert bodies(first) == ["m1", "m2"] and not complete, (first, answer)
        assert (f, last) == (first[0][0], first[1][0]), answer
        assert all(frm == room + "/carol" for _, _, _, frm in first), first
        answer, rest = await query(phone, room, fields={"start": stamp(away)},
                                   rsm={"max": "2", "after": last})
        assert bodies(rest) == ["m3"] and fin_of(answer)[0], (rest, answer)
        ids = {b: i for i, b, _, _ in first + rest}
        assert len(set(ids.values())) == 3, ids

        # everything the account may read, two at a time
        seen, after = [], None
        for _ in range(5):
            answer, page = await query(phone, room, fields={},
                                       rsm=dict({"max": "2"}, **({"after": after} if after else {})))
            seen += page
            complete, _, after = fin_of(answer)
            if complete:
                break
        assert bodies(seen) == ["in"] + missed, seen
        assert all(ids[b] == i for i, b, _, _ in seen if b in ids), (seen, ids)
        stamps = [s for _, _, s, _ in seen]
        assert stamps == sorted(stamps), stamps

        # the last page, and flipped
        answer, page = await query(phone, room, rsm={"max": "2", "before": None})
        assert bodies(page) == ["m2", "m3"] and not fin_of(answer)[0], (page, answer)
        answer, page = await query(phone, room, rsm={"max": "2", "before": None}, flip=True)
        assert bodies(page) == ["m3", "m2"], page
        # before an id: the page before it
        answer, page = await query(phone, room, rsm={"max": "5", "before": ids["m2"]})
        assert bodies(page) == ["in", "m1"] and fin_of(answer)[0], (page, answer)
    run(env, scenario, timeout=120)


def archived_env(prosody_factory):
    """A server whose MUC component archives its rooms (muc_mam)."""
    return make_env(prosody_factory, {"storage": "internal"},
                    muc_options={"modules_enabled": ["e2e_spy", "muc_mam"]})


async def archived_room(w, name):
    """carol's room (non-anonymous) with bob (a host without the module)
    and alice's phone in it: (room, carol, bob, phone)."""
    room = w.room(name)
    carol = await w.connect("carol", "desk")
    await create_room(carol, room, "carol", whois="anyone")
    bob = await w.connect("bob", "desk")
    await join_room(bob, room, "bob")
    phone = await w.connect("alice", "phone")
    await join_room(phone, room, "alice")
    return room, carol, bob, phone


def test_a_room_with_an_archive_answers_its_own_queries(prosody_factory):
    """With muc_mam on the component the room archives itself: its
    disco#info says mam:2, and alice's query reaches the room, which
    answers it; alice gets what bob, on the host without the module, gets
    for the same query (the same ids, the room's own)."""
    env = archived_env(prosody_factory)

    async def scenario(w):
        room, carol, bob, phone = await archived_room(w, "archived")
        await say(carol, room, [bob, phone], ["one", "two", "three"])
        assert (await features(phone, room)).count(NS_MAM) == 1
        a_answer, a = await query(phone, room, rsm={"max": "10"})
        b_answer, b = await query(bob, room, rsm={"max": "10"})
        assert bodies(a) == ["one", "two", "three"], a
        assert [(i, body) for i, body, _, _ in a] == [(i, body) for i, body, _, _ in b], (a, b)
        assert fin_of(a_answer) == fin_of(b_answer), (a_answer, b_answer)
        # the ids are the room's stanza-ids, which the module's log has none of
        live = phone.matching(P(name="message", frm=room + "/carol", body="two"))
        sid = live[0].xml.find("{urn:xmpp:sid:0}stanza-id")
        assert sid is not None and sid.get("id") == a[1][0], (live, a)
    run(env, scenario)


def test_malformed_queries_get_errors(prosody_factory):
    """XEP-0313 4.1 / XEP-0059: a form field the archive does not know, a
    form of another type, a start that is no date and a max that is no
    number are bad-request; an after-id or RSM after that names no message
    is item-not-found.  A `with` that is no occupant of the room matches
    nothing.  Another local account, not in the room, gets the room's own
    answer (an error: it keeps no archive), never the log.  A well-formed
    query still works afterwards, and gives at most minimix_mam_max_page
    (2 here) results however many it asks for."""
    env = make_env(prosody_factory, {"storage": "internal"},
                   host_options={"minimix_mam_max_page": 2})

    async def scenario(w):
        room = w.room("errors")
        carol = await w.connect("carol", "desk")
        await create_room(carol, room, "carol", whois="anyone", config=NO_HISTORY)
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice")
        await say(carol, room, [phone], ["only", "two", "three"])
        await logged(env, room, ["only", "two", "three"])
        cases = [
            ({"fields": {"colour": "blue"}}, "bad-request"),
            ({"fields": {}, "form_type": "urn:xmpp:mam:1"}, "bad-request"),
            ({"fields": {"start": "yesterday"}}, "bad-request"),
            ({"rsm": {"max": "many"}}, "bad-request"),
            ({"fields": {"after-id": "no-such-id"}}, "item-not-found"),
            ({"rsm": {"after": "no-such-id"}}, "item-not-found"),
            ({"rsm": {"before": "no-such-id"}}, "item-not-found"),
        ]
        # a with that is no occupant of the room: nothing, complete
        answer, results = await query(phone, room, fields={"with": "bob@plain.localhost"})
        assert results == [] and fin_of(answer)[0], (answer, results)
        answer, results = await query(phone, room, fields={"with": "plain.localhost"})
        assert results == [] and fin_of(answer)[0], (answer, results)
        answer, results = await query(phone, room, fields={"with": room + "/carol"})
        assert bodies(results) == ["only", "two"], (answer, results)
        for kw, condition in cases:
            answer, results = await query(phone, room, **kw)
            assert answer.type == "error" and answer.error[1] == condition, (kw, answer)
            assert answer.frm == room, answer
            assert results == [], (kw, results)
        # another local account, not in the room: the room answers (it has
        # no archive), never the log
        other = await w.connect("carol", "laptop", host="localhost")
        answer, results = await query(other, room)
        assert answer.type == "error" and results == [], (answer, results)
        answer, results = await query(phone, room, rsm={"max": "10"})
        assert bodies(results) == ["only", "two"] and not fin_of(answer)[0], (answer, results)
        answer, results = await query(phone, room, rsm={"after": fin_of(answer)[2]})
        assert bodies(results) == ["three"] and fin_of(answer)[0], (answer, results)
    run(env, scenario)


def test_a_room_that_stops_archiving_is_answered_from_the_log(prosody_factory):
    """XEP-0045 10.2 / status 171 (the room's logging turned off): with
    muc_mam, the room archives and answers alice's queries itself (its
    own stanza-ids as the ids).  carol, the owner, turns archiving off;
    the room says 171 to its occupants, the module forgets what it knew of
    the room, and alice's next query is answered from the room log: what
    was said before (with the same ids the room gave) and after."""
    env = archived_env(prosody_factory)

    async def scenario(w):
        room = w.room("stops")
        carol = await w.connect("carol", "desk")
        await create_room(carol, room, "carol", whois="anyone")
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice")
        await say(carol, room, [phone], ["one", "two"])
        await logged(env, room, ["one", "two"])
        answer, by_room = await query(phone, room)
        assert bodies(by_room) == ["one", "two"] and fin_of(answer)[0], (answer, by_room)
        assert NS_MAM in await features(phone, room)

        m = phone.mark()
        await configure(carol, room, {"muc#roomconfig_enablearchiving": "0"})
        await phone.wait_for(P(name="message", frm=room, codes={171}), since=m,
                             what="the room's 171")
        await say(carol, room, [phone], ["three"])
        await logged(env, room, ["three"])
        answer, by_log = await query(phone, room)
        assert bodies(by_log) == ["one", "two", "three"] and fin_of(answer)[0], (answer, by_log)
        assert [i for i, _, _, _ in by_log[:2]] == [i for i, _, _, _ in by_room], (by_room, by_log)
        assert NS_MAM in await features(phone, room)
    run(env, scenario)


def test_mam_from_the_log_for_a_remote_room(federation):
    """The same over s2s, for a room on conference.b.test (no muc_mam
    there).  The module asks the room, as the account, whether it keeps an
    archive (over the link) once the account's join is complete, before
    the room's first message; the laptop's MAM query is answered from the
    log without crossing the link.
    The phone, back, asks the room's disco#info before it joins (the
    answer crosses the link to the session itself) and finds mam:2; its
    query gets what was said while it was away, and does not cross the
    link."""
    fed = federation

    async def scenario(w):
        room = w.room("remote-mam")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", config=NO_HISTORY)
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        mr = fed.room.log_mark()
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        await p.disconnect()
        away = time.time()
        missed = ["far 1", "far 2", "far 3"]
        await say(bob, room, [l], missed)
        deadline = time.monotonic() + 20
        while not all(t in [e["body"] for e in archive_entries(fed.account, room, "minimix_log",
                                                                 host=ACCOUNT_DOMAIN)]
                      for t in missed):
            assert time.monotonic() < deadline, "the room log never held them all"
            await asyncio.sleep(0.2)
        answer, results = await query(l, room, fields={"start": stamp(away)})
        assert bodies(results) == missed and fin_of(answer)[0], (answer, results)
        asked = fed.room.crossed(since=mr, name="iq", frm=ALICE)
        assert [s.child("query", NS_DISCO_INFO) is not None for s in asked] == [True], asked

        p = await w.connect("alice", "phone")
        assert NS_MAM in await features(p, room)
        await join_room(p, room, "alice", history={"maxchars": 0})
        mr = fed.room.log_mark()
        answer, results = await query(p, room, fields={"start": stamp(away)}, rsm={"max": "10"})
        assert bodies(results) == missed and fin_of(answer)[0], (answer, results)
        assert not fed.room.crossed(since=mr, name="iq", fn=lambda s: s.child("query", NS_MAM)
                                    is not None), "the query crossed the link"
    run_federation(fed, scenario)


NS_SID = "urn:xmpp:sid:0"


def room_sids(s, room):
    return [e.get("id") for e in s.xml.findall(q("stanza-id", NS_SID)) if e.get("by") == room]


def test_the_module_stamps_ids_in_a_room_without_an_archive(prosody_factory, storage):
    """Clients de-duplicate MAM results only by the room's stanza-id
    (XEP-0359) they stored for the live message, and page on after-id the
    last one they saw.  In a room without an archive the module stamps
    its own: the phone gets "live one" and "live two" each with one
    stanza-id by the room (a uuid); bob, another local account, gets the
    same id for each; carol's own stanza-id by the room in "live two" is
    replaced.  The phone goes away, three messages are said, it comes
    back with maxchars='0': a query after-id the last live stanza-id gives
    exactly the three missed, and one from the join gives the live ones
    with the ids they had live; a new device's catch-up carries the same
    ids.  On the internal store, SQLite and
    PostgreSQL (where the id is the log's key)."""
    env = make_env(prosody_factory, storage)

    async def scenario(w):
        room = w.room("stamped")
        carol = await w.connect("carol", "desk")
        await create_room(carol, room, "carol", whois="anyone", config=NO_HISTORY)
        bob = await w.connect("bob", "home", host="localhost")
        await join_room(bob, room, "bob")
        joined = time.time()
        phone = await w.connect("alice", "phone")
        laptop = await w.connect("alice", "laptop")
        await join_room(phone, room, "alice")
        await join_room(laptop, room, "alice")
        await say(carol, room, [phone, bob], ["live one"])
        m = [c.mark() for c in (phone, bob)]
        carol.send("<message type='groupchat' to='%s' id='spoofing'><body>live two</body>"
                   "<stanza-id xmlns='%s' by='%s' id='spoofed'/></message>" % (room, NS_SID, room))
        for c, mk in zip((phone, bob), m):
            await c.wait_for(P(name="message", frm_bare=room, body="live two"), since=mk)
        live = {}
        for c in (phone, bob):
            for text in ("live one", "live two"):
                got = c.matching(P(name="message", frm=room + "/carol", body=text))
                assert len(got) == 1, got
                sids = room_sids(got[0], room)
                assert len(sids) == 1 and sids[0] != "spoofed", got[0]
                assert len(sids[0]) == 36, sids  # a uuid
                live.setdefault(text, set()).add(sids[0])
        assert all(len(v) == 1 for v in live.values()), live
        ids = {t: v.pop() for t, v in live.items()}
        assert ids["live one"] != ids["live two"], ids

        await phone.disconnect()
        missed = ["missed one", "missed two", "missed three"]
        await say(carol, room, [laptop, bob], missed)
        await logged(env, room, missed)
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice", history={"maxchars": 0})
        answer, results = await query(phone, room, fields={"after-id": ids["live two"]})
        assert bodies(results) == missed and fin_of(answer)[0], (answer, results)
        answer, again = await query(phone, room, rsm={"after": ids["live two"]})
        assert again == results, (again, results)
        answer, results = await query(phone, room, fields={"start": stamp(joined)})
        assert [(b, i) for i, b, _, _ in results[:2]] == [
            ("live one", ids["live one"]), ("live two", ids["live two"])], results
        assert bodies(results) == ["live one", "live two"] + missed, results
        # the laptop got the missed ones live with the ids MAM gives
        for i, b, _, _ in results[2:]:
            got = laptop.matching(P(name="message", frm=room + "/carol", body=b))
            assert [room_sids(s, room) for s in got] == [[i]], (got, i)
        # a device's catch-up carries them too
        tablet = await w.connect("alice", "tablet")
        _, got = await join_room(tablet, room, "alice")
        caught = [(s.body, room_sids(s, room)) for s in got if s.name == "message" and s.body]
        assert caught == [(b, [i]) for i, b, _, _ in results], (caught, results)
    run(env, scenario, timeout=120)


def test_a_room_with_an_archive_keeps_its_own_ids(prosody_factory):
    """With muc_mam the room stamps its stanza-ids; the module adds none
    and takes none away."""
    env = archived_env(prosody_factory)

    async def scenario(w):
        room, carol, bob, phone = await archived_room(w, "ownids")
        await say(carol, room, [bob, phone], ["one"])
        a = room_sids(phone.matching(P(name="message", frm=room + "/carol", body="one"))[0], room)
        b = room_sids(bob.matching(P(name="message", frm=room + "/carol", body="one"))[0], room)
        assert len(a) == 1 and a == b, (a, b)
    run(env, scenario)


def test_copies_of_a_remote_room_message_get_one_id(federation):
    """Over s2s, a room on conference.b.test (no muc_mam) sends each
    local account its own copy: alice's phone and dave (another account
    of a.test) get the same stanza-id for one message, the one MAM gives,
    although the module stamped two objects; bob's own stanza-id by the
    room in his message is replaced."""
    fed = federation

    async def scenario(w):
        fed.account.add_user("dave", "dave-pw", ACCOUNT_DOMAIN)
        room = w.room("remote-ids")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", config=NO_HISTORY)
        p = await w.connect("alice", "phone")
        dave = await w.connect("dave", "desk", host=ACCOUNT_DOMAIN)
        await join_room(p, room, "alice")
        await join_room(dave, room, "dave")
        await say(bob, room, [p, dave], ["far one"])
        marks = [c.mark() for c in (p, dave)]
        bob.send("<message type='groupchat' to='%s' id='spoofing'><body>far two</body>"
                 "<stanza-id xmlns='%s' by='%s' id='spoofed'/></message>" % (room, NS_SID, room))
        for c, mk in zip((p, dave), marks):
            await c.wait_for(P(name="message", frm_bare=room, body="far two"), since=mk)
        ids = {}
        for text in ("far one", "far two"):
            got = [room_sids(c.matching(P(name="message", frm=room + "/bob", body=text))[0], room)
                   for c in (p, dave)]
            assert len(got[0]) == 1 and got[0] == got[1] and got[0] != ["spoofed"], (text, got)
            ids[text] = got[0][0]
        assert ids["far one"] != ids["far two"], ids
        answer, results = await query(p, room)
        assert [(b, i) for i, b, _, _ in results] == [
            ("far one", ids["far one"]), ("far two", ids["far two"])], (answer, results)
    run_federation(fed, scenario)


def test_ids_survive_a_restart_of_the_account_server(federation):
    """The account's server restarts while its account stays in a room
    on conference.b.test (no muc_mam) that keeps a history: the account
    joins again and the room replays "h1" and "h2", which the log holds
    already, with the ids the module stamped live.  Whether the replay
    comes before or after the room's disco#info answer, the log keeps each
    message once, and MAM gives them with the ids they had live."""
    fed = federation

    async def scenario(w):
        room = w.room("restart-ids")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone",
                          config={"muc#roomconfig_persistentroom": True})
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice")
        await say(bob, room, [p], ["h1", "h2"])
        ids = {}
        for text in ("h1", "h2"):
            sids = room_sids(p.matching(P(name="message", frm=room + "/bob", body=text))[0], room)
            assert len(sids) == 1, sids
            ids[text] = sids[0]
        await p.disconnect()
        mb = bob.mark()
        fed.account.restart()
        # the account is back in: the room replayed its history to it
        await bob.wait_for(P(name="presence", frm=room + "/alice", fn=lambda s: s.type is None),
                           since=mb, timeout=30, what="alice's account back in the room")
        await say(bob, room, [], ["h3"])
        deadline = time.monotonic() + 20
        while "h3" not in [e["body"] for e in archive_entries(fed.account, room, "minimix_log",
                                                              host=ACCOUNT_DOMAIN)]:
            assert time.monotonic() < deadline, "the room log never held h3"
            await asyncio.sleep(0.2)
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice", history={"maxchars": 0})
        answer, results = await query(p, room)
        assert bodies(results) == ["h1", "h2", "h3"] and fin_of(answer)[0], (answer, results)
        assert [i for i, _, _, _ in results[:2]] == [ids["h1"], ids["h2"]], (results, ids)
    run_federation(fed, scenario)
