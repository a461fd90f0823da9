/* ws — sans-I/O RFC 6455 frame codec and UTF-8 validation.
 *
 * No sockets, no allocation, no logging. The parser takes a span of bytes
 * received from a client and returns one event at a time; the encoder writes
 * server frames into a caller's buffer. Pure: any thread may call any
 * function here on objects it owns.
 */
#ifndef CHATD_WS_H
#define CHATD_WS_H

#include <stddef.h>
#include <stdint.h>

/* Opcodes (RFC 6455 5.2). */
enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* RSV1: the frame starts a message compressed with permessage-deflate
 * (RFC 7692 6). OR it into ws_write_header's opcode. */
#define WS_RSV1 0x40

/* Close codes (RFC 6455 7.4.1) used by the server. */
enum {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005,   /* never sent: "no code in the close frame" */
    WS_CLOSE_ABNORMAL = 1006,    /* never sent: closed without a close frame */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_TRY_AGAIN = 1013,
};

#define WS_MAX_CONTROL 125    /* control frame payload limit (5.5) */
#define WS_MAX_HEADER 14      /* longest frame header: 2 + 8 + 4 (mask) */

/* ---- UTF-8 ---------------------------------------------------------- */

/* Incremental validator state. Zero-initialise, or utf8_reset(). */
typedef struct utf8_state {
    uint8_t need; /* continuation bytes still expected */
    uint8_t lo;   /* allowed range of the next continuation byte */
    uint8_t hi;
} utf8_state;

static inline void utf8_reset(utf8_state *s) { s->need = 0; s->lo = 0x80; s->hi = 0xBF; }

/* Feeds len bytes. Returns 0 while the input so far is a valid prefix of a
 * UTF-8 string, -1 at the first byte that can never be valid (overlong,
 * surrogate, above U+10FFFF, stray continuation, bad lead byte). Fails fast:
 * the error is reported on the byte that makes the sequence impossible. */
int utf8_feed(utf8_state *s, const uint8_t *p, size_t len);

/* True when the input so far ends on a character boundary. */
static inline int utf8_complete(const utf8_state *s) { return s->need == 0; }

/* Validates one whole string. Returns 0 if valid, -1 if not. */
int utf8_validate(const uint8_t *p, size_t len);

/* ---- Parser (client → server frames) -------------------------------- */

typedef enum ws_event_type {
    WS_EV_NONE = 0, /* all input consumed, no complete event: feed more */
    WS_EV_DATA,     /* a chunk of a text message's payload (unmasked) */
    WS_EV_PING,     /* a complete ping; payload in data/len */
    WS_EV_PONG,     /* a complete pong; payload in data/len */
    WS_EV_CLOSE,    /* a valid close frame; code (1005 if none), reason */
    WS_EV_ERROR,    /* fatal: close with .code; .reason says why (static) */
} ws_event_type;

typedef struct ws_event {
    ws_event_type type;
    const uint8_t *data; /* DATA: points into the caller's buffer;
                            PING/PONG/CLOSE reason: into the parser */
    size_t len;
    int first;           /* DATA: first chunk of a message */
    int fin;             /* DATA: last chunk of a message */
    int compressed;      /* DATA: the message is compressed (RSV1 on its
                            first frame): the bytes are deflate data, not
                            yet checked as UTF-8 */
    uint16_t code;       /* CLOSE: the peer's code; ERROR: code to send */
    const char *reason;  /* ERROR: static text for the log */
} ws_event;

