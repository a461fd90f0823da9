/* redis_consume — the consumer thread: reads the stream with a blocking
 * XREAD from the last id it delivered, builds one msg per entry and fans
 * it out to the workers (see redis.h).
 *
 * Every entry is fetched once: the blocking read's entries are the data.
 * Now and then (after a connect, after a full batch, soon after entries
 * came, at least once a second) the read runs in one MULTI with XINFO
 * STREAM, which tells
 *   - a gap: entries after last_id trimmed before this node read them;
 *   - a reset: the stream came back empty or younger (Redis restarted
 *     without its data, the key was deleted), so ids went backwards; or it
 *     lost only its newest entries (an older snapshot, a replica behind);
 *   - how far behind this node reads.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "redis.h"

#define READ_BLOCK_MS 500         /* XREAD BLOCK: also how soon stop is seen */
#define READ_COUNT 512            /* entries per XREAD */
#define CHECK_EVERY_MS 1000       /* XINFO at least this often */
#define CHECK_AFTER_MS 100        /* and this soon after entries came */
#define REFUSED_LOG_MS 10000      /* one line per this for refused entries */
#define RECENT 1024               /* entries remembered to tell a rollback */

/* An entry this node delivered: its id and a fingerprint of its content. */
typedef struct recent_entry {
    uint64_t ms, seq, print;
} recent_entry;

typedef struct consumer {
    broker *b;
    rbroker *rb;
    redisContext *ctx;
    int64_t checked_ms;           /* monotonic: last XINFO */
    int check;                    /* run XINFO with the next read */
    uint64_t unchecked;           /* entries read since the last XINFO */
    int64_t plain_until_ms;       /* monotonic: no MULTI before this (OOM) */
    int backoff_ms;
    int down_logged;              /* a streak of failures was logged */
    uint64_t refused_unlogged;    /* entries refused since the last line */
    int64_t refused_logged_ms;
    recent_entry recent[RECENT];  /* the last RECENT entries read, a ring */
    unsigned nrecent;
} consumer;

static void mark(consumer *c);
static redisReply *cmd(consumer *c, const char *fmt, ...);

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void set_up(consumer *c, int up) {
    rbroker *rb = c->rb;
    if (atomic_load_explicit(&rb->up, memory_order_relaxed) == up) return;
    atomic_store_explicit(&rb->since_ms, wall_ms(), memory_order_relaxed); /* a gauge */
    atomic_store_explicit(&rb->up, up, memory_order_relaxed);
}

static void sleep_ms(broker *b, int ms) {
    for (; ms > 0 && !atomic_load_explicit(&b->stop, memory_order_acquire); ms -= 50) {
        struct timespec ts = {0, (ms < 50 ? ms : 50) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static redisReply *cmd(consumer *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c->ctx, fmt, ap);
    va_end(ap);
    return r;
}

static void disconnect(consumer *c) {
    if (c->ctx) redisFree(c->ctx);
    c->ctx = NULL;
    set_up(c, 0);
}

/* 1 if stream id a is before b ("ms-seq"). */
static int id_before(const char *a, const char *b) {
    uint64_t ams = 0, aseq = 0, bms = 0, bseq = 0;
    sscanf(a, "%" SCNu64 "-%" SCNu64, &ams, &aseq);
    sscanf(b, "%" SCNu64 "-%" SCNu64, &bms, &bseq);
    return ams < bms || (ams == bms && aseq < bseq);
}

static redisReply *field(redisReply *r, const char *key) {
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, key) == 0)
            return r->element[i + 1];
    return NULL;
}

static long long field_int(redisReply *r, const char *key, int *found) {
    redisReply *v = field(r, key);
    *found = v && v->type == REDIS_REPLY_INTEGER;
    return *found ? v->integer : 0;
}

/* FNV-1a of an entry's mid (publisher and sequence), or of its text when
 * it has none: what tells an entry from another that got the same id. */
