/* Unit tests for proto: chatd.v1 requests (PROTOCOL.md), ids and the
 * output buffer. Every frame is parsed from an allocation of exactly its
 * size, so ASan sees any read past the end of a frame. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "names.h"
#include "proto.h"

static const proto_limits lim = {.max_room = 16, .max_message = 32};

static int parse_n(const char *json, size_t len, proto_req *req, const char **why)
{
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, json, len);
    int err = proto_parse(copy, len, &lim, req, why);
    /* The request points into jansson's copy, never into the frame. */
    memset(copy, 'Z', len);
    free(copy);
    return err;
}

static int parse(const char *json, proto_req *req, const char **why)
{
    return parse_n(json, strlen(json), req, why);
}

/* Parses a frame that must be good; the caller frees req. */
static void parse_ok(const char *json, proto_req *req)
{
    const char *why = "unset";
    int err = parse(json, req, &why);
    if (err != PROTO_OK)
        fail_msg("%s: error %d (%s)", json, err, why ? why : "NULL");
    assert_null(why);
}

static void assert_room(const proto_req *req, const char *room)
{
    assert_non_null(req->room);
    assert_int_equal(req->room_len, strlen(room));
    assert_memory_equal(req->room, room, req->room_len);
}

/* ---- Good requests ---------------------------------------------------- */

static void test_each_op(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        int op;
    } cases[] = {
        {"{\"op\":\"join\",\"room\":\"lobby\"}", PROTO_JOIN},
        {"{\"op\":\"leave\",\"room\":\"lobby\"}", PROTO_LEAVE},
        {"{\"op\":\"send\",\"room\":\"lobby\",\"text\":\"hi\"}", PROTO_SEND},
        {"{\"op\":\"history\",\"room\":\"lobby\"}", PROTO_HISTORY},
        {"{\"op\":\"typing\",\"room\":\"lobby\"}", PROTO_TYPING},
        {" {\"room\":\"lobby\", \"op\" : \"typing\"}\n", PROTO_TYPING},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_req req;
        parse_ok(cases[i].json, &req);
        assert_int_equal(req.op, cases[i].op);
        assert_room(&req, "lobby");
        if (cases[i].op == PROTO_SEND) {
            assert_int_equal(req.text_len, 2);
            assert_memory_equal(req.text, "hi", 2);
        } else {
            assert_null(req.text);
            assert_int_equal(req.text_len, 0);
        }
        /* Everything absent has its documented value. */
        assert_string_equal(req.ref, "");
        assert_int_equal(req.ref_len, 0);
        assert_int_equal(req.history, -1);
        assert_false(req.has_since);
        assert_string_equal(req.epoch, "");
        assert_false(req.has_before);
        assert_int_equal(req.limit, PROTO_LIMIT_DEFAULT);
        assert_non_null(req.root);
        proto_req_free(&req);
        assert_null(req.root);
        assert_null(req.room);
    }
}

static void test_ping(void **state)
{
    (void)state;
    proto_req req;
    parse_ok("{\"op\":\"ping\"}", &req);
    assert_int_equal(req.op, PROTO_PING);
    assert_null(req.room);
    assert_null(req.text);
    proto_req_free(&req);

    /* ping needs nothing, and what it does not use is not looked at. */
    parse_ok("{\"op\":\"ping\",\"room\":5,\"text\":[],\"history\":\"x\",\"limit\":0}", &req);
    assert_int_equal(req.op, PROTO_PING);
    assert_null(req.room);
    assert_null(req.text);
    assert_int_equal(req.history, -1);
    assert_int_equal(req.limit, PROTO_LIMIT_DEFAULT);
    proto_req_free(&req);
}

/* refresh: a token string, no room; anything else is bad_request. */
static void test_refresh(void **state)
{
    (void)state;
    proto_req req;
    const char *why;
    parse_ok("{\"op\":\"refresh\",\"token\":\"a.b.c\",\"ref\":3}", &req);
    assert_int_equal(req.op, PROTO_REFRESH);
    assert_int_equal(req.token_len, 5);
    assert_memory_equal(req.token, "a.b.c", 5);
    assert_null(req.room);
    assert_string_equal(req.ref, "3");
    proto_req_free(&req);
    static const char *const bad[] = {
        "{\"op\":\"refresh\"}",
        "{\"op\":\"refresh\",\"token\":5}",
        "{\"op\":\"refresh\",\"token\":null}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i], &req, &why), PROTO_E_REQUEST);
        assert_int_equal(req.op, 0);
        proto_req_free(&req);
    }
    /* Longer than any token auth_verify takes. */
    size_t n = PROTO_TOKEN_MAX + 1;
    char *big = malloc(n + 64);
    int k = snprintf(big, 64, "{\"op\":\"refresh\",\"token\":\"");
    memset(big + k, 'a', n);
    memcpy(big + k + n, "\"}", 3);
    assert_int_equal(parse(big, &req, &why), PROTO_E_REQUEST);
    assert_string_equal(why, "token is too long");
    proto_req_free(&req);
    free(big);
}

