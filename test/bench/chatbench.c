/*
 * chatbench — WebSocket load generator for chatd (issue 5).
 *
 * One libevent loop per process, one plain `struct event` and a small struct
 * per client; read buffers exist only while a partial frame is pending and
 * write buffers only while the kernel holds back. With --procs P the parent
 * forks P children, each owning a contiguous slice of the N clients, and only
 * coordinates them over socketpairs: it starts the measured phase in every
 * child at one CLOCK_MONOTONIC instant, adds up what they report and prints
 * the one report. CLOCK_MONOTONIC is system wide, so a send time written by
 * one child is comparable with the receive time taken by another.
 *
 * Broadcast messages are the text "b <sender> <seq> <t_us>[ padding]"; chatd
 * and the Node peer deliver them as "NAME: b ...", nginx + nchan as they were
 * sent (a pub/sub channel knows no names). Every receiver keeps, per sender, the
 * highest sequence number seen and a 64-bit window below it, which separates
 * duplicates from late (reordered) arrivals and counts the gaps left open.
 *
 * With --reconnect (idle mode) a client whose connection is closed or lost
 * after the start of the run connects again at once, to another URL of the
 * list, with a bounded number of attempts and a small capped backoff; the
 * report says how long it took from the first drop until the last dropped
 * client was back. With --sender-url the senders of broadcast mode connect to
 * that URL and only the other clients sample latency, so two nodes of one
 * cluster give the latency from send on one to receipt on the other.
 *
 * With --deflate every client offers permessage-deflate as a browser does;
 * where the server accepts, senders compress their messages and receivers
 * inflate frames with RSV1 (one zlib stream per process, no context kept,
 * as chatd negotiates). The report counts the bytes of data frames
 * received, so that bytes per delivery compare with and without it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/event_struct.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <zlib.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_URLS 64
#define MAX_PROCS 64
#define RBUF_CAP (2u << 20)     /* shared read buffer: one partial frame + a read */
#define READ_CHUNK (256u << 10) /* bytes asked of one read */
#define MAX_FRAME (1u << 20)    /* a larger server frame is a protocol error */
#define MAX_HEAD 8192           /* largest HTTP response head we accept */
#define WBUF_MAX (4u << 20)     /* output held per client before we give up */
#define MAX_MSG 65536           /* --msg-size cap */
#define ERRNO_SLOTS 160
#define URL_SENDER 255          /* client.url: o.sender_url */
#define BACKOFF_CAP_US 2000000  /* reconnect backoff ceiling */

/* ------------------------------------------------------------------ options */

enum mode { MODE_IDLE, MODE_BROADCAST };
enum pad { PAD_X, PAD_WORDS, PAD_JSON };

struct url {
    const char *text;
    int tls;
    struct sockaddr_in addr;
    char ip[INET_ADDRSTRLEN];
    char hostname[256]; /* as written in the URL, for TLS name checks */
    char hosthdr[300];  /* Host header value */
    const char *path;   /* path and query template; may hold {i} */
};

static struct {
    enum mode mode;
    struct url urls[MAX_URLS];
    int nurls;
    long conns;
    double ramp; /* connections per second in total; 0 = as fast as allowed */
    long inflight;
    int procs;
    uint32_t src_lo, src_hi; /* host order; 0 = no binding */
    double duration, drain, connect_timeout, hold;
    long senders;
    double rate;
    long msg_size;
    enum pad pad;
    int deflate;
    int insecure;
    const char *cafile;
    const char *groups; /* wss: the key exchange groups offered, e.g. X25519 */
    int verbose;
    struct url sender_url; /* valid when has_sender_url */
    int has_sender_url;
    int reconnect;
    long rc_tries;      /* attempts per drop */
    double rc_timeout;  /* seconds per attempt */
    double rc_backoff;  /* seconds: first backoff, doubled per failure */
} o = {
    .mode = MODE_IDLE,
    .conns = 100,
    .ramp = 0,
    .inflight = 1000,
    .procs = 1,
    .duration = 10,
    .drain = 5,
    .connect_timeout = 60,
    .senders = 10,
    .rate = 100,
    .rc_tries = 10,
    .rc_timeout = 5,
    .rc_backoff = 0.1,
};

/* ------------------------------------------------------------------ results */

enum fail { F_SOCKET, F_CONNECT, F_TLS, F_HTTP, F_ACCEPT, F_EOF, F_IO, F_TIMEOUT, F_CHILD, F__N };
static const char *const fail_name[F__N] = {
    "socket", "connect", "tls", "http_status", "bad_upgrade",
    "eof", "io_error", "timeout", "child_died",
};

enum drop { D_CLOSE, D_EOF, D_ERROR, D_PROTO, D_OVERFLOW, D__N };
static const char *const drop_name[D__N] = {
    "server_close", "eof", "io_error", "protocol_error", "output_overflow",
};

/* Log-linear histogram of microseconds: exact below 128, then 64 sub-buckets
 * per power of two (error below 0.8%) up to 2^38 µs; larger values land in
 * the last bucket and the exact maximum is kept on the side. */
#define HIST_SUB_BITS 7
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_HALF (HIST_SUB / 2)
#define HIST_BUCKETS (HIST_SUB + 32 * HIST_HALF)

struct hist {
    uint64_t n[HIST_BUCKETS];
    uint64_t count, max;
};

struct result {
    uint64_t conns, connected, failed, fail[F__N];
    uint32_t conn_errno[ERRNO_SLOTS]; /* socket/connect failures by errno */
    uint32_t http[600];               /* non-101 answers by status */
    uint32_t close_code[17];          /* server closes: 1000..1015, other */
    uint64_t connect_us;              /* last upgrade, from the common start */
    struct hist hs;                   /* per client: µs from connect() to the 101 */
    uint64_t alive_at_go, alive_at_end, dropped[D__N];
    uint64_t pings, sent, delivered, window_delivered, dup, reorder, other;
    uint64_t znegotiated;     /* --deflate: clients whose offer was accepted */
    uint64_t data_bytes;      /* bytes of data frames received (headers too) */
    uint64_t zframes;         /* of those frames, compressed (RSV1) */
    int64_t gaps;
    uint64_t last_delivery_us; /* from t0 */
    struct hist lat;
    /* --reconnect: a drop starts a reconnect; attempts until back or given up */
    uint64_t rc_drops, rc_back, rc_attempts, rc_failed, rc_refused, rc_gave_up, rc_down_at_end;
    uint64_t rc_fail[F__N];
    uint32_t rc_http[600];
    uint64_t first_drop_at, last_back_at; /* CLOCK_MONOTONIC µs; 0 = none */
    struct hist rc_down;                  /* per drop: µs until upgraded again */
};

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (HIST_SUB_BITS - 1); /* v >> shift is in [64, 128) */
    unsigned idx = HIST_SUB + (shift - 1) * HIST_HALF + (unsigned)((v >> shift) - HIST_HALF);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static uint64_t hist_value(unsigned idx)
{
    if (idx < HIST_SUB)
        return idx;
    unsigned shift = (idx - HIST_SUB) / HIST_HALF + 1;
    uint64_t sub = (idx - HIST_SUB) % HIST_HALF + HIST_HALF;
    return (sub << shift) + ((1ull << shift) >> 1); /* middle of the bucket */
}

static void hist_add(struct hist *h, uint64_t v)
{
    h->n[hist_index(v)]++;
    h->count++;
    if (v > h->max)
        h->max = v;
}

