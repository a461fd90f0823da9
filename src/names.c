/* names — what a user or room name may be (see names.h). */
#include "names.h"

#include <stdint.h>

#include "ws.h"

int names_check(const char *s, size_t len, size_t max)
{
    if (len == 0)
        return NAMES_EMPTY;
    if (len > max)
        return NAMES_TOO_LONG;
    if (utf8_validate((const uint8_t *)s, len) != 0)
        return NAMES_BAD_UTF8;
    /* In valid UTF-8 every byte below 0x80 is an ASCII character of its
     * own, so looking at bytes finds exactly the control characters. */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F)
            return NAMES_CONTROL;
    }
    return NAMES_OK;
}
