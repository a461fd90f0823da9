/* proto — the chatd.v1 JSON protocol (PROTOCOL.md), sans I/O.
 *
 * proto_parse turns one text frame a client sent into a checked request;
 * the jb_* helpers build the frames the server sends. No sockets, no
 * logging; jansson does the JSON reading. Any thread may call any function
 * here on objects it owns.
 */
#ifndef CHATD_PROTO_H
#define CHATD_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define PROTO_SUBPROTOCOL "chatd.v1"
#define PROTO_REF_MAX 128       /* bytes of a ref, as compact JSON */
#define PROTO_EPOCH_MAX 32      /* bytes of an epoch string */
#define PROTO_LIMIT_MAX 100     /* history: most messages per page */
#define PROTO_LIMIT_DEFAULT 50
#define PROTO_HISTORY_MAX 10000 /* join: largest "history" accepted */
#define PROTO_TOKEN_MAX 4096  /* bytes of a refresh token (AUTH_TOKEN_MAX) */
#define PROTO_ID_MAX 41         /* "<ms>-<seq>": 20 digits, a dash, 20 digits */

enum proto_op { PROTO_JOIN = 1, PROTO_LEAVE, PROTO_SEND, PROTO_HISTORY, PROTO_TYPING, PROTO_PING,
                PROTO_REFRESH };
enum proto_err { PROTO_OK = 0, PROTO_E_JSON, PROTO_E_REQUEST, PROTO_E_OP, PROTO_E_ROOM, PROTO_E_TOO_LARGE };

typedef struct proto_id {
    uint64_t ms, seq;
} proto_id; /* "<ms>-<seq>" */

typedef struct proto_limits {
    size_t max_room;    /* bytes of a room name (names_check) */
    size_t max_message; /* bytes of a send's text */
} proto_limits;

typedef struct proto_req {
    int op;                              /* enum proto_op */
    const char *room; size_t room_len;   /* NULL when absent; valid until proto_req_free */
    const char *text; size_t text_len;   /* send only; may contain NUL bytes */
    const char *token; size_t token_len; /* refresh only */
    char ref[PROTO_REF_MAX + 1]; size_t ref_len; /* the ref re-serialized as compact JSON ("\"a\"", "12"), "" when absent */
    int64_t history;                     /* join: -1 when absent */
    int has_since; proto_id since;       /* join */
    char epoch[PROTO_EPOCH_MAX + 1];     /* join: "" when absent; never holds a NUL byte */
    int has_before; proto_id before;     /* history */
    int64_t limit;                       /* history: PROTO_LIMIT_DEFAULT when absent */
    void *root;                          /* json_t *, private */
} proto_req;

/* Parses one text frame. Returns PROTO_OK, or an error with *reason set to a
 * short static English reason (for the error frame). On error, req->ref is
 * still filled when the frame was an object with a usable ref, so the error
 * can echo it; req->op is 0 unless it returned PROTO_OK. Always call
 * proto_req_free after, whatever it returned. lim must not be NULL.
 *
 * Rules, each an error with the code in parentheses:
 *   not JSON, not an object, a duplicate key at any depth (PROTO_E_JSON);
 *   ref present but not a string or number, or longer than PROTO_REF_MAX as
 *   compact JSON (PROTO_E_REQUEST); op missing or not a string
 *   (PROTO_E_REQUEST); op unknown (PROTO_E_OP); room missing or not a string
 *   for every op but ping and refresh (PROTO_E_REQUEST); refresh: token
 *   missing, not a string or longer than PROTO_TOKEN_MAX (PROTO_E_REQUEST); room failing
 *   names_check(lim->max_room) (PROTO_E_ROOM); send: text missing or not a
 *   string (PROTO_E_REQUEST), longer than lim->max_message
 *   (PROTO_E_TOO_LARGE); join: history not an integer 0..PROTO_HISTORY_MAX,
 *   since not an id, epoch not a string of 1..PROTO_EPOCH_MAX bytes without
 *   NUL, since without epoch (PROTO_E_REQUEST); history: before not an id,
 *   limit not an integer 1..PROTO_LIMIT_MAX (PROTO_E_REQUEST).
 * Fields an op does not use, and unknown fields, are ignored. A real ref is
 * re-serialized with 17 significant digits: the same number, not always
 * the same text (0.1 becomes 0.10000000000000001). */
int proto_parse(const char *buf, size_t len, const proto_limits *lim, proto_req *req,
                const char **reason);
void proto_req_free(proto_req *req);

/* "bad_json", "bad_request", "unknown_op", "bad_room", "too_large" for the
 * enum above; NULL for PROTO_OK and anything else. */
const char *proto_err_code(int err);

/* Parses "<ms>-<seq>" (both decimal u64, no sign, no spaces, no leading '+';
 * leading zeros are fine). Returns 0, or -1 (out untouched). */
int proto_parse_id(const char *s, size_t len, proto_id *out);

/* Writes "<ms>-<seq>" without quotes and without a terminating NUL; out must
 * hold PROTO_ID_MAX bytes. Returns the length. */
size_t proto_write_id(char *out, proto_id id);

/* -1, 0, 1 comparing two ids numerically (ms first, then seq). */
int proto_id_cmp(proto_id a, proto_id b);

/* A growable output buffer for encoding frames. Zero-initialise it; after
 * any write p[len] is '\0' (not counted in len). oom is set (and further
 * writes ignored) when malloc fails; the caller checks it once at the end. */
typedef struct jbuf {
    char *p;
    size_t len, cap;
    int oom;
    int measure;   /* 1: only count len (nothing written, nothing allocated) */
} jbuf;

void jb_raw(jbuf *b, const char *s, size_t len); /* bytes as they are */
/* A JSON string with its quotes. s is valid UTF-8 and may contain NUL.
 * Escapes only what JSON requires (", \ and U+0000..U+001F: \b \t \n \f \r,
 * else \u00XX) plus U+007F as \u007f; everything else is copied as is. */
void jb_str(jbuf *b, const char *s, size_t len);
void jb_u64(jbuf *b, uint64_t v);
void jb_id(jbuf *b, proto_id id); /* as a JSON string "ms-seq" */
void jb_free(jbuf *b);            /* frees p and zeroes b: ready for reuse */
/* jb_raw of a string literal, its length counted by the compiler. */
#define JB_LIT(b, lit) jb_raw((b), (lit), sizeof(lit) - 1)

#endif