static uint64_t hist_pct(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

static void result_add(struct result *a, const struct result *b)
{
    a->conns += b->conns;
    a->connected += b->connected;
    a->failed += b->failed;
    for (int i = 0; i < F__N; i++)
        a->fail[i] += b->fail[i];
    for (int i = 0; i < ERRNO_SLOTS; i++)
        a->conn_errno[i] += b->conn_errno[i];
    for (int i = 0; i < 600; i++)
        a->http[i] += b->http[i];
    for (int i = 0; i < 17; i++)
        a->close_code[i] += b->close_code[i];
    if (b->connect_us > a->connect_us)
        a->connect_us = b->connect_us;
    a->alive_at_go += b->alive_at_go;
    a->alive_at_end += b->alive_at_end;
    for (int i = 0; i < D__N; i++)
        a->dropped[i] += b->dropped[i];
    a->pings += b->pings;
    a->znegotiated += b->znegotiated;
    a->data_bytes += b->data_bytes;
    a->zframes += b->zframes;
    a->sent += b->sent;
    a->delivered += b->delivered;
    a->window_delivered += b->window_delivered;
    a->dup += b->dup;
    a->reorder += b->reorder;
    a->other += b->other;
    a->gaps += b->gaps;
    if (b->last_delivery_us > a->last_delivery_us)
        a->last_delivery_us = b->last_delivery_us;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        a->lat.n[i] += b->lat.n[i];
    a->lat.count += b->lat.count;
    if (b->lat.max > a->lat.max)
        a->lat.max = b->lat.max;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        a->hs.n[i] += b->hs.n[i];
    a->hs.count += b->hs.count;
    if (b->hs.max > a->hs.max)
        a->hs.max = b->hs.max;
    a->rc_drops += b->rc_drops;
    a->rc_back += b->rc_back;
    a->rc_attempts += b->rc_attempts;
    a->rc_failed += b->rc_failed;
    a->rc_refused += b->rc_refused;
    a->rc_gave_up += b->rc_gave_up;
    a->rc_down_at_end += b->rc_down_at_end;
    for (int i = 0; i < F__N; i++)
        a->rc_fail[i] += b->rc_fail[i];
    for (int i = 0; i < 600; i++)
        a->rc_http[i] += b->rc_http[i];
    if (b->first_drop_at && (!a->first_drop_at || b->first_drop_at < a->first_drop_at))
        a->first_drop_at = b->first_drop_at;
    if (b->last_back_at > a->last_back_at)
        a->last_back_at = b->last_back_at;
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        a->rc_down.n[i] += b->rc_down.n[i];
    a->rc_down.count += b->rc_down.count;
    if (b->rc_down.max > a->rc_down.max)
        a->rc_down.max = b->rc_down.max;
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static struct timeval tv_us(int64_t us)
{
    if (us < 0)
        us = 0;
    struct timeval tv = {.tv_sec = us / 1000000, .tv_usec = us % 1000000};
    return tv;
}

/* ----------------------------------------------------------- parent ↔ child */

enum ctl_type { CTL_READY = 1, CTL_GO, CTL_SENT, CTL_TOTAL, CTL_RESULT };

struct ctl {
    uint32_t type;
    uint32_t pad;
    uint64_t a, b;
};

static int write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int ctl_send(int fd, uint32_t type, uint64_t a, uint64_t b)
{
    struct ctl m = {.type = type, .a = a, .b = b};
    return write_full(fd, &m, sizeof m);
}

/* ------------------------------------------------------------------ clients */

enum state {
    ST_IDLE,       /* not started yet */
    ST_CONNECTING, /* TCP connect in progress: waiting for writability */
    ST_TLS,        /* TLS handshake in progress */
    ST_HTTP,       /* upgrade request sent, reading the 101 */
    ST_OPEN,       /* upgraded: frames both ways */
    ST_DONE,       /* socket closed (failed, dropped or finished) */
    ST_WAIT,       /* --reconnect: no socket, ev is the timer of the next attempt */
};

struct client {
    struct event ev;
    int fd;
    uint32_t id; /* global client number, {i} in the URL */
    uint8_t state;
    uint8_t in_frag;  /* inside a fragmented text message */
    uint8_t ssl_ww;   /* TLS asked to wait for writability */
    uint8_t url;      /* index into o.urls, or URL_SENDER */
    uint8_t no_lat;   /* a --sender-url sender: deliveries count, latency not */
    uint8_t rc_on;    /* reconnecting since rc_drop */
    uint8_t tries;    /* reconnect attempts for the current drop */
    uint8_t z;        /* permessage-deflate negotiated */
    short interest;   /* events ev is registered for; 0 = not added */
    SSL *ssl;
    uint8_t *rbuf; /* bytes of a partial frame or response head */
    uint32_t rlen;
    uint32_t wlen, woff;
    uint8_t *wbuf; /* bytes the kernel did not take yet */
    uint64_t rc_drop, rc_try; /* --reconnect: when dropped, when the attempt began */
    uint64_t t_begin;         /* CLOCK_MONOTONIC µs: connect() of the first attempt */
};

struct seqst {
    uint64_t win; /* bit d set: seq (last - d) was seen */
    uint32_t last;
    uint32_t pad;
};

static struct {
    struct event_base *base;
    struct client *c;
    long lo, hi, n; /* global client numbers [lo, hi) */
    long next_start, inflight, done_connecting;
    double ramp, inflight_cap;
    uint64_t t_start, t0, t_send_end;
    int phase; /* 0 connect, 1 waiting for go, 2 run, 3 drain */
    int ctl_fd;
    SSL_CTX *ssl_ctx;
    uint8_t *rbuf;
    uint8_t *sbuf;
    uint64_t now; /* taken once per read */
    uint64_t alive;
    struct seqst *seq; /* n x senders, broadcast only */
    uint32_t *sender_seq;
    uint64_t total_msgs, next_j, expected_local;
    int have_total;
    struct event *ramp_ev, *deadline_ev, *send_ev, *window_ev, *drain_ev, *ctl_ev, *hard_ev;
    struct event *sweep_ev;
    uint64_t down; /* --reconnect: clients dropped and not back yet */
    uint32_t mask_state, rng;
    uint8_t key_seed[12];
    z_stream def, inf; /* --deflate: one message at a time */
    uint8_t *zbuf;     /* inflated frames, compressed messages */
    struct result r;
} g;

static void on_event(evutil_socket_t fd, short what, void *arg);
static void finish(void);

static void set_interest(struct client *c, short want)
{
    want |= EV_PERSIST;
    if (c->interest == want)
        return;
    if (c->interest)
        event_del(&c->ev);
    event_assign(&c->ev, g.base, c->fd, want, on_event, c);
    event_add(&c->ev, NULL);
    c->interest = want;
}

static void update_interest(struct client *c)
{
    short w = EV_READ;
    if (c->state == ST_CONNECTING)
        w = EV_WRITE;
    else if (c->wlen > c->woff || c->ssl_ww)
        w |= EV_WRITE;
    set_interest(c, w);
}

static void drop_buffers(struct client *c)
{
    free(c->rbuf);
    free(c->wbuf);
    c->rbuf = c->wbuf = NULL;
    c->rlen = c->wlen = c->woff = 0;
}

static void close_client(struct client *c)
{
    if (c->state == ST_DONE)
        return;
    if (c->interest || c->state == ST_WAIT)
        event_del(&c->ev);
    c->interest = 0;
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    drop_buffers(c);
    if (c->state == ST_OPEN)
        g.alive--;
    c->state = ST_DONE;
}

static void connect_done(void);
static void rc_failed(struct client *c, enum fail why, int err);
static void rc_begin(struct client *c);

static const struct url *curl(const struct client *c)
{
    return c->url == URL_SENDER ? &o.sender_url : &o.urls[c->url];
}

/* A client that never reached ST_OPEN. */
static void fail_client(struct client *c, enum fail why, int err)
{
    if (c->rc_on) {
        rc_failed(c, why, err);
        return;
    }
    int was_pending = c->state != ST_IDLE;
    close_client(c);
    g.r.failed++;
    g.r.fail[why]++;
    if ((why == F_SOCKET || why == F_CONNECT) && err > 0)
        g.r.conn_errno[err < ERRNO_SLOTS ? err : ERRNO_SLOTS - 1]++;
    if (was_pending)
        g.inflight--;
    g.done_connecting++;
    if (o.verbose > 1)
        fprintf(stderr, "client %u failed: %s %s\n", c->id, fail_name[why], err ? strerror(err) : "");
    connect_done();
}

/* A client lost after it was upgraded. */
static void drop_client(struct client *c, enum drop why)
{
    close_client(c);
    g.r.dropped[why]++;
    if (o.reconnect && (g.phase == 1 || g.phase == 2))
        rc_begin(c);
}

/* I/O that hides TLS. recv: >0 bytes, 0 end of stream, -1 would block,
 * -2 error. send: >=0 bytes taken (0: would block), -1 error. */
static ssize_t c_recv(struct client *c, void *buf, size_t len)
{
    if (!c->ssl) {
        ssize_t n = recv(c->fd, buf, len, 0);
        if (n >= 0)
            return n;
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : -2;
    }
    ERR_clear_error();
    int n = SSL_read(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n > 0)
        return n;
    switch (SSL_get_error(c->ssl, n)) {
    case SSL_ERROR_WANT_READ:
        return -1;
    case SSL_ERROR_WANT_WRITE:
        c->ssl_ww = 1;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        return errno == 0 ? 0 : -2;
    default:
        return -2;
    }
}

static ssize_t c_send(struct client *c, const void *buf, size_t len)
{
    if (!c->ssl) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n >= 0)
            return n;
        return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
    }
    ERR_clear_error();
    c->ssl_ww = 0;
    int n = SSL_write(c->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n > 0)
        return n;
    switch (SSL_get_error(c->ssl, n)) {
    case SSL_ERROR_WANT_WRITE:
        c->ssl_ww = 1;
        return 0;
    case SSL_ERROR_WANT_READ:
        return 0;
    default:
        return -1;
    }
}

/* Writes out held output. Returns -1 if the connection failed (not closed). */
static int flush(struct client *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = c_send(c, c->wbuf + c->woff, c->wlen - c->woff);
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        c->woff += (uint32_t)n;
    }
    if (c->woff == c->wlen && c->wbuf) {
        free(c->wbuf);
        c->wbuf = NULL;
        c->wlen = c->woff = 0;
    }
    update_interest(c);
    return 0;
}

/* Queues bytes: written at once when nothing waits, held otherwise.
 * Returns -1 if the connection failed or holds too much (not closed). */
static int c_write(struct client *c, const void *buf, size_t len)
{
    size_t off = 0;
    if (c->wlen == c->woff) {
        ssize_t n = c_send(c, buf, len);
        if (n < 0)
            return -1;
        off = (size_t)n;
        if (off == len) {
            if (c->ssl_ww)
                update_interest(c);
            return 0;
        }
    }
    size_t rest = len - off;
    size_t held = c->wlen - c->woff;
    if (held + rest > WBUF_MAX)
        return -1;
    uint8_t *nb = malloc(held + rest);
    if (!nb)
        return -1;
    if (held)
        memcpy(nb, c->wbuf + c->woff, held);
    memcpy(nb + held, (const uint8_t *)buf + off, rest);
    free(c->wbuf);
    c->wbuf = nb;
    c->woff = 0;
    c->wlen = (uint32_t)(held + rest);
    update_interest(c);
    return 0;
}

