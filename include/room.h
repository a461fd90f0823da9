/* room — one worker's rooms: which local connections are in a room, and
 * the room's output log.
 *
 * A room's log holds the messages its local clients have not all written
 * yet, in delivery order. Each connection keeps a cursor into the log, so a
 * message delivered to 5,000 clients is stored once and written by
 * reference; each log entry counts the connections that still have to
 * write it, and leaves the log (dropping its msg reference) when that count
 * reaches zero. Worker thread only: a room index belongs to one worker.
 */
#ifndef CHATD_ROOM_H
#define CHATD_ROOM_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

struct conn;

typedef struct room_entry {
    msg *m;
    uint64_t end;      /* room bytes appended up to and including this one */
    uint32_t pending;  /* connections that still have to write it */
} room_entry;

typedef struct room {
    struct room *hnext;        /* hash chain */
    struct room *dirty_next;   /* rooms with new entries this turn */
    struct conn *conns;        /* members, linked by conn->room_next */
    uint32_t nconns;
    uint8_t dirty;
    uint64_t head;             /* sequence of the next entry to append */
    uint64_t tail;             /* oldest entry still held */
    uint64_t bytes;            /* total bytes ever appended */
    size_t cap;                /* log slots, a power of two (0: no log yet) */
    room_entry *log;           /* entry for seq s at log[s & (cap - 1)] */
    uint32_t hash;
    char name[];
} room;

typedef struct room_index {
    room **bucket;
    size_t nbuckets;           /* power of two */
    size_t nrooms;
    room *dirty;               /* list of rooms with new entries */
} room_index;

int room_index_init(room_index *ix);
/* Frees every room and drops every log reference. */
void room_index_free(room_index *ix);

/* Finds a room by name; NULL if this worker has no client in it. */
room *room_find(room_index *ix, const char *name, size_t len);

/* Adds c to the room called name (created if needed); c's cursor starts
 * at the room's head. Returns the room, or NULL when out of memory. */
room *room_join(room_index *ix, const char *name, size_t len, struct conn *c);

/* Removes c from its room: gives back every entry c had not written yet;
 * frees the room when it is empty. */
void room_leave(room_index *ix, struct conn *c);

/* Appends m to r's log, taking over the caller's reference, and marks r
 * dirty. Returns 0, or -1 when out of memory (the reference is dropped). */
int room_append(room_index *ix, room *r, msg *m);

/* Takes the next room off the dirty list (NULL when none); the room stays
 * alive until room_settle, even if its last member leaves meanwhile. */
room *room_next_dirty(room_index *ix);
/* Ends a room's dirty pass: frees it if nobody is left in it. */
void room_settle(room_index *ix, room *r);

/* Entry for sequence s (tail <= s < head). */
static inline room_entry *room_entry_at(room *r, uint64_t s) { return &r->log[s & (r->cap - 1)]; }

/* c has written entry c->cursor completely: advance its cursor. */
void room_advance(room *r, struct conn *c);

/* Bytes of r's log that c has not written yet. */
uint64_t room_backlog(room *r, const struct conn *c);

/* Bytes of r's log queued for c behind the entry it writes next (or is in
 * the middle of): what slowness is judged by, so that one entry larger
 * than max_output_buffer is not taken for a slow client. */
uint64_t room_backlog_behind(room *r, const struct conn *c);

#endif
