/* acceptor — accepts, parses the HTTP request under limits, answers it,
 * and hands upgraded connections to the least loaded worker.
 *
 * A connection here is a `pending`: its fd, one event (read or write, with
 * the handshake deadline as the event's timeout), the request parser and,
 * once answered, the response. Nothing on this thread blocks.
 */
#include "acceptor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/thread.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "broker.h"
#include "clock.h"
#include "handshake.h"
#include "log.h"
#include "net.h"
#include "tls.h"

#define ACCEPT_BURST 64          /* accepts per wake-up */
#define DRAIN_MS 1000            /* after a refusal: wait for the peer's EOF */
#define EMFILE_PAUSE_MS 100

typedef struct ipcount ipcount;

typedef struct pending {
    struct event ev;
    struct acceptor *a;
    int fd;
    SSL *ssl;                    /* wss: the session, else NULL */
    uint8_t handshaking;         /* wss: TLS handshake not done yet */
    uint8_t draining;            /* refusal sent: read until EOF, then close */
    uint64_t id;
    int64_t deadline_ms;
    hs_request *req;
    hs_result *res;              /* set once the request is judged */
    char *out;                   /* malloc'd response replacing res's (metrics) */
    size_t out_len;
    size_t res_off;              /* response bytes written */
    uint8_t *extra;              /* bytes behind the request */
    size_t extra_len;
    uint8_t ip[16];              /* the peer's address, for per_ip */
    ipcount *ip_slot;            /* set once counted there; the handoff takes it */
    struct pending *next, *prev;
    char peer[64];
} pending;

/* The statuses /metrics counts one by one; anything else is "other". */
static const int counted_status[] = {101, 200, 400, 401, 403, 404, 405, 426, 429, 431, 503};
#define NSTATUS (sizeof counted_status / sizeof counted_status[0])

typedef struct listener {
    struct acceptor *a;
    int fd;
    int tls;                     /* 1: wss listener */
    struct event *ev;
} listener;

struct acceptor {
    const config *cfg;
    tls *tls;                    /* NULL without tls_listen */
    worker **workers;
    int nworkers;
    unsigned rr;
    int64_t max_clients;
    struct event_base *base;
    listener ls[2];              /* ws, and wss when configured */
    int nls;
    struct event *resume_ev;     /* re-enables accept after EMFILE */
    pthread_t thread;
    int started;
    _Atomic int draining;        /* main → acceptor: refuse new clients */
    pending *pendings;           /* newest first */
    pending *oldest;             /* the list's tail */
    int npending;
    uint64_t next_id;
    ipcount *per_ip;             /* NULL unless max_clients_per_ip */
    broker *broker;              /* for its counters */
    /* Counters: bumped and read (by /metrics) on the acceptor thread only. */
    uint64_t n_status[NSTATUS + 1]; /* answers by status; the last: other */
    uint64_t n_timeouts;         /* handshake_timeout passed */
    uint64_t n_tls_failed;       /* TLS handshake failed */
    uint64_t n_evicted;          /* closed to stay within max_pending */
};

/* Clients per IP address: an insert-only table the acceptor fills and
 * workers decrement through the pointer each connection keeps. A slot whose
 * count is 0 is held by no connection, so the acceptor may give it to
 * another address. */
#define IP_SLOTS 65536
#define IP_PROBES 64

struct ipcount {
    uint8_t key[16];             /* IPv4-mapped or IPv6; acceptor only */
    _Atomic int n;               /* upgraded clients from this address */
};

static void ip_key(const struct sockaddr_storage *ss, uint8_t key[16]) {
    memset(key, 0, 16);
    if (ss->ss_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    }
}

/* The slot counting key's clients, or NULL when the table is too full
 * around it (then that address goes unlimited rather than refused). */
static ipcount *ip_slot(ipcount *t, const uint8_t key[16]) {
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++) h = (h ^ key[i]) * 16777619u;
    ipcount *free_slot = NULL;
    for (int i = 0; i < IP_PROBES; i++) {
        ipcount *s = &t[(h + (uint32_t)i) & (IP_SLOTS - 1)];
        if (memcmp(s->key, key, 16) == 0) return s;
        /* relaxed: a stale non-zero only makes us skip a free slot */
        if (free_slot == NULL && atomic_load_explicit(&s->n, memory_order_relaxed) == 0)
            free_slot = s;
    }
    if (free_slot) memcpy(free_slot->key, key, 16);
    return free_slot;
}

