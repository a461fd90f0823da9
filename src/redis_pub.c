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

#include "chat.h"
#include "log.h"
#include "proto.h"
#include "redis.h"
#include "worker.h"
#include "ws.h"

#define PUB_WATCH_MS 250            /* how often the watchdog looks */
#define PUB_KEY_TTL "86400"         /* a publisher's last sequence is kept a day */
#define PUB_WAIT_START_MS 20        /* poll for the consumer's start id */
#define PUB_JOIN_ROOM 16            /* joins may fill publish_queue this many times */

/* The publish script: a message, or a presence change, put in the order
 * once and in its publisher's order.
 * KEYS: 1 stream, 2 publisher key, 3 epoch, 4 the room's history, 5 the
 * room's presence, 6 what this publisher holds, 7 the holders, 8 this
 * holder's heartbeat.
 * ARGV: 1 seq, 2 oldest seq still queued, 3 stream maxlen (0: none), 4 kind
 * (m message, j join, l leave: told in the stream only while the room
 * has at most presence_max members), 5 room, 6 user, 7 text, 8 mid, 9 publisher
 * key ttl, 10 ts, 11 history_max, 12 history_ttl ms, 13 an epoch to set if
 * there is none, 14 what a join wants back (x nothing, n members, l members
 * and the latest messages, s members and what follows an id), 15 how many
 * messages, 16 that id, 17 presence_max, 18 holder id, 19 heartbeat ttl ms,
 * 20 bytes a join's messages may have (max_output_buffer: a recovery
 * larger than that is a gap).
 * Returns the entry id, 0 when nothing was appended (stored already, or a
 * presence change that changes nothing), or for a join that wants an
 * answer {id, the stream's newest id, epoch, members count, members,
 * found, messages}; an OUTOFORDER error when an earlier message of the
 * publisher is missing (it comes again first). The shebang makes Redis
 * refuse the whole script up front under OOM, never halfway. */
static const char pub_script[] =
    "#!lua\n"
    "local function xadd(f)\n"
    "  if ARGV[3] ~= '0' then\n"
    "    return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(f))\n"
    "  end\n"
    "  return redis.call('XADD', KEYS[1], '*', unpack(f))\n"
    "end\n"
    "local budget = tonumber(ARGV[20])\n"
    "local function size(e)\n"
    "  local b = 0\n"
    "  for i = 2, #e[2], 2 do b = b + #e[2][i] end\n"
    "  return b\n"
    "end\n"
    /* The messages after id, oldest first, in pages, within the budget
     * (the history stream itself holds about history_max); complete when
     * nothing is left after them. */
    "local function after(from)\n"
    "  local out, bytes, lo = {}, 0, '(' .. from\n"
    "  while true do\n"
    "    local page = redis.call('XRANGE', KEYS[4], lo, '+', 'COUNT', 64)\n"
    "    for _, e in ipairs(page) do\n"
    "      bytes = bytes + size(e)\n"
    "      if bytes > budget then return out, false end\n"
    "      out[#out + 1] = e\n"
    "    end\n"
    "    if #page < 64 then return out, true end\n"
    "    lo = '(' .. page[#page][1]\n"
    "  end\n"
    "end\n"
    /* The latest n within the budget, oldest first. */
    "local function latest(n)\n"
    "  local out, bytes, hi = {}, 0, '+'\n"
    "  while #out < n do\n"
    "    local page = redis.call('XREVRANGE', KEYS[4], hi, '-', 'COUNT', math.min(64, n - #out))\n"
    "    if #page == 0 then break end\n"
    "    for _, e in ipairs(page) do\n"
    "      bytes = bytes + size(e)\n"
    "      if bytes > budget then n = #out; break end\n"
    "      out[#out + 1] = e\n"
    "    end\n"
    "    hi = '(' .. page[#page][1]\n"
    "  end\n"
    "  for i = 1, math.floor(#out / 2) do out[i], out[#out + 1 - i] = out[#out + 1 - i], out[i] end\n"
    "  return out\n"
    "end\n"
    /* A new epoch whenever there is none: this node's random part and the
     * time, so that the same node never makes the same one twice. */
    "local epoch = redis.call('GET', KEYS[3])\n"
    "if not epoch then\n"
    "  local t = redis.call('TIME')\n"
    "  epoch = string.sub(ARGV[13], 1, 8) ..\n"
    "          string.format('%08x', (tonumber(t[1]) * 1000000 + tonumber(t[2])) % 4294967296)\n"
    "  redis.call('SET', KEYS[3], epoch)\n"
    "end\n"
    "local last = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "local seq, oldest = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "if oldest - 1 > last then last = oldest - 1 end\n"
    "if seq > last + 1 then\n"
    "  return redis.error_reply('OUTOFORDER message ' .. seq .. ' after ' .. last)\n"
    "end\n"
    "local kind, id = ARGV[4], 0\n"
    "if seq == last + 1 then\n"
    "  if kind == 'm' then\n"
    "    id = xadd({'room', ARGV[5], 'user', ARGV[6], 'text', ARGV[7], 'mid', ARGV[8],\n"
    "               'ts', ARGV[10]})\n"
    "    if ARGV[11] ~= '0' then\n"
    "      local h = {KEYS[4], 'MAXLEN', '~', ARGV[11], id, 'user', ARGV[6], 'text', ARGV[7],\n"
    "                 'ts', ARGV[10]}\n"
    "      local ok = redis.pcall('XADD', unpack(h))\n"
    "      if type(ok) == 'table' and ok.err then\n"
    "        redis.call('DEL', KEYS[4])\n"  /* ids went back: a stream made anew */
    "        redis.call('XADD', unpack(h))\n"
    "      end\n"
    "      redis.call('PEXPIRE', KEYS[4], ARGV[12])\n"
    "    end\n"
    "  elseif kind == 'j' then\n"
    "    redis.call('SADD', KEYS[7], ARGV[18])\n"
    "    redis.call('SET', KEYS[8], '1', 'PX', ARGV[19])\n"
    "    if redis.call('SADD', KEYS[6], ARGV[5] .. '\\n' .. ARGV[6]) == 1 and\n"
    "       redis.call('HINCRBY', KEYS[5], ARGV[6], 1) == 1 and\n"
    "       redis.call('HLEN', KEYS[5]) <= tonumber(ARGV[17]) then\n"
    "      id = xadd({'kind', 'j', 'room', ARGV[5], 'user', ARGV[6], 'mid', ARGV[8]})\n"
    "    end\n"
    "  elseif kind == 'l' then\n"
    "    if redis.call('SREM', KEYS[6], ARGV[5] .. '\\n' .. ARGV[6]) == 1 and\n"
    "       redis.call('HINCRBY', KEYS[5], ARGV[6], -1) <= 0 then\n"
    "      local told = redis.call('HLEN', KEYS[5]) <= tonumber(ARGV[17])\n"
    "      redis.call('HDEL', KEYS[5], ARGV[6])\n"
    "      if told then\n"
    "        id = xadd({'kind', 'l', 'room', ARGV[5], 'user', ARGV[6], 'mid', ARGV[8]})\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    /* Always a write, also for a repeat: a WAIT after it then covers the
     * message, wherever on this Redis it was first stored. */
    "if seq > last then last = seq end\n"
    "redis.call('SET', KEYS[2], last, 'EX', ARGV[9])\n"
    "if kind ~= 'j' or ARGV[14] == 'x' then return id end\n"
    "local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)\n"
    "local at = newest[1] and newest[1][1] or '0-0'\n"
    "local count = redis.call('HLEN', KEYS[5])\n"
    "local members = {}\n"
    "if count <= tonumber(ARGV[17]) then members = redis.call('HKEYS', KEYS[5]) end\n"
    "local found, msgs = 0, {}\n"
    "if ARGV[14] == 's' and #redis.call('XRANGE', KEYS[4], ARGV[16], ARGV[16]) == 1 then\n"
    "  local complete\n"
    "  msgs, complete = after(ARGV[16])\n"
    "  if complete then found = 1 else msgs = {} end\n"
    "end\n"
    "if found == 0 and ARGV[14] ~= 'n' and tonumber(ARGV[15]) > 0 then\n"
    "  msgs = latest(tonumber(ARGV[15]))\n"
    "end\n"
    "return {id, at, epoch, count, members, found, msgs}\n";