/* Builds one masked client frame into out; returns its length. */
static size_t ws_frame(uint8_t *out, int opcode, const uint8_t *payload, size_t len)
{
    size_t h = 0;
    out[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        out[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(len >> 8);
        out[h++] = (uint8_t)len;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            out[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    /* RFC 6455 wants an unpredictable mask; a cheap xorshift is plenty for a
     * benchmark against our own server. */
    uint32_t x = g.mask_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g.mask_state = x;
    uint8_t m[4] = {(uint8_t)(x >> 24), (uint8_t)(x >> 16), (uint8_t)(x >> 8), (uint8_t)x};
    memcpy(out + h, m, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        out[h + i] = payload[i] ^ m[i & 3];
    return h + len;
}

static int send_frame(struct client *c, int opcode, const uint8_t *payload, size_t len)
{
    uint8_t small[256];
    uint8_t *out = len + 14 <= sizeof small ? small : g.sbuf;
    size_t n = ws_frame(out, opcode, payload, len);
    return c_write(c, out, n);
}

/* ------------------------------------------------------------ handshake */

static void client_key(uint32_t id, char out[25])
{
    uint8_t raw[16];
    memcpy(raw, &id, 4);
    memcpy(raw + 4, g.key_seed, 12);
    EVP_EncodeBlock((unsigned char *)out, raw, 16);
}

static void expected_accept(uint32_t id, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char cat[24 + sizeof guid];
    client_key(id, cat);
    memcpy(cat + 24, guid, sizeof guid);
    uint8_t d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, 24 + sizeof guid - 1, d);
    EVP_EncodeBlock((unsigned char *)out, d, SHA_DIGEST_LENGTH);
}

static void send_request(struct client *c)
{
    const struct url *u = curl(c);
    char path[4096], req[4600], key[25];
    size_t pl = 0;
    for (const char *p = u->path; *p && pl < sizeof path - 16; p++) {
        if (p[0] == '{' && p[1] == 'i' && p[2] == '}') {
            pl += (size_t)snprintf(path + pl, sizeof path - pl, "%u", c->id);
            p += 2;
        } else {
            path[pl++] = *p;
        }
    }
    path[pl] = '\0';
    client_key(c->id, key);
    /* What Chromium offers. */
    const char *ext = o.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                  "client_max_window_bits\r\n"
                                : "";
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n%sUser-Agent: chatbench\r\n\r\n",
                     path, u->hosthdr, key, ext);
    c->state = ST_HTTP;
    if (c_write(c, req, (size_t)n) < 0) {
        fail_client(c, F_IO, errno);
        return;
    }
    update_interest(c);
}

/* Parses a complete response head; returns 0 when upgraded. */
static int check_response(struct client *c, const char *head, size_t len)
{
    int status = 0;
    if (len < 12 || strncmp(head, "HTTP/1.1 ", 9) != 0 ||
        sscanf(head + 9, "%3d", &status) != 1) {
        fail_client(c, F_HTTP, 0);
        return -1;
    }
    if (status != 101) {
        if (status > 0 && status < 600) {
            if (c->rc_on)
                g.r.rc_http[status]++;
            else
                g.r.http[status]++;
        }
        fail_client(c, F_HTTP, 0);
        return -1;
    }
    char want[29];
    expected_accept(c->id, want);
    static const char name[] = "Sec-WebSocket-Accept:";
    const char *end = head + len;
    for (const char *line = memchr(head, '\n', len); line && line + 1 < end;
         line = memchr(line + 1, '\n', (size_t)(end - line - 1))) {
        const char *l = line + 1;
        if ((size_t)(end - l) > sizeof name && strncasecmp(l, name, sizeof name - 1) == 0) {
            const char *v = l + sizeof name - 1;
            while (v < end && (*v == ' ' || *v == '\t'))
                v++;
            if ((size_t)(end - v) >= 28 && memcmp(v, want, 28) == 0) {
                /* chatd's answer always has both no_context_takeover
                 * parameters: each frame inflates on its own */
                static const char ext[] = "\r\nSec-WebSocket-Extensions: permessage-deflate; "
                                          "server_no_context_takeover; "
                                          "client_no_context_takeover\r\n";
                c->z = o.deflate && memmem(head, len, ext, sizeof ext - 1) != NULL;
                return 0;
            }
            break;
        }
    }
    fail_client(c, F_ACCEPT, 0);
    return -1;
}

static void tls_step(struct client *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->ssl_ww = 0;
        send_request(c);
        return;
    }
    switch (SSL_get_error(c->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        c->ssl_ww = 0;
        update_interest(c);
        return;
    case SSL_ERROR_WANT_WRITE:
        c->ssl_ww = 1;
        update_interest(c);
        return;
    default:
        if (o.verbose) {
            unsigned long e = ERR_peek_error();
            char buf[256];
            ERR_error_string_n(e, buf, sizeof buf);
            fprintf(stderr, "client %u: TLS handshake failed: %s\n", c->id, buf);
        }
        fail_client(c, F_TLS, 0);
    }
}

static void start_client(struct client *c)
{
    const struct url *u = curl(c);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (!c->rc_on) {
        g.inflight++;
        c->t_begin = mono_us();
    }
    c->state = ST_CONNECTING;
    c->fd = fd;
    if (fd < 0) {
        c->state = ST_DONE;
        fail_client(c, F_SOCKET, errno);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (o.src_lo) {
        struct sockaddr_in sa = {.sin_family = AF_INET};
        uint32_t span = o.src_hi - o.src_lo + 1;
        sa.sin_addr.s_addr = htonl(o.src_lo + c->id % span);
        /* Let connect() pick the port knowing the destination, so one source
         * address gives a port range per destination, not one in total. */
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fail_client(c, F_SOCKET, errno);
            return;
        }
    }
    if (u->tls) {
        c->ssl = SSL_new(g.ssl_ctx);
        if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
            fail_client(c, F_TLS, 0);
            return;
        }
        SSL_set_connect_state(c->ssl);
        if (!o.insecure) {
            if (strcmp(u->hostname, u->ip) == 0)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), u->ip);
            else
                SSL_set1_host(c->ssl, u->hostname);
        }
        if (strcmp(u->hostname, u->ip) != 0)
            SSL_set_tlsext_host_name(c->ssl, u->hostname);
    }
    if (connect(fd, (const struct sockaddr *)&u->addr, sizeof u->addr) < 0 &&
        errno != EINPROGRESS) {
        fail_client(c, F_CONNECT, errno);
        return;
    }
    update_interest(c);
}

/* ------------------------------------------------------------- messages */

static void on_text(struct client *c, const uint8_t *p, size_t len)
{
    if (o.mode != MODE_BROADCAST || g.seq == NULL) {
        g.r.other++;
        return;
    }
    /* "NAME: b <sender> <seq> <t_us>[ pad]": the fields follow the marker
     * after the name; or "b <sender> ..." as sent (nchan). */
    const uint8_t *m;
    if (len > 2 && memcmp(p, "b ", 2) == 0) {
        m = p + 2;
    } else if ((m = memmem(p, len, ": b ", 4)) != NULL) {
        m += 4;
    } else {
        g.r.other++;
        return;
    }
    char tmp[80];
    size_t tl = (size_t)(p + len - m);
    if (tl >= sizeof tmp)
        tl = sizeof tmp - 1;
    memcpy(tmp, m, tl);
    tmp[tl] = '\0';
    char *e;
    unsigned long k = strtoul(tmp, &e, 10);
    unsigned long s = strtoul(e, &e, 10);
    unsigned long long t = strtoull(e, &e, 10);
    if (k >= (unsigned long)o.senders || s == 0 || s > UINT32_MAX || t == 0) {
        g.r.other++;
        return;
    }
    struct seqst *q = &g.seq[(size_t)(c - g.c) * (size_t)o.senders + k];
    uint32_t seq = (uint32_t)s;
    if (seq > q->last) {
        uint32_t d = seq - q->last;
        g.r.gaps += d - 1;
        q->win = d >= 64 ? 0 : q->win << d;
        q->win |= 1;
        q->last = seq;
    } else {
        uint32_t d = q->last - seq;
        if (d < 64 && (q->win >> d) & 1) {
            g.r.dup++;
            return;
        }
        /* Late: fills a gap counted before (beyond the window we cannot tell
         * it from a duplicate and count it as late). */
        if (d < 64)
            q->win |= 1ull << d;
        g.r.reorder++;
        g.r.gaps--;
    }
    g.r.delivered++;
    if (g.now <= g.t_send_end)
        g.r.window_delivered++;
    if (g.now > g.t0 && g.now - g.t0 > g.r.last_delivery_us)
        g.r.last_delivery_us = g.now - g.t0;
    if (!c->no_lat)
        hist_add(&g.r.lat, g.now > t ? g.now - t : 0);
    if (g.have_total && g.r.delivered >= g.expected_local && g.phase == 3)
        finish();
}

/* Inflates a compressed frame's payload (RFC 7692 7.2.2: the removed
 * 00 00 FF FF put back) into g.zbuf. Returns 0 with the length in *out. */
static int inflate_frame(const uint8_t *p, size_t len, size_t *out)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xFF, 0xFF};
    if (inflateReset(&g.inf) != Z_OK)
        return -1;
    g.inf.next_out = g.zbuf;
    g.inf.avail_out = MAX_FRAME;
    g.inf.next_in = (Bytef *)(uintptr_t)p;
    g.inf.avail_in = (uInt)len;
    int rc = inflate(&g.inf, Z_SYNC_FLUSH);
    if (rc == Z_OK || rc == Z_BUF_ERROR) {
        g.inf.next_in = (Bytef *)(uintptr_t)tail;
        g.inf.avail_in = sizeof tail;
        rc = inflate(&g.inf, Z_SYNC_FLUSH);
    }
    if (rc != Z_OK && rc != Z_STREAM_END)
        return -1;
    *out = MAX_FRAME - g.inf.avail_out;
    return 0;
}

/* Compresses a message as a browser does (no context kept): the deflate
 * data without its 00 00 FF FF, into g.zbuf. Returns its length, or -1. */
static long deflate_text(const uint8_t *p, size_t len)
{
    if (deflateReset(&g.def) != Z_OK)
        return -1;
    g.def.next_in = (Bytef *)(uintptr_t)p;
    g.def.avail_in = (uInt)len;
    g.def.next_out = g.zbuf;
    g.def.avail_out = MAX_FRAME;
    if (deflate(&g.def, Z_SYNC_FLUSH) != Z_OK || g.def.avail_in || g.def.avail_out == 0)
        return -1;
    return (long)(MAX_FRAME - g.def.avail_out) - 4;
}

