/* names — what a user or room name may be.
 *
 * Pure: no allocation, no logging; any thread may call it.
 */
#ifndef CHATD_NAMES_H
#define CHATD_NAMES_H

#include <stddef.h>

enum {
    NAMES_OK = 0,
    NAMES_EMPTY,    /* no bytes at all */
    NAMES_TOO_LONG, /* more than max bytes */
    NAMES_BAD_UTF8, /* not valid UTF-8 (overlong, surrogate, above U+10FFFF, cut) */
    NAMES_CONTROL,  /* a character below U+0020, or U+007F */
};

/* Judges s[0..len): a name is 1..max bytes of valid UTF-8 without control
 * characters. s may contain NUL (which is a control character); s may be
 * NULL when len is 0. Returns NAMES_OK or the first problem, in the order
 * of the enum. */
int names_check(const char *s, size_t len, size_t max);

#endif
