/* handshake — the HTTP side of a WebSocket opening handshake (RFC 6455 4.2),
 * pure: bytes in, verdict and response bytes out. */
#include "handshake.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <llhttp.h>
#include <openssl/evp.h>

#include "auth.h"
#include "pmd.h"
#include "proto.h"
#include "web.h"
#include "ws.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* What we keep of a request: the URL and the first occurrence of each
 * header that matters, with a count of its occurrences. Upgrade and
 * Connection are lists (RFC 9110 5.3): each occurrence is searched for its
 * token as it completes. Sec-WebSocket-Protocol, kept for subprotocol
 * negotiation, is stored joined with ", " over all its occurrences. */
enum {
    H_URL,
    H_HOST,
    H_UPGRADE,
    H_CONNECTION,
    H_KEY,
    H_VERSION,
    H_ORIGIN,
    H_PROTOCOL,
    H_IF_NONE_MATCH,
    H_XFF,
    H_EXTENSIONS,
    H_COUNT,
    H_NONE = H_COUNT,
};

static const char *const field_names[H_COUNT] = {
    [H_HOST] = "host",
    [H_UPGRADE] = "upgrade",
    [H_CONNECTION] = "connection",
    [H_KEY] = "sec-websocket-key",
    [H_VERSION] = "sec-websocket-version",
    [H_ORIGIN] = "origin",
    [H_PROTOCOL] = "sec-websocket-protocol",
    [H_IF_NONE_MATCH] = "if-none-match",
    [H_XFF] = "x-forwarded-for",
    [H_EXTENSIONS] = "sec-websocket-extensions",
};

/* X-Forwarded-For lines joined past this many are not kept (the value is
 * then not used at all): it bounds the moves below, and no honest chain of
 * proxies adds so many lines. */
#define XFF_LINES_MAX 8
/* The same for Sec-WebSocket-Extensions: past this many lines no extension
 * is negotiated (a browser sends one). */
#define EXT_LINES_MAX 8

/* Longer than any name above: a name that does not fit is not one of ours. */
#define NAME_BUF 32

typedef struct span {
    size_t off;
    size_t len;
    unsigned count; /* occurrences seen; 0: absent */
} span;

enum { ST_HEAD, ST_DONE, ST_ERROR };

struct hs_request {
    llhttp_t parser;
    size_t max_head;
    size_t head_len; /* head bytes fed to llhttp so far */
    int state;
    int status;   /* HS_ERROR: the HTTP status it stands for */
    int complete; /* llhttp saw the end of the message */

    char name[NAME_BUF]; /* header name being collected */
    size_t name_len;
    int name_long;
    int cur;          /* field the current value belongs to, or H_NONE */
    int cur_stored;   /* the current value's bytes go to the arena */
    int cur_temp;     /* ... only until the value is complete */
    size_t cur_off;   /* where the current value starts in the arena */
    int upgrade_ws;   /* some Upgrade holds the token "websocket" */
    int conn_upgrade; /* some Connection holds the token "upgrade" */

    span f[H_COUNT];
    size_t used;  /* arena bytes in use */
    char arena[]; /* max_head bytes: stored URL and header values */
};

/* Header names, values and the URL are distinct bytes of the head, and the
 * ", " joining two occurrences is paid for by the CRLF that ended the
 * previous one, so the arena never holds more than max_head bytes. */
static int arena_put(hs_request *r, const char *p, size_t n) {
    if (n > r->max_head - r->used)
        return -1;
    memcpy(r->arena + r->used, p, n);
    r->used += n;
    return 0;
}

static void reverse(char *p, size_t n) {
    for (size_t i = 0; i < n / 2; i++) {
        char c = p[i];
        p[i] = p[n - 1 - i];
        p[n - 1 - i] = c;
    }
}

/* Moves field id's bytes to the end of the arena so that a new occurrence
 * can be appended to it; fields stored after it shift down. Only the joined
 * fields are moved: Sec-WebSocket-Protocol, and X-Forwarded-For and
 * Sec-WebSocket-Extensions for their first 8 lines each; of the other
 * fields only first occurrences are kept. So a move happens a bounded
 * number of times per request (at most once per line of the two bounded
 * fields, and once per field stored behind the protocol), never once per
 * header line. */
