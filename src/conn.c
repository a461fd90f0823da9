/* conn — one upgraded WebSocket connection on its worker (see conn.h).
 *
 * Output is never copied per client: room messages are written straight
 * from the shared, already encoded msg frames (writev over the room log
 * from this connection's cursor), compressed ones too for a client that
 * negotiated permessage-deflate. Only control frames are per connection.
 * An idle connection holds no buffers: the read buffer is the worker's,
 * ctl and msgbuf are freed as soon as they are empty, and compression
 * state is the worker's, used one message at a time.
 */
#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "broker.h"
#include "chat.h"
#include "clock.h"
#include "log.h"
#include "pmd.h"
#include "proxy.h"
#include "room.h"
#include "tlsrec.h"
#include "worker.h"

#define CONN_IOV 64                   /* frames per writev */
#define CONN_WRITE_CAP (256 * 1024)   /* bytes per connection per turn */
#define CONN_CTL_MAX 2048             /* queued control frame bytes */
#define CONN_CLOSE_WAIT_MS 3000       /* for the peer's close after ours */

static const char *const state_name[] = {"open", "closing"};

static void conn_on_event(evutil_socket_t fd, short what, void *arg);

void conn_addr(const conn *c, char *out, size_t outlen) {
    proxy_format_addr(c->ip, c->port, out, outlen);
}

void conn_log_write(int level, const conn *c, const char *fmt, ...) {
    char addr[64], msgtext[1024];
    conn_addr(c, addr, sizeof addr);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msgtext, sizeof msgtext, fmt, ap);
    va_end(ap);
    log_conn lc = {(unsigned long long)c->id, addr, c->user};
    log_conn_fields(level, &lc, NULL, 0, "%s", msgtext);
}

/* The names of c's rooms, comma-separated, malloc'd ("" when none), or
 * NULL when out of memory. */
static char *conn_room_list(const conn *c) {
    size_t n = 1;
    for (const member *mb = c->rooms; mb; mb = mb->next)
        if (mb->room) n += mb->room->name_len + 1;
    char *s = malloc(n), *p = s;
    if (s == NULL) return NULL;
    for (const member *mb = c->rooms; mb; mb = mb->next) {
        if (mb->room == NULL) continue;
        if (p != s) *p++ = ',';
        memcpy(p, mb->room->name, mb->room->name_len);
        p += mb->room->name_len;
    }
    *p = '\0';
    return s;
}

/* Closing begins (code and reason static, or NULL): what the access log's
 * close line tells, taken before the rooms are left. */
static void conn_note_close(conn *c, unsigned code, const char *why) {
    if (c->close_code == 0) {
        c->close_code = (uint16_t)code;
        c->close_reason = why;
    }
    if (c->closing_rooms == NULL && c->w->cfg->access_log && log_level <= LOG_INFO)
        c->closing_rooms = conn_room_list(c);
}

static void conn_access_close(conn *c) {
    if (!c->logged_open || log_level > LOG_INFO) return;
    char addr[64];
    conn_addr(c, addr, sizeof addr);
    char *rooms = c->closing_rooms ? NULL : conn_room_list(c);
    log_conn lc = {(unsigned long long)c->id, addr, c->user};
    log_field f[] = {
        LOG_STR("rooms", c->closing_rooms ? c->closing_rooms : rooms),
        LOG_INT("duration_ms", clock_ms() - c->open_ms),
        LOG_INT("bytes_in", c->bytes_in),
        LOG_INT("bytes_out", c->bytes_out),
        LOG_INT("msgs_in", c->msgs_in),
        LOG_INT("msgs_out", c->msgs_out),
        LOG_INT("code", c->close_code ? c->close_code : WS_CLOSE_ABNORMAL),
        LOG_STR("reason", c->close_code ? c->close_reason : c->close_reason ? c->close_reason
                                                                            : "connection lost"),
    };
    log_conn_fields(LOG_INFO, &lc, f, sizeof f / sizeof f[0], "close");
    free(rooms);
}

static void conn_access_open(conn *c) {
    if (!c->w->cfg->access_log || log_level > LOG_INFO) return;
    char addr[64];
    conn_addr(c, addr, sizeof addr);
    char *rooms = conn_room_list(c);
    log_conn lc = {(unsigned long long)c->id, addr, c->user};
    log_field f[] = {
        LOG_STR("rooms", rooms),
        LOG_STR("proto", c->json ? "chatd.v1" : "text"),
        LOG_STR("tls", c->ssl || c->rec ? "on" : "off"),
        LOG_STR("deflate", c->zbits ? "on" : "off"),
        LOG_INT("exp", c->exp),
    };
    log_conn_fields(LOG_INFO, &lc, f, sizeof f / sizeof f[0], "open");
    c->logged_open = 1;
    free(rooms);
}

static void conn_set_state(conn *c, conn_state s) {
    conn_log(LOG_DEBUG, c, "%s -> %s", state_name[c->state], state_name[s]);
    c->state = (uint8_t)s;
}

