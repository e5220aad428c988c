"""A minimal asyncio XMPP client for the server benchmark.

Far lighter than slixmpp, so that a few thousand sessions fit on one event
loop beside the server being measured: plain TCP, SASL PLAIN, resource
binding, hand-written stanzas.  Until `count(marker)` is called, received
top-level elements are parsed (expat, through ElementTree's pull parser) and
kept for `wait_for`; after it, nothing is parsed any more and the client only
counts occurrences of a byte marker (message bodies carry it), which costs
next to nothing however many messages arrive.

    c = Session("127.0.0.1", port, "localhost", "u1", "pw", "phone")
    await c.connect()
    await c.join("room@conference.localhost", "u1")
    c.count(b"BMK-")          # from now on: c.counted
"""

import asyncio
import base64
import itertools
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

NS_CLIENT = "jabber:client"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"

_ids = itertools.count(1)


def new_id(prefix="b"):
    return "%s%d" % (prefix, next(_ids))


class XMPPError(RuntimeError):
    pass


def _local(tag):
    return tag.rsplit("}", 1)[-1]


def _ns(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else None


def codes(el):
    """The muc#user status codes of a presence element, as ints."""
    x = el.find("{%s}x" % NS_MUC_USER)
    if x is None:
        return set()
    return {int(s.get("code")) for s in x.findall("{%s}status" % NS_MUC_USER)
            if (s.get("code") or "").isdigit()}


class Session:
    def __init__(self, host, port, domain, user, password, resource):
        self.address = (host, port)
        self.domain = domain
        self.user = user
        self.password = password
        self.resource = resource
        self.jid = "%s@%s/%s" % (user, domain, resource)
        self.bare = "%s@%s" % (user, domain)
        self.inbox = []          # parsed top-level elements, in order
        self.counted = 0         # marker occurrences since count()
        self._marker = None
        self._tail = b""
        self._changed = asyncio.Event()
        self._parser = None
        self._root = None
        self._depth = 0
        self._reader = self._writer = self._task = None
        self.closed = False

    # ---- transport ---------------------------------------------------------

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self._writer.write(data)

    def _new_parser(self):
        self._parser = ET.XMLPullParser(events=("start", "end"))
        self._root = None
        self._depth = 0

    async def _read_loop(self):
        try:
            while True:
                data = await self._reader.read(262144)
                if not data:
                    break
                if self._marker is not None:
                    buf = self._tail + data
                    self.counted += buf.count(self._marker)
                    # keep what could be the start of a split marker
                    self._tail = buf[-(len(self._marker) - 1):] if len(self._marker) > 1 else b""
                else:
                    self._parser.feed(data)
                    for ev, el in self._parser.read_events():
                        if ev == "start":
                            if self._depth == 0:
                                self._root = el
                            self._depth += 1
                        else:
                            self._depth -= 1
                            if self._depth == 1:
                                self.inbox.append(el)
                                self._root.clear()  # the stream keeps nothing
                self._changed.set()
        except (ConnectionError, ET.ParseError):
            pass
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(self, pred, since=0, timeout=30.0, what="stanza"):
        """The first element from inbox[since:] for which pred holds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = since
        while True:
            while i < len(self.inbox):
                el = self.inbox[i]
                i += 1
                if pred(el):
                    return el
            if self.closed:
                raise XMPPError("%s: stream closed waiting for %s" % (self.jid, what))
            left = deadline - loop.time()
            if left <= 0:
                raise XMPPError("%s: timed out waiting for %s" % (self.jid, what))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def mark(self):
        return len(self.inbox)

    # ---- session -------------------------------------------------------------

    def _header(self):
        return ("<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
                "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                % self.domain)

    async def connect(self, timeout=30.0):
        self._reader, self._writer = await asyncio.open_connection(*self.address)
        self._new_parser()
        self._task = asyncio.ensure_future(self._read_loop())
        self.send(self._header())
        await self.wait_for(lambda e: _local(e.tag) == "features", timeout=timeout,
                            what="stream features")
        token = base64.b64encode(("\0%s\0%s" % (self.user, self.password)).encode()).decode()
        m = self.mark()
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>%s</auth>"
                  % token)
        el = await self.wait_for(lambda e: _local(e.tag) in ("success", "failure"), since=m,
                                 timeout=timeout, what="SASL")
        if _local(el.tag) != "success":
            raise XMPPError("%s: authentication failed" % self.jid)
        # the server says nothing more until the stream restarts
        self.inbox = []
        self._new_parser()
        self.send(self._header())
        await self.wait_for(lambda e: _local(e.tag) == "features", timeout=timeout,
                            what="stream features after SASL")
        bid = new_id("bind")
        m = self.mark()
        self.send("<iq type='set' id='%s'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                  "<resource>%s</resource></bind></iq>" % (bid, self.resource))
        el = await self.wait_for(lambda e: _local(e.tag) == "iq" and e.get("id") == bid,
                                 since=m, timeout=timeout, what="bind")
        if el.get("type") != "result":
            raise XMPPError("%s: bind failed" % self.jid)
        self.send("<presence/>")
        return self

    async def join(self, room, nick, timeout=30.0, maxstanzas=0):
        """Join room/nick with <history maxstanzas/> (none by default);
        returns when the join sequence has ended (the subject message,
        which Prosody always sends)."""
        m = self.mark()
        jid = "%s/%s" % (room, nick)
        self.send("<presence to=%s id='%s'><x xmlns='%s'><history maxstanzas='%d'/></x>"
                  "</presence>" % (quoteattr(jid), new_id("join"), NS_MUC, maxstanzas))

        def end(e):
            if e.get("from", "").split("/", 1)[0] != room:
                return False
            name = _local(e.tag)
            if name == "presence" and e.get("type") == "error":
                raise XMPPError("%s: join of %s failed: %s"
                                % (self.jid, jid, ET.tostring(e, encoding="unicode")))
            return name == "message" and e.find("{%s}subject" % NS_CLIENT) is not None

        await self.wait_for(end, since=m, timeout=timeout, what="join of %s" % jid)

    async def leave(self, room, nick, timeout=30.0):
        """Leave; returns on the unavailable self-presence."""
        m = self.mark()
        self.send("<presence type='unavailable' to=%s id='%s'/>"
                  % (quoteattr("%s/%s" % (room, nick)), new_id("leave")))
        await self.wait_for(
            lambda e: (_local(e.tag) == "presence" and e.get("type") == "unavailable"
                       and e.get("from", "").split("/", 1)[0] == room and 110 in codes(e)),
            since=m, timeout=timeout, what="leave of %s" % room)

    async def probe(self, timeout=60.0):
        """Lua heap of the server after a full collection (mod_bench_probe)."""
        pid = new_id("probe")
        m = self.mark()
        self.send("<iq type='get' id='%s' to='%s'><probe xmlns='urn:minimix:bench'/></iq>"
                  % (pid, self.domain))
        el = await self.wait_for(lambda e: _local(e.tag) == "iq" and e.get("id") == pid,
                                 since=m, timeout=timeout, what="probe")
        p = el.find("{urn:minimix:bench}probe")
        if p is None:
            raise XMPPError("probe failed: %s" % ET.tostring(el, encoding="unicode"))
        return int(p.get("lua"))

    async def iq(self, payload, to=None, timeout=60.0):
        """Send an IQ get with payload (XML) to the host; returns the answer."""
        qid = new_id("iq")
        m = self.mark()
        self.send("<iq type='get' id='%s' to='%s'>%s</iq>" % (qid, to or self.domain, payload))
        return await self.wait_for(lambda e: _local(e.tag) == "iq" and e.get("id") == qid,
                                   since=m, timeout=timeout, what="iq answer")

    def groupchat(self, room, body, id=None):
        self.send("<message type='groupchat' to=%s id='%s'><body>%s</body></message>"
                  % (quoteattr(room), id or new_id("m"), body))

    def count(self, marker):
        """Stop parsing; count occurrences of marker (bytes) from now on."""
        self._tail = b""
        self.counted = 0
        self._marker = marker

    async def close(self):
        if self._writer is None:
            return
        try:
            self._writer.write(b"</stream:stream>")
            self._writer.close()
        except Exception:
            pass
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._writer = None
