/* room — per-worker rooms: members, output logs, history (see room.h). */
#include "room.h"
#include "redis_cluster.h"

#include <stdlib.h>
#include <string.h>

#define ROOM_LOG_MIN 16
#define ROOM_HIST_MIN 8
#define ROOM_FIFO_MIN 64

static uint32_t room_hash(const char *s, size_t len) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

int room_index_init(room_index *ix, uint32_t hist_size, uint64_t hist_budget) {
    memset(ix, 0, sizeof(*ix));
    ix->nbuckets = 64;
    ix->hist_size = hist_size;
    ix->hist_budget = hist_budget;
    ix->bucket = calloc(ix->nbuckets, sizeof(*ix->bucket));
    return ix->bucket ? 0 : -1;
}

static void room_drop_log(room *r) {
    for (uint64_t s = r->tail; s < r->head; s++) msg_unref(room_entry_at(r, s)->m);
    r->tail = r->head;
    free(r->log);
    r->log = NULL;
    r->cap = 0;
}

static void room_drop_hist(room_index *ix, room *r) {
    for (uint32_t i = 0; i < r->hist_len; i++) {
        msg *m = room_hist_at(r, i);
        ix->hist_bytes -= msg_size(m);
        msg_unref(m);
    }
    r->hist_len = 0;
}

void room_index_free(room_index *ix) {
    for (size_t i = 0; i < ix->nbuckets; i++) {
        room *r = ix->bucket[i];
        while (r) {
            room *next = r->hnext;
            room_drop_log(r);
            room_drop_hist(ix, r);
            free(r->hist);
            free(r);
            r = next;
        }
    }
    free(ix->bucket);
    free(ix->fifo);
    ix->bucket = NULL;
    ix->fifo = NULL;
    ix->nrooms = 0;
}

room *room_find(room_index *ix, const char *name, size_t len) {
    uint32_t h = room_hash(name, len);
    for (room *r = ix->bucket[h & (ix->nbuckets - 1)]; r; r = r->hnext)
        if (r->hash == h && r->name_len == len && memcmp(r->name, name, len) == 0) return r;
    return NULL;
}

static void room_index_grow(room_index *ix) {
    size_t n = ix->nbuckets * 2;
    room **b = calloc(n, sizeof(*b));
    if (b == NULL) return; /* keep the longer chains */
    for (size_t i = 0; i < ix->nbuckets; i++) {
        room *r = ix->bucket[i];
        while (r) {
            room *next = r->hnext;
            r->hnext = b[r->hash & (n - 1)];
            b[r->hash & (n - 1)] = r;
            r = next;
        }
    }
    free(ix->bucket);
    ix->bucket = b;
    ix->nbuckets = n;
}

room *room_get(room_index *ix, const char *name, size_t len) {
    room *r = room_find(ix, name, len);
    if (r != NULL) return r;
    if (len > UINT16_MAX || (r = calloc(1, sizeof(*r) + len + 1)) == NULL) return NULL;
    memcpy(r->name, name, len);
    r->name_len = (uint16_t)len;
    r->hash = room_hash(name, len);
    if (ix->nrooms >= ix->nbuckets) room_index_grow(ix);
    room **slot = &ix->bucket[r->hash & (ix->nbuckets - 1)];
    r->hnext = *slot;
    *slot = r;
    ix->nrooms++;
    return r;
}

void room_join(room *r, member *mb) {
    mb->room = r;
    mb->cursor = r->head;
    mb->room_prev = NULL;
    mb->room_next = r->members;
    if (r->members) r->members->room_prev = mb;
    r->members = mb;
    r->nmembers++;
}

/* Drops entries at the tail that nobody still has to write. */
static void room_trim(room *r) {
    while (r->tail < r->head) {
        room_entry *e = room_entry_at(r, r->tail);
        if (e->pending) break;
        msg_unref(e->m);
        e->m = NULL;
        r->tail++;
    }
}

/* Frees r if nothing holds it: no member, no dirty pass, no history. A
 * dirty room is taken off the dirty list by the worker's pass, which never
 * sees a freed room: rooms die only when they are not dirty. */
static void room_maybe_free(room_index *ix, room *r) {
    if (r->nmembers || r->dirty || r->hist_refs) return;
    room_drop_log(r); /* empty already: every entry's pending reached 0 */
    room **p = &ix->bucket[r->hash & (ix->nbuckets - 1)];
    while (*p != r) p = &(*p)->hnext;
    *p = r->hnext;
    ix->nrooms--;
    free(r->hist);
    free(r);
}

void room_release(room_index *ix, room *r) { room_maybe_free(ix, r); }

void room_leave(room_index *ix, member *mb) {
    room *r = mb->room;
    if (r == NULL) return;
    for (uint64_t s = mb->cursor; s < r->head; s++) room_entry_at(r, s)->pending--;
    room_trim(r);
    if (mb->room_prev) mb->room_prev->room_next = mb->room_next;
    else r->members = mb->room_next;
    if (mb->room_next) mb->room_next->room_prev = mb->room_prev;
    mb->room = NULL;
    mb->room_next = mb->room_prev = NULL;
    r->nmembers--;
    room_maybe_free(ix, r);
}

static int room_log_grow(room *r) {
    size_t cap = r->cap ? r->cap * 2 : ROOM_LOG_MIN;
    room_entry *log = malloc(cap * sizeof(*log));
    if (log == NULL) return -1;
    for (uint64_t s = r->tail; s < r->head; s++) log[s & (cap - 1)] = *room_entry_at(r, s);
    free(r->log);
    r->log = log;
    r->cap = cap;
    return 0;
}

