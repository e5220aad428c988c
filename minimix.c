/*
 * minimix.c - the core of mod_minimix.  See minimix.h for the contract.
 *
 * Layout of the state:
 *   state.accounts: bare JID -> account
 *   account.rooms:  room JID -> membership
 *   membership: nick, password, lifecycle state, attached sessions, cached
 *     occupants (nick -> interned payload), self-presence, subject, and a
 *     small ring of outgoing stanza ids so that errors return to the session
 *     that caused them.
 *   state.payloads: interned, reference-counted serialized stanzas, so that
 *     many local accounts in one room hold one copy of each presence.
 *
 * Every mutator first allocates all it needs (and builds its decision),
 * then commits with operations that cannot fail; that is how a failed call
 * leaves the state as it was.
 */
#include "minimix.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <sys/random.h>
#include <time.h>

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unicode/usprep.h>
#include <unicode/ustring.h>
#include <unicode/uchar.h>
#include <unicode/utf16.h>
/* header-only: the hash is inlined into the map lookups */
#define XXH_INLINE_ALL
#include <xxhash.h>

/* ---- string map ---------------------------------------------------------
 * Chained hash map with string keys it owns.  Nodes never move, so a node
 * pointer is a stable handle (the payload pool relies on that).  Insertion is
 * split into node_new (may fail) and map_link (cannot fail: a failed resize
 * keeps the old table) for the all-or-nothing mutators.
 */
typedef struct mm_node {
	struct mm_node *next;
	uint32_t hash;
	/* payload pool: how many cache entries (occupant, self, subject,
	 * catch-up) hold it; in the padding after hash, so free elsewhere */
	uint32_t aux;
	size_t len;
	void *value;
	char key[]; /* NUL-terminated */
} mm_node;

typedef struct mm_map {
	mm_node **buckets;
	size_t nbuckets; /* 0 or a power of two */
	size_t count;
} mm_map;

/* Seeded per process (see mm_state_new), so that nobody can choose JIDs
 * that all land in one bucket. */
static uint64_t hash_seed;

static uint32_t hash_bytes(const char *s, size_t len)
{
	/* XXH3: a few cycles for a JID, where byte-at-a-time hashing spent
	 * most of a fan-out decision */
	return (uint32_t)XXH3_64bits_withSeed(s, len, hash_seed);
}

static mm_node *node_new(const char *key, size_t len, void *value)
{
	mm_node *n = malloc(sizeof *n + len + 1);
	if (n == NULL)
		return NULL;
	n->next = NULL;
	n->hash = hash_bytes(key, len);
	n->aux = 0;
	n->len = len;
	n->value = value;
	memcpy(n->key, key, len);
	n->key[len] = '\0';
	return n;
}

static mm_node *map_find_len(const mm_map *m, const char *key, size_t len)
{
	uint32_t h;
	mm_node *n;
	if (m->nbuckets == 0 || key == NULL)
		return NULL;
	h = hash_bytes(key, len);
	for (n = m->buckets[h & (m->nbuckets - 1)]; n != NULL; n = n->next)
		if (n->hash == h && n->len == len && memcmp(n->key, key, len) == 0)
			return n;
	return NULL;
}

static mm_node *map_find(const mm_map *m, const char *key)
{
	return key == NULL ? NULL : map_find_len(m, key, strlen(key));
}

static void *map_get(const mm_map *m, const char *key)
{
	mm_node *n = map_find(m, key);
	return n ? n->value : NULL;
}

