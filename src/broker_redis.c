/* broker_redis — Redis Streams as the shared log between nodes: the
 * backend's face towards broker.c. The work is in three files (redis.h):
 * redis_link.c (what connections share), redis_pub.c (the workers'
 * publishing) and redis_consume.c (the consumer thread).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "redis.h"

static void redis_free(broker *b);

static int redis_init(broker *b, char *err, size_t errlen) {
    rbroker *rb = calloc(1, sizeof(*rb));
    if (rb == NULL) {
        snprintf(err, errlen, "redis broker: out of memory");
        return -1;
    }
    b->impl = rb;
    if (redis_link_init(&rb->link, b->cfg->redis_url, b->cfg->redis_timeout_ms, err, errlen) < 0) {
        redis_free(b);
        return -1;
    }
    const config *cfg = b->cfg;
    if (redis_link_route(&rb->link, cfg->shards, cfg->redis_cluster, cfg->redis_sentinel,
                         cfg->redis_master_name, err, errlen) < 0) {
        redis_free(b);
        return -1;
    }
    /* One shard on one Redis keeps the names it always had; otherwise each
     * shard's keys carry its hash tag. */
    rb->nshards = cfg->shards;
    for (int k = 0; k < rb->nshards; k++) {
        char tag[16];
        if (rb->nshards == 1 && !cfg->redis_cluster[0])
            snprintf(rb->prefix[k], sizeof(rb->prefix[k]), "%s", cfg->stream);
        else if (cluster_shard_tag(k, rb->nshards, tag, sizeof(tag)) >= 0)
            snprintf(rb->prefix[k], sizeof(rb->prefix[k]), "%.127s:{%s}", cfg->stream, tag);
    }
    /* redis_password or redis_password_file replaces the URL's password. */
    if (b->cfg->redis_pass[0])
        snprintf(rb->link.pass, sizeof(rb->link.pass), "%s", b->cfg->redis_pass);
    uint64_t node;
    if (getrandom(&node, sizeof(node), 0) != sizeof(node))
        node = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    snprintf(rb->node, sizeof(rb->node), "%016" PRIx64, node);
    uint64_t cand;
    if (getrandom(&cand, sizeof(cand), 0) != sizeof(cand)) cand = node * 0x9E3779B97F4A7C15ULL;
    snprintf(rb->epoch_candidate, sizeof(rb->epoch_candidate), "%016" PRIx64, cand | 1);
    if (redis_pub_init(b, err, errlen) < 0) {
        redis_free(b);
        return -1;
    }
    return 0;
}

static void redis_interrupt(broker *b) { (void)b; /* the consumer looks every 50 ms */ }

static int redis_ready(broker *b, char *why, size_t whylen) {
    rbroker *rb = b->impl;
    char problem[192];
    redis_link_problem(&rb->link, problem, sizeof(problem));
    if (problem[0]) {
        snprintf(why, whylen, "%s", problem);
        return 0;
    }
    /* Every shard down, or none reached yet: the node can do nothing. With
     * some shards read, it serves their rooms: a master lost for good (or
     * for the seconds of its failover) is every node's loss alike, and
     * failing them all would take every room out, not only its shard's.
     * chatd_redis_shards_up tells how many are read. (acquire: pairs with
     * the consumer's release when it fixed a start) */
    if (atomic_load_explicit(&rb->nstarted, memory_order_acquire) == 0) {
        snprintf(why, whylen, "Redis not reached yet: where the stream ends is not known");
        return 0;
    }
    if (atomic_load_explicit(&rb->nup, memory_order_relaxed) == 0) {
        snprintf(why, whylen, "Redis unreachable: messages cannot be read");
        return 0;
    }
    uint64_t queued;
    int64_t oldest;
    redis_pub_stats(b, 1, &queued, &oldest);
    if (oldest > b->cfg->redis_timeout_ms) {
        snprintf(why, whylen, "Redis does not store messages: %" PRIu64 " waiting, the oldest "
                 "for %" PRId64 " ms", queued, oldest);
        return 0;
    }
    return 1;
}

static void redis_stats(broker *b, broker_stats *out) {
    rbroker *rb = b->impl;
    /* relaxed: gauges of the consumer thread */
    out->up = atomic_load_explicit(&rb->nup, memory_order_relaxed) == rb->nshards;
    out->since_ms = atomic_load_explicit(&rb->since_ms, memory_order_relaxed);
    out->read_lag = atomic_load_explicit(&rb->read_lag, memory_order_relaxed);
    out->shards_up = atomic_load_explicit(&rb->nup, memory_order_relaxed);
    out->redirects = atomic_load_explicit(&rb->link.moves, memory_order_relaxed);
    out->route_changes = atomic_load_explicit(&rb->link.failovers, memory_order_relaxed);
    redis_pub_stats(b, 0, &out->queued, &out->oldest_ms);
}

static void redis_free(broker *b) {
    rbroker *rb = b->impl;
    if (rb == NULL) return;
    redis_pub_free(b);
    redis_link_destroy(&rb->link);
    free(rb);
    b->impl = NULL;
}

const broker_ops broker_redis_ops = {
    .name = "redis",
    .init = redis_init,
    .run = redis_consume_run,
    .interrupt = redis_interrupt,
    .attach = redis_pub_attach,
    .detach = redis_pub_detach,
    .publish = redis_pub_publish,
    .read_history = redis_pub_read_history,
    .pending = redis_pub_pending,
    .pending_shard = redis_pub_pending_shard,
    .stored = redis_pub_stored,
    .ready = redis_ready,
    .stats = redis_stats,
    .free = redis_free,
};