/* Handles the frames in buf; returns bytes used, or -1 if c was closed. */
static long on_frames(struct client *c, uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (len - off >= 2) {
        uint8_t *f = buf + off;
        size_t avail = len - off;
        int fin = f[0] & 0x80, op = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t pl = f[1] & 0x7f;
        size_t h = 2;
        if (pl == 126) {
            if (avail < 4)
                break;
            pl = (uint64_t)f[2] << 8 | f[3];
            h = 4;
        } else if (pl == 127) {
            if (avail < 10)
                break;
            pl = 0;
            for (int i = 0; i < 8; i++)
                pl = pl << 8 | f[2 + i];
            h = 10;
        }
        if (pl > MAX_FRAME || (op >= 8 && (pl > 125 || !fin))) {
            drop_client(c, D_PROTO);
            return -1;
        }
        if (masked)
            h += 4;
        if (avail < h + pl)
            break;
        uint8_t *p = f + h;
        if (masked)
            for (size_t i = 0; i < pl; i++)
                p[i] ^= f[h - 4 + (i & 3)];
        off += h + (size_t)pl;
        if (op <= 0x2)
            g.r.data_bytes += h + pl;
        switch (op) {
        case 0x1: /* text; a fragmented one is judged by its first part */
            if (c->in_frag) {
                drop_client(c, D_PROTO);
                return -1;
            }
            c->in_frag = !fin;
            if (f[0] & 0x40) { /* compressed: chatd never fragments its frames */
                size_t n;
                g.r.zframes++;
                if (!c->z || !fin || inflate_frame(p, (size_t)pl, &n) < 0) {
                    drop_client(c, D_PROTO);
                    return -1;
                }
                on_text(c, g.zbuf, n);
                break;
            }
            on_text(c, p, (size_t)pl);
            break;
        case 0x0:
            if (!c->in_frag) {
                drop_client(c, D_PROTO);
                return -1;
            }
            if (fin)
                c->in_frag = 0;
            break;
        case 0x2:
            g.r.other++;
            break;
        case 0x8: { /* close: answer with the same code, then hang up */
            unsigned code = pl >= 2 ? (unsigned)p[0] << 8 | p[1] : 1005;
            g.r.close_code[code >= 1000 && code <= 1015 ? code - 1000 : 16]++;
            uint8_t echo[2] = {pl >= 2 ? p[0] : 0, pl >= 2 ? p[1] : 0}, out[16];
            if (c->wlen == c->woff)
                c_send(c, out, ws_frame(out, 0x8, echo, pl >= 2 ? 2 : 0));
            drop_client(c, D_CLOSE);
            return -1;
        }
        case 0x9:
            g.r.pings++;
            if (send_frame(c, 0xA, p, (size_t)pl) < 0) {
                drop_client(c, D_ERROR);
                return -1;
            }
            break;
        case 0xA:
            break;
        default:
            drop_client(c, D_PROTO);
            return -1;
        }
        if (c->state != ST_OPEN)
            return -1;
    }
    return (long)off;
}

static void stash(struct client *c, const uint8_t *p, size_t len)
{
    free(c->rbuf);
    c->rbuf = NULL;
    c->rlen = 0;
    if (!len)
        return;
    c->rbuf = malloc(len);
    if (!c->rbuf) {
        drop_client(c, D_ERROR);
        return;
    }
    memcpy(c->rbuf, p, len);
    c->rlen = (uint32_t)len;
}

static void rc_back(struct client *c);

static void on_upgraded(struct client *c)
{
    c->state = ST_OPEN;
    g.alive++;
    if (c->rc_on) {
        rc_back(c);
        return;
    }
    g.inflight--;
    g.r.connected++;
    g.r.znegotiated += c->z;
    g.done_connecting++;
    uint64_t now = mono_us();
    g.r.connect_us = now - g.t_start;
    hist_add(&g.r.hs, now - c->t_begin);
}

static void on_readable(struct client *c)
{
    size_t have = 0;
    if (c->rlen) {
        memcpy(g.rbuf, c->rbuf, c->rlen);
        have = c->rlen;
        free(c->rbuf);
        c->rbuf = NULL;
        c->rlen = 0;
    }
    for (int iter = 0;; iter++) {
        size_t room = RBUF_CAP - have;
        if (room > READ_CHUNK)
            room = READ_CHUNK;
        ssize_t n = c_recv(c, g.rbuf + have, room);
        if (n == -1)
            break;
        if (n == 0 || n == -2) {
            if (c->state == ST_HTTP)
                fail_client(c, n == 0 ? F_EOF : F_IO, errno);
            else
                drop_client(c, n == 0 ? D_EOF : D_ERROR);
            return;
        }
        g.now = mono_us();
        have += (size_t)n;
        size_t used = 0;
        if (c->state == ST_HTTP) {
            uint8_t *e = memmem(g.rbuf, have, "\r\n\r\n", 4);
            if (!e) {
                if (have > MAX_HEAD) {
                    fail_client(c, F_HTTP, 0);
                    return;
                }
                continue;
            }
            used = (size_t)(e + 4 - g.rbuf);
            if (check_response(c, (const char *)g.rbuf, used) < 0)
                return;
            on_upgraded(c);
            connect_done();
            if (c->state != ST_OPEN)
                return;
        }
        long r = on_frames(c, g.rbuf + used, have - used);
        if (r < 0)
            return;
        used += (size_t)r;
        memmove(g.rbuf, g.rbuf + used, have - used);
        have -= used;
        /* Plain sockets: level triggered, come back later for the rest; a
         * short read emptied the socket, and asking again would cost a
         * recv() that says EAGAIN, as many as the deliveries when each
         * wake-up brings one frame (a big room at a low rate). TLS: bytes
         * already decrypted would never wake us, read to the end. */
        if (!c->ssl && (iter >= 3 || (size_t)n < room))
            break;
    }
    stash(c, g.rbuf, have);
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    switch (c->state) {
    case ST_CONNECTING: {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
            err = errno;
        if (err) {
            fail_client(c, F_CONNECT, err);
            return;
        }
        if (c->ssl) {
            c->state = ST_TLS;
            tls_step(c);
        } else {
            send_request(c);
        }
        return;
    }
    case ST_TLS:
        tls_step(c);
        return;
    case ST_HTTP:
    case ST_OPEN:
        if ((what & EV_WRITE) && flush(c) < 0) {
            if (c->state == ST_HTTP)
                fail_client(c, F_IO, errno);
            else
                drop_client(c, D_ERROR);
            return;
        }
        if (what & EV_READ || c->ssl)
            on_readable(c);
        if ((c->state == ST_OPEN || c->state == ST_HTTP) && c->ssl && c->wlen > c->woff &&
            flush(c) < 0)
            drop_client(c, D_ERROR);
        return;
    default:
        return;
    }
}

/* ---------------------------------------------------------------- phases */

static void ramp_tick(evutil_socket_t fd, short what, void *arg);

static void connect_done(void)
{
    if (g.phase != 0 || g.done_connecting < g.n)
        return;
    g.phase = 1;
    if (g.ramp_ev)
        event_del(g.ramp_ev);
    event_del(g.deadline_ev);
    ctl_send(g.ctl_fd, CTL_READY, g.r.connected, g.r.connect_us);
}

static void ramp_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (g.phase != 0)
        return;
    uint64_t now = mono_us();
    long due = g.n;
    if (g.ramp > 0) {
        double d = (double)(now - g.t_start) * g.ramp / 1e6 + 1;
        due = d < (double)g.n ? (long)d : g.n;
    }
    /* Bounded per tick so the loop keeps answering the clients it has. */
    long budget = 2000;
    while (g.next_start < due && g.inflight < (long)g.inflight_cap && budget-- > 0) {
        struct client *c = &g.c[g.next_start++];
        start_client(c);
        if (g.phase != 0)
            return;
    }
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (g.phase != 0)
        return;
    for (long i = 0; i < g.n && g.phase == 0; i++) {
        struct client *c = &g.c[i];
        if (c->state != ST_OPEN && c->state != ST_DONE)
            fail_client(c, F_TIMEOUT, 0);
    }
}

/* ------------------------------------------------------------ reconnect */

static uint32_t rnd(void)
{
    uint32_t x = g.rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    g.rng = x;
    return x;
}

static void rc_try_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct client *c = arg;
    if (c->state != ST_WAIT)
        return;
    c->state = ST_IDLE;
    c->tries++;
    c->rc_try = mono_us();
    g.r.rc_attempts++;
    start_client(c);
}

/* The next attempt after delay_us; the client holds no socket meanwhile. */
static void rc_schedule(struct client *c, uint64_t delay_us)
{
    c->state = ST_WAIT;
    c->interest = 0;
    event_assign(&c->ev, g.base, -1, 0, rc_try_cb, c);
    struct timeval tv = tv_us((int64_t)delay_us);
    event_add(&c->ev, &tv);
}

static void rc_progress(void)
{
    if (g.down == 0 && o.verbose)
        fprintf(stderr,
                "chatbench: reconnect: %" PRIu64 " of %" PRIu64 " drops back, %" PRIu64
                " gave up, none pending, %.3f s after the first drop (pid %d)\n",
                g.r.rc_back, g.r.rc_drops, g.r.rc_gave_up,
                (double)(mono_us() - g.r.first_drop_at) / 1e6, (int)getpid());
}

/* A client lost after the start: connect again at once, elsewhere. The first
 * attempt goes 1 + (i / U) mod (U - 1) places along the list of U URLs, so the
 * clients of a lost node spread evenly over the others; every failed attempt
 * moves on to the next URL. */
static void rc_begin(struct client *c)
{
    uint64_t now = mono_us();
    c->rc_on = 1;
    c->tries = 0;
    c->rc_drop = now;
    g.down++;
    g.r.rc_drops++;
    if (!g.r.first_drop_at || now < g.r.first_drop_at)
        g.r.first_drop_at = now;
    if (o.nurls > 1 && c->url != URL_SENDER) {
        uint32_t u = (uint32_t)o.nurls;
        c->url = (uint8_t)((c->url + 1 + (c->id / u) % (u - 1)) % u);
    }
    rc_schedule(c, 0);
}

/* A reconnect attempt failed: next URL; refused connects go on at once until
 * every URL was tried, anything else waits a doubling, jittered backoff. */
static void rc_failed(struct client *c, enum fail why, int err)
{
    close_client(c);
    g.r.rc_failed++;
    g.r.rc_fail[why]++;
    int refused = why == F_CONNECT && err == ECONNREFUSED;
    if (refused)
        g.r.rc_refused++;
    if (o.verbose > 1)
        fprintf(stderr, "client %u: reconnect attempt %u to %s failed: %s %s\n", c->id,
                (unsigned)c->tries, curl(c)->text, fail_name[why], err ? strerror(err) : "");
    if (o.nurls > 1 && c->url != URL_SENDER)
        c->url = (uint8_t)((c->url + 1) % (uint32_t)o.nurls);
    if (c->tries >= o.rc_tries) {
        c->rc_on = 0; /* stays ST_DONE */
        g.down--;
        g.r.rc_gave_up++;
        rc_progress();
        return;
    }
    uint64_t d = 0;
    if (!refused || c->tries >= o.nurls) {
        unsigned k = c->tries > 20 ? 20 : c->tries - 1u;
        double b = o.rc_backoff * 1e6 * (double)(1u << k);
        uint64_t full = b > BACKOFF_CAP_US ? BACKOFF_CAP_US : (uint64_t)b;
        d = full / 2 + (full / 2 ? rnd() % (full / 2 + 1) : 0);
    }
    rc_schedule(c, d);
}

