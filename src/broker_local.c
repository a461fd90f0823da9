/* broker_local — the in-process broker for a single node.
 *
 * Each worker pushes the messages its clients send into its own ring
 * towards the broker thread, which gives each the next sequence number and
 * fans it out to every worker. One thread assigns the order, so every
 * client sees the same order, and a client's own messages keep theirs.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "broker_backend.h"
#include "log.h"
#include "proto.h"

#define LOCAL_BATCH 256 /* messages taken from one worker before the next */

/* Who is in a room, as far as presence goes: one entry per user, with
 * the workers that hold a connection of theirs there. */
typedef struct pres_user {
    uint8_t holders[33];        /* bit per worker id (1..256) */
    uint32_t count;             /* bits set */
    uint16_t len;
    char name[];
} pres_user;

typedef struct pres_room {
    struct pres_room *next;
    pres_user **users;
    uint32_t nusers, cap;
    uint16_t len;
    char name[];
} pres_room;

#define PRES_BUCKETS 4096

typedef struct local {
    int bell_fd;       /* workers → broker thread doorbell */
    ring **out;        /* per worker: msg * towards the broker */
    uint64_t *seq;     /* per worker, its thread only: last ticket */
    /* broker thread */
    uint64_t last_ms, last_seq;  /* the last id given */
    uint64_t epoch;
    pres_room *rooms[PRES_BUCKETS];
} local;

static uint32_t pres_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

static pres_room **pres_room_slot(local *l, const char *name, size_t n) {
    pres_room **p = &l->rooms[pres_hash(name, n) % PRES_BUCKETS];
    for (; *p; p = &(*p)->next)
        if ((*p)->len == n && memcmp((*p)->name, name, n) == 0) break;
    return p;
}

/* Worker wid's user came to (join 1) or left (0) room. Returns 1 when that
 * changes who is in the room (the first holder came, the last went) and the
 * room has at most max members (larger rooms are not told one by one), 0
 * when not, -1 when out of memory. */
static int pres_change(local *l, int wid, const msg *m, int join, uint32_t max) {
    pres_room **rp = pres_room_slot(l, m->room, m->room_len), *r = *rp;
    if (r == NULL) {
        if (!join) return 0;
        if ((r = calloc(1, sizeof(*r) + m->room_len + 1)) == NULL) return -1;
        memcpy(r->name, m->room, m->room_len);
        r->len = m->room_len;
        *rp = r;
    }
    uint32_t i = 0;
    while (i < r->nusers && !(r->users[i]->len == m->user_len &&
                              memcmp(r->users[i]->name, m->user, m->user_len) == 0))
        i++;
    if (i == r->nusers) {
        if (!join) return 0;
        if (r->nusers == r->cap) {
            uint32_t cap = r->cap ? r->cap * 2 : 8;
            pres_user **u = realloc(r->users, cap * sizeof(*u));
            if (u == NULL) return -1;
            r->users = u;
            r->cap = cap;
        }
        pres_user *u = calloc(1, sizeof(*u) + m->user_len + 1);
        if (u == NULL) return -1;
        memcpy(u->name, m->user, m->user_len);
        u->len = m->user_len;
        r->users[r->nusers++] = u;
    }
    pres_user *u = r->users[i];
    uint8_t bit = (uint8_t)(1u << (wid % 8));
    int held = (u->holders[wid / 8] & bit) != 0;
    if (join == held) return 0;
    u->holders[wid / 8] ^= bit;
    u->count += join ? 1 : -1;
    if (join) return u->count == 1 && r->nusers <= max;
    if (u->count > 0) return 0;
    int told = r->nusers <= max;
    free(u);
    r->users[i] = r->users[--r->nusers];
    if (r->nusers == 0) {
        *rp = r->next;
        free(r->users);
        free(r);
    }
    return told;
}

/* The members of m's room as a JSON array of at most max names. */
static msg *pres_snapshot(local *l, const msg *m, int max) {
    pres_room *r = *pres_room_slot(l, m->room, m->room_len);
    uint32_t n = r ? r->nusers : 0;
    jbuf j = {0};
    JB_LIT(&j, "[");
    for (uint32_t i = 0; i < n && i < (uint32_t)max; i++) {
        if (i) JB_LIT(&j, ",");
        jb_str(&j, r->users[i]->name, r->users[i]->len);
    }
    JB_LIT(&j, "]");
    msg *s = j.oom ? NULL : msg_raw(MSG_SNAPSHOT, m->room, m->room_len, "", 0, j.p, j.len);
    jb_free(&j);
    if (s == NULL) return NULL;
    s->count = n;
    s->wait = m->wait;
    s->id_ms = l->last_ms;
    s->id_seq = l->last_seq;
    return s;
}

static void pres_free(local *l) {
    for (size_t b = 0; b < PRES_BUCKETS; b++)
        for (pres_room *r = l->rooms[b], *next; r; r = next) {
            next = r->next;
            for (uint32_t i = 0; i < r->nusers; i++) free(r->users[i]);
            free(r->users);
            free(r);
        }
}

