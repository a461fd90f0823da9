/* worker — an event loop thread owning upgraded connections (worker.h). */
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "broker.h"
#include "chat.h"
#include "clock.h"
#include "conn.h"
#include "log.h"
#include "pmd.h"
#include "tlsrec.h"

#define WORKER_RBUF (64 * 1024)
#define WORKER_HANDOFF_RING 4096
#define WORKER_BATCH 4096        /* inbox messages per turn */
#define WORKER_TICK_MS 250
#define WORKER_STOP_TICK_MS 20   /* shutdown phases are checked this often */
#define WORKER_DRAIN_GRACE_MS 1000 /* past drain_time, for a client's last store */

/* Shutdown, in phases (w->stopping): */
enum {
    RUNNING = 0,
    STOP_STORE,   /* clients still served; wait until what they sent is stored */
    STOP_DRAIN,   /* close clients with 1001, in batches over drain_time */
    STOP_FINISH,  /* wait for the last closes and stores, then exit */
};

_Atomic int64_t chatd_clients;

void handoff_free(handoff *h) {
    if (h == NULL) return;
    free(h->extra);
    free(h->room); /* user lives in the same block */
    free(h->claim);
    if (h->ip_count) atomic_fetch_sub_explicit(h->ip_count, 1, memory_order_relaxed); /* count */
    if (h->ssl) SSL_free(h->ssl);
    if (h->rec) tlsrec_clear(h->rec);
    free(h->rec);
    free(h->tls_out);
    free(h);
}

static void worker_on_bell(evutil_socket_t fd, short what, void *arg);
static void worker_on_tick(evutil_socket_t fd, short what, void *arg);
static void worker_on_stop_tick(evutil_socket_t fd, short what, void *arg);

worker *worker_new(int id, const config *cfg, int nacceptors, char *err, size_t errlen) {
    worker *w = calloc(1, sizeof(*w));
    struct event_config *ec = event_config_new();
    if (w == NULL || ec == NULL) goto oom;
    w->id = id;
    w->cfg = cfg;
    w->bell_fd = -1;
    /* Only this worker's thread touches its base: no locks inside libevent. */
    event_config_set_flag(ec, EVENT_BASE_FLAG_NOLOCK);
    w->base = event_base_new_with_config(ec);
    event_config_free(ec);
    ec = NULL;
    w->bell_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->base == NULL || w->bell_fd < 0) {
        snprintf(err, errlen, "worker %d: cannot create event loop: %s", id, strerror(errno));
        worker_free(w);
        return NULL;
    }
    w->bell_ev = event_new(w->base, w->bell_fd, EV_READ | EV_PERSIST, worker_on_bell, w);
    w->tick_ev = event_new(w->base, -1, EV_PERSIST, worker_on_tick, w);
    w->stop_ev = event_new(w->base, -1, EV_PERSIST, worker_on_stop_tick, w);
    w->inbox = ring_new((size_t)cfg->ring_size);
    if ((w->handoffs = calloc((size_t)nacceptors, sizeof(*w->handoffs))) == NULL) goto oom;
    w->nhandoffs = nacceptors;
    for (int k = 0; k < nacceptors; k++)
        if ((w->handoffs[k] = ring_new(WORKER_HANDOFF_RING)) == NULL) goto oom;
    w->rbuf_size = WORKER_RBUF;
    w->rbuf = malloc(w->rbuf_size);
    w->tlsbuf = malloc(WORKER_TLS_RECORD);
    w->tlsout = malloc(WORKER_TLS_RECORD + TLSREC_SEAL_EXTRA);
    w->tls_cx = tlsrec_cx_new();
    w->pmd = pmd_new();
    if (!w->tlsbuf || !w->tlsout || !w->tls_cx || !w->pmd || !w->bell_ev || !w->tick_ev ||
        !w->stop_ev || !w->inbox || !w->rbuf ||
        room_index_init(&w->rooms, (uint32_t)cfg->history_size, (uint64_t)cfg->history_bytes) < 0 ||
        chat_init(w) < 0)
        goto oom;
    struct timeval tick = {0, WORKER_TICK_MS * 1000};
    event_add(w->bell_ev, NULL);
    event_add(w->tick_ev, &tick);
    return w;
oom:
    if (ec) event_config_free(ec);
    snprintf(err, errlen, "worker %d: out of memory", id);
    if (w) worker_free(w);
    return NULL;
}

