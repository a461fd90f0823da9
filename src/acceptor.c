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
    size_t res_off;              /* response bytes written */
    uint8_t *extra;              /* bytes behind the request */
    size_t extra_len;
    uint8_t ip[16];              /* the peer's address, for per_ip */
    ipcount *ip_slot;
    struct pending *next, *prev;
    char peer[64];
} pending;

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
    pending *pendings;           /* newest first */
    pending *oldest;             /* the list's tail */
    int npending;
    uint64_t next_id;
    ipcount *per_ip;             /* NULL unless max_clients_per_ip */
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

static int64_t acc_now(acceptor *a) {
    struct timeval tv;
    event_base_gettimeofday_cached(a->base, &tv);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static void pending_free(pending *p) {
    acceptor *a = p->a;
    event_del(&p->ev);
    if (p->ssl) SSL_free(p->ssl);
    if (p->fd >= 0) close(p->fd);
    hs_request_free(p->req);
    free(p->res);
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
    char *names = malloc(ulen + rlen + 2);
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
    h->fd = p->fd;
    h->ssl = p->ssl;
    p->ssl = NULL;
    h->id = p->id;
    h->extra = p->extra;
    h->extra_len = p->extra_len;
    if (p->ip_slot) {
        h->ip_count = &p->ip_slot->n;
        atomic_fetch_add_explicit(h->ip_count, 1, memory_order_relaxed); /* a counter */
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

/* Writes the response; then hands the connection over, or drains it. */
static void pending_respond(pending *p) {
    hs_result *res = p->res;
    while (p->res_off < res->response_len) {
        ssize_t n = pending_io(p, (uint8_t *)res->response + p->res_off,
                               res->response_len - p->res_off, 1);
        if (pending_again(p, n)) return;
        p->res_off += (size_t)n;
    }
    if (res->upgrade) {
        pending_handoff(p);
        return;
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

static void pending_judge(pending *p, int rc, const uint8_t *buf, size_t len, size_t used) {
    acceptor *a = p->a;
    p->res = malloc(sizeof(*p->res));
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
            p->ip_slot = ip_slot(a->per_ip, p->ip);
            /* relaxed: workers only ever lower it; a stale value errs safe */
            if (p->ip_slot && atomic_load_explicit(&p->ip_slot->n, memory_order_relaxed) >=
                                  a->cfg->max_clients_per_ip)
                hs_error_response(p->res, 429, "too many connections from your address");
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
    hs_request_free(p->req);
    p->req = NULL;
    if (!p->res->upgrade)
        log_info("conn %llu: %s refused with %d: %s", (unsigned long long)p->id, p->peer,
                 p->res->status, p->res->reason ? p->res->reason : "");
    pending_respond(p);
}

static void pending_on_event(evutil_socket_t fd, short what, void *arg) {
    pending *p = arg;
    uint8_t buf[4096];
    if (what & EV_TIMEOUT) {
        if (!p->draining)
            log_info("conn %llu: %s handshake timeout", (unsigned long long)p->id, p->peer);
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

acceptor *acceptor_new(const config *cfg, tls *t, worker **workers, int nworkers,
                       int64_t max_clients, char *err, size_t errlen) {
    acceptor *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "acceptor: out of memory");
        return NULL;
    }
    a->cfg = cfg;
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
