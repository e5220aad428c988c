/*
 * bench_core.c - timings and memory of the minimix core, without Lua.
 *
 * Linked against minimix.o alone (see `make bench`).  The same scenario is
 * played by bench/core_lua.lua against the 2018 module's Lua tables and
 * against minimix.so through the Lua binding, for the ratios.
 *
 * Scenario (sizes from the environment, see bench/README.md):
 *   A accounts, each in J rooms, with D sessions joined to each; accounts
 *   come in groups of S, and every account of a group is in the same J
 *   rooms, so each room has S local accounts and there are A/S*J rooms.
 *
 *   join      every session of every membership joins; the first one's join
 *             is answered by the room's self-presence (110), the others are
 *             answered from the cache.  Time per call; bytes per membership
 *             from mallinfo2() deltas.
 *   fan-out   the room's groupchat message reaches each local account (one
 *             mm_room_message() per account, as Prosody's MUC routes one
 *             copy per occupant); the decision is one DELIVER per session.
 *             With the payload (what the shim passes: kept for catch-up) and
 *             without it (routing alone).
 *   presence  an occupant's presence reaches each local account: first
 *             (cached), changed (cache updated), unavailable (dropped).
 *   shared    OA local accounts in one room with OO occupants: every
 *             presence is cached once and shared.
 *   cycles    C rounds of join, traffic and leave by every session of a
 *             set of accounts: the heap must come back to where it was.
 *
 * Usage: bench_core [results.json]
 * Timings are wall-clock (CLOCK_MONOTONIC) on one thread; nothing is
 * asserted, everything is reported.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "minimix.h"

/* ---- helpers ------------------------------------------------------------ */

