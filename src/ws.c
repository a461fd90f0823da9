/* ws — sans-I/O RFC 6455 frame codec and UTF-8 validation (see ws.h). */
#include "ws.h"

#include <string.h>

/* ---- UTF-8 ---------------------------------------------------------- */

#define HIGH_BITS 0x8080808080808080ULL

/* The state keeps, for the next continuation byte, the exact range that can
 * still lead to a valid scalar value (RFC 3629 section 4). Narrowing the
 * range of the first continuation byte is what rejects overlongs (E0, F0),
 * surrogates (ED) and values above U+10FFFF (F4) on the byte that makes them
 * impossible, rather than after the whole sequence is decoded. */
int utf8_feed(utf8_state *s, const uint8_t *p, size_t len)
{
    unsigned need = s->need, lo = s->lo, hi = s->hi;
    size_t i = 0;

    while (i < len) {
        unsigned b;
        if (need == 0) {
            /* Chat traffic is mostly ASCII: skip it 8 bytes at a time. */
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & HIGH_BITS)
                    break;
                i += 8;
            }
            if (i == len)
                break;
            b = p[i++];
            if (b < 0x80)
                continue;
            if (b >= 0xC2 && b <= 0xDF) {
                need = 1, lo = 0x80, hi = 0xBF;
            } else if (b >= 0xE0 && b <= 0xEF) {
                need = 2;
                lo = b == 0xE0 ? 0xA0 : 0x80; /* E0 80..9F: overlong */
                hi = b == 0xED ? 0x9F : 0xBF; /* ED A0..BF: surrogates */
            } else if (b >= 0xF0 && b <= 0xF4) {
                need = 3;
                lo = b == 0xF0 ? 0x90 : 0x80; /* F0 80..8F: overlong */
                hi = b == 0xF4 ? 0x8F : 0xBF; /* F4 90..: above U+10FFFF */
            } else {
                goto bad; /* 80..BF stray, C0/C1 overlong, F5..FF never */
            }
        } else {
            b = p[i++];
            if (b < lo || b > hi)
                goto bad;
            need--;
            lo = 0x80, hi = 0xBF;
        }
    }
    s->need = (uint8_t)need, s->lo = (uint8_t)lo, s->hi = (uint8_t)hi;
    return 0;
bad:
    s->need = (uint8_t)need, s->lo = (uint8_t)lo, s->hi = (uint8_t)hi;
    return -1;
}

int utf8_validate(const uint8_t *p, size_t len)
{
    utf8_state s;
    utf8_reset(&s);
    if (utf8_feed(&s, p, len) < 0 || !utf8_complete(&s))
        return -1;
    return 0;
}

/* ---- Parser ----------------------------------------------------------- */

enum {
    ST_HEADER = 0, /* collecting a frame header into hdr (or reading it in place) */
    ST_DATA,       /* payload of a text or continuation frame */
    ST_CONTROL,    /* payload of a control frame, buffered in ctl */
};

/* Errors, kept as an index in p->failed so that a dead parser can repeat the
 * same code and reason without another field in ws_parser. */
enum {
    E_NONE = 0,
    E_UNMASKED,
    E_RSV,
    E_OPCODE,
    E_LEN64,
    E_CTL_LONG,
    E_CTL_FRAG,
    E_CONT,
    E_NEWMSG,
    E_BINARY,
    E_TOO_BIG,
    E_UTF8,
    E_CLOSE_LEN,
    E_CLOSE_CODE,
    E_CLOSE_UTF8,
    E_RSV1_CONT,
    E_RSV1_CTL,
};

