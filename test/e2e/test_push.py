"""End-to-end tests: group chat push (XEP-0357 through mod_cloud_notify,
XEP-0492 settings in XEP-0402 bookmarks).

The account alice@localhost is in its rooms while its devices come and go;
a device that enabled push (XEP-0357 5) and is not connected, or that
XEP-0198 keeps hibernating, is woken through the push app server
(PushService: an XEP-0114 component on push.localhost that the test starts,
which answers each publish with a result and records it) for what its
setting for the room allows: every message in a private room (members-only
and non-anonymous), mentions in a public one, or what the bookmark's
<notify/> says.  bob and carol speak from plain.localhost.

mod_cloud_notify comes from Debian's prosody-modules on 0.12 and with
Prosody itself on 13.0; both are loaded as "cloud_notify".
"""

import asyncio
import re
import time
from xml.sax.saxutils import escape, quoteattr

from .clients import P, Component, join_room, create_room, config_form, NS_DATA
from .prosody_env import SLOWDOWN, free_port
from .test_operators import fetch_metrics, openmetrics_options
from .test_persistence import wait_log
from .world import run

ALICE = "alice@localhost"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_BOOKMARKS = "urn:xmpp:bookmarks:1"
NS_NOTIFY = "urn:xmpp:notification-settings:1"
NS_REFERENCE = "urn:xmpp:reference:0"
NS_REPLY = "urn:xmpp:reply:0"
PUSH = "push.localhost"
PUSH_SECRET = "push-app-server-secret"


# ---- the push app server -------------------------------------------------------

class PushService(Component):
    """The app server of XEP-0357 (section 3): an XEP-0114 component on
    PUSH that answers every publish to a node with a result and records it
    (as a jabber:client stanza).  pushes(node) lists the summaries (the
    urn:xmpp:push:summary form's fields, as a dict) published to node."""

    def __init__(self, env):
        Component.__init__(self, env, PUSH, PUSH_SECRET)

    def handle(self, stanza):
        xml = stanza.xml
        name = xml.tag.split("}")[-1]
        if name not in ("message", "presence", "iq"):
            return stanza   # the stream's own elements (<handshake/>)
        if name == "iq" and xml.get("type") == "set":
            self.xmpp.send_raw("<iq type='result' from=%s to=%s id=%s/>" % (
                quoteattr(PUSH), quoteattr(xml.get("from") or ""), quoteattr(xml.get("id") or "")))
        return None

    @staticmethod
    def summary(s):
        publish = s.xml.find(".//{%s}publish" % NS_PUBSUB)
        form = s.xml.find(".//{%s}notification/{%s}x" % (NS_PUSH, NS_DATA))
        fields = {"node": publish.get("node") if publish is not None else None}
        for f in (form.findall("{%s}field" % NS_DATA) if form is not None else []):
            v = f.find("{%s}value" % NS_DATA)
            fields[f.get("var")] = v.text if v is not None else None
        return fields

    def is_push(self, node):
        def pred(s):
            if s.name != "iq" or s.type != "set":
                return False
            publish = s.xml.find(".//{%s}publish" % NS_PUBSUB)
            return publish is not None and publish.get("node") == node
        return pred

    def pushes(self, node, since=0):
        return [self.summary(s) for s in self.matching(self.is_push(node), since=since)]

    async def wait_push(self, node, body, since=0, what=None):
        """The push to node whose last-message-body is body."""
        def pred(s):
            return self.is_push(node)(s) and self.summary(s).get("last-message-body") == body
        s = await self.wait_for(pred, since=since, what=what or "a push of %r to %s" % (body, node))
        return self.summary(s)


def push_env(prosody_factory, **options):
    """A server with mod_cloud_notify and the push app server's component;
    summaries carry the sender and the body (so that tests tell pushes
    apart); pushes are not gathered unless the test says so."""
    host = {"push_notification_with_body": True, "push_notification_with_sender": True,
            "minimix_push_window": 0}
    host.update(options.pop("host_options", {}))
    return prosody_factory(extra_modules=["cloud_notify"], host_options=host,
                           external_components={PUSH: PUSH_SECRET}, **options)


