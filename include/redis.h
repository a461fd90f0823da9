/* redis — the Redis broker's three parts and the state they share.
 * Private to src/broker_redis.c and src/redis_*.c.
 *
 *   redis_link.c     the connection facts all of them share: the URL, name
 *                    resolution (off the event loops), liveness (keepalive,
 *                    user timeout), backoff, which errors are lasting
 *   redis_pub.c      publishing, on each worker's event loop
 *   redis_consume.c  the consumer thread: reads the stream, fans out
 *
 * Order and exactly-once live in Redis, not in any node's memory: every
 * publisher (one per worker per process) numbers its messages 1, 2, 3 ...
 * and a server-side script appends message n only when n - 1 is the last
 * one of that publisher stored, answering "stored already" for a repeat.
 * A publisher may then re-send anything it has no answer for.
 *
 * Presence: each worker is a holder ("<node>.<worker>") of its users'
 * presence. It renews its heartbeat key every presence_ttl / 4, with a
 * lifetime of presence_ttl / 2; every node sweeps holders whose heartbeat
 * lapsed every presence_ttl / 4. So a dead worker's members leave at most
 * presence_ttl / 2 + presence_ttl / 4 after its last heartbeat, within
 * presence_ttl, and a live one has presence_ttl / 4 of slack per beat.
 */
#ifndef CHATD_REDIS_H
#define CHATD_REDIS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "broker_backend.h"
#include "clock.h"
#include "redis_cluster.h"

#define REDIS_BACKOFF_MIN_MS 50
#define REDIS_BACKOFF_MAX_MS 2000

/* Where the Redis of each shard is: one server (redis_url), the primary
 * Sentinel names, or the master of the shard's slot in a Cluster. */
enum { REDIS_SINGLE = 0, REDIS_SENTINEL, REDIS_CLUSTER };

struct redisContext;

typedef struct redis_link {
    int mode;                    /* REDIS_SINGLE, _SENTINEL, _CLUSTER */
    int nshards;
    int slot[SHARDS_MAX];        /* cluster: the slot of each shard's keys */
    redis_addr seed[REDIS_MAX_SEEDS]; /* cluster seeds, or the sentinels */
    int nseeds;
    char master_name[128];       /* sentinel */
    int good;                    /* consumer thread: the sentinel, */
    redis_addr good_node;        /*   or cluster node, that answered last */
    _Atomic int stale;           /* a redirect, a failover: find the route again */
    _Atomic uint64_t moves;      /* MOVED and ASK followed (relaxed: a counter) */
    _Atomic uint64_t failovers;  /* times the route changed (relaxed: a counter) */
    char host[256];
    int port;
    int db;
    char user[128];
    char pass[256];
    int timeout_ms;              /* redis_timeout */
    pthread_mutex_t lock;        /* guards ip and problem (not the message path) */
    char ip[256];                /* single, sentinel: the address in use, "" */
    int ip_port;                 /*   until known, and its port */
    cluster_map *map;            /* cluster: the slot map, NULL until known */
    /* A lasting error an operator must fix, or "", one per side, so that
     * each side clears only its own (relaxed flags: checked before the
     * lock, so a store clears nothing it need not). */
    char problem[2][192];
    int64_t problem_ms[2];       /* monotonic: when last seen */
    _Atomic int has_problem[2];
} redis_link;

/* A problem not seen again for this long is no longer reported: nothing
 * may have tried (no client could get in to publish) since it was fixed. */
#define REDIS_PROBLEM_TTL_MS 10000

enum { REDIS_PROBLEM_READ = 0, REDIS_PROBLEM_WRITE = 1 };

/* Parses redis://[[user]:password@]host[:port][/db]. Main thread. The
 * error never repeats the password. Returns 0 or -1 with err. */
int redis_link_init(redis_link *l, const char *url, int timeout_ms, char *err, size_t errlen);
void redis_link_destroy(redis_link *l);
/* Main thread, after init: how many shards, and where to find Redis:
 * cluster seeds or sentinels ("host:port, ..."; both empty: the URL's
 * host). 0, or -1 with err. */
int redis_link_route(redis_link *l, int nshards, const char *cluster, const char *sentinel,
                     const char *master_name, char *err, size_t errlen);
