/* chat — clients' requests and the broker's deliveries on a worker (see
 * chat.h). */
#include "chat.h"
#include "redis_cluster.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "auth.h"
#include "broker.h"
#include "clock.h"
#include "conn.h"
#include "log.h"
#include "proto.h"
#include "room.h"
#include "worker.h"

#define CHAT_MAX_ERRORS 16     /* failed requests in a row before 1008 */
#define CHAT_TYPING_MS 1000    /* typing relayed at most this often per room */
#define CHAT_LOG_EVERY_MS 10000 /* one line per this for a repeated problem */

/* A join or history read the broker still owes an answer. */
typedef struct join_wait {
    struct join_wait *next, *prev;  /* the worker's list */
    conn *c;                        /* NULL once the connection is gone */
    member *mb;                     /* a join's membership; NULL once left */
    int history_op;                 /* a scroll-back read, not a join */
    char ref[PROTO_REF_MAX + 1];
    int mode;                       /* HIST_NONE, HIST_LATEST, HIST_SINCE */
    uint32_t n;                     /* messages wanted */
    proto_id since;
    uint64_t epoch;                 /* the client's, for HIST_SINCE */
    proto_id upto;                  /* newest id the worker had seen */
    int mem;                        /* replay decided from memory: */
    int mem_recovered;
    msg **replay;
    uint32_t nreplay;
    uint16_t room_len;
    char room[];                    /* history reads: the room */
} join_wait;

typedef struct ack_entry {
    uint64_t seq;                   /* the publish ticket */
    conn *c;                        /* NULL once the connection is gone */
    char *ref;                      /* NULL: the send had none */
} ack_entry;

/* How many local connections of a user are in a room: presence goes to
 * the broker on the first and the last. */
typedef struct pres_entry {
    struct pres_entry *next;
    const room *r;
    uint32_t count;
    uint16_t user_len;
    char user[];
} pres_entry;

/* Sends waiting for their ack, oldest first: a shard's messages come back
 * in the order they were sent (their publisher's). */
typedef struct ack_ring {
    ack_entry *q;
    size_t cap, head, len;
} ack_ring;

typedef struct chat {
    join_wait *waits;
    ack_ring acks[SHARDS_MAX];      /* per shard */
    pres_entry **pres;
    size_t npres_buckets, npres;
    /* Per shard: ids of different shards are not in one order. */
    proto_id pos[SHARDS_MAX];       /* newest id delivered to this worker */
    uint64_t epoch[SHARDS_MAX];
    uint64_t pres_lost;             /* presence changes not told since the */
    int64_t pres_lost_ms;           /* last line about them (monotonic) */
} chat;

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

void chat_epoch_str(uint64_t epoch, char out[17]) { snprintf(out, 17, "%016" PRIx64, epoch); }

int chat_init(worker *w) {
    chat *ch = calloc(1, sizeof(*ch));
    if (ch == NULL) return -1;
    ch->npres_buckets = 256;
    ch->pres = calloc(ch->npres_buckets, sizeof(*ch->pres));
    if (ch->pres == NULL) {
        free(ch);
        return -1;
    }
    w->chat = ch;
    return 0;
}

static void wait_free(join_wait *jw) {
    for (uint32_t i = 0; i < jw->nreplay; i++) msg_unref(jw->replay[i]);
    free(jw->replay);
    free(jw);
}

void chat_free(worker *w) {
    chat *ch = w->chat;
    if (ch == NULL) return;
    while (ch->waits) {
        join_wait *jw = ch->waits;
        ch->waits = jw->next;
        wait_free(jw);
    }
    for (int k = 0; k < SHARDS_MAX; k++) {
        ack_ring *ar = &ch->acks[k];
        for (size_t i = 0; i < ar->len; i++) free(ar->q[(ar->head + i) % ar->cap].ref);
        free(ar->q);
    }
    for (size_t i = 0; i < ch->npres_buckets; i++)
        for (pres_entry *p = ch->pres[i], *next; p; p = next) {
            next = p->next;
            free(p);
        }
    free(ch->pres);
    free(ch);
    w->chat = NULL;
}

/* ---- frames --------------------------------------------------------- */

static void queue_jbuf(conn *c, jbuf *j) {
    msg *m = j->oom ? NULL : msg_private(j->p, j->len);
    jb_free(j);
    if (m == NULL) {
        conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        return;
    }
    conn_queue(c, m);
}

static void jb_ref(jbuf *j, const char *ref) {
    if (ref == NULL || ref[0] == '\0') return;
    JB_LIT(j, ",\"ref\":");
    jb_raw(j, ref, strlen(ref));
}

