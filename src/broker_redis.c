/* broker_redis — Redis Streams as the shared log between nodes.
 *
 * Publishing: each worker has its own asynchronous hiredis connection on
 * its event loop and XADDs what its clients send. Messages wait in a
 * bounded per-worker queue until Redis acknowledges them; after a lost
 * connection everything unacknowledged is sent again, in order.
 *
 * Consuming: the broker thread reads the stream with a blocking XREAD from
 * the last id it delivered, builds one msg per entry and fans it out.
 *
 * Exactly once: every entry carries `mid` = "<node>.<worker>.<seq>", where
 * seq grows by one per message of that publisher. A re-sent XADD whose
 * first try was stored after all shows up with a seq already seen, and
 * every node's consumer skips it the same way, so the order stays one.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "broker_backend.h"
#include "log.h"

#define REDIS_BLOCK_MS 500       /* XREAD BLOCK: also how soon stop is seen */
#define REDIS_READ_COUNT 512     /* entries per XREAD */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SEEN_MAX 4096            /* publishers remembered for dedup */

typedef struct redis_addr {
    char host[256];
    int port;
    int db;
    char user[128];
    char pass[256];
} redis_addr;

/* A message waiting for Redis to acknowledge it. */
typedef struct pub_item {
    struct pub_item *next;
    uint64_t seq;
    uint32_t room_len, user_len, text_len;
    char data[];                 /* room, user, text */
} pub_item;

typedef struct publisher {
    broker *b;
    int wid;
    struct event_base *base;
    redisAsyncContext *ac;
    int connected;
    int was_down;                /* a disconnect was logged */
    int refused;                 /* we dropped the connection: Redis refused an XADD */
    int refusing;                /* that refusal was logged; no XADD stored since */
    pub_item *head, *tail;       /* unacknowledged, oldest first */
    pub_item *unsent;            /* first item not sent on this connection */
    int queued;
    uint64_t seq;
    int backoff_ms;
    struct event *retry_ev;      /* reconnect, or wait for the consumer */
} publisher;

typedef struct seen {
    char pub[48];
    uint64_t seq;
    uint64_t used;               /* rbroker.clock when last seen */
} seen;

typedef struct rbroker {
    redis_addr addr;
    char node[17];               /* random, hex: this process's publisher id */
    publisher *pubs;
    _Atomic int ready;           /* consumer fixed its start id */
    /* broker thread only */
    redisContext *ctx;
    char last_id[64];            /* last delivered entry id, "" until fixed */
    uint64_t pos;                /* entries-added count at last_id (gap check) */
    int counted;                 /* Redis reports entries-added (7.0 and later) */
    seen *seen;
    size_t nseen;
    uint64_t clock;              /* entries looked up, for `used` */
} rbroker;

/* ---- addresses ------------------------------------------------------ */

static int parse_url(const char *url, redis_addr *a, char *err, size_t errlen) {
    memset(a, 0, sizeof(*a));
    a->port = 6379;
    const char *p = url;
    if (strncmp(p, "redis://", 8) != 0) goto bad;
    p += 8;
    const char *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            snprintf(a->user, sizeof(a->user), "%.*s", (int)(colon - p), p);
            snprintf(a->pass, sizeof(a->pass), "%.*s", (int)(at - colon - 1), colon + 1);
        } else {
            snprintf(a->pass, sizeof(a->pass), "%.*s", (int)(at - p), p);
        }
        p = at + 1;
    }
    const char *end = p + strcspn(p, ":/");
    if (end == p || (size_t)(end - p) >= sizeof(a->host)) goto bad;
    snprintf(a->host, sizeof(a->host), "%.*s", (int)(end - p), p);
    if (*end == ':') {
        char *e;
        long port = strtol(end + 1, &e, 10);
        if (e == end + 1 || port < 1 || port > 65535) goto bad;
        a->port = (int)port;
        end = e;
    }
    if (*end == '/' && end[1]) {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e || db < 0 || db > 1000000) goto bad;
        a->db = (int)db;
    } else if (*end && !(*end == '/' && !end[1])) {
        goto bad;
    }
    return 0;
bad:
    snprintf(err, errlen, "bad redis_url '%s' (expected redis://[[user]:password@]host[:port][/db])",
             url);
    return -1;
}