/* Monotonic: handshake deadlines must not move with the wall clock. */
static int64_t acc_now(acceptor *a) {
    (void)a;
    return clock_ms();
}

static void pending_free(pending *p) {
    acceptor *a = p->a;
    event_del(&p->ev);
    if (p->ssl) SSL_free(p->ssl);
    if (p->fd >= 0) close(p->fd);
    if (p->ip_slot) /* counted, never handed over */
        atomic_fetch_sub_explicit(&p->ip_slot->n, 1, memory_order_relaxed); /* a count */
    hs_request_free(p->req);
    free(p->res);
    free(p->out);
    free(p->extra);
    if (p->prev) p->prev->next = p->next;
    else a->pendings = p->next;
    if (p->next) p->next->prev = p->prev;
    else a->oldest = p->prev;
    a->npending--;
    free(p);
}

static void pending_on_event(evutil_socket_t fd, short what, void *arg);

/* Waits for `what` on p until its deadline. */
static void pending_wait(pending *p, short what) {
    int64_t left = p->deadline_ms - acc_now(p->a);
    if (left < 1) left = 1;
    struct timeval tv = {left / 1000, (left % 1000) * 1000};
    event_del(&p->ev);
    event_assign(&p->ev, p->a->base, p->fd, what, pending_on_event, p);
    event_add(&p->ev, &tv);
}

static worker *acc_pick_worker(acceptor *a) {
    /* least loaded, ties broken round-robin */
    worker *best = NULL;
    uint32_t best_n = UINT32_MAX;
    for (int k = 0; k < a->nworkers; k++) {
        worker *w = a->workers[(a->rr + (unsigned)k) % (unsigned)a->nworkers];
        uint32_t n = atomic_load_explicit(&w->nconns, memory_order_relaxed); /* a hint */
        if (n < best_n) best = w, best_n = n;
    }
    a->rr++;
    return best;
}

static void pending_handoff(pending *p) {
    acceptor *a = p->a;
    hs_result *res = p->res;
    size_t ulen = strlen(res->username), rlen = strlen(res->room);
    handoff *h = calloc(1, sizeof(*h));
    char *names = malloc(ulen + rlen + 2 + res->response_len);
    if (h == NULL || names == NULL) {
        free(h);
        free(names);
        pending_free(p);
        return;
    }
    memcpy(names, res->room, rlen + 1);
    memcpy(names + rlen + 1, res->username, ulen + 1);
    h->room = names;
    h->user = names + rlen + 1;
    h->reply = names + rlen + ulen + 2;
    memcpy(h->reply, res->response, res->response_len);
    h->reply_len = res->response_len;
    h->fd = p->fd;
    h->ssl = p->ssl;
    p->ssl = NULL;
    h->id = p->id;
    h->extra = p->extra;
    h->extra_len = p->extra_len;
    if (p->ip_slot) { /* counted at the judgement: h owns the count now */
        h->ip_count = &p->ip_slot->n;
        p->ip_slot = NULL;
    }
    worker *w = acc_pick_worker(a);
    atomic_fetch_add_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
    if (worker_handoff(w, h) < 0) {
        log_warn("conn %llu: worker %d is not taking connections, dropping",
                 (unsigned long long)p->id, w->id);
        atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
        p->extra = NULL; /* h owns it (and the TLS session) now */
        handoff_free(h); /* gives back the per-address count; p closes the fd */
        pending_free(p);
        return;
    }
    log_debug("conn %llu: %s upgraded as %s in %s, to worker %d", (unsigned long long)p->id,
              p->peer, res->username, res->room, w->id);
    p->fd = -1;      /* given away whole */
    p->extra = NULL;
    pending_free(p);
}

#define IO_AGAIN_READ -2
#define IO_AGAIN_WRITE -3

/* One read or write on the plain or TLS connection: bytes moved, 0 at end
 * of stream, -1 on error, or IO_AGAIN_READ/IO_AGAIN_WRITE to wait. */