static uint64_t fingerprint(redisReply *fields) {
    redisReply *v = NULL;
    for (size_t i = 0; fields->type == REDIS_REPLY_ARRAY && i + 1 < fields->elements; i += 2) {
        redisReply *k = fields->element[i];
        if (k->type != REDIS_REPLY_STRING || fields->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "mid") == 0) v = fields->element[i + 1];
        else if (strcmp(k->str, "text") == 0 && v == NULL) v = fields->element[i + 1];
    }
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; v && i < v->len; i++) h = (h ^ (uint8_t)v->str[i]) * 1099511628211ULL;
    return h;
}

/* 1 if this node read the entry `e` (id and content), among the last
 * RECENT. */
static int read_before(consumer *c, redisReply *e) {
    uint64_t ms = 0, seq = 0;
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING ||
        sscanf(e->element[0]->str, "%" SCNu64 "-%" SCNu64, &ms, &seq) != 2)
        return 0;
    uint64_t print = fingerprint(e->element[1]);
    unsigned n = c->nrecent < RECENT ? c->nrecent : RECENT;
    for (unsigned i = 0; i < n; i++) {
        const recent_entry *r = &c->recent[(c->nrecent - 1 - i) % RECENT];
        if (r->ms == ms && r->seq == seq) return r->print == print;
    }
    return 0;
}

/* The stream is not what this node read before. Messages of the old
 * stream this node had not read are gone; how many is not known. */
static void stream_reset(consumer *c, const char *why) {
    log_warn("redis: %s %s (Redis lost its data?); messages after %s that this node had not "
             "read are lost; reading the new stream",
             c->b->cfg->stream, why, c->rb->last_id);
    atomic_fetch_add_explicit(&c->b->resets, 1, memory_order_relaxed); /* a counter */
}

/* Compares XINFO STREAM (info; an error when there is no stream) with
 * what this node delivered, `read` being the entries of the read that came
 * with it. Returns 1 if that read is stale: the stream was reset and
 * reading starts at its beginning.
 *
 * Gaps: ids are not dense, so the consumer counts: `pos` is how many
 * entries the stream had ever added up to last_id, as far as this node
 * knows. XINFO reports entries-added (E) and length (L). When the read that
 * came with it returned everything after last_id (n < READ_COUNT entries),
 * last_id is entry E - n exactly, and anything between pos and that went
 * unread. After a full read, trimming removes the oldest first, so the
 * first entry returned is number E - L + 1 when E - L > pos. */
static int check_stream(consumer *c, redisReply *info, size_t read) {
    broker *b = c->b;
    rbroker *rb = c->rb;
    c->checked_ms = clock_ms();
    c->check = 0;
    c->unchecked = 0;
    int delivered = strcmp(rb->last_id, "0-0") != 0;
    redisReply *last = info->type == REDIS_REPLY_ARRAY ? field(info, "last-generated-id") : NULL;
    int gone = info->type == REDIS_REPLY_ERROR && strstr(info->str, "no such key");
    int back = last && last->type == REDIS_REPLY_STRING && id_before(last->str, rb->last_id);
    if (delivered && back && read_before(c, field(info, "last-entry"))) {
        /* It lost only its newest entries (a replica behind was promoted,
         * Redis restarted from an older snapshot): what is left was read
         * here, so go on after it rather than deliver it all again. */
        redisReply *e = field(info, "last-entry");
        stream_reset(c, "lost its newest entries");
        snprintf(rb->last_id, sizeof(rb->last_id), "%s", e->element[0]->str);
        int found;
        rb->pos = (uint64_t)field_int(info, "entries-added", &found);
        mark(c);
        return 1;
    }
    if (delivered && (gone || back)) {
        /* Gone, or made anew with older ids (a Redis elsewhere whose clock
         * is behind): all of it is new here. */
        stream_reset(c, gone ? "is gone" : "went back to older ids");
        snprintf(rb->last_id, sizeof(rb->last_id), "0-0");
        rb->pos = 0;
        atomic_store_explicit(&rb->read_lag, 0, memory_order_relaxed); /* a gauge */
        mark(c);
        return 1;
    }
    int has_added, has_len;
    long long added = field_int(info, "entries-added", &has_added);
    long long len = field_int(info, "length", &has_len);
    if (!rb->counted || !has_added || !has_len) return 0; /* no stream, or Redis < 7 */
    if ((uint64_t)added < rb->pos) {
        /* Younger than what this node read, yet with newer ids: made anew
         * (Redis restarted empty while this node was away). Reading goes
         * on after last_id; the count starts over with this read. */
        stream_reset(c, "was recreated");
        rb->pos = (uint64_t)added > read ? (uint64_t)added - read : 0;
    }
    uint64_t trimmed = (uint64_t)(added - len);
    uint64_t at = read < READ_COUNT ? (uint64_t)added - read : trimmed > rb->pos ? trimmed : rb->pos;
    if (at > rb->pos) {
        log_warn("redis: gap: %s lost entries after the last delivered id %s before this node "
                 "read them; %" PRIu64 " messages after it were lost unread (trimmed: "
                 "stream_maxlen too small for the load?)",
                 b->cfg->stream, rb->last_id, at - rb->pos);
        atomic_fetch_add_explicit(&b->lost, at - rb->pos, memory_order_relaxed); /* a counter */
        rb->pos = at;
    }
    uint64_t lag = (uint64_t)added - rb->pos;
    atomic_store_explicit(&rb->read_lag, lag > read ? lag - read : 0,
                          memory_order_relaxed); /* a gauge */
    return 0;
}