static void rc_back(struct client *c)
{
    uint64_t now = mono_us();
    c->rc_on = 0;
    g.down--;
    g.r.rc_back++;
    hist_add(&g.r.rc_down, now - c->rc_drop);
    if (now > g.r.last_back_at)
        g.r.last_back_at = now;
    rc_progress();
}

/* Attempts that hang (a SYN in a full backlog, a server that never answers)
 * fail after --reconnect-timeout. */
static void sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (g.down == 0)
        return;
    uint64_t now = mono_us(), lim = (uint64_t)(o.rc_timeout * 1e6);
    for (long i = 0; i < g.n; i++) {
        struct client *c = &g.c[i];
        if (c->rc_on &&
            (c->state == ST_CONNECTING || c->state == ST_TLS || c->state == ST_HTTP) &&
            now - c->rc_try > lim)
            fail_client(c, F_TIMEOUT, 0);
    }
}

static uint64_t due_us(uint64_t j)
{
    return g.t0 + (uint64_t)((double)j * 1e6 / o.rate);
}

/* Sender k is client k*N/K: spread evenly over the processes. Is id one? */
static int is_sender(long id)
{
    uint64_t K = (uint64_t)o.senders, N = (uint64_t)o.conns;
    uint64_t k = ((uint64_t)id * K + N - 1) / N; /* least k with k*N/K >= id */
    return k < K && k * N / K == (uint64_t)id;
}

static struct client *sender_client(uint64_t k)
{
    long gid = (long)(k * (uint64_t)o.conns / (uint64_t)o.senders);
    if (gid < g.lo || gid >= g.hi)
        return NULL;
    return &g.c[gid - g.lo];
}

/* Pads text[0..n) to o.msg_size bytes: 'x's, or chat words, or a JSON-ish
 * order (what a bot might post), different in every message. Returns the
 * new length. */
static int pad_text(char *text, int n)
{
    static const char *const words[] = {
        "the", "I", "you", "we", "meet", "at", "station", "around", "seven", "then", "grab",
        "something", "to", "eat", "before", "movie", "starts", "what", "do", "think", "ok",
        "sure", "sounds", "good", "see", "later", "maybe", "tomorrow", "is", "it", "raining",
        "there", "lol", "yes", "no", "thanks", "for", "the", "link", "did", "anyone", "read",
        "email", "about", "meeting", "Thursday", "room", "changed", "coffee", "please",
    };
    int want = (int)o.msg_size;
    if (n >= want)
        return n;
    text[n++] = ' ';
    if (o.pad == PAD_X) {
        while (n < want)
            text[n++] = 'x';
        return n;
    }
    char chunk[160];
    for (uint32_t item = 0; n < want; item++) {
        int k;
        if (o.pad == PAD_WORDS) {
            const char *w = words[rnd() % (sizeof words / sizeof words[0])];
            uint32_t r = rnd() % 16;
            k = snprintf(chunk, sizeof chunk, "%s%s", w, r == 0 ? ", " : r == 1 ? "? " : " ");
        } else if (item == 0) {
            k = snprintf(chunk, sizeof chunk,
                         "{\"type\":\"order\",\"id\":\"A-%05u\",\"status\":\"confirmed\","
                         "\"items\":[",
                         rnd() % 100000);
        } else {
            k = snprintf(chunk, sizeof chunk,
                         "{\"sku\":\"SKU-%05u\",\"name\":\"item %u\",\"qty\":%u,"
                         "\"price\":\"%u.%02u\"},",
                         rnd() % 100000, item, 1 + rnd() % 9, rnd() % 200, rnd() % 100);
        }
        int take = k < want - n ? k : want - n;
        memcpy(text + n, chunk, (size_t)take);
        n += take;
    }
    return n;
}

static void send_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    uint64_t now = mono_us();
    char text[MAX_MSG + 64];
    while (g.next_j < g.total_msgs && due_us(g.next_j) <= now) {
        uint64_t k = g.next_j % (uint64_t)o.senders;
        struct client *c = sender_client(k);
        g.next_j++;
        if (!c || c->state != ST_OPEN)
            continue;
        uint64_t t = mono_us();
        int n = snprintf(text, sizeof text, "b %" PRIu64 " %u %" PRIu64, k,
                         g.sender_seq[k] + 1, t);
        n = pad_text(text, n);
        long zn = c->z ? deflate_text((const uint8_t *)text, (size_t)n) : -1;
        if (zn >= 0 ? send_frame(c, 0x40 | 0x1, g.zbuf, (size_t)zn) < 0
                    : send_frame(c, 0x1, (const uint8_t *)text, (size_t)n) < 0) {
            drop_client(c, D_ERROR);
            continue;
        }
        g.sender_seq[k]++;
        g.r.sent++;
    }
    /* Sleep until the next message one of our senders owns. */
    for (uint64_t j = g.next_j; j < g.total_msgs && j < g.next_j + (uint64_t)o.senders; j++) {
        if (sender_client(j % (uint64_t)o.senders)) {
            struct timeval tv = tv_us((int64_t)(due_us(j) - now));
            evtimer_add(g.send_ev, &tv);
            return;
        }
    }
}

static void window_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (o.mode == MODE_IDLE) {
        finish();
        return;
    }
    event_del(g.send_ev);
    g.phase = 3;
    ctl_send(g.ctl_fd, CTL_SENT, g.r.sent, 0);
    struct timeval tv = tv_us((int64_t)(o.drain * 1e6));
    evtimer_add(g.drain_ev, &tv);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    finish();
}

static void hard_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    fprintf(stderr, "chatbench: child %d: hard deadline reached, reporting now\n", (int)getpid());
    finish();
}

static void ctl_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what, (void)arg;
    struct ctl m;
    ssize_t n = recv(fd, &m, sizeof m, MSG_WAITALL);
    if (n != (ssize_t)sizeof m)
        _exit(3); /* parent gone */
    if (m.type == CTL_GO && g.phase == 1) {
        g.phase = 2;
        g.t0 = m.a;
        g.t_send_end = g.t0 + (uint64_t)(o.duration * 1e6);
        g.r.alive_at_go = g.alive;
        uint64_t now = mono_us();
        struct timeval tv = tv_us((int64_t)(g.t_send_end - now));
        evtimer_add(g.window_ev, &tv);
        if (o.mode == MODE_BROADCAST) {
            tv = tv_us((int64_t)(g.t0 - now));
            evtimer_add(g.send_ev, &tv);
        }
    } else if (m.type == CTL_TOTAL) {
        g.have_total = 1;
        g.expected_local = m.a * g.r.alive_at_go;
        if (g.phase == 3 && g.r.delivered >= g.expected_local)
            finish();
    }
}

static void finish(void)
{
    g.r.alive_at_end = g.alive;
    g.r.rc_down_at_end = g.down;
    g.r.conns = (uint64_t)g.n;
    ctl_send(g.ctl_fd, CTL_RESULT, 0, 0);
    write_full(g.ctl_fd, &g.r, sizeof g.r);
    /* Say goodbye, best effort: a close frame, then hang up. */
    for (long i = 0; i < g.n; i++) {
        struct client *c = &g.c[i];
        if (c->state == ST_OPEN && c->wlen == c->woff) {
            uint8_t out[16], code[2] = {0x03, 0xe8}; /* 1000 */
            size_t n = ws_frame(out, 0x8, code, 2);
            c_send(c, out, n);
        }
        close_client(c);
    }
    _exit(0);
}