static void conn_want_write(conn *c, int on) {
    if (c->want_write == on) return;
    event_del(&c->ev);
    event_assign(&c->ev, c->w->base, c->fd, EV_READ | EV_PERSIST | (on ? EV_WRITE : 0),
                 conn_on_event, c);
    event_add(&c->ev, NULL);
    c->want_write = (uint8_t)on;
}

/* Room a ping or pong must leave in ctl, so that the close frame always
 * fits behind whatever is queued (dropping queued bytes could cut a frame
 * that is partly written). */
#define CONN_CTL_CLOSE_ROOM (2 + WS_MAX_CONTROL)

/* Queues control frame bytes, keeping `reserve` bytes free; -1 if they do
 * not fit (a pong may be skipped: RFC 6455 5.5.3 lets us answer only the
 * latest ping). */
static int conn_queue_ctl(conn *c, const uint8_t *p, size_t len, size_t reserve) {
    if (c->ctl == NULL) {
        c->ctl = malloc(CONN_CTL_MAX);
        if (c->ctl == NULL) return -1;
        c->ctl_len = c->ctl_off = 0;
    }
    if (c->ctl_off > 0 && c->ctl_len + len + reserve > CONN_CTL_MAX) {
        memmove(c->ctl, c->ctl + c->ctl_off, c->ctl_len - c->ctl_off);
        c->ctl_len = (uint16_t)(c->ctl_len - c->ctl_off);
        c->ctl_off = 0;
    }
    if (c->ctl_len + len + reserve > CONN_CTL_MAX) return -1;
    memcpy(c->ctl + c->ctl_len, p, len);
    c->ctl_len = (uint16_t)(c->ctl_len + len);
    return 0;
}

/* Drops every private frame still queued. */
static void conn_drop_outq(conn *c) {
    for (; c->outq_len; c->outq_len--) msg_unref(c->outq[c->outq_head++ % c->outq_cap]);
    free(c->outq);
    c->outq = NULL;
    c->outq_head = c->outq_cap = 0;
    c->outq_bytes = 0;
}

static void conn_free_msgbuf(conn *c) {
    free(c->msgbuf);
    c->msgbuf = NULL;
    c->msg_len = c->msg_cap = 0;
}

void conn_free(conn *c) {
    worker *w = c->w;
    event_del(&c->ev);
    conn_access_close(c);
    free(c->closing_rooms);
    chat_close(c);
    conn_drop_outq(c);
    if (c->part) msg_unref(c->part);
    free(c->claim);
    if (c->ssl) {
        SSL_free(c->ssl);
        ERR_clear_error();
    }
    if (c->rec) tlsrec_clear(c->rec);
    free(c->rec);
    close(c->fd);
    if (c->ip_count) atomic_fetch_sub_explicit(c->ip_count, 1, memory_order_relaxed); /* count */
    free(c->tls_out);
    free(c->ctl);
    conn_free_msgbuf(c);
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    conn_log(LOG_DEBUG, c, "closed");
    free(c);
    worker_conn_gone(w);
}

void conn_close(conn *c, unsigned code, const char *why) {
    if (c->state != CONN_OPEN) return;
    conn_note_close(c, code, why ? why : "closed by the client");
    uint8_t frame[2 + WS_MAX_CONTROL];
    size_t n = ws_write_close(frame, code, why ? why : "");
    /* It fits: pings and pongs leave room for it. Only malloc can fail,
     * and then the close deadline ends the connection. */
    conn_queue_ctl(c, frame, n, 0);
    c->close_queued = 1;
    c->deadline_ms = clock_ms() + CONN_CLOSE_WAIT_MS;
    conn_set_state(c, CONN_CLOSING);
    conn_free_msgbuf(c);
    conn_drop_outq(c);
    chat_close(c); /* leave the rooms at once: their logs need not wait */
}

/* Token bucket: refilled at rate_limit per second, holding rate_burst.
 * Returns 0 if the client may send one more message now. */
int conn_take_token(conn *c) {
    const config *cfg = c->w->cfg;
    if (cfg->rate_limit <= 0) return 0;
    int64_t burst = (int64_t)(cfg->rate_burst > 0 ? cfg->rate_burst : cfg->rate_limit) * 1000;
    int64_t now = clock_ms();
    int64_t t = c->tokens + (now - c->rate_ms) * cfg->rate_limit; /* 1/1000 per ms */
    c->rate_ms = now;
    if (t > burst) t = burst;
    if (t < 1000) {
        c->tokens = (int32_t)t;
        return -1;
    }
    c->tokens = (int32_t)(t - 1000);
    return 0;
}

/* A whole compressed message: inflated with the worker's decompressor,
 * never past the parser's limit (a decompression bomb costs at most that
 * much inflating, then 1009), checked as UTF-8, then handled as any. */
