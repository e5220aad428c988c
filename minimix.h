/*
 * minimix.h - the core of mod_minimix: account-level MUC membership.
 *
 * The account (bare JID) is the XEP-0045 occupant; client sessions attach
 * to the account's membership and the core decides which sessions get
 * which room traffic.  The core is an event-in, decision-out machine: the
 * caller reports what happened (a session asked to join, the room sent a
 * presence, ...) and receives a decision, a list of actions to carry out.
 * The core never sends anything and never calls back.
 *
 * Conventions for every function below:
 *  - Strings passed in are borrowed for the duration of the call only; the
 *    core copies whatever it keeps.  No argument may alias the state.
 *  - A mutator that fails returns an mm_err other than MM_OK and leaves the
 *    state exactly as it was.  Nothing aborts.
 *  - A decision (mm_decision) and every string it points to is owned by the
 *    state and stays valid until the next call that takes a non-const
 *    mm_state, or until the state is freed.  Copy what you need before that.
 *  - JIDs are given as the router prepared them (nodeprep/nameprep done).
 *    Bare JIDs are "node@domain"; resources and nicks are UTF-8.
 *
 * Not thread-safe: one state per thread, as Prosody is single-threaded.
 */
#ifndef MINIMIX_H
#define MINIMIX_H

#include <stddef.h>
#include <stdint.h>

typedef struct mm_state mm_state;

typedef enum mm_err {
	MM_OK = 0,
	MM_ENOMEM,        /* allocation failed */
	MM_EINVAL,        /* malformed argument (empty JID, nick too long, ...) */
	MM_EROOMLIMIT,    /* the account is in max_rooms rooms already */
	MM_ESESSIONLIMIT, /* the membership has max_sessions sessions already */
	MM_EIQLIMIT,      /* the session has max_iqs IQs awaiting an answer */
	MM_ERR_COUNT
} mm_err;

/* A short English description of err; never NULL. */
const char *mm_strerror(mm_err err);
/* A stable kebab-case token for err ("room-limit"); never NULL. */
const char *mm_errtoken(mm_err err);
/*
 * The XMPP stanza error a client should get for err: *type is "cancel",
 * "modify", "wait" or "auth"; the return value is the defined condition
 * ("resource-constraint", ...).  Never NULL.
 */
const char *mm_errcondition(mm_err err, const char **type);

/* Limits; every one bounds memory.  0 in a field means "use the default". */
typedef struct mm_limits {
	size_t max_rooms;       /* memberships per account (default 256) */
	size_t max_sessions;    /* sessions per membership (default 32) */
	size_t max_occupants;   /* cached occupants per membership (default 2000) */
	size_t max_pending;     /* remembered outgoing stanza ids per membership
	                         * (default 32; oldest forgotten first) */
	size_t max_nick_bytes;  /* longest nick accepted (default 1023, RFC 7622) */
	size_t max_iqs;         /* IQs awaiting an answer per session (default 16) */
	size_t iq_timeout;      /* seconds before an unanswered IQ fails (default 60) */
	size_t rejoin_delay;    /* seconds before the first automatic re-join after
	                         * a shutdown (332) or a failed attempt (default 5);
	                         * doubled per failed attempt, up to 64 times,
	                         * and never more than an hour */
	size_t rejoin_grace;    /* seconds the room may keep the account out
	                         * (refused or unanswered re-joins) before its
	                         * span closes at the time it was last in
	                         * (default 300; see the span rules) */
	size_t history_size;    /* room messages kept per membership for catch-up
	                         * (default 50) */
	size_t history_default; /* of which a join without <history/> gets at
	                         * most this many (default 20, as Prosody's MUC) */
	size_t history_max;     /* the most messages one join gets from the
	                         * room log however much it asks (default 500) */
	int log_history;        /* nonzero: later sessions' catch-up comes from
	                         * the room log (MM_OP_REPLAY_LOG) instead of
	                         * the in-memory ring (default 0: the ring) */
	size_t join_timeout;    /* seconds a join or a leave waits for the room's
	                         * answer before it is given up (default 60) */
	/*
	 * Bytes of serialized stanzas the caches (occupants, self-presence,
	 * subject, catch-up) may hold: per membership, per account (over its
	 * memberships; a text two memberships share counts for each), and
	 * over the whole state (each distinct text once).  Beyond them an
	 * occupant presence is not cached (a changed one loses its entry
	 * rather than go stale) and the catch-up ring drops its oldest
	 * messages to make room, keeping none when even an empty ring would
	 * not do.  The self-presence and the subject count like the rest:
	 * the ring's oldest messages make room for them (a later session's
	 * join needs them more), and one that does not fit even with the
	 * ring empty is not cached (the one before it goes too): a later
	 * session then gets a stub in its place (MM_OP_SELF_STUB,
	 * MM_OP_SUBJECT_STUB), so that one account's rooms sending huge ones
	 * cannot use up what the account's and others' memberships need.  A
	 * kept affiliation and role are known tokens.  Live traffic is
	 * delivered whatever the caches keep.
	 */
	size_t max_membership_bytes; /* default 4 MiB */
	size_t max_account_bytes;    /* default 16 MiB */
	size_t max_cache_bytes;      /* default 256 MiB */
} mm_limits;

#define MM_DEFAULT_MAX_ROOMS 256
#define MM_DEFAULT_MAX_SESSIONS 32
#define MM_DEFAULT_MAX_OCCUPANTS 2000
#define MM_DEFAULT_MAX_PENDING 32
#define MM_DEFAULT_MAX_NICK_BYTES 1023
#define MM_DEFAULT_MAX_IQS 16
#define MM_DEFAULT_IQ_TIMEOUT 60
#define MM_DEFAULT_REJOIN_DELAY 5
#define MM_DEFAULT_REJOIN_GRACE 300
#define MM_DEFAULT_HISTORY_SIZE 50
#define MM_DEFAULT_HISTORY_DEFAULT 20
#define MM_DEFAULT_HISTORY_MAX 500
#define MM_DEFAULT_JOIN_TIMEOUT 60
#define MM_DEFAULT_MAX_MEMBERSHIP_BYTES ((size_t)4 << 20)
#define MM_DEFAULT_MAX_ACCOUNT_BYTES ((size_t)16 << 20)
#define MM_DEFAULT_MAX_CACHE_BYTES ((size_t)256 << 20)

/* Fill *limits with the defaults. */
void mm_limits_default(mm_limits *limits);

