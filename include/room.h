/* room — one worker's rooms: which local connections are in a room, the
 * room's output log, and its recent history.
 *
 * A room's log holds the frames its local members have not all written
 * yet, in delivery order. Each membership keeps a cursor into the log, so a
 * message delivered to 5,000 clients is stored once and written by
 * reference; each log entry counts the members that still have to write
 * it, and leaves the log (dropping its msg reference) when that count
 * reaches zero.
 *
 * History: every worker sees every message of every room (the broker fans
 * all of them out to all workers), so each keeps the last history_size
 * messages of each room by reference: the same msg objects on every worker,
 * so the bodies are in memory once per node. A join or a recovery is then
 * served from the worker's own memory, in the same order as the live log,
 * with no thread to ask. Past history_bytes the node's oldest messages go
 * first, whatever their room.
 *
 * Worker thread only: a room index belongs to one worker.
 */
#ifndef CHATD_ROOM_H
#define CHATD_ROOM_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

struct conn;
struct join_wait;

typedef struct room_entry {
    msg *m;
    uint64_t end[2];   /* room bytes appended up to and including this one,
                          per protocol (0 text, 1 chatd.v1) */
    uint64_t wseq;     /* the worker's arrival number: merges rooms in order */
    uint32_t pending;  /* members that still have to write it */
} room_entry;

/* One connection's place in one room. */
typedef struct member {
    struct room *room;
    struct conn *conn;
    struct member *room_next, *room_prev;  /* the room's members */
    struct member *next;                   /* the connection's rooms */
    uint64_t cursor;                       /* next log entry to write */
    uint64_t look;                         /* conn_flush: next entry to queue */
    uint64_t skip_ms, skip_seq;            /* presence up to this id is in the
                                              joined snapshot: not written */
    uint64_t seen_ms, seen_seq;            /* a recovery's since: messages up
                                              to it the client has */
    int64_t typing_ms;                     /* last typing relayed (monotonic) */
    struct join_wait *wait;                /* until the join is answered:
                                              nothing of the room is written */
} member;

typedef struct hist_entry {
    msg *m;
    uint64_t n;        /* the worker's history number, see room_index.fifo */
} hist_entry;

typedef struct room {
    struct room *hnext;        /* hash chain */
    struct room *dirty_next;   /* rooms with new entries this turn */
    member *members;
    uint32_t nmembers;
    uint32_t njson;            /* members speaking chatd.v1: only they are
                                  told presence */
    uint8_t dirty;
    uint64_t head;             /* sequence of the next entry to append */
    uint64_t tail;             /* oldest entry still held */
    uint64_t bytes[2];         /* total bytes ever appended, per protocol */
    size_t cap;                /* log slots, a power of two (0: no log yet) */
    room_entry *log;           /* entry for seq s at log[s & (cap - 1)] */
    hist_entry *hist;          /* recent messages, a ring (NULL: none yet) */
    uint32_t hist_cap;         /* a power of two */
    uint32_t hist_len;
    uint64_t hist_head;        /* number of the next message to keep */
    uint64_t hist_refs;        /* fifo entries naming this room */
    uint32_t hash;
    uint16_t name_len;
    char name[];
} room;

/* A history message, in the node-wide order of arrival. */
typedef struct fifo_entry {
    room *r;
    uint64_t n;
} fifo_entry;

typedef struct room_index {
    room **bucket;
    size_t nbuckets;           /* power of two */
    size_t nrooms;
    room *dirty;               /* list of rooms with new entries */
    uint64_t wseq;             /* entries appended so far, all rooms */
    /* history */
    uint32_t hist_size;        /* per room; 0: no history */
    uint64_t hist_budget;      /* bytes */
    uint64_t hist_bytes;       /* bytes held */
    uint64_t hist_n;           /* messages kept so far */
    fifo_entry *fifo;          /* every kept message, oldest first, a ring */
    size_t fifo_cap, fifo_head, fifo_tail;
} room_index;

int room_index_init(room_index *ix, uint32_t hist_size, uint64_t hist_budget);
/* Frees every room and drops every log and history reference. */
void room_index_free(room_index *ix);

/* Finds a room by name; NULL if this worker holds nothing of it. */
room *room_find(room_index *ix, const char *name, size_t len);
/* Finds or creates a room. NULL when out of memory. */
room *room_get(room_index *ix, const char *name, size_t len);

/* Frees r if nothing holds it (a room made by room_get for a join that
 * then failed). */
void room_release(room_index *ix, room *r);

/* Adds mb (its conn set by the caller) to r; its cursor starts at the
 * room's head. */
void room_join(room *r, member *mb);

/* Removes mb from its room: gives back every entry it had not written yet;
 * frees the room when nothing holds it any more. */
void room_leave(room_index *ix, member *mb);

/* Appends m to r's log, taking over the caller's reference, and marks r
 * dirty. Returns 0, or -1 when out of memory (the reference is dropped). */
int room_append(room_index *ix, room *r, msg *m);

/* Keeps m (taking over the caller's reference) as r's newest history. */
void room_remember(room_index *ix, room *r, msg *m);
/* Forgets the history of every room of a shard (cluster_room_shard; all
 * rooms when nshards is 1): the shard's epoch changed. */
void room_forget_shard(room_index *ix, int shard, int nshards);
/* History of r, oldest first: entry i (0 <= i < r->hist_len). */
static inline msg *room_hist_at(const room *r, uint32_t i) {
    return r->hist[(r->hist_head - r->hist_len + i) & (r->hist_cap - 1)].m;
}

/* Takes the next room off the dirty list (NULL when none); the room stays
 * alive until room_settle, even if its last member leaves meanwhile. */
room *room_next_dirty(room_index *ix);
/* Ends a room's dirty pass: frees it if nothing holds it any more. */
void room_settle(room_index *ix, room *r);

/* Entry for sequence s (tail <= s < head). */
static inline room_entry *room_entry_at(room *r, uint64_t s) { return &r->log[s & (r->cap - 1)]; }

/* mb is done with entry mb->cursor (written or skipped): advance. */
void room_advance(room *r, member *mb);

/* Bytes of r's log queued for mb (protocol json) behind the entry it
 * writes next: what slowness is judged by, so that one entry larger than
 * max_output_buffer is not taken for a slow client. */
uint64_t room_backlog(room *r, const member *mb, int json);

#endif