static int conn_on_compressed(conn *c, const uint8_t *p, size_t len) {
    const uint8_t *text;
    size_t n;
    unsigned code = 0;
    const char *why = NULL;
    atomic_fetch_add_explicit(&c->w->zmsgs_in, 1, memory_order_relaxed); /* a counter */
    switch (pmd_inflate(c->w->pmd, p, len, (size_t)c->parser.max_message, &text, &n)) {
    case PMD_OK:
        if (utf8_validate(text, n) < 0) {
            code = WS_CLOSE_INVALID_DATA;
            why = "invalid UTF-8 in a text message";
        }
        break;
    case PMD_TOO_BIG:
        code = WS_CLOSE_TOO_BIG;
        why = "message larger than the limit once inflated";
        break;
    case PMD_BAD:
        code = WS_CLOSE_INVALID_DATA;
        why = "invalid compressed data";
        break;
    default:
        code = WS_CLOSE_INTERNAL;
        why = "out of memory";
        break;
    }
    int rc = 0;
    if (code) {
        conn_log(LOG_INFO, c, "%s, closing with %u", why, code);
        conn_close(c, code, why);
    } else {
        rc = chat_on_message(c, text, n);
    }
    pmd_trim(c->w->pmd);
    return rc;
}

static int conn_on_data(conn *c, const ws_event *ev) {
    if (c->state != CONN_OPEN) return 0; /* data after our close is ignored */
    if (ev->first && ev->fin) {
        c->msgs_in++;
        if (ev->compressed) return conn_on_compressed(c, ev->data, ev->len);
        return chat_on_message(c, ev->data, ev->len);
    }
    if (c->msg_len + ev->len > c->msg_cap) {
        size_t cap = c->msg_cap ? c->msg_cap : 256;
        while (cap < c->msg_len + ev->len) cap *= 2;
        uint8_t *p = realloc(c->msgbuf, cap);
        if (p == NULL) {
            conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
            return 0;
        }
        c->msgbuf = p;
        c->msg_cap = cap;
    }
    if (ev->len) memcpy(c->msgbuf + c->msg_len, ev->data, ev->len);
    c->msg_len += ev->len;
    if (ev->fin) {
        c->msgs_in++;
        if (ev->compressed) conn_on_compressed(c, c->msgbuf, c->msg_len);
        else chat_on_message(c, c->msgbuf, c->msg_len);
        conn_free_msgbuf(c);
    }
    return 0;
}

/* Queues the answer to a ping. When ctl is full of earlier pongs (one read
 * can hold hundreds of pings), writes them out first: dropping this pong
 * would leave the latest ping unanswered, and RFC 6455 5.5.3 only lets us
 * skip earlier ones. It is dropped only when the peer is not reading.
 * Returns -1 if c was freed. */
static int conn_pong(conn *c, const ws_event *ev) {
    uint8_t frame[WS_MAX_HEADER + WS_MAX_CONTROL];
    size_t h = ws_write_header(frame, WS_OP_PONG, ev->len);
    memcpy(frame + h, ev->data, ev->len);
    if (conn_queue_ctl(c, frame, h + ev->len, CONN_CTL_CLOSE_ROOM) == 0) return 0;
    if (conn_flush(c) < 0) return -1;
    conn_queue_ctl(c, frame, h + ev->len, CONN_CTL_CLOSE_ROOM);
    return 0;
}

/* Feeds bytes from the client through the parser. Returns -1 if c was
 * freed. */
static int conn_feed(conn *c, uint8_t *buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ws_event ev;
        off += ws_parse(&c->parser, buf + off, len - off, &ev);
        switch (ev.type) {
        case WS_EV_NONE:
            return 0; /* everything consumed */
        case WS_EV_DATA:
            conn_on_data(c, &ev);
            break;
        case WS_EV_PING:
            if (c->state == CONN_OPEN && conn_pong(c, &ev) < 0) return -1;
            break;
        case WS_EV_PONG:
            break; /* any read already proved the peer alive */
        case WS_EV_CLOSE:
            if (c->state == CONN_CLOSING) { /* the answer to our close */
                if (c->ctl || c->tls_out) { /* ours is not out yet: it goes first */
                    c->close_after_flush = 1;
                    return conn_flush(c);
                }
                conn_free(c);
                return -1;
            }
            /* Echo the peer's code (RFC 6455 5.5.1), then close TCP first
             * once it is written, as a server should (7.1.1). */
            if (ev.code == WS_CLOSE_NO_STATUS) {
                static const uint8_t empty_close[2] = {0x88, 0x00};
                conn_note_close(c, WS_CLOSE_NO_STATUS, "closed by the client");
                if (conn_queue_ctl(c, empty_close, sizeof(empty_close), 0) < 0) {
                    conn_free(c);
                    return -1;
                }
                c->close_queued = 1;
                c->deadline_ms = clock_ms() + CONN_CLOSE_WAIT_MS;
                conn_set_state(c, CONN_CLOSING);
                conn_free_msgbuf(c);
                conn_drop_outq(c);
                chat_close(c);
            } else {
                conn_close(c, ev.code, NULL);
            }
            c->close_after_flush = 1;
            return 0;
        case WS_EV_ERROR:
            conn_log(LOG_INFO, c, "%s, closing with %u", ev.reason, ev.code);
            conn_close(c, ev.code, ev.reason);
            return 0;
        }
    }
    return 0;
}

