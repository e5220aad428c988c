/*
 * check_minimix.c - Check unit tests for the pure C core (minimix.h).
 *
 * One TCase per concern; every test gets a fresh state from a checked
 * fixture.  The tests follow the contract in minimix.h, not the
 * implementation: where the header leaves a detail open (for example the
 * order of non-self occupants in a replay) the tests accept every reading
 * the header allows and say so in a comment.
 *
 * Build (no Lua include path on purpose; the core knows nothing of Lua):
 *   cc -std=c99 -Wall -Wextra -pedantic -Wshadow -Wformat=2 -I. \
 *      -o test/check_minimix test/check_minimix.c minimix.c \
 *      $(pkg-config --cflags --libs check) -lidn2
 */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <limits.h>
#include <string.h>

#include <check.h>

#include "minimix.h"

#define ACC  "alice@example.org"
#define ACC2 "bob@example.net"
#define ROOM  "room@conference.example.org"
#define ROOM2 "other@conference.example.org"
#define ROOM3 "third@conference.example.org"
#define R1 "phone"
#define R2 "laptop"
#define R3 "tablet"

#define MUC_USER "http://jabber.org/protocol/muc#user"
/* A serialized occupant presence from ROOM (no 'to', as the header asks). */
#define P_PRES(nick, inner) \
	"<presence from='" ROOM "/" nick "'><x xmlns='" MUC_USER "'>" \
	inner "</x></presence>"
#define P_BOB P_PRES("bob", "<item affiliation='member' role='participant'/>")
#define P_BOB_AWAY \
	"<presence from='" ROOM "/bob'><show>away</show><x xmlns='" \
	MUC_USER "'><item affiliation='member' role='participant'/></x>" \
	"</presence>"
#define P_CAROL P_PRES("carol", "<item affiliation='none' role='visitor'/>")
#define P_DAVE P_PRES("dave", "<item affiliation='member' role='participant'/>")
#define P_ROBERT \
	P_PRES("robert", "<item affiliation='member' role='participant'/>")
#define P_SELF \
	P_PRES("alice", "<item affiliation='owner' role='moderator'/>" \
	"<status code='110'/>")
#define P_SELF2 \
	P_PRES("alicia", "<item affiliation='owner' role='moderator'/>" \
	"<status code='110'/>")
#define P_SUBJECT \
	"<message type='groupchat' from='" ROOM "'><subject>Hi</subject>" \
	"</message>"
#define P_BODY \
	"<message type='groupchat' from='" ROOM "/bob'><body>hello</body>" \
	"</message>"
/* When the room got the messages room_msg() reports (mm_message.stamp). */
#define T_MSG 1700000000.0

static mm_state *st;
static mm_decision d;

/* ---- transitions ---------------------------------------------------------
 * Every state fixture observes the core's transitions: each must be one the
 * table allows.  The last ones are kept for the lifecycle tests.
 */
struct seen_transition {
	char room[64];
	int from, event, to;
};
static struct seen_transition obs[32];
static size_t nseen;

static void observe(const char *account, const char *room, int from,
		int event, int to, void *ud)
{
	(void)ud;
	(void)account;
	ck_assert_msg(to != MM_REFUSED && mm_transition(from, event) == to,
			"%s: %s -%s-> %s is not in the table", room,
			mm_mstate_name(from), mm_mevent_name(event), mm_mstate_name(to));
	if (nseen < sizeof obs / sizeof obs[0]) {
		snprintf(obs[nseen].room, sizeof obs[nseen].room, "%s", room);
		obs[nseen].from = from;
		obs[nseen].event = event;
		obs[nseen].to = to;
		nseen++;
	}
}

static mm_state *new_state(const mm_limits *l)
{
	mm_state *s = mm_state_new(l);
	ck_assert_ptr_nonnull(s);
	mm_state_observe(s, observe, NULL);
	nseen = 0;
	return s;
}

/* ---- fixtures ----------------------------------------------------------- */

static void setup_default(void)
{
	st = new_state(NULL);
	memset(&d, 0, sizeof d);
}

/* Small limits so that every limit is cheap to hit. */
static void small_limits(mm_limits *l)
{
	memset(l, 0, sizeof *l);
	l->max_rooms = 2;
	l->max_sessions = 2;
	l->max_occupants = 3;
	l->max_pending = 2;
	l->max_nick_bytes = 8;
}

static void setup_small(void)
{
	mm_limits l;

	small_limits(&l);
	st = new_state(&l);
	memset(&d, 0, sizeof d);
}

static void teardown(void)
{
	mm_state_free(st);
	st = NULL;
}

/* Replace the fixture's state by one with other limits (for one test). */
static void reset_state(const mm_limits *l)
{
	mm_state_free(st);
	st = new_state(l);
}

/* ---- decision helpers --------------------------------------------------- */

static const char *op_name(mm_op op)
{
	switch (op) {
	case MM_OP_SEND_JOIN: return "SEND_JOIN";
	case MM_OP_SEND_AS_ACCOUNT: return "SEND_AS_ACCOUNT";
	case MM_OP_SEND_LEAVE: return "SEND_LEAVE";
	case MM_OP_SEND_PRESENCE: return "SEND_PRESENCE";
	case MM_OP_REJOIN_LATER: return "REJOIN_LATER";
	case MM_OP_DELIVER: return "DELIVER";
	case MM_OP_REPLAY: return "REPLAY";
	case MM_OP_REPLAY_LOG: return "REPLAY_LOG";
	case MM_OP_REFLECT_LEAVE: return "REFLECT_LEAVE";
	case MM_OP_CARBON: return "CARBON";
	case MM_OP_IQ_ERROR: return "IQ_ERROR";
	case MM_OP_SEND_PING: return "SEND_PING";
	case MM_OP_PING_LATER: return "PING_LATER";
	case MM_OP_DROP: return "DROP";
	case MM_OP_JOIN_ERROR: return "JOIN_ERROR";
	case MM_OP_EVENT: return "EVENT";
	case MM_OP_SELF_STUB: return "SELF_STUB";
	case MM_OP_SUBJECT_STUB: return "SUBJECT_STUB";
	}
	return "?";
}

static int str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static const char *nn(const char *s)
{
	return s ? s : "(null)";
}

/* A readable rendering of a decision, for failure messages. */
static const char *describe(const mm_decision *dd)
{
	static char buf[8192];
	size_t i, len;

	len = (size_t)snprintf(buf, sizeof buf, "{handled=%d n=%zu event=%s/%s",
			dd->handled, dd->n, nn(dd->event), nn(dd->reason));
	for (i = 0; i < dd->n && len < sizeof buf; i++) {
		const mm_action *a = &dd->actions[i];
		len += (size_t)snprintf(buf + len, sizeof buf - len,
				" [%s room=%s res=%s nick=%s id=%s codes=%u fr=%d delay=%u"
				" stamp=%.17g since=%.17g%s%s]",
				op_name(a->op), nn(a->room), nn(a->resource), nn(a->nick),
				nn(a->id), a->add_codes, a->from_request, a->delay, a->stamp,
				a->since,
				a->payload ? " payload=" : "",
				a->payload ? a->payload : "");
	}
	if (len < sizeof buf)
		snprintf(buf + len, sizeof buf - len, "}");
	return buf;
}

static void expect_n(const mm_decision *dd, int handled, size_t n)
{
	ck_assert_msg(dd->handled == handled && dd->n == n,
			"expected handled=%d n=%zu, got %s", handled, n, describe(dd));
	ck_assert_msg(n == 0 || dd->actions != NULL, "actions NULL with n=%zu", n);
}

static void expect_not_handled(const mm_decision *dd)
{
	expect_n(dd, 0, 0);
}

/* The first action with `op` (and `resource`, unless NULL), or NULL. */
static const mm_action *find_action(const mm_decision *dd, mm_op op,
		const char *resource)
{
	size_t i;

	for (i = 0; i < dd->n; i++) {
		const mm_action *a = &dd->actions[i];
		if (a->op == op && (resource == NULL || str_eq(a->resource, resource)))
			return a;
	}
	return NULL;
}

static size_t count_op(const mm_decision *dd, mm_op op, const char *resource)
{
	size_t i, n = 0;

	for (i = 0; i < dd->n; i++) {
		const mm_action *a = &dd->actions[i];
		if (a->op == op && (resource == NULL || str_eq(a->resource, resource)))
			n++;
	}
	return n;
}

/* Exactly one `op` action (to `resource`, unless NULL); returns it. */
static const mm_action *expect_one(const mm_decision *dd, mm_op op,
		const char *resource)
{
	ck_assert_msg(count_op(dd, op, resource) == 1,
			"expected exactly one %s to %s, got %s", op_name(op),
			nn(resource), describe(dd));
	return find_action(dd, op, resource);
}

/*
 * The id a DELIVER copy carries: the action's id replaces the stanza's, and
 * NULL keeps the stanza's own id.
 */
static const char *effective_id(const mm_action *a, const char *stanza_id)
{
	return a->id ? a->id : stanza_id;
}

/* handled, and exactly one DELIVER to each of `res` (n of them), nothing else. */
static void expect_deliver_to(const mm_decision *dd, const char *const *res,
		size_t n)
{
	size_t i;

	expect_n(dd, 1, n);
	for (i = 0; i < n; i++)
		expect_one(dd, MM_OP_DELIVER, res[i]);
}

/* ---- event helpers (each asserts MM_OK) ----------------------------------- */

static void join(const char *acc, const char *res, const char *room,
		const char *nick, const char *id, const char *password)
{
	mm_err e = mm_session_join(st, acc, res, room, nick, id, password, &d);
	ck_assert_msg(e == MM_OK, "join %s/%s %s/%s: %s", acc, res, room, nick,
			mm_strerror(e));
}

static mm_presence presence(mm_pres_type type, unsigned status,
		const char *id, const char *payload)
{
	mm_presence p;

	memset(&p, 0, sizeof p);
	p.type = type;
	p.status = status;
	p.id = id;
	p.payload = payload;
	return p;
}

static void room_pres(const char *acc, const char *room, const char *nick,
		const mm_presence *p)
{
	mm_err e = mm_room_presence(st, acc, room, nick, p, &d);
	ck_assert_msg(e == MM_OK, "room presence: %s", mm_strerror(e));
}

static void occupant(const char *acc, const char *room, const char *nick,
		const char *payload)
{
	mm_presence p = presence(MM_PRES_AVAILABLE, 0, NULL, payload);

	p.affiliation = "member";
	p.role = "participant";
	room_pres(acc, room, nick, &p);
}

static void occupant_gone(const char *acc, const char *room,
		const char *nick)
{
	mm_presence p = presence(MM_PRES_UNAVAILABLE, 0, NULL, NULL);

	p.affiliation = "member";
	p.role = "none";
	room_pres(acc, room, nick, &p);
}

/* The room's available self-presence (status 110), affiliation owner. */
static void self_pres(const char *acc, const char *room, const char *nick,
		unsigned extra_status, const char *id, const char *payload)
{
	mm_presence p = presence(MM_PRES_AVAILABLE, MM_STATUS_110 | extra_status,
			id, payload);

	p.affiliation = "owner";
	p.role = "moderator";
	room_pres(acc, room, nick, &p);
}

static void self_unavailable(const char *acc, const char *room,
		const char *nick, unsigned extra_status, int destroyed,
		const char *id)
{
	mm_presence p = presence(MM_PRES_UNAVAILABLE, MM_STATUS_110 | extra_status,
			id, NULL);

	p.affiliation = "owner";
	p.role = "none";
	p.destroyed = destroyed;
	room_pres(acc, room, nick, &p);
}

static void room_msg(const char *acc, const char *room, const char *nick,
		mm_msg_type type, int has_subject, const char *id,
		const char *payload)
{
	mm_message m;
	mm_err e;

	memset(&m, 0, sizeof m);
	m.type = type;
	m.has_subject = has_subject;
	m.has_body = !has_subject;
	m.id = id;
	m.payload = payload;
	m.stamp = T_MSG;
	e = mm_room_message(st, acc, room, nick, &m, &d);
	ck_assert_msg(e == MM_OK, "room message: %s", mm_strerror(e));
}

static void session_msg(const char *acc, const char *res, const char *room,
		const char *nick, mm_msg_type type, const char *id)
{
	mm_err e = mm_session_message(st, acc, res, room, nick, type, id, &d);
	ck_assert_msg(e == MM_OK, "session message: %s", mm_strerror(e));
}

static void session_leave(const char *acc, const char *res,
		const char *room, const char *id)
{
	mm_err e = mm_session_leave(st, acc, res, room, id, &d);
	ck_assert_msg(e == MM_OK, "session leave: %s", mm_strerror(e));
}

/* First session joins, the room answers with self-presence only. */
static void joined_room(const char *acc, const char *res, const char *room,
		const char *nick)
{
	join(acc, res, room, nick, "j1", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	self_pres(acc, room, nick, 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ res }, 1);
}

/*
 * R1 joins ROOM as "alice"; the room sends bob, carol, the self-presence,
 * one history message and the subject, as XEP-0045 orders them.
 */
static void populate(void)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	expect_n(&d, 1, 1);
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	occupant(ACC, ROOM, "carol", P_CAROL);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "h1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	room_msg(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, 1, "s1", P_SUBJECT);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
}

/* A catch-up message a replay should carry: its payload and its stamp. */
struct hmsg {
	const char *payload;
	double stamp;
};

/* What populate() leaves in the catch-up ring. */
static const struct hmsg populate_hist[] = { { P_BODY, T_MSG } };

/*
 * The decision is a full resync for `res`: REPLAY only, the `nothers`
 * occupant payloads in any order (the header does not order them), then
 * the self-presence (210 added iff want210), then the `nhist` catch-up
 * messages oldest first, each with its message's stamp, then the subject
 * if any.  Only catch-up messages carry a stamp ("stamp > 0 marks a
 * catch-up message").
 */
static void expect_replay_hist(const mm_decision *dd, const char *res,
		const char *const *others, size_t nothers, const char *self,
		int want210, const struct hmsg *hist, size_t nhist,
		const char *subject)
{
	size_t i, j, n = nothers + 1 + nhist + (subject ? 1 : 0);
	int seen[16] = { 0 };

	ck_assert(nothers < 16);
	expect_n(dd, 1, n);
	for (i = 0; i < n; i++) {
		const mm_action *a = &dd->actions[i];
		ck_assert_msg(a->op == MM_OP_REPLAY && str_eq(a->resource, res),
				"action %zu is not a REPLAY to %s: %s", i, res, describe(dd));
		ck_assert_ptr_nonnull(a->payload);
		if (i <= nothers || i > nothers + nhist)
			ck_assert_msg(a->stamp == 0, "action %zu has a stamp: %s", i,
					describe(dd));
	}
	for (i = 0; i < nothers; i++) {
		const mm_action *a = &dd->actions[i];
		for (j = 0; j < nothers; j++)
			if (!seen[j] && str_eq(a->payload, others[j]))
				break;
		ck_assert_msg(j < nothers, "unexpected replay %zu: %s", i,
				describe(dd));
		seen[j] = 1;
		ck_assert_msg(a->add_codes == 0, "codes added to an occupant: %s",
				describe(dd));
	}
	ck_assert_msg(str_eq(dd->actions[nothers].payload, self),
			"self-presence not last among occupants: %s", describe(dd));
	ck_assert_msg(!!(dd->actions[nothers].add_codes & MM_CODE_210) == !!want210,
			"210 %s expected: %s", want210 ? "" : "not", describe(dd));
	for (i = 0; i < nhist; i++) {
		const mm_action *a = &dd->actions[nothers + 1 + i];
		ck_assert_msg(str_eq(a->payload, hist[i].payload),
				"catch-up message %zu is not %s: %s", i, hist[i].payload,
				describe(dd));
		ck_assert_msg(a->stamp == hist[i].stamp,
				"catch-up message %zu: stamp %.17g, want %.17g: %s", i,
				a->stamp, hist[i].stamp, describe(dd));
		ck_assert_msg(a->add_codes == 0, "codes added to a message: %s",
				describe(dd));
	}
	if (subject) {
		ck_assert_pstr_eq(dd->actions[n - 1].payload, subject);
		ck_assert_uint_eq(dd->actions[n - 1].add_codes, 0);
	}
}

/* A full resync when the catch-up ring is empty. */
static void expect_replay(const mm_decision *dd, const char *res,
		const char *const *others, size_t nothers, const char *self,
		int want210, const char *subject)
{
	expect_replay_hist(dd, res, others, nothers, self, want210, NULL, 0,
			subject);
}

/* ---- inspection helpers ------------------------------------------------- */

struct minfo {
	const char *want;
	int found;
	char room[128];
	char nick[128];
	char password[128];
	int has_password;
	mm_mstate state;
	size_t sessions;
	size_t occupants;
	int has_subject;
	size_t history;
	size_t bytes;
	char last_id[128];
	int has_last_id;
	double last_stamp;
	int persistent;
};

static void copy_str(char *dst, size_t size, const char *src)
{
	snprintf(dst, size, "%s", src ? src : "");
}

static int info_cb(const mm_membership_info *info, void *ud)
{
	struct minfo *mi = ud;

	if (!str_eq(info->room, mi->want))
		return 0;
	mi->found++;
	copy_str(mi->room, sizeof mi->room, info->room);
	copy_str(mi->nick, sizeof mi->nick, info->nick);
	copy_str(mi->password, sizeof mi->password, info->password);
	mi->has_password = info->password != NULL;
	mi->state = info->state;
	mi->sessions = info->sessions;
	mi->occupants = info->occupants;
	mi->has_subject = info->has_subject;
	mi->history = info->history;
	mi->bytes = info->bytes;
	copy_str(mi->last_id, sizeof mi->last_id, info->last_id);
	mi->has_last_id = info->last_id != NULL;
	mi->last_stamp = info->last_stamp;
	mi->persistent = info->persistent;
	return 0;
}

/* Copy the account's membership of `room` into *mi; 1 when there is one. */
static int get_info(const char *acc, const char *room, struct minfo *mi)
{
	memset(mi, 0, sizeof *mi);
	mi->want = room;
	mm_account_memberships(st, acc, info_cb, mi);
	ck_assert_msg(mi->found <= 1, "room %s visited %d times", room, mi->found);
	return mi->found;
}

static struct minfo must_info(const char *acc, const char *room)
{
	struct minfo mi;

	ck_assert_msg(get_info(acc, room, &mi), "no membership %s in %s", acc,
			room);
	return mi;
}

static int count_cb(const mm_membership_info *info, void *ud)
{
	(void)info;
	(*(size_t *)ud)++;
	return 0;
}

static size_t membership_count(const char *acc)
{
	size_t seen = 0, ret;

	ret = mm_account_memberships(st, acc, count_cb, &seen);
	ck_assert_uint_eq(ret, seen);
	return ret;
}

struct slist {
	size_t n;
	char res[8][64];
	int joined[8];
};

static int sess_cb(const char *resource, int joined, void *ud)
{
	struct slist *sl = ud;

	ck_assert(sl->n < 8);
	copy_str(sl->res[sl->n], sizeof sl->res[sl->n], resource);
	sl->joined[sl->n] = joined;
	sl->n++;
	return 0;
}

static size_t get_sessions(const char *acc, const char *room,
		struct slist *sl)
{
	size_t ret;

	memset(sl, 0, sizeof *sl);
	ret = mm_membership_sessions(st, acc, room, sess_cb, sl);
	ck_assert_uint_eq(ret, sl->n);
	return ret;
}

/* -1: the session is not in the membership; 0: waiting; 1: joined. */
static int session_state(const char *acc, const char *room, const char *res)
{
	struct slist sl;
	size_t i;
	int found = -1;

	get_sessions(acc, room, &sl);
	for (i = 0; i < sl.n; i++) {
		if (strcmp(sl.res[i], res) == 0) {
			ck_assert_msg(found == -1, "session %s listed twice", res);
			found = sl.joined[i] ? 1 : 0;
		}
	}
	return found;
}

static mm_stats stats(void)
{
	mm_stats s;

	memset(&s, 0xff, sizeof s);
	mm_state_stats(st, &s);
	return s;
}

static void expect_empty_state(void)
{
	mm_stats s = stats();

	ck_assert_uint_eq(s.accounts, 0);
	ck_assert_uint_eq(s.memberships, 0);
	ck_assert_uint_eq(s.sessions, 0);
	ck_assert_uint_eq(s.occupants, 0);
	ck_assert_uint_eq(s.payloads, 0);
	ck_assert_uint_eq(s.payload_bytes, 0);
	ck_assert_uint_eq(s.cached_bytes, 0);
}

static void expect_same_stats(const mm_stats *a, const mm_stats *b)
{
	ck_assert_uint_eq(a->accounts, b->accounts);
	ck_assert_uint_eq(a->memberships, b->memberships);
	ck_assert_uint_eq(a->sessions, b->sessions);
	ck_assert_uint_eq(a->occupants, b->occupants);
	ck_assert_uint_eq(a->payloads, b->payloads);
	ck_assert_uint_eq(a->payload_bytes, b->payload_bytes);
}

/* ==== join ================================================================ */

START_TEST(test_join_first_sends_join)
{
	const mm_action *a;
	struct minfo mi;
	mm_stats s;

	join(ACC, R1, ROOM, "alice", "j1", "secret");
	expect_n(&d, 1, 1);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_int_eq(a->from_request, 1);
	ck_assert_pstr_eq(a->nick, "alice");

	/* The membership is recorded before the caller routes the join. */
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.room, ROOM);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_int_eq(mi.has_password, 1);
	ck_assert_str_eq(mi.password, "secret");
	ck_assert_int_eq(mi.state, MM_JOINING);
	ck_assert_uint_eq(mi.sessions, 1);
	ck_assert_uint_eq(mi.occupants, 0);
	ck_assert_int_eq(mi.has_subject, 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);

	s = stats();
	ck_assert_uint_eq(s.accounts, 1);
	ck_assert_uint_eq(s.memberships, 1);
	ck_assert_uint_eq(s.sessions, 1);
}
END_TEST

/*
 * The join is pending as soon as mm_session_join returns: a synchronous
 * answer from a local room, reported before anything else, finds it.
 */
START_TEST(test_join_sync_self_presence)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R1), "j1"),
			"j1");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
}
END_TEST

START_TEST(test_join_sync_error)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, "j1", NULL);
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	room_pres(ACC, ROOM, "alice", &p);
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R1), "j1"),
			"j1");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
}
END_TEST

START_TEST(test_join_second_session_waits)
{
	const mm_action *a;
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);

	/* Nothing from the room yet: the session waits, nothing to do. */
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);

	/* What arrives while joining goes to every waiting session. */
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINING);

	/* A third session is replayed what the room sent so far; no join. */
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	expect_n(&d, 1, 1);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	a = expect_one(&d, MM_OP_REPLAY, R3);
	ck_assert_pstr_eq(a->payload, P_BOB);
	ck_assert_uint_eq(a->add_codes, 0);

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINING);
	ck_assert_uint_eq(mi.sessions, 3);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R3), 0);
	ck_assert_uint_eq(stats().sessions, 3);
}
END_TEST

START_TEST(test_join_completes_on_self_presence)
{
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);

	/* An occupant's presence does not complete the join. */
	occupant(ACC, ROOM, "bob", P_BOB);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINING);

	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	/* The room echoes the id of the join it got, which was R1's. */
	ck_assert_pstr_eq(effective_id(find_action(&d, MM_OP_DELIVER, R1), "j1"),
			"j1");
	/*
	 * R2 waits for the answer to its own join "j2".  The header says "each
	 * with its own id" for a failed join only; the same reading is taken
	 * for the join that completes (a client matches its join's id).
	 */
	ck_assert_pstr_eq(effective_id(find_action(&d, MM_OP_DELIVER, R2), "j1"),
			"j2");

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_uint_eq(mi.sessions, 2);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);
}
END_TEST

/* The service assigned another nick (210): that is the account's nick now. */
START_TEST(test_join_service_assigned_nick)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alicia", MM_STATUS_210, "j1", P_SELF2);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alicia");
	ck_assert_str_eq(mm_membership_nick(st, ACC, ROOM), "alicia");
	ck_assert_ptr_null(mm_membership_nick(st, ACC, "other@" "conference.example"));
	ck_assert_ptr_null(mm_membership_nick(st, "nobody@example", ROOM));

	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay(&d, R2, NULL, 0, P_SELF2, 1, NULL);
	join(ACC, R3, ROOM, "alicia", "j3", NULL);
	expect_replay(&d, R3, NULL, 0, P_SELF2, 0, NULL);
}
END_TEST

/*
 * A waiter that asked for another nick learns the account's nick with 210
 * when the join completes, as a later session would in its replay.
 */
START_TEST(test_join_waiter_other_nick_gets_210)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alicia", "j2", NULL);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_uint_eq(find_action(&d, MM_OP_DELIVER, R1)->add_codes & MM_CODE_210,
			0);
	ck_assert_uint_eq(find_action(&d, MM_OP_DELIVER, R2)->add_codes & MM_CODE_210,
			MM_CODE_210);
}
END_TEST

/*
 * "Membership joining: the session waits; it is replayed what the room sent
 * so far" - also a waiting session that sends its join again.
 */
START_TEST(test_join_waiting_session_rejoins)
{
	const mm_action *a;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	occupant(ACC, ROOM, "bob", P_BOB);
	join(ACC, R1, ROOM, "alice", "j1b", NULL);
	expect_n(&d, 1, 1);
	a = expect_one(&d, MM_OP_REPLAY, R1);
	ck_assert_pstr_eq(a->payload, P_BOB);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);
}
END_TEST

START_TEST(test_join_error_to_each_waiting_session)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, "j1", NULL);
	const mm_action *a;
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_pres(ACC, ROOM, "alice", &p);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	a = find_action(&d, MM_OP_DELIVER, R1);
	ck_assert_pstr_eq(effective_id(a, "j1"), "j1");
	a = find_action(&d, MM_OP_DELIVER, R2);
	ck_assert_pstr_eq(effective_id(a, "j1"), "j2");

	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	ck_assert_uint_eq(mm_membership_sessions(st, ACC, ROOM, sess_cb,
			&(struct slist){ 0 }), 0);
	expect_empty_state();

	/* A fresh attempt starts from scratch. */
	join(ACC, R2, ROOM, "alice", "j4", NULL);
	ck_assert_int_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->from_request, 1);
}
END_TEST

/* An error from the room while joining goes to the waiting sessions only. */
START_TEST(test_join_error_not_to_other_rooms)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, "j1", NULL);

	joined_room(ACC, R3, ROOM2, "alice");
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	room_pres(ACC, ROOM, "alice", &p);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM2).state, MM_JOINED);
	ck_assert_uint_eq(membership_count(ACC), 1);
}
END_TEST

START_TEST(test_join_later_session_replay)
{
	const char *const others[] = { P_BOB, P_CAROL };
	struct minfo mi;

	populate();
	/* occupants, self-presence, the catch-up history, then the subject */
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay_hist(&d, R2, others, 2, P_SELF, 0, populate_hist, 1,
			P_SUBJECT);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);

	/* Another nick asked: 210 on the self-presence; the nick stays. */
	join(ACC, R3, ROOM, "alicia", "j3", NULL);
	expect_replay_hist(&d, R3, others, 2, P_SELF, 1, populate_hist, 1,
			P_SUBJECT);
	ck_assert_int_eq(session_state(ACC, ROOM, R3), 1);

	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_uint_eq(mi.sessions, 3);
	ck_assert_int_eq(mi.has_subject, 1);
	/* replaying keeps the ring as it was */
	ck_assert_uint_eq(mi.history, 1);
}
END_TEST

START_TEST(test_join_rejoin_is_full_resync)
{
	const char *const others[] = { P_BOB, P_CAROL };
	mm_stats before, after;

	populate();
	before = stats();
	join(ACC, R1, ROOM, "alice", "j9", NULL);
	expect_replay_hist(&d, R1, others, 2, P_SELF, 0, populate_hist, 1,
			P_SUBJECT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	/* Again with another nick: 210, and still nothing accumulates. */
	join(ACC, R1, ROOM, "alicia", "j10", NULL);
	expect_replay_hist(&d, R1, others, 2, P_SELF, 1, populate_hist, 1,
			P_SUBJECT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");
}
END_TEST

/* ==== fork ================================================================ */

START_TEST(test_fork_groupchat_to_each_session)
{
	size_t i;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	for (i = 0; i < d.n; i++) {
		ck_assert_uint_eq(d.actions[i].add_codes, 0);
		ck_assert_pstr_eq(effective_id(&d.actions[i], "m1"), "m1");
	}
	/* A message from the room itself (no nick) too. */
	room_msg(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
}
END_TEST

START_TEST(test_fork_only_that_membership)
{
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC, R3, ROOM2, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");

	room_msg(ACC, ROOM, "carol", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	room_msg(ACC2, ROOM, "carol", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	room_msg(ACC, ROOM2, "carol", MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R3 }, 1);
	/* ACC2 is not in ROOM2. */
	room_msg(ACC2, ROOM2, "carol", MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_not_handled(&d);
}
END_TEST

START_TEST(test_fork_no_membership_not_handled)
{
	mm_presence p = presence(MM_PRES_AVAILABLE, 0, NULL, P_BOB);

	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_not_handled(&d);
	room_pres(ACC, ROOM, "bob", &p);
	expect_not_handled(&d);

	joined_room(ACC2, R1, ROOM, "bobby");
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_not_handled(&d);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "m1", P_BODY);
	expect_not_handled(&d);
	room_pres(ACC, ROOM, "bob", &p);
	expect_not_handled(&d);
	ck_assert_uint_eq(membership_count(ACC), 0);
}
END_TEST

/* Invitations and announcements come as normal/headline from the room. */
START_TEST(test_fork_normal_headline_from_room_not_handled)
{
	joined_room(ACC, R1, ROOM, "alice");
	room_msg(ACC, ROOM, NULL, MM_MSG_NORMAL, 0, "inv", P_BODY);
	expect_not_handled(&d);
	room_msg(ACC, ROOM, NULL, MM_MSG_HEADLINE, 0, "hl", P_BODY);
	expect_not_handled(&d);
}
END_TEST

START_TEST(test_fork_private_message)
{
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "pm1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
}
END_TEST

/*
 * §7.5: a private message from an occupant is for the sessions that are in
 * the room.  A session whose join is still in progress (the account joins,
 * joins again, or leaves and will join anew) gets none: it has not seen the
 * room's join sequence yet.
 */
START_TEST(test_fork_private_message_joined_only)
{
	/* the account joins: R1 asked, R2 waits with it */
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "pm1", P_BODY);
	expect_n(&d, 1, 0);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "pm2", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);

	/* the account joins again by itself (333): both wait again */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
	room_msg(ACC, ROOM, "bob", MM_MSG_NORMAL, 0, "pm3", P_BODY);
	expect_n(&d, 1, 0);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	room_msg(ACC, ROOM, "bob", MM_MSG_NORMAL, 0, "pm4", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);

	/* the last sessions leave, and R3 joins while the account leaves: it
	 * waits for the next join, and the private message is nobody's */
	session_leave(ACC, R2, ROOM, "l2");
	session_leave(ACC, R1, ROOM, "l1");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	ck_assert_int_eq(session_state(ACC, ROOM, R3), 0);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "pm5", P_BODY);
	expect_n(&d, 1, 0);
}
END_TEST

START_TEST(test_fork_delivery_failed)
{
	mm_err e;

	e = mm_delivery_failed(st, ACC, ROOM, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_not_handled(&d);
	joined_room(ACC, R1, ROOM, "alice");
	e = mm_delivery_failed(st, ACC, ROOM, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_n(&d, 1, 0);
	e = mm_delivery_failed(st, ACC, ROOM2, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_not_handled(&d);
}
END_TEST

/* ==== occupants cache ===================================================== */

START_TEST(test_occupants_add_remove)
{
	size_t base;

	joined_room(ACC, R1, ROOM, "alice");
	/* Whether the self-presence counts as an occupant is not stated. */
	base = must_info(ACC, ROOM).occupants;
	ck_assert_uint_le(base, 1);
	ck_assert_uint_eq(stats().occupants, base);

	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, base + 1);
	occupant(ACC, ROOM, "carol", P_CAROL);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, base + 2);
	/* A status update replaces the entry. */
	occupant(ACC, ROOM, "bob", P_BOB_AWAY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, base + 2);
	ck_assert_uint_eq(stats().occupants, base + 2);

	occupant_gone(ACC, ROOM, "bob");
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, base + 1);
	ck_assert_uint_eq(stats().occupants, base + 1);
	/* An unknown occupant leaving changes nothing but is still delivered. */
	occupant_gone(ACC, ROOM, "zed");
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, base + 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
}
END_TEST

START_TEST(test_occupants_replay_reflects_cache)
{
	populate();
	occupant(ACC, ROOM, "bob", P_BOB_AWAY);
	occupant(ACC, ROOM, "dave", P_DAVE);
	occupant_gone(ACC, ROOM, "carol");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay_hist(&d, R2, (const char *const[]){ P_BOB_AWAY, P_DAVE },
			2, P_SELF, 0, populate_hist, 1, P_SUBJECT);
}
END_TEST

START_TEST(test_occupants_nick_change_other)
{
	mm_presence p = presence(MM_PRES_UNAVAILABLE, MM_STATUS_303, NULL, NULL);
	size_t before;

	populate();
	before = must_info(ACC, ROOM).occupants;
	p.new_nick = "robert";
	p.affiliation = "member";
	p.role = "participant";
	room_pres(ACC, ROOM, "bob", &p);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	occupant(ACC, ROOM, "robert", P_ROBERT);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, before);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");

	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay_hist(&d, R2, (const char *const[]){ P_ROBERT, P_CAROL },
			2, P_SELF, 0, populate_hist, 1, P_SUBJECT);
}
END_TEST