static const struct {
    uint16_t code;
    const char *reason;
} errors[] = {
    [E_NONE] = {0, ""},
    [E_UNMASKED] = {WS_CLOSE_PROTOCOL, "unmasked client frame"},
    [E_RSV] = {WS_CLOSE_PROTOCOL, "reserved bits set"},
    [E_OPCODE] = {WS_CLOSE_PROTOCOL, "unknown opcode"},
    [E_LEN64] = {WS_CLOSE_PROTOCOL, "64-bit length with the top bit set"},
    [E_CTL_LONG] = {WS_CLOSE_PROTOCOL, "control frame over 125 bytes"},
    [E_CTL_FRAG] = {WS_CLOSE_PROTOCOL, "fragmented control frame"},
    [E_CONT] = {WS_CLOSE_PROTOCOL, "continuation without a message in progress"},
    [E_NEWMSG] = {WS_CLOSE_PROTOCOL, "new message while a fragmented one is in progress"},
    [E_BINARY] = {WS_CLOSE_UNSUPPORTED, "binary messages are not supported"},
    [E_TOO_BIG] = {WS_CLOSE_TOO_BIG, "message larger than the limit"},
    [E_UTF8] = {WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message"},
    [E_CLOSE_LEN] = {WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload"},
    [E_CLOSE_CODE] = {WS_CLOSE_PROTOCOL, "close code not allowed on the wire"},
    [E_CLOSE_UTF8] = {WS_CLOSE_INVALID_DATA, "close reason is not UTF-8"},
    [E_RSV1_CONT] = {WS_CLOSE_PROTOCOL, "RSV1 on a continuation frame"},
    [E_RSV1_CTL] = {WS_CLOSE_PROTOCOL, "RSV1 on a control frame"},
};

void ws_parser_init(ws_parser *p, uint64_t max_message)
{
    memset(p, 0, sizeof *p);
    p->max_message = max_message;
    p->state = ST_HEADER;
    utf8_reset(&p->utf8);
}

void ws_parser_deflate(ws_parser *p)
{
    p->deflate = 1;
}

/* Accepted from a peer: 1000-1003, 1007-1014 and 3000-4999.
 *
 * RFC 6455 7.4.1 defines 1000-1011; 1004 is reserved and 1005, 1006 and 1015
 * must never be sent on the wire. 1012 (service restart), 1013 (try again
 * later) and 1014 (bad gateway) were added to the IANA registry later; we
 * send 1013 ourselves, so we accept them from peers too. The Autobahn
 * TestSuite agrees: 7.7.x expects 1000-1003, 1007-1011, 3000, 3999, 4000 and
 * 4999 to be accepted, 7.9.x expects 0, 999, 1004, 1005, 1006, 1016, 1100,
 * 2000 and 2999 to fail with 1002, and neither tests 1012-1014. 1015-2999 are
 * unassigned or reserved for future RFCs; 3000-3999 belong to libraries and
 * 4000-4999 to applications; 5000 and above do not exist. */
int ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1014)
        return code != 1004 && code != 1005 && code != 1006;
    return code >= 3000 && code <= 4999;
}

/* XORs n bytes at d with the key, starting at key position pos (0..3). */
static void unmask(uint8_t *d, size_t n, const uint8_t mask[4], uint32_t pos)
{
    uint8_t k[8];
    for (unsigned i = 0; i < 8; i++)
        k[i] = mask[(pos + i) & 3];
    /* 8 is a multiple of the key period, so k also serves the tail. */
    uint64_t k64;
    memcpy(&k64, k, 8);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, d, 8);
        w ^= k64;
        memcpy(d, &w, 8);
        d += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; i++)
        d[i] ^= k[i];
}

/* First header byte: FIN, RSV, opcode. Checked as soon as it arrives.
 * RSV1 is permessage-deflate's, on a message's first frame only (RFC 7692
 * 6.1); no extension defines RSV2 or RSV3. */
static int check_byte0(const ws_parser *p, unsigned b0)
{
    unsigned rsv1 = b0 & WS_RSV1;
    if ((b0 & 0x30) || (rsv1 && !p->deflate))
        return E_RSV;
    switch (b0 & 0x0F) {
    case WS_OP_CONT:
        return !p->in_message ? E_CONT : rsv1 ? E_RSV1_CONT : E_NONE;
    case WS_OP_TEXT:
        return p->in_message ? E_NEWMSG : E_NONE;
    case WS_OP_BINARY:
        return p->in_message ? E_NEWMSG : E_BINARY;
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (rsv1)
            return E_RSV1_CTL;
        return (b0 & 0x80) ? E_NONE : E_CTL_FRAG;
    default:
        return E_OPCODE;
    }
}

/* Second header byte: MASK and the 7-bit length. */
static int check_byte1(unsigned b0, unsigned b1)
{
    if (!(b1 & 0x80))
        return E_UNMASKED;
    if ((b0 & 0x08) && (b1 & 0x7F) > WS_MAX_CONTROL)
        return E_CTL_LONG;
    return E_NONE;
}

/* Bytes of extended length after the first two header bytes. */
static unsigned ext_len(unsigned b1)
{
    unsigned l = b1 & 0x7F;
    return l == 126 ? 2 : l == 127 ? 8 : 0;
}

/* The limit on the wire bytes of the message that a data frame with first
 * byte b0 starts or continues: a compressed one is held to max_message once
 * inflated, by the caller. */
static uint64_t wire_limit(const ws_parser *p, unsigned b0)
{
    int z = (b0 & 0x0F) == WS_OP_CONT ? p->compressed : (b0 & WS_RSV1) != 0;
    return z ? ws_deflated_limit(p->max_message) : p->max_message;
}

/* Decodes the payload length from h (2 + ext_len bytes available) and checks
 * it against the message limit. Non-minimal encodings are accepted. */