/* What one iovec of a write is, so that the bytes the kernel took can be
 * accounted for in the order they were queued. */
enum { STEP_PART, STEP_CTL, STEP_OUTQ, STEP_ENTRY, STEP_SKIP };
typedef struct step {
    member *mb;        /* STEP_ENTRY, STEP_SKIP */
    uint32_t len;      /* bytes of the iovec */
    uint8_t kind;
    uint8_t z;         /* the frame is the compressed one */
} step;

#define CONN_STEPS (CONN_IOV * 4)

/* Moves c past `left` bytes written, walking the steps conn_flush queued.
 * A frame written in part is kept by reference in c->part and finished
 * first next time, compressed or not as it began. Returns the frames
 * finished, and in *zdone those of them compressed. */
static size_t conn_advance(conn *c, size_t left, const step *st, int nst, size_t *zdone) {
    size_t done = 0;
    *zdone = 0;
    for (int i = 0; i < nst; i++) {
        const step *s = &st[i];
        if (left == 0 && s->kind != STEP_SKIP) return done; /* not begun */
        if (s->kind == STEP_SKIP) {
            room_advance(s->mb->room, s->mb);
            continue;
        }
        if (s->kind == STEP_CTL) {
            size_t k = left < s->len ? left : s->len;
            c->ctl_off = (uint16_t)(c->ctl_off + k);
            left -= k;
            if (k < s->len) return done;
            continue;
        }
        msg *m = NULL;
        if (s->kind == STEP_OUTQ) {
            m = c->outq[c->outq_head % c->outq_cap];
            c->outq_head++;
            c->outq_len--;
            uint32_t len;
            msg_frame(m, c->json, &len);
            c->outq_bytes -= len;
        } else if (s->kind == STEP_ENTRY) {
            m = room_entry_at(s->mb->room, s->mb->cursor)->m;
            if (left < s->len) msg_ref(m, 1); /* kept as part; the log may let it go */
            room_advance(s->mb->room, s->mb);
        }
        if (left >= s->len) {
            left -= s->len;
            done++;
            *zdone += s->z;
            if (s->kind == STEP_PART) {
                msg_unref(c->part);
                c->part = NULL;
                c->off = 0;
                c->part_z = 0;
            } else if (s->kind == STEP_OUTQ) {
                msg_unref(m);
            }
            continue;
        }
        if (s->kind == STEP_PART) c->off += (uint32_t)left;
        else {
            c->part = m;
            c->off = (uint32_t)left;
            c->part_z = s->z;
        }
        return done;
    }
    return done;
}

/* The membership whose next entry (at its look position) came first, or
 * NULL when none has one. */
static member *conn_next_member(conn *c) {
    member *best = NULL;
    uint64_t best_wseq = UINT64_MAX;
    for (member *mb = c->rooms; mb; mb = mb->next) {
        room *r = mb->room;
        if (mb->wait || r == NULL || mb->look >= r->head) continue;
        uint64_t ws = room_entry_at(r, mb->look)->wseq;
        if (ws < best_wseq) {
            best_wseq = ws;
            best = mb;
        }
    }
    return best;
}

/* The frame c gets for m, and in *z whether it is the compressed one: the
 * frame shared by every deflate client of the node when c negotiated
 * permessage-deflate, the payload is at least compression_min_size, and
 * deflate shortens it. A client that limited our window to 2^zbits bytes
 * gets it only for payloads that fit in that window: frames are deflated
 * once with the largest, and back-references never reach past a message's
 * start. */
static const uint8_t *conn_frame(conn *c, msg *m, uint32_t *len, uint8_t *z) {
    const uint8_t *f = msg_frame(m, c->json, len);
    *z = 0;
    if (c->zbits == 0 || *len == 0) return f;
    size_t payload = *len - ws_frame_header_size(f);
    if (payload < (size_t)c->w->cfg->compression_min_size ||
        (c->zbits < PMD_WINDOW_BITS && payload > (size_t)1 << c->zbits))
        return f;
    uint32_t zlen;
    int deflated;
    const uint8_t *zf = msg_zframe(m, c->json, c->w->pmd, &zlen, &deflated);
    if (deflated) atomic_fetch_add_explicit(&c->w->deflates, 1, memory_order_relaxed); /* a counter */
    if (zf == NULL) return f;
    *len = zlen;
    *z = 1;
    return zf;
}

/* 1 if mb's client must not get m: a text client gets no presence,
 * presence the joined snapshot already counted is not told again, and a
 * message up to the since of a recovery is one the client has (it may be
 * ahead of this node when it comes from a node that reads faster). */
