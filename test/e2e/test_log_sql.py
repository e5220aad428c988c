"""End-to-end tests of the room log on mod_storage_sql: what one flush of
the log's writer queued goes into the database in one transaction
(minimix_logsql.lib.lua), read back by the store as its own items, and a
message the database refuses in the middle of such a batch neither loses
nor holds up the others.

alice (phone and laptop) is on localhost, the host with the module; bob
and carol speak from plain.localhost.  The rooms keep no history of their
own (muc#roomconfig_historylength 0), so a catch-up can only come from the
room log.  The log's flush interval is 3 s here, so that the messages of
a test are queued for one flush.

What is proven:

1. On SQLite and on PostgreSQL, 12 messages said within one flush interval
   are all in the log, in order, each with its key (the room's stanza-id
   for the one that has one, a UUID of the store's kind for the others,
   all different), the time it was said and the speaker's nick; a device
   that was away gets all 12 from the log, in order.  On PostgreSQL all 12
   rows were written by one transaction (their xmin).
2. On PostgreSQL, where a trigger refuses one message, the batch the
   refused message is in fails and is written one by one: the messages
   before and after it are logged, in order, and the refused one alone is
   given up, said once; no outage is reported.
3. With minimix_archive_in_mam and mod_mam on PostgreSQL, the copies of a
   flush into the accounts' own archives go in one transaction too, and
   mod_mam's XEP-0313 answer returns them.
"""

import asyncio
import re
import time

import pytest

from .clients import NS_SID, P, join_room
from .storages import archive_entries
from .test_catchup import make_env, setup_room, logged, catch_up
from .test_log import minimix_lines, two_accounts_in_room, say_and_wait, mam_query
from .test_log_writes import pg_storage, PG_LOG_ONLY, PG_ERRORS
from .world import run

FLUSH = {"minimix_log_flush_interval": 3000}
SQLITE_LOG_ONLY = PG_LOG_ONLY
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def sql_env(prosody_factory, which, postgres_server=None, **host_options):
    host_options = dict(FLUSH, **host_options)
    if which == "postgres":
        storage = pg_storage(postgres_server)
        env = make_env(prosody_factory, storage, global_options=PG_LOG_ONLY,
                       host_options=host_options)
        env.allowed_errors = PG_ERRORS
    else:
        env = make_env(prosody_factory, {"storage": "sqlite"}, global_options=SQLITE_LOG_ONLY,
                       host_options=host_options)
    return env


@pytest.mark.parametrize("which", ["sqlite", "postgres"])
def test_one_flush_writes_its_messages_in_one_transaction(prosody_factory, which, request):
    """The phone goes away; carol says 12 messages, the sixth with a
    stanza-id 'by' the room (a room without mod_muc_mam passes it on, and
    with minimix_mam off the module stamps no ids of its own); they are
    said within one flush interval.  The log holds them in order with
    their keys (the room's stanza-id, else one of the store's kind), times
    and nicks; on PostgreSQL one transaction wrote them.  The phone joins
    again and gets the 12 from the log."""
    pg = request.getfixturevalue("postgres_server") if which == "postgres" else None
    env = sql_env(prosody_factory, which, pg, minimix_mam=False)
    texts = ["batch %02d" % i for i in range(12)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "batch-" + which)
        await phone.disconnect()
        t0 = time.time()
        m = laptop.mark()
        for i, t in enumerate(texts):
            if i == 5:
                carol.send("<message to='%s' type='groupchat' id='keyed'><body>%s</body>"
                           "<stanza-id xmlns='%s' by='%s' id='sid-of-the-sixth'/></message>"
                           % (room, t, NS_SID, room))
            else:
                carol.groupchat(room, t)
        await laptop.wait_for(P(name="message", frm_bare=room, body=texts[-1]), since=m)
        t1 = time.time()
        await logged(env, room, texts)
        entries = archive_entries(env, room, "minimix_log")
        assert [e["body"] for e in entries] == texts, entries
        keys = [e["key"] for e in entries]
        assert keys[5] == "sid-of-the-sixth", keys
        assert all(UUID.match(k) for k in keys[:5] + keys[6:]), keys
        assert len(set(keys)) == len(keys), keys
        for e in entries:
            assert int(t0) <= int(e["when"]) <= t1, (t0, e, t1)
            assert e["with"] == "carol", e
        if which == "postgres":
            rows = env.pg.query(env.sql["database"],
                                'SELECT xmin FROM "prosodyarchive" WHERE "store" = \'minimix_log\' '
                                'AND "user" = :\'v1\' ORDER BY "sort_id";', room)
            assert len(rows) == len(texts) and len({r[0] for r in rows}) == 1, \
                "not written in one transaction: %s" % rows
        phone = await w.connect("alice", "phone")
        _, got = await join_room(phone, room, "alice", history={"maxstanzas": 100})
        assert [b for b, _ in catch_up(got, room)] == texts
    run(env, scenario, timeout=120)


