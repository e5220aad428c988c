"""A throw-away Prosody (0.12 or 13.0) instance for end-to-end tests.

    env = ProsodyEnv(minimix=True)       # or minimix=False: plain MUC
    env.add_user("alice", "secret")
    env.start()                          # waits until c2s accepts connections
    ...                                  # connect clients to ("127.0.0.1", env.port)
    env.restart()                        # same data dir, same ports
    env.stop()                           # SIGTERM, then SIGKILL after a timeout
    env.kill()                           # SIGKILL at once (a crash)
    env.cleanup()                        # stop and remove the temp dir

Prosody loads mod_minimix.lua from the checkout (plugin_paths), and the
checkout is put first on LUA_CPATH so that `require "minimix"` finds
./minimix.so when the shim loads the core that way.

Environment:
  MINIMIX_PROSODY=13      run Prosody 13.0, unpacked in <checkout>/.prosody13
                          by tools/prosody13.sh (default: 0.12, the system's
                          /usr/bin/prosody); PROSODY_VERSION says which runs
  MINIMIX_E2E_DEBUG=1     log at debug level (the log is in env.log_path)
  MINIMIX_E2E_KEEP=1      keep the temp dir after the test (path is printed)
  PROSODY=/path/prosody   the prosody executable (default: by MINIMIX_PROSODY)
  PROSODYCTL=/path/prosodyctl  for shell() (default: by MINIMIX_PROSODY)
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

CHECKOUT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# The Prosody under test: the system's 0.12, or 13.0 from tools/prosody13.sh.
PROSODY13_DIR = os.path.join(CHECKOUT, ".prosody13")
_VERSIONS = {
    "12": ("/usr/bin/prosody", "/usr/bin/prosodyctl"),
    "13": (os.path.join(PROSODY13_DIR, "bin", "prosody"),
           os.path.join(PROSODY13_DIR, "bin", "prosodyctl")),
}
_wanted = os.environ.get("MINIMIX_PROSODY", "") or "12"
_wanted = {"0.12": "12", "13.0": "13"}.get(_wanted, _wanted)
if _wanted not in _VERSIONS:
    raise RuntimeError("MINIMIX_PROSODY must be 12 or 13, not %r"
                       % os.environ.get("MINIMIX_PROSODY"))
PROSODY = os.environ.get("PROSODY") or _VERSIONS[_wanted][0]
PROSODYCTL = os.environ.get("PROSODYCTL") or _VERSIONS[_wanted][1]
if _wanted == "13" and not os.path.exists(PROSODY):
    raise RuntimeError("MINIMIX_PROSODY=13: %s is missing; run 'sh tools/prosody13.sh'"
                       % PROSODY)


def _source_dir():
    """The CFG_SOURCEDIR of PROSODY (where its util/ and core/ are), or None."""
    try:
        with open(PROSODY, errors="replace") as f:
            m = re.search(r"^CFG_SOURCEDIR\s*=\s*'([^']*)'", f.read(4096), re.M)
    except OSError:
        return None
    return m.group(1) if m else None


# Under valgrind's memcheck (MINIMIX_E2E_VALGRIND) Prosody runs many times
# slower, the more so beside other suites (make check runs them side by
# side): the time the harness gives it to start and to stop, which is only
# ever an upper bound to give up at, grows with it.
VALGRIND = os.environ.get("MINIMIX_E2E_VALGRIND", "") not in ("", "0")
SLOWDOWN = 8 if VALGRIND else 1
START_TIMEOUT = 15 * SLOWDOWN
STOP_TIMEOUT = 10 * SLOWDOWN


# Prosody's own Lua libraries (util.datamanager, ...) for the version under test.
PROSODY_SOURCE_DIR = _source_dir()


def _major():
    """12 or 13: the version of PROSODY, read from the prosody.version of its
    CFG_SOURCEDIR (0.12.x counts as 12); MINIMIX_PROSODY when unreadable."""
    try:
        with open(os.path.join(PROSODY_SOURCE_DIR, "prosody.version")) as f:
            first = f.read().strip().split(".")[0]
    except (OSError, TypeError):
        return int(_wanted)
    return 12 if first == "0" else int(first) if first.isdigit() else int(_wanted)


# 12 (0.12) or 13: what tests of version-dependent behaviour ask.
PROSODY_VERSION = _major()
# Demo/test accounts: user -> password.  Each exists on both VirtualHosts:
# "localhost" (mod_minimix) and "plain.localhost" (never mod_minimix).
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}

# Storage setups (ProsodyEnv(storage=...)).
STORAGES = ("internal", "sqlite", "postgres")
DOMAIN = "localhost"
MUC_DOMAIN = "conference.localhost"
# A second VirtualHost that never loads mod_minimix: observers there see
# exactly what the rooms send, not what the module makes of it.
PLAIN_DOMAIN = "plain.localhost"

# Modules loaded on the VirtualHost.  mod_presence, mod_message, mod_iq,
# mod_c2s, mod_s2s and mod_offline are auto-loaded by Prosody 0.12
# (core/modulemanager.lua, autoload_modules), so they are not listed.
HOST_MODULES = ["roster", "saslauth", "disco", "carbons", "smacks", "ping"]

# Test-only plugins (mod_e2e_spy).
TEST_PLUGINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")
SPY_MARK = "E2E-SPY "


def free_port(host="127.0.0.1"):
    """A TCP port on host that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def lua_string(value):
    """A Lua string literal for value."""
    out = ['"']
    for ch in str(value):
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ord(ch) < 32:
            out.append("\\%03d" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def lua_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "{ " + ", ".join(lua_value(v) for v in value) + " }"
    if isinstance(value, dict):
        return "{ " + "; ".join("[%s] = %s" % (lua_string(k), lua_value(v))
                                for k, v in value.items()) + " }"
    return lua_string(value)


def _encode_node(s):
    """util.datamanager's encode(): every byte but ASCII [A-Za-z0-9] as %xx."""
    return "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "%%%02x" % b
                   for b in s.encode("utf-8"))