void conn_error(conn *c, const char *ref, const char *code, const char *reason) {
    jbuf j = {0};
    JB_LIT(&j, "{\"op\":\"error\"");
    jb_ref(&j, ref);
    JB_LIT(&j, ",\"code\":");
    jb_str(&j, code, strlen(code));
    JB_LIT(&j, ",\"reason\":");
    jb_str(&j, reason, strlen(reason));
    JB_LIT(&j, "}");
    queue_jbuf(c, &j);
    if (++c->errors >= CHAT_MAX_ERRORS) {
        conn_log(LOG_INFO, c, "%d failed requests in a row, closing with 1008", CHAT_MAX_ERRORS);
        conn_close(c, WS_CLOSE_POLICY, "too many failed requests");
    }
}

/* {"op":OP,"room":R[,"ref":X]} */
static void queue_simple(conn *c, const char *op, const char *name, size_t name_len,
                         const char *ref) {
    jbuf j = {0};
    JB_LIT(&j, "{\"op\":");
    jb_str(&j, op, strlen(op));
    if (name) {
        JB_LIT(&j, ",\"room\":");
        jb_str(&j, name, name_len);
    }
    jb_ref(&j, ref);
    JB_LIT(&j, "}");
    queue_jbuf(c, &j);
}

/* One stored message as an element of a history answer. */
static void jb_hist_msg(jbuf *j, const msg *m) {
    JB_LIT(j, "{\"id\":");
    jb_id(j, (proto_id){m->id_ms, m->id_seq});
    JB_LIT(j, ",\"user\":");
    jb_str(j, m->user, m->user_len);
    JB_LIT(j, ",\"text\":");
    jb_str(j, m->text, m->text_len);
    JB_LIT(j, ",\"ts\":");
    jb_u64(j, (uint64_t)(m->ts > 0 ? m->ts : 0));
    JB_LIT(j, "}");
}

/* ---- presence counts ------------------------------------------------ */

static size_t pres_slot(const chat *ch, const room *r, const char *user, size_t len) {
    uint64_t h = (uint64_t)(uintptr_t)r * 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)user[i]) * 1099511628211ULL;
    return (size_t)(h >> 17) & (ch->npres_buckets - 1);
}

static pres_entry **pres_find(chat *ch, const room *r, const char *user, size_t len) {
    pres_entry **p = &ch->pres[pres_slot(ch, r, user, len)];
    for (; *p; p = &(*p)->next)
        if ((*p)->r == r && (*p)->user_len == len && memcmp((*p)->user, user, len) == 0) break;
    return p;
}

static void pres_grow(chat *ch) {
    size_t n = ch->npres_buckets * 2;
    pres_entry **b = calloc(n, sizeof(*b)), **old = ch->pres;
    size_t oldn = ch->npres_buckets;
    if (b == NULL) return;
    ch->pres = b;
    ch->npres_buckets = n;
    for (size_t i = 0; i < oldn; i++)
        for (pres_entry *p = old[i], *next; p; p = next) {
            next = p->next;
            size_t s = pres_slot(ch, p->r, p->user, p->user_len);
            p->next = b[s];
            b[s] = p;
        }
    free(old);
}

/* Counts one more (delta 1) or one less (-1) connection of user in r.
 * Returns the count after, or -1 when out of memory. */
static long pres_add(chat *ch, const room *r, const char *user, size_t len, int delta) {
    pres_entry **p = pres_find(ch, r, user, len);
    if (*p == NULL) {
        if (delta < 0) return 0;
        if (ch->npres >= ch->npres_buckets) {
            pres_grow(ch);
            p = pres_find(ch, r, user, len);
        }
        pres_entry *e = calloc(1, sizeof(*e) + len + 1);
        if (e == NULL) return -1;
        e->r = r;
        e->user_len = (uint16_t)len;
        memcpy(e->user, user, len);
        *p = e;
        ch->npres++;
    }
    pres_entry *e = *p;
    e->count = (uint32_t)((long)e->count + delta);
    long n = e->count;
    if (n == 0) {
        *p = e->next;
        free(e);
        ch->npres--;
    }
    return n;
}

void chat_presence_reassert(worker *w) {
    chat *ch = w->chat;
    for (size_t i = 0; i < ch->npres_buckets; i++)
        for (pres_entry *p = ch->pres[i]; p; p = p->next) {
            broker_req q = {.kind = MSG_JOIN, .room = p->r->name, .room_len = p->r->name_len,
                            .user = p->user, .user_len = p->user_len, .ts = wall_ms()};
            broker_publish(w->broker, w->id, &q);
        }
}

/* ---- rooms ---------------------------------------------------------- */

static member *find_member(conn *c, const char *name, size_t len) {
    for (member *mb = c->rooms; mb; mb = mb->next)
        if (mb->room->name_len == len && memcmp(mb->room->name, name, len) == 0) return mb;
    return NULL;
}

/* 1 if the token's rooms claim lets c into the room. */
static int claim_allows(const conn *c, const char *name, size_t len) {
    return auth_rooms_allow(c->claim, name, len);
}

static void wait_link(chat *ch, join_wait *jw) {
    jw->prev = NULL;
    jw->next = ch->waits;
    if (ch->waits) ch->waits->prev = jw;
    ch->waits = jw;
}