static void map_grow(mm_map *m)
{
	size_t nb = m->nbuckets ? m->nbuckets * 2 : 8;
	mm_node **b = calloc(nb, sizeof *b);
	size_t i;
	if (b == NULL)
		return; /* keep the old table: longer chains, still correct */
	for (i = 0; i < m->nbuckets; i++) {
		mm_node *n = m->buckets[i], *next;
		for (; n != NULL; n = next) {
			next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = nb;
}

/* Make sure the map has a bucket array; the only insertion step that can
 * fail, so callers do it before committing. */
static int map_ready(mm_map *m)
{
	if (m->nbuckets == 0)
		map_grow(m);
	return m->nbuckets != 0;
}

/* Link a node whose key is not in the map yet.  Requires map_ready(). */
static void map_link(mm_map *m, mm_node *n)
{
	mm_node **slot;
	if (m->count + 1 > m->nbuckets - m->nbuckets / 4)
		map_grow(m);
	slot = &m->buckets[n->hash & (m->nbuckets - 1)];
	n->next = *slot;
	*slot = n;
	m->count++;
}

/* Unlink node n (which is in the map); the caller frees it. */
static void map_unlink(mm_map *m, mm_node *n)
{
	mm_node **p = &m->buckets[n->hash & (m->nbuckets - 1)];
	while (*p != n)
		p = &(*p)->next;
	*p = n->next;
	m->count--;
}

/* Visit every node; fn may not modify the map. */
#define MAP_EACH(m, n) \
	for (size_t n##_i_ = 0; n##_i_ < (m)->nbuckets; n##_i_++) \
		for (mm_node *n = (m)->buckets[n##_i_]; n != NULL; n = n->next)

/* Free every node with fn(value) and the table. */
static void map_clear(mm_map *m, void (*fn)(void *value, void *ud), void *ud)
{
	size_t i;
	for (i = 0; i < m->nbuckets; i++) {
		mm_node *n = m->buckets[i], *next;
		for (; n != NULL; n = next) {
			next = n->next;
			if (fn)
				fn(n->value, ud);
			free(n);
		}
	}
	free(m->buckets);
	m->buckets = NULL;
	m->nbuckets = 0;
	m->count = 0;
}

/* ---- decisions: actions and a string arena -------------------------------
 * Decisions copy their strings into an arena reset at each call, so they stay
 * valid even when the call frees what they name.
 */
typedef struct arena_chunk {
	struct arena_chunk *next;
	size_t used, size;
	char data[];
} arena_chunk;

#define ARENA_CHUNK 4096

typedef struct mm_decisionbuf {
	mm_action *actions;
	size_t n, cap;
	arena_chunk *chunks;
} mm_decisionbuf;

/* ---- the state ---------------------------------------------------------- */

/* Where a session is, in its membership. */
typedef enum ss_state {
	SS_WAITING = 0, /* waits for the account's automatic (re-)join */
	SS_ASKED,       /* its own join awaits the room's answer */
	SS_JOINED,      /* completed its join */
	SS_LEAVING      /* asked to leave; awaits the room's answer */
} ss_state;

typedef struct mm_session {
	char *resource;
	char *nick;     /* the nick this session asked for */
	char *join_id;  /* id of its join, or NULL */
	char *password; /* the password its join carried, or NULL */
	char *presence; /* its last presence to the room (see mm_join), or NULL */
	uint64_t seq;   /* when that presence was set: state-wide counter */
	size_t niqs;    /* its IQs awaiting an answer */
	int rank;       /* availability of that presence: 0 (chat) .. 4 (xa) */
	ss_state state;
	/* its client is away (stream management keeps it hibernating): it
	 * cannot hold the account in a room the user left elsewhere */
	int unreachable;
	/* its <history/> request, for the catch-up replay */
	struct {
		int requested;
		long maxstanzas, maxchars;
		double seconds, since;
	} hist;
	double hist_now;
} mm_session;

typedef struct mm_pending {
	char *id;
	char *resource;
} mm_pending;

/* A room message kept for catch-up. */
typedef struct mm_hist {
	mm_node *payload;
	double stamp;
	char *sid; /* the room's stanza-id, or NULL: what a retraction names */
} mm_hist;

struct mm_account;

typedef struct mm_membership {
	struct mm_account *owner; /* the account it belongs to */
	size_t bytes;     /* payload bytes its caches hold (shared ones too) */
	char *room;
	char *nick;     /* the account's nick in the room */
	char *password; /* or NULL */
	char *affiliation;
	const char *role; /* static: its role, for a stub self-presence */
	mm_mstate state; /* the lifecycle: see the table in minimix.h */
	const char *account; /* the key of the account's node (stable) */
	/* a waiting state's deadline (0: starts at the next mm_tick) and its
	 * length, and the list of waiting memberships it is linked in */
	double deadline;
	unsigned wait;
	struct mm_membership *wprev, *wnext;
	unsigned retries; /* failed automatic re-joins so far */
	uint64_t agg_seq; /* seq of the session presence the room shows */
	char *shown;      /* that presence, or NULL when unknown */
	uint64_t next_agg; /* scratch for mm_session_gone: agg_seq ... */
	char *next_shown;  /* ... and shown, once the decision commits */
	mm_session *sessions;
	size_t nsessions, capsessions;
	mm_map occupants; /* nick -> mm_node* (payload) */
	mm_node *self;    /* self-presence payload, or NULL */
	mm_node *subject; /* subject message payload, or NULL */
	/* the room sent a subject the caches could not keep */
	int subject_lost;
	mm_pending *pending; /* ring of max_pending */
	size_t npending, pending_next;
	mm_hist *hist;    /* ring of history_size, oldest at hist_head */
	size_t hist_head, hist_count;
	/* of those, how many (the oldest) came before the account's last
	 * re-join: what was said while it was out lies between them and the
	 * rest, so they never answer a catch-up the log can give */
	size_t hist_break;
	char *last_id;    /* the last room message seen */
	size_t last_id_cap; /* bytes allocated for it */
	int seen_dirty;   /* the account is marked for a newer last message */
	double last_stamp;
	/* not the lifecycle: a filter on the room's history after a re-join,
	 * which repeats what the account saw; on until the first live message
	 * or the subject */
	int skip_seen;
	int ping_pending; /* the module's own self-ping awaits an answer */
	unsigned ping_retries; /* its pings that could not reach the room */
	mm_span spans[MM_MAX_SPANS]; /* when the account was in, oldest first */
	size_t nspans;
	/* when the account was last in, while it is out by no wish of its
	 * own (0: unknown): where a long refusal closes its span */
	double last_in;
} mm_membership;

typedef struct mm_account {
	mm_map rooms; /* room -> mm_membership* */
	size_t bytes; /* payload bytes its memberships' caches hold */
} mm_account;

/* An IQ a session sent through the account, awaiting the room's answer. */
typedef struct mm_iq {
	char *account, *room, *nick, *resource, *orig_id, *queryid;
	double deadline;
	int self_ping;
} mm_iq;

struct mm_state {
	mm_limits limits;
	mm_map accounts; /* bare JID -> mm_account* */
	mm_map payloads; /* serialized stanza -> refcount (as uintptr_t) */
	size_t payload_bytes;
	size_t cached_bytes; /* of which cache entries hold (aux > 0) */
	mm_node *last_payload; /* the last one interned (held by a reference) */
	mm_map iqs;      /* module-owned IQ id -> mm_iq* */
	mm_map dirty;    /* account -> level (uintptr_t) to persist */
	uint64_t seq;    /* orders session presences */
	mm_decisionbuf dec;
	const char *dec_room; /* arena copy: the room of the actions pushed now */
	const char *dec_event, *dec_reason; /* the decision's event */
	mm_observer observer;
	void *observer_ud;
	double clock;    /* the last mm_tick() time; 0 before the first */
	double now;      /* the caller's clock (mm_state_now()); 0: unknown */
	struct mm_membership *waiting; /* memberships with a deadline */
	mm_map pings;    /* host -> mm_pingwait*: pings asked for later */
};

/* A host whose rooms get a self-ping when the deadline passes. */
typedef struct mm_pingwait {
	double deadline; /* 0: starts at the next mm_tick() */
	unsigned wait;
} mm_pingwait;

/* ---- errors ------------------------------------------------------------- */

static const struct {
	const char *text, *token, *condition, *type;
} errinfo[] = {
	[MM_OK] = {"success", "ok", "undefined-condition", "cancel"},
	[MM_ENOMEM] = {"out of memory", "no-memory", "resource-constraint", "wait"},
	[MM_EINVAL] = {"invalid argument", "invalid", "jid-malformed", "modify"},
	[MM_EROOMLIMIT] = {"the account is in too many rooms", "room-limit",
		"resource-constraint", "wait"},
	[MM_ESESSIONLIMIT] = {"too many sessions joined to this room", "session-limit",
		"resource-constraint", "wait"},
	[MM_EIQLIMIT] = {"too many queries awaiting an answer", "iq-limit",
		"resource-constraint", "wait"},
};

static int err_known(mm_err err)
{
	return (unsigned)err < (unsigned)MM_ERR_COUNT;
}

const char *mm_strerror(mm_err err)
{
	return err_known(err) ? errinfo[err].text : "unknown error";
}

const char *mm_errtoken(mm_err err)
{
	return err_known(err) ? errinfo[err].token : "unknown";
}

const char *mm_errcondition(mm_err err, const char **type)
{
	if (!err_known(err)) {
		if (type)
			*type = "cancel";
		return "undefined-condition";
	}
	if (type)
		*type = errinfo[err].type;
	return errinfo[err].condition;
}

unsigned mm_status_bit(int code)
{
	switch (code) {
	case 110: return MM_STATUS_110;
	case 201: return MM_STATUS_201;
	case 210: return MM_STATUS_210;
	case 301: return MM_STATUS_301;
	case 303: return MM_STATUS_303;
	case 307: return MM_STATUS_307;
	case 321: return MM_STATUS_321;
	case 322: return MM_STATUS_322;
	case 332: return MM_STATUS_332;
	case 333: return MM_STATUS_333;
	default: return 0;
	}
}

/* ---- the membership lifecycle --------------------------------------------
 * The table of minimix.h, as data: rows are states (MM_NONE first), columns
 * events.  Every lifecycle change goes through membership_enter() or
 * membership_remove(), which take the transition from here.
 */
#define R MM_REFUSED
#define N MM_NONE
#define JG MM_JOINING
#define JD MM_JOINED
#define LV MM_LEAVING
#define LR MM_LEAVING_REJOIN
#define RW MM_REJOIN_WAIT
#define RJ MM_REJOINING
static const signed char transitions[MM_MSTATE_COUNT + 1][MM_EV_COUNT] = {
	/*               JOIN RESTORE LAST ACCT SELF ERR ERR_T OUT SHUT TECH FELL TIME */
	/* NONE */     { JG,  RJ,     R,   R,   R,   R,  R,    R,  R,   R,   R,   R  },
	/* JOINING */  { JG,  R,      LV,  LV,  JD,  N,  N,    N,  RW,  RJ,  R,   N  },
	/* JOINED */   { JD,  R,      LV,  LV,  JD,  R,  R,    N,  RW,  RJ,  RJ,  R  },
	/* LEAVING */  { LR,  R,      R,   R,   R,   N,  N,    N,  N,   N,   R,   N  },
	/* LEAV_REJ */ { LR,  R,      LV,  LV,  R,   JG, JG,   JG, JG,  JG,  R,   JG },
	/* REJ_WAIT */ { RJ,  R,      N,   N,   JD,  R,  R,    N,  RW,  RJ,  R,   RJ },
	/* REJOINING */{ RJ,  R,      LV,  LV,  JD,  N,  RW,   N,  RW,  RJ,  R,   RW },
};
#undef R
#undef N
#undef JG
#undef JD
#undef LV
#undef LR
#undef RW
#undef RJ

int mm_transition(int state, int event)
{
	if (state < MM_NONE || state >= MM_MSTATE_COUNT || event < 0
			|| event >= MM_EV_COUNT)
		return MM_REFUSED;
	return transitions[state + 1][event];
}

const char *mm_mstate_name(int state)
{
	static const char *const names[] = {"none", "joining", "joined",
		"leaving", "leaving-rejoin", "rejoin-wait", "rejoining"};
	if (state < MM_NONE || state >= MM_MSTATE_COUNT)
		return "?";
	return names[state + 1];
}

const char *mm_mevent_name(int event)
{
	static const char *const names[] = {"join", "restore", "last-leave",
		"account-leave", "self", "error", "error-transient", "out",
		"shutdown", "technical", "fell-out", "timeout"};
	if (event < 0 || event >= MM_EV_COUNT)
		return "?";
	return names[event];
}

void mm_state_observe(mm_state *s, mm_observer fn, void *ud)
{
	s->observer = fn;
	s->observer_ud = ud;
}

/* ---- small helpers ------------------------------------------------------ */

static char *str_dup(const char *s)
{
	size_t len;
	char *d;
	if (s == NULL)
		return NULL;
	len = strlen(s);
	d = malloc(len + 1);
	if (d)
		memcpy(d, s, len + 1);
	return d;
}

/* Duplicate s into *out; 0 on allocation failure (NULL s is not a failure). */
static int dup_opt(const char *s, char **out)
{
	*out = str_dup(s);
	return s == NULL || *out != NULL;
}

static int str_eq(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static int nonempty(const char *s)
{
	return s != NULL && *s != '\0';
}

static const char *const affiliations[] = {"owner", "admin", "member",
	"outcast", "none", NULL};
static const char *const roles[] = {"moderator", "participant", "visitor",
	"none", NULL};

/* The static copy of v when it is one of list, else fallback. */
static const char *known_token(const char *v, const char *const *list,
		const char *fallback)
{
	size_t i;
	for (i = 0; v && list[i]; i++)
		if (strcmp(v, list[i]) == 0)
			return list[i];
	return fallback;
}

/* ---- limits and lifecycle ----------------------------------------------- */

void mm_limits_default(mm_limits *l)
{
	l->max_rooms = MM_DEFAULT_MAX_ROOMS;
	l->max_sessions = MM_DEFAULT_MAX_SESSIONS;
	l->max_occupants = MM_DEFAULT_MAX_OCCUPANTS;
	l->max_pending = MM_DEFAULT_MAX_PENDING;
	l->max_nick_bytes = MM_DEFAULT_MAX_NICK_BYTES;
	l->max_iqs = MM_DEFAULT_MAX_IQS;
	l->iq_timeout = MM_DEFAULT_IQ_TIMEOUT;
	l->rejoin_delay = MM_DEFAULT_REJOIN_DELAY;
	l->rejoin_grace = MM_DEFAULT_REJOIN_GRACE;
	l->history_size = MM_DEFAULT_HISTORY_SIZE;
	l->history_default = MM_DEFAULT_HISTORY_DEFAULT;
	l->history_max = MM_DEFAULT_HISTORY_MAX;
	l->log_history = 0;
	l->join_timeout = MM_DEFAULT_JOIN_TIMEOUT;
	l->max_membership_bytes = MM_DEFAULT_MAX_MEMBERSHIP_BYTES;
	l->max_account_bytes = MM_DEFAULT_MAX_ACCOUNT_BYTES;
	l->max_cache_bytes = MM_DEFAULT_MAX_CACHE_BYTES;
}

/*
 * Fill buf with len bytes from the kernel's CSPRNG: getrandom(2), else
 * /dev/urandom.  0 when neither gives them: the caller then fails rather
 * than make something guessable.
 */
static int random_bytes(void *buf, size_t len)
{
	unsigned char *p = buf;
	size_t got = 0;
	FILE *f;
	while (got < len) {
		ssize_t n = getrandom(p + got, len - got, 0);
		if (n > 0)
			got += (size_t)n;
		else if (n < 0 && errno == EINTR)
			continue;
		else
			break;
	}
	if (got == len)
		return 1;
	f = fopen("/dev/urandom", "rb");
	if (f == NULL)
		return 0;
	got = fread(p, 1, len, f) == len ? len : 0;
	fclose(f);
	return got == len;
}

static void limits_take(mm_limits *to, const mm_limits *from)
{
	mm_limits_default(to);
	if (from == NULL)
		return;
#define TAKE(f) if (from->f) to->f = from->f
	TAKE(max_rooms);
	TAKE(max_sessions);
	TAKE(max_occupants);
	TAKE(max_pending);
	TAKE(max_nick_bytes);
	TAKE(max_iqs);
	TAKE(iq_timeout);
	TAKE(rejoin_delay);
	TAKE(rejoin_grace);
	TAKE(history_size);
	TAKE(history_default);
	TAKE(history_max);
	TAKE(log_history);
	TAKE(join_timeout);
	TAKE(max_membership_bytes);
	TAKE(max_account_bytes);
	TAKE(max_cache_bytes);
#undef TAKE
}

mm_state *mm_state_new(const mm_limits *limits)
{
	mm_state *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	limits_take(&s->limits, limits);
	if (hash_seed == 0) {
		uint64_t seed = 0;
		/* without the CSPRNG: the clock and an address, still varied */
		if (!random_bytes(&seed, sizeof seed))
			seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)s;
		hash_seed = seed | 1;
	}
	return s;
}

const mm_limits *mm_state_limits(const mm_state *s)
{
	return &s->limits;
}

static void cache_drop(mm_state *s, mm_membership *m, mm_node *n);
static void pending_free(mm_pending *p);

/* Move a membership's rings to arrays of the new sizes (NULL: that ring
 * keeps its size), keeping the newest entries.  Cannot fail. */
static void rings_resize(mm_state *s, mm_membership *m, const mm_limits *nl,
		mm_hist *hist, mm_pending *pending)
{
	size_t i, keep, oldcap;
	if (hist) {
		oldcap = s->limits.history_size;
		keep = m->hist_count < nl->history_size ? m->hist_count : nl->history_size;
		for (i = 0; i < m->hist_count - keep; i++) {
			cache_drop(s, m, m->hist[(m->hist_head + i) % oldcap].payload);
			free(m->hist[(m->hist_head + i) % oldcap].sid);
		}
		m->hist_break -= m->hist_break < m->hist_count - keep
			? m->hist_break : m->hist_count - keep;
		for (i = 0; i < keep; i++)
			hist[i] = m->hist[(m->hist_head + m->hist_count - keep + i) % oldcap];
		free(m->hist);
		m->hist = hist;
		m->hist_head = 0;
		m->hist_count = keep;
	}
	if (pending) {
		oldcap = s->limits.max_pending;
		keep = m->npending < nl->max_pending ? m->npending : nl->max_pending;
		/* the oldest of the npending written is at pending_next - npending */
		for (i = 0; i < m->npending; i++) {
			mm_pending *p = &m->pending[(m->pending_next + oldcap - m->npending + i) % oldcap];
			if (i < m->npending - keep)
				pending_free(p);
			else
				pending[i - (m->npending - keep)] = *p;
		}
		free(m->pending);
		m->pending = pending;
		m->npending = keep;
		m->pending_next = keep % nl->max_pending;
	}
}

mm_err mm_state_set_limits(mm_state *s, const mm_limits *limits)
{
	mm_limits nl;
	void **bufs = NULL;
	size_t n = 0, i = 0;
	int hist_changes, pending_changes;

	limits_take(&nl, limits);
	hist_changes = nl.history_size != s->limits.history_size;
	pending_changes = nl.max_pending != s->limits.max_pending;
	if (hist_changes || pending_changes) {
		/* every new ring first, so that a failure changes nothing */
		MAP_EACH(&s->accounts, an)
			n += ((mm_account *)an->value)->rooms.count;
		bufs = calloc(2 * n + 1, sizeof *bufs);
		if (bufs == NULL)
			return MM_ENOMEM;
		MAP_EACH(&s->accounts, an) {
			MAP_EACH(&((mm_account *)an->value)->rooms, rn) {
				mm_membership *m = rn->value;
				int ok = 1;
				if (hist_changes && m->hist)
					ok = (bufs[i] = calloc(nl.history_size, sizeof(mm_hist))) != NULL;
				if (ok && pending_changes && m->pending)
					ok = (bufs[i + 1] = calloc(nl.max_pending, sizeof(mm_pending))) != NULL;
				i += 2;
				if (!ok) {
					for (i = 0; i < 2 * n; i++)
						free(bufs[i]);
					free(bufs);
					return MM_ENOMEM;
				}
			}
		}
		i = 0;
		MAP_EACH(&s->accounts, an) {
			MAP_EACH(&((mm_account *)an->value)->rooms, rn) {
				rings_resize(s, rn->value, &nl, bufs[i], bufs[i + 1]);
				i += 2;
			}
		}
		free(bufs);
	}
	s->limits = nl;
	return MM_OK;
}

/* ---- payload pool ------------------------------------------------------- */

static size_t payload_refs(const mm_node *n)
{
	return (size_t)(uintptr_t)n->value;
}

/* Find or prepare the pooled copy of payload (len bytes).  Returns the
 * existing node (not yet referenced) or a fresh unlinked node (*fresh = 1);
 * NULL on allocation failure.  Commit with payload_ref(). */
static mm_node *payload_prepare_len(mm_state *s, const char *payload, size_t len,
		int *fresh)
{
	mm_node *n;
	*fresh = 0;
	/* a room message reaches every local account in turn: the same text
	 * again is found without hashing it again */
	n = s->last_payload;
	if (n && n->len == len && memcmp(n->key, payload, len) == 0)
		return n;
	n = map_find_len(&s->payloads, payload, len);
	if (n)
		return n;
	if (!map_ready(&s->payloads))
		return NULL;
	n = node_new(payload, len, (void *)(uintptr_t)0);
	*fresh = n != NULL;
	return n;
}

/* The same for a call's payload: its handle when the caller holds one. */
static mm_node *payload_prepare(mm_state *s, const char *payload,
		const mm_payload *handle, int *fresh)
{
	if (handle) {
		*fresh = 0;
		/* mm_payload is the pool's node under an opaque name */
		return (mm_node *)(uintptr_t)handle;
	}
	return payload_prepare_len(s, payload, strlen(payload), fresh);
}

static void payload_unref(mm_state *s, mm_node *n);

static void payload_ref(mm_state *s, mm_node *n, int fresh)
{
	if (fresh) {
		map_link(&s->payloads, n);
		s->payload_bytes += n->len;
	}
	n->value = (void *)(uintptr_t)(payload_refs(n) + 1);
	if (s->last_payload != n) {
		/* remember it, holding a reference so that it stays valid */
		mm_node *old = s->last_payload;
		n->value = (void *)(uintptr_t)(payload_refs(n) + 1);
		s->last_payload = n;
		payload_unref(s, old);
	}
}

static void payload_unref(mm_state *s, mm_node *n)
{
	size_t refs;
	if (n == NULL)
		return;
	if (n == s->last_payload && payload_refs(n) == 2) {
		/* only the memo holds it besides this reference: let both go */
		s->last_payload = NULL;
		n->value = (void *)(uintptr_t)1;
	}
	refs = payload_refs(n) - 1;
	if (refs == 0) {
		map_unlink(&s->payloads, n);
		s->payload_bytes -= n->len;
		free(n);
	} else {
		n->value = (void *)(uintptr_t)refs;
	}
}

mm_payload *mm_payload_hold(mm_state *s, const char *text, size_t len)
{
	int fresh;
	mm_node *n;
	if (s == NULL || text == NULL || memchr(text, '\0', len) != NULL)
		return NULL;
	n = payload_prepare_len(s, text, len, &fresh);
	if (n == NULL)
		return NULL;
	payload_ref(s, n, fresh);
	return (mm_payload *)(void *)n;
}

void mm_payload_release(mm_state *s, mm_payload *p)
{
	if (s != NULL && p != NULL)
		payload_unref(s, (mm_node *)(void *)p);
}

/* ---- caches: bounded in bytes ---------------------------------------------
 * A membership's caches (occupants, self, subject, catch-up) hold pooled
 * payloads.  Each reference counts its bytes against the membership and
 * its account (a text shared by two memberships counts for both), and a
 * text any cache holds counts once against the state (cached_bytes).
 */

/* Count a reference to n the caller took as an entry of m's caches. */
static void cache_count(mm_state *s, mm_membership *m, mm_node *n)
{
	if (n->aux++ == 0)
		s->cached_bytes += n->len;
	m->bytes += n->len;
	if (m->owner)
		m->owner->bytes += n->len;
}

/* Make pool node n (fresh: not yet in the pool) an entry of m's caches. */
static void cache_take(mm_state *s, mm_membership *m, mm_node *n, int fresh)
{
	payload_ref(s, n, fresh);
	cache_count(s, m, n);
}

/* The reverse of cache_take(); NULL is accepted. */
static void cache_drop(mm_state *s, mm_membership *m, mm_node *n)
{
	if (n == NULL)
		return;
	if (--n->aux == 0)
		s->cached_bytes -= n->len;
	m->bytes -= n->len;
	if (m->owner)
		m->owner->bytes -= n->len;
	payload_unref(s, n);
}

/* Whether m may cache n within the byte limits once `freed` bytes of its
 * entries went, `freed_state` of them held by no other cache. */
static int cache_fits_freed(const mm_state *s, const mm_membership *m,
		const mm_node *n, size_t freed, size_t freed_state)
{
	const mm_limits *l = &s->limits;
	if (n->len > l->max_membership_bytes || m->bytes - freed > l->max_membership_bytes - n->len)
		return 0;
	if (m->owner && (n->len > l->max_account_bytes
			|| m->owner->bytes - freed > l->max_account_bytes - n->len))
		return 0;
	/* a text some cache holds already costs the state nothing more */
	return n->aux > 0 || (n->len <= l->max_cache_bytes
		&& s->cached_bytes - freed_state <= l->max_cache_bytes - n->len);
}

/* Whether m may cache n within the byte limits once its entry `old`
 * (NULL: none) went: a replaced entry gives its bytes back to the
 * membership and the account, and to the state when no other cache holds
 * its text. */
static int cache_fits(const mm_state *s, const mm_membership *m,
		const mm_node *n, const mm_node *old)
{
	return cache_fits_freed(s, m, n, old ? old->len : 0,
		old && old->aux == 1 && old != n ? old->len : 0);
}

static void hist_drop_oldest(mm_state *s, mm_membership *m);

/*
 * Room for n, to replace m's entry old (NULL: none), as a self-presence
 * or a subject: a later session's join needs them more than the catch-up
 * ring, which a room log stands behind, so the ring's oldest messages go
 * for them, but only when emptying the ring would be enough.  Whether n
 * fits now.  The caller holds a reference to n: one of the messages that
 * go may be its text.  Cannot fail.
 */
static int cache_make_room(mm_state *s, mm_membership *m, const mm_node *n,
		const mm_node *old)
{
	const size_t cap = s->limits.history_size;
	size_t i, own = 0, alone = 0;
	if (cache_fits(s, m, n, old))
		return 1;
	for (i = 0; i < m->hist_count; i++) {
		const mm_node *h = m->hist[(m->hist_head + i) % cap].payload;
		own += h->len;
		if (h->aux == 1 && h != n)
			alone += h->len;
	}
	if (!cache_fits_freed(s, m, n, (old ? old->len : 0) + own,
			(old && old->aux == 1 && old != n ? old->len : 0) + alone))
		return 0;
	while (m->hist_count > 0 && !cache_fits(s, m, n, old))
		hist_drop_oldest(s, m);
	return cache_fits(s, m, n, old);
}

/* ---- memberships -------------------------------------------------------- */

static void session_free_fields(mm_session *ss)
{
	free(ss->resource);
	free(ss->nick);
	free(ss->join_id);
	free(ss->password);
	free(ss->presence);
}

static void pending_free(mm_pending *p)
{
	free(p->id);
	free(p->resource);
	p->id = p->resource = NULL;
}

/* Drop the room state the account learnt by joining (occupants, self,
 * subject).  The catch-up history stays: it is what the account saw. */
static void membership_clear_cache(mm_state *s, mm_membership *m)
{
	MAP_EACH(&m->occupants, n)
		cache_drop(s, m, n->value);
	map_clear(&m->occupants, NULL, NULL);
	cache_drop(s, m, m->self);
	cache_drop(s, m, m->subject);
	m->self = m->subject = NULL;
	m->subject_lost = 0;
}

static void hist_clear(mm_state *s, mm_membership *m)
{
	size_t i;
	for (i = 0; i < m->hist_count; i++) {
		cache_drop(s, m, m->hist[(m->hist_head + i) % s->limits.history_size].payload);
		free(m->hist[(m->hist_head + i) % s->limits.history_size].sid);
	}
	free(m->hist);
	m->hist = NULL;
	m->hist_head = m->hist_count = m->hist_break = 0;
}

static void membership_free(mm_state *s, mm_membership *m)
{
	size_t i;
	if (m == NULL)
		return;
	membership_clear_cache(s, m);
	hist_clear(s, m);
	free(m->last_id);
	for (i = 0; i < m->nsessions; i++)
		session_free_fields(&m->sessions[i]);
	free(m->sessions);
	if (m->pending) {
		for (i = 0; i < s->limits.max_pending; i++)
			pending_free(&m->pending[i]);
		free(m->pending);
	}
	free(m->room);
	free(m->nick);
	free(m->shown);
	free(m->password);
	free(m->affiliation);
	free(m);
}

static mm_account *account_get(const mm_state *s, const char *account)
{
	return map_get(&s->accounts, account);
}

static mm_membership *membership_get(const mm_state *s, const char *account,
		const char *room)
{
	mm_account *a = account_get(s, account);
	return a ? map_get(&a->rooms, room) : NULL;
}

static mm_session *session_find(mm_membership *m, const char *resource)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++)
		if (strcmp(m->sessions[i].resource, resource) == 0)
			return &m->sessions[i];
	return NULL;
}

/* Make room for one more session; 0 on allocation failure. */
static int sessions_reserve(mm_membership *m)
{
	mm_session *ns;
	size_t cap;
	if (m->nsessions < m->capsessions)
		return 1;
	cap = m->capsessions ? m->capsessions * 2 : 2;
	ns = realloc(m->sessions, cap * sizeof *ns);
	if (ns == NULL)
		return 0;
	m->sessions = ns;
	m->capsessions = cap;
	return 1;
}

static void session_remove(mm_membership *m, mm_session *ss)
{
	size_t i = (size_t)(ss - m->sessions);
	session_free_fields(ss);
	/* keep the order: deliveries follow the order sessions joined */
	memmove(&m->sessions[i], &m->sessions[i + 1],
		(m->nsessions - i - 1) * sizeof *ss);
	m->nsessions--;
}

static void iqs_forget(mm_state *s, const char *account, const char *room,
		const char *resource);

/* Take the transition of the table for ev (the caller checked that there
 * is one, that it does not end the membership, and built its decision:
 * this cannot fail). */
static unsigned backoff(const mm_state *s, unsigned retries);

static void waiting_unlink(mm_state *s, mm_membership *m)
{
	if (m->wprev)
		m->wprev->wnext = m->wnext;
	else if (s->waiting == m)
		s->waiting = m->wnext;
	if (m->wnext)
		m->wnext->wprev = m->wprev;
	m->wprev = m->wnext = NULL;
}

static int is_waiting_state(int state)
{
	return state != MM_JOINED && state != MM_NONE;
}

static int span_open(const mm_membership *m)
{
	return m->nspans > 0 && m->spans[m->nspans - 1].to < 0;
}

static double state_now(const mm_state *s);

/* What (old state, event, new state) does to the spans: 1 opens one, -1
 * closes the open one now, -2 closes it when the account was last in, 0
 * keeps them (see the table's notes in minimix.h). */
static int span_effect(const mm_state *s, const mm_membership *m, int from,
		int ev, int to)
{
	(void)ev;
	if (from == MM_REJOINING && to == MM_REJOIN_WAIT && span_open(m)
			&& m->last_in > 0
			&& state_now(s) - m->last_in > (double)s->limits.rejoin_grace)
		return -2; /* kept out too long: its span ends where it was in */
	if (to == MM_JOINED && from == MM_JOINING)
		return 1;
	if (to == MM_JOINED && (from == MM_REJOINING || from == MM_REJOIN_WAIT))
		return span_open(m) ? 0 : 1;
	if ((from == MM_JOINED || from == MM_REJOIN_WAIT || from == MM_REJOINING)
			&& (to == MM_LEAVING || to == MM_NONE))
		return span_open(m) ? -1 : 0;
	return 0;
}

static double state_now(const mm_state *s)
{
	return s->now > 0 ? s->now : s->clock;
}

static void spans_apply(mm_state *s, mm_membership *m, int effect)
{
	double t = state_now(s);
	if (effect > 0) {
		if (m->nspans == MM_MAX_SPANS) {
			memmove(m->spans, m->spans + 1, (MM_MAX_SPANS - 1) * sizeof *m->spans);
			m->nspans--;
		}
		if (m->nspans > 0 && t < m->spans[m->nspans - 1].to)
			t = m->spans[m->nspans - 1].to; /* a clock stepping back */
		m->spans[m->nspans].from = t;
		m->spans[m->nspans].to = -1;
		m->nspans++;
	} else if (effect < 0) {
		mm_span *sp = &m->spans[m->nspans - 1];
		if (effect == -2 && m->last_in < t)
			t = m->last_in;
		sp->to = t > sp->from ? t : sp->from;
	}
}

static void membership_enter(mm_state *s, const char *account, mm_membership *m,
		mm_mevent ev)
{
	int from = (int)m->state, to = mm_transition(from, (int)ev);
	spans_apply(s, m, span_effect(s, m, from, (int)ev, to));
	/* out by no wish of its own: when it was last in (a restored
	 * membership: from now, the first it knows of) */
	if ((from == MM_JOINED || from == MM_NONE)
			&& (to == MM_REJOIN_WAIT || to == MM_REJOINING))
		m->last_in = state_now(s);
	m->state = (mm_mstate)to;
	if (!is_waiting_state(to)) {
		waiting_unlink(s, m);
	} else if (from != to || ev != MM_EV_JOIN) {
		/* a new wait (a session joining a wait does not restart it) */
		m->wait = to == MM_REJOIN_WAIT ? backoff(s, m->retries)
			: (unsigned)s->limits.join_timeout;
		m->deadline = s->clock > 0 ? s->clock + m->wait : 0;
		if (m->wprev == NULL && s->waiting != m) {
			m->wnext = s->waiting;
			if (s->waiting)
				s->waiting->wprev = m;
			s->waiting = m;
		}
	}
	if (s->observer)
		s->observer(account, m->room, from, (int)ev, to, s->observer_ud);
}

/* The membership ends by the table's transition for ev: remove and free
 * it; frees the account when it was its last. */
static void membership_remove(mm_state *s, const char *account, mm_membership *m,
		mm_mevent ev)
{
	mm_node *an = map_find(&s->accounts, account);
	mm_account *a;
	mm_node *rn;
	if (an == NULL)
		return;
	spans_apply(s, m, span_effect(s, m, (int)m->state, (int)ev, MM_NONE));
	if (s->observer)
		s->observer(account, m->room, (int)m->state, (int)ev, MM_NONE,
			s->observer_ud);
	waiting_unlink(s, m);
	iqs_forget(s, account, m->room, NULL);
	a = an->value;
	rn = map_find(&a->rooms, m->room);
	if (rn) {
		map_unlink(&a->rooms, rn);
		free(rn);
	}
	membership_free(s, m);
	if (a->rooms.count == 0) {
		map_unlink(&s->accounts, an);
		free(an);
		map_clear(&a->rooms, NULL, NULL);
		free(a);
	}
}

/* Remember that `resource` sent stanza `id` to the room (oldest forgotten).
 * Best effort: failing to remember only means an error answer is dropped. */
static void pending_add(mm_state *s, mm_membership *m, const char *id,
		const char *resource)
{
	size_t max = s->limits.max_pending;
	mm_pending *p;
	char *i2, *r2;
	if (id == NULL)
		return;
	if (m->pending == NULL) {
		m->pending = calloc(max, sizeof *m->pending);
		if (m->pending == NULL)
			return;
	}
	i2 = str_dup(id);
	r2 = str_dup(resource);
	if (i2 == NULL || r2 == NULL) {
		free(i2);
		free(r2);
		return;
	}
	p = &m->pending[m->pending_next];
	pending_free(p);
	p->id = i2;
	p->resource = r2;
	m->pending_next = (m->pending_next + 1) % max;
	if (m->npending < max)
		m->npending++;
}

static mm_pending *pending_find(mm_state *s, mm_membership *m, const char *id)
{
	size_t i;
	if (id == NULL || m->pending == NULL)
		return NULL;
	for (i = 0; i < s->limits.max_pending; i++)
		if (m->pending[i].id && strcmp(m->pending[i].id, id) == 0)
			return &m->pending[i];
	return NULL;
}

static void pending_forget_resource(mm_state *s, mm_membership *m,
		const char *resource)
{
	size_t i;
	if (m->pending == NULL)
		return;
	for (i = 0; i < s->limits.max_pending; i++)
		if (m->pending[i].resource && strcmp(m->pending[i].resource, resource) == 0)
			pending_free(&m->pending[i]);
}

/* ---- IQs awaiting answers ------------------------------------------------- */

static void iq_free(mm_iq *q)
{
	free(q->account);
	free(q->room);
	free(q->nick);
	free(q->resource);
	free(q->orig_id);
	free(q->queryid);
	free(q);
}

/*
 * A new, unlinked IQ entry under a fresh module-owned id (the node's key),
 * or NULL on allocation failure.  resource NULL: the module's own ping.
 * The id carries a counter and a secret the room cannot guess; the answer
 * must also come from the JID the IQ went to.
 */
static mm_node *iq_new(mm_state *s, const char *account, const char *room,
		const char *nick, const char *resource, const char *orig_id,
		const char *queryid, int self_ping, double now)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char rnd[16];
	char key[4 + 2 * sizeof rnd + 1] = "mmx-";
	mm_node *n = NULL;
	mm_iq *q;
	size_t i;
	if (!random_bytes(rnd, sizeof rnd))
		return NULL;
	for (i = 0; i < sizeof rnd; i++) {
		key[4 + 2 * i] = hex[rnd[i] >> 4];
		key[5 + 2 * i] = hex[rnd[i] & 15];
	}
	key[sizeof key - 1] = '\0';
	q = calloc(1, sizeof *q);
	if (q == NULL)
		return NULL;
	q->account = str_dup(account);
	q->room = str_dup(room);
	q->deadline = now + (double)s->limits.iq_timeout;
	q->self_ping = self_ping;
	if (q->account && q->room && dup_opt(resource, &q->resource)
			&& dup_opt(orig_id, &q->orig_id) && dup_opt(nick, &q->nick)
			&& dup_opt(queryid, &q->queryid) && map_ready(&s->iqs))
		n = node_new(key, strlen(key), q);
	if (n == NULL)
		iq_free(q);
	return n;
}

/* Forget IQ node n; its session's count goes down when it is still there. */
static void iq_forget(mm_state *s, mm_node *n)
{
	mm_iq *q = n->value;
	mm_membership *m = membership_get(s, q->account, q->room);
	mm_session *ss = m && q->resource ? session_find(m, q->resource) : NULL;
	if (m && q->resource == NULL)
		m->ping_pending = 0;
	if (ss && ss->niqs)
		ss->niqs--;
	map_unlink(&s->iqs, n);
	free(n);
	iq_free(q);
}

/* Forget the IQs of account in room (NULL: any) from resource (NULL: any). */
static void iqs_forget(mm_state *s, const char *account, const char *room,
		const char *resource)
{
	size_t i;
	for (i = 0; s->iqs.count && i < s->iqs.nbuckets; i++) {
		mm_node *n = s->iqs.buckets[i], *next;
		for (; n != NULL; n = next) {
			mm_iq *q = n->value;
			next = n->next;
			if (strcmp(q->account, account) == 0
					&& (room == NULL || strcmp(q->room, room) == 0)
					&& (resource == NULL || str_eq(q->resource, resource)))
				iq_forget(s, n);
		}
	}
}

/* Take a session out of a membership with everything that points to it. */
static void session_detach(mm_state *s, const char *account, mm_membership *m,
		mm_session *ss)
{
	pending_forget_resource(s, m, ss->resource);
	iqs_forget(s, account, m->room, ss->resource);
	session_remove(m, ss);
}

/* ---- decision building --------------------------------------------------- */

static void dec_reset(mm_state *s, mm_decision *out)
{
	arena_chunk *c = s->dec.chunks;
	s->dec.n = 0;
	s->dec_room = NULL;
	s->dec_event = s->dec_reason = NULL;
	if (c) {
		/* keep one chunk for the next call; the others are rare */
		arena_chunk *next = c->next;
		c->next = NULL;
		c->used = 0;
		while (next) {
			arena_chunk *nn = next->next;
			free(next);
			next = nn;
		}
	}
	out->handled = 0;
	out->n = 0;
	out->actions = NULL;
	out->event = out->reason = NULL;
}

/* Copy str into the arena; *ok cleared on allocation failure. */
static const char *dec_str(mm_state *s, const char *str, int *ok)
{
	size_t len;
	arena_chunk *c;
	char *d;
	if (str == NULL || !*ok)
		return NULL;
	len = strlen(str) + 1;
	c = s->dec.chunks;
	if (c == NULL || c->size - c->used < len) {
		size_t size = len > ARENA_CHUNK ? len : ARENA_CHUNK;
		arena_chunk *nc = malloc(sizeof *nc + size);
		if (nc == NULL) {
			*ok = 0;
			return NULL;
		}
		nc->used = 0;
		nc->size = size;
		/* the fullest chunk goes behind; the head is the one with space */
		nc->next = c;
		s->dec.chunks = nc;
		c = nc;
	}
	d = c->data + c->used;
	memcpy(d, str, len);
	c->used += len;
	return d;
}

/* Append an action; returns NULL (and clears *ok) on allocation failure. */
static mm_action *dec_push(mm_state *s, mm_op op, int *ok)
{
	mm_action *a;
	if (!*ok)
		return NULL;
	if (s->dec.n == s->dec.cap) {
		size_t cap = s->dec.cap ? s->dec.cap * 2 : 16;
		mm_action *na = realloc(s->dec.actions, cap * sizeof *na);
		if (na == NULL) {
			*ok = 0;
			return NULL;
		}
		s->dec.actions = na;
		s->dec.cap = cap;
	}
	a = &s->dec.actions[s->dec.n++];
	/* an initializer, not memset: plain stores, no string instruction */
	*a = (mm_action){ .op = op, .room = s->dec_room };
	return a;
}

/* The room of the actions pushed from now on (copied into the arena). */
static void dec_room(mm_state *s, const char *room, int *ok)
{
	s->dec_room = dec_str(s, room, ok);
}

static void act_deliver(mm_state *s, const char *resource, const char *id,
		unsigned codes, int *ok)
{
	mm_action *a = dec_push(s, MM_OP_DELIVER, ok);
	if (a == NULL)
		return;
	a->resource = dec_str(s, resource, ok);
	a->id = dec_str(s, id, ok);
	a->add_codes = codes;
}

static void act_replay(mm_state *s, const char *resource, const mm_node *payload,
		const char *id, unsigned codes, int *ok)
{
	mm_action *a = dec_push(s, MM_OP_REPLAY, ok);
	if (a == NULL)
		return;
	a->resource = dec_str(s, resource, ok);
	/* payload nodes outlive the decision only until the next call; copy */
	a->payload = dec_str(s, payload->key, ok);
	a->id = dec_str(s, id, ok);
	a->add_codes = codes;
}

/* Session `resource` sees itself leave the membership's room. */
static void act_reflect_leave(mm_state *s, const mm_membership *m,
		const char *resource, const char *id, unsigned codes, int *ok)
{
	mm_action *a = dec_push(s, MM_OP_REFLECT_LEAVE, ok);
	if (a == NULL)
		return;
	a->resource = dec_str(s, resource, ok);
	a->nick = dec_str(s, m->nick, ok);
	a->id = dec_str(s, id, ok);
	a->affiliation = dec_str(s, m->affiliation ? m->affiliation : "none", ok);
	a->add_codes = codes;
}

static void act_simple(mm_state *s, mm_op op, int *ok)
{
	(void)dec_push(s, op, ok);
}

/* Finish a decision: on failure nothing is handed out. */
static mm_err dec_finish(mm_state *s, mm_decision *out, int handled, int ok)
{
	if (!ok) {
		s->dec.n = 0;
		out->handled = 0;
		out->n = 0;
		out->actions = NULL;
		out->event = out->reason = NULL;
		return MM_ENOMEM;
	}
	out->handled = handled;
	out->n = s->dec.n;
	out->actions = s->dec.n ? s->dec.actions : NULL;
	out->event = s->dec_event;
	out->reason = s->dec_reason;
	return MM_OK;
}

/* Remember that the account's persisted memberships need writing.  Best
 * effort on allocation failure: the next change marks it again. */
static int mark_dirty(mm_state *s, const char *account, int level)
{
	mm_node *n = map_find(&s->dirty, account);
	if (n) {
		if ((uintptr_t)n->value < (uintptr_t)level)
			n->value = (void *)(uintptr_t)level;
		return 1;
	}
	if (!map_ready(&s->dirty))
		return 0;
	n = node_new(account, strlen(account), (void *)(uintptr_t)level);
	if (n)
		map_link(&s->dirty, n);
	return n != NULL;
}

/* Note what happened to the membership (one event per decision). */
static void act_event(mm_state *s, const char *event, const char *reason,
		int *ok)
{
	s->dec_event = event; /* a static string: outlives any decision */
	s->dec_reason = dec_str(s, reason, ok);
}

/* Deliver the reported stanza to every session that is in the room from
 * its client's point of view (joined or waiting, not leaving). */
static void deliver_all(mm_state *s, const mm_membership *m, int *ok)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++)
		if (m->sessions[i].state != SS_LEAVING)
			act_deliver(s, m->sessions[i].resource, NULL, 0, ok);
}

