/* libFuzzer target for the HTTP side of the handshake (handshake.h).
 *
 * Input: bytes 0-1 pick the head limit, byte 2 the split pattern and the
 * config (allowed_origins, auth_secret, name limits, web), the rest is what the
 * client sent. The request is parsed in one piece and in chunks; both must
 * reach the same verdict, and every response must be a well-formed HTTP
 * response of a status chatd sends.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "handshake.h"
#include "ws.h"
#include "fuzz.h"

static int known_status(int s)
{
    static const int ok[] = {101, 200, 304, 400, 401, 403, 404, 405, 426, 429, 431, 500, 503};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (s == ok[i])
            return 1;
    return 0;
}

/* A name as judged by hs_respond: 1..max bytes, UTF-8, no controls. */
static void check_name(const char *s, int max)
{
    size_t n = strnlen(s, HS_NAME_MAX + 1);
    CHECK(n >= 1 && n <= HS_NAME_MAX && n <= (size_t)max);
    CHECK(utf8_validate((const uint8_t *)s, n) == 0);
    for (size_t i = 0; i < n; i++)
        CHECK((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] != 0x7F);
}

static void check_result(const hs_result *res, const config *cfg)
{
    CHECK(res->response_len < HS_RESPONSE_MAX);
    CHECK(res->response_len > 12);
    CHECK(memcmp(res->response, "HTTP/1.1 ", 9) == 0);
    CHECK(known_status(res->status));
    char line[16];
    snprintf(line, sizeof line, "HTTP/1.1 %d ", res->status);
    CHECK(memcmp(res->response, line, strlen(line)) == 0);
    CHECK(memmem(res->response, res->response_len, "\r\n\r\n", 4) != NULL);
    CHECK(res->reason != NULL);
    /* Only a file of the web page has a body of its own, and only with 200. */
    CHECK(res->body == NULL ? res->body_len == 0 : res->status == 200 && res->body_len > 0);
    if (res->status == 101) {
        CHECK(res->upgrade == 1);
        CHECK(memmem(res->response, res->response_len, "\r\nSec-WebSocket-Accept: ", 24));
        check_name(res->username, cfg->max_username);
        check_name(res->room, cfg->max_room);
        /* permessage-deflate: answered exactly when accepted, always with
         * both no_context_takeover parameters */
        CHECK(res->deflate == 0 || (res->deflate >= 8 && res->deflate <= 15));
        const char *ext = memmem(res->response, res->response_len, "Sec-WebSocket-Extensions: ", 26);
        CHECK((ext != NULL) == (res->deflate != 0));
        if (ext)
            CHECK(memmem(res->response, res->response_len,
                         ": permessage-deflate; server_no_context_takeover; "
                         "client_no_context_takeover", 76));
    } else {
        CHECK(res->upgrade == 0);
        CHECK(res->deflate == 0);
    }
}

typedef struct verdict {
    int rc;          /* last hs_feed result */
    size_t consumed; /* bytes of the head (HS_DONE) */
    hs_result res;
} verdict;

/* Feeds in[0..len) in chunks of chunk() bytes (all at once when mode < 0)
 * and judges the request. */
static void handshake(verdict *v, const config *cfg, size_t max_head, const uint8_t *in,
                      size_t len, int mode, uint32_t x)
{
    hs_request *r = hs_request_new(max_head);
    CHECK(r);
    size_t at = 0, used;
    int rc = HS_MORE;
    v->consumed = 0;
    while (at < len) {
        size_t c = len - at;
        if (mode >= 0) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            size_t want = mode == 0 ? 1 : mode == 1 ? 1 + x % 8 : 1 + x % 200;
            c = want < c ? want : c;
        }
        rc = hs_feed(r, in + at, c, &used);
        CHECK(used <= c);
        if (rc == HS_MORE)
            CHECK(used == c);
        at += used;
        if (rc != HS_MORE)
            break;
    }
    if (rc == HS_DONE)
        v->consumed = at;
    v->rc = rc;

    /* Done and failed are final. */
    if (rc != HS_MORE) {
        rc = hs_feed(r, in, len, &used);
        CHECK(rc == v->rc && used == 0);
    }
    if (v->rc == HS_ERROR) {
        int st = hs_request_status(r);
        CHECK(st == 400 || st == 431);
        hs_error_response(&v->res, st, "bad request");
        check_result(&v->res, cfg);
    }
    hs_respond(r, cfg, &v->res);
    check_result(&v->res, cfg);
    if (v->rc != HS_DONE)
        CHECK(v->res.status != 101 && v->res.status != 200);
    hs_request_free(r);
}