static ssize_t pending_io(pending *p, uint8_t *buf, size_t len, int writing) {
    if (p->ssl) {
        int n = writing ? SSL_write(p->ssl, buf, (int)len) : SSL_read(p->ssl, buf, (int)len);
        if (n > 0) return n;
        switch (SSL_get_error(p->ssl, n)) {
        case SSL_ERROR_WANT_READ: return IO_AGAIN_READ;
        case SSL_ERROR_WANT_WRITE: return IO_AGAIN_WRITE;
        case SSL_ERROR_ZERO_RETURN: return 0;
        default: ERR_clear_error(); return -1;
        }
    }
    for (;;) {
        ssize_t n = writing ? write(p->fd, buf, len) : read(p->fd, buf, len);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return writing ? IO_AGAIN_WRITE : IO_AGAIN_READ;
        return -1;
    }
}

/* Waits as pending_io asked; frees p on end or error. Returns 1 if it
 * waits or freed, 0 if n is a byte count to use. */
static int pending_again(pending *p, ssize_t n) {
    if (n > 0) return 0;
    if (n == IO_AGAIN_READ) pending_wait(p, EV_READ);
    else if (n == IO_AGAIN_WRITE) pending_wait(p, EV_WRITE);
    else pending_free(p);
    return 1;
}

/* Hands an upgrade over; writes any other response, then drains. The 101
 * is the worker's to write, after the connection has joined its room: a
 * client that has its 101 is in the room, so nothing sent after that can
 * miss it (written here, it raced the handoff). */
static void pending_respond(pending *p) {
    hs_result *res = p->res;
    if (res->upgrade) {
        pending_handoff(p);
        return;
    }
    char *out = p->out ? p->out : res->response;
    size_t out_len = p->out ? p->out_len : res->response_len;
    while (p->res_off < out_len) {
        ssize_t n = pending_io(p, (uint8_t *)out + p->res_off, out_len - p->res_off, 1);
        if (pending_again(p, n)) return;
        p->res_off += (size_t)n;
    }
    /* Refused or answered: half-close and let the client read the answer
     * before the socket goes (closing with unread input would reset it). */
    if (p->ssl) {
        SSL_shutdown(p->ssl); /* close_notify, best effort */
        ERR_clear_error();
    }
    shutdown(p->fd, SHUT_WR);
    p->draining = 1;
    p->deadline_ms = acc_now(p->a) + DRAIN_MS;
    pending_wait(p, EV_READ);
}

/* Appends to a fixed buffer; *len stays within cap - 1 however much is
 * asked (the caller sizes cap for the whole text). */
static void put(char *buf, size_t cap, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void put(char *buf, size_t cap, size_t *len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *len, cap - *len, fmt, ap);
    va_end(ap);
    if (n > 0) *len = *len + (size_t)n >= cap ? cap - 1 : *len + (size_t)n;
}

/* Bytes of /metrics: a fixed part and a line per worker. */
#define METRICS_FIXED 6144
#define METRICS_PER_WORKER 64

/* The answer to GET /metrics, in Prometheus' text format, or NULL when out
 * of memory. Counters of other threads are relaxed loads: each number is
 * exact for some recent moment, and the set is not a snapshot. */
