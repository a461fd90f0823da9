/* redis_consume — the consumer thread: reads every shard's stream with a
 * blocking XREAD from the last id it delivered from it, builds one msg per
 * entry and fans it out to the workers (see redis.h).
 *
 * One connection per shard (in a Cluster each shard's keys live in a slot
 * of their own, and one XREAD cannot name two slots), all driven by this
 * one thread: each shard's reader writes its request, poll() waits for the
 * first answer of any, and the reader handles its replies once they are
 * all in. A shard's order is its stream's; shards need no common one.
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
 *
 * With redis_wait_replicas = N, entries read are delivered only once N
 * replicas have them: the reader writes a key and WAITs for N replicas,
 * which (replication being one ordered stream) covers every entry it read
 * before. An entry a failover loses was then never delivered, and its
 * publisher, whose own WAIT failed too, stores it again.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "log.h"
#include "redis.h"

#define READ_BLOCK_MS 500         /* XREAD BLOCK */
#define READ_COUNT 512            /* entries per XREAD */
#define CHECK_EVERY_MS 1000       /* XINFO at least this often */
#define CHECK_AFTER_MS 100        /* and this soon after entries came */
#define REFUSED_LOG_MS 10000      /* one line per this for refused entries */
#define RECENT 1024               /* entries remembered to tell a rollback */
#define POLL_MS 50                /* how soon stop and retries are seen */
#define ROUTE_CHECK_MS 1000       /* sentinels, cluster: ask where Redis is this often */
#define RESET_UNDO_MS 30000       /* a reset may be undone on another server this long */

/* An entry this node delivered: its id and a fingerprint of its content. */
typedef struct recent_entry {
    uint64_t ms, seq, print;
} recent_entry;

/* What a reader has asked and waits for. */
enum { REQ_NONE = 0, REQ_CONNECT, REQ_HELLO, REQ_PLAIN, REQ_CHECKED, REQ_WAIT };

struct consumer;

/* One shard's reader. */
typedef struct reader {
    struct consumer *c;
    int k;                        /* the shard */
    const char *key;              /* its stream */
    redisContext *ctx;
    char host[256];               /* where ctx goes */
    int port;
    int asking;                   /* an ASK redirect: ASKING before each read */
    char last_id[64];             /* last delivered entry id, "" until fixed */
    uint64_t pos;                 /* entries-added count at last_id (gap check) */
    uint64_t epoch;               /* as the workers were last told */
    int counted;                  /* Redis reports entries-added (7.0 and later) */
    int up;                       /* Redis answers this reader */
    int64_t checked_ms;           /* monotonic: last XINFO */
    int check;                    /* run XINFO with the next read */
    uint64_t unchecked;           /* entries read since the last XINFO */
    int64_t plain_until_ms;       /* monotonic: no MULTI before this (OOM) */
    int64_t swept_ms;             /* monotonic: last presence sweep */
    int backoff_ms;
    int64_t retry_ms;             /* monotonic: no connect before this */
    int down_logged;              /* a streak of failures was logged */
    int loss_declared;            /* a reconnect found delivered entries gone */
    int pos_unknown;              /* pos is learnt at the next check */
    char reset_from[64];          /* last_id before a reset, the server it was */
    char reset_host[256];         /*   seen on, and when: undone if a failover */
    int reset_port;               /*   shows that server was not the one to */
    int64_t reset_ms;             /*   read (see hello_done) */
    int req;                      /* REQ_*: in flight */
    int want, got;                /* replies expected, replies in */
    redisReply *reply[8];
    int64_t sent_ms;
    int64_t block_ms;             /* the read may block this long */
    redisReply *held;             /* REQ_WAIT: an XREAD reply not delivered yet */
    uint64_t lag;                 /* entries after last_id at the last check */
    recent_entry recent[RECENT];  /* the last RECENT entries read, a ring */
    unsigned nrecent;
} reader;

typedef struct consumer {
    broker *b;
    rbroker *rb;
    reader *rd;                   /* one per shard */
    int n;
    int64_t refresh_ms;           /* monotonic: no route refresh before this */
    int64_t routed_ms;            /* monotonic: the last route refresh */
    int refresh_backoff_ms;
    uint64_t refused_unlogged;    /* entries refused since the last line */
    int64_t refused_logged_ms;
} consumer;

static void mark(reader *rd);
static void declare_loss(reader *rd);
static int flush_out(reader *rd);

static int64_t wall_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* A reader is up while Redis answers it; the node reads when all are. */
static void set_up(reader *rd, int up) {
    rbroker *rb = rd->c->rb;
    if (rd->up == up) return;
    rd->up = up;
    atomic_store_explicit(&rb->up[rd->k], (uint8_t)up, memory_order_relaxed); /* a gauge */
    int before = atomic_load_explicit(&rb->nup, memory_order_relaxed);
    int now = before + (up ? 1 : -1);
    /* relaxed: gauges, written by this thread only */
    atomic_store_explicit(&rb->nup, now, memory_order_relaxed);
    if ((before == rd->c->n) != (now == rd->c->n))
        atomic_store_explicit(&rb->since_ms, wall_ms(), memory_order_relaxed);
}

static redisReply *cmd(reader *rd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rd->ctx, fmt, ap);
    va_end(ap);
    return r;
}

static void drop_replies(reader *rd) {
    for (int i = 0; i < rd->got; i++) freeReplyObject(rd->reply[i]);
    rd->got = rd->want = 0;
    rd->req = REQ_NONE;
}