static void move_to_end(hs_request *r, int id) {
    span *s = &r->f[id];
    size_t end = s->off + s->len;
    if (end == r->used)
        return;
    char *p = r->arena + s->off;
    size_t total = r->used - s->off;
    reverse(p, s->len);
    reverse(p + s->len, total - s->len);
    reverse(p, total);
    for (int i = 0; i < H_COUNT; i++)
        if (i != id && r->f[i].count && r->f[i].off >= end)
            r->f[i].off -= s->len;
    s->off = r->used - s->len;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* True if the comma-separated list v[0..n) holds token (any case). */
static int has_token(const char *v, size_t n, const char *token) {
    size_t tlen = strlen(token);
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && is_ows(v[a]))
            a++;
        while (b > a && is_ows(v[b - 1]))
            b--;
        if (b - a == tlen && strncasecmp(v + a, token, tlen) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

static hs_request *req_of(llhttp_t *p) { return p->data; }

static int fail_cb(hs_request *r, int status) {
    r->status = status;
    return -1;
}

static int on_url(llhttp_t *p, const char *at, size_t n) {
    hs_request *r = req_of(p);
    r->f[H_URL].count = 1;
    if (arena_put(r, at, n) < 0)
        return fail_cb(r, 431);
    r->f[H_URL].len += n;
    return 0;
}

/* RFC 9110 5.6.2 tchar. llhttp in its default (loose) mode lets a space
 * into a field name, which would hide "Host : x" from us. */
static int is_tchar(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int on_header_field(llhttp_t *p, const char *at, size_t n) {
    hs_request *r = req_of(p);
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)at[i]))
            return fail_cb(r, 400);
    if (r->name_long || n > sizeof r->name - r->name_len) {
        r->name_long = 1;
        return 0;
    }
    memcpy(r->name + r->name_len, at, n);
    r->name_len += n;
    return 0;
}

static int on_header_field_complete(llhttp_t *p) {
    hs_request *r = req_of(p);
    r->cur = H_NONE;
    r->cur_stored = 0;
    if (!r->name_long) {
        for (int i = H_URL + 1; i < H_COUNT; i++) {
            if (strlen(field_names[i]) == r->name_len &&
                strncasecmp(field_names[i], r->name, r->name_len) == 0) {
                r->cur = i;
                break;
            }
        }
    }
    r->name_len = 0;
    r->name_long = 0;
    if (r->cur == H_NONE)
        return 0;

    span *s = &r->f[r->cur];
    if (s->count == 0) {
        s->off = r->used;
        s->len = 0;
        r->cur_stored = 1;
    } else if (r->cur == H_PROTOCOL || (r->cur == H_XFF && s->count < XFF_LINES_MAX) ||
               (r->cur == H_EXTENSIONS && s->count < EXT_LINES_MAX)) {
        move_to_end(r, r->cur);
        if (arena_put(r, ", ", 2) < 0)
            return fail_cb(r, 431);
        s->len += 2;
        r->cur_stored = 1;
    } else if (r->cur == H_UPGRADE || r->cur == H_CONNECTION) {
        r->cur_stored = 1;
        r->cur_temp = 1;
    }
    r->cur_off = r->used;
    s->count++;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n) {
    hs_request *r = req_of(p);
    if (!r->cur_stored)
        return 0;
    if (arena_put(r, at, n) < 0)
        return fail_cb(r, 431);
    if (!r->cur_temp)
        r->f[r->cur].len += n;
    return 0;
}