/* Consumer thread: resolves host (may block). 0, or -1 with err. */
int redis_link_resolve(redis_link *l, char *err, size_t errlen);
/* Consumer thread (may block): finds where each shard's Redis is now: the
 * URL's host resolved, the primary the sentinels name, or the slot map
 * of the cluster. On failure the last route known stays. 0, or -1. */
int redis_link_refresh(redis_link *l, char *err, size_t errlen);
/* Any thread: the address of shard's Redis; -1 while there is none. */
int redis_link_addr(redis_link *l, int shard, char *ip, size_t iplen, int *port);
/* Any thread: a MOVED redirect names the new master of a slot. */
void redis_link_moved(redis_link *l, const redis_addr *to, int slot);
/* Any thread: the route seems wrong (a redirect, READONLY, a lost
 * connection): the consumer thread refreshes it soon. */
void redis_link_want_refresh(redis_link *l);
/* Any thread (blocking, so never a worker): a connection to host:port,
 * authenticated (and the db selected outside a cluster); NULL with err. */
struct redisContext *redis_link_dial(redis_link *l, const char *host, int port, int timeout_ms,
                                     char *err, size_t errlen);
/* Any thread: sets TCP keepalive and the user timeout on a Redis socket, so
 * that a path that went silent fails within about timeout_ms. */
void redis_link_tune(const redis_link *l, int fd);
/* Any thread: records or clears (text NULL) the lasting problem of one
 * side (REDIS_PROBLEM_READ: the consumer; _WRITE: the publishers). Returns
 * 1 if it changed (the caller logs once). */
int redis_link_set_problem(redis_link *l, int side, const char *text);
/* Any thread: the problem of either side seen in the last
 * REDIS_PROBLEM_TTL_MS, "" if none. */
void redis_link_problem(redis_link *l, char *out, size_t outlen);
/* 1 if a Redis error reply is a configuration error that retrying will
 * not cure (WRONGTYPE, NOAUTH, WRONGPASS, NOPERM). */
int redis_error_lasting(const char *err);
/* The next backoff after ms: doubled, capped, with up to 25 % jitter. */
int redis_backoff(int ms);

struct publisher;

typedef struct rbroker {
    redis_link link;
    int nshards;
    char prefix[SHARDS_MAX][160]; /* each shard's keys start so: "<stream>",
                                    or "<stream>:{<tag>}" (the tag puts them
                                    in one Cluster slot) */
    char node[17];               /* random, hex: this process's publisher id */
    char epoch_candidate[17];    /* random, hex: the publish script makes a
                                    new epoch from its first half and the
                                    time when Redis has none */
    struct publisher *pubs;      /* per worker, per shard: [(wid-1)*nshards+k] */
    /* Consumer state others read (relaxed unless said). */
    _Atomic uint8_t started[SHARDS_MAX]; /* the consumer fixed the shard's
                                    start id (release) */
    _Atomic int nstarted;        /* shards started */
    _Atomic int nup;             /* shards the consumer reads */
    _Atomic uint8_t up[SHARDS_MAX]; /* which */
    _Atomic int64_t since_ms;    /* wall ms when all-up last changed */
    _Atomic uint64_t read_lag;   /* entries after last_id at the last checks */
} rbroker;

/* redis_pub.c: the publishing side of broker_ops (worker threads). */
int redis_pub_init(broker *b, char *err, size_t errlen);
void redis_pub_free(broker *b);
int redis_pub_attach(broker *b, int wid, struct event_base *base);
void redis_pub_detach(broker *b, int wid);
int64_t redis_pub_publish(broker *b, int wid, const broker_req *q);
int redis_pub_read_history(broker *b, int wid, const broker_req *q);
int redis_pub_pending(broker *b, int wid);
int redis_pub_pending_shard(broker *b, int wid, int shard);
uint64_t redis_pub_stored(broker *b, int wid, int shard, int *failing);
/* Any thread: messages not yet stored, and the age of the oldest (ms);
 * read_only: only of the shards the consumer reads now (a shard whose
 * Redis is away is not a reason to call the node unready: see
 * redis_ready). */
void redis_pub_stats(broker *b, int read_only, uint64_t *queued, int64_t *oldest_ms);

/* redis_consume.c: the consumer thread's body. */
void *redis_consume_run(void *b);

#endif