/* ---- ids ------------------------------------------------------------ */

static int parse_id(const char *s, uint64_t *ms, uint64_t *seq) {
    char *e;
    *ms = strtoull(s, &e, 10);
    if (*e != '-') return -1;
    *seq = strtoull(e + 1, &e, 10);
    return *e ? -1 : 0;
}

/* ---- publishing (worker threads) ------------------------------------ */

static void pub_connect(publisher *p);

static void pub_schedule(publisher *p, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->retry_ev, &tv);
}

static void pub_on_reply(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL) return; /* connection gone: the item stays queued */
    pub_item *it = p->head;
    if (it == NULL) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Loading, out of memory, a read-only replica, wrong credentials:
         * not the client's fault, and mostly passing. Keep this message and
         * all after it, drop the connection (their replies come back NULL)
         * and send them again after a backoff; their mids make a repeat of
         * one Redis did store harmless. If it never passes, the queue fills
         * and senders get 1013: refused visibly, never dropped. */
        if (!p->refusing)
            log_warn("redis: worker %d: XADD refused: %s; keeping %d messages, retrying",
                     p->wid, reply->str, p->queued);
        p->refusing = 1;
        p->refused = 1;
        redisAsyncFree(ac); /* deferred by hiredis until this callback returns */
        return;
    }
    p->backoff_ms = BACKOFF_MIN_MS; /* stored: Redis is well */
    if (p->refusing) log_info("redis: worker %d: XADD accepted again", p->wid);
    p->refusing = 0;
    p->head = it->next;
    if (p->head == NULL) p->tail = NULL;
    if (p->unsent == it) p->unsent = it->next;
    p->queued--;
    free(it);
}

static void pub_on_aux_reply(redisAsyncContext *ac, void *r, void *priv) {
    redisReply *reply = r;
    publisher *p = priv;
    (void)ac;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_error("redis: worker %d: %s", p->wid, reply->str);
}

static void pub_send(publisher *p, pub_item *it) {
    rbroker *rb = p->b->impl;
    char maxlen[32], mid[64];
    snprintf(maxlen, sizeof(maxlen), "%" PRId64, p->b->cfg->stream_maxlen);
    snprintf(mid, sizeof(mid), "%s.%d.%" PRIu64, rb->node, p->wid, it->seq);
    const char *argv[14];
    size_t len[14];
    int n = 0;
#define ARG(s, l) (argv[n] = (s), len[n++] = (l))
    ARG("XADD", 4);
    ARG(p->b->cfg->stream, strlen(p->b->cfg->stream));
    if (p->b->cfg->stream_maxlen > 0) {
        ARG("MAXLEN", 6);
        ARG("~", 1);
        ARG(maxlen, strlen(maxlen));
    }
    ARG("*", 1);
    ARG("room", 4);
    ARG(it->data, it->room_len);
    ARG("user", 4);
    ARG(it->data + it->room_len, it->user_len);
    ARG("text", 4);
    ARG(it->data + it->room_len + it->user_len, it->text_len);
    ARG("mid", 3);
    ARG(mid, strlen(mid));
#undef ARG
    redisAsyncCommandArgv(p->ac, pub_on_reply, p, n, argv, len);
}

/* Sends everything not yet sent on this connection, once the consumer has
 * fixed where it starts reading (else those messages could fall before). */
static void pub_flush(publisher *p) {
    rbroker *rb = p->b->impl;
    if (!p->connected || p->unsent == NULL) return;
    if (!atomic_load_explicit(&rb->ready, memory_order_acquire)) { /* pairs with consumer */
        pub_schedule(p, 20);
        return;
    }
    for (; p->unsent; p->unsent = p->unsent->next) pub_send(p, p->unsent);
}

static void pub_on_connect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    if (status != REDIS_OK) {
        if (!p->was_down)
            log_warn("redis: worker %d cannot connect to %s:%d: %s; retrying", p->wid,
                     ((rbroker *)p->b->impl)->addr.host, ((rbroker *)p->b->impl)->addr.port,
                     ac->errstr);
        p->was_down = 1;
        p->ac = NULL; /* hiredis frees it */
        pub_schedule(p, p->backoff_ms);
        p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
        return;
    }
    if (p->was_down) log_info("redis: worker %d connected again", p->wid);
    p->was_down = 0;
    p->connected = 1;
    p->unsent = p->head; /* everything unacknowledged goes again, in order */
    pub_flush(p);
}

