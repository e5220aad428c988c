"""Small asyncio XMPP clients for the end-to-end tests (slixmpp 1.8).

A Client is one session (full JID).  It records every top-level element
it receives, in order, as a Stanza, and sends hand-written XML so that
tests control ids and children exactly.  It never joins anything on its
own; after connecting it sends initial presence (mod_presence needs it
before it routes presence-dependent traffic to the session).

    alice_p = Client("alice@localhost/phone", "pw", env.port)
    await alice_p.connect()
    m = alice_p.mark()
    alice_p.join("room@conference.localhost", "alice", id="j1")
    self_pres = await alice_p.wait_for(P(name="presence", codes={110}), since=m)
    await alice_p.assert_nothing(P(frm_bare=room), since=m2)
    await alice_p.abort()             # TCP close, no </stream>, no unavailable

Waiting uses timeouts only to give up; no assertion depends on timing.
"""

import asyncio
import copy
import itertools
import logging
import types
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

import slixmpp
from slixmpp.xmlstream import tostring as slix_tostring

from .prosody_env import SLOWDOWN

NS_CLIENT = "jabber:client"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_DELAY = "urn:xmpp:delay"
NS_SID = "urn:xmpp:sid:0"
NS_SM = "urn:xmpp:sm:3"
NS_DATA = "jabber:x:data"
NS_PING = "urn:xmpp:ping"
NS_COMPONENT = "jabber:component:accept"

# give up waiting for something that should come (longer with Prosody
# under valgrind's memcheck: it answers many times slower, see prosody_env)
DEFAULT_TIMEOUT = 10.0 * SLOWDOWN
QUIET_WINDOW = 1.0       # how long to listen for something that must not come

log = logging.getLogger("e2e.clients")
_ids = itertools.count(1)


def new_id(prefix="e2e"):
    return "%s-%d" % (prefix, next(_ids))


def bare(jid):
    return (jid or "").split("/", 1)[0]


def resource(jid):
    parts = (jid or "").split("/", 1)
    return parts[1] if len(parts) == 2 else None


def _q(tag, ns):
    return "{%s}%s" % (ns, tag)


class Stanza:
    """A received top-level element, with accessors for what tests check."""

    def __init__(self, xml, index, session):
        self.xml = xml
        self.index = index          # position in the receiving client's log
        self.session = session      # full JID of the receiving client
        tag = xml.tag
        if tag.startswith("{"):
            self.ns, self.name = tag[1:].split("}", 1)
        else:
            self.ns, self.name = None, tag

    # -- attributes
    @property
    def type(self):
        return self.xml.get("type")

    @property
    def frm(self):
        return self.xml.get("from")

    @property
    def to(self):
        return self.xml.get("to")

    @property
    def id(self):
        return self.xml.get("id")

    @property
    def frm_bare(self):
        return bare(self.frm)

    @property
    def frm_resource(self):
        return resource(self.frm)

    # -- children
    def child(self, tag, ns=None):
        return self.xml.find(_q(tag, ns or self.ns or NS_CLIENT))

    @property
    def is_stanza(self):
        return self.ns == NS_CLIENT and self.name in ("message", "presence", "iq")

    @property
    def muc_user(self):
        return self.xml.find(_q("x", NS_MUC_USER))

    @property
    def codes(self):
        x = self.muc_user
        if x is None:
            return set()
        out = set()
        for s in x.findall(_q("status", NS_MUC_USER)):
            try:
                out.add(int(s.get("code")))
            except (TypeError, ValueError):
                pass
        return out

    @property
    def item(self):
        """Attributes of the muc#user <item/> (dict), or None."""
        x = self.muc_user
        if x is None:
            return None
        it = x.find(_q("item", NS_MUC_USER))
        return dict(it.attrib) if it is not None else None

    @property
    def body(self):
        b = self.child("body")
        return None if b is None else (b.text or "")

    @property
    def subject(self):
        """Text of <subject/> ('' when empty), None without one."""
        s = self.child("subject")
        return None if s is None else (s.text or "")

    @property
    def has_delay(self):
        return self.xml.find(_q("delay", NS_DELAY)) is not None

    @property
    def origin_id(self):
        o = self.xml.find(_q("origin-id", NS_SID))
        return None if o is None else o.get("id")

    @property
    def error(self):
        """(type, condition) of an <error/>, or None."""
        e = self.child("error")
        if e is None:
            return None
        cond = None
        for c in e:
            if c.tag.startswith("{%s}" % NS_STANZAS) and not c.tag.endswith("}text"):
                cond = c.tag.split("}", 1)[1]
        return (e.get("type"), cond)

    @property
    def is_self_presence(self):
        return self.name == "presence" and 110 in self.codes

    def __str__(self):
        try:
            return slix_tostring(self.xml, xmlns=NS_CLIENT)
        except Exception:  # pragma: no cover - diagnostics only
            return ET.tostring(self.xml, encoding="unicode")

    __repr__ = __str__


