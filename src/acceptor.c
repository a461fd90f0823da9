/* acceptor — accepts, parses the HTTP request under limits, answers it,
 * and hands upgraded connections to the least loaded worker.
 *
 * Several acceptor threads (acceptor_threads) share the listening sockets:
 * whichever is free takes the next connection from the kernel's one queue
 * and keeps it until the handoff, so TLS handshakes run on every core. A
 * connection here is a `pending` of one thread: its fd, one event (read or
 * write, with the handshake deadline as the event's timeout), the request
 * parser and, once answered, the response. Nothing on these threads
 * blocks. What the threads share is in `acceptor`: the sockets, the
 * per-address counts (under a lock), the count of handshakes against
 * max_pending and the ids (atomics); each thread's counters are atomics
 * that /metrics, answered by any thread, adds up.
 */
#include "acceptor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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
#include "proxy.h"
#include "tls.h"
#include "tlsrec.h"
#include "version.h"

#define ACCEPT_BURST 64          /* accepts per wake-up */
#define DRAIN_MS 1000            /* after a refusal: wait for the peer's EOF */
#define EMFILE_PAUSE_MS 100
/* At max_pending a handshake that has moved no bytes for this long may be
 * closed to make room: long enough for a healthy client on a slow link to
 * send its next flight, short enough that a flood of silent connections
 * cycles through quickly while the kernel's listen queue holds the rest. */
#define IDLE_GRACE_MS 1000
/* After TLS handshakes, once none has been in progress for this long, the
 * heap is given back to the system (malloc_trim): each handshake allocates
 * and frees some 50 KB, and the holes it leaves between the long-lived
 * connections would otherwise stay resident, about 3 KiB per client. Not
 * sooner: a trim in the middle of a burst costs thousands of madvise calls,
 * each a TLB shootdown on every core. */
#define TRIM_IDLE_MS 1000

typedef struct ipcount ipcount;
typedef struct acc_thread acc_thread;

/* Before the HTTP request (or the TLS handshake) a connection may owe us
 * a PROXY header, and on the TLS listener its first byte tells TLS from a
 * plain HTTP request sent there by mistake. */
enum {
    PRE_NONE,  /* the request (or TLS) comes next */
    PRE_PROXY, /* proxy_protocol: a PROXY header comes first */
    PRE_SNIFF, /* TLS listener: is it TLS at all? */
};

typedef struct pending {
    struct event ev;
    acc_thread *a;               /* the thread that owns it */
    int fd;
    SSL *ssl;                    /* wss: OpenSSL's session (the handshake, or
                                    a TLS 1.2 one), else NULL */
    tlsrec *rec;                 /* wss: a TLS 1.3 session after its
                                    handshake (tls_detach), else NULL */
    uint8_t *tls_out;            /* rec: sealed bytes the kernel has not
                                    taken yet, owed before anything else */
    size_t tls_out_len, tls_out_off;
    uint8_t handshaking;         /* wss: TLS handshake not done yet */
    uint8_t draining;            /* refusal sent: read until EOF, then close */
    uint64_t id;
    int64_t deadline_ms;
    int64_t last_ms;             /* accepted, or last moved bytes */
    hs_request *req;
    hs_result *res;              /* set once the request is judged */
    char *out;                   /* malloc'd response replacing res's (metrics) */
    size_t out_len;
    size_t res_off;              /* response bytes written */
    uint8_t *extra;              /* bytes behind the request */
    size_t extra_len;
    uint8_t prelude;             /* PRE_*: what comes before the request */
    uint16_t port;               /* the client's port; 0: not known */
    uint16_t plen;               /* bytes of a PROXY header read so far */
    uint8_t *pbuf;               /* them (malloc'd while incomplete) */
    uint8_t ip[16];              /* the client's address (the peer's, or
                                    what a trusted proxy said), for per_ip */
    ipcount *ip_slot;            /* set once counted there; the handoff takes it */
    uint8_t client_counted;      /* counted in chatd_clients at the judgement;
                                    the handoff takes it */
    struct pending *next, *prev;
    char peer[64];
} pending;

/* The statuses /metrics counts one by one; anything else is "other". */
static const int counted_status[] = {101, 200, 304, 400, 401, 403, 404, 405, 426, 429, 431, 503};
#define NSTATUS (sizeof counted_status / sizeof counted_status[0])

/* One thread's event on one of the shared listening sockets. */
typedef struct listener {
    acc_thread *a;
    int fd;                      /* the acceptor's: shared, not owned */
    int tls;                     /* 1: wss listener */
    struct event *ev;
} listener;

/* One acceptor thread: its loop, its handshakes, its counters. */
struct acc_thread {
    struct acceptor *acc;        /* what the threads share */
    int idx;                     /* 0..nthreads-1: its handoff ring at each worker */
    const config *cfg;
    unsigned rr;
    int64_t max_clients;         /* clients cfg and open files let in */
    struct event_base *base;
    tlsrec_cx *cx;               /* this thread's ciphers for tlsrec */
    listener ls[2];              /* ws, and wss when configured */
    struct event *resume_ev;     /* re-enables accept after EMFILE */
    struct event *cap_ev;        /* at max_pending: when the least active
                                    handshake passes IDLE_GRACE_MS */
    struct event *trim_ev;       /* TRIM_IDLE_MS after its last handshake */
    int64_t last_done_ms;        /* when its last handshake ended */
    int listening;               /* the listeners' events are added */
    int at_cap;                  /* accepting paused at max_pending */
    pthread_t thread;
    int started;
    pending *pendings;           /* most recently active first */
    pending *oldest;             /* the list's tail: the longest idle */
    int npending;                /* this thread's */
    /* Counters: bumped by this thread, read by any (for /metrics). */
    _Atomic uint64_t n_status[NSTATUS + 1]; /* answers by status; the last: other */
    _Atomic uint64_t n_timeouts; /* handshake_timeout passed */
    _Atomic uint64_t n_tls_failed; /* TLS handshake failed */
    _Atomic uint64_t n_evicted;  /* closed to stay within max_pending */
    _Atomic uint64_t n_cap_pauses; /* times accepting paused at max_pending */
    _Atomic uint64_t n_proxy_refused; /* proxy_protocol: no valid header, or
                                    an untrusted peer */
    char why[240];               /* scratch: the broker's reason, for the
                                    answer being judged (reason points here) */
};

