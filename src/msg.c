/* msg — immutable, reference-counted chat message (see msg.h). */
#include "msg.h"

#include <stdlib.h>
#include <string.h>

#include "ws.h"

msg *msg_new(const char *room, size_t room_len, const char *user, size_t user_len,
             const char *text, size_t text_len) {
    size_t payload = user_len + 2 + text_len;
    size_t hdr = ws_header_size(payload);
    if (room_len > UINT16_MAX || user_len > UINT16_MAX || hdr + payload > UINT32_MAX) return NULL;
    msg *m = malloc(sizeof(*m) + hdr + payload + room_len + 1);
    if (m == NULL) return NULL;
    atomic_init(&m->refs, 1);
    m->frame_len = (uint32_t)(hdr + payload);
    m->room_len = (uint16_t)room_len;
    m->user_len = (uint16_t)user_len;
    m->text_len = (uint32_t)text_len;
    m->id_ms = 0;
    m->id_seq = 0;

    uint8_t *p = m->frame + ws_write_header(m->frame, WS_OP_TEXT, payload);
    m->user = (const char *)p;
    memcpy(p, user, user_len);
    p += user_len;
    *p++ = ':';
    *p++ = ' ';
    m->text = (const char *)p;
    memcpy(p, text, text_len);
    p += text_len;
    m->room = (const char *)p;
    memcpy(p, room, room_len);
    p[room_len] = '\0';
    return m;
}

void msg_unref(msg *m) {
    /* acq_rel: our writes to m happen before the free by whoever drops last,
     * and the freeing thread sees everything the others did with m */
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1) free(m);
}