static int conn_skips(const conn *c, const member *mb, const msg *m) {
    uint32_t len;
    msg_frame(m, c->json, &len);
    if (len == 0) return 1;
    if (m->kind == MSG_CHAT) return !msg_id_before(mb->seen_ms, mb->seen_seq, m->id_ms, m->id_seq);
    return !msg_id_before(mb->skip_ms, mb->skip_seq, m->id_ms, m->id_seq);
}

#define CONN_TLS_KEPT -2

/* Keeps len bytes of buf in tls_out, owed before anything else. 0, or -1
 * with errno set. */
static int conn_owe(conn *c, const uint8_t *buf, size_t len) {
    if ((c->tls_out = malloc(len)) == NULL) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(c->tls_out, buf, len);
    c->tls_out_len = (uint32_t)len;
    c->tls_out_off = 0;
    return 0;
}

/* wss with rec: seals buf[0..len) as one record and writes it. Returns len
 * when the kernel took it all; CONN_TLS_KEPT when it did not: the rest of
 * the record is owed in tls_out and the caller counts len as written; or
 * -1 with errno set. */
static ssize_t conn_write_rec(conn *c, const uint8_t *buf, size_t len) {
    worker *w = c->w;
    size_t sealed = tlsrec_seal(c->rec, w->tls_cx, w->tlsout, buf, len);
    if (sealed == 0) {
        errno = EIO;
        return -1;
    }
    ssize_t wr;
    do
        wr = write(c->fd, w->tlsout, sealed);
    while (wr < 0 && errno == EINTR);
    if ((size_t)wr == sealed) return (ssize_t)len;
    if (wr < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    if (wr < 0) wr = 0;
    return conn_owe(c, w->tlsout + wr, sealed - (size_t)wr) < 0 ? -1 : CONN_TLS_KEPT;
}

/* wss: writes one TLS record's worth of what iov holds. Returns the bytes
 * written; or CONN_TLS_KEPT when they could not all be written now: they
 * are copied to tls_out (OpenSSL: a refused write must be offered again
 * with the same bytes; rec: the part of the sealed record left) and *total
 * says how many, which the caller counts as written; or -1 with errno set
 * on error. */
static ssize_t conn_write_tls(conn *c, const struct iovec *iov, int n, size_t *total) {
    uint8_t *buf = c->w->tlsbuf;
    size_t len = 0;
    for (int i = 0; i < n && len < WORKER_TLS_RECORD; i++) {
        size_t k = iov[i].iov_len;
        if (k > WORKER_TLS_RECORD - len) k = WORKER_TLS_RECORD - len;
        memcpy(buf + len, iov[i].iov_base, k);
        len += k;
    }
    *total = len;
    if (c->rec) return conn_write_rec(c, buf, len);
    int wr = SSL_write(c->ssl, buf, (int)len);
    if (wr > 0) return wr;
    int e = SSL_get_error(c->ssl, wr);
    ERR_clear_error();
    if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) {
        errno = EPIPE;
        return -1;
    }
    return conn_owe(c, buf, len) < 0 ? -1 : CONN_TLS_KEPT;
}

/* wss: offers tls_out again. Returns bytes written, or -1 with errno
 * EAGAIN (not yet) or another error. */
static ssize_t conn_retry_tls(conn *c) {
    ssize_t wr;
    if (c->rec) { /* sealed already: plain bytes to the kernel */
        wr = write(c->fd, c->tls_out + c->tls_out_off, c->tls_out_len - c->tls_out_off);
        if (wr <= 0) {
            if (wr == 0) errno = EAGAIN;
            return -1;
        }
    } else {
        wr = SSL_write(c->ssl, c->tls_out + c->tls_out_off, (int)(c->tls_out_len - c->tls_out_off));
        if (wr <= 0) {
            int e = SSL_get_error(c->ssl, (int)wr);
            ERR_clear_error();
            errno = e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ ? EAGAIN : EPIPE;
            return -1;
        }
    }
    c->tls_out_off += (uint32_t)wr;
    if (c->tls_out_off == c->tls_out_len) {
        free(c->tls_out);
        c->tls_out = NULL;
        c->tls_out_len = c->tls_out_off = 0;
    }
    return wr;
}

/* wss with rec: a close_notify, best effort. */
static void conn_close_notify(conn *c) {
    uint8_t alert[TLSREC_SEAL_EXTRA];
    size_t n = tlsrec_close_notify(c->rec, c->w->tls_cx, alert);
    if (n && write(c->fd, alert, n) < 0) conn_log(LOG_DEBUG, c, "close_notify: %s", strerror(errno));
}