static void consume_entry(consumer *c, redisReply *e) {
    broker *b = c->b;
    rbroker *rb = c->rb;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    const char *id = e->element[0]->str;
    snprintf(rb->last_id, sizeof(rb->last_id), "%s", id);
    rb->pos++;
    recent_entry *rec = &c->recent[c->nrecent++ % RECENT];
    uint64_t id_ms = 0, id_seq = 0;
    sscanf(id, "%" SCNu64 "-%" SCNu64, &id_ms, &id_seq);
    rec->ms = id_ms;
    rec->seq = id_seq;
    rec->print = fingerprint(e->element[1]);
    redisReply *f = e->element[1];
    redisReply *rm = NULL, *user = NULL, *text = NULL, *kind = NULL, *mid = NULL;
    int64_t ts = 0;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
        if (strcmp(k->str, "room") == 0) rm = v;
        else if (strcmp(k->str, "user") == 0) user = v;
        else if (strcmp(k->str, "text") == 0) text = v;
        else if (strcmp(k->str, "kind") == 0) kind = v;
        else if (strcmp(k->str, "mid") == 0) mid = v;
        else if (strcmp(k->str, "ts") == 0) ts = strtoll(v->str, NULL, 10);
    }
    /* A presence change: kind j or l, room and user. */
    int mk = MSG_CHAT;
    if (kind) mk = strcmp(kind->str, "j") == 0 ? MSG_JOIN : strcmp(kind->str, "l") == 0 ? MSG_LEAVE : -1;
    /* Written by a node with a larger max_message, or by anything else that
     * can write the stream: this node's clients were promised no more. */
    const config *live = config_current(); /* max_message reloads; b->cfg does not */
    int big = text && (int64_t)text->len > (live ? live : b->cfg)->max_message;
    if (!rm || !user || (mk == MSG_CHAT && !text) || mk < 0 || big) {
        if (big) atomic_fetch_add_explicit(&b->oversize, 1, memory_order_relaxed); /* counter */
        c->refused_unlogged++;
        int64_t now = clock_ms();
        if (now - c->refused_logged_ms >= REFUSED_LOG_MS) { /* anyone may write the stream */
            if (big)
                log_warn("redis: entry %s of %zu bytes is over max_message; %" PRIu64
                         " entries refused since the last such line", id, text->len,
                         c->refused_unlogged);
            else
                log_warn("redis: entry %s is neither a message nor a presence change; %" PRIu64
                         " entries refused since the last such line", id, c->refused_unlogged);
            c->refused_logged_ms = now;
            c->refused_unlogged = 0;
        }
        return;
    }
    if (rm->len > UINT16_MAX || user->len > UINT16_MAX) return;
    msg *m = msg_new(mk, rm->str, rm->len, user->str, user->len, text ? text->str : "",
                     text ? text->len : 0, id_ms, id_seq, ts);
    if (m == NULL) {
        log_error("redis: out of memory for entry %s", id);
        return;
    }
    /* This node's own: "<node>.<worker>.<seq>", acknowledged to its sender. */
    size_t nl = strlen(rb->node);
    if (mid && mid->len > nl + 1 && memcmp(mid->str, rb->node, nl) == 0 && mid->str[nl] == '.') {
        unsigned wid = 0;
        uint64_t seq = 0;
        if (sscanf(mid->str + nl + 1, "%u.%" SCNu64, &wid, &seq) == 2 && wid >= 1 &&
            wid <= (unsigned)b->nworkers) {
            m->origin_wid = (uint16_t)wid;
            m->origin_seq = seq;
        }
    }
    broker_fanout(b, m);
}

