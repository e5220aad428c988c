"""Storage setups shared by the end-to-end tests: Prosody's internal file
store, mod_storage_sql with SQLite3, and mod_storage_sql with a PostgreSQL
server started for the test session (Debian's postgresql; initdb as the
postgres system user when run as root, since initdb refuses root).  The
fixtures `storage` and `postgres_server` (conftest.py) use these."""

import glob
import itertools
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET

from .prosody_env import _encode_node, free_port

STORAGES = ["internal", "sqlite", "postgres"]

_db_names = itertools.count(1)


def lua_module_missing(name):
    """None when Lua 5.4 (Prosody's) can require name, else the error."""
    lua = shutil.which("lua5.4")
    if lua is None:
        return "lua5.4 not found"
    res = subprocess.run([lua, "-e", "require %r" % name], capture_output=True, text=True)
    if res.returncode != 0:
        return (res.stderr.strip().splitlines() or ["failed"])[0]
    return None


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (free port), with
    password (scram-sha-256) authentication over TCP, in a temp dir.
    As root, initdb/pg_ctl run as the postgres system user."""

    def __init__(self):
        self.bindir = None
        for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", p)] or [0]):
            if os.path.exists(os.path.join(d, "initdb")):
                self.bindir = d
        self.user = "minimix"
        self.password = secrets.token_hex(12)
        self.port = None
        self.dir = None
        self.run_as = None

    def unavailable(self):
        """Why this machine cannot run the server, or None."""
        if self.bindir is None:
            return ("PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) not found: "
                    "install Debian's postgresql package (tools/deps.sh)")
        if not shutil.which("psql"):
            return "psql not found (postgresql-client)"
        missing = lua_module_missing("dbd.postgresql")
        if missing:
            return "lua-dbi-postgresql is not installed for Lua 5.4 (%s)" % missing
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root, and there is no postgres system user to run initdb as"
            if not shutil.which("runuser"):
                return "running as root without runuser(1) to switch to the postgres user"
        return None

    def _cmd(self, args):
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--"] + args
        return args

    def _run(self, args, **kw):
        res = subprocess.run(self._cmd(args), capture_output=True, text=True, timeout=60, **kw)
        if res.returncode != 0:
            raise RuntimeError("%s failed (%s):\n%s%s" % (" ".join(args), res.returncode,
                                                        res.stdout, res.stderr))
        return res.stdout

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="minimix-pg-")
        if os.geteuid() == 0:
            self.run_as = "postgres"
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.run_as:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        self._run([os.path.join(self.bindir, "initdb"), "-D", data, "-U", self.user,
                   "--pwfile", pwfile, "--auth-local=trust", "--auth-host=scram-sha-256",
                   "-E", "UTF8", "--no-sync"])
        os.unlink(pwfile)
        self.port = free_port()
        self.resume()
        return self

    def resume(self):
        """Start the server (again), on the same port and data."""
        data = os.path.join(self.dir, "data")
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", data, "-l",
                   os.path.join(self.dir, "postgres.log"), "-w", "-t", "60", "-o",
                   "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off" % (self.port, self.dir),
                   "start"])

    def pause(self):
        """Stop the server, keeping its data (an outage): resume() starts it
        again.  Immediate mode: connections drop as in a crash."""
        data = os.path.join(self.dir, "data")
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w",
                   "stop"])

    def stop(self):
        if self.dir is None:
            return
        data = os.path.join(self.dir, "data")
        try:
            self._run([os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "fast", "-w",
                       "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _client_env(self):
        env = dict(os.environ)
        env["PGPASSWORD"] = self.password
        return env

    def create_database(self):
        name = "minimix_%d_%d" % (os.getpid(), next(_db_names))
        res = subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                              name], capture_output=True, text=True, env=self._client_env(),
                             timeout=60)
        if res.returncode != 0:
            raise RuntimeError("createdb %s failed: %s%s" % (name, res.stdout, res.stderr))
        return name

    def query(self, database, sql, *params):
        """Rows (lists of strings) of a query; params are passed as psql
        variables :'v1', :'v2', ..."""
        args = ["psql", "-X", "-q", "-A", "-t", "-F", "\x1f", "-R", "\x1e", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", self.user, "-d", database, "-v", "ON_ERROR_STOP=1"]
        for i, p in enumerate(params, 1):
            args += ["-v", "v%d=%s" % (i, p)]
        res = subprocess.run(args, input=sql, capture_output=True, text=True,
                             env=self._client_env(), timeout=60)
        if res.returncode != 0:
            raise RuntimeError("psql failed: %s" % res.stderr)
        out = res.stdout.rstrip("\n")
        return [r.split("\x1f") for r in out.split("\x1e") if r.strip("\n")]

    def sql_settings(self, database):
        return {"driver": "PostgreSQL", "database": database, "host": "127.0.0.1",
                "port": self.port, "username": self.user, "password": self.password}


# ---- reading an SQLite store back ---------------------------------------------------

def _change_counter(path):
    """The file change counter of the SQLite database at path (bytes 24-27
    of its header), which every commit changes; None without a header."""
    try:
        with open(path, "rb") as f:
            head = f.read(28)
    except FileNotFoundError:
        return None
    return head[24:28] if len(head) == 28 else None


def sqlite_rows(path, query, params, timeout=20):
    """The rows of query on Prosody's SQLite database at path, as committed:
    [] when the database or its table is not there yet.

    Read without locks (nolock=1): a lock of ours would make Prosody's
    commit fail (it sets no busy timeout and does not roll back).  Without
    a lock a read can see a commit half done: Prosody (journal_mode=delete)
    writes the new pages into the database and then deletes the rollback
    journal, and a kill -9 in between rolls the pages back at the next
    start, so what such a read saw was never stored.  A read counts only
    when no journal was there before it or after it and the database's
    change counter stayed the same; otherwise it is tried again."""
    journal = path + "-journal"
    deadline = time.monotonic() + timeout
    while True:
        assert time.monotonic() < deadline, "no committed state of %s to read" % path
        if not os.path.exists(path):
            return []
        before = _change_counter(path)
        if os.path.exists(journal):
            time.sleep(0.02)
            continue
        try:
            db = sqlite3.connect("file:%s?mode=ro&nolock=1" % path, uri=True, timeout=5)
            try:
                rows = db.execute(query, params).fetchall()
            finally:
                db.close()
        except sqlite3.DatabaseError as e:
            # a read torn by a write is tried again
            if "no such table" in str(e) and not os.path.exists(journal):
                return []
            time.sleep(0.02)
            continue
        if not os.path.exists(journal) and _change_counter(path) == before:
            return rows
        time.sleep(0.02)


# ---- reading the file store back ----------------------------------------------------

def read_store_file(path, complete_items=False):
    """The text of a file of Prosody's file store (util.datamanager) as it
    stands at one moment, or None when there is no such file.

    Prosody replaces these files while the test reads them: it rewrites a
    store into a scratch file renamed over the old one, and removes it when
    it becomes empty (the retention job of the room log does both).  So
    the file is opened once and read through that descriptor, which holds
    either a whole old or a whole new version, never half of each; checking
    that the path exists and then opening it again would race the removal.

    complete_items: a list store (.list) also grows by appends, and an
    append in progress may be cut off.  Every item ends with ");" and a
    newline, which no line within an item does (util.serialization escapes
    the newlines of strings, and ends a field's line with ";" after a value
    or a "}"), so the text is cut after the last whole item."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    if complete_items:
        end = text.rfind(");\n")
        text = text[:end + 3] if end >= 0 else ""
    return text


