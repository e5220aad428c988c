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

static mm_state *st;
static mm_decision d;

/* ---- fixtures ----------------------------------------------------------- */

static void setup_default(void)
{
	st = mm_state_new(NULL);
	ck_assert_ptr_nonnull(st);
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
	st = mm_state_new(&l);
	ck_assert_ptr_nonnull(st);
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
	st = mm_state_new(l);
	ck_assert_ptr_nonnull(st);
}

/* ---- decision helpers --------------------------------------------------- */

static const char *op_name(mm_op op)
{
	switch (op) {
	case MM_OP_SEND_JOIN: return "SEND_JOIN";
	case MM_OP_SEND_AS_ACCOUNT: return "SEND_AS_ACCOUNT";
	case MM_OP_SEND_PRESENCE: return "SEND_PRESENCE";
	case MM_OP_REJOIN_LATER: return "REJOIN_LATER";
	case MM_OP_DELIVER: return "DELIVER";
	case MM_OP_REPLAY: return "REPLAY";
	case MM_OP_REFLECT_LEAVE: return "REFLECT_LEAVE";
	case MM_OP_CARBON: return "CARBON";
	case MM_OP_IQ_ERROR: return "IQ_ERROR";
	case MM_OP_DROP: return "DROP";
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

	len = (size_t)snprintf(buf, sizeof buf, "{handled=%d n=%zu", dd->handled,
			dd->n);
	for (i = 0; i < dd->n && len < sizeof buf; i++) {
		const mm_action *a = &dd->actions[i];
		len += (size_t)snprintf(buf + len, sizeof buf - len,
				" [%s res=%s nick=%s id=%s codes=%u fr=%d%s%s]",
				op_name(a->op), nn(a->resource), nn(a->nick), nn(a->id),
				a->add_codes, a->from_request,
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

/*
 * The decision is a full resync for `res`: REPLAY only, the `nothers`
 * occupant payloads in any order (the header does not order them), then
 * the self-presence (210 added iff want210), then the subject if any.
 */
static void expect_replay(const mm_decision *dd, const char *res,
		const char *const *others, size_t nothers, const char *self,
		int want210, const char *subject)
{
	size_t i, j, n = nothers + 1 + (subject ? 1 : 0);
	int seen[16] = { 0 };

	ck_assert(nothers < 16);
	expect_n(dd, 1, n);
	for (i = 0; i < n; i++) {
		const mm_action *a = &dd->actions[i];
		ck_assert_msg(a->op == MM_OP_REPLAY && str_eq(a->resource, res),
				"action %zu is not a REPLAY to %s: %s", i, res, describe(dd));
		ck_assert_ptr_nonnull(a->payload);
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
	if (subject) {
		ck_assert_pstr_eq(dd->actions[n - 1].payload, subject);
		ck_assert_uint_eq(dd->actions[n - 1].add_codes, 0);
	}
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
	join(ACC, R2, ROOM, "alice", "j2", NULL);
	expect_replay(&d, R2, others, 2, P_SELF, 0, P_SUBJECT);
	ck_assert_int_eq(session_state(ACC, ROOM, R2), 1);

	/* Another nick asked: 210 on the self-presence; the nick stays. */
	join(ACC, R3, ROOM, "alicia", "j3", NULL);
	expect_replay(&d, R3, others, 2, P_SELF, 1, P_SUBJECT);
	ck_assert_int_eq(session_state(ACC, ROOM, R3), 1);

	mi = must_info(ACC, ROOM);
	ck_assert_str_eq(mi.nick, "alice");
	ck_assert_uint_eq(mi.sessions, 3);
	ck_assert_int_eq(mi.has_subject, 1);
}
END_TEST

START_TEST(test_join_rejoin_is_full_resync)
{
	const char *const others[] = { P_BOB, P_CAROL };
	mm_stats before, after;

	populate();
	before = stats();
	join(ACC, R1, ROOM, "alice", "j9", NULL);
	expect_replay(&d, R1, others, 2, P_SELF, 0, P_SUBJECT);
	after = stats();
	expect_same_stats(&before, &after);
	ck_assert_uint_eq(must_info(ACC, ROOM).sessions, 1);
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_JOINED);
	ck_assert_int_eq(session_state(ACC, ROOM, R1), 1);
	/* Again with another nick: 210, and still nothing accumulates. */
	join(ACC, R1, ROOM, "alicia", "j10", NULL);
	expect_replay(&d, R1, others, 2, P_SELF, 1, P_SUBJECT);
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
	expect_replay(&d, R2, (const char *const[]){ P_BOB_AWAY, P_DAVE }, 2,
			P_SELF, 0, P_SUBJECT);
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
	expect_replay(&d, R2, (const char *const[]){ P_ROBERT, P_CAROL }, 2,
			P_SELF, 0, P_SUBJECT);
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

	self_pres(ACC, ROOM, "alicia", MM_STATUS_303, "n1", P_SELF2);
	expect_deliver_to(&d, (const char *const[]){ R1, R2 }, 2);
	ck_assert_str_eq(must_info(ACC, ROOM).nick, "alicia");

	join(ACC, R3, ROOM, "alicia", "j3", NULL);
	expect_replay(&d, R3, (const char *const[]){ P_BOB, P_CAROL }, 2,
			P_SELF2, 0, P_SUBJECT);
	join(ACC, R3, ROOM, "alice", "j4", NULL);
	expect_replay(&d, R3, (const char *const[]){ P_BOB, P_CAROL }, 2,
			P_SELF2, 1, P_SUBJECT);
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
	ck_assert_int_eq(must_info(ACC, ROOM).state, MM_LEAVING);

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
	/* The account is still in ROOM2, with no session to give it to. */
	room_msg(ACC, ROOM2, "bob", MM_MSG_GROUPCHAT, 0, "m2", P_BODY);
	expect_n(&d, 1, 0);

	/* A new session attaches without a new join. */
	join(ACC, R3, ROOM2, "alice", "j3", NULL);
	expect_replay(&d, R3, NULL, 0, P_SELF, 0, NULL);
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
	expect_replay(&d, R2, NULL, 0, P_SELF, 0, NULL);
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
	join(ACC, R2, ROOM, "alice", "j2", NULL);

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

/* ==== suite =============================================================== */

static TCase *tcase(Suite *s, const char *name, void (*setup)(void))
{
	TCase *tc = tcase_create(name);

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	suite_add_tcase(s, tc);
	return tc;
}

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

	tc = tcase(s, "fork", setup_default);
	tcase_add_test(tc, test_fork_groupchat_to_each_session);
	tcase_add_test(tc, test_fork_only_that_membership);
	tcase_add_test(tc, test_fork_no_membership_not_handled);
	tcase_add_test(tc, test_fork_normal_headline_from_room_not_handled);
	tcase_add_test(tc, test_fork_private_message);
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
	tcase_add_test(tc, test_status_bit);

	tc = tcase(s, "inspection", setup_default);
	tcase_add_test(tc, test_inspect_stats);
	tcase_add_test(tc, test_inspect_membership_state);
	tcase_add_test(tc, test_inspect_payloads_interned);
	tcase_add_test(tc, test_inspect_account_memberships);
	tcase_add_test(tc, test_inspect_membership_sessions);

	tc = tcase(s, "lifetime", setup_default);
	tcase_add_test(tc, test_lifetime_removed_membership);
	tcase_add_test(tc, test_lifetime_join_error);
	tcase_add_test(tc, test_lifetime_leave_completes);
	tcase_add_test(tc, test_lifetime_strings_copied);
	tcase_add_test(tc, test_lifetime_payload_copied);

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