static void pub_on_disconnect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    p->ac = NULL; /* hiredis frees it */
    p->connected = 0;
    if (p->refused) { /* we dropped it: try again after a while */
        p->refused = 0;
    } else {
        if (status == REDIS_OK) return; /* we asked for it: stopping */
        if (!p->was_down) log_warn("redis: worker %d lost its connection: %s", p->wid, ac->errstr);
        p->was_down = 1;
    }
    pub_schedule(p, p->backoff_ms);
    p->backoff_ms = p->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : p->backoff_ms * 2;
}

static void pub_on_retry(evutil_socket_t fd, short what, void *arg) {
    publisher *p = arg;
    (void)fd;
    (void)what;
    if (p->ac == NULL) pub_connect(p);
    else pub_flush(p);
}

static void pub_connect(publisher *p) {
    rbroker *rb = p->b->impl;
    p->ac = redisAsyncConnect(rb->addr.host, rb->addr.port);
    if (p->ac == NULL || p->ac->err) {
        if (p->ac) redisAsyncFree(p->ac);
        p->ac = NULL;
        pub_schedule(p, p->backoff_ms);
        return;
    }
    p->ac->data = p;
    redisLibeventAttach(p->ac, p->base);
    redisAsyncSetConnectCallback(p->ac, pub_on_connect);
    redisAsyncSetDisconnectCallback(p->ac, pub_on_disconnect);
    /* Queued before any XADD, so they run first on the new connection. */
    if (rb->addr.pass[0]) {
        if (rb->addr.user[0])
            redisAsyncCommand(p->ac, pub_on_aux_reply, p, "AUTH %s %s", rb->addr.user,
                              rb->addr.pass);
        else redisAsyncCommand(p->ac, pub_on_aux_reply, p, "AUTH %s", rb->addr.pass);
    }
    if (rb->addr.db) redisAsyncCommand(p->ac, pub_on_aux_reply, p, "SELECT %d", rb->addr.db);
}

static int redis_attach(broker *b, int wid, struct event_base *base) {
    rbroker *rb = b->impl;
    publisher *p = &rb->pubs[wid - 1];
    p->b = b;
    p->wid = wid;
    p->base = base;
    p->backoff_ms = BACKOFF_MIN_MS;
    p->retry_ev = evtimer_new(base, pub_on_retry, p);
    if (p->retry_ev == NULL) return -1;
    pub_connect(p);
    return 0;
}

static void redis_detach(broker *b, int wid) {
    rbroker *rb = b->impl;
    publisher *p = &rb->pubs[wid - 1];
    if (p->queued) log_warn("redis: worker %d stops with %d messages not stored", wid, p->queued);
    if (p->ac) {
        redisAsyncContext *ac = p->ac;
        p->ac = NULL;
        redisAsyncFree(ac); /* callbacks see reply NULL */
    }
    while (p->head) {
        pub_item *it = p->head;
        p->head = it->next;
        free(it);
    }
    p->tail = p->unsent = NULL;
    if (p->retry_ev) event_free(p->retry_ev);
    p->retry_ev = NULL;
}

static int redis_publish(broker *b, int wid, const char *rname, size_t room_len, const char *user,
                         size_t user_len, const char *text, size_t text_len) {
    rbroker *rb = b->impl;
    publisher *p = &rb->pubs[wid - 1];
    if (p->queued >= b->cfg->publish_queue) return -1;
    pub_item *it = malloc(sizeof(*it) + room_len + user_len + text_len);
    if (it == NULL) return -1;
    it->next = NULL;
    it->seq = ++p->seq;
    it->room_len = (uint32_t)room_len;
    it->user_len = (uint32_t)user_len;
    it->text_len = (uint32_t)text_len;
    memcpy(it->data, rname, room_len);
    memcpy(it->data + room_len, user, user_len);
    memcpy(it->data + room_len + user_len, text, text_len);
    if (p->tail) p->tail->next = it;
    else p->head = it;
    p->tail = it;
    p->queued++;
    if (p->unsent == NULL) p->unsent = it;
    pub_flush(p);
    return 0;
}