static int check_length(const ws_parser *p, const uint8_t *h, uint64_t *out)
{
    unsigned l = h[1] & 0x7F;
    uint64_t len;
    if (l < 126) {
        len = l;
    } else if (l == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
    } else {
        if (h[2] & 0x80)
            return E_LEN64;
        len = 0;
        for (unsigned i = 2; i < 10; i++)
            len = len << 8 | h[i];
    }
    if (!(h[0] & 0x08)) {
        uint64_t so_far = (h[0] & 0x0F) == WS_OP_TEXT ? 0 : p->msg_len;
        uint64_t limit = wire_limit(p, h[0]);
        /* so_far <= limit always holds (one message, one limit), so this
         * cannot wrap. */
        if (len > limit - so_far)
            return E_TOO_BIG;
    }
    *out = len;
    return E_NONE;
}

/* A whole, checked header is at h; sets up reading the payload. */
static void start_frame(ws_parser *p, const uint8_t *h, unsigned hlen, uint64_t len)
{
    unsigned op = h[0] & 0x0F;
    memcpy(p->mask, h + hlen - 4, 4);
    p->opcode = (uint8_t)op;
    p->fin = (uint8_t)(h[0] >> 7);
    p->remaining = len;
    p->mask_pos = 0;
    p->hdr_len = 0;
    if (op & 0x08) {
        p->ctl_len = 0;
        p->state = ST_CONTROL;
        return;
    }
    if (op == WS_OP_TEXT) {
        p->msg_len = 0;
        p->first_pending = 1;
        p->compressed = (h[0] & WS_RSV1) != 0;
        utf8_reset(&p->utf8);
    }
    p->msg_len += len;
    p->in_message = !p->fin;
    p->state = ST_DATA;
}

static size_t fail(ws_parser *p, ws_event *ev, int err, size_t len)
{
    p->failed = (uint8_t)err;
    ev->type = WS_EV_ERROR;
    ev->code = errors[err].code;
    ev->reason = errors[err].reason;
    return len;
}

/* The control frame in ctl is complete: fills ev, or returns an error. */
static int finish_control(ws_parser *p, ws_event *ev)
{
    p->state = ST_HEADER;
    if (p->opcode != WS_OP_CLOSE) {
        ev->type = p->opcode == WS_OP_PING ? WS_EV_PING : WS_EV_PONG;
        ev->data = p->ctl;
        ev->len = p->ctl_len;
        return E_NONE;
    }
    ev->type = WS_EV_CLOSE;
    ev->data = p->ctl + (p->ctl_len >= 2 ? 2 : 0);
    if (p->ctl_len == 0) {
        ev->code = WS_CLOSE_NO_STATUS;
        return E_NONE;
    }
    if (p->ctl_len == 1)
        return E_CLOSE_LEN;
    unsigned code = (unsigned)p->ctl[0] << 8 | p->ctl[1];
    if (!ws_close_code_valid(code))
        return E_CLOSE_CODE;
    if (utf8_validate(p->ctl + 2, p->ctl_len - 2u) < 0)
        return E_CLOSE_UTF8;
    ev->code = (uint16_t)code;
    ev->len = p->ctl_len - 2u;
    return E_NONE;
}

/* Returns E_NONE and sets *done when a whole header is available, reading it
 * in place when it is all in buf (the common case) and collecting it in hdr
 * otherwise. Each byte is checked as soon as it arrives. */
static int read_header(ws_parser *p, const uint8_t *buf, size_t len, size_t *i, int *done)
{
    int err;
    uint64_t plen;
    size_t at = *i, avail = len - at;

    *done = 0;
    if (p->hdr_len == 0 && avail >= 2) {
        const uint8_t *h = buf + at;
        if ((err = check_byte0(p, h[0])) || (err = check_byte1(h[0], h[1])))
            return err;
        unsigned ext = ext_len(h[1]), hlen = 2 + ext + 4;
        if (avail >= hlen) {
            if ((err = check_length(p, h, &plen)))
                return err;
            start_frame(p, h, hlen, plen);
            *i = at + hlen;
            *done = 1;
            return E_NONE;
        }
        /* Split header: keep what is there, check the length if whole. */
        memcpy(p->hdr, h, avail);
        p->hdr_len = (uint8_t)avail;
        *i = len;
        if (avail >= 2 + ext && (err = check_length(p, p->hdr, &plen)))
            return err;
        return E_NONE;
    }

    while (at < len) {
        uint8_t b = buf[at++];
        unsigned n = p->hdr_len;
        p->hdr[n++] = b;
        p->hdr_len = (uint8_t)n;
        if (n == 1) {
            if ((err = check_byte0(p, b)))
                return err;
            continue;
        }
        if (n == 2 && (err = check_byte1(p->hdr[0], b)))
            return err;
        unsigned ext = ext_len(p->hdr[1]), hlen = 2 + ext + 4;
        if (n == 2 + ext && (err = check_length(p, p->hdr, &plen)))
            return err;
        if (n == hlen) {
            check_length(p, p->hdr, &plen); /* passed once: just decode */
            start_frame(p, p->hdr, hlen, plen);
            *i = at;
            *done = 1;
            return E_NONE;
        }
    }
    *i = at;
    return E_NONE;
}

