/*
 * fuzz_core.c - libFuzzer harness for the mod_minimix core.
 *
 * The input is read as a sequence of operations over a small universe
 * (2 accounts, 3 resources, 3 rooms, a few nicks and ids), so that random
 * bytes make joins, leaves, room answers, kicks, IQs and restarts collide.
 * After every step the harness checks invariants through the public API;
 * at the end everything leaves and the state must be empty again.
 *
 *   make fuzz                      # builds fuzz/fuzz_core with clang
 *   ./fuzz/fuzz_core -max_total_time=600 fuzz/corpus
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../minimix.h"

static const char *const accounts[] = {"alice@example.org", "bob@example.org"};
static const char *const resources[] = {"phone", "laptop", "tablet"};
static const char *const rooms[] = {"r1@muc.example.org", "r2@muc.example.org",
	"r3@elsewhere.example"};
static const char *const nicks[] = {"alice", "ally", "bob", "carol", ""};
static const char *const ids[] = {"j1", "j2", "m1", "x", NULL};
static const char *const shows[] = {NULL, "chat", "away", "xa", "dnd"};
static const char *const conds[] = {"not-acceptable", "conflict", "forbidden",
	"service-unavailable", "remote-server-not-found", "item-not-found", NULL};
static const char *const payloads[] = {
	"<presence from='r1@muc.example.org/bob'/>",
	"<presence from='r1@muc.example.org/alice'><x xmlns='http://jabber.org/protocol/muc#user'><status code='110'/></x></presence>",
	"<message type='groupchat'><body>hi</body></message>",
	"<message type='groupchat'><subject>s</subject></message>",
	NULL,
};
static const int codes[] = {110, 201, 210, 301, 303, 307, 321, 322, 332, 333};

#define PICK(arr, b) (arr[(b) % (sizeof arr / sizeof arr[0])])

struct input {
	const uint8_t *p;
	size_t n;
};

static unsigned take(struct input *in)
{
	if (in->n == 0)
		return 0;
	in->n--;
	return *in->p++;
}

static void fail(const char *what)
{
	fprintf(stderr, "invariant broken: %s\n", what);
	abort(); /* the fuzzer's way to report; never in the core */
}

static void check_decision(mm_err err, const mm_decision *d)
{
	size_t i;
	if (err != MM_OK) {
		if (d->handled || d->n)
			fail("a refusal carries actions");
		return;
	}
	if (!d->handled && d->n)
		fail("actions on a stanza that is not handled");
	for (i = 0; i < d->n; i++) {
		const mm_action *a = &d->actions[i];
		if (a->room == NULL)
			fail("action without room");
		if ((a->op == MM_OP_DELIVER || a->op == MM_OP_REPLAY
				|| a->op == MM_OP_REFLECT_LEAVE || a->op == MM_OP_CARBON
				|| a->op == MM_OP_IQ_ERROR || a->op == MM_OP_JOIN_ERROR
				|| a->op == MM_OP_SELF_STUB || a->op == MM_OP_SUBJECT_STUB)
				&& a->resource == NULL)
			fail("delivery without a session");
		if (a->op == MM_OP_REPLAY && a->payload == NULL)
			fail("replay without payload");
		if (a->op == MM_OP_SELF_STUB && (a->nick == NULL || a->affiliation == NULL
				|| a->role == NULL))
			fail("a stub self-presence without nick, affiliation or role");
		if (a->op == MM_OP_REPLAY_LOG) {
			size_t j;
			if (a->resource == NULL || a->nspans == 0 || a->nspans > MM_MAX_SPANS
					|| a->spans == NULL)
				fail("a catch-up from the log without a session or spans");
			if (a->maxstanzas <= 0 || a->maxstanzas > 7)
				fail("a catch-up from the log beyond history_max");
			for (j = 0; j < a->nspans; j++)
				(void)a->spans[j].from;
		}
		if ((a->op == MM_OP_SEND_JOIN || a->op == MM_OP_SEND_PRESENCE)
				&& (a->nick == NULL || *a->nick == '\0'))
			fail("join or presence without a nick");
		/* touch every string: ASan finds dangling ones */
		if (a->resource)
			(void)strlen(a->resource);
		if (a->payload)
			(void)strlen(a->payload);
		if (a->id)
			(void)strlen(a->id);
	}
}

struct count {
	size_t memberships, sessions;
	const char *account;
	const mm_state *st;
};

static int count_session(const char *resource, int joined, void *ud)
{
	(void)joined;
	if (resource == NULL || *resource == '\0')
		*(int *)ud = 1;
	return 0;
}

