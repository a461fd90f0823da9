/* libFuzzer target for the chatd.v1 request parser and the encoders
 * (proto.h, names.h).
 *
 * Input: byte 0 picks max_room and max_message, the rest is one text frame.
 * A frame that parses must keep every promise of proto.h (a valid room, text
 * within max_message, a ref that is short, compact JSON of a string or a
 * number, fields in range), and what the server would echo of it, room and
 * text through jb_str, must read back through jansson as the same bytes. A
 * frame that fails must come with a code and a reason. The frame's bytes
 * are also tried as an id and, when they are UTF-8, as a string to encode.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "names.h"
#include "proto.h"
#include "ws.h"
#include "fuzz.h"

static const size_t rooms[] = {0, 1, 4, 16, 64, 256};
static const size_t messages[] = {0, 1, 8, 64, 4096, 1u << 20};

/* s[0..len) through jb_str and back through jansson is s[0..len) again. */
static void check_round_trip(const char *s, size_t len)
{
    jbuf b = {0};
    jb_str(&b, s, len);
    CHECK(!b.oom && b.len >= len + 2 && b.p[b.len] == '\0');
    json_t *j = json_loadb(b.p, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    CHECK(j && json_is_string(j));
    CHECK(json_string_length(j) == len && memcmp(json_string_value(j), s, len) == 0);
    json_decref(j);
    jb_free(&b);
}

static void check_id(proto_id id)
{
    char out[PROTO_ID_MAX];
    proto_id back;
    size_t n = proto_write_id(out, id);
    CHECK(n >= 3 && n <= PROTO_ID_MAX);
    CHECK(proto_parse_id(out, n, &back) == 0 && proto_id_cmp(back, id) == 0);
}

static void check_request(const proto_req *req, const proto_limits *lim)
{
    CHECK(req->op >= PROTO_JOIN && req->op <= PROTO_REFRESH);
    if (req->op == PROTO_REFRESH) {
        CHECK(req->room == NULL);
        CHECK(req->token && req->token_len <= PROTO_TOKEN_MAX);
        check_round_trip(req->token, req->token_len);
    } else if (req->op == PROTO_PING) {
        CHECK(req->room == NULL);
    } else {
        CHECK(req->room && names_check(req->room, req->room_len, lim->max_room) == NAMES_OK);
        check_round_trip(req->room, req->room_len);
    }
    if (req->op == PROTO_SEND) {
        CHECK(req->text && req->text_len <= lim->max_message);
        CHECK(utf8_validate((const uint8_t *)req->text, req->text_len) == 0);
        check_round_trip(req->text, req->text_len);
    } else {
        CHECK(req->text == NULL && req->text_len == 0);
    }

    CHECK(req->history >= -1 && req->history <= PROTO_HISTORY_MAX);
    CHECK(req->op == PROTO_JOIN || (req->history == -1 && !req->has_since && !req->epoch[0]));
    CHECK(strlen(req->epoch) <= PROTO_EPOCH_MAX);
    if (req->has_since) {
        CHECK(req->epoch[0] != '\0');
        check_id(req->since);
    }
    CHECK(req->limit >= 1 && req->limit <= PROTO_LIMIT_MAX);
    CHECK(req->op == PROTO_HISTORY || (req->limit == PROTO_LIMIT_DEFAULT && !req->has_before));
    if (req->has_before)
        check_id(req->before);
}

/* Whatever the verdict, a ref that is there is compact JSON for a string or
 * a number, within its size. */
static void check_ref(const proto_req *req)
{
    CHECK(req->ref_len <= PROTO_REF_MAX && strlen(req->ref) == req->ref_len);
    if (req->ref_len == 0)
        return;
    json_t *j = json_loadb(req->ref, req->ref_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    CHECK(j && (json_is_string(j) || json_is_number(j)));
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    proto_limits lim = {
        .max_room = rooms[data[0] % 6],
        .max_message = messages[data[0] / 6 % 6],
    };
    const char *in = (const char *)data + 1;
    size_t len = size - 1;

    /* The frame in an allocation of its own size: a read past it is seen. */
    char *frame = malloc(len ? len : 1);
    CHECK(frame);
    memcpy(frame, in, len);
    proto_req req;
    const char *reason = "unset";
    int err = proto_parse(frame, len, &lim, &req, &reason);
    free(frame); /* nothing of the request may point into the frame */
    if (err == PROTO_OK) {
        CHECK(reason == NULL);
        check_request(&req, &lim);
    } else {
        CHECK(err >= PROTO_E_JSON && err <= PROTO_E_TOO_LARGE);
        CHECK(reason && reason[0] && proto_err_code(err));
    }
    check_ref(&req);
    proto_req_free(&req);

    /* The raw bytes as an id: what parses writes back to an equal id, no
     * longer than what was read (only leading zeros can go). */
    proto_id id;
    if (proto_parse_id(in, len, &id) == 0) {
        char out[PROTO_ID_MAX];
        size_t n = proto_write_id(out, id);
        CHECK(n <= len);
        check_id(id);
    }
    if (utf8_validate(data + 1, len) == 0)
        check_round_trip(in, len);
    return 0;
}
