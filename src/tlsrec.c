/* tlsrec — TLS 1.3 record protection after the handshake (see tlsrec.h).
 *
 * A record (RFC 8446 5.2): a 5-byte header (type 23, version 0x0303,
 * length), then the AEAD of the content, its real content type and any
 * zero padding, with the header as additional data and as nonce the IV
 * XORed with the record's sequence number.
 */
#include "tlsrec.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

enum {
    CT_ALERT = 21,
    CT_HANDSHAKE = 22,
    CT_APPLICATION_DATA = 23,
    HS_KEY_UPDATE = 24,
    ALERT_CLOSE_NOTIFY = 0,
    ALERT_USER_CANCELED = 90,
};

#define TAG_LEN 16
#define IV_LEN 12

static const struct suite {
    uint16_t id;
    const char *cipher; /* OpenSSL's name of the AEAD */
    int sha384;         /* its hash: SHA-384, else SHA-256 */
    uint8_t key_len;
    uint8_t hash_len;
} suites[] = {
    {0x1301, "AES-128-GCM", 0, 16, 32},
    {0x1302, "AES-256-GCM", 1, 32, 48},
    {0x1303, "ChaCha20-Poly1305", 0, 32, 32},
};
#define NSUITES (sizeof suites / sizeof suites[0])

struct tlsrec_cx {
    EVP_CIPHER_CTX *c[NSUITES]; /* keyed afresh for each record */
};

tlsrec_cx *tlsrec_cx_new(void) {
    tlsrec_cx *cx = calloc(1, sizeof(*cx));
    if (cx == NULL) return NULL;
    for (size_t i = 0; i < NSUITES; i++) {
        /* Fetched once: in OpenSSL 3 a lookup by name per record would
         * cost more than the record. The context keeps its reference. */
        EVP_CIPHER *ciph = EVP_CIPHER_fetch(NULL, suites[i].cipher, NULL);
        cx->c[i] = EVP_CIPHER_CTX_new();
        int ok = ciph && cx->c[i] && EVP_CipherInit_ex(cx->c[i], ciph, NULL, NULL, NULL, 1) == 1;
        EVP_CIPHER_free(ciph);
        if (!ok) {
            tlsrec_cx_free(cx);
            return NULL;
        }
    }
    return cx;
}

void tlsrec_cx_free(tlsrec_cx *cx) {
    if (cx == NULL) return;
    for (size_t i = 0; i < NSUITES; i++) EVP_CIPHER_CTX_free(cx->c[i]);
    free(cx);
}

static const struct suite *suite_by_id(uint16_t id) {
    for (size_t i = 0; i < NSUITES; i++)
        if (suites[i].id == id) return &suites[i];
    return NULL;
}

size_t tlsrec_secret_len(uint16_t suite) {
    const struct suite *s = suite_by_id(suite);
    return s ? s->hash_len : 0;
}

/* HKDF-Expand-Label(secret, label, "", len) of RFC 8446 7.1. Every length
 * asked here is at most the hash's, so HKDF-Expand is one HMAC:
 * T(1) = HMAC(secret, HkdfLabel || 0x01). */
static int expand_label(const struct suite *s, const uint8_t *secret, const char *label,
                        uint8_t *out, size_t len) {
    uint8_t info[2 + 1 + 6 + 16 + 1 + 1];
    size_t ll = strlen(label), n = 0;
    info[n++] = 0;
    info[n++] = (uint8_t)len;
    info[n++] = (uint8_t)(6 + ll);
    memcpy(info + n, "tls13 ", 6);
    n += 6;
    memcpy(info + n, label, ll);
    n += ll;
    info[n++] = 0; /* the context: empty */
    info[n++] = 1; /* HKDF-Expand's counter */
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    if (HMAC(s->sha384 ? EVP_sha384() : EVP_sha256(), secret, s->hash_len, info, n, mac,
             &mac_len) == NULL || mac_len < len)
        return -1;
    memcpy(out, mac, len);
    OPENSSL_cleanse(mac, sizeof mac);
    return 0;
}

/* The key and IV of d's secret, sequence number at 0. */
static int dir_keys(const struct suite *s, tlsrec_dir *d) {
    d->seq = 0;
    return expand_label(s, d->secret, "key", d->key, s->key_len) < 0 ||
                   expand_label(s, d->secret, "iv", d->iv, IV_LEN) < 0
               ? -1
               : 0;
}

/* KeyUpdate (RFC 8446 7.2): the next secret, and its keys. */
static int dir_update(const struct suite *s, tlsrec_dir *d) {
    uint8_t next[48];
    if (expand_label(s, d->secret, "traffic upd", next, s->hash_len) < 0) return -1;
    memcpy(d->secret, next, s->hash_len);
    OPENSSL_cleanse(next, sizeof next);
    return dir_keys(s, d);
}