/* Parser state: one per connection, about 180 bytes. */
typedef struct ws_parser {
    uint64_t max_message;   /* limit on a whole message's payload → 1009 */
    uint64_t msg_len;       /* payload bytes of the current message so far */
    uint64_t remaining;     /* payload bytes left in the current frame */
    uint32_t mask_pos;      /* index into mask for the next payload byte */
    uint8_t state;          /* internal: header or payload */
    uint8_t hdr_len;        /* header bytes collected */
    uint8_t hdr[WS_MAX_HEADER];
    uint8_t mask[4];
    uint8_t opcode;         /* opcode of the current frame */
    uint8_t fin;            /* FIN of the current frame */
    uint8_t in_message;     /* a fragmented text message is in progress */
    uint8_t first_pending;  /* next DATA chunk is the message's first */
    uint8_t ctl_len;
    uint8_t failed;         /* an ERROR was returned: parser is dead */
    uint8_t deflate;        /* permessage-deflate was negotiated */
    uint8_t compressed;     /* the current message is compressed */
    utf8_state utf8;        /* validation state across the whole message */
    uint8_t ctl[WS_MAX_CONTROL];
} ws_parser;

/* Initialises a parser for a server (requires masked client frames). */
void ws_parser_init(ws_parser *p, uint64_t max_message);

/* The connection negotiated permessage-deflate: a message whose first frame
 * has RSV1 is compressed. Its DATA events carry deflate bytes (compressed
 * set; UTF-8 is the caller's to check once inflated), and its wire bytes
 * may pass max_message by an eighth plus 64 (deflate's worst expansion of
 * incompressible bytes, with fixed Huffman codes): the caller holds the
 * inflated bytes to max_message. */
void ws_parser_deflate(ws_parser *p);

/* Wire bytes a compressed message may take under a limit of max_message
 * (saturated, for a limit that never bites). */
static inline uint64_t ws_deflated_limit(uint64_t max_message) {
    uint64_t extra = max_message / 8 + 64;
    return max_message > UINT64_MAX - extra ? UINT64_MAX : max_message + extra;
}

/* Parses from buf[0..len). Returns how many bytes it consumed and fills ev
 * with at most one event. Masked payload is unmasked in place, so DATA
 * events point into buf. Call again with the rest while it returns
 * consumed < len or ev->type != WS_EV_NONE.
 *
 * Rules (each a WS_EV_ERROR with the code in parentheses):
 *   unmasked frame (1002), RSV2 or RSV3 set (1002), RSV1 set without
 *   permessage-deflate, on a continuation or on a control frame (1002),
 *   unknown opcode (1002),
 *   64-bit length with the top bit set (1002), control frame over 125 bytes
 *   or fragmented (1002), CONT without a message in progress (1002), TEXT or
 *   BINARY while a message is in progress (1002), binary message (1003),
 *   message longer than max_message (1009, at the header that passes it),
 *   invalid UTF-8 in uncompressed text (1007, at the first bad byte, across
 *   fragments),
 *   close payload of 1 byte (1002), close code not allowed on the wire
 *   (1002), close reason not UTF-8 (1007).
 * After an ERROR the parser returns ERROR again for any input. */
size_t ws_parse(ws_parser *p, uint8_t *buf, size_t len, ws_event *ev);

/* True if a peer may send this close code (RFC 6455 7.4). */
int ws_close_code_valid(unsigned code);

/* ---- Encoder (server → client frames, never masked) ----------------- */

/* Size of the header for a payload of len bytes (2, 4 or 10). */
size_t ws_header_size(uint64_t len);

/* Writes an unmasked FIN frame header for opcode (with WS_RSV1 for a
 * compressed message) and payload length into out (at least WS_MAX_HEADER
 * bytes). Returns the header size. */
size_t ws_write_header(uint8_t *out, unsigned opcode, uint64_t len);

/* Header size of a server frame (unmasked) that starts at f. */
static inline size_t ws_frame_header_size(const uint8_t *f) {
    return (f[1] & 0x7F) < 126 ? 2 : (f[1] & 0x7F) == 126 ? 4 : 10;
}

/* Writes a whole close frame with code and reason (truncated to fit 125
 * bytes) into out (at least 2 + WS_MAX_CONTROL bytes). Returns its size. */
size_t ws_write_close(uint8_t *out, unsigned code, const char *reason);

#endif