/* deliver_all() for a decision that removes no session: the actions point
 * at the sessions' own resources, which live until the next call (the hot
 * path of every room message). */
static void deliver_all_ref(mm_state *s, const mm_membership *m, int *ok)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++) {
		mm_action *a;
		if (m->sessions[i].state == SS_LEAVING)
			continue;
		a = dec_push(s, MM_OP_DELIVER, ok);
		if (a)
			a->resource = m->sessions[i].resource;
	}
}

/*
 * How many of the ring's newest `usable` messages a session's <history/>
 * takes (maxstanzas < 0: no bound; none said before `from`), and in *whole
 * whether they are the whole answer: a bound stopped the count before the
 * oldest usable message, or maxstanzas were found.
 */
static size_t hist_take(const mm_state *s, const mm_membership *m,
		const mm_session *to, long maxstanzas, double from, size_t usable,
		int *whole)
{
	const size_t cap = s->limits.history_size;
	size_t take = 0, chars = 0;
	*whole = 1;
	while (take < usable) {
		const mm_hist *h = &m->hist[(m->hist_head + m->hist_count - 1 - take) % cap];
		if (maxstanzas >= 0 && (long)take >= maxstanzas)
			return take;
		if (to->hist.maxchars >= 0
				&& chars + h->payload->len > (size_t)to->hist.maxchars)
			return take;
		if (to->hist.seconds >= 0 && h->stamp < to->hist_now - to->hist.seconds)
			return take;
		if (to->hist.since >= 0 && h->stamp < to->hist.since)
			return take;
		/* a room's stamp may be whole seconds (its history after a
		 * re-join): it counts from the start of its second */
		if (h->stamp + 1 <= from)
			return take;
		chars += h->payload->len;
		take++;
	}
	*whole = maxstanzas >= 0 && (long)take >= maxstanzas;
	return take;
}