static char *acc_metrics(acceptor *a, size_t *out_len) {
    size_t n = 0, cap = METRICS_FIXED + METRICS_PER_WORKER * (size_t)a->nworkers;
    char *body = malloc(cap), *out = malloc(cap + 256);
    if (body == NULL || out == NULL) {
        free(body);
        free(out);
        return NULL;
    }
    uint64_t in = 0, frames = 0, slow = 0, rate = 0, busy = 0;
    for (int i = 0; i < a->nworkers; i++) {
        worker *w = a->workers[i];
        in += atomic_load_explicit(&w->msgs_in, memory_order_relaxed);
        frames += atomic_load_explicit(&w->frames_out, memory_order_relaxed);
        slow += atomic_load_explicit(&w->slow_closes, memory_order_relaxed);
        rate += atomic_load_explicit(&w->rate_closes, memory_order_relaxed);
        busy += atomic_load_explicit(&w->busy_closes, memory_order_relaxed);
    }
    broker_stats bs;
    broker_get_stats(a->broker, &bs);

#define ONE(name, type, help, v) \
    put(body, cap, &n, "# HELP " name " " help "\n# TYPE " name " " type "\n" name " %llu\n", \
        (unsigned long long)(v))
    ONE("chatd_clients", "gauge", "WebSocket clients connected to this node.",
        atomic_load_explicit(&chatd_clients, memory_order_relaxed));
    ONE("chatd_max_clients", "gauge", "Clients this node takes (max_clients and open files).",
        a->max_clients);
    put(body, cap, &n, "# HELP chatd_worker_clients WebSocket clients per worker thread.\n"
                       "# TYPE chatd_worker_clients gauge\n");
    for (int i = 0; i < a->nworkers; i++)
        put(body, cap, &n, "chatd_worker_clients{worker=\"%d\"} %u\n", a->workers[i]->id,
            (unsigned)atomic_load_explicit(&a->workers[i]->nconns, memory_order_relaxed));
    ONE("chatd_pending_handshakes", "gauge", "Connections not upgraded yet.", a->npending);
    put(body, cap, &n, "# HELP chatd_http_responses_total HTTP answers by status (101: upgraded).\n"
                       "# TYPE chatd_http_responses_total counter\n");
    for (size_t i = 0; i <= NSTATUS; i++) {
        char code[8] = "other";
        if (i < NSTATUS) snprintf(code, sizeof code, "%d", counted_status[i]);
        put(body, cap, &n, "chatd_http_responses_total{status=\"%s\"} %llu\n", code,
            (unsigned long long)a->n_status[i]);
    }
    put(body, cap, &n, "# HELP chatd_handshake_failures_total Connections closed before an answer.\n"
                       "# TYPE chatd_handshake_failures_total counter\n"
                       "chatd_handshake_failures_total{reason=\"timeout\"} %llu\n"
                       "chatd_handshake_failures_total{reason=\"tls\"} %llu\n"
                       "chatd_handshake_failures_total{reason=\"max_pending\"} %llu\n",
        (unsigned long long)a->n_timeouts, (unsigned long long)a->n_tls_failed,
        (unsigned long long)a->n_evicted);
    ONE("chatd_messages_received_total", "counter", "Text messages received from clients.", in);
    ONE("chatd_messages_delivered_total", "counter",
        "Messages in the shared order fanned out on this node.", bs.delivered);
    ONE("chatd_frames_sent_total", "counter", "Message frames written to clients.", frames);
    put(body, cap, &n, "# HELP chatd_clients_closed_total Clients closed by a limit.\n"
                       "# TYPE chatd_clients_closed_total counter\n"
                       "chatd_clients_closed_total{reason=\"max_output_buffer\"} %llu\n"
                       "chatd_clients_closed_total{reason=\"rate_limit\"} %llu\n"
                       "chatd_clients_closed_total{reason=\"publish_queue\"} %llu\n",
        (unsigned long long)slow, (unsigned long long)rate, (unsigned long long)busy);
    ONE("chatd_redis_reconnects_total", "counter",
        "Times the Redis consumer came back after a loss.", bs.reconnects);
    ONE("chatd_messages_lost_total", "counter",
        "Stream entries trimmed before this node read them.", bs.lost);
#undef ONE

    int h = snprintf(out, 256,
                     "HTTP/1.1 200 OK\r\n"
                     "Content-Type: text/plain; version=0.0.4\r\n"
                     "Connection: close\r\n"
                     "Content-Length: %zu\r\n"
                     "\r\n",
                     n);
    memcpy(out + h, body, n);
    free(body);
    *out_len = (size_t)h + n;
    return out;
}

static void count_status(acceptor *a, int status) {
    size_t i = 0;
    while (i < NSTATUS && counted_status[i] != status) i++;
    a->n_status[i]++;
}