/* Tells every worker where reading (re)starts and in which epoch: what
 * they remember from another epoch is forgotten, and joins replay up to
 * here from Redis. */
static void mark(consumer *c) {
    rbroker *rb = c->rb;
    msg *m = msg_raw(MSG_MARK, "", 0, "", 0, "", 0);
    if (m == NULL) return;
    sscanf(rb->last_id, "%" SCNu64 "-%" SCNu64, &m->id_ms, &m->id_seq);
    m->origin_seq = rb->epoch;
    broker_fanout(c->b, m);
    broker_flush_wakes(c->b);
}

/* An epoch never made before: random, 16 hex digits (never all zero). */
static void new_epoch(char out[17]) {
    uint64_t e;
    if (getrandom(&e, sizeof(e), 0) != sizeof(e)) e = (uint64_t)wall_ms() * 0x9E3779B97F4A7C15ULL;
    snprintf(out, 17, "%016" PRIx64, e | 1);
}

/* The epoch Redis holds (set to a new one when it has none).
 * A change means Redis lost the data the old one named. */
static void epoch_seen(consumer *c, redisReply *r) {
    rbroker *rb = c->rb;
    uint64_t e = 0;
    if (r && r->type == REDIS_REPLY_STRING) e = strtoull(r->str, NULL, 16);
    if (e == 0) { /* none (yet): the next publish sets it; ask again soon */
        char fresh[17];
        new_epoch(fresh);
        redisReply *set = cmd(c, "SET %s:epoch %s NX", c->b->cfg->stream, fresh);
        if (set) freeReplyObject(set);
        c->check = 1;
        return;
    }
    if (e == rb->epoch) return;
    if (rb->epoch) log_warn("redis: the epoch changed (Redis lost its data?): clients cannot recover "
                            "what they missed before it");
    rb->epoch = e;
    mark(c);
}

/* Removes the presence of holders (workers of any node) whose heartbeat
 * stopped: their members leave, in the order, within presence_ttl. Any
 * node may do it; the script does it once. */
static const char sweep_script[] =
    "local out = 0\n"
    "for _, h in ipairs(redis.call('SMEMBERS', KEYS[1])) do\n"
    "  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. h) == 0 then\n"
    "    local held = ARGV[1] .. ':held:' .. h\n"
    "    for _, ru in ipairs(redis.call('SMEMBERS', held)) do\n"
    "      local nl = string.find(ru, '\\n', 1, true)\n"
    "      local room, user = string.sub(ru, 1, nl - 1), string.sub(ru, nl + 1)\n"
    "      local pk = ARGV[1] .. ':presence:' .. room\n"
    "      if redis.call('HINCRBY', pk, user, -1) <= 0 then\n"
    "        local told = redis.call('HLEN', pk) <= tonumber(ARGV[3])\n"
    "        redis.call('HDEL', pk, user)\n"
    "        if not told then\n"
    "        elseif ARGV[2] ~= '0' then\n"
    "          redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'kind', 'l', 'room', room,\n"
    "                     'user', user, 'mid', 'sweep')\n"
    "        else\n"
    "          redis.call('XADD', KEYS[2], '*', 'kind', 'l', 'room', room, 'user', user,\n"
    "                     'mid', 'sweep')\n"
    "        end\n"
    "      end\n"
    "      out = out + 1\n"
    "    end\n"
    "    redis.call('DEL', held)\n"
    "    redis.call('SREM', KEYS[1], h)\n"
    "  end\n"
    "end\n"
    "return out\n";

