/* redis_pub — each worker publishes what its clients send, on its own
 * asynchronous hiredis connection on its own event loop (see redis.h).
 *
 * A message waits in the worker's queue until Redis answers for it. It is
 * sent with its publisher sequence number and the number of the oldest
 * message still queued; the script below appends it only if it is the next
 * of its publisher, so whatever happens to the connection or to one command
 * of a pipeline, re-sending everything unanswered, in order, stores each
 * message once and in its publisher's order.
 *
 * Liveness: every command has redis_timeout to be answered, the connection
 * to be made; past that the connection is dead (a black hole gives no
 * error), dropped and made again. Nothing it carried is lost: it is all
 * still queued.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/sha.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "log.h"
#include "redis.h"
#include "worker.h"
#include "ws.h"

#define PUB_WATCH_MS 250            /* how often the watchdog looks */
#define PUB_KEY_TTL "86400"         /* a publisher's last sequence is kept a day */
#define PUB_WAIT_START_MS 20        /* poll for the consumer's start id */

/* KEYS: stream, publisher key. ARGV: seq, oldest seq still queued, maxlen
 * (0: none), room, user, text, mid, key ttl. Returns the entry id, 0 when
 * the message is stored already, or an OUTOFORDER error when an earlier
 * message of the publisher is missing (it comes again first). The shebang
 * makes Redis refuse the whole script up front under OOM, never halfway. */
static const char pub_script[] =
    "#!lua\n"
    "local last = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "local seq, oldest = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "if oldest - 1 > last then last = oldest - 1 end\n"
    "if seq <= last then return 0 end\n"
    "if seq ~= last + 1 then\n"
    "  return redis.error_reply('OUTOFORDER message ' .. seq .. ' after ' .. last)\n"
    "end\n"
    "local id\n"
    "if ARGV[3] ~= '0' then\n"
    "  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'room', ARGV[4],\n"
    "                  'user', ARGV[5], 'text', ARGV[6], 'mid', ARGV[7])\n"
    "else\n"
    "  id = redis.call('XADD', KEYS[1], '*', 'room', ARGV[4], 'user', ARGV[5],\n"
    "                  'text', ARGV[6], 'mid', ARGV[7])\n"
    "end\n"
    "redis.call('SET', KEYS[2], seq, 'EX', ARGV[8])\n"
    "return id\n";

/* A message waiting for Redis to store it. */
typedef struct pub_item {
    struct pub_item *next;
    uint64_t seq;
    uint64_t conn_id;            /* the sender, told if it can never be stored */
    int64_t accepted_ms;         /* monotonic: when the client's message came */
    int64_t sent_ms;             /* monotonic: when last sent */
    uint32_t room_len, user_len, text_len;
    char data[];                 /* room, user, text */
} pub_item;

typedef struct publisher {
    broker *b;
    rbroker *rb;
    int wid;
    struct event_base *base;
    redisAsyncContext *ac;       /* NULL while there is no connection */
    int up;                      /* ac is connected */
    int64_t connect_ms;          /* when ac was started */
    pub_item *head, *tail;       /* unanswered, oldest first */
    pub_item *unsent;            /* first item not sent on this connection */
    int holding;                 /* a refusal: send nothing until retry_ev */
    int need_load;               /* SCRIPT LOAD before the next EVALSHA */
    int backoff_ms;
    int troubled;                /* a trouble streak was logged */
    uint64_t seq;
    char key[192];               /* "<stream>:pub:<node>.<wid>" */
    char mid[48];                /* "<node>.<wid>." */
    struct event *retry_ev;      /* reconnect, or send again after a refusal */
    struct event *watch_ev;
    _Atomic int queued;          /* read by /metrics (relaxed: a gauge) */
    _Atomic int64_t oldest_ms;   /* head's accepted_ms, 0: empty (relaxed) */
} publisher;

static void pub_connect(publisher *p);

static void pub_schedule(publisher *p, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->retry_ev, &tv);
}

/* Schedules the next try after a failure, backing off. */
static void pub_back_off(publisher *p) {
    pub_schedule(p, p->backoff_ms);
    p->backoff_ms = redis_backoff(p->backoff_ms);
}