def lua_read_store(script, text, what):
    """Run a Lua 5.4 script that reads a store file's text (in the global
    STORE_TEXT, from standard input), and return what it writes."""
    res = subprocess.run(["lua5.4", "-e", "STORE_TEXT = io.read('a')\n" + script], input=text,
                         capture_output=True, text=True, errors="surrogateescape")
    if res.returncode != 0:
        raise AssertionError("cannot read %s: %s" % (what, res.stderr))
    return res.stdout


# ---- reading archive stores back ---------------------------------------------------

_LUA_LIST = r"""
local room = ROOM
local items = {}
local f = assert(load(STORE_TEXT, "=list", "t", { item = function(t) items[#items+1] = t end }))
f()
for _, t in ipairs(items) do
  local body, subject, sid = "\2", "\2", "\2"
  if t.name == "logged" and t.attr.xmlns == "urn:xmpp:minimix:logged:0" then
    -- the room log's own item: the message's XML text, read by _from_xml
    io.write(t.key, "\31", tostring(t.when), "\31", t.with or "", "\31", t[1], "\30")
    goto next
  end
  for _, c in ipairs(t) do
    if type(c) == "table" then
      if c.name == "body" then body = c[1] or ""
      elseif c.name == "subject" then subject = c[1] or ""
      elseif c.name == "stanza-id" and c.attr.by == room then sid = c.attr.id end
    end
  end
  io.write(t.key, "\31", tostring(t.when), "\31", t.with or "", "\31", body, "\31", subject,
           "\31", sid, "\31", t.attr.to or "", "\30")
  ::next::
end
"""


def _entry(key, when, with_, body, subject, sid, to):
    nul = lambda v: None if v in (None, "\2") else v
    return {"key": key, "when": float(when), "with": with_, "body": nul(body),
            "subject": nul(subject), "sid": nul(sid), "to": to or None}


def _from_xml(key, when, with_, value, room):
    x = ET.fromstring(value)
    body = subject = sid = None
    for c in x:
        tag = c.tag.split("}")[-1]
        if tag == "body":
            body = c.text or ""
        elif tag == "subject":
            subject = c.text or ""
        elif tag == "stanza-id" and c.get("by") == room:
            sid = c.get("id")
    return _entry(key, when, with_, body, subject, sid, x.get("to"))


def archive_entries(env, user, store, room=None, host="localhost"):
    """The items of an archive store of host for user (a room JID for the
    room log), in order, read from the storage itself (the file store's
    list file, or the SQL table): [{key, when, with, body, subject, sid
    (the stanza-id by room), to}]."""
    room = room or user
    if env.storage == "internal":
        path = os.path.join(env.data_dir, _encode_node(host), store, _encode_node(user) + ".list")
        text = read_store_file(path, complete_items=True)
        if not text:
            return []
        out = lua_read_store(_LUA_LIST.replace("ROOM", repr(room)), text, path)
        rows = [row.split("\x1f") for row in out.split("\x1e") if row]
        return [_from_xml(*r, room) if len(r) == 4 else _entry(*r) for r in rows]
    query = ('SELECT "key", "when", "with", "value" FROM "prosodyarchive" WHERE "host" = %s '
             'AND "user" = %s AND "store" = %s ORDER BY "sort_id"')
    if env.storage == "sqlite":
        rows = sqlite_rows(env.sqlite_path, query % ("?", "?", "?"), (host, user, store))
    else:
        rows = env.pg.query(env.sql["database"], query % (":'v1'", ":'v2'", ":'v3'") + ";",
                            host, user, store)
    return [_from_xml(k, w, wi, v, room) for k, w, wi, v in rows]