static void sweep(consumer *c) {
    const config *cfg = c->b->cfg;
    int64_t now = clock_ms();
    if (now - c->rb->swept_ms < cfg->presence_ttl_ms / 4) return; /* see redis.h */
    c->rb->swept_ms = now;
    redisReply *r = cmd(c, "EVAL %s 2 %s:holders %s %s %lld %d", sweep_script, cfg->stream,
                        cfg->stream, cfg->stream, (long long)cfg->stream_maxlen, cfg->presence_max);
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        log_info("redis: presence of %lld members of silent nodes removed", r->integer);
    if (r) freeReplyObject(r);
}

/* Delivers the entries of an XREAD reply; returns how many there were. */
static size_t consume_reply(consumer *c, redisReply *xr) {
    size_t n = 0;
    for (size_t s = 0; xr->type == REDIS_REPLY_ARRAY && s < xr->elements; s++) {
        redisReply *stream = xr->element[s];
        if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2 ||
            stream->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        redisReply *entries = stream->element[1];
        for (size_t i = 0; i < entries->elements; i++) consume_entry(c, entries->element[i]);
        n += entries->elements;
    }
    broker_flush_wakes(c->b);
    return n;
}

/* A lasting error (the key holds another type, no rights, bad password) is
 * the operator's to fix: say so plainly, once, and report it on /readyz. */
static void lasting_problem(consumer *c, const char *what, const char *err) {
    char problem[192];
    snprintf(problem, sizeof(problem), "Redis refuses to %s: %s (check %s)", what, err,
             strncmp(err, "WRONGTYPE", 9) == 0 ? "stream" : "redis_url and the Redis user");
    if (redis_link_set_problem(&c->rb->link, REDIS_PROBLEM_READ, problem)) log_error("redis: %s", problem);
}

/* Connects, authenticates, and fixes the start id on first contact.
 * Returns 0, or -1 (logged once per streak by the caller). */