/* Replay the ring's newest `take` messages, oldest first. */
static void replay_ring(mm_state *s, const mm_membership *m,
		const mm_session *to, size_t take, int *ok)
{
	const size_t cap = s->limits.history_size;
	size_t i;
	for (i = m->hist_count - take; i < m->hist_count; i++) {
		const mm_hist *h = &m->hist[(m->hist_head + i) % cap];
		mm_action *a;
		act_replay(s, to->resource, h->payload, NULL, 0, ok);
		a = *ok ? &s->dec.actions[s->dec.n - 1] : NULL;
		if (a)
			a->stamp = h->stamp;
	}
}

/* Catch-up for a later session (§7.2.14) from the ring alone (the room
 * log off): the newest messages its <history/> asks for, oldest first,
 * after its self-presence. */
static void replay_history(mm_state *s, const mm_membership *m,
		const mm_session *to, int *ok)
{
	long maxstanzas = to->hist.requested ? to->hist.maxstanzas
		: (long)s->limits.history_default;
	int whole;
	/* the ring is all there is: what the account saw, gaps and all */
	replay_ring(s, m, to, hist_take(s, m, to, maxstanzas, -HUGE_VAL,
		m->hist_count, &whole), ok);
}

/* Catch-up from the room log: the request clamped, and the spans. */
static void replay_log(mm_state *s, const mm_membership *m,
		const mm_session *to, int *ok)
{
	const long max = (long)s->limits.history_max;
	long maxstanzas = to->hist.requested ? to->hist.maxstanzas
		: (long)s->limits.history_default;
	mm_action *a;
	size_t take;
	int whole = 0;
	if (maxstanzas < 0 || maxstanzas > max)
		maxstanzas = max;
	if (m->nspans == 0 || maxstanzas == 0)
		return;
	/* the ring is a hot cache in front of the log: its messages since
	 * the account's last (re-)join come without a gap; when the answer
	 * lies wholly in them, within the one open span, the ring gives it
	 * and the log is not read.  What the ring held from before a re-join
	 * never answers: the log has what was said while the account was out
	 * (other local accounts kept it), the ring does not. */
	if (m->nspans == 1 && m->spans[0].to < 0) {
		take = hist_take(s, m, to, maxstanzas, m->spans[0].from,
			m->hist_count - m->hist_break, &whole);
		if (whole) {
			replay_ring(s, m, to, take, ok);
			return;
		}
	}
	a = dec_push(s, MM_OP_REPLAY_LOG, ok);
	if (a == NULL)
		return;
	a->resource = dec_str(s, to->resource, ok);
	a->maxstanzas = maxstanzas;
	a->maxchars = to->hist.maxchars;
	a->seconds = to->hist.seconds;
	a->since = to->hist.since;
	a->now = to->hist_now > 0 ? to->hist_now : state_now(s);
	a->spans = m->spans;
	a->nspans = m->nspans;
}

/* The later-session sequence (§7.2): occupants, self last, then subject. */
static void replay_room(mm_state *s, const mm_membership *m,
		const mm_session *to, int *ok)
{
	unsigned codes = 0;
	MAP_EACH(&m->occupants, n)
		act_replay(s, to->resource, n->value, NULL, 0, ok);
	if (m->state != MM_JOINED)
		return; /* joining: the rest arrives live */
	if (!str_eq(to->nick, m->nick))
		codes |= MM_CODE_210;
	if (m->self) {
		act_replay(s, to->resource, m->self, to->join_id, codes, ok);
		/* the first session's news is not this one's */
		if (*ok)
			s->dec.actions[s->dec.n - 1].drop_codes = MM_CODE_201 | MM_CODE_210;
	} else {
		/* the room's was beyond the byte limits: a join ends with one */
		mm_action *a = dec_push(s, MM_OP_SELF_STUB, ok);
		if (a) {
			a->resource = dec_str(s, to->resource, ok);
			a->nick = dec_str(s, m->nick, ok);
			a->id = dec_str(s, to->join_id, ok);
			a->add_codes = codes;
			a->affiliation = dec_str(s, m->affiliation ? m->affiliation : "none", ok);
			a->role = m->role ? m->role : "participant";
		}
	}
	if (s->limits.log_history)
		replay_log(s, m, to, ok);
	else
		replay_history(s, m, to, ok);
	if (m->subject) {
		act_replay(s, to->resource, m->subject, NULL, 0, ok);
	} else if (m->subject_lost) {
		mm_action *a = dec_push(s, MM_OP_SUBJECT_STUB, ok);
		if (a)
			a->resource = dec_str(s, to->resource, ok);
	}
}

/* ---- the account's presence: the most available joined session ----------- */

static int show_rank(const char *show)
{
	if (show == NULL)
		return 1;
	if (strcmp(show, "chat") == 0)
		return 0;
	if (strcmp(show, "dnd") == 0)
		return 2;
	if (strcmp(show, "away") == 0)
		return 3;
	if (strcmp(show, "xa") == 0)
		return 4;
	return 1; /* unknown <show/>: as available */
}

/* The joined session whose presence the room should see, or NULL. */
static mm_session *best_session(mm_membership *m, const mm_session *skip)
{
	mm_session *best = NULL;
	size_t i;
	for (i = 0; i < m->nsessions; i++) {
		mm_session *ss = &m->sessions[i];
		if (ss == skip || ss->state != SS_JOINED)
			continue;
		if (best == NULL || ss->rank < best->rank
				|| (ss->rank == best->rank && ss->seq > best->seq))
			best = ss;
	}
	return best;
}

/* Show the room `best`'s presence, unless it shows that text already.
 * *shown gets a copy of what the room will show, when that changes. */
static void show_presence(mm_state *s, mm_membership *m, const mm_session *best,
		char **shown, int *ok)
{
	mm_action *a;
	if (m->shown && strcmp(m->shown, best->presence) == 0)
		return; /* same text from another device: nothing to tell the room */
	a = dec_push(s, MM_OP_SEND_PRESENCE, ok);
	if (a) {
		a->payload = dec_str(s, best->presence, ok);
		a->nick = dec_str(s, m->nick, ok);
	}
	if (*ok && (*shown = str_dup(best->presence)) == NULL)
		*ok = 0;
}

/* The room shows a session that is going away (skip): show the next best.
 * Returns the seq the room will show and in *shown the new text (or NULL
 * when it stays); the caller commits both. */
static uint64_t handover(mm_state *s, mm_membership *m, const mm_session *skip,
		char **shown, int *ok)
{
	mm_session *best;
	*shown = NULL;
	if (m->state != MM_JOINED || skip->seq != m->agg_seq)
		return m->agg_seq;
	best = best_session(m, skip);
	if (best == NULL || best->presence == NULL)
		return m->agg_seq;
	show_presence(s, m, best, shown, ok);
	return best->seq;
}

static void commit_shown(mm_membership *m, uint64_t seq, char *shown)
{
	m->agg_seq = seq;
	if (shown) {
		free(m->shown);
		m->shown = shown;
	}
}

/* ---- events from sessions ------------------------------------------------ */

/* Fill a new session from a join request; 0 on allocation failure. */
static int session_init(mm_state *s, mm_session *ss, const char *resource,
		const mm_join *req)
{
	memset(ss, 0, sizeof *ss);
	ss->resource = str_dup(resource);
	ss->nick = str_dup(req->nick);
	ss->rank = show_rank(req->show);
	ss->seq = s->seq + 1;
	ss->state = SS_ASKED;
	ss->hist.requested = req->history.requested;
	ss->hist.maxstanzas = req->history.requested ? req->history.maxstanzas : -1;
	ss->hist.maxchars = req->history.requested ? req->history.maxchars : -1;
	ss->hist.seconds = req->history.requested ? req->history.seconds : -1;
	ss->hist.since = req->history.requested ? req->history.since : -1;
	ss->hist_now = req->now;
	if (ss->resource == NULL || ss->nick == NULL || !dup_opt(req->id, &ss->join_id)
			|| !dup_opt(req->password, &ss->password)
			|| !dup_opt(req->presence, &ss->presence)) {
		session_free_fields(ss);
		return 0;
	}
	return 1;
}

mm_err mm_session_join(mm_state *s, const char *account, const char *resource,
		const char *room, const char *nick, const char *id,
		const char *password, mm_decision *out)
{
	mm_join req;
	memset(&req, 0, sizeof req);
	req.nick = nick;
	req.id = id;
	req.password = password;
	return mm_session_join_req(s, account, resource, room, &req, out);
}

/* Is the account on its way out (LEAVING or LEAVING_REJOIN)? */
static int leaving(const mm_membership *m)
{
	return m->state == MM_LEAVING || m->state == MM_LEAVING_REJOIN;
}

/*
 * A brand-new membership (NONE -ev-> JOINING or REJOINING): a session's
 * join (ev MM_EV_JOIN, resource set) or the account's own (MM_EV_RESTORE,
 * resource NULL: a fresh join, no session).
 */
static mm_err join_first(mm_state *s, const char *account, mm_account *a,
		const char *resource, const char *room, const mm_join *req,
		mm_mevent ev, mm_decision *out)
{
	mm_membership *m;
	mm_node *anode = NULL, *rnode = NULL;
	mm_action *act;
	int ok = 1, new_account = a == NULL;

	if (a && a->rooms.count >= s->limits.max_rooms)
		return MM_EROOMLIMIT;
	m = calloc(1, sizeof *m);
	if (m == NULL)
		return MM_ENOMEM;
	m->state = MM_NONE;
	m->room = str_dup(room);
	m->nick = str_dup(req->nick);
	/* the account's own join carries a plain presence */
	if (m->room == NULL || m->nick == NULL || !dup_opt(req->password, &m->password)
			|| !dup_opt(resource ? req->presence : "", &m->shown))
		goto nomem;
	if (resource) {
		if (!sessions_reserve(m) || !session_init(s, &m->sessions[0], resource, req))
			goto nomem;
		m->nsessions = 1;
	}
	if (new_account) {
		a = calloc(1, sizeof *a);
		if (a == NULL)
			goto nomem;
		anode = node_new(account, strlen(account), a);
		if (anode == NULL || !map_ready(&s->accounts))
			goto nomem;
	}
	if (!map_ready(&a->rooms))
		goto nomem;
	rnode = node_new(room, strlen(room), m);
	if (rnode == NULL)
		goto nomem;
	act = dec_push(s, MM_OP_SEND_JOIN, &ok);
	if (act) {
		act->nick = dec_str(s, req->nick, &ok);
		act->password = dec_str(s, req->password, &ok);
		act->from_request = resource != NULL;
	}
	if (!ok)
		goto nomem;
	/* commit: nothing below can fail */
	if (resource) {
		s->seq++;
		m->agg_seq = m->sessions[0].seq; /* the join carries the first presence */
	}
	if (new_account)
		map_link(&s->accounts, anode);
	map_link(&a->rooms, rnode);
	m->owner = a;
	m->account = map_find(&s->accounts, account)->key;
	membership_enter(s, account, m, ev);
	return dec_finish(s, out, 1, ok);
nomem:
	free(rnode);
	if (new_account && a) {
		free(anode);
		map_clear(&a->rooms, NULL, NULL);
		free(a);
	}
	membership_free(s, m);
	dec_finish(s, out, 0, 0);
	return MM_ENOMEM;
}

mm_err mm_session_join_req(mm_state *s, const char *account, const char *resource,
		const char *room, const mm_join *req, mm_decision *out)
{
	mm_account *a;
	mm_membership *m;
	mm_session *ss, fresh;
	char *shown = NULL;
	size_t nicklen;
	int ok = 1, leads = 0;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room)
			|| req == NULL || req->nick == NULL)
		return MM_EINVAL;
	mm_state_now(s, req->now);
	nicklen = strlen(req->nick);
	if (nicklen == 0 || nicklen > s->limits.max_nick_bytes)
		return MM_EINVAL;
	dec_room(s, room, &ok);
	if (!ok)
		return dec_finish(s, out, 0, ok);

	a = account_get(s, account);
	m = a ? map_get(&a->rooms, room) : NULL;
	if (m == NULL)
		return join_first(s, account, a, resource, room, req, MM_EV_JOIN, out);

	/* every state takes a join (see the table) */
	ss = session_find(m, resource);
	if (ss == NULL && m->nsessions >= s->limits.max_sessions)
		return MM_ESESSIONLIMIT;
	if (!session_init(s, &fresh, resource, req))
		return MM_ENOMEM;
	if (ss == NULL && !sessions_reserve(m)) {
		session_free_fields(&fresh);
		return MM_ENOMEM;
	}
	fresh.state = m->state == MM_JOINED ? SS_JOINED : SS_ASKED;
	if (ss) {
		/* it joins again: a full resync; it keeps its place, its IQs and
		 * the presence the room knows from it */
		fresh.niqs = ss->niqs;
		fresh.rank = ss->rank;
		fresh.seq = ss->seq;
		free(fresh.presence);
		fresh.presence = ss->presence;
		ss->presence = NULL;
	}
	/* build the decision against the new session, then attach it */
	if (!leaving(m))
		replay_room(s, m, &fresh, &ok);
	if (ss == NULL && m->state == MM_JOINED && fresh.presence) {
		/* a more available device (or as available, and newer) leads */
		mm_session *best = best_session(m, NULL);
		leads = best == NULL || fresh.rank <= best->rank;
		if (leads)
			show_presence(s, m, &fresh, &shown, &ok);
	}
	if (m->state == MM_REJOIN_WAIT) {
		/* an automatic re-join waits for its delay: this session asks now */
		mm_action *act = dec_push(s, MM_OP_SEND_JOIN, &ok);
		if (act) {
			act->nick = dec_str(s, req->nick, &ok);
			/* the password the account entered with: a later device's
			 * join may lack it, or carry another */
			act->password = dec_str(s, m->password ? m->password : req->password, &ok);
			act->from_request = 1;
		}
	}
	if (!ok) {
		if (ss) {
			ss->presence = fresh.presence;
			fresh.presence = NULL;
		}
		session_free_fields(&fresh);
		free(shown);
		return dec_finish(s, out, 0, ok);
	}
	/* commit */
	s->seq++;
	if (leads)
		commit_shown(m, fresh.seq, shown);
	if (ss) {
		session_free_fields(ss);
		*ss = fresh;
	} else {
		m->sessions[m->nsessions++] = fresh;
	}
	membership_enter(s, account, m, MM_EV_JOIN);
	return dec_finish(s, out, 1, ok);
}

static mm_err membership_end(mm_state *s, const char *account, mm_membership *m,
		mm_decision *out, int ok, mm_mevent ev, const char *event,
		const char *condition);

/* Number of sessions that are in the room from their client's view. */
static size_t active_sessions(const mm_membership *m)
{
	size_t i, c = 0;
	for (i = 0; i < m->nsessions; i++)
		if (m->sessions[i].state != SS_LEAVING)
			c++;
	return c;
}

/* Sessions in the room, other than ss, whose client is connected. */
static size_t connected_others(const mm_membership *m, const mm_session *ss)
{
	size_t i, c = 0;
	for (i = 0; i < m->nsessions; i++)
		if (&m->sessions[i] != ss && m->sessions[i].state != SS_LEAVING
				&& !m->sessions[i].unreachable)
			c++;
	return c;
}