/*
 * A new empty state with the given limits (NULL: defaults; zero fields:
 * defaults).  Returns NULL when memory is exhausted.
 */
mm_state *mm_state_new(const mm_limits *limits);
/* Free the state and everything it owns.  NULL is accepted. */
void mm_state_free(mm_state *state);
/* The limits in force (defaults filled in). */
const mm_limits *mm_state_limits(const mm_state *state);
/*
 * Change the limits of a state in use (a reloaded configuration); zero
 * fields mean the defaults, as for mm_state_new().  A smaller
 * history_size keeps each membership's newest messages, a smaller
 * max_pending its newest stanza ids; a lower max_rooms, max_sessions,
 * max_occupants or max_iqs refuses what would go beyond it from now on and
 * keeps what is there.  The other limits apply to what comes next.
 * Errors: MM_ENOMEM, with the state as it was.
 */
mm_err mm_state_set_limits(mm_state *state, const mm_limits *limits);

/*
 * Serialized stanzas are pooled: each distinct text is held once however
 * many memberships keep it.  A caller that passes the same text to many
 * calls (a room's stanza reaches every local account in turn) can hold it
 * once and pass the handle with the text (the payload_handle fields below):
 * the core then takes the pooled copy without looking the text up.  The
 * text is `len` bytes without NUL.  Returns NULL on allocation failure; the
 * handle stays valid until released, or until the state is freed.
 */
typedef struct mm_payload mm_payload;
mm_payload *mm_payload_hold(mm_state *state, const char *text, size_t len);
/* Let go of a handle from mm_payload_hold().  NULL is accepted. */
void mm_payload_release(mm_state *state, mm_payload *payload);

/* ---- the membership lifecycle ------------------------------------------- */

/*
 * Each membership (an account in a room) is in exactly one of these states;
 * nothing else about it says where it is in its life.  The states that wait
 * on someone else have a deadline (see mm_tick()): JOINING, REJOINING,
 * LEAVING and LEAVING_REJOIN wait join_timeout seconds for the room's
 * answer, REJOIN_WAIT waits its back-off delay.
 */
typedef enum mm_mstate {
	MM_NONE = -1,       /* no membership: before the first join, after the end */
	MM_JOINING = 0,     /* a session's join is on its way to the room; a
	                     * refusal or the timeout ends the membership */
	MM_JOINED,          /* the account is in the room */
	MM_LEAVING,         /* the account's leave is on its way */
	MM_LEAVING_REJOIN,  /* ... and a session asked to join meanwhile: once
	                     * out, the account joins again as it asked */
	MM_REJOIN_WAIT,     /* out of the room (332, a failed re-join); an
	                     * automatic re-join waits for its delay */
	MM_REJOINING,       /* an automatic re-join is on its way (restart,
	                     * bookmark, 333, fell out); transient failures and
	                     * the timeout are tried again later */
	MM_MSTATE_COUNT
} mm_mstate;

/* What happens to a membership. */
typedef enum mm_mevent {
	MM_EV_JOIN = 0,        /* a session asks to join (mm_session_join) */
	MM_EV_RESTORE,         /* the account joins by itself (mm_account_restore) */
	MM_EV_LAST_LEAVE,      /* the last connected session in the room leaves; or
	                        * the last one waiting to come back leaves or goes */
	MM_EV_ACCOUNT_LEAVE,   /* a bookmark or a command (mm_account_leave) */
	MM_EV_SELF,            /* the room's available self-presence */
	MM_EV_ERROR,           /* the room's error presence, not for a remembered id */
	MM_EV_ERROR_TRANSIENT, /* ... with a transient condition (see mm_room_presence) */
	MM_EV_OUT,             /* unavailable self-presence: left, kicked, banned,
	                        * removed, destroyed */
	MM_EV_SHUTDOWN,        /* unavailable self-presence with 332 */
	MM_EV_TECHNICAL,       /* unavailable self-presence with 333 */
	MM_EV_FELL_OUT,        /* the module's self-ping was answered not-acceptable */
	MM_EV_TIMEOUT,         /* the state's deadline passed (mm_tick) */
	MM_EV_COUNT
} mm_mevent;