int conn_flush(conn *c) {
    worker *w = c->w;
    size_t turn = 0;
    while (!c->want_write && turn < CONN_WRITE_CAP) {
        ssize_t wr;
        if (c->tls_out) { /* counted already: only the bytes are owed */
            if ((wr = conn_retry_tls(c)) < 0) goto write_failed;
            turn += (size_t)wr; /* counted in bytes_out when first offered */
            continue;
        }
        struct iovec iov[CONN_IOV];
        step st[CONN_STEPS];
        int n = 0, nst = 0;
        size_t total = 0;
        uint32_t len;
        uint8_t z;
        if (c->part) { /* finish the frame in progress first, as it began */
            const uint8_t *f = c->part_z ? msg_zframe_built(c->part, c->json, &len)
                                         : msg_frame(c->part, c->json, &len);
            iov[n] = (struct iovec){(void *)(f + c->off), len - c->off};
            st[nst++] = (step){NULL, len - c->off, STEP_PART, c->part_z};
            total += iov[n++].iov_len;
        }
        if (c->ctl_len > c->ctl_off) {
            iov[n] = (struct iovec){c->ctl + c->ctl_off, (size_t)(c->ctl_len - c->ctl_off)};
            st[nst++] = (step){NULL, (uint32_t)iov[n].iov_len, STEP_CTL, 0};
            total += iov[n++].iov_len;
        }
        if (c->state == CONN_OPEN) {
            uint32_t i = 0; /* private frames queued in this write */
            for (; i < c->outq_len && n < CONN_IOV && total < CONN_WRITE_CAP; i++) {
                const uint8_t *f = conn_frame(c, c->outq[(c->outq_head + i) % c->outq_cap], &len, &z);
                iov[n] = (struct iovec){(void *)f, len};
                st[nst++] = (step){NULL, len, STEP_OUTQ, z};
                total += iov[n++].iov_len;
            }
            /* Room entries, merged across rooms in the order they came,
             * once nothing private waits in front of them. */
            if (i == c->outq_len) {
                for (member *mb = c->rooms; mb; mb = mb->next) mb->look = mb->cursor;
                member *mb;
                while (n < CONN_IOV && nst < CONN_STEPS && total < CONN_WRITE_CAP &&
                       (mb = conn_next_member(c)) != NULL) {
                    msg *m = room_entry_at(mb->room, mb->look++)->m;
                    if (conn_skips(c, mb, m)) {
                        st[nst++] = (step){mb, 0, STEP_SKIP, 0};
                        continue;
                    }
                    const uint8_t *f = conn_frame(c, m, &len, &z);
                    iov[n] = (struct iovec){(void *)f, len};
                    st[nst++] = (step){mb, len, STEP_ENTRY, z};
                    total += iov[n++].iov_len;
                }
            }
        }
        size_t zframes;
        if (n == 0) {
            if (nst == 0) break;
            conn_advance(c, 0, st, nst, &zframes); /* only skips */
            continue;
        }
        wr = c->ssl || c->rec ? conn_write_tls(c, iov, n, &total) : writev(c->fd, iov, n);
        if (wr == CONN_TLS_KEPT) wr = (ssize_t)total; /* owed, in tls_out */
        else if (wr < 0) goto write_failed;
        size_t frames = conn_advance(c, (size_t)wr, st, nst, &zframes);
        atomic_fetch_add_explicit(&w->frames_out, frames, memory_order_relaxed); /* a counter */
        if (zframes) atomic_fetch_add_explicit(&w->zframes_out, zframes, memory_order_relaxed); /* a counter */
        c->msgs_out += (uint32_t)frames;
        c->bytes_out += (uint64_t)wr;
        turn += (size_t)wr;
        if ((size_t)wr < total || c->tls_out) conn_want_write(c, 1); /* the kernel is full */
        continue;
    write_failed:
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            conn_want_write(c, 1);
            break;
        }
        conn_log(LOG_DEBUG, c, "write: %s", strerror(errno));
        conn_free(c);
        return -1;
    }
    /* More than one turn's worth: come back when the loop has served others. */
    if (turn >= CONN_WRITE_CAP) conn_want_write(c, 1);

    if (c->ctl && c->ctl_off == c->ctl_len) {
        free(c->ctl);
        c->ctl = NULL;
        c->ctl_len = c->ctl_off = 0;
    }
    /* Our close frame is out (not only counted: tls_out is empty too). */
    if (c->close_queued && c->ctl == NULL && c->tls_out == NULL && !c->shut_wr) {
        if (c->close_after_flush) {
            conn_free(c);
            return -1;
        }
        if (c->ssl) {
            SSL_shutdown(c->ssl); /* close_notify, best effort */
            ERR_clear_error();
        } else if (c->rec) {
            conn_close_notify(c);
        }
        shutdown(c->fd, SHUT_WR);
        c->shut_wr = 1;
    }
    return 0;
}