static void disconnect(reader *rd) {
    drop_replies(rd);
    if (rd->held) freeReplyObject(rd->held);
    rd->held = NULL;
    if (rd->ctx) redisFree(rd->ctx);
    rd->ctx = NULL;
    rd->asking = 0;
    set_up(rd, 0);
}

/* After a failure: the next connect (or, after a refusal, the next
 * request) waits, backing off. */
static void back_off(reader *rd) {
    rd->retry_ms = clock_ms() + rd->backoff_ms;
    rd->backoff_ms = redis_backoff(rd->backoff_ms);
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
 * RECENT of the shard. */
static int read_before(reader *rd, redisReply *e) {
    uint64_t ms = 0, seq = 0;
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING ||
        sscanf(e->element[0]->str, "%" SCNu64 "-%" SCNu64, &ms, &seq) != 2)
        return 0;
    uint64_t print = fingerprint(e->element[1]);
    unsigned n = rd->nrecent < RECENT ? rd->nrecent : RECENT;
    for (unsigned i = 0; i < n; i++) {
        const recent_entry *r = &rd->recent[(rd->nrecent - 1 - i) % RECENT];
        if (r->ms == ms && r->seq == seq) return r->print == print;
    }
    return 0;
}

/* The stream is not what this node read before. Messages of the old
 * stream this node had not read are gone; how many is not known. */
static void stream_reset(reader *rd, const char *why) {
    log_warn("redis: %s %s (Redis lost its data?); messages after %s that this node had not "
             "read are lost; reading the new stream",
             rd->key, why, rd->last_id);
    atomic_fetch_add_explicit(&rd->c->b->resets, 1, memory_order_relaxed); /* a counter */
}

/* Compares XINFO STREAM (info; an error when there is no stream) with
 * what this node delivered, `read` being the entries of the read that came
 * with it. Returns 1 if that read is stale: the stream was reset and
 * reading starts again.
 *
 * Gaps: ids are not dense, so the reader counts: `pos` is how many
 * entries the stream had ever added up to last_id, as far as this node
 * knows. XINFO reports entries-added (E) and length (L). When the read that
 * came with it returned everything after last_id (n < READ_COUNT entries),
 * last_id is entry E - n exactly, and anything between pos and that went
 * unread. After a full read, trimming removes the oldest first, so the
 * first entry returned is number E - L + 1 when E - L > pos. */
static int check_stream(reader *rd, redisReply *info, size_t read) {
    broker *b = rd->c->b;
    rd->checked_ms = clock_ms();
    rd->check = 0;
    rd->unchecked = 0;
    int delivered = strcmp(rd->last_id, "0-0") != 0, declared = rd->loss_declared;
    rd->loss_declared = 0;
    redisReply *last = info->type == REDIS_REPLY_ARRAY ? field(info, "last-generated-id") : NULL;
    int gone = info->type == REDIS_REPLY_ERROR && strstr(info->str, "no such key");
    int back = last && last->type == REDIS_REPLY_STRING && id_before(last->str, rd->last_id);
    if (delivered && back && read_before(rd, field(info, "last-entry"))) {
        /* It lost only its newest entries (a replica behind was promoted,
         * Redis restarted from an older snapshot): what is left was read
         * here, so go on after it rather than deliver it all again. */
        redisReply *e = field(info, "last-entry");
        if (!declared) declare_loss(rd); /* unless the reconnect did */
        snprintf(rd->last_id, sizeof(rd->last_id), "%s", e->element[0]->str);
        int found;
        rd->pos = (uint64_t)field_int(info, "entries-added", &found);
        mark(rd);
        return 1;
    }
    if (delivered && (gone || back)) {
        /* Gone, or made anew with older ids (a Redis elsewhere whose clock
         * is behind): all of it is new here. */
        stream_reset(rd, gone ? "is gone" : "went back to older ids");
        snprintf(rd->reset_from, sizeof(rd->reset_from), "%s", rd->last_id);
        snprintf(rd->reset_host, sizeof(rd->reset_host), "%s", rd->host);
        rd->reset_port = rd->port;
        rd->reset_ms = clock_ms();
        snprintf(rd->last_id, sizeof(rd->last_id), "0-0");
        rd->pos = 0;
        rd->lag = 0;
        mark(rd);
        return 1;
    }
    int has_added, has_len;
    long long added = field_int(info, "entries-added", &has_added);
    long long len = field_int(info, "length", &has_len);
    if (!rd->counted || !has_added || !has_len) return 0; /* no stream, or Redis < 7 */
    if (rd->pos_unknown) { /* count from here; a full read cannot tell where it began */
        if (read < READ_COUNT) rd->pos = (uint64_t)added - read;
        rd->pos_unknown = read == READ_COUNT;
        return 0;
    }
    if ((uint64_t)added < rd->pos) {
        /* Younger than what this node read, yet with newer ids: made anew
         * (Redis restarted empty while this node was away, a replica
         * behind was promoted). Reading goes on after last_id; the count
         * starts over with this read. */
        stream_reset(rd, "was recreated");
        rd->pos = (uint64_t)added > read ? (uint64_t)added - read : 0;
    }
    uint64_t trimmed = (uint64_t)(added - len);
    uint64_t at = read < READ_COUNT ? (uint64_t)added - read : trimmed > rd->pos ? trimmed : rd->pos;
    if (at > rd->pos) {
        log_warn("redis: gap: %s lost entries after the last delivered id %s before this node "
                 "read them; %" PRIu64 " messages after it were lost unread (trimmed: "
                 "stream_maxlen too small for the load?)",
                 rd->key, rd->last_id, at - rd->pos);
        atomic_fetch_add_explicit(&b->lost, at - rd->pos, memory_order_relaxed); /* a counter */
        rd->pos = at;
    }
    uint64_t lag = (uint64_t)added - rd->pos;
    rd->lag = lag > read ? lag - read : 0;
    return 0;
}