/* The reason of an error response is arbitrary text; the response stays
 * whole whatever its length. */
static void fuzz_error_response(const uint8_t *in, size_t len, int status)
{
    char reason[1200];
    size_t n = len < sizeof reason - 1 ? len : sizeof reason - 1;
    memcpy(reason, in, n);
    reason[n] = '\0';
    hs_result res;
    memset(&res, 0, sizeof res);
    hs_error_response(&res, status, n & 1 ? reason : NULL);
    CHECK(res.response_len < HS_RESPONSE_MAX);
    CHECK(memcmp(res.response, "HTTP/1.1 ", 9) == 0);
    CHECK(res.status == status && res.upgrade == 0);
    CHECK(memmem(res.response, res.response_len, "\r\n\r\n", 4) != NULL);

    char out[64];
    size_t outlen = 1 + (len % sizeof out);
    int d = hs_url_decode((const char *)in, len < 200 ? len : 200, out, outlen);
    CHECK(d >= -1 && (d < 0 || ((size_t)d < outlen && out[d] == '\0' && strlen(out) == (size_t)d)));

    char accept[29];
    hs_accept_key((const char *)in, len, accept);
    CHECK(strlen(accept) == 28);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t max_head = 1 + ((size_t)data[0] << 8 | data[1]) % 10000;
    unsigned bits = data[2];
    const uint8_t *in = data + 3;
    size_t len = size - 3;

    static config cfg; /* big: keep it off the stack */
    char err[256];
    config_defaults(&cfg);
    if (bits & 0x04)
        CHECK(config_set(&cfg, "allowed_origins",
                         "http://localhost:5000, https://chat.example.com null", err,
                         sizeof err) == 0);
    if (bits & 0x08)
        CHECK(config_set(&cfg, "auth_secret", "fuzz-secret", err, sizeof err) == 0);
    if (bits & 0x10) {
        CHECK(config_set(&cfg, "max_username", "3", err, sizeof err) == 0);
        CHECK(config_set(&cfg, "max_room", "256", err, sizeof err) == 0);
    }
    if (bits & 0x20)
        CHECK(config_set(&cfg, "default_room", "k\xC3\xBC" "che", err, sizeof err) == 0);
    if (bits & 0x40)
        CHECK(config_set(&cfg, "web", "off", err, sizeof err) == 0);

    static verdict whole, split;
    handshake(&whole, &cfg, max_head, in, len, -1, 0);
    handshake(&split, &cfg, max_head, in, len, bits & 3, 0x9E3779B9u ^ bits);
    CHECK(whole.rc == split.rc && whole.consumed == split.consumed);
    CHECK(whole.res.status == split.res.status && whole.res.upgrade == split.res.upgrade);
    CHECK(strcmp(whole.res.username, split.res.username) == 0);
    CHECK(strcmp(whole.res.room, split.res.room) == 0);
    CHECK(whole.res.response_len == split.res.response_len &&
          memcmp(whole.res.response, split.res.response, whole.res.response_len) == 0);
    CHECK(whole.res.body == split.res.body && whole.res.body_len == split.res.body_len);

    fuzz_error_response(in, len, 100 + (int)(bits * 7 % 500));
    return 0;
}
