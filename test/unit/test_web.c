/* Unit tests for web: the chat page's routes, through the handshake as the
 * acceptor drives it (hs_feed, then hs_respond_at). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "handshake.h"
#include "web.h"

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="

static config cfg;

static int setup(void **state) {
    (void)state;
    config_defaults(&cfg);
    return 0;
}

static void judge(const char *req, hs_result *res) {
    hs_request *r = hs_request_new(8192);
    assert_non_null(r);
    size_t used = 0;
    assert_int_equal(hs_feed(r, (const uint8_t *)req, strlen(req), &used), HS_DONE);
    hs_respond_at(r, &cfg, 1700000000, res);
    hs_request_free(r);
    assert_true(res->response_len > 0 && res->response_len < HS_RESPONSE_MAX);
}

/* The value of header name in res's response ("" when absent). */
static const char *header(const hs_result *res, const char *name, char *buf, size_t len) {
    char pat[64];
    snprintf(pat, sizeof pat, "\r\n%s: ", name);
    buf[0] = '\0';
    const char *p = strstr(res->response, pat);
    if (!p)
        return buf;
    p += strlen(pat);
    const char *e = strstr(p, "\r\n");
    snprintf(buf, len, "%.*s", (int)(e - p), p);
    return buf;
}

static void test_page(void **state) {
    (void)state;
    hs_result res;
    char v[512];
    judge("GET / HTTP/1.1\r\nHost: chat.example.com:5000\r\n\r\n", &res);
    assert_int_equal(res.status, 200);
    assert_int_equal(res.upgrade, 0);
    assert_string_equal(header(&res, "Content-Type", v, sizeof v), "text/html; charset=utf-8");
    assert_string_equal(header(&res, "Cache-Control", v, sizeof v), "no-cache");
    assert_string_equal(header(&res, "X-Content-Type-Options", v, sizeof v), "nosniff");
    header(&res, "Content-Security-Policy", v, sizeof v);
    assert_non_null(strstr(v, "default-src 'none'"));
    assert_non_null(strstr(v, "script-src 'self';"));
    assert_non_null(strstr(v, "style-src 'self';"));
    assert_non_null(strstr(v, "connect-src 'self' ws://chat.example.com:5000 "
                              "wss://chat.example.com:5000;"));
    assert_null(strstr(v, "unsafe"));
    assert_non_null(res.body);
    assert_int_equal(atoi(header(&res, "Content-Length", v, sizeof v)), (int)res.body_len);
    assert_memory_equal(res.body, "<!doctype html>", 15);
    /* the response ends with its head: the body travels separately */
    assert_memory_equal(res.response + res.response_len - 4, "\r\n\r\n", 4);
    /* the page's query is the page's business */
    judge("GET /?room=kitchen&name=Alice HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 200);
    assert_non_null(res.body);
}

static void test_files(void **state) {
    (void)state;
    static const struct {
        const char *path, *type;
    } files[] = {
        {"/app.js", "text/javascript; charset=utf-8"},
        {"/app.css", "text/css; charset=utf-8"},
        {"/favicon.svg", "image/svg+xml"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char req[128], v[256], etag[32];
        hs_result res;
        snprintf(req, sizeof req, "GET %s?v=1 HTTP/1.1\r\nHost: x\r\n\r\n", files[i].path);
        judge(req, &res);
        assert_int_equal(res.status, 200);
        assert_string_equal(header(&res, "Content-Type", v, sizeof v), files[i].type);
        assert_int_equal(atoi(header(&res, "Content-Length", v, sizeof v)), (int)res.body_len);
        assert_true(res.body_len > 100);
        assert_int_equal(web_etag(files[i].path, etag, sizeof etag), 0);
        assert_string_equal(header(&res, "ETag", v, sizeof v), etag);
        /* only the document carries the policy */
        assert_null(strstr(res.response, "Content-Security-Policy"));
    }
    char etag[32];
    assert_int_equal(web_etag("/nope", etag, sizeof etag), -1);
}

static void test_head(void **state) {
    (void)state;
    hs_result get, head;
    char a[64], b[64];
    judge("GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n", &get);
    judge("HEAD /app.js HTTP/1.1\r\nHost: x\r\n\r\n", &head);
    assert_int_equal(head.status, 200);
    assert_null(head.body);
    assert_int_equal(head.body_len, 0);
    assert_string_equal(header(&head, "Content-Length", a, sizeof a),
                        header(&get, "Content-Length", b, sizeof b));
    assert_string_equal(header(&head, "ETag", a, sizeof a), header(&get, "ETag", b, sizeof b));
}

static void test_if_none_match(void **state) {
    (void)state;
    char etag[32], req[256], v[64];
    hs_result res;
    assert_int_equal(web_etag("/app.css", etag, sizeof etag), 0);
    const char *hits[] = {"%s", "W/%s", "\"0000000000000000\", %s", "*", " %s ,\"x\""};
    for (size_t i = 0; i < sizeof hits / sizeof hits[0]; i++) {
        char inm[96];
        snprintf(inm, sizeof inm, hits[i], etag);
        snprintf(req, sizeof req, "GET /app.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n",
                 inm);
        judge(req, &res);
        assert_int_equal(res.status, 304);
        assert_null(res.body);
        assert_string_equal(header(&res, "ETag", v, sizeof v), etag);
        assert_null(strstr(res.response, "Content-Length"));
    }
    judge("GET /app.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"0000000000000000\"\r\n\r\n",
          &res);
    assert_int_equal(res.status, 200);
    assert_non_null(res.body);
    /* another file's tag does not validate this one */
    char js[32];
    web_etag("/app.js", js, sizeof js);
    snprintf(req, sizeof req, "GET /app.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\n\r\n", js);
    judge(req, &res);
    assert_int_equal(res.status, 200);
}

static void test_config_json(void **state) {
    (void)state;
    hs_result res;
    char v[64];
    judge("GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 200);
    assert_string_equal(header(&res, "Content-Type", v, sizeof v), "application/json");
    assert_string_equal(header(&res, "Cache-Control", v, sizeof v), "no-store");
    const char *body = strstr(res.response, "\r\n\r\n") + 4;
    assert_string_equal(body, "{\"protocol\":\"chatd.v1\",\"auth\":\"name\",\"default_room\":"
                              "\"lobby\",\"max_username\":32,\"max_room\":64,"
                              "\"max_message\":65536}\n");
    assert_int_equal(atoi(header(&res, "Content-Length", v, sizeof v)), (int)strlen(body));

    snprintf(cfg.auth_secret, sizeof cfg.auth_secret, "s3cret-never-shown");
    snprintf(cfg.default_room, sizeof cfg.default_room, "a\"b\\c");
    judge("GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    body = strstr(res.response, "\r\n\r\n") + 4;
    assert_non_null(strstr(body, "\"auth\":\"token\""));
    assert_non_null(strstr(body, "\"default_room\":\"a\\\"b\\\\c\""));
    assert_null(strstr(res.response, "s3cret"));
    judge("HEAD /config.json HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 200);
    assert_string_equal(strstr(res.response, "\r\n\r\n"), "\r\n\r\n");
    config_defaults(&cfg);
}

static void test_methods(void **state) {
    (void)state;
    hs_result res;
    char v[64];
    judge("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", &res);
    assert_int_equal(res.status, 405);
    assert_string_equal(header(&res, "Allow", v, sizeof v), "GET, HEAD");
    assert_null(res.body);
    judge("DELETE /app.js HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 405);
    /* not the page's: the old answers */
    judge("HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 405);
    judge("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 404);
    judge("GET /app.js/ HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 404);
}

/* A request with WebSocket headers is a handshake, even a broken one. */
static void test_upgrades_are_not_the_page(void **state) {
    (void)state;
    hs_result res;
    judge("GET /?username=Alice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
          "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
          &res);
    assert_int_equal(res.status, 101);
    assert_null(res.body);
    judge("GET /?username=Alice HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
          &res);
    assert_int_equal(res.status, 400);
    judge("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", &res);
    assert_int_equal(res.status, 400);
    assert_null(res.body);
}

static void test_web_off(void **state) {
    (void)state;
    hs_result res;
    char err[256];
    assert_int_equal(config_set(&cfg, "web", "off", err, sizeof err), 0);
    assert_int_equal(cfg.web, 0);
    judge("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 400); /* as before the page: not an upgrade */
    assert_null(res.body);
    judge("GET /app.js HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 404);
    judge("GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n", &res);
    assert_int_equal(res.status, 404);
    assert_int_equal(config_set(&cfg, "web", "on", err, sizeof err), 0);
    assert_int_equal(cfg.web, 1);
    assert_int_equal(config_set(&cfg, "web", "yes", err, sizeof err), -1);
    assert_non_null(strstr(err, "on or off"));
    config_defaults(&cfg);
}

/* Only a plain host[:port] goes into the policy; anything else is left to
 * 'self'. */
static void test_policy_host(void **state) {
    (void)state;
    static const struct {
        const char *host;
        int named;
    } hosts[] = {
        {"localhost", 1},
        {"127.0.0.1:5000", 1},
        {"[::1]:5000", 1},
        {"chat-1.example.org", 1},
        {"evil.com; script-src *", 0},
        {"x:5000:1", 0},
        {"x:", 0},
        {"[]:80", 0},
        {"a'b", 0},
        {"x:1234567", 0},
    };
    for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
        char req[512], v[700], want[300];
        hs_result res;
        snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", hosts[i].host);
        judge(req, &res);
        assert_int_equal(res.status, 200);
        header(&res, "Content-Security-Policy", v, sizeof v);
        snprintf(want, sizeof want, " ws://%s wss://%s;", hosts[i].host, hosts[i].host);
        print_message("  %s\n", hosts[i].host);
        assert_int_equal(strstr(v, want) != NULL, hosts[i].named);
        if (!hosts[i].named)
            assert_non_null(strstr(v, "connect-src 'self'; "));
    }
    /* no Host at all (HTTP/1.0), and a very long one */
    hs_result res;
    judge("GET / HTTP/1.0\r\n\r\n", &res);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.response, "connect-src 'self'; "));
    char req[700], name[300];
    memset(name, 'a', 290);
    name[290] = '\0';
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", name);
    judge(req, &res);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.response, "connect-src 'self'; "));
    memset(name, 'a', 255);
    snprintf(name + 255, sizeof name - 255, ":65535");
    snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", name);
    judge(req, &res);
    assert_int_equal(res.status, 200);
    assert_non_null(strstr(res.response, ":65535;"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_page),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_if_none_match),
        cmocka_unit_test(test_config_json),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_upgrades_are_not_the_page),
        cmocka_unit_test(test_web_off),
        cmocka_unit_test(test_policy_host),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