class ProsodyError(RuntimeError):
    pass


class ProsodyEnv:
    """One Prosody process with its own config, data dir, log and ports.

    minimix      load mod_minimix on VirtualHost "localhost" (False: plain
                 MUC).  VirtualHost "plain.localhost" never loads it.
    port         c2s port (default: a free one)
    s2s          also listen for s2s on a free port (env.s2s_port)
    component_port  open a component port (env.component_port)
    workdir      directory for config/data/log (default: a new temp dir);
                 an existing directory is reused (its data is kept)
    host_options / global_options / muc_options: extra settings, dicts
                 of option name -> Python value (converted to Lua)
    smacks_hibernation_time, muc_history_length: common knobs
    spy          load test/e2e/plugins/mod_e2e_spy.lua on the MUC component:
                 it logs every error stanza that reaches a room (see
                 spy_errors()); off by default (benchmarks)
    debug        log at debug level (default: env MINIMIX_E2E_DEBUG)
    plugin_paths where Prosody looks for mod_minimix.lua (default: the
                 checkout)
    storage      "internal" (default: every store in the data dir, as
                 before), "sqlite" or "postgres": mod_storage_sql for every
                 store but the accounts (which add_user() writes as files),
                 through lua-dbi; sql: the connection settings (the sql
                 option; "sqlite" defaults to prosody.sqlite in the data dir,
                 "postgres" needs driver/database/host/port/username/password)
    admin_shell  load mod_admin_shell with its socket in the data dir, for
                 shell() (prosodyctl shell)
    muc_module   the component module of conference.localhost (default
                 "muc"); None: an external component that never connects,
                 so that the rooms are unreachable (Prosody answers
                 remote-server-timeout); can be changed before a restart
    installer_plugin_path  Prosody's installer_plugin_path (a LuaRocks tree
                 the module was installed into); with it, plugin_paths=[]
                 means no plugin path at all (not the checkout), and the
                 checkout is not put on LUA_CPATH
    checkout_cpath  put the checkout first on LUA_CPATH (default: True
                 unless installer_plugin_path is given)
    external_components  {domain: secret}: XEP-0114 components the tests
                 connect themselves (e.g. a hostile room service); implies
                 component_port
    """

    def __init__(self, minimix=True, port=None, s2s=False, component_port=False,
                 workdir=None, host_options=None, global_options=None,
                 muc_options=None, smacks_hibernation_time=None,
                 muc_history_length=20, extra_modules=(), debug=None,
                 plugin_paths=None, spy=False, console_log=False,
                 storage="internal", sql=None, admin_shell=False,
                 installer_plugin_path=None, checkout_cpath=None, muc_module="muc",
                 external_components=None):
        self.minimix = minimix
        self.external_components = dict(external_components or {})
        component_port = component_port or bool(self.external_components)
        self.port = port or free_port()
        self.s2s_port = free_port() if s2s else None
        self.component_port = free_port() if component_port else None
        self._own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="minimix-e2e-")
        os.makedirs(self.dir, exist_ok=True)
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        # An empty certificate dir: no TLS, and no error about a missing dir.
        self.certs_dir = os.path.join(self.dir, "certs")
        os.makedirs(self.certs_dir, exist_ok=True)
        self.config_path = os.path.join(self.dir, "prosody.cfg.lua")
        self.log_path = os.path.join(self.dir, "prosody.log")
        self.stdout_path = os.path.join(self.dir, "prosody.stdout")
        self.pidfile = os.path.join(self.dir, "prosody.pid")
        self.host_options = dict(host_options or {})
        self.global_options = dict(global_options or {})
        self.muc_options = dict(muc_options or {})
        self.smacks_hibernation_time = smacks_hibernation_time
        self.muc_history_length = muc_history_length
        self.extra_modules = list(extra_modules)
        self.plugin_paths = list(plugin_paths or [CHECKOUT])
        self.installer_plugin_path = installer_plugin_path
        if installer_plugin_path is not None and plugin_paths is not None and not plugin_paths:
            self.plugin_paths = []
        if checkout_cpath is None:
            checkout_cpath = installer_plugin_path is None
        self.checkout_cpath = checkout_cpath
        self.spy = spy
        self.console_log = console_log
        if storage not in STORAGES:
            raise ValueError("storage must be one of %s, not %r" % (STORAGES, storage))
        if storage == "postgres" and not sql:
            raise ValueError("storage='postgres' needs sql= connection settings")
        self.storage = storage
        self.sql = dict(sql or {})
        self.admin_shell = admin_shell
        self.muc_module = muc_module
        if debug is None:
            debug = os.environ.get("MINIMIX_E2E_DEBUG", "") not in ("", "0")
        self.debug = debug
        self.proc = None
        # how the server ended when nobody meant it to: a crash fails the test
        self.crashes = []
        self.stalled = []
        self._stdout = None
        self.users = {}
        self.domain = DOMAIN
        self.plain_domain = PLAIN_DOMAIN
        self.muc_domain = MUC_DOMAIN
        self.write_config()

    # ---- configuration ---------------------------------------------------

    def config_text(self):
        level = "debug" if self.debug else "info"
        modules = list(HOST_MODULES) + self.extra_modules
        if self.minimix:
            modules.append("minimix")
        g = {
            "run_as_root": True,
            "daemonize": False,
            "pidfile": self.pidfile,
            "data_path": self.data_dir,
            "plugin_paths": self.plugin_paths + ([TEST_PLUGINS] if self.spy else []),
            "interfaces": ["127.0.0.1"],
            "c2s_ports": [self.port],
            "c2s_interfaces": ["127.0.0.1"],
            "s2s_ports": [self.s2s_port] if self.s2s_port else [],
            "s2s_interfaces": ["127.0.0.1"],
            "component_ports": [self.component_port] if self.component_port else [],
            "component_interfaces": ["127.0.0.1"],
            "http_ports": [],
            "https_ports": [],
            "c2s_require_encryption": False,
            "s2s_require_encryption": False,
            "s2s_secure_auth": False,
            "allow_unencrypted_plain_auth": True,
            "authentication": "internal_plain",
            "storage": "internal",
            "certificates": self.certs_dir,
        }
        if self.storage != "internal":
            # mod_storage_sql for everything but the accounts, which
            # add_user() writes in internal_plain's file format.
            g["storage"] = {"accounts": "internal"}
            g["default_storage"] = "sql"
            g["sql"] = self.sql_settings()
        if self.admin_shell:
            g["modules_enabled"] = ["admin_shell"]
            g["admin_socket"] = self.admin_socket
        if self.smacks_hibernation_time is not None:
            g["smacks_hibernation_time"] = self.smacks_hibernation_time
        if self.installer_plugin_path is not None:
            g["installer_plugin_path"] = self.installer_plugin_path
        g.update(self.global_options)
        lines = ["-- generated by test/e2e/prosody_env.py", ""]
        for k, v in g.items():
            lines.append("%s = %s" % (k, lua_value(v)))
        sinks = ["{ levels = { min = %s }, to = \"file\", filename = %s }"
                 % (lua_string(level), lua_string(self.log_path))]
        if self.console_log:
            sinks.append("{ levels = { min = %s }, to = \"console\" }" % lua_string(level))
        lines.append("log = { %s }" % ", ".join(sinks))
        lines.append("")
        lines.append("VirtualHost %s" % lua_string(self.domain))
        lines.append("\tmodules_enabled = %s" % lua_value(modules))
        for k, v in self.host_options.items():
            lines.append("\t%s = %s" % (k, lua_value(v)))
        lines.append("")
        lines.append("VirtualHost %s" % lua_string(self.plain_domain))
        lines.append("\tmodules_enabled = %s"
                     % lua_value([m for m in modules if m != "minimix"]))
        lines.append("")
        for domain, secret in self.external_components.items():
            lines.append("Component %s" % lua_string(domain))
            lines.append("\tcomponent_secret = %s" % lua_string(secret))
            lines.append("")
        if self.muc_module is None:
            lines.append("Component %s" % lua_string(self.muc_domain))
            lines.append("\tcomponent_secret = \"never-connects\"")
            lines.append("")
            return "\n".join(lines)
        lines.append("Component %s %s" % (lua_string(self.muc_domain), lua_string(self.muc_module)))
        muc = {
            "restrict_room_creation": False,
            "muc_room_default_history_length": self.muc_history_length,
            # Prosody 13 gives the users of a host other than the MUC's
            # parent ("plain.localhost") the role prosody:guest on the MUC,
            # which may not make a room persistent; as on 0.12, they may.
            # (0.12 has no roles and ignores the option.)
            "server_user_role": "prosody:registered",
        }
        if self.spy:
            muc["modules_enabled"] = ["e2e_spy"]
        muc.update(self.muc_options)
        for k, v in muc.items():
            lines.append("\t%s = %s" % (k, lua_value(v)))
        lines.append("")
        return "\n".join(lines)

    def sql_settings(self):
        """The sql option for storage "sqlite" / "postgres"."""
        if self.storage == "sqlite":
            out = {"driver": "SQLite3", "database": self.sqlite_path}
        else:
            out = {"driver": "PostgreSQL"}
        out.update(self.sql)
        return out

    @property
    def sqlite_path(self):
        return os.path.join(self.data_dir, "prosody.sqlite")

    @property
    def admin_socket(self):
        return os.path.join(self.data_dir, "prosody.sock")

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    # ---- accounts ----------------------------------------------------------

    def add_user(self, user, password, host=None):
        """Create (or overwrite) an account, in internal_plain's format.

        Written straight into the data dir: no prosodyctl process, works as
        root and while the server runs (the store is read on each login).
        """
        host = host or self.domain
        d = os.path.join(self.data_dir, _encode_node(host), "accounts")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, _encode_node(user) + ".dat"), "w") as f:
            f.write("return {\n\t[\"password\"] = %s;\n};\n" % lua_string(password))
        self.users[(user, host)] = password
        self.users.setdefault(user, password)
        return "%s@%s" % (user, host)

    # ---- process -----------------------------------------------------------

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _env(self):
        env = dict(os.environ)
        # `require "minimix"` from the checkout; ";;" keeps Lua's defaults.
        if self.checkout_cpath:
            env["LUA_CPATH_5_4"] = os.path.join(CHECKOUT, "?.so") + ";;"
        else:
            env.pop("LUA_CPATH_5_4", None)
        env.pop("LUA_CPATH", None)
        return env

    @property
    def valgrind_log(self):
        return os.path.join(self.dir, "valgrind.log")

    def command(self):
        """The command line that runs this Prosody in the foreground.

        MINIMIX_E2E_VALGRIND=1 runs it under valgrind's memcheck (the module's
        C code included); valgrind_errors() reads what it found."""
        cmd = [PROSODY, "--config", self.config_path, "-F"]
        if VALGRIND:
            # valgrind must run the interpreter, not /usr/bin/env
            cmd = ["valgrind", "-q", "--leak-check=no", "--track-origins=no",
                   "--log-file=" + self.valgrind_log, "lua5.4"] + cmd
        return cmd

    def valgrind_errors(self):
        """Memcheck's reports (a clean run writes none), or []."""
        try:
            with open(self.valgrind_log, errors="replace") as f:
                text = f.read()
        except OSError:
            return []
        return [b for b in text.split("\n==") if b.strip()]

    def environ(self):
        """The environment to run it with."""
        return self._env()

    def start(self, timeout=None):
        timeout = timeout or START_TIMEOUT
        if self.running:
            raise ProsodyError("already running")
        self.write_config()
        self._stdout = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.STDOUT,
            cwd=self.dir, env=self._env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProsodyError("prosody exited with %s during start-up\n%s"
                                   % (self.proc.returncode, self.tail()))
            if not self._stream_answers():
                time.sleep(0.05)
                continue
            self._check_module_loaded()
            return self
        self.stop()
        raise ProsodyError("prosody did not listen on %d within %ss\n%s"
                           % (self.port, timeout, self.tail()))

    def _stream_answers(self):
        """True when the server answers a c2s stream header.

        A bound listening socket accepts connections before Prosody's main
        loop runs; an answer proves the loop runs (and with it the timers
        that install the SIGTERM handler).
        """
        header = ("<?xml version='1.0'?><stream:stream to='%s' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                  % self.domain).encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(header)
                data = b""
                while b"features" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                s.sendall(b"</stream:stream>")
                return True
        except OSError:
            return False

    def _check_module_loaded(self):
        """Fail early and clearly when mod_minimix could not be loaded."""
        if not self.minimix:
            return
        # Modules are loaded before the ports open; the error is logged then.
        text = self.read_log()
        for line in text.splitlines():
            if "minimix" in line and ("Unable to load" in line or "Error initializing" in line
                                      or "Failed to load" in line):
                self.stop()
                raise ProsodyError("mod_minimix failed to load:\n%s" % self.tail())

    def stop(self, timeout=None):
        timeout = timeout or STOP_TIMEOUT
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is not None and rc < 0:
            self.crashes.append("died by signal %d before it was stopped" % -rc)
        elif rc is None:
            self._wait_disconnects_handled(2 * SLOWDOWN)
            try:
                self.proc.send_signal(signal.SIGTERM)
                rc = self.proc.wait(timeout)
                if rc < 0 and rc != -signal.SIGTERM:
                    self.crashes.append("died by signal %d while stopping" % -rc)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait(timeout)
                # Prosody 0.12's own shutdown can stall on a session that
                # went away meanwhile (mod_c2s "attempt to call a nil value
                # (method 'close')", see _wait_disconnects_handled; a
                # client of the server's own may still close at that
                # moment): a warning, not a crash
                self.stalled.append("did not stop within %s s of SIGTERM" % timeout)
        self.proc = None
        if self._stdout:
            self._stdout.close()
            self._stdout = None
        return rc

    def _half_closed(self):
        """How many of the server's TCP connections their peer has closed
        and the server has not (CLOSE_WAIT): disconnects it has yet to
        handle, or is handling (server_epoll closes the socket after its
        disconnect handler returns)."""
        inodes = set()
        fd_dir = "/proc/%d/fd" % self.proc.pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            return 0
        for fd in fds:
            try:
                link = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        n = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    next(f, None)
                    for line in f:
                        fields = line.split()
                        if len(fields) > 9 and fields[3] == "08" and fields[9] in inodes:
                            n += 1
            except OSError:
                pass
        return n

    def _wait_disconnects_handled(self, limit):
        """Before a SIGTERM: wait (at most limit seconds) until the server
        has handled the disconnects of the clients the test closed.
        Prosody 0.12 runs a signal's handler at whatever Lua instruction
        the signal arrives (util.signal sets a debug hook; 13 reads a
        signalfd in its loop): a SIGTERM while a session is being
        destroyed runs the whole shutdown inside that, which then meets
        the half-destroyed session (sessionmanager.lua:114 "attempt to
        index a nil value", or mod_c2s "attempt to call a nil value
        (method 'close')" and a shutdown that never ends)."""
        deadline = time.monotonic() + limit
        while self.proc.poll() is None and self._half_closed() and time.monotonic() < deadline:
            time.sleep(0.02)

    def kill(self, timeout=10):
        """Crash: SIGKILL, no shutdown of any kind.  Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(timeout)
        self.proc = None
        if self._stdout:
            self._stdout.close()
            self._stdout = None
        return rc

    def prosodyctl(self, *args, timeout=120):
        """Run `prosodyctl --config <this config> args...`; returns (exit
        status, stdout and stderr)."""
        cmd = [PROSODYCTL, "--config", self.config_path] + list(args)
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                             cwd=self.dir, env=self._env(), timeout=timeout)
        return res.returncode, (res.stdout.decode(errors="replace")
                                + res.stderr.decode(errors="replace"))

    def shell(self, *command, timeout=20, check=True):
        """Run one admin shell command (needs admin_shell=True) with
        `prosodyctl shell`: one argument is a line of the shell; several
        are Prosody 13's command form (`prosodyctl shell section command
        args...`).  Returns its output; check: fail on a non-zero exit
        (13: a command that failed), else return (exit status, output)."""
        if not self.admin_shell:
            raise ProsodyError("shell() needs ProsodyEnv(admin_shell=True)")
        rc, out = self.prosodyctl("shell", *command, timeout=timeout)
        if not check:
            return rc, out
        if rc != 0:
            raise ProsodyError("prosodyctl shell %s exited with %s:\n%s"
                               % (" ".join(command), rc, out))
        return out

    def restart(self, timeout=None):
        self.stop()
        return self.start(timeout)

    def cleanup(self):
        self.stop()
        if self._own_dir and os.environ.get("MINIMIX_E2E_KEEP", "") in ("", "0"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # ---- diagnostics -------------------------------------------------------

    def read_log(self):
        parts = []
        for p in (self.log_path, self.stdout_path):
            try:
                with open(p, errors="replace") as f:
                    parts.append(f.read())
            except FileNotFoundError:
                pass
        return "\n".join(parts)

    def open_sessions(self):
        """The client sessions the server holds as it last logged them:
        {session id: bare JID} of those that authenticated since the last
        start and have not disconnected (mod_c2s's info lines "Authenticated
        as" and "Client disconnected").  A session id names a connection and
        may be used again for a later one, hence the lines in order."""
        text = self.read_log()
        i = text.rfind("Hello and welcome to Prosody")
        open_ = {}
        for line in text[max(i, 0):].splitlines():
            parts = line.split("\t")
            if len(parts) < 3 or parts[1] != "info":
                continue
            sid = parts[0].rpartition(" ")[2]
            if parts[2].startswith("Authenticated as "):
                open_[sid] = parts[2][len("Authenticated as "):]
            elif parts[2].startswith("Client disconnected"):
                open_.pop(sid, None)
        return open_

    def tail(self, n=60):
        out = []
        for p in (self.log_path, self.stdout_path):
            try:
                with open(p, errors="replace") as f:
                    lines = f.readlines()
            except FileNotFoundError:
                continue
            if lines:
                out.append("---- last %d lines of %s ----\n" % (min(n, len(lines)), p))
                out.extend(lines[-n:])
        return "".join(out)

    def spy_errors(self):
        """Error stanzas that reached a room (needs spy=True), as logged."""
        out = []
        for line in self.read_log().splitlines():
            i = line.find(SPY_MARK + "error-to-room ")
            if i >= 0:
                out.append(line[i + len(SPY_MARK + "error-to-room "):])
        return out

    def log_errors(self, during_shutdown=False):
        """Error-level lines of the Prosody log with their tracebacks.

        By default only while serving: lines between a "Received SIGTERM"
        and the next start-up are left out (during_shutdown=True: only
        those), since a shutdown racing with closing clients can log errors
        of its own.
        """
        out = []
        stopping = False
        keep = False
        for line in self.read_log().splitlines():
            if "Received SIGTERM" in line or "Received SIGINT" in line:
                stopping = True
            elif "Hello and welcome to Prosody" in line:
                stopping = False
            if line[:1] in ("\t", " "):  # continuation (traceback)
                if keep:
                    out.append(line)
                continue
            keep = "\terror\t" in line and stopping == during_shutdown
            if keep:
                out.append(line)
        return out

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def __repr__(self):
        return "<ProsodyEnv %s port=%d minimix=%s>" % (self.dir, self.port, self.minimix)