static void wait_unlink(chat *ch, join_wait *jw) {
    if (jw->prev) jw->prev->next = jw->next;
    else ch->waits = jw->next;
    if (jw->next) jw->next->prev = jw->prev;
}

/* Tells the broker that user's presence in r changed (first connection
 * came, last went). Only a leave comes here, and the broker takes every
 * leave but when out of memory (Redis) or past ring_size (local): then the
 * member stays listed until this node stops, and that is logged. */
static void pres_publish(worker *w, conn *c, const room *r, int kind) {
    broker_req q = {.kind = kind, .conn_id = c->id, .room = r->name, .room_len = r->name_len,
                    .user = c->user, .user_len = c->user_len, .ts = wall_ms()};
    if (broker_publish(w->broker, w->id, &q) >= 0) return;
    chat *ch = w->chat;
    int64_t now = clock_ms();
    ch->pres_lost++;
    if (now - ch->pres_lost_ms < CHAT_LOG_EVERY_MS) return; /* a storm says it once */
    log_warn("worker %d: out of memory: %llu presence changes not told (the last: %s in %s)",
             w->id, (unsigned long long)ch->pres_lost, c->user, r->name);
    ch->pres_lost_ms = now;
    ch->pres_lost = 0;
}

/* Takes mb out of its room and off c; tells presence when c was the user's
 * last connection there. */
static void leave(conn *c, member *mb) {
    worker *w = c->w;
    room *r = mb->room;
    if (mb->wait) {
        mb->wait->mb = NULL; /* its answer finds nobody */
        mb->wait = NULL;
    }
    if (pres_add(w->chat, r, c->user, c->user_len, -1) == 0) pres_publish(w, c, r, MSG_LEAVE);
    member **p = &c->rooms;
    while (*p != mb) p = &(*p)->next;
    *p = mb->next;
    c->nrooms--;
    r->njson -= c->json;
    room_leave(&w->rooms, mb);
    if (mb == &c->first) memset(mb, 0, sizeof(*mb));
    else free(mb);
}

/* Queues r's history for mb's join: the messages after `since` if since is
 * among them (returns 1: recovered), else the latest n (returns 0). *all
 * is set when memory surely holds what was asked (since found, or n
 * messages). */
static int replay_from_memory(join_wait *jw, room *r, uint64_t budget, int *all) {
    uint32_t from = r->hist_len, i;
    uint64_t bytes = 0;
    int recovered = 0;
    *all = 0;
    if (jw->mode == HIST_SINCE) {
        for (i = r->hist_len; i-- > 0;) {
            const msg *m = room_hist_at(r, i);
            if (m->id_ms == jw->since.ms && m->id_seq == jw->since.seq) {
                from = i + 1;
                recovered = 1;
                *all = 1;
                break;
            }
            if (msg_id_before(m->id_ms, m->id_seq, jw->since.ms, jw->since.seq)) break;
            bytes += m->text_len + m->user_len;
        }
        if (recovered && bytes > budget) recovered = 0; /* too much at once: a gap */
    }
    if (!recovered) {
        /* The latest n, as many as fit in the budget. Memory holds what was
         * asked when it has n, or when the budget stopped it (Redis would
         * stop there too). */
        uint32_t count = 0;
        int full = 0;
        bytes = 0;
        for (from = r->hist_len; from > 0 && count < jw->n; from--, count++) {
            const msg *m = room_hist_at(r, from - 1);
            if (bytes + m->text_len + m->user_len > budget) {
                full = 1;
                break;
            }
            bytes += m->text_len + m->user_len;
        }
        *all = count >= jw->n || full;
        /* A since older than memory reaches may still be kept in Redis;
         * one within memory's reach that is not there was never an id. */
        if (jw->mode == HIST_SINCE &&
            (r->hist_len == 0 || msg_id_before(jw->since.ms, jw->since.seq,
                                               room_hist_at(r, 0)->id_ms, room_hist_at(r, 0)->id_seq)))
            *all = 0;
    }
    if (r->hist_len > from) {
        jw->replay = malloc((r->hist_len - from) * sizeof(*jw->replay));
        if (jw->replay == NULL) return recovered;
        for (i = from; i < r->hist_len; i++) {
            msg *m = room_hist_at(r, i);
            msg_ref(m, 1);
            jw->replay[jw->nreplay++] = m;
        }
    }
    return recovered;
}

/* Joins c to room. The parameters are a join request's (history n, since
 * with epoch). Answers errors itself for chatd.v1. Returns 1 when joined
 * (or on its way), 0 when refused (the client was told), -1 when out of
 * memory. */
