"""End-to-end tests: bookmarks are the membership.

A XEP-0402 conference bookmark (PEP node urn:xmpp:bookmarks:1, item id =
room JID) with autojoin makes the account, alice@localhost, an occupant of
the room, with no client session joined; retracting it, or autojoin
false, makes the account leave.  The other way round, a kick or the last
session leaving turns the bookmark's autojoin off.  Prosody's mod_bookmarks
(legacy XEP-0048 private XML converted to XEP-0402) drives the same.  At
start-up, bookmarks and stored memberships give one join per room.  XEP-0050
ad-hoc commands on the account's own server list and end memberships.

As in test_foundation.py, alice (the account under test) is on
"localhost" (mod_minimix), and the observers bob and carol are on
"plain.localhost", so that what they see is exactly what the room sends:
every test checks the room's view from bob.
"""

import re
from xml.sax.saxutils import escape, quoteattr

import pytest

from .clients import P, from_room, join_room, create_room, NS_DATA
from .prosody_env import PROSODY_VERSION
from .world import run

ALICE = "alice@localhost"

NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_PRIVATE = "jabber:iq:private"
NS_LEGACY = "storage:bookmarks"
NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"

LIST = "urn:xmpp:minimix#list"
LEAVE = "urn:xmpp:minimix#leave"
LEAVE_ALL = "urn:xmpp:minimix#leave-all"

PERSISTENT = {"muc#roomconfig_persistentroom": True}


# ---- helpers ----------------------------------------------------------------

def q(tag, ns):
    return "{%s}%s" % (ns, tag)


def joined_at(room, nick):
    """An occupant's available presence (its entry, 7.2.3)."""
    return P(name="presence", frm="%s/%s" % (room, nick), type="available")


def left_at(room, nick):
    return P(name="presence", frm="%s/%s" % (room, nick), type="unavailable")


def self_unavailable(room, nick):
    return P(name="presence", frm="%s/%s" % (room, nick), type="unavailable", codes={110})


async def exactly_once(client, pred, since, what):
    """pred arrives at client, and after a quiet window still only once."""
    s = await client.wait_for(pred, since=since, what=what)
    await client.assert_nothing(P(fn=lambda x: pred(x) and x.index != s.index), since=since,
                                what="a second copy of " + what)
    return s


async def iq_ok(client, to, type, payload, what):
    """Send an IQ, wait for its answer, fail unless it is a result."""
    m = client.mark()
    id = client.iq(to, type, payload)
    res = await client.wait_for(P(name="iq", id=id), since=m, what=what)
    assert res.type == "result", "%s failed: %s" % (what, res)
    return res


