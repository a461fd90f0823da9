/* Unit tests for handshake: the HTTP side of the WebSocket opening
 * handshake, fed from byte scripts. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "config.h"
#include "handshake.h"

#define MAX_HEAD 8192

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

#define GOOD_101                                                                                   \
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"            \
    "Sec-WebSocket-Accept: " ACCEPT "\r\n\r\n"

/* A request with the given request target, method, version and a block of
 * extra header lines (each ending in CRLF). */
#define REQ(method, target, version, headers) method " " target " " version "\r\n" headers "\r\n"

#define STD_HEADERS                                                                                \
    "Host: localhost:5000\r\n"                                                                     \
    "Upgrade: websocket\r\n"                                                                       \
    "Connection: Upgrade\r\n"                                                                      \
    "Sec-WebSocket-Key: " KEY "\r\n"                                                               \
    "Sec-WebSocket-Version: 13\r\n"

#define GOOD REQ("GET", "/?username=Alice", "HTTP/1.1", STD_HEADERS)

static config cfg;

static int setup(void **state) {
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    config_defaults(&cfg);
    /* Pin what the tests depend on, whatever the defaults become. */
    cfg.max_username = 8;
    cfg.max_room = 6;
    snprintf(cfg.default_room, sizeof cfg.default_room, "lobby");
    cfg.n_origins = 0;
    cfg.web = 0; /* the page's routes: test_web.c */
    return 0;
}

/* Feeds req in pieces: the cut points are cuts[0..ncuts), ascending. */
static int feed_pieces(hs_request *r, const char *req, size_t len, const size_t *cuts, size_t ncuts,
                       size_t *total_consumed) {
    size_t start = 0;
    *total_consumed = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        size_t used = 0;
        int rc = hs_feed(r, (const uint8_t *)req + start, end - start, &used);
        if (rc != HS_MORE) {
            *total_consumed += used;
            return rc;
        }
        assert_int_equal(used, end - start);
        *total_consumed += used;
        start = end;
    }
    return HS_MORE;
}

/* Feeds a whole request at once and judges it. Returns hs_feed's result. */
static int judge(const char *req, hs_result *res) {
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    size_t used = 0;
    size_t len = strlen(req);
    int rc = hs_feed(r, (const uint8_t *)req, len, &used);
    memset(res, 0, sizeof *res);
    if (rc == HS_DONE) {
        assert_int_equal(used, len);
        hs_respond(r, &cfg, res);
    } else if (rc == HS_ERROR) {
        res->status = hs_request_status(r);
    }
    hs_request_free(r);
    return rc;
}

static void assert_response_text(const hs_result *res) {
    assert_true(res->response_len > 0 && res->response_len < HS_RESPONSE_MAX);
    assert_int_equal(strlen(res->response), res->response_len);
}

/* Checks that res is a well-formed refusal with status and returns its
 * body. */
static const char *assert_refusal(const hs_result *res, int status) {
    char line[64];
    assert_int_equal(res->status, status);
    assert_int_equal(res->upgrade, 0);
    assert_non_null(res->reason);
    assert_response_text(res);
    snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
    assert_memory_equal(res->response, line, strlen(line));
    assert_non_null(strstr(res->response, "\r\nContent-Type: text/plain\r\n"));
    assert_non_null(strstr(res->response, "\r\nConnection: close\r\n"));
    const char *body = strstr(res->response, "\r\n\r\n");
    assert_non_null(body);
    body += 4;
    const char *cl = strstr(res->response, "\r\nContent-Length: ");
    assert_non_null(cl);
    assert_true(cl < body);
    assert_int_equal(strtoul(cl + 18, NULL, 10), strlen(body));
    /* The body is the reason, on one line. */
    assert_int_equal(strlen(body), strlen(res->reason) + 1);
    assert_memory_equal(body, res->reason, strlen(res->reason));
    assert_int_equal(body[strlen(body) - 1], '\n');
    return body;
}

static void assert_upgrade(const hs_result *res, const char *user, const char *room) {
    assert_int_equal(res->status, 101);
    assert_int_equal(res->upgrade, 1);
    assert_string_equal(res->response, GOOD_101);
    assert_int_equal(res->response_len, strlen(GOOD_101));
    assert_string_equal(res->username, user);
    assert_string_equal(res->room, room);
}

/* ---- accept key, URL decoding --------------------------------------- */

static void test_accept_key_rfc6455(void **state) {
    (void)state;
    char out[29];
    hs_accept_key(KEY, strlen(KEY), out);
    assert_string_equal(out, ACCEPT);
}

