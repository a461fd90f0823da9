/* broker_backend — what a broker backend (local, redis) provides, and the
 * state broker.c keeps for all of them. Private to src/broker*.c.
 */
#ifndef CHATD_BROKER_BACKEND_H
#define CHATD_BROKER_BACKEND_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "broker.h"

typedef struct broker_ops {
    const char *name;
    /* main thread: allocate b->impl; 0 or -1 with err */
    int (*init)(broker *b, char *err, size_t errlen);
    /* the broker thread's body; returns when b->stop is set */
    void *(*run)(void *b);
    /* main thread: wake the broker thread so it sees b->stop */
    void (*interrupt)(broker *b);
    /* worker thread wid */
    int (*attach)(broker *b, int wid, struct event_base *base);
    void (*detach)(broker *b, int wid);
    int64_t (*publish)(broker *b, int wid, const broker_req *r);
    /* worker thread wid: see broker_read_history (NULL: no stored history) */
    int (*read_history)(broker *b, int wid, const broker_req *r);
    /* worker thread wid: its messages not yet stored (NULL: none ever wait) */
    int (*pending)(broker *b, int wid);
    /* worker thread wid: its messages of shard not stored yet (NULL: none) */
    int (*pending_shard)(broker *b, int wid, int shard);
    /* worker thread wid: every ticket of shard up to this sequence is
     * stored (NULL: all are); *failing set when storing does not work now */
    uint64_t (*stored)(broker *b, int wid, int shard, int *failing);
    /* any thread: see broker_ready */
    int (*ready)(broker *b, char *why, size_t whylen);
    /* any thread: fills the backend's part of out (queued, oldest_ms, ...) */
    void (*stats)(broker *b, broker_stats *out);
    /* main thread, after the threads have stopped */
    void (*free)(broker *b);
} broker_ops;

struct broker {
    const config *cfg;
    int nshards;                 /* 1, or cfg->shards with Redis */
    worker **workers;
    int nworkers;
    pthread_t thread;
    int started;
    _Atomic int stop;            /* main → broker thread: finish */
    uint8_t *wake;               /* broker thread: worker i needs its bell */
    /* Counters the broker thread bumps and /metrics reads (relaxed: each is
     * a lone number, ordered with nothing). */
    _Atomic uint64_t delivered;  /* messages fanned out to the workers */
    _Atomic uint64_t reconnects; /* redis: consumer connected again */
    _Atomic uint64_t lost;       /* redis: entries trimmed before being read */
    _Atomic uint64_t oversize;   /* redis: entries over max_message, refused */
    _Atomic uint64_t resets;     /* redis: the stream came back empty */
    const broker_ops *ops;
    void *impl;
};

extern const broker_ops broker_local_ops;
extern const broker_ops broker_redis_ops;

#endif