/* ---- consuming (broker thread) -------------------------------------- */

static void sleep_ms(broker *b, int ms) {
    for (; ms > 0 && !atomic_load_explicit(&b->stop, memory_order_acquire); ms -= 50) {
        struct timespec ts = {0, (ms < 50 ? ms : 50) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static redisReply *cmd(rbroker *rb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rb->ctx, fmt, ap);
    va_end(ap);
    return r;
}

/* Gaps. Entries after last_id can vanish unread when XADD's MAXLEN trims
 * them while the consumer is behind or away. Ids are not dense, so the
 * consumer counts instead: `pos` is how many entries the stream had ever
 * added up to last_id. XINFO STREAM reports entries-added (E) and length
 * (L); trimming removes the oldest first, so the oldest entry left is number
 * E - L + 1, and E - L > pos means entries pos+1 .. E-L are gone. The check
 * and the read run in one MULTI, so nothing is trimmed between them. */

static long long xinfo_int(redisReply *r, const char *key, int *found) {
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && strcmp(k->str, key) == 0 &&
            v->type == REDIS_REPLY_INTEGER) {
            *found = 1;
            return v->integer;
        }
    }
    *found = 0;
    return 0;
}

static void check_gap(broker *b, redisReply *info) {
    rbroker *rb = b->impl;
    int has_added, has_len;
    long long added = xinfo_int(info, "entries-added", &has_added);
    long long len = xinfo_int(info, "length", &has_len);
    if (!rb->counted || !has_added || !has_len) return; /* no stream, or Redis < 7 */
    uint64_t gone = (uint64_t)(added - len);
    if ((uint64_t)added < rb->pos) {
        log_warn("redis: %s was recreated (%lld entries added, %" PRIu64 " delivered before); "
                 "counting from its start", b->cfg->stream, added, rb->pos);
        rb->pos = 0;
    }
    if (gone > rb->pos) {
        log_warn("redis: gap: %s was trimmed past the last delivered id %s; %" PRIu64
                 " messages after it were lost unread (stream_maxlen too small for the load?)",
                 b->cfg->stream, rb->last_id, gone - rb->pos);
        atomic_fetch_add_explicit(&b->lost, gone - rb->pos, memory_order_relaxed); /* a counter */
        rb->pos = gone;
    }
}

/* Connects, authenticates, and fixes or checks the start id. */
static int consumer_connect(broker *b) {
    rbroker *rb = b->impl;
    struct timeval tv = {1, 0};
    rb->ctx = redisConnectWithTimeout(rb->addr.host, rb->addr.port, tv);
    if (rb->ctx == NULL || rb->ctx->err) goto fail;
    struct timeval rt = {REDIS_BLOCK_MS / 1000 + 5, 0};
    redisSetTimeout(rb->ctx, rt);
    redisReply *r;
    if (rb->addr.pass[0]) {
        r = rb->addr.user[0] ? cmd(rb, "AUTH %s %s", rb->addr.user, rb->addr.pass)
                             : cmd(rb, "AUTH %s", rb->addr.pass);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    if (rb->addr.db) {
        r = cmd(rb, "SELECT %d", rb->addr.db);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    if (rb->last_id[0] == '\0') {
        /* First contact: start after the newest entry; no replay. One
         * XINFO gives both that id and the count it closes. */
        r = cmd(rb, "XINFO STREAM %s", b->cfg->stream);
        if (r == NULL) goto fail;
        if (r->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i + 1 < r->elements; i += 2)
                if (r->element[i]->type == REDIS_REPLY_STRING &&
                    strcmp(r->element[i]->str, "last-generated-id") == 0 &&
                    r->element[i + 1]->type == REDIS_REPLY_STRING)
                    snprintf(rb->last_id, sizeof(rb->last_id), "%s", r->element[i + 1]->str);
            long long added = xinfo_int(r, "entries-added", &rb->counted);
            rb->pos = (uint64_t)added;
        } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "no such key")) {
            rb->counted = 1; /* no stream yet: counting starts at 0 */
        } else {
            /* LOADING, NOPERM, WRONGTYPE, ...: where the stream ends is not
             * known, and 0-0 would replay all of it. Try again later. */
            if (r->type == REDIS_REPLY_ERROR) goto fail_reply;
            freeReplyObject(r);
            goto fail;
        }
        freeReplyObject(r);
        if (rb->last_id[0] == '\0') snprintf(rb->last_id, sizeof(rb->last_id), "0-0");
        if (!rb->counted) log_warn("redis: server older than 7.0: trimmed gaps are not detected");
        log_info("redis: reading %s after %s", b->cfg->stream, rb->last_id);
        /* release: publishers may send now; entries they add come after */
        atomic_store_explicit(&rb->ready, 1, memory_order_release);
    }
    return 0;