static void test_send_text(void **state)
{
    (void)state;
    proto_req req;
    const char *why;

    /* NUL bytes in the text are kept, and counted. */
    parse_ok("{\"op\":\"send\",\"room\":\"r\",\"text\":\"a\\u0000b\\u0000\"}", &req);
    assert_int_equal(req.text_len, 4);
    assert_memory_equal(req.text, "a\0b\0", 4);
    proto_req_free(&req);

    parse_ok("{\"op\":\"send\",\"room\":\"r\",\"text\":\"\"}", &req);
    assert_non_null(req.text);
    assert_int_equal(req.text_len, 0);
    proto_req_free(&req);

    /* Escapes are decoded; the limit counts decoded UTF-8 bytes. */
    parse_ok("{\"op\":\"send\",\"room\":\"r\",\"text\":\"\\\"\\\\\\/\\n\\u00e9\\ud83d\\ude00\"}",
             &req);
    assert_int_equal(req.text_len, 10);
    assert_memory_equal(req.text, "\"\\/\n\xC3\xA9\xF0\x9F\x98\x80", 10);
    proto_req_free(&req);

    /* max_message is 32: 32 bytes pass, 33 do not, and 11 three-byte
     * characters (33 bytes) do not either. */
    parse_ok("{\"op\":\"send\",\"room\":\"r\",\"text\":\"0123456789abcdef0123456789abcdef\"}", &req);
    assert_int_equal(req.text_len, 32);
    proto_req_free(&req);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"r\",\"text\":\"0123456789abcdef0123456789abcdefX\"}",
                           &req, &why),
                     PROTO_E_TOO_LARGE);
    assert_string_equal(why, "text is longer than max_message");
    assert_null(req.text);
    proto_req_free(&req);
    assert_int_equal(parse("{\"op\":\"send\",\"room\":\"r\",\"text\":\"\\u20ac\\u20ac\\u20ac\\u20ac"
                           "\\u20ac\\u20ac\\u20ac\\u20ac\\u20ac\\u20ac\\u20ac\"}",
                           &req, &why),
                     PROTO_E_TOO_LARGE);
    proto_req_free(&req);
}

static void test_room(void **state)
{
    (void)state;
    proto_req req;
    parse_ok("{\"op\":\"join\",\"room\":\"J\\u00fcrgen \\ud83d\\ude00\"}", &req);
    assert_room(&req, "J\xC3\xBCrgen \xF0\x9F\x98\x80");
    proto_req_free(&req);

    parse_ok("{\"op\":\"join\",\"room\":\"0123456789abcdef\"}", &req); /* exactly max_room */
    assert_int_equal(req.room_len, 16);
    proto_req_free(&req);

    parse_ok("{\"op\":\"join\",\"room\":\"raw \xC3\xBC\"}", &req); /* raw UTF-8, not escaped */
    assert_room(&req, "raw \xC3\xBC");
    proto_req_free(&req);
}

static void test_join_fields(void **state)
{
    (void)state;
    proto_req req;

    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"history\":0}", &req);
    assert_int_equal(req.history, 0);
    proto_req_free(&req);

    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"history\":10000}", &req);
    assert_int_equal(req.history, PROTO_HISTORY_MAX);
    proto_req_free(&req);

    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"since\":\"1700000000000-7\",\"epoch\":\"e1\"}", &req);
    assert_true(req.has_since);
    assert_true(req.since.ms == 1700000000000ULL && req.since.seq == 7);
    assert_string_equal(req.epoch, "e1");
    assert_int_equal(req.history, -1);
    proto_req_free(&req);

    /* history with since: what the client gets if since cannot be had. */
    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"history\":20,\"since\":\"0005-0\",\"epoch\":\"x\"}",
             &req);
    assert_int_equal(req.history, 20);
    assert_true(req.has_since && req.since.ms == 5 && req.since.seq == 0);
    proto_req_free(&req);

    /* An epoch alone is harmless; 32 bytes are the most. */
    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"epoch\":\"0123456789abcdef0123456789abcdef\"}", &req);
    assert_false(req.has_since);
    assert_string_equal(req.epoch, "0123456789abcdef0123456789abcdef");
    proto_req_free(&req);

    /* Join fields on other ops are not looked at. */
    parse_ok("{\"op\":\"leave\",\"room\":\"r\",\"history\":-5,\"since\":1,\"epoch\":[]}", &req);
    assert_int_equal(req.history, -1);
    assert_false(req.has_since);
    assert_string_equal(req.epoch, "");
    proto_req_free(&req);
}

static void test_history_fields(void **state)
{
    (void)state;
    proto_req req;

    parse_ok("{\"op\":\"history\",\"room\":\"r\",\"before\":\"18446744073709551615-0\",\"limit\":1}",
             &req);
    assert_true(req.has_before);
    assert_true(req.before.ms == UINT64_MAX && req.before.seq == 0);
    assert_int_equal(req.limit, 1);
    proto_req_free(&req);

    parse_ok("{\"op\":\"history\",\"room\":\"r\",\"limit\":100}", &req);
    assert_false(req.has_before);
    assert_int_equal(req.limit, PROTO_LIMIT_MAX);
    proto_req_free(&req);

    /* History-op fields on join are not looked at. */
    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"before\":7,\"limit\":\"x\"}", &req);
    assert_false(req.has_before);
    assert_int_equal(req.limit, PROTO_LIMIT_DEFAULT);
    proto_req_free(&req);
}

/* Forward compatibility: fields this version does not know are ignored,
 * whatever they hold (duplicates inside them are still bad JSON). */
static void test_unknown_fields(void **state)
{
    (void)state;
    proto_req req;
    parse_ok("{\"op\":\"send\",\"v\":2,\"room\":\"r\",\"x\":{\"y\":[1,null,true]},\"text\":\"t\","
             "\"Room\":5,\"op2\":\"nope\"}",
             &req);
    assert_int_equal(req.op, PROTO_SEND);
    assert_room(&req, "r");
    proto_req_free(&req);
}

/* ---- Refs ------------------------------------------------------------- */