/* The heartbeat of a holder of presence. KEYS: its heartbeat key, the
 * holders. ARGV: holder id, heartbeat ttl ms. Returns 1 if the heartbeat
 * was still there (else whatever the holder held may have been swept). */
static const char alive_script[] =
    "local had = redis.call('EXISTS', KEYS[1])\n"
    "redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])\n"
    "redis.call('SADD', KEYS[2], ARGV[1])\n"
    "return had\n";

/* A message waiting for Redis to store it. */
typedef struct pub_item {
    struct pub_item *next;
    uint64_t seq;
    int kind;                    /* MSG_CHAT, MSG_JOIN, MSG_LEAVE */
    void *wait;                  /* a join's waiting membership, or NULL */
    int hist;                    /* a join: HIST_* wanted back */
    uint32_t n;
    uint64_t id_ms, id_seq;      /* HIST_SINCE */
    int64_t ts;
    uint64_t conn_id;            /* the sender, told if it can never be stored */
    int64_t accepted_ms;         /* monotonic: when the client's message came */
    int replied;                 /* redis_wait_replicas: stored, not yet known
                                    to be on the replicas */
    int64_t sent_ms;             /* monotonic: when last sent */
    uint32_t room_len, user_len, text_len;
    char data[];                 /* room, user, text */
} pub_item;

typedef struct publisher {
    broker *b;
    rbroker *rb;
    int wid;
    int shard;                   /* the rooms it publishes for */
    const char *prefix;          /* its keys' */
    struct event_base *base;
    redisAsyncContext *ac;       /* NULL while there is no connection */
    char host[256];              /* where ac goes */
    int port;
    int up;                      /* ac is connected */
    int64_t connect_ms;          /* when ac was started */
    pub_item *head, *tail;       /* unanswered, oldest first */
    pub_item *unsent;            /* first item not sent on this connection */
    pub_item *unreplied;         /* first item whose answer has not come */
    redis_addr ask;              /* an ASK redirect: the next connection goes */
    int ask_next;                /*   there, and sends ASKING before each */
    int asking;                  /*   command, until it is dropped */
    int holding;                 /* a refusal: send nothing until retry_ev */
    int need_load;               /* SCRIPT LOAD before the next EVALSHA */
    int backoff_ms;
    int troubled;                /* a trouble streak was logged */
    uint64_t seq;
    char key[192];               /* "<prefix>:pub:<node>.<wid>" */
    char mid[48];                /* "<node>.<wid>." */
    char holder[40];             /* "<node>.<wid>": holds presence */
    char held_key[208];          /* "<prefix>:held:<holder>" */
    char alive_key[208];         /* "<prefix>:alive:<holder>" */
    char holders_key[176];       /* "<prefix>:holders" */
    char epoch_key[176];         /* "<prefix>:epoch" */
    char channel[160];           /* "<stream>:typing" (shard 0 subscribes) */
    struct event *alive_ev;      /* the presence heartbeat */
    int alive_once;              /* a heartbeat was answered before */
    redisAsyncContext *sub;      /* subscribed to typing, or NULL */
    struct event *sub_ev;        /* subscribe again */
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
    if (p->unreplied == it) p->unreplied = it->next;
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
    p->asking = 0;
    if (ac) redisAsyncFree(ac); /* pending callbacks see reply NULL */
    pub_back_off(p);
}

