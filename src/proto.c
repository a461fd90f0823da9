/* proto — the chatd.v1 JSON protocol, sans I/O (see proto.h). */
#include "proto.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "names.h"

#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- Requests --------------------------------------------------------- */

static const struct {
    const char *name;
    int op;
} ops[] = {
    {"join", PROTO_JOIN},       {"leave", PROTO_LEAVE},   {"send", PROTO_SEND},
    {"history", PROTO_HISTORY}, {"typing", PROTO_TYPING}, {"ping", PROTO_PING},
    {"refresh", PROTO_REFRESH},
};

static const char *const room_why[] = {
    [NAMES_EMPTY] = "room is empty",
    [NAMES_TOO_LONG] = "room is too long",
    [NAMES_BAD_UTF8] = "room is not valid UTF-8",
    [NAMES_CONTROL] = "room contains a control character",
};

/* Sets the reason and returns the code: each failure is one line. */
static int fail(const char **reason, int err, const char *why)
{
    *reason = why;
    return err;
}

/* The ref is serialized once here, so echoing it in an ack or error is a
 * copy of bytes, and its size is bounded before it goes anywhere. */
static int parse_ref(json_t *ref, proto_req *req, const char **reason)
{
    if (!ref)
        return PROTO_OK;
    if (!json_is_string(ref) && !json_is_number(ref))
        return fail(reason, PROTO_E_REQUEST, "ref is not a string or a number");
    size_t n = json_dumpb(ref, req->ref, PROTO_REF_MAX, JSON_COMPACT | JSON_ENCODE_ANY);
    if (n == 0 || n > PROTO_REF_MAX) {
        /* json_dumpb wrote what fitted: nothing of it is usable. */
        req->ref[0] = '\0';
        return fail(reason, PROTO_E_REQUEST, "ref is too long");
    }
    req->ref[n] = '\0';
    req->ref_len = n;
    return PROTO_OK;
}

static int parse_op(json_t *op, int *out, const char **reason)
{
    if (!op)
        return fail(reason, PROTO_E_REQUEST, "op is missing");
    if (!json_is_string(op))
        return fail(reason, PROTO_E_REQUEST, "op is not a string");
    const char *s = json_string_value(op);
    size_t n = json_string_length(op);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        if (strlen(ops[i].name) == n && memcmp(ops[i].name, s, n) == 0) {
            *out = ops[i].op;
            return PROTO_OK;
        }
    }
    return fail(reason, PROTO_E_OP, "unknown op");
}

static int parse_room(json_t *room, const proto_limits *lim, proto_req *req, const char **reason)
{
    if (!room)
        return fail(reason, PROTO_E_REQUEST, "room is missing");
    if (!json_is_string(room))
        return fail(reason, PROTO_E_REQUEST, "room is not a string");
    const char *s = json_string_value(room);
    size_t n = json_string_length(room);
    int bad = names_check(s, n, lim->max_room);
    if (bad != NAMES_OK)
        return fail(reason, PROTO_E_ROOM, room_why[bad]);
    req->room = s;
    req->room_len = n;
    return PROTO_OK;
}

static int parse_text(json_t *text, const proto_limits *lim, proto_req *req, const char **reason)
{
    if (!text)
        return fail(reason, PROTO_E_REQUEST, "text is missing");
    if (!json_is_string(text))
        return fail(reason, PROTO_E_REQUEST, "text is not a string");
    size_t n = json_string_length(text);
    if (n > lim->max_message)
        return fail(reason, PROTO_E_TOO_LARGE, "text is longer than max_message");
    req->text = json_string_value(text);
    req->text_len = n;
    return PROTO_OK;
}

/* An optional integer field in lo..hi; *out is left alone when absent. */
static int parse_int(json_t *v, int64_t lo, int64_t hi, int64_t *out, const char *why,
                     const char **reason)
{
    if (!v)
        return PROTO_OK;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return fail(reason, PROTO_E_REQUEST, why);
    *out = json_integer_value(v);
    return PROTO_OK;
}