int conn_pump(conn *c) {
    /* The frame being written does not count (it is c->part): one entry
     * larger than max_output_buffer (from a node with a larger max_message)
     * would otherwise make every member of the room "slow" at once. */
    uint64_t queued = 0;
    for (member *mb = c->rooms; mb; mb = mb->next)
        if (mb->room) queued += room_backlog(mb->room, mb, c->json);
    if (queued > (uint64_t)c->w->cfg->max_output_buffer) {
        atomic_fetch_add_explicit(&c->w->slow_closes, 1, memory_order_relaxed); /* a counter */
        conn_log(LOG_INFO, c, "slow consumer, %llu bytes queued, closing with 1008",
                 (unsigned long long)queued);
        conn_close(c, WS_CLOSE_POLICY, "too slow: output limit");
    }
    return conn_flush(c);
}

void conn_queue(conn *c, msg *m) {
    if (c->state != CONN_OPEN) {
        msg_unref(m);
        return;
    }
    /* Answers a client does not read (a ping flood, joins on joins) are a
     * backlog like any other: the same limit, with a replay's worth of
     * room, since a replay is held to max_output_buffer on its own. */
    uint32_t len;
    msg_frame(m, c->json, &len);
    if (c->outq_bytes + len > 2 * (uint64_t)c->w->cfg->max_output_buffer) {
        msg_unref(m);
        atomic_fetch_add_explicit(&c->w->slow_closes, 1, memory_order_relaxed); /* a counter */
        conn_log(LOG_INFO, c, "slow consumer, %llu bytes of answers queued, closing with 1008",
                 (unsigned long long)c->outq_bytes);
        conn_close(c, WS_CLOSE_POLICY, "too slow: output limit");
        return;
    }
    if (c->outq_len == c->outq_cap) {
        uint32_t cap = c->outq_cap ? c->outq_cap * 2 : 8;
        msg **q = malloc(cap * sizeof(*q));
        if (q == NULL) {
            msg_unref(m);
            conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
            return;
        }
        for (uint32_t i = 0; i < c->outq_len; i++) q[i] = c->outq[(c->outq_head + i) % c->outq_cap];
        free(c->outq);
        c->outq = q;
        c->outq_head = 0;
        c->outq_cap = cap;
    }
    c->outq_bytes += len;
    c->outq[(c->outq_head + c->outq_len++) % c->outq_cap] = m;
}

/* Reads and processes what the TLS session has, a few records at most per
 * turn; SSL may hold decrypted bytes the socket no longer shows, so come
 * back by hand while it does. */
static void conn_read_tls(conn *c) {
    worker *w = c->w;
    for (int i = 0; i < 8; i++) {
        int n = SSL_read(c->ssl, w->rbuf, (int)w->rbuf_size);
        if (n > 0) {
            c->last_read_ms = clock_ms();
            c->ping_outstanding = 0;
            c->bytes_in += (uint64_t)n;
            if (!c->parser.failed && conn_feed(c, w->rbuf, (size_t)n) < 0) return;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        ERR_clear_error();
        if (e == SSL_ERROR_WANT_READ) break;
        if (e == SSL_ERROR_WANT_WRITE) {
            conn_want_write(c, 1);
            break;
        }
        conn_free(c); /* close_notify, reset, or a TLS error */
        return;
    }
    if (conn_flush(c) < 0) return;
    if (SSL_pending(c->ssl) > 0) event_active(&c->ev, EV_READ, 1);
}

/* wss with rec: reads behind the part of a record the session holds and
 * opens every complete record (the worker's read buffer holds more than
 * one). */
static void conn_read_rec(conn *c) {
    worker *w = c->w;
    size_t have = tlsrec_held(c->rec), plain;
    const char *why;
    ssize_t n = read(c->fd, w->rbuf + have, w->rbuf_size - have);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n <= 0) {
        if (n < 0) conn_log(LOG_DEBUG, c, "read: %s", strerror(errno));
        conn_free(c);
        return;
    }
    c->last_read_ms = clock_ms();
    c->ping_outstanding = 0;
    tlsrec_unhold(c->rec, w->rbuf);
    int rc = tlsrec_open(c->rec, w->tls_cx, w->rbuf, have + (size_t)n, &plain, &why);
    if (rc == TLSREC_ERROR) {
        conn_log(LOG_INFO, c, "TLS: %s, closing", why);
        if (c->close_code == 0) c->close_reason = why;
        conn_free(c);
        return;
    }
    c->bytes_in += plain;
    if (plain > 0 && !c->parser.failed && conn_feed(c, w->rbuf, plain) < 0) return;
    if (rc == TLSREC_CLOSED) { /* close_notify: the client has gone; ours, when nothing is owed */
        if (c->tls_out == NULL) conn_close_notify(c);
        conn_free(c);
        return;
    }
    conn_flush(c);
}

