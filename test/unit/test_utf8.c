/* Unit tests for the incremental UTF-8 validator in ws.c. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

#define VALID (-1)      /* whole input is valid UTF-8 */
#define INCOMPLETE (-2) /* a valid prefix that ends inside a character */

/* bad: VALID, INCOMPLETE, or the index of the first impossible byte. */
struct utf8_case {
    const char *name;
    const char *bytes;
    size_t len; /* 0: strlen(bytes) */
    int bad;
};

static const struct utf8_case cases[] = {
    /* valid */
    {"empty", "", 0, VALID},
    {"ascii", "a", 0, VALID},
    {"ascii 40", "0123456789abcdefghijklmnopqrstuvwxyzABCD", 0, VALID},
    {"nul", "a\0b", 3, VALID},
    {"U+007F", "\x7F", 0, VALID},
    {"U+0080", "\xC2\x80", 0, VALID},
    {"U+07FF", "\xDF\xBF", 0, VALID},
    {"U+0800", "\xE0\xA0\x80", 0, VALID},
    {"U+D7FF", "\xED\x9F\xBF", 0, VALID},
    {"U+E000", "\xEE\x80\x80", 0, VALID},
    {"U+FFFD", "\xEF\xBF\xBD", 0, VALID},
    {"U+FFFE noncharacter", "\xEF\xBF\xBE", 0, VALID},
    {"U+FFFF", "\xEF\xBF\xBF", 0, VALID},
    {"U+10000", "\xF0\x90\x80\x80", 0, VALID},
    {"U+FFFFF", "\xF3\xBF\xBF\xBF", 0, VALID},
    {"U+100000", "\xF4\x80\x80\x80", 0, VALID},
    {"U+10FFFF", "\xF4\x8F\xBF\xBF", 0, VALID},
    {"autobahn 6.2", "Hello-\xC2\xB5@\xC3\x9F\xC3\xB6\xC3\xA4\xC3\xBC\xC3\xA0\xC3\xA1-UTF-8!!", 0,
     VALID},
    {"kosme", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5", 0, VALID},
    {"multibyte across 8-byte word", "1234567\xC3\xA9" "89abcdef\xF0\x9F\x98\x80xyz", 0, VALID},
    {"ascii after multibyte", "\xC3\xA9" "0123456789abcdefghij", 0, VALID},

    /* above U+10FFFF */
    {"U+110000", "\xF4\x90\x80\x80", 0, 1},
    {"U+13FFFF", "\xF4\xBF\xBF\xBF", 0, 1},
    {"lead F5", "\xF5\x80\x80\x80", 0, 0},
    {"lead F7", "\xF7\xBF\xBF\xBF", 0, 0},
    {"lead FE", "\xFE", 0, 0},
    {"lead FF", "\xFF", 0, 0},

    /* overlongs */
    {"overlong / 2 bytes", "\xC0\xAF", 0, 0},
    {"overlong / 3 bytes", "\xE0\x80\xAF", 0, 1},
    {"overlong / 4 bytes", "\xF0\x80\x80\xAF", 0, 1},
    {"overlong / 5 bytes", "\xF8\x80\x80\x80\xAF", 0, 0},
    {"overlong / 6 bytes", "\xFC\x80\x80\x80\x80\xAF", 0, 0},
    {"overlong NUL 2 bytes", "\xC0\x80", 0, 0},
    {"overlong max 2 bytes", "\xC1\xBF", 0, 0},
    {"overlong max 3 bytes", "\xE0\x9F\xBF", 0, 1},
    {"overlong max 4 bytes", "\xF0\x8F\xBF\xBF", 0, 1},

    /* 5- and 6-byte forms */
    {"5 bytes U+200000", "\xF8\x88\x80\x80\x80", 0, 0},
    {"6 bytes U+4000000", "\xFC\x84\x80\x80\x80\x80", 0, 0},

    /* surrogates */
    {"U+D800", "\xED\xA0\x80", 0, 1},
    {"U+DB7F", "\xED\xAD\xBF", 0, 1},
    {"U+DC00", "\xED\xB0\x80", 0, 1},
    {"U+DFFF", "\xED\xBF\xBF", 0, 1},
    {"surrogate pair", "\xED\xA0\x80\xED\xB0\x80", 0, 1},
    {"kosme then surrogate", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE\xB5\xED\xA0\x80" "edited", 0,
     12},

    /* stray continuation bytes and bad sequences */
    {"lone 80", "\x80", 0, 0},
    {"lone BF", "\xBF", 0, 0},
    {"continuation in ascii", "a\x80" "b", 0, 1},
    {"extra continuation", "\xC2\x80\x80", 0, 2},
    {"lead then ascii", "\xC2" "A", 0, 1},
    {"3-byte lead then ascii", "\xE1\x80" "A", 0, 2},
    {"4-byte lead then lead", "\xF0\x90\xC2\x80", 0, 2},
    {"bad after 16 ascii", "0123456789abcdef\xFF", 0, 16},
    {"surrogate after 8 ascii", "01234567\xED\xA0\x80", 0, 9},
    {"bad at 23", "0123456789abcdefghijklm\xC0\x80" "xyz", 0, 23},

    /* truncated at the end */
    {"truncated 2 of 2", "\xC2", 0, INCOMPLETE},
    {"truncated 2 of 3", "\xE0\xA0", 0, INCOMPLETE},
    {"truncated 1 of 3", "\xED", 0, INCOMPLETE},
    {"truncated 3 of 4", "\xF0\x90\x80", 0, INCOMPLETE},
    {"truncated after ascii", "abc\xCE", 0, INCOMPLETE},
    {"kosme truncated", "\xCE\xBA\xE1\xBD\xB9\xCF\x83\xCE\xBC\xCE", 0, INCOMPLETE},
};

static size_t case_len(const struct utf8_case *c)
{
    return c->len ? c->len : strlen(c->bytes);
}

/* Feeds bytes[0..len) split into the chunks that end at the given cut
 * points, each chunk in its own allocation so ASan sees any overread.
 * Returns the index of the byte whose chunk failed (the first index of that
 * chunk when chunks are longer than one byte), or VALID/INCOMPLETE. */
static int feed_chunks(const uint8_t *bytes, size_t len, const size_t *cuts, size_t ncuts)
{
    utf8_state s;
    utf8_reset(&s);
    size_t start = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        size_t n = end - start;
        uint8_t *chunk = malloc(n ? n : 1);
        assert_non_null(chunk);
        memcpy(chunk, bytes + start, n);
        int r = utf8_feed(&s, chunk, n);
        free(chunk);
        if (r < 0)
            return (int)start;
        start = end;
    }
    return utf8_complete(&s) ? VALID : INCOMPLETE;
}