static long env_long(const char *name, long def)
{
	const char *v = getenv(name);
	char *end;
	long n;
	if (v == NULL || *v == '\0')
		return def;
	n = strtol(v, &end, 10);
	if (*end != '\0' || n < 1) {
		fprintf(stderr, "bench_core: %s must be a positive integer\n", name);
		exit(2);
	}
	return n;
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Bytes the C heap holds (small blocks plus mmap'd ones). */
static double heap_bytes(void)
{
	struct mallinfo2 mi = mallinfo2();
	return (double)(mi.uordblks + mi.hblkhd);
}

static double vmrss_bytes(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	double kb = 0;
	if (f == NULL)
		return 0;
	while (fgets(line, sizeof line, f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kb = atof(line + 6);
	fclose(f);
	return kb * 1024;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n);
	if (p == NULL) {
		fprintf(stderr, "bench_core: out of memory\n");
		exit(1);
	}
	return p;
}

static char *xprintf(const char *fmt, ...)
{
	va_list ap;
	int n;
	char *s;
	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	s = xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

static void check(mm_err err, const mm_decision *d, const char *what)
{
	if (err != MM_OK || !d->handled) {
		fprintf(stderr, "bench_core: %s: %s (handled=%d)\n", what,
			mm_strerror(err), d->handled);
		exit(1);
	}
}

/* ---- results ------------------------------------------------------------ */

typedef struct result {
	const char *key, *label, *unit;
	double value;
} result;

static result results[64];
static size_t nresults;

static void report(const char *key, const char *label, double value, const char *unit)
{
	if (nresults < sizeof results / sizeof results[0])
		results[nresults++] = (result){key, label, unit, value};
	printf("  %-58s %12.1f %s\n", label, value, unit);
	fflush(stdout);
}

static void write_json(const char *path, long A, long J, long D, long S,
		long rounds, long OA, long OO, long CA, long C, double seconds)
{
	FILE *f = fopen(path, "w");
	size_t i;
	if (f == NULL) {
		perror(path);
		return;
	}
	fprintf(f, "{\n  \"impl\": \"c-core\",\n");
	fprintf(f, "  \"params\": {\"accounts\": %ld, \"rooms_per_account\": %ld, "
		"\"sessions\": %ld, \"room_size\": %ld, \"rounds\": %ld, "
		"\"shared_accounts\": %ld, \"shared_occupants\": %ld, "
		"\"cycle_accounts\": %ld, \"cycles\": %ld},\n",
		A, J, D, S, rounds, OA, OO, CA, C);
	fprintf(f, "  \"seconds\": %.2f,\n  \"results\": {\n", seconds);
	for (i = 0; i < nresults; i++)
		fprintf(f, "    \"%s\": {\"value\": %.3f, \"unit\": \"%s\", \"label\": \"%s\"}%s\n",
			results[i].key, results[i].value, results[i].unit, results[i].label,
			i + 1 < nresults ? "," : "");
	fprintf(f, "  }\n}\n");
	fclose(f);
}

/* ---- the scenario ------------------------------------------------------- */

static const char *const resources[] = {
	"phone", "laptop", "desktop", "tablet", "watch", "tv", "car", "web",
};
#define MAX_SESSIONS (sizeof resources / sizeof resources[0])

static char **accounts; /* "u<i>@localhost" */
static char **nicks;    /* "u<i>" */
static char **rooms;    /* "room<r>@conference.localhost" */

static size_t room_of(long a, long j, long S, long J)
{
	return (size_t)((a / S) * J + j);
}

static mm_presence self_presence(const char *payload)
{
	mm_presence p;
	memset(&p, 0, sizeof p);
	p.type = MM_PRES_AVAILABLE;
	p.status = MM_STATUS_110;
	p.affiliation = "none";
	p.role = "participant";
	p.payload = payload;
	return p;
}

static char *self_payload(const char *room, const char *nick)
{
	return xprintf("<presence from='%s/%s'><x xmlns='http://jabber.org/protocol/muc#user'>"
		"<item affiliation='none' role='participant'/><status code='110'/></x></presence>",
		room, nick);
}

static char *occupant_payload(const char *room, const char *nick, const char *show)
{
	return xprintf("<presence from='%s/%s'>%s%s%s<c xmlns='http://jabber.org/protocol/caps' "
		"hash='sha-1' node='https://example.org' ver='q07IKJEyjvHSyhy//CH0CxmKi8w='/>"
		"<x xmlns='http://jabber.org/protocol/muc#user'><item affiliation='none' "
		"role='participant'/></x></presence>", room, nick,
		show ? "<show>" : "", show ? show : "", show ? "</show>" : "");
}

static char *message_payload(const char *room, long seq)
{
	return xprintf("<message type='groupchat' from='%s/sender' id='m%ld'>"
		"<body>Message %ld of the benchmark, about as long as a chat line is.</body>"
		"<origin-id xmlns='urn:xmpp:sid:0' id='o%ld'/>"
		"<stanza-id xmlns='urn:xmpp:sid:0' id='sid-%ld' by='%s'/></message>",
		room, seq, seq, seq, seq, room);
}

/* Message number seq of room reaches accounts first .. first+count-1, with
 * its payload (held once for them all, as the binding does) or without
 * (routing alone).  Returns the time taken; adds the deliveries. */
static double fanout_message(mm_state *s, const char *room, long first, long count,
		long seq, int with_payload, size_t *delivered)
{
	char sid[32];
	char *pl = with_payload ? message_payload(room, seq) : NULL;
	mm_message m;
	mm_decision d;
	double t;
	long a;
	snprintf(sid, sizeof sid, "sid-%ld", seq);
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.has_body = 1;
	m.id = "m";
	m.stanza_id = pl ? sid : NULL;
	m.stamp = 1e9 + (double)seq;
	m.payload = pl;
	t = now_ns();
	m.payload_handle = pl ? mm_payload_hold(s, pl, strlen(pl)) : NULL;
	for (a = first; a < first + count; a++) {
		mm_room_message(s, accounts[a], room, "sender", &m, &d);
		*delivered += d.n;
	}
	mm_payload_release(s, (mm_payload *)m.payload_handle);
	t = now_ns() - t;
	free(pl);
	return t;
}

/* One full membership life: join by every session, traffic, leave. */
static void cycle(mm_state *s, long first, long count, long D, long occ)
{
	const char *room = "cycle@conference.localhost";
	mm_decision d;
	long a, k, i;
	for (a = first; a < first + count; a++) {
		char *self = self_payload(room, nicks[a]);
		mm_presence p = self_presence(self);
		check(mm_session_join(s, accounts[a], resources[0], room, nicks[a], "j0",
			NULL, &d), &d, "cycle join");
		check(mm_room_presence(s, accounts[a], room, nicks[a], &p, &d), &d, "cycle self");
		for (k = 1; k < D; k++)
			check(mm_session_join(s, accounts[a], resources[k], room, nicks[a], "jk",
				NULL, &d), &d, "cycle join k");
		free(self);
	}
	for (i = 0; i < occ; i++) {
		char nick[32];
		char *pl;
		mm_presence p;
		snprintf(nick, sizeof nick, "other%ld", i);
		pl = occupant_payload(room, nick, NULL);
		memset(&p, 0, sizeof p);
		p.payload = pl;
		for (a = first; a < first + count; a++)
			check(mm_room_presence(s, accounts[a], room, nick, &p, &d), &d, "cycle occ");
		free(pl);
	}
	for (i = 0; i < 5; i++) {
		char *pl = message_payload(room, i);
		mm_message m;
		memset(&m, 0, sizeof m);
		m.type = MM_MSG_GROUPCHAT;
		m.has_body = 1;
		m.payload = pl;
		m.stamp = 1e9 + (double)i;
		for (a = first; a < first + count; a++)
			check(mm_room_message(s, accounts[a], room, "sender", &m, &d), &d, "cycle msg");
		free(pl);
	}
	for (a = first; a < first + count; a++) {
		mm_presence p;
		for (k = 0; k < D; k++)
			check(mm_session_leave(s, accounts[a], resources[k], room, "l", &d), &d,
				"cycle leave");
		memset(&p, 0, sizeof p);
		p.type = MM_PRES_UNAVAILABLE;
		p.status = MM_STATUS_110;
		check(mm_room_presence(s, accounts[a], room, nicks[a], &p, &d), &d, "cycle left");
	}
	mm_take_dirty(s, 1, NULL, NULL);
}

int main(int argc, char **argv)
{
	const long A = env_long("MINIMIX_BENCH_ACCOUNTS", 20000);
	const long J = env_long("MINIMIX_BENCH_ROOMS", 10);
	const long D = env_long("MINIMIX_BENCH_SESSIONS", 3);
	const long S = env_long("MINIMIX_BENCH_ROOM_SIZE", 100);
	const long rounds = env_long("MINIMIX_BENCH_ROUNDS", 3);
	const long OA = env_long("MINIMIX_BENCH_SHARED_ACCOUNTS", 1000);
	const long OO = env_long("MINIMIX_BENCH_SHARED_OCCUPANTS", 1000);
	const long CA = env_long("MINIMIX_BENCH_CYCLE_ACCOUNTS", 100);
	const long C = env_long("MINIMIX_BENCH_CYCLES", 100);
	const long nacc = A > OA + CA ? A : OA + CA;
	const size_t nrooms = (size_t)((A + S - 1) / S * J);
	const long M = A * J; /* memberships */
	double t0 = now_ns(), t, h0, h1, rss0, first_ns = 0, self_ns = 0, later_ns = 0;
	mm_limits lim;
	mm_state *s;
	mm_decision d;
	mm_stats st;
	long a, j, k, r, i, g;
	char **selfs;
	size_t ri;

	if (D > (long)MAX_SESSIONS || A % S != 0) {
		fprintf(stderr, "bench_core: sessions at most %zu; accounts a multiple "
			"of room size\n", MAX_SESSIONS);
		return 2;
	}
	accounts = xmalloc((size_t)nacc * sizeof *accounts);
	nicks = xmalloc((size_t)nacc * sizeof *nicks);
	for (a = 0; a < nacc; a++) {
		accounts[a] = xprintf("u%ld@localhost", a);
		nicks[a] = xprintf("u%ld", a);
	}
	rooms = xmalloc(nrooms * sizeof *rooms);
	for (ri = 0; ri < nrooms; ri++)
		rooms[ri] = xprintf("room%zu@conference.localhost", ri);

	printf("C core (minimix.o): %ld accounts x %ld rooms x %ld sessions = %ld memberships, "
		"%ld local accounts per room\n", A, J, D, M, S);

	/* ---- joins ---- */
	mm_limits_default(&lim);
	h0 = heap_bytes();
	rss0 = vmrss_bytes();
	s = mm_state_new(&lim);
	/* group by group: the first sessions join, the room answers each, then
	 * the other sessions join; arguments are built before the clock runs */
	selfs = xmalloc((size_t)(S * J) * sizeof *selfs);
	for (g = 0; g < A / S; g++) {
		for (a = g * S; a < g * S + S; a++)
			for (j = 0; j < J; j++)
				selfs[(a - g * S) * J + j] = self_payload(rooms[room_of(a, j, S, J)],
					nicks[a]);
		t = now_ns();
		for (a = g * S; a < g * S + S; a++)
			for (j = 0; j < J; j++)
				check(mm_session_join(s, accounts[a], resources[0],
					rooms[room_of(a, j, S, J)], nicks[a], "j0", NULL, &d), &d, "join");
		first_ns += now_ns() - t;
		t = now_ns();
		for (a = g * S; a < g * S + S; a++)
			for (j = 0; j < J; j++) {
				mm_presence p = self_presence(selfs[(a - g * S) * J + j]);
				check(mm_room_presence(s, accounts[a], rooms[room_of(a, j, S, J)],
					nicks[a], &p, &d), &d, "self-presence");
			}
		self_ns += now_ns() - t;
		t = now_ns();
		for (a = g * S; a < g * S + S; a++)
			for (j = 0; j < J; j++)
				for (k = 1; k < D; k++)
					check(mm_session_join(s, accounts[a], resources[k],
						rooms[room_of(a, j, S, J)], nicks[a], "jk", NULL, &d), &d,
						"later join");
		later_ns += now_ns() - t;
		for (i = 0; i < S * J; i++)
			free(selfs[i]);
	}
	free(selfs);
	mm_take_dirty(s, 1, NULL, NULL); /* the shim writes them at once */
	h1 = heap_bytes();
	mm_state_stats(s, &st);
	if ((long)st.memberships != M || (long)st.sessions != M * D) {
		fprintf(stderr, "bench_core: %zu memberships, %zu sessions?\n",
			st.memberships, st.sessions);
		return 1;
	}
	printf("\n");
	report("join_first_ns", "first session's join (account joins)", first_ns / M, "ns");
	report("self_presence_ns", "room's self-presence completes the join", self_ns / M, "ns");
	if (D > 1)
		report("join_later_ns", "later session's join (replay from cache)",
			later_ns / (M * (D - 1)), "ns");
	report("join_ns", "join, per session (all of the above / sessions)",
		(first_ns + self_ns + later_ns) / (M * D), "ns");
	report("bytes_per_membership", "heap per membership, D sessions, after joins",
		(h1 - h0) / M, "B");
	report("rss_per_membership", "RSS per membership, after joins",
		(vmrss_bytes() - rss0) / M, "B");

	/* ---- fan-out: a room message to each local account ----
	 * Cold: every room in turn, so that a membership's data has left the
	 * caches by the time its next message comes (as in a busy server).
	 * Hot: one room's accounts again and again (the decision's own cost).
	 * Both with the payload (kept for catch-up, as the shim passes it) and
	 * without (routing alone), each pass on its own. */
	{
		double with_ns = 0, bare_ns = 0, warm_ns = 0, hot_ns = 0, hot_bare_ns = 0;
		long seq = 0, calls = 0, warm_calls = 0, hot_calls = 0, expected = 0;
		const long hot_rounds = 2000;
		size_t delivered = 0;
		int pass;
		/* pass 0 warms up: each membership's first message allocates its
		 * catch-up ring; it is reported apart */
		for (pass = 0; pass <= 2; pass++) {
			long nr = pass == 0 ? 1 : rounds;
			for (r = 0; r < nr; r++) {
				for (ri = 0; ri < nrooms; ri++) {
					g = (long)ri / J;
					t = fanout_message(s, rooms[ri], g * S, S, ++seq, pass < 2,
						&delivered);
					if (pass == 0) {
						warm_ns += t;
						warm_calls += S;
					} else if (pass == 1) {
						with_ns += t;
						calls += S;
					} else {
						bare_ns += t;
					}
					expected += S;
				}
				mm_take_dirty(s, 1, NULL, NULL);
			}
		}
		/* hot: the first room's accounts, over and over */
		for (pass = 1; pass <= 2; pass++) {
			for (r = 0; r < hot_rounds; r++) {
				t = fanout_message(s, rooms[0], 0, S, ++seq, pass == 1, &delivered);
				if (pass == 1) {
					hot_ns += t;
					hot_calls += S;
				} else {
					hot_bare_ns += t;
				}
				expected += S;
			}
			mm_take_dirty(s, 1, NULL, NULL);
		}
		if (delivered != (size_t)expected * (size_t)D) {
			fprintf(stderr, "bench_core: %zu deliveries, expected %ld\n", delivered,
				expected * D);
			return 1;
		}
		report("fanout_ns", "fan-out decision per account per message "
			"(payload kept for catch-up)", with_ns / calls, "ns");
		report("fanout_session_ns", "  ... per delivered session",
			with_ns / calls / D, "ns");
		report("fanout_first_ns", "  ... a membership's first message (allocates its ring)",
			warm_ns / warm_calls, "ns");
		report("fanout_bare_ns", "fan-out decision per account, no payload (routing only)",
			bare_ns / calls, "ns");
		report("fanout_hot_ns", "  the same in one room, data in cache: with payload",
			hot_ns / hot_calls, "ns");
		report("fanout_hot_bare_ns", "  ... routing only",
			hot_bare_ns / hot_calls, "ns");
		report("bytes_per_membership_hist", "heap per membership, with catch-up history",
			(heap_bytes() - h0) / M, "B");
	}

	/* ---- occupant presences to each local account ---- */
	{
		double add_ns = 0, upd_ns = 0, del_ns = 0;
		long calls = 0;
		const long occ = 2;
		mm_presence p;
		for (ri = 0; ri < nrooms; ri++) {
			g = (long)ri / J;
			for (i = 0; i < occ; i++) {
				char nick[32];
				char *avail, *away;
				snprintf(nick, sizeof nick, "remote%ld", i);
				avail = occupant_payload(rooms[ri], nick, NULL);
				away = occupant_payload(rooms[ri], nick, "away");
				memset(&p, 0, sizeof p);
				p.payload = avail;
				t = now_ns();
				for (a = g * S; a < g * S + S; a++)
					mm_room_presence(s, accounts[a], rooms[ri], nick, &p, &d);
				add_ns += now_ns() - t;
				p.payload = away;
				t = now_ns();
				for (a = g * S; a < g * S + S; a++)
					mm_room_presence(s, accounts[a], rooms[ri], nick, &p, &d);
				upd_ns += now_ns() - t;
				p.type = MM_PRES_UNAVAILABLE;
				p.payload = NULL;
				t = now_ns();
				for (a = g * S; a < g * S + S; a++)
					mm_room_presence(s, accounts[a], rooms[ri], nick, &p, &d);
				del_ns += now_ns() - t;
				calls += S;
				free(avail);
				free(away);
			}
		}
		report("presence_new_ns", "occupant presence per account: new occupant (cached)",
			add_ns / calls, "ns");
		report("presence_update_ns", "occupant presence per account: changed",
			upd_ns / calls, "ns");
		report("presence_gone_ns", "occupant presence per account: unavailable",
			del_ns / calls, "ns");
	}
	t = now_ns();
	mm_state_free(s);
	report("free_ns", "mm_state_free, per membership", (now_ns() - t) / M, "ns");

	/* ---- shared occupant cache: OA local accounts, OO occupants ---- */
	{
		const char *room = "big@conference.localhost";
		double base, joined, tt = 0;
		s = mm_state_new(&lim);
		base = heap_bytes();
		for (a = 0; a < OA; a++) {
			char *self = self_payload(room, nicks[a]);
			mm_presence p = self_presence(self);
			check(mm_session_join(s, accounts[a], resources[0], room, nicks[a], "j",
				NULL, &d), &d, "shared join");
			check(mm_room_presence(s, accounts[a], room, nicks[a], &p, &d), &d,
				"shared self");
			free(self);
		}
		mm_take_dirty(s, 1, NULL, NULL);
		joined = heap_bytes();
		for (i = 0; i < OO; i++) {
			char nick[32];
			char *pl;
			mm_presence p;
			snprintf(nick, sizeof nick, "occupant%ld", i);
			pl = occupant_payload(room, nick, NULL);
			memset(&p, 0, sizeof p);
			p.payload = pl;
			t = now_ns();
			for (a = 0; a < OA; a++)
				mm_room_presence(s, accounts[a], room, nick, &p, &d);
			tt += now_ns() - t;
			free(pl);
		}
		mm_state_stats(s, &st);
		printf("\n%ld local accounts in one room with %ld occupants "
			"(%zu cached entries, %zu distinct payloads, %zu payload bytes):\n",
			OA, OO, st.occupants, st.payloads, st.payload_bytes);
		report("shared_cache_bytes", "occupant cache, all accounts (heap)",
			heap_bytes() - joined, "B");
		report("shared_entry_bytes", "  ... per cached entry (account x occupant)",
			(heap_bytes() - joined) / ((double)OA * OO), "B");
		report("shared_payload_bytes", "  distinct presence bytes held once",
			(double)st.payload_bytes, "B");
		report("shared_unshared_bytes", "  the same payloads if each account kept a copy",
			(double)st.payload_bytes * OA, "B");
		report("shared_presence_ns", "  time per occupant presence per account",
			tt / ((double)OA * OO), "ns");
		(void)base;
		mm_state_free(s);
	}

	/* ---- join/leave cycles: no growth ---- */
	{
		double after1, half = 0, afterN;
		s = mm_state_new(&lim);
		cycle(s, OA, CA, D, 10);
		after1 = heap_bytes();
		for (i = 1; i < C; i++) {
			cycle(s, OA, CA, D, 10);
			if (i == C / 2)
				half = heap_bytes();
		}
		afterN = heap_bytes();
		mm_state_stats(s, &st);
		printf("\n%ld join/leave cycles of %ld accounts x %ld sessions "
			"(10 occupants, 5 messages each):\n", C, CA, D);
		report("cycle_growth_bytes", "heap growth from cycle 1 to the last",
			afterN - after1, "B");
		if (C >= 4)
			report("cycle_growth_half_bytes", "heap growth over the second half of the cycles",
				afterN - half, "B");
		report("cycle_left_memberships", "memberships left afterwards",
			(double)st.memberships, "");
		mm_state_free(s);
	}

	printf("\n(%.1f s)\n", (now_ns() - t0) / 1e9);
	if (argc > 1)
		write_json(argv[1], A, J, D, S, rounds, OA, OO, CA, C, (now_ns() - t0) / 1e9);
	for (a = 0; a < nacc; a++) {
		free(accounts[a]);
		free(nicks[a]);
	}
	for (ri = 0; ri < nrooms; ri++)
		free(rooms[ri]);
	free(accounts);
	free(nicks);
	free(rooms);
	return 0;
}