/* An optional id field; *has is left 0 when absent. */
static int parse_id_field(json_t *v, int *has, proto_id *out, const char *why, const char **reason)
{
    if (!v)
        return PROTO_OK;
    if (!json_is_string(v) || proto_parse_id(json_string_value(v), json_string_length(v), out) != 0)
        return fail(reason, PROTO_E_REQUEST, why);
    *has = 1;
    return PROTO_OK;
}

static int parse_join(json_t *root, proto_req *req, const char **reason)
{
    int err = parse_int(json_object_get(root, "history"), 0, PROTO_HISTORY_MAX, &req->history,
                        "history is not an integer from 0 to " STR(PROTO_HISTORY_MAX), reason);
    if (err)
        return err;
    err = parse_id_field(json_object_get(root, "since"), &req->has_since, &req->since,
                         "since is not an id", reason);
    if (err)
        return err;
    json_t *epoch = json_object_get(root, "epoch");
    if (epoch) {
        if (!json_is_string(epoch))
            return fail(reason, PROTO_E_REQUEST, "epoch is not a string");
        size_t n = json_string_length(epoch);
        if (n == 0)
            return fail(reason, PROTO_E_REQUEST, "epoch is empty");
        if (n > PROTO_EPOCH_MAX)
            return fail(reason, PROTO_E_REQUEST, "epoch is too long");
        /* epoch is a C string in the request: a NUL would cut it short,
         * and no server ever hands out an epoch holding one. */
        if (memchr(json_string_value(epoch), '\0', n))
            return fail(reason, PROTO_E_REQUEST, "epoch contains a NUL byte");
        memcpy(req->epoch, json_string_value(epoch), n + 1);
    }
    /* An id means nothing outside the history it came from. */
    if (req->has_since && req->epoch[0] == '\0')
        return fail(reason, PROTO_E_REQUEST, "since needs epoch");
    return PROTO_OK;
}

static int parse_history(json_t *root, proto_req *req, const char **reason)
{
    int err = parse_id_field(json_object_get(root, "before"), &req->has_before, &req->before,
                             "before is not an id", reason);
    if (err)
        return err;
    return parse_int(json_object_get(root, "limit"), 1, PROTO_LIMIT_MAX, &req->limit,
                     "limit is not an integer from 1 to " STR(PROTO_LIMIT_MAX), reason);
}

int proto_parse(const char *buf, size_t len, const proto_limits *lim, proto_req *req,
                const char **reason)
{
    memset(req, 0, sizeof *req);
    req->history = -1;
    req->limit = PROTO_LIMIT_DEFAULT;
    *reason = NULL;

    json_error_t jerr;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        if (json_error_code(&jerr) == json_error_duplicate_key)
            return fail(reason, PROTO_E_JSON, "duplicate key");
        return fail(reason, PROTO_E_JSON, "not valid JSON");
    }
    req->root = root;
    if (!json_is_object(root))
        return fail(reason, PROTO_E_JSON, "not a JSON object");

    /* The ref first, so that every later error can echo it. */
    int err = parse_ref(json_object_get(root, "ref"), req, reason);
    if (err)
        return err;
    int op = 0;
    err = parse_op(json_object_get(root, "op"), &op, reason);
    if (err)
        return err;
    if (op == PROTO_PING) {
        req->op = op;
        return PROTO_OK;
    }
    if (op == PROTO_REFRESH) {
        json_t *t = json_object_get(root, "token");
        if (!json_is_string(t))
            return fail(reason, PROTO_E_REQUEST, "token is missing or not a string");
        if (json_string_length(t) > PROTO_TOKEN_MAX)
            return fail(reason, PROTO_E_REQUEST, "token is too long");
        req->token = json_string_value(t);
        req->token_len = json_string_length(t);
        req->op = op;
        return PROTO_OK;
    }
    err = parse_room(json_object_get(root, "room"), lim, req, reason);
    if (!err && op == PROTO_SEND)
        err = parse_text(json_object_get(root, "text"), lim, req, reason);
    if (!err && op == PROTO_JOIN)
        err = parse_join(root, req, reason);
    if (!err && op == PROTO_HISTORY)
        err = parse_history(root, req, reason);
    if (err)
        return err;
    req->op = op;
    return PROTO_OK;
}