static int child_main(int idx, int ctl_fd, uint64_t t_start)
{
    g.ctl_fd = ctl_fd;
    g.t_start = t_start;
    g.lo = (long)((uint64_t)o.conns * (uint64_t)idx / (uint64_t)o.procs);
    g.hi = (long)((uint64_t)o.conns * (uint64_t)(idx + 1) / (uint64_t)o.procs);
    g.n = g.hi - g.lo;
    g.ramp = o.ramp / o.procs;
    g.inflight_cap = (double)o.inflight / o.procs < 1 ? 1 : (double)o.inflight / o.procs;
    g.mask_state = (uint32_t)(getpid() * 2654435761u) | 1;
    g.rng = g.mask_state ^ 0x9e3779b9u;
    if (!g.rng)
        g.rng = 1;
    uint64_t seed = mono_us() ^ ((uint64_t)getppid() << 32);
    memcpy(g.key_seed, &seed, 8);
    memcpy(g.key_seed + 8, &idx, 4);

    signal(SIGPIPE, SIG_IGN);
    g.base = event_base_new();
    g.c = calloc((size_t)(g.n ? g.n : 1), sizeof *g.c);
    g.rbuf = malloc(RBUF_CAP);
    g.sbuf = malloc(MAX_MSG + 64);
    if (!g.base || !g.c || !g.rbuf || !g.sbuf) {
        fprintf(stderr, "chatbench: out of memory\n");
        _exit(1);
    }
    if (o.deflate && ((g.zbuf = malloc(MAX_FRAME)) == NULL ||
                      inflateInit2(&g.inf, -15) != Z_OK ||
                      deflateInit2(&g.def, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)) {
        fprintf(stderr, "chatbench: cannot set up zlib\n");
        _exit(1);
    }
    for (long i = 0; i < g.n; i++) {
        struct client *c = &g.c[i];
        c->fd = -1;
        c->id = (uint32_t)(g.lo + i);
        c->url = (uint8_t)(c->id % (uint32_t)o.nurls);
        if (o.has_sender_url && is_sender(g.lo + i)) {
            c->url = URL_SENDER;
            c->no_lat = 1;
        }
    }
    if (o.mode == MODE_BROADCAST) {
        g.seq = calloc((size_t)(g.n ? g.n : 1) * (size_t)o.senders, sizeof *g.seq);
        g.sender_seq = calloc((size_t)o.senders, sizeof *g.sender_seq);
        if (!g.seq || !g.sender_seq) {
            fprintf(stderr, "chatbench: out of memory for sequence tracking\n");
            _exit(1);
        }
        g.total_msgs = (uint64_t)(o.rate * o.duration + 0.5);
    }
    int need_tls = 0;
    for (int i = 0; i < o.nurls; i++)
        need_tls |= o.urls[i].tls;
    if (o.has_sender_url)
        need_tls |= o.sender_url.tls;
    if (need_tls) {
        g.ssl_ctx = SSL_CTX_new(TLS_client_method());
        if (!g.ssl_ctx) {
            fprintf(stderr, "chatbench: SSL_CTX_new failed\n");
            _exit(1);
        }
        SSL_CTX_set_mode(g.ssl_ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                                        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        if (o.groups && SSL_CTX_set1_groups_list(g.ssl_ctx, o.groups) != 1) {
            fprintf(stderr, "chatbench: bad --groups %s\n", o.groups);
            _exit(1);
        }
        if (o.insecure) {
            SSL_CTX_set_verify(g.ssl_ctx, SSL_VERIFY_NONE, NULL);
        } else {
            SSL_CTX_set_verify(g.ssl_ctx, SSL_VERIFY_PEER, NULL);
            if ((o.cafile && SSL_CTX_load_verify_locations(g.ssl_ctx, o.cafile, NULL) != 1) ||
                (!o.cafile && SSL_CTX_set_default_verify_paths(g.ssl_ctx) != 1)) {
                fprintf(stderr, "chatbench: cannot load CA certificates\n");
                _exit(1);
            }
        }
    }

    struct timeval tick = {0, 10000};
    g.ramp_ev = event_new(g.base, -1, EV_PERSIST, ramp_tick, NULL);
    g.deadline_ev = evtimer_new(g.base, deadline_cb, NULL);
    g.send_ev = evtimer_new(g.base, send_tick, NULL);
    g.window_ev = evtimer_new(g.base, window_cb, NULL);
    g.drain_ev = evtimer_new(g.base, drain_cb, NULL);
    g.hard_ev = evtimer_new(g.base, hard_cb, NULL);
    g.ctl_ev = event_new(g.base, ctl_fd, EV_READ | EV_PERSIST, ctl_cb, NULL);
    event_add(g.ramp_ev, &tick);
    event_add(g.ctl_ev, NULL);
    if (o.reconnect) {
        struct timeval st = {0, 100000};
        g.sweep_ev = event_new(g.base, -1, EV_PERSIST, sweep_cb, NULL);
        event_add(g.sweep_ev, &st);
    }
    struct timeval dl = tv_us((int64_t)(o.connect_timeout * 1e6));
    evtimer_add(g.deadline_ev, &dl);
    /* Whatever happens, this process reports and ends by itself. */
    dl = tv_us((int64_t)((o.connect_timeout + o.hold + o.duration + o.drain + 30) * 1e6));
    evtimer_add(g.hard_ev, &dl);

    ramp_tick(-1, 0, NULL);
    connect_done(); /* n == 0 */
    event_base_dispatch(g.base);
    return 0;
}

/* ---------------------------------------------------------------- parent */

struct kid {
    pid_t pid;
    int fd;
    int alive;
    uint64_t connected, connect_us, sent;
    struct result r;
    int have_result;
};

/* Reads exactly len bytes before deadline (µs, monotonic); 0 on success. */
static int read_deadline(int fd, void *buf, size_t len, uint64_t deadline)
{
    char *p = buf;
    while (len) {
        uint64_t now = mono_us();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int timeout = (int)((deadline - now) / 1000) + 1;
        int r = poll(&pfd, 1, timeout);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            continue;
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void kid_lost(struct kid *k, const char *stage)
{
    if (!k->alive)
        return;
    fprintf(stderr, "chatbench: child %d lost while waiting for %s\n", (int)k->pid, stage);
    kill(k->pid, SIGKILL);
    k->alive = 0;
}

static int kid_expect(struct kid *k, uint32_t type, struct ctl *m, uint64_t deadline,
                      const char *stage)
{
    if (!k->alive)
        return -1;
    if (read_deadline(k->fd, m, sizeof *m, deadline) < 0 || m->type != type) {
        kid_lost(k, stage);
        return -1;
    }
    return 0;
}

static double ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static void print_report(const struct result *t, int nkids_lost)
{
    const char *mode = o.mode == MODE_IDLE ? "idle" : "broadcast";
    double connect_s = (double)t->connect_us / 1e6;
    uint64_t expected = t->sent * t->alive_at_go;
    uint64_t lost = expected > t->delivered ? expected - t->delivered : 0;
    double dps = o.duration > 0 ? (double)t->window_delivered / o.duration : 0;
    uint64_t dropped = 0;
    for (int i = 0; i < D__N; i++)
        dropped += t->dropped[i];

    printf("chatbench: mode %s, %ld clients, %d process%s, %d url%s (%s%s)\n", mode, o.conns,
           o.procs, o.procs == 1 ? "" : "es", o.nurls, o.nurls == 1 ? "" : "s", o.urls[0].text,
           o.nurls > 1 ? ", ..." : "");
    if (o.has_sender_url)
        printf("senders    %ld on %s; latency sampled at the other clients only\n", o.senders,
               o.sender_url.text);
    printf("connect    %" PRIu64 "/%" PRIu64 " upgraded in %.3f s (%.0f/s), %" PRIu64 " failed\n",
           t->connected, t->conns, connect_s,
           connect_s > 0 ? (double)t->connected / connect_s : 0.0, t->failed);
    if (t->hs.count)
        printf("handshake  per client, connect() to 101: p50 %.3f ms  p99 %.3f ms  max %.3f ms\n",
               ms(hist_pct(&t->hs, 0.50)), ms(hist_pct(&t->hs, 0.99)), ms(t->hs.max));
    if (t->failed) {
        printf("failures  ");
        for (int i = 0; i < F__N; i++)
            if (t->fail[i])
                printf(" %s %" PRIu64, fail_name[i], t->fail[i]);
        for (int i = 0; i < 600; i++)
            if (t->http[i])
                printf(" [http %d: %u]", i, t->http[i]);
        for (int i = 1; i < ERRNO_SLOTS; i++)
            if (t->conn_errno[i])
                printf(" [%s: %u]", strerror(i), t->conn_errno[i]);
        printf("\n");
    }
    printf("held       %" PRIu64 " open at start of run, %" PRIu64 " at end, %" PRIu64
           " dropped",
           t->alive_at_go, t->alive_at_end, dropped);
    for (int i = 0; i < D__N; i++)
        if (t->dropped[i])
            printf(" [%s %" PRIu64 "]", drop_name[i], t->dropped[i]);
    for (int i = 0; i < 17; i++)
        if (t->close_code[i]) {
            if (i < 16)
                printf(" [close %d: %u]", 1000 + i, t->close_code[i]);
            else
                printf(" [close other: %u]", t->close_code[i]);
        }
    printf(", %" PRIu64 " pings answered\n", t->pings);
    if (nkids_lost)
        printf("WARNING    %d child process(es) lost; their clients are missing\n", nkids_lost);
    if (o.mode == MODE_BROADCAST) {
        printf("send       %" PRIu64 " messages from %ld senders in %.1f s (%.1f msg/s asked)\n",
               t->sent, o.senders, o.duration, o.rate);
        printf("delivery   expected %" PRIu64 ", delivered %" PRIu64 " (%.3f%%), lost %" PRIu64
               " (gaps %" PRId64 "), dup %" PRIu64 ", reordered %" PRIu64 ", other %" PRIu64
               "\n",
               expected, t->delivered,
               expected ? 100.0 * (double)t->delivered / (double)expected : 100.0, lost, t->gaps,
               t->dup, t->reorder, t->other);
        printf("rate       %.0f deliveries/s in the send window (%.0f/s asked), last delivery "
               "%.3f s after start\n",
               dps, o.duration > 0 ? (double)expected / o.duration : 0.0,
               (double)t->last_delivery_us / 1e6);
        printf("wire       %" PRIu64 " bytes of data frames received, %.1f per delivery; %" PRIu64
               " frames compressed; %" PRIu64 " clients negotiated permessage-deflate\n",
               t->data_bytes, t->delivered ? (double)t->data_bytes / (double)t->delivered : 0.0,
               t->zframes, t->znegotiated);
        printf("latency    p50 %.3f ms  p90 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms"
               "  (%" PRIu64 " samples)\n",
               ms(hist_pct(&t->lat, 0.50)), ms(hist_pct(&t->lat, 0.90)),
               ms(hist_pct(&t->lat, 0.99)), ms(hist_pct(&t->lat, 0.999)), ms(t->lat.max),
               t->lat.count);
    }
    uint64_t never = t->rc_gave_up + t->rc_down_at_end;
    double back_s = t->first_drop_at && t->last_back_at > t->first_drop_at
                        ? (double)(t->last_back_at - t->first_drop_at) / 1e6
                        : 0.0;
    if (o.reconnect) {
        printf("reconnect  %" PRIu64 " drops, %" PRIu64 " back, %" PRIu64 " gave up, %" PRIu64
               " still trying at the end; ",
               t->rc_drops, t->rc_back, t->rc_gave_up, t->rc_down_at_end);
        if (!t->rc_drops)
            printf("nothing to measure\n");
        else if (never)
            printf("NOT all back (last one back %.3f s after the first drop)\n", back_s);
        else
            printf("all back %.3f s after the first drop\n", back_s);
        printf("attempts   %" PRIu64 " (%" PRIu64 " retries), %" PRIu64 " failed:", t->rc_attempts,
               t->rc_attempts > t->rc_drops ? t->rc_attempts - t->rc_drops : 0, t->rc_failed);
        if (t->rc_refused)
            printf(" [refused %" PRIu64 "]", t->rc_refused);
        for (int i = 0; i < F__N; i++) {
            uint64_t n = t->rc_fail[i] - (i == F_CONNECT ? t->rc_refused : 0);
            if (n)
                printf(" [%s %" PRIu64 "]", fail_name[i], n);
        }
        for (int i = 0; i < 600; i++)
            if (t->rc_http[i])
                printf(" [http %d: %u]", i, t->rc_http[i]);
        printf("\ndown time  per drop p50 %.3f ms  p99 %.3f ms  max %.3f ms\n",
               ms(hist_pct(&t->rc_down, 0.50)), ms(hist_pct(&t->rc_down, 0.99)),
               ms(t->rc_down.max));
    }
    printf("{\"mode\":\"%s\",\"conns\":%ld,\"connected\":%" PRIu64 ",\"failed\":%" PRIu64
           ",\"connect_s\":%.3f,\"sent\":%" PRIu64 ",\"expected\":%" PRIu64
           ",\"delivered\":%" PRIu64 ",\"dup\":%" PRIu64 ",\"reorder\":%" PRIu64
           ",\"lost\":%" PRIu64 ",\"deliveries_per_s\":%.1f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,\"gaps\":%" PRId64
           ",\"dropped\":%" PRIu64 ",\"held\":%" PRIu64 ",\"pings\":%" PRIu64
           ",\"procs\":%d,\"senders\":%ld,\"rate\":%.1f,\"duration_s\":%.1f,\"lat_samples\":%" PRIu64
           ",\"hs_p50_ms\":%.3f,\"hs_p99_ms\":%.3f,\"hs_max_ms\":%.3f",
           mode, o.conns, t->connected, t->failed, connect_s, t->sent, expected, t->delivered,
           t->dup, t->reorder, lost, dps, ms(hist_pct(&t->lat, 0.50)),
           ms(hist_pct(&t->lat, 0.90)), ms(hist_pct(&t->lat, 0.99)),
           ms(hist_pct(&t->lat, 0.999)), ms(t->lat.max), t->gaps, dropped, t->alive_at_end,
           t->pings, o.procs, o.mode == MODE_BROADCAST ? o.senders : 0L,
           o.mode == MODE_BROADCAST ? o.rate : 0.0, o.duration, t->lat.count,
           ms(hist_pct(&t->hs, 0.50)), ms(hist_pct(&t->hs, 0.99)), ms(t->hs.max));
    printf(",\"deflate_clients\":%" PRIu64 ",\"data_bytes\":%" PRIu64 ",\"zframes\":%" PRIu64,
           t->znegotiated, t->data_bytes, t->zframes);
    if (o.reconnect)
        printf(",\"rc_drops\":%" PRIu64 ",\"rc_back\":%" PRIu64 ",\"rc_gave_up\":%" PRIu64
               ",\"rc_down_at_end\":%" PRIu64 ",\"rc_never_back\":%" PRIu64
               ",\"rc_attempts\":%" PRIu64 ",\"rc_failed\":%" PRIu64 ",\"rc_refused\":%" PRIu64
               ",\"rc_timeout\":%" PRIu64 ",\"rc_http_failed\":%" PRIu64
               ",\"rc_other_failed\":%" PRIu64 ",\"rc_back_s\":%.3f,\"rc_down_p50_ms\":%.3f"
               ",\"rc_down_p99_ms\":%.3f,\"rc_down_max_ms\":%.3f",
               t->rc_drops, t->rc_back, t->rc_gave_up, t->rc_down_at_end, never, t->rc_attempts,
               t->rc_failed, t->rc_refused, t->rc_fail[F_TIMEOUT], t->rc_fail[F_HTTP],
               t->rc_failed - t->rc_refused - t->rc_fail[F_TIMEOUT] - t->rc_fail[F_HTTP], back_s,
               ms(hist_pct(&t->rc_down, 0.50)), ms(hist_pct(&t->rc_down, 0.99)),
               ms(t->rc_down.max));
    printf("}\n");
    fflush(stdout);
}

/* The children we forked, for the signal handler: SIGTERM or SIGINT to the
 * parent ends them too (by pid) instead of leaving them to notice the closed
 * control socket. */
static volatile pid_t kid_pids[MAX_PROCS];

static void kill_kids(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        if (kid_pids[i] > 0)
            kill(kid_pids[i], SIGKILL);
}

static void on_stop_signal(int sig)
{
    kill_kids();
    _exit(128 + sig);
}

static int parent_main(void)
{
    static struct kid kids[MAX_PROCS];
    uint64_t t_start = mono_us();
    fflush(stdout);
    fflush(stderr);
    sigset_t stop_sigs, old_mask;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGTERM);
    sigaddset(&stop_sigs, SIGINT);
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (int i = 0; i < o.procs; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
            perror("chatbench: socketpair");
            return 1;
        }
        sigprocmask(SIG_BLOCK, &stop_sigs, &old_mask);
        pid_t pid = fork();
        if (pid < 0) {
            perror("chatbench: fork");
            kill_kids();
            return 1;
        }
        if (pid == 0) {
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            sigprocmask(SIG_SETMASK, &old_mask, NULL);
            close(sv[0]);
            for (int j = 0; j < i; j++)
                close(kids[j].fd);
            child_main(i, sv[1], t_start);
            _exit(0);
        }
        kid_pids[i] = pid;
        sigprocmask(SIG_SETMASK, &old_mask, NULL);
        close(sv[1]);
        kids[i] = (struct kid){.pid = pid, .fd = sv[0], .alive = 1};
    }

    struct ctl m;
    uint64_t dl = t_start + (uint64_t)((o.connect_timeout + 15) * 1e6);
    for (int i = 0; i < o.procs; i++)
        if (kid_expect(&kids[i], CTL_READY, &m, dl, "the connect phase") == 0) {
            kids[i].connected = m.a;
            kids[i].connect_us = m.b;
        }
    if (o.verbose) {
        uint64_t c = 0;
        for (int i = 0; i < o.procs; i++)
            c += kids[i].connected;
        fprintf(stderr, "chatbench: %" PRIu64 " connected after %.3f s, starting the run\n", c,
                (double)(mono_us() - t_start) / 1e6);
    }

    /* One start instant for every child, a little ahead so all see it, and
     * --hold later: the clients sit idle until then. */
    uint64_t t0 = mono_us() + 200000 + (uint64_t)(o.hold * 1e6);
    for (int i = 0; i < o.procs; i++)
        if (kids[i].alive && ctl_send(kids[i].fd, CTL_GO, t0, 0) < 0)
            kid_lost(&kids[i], "the start");

    if (o.mode == MODE_BROADCAST) {
        uint64_t total = 0;
        dl = t0 + (uint64_t)((o.duration + 15) * 1e6); /* t0 is after the hold */
        for (int i = 0; i < o.procs; i++)
            if (kid_expect(&kids[i], CTL_SENT, &m, dl, "the send window") == 0)
                total += m.a;
        for (int i = 0; i < o.procs; i++)
            if (kids[i].alive && ctl_send(kids[i].fd, CTL_TOTAL, total, 0) < 0)
                kid_lost(&kids[i], "the drain");
    }

    dl = t0 + (uint64_t)((o.duration + o.drain + 45) * 1e6);
    struct result *total = calloc(1, sizeof *total);
    if (!total)
        return 1;
    int lost = 0;
    for (int i = 0; i < o.procs; i++) {
        if (kid_expect(&kids[i], CTL_RESULT, &m, dl, "the results") == 0 &&
            read_deadline(kids[i].fd, &kids[i].r, sizeof kids[i].r, dl) == 0) {
            result_add(total, &kids[i].r);
        } else {
            kid_lost(&kids[i], "the results");
            long n = (long)((uint64_t)o.conns * (uint64_t)(i + 1) / (uint64_t)o.procs) -
                     (long)((uint64_t)o.conns * (uint64_t)i / (uint64_t)o.procs);
            total->conns += (uint64_t)n;
            total->failed += (uint64_t)n;
            total->fail[F_CHILD] += (uint64_t)n;
            lost++;
        }
    }
    /* Every child reported or was killed: forget the pids before they are
     * reaped and could be reused. */
    for (int i = 0; i < o.procs; i++)
        kid_pids[i] = 0;
    for (int i = 0; i < o.procs; i++) {
        close(kids[i].fd);
        waitpid(kids[i].pid, NULL, 0);
    }
    print_report(total, lost);
    free(total);
    return lost ? 1 : 0;
}

/* ---------------------------------------------------------------- options */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chatbench --url URL [--url URL ...] [options]\n"
            "\n"
            "  --url URL             ws://HOST:PORT/PATH?QUERY or wss://...; repeatable, used\n"
            "                        round-robin; {i} becomes the client number (0..N-1),\n"
            "                        e.g. 'ws://127.0.0.1:5000/?username=u{i}&room=r'.\n"
            "                        HOST: a 127.x.y.z address or localhost\n"
            "  --conns N             clients (default 100)\n"
            "  --ramp R              new connections per second in total (default 0: as fast\n"
            "                        as --inflight allows)\n"
            "  --inflight N          most handshakes in progress at once, in total (1000)\n"
            "  --connect-timeout S   end of the connect phase; unfinished clients fail (60)\n"
            "  --procs P             processes, each with N/P clients (default 1; keep N/P\n"
            "                        under ~19,900: 20,000 open files per process)\n"
            "  --src-ips A-B         bind clients round-robin to source addresses A..B, e.g.\n"
            "                        127.0.0.2-127.0.0.60 (past ~28,000 ports per address)\n"
            "  --mode idle|broadcast idle: hold connections, answer pings (default idle)\n"
            "  --duration S          idle: how long to hold; broadcast: send window (10)\n"
            "  --hold S              broadcast: idle seconds between the connect phase and\n"
            "                        the first message (default 0)\n"
            "  --senders K           broadcast: clients that send (default 10)\n"
            "  --rate R              broadcast: messages per second, all senders together (100)\n"
            "  --drain S             broadcast: wait this long for deliveries after the send\n"
            "                        window; ends earlier once all arrived (default 5)\n"
            "  --msg-size B          broadcast: pad the message text to B bytes\n"
            "  --pad x|words|json    broadcast: what pads it: 'x's (default), chat words, or a\n"
            "                        JSON-ish order, different in every message\n"
            "  --deflate             offer permessage-deflate as Chromium does; where accepted,\n"
            "                        senders compress and receivers inflate (the report counts\n"
            "                        the bytes of data frames received either way)\n"
            "  --sender-url URL      broadcast: the senders connect to URL, the others use the\n"
            "                        --url list; latency is sampled at the others only (e.g.\n"
            "                        send on node A, measure receipt on node B)\n"
            "  --reconnect           idle: a client closed or lost after the connect phase\n"
            "                        connects again at once to another --url (1 + (i/U) mod\n"
            "                        (U-1) places on in the list of U, so a lost node's\n"
            "                        clients spread over the rest; each failed attempt moves\n"
            "                        to the next URL). Reports drops, attempts, failures and\n"
            "                        the time from the first drop until the last is back\n"
            "  --reconnect-tries N   attempts per drop before giving up (default 10)\n"
            "  --reconnect-timeout S one attempt fails after S seconds (default 5)\n"
            "  --reconnect-backoff S wait after a failed attempt, doubled per failure, capped at\n"
            "                        2 s, jittered; a refused connect tries the next URL at\n"
            "                        once until all were tried (default 0.1)\n"
            "  --insecure            wss: do not verify the server certificate\n"
            "  --cafile FILE         wss: trust the CA certificates in FILE\n"
            "  --groups LIST         wss: offer only these key exchange groups (X25519, P-256)\n"
            "  -v, --verbose         progress on stderr (twice: every failure)\n"
            "  -h, --help            this text\n"
            "\n"
            "Expected deliveries assume one room: messages sent x clients open at the start.\n"
            "Exit status: 0 when the run completed (losses are reported, not fatal),\n"
            "1 if a process was lost, 2 on usage errors.\n");
}

