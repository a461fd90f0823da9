/* libFuzzer target for the frame parser and encoder (ws.h).
 *
 * Input: byte 0 picks max_message (bits 0-6) and whether permessage-deflate
 * was negotiated (bit 7), byte 1 the split pattern, the rest is the byte
 * stream a client sent. The stream is parsed twice, in one piece and in
 * chunks, and both runs must tell the same story: the same completed
 * messages, control frames and error, whatever the split. Every invariant of
 * the contract in ws.h is checked along the way; a violation traps.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"
#include "fuzz.h"

static const uint64_t limits[] = {
    0, 1, 2, 3, 7, 125, 126, 127, 65535, 65536, 65537, 1u << 20, 64u << 20, UINT64_MAX,
};

/* A digest of what a run produced that does not depend on how the input was
 * split: FNV-1a over a record per completed message, control frame and
 * error. DATA chunks are accumulated and recorded only when fin arrives. */
typedef struct digest {
    uint64_t h;
    unsigned records;
} digest;

static void mix(digest *d, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        d->h ^= b[i];
        d->h *= 0x100000001b3ULL;
    }
}

static void record(digest *d, unsigned type, unsigned code, const uint8_t *p, size_t n)
{
    uint64_t len = n;
    mix(d, &type, sizeof type);
    mix(d, &code, sizeof code);
    mix(d, &len, sizeof len);
    if (n)
        mix(d, p, n);
    d->records++;
}

/* Chunk sizes for the split run. */
typedef struct splitter {
    unsigned mode;
    unsigned fixed;
    uint32_t x;
} splitter;

static size_t next_chunk(splitter *s)
{
    switch (s->mode) {
    case 0:
        return 1;
    case 1:
        return s->fixed;
    default:
        s->x ^= s->x << 13;
        s->x ^= s->x >> 17;
        s->x ^= s->x << 5;
        return s->mode == 2 ? 1 + s->x % 16 : 1 + s->x % 300;
    }
}

typedef struct run {
    digest d;
    uint8_t *msg; /* payload of the text message in progress */
    size_t msg_len;
    int in_msg;
    int compressed; /* the message in progress */
    int failed;
    unsigned err_code;
} run;

/* Checks one event returned for buf[0..len) that consumed n bytes. */
static void check_event(run *r, const ws_parser *p, const ws_event *ev, const uint8_t *buf,
                        size_t len, size_t n)
{
    CHECK(n <= len);
    switch (ev->type) {
    case WS_EV_NONE:
        CHECK(n == len); /* NONE means: all input consumed */
        break;
    case WS_EV_DATA:
        CHECK(n > 0);
        CHECK(ev->data >= buf && ev->len <= len && ev->data + ev->len <= buf + len);
        CHECK(ev->first == (r->in_msg == 0));
        /* Compressed: only where negotiated, the same for every chunk of a
         * message, held to the wire limit and never checked as text. */
        CHECK(!ev->compressed || p->deflate);
        if (ev->first)
            r->compressed = ev->compressed;
        CHECK(ev->compressed == r->compressed);
        memcpy(r->msg + r->msg_len, ev->data, ev->len);
        r->msg_len += ev->len;
        r->in_msg = 1;
        CHECK(r->msg_len <= (ev->compressed ? ws_deflated_limit(p->max_message) : p->max_message));
        if (ev->fin) {
            if (!ev->compressed)
                CHECK(utf8_validate(r->msg, r->msg_len) == 0);
            record(&r->d, WS_EV_DATA, ev->compressed, r->msg, r->msg_len);
            r->msg_len = 0;
            r->in_msg = 0;
        }
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        CHECK(n > 0);
        CHECK(ev->len <= WS_MAX_CONTROL);
        record(&r->d, ev->type, 0, ev->data, ev->len);
        break;
    case WS_EV_CLOSE:
        CHECK(n > 0);
        CHECK(ev->len <= WS_MAX_CONTROL - 2);
        if (ev->code == WS_CLOSE_NO_STATUS)
            CHECK(ev->len == 0);
        else
            CHECK(ws_close_code_valid(ev->code));
        CHECK(utf8_validate(ev->data, ev->len) == 0);
        record(&r->d, WS_EV_CLOSE, ev->code, ev->data, ev->len);
        break;
    case WS_EV_ERROR:
        CHECK(ev->code == WS_CLOSE_PROTOCOL || ev->code == WS_CLOSE_UNSUPPORTED ||
              ev->code == WS_CLOSE_INVALID_DATA || ev->code == WS_CLOSE_TOO_BIG);
        CHECK(ev->reason && ev->reason[0]);
        r->failed = 1;
        r->err_code = ev->code;
        record(&r->d, WS_EV_ERROR, ev->code, (const uint8_t *)ev->reason, strlen(ev->reason));
        break;
    default:
        CHECK(0);
    }
}

