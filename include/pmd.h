/* pmd — permessage-deflate (RFC 7692) payloads with zlib, one message at a
 * time.
 *
 * chatd always negotiates server_no_context_takeover and
 * client_no_context_takeover, so no LZ77 window outlives a message: one
 * compressor and one decompressor serve every connection of a thread in
 * turn, and an idle connection holds no zlib state at all. Sans-I/O, no
 * logging. A pmd object belongs to one thread; its zlib streams and buffers
 * are allocated on first use.
 */
#ifndef CHATD_PMD_H
#define CHATD_PMD_H

#include <stddef.h>
#include <stdint.h>

/* The LZ77 window chatd compresses with: the protocol's largest (2^15
 * bytes), which serves any client_max_window_bits a client compresses with. */
#define PMD_WINDOW_BITS 15

typedef struct pmd pmd;

/* NULL when out of memory. */
pmd *pmd_new(void);
void pmd_free(pmd *z);

/* Compresses one message's payload: the deflate data with the 00 00 FF FF
 * that ends it removed (RFC 7692 7.2.1), ready to follow a frame header
 * with RSV1. Returns a pointer into z's buffer (valid until the next call
 * on z) with the length in *out_len, or NULL when out of memory. */
const uint8_t *pmd_deflate(pmd *z, const uint8_t *in, size_t len, size_t *out_len);

enum {
    PMD_OK = 0,
    PMD_TOO_BIG = -1, /* inflates to more than the limit (→ 1009) */
    PMD_BAD = -2,     /* not a deflate stream ended as RFC 7692 says (→ 1007) */
    PMD_NOMEM = -3,   /* (→ 1011) */
};

/* Inflates one compressed message (the payloads of its frames, joined),
 * appending the 00 00 FF FF its sender removed (RFC 7692 7.2.2). At most
 * limit + 1 bytes are ever produced: a message that inflates past limit is
 * PMD_TOO_BIG however small it is on the wire, at the cost of inflating
 * limit bytes. The data must end on a block boundary (as a sync flush
 * leaves it) or with the final block, with nothing behind it; no data at
 * all is taken for an empty message. On PMD_OK
 * *out points into z's buffer (valid until the next call on z) and
 * *out_len is the inflated length. */
int pmd_inflate(pmd *z, const uint8_t *in, size_t len, size_t limit, const uint8_t **out,
                size_t *out_len);

/* Gives back an output buffer that grew past what an ordinary message
 * needs: call once the output of the last call is no longer used. */
void pmd_trim(pmd *z);

#endif
