"""End-to-end tests of mod_minimix's start-up restore when the store does
not answer yet.

The account alice@localhost is the occupant; the observer bob lives on
plain.localhost, a host without the module, so that what he sees is what
the room sends.  The module's "minimix" store is on PostgreSQL (a server
started on loopback for the session, storages.py), every other store on
files, so that the rooms, the accounts and the bookmarks are there while
the database is not.

What is proven: Prosody started while PostgreSQL is down reads the stored
memberships again until the database answers, never taking the failed read
for "no rooms"; the account is then back in its rooms with no client doing
anything (XEP-0045 7.2, seen by another occupant), each room joined once
under its stored nick, its autojoin bookmarks (XEP-0402) joined only after
its stored memberships were read; a device joining later is told it is in
without a new join.

On Prosody 0.12 and 13 alike, mod_storage_sql connects on first use, not
when it loads: with the database down, users() raises (after one
reconnection attempt of util.sql) and get() returns nil and the error,
each with an error line of its own in the log.
"""

import asyncio
import re

from .clients import P
from .test_persistence import (ALICE, make_env, stored_rooms, wait_stored, wait_log,
                               current_run, joins_by_room, observe_occupants, close_all,
                               in_stored_and_bookmarked_rooms)
from .world import run

# Error lines of the storage driver while the database is down.
SQL_DOWN_ERRORS = [r" sql\terror\t", r"storage_sql\terror\t"]


def minimix_lines(env, level, pattern):
    """Lines of the current run logged by localhost:minimix at level
    matching pattern."""
    out = []
    for line in current_run(env).splitlines():
        parts = line.split("\t")
        if (len(parts) >= 3 and parts[0].endswith(" localhost:minimix") and parts[1] == level
                and re.search(pattern, parts[2])):
            out.append(line)
    return out


def test_prosody_started_before_postgresql_gets_its_accounts_back(prosody_factory,
                                                                   postgres_server):
    """alice is in two rooms: one she joined as "Alice W" (a stored
    membership, also bookmarked with autojoin under another nick) and one
    she joined by her autojoin bookmark.  Prosody crashes (so that the
    MUC keeps no occupant: a presence after the restart can only come from
    the module's own join), and starts again while PostgreSQL is down: the
    module says once that it cannot read the stored memberships, and nobody
    joins (not even from the bookmarks, which wait for the account's
    record).  PostgreSQL starts: with no client of alice online, bob sees
    her come back in both rooms (XEP-0045 7.2), the first under the stored
    nick, each joined once, and one line says the store was read.  A phone
    of alice joining then gets its self-presence (110) at once, and the
    room sees no new presence."""
    pg = postgres_server
    storage = {"storage": "postgres", "sql": pg.sql_settings(pg.create_database()), "_pg": pg}
    env = make_env(prosody_factory, storage, global_options={
        "storage": {"accounts": "internal", "minimix": "sql"},
        "default_storage": "internal",
    })
    env.allowed_errors = SQL_DOWN_ERRORS

    async def scenario(w):
        both, marked = w.room("restore-stored"), w.room("restore-bookmarked")
        await in_stored_and_bookmarked_rooms(w, env, both, marked, nick="Alice W",
                                             bookmark_nick="alice-bm")
        assert stored_rooms(env)[both]["nick"] == "Alice W"
        await close_all(w)

        loop = asyncio.get_running_loop()
        env.kill()
        await loop.run_in_executor(None, pg.pause)
        resumed = False
        try:
            env.start()
            # the storage driver's own line for the failed read, and for
            # the first try again
            await wait_log(env, r"\terror\tError in SQL transaction",
                           "two failed reads of the stored memberships", count=2)
            # nobody joined: not from the store, not from the bookmarks
            observers, marks = {}, {}
            for r in (both, marked):
                others, observers[r] = await observe_occupants(w, r, res="desk-" + r.split("@")[0])
                marks[r] = observers[r].mark()
                assert not {"Alice W", "alice-bm", "alice"} & set(others), \
                    "alice is in %s before her memberships could be read: %s" % (r, sorted(others))
            assert joins_by_room(env, [both, marked]) == {both: 0, marked: 0}
            await loop.run_in_executor(None, pg.resume)
            resumed = True
        finally:
            if not resumed:
                await loop.run_in_executor(None, pg.resume)

        # The retries are 1, 2, 4, ... up to 60 s apart: the next comes
        # within about as long as the database was down.
        for r, nick in ((both, "Alice W"), (marked, "alice-bm")):
            pres = await observers[r].wait_for(P(name="presence", frm="%s/%s" % (r, nick), type="available"),
                                    since=marks[r], timeout=75,
                                    what="alice back in %s as %s" % (r, nick))
            assert pres.item is not None and pres.item.get("jid") == ALICE, pres
        await wait_log(env, r"localhost:minimix\tinfo\tThe stored memberships are read",
                       "the line saying the store was read")
        # once for the outage: when it started, and when it ended
        assert len(minimix_lines(env, "warn", "^Cannot read the stored memberships")) == 1
        assert len(minimix_lines(env, "info", "^The stored memberships are read")) == 1
        assert joins_by_room(env, [both, marked]) == {both: 1, marked: 1}, \
            "a room was joined more than once"
        rooms = await wait_stored(env, lambda r: set(r) == {both, marked},
                                  "both memberships, after the restore")
        assert rooms[both]["nick"] == "Alice W", rooms

        # A device joining now is in at once: the room sees nothing new.
        bob = observers[both]
        mb = bob.mark()
        p2 = await w.connect("alice", "phone")
        m = p2.mark()
        p2.join(both, "Alice W", id="after-restore")
        self_p = await p2.wait_for(P(name="presence", frm=both + "/Alice W", codes={110}),
                                   since=m, what="the phone's self-presence")
        assert self_p.id == "after-restore" and self_p.type is None, self_p
        await bob.assert_nothing(P(name="presence", frm=both + "/Alice W"), since=mb,
                                 what="a presence of alice (the phone joins what the account is in)")
        assert joins_by_room(env, [both, marked]) == {both: 1, marked: 1}
    run(env, scenario, timeout=240)