START_TEST(test_occupants_nick_change_self)
{
	mm_presence p = presence(MM_PRES_UNAVAILABLE,
			MM_STATUS_110 | MM_STATUS_303, "n1", NULL);
	struct minfo mi;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	p.new_nick = "alicia";
	p.affiliation = "owner";
	p.role = "moderator";
	room_pres(ACC, ROOM, "alice", &p);
	/* A 303 does not end the membership; everyone sees it. */
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_str_eq(mi.nick, "alicia");
	ck_assert_uint_eq(mi.sessions, 2);
	/* the nick a mention is looked for (XEP-0492 on-mention) */
	ck_assert_str_eq(mm_membership_nick(st, ACC, ROOM), "alicia");

	self_pres(ACC, ROOM, "alicia", MM_STATUS_303, "n1", P_SELF2);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alicia");

	join(ACC, R3, ROOM, "alicia", "j3", NULL);
	expect_replay_hist(&d, R3, (const char *const[]){ P_BOB, P_CAROL }, 2,
			P_SELF2, 0, populate_hist, 1, P_SUBJECT);
	join(ACC, R3, ROOM, "alice", "j4", NULL);
	expect_replay_hist(&d, R3, (const char *const[]){ P_BOB, P_CAROL }, 2,
			P_SELF2, 1, populate_hist, 1, P_SUBJECT);
}
END_TEST

/* max_occupants bounds the cache; traffic is still delivered. */
START_TEST(test_occupants_max_occupants)
{
	static const char *const nicks[] = { "o1", "o2", "o3", "o4", "o5" };
	static const char *const payloads[] = {
		P_PRES("o1", ""), P_PRES("o2", ""), P_PRES("o3", ""),
		P_PRES("o4", ""), P_PRES("o5", "")
	};
	mm_limits l;
	size_t i, max;

	memset(&l, 0, sizeof l);
	l.max_occupants = 3;
	reset_state(&l);
	max = mm_state_limits(st)->max_occupants;
	ck_assert_uint_eq(max, 3);

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	for (i = 0; i < 5; i++) {
		occupant(ACC, ROOM, nicks[i], payloads[i]);
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
		ck_assert_uint_le(must_info(ACC, ROOM).occupants, max);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, max);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_le(must_info(ACC, ROOM).occupants, max);
	ck_assert_uint_le(stats().occupants, max);

	/*
	 * A later session still learns it is in the room: the self-presence
	 * is replayed last, whatever else the bound made the core forget.
	 */
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_msg(d.handled && d.n >= 1 && d.n <= max + 1,
			"replay not bounded: %s", describe(&d));
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R2), d.n);
	ck_assert_pstr_eq(d.actions[d.n - 1].payload, P_SELF);

	/* Another account's cache is bounded on its own. */
	join(ACC2, R1, ROOM, "bobby", "j3", NULL);
	for (i = 0; i < 5; i++) {
		occupant(ACC2, ROOM, nicks[i], payloads[i]);
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	}
	ck_assert_uint_eq(must_info(ACC2, ROOM).occupants, max);
	ck_assert_uint_le(stats().occupants, 2 * max);
}
END_TEST

/* ==== leave =============================================================== */

START_TEST(test_leave_not_last_session)
{
	const mm_action *a;
	struct minfo mi;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	session_leave(ACC, R2, ROOM, "l2");
	expect_n(&d, 1, 1);
	a = expect_one(&d, MM_OP_REFLECT_LEAVE, R2);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->id, "l2");
	/* The account's affiliation, from its self-presence. */
	ck_assert_pstr_eq(a->affiliation, "owner");

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_uint_eq(mi.sessions, 1);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), -1);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	ck_assert_uint_eq(stats().sessions, 1);

	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	/* It is not in the membership any more: a second leave is not ours. */
	session_leave(ACC, R2, ROOM, "l3");
	expect_not_handled(&d);
}
END_TEST

START_TEST(test_leave_last_session)
{
	struct minfo mi;

	populate();
	session_leave(ACC, R1, ROOM, "l1");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_LEAVING);

	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R1), "l1"),
			"l1");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();

	/* The account is free to join again. */
	join(ACC, R1, ROOM, "alice", "j5", NULL);
	ck_assert_int_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->from_request, 1);
}
END_TEST

START_TEST(test_leave_not_in_membership)
{
	session_leave(ACC, R1, ROOM, "l1");
	expect_not_handled(&d);
	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R2, ROOM, "l2");
	expect_not_handled(&d);
	session_leave(ACC, R1, ROOM2, "l3");
	expect_not_handled(&d);
	session_leave(ACC2, R1, ROOM, "l4");
	expect_not_handled(&d);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
}
END_TEST

START_TEST(test_leave_join_while_leaving)
{
	const mm_action *a;
	struct minfo mi;

	populate();
	session_leave(ACC, R1, ROOM, "l1");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);

	/* The session waits; no join is sent while the leave is in flight. */
	join(ACC, R2, ROOM, "alice2", "j2", "pw2");
	ck_assert_int_eq(d.handled, 1);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_AS_ACCOUNT, NULL), 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING_REJOIN);

	/* The leave completes: R1 gets its unavailable, the account re-joins. */
	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	expect_n(&d, 1, 2);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R1), "l1"),
			"l1");
	ck_assert_uint_eq(count_op(&d, MM_OP_DELIVER, NULL), 1);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_pstr_eq(a->nick, "alice2");
	ck_assert_pstr_eq(a->password, "pw2");

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINING);
	ck_assert_str_eq(mi.nick, "alice2");
	ck_assert_uint_eq(mi.sessions, 1);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), -1);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);
	/* The old cache is gone with the old membership. */
	ck_assert_int_eq(mi.has_subject, 0);
	ck_assert_uint_eq(mi.occupants, 0);

	self_pres(ACC, ROOM, "alice2", 0, NULL, P_SELF2);
	expect_deliver_to(&d, (const char *const[]){ R2 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);
}
END_TEST

/* ==== session_gone ======================================================== */

START_TEST(test_gone_detaches_everywhere)
{
	struct minfo mi;
	mm_stats s;
	mm_err e;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC, R1, ROOM2, "alice");

	e = mm_session_gone(st, ACC, R1, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_n(&d, 1, 0);

	ck_assert_int_eq(session_state(ACC, ROOM, R1), -1);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);
	ck_assert_int_eq(session_state(ACC, ROOM2, R1), -1);
	mi = must_info(ACC, ROOM2);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_uint_eq(mi.sessions, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	s = stats();
	ck_assert_uint_eq(s.accounts, 1);
	ck_assert_uint_eq(s.memberships, 2);
	ck_assert_uint_eq(s.sessions, 1);

	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R2 }, 1);
	/* The account is still in ROOM2, with no session to give it to ... */
	room_msg(ACC, ROOM2, "bob", MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_n(&d, 1, 0);
	/* ... but it keeps the message for catch-up. */
	ck_assert_uint_eq(must_info(ACC, ROOM2).history, 1);

	/* A new session attaches without a new join, and catches up. */
	join(ACC, R3, ROOM2, "alice", "j3", NULL);
	expect_replay_hist(&d, R3, NULL, 0, P_SELF, 0, populate_hist, 1, NULL);
}
END_TEST

START_TEST(test_gone_unknown_session)
{
	mm_stats before;

	joined_room(ACC, R1, ROOM, "alice");
	before = stats();
	ck_assert_int_eq(mm_session_gone(st, ACC, R3, &d), MM_OK);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(mm_session_gone(st, ACC2, R1, &d), MM_OK);
	expect_n(&d, 1, 0);
	{
		mm_stats after = stats();
		expect_same_stats(&before, &after);
	}
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
}
END_TEST

START_TEST(test_gone_while_joining)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	expect_n(&d, 1, 0);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);

	/* The last session gone: the account stays, joining or not. */
	join(ACC, R1, ROOM2, "alice", "j3", NULL);
	ck_assert_int_eq(mm_session_gone(st, ACC, R1, &d), MM_OK);
	ck_assert_uint_eq(membership_count(ACC), 2);
	ck_assert_int_eq(must_info(ACC, ROOM2).state, MM_JOINING);
	self_pres(ACC, ROOM2, "alice", 0, "j3", P_SELF);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(must_info(ACC, ROOM2).state, MM_JOINED);
}
END_TEST

/* ==== speak =============================================================== */

START_TEST(test_speak_groupchat_and_private)
{
	joined_room(ACC, R1, ROOM, "alice");
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm1");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
}
END_TEST

START_TEST(test_speak_not_joined_not_handled)
{
	/* No membership at all. */
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	expect_not_handled(&d);

	/* A session still waiting for the account's join. */
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m2");
	expect_not_handled(&d);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);

	/* A session of the account that never joined. */
	session_msg(ACC, R2, ROOM, NULL, MM_MSG_GROUPCHAT, "m3");
	expect_not_handled(&d);
	session_msg(ACC, R2, ROOM, "bob", MM_MSG_CHAT, "m4");
	expect_not_handled(&d);
	/* Another account. */
	session_msg(ACC2, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m5");
	expect_not_handled(&d);
	/* Neither a groupchat nor a private message. */
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_NORMAL, "m6");
	expect_not_handled(&d);
}
END_TEST

START_TEST(test_speak_error_dropped)
{
	/* No membership: not the module's business. */
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_ERROR, "e0");
	expect_not_handled(&d);

	joined_room(ACC, R1, ROOM, "alice");
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_ERROR, "e1");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DROP, NULL);
	/* To an occupant, and from a session that is not joined: still dropped. */
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_ERROR, "e2");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DROP, NULL);
	session_msg(ACC, R2, ROOM, NULL, MM_MSG_ERROR, "e3");
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DROP, NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
}
END_TEST

START_TEST(test_speak_error_answer_to_sender_only)
{
	mm_message m;
	const mm_action *a;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	session_msg(ACC, R2, ROOM, NULL, MM_MSG_GROUPCHAT, "m2");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);

	memset(&m, 0, sizeof m);
	m.type = MM_MSG_ERROR;
	m.id = "m2";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_n(&d, 1, 1);
	a = expect_one(&d, MM_OP_DELIVER, R2);
	ck_assert_pstr_eq(effective_id(a, "m2"), "m2");

	m.id = "m1";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DELIVER, R1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);
}
END_TEST

START_TEST(test_speak_presence)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, "p2", NULL);
	mm_err e;

	/* Not joined: not handled. */
	e = mm_session_presence(st, ACC, R1, ROOM, "alice", "p0", NULL, NULL, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_not_handled(&d);

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	e = mm_session_presence(st, ACC, R3, ROOM, "alice", "p1", NULL, NULL, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_not_handled(&d);

	/* A status update, then a nick change: both go out as the account. */
	e = mm_session_presence(st, ACC, R2, ROOM, "alice", "p2", NULL, NULL, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	e = mm_session_presence(st, ACC, R1, ROOM, "alicia", "p3", NULL, NULL, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);

	/* The room's error for p2 goes to R2 alone; the membership stays. */
	room_pres(ACC, ROOM, "alice", &p);
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R2), "p2"),
			"p2");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");

	/* An error for an id nobody sent is dropped. */
	p.id = "nobody";
	room_pres(ACC, ROOM, "alice", &p);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);
}
END_TEST

/*
 * "A session that is in the membership but not joined (waiting, leaving)
 * gets DROP: passed on, the room would take its presence for a join of its
 * own."
 */
START_TEST(test_speak_presence_waiting_session)
{
	mm_err e;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	e = mm_session_presence(st, ACC, R1, ROOM, "alice", "p1", NULL, NULL, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DROP, NULL);
}
END_TEST

/* ==== removal ============================================================= */

struct removal_case {
	const char *name;
	unsigned status;
	int destroyed;
};

static const struct removal_case removal_cases[] = {
	{ "kicked (307)", MM_STATUS_307, 0 },
	{ "banned (301)", MM_STATUS_301, 0 },
	{ "affiliation (321)", MM_STATUS_321, 0 },
	{ "members-only (322)", MM_STATUS_322, 0 },
	{ "destroyed", 0, 1 },
	/* kicked for a technical reason is still kicked: no automatic re-join */
	{ "kicked (307+333)", MM_STATUS_307 | MM_STATUS_333, 0 },
};

#define N_REMOVAL (sizeof removal_cases / sizeof removal_cases[0])

START_TEST(test_removal_self)
{
	const struct removal_case *rc = &removal_cases[_i];
	struct minfo mi;
	size_t i;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC, R3, ROOM2, "alice");

	self_unavailable(ACC, ROOM, "alice", rc->status, rc->destroyed, "x1");
	ck_assert_msg(d.handled == 1 && d.n == 2, "%s: %s", rc->name,
			describe(&d));
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	for (i = 0; i < d.n; i++)
		ck_assert_uint_eq(d.actions[i].add_codes, 0);
	ck_assert_msg(get_info(ACC, ROOM, &mi) == 0, "%s: membership kept",
			rc->name);
	ck_assert_uint_eq(mm_membership_sessions(st, ACC, ROOM, sess_cb,
			&(struct slist){ 0 }), 0);
	/* Other memberships are untouched. */
	ck_assert_int_eq(must_info(ACC, ROOM2).state, MM_JOINED);
	ck_assert_uint_eq(stats().memberships, 1);
	ck_assert_uint_eq(stats().sessions, 1);

	/* Room traffic after the removal is not ours any more. */
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_not_handled(&d);

	/* The account can join again. */
	join(ACC, R1, ROOM, "alice", "j5", NULL);
	expect_n(&d, 1, 1);
	ck_assert_int_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->from_request, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINING);
	self_pres(ACC, ROOM, "alice", 0, "j5", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
}
END_TEST

/* Another occupant kicked is only news; the membership stays. */
START_TEST(test_removal_other_occupant)
{
	mm_presence p = presence(MM_PRES_UNAVAILABLE, MM_STATUS_307, NULL, NULL);
	size_t before;

	populate();
	before = must_info(ACC, ROOM).occupants;
	p.role = "none";
	room_pres(ACC, ROOM, "bob", &p);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, before - 1);
}
END_TEST

/* ==== limits ============================================================== */

START_TEST(test_limits_defaults)
{
	mm_limits l, partial;
	const mm_limits *got;

	memset(&l, 0xff, sizeof l);
	mm_limits_default(&l);
	ck_assert_uint_eq(l.max_rooms, MM_DEFAULT_MAX_ROOMS);
	ck_assert_uint_eq(l.max_sessions, MM_DEFAULT_MAX_SESSIONS);
	ck_assert_uint_eq(l.max_occupants, MM_DEFAULT_MAX_OCCUPANTS);
	ck_assert_uint_eq(l.max_pending, MM_DEFAULT_MAX_PENDING);
	ck_assert_uint_eq(l.max_nick_bytes, MM_DEFAULT_MAX_NICK_BYTES);

	/* The fixture's state was made with small limits. */
	got = mm_state_limits(st);
	ck_assert_uint_eq(got->max_rooms, 2);
	ck_assert_uint_eq(got->max_sessions, 2);
	ck_assert_uint_eq(got->max_occupants, 3);
	ck_assert_uint_eq(got->max_pending, 2);
	ck_assert_uint_eq(got->max_nick_bytes, 8);

	reset_state(NULL);
	got = mm_state_limits(st);
	ck_assert_uint_eq(got->max_rooms, MM_DEFAULT_MAX_ROOMS);
	ck_assert_uint_eq(got->max_sessions, MM_DEFAULT_MAX_SESSIONS);
	ck_assert_uint_eq(got->max_occupants, MM_DEFAULT_MAX_OCCUPANTS);
	ck_assert_uint_eq(got->max_pending, MM_DEFAULT_MAX_PENDING);
	ck_assert_uint_eq(got->max_nick_bytes, MM_DEFAULT_MAX_NICK_BYTES);

	memset(&partial, 0, sizeof partial);
	partial.max_sessions = 5;
	reset_state(&partial);
	got = mm_state_limits(st);
	ck_assert_uint_eq(got->max_rooms, MM_DEFAULT_MAX_ROOMS);
	ck_assert_uint_eq(got->max_sessions, 5);
	ck_assert_uint_eq(got->max_occupants, MM_DEFAULT_MAX_OCCUPANTS);
	ck_assert_uint_eq(got->max_pending, MM_DEFAULT_MAX_PENDING);
	ck_assert_uint_eq(got->max_nick_bytes, MM_DEFAULT_MAX_NICK_BYTES);

	mm_state_free(NULL);
}
END_TEST

START_TEST(test_limit_rooms)
{
	mm_stats before, after;
	struct minfo mi;
	mm_err e;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R1, ROOM2, "alice", "j2", NULL);
	before = stats();

	e = mm_session_join(st, ACC, R1, ROOM3, "alice", "j3", NULL, &d);
	ck_assert_int_eq(e, MM_EROOMLIMIT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_int_eq(get_info(ACC, ROOM3, &mi), 0);
	ck_assert_uint_eq(membership_count(ACC), 2);
	/* Another session of the same account hits the same limit. */
	e = mm_session_join(st, ACC, R2, ROOM3, "alice", "j4", NULL, &d);
	ck_assert_int_eq(e, MM_EROOMLIMIT);

	/* Earlier rooms still work. */
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	self_pres(ACC, ROOM2, "alice", 0, "j2", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	/* A session joining a room the account is in is not a new room. */
	join(ACC, R2, ROOM, "alice", "j5", NULL);
	expect_replay_hist(&d, R2, NULL, 0, P_SELF, 0, populate_hist, 1, NULL);
	/* The limit is per account. */
	join(ACC2, R1, ROOM3, "bobby", "j6", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);

	/* Once a membership ends, there is room for another. */
	self_unavailable(ACC, ROOM2, "alice", MM_STATUS_307, 0, NULL);
	join(ACC, R1, ROOM3, "alice", "j7", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
}
END_TEST

START_TEST(test_limit_sessions)
{
	mm_stats before, after;
	mm_err e;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	before = stats();
	e = mm_session_join(st, ACC, R3, ROOM, "alice", "j3", NULL, &d);
	ck_assert_int_eq(e, MM_ESESSIONLIMIT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_int_eq(session_state(ACC, ROOM, R3), -1);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);

	/* A session already in is not a new one: resync works at the limit. */
	join(ACC, R1, ROOM, "alice", "j4", NULL);
	expect_replay(&d, R1, NULL, 0, P_SELF, 0, NULL);
	/* The limit is per membership. */
	join(ACC, R3, ROOM2, "alice", "j5", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);

	/* The limit also holds while joining. */
	join(ACC, R1, ROOM2, "alice", "j6", NULL);
	e = mm_session_join(st, ACC, R2, ROOM2, "alice", "j7", NULL, &d);
	ck_assert_int_eq(e, MM_ESESSIONLIMIT);
	ck_assert_uint_eq(must_info(ACC, ROOM2).sessions, 2);

	/* After a leave there is room again. */
	session_leave(ACC, R2, ROOM, "l2");
	expect_one(&d, MM_OP_REFLECT_LEAVE, R2);
	join(ACC, R3, ROOM, "alice", "j8", NULL);
	expect_replay(&d, R3, NULL, 0, P_SELF, 0, NULL);
}
END_TEST

START_TEST(test_limit_nick_and_invalid)
{
	mm_stats before, after;

	before = stats();
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM, "abcdefghi", "j1",
			NULL, &d), MM_EINVAL);
	/* The limit is in bytes: five two-byte characters are ten bytes. */
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM,
			"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", "j1", NULL, &d),
			MM_EINVAL);
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM, "", "j1", NULL, &d),
			MM_EINVAL);
	ck_assert_int_eq(mm_session_join(st, "", R1, ROOM, "alice", "j1", NULL,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_session_join(st, ACC, "", ROOM, "alice", "j1", NULL,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_session_join(st, ACC, R1, "", "alice", "j1", NULL,
			&d), MM_EINVAL);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(membership_count(ACC), 0);

	/* Exactly max_nick_bytes is accepted. */
	join(ACC, R1, ROOM, "abcdefgh", "j1", NULL);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->nick, "abcdefgh");
	/* A too-long nick from a second session changes nothing either. */
	before = stats();
	ck_assert_int_eq(mm_session_join(st, ACC, R2, ROOM, "abcdefghij", "j2",
			NULL, &d), MM_EINVAL);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), -1);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "abcdefgh");
}
END_TEST

/* max_pending: the oldest remembered id is forgotten first. */
START_TEST(test_limit_pending)
{
	mm_message m;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m2");
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m3");

	memset(&m, 0, sizeof m);
	m.type = MM_MSG_ERROR;
	m.id = "m1";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	/* Forgotten: whatever happens, it is not routed to R1 as its answer. */
	ck_assert_msg(!(d.n == 1 && d.actions[0].op == MM_OP_DELIVER &&
			str_eq(d.actions[0].resource, R1)),
			"m1 should have been forgotten: %s", describe(&d));
	m.id = "m2";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DELIVER, R1);
	m.id = "m3";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_n(&d, 1, 1);
	expect_one(&d, MM_OP_DELIVER, R1);
}
END_TEST

/* ==== errors ============================================================== */

static int is_kebab(const char *s)
{
	if (*s == '\0' || *s == '-')
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
				*s == '-'))
			return 0;
	return 1;
}

/* RFC 6120, 8.3.3. */
static int is_defined_condition(const char *c)
{
	static const char *const conds[] = {
		"bad-request", "conflict", "feature-not-implemented", "forbidden",
		"gone", "internal-server-error", "item-not-found", "jid-malformed",
		"not-acceptable", "not-allowed", "not-authorized",
		"policy-violation", "recipient-unavailable", "redirect",
		"registration-required", "remote-server-not-found",
		"remote-server-timeout", "resource-constraint",
		"service-unavailable", "subscription-required",
		"undefined-condition", "unexpected-request"
	};
	size_t i;

	for (i = 0; i < sizeof conds / sizeof conds[0]; i++)
		if (strcmp(c, conds[i]) == 0)
			return 1;
	return 0;
}

static void check_err_strings(mm_err e)
{
	const char *s, *tok, *cond, *type = NULL;

	s = mm_strerror(e);
	ck_assert_msg(s != NULL && *s != '\0', "mm_strerror(%d)", (int)e);
	tok = mm_errtoken(e);
	ck_assert_msg(tok != NULL && is_kebab(tok), "mm_errtoken(%d) = %s",
			(int)e, nn(tok));
	cond = mm_errcondition(e, &type);
	ck_assert_msg(cond != NULL && is_defined_condition(cond),
			"mm_errcondition(%d) = %s", (int)e, nn(cond));
	ck_assert_msg(type != NULL && (strcmp(type, "cancel") == 0 ||
			strcmp(type, "modify") == 0 || strcmp(type, "wait") == 0 ||
			strcmp(type, "auth") == 0), "mm_errcondition(%d) type = %s",
			(int)e, nn(type));
}

START_TEST(test_errors_never_null)
{
	int e;

	for (e = MM_OK; e < MM_ERR_COUNT; e++)
		check_err_strings((mm_err)e);
	check_err_strings(MM_ERR_COUNT);
	check_err_strings((mm_err)(MM_ERR_COUNT + 1));
	check_err_strings((mm_err)1000);
	check_err_strings((mm_err)-1);
}
END_TEST

START_TEST(test_errors_distinct_and_stable)
{
	int a, b;
	const char *type = NULL;

	for (a = MM_OK; a < MM_ERR_COUNT; a++)
		for (b = a + 1; b < MM_ERR_COUNT; b++) {
			ck_assert_msg(strcmp(mm_errtoken((mm_err)a),
					mm_errtoken((mm_err)b)) != 0, "tokens %d and %d equal",
					a, b);
			ck_assert_msg(strcmp(mm_strerror((mm_err)a),
					mm_strerror((mm_err)b)) != 0, "messages %d and %d equal",
					a, b);
		}
	/* The header names this token. */
	ck_assert_str_eq(mm_errtoken(MM_EROOMLIMIT), "room-limit");
	/* "Try later" is what an XMPP error of type wait means. */
	mm_errcondition(MM_EIQLIMIT, &type);
	ck_assert_pstr_eq(type, "wait");
	/* A malformed argument is the client's to fix. */
	mm_errcondition(MM_EINVAL, &type);
	ck_assert_pstr_eq(type, "modify");
}
END_TEST

/*
 * Every error's token, condition and type, pinned: the tokens are the
 * binding's stable API (and the refusal metric's label), the conditions
 * and types what a refused client reads (RFC 6120 8.3).  A new error must
 * be added here.
 */
START_TEST(test_errors_pinned)
{
	static const struct {
		mm_err err;
		const char *token, *condition, *type;
	} want[] = {
		{ MM_OK, "ok", "undefined-condition", "cancel" },
		{ MM_ENOMEM, "no-memory", "resource-constraint", "wait" },
		{ MM_EINVAL, "invalid", "jid-malformed", "modify" },
		{ MM_EROOMLIMIT, "room-limit", "resource-constraint", "wait" },
		{ MM_ESESSIONLIMIT, "session-limit", "resource-constraint", "wait" },
		{ MM_EIQLIMIT, "iq-limit", "resource-constraint", "wait" },
		/* out of range */
		{ MM_ERR_COUNT, "unknown", "undefined-condition", "cancel" },
		{ (mm_err)-1, "unknown", "undefined-condition", "cancel" },
	};
	size_t i, known = 0;

	for (i = 0; i < sizeof want / sizeof want[0]; i++) {
		const char *type = NULL, *cond;

		ck_assert_msg(mm_strerror(want[i].err) != NULL, "mm_strerror(%d)",
				(int)want[i].err);
		ck_assert_msg(str_eq(mm_errtoken(want[i].err), want[i].token),
				"mm_errtoken(%d) = %s, want %s", (int)want[i].err,
				nn(mm_errtoken(want[i].err)), want[i].token);
		cond = mm_errcondition(want[i].err, &type);
		ck_assert_msg(str_eq(cond, want[i].condition) && str_eq(type,
				want[i].type), "mm_errcondition(%d) = %s/%s, want %s/%s",
				(int)want[i].err, nn(cond), nn(type), want[i].condition,
				want[i].type);
		/* a NULL type pointer is allowed */
		ck_assert_pstr_eq(mm_errcondition(want[i].err, NULL), want[i].condition);
		if ((unsigned)want[i].err < (unsigned)MM_ERR_COUNT)
			known++;
	}
	ck_assert_uint_eq(known, MM_ERR_COUNT);
}
END_TEST

START_TEST(test_status_bit)
{
	ck_assert_uint_eq(mm_status_bit(110), MM_STATUS_110);
	ck_assert_uint_eq(mm_status_bit(201), MM_STATUS_201);
	ck_assert_uint_eq(mm_status_bit(210), MM_STATUS_210);
	ck_assert_uint_eq(mm_status_bit(301), MM_STATUS_301);
	ck_assert_uint_eq(mm_status_bit(303), MM_STATUS_303);
	ck_assert_uint_eq(mm_status_bit(307), MM_STATUS_307);
	ck_assert_uint_eq(mm_status_bit(321), MM_STATUS_321);
	ck_assert_uint_eq(mm_status_bit(322), MM_STATUS_322);
	ck_assert_uint_eq(mm_status_bit(332), MM_STATUS_332);
	ck_assert_uint_eq(mm_status_bit(333), MM_STATUS_333);
	ck_assert_uint_eq(mm_status_bit(0), 0);
	ck_assert_uint_eq(mm_status_bit(-1), 0);
	ck_assert_uint_eq(mm_status_bit(100), 0);
	ck_assert_uint_eq(mm_status_bit(170), 0);
	ck_assert_uint_eq(mm_status_bit(1), 0);
	ck_assert_uint_eq(mm_status_bit(999), 0);
	ck_assert_uint_eq(mm_status_bit(110 + 1024), 0);
}
END_TEST

/* ==== inspection ========================================================== */

START_TEST(test_inspect_stats)
{
	mm_stats s;

	expect_empty_state();
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	join(ACC, R1, ROOM2, "alice", "j3", NULL);
	join(ACC2, R3, ROOM, "bobby", "j4", NULL);
	s = stats();
	ck_assert_uint_eq(s.accounts, 2);
	ck_assert_uint_eq(s.memberships, 3);
	ck_assert_uint_eq(s.sessions, 4);
	ck_assert_uint_eq(s.occupants, must_info(ACC, ROOM).occupants +
			must_info(ACC, ROOM2).occupants + must_info(ACC2, ROOM).occupants);
	ck_assert_uint_eq(mm_session_gone(st, ACC, R1, &d), MM_OK);
	s = stats();
	ck_assert_uint_eq(s.accounts, 2);
	ck_assert_uint_eq(s.memberships, 3);
	ck_assert_uint_eq(s.sessions, 2);
}
END_TEST

/* A held payload handle stands for its text: every account that gets the
 * room's stanza with the handle keeps the same pooled copy, later sessions
 * get that text, and releasing the handle leaves the holders' copies. */
START_TEST(test_payload_handles)
{
	static const char text[] = P_BODY;
	mm_payload *h, *again;
	mm_presence p;
	mm_message m;
	mm_stats s0;
	size_t i, replays = 0, bob = 0;

	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	s0 = stats();

	ck_assert_ptr_null(mm_payload_hold(st, "a\0b", 3));
	ck_assert_ptr_null(mm_payload_hold(NULL, text, strlen(text)));
	h = mm_payload_hold(st, text, strlen(text));
	ck_assert_ptr_nonnull(h);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 1);
	again = mm_payload_hold(st, text, strlen(text));
	ck_assert_ptr_eq(again, h);
	mm_payload_release(st, again);
	mm_payload_release(st, NULL);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 1);

	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.has_body = 1;
	m.stamp = T_MSG;
	m.payload = text;
	m.payload_handle = h;
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(mm_room_message(st, ACC2, ROOM, "bob", &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);

	/* an occupant's presence with a handle is cached the same way */
	mm_payload_release(st, h);
	h = mm_payload_hold(st, P_BOB, strlen(P_BOB));
	p = presence(MM_PRES_AVAILABLE, 0, NULL, P_BOB);
	p.payload_handle = h;
	ck_assert_int_eq(mm_room_presence(st, ACC, ROOM, "bob", &p, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	mm_payload_release(st, h);
	/* held by the two histories and the occupant cache alone now */
	ck_assert_uint_eq(stats().payloads, s0.payloads + 2);

	join(ACC, R2, ROOM, "alice", "j2", NULL);
	for (i = 0; i < d.n; i++) {
		if (d.actions[i].op != MM_OP_REPLAY)
			continue;
		if (strcmp(d.actions[i].payload, text) == 0)
			replays++;
		if (strcmp(d.actions[i].payload, P_BOB) == 0)
			bob++;
	}
	ck_assert_uint_eq(replays, 1);
	ck_assert_uint_eq(bob, 1);

	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/* Payloads are interned: accounts in one room share each presence. */
START_TEST(test_inspect_payloads_interned)
{
	mm_stats s0, s1, s2;

	/* Both self-presences are the same text: interned once. */
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	s0 = stats();
	ck_assert_uint_eq(s0.payloads, 1);
	ck_assert_uint_ge(s0.payload_bytes, strlen(P_SELF));

	occupant(ACC, ROOM, "bob", P_BOB);
	s1 = stats();
	ck_assert_uint_eq(s1.occupants, s0.occupants + 1);
	ck_assert_uint_eq(s1.payloads, s0.payloads + 1);
	ck_assert_uint_ge(s1.payload_bytes, s0.payload_bytes + strlen(P_BOB));

	occupant(ACC2, ROOM, "bob", P_BOB);
	s2 = stats();
	ck_assert_uint_eq(s2.occupants, s0.occupants + 2);
	ck_assert_uint_eq(s2.payloads, s0.payloads + 1);
	ck_assert_uint_eq(s2.payload_bytes, s1.payload_bytes);

	occupant(ACC2, ROOM, "carol", P_CAROL);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 2);

	occupant_gone(ACC, ROOM, "bob");
	ck_assert_uint_eq(stats().payloads, s0.payloads + 2);
	occupant_gone(ACC2, ROOM, "bob");
	ck_assert_uint_eq(stats().payloads, s0.payloads + 1);
	occupant_gone(ACC2, ROOM, "carol");
	s2 = stats();
	ck_assert_uint_eq(s2.occupants, s0.occupants);
	ck_assert_uint_eq(s2.payloads, s0.payloads);
	ck_assert_uint_eq(s2.payload_bytes, s0.payload_bytes);

	/* A subject is a payload too; ending every membership frees all. */
	room_msg(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, 1, "s1", P_SUBJECT);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 1);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

START_TEST(test_inspect_membership_state)
{
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINING);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM2), -1);
	ck_assert_int_eq(mm_membership_state(st, ACC2, ROOM), -1);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
	session_leave(ACC, R1, ROOM, "l1");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
}
END_TEST

static int stop_cb(const mm_membership_info *info, void *ud)
{
	(void)info;
	(*(int *)ud)++;
	return 1;
}

START_TEST(test_inspect_account_memberships)
{
	struct minfo mi;
	int calls = 0;

	ck_assert_uint_eq(membership_count(ACC), 0);
	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	join(ACC, R1, ROOM2, "al", "j3", "pw");
	ck_assert_uint_eq(membership_count(ACC), 2);
	ck_assert_uint_eq(membership_count(ACC2), 0);

	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.room, ROOM);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_int_eq(mi.has_password, 0);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_uint_eq(mi.sessions, 2);
	ck_assert_uint_ge(mi.occupants, 2);
	ck_assert_uint_le(mi.occupants, 3);
	ck_assert_int_eq(mi.has_subject, 1);

	mi = must_info(ACC, ROOM2);
	ck_assert_str_eq(mi.nick, "al");
	ck_assert_int_eq(mi.has_password, 1);
	ck_assert_str_eq(mi.password, "pw");
	ck_assert_int_eq(mi.state, MM_JOINING);
	ck_assert_uint_eq(mi.sessions, 1);
	ck_assert_uint_eq(mi.occupants, 0);
	ck_assert_int_eq(mi.has_subject, 0);

	/* A non-zero return stops the walk after the one that returned it. */
	ck_assert_uint_eq(mm_account_memberships(st, ACC, stop_cb, &calls), 1);
	ck_assert_int_eq(calls, 1);
}
END_TEST

static int sess_stop_cb(const char *resource, int joined, void *ud)
{
	(void)resource;
	(void)joined;
	(*(int *)ud)++;
	return 1;
}