static void test_url_decode(void **state) {
    (void)state;
    char out[16];
    assert_int_equal(hs_url_decode("J%C3%BCrgen", 11, out, sizeof out), 7);
    assert_string_equal(out, "J\xc3\xbcrgen");
    assert_int_equal(hs_url_decode("a+b", 3, out, sizeof out), 3);
    assert_string_equal(out, "a b");
    assert_int_equal(hs_url_decode("%4a%4A", 6, out, sizeof out), 2);
    assert_string_equal(out, "JJ");
    assert_int_equal(hs_url_decode("", 0, out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(hs_url_decode("%2", 2, out, sizeof out), -1);
    assert_int_equal(hs_url_decode("%", 1, out, sizeof out), -1);
    assert_int_equal(hs_url_decode("%zz", 3, out, sizeof out), -1);
    assert_int_equal(hs_url_decode("a%00b", 5, out, sizeof out), -1);
    /* Exactly fits with the NUL; one more does not. */
    assert_int_equal(hs_url_decode("abc", 3, out, 4), 3);
    assert_int_equal(hs_url_decode("abcd", 4, out, 4), -1);
    assert_int_equal(hs_url_decode("%41%41%41%41", 12, out, 4), -1);
    assert_int_equal(hs_url_decode("", 0, out, 0), -1);
}

/* ---- feeding ---------------------------------------------------------- */

static void test_upgrade_whole(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(GOOD, &res), HS_DONE);
    assert_upgrade(&res, "Alice", "lobby");
}

static void test_upgrade_byte_by_byte(void **state) {
    (void)state;
    const char *req = GOOD;
    size_t len = strlen(req);
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    for (size_t i = 0; i < len; i++) {
        size_t used = 99;
        int rc = hs_feed(r, (const uint8_t *)req + i, 1, &used);
        if (i + 1 < len) {
            assert_int_equal(rc, HS_MORE);
            assert_int_equal(used, 1);
        } else {
            assert_int_equal(rc, HS_DONE);
            assert_int_equal(used, 1);
        }
    }
    hs_result res;
    hs_respond(r, &cfg, &res);
    assert_upgrade(&res, "Alice", "lobby");
    hs_request_free(r);
}

/* Every way of cutting the request into two or three pieces gives the same
 * verdict and response. */
static void test_upgrade_split_everywhere(void **state) {
    (void)state;
    const char *req = REQ("GET", "/?username=J%C3%BCrgen&room=a+b", "HTTP/1.1",
                          "Host: localhost:5000\r\n"
                          "Upgrade: websocket\r\n"
                          "Connection: keep-alive, Upgrade\r\n"
                          "Sec-WebSocket-Key: " KEY "\r\n"
                          "Origin: http://localhost:5000\r\n"
                          "Sec-WebSocket-Protocol: chat\r\n"
                          "Sec-WebSocket-Version: 13\r\n");
    size_t len = strlen(req);
    hs_result want;
    assert_int_equal(judge(req, &want), HS_DONE);
    assert_upgrade(&want, "J\xc3\xbcrgen", "a b");

    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            size_t cuts[2] = {i, j};
            size_t used;
            hs_request *r = hs_request_new(MAX_HEAD);
            assert_non_null(r);
            assert_int_equal(feed_pieces(r, req, len, cuts, 2, &used), HS_DONE);
            assert_int_equal(used, len);
            hs_result res;
            hs_respond(r, &cfg, &res);
            assert_int_equal(res.status, 101);
            assert_int_equal(res.response_len, want.response_len);
            assert_memory_equal(res.response, want.response, want.response_len);
            assert_string_equal(res.username, want.username);
            assert_string_equal(res.room, want.room);
            hs_request_free(r);
        }
    }
}

/* The client's first frame arrives in the same packet as the request. */
static void test_bytes_behind_request_preserved(void **state) {
    (void)state;
    static const uint8_t frame[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                    0x7f, 0x9f, 0x4d, 0x51, 0x58}; /* "Hello" */
    const char *req = GOOD;
    size_t rlen = strlen(req);
    uint8_t buf[1024];
    memcpy(buf, req, rlen);
    memcpy(buf + rlen, frame, sizeof frame);
    size_t len = rlen + sizeof frame;

    /* In one piece. */
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    size_t used = 0;
    assert_int_equal(hs_feed(r, buf, len, &used), HS_DONE);
    assert_int_equal(used, rlen);
    assert_true(used < len);
    assert_memory_equal(buf + used, frame, sizeof frame);
    hs_result res;
    hs_respond(r, &cfg, &res);
    assert_upgrade(&res, "Alice", "lobby");
    /* Feeding after DONE takes nothing. */
    assert_int_equal(hs_feed(r, frame, sizeof frame, &used), HS_DONE);
    assert_int_equal(used, 0);
    hs_request_free(r);

    /* The head's end and the frame in a later piece, cut at each point. */
    for (size_t cut = 0; cut < rlen; cut++) {
        r = hs_request_new(MAX_HEAD);
        assert_non_null(r);
        assert_int_equal(hs_feed(r, buf, cut, &used), HS_MORE);
        assert_int_equal(used, cut);
        assert_int_equal(hs_feed(r, buf + cut, len - cut, &used), HS_DONE);
        assert_int_equal(used, rlen - cut);
        assert_memory_equal(buf + cut + used, frame, sizeof frame);
        hs_request_free(r);
    }
}