static int die_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "chatbench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(try chatbench --help)\n");
    exit(2);
}

static double num(const char *s, const char *what, double lo, double hi)
{
    char *e;
    errno = 0;
    double v = strtod(s, &e);
    if (errno || e == s || *e || v < lo || v > hi)
        die_usage("bad value for %s", what);
    return v;
}

static int loopback(const char *ip, struct in_addr *a)
{
    if (inet_pton(AF_INET, ip, a) != 1)
        return -1;
    return (ntohl(a->s_addr) >> 24) == 127 ? 0 : -1;
}

static void parse_url(const char *text, struct url *u)
{
    u->text = text;
    const char *p;
    if (strncmp(text, "ws://", 5) == 0) {
        p = text + 5;
    } else if (strncmp(text, "wss://", 6) == 0) {
        u->tls = 1;
        p = text + 6;
    } else {
        die_usage("URL must start with ws:// or wss://: %s", text);
        return;
    }
    size_t hl = strcspn(p, ":/?");
    if (hl == 0 || hl >= sizeof u->hostname)
        die_usage("bad host in URL %s", text);
    memcpy(u->hostname, p, hl);
    u->hostname[hl] = '\0';
    long port = u->tls ? 443 : 80;
    const char *rest = p + hl;
    if (*rest == ':') {
        char *e;
        port = strtol(rest + 1, &e, 10);
        if (e == rest + 1 || port < 1 || port > 65535)
            die_usage("bad port in URL %s", text);
        rest = e;
    }
    snprintf(u->hosthdr, sizeof u->hosthdr, "%.*s", (int)(rest - p), p);
    if (*rest == '\0')
        u->path = "/";
    else if (*rest == '/')
        u->path = rest;
    else if (*rest == '?') {
        char *s = malloc(strlen(rest) + 2);
        s[0] = '/';
        strcpy(s + 1, rest);
        u->path = s;
    } else {
        die_usage("bad URL %s", text);
    }
    const char *ip = strcmp(u->hostname, "localhost") == 0 ? "127.0.0.1" : u->hostname;
    u->addr.sin_family = AF_INET;
    u->addr.sin_port = htons((uint16_t)port);
    if (loopback(ip, &u->addr.sin_addr) < 0)
        die_usage("only loopback IPv4 hosts (127.0.0.0/8, localhost) are allowed: %s", text);
    snprintf(u->ip, sizeof u->ip, "%.15s", ip); /* inet_pton took it: at most 15 */
}