/* After an ERROR the parser is dead: any input, even none, gets ERROR with
 * the same code. */
static void check_dead(ws_parser *p, uint8_t *buf, size_t len, unsigned code)
{
    ws_event ev;
    size_t n = ws_parse(p, buf, len, &ev);
    CHECK(n <= len);
    CHECK(ev.type == WS_EV_ERROR && ev.code == code);
    n = ws_parse(p, buf, 0, &ev);
    CHECK(n == 0);
    CHECK(ev.type == WS_EV_ERROR && ev.code == code);
}

/* Parses buf[0..len) as it arrives in chunks (one chunk of len when sp is
 * NULL), feeding the parser what has arrived and is not consumed yet. */
static void parse_all(run *r, uint64_t max_message, int deflate, uint8_t *buf, size_t len,
                      splitter *sp)
{
    ws_parser p;
    ws_event ev;
    size_t pos = 0, arrived = 0;

    ws_parser_init(&p, max_message);
    if (deflate)
        ws_parser_deflate(&p);
    while (arrived < len && !r->failed) {
        size_t c = sp ? next_chunk(sp) : len;
        arrived = c > len - arrived ? len : arrived + c;
        while (pos < arrived && !r->failed) {
            size_t n = ws_parse(&p, buf + pos, arrived - pos, &ev);
            check_event(r, &p, &ev, buf + pos, arrived - pos, n);
            pos += n;
        }
    }
    if (r->failed)
        check_dead(&p, buf + pos, len - pos, r->err_code);
    else
        CHECK(pos == len);
}

/* ---- Encoder ---------------------------------------------------------- */

static uint64_t load64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* Turns a server frame into the client frame a parser accepts: MASK bit and
 * a key after the header, payload masked. Returns the new size. */
static size_t mask_frame(uint8_t *out, const uint8_t *in, size_t hlen, size_t plen,
                         const uint8_t key[4])
{
    memcpy(out, in, hlen);
    out[1] |= 0x80;
    memcpy(out + hlen, key, 4);
    for (size_t i = 0; i < plen; i++)
        out[hlen + 4 + i] = in[hlen + i] ^ key[i & 3];
    return hlen + 4 + plen;
}