static void pending_judge(pending *p, int rc, const uint8_t *buf, size_t len, size_t used) {
    acceptor *a = p->a;
    p->res = calloc(1, sizeof(*p->res));
    if (p->res == NULL) {
        pending_free(p);
        return;
    }
    if (rc == HS_ERROR) {
        int status = hs_request_status(p->req);
        hs_error_response(p->res, status,
                          status == 431 ? "request head too large" : "malformed request");
    } else {
        hs_respond(p->req, a->cfg, p->res);
        if (p->res->upgrade &&
            atomic_load_explicit(&chatd_clients, memory_order_relaxed) >= a->max_clients)
            hs_error_response(p->res, 503, "server full");
        if (p->res->upgrade && a->per_ip) {
            ipcount *s = ip_slot(a->per_ip, p->ip);
            /* relaxed: workers only ever lower it; a stale value errs safe */
            if (s && atomic_load_explicit(&s->n, memory_order_relaxed) >= a->cfg->max_clients_per_ip) {
                hs_error_response(p->res, 429, "too many connections from your address");
            } else if (s) { /* counted now, so no other address takes the slot */
                atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed); /* a count */
                p->ip_slot = s;
            }
        }
    }
    if (p->res->upgrade && used < len) {
        p->extra_len = len - used;
        p->extra = malloc(p->extra_len);
        if (p->extra == NULL) {
            pending_free(p);
            return;
        }
        memcpy(p->extra, buf + used, p->extra_len);
    }
    if (p->res->metrics && (p->out = acc_metrics(a, &p->out_len)) == NULL) {
        pending_free(p);
        return;
    }
    count_status(a, p->res->status);
    hs_request_free(p->req);
    p->req = NULL;
    if (!p->res->upgrade && p->res->status != 200)
        log_info("conn %llu: %s refused with %d: %s", (unsigned long long)p->id, p->peer,
                 p->res->status, p->res->reason ? p->res->reason : "");
    pending_respond(p);
}

static void pending_on_event(evutil_socket_t fd, short what, void *arg) {
    pending *p = arg;
    uint8_t buf[4096];
    if (what & EV_TIMEOUT) {
        if (!p->draining) {
            log_info("conn %llu: %s handshake timeout", (unsigned long long)p->id, p->peer);
            p->a->n_timeouts++;
        }
        pending_free(p);
        return;
    }
    if (p->draining) { /* raw bytes, TLS or not: they are thrown away */
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) pending_wait(p, EV_READ);
        else pending_free(p);
        return;
    }
    if (p->handshaking) {
        int rc = SSL_do_handshake(p->ssl);
        if (rc != 1) {
            int e = SSL_get_error(p->ssl, rc);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                pending_wait(p, e == SSL_ERROR_WANT_READ ? EV_READ : EV_WRITE);
                return;
            }
            char why[160] = "connection closed";
            unsigned long ec = ERR_peek_last_error();
            if (ec) ERR_error_string_n(ec, why, sizeof(why));
            ERR_clear_error();
            log_info("conn %llu: %s TLS handshake failed: %s", (unsigned long long)p->id,
                     p->peer, why);
            p->a->n_tls_failed++;
            pending_free(p);
            return;
        }
        p->handshaking = 0;
    }
    if (p->res) { /* writing the response */
        pending_respond(p);
        return;
    }
    /* Bounded: the parser gives up past max_header_bytes. */
    for (;;) {
        ssize_t n = pending_io(p, buf, sizeof(buf), 0);
        if (pending_again(p, n)) return;
        size_t used = 0;
        int rc = hs_feed(p->req, buf, (size_t)n, &used);
        if (rc != HS_MORE) {
            pending_judge(p, rc, buf, (size_t)n, used);
            return;
        }
        /* The rest of a TLS record read whole is in the session, not the
         * socket: no readable event would come for it. */
        if (p->ssl == NULL || SSL_pending(p->ssl) == 0) {
            pending_wait(p, EV_READ);
            return;
        }
    }
}

static void acc_on_accept(evutil_socket_t lfd, short what, void *arg) {
    listener *l = arg;
    acceptor *a = l->a;
    (void)what;
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: pause accepting rather than spin. */
                log_warn("accept: %s; pausing accepts for %d ms", strerror(errno),
                         EMFILE_PAUSE_MS);
                for (int k = 0; k < a->nls; k++) event_del(a->ls[k].ev);
                struct timeval tv = {0, EMFILE_PAUSE_MS * 1000};
                evtimer_add(a->resume_ev, &tv);
            }
            return; /* EAGAIN, ECONNABORTED, ...: nothing more now */
        }
        pending *p = calloc(1, sizeof(*p));
        hs_request *req = hs_request_new((size_t)a->cfg->max_header_bytes);
        if (p == NULL || req == NULL) {
            free(p);
            hs_request_free(req);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        p->a = a;
        p->fd = fd;
        p->id = ++a->next_id;
        p->req = req;
        net_format_addr((struct sockaddr *)&ss, p->peer, sizeof(p->peer));
        ip_key(&ss, p->ip);
        if (l->tls) {
            p->ssl = tls_session(a->tls, fd);
            if (p->ssl == NULL) {
                hs_request_free(req);
                free(p);
                close(fd);
                continue;
            }
            p->handshaking = 1;
        }
        p->deadline_ms = acc_now(a) + a->cfg->handshake_timeout_ms;
        event_assign(&p->ev, a->base, fd, EV_READ, pending_on_event, p);
        /* At the cap the oldest handshake goes: a flood of half-open
         * connections pushes out its own, an honest client finishes. */
        if (a->npending >= a->cfg->max_pending) {
            log_info("conn %llu: %s closed: %d handshakes pending", (unsigned long long)a->oldest->id,
                     a->oldest->peer, a->npending);
            pending_free(a->oldest);
            a->n_evicted++;
        }
        p->next = a->pendings;
        if (a->pendings) a->pendings->prev = p;
        else a->oldest = p;
        a->pendings = p;
        a->npending++;
        /* The request is usually there already: try before waiting. */
        pending_on_event(fd, EV_READ, p);
    }
}