static void consume_entry(reader *rd, redisReply *e) {
    consumer *c = rd->c;
    broker *b = c->b;
    rbroker *rb = c->rb;
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY)
        return;
    const char *id = e->element[0]->str;
    snprintf(rd->last_id, sizeof(rd->last_id), "%s", id);
    rd->pos++;
    recent_entry *rec = &rd->recent[rd->nrecent++ % RECENT];
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
     * can write the stream: this node's clients were promised no more. A
     * room of another shard in this stream (a node with another `shards`)
     * would be out of its order: refused too. */
    const config *live = config_current(); /* max_message reloads; b->cfg does not */
    int big = text && (int64_t)text->len > (live ? live : b->cfg)->max_message;
    int astray = rm && broker_room_shard(b, rm->str, rm->len) != rd->k;
    if (!rm || !user || (mk == MSG_CHAT && !text) || mk < 0 || big || astray) {
        if (big) atomic_fetch_add_explicit(&b->oversize, 1, memory_order_relaxed); /* counter */
        c->refused_unlogged++;
        int64_t now = clock_ms();
        if (now - c->refused_logged_ms >= REFUSED_LOG_MS) { /* anyone may write the stream */
            if (big)
                log_warn("redis: entry %s of %zu bytes is over max_message; %" PRIu64
                         " entries refused since the last such line", id, text->len,
                         c->refused_unlogged);
            else if (astray)
                log_warn("redis: entry %s of %s is of a room of another shard (do all nodes "
                         "have the same `shards`?); %" PRIu64 " entries refused since the last "
                         "such line", id, rd->key, c->refused_unlogged);
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
    m->shard = (uint8_t)rd->k;
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

/* Tells every worker where reading of the shard (re)starts and in which
 * epoch: what they remember of it from another epoch is forgotten, and
 * joins replay up to here from Redis. */
static void mark(reader *rd) {
    msg *m = msg_raw(MSG_MARK, "", 0, "", 0, "", 0);
    if (m == NULL) return;
    sscanf(rd->last_id, "%" SCNu64 "-%" SCNu64, &m->id_ms, &m->id_seq);
    m->origin_seq = rd->epoch;
    m->shard = (uint8_t)rd->k;
    broker_fanout(rd->c->b, m);
    broker_flush_wakes(rd->c->b);
}

/* An epoch never made before: random, 16 hex digits (never all zero). */
static void new_epoch(char out[17]) {
    uint64_t e;
    if (getrandom(&e, sizeof(e), 0) != sizeof(e)) e = (uint64_t)wall_ms() * 0x9E3779B97F4A7C15ULL;
    snprintf(out, 17, "%016" PRIx64, e | 1);
}

/* Entries this node delivered are gone while the stream lives on (a
 * failover to a replica that was behind, without redis_wait_replicas): a
 * new epoch, so that no client's since across the loss passes for
 * recovered. Every node sees it at its next check. */
static void declare_loss(reader *rd) {
    char fresh[17];
    new_epoch(fresh);
    log_warn("redis: %s lost its newest entries (up to %s, which this node delivered): a new "
             "epoch; clients cannot recover across the loss (redis_wait_replicas prevents it)",
             rd->key, rd->last_id);
    rd->loss_declared = 1;
    atomic_fetch_add_explicit(&rd->c->b->resets, 1, memory_order_relaxed); /* a counter */
    redisReply *r = cmd(rd, "SET %s:epoch %s", rd->key, fresh);
    if (r) freeReplyObject(r);
    rd->check = 1;
}


/* The epoch Redis holds for the shard (set to a new one when it has none).
 * A change means Redis lost the data the old one named. */
static void epoch_seen(reader *rd, redisReply *r) {
    uint64_t e = 0;
    if (r && r->type == REDIS_REPLY_STRING) e = strtoull(r->str, NULL, 16);
    if (e == 0) { /* none (yet): the next publish sets it; ask again soon */
        char fresh[17];
        new_epoch(fresh);
        redisReply *set = cmd(rd, "SET %s:epoch %s NX", rd->key, fresh);
        if (set) freeReplyObject(set);
        rd->check = 1;
        return;
    }
    if (e == rd->epoch) return;
    if (rd->epoch) log_warn("redis: the epoch of %s changed (Redis lost its data?): clients cannot "
                            "recover what they missed before it", rd->key);
    rd->epoch = e;
    mark(rd);
}

/* Removes the presence of holders (workers of any node) whose heartbeat
 * stopped: their members leave, in the order, within presence_ttl. Any
 * node may do it; the script does it once. Per shard: every key it names
 * starts with the shard's prefix (ARGV[1]), so all are in its slot. */
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

/* On an idle connection (nothing in flight). */
static void sweep(reader *rd) {
    const config *cfg = rd->c->b->cfg;
    int64_t now = clock_ms();
    if (now - rd->swept_ms < cfg->presence_ttl_ms / 4) return; /* see redis.h */
    rd->swept_ms = now;
    redisReply *r = cmd(rd, "EVAL %s 2 %s:holders %s %s %lld %d", sweep_script, rd->key, rd->key,
                        rd->key, (long long)cfg->stream_maxlen, cfg->presence_max);
    if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        log_info("redis: presence of %lld members of silent nodes removed", r->integer);
    if (r) freeReplyObject(r);
}

/* Delivers the entries of an XREAD reply; returns how many there were. */
static size_t consume_reply(reader *rd, redisReply *xr) {
    size_t n = 0;
    for (size_t s = 0; xr->type == REDIS_REPLY_ARRAY && s < xr->elements; s++) {
        redisReply *stream = xr->element[s];
        if (stream->type != REDIS_REPLY_ARRAY || stream->elements != 2 ||
            stream->element[1]->type != REDIS_REPLY_ARRAY)
            continue;
        redisReply *entries = stream->element[1];
        for (size_t i = 0; i < entries->elements; i++) consume_entry(rd, entries->element[i]);
        n += entries->elements;
    }
    broker_flush_wakes(rd->c->b);
    return n;
}

/* Entries in an XREAD reply. */
static size_t count_entries(const redisReply *xr) {
    return xr && xr->type == REDIS_REPLY_ARRAY && xr->elements == 1 &&
                   xr->element[0]->type == REDIS_REPLY_ARRAY && xr->element[0]->elements == 2 &&
                   xr->element[0]->element[1]->type == REDIS_REPLY_ARRAY
               ? xr->element[0]->element[1]->elements
               : 0;
}

/* A lasting error (the key holds another type, no rights, bad password) is
 * the operator's to fix: say so plainly, once, and report it on /readyz. */
static void lasting_problem(consumer *c, const char *what, const char *err) {
    char problem[192];
    snprintf(problem, sizeof(problem), "Redis refuses to %s: %s (check %s)", what, err,
             strncmp(err, "WRONGTYPE", 9) == 0 ? "stream" : "redis_url and the Redis user");
    if (redis_link_set_problem(&c->rb->link, REDIS_PROBLEM_READ, problem)) log_error("redis: %s", problem);
}

/* Starts connecting the shard's reader to its Redis, without waiting: the
 * thread serves every shard, and a Redis that does not answer (a black
 * hole, a frozen process) must not stall the others. The connect ends in
 * the poll loop (REQ_CONNECT), then the hello (REQ_HELLO). 0, or -1. */
static int reader_dial(reader *rd, char *err, size_t errlen) {
    consumer *c = rd->c;
    redis_link *l = &c->rb->link;
    /* The sentinels may have named a new primary since the last look: a
     * restarted old one claims to be primary until they demote it. */
    if (l->mode == REDIS_SENTINEL && redis_link_refresh(l, err, errlen) == 0)
        c->routed_ms = clock_ms();
    if (redis_link_addr(l, rd->k, rd->host, sizeof(rd->host), &rd->port) < 0) {
        snprintf(err, errlen, "where %s is served is not known yet", rd->key);
        return -1;
    }
    rd->ctx = redisConnectNonBlock(rd->host, rd->port);
    if (rd->ctx == NULL || rd->ctx->err) {
        snprintf(err, errlen, "cannot reach %.100s:%d: %s", rd->host, rd->port,
                 rd->ctx ? rd->ctx->errstr : "out of memory");
        disconnect(rd);
        return -1;
    }
    redis_link_tune(l, rd->ctx->fd);
    rd->req = REQ_CONNECT;
    rd->want = rd->got = 0;
    rd->block_ms = 0;
    rd->sent_ms = clock_ms();
    return 0;
}

/* The TCP connect is done: the socket blocks from now on (replies are
 * read only once poll() says they came), and the hello goes out in one
 * pipeline: credentials, the role (Sentinel), then on first contact the
 * epoch and where the stream ends, else whether the entries this node
 * delivered are still there. */
static int send_hello(reader *rd) {
    redis_link *l = &rd->c->rb->link;
    int e = 0;
    socklen_t el = sizeof(e);
    if (getsockopt(rd->ctx->fd, SOL_SOCKET, SO_ERROR, &e, &el) < 0 || e) {
        snprintf(rd->ctx->errstr, sizeof(rd->ctx->errstr), "%s", strerror(e ? e : errno));
        return -1;
    }
    int fl = fcntl(rd->ctx->fd, F_GETFL);
    if (fl < 0 || fcntl(rd->ctx->fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return -1;
    rd->ctx->flags |= REDIS_BLOCK;
    int rt = READ_BLOCK_MS + l->timeout_ms; /* a blocking read is answered within its BLOCK */
    struct timeval rtv = {rt / 1000, (rt % 1000) * 1000};
    redisSetTimeout(rd->ctx, rtv);
    int n = 0;
    if (l->pass[0]) {
        if (l->user[0]) redisAppendCommand(rd->ctx, "AUTH %s %s", l->user, l->pass);
        else redisAppendCommand(rd->ctx, "AUTH %s", l->pass);
        n++;
    }
    if (l->db && l->mode != REDIS_CLUSTER) {
        redisAppendCommand(rd->ctx, "SELECT %d", l->db);
        n++;
    }
    if (l->mode == REDIS_SENTINEL) {
        redisAppendCommand(rd->ctx, "ROLE");
        n++;
    }
    if (rd->last_id[0] == '\0') {
        char fresh[17];
        new_epoch(fresh);
        redisAppendCommand(rd->ctx, "SET %s:epoch %s NX", rd->key, fresh);
        redisAppendCommand(rd->ctx, "GET %s:epoch", rd->key);
        n += 2;
    } else {
        const char *undo = rd->reset_from[0] ? rd->reset_from : rd->last_id;
        redisAppendCommand(rd->ctx, "XRANGE %s %s %s", rd->key, undo, undo);
        redisAppendCommand(rd->ctx, "XRANGE %s %s %s", rd->key, rd->last_id, rd->last_id);
        n += 2;
    }
    redisAppendCommand(rd->ctx, "XINFO STREAM %s", rd->key);
    rd->req = REQ_HELLO;
    rd->want = n + 1;
    rd->got = 0;
    rd->block_ms = 0;
    rd->sent_ms = clock_ms();
    return flush_out(rd);
}

/* The hello's replies, in the order send_hello asked. 0, or -1 with err
 * (the caller drops the connection and backs off). */
static int hello_done(reader *rd, redisReply **rep, char *err, size_t errlen) {
    consumer *c = rd->c;
    rbroker *rb = c->rb;
    redis_link *l = &rb->link;
    int i = 0;
    for (int k = 0; k < (l->pass[0] != 0) + (l->db && l->mode != REDIS_CLUSTER); k++, i++)
        if (rep[i]->type == REDIS_REPLY_ERROR) {
            if (redis_error_lasting(rep[i]->str)) lasting_problem(c, "let chatd in", rep[i]->str);
            snprintf(err, errlen, "%.100s:%d: %.120s", rd->host, rd->port, rep[i]->str);
            return -1;
        }
    if (l->mode == REDIS_SENTINEL && !redis_role_is_master(rep[i++])) {
        /* What the sentinels name may be stale: a demoted primary is a
         * replica now, and reading it would miss what the new one has. */
        snprintf(err, errlen, "%.200s:%d is not the primary (yet)", rd->host, rd->port);
        redis_link_want_refresh(l);
        return -1;
    }
    redisReply *a = rep[i], *b = rep[i + 1], *info = rep[i + 2];
    const char *refused = a->type == REDIS_REPLY_ERROR   ? a->str
                          : b->type == REDIS_REPLY_ERROR ? b->str
                          : info->type == REDIS_REPLY_ERROR && !strstr(info->str, "no such key")
                              ? info->str
                              : NULL;
    if (refused) {
        /* LOADING, NOPERM, WRONGTYPE, MOVED...: where the stream ends is
         * not known, and 0-0 would replay all of it. Try again. */
        if (redis_error_lasting(refused)) lasting_problem(c, "let chatd in", refused);
        redis_addr to;
        int ask, slot;
        if (cluster_redirect_parse(refused, &ask, &slot, &to) == 0 && !ask) {
            if (to.host[0] == '\0') snprintf(to.host, sizeof(to.host), "%s", rd->host);
            redis_link_moved(l, &to, slot);
        }
        snprintf(err, errlen, "%.100s:%d: %.120s", rd->host, rd->port, refused);
        return -1;
    }
    if (rd->last_id[0] == '\0') {
        /* First contact: start after the newest entry; no replay. */
        if (b->type != REDIS_REPLY_STRING) {
            snprintf(err, errlen, "%.100s:%d: no epoch", rd->host, rd->port);
            return -1;
        }
        uint64_t epoch = strtoull(b->str, NULL, 16);
        if (info->type == REDIS_REPLY_ARRAY) {
            redisReply *last = field(info, "last-generated-id");
            if (last && last->type == REDIS_REPLY_STRING)
                snprintf(rd->last_id, sizeof(rd->last_id), "%s", last->str);
            rd->pos = (uint64_t)field_int(info, "entries-added", &rd->counted);
        } else {
            rd->counted = 1; /* no stream yet: counting starts at 0 */
        }
        if (rd->last_id[0] == '\0') snprintf(rd->last_id, sizeof(rd->last_id), "0-0");
        if (!rd->counted) log_warn("redis: server older than 7.0: trimmed gaps are not detected");
        rd->epoch = epoch;
        mark(rd); /* the workers know the epoch and where reading starts */
        log_info("redis: reading %s after %s at %s:%d", rd->key, rd->last_id, rd->host, rd->port);
        /* release: the shard's publishers may send now; what they add comes after */
        atomic_store_explicit(&rb->started[rd->k], 1, memory_order_release);
        atomic_fetch_add_explicit(&rb->nstarted, 1, memory_order_release);
    } else {
        if (rd->reset_from[0] && clock_ms() - rd->reset_ms < RESET_UNDO_MS &&
            (strcmp(rd->reset_host, rd->host) != 0 || rd->reset_port != rd->port) &&
            a->type == REDIS_REPLY_ARRAY && a->elements == 1) {
            /* The stream seemed reset on another server (a restarted
             * primary, empty, that the sentinels had not demoted yet): this
             * one still has where this node was, so go on from there, not
             * from the start, which would deliver all of it again. */
            log_warn("redis: %s at %s:%d still has %s: reading on from there (the reset was "
                     "%s:%d's)", rd->key, rd->host, rd->port, rd->reset_from, rd->reset_host,
                     rd->reset_port);
            snprintf(rd->last_id, sizeof(rd->last_id), "%s", rd->reset_from);
            rd->pos_unknown = 1;
            rd->nrecent = 0;
        } else if (strcmp(rd->last_id, "0-0") != 0 && b->type == REDIS_REPLY_ARRAY &&
                   b->elements == 0) {
            /* The last entry this node delivered is gone from a stream that
             * still reaches back before it: a loss. No stream: Redis lost
             * everything, and its epoch with it. Trimmed past it: a gap,
             * counted by the check. */
            redisReply *first = field(info, "first-entry");
            if (first && first->type == REDIS_REPLY_ARRAY && first->elements == 2 &&
                first->element[0]->type == REDIS_REPLY_STRING &&
                !id_before(rd->last_id, first->element[0]->str))
                declare_loss(rd);
        }
        rd->reset_from[0] = '\0';
    }
    rd->check = 1; /* `up` waits for a read's answer */
    return 0;
}

/* Writes what rd->ctx holds to send. 0, or -1 when the connection failed. */
static int flush_out(reader *rd) {
    int done = 0;
    while (!done)
        if (redisBufferWrite(rd->ctx, &done) != REDIS_OK) return -1;
    return 0;
}

/* Sends the next request of an idle reader: a read, with the XINFO check
 * when due, ASKING first when redirected. */
static int send_read(reader *rd) {
    int64_t since = clock_ms() - rd->checked_ms;
    /* A gap is seen soon after the entries around it: a read that had
     * entries is followed by a check within CHECK_AFTER_MS. */
    int due = rd->check || since >= CHECK_EVERY_MS || (rd->unchecked && since >= CHECK_AFTER_MS);
    rd->got = 0;
    if (rd->asking) redisAppendCommand(rd->ctx, "ASKING");
    if (due && clock_ms() >= rd->plain_until_ms && !rd->asking) {
        redisAppendCommand(rd->ctx, "MULTI");
        redisAppendCommand(rd->ctx, "XINFO STREAM %s", rd->key);
        redisAppendCommand(rd->ctx, "GET %s:epoch", rd->key);
        redisAppendCommand(rd->ctx, "XREAD COUNT %d STREAMS %s %s", READ_COUNT, rd->key,
                           rd->last_id);
        redisAppendCommand(rd->ctx, "EXEC");
        rd->req = REQ_CHECKED;
        rd->want = 5;
        rd->block_ms = 0;
    } else {
        int64_t block = rd->unchecked && !due ? CHECK_AFTER_MS - since : READ_BLOCK_MS;
        rd->block_ms = block > 0 ? block : 1;
        redisAppendCommand(rd->ctx, "XREAD COUNT %d BLOCK %lld STREAMS %s %s", READ_COUNT,
                           (long long)rd->block_ms, rd->key, rd->last_id);
        rd->req = REQ_PLAIN;
        rd->want = 1 + rd->asking;
    }
    rd->sent_ms = clock_ms();
    return flush_out(rd);
}

/* Asks for the replicas to have everything read so far: a write of this
 * reader's, then WAIT (replication is one ordered stream). */
static int send_wait(reader *rd) {
    const config *cfg = rd->c->b->cfg;
    rd->got = 0;
    if (rd->asking) redisAppendCommand(rd->ctx, "ASKING");
    redisAppendCommand(rd->ctx, "SET %s:synced %s", rd->key, rd->last_id);
    redisAppendCommand(rd->ctx, "WAIT %d %d", cfg->redis_wait_replicas, cfg->redis_timeout_ms);
    rd->req = REQ_WAIT;
    rd->want = 2 + rd->asking;
    rd->block_ms = cfg->redis_timeout_ms;
    rd->sent_ms = clock_ms();
    return flush_out(rd);
}

#define READ_LOST -1               /* the connection failed */
#define READ_REFUSED -2            /* Redis answered with an error */
#define READ_WAITING -3            /* too few replicas yet: not a sign of health */

/* Redis refused a request: a redirect is followed at once; LOADING and the
 * like pass, WRONGTYPE and NOPERM stay. */
static long refused(reader *rd, const char *e) {
    consumer *c = rd->c;
    redis_addr to;
    int ask, slot;
    if (cluster_redirect_parse(e, &ask, &slot, &to) == 0) {
        if (to.host[0] == '\0') snprintf(to.host, sizeof(to.host), "%s", rd->host);
        if (ask) {
            /* The slot moves: its keys are read there, each read after
             * ASKING, until the map says where it lives. */
            char err[192];
            disconnect(rd);
            rd->ctx = redis_link_dial(&c->rb->link, to.host, to.port, c->rb->link.timeout_ms, err,
                                      sizeof(err));
            if (rd->ctx == NULL) return READ_LOST;
            snprintf(rd->host, sizeof(rd->host), "%s", to.host);
            rd->port = to.port;
            rd->asking = 1;
            atomic_fetch_add_explicit(&c->rb->link.moves, 1, memory_order_relaxed); /* a counter */
            return 0;
        }
        redis_link_moved(&c->rb->link, &to, slot);
        disconnect(rd); /* to the new master at the next turn */
        return 0;
    }
    if (redis_error_lasting(e)) lasting_problem(c, "read the stream", e);
    else if (!rd->down_logged) log_warn("redis: reading %s refused: %s; retrying", rd->key, e);
    if (strncmp(e, "READONLY", 8) == 0 || strncmp(e, "CLUSTERDOWN", 11) == 0 ||
        strncmp(e, "MASTERDOWN", 10) == 0)
        redis_link_want_refresh(&c->rb->link);
    rd->down_logged = 1;
    set_up(rd, 0);
    rd->check = 1;
    return READ_REFUSED;
}

/* The entries of xr are read: delivered now, or once the replicas have
 * them. Takes xr. */
static long entries_read(reader *rd, redisReply *xr) {
    size_t n = count_entries(xr);
    if (n && rd->c->b->cfg->redis_wait_replicas > 0) {
        if (rd->held) freeReplyObject(rd->held); /* a WAIT refused: read again */
        rd->held = xr;
        return send_wait(rd) < 0 ? READ_LOST : 0;
    }
    consume_reply(rd, xr);
    freeReplyObject(xr);
    return (long)n;
}

/* The replies of the request in flight are all in: handles them. Returns
 * the entries delivered, READ_LOST or READ_REFUSED. */
static long handle_replies(reader *rd) {
    redisReply *rep[8];
    int req = rd->req, got = rd->got, first = req == REQ_CHECKED ? 0 : rd->asking;
    memcpy(rep, rd->reply, sizeof(rep));
    rd->req = REQ_NONE; /* what follows may send the next request */
    rd->got = rd->want = 0;
    long n;
    if (req == REQ_HELLO) {
        char err[256];
        n = 0;
        if (hello_done(rd, rep, err, sizeof(err)) < 0) {
            snprintf(rd->ctx->errstr, sizeof(rd->ctx->errstr), "%.127s", err);
            n = READ_LOST;
        }
    } else if (req == REQ_WAIT) {
        redisReply *set = rep[first], *w = rep[first + 1];
        if (set->type == REDIS_REPLY_ERROR) {
            /* Refused, the write did not move what WAIT measures: what
             * was read is not known to be on the replicas. Read again. */
            n = refused(rd, set->str);
        } else if (w->type == REDIS_REPLY_INTEGER && w->integer >= rd->c->b->cfg->redis_wait_replicas) {
            redisReply *xr = rd->held;
            rd->held = NULL;
            n = (long)consume_reply(rd, xr);
            freeReplyObject(xr);
        } else if (w->type == REDIS_REPLY_ERROR) {
            n = refused(rd, w->str);
        } else {
            if (!rd->down_logged)
                log_warn("redis: %s: fewer than redis_wait_replicas replicas have what was read; "
                         "waiting", rd->key);
            rd->down_logged = 1;
            n = send_wait(rd) < 0 ? READ_LOST : READ_WAITING; /* waited for again */
        }
    } else if (req == REQ_PLAIN) {
        redisReply *r = rep[first];
        if (r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_ARRAY) {
            size_t read = count_entries(r);
            rd->unchecked += read;
            if (read == READ_COUNT) rd->check = 1;
            if (read < READ_COUNT) rd->lag = 0;
            rep[first] = NULL;
            n = entries_read(rd, r);
        } else {
            n = refused(rd, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        }
    } else {
        /* REQ_CHECKED: OK, QUEUED x 3, then the result; a refused MULTI
         * says why EXEC fails. */
        redisReply *first_error = NULL, *r = rep[4];
        for (int i = 0; i < 4 && first_error == NULL; i++)
            if (rep[i]->type == REDIS_REPLY_ERROR) first_error = rep[i];
        if (first_error && r->type != REDIS_REPLY_ARRAY) r = first_error;
        if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "OOM", 3) == 0) {
            /* Out of memory, Redis refuses whatever is queued in a MULTI,
             * reads too. Read plainly meanwhile; the check waits. */
            rd->plain_until_ms = clock_ms() + CHECK_EVERY_MS;
            n = 0;
        } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
            /* The epoch first: entries read after a change belong to it. */
            epoch_seen(rd, r->element[1]);
            redisReply *xr = r->element[2];
            if (check_stream(rd, r->element[0], count_entries(xr))) {
                n = 0;
            } else if (xr->type != REDIS_REPLY_ERROR) {
                if (count_entries(xr) == READ_COUNT) rd->check = 1; /* behind: watch trimming */
                r->element[2] = NULL;
                n = entries_read(rd, xr);
            } else {
                n = refused(rd, xr->str);
            }
        } else {
            n = refused(rd, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        }
    }
    for (int i = 0; i < got; i++)
        if (rep[i]) freeReplyObject(rep[i]);
    return n;
}

/* Reads what came for rd; handles it when all its replies are in. */
static long reader_input(reader *rd) {
    if (redisBufferRead(rd->ctx) != REDIS_OK) return READ_LOST;
    while (rd->got < rd->want) {
        void *r = NULL;
        if (redisGetReplyFromReader(rd->ctx, &r) != REDIS_OK) return READ_LOST;
        if (r == NULL) return 0; /* more to come */
        rd->reply[rd->got++] = r;
    }
    return handle_replies(rd);
}

/* The reader's connection failed or went silent: drop it, connect again
 * after a backoff, and read on from last_id. */
static void reader_lost(reader *rd, const char *why) {
    if (!rd->down_logged) log_warn("redis: reading %s at %s:%d: %s", rd->key, rd->host, rd->port, why);
    rd->down_logged = 1;
    disconnect(rd);
    back_off(rd);
    redis_link_want_refresh(&rd->c->rb->link); /* a failover moved it? */
}

/* Redis served rd: clears its trouble. */
static void reader_well(reader *rd) {
    consumer *c = rd->c;
    if (rd->down_logged) {
        log_info("redis: reading %s again at %s:%d, after %s", rd->key, rd->host, rd->port,
                 rd->last_id);
        atomic_fetch_add_explicit(&c->b->reconnects, 1, memory_order_relaxed); /* a counter */
    }
    if (redis_link_set_problem(&c->rb->link, REDIS_PROBLEM_READ, NULL))
        log_info("redis: the consumer's problem is resolved");
    rd->down_logged = 0;
    rd->backoff_ms = REDIS_BACKOFF_MIN_MS;
    set_up(rd, 1);
}

/* The route changed (a failover, a redirect): readers whose Redis is not
 * the one named now go there. */
static void follow_route(consumer *c) {
    for (int k = 0; k < c->n; k++) {
        reader *rd = &c->rd[k];
        char host[256];
        int port;
        if (rd->ctx == NULL || redis_link_addr(&c->rb->link, k, host, sizeof(host), &port) < 0)
            continue;
        int here = strcmp(host, rd->host) == 0 && port == rd->port;
        if (rd->asking) { /* the move is over once the map names where it reads */
            if (here) rd->asking = 0;
            continue;
        }
        if (!here) {
            log_info("redis: %s is served by %s:%d now", rd->key, host, port);
            disconnect(rd);
            rd->retry_ms = 0;
        }
    }
}

static void consumer_turn(consumer *c) {
    char err[256];
    int64_t now = clock_ms();
    redis_link *l = &c->rb->link;
    /* relaxed: a hint; refreshing once too often costs one round trip */
    int due = l->mode != REDIS_SINGLE && now - c->routed_ms >= ROUTE_CHECK_MS;
    if ((due || atomic_load_explicit(&l->stale, memory_order_relaxed)) && now >= c->refresh_ms) {
        c->routed_ms = now;
        if (redis_link_refresh(l, err, sizeof(err)) < 0) {
            log_warn("redis: cannot find the Redis servers: %s; retrying", err);
            c->refresh_ms = now + c->refresh_backoff_ms;
            c->refresh_backoff_ms = redis_backoff(c->refresh_backoff_ms);
        } else {
            c->refresh_backoff_ms = REDIS_BACKOFF_MIN_MS;
            follow_route(c);
        }
    }
    struct pollfd pfd[SHARDS_MAX];
    reader *polled[SHARDS_MAX];
    int np = 0;
    for (int k = 0; k < c->n; k++) {
        reader *rd = &c->rd[k];
        if (atomic_load_explicit(&c->b->stop, memory_order_acquire)) return;
        if (rd->ctx == NULL) {
            if (clock_ms() < rd->retry_ms) continue;
            if (reader_dial(rd, err, sizeof(err)) < 0) {
                if (!rd->down_logged) log_warn("redis: consumer: %s; retrying with backoff", err);
                rd->down_logged = 1;
                back_off(rd);
                redis_link_want_refresh(l);
                continue;
            }
        }
        if (rd->req == REQ_NONE) {
            if (clock_ms() < rd->retry_ms) continue; /* refused a moment ago */
            if (rd->up && !rd->asking) sweep(rd);
            if (send_read(rd) < 0) {
                reader_lost(rd, rd->ctx->errstr);
                continue;
            }
        }
        if (clock_ms() - rd->sent_ms > rd->block_ms + l->timeout_ms) {
            reader_lost(rd, "no answer within redis_timeout");
            continue;
        }
        pfd[np] = (struct pollfd){.fd = rd->ctx->fd, .events = rd->req == REQ_CONNECT ? POLLOUT : POLLIN};
        polled[np++] = rd;
    }
    if (np == 0) {
        struct timespec ts = {0, POLL_MS * 1000000L};
        nanosleep(&ts, NULL);
        return;
    }
    if (poll(pfd, (nfds_t)np, POLL_MS) <= 0) return;
    for (int i = 0; i < np; i++) {
        reader *rd = polled[i];
        if (!(pfd[i].revents & (POLLIN | POLLOUT | POLLERR | POLLHUP))) continue;
        if (rd->req == REQ_CONNECT) {
            if (send_hello(rd) < 0) reader_lost(rd, rd->ctx->errstr);
            continue;
        }
        long n = reader_input(rd);
        if (n == READ_LOST) reader_lost(rd, rd->ctx && rd->ctx->errstr[0] ? rd->ctx->errstr
                                                                          : "connection closed");
        else if (n == READ_REFUSED) back_off(rd);
        else if (n != READ_WAITING && rd->ctx && rd->req != REQ_WAIT) reader_well(rd);
    }
    uint64_t lag = 0;
    for (int k = 0; k < c->n; k++) lag += c->rd[k].lag;
    atomic_store_explicit(&c->rb->read_lag, lag, memory_order_relaxed); /* a gauge */
}

void *redis_consume_run(void *arg) {
    broker *b = arg;
    rbroker *rb = b->impl;
    consumer *c = calloc(1, sizeof(*c));
    reader *rd = calloc((size_t)rb->nshards, sizeof(*rd)); /* their rings of recent entries are big */
    log_thread("broker");
    if (c == NULL || rd == NULL) {
        log_error("redis: consumer: out of memory");
        free(c);
        free(rd);
        return NULL;
    }
    c->b = b;
    c->rb = rb;
    c->rd = rd;
    c->n = rb->nshards;
    c->refresh_backoff_ms = REDIS_BACKOFF_MIN_MS;
    for (int k = 0; k < c->n; k++) {
        rd[k].c = c;
        rd[k].k = k;
        rd[k].key = rb->prefix[k];
        rd[k].backoff_ms = REDIS_BACKOFF_MIN_MS;
    }
    /* The route first: the sentinels' primary, the cluster's slot map. */
    redis_link_want_refresh(&rb->link);
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) consumer_turn(c); /* see broker_stop */
    for (int k = 0; k < c->n; k++) disconnect(&rd[k]);
    free(rd);
    free(c);
    return NULL;
}
