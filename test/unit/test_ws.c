/* Unit tests for the RFC 6455 frame parser and encoder in ws.c.
 *
 * Each case is a byte script (client frames, masked by the helpers below)
 * and the transcript of events it must produce. Every script is fed whole,
 * one byte at a time, and split into two calls at every byte boundary (a
 * sample of them for long scripts); all feeds must give the same transcript.
 * Error scripts also say at which input byte the error must be reported. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

#define FIN 0x80u
#define NO_ERR_AT (-1L)
#define BIG ((uint64_t)1 << 40) /* a max_message that never bites */

/* run() makes parsers that negotiated permessage-deflate while this is set. */
static int with_deflate;

/* ---- growable byte buffer ------------------------------------------- */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void put_byte(struct buf *b, unsigned x)
{
    uint8_t c = (uint8_t)x;
    put(b, &c, 1);
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* ---- frame builders ----------------------------------------------------- */

enum { LEN_MIN = 0, LEN_16 = 16, LEN_64 = 64 };

/* Appends a client frame: first byte b0 as given (FIN, RSV, opcode), the
 * length in the given form, then the key and the payload masked with it
 * (or no key and the payload in clear when key is NULL). */
static void put_frame_key(struct buf *b, unsigned b0, int len_form, const uint8_t *key,
                          const void *payload, size_t len)
{
    unsigned m = key ? 0x80 : 0;
    put_byte(b, b0);
    if (len_form == LEN_MIN && len < 126) {
        put_byte(b, m | (unsigned)len);
    } else if (len_form != LEN_64 && len <= 0xFFFF) {
        put_byte(b, m | 126);
        put_byte(b, (unsigned)(len >> 8));
        put_byte(b, (unsigned)len);
    } else {
        put_byte(b, m | 127);
        for (int i = 7; i >= 0; i--)
            put_byte(b, (unsigned)((uint64_t)len >> (8 * i)));
    }
    if (key)
        put(b, key, 4);
    const uint8_t *s = payload;
    for (size_t i = 0; i < len; i++)
        put_byte(b, key ? s[i] ^ key[i & 3] : s[i]);
}

/* A different key for every frame, so masking bugs cannot cancel out. */
static uint8_t next_key[4] = {0x37, 0xFA, 0x21, 0x3D};

static void put_frame(struct buf *b, unsigned b0, const void *payload, size_t len)
{
    put_frame_key(b, b0, LEN_MIN, next_key, payload, len);
    for (int i = 0; i < 4; i++)
        next_key[i] = (uint8_t)(next_key[i] * 5 + 17 + i);
}

static void text(struct buf *b, int fin, const char *s)
{
    put_frame(b, (fin ? FIN : 0) | WS_OP_TEXT, s, strlen(s));
}

static void cont(struct buf *b, int fin, const char *s)
{
    put_frame(b, (fin ? FIN : 0) | WS_OP_CONT, s, strlen(s));
}

static void ping(struct buf *b, const char *s) { put_frame(b, FIN | WS_OP_PING, s, strlen(s)); }

static void close_frame(struct buf *b, unsigned code, const char *reason, size_t rlen)
{
    uint8_t pl[2 + 200];
    pl[0] = (uint8_t)(code >> 8);
    pl[1] = (uint8_t)code;
    memcpy(pl + 2, reason, rlen);
    put_frame(b, FIN | WS_OP_CLOSE, pl, 2 + rlen);
}

/* ---- transcripts ---------------------------------------------------------- */

/* A transcript is the text form of an event sequence: DATA chunks of a
 * message are joined between <T> and </T> (<Z> and </Z> for a compressed
 * one), so any chunking compares equal. */
static void exp_text(struct buf *e, const void *s, size_t len)
{
    puts_(e, "<T>");
    put(e, s, len);
    puts_(e, "</T>");
}

static void exp_z(struct buf *e, const void *s, size_t len)
{
    puts_(e, "<Z>");
    put(e, s, len);
    puts_(e, "</Z>");
}

static void exp_ctl(struct buf *e, const char *tag, const void *s, size_t len)
{
    char t[32];
    snprintf(t, sizeof t, "<%s>", tag);
    puts_(e, t);
    put(e, s, len);
    snprintf(t, sizeof t, "</%s>", tag);
    puts_(e, t);
}

static void exp_close(struct buf *e, unsigned code, const void *reason, size_t len)
{
    char t[32];
    snprintf(t, sizeof t, "<CLOSE %u>", code);
    puts_(e, t);
    put(e, reason, len);
    puts_(e, "</CLOSE>");
}

static void exp_err(struct buf *e, unsigned code)
{
    char t[32];
    snprintf(t, sizeof t, "<ERR %u>", code);
    puts_(e, t);
}

struct rec {
    struct buf tr;
    int in_msg;
    int compressed;   /* the current message's first chunk said so */
    size_t msg_start; /* where the current message starts in tr */
    int failed;
    uint16_t err_code;
    size_t data_events;
};

static void rec_event(struct rec *r, const ws_event *ev)
{
    switch (ev->type) {
    case WS_EV_NONE:
        break;
    case WS_EV_DATA:
        if (ev->first != !r->in_msg)
            fail_msg("DATA first=%d while in_msg=%d", ev->first, r->in_msg);
        if (ev->len == 0 && !ev->fin)
            fail_msg("empty DATA chunk without fin");
        if (ev->first) {
            r->msg_start = r->tr.len;
            r->compressed = ev->compressed;
            puts_(&r->tr, ev->compressed ? "<Z>" : "<T>");
        } else if (ev->compressed != r->compressed) {
            fail_msg("DATA compressed=%d inside a message that began with %d", ev->compressed,
                     r->compressed);
        }
        put(&r->tr, ev->data, ev->len);
        if (ev->fin)
            puts_(&r->tr, ev->compressed ? "</Z>" : "</T>");
        r->in_msg = !ev->fin;
        r->data_events++;
        break;
    case WS_EV_PING:
        exp_ctl(&r->tr, "PING", ev->data, ev->len);
        break;
    case WS_EV_PONG:
        exp_ctl(&r->tr, "PONG", ev->data, ev->len);
        break;
    case WS_EV_CLOSE:
        exp_close(&r->tr, ev->code, ev->data, ev->len);
        break;
    case WS_EV_ERROR:
        /* A message cut by an error has delivered more or less of itself
         * depending on the chunking: keep only what is independent of it. */
        if (r->in_msg)
            r->tr.len = r->msg_start;
        assert_non_null(ev->reason);
        assert_true(ev->reason[0] != '\0');
        exp_err(&r->tr, ev->code);
        r->failed = 1;
        r->err_code = ev->code;
        break;
    default:
        fail_msg("unknown event type %d", (int)ev->type);
    }
}

/* Feeds in[0..len) to a new parser in chunks ending at cuts[], each chunk in
 * its own allocation (so ASan catches reads past len), calling ws_parse as
 * its contract says. Returns the start offset of the chunk that produced the
 * ERROR, or -1. */
static long run(const uint8_t *in, size_t len, uint64_t max, const size_t *cuts, size_t ncuts,
                struct rec *r)
{
    ws_parser p;
    ws_parser_init(&p, max);
    if (with_deflate)
        ws_parser_deflate(&p);
    memset(r, 0, sizeof *r);
    size_t start = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t clen = end - start;
        uint8_t *chunk = malloc(clen ? clen : 1);
        assert_non_null(chunk);
        memcpy(chunk, in + start, clen);
        size_t off = 0;
        for (int guard = 0;; guard++) {
            ws_event ev;
            assert_true(guard < 1000000);
            size_t n = ws_parse(&p, chunk + off, clen - off, &ev);
            assert_true(n <= clen - off);
            if (ev.type == WS_EV_DATA && ev.len)
                assert_true(ev.data >= chunk + off && ev.data + ev.len <= chunk + off + n);
            off += n;
            rec_event(r, &ev);
            if (ev.type == WS_EV_ERROR) {
                /* Dead for good, with the same code, whatever comes next. */
                uint8_t more[3] = {0x81, 0x80, 0};
                ws_event ev2;
                ws_parse(&p, more, sizeof more, &ev2);
                assert_int_equal(ev2.type, WS_EV_ERROR);
                assert_int_equal(ev2.code, ev.code);
                ws_parse(&p, more, 0, &ev2);
                assert_int_equal(ev2.type, WS_EV_ERROR);
                assert_int_equal(ev2.code, ev.code);
                free(chunk);
                return (long)start;
            }
            if (ev.type == WS_EV_NONE) {
                assert_int_equal(off, clen);
                break;
            }
        }
        free(chunk);
        start = end;
    }
    return -1;
}