static int on_header_value_complete(llhttp_t *p) {
    hs_request *r = req_of(p);
    if (r->cur == H_UPGRADE || r->cur == H_CONNECTION) {
        const char *v = r->arena + r->cur_off;
        size_t n = r->used - r->cur_off;
        if (r->cur == H_UPGRADE && has_token(v, n, "websocket"))
            r->upgrade_ws = 1;
        if (r->cur == H_CONNECTION && has_token(v, n, "upgrade"))
            r->conn_upgrade = 1;
    }
    if (r->cur_temp)
        r->used = r->cur_off;
    r->cur = H_NONE;
    r->cur_stored = 0;
    r->cur_temp = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p) {
    hs_request *r = req_of(p);
    /* A handshake has no body; reading one would mean taking the client's
     * first frames for it, or waiting for bytes that never come. */
    if ((p->flags & (F_CHUNKED | F_TRANSFER_ENCODING)) || p->content_length > 0)
        return fail_cb(r, 400);
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    hs_request *r = req_of(p);
    r->complete = 1;
    /* Stop right behind the head: what follows is not HTTP. */
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

hs_request *hs_request_new(size_t max_head) {
    if (max_head == 0 || max_head > SIZE_MAX - sizeof(hs_request))
        return NULL;
    hs_request *r = calloc(1, sizeof *r + max_head);
    if (!r)
        return NULL;
    r->max_head = max_head;
    r->cur = H_NONE;
    llhttp_init(&r->parser, HTTP_REQUEST, &settings);
    r->parser.data = r;
    return r;
}

void hs_request_free(hs_request *r) { free(r); }

static int feed_fail(hs_request *r, int status) {
    r->state = ST_ERROR;
    if (r->status == 0)
        r->status = status;
    return HS_ERROR;
}

int hs_feed(hs_request *r, const uint8_t *data, size_t len, size_t *consumed) {
    *consumed = 0;
    if (r->state == ST_DONE)
        return HS_DONE;
    if (r->state == ST_ERROR)
        return HS_ERROR;

    /* llhttp never sees more than max_head bytes of head, so the limit
     * holds however the bytes are split. */
    size_t room = r->max_head - r->head_len;
    size_t n = len < room ? len : room;
    const char *p = (const char *)data;
    llhttp_errno_t err = llhttp_execute(&r->parser, p, n);

    if (err == HPE_OK) {
        r->head_len += n;
        if (r->head_len >= r->max_head)
            return feed_fail(r, 431);
        *consumed = len;
        return HS_MORE;
    }
    if ((err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) && r->complete) {
        /* error_pos is the first byte behind the head. */
        const char *pos = llhttp_get_error_pos(&r->parser);
        if (!pos || pos < p || pos > p + n)
            return feed_fail(r, 400);
        size_t used = (size_t)(pos - p);
        r->head_len += used;
        *consumed = used;
        r->state = ST_DONE;
        return HS_DONE;
    }
    return feed_fail(r, 400);
}

int hs_request_status(const hs_request *r) { return r->status; }

/* ---- Response ------------------------------------------------------- */

static const char *status_text(int status) {
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

/* Room left in the response for a reason: status line and headers of the
 * longest error response take well under 200 bytes. */
#define BODY_MAX (HS_RESPONSE_MAX - 200)

static void text_response(hs_result *out, int status, const char *extra, const char *body) {
    size_t blen = strlen(body);
    if (blen > BODY_MAX)
        blen = BODY_MAX;
    int n = snprintf(out->response, sizeof out->response,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: text/plain\r\n"
                     "Connection: close\r\n"
                     "%s"
                     "Content-Length: %zu\r\n"
                     "\r\n"
                     "%.*s",
                     status, status_text(status), extra, blen, (int)blen, body);
    out->response_len = n < 0 ? 0 : (size_t)n;
    if (out->response_len >= sizeof out->response) /* cannot happen: see BODY_MAX */
        out->response_len = sizeof out->response - 1;
    out->status = status;
    out->upgrade = 0;
    out->deflate = 0;
    out->metrics = 0;
    out->health_check = 0;
    out->ready_check = 0;
    out->body = NULL;
    out->body_len = 0;
}

void hs_text_response(hs_result *out, int status, const char *body) {
    text_response(out, status, "", body);
}

void hs_error_response(hs_result *out, int status, const char *reason) {
    char body[BODY_MAX + 2];
    const char *extra = "";
    if (status == 405)
        extra = "Allow: GET\r\n";
    else if (status == 426)
        extra = "Sec-WebSocket-Version: 13\r\n";
    if (!reason)
        reason = status_text(status);
    snprintf(body, sizeof body, "%.*s\n", BODY_MAX - 1, reason);
    text_response(out, status, extra, body);
    out->reason = reason;
}

void hs_accept_key(const char *key, size_t key_len, char out[29]) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    out[0] = '\0';
    if (!ctx)
        return;
    if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 && EVP_DigestUpdate(ctx, key, key_len) == 1 &&
        EVP_DigestUpdate(ctx, WS_GUID, sizeof WS_GUID - 1) == 1 &&
        EVP_DigestFinal_ex(ctx, md, &md_len) == 1 && md_len == 20)
        EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
    EVP_MD_CTX_free(ctx);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* hs_url_decode with the two failures told apart: -1 bad escape or NUL,
 * -2 does not fit. */
static long url_decode(const char *src, size_t len, char *out, size_t outlen) {
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (len - i < 3)
                return -1;
            int hi = hexval(src[i + 1]);
            int lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = hi << 4 | lo;
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == 0)
            return -1;
        if (o + 1 >= outlen)
            return -2;
        out[o++] = (char)c;
    }
    if (outlen == 0)
        return -2;
    out[o] = '\0';
    return (long)o;
}