START_TEST(test_inspect_membership_sessions)
{
	struct slist sl;
	int calls = 0;

	ck_assert_uint_eq(get_sessions(ACC, ROOM, &sl), 0);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_uint_eq(get_sessions(ACC, ROOM, &sl), 2);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);
	ck_assert_uint_eq(get_sessions(ACC, ROOM2, &sl), 0);
	ck_assert_uint_eq(get_sessions(ACC2, ROOM, &sl), 0);
	ck_assert_uint_eq(mm_membership_sessions(st, ACC, ROOM, sess_stop_cb,
			&calls), 1);
	ck_assert_int_eq(calls, 1);
}
END_TEST

/* ==== decision lifetime =================================================== */

/*
 * "A decision and every string it points to is owned by the state and stays
 * valid until the next call": the strings must survive the end of the
 * membership that produced them.  Run under valgrind or ASan to see it.
 */
START_TEST(test_lifetime_removed_membership)
{
	const char *res0, *res1, *id0, *id1;

	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, "k1");
	expect_n(&d, 1, 2);
	res0 = d.actions[0].resource;
	res1 = d.actions[1].resource;
	id0 = d.actions[0].id;
	id1 = d.actions[1].id;
	ck_assert_ptr_nonnull(res0);
	ck_assert_ptr_nonnull(res1);
	ck_assert_msg((strcmp(res0, R1) == 0 && strcmp(res1, R2) == 0) ||
			(strcmp(res0, R2) == 0 && strcmp(res1, R1) == 0),
			"resources %s %s", res0, res1);
	if (id0)
		ck_assert_str_eq(id0, "k1");
	if (id1)
		ck_assert_str_eq(id1, "k1");
}
END_TEST

START_TEST(test_lifetime_join_error)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, "j1", NULL);
	const mm_action *a1, *a2;
	char r1[16], r2[16], i2[16];

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_pres(ACC, ROOM, "alice", &p);
	a1 = find_action(&d, MM_OP_DELIVER, R1);
	a2 = find_action(&d, MM_OP_DELIVER, R2);
	ck_assert_ptr_nonnull(a1);
	ck_assert_ptr_nonnull(a2);
	copy_str(r1, sizeof r1, a1->resource);
	copy_str(r2, sizeof r2, a2->resource);
	copy_str(i2, sizeof i2, a2->id);
	ck_assert_str_eq(r1, R1);
	ck_assert_str_eq(r2, R2);
	ck_assert_str_eq(i2, "j2");
}
END_TEST

START_TEST(test_lifetime_leave_completes)
{
	const char *res;

	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R1, ROOM, "l1");
	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	expect_n(&d, 1, 1);
	res = d.actions[0].resource;
	ck_assert_ptr_nonnull(res);
	ck_assert_str_eq(res, R1);
	if (d.actions[0].id)
		ck_assert_str_eq(d.actions[0].id, "l1");
}
END_TEST

/*
 * The core copies what it keeps and owns what it returns: clobbering the
 * caller's buffers after a call changes neither the state nor the decision.
 */
START_TEST(test_lifetime_strings_copied)
{
	char acc[64], res[64], room[64], nick[64], id[64], pw[64];
	const mm_action *a;
	struct minfo mi;

	strcpy(acc, ACC);
	strcpy(res, R1);
	strcpy(room, ROOM);
	strcpy(nick, "alice");
	strcpy(id, "j1");
	strcpy(pw, "secret");
	ck_assert_int_eq(mm_session_join(st, acc, res, room, nick, id, pw, &d),
			MM_OK);
	memset(acc, 'X', sizeof acc - 1);
	memset(res, 'X', sizeof res - 1);
	memset(room, 'X', sizeof room - 1);
	memset(nick, 'X', sizeof nick - 1);
	memset(id, 'X', sizeof id - 1);
	memset(pw, 'X', sizeof pw - 1);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_pstr_eq(a->nick, "alice");
	if (a->password)
		ck_assert_str_eq(a->password, "secret");

	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_str_eq(mi.password, "secret");
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);

	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	join(ACC, R2, ROOM, "alice", "j2", "secret");

	strcpy(res, R2);
	strcpy(id, "l2");
	session_leave(ACC, res, ROOM, id);
	memset(res, 'X', sizeof res - 1);
	memset(id, 'X', sizeof id - 1);
	a = expect_one(&d, MM_OP_REFLECT_LEAVE, R2);
	ck_assert_pstr_eq(a->id, "l2");
	ck_assert_pstr_eq(a->nick, "alice");
}
END_TEST

/* A replay's payloads outlive the presence that brought them. */
START_TEST(test_lifetime_payload_copied)
{
	char payload[256];

	strcpy(payload, P_BOB);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	occupant(ACC, ROOM, "bob", payload);
	memset(payload, 'X', sizeof payload - 1);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay(&d, R2, (const char *const[]){ P_BOB }, 1, P_SELF, 0,
			NULL);
}
END_TEST

/* ==== helpers for presence aggregation, carbons, IQs and re-joins ========= */

/* A session's presence to the room, serialized without to/from/id/MUC <x/>. */
#define SPRES(inner) "<presence>" inner "</presence>"

static void join_req(const char *acc, const char *res, const char *room,
		const char *nick, const char *id, const char *show, const char *pres)
{
	mm_join r;
	mm_err e;

	memset(&r, 0, sizeof r);
	r.nick = nick;
	r.id = id;
	r.show = show;
	r.presence = pres;
	e = mm_session_join_req(st, acc, res, room, &r, &d);
	ck_assert_msg(e == MM_OK, "join_req %s/%s %s/%s: %s", acc, res, room,
			nick, mm_strerror(e));
}

/* First session joins with show/presence; the room answers at once. */
static void joined_room_req(const char *acc, const char *res,
		const char *room, const char *nick, const char *show,
		const char *pres)
{
	join_req(acc, res, room, nick, "j1", show, pres);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	self_pres(acc, room, nick, 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ res }, 1);
}

static void session_pres(const char *acc, const char *res, const char *room,
		const char *nick, const char *id, const char *show, const char *pres)
{
	mm_err e = mm_session_presence(st, acc, res, room, nick, id, show, pres,
			&d);
	ck_assert_msg(e == MM_OK, "session presence: %s", mm_strerror(e));
}

static void session_iq(const char *acc, const char *res, const char *room,
		const char *nick, const char *id, const char *queryid, int is_ping,
		double now)
{
	mm_err e = mm_session_iq(st, acc, res, room, nick, id, queryid, is_ping,
			now, &d);
	ck_assert_msg(e == MM_OK, "session iq: %s", mm_strerror(e));
}

/*
 * A joined session's IQ goes out as the account with an id the module owns;
 * copy that id (the decision's strings die with the next call).
 */
static void sent_iq(const char *acc, const char *res, const char *room,
		const char *nick, const char *id, const char *queryid, int is_ping,
		double now, char *buf, size_t size)
{
	const mm_action *a;

	session_iq(acc, res, room, nick, id, queryid, is_ping, now);
	expect_n(&d, 1, 1);
	a = expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	ck_assert_msg(a->id != NULL, "IQ sent without a module id: %s",
			describe(&d));
	ck_assert_msg(strcmp(a->id, id) != 0, "IQ kept its own id %s", id);
	ck_assert_pstr_eq(a->room, room);
	ck_assert_uint_lt(strlen(a->id), size);
	copy_str(buf, size, a->id);
}

static void room_iq(const char *acc, const char *room, const char *nick,
		const char *id, int is_error, const char *condition)
{
	mm_err e = mm_room_iq(st, acc, room, nick, id, is_error, condition, &d);
	ck_assert_msg(e == MM_OK, "room iq: %s", mm_strerror(e));
}

static void expire(double now)
{
	mm_err e = mm_tick(st, now, &d);
	ck_assert_msg(e == MM_OK, "tick: %s", mm_strerror(e));
}

/* The tests' clock for the ticks below. */
static double tnow;

/* Keep only the decision's actions for acc in room (ticks span many
 * memberships), without EVENT notes; not handled when none is left. */
static mm_action kept[64];
static void keep_only(const char *acc, const char *room)
{
	size_t i, n = 0;

	for (i = 0; i < d.n && n < sizeof kept / sizeof kept[0]; i++)
		if (str_eq(d.actions[i].room, room) && str_eq(d.actions[i].account, acc)
				&& d.actions[i].op != MM_OP_EVENT) {
			kept[n] = d.actions[i];
			kept[n++].account = NULL; /* as in a decision about one */
		}
	d.n = n;
	d.actions = n ? kept : NULL;
	d.handled = n > 0;
	d.event = d.reason = NULL;
}

/* Time passes until any re-join delay is over (at most an hour): what
 * does acc's membership in room do?  The first tick starts the waits
 * entered before any tick. */
static void rejoin_due(const char *acc, const char *room)
{
	expire(tnow += 1);
	expire(tnow += 3601);
	keep_only(acc, room);
}

static void room_msg_q(const char *acc, const char *room, const char *nick,
		mm_msg_type type, const char *queryid, const char *id)
{
	mm_message m;
	mm_err e;

	memset(&m, 0, sizeof m);
	m.type = type;
	m.queryid = queryid;
	m.has_body = 1;
	m.id = id;
	m.payload = P_BODY;
	e = mm_room_message(st, acc, room, nick, &m, &d);
	ck_assert_msg(e == MM_OK, "room message: %s", mm_strerror(e));
}

/* The room answers the account's join (nick "alice") with an error. */
static void join_error(const char *acc, const char *room, const char *id,
		const char *condition)
{
	mm_presence p = presence(MM_PRES_ERROR, 0, id, NULL);

	p.condition = condition;
	room_pres(acc, room, "alice", &p);
}

/*
 * "room: the room the action concerns; always set"; "account: the account,
 * in decisions that span many (mm_tick, mm_ping_due); NULL elsewhere".
 */
static void expect_room_all(const mm_decision *dd, const char *room)
{
	size_t i;

	for (i = 0; i < dd->n; i++) {
		mm_op op = dd->actions[i].op;
		ck_assert_msg(str_eq(dd->actions[i].room, room),
				"action %zu not about %s: %s", i, room, describe(dd));
		if (op != MM_OP_IQ_ERROR && op != MM_OP_SEND_PING && op != MM_OP_SEND_JOIN)
			ck_assert_msg(dd->actions[i].account == NULL,
					"action %zu names an account: %s", i, describe(dd));
	}
}

/* handled, one action of `op` and nothing else, about `room`. */
static const mm_action *expect_only(const mm_decision *dd, mm_op op,
		const char *room)
{
	expect_n(dd, 1, 1);
	expect_room_all(dd, room);
	return expect_one(dd, op, NULL);
}

/* Index of action a in the decision. */
static size_t action_index(const mm_decision *dd, const mm_action *a)
{
	ck_assert(a >= dd->actions && a < dd->actions + dd->n);
	return (size_t)(a - dd->actions);
}

static void expect_all_waiting(const char *acc, const char *room,
		size_t nsessions)
{
	struct slist sl;
	size_t i;

	ck_assert_uint_eq(get_sessions(acc, room, &sl), nsessions);
	for (i = 0; i < sl.n; i++)
		ck_assert_msg(sl.joined[i] == 0, "session %s still joined",
				sl.res[i]);
}

static void expect_all_joined(const char *acc, const char *room,
		size_t nsessions)
{
	struct slist sl;
	size_t i;

	ck_assert_uint_eq(get_sessions(acc, room, &sl), nsessions);
	for (i = 0; i < sl.n; i++)
		ck_assert_msg(sl.joined[i] == 1, "session %s not joined", sl.res[i]);
}

/* ==== join: a waiter that asks again ====================================== */

/*
 * "Membership joining: the session waits; it is replayed what the room sent
 * so far and gets the rest as it arrives.  No second join is sent." - also
 * for a session that waits already and sends its join again.
 */
START_TEST(test_join_waiter_asks_again_replayed)
{
	const char *const others[] = { P_BOB, P_CAROL };
	size_t i, j;
	int seen[2] = { 0, 0 };

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	occupant(ACC, ROOM, "carol", P_CAROL);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);

	join(ACC, R2, ROOM, "alice", "j2b", NULL);
	/* the occupants so far, in any order; no join, no self-presence yet */
	expect_n(&d, 1, 2);
	expect_room_all(&d, ROOM);
	for (i = 0; i < d.n; i++) {
		const mm_action *a = &d.actions[i];
		ck_assert_msg(a->op == MM_OP_REPLAY && str_eq(a->resource, R2),
				"not a replay to %s: %s", R2, describe(&d));
		for (j = 0; j < 2; j++)
			if (!seen[j] && str_eq(a->payload, others[j]))
				break;
		ck_assert_msg(j < 2, "unexpected replay: %s", describe(&d));
		seen[j] = 1;
	}
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINING);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 0);
	ck_assert_uint_eq(stats().sessions, 2);

	/* The rest arrives live; R2's answer carries its latest join's id. */
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_pstr_eq(effective_id(find_action(&d, MM_OP_DELIVER, R1), "j1"),
			"j1");
	ck_assert_pstr_eq(effective_id(find_action(&d, MM_OP_DELIVER, R2), "j1"),
			"j2b");
	expect_all_joined(ACC, ROOM, 2);
}
END_TEST

/* ==== presence aggregation ================================================ */

/* <show/> values, most available first; NULL is plain available. */
static const char *const shows[] = { "chat", NULL, "dnd", "away", "xa" };
#define N_SHOWS (sizeof shows / sizeof shows[0])

/*
 * For every pair (a, b) with a more available than b: which session leads
 * decides what the room sees.  Every text differs, so "the room's view does
 * not change" only when the leading session stays the same.
 */