int tlsrec_init(tlsrec *r, uint16_t suite, const uint8_t *rd_secret, const uint8_t *wr_secret) {
    const struct suite *s = suite_by_id(suite);
    memset(r, 0, sizeof(*r));
    if (s == NULL) return -1;
    r->suite = (uint8_t)(s - suites);
    memcpy(r->rd.secret, rd_secret, s->hash_len);
    memcpy(r->wr.secret, wr_secret, s->hash_len);
    if (dir_keys(s, &r->rd) < 0 || dir_keys(s, &r->wr) < 0) {
        tlsrec_clear(r);
        return -1;
    }
    return 0;
}

void tlsrec_clear(tlsrec *r) {
    free(r->held);
    OPENSSL_cleanse(r, sizeof(*r));
}

size_t tlsrec_unhold(tlsrec *r, uint8_t *dst) {
    size_t n = r->held_len;
    if (n) memcpy(dst, r->held, n);
    free(r->held);
    r->held = NULL;
    r->held_len = 0;
    return n;
}

static void nonce_of(const tlsrec_dir *d, uint8_t nonce[IV_LEN]) {
    memcpy(nonce, d->iv, IV_LEN);
    for (int i = 0; i < 8; i++) nonce[IV_LEN - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

/* Seals type and in[0..len) as one record into out: header, ciphertext,
 * tag. Returns its bytes, or 0 on failure. */
static size_t seal_one(tlsrec *r, tlsrec_cx *cx, uint8_t type, uint8_t *out, const uint8_t *in,
                       size_t len) {
    EVP_CIPHER_CTX *c = cx->c[r->suite];
    size_t body = len + 1 + TAG_LEN;
    uint8_t nonce[IV_LEN];
    int n;
    out[0] = CT_APPLICATION_DATA;
    out[1] = 3;
    out[2] = 3;
    out[3] = (uint8_t)(body >> 8);
    out[4] = (uint8_t)body;
    nonce_of(&r->wr, nonce);
    uint8_t *ct = out + TLSREC_HEADER;
    if (EVP_CipherInit_ex(c, NULL, NULL, r->wr.key, nonce, 1) != 1 ||
        EVP_CipherUpdate(c, NULL, &n, out, TLSREC_HEADER) != 1 ||
        (len > 0 && EVP_CipherUpdate(c, ct, &n, in, (int)len) != 1) ||
        EVP_CipherUpdate(c, ct + len, &n, &type, 1) != 1 ||
        EVP_CipherFinal_ex(c, ct + len + 1, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, ct + len + 1) != 1)
        return 0;
    r->wr.seq++; /* a nonce is never used twice */
    return TLSREC_HEADER + body;
}

size_t tlsrec_seal(tlsrec *r, tlsrec_cx *cx, uint8_t *out, const uint8_t *in, size_t len) {
    size_t off = 0;
    if (len > TLSREC_MAX_PLAIN) return 0;
    if (r->update_due || r->wr.seq >= TLSREC_REKEY_AFTER) {
        static const uint8_t key_update[] = {HS_KEY_UPDATE, 0, 0, 1, 0}; /* update_not_requested */
        if ((off = seal_one(r, cx, CT_HANDSHAKE, out, key_update, sizeof key_update)) == 0 ||
            dir_update(&suites[r->suite], &r->wr) < 0)
            return 0;
        r->update_due = 0;
    }
    size_t n = seal_one(r, cx, CT_APPLICATION_DATA, out + off, in, len);
    return n ? off + n : 0;
}

size_t tlsrec_close_notify(tlsrec *r, tlsrec_cx *cx, uint8_t *out) {
    static const uint8_t alert[] = {1, ALERT_CLOSE_NOTIFY}; /* warning */
    return seal_one(r, cx, CT_ALERT, out, alert, sizeof alert);
}

/* Opens the record at rec (body bytes behind its header) in place: its
 * content is rec[TLSREC_HEADER..*len) afterwards, of *type. */
static int open_one(tlsrec *r, tlsrec_cx *cx, uint8_t *rec, size_t body, uint8_t *type,
                    size_t *len, const char **why) {
    EVP_CIPHER_CTX *c = cx->c[r->suite];
    uint8_t nonce[IV_LEN];
    uint8_t *ct = rec + TLSREC_HEADER;
    size_t inner = body - TAG_LEN;
    int n;
    /* Content, type and padding together are at most 2^14 + 1 bytes
     * (RFC 8446, 5.4), padding included; a longer record is refused before
     * it costs a decryption. */
    if (inner > TLSREC_MAX_PLAIN + 1) {
        *why = "TLS record too long";
        return -1;
    }
    nonce_of(&r->rd, nonce);
    if (EVP_CipherInit_ex(c, NULL, NULL, r->rd.key, nonce, 0) != 1 ||
        EVP_CipherUpdate(c, NULL, &n, rec, TLSREC_HEADER) != 1 ||
        EVP_CipherUpdate(c, ct, &n, ct, (int)inner) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, ct + inner) != 1 ||
        EVP_CipherFinal_ex(c, ct + inner, &n) != 1) {
        *why = "TLS record failed authentication";
        return -1;
    }
    r->rd.seq++;
    /* The real content type is the last byte that is not padding. */
    while (inner > 0 && ct[inner - 1] == 0) inner--;
    if (inner == 0) {
        *why = "TLS record without a content type";
        return -1;
    }
    *type = ct[inner - 1];
    *len = inner - 1;
    return 0;
}

/* Post-handshake messages: KeyUpdate is the only one a client sends, and
 * it ends its record (it comes before a key change). */
static int on_handshake(tlsrec *r, const uint8_t *p, size_t len, const char **why) {
    if (len != 5 || p[0] != HS_KEY_UPDATE || p[1] != 0 || p[2] != 0 || p[3] != 1 || p[4] > 1) {
        *why = "unexpected TLS handshake message";
        return -1;
    }
    if (dir_update(&suites[r->suite], &r->rd) < 0) {
        *why = "TLS key update failed";
        return -1;
    }
    if (p[4] == 1) r->update_due = 1; /* update_requested: ours before our next record */
    return 0;
}

int tlsrec_open(tlsrec *r, tlsrec_cx *cx, uint8_t *buf, size_t len, size_t *plain,
                const char **why) {
    size_t off = 0, out = 0;
    *plain = 0;
    if (r->closed) return TLSREC_CLOSED;
    if (r->held) { /* the caller had to take them back first (tlsrec_unhold) */
        *why = "TLS bytes held twice";
        return TLSREC_ERROR;
    }
    while (len - off >= TLSREC_HEADER) {
        uint8_t *rec = buf + off;
        size_t body = (size_t)rec[3] << 8 | rec[4];
        if (rec[0] != CT_APPLICATION_DATA) {
            *why = "unexpected TLS record type";
            return TLSREC_ERROR;
        }
        if (body < TAG_LEN + 1 || body > TLSREC_MAX_RECORD - TLSREC_HEADER) {
            *why = "TLS record of a bad length";
            return TLSREC_ERROR;
        }
        if (len - off < TLSREC_HEADER + body) break; /* the rest is still to come */
        uint8_t type;
        size_t n;
        if (open_one(r, cx, rec, body, &type, &n, why) < 0) return TLSREC_ERROR;
        const uint8_t *content = rec + TLSREC_HEADER;
        off += TLSREC_HEADER + body; /* n <= TLSREC_MAX_PLAIN: open_one checked */
        /* Records that carry nothing (empty data, padding, user_canceled,
         * key updates) are free to send: at most TLSREC_MAX_EMPTY in a row. */
        r->empty = type == CT_APPLICATION_DATA && n > 0 ? 0 : r->empty + 1;
        if (r->empty > TLSREC_MAX_EMPTY) {
            *why = "too many TLS records without data";
            return TLSREC_ERROR;
        }
        if (type == CT_APPLICATION_DATA) {
            memmove(buf + out, content, n); /* never past the record it came from */
            out += n;
            *plain = out;
        } else if (type == CT_ALERT) {
            if (n != 2) {
                *why = "bad TLS alert";
                return TLSREC_ERROR;
            }
            if (content[1] == ALERT_CLOSE_NOTIFY) {
                r->closed = 1;
                return TLSREC_CLOSED;
            }
            if (content[1] != ALERT_USER_CANCELED) { /* a close_notify follows that one */
                *why = "TLS alert from the peer";
                return TLSREC_ERROR;
            }
        } else if (type == CT_HANDSHAKE) {
            if (on_handshake(r, content, n, why) < 0) return TLSREC_ERROR;
        } else {
            *why = "unexpected TLS content type";
            return TLSREC_ERROR;
        }
    }
    if (off < len) {
        if ((r->held = malloc(len - off)) == NULL) {
            *why = "out of memory";
            return TLSREC_ERROR;
        }
        memcpy(r->held, buf + off, len - off);
        r->held_len = (uint16_t)(len - off);
    }
    return TLSREC_OK;
}