static void pub_trouble(publisher *p, const char *fmt, const char *what) {
    if (!p->troubled) log_warn(fmt, p->wid, what, atomic_load(&p->queued));
    p->troubled = 1;
}

static pub_item *pub_pop(publisher *p) {
    pub_item *it = p->head;
    p->head = it->next;
    if (p->head == NULL) p->tail = NULL;
    if (p->unsent == it) p->unsent = it->next;
    atomic_fetch_sub_explicit(&p->queued, 1, memory_order_relaxed); /* a gauge */
    atomic_store_explicit(&p->oldest_ms, p->head ? p->head->accepted_ms : 0,
                          memory_order_relaxed); /* a gauge */
    return it;
}

/* Drops the connection (we judged it dead or useless) and makes a new one
 * after a backoff. Safe inside a hiredis callback: the free is deferred. */
static void pub_drop(publisher *p) {
    redisAsyncContext *ac = p->ac;
    p->ac = NULL; /* pub_on_disconnect sees it is not ours any more */
    p->up = 0;
    if (ac) redisAsyncFree(ac); /* pending callbacks see reply NULL */
    pub_back_off(p);
}

static void pub_on_reply(redisAsyncContext *ac, void *r, void *priv);
static void pub_on_aux_reply(redisAsyncContext *ac, void *r, void *priv);

/* The script's SHA-1 in hex, for EVALSHA: the script itself crosses the
 * wire once per connection (SCRIPT LOAD), not with every message. */
static char pub_sha[2 * SHA_DIGEST_LENGTH + 1];

static void pub_script_sha(void) {
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)pub_script, sizeof(pub_script) - 1, d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) snprintf(pub_sha + 2 * i, 3, "%02x", d[i]);
}

static void pub_send(publisher *p, pub_item *it) {
    const config *cfg = p->b->cfg;
    char seq[24], oldest[24], maxlen[24], mid[80];
    snprintf(seq, sizeof(seq), "%" PRIu64, it->seq);
    snprintf(oldest, sizeof(oldest), "%" PRIu64, p->head->seq);
    snprintf(maxlen, sizeof(maxlen), "%" PRId64, cfg->stream_maxlen);
    snprintf(mid, sizeof(mid), "%s%" PRIu64, p->mid, it->seq);
    const char *argv[] = {"EVALSHA", pub_sha, "2", cfg->stream, p->key, seq, oldest, maxlen,
                          it->data, it->data + it->room_len,
                          it->data + it->room_len + it->user_len, mid, PUB_KEY_TTL};
    size_t len[] = {7, sizeof(pub_sha) - 1, 1, strlen(cfg->stream), strlen(p->key),
                    strlen(seq), strlen(oldest), strlen(maxlen), it->room_len, it->user_len,
                    it->text_len, strlen(mid), sizeof(PUB_KEY_TTL) - 1};
    it->sent_ms = clock_ms();
    /* The reply callback knows its message by sequence number: a reply for
     * anything but the queue's head is stale (sent before a refusal). */
    redisAsyncCommandArgv(p->ac, pub_on_reply, (void *)(uintptr_t)it->seq, 13, argv, len);
}

/* Sends everything not yet sent on this connection, unless a refusal holds
 * it back, and only once the consumer has fixed where it starts reading
 * (else these messages could fall before it). */
static void pub_flush(publisher *p) {
    if (!p->up || p->holding || p->unsent == NULL) return;
    if (!atomic_load_explicit(&p->rb->started, memory_order_acquire)) { /* pairs with consumer */
        pub_schedule(p, PUB_WAIT_START_MS);
        return;
    }
    if (p->need_load) { /* queued before the EVALSHAs: Redis runs it first */
        const char *argv[] = {"SCRIPT", "LOAD", pub_script};
        size_t len[] = {6, 4, sizeof(pub_script) - 1};
        redisAsyncCommandArgv(p->ac, pub_on_aux_reply, NULL, 3, argv, len);
        p->need_load = 0;
    }
    for (; p->unsent; p->unsent = p->unsent->next) pub_send(p, p->unsent);
}

