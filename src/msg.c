/* msg — immutable, reference-counted chat frames (see msg.h). */
#include "msg.h"

#include <stdlib.h>
#include <string.h>

#include "pmd.h"
#include "proto.h"
#include "ws.h"

/* What z[] holds for a frame deflate does not shorten. */
static msg_z zplain;

/* Lays out a msg with a text frame of tpay payload bytes and a chatd.v1
 * frame of jpay (0: none; the caller writes the payloads) and copies of
 * room, and of user and text unless the caller points them into the text
 * frame. One byte of slack after the chatd.v1 payload takes the NUL a jbuf
 * writes behind what it built. */
static msg *msg_alloc(int kind, size_t tpay, size_t jpay, const char *room, size_t room_len,
                      const char *user, size_t user_len, const char *text, size_t text_len,
                      int copy) {
    size_t th = tpay ? ws_header_size(tpay) : 0, jh = jpay ? ws_header_size(jpay) : 0;
    size_t copies = room_len + 1 + (copy ? user_len + text_len + 2 : 0);
    if (room_len > UINT16_MAX || user_len > UINT16_MAX || text_len > UINT32_MAX ||
        th + tpay > UINT32_MAX || jh + jpay > UINT32_MAX)
        return NULL;
    msg *m = malloc(sizeof(*m) + th + tpay + jh + jpay + 1 + copies);
    if (m == NULL) return NULL;
    memset(m, 0, sizeof(*m));
    atomic_init(&m->refs, 1);
    atomic_init(&m->z[0], NULL);
    atomic_init(&m->z[1], NULL);
    m->kind = (uint8_t)kind;
    m->room_len = (uint16_t)room_len;
    m->user_len = (uint16_t)user_len;
    m->text_len = (uint32_t)text_len;
    uint8_t *p = m->data;
    if (tpay) {
        m->frame = p;
        m->frame_len = (uint32_t)(th + tpay);
        ws_write_header(p, WS_OP_TEXT, tpay);
        p += th + tpay;
    }
    if (jpay) {
        m->jframe = p;
        m->jframe_len = (uint32_t)(jh + jpay);
        ws_write_header(p, WS_OP_TEXT, jpay);
        p += jh + jpay;
    }
    char *s = (char *)p + 1;
    m->room = s;
    memcpy(s, room, room_len);
    s[room_len] = '\0';
    if (!copy) return m;
    s += room_len + 1;
    m->user = s;
    memcpy(s, user, user_len);
    s[user_len] = '\0';
    s += user_len + 1;
    m->text = s;
    if (text_len) memcpy(s, text, text_len);
    s[text_len] = '\0';
    return m;
}

/* The chatd.v1 object of a room message into j. */
static void msg_json(jbuf *j, int kind, const char *room, size_t room_len, const char *user,
                     size_t user_len, const char *text, size_t text_len, uint64_t id_ms,
                     uint64_t id_seq, int64_t ts) {
    switch (kind) {
    case MSG_CHAT:
        JB_LIT(j, "{\"op\":\"msg\",\"room\":");
        jb_str(j, room, room_len);
        JB_LIT(j, ",\"id\":");
        jb_id(j, (proto_id){id_ms, id_seq});
        JB_LIT(j, ",\"user\":");
        jb_str(j, user, user_len);
        JB_LIT(j, ",\"text\":");
        jb_str(j, text, text_len);
        JB_LIT(j, ",\"ts\":");
        jb_u64(j, (uint64_t)(ts > 0 ? ts : 0));
        break;
    case MSG_JOIN:
    case MSG_LEAVE:
        JB_LIT(j, "{\"op\":\"presence\",\"room\":");
        jb_str(j, room, room_len);
        if (kind == MSG_JOIN) JB_LIT(j, ",\"joined\":");
        else JB_LIT(j, ",\"left\":");
        jb_str(j, user, user_len);
        break;
    default: /* MSG_TYPING */
        JB_LIT(j, "{\"op\":\"typing\",\"room\":");
        jb_str(j, room, room_len);
        JB_LIT(j, ",\"user\":");
        jb_str(j, user, user_len);
        break;
    }
    JB_LIT(j, "}");
}