REFUSE = """
CREATE FUNCTION minimix_refuse() RETURNS trigger AS $$
BEGIN
    IF NEW."value" LIKE '%refuse me%' THEN
        RAISE EXCEPTION 'this message is refused';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER minimix_refuse BEFORE INSERT ON "prosodyarchive"
    FOR EACH ROW EXECUTE FUNCTION minimix_refuse();
"""


def test_a_refused_message_in_a_batch_loses_and_holds_up_nothing(prosody_factory,
                                                                    postgres_server):
    """The log on PostgreSQL, where a trigger refuses any message with
    "refuse me".  Within one flush interval carol says 3 messages, one to
    be refused, and 3 more; the 6 others are logged, in order; the refused
    one is given up, said once.  When the refused message heads the pass
    that meets it, with nothing else written in that pass, it is first
    taken for an outage (said at most once), tried again, and told apart
    by the message behind it, which the store takes."""
    env = sql_env(prosody_factory, "postgres", postgres_server)
    before = ["before %d" % i for i in range(3)]
    after = ["after %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, phone, laptop, bob = await setup_room(w, "refuse")
        m = laptop.mark()
        carol.groupchat(room, "up")
        await laptop.wait_for(P(name="message", frm_bare=room, body="up"), since=m)
        # the table is there once the log wrote to it
        await logged(env, room, ["up"])
        env.pg.query(env.sql["database"], REFUSE)
        m = laptop.mark()
        for t in before + ["please refuse me"] + after:
            carol.groupchat(room, t)
        await laptop.wait_for(P(name="message", frm_bare=room, body=after[-1]), since=m)
        await logged(env, room, before + after, timeout=60)
        await w.quiet(1)
        got = [e["body"] for e in archive_entries(env, room, "minimix_log")]
        assert got == ["up"] + before + after, got
        assert len(minimix_lines(env, "warn", "Giving up writing a message of")) == 1, env.tail(30)
        assert len(minimix_lines(env, "error", "Cannot write")) <= 1, env.tail(30)
    run(env, scenario, timeout=120)


def test_the_archive_copies_go_in_one_transaction_and_mam_reads_them(prosody_factory,
                                                                       postgres_server):
    """minimix_archive_in_mam with every store on PostgreSQL (mod_mam's
    too): carol says 3 messages within one flush interval; alice's and
    bob's copies in their own archives were written by one transaction,
    and a XEP-0313 query of each, 'with' the room, returns the 3 in order."""
    storage = pg_storage(postgres_server)
    env = make_env(prosody_factory, storage, extra_modules=["mam"],
                   host_options=dict(FLUSH, minimix_archive_in_mam=True))
    env.allowed_errors = PG_ERRORS
    texts = ["archived %d" % i for i in range(3)]

    async def scenario(w):
        room, carol, alice, bob = await two_accounts_in_room(w, "mine")
        await say_and_wait(carol, room, alice + [bob], *texts)
        deadline = time.monotonic() + 30
        while True:
            rows = env.pg.query(env.sql["database"],
                                'SELECT "user", xmin FROM "prosodyarchive" WHERE "store" = '
                                '\'archive\' AND "with" = :\'v1\' ORDER BY "sort_id";', room)
            if len(rows) >= 2 * len(texts) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert sorted(r[0] for r in rows) == ["alice"] * 3 + ["bob"] * 3, rows
        assert len({r[1] for r in rows}) == 1, "not written in one transaction: %s" % rows
        for c in (alice[0], bob):
            got = await mam_query(c, room)
            assert [x.findtext("{jabber:client}body") for x in got] == texts
    run(env, scenario, timeout=120)