static void pub_on_reply(redisAsyncContext *ac, void *r, void *priv);
static void pub_on_wait(redisAsyncContext *ac, void *r, void *priv);
static void pub_on_aux_reply(redisAsyncContext *ac, void *r, void *priv);

/* The script's SHA-1 in hex, for EVALSHA: the script itself crosses the
 * wire once per connection (SCRIPT LOAD), not with every message. */
static char pub_sha[2 * SHA_DIGEST_LENGTH + 1];

static void pub_script_sha(void) {
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)pub_script, sizeof(pub_script) - 1, d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++) snprintf(pub_sha + 2 * i, 3, "%02x", d[i]);
}

/* "<prefix>:<what>:<name>" into out. */
static size_t pub_key(char *out, size_t cap, const char *prefix, const char *what, const char *name,
                      size_t len) {
    int n = snprintf(out, cap, "%s:%s:%.*s", prefix, what, (int)len, name);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

static void pub_send(publisher *p, pub_item *it) {
    const config *cfg = p->b->cfg;
    if (it->wait && !chat_wait_alive(it->wait)) { /* nobody to answer: no reads */
        join_answer a = {.failed = 1};
        chat_join_answer(p->b->workers[p->wid - 1], it->wait, &a);
        it->wait = NULL;
    }
    char seq[24], oldest[24], maxlen[24], mid[80], ts[24], hmax[24], httl[24], n[24], since[48],
        pmax[24], pttl[24], hkey[512], pkey[512];
    snprintf(seq, sizeof(seq), "%" PRIu64, it->seq);
    snprintf(oldest, sizeof(oldest), "%" PRIu64, p->head->seq);
    snprintf(maxlen, sizeof(maxlen), "%" PRId64, cfg->stream_maxlen);
    snprintf(mid, sizeof(mid), "%s%" PRIu64, p->mid, it->seq);
    snprintf(ts, sizeof(ts), "%" PRId64, it->ts);
    snprintf(hmax, sizeof(hmax), "%d", cfg->history_max);
    snprintf(httl, sizeof(httl), "%" PRId64, cfg->history_ttl_ms);
    snprintf(n, sizeof(n), "%u", it->n);
    snprintf(since, sizeof(since), "%" PRIu64 "-%" PRIu64, it->id_ms, it->id_seq);
    snprintf(pmax, sizeof(pmax), "%d", cfg->presence_max);
    snprintf(pttl, sizeof(pttl), "%d", cfg->presence_ttl_ms / 2); /* see redis.h */
    char budget[24];
    /* this worker's config: max_output_buffer reloads, b->cfg does not */
    snprintf(budget, sizeof(budget), "%" PRId64,
             p->b->workers[p->wid - 1]->cfg->max_output_buffer);
    const char *rname = it->data, *user = it->data + it->room_len,
               *text = it->data + it->room_len + it->user_len;
    size_t hlen = pub_key(hkey, sizeof(hkey), p->prefix, "history", rname, it->room_len);
    size_t plen = pub_key(pkey, sizeof(pkey), p->prefix, "presence", rname, it->room_len);
    const char *kind = it->kind == MSG_JOIN ? "j" : it->kind == MSG_LEAVE ? "l" : "m";
    const char *want = it->wait == NULL ? "x"
                       : it->hist == HIST_LATEST ? "l"
                       : it->hist == HIST_SINCE ? "s"
                                                : "n";
    const char *argv[] = {"EVALSHA", pub_sha, "8", p->prefix, p->key, p->epoch_key, hkey, pkey,
                          p->held_key, p->holders_key, p->alive_key, seq, oldest, maxlen, kind,
                          rname, user, text, mid, PUB_KEY_TTL, ts, hmax, httl,
                          p->rb->epoch_candidate, want, n, since, pmax, p->holder, pttl,
                          budget};
    size_t len[] = {7, sizeof(pub_sha) - 1, 1, strlen(p->prefix), strlen(p->key),
                    strlen(p->epoch_key), hlen, plen, strlen(p->held_key),
                    strlen(p->holders_key), strlen(p->alive_key), strlen(seq), strlen(oldest),
                    strlen(maxlen), 1, it->room_len, it->user_len, it->text_len, strlen(mid),
                    sizeof(PUB_KEY_TTL) - 1, strlen(ts), strlen(hmax), strlen(httl),
                    strlen(p->rb->epoch_candidate), 1, strlen(n), strlen(since), strlen(pmax),
                    strlen(p->holder), strlen(pttl), strlen(budget)};
    it->sent_ms = clock_ms();
    if (p->asking) redisAsyncCommand(p->ac, NULL, NULL, "ASKING");
    /* The reply callback knows its message by sequence number: a reply for
     * anything but the first unanswered is stale (sent before a refusal). */
    redisAsyncCommandArgv(p->ac, pub_on_reply, (void *)(uintptr_t)it->seq,
                          (int)(sizeof(argv) / sizeof(argv[0])), argv, len);
}

/* Sends everything not yet sent on this connection, unless a refusal holds
 * it back, and only once the consumer has fixed where it starts reading
 * (else these messages could fall before it). */
static void pub_flush(publisher *p) {
    if (!p->up || p->holding || p->unsent == NULL) return;
    if (!atomic_load_explicit(&p->rb->started[p->shard], memory_order_acquire)) { /* pairs with consumer */
        pub_schedule(p, PUB_WAIT_START_MS);
        return;
    }
    if (p->need_load) { /* queued before the EVALSHAs: Redis runs it first */
        const char *argv[] = {"SCRIPT", "LOAD", pub_script};
        size_t len[] = {6, 4, sizeof(pub_script) - 1};
        redisAsyncCommandArgv(p->ac, pub_on_aux_reply, NULL, 3, argv, len);
        p->need_load = 0;
    }
    uint64_t last = 0;
    for (; p->unsent; p->unsent = p->unsent->next) {
        pub_send(p, p->unsent);
        last = p->unsent->seq;
    }
    /* One WAIT covers every write before it on this connection. */
    int n = p->b->cfg->redis_wait_replicas;
    if (n > 0 && last)
        redisAsyncCommand(p->ac, pub_on_wait, (void *)(uintptr_t)last, "WAIT %d %d", n,
                          p->b->cfg->redis_timeout_ms);
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
    worker *w = p->b->workers[p->wid - 1];
    if (it->kind == MSG_CHAT) {
        worker_refuse(w, it->conn_id, WS_CLOSE_INTERNAL, "message cannot be stored");
    } else if (it->wait) {
        join_answer a = {.failed = 1};
        chat_join_answer(w, it->wait, &a);
    }
    free(it);
}

/* Stored history entries ([id, [field, value, ...]], oldest first) as
 * messages of room. Returns the number made; *out is malloc'd. */
static uint32_t pub_entries(const char *rname, size_t room_len, redisReply *r, msg ***out) {
    *out = NULL;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return 0;
    msg **v = malloc(r->elements * sizeof(*v));
    uint32_t n = 0;
    for (size_t i = 0; v && i < r->elements; i++) {
        redisReply *e = r->element[i];
        uint64_t ms, seq;
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 ||
            e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_ARRAY ||
            sscanf(e->element[0]->str, "%" SCNu64 "-%" SCNu64, &ms, &seq) != 2)
            continue;
        redisReply *f = e->element[1], *user = NULL, *text = NULL;
        int64_t ts = 0;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            redisReply *key = f->element[k], *val = f->element[k + 1];
            if (key->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING) continue;
            if (strcmp(key->str, "user") == 0) user = val;
            else if (strcmp(key->str, "text") == 0) text = val;
            else if (strcmp(key->str, "ts") == 0) ts = strtoll(val->str, NULL, 10);
        }
        if (user == NULL || text == NULL) continue;
        msg *m = msg_new(MSG_CHAT, rname, room_len, user->str, user->len, text->str, text->len, ms,
                         seq, ts);
        if (m) v[n++] = m;
    }
    *out = v;
    return n;
}