static void conn_read(conn *c) {
    worker *w = c->w;
    if (c->ssl) {
        conn_read_tls(c);
        return;
    }
    if (c->rec) {
        conn_read_rec(c);
        return;
    }
    ssize_t n = read(c->fd, w->rbuf, w->rbuf_size);
    if (n > 0) {
        c->last_read_ms = clock_ms();
        c->ping_outstanding = 0;
        c->bytes_in += (uint64_t)n;
        if (c->parser.failed) return; /* waiting for EOF after an error */
        if (conn_feed(c, w->rbuf, (size_t)n) < 0) return;
        conn_flush(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    if (n < 0) conn_log(LOG_DEBUG, c, "read: %s", strerror(errno));
    conn_free(c);
}

static void conn_on_event(evutil_socket_t fd, short what, void *arg) {
    conn *c = arg;
    (void)fd;
    if (what & EV_WRITE) {
        conn_want_write(c, 0);
        if (conn_flush(c) < 0) return;
        if (c->ssl) what |= EV_READ; /* an SSL_read may have wanted this */
    }
    if (what & EV_READ) conn_read(c);
}

int conn_tick(conn *c, int64_t now) {
    const config *cfg = c->w->cfg;
    if (c->state == CONN_CLOSING || c->ping_outstanding) {
        if (now < c->deadline_ms) return 0;
        const char *why = c->state == CONN_CLOSING ? "no close from peer in time" : "ping timeout";
        conn_log(LOG_INFO, c, "%s", why);
        if (c->close_code == 0) c->close_reason = why;
        conn_free(c);
        return -1;
    }
    /* The token's exp passed without a fresh one: the holder's right to be
     * here has ended (a text client cannot refresh: it goes at exp). */
    if (c->exp && time(NULL) >= (time_t)c->exp) {
        conn_log(LOG_INFO, c, "token expired, closing with 1008");
        conn_close(c, WS_CLOSE_POLICY, "token expired");
        return conn_flush(c);
    }
    if (now - c->last_read_ms >= cfg->ping_interval_ms) {
        static const uint8_t ping[2] = {0x89, 0x00};
        if (conn_queue_ctl(c, ping, sizeof(ping), CONN_CTL_CLOSE_ROOM) == 0) {
            c->ping_outstanding = 1;
            c->deadline_ms = now + cfg->ping_timeout_ms;
        }
        return conn_flush(c);
    }
    return 0;
}

conn *conn_new(worker *w, handoff *h) {
    size_t ulen = strlen(h->user);
    conn *c = calloc(1, sizeof(*c) + ulen + 1);
    if (c == NULL) {
        close(h->fd);
        atomic_fetch_sub_explicit(&chatd_clients, 1, memory_order_relaxed); /* a counter */
        return NULL;
    }
    c->w = w;
    c->id = h->id;
    c->fd = h->fd;
    c->json = (uint8_t)h->json;
    memcpy(c->ip, h->ip, sizeof c->ip);
    c->port = h->port;
    c->open_ms = clock_ms();
    c->exp = h->exp <= 0 ? 0 : h->exp > UINT32_MAX ? UINT32_MAX : (uint32_t)h->exp;
    c->user_len = (uint16_t)ulen;
    memcpy(c->user, h->user, ulen + 1);
    /* A chatd.v1 frame carries the text JSON-escaped: up to six bytes for
     * one; the text itself is held to max_message when parsed. */
    uint64_t max = (uint64_t)w->cfg->max_message;
    ws_parser_init(&c->parser, c->json ? max * 6 + 1024 : max);
    c->zbits = (uint8_t)h->deflate;
    if (c->zbits) ws_parser_deflate(&c->parser);
    c->claim = h->claim;
    h->claim = NULL; /* ours now */
    c->ssl = h->ssl;
    h->ssl = NULL;
    c->rec = h->rec;
    h->rec = NULL;
    c->tls_out = h->tls_out; /* the session ticket's records, if the kernel
                                did not take them all at once */
    c->tls_out_len = h->tls_out_len;
    h->tls_out = NULL;
    c->ip_count = h->ip_count;
    h->ip_count = NULL;
    c->rate_ms = clock_ms();
    /* A full bucket, cut to rate_burst at the first message: of the limit
     * in force then, which a reload may have set since. */
    c->tokens = INT32_MAX;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    atomic_fetch_add_explicit(&w->nconns, 1, memory_order_relaxed); /* a counter */
    event_assign(&c->ev, w->base, c->fd, EV_READ | EV_PERSIST, conn_on_event, c);
    event_add(&c->ev, NULL);
    c->last_read_ms = clock_ms();
    /* The 101 goes first, before any frame; then the URL's room is joined,
     * so the client hears every message sent after it has its answer. */
    if (conn_queue_ctl(c, (const uint8_t *)h->reply, h->reply_len, 0) < 0 || chat_open(c, h) < 0) {
        conn_free(c);
        return NULL;
    }
    conn_log(LOG_DEBUG, c, "on worker %d", w->id);
    conn_access_open(c);
    if (h->extra_len > 0 && conn_feed(c, h->extra, h->extra_len) < 0) return NULL;
    if (conn_flush(c) < 0) return NULL;
    /* TLS: the session may hold decrypted bytes the socket will not
     * announce again. */
    if (c->ssl) event_active(&c->ev, EV_READ, 1);
    return c;
}