START_TEST(test_presence_order)
{
	size_t ia = 0, ib = 0, k = 0;
	const char *a, *b;
	const mm_action *act;

	/* the _i-th pair (ia < ib) */
	for (ia = 0; ia < N_SHOWS; ia++)
		for (ib = ia + 1; ib < N_SHOWS; ib++)
			if (k++ == (size_t)_i)
				goto found;
	ck_abort_msg("no pair %d", _i);
found:
	a = shows[ia];
	b = shows[ib];

	/* R1 leads with chat; R2 joins less available than that (xa). */
	joined_room_req(ACC, R1, ROOM, "alice", "chat",
			SPRES("<status>r1-join</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "xa",
			SPRES("<status>r2-join</status>"));
	expect_replay(&d, R2, NULL, 0, P_SELF, 0, NULL);

	/* the leader's own update: the room sees it */
	session_pres(ACC, R1, ROOM, "alice", "p1", b,
			SPRES("<status>r1-b</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* R2 becomes more available than R1: it speaks for the account */
	session_pres(ACC, R2, ROOM, "alice", "p2", a,
			SPRES("<status>r2-a</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* R1, behind, changes: the room's view stays R2's */
	session_pres(ACC, R1, ROOM, "alice", "p3", b,
			SPRES("<status>r1-b2</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	/* equals: the latest update wins */
	session_pres(ACC, R1, ROOM, "alice", "p4", a,
			SPRES("<status>r1-a</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	session_pres(ACC, R2, ROOM, "alice", "p5", a,
			SPRES("<status>r2-a2</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* the leader falls behind: the room sees R1's presence again */
	session_pres(ACC, R2, ROOM, "alice", "p6", b,
			SPRES("<status>r2-b</status>"));
	act = expect_only(&d, MM_OP_SEND_PRESENCE, ROOM);
	ck_assert_pstr_eq(act->payload, SPRES("<status>r1-a</status>"));
	ck_assert_pstr_eq(act->nick, "alice");
	/* R2 back in front; then R1, behind, falls further: nothing changes */
	session_pres(ACC, R2, ROOM, "alice", "p7", a,
			SPRES("<status>r2-a3</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	session_pres(ACC, R1, ROOM, "alice", "p8", b,
			SPRES("<status>r1-b3</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);
}
END_TEST

#define N_SHOW_PAIRS ((N_SHOWS * (N_SHOWS - 1)) / 2)

/*
 * The presence a session joined with (mm_join.presence) is what the room
 * is sent when that session comes to lead; the account's nick, not the
 * session's, addresses it.
 */
START_TEST(test_presence_join_presence_stored)
{
	const mm_action *a;

	joined_room_req(ACC, R1, ROOM, "alice", NULL,
			SPRES("<status>r1-join</status>"));
	join_req(ACC, R2, ROOM, "alicia", "j2", "away",
			SPRES("<show>away</show><status>r2-join</status>"));
	expect_replay(&d, R2, NULL, 0, P_SELF, 1, NULL);
	join_req(ACC, R3, ROOM, "alice", "j3", "xa",
			SPRES("<show>xa</show><status>r3-join</status>"));
	expect_replay(&d, R3, NULL, 0, P_SELF, 0, NULL);

	/* R1 goes xa (latest among xa): R2 leads, with what it joined with */
	session_pres(ACC, R1, ROOM, "alice", "p1", "xa",
			SPRES("<show>xa</show><status>r1-xa</status>"));
	a = expect_only(&d, MM_OP_SEND_PRESENCE, ROOM);
	ck_assert_pstr_eq(a->payload,
			SPRES("<show>away</show><status>r2-join</status>"));
	ck_assert_pstr_eq(a->nick, "alice");

	/* R3, behind R2's away, changes its text: nothing to tell the room */
	session_pres(ACC, R3, ROOM, "alice", "p2", "xa",
			SPRES("<show>xa</show><status>r3-xa</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	/* R2 goes dnd: still the lead, its own update */
	session_pres(ACC, R2, ROOM, "alice", "p3", "dnd",
			SPRES("<show>dnd</show><status>r2-dnd</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* R2 goes xa too: xa everywhere, R2 latest - it still leads */
	session_pres(ACC, R2, ROOM, "alice", "p4", "xa",
			SPRES("<show>xa</show><status>r2-xa</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* R3 updates (xa, now the latest): it leads with the text it sent */
	session_pres(ACC, R3, ROOM, "alice", "p5", "xa",
			SPRES("<show>xa</show><status>r3-xa2</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* R3 leaves: R2 was the latest xa after it */
	session_leave(ACC, R3, ROOM, "l3");
	expect_n(&d, 1, 2);
	expect_one(&d, MM_OP_REFLECT_LEAVE, R3);
	a = expect_one(&d, MM_OP_SEND_PRESENCE, NULL);
	ck_assert_pstr_eq(a->payload,
			SPRES("<show>xa</show><status>r2-xa</status>"));
}
END_TEST

/* A nick change (nick differs from the account's) is always SEND_AS_ACCOUNT. */
START_TEST(test_presence_nick_change_always_sent)
{
	joined_room_req(ACC, R1, ROOM, "alice", "chat",
			SPRES("<show>chat</show><status>r1</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "xa",
			SPRES("<show>xa</show><status>r2</status>"));
	/* R2 is behind R1, so a status update would be dropped ... */
	session_pres(ACC, R2, ROOM, "alice", "p1", "xa",
			SPRES("<show>xa</show><status>r2b</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	/* ... but a nick change is the room's business */
	session_pres(ACC, R2, ROOM, "alicia", "n1", "xa",
			SPRES("<show>xa</show><status>r2c</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* without any presence payload too */
	session_pres(ACC, R1, ROOM, "ally", "n2", NULL, NULL);
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	/* the nick is the account's until the room says otherwise */
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");
}
END_TEST

/*
 * The session the room shows leaves while others stay: it sees itself leave
 * and the room is sent the next most available session's presence.
 */
START_TEST(test_presence_leader_leaves)
{
	const mm_action *a;

	joined_room_req(ACC, R1, ROOM, "alice", NULL, SPRES("<status>r1</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "away",
			SPRES("<show>away</show><status>r2</status>"));
	join_req(ACC, R3, ROOM, "alice", "j3", "xa",
			SPRES("<show>xa</show><status>r3</status>"));

	/* R3 is not shown: its leave is its own affair */
	session_leave(ACC, R3, ROOM, "l3");
	expect_n(&d, 1, 1);
	expect_room_all(&d, ROOM);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_REFLECT_LEAVE, R3)->id, "l3");

	/* R1 is: R2's stored presence replaces it */
	session_leave(ACC, R1, ROOM, "l1");
	expect_n(&d, 1, 2);
	expect_room_all(&d, ROOM);
	a = expect_one(&d, MM_OP_REFLECT_LEAVE, R1);
	ck_assert_pstr_eq(a->id, "l1");
	ck_assert_pstr_eq(a->nick, "alice");
	a = expect_one(&d, MM_OP_SEND_PRESENCE, NULL);
	ck_assert_pstr_eq(a->payload,
			SPRES("<show>away</show><status>r2</status>"));
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);

	/* R2 leads now: its update goes out as the account */
	session_pres(ACC, R2, ROOM, "alice", "p1", "xa",
			SPRES("<show>xa</show><status>r2b</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
}
END_TEST

/*
 * mm_session_gone: "When the session's presence was the room's view of the
 * account, the decision sends the next most available session's presence
 * (SEND_PRESENCE, with `room`)" - per room where it led, none elsewhere.
 */
START_TEST(test_presence_leader_gone)
{
	const mm_action *a;
	size_t i, in_room = 0, in_room2 = 0;

	/* ROOM: R1 (available) leads R2 (away) */
	joined_room_req(ACC, R1, ROOM, "alice", NULL, SPRES("<status>1a</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "away",
			SPRES("<show>away</show><status>2a</status>"));
	/* ROOM2: R1 (chat) leads R2 (dnd); the account is "al" there */
	joined_room_req(ACC, R1, ROOM2, "al", "chat",
			SPRES("<show>chat</show><status>1b</status>"));
	join_req(ACC, R2, ROOM2, "al", "j4", "dnd",
			SPRES("<show>dnd</show><status>2b</status>"));
	/* ROOM3: R2 (chat) leads R1 (xa) */
	joined_room_req(ACC, R2, ROOM3, "ali", "chat",
			SPRES("<show>chat</show><status>2c</status>"));
	join_req(ACC, R1, ROOM3, "ali", "j6", "xa",
			SPRES("<show>xa</show><status>1c</status>"));
	/* another account's session of the same name stays */
	joined_room_req(ACC2, R1, ROOM, "bobby", NULL, SPRES("<status>x</status>"));

	ck_assert_int_eq(mm_session_gone(st, ACC, R1, &d), MM_OK);
	expect_n(&d, 1, 2);
	for (i = 0; i < d.n; i++) {
		a = &d.actions[i];
		ck_assert_msg(a->op == MM_OP_SEND_PRESENCE, "not SEND_PRESENCE: %s",
				describe(&d));
		ck_assert_ptr_null(a->account);
		if (str_eq(a->room, ROOM)) {
			in_room++;
			ck_assert_pstr_eq(a->payload,
					SPRES("<show>away</show><status>2a</status>"));
			ck_assert_pstr_eq(a->nick, "alice");
		} else if (str_eq(a->room, ROOM2)) {
			in_room2++;
			ck_assert_pstr_eq(a->payload,
					SPRES("<show>dnd</show><status>2b</status>"));
			ck_assert_pstr_eq(a->nick, "al");
		} else {
			ck_abort_msg("SEND_PRESENCE for %s: %s", nn(a->room),
					describe(&d));
		}
	}
	ck_assert_uint_eq(in_room, 1);
	ck_assert_uint_eq(in_room2, 1);
	ck_assert_int_eq(session_state(ACC, ROOM3, R1), -1);
	ck_assert_int_eq(session_state(ACC2, ROOM, R1), 1);

	/* R2 leads everywhere now: its updates go out as the account */
	session_pres(ACC, R2, ROOM, "alice", "p1", "xa",
			SPRES("<show>xa</show><status>2a2</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);

	/* the last session gone: nobody left to show; the account stays */
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(membership_count(ACC), 3);
}
END_TEST

/* A session gone that the room does not show changes nothing there. */
START_TEST(test_presence_follower_gone)
{
	joined_room_req(ACC, R1, ROOM, "alice", "chat",
			SPRES("<show>chat</show><status>1</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "away",
			SPRES("<show>away</show><status>2</status>"));
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	expect_n(&d, 1, 0);
	/* R1 leads still: an update of its own is sent */
	session_pres(ACC, R1, ROOM, "alice", "p1", "dnd",
			SPRES("<show>dnd</show><status>1b</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
}
END_TEST

/*
 * "The room sees the account's presence as that of its most available
 * joined session" and mm_join.presence is "the account's presence in the
 * room when this session is the most available one": a session that joins
 * more available than the one the room shows takes the lead at once.
 */
START_TEST(test_presence_later_join_leads)
{
	const mm_action *a;

	joined_room_req(ACC, R1, ROOM, "alice", "away",
			SPRES("<show>away</show><status>r1</status>"));
	join_req(ACC, R2, ROOM, "alicia", "j2", NULL, SPRES("<status>r2</status>"));
	ck_assert_int_eq(d.handled, 1);
	expect_room_all(&d, ROOM);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R2), 1);
	a = expect_one(&d, MM_OP_SEND_PRESENCE, NULL);
	ck_assert_pstr_eq(a->payload, SPRES("<status>r2</status>"));
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_uint_eq(d.n, 2);
	/* R1, behind, changes: the room shows R2 already */
	session_pres(ACC, R1, ROOM, "alice", "p1", "xa",
			SPRES("<show>xa</show><status>r1b</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
}
END_TEST

/*
 * "among equals the latest update wins (a later session's join counts as
 * an update: SEND_PRESENCE of its presence when it leads and the room shows
 * another text)": a join as available as the shown session leads; with the
 * text the room shows already, the room is told nothing; a join behind the
 * leader, or one without a presence, changes nothing.
 */
START_TEST(test_presence_later_join_equal_or_behind)
{
	const mm_action *a;

	joined_room_req(ACC, R1, ROOM, "alice", "away",
			SPRES("<show>away</show><status>r1</status>"));
	/* as available, another text: it leads, the room is sent its text */
	join_req(ACC, R2, ROOM, "alice", "j2", "away",
			SPRES("<show>away</show><status>r2</status>"));
	expect_n(&d, 1, 2);
	expect_room_all(&d, ROOM);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R2), 1);
	a = expect_one(&d, MM_OP_SEND_PRESENCE, NULL);
	ck_assert_pstr_eq(a->payload,
			SPRES("<show>away</show><status>r2</status>"));
	ck_assert_pstr_eq(a->nick, "alice");
	/* R1 updates, as available: the latest among equals, it leads again */
	session_pres(ACC, R1, ROOM, "alice", "p1", "away",
			SPRES("<show>away</show><status>r1b</status>"));
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);

	/* as available, the text the room shows: nothing to tell the room */
	join_req(ACC, R3, ROOM, "alice", "j3", "away",
			SPRES("<show>away</show><status>r1b</status>"));
	expect_replay(&d, R3, NULL, 0, P_SELF, 0, NULL);

	/* less available than the leader: nothing for the room */
	join_req(ACC, "desk", ROOM, "alice", "j4", "xa",
			SPRES("<show>xa</show><status>desk</status>"));
	expect_replay(&d, "desk", NULL, 0, P_SELF, 0, NULL);
	/* more available, but without a presence: nothing to send */
	join_req(ACC, "watch", ROOM, "alice", "j5", "chat", NULL);
	expect_replay(&d, "watch", NULL, 0, P_SELF, 0, NULL);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 5);
}
END_TEST

/*
 * "A session that is in the membership but not joined (waiting, leaving)
 * gets DROP" - a waiter that asked, a later waiter, and a leaving session
 * with a waiter behind it.
 */
START_TEST(test_presence_not_joined_dropped)
{
	join_req(ACC, R1, ROOM, "alice", "j1", NULL, SPRES("<status>1</status>"));
	join_req(ACC, R2, ROOM, "alice", "j2", "chat",
			SPRES("<show>chat</show><status>2</status>"));
	session_pres(ACC, R2, ROOM, "alice", "p1", "chat",
			SPRES("<show>chat</show><status>2b</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	session_pres(ACC, R1, ROOM, "alice", "p2", NULL,
			SPRES("<status>1b</status>"));
	expect_only(&d, MM_OP_DROP, ROOM);
	/* a nick change from a waiter would be a join too */
	session_pres(ACC, R2, ROOM, "alicia", "p3", NULL, NULL);
	expect_only(&d, MM_OP_DROP, ROOM);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINING);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alice");

	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);

	/* leaving: both sessions leave, then R3 waits behind the leave */
	session_leave(ACC, R2, ROOM, "l2");
	session_leave(ACC, R1, ROOM, "l1");
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	session_pres(ACC, R1, ROOM, "alice", "p4", NULL, NULL);
	expect_only(&d, MM_OP_DROP, ROOM);
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	session_pres(ACC, R3, ROOM, "alice", "p5", NULL, NULL);
	expect_only(&d, MM_OP_DROP, ROOM);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING_REJOIN);
}
END_TEST

/* ==== carbons ============================================================= */

START_TEST(test_carbons_private_message)
{
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	/* sessions elsewhere: the account in another room, another account */
	joined_room(ACC, "desk", ROOM2, "alice");
	joined_room(ACC2, "desk", ROOM, "bobby");

	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm1");
	expect_n(&d, 1, 3);
	expect_room_all(&d, ROOM);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	expect_one(&d, MM_OP_CARBON, R2);
	expect_one(&d, MM_OP_CARBON, R3);
	ck_assert_uint_eq(count_op(&d, MM_OP_CARBON, NULL), 2);

	session_msg(ACC, R3, ROOM, "carol", MM_MSG_CHAT, "pm2");
	expect_n(&d, 1, 3);
	expect_room_all(&d, ROOM);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	expect_one(&d, MM_OP_CARBON, R1);
	expect_one(&d, MM_OP_CARBON, R2);

	/* groupchat is the room's to reflect: no carbons */
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);

	/* a session that left or is gone gets none */
	session_leave(ACC, R2, ROOM, "l2");
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm3");
	expect_n(&d, 1, 2);
	expect_room_all(&d, ROOM);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	expect_one(&d, MM_OP_CARBON, R3);
	ck_assert_int_eq(mm_session_gone(st, ACC, R3, &d), MM_OK);
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm4");
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);

	/* the other account's single session: nothing to copy to */
	session_msg(ACC2, "desk", ROOM, "bob", MM_MSG_CHAT, "pm5");
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
}
END_TEST

/*
 * Only joined sessions get carbons.  While the account joins (again), no
 * session is joined: private messages are not the module's, and the room's
 * join sequence is what the waiting sessions get.
 */
START_TEST(test_carbons_not_while_joining)
{
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm1");
	expect_not_handled(&d);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "pm2");
	expect_n(&d, 1, 2);
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	expect_one(&d, MM_OP_CARBON, R2);
}
END_TEST

/* ==== iq ================================================================== */

START_TEST(test_iq_module_id_and_answer)
{
	char id1[64], id2[64], id3[64], id4[64];
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC2, R1, ROOM, "bobby");
	ck_assert_uint_eq(stats().iqs, 0);

	/* the same original id, three times over: three module ids */
	sent_iq(ACC, R2, ROOM, NULL, "q1", NULL, 0, 100, id1, sizeof id1);
	sent_iq(ACC, R2, ROOM, NULL, "q1", NULL, 0, 100, id2, sizeof id2);
	sent_iq(ACC, R1, ROOM, "bob", "q1", NULL, 0, 100, id3, sizeof id3);
	sent_iq(ACC2, R1, ROOM, NULL, "q1", NULL, 0, 100, id4, sizeof id4);
	ck_assert_str_ne(id1, id2);
	ck_assert_str_ne(id1, id3);
	ck_assert_str_ne(id1, id4);
	ck_assert_str_ne(id2, id3);
	ck_assert_str_ne(id2, id4);
	ck_assert_str_ne(id3, id4);
	ck_assert_uint_eq(stats().iqs, 4);

	/* the answer reaches the asker alone, with its own id */
	room_iq(ACC, ROOM, NULL, id2, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->id, "q1");
	ck_assert_uint_eq(stats().iqs, 3);
	/* once */
	room_iq(ACC, ROOM, NULL, id2, 0, NULL);
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().iqs, 3);

	/* an error answer, from the occupant asked */
	room_iq(ACC, ROOM, "bob", id3, 1, "service-unavailable");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "q1");

	room_iq(ACC2, ROOM, NULL, id4, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "q1");

	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->id, "q1");
	ck_assert_uint_eq(stats().iqs, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
}
END_TEST

/* Only the room the IQ went to can answer it, and only to that account. */
START_TEST(test_iq_spoofed_answers)
{
	char id1[64];
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, ROOM2, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	joined_room(ACC2, R2, ROOM2, "bobby");
	sent_iq(ACC, R1, ROOM, NULL, "q1", NULL, 0, 100, id1, sizeof id1);

	room_iq(ACC, ROOM2, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM3, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC2, ROOM, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC2, ROOM2, NULL, id1, 1, "not-acceptable");
	expect_not_handled(&d);
	/* the original id is not the module's */
	room_iq(ACC, ROOM, NULL, "q1", 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM, NULL, "unknown", 0, NULL);
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().iqs, 1);

	/*
	 * "the id is one the module gave an IQ ... to this very JID (room, or
	 * room/nick)": sent to the room's bare JID, an answer from an occupant
	 * is not the answer, not even from the account's own nick.
	 */
	room_iq(ACC, ROOM, "bob", id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM, "alice", id1, 1, "not-acceptable");
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().iqs, 1);

	/* the IQ still waits for its real answer */
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "q1");
	ck_assert_uint_eq(stats().iqs, 0);

	/*
	 * Sent to room/bob: the room's bare JID, another occupant, bob in
	 * another room, or a nick that differs only in case cannot answer it.
	 */
	sent_iq(ACC, R1, ROOM, "bob", "q2", NULL, 0, 100, id1, sizeof id1);
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM, "carol", id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM, "alice", id1, 1, "service-unavailable");
	expect_not_handled(&d);
	room_iq(ACC, ROOM2, "bob", id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC, ROOM, "Bob", id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC2, ROOM, "bob", id1, 0, NULL);
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().iqs, 1);
	room_iq(ACC, ROOM, "bob", id1, 1, "item-not-found");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "q2");
	ck_assert_uint_eq(stats().iqs, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
}
END_TEST

/*
 * Module-owned ids look like "mmx-<32 hex digits>": 128 bits from the
 * kernel's CSPRNG and nothing else.
 */
static int is_module_id(const char *id, char tail[33])
{
	size_t n;

	if (strncmp(id, "mmx-", 4) != 0)
		return 0;
	for (n = 0; id[4 + n] != '\0' && strchr("0123456789abcdef", id[4 + n]); n++)
		;
	if (n != 32 || id[4 + n] != '\0')
		return 0;
	memcpy(tail, id + 4, 33);
	return 1;
}

/* x ^= x >> k, undone */
static uint64_t unxorshift(uint64_t y, unsigned k)
{
	uint64_t x = y;
	unsigned i;

	for (i = 0; i < 64 / k + 1; i++)
		x = y ^ (x >> k);
	return x;
}

/* the inverse of an odd number modulo 2^64 (Newton's iteration) */
static uint64_t inverse64(uint64_t a)
{
	uint64_t x = a;
	int i;

	for (i = 0; i < 6; i++)
		x *= 2 - a * x;
	return x;
}

/* splitmix64's finalizer, and its inverse: what an observer of one id
 * "mmx-<counter>-<mix(secret ^ counter)>" could compute */
static uint64_t splitmix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t unsplitmix(uint64_t y)
{
	uint64_t x = unxorshift(y, 31);
	x = unxorshift(x * inverse64(0x94d049bb133111ebull), 27);
	x = unxorshift(x * inverse64(0xbf58476d1ce4e5b9ull), 30);
	return x - 0x9e3779b97f4a7c15ull;
}

/*
 * "The id is 128 random bits from the kernel's CSPRNG, nothing else: one
 * id tells nothing of another": every id has the shape and no two are
 * alike; an observer who reads one id and knows how ids used to be made
 * (a counter and a reversible mix of a secret) cannot predict the next
 * one; another state (restarted server) makes other ids; a guessed id is
 * nobody's answer.
 */
START_TEST(test_iq_id_secret)
{
	char ids[4][64], tails[4][33], other[64], tail[33];
	size_t i, j;
	const mm_action *a;

	ck_assert_uint_eq(unsplitmix(splitmix(0x123456789abcdefull)), 0x123456789abcdefull);
	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < 4; i++)
		sent_iq(ACC, R1, ROOM, i % 2 ? "bob" : NULL, "q", NULL, i == 3,
				100, ids[i], sizeof ids[i]);
	/* the attack on counter-and-secret ids: recover the secret from the
	 * first id, predict the second */
	{
		unsigned long long counter, mixed;
		char predicted[64];

		if (sscanf(ids[0], "mmx-%llx-%llx", &counter, &mixed) == 2) {
			uint64_t secret = unsplitmix(mixed) ^ counter;
			snprintf(predicted, sizeof predicted, "mmx-%llx-%016llx", counter + 1,
				(unsigned long long)splitmix(secret ^ (counter + 1)));
			ck_assert_msg(strcmp(predicted, ids[1]) != 0,
				"the id %s after %s was predicted from it", ids[1], ids[0]);
		}
	}
	for (i = 0; i < 4; i++)
		ck_assert_msg(is_module_id(ids[i], tails[i]),
				"id %s is not mmx-<32 hex>", ids[i]);
	for (i = 0; i < 4; i++)
		for (j = i + 1; j < 4; j++)
			ck_assert_str_ne(ids[i], ids[j]);

	/* a fresh state, the same calls: other ids */
	reset_state(NULL);
	joined_room(ACC, R1, ROOM, "alice");
	sent_iq(ACC, R1, ROOM, NULL, "q", NULL, 0, 100, other, sizeof other);
	ck_assert(is_module_id(other, tail));
	ck_assert_str_ne(other, ids[0]);
	/* the first state's id is no answer here */
	room_iq(ACC, ROOM, NULL, ids[0], 0, NULL);
	expect_not_handled(&d);
	/* nor is a guessed one */
	{
		char guess[64];
		size_t len = strlen(other);

		copy_str(guess, sizeof guess, other);
		guess[len - 1] = guess[len - 1] == '0' ? '1' : '0';
		room_iq(ACC, ROOM, NULL, guess, 0, NULL);
		expect_not_handled(&d);
		room_iq(ACC, ROOM, NULL, "mmx-00000000000000000000000000000000", 0, NULL);
		expect_not_handled(&d);
	}
	ck_assert_uint_eq(stats().iqs, 1);
	room_iq(ACC, ROOM, NULL, other, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->id, "q");
}
END_TEST

/*
 * "The ids are 128 random bits each": over 256 ids every hex digit
 * position takes many values, and the two digits of each byte vary
 * independently (an id built from half of each byte's bits repeats its
 * digit pairs within 16 values).  For truly random ids each bound below
 * fails with a probability far under 1e-30.
 */
START_TEST(test_iq_id_all_bits)
{
	enum { NIDS = 256 };
	static char tails[NIDS][33];
	char id[64];
	size_t i, pos;
	mm_limits l;

	memset(&l, 0, sizeof l);
	l.max_iqs = NIDS;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < NIDS; i++) {
		sent_iq(ACC, R1, ROOM, NULL, "q", NULL, 0, 100, id, sizeof id);
		ck_assert_msg(is_module_id(id, tails[i]), "id %s is not mmx-<32 hex>", id);
	}
	for (pos = 0; pos < 32; pos++) {
		int seen[16] = { 0 }, distinct = 0;

		for (i = 0; i < NIDS; i++) {
			const char *c = strchr("0123456789abcdef", tails[i][pos]);
			if (!seen[c - "0123456789abcdef"]++)
				distinct++;
		}
		ck_assert_msg(distinct >= 8, "digit %zu takes only %d values", pos, distinct);
	}
	for (pos = 0; pos < 32; pos += 2) {
		static int pairs[256];
		int distinct = 0;

		memset(pairs, 0, sizeof pairs);
		for (i = 0; i < NIDS; i++) {
			unsigned hi = (unsigned)(strchr("0123456789abcdef", tails[i][pos]) - "0123456789abcdef");
			unsigned lo = (unsigned)(strchr("0123456789abcdef", tails[i][pos + 1]) - "0123456789abcdef");
			if (!pairs[hi * 16 + lo]++)
				distinct++;
		}
		ck_assert_msg(distinct >= 64, "byte %zu takes only %d values", pos / 2, distinct);
	}
}
END_TEST

/* "Not handled when the session is not joined (the room answers it)." */
START_TEST(test_iq_not_joined)
{
	mm_stats before, after;

	session_iq(ACC, R1, ROOM, NULL, "q0", NULL, 0, 100);
	expect_not_handled(&d);

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	session_iq(ACC, R1, ROOM, NULL, "q1", NULL, 0, 100);
	expect_not_handled(&d);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	/* a session of the account that never joined, another account */
	session_iq(ACC, R2, ROOM, NULL, "q2", NULL, 0, 100);
	expect_not_handled(&d);
	session_iq(ACC2, R1, ROOM, NULL, "q3", NULL, 0, 100);
	expect_not_handled(&d);
	session_iq(ACC, R1, ROOM2, NULL, "q4", NULL, 0, 100);
	expect_not_handled(&d);
	/* the last session leaving */
	session_leave(ACC, R1, ROOM, "l1");
	session_iq(ACC, R1, ROOM, NULL, "q5", NULL, 0, 100);
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().iqs, 0);

	/* malformed */
	before = stats();
	ck_assert_int_eq(mm_session_iq(st, "", R1, ROOM, NULL, "q6", NULL, 0, 100,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_session_iq(st, ACC, "", ROOM, NULL, "q6", NULL, 0, 100,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_session_iq(st, ACC, R1, "", NULL, "q6", NULL, 0, 100,
			&d), MM_EINVAL);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(after.iqs, 0);
}
END_TEST

/* max_iqs per session: MM_EIQLIMIT, nothing recorded; an answer frees one. */
START_TEST(test_iq_limit)
{
	char id1[64], id2[64], id3[64];
	mm_stats before, after;
	mm_limits l;
	mm_err e;

	memset(&l, 0, sizeof l);
	l.max_iqs = 2;
	reset_state(&l);
	ck_assert_uint_eq(mm_state_limits(st)->max_iqs, 2);

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC, R1, ROOM2, "alice");
	sent_iq(ACC, R1, ROOM, NULL, "q1", NULL, 0, 100, id1, sizeof id1);
	sent_iq(ACC, R1, ROOM, NULL, "q2", NULL, 0, 100, id2, sizeof id2);
	before = stats();
	ck_assert_uint_eq(before.iqs, 2);
	e = mm_session_iq(st, ACC, R1, ROOM, NULL, "q3", NULL, 0, 100, &d);
	ck_assert_int_eq(e, MM_EIQLIMIT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(after.iqs, 2);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);

	/* the limit is the session's: another session still asks */
	sent_iq(ACC, R2, ROOM, NULL, "q4", NULL, 0, 100, id3, sizeof id3);
	ck_assert_uint_eq(stats().iqs, 3);

	/* an answer frees a slot, one only */
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_one(&d, MM_OP_DELIVER, R1);
	sent_iq(ACC, R1, ROOM, NULL, "q5", NULL, 0, 100, id1, sizeof id1);
	e = mm_session_iq(st, ACC, R1, ROOM, NULL, "q6", NULL, 0, 100, &d);
	ck_assert_int_eq(e, MM_EIQLIMIT);
	ck_assert_uint_eq(stats().iqs, 3);
	/* an error answer frees one as well */
	room_iq(ACC, ROOM, NULL, id2, 1, "item-not-found");
	expect_one(&d, MM_OP_DELIVER, R1);
	sent_iq(ACC, R1, ROOM, NULL, "q7", NULL, 0, 100, id2, sizeof id2);
}
END_TEST

/* Unanswered IQs fail after iq_timeout with remote-server-timeout (wait). */
START_TEST(test_iq_expire)
{
	char id1[64], id2[64], id3[64];
	const mm_action *a;
	size_t i;
	mm_limits l;
	mm_err e;

	memset(&l, 0, sizeof l);
	l.iq_timeout = 30;
	l.max_iqs = 1;
	reset_state(&l);

	/* nothing pending: always handled, nothing to do */
	expire(0);
	expect_n(&d, 1, 0);

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC2, R3, ROOM2, "bobby");
	sent_iq(ACC, R1, ROOM, NULL, "a", NULL, 0, 1000, id1, sizeof id1);
	sent_iq(ACC, R2, ROOM, "bob", "b", NULL, 0, 1010, id2, sizeof id2);
	sent_iq(ACC2, R3, ROOM2, NULL, "c", NULL, 0, 1000, id3, sizeof id3);

	expire(1029.5);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(stats().iqs, 3);

	expire(1030);
	expect_n(&d, 1, 2);
	ck_assert_uint_eq(count_op(&d, MM_OP_IQ_ERROR, NULL), 2);
	for (i = 0; i < d.n; i++) {
		a = &d.actions[i];
		ck_assert_pstr_eq(a->condition, "remote-server-timeout");
		ck_assert_pstr_eq(a->error_type, "wait");
		ck_assert_ptr_null(a->nick);
	}
	a = expect_one(&d, MM_OP_IQ_ERROR, R1);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_pstr_eq(a->room, ROOM);
	ck_assert_pstr_eq(a->id, "a");
	a = expect_one(&d, MM_OP_IQ_ERROR, R3);
	ck_assert_pstr_eq(a->account, ACC2);
	ck_assert_pstr_eq(a->room, ROOM2);
	ck_assert_pstr_eq(a->id, "c");
	ck_assert_uint_eq(stats().iqs, 1);

	/* forgotten: a late answer is not the module's; the slot is free */
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	room_iq(ACC2, ROOM2, NULL, id3, 0, NULL);
	expect_not_handled(&d);
	sent_iq(ACC, R1, ROOM, NULL, "a2", NULL, 0, 1035, id1, sizeof id1);
	e = mm_session_iq(st, ACC, R1, ROOM, NULL, "a3", NULL, 0, 1035, &d);
	ck_assert_int_eq(e, MM_EIQLIMIT);

	/* the same time again: nothing more */
	expire(1030);
	expect_n(&d, 1, 0);
	expire(1040);
	a = expect_only(&d, MM_OP_IQ_ERROR, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_pstr_eq(a->nick, "bob");
	ck_assert_pstr_eq(a->id, "b");
	ck_assert_pstr_eq(a->condition, "remote-server-timeout");
	ck_assert_pstr_eq(a->error_type, "wait");
	ck_assert_uint_eq(stats().iqs, 1);
	room_iq(ACC, ROOM, "bob", id2, 0, NULL);
	expect_not_handled(&d);

	/* the IQ sent at 1035 is answered in time: no error for it later */
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_one(&d, MM_OP_DELIVER, R1);
	expire(5000);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(stats().iqs, 0);
	/* expiry changes no membership */
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 2);
}
END_TEST

/* A session's IQs go with it; a membership's IQs end with it. */
START_TEST(test_iq_forgotten)
{
	char id1[64], id2[64], id3[64];
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	joined_room(ACC, R2, ROOM2, "alice");

	/* R2 leaves ROOM while R1 stays: R2's IQ there is forgotten */
	sent_iq(ACC, R1, ROOM, NULL, "q1", NULL, 0, 100, id1, sizeof id1);
	sent_iq(ACC, R2, ROOM, NULL, "q2", NULL, 0, 100, id2, sizeof id2);
	sent_iq(ACC, R2, ROOM2, NULL, "q3", NULL, 0, 100, id3, sizeof id3);
	ck_assert_uint_eq(stats().iqs, 3);
	session_leave(ACC, R2, ROOM, "l2");
	ck_assert_uint_eq(stats().iqs, 2);
	room_iq(ACC, ROOM, NULL, id2, 0, NULL);
	expect_not_handled(&d);
	/* not its IQ in another room, not another session's */
	room_iq(ACC, ROOM2, NULL, id3, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM2);
	ck_assert_pstr_eq(a->resource, R2);
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_uint_eq(stats().iqs, 0);

	/* R3 is gone */
	sent_iq(ACC, R3, ROOM, NULL, "q4", NULL, 0, 100, id1, sizeof id1);
	sent_iq(ACC, R2, ROOM2, NULL, "q5", NULL, 0, 100, id2, sizeof id2);
	ck_assert_int_eq(mm_session_gone(st, ACC, R3, &d), MM_OK);
	ck_assert_uint_eq(stats().iqs, 1);
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_not_handled(&d);
	expire(1000);
	ck_assert_uint_eq(count_op(&d, MM_OP_IQ_ERROR, R3), 0);
	ck_assert_uint_eq(stats().iqs, 0);

	/* the membership ends (kicked) */
	sent_iq(ACC, R1, ROOM, NULL, "q6", NULL, 0, 2000, id1, sizeof id1);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	ck_assert_uint_eq(stats().iqs, 0);
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	expect_not_handled(&d);

	/* the membership ends (the last session left) */
	sent_iq(ACC, R2, ROOM2, NULL, "q7", NULL, 0, 2000, id2, sizeof id2);
	session_leave(ACC, R2, ROOM2, "l7");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	self_unavailable(ACC, ROOM2, "alice", 0, 0, "l7");
	ck_assert_uint_eq(stats().iqs, 0);
	room_iq(ACC, ROOM2, NULL, id2, 0, NULL);
	expect_not_handled(&d);
	expire(10000);
	expect_n(&d, 1, 0);
	expect_empty_state();
}
END_TEST

/* The IQ limits' defaults, and hitting them on a default state. */
START_TEST(test_iq_defaults)
{
	char id[64];
	mm_limits l;
	size_t i;
	mm_err e;

	memset(&l, 0xff, sizeof l);
	mm_limits_default(&l);
	ck_assert_uint_eq(l.max_iqs, MM_DEFAULT_MAX_IQS);
	ck_assert_uint_eq(l.iq_timeout, MM_DEFAULT_IQ_TIMEOUT);
	ck_assert_uint_eq(l.rejoin_delay, MM_DEFAULT_REJOIN_DELAY);
	ck_assert_uint_eq(mm_state_limits(st)->max_iqs, MM_DEFAULT_MAX_IQS);
	ck_assert_uint_eq(mm_state_limits(st)->iq_timeout, MM_DEFAULT_IQ_TIMEOUT);
	ck_assert_uint_eq(mm_state_limits(st)->rejoin_delay,
			MM_DEFAULT_REJOIN_DELAY);

	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < MM_DEFAULT_MAX_IQS; i++)
		sent_iq(ACC, R1, ROOM, NULL, "q", NULL, 0, 0, id, sizeof id);
	e = mm_session_iq(st, ACC, R1, ROOM, NULL, "q", NULL, 0, 0, &d);
	ck_assert_int_eq(e, MM_EIQLIMIT);
	ck_assert_uint_eq(stats().iqs, MM_DEFAULT_MAX_IQS);
	expire(MM_DEFAULT_IQ_TIMEOUT - 0.5);
	expect_n(&d, 1, 0);
	expire(MM_DEFAULT_IQ_TIMEOUT);
	expect_n(&d, 1, MM_DEFAULT_MAX_IQS);
	ck_assert_uint_eq(count_op(&d, MM_OP_IQ_ERROR, R1), MM_DEFAULT_MAX_IQS);
	ck_assert_uint_eq(stats().iqs, 0);
}
END_TEST

/* XEP-0313: results carrying the query's queryid go to the asker alone. */
START_TEST(test_iq_mam_results)
{
	char id1[64], id2[64];
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	joined_room(ACC, R2, ROOM2, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	sent_iq(ACC, R2, ROOM, NULL, "mam1", "qid1", 0, 100, id1, sizeof id1);

	/* a result is a normal message from the room itself */
	room_msg_q(ACC, ROOM, NULL, MM_MSG_NORMAL, "qid1", "r1");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(effective_id(a, "r1"), "r1");
	room_msg_q(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, "qid1", "r2");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);

	/* another queryid is ordinary traffic */
	room_msg_q(ACC, ROOM, NULL, MM_MSG_NORMAL, "other", "r3");
	expect_not_handled(&d);
	room_msg_q(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, "other", "r4");
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	/* the same queryid from another room, or to another account */
	room_msg_q(ACC, ROOM2, NULL, MM_MSG_NORMAL, "qid1", "r5");
	expect_not_handled(&d);
	room_msg_q(ACC2, ROOM, NULL, MM_MSG_NORMAL, "qid1", "r6");
	expect_not_handled(&d);
	room_msg_q(ACC2, ROOM, "bob", MM_MSG_GROUPCHAT, "qid1", "r7");
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);

	/* two queries at once, from two sessions */
	sent_iq(ACC, R1, ROOM, NULL, "mam2", "qid2", 0, 100, id2, sizeof id2);
	room_msg_q(ACC, ROOM, NULL, MM_MSG_NORMAL, "qid2", "r8");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	room_msg_q(ACC, ROOM, NULL, MM_MSG_NORMAL, "qid1", "r9");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);

	/* the query's end: its answer */
	room_iq(ACC, ROOM, NULL, id1, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->id, "mam1");
}
END_TEST

/*
 * XEP-0410: a self-ping answered not-acceptable means the account fell out.
 * The asker gets its answer; every session sees itself leave (333); the
 * account joins again with a fresh join; the sessions wait for the
 * sequence, which completes with a plain self-presence.
 */
START_TEST(test_iq_self_ping_rejoin)
{
	static const char *const all[] = { R1, R2, R3 };
	char pid[64];
	const mm_action *a, *join_act;
	size_t i, pos_deliver;
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", "pw");
	occupant(ACC, ROOM, "bob", P_BOB);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	room_msg(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, 1, "s1", P_SUBJECT);
	join(ACC, R2, ROOM, "alice", "j2", "pw");
	join(ACC, R3, ROOM, "alice", "j3", "pw");

	sent_iq(ACC, R2, ROOM, "alice", "ping1", NULL, 1, 100, pid, sizeof pid);
	room_iq(ACC, ROOM, "alice", pid, 1, "not-acceptable");
	expect_n(&d, 1, 5);
	expect_room_all(&d, ROOM);
	a = expect_one(&d, MM_OP_DELIVER, R2);
	ck_assert_uint_eq(count_op(&d, MM_OP_DELIVER, NULL), 1);
	ck_assert_pstr_eq(a->id, "ping1");
	pos_deliver = action_index(&d, a);
	for (i = 0; i < 3; i++) {
		a = expect_one(&d, MM_OP_REFLECT_LEAVE, all[i]);
		ck_assert_uint_eq(a->add_codes & MM_CODE_333, MM_CODE_333);
		ck_assert_pstr_eq(a->nick, "alice");
		ck_assert_pstr_eq(a->affiliation, "owner");
		ck_assert_ptr_null(a->id);
	}
	/* the join goes last: the room's answer must follow the leaves */
	join_act = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_uint_eq(action_index(&d, join_act), d.n - 1);
	ck_assert_uint_lt(pos_deliver, d.n - 1);
	ck_assert_int_eq(join_act->from_request, 0);
	ck_assert_pstr_eq(join_act->nick, "alice");
	ck_assert_pstr_eq(join_act->password, "pw");

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_REJOINING);
	ck_assert_uint_eq(mi.sessions, 3);
	ck_assert_str_eq(mi.nick, "alice");
	expect_all_waiting(ACC, ROOM, 3);
	ck_assert_uint_eq(stats().iqs, 0);
	/* the answer was the ping's: it is not delivered twice */
	room_iq(ACC, ROOM, "alice", pid, 1, "not-acceptable");
	expect_not_handled(&d);

	/* waiting sessions neither speak nor ask */
	session_pres(ACC, R1, ROOM, "alice", "p1", NULL, NULL);
	expect_only(&d, MM_OP_DROP, ROOM);
	session_iq(ACC, R1, ROOM, "alice", "ping2", NULL, 1, 101);
	expect_not_handled(&d);

	/* the sequence again, to every session */
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, all, 3);
	self_pres(ACC, ROOM, "alice", 0, "auto1", P_SELF);
	expect_deliver_to(&d, all, 3);
	expect_room_all(&d, ROOM);
	for (i = 0; i < d.n; i++)
		ck_assert_msg(d.actions[i].id == NULL,
				"id override for a session that did not ask: %s",
				describe(&d));
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	expect_all_joined(ACC, ROOM, 3);

	/* and it works as before */
	sent_iq(ACC, R3, ROOM, "alice", "ping3", NULL, 1, 200, pid, sizeof pid);
	room_iq(ACC, ROOM, "alice", pid, 0, NULL);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R3);
	ck_assert_pstr_eq(a->id, "ping3");
}
END_TEST

/* Any other answer, or a ping to someone else, is only an answer. */
START_TEST(test_iq_ping_no_rejoin)
{
	static const struct {
		const char *nick;
		int is_ping, is_error;
		const char *condition;
	} cases[] = {
		{ "alice", 1, 0, NULL },
		{ "alice", 1, 1, "service-unavailable" },
		{ "alice", 1, 1, "feature-not-implemented" },
		{ "alice", 1, 1, "remote-server-timeout" },
		{ "alice", 1, 1, NULL },
		/* not a self-ping: a ping to another nick, an IQ that is no ping */
		{ "bob", 1, 1, "not-acceptable" },
		{ NULL, 1, 1, "not-acceptable" },
		{ "alice", 0, 1, "not-acceptable" },
	};
	char pid[64];
	const mm_action *a;
	size_t i;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		sent_iq(ACC, R2, ROOM, cases[i].nick, "p", NULL, cases[i].is_ping,
				100, pid, sizeof pid);
		room_iq(ACC, ROOM, cases[i].nick, pid, cases[i].is_error,
				cases[i].condition);
		ck_assert_msg(d.handled == 1 && d.n == 1,
				"case %zu: %s", i, describe(&d));
		a = expect_one(&d, MM_OP_DELIVER, R2);
		ck_assert_pstr_eq(a->id, "p");
		ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
		expect_all_joined(ACC, ROOM, 2);
	}
	ck_assert_uint_eq(stats().iqs, 0);
}
END_TEST

/* ==== rejoin ============================================================== */

#define REJOIN_DELAY 7

static void setup_rejoin(void)
{
	mm_limits l;

	memset(&l, 0, sizeof l);
	l.rejoin_delay = REJOIN_DELAY;
	l.join_timeout = 1000000; /* the re-joins here wait for ever */
	st = new_state(&l);
	memset(&d, 0, sizeof d);
}

/* R1 (with password "pw") and R2 in ROOM, bob cached, a subject. */
static void populate_pw(void)
{
	join(ACC, R1, ROOM, "alice", "j1", "pw");
	occupant(ACC, ROOM, "bob", P_BOB);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	room_msg(ACC, ROOM, NULL, MM_MSG_GROUPCHAT, 1, "s1", P_SUBJECT);
	join(ACC, R2, ROOM, "alice", "j2", "pw");
	expect_replay(&d, R2, (const char *const[]){ P_BOB }, 1, P_SELF, 0,
			P_SUBJECT);
}

/* Joining again: the caches are gone, every session waits. */
static void expect_rejoining(size_t nsessions)
{
	struct minfo mi = must_info(ACC, ROOM);

	ck_assert_msg(mi.state == MM_REJOINING || mi.state == MM_REJOIN_WAIT,
			"state %s", mm_mstate_name(mi.state));
	ck_assert_uint_eq(mi.sessions, nsessions);
	ck_assert_uint_eq(mi.occupants, 0);
	ck_assert_int_eq(mi.has_subject, 0);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_str_eq(mi.password, "pw");
	expect_all_waiting(ACC, ROOM, nsessions);
}

static void expect_fresh_join(const mm_action *a)
{
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->password, "pw");
	ck_assert_pstr_eq(a->room, ROOM);
}

/* Removed for a technical reason (333): the account joins again at once. */
START_TEST(test_rejoin_333_at_once)
{
	const mm_action *a;
	size_t i;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, "x1");
	expect_n(&d, 1, 3);
	expect_room_all(&d, ROOM);
	expect_one(&d, MM_OP_DELIVER, R1);
	expect_one(&d, MM_OP_DELIVER, R2);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_uint_eq(action_index(&d, a), 2);
	expect_fresh_join(a);
	expect_rejoining(2);
	ck_assert_uint_eq(stats().occupants, 0);
	ck_assert_uint_eq(stats().memberships, 1);
	/* nothing waits for a delay */
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);

	/* the sessions see the join sequence again */
	occupant(ACC, ROOM, "dave", P_DAVE);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	self_pres(ACC, ROOM, "alice", 0, "auto", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	for (i = 0; i < d.n; i++)
		ck_assert_ptr_null(d.actions[i].id);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	expect_all_joined(ACC, ROOM, 2);
	/* a later session is replayed the new cache */
	join(ACC, R3, ROOM, "alice", "j3", "pw");
	expect_replay(&d, R3, (const char *const[]){ P_DAVE }, 1, P_SELF, 0,
			NULL);
}
END_TEST

/* Shutdown (332): the account joins again after rejoin_delay, once. */
START_TEST(test_rejoin_332_later)
{
	const mm_action *a;

	populate_pw();
	ck_assert_uint_eq(mm_state_limits(st)->rejoin_delay, REJOIN_DELAY);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	expect_n(&d, 1, 3);
	expect_room_all(&d, ROOM);
	expect_one(&d, MM_OP_DELIVER, R1);
	expect_one(&d, MM_OP_DELIVER, R2);
	a = expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	ck_assert_uint_eq(a->delay, REJOIN_DELAY);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	expect_rejoining(2);

	/* nothing before the delay is over */
	expire(tnow += 1);
	expire(tnow += REJOIN_DELAY - 1);
	keep_only(ACC, ROOM);
	expect_not_handled(&d);
	expire(tnow += 1);
	keep_only(ACC, ROOM);
	expect_fresh_join(expect_only(&d, MM_OP_SEND_JOIN, ROOM));
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);

	rejoin_due(ACC, ROOM);
	expect_fresh_join(expect_only(&d, MM_OP_SEND_JOIN, ROOM));
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);
	expect_rejoining(2);

	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	expect_all_joined(ACC, ROOM, 2);
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);
}
END_TEST

/*
 * A device that joins while the re-join waits for its delay (after a 332)
 * makes the account join now, with the room password the membership
 * keeps: a later device's join may lack it (or carry a wrong one), and a
 * refusal would end the membership.
 */
START_TEST(test_rejoin_wait_join_carries_stored_password)
{
	static const char *const given[] = { NULL, "wrong" };
	size_t i;

	for (i = 0; i < 2; i++) {
		const mm_action *a;

		reset_state(NULL);
		populate_pw();
		self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
		expect_one(&d, MM_OP_REJOIN_LATER, NULL);
		ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOIN_WAIT);
		join(ACC, R3, ROOM, "alice", "j3", given[i]);
		a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
		ck_assert_int_eq(a->from_request, 1);
		ck_assert_pstr_eq(a->password, "pw");
		ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
		ck_assert_str_eq(must_info(ACC, ROOM).password, "pw");
		self_pres(ACC, ROOM, "alice", 0, "j3", P_SELF);
		expect_all_joined(ACC, ROOM, 3);
	}
}
END_TEST

/* The default delay, when none is configured. */
START_TEST(test_rejoin_default_delay)
{
	reset_state(NULL);
	ck_assert_uint_eq(mm_state_limits(st)->rejoin_delay,
			MM_DEFAULT_REJOIN_DELAY);
	joined_room(ACC, R1, ROOM, "alice");
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REJOIN_LATER, NULL)->delay,
			MM_DEFAULT_REJOIN_DELAY);
}
END_TEST

/* While the re-join waits, a session that asks to join is sent at once. */
START_TEST(test_rejoin_explicit_join_while_waiting)
{
	const mm_action *a;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);

	join(ACC, R2, ROOM, "alice", "j2b", "pw");
	expect_n(&d, 1, 1);
	expect_room_all(&d, ROOM);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_int_eq(a->from_request, 1);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
	/* the delay is over: there is nothing left to send */
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);

	self_pres(ACC, ROOM, "alice", 0, "j2b", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_ptr_null(find_action(&d, MM_OP_DELIVER, R1)->id);
	ck_assert_pstr_eq(effective_id(find_action(&d, MM_OP_DELIVER, R2), "j2b"),
			"j2b");
	expect_all_joined(ACC, ROOM, 2);
}
END_TEST

/*
 * A failed automatic re-join with a transient condition is tried again
 * later, the delay doubling each time up to 64 times rejoin_delay; the
 * membership and its sessions stay.  A success resets the delay.
 */
START_TEST(test_rejoin_transient_backoff)
{
	static const char *const transient[] = {
		"remote-server-not-found", "remote-server-timeout",
		"service-unavailable", "internal-server-error", "resource-constraint",
		"recipient-unavailable", "remote-server-not-found",
		"service-unavailable"
	};
	static const unsigned factor[] = { 2, 4, 8, 16, 32, 64, 64, 64 };
	const mm_action *a;
	size_t i;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	expect_fresh_join(expect_one(&d, MM_OP_SEND_JOIN, NULL));

	for (i = 0; i < sizeof transient / sizeof transient[0]; i++) {
		join_error(ACC, ROOM, NULL, transient[i]);
		/* nobody asked: nobody is told; only the next attempt */
		a = expect_only(&d, MM_OP_REJOIN_LATER, ROOM);
		ck_assert_msg(a->delay == factor[i] * REJOIN_DELAY,
				"attempt %zu (%s): delay %u, want %u", i + 1, transient[i],
				a->delay, factor[i] * REJOIN_DELAY);
		expect_rejoining(2);
		rejoin_due(ACC, ROOM);
		expect_fresh_join(expect_only(&d, MM_OP_SEND_JOIN, ROOM));
	}

	/* success: the delay starts over */
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	join_error(ACC, ROOM, NULL, "service-unavailable");
	ck_assert_uint_eq(expect_only(&d, MM_OP_REJOIN_LATER, ROOM)->delay,
			2 * REJOIN_DELAY);
	rejoin_due(ACC, ROOM);
	join_error(ACC, ROOM, NULL, "service-unavailable");
	ck_assert_uint_eq(expect_only(&d, MM_OP_REJOIN_LATER, ROOM)->delay,
			4 * REJOIN_DELAY);
	rejoin_due(ACC, ROOM);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	/* after a shutdown too, the first wait is rejoin_delay again */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REJOIN_LATER, NULL)->delay,
			REJOIN_DELAY);
	rejoin_due(ACC, ROOM);
	join_error(ACC, ROOM, NULL, "remote-server-timeout");
	ck_assert_uint_eq(expect_only(&d, MM_OP_REJOIN_LATER, ROOM)->delay,
			2 * REJOIN_DELAY);
}
END_TEST

/*
 * "rejoin_delay: seconds before the first automatic re-join after a
 * shutdown (332) or a failed attempt; doubled per failed attempt, up to 64
 * times, and never more than an hour" - with a long configured delay, the
 * hour is reached before the factor 64.
 */
START_TEST(test_rejoin_delay_large)
{
	static const unsigned want[] = { 200, 400, 800, 1600, 3200, 3600, 3600 };
	mm_limits l;
	size_t i;

	memset(&l, 0, sizeof l);
	l.rejoin_delay = 100;
	reset_state(&l);
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REJOIN_LATER, NULL)->delay, 100);
	for (i = 0; i < sizeof want / sizeof want[0]; i++) {
		const mm_action *a;

		rejoin_due(ACC, ROOM);
		expect_one(&d, MM_OP_SEND_JOIN, NULL);
		join_error(ACC, ROOM, NULL, "service-unavailable");
		a = expect_only(&d, MM_OP_REJOIN_LATER, ROOM);
		ck_assert_msg(a->delay == want[i],
				"failure %zu: delay %u, want %u", i + 1, a->delay, want[i]);
	}

	/* the first wait is rejoin_delay, but never more than an hour ... */
	l.rejoin_delay = 5000;
	reset_state(&l);
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REJOIN_LATER, NULL)->delay, 3600);
	/* ... nor are the waits after failed attempts */
	rejoin_due(ACC, ROOM);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	join_error(ACC, ROOM, NULL, "remote-server-timeout");
	ck_assert_uint_eq(expect_only(&d, MM_OP_REJOIN_LATER, ROOM)->delay, 3600);

	/* exactly an hour is allowed */
	l.rejoin_delay = 3600;
	reset_state(&l);
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REJOIN_LATER, NULL)->delay, 3600);
}
END_TEST