void worker_free(worker *w) {
    if (w == NULL) return;
    while (w->conns) conn_free(w->conns);
    handoff *h;
    msg *m;
    for (int k = 0; w->handoffs && k < w->nhandoffs; k++) {
        if (w->handoffs[k] == NULL) continue;
        while ((h = ring_pop(w->handoffs[k]))) {
            close(h->fd);
            handoff_free(h);
        }
        ring_free(w->handoffs[k]);
    }
    free(w->handoffs);
    if (w->inbox) {
        while ((m = ring_pop(w->inbox))) msg_unref(m);
        ring_free(w->inbox);
    }
    chat_free(w);
    if (w->rooms.bucket) room_index_free(&w->rooms);
    if (w->bell_ev) event_free(w->bell_ev);
    if (w->tick_ev) event_free(w->tick_ev);
    if (w->stop_ev) event_free(w->stop_ev);
    if (w->base) event_base_free(w->base);
    if (w->bell_fd >= 0) close(w->bell_fd);
    free(w->rbuf);
    free(w->tlsbuf);
    free(w->tlsout);
    tlsrec_cx_free(w->tls_cx);
    pmd_free(w->pmd);
    free(w);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    char name[16];
    snprintf(name, sizeof(name), "worker-%d", w->id);
    log_thread(name);
    if (broker_attach(w->broker, w->id, w->base) < 0)
        log_error("worker %d: cannot attach to the broker", w->id);
    event_base_dispatch(w->base);
    /* release: after this the broker pushes nothing more here, so a worker
     * that drained early cannot block the delivery to the others */
    atomic_store_explicit(&w->done, 1, memory_order_release);
    while (w->conns) conn_free(w->conns);
    broker_detach(w->broker, w->id);
    log_info("worker %d: %llu messages in, %llu frames out (%llu compressed), %llu slow clients "
             "closed, %llu over rate_limit, %llu refused with 1013",
             w->id, (unsigned long long)atomic_load(&w->msgs_in),
             (unsigned long long)atomic_load(&w->frames_out),
             (unsigned long long)atomic_load(&w->zframes_out),
             (unsigned long long)atomic_load(&w->slow_closes),
             (unsigned long long)atomic_load(&w->rate_closes),
             (unsigned long long)atomic_load(&w->busy_closes));
    return NULL;
}