size_t ws_parse(ws_parser *p, uint8_t *buf, size_t len, ws_event *ev)
{
    size_t i = 0;
    int err;

    memset(ev, 0, sizeof *ev);
    if (p->failed)
        return fail(p, ev, p->failed, len);

    for (;;) {
        if (p->state == ST_HEADER) {
            int done;
            if (i == len)
                return i;
            if ((err = read_header(p, buf, len, &i, &done)))
                return fail(p, ev, err, len);
            if (!done)
                return i; /* all input consumed inside the header */
            if (p->remaining > 0)
                continue;
            /* Empty payload: the frame is complete right now. */
            if (p->state == ST_CONTROL) {
                if ((err = finish_control(p, ev)))
                    return fail(p, ev, err, len);
                return i;
            }
            p->state = ST_HEADER;
            if (!p->fin)
                continue; /* an empty fragment says nothing */
            if (!utf8_complete(&p->utf8)) /* never fed when compressed */
                return fail(p, ev, E_UTF8, len);
            ev->type = WS_EV_DATA;
            ev->data = buf + i;
            ev->first = p->first_pending;
            ev->fin = 1;
            ev->compressed = p->compressed;
            p->first_pending = 0;
            return i;
        }

        if (i == len)
            return i;
        size_t n = len - i;
        if (n > p->remaining)
            n = (size_t)p->remaining;
        uint8_t *d = buf + i;

        if (p->state == ST_CONTROL) {
            uint8_t *c = p->ctl + p->ctl_len;
            memcpy(c, d, n);
            unmask(c, n, p->mask, p->mask_pos);
            p->mask_pos = (uint32_t)((p->mask_pos + n) & 3);
            p->ctl_len = (uint8_t)(p->ctl_len + n);
            p->remaining -= n;
            i += n;
            if (p->remaining > 0)
                return i;
            if ((err = finish_control(p, ev)))
                return fail(p, ev, err, len);
            return i;
        }

        /* ST_DATA: unmask in place and hand out what is there. Deflate
         * bytes are not text: the caller checks them once inflated. */
        unmask(d, n, p->mask, p->mask_pos);
        p->mask_pos = (uint32_t)((p->mask_pos + n) & 3);
        if (!p->compressed && utf8_feed(&p->utf8, d, n) < 0)
            return fail(p, ev, E_UTF8, len);
        p->remaining -= n;
        i += n;
        int last = p->remaining == 0;
        if (last) {
            p->state = ST_HEADER;
            if (p->fin && !utf8_complete(&p->utf8))
                return fail(p, ev, E_UTF8, len);
        }
        ev->type = WS_EV_DATA;
        ev->data = d;
        ev->len = n;
        ev->first = p->first_pending;
        ev->fin = last && p->fin;
        ev->compressed = p->compressed;
        p->first_pending = 0;
        return i;
    }
}

/* ---- Encoder ---------------------------------------------------------- */

size_t ws_header_size(uint64_t len)
{
    return len < 126 ? 2 : len <= 0xFFFF ? 4 : 10;
}

size_t ws_write_header(uint8_t *out, unsigned opcode, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | (opcode & (WS_RSV1 | 0x0F)));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (unsigned i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

/* A code of 0 or 1005 ("no status") writes a close frame with an empty
 * payload, which is how a close without a code is echoed (1005 must never
 * appear on the wire). The reason is cut to fit 125 bytes on a character
 * boundary, so a valid UTF-8 reason stays valid. */
size_t ws_write_close(uint8_t *out, unsigned code, const char *reason)
{
    if (code == 0 || code == WS_CLOSE_NO_STATUS) {
        out[0] = 0x80 | WS_OP_CLOSE;
        out[1] = 0;
        return 2;
    }
    size_t rlen = reason ? strlen(reason) : 0;
    if (rlen > WS_MAX_CONTROL - 2) {
        rlen = WS_MAX_CONTROL - 2;
        while (rlen > 0 && ((uint8_t)reason[rlen] & 0xC0) == 0x80)
            rlen--;
    }
    size_t h = ws_write_header(out, WS_OP_CLOSE, 2 + rlen);
    out[h] = (uint8_t)(code >> 8);
    out[h + 1] = (uint8_t)code;
    if (rlen)
        memcpy(out + h + 2, reason, rlen);
    return h + 2 + rlen;
}
