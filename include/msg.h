/* msg — one chat message, immutable once published, reference counted.
 *
 * Built once per node (by the broker for Redis, by the sending worker for
 * the local broker) with its outgoing WebSocket frame already encoded:
 * "NAME: TEXT" as one unmasked text frame. Workers write the frame bytes by
 * reference to every local client of the room. The last thread to drop a
 * reference frees it.
 */
#ifndef CHATD_MSG_H
#define CHATD_MSG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct msg {
    _Atomic uint32_t refs;   /* one per holder: ring slots, worker room logs */
    uint32_t frame_len;      /* bytes of frame[] */
    uint16_t room_len;
    uint16_t user_len;
    uint64_t id_ms;          /* stream id "<ms>-<seq>" (local broker: 0-<seq>) */
    uint64_t id_seq;
    const char *room;        /* points into frame storage, after the frame */
    const char *user;        /* points into the frame's payload */
    const char *text;        /* points into the frame's payload */
    uint32_t text_len;
    uint8_t frame[];         /* header, "user: text", then room */
} msg;

/* Builds a message: encodes the text frame "user: text" and copies room.
 * refs starts at 1. NULL when out of memory. Any thread. */
msg *msg_new(const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len);

/* Adds n references. Any thread holding a reference. */
static inline void msg_ref(msg *m, uint32_t n) {
    /* relaxed: the caller already holds a reference, so m stays alive */
    atomic_fetch_add_explicit(&m->refs, n, memory_order_relaxed);
}

/* Drops one reference; frees the message on the last. Any thread. */
void msg_unref(msg *m);

#endif
