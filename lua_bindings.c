/*
 * lua_bindings.c - Lua 5.4 glue for the mod_minimix core.
 *
 * Only translates: checks and converts arguments, calls the core, turns
 * its decisions into Lua tables.  Two error channels, as in Lua's io
 * library: misuse raises; an expected refusal from the core returns
 * nil, token, condition, error_type, text.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <string.h>
#include <time.h>

#include <lua.h>
#include <lauxlib.h>

#include "minimix.h"

#define STATE_MT "minimix.state"

#if defined(__GNUC__)
#define MM_EXPORT __attribute__((visibility("default")))
#else
#define MM_EXPORT
#endif

typedef struct box {
	mm_state *state;
	/* the last payload text of a room event, held in the core's pool; the
	 * Lua string itself is the userdata's user value, so that its address
	 * names that text for as long as it is held */
	mm_payload *held;
	const char *held_text;
} box;

/* The open state at argument 1, for calls that take no lifecycle
 * transition (queries, and room messages: no message moves a membership):
 * the hot path of every room message, which needs no clock. */
static mm_state *check_state_timeless(lua_State *L)
{
	box *b = luaL_checkudata(L, 1, STATE_MT);
	luaL_argcheck(L, b->state != NULL, 1, "attempt to use a closed minimix.state");
	return b->state;
}

