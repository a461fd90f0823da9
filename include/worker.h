/* worker — one event loop thread that owns upgraded connections for life.
 *
 * Other threads reach a worker only through its inbound rings (handoffs
 * from each acceptor thread, messages from the broker) and its doorbell
 * (eventfd), which rings only when a ring goes from empty to non-empty.
 */
#ifndef CHATD_WORKER_H
#define CHATD_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "msg.h"
#include "ring.h"
#include "room.h"

#define WORKER_TLS_RECORD 16384  /* bytes per TLS write: one full record */

struct broker;
struct event_base;
struct event;
struct conn;
struct tlsrec;
struct tlsrec_cx;

/* A connection handed from the acceptor to a worker: everything the
 * acceptor knew, given away whole. */
typedef struct handoff {
    int fd;
    uint64_t id;
    void *ssl;             /* OpenSSL's TLS session (TLS 1.2), or NULL */
    struct tlsrec *rec;    /* a TLS 1.3 session (tlsrec.h), or NULL */
    uint8_t *tls_out;      /* rec: sealed bytes owed before anything else
                              (malloc'd), or NULL */
    uint32_t tls_out_len;
    size_t extra_len;      /* bytes read past the HTTP request */
    uint8_t *extra;        /* malloc'd, or NULL */
    char *room;            /* malloc'd, with user and reply: one block */
    char *user;
    char *reply;           /* the 101 response, for the worker to write */
    size_t reply_len;
    int json;              /* the client speaks chatd.v1 */
    int deflate;           /* permessage-deflate: hs_result.deflate */
    int has_room;          /* join room at once (always, for text clients) */
    int64_t history;       /* ?history=N, or -1 */
    int has_since;         /* ?since=ID&epoch=E (chatd.v1) */
    uint64_t since_ms, since_seq;
    char epoch[33];
    char *claim;           /* the token's rooms (see conn.h), malloc'd, or NULL */
    _Atomic int *ip_count; /* clients from this address, or NULL */
    uint8_t ip[16];        /* the client's address (proxy.h key) */
    uint16_t port;         /* and port; 0: not known (X-Forwarded-For) */
    int64_t exp;           /* the token's exp (unix seconds), 0: no token */
} handoff;

void handoff_free(handoff *h);

typedef struct worker {
    int id;
    const config *cfg;
    struct broker *broker;
    pthread_t thread;
    struct event_base *base;
    int bell_fd;                 /* eventfd: the doorbell */
    struct event *bell_ev;
    struct event *tick_ev;       /* pings, close deadlines */
    struct event *stop_ev;       /* shutdown deadline */
    ring *inbox;                 /* msg *: from the broker */
    ring **handoffs;             /* handoff *: one ring per acceptor thread */
    int nhandoffs;
    room_index rooms;
    struct chat *chat;           /* chat.c's state: waits, acks, presence */
    struct conn *conns;          /* every connection, for the tick */
    uint8_t *rbuf;               /* shared read buffer */
    size_t rbuf_size;
    uint8_t *tlsbuf;             /* shared staging for one TLS record */
    uint8_t *tlsout;             /* and for it sealed (tlsrec) */
    struct tlsrec_cx *tls_cx;    /* this thread's ciphers for tlsrec */
    struct pmd *pmd;             /* permessage-deflate: the compressor and
                                    decompressor every connection of this
                                    worker uses in turn (no context is kept
                                    between messages) */
    int stopping;                /* worker thread: shutdown phase, see worker.c */
    int64_t phase_ms;            /* monotonic: when the phase began */
    uint32_t drain_total;        /* clients when the drain began */
    uint32_t drained;            /* of which closed by the drain */
    _Atomic int stop_requested;  /* main → worker: begin shutdown */
    _Atomic int done;            /* worker → broker: my loop has ended, push
                                    nothing more (release/acquire) */
    _Atomic uint32_t nconns;     /* read by the acceptor to balance */
    _Atomic uint64_t msgs_in;    /* messages received from clients */
    _Atomic uint64_t zmsgs_in;   /* of which compressed (permessage-deflate) */
    _Atomic uint64_t frames_out; /* frames written to clients */
    _Atomic uint64_t zframes_out; /* of which compressed */
    _Atomic uint64_t deflates;   /* frames this worker compressed (once per
                                    message and protocol per node, but for
                                    a race between workers) */
    _Atomic uint64_t slow_closes; /* clients closed for passing max_output_buffer */
    _Atomic uint64_t rate_closes; /* clients closed for passing rate_limit */
    _Atomic uint64_t busy_closes; /* clients closed with 1013: publish queue full */
} worker;

/* Main thread, before any thread starts: a worker taking connections from
 * nacceptors acceptor threads. NULL with err filled on failure. */
worker *worker_new(int id, const config *cfg, int nacceptors, char *err, size_t errlen);
/* Main thread: starts the worker's thread. */
int worker_start(worker *w, struct broker *b);
/* Main thread: asks the worker to stop: it stores what its clients sent
 * (up to shutdown_timeout), closes them with 1001 spread over drain_time,
 * waits for their answers (up to shutdown_timeout) and exits; worker_join
 * waits for it. */
void worker_stop(worker *w);
void worker_join(worker *w);
/* Main thread, after worker_join and after the broker has stopped. */
void worker_free(worker *w);

/* Acceptor thread k (the only producer of w's ring k): gives h to w.
 * Returns 0, or -1 if that ring is full (the caller keeps h). */
int worker_handoff(worker *w, int k, handoff *h);

/* Broker thread (the inbox ring's only producer): queues one reference to m
 * for w. Returns 1 if w must be woken (call worker_wake once per batch),
 * 0 if not, -1 if the inbox is full (nothing queued: retry later), -2 if
 * w has stopped (a worker that drained early; the reference is the
 * caller's). */
int worker_push(worker *w, msg *m);
/* Any thread: rings w's doorbell. */
void worker_wake(worker *w);

/* Worker thread: closes connection conn_id, if it is still there, with
 * code (its message can never be stored). */
void worker_refuse(worker *w, uint64_t conn_id, unsigned code, const char *why);

/* Worker thread: one of w's connections has closed and been freed. */
void worker_conn_gone(worker *w);

/* Number of clients connected to this node (all workers), for max_clients;
 * any thread. */
extern _Atomic int64_t chatd_clients;

#endif
