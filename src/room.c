/* room — per-worker room index and room output logs (see room.h). */
#include "room.h"

#include <stdlib.h>
#include <string.h>

#include "conn.h"

#define ROOM_LOG_MIN 16

static uint32_t room_hash(const char *s, size_t len) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

int room_index_init(room_index *ix) {
    ix->nbuckets = 64;
    ix->nrooms = 0;
    ix->dirty = NULL;
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

void room_index_free(room_index *ix) {
    for (size_t i = 0; i < ix->nbuckets; i++) {
        room *r = ix->bucket[i];
        while (r) {
            room *next = r->hnext;
            room_drop_log(r);
            free(r);
            r = next;
        }
    }
    free(ix->bucket);
    ix->bucket = NULL;
    ix->nrooms = 0;
}

room *room_find(room_index *ix, const char *name, size_t len) {
    uint32_t h = room_hash(name, len);
    for (room *r = ix->bucket[h & (ix->nbuckets - 1)]; r; r = r->hnext)
        if (r->hash == h && strlen(r->name) == len && memcmp(r->name, name, len) == 0) return r;
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

room *room_join(room_index *ix, const char *name, size_t len, conn *c) {
    room *r = room_find(ix, name, len);
    if (r == NULL) {
        r = calloc(1, sizeof(*r) + len + 1);
        if (r == NULL) return NULL;
        memcpy(r->name, name, len);
        r->hash = room_hash(name, len);
        if (ix->nrooms >= ix->nbuckets) room_index_grow(ix);
        room **slot = &ix->bucket[r->hash & (ix->nbuckets - 1)];
        r->hnext = *slot;
        *slot = r;
        ix->nrooms++;
    }
    c->room = r;
    c->cursor = r->head;
    c->off = 0;
    c->room_prev = NULL;
    c->room_next = r->conns;
    if (r->conns) r->conns->room_prev = c;
    r->conns = c;
    r->nconns++;
    return r;
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

static void room_unlink(room_index *ix, room *r) {
    room **p = &ix->bucket[r->hash & (ix->nbuckets - 1)];
    while (*p != r) p = &(*p)->hnext;
    *p = r->hnext;
    ix->nrooms--;
    /* a dirty room is unlinked from the dirty list by the worker's pass,
     * which never sees a freed room: rooms die only when they hold no
     * entries, and only rooms with entries are dirty */
}

void room_leave(room_index *ix, conn *c) {
    room *r = c->room;
    if (r == NULL) return;
    for (uint64_t s = c->cursor; s < r->head; s++) room_entry_at(r, s)->pending--;
    room_trim(r);
    if (c->room_prev) c->room_prev->room_next = c->room_next;
    else r->conns = c->room_next;
    if (c->room_next) c->room_next->room_prev = c->room_prev;
    c->room = NULL;
    c->room_next = c->room_prev = NULL;
    r->nconns--;
    if (r->nconns == 0 && !r->dirty) {
        room_drop_log(r); /* empty already: every entry's pending reached 0 */
        room_unlink(ix, r);
        free(r);
    }
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
    if (r->nconns == 0 || (r->head - r->tail >= r->cap && room_log_grow(r) < 0)) {
        msg_unref(m);
        return r->nconns == 0 ? 0 : -1;
    }
    r->bytes += m->frame_len;
    room_entry *e = room_entry_at(r, r->head);
    e->m = m;
    e->end = r->bytes;
    e->pending = r->nconns;
    r->head++;
    if (!r->dirty) {
        r->dirty = 1;
        r->dirty_next = ix->dirty;
        ix->dirty = r;
    }
    return 0;
}

void room_advance(room *r, conn *c) {
    room_entry *e = room_entry_at(r, c->cursor);
    c->cursor++;
    c->off = 0;
    if (--e->pending == 0 && c->cursor - 1 == r->tail) room_trim(r);
}

uint64_t room_backlog(room *r, const conn *c) {
    if (c->cursor >= r->head) return 0;
    room_entry *e = room_entry_at(r, c->cursor);
    return r->bytes - (e->end - e->m->frame_len) - c->off;
}

uint64_t room_backlog_behind(room *r, const conn *c) {
    if (c->cursor >= r->head) return 0;
    return r->bytes - room_entry_at(r, c->cursor)->end;
}

room *room_next_dirty(room_index *ix) {
    room *r = ix->dirty;
    if (r) ix->dirty = r->dirty_next;
    return r;
}

void room_settle(room_index *ix, room *r) {
    r->dirty = 0;
    if (r->nconns == 0) {
        room_drop_log(r);
        room_unlink(ix, r);
        free(r);
    }
}