/* A join's answer from the publish script: {id, at, epoch, count, members,
 * found, messages}. */
static void pub_answer_join(publisher *p, pub_item *it, redisReply *r) {
    worker *w = p->b->workers[p->wid - 1];
    join_answer a = {0};
    jbuf j = {0};
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 7 ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_STRING ||
        sscanf(r->element[1]->str, "%" SCNu64 "-%" SCNu64, &a.at_ms, &a.at_seq) != 2) {
        log_warn("redis: worker %d: a join got an answer it cannot read", p->wid);
        a.failed = 1;
        chat_join_answer(w, it->wait, &a);
        return;
    }
    a.epoch = strtoull(r->element[2]->str, NULL, 16);
    a.count = r->element[3]->type == REDIS_REPLY_INTEGER ? (uint32_t)r->element[3]->integer : 0;
    redisReply *mem = r->element[4];
    JB_LIT(&j, "[");
    for (size_t i = 0; mem->type == REDIS_REPLY_ARRAY && i < mem->elements; i++) {
        if (mem->element[i]->type != REDIS_REPLY_STRING) continue;
        if (j.len > 1) JB_LIT(&j, ",");
        jb_str(&j, mem->element[i]->str, mem->element[i]->len);
    }
    JB_LIT(&j, "]");
    a.members = j.oom ? NULL : j.p;
    a.members_len = j.len;
    a.found = r->element[5]->type == REDIS_REPLY_INTEGER && r->element[5]->integer == 1;
    a.nhist = pub_entries(it->data, it->room_len, r->element[6], &a.hist);
    chat_join_answer(w, it->wait, &a);
    free(a.hist);
    jb_free(&j);
}

/* A Cluster redirect: MOVED (the slot has a new master: the map learns
 * it) or ASK (the slot is moving: the next connection goes to its new
 * node and asks). Everything unanswered goes again there; the script
 * stores each message once. Returns 1 if err was a redirect. */
static int pub_redirected(publisher *p, const char *err) {
    redis_addr to;
    int ask, slot;
    if (cluster_redirect_parse(err, &ask, &slot, &to) < 0) return 0;
    if (to.host[0] == '\0') snprintf(to.host, sizeof(to.host), "%s", p->host); /* "the node you asked" */
    if (ask) {
        p->ask = to;
        p->ask_next = 1;
        atomic_fetch_add_explicit(&p->rb->link.moves, 1, memory_order_relaxed); /* a counter */
    } else {
        redis_link_moved(&p->rb->link, &to, slot);
    }
    p->unsent = p->unreplied = p->head;
    pub_drop(p);
    return 1;
}