static int join(conn *c, const char *name, size_t len, int64_t history, int has_since,
                proto_id since, const char *epoch, const char *ref) {
    worker *w = c->w;
    chat *ch = w->chat;
    const config *cfg = w->cfg;
    if (find_member(c, name, len)) {
        conn_error(c, ref, "already_member", "already in this room");
        return 0;
    }
    if (c->nrooms >= (uint32_t)cfg->max_rooms_per_conn) {
        conn_error(c, ref, "too_many_rooms", "max_rooms_per_conn reached");
        return 0;
    }
    if (!claim_allows(c, name, len)) {
        conn_error(c, ref, "forbidden", "the token does not allow this room");
        return 0;
    }
    room *r = room_get(&w->rooms, name, len);
    member *mb = c->first.room == NULL ? &c->first : calloc(1, sizeof(*mb));
    join_wait *jw = calloc(1, sizeof(*jw));
    if (r == NULL || mb == NULL || jw == NULL) {
        if (mb != &c->first) free(mb);
        free(jw);
        if (r) room_release(&w->rooms, r);
        return -1;
    }
    /* How many messages to replay: what was asked, or after a since that
     * cannot be recovered, the default page; never more than is kept. */
    int64_t n = history >= 0 ? history : has_since ? PROTO_LIMIT_DEFAULT : 0;
    int64_t kept = cfg->history_size > cfg->history_max ? cfg->history_size : cfg->history_max;
    if (cfg->broker != BROKER_REDIS) kept = cfg->history_size;
    if (n > kept) n = kept;
    jw->n = (uint32_t)n;
    jw->mode = has_since ? HIST_SINCE : n > 0 ? HIST_LATEST : HIST_NONE;
    jw->since = since;
    jw->epoch = has_since ? strtoull(epoch, NULL, 16) : 0;
    int shard = broker_room_shard(w->broker, name, len);
    if (has_since && (strlen(epoch) != 16 || jw->epoch != ch->epoch[shard]))
        jw->mode = n ? HIST_LATEST : HIST_NONE;
    jw->upto = ch->pos[shard];
    snprintf(jw->ref, sizeof(jw->ref), "%s", ref ? ref : "");
    jw->c = c;
    jw->mb = mb;

    long count = pres_add(ch, r, c->user, c->user_len, 1);
    if (count < 0) {
        if (mb != &c->first) free(mb);
        free(jw);
        room_release(&w->rooms, r);
        return -1;
    }
    mb->conn = c;
    room_join(r, mb);
    r->njson += c->json;
    mb->next = c->rooms;
    c->rooms = mb;
    c->nrooms++;

    int all = 1;
    if (jw->mode != HIST_NONE)
        jw->mem_recovered = replay_from_memory(jw, r, (uint64_t)cfg->max_output_buffer, &all);
    /* Not all in memory: Redis keeps more (it has it, or knows it lacks it). */
    int redis_hist = !all && cfg->broker == BROKER_REDIS && cfg->history_max > 0;
    jw->mem = !redis_hist;
    if (redis_hist) { /* Redis answers it all: what memory had is not used */
        for (uint32_t i = 0; i < jw->nreplay; i++) msg_unref(jw->replay[i]);
        jw->nreplay = 0;
    }
    int need_answer = c->json || redis_hist;
    if (need_answer || count == 1) {
        broker_req q = {.kind = MSG_JOIN, .conn_id = c->id, .room = r->name,
                        .room_len = r->name_len, .user = c->user, .user_len = c->user_len,
                        .ts = wall_ms(), .wait = need_answer ? jw : NULL,
                        .hist = redis_hist ? jw->mode : HIST_NONE, .n = jw->n,
                        .id_ms = since.ms, .id_seq = since.seq};
        if (broker_publish(w->broker, w->id, &q) < 0) {
            mb->wait = NULL;
            leave(c, mb);
            wait_free(jw);
            if (c->json) conn_error(c, ref, "unavailable", "publish queue full, try again");
            else conn_close(c, WS_CLOSE_TRY_AGAIN, "publish queue full");
            return 0;
        }
    }
    if (need_answer) {
        mb->wait = jw;
        wait_link(ch, jw);
        c->waits++;
        return 1;
    }
    /* A text client with what it asked for in memory: replay it now. */
    for (uint32_t i = 0; i < jw->nreplay; i++) conn_queue(c, jw->replay[i]);
    jw->nreplay = 0;
    wait_free(jw);
    return 1;
}

int chat_open(conn *c, handoff *h) {
    if (!h->has_room) return 0;
    proto_id since = {h->since_ms, h->since_seq};
    return join(c, h->room, strlen(h->room), h->history, h->has_since, since, h->epoch, NULL) < 0 ? -1 : 0;
}

void chat_close(conn *c) {
    chat *ch = c->w->chat;
    while (c->rooms) leave(c, c->rooms);
    if (c->waits) {
        for (join_wait *jw = ch->waits; jw; jw = jw->next)
            if (jw->c == c) jw->c = NULL;
        c->waits = 0;
    }
    for (int k = 0; c->acks && k < SHARDS_MAX; k++) {
        ack_ring *ar = &ch->acks[k];
        for (size_t i = 0; i < ar->len; i++) {
            ack_entry *a = &ar->q[(ar->head + i) % ar->cap];
            if (a->c == c) {
                a->c = NULL;
                c->acks--;
            }
        }
    }
}