static void expect_ref(const char *json, const char *ref)
{
    proto_req req;
    parse_ok(json, &req);
    assert_string_equal(req.ref, ref);
    assert_int_equal(req.ref_len, strlen(ref));
    proto_req_free(&req);
}

static void test_ref_types(void **state)
{
    (void)state;
    expect_ref("{\"op\":\"ping\",\"ref\":\"a\"}", "\"a\"");
    expect_ref("{\"op\":\"ping\",\"ref\":\"\"}", "\"\"");
    expect_ref("{\"op\":\"ping\",\"ref\":12}", "12");
    expect_ref("{\"op\":\"ping\",\"ref\":-0}", "0");
    expect_ref("{\"op\":\"ping\",\"ref\":-12}", "-12");
    expect_ref("{\"op\":\"ping\",\"ref\":9223372036854775807}", "9223372036854775807");
    expect_ref("{\"op\":\"ping\",\"ref\":1.5}", "1.5");
    expect_ref("{\"op\":\"ping\",\"ref\":2.0}", "2.0");
    expect_ref("{\"op\":\"ping\",\"ref\":-2.5e-3}", "-0.0025000000000000001"); /* see below */
    expect_ref("{\"op\":\"ping\",\"ref\":\"a\\\"b\\\\c\\/d\"}", "\"a\\\"b\\\\c/d\"");
    expect_ref("{\"op\":\"ping\",\"ref\":\"\\u0000\\n\"}", "\"\\u0000\\n\"");
    expect_ref("{\"op\":\"send\",\"room\":\"r\",\"text\":\"\",\"ref\":\"\xC3\xA9\"}", "\"\xC3\xA9\"");
}

/* Any ref, as re-serialized, is JSON that means the same value. A real is
 * written with 17 significant digits: the same number, not always the same
 * text (0.1 comes back as 0.10000000000000001, which every JSON reader,
 * JavaScript's included, reads as 0.1 again). */
static void test_ref_round_trip(void **state)
{
    (void)state;
    static const char *const refs[] = {
        "0.1", "1e300", "-1.7976931348623157e308", "5e-324", "123456789.125", "1E2",
        "\"\\u00e9\\ud83d\\ude00\\u007f\\u001f\"", "\"<script>&amp;\"", "-9223372036854775808",
    };
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"op\":\"ping\",\"ref\":%s}", refs[i]);
        proto_req req;
        parse_ok(json, &req);
        assert_int_equal(strlen(req.ref), req.ref_len);
        json_t *want = json_loads(refs[i], JSON_DECODE_ANY, NULL);
        json_t *got = json_loadb(req.ref, req.ref_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(want);
        if (!got || !json_equal(want, got))
            fail_msg("ref %s came back as %s", refs[i], req.ref);
        json_decref(want);
        json_decref(got);
        proto_req_free(&req);
    }
}

/* PROTO_REF_MAX counts the serialized form, quotes and escapes included. */
static void test_ref_size(void **state)
{
    (void)state;
    char json[512], want[PROTO_REF_MAX + 1];
    proto_req req;
    const char *why;

    /* 126 characters and two quotes: 128 bytes. */
    memset(want, 'x', PROTO_REF_MAX);
    want[0] = want[PROTO_REF_MAX - 1] = '"';
    want[PROTO_REF_MAX] = '\0';
    snprintf(json, sizeof json, "{\"op\":\"ping\",\"ref\":%s}", want);
    parse_ok(json, &req);
    assert_int_equal(req.ref_len, PROTO_REF_MAX);
    assert_string_equal(req.ref, want);
    proto_req_free(&req);

    /* 127: one too many. */
    snprintf(json, sizeof json, "{\"op\":\"ping\",\"ref\":\"x%s}", want + 1);
    assert_int_equal(parse(json, &req, &why), PROTO_E_REQUEST);
    assert_string_equal(why, "ref is too long");
    assert_string_equal(req.ref, "");
    assert_int_equal(req.ref_len, 0);
    proto_req_free(&req);

    /* 64 newlines are 64 bytes in the frame but 128 + 2 escaped. */
    char nl[64 * 2 + 1];
    for (int i = 0; i < 64; i++)
        memcpy(nl + 2 * i, "\\n", 2);
    nl[128] = '\0';
    snprintf(json, sizeof json, "{\"op\":\"ping\",\"ref\":\"%s\"}", nl);
    assert_int_equal(parse(json, &req, &why), PROTO_E_REQUEST);
    assert_string_equal(why, "ref is too long");
    proto_req_free(&req);
    snprintf(json, sizeof json, "{\"op\":\"ping\",\"ref\":\"%s\"}", nl + 4); /* 62: 126 bytes */
    parse_ok(json, &req);
    assert_int_equal(req.ref_len, 126);
    proto_req_free(&req);
}

/* ---- Errors ----------------------------------------------------------- */

struct err_case {
    const char *json;
    int err;
    const char *reason;
    const char *ref; /* what req.ref holds after the error */
};

#define JOIN "{\"op\":\"join\",\"room\":\"r\","
#define HIST "{\"op\":\"history\",\"room\":\"r\","