/* A message Redis can never store (the stream key is of another type, the
 * user may not write it): its sender is told with 1011, never left waiting. */
static void pub_abandon_head(publisher *p, const char *why) {
    char problem[192];
    snprintf(problem, sizeof(problem), "Redis refuses every write: %s (check stream and the "
             "Redis user's rights)", why);
    if (redis_link_set_problem(&p->rb->link, REDIS_PROBLEM_WRITE, problem))
        log_error("redis: worker %d: %s", p->wid, problem);
    pub_item *it = pub_pop(p);
    worker_refuse(p->b->workers[p->wid - 1], it->conn_id, WS_CLOSE_INTERNAL,
                  "message cannot be stored");
    free(it);
}

static void pub_on_reply(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = ac->data;
    redisReply *reply = r;
    uint64_t seq = (uintptr_t)priv;
    if (reply == NULL || p->ac != ac) return; /* connection gone: all stays queued */
    if (p->head == NULL || p->head->seq != seq) return; /* stale: sent before a refusal */
    if (reply->type == REDIS_REPLY_ERROR) {
        if (redis_error_lasting(reply->str)) {
            pub_abandon_head(p, reply->str);
            return;
        }
        /* An earlier message is missing: it was refused or abandoned and
         * comes again first. Re-sent now, from the head with the head as
         * the oldest, this cannot be refused for order again. */
        if (strncmp(reply->str, "OUTOFORDER", 10) == 0) {
            p->unsent = p->head;
            pub_flush(p);
            return;
        }
        /* Loading, out of memory, a read-only replica, a script refused:
         * passing. Keep this message and all after it, and send them again
         * after a backoff; replies to those already in flight are stale and
         * ignored. If it never passes the queue fills and senders get 1013:
         * refused visibly, never dropped. */
        if (strncmp(reply->str, "NOSCRIPT", 8) == 0) { /* SCRIPT FLUSH, a new replica */
            p->need_load = 1;
        } else {
            pub_trouble(p, "redis: worker %d: publish refused: %s; keeping %d messages, "
                           "retrying", reply->str);
        }
        p->holding = 1;
        p->unsent = p->head;
        pub_back_off(p);
        return;
    }
    if (p->troubled) log_info("redis: worker %d: messages stored again", p->wid);
    p->troubled = 0;
    p->backoff_ms = REDIS_BACKOFF_MIN_MS; /* stored: Redis is well */
    free(pub_pop(p));
    if (redis_link_set_problem(&p->rb->link, REDIS_PROBLEM_WRITE, NULL))
        log_info("redis: worker %d: writes accepted again", p->wid);
}

static void pub_on_aux_reply(redisAsyncContext *ac, void *r, void *priv) {
    redisReply *reply = r;
    publisher *p = ac->data;
    (void)priv;
    if (reply == NULL || reply->type != REDIS_REPLY_ERROR || p->ac != ac) return;
    if (redis_error_lasting(reply->str)) {
        char problem[192];
        snprintf(problem, sizeof(problem), "Redis refuses our credentials: %s (check redis_url)",
                 reply->str);
        if (redis_link_set_problem(&p->rb->link, REDIS_PROBLEM_WRITE, problem))
            log_error("redis: worker %d: %s", p->wid, problem);
    } else {
        pub_trouble(p, "redis: worker %d: %s; keeping %d messages, retrying", reply->str);
    }
    pub_drop(p); /* a connection that failed AUTH or SELECT is no use */
}

static void pub_on_connect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    if (p->ac != ac) return;
    if (status != REDIS_OK) {
        pub_trouble(p, "redis: worker %d cannot connect: %s; keeping %d messages, retrying",
                    ac->errstr);
        p->ac = NULL; /* hiredis frees it */
        pub_back_off(p);
        return;
    }
    if (p->troubled) log_info("redis: worker %d connected again", p->wid);
    p->up = 1;
    p->holding = 0;      /* a refusal on the old connection holds nothing here */
    p->need_load = 1;    /* this Redis may never have seen the script */
    p->unsent = p->head; /* everything unanswered goes again, in order */
    pub_flush(p);
}