static int count_membership(const mm_membership_info *info, void *ud)
{
	struct count *c = ud;
	int bad = 0;
	c->memberships++;
	c->sessions += info->sessions;
	if (mm_membership_sessions(c->st, c->account, info->room, count_session, &bad)
			!= info->sessions || bad)
		fail("session list disagrees with the membership");
	if (mm_membership_state(c->st, c->account, info->room) != (int)info->state)
		fail("membership state disagrees");
	if (info->nick == NULL || *info->nick == '\0')
		fail("membership without a nick");
	/* spans: bounded, ordered, at most one open (the last), open iff
	 * the account is in or joining again by itself */
	{
		size_t i;
		int open = info->nspans > 0 && info->spans[info->nspans - 1].to < 0;
		if (info->nspans > MM_MAX_SPANS)
			fail("more spans than MM_MAX_SPANS");
		for (i = 0; i < info->nspans; i++) {
			const mm_span *sp = &info->spans[i];
			if (!(sp->from >= 0))
				fail("a span from before 1970");
			if (sp->to < 0 && i != info->nspans - 1)
				fail("an open span that is not the last");
			if (sp->to >= 0 && sp->to < sp->from)
				fail("a span that ends before it starts");
			if (i > 0 && sp->from < info->spans[i - 1].to)
				fail("spans out of order");
		}
		if (info->state == MM_JOINED && !open)
			fail("joined without an open span");
		if (open && info->state != MM_JOINED && info->state != MM_REJOIN_WAIT
				&& info->state != MM_REJOINING)
			fail("an open span while the account is not in");
	}
	return 0;
}

/*
 * Every transition must be one of the table's, and the states seen through
 * mm_membership_state() before and after each step must differ only by the
 * transitions the core reported.
 */
#define NACC (sizeof accounts / sizeof accounts[0])
#define NROOM (sizeof rooms / sizeof rooms[0])
static int expected[NACC][NROOM];

static size_t index_of(const char *const *arr, size_t n, const char *s)
{
	size_t i;
	for (i = 0; i < n; i++)
		if (strcmp(arr[i], s) == 0)
			return i;
	fail("transition of an unknown account or room");
	return 0;
}

static void observe(const char *account, const char *room, int from, int event,
		int to, void *ud)
{
	int *cell = &expected[index_of(accounts, NACC, account)][index_of(rooms, NROOM, room)];
	(void)ud;
	if (to == MM_REFUSED || mm_transition(from, event) != to)
		fail("a transition that is not in the table");
	if (*cell != from)
		fail("a transition from a state the membership was not in");
	*cell = to;
}

static void snapshot(const mm_state *st)
{
	size_t a, r;
	for (a = 0; a < NACC; a++)
		for (r = 0; r < NROOM; r++)
			expected[a][r] = mm_membership_state(st, accounts[a], rooms[r]);
}

static void check_transitions(const mm_state *st)
{
	size_t a, r;
	for (a = 0; a < NACC; a++)
		for (r = 0; r < NROOM; r++)
			if (expected[a][r] != mm_membership_state(st, accounts[a], rooms[r]))
				fail("a state change without a transition");
}

static void check_state(const mm_state *st)
{
	mm_stats s;
	struct count c = {0, 0, NULL, st};
	size_t i, with = 0;
	mm_state_stats(st, &s);
	for (i = 0; i < sizeof accounts / sizeof accounts[0]; i++) {
		size_t before = c.memberships;
		c.account = accounts[i];
		mm_account_memberships(st, accounts[i], count_membership, &c);
		if (c.memberships > before)
			with++;
	}
	if (c.memberships != s.memberships)
		fail("membership count");
	if (c.sessions != s.sessions)
		fail("session count");
	if (with != s.accounts)
		fail("account count");
	if (s.memberships > 2 * 3)
		fail("more memberships than rooms");
	if (s.cached_bytes > s.payload_bytes)
		fail("more bytes cached than pooled");
}