def publish_options():
    """XEP-0402 3.3: the node is persistent, whitelisted (private), keeps
    every item and never sends the last one on subscription."""
    fields = [("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
              ("pubsub#persist_items", "true"),
              ("pubsub#max_items", "max"),
              ("pubsub#send_last_published_item", "never"),
              ("pubsub#access_model", "whitelist")]
    return ("<publish-options><x xmlns='%s' type='submit'>%s</x></publish-options>"
            % (NS_DATA, "".join("<field var=%s%s><value>%s</value></field>"
                                % (quoteattr(var), " type='hidden'" if var == "FORM_TYPE" else "",
                                   escape(v)) for var, v in fields)))


def conference_xml(autojoin, nick=None, password=None, name=None):
    attrs = " autojoin=%s" % quoteattr(autojoin if isinstance(autojoin, str)
                                       else ("true" if autojoin else "false"))
    if name is not None:
        attrs += " name=%s" % quoteattr(name)
    inner = ""
    if nick is not None:
        inner += "<nick>%s</nick>" % escape(nick)
    if password is not None:
        inner += "<password>%s</password>" % escape(password)
    return "<conference xmlns='%s'%s>%s</conference>" % (NS_BOOKMARKS, attrs, inner)


async def publish_bookmark(client, room, autojoin, nick=None, password=None, name=None):
    """XEP-0402 3.3 (adding a bookmark): publish item id=room JID to the
    account's own PEP node, with the publish-options the XEP requires."""
    return await iq_ok(client, None, "set",
                       "<pubsub xmlns='%s'><publish node='%s'><item id=%s>%s</item></publish>%s"
                       "</pubsub>" % (NS_PUBSUB, NS_BOOKMARKS, quoteattr(room),
                                      conference_xml(autojoin, nick, password, name),
                                      publish_options()),
                       "publishing the bookmark of %s" % room)


async def retract_bookmark(client, room):
    """XEP-0402 3.4 (removing a bookmark): retract the item, notify."""
    return await iq_ok(client, None, "set",
                       "<pubsub xmlns='%s'><retract node='%s' notify='true'><item id=%s/></retract>"
                       "</pubsub>" % (NS_PUBSUB, NS_BOOKMARKS, quoteattr(room)),
                       "retracting the bookmark of %s" % room)


async def fetch_bookmark(client, room):
    """The bookmark of room from the account's PEP (XEP-0060 6.5.8, one item
    by id): a dict of autojoin, name, nick, password, or None."""
    m = client.mark()
    id = client.iq(None, "get", "<pubsub xmlns='%s'><items node='%s'><item id=%s/></items></pubsub>"
                   % (NS_PUBSUB, NS_BOOKMARKS, quoteattr(room)))
    res = await client.wait_for(P(name="iq", id=id), since=m, what="the bookmark of " + room)
    if res.type != "result":
        return None
    for item in res.xml.iter(q("item", NS_PUBSUB)):
        if item.get("id") != room:
            continue
        conf = item.find(q("conference", NS_BOOKMARKS))
        if conf is None:
            return None

        def text(tag):
            e = conf.find(q(tag, NS_BOOKMARKS))
            return None if e is None else (e.text or "")
        return {"autojoin": conf.get("autojoin"), "name": conf.get("name"),
                "nick": text("nick"), "password": text("password")}
    return None


async def wait_bookmark(w, client, room, pred, what, tries=50):
    """Fetch the bookmark until pred(bookmark) holds (gives up after tries)."""
    b = None
    for _ in range(tries):
        b = await fetch_bookmark(client, room)
        if b is not None and pred(b):
            return b
        await w.quiet(0.2)
    raise AssertionError("%s: the bookmark of %s is %r" % (what, room, b))


async def set_legacy_bookmarks(client, conferences):
    """XEP-0048 3.3 via XEP-0049: store the whole storage:bookmarks element
    in private XML.  conferences: dicts with jid, autojoin, and optionally
    name, nick, password."""
    out = []
    for c in conferences:
        attrs = "".join(" %s=%s" % (k, quoteattr(c[k])) for k in ("jid", "autojoin", "name") if k in c)
        inner = "".join("<%s>%s</%s>" % (k, escape(c[k]), k) for k in ("nick", "password") if k in c)
        out.append("<conference%s>%s</conference>" % (attrs, inner))
    return await iq_ok(client, None, "set",
                       "<query xmlns='%s'><storage xmlns='%s'>%s</storage></query>"
                       % (NS_PRIVATE, NS_LEGACY, "".join(out)),
                       "storing legacy bookmarks")


async def adhoc(client, node, sessionid=None, form=None, action="execute", to="localhost"):
    """One XEP-0050 step; returns (iq, dict of status, sessionid, notes
    [(type, text)], fields {var: {"options": [...], "values": [...]}})."""
    m = client.mark()
    attrs = " node=%s action=%s" % (quoteattr(node), quoteattr(action))
    if sessionid:
        attrs += " sessionid=%s" % quoteattr(sessionid)
    id = client.iq(to, "set", "<command xmlns='%s'%s>%s</command>" % (NS_COMMANDS, attrs, form or ""))
    res = await client.wait_for(P(name="iq", id=id), since=m, what="ad-hoc %s" % node)
    out = {"status": None, "sessionid": None, "notes": [], "fields": {}}
    cmd = res.xml.find(q("command", NS_COMMANDS))
    if cmd is not None:
        out["status"] = cmd.get("status")
        out["sessionid"] = cmd.get("sessionid")
        out["notes"] = [(n.get("type"), n.text or "") for n in cmd.findall(q("note", NS_COMMANDS))]
        x = cmd.find(q("x", NS_DATA))
        if x is not None:
            for f in x.findall(q("field", NS_DATA)):
                out["fields"][f.get("var")] = {
                    "options": [o.findtext(q("value", NS_DATA)) for o in f.findall(q("option", NS_DATA))],
                    "values": [v.text for v in f.findall(q("value", NS_DATA))]}
    return res, out


def leave_form(room):
    return ("<x xmlns='%s' type='submit'><field var='FORM_TYPE' type='hidden'>"
            "<value>urn:xmpp:minimix:leave</value></field><field var='room'><value>%s</value>"
            "</field></x>" % (NS_DATA, escape(room)))


LIST_LINE = re.compile(r"^(?P<room>\S+) as (?P<nick>.+) \((?P<state>\w+)\): (?P<sessions>\d+) "
                       r"session\(s\) joined, (?P<held>\d+) message\(s\) held for catch-up$")


async def list_rooms(client):
    """Run urn:xmpp:minimix#list; returns {room: {nick, state, sessions, held}}
    (empty when the account is in no rooms)."""
    res, out = await adhoc(client, LIST)
    assert res.type == "result" and out["status"] == "completed", "list failed: %s" % res
    assert out["notes"] and out["notes"][0][0] == "info", res
    text = out["notes"][0][1]
    if text == "The account is in no rooms.":
        return {}
    rooms = {}
    for line in text.splitlines():
        mt = LIST_LINE.match(line)
        assert mt, "unexpected list line %r in %s" % (line, res)
        rooms[mt.group("room")] = {"nick": mt.group("nick"), "state": mt.group("state"),
                                   "sessions": int(mt.group("sessions")),
                                   "held": int(mt.group("held"))}
    return rooms


async def kick(owner, room, nick, reason="out"):
    """XEP-0045 8.2: a moderator kicks an occupant (role none)."""
    return await iq_ok(owner, room, "set",
                       "<query xmlns='%s'><item nick=%s role='none'><reason>%s</reason></item></query>"
                       % (NS_MUC_ADMIN, quoteattr(nick), escape(reason)), "kicking " + nick)


def log_since_last_start(env):
    text = env.read_log()
    i = text.rfind("Hello and welcome to Prosody")
    return text[i:] if i >= 0 else text


# ---- 1. a bookmark with autojoin is a membership ------------------------------------

@pytest.mark.parametrize("bookmarks_module", [False, True], ids=["pep", "mod_bookmarks"])
def test_bookmark_autojoin_joins_the_account_and_retraction_leaves(prosody_factory,
                                                                    bookmarks_module):
    """XEP-0402 3.3 (a conference bookmark with autojoin='true') as the
    account's membership: publishing it makes the account enter the room
    (XEP-0045 7.2) with the bookmark's nick and no session joined, so the
    other occupants see the account enter, with its bare JID as the real
    JID in a non-anonymous room (7.2.4), and no session gets room traffic.
    The account is an occupant like any other: a session entering later gets
    the later-session sequence (7.2.3) without a second join in the room.
    Retracting the bookmark (XEP-0402 3.4) makes the account exit (7.14):
    the room shows the occupant leave and the joined session gets its
    unavailable self-presence (110).  The same with Prosody's mod_bookmarks
    loaded."""
    env = prosody_factory(extra_modules=["bookmarks"] if bookmarks_module else [])

    async def scenario(w):
        room = w.room("bm-publish")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Bookmarked")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        await publish_bookmark(p, room, True, nick="Ali", name="Bookmarked room")
        seen = await exactly_once(bob, joined_at(room, "Ali"), since=mb,
                                  what="alice entering by bookmark, at bob")
        assert seen.item is not None and seen.item.get("jid") == ALICE, \
            "the occupant's real JID should be the account (bare JID): %s" % seen
        await p.assert_nothing(from_room(room), since=mp, what="room traffic at P (not joined)")
        assert not l.matching(from_room(room), since=ml), l.transcript(ml)

        # The account is in: a session entering attaches to it (no new
        # occupant, no exit; whether the room gets a presence update is
        # test_session_attaching_to_a_bookmark_membership_changes_nothing).
        mb, ml = bob.mark(), l.mark()
        _, seq = await join_room(l, room, "Ali", id="after-bookmark-1")
        self_p = [s for s in seq if s.is_self_presence]
        assert len(self_p) == 1 and self_p[0].to == l.jid and self_p[0].id == "after-bookmark-1", \
            l.transcript(ml)
        assert [s.frm for s in seq if s.name == "presence"] == [room + "/bob", room + "/Ali"], \
            l.transcript(ml)
        await w.quiet()
        assert not bob.matching(P(name="presence", fn=lambda s: s.frm_bare == room and (
            s.type == "unavailable" or s.frm not in (room + "/Ali", room + "/bob"))), since=mb), \
            "alice left or entered with another nick when L attached:\n" + bob.transcript(mb)

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        await retract_bookmark(p, room)
        gone = await exactly_once(bob, left_at(room, "Ali"), since=mb,
                                  what="alice leaving after the retraction, at bob")
        assert 110 not in gone.codes and gone.item.get("jid") == ALICE, gone
        u = await l.wait_for(self_unavailable(room, "Ali"), since=ml,
                             what="L's unavailable self-presence")
        assert u.to == l.jid, u
        await p.assert_nothing(from_room(room), since=mp, what="room traffic at P")
        mb = bob.mark()
        bob.groupchat(room, "after the retraction")
        await bob.wait_for(P(name="message", body="after the retraction"), since=mb)
        await l.assert_nothing(P(name="message", body="after the retraction"), since=ml,
                               what="room traffic at L after the account left")
    run(env, scenario)


def test_session_attaching_to_a_bookmark_membership_changes_nothing(prosody):
    """README ("The account's presence in a room"): the room sees the
    account's presence as that of its most available device, and sees a
    change only when that presence changes.  The account entered by
    bookmark, available with no <show/>; a session then entering with a
    plain join presence (available, no <show/>) changes nothing the room
    shows, so the room gets nothing from the account: bob sees no presence
    of alice (XEP-0045 7.2.3: no new occupant; 7.7.2: no status change)."""
    async def scenario(w):
        room = w.room("bm-attach")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        mb = bob.mark()
        await publish_bookmark(p, room, True, nick="Ali")
        await exactly_once(bob, joined_at(room, "Ali"), since=mb, what="alice entering, at bob")
        mb = bob.mark()
        await join_room(p, room, "Ali")
        await bob.assert_nothing(P(name="presence", frm=room + "/Ali"), since=mb,
                                 what="a presence of alice at bob when a session attached")
    run(prosody, scenario)


def test_bookmark_without_nick_uses_localpart_autojoin_false_leaves(prosody):
    """XEP-0402 3.3: a bookmark without <nick/> gives the account's
    localpart as nick; the account enters with no session joined and the
    occupants see it (bare JID).  Re-publishing the same item with
    autojoin='false' makes the account exit (XEP-0045 7.14) and not come
    back; the item keeps autojoin='false'."""
    async def scenario(w):
        room = w.room("bm-localpart")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")

        mb, mp = bob.mark(), p.mark()
        await publish_bookmark(p, room, True, name="No nick")
        seen = await exactly_once(bob, joined_at(room, "alice"), since=mb,
                                  what="alice (localpart nick) entering, at bob")
        assert seen.item.get("jid") == ALICE, seen

        mb = bob.mark()
        await publish_bookmark(p, room, False, name="No nick")
        await exactly_once(bob, left_at(room, "alice"), since=mb,
                           what="alice leaving after autojoin='false', at bob")
        await bob.assert_nothing(joined_at(room, "alice"), since=mb,
                                 what="alice entering again")
        await p.assert_nothing(from_room(room), since=mp, window=0, what="room traffic at P")
        b = await fetch_bookmark(p, room)
        assert b is not None and b["autojoin"] == "false" and b["name"] == "No nick", b
    run(prosody, scenario)


def test_bookmark_password_enters_a_protected_room(prosody):
    """XEP-0402 3.3 (<password/> of a conference bookmark) and XEP-0045
    7.2.6 (entering a password-protected room: the password in the join's
    <x xmlns='http://jabber.org/protocol/muc'/>): a bookmark with autojoin
    and the room's password makes the account enter, with no session
    joined; bob sees alice (bare JID) enter."""
    async def scenario(w):
        room = w.room("bm-password")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", password="s3cret")
        p = await w.connect("alice", "phone")

        mb = bob.mark()
        await publish_bookmark(p, room, True, nick="Ali", password="s3cret")
        seen = await exactly_once(bob, joined_at(room, "Ali"), since=mb,
                                  what="alice entering the protected room, at bob")
        assert seen.item.get("jid") == ALICE, seen
    run(prosody, scenario)


# ---- 1b. Prosody's mod_bookmarks: legacy XEP-0048 private XML -----------------------

def test_legacy_private_xml_bookmark_is_converted_and_joined(prosody_factory):
    """XEP-0048 (bookmarks in XEP-0049 private XML) through Prosody's
    mod_bookmarks, which converts them to XEP-0402 PEP items (XEP-0411):
    a conference with autojoin='1' makes the account enter the room with the
    bookmark's nick (bob sees it, real JID the bare JID); the stored PEP item
    carries the conversion.  Storing it again with autojoin='0' makes the
    account exit; autojoin='1' again enters; storing a set without that
    conference (mod_bookmarks retracts the PEP item) makes it exit."""
    env = prosody_factory(extra_modules=["bookmarks"])

    async def scenario(w):
        room = w.room("bm-legacy")
        other = w.room("bm-legacy-other")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")

        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": room, "autojoin": "1", "name": "Legacy",
                                        "nick": "Leg"}])
        seen = await exactly_once(bob, joined_at(room, "Leg"), since=mb,
                                  what="alice entering by legacy bookmark, at bob")
        assert seen.item.get("jid") == ALICE, seen
        b = await fetch_bookmark(p, room)
        assert b is not None and b["nick"] == "Leg" and b["name"] == "Legacy" \
            and b["autojoin"] in ("1", "true"), "converted PEP bookmark: %r" % (b,)

        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": room, "autojoin": "0", "name": "Legacy",
                                        "nick": "Leg"}])
        await exactly_once(bob, left_at(room, "Leg"), since=mb,
                           what="alice leaving after autojoin='0', at bob")

        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": room, "autojoin": "1", "nick": "Leg"}])
        await exactly_once(bob, joined_at(room, "Leg"), since=mb,
                           what="alice entering again, at bob")

        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": other, "autojoin": "0", "nick": "Leg"}])
        await exactly_once(bob, left_at(room, "Leg"), since=mb,
                           what="alice leaving after the bookmark was removed, at bob")
        assert await fetch_bookmark(p, room) is None
    run(env, scenario)


