/* broker — gives every message one place in the shared order and fans it
 * out to every worker.
 *
 * Two backends behind one interface: local (in-process, one node) and
 * redis (Redis Streams, many nodes). Either way a message reaches clients
 * only through the broker thread pushing it into each worker's inbox ring,
 * so local delivery never overtakes the shared order.
 */
#ifndef CHATD_BROKER_H
#define CHATD_BROKER_H

#include <stddef.h>

#include "config.h"
#include "msg.h"
#include "worker.h"

struct event_base;

typedef struct broker broker;

/* Main thread, after the workers exist. NULL with err filled on failure. */
broker *broker_new(const config *cfg, worker **workers, int nworkers, char *err, size_t errlen);
/* Main thread: starts the broker thread. */
int broker_start(broker *b);
/* Main thread: stops and joins the broker thread (after the workers). */
void broker_stop(broker *b);
void broker_free(broker *b);
/* "local" or "redis" */
const char *broker_name(const broker *b);

typedef struct broker_stats {
    uint64_t delivered;  /* messages given their place and fanned out */
    uint64_t reconnects; /* times the Redis consumer came back after a loss */
    uint64_t lost;       /* entries stream_maxlen trimmed before they were read */
    uint64_t oversize;   /* entries larger than max_message, refused */
    uint64_t resets;     /* times the stream came back empty or went backwards */
    int up;              /* 1 while messages can be stored and read */
    int64_t since_ms;    /* wall-clock ms when `up` last changed */
    uint64_t queued;     /* messages accepted, not yet stored (all workers) */
    int64_t oldest_ms;   /* age of the oldest unacknowledged publish; 0: none */
    uint64_t read_lag;   /* entries in the stream this node has not read yet */
    int shards_up;       /* shards whose stream is read now */
    uint64_t redirects;  /* MOVED redirects followed */
    uint64_t route_changes; /* failovers followed */
} broker_stats;

/* Any thread: the broker's counters so far. */
void broker_get_stats(broker *b, broker_stats *out);

/* Any thread: 1 when the node can take clients (the consumer knows where it
 * reads from, messages can be stored); else 0 with the reason in why. A
 * lasting configuration error (WRONGTYPE, NOAUTH, NOPERM) is named there. */
int broker_ready(broker *b, char *why, size_t whylen);

/* Worker thread wid, once at its start: sets up the worker's publishing
 * side on its event loop. Returns 0 or -1. */
int broker_attach(broker *b, int wid, struct event_base *base);
/* Worker thread wid, at its end. */
void broker_detach(broker *b, int wid);

/* What a worker asks the broker to put in the order. */
enum { HIST_NONE = 0, HIST_LATEST, HIST_SINCE, HIST_BEFORE };
typedef struct broker_req {
    int kind;                  /* MSG_CHAT, MSG_JOIN, MSG_LEAVE, MSG_TYPING */
    uint64_t conn_id;          /* the sender */
    const char *room;
    size_t room_len;
    const char *user;
    size_t user_len;
    const char *text;          /* MSG_CHAT */
    size_t text_len;
    int64_t ts;                /* wall ms it was accepted */
    void *wait;                /* MSG_JOIN: answered through chat_join_answer
                                  (members; history when hist is set);
                                  NULL: no answer wanted */
    int hist;                  /* MSG_JOIN: HIST_NONE, HIST_LATEST, HIST_SINCE */
    uint32_t n;                /* messages wanted */
    uint64_t id_ms, id_seq;    /* HIST_SINCE: after this id; HIST_BEFORE: before */
} broker_req;

/* A ticket: the shard in the top byte, the publisher's sequence below. A
 * shard's tickets come back (acks, stored) in their order; different
 * shards' in no common one. */
#define TICKET(shard, seq) ((uint64_t)(shard) << 56 | (seq))
#define TICKET_SHARD(t) ((int)((t) >> 56))
#define TICKET_SEQ(t) ((t) & ((UINT64_C(1) << 56) - 1))

/* Any thread: how many shards (1 for the local broker), and a room's. */
int broker_shards(const broker *b);
int broker_room_shard(const broker *b, const char *name, size_t len);

/* Worker thread wid: puts r in the order: a message of user in room, a
 * presence change, a typing notice (never stored). A message whose sender
 * can never be stored is refused through worker_refuse with 1011. Returns
 * the request's ticket (>= 0; see broker_stored) when queued, -1 when the
 * publish queue is full (the client is told to try again). */
int64_t broker_publish(broker *b, int wid, const broker_req *r);

/* Worker thread wid: reads up to r->n messages of r->room's stored history
 * before r->id (HIST_BEFORE; id 0-0: the newest), newest first, answered
 * through chat_history_answer. Returns 0, or -1 when there is no stored
 * history (local broker, history_max 0) or it cannot be read now. */
int broker_read_history(broker *b, int wid, const broker_req *r);

/* Worker thread wid: messages it published that are not stored yet. */
int broker_pending(broker *b, int wid);
/* Worker thread wid: 1 if the message of ticket is stored; *failing says
 * whether storing fails right now (Redis away or refusing), as opposed to
 * merely being under way. */
int broker_ticket_stored(broker *b, int wid, uint64_t ticket, int *failing);
/* Worker thread wid: 1 if everything a connection sent is stored: its last
 * ticket, and nothing of the worker waits in the other shards it sent to
 * (sent_shards: bit k for shard k; a shard's order says nothing of
 * another's). */
int broker_sent_stored(broker *b, int wid, uint64_t ticket, uint64_t sent_shards, int *failing);

/* Shared by the backends (broker.c): the broker thread hands m (holding one
 * reference) to every worker in order, waiting while an inbox is full, and
 * rings each doorbell once at the end of a batch with broker_flush_wakes.
 * Returns 0, or -1 if stop was requested while waiting (m dropped). */
int broker_fanout(broker *b, msg *m);
/* The same for one worker (1..n) only: a private answer, in order with the
 * fan-out. */
int broker_push_one(broker *b, int wid, msg *m);
void broker_flush_wakes(broker *b);

#endif