async def enable_push(client, node):
    """XEP-0357 5: the device enables push at the app server's node."""
    m = client.mark()
    iq = client.iq(None, "set", "<enable xmlns='%s' jid='%s' node=%s/>"
                   % (NS_PUSH, PUSH, quoteattr(node)))
    res = await client.wait_for(P(name="iq", id=iq), since=m, what="push enabled")
    assert res.type == "result", res


def alice_sessions(env):
    # (Prosody 13 adds the role: "alice@localhost [prosody:registered]")
    return sum(1 for j in env.open_sessions().values() if j.split(" ")[0] == ALICE)


async def gone(env, client, timeout=10 * SLOWDOWN):
    """The device's connection drops (no </stream>), and the server has
    noticed (its "Client disconnected" line)."""
    before = alice_sessions(env)
    await client.abort()
    deadline = time.monotonic() + timeout
    while alice_sessions(env) >= before:
        assert time.monotonic() < deadline, "the server never saw %s go" % client.jid
        await asyncio.sleep(0.05)


async def public_room(w, bob, name):
    room = w.room(name)
    await create_room(bob, room, "bob", whois="anyone")
    return room


async def private_room(w, bob, name):
    """Members-only and non-anonymous, with alice a member."""
    room = w.room(name)
    await create_room(bob, room, "bob", whois="anyone",
                      config={"muc#roomconfig_membersonly": True})
    m = bob.mark()
    iq = bob.iq(room, "set", "<query xmlns='%s'><item affiliation='member' jid='%s'/></query>"
                % (NS_MUC_ADMIN, ALICE))
    res = await bob.wait_for(P(name="iq", id=iq), since=m, what="alice made a member")
    assert res.type == "result", res
    return room


async def push_room(w, env, name, private=False):
    """The scene of most tests: the app server started, bob at his desk
    and the room he made (public, or private with alice a member).
    Returns (service, bob, room)."""
    service = await PushService(env).connect()
    bob = await w.connect("bob", "desk")
    room = await (private_room if private else public_room)(w, bob, name)
    return service, bob, room


async def laptop_in(w, room):
    """alice's laptop connects and joins room (no push of its own)."""
    l = await w.connect("alice", "laptop")
    await join_room(l, room, "alice")
    return l


async def phone_away(w, env, room, node, nick="alice"):
    """alice's phone enables push at node, joins room and goes away: the
    account stays in the room."""
    p = await w.connect("alice", "phone")
    await enable_push(p, node)
    await join_room(p, room, nick)
    await gone(env, p)
    return p


def bodies(pushes):
    return [p.get("last-message-body") for p in pushes]


async def publish_bookmark(client, room, notify=None, nick="alice"):
    """XEP-0402 3.3 with XEP-0492's <notify/> in <extensions/>: notify is
    the XML of its children (e.g. "<never/>"), or None for none."""
    ext = ""
    if notify is not None:
        ext = "<extensions><notify xmlns='%s'>%s</notify></extensions>" % (NS_NOTIFY, notify)
    item = ("<conference xmlns='%s' autojoin='true'><nick>%s</nick>%s</conference>"
            % (NS_BOOKMARKS, escape(nick), ext))
    opts = ("<publish-options><x xmlns='%s' type='submit'>"
            "<field var='FORM_TYPE' type='hidden'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>"
            "<field var='pubsub#persist_items'><value>true</value></field>"
            "<field var='pubsub#max_items'><value>max</value></field>"
            "<field var='pubsub#access_model'><value>whitelist</value></field>"
            "</x></publish-options>" % NS_DATA)
    m = client.mark()
    iq = client.iq(None, "set", "<pubsub xmlns='%s'><publish node='%s'><item id=%s>%s</item>"
                   "</publish>%s</pubsub>" % (NS_PUBSUB, NS_BOOKMARKS, quoteattr(room), item, opts))
    res = await client.wait_for(P(name="iq", id=iq), since=m, what="bookmark published")
    assert res.type == "result", res


def say(client, room, body, extra=""):
    client.send("<message type='groupchat' to=%s><body>%s</body>%s</message>"
                % (quoteattr(room), escape(body), extra))