class P:
    """A stanza predicate from keyword criteria; all given must hold.

    name        'message', 'presence', 'iq' (or a nonza's local name)
    type        exact type; 'available' matches a presence without type
    frm, to     exact JIDs;  frm_bare: the bare part of 'from'
    id, body, subject, origin_id
    codes       set of muc#user status codes that must all be present
    not_codes   set of codes none of which may be present
    delay       True/False: has/has not <delay xmlns='urn:xmpp:delay'/>
    error       the defined condition of an error stanza
    ns          namespace of the top-level element (default jabber:client)
    fn          an extra callable(stanza) -> bool
    """

    _keys = {"name", "type", "frm", "frm_bare", "to", "id", "body", "subject",
             "origin_id", "codes", "not_codes", "delay", "error", "ns", "fn"}

    def __init__(self, **crit):
        unknown = set(crit) - self._keys
        if unknown:
            raise TypeError("unknown criteria %s" % sorted(unknown))
        crit.setdefault("ns", NS_CLIENT)
        self.crit = crit

    def __call__(self, s):
        c = self.crit
        if c["ns"] is not None and s.ns != c["ns"]:
            return False
        if "name" in c and s.name != c["name"]:
            return False
        if "type" in c:
            want = c["type"]
            if want == "available":
                if s.type is not None:
                    return False
            elif s.type != want:
                return False
        for attr in ("frm", "frm_bare", "to", "id", "body", "subject", "origin_id"):
            if attr in c and getattr(s, attr) != c[attr]:
                return False
        if "codes" in c and not set(c["codes"]) <= s.codes:
            return False
        if "not_codes" in c and set(c["not_codes"]) & s.codes:
            return False
        if "delay" in c and s.has_delay != bool(c["delay"]):
            return False
        if "error" in c:
            e = s.error
            if e is None or s.type != "error" or e[1] != c["error"]:
                return False
        if "fn" in c and not c["fn"](s):
            return False
        return True

    def __and__(self, other):
        return _Fn(lambda s: self(s) and other(s), "(%r & %r)" % (self, other))

    def __repr__(self):
        return "P(%s)" % ", ".join("%s=%r" % kv for kv in self.crit.items() if kv[0] != "ns"
                                   or kv[1] != NS_CLIENT)


class _Fn:
    def __init__(self, fn, desc):
        self.fn, self.desc = fn, desc

    def __call__(self, s):
        return self.fn(s)

    def __and__(self, other):
        return _Fn(lambda s: self(s) and other(s), "(%r & %r)" % (self, other))

    def __repr__(self):
        return self.desc


def from_room(room):
    """Any stanza from the room or one of its occupants."""
    return P(frm_bare=room)


def _attrs(**kw):
    return "".join(" %s=%s" % (k.rstrip("_").replace("__", "-"), quoteattr(str(v)))
                   for k, v in kw.items() if v is not None)


