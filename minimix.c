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

#include <stdlib.h>
#include <string.h>

/* ---- string map ---------------------------------------------------------
 * Chained hash map with string keys it owns.  Nodes never move, so a node
 * pointer is a stable handle (the payload pool relies on that).  Insertion is
 * split into node_new (may fail) and map_link (cannot fail: a failed resize
 * keeps the old table) for the all-or-nothing mutators.
 */
typedef struct mm_node {
	struct mm_node *next;
	uint32_t hash;
	size_t len;
	void *value;
	char key[]; /* NUL-terminated */
} mm_node;

typedef struct mm_map {
	mm_node **buckets;
	size_t nbuckets; /* 0 or a power of two */
	size_t count;
} mm_map;

static uint32_t hash_bytes(const char *s, size_t len)
{
	/* FNV-1a: short keys (JIDs, nicks), good spread, no setup */
	uint32_t h = 2166136261u;
	size_t i;
	for (i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static mm_node *node_new(const char *key, size_t len, void *value)
{
	mm_node *n = malloc(sizeof *n + len + 1);
	if (n == NULL)
		return NULL;
	n->next = NULL;
	n->hash = hash_bytes(key, len);
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

typedef struct mm_session {
	char *resource;
	char *nick;    /* the nick this session asked for */
	char *join_id; /* id of its join, or NULL */
	unsigned joined : 1;  /* completed its join (else waits for the account) */
	unsigned leaving : 1; /* asked to leave; awaits the room's answer */
} mm_session;

typedef struct mm_pending {
	char *id;
	char *resource;
} mm_pending;

typedef struct mm_membership {
	char *room;
	char *nick;     /* the account's nick in the room */
	char *password; /* or NULL */
	char *affiliation;
	mm_mstate state;
	int rejoin; /* leaving, with sessions waiting to join again */
	mm_session *sessions;
	size_t nsessions, capsessions;
	mm_map occupants; /* nick -> mm_node* (payload) */
	mm_node *self;    /* self-presence payload, or NULL */
	mm_node *subject; /* subject message payload, or NULL */
	mm_pending *pending; /* ring of max_pending */
	size_t npending, pending_next;
} mm_membership;

typedef struct mm_account {
	mm_map rooms; /* room -> mm_membership* */
} mm_account;

struct mm_state {
	mm_limits limits;
	mm_map accounts; /* bare JID -> mm_account* */
	mm_map payloads; /* serialized stanza -> refcount (as uintptr_t) */
	size_t payload_bytes;
	mm_decisionbuf dec;
};

/* ---- errors ------------------------------------------------------------- */

static const struct {
	const char *text, *token, *condition, *type;
} errinfo[] = {
	[MM_OK] = {"success", "ok", "undefined-condition", "cancel"},
	[MM_ENOMEM] = {"out of memory", "no-memory", "resource-constraint", "wait"},
	[MM_EINVAL] = {"invalid argument", "invalid", "jid-malformed", "modify"},
	[MM_ENOTJOINED] = {"not in that room", "not-joined", "not-acceptable", "cancel"},
	[MM_EROOMLIMIT] = {"the account is in too many rooms", "room-limit",
		"resource-constraint", "wait"},
	[MM_ESESSIONLIMIT] = {"too many sessions joined to this room", "session-limit",
		"resource-constraint", "wait"},
	[MM_EBUSY] = {"the account is leaving this room", "busy",
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

/* ---- limits and lifecycle ----------------------------------------------- */

void mm_limits_default(mm_limits *l)
{
	l->max_rooms = MM_DEFAULT_MAX_ROOMS;
	l->max_sessions = MM_DEFAULT_MAX_SESSIONS;
	l->max_occupants = MM_DEFAULT_MAX_OCCUPANTS;
	l->max_pending = MM_DEFAULT_MAX_PENDING;
	l->max_nick_bytes = MM_DEFAULT_MAX_NICK_BYTES;
}

mm_state *mm_state_new(const mm_limits *limits)
{
	mm_state *s = calloc(1, sizeof *s);
	mm_limits d;
	if (s == NULL)
		return NULL;
	mm_limits_default(&d);
	s->limits = d;
	if (limits) {
#define TAKE(f) if (limits->f) s->limits.f = limits->f
		TAKE(max_rooms);
		TAKE(max_sessions);
		TAKE(max_occupants);
		TAKE(max_pending);
		TAKE(max_nick_bytes);
#undef TAKE
	}
	return s;
}

const mm_limits *mm_state_limits(const mm_state *s)
{
	return &s->limits;
}

/* ---- payload pool ------------------------------------------------------- */

static size_t payload_refs(const mm_node *n)
{
	return (size_t)(uintptr_t)n->value;
}

/* Find or prepare the pooled copy of payload.  Returns the existing node
 * (not yet referenced) or a fresh unlinked node (*fresh = 1); NULL on
 * allocation failure.  Commit with payload_ref(). */
static mm_node *payload_prepare(mm_state *s, const char *payload, int *fresh)
{
	size_t len = strlen(payload);
	mm_node *n = map_find_len(&s->payloads, payload, len);
	*fresh = 0;
	if (n)
		return n;
	if (!map_ready(&s->payloads))
		return NULL;
	n = node_new(payload, len, (void *)(uintptr_t)0);
	*fresh = n != NULL;
	return n;
}

static void payload_ref(mm_state *s, mm_node *n, int fresh)
{
	if (fresh) {
		map_link(&s->payloads, n);
		s->payload_bytes += n->len;
	}
	n->value = (void *)(uintptr_t)(payload_refs(n) + 1);
}

static void payload_unref(mm_state *s, mm_node *n)
{
	size_t refs;
	if (n == NULL)
		return;
	refs = payload_refs(n) - 1;
	if (refs == 0) {
		map_unlink(&s->payloads, n);
		s->payload_bytes -= n->len;
		free(n);
	} else {
		n->value = (void *)(uintptr_t)refs;
	}
}

/* Replace *slot with a reference to payload (NULL payload: keep *slot).
 * Returns 0 on allocation failure, leaving *slot untouched. */
static int payload_set(mm_state *s, mm_node **slot, const char *payload)
{
	int fresh;
	mm_node *n;
	if (payload == NULL)
		return 1;
	n = payload_prepare(s, payload, &fresh);
	if (n == NULL)
		return 0;
	payload_ref(s, n, fresh);
	payload_unref(s, *slot);
	*slot = n;
	return 1;
}

/* ---- memberships -------------------------------------------------------- */

static void session_free_fields(mm_session *ss)
{
	free(ss->resource);
	free(ss->nick);
	free(ss->join_id);
}

static void pending_free(mm_pending *p)
{
	free(p->id);
	free(p->resource);
	p->id = p->resource = NULL;
}

static void occupant_unref(void *value, void *ud)
{
	payload_unref(ud, value);
}

/* Drop every cache of the membership (occupants, self, subject). */
static void membership_clear_cache(mm_state *s, mm_membership *m)
{
	map_clear(&m->occupants, occupant_unref, s);
	payload_unref(s, m->self);
	payload_unref(s, m->subject);
	m->self = m->subject = NULL;
}

static void membership_free(mm_state *s, mm_membership *m)
{
	size_t i;
	if (m == NULL)
		return;
	membership_clear_cache(s, m);
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

/* Remove and free a membership; frees the account when it was its last. */
static void membership_remove(mm_state *s, const char *account, mm_membership *m)
{
	mm_node *an = map_find(&s->accounts, account);
	mm_account *a;
	mm_node *rn;
	if (an == NULL)
		return;
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

/* ---- decision building --------------------------------------------------- */

static void dec_reset(mm_state *s, mm_decision *out)
{
	arena_chunk *c = s->dec.chunks;
	s->dec.n = 0;
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
	memset(a, 0, sizeof *a);
	a->op = op;
	return a;
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
		return MM_ENOMEM;
	}
	out->handled = handled;
	out->n = s->dec.n;
	out->actions = s->dec.n ? s->dec.actions : NULL;
	return MM_OK;
}

/* Deliver the reported stanza to every session that is in the room from
 * its client's point of view (joined or waiting, not leaving). */
static void deliver_all(mm_state *s, const mm_membership *m, int *ok)
{
	size_t i;
	for (i = 0; i < m->nsessions; i++)
		if (!m->sessions[i].leaving)
			act_deliver(s, m->sessions[i].resource, NULL, 0, ok);
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
	if (m->self) {
		if (!str_eq(to->nick, m->nick))
			codes |= MM_CODE_210;
		act_replay(s, to->resource, m->self, to->join_id, codes, ok);
	}
	if (m->subject)
		act_replay(s, to->resource, m->subject, NULL, 0, ok);
}

/* ---- events from sessions ------------------------------------------------ */

mm_err mm_session_join(mm_state *s, const char *account, const char *resource,
		const char *room, const char *nick, const char *id,
		const char *password, mm_decision *out)
{
	mm_account *a;
	mm_membership *m;
	mm_session *ss, fresh_ss;
	mm_node *anode = NULL, *rnode = NULL;
	int ok = 1, new_account = 0;
	size_t nicklen;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room) || nick == NULL)
		return MM_EINVAL;
	nicklen = strlen(nick);
	if (nicklen == 0 || nicklen > s->limits.max_nick_bytes)
		return MM_EINVAL;

	a = account_get(s, account);
	m = a ? map_get(&a->rooms, room) : NULL;

	if (m == NULL) {
		/* First join: build the whole membership, then link it. */
		if (a && a->rooms.count >= s->limits.max_rooms)
			return MM_EROOMLIMIT;
		m = calloc(1, sizeof *m);
		if (m == NULL)
			return MM_ENOMEM;
		m->state = MM_JOINING;
		m->room = str_dup(room);
		m->nick = str_dup(nick);
		if (m->room == NULL || m->nick == NULL || !dup_opt(password, &m->password)
				|| !sessions_reserve(m))
			goto nomem;
		memset(&m->sessions[0], 0, sizeof m->sessions[0]);
		ss = &m->sessions[0];
		ss->resource = str_dup(resource);
		ss->nick = str_dup(nick);
		if (ss->resource == NULL || ss->nick == NULL || !dup_opt(id, &ss->join_id)) {
			session_free_fields(ss);
			goto nomem;
		}
		m->nsessions = 1;
		if (a == NULL) {
			a = calloc(1, sizeof *a);
			if (a == NULL)
				goto nomem;
			new_account = 1;
			anode = node_new(account, strlen(account), a);
			if (anode == NULL || !map_ready(&s->accounts))
				goto nomem;
		}
		if (!map_ready(&a->rooms))
			goto nomem;
		rnode = node_new(room, strlen(room), m);
		if (rnode == NULL)
			goto nomem;
		{
			mm_action *act = dec_push(s, MM_OP_SEND_JOIN, &ok);
			if (act) {
				act->nick = dec_str(s, nick, &ok);
				act->password = dec_str(s, password, &ok);
				act->from_request = 1;
			}
		}
		if (!ok)
			goto nomem;
		/* commit: nothing below can fail */
		if (new_account)
			map_link(&s->accounts, anode);
		map_link(&a->rooms, rnode);
		return dec_finish(s, out, 1, ok);
nomem:
		free(rnode);
		if (new_account) {
			free(anode);
			map_clear(&a->rooms, NULL, NULL);
			free(a);
		}
		membership_free(s, m);
		dec_finish(s, out, 0, 0);
		return MM_ENOMEM;
	}

	ss = session_find(m, resource);
	if (ss == NULL) {
		if (m->nsessions >= s->limits.max_sessions)
			return MM_ESESSIONLIMIT;
		memset(&fresh_ss, 0, sizeof fresh_ss);
		fresh_ss.resource = str_dup(resource);
		fresh_ss.nick = str_dup(nick);
		if (fresh_ss.resource == NULL || fresh_ss.nick == NULL
				|| !dup_opt(id, &fresh_ss.join_id) || !sessions_reserve(m)) {
			session_free_fields(&fresh_ss);
			return MM_ENOMEM;
		}
		fresh_ss.joined = m->state == MM_JOINED;
		/* build the decision against the fresh session, then attach it */
		if (m->state != MM_LEAVING)
			replay_room(s, m, &fresh_ss, &ok);
		if (!ok) {
			session_free_fields(&fresh_ss);
			return dec_finish(s, out, 0, 0);
		}
		if (m->state == MM_LEAVING)
			m->rejoin = 1;
		m->sessions[m->nsessions++] = fresh_ss;
		return dec_finish(s, out, 1, ok);
	}

	/* A session already in the membership joins again. */
	{
		char *nnick = str_dup(nick), *nid = NULL;
		mm_session probe;
		if (nnick == NULL || !dup_opt(id, &nid)) {
			free(nnick);
			return MM_ENOMEM;
		}
		if (m->state == MM_JOINED) {
			/* full resync (§7.2 sequence again) */
			probe = *ss;
			probe.nick = nnick;
			probe.join_id = nid;
			replay_room(s, m, &probe, &ok);
			if (!ok) {
				free(nnick);
				free(nid);
				return dec_finish(s, out, 0, 0);
			}
		}
		free(ss->nick);
		free(ss->join_id);
		ss->nick = nnick;
		ss->join_id = nid;
		if (m->state == MM_LEAVING && ss->leaving) {
			/* it left and now wants back in: join again after the leave */
			ss->leaving = 0;
			m->rejoin = 1;
		}
		return dec_finish(s, out, 1, ok);
	}
}

/* Number of sessions that are in the room from their client's view. */
static size_t active_sessions(const mm_membership *m)
{
	size_t i, c = 0;
	for (i = 0; i < m->nsessions; i++)
		if (!m->sessions[i].leaving)
			c++;
	return c;
}

mm_err mm_session_leave(mm_state *s, const char *account, const char *resource,
		const char *room, const char *id, mm_decision *out)
{
	mm_membership *m;
	mm_session *ss;
	mm_action *act;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	m = membership_get(s, account, room);
	ss = m ? session_find(m, resource) : NULL;
	if (ss == NULL)
		return dec_finish(s, out, 0, ok);
	if (ss->leaving)
		return dec_finish(s, out, 1, ok); /* already on its way out */

	if (active_sessions(m) > 1 || m->state == MM_LEAVING) {
		/* others stay in: only this session sees itself leave */
		act = dec_push(s, MM_OP_REFLECT_LEAVE, &ok);
		if (act) {
			act->resource = dec_str(s, resource, &ok);
			act->nick = dec_str(s, m->nick, &ok);
			act->id = dec_str(s, id, &ok);
			act->affiliation = dec_str(s, m->affiliation ? m->affiliation : "none", &ok);
		}
		if (!ok)
			return dec_finish(s, out, 0, ok);
		pending_forget_resource(s, m, resource);
		session_remove(m, ss);
		if (m->state == MM_LEAVING && active_sessions(m) == 0)
			m->rejoin = 0;
		return dec_finish(s, out, 1, ok);
	}

	/* last one: the account leaves; the room's answer goes to this session */
	act_simple(s, MM_OP_SEND_AS_ACCOUNT, &ok);
	if (!ok)
		return dec_finish(s, out, 0, ok);
	ss->leaving = 1;
	m->state = MM_LEAVING;
	m->rejoin = 0;
	return dec_finish(s, out, 1, ok);
}

/* The session is in the room and its join completed. */
static mm_session *joined_session(mm_state *s, const char *account,
		const char *room, const char *resource, mm_membership **mp)
{
	mm_membership *m = membership_get(s, account, room);
	mm_session *ss = m ? session_find(m, resource) : NULL;
	*mp = m;
	if (ss == NULL || !ss->joined || ss->leaving || m->state != MM_JOINED)
		return NULL;
	return ss;
}

mm_err mm_session_presence(mm_state *s, const char *account,
		const char *resource, const char *room, const char *nick,
		const char *id, mm_decision *out)
{
	mm_membership *m;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	if (nick && (*nick == '\0' || strlen(nick) > s->limits.max_nick_bytes))
		return MM_EINVAL;
	if (joined_session(s, account, room, resource, &m) == NULL) {
		mm_session *ss = m ? session_find(m, resource) : NULL;
		/* a session in the membership must never speak for itself: the
		 * room would take its presence for a join of its own */
		if (ss != NULL)
			act_simple(s, MM_OP_DROP, &ok);
		return dec_finish(s, out, ss != NULL, ok);
	}
	act_simple(s, MM_OP_SEND_AS_ACCOUNT, &ok);
	if (ok)
		pending_add(s, m, id, resource);
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_message(mm_state *s, const char *account,
		const char *resource, const char *room, const char *nick,
		mm_msg_type type, const char *id, mm_decision *out)
{
	mm_membership *m;
	mm_session *ss;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource) || !nonempty(room))
		return MM_EINVAL;
	ss = joined_session(s, account, room, resource, &m);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);
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
	if (ok)
		pending_add(s, m, id, resource);
	return dec_finish(s, out, 1, ok);
}

mm_err mm_session_gone(mm_state *s, const char *account, const char *resource,
		mm_decision *out)
{
	mm_account *a;
	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(resource))
		return MM_EINVAL;
	a = account_get(s, account);
	if (a) {
		MAP_EACH(&a->rooms, n) {
			mm_membership *m = n->value;
			mm_session *ss = session_find(m, resource);
			if (ss) {
				pending_forget_resource(s, m, resource);
				session_remove(m, ss);
				if (m->state == MM_LEAVING && active_sessions(m) == 0)
					m->rejoin = 0;
			}
		}
	}
	return dec_finish(s, out, 1, 1);
}

/* ---- events from rooms --------------------------------------------------- */

/* The membership ended (left, kicked, banned, destroyed, failed join).
 * With sessions waiting to come back, the account joins again. */
static mm_err membership_end(mm_state *s, const char *account, mm_membership *m,
		mm_decision *out, int ok)
{
	size_t i;
	if (!ok)
		return dec_finish(s, out, 0, ok);
	if (m->state == MM_LEAVING && m->rejoin) {
		mm_session *first = NULL;
		char *nick;
		mm_action *act;
		for (i = 0; i < m->nsessions; i++)
			if (!m->sessions[i].leaving) {
				first = &m->sessions[i];
				break;
			}
		nick = first ? str_dup(first->nick) : NULL;
		act = nick ? dec_push(s, MM_OP_SEND_JOIN, &ok) : NULL;
		if (act) {
			act->nick = dec_str(s, nick, &ok);
			act->password = dec_str(s, m->password, &ok);
		}
		if (nick == NULL || !ok) {
			free(nick);
			return dec_finish(s, out, 0, 0);
		}
		/* commit: drop leavers and caches, join again as the waiters asked */
		for (i = m->nsessions; i-- > 0;)
			if (m->sessions[i].leaving)
				session_remove(m, &m->sessions[i]);
		membership_clear_cache(s, m);
		free(m->nick);
		m->nick = nick;
		m->state = MM_JOINING;
		m->rejoin = 0;
		return dec_finish(s, out, 1, ok);
	}
	membership_remove(s, account, m);
	return dec_finish(s, out, 1, ok);
}

mm_err mm_room_presence(mm_state *s, const char *account, const char *room,
		const char *nick, const mm_presence *p, mm_decision *out)
{
	mm_membership *m;
	size_t i;
	int ok = 1;

	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room) || p == NULL)
		return MM_EINVAL;
	m = membership_get(s, account, room);
	if (m == NULL)
		return dec_finish(s, out, 0, ok);

	if (p->type == MM_PRES_ERROR) {
		mm_pending *pd = pending_find(s, m, p->id);
		if (pd) {
			act_deliver(s, pd->resource, NULL, 0, &ok);
			if (ok)
				pending_free(pd);
			return dec_finish(s, out, 1, ok);
		}
		if (m->state == MM_JOINING) {
			/* the account's join failed: each waiter gets it with its id */
			for (i = 0; i < m->nsessions; i++)
				act_deliver(s, m->sessions[i].resource,
					m->sessions[i].join_id, 0, &ok);
			return membership_end(s, account, m, out, ok);
		}
		if (m->state == MM_LEAVING)
			return membership_end(s, account, m, out, ok);
		return dec_finish(s, out, 1, ok); /* nobody asked: drop */
	}

	if (p->status & MM_STATUS_110) {
		if (p->type == MM_PRES_UNAVAILABLE) {
			if ((p->status & MM_STATUS_303) && nonempty(p->new_nick)
					&& m->state != MM_LEAVING) {
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
				return dec_finish(s, out, 1, ok);
			}
			/* left, kicked, banned, removed, destroyed: the end */
			if (m->state == MM_LEAVING) {
				for (i = 0; i < m->nsessions; i++)
					if (m->sessions[i].leaving)
						act_deliver(s, m->sessions[i].resource, NULL, 0, &ok);
			} else {
				deliver_all(s, m, &ok);
			}
			return membership_end(s, account, m, out, ok);
		}
		/* available self-presence */
		if (m->state == MM_LEAVING) {
			/* a join still in flight answered; the leave follows */
			return dec_finish(s, out, 1, ok);
		}
		{
			char *nn = NULL, *aff = NULL;
			mm_node *pn = NULL;
			int fresh = 0;
			if (nick && !str_eq(nick, m->nick) && (nn = str_dup(nick)) == NULL)
				return dec_finish(s, out, 0, 0);
			if (p->affiliation && (aff = str_dup(p->affiliation)) == NULL)
				goto self_nomem;
			if (p->payload && (pn = payload_prepare(s, p->payload, &fresh)) == NULL)
				goto self_nomem;
			for (i = 0; i < m->nsessions; i++) {
				const mm_session *ss = &m->sessions[i];
				unsigned codes = 0;
				const char *id = NULL;
				const char *accnick = nn ? nn : m->nick;
				if (m->state == MM_JOINING) {
					/* completes every waiter's join, each with its own id */
					id = ss->join_id;
					if (!(p->status & MM_STATUS_210) && !str_eq(ss->nick, accnick))
						codes |= MM_CODE_210;
				}
				act_deliver(s, ss->resource, id, codes, &ok);
			}
			if (!ok)
				goto self_nomem;
			/* commit */
			if (pn) {
				payload_ref(s, pn, fresh);
				payload_unref(s, m->self);
				m->self = pn;
			}
			if (nn) {
				free(m->nick);
				m->nick = nn;
			}
			if (aff) {
				free(m->affiliation);
				m->affiliation = aff;
			}
			if (m->state == MM_JOINING) {
				m->state = MM_JOINED;
				for (i = 0; i < m->nsessions; i++)
					m->sessions[i].joined = 1;
			}
			return dec_finish(s, out, 1, ok);
self_nomem:
			if (fresh)
				free(pn);
			free(nn);
			free(aff);
			return dec_finish(s, out, 0, 0);
		}
	}

	/* another occupant (or the room itself) */
	if (m->state == MM_LEAVING)
		return dec_finish(s, out, 1, ok);
	deliver_all(s, m, &ok);
	if (!ok || nick == NULL)
		return dec_finish(s, out, 1, ok);
	{
		mm_node *on = map_find(&m->occupants, nick);
		if (p->type == MM_PRES_UNAVAILABLE) {
			if (on) {
				payload_unref(s, on->value);
				map_unlink(&m->occupants, on);
				free(on);
			}
		} else if (on) {
			mm_node *slot = on->value;
			if (!payload_set(s, &slot, p->payload))
				return dec_finish(s, out, 0, 0);
			on->value = slot;
		} else if (p->payload && m->occupants.count < s->limits.max_occupants) {
			int fresh;
			mm_node *pn = payload_prepare(s, p->payload, &fresh);
			mm_node *nn = pn && map_ready(&m->occupants)
				? node_new(nick, strlen(nick), pn) : NULL;
			if (nn == NULL) {
				if (fresh)
					free(pn);
				return dec_finish(s, out, 0, 0);
			}
			payload_ref(s, pn, fresh);
			map_link(&m->occupants, nn);
		}
		/* past max_occupants the presence is still delivered, not cached */
	}
	return dec_finish(s, out, 1, ok);
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
		if (m->state == MM_LEAVING)
			return dec_finish(s, out, 1, ok);
		deliver_all(s, m, &ok);
		if (ok && msg->has_subject && !msg->has_body
				&& !payload_set(s, &m->subject, msg->payload))
			ok = 0;
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
			if (m->sessions[i].joined && !m->sessions[i].leaving)
				act_deliver(s, m->sessions[i].resource, NULL, 0, &ok);
		return dec_finish(s, out, 1, ok);
	}
}

mm_err mm_delivery_failed(mm_state *s, const char *account, const char *room,
		mm_decision *out)
{
	dec_reset(s, out);
	if (!nonempty(account) || !nonempty(room))
		return MM_EINVAL;
	return dec_finish(s, out, membership_get(s, account, room) != NULL, 1);
}

/* ---- inspection ---------------------------------------------------------- */

int mm_membership_state(const mm_state *s, const char *account, const char *room)
{
	mm_membership *m = (account && room) ? membership_get(s, account, room) : NULL;
	return m ? (int)m->state : -1;
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
		if (fn && fn(m->sessions[i].resource, m->sessions[i].joined, ud))
			return i + 1;
	}
	return m->nsessions;
}

/* ---- teardown ------------------------------------------------------------ */

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
	map_clear(&s->accounts, account_free, s);
	/* every payload was released with its membership */
	map_clear(&s->payloads, NULL, NULL);
	free(s->dec.actions);
	for (c = s->dec.chunks; c != NULL; c = next) {
		next = c->next;
		free(c);
	}
	free(s);
}