static mm_state *check_state(lua_State *L)
{
	box *b = luaL_checkudata(L, 1, STATE_MT);
	luaL_argcheck(L, b->state != NULL, 1, "attempt to use a closed minimix.state");
	/* the caller's clock for span boundaries: the function given to
	 * clock(), else the wall clock, as util.time.now() reads it */
	if (lua_getiuservalue(L, 1, 2) == LUA_TFUNCTION) {
		lua_call(L, 0, 1);
		mm_state_now(b->state, (double)lua_tonumber(L, -1));
	} else {
		struct timespec ts;
		if (clock_gettime(CLOCK_REALTIME, &ts) == 0)
			mm_state_now(b->state, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
	}
	lua_pop(L, 1);
	return b->state;
}

/* ---- results ---------------------------------------------------------- */

static const char *const op_names[] = {
	[MM_OP_SEND_JOIN] = "send_join",
	[MM_OP_SEND_AS_ACCOUNT] = "send_as_account",
	[MM_OP_SEND_LEAVE] = "send_leave",
	[MM_OP_SEND_PRESENCE] = "send_presence",
	[MM_OP_REJOIN_LATER] = "rejoin_later",
	[MM_OP_DELIVER] = "deliver",
	[MM_OP_REPLAY] = "replay",
	[MM_OP_REPLAY_LOG] = "replay_log",
	[MM_OP_REFLECT_LEAVE] = "reflect_leave",
	[MM_OP_CARBON] = "carbon",
	[MM_OP_IQ_ERROR] = "iq_error",
	[MM_OP_SEND_PING] = "send_ping",
	[MM_OP_PING_LATER] = "ping_later",
	[MM_OP_DROP] = "drop",
	[MM_OP_JOIN_ERROR] = "join_error",
	[MM_OP_EVENT] = "event",
	[MM_OP_SELF_STUB] = "self_stub",
	[MM_OP_SUBJECT_STUB] = "subject_stub",
};

static void set_str(lua_State *L, const char *key, const char *value)
{
	if (value) {
		lua_pushstring(L, value);
		lua_setfield(L, -2, key);
	}
}

static void push_codes(lua_State *L, unsigned codes, const char *field)
{
	int i = 0;
	if (codes == 0)
		return;
	lua_createtable(L, 2, 0);
	if (codes & MM_CODE_210) {
		lua_pushinteger(L, 210);
		lua_rawseti(L, -2, ++i);
	}
	if (codes & MM_CODE_333) {
		lua_pushinteger(L, 333);
		lua_rawseti(L, -2, ++i);
	}
	if (codes & MM_CODE_201) {
		lua_pushinteger(L, 201);
		lua_rawseti(L, -2, ++i);
	}
	lua_setfield(L, -2, field);
}

/* spans as an array of { from, to } (to absent while open) */
static void push_spans(lua_State *L, const mm_span *spans, size_t n)
{
	size_t i;
	lua_createtable(L, (int)n, 0);
	for (i = 0; i < n; i++) {
		lua_createtable(L, 2, 0);
		lua_pushnumber(L, (lua_Number)spans[i].from);
		lua_rawseti(L, -2, 1);
		if (spans[i].to >= 0) {
			lua_pushnumber(L, (lua_Number)spans[i].to);
			lua_rawseti(L, -2, 2);
		}
		lua_rawseti(L, -2, (lua_Integer)i + 1);
	}
}

static void push_action(lua_State *L, const mm_action *a)
{
	lua_createtable(L, 0, 4);
	lua_pushstring(L, op_names[a->op]);
	lua_setfield(L, -2, "op");
	set_str(L, "room", a->room);
	set_str(L, "account", a->account);
	set_str(L, "resource", a->resource);
	set_str(L, "nick", a->nick);
	set_str(L, "payload", a->payload);
	set_str(L, "id", a->id);
	set_str(L, "password", a->password);
	set_str(L, "condition", a->condition);
	set_str(L, "error_type", a->error_type);
	set_str(L, "affiliation", a->affiliation);
	set_str(L, "role", a->role);
	set_str(L, "event", a->event);
	set_str(L, "reason", a->reason);
	push_codes(L, a->add_codes, "codes");
	push_codes(L, a->drop_codes, "drop_codes");
	if (a->delay) {
		lua_pushinteger(L, (lua_Integer)a->delay);
		lua_setfield(L, -2, "delay");
	}
	if (a->from_request) {
		lua_pushboolean(L, 1);
		lua_setfield(L, -2, "from_request");
	}
	if (a->stamp > 0) {
		lua_pushnumber(L, (lua_Number)a->stamp);
		lua_setfield(L, -2, "stamp");
	}
	if (a->since > 0) {
		lua_pushnumber(L, (lua_Number)a->since);
		lua_setfield(L, -2, "since");
	}
	if (a->op == MM_OP_REPLAY_LOG) {
		lua_pushinteger(L, (lua_Integer)a->maxstanzas);
		lua_setfield(L, -2, "maxstanzas");
		if (a->maxchars >= 0) {
			lua_pushinteger(L, (lua_Integer)a->maxchars);
			lua_setfield(L, -2, "maxchars");
		}
		if (a->seconds >= 0) {
			lua_pushnumber(L, (lua_Number)a->seconds);
			lua_setfield(L, -2, "seconds");
		}
		lua_pushnumber(L, (lua_Number)a->now);
		lua_setfield(L, -2, "now");
		push_spans(L, a->spans, a->nspans);
		lua_setfield(L, -2, "spans");
	}
}

/*
 * Turn the core's answer into Lua results:
 *   handled (boolean), actions (array or nil), event (or nil), reason (or nil)
 *   or nil, token, condition, error_type, text on a refusal.
 * lean: a copy to a session that is nothing but that (no id, no status
 * codes, the call's account) is its resource string instead of a table:
 * a room message makes one per session, and the table was most of what the
 * binding allocated for it.
 */
static int push_result_as(lua_State *L, mm_err err, const mm_decision *d, int lean)
{
	size_t i;
	if (err != MM_OK) {
		const char *type;
		const char *cond = mm_errcondition(err, &type);
		lua_pushnil(L);
		lua_pushstring(L, mm_errtoken(err));
		lua_pushstring(L, cond);
		lua_pushstring(L, type);
		lua_pushstring(L, mm_strerror(err));
		return 5;
	}
	lua_pushboolean(L, d->handled);
	if (d->n == 0 && d->event == NULL)
		return 1;
	if (d->n == 0) {
		lua_pushnil(L);
	} else {
		lua_createtable(L, (int)d->n, 0);
		for (i = 0; i < d->n; i++) {
			const mm_action *a = &d->actions[i];
			if (lean && a->op == MM_OP_DELIVER && a->account == NULL && a->id == NULL
					&& a->add_codes == 0)
				lua_pushstring(L, a->resource);
			else
				push_action(L, a);
			lua_rawseti(L, -2, (lua_Integer)i + 1);
		}
	}
	if (d->event == NULL)
		return 2;
	lua_pushstring(L, d->event);
	if (d->reason == NULL)
		return 3;
	lua_pushstring(L, d->reason);
	return 4;
}

static int push_result(lua_State *L, mm_err err, const mm_decision *d)
{
	return push_result_as(L, err, d, 0);
}

/* ---- state lifecycle ---------------------------------------------------- */

static size_t opt_limit(lua_State *L, int t, const char *key)
{
	lua_Integer v;
	int isnum;
	lua_getfield(L, t, key);
	if (lua_isnil(L, -1)) {
		lua_pop(L, 1);
		return 0;
	}
	v = lua_tointegerx(L, -1, &isnum);
	if (!isnum || v < 1)
		luaL_error(L, "option '%s' must be a positive integer", key);
	lua_pop(L, 1);
	return (size_t)v;
}

/* The truth of field `key` of the table at t (absent: false). */
static int bool_field(lua_State *L, int t, const char *key)
{
	int v;
	lua_getfield(L, t, key);
	v = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return v;
}

/* The limits in the options table at index t (absent ones: 0, default). */
static void read_limits(lua_State *L, int t, mm_limits *lim)
{
	memset(lim, 0, sizeof *lim);
	if (lua_isnoneornil(L, t))
		return;
	luaL_checktype(L, t, LUA_TTABLE);
	lim->max_rooms = opt_limit(L, t, "max_rooms");
	lim->max_sessions = opt_limit(L, t, "max_sessions");
	lim->max_occupants = opt_limit(L, t, "max_occupants");
	lim->max_pending = opt_limit(L, t, "max_pending");
	lim->max_nick_bytes = opt_limit(L, t, "max_nick_bytes");
	lim->max_iqs = opt_limit(L, t, "max_iqs");
	lim->iq_timeout = opt_limit(L, t, "iq_timeout");
	lim->rejoin_delay = opt_limit(L, t, "rejoin_delay");
	lim->rejoin_grace = opt_limit(L, t, "rejoin_grace");
	lim->history_size = opt_limit(L, t, "history_size");
	lim->history_default = opt_limit(L, t, "history_default");
	lim->history_max = opt_limit(L, t, "history_max");
	lim->log_history = bool_field(L, t, "log_history");
	lim->join_timeout = opt_limit(L, t, "join_timeout");
	lim->max_membership_bytes = opt_limit(L, t, "max_membership_bytes");
	lim->max_account_bytes = opt_limit(L, t, "max_account_bytes");
	lim->max_cache_bytes = opt_limit(L, t, "max_cache_bytes");
}

static int l_new(lua_State *L)
{
	mm_limits lim;
	box *b;
	read_limits(L, 1, &lim);
	/* box first, with its metatable, so a failure below cannot leak */
	b = lua_newuserdatauv(L, sizeof *b, 2);
	b->state = NULL;
	b->held = NULL;
	b->held_text = NULL;
	luaL_setmetatable(L, STATE_MT);
	b->state = mm_state_new(&lim);
	if (b->state == NULL)
		return luaL_error(L, "not enough memory for a minimix.state");
	return 1;
}

/* set_limits(opts) -> true | nil, token, ...: a reloaded configuration */
static int l_set_limits(lua_State *L)
{
	mm_state *s = check_state(L);
	mm_limits lim;
	mm_err err;
	read_limits(L, 2, &lim);
	err = mm_state_set_limits(s, &lim);
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushboolean(L, 1);
	return 1;
}

static int l_close(lua_State *L)
{
	box *b = luaL_checkudata(L, 1, STATE_MT);
	mm_state_free(b->state);
	b->state = NULL;
	b->held = NULL; /* freed with the state */
	b->held_text = NULL;
	return 0;
}

static int l_tostring(lua_State *L)
{
	box *b = luaL_checkudata(L, 1, STATE_MT);
	mm_stats st;
	if (b->state == NULL) {
		lua_pushliteral(L, "minimix.state (closed)");
		return 1;
	}
	mm_state_stats(b->state, &st);
	lua_pushfstring(L, "minimix.state (accounts=%d, rooms=%d, sessions=%d)",
		(int)st.accounts, (int)st.memberships, (int)st.sessions);
	return 1;
}

/* ---- events from sessions ---------------------------------------------- */

/* Optional number field of the table at index t; dflt when absent. */
static double num_field(lua_State *L, int t, const char *key, double dflt)
{
	double v = dflt;
	lua_getfield(L, t, key);
	if (!lua_isnil(L, -1)) {
		if (!lua_isnumber(L, -1))
			luaL_error(L, "field '%s' must be a number", key);
		v = (double)lua_tonumber(L, -1);
	}
	lua_pop(L, 1);
	return v;
}

/*
 * join(account, resource, room, nick [, id, password, show, presence,
 *      history, now]); history = { maxstanzas=, maxchars=, seconds=, since= }
 */
static int l_join(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	const char *room = luaL_checkstring(L, 4);
	mm_join req;
	mm_decision d;
	mm_err err;
	memset(&req, 0, sizeof req);
	req.nick = luaL_checkstring(L, 5);
	req.id = luaL_optstring(L, 6, NULL);
	req.password = luaL_optstring(L, 7, NULL);
	req.show = luaL_optstring(L, 8, NULL);
	req.presence = luaL_optstring(L, 9, NULL);
	if (!lua_isnoneornil(L, 10)) {
		/* numbers as the client sent them: the core clamps them */
		luaL_checktype(L, 10, LUA_TTABLE);
		mm_join_history(&req, num_field(L, 10, "maxstanzas", NAN),
			num_field(L, 10, "maxchars", NAN), num_field(L, 10, "seconds", NAN),
			num_field(L, 10, "since", NAN));
	}
	req.now = (double)luaL_optnumber(L, 11, 0);
	err = mm_session_join_req(s, account, resource, room, &req, &d);
	return push_result(L, err, &d);
}

static int l_leave(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	const char *room = luaL_checkstring(L, 4);
	const char *id = luaL_optstring(L, 5, NULL);
	mm_decision d;
	mm_err err = mm_session_leave(s, account, resource, room, id, &d);
	return push_result(L, err, &d);
}

static int l_presence_out(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	const char *room = luaL_checkstring(L, 4);
	const char *nick = luaL_optstring(L, 5, NULL);
	const char *id = luaL_optstring(L, 6, NULL);
	const char *show = luaL_optstring(L, 7, NULL);
	const char *presence = luaL_optstring(L, 8, NULL);
	mm_decision d;
	mm_err err = mm_session_presence(s, account, resource, room, nick, id,
		show, presence, &d);
	return push_result(L, err, &d);
}

/* iq_out(account, resource, room, nick, id, queryid, is_ping, now) */
static int l_iq_out(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	const char *room = luaL_checkstring(L, 4);
	const char *nick = luaL_optstring(L, 5, NULL);
	const char *id = luaL_checkstring(L, 6);
	const char *queryid = luaL_optstring(L, 7, NULL);
	int is_ping = lua_toboolean(L, 8);
	double now = (double)luaL_checknumber(L, 9);
	mm_decision d;
	mm_err err = mm_session_iq(s, account, resource, room, nick, id, queryid,
		is_ping, now, &d);
	return push_result(L, err, &d);
}

static const char *const msg_types[] = {
	"normal", "chat", "groupchat", "headline", "error", NULL
};

/* A message type as a stanza carries it (NULL: absent).  A type the
 * binding does not know is "normal" (RFC 6121 5.2.2): it comes from the
 * network and must not raise. */
static mm_msg_type msg_type_of(const char *type)
{
	int i;
	for (i = 0; type && msg_types[i]; i++)
		if (strcmp(type, msg_types[i]) == 0)
			return (mm_msg_type)i;
	return MM_MSG_NORMAL;
}

static int l_message_out(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	const char *room = luaL_checkstring(L, 4);
	const char *nick = luaL_optstring(L, 5, NULL);
	mm_msg_type type = msg_type_of(luaL_optstring(L, 6, NULL));
	const char *id = luaL_optstring(L, 7, NULL);
	mm_decision d;
	mm_err err = mm_session_message(s, account, resource, room, nick,
		type, id, &d);
	return push_result(L, err, &d);
}

static int l_session_gone(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	mm_decision d;
	mm_err err = mm_session_gone(s, account, resource, &d);
	return push_result(L, err, &d);
}

/* session_reachable(account, resource, reachable) -> true | nil, token, ... */
static int l_session_reachable(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *resource = luaL_checkstring(L, 3);
	int reachable = lua_toboolean(L, 4);
	mm_err err = mm_session_reachable(s, account, resource, reachable);
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushboolean(L, 1);
	return 1;
}

/* ---- events from rooms -------------------------------------------------- */

/* The handle of the table's payload text (at index t).  A room's stanza
 * reaches every local account in turn with the same Lua string: the first
 * call holds its text in the core's pool, the following ones find it by
 * the string's address.  NULL (the core then looks the text up itself)
 * for a missing payload, one with a NUL, or when memory is short. */
static const mm_payload *held_payload(lua_State *L, int t)
{
	box *b = luaL_checkudata(L, 1, STATE_MT);
	const char *text;
	mm_payload *p;
	size_t len;
	lua_getfield(L, t, "payload");
	if (lua_type(L, -1) != LUA_TSTRING) {
		lua_pop(L, 1);
		return NULL;
	}
	text = lua_tolstring(L, -1, &len);
	if (text == b->held_text) {
		lua_pop(L, 1);
		return b->held;
	}
	p = mm_payload_hold(b->state, text, len);
	if (p == NULL) {
		lua_pop(L, 1);
		return NULL;
	}
	mm_payload_release(b->state, b->held);
	b->held = p;
	b->held_text = text;
	lua_setiuservalue(L, 1, 1); /* keeps the string: pops it */
	return p;
}

/*
 * Optional string field of the table at index t; NULL when absent.  The
 * value stays on the stack (one slot, nil included) so that the string
 * lives as long as the caller needs it: the table may hand out a fresh
 * string on each access (__index), which nothing else would keep alive.
 */
static const char *opt_field(lua_State *L, int t, const char *key)
{
	lua_getfield(L, t, key);
	if (lua_isnil(L, -1))
		return NULL;
	if (lua_type(L, -1) != LUA_TSTRING)
		luaL_error(L, "field '%s' must be a string", key);
	return lua_tostring(L, -1);
}

static const char *const pres_types[] = {"available", "unavailable", "error", NULL};

static int l_room_presence(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	const char *nick = luaL_optstring(L, 4, NULL);
	mm_presence p;
	mm_decision d;
	mm_err err;
	const char *type;
	int i;

	luaL_checktype(L, 5, LUA_TTABLE);
	luaL_checkstack(L, 16, NULL); /* the fields stay on the stack */
	memset(&p, 0, sizeof p);
	type = opt_field(L, 5, "type");
	for (i = 0; type && pres_types[i]; i++)
		if (strcmp(type, pres_types[i]) == 0)
			break;
	luaL_argcheck(L, type == NULL || pres_types[i] != NULL, 5, "invalid presence type");
	p.type = type ? (mm_pres_type)i : MM_PRES_AVAILABLE;
	lua_getfield(L, 5, "codes");
	if (!lua_isnil(L, -1)) {
		lua_Integer n, k;
		luaL_argcheck(L, lua_istable(L, -1), 5, "codes must be an array");
		n = (lua_Integer)lua_rawlen(L, -1);
		for (k = 1; k <= n; k++) {
			lua_rawgeti(L, -1, k);
			p.status |= mm_status_bit((int)lua_tointeger(L, -1));
			lua_pop(L, 1);
		}
	}
	lua_pop(L, 1);
	p.condition = opt_field(L, 5, "condition");
	p.new_nick = opt_field(L, 5, "new_nick");
	p.affiliation = opt_field(L, 5, "affiliation");
	p.role = opt_field(L, 5, "role");
	p.destroyed = bool_field(L, 5, "destroyed");
	p.id = opt_field(L, 5, "id");
	p.payload = opt_field(L, 5, "payload");
	p.payload_handle = held_payload(L, 5);
	err = mm_room_presence(s, account, room, nick, &p, &d);
	return push_result(L, err, &d);
}

/* room_message(account, room, nick, m [, lean]): lean as for push_result_as */
static int l_room_message(lua_State *L)
{
	mm_state *s = check_state_timeless(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	const char *nick = luaL_optstring(L, 4, NULL);
	int lean = lua_toboolean(L, 6); /* read before the fields go on the stack */
	mm_message m;
	mm_decision d;
	mm_err err;

	luaL_checktype(L, 5, LUA_TTABLE);
	luaL_checkstack(L, 16, NULL); /* the fields stay on the stack */
	memset(&m, 0, sizeof m);
	m.type = msg_type_of(opt_field(L, 5, "type"));
	m.has_subject = bool_field(L, 5, "subject");
	m.has_body = bool_field(L, 5, "body");
	m.id = opt_field(L, 5, "id");
	m.queryid = opt_field(L, 5, "queryid");
	m.stanza_id = opt_field(L, 5, "stanza_id");
	m.stamp = num_field(L, 5, "stamp", 0);
	m.delayed = bool_field(L, 5, "delayed");
	m.payload = opt_field(L, 5, "payload");
	m.payload_handle = held_payload(L, 5);
	err = mm_room_message(s, account, room, nick, &m, &d);
	return push_result_as(L, err, &d, lean);
}

/* An event that names an account and a room only: fn(account, room). */
static int account_room_event(lua_State *L,
		mm_err (*fn)(mm_state *, const char *, const char *, mm_decision *))
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	mm_decision d;
	mm_err err = fn(s, account, room, &d);
	return push_result(L, err, &d);
}

/* room_iq(account, room, nick, id, is_error, condition) */
static int l_room_iq(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	const char *nick = luaL_optstring(L, 4, NULL);
	const char *id = luaL_checkstring(L, 5);
	int is_error = lua_toboolean(L, 6);
	const char *condition = luaL_optstring(L, 7, NULL);
	mm_decision d;
	mm_err err = mm_room_iq(s, account, room, nick, id, is_error, condition, &d);
	return push_result(L, err, &d);
}

static int l_tick(lua_State *L)
{
	mm_state *s = check_state(L);
	double now = (double)luaL_checknumber(L, 2);
	mm_decision d;
	mm_err err = mm_tick(s, now, &d);
	return push_result(L, err, &d);
}

/* ping_later(host, delay) -> true | nil, token, condition, type, text */
static int l_ping_later(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *host = luaL_checkstring(L, 2);
	lua_Integer delay = luaL_checkinteger(L, 3);
	mm_err err;
	luaL_argcheck(L, delay >= 0 && delay <= 86400, 3, "delay out of range");
	err = mm_ping_later(s, host, (unsigned)delay);
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushboolean(L, 1);
	return 1;
}

/* ping_due([host], now) */
static int l_ping_due(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *host = luaL_optstring(L, 2, NULL);
	double now = (double)luaL_checknumber(L, 3);
	mm_decision d;
	mm_err err = mm_ping_due(s, host, now, &d);
	return push_result(L, err, &d);
}

static int l_account_leave(lua_State *L)
{
	return account_room_event(L, mm_account_leave);
}

/* restore(account, room, nick [, password, last_id, last_stamp]) */
static int l_restore(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	const char *nick = luaL_checkstring(L, 4);
	const char *password = luaL_optstring(L, 5, NULL);
	const char *last_id = luaL_optstring(L, 6, NULL);
	double last_stamp = (double)luaL_optnumber(L, 7, 0);
	mm_decision d;
	mm_err err = mm_account_restore(s, account, room, nick, password, last_id,
		last_stamp, &d);
	return push_result(L, err, &d);
}

/* clock(fn): fn() gives the time (seconds) each call takes as its now */
static int l_clock(lua_State *L)
{
	check_state(L);
	if (!lua_isnil(L, 2))
		luaL_checktype(L, 2, LUA_TFUNCTION);
	lua_settop(L, 2);
	lua_setiuservalue(L, 1, 2);
	return 0;
}

/* set_spans(account, room, { {from, to}, ... }) -> true | nil, token, ... */
static int l_set_spans(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	mm_span spans[MM_MAX_SPANS];
	lua_Integer n, i, skip;
	mm_err err;
	luaL_checktype(L, 4, LUA_TTABLE);
	n = (lua_Integer)lua_rawlen(L, 4);
	skip = n > MM_MAX_SPANS ? n - MM_MAX_SPANS : 0;
	for (i = skip; i < n; i++) {
		mm_span *sp = &spans[i - skip];
		if (lua_rawgeti(L, 4, i + 1) != LUA_TTABLE)
			return push_result(L, MM_EINVAL, NULL);
		lua_rawgeti(L, -1, 1);
		lua_rawgeti(L, -2, 2);
		if (!lua_isnumber(L, -2) || !(lua_isnil(L, -1) || lua_isnumber(L, -1)))
			return push_result(L, MM_EINVAL, NULL);
		sp->from = (double)lua_tonumber(L, -2);
		sp->to = lua_isnil(L, -1) ? -1 : (double)lua_tonumber(L, -1);
		lua_pop(L, 3);
	}
	err = mm_membership_set_spans(s, account, room, spans, (size_t)(n - skip));
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushboolean(L, 1);
	return 1;
}

static void push_dirty(const char *account, void *ud)
{
	lua_State *L = ud;
	lua_Integer n = (lua_Integer)lua_rawlen(L, -1); /* the table, before the push */
	lua_pushstring(L, account);
	lua_rawseti(L, -2, n + 1);
}

/* take_dirty(level) -> array of accounts */
static int l_take_dirty(lua_State *L)
{
	mm_state *s = check_state(L);
	lua_Integer level = luaL_optinteger(L, 2, 1);
	luaL_argcheck(L, level == 1 || level == 2, 2, "level must be 1 or 2");
	lua_newtable(L);
	mm_take_dirty(s, (int)level, push_dirty, L);
	return 1;
}

static int l_delivery_failed(lua_State *L)
{
	return account_room_event(L, mm_delivery_failed);
}

/* kept(room, stanza_id) -> text | nil */
static int l_kept(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *room = luaL_checkstring(L, 2);
	const char *sid = luaL_checkstring(L, 3);
	const char *text = mm_room_kept(s, room, sid);
	if (text == NULL)
		return 0;
	lua_pushstring(L, text);
	return 1;
}

/* withdraw(room, stanza_id, tombstone) -> replaced | nil, token, ... */
static int l_withdraw(lua_State *L)
{
	mm_state *s = check_state(L);
	const char *room = luaL_checkstring(L, 2);
	const char *sid = luaL_checkstring(L, 3);
	size_t len;
	const char *payload = luaL_checklstring(L, 4, &len);
	size_t replaced;
	mm_err err;
	if (memchr(payload, '\0', len) != NULL)
		return push_result(L, MM_EINVAL, NULL);
	err = mm_room_withdraw(s, room, sid, payload, &replaced);
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushinteger(L, (lua_Integer)replaced);
	return 1;
}

/* ---- inspection --------------------------------------------------------- */

static void set_int(lua_State *L, const char *key, size_t v)
{
	lua_pushinteger(L, (lua_Integer)v);
	lua_setfield(L, -2, key);
}

static int l_stats(lua_State *L)
{
	mm_state *s = check_state_timeless(L);
	mm_stats st;
	mm_state_stats(s, &st);
	lua_createtable(L, 0, 6);
	set_int(L, "accounts", st.accounts);
	set_int(L, "memberships", st.memberships);
	set_int(L, "sessions", st.sessions);
	set_int(L, "occupants", st.occupants);
	set_int(L, "payloads", st.payloads);
	set_int(L, "payload_bytes", st.payload_bytes);
	set_int(L, "cached_bytes", st.cached_bytes);
	set_int(L, "iqs", st.iqs);
	return 1;
}

static int l_limits(lua_State *L)
{
	const mm_limits *lim = mm_state_limits(check_state(L));
	lua_createtable(L, 0, 5);
	set_int(L, "max_rooms", lim->max_rooms);
	set_int(L, "max_sessions", lim->max_sessions);
	set_int(L, "max_occupants", lim->max_occupants);
	set_int(L, "max_pending", lim->max_pending);
	set_int(L, "max_nick_bytes", lim->max_nick_bytes);
	set_int(L, "max_iqs", lim->max_iqs);
	set_int(L, "iq_timeout", lim->iq_timeout);
	set_int(L, "rejoin_delay", lim->rejoin_delay);
	set_int(L, "rejoin_grace", lim->rejoin_grace);
	set_int(L, "history_size", lim->history_size);
	set_int(L, "history_default", lim->history_default);
	set_int(L, "history_max", lim->history_max);
	lua_pushboolean(L, lim->log_history);
	lua_setfield(L, -2, "log_history");
	set_int(L, "join_timeout", lim->join_timeout);
	set_int(L, "max_membership_bytes", lim->max_membership_bytes);
	set_int(L, "max_account_bytes", lim->max_account_bytes);
	set_int(L, "max_cache_bytes", lim->max_cache_bytes);
	return 1;
}

/* member(account, room) -> the state's name ("joining", "joined",
 * "leaving", "leaving-rejoin", "rejoin-wait", "rejoining") or nil */
static int l_member(lua_State *L)
{
	mm_state *s = check_state_timeless(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	int ms = mm_membership_state(s, account, room);
	if (ms < 0) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushstring(L, mm_mstate_name(ms));
	lua_pushstring(L, mm_membership_nick(s, account, room));
	return 2;
}

static int push_membership(const mm_membership_info *info, void *ud)
{
	lua_State *L = ud;
	lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
	lua_createtable(L, 0, 7);
	set_str(L, "room", info->room);
	set_str(L, "nick", info->nick);
	set_str(L, "password", info->password);
	lua_pushstring(L, mm_mstate_name((int)info->state));
	lua_setfield(L, -2, "state");
	set_int(L, "sessions", info->sessions);
	set_int(L, "occupants", info->occupants);
	lua_pushboolean(L, info->has_subject);
	lua_setfield(L, -2, "has_subject");
	set_int(L, "history", info->history);
	set_int(L, "bytes", info->bytes);
	set_str(L, "last_id", info->last_id);
	if (info->last_stamp > 0) {
		lua_pushnumber(L, (lua_Number)info->last_stamp);
		lua_setfield(L, -2, "last_stamp");
	}
	lua_pushboolean(L, info->persistent);
	lua_setfield(L, -2, "persistent");
	push_spans(L, info->spans, info->nspans);
	lua_setfield(L, -2, "spans");
	lua_rawseti(L, -2, n + 1);
	return 0;
}

static int l_memberships(lua_State *L)
{
	mm_state *s = check_state_timeless(L);
	const char *account = luaL_checkstring(L, 2);
	lua_newtable(L);
	luaL_checkstack(L, 4, NULL);
	mm_account_memberships(s, account, push_membership, L);
	return 1;
}

static int push_session(const char *resource, int joined, void *ud)
{
	lua_State *L = ud;
	lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
	lua_createtable(L, 0, 2);
	set_str(L, "resource", resource);
	lua_pushboolean(L, joined);
	lua_setfield(L, -2, "joined");
	lua_rawseti(L, -2, n + 1);
	return 0;
}

static int l_sessions(lua_State *L)
{
	mm_state *s = check_state_timeless(L);
	const char *account = luaL_checkstring(L, 2);
	const char *room = luaL_checkstring(L, 3);
	lua_newtable(L);
	luaL_checkstack(L, 4, NULL);
	mm_membership_sessions(s, account, room, push_session, L);
	return 1;
}

static const luaL_Reg state_methods[] = {
	{"join", l_join},
	{"leave", l_leave},
	{"presence_out", l_presence_out},
	{"message_out", l_message_out},
	{"iq_out", l_iq_out},
	{"session_gone", l_session_gone},
	{"session_reachable", l_session_reachable},
	{"room_presence", l_room_presence},
	{"room_message", l_room_message},
	{"room_iq", l_room_iq},
	{"tick", l_tick},
	{"ping_later", l_ping_later},
	{"ping_due", l_ping_due},
	{"restore", l_restore},
	{"set_spans", l_set_spans},
	{"clock", l_clock},
	{"account_leave", l_account_leave},
	{"take_dirty", l_take_dirty},
	{"delivery_failed", l_delivery_failed},
	{"kept", l_kept},
	{"withdraw", l_withdraw},
	{"member", l_member},
	{"stats", l_stats},
	{"limits", l_limits},
	{"set_limits", l_set_limits},
	{"memberships", l_memberships},
	{"sessions", l_sessions},
	{"close", l_close},
	{NULL, NULL}
};

static const luaL_Reg state_meta[] = {
	{"__gc", l_close},
	{"__close", l_close},
	{"__tostring", l_tostring},
	{"__index", NULL},
	{NULL, NULL}
};

/* normalize_jid(jid) -> jid | nil, token, condition, type, text */
static int l_normalize_jid(lua_State *L)
{
	const char *jid = luaL_checkstring(L, 1);
	char out[3 * 1024 + 3];
	mm_err err = mm_jid_normalize(jid, out, sizeof out);
	if (err != MM_OK)
		return push_result(L, err, NULL);
	lua_pushstring(L, out);
	return 1;
}

/* minimix.mention(text, nick): whether text names nick as a whole word. */
static int l_mention(lua_State *L)
{
	size_t len, nick_len;
	const char *text = luaL_checklstring(L, 1, &len);
	const char *nick = luaL_checklstring(L, 2, &nick_len);
	lua_pushboolean(L, mm_mention(text, len, nick, nick_len));
	return 1;
}

static const luaL_Reg module_funcs[] = {
	{"new", l_new},
	{"mention", l_mention},
	{"normalize_jid", l_normalize_jid},
	{NULL, NULL}
};

MM_EXPORT int luaopen_minimix(lua_State *L);

MM_EXPORT int luaopen_minimix(lua_State *L)
{
	luaL_newmetatable(L, STATE_MT);
	luaL_setfuncs(L, state_meta, 0);
	luaL_newlib(L, state_methods);
	lua_setfield(L, -2, "__index");
	lua_pop(L, 1);

	luaL_newlib(L, module_funcs);
	lua_pushliteral(L, "0.1.0");
	lua_setfield(L, -2, "_VERSION");
	return 1;
}