static void fuzz_encoder(const uint8_t *in, size_t size)
{
    uint8_t hdr[WS_MAX_HEADER + 4];
    uint8_t fin[16];
    uint8_t raw[2 + WS_MAX_CONTROL + 8];
    uint8_t wire[2 + WS_MAX_CONTROL + 16];
    char reason[256];
    static const uint8_t key[4] = {0x12, 0x34, 0x56, 0x78};

    if (size < 12)
        return;
    memset(fin, 0, sizeof fin);
    memcpy(fin, in, 12);

    /* Header: size agrees with ws_header_size and the length decodes back. */
    unsigned op = fin[0] & 0x0F;
    uint64_t len = load64(fin + 1);
    if (fin[9] & 1)
        len >>= fin[10] & 63; /* reach the small sizes and both boundaries */
    memset(hdr, 0xEE, sizeof hdr);
    unsigned rsv1 = fin[9] & 2 ? WS_RSV1 : 0;
    size_t h = ws_write_header(hdr, rsv1 | op, len);
    CHECK(h == ws_header_size(len));
    CHECK(h == 2 || h == 4 || h == 10);
    CHECK(h == ws_frame_header_size(hdr));
    CHECK(hdr[h] == 0xEE); /* nothing written behind the header */
    CHECK(hdr[0] == (0x80 | rsv1 | op));
    CHECK(!(hdr[1] & 0x80));
    uint64_t back;
    if (h == 2) {
        back = hdr[1];
        CHECK(back < 126);
    } else if (h == 4) {
        back = (uint64_t)hdr[2] << 8 | hdr[3];
        CHECK(hdr[1] == 126 && back >= 126);
    } else {
        back = load64(hdr + 2);
        CHECK(hdr[1] == 127 && back > 0xFFFF);
    }
    CHECK(back == len);

    /* A text frame of a small payload, masked, parses back to it. */
    size_t plen = (size_t)(len % (sizeof raw - 10));
    if (size >= 12 + plen && utf8_validate(in + 12, plen) == 0) {
        h = ws_write_header(raw, WS_OP_TEXT, plen);
        memcpy(raw + h, in + 12, plen);
        size_t wlen = mask_frame(wire, raw, h, plen, key);
        ws_parser p;
        ws_event ev;
        ws_parser_init(&p, plen);
        size_t n = ws_parse(&p, wire, wlen, &ev);
        CHECK(n == wlen && ev.type == WS_EV_DATA && ev.first && ev.fin);
        CHECK(ev.len == plen && memcmp(ev.data, in + 12, plen) == 0);
    }

    /* Close: the frame's size is its header plus code plus reason, the
     * reason is cut on a character boundary, and a valid code parses back. */
    unsigned code = (unsigned)fin[9] << 8 | fin[10];
    if (fin[11] & 1)
        code = 1000 + fin[11] % 32;
    size_t rlen = size - 12 < sizeof reason - 1 ? size - 12 : sizeof reason - 1;
    memcpy(reason, in + 12, rlen);
    reason[rlen] = '\0';
    rlen = strlen(reason);
    memset(raw, 0xEE, sizeof raw);
    size_t clen = ws_write_close(raw, code, reason);
    CHECK(clen >= 2 && clen <= 2 + WS_MAX_CONTROL);
    CHECK(raw[0] == (0x80 | WS_OP_CLOSE) && raw[1] == clen - 2);
    CHECK(clen == sizeof raw || raw[clen] == 0xEE);
    if (code == 0 || code == WS_CLOSE_NO_STATUS) {
        CHECK(clen == 2);
    } else {
        size_t got = clen - 4;
        CHECK(clen >= 4 && (raw[2] << 8 | raw[3]) == (int)(code & 0xFFFF));
        CHECK(got <= rlen && memcmp(raw + 4, reason, got) == 0);
        int valid = utf8_validate((const uint8_t *)reason, rlen) == 0;
        if (got < rlen) { /* cut only to fit, and never inside a character */
            CHECK(rlen > WS_MAX_CONTROL - 2);
            CHECK(got == 0 || ((uint8_t)reason[got] & 0xC0) != 0x80);
            if (valid)
                CHECK(got >= WS_MAX_CONTROL - 2 - 3);
        }
        if (valid)
            CHECK(utf8_validate(raw + 4, got) == 0);
    }
    size_t wlen = mask_frame(wire, raw, 2, clen - 2, key);
    ws_parser p;
    ws_event ev;
    ws_parser_init(&p, 0);
    size_t n = ws_parse(&p, wire, wlen, &ev);
    CHECK(n == wlen);
    if (code == 0 || code == WS_CLOSE_NO_STATUS) {
        CHECK(ev.type == WS_EV_CLOSE && ev.code == WS_CLOSE_NO_STATUS && ev.len == 0);
    } else if (ws_close_code_valid(code) && utf8_validate(raw + 4, clen - 4) == 0) {
        CHECK(ev.type == WS_EV_CLOSE && ev.code == code && ev.len == clen - 4);
        CHECK(memcmp(ev.data, raw + 4, ev.len) == 0);
    } else {
        CHECK(ev.type == WS_EV_ERROR);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint64_t max_message = limits[(data[0] & 0x7F) % (sizeof limits / sizeof limits[0])];
    int deflate = data[0] >> 7;
    splitter sp = {.mode = data[1] & 3, .fixed = 1 + (data[1] >> 2), .x = 0x9E3779B9u ^ data[1]};
    const uint8_t *in = data + 2;
    size_t len = size - 2;

    /* The parser unmasks in place: each run gets its own copy. */
    uint8_t *a = malloc(len + 1), *b = malloc(len + 1);
    uint8_t *ma = malloc(len + 1), *mb = malloc(len + 1);
    CHECK(a && b && ma && mb);
    memcpy(a, in, len);
    memcpy(b, in, len);

    run whole = {.d = {0xcbf29ce484222325ULL, 0}, .msg = ma};
    run split = {.d = {0xcbf29ce484222325ULL, 0}, .msg = mb};
    parse_all(&whole, max_message, deflate, a, len, NULL);
    parse_all(&split, max_message, deflate, b, len, &sp);
    CHECK(whole.d.records == split.d.records && whole.d.h == split.d.h);
    CHECK(whole.failed == split.failed && whole.err_code == split.err_code);
    /* Without an error both runs end with the same message in progress. */
    if (!whole.failed)
        CHECK(whole.msg_len == split.msg_len && memcmp(ma, mb, whole.msg_len) == 0);

    free(a);
    free(b);
    free(ma);
    free(mb);

    fuzz_encoder(in, len);
    return 0;
}