int worker_start(worker *w, struct broker *b) {
    w->broker = b;
    return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void worker_stop(worker *w) {
    /* release: nothing to publish but the flag itself; the bell wakes it */
    atomic_store_explicit(&w->stop_requested, 1, memory_order_release);
    worker_wake(w);
}

void worker_join(worker *w) { pthread_join(w->thread, NULL); }

void worker_wake(worker *w) {
    uint64_t one = 1;
    ssize_t rc = write(w->bell_fd, &one, sizeof(one));
    (void)rc; /* EAGAIN: the counter is saturated, the worker is awake anyway */
}

int worker_handoff(worker *w, int k, handoff *h) {
    int rc = ring_push(w->handoffs[k], h);
    if (rc < 0) return -1;
    if (rc == 1) worker_wake(w);
    return 0;
}

int worker_push(worker *w, msg *m) {
    if (atomic_load_explicit(&w->done, memory_order_acquire)) return -2; /* see worker_main */
    return ring_push(w->inbox, m);
}

void worker_conn_gone(worker *w) {
    atomic_fetch_sub_explicit(&w->nconns, 1, memory_order_relaxed); /* a counter */
    atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
}

void worker_refuse(worker *w, uint64_t conn_id, unsigned code, const char *why) {
    for (conn *c = w->conns; c; c = c->next) {
        if (c->id != conn_id) continue;
        conn_log(LOG_INFO, c, "%s, closing with %u", why, code);
        conn_close(c, code, why);
        conn_flush(c);
        return;
    }
}

static void worker_phase(worker *w, int phase) {
    w->stopping = phase;
    w->phase_ms = clock_ms();
}

static void worker_begin_shutdown(worker *w) {
    log_debug("worker %d: stopping with %u clients, %d messages to store", w->id,
              atomic_load_explicit(&w->nconns, memory_order_relaxed),
              broker_pending(w->broker, w->id));
    worker_phase(w, STOP_STORE);
    struct timeval tv = {0, WORKER_STOP_TICK_MS * 1000};
    event_add(w->stop_ev, &tv);
}

/* Moves the shutdown along; runs every WORKER_STOP_TICK_MS. */
static void worker_on_stop_tick(evutil_socket_t fd, short what, void *arg) {
    worker *w = arg;
    const config *cfg = w->cfg;
    (void)fd, (void)what;
    int64_t now = clock_ms(), in_phase = now - w->phase_ms;
    int pending = broker_pending(w->broker, w->id);
    if (w->stopping == STOP_STORE) {
        /* A load balancer sees /readyz fail and stops sending new clients
         * here before the first client is closed and reconnects. */
        if (in_phase < cfg->drain_delay_ms && w->conns) return;
        if (pending > 0 && in_phase < cfg->drain_delay_ms + cfg->shutdown_timeout_ms) return;
        w->drain_total = atomic_load_explicit(&w->nconns, memory_order_relaxed);
        w->drained = 0;
        worker_phase(w, STOP_DRAIN);
        in_phase = 0;
    }
    if (w->stopping == STOP_DRAIN) {
        /* Close the share of the clients this much of drain_time calls for,
         * so that they reconnect elsewhere spread out, not all at once. */
        uint64_t due = cfg->drain_time_ms > 0 && in_phase < cfg->drain_time_ms
                           ? (uint64_t)w->drain_total * (uint64_t)in_phase / (uint64_t)cfg->drain_time_ms
                           : UINT64_MAX;
        /* A client whose last message is not stored yet is closed once it
         * is, so that it sees its echo first. Past the grace it is closed
         * anyway: with 1001 while storing merely takes time (what it sent
         * is still stored before the worker exits), with 1011 when storing
         * fails, so that a lost message is never hidden behind a 1001. */
        int late = in_phase >= (int64_t)cfg->drain_time_ms + WORKER_DRAIN_GRACE_MS;
        conn *c = w->conns, *next;
        for (; c && w->drained < due; c = next) {
            next = c->next;
            if (c->state != CONN_OPEN) continue;
            int failing,
                stored = broker_sent_stored(w->broker, w->id, c->ticket, c->sent_shards, &failing);
            if (!stored && !late) continue;
            w->drained++;
            if (!stored && failing)
                conn_close(c, WS_CLOSE_INTERNAL, "message not stored");
            else conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
            conn_flush(c);
        }
        for (c = w->conns; c && c->state != CONN_OPEN; c = c->next) {}
        if (c) return; /* some still open */
        worker_phase(w, STOP_FINISH);
        in_phase = 0;
    }
    if ((w->conns == NULL && pending == 0) || in_phase >= cfg->shutdown_timeout_ms) {
        event_base_loopbreak(w->base);
        return;
    }
}
/* Writes the new room entries to every member of every room that got some. */
static void worker_pump_rooms(worker *w) {
    room *r;
    while ((r = room_next_dirty(&w->rooms))) {
        member *mb = r->members, *next;
        for (; mb; mb = next) {
            next = mb->room_next; /* conn_pump may free mb's connection */
            conn_pump(mb->conn);
        }
        room_settle(&w->rooms, r);
    }
}

/* A safe point, between events: connections read w->cfg afresh each time
 * (what they fixed at their start, such as the frame parser's limit, stays
 * theirs). Main keeps every config it published until the threads stop. */
static void worker_reload(worker *w) {
    const config *cur = config_current();
    if (cur != NULL && cur != w->cfg) w->cfg = cur;
}

static void worker_on_bell(evutil_socket_t fd, short what, void *arg) {
    worker *w = arg;
    uint64_t v;
    (void)what;
    worker_reload(w);
    ssize_t rc = read(fd, &v, sizeof(v));
    (void)rc; /* EAGAIN when re-activated by hand below */

    /* acquire: pairs with worker_stop's release */
    if (!w->stopping && atomic_load_explicit(&w->stop_requested, memory_order_acquire))
        worker_begin_shutdown(w);

    /* The inbox first: a connection joins knowing everything delivered
     * before its handoff (the broker's mark of where reading starts). */
    msg *m;
    int n = 0;
    while (n < WORKER_BATCH && (m = ring_pop(w->inbox))) {
        chat_deliver(w, m);
        n++;
    }
    handoff *h;
    for (int k = 0; k < w->nhandoffs; k++) {
        while ((h = ring_pop(w->handoffs[k]))) {
            conn *c = conn_new(w, h);
            handoff_free(h);
            if (c && w->stopping >= STOP_DRAIN) { /* too late to join */
                conn_close(c, WS_CLOSE_GOING_AWAY, "server shutting down");
                conn_flush(c);
            }
        }
    }
    worker_pump_rooms(w);
    /* More waiting: serve the sockets first, then come back. */
    if (n == WORKER_BATCH) event_active(w->bell_ev, EV_READ, 0);
}

static void worker_on_tick(evutil_socket_t fd, short what, void *arg) {
    worker *w = arg;
    (void)fd;
    (void)what;
    worker_reload(w);
    int64_t now = clock_ms(); /* the clock conn.c keeps its deadlines in */
    conn *c = w->conns, *next;
    for (; c; c = next) {
        next = c->next;
        conn_tick(c, now);
    }
}