static void step(mm_state *st, struct input *in, double *now)
{
	mm_decision d;
	mm_err err;
	unsigned op = take(in);
	const char *acc = PICK(accounts, take(in));
	const char *res = PICK(resources, take(in));
	const char *room = PICK(rooms, take(in));
	const char *nick = PICK(nicks, take(in));
	const char *id = PICK(ids, take(in));

	snapshot(st);
	switch (op % 16) {
	case 0: case 1: {
		mm_join req;
		memset(&req, 0, sizeof req);
		req.nick = nick;
		req.id = id;
		req.password = take(in) & 1 ? "secret" : NULL;
		req.show = PICK(shows, take(in));
		req.presence = take(in) & 1 ? "<presence><show>away</show></presence>" : NULL;
		req.history.requested = take(in) & 1;
		req.history.maxstanzas = (long)take(in) - 128;
		req.history.maxchars = (long)take(in) * 8 - 512;
		req.history.seconds = (double)take(in) - 64;
		req.history.since = (double)take(in) - 64;
		req.now = *now;
		err = mm_session_join_req(st, acc, res, room, &req, &d);
		break;
	}
	case 2:
		err = mm_session_leave(st, acc, res, room, id, &d);
		break;
	case 3:
		err = mm_session_presence(st, acc, res, room, take(in) & 1 ? nick : NULL,
			id, PICK(shows, take(in)), PICK(payloads, take(in)), &d);
		break;
	case 4:
		err = mm_session_message(st, acc, res, room, take(in) & 1 ? nick : NULL,
			(mm_msg_type)(take(in) % 5), id, &d);
		break;
	case 5:
		err = mm_session_iq(st, acc, res, room, take(in) & 1 ? nick : NULL,
			id ? id : "q", take(in) & 1 ? "qid" : NULL, take(in) & 1, *now, &d);
		break;
	case 6:
		err = mm_session_gone(st, acc, res, &d);
		break;
	case 7: case 8: case 9: {
		mm_presence p;
		unsigned n = take(in) % 4, k;
		memset(&p, 0, sizeof p);
		p.type = (mm_pres_type)(take(in) % 3);
		for (k = 0; k < n; k++)
			p.status |= mm_status_bit(PICK(codes, take(in)));
		if (take(in) & 1)
			p.status |= MM_STATUS_110;
		p.new_nick = take(in) & 1 ? PICK(nicks, take(in)) : NULL;
		p.affiliation = take(in) & 1 ? "member" : NULL;
		p.destroyed = (take(in) & 7) == 0;
		p.condition = PICK(conds, take(in));
		p.id = id;
		p.payload = PICK(payloads, take(in));
		err = mm_room_presence(st, acc, room, take(in) & 3 ? nick : NULL, &p, &d);
		break;
	}
	case 10: case 11: {
		mm_message m;
		memset(&m, 0, sizeof m);
		m.type = (mm_msg_type)(take(in) % 5);
		m.has_subject = take(in) & 1;
		m.has_body = take(in) & 1;
		m.id = id;
		m.queryid = take(in) & 1 ? "qid" : NULL;
		m.stanza_id = take(in) & 1 ? "sid" : NULL;
		m.stamp = *now;
		m.delayed = take(in) & 1;
		m.payload = PICK(payloads, take(in));
		err = mm_room_message(st, acc, room, take(in) & 1 ? nick : NULL, &m, &d);
		if ((take(in) & 7) == 0 && mm_room_kept(st, room, "sid") != NULL) {
			/* a retraction: the rings keep a tombstone (any text) instead */
			const char *tomb = PICK(payloads, take(in));
			size_t replaced;
			mm_err werr = mm_room_withdraw(st, room, "sid", tomb, &replaced);
			if (werr != (tomb ? MM_OK : MM_EINVAL))
				fail("mm_room_withdraw: not its contract");
		}
		break;
	}
	case 12: {
		/* answer with whatever id the core used: a ping or a guess */
		char guess[48];
		snprintf(guess, sizeof guess, "mmx-%u", take(in));
		err = mm_room_iq(st, acc, room, take(in) & 1 ? nick : NULL, guess,
			take(in) & 1, PICK(conds, take(in)), &d);
		break;
	}
	case 13:
		/* time passes: up to about an hour, so every wait can end */
		*now += take(in) * (take(in) & 1 ? 16 : 1);
		if (take(in) & 1) {
			/* the caller's clock, a fraction of a second on, or back */
			mm_state_now(st, *now + (double)take(in) / 256.0 - (take(in) & 1 ? 2 : 0));
			memset(&d, 0, sizeof d);
			err = MM_OK;
			break;
		}
		err = mm_tick(st, *now, &d);
		break;
	case 14:
		if ((take(in) & 7) == 0) {
			/* a reloaded configuration: rings and byte budgets change */
			mm_limits lim;
			memset(&lim, 0, sizeof lim);
			lim.max_rooms = 1 + (take(in) & 3);
			lim.max_sessions = 1 + (take(in) & 3);
			lim.max_occupants = 1 + (take(in) & 3);
			lim.max_pending = 1 + (take(in) & 3);
			lim.max_iqs = 2;
			lim.history_size = 1 + (take(in) & 3);
			lim.history_default = 2;
			lim.history_max = 7;
			lim.log_history = take(in) & 1;
			lim.max_nick_bytes = 8;
			lim.join_timeout = 30;
			lim.rejoin_delay = 2;
			lim.rejoin_grace = 1 + (take(in) & 63);
			lim.max_membership_bytes = 64 + 64 * (take(in) & 7);
			lim.max_account_bytes = 128 + 64 * (take(in) & 7);
			lim.max_cache_bytes = 128 + 128 * (take(in) & 7);
			err = mm_state_set_limits(st, &lim);
			d.handled = 0;
			d.n = 0;
			break;
		}
		err = mm_ping_later(st, take(in) & 1 ? "muc.example.org" : "elsewhere.example",
			take(in) % 8);
		memset(&d, 0, sizeof d);
		break;
	default:
		if ((take(in) & 3) == 0) {
			err = mm_ping_due(st, take(in) & 1 ? "muc.example.org" : NULL, *now, &d);
		} else if ((take(in) & 3) == 0) {
			err = mm_account_leave(st, acc, room, &d);
		} else if ((take(in) & 3) == 0) {
			err = mm_session_reachable(st, acc, res, take(in) & 1);
			memset(&d, 0, sizeof d);
		} else if ((take(in) & 3) == 0) {
			/* stored spans, well-formed or not */
			mm_span sp[3];
			size_t k, n = take(in) % 4;
			for (k = 0; k < n; k++) {
				sp[k].from = (double)(take(in) * 10);
				sp[k].to = take(in) & 1 ? -1.0 : sp[k].from + (double)take(in) - 8;
			}
			err = mm_membership_set_spans(st, acc, room, sp, n);
			memset(&d, 0, sizeof d);
			if (err != MM_OK)
				err = MM_OK;
		} else if (take(in) & 1) {
			err = mm_account_restore(st, acc, room, *nick ? nick : "x",
				take(in) & 1 ? "pw" : NULL, id, (double)take(in), &d);
		} else {
			err = mm_delivery_failed(st, acc, room, &d);
			(void)mm_take_dirty(st, 1 + (take(in) & 1), NULL, NULL);
		}
		break;
	}
	check_decision(err, &d);
	check_transitions(st);
	check_state(st);
}

