"""Two Prosody 0.12 instances federated over s2s on loopback, for the
end-to-end federation tests.

    fed = Federation()          # a temp dir, a hosts file, two configs
    fed.start()                 # both servers; c2s on free ports of 127.0.0.1
    ...                         # clients: fed.account (a.test), fed.room (b.test)
    fed.room.restart()          # same data dir, same addresses
    fed.cleanup()

The account's server serves a.test on 127.A.B.2 and loads mod_minimix
there; the room's server serves b.test (observers bob and carol) with the
MUC component conference.b.test on 127.A.B.3 and never loads the module
(A.B is the test process's own, see _loopback_block(), so that tests run
side by side never share an address).  Each listens for s2s on port 5269
of its own address; dialback (loaded
globally, so the MUC component has it too), no TLS
(s2s_require_encryption = false, s2s_secure_auth = false).  Outgoing s2s
connections leave from 127.0.0.1.

Name resolution never touches the system: Prosody's resolver (net.unbound,
used when lua-unbound is installed) reads

    unbound = { hoststxt = "<hosts file>"; resolvconf = "<resolv.conf>" }

from the config.  The hosts file maps the test domains to their addresses;
the resolv.conf names 127.0.0.1 as the only name server, where nothing
answers, so SRV look-ups fail at once and Prosody falls back to the A
record and port 5269.  c.test maps to 127.A.B.4, where nothing listens: a
domain whose server is unreachable.

Both servers build on ProsodyEnv (prosody_env.py) unchanged: a ServerEnv is
a ProsodyEnv whose domains, s2s listener and resolver are set for
federation.  ProsodyEnv still writes a second VirtualHost ("plain." + the
domain) and a MUC component on each server; on the account's server they
are unused.

Test-only plugins (test/e2e/plugins) loaded here:
  mod_e2e_spy       on conference.b.test: logs errors that reach a room
  mod_e2e_s2s_spy   on a.test and conference.b.test: logs every stanza
                    that arrives over s2s (ServerEnv.crossed())
  mod_e2e_s2s_link  on a.test and b.test: an IQ from a local session takes
                    that server's s2s link down (sessions closed, port 5269
                    closed) and up (FedWorld.link)
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET

from .clients import Client, P, Stanza, NS_CLIENT
from .prosody_env import ProsodyEnv, ProsodyError, CHECKOUT
from .world import World, run

ACCOUNT_DOMAIN = "a.test"
ROOM_DOMAIN = "b.test"
MUC_DOMAIN = "conference.b.test"
UNREACHABLE_DOMAIN = "c.test"
S2S_PORT = 5269


def _loopback_block(pid=None):
    """Three loopback addresses of this test process's own: 127.A.B.2 (the
    account's server), .3 (the room's) and .4 (unreachable).  s2s needs
    port 5269 on a fixed address per domain, so tests that run side by
    side (pytest-xdist workers, the Prosody 0.12 and 13 suites of one
    `make check`, another checkout's run) must not share addresses: A.B
    comes from the process id, which no two live processes share.  A is
    128..254, away from 127.0.0.1 where every c2s listener is."""
    pid = os.getpid() if pid is None else pid
    n = pid % (127 * 256)
    return "127.%d.%d." % (128 + n // 256, n % 256)


_BLOCK = _loopback_block()
ACCOUNT_ADDRESS = _BLOCK + "2"
ROOM_ADDRESS = _BLOCK + "3"
UNREACHABLE_ADDRESS = _BLOCK + "4"

S2S_SPY_MARK = "E2E-S2S "
NS_E2E_LINK = "urn:minimix:e2e:s2s-link"

# Accounts: user -> password, each on both servers.  alice is the account
# under test (a.test); bob and carol observe from b.test, the room's own
# server, so that what they see is exactly what the room sends; ctl (on
# a.test) switches the s2s link (mod_e2e_s2s_link).
FED_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "ctl": "ctl-pw"}
FED_HOST = {"alice": ACCOUNT_DOMAIN, "ctl": ACCOUNT_DOMAIN,
            "bob": ROOM_DOMAIN, "carol": ROOM_DOMAIN}


class ServerEnv(ProsodyEnv):
    """A ProsodyEnv serving `domain` (and `muc_domain`) with s2s on
    address:5269 and the test resolver.

    name        "account" or "room" (for messages)
    address     the loopback address of its s2s listener
    hosts_file, resolv_file: the resolver's files (see the module doc)
    s2s_spy     load mod_e2e_s2s_spy on the VirtualHost and the MUC
    link_control  load mod_e2e_s2s_link on the VirtualHost (FedWorld.link)
    Other keywords go to ProsodyEnv.
    """

    def __init__(self, name, domain, muc_domain, address, hosts_file, resolv_file,
                 workdir, s2s_spy=True, link_control=False, global_options=None,
                 extra_modules=(), muc_options=None, **kw):
        self.name = name
        self.address = address
        g = {
            "s2s_ports": [S2S_PORT],
            "s2s_interfaces": [address],
            "unbound": {"hoststxt": hosts_file, "resolvconf": resolv_file},
            # Global modules are added to every host's own list, and
            # dialback is one a component inherits: b.test and
            # conference.b.test authenticate streams with it (no TLS).
            "modules_enabled": ["dialback"] + (["admin_shell"] if kw.get("admin_shell") else []),
            # an s2s stream not established by then fails (and bounces)
            "s2s_timeout": 10,
        }
        g.update(global_options or {})
        modules = list(extra_modules)
        if s2s_spy:
            modules.append("e2e_s2s_spy")
        if link_control:
            modules.append("e2e_s2s_link")
        muc = {"modules_enabled": ["e2e_spy"] + (["e2e_s2s_spy"] if s2s_spy else [])}
        muc.update(muc_options or {})
        super().__init__(workdir=workdir, global_options=g, extra_modules=modules,
                         muc_options=muc, spy=True, **kw)
        self.domain = domain
        self.plain_domain = "plain." + domain
        self.muc_domain = muc_domain
        self.write_config()

    def start(self, timeout=None):
        _wait_port_free(self.address, S2S_PORT, timeout or 15)
        super().start(timeout)
        # The s2s listener is bound before the main loop answers c2s.
        if not _listening(self.address, S2S_PORT):
            self.stop()
            raise ProsodyError("the %s server does not listen on %s:%d\n%s"
                               % (self.name, self.address, S2S_PORT, self.tail()))
        return self

    def kill(self):
        """SIGKILL: a crash, nothing saved, no stream closed."""
        if self.proc is None:
            return None
        self.proc.kill()
        rc = self.proc.wait(10)
        self.proc = None
        if self._stdout:
            self._stdout.close()
            self._stdout = None
        return rc

    def s2s_received(self, since=0):
        """Stanzas that arrived over s2s, in order, as (host, element): host
        is where they were handled (a.test, conference.b.test), element an
        ElementTree element in jabber:client terms (see crossed()).  Error
        replies Prosody makes up itself for a failed s2s connection are not
        there (they never crossed a link).  since: a log_mark()."""
        out = []
        for line in self.read_log_from(since).splitlines():
            i = line.find(S2S_SPY_MARK + "in ")
            if i < 0:
                continue
            host, _, xml = line[i + len(S2S_SPY_MARK + "in "):].partition(" ")
            try:
                el = ET.fromstring(xml)
            except ET.ParseError as e:
                raise AssertionError("unparsable stanza in the s2s spy log (%s): %s" % (e, xml))
            out.append((host, el))
        return out

    def crossed(self, since=0, **crit):
        """The stanzas that reached this server over s2s since a
        log_mark(), matching P-style criteria (name, type, frm, frm_bare,
        to, id, body, ...), as clients.Stanza objects."""
        pred = P(**crit)
        out = []
        for host, el in self.s2s_received(since):
            # the spy logs stanzas without their stream's default namespace
            _qualify(el)
            s = Stanza(el, len(out), host)
            if pred(s):
                out.append(s)
        return out

    def log_mark(self):
        """An offset in the log file; see s2s_received(since=)."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def read_log_from(self, offset):
        try:
            with open(self.log_path, errors="replace") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return ""

    def __repr__(self):
        return "<ServerEnv %s %s s2s=%s:%d c2s=%d>" % (self.name, self.domain, self.address,
                                                       S2S_PORT, self.port)


def _qualify(el, ns=NS_CLIENT):
    """Put unqualified elements (the stanza and its plain children such as
    <body/>) into jabber:client, as a client would see them."""
    if not el.tag.startswith("{"):
        el.tag = "{%s}%s" % (ns, el.tag)
        for child in el:
            _qualify(child, ns)


def check_resolver(lua="lua5.4"):
    """Prosody reads the `unbound` option only through net.unbound, which
    it uses when lua-unbound (module "lunbound") loads; without it the
    legacy resolver asks the system and the test domains do not resolve."""
    try:
        r = subprocess.run([lua, "-e", 'require "lunbound"'], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProsodyError("cannot check for lua-unbound: %s" % e)
    if r.returncode != 0:
        raise ProsodyError("lua-unbound is missing (Debian: lua-unbound, see tools/deps.sh); "
                           "federation tests resolve test domains through it:\n" + r.stderr)


def _listening(address, port):
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def _wait_port_free(address, port, timeout):
    """A server of an earlier test may still hold address:port for a moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
                return
            except OSError:
                pass
        time.sleep(0.1)
    raise ProsodyError("%s:%d stays in use" % (address, port))


class Federation:
    """The account's server (a.test, mod_minimix) and the room's server
    (b.test + conference.b.test), sharing one temp dir and one hosts file.

    The users of FED_USERS exist on both servers.

    minimix           load mod_minimix on a.test (False: plain MUC)
    plugin_paths      where the account's server finds mod_minimix
    account_options / room_options: extra ProsodyEnv keywords per server
      (host_options, muc_options, smacks_hibernation_time, ...)
    """

    def __init__(self, minimix=True, plugin_paths=None, account_options=None,
                 room_options=None, debug=None):
        self.dir = tempfile.mkdtemp(prefix="minimix-fed-")
        self.hosts_file = os.path.join(self.dir, "hosts")
        self.resolv_file = os.path.join(self.dir, "resolv.conf")
        with open(self.hosts_file, "w") as f:
            f.write("# test domains of test/e2e/federation_env.py\n")
            f.write("%s %s\n" % (ACCOUNT_ADDRESS, ACCOUNT_DOMAIN))
            f.write("%s %s %s\n" % (ROOM_ADDRESS, ROOM_DOMAIN, MUC_DOMAIN))
            f.write("%s %s\n" % (UNREACHABLE_ADDRESS, UNREACHABLE_DOMAIN))
        with open(self.resolv_file, "w") as f:
            # Nothing answers there: SRV look-ups fail fast, A comes from hosts.
            f.write("nameserver 127.0.0.1\n")
        common = dict(hosts_file=self.hosts_file, resolv_file=self.resolv_file, debug=debug)
        self.account = ServerEnv(
            "account", ACCOUNT_DOMAIN, "conference." + ACCOUNT_DOMAIN, ACCOUNT_ADDRESS,
            workdir=os.path.join(self.dir, "account"), minimix=minimix,
            plugin_paths=plugin_paths or [CHECKOUT], link_control=True,
            **common, **(account_options or {}))
        self.room = ServerEnv(
            "room", ROOM_DOMAIN, MUC_DOMAIN, ROOM_ADDRESS,
            workdir=os.path.join(self.dir, "room"), minimix=False,
            link_control=True, **common, **(room_options or {}))
        self.servers = (self.account, self.room)
        for server in self.servers:
            for user, password in FED_USERS.items():
                server.add_user(user, password, server.domain)

    def start(self):
        check_resolver()
        for s in self.servers:
            s.start()
        return self

    def stop(self):
        for s in self.servers:
            s.stop()

    def cleanup(self):
        for s in self.servers:
            s.stop()
        if os.environ.get("MINIMIX_E2E_KEEP", "") in ("", "0"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print("kept federation data in %s" % self.dir)

    def __repr__(self):
        return "<Federation %s %r %r>" % (self.dir, self.account, self.room)


class FedWorld(World):
    """World (world.py) for a Federation: clients on either server, rooms on
    conference.b.test, and the s2s link switch."""

    def __init__(self, fed):
        super().__init__(fed.account)
        self.fed = fed
        self._ctl = {}

    def room(self, name):
        return "%s@%s" % (name, MUC_DOMAIN)

    def host(self, user):
        return FED_HOST.get(user, ACCOUNT_DOMAIN)

    def server(self, host):
        for s in self.fed.servers:
            if s.domain == host:
                return s
        raise KeyError(host)

    async def connect(self, user, res, host=None, **kw):
        host = host or self.host(user)
        server = self.server(host)
        c = Client(self.jid(user, res, host), server.users[(user, host)], server.port,
                   name="%s@%s/%s" % (user, host.split(".")[0], res))
        self.clients.append(c)
        await c.connect(**kw)
        return c

    async def link(self, state, both=False):
        """Take the account server's s2s link 'down' or bring it 'up'
        (mod_e2e_s2s_link); returns once the server did it.  both=True does
        the same on the room's server afterwards: a cut that both ends have
        seen, so that neither writes a stanza on a stream the other closed
        (TCP would lose it without a word, as on a real network)."""
        servers = (ACCOUNT_DOMAIN, ROOM_DOMAIN) if both else (ACCOUNT_DOMAIN,)
        for domain in servers:
            ctl = self._ctl.get(domain)
            if ctl is None or not ctl.connected:
                ctl = self._ctl[domain] = await self.connect("ctl", "switch", host=domain,
                                                            presence=False)
            m = ctl.mark()
            iq_id = ctl.iq(domain, "set",
                           "<link xmlns='%s' state='%s'/>" % (NS_E2E_LINK, state))
            res = await ctl.wait_for(P(name="iq", id=iq_id), since=m,
                                     what="the s2s link of %s going %s" % (domain, state))
            if res.type != "result":
                raise AssertionError("the s2s link switch of %s failed: %s" % (domain, res))


def run_federation(fed, scenario, timeout=120.0):
    """Run `await scenario(world)` (a FedWorld) in a fresh event loop; on
    failure print every client's transcript."""
    run(fed, scenario, timeout, world=FedWorld)