static void pub_on_disconnect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    if (p->ac != ac) return; /* dropped by us: pub_drop planned the next try */
    p->ac = NULL;            /* hiredis frees it */
    p->up = 0;
    (void)status;
    pub_trouble(p, "redis: worker %d lost its connection: %s; keeping %d messages, retrying",
                ac->errstr);
    pub_back_off(p);
}

static void pub_on_retry(evutil_socket_t fd, short what, void *arg) {
    publisher *p = arg;
    (void)fd, (void)what;
    if (p->ac == NULL) {
        pub_connect(p);
        return;
    }
    p->holding = 0;
    pub_flush(p);
}

/* A connection that cannot be made in redis_timeout, or that leaves the
 * oldest message unanswered that long, is dead: a silent path (no RST)
 * would otherwise hold it for the kernel's quarter of an hour. */
static void pub_on_watch(evutil_socket_t fd, short what, void *arg) {
    publisher *p = arg;
    (void)fd, (void)what;
    if (p->ac == NULL) return;
    int64_t now = clock_ms(), limit = p->b->cfg->redis_timeout_ms;
    if (!p->up && now - p->connect_ms > limit) {
        pub_trouble(p, "redis: worker %d: connect timed out%s; keeping %d messages, retrying", "");
        pub_drop(p);
    } else if (p->up && p->head && p->head != p->unsent && !p->holding &&
               now - p->head->sent_ms > limit) {
        pub_trouble(p, "redis: worker %d: no answer from Redis%s; keeping %d messages, "
                       "reconnecting", "");
        pub_drop(p);
    }
}

static void pub_connect(publisher *p) {
    rbroker *rb = p->rb;
    char ip[64];
    if (redis_link_ip(&rb->link, ip, sizeof(ip)) < 0) { /* the consumer resolves it */
        pub_schedule(p, 100);
        return;
    }
    p->ac = redisAsyncConnect(ip, rb->link.port);
    if (p->ac == NULL || p->ac->err) {
        pub_trouble(p, "redis: worker %d cannot connect: %s; keeping %d messages, retrying",
                    p->ac ? p->ac->errstr : "out of memory");
        if (p->ac) redisAsyncFree(p->ac);
        p->ac = NULL;
        pub_back_off(p);
        return;
    }
    p->connect_ms = clock_ms();
    p->ac->data = p;
    redis_link_tune(&rb->link, p->ac->c.fd);
    redisLibeventAttach(p->ac, p->base);
    redisAsyncSetConnectCallback(p->ac, pub_on_connect);
    redisAsyncSetDisconnectCallback(p->ac, pub_on_disconnect);
    /* Queued before any message, so they run first on the new connection. */
    if (rb->link.pass[0]) {
        if (rb->link.user[0])
            redisAsyncCommand(p->ac, pub_on_aux_reply, NULL, "AUTH %s %s", rb->link.user,
                              rb->link.pass);
        else redisAsyncCommand(p->ac, pub_on_aux_reply, NULL, "AUTH %s", rb->link.pass);
    }
    if (rb->link.db) redisAsyncCommand(p->ac, pub_on_aux_reply, NULL, "SELECT %d", rb->link.db);
}

int redis_pub_init(broker *b, char *err, size_t errlen) {
    rbroker *rb = b->impl;
    pub_script_sha();
    rb->pubs = calloc((size_t)b->nworkers, sizeof(*rb->pubs));
    if (rb->pubs == NULL) {
        snprintf(err, errlen, "redis broker: out of memory");
        return -1;
    }
    for (int i = 0; i < b->nworkers; i++) {
        publisher *p = &rb->pubs[i];
        p->b = b;
        p->rb = rb;
        p->wid = i + 1;
        snprintf(p->key, sizeof(p->key), "%s:pub:%s.%d", b->cfg->stream, rb->node, p->wid);
        snprintf(p->mid, sizeof(p->mid), "%s.%d.", rb->node, p->wid);
    }
    return 0;
}