/* A failed re-join with any other condition ends the membership. */
START_TEST(test_rejoin_fatal_error)
{
	const mm_action *a;
	struct minfo mi;

	/* nobody asked: the membership goes, nobody is told again */
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	join_error(ACC, ROOM, NULL, "forbidden");
	expect_n(&d, 1, 0);
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();

	/* a session asked while the re-join waited: it gets the error */
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	join(ACC, R2, ROOM, "alice", "j2b", "pw");
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	join_error(ACC, ROOM, "j2b", "registration-required");
	expect_n(&d, 1, 1);
	expect_room_all(&d, ROOM);
	a = expect_one(&d, MM_OP_DELIVER, R2);
	ck_assert_pstr_eq(effective_id(a, "j2b"), "j2b");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);

	/* after transient failures, a fatal one still ends it */
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	join_error(ACC, ROOM, NULL, "remote-server-not-found");
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	rejoin_due(ACC, ROOM);
	join_error(ACC, ROOM, NULL, "not-authorized");
	ck_assert_int_eq(d.handled, 1);
	ck_assert_uint_eq(count_op(&d, MM_OP_REJOIN_LATER, NULL), 0);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
}
END_TEST

/* A transient error for a join a session asked for, not an automatic one:
 * the join simply failed (no retry). */
START_TEST(test_rejoin_not_for_explicit_join)
{
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", "pw");
	join_error(ACC, ROOM, "j1", "remote-server-not-found");
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(effective_id(expect_one(&d, MM_OP_DELIVER, R1), "j1"),
			"j1");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
}
END_TEST

/* 332/333 together with a removal or <destroy/> are removals: no re-join. */
static const struct removal_case rejoin_removal_cases[] = {
	{ "332+307", MM_STATUS_332 | MM_STATUS_307, 0 },
	{ "332+301", MM_STATUS_332 | MM_STATUS_301, 0 },
	{ "333+301", MM_STATUS_333 | MM_STATUS_301, 0 },
	{ "333+321", MM_STATUS_333 | MM_STATUS_321, 0 },
	{ "332+322", MM_STATUS_332 | MM_STATUS_322, 0 },
	{ "332 destroyed", MM_STATUS_332, 1 },
	{ "333 destroyed", MM_STATUS_333, 1 },
};

#define N_REJOIN_REMOVAL \
	(sizeof rejoin_removal_cases / sizeof rejoin_removal_cases[0])

START_TEST(test_rejoin_not_after_removal)
{
	const struct removal_case *rc = &rejoin_removal_cases[_i];
	struct minfo mi;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", rc->status, rc->destroyed, NULL);
	ck_assert_msg(d.handled == 1 && d.n == 2, "%s: %s", rc->name,
			describe(&d));
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_msg(get_info(ACC, ROOM, &mi) == 0, "%s: membership kept",
			rc->name);
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);
	expect_empty_state();
}
END_TEST

/*
 * mm_session_leave: "Last session while an automatic re-join waits for its
 * delay (the account is out): REFLECT_LEAVE and the membership ends." - after
 * a shutdown (332) and after a failed attempt.  While the re-join is in
 * flight the account is joining: the last session's leave is sent.
 */
START_TEST(test_rejoin_last_leave_while_waiting)
{
	const mm_action *a;
	struct minfo mi;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	/* not the last: its own leave only */
	session_leave(ACC, R2, ROOM, "l2");
	a = expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->id, "l2");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOIN_WAIT);
	/* the last: it sees itself leave, nothing goes to the room */
	session_leave(ACC, R1, ROOM, "l1");
	a = expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "l1");
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
	expect_empty_state();
	/* the delay's end finds nothing to join */
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);
	session_leave(ACC, R1, ROOM, "l1b");
	expect_not_handled(&d);
	/* the account is free to join again */
	join(ACC, R1, ROOM, "alice", "j9", NULL);
	ck_assert_int_eq(expect_only(&d, MM_OP_SEND_JOIN, ROOM)->from_request, 1);
	self_pres(ACC, ROOM, "alice", 0, "j9", P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	expect_empty_state();

	/* waiting after a failed attempt: the same */
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	join_error(ACC, ROOM, NULL, "remote-server-timeout");
	expect_only(&d, MM_OP_REJOIN_LATER, ROOM);
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	session_leave(ACC, R1, ROOM, "l1");
	a = expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(a->id, "l1");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);

	/* the join in flight (333): the account leaves as usual */
	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	session_leave(ACC, R1, ROOM, "l1");
	expect_only(&d, MM_OP_SEND_AS_ACCOUNT, ROOM);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);
	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	ck_assert_pstr_eq(effective_id(expect_only(&d, MM_OP_DELIVER, ROOM), "l1"),
			"l1");
	ck_assert_pstr_eq(d.actions[0].resource, R1);
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
}
END_TEST

/* Sessions come and go while the account joins again; they stay attached. */
START_TEST(test_rejoin_sessions_during_wait)
{
	const mm_action *a;

	populate_pw();
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	/* waiting sessions' presences must not reach the room as joins */
	session_pres(ACC, R1, ROOM, "alice", "p1", "away", NULL);
	expect_only(&d, MM_OP_DROP, ROOM);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m1");
	expect_not_handled(&d);
	/* one session gone: the other still waits */
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOIN_WAIT);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	rejoin_due(ACC, ROOM);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM);
	expect_fresh_join(a);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	expect_all_joined(ACC, ROOM, 1);
}
END_TEST

/* ==== helpers for history, persistence and events ========================= */

/* A groupchat message from ROOM/bob with body `text`. */
#define P_MSG(text) \
	"<message type='groupchat' from='" ROOM "/bob'><body>" text "</body>" \
	"</message>"
#define P_M1 P_MSG("m1")
#define P_M2 P_MSG("m2")
#define P_M3 P_MSG("m3")
#define P_M4 P_MSG("m4")
#define P_M5 P_MSG("m5")
#define P_SUBJECT2 \
	"<message type='groupchat' from='" ROOM "'><subject>Bye</subject>" \
	"</message>"
/* An attribute absent from <history/>. */
#define NONE (-1)

/* A groupchat message with a body from ROOM/bob, with every field given. */
static void hist_msg(const char *acc, const char *room, const char *payload,
		const char *stanza_id, double stamp, int delayed)
{
	mm_message m;
	mm_err e;

	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.stanza_id = stanza_id;
	m.stamp = stamp;
	m.delayed = delayed;
	m.has_body = 1;
	m.payload = payload;
	e = mm_room_message(st, acc, room, "bob", &m, &d);
	ck_assert_msg(e == MM_OK, "room message: %s", mm_strerror(e));
}

/* A subject change from the room itself (no body). */
static void subject_msg(const char *acc, const char *room,
		const char *payload, double stamp, int delayed)
{
	mm_message m;
	mm_err e;

	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.stamp = stamp;
	m.delayed = delayed;
	m.has_subject = 1;
	m.payload = payload;
	e = mm_room_message(st, acc, room, NULL, &m, &d);
	ck_assert_msg(e == MM_OK, "room subject: %s", mm_strerror(e));
}

/*
 * A new session of ACC joins ROOM as "alice" with a <history/> request
 * (requested 0: no <history/> at all); returns its resource, valid until
 * the next call.
 */
static const char *join_dev(int requested, long maxstanzas, long maxchars,
		double seconds, double since, double now)
{
	static char res[32];
	static int counter;
	mm_join r;
	mm_err e;

	snprintf(res, sizeof res, "dev%d", ++counter);
	memset(&r, 0, sizeof r);
	r.nick = "alice";
	r.id = "jh";
	r.history.requested = requested;
	r.history.maxstanzas = requested ? maxstanzas : NONE;
	r.history.maxchars = requested ? maxchars : NONE;
	r.history.seconds = requested ? seconds : NONE;
	r.history.since = requested ? since : NONE;
	r.now = now;
	e = mm_session_join_req(st, ACC, res, ROOM, &r, &d);
	ck_assert_msg(e == MM_OK, "join %s: %s", res, mm_strerror(e));
	return res;
}

/* The resync of a later session: self, the catch-up messages, subject. */
static void expect_catchup(const char *res, const struct hmsg *h, size_t nh,
		const char *subject)
{
	expect_replay_hist(&d, res, NULL, 0, P_SELF, 0, h, nh, subject);
}

/* R1 in ROOM as "alice"; m1..m4 arrive at 100, 200, 300, 400. */
static const struct hmsg four[] = {
	{ P_M1, 100 }, { P_M2, 200 }, { P_M3, 300 }, { P_M4, 400 }
};

static void four_messages(void)
{
	static const char *const sids[] = { "s1", "s2", "s3", "s4" };
	size_t i;

	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < 4; i++) {
		hist_msg(ACC, ROOM, four[i].payload, sids[i], four[i].stamp, 0);
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 4);
}

static void restore(const char *acc, const char *room, const char *nick,
		const char *password, const char *last_id, double last_stamp)
{
	mm_err e = mm_account_restore(st, acc, room, nick, password, last_id,
			last_stamp, &d);
	ck_assert_msg(e == MM_OK, "restore %s %s: %s", acc, room, mm_strerror(e));
}

/* The accounts mm_take_dirty() visited. */
struct dirty {
	size_t n;
	char acc[4][64];
};

static void dirty_cb(const char *account, void *ud)
{
	struct dirty *dy = ud;

	ck_assert_ptr_nonnull(account);
	ck_assert(dy->n < 4);
	copy_str(dy->acc[dy->n], sizeof dy->acc[dy->n], account);
	dy->n++;
}

/* mm_take_dirty(level); the visits must match the return value. */
static struct dirty take_dirty(int level)
{
	struct dirty dy;
	size_t ret;

	memset(&dy, 0, sizeof dy);
	ret = mm_take_dirty(st, level, dirty_cb, &dy);
	ck_assert_uint_eq(ret, dy.n);
	return dy;
}

/* take_dirty(level) visits exactly `acc` (NULL: nobody). */
static void expect_dirty(int level, const char *acc)
{
	struct dirty dy = take_dirty(level);

	if (acc == NULL) {
		ck_assert_msg(dy.n == 0, "level %d: %s dirty", level, dy.acc[0]);
		return;
	}
	ck_assert_msg(dy.n == 1, "level %d: %zu accounts dirty, want %s", level,
			dy.n, acc);
	ck_assert_str_eq(dy.acc[0], acc);
}

static void expect_event(const mm_decision *dd, const char *event,
		const char *reason)
{
	ck_assert_msg(str_eq(dd->event, event) && str_eq(dd->reason, reason),
			"event %s/%s, want %s/%s: %s", nn(dd->event), nn(dd->reason),
			nn(event), nn(reason), describe(dd));
}

/* ==== bytes =============================================================== */

#define LEN(p) (sizeof(p) - 1)
#define DIGITS70 \
	"0123456789012345678901234567890123456789012345678901234567890123456789"
#define P_BIG(nick) P_PRES(nick, "<status>" DIGITS70 DIGITS70 DIGITS70 \
	"</status>")

/* Sum of the account's memberships' bytes. */
static int bytes_cb(const mm_membership_info *info, void *ud)
{
	*(size_t *)ud += info->bytes;
	return 0;
}

static size_t account_bytes(const char *acc)
{
	size_t sum = 0;

	mm_account_memberships(st, acc, bytes_cb, &sum);
	return sum;
}

/*
 * max_membership_bytes: "the catch-up ring drops its oldest messages to
 * make room"; "an occupant presence is not cached (a changed one loses its
 * entry rather than go stale)"; "the self-presence and the subject are
 * always kept ... and count like the rest"; "live traffic is delivered
 * whatever the caches keep".
 */
START_TEST(test_bytes_membership)
{
	static const struct hmsg five[] = {
		{ P_M1, 100 }, { P_M2, 200 }, { P_M3, 300 }, { P_M4, 400 },
		{ P_M5, 500 }
	};
	const size_t limit = LEN(P_SELF) + 3 * LEN(P_M1) + 10;
	mm_limits l;
	size_t i;

	memset(&l, 0, sizeof l);
	l.max_membership_bytes = limit;
	reset_state(&l);
	ck_assert_uint_eq(mm_state_limits(st)->max_membership_bytes, limit);
	joined_room(ACC, R1, ROOM, "alice");
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes, LEN(P_SELF));
	for (i = 0; i < 5; i++) {
		hist_msg(ACC, ROOM, five[i].payload, NULL, five[i].stamp, 0);
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
		ck_assert_uint_le(must_info(ACC, ROOM).bytes, limit);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes, LEN(P_SELF) + 3 * LEN(P_M1));
	ck_assert_uint_eq(stats().cached_bytes, LEN(P_SELF) + 3 * LEN(P_M1));
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, five + 2, 3, NULL);

	/* full: a new occupant is delivered, not cached */
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, 0);

	/* the subject is kept all the same; the ring makes room for it */
	subject_msg(ACC, ROOM, P_SUBJECT, 600, 0);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);
	hist_msg(ACC, ROOM, P_M1, NULL, 700, 0);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_uint_le(must_info(ACC, ROOM).bytes, limit);
	ck_assert_uint_lt(must_info(ACC, ROOM).history, 3);

	/* room for an occupant again once the ring is gone; a changed
	 * presence that does not fit loses the entry */
	memset(&l, 0, sizeof l);
	l.max_membership_bytes = LEN(P_SELF) + LEN(P_BOB) + LEN(P_BOB) / 2;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	occupant(ACC, ROOM, "bob", P_BOB);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, 1);
	occupant(ACC, ROOM, "bob", P_BIG("bob"));
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes, LEN(P_SELF));
	occupant(ACC, ROOM, "bob", P_BOB_AWAY);
	ck_assert_uint_eq(must_info(ACC, ROOM).occupants, 1);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay_hist(&d, R2, (const char *const[]){ P_BOB_AWAY }, 1, P_SELF, 0,
			NULL, 0, NULL);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/*
 * max_account_bytes: over the account's memberships; another account is
 * bounded on its own.
 */
START_TEST(test_bytes_account)
{
	const size_t limit = 2 * LEN(P_SELF) + 4 * LEN(P_M1);
	mm_limits l;
	size_t i;

	memset(&l, 0, sizeof l);
	l.max_account_bytes = limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, ROOM2, "alice");
	joined_room(ACC2, R1, ROOM2, "bobby");
	for (i = 0; i < 6; i++) {
		hist_msg(ACC, ROOM, P_M1, NULL, 100 + (double)i, 0);
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
		ck_assert_uint_le(account_bytes(ACC), limit);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 4);
	/* the other room of the account finds the account full: nothing kept */
	hist_msg(ACC, ROOM2, P_M2, NULL, 200, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM2).history, 0);
	ck_assert_uint_eq(account_bytes(ACC), limit);
	/* another account keeps its own */
	hist_msg(ACC2, ROOM2, P_M2, NULL, 200, 0);
	ck_assert_uint_eq(must_info(ACC2, ROOM2).history, 1);
	/* the account's memberships' bytes go with them */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	ck_assert_uint_eq(account_bytes(ACC), LEN(P_SELF));
	hist_msg(ACC, ROOM2, P_M2, NULL, 300, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM2).history, 1);
	self_unavailable(ACC, ROOM2, "alice", MM_STATUS_307, 0, NULL);
	self_unavailable(ACC2, ROOM2, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/*
 * max_cache_bytes: over the whole state, each distinct text once; a text
 * a cache holds already costs nothing more, so another account of the
 * same room shares it; deliveries go on.
 */
START_TEST(test_bytes_state)
{
	const size_t limit = LEN(P_SELF) + 3 * LEN(P_M1);
	mm_limits l;

	memset(&l, 0, sizeof l);
	l.max_cache_bytes = limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	hist_msg(ACC, ROOM, P_M1, NULL, 100, 0);
	hist_msg(ACC, ROOM, P_M2, NULL, 200, 0);
	hist_msg(ACC, ROOM, P_M3, NULL, 300, 0);
	ck_assert_uint_eq(stats().cached_bytes, limit);
	/* the same texts for the other account: shared, kept */
	hist_msg(ACC2, ROOM, P_M2, NULL, 200, 0);
	hist_msg(ACC2, ROOM, P_M3, NULL, 300, 0);
	ck_assert_uint_eq(must_info(ACC2, ROOM).history, 2);
	ck_assert_uint_eq(stats().cached_bytes, limit);
	/* a new text: the ring drops its oldest for it while that frees bytes */
	hist_msg(ACC, ROOM, P_M4, NULL, 400, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_le(stats().cached_bytes, limit);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	/* an occupant beyond the budget: delivered, not cached */
	occupant(ACC2, ROOM, "carol", P_CAROL);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC2, ROOM).occupants, 0);
	ck_assert_uint_le(stats().cached_bytes, limit);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

#define DIGITS560 DIGITS70 DIGITS70 DIGITS70 DIGITS70 DIGITS70 DIGITS70 \
	DIGITS70 DIGITS70
#define P_SUBJECT_BIG \
	"<message type='groupchat' from='" ROOM "'><subject>" DIGITS560 \
	"</subject></message>"
#define P_SELF_BIG \
	P_PRES("alice", "<item affiliation='owner' role='moderator'/>" \
	"<status code='110'/><status>" DIGITS560 "</status>")

/* The last action of the decision. */
static const mm_action *last_action(void)
{
	ck_assert_uint_gt(d.n, 0);
	return &d.actions[d.n - 1];
}

/*
 * The self-presence and the subject count against the byte limits like
 * the rest: the ring's oldest messages make room for them; one too big
 * even for an empty ring is not cached (nor is the one before it), and a
 * later session gets a stub in its place, so that its join still ends
 * with a self-presence and a subject.  Live traffic is delivered all the
 * same.
 */
START_TEST(test_bytes_self_and_subject_bounded)
{
	const size_t limit = LEN(P_SELF) + 3 * LEN(P_M1) + 10;
	const mm_action *a;
	mm_limits l;
	size_t i;

	ck_assert_uint_gt(LEN(P_SUBJECT_BIG), limit);
	ck_assert_uint_gt(LEN(P_SELF_BIG), limit);
	memset(&l, 0, sizeof l);
	l.max_membership_bytes = limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	subject_msg(ACC, ROOM, P_SUBJECT, 50, 0);
	for (i = 0; i < 3; i++)
		hist_msg(ACC, ROOM, P_M1, NULL, 100 + (double)i, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	/* a subject the ring makes room for */
	subject_msg(ACC, ROOM, P_SUBJECT2, 200, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);
	ck_assert_uint_le(must_info(ACC, ROOM).bytes, limit);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	/* one no emptied ring would hold: delivered, not cached, the ring
	 * left alone; the later session's join ends with an empty one */
	subject_msg(ACC, ROOM, P_SUBJECT_BIG, 300, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes, LEN(P_SELF) + 2 * LEN(P_M1));
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R2), 3); /* self, 2 messages */
	a = last_action();
	ck_assert_int_eq(a->op, MM_OP_SUBJECT_STUB);
	ck_assert_pstr_eq(a->resource, R2);
	ck_assert_pstr_eq(a->room, ROOM);
	/* a subject that fits is cached again */
	subject_msg(ACC, ROOM, P_SUBJECT, 400, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_str_eq(last_action()->payload, P_SUBJECT);
	ck_assert_uint_eq(count_op(&d, MM_OP_SUBJECT_STUB, NULL), 0);

	/* a self-presence too big: not cached, the one before gone too; a
	 * later session gets a stub with its join's id, 210 for its other
	 * nick, and the affiliation and role the room gave */
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF_BIG);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_uint_le(must_info(ACC, ROOM).bytes, limit);
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes,
			LEN(P_SUBJECT) + must_info(ACC, ROOM).history * LEN(P_M1));
	join(ACC, R3, ROOM, "ally", "j3", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R3), 1 + must_info(ACC, ROOM).history);
	a = expect_one(&d, MM_OP_SELF_STUB, R3);
	ck_assert_uint_eq(action_index(&d, a), 0);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->id, "j3");
	ck_assert_uint_eq(a->add_codes, MM_CODE_210);
	ck_assert_pstr_eq(a->affiliation, "owner");
	ck_assert_pstr_eq(a->role, "moderator");
	ck_assert_str_eq(last_action()->payload, P_SUBJECT);
	/* a self-presence that fits is replayed again */
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_SELF_STUB, NULL), 0);
	ck_assert_str_eq(find_action(&d, MM_OP_REPLAY, R3)->payload, P_SELF);
}
END_TEST

/*
 * One account's rooms sending huge subjects cannot use up the account's
 * budget, which its other rooms need, nor the state's, which other
 * accounts need: the subject that would go beyond them is not cached.
 * A room cannot make the core keep an affiliation or a role beyond the
 * known tokens either.
 */
START_TEST(test_bytes_subjects_per_account)
{
	const size_t limit = LEN(P_SELF) + LEN(P_SUBJECT_BIG) + LEN(P_SELF) + 10;
	mm_limits l;
	mm_presence p;
	mm_message m;

	memset(&l, 0, sizeof l);
	l.max_account_bytes = limit;
	l.max_cache_bytes = 2 * limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, ROOM2, "alice");
	joined_room(ACC2, R1, ROOM2, "bobby");
	subject_msg(ACC, ROOM, P_SUBJECT_BIG, 100, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);
	/* the account's other room: no room for its huge subject */
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.stamp = 100;
	m.has_subject = 1;
	m.payload = P_SUBJECT_BIG "<!-- 2 -->";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM2, NULL, &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM2).has_subject, 0);
	ck_assert_uint_le(account_bytes(ACC), limit);
	/* another account keeps its own */
	ck_assert_int_eq(mm_room_message(st, ACC2, ROOM2, NULL, &m, &d), MM_OK);
	ck_assert_int_eq(must_info(ACC2, ROOM2).has_subject, 1);
	ck_assert_uint_le(stats().cached_bytes, 2 * limit);
	/* a hostile affiliation and role are not kept */
	memset(&p, 0, sizeof p);
	p.type = MM_PRES_AVAILABLE;
	p.status = MM_STATUS_110;
	p.affiliation = "owner" DIGITS560;
	p.role = "moderator" DIGITS560;
	p.payload = P_SELF_BIG;
	room_pres(ACC, ROOM2, "alice", &p);
	join(ACC, R2, ROOM2, "alice", "j2", NULL);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SELF_STUB, R2)->affiliation, "none");
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SELF_STUB, R2)->role, "participant");
	ck_assert_pstr_eq(last_action()->resource, R2);
	ck_assert_int_eq(last_action()->op, MM_OP_SUBJECT_STUB);
}
END_TEST

/*
 * The ring makes room for a self-presence whose text is the very message
 * it drops (a room may send anything): the text stays valid and is kept.
 * (Under ASan or valgrind a use after free shows here.)
 */
START_TEST(test_bytes_self_same_text_as_ring)
{
	const size_t limit = LEN(P_SELF) + LEN(P_SELF_BIG);
	mm_limits l;

	memset(&l, 0, sizeof l);
	l.max_membership_bytes = limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM2, "bobby");
	hist_msg(ACC, ROOM, P_SELF_BIG, NULL, 100, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);
	/* another text is the last one interned */
	hist_msg(ACC2, ROOM2, P_M2, NULL, 100, 0);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF_BIG);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).bytes, LEN(P_SELF_BIG));
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_str_eq(expect_one(&d, MM_OP_REPLAY, R2)->payload, P_SELF_BIG);
}
END_TEST

/* bob's presence again, as long as P_BOB, in other words */
#define P_BOB_SWAP P_PRES("bob", "<item role='participant' affiliation='member'/>")

/*
 * An occupant's presence replaced by one of the same length gives back
 * the bytes of the one it replaces: under a budget it exactly fills, at
 * each level (membership, account, state), the new one is cached and
 * the count stays where it was, however often it changes.
 */
START_TEST(test_bytes_same_length_replacement)
{
	const size_t limit = LEN(P_SELF) + LEN(P_BOB);
	int level, i;

	ck_assert_uint_eq(LEN(P_BOB_SWAP), LEN(P_BOB));
	ck_assert_str_ne(P_BOB_SWAP, P_BOB);
	for (level = 0; level < 3; level++) {
		mm_limits l;

		memset(&l, 0, sizeof l);
		if (level == 0)
			l.max_membership_bytes = limit;
		else if (level == 1)
			l.max_account_bytes = limit;
		else
			l.max_cache_bytes = limit;
		reset_state(&l);
		joined_room(ACC, R1, ROOM, "alice");
		occupant(ACC, ROOM, "bob", P_BOB);
		ck_assert_uint_eq(must_info(ACC, ROOM).occupants, 1);
		ck_assert_uint_eq(must_info(ACC, ROOM).bytes, limit);
		for (i = 0; i < 4; i++) {
			occupant(ACC, ROOM, "bob", i % 2 ? P_BOB : P_BOB_SWAP);
			expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
			ck_assert_msg(must_info(ACC, ROOM).occupants == 1,
					"level %d, change %d: the entry was dropped", level, i);
			ck_assert_uint_eq(must_info(ACC, ROOM).bytes, limit);
			ck_assert_uint_eq(stats().cached_bytes, limit);
		}
		join(ACC, R2, ROOM, "alice", "j2", NULL);
		expect_replay(&d, R2, (const char *const[]){ P_BOB }, 1, P_SELF, 0, NULL);
	}
}
END_TEST

/* ==== history ============================================================= */

/* history_size bounds the ring; the oldest message goes first. */
START_TEST(test_history_ring_bounded)
{
	static const struct hmsg msgs[] = {
		{ P_M1, 100 }, { P_M2, 200 }, { P_M3, 300 }, { P_M4, 400 },
		{ P_M5, 500 }
	};
	mm_stats s0, s;
	mm_limits l;
	size_t i;

	memset(&l, 0, sizeof l);
	l.history_size = 3;
	l.history_default = 10;
	reset_state(&l);
	ck_assert_uint_eq(mm_state_limits(st)->history_size, 3);
	ck_assert_uint_eq(mm_state_limits(st)->history_default, 10);

	joined_room(ACC, R1, ROOM, "alice");
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 0);
	s0 = stats();
	for (i = 0; i < 5; i++) {
		hist_msg(ACC, ROOM, msgs[i].payload, NULL, msgs[i].stamp, 0);
		/* live traffic is delivered whatever the ring keeps */
		expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
		ck_assert_uint_eq(must_info(ACC, ROOM).history, i < 3 ? i + 1 : 3);
	}
	/* the dropped messages' payloads are freed */
	s = stats();
	ck_assert_uint_eq(s.payloads, s0.payloads + 3);
	ck_assert_uint_eq(s.payload_bytes, s0.payload_bytes + 3 * strlen(P_M1));

	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, msgs + 2, 3, NULL);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);

	/* the membership's end frees the ring */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/*
 * mm_state_set_limits: "A smaller history_size keeps each membership's
 * newest messages, a smaller max_pending its newest stanza ids; a lower
 * max_rooms ... refuses what would go beyond it from now on and keeps what
 * is there."  Lowering then raising again corrupts nothing (ASan and
 * valgrind watch the rings), and the payloads of dropped messages go.
 */
START_TEST(test_limits_set_in_use)
{
	static const struct hmsg five[] = {
		{ P_M1, 100 }, { P_M2, 200 }, { P_M3, 300 }, { P_M4, 400 },
		{ P_M5, 500 }
	};
	mm_limits l;
	mm_stats s0;
	mm_message m;
	size_t i;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	s0 = stats();
	/* the ring wraps before the change: head not at 0 */
	memset(&l, 0, sizeof l);
	l.history_size = 4;
	l.max_pending = 4;
	ck_assert_int_eq(mm_state_set_limits(st, &l), MM_OK);
	for (i = 0; i < 5; i++)
		hist_msg(ACC, ROOM, five[i].payload, NULL, five[i].stamp, 0);
	for (i = 0; i < 6; i++) {
		char id[8];
		snprintf(id, sizeof id, "m%zu", i);
		session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, id);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 4);

	memset(&l, 0, sizeof l);
	l.history_size = 2;
	l.max_pending = 2;
	l.max_rooms = 1;
	ck_assert_int_eq(mm_state_set_limits(st, &l), MM_OK);
	ck_assert_uint_eq(mm_state_limits(st)->history_size, 2);
	ck_assert_uint_eq(mm_state_limits(st)->max_pending, 2);
	ck_assert_uint_eq(mm_state_limits(st)->max_sessions, MM_DEFAULT_MAX_SESSIONS);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	/* m1..m3 dropped: their payloads are freed */
	ck_assert_uint_eq(stats().payloads, s0.payloads + 2);
	expect_catchup(join_dev(1, 10, NONE, NONE, NONE, 600), five + 3, 2, NULL);
	/* the two newest ids still route their errors; older ones are gone */
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_ERROR;
	m.id = "m3";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	ck_assert_uint_eq(d.n, 0);
	for (i = 4; i < 6; i++) {
		char id[8];
		snprintf(id, sizeof id, "m%zu", i);
		m.id = id;
		ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
		expect_n(&d, 1, 1);
		expect_one(&d, MM_OP_DELIVER, R1);
	}
	/* the lower room limit: what is there stays, a second room is refused */
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM2, "alice", "x", NULL, &d),
			MM_EROOMLIMIT);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);

	/* grow again: the ring keeps its two and takes more */
	ck_assert_int_eq(mm_state_set_limits(st, NULL), MM_OK);
	ck_assert_uint_eq(mm_state_limits(st)->history_size, MM_DEFAULT_HISTORY_SIZE);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	hist_msg(ACC, ROOM, P_M1, NULL, 700, 0);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "m7");
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	expect_catchup(join_dev(1, 10, NONE, NONE, NONE, 800),
			(const struct hmsg[]){ { P_M4, 400 }, { P_M5, 500 }, { P_M1, 700 } }, 3, NULL);
	m.id = "m7";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_one(&d, MM_OP_DELIVER, R1);

	/* the end frees everything */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/* A join without <history/> gets at most history_default messages. */
START_TEST(test_history_default)
{
	static char bufs[55][128];
	struct hmsg want[20];
	mm_limits l;
	size_t i;

	memset(&l, 0xff, sizeof l);
	mm_limits_default(&l);
	ck_assert_uint_eq(l.history_size, MM_DEFAULT_HISTORY_SIZE);
	ck_assert_uint_eq(l.history_default, MM_DEFAULT_HISTORY_DEFAULT);
	ck_assert_uint_eq(MM_DEFAULT_HISTORY_SIZE, 50);
	ck_assert_uint_eq(MM_DEFAULT_HISTORY_DEFAULT, 20);
	ck_assert_uint_eq(mm_state_limits(st)->history_size, 50);
	ck_assert_uint_eq(mm_state_limits(st)->history_default, 20);

	/* the defaults, both hit: 55 messages, 50 kept, 20 replayed */
	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < 55; i++) {
		snprintf(bufs[i], sizeof bufs[i],
				"<message type='groupchat' from='%s/bob'><body>n%zu</body>"
				"</message>", ROOM, i);
		hist_msg(ACC, ROOM, bufs[i], NULL, 1000.0 + (double)i, 0);
	}
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 50);
	for (i = 0; i < 20; i++) {
		want[i].payload = bufs[35 + i];
		want[i].stamp = 1035.0 + (double)i;
	}
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, want, 20, NULL);
	/* mm_session_join_req without <history/> is the same */
	expect_catchup(join_dev(0, 0, 0, 0, 0, 2000), want, 20, NULL);

	/* configured: history_default 3 of history_size 8 */
	memset(&l, 0, sizeof l);
	l.history_size = 8;
	l.history_default = 3;
	reset_state(&l);
	four_messages();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, four + 1, 3, NULL);
	/* a <history/> may ask for more than the default */
	expect_catchup(join_dev(1, 4, NONE, NONE, NONE, 500), four, 4, NULL);
}
END_TEST

/*
 * mm_join_history: "numbers as the client sent them: any double,
 * infinities included.  NaN: no such attribute.  A negative maxstanzas,
 * maxchars or seconds asks for nothing ... maxstanzas and maxchars are
 * truncated and at most LONG_MAX ... No conversion in it is undefined"
 * (the UBSan build checks that last part), and a join with such numbers
 * replays what they ask for.
 */
