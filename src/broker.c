/* broker — the interface both backends share, and the fan-out into the
 * workers' inbox rings (see broker.h). */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "broker_backend.h"
#include "redis_cluster.h"
#include "log.h"

broker *broker_new(const config *cfg, worker **workers, int nworkers, char *err, size_t errlen) {
    broker *b = calloc(1, sizeof(*b));
    if (b == NULL || (b->wake = calloc((size_t)nworkers, 1)) == NULL) {
        free(b);
        snprintf(err, errlen, "broker: out of memory");
        return NULL;
    }
    b->cfg = cfg;
    b->nshards = cfg->broker == BROKER_REDIS ? cfg->shards : 1;
    b->workers = workers;
    b->nworkers = nworkers;
    b->ops = cfg->broker == BROKER_REDIS ? &broker_redis_ops : &broker_local_ops;
    if (b->ops->init(b, err, errlen) < 0) {
        free(b->wake);
        free(b);
        return NULL;
    }
    return b;
}

int broker_start(broker *b) {
    if (pthread_create(&b->thread, NULL, b->ops->run, b) != 0) return -1;
    b->started = 1;
    return 0;
}

void broker_stop(broker *b) {
    if (!b->started) return;
    /* release: the flag is all there is to see; interrupt wakes the thread */
    atomic_store_explicit(&b->stop, 1, memory_order_release);
    b->ops->interrupt(b);
    pthread_join(b->thread, NULL);
    b->started = 0;
}

void broker_free(broker *b) {
    if (b == NULL) return;
    b->ops->free(b);
    free(b->wake);
    free(b);
}

const char *broker_name(const broker *b) { return b->ops->name; }

void broker_get_stats(broker *b, broker_stats *out) {
    out->delivered = atomic_load_explicit(&b->delivered, memory_order_relaxed); /* a counter */
    out->reconnects = atomic_load_explicit(&b->reconnects, memory_order_relaxed);
    out->lost = atomic_load_explicit(&b->lost, memory_order_relaxed);
    out->oversize = atomic_load_explicit(&b->oversize, memory_order_relaxed);
    out->resets = atomic_load_explicit(&b->resets, memory_order_relaxed);
    out->up = 1;
    out->since_ms = 0;
    out->queued = 0;
    out->oldest_ms = 0;
    out->read_lag = 0;
    out->shards_up = b->nshards;
    out->redirects = out->route_changes = 0;
    if (b->ops->stats) b->ops->stats(b, out);
}

int broker_ready(broker *b, char *why, size_t whylen) {
    if (whylen) why[0] = '\0';
    return b->ops->ready ? b->ops->ready(b, why, whylen) : 1;
}

int broker_attach(broker *b, int wid, struct event_base *base) {
    return b->ops->attach(b, wid, base);
}

void broker_detach(broker *b, int wid) { b->ops->detach(b, wid); }

int64_t broker_publish(broker *b, int wid, const broker_req *r) {
    return b->ops->publish(b, wid, r);
}

int broker_read_history(broker *b, int wid, const broker_req *r) {
    return b->ops->read_history ? b->ops->read_history(b, wid, r) : -1;
}

int broker_pending(broker *b, int wid) { return b->ops->pending ? b->ops->pending(b, wid) : 0; }

int broker_ticket_stored(broker *b, int wid, uint64_t ticket, int *failing) {
    *failing = 0;
    if (b->ops->stored == NULL) return 1;
    return TICKET_SEQ(ticket) <= b->ops->stored(b, wid, TICKET_SHARD(ticket), failing);
}

int broker_sent_stored(broker *b, int wid, uint64_t ticket, uint64_t sent_shards, int *failing) {
    if (!broker_ticket_stored(b, wid, ticket, failing)) return 0;
    for (int k = 0; k < b->nshards && b->ops->pending_shard; k++) {
        if (!(sent_shards >> k & 1) || k == TICKET_SHARD(ticket)) continue;
        if (b->ops->pending_shard(b, wid, k) > 0) {
            int f;
            b->ops->stored(b, wid, k, &f);
            *failing = f;
            return 0;
        }
    }
    return 1;
}

int broker_shards(const broker *b) { return b->nshards; }

int broker_room_shard(const broker *b, const char *name, size_t len) {
    return b->nshards == 1 ? 0 : cluster_room_shard(name, len, b->nshards);
}

void broker_flush_wakes(broker *b) {
    for (int i = 0; i < b->nworkers; i++) {
        if (b->wake[i]) {
            b->wake[i] = 0;
            worker_wake(b->workers[i]);
        }
    }
}

int broker_push_one(broker *b, int wid, msg *m) {
    int rc;
    while ((rc = worker_push(b->workers[wid - 1], m)) == -1) {
        if (atomic_load_explicit(&b->stop, memory_order_acquire)) { /* see broker_stop */
            msg_unref(m);
            return -1;
        }
        broker_flush_wakes(b);
        struct timespec ts = {0, 100 * 1000};
        nanosleep(&ts, NULL);
    }
    if (rc == -2) msg_unref(m); /* that worker has stopped */
    else if (rc == 1) b->wake[wid - 1] = 1;
    return 0;
}

int broker_fanout(broker *b, msg *m) {
    int chat = m->kind == MSG_CHAT; /* m is the workers' once pushed */
    if (b->nworkers > 1) msg_ref(m, (uint32_t)(b->nworkers - 1));
    for (int i = 0; i < b->nworkers; i++) {
        int rc;
        while ((rc = worker_push(b->workers[i], m)) == -1) {
            /* Inbox full: the worker is behind. Wait for it; the message is
             * still held here (and in Redis), so waiting loses nothing. */
            if (atomic_load_explicit(&b->stop, memory_order_acquire)) { /* see broker_stop */
                for (int k = i; k < b->nworkers; k++) msg_unref(m);
                return -1;
            }
            broker_flush_wakes(b);
            struct timespec ts = {0, 100 * 1000};
            nanosleep(&ts, NULL);
        }
        if (rc == -2) msg_unref(m); /* that worker has stopped */
        else if (rc == 1) b->wake[i] = 1;
    }
    if (chat)
        atomic_fetch_add_explicit(&b->delivered, 1, memory_order_relaxed); /* a counter */
    return 0;
}