void redis_pub_free(broker *b) {
    rbroker *rb = b->impl;
    free(rb->pubs);
    rb->pubs = NULL;
}

int redis_pub_attach(broker *b, int wid, struct event_base *base) {
    publisher *p = &((rbroker *)b->impl)->pubs[wid - 1];
    struct timeval watch = {0, PUB_WATCH_MS * 1000};
    p->base = base;
    p->backoff_ms = REDIS_BACKOFF_MIN_MS;
    p->retry_ev = evtimer_new(base, pub_on_retry, p);
    p->watch_ev = event_new(base, -1, EV_PERSIST, pub_on_watch, p);
    if (p->retry_ev == NULL || p->watch_ev == NULL) return -1;
    event_add(p->watch_ev, &watch);
    pub_connect(p);
    return 0;
}

void redis_pub_detach(broker *b, int wid) {
    publisher *p = &((rbroker *)b->impl)->pubs[wid - 1];
    int left = atomic_load_explicit(&p->queued, memory_order_relaxed);
    if (left) log_warn("redis: worker %d stops with %d messages not stored", wid, left);
    if (p->ac) {
        redisAsyncContext *ac = p->ac;
        p->ac = NULL;
        redisAsyncFree(ac); /* callbacks see reply NULL */
    }
    while (p->head) free(pub_pop(p));
    if (p->retry_ev) event_free(p->retry_ev);
    if (p->watch_ev) event_free(p->watch_ev);
    p->retry_ev = p->watch_ev = NULL;
}

int64_t redis_pub_publish(broker *b, int wid, uint64_t conn_id, const char *rname,
                          size_t room_len, const char *user, size_t user_len, const char *text,
                          size_t text_len) {
    publisher *p = &((rbroker *)b->impl)->pubs[wid - 1];
    if (atomic_load_explicit(&p->queued, memory_order_relaxed) >= b->cfg->publish_queue)
        return -1;
    pub_item *it = malloc(sizeof(*it) + room_len + user_len + text_len);
    if (it == NULL) return -1;
    it->next = NULL;
    it->seq = ++p->seq;
    it->conn_id = conn_id;
    it->accepted_ms = clock_ms();
    it->sent_ms = 0;
    it->room_len = (uint32_t)room_len;
    it->user_len = (uint32_t)user_len;
    it->text_len = (uint32_t)text_len;
    memcpy(it->data, rname, room_len);
    memcpy(it->data + room_len, user, user_len);
    memcpy(it->data + room_len + user_len, text, text_len);
    if (p->tail) p->tail->next = it;
    else {
        p->head = it;
        atomic_store_explicit(&p->oldest_ms, it->accepted_ms, memory_order_relaxed); /* gauge */
    }
    p->tail = it;
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_relaxed); /* a gauge */
    if (p->unsent == NULL) p->unsent = it;
    pub_flush(p);
    return (int64_t)it->seq;
}

uint64_t redis_pub_stored(broker *b, int wid, int *failing) {
    publisher *p = &((rbroker *)b->impl)->pubs[wid - 1];
    *failing = !p->up || p->holding || p->troubled;
    return p->head ? p->head->seq - 1 : p->seq;
}

int redis_pub_pending(broker *b, int wid) {
    publisher *p = &((rbroker *)b->impl)->pubs[wid - 1];
    return atomic_load_explicit(&p->queued, memory_order_relaxed);
}

void redis_pub_stats(broker *b, uint64_t *queued, int64_t *oldest_ms) {
    rbroker *rb = b->impl;
    int64_t now = clock_ms();
    *queued = 0;
    *oldest_ms = 0;
    for (int i = 0; i < b->nworkers; i++) {
        /* relaxed: gauges of another thread; each is some recent value */
        *queued += (uint64_t)atomic_load_explicit(&rb->pubs[i].queued, memory_order_relaxed);
        int64_t t = atomic_load_explicit(&rb->pubs[i].oldest_ms, memory_order_relaxed);
        if (t && now - t > *oldest_ms) *oldest_ms = now - t;
    }
}