/* ---- answers -------------------------------------------------------- */

int chat_wait_alive(void *wait) {
    const join_wait *jw = wait;
    return jw->c != NULL && (jw->history_op || jw->mb != NULL);
}

void chat_join_answer(worker *w, void *wait, join_answer *a) {
    chat *ch = w->chat;
    join_wait *jw = wait;
    conn *c = jw->c;
    member *mb = jw->mb;
    wait_unlink(ch, jw);
    if (c) c->waits--;
    if (c == NULL || mb == NULL || c->state != CONN_OPEN) goto done;
    mb->wait = NULL;
    if (a->failed) {
        leave(c, mb);
        if (c->json) conn_error(c, jw->ref, "unavailable", "the room cannot be joined now, try again");
        else conn_close(c, WS_CLOSE_TRY_AGAIN, "history not available");
        goto done;
    }
    int shard = broker_room_shard(w->broker, mb->room->name, mb->room->name_len);
    uint64_t epoch = a->epoch ? a->epoch : ch->epoch[shard];
    int recovered = 0;
    msg **replay = jw->replay;
    uint32_t nreplay = jw->nreplay, first = 0;
    if (jw->mem) {
        recovered = jw->mem_recovered && epoch == ch->epoch[shard];
    } else {
        /* From Redis: up to what the worker had seen when it joined; the
         * rest comes through the room's log. */
        recovered = jw->mode == HIST_SINCE && a->found && epoch == jw->epoch;
        replay = a->hist;
        nreplay = a->nhist;
        while (nreplay > 0 && msg_id_before(jw->upto.ms, jw->upto.seq, replay[nreplay - 1]->id_ms,
                                            replay[nreplay - 1]->id_seq))
            nreplay--;
        if (recovered)
            while (first < nreplay && !msg_id_before(jw->since.ms, jw->since.seq,
                                                     replay[first]->id_ms, replay[first]->id_seq))
                first++;
    }
    /* The membership is settled first: a frame queued below may close c,
     * which frees mb. */
    mb->skip_ms = a->at_ms;
    mb->skip_seq = a->at_seq;
    if (recovered) {
        mb->seen_ms = jw->since.ms;
        mb->seen_seq = jw->since.seq;
    }
    if (c->json) {
        char ep[17];
        chat_epoch_str(epoch, ep);
        jbuf j = {0};
        JB_LIT(&j, "{\"op\":\"joined\",\"room\":");
        jb_str(&j, mb->room->name, mb->room->name_len);
        JB_LIT(&j, ",\"epoch\":\"");
        jb_raw(&j, ep, 16);
        if (recovered) JB_LIT(&j, "\",\"recovered\":true");
        else JB_LIT(&j, "\",\"recovered\":false");
        JB_LIT(&j, ",\"count\":");
        jb_u64(&j, a->count);
        if (a->count <= (uint32_t)w->cfg->presence_max && a->members) {
            JB_LIT(&j, ",\"members\":");
            jb_raw(&j, a->members, a->members_len);
        }
        jb_ref(&j, jw->ref);
        JB_LIT(&j, "}");
        queue_jbuf(c, &j);
    }
    for (uint32_t i = first; i < nreplay && c->state == CONN_OPEN; i++) {
        msg_ref(replay[i], 1);
        conn_queue(c, replay[i]);
    }
    conn_pump(c); /* may free c: nothing after */
done:
    for (uint32_t i = 0; i < a->nhist; i++) msg_unref(a->hist[i]);
    a->nhist = 0;
    wait_free(jw);
}

static void history_reply(conn *c, const char *name, size_t name_len, msg **hist, uint32_t n,
                          int more, const char *ref) {
    jbuf j = {0};
    JB_LIT(&j, "{\"op\":\"history\",\"room\":");
    jb_str(&j, name, name_len);
    JB_LIT(&j, ",\"messages\":[");
    for (uint32_t i = 0; i < n; i++) {
        if (i) JB_LIT(&j, ",");
        jb_hist_msg(&j, hist[i]);
    }
    jb_raw(&j, more ? "],\"more\":true" : "],\"more\":false", more ? 13 : 14);
    jb_ref(&j, ref);
    JB_LIT(&j, "}");
    queue_jbuf(c, &j);
}

void chat_history_answer(worker *w, void *wait, join_answer *a) {
    join_wait *jw = wait;
    conn *c = jw->c;
    wait_unlink(w->chat, jw);
    if (c) c->waits--;
    if (c && c->state == CONN_OPEN) {
        if (a->failed) {
            conn_error(c, jw->ref, "unavailable", "history cannot be read now, try again");
        } else {
            history_reply(c, jw->room, jw->room_len, a->hist, a->nhist, a->more, jw->ref);
            c->errors = 0;
        }
        conn_flush(c);
    }
    for (uint32_t i = 0; i < a->nhist; i++) msg_unref(a->hist[i]);
    a->nhist = 0;
    wait_free(jw);
}