START_TEST(test_history_client_numbers)
{
	const double inf = HUGE_VAL, nan = NAN;
	mm_join r;
	mm_err e;

	memset(&r, 0, sizeof r);
	mm_join_history(&r, inf, 1e300, inf, inf);
	ck_assert_int_eq(r.history.requested, 1);
	ck_assert(r.history.maxstanzas == LONG_MAX);
	ck_assert(r.history.maxchars == LONG_MAX);
	ck_assert(r.history.seconds == inf);
	ck_assert(r.history.since == inf);
	mm_join_history(&r, -inf, -1e300, -5, -inf);
	ck_assert_int_eq(r.history.maxstanzas, 0);
	ck_assert_int_eq(r.history.maxchars, 0);
	ck_assert(r.history.seconds == 0);
	ck_assert(r.history.since == -inf);
	mm_join_history(&r, nan, nan, nan, nan);
	ck_assert_int_eq(r.history.maxstanzas, -1);
	ck_assert_int_eq(r.history.maxchars, -1);
	ck_assert(r.history.seconds < 0);
	ck_assert(r.history.since < 0);
	mm_join_history(&r, 2.9, 9.22e18, 1.5, 100);
	ck_assert_int_eq(r.history.maxstanzas, 2);
	ck_assert(r.history.maxchars > 0);
	ck_assert(r.history.seconds == 1.5);
	ck_assert(r.history.since == 100);

	four_messages();
	r.nick = "alice";
	r.now = 500;
	/* everything asked for: all four */
	mm_join_history(&r, inf, inf, inf, nan);
	e = mm_session_join_req(st, ACC, "inf", ROOM, &r, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_catchup("inf", four, 4, NULL);
	/* a negative count: nothing */
	mm_join_history(&r, -1, nan, nan, nan);
	e = mm_session_join_req(st, ACC, "neg", ROOM, &r, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_catchup("neg", NULL, 0, NULL);
	/* since infinitely long ago: everything */
	mm_join_history(&r, nan, nan, nan, -inf);
	e = mm_session_join_req(st, ACC, "past", ROOM, &r, &d);
	ck_assert_int_eq(e, MM_OK);
	expect_catchup("past", four, 4, NULL);
}
END_TEST

/* maxstanzas: the newest n, oldest first; 0 is none. */
START_TEST(test_history_maxstanzas)
{
	four_messages();
	subject_msg(ACC, ROOM, P_SUBJECT, 450, 0);
	expect_catchup(join_dev(1, 2, NONE, NONE, NONE, 500), four + 2, 2,
			P_SUBJECT);
	expect_catchup(join_dev(1, 1, NONE, NONE, NONE, 500), four + 3, 1,
			P_SUBJECT);
	/* none: the subject still follows the self-presence */
	expect_catchup(join_dev(1, 0, NONE, NONE, NONE, 500), NULL, 0, P_SUBJECT);
	expect_catchup(join_dev(1, 4, NONE, NONE, NONE, 500), four, 4, P_SUBJECT);
	expect_catchup(join_dev(1, 100, NONE, NONE, NONE, 500), four, 4,
			P_SUBJECT);
	/* asking changes nothing kept */
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 4);
}
END_TEST

/*
 * maxchars counts payload bytes from the newest message back and stops
 * before the message that would exceed it (it does not skip it).
 */
START_TEST(test_history_maxchars)
{
	static const struct hmsg msgs[] = {
		{ P_MSG("a"), 10 },
		{ P_MSG("a much longer message than the others"), 20 },
		{ P_MSG("b"), 30 },
		{ P_MSG("c"), 40 }
	};
	const long ls = (long)strlen(P_MSG("a"));
	const long ll = (long)strlen(P_MSG("a much longer message than the others"));
	size_t i;

	joined_room(ACC, R1, ROOM, "alice");
	for (i = 0; i < 4; i++)
		hist_msg(ACC, ROOM, msgs[i].payload, NULL, msgs[i].stamp, 0);

	expect_catchup(join_dev(1, NONE, 2 * ls, NONE, NONE, 50), msgs + 2, 2,
			NULL);
	expect_catchup(join_dev(1, NONE, 2 * ls - 1, NONE, NONE, 50), msgs + 3, 1,
			NULL);
	/* room for a short one more, but the next is the long one: stop */
	expect_catchup(join_dev(1, NONE, 3 * ls, NONE, NONE, 50), msgs + 2, 2,
			NULL);
	expect_catchup(join_dev(1, NONE, 2 * ls + ll, NONE, NONE, 50), msgs + 1,
			3, NULL);
	expect_catchup(join_dev(1, NONE, 3 * ls + ll - 1, NONE, NONE, 50),
			msgs + 1, 3, NULL);
	expect_catchup(join_dev(1, NONE, 3 * ls + ll, NONE, NONE, 50), msgs, 4,
			NULL);
	expect_catchup(join_dev(1, NONE, ls, NONE, NONE, 50), msgs + 3, 1, NULL);
	expect_catchup(join_dev(1, NONE, ls - 1, NONE, NONE, 50), NULL, 0, NULL);
	expect_catchup(join_dev(1, NONE, 0, NONE, NONE, 50), NULL, 0, NULL);
}
END_TEST

/* seconds: messages with stamp >= now - seconds, now from mm_join.now. */
START_TEST(test_history_seconds)
{
	four_messages();
	expect_catchup(join_dev(1, NONE, NONE, 150, NONE, 450), four + 2, 2,
			NULL);
	/* the boundary is included */
	expect_catchup(join_dev(1, NONE, NONE, 250, NONE, 450), four + 1, 3,
			NULL);
	expect_catchup(join_dev(1, NONE, NONE, 249.5, NONE, 450), four + 2, 2,
			NULL);
	expect_catchup(join_dev(1, NONE, NONE, 0, NONE, 450), NULL, 0, NULL);
	expect_catchup(join_dev(1, NONE, NONE, 0, NONE, 400), four + 3, 1, NULL);
	expect_catchup(join_dev(1, NONE, NONE, 1000, NONE, 450), four, 4, NULL);
	/* relative to the joining session's clock */
	expect_catchup(join_dev(1, NONE, NONE, 150, NONE, 350), four + 1, 3,
			NULL);
}
END_TEST

/* since: messages with stamp >= since. */
START_TEST(test_history_since)
{
	four_messages();
	expect_catchup(join_dev(1, NONE, NONE, NONE, 200, 1000), four + 1, 3,
			NULL);
	expect_catchup(join_dev(1, NONE, NONE, NONE, 200.5, 1000), four + 2, 2,
			NULL);
	expect_catchup(join_dev(1, NONE, NONE, NONE, 400, 1000), four + 3, 1,
			NULL);
	expect_catchup(join_dev(1, NONE, NONE, NONE, 400.5, 1000), NULL, 0, NULL);
	expect_catchup(join_dev(1, NONE, NONE, NONE, 0, 1000), four, 4, NULL);
	expect_catchup(join_dev(1, NONE, NONE, NONE, 50, 1000), four, 4, NULL);
}
END_TEST

/* Several attributes: the most restrictive wins. */
START_TEST(test_history_combined)
{
	const long l1 = (long)strlen(P_M1);

	four_messages();
	expect_catchup(join_dev(1, 1, NONE, NONE, 200, 1000), four + 3, 1, NULL);
	expect_catchup(join_dev(1, 3, NONE, NONE, 300, 1000), four + 2, 2, NULL);
	expect_catchup(join_dev(1, 3, 2 * l1, NONE, NONE, 1000), four + 2, 2,
			NULL);
	expect_catchup(join_dev(1, 2, 4 * l1, NONE, NONE, 1000), four + 2, 2,
			NULL);
	expect_catchup(join_dev(1, NONE, 4 * l1, 250, NONE, 450), four + 1, 3,
			NULL);
	expect_catchup(join_dev(1, NONE, l1, 250, NONE, 450), four + 3, 1, NULL);
	/* seconds stricter than since, and the other way round */
	expect_catchup(join_dev(1, NONE, NONE, 150, 100, 450), four + 2, 2, NULL);
	expect_catchup(join_dev(1, NONE, NONE, 350, 300, 450), four + 2, 2, NULL);
	expect_catchup(join_dev(1, 4, 4 * l1, 1000, 0, 450), four, 4, NULL);
	expect_catchup(join_dev(1, 0, 4 * l1, 1000, 0, 450), NULL, 0, NULL);
}
END_TEST

/*
 * Only groupchat messages with a body and a payload are kept: a subject is
 * cached apart and replayed last; a message without payload, a private
 * message and an error are only delivered.
 */
START_TEST(test_history_kept_messages)
{
	mm_message m;

	joined_room(ACC, R1, ROOM, "alice");
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	subject_msg(ACC, ROOM, P_SUBJECT, 150, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);

	/* no payload: delivered, not kept */
	hist_msg(ACC, ROOM, NULL, "s2", 200, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);

	/* a private message from an occupant */
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_CHAT;
	m.has_body = 1;
	m.stamp = 250;
	m.payload = "<message type='chat' from='" ROOM "/bob'><body>psst</body>"
		"</message>";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);

	/* a groupchat without a body (a chat state, say) */
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.stamp = 260;
	m.payload = "<message type='groupchat' from='" ROOM "/bob'><active "
		"xmlns='http://jabber.org/protocol/chatstates'/></message>";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);

	/* a new subject replaces the old; messages after it come before it */
	hist_msg(ACC, ROOM, P_M3, "s3", 300, 0);
	subject_msg(ACC, ROOM, P_SUBJECT2, 350, 0);
	hist_msg(ACC, ROOM, P_M4, "s4", 400, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, (const struct hmsg[]){ { P_M1, 100 }, { P_M3, 300 },
			{ P_M4, 400 } }, 3, P_SUBJECT2);
}
END_TEST

/*
 * The phone was offline: every session of the account gone, the account
 * stays in the room and keeps what is said; the phone comes back and
 * catches up from where it was, another device gets the default.
 */
START_TEST(test_history_while_nobody_attached)
{
	joined_room(ACC, R1, ROOM, "alice");
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(mm_session_gone(st, ACC, R1, &d), MM_OK);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 0);

	hist_msg(ACC, ROOM, P_M2, "s2", 200, 0);
	expect_n(&d, 1, 0);
	hist_msg(ACC, ROOM, P_M3, "s3", 300, 0);
	expect_n(&d, 1, 0);
	subject_msg(ACC, ROOM, P_SUBJECT, 310, 0);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);

	/* the phone: <history since='(after m1)'/> */
	{
		mm_join r;

		memset(&r, 0, sizeof r);
		r.nick = "alice";
		r.id = "j1b";
		r.history.requested = 1;
		r.history.maxstanzas = NONE;
		r.history.maxchars = NONE;
		r.history.seconds = NONE;
		r.history.since = 100.001;
		r.now = 400;
		ck_assert_int_eq(mm_session_join_req(st, ACC, R1, ROOM, &r, &d), MM_OK);
	}
	expect_catchup(R1, (const struct hmsg[]){ { P_M2, 200 }, { P_M3, 300 } },
			2, P_SUBJECT);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	/* the laptop asks nothing: all of it (within history_default) */
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, (const struct hmsg[]){ { P_M1, 100 }, { P_M2, 200 },
			{ P_M3, 300 } }, 3, P_SUBJECT);
}
END_TEST

/* Payloads are interned: the same message in two accounts' rings once. */
START_TEST(test_history_interned)
{
	mm_stats s0, s;

	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	s0 = stats();
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	s = stats();
	ck_assert_uint_eq(s.payloads, s0.payloads + 1);
	ck_assert_uint_eq(s.payload_bytes, s0.payload_bytes + strlen(P_M1));
	hist_msg(ACC2, ROOM, P_M1, "s1", 100, 0);
	s = stats();
	ck_assert_uint_eq(s.payloads, s0.payloads + 1);
	ck_assert_uint_eq(s.payload_bytes, s0.payload_bytes + strlen(P_M1));
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);
	ck_assert_uint_eq(must_info(ACC2, ROOM).history, 1);

	/* kept while one ring still holds it */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 1);
	join(ACC2, R2, ROOM, "bobby", "j2", NULL);
	expect_catchup(R2, (const struct hmsg[]){ { P_M1, 100 } }, 1, NULL);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/* ==== retractions ========================================================= */

#define P_TOMB "<message type='groupchat' from='" ROOM "/bob'>" \
	"<retracted xmlns='urn:xmpp:message-retract:1' stamp='2026-01-01T00:00:00Z'/></message>"

/* A withdrawn message's tombstone takes its place in the ring: a later
 * session's catch-up has it where the message was, never the message. */
START_TEST(test_withdraw_ring_tombstone)
{
	size_t n = 99;
	const char *text;

	four_messages();
	text = mm_room_kept(st, ROOM, "s2");
	ck_assert_ptr_nonnull(text);
	ck_assert_str_eq(text, P_M2);
	ck_assert_ptr_null(mm_room_kept(st, ROOM, "nope"));
	ck_assert_ptr_null(mm_room_kept(st, ROOM2, "s2"));
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "s2", P_TOMB, &n), MM_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(mm_room_kept(st, ROOM, "s2"), P_TOMB);
	expect_catchup(join_dev(1, 10, NONE, NONE, NONE, 500), (const struct hmsg[]){
			{ P_M1, 100 }, { P_TOMB, 200 }, { P_M3, 300 }, { P_M4, 400 } }, 4, NULL);
	/* an id no ring holds, another room: nothing changes */
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "nope", P_TOMB, &n), MM_OK);
	ck_assert_uint_eq(n, 0);
	ck_assert_int_eq(mm_room_withdraw(st, ROOM2, "s3", P_TOMB, NULL), MM_OK);
	ck_assert_str_eq(mm_room_kept(st, ROOM, "s3"), P_M3);
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "", P_TOMB, &n), MM_EINVAL);
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "s3", NULL, &n), MM_EINVAL);
	ck_assert_int_eq(mm_room_withdraw(st, NULL, "s3", P_TOMB, &n), MM_EINVAL);
	ck_assert_ptr_null(mm_room_kept(st, ROOM, NULL));
}
END_TEST

/* Every local account's ring: the tombstone is interned like the rest,
 * and the message's text goes from the pool. */
START_TEST(test_withdraw_every_ring)
{
	mm_stats s0;
	size_t n = 0;

	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM, "bobby");
	s0 = stats();
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	hist_msg(ACC2, ROOM, P_M1, "s1", 100, 0);
	hist_msg(ACC, ROOM, P_M2, "s2", 200, 0);
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "s1", P_TOMB, &n), MM_OK);
	ck_assert_uint_eq(n, 2);
	ck_assert_uint_eq(stats().payloads, s0.payloads + 2);
	ck_assert_uint_eq(stats().payload_bytes, s0.payload_bytes + strlen(P_TOMB) + strlen(P_M2));
	join(ACC2, R2, ROOM, "bobby", "j2", NULL);
	expect_catchup(R2, (const struct hmsg[]){ { P_TOMB, 100 } }, 1, NULL);
	/* again: the tombstone stays */
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "s1", P_TOMB, &n), MM_OK);
	ck_assert_uint_eq(n, 2);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_307, 0, NULL);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_307, 0, NULL);
	expect_empty_state();
}
END_TEST

/* A tombstone the byte limits cannot take: the message goes from the
 * ring (the newer ones keep their order), never stays whole. */
START_TEST(test_withdraw_beyond_limits)
{
	const size_t limit = LEN(P_SELF) + 3 * LEN(P_M1) + 10;
	static const char big[] = "<message type='groupchat' from='" ROOM "/bob'>"
		"<retracted xmlns='urn:xmpp:message-retract:1' stamp='2026-01-01T00:00:00Z'>"
		"<reason>a reason far longer than the message it replaces, so that the "
		"membership's byte limit cannot take it in its place</reason>"
		"</retracted></message>";
	mm_limits l;
	size_t n = 0;

	memset(&l, 0, sizeof l);
	l.max_membership_bytes = limit;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	hist_msg(ACC, ROOM, P_M2, "s2", 200, 0);
	hist_msg(ACC, ROOM, P_M3, "s3", 300, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
	ck_assert_int_eq(mm_room_withdraw(st, ROOM, "s2", big, &n), MM_OK);
	ck_assert_uint_eq(n, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 2);
	ck_assert_uint_le(must_info(ACC, ROOM).bytes, limit);
	ck_assert_ptr_null(mm_room_kept(st, ROOM, "s2"));
	expect_catchup(join_dev(1, 10, NONE, NONE, NONE, 500), (const struct hmsg[]){
			{ P_M1, 100 }, { P_M3, 300 } }, 2, NULL);
	/* the ring goes on as a ring */
	hist_msg(ACC, ROOM, P_M4, "s4", 400, 0);
	ck_assert_str_eq(mm_room_kept(st, ROOM, "s4"), P_M4);
}
END_TEST

/* ==== persistence ========================================================= */

/*
 * mm_account_restore: a joining membership with no session, and a fresh
 * join asking for history since the last message seen.
 */
START_TEST(test_persist_restore_sends_join)
{
	const mm_action *a;
	struct minfo mi;
	mm_stats s;

	restore(ACC, ROOM, "alice", "pw", "sid-9", 1234.5);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM);
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->password, "pw");
	ck_assert_msg(a->since == 1234.5, "since %.17g", a->since);

	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_REJOINING);
	ck_assert_uint_eq(mi.sessions, 0);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_str_eq(mi.password, "pw");
	ck_assert_int_eq(mi.has_last_id, 1);
	ck_assert_str_eq(mi.last_id, "sid-9");
	ck_assert_msg(mi.last_stamp == 1234.5, "last_stamp %.17g", mi.last_stamp);
	ck_assert_uint_eq(mi.history, 0);
	/* joining again by itself: worth keeping */
	ck_assert_int_eq(mi.persistent, 1);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	ck_assert_uint_eq(get_sessions(ACC, ROOM, &(struct slist){ 0 }), 0);
	s = stats();
	ck_assert_uint_eq(s.accounts, 1);
	ck_assert_uint_eq(s.memberships, 1);
	ck_assert_uint_eq(s.sessions, 0);

	/* nothing known of the last message: since 0, no password */
	restore(ACC, ROOM2, "al", NULL, NULL, 0);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM2);
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_pstr_eq(a->nick, "al");
	ck_assert_ptr_null(a->password);
	ck_assert_msg(a->since == 0, "since %.17g", a->since);
	mi = must_info(ACC, ROOM2);
	ck_assert_int_eq(mi.has_last_id, 0);
	ck_assert_msg(mi.last_stamp == 0, "last_stamp %.17g", mi.last_stamp);
	ck_assert_int_eq(mi.has_password, 0);

	/* an id without a time: since stays 0 */
	restore(ACC2, ROOM, "bobby", NULL, "sid-1", 0);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM);
	ck_assert_msg(a->since == 0, "since %.17g", a->since);
	ck_assert_str_eq(must_info(ACC2, ROOM).last_id, "sid-1");
	ck_assert_uint_eq(stats().memberships, 3);
}
END_TEST

/* "Not handled when the account already has a membership there." */
START_TEST(test_persist_restore_not_twice)
{
	mm_stats before, after;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R1, ROOM2, "alice", "j2", NULL);
	restore(ACC, ROOM3, "alice", NULL, NULL, 0);
	before = stats();

	restore(ACC, ROOM, "alice", "pw", "x", 5);
	expect_not_handled(&d);
	restore(ACC, ROOM2, "alice", NULL, NULL, 0);
	expect_not_handled(&d);
	restore(ACC, ROOM3, "alice", NULL, NULL, 0);
	expect_not_handled(&d);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(must_info(ACC, ROOM).has_password, 0);
	ck_assert_int_eq(must_info(ACC, ROOM2).state, MM_JOINING);
	ck_assert_uint_eq(must_info(ACC, ROOM2).sessions, 1);

	/* leaving is a membership too */
	session_leave(ACC, R1, ROOM, "l1");
	restore(ACC, ROOM, "alice", NULL, NULL, 0);
	expect_not_handled(&d);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);

	/* malformed: nothing recorded */
	before = stats();
	ck_assert_int_eq(mm_account_restore(st, "", ROOM, "alice", NULL, NULL, 0,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_account_restore(st, ACC2, "", "alice", NULL, NULL, 0,
			&d), MM_EINVAL);
	ck_assert_int_eq(mm_account_restore(st, ACC2, ROOM, "", NULL, NULL, 0,
			&d), MM_EINVAL);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(membership_count(ACC2), 0);
}
END_TEST

/* max_rooms counts restored memberships; a too-long nick is refused. */
START_TEST(test_persist_restore_limits)
{
	mm_stats before, after;
	mm_limits l;

	small_limits(&l);
	reset_state(&l);

	restore(ACC, ROOM, "alice", NULL, NULL, 0);
	restore(ACC, ROOM2, "alice", NULL, NULL, 0);
	before = stats();
	ck_assert_int_eq(mm_account_restore(st, ACC, ROOM3, "alice", NULL, NULL,
			0, &d), MM_EROOMLIMIT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM3), -1);
	/* a session's join is refused just the same */
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM3, "alice", "j1", NULL,
			&d), MM_EROOMLIMIT);
	/* per account */
	restore(ACC2, ROOM3, "bobby", NULL, NULL, 0);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	/* max_nick_bytes (8) */
	ck_assert_int_eq(mm_account_restore(st, ACC2, ROOM, "abcdefghi", NULL,
			NULL, 0, &d), MM_EINVAL);
	ck_assert_int_eq(mm_membership_state(st, ACC2, ROOM), -1);
	restore(ACC2, ROOM, "abcdefgh", NULL, NULL, 0);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->nick, "abcdefgh");
}
END_TEST

/* The room's self-presence completes a restore: joined, persistent. */
START_TEST(test_persist_restore_completes)
{
	struct minfo mi;

	restore(ACC, ROOM, "alice", "pw", "sid-9", 1000);
	(void)take_dirty(1); /* whatever the restore itself marked */
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_n(&d, 1, 0);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_n(&d, 1, 0);
	expect_event(&d, "joined", NULL);
	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_JOINED);
	ck_assert_int_eq(mi.persistent, 1);
	ck_assert_uint_eq(mi.sessions, 0);
	expect_dirty(2, ACC);

	/* a session attaches as to any joined membership */
	join(ACC, R1, ROOM, "alice", "j1", "pw");
	expect_replay(&d, R1, (const char *const[]){ P_BOB }, 1, P_SELF, 0, NULL);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
}
END_TEST

/* A session that joins while the restore is under way waits for it. */
START_TEST(test_persist_restore_session_waits)
{
	const mm_action *a;

	restore(ACC, ROOM, "alice", NULL, NULL, 0);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	ck_assert_int_eq(d.handled, 1);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 0);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(effective_id(a, NULL), "j1");
	expect_event(&d, "joined", NULL);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
}
END_TEST

/*
 * While restoring, room history up to the last message seen is dropped:
 * by stanza-id (the very message) and by time (anything older); newer
 * history is delivered and kept.  A live message ends the phase.
 */
START_TEST(test_persist_restore_skips_seen)
{
	struct minfo mi;

	restore(ACC, ROOM, "alice", NULL, "s5", 500);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_one(&d, MM_OP_DELIVER, R1);

	hist_msg(ACC, ROOM, P_M3, "s3", 300, 1);
	expect_n(&d, 1, 0);
	hist_msg(ACC, ROOM, P_M4, "s4", 499.5, 1);
	expect_n(&d, 1, 0);
	hist_msg(ACC, ROOM, P_M5, "s5", 500, 1);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 0);
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.last_id, "s5");
	ck_assert_msg(mi.last_stamp == 500, "last_stamp %.17g", mi.last_stamp);

	/* the first one not seen yet */
	hist_msg(ACC, ROOM, P_MSG("m6"), "s6", 600, 1);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.last_id, "s6");
	ck_assert_msg(mi.last_stamp == 600, "last_stamp %.17g", mi.last_stamp);
	/* still restoring: an old one is still dropped */
	hist_msg(ACC, ROOM, P_M2, "s2", 200, 1);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);

	/* live traffic: the room's history is over */
	hist_msg(ACC, ROOM, P_MSG("m7"), "s7", 700, 0);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_catchup(R2, (const struct hmsg[]){ { P_MSG("m6"), 600 },
			{ P_MSG("m7"), 700 } }, 2, NULL);
	/* even room history older than the last message seen is news now */
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 1);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 3);
}
END_TEST

/* The subject ends the restoring phase too; by time or by id alone. */
START_TEST(test_persist_restore_subject_ends)
{
	restore(ACC, ROOM, "alice", NULL, "s5", 500);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	hist_msg(ACC, ROOM, P_M4, "s4", 400, 1);
	expect_n(&d, 1, 0);
	subject_msg(ACC, ROOM, P_SUBJECT, 450, 1);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).has_subject, 1);
	hist_msg(ACC, ROOM, P_M3, "s3", 300, 1);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM).history, 1);

	/* only the time known */
	restore(ACC, ROOM2, "alice", NULL, NULL, 500);
	self_pres(ACC, ROOM2, "alice", 0, NULL, P_SELF);
	hist_msg(ACC, ROOM2, P_M4, "s4", 499, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM2).history, 0);
	hist_msg(ACC, ROOM2, P_M5, "s5", 500, 1);
	ck_assert_uint_eq(must_info(ACC, ROOM2).history, 1);

	/* only the id known */
	restore(ACC2, ROOM, "bobby", NULL, "s5", 0);
	self_pres(ACC2, ROOM, "bobby", 0, NULL, P_SELF);
	hist_msg(ACC2, ROOM, P_M5, "s5", 500, 1);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(must_info(ACC2, ROOM).history, 0);
	hist_msg(ACC2, ROOM, P_M1, "s1", 100, 1);
	ck_assert_uint_eq(must_info(ACC2, ROOM).history, 1);

	/* an ordinary join keeps all the room's history */
	joined_room(ACC2, R1, ROOM2, "bobby");
	hist_msg(ACC2, ROOM2, P_M5, "s5", 500, 1);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	hist_msg(ACC2, ROOM2, P_M1, "s1", 100, 1);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_uint_eq(must_info(ACC2, ROOM2).history, 2);
}
END_TEST

/*
 * "refusals end it with an EVENT "removed"": a non-transient error ends the
 * restored membership, reason the condition; a transient one is retried.
 */
START_TEST(test_persist_restore_refused)
{
	const mm_action *a;
	struct minfo mi;

	restore(ACC, ROOM, "alice", "pw", "s1", 100);
	(void)take_dirty(1); /* whatever the restore itself marked */
	join_error(ACC, ROOM, NULL, "item-not-found");
	expect_n(&d, 1, 0);
	expect_event(&d, "removed", "item-not-found");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();
	expect_dirty(2, ACC);

	/* a session that asked meanwhile gets the error */
	restore(ACC, ROOM, "alice", "pw", "s1", 100);
	join(ACC, R1, ROOM, "alice", "j1", "pw");
	join_error(ACC, ROOM, NULL, "forbidden");
	a = expect_only(&d, MM_OP_DELIVER, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(effective_id(a, NULL), "j1");
	expect_event(&d, "removed", "forbidden");
	ck_assert_int_eq(get_info(ACC, ROOM, &mi), 0);
	expect_empty_state();

	/* transient: later, the delay doubling */
	restore(ACC, ROOM, "alice", "pw", "s1", 100);
	join_error(ACC, ROOM, NULL, "remote-server-timeout");
	a = expect_only(&d, MM_OP_REJOIN_LATER, ROOM);
	ck_assert_uint_eq(a->delay, 2 * MM_DEFAULT_REJOIN_DELAY);
	expect_event(&d, "rejoining", "remote-server-timeout");
	mi = must_info(ACC, ROOM);
	ck_assert_int_eq(mi.state, MM_REJOIN_WAIT);
	ck_assert_int_eq(mi.persistent, 1);
	rejoin_due(ACC, ROOM);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM);
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->password, "pw");
	join_error(ACC, ROOM, NULL, "service-unavailable");
	ck_assert_uint_eq(expect_only(&d, MM_OP_REJOIN_LATER, ROOM)->delay,
			4 * MM_DEFAULT_REJOIN_DELAY);
	rejoin_due(ACC, ROOM);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_event(&d, "joined", NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);
}
END_TEST

/*
 * mm_take_dirty: level 2 for membership changes, level 1 also for a newer
 * last message; each visit forgets the account.
 */
START_TEST(test_persist_dirty_levels)
{
	mm_presence p;
	struct dirty dy;

	expect_dirty(1, NULL);
	ck_assert_uint_eq(mm_take_dirty(st, 1, dirty_cb, &(struct dirty){ 0 }),
			0);

	/* a join completes: level 2, once */
	joined_room(ACC, R1, ROOM, "alice");
	expect_dirty(2, ACC);
	expect_dirty(2, NULL);
	expect_dirty(1, NULL);

	/* only a new message: level 1 only */
	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	expect_dirty(2, NULL);
	expect_dirty(1, ACC);
	expect_dirty(1, NULL);

	/* a membership change is seen at level 1 as well */
	joined_room(ACC2, R1, ROOM, "bobby");
	expect_dirty(1, ACC2);
	expect_dirty(2, NULL);

	/* one account at each level */
	hist_msg(ACC, ROOM, P_M2, "s2", 200, 0);
	joined_room(ACC2, R1, ROOM2, "bobby");
	expect_dirty(2, ACC2);
	expect_dirty(1, ACC);
	expect_dirty(1, NULL);
	/* both at level 2 */
	joined_room(ACC, R1, ROOM2, "alice");
	hist_msg(ACC2, ROOM, P_M2, "s2", 200, 0);
	session_leave(ACC2, R1, ROOM2, "l1");
	self_unavailable(ACC2, ROOM2, "bobby", 0, 0, "l1");
	expect_event(&d, "left", NULL);
	dy = take_dirty(2);
	ck_assert_uint_eq(dy.n, 2);
	ck_assert_msg((strcmp(dy.acc[0], ACC) == 0 && strcmp(dy.acc[1], ACC2) == 0)
			|| (strcmp(dy.acc[0], ACC2) == 0 && strcmp(dy.acc[1], ACC) == 0),
			"dirty %s %s", dy.acc[0], dy.acc[1]);
	expect_dirty(1, NULL);

	/* the account's nick changes */
	p = presence(MM_PRES_UNAVAILABLE, MM_STATUS_110 | MM_STATUS_303, NULL, NULL);
	p.new_nick = "alicia";
	p.affiliation = "owner";
	p.role = "moderator";
	room_pres(ACC, ROOM, "alice", &p);
	expect_dirty(2, ACC);

	/* the membership ends */
	self_unavailable(ACC, ROOM2, "alice", MM_STATUS_307, 0, NULL);
	expect_dirty(2, ACC);
	self_unavailable(ACC2, ROOM, "bobby", MM_STATUS_301, 0, NULL);
	expect_dirty(2, ACC2);
	/* a first join refused */
	join(ACC2, R1, ROOM3, "alice", "j3", NULL);
	join_error(ACC2, ROOM3, "j3", "forbidden");
	expect_dirty(2, ACC2);
}
END_TEST

/*
 * The last message seen is known by the room's XEP-0359 stanza-id, which
 * the room's history on a re-join carries again; the message's own 'id'
 * is the sender's and says nothing of it.
 */
START_TEST(test_persist_last_id_is_stanza_id)
{
	mm_message m;

	joined_room(ACC, R1, ROOM, "alice");
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_GROUPCHAT;
	m.id = "msg-id-1";
	m.stanza_id = "room-sid-1";
	m.stamp = 100;
	m.has_body = 1;
	m.payload = P_M1;
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	ck_assert_str_eq(must_info(ACC, ROOM).last_id, "room-sid-1");
	/* no stanza-id: the last one known stays */
	m.id = "msg-id-2";
	m.stanza_id = NULL;
	m.stamp = 200;
	m.payload = P_M2;
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	ck_assert_str_eq(must_info(ACC, ROOM).last_id, "room-sid-1");

	/* after a restart the room's history repeats the message by its
	 * stanza-id, with another id: it is dropped as seen, and the next is not */
	reset_state(NULL);
	restore(ACC, ROOM, "alice", NULL, "room-sid-1", 0);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	m.id = "other-id";
	m.stanza_id = "room-sid-1";
	m.delayed = 1;
	m.stamp = 100;
	m.payload = P_M1;
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	expect_n(&d, 1, 0);
	m.id = "room-sid-1";
	m.stanza_id = "room-sid-2";
	m.stamp = 200;
	m.payload = P_M2;
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, "bob", &m, &d), MM_OK);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
}
END_TEST

/* mm_membership_info: last_id/last_stamp and persistent. */
START_TEST(test_persist_membership_info)
{
	struct minfo mi;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	mi = must_info(ACC, ROOM);
	/* a first join not confirmed yet: nothing to keep */
	ck_assert_int_eq(mi.persistent, 0);
	ck_assert_int_eq(mi.has_last_id, 0);
	ck_assert_msg(mi.last_stamp == 0, "last_stamp %.17g", mi.last_stamp);
	ck_assert_uint_eq(mi.history, 0);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);

	hist_msg(ACC, ROOM, P_M1, "s1", 100, 0);
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.last_id, "s1");
	ck_assert_msg(mi.last_stamp == 100, "last_stamp %.17g", mi.last_stamp);
	hist_msg(ACC, ROOM, P_M2, "s2", 200.25, 0);
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.last_id, "s2");
	ck_assert_msg(mi.last_stamp == 200.25, "last_stamp %.17g", mi.last_stamp);
	ck_assert_uint_eq(mi.history, 2);
	/* with nobody attached, too */
	ck_assert_int_eq(mm_session_gone(st, ACC, R1, &d), MM_OK);
	hist_msg(ACC, ROOM, P_M3, "s3", 300, 0);
	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.last_id, "s3");
	ck_assert_msg(mi.last_stamp == 300, "last_stamp %.17g", mi.last_stamp);
	ck_assert_int_eq(mi.persistent, 1);

	/* joining again by itself (333, 332): still worth keeping */
	join(ACC, R1, ROOM, "alice", "j2", NULL);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);
	rejoin_due(ACC, ROOM);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);

	/* leaving: not worth keeping */
	session_leave(ACC, R1, ROOM, "l1");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 0);
}
END_TEST

/* ==== events ============================================================== */

START_TEST(test_events_joined_left)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	expect_event(&d, NULL, NULL);
	occupant(ACC, ROOM, "bob", P_BOB);
	expect_event(&d, NULL, NULL);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_event(&d, "joined", NULL);
	/* a self-presence while joined is only news */
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	expect_event(&d, NULL, NULL);
	/* a later session attaching */
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_event(&d, NULL, NULL);
	session_leave(ACC, R2, ROOM, "l2");
	expect_event(&d, NULL, NULL);
	/* the last session asks: the leave completes with the room's answer */
	session_leave(ACC, R1, ROOM, "l1");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	expect_event(&d, NULL, NULL);
	self_unavailable(ACC, ROOM, "alice", 0, 0, "l1");
	expect_one(&d, MM_OP_DELIVER, R1);
	expect_event(&d, "left", NULL);

	/* the last session leaves while the re-join waits */
	joined_room(ACC, R1, ROOM, "alice");
	expect_event(&d, "joined", NULL);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	session_leave(ACC, R1, ROOM, "l1");
	expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	expect_event(&d, "left", NULL);
	expect_empty_state();
}
END_TEST

static const struct {
	unsigned status;
	int destroyed;
	const char *reason;
} removed_cases[] = {
	{ MM_STATUS_307, 0, "kicked" },
	{ MM_STATUS_301, 0, "banned" },
	{ 0, 1, "destroyed" },
	{ MM_STATUS_321, 0, "affiliation-changed" },
	{ MM_STATUS_322, 0, "members-only" },
	/* a removal with 332/333 is still a removal */
	{ MM_STATUS_307 | MM_STATUS_333, 0, "kicked" },
	{ MM_STATUS_301 | MM_STATUS_332, 0, "banned" },
	{ MM_STATUS_333, 1, "destroyed" },
};

