/* handshake — the HTTP side of a WebSocket opening handshake, pure.
 *
 * Bytes in (parsed by llhttp under a head-size limit), verdict and response
 * bytes out. No sockets, no logging. Used by the acceptor thread; any
 * thread may use objects it owns.
 */
#ifndef CHATD_HANDSHAKE_H
#define CHATD_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "auth.h"
#include "config.h"

#define HS_NAME_MAX 256        /* hard cap on decoded username and room */
#define HS_RESPONSE_MAX 1024   /* the longest: the web page's headers */

typedef struct hs_request hs_request;

enum { HS_MORE = 0, HS_DONE = 1, HS_ERROR = -1 };

/* A request parser that accepts at most max_head bytes of request line and
 * headers. Returns NULL when out of memory. */
hs_request *hs_request_new(size_t max_head);
void hs_request_free(hs_request *r);

/* Feeds bytes. Returns HS_MORE (need more), HS_DONE (the head is
 * complete: *consumed is the number of bytes of data that belong to it, the
 * rest are the client's first WebSocket bytes) or HS_ERROR (malformed → 400,
 * head too large → 431: see hs_request_status). A request with a body is
 * refused (400). */
int hs_feed(hs_request *r, const uint8_t *data, size_t len, size_t *consumed);

/* The X-Forwarded-For of a complete request, its lines joined with ", ";
 * NULL when absent or on more lines than are kept. */
const char *hs_forwarded_for(const hs_request *r, size_t *len);

/* The HTTP status an HS_ERROR stands for. */
int hs_request_status(const hs_request *r);

typedef struct hs_result {
    int status;         /* 101 on upgrade; else the HTTP status sent */
    int upgrade;        /* 1: the connection is now a WebSocket */
    char username[HS_NAME_MAX + 1]; /* decoded, valid when upgrade */
    char room[HS_NAME_MAX + 1];     /* decoded (or default_room; "" for a
                                       chatd.v1 client that names none) */
    int json;           /* the client speaks chatd.v1 (Sec-WebSocket-Protocol) */
    int deflate;        /* permessage-deflate accepted: the LZ77 window the
                           client allows us (server_max_window_bits, 8..15;
                           15 when it set none); 0: not negotiated. A
                           frame compressed with a 2^15 window is valid for
                           a smaller one when its payload is no longer than
                           that window: back-references never reach past
                           a message's start */
    int has_room;       /* room is to be joined at once */
    int64_t history;    /* ?history=N, -1 when absent */
    int has_since;      /* chatd.v1: ?since=ID&epoch=E */
    uint64_t since_ms, since_seq;
    char epoch[33];
    auth_rooms rooms;   /* the token's rooms claim */
    int64_t exp;        /* with auth_secret: the token's exp (auth_verify_exp),
                           else 0 */
    char response[HS_RESPONSE_MAX]; /* the whole HTTP response */
    size_t response_len;
    const char *reason; /* static: why a request was refused */
    int metrics;        /* 1: GET /metrics; the caller writes the answer */
    int health_check;   /* 1: GET /healthz; the caller may add the broker's state */
    int ready_check;    /* 1: GET /readyz; the caller decides 200 or 503 */
    const char *body;   /* sent after response: a file of the web page
                           (static bytes, never freed), or NULL */
    size_t body_len;
} hs_result;

/* Judges a complete request against the config and writes the response:
 *   GET /healthz → 200 "ok" with health_check set; GET /readyz → 200
 *   "ready" with ready_check set (the caller, which knows the broker and
 *   whether the node drains, may answer 503 instead); GET /metrics → 200
 *   with metrics set (response is only the status line and headers of an
 *   empty answer: the caller, which has the counters, writes its own);
 *   a GET or HEAD without Upgrade and Sec-WebSocket-Key: the web page's
 *   routes when `web` is on (see web.h: response, then body);
 *   another path → 404; method other than GET → 405;
 *   missing or wrong Upgrade/Connection/Sec-WebSocket-Key → 400;
 *   Sec-WebSocket-Version other than 13 → 426 with Sec-WebSocket-Version;
 *   Origin not in allowed_origins (when set) → 403;
 *   with auth_secret set: ?token= missing or refused by auth_verify at
 *   time now → 401 with the reason in the body; the user name is the
 *   token's sub and any ?username= is ignored;
 *   without it: username missing, too long (max_username), not printable
 *   UTF-8 → 400 with the reason in the body;
 *   room invalid (max_room) → 400 with the reason in the body;
 *   otherwise 101 with Sec-WebSocket-Accept, Sec-WebSocket-Protocol when
 *   chatd.v1 is offered, and Sec-WebSocket-Extensions when permessage_deflate
 *   is on and the first acceptable permessage-deflate offer is found (RFC
 *   7692 7.1: an offer with an unknown or repeated parameter, or a window
 *   bits value other than 8..15, is declined; a header that does not parse
 *   declines every offer; past 8 header lines, none is read). */
void hs_respond_at(const hs_request *r, const config *cfg, time_t now, hs_result *out);

/* hs_respond_at at time(NULL). */
void hs_respond(const hs_request *r, const config *cfg, hs_result *out);

/* Writes a complete error response (Connection: close, text body with the
 * reason) for status into out. */
void hs_error_response(hs_result *out, int status, const char *reason);

/* Writes a complete text/plain response with body (cut to fit) into out;
 * out's route flags (metrics, health_check, ready_check) and deflate are
 * cleared. */
void hs_text_response(hs_result *out, int status, const char *body);

/* Sec-WebSocket-Accept for a client key: base64(SHA-1(key + GUID)).
 * out must hold 29 bytes (28 characters and a NUL). */
void hs_accept_key(const char *key, size_t key_len, char out[29]);

/* Decodes percent-encoding (and '+' as space) from src[0..len) into out
 * (outlen bytes with the NUL). Returns the decoded length, or -1 on a bad
 * escape or when it does not fit. */
int hs_url_decode(const char *src, size_t len, char *out, size_t outlen);

#endif