/* The answer to WAIT after the messages up to seq: stored for good when
 * enough replicas have them; else they all go again (the script stores
 * none twice) after a backoff, and wait again. */
static void pub_on_wait(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = ac->data;
    redisReply *reply = r;
    uint64_t seq = (uintptr_t)priv;
    if (reply == NULL || p->ac != ac) return;
    if (reply->type == REDIS_REPLY_INTEGER && reply->integer >= p->b->cfg->redis_wait_replicas) {
        while (p->head && p->head->replied && p->head->seq <= seq) free(pub_pop(p));
        return;
    }
    if (p->holding) return; /* a refusal already plans the retry */
    pub_trouble(p, "redis: worker %d: too few replicas have the messages (%s); keeping %d "
                   "messages, retrying", reply->type == REDIS_REPLY_ERROR ? reply->str : "WAIT");
    if (reply->type == REDIS_REPLY_ERROR) pub_redirected(p, reply->str);
    for (pub_item *it = p->head; it; it = it->next) it->replied = 0;
    p->holding = 1;
    p->unsent = p->unreplied = p->head;
    pub_back_off(p);
}

static void pub_on_reply(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = ac->data;
    redisReply *reply = r;
    uint64_t seq = (uintptr_t)priv;
    if (reply == NULL || p->ac != ac) return; /* connection gone: all stays queued */
    if (p->unreplied == NULL || p->unreplied->seq != seq) return; /* stale: sent before a refusal */
    if (reply->type == REDIS_REPLY_ERROR) {
        if (pub_redirected(p, reply->str)) return;
        if (redis_error_lasting(reply->str) && p->unreplied == p->head) {
            pub_abandon_head(p, reply->str);
            return;
        }
        /* An earlier message is missing: it was refused or abandoned and
         * comes again first. Re-sent now, from the head with the head as
         * the oldest, this cannot be refused for order again. */
        if (strncmp(reply->str, "OUTOFORDER", 10) == 0) {
            p->unsent = p->unreplied = p->head;
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
            if (strncmp(reply->str, "READONLY", 8) == 0 || strncmp(reply->str, "CLUSTERDOWN", 11) == 0 ||
                strncmp(reply->str, "MASTERDOWN", 10) == 0)
                redis_link_want_refresh(&p->rb->link); /* a failover: where is the primary? */
            pub_trouble(p, "redis: worker %d: publish refused: %s; keeping %d messages, "
                           "retrying", reply->str);
        }
        p->holding = 1;
        p->unsent = p->unreplied = p->head;
        /* A slot on the move passes within moments: no growing backoff. */
        if (strncmp(reply->str, "TRYAGAIN", 8) == 0) pub_schedule(p, REDIS_BACKOFF_MIN_MS);
        else pub_back_off(p);
        return;
    }
    if (p->troubled) log_info("redis: worker %d: messages stored again", p->wid);
    p->troubled = 0;
    p->backoff_ms = REDIS_BACKOFF_MIN_MS; /* stored: Redis is well */
    pub_item *it = p->unreplied;
    if (it->wait) pub_answer_join(p, it, reply);
    it->wait = NULL;
    if (p->b->cfg->redis_wait_replicas > 0) { /* stored once the replicas have it */
        it->replied = 1;
        p->unreplied = it->next;
    } else {
        free(pub_pop(p));
    }
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
        p->asking = 0;
        redis_link_want_refresh(&p->rb->link);
        pub_back_off(p);
        return;
    }
    if (p->troubled) log_info("redis: worker %d connected again", p->wid);
    p->up = 1;
    p->holding = 0;      /* a refusal on the old connection holds nothing here */
    p->need_load = 1;    /* this Redis may never have seen the script */
    p->unsent = p->unreplied = p->head; /* everything unanswered goes again, in order */
    for (pub_item *it = p->head; it; it = it->next) it->replied = 0;
    pub_flush(p);
}

static void pub_on_disconnect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    if (p->ac != ac) return; /* dropped by us: pub_drop planned the next try */
    p->ac = NULL;            /* hiredis frees it */
    p->up = 0;
    p->asking = 0;
    redis_link_want_refresh(&p->rb->link); /* a failover? */
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
    char ip[256];
    int port;
    if (!p->asking && redis_link_addr(&p->rb->link, p->shard, ip, sizeof(ip), &port) == 0 &&
        (strcmp(ip, p->host) != 0 || port != p->port)) {
        /* A failover the sentinels or the slot map told of: a demoted or
         * restarted primary may still take writes it will lose. */
        log_info("redis: worker %d: %s is served by %s:%d now", p->wid, p->prefix, ip, port);
        pub_drop(p);
    } else if (!p->up && now - p->connect_ms > limit) {
        pub_trouble(p, "redis: worker %d: connect timed out%s; keeping %d messages, retrying", "");
        pub_drop(p);
    } else if (p->up && p->head && p->head != p->unsent && !p->holding &&
               /* a message stored and waiting for WAIT may take its timeout too */
               now - p->head->sent_ms > (p->head->replied ? 2 * limit : limit)) {
        pub_trouble(p, "redis: worker %d: no answer from Redis%s; keeping %d messages, "
                       "reconnecting", "");
        pub_drop(p);
    }
}