# ---- the setting's default: public and private rooms -----------------------------

def test_public_room_pushes_a_mention_and_not_the_messages_around_it(prosody_factory):
    """XEP-0492 3: without a setting, a public group chat notifies on
    mention.  The phone enabled push (XEP-0357 5), joined and went away;
    of three messages only the one naming alice's nick is pushed, with the
    occupant who spoke as last-message-sender (push_notification_with_sender)."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-public")
        await phone_away(w, env, room, "phone-1")
        m = service.mark()
        say(bob, room, "just chatting")
        say(bob, room, "hey alice, look at this")
        say(bob, room, "more chatting")
        say(bob, room, "@Alice: marker")
        last = await service.wait_push("phone-1", "@Alice: marker", since=m)
        assert last["last-message-sender"] == room + "/bob", last
        assert last["message-count"] == "1", last
        assert bodies(service.pushes("phone-1", since=m)) == \
            ["hey alice, look at this", "@Alice: marker"], service.transcript(m)
    run(env, scenario)


def test_private_room_pushes_every_message(prosody_factory):
    """XEP-0492 3: without a setting, a private group chat (members-only
    and non-anonymous in its disco#info) notifies always: each message is
    pushed, once."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-private", private=True)
        await phone_away(w, env, room, "phone-1")
        m = service.mark()
        for body in ("one", "two", "three"):
            say(bob, room, body)
        await service.wait_push("phone-1", "three", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == ["one", "two", "three"], \
            service.transcript(m)
    run(env, scenario)


# ---- the setting in the bookmark -------------------------------------------------

def test_bookmark_always_and_never_apply_to_the_next_message(prosody_factory):
    """XEP-0492 2.1 in a XEP-0402 bookmark's <extensions/>: <never/> holds
    even a mention back, <always/> pushes a plain message, each from the
    message after the bookmark changed.  A setting for the phone's identity
    (client/phone) wins over the fallback element (XEP-0492 3)."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-bookmark")
        l = await laptop_in(w, room)
        await phone_away(w, env, room, "phone-1")

        async def said(body):
            # the laptop got it: the room has sent it to the account before
            # the laptop changes the bookmark again
            ml = l.mark()
            say(bob, room, body)
            await l.wait_for(P(name="message", body=body), since=ml)

        m = service.mark()
        await publish_bookmark(l, room, "<never/>")
        await said("alice: held back by never")
        await publish_bookmark(l, room, "<always/>")
        await said("plain, pushed by always")
        await service.wait_push("phone-1", "plain, pushed by always", since=m)
        await publish_bookmark(l, room, "<never identity-category='client' identity-type='phone'/>"
                                         "<always/>")
        await said("alice: held back for phones")
        await publish_bookmark(l, room, "<on-mention/>")
        await said("plain, held back by on-mention")
        await said("alice: pushed by on-mention")
        await service.wait_push("phone-1", "alice: pushed by on-mention", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == \
            ["plain, pushed by always", "alice: pushed by on-mention"], service.transcript(m)
    run(env, scenario)


# ---- what a mention is ----------------------------------------------------------

def test_reference_and_reply_are_mentions_and_a_nick_inside_a_word_is_not(prosody_factory):
    """XEP-0492 3 (on-mention relies on explicit pings): a XEP-0372
    reference of type mention to alice's occupant JID, or to her bare JID,
    and a XEP-0461 reply to her message are mentions; "malice" is not a
    mention of "alice", nor is a reference to someone else."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-mention")
        l = await laptop_in(w, room)
        await phone_away(w, env, room, "phone-1")
        ml = bob.mark()
        say(l, room, "a message of alice's", extra="")
        own = await bob.wait_for(P(name="message", frm=room + "/alice", body="a message of alice's"),
                                 since=ml)
        sid = own.xml.find("{urn:xmpp:sid:0}stanza-id")
        m = service.mark()
        say(bob, room, "malice everywhere")
        say(bob, room, "see above", extra="<reference xmlns='%s' type='mention' uri=%s/>"
            % (NS_REFERENCE, quoteattr("xmpp:" + room + "/alice")))
        say(bob, room, "ping by bare JID", extra="<reference xmlns='%s' type='mention' uri=%s/>"
            % (NS_REFERENCE, quoteattr("xmpp:" + ALICE)))
        say(bob, room, "not you", extra="<reference xmlns='%s' type='mention' uri=%s/>"
            % (NS_REFERENCE, quoteattr("xmpp:" + room + "/bob")))
        say(bob, room, "agreed", extra="<reply xmlns='%s' to=%s id=%s/>"
            % (NS_REPLY, quoteattr(room + "/alice"), quoteattr(sid.get("id") if sid is not None else "x")))
        say(bob, room, "alice: marker")
        await service.wait_push("phone-1", "alice: marker", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == \
            ["see above", "ping by bare JID", "agreed", "alice: marker"], service.transcript(m)
    run(env, scenario)


# ---- who gets a push -------------------------------------------------------------

def test_connected_device_gets_no_push(prosody_factory):
    """XEP-0357 (pushes wake devices that are not connected): the laptop,
    connected and joined with its own registration, gets the mention and
    no push; the tablet, registered and gone, gets a push."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-connected")
        l = await w.connect("alice", "laptop")
        await enable_push(l, "laptop-1")
        await join_room(l, room, "alice")
        t = await w.connect("alice", "tablet")
        await enable_push(t, "tablet-1")
        await gone(env, t)
        m, ml = service.mark(), l.mark()
        say(bob, room, "alice: are you there?")
        await service.wait_push("tablet-1", "alice: are you there?", since=m)
        await l.wait_for(P(name="message", body="alice: are you there?"), since=ml)
        # a later push to the tablet: whatever the first message gave the
        # laptop's node came before it
        say(bob, room, "alice: marker")
        await service.wait_push("tablet-1", "alice: marker", since=m)
        assert service.pushes("laptop-1", since=m) == [], service.transcript(m)
    run(env, scenario)


def test_hibernating_device_gets_one_push_per_message_its_setting_allows(prosody_factory):
    """XEP-0198 hibernation with XEP-0357: the phone's session hibernates
    and queues the room's messages; the mentions are pushed once each,
    the plain messages not at all: mod_cloud_notify's own pushes for the
    queued copies are held back (its debug line), not sent a second time."""
    env = push_env(prosody_factory, smacks_hibernation_time=120, debug=True)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-hibernating")
        p = await w.connect("alice", "phone", presence=False)
        await p.enable_sm(resume=True)
        p.send("<presence/>")
        await enable_push(p, "phone-1")
        await join_room(p, room, "alice")
        await p.abort()
        await wait_log(env, r"Session going into hibernation", "the phone's session hibernating")
        m = service.mark()
        say(bob, room, "plain one")
        say(bob, room, "alice: first")
        say(bob, room, "plain two")
        say(bob, room, "alice: second")
        await service.wait_push("phone-1", "alice: second", since=m)
        # mod_cloud_notify tried for the queued copies (a second after the
        # first was queued) and was held back
        await wait_log(env, r"Push was blocked by event handler: mod_minimix",
                       "mod_cloud_notify's push for a queued copy held back")
        say(bob, room, "alice: marker")
        await service.wait_push("phone-1", "alice: marker", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == \
            ["alice: first", "alice: second", "alice: marker"], service.transcript(m)
    run(env, scenario)


def test_burst_in_an_always_room_gives_one_push_with_the_count(prosody_factory):
    """XEP-0357 summary (message-count): four messages said at once in a
    room set to always give one push per registration within the window
    (minimix_push_window), counting four, with the last one's body."""
    env = push_env(prosody_factory, host_options={"minimix_push_window": 5 * SLOWDOWN})

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-burst", private=True)
        await phone_away(w, env, room, "phone-1")
        m = service.mark()
        for i in range(1, 5):
            say(bob, room, "burst %d" % i)
        first = await service.wait_push("phone-1", "burst 4", since=m)
        assert first["message-count"] == "4", first
        m2 = service.mark()
        say(bob, room, "after the burst")
        after = await service.wait_push("phone-1", "after the burst", since=m2)
        assert after["message-count"] == "1", after
        assert bodies(service.pushes("phone-1", since=m)) == ["burst 4", "after the burst"], \
            service.transcript(m)
    run(env, scenario)


def test_no_push_for_own_messages_subjects_or_presence(prosody_factory):
    """Nothing of the account's own (its reflected message, XEP-0045 7.4),
    no subject change (8.1) and no occupant's presence is pushed, even in
    a private room that pushes every message."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-own", private=True)
        l = await laptop_in(w, room)
        await phone_away(w, env, room, "phone-1")
        m, mb = service.mark(), bob.mark()
        say(l, room, "alice says something")
        await bob.wait_for(P(name="message", body="alice says something"), since=mb)
        bob.set_subject(room, "a new subject")
        await bob.wait_for(P(name="message", subject="a new subject"), since=mb)
        ml = l.mark()
        bob.presence_update(room, "bob", show="away", status="lunch")
        await l.wait_for(P(name="presence", frm=room + "/bob"), since=ml)
        say(bob, room, "marker")
        await service.wait_push("phone-1", "marker", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == ["marker"], service.transcript(m)
    run(env, scenario)


def test_room_turning_private_pushes_every_message_from_its_configuration_change(prosody_factory):
    """XEP-0492 3 with XEP-0045 10.2.1: the room's privacy is read from its
    disco#info once and again after it announces a configuration change
    (status 104): a public room pushes only mentions; once the owner makes
    it members-only (alice a member), every message is pushed."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service = await PushService(env).connect()
        bob = await w.connect("bob", "desk")
        room = w.room("push-turning")
        await create_room(bob, room, "bob", whois="anyone")
        mb = bob.mark()
        iq = bob.iq(room, "set", "<query xmlns='%s'><item affiliation='member' jid='%s'/></query>"
                    % (NS_MUC_ADMIN, ALICE))
        assert (await bob.wait_for(P(name="iq", id=iq), since=mb)).type == "result"
        await phone_away(w, env, room, "phone-1")
        m = service.mark()
        say(bob, room, "plain while public")
        say(bob, room, "alice: while public")
        await service.wait_push("phone-1", "alice: while public", since=m)
        mb = bob.mark()
        iq = bob.iq(room, "set", "<query xmlns='http://jabber.org/protocol/muc#owner'>%s</query>"
                    % config_form({"muc#roomconfig_membersonly": True}))
        assert (await bob.wait_for(P(name="iq", id=iq), since=mb)).type == "result"
        await bob.wait_for(P(name="message", codes={104}), since=mb, what="the room's 104")
        say(bob, room, "plain while private")
        await service.wait_push("phone-1", "plain while private", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == \
            ["alice: while public", "plain while private"], service.transcript(m)
    run(env, scenario)


def test_history_of_a_join_is_not_pushed(prosody_factory):
    """XEP-0045 7.2.15: the history a room sends the account when it joins
    (by its bookmark, no device joined) is not news (XEP-0203 delay from the
    room): only what is said afterwards is pushed, in a private room that
    pushes every message."""
    env = push_env(prosody_factory)

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-history", private=True)
        say(bob, room, "old one")
        say(bob, room, "old two")
        p = await w.connect("alice", "phone")
        await enable_push(p, "phone-1")
        await gone(env, p)
        l = await w.connect("alice", "laptop")
        m, mb = service.mark(), bob.mark()
        await publish_bookmark(l, room, None)
        await bob.wait_for(P(name="presence", frm=room + "/alice"), since=mb, what="alice in")
        say(bob, room, "new")
        await service.wait_push("phone-1", "new", since=m)
        assert bodies(service.pushes("phone-1", since=m)) == ["new"], service.transcript(m)
    run(env, scenario)


def test_operators_see_pushes_sent_and_held_back(prosody_factory):
    """README, Push: OpenMetrics counts pushes{outcome="sent"} and
    {outcome="held"} (held back by the room's setting), and the debug log
    names each decision with the room and the reason."""
    http_port = free_port()
    env = push_env(prosody_factory, debug=True, global_options=openmetrics_options(http_port))

    async def scenario(w):
        service, bob, room = await push_room(w, env, "push-metrics")
        await phone_away(w, env, room, "phone-1")
        m = service.mark()
        say(bob, room, "plain")
        say(bob, room, "alice: counted")
        await service.wait_push("phone-1", "alice: counted", since=m)
        got = await fetch_metrics(http_port)
        assert got.get("pushes_total", outcome="sent") == 1, got.minimix_lines()
        assert got.get("pushes_total", outcome="held") == 1, got.minimix_lines()
        log = env.read_log()
        assert re.search(r"No push for alice@localhost in %s to push\.localhost<phone-1: "
                         r"on-mention, not mentioned; on-mention \(public room\)"
                         % re.escape(room), log), env.tail(40)
        assert re.search(r"Pushed alice@localhost in %s to push\.localhost<phone-1: "
                         r"1 message\(s\), mention \(nick\); on-mention \(public room\)"
                         % re.escape(room), log), env.tail(40)
    run(env, scenario)


# ---- what the room offers: asked once per join -------------------------------------

def test_a_room_is_asked_its_disco_info_once_per_join_for_push_and_mam(prosody_factory):
    """The room's disco#info (XEP-0045 6.4) is asked once when the account
    joins, as the account, and serves the push's privacy (XEP-0492 3) as
    well as the MAM answers: a mention in a public room on a hand-driven
    service is pushed without a second query."""
    from .test_hostile import HostileService, EVIL, EVIL_SECRET
    host = {"push_notification_with_body": True, "push_notification_with_sender": True,
            "minimix_push_window": 0}
    env = prosody_factory(extra_modules=["cloud_notify"], host_options=host,
                          external_components={PUSH: PUSH_SECRET, EVIL: EVIL_SECRET})
    room = "asked@" + EVIL
    ns_disco = "http://jabber.org/protocol/disco#info"

    async def scenario(w):
        service = await PushService(env).connect()
        svc = HostileService(env)
        w.clients.append(svc)
        await svc.connect()
        answered = set()

        def answer_discos(s):
            # every disco#info query answered as it comes: a public room
            if s.name == "iq" and s.type == "get" and s.id not in answered \
                    and s.xml.find("{%s}query" % ns_disco) is not None:
                answered.add(s.id)
                svc.send("<iq type='result' from=%s to=%s id=%s><query xmlns='%s'>"
                         "<identity category='conference' type='text'/>"
                         "<feature var='http://jabber.org/protocol/muc'/>"
                         "<feature var='muc_open'/></query></iq>"
                         % (quoteattr(room), quoteattr(s.frm), quoteattr(s.id), ns_disco))
            return False

        async def keep_answering():
            try:
                await svc.wait_for(answer_discos, timeout=120)
            except AssertionError:
                pass
        answering = asyncio.ensure_future(keep_answering())
        try:
            ms0 = svc.mark()
            p = await w.connect("alice", "phone")
            await enable_push(p, "phone-1")
            mp = p.mark()
            p.join(room, "alice")
            join = await svc.wait_for(P(name="presence", frm=ALICE, to=room + "/alice"),
                                      since=ms0, what="the join")
            svc.send("<presence from='%s/alice' to='%s' id=%s><x xmlns='%s'>"
                     "<item affiliation='none' role='participant'/><status code='110'/></x>"
                     "</presence>" % (room, ALICE, quoteattr(join.id or ""),
                                      "http://jabber.org/protocol/muc#user"))
            svc.send("<message from='%s' to='%s' type='groupchat'><subject>Asked</subject>"
                     "</message>" % (room, ALICE))
            await p.wait_for(P(name="message", frm=room, subject="Asked"), since=mp)
            await gone(env, p)
            m = service.mark()
            svc.send("<message from='%s/bob' to='%s' type='groupchat' id='m1'>"
                     "<body>alice: look</body></message>" % (room, ALICE))
            await service.wait_push("phone-1", "alice: look", since=m)
            discos = svc.matching(P(name="iq", type="get", to=room,
                                    fn=lambda s: s.xml.find("{%s}query" % ns_disco) is not None),
                                  since=ms0)
            assert [d.frm for d in discos] == [ALICE], svc.transcript(ms0)
        finally:
            answering.cancel()
    run(env, scenario)