msg *msg_new(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len, uint64_t id_ms, uint64_t id_seq, int64_t ts) {
    if (kind != MSG_CHAT && kind != MSG_JOIN && kind != MSG_LEAVE && kind != MSG_TYPING) return NULL;
    /* Measured first, then written in place: one allocation per message,
     * whatever its size (a growing buffer would copy a large one twice). */
    jbuf j = {.measure = 1};
    msg_json(&j, kind, room, room_len, user, user_len, text, text_len, id_ms, id_seq, ts);
    size_t jpay = j.len;
    int chat = kind == MSG_CHAT;
    size_t tpay = chat ? user_len + 2 + text_len : 0;
    msg *m = msg_alloc(kind, tpay, jpay, room, room_len, user, user_len, text, text_len, !chat);
    if (m == NULL) return NULL;
    if (chat) { /* "user: text"; user and text are read from it */
        uint8_t *p = (uint8_t *)m->frame + ws_header_size(tpay);
        memcpy(p, user, user_len);
        p[user_len] = ':';
        p[user_len + 1] = ' ';
        if (text_len) memcpy(p + user_len + 2, text, text_len);
        m->user = (const char *)p;
        m->text = (const char *)p + user_len + 2;
    }
    j = (jbuf){.p = (char *)m->jframe + ws_header_size(jpay), .cap = jpay + 1};
    msg_json(&j, kind, room, room_len, user, user_len, text, text_len, id_ms, id_seq, ts);
    m->id_ms = id_ms;
    m->id_seq = id_seq;
    m->ts = ts;
    return m;
}

msg *msg_raw(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len) {
    return msg_alloc(kind, 0, 0, room, room_len, user, user_len, text, text_len, 1);
}

msg *msg_private(const char *payload, size_t len) {
    msg *m = msg_alloc(MSG_PRIVATE, 0, len, "", 0, "", 0, "", 0, 1);
    if (m == NULL) return NULL;
    memcpy((uint8_t *)m->jframe + ws_header_size(len), payload, len);
    m->frame = m->jframe;
    m->frame_len = m->jframe_len;
    return m;
}

const uint8_t *msg_zframe_built(msg *m, int json, uint32_t *len) {
    /* acquire: pairs with the release of the compare-and-swap that
     * published the frame, so its bytes are seen whole */
    msg_z *f = atomic_load_explicit(&m->z[json], memory_order_acquire);
    if (f == NULL || f == &zplain) return NULL;
    *len = f->len;
    return f->frame;
}

const uint8_t *msg_zframe(msg *m, int json, struct pmd *z, uint32_t *len, int *deflated) {
    *deflated = 0;
    /* acquire: as in msg_zframe_built */
    msg_z *f = atomic_load_explicit(&m->z[json], memory_order_acquire);
    if (f == NULL) {
        uint32_t plen;
        const uint8_t *plain = msg_frame(m, json, &plen);
        size_t h = ws_frame_header_size(plain), zlen;
        const uint8_t *d = pmd_deflate(z, plain + h, plen - h, &zlen);
        *deflated = 1;
        if (d == NULL) return NULL; /* out of memory: plain this time */
        size_t zh = ws_header_size(zlen);
        msg_z *mine = &zplain;
        if (zh + zlen < plen) {
            if ((mine = malloc(sizeof(*mine) + zh + zlen)) == NULL) return NULL;
            mine->len = (uint32_t)(zh + zlen);
            ws_write_header(mine->frame, WS_RSV1 | WS_OP_TEXT, zlen);
            memcpy(mine->frame + zh, d, zlen);
        }
        /* acq_rel on success: release publishes the bytes written above;
         * acquire on failure: the winner's bytes are seen whole */
        if (atomic_compare_exchange_strong_explicit(&m->z[json], &f, mine, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            f = mine;
        } else if (mine != &zplain) {
            free(mine); /* another worker published first: f is theirs */
        }
    }
    if (f == &zplain) return NULL;
    *len = f->len;
    return f->frame;
}

void msg_unref(msg *m) {
    /* acq_rel: our writes to m happen before the free by whoever drops last,
     * and the freeing thread sees everything the others did with m */
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) {
        for (int i = 0; i < 2; i++) {
            /* relaxed: the acq_rel above already ordered every store */
            msg_z *f = atomic_load_explicit(&m->z[i], memory_order_relaxed);
            if (f != &zplain) free(f);
        }
        free(m);
    }
}
