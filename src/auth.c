/* auth — HS256 JSON Web Token verification (RFC 7519), pure: a token, a
 * secret and the time in; a user name or a reason out. */
#include "auth.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ws.h"

#define SIG_LEN 32 /* HMAC-SHA256 */

static int fail(const char **why, const char *reason) {
    *why = reason;
    return -1;
}

static int b64url_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes unpadded base64url s[0..n) into out (cap bytes). Returns the
 * decoded length or -1. Unused low bits of the last character must be
 * zero, so every value has exactly one encoding. */
static long b64url_decode(const char *s, size_t n, unsigned char *out, size_t cap) {
    if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
        return -1;
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (uint32_t)v) & 0xFFFF;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (acc & ((1u << bits) - 1))
        return -1;
    return (long)o;
}

/* A JSON object from p[0..n), or NULL. A key given twice would leave it to
 * the parser which one counts; refuse that instead. */
static json_t *json_object_of(const unsigned char *p, size_t n) {
    json_t *j = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES, NULL);
    if (j && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

static int header_ok(json_t *h, const char **why) {
    json_t *alg = json_object_get(h, "alg");
    if (!json_is_string(alg) || json_string_length(alg) != 5 ||
        memcmp(json_string_value(alg), "HS256", 5) != 0)
        return fail(why, "token alg must be HS256");
    if (json_object_get(h, "crit"))
        return fail(why, "token header has crit");
    return 0;
}

/* The rules of ?username=: 1..max bytes of UTF-8, no control characters. */
static int name_ok(const char *s, size_t n, size_t max) {
    if (n == 0 || n > max || utf8_validate((const uint8_t *)s, n) != 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7F)
            return 0;
    return 1;
}

static int claims_ok(json_t *p, time_t now, char *user_out, size_t user_cap, int64_t *exp_out,
                     const char **why) {
    json_t *sub = json_object_get(p, "sub");
    if (!json_is_string(sub))
        return fail(why, "token sub must be a string");
    size_t n = json_string_length(sub);
    if (!name_ok(json_string_value(sub), n, user_cap - 1))
        return fail(why, "token sub is not a valid username");

    json_t *exp = json_object_get(p, "exp");
    if (!json_is_number(exp))
        return fail(why, "token exp must be a number");
    if (json_number_value(exp) <= (double)now)
        return fail(why, "token has expired");
    json_t *nbf = json_object_get(p, "nbf");
    if (nbf && !json_is_number(nbf))
        return fail(why, "token nbf must be a number");
    if (nbf && json_number_value(nbf) > (double)now)
        return fail(why, "token is not valid yet");

    if (exp_out) { /* refused from its exp second on: the first such second */
        double e = json_number_value(exp);
        int64_t t = e >= 9e15 ? INT64_MAX : (int64_t)e;
        *exp_out = t < INT64_MAX && (double)t < e ? t + 1 : t;
    }
    memcpy(user_out, json_string_value(sub), n);
    user_out[n] = '\0';
    return 0;
}

static int rooms_ok(json_t *p, auth_rooms *rooms, const char **why) {
    json_t *list = json_object_get(p, "rooms");
    rooms->present = list != NULL;
    rooms->list[0] = '\0';
    if (list == NULL)
        return 0;
    if (!json_is_array(list))
        return fail(why, "token rooms must be a list of room names");
    size_t used = 0, i;
    json_t *v;
    json_array_foreach(list, i, v) {
        size_t n = json_is_string(v) ? json_string_length(v) : 0;
        if (!name_ok(json_string_value(v), n, 256))
            return fail(why, "token rooms must be a list of room names");
        if (used + n + 2 > sizeof rooms->list)
            return fail(why, "token rooms is too long");
        memcpy(rooms->list + used, json_string_value(v), n);
        rooms->list[used + n] = '\0';
        used += n + 1;
    }
    rooms->list[used] = '\0';
    return 0;
}

int auth_rooms_allow(const char *list, const char *room, size_t len) {
    if (list == NULL)
        return 1;
    for (const char *p = list; *p; p += strlen(p) + 1) {
        size_t n = strlen(p);
        if (p[n - 1] == '*' ? len >= n - 1 && memcmp(room, p, n - 1) == 0
                            : n == len && memcmp(room, p, len) == 0)
            return 1;
    }
    return 0;
}

static const char sig_wrong[] = "token signature is wrong";

int auth_verify(const char *secret, size_t secret_len, const char *token, size_t len, time_t now,
                char *user_out, size_t user_cap, const char **why) {
    return auth_verify_rooms(secret, secret_len, token, len, now, user_out, user_cap, NULL, why);
}

int auth_verify_rooms(const char *secret, size_t secret_len, const char *token, size_t len,
                      time_t now, char *user_out, size_t user_cap, auth_rooms *rooms,
                      const char **why) {
    return auth_verify_exp(secret, secret_len, token, len, now, user_out, user_cap, rooms, NULL,
                           why);
}

int auth_verify_exp(const char *secret, size_t secret_len, const char *token, size_t len,
                    time_t now, char *user_out, size_t user_cap, auth_rooms *rooms, int64_t *exp,
                    const char **why) {
    if (user_cap == 0 || secret_len > INT_MAX)
        return fail(why, "internal error");
    user_out[0] = '\0';
    if (len > AUTH_TOKEN_MAX)
        return fail(why, "token is too long");

    /* header.payload.signature: exactly two dots. */
    const char *end = token + len;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1)))
        return fail(why, "token must be three parts");

    /* Decoded, the three parts take 3/4 of the token's bytes. */
    unsigned char buf[AUTH_TOKEN_MAX];
    const char *part[3] = {token, d1 + 1, d2 + 1};
    const char *part_end[3] = {d1, d2, end};
    unsigned char *dec[3];
    size_t dec_len[3];
    size_t used = 0;
    for (int i = 0; i < 3; i++) {
        long n = b64url_decode(part[i], (size_t)(part_end[i] - part[i]), buf + used,
                               sizeof buf - used);
        if (n < 0)
            return fail(why, "token is not base64url");
        dec[i] = buf + used;
        dec_len[i] = (size_t)n;
        used += (size_t)n;
    }

    json_t *h = json_object_of(dec[0], dec_len[0]);
    if (!h)
        return fail(why, "token header is not a JSON object");
    int rc = header_ok(h, why);
    json_decref(h);
    if (rc < 0)
        return rc;

    /* The MAC covers the bytes as received, not a re-encoding of them. */
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    if (!HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)token,
              (size_t)(d2 - token), mac, &mac_len) ||
        mac_len != SIG_LEN)
        return fail(why, "internal error");
    if (dec_len[2] != SIG_LEN || CRYPTO_memcmp(mac, dec[2], SIG_LEN) != 0)
        return fail(why, sig_wrong);

    json_t *p = json_object_of(dec[1], dec_len[1]);
    if (!p)
        return fail(why, "token payload is not a JSON object");
    rc = claims_ok(p, now, user_out, user_cap, exp, why);
    if (rc == 0 && rooms)
        rc = rooms_ok(p, rooms, why);
    if (rc < 0)
        user_out[0] = '\0';
    json_decref(p);
    return rc;
}

int auth_verify_either(const char *secret, const char *previous, const char *token, size_t len,
                       time_t now, char *user_out, size_t user_cap, auth_rooms *rooms,
                       int64_t *exp, const char **why) {
    int rc = auth_verify_exp(secret, strlen(secret), token, len, now, user_out, user_cap, rooms,
                             exp, why);
    /* Only a token the current secret did not sign goes on to the previous
     * one, so that a token it did sign keeps its own reason (expired...). */
    if (rc == 0 || previous == NULL || previous[0] == '\0' || *why != sig_wrong) return rc;
    return auth_verify_exp(previous, strlen(previous), token, len, now, user_out, user_cap, rooms,
                           exp, why);
}