static void pub_connect(publisher *p) {
    rbroker *rb = p->rb;
    char ip[256];
    int port;
    if (p->ask_next) { /* redirected for one connection */
        snprintf(ip, sizeof(ip), "%s", p->ask.host);
        port = p->ask.port;
        p->ask_next = 0;
        p->asking = 1;
    } else if (redis_link_addr(&rb->link, p->shard, ip, sizeof(ip), &port) < 0) {
        pub_schedule(p, 100); /* the consumer finds it */
        return;
    }
    snprintf(p->host, sizeof(p->host), "%s", ip);
    p->port = port;
    p->ac = redisAsyncConnect(ip, port);
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
    if (rb->link.db && rb->link.mode != REDIS_CLUSTER)
        redisAsyncCommand(p->ac, pub_on_aux_reply, NULL, "SELECT %d", rb->link.db);
}

int redis_pub_init(broker *b, char *err, size_t errlen) {
    rbroker *rb = b->impl;
    pub_script_sha();
    rb->pubs = calloc((size_t)b->nworkers * (size_t)rb->nshards, sizeof(*rb->pubs));
    if (rb->pubs == NULL) {
        snprintf(err, errlen, "redis broker: out of memory");
        return -1;
    }
    for (int i = 0; i < b->nworkers * rb->nshards; i++) {
        publisher *p = &rb->pubs[i];
        p->b = b;
        p->rb = rb;
        p->wid = i / rb->nshards + 1;
        p->shard = i % rb->nshards;
        p->prefix = rb->prefix[p->shard];
        snprintf(p->key, sizeof(p->key), "%s:pub:%s.%d", p->prefix, rb->node, p->wid);
        snprintf(p->mid, sizeof(p->mid), "%s.%d.", rb->node, p->wid);
        snprintf(p->holder, sizeof(p->holder), "%s.%d", rb->node, p->wid);
        snprintf(p->held_key, sizeof(p->held_key), "%s:held:%s", p->prefix, p->holder);
        snprintf(p->alive_key, sizeof(p->alive_key), "%s:alive:%s", p->prefix, p->holder);
        snprintf(p->holders_key, sizeof(p->holders_key), "%s:holders", p->prefix);
        snprintf(p->epoch_key, sizeof(p->epoch_key), "%s:epoch", p->prefix);
        snprintf(p->channel, sizeof(p->channel), "%s:typing", b->cfg->stream);
    }
    return 0;
}

/* Worker wid's publisher of a shard. */
static publisher *pub_of(broker *b, int wid, int shard) {
    rbroker *rb = b->impl;
    return &rb->pubs[(wid - 1) * rb->nshards + shard];
}

/* ---- presence heartbeat and typing ------------------------------------- */

static void pub_on_alive(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = ac->data;
    redisReply *reply = r;
    (void)priv;
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || p->ac != ac) return;
    /* The heartbeat had lapsed (Redis away longer than presence_ttl, or it
     * lost its data): another node may have swept what this worker holds.
     * Say it again; what is still there stays as it is. */
    if (reply->integer == 0 && p->alive_once) {
        log_info("redis: worker %d: presence heartbeat had lapsed; announcing members again", p->wid);
        chat_presence_reassert(p->b->workers[p->wid - 1]);
    }
    p->alive_once = 1;
}

static void pub_on_alive_tick(evutil_socket_t fd, short what, void *arg) {
    publisher *p = arg;
    (void)fd, (void)what;
    if (!p->up) return;
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%d", p->b->cfg->presence_ttl_ms / 2); /* see redis.h */
    if (p->asking) redisAsyncCommand(p->ac, NULL, NULL, "ASKING");
    const char *argv[] = {"EVAL", alive_script, "2", p->alive_key, p->holders_key, p->holder, ttl};
    size_t len[] = {4, sizeof(alive_script) - 1, 1, strlen(p->alive_key), strlen(p->holders_key),
                    strlen(p->holder), strlen(ttl)};
    redisAsyncCommandArgv(p->ac, pub_on_alive, NULL, 7, argv, len);
}

static void pub_sub_connect(publisher *p);

static void pub_sub_later(publisher *p) {
    struct timeval tv = {1, 0};
    evtimer_add(p->sub_ev, &tv);
}

/* A message on the typing channel: "<holder>\n<conn id>\n<room>\n<user>". */
static void pub_on_sub(redisAsyncContext *ac, void *r, void *priv) {
    publisher *p = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        strcmp(reply->element[0]->str, "message") != 0 || reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *s = reply->element[2]->str, *end = s + reply->element[2]->len;
    const char *f[4];
    size_t fl[4];
    for (int i = 0; i < 4; i++) {
        const char *nl = i < 3 ? memchr(s, '\n', (size_t)(end - s)) : end;
        if (nl == NULL) return;
        f[i] = s;
        fl[i] = (size_t)(nl - s);
        s = nl + (i < 3);
    }
    msg *m = msg_new(MSG_TYPING, f[2], fl[2], f[3], fl[3], "", 0, 0, 0, 0);
    if (m == NULL) return;
    if (fl[0] == strlen(p->holder) && memcmp(f[0], p->holder, fl[0]) == 0) {
        m->origin_wid = (uint16_t)p->wid;
        m->conn_id = strtoull(f[1], NULL, 10);
    }
    chat_deliver(p->b->workers[p->wid - 1], m);
}

static void pub_on_sub_connect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    if (status != REDIS_OK && p->sub == ac) {
        p->sub = NULL; /* hiredis frees it */
        pub_sub_later(p);
    }
}

static void pub_on_sub_disconnect(const redisAsyncContext *ac, int status) {
    publisher *p = ac->data;
    (void)status;
    if (p->sub != ac) return;
    p->sub = NULL;
    pub_sub_later(p);
}

static void pub_on_sub_retry(evutil_socket_t fd, short what, void *arg) {
    (void)fd, (void)what;
    pub_sub_connect(arg);
}