def test_legacy_removing_the_last_bookmark_leaves(prosody_factory):
    """XEP-0048: a client removes its last bookmark by storing an empty
    <storage/>; mod_bookmarks then purges the XEP-0402 node (XEP-0060 8.5)
    instead of retracting the item.  The bookmark is gone all the same, so
    the account exits the room (XEP-0045 7.14): bob sees it leave."""
    env = prosody_factory(extra_modules=["bookmarks"])

    async def scenario(w):
        room = w.room("bm-purge")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")

        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": room, "autojoin": "1", "nick": "Leg"}])
        await exactly_once(bob, joined_at(room, "Leg"), since=mb,
                           what="alice entering by legacy bookmark, at bob")
        mb = bob.mark()
        await set_legacy_bookmarks(p, [])
        assert await fetch_bookmark(p, room) is None, "mod_bookmarks kept the item"
        await bob.wait_for(left_at(room, "Leg"), since=mb,
                           what="alice leaving after her last bookmark was removed, at bob")
    run(env, scenario)


def test_legacy_bookmarks_migrated_at_login_join(prosody_factory):
    """XEP-0048 bookmarks stored in private XML before mod_bookmarks was
    enabled: at the account's next login mod_bookmarks migrates them to
    XEP-0402 PEP items (XEP-0411), and the one with autojoin='1' makes the
    account enter the room; bob, already in the (persistent) room, sees it
    enter with the bare JID.  Before the migration nothing joins."""
    env = prosody_factory(extra_modules=["private"])

    async def before(w):
        room = w.room("bm-migrate")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        mb = bob.mark()
        await set_legacy_bookmarks(p, [{"jid": room, "autojoin": "1", "nick": "Old"}])
        await bob.assert_nothing(P(frm=room + "/Old"), since=mb,
                                 what="alice entering without mod_bookmarks")
        assert await fetch_bookmark(p, room) is None
    run(env, before)

    env.extra_modules = ["private", "bookmarks"]
    env.restart()

    async def after(w):
        room = w.room("bm-migrate")
        bob = await w.connect("bob", "desk")
        _, seq = await join_room(bob, room, "bob")
        assert not [s for s in seq if s.frm == room + "/Old"], \
            "alice was in the room before her login:\n" + bob.transcript()
        mb = bob.mark()
        p = await w.connect("alice", "phone")
        seen = await exactly_once(bob, joined_at(room, "Old"), since=mb,
                                  what="alice entering after the migration, at bob")
        assert seen.item.get("jid") == ALICE, seen
        b = await fetch_bookmark(p, room)
        assert b is not None and b["nick"] == "Old", b
    run(env, after)