class Client:
    """One XMPP session for the tests."""

    def __init__(self, jid, password, port, host="127.0.0.1", name=None):
        self.jid = jid
        self.bare = bare(jid)
        self.resource = resource(jid)
        self.password = password
        self.address = (host, port)
        self.name = name or jid
        self.stanzas = []
        self.sent = []
        self.xmpp = None
        self._changed = None
        self.sm_enabled = False
        self._sm_wanted = False
        self._sm_h = None

    # ---- connection ------------------------------------------------------

    async def connect(self, timeout=DEFAULT_TIMEOUT, presence=True, sm=False,
                      sm_resume=True):
        """Connect, authenticate, bind; optionally enable XEP-0198 and send
        initial presence.  Returns self."""
        self._changed = asyncio.Event()
        x = slixmpp.ClientXMPP(self.jid, self.password)
        self.xmpp = x
        x.add_filter("in", self._record)
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def on_start(_):
            if not started.done():
                started.set_result(True)

        def on_fail(what):
            def cb(ev):
                if not started.done():
                    started.set_exception(ConnectionError("%s: %s %s" % (self.jid, what, ev)))
            return cb

        x.add_event_handler("session_start", on_start)
        x.add_event_handler("failed_auth", on_fail("authentication failed"))
        x.add_event_handler("disconnected", on_fail("disconnected"))
        x.connect(address=self.address, use_ssl=False, force_starttls=False,
                  disable_starttls=True)
        try:
            await asyncio.wait_for(started, timeout)
        except asyncio.TimeoutError:
            x.abort()
            raise ConnectionError("%s: no session within %ss" % (self.jid, timeout))
        if sm:
            await self.enable_sm(resume=sm_resume, timeout=timeout)
        if presence:
            self.send("<presence/>")
        return self

    async def enable_sm(self, resume=True, timeout=DEFAULT_TIMEOUT):
        """Enable XEP-0198 by hand: <enable/>, then answer every <r/>."""
        m = self.mark()
        self._sm_h = None   # counting starts after <enabled/> (see _record)
        self._sm_wanted = True
        self.send("<enable xmlns='%s'%s/>" % (NS_SM, " resume='true'" if resume else ""))
        got = await self.wait_for(
            lambda s: s.ns == NS_SM and s.name in ("enabled", "failed"),
            timeout=timeout, since=m, what="XEP-0198 <enabled/>")
        if got.name != "enabled":
            raise ConnectionError("%s: stream management refused: %s" % (self.jid, got))
        self.sm_enabled = True
        return got

    def _record(self, stanza):
        xml = stanza.xml
        s = Stanza(_copy(xml), len(self.stanzas), self.jid)
        self.stanzas.append(s)
        log.debug("%s RECV %s", self.name, s)
        if self._sm_wanted and self._sm_h is None and s.ns == NS_SM and s.name == "enabled":
            self._sm_h = 0
        elif self._sm_h is not None:
            if s.is_stanza:
                self._sm_h = (self._sm_h + 1) % (1 << 32)
            elif s.ns == NS_SM and s.name == "r" and self.connected:
                self.xmpp.send_raw("<a xmlns='%s' h='%d'/>" % (NS_SM, self._sm_h))
        ev, self._changed = self._changed, asyncio.Event()
        ev.set()
        return stanza

    @property
    def connected(self):
        return self.xmpp is not None and self.xmpp.transport is not None

    async def disconnect(self, timeout=5):
        """Clean close: </stream:stream>, wait for the server's close."""
        if not self.connected:
            return
        fut = self.xmpp.disconnected
        self.xmpp.disconnect(wait=timeout)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout + 1)
        except asyncio.TimeoutError:
            self.xmpp.abort()

    async def abort(self, timeout=5):
        """Vanish: close the TCP connection, no </stream>, no unavailable."""
        if not self.connected:
            return
        fut = self.xmpp.disconnected
        transport = self.xmpp.transport
        # Drop anything still queued so that nothing more is written.
        transport.abort()
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass

    # ---- sending ---------------------------------------------------------

    def send(self, xml):
        """Send raw XML (in the jabber:client default namespace)."""
        if not self.connected:
            raise ConnectionError("%s is not connected" % self.jid)
        self.sent.append(xml)
        log.debug("%s SEND %s", self.name, xml)
        self.xmpp.send_raw(xml)

    def join(self, room, nick, id=None, password=None, history=None, extra=""):
        """MUC join presence to room/nick with <x xmlns='...muc'/>.

        history: None (server default) or a dict of <history/> attributes,
        e.g. {"maxstanzas": 0}.  Returns the stanza id used.
        """
        id = id or new_id("join")
        inner = ""
        if history is not None:
            inner += "<history%s/>" % "".join(" %s=%s" % (k, quoteattr(str(v)))
                                              for k, v in history.items())
        if password is not None:
            inner += "<password>%s</password>" % escape(password)
        self.send("<presence%s><x xmlns='%s'>%s</x>%s</presence>"
                  % (_attrs(to="%s/%s" % (room, nick), id=id), NS_MUC, inner, extra))
        return id

    def leave(self, room, nick, id=None, status=None):
        id = id or new_id("leave")
        inner = "<status>%s</status>" % escape(status) if status else ""
        self.send("<presence%s>%s</presence>"
                  % (_attrs(to="%s/%s" % (room, nick), id=id, type="unavailable"), inner))
        return id

    def presence_update(self, room, nick, show=None, status=None, id=None):
        id = id or new_id("pres")
        inner = ""
        if show:
            inner += "<show>%s</show>" % escape(show)
        if status:
            inner += "<status>%s</status>" % escape(status)
        self.send("<presence%s>%s</presence>" % (_attrs(to="%s/%s" % (room, nick), id=id), inner))
        return id

    def groupchat(self, room, body, id=None, origin_id=None):
        """Groupchat message with an id and an XEP-0359 origin-id.
        Returns (id, origin_id)."""
        id = id or new_id("gc")
        origin_id = origin_id or new_id("origin")
        self.send("<message%s><body>%s</body><origin-id xmlns='%s' id=%s/></message>"
                  % (_attrs(to=room, type="groupchat", id=id), escape(body), NS_SID,
                     quoteattr(origin_id)))
        return id, origin_id

    def set_subject(self, room, subject, id=None):
        id = id or new_id("subject")
        self.send("<message%s><subject>%s</subject></message>"
                  % (_attrs(to=room, type="groupchat", id=id), escape(subject)))
        return id

    def message(self, to, body, type="chat", id=None):
        id = id or new_id("msg")
        self.send("<message%s><body>%s</body></message>"
                  % (_attrs(to=to, type=type, id=id), escape(body)))
        return id

    def iq(self, to, type, payload, id=None):
        id = id or new_id("iq")
        self.send("<iq%s>%s</iq>" % (_attrs(to=to, type=type, id=id), payload))
        return id

    def ping(self, to, id=None):
        return self.iq(to, "get", "<ping xmlns='%s'/>" % NS_PING, id=id)

    # ---- receiving -------------------------------------------------------

    def mark(self):
        """Position in the received log; pass as since= to look after it."""
        return len(self.stanzas)

    def matching(self, pred, since=0):
        return [s for s in self.stanzas[since:] if pred(s)]

    async def wait_for(self, pred, timeout=DEFAULT_TIMEOUT, since=0, what=None):
        """The first stanza at index >= since matching pred; waits up to
        timeout seconds for it to arrive."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = since
        while True:
            while i < len(self.stanzas):
                s = self.stanzas[i]
                i += 1
                if pred(s):
                    return s
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError("%s: timed out after %ss waiting for %s\n%s"
                                     % (self.name, timeout, what or pred,
                                        self.transcript(since)))
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def collect(self, until, timeout=DEFAULT_TIMEOUT, since=0, what=None):
        """All stanzas from index since up to and including the first one
        matching until (waits for it)."""
        last = await self.wait_for(until, timeout=timeout, since=since, what=what)
        return self.stanzas[since:last.index + 1]

    async def assert_nothing(self, pred, window=QUIET_WINDOW, since=0, what=None):
        """Listen for window seconds; fail if any stanza at index >= since
        matches pred (whenever it arrived)."""
        await asyncio.sleep(window)
        bad = self.matching(pred, since)
        if bad:
            raise AssertionError("%s: must not receive %s, got:\n%s"
                                 % (self.name, what or pred, "\n".join(map(str, bad))))

    def transcript(self, since=0, limit=80):
        lines = []
        items = self.stanzas[since:]
        if len(items) > limit:
            lines.append("  ... %d earlier" % (len(items) - limit))
            items = items[-limit:]
        for s in items:
            lines.append("  [%d] %s" % (s.index, s))
        return "%s received (from #%d):\n%s" % (self.name, since, "\n".join(lines) or "  (nothing)")

    def __repr__(self):
        return "<Client %s>" % self.jid


class Component(Client):
    """An XEP-0114 component that the test drives by hand, on the port of
    ProsodyEnv(external_components={domain: secret}): it records what it
    receives as jabber:client stanzas (so that P() matches), then hands
    each to handle(), which by default answers nothing (slixmpp would
    answer an unknown IQ by itself); a subclass answers there what its
    test needs."""

    def __init__(self, env, domain, secret):
        Client.__init__(self, domain, secret, env.component_port, name=domain)

    async def connect(self, timeout=10):
        self._changed = asyncio.Event()
        x = slixmpp.ComponentXMPP(self.jid, self.password, "127.0.0.1", self.address[1])
        self.xmpp = x
        x.add_filter("in", self._record_component)
        x.add_filter("in", self.handle)
        started = asyncio.get_running_loop().create_future()
        x.add_event_handler("session_start",
                            lambda _: started.done() or started.set_result(True))
        x.connect()
        await asyncio.wait_for(started, timeout)
        return self

    def _record_component(self, stanza):
        xml = copy.deepcopy(stanza.xml)
        for e in xml.iter():
            if isinstance(e.tag, str) and e.tag.startswith("{%s}" % NS_COMPONENT):
                e.tag = "{jabber:client}" + e.tag.split("}", 1)[1]
        self._record(types.SimpleNamespace(xml=xml))
        return stanza

    def handle(self, stanza):
        """Stanzas stop here; the stream's own elements (<handshake/>) go
        on to slixmpp."""
        if stanza.xml.tag.split("}")[-1] in ("message", "presence", "iq"):
            return None
        return stanza

    def __repr__(self):
        return "<Component %s>" % self.jid


def _copy(xml):
    """A deep copy: slixmpp handlers may modify the element later."""
    return copy.deepcopy(xml)


# ---- MUC helpers -----------------------------------------------------------

async def join_room(client, room, nick, id=None, password=None, history=None,
                    timeout=DEFAULT_TIMEOUT):
    """Join and wait for the end of the join sequence (the subject message,
    which Prosody always sends, empty when there is none).  Returns
    (id, stanzas from the room in order).  Fails on a presence error."""
    m = client.mark()
    id = client.join(room, nick, id=id, password=password, history=history)
    end = _Fn(lambda s: s.frm_bare == room and (
        (s.name == "message" and s.subject is not None and s.body is None)
        or (s.name == "presence" and s.type == "error")), "subject or presence error")
    got = await client.collect(end, timeout=timeout, since=m,
                               what="end of join to %s/%s" % (room, nick))
    if got[-1].name == "presence":
        raise AssertionError("%s: join to %s/%s failed: %s" % (client.name, room, nick, got[-1]))
    return id, [s for s in got if s.frm_bare == room]


async def join_seen(observer, room, nick, since=0, timeout=DEFAULT_TIMEOUT):
    """Wait until observer has the available presence of room/nick.  An
    occupant's copy of a join travels on its own stream, so it may arrive
    after the joiner's subject: wait for it before taking a mark that must
    not include it."""
    return await observer.wait_for(P(name="presence", frm=room + "/" + nick, type="available"),
                                   since=since, timeout=timeout,
                                   what="%s's join at %s" % (nick, observer.name))


def config_form(fields):
    """A submitted muc#roomconfig form."""
    out = ["<x xmlns='%s' type='submit'>" % NS_DATA,
           "<field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>"]
    for var, value in fields.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, bool):
            values = ["1" if value else "0"]
        out.append("<field var=%s>%s</field>" % (
            quoteattr(var), "".join("<value>%s</value>" % escape(str(v)) for v in values)))
    out.append("</x>")
    return "".join(out)