/* ---- requests ------------------------------------------------------- */

/* Sends text to mb's room. Returns the ticket, -1 when refused (the caller
 * tells the client). */
static int64_t send_text(conn *c, member *mb, const uint8_t *text, size_t len) {
    broker_req q = {.kind = MSG_CHAT, .conn_id = c->id, .room = mb->room->name,
                    .room_len = mb->room->name_len, .user = c->user, .user_len = c->user_len,
                    .text = (const char *)text, .text_len = len, .ts = wall_ms()};
    int64_t ticket = broker_publish(c->w->broker, c->w->id, &q);
    if (ticket >= 0) {
        c->ticket = (uint64_t)ticket;
        c->sent_shards |= UINT64_C(1) << TICKET_SHARD(ticket);
    }
    return ticket;
}

static void ack_push(chat *ch, conn *c, uint64_t ticket, const char *ref) {
    ack_ring *ar = &ch->acks[TICKET_SHARD(ticket)];
    if (ar->len == ar->cap) {
        size_t cap = ar->cap ? ar->cap * 2 : 64;
        ack_entry *q = malloc(cap * sizeof(*q));
        if (q == NULL) return; /* no ack: the msg itself still comes */
        for (size_t i = 0; i < ar->len; i++) q[i] = ar->q[(ar->head + i) % ar->cap];
        free(ar->q);
        ar->q = q;
        ar->head = 0;
        ar->cap = cap;
    }
    ack_entry *a = &ar->q[(ar->head + ar->len++) % ar->cap];
    a->seq = TICKET_SEQ(ticket);
    a->c = c;
    a->ref = ref && ref[0] ? strdup(ref) : NULL;
    c->acks++;
}

static void op_send(conn *c, const proto_req *q) {
    member *mb = find_member(c, q->room, q->room_len);
    if (mb == NULL) {
        conn_error(c, q->ref, "not_member", "join the room first");
        return;
    }
    if (conn_take_token(c) < 0) {
        atomic_fetch_add_explicit(&c->w->rate_closes, 1, memory_order_relaxed); /* a counter */
        conn_error(c, q->ref, "rate_limited", "over rate_limit: message not sent");
        return;
    }
    int64_t ticket = send_text(c, mb, (const uint8_t *)q->text, q->text_len);
    if (ticket < 0) {
        atomic_fetch_add_explicit(&c->w->busy_closes, 1, memory_order_relaxed); /* a counter */
        conn_error(c, q->ref, "unavailable", "publish queue full: message not sent, try again");
        return;
    }
    ack_push(c->w->chat, c, (uint64_t)ticket, q->ref);
    c->errors = 0;
}

static void op_history(conn *c, const proto_req *q) {
    worker *w = c->w;
    if (!claim_allows(c, q->room, q->room_len)) {
        conn_error(c, q->ref, "forbidden", "the token does not allow this room");
        return;
    }
    if (c->outq_bytes > (uint64_t)w->cfg->max_output_buffer) {
        conn_error(c, q->ref, "unavailable", "earlier answers are still being sent");
        return;
    }
    uint32_t limit = (uint32_t)q->limit;
    if (q->has_before && q->before.ms == 0 && q->before.seq == 0) { /* nothing is before 0-0 */
        history_reply(c, q->room, q->room_len, NULL, 0, 0, q->ref);
        c->errors = 0;
        return;
    }
    /* From memory when it holds limit + 1 messages before `before`, or when
     * there is nothing else to ask. */
    room *r = room_find(&w->rooms, q->room, q->room_len);
    uint32_t end = 0;
    if (r) {
        end = r->hist_len;
        if (q->has_before) {
            while (end > 0 && !msg_id_before(room_hist_at(r, end - 1)->id_ms,
                                             room_hist_at(r, end - 1)->id_seq, q->before.ms,
                                             q->before.seq))
                end--;
        }
    }
    int stored = w->cfg->broker == BROKER_REDIS && w->cfg->history_max > 0;
    if (end > limit || !stored) {
        uint32_t from = end > limit ? end - limit : 0;
        msg *page[PROTO_LIMIT_MAX];
        for (uint32_t i = from; i < end; i++) page[i - from] = room_hist_at(r, i);
        history_reply(c, q->room, q->room_len, page, end - from, from > 0, q->ref);
        c->errors = 0;
        return;
    }
    join_wait *jw = calloc(1, sizeof(*jw) + q->room_len + 1);
    if (jw == NULL) {
        conn_error(c, q->ref, "unavailable", "out of memory");
        return;
    }
    jw->history_op = 1;
    jw->c = c;
    memcpy(jw->room, q->room, q->room_len);
    jw->room_len = (uint16_t)q->room_len;
    snprintf(jw->ref, sizeof(jw->ref), "%s", q->ref);
    broker_req bq = {.kind = MSG_CHAT, .conn_id = c->id, .room = q->room, .room_len = q->room_len,
                     .wait = jw, .hist = HIST_BEFORE, .n = limit,
                     .id_ms = q->has_before ? q->before.ms : 0,
                     .id_seq = q->has_before ? q->before.seq : 0};
    if (broker_read_history(w->broker, w->id, &bq) < 0) {
        free(jw);
        conn_error(c, q->ref, "unavailable", "history cannot be read now, try again");
        return;
    }
    wait_link(w->chat, jw);
    c->waits++;
}