/*
 * The transitions: state x event -> next state.  "-" is refused: the state
 * stays and nothing is sent (room traffic is dropped, a session's request
 * is answered as each function says).  Self-loops are listed; they are
 * transitions like any other.
 *
 *                 JOIN        RESTORE    LAST_LEAVE ACCOUNT_LEAVE SELF    ERROR   ERROR_TRANS. OUT     SHUTDOWN    TECHNICAL  FELL_OUT   TIMEOUT
 * NONE            JOINING     REJOINING  -          -             -       -       -            -       -           -          -          -
 * JOINING         JOINING     -          LEAVING    LEAVING       JOINED  NONE    NONE         NONE    REJOIN_WAIT REJOINING  -          NONE
 * JOINED          JOINED      -          LEAVING    LEAVING       JOINED  -       -            NONE    REJOIN_WAIT REJOINING  REJOINING  -
 * LEAVING         LEAV._REJ.  -          -          -             -       NONE    NONE         NONE    NONE        NONE       -          NONE
 * LEAVING_REJOIN  LEAV._REJ.  -          LEAVING    LEAVING       -       JOINING JOINING      JOINING JOINING     JOINING    -          JOINING
 * REJOIN_WAIT     REJOINING   -          NONE       NONE          JOINED  -       -            NONE    REJOIN_WAIT REJOINING  -          REJOINING
 * REJOINING       REJOINING   -          LEAVING    LEAVING       JOINED  NONE    REJOIN_WAIT  NONE    REJOIN_WAIT REJOINING  -          REJOIN_WAIT
 *
 * The actions, by (old state, event, new state):
 *  - NONE -JOIN-> JOINING: SEND_JOIN of the session's request.
 *    NONE -RESTORE-> REJOINING: a fresh SEND_JOIN asking for history since
 *    the last message seen.
 *  - JOINING, REJOINING -JOIN-> same: the session waits; it is replayed the
 *    occupants seen so far.  JOINED -JOIN-> JOINED: replay of occupants,
 *    self-presence, catch-up history, subject.  LEAVING, LEAVING_REJOIN
 *    -JOIN-> LEAVING_REJOIN: the session waits.  REJOIN_WAIT -JOIN->
 *    REJOINING: SEND_JOIN of the session's request, now, with the
 *    password the membership keeps.
 *  - -LAST_LEAVE-> LEAVING: SEND_AS_ACCOUNT of the session's leave (from
 *    LEAVING_REJOIN: REFLECT_LEAVE, the account is leaving already).
 *    REJOIN_WAIT -LAST_LEAVE-> NONE: REFLECT_LEAVE; event "left".
 *  - -ACCOUNT_LEAVE-> LEAVING: REFLECT_LEAVE to every session, SEND_LEAVE.
 *    REJOIN_WAIT -ACCOUNT_LEAVE-> NONE: REFLECT_LEAVE to every session;
 *    event "left".
 *  - -SELF-> JOINED: DELIVER to every session (those that asked with their
 *    join's id, and 210 when they asked for another nick); event "joined"
 *    unless it was JOINED already.
 *  - JOINING, REJOINING -ERROR-> NONE, JOINING -ERROR_TRANSIENT-> NONE:
 *    DELIVER the error to each session that asked; event "removed".
 *    REJOINING -ERROR_TRANSIENT-> REJOIN_WAIT: REJOIN_LATER (informative);
 *    event "rejoining"; past rejoin_grace it also closes the span (see
 *    the span rules below).
 *  - -OUT-> NONE: DELIVER to every session; event "removed" with why.
 *    -SHUTDOWN-> REJOIN_WAIT: DELIVER to every session, REJOIN_LATER;
 *    -TECHNICAL-> REJOINING: DELIVER to every session, a fresh SEND_JOIN;
 *    JOINED -FELL_OUT-> REJOINING: REFLECT_LEAVE with 333 to every session,
 *    a fresh SEND_JOIN.  The three with event "rejoining": the caches go,
 *    the sessions wait for the join sequence again.
 *  - LEAVING -(any room answer, TIMEOUT)-> NONE: the leaving sessions get
 *    their unavailable self-presence (DELIVER of the room's, else
 *    REFLECT_LEAVE); event "left".  LEAVING_REJOIN -> JOINING: the same,
 *    then a fresh SEND_JOIN with the nick and password of the first session
 *    waiting.
 *  - JOINING -TIMEOUT-> NONE: JOIN_ERROR remote-server-timeout to each
 *    session that asked; event "removed".  REJOINING -TIMEOUT-> REJOIN_WAIT:
 *    as a transient error.  REJOIN_WAIT -TIMEOUT-> REJOINING: a fresh
 *    SEND_JOIN; event "rejoining".
 *
 * Membership spans (what a later session may read from the room log):
 * each membership keeps the times it was in the room, at most
 * MM_MAX_SPANS [from, to] pairs, oldest dropped first, `to` open while the
 * account is in.  By (old state, event, new state), at the caller's clock
 * (mm_state_now()):
 *  - a span OPENS on JOINING -SELF-> JOINED (a join the account asked for,
 *    the one after LEAVING_REJOIN included), and on REJOINING, REJOIN_WAIT
 *    -SELF-> JOINED when no span is open (a membership restored without
 *    its spans);
 *  - the open span CLOSES on every transition from JOINED, REJOIN_WAIT or
 *    REJOINING to LEAVING or NONE: the account's leave, a kick, a ban, a
 *    destroyed room, a refused re-join;
 *  - it stays OPEN through involuntary outages: JOINED -SHUTDOWN->
 *    REJOIN_WAIT, -TECHNICAL-, -FELL_OUT-> REJOINING, the transient
 *    failures and timeouts between them, and a restart (the spans are
 *    stored and given back with mm_membership_set_spans()).  The account
 *    did not leave: the room's history on the re-join and the log other
 *    local accounts kept cover the gap;
 *  - but not through a long refusal: the account was last in when it
 *    left JOINED for REJOIN_WAIT or REJOINING (or, for a restored
 *    membership, when mm_account_restore() was called).  The first
 *    REJOINING -ERROR_TRANSIENT-, -SHUTDOWN-, -TIMEOUT-> REJOIN_WAIT (the
 *    room refused the re-join for now, or never answered it) more than
 *    rejoin_grace seconds after that CLOSES the open span at the time the
 *    account was last in: a later session never reads what was said
 *    while the room kept its account out.  The re-join that finally gets
 *    in opens the next span (REJOINING -SELF-> JOINED with none open).
 */

/*
 * The table above: the state after `event` in `state` (MM_NONE when the
 * membership ends), or MM_REFUSED when the event has no transition there
 * (also for values out of range).
 */
#define MM_REFUSED (-2)
int mm_transition(int state, int event);

/* A short lower-case name of a state ("joining", "rejoin-wait", "none") or
 * an event ("last-leave"); "?" for values out of range. */
const char *mm_mstate_name(int state);
const char *mm_mevent_name(int event);

/*
 * Observe every transition (tests, fuzzing, debugging): fn gets the
 * account, the room, the state before, the event and the state after, for
 * each membership that takes a transition, once the call that causes it
 * commits.  fn must not call into the state.  NULL stops observing.
 */
typedef void (*mm_observer)(const char *account, const char *room, int from,
		int event, int to, void *ud);
void mm_state_observe(mm_state *state, mm_observer fn, void *ud);

/* ---- decisions ---------------------------------------------------------- */