static void acc_on_resume(evutil_socket_t fd, short what, void *arg) {
    acceptor *a = arg;
    (void)fd;
    (void)what;
    for (int k = 0; k < a->nls; k++) event_add(a->ls[k].ev, NULL);
}

acceptor *acceptor_new(const config *cfg, tls *t, broker *b, worker **workers, int nworkers,
                       int64_t max_clients, char *err, size_t errlen) {
    acceptor *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "acceptor: out of memory");
        return NULL;
    }
    a->cfg = cfg;
    a->broker = b;
    a->workers = workers;
    a->nworkers = nworkers;
    a->max_clients = max_clients;
    a->tls = t;
    if (cfg->max_clients_per_ip > 0 && (a->per_ip = calloc(IP_SLOTS, sizeof(ipcount))) == NULL) {
        snprintf(err, errlen, "acceptor: out of memory");
        goto fail;
    }
    a->ls[0].fd = a->ls[1].fd = -1;
    a->base = event_base_new(); /* locking on: main breaks its loop */
    if (a->base == NULL || (a->resume_ev = evtimer_new(a->base, acc_on_resume, a)) == NULL) {
        snprintf(err, errlen, "acceptor: cannot create event loop");
        goto fail;
    }
    for (int k = 0; k < (t ? 2 : 1); k++) {
        listener *l = &a->ls[k];
        l->a = a;
        l->tls = k == 1;
        l->fd = k == 0 ? net_listen(cfg->bind, cfg->port, err, errlen)
                       : net_listen(cfg->tls_bind, cfg->tls_port, err, errlen);
        if (l->fd < 0) goto fail;
        a->nls++;
        l->ev = event_new(a->base, l->fd, EV_READ | EV_PERSIST, acc_on_accept, l);
        if (l->ev == NULL) {
            snprintf(err, errlen, "acceptor: out of memory");
            goto fail;
        }
        event_add(l->ev, NULL);
    }
    return a;
fail:
    acceptor_free(a);
    return NULL;
}

static void *acc_main(void *arg) {
    acceptor *a = arg;
    log_thread("acceptor");
    event_base_dispatch(a->base);
    return NULL;
}

int acceptor_start(acceptor *a) {
    if (pthread_create(&a->thread, NULL, acc_main, a) != 0) return -1;
    a->started = 1;
    return 0;
}

void acceptor_drain(acceptor *a) {
    /* relaxed: a lone flag; the next request judged sees it soon enough */
    atomic_store_explicit(&a->draining, 1, memory_order_relaxed);
}

void acceptor_stop(acceptor *a) {
    if (!a->started) return;
    event_base_loopbreak(a->base); /* thread-safe: evthread_use_pthreads */
    pthread_join(a->thread, NULL);
    a->started = 0;
}

void acceptor_free(acceptor *a) {
    if (a == NULL) return;
    while (a->pendings) pending_free(a->pendings);
    for (int k = 0; k < 2; k++) {
        if (a->ls[k].ev) event_free(a->ls[k].ev);
        if (a->ls[k].fd >= 0) close(a->ls[k].fd);
    }
    if (a->resume_ev) event_free(a->resume_ev);
    if (a->base) event_base_free(a->base);
    free(a->per_ip);
    free(a);
}