/* The account leaves with the last connected session: the others, whose
 * clients are away, get their unavailable self-presence (stream management
 * delivers it when they come back). */
static void reflect_unreachable(mm_state *s, const mm_membership *m,
		const mm_session *ss, int *ok)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++)
		if (&m->sessions[i] != ss && m->sessions[i].state != SS_LEAVING)
			act_reflect_leave(s, m, m->sessions[i].resource, NULL, 0, ok);
}

static void detach_unreachable(mm_state *s, const char *account,
		mm_membership *m)
{
	size_t i;
	for (i = m->nsessions; i-- > 0;)
		if (m->sessions[i].state != SS_LEAVING && m->sessions[i].unreachable)
			session_detach(s, account, m, &m->sessions[i]);
}

mm_err mm_session_leave(mm_state *s, const char *account, const char *resource,
		const char *room, const char *id, mm_decision *out)
{
	mm_membership *m;
	mm_session *ss;
	uint64_t agg;
	char *shown;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	m = membership_get(s, account, room);
	ss = m ? session_find(m, resource) : NULL;
	if (ss == NULL)
		return dec_finish(s, out, 0, ok);
	dec_room(s, room, &ok);
	if (ss->state == SS_LEAVING)
		return dec_finish(s, out, 1, ok); /* already on its way out */

	if (connected_others(m, ss) > 0 || leaving(m)) {
		/* others stay in (or the account is leaving already): only this
		 * session sees itself leave */
		int last = m->state == MM_LEAVING_REJOIN && active_sessions(m) == 1;
		act_reflect_leave(s, m, resource, id, 0, &ok);
		agg = handover(s, m, ss, &shown, &ok);
		if (!ok) {
			free(shown);
			return dec_finish(s, out, 0, ok);
		}
		commit_shown(m, agg, shown);
		session_detach(s, account, m, ss);
		if (last) /* nobody waits to come back: just leave */
			membership_enter(s, account, m, MM_EV_LAST_LEAVE);
		return dec_finish(s, out, 1, ok);
	}

	if (mm_transition(m->state, MM_EV_LAST_LEAVE) == MM_NONE) {
		/* the account is out, waiting to join again: nothing to leave */
		act_reflect_leave(s, m, resource, id, 0, &ok);
		reflect_unreachable(s, m, ss, &ok);
		return membership_end(s, account, m, out, ok, MM_EV_LAST_LEAVE,
			"left", NULL);
	}

	/* last connected one: the account leaves; the room's answer goes to
	 * this session */
	act_simple(s, MM_OP_SEND_AS_ACCOUNT, &ok);
	reflect_unreachable(s, m, ss, &ok);
	if (!ok)
		return dec_finish(s, out, 0, ok);
	ss->state = SS_LEAVING;
	detach_unreachable(s, account, m);
	membership_enter(s, account, m, MM_EV_LAST_LEAVE);
	return dec_finish(s, out, 1, ok);
}

/* The session is in the room and its join completed. */
static mm_session *joined_session(mm_state *s, const char *account,
		const char *room, const char *resource, mm_membership **mp)
{
	mm_membership *m = membership_get(s, account, room);
	mm_session *ss = m ? session_find(m, resource) : NULL;
	*mp = m;
	if (ss == NULL || ss->state != SS_JOINED || m->state != MM_JOINED)
		return NULL;
	return ss;
}

mm_err mm_session_presence(mm_state *s, const char *account,
		const char *resource, const char *room, const char *nick,
		const char *id, const char *show, const char *presence,
		mm_decision *out)
{
	mm_membership *m;
	mm_session *ss, *best, saved;
	char *copy = NULL, *shown = NULL;
	int ok = 1, send_own;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	if (nick && (*nick == '\0' || strlen(nick) > s->limits.max_nick_bytes))
		return MM_EINVAL;
	ss = joined_session(s, account, room, resource, &m);
	dec_room(s, room, &ok);
	if (ss == NULL) {
		int member = m != NULL && session_find(m, resource) != NULL;
		/* a session in the membership must never speak for itself: the
		 * room would take its presence for a join of its own */
		if (member)
			act_simple(s, MM_OP_DROP, &ok);
		return dec_finish(s, out, member, ok);
	}
	if (!dup_opt(presence, &copy))
		return dec_finish(s, out, 0, 0);

	/* try the update, decide, and undo it if the decision cannot be made */
	saved = *ss;
	ss->rank = show_rank(show);
	ss->seq = s->seq + 1;
	ss->presence = copy;
	best = best_session(m, NULL);
	/* a nick change is always the room's business; so is a new text */
	send_own = (nick && !str_eq(nick, m->nick)) || (best == ss
		&& !(copy && m->shown && strcmp(copy, m->shown) == 0));
	if (send_own) {
		act_simple(s, MM_OP_SEND_AS_ACCOUNT, &ok);
		if (ok && copy && (shown = str_dup(copy)) == NULL)
			ok = 0;
	} else if (best->seq != m->agg_seq && best->presence) {
		show_presence(s, m, best, &shown, &ok);
	}
	if (ok && s->dec.n == 0)
		act_simple(s, MM_OP_DROP, &ok);
	if (!ok) {
		*ss = saved;
		free(copy);
		free(shown);
		return dec_finish(s, out, 0, ok);
	}
	/* commit */
	free(saved.presence);
	s->seq++;
	if (send_own) {
		commit_shown(m, ss->seq, shown);
		pending_add(s, m, id, resource);
	} else if (best->presence) {
		commit_shown(m, best->seq, shown);
	}
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_message(mm_state *s, const char *account,
		const char *resource, const char *room, const char *nick,
		mm_msg_type type, const char *id, mm_decision *out)
{
	mm_membership *m;
	mm_session *ss;
	size_t i;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	ss = joined_session(s, account, room, resource, &m);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);
	dec_room(s, room, &ok);
	if (type == MM_MSG_ERROR) {
		/* a bounce from a session must never become the account's bounce:
		 * the room would kick the account for it */
		act_simple(s, MM_OP_DROP, &ok);
		return dec_finish(s, out, 1, ok);
	}
	if (ss == NULL)
		return dec_finish(s, out, 0, ok);
	if (type == MM_MSG_GROUPCHAT ? nick != NULL : nick == NULL)
		return dec_finish(s, out, 0, ok); /* groupchat to an occupant, PM to the room */
	if (type == MM_MSG_HEADLINE)
		return dec_finish(s, out, 0, ok);
	act_simple(s, MM_OP_SEND_AS_ACCOUNT, &ok);
	if (type != MM_MSG_GROUPCHAT) {
		/* a private message (§7.5): the account's other devices see it too,
		 * as XEP-0280 carbons of what this one sent */
		for (i = 0; i < m->nsessions; i++) {
			const mm_session *o = &m->sessions[i];
			if (o != ss && o->state == SS_JOINED) {
				mm_action *a = dec_push(s, MM_OP_CARBON, &ok);
				if (a)
					a->resource = dec_str(s, o->resource, &ok);
			}
		}
	}
	if (ok)
		pending_add(s, m, id, resource);
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_iq(mm_state *s, const char *account, const char *resource,
		const char *room, const char *nick, const char *id,
		const char *queryid, int is_ping, double now, mm_decision *out)
{
	mm_membership *m;
	mm_session *ss;
	mm_node *n;
	mm_action *a;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room) || id == NULL)
		return MM_EINVAL;
	ss = joined_session(s, account, room, resource, &m);
	if (ss == NULL)
		return dec_finish(s, out, 0, ok);
	if (ss->niqs >= s->limits.max_iqs)
		return MM_EIQLIMIT;
	n = iq_new(s, account, room, nick, resource, id, queryid,
		is_ping && nick != NULL && str_eq(nick, m->nick), now);
	if (n == NULL)
		return MM_ENOMEM;
	dec_room(s, room, &ok);
	a = dec_push(s, MM_OP_SEND_AS_ACCOUNT, &ok);
	if (a)
		a->id = dec_str(s, n->key, &ok);
	if (!ok) {
		iq_free(n->value);
		free(n);
		return dec_finish(s, out, 0, 0);
	}
	map_link(&s->iqs, n);
	ss->niqs++;
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_gone(mm_state *s, const char *account, const char *resource,
		mm_decision *out)
{
	mm_account *a;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource))
		return MM_EINVAL;
	a = account_get(s, account);
	if (a == NULL)
		return dec_finish(s, out, 1, ok);
	/* decide first, for every room; then detach */
	MAP_EACH(&a->rooms, n) {
		mm_membership *m = n->value;
		mm_session *ss = session_find(m, resource);
		m->next_shown = NULL;
		if (ss) {
			dec_room(s, m->room, &ok);
			m->next_agg = handover(s, m, ss, &m->next_shown, &ok);
		}
	}
	if (!ok) {
		MAP_EACH(&a->rooms, n) {
			mm_membership *m = n->value;
			free(m->next_shown);
			m->next_shown = NULL;
		}
		return dec_finish(s, out, 0, ok);
	}
	MAP_EACH(&a->rooms, n) {
		mm_membership *m = n->value;
		mm_session *ss = session_find(m, resource);
		if (ss) {
			int waited = ss->state != SS_LEAVING;
			commit_shown(m, m->next_agg, m->next_shown);
			m->next_shown = NULL;
			session_detach(s, account, m, ss);
			/* nobody waits to come back any more: just leave */
			if (m->state == MM_LEAVING_REJOIN && waited && active_sessions(m) == 0)
				membership_enter(s, account, m, MM_EV_LAST_LEAVE);
		}
	}
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_reachable(mm_state *s, const char *account,
		const char *resource, int reachable)
{
	mm_account *a;
	if (!nonempty(account) || !nonempty(resource))
		return MM_EINVAL;
	a = account_get(s, account);
	if (a == NULL)
		return MM_OK;
	MAP_EACH(&a->rooms, n) {
		mm_session *ss = session_find(n->value, resource);
		if (ss)
			ss->unreachable = !reachable;
	}
	return MM_OK;
}

/* ---- events from rooms --------------------------------------------------- */

/* Join again as the account: caches go, sessions wait for the sequence.
 * The caller takes the transition. */
static void membership_restart(mm_state *s, mm_membership *m)
{
	size_t i;
	membership_clear_cache(s, m);
	free(m->shown);
	m->shown = str_dup(""); /* the fresh join's plain presence (NULL: unknown) */
	/* the room's history on the re-join repeats what the account saw */
	m->skip_seen = m->last_id != NULL || m->last_stamp > 0;
	/* and what was said while it was out may be more than that history */
	m->hist_break = m->hist_count;
	for (i = 0; i < m->nsessions; i++) {
		mm_session *ss = &m->sessions[i];
		ss->state = SS_WAITING;
		free(ss->join_id);
		ss->join_id = NULL;
	}
}

static void act_send_join(mm_state *s, const char *nick, const char *password,
		int *ok)
{
	mm_action *a = dec_push(s, MM_OP_SEND_JOIN, ok);
	if (a) {
		a->nick = dec_str(s, nick, ok);
		a->password = dec_str(s, password, ok);
	}
}

/* The account joins again by itself: ask for what was said while it was
 * out, since the last message it saw. */
static void act_rejoin(mm_state *s, const mm_membership *m, int *ok)
{
	act_send_join(s, m->nick, m->password, ok);
	if (*ok)
		s->dec.actions[s->dec.n - 1].since = m->last_stamp;
}

static void act_rejoin_later(mm_state *s, unsigned delay, int *ok)
{
	mm_action *a = dec_push(s, MM_OP_REJOIN_LATER, ok);
	if (a)
		a->delay = delay;
}

/*
 * LEAVING_REJOIN's way to JOINING, once its decision is made: the sessions
 * that left go with the caches, and the account takes the nick and the
 * password (owned, either may be NULL for the password) that the first
 * session waiting asked with.  Cannot fail.
 */
static void rejoin_as_waiters(mm_state *s, const char *account,
		mm_membership *m, char *nick, char *password)
{
	size_t i;
	mark_dirty(s, account, 2);
	for (i = m->nsessions; i-- > 0;)
		if (m->sessions[i].state == SS_LEAVING)
			session_detach(s, account, m, &m->sessions[i]);
	membership_clear_cache(s, m);
	free(m->nick);
	m->nick = nick;
	free(m->password);
	m->password = password;
}

/*
 * The membership takes the transition for ev out of a state that waited on
 * the room, to MM_NONE (it ends) or, from LEAVING_REJOIN, to JOINING: the
 * account joins again as the first session waiting asked.
 */
static mm_err membership_end(mm_state *s, const char *account, mm_membership *m,
		mm_decision *out, int ok, mm_mevent ev, const char *event,
		const char *condition)
{
	size_t i;
	act_event(s, event, condition, &ok);
	if (!ok)
		return dec_finish(s, out, 0, ok);
	if (mm_transition(m->state, ev) == MM_JOINING) {
		mm_session *first = NULL;
		char *nick, *pw = NULL;
		for (i = 0; i < m->nsessions; i++)
			if (m->sessions[i].state != SS_LEAVING) {
				first = &m->sessions[i];
				break;
			}
		nick = first ? str_dup(first->nick) : NULL;
		if (nick == NULL || !dup_opt(first->password, &pw)) {
			free(nick);
			return dec_finish(s, out, 0, 0);
		}
		act_send_join(s, nick, pw, &ok);
		if (!ok) {
			free(nick);
			free(pw);
			return dec_finish(s, out, 0, 0);
		}
		/* commit: drop leavers and caches, join again as the waiters asked */
		rejoin_as_waiters(s, account, m, nick, pw);
		membership_enter(s, account, m, ev);
		return dec_finish(s, out, 1, ok);
	}
	mark_dirty(s, account, 2);
	membership_remove(s, account, m, ev);
	return dec_finish(s, out, 1, ok);
}

/* Conditions worth trying a re-join again for: the room may come back. */
static int transient_condition(const char *c)
{
	static const char *const list[] = {
		"remote-server-not-found", "remote-server-timeout", "service-unavailable",
		"internal-server-error", "resource-constraint", "recipient-unavailable",
		NULL
	};
	size_t i;
	for (i = 0; c && list[i]; i++)
		if (strcmp(c, list[i]) == 0)
			return 1;
	return 0;
}

static unsigned backoff(const mm_state *s, unsigned retries)
{
	unsigned shift = retries < 6 ? retries : 6;
	size_t d = s->limits.rejoin_delay << shift;
	return d > 3600 ? 3600u : (unsigned)d;
}

/*
 * Put pool node pn (fresh: not in the pool yet) in m's cache entry *slot
 * (the self-presence or the subject), the ring making room for it; when
 * it does not fit, the entry is emptied rather than left stale.  Whether
 * it was kept.  Cannot fail.
 */
static int cache_replace(mm_state *s, mm_membership *m, mm_node **slot,
		mm_node *pn, int fresh)
{
	int kept;
	/* held while the ring makes room: a message that goes may be it */
	payload_ref(s, pn, fresh);
	kept = cache_make_room(s, m, pn, *slot);
	if (kept)
		cache_count(s, m, pn);
	cache_drop(s, m, *slot);
	*slot = kept ? pn : NULL;
	if (!kept)
		payload_unref(s, pn);
	return kept;
}

/* The self-presence, kept; beyond the byte limits a later session gets a
 * stub (SELF_STUB) rather than a stale one. */
static void self_keep(mm_state *s, mm_membership *m, mm_node *pn, int fresh)
{
	(void)cache_replace(s, m, &m->self, pn, fresh);
}