# ---- 2. leaving turns autojoin off --------------------------------------------------

def test_kick_turns_bookmark_autojoin_off(prosody):
    """XEP-0045 8.2 (kicking an occupant, status 307) ends the account's
    membership: every joined session gets the kick (110 + 307), and the
    account's bookmark (XEP-0402) gets autojoin='false', its other fields
    kept, so that neither the module nor a client enters the room again:
    bob sees no new entry."""
    async def scenario(w):
        room = w.room("bm-kick")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")

        mb = bob.mark()
        await publish_bookmark(p, room, True, nick="Ali", name="Kick me")
        await exactly_once(bob, joined_at(room, "Ali"), since=mb, what="alice entering, at bob")
        await join_room(l, room, "Ali")

        mb, ml = bob.mark(), l.mark()
        await kick(bob, room, "Ali")
        k = await bob.wait_for(left_at(room, "Ali"), since=mb, what="the kick, at bob")
        assert 307 in k.codes, k
        u = await l.wait_for(self_unavailable(room, "Ali"), since=ml, what="the kick at L")
        assert 307 in u.codes, u
        b = await wait_bookmark(w, p, room, lambda b: b["autojoin"] in ("false", "0"),
                                what="autojoin off after the kick")
        assert b["nick"] == "Ali" and b["name"] == "Kick me", b
        await bob.assert_nothing(joined_at(room, "Ali"), since=mb, what="alice entering again")
    run(prosody, scenario)


