/* Unit tests for names_check: what a user or room name may be. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "names.h"

/* Checks s[0..len) from an allocation of exactly len bytes, so ASan sees a
 * read past the end (names are not NUL-terminated spans). */
static int check(const char *s, size_t len, size_t max)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, s, len);
    int r = names_check(copy, len, max);
    free(copy);
    return r;
}

static int check_str(const char *s, size_t max) { return check(s, strlen(s), max); }

static void test_valid(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "lobby",
        "a",
        "team-42",
        "with space",
        " ",
        "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
        "J\xC3\xBCrgen",             /* ü */
        "\xE2\x82\xAC",              /* € */
        "\xF0\x9F\x98\x80",          /* U+1F600 */
        "\xF4\x8F\xBF\xBF",          /* U+10FFFF */
        "\xC2\x80",                  /* U+0080: C1 controls are not refused */
        "\xC2\x85",                  /* U+0085 NEL */
        "\xC2\xA0",                  /* U+00A0 */
        "bom\xEF\xBB\xBF",           /* U+FEFF */
        "\xE2\x80\xA8",              /* U+2028 */
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (check_str(ok[i], 64) != NAMES_OK)
            fail_msg("case %zu (%s) refused", i, ok[i]);
}

static void test_empty(void **state)
{
    (void)state;
    assert_int_equal(names_check(NULL, 0, 64), NAMES_EMPTY);
    assert_int_equal(names_check("", 0, 64), NAMES_EMPTY);
    assert_int_equal(names_check("", 0, 0), NAMES_EMPTY); /* empty before too long */
    assert_int_equal(names_check("abc", 0, 64), NAMES_EMPTY); /* len, not strlen */
}

/* max counts bytes, not characters. */
static void test_length(void **state)
{
    (void)state;
    assert_int_equal(check_str("abcd", 4), NAMES_OK);
    assert_int_equal(check_str("abcde", 4), NAMES_TOO_LONG);
    assert_int_equal(check_str("a", 0), NAMES_TOO_LONG);
    assert_int_equal(check_str("\xC3\xBC", 2), NAMES_OK);
    assert_int_equal(check_str("\xC3\xBC", 1), NAMES_TOO_LONG);
    assert_int_equal(check_str("\xF0\x9F\x98\x80", 3), NAMES_TOO_LONG);

    char big[1001];
    memset(big, 'x', sizeof big);
    assert_int_equal(check(big, 1000, 1000), NAMES_OK);
    assert_int_equal(check(big, 1001, 1000), NAMES_TOO_LONG);
    assert_int_equal(check(big, 1001, SIZE_MAX), NAMES_OK);
}

static void test_bad_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "\xC0\xAF",             /* overlong '/' */
        "\xC0\x80",             /* overlong NUL */
        "\xC1\xBF",             /* overlong, 2 bytes */
        "\xE0\x80\xAF",         /* overlong, 3 bytes */
        "\xE0\x9F\xBF",
        "\xF0\x80\x80\xAF",     /* overlong, 4 bytes */
        "\xF0\x8F\xBF\xBF",
        "\xED\xA0\x80",         /* U+D800 */
        "\xED\xBF\xBF",         /* U+DFFF */
        "\xED\xA0\xBD\xED\xB8\x80", /* a surrogate pair (CESU-8) */
        "\xF4\x90\x80\x80",     /* U+110000 */
        "\xF5\x80\x80\x80",
        "\xF8\x88\x80\x80\x80", /* 5-byte form */
        "\xFE",
        "\xFF",
        "\x80",                 /* stray continuation */
        "ab\xBF",
        "\xC3",                 /* cut short */
        "room\xE2\x82",
        "\xF0\x9F\x98",
        "\xC3z",                /* lead then ASCII */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (check_str(bad[i], 64) != NAMES_BAD_UTF8)
            fail_msg("case %zu not refused as bad UTF-8", i);
    /* A name cut by len in the middle of a character is bad too. */
    assert_int_equal(check("\xC3\xBC", 1, 64), NAMES_BAD_UTF8);
}

static void test_control(void **state)
{
    (void)state;
    char s[3] = {'a', 0, 'b'};
    for (int c = 0; c < 0x20; c++) {
        s[1] = (char)c;
        if (check(s, 3, 64) != NAMES_CONTROL)
            fail_msg("control 0x%02x in the middle not refused", c);
        if (check(s + 1, 1, 64) != NAMES_CONTROL)
            fail_msg("control 0x%02x alone not refused", c);
    }
    s[1] = 0x7F;
    assert_int_equal(check(s, 3, 64), NAMES_CONTROL);
    assert_int_equal(check("\x7F", 1, 64), NAMES_CONTROL);
    assert_int_equal(check("ab\0", 3, 64), NAMES_CONTROL); /* a NUL at the end counts */
    assert_int_equal(check_str("tab\there", 64), NAMES_CONTROL);
    assert_int_equal(check_str("line\n", 64), NAMES_CONTROL);
    /* The edges: U+0020 and U+007E are fine. */
    assert_int_equal(check_str(" ~", 64), NAMES_OK);
}

/* The first problem in the enum's order is the one reported. */
static void test_order(void **state)
{
    (void)state;
    assert_int_equal(check_str("\xFF\xFF\xFF", 2), NAMES_TOO_LONG); /* long beats bad UTF-8 */
    assert_int_equal(check_str("\x01\x01\x01", 2), NAMES_TOO_LONG); /* long beats control */
    assert_int_equal(check_str("\x01\xFF", 64), NAMES_BAD_UTF8);    /* bad UTF-8 beats control */
    assert_int_equal(check_str("\xFF\x01", 64), NAMES_BAD_UTF8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),   cmocka_unit_test(test_empty),
        cmocka_unit_test(test_length),  cmocka_unit_test(test_bad_utf8),
        cmocka_unit_test(test_control), cmocka_unit_test(test_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