/* The self-presence of an available account: join completes or updates. */
static mm_err self_available(mm_state *s, const char *account, mm_membership *m,
		const char *nick, const mm_presence *p, mm_decision *out)
{
	char *nn = NULL, *aff = NULL;
	mm_node *pn = NULL;
	int fresh = 0, ok = 1, completes = m->state != MM_JOINED;
	size_t i;

	/* a self-presence from the room's own JID leaves the nick alone */
	if (nonempty(nick) && !str_eq(nick, m->nick) && (nn = str_dup(nick)) == NULL)
		return dec_finish(s, out, 0, 0);
	/* a known token or none: a room cannot make the core keep more */
	if (p->affiliation && (aff = str_dup(known_token(p->affiliation,
			affiliations, "none"))) == NULL)
		goto nomem;
	if (p->payload && (pn = payload_prepare(s, p->payload, p->payload_handle, &fresh)) == NULL)
		goto nomem;
	for (i = 0; i < m->nsessions; i++) {
		const mm_session *ss = &m->sessions[i];
		unsigned codes = 0;
		const char *id = NULL;
		const char *accnick = nn ? nn : m->nick;
		if (completes && ss->state == SS_ASKED) {
			/* completes every waiter's join, each with its own id */
			id = ss->join_id;
			if (!(p->status & MM_STATUS_210) && !str_eq(ss->nick, accnick))
				codes |= MM_CODE_210;
		}
		act_deliver(s, ss->resource, id, codes, &ok);
	}
	if (completes)
		act_event(s, "joined", NULL, &ok);
	if (!ok)
		goto nomem;
	/* commit */
	if (pn)
		self_keep(s, m, pn, fresh);
	if (p->role)
		m->role = known_token(p->role, roles, "participant");
	if (nn) {
		free(m->nick);
		m->nick = nn;
	}
	if (aff) {
		free(m->affiliation);
		m->affiliation = aff;
	}
	if (completes) {
		mark_dirty(s, account, 2);
		m->retries = 0;
		for (i = 0; i < m->nsessions; i++)
			m->sessions[i].state = SS_JOINED;
	}
	membership_enter(s, account, m, MM_EV_SELF);
	return dec_finish(s, out, 1, ok);
nomem:
	if (fresh)
		free(pn);
	free(nn);
	free(aff);
	return dec_finish(s, out, 0, 0);
}

/* The leaving sessions learn that they are out: the room's own answer
 * (deliver set) or their unavailable self-presence. */
static void leavers_out(mm_state *s, const mm_membership *m, int deliver,
		int *ok)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++) {
		if (m->sessions[i].state != SS_LEAVING)
			continue;
		if (deliver)
			act_deliver(s, m->sessions[i].resource, NULL, 0, ok);
		else
			act_reflect_leave(s, m, m->sessions[i].resource, NULL, 0, ok);
	}
}

/* The room answered a join (or a leave) with an error. */
static mm_err join_failed(mm_state *s, const char *account, mm_membership *m,
		const mm_presence *p, mm_decision *out, int ok)
{
	size_t i;
	mm_mevent ev = transient_condition(p->condition) ? MM_EV_ERROR_TRANSIENT
		: MM_EV_ERROR;
	int next = mm_transition(m->state, ev);
	if (next == MM_REFUSED)
		return dec_finish(s, out, 1, ok); /* nobody asked: drop */
	if (leaving(m)) {
		leavers_out(s, m, 0, &ok);
		return membership_end(s, account, m, out, ok, ev, "left", NULL);
	}
	if (next == MM_REJOIN_WAIT) {
		/* the room may come back: try again later, each time later */
		act_event(s, "rejoining", p->condition, &ok);
		act_rejoin_later(s, backoff(s, m->retries + 1), &ok);
		if (!ok)
			return dec_finish(s, out, 0, ok);
		m->retries++;
		membership_enter(s, account, m, ev);
		return dec_finish(s, out, 1, ok);
	}
	/* each session that asked gets the answer, with its own id */
	for (i = 0; i < m->nsessions; i++)
		if (m->sessions[i].state == SS_ASKED)
			act_deliver(s, m->sessions[i].resource, m->sessions[i].join_id, 0, &ok);
	return membership_end(s, account, m, out, ok, ev, "removed",
		p->condition ? p->condition : "undefined-condition");
}

/* Why the room removed the account, for logs and counters. */
static const char *removal_reason(const mm_presence *p)
{
	if (p->destroyed)
		return "destroyed";
	if (p->status & MM_STATUS_301)
		return "banned";
	if (p->status & MM_STATUS_307)
		return "kicked";
	if (p->status & MM_STATUS_321)
		return "affiliation-changed";
	if (p->status & MM_STATUS_322)
		return "members-only";
	return "removed";
}

mm_err mm_room_presence(mm_state *s, const char *account, const char *room,
		const char *nick, const mm_presence *p, mm_decision *out)
{
	mm_membership *m;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room) || p == NULL)
		return MM_EINVAL;
	m = membership_get(s, account, room);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);
	dec_room(s, room, &ok);

	if (p->type == MM_PRES_ERROR) {
		mm_pending *pd = pending_find(s, m, p->id);
		if (pd) {
			act_deliver(s, pd->resource, NULL, 0, &ok);
			if (ok)
				pending_free(pd);
			return dec_finish(s, out, 1, ok);
		}
		return join_failed(s, account, m, p, out, ok);
	}

	if (p->status & MM_STATUS_110) {
		mm_mevent ev;
		int next;
		if (p->type != MM_PRES_UNAVAILABLE) {
			/* refused while leaving: a join in flight answered first */
			if (mm_transition(m->state, MM_EV_SELF) == MM_REFUSED)
				return dec_finish(s, out, 1, ok);
			return self_available(s, account, m, nick, p, out);
		}
		if ((p->status & MM_STATUS_303) && nonempty(p->new_nick) && !leaving(m)) {
			char *nn = str_dup(p->new_nick);
			if (nn == NULL)
				return dec_finish(s, out, 0, 0);
			deliver_all(s, m, &ok);
			if (!ok) {
				free(nn);
				return dec_finish(s, out, 0, ok);
			}
			free(m->nick);
			m->nick = nn;
			mark_dirty(s, account, 2);
			return dec_finish(s, out, 1, ok);
		}
		/* left, kicked, banned, removed, destroyed: the end; shut down or
		 * a technical problem: the account comes back */
		ev = MM_EV_OUT;
		if ((p->status & (MM_STATUS_332 | MM_STATUS_333)) && !p->destroyed
				&& !(p->status & (MM_STATUS_301 | MM_STATUS_307
						| MM_STATUS_321 | MM_STATUS_322)))
			ev = (p->status & MM_STATUS_332) ? MM_EV_SHUTDOWN : MM_EV_TECHNICAL;
		if (leaving(m)) {
			leavers_out(s, m, 1, &ok);
			return membership_end(s, account, m, out, ok, ev, "left", NULL);
		}
		deliver_all(s, m, &ok);
		next = mm_transition(m->state, ev);
		if (next == MM_NONE)
			return membership_end(s, account, m, out, ok, ev, "removed",
				removal_reason(p));
		act_event(s, "rejoining", ev == MM_EV_SHUTDOWN ? "system-shutdown"
			: "technical-problem", &ok);
		if (next == MM_REJOIN_WAIT)
			act_rejoin_later(s, backoff(s, 0), &ok);
		else
			act_rejoin(s, m, &ok);
		if (!ok)
			return dec_finish(s, out, 0, ok);
		membership_restart(s, m);
		m->retries = 0;
		membership_enter(s, account, m, ev);
		return dec_finish(s, out, 1, ok);
	}

	/* another occupant (or the room itself) */
	if (leaving(m))
		return dec_finish(s, out, 1, ok);
	deliver_all_ref(s, m, &ok);
	if (!ok || nick == NULL)
		return dec_finish(s, out, 1, ok);
	{
		mm_node *on = map_find(&m->occupants, nick);
		if (p->type == MM_PRES_UNAVAILABLE) {
			if (on) {
				cache_drop(s, m, on->value);
				map_unlink(&m->occupants, on);
				free(on);
			}
		} else if (on && p->payload) {
			int fresh;
			mm_node *old = on->value;
			mm_node *pn = payload_prepare(s, p->payload, p->payload_handle, &fresh);
			if (pn == NULL)
				return dec_finish(s, out, 0, 0);
			if (pn != old && cache_fits(s, m, pn, old)) {
				cache_take(s, m, pn, fresh);
				on->value = pn;
			} else if (pn != old) {
				/* beyond the byte limits: better no entry than a stale one */
				if (fresh)
					free(pn);
				map_unlink(&m->occupants, on);
				free(on);
			}
			if (pn != old)
				cache_drop(s, m, old);
		} else if (p->payload && m->occupants.count < s->limits.max_occupants) {
			int fresh;
			mm_node *pn = payload_prepare(s, p->payload, p->payload_handle, &fresh);
			mm_node *nn;
			if (pn == NULL)
				return dec_finish(s, out, 0, 0);
			if (cache_fits(s, m, pn, NULL)) {
				nn = map_ready(&m->occupants) ? node_new(nick, strlen(nick), pn) : NULL;
				if (nn == NULL) {
					if (fresh)
						free(pn);
					return dec_finish(s, out, 0, 0);
				}
				cache_take(s, m, pn, fresh);
				map_link(&m->occupants, nn);
			} else if (fresh) {
				free(pn);
			}
		}
		/* past max_occupants or the byte limits the presence is still
		 * delivered, not cached */
	}
	return dec_finish(s, out, 1, ok);
}

/* The ring's oldest message goes (there is one). */
static void hist_drop_oldest(mm_state *s, mm_membership *m)
{
	cache_drop(s, m, m->hist[m->hist_head].payload);
	free(m->hist[m->hist_head].sid);
	m->hist[m->hist_head].sid = NULL;
	m->hist_head = (m->hist_head + 1) % s->limits.history_size;
	m->hist_count--;
	if (m->hist_break > 0)
		m->hist_break--;
}

/* Keep a room message for catch-up and as the last one seen; 0 on
 * allocation failure, with nothing changed. */
static int hist_push(mm_state *s, const char *account, mm_membership *m,
		const mm_message *msg)
{
	const size_t cap = s->limits.history_size;
	mm_node *pn;
	mm_hist *slot;
	char *id = NULL, *sid = NULL;
	int fresh;
	if (m->hist == NULL) {
		m->hist = calloc(cap, sizeof *m->hist);
		if (m->hist == NULL)
			return 0;
	}
	if (msg->stanza_id) {
		/* the id changes with every message: reuse the buffer when it fits */
		size_t len = strlen(msg->stanza_id) + 1;
		if (m->last_id == NULL || m->last_id_cap < len) {
			id = malloc(len);
			if (id == NULL)
				return 0;
		}
		if ((sid = malloc(len)) == NULL) {
			free(id);
			return 0;
		}
		memcpy(sid, msg->stanza_id, len);
	}
	pn = payload_prepare(s, msg->payload, msg->payload_handle, &fresh);
	if (pn == NULL) {
		free(id);
		free(sid);
		return 0;
	}
	/* held while the oldest make room: one of them may be this text */
	payload_ref(s, pn, fresh);
	while (m->hist_count == cap || (m->hist_count > 0 && !cache_fits(s, m, pn, NULL)))
		hist_drop_oldest(s, m); /* full, or beyond the byte limits */
	if (cache_fits(s, m, pn, NULL)) {
		slot = &m->hist[(m->hist_head + m->hist_count) % cap];
		slot->payload = pn;
		slot->stamp = msg->stamp;
		slot->sid = sid;
		m->hist_count++;
		cache_count(s, m, pn);
	} else {
		/* too big even alone: not kept (and the emptied ring leaves no
		 * gap in what later sessions get); it still counts as seen */
		payload_unref(s, pn);
		free(sid);
	}
	if (msg->stanza_id) {
		size_t len = strlen(msg->stanza_id) + 1;
		if (id) {
			free(m->last_id);
			m->last_id = id;
			m->last_id_cap = len;
		}
		memcpy(m->last_id, msg->stanza_id, len);
	}
	if (msg->stamp > m->last_stamp)
		m->last_stamp = msg->stamp;
	/* once per flush is enough: the flush writes the newest */
	if (!m->seen_dirty)
		m->seen_dirty = mark_dirty(s, account, 1);
	return 1;
}

/* The IQ a XEP-0313 result message belongs to, or NULL. */
static mm_iq *iq_by_queryid(const mm_state *s, const char *account,
		const char *room, const char *queryid)
{
	MAP_EACH(&s->iqs, n) {
		mm_iq *q = n->value;
		if (q->queryid && strcmp(q->queryid, queryid) == 0
				&& strcmp(q->account, account) == 0 && strcmp(q->room, room) == 0)
			return q;
	}
	return NULL;
}

mm_err mm_room_message(mm_state *s, const char *account, const char *room,
		const char *nick, const mm_message *msg, mm_decision *out)
{
	mm_membership *m;
	size_t i;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room) || msg == NULL)
		return MM_EINVAL;
	m = membership_get(s, account, room);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);
	/* no message ends a membership: its own copy of the room outlives
	 * the decision (saves copying it on every message) */
	s->dec_room = m->room;

	if (msg->queryid) {
		/* an archive result: only the session that asked */
		mm_iq *q = iq_by_queryid(s, account, room, msg->queryid);
		if (q) {
			act_deliver(s, q->resource, NULL, 0, &ok);
			return dec_finish(s, out, 1, ok);
		}
	}

	switch (msg->type) {
	case MM_MSG_ERROR: {
		mm_pending *pd = pending_find(s, m, msg->id);
		if (pd) {
			act_deliver(s, pd->resource, NULL, 0, &ok);
			if (ok)
				pending_free(pd);
		}
		return dec_finish(s, out, 1, ok); /* unclaimed errors: drop */
	}
	case MM_MSG_GROUPCHAT:
		if (leaving(m))
			return dec_finish(s, out, 1, ok);
		if (m->skip_seen) {
			/* back after a restart: the room's history up to the last
			 * message seen is old news; the subject ends the history */
			if (!msg->delayed || (msg->has_subject && !msg->has_body)) {
				m->skip_seen = 0;
			} else if ((msg->stanza_id && m->last_id
					&& strcmp(msg->stanza_id, m->last_id) == 0)
					|| (m->last_stamp > 0 && msg->stamp < m->last_stamp)) {
				return dec_finish(s, out, 1, ok);
			}
		}
		deliver_all_ref(s, m, &ok);
		if (ok && msg->has_subject && !msg->has_body && msg->payload) {
			/* it ends a later session's join sequence: kept before the
			 * ring, within the byte limits */
			int fresh;
			mm_node *pn = payload_prepare(s, msg->payload, msg->payload_handle, &fresh);
			if (pn == NULL) {
				ok = 0;
			} else if (pn != m->subject) {
				/* beyond them even with the ring gone, a later session
				 * gets an empty one (SUBJECT_STUB) */
				m->subject_lost = !cache_replace(s, m, &m->subject, pn, fresh);
			}
		}
		if (ok && msg->has_body && msg->payload)
			ok = hist_push(s, account, m, msg);
		return dec_finish(s, out, 1, ok);
	case MM_MSG_CHAT:
	case MM_MSG_NORMAL:
	case MM_MSG_HEADLINE:
	default:
		/* invitations and other notices from the room itself are the
		 * server's to deliver as usual */
		if (nick == NULL || msg->type == MM_MSG_HEADLINE)
			return dec_finish(s, out, 0, ok);
		/* a private message from an occupant (§7.5) */
		for (i = 0; i < m->nsessions; i++)
			if (m->sessions[i].state == SS_JOINED)
				act_deliver(s, m->sessions[i].resource, NULL, 0, &ok);
		return dec_finish(s, out, 1, ok);
	}
}

static int ping_schedule(mm_state *s, const char *host, unsigned delay);

mm_err mm_room_iq(mm_state *s, const char *account, const char *room,
		const char *nick, const char *id, int is_error, const char *condition,
		mm_decision *out)
{
	mm_node *n;
	mm_iq *q;
	mm_membership *m;
	size_t i;
	int ok = 1, fell_out;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room))
		return MM_EINVAL;
	n = map_find(&s->iqs, id);
	q = n ? n->value : NULL;
	/* only the JID the IQ went to can answer it */
	if (q == NULL || strcmp(q->account, account) != 0 || strcmp(q->room, room) != 0
			|| !str_eq(q->nick, nick))
		return dec_finish(s, out, 0, ok);
	m = membership_get(s, account, room);
	dec_room(s, room, &ok);
	if (q->resource)
		act_deliver(s, q->resource, q->orig_id, 0, &ok);
	fell_out = q->self_ping && is_error && condition
		&& strcmp(condition, "not-acceptable") == 0
		&& m != NULL && mm_transition(m->state, MM_EV_FELL_OUT) != MM_REFUSED;
	if (fell_out) {
		/* XEP-0410: the room no longer knows the account; every session
		 * learns it, and the account joins again */
		for (i = 0; i < m->nsessions; i++)
			if (m->sessions[i].state != SS_LEAVING)
				act_reflect_leave(s, m, m->sessions[i].resource, NULL,
					MM_CODE_333, &ok);
		act_event(s, "rejoining", "not-acceptable", &ok);
		act_rejoin(s, m, &ok);
	}
	if (!fell_out && q->resource == NULL && m != NULL) {
		/* the module's ping: a link that is down gets asked again */
		if (is_error && transient_condition(condition)) {
			mm_action *a = dec_push(s, MM_OP_PING_LATER, &ok);
			if (a)
				a->delay = backoff(s, m->ping_retries);
		}
	}
	if (!ok)
		return dec_finish(s, out, 0, ok);
	if (!fell_out && q->resource == NULL && m != NULL && is_error
			&& transient_condition(condition)) {
		/* mm_tick() asks again; first step of the commit, the only one
		 * that can fail */
		const char *at = strchr(room, '@');
		if (!ping_schedule(s, at ? at + 1 : room, backoff(s, m->ping_retries)))
			return dec_finish(s, out, 0, 0);
	}
	if (q->resource == NULL && m != NULL)
		m->ping_retries = is_error && transient_condition(condition)
			? m->ping_retries + 1 : 0;
	iq_forget(s, n);
	if (fell_out) {
		membership_restart(s, m);
		m->retries = 0;
		membership_enter(s, account, m, MM_EV_FELL_OUT);
	}
	return dec_finish(s, out, 1, ok);
}