static const struct err_case err_cases[] = {
    /* bad_json: not JSON, not an object, duplicate keys */
    {"", PROTO_E_JSON, "not valid JSON", ""},
    {" ", PROTO_E_JSON, "not valid JSON", ""},
    {"hello", PROTO_E_JSON, "not valid JSON", ""},
    {"{", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\"", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\",}", PROTO_E_JSON, "not valid JSON", ""},
    {"{'op':'ping'}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\"} {}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\"}x", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\",\"ref\":NaN}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\",\"ref\":1e999}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"ping\",\"ref\":9223372036854775808}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":\"\\ud800\"}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":\"\xFF\"}", PROTO_E_JSON, "not valid JSON", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":\"a\nb\"}", PROTO_E_JSON, "not valid JSON", ""},
    {"[]", PROTO_E_JSON, "not a JSON object", ""}, /* see test_not_object */
    {"{\"op\":\"ping\",\"op\":\"ping\"}", PROTO_E_JSON, "duplicate key", ""},
    {"{\"ref\":1,\"op\":\"ping\",\"ref\":1}", PROTO_E_JSON, "duplicate key", ""},
    {"{\"op\":\"ping\",\"x\":{\"a\":1,\"a\":2}}", PROTO_E_JSON, "duplicate key", ""},
    {"{\"op\":\"ping\",\"x\":[{\"a\":1,\"a\":2}]}", PROTO_E_JSON, "duplicate key", ""},

    /* ref */
    {"{\"op\":\"ping\",\"ref\":true}", PROTO_E_REQUEST, "ref is not a string or a number", ""},
    {"{\"op\":\"ping\",\"ref\":false}", PROTO_E_REQUEST, "ref is not a string or a number", ""},
    {"{\"op\":\"ping\",\"ref\":null}", PROTO_E_REQUEST, "ref is not a string or a number", ""},
    {"{\"op\":\"ping\",\"ref\":[1]}", PROTO_E_REQUEST, "ref is not a string or a number", ""},
    {"{\"op\":\"ping\",\"ref\":{}}", PROTO_E_REQUEST, "ref is not a string or a number", ""},
    /* a bad ref is reported before anything else is looked at */
    {"{\"op\":\"nope\",\"ref\":[]}", PROTO_E_REQUEST, "ref is not a string or a number", ""},

    /* op */
    {"{}", PROTO_E_REQUEST, "op is missing", ""},
    {"{\"ref\":\"q\"}", PROTO_E_REQUEST, "op is missing", "\"q\""},
    {"{\"Op\":\"ping\"}", PROTO_E_REQUEST, "op is missing", ""},
    {"{\"op\":1}", PROTO_E_REQUEST, "op is not a string", ""},
    {"{\"op\":null,\"ref\":3}", PROTO_E_REQUEST, "op is not a string", "3"},
    {"{\"op\":[\"join\"]}", PROTO_E_REQUEST, "op is not a string", ""},
    {"{\"op\":\"nope\",\"ref\":\"q\"}", PROTO_E_OP, "unknown op", "\"q\""},
    {"{\"op\":\"\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"JOIN\",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"join \",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"joi\",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"join\\u0000\",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"pong\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"joined\",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},
    {"{\"op\":\"msg\",\"room\":\"r\"}", PROTO_E_OP, "unknown op", ""},

    /* room, for every op that needs one */
    {"{\"op\":\"join\"}", PROTO_E_REQUEST, "room is missing", ""},
    {"{\"op\":\"leave\",\"ref\":1}", PROTO_E_REQUEST, "room is missing", "1"},
    {"{\"op\":\"send\",\"text\":\"t\"}", PROTO_E_REQUEST, "room is missing", ""},
    {"{\"op\":\"history\"}", PROTO_E_REQUEST, "room is missing", ""},
    {"{\"op\":\"typing\"}", PROTO_E_REQUEST, "room is missing", ""},
    {"{\"op\":\"join\",\"room\":null}", PROTO_E_REQUEST, "room is not a string", ""},
    {"{\"op\":\"leave\",\"room\":1}", PROTO_E_REQUEST, "room is not a string", ""},
    {"{\"op\":\"send\",\"room\":[\"r\"],\"text\":\"t\"}", PROTO_E_REQUEST, "room is not a string", ""},
    {"{\"op\":\"history\",\"room\":{}}", PROTO_E_REQUEST, "room is not a string", ""},
    {"{\"op\":\"typing\",\"room\":true}", PROTO_E_REQUEST, "room is not a string", ""},
    {"{\"op\":\"join\",\"room\":\"\",\"ref\":\"e\"}", PROTO_E_ROOM, "room is empty", "\"e\""},
    {"{\"op\":\"leave\",\"room\":\"0123456789abcdefX\"}", PROTO_E_ROOM, "room is too long", ""},
    {"{\"op\":\"send\",\"room\":\"\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\\u00e9\","
     "\"text\":\"t\"}",
     PROTO_E_ROOM, "room is too long", ""},
    {"{\"op\":\"history\",\"room\":\"a\\nb\"}", PROTO_E_ROOM, "room contains a control character", ""},
    {"{\"op\":\"typing\",\"room\":\"a\\u0000\"}", PROTO_E_ROOM, "room contains a control character", ""},
    {"{\"op\":\"join\",\"room\":\"\\u007f\"}", PROTO_E_ROOM, "room contains a control character", ""},
    {"{\"op\":\"join\",\"room\":\"\\u001f\"}", PROTO_E_ROOM, "room contains a control character", ""},
    /* the room is judged before the text */
    {"{\"op\":\"send\",\"room\":\"\",\"text\":5}", PROTO_E_ROOM, "room is empty", ""},

    /* send's text */
    {"{\"op\":\"send\",\"room\":\"r\",\"ref\":7}", PROTO_E_REQUEST, "text is missing", "7"},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":null}", PROTO_E_REQUEST, "text is not a string", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":12}", PROTO_E_REQUEST, "text is not a string", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"text\":[\"t\"]}", PROTO_E_REQUEST, "text is not a string", ""},
    {"{\"op\":\"send\",\"room\":\"r\",\"ref\":\"big\",\"text\":\"0123456789abcdef0123456789abcdef!\"}",
     PROTO_E_TOO_LARGE, "text is longer than max_message", "\"big\""},

    /* join */
    {JOIN "\"history\":-1}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":10001}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":-9223372036854775808}", PROTO_E_REQUEST,
     "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":1.0}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":\"5\"}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":null}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"history\":true}", PROTO_E_REQUEST, "history is not an integer from 0 to 10000", ""},
    {JOIN "\"since\":\"1-2\"}", PROTO_E_REQUEST, "since needs epoch", ""},
    {JOIN "\"since\":\"1-2\",\"history\":5,\"ref\":0}", PROTO_E_REQUEST, "since needs epoch", "0"},
    {JOIN "\"since\":\"1\",\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":\"1-\",\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":\"\",\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":12,\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":null,\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":\"1-2\\u0000\",\"epoch\":\"e\"}", PROTO_E_REQUEST, "since is not an id", ""},
    {JOIN "\"since\":\"1-2\",\"epoch\":5}", PROTO_E_REQUEST, "epoch is not a string", ""},
    {JOIN "\"epoch\":null}", PROTO_E_REQUEST, "epoch is not a string", ""},
    {JOIN "\"since\":\"1-2\",\"epoch\":\"\"}", PROTO_E_REQUEST, "epoch is empty", ""},
    {JOIN "\"since\":\"1-2\",\"epoch\":\"0123456789abcdef0123456789abcdefX\"}", PROTO_E_REQUEST,
     "epoch is too long", ""},
    {JOIN "\"since\":\"1-2\",\"epoch\":\"a\\u0000b\"}", PROTO_E_REQUEST,
     "epoch contains a NUL byte", ""},

    /* history */
    {HIST "\"before\":\"x\"}", PROTO_E_REQUEST, "before is not an id", ""},
    {HIST "\"before\":\"-1\"}", PROTO_E_REQUEST, "before is not an id", ""},
    {HIST "\"before\":\"18446744073709551616-0\"}", PROTO_E_REQUEST, "before is not an id", ""},
    {HIST "\"before\":5}", PROTO_E_REQUEST, "before is not an id", ""},
    {HIST "\"before\":null}", PROTO_E_REQUEST, "before is not an id", ""},
    {HIST "\"limit\":0}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100", ""},
    {HIST "\"limit\":101}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100", ""},
    {HIST "\"limit\":-1}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100", ""},
    {HIST "\"limit\":10.0}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100", ""},
    {HIST "\"limit\":\"10\"}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100", ""},
    {HIST "\"limit\":null,\"ref\":\"L\"}", PROTO_E_REQUEST, "limit is not an integer from 1 to 100",
     "\"L\""},
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof err_cases / sizeof err_cases[0]; i++) {
        const struct err_case *c = &err_cases[i];
        proto_req req;
        const char *why = NULL;
        int err = parse(c->json, &req, &why);
        if (err != c->err)
            fail_msg("%s: error %d (%s), want %d", c->json, err, why ? why : "NULL", c->err);
        if (!why || strcmp(why, c->reason) != 0)
            fail_msg("%s: reason \"%s\", want \"%s\"", c->json, why ? why : "NULL", c->reason);
        if (strcmp(req.ref, c->ref) != 0 || req.ref_len != strlen(c->ref))
            fail_msg("%s: ref %s, want %s", c->json, req.ref, c->ref);
        assert_non_null(proto_err_code(err));
        proto_req_free(&req);
        proto_req_free(&req); /* twice is harmless */
    }
}