#define N_REMOVED_CASES (sizeof removed_cases / sizeof removed_cases[0])

START_TEST(test_events_removed)
{
	populate();
	self_unavailable(ACC, ROOM, "alice", removed_cases[_i].status,
			removed_cases[_i].destroyed, NULL);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	expect_event(&d, "removed", removed_cases[_i].reason);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
}
END_TEST

/* A refused join: "removed", the reason being the error's condition. */
START_TEST(test_events_removed_refused)
{
	const char *reason;
	char copy[64];

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	join_error(ACC, ROOM, "j1", "registration-required");
	expect_one(&d, MM_OP_DELIVER, R1);
	expect_event(&d, "removed", "registration-required");
	/* the reason is the decision's: it outlives the membership */
	reason = d.reason;
	copy_str(copy, sizeof copy, reason);
	ck_assert_str_eq(copy, "registration-required");

	/* an automatic re-join refused for good */
	joined_room(ACC, R1, ROOM, "alice");
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	join_error(ACC, ROOM, NULL, "forbidden");
	expect_event(&d, "removed", "forbidden");
	expect_empty_state();
}
END_TEST

START_TEST(test_events_rejoining)
{
	char pid[64];

	joined_room(ACC, R1, ROOM, "alice");
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	expect_event(&d, "rejoining", "technical-problem");
	join_error(ACC, ROOM, NULL, "service-unavailable");
	expect_event(&d, "rejoining", "service-unavailable");
	rejoin_due(ACC, ROOM);
	join_error(ACC, ROOM, NULL, "internal-server-error");
	expect_event(&d, "rejoining", "internal-server-error");
	rejoin_due(ACC, ROOM);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_event(&d, "joined", NULL);

	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	expect_event(&d, "rejoining", "system-shutdown");
	rejoin_due(ACC, ROOM);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_event(&d, "joined", NULL);

	sent_iq(ACC, R1, ROOM, "alice", "ping", NULL, 1, 100, pid, sizeof pid);
	expect_event(&d, NULL, NULL);
	room_iq(ACC, ROOM, "alice", pid, 1, "not-acceptable");
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	expect_event(&d, "rejoining", "not-acceptable");
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_event(&d, "joined", NULL);
}
END_TEST

/* Ordinary traffic is no event. */
START_TEST(test_events_null_for_traffic)
{
	char qid[64];
	mm_message m;

	populate();
	expect_event(&d, NULL, NULL);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_event(&d, NULL, NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	expect_event(&d, NULL, NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_CHAT, 0, "pm1", P_BODY);
	expect_event(&d, NULL, NULL);
	occupant(ACC, ROOM, "dave", P_DAVE);
	expect_event(&d, NULL, NULL);
	occupant_gone(ACC, ROOM, "dave");
	expect_event(&d, NULL, NULL);
	session_msg(ACC, R1, ROOM, NULL, MM_MSG_GROUPCHAT, "o1");
	expect_event(&d, NULL, NULL);
	session_msg(ACC, R1, ROOM, "bob", MM_MSG_CHAT, "o2");
	expect_event(&d, NULL, NULL);
	session_pres(ACC, R1, ROOM, "alice", "p1", "away", NULL);
	expect_event(&d, NULL, NULL);
	memset(&m, 0, sizeof m);
	m.type = MM_MSG_ERROR;
	m.id = "o1";
	ck_assert_int_eq(mm_room_message(st, ACC, ROOM, NULL, &m, &d), MM_OK);
	expect_one(&d, MM_OP_DELIVER, R1);
	expect_event(&d, NULL, NULL);
	sent_iq(ACC, R2, ROOM, NULL, "q1", NULL, 0, 100, qid, sizeof qid);
	expect_event(&d, NULL, NULL);
	room_iq(ACC, ROOM, NULL, qid, 0, NULL);
	expect_event(&d, NULL, NULL);
	sent_iq(ACC, R2, ROOM, NULL, "q2", NULL, 0, 100, qid, sizeof qid);
	expire(1000);
	expect_one(&d, MM_OP_IQ_ERROR, R2);
	expect_event(&d, NULL, NULL);
	ck_assert_int_eq(mm_delivery_failed(st, ACC, ROOM, &d), MM_OK);
	expect_event(&d, NULL, NULL);
	ck_assert_int_eq(mm_session_gone(st, ACC, R2, &d), MM_OK);
	expect_event(&d, NULL, NULL);
	/* not handled: no event either */
	room_msg(ACC2, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_not_handled(&d);
	expect_event(&d, NULL, NULL);
}
END_TEST

/* ==== the membership lifecycle ============================================ */

/* The table in minimix.h, cell by cell: what mm_transition() must answer. */
START_TEST(test_lifecycle_table)
{
#define R MM_REFUSED
#define N MM_NONE
#define JG MM_JOINING
#define JD MM_JOINED
#define LV MM_LEAVING
#define LR MM_LEAVING_REJOIN
#define RW MM_REJOIN_WAIT
#define RJ MM_REJOINING
	static const int want[MM_MSTATE_COUNT + 1][MM_EV_COUNT] = {
		/*           JOIN RESTORE LAST ACCT SELF ERR ERR_T OUT SHUT TECH FELL TIME */
		/* NONE */ { JG,  RJ,     R,   R,   R,   R,  R,    R,  R,   R,   R,   R  },
		/* JG */   { JG,  R,      LV,  LV,  JD,  N,  N,    N,  RW,  RJ,  R,   N  },
		/* JD */   { JD,  R,      LV,  LV,  JD,  R,  R,    N,  RW,  RJ,  RJ,  R  },
		/* LV */   { LR,  R,      R,   R,   R,   N,  N,    N,  N,   N,   R,   N  },
		/* LR */   { LR,  R,      LV,  LV,  R,   JG, JG,   JG, JG,  JG,  R,   JG },
		/* RW */   { RJ,  R,      N,   N,   JD,  R,  R,    N,  RW,  RJ,  R,   RJ },
		/* RJ */   { RJ,  R,      LV,  LV,  JD,  N,  RW,   N,  RW,  RJ,  R,   RW },
	};
#undef R
#undef N
#undef JG
#undef JD
#undef LV
#undef LR
#undef RW
#undef RJ
	int state, ev;

	for (state = MM_NONE; state < MM_MSTATE_COUNT; state++)
		for (ev = 0; ev < MM_EV_COUNT; ev++)
			ck_assert_msg(mm_transition(state, ev) == want[state + 1][ev],
					"%s x %s: %d, want %d", mm_mstate_name(state),
					mm_mevent_name(ev), mm_transition(state, ev),
					want[state + 1][ev]);
	/* out of range: refused, never a crash */
	ck_assert_int_eq(mm_transition(MM_MSTATE_COUNT, MM_EV_JOIN), MM_REFUSED);
	ck_assert_int_eq(mm_transition(-3, MM_EV_JOIN), MM_REFUSED);
	ck_assert_int_eq(mm_transition(MM_JOINED, MM_EV_COUNT), MM_REFUSED);
	ck_assert_int_eq(mm_transition(MM_JOINED, -1), MM_REFUSED);
	ck_assert_str_eq(mm_mstate_name(MM_NONE), "none");
	ck_assert_str_eq(mm_mstate_name(MM_REJOIN_WAIT), "rejoin-wait");
	ck_assert_str_eq(mm_mstate_name(MM_MSTATE_COUNT), "?");
	ck_assert_str_eq(mm_mevent_name(MM_EV_LAST_LEAVE), "last-leave");
	ck_assert_str_eq(mm_mevent_name(MM_EV_COUNT), "?");
}
END_TEST

/* The observed transitions since the mark, as "from-event->to" strings. */
static void expect_transitions(size_t mark, const char *const *want, size_t n)
{
	size_t i;

	ck_assert_msg(nseen - mark == n, "%zu transitions, want %zu",
			nseen - mark, n);
	for (i = 0; i < n; i++) {
		char got[96];
		snprintf(got, sizeof got, "%s-%s->%s", mm_mstate_name(obs[mark + i].from),
				mm_mevent_name(obs[mark + i].event),
				mm_mstate_name(obs[mark + i].to));
		ck_assert_str_eq(got, want[i]);
	}
}

/* A membership's life goes through the table, one transition per step. */
START_TEST(test_lifecycle_walk)
{
	size_t mark = nseen;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	rejoin_due(ACC, ROOM);
	join_error(ACC, ROOM, NULL, "service-unavailable");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	self_pres(ACC, ROOM, "alice", 0, "j2", P_SELF);
	session_leave(ACC, R2, ROOM, "l2");
	session_leave(ACC, R1, ROOM, "l1");
	join(ACC, R2, ROOM, "alice", "j3", NULL);
	self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	join_error(ACC, ROOM, "x", "forbidden");
	expect_transitions(mark, (const char *const[]){
		"none-join->joining", "joining-self->joined",
		"joined-shutdown->rejoin-wait", "rejoin-wait-timeout->rejoining",
		"rejoining-error-transient->rejoin-wait",
		"rejoin-wait-join->rejoining", "rejoining-self->joined",
		"joined-last-leave->leaving", "leaving-join->leaving-rejoin",
		"leaving-rejoin-out->joining", "joining-error->none" }, 11);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
}
END_TEST

/* Events without a transition change nothing and send nothing. */
START_TEST(test_lifecycle_refused)
{
	mm_presence p;
	size_t mark;

	joined_room(ACC, R1, ROOM, "alice");
	mark = nseen;
	/* JOINED x ERROR: an error nobody asked for is dropped */
	join_error(ACC, ROOM, NULL, "forbidden");
	expect_n(&d, 1, 0);
	/* JOINED x RESTORE: never joined twice */
	ck_assert_int_eq(mm_account_restore(st, ACC, ROOM, "alice", NULL, NULL, 0,
			&d), MM_OK);
	expect_not_handled(&d);
	/* JOINED x TIMEOUT: nothing waits */
	rejoin_due(ACC, ROOM);
	expect_not_handled(&d);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);

	/* REJOIN_WAIT x ERROR_TRANSIENT: the wait is not doubled or repeated */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	mark = nseen;
	join_error(ACC, ROOM, NULL, "service-unavailable");
	expect_n(&d, 1, 0);
	ck_assert_ptr_null(d.event);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
	ck_assert_uint_eq(nseen, mark);

	/* LEAVING x SELF (a join in flight answered first), x ACCOUNT_LEAVE */
	rejoin_due(ACC, ROOM);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	session_leave(ACC, R1, ROOM, "l1");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	mark = nseen;
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	expect_n(&d, 1, 0);
	ck_assert_ptr_null(d.event);
	ck_assert_uint_eq(nseen, mark);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	p = presence(MM_PRES_UNAVAILABLE, MM_STATUS_110, NULL, NULL);
	room_pres(ACC, ROOM, "alice", &p);
	expect_one(&d, MM_OP_DELIVER, R1);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
}
END_TEST

/*
 * LEAVING_REJOIN x ACCOUNT_LEAVE -> LEAVING: a session waiting to join again
 * leaves with the account (it used to be joined again once the room let
 * the account out).
 */
START_TEST(test_lifecycle_account_leave_while_leaving_rejoin)
{
	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R1, ROOM, "l1");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING_REJOIN);
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	ck_assert_pstr_eq(expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM)->resource, R2);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	expect_one(&d, MM_OP_DELIVER, R1);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
}
END_TEST

/* LEAVING x ERROR -> NONE: the leaving session still learns it is out. */
START_TEST(test_lifecycle_leave_error_reflects)
{
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R1, ROOM, "l1");
	join_error(ACC, ROOM, NULL, "forbidden");
	a = expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	ck_assert_pstr_eq(a->resource, R1);
	ck_assert_pstr_eq(d.event, "left");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
}
END_TEST

/* ==== deadlines: every waiting state ends ================================== */

#define T0 5000.0

/* Actions of one op in the (whole) decision. */
static const mm_action *tick_action(mm_op op, const char *resource)
{
	return find_action(&d, op, resource);
}

/* A join the room never answers fails after join_timeout, with
 * remote-server-timeout to each session that asked; the membership is
 * freed and no longer counts against max_rooms. */
START_TEST(test_timeout_join_unanswered)
{
	mm_limits l;
	const mm_action *a;

	memset(&l, 0, sizeof l);
	l.max_rooms = 1;
	reset_state(&l);
	expire(T0);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	expire(T0 + 30);
	join(ACC, R2, ROOM, "ally", "j2", NULL); /* does not restart the wait */
	ck_assert_int_eq(mm_session_join(st, ACC, R1, ROOM2, "alice", "k1", NULL,
			&d), MM_EROOMLIMIT);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT - 1);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINING);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT);
	ck_assert_uint_eq(count_op(&d, MM_OP_JOIN_ERROR, NULL), 2);
	a = tick_action(MM_OP_JOIN_ERROR, R1);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_pstr_eq(a->room, ROOM);
	ck_assert_pstr_eq(a->id, "j1");
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(a->condition, "remote-server-timeout");
	ck_assert_pstr_eq(a->error_type, "wait");
	a = tick_action(MM_OP_JOIN_ERROR, R2);
	ck_assert_pstr_eq(a->id, "j2");
	ck_assert_pstr_eq(a->nick, "ally");
	a = tick_action(MM_OP_EVENT, NULL);
	ck_assert_pstr_eq(a->event, "removed");
	ck_assert_pstr_eq(a->reason, "remote-server-timeout");
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
	expect_empty_state();
	ck_assert_uint_eq(mm_take_dirty(st, 2, NULL, NULL), 1);
	/* the room limit counts it no more */
	join(ACC, R1, ROOM2, "alice", "k1", NULL);
	expect_one(&d, MM_OP_SEND_JOIN, NULL);
	/* a late answer finds nothing */
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	expect_not_handled(&d);
}
END_TEST

/* An answered join has no deadline; nor has a joined membership. */
START_TEST(test_timeout_join_answered)
{
	expire(T0);
	joined_room(ACC, R1, ROOM, "alice");
	expire(T0 + 100000);
	expect_n(&d, 1, 0);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
}
END_TEST

/* A leave the room never answers completes: the leaving session gets its
 * unavailable self-presence, the membership ends ("left"). */
START_TEST(test_timeout_leave_unanswered)
{
	const mm_action *a;

	expire(T0);
	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R1, ROOM, "l1");
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT - 1);
	expect_n(&d, 1, 0);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT);
	a = tick_action(MM_OP_REFLECT_LEAVE, R1);
	ck_assert_ptr_nonnull(a);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_pstr_eq(tick_action(MM_OP_EVENT, NULL)->event, "left");
	expect_empty_state();
}
END_TEST

/* LEAVING_REJOIN -TIMEOUT-> JOINING: the leaver is out, the waiter's join
 * goes out. */
START_TEST(test_timeout_leaving_rejoin)
{
	const mm_action *a;

	expire(T0);
	joined_room(ACC, R1, ROOM, "alice");
	session_leave(ACC, R1, ROOM, "l1");
	join(ACC, R2, ROOM, "ally", "j2", "pw");
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT);
	ck_assert_ptr_nonnull(tick_action(MM_OP_REFLECT_LEAVE, R1));
	a = tick_action(MM_OP_SEND_JOIN, NULL);
	ck_assert_pstr_eq(a->nick, "ally");
	ck_assert_pstr_eq(a->password, "pw");
	ck_assert_int_eq(a->from_request, 0);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINING);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "ally");
	/* a new wait: it times out in turn */
	expire(T0 + 2 * MM_DEFAULT_JOIN_TIMEOUT);
	ck_assert_pstr_eq(tick_action(MM_OP_JOIN_ERROR, R2)->id, "j2");
	expect_empty_state();
}
END_TEST

/* An automatic re-join the room never answers waits and is tried again,
 * as after a transient error; the membership stays. */
START_TEST(test_timeout_rejoining_retries)
{
	const mm_action *a;

	expire(T0);
	ck_assert_int_eq(mm_account_restore(st, ACC, ROOM, "alice", NULL, NULL, 0,
			&d), MM_OK);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT);
	a = tick_action(MM_OP_REJOIN_LATER, NULL);
	ck_assert_uint_eq(a->delay, 2 * MM_DEFAULT_REJOIN_DELAY);
	a = tick_action(MM_OP_EVENT, NULL);
	ck_assert_pstr_eq(a->event, "rejoining");
	ck_assert_pstr_eq(a->reason, "remote-server-timeout");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT + 2 * MM_DEFAULT_REJOIN_DELAY - 1);
	expect_n(&d, 1, 0);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT + 2 * MM_DEFAULT_REJOIN_DELAY);
	a = expect_only(&d, MM_OP_SEND_JOIN, ROOM);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 1);
}
END_TEST

/* A wait entered before the first tick counts from the first tick. */
START_TEST(test_timeout_before_first_tick)
{
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	expire(T0);
	expect_n(&d, 1, 0);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT - 1);
	expect_n(&d, 1, 0);
	expire(T0 + MM_DEFAULT_JOIN_TIMEOUT);
	expect_one(&d, MM_OP_JOIN_ERROR, R1);
}
END_TEST

/* mm_ping_later: the host's joined rooms get a self-ping when it is due,
 * once; other hosts' rooms do not. */
START_TEST(test_timeout_ping_later)
{
	const mm_action *a;

	expire(T0);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, "r@elsewhere.example", "alice");
	ck_assert_int_eq(mm_ping_later(st, "conference.example.org", 5), MM_OK);
	ck_assert_int_eq(mm_ping_later(st, "conference.example.org", 9), MM_OK);
	ck_assert_int_eq(mm_ping_later(st, "", 5), MM_EINVAL);
	expire(T0 + 4);
	expect_n(&d, 1, 0);
	expire(T0 + 5);
	a = expect_only(&d, MM_OP_SEND_PING, ROOM);
	ck_assert_pstr_eq(a->account, ACC);
	ck_assert_uint_eq(stats().iqs, 1);
	expire(T0 + 10);
	expect_n(&d, 1, 0);
}
END_TEST

/* mm_ping_later: links to many domains falling at once cannot grow the
 * state: past MM_MAX_PING_HOSTS waiting hosts an ask is dropped, and the
 * hosts already waiting still get their pings. */
START_TEST(test_timeout_ping_later_bounded)
{
	char host[64];
	size_t i;

	expire(T0);
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, "r@late.example", "alice");
	ck_assert_int_eq(mm_ping_later(st, "conference.example.org", 5), MM_OK);
	for (i = 1; i < MM_MAX_PING_HOSTS; i++) {
		snprintf(host, sizeof host, "d%zu.example", i);
		ck_assert_int_eq(mm_ping_later(st, host, 5), MM_OK);
	}
	ck_assert_int_eq(mm_ping_later(st, "late.example", 5), MM_OK);
	expire(T0 + 5);
	expect_only(&d, MM_OP_SEND_PING, ROOM);
	/* the waits were taken: there is room for new asks again */
	ck_assert_int_eq(mm_ping_later(st, "late.example", 1), MM_OK);
	expire(T0 + 6);
	expect_only(&d, MM_OP_SEND_PING, "r@late.example");
}
END_TEST

/* ==== sessions whose client is away (stream management hibernation) ========= */

/*
 * The laptop hibernates; the phone, the last connected session, leaves: the
 * account leaves, and the laptop gets its unavailable self-presence now
 * (delivered when it resumes) and is detached: no ghost.
 */
START_TEST(test_unreachable_last_connected_leave)
{
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_session_reachable(st, ACC, R2, 0), MM_OK);
	session_leave(ACC, R1, ROOM, "l1");
	expect_one(&d, MM_OP_SEND_AS_ACCOUNT, NULL);
	a = expect_one(&d, MM_OP_REFLECT_LEAVE, R2);
	ck_assert_ptr_null(a->id);
	ck_assert_uint_eq(count_op(&d, MM_OP_REFLECT_LEAVE, R1), 0);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	expect_empty_state();
}
END_TEST

/* A session that came back holds the account in again; a session that
 * merely dropped (gone, no hibernation) never counted. */
START_TEST(test_unreachable_resumed_counts)
{
	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_session_reachable(st, ACC, R2, 0), MM_OK);
	ck_assert_int_eq(mm_session_reachable(st, ACC, R2, 1), MM_OK);
	session_leave(ACC, R1, ROOM, "l1");
	expect_only(&d, MM_OP_REFLECT_LEAVE, ROOM);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
	/* unknown sessions and accounts change nothing */
	ck_assert_int_eq(mm_session_reachable(st, ACC2, R2, 0), MM_OK);
	ck_assert_int_eq(mm_session_reachable(st, ACC, "", 0), MM_EINVAL);
	ck_assert_int_eq(mm_session_reachable(st, NULL, R1, 0), MM_EINVAL);
}
END_TEST

/* The last session dropped without a leave: the account stays, as ever. */
START_TEST(test_unreachable_no_leave_keeps_account)
{
	joined_room(ACC, R1, ROOM, "alice");
	ck_assert_int_eq(mm_session_reachable(st, ACC, R1, 0), MM_OK);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "m1", P_BODY);
	expect_deliver_to(&d, (const char *const[]){ R1 }, 1);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
}
END_TEST

/* ==== a later session gets its own news only ================================ */

/* The cached self-presence carried 201 (room created) and 210 for the
 * first session: a later session's replay drops both (and gets 210 of its
 * own when its nick differs); the other codes stay. */
START_TEST(test_later_session_own_news)
{
	const mm_action *a;

	join(ACC, R1, ROOM, "alice", "j1", NULL);
	self_pres(ACC, ROOM, "alice", MM_STATUS_201 | MM_STATUS_210, "j1", P_SELF);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	a = expect_one(&d, MM_OP_REPLAY, R2);
	ck_assert_uint_eq(a->drop_codes, MM_CODE_201 | MM_CODE_210);
	ck_assert_uint_eq(a->add_codes, 0);
	join(ACC, R3, ROOM, "ally", "j3", NULL);
	a = expect_one(&d, MM_OP_REPLAY, R3);
	ck_assert_uint_eq(a->drop_codes, MM_CODE_201 | MM_CODE_210);
	ck_assert_uint_eq(a->add_codes, MM_CODE_210);
}
END_TEST


/* ==== membership spans and the catch-up from the room log ================= */

/* The spans of ACC's membership in ROOM, copied into out; returns their number. */
static mm_span spans_seen[MM_MAX_SPANS + 1];
static size_t nspans_seen;

static int copy_spans(const mm_membership_info *info, void *ud)
{
	(void)ud;
	if (strcmp(info->room, ROOM) == 0) {
		ck_assert_uint_le(info->nspans, MM_MAX_SPANS);
		memcpy(spans_seen, info->spans, info->nspans * sizeof *info->spans);
		nspans_seen = info->nspans;
	}
	return 0;
}

static size_t spans_of(void)
{
	nspans_seen = 0;
	mm_account_memberships(st, ACC, copy_spans, NULL);
	return nspans_seen;
}

static void expect_span(size_t i, double from, double to)
{
	ck_assert_uint_lt(i, nspans_seen);
	ck_assert_double_eq(spans_seen[i].from, from);
	if (to < 0)
		ck_assert_msg(spans_seen[i].to < 0, "span %zu closed at %f", i, spans_seen[i].to);
	else
		ck_assert_double_eq(spans_seen[i].to, to);
}

/* A span opens on JOINING -SELF-> JOINED and closes, to the fraction of
 * a second, on the account's leave; the JOINING after LEAVING_REJOIN
 * opens the next one. */
START_TEST(test_spans_open_and_close)
{
	mm_state_now(st, 1000.5);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	ck_assert_uint_eq(spans_of(), 0); /* joining: not in yet */
	mm_state_now(st, 1000.75);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 1000.75, -1);
	mm_state_now(st, 1001.25);
	session_leave(ACC, R1, ROOM, "l1");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 1000.75, 1001.25);
	/* a session asks to join while the account leaves */
	mm_state_now(st, 1002);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_LEAVING_REJOIN);
	self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINING);
	ck_assert_uint_eq(spans_of(), 1);
	mm_state_now(st, 1003.5);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	ck_assert_uint_eq(spans_of(), 2);
	expect_span(0, 1000.75, 1001.25);
	expect_span(1, 1003.5, -1);
	/* a join's now is the clock too */
	join_dev(0, 0, 0, 0, 0, 1004);
	ck_assert_uint_eq(spans_of(), 2);
	expect_span(1, 1003.5, -1);
}
END_TEST

/* Involuntary outages keep the span open: 332 (REJOIN_WAIT, its timeout,
 * the re-join), 333 (REJOINING), a self-ping answered not-acceptable. */
START_TEST(test_spans_kept_across_outages)
{
	mm_state_now(st, 500.5);
	joined_room(ACC, R1, ROOM, "alice");
	mm_state_now(st, 600);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 500.5, -1);
	ck_assert_int_eq(mm_tick(st, 700, &d), MM_OK);
	ck_assert_int_eq(mm_tick(st, 800, &d), MM_OK);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 500.5, -1);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 500.5, -1);
	/* the account's own leave while it waits to come back closes it */
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	mm_state_now(st, 900.125);
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_NONE);
}
END_TEST

/* A restored membership gets its spans back; the open one continues
 * through the re-join; mm_membership_set_spans refuses what breaks a
 * rule, with the state as it was, and keeps the newest MM_MAX_SPANS. */
START_TEST(test_spans_restore)
{
	mm_span sp[MM_MAX_SPANS + 2];
	size_t i;

	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, NULL, 0), MM_EINVAL);
	ck_assert_int_eq(mm_account_restore(st, ACC, ROOM, "alice", NULL, NULL, 0, &d), MM_OK);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	sp[0] = (mm_span){ 10, 20 };
	sp[1] = (mm_span){ 30, -1 };
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, sp, 2), MM_OK);
	/* unordered, open but not last, from > to, NaN: refused, unchanged */
	sp[2] = (mm_span){ 15, 16 };
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, (mm_span[]){ { 30, 40 }, { 10, 20 } }, 2), MM_EINVAL);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, (mm_span[]){ { 10, -1 }, { 30, -1 } }, 2), MM_EINVAL);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, (mm_span[]){ { 20, 10 } }, 1), MM_EINVAL);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, (mm_span[]){ { NAN, 10 } }, 1), MM_EINVAL);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM2, sp, 2), MM_EINVAL);
	ck_assert_uint_eq(spans_of(), 2);
	expect_span(0, 10, 20);
	expect_span(1, 30, -1);
	mm_state_now(st, 5000);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_JOINED);
	ck_assert_uint_eq(spans_of(), 2);
	expect_span(1, 30, -1);
	/* more than MM_MAX_SPANS: the newest */
	for (i = 0; i < MM_MAX_SPANS + 2; i++)
		sp[i] = (mm_span){ 100.0 * (double)i, 100.0 * (double)i + 50 };
	/* joined: the last one must be open */
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, sp, MM_MAX_SPANS + 2), MM_EINVAL);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, sp, 0), MM_EINVAL);
	ck_assert_uint_eq(spans_of(), 2);
	sp[MM_MAX_SPANS + 1].to = -1;
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, sp, MM_MAX_SPANS + 2), MM_OK);
	ck_assert_uint_eq(spans_of(), MM_MAX_SPANS);
	expect_span(0, 200, 250);
	/* without stored spans, the re-join opens one */
	reset_state(NULL);
	ck_assert_int_eq(mm_account_restore(st, ACC, ROOM, "alice", NULL, NULL, 0, &d), MM_OK);
	mm_state_now(st, 7000);
	self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 7000, -1);
}
END_TEST

/*
 * A span stays open while the room refuses the re-join for less than
 * rejoin_grace seconds since the account was last in; the first refusal
 * (transient error, or no answer) after that closes it at the time the
 * account was last in, and the re-join that gets in opens the next.  A
 * restored membership was last in, as far as it knows, when restored.
 */
START_TEST(test_spans_closed_by_long_refusal)
{
	const double grace = 100;
	mm_span open[1] = { { 10, -1 } };
	mm_limits l;
	int how;

	ck_assert_uint_eq(mm_state_limits(st)->rejoin_grace, MM_DEFAULT_REJOIN_GRACE);
	for (how = 0; how < 2; how++) {
		memset(&l, 0, sizeof l);
		l.rejoin_grace = (size_t)grace;
		l.rejoin_delay = 5;
		l.join_timeout = 20;
		reset_state(&l);
		ck_assert_uint_eq(mm_state_limits(st)->rejoin_grace, (size_t)grace);
		ck_assert_int_eq(mm_tick(st, 1000, &d), MM_OK);
		joined_room(ACC, R1, ROOM, "alice");
		ck_assert_int_eq(mm_tick(st, 1100, &d), MM_OK);
		self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
		/* refused within the grace: still open */
		ck_assert_int_eq(mm_tick(st, 1105, &d), MM_OK);
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
		mm_state_now(st, 1100 + grace);
		join_error(ACC, ROOM, NULL, "service-unavailable");
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
		ck_assert_uint_eq(spans_of(), 1);
		expect_span(0, 1000, -1);
		/* refused past it (an error, or no answer): closed where it was in */
		ck_assert_int_eq(mm_tick(st, 1300, &d), MM_OK);
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
		if (how == 0) {
			mm_state_now(st, 1310);
			join_error(ACC, ROOM, NULL, "remote-server-timeout");
		} else {
			ck_assert_int_eq(mm_tick(st, 1320, &d), MM_OK);
		}
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
		ck_assert_uint_eq(spans_of(), 1);
		expect_span(0, 1000, 1100);
		/* more refusals change nothing; getting in opens the next */
		ck_assert_int_eq(mm_tick(st, 1400, &d), MM_OK);
		ck_assert_int_eq(mm_tick(st, 1500, &d), MM_OK);
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
		ck_assert_uint_eq(spans_of(), 1);
		ck_assert_int_eq(mm_tick(st, 1600, &d), MM_OK);
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
		self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
		ck_assert_uint_eq(spans_of(), 2);
		expect_span(0, 1000, 1100);
		expect_span(1, 1600, -1);
	}

	/* restored: last in when restored, spans as stored */
	memset(&l, 0, sizeof l);
	l.rejoin_grace = (size_t)grace;
	reset_state(&l);
	mm_state_now(st, 2000);
	restore(ACC, ROOM, "alice", NULL, NULL, 0);
	ck_assert_int_eq(mm_membership_set_spans(st, ACC, ROOM, open, 1), MM_OK);
	mm_state_now(st, 2000 + grace);
	join_error(ACC, ROOM, NULL, "service-unavailable");
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 10, -1);
	/* the 332 of a room going down again, past the grace */
	ck_assert_int_eq(mm_tick(st, 2200, &d), MM_OK);
	ck_assert_int_eq(mm_tick(st, 2300, &d), MM_OK);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_332, 0, NULL);
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOIN_WAIT);
	ck_assert_uint_eq(spans_of(), 1);
	expect_span(0, 10, 2000);
}
END_TEST

/* At most MM_MAX_SPANS per membership, the oldest dropped. */
START_TEST(test_spans_bounded)
{
	int i;

	mm_state_now(st, 1);
	joined_room(ACC, R1, ROOM, "alice");
	for (i = 1; i <= MM_MAX_SPANS + 3; i++) {
		mm_state_now(st, 10.0 * i);
		session_leave(ACC, R1, ROOM, "l");
		join(ACC, R1, ROOM, "alice", "j", NULL);
		self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
		mm_state_now(st, 10.0 * i + 5);
		self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
	}
	ck_assert_uint_eq(spans_of(), MM_MAX_SPANS);
	expect_span(MM_MAX_SPANS - 1, 10.0 * (MM_MAX_SPANS + 3) + 5, -1);
	expect_span(0, 10.0 * 4 + 5, 10.0 * 5);
}
END_TEST

static size_t op_index(mm_op op)
{
	size_t i;
	for (i = 0; i < d.n; i++)
		if (d.actions[i].op == op)
			return i;
	ck_abort_msg("no %s in %s", op_name(op), describe(&d));
	return 0;
}

/* With log_history, a later session gets one REPLAY_LOG after its
 * self-presence and before the subject, with its request clamped to
 * history_max (absent: history_default) and the membership's spans; the
 * first session's join does not; without log_history the ring replays. */
START_TEST(test_replay_log_position_and_clamp)
{
	mm_limits l;
	const mm_action *a;
	const char *res;

	memset(&l, 0, sizeof l);
	l.log_history = 1;
	l.history_max = 30;
	l.history_default = 5;
	reset_state(&l);
	mm_state_now(st, 1000.5);
	join(ACC, R1, ROOM, "alice", "j1", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
	self_pres(ACC, ROOM, "alice", 0, "j1", P_SELF);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "s1", P_M1);
	subject_msg(ACC, ROOM, P_SUBJECT, T_MSG, 0);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);

	join(ACC, R2, ROOM, "alice", "j2", NULL);
	a = expect_one(&d, MM_OP_REPLAY_LOG, R2);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, NULL), 2); /* self, subject */
	ck_assert_uint_lt(op_index(MM_OP_REPLAY), op_index(MM_OP_REPLAY_LOG));
	ck_assert_ptr_nonnull(d.actions[d.n - 1].payload);
	ck_assert_int_eq(d.actions[d.n - 1].op, MM_OP_REPLAY);
	ck_assert_str_eq(d.actions[d.n - 1].payload, P_SUBJECT);
	ck_assert_str_eq(a->room, ROOM);
	ck_assert_int_eq(a->maxstanzas, 5);
	ck_assert_int_lt(a->maxchars, 0);
	ck_assert(a->seconds < 0 && a->since < 0);
	ck_assert_uint_eq(a->nspans, 1);
	ck_assert_double_eq(a->spans[0].from, 1000.5);
	ck_assert(a->spans[0].to < 0);

	res = join_dev(1, 100, 4000, 60, 1234.5, 2000);
	a = expect_one(&d, MM_OP_REPLAY_LOG, res);
	ck_assert_int_eq(a->maxstanzas, 30);
	ck_assert_int_eq(a->maxchars, 4000);
	ck_assert_double_eq(a->seconds, 60);
	ck_assert_double_eq(a->since, 1234.5);
	ck_assert_double_eq(a->now, 2000);
	/* <history/> without maxstanzas: as much as history_max */
	a = expect_one(&d, MM_OP_REPLAY_LOG, join_dev(1, NONE, NONE, NONE, 1500, 2000));
	ck_assert_int_eq(a->maxstanzas, 30);
	/* maxstanzas 0: nothing to ask for */
	res = join_dev(1, 0, NONE, NONE, NONE, 2000);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);

	/* the log off: the ring, as ever */
	l.log_history = 0;
	reset_state(&l);
	joined_room(ACC, R1, ROOM, "alice");
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "s1", P_M1);
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R2), 2);
}
END_TEST


