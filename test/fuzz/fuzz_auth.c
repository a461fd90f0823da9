/* libFuzzer target for token verification (auth.h).
 *
 * Input: byte 0 picks the mode and the size of the name buffer, the rest
 * is either a whole token (mode 0) or the JSON of a header and a payload
 * separated by a NUL byte (mode 1; no NUL: the payload under a standard
 * HS256 header). Mode 1 signs what it is given with the secret, so the
 * fuzzer reaches the claims behind the signature check, which a random
 * token never passes.
 *
 * Whatever the input: a refusal says why and leaves an empty name; an
 * acceptance leaves a name by the rules of ?username= that fits the buffer
 * (the buffer is allocated to its exact size, so ASan sees any overrun).
 * In mode 1 the verdict is also checked against a token signed with
 * another secret, which must be refused whenever the header is acceptable.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"
#include "ws.h"
#include "fuzz.h"

#define SECRET "fuzz-secret"
#define NOW ((time_t)1700000000)

static const char std_header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static size_t b64url(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = tab[v >> 18 & 63];
        out[o++] = tab[v >> 12 & 63];
        if (i + 1 < n)
            out[o++] = tab[v >> 6 & 63];
        if (i + 2 < n)
            out[o++] = tab[v & 63];
    }
    return o;
}

/* header.payload.signature of the two JSON texts, signed with secret, into
 * out (AUTH_TOKEN_MAX + 64 bytes). Returns its length or 0 if too long. */
static size_t sign(const uint8_t *h, size_t hn, const uint8_t *p, size_t pn, const char *secret,
                   char *out)
{
    if ((hn + 2) / 3 * 4 + (pn + 2) / 3 * 4 + 2 + 43 > AUTH_TOKEN_MAX)
        return 0;
    size_t n = b64url(h, hn, out);
    out[n++] = '.';
    n += b64url(p, pn, out + n);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    CHECK(HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)out, n, mac,
               &mac_len) != NULL);
    out[n++] = '.';
    n += b64url(mac, mac_len, out + n);
    return n;
}

/* Verifies and checks the contract; returns auth_verify's result. */
static int verify(const char *token, size_t len, size_t cap, const char **why)
{
    char *user = malloc(cap);
    CHECK(user != NULL);
    *why = NULL;
    int rc = auth_verify(SECRET, strlen(SECRET), token, len, NOW, user, cap, why);
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(*why != NULL && (*why)[0] != '\0');
        CHECK(user[0] == '\0');
    } else {
        size_t n = strnlen(user, cap);
        CHECK(n >= 1 && n < cap);
        CHECK(utf8_validate((const uint8_t *)user, n) == 0);
        for (size_t i = 0; i < n; i++)
            CHECK((unsigned char)user[i] >= 0x20 && (unsigned char)user[i] != 0x7F);
    }
    free(user);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t cap = 1 + (data[0] >> 1); /* 1..128 bytes for the name */
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    const char *why;

    if ((data[0] & 1) == 0) {
        verify((const char *)in, n, cap, &why);
        return 0;
    }

    const uint8_t *h = (const uint8_t *)std_header, *p = in;
    size_t hn = sizeof std_header - 1, pn = n;
    const uint8_t *nul = memchr(in, '\0', n);
    if (nul) {
        h = in;
        hn = (size_t)(nul - in);
        p = nul + 1;
        pn = n - hn - 1;
    }
    static char token[AUTH_TOKEN_MAX + 64];
    size_t len = sign(h, hn, p, pn, SECRET, token);
    if (len == 0)
        return 0;
    int rc = verify(token, len, cap, &why);

    /* The same token under another secret: refused, and for the signature
     * whenever the genuine one got past the header. */
    len = sign(h, hn, p, pn, "not-" SECRET, token);
    CHECK(len > 0);
    const char *why2;
    CHECK(verify(token, len, cap, &why2) == -1);
    if (rc == 0 || (why && strncmp(why, "token header", 12) != 0 &&
                    strcmp(why, "token alg must be HS256") != 0))
        CHECK(strcmp(why2, "token signature is wrong") == 0);
    return 0;
}
