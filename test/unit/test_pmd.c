/* Unit tests for pmd: permessage-deflate payloads, checked against zlib
 * used directly the way a client's compressor and decompressor use it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "pmd.h"

static const char chat[] =
    "carol: I think the meeting got moved to Thursday afternoon, did anyone else get the "
    "email from Mark about it? He said the room changed too.";

/* What a client sends: raw deflate with a sync flush, the 4-byte tail
 * removed. A NULL ctx compresses alone; a given one keeps its window from
 * one call to the next (context takeover). Returns the length. */
static size_t client_deflate(z_stream *ctx, const void *in, size_t len, uint8_t *out, size_t cap,
                             int flush) {
    z_stream s, *z = ctx;
    if (z == NULL) {
        memset(&s, 0, sizeof s);
        assert_int_equal(deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
        z = &s;
    }
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)len;
    z->next_out = out;
    z->avail_out = (uInt)cap;
    int rc = deflate(z, flush);
    assert_true(rc == Z_OK || rc == Z_STREAM_END);
    assert_int_equal(z->avail_in, 0);
    size_t n = cap - z->avail_out;
    if (flush == Z_SYNC_FLUSH) {
        assert_true(n >= 4);
        assert_memory_equal(out + n - 4, "\x00\x00\xff\xff", 4);
        n -= 4;
    }
    if (z == &s) deflateEnd(&s);
    return n;
}

/* What a client's decompressor does with a frame of ours. */
static size_t client_inflate(const uint8_t *in, size_t len, uint8_t *out, size_t cap, int wbits) {
    z_stream s;
    memset(&s, 0, sizeof s);
    assert_int_equal(inflateInit2(&s, -wbits), Z_OK);
    uint8_t *buf = malloc(len + 4);
    assert_non_null(buf);
    memcpy(buf, in, len);
    memcpy(buf + len, "\x00\x00\xff\xff", 4);
    s.next_in = buf;
    s.avail_in = (uInt)(len + 4);
    s.next_out = out;
    s.avail_out = (uInt)cap;
    int rc = inflate(&s, Z_SYNC_FLUSH);
    assert_true(rc == Z_OK || rc == Z_STREAM_END);
    assert_int_equal(s.avail_in, 0);
    inflateEnd(&s);
    free(buf);
    return cap - s.avail_out;
}

/* Asserts that in[0..n) inflates to chat under a limit of exactly its length. */
static void expect_chat(pmd *z, const uint8_t *in, size_t n) {
    const uint8_t *out;
    size_t olen;
    assert_int_equal(pmd_inflate(z, in, n, sizeof chat - 1, &out, &olen), PMD_OK);
    assert_int_equal(olen, sizeof chat - 1);
    assert_memory_equal(out, chat, olen);
}

static void test_deflate_roundtrip(void **state) {
    (void)state;
    pmd *z = pmd_new();
    assert_non_null(z);
    uint8_t back[4096];
    /* Several messages through one compressor: each stands alone (no
     * context taken over), so a fresh client inflater reads each. */
    for (int round = 0; round < 3; round++) {
        size_t n;
        const uint8_t *d = pmd_deflate(z, (const uint8_t *)chat, sizeof chat - 1, &n);
        assert_non_null(d);
        assert_true(n < sizeof chat - 1);
        assert_int_equal(client_inflate(d, n, back, sizeof back, 15), sizeof chat - 1);
        assert_memory_equal(back, chat, sizeof chat - 1);
        /* pmd reads its own output back too */
        const uint8_t *out;
        size_t olen;
        uint8_t copy[4096];
        memcpy(copy, d, n);
        assert_int_equal(pmd_inflate(z, copy, n, 1000, &out, &olen), PMD_OK);
        assert_int_equal(olen, sizeof chat - 1);
        assert_memory_equal(out, chat, olen);
    }
    /* Payloads of at most 2^8 bytes stay readable with the smallest window
     * a client may ask for: back-references never reach further back than
     * the message's own start. */
    size_t n;
    const uint8_t *d = pmd_deflate(z, (const uint8_t *)chat, sizeof chat - 1, &n);
    assert_int_equal(client_inflate(d, n, back, sizeof back, 8), sizeof chat - 1);
    /* An empty message: one empty stored block, the tail removed. */
    d = pmd_deflate(z, (const uint8_t *)"", 0, &n);
    assert_non_null(d);
    assert_int_equal(client_inflate(d, n, back, sizeof back, 15), 0);
    pmd_free(z);
}