/* Typing comes through one subscription per worker (its shard 0
 * publisher's): in a Cluster a PUBLISH on any node reaches every node's
 * subscribers. */
static void pub_sub_connect(publisher *p) {
    rbroker *rb = p->rb;
    char ip[256];
    int port;
    if (redis_link_addr(&rb->link, p->shard, ip, sizeof(ip), &port) < 0) {
        pub_sub_later(p);
        return;
    }
    redisAsyncContext *ac = redisAsyncConnect(ip, port);
    if (ac == NULL || ac->err) {
        if (ac) redisAsyncFree(ac);
        pub_sub_later(p);
        return;
    }
    p->sub = ac;
    ac->data = p;
    redis_link_tune(&rb->link, ac->c.fd);
    redisLibeventAttach(ac, p->base);
    redisAsyncSetConnectCallback(ac, pub_on_sub_connect);
    redisAsyncSetDisconnectCallback(ac, pub_on_sub_disconnect);
    if (rb->link.pass[0]) {
        if (rb->link.user[0])
            redisAsyncCommand(ac, NULL, NULL, "AUTH %s %s", rb->link.user, rb->link.pass);
        else redisAsyncCommand(ac, NULL, NULL, "AUTH %s", rb->link.pass);
    }
    redisAsyncCommand(ac, pub_on_sub, p, "SUBSCRIBE %s", p->channel);
}

void redis_pub_free(broker *b) {
    rbroker *rb = b->impl;
    free(rb->pubs);
    rb->pubs = NULL;
}

static int pub_attach(broker *b, publisher *p, struct event_base *base) {
    struct timeval watch = {0, PUB_WATCH_MS * 1000};
    p->base = base;
    p->backoff_ms = REDIS_BACKOFF_MIN_MS;
    p->retry_ev = evtimer_new(base, pub_on_retry, p);
    p->watch_ev = event_new(base, -1, EV_PERSIST, pub_on_watch, p);
    p->alive_ev = event_new(base, -1, EV_PERSIST, pub_on_alive_tick, p);
    p->sub_ev = evtimer_new(base, pub_on_sub_retry, p);
    if (p->retry_ev == NULL || p->watch_ev == NULL || p->alive_ev == NULL || p->sub_ev == NULL)
        return -1;
    event_add(p->watch_ev, &watch);
    int beat = b->cfg->presence_ttl_ms / 4; /* see redis.h */
    struct timeval alive = {beat / 1000, (beat % 1000) * 1000};
    event_add(p->alive_ev, &alive);
    pub_connect(p);
    if (p->shard == 0) pub_sub_connect(p);
    return 0;
}

int redis_pub_attach(broker *b, int wid, struct event_base *base) {
    for (int k = 0; k < ((rbroker *)b->impl)->nshards; k++)
        if (pub_attach(b, pub_of(b, wid, k), base) < 0) return -1;
    return 0;
}

static void pub_detach(publisher *p) {
    int left = atomic_load_explicit(&p->queued, memory_order_relaxed);
    if (left) log_warn("redis: worker %d stops with %d messages of %s not stored", p->wid, left,
                       p->prefix);
    if (p->ac) {
        redisAsyncContext *ac = p->ac;
        p->ac = NULL;
        redisAsyncFree(ac); /* callbacks see reply NULL */
    }
    if (p->sub) {
        redisAsyncContext *ac = p->sub;
        p->sub = NULL;
        redisAsyncFree(ac);
    }
    while (p->head) free(pub_pop(p));
    if (p->retry_ev) event_free(p->retry_ev);
    if (p->watch_ev) event_free(p->watch_ev);
    if (p->alive_ev) event_free(p->alive_ev);
    if (p->sub_ev) event_free(p->sub_ev);
    p->retry_ev = p->watch_ev = p->alive_ev = p->sub_ev = NULL;
}

void redis_pub_detach(broker *b, int wid) {
    for (int k = 0; k < ((rbroker *)b->impl)->nshards; k++) pub_detach(pub_of(b, wid, k));
}

/* Typing: published to the channel every worker of every node listens to,
 * as "<holder>\n<conn id>\n<room>\n<user>". Ephemeral: with no connection
 * it is dropped. */
static void pub_typing(publisher *p, const broker_req *q) {
    if (!p->up) return;
    size_t cap = strlen(p->holder) + 24 + q->room_len + q->user_len + 4;
    char *buf = malloc(cap);
    if (buf == NULL) return;
    int n = snprintf(buf, cap, "%s\n%" PRIu64 "\n%.*s\n%.*s", p->holder, q->conn_id,
                     (int)q->room_len, q->room, (int)q->user_len, q->user);
    const char *argv[] = {"PUBLISH", p->channel, buf};
    size_t len[] = {7, strlen(p->channel), (size_t)n};
    redisAsyncCommandArgv(p->ac, NULL, NULL, 3, argv, len);
    free(buf);
}