/* ---- requests ------------------------------------------------------------ */

/* A count a client sent: NaN absent (-1), negative nothing (0), and no
 * conversion of a double a long cannot hold. */
static long client_count(double v)
{
	if (v != v)
		return -1;
	if (v <= 0)
		return 0;
	if (v >= (double)LONG_MAX)
		return LONG_MAX;
	return (long)v;
}

void mm_join_history(mm_join *req, double maxstanzas, double maxchars,
		double seconds, double since)
{
	req->history.requested = 1;
	req->history.maxstanzas = client_count(maxstanzas);
	req->history.maxchars = client_count(maxchars);
	req->history.seconds = seconds != seconds ? -1 : seconds < 0 ? 0 : seconds;
	req->history.since = since != since ? -1 : since;
}

/* ---- JIDs ----------------------------------------------------------------- */

#define JID_PART_MAX 1023

/*
 * What Prosody's router does to a JID part (util.encodings built on ICU,
 * as Debian's Prosody is): the ICU stringprep profile, unassigned code
 * points allowed, at most JID_PART_MAX bytes in and out.  Writes the
 * result, NUL-terminated, to out (JID_PART_MAX + 1 bytes); returns its
 * length or -1 when the part is refused.  Profiles are opened once.
 */
static int part_prep(UStringPrepProfileType type, const char *in, size_t len,
		char *out)
{
	static UStringPrepProfile *profiles[3];
	static const UStringPrepProfileType types[3] = {
		USPREP_RFC3491_NAMEPREP, USPREP_RFC3920_NODEPREP,
		USPREP_RFC3920_RESOURCEPREP
	};
	UChar u[JID_PART_MAX + 1], prepped[JID_PART_MAX + 1];
	int32_t ulen = 0, plen, olen = 0;
	UErrorCode err = U_ZERO_ERROR;
	UStringPrepProfile *profile = NULL;
	size_t k;

	if (len == 0 || len > JID_PART_MAX)
		return -1;
	for (k = 0; k < 3; k++) {
		if (types[k] != type)
			continue;
		if (profiles[k] == NULL)
			profiles[k] = usprep_openByType(type, &err);
		profile = profiles[k];
	}
	if (profile == NULL || U_FAILURE(err))
		return -1;
	u_strFromUTF8(u, JID_PART_MAX + 1, &ulen, in, (int32_t)len, &err);
	if (U_FAILURE(err))
		return -1;
	plen = usprep_prepare(profile, u, ulen, prepped, JID_PART_MAX + 1,
		USPREP_ALLOW_UNASSIGNED, NULL, &err);
	if (U_FAILURE(err))
		return -1;
	u_strToUTF8(out, JID_PART_MAX + 1, &olen, prepped, plen, &err);
	if (U_FAILURE(err) || olen <= 0 || olen > JID_PART_MAX)
		return -1;
	out[olen] = '\0';
	return (int)olen;
}

/*
 * An IP literal, strictly: "[...]" holding an IPv6 address, or a name of
 * digits and dots only, which must then be an IPv4 address (no DNS name is
 * all digits: RFC 1123 2.1, RFC 3696 2).  1: a valid literal; 0: not a
 * literal; -1: a malformed one.
 */
static int ip_literal(const char *d, size_t len)
{
	unsigned char buf[16];
	char tmp[64];
	size_t i;
	if (len > 0 && (d[0] == '[' || d[len - 1] == ']')) {
		if (len < 3 || d[0] != '[' || d[len - 1] != ']' || len - 2 >= sizeof tmp)
			return -1;
		memcpy(tmp, d + 1, len - 2);
		tmp[len - 2] = '\0';
		return inet_pton(AF_INET6, tmp, buf) == 1 ? 1 : -1;
	}
	for (i = 0; i < len; i++)
		if (d[i] != '.' && (d[i] < '0' || d[i] > '9'))
			return 0;
	if (len >= sizeof tmp)
		return -1;
	memcpy(tmp, d, len);
	tmp[len] = '\0';
	return inet_pton(AF_INET, tmp, buf) == 1 ? 1 : -1;
}

mm_err mm_jid_normalize(const char *jid, char *out, size_t outsize)
{
	const char *at, *host, *host_end, *slash;
	char node[JID_PART_MAX + 1], domain[JID_PART_MAX + 1], res[JID_PART_MAX + 1];
	int nodelen = -1, domlen, reslen = -1, ip;
	size_t len, need, i, hl;

	if (jid == NULL || out == NULL)
		return MM_EINVAL;
	/* split as util.jid.split does: node@host/resource, node and host
	 * without '@' or '/', a resource of at least one character */
	len = strlen(jid);
	at = NULL;
	for (i = 0; i < len && jid[i] != '/'; i++)
		if (jid[i] == '@') {
			at = jid + i;
			break;
		}
	if (at == jid)
		return MM_EINVAL;
	host = at ? at + 1 : jid;
	for (host_end = host; *host_end && *host_end != '@' && *host_end != '/'; host_end++)
		;
	if (host_end == host || *host_end == '@')
		return MM_EINVAL;
	slash = *host_end == '/' ? host_end : NULL;
	if (slash && slash[1] == '\0')
		return MM_EINVAL;
	hl = (size_t)(host_end - host);
	if (hl == 1 && host[0] == '.')
		return MM_EINVAL;
	if (host[hl - 1] == '.')
		hl--; /* the empty root label */
	domlen = part_prep(USPREP_RFC3491_NAMEPREP, host, hl, domain);
	if (domlen < 0)
		return MM_EINVAL;
	if (at && (nodelen = part_prep(USPREP_RFC3920_NODEPREP, jid,
			(size_t)(at - jid), node)) < 0)
		return MM_EINVAL;
	if (slash && (reslen = part_prep(USPREP_RFC3920_RESOURCEPREP, slash + 1,
			strlen(slash + 1), res)) < 0)
		return MM_EINVAL;
	/* stricter than the router, never different: IP literals must be
	 * addresses, and ASCII in a domain name is letters, digits, hyphens,
	 * dots (and the underscores some hosts carry) */
	ip = ip_literal(domain, (size_t)domlen);
	if (ip < 0)
		return MM_EINVAL;
	for (i = 0; ip == 0 && i < (size_t)domlen; i++) {
		unsigned char c = (unsigned char)domain[i];
		if (c < 0x80 && !((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
				|| c == '-' || c == '_' || c == '.'))
			return MM_EINVAL;
	}
	need = (nodelen >= 0 ? (size_t)nodelen + 1 : 0) + (size_t)domlen
		+ (reslen >= 0 ? (size_t)reslen + 1 : 0) + 1;
	if (need > outsize)
		return MM_ENOMEM;
	snprintf(out, outsize, "%s%s%s%s%s", nodelen >= 0 ? node : "",
		nodelen >= 0 ? "@" : "", domain, reslen >= 0 ? "/" : "",
		reslen >= 0 ? res : "");
	return MM_OK;
}

mm_err mm_account_restore(mm_state *s, const char *account, const char *room,
		const char *nick, const char *password, const char *last_id,
		double last_stamp, mm_decision *out)
{
	mm_join req;
	mm_membership *m;
	mm_action *a;
	mm_err err;
	char *id = NULL;
	char norm[3 * (JID_PART_MAX + 1)];
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room) || !nonempty(nick)
			|| strlen(nick) > s->limits.max_nick_bytes)
		return MM_EINVAL;
	/* stored data did not pass the router: one spelling per room */
	err = mm_jid_normalize(room, norm, sizeof norm);
	if (err != MM_OK)
		return err;
	if (strchr(norm, '/') || !strchr(norm, '@'))
		return MM_EINVAL; /* a room is node@domain */
	room = norm;
	/* never join twice: RESTORE is refused but from NONE */
	if (membership_get(s, account, room) != NULL)
		return dec_finish(s, out, 0, ok);
	if (!dup_opt(last_id, &id))
		return MM_ENOMEM;
	memset(&req, 0, sizeof req);
	req.nick = nick;
	req.password = password;
	dec_room(s, room, &ok);
	if (!ok) {
		free(id);
		return dec_finish(s, out, 0, ok);
	}
	err = join_first(s, account, account_get(s, account), NULL, room, &req,
		MM_EV_RESTORE, out);
	if (err != MM_OK) {
		free(id);
		return err;
	}
	m = membership_get(s, account, room);
	m->skip_seen = 1;
	m->last_id = id;
	m->last_id_cap = id ? strlen(id) + 1 : 0;
	m->last_stamp = last_stamp;
	/* the decision is a fresh join asking for what was said meanwhile */
	a = &s->dec.actions[0];
	a->since = last_stamp > 0 ? last_stamp : 0;
	return dec_finish(s, out, 1, ok);
}

mm_err mm_account_leave(mm_state *s, const char *account, const char *room,
		mm_decision *out)
{
	mm_membership *m;
	mm_action *act;
	size_t i;
	int ok = 1, next;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room))
		return MM_EINVAL;
	m = membership_get(s, account, room);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);
	dec_room(s, room, &ok);
	next = mm_transition(m->state, MM_EV_ACCOUNT_LEAVE);
	if (next == MM_REFUSED)
		return dec_finish(s, out, 1, ok); /* on its way out already */
	for (i = 0; i < m->nsessions; i++) {
		if (m->sessions[i].state == SS_LEAVING)
			continue;
		act_reflect_leave(s, m, m->sessions[i].resource, NULL, 0, &ok);
	}
	if (next == MM_NONE)
		return membership_end(s, account, m, out, ok, MM_EV_ACCOUNT_LEAVE,
			"left", NULL);
	if (!leaving(m)) {
		act = dec_push(s, MM_OP_SEND_LEAVE, &ok);
		if (act)
			act->nick = dec_str(s, m->nick, &ok);
	}
	if (!ok)
		return dec_finish(s, out, 0, ok);
	/* commit: nobody waits for the room's answer but the account (and
	 * sessions that asked to leave before) */
	for (i = m->nsessions; i-- > 0;)
		if (m->sessions[i].state != SS_LEAVING)
			session_detach(s, account, m, &m->sessions[i]);
	membership_enter(s, account, m, MM_EV_ACCOUNT_LEAVE);
	mark_dirty(s, account, 2); /* no longer persistent */
	return dec_finish(s, out, 1, ok);
}

size_t mm_take_dirty(mm_state *s, int level,
		void (*fn)(const char *account, void *ud), void *ud)
{
	size_t i, c = 0;
	for (i = 0; s->dirty.count && i < s->dirty.nbuckets; i++) {
		mm_node *n = s->dirty.buckets[i], *next;
		for (; n != NULL; n = next) {
			next = n->next;
			if ((uintptr_t)n->value < (uintptr_t)level)
				continue;
			{
				mm_account *a = account_get(s, n->key);
				if (a) {
					MAP_EACH(&a->rooms, rn)
						((mm_membership *)rn->value)->seen_dirty = 0;
				}
			}
			if (fn)
				fn(n->key, ud);
			map_unlink(&s->dirty, n);
			free(n);
			c++;
		}
	}
	return c;
}

/* SEND_PING to each joined membership on host (NULL: all) with no ping of
 * the module's waiting; the IQs are linked at once, so the caller takes
 * them back with pings_undo() when its decision fails. */
static void pings_push(mm_state *s, const char *host, double now, int *ok)
{
	MAP_EACH(&s->accounts, an) {
		mm_account *a = an->value;
		MAP_EACH(&a->rooms, rn) {
			mm_membership *m = rn->value;
			const char *at = strchr(m->room, '@');
			mm_action *act;
			mm_node *n;
			if (!*ok)
				return;
			if (m->state != MM_JOINED || m->ping_pending)
				continue;
			if (host && strcmp(at ? at + 1 : m->room, host) != 0)
				continue;
			n = iq_new(s, an->key, m->room, m->nick, NULL, NULL, NULL, 1, now);
			if (n == NULL) {
				*ok = 0;
				return;
			}
			dec_room(s, m->room, ok);
			act = dec_push(s, MM_OP_SEND_PING, ok);
			if (act) {
				act->account = dec_str(s, an->key, ok);
				act->nick = dec_str(s, m->nick, ok);
				act->id = dec_str(s, n->key, ok);
			}
			/* the membership points to nothing: link now, undo on failure */
			map_link(&s->iqs, n);
			m->ping_pending = 1;
		}
	}
}

/* Take back every ping a failed decision made. */
static void pings_undo(mm_state *s)
{
	size_t i;
	for (i = 0; i < s->dec.n; i++) {
		const mm_action *act = &s->dec.actions[i];
		mm_node *n = act->op == MM_OP_SEND_PING && act->id
			? map_find(&s->iqs, act->id) : NULL;
		if (n)
			iq_forget(s, n);
	}
}

mm_err mm_ping_due(mm_state *s, const char *host, double now, mm_decision *out)
{
	int ok = 1;

	dec_reset(s, out);
	pings_push(s, host, now, &ok);
	if (!ok) {
		pings_undo(s);
		return dec_finish(s, out, 0, 0);
	}
	return dec_finish(s, out, 1, ok);
}

/* Ask mm_tick() to ping host's rooms in delay seconds (the earlier of two
 * asks wins); 0 on allocation failure, nothing changed. */
static int ping_schedule(mm_state *s, const char *host, unsigned delay)
{
	mm_node *n = map_find(&s->pings, host);
	mm_pingwait *w;
	double deadline = s->clock > 0 ? s->clock + delay : 0;
	if (n) {
		w = n->value;
		if (w->deadline == 0 ? delay < w->wait : deadline < w->deadline) {
			w->wait = delay;
			w->deadline = deadline;
		}
		return 1;
	}
	if (s->pings.count >= MM_MAX_PING_HOSTS)
		return 1; /* dropped: the periodic pings cover its rooms */
	if (!map_ready(&s->pings) || (w = malloc(sizeof *w)) == NULL)
		return 0;
	w->wait = delay;
	w->deadline = deadline;
	n = node_new(host, strlen(host), w);
	if (n == NULL) {
		free(w);
		return 0;
	}
	map_link(&s->pings, n);
	return 1;
}

mm_err mm_ping_later(mm_state *s, const char *host, unsigned delay)
{
	if (!nonempty(host))
		return MM_EINVAL;
	return ping_schedule(s, host, delay) ? MM_OK : MM_ENOMEM;
}

/* Note what happened to a membership in a decision that spans many. */
static void act_note(mm_state *s, const char *event, const char *reason, int *ok)
{
	mm_action *a = dec_push(s, MM_OP_EVENT, ok);
	if (a) {
		a->event = event; /* static */
		a->reason = dec_str(s, reason, ok);
	}
}

/* A membership whose deadline passed, with what its transition needs. */
typedef struct mm_due {
	mm_membership *m;
	char *nick, *password; /* LEAVING_REJOIN: the join of the first waiter */
} mm_due;

/* Build the timeout's actions for m (see the table); 0: no memory. */
static int timeout_prepare(mm_state *s, mm_due *due, int *ok)
{
	mm_membership *m = due->m;
	size_t i, first = s->dec.n;
	const char *account;
	dec_room(s, m->room, ok);
	switch (m->state) {
	case MM_JOINING:
		for (i = 0; i < m->nsessions; i++) {
			const mm_session *ss = &m->sessions[i];
			mm_action *a;
			if (ss->state != SS_ASKED)
				continue;
			a = dec_push(s, MM_OP_JOIN_ERROR, ok);
			if (a) {
				a->resource = dec_str(s, ss->resource, ok);
				a->nick = dec_str(s, ss->nick, ok);
				a->id = dec_str(s, ss->join_id, ok);
				a->condition = "remote-server-timeout";
				a->error_type = "wait";
			}
		}
		act_note(s, "removed", "remote-server-timeout", ok);
		break;
	case MM_REJOINING:
		act_rejoin_later(s, backoff(s, m->retries + 1), ok);
		act_note(s, "rejoining", "remote-server-timeout", ok);
		break;
	case MM_REJOIN_WAIT:
		act_rejoin(s, m, ok);
		break;
	case MM_LEAVING:
		leavers_out(s, m, 0, ok);
		act_note(s, "left", NULL, ok);
		break;
	case MM_LEAVING_REJOIN:
		leavers_out(s, m, 0, ok);
		act_note(s, "left", NULL, ok);
		for (i = 0; i < m->nsessions; i++)
			if (m->sessions[i].state != SS_LEAVING)
				break;
		if (i == m->nsessions || (due->nick = str_dup(m->sessions[i].nick)) == NULL
				|| !dup_opt(m->sessions[i].password, &due->password))
			*ok = 0;
		else
			act_send_join(s, due->nick, due->password, ok);
		break;
	default:
		break;
	}
	account = dec_str(s, m->account, ok);
	for (i = first; *ok && i < s->dec.n; i++)
		s->dec.actions[i].account = account;
	return *ok;
}