static void op_typing(conn *c, const proto_req *q) {
    member *mb = find_member(c, q->room, q->room_len);
    if (mb == NULL) {
        conn_error(c, q->ref, "not_member", "join the room first");
        return;
    }
    c->errors = 0;
    int64_t now = clock_ms();
    if (mb->typing_ms && now - mb->typing_ms < CHAT_TYPING_MS) return; /* a hint: one will do */
    mb->typing_ms = now;
    broker_req bq = {.kind = MSG_TYPING, .conn_id = c->id, .room = mb->room->name,
                     .room_len = mb->room->name_len, .user = c->user, .user_len = c->user_len};
    broker_publish(c->w->broker, c->w->id, &bq); /* ephemeral: a full queue drops it */
}

/* A fresh token for the same user: the connection lives to its exp, and
 * its rooms claim governs the joins from now on. */
static void op_refresh(conn *c, const proto_req *q) {
    const config *cfg = c->w->cfg;
    if (cfg->auth_secret[0] == '\0') {
        conn_error(c, q->ref, "bad_request", "this server does not use tokens");
        return;
    }
    char user[257]; /* max_username is at most 256 */
    auth_rooms *rooms = malloc(sizeof(*rooms));
    if (rooms == NULL) {
        conn_error(c, q->ref, "unavailable", "out of memory");
        return;
    }
    const char *why = NULL;
    int64_t exp = 0;
    if (auth_verify_either(cfg->auth_secret, cfg->auth_secret_previous, q->token, q->token_len,
                           time(NULL), user, (size_t)cfg->max_username + 1, rooms, &exp,
                           &why) < 0) {
        free(rooms);
        conn_error(c, q->ref, "bad_token", why);
        return;
    }
    if (strcmp(user, c->user) != 0) {
        free(rooms);
        conn_error(c, q->ref, "forbidden", "the token is for another user");
        return;
    }
    char *claim = NULL;
    if (rooms->present) { /* the list ends with an empty name */
        const char *p = rooms->list;
        while (*p) p += strlen(p) + 1;
        size_t n = (size_t)(p - rooms->list) + 1;
        if ((claim = malloc(n)) == NULL) {
            free(rooms);
            conn_error(c, q->ref, "unavailable", "out of memory");
            return;
        }
        memcpy(claim, rooms->list, n);
    }
    free(rooms);
    free(c->claim);
    c->claim = claim;
    c->exp = exp > UINT32_MAX ? UINT32_MAX : (uint32_t)exp;
    c->errors = 0;
    jbuf j = {0};
    JB_LIT(&j, "{\"op\":\"refreshed\",\"exp\":");
    jb_u64(&j, (uint64_t)exp);
    jb_ref(&j, q->ref);
    JB_LIT(&j, "}");
    queue_jbuf(c, &j);
    conn_log(LOG_DEBUG, c, "token refreshed, expires at %lld", (long long)exp);
}

static void on_json(conn *c, const uint8_t *data, size_t len) {
    const config *cfg = c->w->cfg;
    proto_limits lim = {(size_t)cfg->max_room, (size_t)cfg->max_message};
    proto_req q;
    const char *why = NULL;
    int rc = proto_parse((const char *)data, len, &lim, &q, &why);
    if (rc != PROTO_OK) {
        conn_error(c, q.ref, proto_err_code(rc), why ? why : "bad request");
        proto_req_free(&q);
        return;
    }
    member *mb;
    switch (q.op) {
    case PROTO_JOIN:
        if (c->outq_bytes > (uint64_t)cfg->max_output_buffer) {
            conn_error(c, q.ref, "unavailable", "earlier answers are still being sent");
            break;
        }
        rc = join(c, q.room, q.room_len, q.history, q.has_since, q.since, q.epoch, q.ref);
        if (rc < 0) conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        else if (rc > 0) c->errors = 0;
        break;
    case PROTO_LEAVE:
        if ((mb = find_member(c, q.room, q.room_len)) == NULL) {
            conn_error(c, q.ref, "not_member", "not in this room");
            break;
        }
        leave(c, mb);
        queue_simple(c, "left", q.room, q.room_len, q.ref);
        c->errors = 0;
        break;
    case PROTO_SEND:
        op_send(c, &q);
        break;
    case PROTO_HISTORY:
        op_history(c, &q);
        break;
    case PROTO_TYPING:
        op_typing(c, &q);
        break;
    case PROTO_PING:
        queue_simple(c, "pong", NULL, 0, q.ref);
        c->errors = 0;
        break;
    case PROTO_REFRESH:
        op_refresh(c, &q);
        break;
    }
    proto_req_free(&q);
}