def test_last_session_leaving_turns_bookmark_autojoin_off(prosody):
    """XEP-0045 7.14 for a room the account entered by bookmark: a session
    leaving while another is joined changes nothing in the room; the last
    session leaving makes the account exit (bob sees it) and turns the
    bookmark's autojoin off (XEP-0402), so the account does not come back."""
    async def scenario(w):
        room = w.room("bm-lastleave")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")

        mb = bob.mark()
        await publish_bookmark(p, room, True, nick="Ali")
        await exactly_once(bob, joined_at(room, "Ali"), since=mb, what="alice entering, at bob")
        await join_room(p, room, "Ali")
        await join_room(l, room, "Ali")

        mb, mp = bob.mark(), p.mark()
        p.leave(room, "Ali")
        await p.wait_for(self_unavailable(room, "Ali"), since=mp, what="P's unavailable")
        await bob.assert_nothing(P(frm=room + "/Ali"), since=mb, what="alice leaving (L is in)")
        b = await fetch_bookmark(p, room)
        assert b is not None and b["autojoin"] == "true", \
            "autojoin turned off while a session is still joined: %r" % (b,)

        ml = l.mark()
        l.leave(room, "Ali")
        await l.wait_for(self_unavailable(room, "Ali"), since=ml, what="L's unavailable")
        await bob.wait_for(left_at(room, "Ali"), since=mb, what="alice leaving, at bob")
        b = await wait_bookmark(w, p, room, lambda b: b["autojoin"] in ("false", "0"),
                                what="autojoin off after the last session left")
        assert b["nick"] == "Ali", b
        await bob.assert_nothing(joined_at(room, "Ali"), since=mb, what="alice entering again")
    run(prosody, scenario)


