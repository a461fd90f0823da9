/* msg — one frame's worth of chat, immutable once published, reference
 * counted.
 *
 * Room traffic (messages, presence) is built once per node by the broker
 * thread with its outgoing WebSocket frames already encoded, one per wire
 * protocol: "NAME: TEXT" for text clients, a chatd.v1 object for JSON
 * clients. Workers write the frame bytes by reference to every local client
 * of the room, and keep messages by reference as the room's recent history.
 * A private frame (an answer to one client) is a msg of its own with one
 * frame. The last thread to drop a reference frees it.
 *
 * permessage-deflate: a msg also carries its frames compressed, built
 * lazily by the first worker that has a client needing one and shared by
 * every client of every worker from then on. Once set, a compressed frame
 * never changes until the msg is freed.
 */
#ifndef CHATD_MSG_H
#define CHATD_MSG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct pmd;

enum msg_kind {
    MSG_CHAT = 0,  /* a message of a room: history, both frames */
    MSG_JOIN,      /* presence: a user's first connection to a room came */
    MSG_LEAVE,     /* presence: its last went; JSON frame only */
    MSG_TYPING,    /* someone types: JSON frame only, never kept */
    MSG_PRIVATE,   /* a frame for one connection (joined, ack, error, ...) */
    MSG_MARK,      /* broker → workers: reading (re)starts at id, in epoch */
    MSG_SNAPSHOT,  /* local broker → one worker: a join's member list */
};

/* A frame compressed with permessage-deflate: header (RSV1) and payload. */
typedef struct msg_z {
    uint32_t len;
    uint8_t frame[];
} msg_z;

typedef struct msg {
    _Atomic uint32_t refs;   /* one per holder: rings, room logs, histories */
    uint8_t kind;            /* enum msg_kind */
    uint8_t shard;           /* whose stream it came from (ids and origin_seq
                                are in that shard's order) */
    uint16_t origin_wid;     /* the worker of this node that published it, or 0 */
    uint16_t room_len;
    uint16_t user_len;
    uint32_t text_len;
    uint32_t frame_len;      /* text protocol frame; 0: none for text clients */
    uint32_t jframe_len;     /* chatd.v1 frame */
    uint64_t origin_seq;     /* its publisher sequence, when origin_wid */
    uint64_t conn_id;        /* the sender (typing: not told its own) */
    uint64_t id_ms, id_seq;  /* place in the order "<ms>-<seq>" */
    int64_t ts;              /* wall ms when a node accepted it */
    void *wait;              /* MSG_SNAPSHOT: the worker's join in waiting */
    uint32_t count;          /* MSG_SNAPSHOT: members */
    const char *room;        /* a NUL-terminated copy, after the frames */
    const char *user;        /* MSG_CHAT: in the text frame (not NUL-
                                terminated); else copies after room */
    const char *text;        /* MSG_SNAPSHOT: the members as a JSON array */
    const uint8_t *frame;
    const uint8_t *jframe;
    _Atomic(msg_z *) z[2];   /* frame and jframe compressed: NULL until a
                                worker builds one (msg_zframe), then set
                                once for good */
    uint8_t data[];
} msg;

/* Builds a room message of kind (CHAT, JOIN, LEAVE, TYPING) with id, ts and
 * its frames encoded. refs starts at 1. NULL when out of memory. Any
 * thread. */
msg *msg_new(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len, uint64_t id_ms, uint64_t id_seq, int64_t ts);

/* Builds a msg of kind without frames: room, user and text copied (a
 * request on its way to the local broker, a mark, a snapshot). */
msg *msg_raw(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len);

/* Builds a private msg whose one frame is the text frame of payload (the
 * same bytes serve both protocols). */
msg *msg_private(const char *payload, size_t len);

/* The frame of m for a client of the protocol (json 0 or 1); *len 0 when m
 * has none for it. */
static inline const uint8_t *msg_frame(const msg *m, int json, uint32_t *len) {
    *len = json ? m->jframe_len : m->frame_len;
    return json ? m->jframe : m->frame;
}

/* The frame of m for protocol json compressed with permessage-deflate
 * (RSV1, the payload deflated without context). The first caller builds it
 * with its own compressor z and publishes it with a compare-and-swap (a
 * caller that loses the race frees its copy and takes the winner's); every
 * later call is one atomic load, on any thread. NULL when deflate would
 * not make the frame shorter (then never again) or memory ran out (the
 * next call tries again): send the plain frame. *deflated is set to 1 when
 * this call ran the compressor. Any thread holding a reference. */
const uint8_t *msg_zframe(msg *m, int json, struct pmd *z, uint32_t *len, int *deflated);

/* The compressed frame msg_zframe returned for m and json before (for a
 * frame written in part, finished later), or NULL. */
const uint8_t *msg_zframe_built(msg *m, int json, uint32_t *len);

/* Adds n references. Any thread holding a reference. */
static inline void msg_ref(msg *m, uint32_t n) {
    /* relaxed: the caller already holds a reference, so m stays alive */
    atomic_fetch_add_explicit(&m->refs, n, memory_order_relaxed);
}

/* Drops one reference; frees the message on the last. Any thread. */
void msg_unref(msg *m);

/* Bytes m holds, for history's memory budget (a message's user and text
 * are read from its text frame). Its compressed frames are not counted:
 * they are built after it is kept, only when a deflate client needs them,
 * and are smaller than the frames they stand for. */
static inline size_t msg_size(const msg *m) {
    return sizeof(*m) + m->frame_len + m->jframe_len + m->room_len + 2 +
           (m->kind == MSG_CHAT ? 0 : (size_t)m->user_len + m->text_len + 2);
}

/* 1 if id a comes before id b. */
static inline int msg_id_before(uint64_t ams, uint64_t aseq, uint64_t bms, uint64_t bseq) {
    return ams < bms || (ams == bms && aseq < bseq);
}

#endif