static void test_inflate_client_forms(void **state) {
    (void)state;
    pmd *z = pmd_new();
    assert_non_null(z);
    uint8_t in[4096];
    const uint8_t *out;
    size_t olen;

    /* A sync-flushed message, as every browser sends. */
    size_t n = client_deflate(NULL, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    expect_chat(z, in, n);

    /* Ended with the final block instead (RFC 7692 7.2.3.4). */
    n = client_deflate(NULL, chat, sizeof chat - 1, in, sizeof in, Z_FINISH);
    expect_chat(z, in, n);
    /* ... but nothing may follow the final block. */
    in[n] = 0x00;
    assert_int_equal(pmd_inflate(z, in, n + 1, 1000, &out, &olen), PMD_BAD);

    /* The empty message of RFC 7692 7.2.3.6: a single 0x00. */
    assert_int_equal(pmd_inflate(z, (const uint8_t *)"\x00", 1, 1000, &out, &olen), PMD_OK);
    assert_int_equal(olen, 0);
    /* No bytes at all is not a deflate stream, but it can only mean an
     * empty message. */
    assert_int_equal(pmd_inflate(z, in, 0, 1000, &out, &olen), PMD_OK);
    assert_int_equal(olen, 0);

    /* Uncompressed stored blocks are deflate too. */
    z_stream s;
    memset(&s, 0, sizeof s);
    assert_int_equal(deflateInit2(&s, 0, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    n = client_deflate(&s, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    deflateEnd(&s);
    expect_chat(z, in, n);

    /* Fragments are joined by the caller: the same bytes, one call. */
    pmd_free(z);
}

static void test_inflate_bad(void **state) {
    (void)state;
    pmd *z = pmd_new();
    assert_non_null(z);
    uint8_t in[4096];
    const uint8_t *out;
    size_t olen;

    /* BTYPE 11 is reserved: an error at once. */
    static const uint8_t reserved[] = {0xFF, 0xFF, 0xFF};
    assert_int_equal(pmd_inflate(z, reserved, sizeof reserved, 1000, &out, &olen), PMD_BAD);

    /* Cut inside its last block: never a boundary, whatever bytes. */
    size_t n = client_deflate(NULL, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    for (size_t cut = 1; cut < n - 1; cut++)
        assert_int_not_equal(pmd_inflate(z, in, cut, 1000, &out, &olen), PMD_OK);

    /* A client that keeps its window although told not to: its second
     * message points back into the first, which we no longer have. */
    z_stream s;
    memset(&s, 0, sizeof s);
    assert_int_equal(deflateInit2(&s, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    client_deflate(&s, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    n = client_deflate(&s, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    deflateEnd(&s);
    assert_int_equal(pmd_inflate(z, in, n, 1000, &out, &olen), PMD_BAD);

    /* Random bytes: an error or some output, never a crash (ASan). */
    uint32_t x = 12345;
    for (int round = 0; round < 2000; round++) {
        size_t len = (size_t)(round % 64) + 1;
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            in[i] = (uint8_t)(x >> 16);
        }
        int rc = pmd_inflate(z, in, len, 100, &out, &olen);
        assert_true(rc == PMD_OK || rc == PMD_BAD || rc == PMD_TOO_BIG);
        if (rc == PMD_OK) assert_true(olen <= 100);
    }

    /* After all that the same object reads a good message. */
    n = client_deflate(NULL, chat, sizeof chat - 1, in, sizeof in, Z_SYNC_FLUSH);
    expect_chat(z, in, n);
    pmd_free(z);
}

static void test_inflate_limit(void **state) {
    (void)state;
    pmd *z = pmd_new();
    assert_non_null(z);
    uint8_t in[4096];
    const uint8_t *out;
    size_t olen;
    size_t len = sizeof chat - 1;
    size_t n = client_deflate(NULL, chat, len, in, sizeof in, Z_SYNC_FLUSH);
    expect_chat(z, in, n);
    assert_int_equal(pmd_inflate(z, in, n, len - 1, &out, &olen), PMD_TOO_BIG);
    assert_int_equal(pmd_inflate(z, in, n, 0, &out, &olen), PMD_TOO_BIG);

    /* A bomb: 64 MiB of zeros in about 64 KiB of deflate. With a 64 KiB
     * limit it is refused once 64 KiB + 1 bytes are out (pmd never
     * produces more), however often it comes. */
    size_t big = 64u << 20;
    uint8_t *zeros = calloc(1, big);
    uint8_t *bomb = malloc(big / 512);
    assert_non_null(zeros);
    assert_non_null(bomb);
    size_t bn = client_deflate(NULL, zeros, big, bomb, big / 512, Z_SYNC_FLUSH);
    free(zeros);
    assert_true(bn < big / 800);
    for (int i = 0; i < 100; i++)
        assert_int_equal(pmd_inflate(z, bomb, bn, 65536, &out, &olen), PMD_TOO_BIG);
    /* The whole thing under a limit that fits it. */
    assert_int_equal(pmd_inflate(z, bomb, bn, big, &out, &olen), PMD_OK);
    assert_int_equal(olen, big);
    free(bomb);
    pmd_trim(z); /* gives back the 64 MiB buffer */
    expect_chat(z, in, n);
    pmd_free(z);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deflate_roundtrip),
        cmocka_unit_test(test_inflate_client_forms),
        cmocka_unit_test(test_inflate_bad),
        cmocka_unit_test(test_inflate_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