static void test_whole(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct utf8_case *c = &cases[i];
        const uint8_t *b = (const uint8_t *)c->bytes;
        size_t len = case_len(c);
        int want_ok = c->bad == VALID;
        if ((utf8_validate(b, len) == 0) != want_ok)
            fail_msg("%s: utf8_validate gave the wrong answer", c->name);
        utf8_state s;
        utf8_reset(&s);
        int r = utf8_feed(&s, b, len);
        if ((r < 0) != (c->bad >= 0))
            fail_msg("%s: utf8_feed returned %d", c->name, r);
        if (r == 0 && (utf8_complete(&s) != (c->bad == VALID)))
            fail_msg("%s: utf8_complete is wrong", c->name);
    }
}

/* One byte at a time: the error must come on the first impossible byte. */
static void test_bytewise_fail_fast(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct utf8_case *c = &cases[i];
        size_t len = case_len(c);
        size_t cuts[64];
        assert_true(len < 64);
        for (size_t k = 1; k < len; k++)
            cuts[k - 1] = k;
        int got = feed_chunks((const uint8_t *)c->bytes, len, cuts, len ? len - 1 : 0);
        if (got != c->bad)
            fail_msg("%s: one byte at a time gave %d, want %d", c->name, got, c->bad);
    }
}

/* Zero-initialised state (not utf8_reset) must work too. */
static void test_zero_state(void **state)
{
    (void)state;
    utf8_state s;
    memset(&s, 0, sizeof s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\xE2\x82\xAC", 3), 0);
    assert_true(utf8_complete(&s));
    memset(&s, 0, sizeof s);
    assert_int_equal(utf8_feed(&s, (const uint8_t *)"\x80", 1), -1);
}

/* Every split into two calls gives the same verdict as the whole. */
static void test_two_chunks(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct utf8_case *c = &cases[i];
        size_t len = case_len(c);
        for (size_t cut = 0; cut <= len; cut++) {
            int got = feed_chunks((const uint8_t *)c->bytes, len, &cut, 1);
            int want = c->bad;
            /* A failure is reported in the chunk holding the bad byte. */
            if (want >= 0)
                want = (size_t)want < cut ? 0 : (int)cut;
            if (got != want)
                fail_msg("%s: split at %zu gave %d, want %d", c->name, cut, got, want);
        }
    }
}