typedef enum mm_op {
	/*
	 * Route the account's join presence to room/nick, from the account's
	 * bare JID.  `from_request` set: rewrite the session's own stanza (keep
	 * its id and children), its MUC <password/>, when `password` is not
	 * NULL, replaced by `password` (the one the account entered with: a
	 * device joining while the account waits to re-join may lack it).
	 * Otherwise build a fresh join; `password` is the room password to
	 * include, or NULL.
	 */
	MM_OP_SEND_JOIN,
	/*
	 * Rewrite the session's stanza so it comes from the account's bare JID
	 * and route it to the room (groupchat message, leave, presence update,
	 * nick change, IQ).  Keep children; `id`, when not NULL, replaces the
	 * stanza id (IQs get an id the module owns).
	 */
	MM_OP_SEND_AS_ACCOUNT,
	/*
	 * Make the account leave `room`: route an unavailable presence from the
	 * bare JID to room/`nick` (no session asked: bookmarks, commands).
	 */
	MM_OP_SEND_LEAVE,
	/*
	 * Route the cached presence `payload` (a session's last presence to the
	 * room, serialized without to/from) from the account's bare JID to
	 * `room`/`nick`: the room's view of the account changed to it.
	 */
	MM_OP_SEND_PRESENCE,
	/*
	 * Nothing to carry out (for logs): an automatic re-join waits `delay`
	 * seconds for the room to come back; mm_tick() sends it when due.
	 */
	MM_OP_REJOIN_LATER,
	/*
	 * Deliver the stanza being reported (from the room) to session
	 * `resource`, addressed to its full JID.  `id`, when not NULL, replaces
	 * the stanza id for this copy.  `add_codes` lists status codes to add to
	 * the muc#user element of this copy (see MM_CODE_*).
	 */
	MM_OP_DELIVER,
	/*
	 * Deliver a cached stanza (`payload`, serialized XML without a 'to') to
	 * session `resource`, without the status codes in `drop_codes`.
	 * `add_codes` as for MM_OP_DELIVER.  `stamp` > 0
	 * marks a catch-up message: it goes out with a XEP-0203 delay from the
	 * room with that time, unless it carries one from the room already.
	 */
	MM_OP_REPLAY,
	/*
	 * Serve session `resource` its catch-up from the room log (§7.2.14),
	 * between its self-presence and the subject (limits.log_history
	 * set).  The ring stays a hot cache in front of the log: when its
	 * newest messages answer the request whole, within the membership's
	 * only span (a bound stops before the ring's oldest message, or the
	 * ring holds maxstanzas), they come as REPLAYs and no REPLAY_LOG is
	 * sent.  Only the ring's messages since the account's last re-join
	 * (332, 333, a self-ping) count: what was said while it was out lies
	 * before them, and the log has it.  Otherwise this action alone: the room's messages whose time
	 * falls in one of the `nspans` `spans` (from <= t, and t <= to unless
	 * to < 0, open), at least `since` and `seconds` before `now` when
	 * those are >= 0, the newest `maxstanzas` (always >= 0: absent ->
	 * history_default; never more than history_max) whose serialized
	 * sizes add up to at most `maxchars` (< 0: no bound); sent oldest
	 * first, each with a XEP-0203 delay from the room.
	 */
	MM_OP_REPLAY_LOG,
	/*
	 * Send session `resource` an unavailable self-presence from room/nick:
	 * status 110 plus `add_codes` (333: the account fell out), item with
	 * `affiliation` and role none.  `id` is the id of the session's leave, or
	 * NULL.  `room` names the room.
	 */
	MM_OP_REFLECT_LEAVE,
	/*
	 * Send session `resource` a XEP-0280 'sent' carbon of the session's
	 * stanza (a private message another device of the account sent).
	 */
	MM_OP_CARBON,
	/*
	 * Send session `resource` an IQ error (`condition`, `error_type`) from
	 * `room` (or room/`nick`) with `id`: its IQ was never answered.
	 */
	MM_OP_IQ_ERROR,
	/*
	 * The module's own XEP-0410 self-ping: send an IQ get with a ping child
	 * from `account` to `room`/`nick` with `id`; the answer comes back
	 * through mm_room_iq().
	 */
	MM_OP_SEND_PING,
	/*
	 * Nothing to carry out (for logs): the module's ping could not reach
	 * the room (the server-to-server link is down); mm_tick() pings the
	 * room's host again after `delay` seconds.
	 */
	MM_OP_PING_LATER,
	/* Swallow the session's stanza: it must reach neither room nor peers. */
	MM_OP_DROP,
	/*
	 * Send session `resource` a presence error (`condition`, `error_type`)
	 * from room/`nick` with `id`: its join was never answered.
	 */
	MM_OP_JOIN_ERROR,
	/*
	 * Something happened to the membership of `account` in `room`, as
	 * mm_decision.event says for decisions about one membership: `event`,
	 * `reason`.  In decisions that span many (mm_tick).
	 */
	MM_OP_EVENT,
	/*
	 * Send session `resource` a self-presence from room/`nick` built from
	 * nothing, in place of the REPLAY of the room's own, which was beyond
	 * the byte limits (see mm_limits): status 110 plus `add_codes`, an
	 * item with `affiliation` and `role`, `id` (the session's join id, or
	 * NULL).  A join must end with a self-presence.
	 */
	MM_OP_SELF_STUB,
	/*
	 * Send session `resource` the room's empty subject, <message
	 * type='groupchat' from='`room`'><subject/></message>, in place of the
	 * REPLAY of the room's subject, which was beyond the byte limits: the
	 * subject ends a join (XEP-0045 7.2.15), and the client learns the
	 * room's own with its next change.
	 */
	MM_OP_SUBJECT_STUB
} mm_op;

/* Status codes the core adds to copies (bit set). */
#define MM_CODE_210 0x2u /* the service assigned or changed the nick */
#define MM_CODE_333 0x4u /* removed: technical problem (the account fell out) */
#define MM_CODE_201 0x8u /* room created (drop_codes only) */

/* A time the account was in a room: from <= t <= to; to < 0 while in. */
typedef struct mm_span {
	double from, to;
} mm_span;
#define MM_MAX_SPANS 16

typedef struct mm_action {
	mm_op op;
	const char *room;        /* the room the action concerns; always set */
	const char *account;     /* the account, in decisions that span many
	                          * (mm_tick, mm_ping_due); NULL elsewhere:
	                          * the call's account */
	const char *resource;    /* target session (DELIVER, REPLAY, REFLECT_LEAVE,
	                          * CARBON, IQ_ERROR, JOIN_ERROR) */
	const char *nick;        /* occupant nick in the room (SEND_JOIN,
	                          * SEND_PRESENCE, REFLECT_LEAVE, IQ_ERROR) */
	const char *payload;     /* REPLAY, SEND_PRESENCE: serialized stanza */
	const char *id;          /* id for this copy, or NULL (see each op) */
	const char *password;    /* SEND_JOIN: room password or NULL */
	const char *condition;   /* IQ_ERROR, JOIN_ERROR: defined condition */
	const char *error_type;  /* IQ_ERROR, JOIN_ERROR: cancel, modify, wait, auth */
	const char *affiliation; /* REFLECT_LEAVE, SELF_STUB */
	const char *role;        /* SELF_STUB: the account's role */
	const char *event;       /* EVENT: as mm_decision.event */
	const char *reason;      /* EVENT: as mm_decision.reason, or NULL */
	unsigned add_codes;      /* DELIVER, REPLAY, REFLECT_LEAVE: MM_CODE_* bits */
	/* REPLAY: status codes to remove from the copy before add_codes are
	 * added (MM_CODE_* bits): the cached self-presence told the first
	 * session news that is not a later session's (201: the room was
	 * created, locked; 210: the nick the service gave that session).
	 * What describes the room now (100, 170, ...) stays. */
	unsigned drop_codes;
	unsigned delay;          /* REJOIN_LATER, PING_LATER: seconds */
	int from_request;        /* SEND_JOIN: rewrite the request stanza */
	double stamp;            /* REPLAY: catch-up message time (seconds) or 0 */
	double since;            /* SEND_JOIN (fresh): ask the room for history
	                          * since this time (seconds), or 0 for none;
	                          * REPLAY_LOG: < 0 for none */
	/* REPLAY_LOG: the clamped request and the membership's spans */
	long maxstanzas, maxchars;
	double seconds, now;
	const mm_span *spans;
	size_t nspans;
} mm_action;