static int local_init(broker *b, char *err, size_t errlen) {
    local *l = calloc(1, sizeof(*l));
    if (l == NULL) goto oom;
    b->impl = l;
    l->bell_fd = eventfd(0, EFD_CLOEXEC);
    l->out = calloc((size_t)b->nworkers, sizeof(*l->out));
    l->seq = calloc((size_t)b->nworkers, sizeof(*l->seq));
    if (l->bell_fd < 0 || l->out == NULL || l->seq == NULL) goto oom;

    for (int i = 0; i < b->nworkers; i++)
        if ((l->out[i] = ring_new((size_t)b->cfg->ring_size)) == NULL) goto oom;
    /* Every start is a new epoch: the history was in memory only. The mark
     * goes into the inboxes before any thread runs: the broker thread,
     * their producer from then on, starts after this. */
    if (RAND_bytes((unsigned char *)&l->epoch, sizeof(l->epoch)) != 1) l->epoch = (uint64_t)time(NULL);
    l->epoch |= 1; /* never 0, which means "not known" */
    for (int i = 0; i < b->nworkers; i++) {
        msg *mark = msg_raw(MSG_MARK, "", 0, "", 0, "", 0);
        if (mark == NULL) goto oom;
        mark->origin_seq = l->epoch;
        if (worker_push(b->workers[i], mark) == -1) {
            msg_unref(mark);
            goto oom;
        }
    }
    return 0;
oom:
    snprintf(err, errlen, "local broker: %s", l && l->bell_fd < 0 ? strerror(errno) : "out of memory");
    b->ops->free(b);
    return -1;
}

static void local_free(broker *b) {
    local *l = b->impl;
    if (l == NULL) return;
    if (l->out) {
        for (int i = 0; i < b->nworkers; i++) {
            if (l->out[i] == NULL) continue;
            msg *m;
            while ((m = ring_pop(l->out[i]))) msg_unref(m);
            ring_free(l->out[i]);
        }
        free(l->out);
    }
    if (l->bell_fd >= 0) close(l->bell_fd);
    pres_free(l);
    free(l->seq);
    free(l);
    b->impl = NULL;
}

static void local_ring(local *l) {
    uint64_t one = 1;
    ssize_t rc = write(l->bell_fd, &one, sizeof(one));
    (void)rc; /* a saturated counter still wakes */
}

static void local_interrupt(broker *b) { local_ring(b->impl); }

/* The next id, "<ms>-<seq>" as Redis makes them: wall ms, never going
 * back, numbered within one ms. */
static void local_next_id(local *l, uint64_t *ms, uint64_t *seq) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t now = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    if (now > l->last_ms) {
        l->last_ms = now;
        l->last_seq = 0;
    } else {
        l->last_seq++;
    }
    *ms = l->last_ms;
    *seq = l->last_seq;
}

/* Gives worker wid's request r its place in the order. Returns -1 if stop
 * was requested while a worker's inbox was full. */
static int local_order(broker *b, local *l, int wid, msg *r) {
    int rc = 0, change = 0;
    if (r->kind == MSG_JOIN || r->kind == MSG_LEAVE) {
        change = pres_change(l, wid, r, r->kind == MSG_JOIN, (uint32_t)b->cfg->presence_max);
        if (change < 0) log_error("local broker: out of memory for presence in %s", r->room);
    }
    if (r->kind == MSG_CHAT || r->kind == MSG_TYPING || change > 0) {
        uint64_t ms = 0, seq = 0;
        if (r->kind != MSG_TYPING) local_next_id(l, &ms, &seq);
        msg *m = msg_new(r->kind, r->room, r->room_len, r->user, r->user_len, r->text,
                         r->text_len, ms, seq, r->ts);
        if (m == NULL) {
            log_error("local broker: out of memory for a message in %s", r->room);
        } else {
            m->origin_wid = (uint16_t)wid;
            m->origin_seq = r->origin_seq;
            m->conn_id = r->conn_id;
            rc = broker_fanout(b, m);
        }
    }
    if (rc == 0 && r->kind == MSG_JOIN && r->wait) { /* its answer, after the change */
        msg *s = pres_snapshot(l, r, b->cfg->presence_max);
        if (s == NULL) {
            log_error("local broker: out of memory for the members of %s", r->room);
        } else {
            rc = broker_push_one(b, wid, s);
        }
    }
    msg_unref(r);
    return rc;
}

static void *local_run(void *arg) {
    broker *b = arg;
    local *l = b->impl;
    log_thread("broker");
    /* acquire: see broker_stop */
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) {
        struct pollfd pfd = {l->bell_fd, POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0) continue;
        uint64_t v;
        ssize_t rc = read(l->bell_fd, &v, sizeof(v));
        (void)rc;
        int moved;
        do {
            moved = 0;
            for (int i = 0; i < b->nworkers; i++) {
                msg *m;
                for (int k = 0; k < LOCAL_BATCH && (m = ring_pop(l->out[i])); k++, moved++)
                    if (local_order(b, l, i + 1, m) < 0) return NULL;
            }
            broker_flush_wakes(b);
        } while (moved);
    }
    return NULL;
}

static int local_attach(broker *b, int wid, struct event_base *base) {
    (void)b, (void)wid, (void)base;
    return 0;
}

static void local_detach(broker *b, int wid) { (void)b, (void)wid; }

static int64_t local_publish(broker *b, int wid, const broker_req *q) {
    local *l = b->impl;
    /* nothing here can refuse a message for good */
    msg *m = msg_raw(q->kind, q->room, q->room_len, q->user, q->user_len, q->text, q->text_len);
    if (m == NULL) return -1;
    m->conn_id = q->conn_id;
    m->ts = q->ts;
    m->wait = q->wait;
    m->origin_seq = l->seq[wid - 1] + 1;
    int rc = ring_push(l->out[wid - 1], m); /* worker ids start at 1 */
    if (rc < 0) {
        msg_unref(m);
        return -1;
    }
    if (rc == 1) local_ring(l);
    return (int64_t)++l->seq[wid - 1];
}

const broker_ops broker_local_ops = {
    .name = "local",
    .init = local_init,
    .run = local_run,
    .interrupt = local_interrupt,
    .attach = local_attach,
    .detach = local_detach,
    .publish = local_publish,
    .free = local_free,
};