static int consumer_connect(consumer *c, char *err, size_t errlen) {
    broker *b = c->b;
    rbroker *rb = c->rb;
    redis_link *l = &rb->link;
    char ip[64];
    /* Resolved again at every connect: a failover may move the name. While
     * the resolver fails, the last address it gave is still worth a try. */
    if (redis_link_resolve(l, err, errlen) < 0 && redis_link_ip(l, ip, sizeof(ip)) < 0) return -1;
    redis_link_ip(l, ip, sizeof(ip));
    int t = l->timeout_ms;
    struct timeval ct = {t / 1000, (t % 1000) * 1000};
    c->ctx = redisConnectWithTimeout(ip, l->port, ct);
    if (c->ctx == NULL || c->ctx->err) {
        snprintf(err, errlen, "cannot reach %s:%d: %s", l->host, l->port,
                 c->ctx ? c->ctx->errstr : "out of memory");
        goto fail;
    }
    redis_link_tune(l, c->ctx->fd);
    int rt = READ_BLOCK_MS + t; /* a blocking read is answered within its BLOCK */
    struct timeval rtv = {rt / 1000, (rt % 1000) * 1000};
    redisSetTimeout(c->ctx, rtv);
    redisReply *r = NULL;
    if (l->pass[0]) {
        r = l->user[0] ? cmd(c, "AUTH %s %s", l->user, l->pass) : cmd(c, "AUTH %s", l->pass);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    if (l->db) {
        r = cmd(c, "SELECT %d", l->db);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    if (rb->last_id[0] == '\0') {
        /* First contact: the epoch (set if there is none), then start after
         * the newest entry; no replay. */
        char fresh[17];
        new_epoch(fresh);
        r = cmd(c, "SET %s:epoch %s NX", b->cfg->stream, fresh);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
        r = cmd(c, "GET %s:epoch", b->cfg->stream);
        if (r == NULL || r->type != REDIS_REPLY_STRING) goto fail_reply;
        uint64_t epoch = strtoull(r->str, NULL, 16);
        freeReplyObject(r);
        r = cmd(c, "XINFO STREAM %s", b->cfg->stream);
        if (r == NULL) goto fail_reply;
        if (r->type == REDIS_REPLY_ARRAY) {
            redisReply *last = field(r, "last-generated-id");
            if (last && last->type == REDIS_REPLY_STRING)
                snprintf(rb->last_id, sizeof(rb->last_id), "%s", last->str);
            rb->pos = (uint64_t)field_int(r, "entries-added", &rb->counted);
        } else if (r->type == REDIS_REPLY_ERROR && strstr(r->str, "no such key")) {
            rb->counted = 1; /* no stream yet: counting starts at 0 */
        } else {
            /* LOADING, NOPERM, WRONGTYPE, ...: where the stream ends is not
             * known, and 0-0 would replay all of it. Try again later. */
            goto fail_reply;
        }
        freeReplyObject(r);
        if (rb->last_id[0] == '\0') snprintf(rb->last_id, sizeof(rb->last_id), "0-0");
        if (!rb->counted) log_warn("redis: server older than 7.0: trimmed gaps are not detected");
        rb->epoch = epoch;
        mark(c); /* the workers know the epoch and where reading starts */
        log_info("redis: reading %s after %s", b->cfg->stream, rb->last_id);
        /* release: publishers may send now; entries they add come after */
        atomic_store_explicit(&rb->started, 1, memory_order_release);
    }
    c->check = 1; /* `up` waits for an answer: a frozen Redis still accepts */
    return 0;
fail_reply:
    if (r && r->type == REDIS_REPLY_ERROR) {
        if (redis_error_lasting(r->str)) lasting_problem(c, "let chatd in", r->str);
        snprintf(err, errlen, "%s", r->str);
    } else {
        snprintf(err, errlen, "%s", c->ctx->errstr[0] ? c->ctx->errstr : "bad reply");
    }
    if (r) freeReplyObject(r);
fail:
    disconnect(c);
    return -1;
}

#define READ_LOST -1               /* read_once: the connection failed */
#define READ_REFUSED -2            /* read_once: Redis answered with an error */

/* One read: with the XINFO check when due. Returns the entries delivered,
 * READ_LOST or READ_REFUSED (logged, backed off). */
static long read_once(consumer *c) {
    broker *b = c->b;
    rbroker *rb = c->rb;
    redisReply *r = NULL, *xr;
    size_t n = 0;
    int64_t since = clock_ms() - c->checked_ms;
    /* A gap is seen soon after the entries around it: a read that had
     * entries is followed by a check within CHECK_AFTER_MS. */
    int due = c->check || since >= CHECK_EVERY_MS || (c->unchecked && since >= CHECK_AFTER_MS);
    if (due && clock_ms() >= c->plain_until_ms) {
        redisAppendCommand(c->ctx, "MULTI");
        redisAppendCommand(c->ctx, "XINFO STREAM %s", b->cfg->stream);
        redisAppendCommand(c->ctx, "GET %s:epoch", b->cfg->stream);
        redisAppendCommand(c->ctx, "XREAD COUNT %d STREAMS %s %s", READ_COUNT, b->cfg->stream,
                           rb->last_id);
        redisAppendCommand(c->ctx, "EXEC");
        redisReply *first_error = NULL; /* a refused MULTI says why EXEC fails */
        for (int i = 0; i < 5; i++) { /* OK, QUEUED x 3, then the result */
            if (r && r->type == REDIS_REPLY_ERROR && first_error == NULL) first_error = r;
            else if (r) freeReplyObject(r);
            if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK) {
                if (first_error) freeReplyObject(first_error);
                return READ_LOST;
            }
        }
        if (first_error && r->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            r = first_error;
        } else if (first_error) {
            freeReplyObject(first_error);
        }
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "OOM", 3) == 0) {
            /* Out of memory, Redis refuses whatever is queued in a MULTI,
             * reads too. Read plainly meanwhile; the check waits. */
            freeReplyObject(r);
            c->plain_until_ms = clock_ms() + CHECK_EVERY_MS;
            return 0;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
            /* The epoch first: entries read after a change belong to it. */
            epoch_seen(c, r->element[1]);
            xr = r->element[2];
            size_t got = xr->type == REDIS_REPLY_ARRAY && xr->elements == 1 &&
                                 xr->element[0]->elements == 2
                             ? xr->element[0]->element[1]->elements
                             : 0;
            if (check_stream(c, r->element[0], got)) {
                freeReplyObject(r);
                return 0;
            }
            if (xr->type != REDIS_REPLY_ERROR) {
                n = consume_reply(c, xr);
                if (n == READ_COUNT) c->check = 1; /* behind: keep an eye on trimming */
                freeReplyObject(r);
                return (long)n;
            }
            r->element[2] = NULL; /* report the read's error below */
            freeReplyObject(r);
            r = xr;
        }
    } else {
        int64_t block = c->unchecked && !due ? CHECK_AFTER_MS - since : READ_BLOCK_MS;
        r = cmd(c, "XREAD COUNT %d BLOCK %lld STREAMS %s %s", READ_COUNT,
                (long long)(block > 0 ? block : 1), b->cfg->stream, rb->last_id);
        if (r == NULL) return READ_LOST;
        if (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_ARRAY) {
            n = consume_reply(c, r);
            c->unchecked += n;
            if (n == READ_COUNT) c->check = 1;
            if (n < READ_COUNT) atomic_store_explicit(&rb->read_lag, 0, memory_order_relaxed);
            freeReplyObject(r);
            return (long)n;
        }
    }
    /* An error reply: LOADING passes, WRONGTYPE and NOPERM stay. */
    const char *e = r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply";
    if (redis_error_lasting(e)) lasting_problem(c, "read the stream", e);
    else if (!c->down_logged) log_warn("redis: read refused: %s; retrying", e);
    c->down_logged = 1;
    set_up(c, 0);
    freeReplyObject(r);
    sleep_ms(b, c->backoff_ms);
    c->backoff_ms = redis_backoff(c->backoff_ms);
    c->check = 1;
    return READ_REFUSED;
}