/* Take the timeout's transition for due (prepared); cannot fail. */
static void timeout_commit(mm_state *s, mm_due *due)
{
	mm_membership *m = due->m;
	const char *account = m->account;
	switch (m->state) {
	case MM_JOINING:
	case MM_LEAVING:
		mark_dirty(s, account, 2);
		membership_remove(s, account, m, MM_EV_TIMEOUT);
		return;
	case MM_REJOINING:
		m->retries++;
		break;
	case MM_LEAVING_REJOIN:
		rejoin_as_waiters(s, account, m, due->nick, due->password);
		due->nick = due->password = NULL;
		break;
	default:
		break;
	}
	membership_enter(s, account, m, MM_EV_TIMEOUT);
}

mm_err mm_tick(mm_state *s, double now, mm_decision *out)
{
	mm_membership *m;
	mm_due *due = NULL;
	size_t i, ndue = 0;
	int ok = 1;

	dec_reset(s, out);
	mm_state_now(s, now);
	s->clock = now;
	/* IQs unanswered for iq_timeout */
	MAP_EACH(&s->iqs, n) {
		mm_iq *q = n->value;
		mm_action *a;
		if (q->deadline > now || q->resource == NULL)
			continue; /* the module's own pings expire silently */
		dec_room(s, q->room, &ok);
		a = dec_push(s, MM_OP_IQ_ERROR, &ok);
		if (a) {
			a->account = dec_str(s, q->account, &ok);
			a->resource = dec_str(s, q->resource, &ok);
			a->nick = dec_str(s, q->nick, &ok);
			a->id = dec_str(s, q->orig_id, &ok);
			a->condition = "remote-server-timeout";
			a->error_type = "wait";
		}
	}
	/* waiting states whose deadline passed; a wait entered before the
	 * first tick starts now */
	for (m = s->waiting; m != NULL; m = m->wnext) {
		if (m->deadline == 0)
			m->deadline = now + m->wait;
		if (m->deadline <= now)
			ndue++;
	}
	if (ndue && (due = calloc(ndue, sizeof *due)) == NULL)
		ok = 0;
	for (i = 0, m = s->waiting; ok && m != NULL; m = m->wnext)
		if (m->deadline <= now) {
			due[i].m = m;
			timeout_prepare(s, &due[i++], &ok);
		}
	/* hosts whose rooms get a self-ping now */
	MAP_EACH(&s->pings, pn) {
		mm_pingwait *w = pn->value;
		if (w->deadline == 0)
			w->deadline = now + w->wait;
		if (ok && w->deadline <= now)
			pings_push(s, pn->key, now, &ok);
	}
	if (!ok) {
		pings_undo(s);
		for (i = 0; i < ndue; i++) {
			free(due[i].nick);
			free(due[i].password);
		}
		free(due);
		return dec_finish(s, out, 0, 0);
	}
	/* commit */
	for (i = 0; s->iqs.count && i < s->iqs.nbuckets; i++) {
		mm_node *n = s->iqs.buckets[i], *nx;
		for (; n != NULL; n = nx) {
			nx = n->next;
			if (((mm_iq *)n->value)->deadline <= now)
				iq_forget(s, n);
		}
	}
	for (i = 0; i < ndue; i++)
		timeout_commit(s, &due[i]);
	free(due);
	for (i = 0; s->pings.count && i < s->pings.nbuckets; i++) {
		mm_node *n = s->pings.buckets[i], *nx;
		for (; n != NULL; n = nx) {
			nx = n->next;
			if (((mm_pingwait *)n->value)->deadline <= now) {
				free(n->value);
				map_unlink(&s->pings, n);
				free(n);
			}
		}
	}
	return dec_finish(s, out, 1, ok);
}

mm_err mm_delivery_failed(mm_state *s, const char *account, const char *room,
		mm_decision *out)
{
	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room))
		return MM_EINVAL;
	return dec_finish(s, out, membership_get(s, account, room) != NULL, 1);
}


/* ---- retractions ---------------------------------------------------------- */

/* m's ring entry for the room message stanza_id, or NULL; its place
 * (0: the oldest) in *at. */
static mm_hist *hist_find(const mm_state *s, const mm_membership *m,
		const char *stanza_id, size_t *at)
{
	const size_t cap = s->limits.history_size;
	size_t i;
	for (i = 0; i < m->hist_count; i++) {
		mm_hist *h = &m->hist[(m->hist_head + i) % cap];
		if (h->sid && strcmp(h->sid, stanza_id) == 0) {
			*at = i;
			return h;
		}
	}
	return NULL;
}

/* m's ring entry at place i goes; the newer ones move up. */
static void hist_remove(mm_state *s, mm_membership *m, size_t i)
{
	const size_t cap = s->limits.history_size;
	mm_hist *h = &m->hist[(m->hist_head + i) % cap];
	if (i < m->hist_break)
		m->hist_break--;
	cache_drop(s, m, h->payload);
	free(h->sid);
	for (; i + 1 < m->hist_count; i++)
		m->hist[(m->hist_head + i) % cap] = m->hist[(m->hist_head + i + 1) % cap];
	h = &m->hist[(m->hist_head + m->hist_count - 1) % cap];
	h->payload = NULL;
	h->sid = NULL;
	m->hist_count--;
}

const char *mm_room_kept(const mm_state *s, const char *room, const char *stanza_id)
{
	size_t at;
	if (s == NULL || !nonempty(room) || !nonempty(stanza_id))
		return NULL;
	MAP_EACH(&s->accounts, an) {
		const mm_membership *m = map_get(&((mm_account *)an->value)->rooms, room);
		const mm_hist *h = m ? hist_find(s, m, stanza_id, &at) : NULL;
		if (h)
			return h->payload->key;
	}
	return NULL;
}

mm_err mm_room_withdraw(mm_state *s, const char *room, const char *stanza_id,
		const char *payload, size_t *replaced)
{
	mm_node *pn;
	int fresh;
	size_t n = 0, at;
	if (replaced)
		*replaced = 0;
	if (s == NULL || !nonempty(room) || !nonempty(stanza_id) || payload == NULL)
		return MM_EINVAL;
	pn = payload_prepare(s, payload, NULL, &fresh);
	if (pn == NULL)
		return MM_ENOMEM;
	/* held while the entries change: the text of one of them may be it */
	payload_ref(s, pn, fresh);
	MAP_EACH(&s->accounts, an) {
		mm_membership *m = map_get(&((mm_account *)an->value)->rooms, room);
		mm_hist *h = m ? hist_find(s, m, stanza_id, &at) : NULL;
		if (h == NULL)
			continue;
		n++;
		if (h->payload == pn)
			continue;
		if (cache_fits(s, m, pn, h->payload)) {
			mm_node *old = h->payload;
			payload_ref(s, pn, 0);
			cache_count(s, m, pn);
			h->payload = pn;
			cache_drop(s, m, old);
		} else {
			/* beyond the byte limits: gone rather than kept whole */
			hist_remove(s, m, at);
		}
	}
	payload_unref(s, pn);
	if (replaced)
		*replaced = n;
	return MM_OK;
}

/* ---- inspection ---------------------------------------------------------- */

int mm_membership_state(const mm_state *s, const char *account, const char *room)
{
	mm_membership *m = (account && room) ? membership_get(s, account, room) : NULL;
	return m ? (int)m->state : -1;
}

const char *mm_membership_nick(const mm_state *s, const char *account, const char *room)
{
	mm_membership *m = (account && room) ? membership_get(s, account, room) : NULL;
	return m ? m->nick : NULL;
}

/* UTF-8 to case-folded UTF-16 in a new buffer (*out, *outlen); 0 on success. */
static int fold_utf8(const char *in, size_t len, UChar **out, int32_t *outlen)
{
	UErrorCode err = U_ZERO_ERROR;
	int32_t ulen = 0, flen;
	UChar *u, *f;

	if (len == 0 || len > INT32_MAX / 4)
		return -1;
	u_strFromUTF8(NULL, 0, &ulen, in, (int32_t)len, &err);
	if (err != U_BUFFER_OVERFLOW_ERROR && U_FAILURE(err))
		return -1;
	err = U_ZERO_ERROR;
	u = malloc(((size_t)ulen + 1) * sizeof *u);
	if (u == NULL)
		return -1;
	u_strFromUTF8(u, ulen + 1, NULL, in, (int32_t)len, &err);
	if (U_FAILURE(err)) {
		free(u);
		return -1;
	}
	/* full case folding can grow a string up to three times (U+0390) */
	f = malloc(((size_t)ulen * 3 + 1) * sizeof *f);
	if (f == NULL) {
		free(u);
		return -1;
	}
	flen = u_strFoldCase(f, ulen * 3 + 1, u, ulen, U_FOLD_CASE_DEFAULT, &err);
	free(u);
	if (U_FAILURE(err)) {
		free(f);
		return -1;
	}
	*out = f;
	*outlen = flen;
	return 0;
}

static int word_char(UChar32 c)
{
	return u_isalnum(c) || c == '_' || u_hasBinaryProperty(c, UCHAR_ALPHABETIC);
}

static int is_ascii(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return 0;
	return 1;
}

static int ascii_word_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		|| c == '_';
}

static char ascii_lower(char c)
{
	return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Both in ASCII (most room messages and nicks): the same test without
 * converting or allocating anything. */
static int mention_ascii(const char *t, size_t tlen, const char *n, size_t nlen)
{
	size_t i, k;

	for (i = 0; i + nlen <= tlen; i++) {
		for (k = 0; k < nlen && ascii_lower(t[i + k]) == ascii_lower(n[k]); k++)
			;
		if (k < nlen)
			continue;
		if ((i == 0 || !ascii_word_char(t[i - 1]))
				&& (i + nlen == tlen || !ascii_word_char(t[i + nlen])))
			return 1;
	}
	return 0;
}

int mm_mention(const char *text, size_t len, const char *nick, size_t nick_len)
{
	UChar *t = NULL, *n = NULL;
	int32_t tlen = 0, nlen = 0, i;
	int found = 0;

	if (text == NULL || nick == NULL || nick_len == 0)
		return 0;
	if (is_ascii(nick, nick_len) && is_ascii(text, len))
		return mention_ascii(text, len, nick, nick_len);
	if (fold_utf8(nick, nick_len, &n, &nlen) != 0)
		return 0;
	if (nlen == 0 || fold_utf8(text, len, &t, &tlen) != 0) {
		free(n);
		return 0;
	}
	for (i = 0; i + nlen <= tlen && !found; i++) {
		UChar32 before = 0, after = 0;
		int32_t b = i, a = i + nlen;

		if (memcmp(t + i, n, (size_t)nlen * sizeof *t) != 0)
			continue;
		if (b > 0)
			U16_PREV(t, 0, b, before);
		if (a < tlen)
			U16_NEXT(t, a, tlen, after);
		found = !(before && word_char(before)) && !(after && word_char(after));
	}
	free(t);
	free(n);
	return found;
}

void mm_state_stats(const mm_state *s, mm_stats *st)
{
	memset(st, 0, sizeof *st);
	st->accounts = s->accounts.count;
	MAP_EACH(&s->accounts, an) {
		mm_account *a = an->value;
		st->memberships += a->rooms.count;
		MAP_EACH(&a->rooms, rn) {
			mm_membership *m = rn->value;
			st->sessions += m->nsessions;
			st->occupants += m->occupants.count;
		}
	}
	st->payloads = s->payloads.count;
	st->payload_bytes = s->payload_bytes;
	st->cached_bytes = s->cached_bytes;
	st->iqs = s->iqs.count;
}

void mm_state_now(mm_state *s, double now)
{
	if (now > 0 && isfinite(now))
		s->now = now;
}

mm_err mm_membership_set_spans(mm_state *s, const char *account,
		const char *room, const mm_span *spans, size_t n)
{
	mm_membership *m = (nonempty(account) && nonempty(room))
		? membership_get(s, account, room) : NULL;
	size_t i, skip;
	if (m == NULL || (n > 0 && spans == NULL))
		return MM_EINVAL;
	/* the account is in: its span is open */
	if (m->state == MM_JOINED && (n == 0 || !(spans[n - 1].to < 0)))
		return MM_EINVAL;
	skip = n > MM_MAX_SPANS ? n - MM_MAX_SPANS : 0;
	for (i = skip; i < n; i++) {
		const mm_span *sp = &spans[i];
		if (!(sp->from >= 0) || !isfinite(sp->from) || isnan(sp->to)
				|| !isfinite(sp->to))
			return MM_EINVAL;
		if (sp->to < 0) {
			if (i != n - 1 || !(m->state == MM_JOINED
					|| m->state == MM_REJOIN_WAIT || m->state == MM_REJOINING))
				return MM_EINVAL;
		} else if (sp->to < sp->from) {
			return MM_EINVAL;
		}
		if (i > skip && sp->from < spans[i - 1].to)
			return MM_EINVAL;
	}
	for (i = skip; i < n; i++) {
		m->spans[i - skip] = spans[i];
		if (m->spans[i - skip].to < 0)
			m->spans[i - skip].to = -1;
	}
	m->nspans = n - skip;
	return MM_OK;
}

size_t mm_account_memberships(const mm_state *s, const char *account,
		int (*fn)(const mm_membership_info *info, void *ud), void *ud)
{
	mm_account *a = account ? account_get(s, account) : NULL;
	size_t c = 0;
	if (a == NULL)
		return 0;
	MAP_EACH(&a->rooms, rn) {
		mm_membership *m = rn->value;
		mm_membership_info info;
		info.room = m->room;
		info.nick = m->nick;
		info.password = m->password;
		info.state = m->state;
		info.sessions = m->nsessions;
		info.occupants = m->occupants.count;
		info.has_subject = m->subject != NULL;
		info.history = m->hist_count;
		info.bytes = m->bytes;
		info.last_id = m->last_id;
		info.last_stamp = m->last_stamp;
		info.persistent = m->state == MM_JOINED || m->state == MM_REJOINING
			|| m->state == MM_REJOIN_WAIT;
		info.spans = m->spans;
		info.nspans = m->nspans;
		c++;
		if (fn && fn(&info, ud))
			return c;
	}
	return c;
}

size_t mm_membership_sessions(const mm_state *s, const char *account,
		const char *room, int (*fn)(const char *resource, int joined, void *ud),
		void *ud)
{
	mm_membership *m = (account && room) ? membership_get(s, account, room) : NULL;
	size_t i;
	if (m == NULL)
		return 0;
	for (i = 0; i < m->nsessions; i++) {
		if (fn && fn(m->sessions[i].resource,
				m->sessions[i].state == SS_JOINED, ud))
			return i + 1;
	}
	return m->nsessions;
}

/* ---- teardown ------------------------------------------------------------ */

static void iq_free_value(void *value, void *ud)
{
	(void)ud;
	iq_free(value);
}

static void free_value(void *value, void *ud)
{
	(void)ud;
	free(value);
}

static void account_free(void *value, void *ud)
{
	mm_state *s = ud;
	mm_account *a = value;
	size_t i;
	for (i = 0; i < a->rooms.nbuckets; i++) {
		mm_node *n = a->rooms.buckets[i];
		for (; n != NULL; n = n->next)
			membership_free(s, n->value);
	}
	map_clear(&a->rooms, NULL, NULL);
	free(a);
}

void mm_state_free(mm_state *s)
{
	arena_chunk *c, *next;
	if (s == NULL)
		return;
	map_clear(&s->iqs, iq_free_value, NULL);
	map_clear(&s->dirty, NULL, NULL);
	map_clear(&s->pings, free_value, NULL);
	map_clear(&s->accounts, account_free, s);
	/* every payload was released with its membership, but for the ones
	 * a caller still holds */
	map_clear(&s->payloads, NULL, NULL);
	free(s->dec.actions);
	for (c = s->dec.chunks; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	free(s);
}