/* With log_history the ring is a hot cache in front of the log: a request
 * its newest messages answer whole, within the one open span, is replayed
 * from it; one that needs more than it holds goes to the log. */
START_TEST(test_replay_log_ring_in_front)
{
	mm_limits l;

	memset(&l, 0, sizeof l);
	l.log_history = 1;
	reset_state(&l);
	mm_state_now(st, 50);
	four_messages();
	/* the two newest: the ring has them */
	expect_catchup(join_dev(1, 2, NONE, NONE, NONE, 500), four + 2, 2, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
	/* since: the ring holds everything after it */
	expect_catchup(join_dev(1, 10, NONE, NONE, 250, 500), four + 2, 2, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
	/* seconds, maxchars: bounds inside the ring */
	expect_catchup(join_dev(1, 10, NONE, 250, NONE, 500), four + 2, 2, NULL);
	expect_catchup(join_dev(1, 10, (long)strlen(P_M4), NONE, NONE, 500), four + 3, 1, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
	/* more than the ring holds: the log answers, nothing from the ring */
	join_dev(1, 10, NONE, NONE, NONE, 500);
	expect_one(&d, MM_OP_REPLAY_LOG, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, NULL), 1); /* self only */

	/* the account came in after m1 (which came as the room's history):
	 * the span starts there, and the ring answers the rest whole */
	reset_state(&l);
	mm_state_now(st, 150);
	four_messages();
	expect_catchup(join_dev(1, 10, NONE, NONE, NONE, 500), four + 1, 3, NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
}
END_TEST

/*
 * After a re-join (332, 333, a self-ping answered not-acceptable) the
 * ring's messages from before it are not
 * the newest the room had: what was said while the account was out lies
 * between them and what came after.  A catch-up that reaches back past
 * the re-join goes to the log; one the messages since the re-join answer
 * whole still comes from the ring.  Without the log, the ring gives what
 * it has, as ever.
 */
START_TEST(test_replay_log_ring_broken_by_rejoin)
{
	static const struct hmsg after[] = { { P_M5, 500 }, { P_MSG("m6"), 600 } };
	/* 0: fell out (the self-ping) */
	static const unsigned codes[] = { MM_STATUS_333, MM_STATUS_332, 0 };
	mm_limits l;
	size_t i;

	for (i = 0; i < 3; i++) {
		memset(&l, 0, sizeof l);
		l.log_history = 1;
		reset_state(&l);
		mm_state_now(st, 50);
		four_messages();
		if (codes[i] == 0) {
			char id[64];

			ck_assert_int_eq(mm_ping_due(st, NULL, 60, &d), MM_OK);
			snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);
			room_iq(ACC, ROOM, "alice", id, 1, "not-acceptable");
		} else {
			self_unavailable(ACC, ROOM, "alice", codes[i], 0, NULL);
		}
		if (codes[i] == MM_STATUS_332) {
			ck_assert_int_eq(mm_tick(st, 60, &d), MM_OK);
			ck_assert_int_eq(mm_tick(st, 60 + MM_DEFAULT_REJOIN_DELAY, &d), MM_OK);
		}
		ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), MM_REJOINING);
		self_pres(ACC, ROOM, "alice", 0, NULL, P_SELF);
		/* the room's history of the re-join: one message of the gap */
		hist_msg(ACC, ROOM, after[0].payload, "s5", after[0].stamp, 1);
		hist_msg(ACC, ROOM, after[1].payload, "s6", after[1].stamp, 0);
		ck_assert_uint_eq(must_info(ACC, ROOM).history, 6);
		/* three reach back past the re-join: the log */
		join_dev(1, 3, NONE, NONE, NONE, 700);
		expect_one(&d, MM_OP_REPLAY_LOG, NULL);
		ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, NULL), 1); /* self only */
		/* so does a since before the oldest message after it */
		join_dev(1, 10, NONE, NONE, 450, 700);
		expect_one(&d, MM_OP_REPLAY_LOG, NULL);
		/* the two since the re-join: the ring */
		expect_catchup(join_dev(1, 2, NONE, NONE, NONE, 700), after, 2, NULL);
		ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
		expect_catchup(join_dev(1, 10, NONE, NONE, 550, 700), after + 1, 1, NULL);
		ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
		/* the log off: the ring's newest, across the re-join */
		l.log_history = 0;
		ck_assert_int_eq(mm_state_set_limits(st, &l), MM_OK);
		join_dev(1, 3, NONE, NONE, NONE, 700);
		ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY_LOG, NULL), 0);
		ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, NULL), 4);
	}
}
END_TEST

/* ==== mentions (XEP-0492 on-mention) ===================================== */

static int mention(const char *text, const char *nick)
{
	return mm_mention(text, strlen(text), nick, strlen(nick));
}

/* The nick as a whole word, in any case, with or without '@'. */
START_TEST(test_mention_whole_word)
{
	ck_assert_int_eq(mention("hey alice, look at this", "alice"), 1);
	ck_assert_int_eq(mention("alice", "alice"), 1);
	ck_assert_int_eq(mention("@Alice: there?", "alice"), 1);
	ck_assert_int_eq(mention("ping ALICE!", "Alice"), 1);
	ck_assert_int_eq(mention("thanks, alice", "alice"), 1);
	ck_assert_int_eq(mention("Dr. Who said so", "dr. who"), 1);
}
END_TEST

/* Part of another word is no mention; neither is nothing. */
START_TEST(test_mention_not_inside_words)
{
	ck_assert_int_eq(mention("malice aforethought", "alice"), 0);
	ck_assert_int_eq(mention("alicex", "alice"), 0);
	ck_assert_int_eq(mention("alice_bot is here", "alice"), 0);
	ck_assert_int_eq(mention("alice2 left", "alice"), 0);
	ck_assert_int_eq(mention("nothing here", "alice"), 0);
	ck_assert_int_eq(mention("", "alice"), 0);
	ck_assert_int_eq(mention("alic", "alice"), 0);
	ck_assert_int_eq(mm_mention("x alice\0y", 9, "alice", 5), 1);
	ck_assert_int_eq(mention("alice", ""), 0);
	ck_assert_int_eq(mention("ali", "alice"), 0);
	/* a later occurrence counts when an earlier one is inside a word */
	ck_assert_int_eq(mention("malice, alice", "alice"), 1);
}
END_TEST

/* Unicode: case folding and letters beyond ASCII as word characters. */
START_TEST(test_mention_unicode)
{
	ck_assert_int_eq(mention("salut ZOË !", "zoë"), 1);
	ck_assert_int_eq(mention("STRASSE ist da", "straße"), 1);
	ck_assert_int_eq(mention("zoëa", "zoë"), 0);
	ck_assert_int_eq(mention("ézoë", "zoë"), 0);
	ck_assert_int_eq(mention("«zoë»", "zoë"), 1);
	ck_assert_int_eq(mention("こんにちはアリス", "アリス"), 0);
	ck_assert_int_eq(mention("こんにちは アリス", "アリス"), 1);
	/* an ASCII nick in a text that is not: letters beyond ASCII are
	 * word characters around it too */
	ck_assert_int_eq(mention("café, alice?", "alice"), 1);
	ck_assert_int_eq(mention("éalice", "alice"), 0);
	ck_assert_int_eq(mention("aliceé", "alice"), 0);
}
END_TEST

/* Invalid UTF-8 is never a mention, and nothing is read beyond len. */
START_TEST(test_mention_invalid_input)
{
	ck_assert_int_eq(mention("hey \xff alice", "alice"), 0);
	ck_assert_int_eq(mention("hey alice", "\xc3"), 0);
	ck_assert_int_eq(mm_mention("alice!", 3, "alice", 5), 0);
	ck_assert_int_eq(mm_mention("alicex", 5, "alice", 5), 1);
	ck_assert_int_eq(mm_mention(NULL, 0, "alice", 5), 0);
}
END_TEST

/* ==== suite =============================================================== */

static TCase *tcase(Suite *s, const char *name, void (*setup)(void))
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return tc;
}

/* ==== the module's own self-ping (XEP-0410) =============================== */

/* One SEND_PING per joined membership, none while one waits. */
START_TEST(test_ping_due_each_joined_room)
{
	const mm_action *a;
	char id[64];

	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC2, R1, ROOM2, "bob");
	join(ACC, R2, ROOM3, "alice", "j9", NULL); /* still joining: no ping */

	ck_assert_int_eq(mm_ping_due(st, NULL, 100, &d), MM_OK);
	expect_n(&d, 1, 2);
	a = find_action(&d, MM_OP_SEND_PING, NULL);
	ck_assert_ptr_nonnull(a);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_PING, NULL), 2);
	for (size_t i = 0; i < d.n; i++) {
		a = &d.actions[i];
		ck_assert_ptr_nonnull(a->id);
		ck_assert_int_eq(strncmp(a->id, "mmx-", 4), 0);
		ck_assert_ptr_null(a->resource);
		if (str_eq(a->account, ACC)) {
			ck_assert_pstr_eq(a->room, ROOM);
			ck_assert_pstr_eq(a->nick, "alice");
			snprintf(id, sizeof id, "%s", a->id);
		} else {
			ck_assert_pstr_eq(a->account, ACC2);
			ck_assert_pstr_eq(a->room, ROOM2);
			ck_assert_pstr_eq(a->nick, "bob");
		}
	}
	ck_assert_uint_eq(stats().iqs, 2);

	/* a ping waits: no second one */
	ck_assert_int_eq(mm_ping_due(st, NULL, 101, &d), MM_OK);
	expect_n(&d, 1, 0);

	/* the room answers: nobody gets it, and the next round pings again */
	room_iq(ACC, ROOM, "alice", id, 0, NULL);
	expect_n(&d, 1, 0);
	ck_assert_uint_eq(stats().iqs, 1);
	ck_assert_int_eq(mm_ping_due(st, NULL, 102, &d), MM_OK);
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SEND_PING, NULL)->room, ROOM);
}
END_TEST

/* After a link to one host fell, only that host's rooms are asked. */
START_TEST(test_ping_due_host_filter)
{
	joined_room(ACC, R1, ROOM, "alice");
	joined_room(ACC, R1, "lounge@muc.remote.example", "alice");
	ck_assert_int_eq(mm_ping_due(st, "muc.remote.example", 100, &d), MM_OK);
	expect_n(&d, 1, 1);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SEND_PING, NULL)->room,
			"lounge@muc.remote.example");
	ck_assert_int_eq(mm_ping_due(st, "nowhere.example", 100, &d), MM_OK);
	expect_n(&d, 1, 0);
}
END_TEST

/* not-acceptable: the account fell out; every session learns it (333) and
 * the account joins again, asking for what it missed. */
START_TEST(test_ping_fell_out_rejoins)
{
	char id[64];
	const mm_action *a;

	joined_room(ACC, R1, ROOM, "alice");
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	room_msg(ACC, ROOM, "bob", MM_MSG_GROUPCHAT, 0, "h1", P_BODY);
	ck_assert_int_eq(mm_ping_due(st, NULL, 100, &d), MM_OK);
	snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);

	/* an answer from another occupant is not the room's answer */
	room_iq(ACC, ROOM, "bob", id, 1, "not-acceptable");
	expect_not_handled(&d);

	room_iq(ACC, ROOM, "alice", id, 1, "not-acceptable");
	expect_n(&d, 1, 3);
	ck_assert_uint_eq(count_op(&d, MM_OP_DELIVER, NULL), 0);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REFLECT_LEAVE, R1)->add_codes
			& MM_CODE_333, MM_CODE_333);
	ck_assert_uint_eq(expect_one(&d, MM_OP_REFLECT_LEAVE, R2)->add_codes
			& MM_CODE_333, MM_CODE_333);
	a = expect_one(&d, MM_OP_SEND_JOIN, NULL);
	ck_assert_int_eq(a->from_request, 0);
	ck_assert(a->since > 0);
	ck_assert_pstr_eq(d.event, "rejoining");
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_REJOINING);
	ck_assert_uint_eq(stats().iqs, 0);
}
END_TEST

/* Other errors, and silence, change nothing; silence expires quietly. */
START_TEST(test_ping_other_answers_and_expiry)
{
	char id[64];

	joined_room(ACC, R1, ROOM, "alice");
	ck_assert_int_eq(mm_ping_due(st, NULL, 100, &d), MM_OK);
	snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);
	room_iq(ACC, ROOM, "alice", id, 1, "remote-server-not-found");
	expect_n(&d, 1, 1);
	ck_assert_uint_eq(expect_one(&d, MM_OP_PING_LATER, NULL)->delay,
			MM_DEFAULT_REJOIN_DELAY);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	/* the next failure waits twice as long; an answer resets it */
	ck_assert_int_eq(mm_ping_due(st, NULL, 150, &d), MM_OK);
	snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);
	room_iq(ACC, ROOM, "alice", id, 1, "remote-server-timeout");
	ck_assert_uint_eq(expect_one(&d, MM_OP_PING_LATER, NULL)->delay,
			2 * MM_DEFAULT_REJOIN_DELAY);
	ck_assert_int_eq(mm_ping_due(st, NULL, 160, &d), MM_OK);
	snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);
	room_iq(ACC, ROOM, "alice", id, 1, "feature-not-implemented");
	expect_n(&d, 1, 0); /* joined, and the room does not do pings */
	ck_assert_int_eq(mm_ping_due(st, NULL, 170, &d), MM_OK);
	snprintf(id, sizeof id, "%s", expect_one(&d, MM_OP_SEND_PING, NULL)->id);
	room_iq(ACC, ROOM, "alice", id, 1, "remote-server-timeout");
	ck_assert_uint_eq(expect_one(&d, MM_OP_PING_LATER, NULL)->delay,
			MM_DEFAULT_REJOIN_DELAY);

	ck_assert_int_eq(mm_ping_due(st, NULL, 200, &d), MM_OK);
	expect_n(&d, 1, 1);
	ck_assert_int_eq(mm_tick(st, 200 + MM_DEFAULT_IQ_TIMEOUT, &d), MM_OK);
	expect_n(&d, 1, 0); /* no session asked: nobody hears of it */
	ck_assert_uint_eq(stats().iqs, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	/* and the next round may ping again */
	ck_assert_int_eq(mm_ping_due(st, NULL, 300, &d), MM_OK);
	expect_n(&d, 1, 1);
}
END_TEST

/* ==== JID normalisation ==================================================== */

static const char *norm(const char *in)
{
	static char buf[3200];
	mm_err e = mm_jid_normalize(in, buf, sizeof buf);
	return e == MM_OK ? buf : NULL;
}

START_TEST(test_jid_normalize_spellings)
{
	/* one room, several spellings */
	ck_assert_pstr_eq(norm("Room@Conference.Example.ORG"), "room@conference.example.org");
	ck_assert_pstr_eq(norm("room@conference.example.org."), "room@conference.example.org");
	/* as Prosody's nameprep: an A-label stays as it is */
	ck_assert_pstr_eq(norm("room@xn--bcher-kva.example"), "room@xn--bcher-kva.example");
	ck_assert_pstr_eq(norm("room@B\xc3\x9c" "CHER.example"), "room@b\xc3\xbc" "cher.example");
	/* as Prosody's nodeprep: NFKC and case folding, not ASCII only */
	ck_assert_pstr_eq(norm("\xc3\x84rger@muc.example"), "\xc3\xa4rger@muc.example");
	ck_assert_pstr_eq(norm("\xef\xbc\xa1\xef\xbc\xa2@muc.example"), "ab@muc.example");
	ck_assert_pstr_eq(norm("stra\xc3\x9f" "e@muc.example"), "strasse@muc.example");
	/* resources are kept as they are */
	ck_assert_pstr_eq(norm("room@muc.example/Nick Name"), "room@muc.example/Nick Name");
	ck_assert_pstr_eq(norm("muc.example"), "muc.example");
	ck_assert_pstr_eq(norm("user@127.0.0.1"), "user@127.0.0.1");
	ck_assert_pstr_eq(norm("user@[::1]"), "user@[::1]");
}
END_TEST

START_TEST(test_jid_normalize_malformed)
{
	char big[1100], small[8];
	ck_assert_ptr_null(norm(""));
	ck_assert_ptr_null(norm("@muc.example"));
	ck_assert_ptr_null(norm("room@"));
	ck_assert_ptr_null(norm("room@muc.example/"));
	ck_assert_ptr_null(norm("ro\"om@muc.example"));
	ck_assert_ptr_null(norm("ro<om@muc.example"));
	ck_assert_ptr_null(norm("room@mu c.example"));
	ck_assert_ptr_null(norm("room@muc\x01.example"));
	ck_assert_ptr_null(norm("room@\xc3(.example")); /* broken UTF-8 */
	/* IP literals are addresses */
	ck_assert_ptr_null(norm("room@1.2.3.999"));
	ck_assert_ptr_null(norm("room@1.2.3"));
	ck_assert_ptr_null(norm("room@[zz]"));
	ck_assert_ptr_null(norm("room@[::1"));
	ck_assert_pstr_eq(norm("room@[2001:DB8::1]"), "room@[2001:db8::1]");
	memset(big, 'a', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	big[1030] = '@';
	ck_assert_ptr_null(norm(big)); /* localpart over 1023 bytes */
	ck_assert_int_eq(mm_jid_normalize("room@muc.example", small, sizeof small), MM_ENOMEM);
	ck_assert_int_eq(mm_jid_normalize(NULL, small, sizeof small), MM_EINVAL);
}
END_TEST

/* Stored data under another spelling restores the same membership. */
START_TEST(test_restore_normalises_room)
{
	joined_room(ACC, R1, ROOM, "alice");
	ck_assert_int_eq(mm_account_restore(st, ACC, "Room@Conference.Example.Org.",
			"alice", NULL, NULL, 0, &d), MM_OK);
	expect_not_handled(&d);
	ck_assert_uint_eq(stats().memberships, 1);
	ck_assert_int_eq(mm_account_restore(st, ACC, "bad room@x", "alice", NULL,
			NULL, 0, &d), MM_EINVAL);
	ck_assert_int_eq(mm_account_restore(st, ACC, "room@x/nick", "alice", NULL,
			NULL, 0, &d), MM_EINVAL);
	ck_assert_uint_eq(stats().memberships, 1);
}
END_TEST

/* ==== the account leaves by itself (bookmarks, commands) ================== */

START_TEST(test_account_leave)
{
	const mm_action *a;

	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	expect_not_handled(&d);
	populate();
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	expect_n(&d, 1, 3);
	ck_assert_ptr_null(expect_one(&d, MM_OP_REFLECT_LEAVE, R1)->id);
	expect_one(&d, MM_OP_REFLECT_LEAVE, R2);
	a = expect_one(&d, MM_OP_SEND_LEAVE, NULL);
	ck_assert_pstr_eq(a->nick, "alice");
	ck_assert_uint_eq(action_index(&d, a), 2);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 0);
	ck_assert_int_eq(must_info(ACC, ROOM).persistent, 0);
	/* a second request changes nothing */
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	expect_n(&d, 1, 0);
	/* the room confirms: the membership ends, nobody is told again */
	self_unavailable(ACC, ROOM, "alice", 0, 0, NULL);
	expect_n(&d, 1, 0);
	ck_assert_pstr_eq(d.event, "left");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
}
END_TEST

/* Out already, waiting to join again: the membership just ends. */
START_TEST(test_account_leave_while_out)
{
	mm_presence p;
	joined_room(ACC, R1, ROOM, "alice");
	memset(&p, 0, sizeof p);
	p.type = MM_PRES_UNAVAILABLE;
	p.status = MM_STATUS_110 | MM_STATUS_332;
	room_pres(ACC, ROOM, "alice", &p);
	expect_one(&d, MM_OP_REJOIN_LATER, NULL);
	ck_assert_int_eq(mm_account_leave(st, ACC, ROOM, &d), MM_OK);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_LEAVE, NULL), 0);
	expect_one(&d, MM_OP_REFLECT_LEAVE, R1);
	ck_assert_pstr_eq(d.event, "left");
	ck_assert_int_eq(mm_membership_state(st, ACC, ROOM), -1);
}
END_TEST

/* The account is the occupant: a later device joins a password-protected
 * room the account is in without the password (or with another one); the
 * account keeps the password it joined with for its automatic re-joins. */
START_TEST(test_join_password_later_session)
{
	populate_pw();
	join(ACC, R3, ROOM, "alice", "j3", NULL);
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R3), 3);
	ck_assert_uint_eq(count_op(&d, MM_OP_SEND_JOIN, NULL), 0);
	session_leave(ACC, R3, ROOM, "l3");
	join(ACC, R3, ROOM, "alice", "j3", "wrong");
	ck_assert_uint_eq(count_op(&d, MM_OP_REPLAY, R3), 3);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 3);
	ck_assert_str_eq(must_info(ACC, ROOM).password, "pw");
	self_unavailable(ACC, ROOM, "alice", MM_STATUS_333, 0, NULL);
	ck_assert_pstr_eq(expect_one(&d, MM_OP_SEND_JOIN, NULL)->password, "pw");
}
END_TEST

static Suite *minimix_suite(void)
{
	Suite *s = suite_create("minimix");
	TCase *tc;

	tc = tcase(s, "join", setup_default);
	tcase_add_test(tc, test_join_first_sends_join);
	tcase_add_test(tc, test_join_sync_self_presence);
	tcase_add_test(tc, test_join_sync_error);
	tcase_add_test(tc, test_join_second_session_waits);
	tcase_add_test(tc, test_join_completes_on_self_presence);
	tcase_add_test(tc, test_join_service_assigned_nick);
	tcase_add_test(tc, test_join_waiter_other_nick_gets_210);
	tcase_add_test(tc, test_join_waiting_session_rejoins);
	tcase_add_test(tc, test_join_error_to_each_waiting_session);
	tcase_add_test(tc, test_join_error_not_to_other_rooms);
	tcase_add_test(tc, test_join_later_session_replay);
	tcase_add_test(tc, test_join_rejoin_is_full_resync);
	tcase_add_test(tc, test_join_waiter_asks_again_replayed);

	tc = tcase(s, "mention", setup_default);
	tcase_add_test(tc, test_mention_whole_word);
	tcase_add_test(tc, test_mention_not_inside_words);
	tcase_add_test(tc, test_mention_unicode);
	tcase_add_test(tc, test_mention_invalid_input);

	tc = tcase(s, "fork", setup_default);
	tcase_add_test(tc, test_fork_groupchat_to_each_session);
	tcase_add_test(tc, test_fork_only_that_membership);
	tcase_add_test(tc, test_fork_no_membership_not_handled);
	tcase_add_test(tc, test_fork_normal_headline_from_room_not_handled);
	tcase_add_test(tc, test_fork_private_message);
	tcase_add_test(tc, test_fork_private_message_joined_only);
	tcase_add_test(tc, test_fork_delivery_failed);

	tc = tcase(s, "occupants", setup_default);
	tcase_add_test(tc, test_occupants_add_remove);
	tcase_add_test(tc, test_occupants_replay_reflects_cache);
	tcase_add_test(tc, test_occupants_nick_change_other);
	tcase_add_test(tc, test_occupants_nick_change_self);
	tcase_add_test(tc, test_occupants_max_occupants);

	tc = tcase(s, "leave", setup_default);
	tcase_add_test(tc, test_leave_not_last_session);
	tcase_add_test(tc, test_leave_last_session);
	tcase_add_test(tc, test_leave_not_in_membership);
	tcase_add_test(tc, test_leave_join_while_leaving);

	tc = tcase(s, "session_gone", setup_default);
	tcase_add_test(tc, test_gone_detaches_everywhere);
	tcase_add_test(tc, test_gone_unknown_session);
	tcase_add_test(tc, test_gone_while_joining);

	tc = tcase(s, "speak", setup_default);
	tcase_add_test(tc, test_speak_groupchat_and_private);
	tcase_add_test(tc, test_speak_not_joined_not_handled);
	tcase_add_test(tc, test_speak_error_dropped);
	tcase_add_test(tc, test_speak_error_answer_to_sender_only);
	tcase_add_test(tc, test_speak_presence);
	tcase_add_test(tc, test_speak_presence_waiting_session);

	tc = tcase(s, "removal", setup_default);
	tcase_add_loop_test(tc, test_removal_self, 0, (int)N_REMOVAL);
	tcase_add_test(tc, test_removal_other_occupant);

	tc = tcase(s, "limits", setup_small);
	tcase_add_test(tc, test_limits_defaults);
	tcase_add_test(tc, test_limit_rooms);
	tcase_add_test(tc, test_limit_sessions);
	tcase_add_test(tc, test_limit_nick_and_invalid);
	tcase_add_test(tc, test_limit_pending);

	tc = tcase(s, "errors", setup_default);
	tcase_add_test(tc, test_errors_never_null);
	tcase_add_test(tc, test_errors_distinct_and_stable);
	tcase_add_test(tc, test_errors_pinned);
	tcase_add_test(tc, test_status_bit);

	tc = tcase(s, "inspection", setup_default);
	tcase_add_test(tc, test_inspect_stats);
	tcase_add_test(tc, test_inspect_membership_state);
	tcase_add_test(tc, test_inspect_payloads_interned);
	tcase_add_test(tc, test_payload_handles);
	tcase_add_test(tc, test_inspect_account_memberships);
	tcase_add_test(tc, test_inspect_membership_sessions);

	tc = tcase(s, "lifetime", setup_default);
	tcase_add_test(tc, test_lifetime_removed_membership);
	tcase_add_test(tc, test_lifetime_join_error);
	tcase_add_test(tc, test_lifetime_leave_completes);
	tcase_add_test(tc, test_lifetime_strings_copied);
	tcase_add_test(tc, test_lifetime_payload_copied);

	tc = tcase(s, "presence", setup_default);
	tcase_add_loop_test(tc, test_presence_order, 0, (int)N_SHOW_PAIRS);
	tcase_add_test(tc, test_presence_join_presence_stored);
	tcase_add_test(tc, test_presence_nick_change_always_sent);
	tcase_add_test(tc, test_presence_leader_leaves);
	tcase_add_test(tc, test_presence_leader_gone);
	tcase_add_test(tc, test_presence_follower_gone);
	tcase_add_test(tc, test_presence_later_join_leads);
	tcase_add_test(tc, test_presence_later_join_equal_or_behind);
	tcase_add_test(tc, test_presence_not_joined_dropped);

	tc = tcase(s, "carbons", setup_default);
	tcase_add_test(tc, test_carbons_private_message);
	tcase_add_test(tc, test_carbons_not_while_joining);

	tc = tcase(s, "password", setup_default);
	tcase_add_test(tc, test_join_password_later_session);

	tc = tcase(s, "account_leave", setup_default);
	tcase_add_test(tc, test_account_leave);
	tcase_add_test(tc, test_account_leave_while_out);

	tc = tcase(s, "jid", setup_default);
	tcase_add_test(tc, test_jid_normalize_spellings);
	tcase_add_test(tc, test_jid_normalize_malformed);
	tcase_add_test(tc, test_restore_normalises_room);

	tc = tcase(s, "ping", setup_default);
	tcase_add_test(tc, test_ping_due_each_joined_room);
	tcase_add_test(tc, test_ping_due_host_filter);
	tcase_add_test(tc, test_ping_fell_out_rejoins);
	tcase_add_test(tc, test_ping_other_answers_and_expiry);

	tc = tcase(s, "iq", setup_default);
	tcase_add_test(tc, test_iq_module_id_and_answer);
	tcase_add_test(tc, test_iq_spoofed_answers);
	tcase_add_test(tc, test_iq_id_secret);
	tcase_add_test(tc, test_iq_id_all_bits);
	tcase_add_test(tc, test_iq_not_joined);
	tcase_add_test(tc, test_iq_limit);
	tcase_add_test(tc, test_iq_expire);
	tcase_add_test(tc, test_iq_forgotten);
	tcase_add_test(tc, test_iq_defaults);
	tcase_add_test(tc, test_iq_mam_results);
	tcase_add_test(tc, test_iq_self_ping_rejoin);
	tcase_add_test(tc, test_iq_ping_no_rejoin);

	tc = tcase(s, "rejoin", setup_rejoin);
	tcase_add_test(tc, test_rejoin_333_at_once);
	tcase_add_test(tc, test_rejoin_332_later);
	tcase_add_test(tc, test_rejoin_default_delay);
	tcase_add_test(tc, test_rejoin_explicit_join_while_waiting);
	tcase_add_test(tc, test_rejoin_wait_join_carries_stored_password);
	tcase_add_test(tc, test_rejoin_transient_backoff);
	tcase_add_test(tc, test_rejoin_delay_large);
	tcase_add_test(tc, test_rejoin_fatal_error);
	tcase_add_test(tc, test_rejoin_not_for_explicit_join);
	tcase_add_loop_test(tc, test_rejoin_not_after_removal, 0,
			(int)N_REJOIN_REMOVAL);
	tcase_add_test(tc, test_rejoin_sessions_during_wait);
	tcase_add_test(tc, test_rejoin_last_leave_while_waiting);

	tc = tcase(s, "bytes", setup_default);
	tcase_add_test(tc, test_bytes_membership);
	tcase_add_test(tc, test_bytes_account);
	tcase_add_test(tc, test_bytes_state);
	tcase_add_test(tc, test_bytes_same_length_replacement);
	tcase_add_test(tc, test_bytes_self_and_subject_bounded);
	tcase_add_test(tc, test_bytes_subjects_per_account);
	tcase_add_test(tc, test_bytes_self_same_text_as_ring);

	tc = tcase(s, "history", setup_default);
	tcase_add_test(tc, test_history_ring_bounded);
	tcase_add_test(tc, test_history_default);
	tcase_add_test(tc, test_history_maxstanzas);
	tcase_add_test(tc, test_history_client_numbers);
	tcase_add_test(tc, test_limits_set_in_use);
	tcase_add_test(tc, test_history_maxchars);
	tcase_add_test(tc, test_history_seconds);
	tcase_add_test(tc, test_history_since);
	tcase_add_test(tc, test_history_combined);
	tcase_add_test(tc, test_history_kept_messages);
	tcase_add_test(tc, test_history_while_nobody_attached);
	tcase_add_test(tc, test_history_interned);

	tc = tcase(s, "retractions", setup_default);
	tcase_add_test(tc, test_withdraw_ring_tombstone);
	tcase_add_test(tc, test_withdraw_every_ring);
	tcase_add_test(tc, test_withdraw_beyond_limits);

	tc = tcase(s, "persistence", setup_default);
	tcase_add_test(tc, test_persist_restore_sends_join);
	tcase_add_test(tc, test_persist_restore_not_twice);
	tcase_add_test(tc, test_persist_restore_limits);
	tcase_add_test(tc, test_persist_restore_completes);
	tcase_add_test(tc, test_persist_restore_session_waits);
	tcase_add_test(tc, test_persist_restore_skips_seen);
	tcase_add_test(tc, test_persist_restore_subject_ends);
	tcase_add_test(tc, test_persist_restore_refused);
	tcase_add_test(tc, test_persist_dirty_levels);
	tcase_add_test(tc, test_persist_membership_info);
	tcase_add_test(tc, test_persist_last_id_is_stanza_id);

	tc = tcase(s, "lifecycle", setup_default);
	tcase_add_test(tc, test_lifecycle_table);
	tcase_add_test(tc, test_lifecycle_walk);
	tcase_add_test(tc, test_lifecycle_refused);
	tcase_add_test(tc, test_lifecycle_account_leave_while_leaving_rejoin);
	tcase_add_test(tc, test_lifecycle_leave_error_reflects);

	tc = tcase(s, "deadlines", setup_default);
	tcase_add_test(tc, test_timeout_join_unanswered);
	tcase_add_test(tc, test_timeout_join_answered);
	tcase_add_test(tc, test_timeout_leave_unanswered);
	tcase_add_test(tc, test_timeout_leaving_rejoin);
	tcase_add_test(tc, test_timeout_rejoining_retries);
	tcase_add_test(tc, test_timeout_before_first_tick);
	tcase_add_test(tc, test_timeout_ping_later);
	tcase_add_test(tc, test_timeout_ping_later_bounded);

	tc = tcase(s, "unreachable", setup_default);
	tcase_add_test(tc, test_unreachable_last_connected_leave);
	tcase_add_test(tc, test_unreachable_resumed_counts);
	tcase_add_test(tc, test_unreachable_no_leave_keeps_account);

	tc = tcase(s, "own news", setup_default);
	tcase_add_test(tc, test_later_session_own_news);

	tc = tcase(s, "events", setup_default);
	tcase_add_test(tc, test_events_joined_left);
	tcase_add_loop_test(tc, test_events_removed, 0, (int)N_REMOVED_CASES);
	tcase_add_test(tc, test_events_removed_refused);
	tcase_add_test(tc, test_events_rejoining);
	tcase_add_test(tc, test_events_null_for_traffic);

	tc = tcase(s, "spans", setup_default);
	tcase_add_test(tc, test_spans_open_and_close);
	tcase_add_test(tc, test_spans_kept_across_outages);
	tcase_add_test(tc, test_spans_restore);
	tcase_add_test(tc, test_spans_bounded);
	tcase_add_test(tc, test_spans_closed_by_long_refusal);
	tcase_add_test(tc, test_replay_log_position_and_clamp);
	tcase_add_test(tc, test_replay_log_ring_in_front);
	tcase_add_test(tc, test_replay_log_ring_broken_by_rejoin);

	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(minimix_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