int room_append(room_index *ix, room *r, msg *m) {
    if (r->nmembers == 0 || (r->head - r->tail >= r->cap && room_log_grow(r) < 0)) {
        msg_unref(m);
        return r->nmembers == 0 ? 0 : -1;
    }
    r->bytes[0] += m->frame_len;
    r->bytes[1] += m->jframe_len;
    room_entry *e = room_entry_at(r, r->head);
    e->m = m;
    e->end[0] = r->bytes[0];
    e->end[1] = r->bytes[1];
    e->wseq = ix->wseq++;
    e->pending = r->nmembers;
    r->head++;
    if (!r->dirty) {
        r->dirty = 1;
        r->dirty_next = ix->dirty;
        ix->dirty = r;
    }
    return 0;
}

/* ---- history -------------------------------------------------------- */

/* Drops r's oldest kept message. */
static void room_hist_pop(room_index *ix, room *r) {
    msg *m = room_hist_at(r, 0);
    ix->hist_bytes -= msg_size(m);
    msg_unref(m);
    r->hist_len--;
}

/* Takes the node-wide oldest fifo entry off; its message goes too if its
 * room still holds it (the room's own cap may have dropped it already). */
static void room_fifo_pop(room_index *ix) {
    fifo_entry *f = &ix->fifo[ix->fifo_tail++ & (ix->fifo_cap - 1)];
    room *r = f->r;
    if (r->hist_len && r->hist[(r->hist_head - r->hist_len) & (r->hist_cap - 1)].n == f->n)
        room_hist_pop(ix, r);
    r->hist_refs--;
    room_maybe_free(ix, r);
}

static int room_fifo_push(room_index *ix, room *r, uint64_t n) {
    if (ix->fifo_head - ix->fifo_tail == ix->fifo_cap) {
        size_t cap = ix->fifo_cap ? ix->fifo_cap * 2 : ROOM_FIFO_MIN;
        fifo_entry *f = malloc(cap * sizeof(*f));
        if (f == NULL) return -1;
        for (size_t i = ix->fifo_tail; i < ix->fifo_head; i++)
            f[i & (cap - 1)] = ix->fifo[i & (ix->fifo_cap - 1)];
        free(ix->fifo);
        ix->fifo = f;
        ix->fifo_cap = cap;
    }
    ix->fifo[ix->fifo_head++ & (ix->fifo_cap - 1)] = (fifo_entry){r, n};
    r->hist_refs++;
    return 0;
}

void room_remember(room_index *ix, room *r, msg *m) {
    if (ix->hist_size == 0) {
        msg_unref(m);
        return;
    }
    if (r->hist_len == r->hist_cap && r->hist_cap < ix->hist_size) {
        uint32_t cap = r->hist_cap ? r->hist_cap * 2 : ROOM_HIST_MIN;
        hist_entry *h = malloc(cap * sizeof(*h));
        if (h != NULL) {
            for (uint32_t i = 0; i < r->hist_len; i++)
                h[(r->hist_head - r->hist_len + i) & (cap - 1)] =
                    r->hist[(r->hist_head - r->hist_len + i) & (r->hist_cap - 1)];
            free(r->hist);
            r->hist = h;
            r->hist_cap = cap;
        }
    }
    if (r->hist_cap == 0) { /* out of memory: no history for this room */
        msg_unref(m);
        return;
    }
    if (r->hist_len == r->hist_cap || r->hist_len >= ix->hist_size) room_hist_pop(ix, r);
    uint64_t n = ix->hist_n++;
    if (room_fifo_push(ix, r, n) < 0) {
        msg_unref(m);
        return;
    }
    r->hist[r->hist_head++ & (r->hist_cap - 1)] = (hist_entry){m, n};
    r->hist_len++;
    ix->hist_bytes += msg_size(m);
    /* The budget: the node's oldest go first, but r keeps its newest. */
    while (ix->hist_bytes > ix->hist_budget && ix->fifo_head - ix->fifo_tail > 1)
        room_fifo_pop(ix);
}

void room_forget_shard(room_index *ix, int shard, int nshards) {
    for (size_t i = 0; i < ix->nbuckets; i++)
        for (room *r = ix->bucket[i]; r; r = r->hnext)
            if (nshards == 1 || cluster_room_shard(r->name, r->name_len, nshards) == shard)
                room_drop_hist(ix, r);
    /* The fifo entries of those rooms now name nothing; popping them frees
     * idle rooms. With other shards' entries among them they go in turn,
     * as the budget pops them. */
    while (nshards == 1 && ix->fifo_head != ix->fifo_tail) room_fifo_pop(ix);
}

void room_advance(room *r, member *mb) {
    room_entry *e = room_entry_at(r, mb->cursor);
    mb->cursor++;
    if (--e->pending == 0 && mb->cursor - 1 == r->tail) room_trim(r);
}

uint64_t room_backlog(room *r, const member *mb, int json) {
    if (mb->cursor >= r->head) return 0;
    return r->bytes[json] - room_entry_at(r, mb->cursor)->end[json];
}

room *room_next_dirty(room_index *ix) {
    room *r = ix->dirty;
    if (r) ix->dirty = r->dirty_next;
    return r;
}

void room_settle(room_index *ix, room *r) {
    r->dirty = 0;
    room_maybe_free(ix, r);
}
