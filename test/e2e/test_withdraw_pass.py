"""End-to-end tests of withdrawals on the file store, where a store's set
rewrites a room's whole list: retractions and moderations wait for a
background pass that writes each room's in one rewrite at most every
minimix_withdraw_interval seconds, and every read of the log applies them
meanwhile.

alice (phone, laptop, tablet) is on localhost (the host with the module)
with minimix_archive_in_mam on; carol owns the room and bob speaks from
plain.localhost (no module); the room archives (mod_muc_mam), so retractions
name its XEP-0359 stanza-ids.

What is proven:

1. A burst of XEP-0424 retractions in one room: the messages of another
   room reach alice's phone meanwhile; the room log's list is rewritten
   once for all of them (the module's debug line); afterwards the list
   holds a tombstone for each, and alice's laptop, away meanwhile, gets
   every one as a tombstone in its catch-up, never the body.
2. A retraction, then the server killed before the pass
   (minimix_withdraw_interval of an hour): the list and alice's archive
   still hold the body, but the laptop's catch-up and alice's XEP-0313
   query of her own archive (minimix_archive_in_mam), before and after the
   restart, have the tombstone in its place.
"""

import re

from .clients import P, join_room, create_room, NS_SID
from .storages import archive_entries
from .test_catchup import restart
from .test_log import wait_entries, minimix_lines
from .test_retract import (make_env, in_room, say, sent_to_room, retract_xml, retracted, room_sid,
                           away_catch_up, entry_by_sid, PERSISTENT)
from .world import run


NS_MAM = "urn:xmpp:mam:2"
NS_FORWARD = "urn:xmpp:forward:0"
NS_CLIENT = "jabber:client"


async def own_archive(client, room, qid):
    """XEP-0313: client's account's own archive, as mod_mam answers it:
    {room's stanza-id: body, or "tombstone"} of the room's messages."""
    m = client.mark()
    iq = client.iq(None, "set", "<query xmlns='%s' queryid='%s'/>" % (NS_MAM, qid))
    fin = await client.wait_for(P(name="iq", id=iq), since=m, what="the archive's answer")
    assert fin.type == "result", fin
    out = {}
    for s in client.matching(P(name="message"), since=m):
        result = s.xml.find("{%s}result" % NS_MAM)
        if result is None or result.get("queryid") != qid:
            continue
        msg = result.find("{%s}forwarded/{%s}message" % (NS_FORWARD, NS_CLIENT))
        sids = [x.get("id") for x in msg.findall("{%s}stanza-id" % NS_SID) if x.get("by") == room]
        if not sids:
            continue
        if msg.find("{urn:xmpp:message-retract:1}retracted") is not None:
            out[sids[0]] = "tombstone"
        else:
            out[sids[0]] = msg.findtext("{%s}body" % NS_CLIENT)
    return out


def rewrites(env, room):
    return minimix_lines(env, "debug", r"^Rewrote the room log of %s with " % re.escape(room))