int hs_url_decode(const char *src, size_t len, char *out, size_t outlen) {
    if (outlen > INT_MAX)
        outlen = INT_MAX;
    long n = url_decode(src, len, out, outlen);
    return n < 0 ? -1 : (int)n;
}

/* ---- Judging a request ---------------------------------------------- */

static const char *field(const hs_request *r, int id, size_t *len);

const char *hs_forwarded_for(const hs_request *r, size_t *len) {
    if (r->f[H_XFF].count > XFF_LINES_MAX) return NULL;
    return field(r, H_XFF, len);
}

/* A field's value without surrounding whitespace; NULL when absent. */
static const char *field(const hs_request *r, int id, size_t *len) {
    const span *s = &r->f[id];
    if (!s->count) {
        *len = 0;
        return NULL;
    }
    const char *p = r->arena + s->off;
    size_t n = s->len;
    while (n && is_ows(*p)) {
        p++;
        n--;
    }
    while (n && is_ows(p[n - 1]))
        n--;
    *len = n;
    return p;
}

static int is_b64(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/* RFC 6455 4.2.1: the key decodes to exactly 16 bytes, i.e. 22 base64
 * characters and "==". */
static int key_valid(const char *k, size_t n) {
    unsigned char raw[18];
    if (n != 24 || k[22] != '=' || k[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(k[i]))
            return 0;
    return EVP_DecodeBlock(raw, (const unsigned char *)k, 24) == 18;
}

/* Finds the first query parameter named name in q[0..n) and decodes its
 * value into out. Returns 1 found, 0 absent, -1 bad escape, -2 too long. */
static int query_param(const char *q, size_t n, const char *name, char *out, size_t outlen) {
    char key[32];
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && q[j] != '&')
            j++;
        size_t eq = i;
        while (eq < j && q[eq] != '=')
            eq++;
        long k = url_decode(q + i, eq - i, key, sizeof key);
        if (k >= 0 && strcmp(key, name) == 0) {
            size_t vo = eq < j ? eq + 1 : j;
            long v = url_decode(q + vo, j - vo, out, outlen);
            return v >= 0 ? 1 : (int)v;
        }
        i = j + 1;
    }
    return 0;
}

/* A name a user or room may have: 1..max bytes of UTF-8 without control
 * characters. Returns NULL if valid, else why not. */
static const char *name_problem(const char *s, int max, const char *const why[4]) {
    size_t n = strlen(s);
    if (n == 0)
        return why[0];
    if (n > (size_t)max)
        return why[1];
    if (utf8_validate((const uint8_t *)s, n) != 0)
        return why[2];
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F)
            return why[3];
    }
    return NULL;
}

static const char *const user_why[4] = {
    "username is empty",
    "username is too long",
    "username is not valid UTF-8",
    "username contains a control character",
};

static const char *const room_why[4] = {
    "room is empty",
    "room is too long",
    "room is not valid UTF-8",
    "room contains a control character",
};

