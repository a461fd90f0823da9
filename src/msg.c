/* msg — immutable, reference-counted chat frames (see msg.h). */
#include "msg.h"

#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "ws.h"

/* Lays out a msg holding frames of these payload sizes and copies of room,
 * user and text; the frames' payloads are left for the caller. */
static msg *msg_alloc(int kind, size_t tpay, size_t jpay, const char *room, size_t room_len,
                      const char *user, size_t user_len, const char *text, size_t text_len) {
    size_t th = tpay ? ws_header_size(tpay) : 0, jh = jpay ? ws_header_size(jpay) : 0;
    if (room_len > UINT16_MAX || user_len > UINT16_MAX || text_len > UINT32_MAX ||
        th + tpay > UINT32_MAX || jh + jpay > UINT32_MAX)
        return NULL;
    msg *m = malloc(sizeof(*m) + th + tpay + jh + jpay + room_len + user_len + text_len + 3);
    if (m == NULL) return NULL;
    memset(m, 0, sizeof(*m));
    atomic_init(&m->refs, 1);
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
    char *s = (char *)p;
    m->room = s;
    memcpy(s, room, room_len);
    s[room_len] = '\0';
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

msg *msg_new(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len, uint64_t id_ms, uint64_t id_seq, int64_t ts) {
    jbuf j = {0};
    switch (kind) {
    case MSG_CHAT:
        JB_LIT(&j, "{\"op\":\"msg\",\"room\":");
        jb_str(&j, room, room_len);
        JB_LIT(&j, ",\"id\":");
        jb_id(&j, (proto_id){id_ms, id_seq});
        JB_LIT(&j, ",\"user\":");
        jb_str(&j, user, user_len);
        JB_LIT(&j, ",\"text\":");
        jb_str(&j, text, text_len);
        JB_LIT(&j, ",\"ts\":");
        jb_u64(&j, (uint64_t)(ts > 0 ? ts : 0));
        break;
    case MSG_JOIN:
    case MSG_LEAVE:
        JB_LIT(&j, "{\"op\":\"presence\",\"room\":");
        jb_str(&j, room, room_len);
        jb_raw(&j, kind == MSG_JOIN ? ",\"joined\":" : ",\"left\":", kind == MSG_JOIN ? 10 : 8);
        jb_str(&j, user, user_len);
        break;
    case MSG_TYPING:
        JB_LIT(&j, "{\"op\":\"typing\",\"room\":");
        jb_str(&j, room, room_len);
        JB_LIT(&j, ",\"user\":");
        jb_str(&j, user, user_len);
        break;
    default:
        return NULL;
    }
    JB_LIT(&j, "}");
    if (j.oom) {
        jb_free(&j);
        return NULL;
    }
    size_t tpay = kind == MSG_CHAT ? user_len + 2 + text_len : 0;
    msg *m = msg_alloc(kind, tpay, j.len, room, room_len, user, user_len, text, text_len);
    if (m != NULL) {
        if (tpay) { /* "user: text" */
            uint8_t *p = (uint8_t *)m->frame + ws_header_size(tpay);
            memcpy(p, user, user_len);
            p[user_len] = ':';
            p[user_len + 1] = ' ';
            if (text_len) memcpy(p + user_len + 2, text, text_len);
        }
        memcpy((uint8_t *)m->jframe + ws_header_size(j.len), j.p, j.len);
        m->id_ms = id_ms;
        m->id_seq = id_seq;
        m->ts = ts;
    }
    jb_free(&j);
    return m;
}

msg *msg_raw(int kind, const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len) {
    return msg_alloc(kind, 0, 0, room, room_len, user, user_len, text, text_len);
}

msg *msg_private(const char *payload, size_t len) {
    msg *m = msg_alloc(MSG_PRIVATE, 0, len, "", 0, "", 0, "", 0);
    if (m == NULL) return NULL;
    memcpy((uint8_t *)m->jframe + ws_header_size(len), payload, len);
    m->frame = m->jframe;
    m->frame_len = m->jframe_len;
    return m;
}

void msg_unref(msg *m) {
    /* acq_rel: our writes to m happen before the free by whoever drops last,
     * and the freeing thread sees everything the others did with m */
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) free(m);
}