typedef struct mm_decision {
	/*
	 * 0: the stanza is not the module's business; let the server handle it
	 * as usual (and `n` is 0).  1: the module handled it; carry out the
	 * actions in order and stop the server's own handling.
	 */
	int handled;
	size_t n;
	const mm_action *actions;
	/*
	 * Something worth a log line or a counter happened to the membership,
	 * or NULL: "joined" (the account is in), "left" (it left as asked),
	 * "removed" (kicked, banned, destroyed, refused; `reason` says why),
	 * "rejoining" (it joins again by itself; `reason` says why).  Persisted
	 * state changed with it: see mm_take_dirty().  Static strings.
	 */
	const char *event;
	const char *reason; /* owned like the actions' strings, or NULL */
} mm_decision;

/* ---- events from the account's sessions --------------------------------- */

/* A session's join request (presence with the MUC <x/>). */
typedef struct mm_join {
	const char *nick;     /* required */
	const char *id;       /* stanza id or NULL */
	const char *password; /* <password/> or NULL */
	const char *show;     /* <show/> of the presence or NULL (available) */
	/* the presence serialized without to/from/id and without the MUC <x/>
	 * ("" for a plain available presence, as a join the module builds
	 * carries), or NULL: the account's presence in the room when this
	 * session is the most available one */
	const char *presence;
	/* the <history/> request (§7.2.14); absent: history_default messages */
	struct {
		int requested;     /* a <history/> element was there */
		long maxstanzas;   /* < 0: no such attribute */
		long maxchars;     /* < 0: no such attribute; counts payload bytes */
		double seconds;    /* < 0: no such attribute */
		double since;      /* < 0: no such attribute; seconds since 1970 */
	} history;
	double now;           /* the caller's clock (seconds), for `seconds` */
} mm_join;

/*
 * Fill req->history from a client's <history/> (XEP-0045 7.2.14), numbers
 * as the client sent them: any double, infinities included.  NaN: no such
 * attribute.  A negative maxstanzas, maxchars or seconds asks for nothing,
 * as Prosody's MUC reads it (0); maxstanzas and maxchars are truncated and
 * at most LONG_MAX; since is kept as given (negative: everything).  Sets
 * req->history.requested.  No conversion in it is undefined.
 */
void mm_join_history(mm_join *req, double maxstanzas, double maxchars,
		double seconds, double since);

/*
 * Session `resource` of `account` sent a MUC join (presence with the MUC
 * <x/>) to room/nick.  `id` is the stanza id or NULL; `password` the room
 * password from the join or NULL.
 *
 *  - No membership: one is created in the joining state and the decision is
 *    SEND_JOIN (from_request).  The membership exists before the caller
 *    routes the join, so a synchronous answer from the room finds it.
 *  - Membership joining: the session waits; it is replayed what the room
 *    sent so far and gets the rest as it arrives.  No second join is sent.
 *  - Membership joined: replay occupants, the self-presence last among them
 *    (with 210 when the nick asked differs from the account's), then the
 *    subject; a self-presence or a subject the byte limits kept from the
 *    caches comes as a stub (SELF_STUB, SUBJECT_STUB).  A session already
 *    joined gets the same full resync.
 *  - Membership leaving: the session waits; the account joins again once the
 *    leave completes.
 *
 * Errors: MM_EINVAL (empty nick, nick longer than max_nick_bytes, empty
 * JIDs), MM_EROOMLIMIT, MM_ESESSIONLIMIT, MM_ENOMEM.  The account is the
 * occupant: once it is in a password-protected room, a later session needs
 * no password (the room's check was the account's); the membership keeps
 * the password it joined with for its automatic re-joins.  On error
 * nothing is recorded; the caller answers the session with
 * mm_errcondition().
 */
mm_err mm_session_join(mm_state *state, const char *account,
		const char *resource, const char *room, const char *nick,
		const char *id, const char *password, mm_decision *out);

/* mm_session_join() with the whole request, presence included. */
mm_err mm_session_join_req(mm_state *state, const char *account,
		const char *resource, const char *room, const mm_join *req,
		mm_decision *out);

/*
 * Session `resource` sent unavailable presence to the room.  Not handled
 * when the session is not in the account's membership of that room.  With
 * other sessions still in: REFLECT_LEAVE to this session only (and
 * SEND_PRESENCE when the room showed this session's presence and the next
 * one differs).  Last session whose client is connected (see
 * mm_session_reachable()): SEND_AS_ACCOUNT (the account leaves), and
 * REFLECT_LEAVE to each other session, which is detached; the room's
 * unavailable self-presence is later delivered to this session and the
 * membership ends.  Last session while an automatic re-join waits for its
 * delay (the account is out): REFLECT_LEAVE (to the others too) and the
 * membership ends.
 */
mm_err mm_session_leave(mm_state *state, const char *account,
		const char *resource, const char *room, const char *id,
		mm_decision *out);

/*
 * Session `resource` sent available presence without the MUC <x/> to
 * room/nick: a nick change when nick differs from the account's (always
 * SEND_AS_ACCOUNT, id remembered so an error answer returns to this
 * session), else a status update.  The room sees the account's presence as
 * that of its most available joined session, by <show/>: chat, available,
 * dnd, away, xa; among equals the latest update wins (a later session's
 * join counts as an update: SEND_PRESENCE of its presence when it leads
 * and the room shows another text).  A status update is
 * SEND_AS_ACCOUNT when it makes this session the most available one,
 * SEND_PRESENCE of another session's presence when this update handed the
 * lead to it, and DROP when the room's view does not change.  `show` and
 * `presence` are as in mm_join.  The room sees nothing when the text it
 * shows would not change.  A session that is in the membership but not
 * joined (waiting, leaving) gets DROP: passed on, the room would take its
 * presence for a join of its own.  Not handled when the session is not in
 * the membership.
 */