static int clamp_max(int max) { return max < 0 ? 0 : max > HS_NAME_MAX ? HS_NAME_MAX : max; }

/* With auth_secret set the name is the token's sub, and a username in the
 * query is not even looked at: it cannot override the token. Returns NULL
 * or the reason for a 401. */
static const char *judge_token(const char *q, size_t qlen, const config *cfg, time_t now,
                               hs_result *out) {
    char token[AUTH_TOKEN_MAX + 1];
    const char *why = NULL;
    int rc = query_param(q, qlen, "token", token, sizeof token);
    if (rc == 0)
        return "token is required";
    if (rc == -1)
        return "token is not validly percent-encoded";
    if (rc == -2)
        return "token is too long";
    if (auth_verify_either(cfg->auth_secret, cfg->auth_secret_previous, token, strlen(token), now,
                           out->username, (size_t)clamp_max(cfg->max_username) + 1, &out->rooms,
                           &out->exp, &why) < 0)
        return why;
    return NULL;
}

/* Without authentication the name is ?username=. Returns NULL or the
 * reason for a 400. */
static const char *judge_username(const char *q, size_t qlen, const config *cfg, hs_result *out) {
    int rc = query_param(q, qlen, "username", out->username, sizeof out->username);
    if (rc == 0)
        return "username is required";
    if (rc == -1)
        return "username is not validly percent-encoded";
    if (rc == -2)
        return user_why[1];
    return name_problem(out->username, clamp_max(cfg->max_username), user_why);
}

/* Fills out->username and out->room from the query. Returns NULL, or the
 * reason with *status set to 401 (token refused) or 400. */
static const char *judge_query(const char *q, size_t qlen, const config *cfg, time_t now,
                               hs_result *out, int *status) {
    const char *why;
    if (cfg->auth_secret[0] != '\0') {
        *status = 401;
        why = judge_token(q, qlen, cfg, now, out);
    } else {
        *status = 400;
        why = judge_username(q, qlen, cfg, out);
    }
    if (why)
        return why;

    *status = 400;
    char num[64];
    out->history = -1;
    int rc = query_param(q, qlen, "history", num, sizeof num);
    if (rc != 0) {
        char *end;
        long long n = rc > 0 ? strtoll(num, &end, 10) : -1;
        if (rc < 0 || num[0] < '0' || num[0] > '9' || *end || n > PROTO_HISTORY_MAX)
            return "history must be a number of messages, 0 to 10000";
        out->history = n;
    }
    rc = query_param(q, qlen, "since", num, sizeof num);
    if (rc != 0) {
        proto_id id;
        if (!out->json)
            return "since is for chatd.v1 clients";
        if (rc < 0 || proto_parse_id(num, strlen(num), &id) < 0)
            return "since must be a message id";
        rc = query_param(q, qlen, "epoch", out->epoch, sizeof out->epoch);
        if (rc <= 0 || out->epoch[0] == '\0')
            return "since needs epoch";
        out->has_since = 1;
        out->since_ms = id.ms;
        out->since_seq = id.seq;
    }
    rc = query_param(q, qlen, "room", out->room, sizeof out->room);
    if (rc == 0) {
        /* A text client is always in a room; a chatd.v1 client joins its
         * rooms when it likes. */
        if (!out->json)
            snprintf(out->room, sizeof out->room, "%s", cfg->default_room);
        out->has_room = !out->json;
    } else if (rc == -1) {
        return "room is not validly percent-encoded";
    } else if (rc == -2) {
        return room_why[1];
    } else {
        const char *problem = name_problem(out->room, clamp_max(cfg->max_room), room_why);
        if (problem)
            return problem;
        out->has_room = 1;
    }
    if (out->has_room &&
        !auth_rooms_allow(out->rooms.present ? out->rooms.list : NULL, out->room, strlen(out->room))) {
        *status = 403;
        return "the token does not allow this room";
    }
    return NULL;
}

/* 1 if the client offers the chatd.v1 subprotocol (RFC 6455 4.1: a
 * comma-separated list of tokens, over one or more headers). */