void *redis_consume_run(void *arg) {
    broker *b = arg;
    consumer *c = calloc(1, sizeof(*c)); /* its ring of recent entries is big */
    char err[256];
    log_thread("broker");
    if (c == NULL) {
        log_error("redis: consumer: out of memory");
        return NULL;
    }
    c->b = b;
    c->rb = b->impl;
    c->backoff_ms = REDIS_BACKOFF_MIN_MS;
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) { /* see broker_stop */
        long n = READ_LOST;
        if (c->ctx == NULL && consumer_connect(c, err, sizeof(err)) < 0) {
            if (!c->down_logged) log_warn("redis: consumer: %s; retrying with backoff", err);
        } else if ((n = read_once(c)) == READ_LOST) {
            /* A read timeout reads "Resource temporarily unavailable". */
            if (!c->down_logged)
                log_warn("redis: consumer lost its connection: %s",
                         c->ctx->err == REDIS_ERR_IO && errno == EAGAIN
                             ? "no answer within redis_timeout" : c->ctx->errstr);
            disconnect(c);
        }
        if (n == READ_LOST) { /* once per streak, backing off: a peer may accept and close */
            c->down_logged = 1;
            sleep_ms(b, c->backoff_ms);
            c->backoff_ms = redis_backoff(c->backoff_ms);
        } else if (n != READ_REFUSED) { /* Redis serves us */
            if (c->down_logged) {
                log_info("redis: reading %s again, after %s", b->cfg->stream, c->rb->last_id);
                atomic_fetch_add_explicit(&b->reconnects, 1, memory_order_relaxed); /* counter */
            }
            if (redis_link_set_problem(&c->rb->link, REDIS_PROBLEM_READ, NULL))
                log_info("redis: the consumer's problem is resolved");
            c->down_logged = 0;
            c->backoff_ms = REDIS_BACKOFF_MIN_MS;
            set_up(c, 1);
            sweep(c);
        }
    }
    disconnect(c);
    free(c);
    return NULL;
}