/* Valid JSON that is not an object is bad_json with its own reason (jansson
 * refuses top-level scalars without JSON_DECODE_ANY, so those read as not
 * JSON at all; arrays get as far as "not an object"). */
static void test_not_object(void **state)
{
    (void)state;
    static const char *const frames[] = {"[]", "[{\"op\":\"ping\"}]", "\"ping\"", "12", "null",
                                         "true"};
    for (size_t i = 0; i < sizeof frames / sizeof frames[0]; i++) {
        proto_req req;
        const char *why = NULL;
        assert_int_equal(parse(frames[i], &req, &why), PROTO_E_JSON);
        assert_non_null(why);
        if (frames[i][0] == '[')
            assert_string_equal(why, "not a JSON object");
        assert_string_equal(req.ref, "");
        proto_req_free(&req);
    }
}

/* The frame's length is what counts, not a NUL. */
static void test_length_not_nul(void **state)
{
    (void)state;
    proto_req req;
    const char *why;
    assert_int_equal(parse_n("{\"op\":\"ping\"}\0", 14, &req, &why), PROTO_E_JSON);
    proto_req_free(&req);
    assert_int_equal(parse_n("{\"op\":\"ping\"}junk", 13, &req, &why), PROTO_OK);
    proto_req_free(&req);
    assert_int_equal(parse_n("{\"op\":\"ping\"}", 12, &req, &why), PROTO_E_JSON);
    proto_req_free(&req);
    assert_int_equal(proto_parse(NULL, 0, &lim, &req, &why), PROTO_E_JSON);
    proto_req_free(&req);
}

/* A request whose fields changed is reused cleanly: nothing of the last
 * parse leaks into the next. */