fail_reply:
    if (r && r->type == REDIS_REPLY_ERROR) {
        log_error("redis: %s", r->str);
        freeReplyObject(r);
    }
fail:
    if (rb->ctx) {
        redisFree(rb->ctx);
        rb->ctx = NULL;
    }
    return -1;
}

/* True if this entry's mid was seen before (a re-sent publish). */
static int seen_before(rbroker *rb, const char *mid, size_t len) {
    const char *dot = memrchr(mid, '.', len);
    if (dot == NULL || (size_t)(dot - mid) >= sizeof(rb->seen[0].pub)) return 0;
    size_t plen = (size_t)(dot - mid);
    uint64_t seq = strtoull(dot + 1, NULL, 10);
    for (size_t i = 0; i < rb->nseen; i++) {
        seen *s = &rb->seen[i];
        if (strncmp(s->pub, mid, plen) == 0 && s->pub[plen] == '\0') {
            s->used = ++rb->clock;
            if (seq <= s->seq) return 1;
            s->seq = seq;
            return 0;
        }
    }
    seen *s = &rb->seen[rb->nseen];
    if (rb->nseen == SEEN_MAX) { /* full (many restarts): forget the stalest */
        s = &rb->seen[0];
        for (size_t i = 1; i < rb->nseen; i++)
            if (rb->seen[i].used < s->used) s = &rb->seen[i];
    } else {
        rb->nseen++;
    }
    s->used = ++rb->clock;
    memcpy(s->pub, mid, plen);
    s->pub[plen] = '\0';
    s->seq = seq;
    return 0;
}

static void consume_entry(broker *b, redisReply *e) {
    rbroker *rb = b->impl;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    const char *id = e->element[0]->str;
    snprintf(rb->last_id, sizeof(rb->last_id), "%s", id);
    redisReply *f = e->element[1];
    redisReply *rm = NULL, *user = NULL, *text = NULL, *mid = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        if (strcmp(k->str, "room") == 0) rm = v;
        else if (strcmp(k->str, "user") == 0) user = v;
        else if (strcmp(k->str, "text") == 0) text = v;
        else if (strcmp(k->str, "mid") == 0) mid = v;
    }
    if (!rm || !user || !text) {
        log_warn("redis: entry %s lacks room, user or text; skipped", id);
        return;
    }
    if (mid && seen_before(rb, mid->str, mid->len)) {
        log_debug("redis: entry %s repeats %s; skipped", id, mid->str);
        return;
    }
    msg *m = msg_new(rm->str, rm->len, user->str, user->len, text->str, text->len);
    if (m == NULL) {
        log_error("redis: out of memory for entry %s", id);
        return;
    }
    parse_id(id, &m->id_ms, &m->id_seq);
    broker_fanout(b, m);
}

