/* libFuzzer target for permessage-deflate payloads (pmd.h).
 *
 * Input: byte 0 picks the inflate limit, the rest is what a client sent as
 * a compressed message. pmd_inflate must never produce more than the limit
 * and must agree with a plain zlib inflater (with the 00 00 FF FF put
 * back) on every message it accepts; what it accepts, compressed again with
 * pmd_deflate, must inflate back to itself. One pmd object serves every
 * input, as one worker's serves every connection.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "pmd.h"
#include "fuzz.h"

static const size_t limits[] = {0, 1, 2, 16, 125, 126, 1000, 4096, 65536};

/* zlib used directly: the reference for a message pmd accepted. */
static void check_reference(const uint8_t *in, size_t len, const uint8_t *out, size_t out_len)
{
    static const uint8_t tail[4] = {0x00, 0x00, 0xFF, 0xFF};
    z_stream s;
    memset(&s, 0, sizeof s);
    CHECK(inflateInit2(&s, -15) == Z_OK);
    uint8_t *ref = malloc(out_len + 1);
    uint8_t *buf = malloc(len + 4);
    CHECK(ref && buf);
    if (len)
        memcpy(buf, in, len);
    memcpy(buf + len, tail, 4);
    s.next_in = buf;
    s.avail_in = (uInt)(len + 4);
    s.next_out = ref;
    s.avail_out = (uInt)(out_len + 1);
    int rc = inflate(&s, Z_SYNC_FLUSH);
    if (len > 0) { /* no bytes at all: pmd's empty message, not zlib's */
        CHECK(rc == Z_OK || rc == Z_STREAM_END);
        CHECK(s.avail_out == 1); /* exactly out_len bytes */
        CHECK(memcmp(ref, out, out_len) == 0);
    }
    inflateEnd(&s);
    free(ref);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static pmd *z;
    if (z == NULL && (z = pmd_new()) == NULL)
        return 0;
    if (size < 1)
        return 0;
    size_t limit = limits[data[0] % (sizeof limits / sizeof limits[0])];
    const uint8_t *in = data + 1;
    size_t len = size - 1;

    const uint8_t *out;
    size_t out_len;
    int rc = pmd_inflate(z, in, len, limit, &out, &out_len);
    CHECK(rc == PMD_OK || rc == PMD_TOO_BIG || rc == PMD_BAD);
    if (rc == PMD_OK) {
        CHECK(out_len <= limit);
        uint8_t *text = malloc(out_len + 1);
        CHECK(text);
        if (out_len)
            memcpy(text, out, out_len);
        check_reference(in, len, text, out_len);

        /* Round trip through our own compressor. */
        size_t n = out_len, zlen;
        const uint8_t *d = pmd_deflate(z, text, n, &zlen);
        CHECK(d);
        uint8_t *copy = malloc(zlen + 1);
        CHECK(copy);
        memcpy(copy, d, zlen);
        CHECK(pmd_inflate(z, copy, zlen, n, &out, &out_len) == PMD_OK);
        CHECK(out_len == n && (n == 0 || memcmp(out, text, n) == 0));
        free(copy);
        free(text);
    }
    pmd_trim(z);
    return 0;
}