# ---- 3. start-up ----------------------------------------------------------------------

@pytest.mark.parametrize("stored,stop", [
    ("membership-and-bookmark", "restart"),
    ("bookmark-only", "restart"),
    ("bookmark-only", "crash"),
])
def test_startup_reconciles_bookmarks_and_memberships_one_join(prosody_factory, stored, stop):
    """At start-up the account enters each (persistent) room of its autojoin
    bookmarks once: stored memberships are restored first, then bookmarks
    reconciled, and a room in both gets exactly one join.
    "membership-and-bookmark": a session entered the room (a stored
    membership) and the bookmark was published for it afterwards (which,
    live, sends nothing: bob sees one entry); "bookmark-only": the account
    entered by bookmark.  "restart" is ProsodyEnv.restart() (SIGTERM; the
    MUC keeps its occupants across a clean restart, so a join from the
    account is a presence update for the room), "crash" a SIGKILL (the room
    comes back empty).
    Seen from the room (Prosody's MUC debug log after the start): exactly
    one presence from alice@localhost handled, a new occupant or an update.
    Seen from bob, entering after the start: alice is an occupant with one
    presence (real JID the bare JID), and no second presence follows."""
    env = prosody_factory(debug=True)

    async def before(w):
        room = w.room("bm-restart")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone", subject="Restart", config=PERSISTENT)
        p = await w.connect("alice", "phone")
        mb = bob.mark()
        if stored == "membership-and-bookmark":
            await join_room(p, room, "Ali")
            await publish_bookmark(p, room, True, nick="Ali")
        else:
            await publish_bookmark(p, room, True, nick="Ali")
        await exactly_once(bob, joined_at(room, "Ali"), since=mb, what="alice entering, at bob")
        await w.quiet()   # the membership store is written on a timer
    run(env, before)

    if stop == "crash":
        env.kill()
    else:
        env.stop()
    env.start()

    async def after(w):
        room = w.room("bm-restart")
        bob = await w.connect("bob", "desk")
        mb = bob.mark()
        await join_room(bob, room, "bob")
        await bob.wait_for(joined_at(room, "Ali"), since=mb, what="alice in the room, at bob")
        await w.quiet(2)
        ali = bob.matching(P(name="presence", frm=room + "/Ali"), since=mb)
        assert len(ali) == 1 and ali[0].type is None and ali[0].item.get("jid") == ALICE, \
            "alice's presences at bob after the start:\n" + "\n".join(map(str, ali))

        log = log_since_last_start(env).splitlines()
        handled = [ln for ln in log
                   if "creating new occupant object for " + ALICE in ln
                   or "presence update for %s/Ali from session %s" % (room, ALICE) in ln]
        joins = [ln for ln in log if "%s joins %s as Ali" % (ALICE, room) in ln]
        assert len(handled) == 1 and len(joins) == 1, \
            "after the start the account sent %d join(s), the room handled %d:\n%s" % (
                len(joins), len(handled), "\n".join(joins + handled))
    run(env, after)


# ---- 4. ad-hoc commands -------------------------------------------------------------