async def create_room(owner, room, nick, whois="anyone", password=None, subject=None,
                      config=None, timeout=DEFAULT_TIMEOUT):
    """owner creates room as nick and configures it with the owner form
    (XEP-0045 10.1.3): whois ('anyone' makes it non-anonymous), password,
    extra fields.  Submitting the form unlocks the room.  Sets the subject
    when given.  Returns the owner's join stanzas."""
    m = owner.mark()
    owner.join(room, nick)
    created = await owner.wait_for(P(name="presence", frm="%s/%s" % (room, nick), codes={110}),
                                   timeout=timeout, since=m, what="room creation")
    if 201 not in created.codes:
        raise AssertionError("%s already existed: %s" % (room, created))
    fields = {"muc#roomconfig_whois": whois}
    if password is not None:
        fields["muc#roomconfig_roomsecret"] = password
    fields.update(config or {})
    m2 = owner.mark()
    iq_id = owner.iq(room, "set", "<query xmlns='%s'>%s</query>" % (NS_MUC_OWNER, config_form(fields)))
    res = await owner.wait_for(P(name="iq", id=iq_id), timeout=timeout, since=m2,
                               what="owner form result")
    if res.type != "result":
        raise AssertionError("room configuration failed: %s" % res)
    if subject is not None:
        m3 = owner.mark()
        owner.set_subject(room, subject)
        await owner.wait_for(P(name="message", frm_bare=room, subject=subject), timeout=timeout,
                             since=m3, what="subject reflection")
    return owner.stanzas[m:]
