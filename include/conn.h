/* conn — one upgraded WebSocket connection, owned by one worker for life.
 *
 * Bytes in go through the sans-I/O parser; complete text messages go to the
 * broker; room messages go out by reference from the room log, with control
 * frames (pong, ping, close) slipped in at frame boundaries. Worker thread
 * only.
 */
#ifndef CHATD_CONN_H
#define CHATD_CONN_H

#include <event2/event_struct.h>
#include <stdint.h>

#include "log.h"
#include "msg.h"
#include "room.h"
#include "ws.h"

struct worker;
struct room;
struct handoff;
struct tlsrec;

typedef enum conn_state {
    CONN_OPEN,     /* frames flow both ways */
    CONN_CLOSING,  /* our close frame is queued or sent; reading until the
                      peer closes too, or the close deadline passes */
} conn_state;

typedef struct conn {
    struct event ev;           /* read, and write while the kernel is full */
    struct worker *w;
    uint64_t id;
    int fd;
    uint8_t state;             /* conn_state */
    uint8_t json;              /* speaks chatd.v1 (else the text protocol) */
    uint8_t want_write;        /* ev also waits for EV_WRITE */
    uint8_t ping_outstanding;
    uint8_t close_queued;      /* our close frame is in ctl */
    uint8_t close_after_flush; /* the peer's close was answered: close TCP
                                  once ctl is written */
    uint8_t shut_wr;           /* our close frame is out: SHUT_WR done */
    uint8_t errors;            /* chatd.v1: failed requests in a row */
    uint8_t logged_open;       /* the access log has its open line: a close
                                  line is owed */
    uint16_t nrooms;
    uint16_t port;             /* the client's port (0: not known) */
    uint8_t ip[16];            /* and address (proxy.h key): the real client,
                                  behind a trusted proxy */
    uint16_t close_code;       /* for the access log: the close code sent or
                                  echoed; 0: none (1006 at close) */
    uint32_t exp;              /* the token's exp (unix seconds): closed at it
                                  unless refreshed; 0: no token */
    uint32_t msgs_in, msgs_out; /* messages (frames of data) each way */
    uint64_t bytes_in, bytes_out; /* bytes each way (TLS: decrypted) */
    int64_t open_ms;           /* monotonic, at the handoff */
    const char *close_reason;  /* static, with close_code */
    char *closing_rooms;       /* the rooms when closing began, for the
                                  access log (malloc'd then) */
    uint16_t ctl_len;          /* control frame bytes queued in ctl */
    uint16_t ctl_off;          /* of which already written */
    uint8_t zbits;             /* permessage-deflate: the window the client
                                  allows us (8..15); 0: not negotiated */
    uint8_t part_z;            /* part is being written compressed */
    uint8_t *ctl;              /* the 101, then pong/ping/close bytes
                                  (malloc'd on need) */
    uint8_t *msgbuf;           /* fragments of the message being received */
    size_t msg_len;
    size_t msg_cap;
    member first;              /* the first room, inline: a text client has
                                  one and needs no other allocation */
    member *rooms;             /* every membership, first among them */
    struct conn *next, *prev;  /* worker's list of connections */
    msg *part;                 /* the frame being written, held by reference
                                  (its log entry may be gone), or NULL */
    uint32_t off;              /* bytes of part already written */
    uint32_t outq_head, outq_len, outq_cap; /* private frames (answers,
                                  replays), a ring written before room
                                  entries; malloc'd on need */
    msg **outq;
    uint64_t outq_bytes;
    uint32_t waits;            /* joins and reads the broker still owes */
    uint32_t acks;             /* sends still to be acknowledged */
    char *claim;               /* the token's rooms, NUL-separated, "" ends;
                                  NULL: any room */
    void *ssl;                 /* SSL * for a TLS 1.2 wss client, else NULL */
    struct tlsrec *rec;        /* a TLS 1.3 wss client's session, else NULL */
    uint8_t *tls_out;          /* bytes of a TLS write the kernel refused:
                                  with ssl the plaintext, offered again as it
                                  was (OpenSSL wants the same bytes on retry);
                                  with rec the sealed records. Already counted
                                  as written, so they go before anything */
    uint32_t tls_out_len;
    uint32_t tls_out_off;      /* of which written since */
    _Atomic int *ip_count;     /* per-address count to lower at close */
    uint64_t ticket;           /* broker ticket of the last message it sent */
    uint64_t sent_shards;      /* shards it sent messages to (bit k: shard k) */
    int64_t rate_ms;           /* last token bucket refill */
    int32_t tokens;            /* rate_limit bucket, in 1/1000 messages */
    int64_t last_read_ms;
    int64_t deadline_ms;       /* ping timeout, or close deadline */
    ws_parser parser;
    uint16_t user_len;
    char user[];               /* NUL-terminated */
} conn;

/* The client's address as text ("192.0.2.7:5000") into out. */
void conn_addr(const conn *c, char *out, size_t outlen);

/* Logs a line about c (log_conn_fields with its id, address and user). */
void conn_log_write(int level, const conn *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define conn_log(level, c, ...)                                                                    \
    do {                                                                                           \
        if ((level) >= log_level) conn_log_write((level), (c), __VA_ARGS__);                       \
    } while (0)

/* Creates the connection for a handoff, joins its room and processes the
 * bytes that came behind the HTTP request. Takes ownership of h's fd (and
 * frees nothing else of h). Returns NULL (fd closed) on failure. */
conn *conn_new(struct worker *w, struct handoff *h);

/* Writes what is queued for c, as far as the kernel takes it. Returns 0,
 * or -1 if c was closed and freed. */
int conn_flush(conn *c);

/* Called for every member of a room that has new entries: closes c if the
 * bytes queued behind the frame it writes next passed max_output_buffer,
 * else flushes. Returns 0, or -1 if c was closed and freed. */
int conn_pump(conn *c);

/* Takes one message from c's rate_limit bucket: 0, or -1 when it is empty. */
int conn_take_token(conn *c);

/* Queues a private frame (taking over the reference) for c. */
void conn_queue(conn *c, msg *m);
/* Queues a chatd.v1 error frame for c; past 16 in a row c is closed. */
void conn_error(conn *c, const char *ref, const char *code, const char *reason);

/* Starts the closing handshake with code (1001 on shutdown). */
void conn_close(conn *c, unsigned code, const char *why);

/* Periodic check: pings idle clients, closes the dead and those past the
 * close deadline. Returns -1 if c was freed. */
int conn_tick(conn *c, int64_t now_ms);

/* Closes the socket and frees c at once (no closing handshake). */
void conn_free(conn *c);

#endif