static int offers_json(const hs_request *r) {
    size_t n;
    const char *v = field(r, H_PROTOCOL, &n);
    return v && has_token(v, n, PROTO_SUBPROTOCOL);
}

/* ---- permessage-deflate (RFC 7692) ---------------------------------- */

static void skip_ows(const char *v, size_t n, size_t *i) {
    while (*i < n && is_ows(v[*i]))
        (*i)++;
}

/* Length of the token at v[*i], which *i moves past (0: none there). */
static size_t take_token(const char *v, size_t n, size_t *i) {
    size_t a = *i;
    while (*i < n && is_tchar((unsigned char)v[*i]))
        (*i)++;
    return *i - a;
}

/* The quoted-string at v[*i] (RFC 9110 5.6.4), unescaped into out (cut at
 * cap bytes); *i moves past it. Returns its unescaped length, or -1 when it
 * is malformed. */
static long take_quoted(const char *v, size_t n, size_t *i, char *out, size_t cap) {
    size_t k = 0;
    for ((*i)++; *i < n; (*i)++) {
        unsigned char c = (unsigned char)v[*i];
        if (c == '"') {
            (*i)++;
            return (long)k;
        }
        if (c == '\\' && ++*i == n)
            return -1;
        c = (unsigned char)v[*i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return -1;
        if (k < cap)
            out[k] = (char)c;
        k++;
    }
    return -1;
}

/* A *_max_window_bits value: 8..15 in plain decimal, else -1. */
static int window_bits(const char *s, long n) {
    if (n == 1 && (s[0] == '8' || s[0] == '9'))
        return s[0] - '0';
    if (n == 2 && s[0] == '1' && s[1] >= '0' && s[1] <= '5')
        return 10 + s[1] - '0';
    return -1;
}

enum { P_SNCT = 1, P_CNCT = 2, P_SMWB = 4, P_CMWB = 8 };

static const struct {
    const char *name;
    int flag;
} deflate_params[] = {
    {"server_no_context_takeover", P_SNCT},
    {"client_no_context_takeover", P_CNCT},
    {"server_max_window_bits", P_SMWB},
    {"client_max_window_bits", P_CMWB},
};

/* One parameter of a permessage-deflate offer (value vlen bytes at val, -1:
 * none). Returns 0 when it makes the offer one to decline (RFC 7692 5: an
 * unknown or repeated parameter, or a bad value); sets *bits to an asked
 * server_max_window_bits. Every valid offer can be honoured: see
 * hs_result.deflate. */
static int judge_param(const char *name, size_t len, const char *val, long vlen, int *seen,
                       int *bits) {
    int flag = 0;
    for (size_t k = 0; k < sizeof deflate_params / sizeof deflate_params[0]; k++)
        if (strlen(deflate_params[k].name) == len &&
            strncasecmp(deflate_params[k].name, name, len) == 0)
            flag = deflate_params[k].flag;
    if (flag == 0 || (*seen & flag))
        return 0;
    *seen |= flag;
    switch (flag) {
    case P_SNCT:
    case P_CNCT:
        return vlen < 0;
    case P_SMWB:
        *bits = window_bits(val, vlen);
        return *bits > 0;
    default: /* P_CMWB: the client may limit its own window; ours reads any */
        return vlen < 0 || window_bits(val, vlen) > 0;
    }
}

/* Judges Sec-WebSocket-Extensions (RFC 6455 9.1: a list of extensions,
 * each a token with parameters after ';', a parameter a token with an
 * optional token or quoted-string value). Returns 1 when an offer of
 * permessage-deflate is accepted, the first acceptable one, with *bits the
 * server_max_window_bits it asked for (0: none); 0 when there is none, or
 * when the header is malformed anywhere (then nothing is negotiated). */
static int pick_deflate(const char *v, size_t n, int *bits) {
    int chosen = 0;
    size_t i = 0;
    for (;;) {
        skip_ows(v, n, &i);
        if (i == n)
            return chosen;
        if (v[i] == ',') { /* an empty list element (RFC 9110 5.6.1) */
            i++;
            continue;
        }
        const char *name = v + i;
        size_t nlen = take_token(v, n, &i);
        if (nlen == 0)
            return 0;
        int ok = nlen == 18 && strncasecmp(name, "permessage-deflate", 18) == 0;
        int seen = 0, asked = 0;
        skip_ows(v, n, &i);
        while (i < n && v[i] == ';') {
            i++;
            skip_ows(v, n, &i);
            const char *pname = v + i;
            size_t plen = take_token(v, n, &i);
            if (plen == 0)
                return 0;
            skip_ows(v, n, &i);
            char val[8];
            long vlen = -1;
            if (i < n && v[i] == '=') {
                i++;
                skip_ows(v, n, &i);
                if (i < n && v[i] == '"') {
                    if ((vlen = take_quoted(v, n, &i, val, sizeof val)) < 0)
                        return 0;
                } else {
                    const char *t = v + i;
                    size_t tlen = take_token(v, n, &i);
                    if (tlen == 0)
                        return 0;
                    memcpy(val, t, tlen < sizeof val ? tlen : sizeof val);
                    vlen = (long)tlen;
                }
                skip_ows(v, n, &i);
            }
            if (ok)
                ok = judge_param(pname, plen, val, vlen, &seen, &asked);
        }
        if (i < n && v[i] != ',')
            return 0;
        if (ok && !chosen) {
            chosen = 1;
            *bits = asked;
        }
    }
}

static int origin_allowed(const config *cfg, const char *o, size_t n) {
    for (int i = 0; i < cfg->n_origins && i < CONFIG_MAX_ORIGINS; i++) {
        const char *a = cfg->allowed_origins[i];
        if (strlen(a) == n && strncasecmp(a, o, n) == 0)
            return 1;
    }
    return 0;
}

static void refuse(hs_result *out, int status, const char *reason) {
    out->username[0] = '\0';
    out->room[0] = '\0';
    hs_error_response(out, status, reason);
}

void hs_respond(const hs_request *r, const config *cfg, hs_result *out) {
    hs_respond_at(r, cfg, time(NULL), out);
}

void hs_respond_at(const hs_request *r, const config *cfg, time_t now, hs_result *out) {
    memset(out, 0, sizeof *out);
    if (r->state != ST_DONE) {
        refuse(out, r->status ? r->status : 400, "incomplete request");
        return;
    }

    size_t ulen;
    const char *url = field(r, H_URL, &ulen);
    if (!url)
        url = "";
    size_t plen = 0;
    while (plen < ulen && url[plen] != '?' && url[plen] != '#')
        plen++;
    const char *q = url + plen;
    size_t qlen = ulen - plen;
    if (qlen && *q == '?') {
        q++;
        qlen--;
        for (size_t i = 0; i < qlen; i++)
            if (q[i] == '#')
                qlen = i;
    } else {
        qlen = 0;
    }
    int is_get = r->parser.method == HTTP_GET;
    /* More X-Forwarded-For lines than are kept: the last (a trusted
     * proxy's own) would be lost, and the client would pass for the proxy. */
    if (r->f[H_XFF].count > XFF_LINES_MAX) {
        refuse(out, 400, "too many X-Forwarded-For header lines");
        return;
    }

    if (plen == 8 && memcmp(url, "/healthz", 8) == 0) {
        if (!is_get) {
            refuse(out, 405, "method not allowed");
            return;
        }
        text_response(out, 200, "", "ok\n");
        out->reason = "health check";
        out->health_check = 1;
        return;
    }
    if (plen == 7 && memcmp(url, "/readyz", 7) == 0) {
        if (!is_get) {
            refuse(out, 405, "method not allowed");
            return;
        }
        text_response(out, 200, "", "ready\n");
        out->reason = "readiness check";
        out->ready_check = 1;
        return;
    }
    if (plen == 8 && memcmp(url, "/metrics", 8) == 0) {
        if (!is_get) {
            refuse(out, 405, "method not allowed");
            return;
        }
        text_response(out, 200, "", "");
        out->reason = "metrics";
        out->metrics = 1;
        return;
    }
    /* The web page (web.c) answers a plain request; one with any of the
     * WebSocket headers is a handshake, judged below even when broken. */
    if (!r->f[H_UPGRADE].count && !r->f[H_KEY].count) {
        web_request wr = {.path = url, .path_len = plen};
        wr.method = is_get ? WEB_GET : r->parser.method == HTTP_HEAD ? WEB_HEAD : WEB_OTHER;
        wr.if_none_match = field(r, H_IF_NONE_MATCH, &wr.if_none_match_len);
        if (r->f[H_HOST].count == 1)
            wr.host = field(r, H_HOST, &wr.host_len);
        if (web_respond(cfg, &wr, out))
            return;
    }
    if (plen != 1 || url[0] != '/') {
        refuse(out, 404, "not found");
        return;
    }
    if (!is_get) {
        refuse(out, 405, "method not allowed");
        return;
    }

    size_t n;
    if (!r->f[H_UPGRADE].count) {
        refuse(out, 400, "expected a WebSocket upgrade");
        return;
    }
    if (!r->upgrade_ws) {
        refuse(out, 400, "Upgrade must be websocket");
        return;
    }
    if (!r->conn_upgrade) {
        refuse(out, 400, "Connection must include Upgrade");
        return;
    }

    const char *v = field(r, H_VERSION, &n);
    if (!v || r->f[H_VERSION].count != 1 || n != 2 || memcmp(v, "13", 2) != 0) {
        refuse(out, 426, "Sec-WebSocket-Version must be 13");
        return;
    }

    const char *key = field(r, H_KEY, &n);
    size_t key_len = n;
    if (!key) {
        refuse(out, 400, "Sec-WebSocket-Key is missing");
        return;
    }
    if (r->f[H_KEY].count != 1 || !key_valid(key, key_len)) {
        refuse(out, 400, "Sec-WebSocket-Key must be 16 bytes in base64");
        return;
    }

    if (r->parser.http_major < 1 || (r->parser.http_major == 1 && r->parser.http_minor < 1)) {
        refuse(out, 400, "HTTP/1.1 is required");
        return;
    }
    if (!field(r, H_HOST, &n) || r->f[H_HOST].count != 1) {
        refuse(out, 400, "exactly one Host header is required");
        return;
    }

    v = field(r, H_ORIGIN, &n);
    if (cfg->n_origins > 0 && v && (r->f[H_ORIGIN].count != 1 || !origin_allowed(cfg, v, n))) {
        refuse(out, 403, "origin not allowed");
        return;
    }

    int status;
    out->json = offers_json(r);
    const char *why = judge_query(q, qlen, cfg, now, out, &status);
    if (why) {
        refuse(out, status, why);
        return;
    }

    char accept[29];
    hs_accept_key(key, key_len, accept);
    if (accept[0] == '\0') {
        refuse(out, 500, "internal error");
        return;
    }
    /* Always both no_context_takeover parameters: no LZ77 window outlives
     * a message, so the node compresses each message once for everyone and
     * keeps no compression state per connection. */
    char ext[160] = "";
    int asked = 0;
    v = field(r, H_EXTENSIONS, &n);
    if (cfg->permessage_deflate && v && r->f[H_EXTENSIONS].count <= EXT_LINES_MAX &&
        pick_deflate(v, n, &asked)) {
        out->deflate = asked ? asked : PMD_WINDOW_BITS;
        char smwb[40] = "";
        if (asked)
            snprintf(smwb, sizeof smwb, "; server_max_window_bits=%d", asked);
        snprintf(ext, sizeof ext,
                 "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
                 "client_no_context_takeover%s\r\n",
                 smwb);
    }
    int len = snprintf(out->response, sizeof out->response,
                       "HTTP/1.1 101 Switching Protocols\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Accept: %s\r\n"
                       "%s%s"
                       "\r\n",
                       accept, out->json ? "Sec-WebSocket-Protocol: " PROTO_SUBPROTOCOL "\r\n" : "",
                       ext);
    out->response_len = (size_t)len;
    out->status = 101;
    out->upgrade = 1;
    out->reason = "upgrade";
}