mm_err mm_session_presence(mm_state *state, const char *account,
		const char *resource, const char *room, const char *nick,
		const char *id, const char *show, const char *presence,
		mm_decision *out);

/* Kinds of message stanzas. */
typedef enum mm_msg_type {
	MM_MSG_NORMAL = 0,
	MM_MSG_CHAT,
	MM_MSG_GROUPCHAT,
	MM_MSG_HEADLINE,
	MM_MSG_ERROR
} mm_msg_type;

/*
 * Session `resource` sent a message of `type` to the room (nick NULL) or to
 * an occupant (nick set).  A groupchat or private message from a joined
 * session: SEND_AS_ACCOUNT (id remembered).  An error message to a room the
 * account has a membership in: DROP (an error from the account would get it
 * kicked).  Anything else: not handled.
 */
mm_err mm_session_message(mm_state *state, const char *account,
		const char *resource, const char *room, const char *nick,
		mm_msg_type type, const char *id, mm_decision *out);

/*
 * Session `resource` sent an IQ get or set to the room (nick NULL) or to an
 * occupant.  From a joined session: SEND_AS_ACCOUNT with an `id` the module
 * owns; the room's answer is matched by mm_room_iq() and reaches this
 * session alone, with its own id.  `queryid` (a XEP-0313 query) routes the
 * archive's result messages to this session.  `is_ping`: the IQ is a
 * XEP-0410 self-ping, and a not-acceptable answer means the account fell
 * out of the room.  `now` is the caller's clock in seconds, for expiry.
 * Not handled when the session is not joined (the room answers the session
 * itself).  Errors: MM_EIQLIMIT, MM_ENOMEM, MM_EINVAL.
 */
mm_err mm_session_iq(mm_state *state, const char *account,
		const char *resource, const char *room, const char *nick,
		const char *id, const char *queryid, int is_ping, double now,
		mm_decision *out);

/*
 * Session `resource` of `account` is gone (closed, lost, resumption timed
 * out).  It is detached from every membership; the account stays in its
 * rooms.  Always handled.  When the session's presence was the room's view
 * of the account, the decision sends the next most available session's
 * presence (SEND_PRESENCE, with `room`).
 */
mm_err mm_session_gone(mm_state *state, const char *account,
		const char *resource, mm_decision *out);

/*
 * Session `resource` of `account` lost its connection but may come back
 * (reachable 0: stream management keeps it hibernating), or came back
 * (reachable 1).  Such a session stays in its rooms and keeps its room
 * traffic (queued for it), but cannot hold the account in a room: when the
 * last connected session leaves, the account leaves (see
 * mm_session_leave()).  A dropped connection without a leave keeps the
 * account in, as ever.  A new session is reachable.  Errors: MM_EINVAL
 * (empty JIDs).
 */
mm_err mm_session_reachable(mm_state *state, const char *account,
		const char *resource, int reachable);

/* ---- events from rooms -------------------------------------------------- */

typedef enum mm_pres_type {
	MM_PRES_AVAILABLE = 0,
	MM_PRES_UNAVAILABLE,
	MM_PRES_ERROR
} mm_pres_type;

/* Status codes of a muc#user presence, as bits. */
#define MM_STATUS_110 0x001u /* self-presence */
#define MM_STATUS_201 0x002u /* room created */
#define MM_STATUS_210 0x004u /* nick assigned by the service */
#define MM_STATUS_301 0x008u /* banned */
#define MM_STATUS_303 0x010u /* nick change */
#define MM_STATUS_307 0x020u /* kicked */
#define MM_STATUS_321 0x040u /* removed: affiliation change */
#define MM_STATUS_322 0x080u /* removed: members-only */
#define MM_STATUS_332 0x100u /* removed: service shutdown */
#define MM_STATUS_333 0x200u /* removed: technical problem */

/* Map a numeric status code to its MM_STATUS_* bit (0 when unknown). */
unsigned mm_status_bit(int code);

typedef struct mm_presence {
	mm_pres_type type;
	const char *condition;   /* error: the defined condition, or NULL */
	unsigned status;         /* MM_STATUS_* bits */
	const char *new_nick;    /* 303: the item's nick, else NULL */
	const char *affiliation; /* item affiliation or NULL */
	const char *role;        /* item role or NULL */
	int destroyed;           /* the presence carries <destroy/> */
	const char *id;          /* stanza id or NULL */
	/* serialized stanza without 'to', or NULL; kept for replay when cached */
	const char *payload;
	/* optional: a handle holding exactly that text (mm_payload_hold) */
	const mm_payload *payload_handle;
} mm_presence;

/*
 * The room (room JID, occupant `nick`, NULL for the room itself) sent
 * `presence` to the account's bare JID.  Not handled when the account has no
 * membership in the room.  Otherwise the occupant cache is updated and the
 * decision lists a DELIVER per session that should get it; joins complete
 * (self-presence; each waiting session with its own join id, and 210 when
 * it asked for another nick), fail (error: to the waiting sessions that
 * asked, each with its own id, and the membership is forgotten) or end
 * (unavailable self-presence without 303).
 *
 * Removal for a technical reason (333) makes the account join again at
 * once (SEND_JOIN); a shutdown (332) after rejoin_delay (REJOIN_LATER).  The
 * sessions stay and see the join sequence again.  Every automatic re-join
 * asks for history `since` the newest message seen, and the room's history
 * up to the last message seen is dropped, as after a restart.  While such an automatic
 * re-join fails with a transient condition (remote-server-not-found,
 * remote-server-timeout, service-unavailable, internal-server-error,
 * resource-constraint, recipient-unavailable) it is tried again later,
 * the delay doubling each time; any other error ends the membership.
 *
 * An error for a remembered id goes to that session alone; other errors
 * are dropped.
 */
mm_err mm_room_presence(mm_state *state, const char *account,
		const char *room, const char *nick, const mm_presence *presence,
		mm_decision *out);

typedef struct mm_message {
	mm_msg_type type;
	const char *queryid; /* <result queryid/> of a XEP-0313 result, or NULL */
	const char *stanza_id; /* the room's XEP-0359 stanza-id, or NULL */
	double stamp;     /* when the room got it: its XEP-0203 delay, else now */
	int delayed;      /* it carried a delay from the room (room history) */
	int has_subject;  /* a subject change: <subject/>, no <body/>, no <thread/> */
	int has_body;     /* a <body/> child */
	const char *id;   /* stanza id or NULL */
	/* serialized stanza without 'to', or NULL; needed to cache a subject and
	 * to keep groupchat messages for catch-up */
	const char *payload;
	/* optional: a handle holding exactly that text (mm_payload_hold) */
	const mm_payload *payload_handle;
} mm_message;