static void test_reuse(void **state)
{
    (void)state;
    proto_req req;
    parse_ok("{\"op\":\"join\",\"room\":\"r\",\"ref\":1,\"history\":3,\"since\":\"1-1\",\"epoch\":\"e\"}",
             &req);
    proto_req_free(&req);
    parse_ok("{\"op\":\"join\",\"room\":\"s\"}", &req);
    assert_string_equal(req.ref, "");
    assert_int_equal(req.history, -1);
    assert_false(req.has_since);
    assert_string_equal(req.epoch, "");
    proto_req_free(&req);
}

static void test_err_code(void **state)
{
    (void)state;
    assert_string_equal(proto_err_code(PROTO_E_JSON), "bad_json");
    assert_string_equal(proto_err_code(PROTO_E_REQUEST), "bad_request");
    assert_string_equal(proto_err_code(PROTO_E_OP), "unknown_op");
    assert_string_equal(proto_err_code(PROTO_E_ROOM), "bad_room");
    assert_string_equal(proto_err_code(PROTO_E_TOO_LARGE), "too_large");
    assert_null(proto_err_code(PROTO_OK));
    assert_null(proto_err_code(-1));
    assert_null(proto_err_code(PROTO_E_TOO_LARGE + 1));
    assert_string_equal(PROTO_SUBPROTOCOL, "chatd.v1");
}

/* ---- Ids -------------------------------------------------------------- */

static int parse_id_str(const char *s, proto_id *out)
{
    size_t n = strlen(s);
    char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, s, n);
    int r = proto_parse_id(copy, n, out);
    free(copy);
    return r;
}

static void test_parse_id(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms, seq;
    } good[] = {
        {"0-0", 0, 0},
        {"1-2", 1, 2},
        {"1700000000000-0", 1700000000000ULL, 0},
        {"00012-0003", 12, 3},
        {"000000000000000000000000000001-0", 1, 0},
        {"18446744073709551615-18446744073709551615", UINT64_MAX, UINT64_MAX},
        {"18446744073709551614-1", UINT64_MAX - 1, 1},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        proto_id id = {99, 99};
        if (parse_id_str(good[i].s, &id) != 0)
            fail_msg("%s refused", good[i].s);
        assert_true(id.ms == good[i].ms && id.seq == good[i].seq);
    }

    static const char *const bad[] = {
        "", "-", "1", "1-", "-1", "-1-2", "1-2-3", "1--2", "+1-2", "1-+2", " 1-2", "1-2 ", "1 -2",
        "1- 2", "a-1", "1-a", "0x1-2", "1-0x2", "1.0-2", "1-2.0", "1e3-2", "１-2", /* fullwidth 1 */
        "18446744073709551616-0", "0-18446744073709551616", "99999999999999999999-0",
        "184467440737095516150-0", "0-99999999999999999999999999",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        proto_id id = {99, 99};
        if (parse_id_str(bad[i], &id) != -1)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_true(id.ms == 99 && id.seq == 99); /* untouched */
    }

    /* len, not a NUL, ends the id. */
    proto_id id;
    assert_int_equal(proto_parse_id("1-23", 3, &id), 0);
    assert_true(id.ms == 1 && id.seq == 2);
    assert_int_equal(proto_parse_id("1-2\0", 4, &id), -1);
    assert_int_equal(proto_parse_id("1\0-2", 4, &id), -1);
    assert_int_equal(proto_parse_id(NULL, 0, &id), -1);
}

static void test_write_id(void **state)
{
    (void)state;
    char out[PROTO_ID_MAX + 1];
    memset(out, '#', sizeof out);
    size_t n = proto_write_id(out, (proto_id){0, 0});
    assert_int_equal(n, 3);
    assert_memory_equal(out, "0-0", 3);
    assert_int_equal(out[3], '#'); /* no NUL written */

    memset(out, '#', sizeof out);
    n = proto_write_id(out, (proto_id){UINT64_MAX, UINT64_MAX});
    assert_int_equal(n, PROTO_ID_MAX);
    assert_memory_equal(out, "18446744073709551615-18446744073709551615", PROTO_ID_MAX);
    assert_int_equal(out[PROTO_ID_MAX], '#');

    static const proto_id ids[] = {
        {0, 0}, {1, 0}, {0, 1}, {9, 10}, {10, 9}, {1700000000000ULL, 42}, {UINT64_MAX, 0},
        {0, UINT64_MAX}, {UINT64_MAX, UINT64_MAX}, {1ULL << 63, (1ULL << 32) + 1},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        proto_id back;
        char want[64];
        n = proto_write_id(out, ids[i]);
        snprintf(want, sizeof want, "%llu-%llu", (unsigned long long)ids[i].ms,
                 (unsigned long long)ids[i].seq);
        assert_int_equal(n, strlen(want));
        assert_memory_equal(out, want, n);
        assert_int_equal(proto_parse_id(out, n, &back), 0);
        assert_int_equal(proto_id_cmp(back, ids[i]), 0);
    }
}

static void test_id_cmp(void **state)
{
    (void)state;
    proto_id a, b;
    /* Numbers, not strings: "10-0" comes after "9-99", "1-10" after "1-9". */
    assert_int_equal(proto_parse_id("10-0", 4, &a), 0);
    assert_int_equal(proto_parse_id("9-99", 4, &b), 0);
    assert_int_equal(proto_id_cmp(a, b), 1);
    assert_int_equal(proto_id_cmp(b, a), -1);
    assert_int_equal(proto_parse_id("1-10", 4, &a), 0);
    assert_int_equal(proto_parse_id("1-9", 3, &b), 0);
    assert_int_equal(proto_id_cmp(a, b), 1);
    assert_int_equal(proto_parse_id("001-09", 6, &a), 0);
    assert_int_equal(proto_id_cmp(a, b), 0);
    assert_int_equal(proto_id_cmp((proto_id){0, UINT64_MAX}, (proto_id){1, 0}), -1);
    assert_int_equal(proto_id_cmp((proto_id){UINT64_MAX, 0}, (proto_id){UINT64_MAX, 1}), -1);
    assert_int_equal(proto_id_cmp((proto_id){UINT64_MAX, UINT64_MAX},
                                  (proto_id){UINT64_MAX, UINT64_MAX}),
                     0);
}