struct acceptor {
    tls *tls;                    /* NULL without tls_listen */
    worker **workers;
    int nworkers;
    int64_t ceiling;             /* clients open files allow */
    int lfd[2];                  /* the listening sockets: ws, and wss */
    int nls;
    _Atomic int draining;        /* main → acceptors: refuse new clients */
    _Atomic int npending;        /* handshakes of all threads, for max_pending */
    _Atomic uint64_t next_id;    /* the last connection id given */
    _Atomic uint32_t tls_since_trim; /* TLS handshakes since the last trim */
    pthread_mutex_t ip_mu;       /* guards the keys of per_ip (the counts
                                    are atomics, lowered by the workers) */
    ipcount *per_ip;             /* always counted: a reload may set the limit */
    broker *broker;              /* for its counters */
    int nthreads;
    acc_thread *threads;
};

static void bump(_Atomic uint64_t *counter) {
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed); /* a counter */
}

/* Clients per IP address: an insert-only table the acceptor threads fill
 * (under ip_mu) and workers decrement through the pointer each connection
 * keeps. A slot whose count is 0 is held by no connection, so an acceptor
 * thread may give it to another address. */
#define IP_SLOTS 65536
#define IP_PROBES 64

struct ipcount {
    uint8_t key[16];             /* IPv4-mapped or IPv6; under ip_mu */
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

/* Adds or removes the listeners' events. */
static void acc_listen(acc_thread *a, int on) {
    if (a->listening == on) return;
    for (int k = 0; k < a->acc->nls; k++) {
        if (on) event_add(a->ls[k].ev, NULL);
        else event_del(a->ls[k].ev);
    }
    a->listening = on;
}

static void acc_resume_at_cap(acc_thread *a) {
    a->at_cap = 0;
    evtimer_del(a->cap_ev);
    acc_listen(a, 1);
}

/* Moves p to the front of the list: it just moved bytes. */
static void pending_touch(pending *p) {
    acc_thread *a = p->a;
    p->last_ms = clock_ms();
    if (a->pendings == p) return;
    p->prev->next = p->next; /* p is not the head, so it has a prev */
    if (p->next) p->next->prev = p->prev;
    else a->oldest = p->prev;
    p->prev = NULL;
    p->next = a->pendings;
    a->pendings->prev = p;
    a->pendings = p;
}

static void pending_free(pending *p) {
    acc_thread *a = p->a;
    event_del(&p->ev);
    if (p->ssl) SSL_free(p->ssl);
    if (p->rec) tlsrec_clear(p->rec);
    free(p->rec);
    free(p->tls_out);
    if (p->fd >= 0) close(p->fd);
    if (p->ip_slot) /* counted, never handed over */
        atomic_fetch_sub_explicit(&p->ip_slot->n, 1, memory_order_relaxed); /* a count */
    if (p->client_counted) /* likewise */
        atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
    hs_request_free(p->req);
    free(p->res);
    free(p->out);
    free(p->extra);
    free(p->pbuf);
    if (p->prev) p->prev->next = p->next;
    else a->pendings = p->next;
    if (p->next) p->next->prev = p->prev;
    else a->oldest = p->prev;
    a->npending--;
    /* relaxed: a count; acc_take_slot holds it to max_pending */
    int total = atomic_fetch_sub_explicit(&a->acc->npending, 1, memory_order_relaxed) - 1;
    free(p);
    a->last_done_ms = clock_ms();
    if (a->npending == 0 && !evtimer_pending(a->trim_ev, NULL) &&
        atomic_load_explicit(&a->acc->tls_since_trim, memory_order_relaxed) > 0) { /* a count */
        struct timeval tv = {TRIM_IDLE_MS / 1000, (TRIM_IDLE_MS % 1000) * 1000};
        evtimer_add(a->trim_ev, &tv);
    }
    /* A slot is free: take the next connection from the kernel's queue. */
    if (a->at_cap && total < a->cfg->max_pending) acc_resume_at_cap(a);
}

static void pending_on_event(evutil_socket_t fd, short what, void *arg);

/* Logs a line about p: "conn ID ADDR USER:" as a worker's lines about its
 * connections, with USER "-" until the request names one. */
static void pending_log_write(int level, const pending *p, const char *user, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void pending_log_write(int level, const pending *p, const char *user, const char *fmt, ...) {
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    log_conn lc = {(unsigned long long)p->id, p->peer, user && *user ? user : "-"};
    log_conn_fields(level, &lc, NULL, 0, "%s", text);
}
#define pending_log(level, p, user, ...)                                                           \
    do {                                                                                           \
        if ((level) >= log_level) pending_log_write((level), (p), (user), __VA_ARGS__);            \
    } while (0)

/* Waits for `what` on p until its deadline. */
static void pending_wait(pending *p, short what) {
    int64_t left = p->deadline_ms - clock_ms();
    if (left < 1) left = 1;
    struct timeval tv = {left / 1000, (left % 1000) * 1000};
    event_del(&p->ev);
    event_assign(&p->ev, p->a->base, p->fd, what, pending_on_event, p);
    event_add(&p->ev, &tv);
}

static worker *acc_pick_worker(acc_thread *a) {
    /* least loaded, ties broken round-robin */
    worker *best = NULL;
    uint32_t best_n = UINT32_MAX;
    for (int k = 0; k < a->acc->nworkers; k++) {
        worker *w = a->acc->workers[(a->rr + (unsigned)k) % (unsigned)a->acc->nworkers];
        uint32_t n = atomic_load_explicit(&w->nconns, memory_order_relaxed); /* a hint */
        if (n < best_n) best = w, best_n = n;
    }
    a->rr++;
    return best;
}

static void pending_handoff(pending *p) {
    acc_thread *a = p->a;
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
    h->json = res->json;
    h->deflate = res->deflate;
    h->has_room = res->has_room;
    h->history = res->history;
    h->has_since = res->has_since;
    h->since_ms = res->since_ms;
    h->since_seq = res->since_seq;
    memcpy(h->epoch, res->epoch, sizeof(h->epoch));
    if (res->rooms.present) { /* the list ends with an empty name */
        const char *q = res->rooms.list;
        while (*q) q += strlen(q) + 1;
        size_t n = (size_t)(q - res->rooms.list) + 1;
        if ((h->claim = malloc(n)) == NULL) {
            free(h);
            free(names);
            pending_free(p);
            return;
        }
        memcpy(h->claim, res->rooms.list, n);
    }
    h->fd = p->fd;
    h->ssl = p->ssl;
    p->ssl = NULL;
    h->rec = p->rec;
    p->rec = NULL;
    if (p->tls_out) { /* what is left of it */
        h->tls_out_len = p->tls_out_len - p->tls_out_off;
        memmove(p->tls_out, p->tls_out + p->tls_out_off, h->tls_out_len);
        h->tls_out = p->tls_out;
        p->tls_out = NULL;
    }
    h->id = p->id;
    memcpy(h->ip, p->ip, sizeof h->ip);
    h->port = p->port;
    h->exp = res->exp;
    h->extra = p->extra;
    h->extra_len = p->extra_len;
    if (p->ip_slot) { /* counted at the judgement: h owns the count now */
        h->ip_count = &p->ip_slot->n;
        p->ip_slot = NULL;
    }
    worker *w = acc_pick_worker(a);
    if (worker_handoff(w, a->idx, h) < 0) {
        pending_log(LOG_WARN, p, res->username, "worker %d is not taking connections, dropping",
                    w->id);
        p->extra = NULL; /* h owns it (and the TLS session) now */
        handoff_free(h); /* gives back the per-address count; p closes the fd */
        pending_free(p);
        return;
    }
    pending_log(LOG_DEBUG, p, res->username, "upgraded in %s, to worker %d", res->room, w->id);
    p->client_counted = 0; /* the worker's connection has the count now */
    p->fd = -1;      /* given away whole */
    p->extra = NULL;
    pending_free(p);
}

#define IO_AGAIN_READ -2
#define IO_AGAIN_WRITE -3

/* One write(2): bytes taken, 0 when the kernel takes none now, -1 on
 * error. */
static ssize_t write_some(int fd, const uint8_t *buf, size_t len) {
    for (;;) {
        ssize_t n = write(fd, buf, len);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
    }
}

/* rec: writes what is owed. 1 when all is out, IO_AGAIN_WRITE, or -1. */
static ssize_t pending_write_owed(pending *p) {
    ssize_t n = write_some(p->fd, p->tls_out + p->tls_out_off, p->tls_out_len - p->tls_out_off);
    if (n < 0) return -1;
    p->tls_out_off += (size_t)n;
    if (p->tls_out_off < p->tls_out_len) return IO_AGAIN_WRITE;
    free(p->tls_out);
    p->tls_out = NULL;
    p->tls_out_len = p->tls_out_off = 0;
    return 1;
}

/* rec: keeps sealed bytes the kernel did not take. 0, or -1. */
static int pending_owe(pending *p, const uint8_t *buf, size_t len) {
    if ((p->tls_out = malloc(len)) == NULL) return -1;
    memcpy(p->tls_out, buf, len);
    p->tls_out_len = len;
    p->tls_out_off = 0;
    return 0;
}

/* rec: one read's worth of application data into buf (room for a whole
 * record, TLSREC_MAX_RECORD), behind what the session held. */
static ssize_t pending_read_rec(pending *p, uint8_t *buf, size_t len) {
    size_t have = tlsrec_held(p->rec), plain;
    const char *why;
    ssize_t n;
    if (p->rec->closed) return 0;
    do
        n = read(p->fd, buf + have, len - have);
    while (n < 0 && errno == EINTR);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN_READ : -1;
    if (n == 0) return 0;
    tlsrec_unhold(p->rec, buf);
    int rc = tlsrec_open(p->rec, p->a->cx, buf, have + (size_t)n, &plain, &why);
    if (rc == TLSREC_ERROR) {
        pending_log(LOG_INFO, p, NULL, "TLS: %s", why);
        return -1;
    }
    /* After a close_notify nothing more comes: the request is whole now
     * or never. */
    if (rc == TLSREC_CLOSED) return (ssize_t)plain;
    return plain > 0 ? (ssize_t)plain : IO_AGAIN_READ; /* a record still to come */
}

/* rec: seals up to one record of buf and writes it. Returns the bytes of
 * buf taken (the part the kernel refused is owed), IO_AGAIN_WRITE while
 * earlier bytes are owed, or -1. */
static ssize_t pending_write_rec(pending *p, const uint8_t *buf, size_t len) {
    uint8_t out[TLSREC_MAX_PLAIN + TLSREC_SEAL_EXTRA];
    if (p->tls_out) {
        ssize_t n = pending_write_owed(p);
        if (n != 1) return n;
    }
    if (len > TLSREC_MAX_PLAIN) len = TLSREC_MAX_PLAIN;
    size_t sealed = tlsrec_seal(p->rec, p->a->cx, out, buf, len);
    ssize_t n = sealed ? write_some(p->fd, out, sealed) : -1;
    if (n < 0 || ((size_t)n < sealed && pending_owe(p, out + n, sealed - (size_t)n) < 0)) return -1;
    return (ssize_t)len;
}

/* One read or write on the plain or TLS connection: bytes moved, 0 at end
 * of stream, -1 on error, or IO_AGAIN_READ/IO_AGAIN_WRITE to wait. A read
 * on a rec connection needs room for a whole record. */
static ssize_t pending_io(pending *p, uint8_t *buf, size_t len, int writing) {
    if (p->rec) return writing ? pending_write_rec(p, buf, len) : pending_read_rec(p, buf, len);
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
    if (p->tls_out && pending_again(p, pending_write_owed(p))) return;
    /* Refused or answered: half-close and let the client read the answer
     * before the socket goes (closing with unread input would reset it). */
    if (p->ssl) {
        SSL_shutdown(p->ssl); /* close_notify, best effort */
        ERR_clear_error();
    } else if (p->rec) {
        uint8_t alert[TLSREC_SEAL_EXTRA];
        size_t n = tlsrec_close_notify(p->rec, p->a->cx, alert);
        if (n) write_some(p->fd, alert, n); /* best effort */
    }
    shutdown(p->fd, SHUT_WR);
    p->draining = 1;
    p->deadline_ms = clock_ms() + DRAIN_MS;
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
#define METRICS_FIXED 9216
#define METRICS_PER_WORKER 64

/* The acceptor threads' counters, added up. */
typedef struct acc_counts {
    uint64_t status[NSTATUS + 1], timeouts, tls_failed, evicted, cap_pauses, proxy_refused;
} acc_counts;

static uint64_t get(_Atomic uint64_t *counter) {
    return atomic_load_explicit(counter, memory_order_relaxed); /* a counter */
}

static void acc_count(acceptor *acc, acc_counts *c) {
    memset(c, 0, sizeof(*c));
    for (int t = 0; t < acc->nthreads; t++) {
        acc_thread *a = &acc->threads[t];
        for (size_t i = 0; i <= NSTATUS; i++) c->status[i] += get(&a->n_status[i]);
        c->timeouts += get(&a->n_timeouts);
        c->tls_failed += get(&a->n_tls_failed);
        c->evicted += get(&a->n_evicted);
        c->cap_pauses += get(&a->n_cap_pauses);
        c->proxy_refused += get(&a->n_proxy_refused);
    }
}

/* The answer to GET /metrics, in Prometheus' text format, or NULL when out
 * of memory. Counters of other threads are relaxed loads: each number is
 * exact for some recent moment, and the set is not a snapshot. */
static char *acc_metrics(acc_thread *a, size_t *out_len) {
    acceptor *acc = a->acc;
    size_t n = 0, cap = METRICS_FIXED + METRICS_PER_WORKER * (size_t)acc->nworkers;
    char *body = malloc(cap), *out = malloc(cap + 256);
    if (body == NULL || out == NULL) {
        free(body);
        free(out);
        return NULL;
    }
    uint64_t in = 0, zin = 0, frames = 0, zframes = 0, deflates = 0, slow = 0, rate = 0, busy = 0;
    for (int i = 0; i < acc->nworkers; i++) {
        worker *w = acc->workers[i];
        in += atomic_load_explicit(&w->msgs_in, memory_order_relaxed);
        zin += atomic_load_explicit(&w->zmsgs_in, memory_order_relaxed);
        frames += atomic_load_explicit(&w->frames_out, memory_order_relaxed);
        zframes += atomic_load_explicit(&w->zframes_out, memory_order_relaxed);
        deflates += atomic_load_explicit(&w->deflates, memory_order_relaxed);
        slow += atomic_load_explicit(&w->slow_closes, memory_order_relaxed);
        rate += atomic_load_explicit(&w->rate_closes, memory_order_relaxed);
        busy += atomic_load_explicit(&w->busy_closes, memory_order_relaxed);
    }
    broker_stats bs;
    broker_get_stats(acc->broker, &bs);
    acc_counts ac;
    acc_count(acc, &ac);

#define ONE(name, type, help, v) \
    put(body, cap, &n, "# HELP " name " " help "\n# TYPE " name " " type "\n" name " %llu\n", \
        (unsigned long long)(v))
    put(body, cap, &n, "# HELP chatd_build_info The version of this node (the label).\n"
                       "# TYPE chatd_build_info gauge\nchatd_build_info{version=\"%s\"} 1\n",
        chatd_version);
    ONE("chatd_clients", "gauge", "WebSocket clients connected to this node.",
        atomic_load_explicit(&chatd_clients, memory_order_relaxed));
    ONE("chatd_max_clients", "gauge", "Clients this node takes (max_clients and open files).",
        a->max_clients);
    put(body, cap, &n, "# HELP chatd_worker_clients WebSocket clients per worker thread.\n"
                       "# TYPE chatd_worker_clients gauge\n");
    for (int i = 0; i < acc->nworkers; i++)
        put(body, cap, &n, "chatd_worker_clients{worker=\"%d\"} %u\n", acc->workers[i]->id,
            (unsigned)atomic_load_explicit(&acc->workers[i]->nconns, memory_order_relaxed));
    ONE("chatd_pending_handshakes", "gauge", "Connections not upgraded yet.",
        atomic_load_explicit(&acc->npending, memory_order_relaxed));
    put(body, cap, &n, "# HELP chatd_listen_backlog Connections waiting in the kernel's accept "
                       "queue.\n# TYPE chatd_listen_backlog gauge\n");
    for (int k = 0; k < acc->nls; k++) {
        long q = net_accept_queue(acc->lfd[k]);
        put(body, cap, &n, "chatd_listen_backlog{listener=\"%s\"} %ld\n",
            a->ls[k].tls ? "wss" : "ws", q < 0 ? 0 : q);
    }
    ONE("chatd_accept_pauses_total", "counter",
        "Times accepting paused with max_pending handshakes in progress.",
        ac.cap_pauses);
    put(body, cap, &n, "# HELP chatd_http_responses_total HTTP answers by status (101: upgraded).\n"
                       "# TYPE chatd_http_responses_total counter\n");
    for (size_t i = 0; i <= NSTATUS; i++) {
        char code[8] = "other";
        if (i < NSTATUS) snprintf(code, sizeof code, "%d", counted_status[i]);
        put(body, cap, &n, "chatd_http_responses_total{status=\"%s\"} %llu\n", code,
            (unsigned long long)ac.status[i]);
    }
    put(body, cap, &n, "# HELP chatd_handshake_failures_total Connections closed before an answer.\n"
                       "# TYPE chatd_handshake_failures_total counter\n"
                       "chatd_handshake_failures_total{reason=\"timeout\"} %llu\n"
                       "chatd_handshake_failures_total{reason=\"tls\"} %llu\n"
                       "chatd_handshake_failures_total{reason=\"max_pending\"} %llu\n",
        (unsigned long long)ac.timeouts, (unsigned long long)ac.tls_failed,
        (unsigned long long)ac.evicted);
    ONE("chatd_proxy_refused_total", "counter",
        "Connections closed for lacking a valid PROXY header from a trusted proxy.",
        ac.proxy_refused);
    ONE("chatd_messages_received_total", "counter", "Text messages received from clients.", in);
    ONE("chatd_messages_received_compressed_total", "counter",
        "Messages received compressed (permessage-deflate), good or bad.", zin);
    ONE("chatd_messages_delivered_total", "counter",
        "Messages in the shared order fanned out on this node.", bs.delivered);
    ONE("chatd_frames_sent_total", "counter", "Message frames written to clients.", frames);
    ONE("chatd_frames_compressed_total", "counter",
        "Of those, frames written compressed (permessage-deflate).", zframes);
    ONE("chatd_compressions_total", "counter",
        "Frames this node compressed: one per message and protocol, shared by every client.",
        deflates);
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
    ONE("chatd_messages_oversize_total", "counter",
        "Stream entries larger than max_message, refused.", bs.oversize);
    ONE("chatd_stream_resets_total", "counter",
        "Times the stream came back empty or its ids went backwards.", bs.resets);
    ONE("chatd_broker_up", "gauge", "1 while messages can be stored and read.", bs.up ? 1 : 0);
    ONE("chatd_broker_up_since_seconds", "gauge",
        "Unix time when chatd_broker_up last changed.", bs.since_ms > 0 ? bs.since_ms / 1000 : 0);
    ONE("chatd_publish_queue", "gauge", "Messages accepted from clients, not stored yet.",
        bs.queued);
    put(body, cap, &n, "# HELP chatd_publish_oldest_seconds Age of the oldest publish not "
                       "acknowledged yet (0: none).\n# TYPE chatd_publish_oldest_seconds gauge\n");
    /* A plain 0 when idle, so simple scrapers that read integers still can. */
    if (bs.oldest_ms > 0)
        put(body, cap, &n, "chatd_publish_oldest_seconds %.3f\n", (double)bs.oldest_ms / 1000.0);
    else
        put(body, cap, &n, "chatd_publish_oldest_seconds 0\n");
    ONE("chatd_stream_read_lag", "gauge", "Stream entries this node has not read yet.",
        bs.read_lag);
    ONE("chatd_redis_shards_up", "gauge", "Shards whose stream this node reads now.",
        bs.shards_up);
    ONE("chatd_redis_redirects_total", "counter",
        "Redis Cluster MOVED and ASK redirects followed.", bs.redirects);
    ONE("chatd_redis_route_changes_total", "counter",
        "Times a shard's Redis changed (a failover the sentinels or the cluster told of).",
        bs.route_changes);
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

static void count_status(acc_thread *a, int status) {
    size_t i = 0;
    while (i < NSTATUS && counted_status[i] != status) i++;
    bump(&a->n_status[i]);
}

/* Readiness: a client must not have its 101 before the broker knows where
 * it reads the stream from (else messages sent after the 101 can miss it),
 * nor while the node drains. /readyz says the same to an orchestrator;
 * /healthz stays 200 (the process serves) and names a broker problem. */
static void acc_judge_readiness(acc_thread *a, hs_result *res) {
    /* relaxed: a lone flag; a request judged just before it shows is
     * refused by the worker's drain instead */
    int draining = atomic_load_explicit(&a->acc->draining, memory_order_relaxed);
    char bwhy[200];
    int ready = broker_ready(a->acc->broker, bwhy, sizeof bwhy);
    if (!ready && bwhy[0] == '\0') snprintf(bwhy, sizeof bwhy, "broker not ready");
    if (res->health_check) {
        if (!ready) {
            snprintf(a->why, sizeof a->why, "ok\nbroker: %s\n", bwhy);
            hs_text_response(res, 200, a->why);
            res->reason = "health check";
        }
        return;
    }
    if (draining) {
        hs_error_response(res, 503, "draining");
    } else if (!ready) {
        snprintf(a->why, sizeof a->why, res->upgrade ? "not ready: %s" : "%s", bwhy);
        hs_error_response(res, 503, a->why);
    }
}

/* From a trusted proxy, the client is the one X-Forwarded-For names. */
static void acc_forwarded_for(acc_thread *a, pending *p) {
    const config *cfg = a->cfg;
    size_t len;
    const char *v;
    if (cfg->n_trusted_proxies == 0 ||
        !proxy_trusted(cfg->trusted_proxies, cfg->n_trusted_proxies, p->ip) ||
        (v = hs_forwarded_for(p->req, &len)) == NULL)
        return;
    uint8_t ip[16];
    if (!proxy_xff(v, len, cfg->trusted_proxies, cfg->n_trusted_proxies, ip)) return;
    char was[sizeof p->peer];
    memcpy(was, p->peer, sizeof was);
    memcpy(p->ip, ip, sizeof ip);
    p->port = 0;
    proxy_format_addr(p->ip, p->port, p->peer, sizeof p->peer);
    pending_log(LOG_DEBUG, p, NULL, "forwarded by %s", was);
}

static void acc_set_cfg(acc_thread *a, const config *cfg) {
    a->cfg = cfg;
    int64_t ceiling = a->acc->ceiling;
    a->max_clients = cfg->max_clients > 0 && cfg->max_clients < ceiling ? cfg->max_clients : ceiling;
}

/* A safe point: nothing of this thread holds a value of the old config
 * that must match the new one. Main keeps every config it published. */
static void acc_reload(acc_thread *a) {
    const config *cur = config_current();
    if (cur != NULL && cur != a->cfg) acc_set_cfg(a, cur);
}

static void pending_judge(pending *p, int rc, const uint8_t *buf, size_t len, size_t used) {
    acc_thread *a = p->a;
    int probe = 0;
    acc_reload(a);
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
        acc_forwarded_for(a, p);
        hs_respond(p->req, a->cfg, p->res);
        probe = p->res->ready_check;
        if (p->res->upgrade || p->res->ready_check || p->res->health_check)
            acc_judge_readiness(a, p->res);
        /* Counted at once, not at the handoff: other acceptor threads
         * judge at the same time, and max_clients is a hard cap. */
        if (p->res->upgrade) {
            /* relaxed: a count; workers only ever lower it */
            if (atomic_fetch_add_explicit(&chatd_clients, 1, memory_order_relaxed) >= a->max_clients) {
                atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
                hs_error_response(p->res, 503, "server full");
            } else {
                p->client_counted = 1;
            }
        }
        if (p->res->upgrade && a->acc->per_ip) {
            pthread_mutex_lock(&a->acc->ip_mu);
            ipcount *s = ip_slot(a->acc->per_ip, p->ip);
            /* relaxed: workers only ever lower it; a stale value errs safe */
            if (s && a->cfg->max_clients_per_ip > 0 &&
                atomic_load_explicit(&s->n, memory_order_relaxed) >= a->cfg->max_clients_per_ip) {
                hs_error_response(p->res, 429, "too many connections from your address");
            } else if (s) { /* counted now, so no other address takes the slot */
                atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed); /* a count */
                p->ip_slot = s;
            }
            pthread_mutex_unlock(&a->acc->ip_mu);
        }
        if (p->client_counted && !p->res->upgrade) { /* refused after all */
            atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
            p->client_counted = 0;
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
    if (p->res->body_len > 0) { /* a file of the web page: headers, then its bytes */
        p->out_len = p->res->response_len + p->res->body_len;
        if ((p->out = malloc(p->out_len)) == NULL) {
            pending_free(p);
            return;
        }
        memcpy(p->out, p->res->response, p->res->response_len);
        memcpy(p->out + p->res->response_len, p->res->body, p->res->body_len);
    }
    count_status(a, p->res->status);
    hs_request_free(p->req);
    p->req = NULL;
    /* A readiness probe polls: its 503 is the answer, not an event to log. */
    if (!p->res->upgrade && p->res->status != 200 && p->res->status != 304 && !probe)
        pending_log(LOG_INFO, p, p->res->username, "refused with %d: %s", p->res->status,
                    p->res->reason ? p->res->reason : "");
    pending_respond(p);
}

/* Reads exactly n bytes the peek has shown are there. */
static int read_exact(int fd, uint8_t *buf, size_t n) {
    while (n > 0) {
        ssize_t k = read(fd, buf, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        buf += k;
        n -= (size_t)k;
    }
    return 0;
}

static void pending_refuse_proxy(pending *p, const char *why) {
    pending_log(LOG_INFO, p, NULL, "closed: %s", why);
    bump(&p->a->n_proxy_refused);
    pending_free(p);
}

/* Reads what comes before the request: a PROXY header, then on the TLS
 * listener a look at the first byte. The bytes are peeked, and only the
 * header's are taken, so what follows stays in the socket for TLS or the
 * request parser. Returns 0 when done, 1 if p waits or was freed. */
static int pending_prelude(pending *p) {
    acc_thread *a = p->a;
    uint8_t buf[PROXY_HEADER_MAX];
    for (;;) {
        size_t have = p->plen;
        if (have) memcpy(buf, p->pbuf, have);
        ssize_t n;
        do
            n = recv(p->fd, buf + have, sizeof buf - have, MSG_PEEK);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            pending_wait(p, EV_READ);
            return 1;
        }
        if (n <= 0) { /* a TCP health check sends nothing: not worth a line */
            if (p->prelude == PRE_PROXY && have > 0)
                pending_refuse_proxy(p, "the PROXY header was cut short");
            else pending_free(p);
            return 1;
        }
        size_t len = have + (size_t)n;
        if (p->prelude == PRE_SNIFF) {
            p->prelude = PRE_NONE;
            /* A TLS record starts with its type (0x14..0x18; SSL 2 with a
             * high bit); an HTTP request with a method in capitals. */
            if (buf[0] < 'A' || buf[0] > 'Z') return 0;
            SSL_free(p->ssl);
            p->ssl = NULL;
            p->handshaking = 0;
            if ((p->res = calloc(1, sizeof(*p->res))) == NULL) {
                pending_free(p);
                return 1;
            }
            hs_error_response(p->res, 400, "The plain HTTP request was sent to HTTPS port: "
                                           "use https:// or wss://");
            count_status(a, 400);
            pending_log(LOG_INFO, p, NULL, "refused with 400: plain HTTP on the TLS port");
            pending_respond(p);
            return 1;
        }
        proxy_info pi;
        int rc = proxy_parse_header(buf, len, &pi);
        if (rc == PROXY_BAD || (rc == PROXY_MORE && len == sizeof buf)) {
            pending_refuse_proxy(p, "no valid PROXY header");
            return 1;
        }
        if (rc == PROXY_MORE) { /* every byte so far is the header's: take them */
            if (p->pbuf == NULL && (p->pbuf = malloc(PROXY_HEADER_MAX)) == NULL) {
                pending_free(p);
                return 1;
            }
            if (read_exact(p->fd, p->pbuf + have, (size_t)n) < 0) {
                pending_free(p);
                return 1;
            }
            p->plen = (uint16_t)len;
            pending_wait(p, EV_READ);
            return 1;
        }
        if (read_exact(p->fd, buf + have, (size_t)rc - have) < 0) {
            pending_free(p);
            return 1;
        }
        free(p->pbuf);
        p->pbuf = NULL;
        p->plen = 0;
        if (!pi.local) {
            char was[sizeof p->peer];
            memcpy(was, p->peer, sizeof was);
            memcpy(p->ip, pi.ip, sizeof p->ip);
            p->port = pi.port;
            proxy_format_addr(p->ip, p->port, p->peer, sizeof p->peer);
            pending_log(LOG_DEBUG, p, NULL, "PROXY header from %s", was);
        }
        p->prelude = p->ssl ? PRE_SNIFF : PRE_NONE;
        if (p->prelude == PRE_NONE) return 0;
    }
}

/* The TLS handshake is done: a TLS 1.3 session leaves OpenSSL for tlsrec,
 * and its ticket goes out. Returns 0, or -1 if p was freed. */
static int pending_tls_done(pending *p) {
    uint8_t *owed;
    size_t owed_len;
    tlsrec *rec;
    int rc = tls_detach(p->ssl, &rec, &owed, &owed_len);
    if (rc < 0) {
        pending_log(LOG_WARN, p, NULL, "TLS: cannot take the session over from OpenSSL");
        pending_free(p);
        return -1;
    }
    if (rc == 0) return 0; /* stays OpenSSL's */
    p->ssl = NULL;
    p->rec = rec;
    ssize_t n = owed_len ? write_some(p->fd, owed, owed_len) : 0;
    if (n < 0 || ((size_t)n < owed_len && pending_owe(p, owed + n, owed_len - (size_t)n) < 0)) {
        free(owed);
        pending_free(p);
        return -1;
    }
    free(owed);
    return 0;
}

static void pending_on_event(evutil_socket_t fd, short what, void *arg) {
    pending *p = arg;
    uint8_t buf[TLSREC_MAX_RECORD]; /* a rec read needs a whole record's room */
    if (what & EV_TIMEOUT) {
        if (!p->draining) {
            pending_log(LOG_INFO, p, NULL, "handshake timeout");
            bump(&p->a->n_timeouts);
        }
        pending_free(p);
        return;
    }
    pending_touch(p); /* readable or writable: the peer moved bytes */
    if (p->draining) { /* raw bytes, TLS or not: they are thrown away */
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR))) pending_wait(p, EV_READ);
        else pending_free(p);
        return;
    }
    if (p->prelude != PRE_NONE && pending_prelude(p) != 0) return;
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
            pending_log(LOG_INFO, p, NULL, "TLS handshake failed: %s", why);
            bump(&p->a->n_tls_failed);
            pending_free(p);
            return;
        }
        p->handshaking = 0;
        atomic_fetch_add_explicit(&p->a->acc->tls_since_trim, 1, memory_order_relaxed); /* a count */
        if (pending_tls_done(p) < 0) return;
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

static int pending_has_input(const pending *p) {
    int n = 0;
    return (p->ssl && SSL_pending(p->ssl) > 0) || (ioctl(p->fd, FIONREAD, &n) == 0 && n > 0);
}

/* Takes one of the max_pending slots all threads share: 1, or 0 when
 * they are all taken. */
static int acc_take_slot(acc_thread *a) {
    /* relaxed: only the count matters, nothing it guards */
    int n = atomic_load_explicit(&a->acc->npending, memory_order_relaxed);
    do {
        if (n >= a->cfg->max_pending) return 0;
    } while (!atomic_compare_exchange_weak_explicit(&a->acc->npending, &n, n + 1,
                                                    memory_order_relaxed, memory_order_relaxed));
    return 1;
}

static void acc_give_slot(acc_thread *a) {
    atomic_fetch_sub_explicit(&a->acc->npending, 1, memory_order_relaxed); /* a count */
}

/* At max_pending, before taking another connection: closes this thread's
 * longest idle handshake if it has been idle past IDLE_GRACE_MS and
 * returns 0; otherwise pauses accepting until one of its slots frees or
 * that handshake passes the grace, and returns -1. A burst of healthy
 * clients thus waits in the kernel's listen queue instead of pushing each
 * other out, and a flood of silent connections still cannot keep honest
 * clients out for long. A thread holding none of the slots looks again
 * after the grace: the others, woken by the same listening sockets, make
 * room among theirs. */
static int acc_make_room(acc_thread *a) {
    pending *p = a->oldest;
    int64_t idle = p ? clock_ms() - p->last_ms : 0;
    /* Bytes waiting unread mean we are the slow side, not the peer: its
     * readable event is due in this same turn. */
    for (int k = 0; k < 8 && idle >= IDLE_GRACE_MS && pending_has_input(p); k++) {
        pending_touch(p);
        p = a->oldest;
        idle = clock_ms() - p->last_ms;
    }
    int total = atomic_load_explicit(&a->acc->npending, memory_order_relaxed); /* for the log */
    if (idle >= IDLE_GRACE_MS) {
        pending_log(LOG_INFO, p, NULL, "closed: idle for %lld ms with %d handshakes pending",
                    (long long)idle, total);
        pending_free(p);
        bump(&a->n_evicted);
        return 0;
    }
    if (!a->at_cap) {
        log_debug("%d handshakes pending: accepting paused", total);
        bump(&a->n_cap_pauses);
    }
    a->at_cap = 1;
    acc_listen(a, 0);
    int64_t left = IDLE_GRACE_MS - idle;
    struct timeval tv = {left / 1000, (left % 1000) * 1000};
    evtimer_add(a->cap_ev, &tv);
    return -1;
}

static void acc_on_accept(evutil_socket_t lfd, short what, void *arg) {
    listener *l = arg;
    acc_thread *a = l->a;
    (void)what;
    acc_reload(a);
    for (int i = 0; i < ACCEPT_BURST; i++) {
        /* A slot another thread took meanwhile: this event comes back. */
        if (!acc_take_slot(a) && (acc_make_room(a) < 0 || !acc_take_slot(a))) return;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            acc_give_slot(a);
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: pause accepting rather than spin. */
                log_warn("accept: %s; pausing accepts for %d ms", strerror(errno),
                         EMFILE_PAUSE_MS);
                acc_listen(a, 0);
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
            acc_give_slot(a);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        p->a = a;
        p->fd = fd;
        p->id = atomic_fetch_add_explicit(&a->acc->next_id, 1, memory_order_relaxed) + 1; /* unique */
        p->req = req;
        ip_key(&ss, p->ip);
        p->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
        proxy_format_addr(p->ip, p->port, p->peer, sizeof p->peer);
        if (l->tls) {
            p->ssl = tls_session(a->acc->tls, fd);
            if (p->ssl == NULL) {
                hs_request_free(req);
                free(p);
                close(fd);
                acc_give_slot(a);
                continue;
            }
            p->handshaking = 1;
            p->prelude = PRE_SNIFF;
        }
        p->last_ms = clock_ms();
        p->deadline_ms = p->last_ms + a->cfg->handshake_timeout_ms;
        event_assign(&p->ev, a->base, fd, EV_READ, pending_on_event, p);
        p->next = a->pendings;
        if (a->pendings) a->pendings->prev = p;
        else a->oldest = p;
        a->pendings = p;
        a->npending++;
        if (a->cfg->proxy_protocol & (l->tls ? PROXY_ON_WSS : PROXY_ON_WS)) {
            if (!proxy_trusted(a->cfg->trusted_proxies, a->cfg->n_trusted_proxies, p->ip)) {
                pending_refuse_proxy(p, "proxy_protocol is on and the peer is not a trusted proxy");
                continue;
            }
            p->prelude = PRE_PROXY;
        }
        /* The request is usually there already: try before waiting. */
        pending_on_event(fd, EV_READ, p);
    }
}

static void acc_on_resume(evutil_socket_t fd, short what, void *arg) {
    acc_thread *a = arg;
    (void)fd;
    (void)what;
    acc_listen(a, 1); /* at the cap, the accept callback pauses again */
}

/* TRIM_IDLE_MS after this thread's last handshake: once no handshake has
 * been in progress on it for that long, nor is on any other, the memory
 * they freed goes back, by one thread. A thread that became busy again
 * comes back here when it is next idle. */
static void acc_on_trim(evutil_socket_t fd, short what, void *arg) {
    acc_thread *a = arg;
    (void)fd;
    (void)what;
    int64_t now = clock_ms(), idle = now - a->last_done_ms;
    if (a->npending > 0 || atomic_load_explicit(&a->acc->npending, memory_order_relaxed) > 0)
        return;
    if (idle < TRIM_IDLE_MS) {
        int64_t left = TRIM_IDLE_MS - idle;
        struct timeval tv = {left / 1000, (left % 1000) * 1000};
        evtimer_add(a->trim_ev, &tv);
        return;
    }
    /* relaxed: a count; whoever takes it non-zero trims */
    uint32_t n = atomic_exchange_explicit(&a->acc->tls_since_trim, 0, memory_order_relaxed);
    if (n == 0) return;
    malloc_trim(0);
    log_debug("heap trimmed after %u TLS handshakes, in %lld ms", n, (long long)(clock_ms() - now));
}

/* The longest idle handshake passed the grace: accept again, which closes
 * it if a connection is waiting for its slot. */
static void acc_on_cap(evutil_socket_t fd, short what, void *arg) {
    acc_thread *a = arg;
    (void)fd;
    (void)what;
    a->at_cap = 0;
    acc_listen(a, 1);
}

/* Sets up thread a (the idx-th) of acc: its loop, its events on the
 * shared listening sockets. Returns 0, or -1 with err filled. */
static int acc_thread_init(acceptor *acc, acc_thread *a, int idx, const config *cfg, char *err,
                           size_t errlen) {
    a->acc = acc;
    a->idx = idx;
    acc_set_cfg(a, cfg);
    a->base = event_base_new(); /* locking on: main breaks its loop */
    if (a->base == NULL || (a->resume_ev = evtimer_new(a->base, acc_on_resume, a)) == NULL ||
        (a->cap_ev = evtimer_new(a->base, acc_on_cap, a)) == NULL ||
        (a->trim_ev = evtimer_new(a->base, acc_on_trim, a)) == NULL) {
        snprintf(err, errlen, "acceptor: cannot create event loop");
        return -1;
    }
    if (acc->tls && (a->cx = tlsrec_cx_new()) == NULL) {
        snprintf(err, errlen, "acceptor: cannot set up the TLS ciphers");
        return -1;
    }
    for (int k = 0; k < acc->nls; k++) {
        listener *l = &a->ls[k];
        l->a = a;
        l->fd = acc->lfd[k];
        l->tls = k == 1;
        if ((l->ev = event_new(a->base, l->fd, EV_READ | EV_PERSIST, acc_on_accept, l)) == NULL) {
            snprintf(err, errlen, "acceptor: out of memory");
            return -1;
        }
    }
    acc_listen(a, 1);
    return 0;
}

acceptor *acceptor_new(const config *cfg, tls *t, broker *b, worker **workers, int nworkers,
                       int nthreads, int64_t ceiling, char *err, size_t errlen) {
    acceptor *acc = calloc(1, sizeof(*acc));
    if (acc == NULL) {
        snprintf(err, errlen, "acceptor: out of memory");
        return NULL;
    }
    acc->broker = b;
    acc->workers = workers;
    acc->nworkers = nworkers;
    acc->ceiling = ceiling;
    acc->tls = t;
    acc->lfd[0] = acc->lfd[1] = -1;
    pthread_mutex_init(&acc->ip_mu, NULL);
    /* Counted even without a limit (untouched pages cost nothing), so a
     * limit set by a reload counts the clients already connected. */
    if ((acc->per_ip = calloc(IP_SLOTS, sizeof(ipcount))) == NULL ||
        (acc->threads = calloc((size_t)nthreads, sizeof(acc_thread))) == NULL) {
        snprintf(err, errlen, "acceptor: out of memory");
        goto fail;
    }
    acc->nthreads = nthreads;
    for (int k = 0; k < (t ? 2 : 1); k++) {
        acc->lfd[k] = k == 0 ? net_listen(cfg->bind, cfg->port, cfg->listen_backlog, err, errlen)
                             : net_listen(cfg->tls_bind, cfg->tls_port, cfg->listen_backlog, err, errlen);
        if (acc->lfd[k] < 0) goto fail;
        acc->nls++;
    }
    for (int i = 0; i < nthreads; i++)
        if (acc_thread_init(acc, &acc->threads[i], i, cfg, err, errlen) < 0) goto fail;
    return acc;
fail:
    acceptor_free(acc);
    return NULL;
}

static void *acc_main(void *arg) {
    acc_thread *a = arg;
    char name[16] = "acceptor";
    if (a->acc->nthreads > 1) /* at most 64 of them */
        snprintf(name, sizeof name, "acceptor-%u", (unsigned)(uint8_t)(a->idx + 1));
    log_thread(name);
    event_base_dispatch(a->base);
    return NULL;
}

int acceptor_start(acceptor *acc) {
    for (int i = 0; i < acc->nthreads; i++) {
        acc_thread *a = &acc->threads[i];
        if (pthread_create(&a->thread, NULL, acc_main, a) != 0) return -1;
        a->started = 1;
    }
    return 0;
}

void acceptor_drain(acceptor *acc) {
    /* relaxed: a lone flag; the next request judged sees it soon enough */
    atomic_store_explicit(&acc->draining, 1, memory_order_relaxed);
}

void acceptor_stop(acceptor *acc) {
    for (int i = 0; i < acc->nthreads; i++) {
        acc_thread *a = &acc->threads[i];
        if (!a->started) continue;
        event_base_loopbreak(a->base); /* thread-safe: evthread_use_pthreads */
        pthread_join(a->thread, NULL);
        a->started = 0;
    }
}

void acceptor_free(acceptor *acc) {
    if (acc == NULL) return;
    atomic_store_explicit(&acc->tls_since_trim, 0, memory_order_relaxed); /* no trimming either */
    for (int i = 0; i < acc->nthreads; i++) {
        acc_thread *a = &acc->threads[i];
        a->at_cap = 0; /* no resuming while freeing */
        while (a->pendings) pending_free(a->pendings);
        for (int k = 0; k < 2; k++)
            if (a->ls[k].ev) event_free(a->ls[k].ev);
        if (a->resume_ev) event_free(a->resume_ev);
        if (a->cap_ev) event_free(a->cap_ev);
        if (a->trim_ev) event_free(a->trim_ev);
        if (a->base) event_base_free(a->base);
        tlsrec_cx_free(a->cx);
    }
    for (int k = 0; k < 2; k++)
        if (acc->lfd[k] >= 0) close(acc->lfd[k]);
    pthread_mutex_destroy(&acc->ip_mu);
    free(acc->threads);
    free(acc->per_ip);
    free(acc);
}
