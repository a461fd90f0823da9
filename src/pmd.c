/* pmd — permessage-deflate payloads with zlib (see pmd.h). */
#include "pmd.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

/* zlib's default level. A message is compressed once per node and written
 * to every client that negotiated deflate, so a better ratio is worth a
 * little more CPU; BENCHMARKS.md has the figures behind the choice. */
#define PMD_LEVEL 6
/* zlib's default memory level: 64 KiB of hash table, cleared by every
 * deflateReset (once per message per node, not per delivery). */
#define PMD_MEM_LEVEL 8
/* Output buffers larger than this are given back by pmd_trim: an ordinary
 * chat message needs far less, a 64 KiB max_message about this much. */
#define PMD_KEEP (256 * 1024)

struct pmd {
    z_stream def, inf;
    int def_ready, inf_ready;
    uint8_t *dbuf, *ibuf;
    size_t dcap, icap;
};

/* The four bytes a sync flush ends with: an empty stored block's LEN and
 * NLEN, which the sender removes and the receiver puts back. */
static const uint8_t tail[4] = {0x00, 0x00, 0xFF, 0xFF};

pmd *pmd_new(void) { return calloc(1, sizeof(pmd)); }

void pmd_free(pmd *z) {
    if (z == NULL) return;
    if (z->def_ready) deflateEnd(&z->def);
    if (z->inf_ready) inflateEnd(&z->inf);
    free(z->dbuf);
    free(z->ibuf);
    free(z);
}

/* Makes *buf hold at least need bytes, keeping what it holds. */
static int reserve(uint8_t **buf, size_t *cap, size_t need) {
    if (*cap >= need) return 0;
    uint8_t *p = realloc(*buf, need);
    if (p == NULL) return -1;
    *buf = p;
    *cap = need;
    return 0;
}

const uint8_t *pmd_deflate(pmd *z, const uint8_t *in, size_t len, size_t *out_len) {
    z_stream *s = &z->def;
    if (len > UINT_MAX / 2) return NULL;
    if (!z->def_ready) {
        if (deflateInit2(s, PMD_LEVEL, Z_DEFLATED, -PMD_WINDOW_BITS, PMD_MEM_LEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK)
            return NULL;
        z->def_ready = 1;
    } else if (deflateReset(s) != Z_OK) {
        return NULL;
    }
    /* deflateBound is for Z_FINISH; a sync flush adds at most an empty
     * stored block (5 bytes) and the bits of a block header before it. */
    size_t bound = deflateBound(s, (uLong)len) + 16;
    if (reserve(&z->dbuf, &z->dcap, bound) < 0) return NULL;
    s->next_in = (Bytef *)(uintptr_t)in; /* zlib's API is not const; it only reads */
    s->avail_in = (uInt)len;
    s->next_out = z->dbuf;
    s->avail_out = (uInt)(z->dcap < UINT_MAX ? z->dcap : UINT_MAX);
    int rc = deflate(s, Z_SYNC_FLUSH);
    size_t n = (size_t)(s->next_out - z->dbuf);
    /* Room left over proves the flush is complete. */
    if (rc != Z_OK || s->avail_in != 0 || s->avail_out == 0 || n < 4 ||
        memcmp(z->dbuf + n - 4, tail, 4) != 0)
        return NULL;
    *out_len = n - 4;
    return z->dbuf;
}

int pmd_inflate(pmd *z, const uint8_t *in, size_t len, size_t limit, const uint8_t **out,
                size_t *out_len) {
    z_stream *s = &z->inf;
    if (len > UINT_MAX / 2 || limit >= UINT_MAX / 2) return PMD_TOO_BIG;
    if (!z->inf_ready) {
        if (inflateInit2(s, -PMD_WINDOW_BITS) != Z_OK) return PMD_NOMEM;
        z->inf_ready = 1;
    } else if (inflateReset(s) != Z_OK) {
        return PMD_NOMEM;
    }
    if (len == 0) { /* not deflate data, but what a sender that skips its
                       compressor for an empty message would send */
        *out = (const uint8_t *)"";
        *out_len = 0;
        return PMD_OK;
    }
    s->next_in = (Bytef *)(uintptr_t)in;
    s->avail_in = (uInt)len;
    int tailed = 0;
    size_t have = 0, most = limit + 1; /* one byte past the limit tells */
    for (;;) {
        if (s->avail_in == 0 && !tailed) {
            s->next_in = (Bytef *)(uintptr_t)tail;
            s->avail_in = sizeof tail;
            tailed = 1;
        }
        size_t end = z->icap < most ? z->icap : most;
        if (have == end) { /* grow, by doubling, never past most */
            size_t cap = z->icap ? z->icap * 2 : 16384;
            if (reserve(&z->ibuf, &z->icap, cap < most ? cap : most) < 0) return PMD_NOMEM;
            end = z->icap < most ? z->icap : most;
        }
        s->next_out = z->ibuf + have;
        s->avail_out = (uInt)(end - have);
        uInt in_before = s->avail_in, out_before = s->avail_out;
        int rc = inflate(s, Z_SYNC_FLUSH);
        have += out_before - s->avail_out;
        if (have > limit) return PMD_TOO_BIG;
        if (rc == Z_STREAM_END) {
            /* A final block may end a message; client bytes behind it
             * may not. */
            if (!tailed && s->avail_in > 0) return PMD_BAD;
            break;
        }
        if (rc == Z_MEM_ERROR) return PMD_NOMEM;
        if (rc != Z_OK && rc != Z_BUF_ERROR) return PMD_BAD;
        if (tailed && s->avail_in == 0 && s->avail_out > 0) {
            /* Everything read, everything written: the data must have
             * stopped between blocks (bit 128: waiting for a block header),
             * not inside one. */
            if (!(s->data_type & 128)) return PMD_BAD;
            break;
        }
        if (s->avail_in == in_before && s->avail_out == out_before) return PMD_BAD; /* stuck */
    }
    *out = z->ibuf;
    *out_len = have;
    return PMD_OK;
}

void pmd_trim(pmd *z) {
    if (z->icap > PMD_KEEP) {
        free(z->ibuf);
        z->ibuf = NULL;
        z->icap = 0;
    }
    if (z->dcap > PMD_KEEP) {
        free(z->dbuf);
        z->dbuf = NULL;
        z->dcap = 0;
    }
}