/* ---- Output buffer ---------------------------------------------------- */

static void expect_str(const char *in, size_t len, const char *want)
{
    jbuf b = {0};
    jb_str(&b, in, len);
    assert_false(b.oom);
    if (b.len != strlen(want) || memcmp(b.p, want, b.len) != 0)
        fail_msg("jb_str gave %.*s, want %s", (int)b.len, b.p, want);
    assert_int_equal(b.p[b.len], '\0');
    jb_free(&b);
}

/* Decodes a jb_str result with jansson and compares it with the input. */
static void round_trip(const char *in, size_t len)
{
    jbuf b = {0};
    jb_str(&b, in, len);
    assert_false(b.oom);
    json_error_t err;
    json_t *j = json_loadb(b.p, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
    if (!j)
        fail_msg("jansson refused %s: %s", b.p, err.text);
    assert_true(json_is_string(j));
    assert_int_equal(json_string_length(j), len);
    assert_memory_equal(json_string_value(j), in, len);
    json_decref(j);
    jb_free(&b);
}

static void test_jb_str_escapes(void **state)
{
    (void)state;
    static const char *const names[0x20] = {
        "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007",
        "\\b",     "\\t",     "\\n",     "\\u000b", "\\f",     "\\r",     "\\u000e", "\\u000f",
        "\\u0010", "\\u0011", "\\u0012", "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017",
        "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
    };
    for (int c = 0; c < 0x20; c++) {
        char in[3] = {'a', (char)c, 'b'}, want[16];
        snprintf(want, sizeof want, "\"%s\"", names[c]);
        expect_str(in + 1, 1, want);
        snprintf(want, sizeof want, "\"a%sb\"", names[c]);
        expect_str(in, 3, want);
    }
    expect_str("\x7F", 1, "\"\\u007f\"");
    expect_str("\"", 1, "\"\\\"\"");
    expect_str("\\", 1, "\"\\\\\"");
    expect_str("", 0, "\"\"");
    expect_str(NULL, 0, "\"\"");
    expect_str("\0\0", 2, "\"\\u0000\\u0000\"");
    expect_str("say \"hi\"\n", 9, "\"say \\\"hi\\\"\\n\"");
    /* Everything else goes as it is: '/', '<', '>', '&', ' ', '~',
     * multibyte UTF-8, U+2028 and U+2029, U+0080..U+009F. */
    expect_str("/<>&' ~", 7, "\"/<>&' ~\"");
    expect_str("\xC3\xA9\xE2\x80\xA8\xE2\x80\xA9\xC2\x85\xF0\x9F\x98\x80", 14,
               "\"\xC3\xA9\xE2\x80\xA8\xE2\x80\xA9\xC2\x85\xF0\x9F\x98\x80\"");
}

/* Every ASCII byte, each multibyte length, and pseudo-random strings of
 * code points come back from jansson as they went in. */
static void test_jb_str_round_trip(void **state)
{
    (void)state;
    char all[128];
    for (int c = 0; c < 128; c++)
        all[c] = (char)c;
    round_trip(all, sizeof all);
    round_trip("", 0);
    round_trip("\0", 1);
    round_trip("\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xEF\xBF\xBF\xF0\x90\x80\x80"
               "\xF4\x8F\xBF\xBF",
               24);

    uint32_t x = 0x2545F491u;
    char s[4 * 64];
    for (int round = 0; round < 2000; round++) {
        size_t n = 0;
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        int chars = (int)(x % 64);
        for (int k = 0; k < chars; k++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            uint32_t cp;
            switch (x % 4) { /* weight toward the ranges that get escaped */
            case 0:
                cp = x % 0x80;
                break;
            case 1:
                cp = (x >> 8) % 0x21;
                cp = cp == 0x20 ? 0x7F : cp;
                break;
            case 2:
                cp = 0x80 + (x >> 8) % 0xFF80;
                break;
            default:
                cp = 0x10000 + (x >> 8) % 0x100000;
                break;
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            if (cp < 0x80) {
                s[n++] = (char)cp;
            } else if (cp < 0x800) {
                s[n++] = (char)(0xC0 | cp >> 6);
                s[n++] = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                s[n++] = (char)(0xE0 | cp >> 12);
                s[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
                s[n++] = (char)(0x80 | (cp & 0x3F));
            } else {
                s[n++] = (char)(0xF0 | cp >> 18);
                s[n++] = (char)(0x80 | (cp >> 12 & 0x3F));
                s[n++] = (char)(0x80 | (cp >> 6 & 0x3F));
                s[n++] = (char)(0x80 | (cp & 0x3F));
            }
        }
        round_trip(s, n);
    }
}

/* What proto_parse takes in, jb_str gives back out: the text of a send
 * re-encoded is JSON for the same bytes. */
static void test_parse_then_encode(void **state)
{
    (void)state;
    proto_req req;
    parse_ok("{\"op\":\"send\",\"room\":\"r\",\"text\":\"\\u0000\\u0001\\u007f\\\"\\\\\\u2028\"}", &req);
    round_trip(req.text, req.text_len);
    jbuf b = {0};
    jb_str(&b, req.text, req.text_len);
    assert_string_equal(b.p, "\"\\u0000\\u0001\\u007f\\\"\\\\\xE2\x80\xA8\"");
    jb_free(&b);
    proto_req_free(&req);
}

static void test_jb_numbers(void **state)
{
    (void)state;
    jbuf b = {0};
    jb_u64(&b, 0);
    jb_raw(&b, ",", 1);
    jb_u64(&b, 7);
    jb_raw(&b, ",", 1);
    jb_u64(&b, 1700000000123ULL);
    jb_raw(&b, ",", 1);
    jb_u64(&b, UINT64_MAX);
    jb_raw(&b, ",", 1);
    jb_id(&b, (proto_id){0, 0});
    jb_raw(&b, ",", 1);
    jb_id(&b, (proto_id){1700000000000ULL, 3});
    jb_raw(&b, ",", 1);
    jb_id(&b, (proto_id){UINT64_MAX, UINT64_MAX});
    assert_false(b.oom);
    assert_string_equal(b.p, "0,7,1700000000123,18446744073709551615,\"0-0\",\"1700000000000-3\","
                             "\"18446744073709551615-18446744073709551615\"");
    assert_int_equal(b.len, strlen(b.p));
    jb_free(&b);
}

/* A whole frame built with the helpers is the JSON it should be. */
static void test_jb_frame(void **state)
{
    (void)state;
    jbuf b = {0};
    jb_raw(&b, "{\"op\":\"msg\",\"room\":", 19);
    jb_str(&b, "lobby", 5);
    jb_raw(&b, ",\"id\":", 6);
    jb_id(&b, (proto_id){1700000000000ULL, 1});
    jb_raw(&b, ",\"user\":", 8);
    jb_str(&b, "Al\"ice", 6);
    jb_raw(&b, ",\"text\":", 8);
    jb_str(&b, "a\0b", 3);
    jb_raw(&b, ",\"ts\":", 6);
    jb_u64(&b, 1700000000000ULL);
    jb_raw(&b, "}", 1);
    assert_false(b.oom);
    json_t *j = json_loadb(b.p, b.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")), "1700000000000-1");
    assert_string_equal(json_string_value(json_object_get(j, "user")), "Al\"ice");
    assert_int_equal(json_string_length(json_object_get(j, "text")), 3);
    assert_true(json_integer_value(json_object_get(j, "ts")) == 1700000000000LL);
    json_decref(j);
    jb_free(&b);
}

static void test_jb_growth(void **state)
{
    (void)state;
    jbuf b = {0};
    static char chunk[1000];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 300; i++) {
        jb_raw(&b, chunk, sizeof chunk);
        assert_int_equal(b.len, (size_t)(i + 1) * sizeof chunk);
        assert_true(b.cap > b.len);
        assert_int_equal(b.p[b.len], '\0');
    }
    for (size_t i = 0; i < b.len; i++)
        if (b.p[i] != 'x')
            fail_msg("byte %zu lost", i);
    jb_raw(&b, NULL, 0);
    assert_int_equal(b.len, 300 * sizeof chunk);
    jb_free(&b);
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);

    /* A freed buffer can be used again; an escape-heavy string grows it. */
    char ctl[5000];
    memset(ctl, 1, sizeof ctl);
    jb_str(&b, ctl, sizeof ctl);
    assert_int_equal(b.len, 2 + 6 * sizeof ctl);
    jb_free(&b);
    jb_free(&b);
}

/* After an allocation failure nothing more is written, so a truncated frame
 * never goes out looking whole. */
static void test_jb_oom(void **state)
{
    (void)state;
    jbuf b = {0};
    jb_raw(&b, "ab", 2);
    b.oom = 1; /* as if realloc had failed */
    jb_raw(&b, "cd", 2);
    jb_str(&b, "e", 1);
    jb_u64(&b, 5);
    jb_id(&b, (proto_id){1, 2});
    assert_int_equal(b.len, 2);
    assert_string_equal(b.p, "ab");
    assert_true(b.oom);
    jb_free(&b);
    assert_false(b.oom);

    /* A size no allocator can give sets oom instead of wrapping around. */
    jb_raw(&b, "ab", 2);
    jb_raw(&b, "x", SIZE_MAX - 1);
    assert_true(b.oom);
    assert_int_equal(b.len, 2);
    jb_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_op),
        cmocka_unit_test(test_ping),
        cmocka_unit_test(test_refresh),
        cmocka_unit_test(test_send_text),
        cmocka_unit_test(test_room),
        cmocka_unit_test(test_join_fields),
        cmocka_unit_test(test_history_fields),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_ref_types),
        cmocka_unit_test(test_ref_round_trip),
        cmocka_unit_test(test_ref_size),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_not_object),
        cmocka_unit_test(test_length_not_nul),
        cmocka_unit_test(test_reuse),
        cmocka_unit_test(test_err_code),
        cmocka_unit_test(test_parse_id),
        cmocka_unit_test(test_write_id),
        cmocka_unit_test(test_id_cmp),
        cmocka_unit_test(test_jb_str_escapes),
        cmocka_unit_test(test_jb_str_round_trip),
        cmocka_unit_test(test_parse_then_encode),
        cmocka_unit_test(test_jb_numbers),
        cmocka_unit_test(test_jb_frame),
        cmocka_unit_test(test_jb_growth),
        cmocka_unit_test(test_jb_oom),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