/*
 * The room (nick NULL) or an occupant sent `message` to the account's bare
 * JID.  Groupchat traffic goes to every session in the membership (a subject
 * is cached for replay; a message with a body and a payload joins the
 * catch-up ring of history_size messages, which later sessions get after
 * their self-presence as their <history/> asks); a private message from an
 * occupant goes to the joined sessions; an error for a remembered id goes to
 * that session alone.  While the account joins again after a restart, room
 * history up to the last message it saw (by stanza-id, else by time) is
 * dropped as already seen.
 * Not handled when there is no membership, or for normal/headline messages
 * from the room itself (invitations, which the server delivers as usual).
 */
mm_err mm_room_message(mm_state *state, const char *account,
		const char *room, const char *nick, const mm_message *message,
		mm_decision *out);

/*
 * The room (or occupant `nick`) sent an IQ result (is_error 0) or error
 * (is_error 1, `condition`) with `id` to the account.  When the id is one the
 * module gave an IQ of a session of this account to this very JID (room,
 * or room/nick): DELIVER to that session with its original id.  The ids
 * are 128 random bits each, from the kernel's CSPRNG (getrandom(2)): an
 * occupant that sees some cannot guess others.  A self-ping answered not-acceptable
 * also makes the account re-join: each session gets an unavailable
 * self-presence with 333 (REFLECT_LEAVE) and waits for the join sequence
 * again (SEND_JOIN).  Not handled otherwise.
 */
mm_err mm_room_iq(mm_state *state, const char *account, const char *room,
		const char *nick, const char *id, int is_error, const char *condition,
		mm_decision *out);

/*
 * Check that the account is still in its rooms (XEP-0410): SEND_PING to
 * each joined membership whose room is on `host` (NULL: every room) and
 * has no ping of the module's waiting.  Call it now and then, and when the
 * server-to-server link to a host went down or came up.  A ping answered
 * not-acceptable makes the account join again (see mm_room_iq()); one that
 * could not reach the room (a transient condition, as for re-joins) asks
 * to ping again later (PING_LATER, the delay doubling like re-joins);
 * other answers, and no answer within iq_timeout, change nothing.
 */
mm_err mm_ping_due(mm_state *state, const char *host, double now,
		mm_decision *out);

/*
 * Time passed; call it every second or so, with the caller's clock in
 * seconds.  Every deadline is the core's, so that one repeating call keeps
 * them all (a module reload keeps the state, and with it every deadline):
 *  - IQs unanswered for iq_timeout seconds fail with IQ_ERROR
 *    (remote-server-timeout) to their sessions and are forgotten;
 *  - memberships whose waiting state's deadline passed take their
 *    TIMEOUT transition (see the table): a join the room never answered
 *    fails with JOIN_ERROR remote-server-timeout to the sessions that asked
 *    and the membership ends; an unanswered leave completes; a re-join
 *    whose delay is over is sent (SEND_JOIN); an unanswered re-join waits
 *    and is tried again;
 *  - hosts asked for with mm_ping_later() (or after a ping that could not
 *    reach a room) get their self-pings (SEND_PING).
 * Actions carry their `account`; what happened to each membership comes
 * as EVENT actions.  A wait entered before the first call counts from the
 * first call.  Always handled.
 */
mm_err mm_tick(mm_state *state, double now, mm_decision *out);

/*
 * Ping the rooms on `host` (as mm_ping_due(host)) from the mm_tick() that
 * comes `delay` seconds from now; the earlier of two asks wins.  For a
 * server-to-server link that went down or came back.  At most
 * MM_MAX_PING_HOSTS hosts wait at once: an ask for another host beyond
 * them is dropped (MM_OK), and the periodic pings (mm_ping_due(NULL))
 * check its rooms instead, so that links to many domains falling at once
 * cannot grow the state.  Errors: MM_EINVAL (empty host), MM_ENOMEM.
 */
#define MM_MAX_PING_HOSTS 1024
mm_err mm_ping_later(mm_state *state, const char *host, unsigned delay);

/*
 * Retractions (XEP-0424) and moderations (XEP-0425).  The catch-up ring
 * keeps each room message's stanza-id (by the room, as mm_room_message()
 * got it) beside its text, so that a message withdrawn is never replayed
 * whole.
 *
 * mm_room_kept(): the ring's text of the message with that stanza-id in
 * any membership of `room` (the first found; the caller judges whether
 * the retraction's sender may withdraw it), NULL when no ring holds it or
 * an argument is NULL or empty.  Borrowed: valid until the next call that
 * changes the state.
 *
 * mm_room_withdraw(): every membership of `room` whose ring holds that
 * message keeps `payload` (its tombstone: serialized, without 'to') in
 * its place, with its time, so that catch-ups keep their order; where the
 * byte limits cannot take the tombstone, the message goes from the ring.
 * *replaced (may be NULL) gets how many rings held it.  Errors: MM_EINVAL
 * (NULL or empty room or stanza_id, NULL payload), MM_ENOMEM (nothing
 * changed).  The strings are borrowed for the call.
 */
const char *mm_room_kept(const mm_state *state, const char *room,
		const char *stanza_id);
mm_err mm_room_withdraw(mm_state *state, const char *room,
		const char *stanza_id, const char *payload, size_t *replaced);

/*
 * A stanza built from room traffic could not be delivered to a session of
 * `account` (the session vanished).  Handled (swallow the failure, never
 * bounce it to the room) when `room` is a room the account has a
 * membership in.
 */
mm_err mm_delivery_failed(mm_state *state, const char *account,
		const char *room, mm_decision *out);

/* ---- JIDs ----------------------------------------------------------------- */