int chat_on_message(conn *c, const uint8_t *data, size_t len) {
    worker *w = c->w;
    atomic_fetch_add_explicit(&w->msgs_in, 1, memory_order_relaxed); /* a counter */
    if (c->json) {
        on_json(c, data, len);
        return 0;
    }
    if (c->rooms == NULL) return 0; /* a text client is always in its room */
    /* The frame parser holds the limit of the connection's start; a reload
     * may have lowered it since. */
    if (len > (size_t)w->cfg->max_message) {
        log_info("conn %llu: message over max_message, closing with 1009",
                 (unsigned long long)c->id);
        conn_close(c, WS_CLOSE_TOO_BIG, "message too big");
        return 0;
    }
    if (conn_take_token(c) < 0) {
        atomic_fetch_add_explicit(&w->rate_closes, 1, memory_order_relaxed); /* a counter */
        conn_log(LOG_INFO, c, "over rate_limit, closing with 1008");
        conn_close(c, WS_CLOSE_POLICY, "rate limit exceeded");
        return 0;
    }
    if (send_text(c, c->rooms, data, len) < 0) {
        atomic_fetch_add_explicit(&w->busy_closes, 1, memory_order_relaxed); /* a counter */
        conn_log(LOG_INFO, c, "publish queue full, closing with 1013");
        conn_close(c, WS_CLOSE_TRY_AGAIN, "publish queue full");
    }
    return 0;
}

/* ---- deliveries ----------------------------------------------------- */

/* m was published by this worker: acknowledge it to its sender. Tickets
 * come back in order; any before m's were never stored (their senders
 * were closed with 1011). */
static void ack(worker *w, const msg *m) {
    ack_ring *ar = &w->chat->acks[m->shard];
    while (ar->len) {
        ack_entry *a = &ar->q[ar->head % ar->cap];
        if (a->seq > m->origin_seq) return;
        conn *c = a->c;
        if (a->seq == m->origin_seq && c && c->state == CONN_OPEN) {
            jbuf j = {0};
            JB_LIT(&j, "{\"op\":\"ack\"");
            jb_ref(&j, a->ref);
            JB_LIT(&j, ",\"id\":");
            jb_id(&j, (proto_id){m->id_ms, m->id_seq});
            JB_LIT(&j, "}");
            queue_jbuf(c, &j);
        }
        if (c && c->acks) c->acks--;
        free(a->ref);
        ar->head++;
        ar->len--;
        if (a->seq == m->origin_seq && c && c->state == CONN_OPEN) conn_flush(c); /* may free c */
    }
}

static void relay_typing(worker *w, msg *m) {
    room *r = room_find(&w->rooms, m->room, m->room_len);
    if (r == NULL) return;
    for (member *mb = r->members, *next; mb; mb = next) {
        next = mb->room_next;
        conn *c = mb->conn;
        if (!c->json || mb->wait || (m->origin_wid == w->id && m->conn_id == c->id)) continue;
        msg_ref(m, 1);
        conn_queue(c, m);
        conn_flush(c); /* may free c and its membership: next is kept */
    }
}

void chat_deliver(worker *w, msg *m) {
    chat *ch = w->chat;
    switch (m->kind) {
    case MSG_MARK:
        if (m->origin_seq != ch->epoch[m->shard] && ch->epoch[m->shard] != 0) {
            log_info("worker %d: the epoch of shard %d changed: its recent history forgotten",
                     w->id, m->shard);
            room_forget_shard(&w->rooms, m->shard, broker_shards(w->broker));
        }
        ch->epoch[m->shard] = m->origin_seq;
        ch->pos[m->shard] = (proto_id){m->id_ms, m->id_seq};
        msg_unref(m);
        return;
    case MSG_SNAPSHOT: {
        join_answer a = {.at_ms = m->id_ms, .at_seq = m->id_seq, .count = m->count,
                         .members = m->text, .members_len = m->text_len};
        chat_join_answer(w, m->wait, &a);
        msg_unref(m);
        return;
    }
    case MSG_TYPING:
        relay_typing(w, m);
        msg_unref(m);
        return;
    default:
        break;
    }
    ch->pos[m->shard] = (proto_id){m->id_ms, m->id_seq};
    if (m->origin_wid == w->id && m->kind == MSG_CHAT) ack(w, m);
    room *r = room_find(&w->rooms, m->room, m->room_len);
    if (m->kind == MSG_CHAT && w->cfg->history_size > 0) {
        if (r == NULL) r = room_get(&w->rooms, m->room, m->room_len);
        if (r != NULL) {
            msg_ref(m, 1);
            room_remember(&w->rooms, r, m);
        }
    }
    /* Presence is for chatd.v1 members only: a room of text clients does
     * not wake them all for nothing. */
    if (r != NULL && (m->kind == MSG_CHAT ? r->nmembers : r->njson)) room_append(&w->rooms, r, m);
    else msg_unref(m);
}