int64_t redis_pub_publish(broker *b, int wid, const broker_req *q) {
    publisher *p = pub_of(b, wid, broker_room_shard(b, q->room, q->room_len));
    if (q->kind == MSG_TYPING) {
        pub_typing(p, q);
        return 0;
    }
    /* Joins have more room than messages: a reconnect storm brings
     * thousands at once, each as small as its names. A leave is never
     * refused: it undoes a join that was accepted (so there are no more of
     * them than joins), and refusing one would leave a ghost for as long as
     * this worker lives. */
    int64_t limit = (int64_t)b->cfg->publish_queue * (q->kind == MSG_CHAT ? 1 : PUB_JOIN_ROOM);
    if (q->kind != MSG_LEAVE && atomic_load_explicit(&p->queued, memory_order_relaxed) >= limit)
        return -1;
    pub_item *it = malloc(sizeof(*it) + q->room_len + q->user_len + q->text_len);
    if (it == NULL) return -1;
    it->next = NULL;
    it->seq = ++p->seq;
    it->kind = q->kind;
    it->wait = q->wait;
    it->hist = q->hist;
    it->n = q->n;
    it->id_ms = q->id_ms;
    it->id_seq = q->id_seq;
    it->ts = q->ts;
    it->conn_id = q->conn_id;
    it->accepted_ms = clock_ms();
    it->sent_ms = 0;
    it->replied = 0;
    it->room_len = (uint32_t)q->room_len;
    it->user_len = (uint32_t)q->user_len;
    it->text_len = (uint32_t)q->text_len;
    memcpy(it->data, q->room, q->room_len);
    memcpy(it->data + q->room_len, q->user, q->user_len);
    if (q->text_len) memcpy(it->data + q->room_len + q->user_len, q->text, q->text_len);
    if (p->tail) p->tail->next = it;
    else {
        p->head = it;
        atomic_store_explicit(&p->oldest_ms, it->accepted_ms, memory_order_relaxed); /* gauge */
    }
    p->tail = it;
    atomic_fetch_add_explicit(&p->queued, 1, memory_order_relaxed); /* a gauge */
    if (p->unsent == NULL) p->unsent = it;
    if (p->unreplied == NULL) p->unreplied = it;
    pub_flush(p);
    return (int64_t)TICKET(p->shard, it->seq);
}

/* A scroll-back read on its way: the room, for the messages it makes. */
typedef struct pub_read {
    publisher *p;
    void *wait;
    uint32_t n;
    uint16_t room_len;
    char room[];
} pub_read;

static void pub_on_read(redisAsyncContext *ac, void *r, void *priv) {
    pub_read *rd = priv;
    redisReply *reply = r;
    worker *w = rd->p->b->workers[rd->p->wid - 1];
    join_answer a = {0};
    (void)ac;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        a.failed = 1;
    } else {
        a.nhist = pub_entries(rd->room, rd->room_len, reply, &a.hist); /* newest first */
        if (a.nhist > rd->n) { /* the one past the page only tells there are more */
            a.more = 1;
            msg_unref(a.hist[--a.nhist]);
        }
        for (uint32_t i = 0; i < a.nhist / 2; i++) {
            msg *t = a.hist[i];
            a.hist[i] = a.hist[a.nhist - 1 - i];
            a.hist[a.nhist - 1 - i] = t;
        }
    }
    chat_history_answer(w, rd->wait, &a);
    free(a.hist);
    free(rd);
}

int redis_pub_read_history(broker *b, int wid, const broker_req *q) {
    publisher *p = pub_of(b, wid, broker_room_shard(b, q->room, q->room_len));
    if (!p->up || b->cfg->history_max == 0) return -1;
    pub_read *rd = malloc(sizeof(*rd) + q->room_len + 1);
    if (rd == NULL) return -1;
    rd->p = p;
    rd->wait = q->wait;
    rd->n = q->n;
    rd->room_len = (uint16_t)q->room_len;
    memcpy(rd->room, q->room, q->room_len);
    char key[512], end[48], count[24];
    size_t klen = pub_key(key, sizeof(key), p->prefix, "history", q->room, q->room_len);
    if (q->id_ms || q->id_seq) snprintf(end, sizeof(end), "(%" PRIu64 "-%" PRIu64, q->id_ms, q->id_seq);
    else snprintf(end, sizeof(end), "+");
    snprintf(count, sizeof(count), "%u", q->n + 1);
    if (p->asking) redisAsyncCommand(p->ac, NULL, NULL, "ASKING");
    const char *argv[] = {"XREVRANGE", key, end, "-", "COUNT", count};
    size_t len[] = {9, klen, strlen(end), 1, 5, strlen(count)};
    if (redisAsyncCommandArgv(p->ac, pub_on_read, rd, 6, argv, len) != REDIS_OK) {
        free(rd);
        return -1;
    }
    return 0;
}

uint64_t redis_pub_stored(broker *b, int wid, int shard, int *failing) {
    publisher *p = pub_of(b, wid, shard);
    *failing = !p->up || p->holding || p->troubled;
    return p->head ? p->head->seq - 1 : p->seq;
}

int redis_pub_pending_shard(broker *b, int wid, int shard) {
    return atomic_load_explicit(&pub_of(b, wid, shard)->queued, memory_order_relaxed);
}

int redis_pub_pending(broker *b, int wid) {
    int n = 0;
    for (int k = 0; k < ((rbroker *)b->impl)->nshards; k++)
        n += atomic_load_explicit(&pub_of(b, wid, k)->queued, memory_order_relaxed);
    return n;
}

void redis_pub_stats(broker *b, int read_only, uint64_t *queued, int64_t *oldest_ms) {
    rbroker *rb = b->impl;
    int64_t now = clock_ms();
    *queued = 0;
    *oldest_ms = 0;
    for (int i = 0; i < b->nworkers * rb->nshards; i++) {
        /* relaxed: gauges of another thread; each is some recent value */
        *queued += (uint64_t)atomic_load_explicit(&rb->pubs[i].queued, memory_order_relaxed);
        int64_t t = atomic_load_explicit(&rb->pubs[i].oldest_ms, memory_order_relaxed);
        if (read_only && !atomic_load_explicit(&rb->up[rb->pubs[i].shard], memory_order_relaxed))
            continue;
        if (t && now - t > *oldest_ms) *oldest_ms = now - t;
    }
}