static void parse_src_ips(const char *s)
{
    char a[64], b[64];
    const char *dash = strchr(s, '-');
    if (dash) {
        snprintf(a, sizeof a, "%.*s", (int)(dash - s), s);
        snprintf(b, sizeof b, "%s", dash + 1);
    } else {
        snprintf(a, sizeof a, "%s", s);
        snprintf(b, sizeof b, "%s", s);
    }
    struct in_addr x, y;
    if (loopback(a, &x) < 0 || loopback(b, &y) < 0 || ntohl(x.s_addr) > ntohl(y.s_addr))
        die_usage("--src-ips wants a range of loopback addresses A-B: %s", s);
    o.src_lo = ntohl(x.s_addr);
    o.src_hi = ntohl(y.s_addr);
}

int main(int argc, char **argv)
{
    enum {
        O_URL = 256, O_CONNS, O_RAMP, O_INFLIGHT, O_CTIMEOUT, O_PROCS, O_SRC, O_MODE,
        O_DURATION, O_SENDERS, O_RATE, O_DRAIN, O_SIZE, O_INSECURE, O_CAFILE, O_GROUPS,
        O_SENDER_URL, O_RECONNECT, O_RC_TRIES, O_RC_TIMEOUT, O_RC_BACKOFF, O_DEFLATE, O_PAD,
        O_HOLD,
    };
    static const struct option lo[] = {
        {"url", required_argument, NULL, O_URL},
        {"conns", required_argument, NULL, O_CONNS},
        {"ramp", required_argument, NULL, O_RAMP},
        {"inflight", required_argument, NULL, O_INFLIGHT},
        {"connect-timeout", required_argument, NULL, O_CTIMEOUT},
        {"procs", required_argument, NULL, O_PROCS},
        {"src-ips", required_argument, NULL, O_SRC},
        {"mode", required_argument, NULL, O_MODE},
        {"duration", required_argument, NULL, O_DURATION},
        {"hold", required_argument, NULL, O_HOLD},
        {"senders", required_argument, NULL, O_SENDERS},
        {"rate", required_argument, NULL, O_RATE},
        {"drain", required_argument, NULL, O_DRAIN},
        {"msg-size", required_argument, NULL, O_SIZE},
        {"pad", required_argument, NULL, O_PAD},
        {"deflate", no_argument, NULL, O_DEFLATE},
        {"insecure", no_argument, NULL, O_INSECURE},
        {"cafile", required_argument, NULL, O_CAFILE},
        {"groups", required_argument, NULL, O_GROUPS},
        {"sender-url", required_argument, NULL, O_SENDER_URL},
        {"reconnect", no_argument, NULL, O_RECONNECT},
        {"reconnect-tries", required_argument, NULL, O_RC_TRIES},
        {"reconnect-timeout", required_argument, NULL, O_RC_TIMEOUT},
        {"reconnect-backoff", required_argument, NULL, O_RC_BACKOFF},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "vh", lo, NULL)) != -1) {
        switch (ch) {
        case O_URL:
            if (o.nurls == MAX_URLS)
                die_usage("at most %s --url options", "64");
            parse_url(optarg, &o.urls[o.nurls++]);
            break;
        case O_CONNS: o.conns = (long)num(optarg, "--conns", 1, 10000000); break;
        case O_RAMP: o.ramp = num(optarg, "--ramp", 0, 1e9); break;
        case O_INFLIGHT: o.inflight = (long)num(optarg, "--inflight", 1, 1e7); break;
        case O_CTIMEOUT: o.connect_timeout = num(optarg, "--connect-timeout", 0.1, 3600); break;
        case O_PROCS: o.procs = (int)num(optarg, "--procs", 1, MAX_PROCS); break;
        case O_SRC: parse_src_ips(optarg); break;
        case O_MODE:
            if (strcmp(optarg, "idle") == 0)
                o.mode = MODE_IDLE;
            else if (strcmp(optarg, "broadcast") == 0)
                o.mode = MODE_BROADCAST;
            else
                die_usage("--mode is idle or broadcast, not %s", optarg);
            break;
        case O_DURATION: o.duration = num(optarg, "--duration", 0, 86400); break;
        case O_HOLD: o.hold = num(optarg, "--hold", 0, 86400); break;
        case O_SENDERS: o.senders = (long)num(optarg, "--senders", 1, 100000); break;
        case O_RATE: o.rate = num(optarg, "--rate", 0.001, 1e7); break;
        case O_DRAIN: o.drain = num(optarg, "--drain", 0, 3600); break;
        case O_SIZE: o.msg_size = (long)num(optarg, "--msg-size", 0, MAX_MSG); break;
        case O_PAD:
            if (strcmp(optarg, "x") == 0)
                o.pad = PAD_X;
            else if (strcmp(optarg, "words") == 0)
                o.pad = PAD_WORDS;
            else if (strcmp(optarg, "json") == 0)
                o.pad = PAD_JSON;
            else
                die_usage("--pad is x, words or json, not %s", optarg);
            break;
        case O_DEFLATE: o.deflate = 1; break;
        case O_INSECURE: o.insecure = 1; break;
        case O_CAFILE: o.cafile = optarg; break;
        case O_GROUPS: o.groups = optarg; break;
        case O_SENDER_URL:
            parse_url(optarg, &o.sender_url);
            o.has_sender_url = 1;
            break;
        case O_RECONNECT: o.reconnect = 1; break;
        case O_RC_TRIES: o.rc_tries = (long)num(optarg, "--reconnect-tries", 1, 255); break;
        case O_RC_TIMEOUT: o.rc_timeout = num(optarg, "--reconnect-timeout", 0.01, 600); break;
        case O_RC_BACKOFF: o.rc_backoff = num(optarg, "--reconnect-backoff", 0, 60); break;
        case 'v': o.verbose++; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc)
        die_usage("unexpected argument %s", argv[optind]);
    if (o.nurls == 0)
        die_usage("%s", "--url is required");
    if (o.procs > o.conns)
        o.procs = (int)o.conns;
    if (o.reconnect && o.mode != MODE_IDLE)
        die_usage("%s", "--reconnect is for --mode idle");
    if (o.has_sender_url && o.mode != MODE_BROADCAST)
        die_usage("%s", "--sender-url is for --mode broadcast");
    if (o.mode == MODE_BROADCAST) {
        if (o.senders > o.conns)
            die_usage("%s", "--senders cannot exceed --conns");
        double mem = (double)o.conns * (double)o.senders * sizeof(struct seqst);
        if (mem > 4e9)
            die_usage("%s", "--conns x --senders too large for sequence tracking");
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        long per = (o.conns + o.procs - 1) / o.procs;
        if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)per + 32 > rl.rlim_cur) {
            char buf[128];
            snprintf(buf, sizeof buf, "%ld clients per process exceed the open-file limit %lu",
                     per, (unsigned long)rl.rlim_cur);
            die_usage("%s; raise --procs", buf);
        }
    }
    if (o.ramp > 0 && (double)o.conns / o.ramp > o.connect_timeout)
        fprintf(stderr, "chatbench: warning: %ld clients at %.0f/s take longer than "
                        "--connect-timeout %.0f s; the rest will time out\n",
                o.conns, o.ramp, o.connect_timeout);
    signal(SIGPIPE, SIG_IGN);
    return parent_main();
}