void proto_req_free(proto_req *req)
{
    json_decref(req->root);
    req->root = NULL;
    req->room = NULL;
    req->room_len = 0;
    req->text = NULL;
    req->text_len = 0;
}

const char *proto_err_code(int err)
{
    switch (err) {
    case PROTO_E_JSON:
        return "bad_json";
    case PROTO_E_REQUEST:
        return "bad_request";
    case PROTO_E_OP:
        return "unknown_op";
    case PROTO_E_ROOM:
        return "bad_room";
    case PROTO_E_TOO_LARGE:
        return "too_large";
    default:
        return NULL;
    }
}

/* ---- Ids -------------------------------------------------------------- */

static int parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int proto_parse_id(const char *s, size_t len, proto_id *out)
{
    if (len == 0)
        return -1;
    const char *dash = memchr(s, '-', len);
    if (!dash)
        return -1;
    size_t a = (size_t)(dash - s);
    proto_id id;
    if (parse_u64(s, a, &id.ms) != 0 || parse_u64(dash + 1, len - a - 1, &id.seq) != 0)
        return -1;
    *out = id;
    return 0;
}

/* Writes v in decimal (at most 20 digits). Returns the length. */
static size_t write_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t proto_write_id(char *out, proto_id id)
{
    size_t n = write_u64(out, id.ms);
    out[n++] = '-';
    return n + write_u64(out + n, id.seq);
}

int proto_id_cmp(proto_id a, proto_id b)
{
    if (a.ms != b.ms)
        return a.ms < b.ms ? -1 : 1;
    if (a.seq != b.seq)
        return a.seq < b.seq ? -1 : 1;
    return 0;
}

/* ---- Output buffer ---------------------------------------------------- */

/* Makes room for more bytes and the trailing NUL. Returns 0, or -1 with oom
 * set. */
static int jb_reserve(jbuf *b, size_t more)
{
    if (b->oom)
        return -1;
    if (more < b->cap - b->len)
        return 0;
    if (more > SIZE_MAX - b->len - 1) {
        b->oom = 1;
        return -1;
    }
    size_t need = b->len + more + 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void jb_raw(jbuf *b, const char *s, size_t len)
{
    if (b->measure) {
        b->len += len;
        return;
    }
    if (jb_reserve(b, len) != 0)
        return;
    if (len)
        memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void jb_str(jbuf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t start = 0;

    if (len == 0) { /* s may be NULL then */
        jb_raw(b, "\"\"", 2);
        return;
    }
    jb_raw(b, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        /* JSON does not require escaping DEL, but raw it is invisible and
         * upsets terminals showing a log or a capture. */
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7F)
            continue;
        jb_raw(b, s + start, i - start);
        start = i + 1;
        switch (c) {
        case '"':
            jb_raw(b, "\\\"", 2);
            break;
        case '\\':
            jb_raw(b, "\\\\", 2);
            break;
        case '\b':
            jb_raw(b, "\\b", 2);
            break;
        case '\t':
            jb_raw(b, "\\t", 2);
            break;
        case '\n':
            jb_raw(b, "\\n", 2);
            break;
        case '\f':
            jb_raw(b, "\\f", 2);
            break;
        case '\r':
            jb_raw(b, "\\r", 2);
            break;
        default: {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            jb_raw(b, u, sizeof u);
        }
        }
    }
    jb_raw(b, s + start, len - start);
    jb_raw(b, "\"", 1);
}

void jb_u64(jbuf *b, uint64_t v)
{
    char tmp[20];
    jb_raw(b, tmp, write_u64(tmp, v));
}

void jb_id(jbuf *b, proto_id id)
{
    char tmp[PROTO_ID_MAX + 2];
    tmp[0] = '"';
    size_t n = 1 + proto_write_id(tmp + 1, id);
    tmp[n++] = '"';
    jb_raw(b, tmp, n);
}

void jb_free(jbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