static void print_escaped(const char *what, const struct buf *b)
{
    fprintf(stderr, "%s (%zu bytes): ", what, b->len);
    for (size_t i = 0; i < b->len && i < 300; i++) {
        uint8_t c = b->p[i];
        if (c >= 0x20 && c < 0x7F)
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputc('\n', stderr);
}

static void expect_same(const char *name, const char *mode, size_t cut, const struct rec *r,
                        const struct buf *exp)
{
    if (r->tr.len == exp->len && (exp->len == 0 || memcmp(r->tr.p, exp->p, exp->len) == 0))
        return;
    fprintf(stderr, "%s: %s (cut %zu):\n", name, mode, cut);
    print_escaped("  got ", &r->tr);
    print_escaped("  want", exp);
    fail_msg("%s: transcript mismatch", name);
}

/* Runs one script in every feeding mode. err_at: the input offset of the
 * byte that must raise the error, or NO_ERR_AT. */
static void check(const char *name, const struct buf *in, uint64_t max, const struct buf *exp,
                  long err_at)
{
    struct rec r;
    long e;

    run(in->p, in->len, max, NULL, 0, &r);
    expect_same(name, "whole", 0, &r, exp);
    buf_free(&r.tr);

    size_t *cuts = malloc((in->len + 1) * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 1; i < in->len; i++)
        cuts[i - 1] = i;
    e = run(in->p, in->len, max, cuts, in->len ? in->len - 1 : 0, &r);
    expect_same(name, "bytewise", 0, &r, exp);
    if (err_at != NO_ERR_AT && e != err_at)
        fail_msg("%s: error raised at byte %ld, want %ld", name, e, err_at);
    buf_free(&r.tr);
    free(cuts);

    for (size_t cut = 0; cut <= in->len; cut++) {
        /* long scripts: every boundary near the ends, a sample elsewhere */
        if (in->len > 4096 && cut > 64 && cut + 64 < in->len && cut % 997 != 0)
            continue;
        run(in->p, in->len, max, &cut, 1, &r);
        expect_same(name, "split", cut, &r, exp);
        buf_free(&r.tr);
    }
}

/* ---- valid scripts ------------------------------------------------------ */

static void check_text_of_size(size_t n, int len_form)
{
    struct buf in = {0}, exp = {0};
    uint8_t *s = malloc(n ? n : 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        s[i] = (uint8_t)('a' + i % 26);
    /* a few 2-byte characters, at odd offsets so some straddle the cuts */
    for (size_t i = 5; i + 1 < n; i += 1001) {
        s[i] = 0xC3;
        s[i + 1] = 0xA9;
    }
    put_frame_key(&in, FIN | WS_OP_TEXT, len_form, next_key, s, n);
    exp_text(&exp, s, n);
    char name[64];
    snprintf(name, sizeof name, "text of %zu bytes (form %d)", n, len_form);
    check(name, &in, BIG, &exp, NO_ERR_AT);
    free(s);
    buf_free(&in);
    buf_free(&exp);
}

static void test_lengths(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        check_text_of_size(sizes[i], LEN_MIN);
    /* the 7-, 16- and 64-bit header forms are what they should be */
    struct buf b = {0};
    put_frame_key(&b, FIN | WS_OP_TEXT, LEN_MIN, next_key, "", 0);
    assert_int_equal(b.len, 6);
    b.len = 0;
    uint8_t big[65536] = {0};
    put_frame_key(&b, FIN | WS_OP_TEXT, LEN_MIN, next_key, big, 65535);
    assert_int_equal(b.p[1], 0x80 | 126);
    b.len = 0;
    put_frame_key(&b, FIN | WS_OP_TEXT, LEN_MIN, next_key, big, 65536);
    assert_int_equal(b.p[1], 0x80 | 127);
    buf_free(&b);
}

/* RFC 6455 asks for minimal lengths, but we accept the longer forms. */
static void test_non_minimal_lengths(void **state)
{
    (void)state;
    check_text_of_size(5, LEN_16);
    check_text_of_size(5, LEN_64);
    check_text_of_size(300, LEN_64);
    check_text_of_size(0, LEN_64);
}

static void test_empty_text(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    text(&in, 1, "");
    exp_text(&exp, "", 0);
    check("empty text", &in, BIG, &exp, NO_ERR_AT);

    /* exactly one DATA event, first and fin, length 0 */
    ws_parser p;
    ws_event ev;
    ws_parser_init(&p, 100);
    size_t n = ws_parse(&p, in.p, in.len, &ev);
    assert_int_equal(n, in.len);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_int_equal(ev.len, 0);
    assert_true(ev.first && ev.fin);
    n = ws_parse(&p, in.p + in.len, 0, &ev);
    assert_int_equal(n, 0);
    assert_int_equal(ev.type, WS_EV_NONE);
    buf_free(&in);
    buf_free(&exp);

    /* empty message made of empty fragments */
    text(&in, 0, "");
    cont(&in, 0, "");
    cont(&in, 1, "");
    exp_text(&exp, "", 0);
    check("empty fragments", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    /* an empty final fragment ends a non-empty message: first = 0 */
    text(&in, 0, "ab");
    cont(&in, 0, "");
    ping(&in, "p");
    cont(&in, 1, "");
    puts_(&exp, "<T>ab");
    exp_ctl(&exp, "PING", "p", 1);
    puts_(&exp, "</T>");
    check("empty final fragment", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_fragmented_with_controls(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    text(&in, 0, "Hel");
    ping(&in, "are you there?");
    cont(&in, 0, "");
    put_frame(&in, FIN | WS_OP_PONG, "", 0);
    cont(&in, 0, "lo, w\xC3");
    ping(&in, "");
    cont(&in, 1, "\xA9rld");
    text(&in, 1, "next");
    close_frame(&in, 1000, "bye", 3);
    puts_(&exp, "<T>Hel");
    exp_ctl(&exp, "PING", "are you there?", 14);
    exp_ctl(&exp, "PONG", "", 0);
    puts_(&exp, "lo, w\xC3");
    exp_ctl(&exp, "PING", "", 0);
    puts_(&exp, "\xA9rld</T>");
    exp_text(&exp, "next", 4);
    exp_close(&exp, 1000, "bye", 3);
    check("fragmented text with control frames", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

/* A close between fragments is reported; the parser does not judge it. */
static void test_close_inside_message(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    text(&in, 0, "abc");
    close_frame(&in, 1001, "", 0);
    puts_(&exp, "<T>abc");
    exp_close(&exp, 1001, "", 0);
    check("close inside a message", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_control_frames(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    char p125[126];
    memset(p125, 'x', 125);
    p125[125] = '\0';
    p125[0] = '\xFF'; /* ping payload is binary: no UTF-8 rule */
    ping(&in, "");
    ping(&in, p125);
    put_frame(&in, FIN | WS_OP_PONG, "pong", 4);
    exp_ctl(&exp, "PING", "", 0);
    exp_ctl(&exp, "PING", p125, 125);
    exp_ctl(&exp, "PONG", "pong", 4);
    check("ping and pong", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_data_as_soon_as_available(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    text(&in, 1, "Hello");
    struct rec r;
    size_t cuts[16];
    for (size_t i = 1; i < in.len; i++)
        cuts[i - 1] = i;
    run(in.p, in.len, BIG, cuts, in.len - 1, &r);
    assert_int_equal(r.data_events, 5); /* one per payload byte */
    buf_free(&r.tr);

    /* A partial frame yields what is there, with fin = 0. */
    ws_parser p;
    ws_event ev;
    ws_parser_init(&p, BIG);
    size_t n = ws_parse(&p, in.p, in.len - 2, &ev);
    assert_int_equal(n, in.len - 2);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_int_equal(ev.len, 3);
    assert_memory_equal(ev.data, "Hel", 3);
    assert_true(ev.first && !ev.fin);
    n = ws_parse(&p, in.p + in.len - 2, 2, &ev);
    assert_int_equal(n, 2);
    assert_int_equal(ev.type, WS_EV_DATA);
    assert_memory_equal(ev.data, "lo", 2);
    assert_true(!ev.first && ev.fin);
    buf_free(&in);
    buf_free(&exp);
}

static void put_multi(struct buf *in, struct buf *exp)
{
    text(in, 1, "one");
    ping(in, "p");
    text(in, 1, "two");
    text(in, 0, "thr");
    cont(in, 1, "ee");
    close_frame(in, 1000, "", 0);
    exp_text(exp, "one", 3);
    exp_ctl(exp, "PING", "p", 1);
    exp_text(exp, "two", 3);
    exp_text(exp, "three", 5);
    exp_close(exp, 1000, "", 0);
}

static void test_multiple_frames_in_one_buffer(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    put_multi(&in, &exp);
    check("multiple frames", &in, BIG, &exp, NO_ERR_AT);

    /* the caller's loop: one event per call, then NONE with all consumed */
    ws_parser p;
    ws_event ev;
    ws_parser_init(&p, BIG);
    size_t off = 0, calls = 0;
    struct rec r;
    memset(&r, 0, sizeof r);
    do {
        off += ws_parse(&p, in.p + off, in.len - off, &ev);
        rec_event(&r, &ev);
        calls++;
    } while (ev.type != WS_EV_NONE);
    assert_int_equal(off, in.len);
    assert_int_equal(calls, 7); /* six events, then NONE */
    expect_same("multiple frames", "loop", 0, &r, &exp);
    buf_free(&r.tr);
    buf_free(&in);
    buf_free(&exp);
}

static void test_utf8_valid_across_fragments(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    /* U+1F600 split over three fragments, and the kosme string */
    text(&in, 0, "\xF0");
    cont(&in, 0, "\x9F\x98");
    cont(&in, 1, "\x80");
    text(&in, 1, "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5");
    exp_text(&exp, "\xF0\x9F\x98\x80", 4);
    exp_text(&exp, "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5", 11);
    check("utf-8 across fragments", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_close_codes_valid(void **state)
{
    (void)state;
    static const unsigned ok[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009,
                                  1010, 1011, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        struct buf in = {0}, exp = {0};
        char name[64];
        close_frame(&in, ok[i], "", 0);
        close_frame(&in, ok[i], "d\xC3\xA9j\xC3\xA0 vu", 9);
        exp_close(&exp, ok[i], "", 0);
        exp_close(&exp, ok[i], "d\xC3\xA9j\xC3\xA0 vu", 9);
        snprintf(name, sizeof name, "close %u", ok[i]);
        check(name, &in, BIG, &exp, NO_ERR_AT);
        assert_true(ws_close_code_valid(ok[i]));
        buf_free(&in);
        buf_free(&exp);
    }
    /* empty close: 1005 in the event */
    struct buf in = {0}, exp = {0};
    put_frame(&in, FIN | WS_OP_CLOSE, "", 0);
    exp_close(&exp, WS_CLOSE_NO_STATUS, "", 0);
    check("close without payload", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
    /* the longest close: code and 123 bytes of reason */
    char r123[124];
    memset(r123, 'r', 123);
    close_frame(&in, 1000, r123, 123);
    exp_close(&exp, 1000, r123, 123);
    check("close with 125-byte payload", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_close_code_table(void **state)
{
    (void)state;
    for (unsigned c = 0; c < 70000; c++) {
        int want = (c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) ||
                   (c >= 3000 && c <= 4999);
        if (ws_close_code_valid(c) != want)
            fail_msg("close code %u: got %d", c, ws_close_code_valid(c));
    }
}

static void test_max_message_limits(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    /* exactly at the limit, single frame and sum of fragments */
    text(&in, 1, "0123456789");
    text(&in, 0, "0123");
    ping(&in, "not counted");
    cont(&in, 0, "45678");
    cont(&in, 1, "9");
    exp_text(&exp, "0123456789", 10);
    puts_(&exp, "<T>0123");
    exp_ctl(&exp, "PING", "not counted", 11);
    puts_(&exp, "456789</T>");
    check("at max_message", &in, 10, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    /* one byte over in a single frame: at the length byte */
    text(&in, 1, "01234567890");
    exp_err(&exp, WS_CLOSE_TOO_BIG);
    check("single frame over max_message", &in, 10, &exp, 1);
    buf_free(&in);
    buf_free(&exp);

    /* over by the sum of fragments: at the header that passes it */
    text(&in, 0, "0123");
    cont(&in, 0, "4567");
    size_t at = in.len;
    cont(&in, 1, "890");
    exp_err(&exp, WS_CLOSE_TOO_BIG);
    check("fragments over max_message", &in, 10, &exp, (long)at + 1);
    buf_free(&in);
    buf_free(&exp);

    /* 16-bit and 64-bit lengths: fail before the payload arrives */
    uint8_t big[300] = {0};
    put_frame_key(&in, FIN | WS_OP_TEXT, LEN_MIN, next_key, big, 300);
    in.len = 4; /* header up to the length only */
    exp_err(&exp, WS_CLOSE_TOO_BIG);
    check("16-bit length over max_message", &in, 299, &exp, 3);
    buf_free(&in);
    uint8_t hdr[] = {FIN | WS_OP_TEXT, 0x80 | 127, 0x40, 0, 0, 0, 0, 0, 0, 0};
    put(&in, hdr, sizeof hdr);
    check("64-bit length over max_message", &in, BIG, &exp, 9);
    buf_free(&in);
    buf_free(&exp);
}

/* ---- error scripts ------------------------------------------------------ */

static void check_error(const char *name, const struct buf *in, unsigned code, long err_at)
{
    struct buf exp = {0};
    exp_err(&exp, code);
    check(name, in, BIG, &exp, err_at);
    buf_free(&exp);
}

static void test_protocol_errors(void **state)
{
    (void)state;
    struct buf in = {0};
    char name[64];

    cont(&in, 1, "x");
    check_error("continuation without start", &in, 1002, 0);
    in.len = 0;
    cont(&in, 0, "x");
    check_error("unfinished continuation without start", &in, 1002, 0);
    in.len = 0;

    text(&in, 0, "a");
    size_t at = in.len;
    text(&in, 1, "b");
    check_error("text during fragmented message", &in, 1002, (long)at);
    in.len = 0;
    text(&in, 0, "a");
    put_frame(&in, FIN | WS_OP_BINARY, "b", 1);
    check_error("binary during fragmented message", &in, 1002, (long)at);
    in.len = 0;

    for (unsigned rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
        put_frame(&in, FIN | rsv | WS_OP_TEXT, "x", 1);
        snprintf(name, sizeof name, "rsv bit %#x", rsv);
        check_error(name, &in, 1002, 0);
        in.len = 0;
        put_frame(&in, FIN | rsv | WS_OP_PING, "", 0);
        check_error(name, &in, 1002, 0);
        in.len = 0;
    }

    static const unsigned bad_ops[] = {3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF};
    for (size_t i = 0; i < sizeof bad_ops / sizeof bad_ops[0]; i++) {
        put_frame(&in, FIN | bad_ops[i], "", 0);
        snprintf(name, sizeof name, "opcode %#x", bad_ops[i]);
        check_error(name, &in, 1002, 0);
        in.len = 0;
        put_frame(&in, bad_ops[i], "x", 1);
        check_error(name, &in, 1002, 0);
        in.len = 0;
    }

    put_frame_key(&in, FIN | WS_OP_TEXT, LEN_MIN, NULL, "hello", 5);
    check_error("unmasked text", &in, 1002, 1);
    in.len = 0;
    put_frame_key(&in, FIN | WS_OP_CLOSE, LEN_MIN, NULL, "\x03\xE8", 2);
    check_error("unmasked close", &in, 1002, 1);
    in.len = 0;

    text(&in, 1, "fine");
    at = in.len;
    put_frame_key(&in, FIN | WS_OP_PING, LEN_MIN, NULL, "", 0);
    struct buf exp = {0};
    exp_text(&exp, "fine", 4);
    exp_err(&exp, 1002);
    check("error after a good frame", &in, BIG, &exp, (long)at + 1);
    buf_free(&exp);
    in.len = 0;

    char p126[127];
    memset(p126, 'p', 126);
    p126[126] = '\0';
    ping(&in, p126);
    check_error("ping of 126 bytes", &in, 1002, 1);
    in.len = 0;
    close_frame(&in, 1000, p126, 124);
    check_error("close of 126 bytes", &in, 1002, 1);
    in.len = 0;
    put_frame(&in, FIN | WS_OP_PONG, p126, 126);
    check_error("pong of 126 bytes", &in, 1002, 1);
    in.len = 0;

    put_frame(&in, WS_OP_PING, "x", 1);
    check_error("fragmented ping", &in, 1002, 0);
    in.len = 0;
    text(&in, 0, "a");
    at = in.len;
    put_frame(&in, WS_OP_PING, "x", 1);
    cont(&in, 1, "b");
    check_error("fragmented ping inside a message", &in, 1002, (long)at);
    in.len = 0;
    put_frame(&in, WS_OP_CLOSE, "", 0);
    check_error("fragmented close", &in, 1002, 0);
    in.len = 0;

    uint8_t hdr[] = {FIN | WS_OP_TEXT, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4};
    put(&in, hdr, sizeof hdr);
    check_error("64-bit length with top bit", &in, 1002, 9);
    in.len = 0;
    buf_free(&in);
}

static void test_binary(void **state)
{
    (void)state;
    struct buf in = {0};
    put_frame(&in, FIN | WS_OP_BINARY, "\x00\x01", 2);
    check_error("binary", &in, 1003, 0);
    in.len = 0;
    put_frame(&in, WS_OP_BINARY, "\x00", 1);
    cont(&in, 1, "x");
    check_error("fragmented binary", &in, 1003, 0);
    in.len = 0;
    put_frame(&in, FIN | WS_OP_BINARY, "", 0);
    check_error("empty binary", &in, 1003, 0);
    buf_free(&in);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    struct buf in = {0};

    text(&in, 0, "ab\xFF" "cd");
    check_error("bad byte in first fragment", &in, 1007, 6 + 2);
    in.len = 0;

    text(&in, 1, "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80" "edited");
    check_error("kosme with a surrogate", &in, 1007, 6 + 12);
    in.len = 0;

    text(&in, 0, "ab\xED");
    size_t at = in.len;
    cont(&in, 1, "\xA0\x80");
    check_error("surrogate across fragments", &in, 1007, (long)at + 6);
    in.len = 0;

    text(&in, 0, "ab\xF4");
    ping(&in, "ping between");
    at = in.len;
    cont(&in, 1, "\x90\x80\x80");
    check_error("above U+10FFFF across fragments and a ping", &in, 1007, (long)at + 6);
    in.len = 0;

    text(&in, 1, "ab\xC3");
    check_error("truncated at fin", &in, 1007, 6 + 2);
    in.len = 0;

    text(&in, 0, "ab\xE2\x82");
    at = in.len;
    cont(&in, 1, "");
    check_error("truncated before an empty final fragment", &in, 1007, (long)at + 5);
    in.len = 0;

    text(&in, 1, "\xC0\xAF");
    check_error("overlong slash", &in, 1007, 6);
    in.len = 0;

    /* bad byte after a long ASCII run (the 8-byte fast path) */
    char s[64];
    memset(s, 'a', 40);
    s[40] = '\x80';
    s[41] = '\0';
    text(&in, 1, s);
    check_error("stray continuation after ascii", &in, 1007, 6 + 40);
    buf_free(&in);
}

static void test_close_errors(void **state)
{
    (void)state;
    struct buf in = {0};
    char name[64];

    put_frame(&in, FIN | WS_OP_CLOSE, "\x03", 1);
    check_error("close with 1 byte", &in, 1002, 6);
    in.len = 0;
    /* a stale byte from an earlier control frame must not complete it */
    ping(&in, "x\xE8");
    size_t at = in.len;
    put_frame(&in, FIN | WS_OP_CLOSE, "\x03", 1);
    struct buf exp = {0};
    exp_ctl(&exp, "PING", "x\xE8", 2);
    exp_err(&exp, 1002);
    check("close with 1 byte after a ping", &in, BIG, &exp, (long)at + 6);
    buf_free(&exp);
    in.len = 0;

    static const unsigned bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                                   5000, 65535};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        close_frame(&in, bad[i], "", 0);
        snprintf(name, sizeof name, "close code %u", bad[i]);
        check_error(name, &in, 1002, 7);
        in.len = 0;
        close_frame(&in, bad[i], "why", 3);
        check_error(name, &in, 1002, 10);
        in.len = 0;
        assert_false(ws_close_code_valid(bad[i]));
    }

    close_frame(&in, 1000, "ok\xFF", 3);
    check_error("close reason not utf-8", &in, 1007, 10);
    in.len = 0;
    close_frame(&in, 1000, "\xCE\xBA\xE1\xBD", 4);
    check_error("close reason truncated", &in, 1007, 11);
    in.len = 0;
    close_frame(&in, 1000, "\xED\xA0\x80", 3);
    check_error("close reason surrogate", &in, 1007, 10);
    buf_free(&in);
}

/* ---- encoder ------------------------------------------------------------ */

static void test_header_sizes(void **state)
{
    (void)state;
    static const struct {
        uint64_t len;
        size_t size;
        uint8_t bytes[10];
    } cases[] = {
        {0, 2, {0x81, 0}},
        {1, 2, {0x81, 1}},
        {125, 2, {0x81, 125}},
        {126, 4, {0x81, 126, 0, 126}},
        {65535, 4, {0x81, 126, 0xFF, 0xFF}},
        {65536, 10, {0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
        {(uint64_t)1 << 32, 10, {0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0}},
        {0x0102030405060708ULL, 10, {0x81, 127, 1, 2, 3, 4, 5, 6, 7, 8}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t out[WS_MAX_HEADER];
        memset(out, 0xAA, sizeof out);
        assert_int_equal(ws_header_size(cases[i].len), cases[i].size);
        size_t n = ws_write_header(out, WS_OP_TEXT, cases[i].len);
        assert_int_equal(n, cases[i].size);
        assert_memory_equal(out, cases[i].bytes, n);
        assert_int_equal(out[n], 0xAA); /* nothing written past the header */
    }
    uint8_t out[WS_MAX_HEADER];
    assert_int_equal(ws_write_header(out, WS_RSV1 | WS_OP_TEXT, 300), 4);
    assert_memory_equal(out, "\xC1\x7E\x01\x2C", 4);
    assert_int_equal(ws_frame_header_size(out), 4);
    assert_int_equal(ws_write_header(out, WS_RSV1 | WS_OP_TEXT, 70000), 10);
    assert_int_equal(ws_frame_header_size(out), 10);
    assert_int_equal(ws_write_header(out, WS_OP_PING, 3), 2);
    assert_int_equal(ws_frame_header_size(out), 2);
    assert_int_equal(out[0], 0x89);
    assert_int_equal(out[1], 3);
    assert_int_equal(ws_write_header(out, WS_OP_CLOSE, 0), 2);
    assert_int_equal(out[0], 0x88);
}

/* Turns a server frame into the same frame sent by a client (masked), so
 * that the parser can read back what the encoder wrote. */
static void masked_copy(struct buf *b, const uint8_t *frame, size_t len)
{
    size_t h = 2 + ((frame[1] & 0x7F) == 126 ? 2 : (frame[1] & 0x7F) == 127 ? 8 : 0);
    assert_true((frame[1] & 0x80) == 0);
    put_frame_key(b, frame[0], (frame[1] & 0x7F) == 126 ? LEN_16 : LEN_MIN, next_key,
                  frame + h, len - h);
}

static void roundtrip_close(unsigned code, const char *reason, size_t want_rlen)
{
    uint8_t out[2 + WS_MAX_CONTROL + 8];
    memset(out, 0xAA, sizeof out);
    size_t n = ws_write_close(out, code, reason);
    assert_true(n <= 2 + WS_MAX_CONTROL);
    assert_int_equal(out[n], 0xAA);
    assert_int_equal(out[0], 0x88);
    assert_int_equal(n, 2 + 2 + want_rlen);
    assert_int_equal(out[1], 2 + want_rlen);
    assert_int_equal(out[2] << 8 | out[3], code);
    assert_memory_equal(out + 4, reason, want_rlen);

    struct buf in = {0}, exp = {0};
    masked_copy(&in, out, n);
    exp_close(&exp, code, reason, want_rlen);
    check("close round trip", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);
}

static void test_write_close(void **state)
{
    (void)state;
    char r[512];

    roundtrip_close(1000, "", 0);
    roundtrip_close(1001, "going away", 10);
    roundtrip_close(1009, "message too big", 15);

    memset(r, 'x', 123);
    r[123] = '\0';
    roundtrip_close(1008, r, 123); /* fits exactly */
    memset(r, 'x', 300);
    r[300] = '\0';
    roundtrip_close(1008, r, 123); /* ASCII: cut at 123 */

    /* 2-byte characters: 123 would split one, so 122 */
    r[0] = '\0';
    for (int i = 0; i < 100; i++)
        strcat(r, "\xC3\xA9");
    roundtrip_close(1011, r, 122);
    /* 3-byte characters: 41 of them fill 123 exactly */
    r[0] = '\0';
    for (int i = 0; i < 60; i++)
        strcat(r, "\xE2\x82\xAC");
    roundtrip_close(1011, r, 123);
    /* 4-byte characters: 30 of them, 120 bytes */
    r[0] = '\0';
    for (int i = 0; i < 40; i++)
        strcat(r, "\xF0\x9F\x98\x80");
    roundtrip_close(1011, r, 120);
    /* one ASCII byte shifts the 4-byte characters: 1 + 30 * 4 = 121 */
    strcpy(r, "a");
    for (int i = 0; i < 40; i++)
        strcat(r, "\xF0\x9F\x98\x80");
    roundtrip_close(1011, r, 121);

    /* NULL reason, and the empty close for "no status" */
    uint8_t out[2 + WS_MAX_CONTROL];
    assert_int_equal(ws_write_close(out, 1000, NULL), 4);
    assert_memory_equal(out, "\x88\x02\x03\xE8", 4);
    assert_int_equal(ws_write_close(out, WS_CLOSE_NO_STATUS, "ignored"), 2);
    assert_memory_equal(out, "\x88\x00", 2);
    assert_int_equal(ws_write_close(out, 0, NULL), 2);
}

static void test_text_roundtrip(void **state)
{
    (void)state;
    static const size_t sizes[] = {0, 125, 126, 65535, 65536};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        uint8_t *frame = malloc(WS_MAX_HEADER + n);
        assert_non_null(frame);
        size_t h = ws_write_header(frame, WS_OP_TEXT, n);
        memset(frame + h, 'z', n);
        struct buf in = {0};
        masked_copy(&in, frame, h + n);
        ws_parser p;
        ws_parser_init(&p, BIG);
        ws_event ev;
        size_t used = ws_parse(&p, in.p, in.len, &ev);
        assert_int_equal(used, in.len);
        assert_int_equal(ev.type, WS_EV_DATA);
        assert_int_equal(ev.len, n);
        assert_true(ev.first && ev.fin);
        assert_memory_equal(ev.data, frame + h, n);
        free(frame);
        buf_free(&in);
    }
}

/* ---- permessage-deflate (RFC 7692): RSV1 ---------------------------- */

#define Z 0x40u /* RSV1 */

static void check_z(const char *name, const struct buf *in, uint64_t max, const struct buf *exp,
                    long err_at)
{
    with_deflate = 1;
    check(name, in, max, exp, err_at);
    with_deflate = 0;
}

static void check_z_error(const char *name, const struct buf *in, unsigned code, long err_at)
{
    struct buf exp = {0};
    exp_err(&exp, code);
    check_z(name, in, BIG, &exp, err_at);
    buf_free(&exp);
}

static void test_deflate_frames(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};

    /* RSV1 on a text frame: deflate bytes, handed out unchecked (0xFF is
     * never UTF-8), and an uncompressed message beside it still checked. */
    put_frame(&in, FIN | Z | WS_OP_TEXT, "\xF2\x48\xCD\xFF", 4);
    text(&in, 1, "plain");
    exp_z(&exp, "\xF2\x48\xCD\xFF", 4);
    exp_text(&exp, "plain", 5);
    check_z("compressed and plain", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    /* Fragmented: RSV1 on the first frame only; controls in between. */
    put_frame(&in, Z | WS_OP_TEXT, "\xC0\x80", 2);
    ping(&in, "p");
    cont(&in, 0, "\xFF");
    cont(&in, 1, "");
    puts_(&exp, "<Z>\xC0\x80");
    exp_ctl(&exp, "PING", "p", 1);
    puts_(&exp, "\xFF</Z>");
    check_z("fragmented compressed message", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    /* An empty compressed frame is a message too (the inflater judges it). */
    put_frame(&in, FIN | Z | WS_OP_TEXT, "", 0);
    exp_z(&exp, "", 0);
    check_z("empty compressed frame", &in, BIG, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    /* RSV1 on a continuation: 1002 at that frame. */
    put_frame(&in, Z | WS_OP_TEXT, "a", 1);
    size_t at = in.len;
    put_frame(&in, FIN | Z | WS_OP_CONT, "b", 1);
    check_z_error("RSV1 on a continuation", &in, 1002, (long)at);
    in.len = 0;
    text(&in, 0, "a");
    at = in.len;
    put_frame(&in, FIN | Z | WS_OP_CONT, "b", 1);
    check_z_error("RSV1 on the continuation of a plain message", &in, 1002, (long)at);
    in.len = 0;

    /* Control frames are never compressed; RSV2 and RSV3 stay unknown. */
    static const unsigned ctl[] = {WS_OP_PING, WS_OP_PONG, WS_OP_CLOSE};
    for (size_t i = 0; i < 3; i++) {
        put_frame(&in, FIN | Z | ctl[i], "", 0);
        check_z_error("RSV1 on a control frame", &in, 1002, 0);
        in.len = 0;
    }
    put_frame(&in, Z | WS_OP_TEXT, "a", 1);
    at = in.len;
    ping(&in, "");
    put_frame(&in, FIN | Z | WS_OP_PING, "", 0);
    check_z_error("RSV1 on a ping inside a compressed message", &in, 1002,
                  (long)(at + 6));
    in.len = 0;
    for (unsigned rsv = 0x10; rsv <= 0x20; rsv <<= 1) {
        put_frame(&in, FIN | Z | rsv | WS_OP_TEXT, "x", 1);
        check_z_error("RSV2/RSV3 with deflate", &in, 1002, 0);
        in.len = 0;
    }
    put_frame(&in, FIN | Z | WS_OP_BINARY, "x", 1);
    check_z_error("compressed binary", &in, 1003, 0);
    in.len = 0;

    /* Invalid UTF-8 in a plain message is still 1007 on a deflate parser. */
    put_frame(&in, FIN | WS_OP_TEXT, "\xFF", 1);
    check_z_error("plain message, bad UTF-8", &in, 1007, 6);
    in.len = 0;

    /* Without permessage-deflate RSV1 stays a protocol error (see
     * test_protocol_errors), also on a continuation. */
    text(&in, 0, "a");
    at = in.len;
    put_frame(&in, FIN | Z | WS_OP_CONT, "b", 1);
    check_error("RSV1 without deflate", &in, 1002, (long)at);
    buf_free(&in);
}

static void test_deflate_limits(void **state)
{
    (void)state;
    struct buf in = {0}, exp = {0};
    /* max_message 80: a compressed message may take 80 + 10 + 64 = 154 wire
     * bytes, over fragments too; a plain one 80, as before. */
    assert_int_equal(ws_deflated_limit(80), 154);
    uint8_t z[200];
    memset(z, 0x55, sizeof z);
    put_frame_key(&in, FIN | Z | WS_OP_TEXT, LEN_MIN, next_key, z, 154);
    exp_z(&exp, z, 154);
    check_z("compressed at its wire limit", &in, 80, &exp, NO_ERR_AT);
    buf_free(&in);
    buf_free(&exp);

    put_frame_key(&in, FIN | Z | WS_OP_TEXT, LEN_MIN, next_key, z, 155);
    exp_err(&exp, WS_CLOSE_TOO_BIG);
    check_z("compressed over its wire limit", &in, 80, &exp, 3);
    buf_free(&in);

    put_frame_key(&in, Z | WS_OP_TEXT, LEN_MIN, next_key, z, 100);
    size_t at = in.len;
    put_frame_key(&in, FIN | WS_OP_CONT, LEN_MIN, next_key, z, 55);
    check_z("compressed fragments over the wire limit", &in, 80, &exp, (long)at + 1);
    buf_free(&in);

    char plain[82];
    memset(plain, 'a', 81);
    plain[81] = '\0';
    text(&in, 1, plain);
    check_z("plain message over max_message on a deflate parser", &in, 80, &exp, 1);
    buf_free(&in);
    buf_free(&exp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_non_minimal_lengths),
        cmocka_unit_test(test_empty_text),
        cmocka_unit_test(test_fragmented_with_controls),
        cmocka_unit_test(test_close_inside_message),
        cmocka_unit_test(test_control_frames),
        cmocka_unit_test(test_data_as_soon_as_available),
        cmocka_unit_test(test_multiple_frames_in_one_buffer),
        cmocka_unit_test(test_utf8_valid_across_fragments),
        cmocka_unit_test(test_close_codes_valid),
        cmocka_unit_test(test_close_code_table),
        cmocka_unit_test(test_max_message_limits),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_close_errors),
        cmocka_unit_test(test_header_sizes),
        cmocka_unit_test(test_write_close),
        cmocka_unit_test(test_text_roundtrip),
        cmocka_unit_test(test_deflate_frames),
        cmocka_unit_test(test_deflate_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
