/* tlsrec — TLS 1.3 record protection for an established session, sans I/O.
 *
 * OpenSSL runs the handshake; then the acceptor moves a TLS 1.3 session
 * here (tls_detach) and frees its SSL object, which alone is 7.4 KiB in
 * OpenSSL 3.0: more than a whole idle connection should cost. What stays
 * per connection is a tlsrec, about 220 bytes: per direction the traffic
 * secret, key, IV and sequence number (RFC 8446 5.2, 5.3, 7.1 to 7.3). The
 * ciphers are OpenSSL's AEADs, keyed for each record from a context of the
 * calling thread (tlsrec_cx).
 *
 * What a client may send after the handshake: application data, alerts
 * (close_notify ends the stream, user_canceled is ignored, any other is an
 * error) and KeyUpdate (answered by one of ours before our next record when
 * it asks). Anything else is an error, as RFC 8446 wants; so is a KeyUpdate
 * split across records, which no client sends.
 *
 * No I/O, no logging: bytes in, bytes out, a static reason on error. A
 * tlsrec belongs to the thread that owns its connection.
 */
#ifndef CHATD_TLSREC_H
#define CHATD_TLSREC_H

#include <stddef.h>
#include <stdint.h>

#define TLSREC_HEADER 5
#define TLSREC_MAX_PLAIN 16384 /* application data in one record (2^14) */
/* The longest record a peer may send: header, 2^14 + 256 bytes. */
#define TLSREC_MAX_RECORD (TLSREC_HEADER + TLSREC_MAX_PLAIN + 256)
/* tlsrec_seal writes at most len + TLSREC_SEAL_EXTRA bytes: a KeyUpdate
 * record (27) and the record's header, content type and tag (22). */
#define TLSREC_SEAL_EXTRA 64
/* Our own KeyUpdate after this many records under one key: AES-GCM's
 * margin (RFC 8446 5.5 allows 2^24.5 full-size records). */
#define TLSREC_REKEY_AFTER (1ull << 24)

typedef struct tlsrec_dir {
    uint64_t seq;        /* the next record's sequence number */
    uint8_t secret[48];  /* the traffic secret (for KeyUpdate) */
    uint8_t key[32];
    uint8_t iv[12];
} tlsrec_dir;

typedef struct tlsrec {
    tlsrec_dir rd;       /* records from the peer */
    tlsrec_dir wr;       /* records to the peer */
    uint8_t *held;       /* the start of a record still to come (malloc'd) */
    uint16_t held_len;
    uint8_t suite;       /* index into tlsrec.c's table of suites */
    uint8_t update_due;  /* the peer asked for our KeyUpdate */
    uint8_t closed;      /* its close_notify came: nothing more will */
    uint8_t empty;       /* records in a row that carried no data */
} tlsrec;

/* Records without data accepted in a row (as OpenSSL allows). */
#define TLSREC_MAX_EMPTY 32

/* One cipher context per suite, for one thread's records. */
typedef struct tlsrec_cx tlsrec_cx;

tlsrec_cx *tlsrec_cx_new(void);
void tlsrec_cx_free(tlsrec_cx *cx);

/* The length of the traffic secrets of suite (its IANA number: 0x1301
 * TLS_AES_128_GCM_SHA256, 0x1302 TLS_AES_256_GCM_SHA384, 0x1303
 * TLS_CHACHA20_POLY1305_SHA256), or 0 for a suite tlsrec lacks. */
size_t tlsrec_secret_len(uint16_t suite);

/* Sets r up for suite from the application traffic secrets (of
 * tlsrec_secret_len bytes) of each direction, sequence numbers at 0.
 * Returns 0, or -1 for a suite tlsrec lacks. */
int tlsrec_init(tlsrec *r, uint16_t suite, const uint8_t *rd_secret, const uint8_t *wr_secret);

/* Wipes the keys and frees what r holds (not r). */
void tlsrec_clear(tlsrec *r);

enum { TLSREC_OK = 0, TLSREC_CLOSED = 1, TLSREC_ERROR = -1 };

/* Bytes of an unfinished record r keeps from the last tlsrec_open. */
static inline size_t tlsrec_held(const tlsrec *r) { return r->held_len; }

/* Moves the bytes r keeps to dst (room for TLSREC_MAX_RECORD), for the
 * caller to read the rest of the record behind them and open them all. */
size_t tlsrec_unhold(tlsrec *r, uint8_t *dst);

/* Opens the records in buf[0..len) in place: the application data of
 * every complete one is moved to buf[0..*plain), in order, and an
 * unfinished record at the end is kept by r (see tlsrec_unhold). Returns
 * TLSREC_OK; TLSREC_CLOSED after a close_notify (the data before it
 * counts; from then on r->closed is set and every call returns
 * TLSREC_CLOSED at once); TLSREC_ERROR with *why (a bad record, a forged or
 * damaged one, an alert, or out of memory). */
int tlsrec_open(tlsrec *r, tlsrec_cx *cx, uint8_t *buf, size_t len, size_t *plain,
                const char **why);

/* Seals in[0..len) (len <= TLSREC_MAX_PLAIN) as one record of application
 * data into out (room for len + TLSREC_SEAL_EXTRA), behind a KeyUpdate of
 * ours when one is due. Returns the bytes of out, or 0 on failure. */
size_t tlsrec_seal(tlsrec *r, tlsrec_cx *cx, uint8_t *out, const uint8_t *in, size_t len);

/* A close_notify alert into out (room for TLSREC_SEAL_EXTRA). Returns its
 * bytes, or 0 on failure. */
size_t tlsrec_close_notify(tlsrec *r, tlsrec_cx *cx, uint8_t *out);

#endif