def test_adhoc_list_and_leave_one(prosody):
    """XEP-0050 commands on the account's own server: urn:xmpp:minimix#list
    lists each room with nick, sessions joined and messages held; #leave
    (a form with the field 'room', XEP-0004) makes the account exit that
    room only (XEP-0045 7.14): bob sees alice leave it, its joined sessions
    get their unavailable self-presence, the other room is untouched."""
    async def scenario(w):
        room = w.room("cmd-one")
        room2 = w.room("cmd-two")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        await create_room(bob, room2, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        await join_room(p, room, "alice")
        await join_room(l, room, "alice")
        mb = bob.mark()
        await publish_bookmark(p, room2, True, nick="Ali")
        await bob.wait_for(joined_at(room2, "Ali"), since=mb, what="alice entering room2")
        ml = l.mark()
        bob.groupchat(room, "one")
        bob.groupchat(room, "two")
        await l.wait_for(P(name="message", body="two"), since=ml)

        rooms = await list_rooms(p)
        assert set(rooms) == {room, room2}, rooms
        assert rooms[room]["nick"] == "alice" and rooms[room]["sessions"] == 2 \
            and rooms[room]["held"] == 2, rooms
        assert rooms[room2]["nick"] == "Ali" and rooms[room2]["sessions"] == 0 \
            and rooms[room2]["held"] == 0, rooms

        res, out = await adhoc(l, LEAVE)
        assert res.type == "result" and out["status"] == "executing", res
        assert res.frm == "localhost", res
        assert sorted(out["fields"]["room"]["options"]) == sorted([room, room2]), res

        mb, mp, ml = bob.mark(), p.mark(), l.mark()
        res, out = await adhoc(l, LEAVE, sessionid=out["sessionid"], form=leave_form(room),
                               action="complete")
        assert res.type == "result" and out["status"] == "completed", res
        assert ("info", "Left " + room) in out["notes"], res
        gone = await exactly_once(bob, left_at(room, "alice"), since=mb,
                                  what="alice leaving after #leave, at bob")
        assert gone.item.get("jid") == ALICE, gone
        for c, m in ((p, mp), (l, ml)):
            u = await c.wait_for(self_unavailable(room, "alice"), since=m,
                                 what="unavailable self-presence at " + c.name)
            assert u.to == c.jid, u
        await bob.assert_nothing(P(frm=room2 + "/Ali"), since=mb, what="alice leaving room2")
        rooms = await list_rooms(l)
        assert set(rooms) == {room2}, rooms
    run(prosody, scenario)


def test_adhoc_leave_all(prosody):
    """XEP-0050 urn:xmpp:minimix#leave-all: the account exits every room
    (XEP-0045 7.14), whether entered by a session or by bookmark: bob, in
    both, sees alice leave both; the joined session gets its unavailable
    self-presence; the bookmark's autojoin is turned off; the list is
    empty afterwards."""
    async def scenario(w):
        room = w.room("cmd-all-one")
        room2 = w.room("cmd-all-two")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        await create_room(bob, room2, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice")
        mb = bob.mark()
        await publish_bookmark(p, room2, True, nick="Ali")
        await bob.wait_for(joined_at(room2, "Ali"), since=mb, what="alice entering room2")

        mb, mp = bob.mark(), p.mark()
        res, out = await adhoc(p, LEAVE_ALL)
        assert res.type == "result" and out["status"] == "completed", res
        assert ("info", "Left 2 room(s)") in out["notes"], res
        await exactly_once(bob, left_at(room, "alice"), since=mb, what="alice leaving room")
        await exactly_once(bob, left_at(room2, "Ali"), since=mb, what="alice leaving room2")
        await p.wait_for(self_unavailable(room, "alice"), since=mp, what="P's unavailable")
        assert await list_rooms(p) == {}
        b = await wait_bookmark(w, p, room2, lambda b: b["autojoin"] in ("false", "0"),
                                what="autojoin off after leave-all")
        assert b["nick"] == "Ali", b
        await bob.assert_nothing(P(name="presence", type="available",
                                   fn=lambda s: s.frm in (room + "/alice", room2 + "/Ali")),
                                 since=mb, what="alice entering again")
    run(prosody, scenario)


def test_adhoc_commands_act_on_the_callers_account_only(prosody):
    """XEP-0050 commands act on the account that runs them (README,
    Security: another account cannot make an account leave): carol@localhost
    gets her own, empty, list; her #leave finds no rooms, and even submitting
    alice's own command session with alice's room leaves nothing; her
    #leave-all leaves nothing.  A user of another server (carol@plain.
    localhost) may not run them (forbidden).  bob sees alice stay; alice's
    list is unchanged."""
    async def scenario(w):
        room = w.room("cmd-other")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        await join_room(p, room, "alice")
        carol = await w.connect("carol", "desk", host="localhost")
        remote = await w.connect("carol", "remote", host="plain.localhost")
        mb, mp = bob.mark(), p.mark()

        assert await list_rooms(carol) == {}
        res, out = await adhoc(carol, LEAVE)
        assert out["status"] == "completed" and ("info", "The account is in no rooms.") \
            in out["notes"], res

        # alice starts #leave; carol submits into alice's command session.
        res, alice_out = await adhoc(p, LEAVE)
        assert alice_out["status"] == "executing", res
        res, out = await adhoc(carol, LEAVE, sessionid=alice_out["sessionid"],
                               form=leave_form(room), action="complete")
        assert out["status"] != "completed" or not any(t == "info" and "Left" in txt
                                                       for t, txt in out["notes"]), res

        res, out = await adhoc(carol, LEAVE_ALL)
        assert ("info", "Left 0 room(s)") in out["notes"], res

        for node in (LIST, LEAVE, LEAVE_ALL):
            res, out = await adhoc(remote, node)
            assert res.type == "error" and res.error == ("auth", "forbidden"), res

        await bob.assert_nothing(P(frm=room + "/alice"), since=mb, what="alice leaving")
        await p.assert_nothing(self_unavailable(room, "alice"), since=mp, window=0,
                               what="P's unavailable")
        rooms = await list_rooms(p)
        assert set(rooms) == {room} and rooms[room]["sessions"] == 1, rooms
    run(prosody, scenario)


def test_bookmark_jids_are_prepared_as_the_router_prepares_them(prosody):
    """RFC 7622 3.2/3.3 and the README's "one JID normalisation": a bookmark
    names its room as the client wrote it (XEP-0402 item id), here
    'Ärger@conference.localhost' and the full-width
    'ｆｕｌｌ@ｃｏｎｆｅｒｅｎｃｅ.ｌｏｃａｌｈｏｓｔ'; the account's membership
    is the room as Prosody's router prepares the JID (nodeprep, nameprep):
    'ärger@…' and 'full@conference.localhost'.  So the room's answers find
    it: each join completes (XEP-0045 7.2.3) and the list shows one joined
    membership per room, and a session that joins the router-prepared JID
    attaches to it, with no second join in the room."""
    async def scenario(w):
        bob = await w.connect("bob", "desk")
        p = await w.connect("alice", "phone")
        l = await w.connect("alice", "laptop")
        cases = (("Ärger@conference.localhost", "ärger@conference.localhost"),
                 ("ｆｕｌｌ@ｃｏｎｆｅｒｅｎｃｅ.ｌｏｃａｌｈｏｓｔ", "full@conference.localhost"))
        for written, room in cases:
            await create_room(bob, room, "bob", whois="anyone", subject="Prepared")
            mb = bob.mark()
            await publish_bookmark(p, written, True, nick="Ali")
            await exactly_once(bob, joined_at(room, "Ali"), since=mb,
                               what="alice entering %s by bookmark, at bob" % room)
        for _ in range(50):
            rooms = await list_rooms(p)
            if all(rooms.get(room, {}).get("state") == "joined" for _, room in cases):
                break
            await w.quiet(0.2)
        assert set(rooms) == {room for _, room in cases}, rooms
        assert all(r["state"] == "joined" for r in rooms.values()), rooms

        for _, room in cases:
            mb, ml = bob.mark(), l.mark()
            _, seq = await join_room(l, room, "Ali", id="prepared-join")
            assert [s.id for s in seq if s.is_self_presence] == ["prepared-join"], \
                l.transcript(ml)
            await bob.assert_nothing(P(name="presence", frm=room + "/Ali"), since=mb,
                                     what="a second join of alice in %s" % room)
        rooms = await list_rooms(p)
        assert set(rooms) == {room for _, room in cases}, rooms
        assert all(r["sessions"] == 1 for r in rooms.values()), rooms
    run(prosody, scenario)


@pytest.mark.skipif(PROSODY_VERSION < 13, reason="roles and permissions are Prosody 13's; "
                    "0.12 lets any local user run the commands")
def test_adhoc_commands_follow_roles_on_prosody_13(prosody_factory):
    """Prosody 13: each command is the permission adhoc:<node>, which every
    local role has by default, so that the operator's role settings decide:
    with remove_permissions = { ["prosody:guest"] = { "adhoc:urn:xmpp:
    minimix#leave-all" } } (alice is prosody:registered, which inherits
    from prosody:guest), alice's disco#items of the commands node lacks
    #leave-all and running it is forbidden (XEP-0050 4.4), nothing leaves:
    bob sees alice stay; #list still works and shows the room.  A role can
    reach further than 0.12's "local user": carol@plain.localhost, listed in
    `admins`, is prosody:admin on localhost too, yet the commands act only
    on accounts of localhost, so hers are forbidden (XEP-0050 4.4)."""
    env = prosody_factory(host_options={
        "remove_permissions": {"prosody:guest": ["adhoc:" + LEAVE_ALL]}},
        global_options={"admins": ["carol@plain.localhost"]})

    async def scenario(w):
        room = w.room("cmd-roles")
        bob = await w.connect("bob", "desk")
        await create_room(bob, room, "bob", whois="anyone")
        p = await w.connect("alice", "phone")
        mb = bob.mark()
        await join_room(p, room, "alice")
        await bob.wait_for(joined_at(room, "alice"), since=mb, what="alice entering, at bob")
        mb = bob.mark()

        m = p.mark()
        id = p.iq("localhost", "get", "<query xmlns='http://jabber.org/protocol/disco#items' "
                  "node='%s'/>" % NS_COMMANDS)
        res = await p.wait_for(P(name="iq", id=id), since=m, what="the commands")
        nodes = {i.get("node") for i in res.xml.iter("{http://jabber.org/protocol/disco#items}item")}
        assert LIST in nodes and LEAVE in nodes and LEAVE_ALL not in nodes, res

        res, out = await adhoc(p, LEAVE_ALL)
        assert res.type == "error" and res.error == ("auth", "forbidden"), res
        await bob.assert_nothing(P(frm=room + "/alice"), since=mb, what="alice leaving")
        rooms = await list_rooms(p)
        assert set(rooms) == {room} and rooms[room]["sessions"] == 1, rooms

        remote = await w.connect("carol", "remote", host="plain.localhost")
        for node in (LIST, LEAVE, LEAVE_ALL):
            res, out = await adhoc(remote, node)
            assert res.type == "error" and res.error == ("auth", "forbidden"), res
    run(env, scenario)