def test_a_burst_of_retractions_costs_one_rewrite_and_stalls_nothing(prosody_factory):
    """XEP-0424 on the file store: ten retractions sent back to back are
    one rewrite of the room's list; another room's messages are delivered
    meanwhile; each retraction holds in a later catch-up."""
    env = make_env(prosody_factory, {"storage": "internal"}, debug=True,
                   host_options={"minimix_withdraw_interval": 3})

    async def scenario(w):
        room, carol, bob, phone, laptop, tablet = await in_room(w, "burst")
        other = w.room("elsewhere")
        await create_room(bob, other, "bob", subject="Elsewhere", config=PERSISTENT)
        await join_room(phone, other, "alice")
        await laptop.disconnect()
        await tablet.disconnect()
        sids = [await say(carol, room, phone, "said %d" % i) for i in range(14)]
        gone = sids[2:12]
        await wait_entries(env, room, lambda es: sum(e["body"] is not None for e in es) >= 14,
                           "the 14 messages")
        m = phone.mark()
        for i, sid in enumerate(gone):
            carol.send(retract_xml(room, sid, "r-%d" % i))
        for i in range(3):
            bob.groupchat(other, "meanwhile %d" % i)
        for i in range(3):
            await phone.wait_for(P(name="message", frm_bare=other, body="meanwhile %d" % i), since=m,
                                 what="the other room's message %d" % i)
        for i in range(len(gone)):
            await phone.wait_for(P(name="message", frm_bare=room, id="r-%d" % i), since=m,
                                 what="retraction %d" % i)
        entries = await wait_entries(env, room, lambda es: all(
            entry_by_sid(es, sid)["body"] is None for sid in gone), "the ten tombstones")
        assert [e["body"] for e in entries if e["sid"] in sids and e["body"]] == (
            ["said 0", "said 1", "said 12", "said 13"]), entries
        lines = rewrites(env, room)
        assert len(lines) == 1 and lines[0].endswith(" with 10 withdrawals"), lines
        msgs = await away_catch_up(w, room, "laptop", 50)
        assert [x.body for x in msgs if x.body] == ["said 0", "said 1", "said 12", "said 13"], (
            [str(x) for x in msgs])
        tombs = [room_sid(x, room) for x in msgs if retracted(x) is not None]
        assert tombs == gone, [str(x) for x in msgs]
        # a marker after everything: still the one rewrite
        await say(carol, room, phone, "marker")
        await wait_entries(env, room, lambda es: any(e["body"] == "marker" for e in es), "the marker")
        assert len(rewrites(env, room)) == 1, rewrites(env, room)
    run(env, scenario, timeout=120)


def test_a_restart_before_the_pass_hands_out_no_withdrawn_body(prosody_factory):
    """XEP-0424 on the file store, with the pass an hour away: the catch-up
    and the account's own archive right after the retraction, and after a
    kill -9 and a restart, have the tombstone, although the room's list and
    the archive's still hold the body."""
    env = make_env(prosody_factory, {"storage": "internal"}, debug=True, extra_modules=["mam"],
                   host_options={"minimix_withdraw_interval": 3600})

    async def scenario(w):
        room, carol, bob, phone, laptop, tablet = await in_room(w, "restart-pass")
        await laptop.disconnect()
        await tablet.disconnect()
        await say(carol, room, phone, "before")
        secret = await say(carol, room, phone, "secret")
        await say(carol, room, phone, "after")
        await wait_entries(env, room, lambda es: any(e["body"] == "after" for e in es), "the messages")
        await sent_to_room(carol, room, phone, retract_xml(room, secret, "r-1"), "r-1")

        def check(msgs, when):
            assert [x.body for x in msgs if x.body] == ["before", "after"], (when, [str(x) for x in msgs])
            tomb = [x for x in msgs if retracted(x) is not None]
            assert len(tomb) == 1 and room_sid(tomb[0], room) == secret, (when, [str(x) for x in msgs])
            assert all("secret" not in str(x) for x in msgs), (when, [str(x) for x in msgs])

        def check_archive(got, when):
            assert got.get(secret) == "tombstone", (when, got)
            assert "before" in got.values() and "after" in got.values(), (when, got)

        check(await away_catch_up(w, room, "laptop", 50), "before the restart")
        check_archive(await own_archive(phone, room, "q1"), "before the restart")
        await restart(w, env, room, kill=True)
        phone = await w.connect("alice", "phone")
        await join_room(phone, room, "alice")
        check(await away_catch_up(w, room, "laptop", 50), "after the restart")
        check_archive(await own_archive(phone, room, "q2"), "after the restart")
        # the lists were not rewritten: what the catch-up and the archive
        # gave came from the withdrawals kept across the restart
        assert entry_by_sid(archive_entries(env, room, "minimix_log"), secret)["body"] == "secret"
        assert entry_by_sid(archive_entries(env, "alice", "archive", room=room), secret)["body"] == "secret"
        assert not rewrites(env, room)
    run(env, scenario, timeout=120)