/* Everything leaves: every session goes, every room drops the account. */
static void drain(mm_state *st)
{
	mm_decision d;
	mm_presence p;
	mm_stats s;
	size_t a, r, i;
	snapshot(st);
	for (a = 0; a < 2; a++)
		for (i = 0; i < 3; i++)
			mm_session_gone(st, accounts[a], resources[i], &d);
	memset(&p, 0, sizeof p);
	p.type = MM_PRES_UNAVAILABLE;
	p.status = MM_STATUS_110 | MM_STATUS_307;
	for (a = 0; a < 2; a++)
		for (r = 0; r < 3; r++)
			mm_room_presence(st, accounts[a], rooms[r], "x", &p, &d);
	mm_tick(st, 1e18, &d);
	check_transitions(st);
	mm_take_dirty(st, 1, NULL, NULL);
	mm_state_stats(st, &s);
	if (s.accounts || s.memberships || s.sessions || s.occupants || s.payloads
			|| s.payload_bytes || s.cached_bytes || s.iqs)
		fail("state not empty after everything left");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	mm_limits lim;
	mm_state *st;
	struct input in = {data, size};
	double now = 1000;
	int steps = 0;

	/* the mention test reads any bytes as a body and a nick (0..15 bytes) */
	if (size > 0 && 1 + (size_t)(data[0] % 16) <= size) {
		size_t nl = data[0] % 16;
		(void)mm_mention((const char *)data + 1 + nl, size - 1 - nl,
				(const char *)data + 1, nl);
	}

	memset(&lim, 0, sizeof lim);
	lim.max_rooms = 2;        /* small limits: the fuzzer hits them */
	lim.max_sessions = 2;
	lim.max_occupants = 3;
	lim.max_pending = 2;
	lim.max_iqs = 2;
	lim.history_size = 3;
	lim.history_default = 2;
	lim.history_max = 7;
	lim.log_history = 1;
	lim.max_nick_bytes = 8;
	lim.join_timeout = 30;
	lim.rejoin_delay = 2;
	lim.rejoin_grace = 20;    /* a few refused re-joins close a span */
	lim.max_membership_bytes = 400; /* a few payloads: the fuzzer hits them */
	lim.max_account_bytes = 600;
	lim.max_cache_bytes = 500;
	st = mm_state_new(&lim);
	if (st == NULL)
		return 0;
	mm_state_observe(st, observe, NULL);
	while (in.n > 0 && steps++ < 400)
		step(st, &in, &now);
	drain(st);
	mm_state_free(st);
	return 0;
}
