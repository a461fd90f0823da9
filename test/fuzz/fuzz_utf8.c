/* libFuzzer target for the UTF-8 validator (utf8_feed, utf8_validate).
 *
 * Input: byte 0 picks the split pattern, the rest is the text. The verdict
 * of the incremental validator on random splits, of utf8_validate and of a
 * reference built here must agree, and so must the position of the first
 * byte that can never be valid (utf8_feed fails fast).
 *
 * The reference does not decode at all: it encodes every Unicode scalar
 * value (U+0000..U+10FFFF without the surrogates) with the four-line
 * encoder of RFC 3629 and remembers every encoding and every proper prefix
 * of one. A string is valid UTF-8 when it is a concatenation of those
 * encodings, which is the definition itself.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"
#include "fuzz.h"

/* Bit sets over byte strings of length 1..3 (as big-endian integers), and
 * the sorted 4-byte encodings. */
static uint8_t full1[256 / 8], full2[65536 / 8], full3[(1u << 24) / 8];
static uint8_t pre1[256 / 8], pre2[65536 / 8], pre3[(1u << 24) / 8];
static uint32_t *full4;
static size_t n_full4;

static void set(uint8_t *bits, uint32_t i) { bits[i >> 3] |= (uint8_t)(1u << (i & 7)); }
static int get(const uint8_t *bits, uint32_t i) { return bits[i >> 3] >> (i & 7) & 1; }

static size_t encode(uint32_t c, uint8_t out[4])
{
    if (c < 0x80) {
        out[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (uint8_t)(0xC0 | c >> 6);
        out[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (uint8_t)(0xE0 | c >> 12);
        out[1] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
        out[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | c >> 18);
    out[1] = (uint8_t)(0x80 | (c >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (c >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

static void build_tables(void)
{
    full4 = malloc(0x100000 * sizeof *full4);
    CHECK(full4);
    for (uint32_t c = 0; c <= 0x10FFFF; c++) {
        if (c >= 0xD800 && c <= 0xDFFF)
            continue;
        uint8_t e[4];
        size_t n = encode(c, e);
        uint32_t v1 = e[0], v2 = v1 << 8 | e[1], v3 = v2 << 8 | e[2];
        if (n == 1) {
            set(full1, v1);
            continue;
        }
        set(pre1, v1);
        if (n == 2) {
            set(full2, v2);
            continue;
        }
        set(pre2, v2);
        if (n == 3) {
            set(full3, v3);
            continue;
        }
        set(pre3, v3);
        full4[n_full4++] = v3 << 8 | e[3]; /* increasing with c */
    }
    CHECK(n_full4 == 0x100000);
}

static int is_full4(uint32_t v)
{
    size_t lo = 0, hi = n_full4;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (full4[mid] == v)
            return 1;
        if (full4[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* Is p[0..n) (n = 1..4) the encoding of a scalar value? */
static int is_full(const uint8_t *p, size_t n)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    switch (n) {
    case 1: return get(full1, v);
    case 2: return get(full2, v);
    case 3: return get(full3, v);
    default: return is_full4(v);
    }
}

/* Is p[0..n) (n = 1..3) a proper prefix of an encoding? */
static int is_prefix(const uint8_t *p, size_t n)
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    switch (n) {
    case 1: return get(pre1, v);
    case 2: return get(pre2, v);
    default: return get(pre3, v);
    }
}

enum { REF_VALID, REF_PARTIAL, REF_INVALID };

/* Splits p into encodings. Returns REF_VALID, REF_PARTIAL (a valid string
 * followed by a proper prefix of an encoding) or REF_INVALID with *bad the
 * index of the first byte no valid string can have there. */
static int reference(const uint8_t *p, size_t len, size_t *bad)
{
    size_t i = 0;
    while (i < len) {
        size_t n, m = 0;
        for (n = 1; n <= 4 && i + n <= len; n++)
            if (is_full(p + i, n))
                break;
        if (n <= 4 && i + n <= len) {
            i += n;
            continue;
        }
        /* No encoding starts here: how far is this a proper prefix? */
        while (m < 3 && i + m < len && is_prefix(p + i, m + 1))
            m++;
        if (i + m == len)
            return REF_PARTIAL;
        *bad = i + m;
        return REF_INVALID;
    }
    return REF_VALID;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        build_tables();
        ready = 1;
    }
    if (size < 1)
        return 0;
    uint32_t x = 0x9E3779B9u ^ data[0];
    unsigned mode = data[0] & 3;
    const uint8_t *p = data + 1;
    size_t len = size - 1;

    size_t bad = 0;
    int ref = reference(p, len, &bad);
    int valid = utf8_validate(p, len) == 0;
    CHECK(valid == (ref == REF_VALID));

    /* One byte at a time: fails exactly on the first impossible byte. */
    utf8_state s;
    utf8_reset(&s);
    size_t i;
    for (i = 0; i < len; i++)
        if (utf8_feed(&s, p + i, 1) < 0)
            break;
    if (ref == REF_INVALID) {
        CHECK(i == bad);
    } else {
        CHECK(i == len);
        CHECK(utf8_complete(&s) == (ref == REF_VALID));
    }

    /* Random splits: fails in the chunk holding that byte, never earlier. */
    utf8_reset(&s);
    size_t at = 0;
    int failed = 0;
    while (at < len) {
        size_t c;
        if (mode == 0) {
            c = 1 + (data[0] >> 2);
        } else {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            c = mode == 1 ? x % 9 : mode == 2 ? x % 40 : x % 300; /* 0: empty feeds too */
        }
        if (c > len - at)
            c = len - at;
        if (utf8_feed(&s, p + at, c) < 0) {
            CHECK(ref == REF_INVALID && bad >= at && bad < at + c);
            failed = 1;
            break;
        }
        at += c;
    }
    if (!failed) {
        CHECK(ref != REF_INVALID);
        CHECK(utf8_complete(&s) == (ref == REF_VALID));
    }
    return 0;
}