static void *redis_run(void *arg) {
    broker *b = arg;
    rbroker *rb = b->impl;
    int backoff = BACKOFF_MIN_MS, down_logged = 0, read_failing = 0;
    log_thread("broker");
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) { /* see broker_stop */
        if (rb->ctx == NULL) {
            if (consumer_connect(b) < 0) {
                if (!down_logged)
                    log_warn("redis: cannot reach %s:%d; retrying with backoff", rb->addr.host,
                             rb->addr.port);
                down_logged = 1;
                sleep_ms(b, backoff);
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            if (down_logged) {
                log_info("redis: connected again, resuming after %s", rb->last_id);
                atomic_fetch_add_explicit(&b->reconnects, 1, memory_order_relaxed); /* a counter */
            }
            down_logged = 0;
            backoff = BACKOFF_MIN_MS;
        }
        /* The read: a gap check and the entries after last_id, atomically. */
        redisReply *r = cmd(rb, "MULTI");
        if (r) freeReplyObject(r);
        redisAppendCommand(rb->ctx, "XINFO STREAM %s", b->cfg->stream);
        redisAppendCommand(rb->ctx, "XREAD COUNT %d STREAMS %s %s", REDIS_READ_COUNT,
                           b->cfg->stream, rb->last_id);
        redisAppendCommand(rb->ctx, "EXEC");
        r = NULL;
        for (int i = 0; i < 3 && rb->ctx->err == 0; i++) {
            if (r) freeReplyObject(r); /* QUEUED, QUEUED */
            r = NULL;
            if (redisGetReply(rb->ctx, (void **)&r) != REDIS_OK) r = NULL;
        }
        if (r == NULL) {
            log_warn("redis: consumer lost its connection: %s", rb->ctx->errstr);
            down_logged = 1;
            redisFree(rb->ctx);
            rb->ctx = NULL;
            continue;
        }
        size_t n = 0;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            check_gap(b, r->element[0]);
            redisReply *xr = r->element[1];
            for (size_t s = 0; xr->type == REDIS_REPLY_ARRAY && s < xr->elements; s++) {
                redisReply *stream = xr->element[s];
                if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2) continue;
                redisReply *entries = stream->element[1];
                for (size_t i = 0; i < entries->elements; i++) consume_entry(b, entries->element[i]);
                n += entries->elements;
            }
            rb->pos += n;
            broker_flush_wakes(b);
            if (read_failing) log_info("redis: reading %s again", b->cfg->stream);
            read_failing = 0;
        } else {
            if (!read_failing) /* once per streak: LOADING lasts, WRONGTYPE stays */
                log_error("redis: read failed: %s; retrying every second",
                          r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            read_failing = 1;
            sleep_ms(b, 1000);
        }
        freeReplyObject(r);
        if (n > 0) continue;
        /* Caught up: wait for the next entry. This reply is only a doorbell;
         * the entries are read (and counted) by the MULTI above. */
        r = cmd(rb, "XREAD COUNT 1 BLOCK %d STREAMS %s %s", REDIS_BLOCK_MS, b->cfg->stream,
                rb->last_id);
        if (r) freeReplyObject(r);
    }
    return NULL;
}

/* ---- life ----------------------------------------------------------- */

static int redis_init(broker *b, char *err, size_t errlen) {
    rbroker *rb = calloc(1, sizeof(*rb));
    if (rb == NULL) goto oom;
    b->impl = rb;
    if (parse_url(b->cfg->redis_url, &rb->addr, err, errlen) < 0) {
        b->ops->free(b);
        return -1;
    }
    uint64_t node;
    if (getrandom(&node, sizeof(node), 0) != sizeof(node)) node = (uint64_t)time(NULL) ^ (uint64_t)getpid();
    snprintf(rb->node, sizeof(rb->node), "%016" PRIx64, node);
    rb->pubs = calloc((size_t)b->nworkers, sizeof(*rb->pubs));
    rb->seen = calloc(SEEN_MAX, sizeof(*rb->seen));
    if (rb->pubs == NULL || rb->seen == NULL) goto oom;
    return 0;
oom:
    snprintf(err, errlen, "redis broker: out of memory");
    if (b->impl) b->ops->free(b);
    return -1;
}

static void redis_interrupt(broker *b) { (void)b; /* XREAD BLOCK returns within 0.5 s */ }

static int redis_ready(broker *b, char *why, size_t whylen) {
    rbroker *rb = b->impl;
    if (atomic_load_explicit(&rb->ready, memory_order_acquire)) return 1; /* see consumer */
    snprintf(why, whylen, "Redis not reached yet");
    return 0;
}

static void redis_free(broker *b) {
    rbroker *rb = b->impl;
    if (rb == NULL) return;
    if (rb->ctx) redisFree(rb->ctx);
    free(rb->pubs);
    free(rb->seen);
    free(rb);
    b->impl = NULL;
}

const broker_ops broker_redis_ops = {
    .name = "redis",
    .init = redis_init,
    .run = redis_run,
    .interrupt = redis_interrupt,
    .attach = redis_attach,
    .detach = redis_detach,
    .publish = redis_publish,
    .ready = redis_ready,
    .free = redis_free,
};