/* A bad or multibyte sequence at every position of an ASCII run, so each
 * byte lane of the 8-byte fast path is exercised. */
static void test_every_lane(void **state)
{
    (void)state;
    static const struct {
        const char *seq;
        int bad; /* offset of the failing byte within seq, or VALID */
    } seqs[] = {
        {"\x80", 0}, {"\xFF", 0}, {"\xC0\xAF", 0}, {"\xED\xA0\x80", 1},
        {"\xF4\x90\x80\x80", 1}, {"\xC3\xA9", VALID}, {"\xE2\x82\xAC", VALID},
        {"\xF0\x9F\x98\x80", VALID},
    };
    for (size_t k = 0; k < sizeof seqs / sizeof seqs[0]; k++) {
        size_t sl = strlen(seqs[k].seq);
        for (size_t pos = 0; pos < 24; pos++) {
            uint8_t b[40];
            memset(b, 'a', sizeof b);
            memcpy(b + pos, seqs[k].seq, sl);
            int want = seqs[k].bad == VALID ? VALID : (int)pos + seqs[k].bad;
            if ((utf8_validate(b, sizeof b) == 0) != (want == VALID))
                fail_msg("seq %zu at %zu: utf8_validate wrong", k, pos);
            size_t cuts[40];
            for (size_t i = 1; i < sizeof b; i++)
                cuts[i - 1] = i;
            int got = feed_chunks(b, sizeof b, cuts, sizeof b - 1);
            if (got != want)
                fail_msg("seq %zu at %zu: one byte at a time gave %d, want %d", k, pos, got, want);
        }
    }
}

/* Every 1-, 2-, 3- and 4-byte value from the lead byte's point of view:
 * checks the validator against a straightforward decoder. */
static int reference_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t n;
        uint8_t b = p[i];
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            n = 2, cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            n = 3, cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            n = 4, cp = b & 0x07;
        } else {
            return 0;
        }
        if (i + n > len)
            return 0;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n;
    }
    return 1;
}

static void test_exhaustive_short(void **state)
{
    (void)state;
    uint8_t b[3];
    /* all 2-byte strings, and 3-byte strings with a lead in E0..F4 */
    for (unsigned x = 0; x < 256; x++) {
        for (unsigned y = 0; y < 256; y++) {
            b[0] = (uint8_t)x, b[1] = (uint8_t)y;
            if ((utf8_validate(b, 2) == 0) != reference_valid(b, 2))
                fail_msg("mismatch on %02x %02x", x, y);
            if (x < 0xE0 || x > 0xF4)
                continue;
            for (unsigned z = 0; z < 256; z++) {
                b[2] = (uint8_t)z;
                if ((utf8_validate(b, 3) == 0) != reference_valid(b, 3))
                    fail_msg("mismatch on %02x %02x %02x", x, y, z);
            }
        }
    }
}

/* Every code point encoded by hand must be accepted. */
static void test_all_code_points(void **state)
{
    (void)state;
    uint8_t b[4];
    for (uint32_t cp = 0; cp <= 0x10FFFF; cp++) {
        size_t n;
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        if (cp < 0x80) {
            b[0] = (uint8_t)cp, n = 1;
        } else if (cp < 0x800) {
            b[0] = (uint8_t)(0xC0 | cp >> 6), b[1] = (uint8_t)(0x80 | (cp & 0x3F)), n = 2;
        } else if (cp < 0x10000) {
            b[0] = (uint8_t)(0xE0 | cp >> 12), b[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            b[2] = (uint8_t)(0x80 | (cp & 0x3F)), n = 3;
        } else {
            b[0] = (uint8_t)(0xF0 | cp >> 18), b[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            b[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)), b[3] = (uint8_t)(0x80 | (cp & 0x3F));
            n = 4;
        }
        if (utf8_validate(b, n) != 0)
            fail_msg("U+%04X rejected", (unsigned)cp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole),
        cmocka_unit_test(test_bytewise_fail_fast),
        cmocka_unit_test(test_zero_state),
        cmocka_unit_test(test_two_chunks),
        cmocka_unit_test(test_every_lane),
        cmocka_unit_test(test_exhaustive_short),
        cmocka_unit_test(test_all_code_points),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