/*
 * Normalise a JID that did not pass Prosody's router (bookmark items,
 * ad-hoc command input, stored data) exactly as the router prepares JIDs,
 * so that one room under two spellings is one membership and the room's
 * answers find it: split as util.jid.split does, a trailing dot of the
 * domain dropped, then the domain through nameprep, the localpart through
 * nodeprep, the resource through resourceprep: ICU's stringprep profiles
 * with unassigned code points allowed, as Prosody's util.encodings on ICU
 * does (Debian's build); each part 1 to 1023 bytes of UTF-8 before and
 * after.  Stricter than the router in two refusals only: an IP literal
 * must be an address ("[...]" an IPv6 address, a domain of digits and
 * dots an IPv4 address), and ASCII in a domain name must be letters,
 * digits, hyphens, dots or underscores.  Writes the result, NUL-terminated,
 * to out (outsize bytes).  Errors: MM_EINVAL (malformed: answer
 * jid-malformed), MM_ENOMEM (also when out is too small).  out is untouched
 * on error.
 */
mm_err mm_jid_normalize(const char *jid, char *out, size_t outsize);

/* ---- persistence --------------------------------------------------------- */

/*
 * Bring back a membership stored before a restart (the room JID is
 * normalised with mm_jid_normalize() first): the account joins the
 * room again with no session attached (SEND_JOIN with `since` = last_stamp
 * when known, so the room sends what was said meanwhile), as an automatic
 * re-join (transient failures are retried; refusals end it with an EVENT
 * "removed").  Not handled when the account already has a membership there:
 * nothing is joined twice.  last_id, last_stamp: as mm_membership_info has
 * them (NULL, 0: unknown).  Errors: MM_EINVAL, MM_EROOMLIMIT, MM_ENOMEM.
 */
mm_err mm_account_restore(mm_state *state, const char *account,
		const char *room, const char *nick, const char *password,
		const char *last_id, double last_stamp, mm_decision *out);

/*
 * The account itself leaves the room (a bookmark said so, or a command):
 * every session in the membership gets REFLECT_LEAVE, then SEND_LEAVE; the
 * room's answer ends the membership (event "left").  When the account is
 * out already (waiting to join again), the membership ends at once.  Not
 * handled without a membership; nothing more while it is leaving.
 */
mm_err mm_account_leave(mm_state *state, const char *account,
		const char *room, mm_decision *out);

/*
 * Visit the accounts whose persistent memberships changed since the last
 * call, and forget that they did.  level 2: only membership changes (joined,
 * left, removed, nick); level 1: also a newer last message seen.  fn gets a
 * borrowed account JID and must not call into the state.  Returns the
 * number visited.
 */
size_t mm_take_dirty(mm_state *state, int level,
		void (*fn)(const char *account, void *ud), void *ud);

/*
 * Give a membership back its spans (stored before a restart): at most
 * MM_MAX_SPANS (the newest kept), ordered, each from >= 0 and from <= to,
 * only the last open (to < 0), and an open one only while the account is in
 * or joining again by itself (JOINED, REJOIN_WAIT, REJOINING), and always
 * while JOINED.  Replaces
 * what the membership had.  Errors: MM_EINVAL (no such membership, or the
 * spans break a rule), with the state as it was.
 */
mm_err mm_membership_set_spans(mm_state *state, const char *account,
		const char *room, const mm_span *spans, size_t n);

/*
 * The caller's clock (seconds since 1970, sub-second) for the calls that
 * follow: span boundaries are taken from it.  Calls that carry a `now`
 * (mm_join.now, mm_tick, mm_session_iq, mm_ping_due) set it too.
 */
void mm_state_now(mm_state *state, double now);

/* ---- inspection --------------------------------------------------------- */

/*
 * The state of the account's membership in room (mm_mstate), or MM_NONE
 * (-1) when there is none.  Cheap: callers use it to let
 * traffic that is not the module's pass before doing any work on it.
 */
int mm_membership_state(const mm_state *state, const char *account,
		const char *room);

/*
 * The account's nick in room: the one the room gave it (after a 210 or a
 * nick change, the new one), or NULL without a membership.  Borrowed: valid
 * until the next call that changes the state.
 */
const char *mm_membership_nick(const mm_state *state, const char *account,
		const char *room);

/*
 * Whether `text` (len bytes of UTF-8, not NUL-terminated) names `nick`
 * (nick_len bytes) as a whole word: case-insensitively (Unicode full case
 * folding), with neither a letter, a digit nor an underscore (Unicode
 * classes) right before or after it, so "@nick", "nick:" and "Nick!" name
 * it and "nickname" does not.  1: it does; 0: it does not, or either is
 * empty or not valid UTF-8.  Pure: no state, allocates and frees its own
 * buffers (0 when that fails).  Called for a room message that may wake a
 * device (XEP-0492 on-mention), never for one that no device waits on.
 */
int mm_mention(const char *text, size_t len, const char *nick, size_t nick_len);

typedef struct mm_stats {
	size_t accounts;     /* accounts with at least one membership */
	size_t memberships;
	size_t sessions;     /* session attachments over all memberships */
	size_t occupants;    /* cached occupant entries */
	size_t payloads;     /* distinct interned payloads */
	size_t payload_bytes;
	size_t cached_bytes; /* of those, bytes some cache holds (against
	                      * max_cache_bytes) */
	size_t iqs;          /* IQs awaiting an answer */
} mm_stats;

void mm_state_stats(const mm_state *state, mm_stats *out);

typedef struct mm_membership_info {
	const char *room;
	const char *nick;     /* the account's nick (asked for while joining) */
	const char *password; /* or NULL */
	mm_mstate state;
	size_t sessions;
	size_t occupants;
	int has_subject;
	size_t history;        /* messages held for catch-up */
	size_t bytes;          /* payload bytes its caches hold */
	const char *last_id;   /* stanza-id of the last room message seen, or NULL */
	double last_stamp;     /* the newest room message time seen (seconds), or 0 */
	/* worth keeping across a restart: joined, or joining again by itself */
	int persistent;
	const mm_span *spans;  /* when the account was in: oldest first */
	size_t nspans;
} mm_membership_info;

/*
 * Visit the account's memberships; `fn` gets borrowed pointers valid during
 * the call only and must not call into the state.  A non-zero return from
 * fn stops the walk.  Returns the number visited.
 */
size_t mm_account_memberships(const mm_state *state, const char *account,
		int (*fn)(const mm_membership_info *info, void *ud), void *ud);

/*
 * Visit the resources of the sessions in a membership, with whether each
 * has completed its join (1) or waits for the account's join (0).
 * Returns the number visited, 0 when there is no such membership.
 */
size_t mm_membership_sessions(const mm_state *state, const char *account,
		const char *room,
		int (*fn)(const char *resource, int joined, void *ud), void *ud);

#endif /* MINIMIX_H */