static void test_healthz(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(REQ("GET", "/healthz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.upgrade, 0);
    assert_response_text(&res);
    assert_memory_equal(res.response, "HTTP/1.1 200 OK\r\n", 17);
    assert_non_null(strstr(res.response, "\r\nContent-Length: 3\r\n"));
    const char *body = strstr(res.response, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "ok\n");

    /* A pipelined second request stays behind, unconsumed. */
    const char *two = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    size_t used;
    assert_int_equal(hs_feed(r, (const uint8_t *)two, strlen(two), &used), HS_DONE);
    assert_int_equal(used, strlen("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
    hs_request_free(r);

    /* Only GET. */
    assert_int_equal(judge(REQ("POST", "/healthz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 405);
    assert_int_equal(res.metrics, 0);
}

/* /readyz: 200 "ready" marked for the acceptor, which knows the broker and
 * the drain and may turn it into a 503; only GET, only that exact path.
 * /healthz is marked too, so the acceptor can name a broker problem. */
static void test_readyz(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(REQ("GET", "/readyz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.upgrade, 0);
    assert_int_equal(res.ready_check, 1);
    assert_int_equal(res.health_check, 0);
    assert_int_equal(res.metrics, 0);
    assert_response_text(&res);
    assert_non_null(strstr(res.response, "\r\nContent-Length: 6\r\n\r\nready\n"));
    assert_int_equal(judge(REQ("GET", "/readyz?verbose", "HTTP/1.1", "Host: x\r\n"), &res),
                     HS_DONE);
    assert_int_equal(res.ready_check, 1);

    assert_int_equal(judge(REQ("POST", "/readyz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 405);
    assert_int_equal(res.ready_check, 0);
    assert_int_equal(judge(REQ("HEAD", "/readyz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 405);
    assert_int_equal(judge(REQ("GET", "/readyzz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 404);
    assert_int_equal(res.ready_check, 0);
    assert_int_equal(judge(REQ("GET", "/ready", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 404);
    assert_int_equal(judge(GOOD, &res), HS_DONE);
    assert_int_equal(res.ready_check, 0);
    assert_int_equal(res.health_check, 0);

    assert_int_equal(judge(REQ("GET", "/healthz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_int_equal(res.health_check, 1);
    assert_int_equal(res.ready_check, 0);

    /* The acceptor's 503 replaces the answer and clears the marks. */
    assert_int_equal(judge(REQ("GET", "/readyz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    hs_error_response(&res, 503, "draining");
    assert_string_equal(assert_refusal(&res, 503), "draining\n");
    assert_int_equal(res.ready_check, 0);
    hs_text_response(&res, 200, "ok\nbroker: down\n");
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.response, "\r\nContent-Length: 16\r\n\r\nok\nbroker: down\n"));
}

/* Every control byte (C0 and DEL) is refused in a user or room name, one
 * by one: a check off by one (c < 0x1F) must not pass; space and the
 * printable bytes around the edges are names like any other. */
static void test_name_control_bytes(void **state) {
    (void)state;
    char req[512];
    hs_result res;
    for (int c = 0x01; c <= 0x7F; c++) {
        int control = c < 0x20 || c == 0x7F;
        if (!control && c != 0x20 && c != 0x21 && c != 0x7E) continue;
        snprintf(req, sizeof req, REQ("GET", "/?username=a%%%02Xb", "HTTP/1.1", STD_HEADERS), c);
        print_message("  username byte 0x%02X\n", c);
        assert_int_equal(judge(req, &res), HS_DONE);
        if (control) {
            assert_refusal(&res, 400);
            assert_string_equal(res.reason, "username contains a control character");
        } else {
            assert_int_equal(res.upgrade, 1);
        }
        snprintf(req, sizeof req,
                 REQ("GET", "/?username=a&room=r%%%02X", "HTTP/1.1", STD_HEADERS), c);
        assert_int_equal(judge(req, &res), HS_DONE);
        if (control) {
            assert_refusal(&res, 400);
            assert_string_equal(res.reason, "room contains a control character");
        } else {
            assert_int_equal(res.upgrade, 1);
        }
    }
}

/* /metrics is marked for the acceptor, which has the counters; only GET,
 * and only that exact path. */
static void test_metrics(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(REQ("GET", "/metrics", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.upgrade, 0);
    assert_int_equal(res.metrics, 1);
    assert_response_text(&res);
    assert_int_equal(judge(REQ("GET", "/metrics?x=1", "HTTP/1.1", "Host: x\r\n"), &res),
                     HS_DONE);
    assert_int_equal(res.metrics, 1);

    assert_int_equal(judge(REQ("POST", "/metrics", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 405);
    assert_int_equal(res.metrics, 0);
    assert_int_equal(judge(REQ("GET", "/metricsz", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_refusal(&res, 404);
    assert_int_equal(res.metrics, 0);
    assert_int_equal(judge(GOOD, &res), HS_DONE);
    assert_int_equal(res.metrics, 0);
}

/* ---- refusals --------------------------------------------------------- */

typedef struct refusal {
    const char *name;
    const char *req;
    int status;
} refusal;

static const refusal refusals[] = {
    {"no key",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"key too short",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"key of 17 bytes",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZTE=\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"key not base64",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25*ZQ==\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"two keys",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Key: " KEY "\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"no upgrade header",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n"),
     400},
    {"plain GET /", REQ("GET", "/", "HTTP/1.1", "Host: x\r\n"), 400},
    {"upgrade to h2c",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n"),
     400},
    {"no connection upgrade",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
         "Sec-WebSocket-Key: " KEY "\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"no connection header",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\n"
         "Sec-WebSocket-Key: " KEY "\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"connection token is only a prefix",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\n"
         "Connection: upgrades\r\n"
         "Sec-WebSocket-Key: " KEY "\r\n"
         "Sec-WebSocket-Version: 13\r\n"),
     400},
    {"missing username", REQ("GET", "/?room=r", "HTTP/1.1", STD_HEADERS), 400},
    {"no query", REQ("GET", "/", "HTTP/1.1", STD_HEADERS), 400},
    {"empty username", REQ("GET", "/?username=", "HTTP/1.1", STD_HEADERS), 400},
    {"username without =", REQ("GET", "/?username", "HTTP/1.1", STD_HEADERS), 400},
    {"username too long", REQ("GET", "/?username=abcdefghi", "HTTP/1.1", STD_HEADERS), 400},
    {"username over HS_NAME_MAX",
     REQ("GET",
         "/?username="
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
         "aaaaaaaaaaaa",
         "HTTP/1.1", STD_HEADERS),
     400},
    {"username with control char", REQ("GET", "/?username=a%0Ab", "HTTP/1.1", STD_HEADERS), 400},
    {"username with DEL", REQ("GET", "/?username=a%7F", "HTTP/1.1", STD_HEADERS), 400},
    {"username not UTF-8", REQ("GET", "/?username=a%C3", "HTTP/1.1", STD_HEADERS), 400},
    {"username with NUL", REQ("GET", "/?username=a%00", "HTTP/1.1", STD_HEADERS), 400},
    {"bad percent escape", REQ("GET", "/?username=a%zz", "HTTP/1.1", STD_HEADERS), 400},
    {"cut percent escape", REQ("GET", "/?username=a%4", "HTTP/1.1", STD_HEADERS), 400},
    {"room too long", REQ("GET", "/?username=a&room=abcdefg", "HTTP/1.1", STD_HEADERS), 400},
    {"room empty", REQ("GET", "/?username=a&room=", "HTTP/1.1", STD_HEADERS), 400},
    {"room with control char", REQ("GET", "/?username=a&room=%09", "HTTP/1.1", STD_HEADERS), 400},
    {"HTTP/1.0", REQ("GET", "/?username=a", "HTTP/1.0", STD_HEADERS), 400},
    {"missing Host",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n"),
     400},
    {"two Hosts", REQ("GET", "/?username=a", "HTTP/1.1", "Host: y\r\n" STD_HEADERS), 400},
    {"version 8",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 8\r\n"),
     426},
    {"missing version",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\n"),
     426},
    {"version 130",
     REQ("GET", "/?username=a", "HTTP/1.1",
         "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 130\r\n"),
     426},
    {"POST", REQ("POST", "/?username=a", "HTTP/1.1", STD_HEADERS), 405},
    {"HEAD", REQ("HEAD", "/?username=a", "HTTP/1.1", STD_HEADERS), 405},
    {"other path", REQ("GET", "/other?username=a", "HTTP/1.1", STD_HEADERS), 404},
    {"path with trailing slash", REQ("GET", "//?username=a", "HTTP/1.1", STD_HEADERS), 404},
    {"POST to other path", REQ("POST", "/other", "HTTP/1.1", "Host: x\r\n"), 404},
    {"healthz with a longer name", REQ("GET", "/healthzz", "HTTP/1.1", "Host: x\r\n"), 404},
    {"absolute form", REQ("GET", "http://x/?username=a", "HTTP/1.1", STD_HEADERS), 404},
};

static void test_refusals(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
        const refusal *t = &refusals[i];
        hs_result res;
        print_message("  %s\n", t->name);
        assert_int_equal(judge(t->req, &res), HS_DONE);
        assert_refusal(&res, t->status);
        assert_string_equal(res.username, "");
        int has_version = strstr(res.response, "\r\nSec-WebSocket-Version: 13\r\n") != NULL;
        assert_int_equal(has_version, t->status == 426);
        int has_allow = strstr(res.response, "\r\nAllow: GET\r\n") != NULL;
        assert_int_equal(has_allow, t->status == 405);
    }
}

static void test_refusal_reasons(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(REQ("GET", "/", "HTTP/1.1", "Host: x\r\n"), &res), HS_DONE);
    assert_string_equal(assert_refusal(&res, 400), "expected a WebSocket upgrade\n");
    assert_int_equal(judge(REQ("GET", "/?room=r", "HTTP/1.1", STD_HEADERS), &res), HS_DONE);
    assert_string_equal(res.reason, "username is required");
    assert_int_equal(judge(REQ("GET", "/?username=abcdefghi", "HTTP/1.1", STD_HEADERS), &res),
                     HS_DONE);
    assert_string_equal(res.reason, "username is too long");
    assert_int_equal(judge(REQ("GET", "/?username=a&room=abcdefg", "HTTP/1.1", STD_HEADERS), &res),
                     HS_DONE);
    assert_string_equal(res.reason, "room is too long");
}

/* ---- Origin ----------------------------------------------------------- */

static void test_origin(void **state) {
    (void)state;
    hs_result res;
    snprintf(cfg.allowed_origins[0], sizeof cfg.allowed_origins[0], "https://chat.example");
    snprintf(cfg.allowed_origins[1], sizeof cfg.allowed_origins[1], "http://localhost:5000");
    cfg.n_origins = 2;

    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "Origin: https://evil.example\r\n"),
                           &res),
                     HS_DONE);
    assert_refusal(&res, 403);
    /* Exact match only: a prefix or a longer string does not pass. */
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "Origin: https://chat.example.evil\r\n"),
                           &res),
                     HS_DONE);
    assert_refusal(&res, 403);
    assert_int_equal(
        judge(REQ("GET", "/?username=a", "HTTP/1.1", STD_HEADERS "Origin: https://chat.exampl\r\n"),
              &res),
        HS_DONE);
    assert_refusal(&res, 403);
    /* Two Origin headers are one too many. */
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "Origin: https://chat.example\r\n"
                                           "Origin: https://chat.example\r\n"),
                           &res),
                     HS_DONE);
    assert_refusal(&res, 403);

    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "Origin: https://chat.example\r\n"),
                           &res),
                     HS_DONE);
    assert_upgrade(&res, "a", "lobby");
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "origin: HTTP://LocalHost:5000\r\n"),
                           &res),
                     HS_DONE);
    assert_upgrade(&res, "a", "lobby");
    /* No Origin: a non-browser client. */
    assert_int_equal(judge(GOOD, &res), HS_DONE);
    assert_upgrade(&res, "Alice", "lobby");

    /* Without an allow-list any origin passes. */
    cfg.n_origins = 0;
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               STD_HEADERS "Origin: https://evil.example\r\n"),
                           &res),
                     HS_DONE);
    assert_upgrade(&res, "a", "lobby");
}

/* ---- parse errors and limits ------------------------------------------ */

static void test_head_too_large(void **state) {
    (void)state;
    char big[4096];
    int n = snprintf(big, sizeof big, "GET /?username=a HTTP/1.1\r\n" STD_HEADERS "X-Pad: ");
    memset(big + n, 'p', 2000);
    memcpy(big + n + 2000, "\r\n\r\n", 5);
    size_t len = strlen(big);
    size_t used;

    /* In one piece. */
    hs_request *r = hs_request_new(1024);
    assert_non_null(r);
    assert_int_equal(hs_feed(r, (const uint8_t *)big, len, &used), HS_ERROR);
    assert_int_equal(hs_request_status(r), 431);
    assert_int_equal(hs_feed(r, (const uint8_t *)big, 1, &used), HS_ERROR);
    hs_request_free(r);

    /* A byte at a time: fails at the byte that reaches the limit. */
    r = hs_request_new(1024);
    assert_non_null(r);
    size_t i;
    int rc = HS_MORE;
    for (i = 0; i < len && rc == HS_MORE; i++)
        rc = hs_feed(r, (const uint8_t *)big + i, 1, &used);
    assert_int_equal(rc, HS_ERROR);
    assert_int_equal(i, 1024);
    assert_int_equal(hs_request_status(r), 431);
    hs_request_free(r);

    /* A head of exactly max_head bytes is fine, and whatever follows it
     * is not counted. */
    const char *req = GOOD;
    size_t rlen = strlen(req);
    char buf[1024];
    memcpy(buf, req, rlen);
    memset(buf + rlen, 0x81, 100);
    r = hs_request_new(rlen);
    assert_non_null(r);
    assert_int_equal(hs_feed(r, (const uint8_t *)buf, rlen + 100, &used), HS_DONE);
    assert_int_equal(used, rlen);
    hs_result res;
    hs_respond(r, &cfg, &res);
    assert_upgrade(&res, "Alice", "lobby");
    hs_request_free(r);

    /* One byte less is too large. */
    r = hs_request_new(rlen - 1);
    assert_non_null(r);
    assert_int_equal(hs_feed(r, (const uint8_t *)buf, rlen + 100, &used), HS_ERROR);
    assert_int_equal(hs_request_status(r), 431);
    hs_request_free(r);
}

/* X-Forwarded-For: its lines joined in order (the proxy nearest to us
 * adds the last); past XFF_LINES_MAX lines it is not kept at all. */
static void test_forwarded_for(void **state) {
    (void)state;
    char req[2048];
    size_t n = (size_t)snprintf(req, sizeof req,
                                "GET /?username=a HTTP/1.1\r\nHost: x\r\n"
                                "X-Forwarded-For: 1.1.1.1\r\nSec-WebSocket-Protocol: a\r\n"
                                "x-forwarded-for:  2.2.2.2 , 3.3.3.3 \r\nSec-WebSocket-Protocol: b\r\n\r\n");
    hs_request *r = hs_request_new(MAX_HEAD);
    size_t used = 0, len = 0;
    assert_int_equal(hs_feed(r, (const uint8_t *)req, n, &used), HS_DONE);
    const char *v = hs_forwarded_for(r, &len);
    assert_non_null(v);
    assert_int_equal(len, strlen("1.1.1.1, 2.2.2.2 , 3.3.3.3"));
    assert_memory_equal(v, "1.1.1.1, 2.2.2.2 , 3.3.3.3", len);
    hs_request_free(r);

    r = hs_request_new(MAX_HEAD);
    assert_int_equal(hs_feed(r, (const uint8_t *)"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 29, &used),
                     HS_DONE);
    assert_null(hs_forwarded_for(r, &len));
    hs_request_free(r);

    n = (size_t)snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 9; i++)
        n += (size_t)snprintf(req + n, sizeof req - n, "X-Forwarded-For: 10.0.0.%d\r\n", i);
    n += (size_t)snprintf(req + n, sizeof req - n, "\r\n");
    r = hs_request_new(MAX_HEAD);
    assert_int_equal(hs_feed(r, (const uint8_t *)req, n, &used), HS_DONE);
    assert_null(hs_forwarded_for(r, &len));
    hs_request_free(r);
}

static void test_malformed(void **state) {
    (void)state;
    static const char *const bad[] = {
        "GARBAGE\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        "GET / FTP/1.1\r\nHost: x\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost x\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", /* a TLS ClientHello */
        /* Requests with a body. */
        "GET /?username=a HTTP/1.1\r\n" STD_HEADERS "Content-Length: 5\r\n\r\nhello",
        "GET /?username=a HTTP/1.1\r\n" STD_HEADERS "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hs_result res;
        print_message("  %zu\n", i);
        assert_int_equal(judge(bad[i], &res), HS_ERROR);
        assert_int_equal(res.status, 400);
    }

    /* A body of zero length is no body. */
    hs_result res;
    assert_int_equal(
        judge(REQ("GET", "/?username=a", "HTTP/1.1", STD_HEADERS "Content-Length: 0\r\n"), &res),
        HS_DONE);
    assert_upgrade(&res, "a", "lobby");
}

/* ---- query and headers ------------------------------------------------ */

static void test_percent_decoding(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(
        judge(REQ("GET", "/?username=J%C3%BCrgen&room=a+b", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_upgrade(&res, "J\xc3\xbcrgen", "a b");
    assert_int_equal(
        judge(REQ("GET", "/?room=%72%6F%6f%6D&username=a+b", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_upgrade(&res, "a b", "room");
}

static void test_query_rules(void **state) {
    (void)state;
    hs_result res;
    /* Default room, unknown parameters ignored, empty pairs skipped. */
    assert_int_equal(judge(REQ("GET", "/?x=1&&username=bob&y", "HTTP/1.1", STD_HEADERS), &res),
                     HS_DONE);
    assert_upgrade(&res, "bob", "lobby");
    /* The first of a repeated parameter wins. */
    assert_int_equal(
        judge(REQ("GET", "/?username=one&room=r1&username=two&room=r2", "HTTP/1.1", STD_HEADERS),
              &res),
        HS_DONE);
    assert_upgrade(&res, "one", "r1");
    /* Names are exact: a longer or shorter name is another parameter. */
    assert_int_equal(
        judge(REQ("GET", "/?usernames=x&user=y&username=z", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_upgrade(&res, "z", "lobby");
    /* Lengths at the limits pass. */
    assert_int_equal(
        judge(REQ("GET", "/?username=abcdefgh&room=abcdef", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_upgrade(&res, "abcdefgh", "abcdef");
    /* The limit is in bytes: "ü" is two. */
    assert_int_equal(
        judge(REQ("GET", "/?username=%C3%BC%C3%BC%C3%BC%C3%BC", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_upgrade(&res, "\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc", "lobby");
    assert_int_equal(
        judge(REQ("GET", "/?username=%C3%BC%C3%BC%C3%BC%C3%BCx", "HTTP/1.1", STD_HEADERS), &res),
        HS_DONE);
    assert_refusal(&res, 400);
}

static void test_header_forms(void **state) {
    (void)state;
    hs_result res;
    /* Names in any case, values with extra whitespace, token lists, and
     * repeated list headers interleaved with others. */
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               "sec-websocket-protocol: chat\r\n"
                               "HOST: x\r\n"
                               "upgrade:   WebSocket  \r\n"
                               "Sec-WebSocket-Protocol: superchat\r\n"
                               "CONNECTION: keep-alive\r\n"
                               "SEC-WEBSOCKET-KEY:   " KEY "  \r\n"
                               "Sec-WebSocket-Protocol: v2\r\n"
                               "X-Long-Header-Name-That-Does-Not-Fit-The-Buffer: 1\r\n"
                               "connection: foo,\tUPGRADE \r\n"
                               "sec-websocket-version:13\r\n"),
                           &res),
                     HS_DONE);
    assert_upgrade(&res, "a", "lobby");

    /* Same, fed a byte at a time. */
    const char *req = REQ("GET", "/?username=a", "HTTP/1.1",
                          "Sec-WebSocket-Protocol: chat\r\n"
                          "Host: x\r\n"
                          "Sec-WebSocket-Protocol: superchat\r\n"
                          "Connection: Upgrade\r\n"
                          "Sec-WebSocket-Key: " KEY "\r\n"
                          "Upgrade: websocket\r\n"
                          "Sec-WebSocket-Protocol: v2\r\n"
                          "Sec-WebSocket-Version: 13\r\n");
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    size_t used;
    int rc = HS_MORE;
    for (size_t i = 0; req[i] && rc == HS_MORE; i++)
        rc = hs_feed(r, (const uint8_t *)req + i, 1, &used);
    assert_int_equal(rc, HS_DONE);
    hs_respond(r, &cfg, &res);
    assert_upgrade(&res, "a", "lobby");
    hs_request_free(r);

    /* Upgrade as one token of several. */
    assert_int_equal(judge(REQ("GET", "/?username=a", "HTTP/1.1",
                               "Host: x\r\nUpgrade: h2c, websocket\r\n"
                               "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\n"
                               "Sec-WebSocket-Version: 13\r\n"),
                           &res),
                     HS_DONE);
    assert_upgrade(&res, "a", "lobby");
}

/* Thousands of repeated header lines in a large head: every occurrence
 * of a list header counts, and the work stays linear. */
static void test_many_header_lines(void **state) {
    (void)state;
    size_t cap = 1 << 20;
    char *req = malloc(cap);
    assert_non_null(req);
    size_t n = (size_t)snprintf(req, cap, "GET /?username=a HTTP/1.1\r\nHost: x\r\n");
    static const char *const lines[] = {
        "Connection: keep-alive\r\n",
        "Upgrade: h2c\r\n",
        "Sec-WebSocket-Protocol: p\r\n",
        "X-Other: 1\r\n",
    };
    for (int i = 0; n < cap - 1000; i++) {
        const char *l = lines[i % 4];
        memcpy(req + n, l, strlen(l));
        n += strlen(l);
    }
    n += (size_t)snprintf(req + n, cap - n,
                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n");
    hs_request *r = hs_request_new(cap);
    assert_non_null(r);
    size_t used;
    assert_int_equal(hs_feed(r, (const uint8_t *)req, n, &used), HS_DONE);
    assert_int_equal(used, n);
    hs_result res;
    hs_respond(r, &cfg, &res);
    assert_upgrade(&res, "a", "lobby");
    hs_request_free(r);
    free(req);
}

/* The order of the checks decides which refusal a bad request gets. */
static void test_check_order(void **state) {
    (void)state;
    hs_result res;
    /* Path before method. */
    assert_int_equal(judge(REQ("POST", "/x", "HTTP/1.1", ""), &res), HS_DONE);
    assert_refusal(&res, 404);
    /* Method before Upgrade. */
    assert_int_equal(judge(REQ("PUT", "/", "HTTP/1.1", ""), &res), HS_DONE);
    assert_refusal(&res, 405);
    /* Version before key. */
    assert_int_equal(
        judge(REQ("GET", "/", "HTTP/1.1", "Upgrade: websocket\r\nConnection: Upgrade\r\n"), &res),
        HS_DONE);
    assert_refusal(&res, 426);
    /* Origin before username. */
    snprintf(cfg.allowed_origins[0], sizeof cfg.allowed_origins[0], "https://a");
    cfg.n_origins = 1;
    assert_int_equal(judge(REQ("GET", "/", "HTTP/1.1", STD_HEADERS "Origin: https://b\r\n"), &res),
                     HS_DONE);
    assert_refusal(&res, 403);
}

static void test_error_response(void **state) {
    (void)state;
    hs_result res;
    memset(&res, 0, sizeof res);
    hs_error_response(&res, 431, "request head too large");
    assert_string_equal(assert_refusal(&res, 431), "request head too large\n");
    assert_memory_equal(res.response, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46);

    hs_error_response(&res, 503, "server full");
    assert_refusal(&res, 503);

    /* It sets every field a caller acts on: the acceptor fills a result
     * it has not cleared when the request is malformed. */
    memset(&res, 0xA5, sizeof res);
    hs_error_response(&res, 400, "malformed request");
    assert_refusal(&res, 400);
    assert_int_equal(res.upgrade, 0);
    assert_int_equal(res.metrics, 0);

    /* A reason too long for the buffer is cut, and the length still
     * matches. */
    static char longreason[2000];
    memset(longreason, 'r', sizeof longreason - 1);
    hs_error_response(&res, 426, longreason);
    assert_response_text(&res);
    const char *body = strstr(res.response, "\r\n\r\n") + 4;
    const char *cl = strstr(res.response, "\r\nContent-Length: ");
    assert_int_equal(strtoul(cl + 18, NULL, 10), strlen(body));
    assert_non_null(strstr(res.response, "\r\nSec-WebSocket-Version: 13\r\n"));
}

/* ---- authentication --------------------------------------------------- */

#define AUTH_NOW ((time_t)1700000000)

static void b64url(const void *p, size_t n, char *out) {
    unsigned char tmp[512];
    assert_true(n < 300);
    int len = EVP_EncodeBlock(tmp, p, (int)n);
    int o = 0;
    for (int i = 0; i < len && tmp[i] != '='; i++)
        out[o++] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : (char)tmp[i];
    out[o] = '\0';
}

/* An HS256 token for payload, signed with secret. */
static void make_token(const char *payload, const char *secret, char *out) {
    static const char header[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    b64url(header, strlen(header), out);
    strcat(out, ".");
    b64url(payload, strlen(payload), out + strlen(out));
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)out,
                         strlen(out), mac, &mac_len));
    strcat(out, ".");
    b64url(mac, mac_len, out + strlen(out));
}

/* Judges GET target with the standard headers at AUTH_NOW. */
static void judge_auth(const char *target, hs_result *res) {
    char req[2048];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\n" STD_HEADERS "\r\n", target);
    hs_request *r = hs_request_new(MAX_HEAD);
    assert_non_null(r);
    size_t used;
    assert_int_equal(hs_feed(r, (const uint8_t *)req, strlen(req), &used), HS_DONE);
    hs_respond_at(r, &cfg, AUTH_NOW, res);
    hs_request_free(r);
}

static void test_auth(void **state) {
    (void)state;
    char tok[512], target[700];
    hs_result res;
    snprintf(cfg.auth_secret, sizeof cfg.auth_secret, "s3cret");
    make_token("{\"sub\":\"alice\",\"exp\":1700000060}", "s3cret", tok);

    /* The name is the token's sub. */
    snprintf(target, sizeof target, "/?token=%s", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "lobby");
    snprintf(target, sizeof target, "/?room=r&token=%s", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "r");

    /* A username in the query is ignored, valid or not, before or after. */
    snprintf(target, sizeof target, "/?username=mallory&token=%s", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "lobby");
    snprintf(target, sizeof target, "/?token=%s&username=mallory", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "lobby");
    snprintf(target, sizeof target, "/?username=%%zz&token=%s", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "lobby");

    /* No token, even with a username: 401. */
    judge_auth("/?username=alice", &res);
    assert_string_equal(assert_refusal(&res, 401), "token is required\n");
    assert_memory_equal(res.response, "HTTP/1.1 401 Unauthorized\r\n", 27);
    judge_auth("/", &res);
    assert_refusal(&res, 401);
    judge_auth("/?token=", &res);
    assert_refusal(&res, 401);

    /* Refused by auth_verify: 401 with its reason. */
    char bad[512];
    make_token("{\"sub\":\"alice\",\"exp\":1700000060}", "other", bad);
    snprintf(target, sizeof target, "/?token=%s", bad);
    judge_auth(target, &res);
    assert_string_equal(assert_refusal(&res, 401), "token signature is wrong\n");
    assert_string_equal(res.username, "");
    make_token("{\"sub\":\"alice\",\"exp\":1700000000}", "s3cret", bad);
    snprintf(target, sizeof target, "/?token=%s", bad);
    judge_auth(target, &res);
    assert_string_equal(assert_refusal(&res, 401), "token has expired\n");
    judge_auth("/?token=a.b", &res);
    assert_refusal(&res, 401);
    judge_auth("/?token=%zz", &res);
    assert_refusal(&res, 401);

    /* sub longer than max_username (8 here) is refused like ?username=. */
    make_token("{\"sub\":\"abcdefghi\",\"exp\":1700000060}", "s3cret", bad);
    snprintf(target, sizeof target, "/?token=%s", bad);
    judge_auth(target, &res);
    assert_string_equal(assert_refusal(&res, 401), "token sub is not a valid username\n");

    /* A bad room with a good token is still 400. */
    snprintf(target, sizeof target, "/?room=abcdefg&token=%s", tok);
    judge_auth(target, &res);
    assert_refusal(&res, 400);

    /* Percent-encoding of the token is decoded first. */
    snprintf(target, sizeof target, "/?token=%%65%s", tok + 1);
    assert_int_equal(tok[0], 'e');
    judge_auth(target, &res);
    assert_upgrade(&res, "alice", "lobby");

    /* hs_respond uses the clock: a token valid until 2100 passes. */
    make_token("{\"sub\":\"bob\",\"exp\":4102444800}", "s3cret", tok);
    snprintf(target, sizeof target, "/?token=%s", tok);
    char req[2048];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\n" STD_HEADERS "\r\n", target);
    assert_int_equal(judge(req, &res), HS_DONE);
    assert_upgrade(&res, "bob", "lobby");

    /* Authentication off: a token is ignored, username needed. */
    cfg.auth_secret[0] = '\0';
    judge_auth(target, &res);
    assert_refusal(&res, 400);
    snprintf(target, sizeof target, "/?username=carol&token=%s", tok);
    judge_auth(target, &res);
    assert_upgrade(&res, "carol", "lobby");
}

/* ---- permessage-deflate (RFC 7692) ----------------------------------- */

#define PMD_ANSWER                                                                                 \
    "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "                \
    "client_no_context_takeover"

/* Judges GOOD with the given extra header lines and returns res.deflate;
 * checks the 101 carries exactly the answer that goes with it. */
static int offer(const char *lines) {
    char req[4096];
    hs_result res;
    snprintf(req, sizeof req, "GET /?username=Alice HTTP/1.1\r\n" STD_HEADERS "%s\r\n", lines);
    assert_int_equal(judge(req, &res), HS_DONE);
    assert_int_equal(res.status, 101);
    assert_int_equal(res.response_len, strlen(res.response));
    if (res.deflate == 0) {
        assert_string_equal(res.response, GOOD_101);
        return 0;
    }
    char want[512];
    char bits[40] = "";
    if (res.deflate != 15 || strstr(lines, "server_max_window_bits=15") ||
        strstr(lines, "server_max_window_bits=\"15\""))
        snprintf(bits, sizeof bits, "; server_max_window_bits=%d", res.deflate);
    snprintf(want, sizeof want,
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: " ACCEPT "\r\n" PMD_ANSWER "%s\r\n\r\n",
             bits);
    assert_string_equal(res.response, want);
    return res.deflate;
}

static void test_deflate_offers(void **state) {
    (void)state;
    /* What browsers send, and the plainest offer. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
                     15);
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate\r\n"), 15);
    /* Python websockets' default offer. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate; "
                           "server_max_window_bits=12; client_max_window_bits=12\r\n"),
                     12);
    /* Every parameter, each once; names and the token in any case, OWS
     * around the separators, a quoted value. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: Permessage-Deflate ;server_no_context_takeover"
                           " ; CLIENT_NO_CONTEXT_TAKEOVER;server_max_window_bits = \"9\" ;"
                           "client_max_window_bits=\t15\r\n"),
                     9);
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=8\r\n"),
                     8);
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=15\r\n"),
                     15);
    /* No offer of ours: nothing. */
    assert_int_equal(offer(""), 0);
    assert_int_equal(offer("Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"), 0);
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate-x, deflate\r\n"), 0);
    assert_int_equal(offer("Sec-WebSocket-Extensions:\r\n"), 0);
}

static void test_deflate_declined(void **state) {
    (void)state;
    /* RFC 7692 5: an unknown parameter, a repeated one, a bad value. */
    static const char *const bad[] = {
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=\"\"",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=+9",
        "permessage-deflate; server_max_window_bits=\"1 0\"",
        "permessage-deflate; server_max_window_bits=999999999999999999999",
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=abc",
        /* malformed: the whole header is declined */
        "permessage-deflate;",
        "permessage-deflate; ;",
        "permessage-deflate; =9",
        "permessage-deflate; server_max_window_bits=",
        "permessage-deflate; server_max_window_bits=\"10",
        "permessage-deflate; server_max_window_bits=\"1\\",
        "permessage-deflate x",
        "permessage-deflate; client_max_window_bits 10",
        "permessage-deflate, ;x",
        "\"permessage-deflate\"",
        ";permessage-deflate",
    };
    char lines[512];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(lines, sizeof lines, "Sec-WebSocket-Extensions: %s\r\n", bad[i]);
        if (offer(lines) != 0) fail_msg("accepted: %s", bad[i]);
    }
    /* A malformed element anywhere declines the good offer before it. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate, foo;;\r\n"), 0);

    /* The first acceptable of several offers, over header lines. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=20,"
                           " permessage-deflate; server_max_window_bits=10,"
                           " permessage-deflate; server_max_window_bits=11\r\n"),
                     10);
    assert_int_equal(offer("Sec-WebSocket-Extensions: x-foo; bar=1\r\n"
                           "Sec-WebSocket-Extensions: permessage-deflate; unknown,"
                           " permessage-deflate; server_max_window_bits=13\r\n"
                           "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                     13);
    /* Empty list elements are allowed (RFC 9110 5.6.1); quoted values of
     * other extensions may hold anything. */
    assert_int_equal(offer("Sec-WebSocket-Extensions: , x-foo; q=\"a, b; c=\\\"d\\\"\" ,, "
                           "permessage-deflate ,\r\n"),
                     15);
    /* Up to 8 header lines are read; past that none is. */
    char many[1024] = "";
    for (int i = 0; i < 8; i++)
        strcat(many, i < 7 ? "Sec-WebSocket-Extensions: x-foo\r\n"
                           : "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    assert_int_equal(offer(many), 15);
    strcat(many, "Sec-WebSocket-Extensions: x-foo\r\n");
    assert_int_equal(offer(many), 0);

    /* permessage_deflate = off declines every offer. */
    cfg.permessage_deflate = 0;
    assert_int_equal(offer("Sec-WebSocket-Extensions: permessage-deflate\r\n"), 0);
    cfg.permessage_deflate = 1;
}

/* With chatd.v1 both answers go out; a refusal has neither. */
static void test_deflate_with_subprotocol(void **state) {
    (void)state;
    hs_result res;
    assert_int_equal(judge(REQ("GET", "/?username=Alice", "HTTP/1.1",
                               STD_HEADERS "Sec-WebSocket-Protocol: chatd.v1\r\n"
                                           "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                           &res),
                     HS_DONE);
    assert_int_equal(res.deflate, 15);
    assert_int_equal(res.json, 1);
    assert_string_equal(res.response,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Accept: " ACCEPT "\r\n"
                        "Sec-WebSocket-Protocol: chatd.v1\r\n" PMD_ANSWER "\r\n\r\n");
    assert_int_equal(judge(REQ("GET", "/", "HTTP/1.1",
                               STD_HEADERS "Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                           &res),
                     HS_DONE);
    assert_refusal(&res, 400);
    assert_int_equal(res.deflate, 0);
    assert_null(strstr(res.response, "Extensions"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_accept_key_rfc6455, setup),
        cmocka_unit_test_setup(test_url_decode, setup),
        cmocka_unit_test_setup(test_upgrade_whole, setup),
        cmocka_unit_test_setup(test_upgrade_byte_by_byte, setup),
        cmocka_unit_test_setup(test_upgrade_split_everywhere, setup),
        cmocka_unit_test_setup(test_bytes_behind_request_preserved, setup),
        cmocka_unit_test_setup(test_healthz, setup),
        cmocka_unit_test_setup(test_metrics, setup),
        cmocka_unit_test_setup(test_readyz, setup),
        cmocka_unit_test_setup(test_name_control_bytes, setup),
        cmocka_unit_test_setup(test_refusals, setup),
        cmocka_unit_test_setup(test_refusal_reasons, setup),
        cmocka_unit_test_setup(test_origin, setup),
        cmocka_unit_test_setup(test_head_too_large, setup),
        cmocka_unit_test_setup(test_malformed, setup),
        cmocka_unit_test_setup(test_forwarded_for, setup),
        cmocka_unit_test_setup(test_percent_decoding, setup),
        cmocka_unit_test_setup(test_query_rules, setup),
        cmocka_unit_test_setup(test_header_forms, setup),
        cmocka_unit_test_setup(test_many_header_lines, setup),
        cmocka_unit_test_setup(test_check_order, setup),
        cmocka_unit_test_setup(test_error_response, setup),
        cmocka_unit_test_setup(test_auth, setup),
        cmocka_unit_test_setup(test_deflate_offers, setup),
        cmocka_unit_test_setup(test_deflate_declined, setup),
        cmocka_unit_test_setup(test_deflate_with_subprotocol, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
