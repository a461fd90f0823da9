/* Unit tests for tlsrec and tls_detach, against a real OpenSSL client: a
 * TLS 1.3 handshake over a socketpair with chatd's own server context,
 * then the session moved out of OpenSSL and every record after it sealed
 * and opened by tlsrec, in each suite; KeyUpdate both ways, close_notify,
 * forged and malformed records, resumption with the ticket tls_detach
 * sends, and a TLS 1.2 session that stays OpenSSL's. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "config.h"
#include "tls.h"
#include "tlsrec.h"

static tls *srv;
static tlsrec_cx *cx;
static SSL_CTX *client_ctx; /* OpenSSL's defaults; a session resumes in the context it came from */
static char dir[] = "/tmp/chatd-tlsrec-XXXXXX";
static char cert_path[128], key_path[128];

/* A self-signed ECDSA P-256 certificate and its key, in dir. */
static void make_pki(void) {
    assert_non_null(mkdtemp(dir));
    snprintf(cert_path, sizeof cert_path, "%s/cert.pem", dir);
    snprintf(key_path, sizeof key_path, "%s/key.pem", dir);
    EVP_PKEY *pkey = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(pkey);
    assert_non_null(x);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, pkey);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"localhost", -1, -1, 0);
    X509_set_issuer_name(x, name);
    assert_true(X509_sign(x, pkey, EVP_sha256()) > 0);
    FILE *f = fopen(cert_path, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    f = fopen(key_path, "w");
    assert_non_null(f);
    PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
}

static int setup(void **state) {
    (void)state;
    make_pki();
    config cfg;
    char err[256];
    config_defaults(&cfg);
    assert_int_equal(config_set(&cfg, "tls_cert", cert_path, err, sizeof err), 0);
    assert_int_equal(config_set(&cfg, "tls_key", key_path, err, sizeof err), 0);
    srv = tls_new(&cfg, err, sizeof err);
    assert_non_null(srv);
    cx = tlsrec_cx_new();
    assert_non_null(cx);
    client_ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(client_ctx);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_NONE, NULL);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tls_free(srv);
    tlsrec_cx_free(cx);
    SSL_CTX_free(client_ctx);
    unlink(cert_path);
    unlink(key_path);
    rmdir(dir);
    return 0;
}

typedef struct pair {
    int sfd, cfd;
    SSL *s;        /* the server's session, until detached */
    SSL *c;
    SSL_CTX *cctx; /* pinned to a suite or a version, or NULL */
    tlsrec *rec;   /* the server's session, once detached */
} pair;

/* A client pinned to one TLS 1.3 suite (NULL: OpenSSL's) or to TLS 1.2,
 * resuming sess when given; the handshake done on both ends. */
static void open_pair(pair *p, const char *suite, int tls12, SSL_SESSION *sess) {
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    p->sfd = sv[0];
    p->cfd = sv[1];
    p->rec = NULL;
    p->s = tls_session(srv, p->sfd);
    assert_non_null(p->s);
    p->cctx = NULL;
    if (suite || tls12) {
        p->cctx = SSL_CTX_new(TLS_client_method());
        assert_non_null(p->cctx);
        SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL);
        if (suite) assert_int_equal(SSL_CTX_set_ciphersuites(p->cctx, suite), 1);
        if (tls12) SSL_CTX_set_max_proto_version(p->cctx, TLS1_2_VERSION);
    }
    p->c = SSL_new(p->cctx ? p->cctx : client_ctx);
    assert_non_null(p->c);
    SSL_set_fd(p->c, p->cfd);
    SSL_set_connect_state(p->c);
    if (sess) SSL_set_session(p->c, sess);
    int sdone = 0, cdone = 0;
    for (int i = 0; i < 20 && !(sdone && cdone); i++) {
        if (!cdone) cdone = SSL_do_handshake(p->c) == 1;
        if (!sdone) sdone = SSL_do_handshake(p->s) == 1;
    }
    assert_true(sdone && cdone);
}

static void write_all(int fd, const uint8_t *p, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

/* Moves the server's session to tlsrec and writes its ticket. */
static void detach(pair *p) {
    uint8_t *owed;
    size_t owed_len;
    assert_int_equal(tls_detach(p->s, &p->rec, &owed, &owed_len), 1);
    p->s = NULL;
    assert_non_null(p->rec);
    if (owed_len) write_all(p->sfd, owed, owed_len);
    free(owed);
}

static void close_pair(pair *p) {
    SSL_shutdown(p->c); /* else OpenSSL takes its session for a bad one */
    ERR_clear_error();
    if (p->s) SSL_free(p->s);
    if (p->rec) tlsrec_clear(p->rec);
    free(p->rec);
    SSL_free(p->c);
    SSL_CTX_free(p->cctx);
    close(p->sfd);
    close(p->cfd);
}

/* Everything the client reads now, into buf; its length. */
static size_t client_read(pair *p, uint8_t *buf, size_t cap) {
    size_t got = 0;
    for (int i = 0; i < 1000 && got < cap; i++) {
        int n = SSL_read(p->c, buf + got, (int)(cap - got));
        if (n <= 0) {
            if (SSL_get_error(p->c, n) != SSL_ERROR_WANT_READ) ERR_print_errors_fp(stderr);
            assert_int_equal(SSL_get_error(p->c, n), SSL_ERROR_WANT_READ);
            break;
        }
        got += (size_t)n;
    }
    ERR_clear_error();
    return got;
}

/* The raw bytes waiting at the server's end. */
static size_t raw_read(int fd, uint8_t *buf, size_t cap) {
    size_t got = 0;
    for (int i = 0; i < 1000 && got < cap; i++) {
        ssize_t n = read(fd, buf + got, cap - got);
        if (n <= 0) {
            assert_true(n < 0 && errno == EAGAIN);
            break;
        }
        got += (size_t)n;
    }
    return got;
}

/* Opens raw[0..len) as the server would, `step` bytes per read, into
 * out; returns the last tlsrec_open status. */
static int server_open(pair *p, const uint8_t *raw, size_t len, size_t step, uint8_t *out,
                       size_t *out_len) {
    static uint8_t buf[TLSREC_MAX_RECORD + 65536];
    const char *why = NULL;
    int rc = TLSREC_OK;
    *out_len = 0;
    for (size_t off = 0; off < len && rc == TLSREC_OK;) {
        size_t have = tlsrec_unhold(p->rec, buf);
        size_t k = len - off < step ? len - off : step;
        memcpy(buf + have, raw + off, k);
        off += k;
        size_t plain;
        rc = tlsrec_open(p->rec, cx, buf, have + k, &plain, &why);
        memcpy(out + *out_len, buf, plain);
        *out_len += plain;
    }
    return rc;
}

static uint8_t raw[1 << 20], plain[1 << 20], sealed[TLSREC_MAX_PLAIN + TLSREC_SEAL_EXTRA];

/* The client's bytes opened by the server, in one piece. */
static size_t client_to_server(pair *p, const void *msg, size_t len) {
    assert_int_equal(SSL_write(p->c, msg, (int)len), (int)len);
    size_t n = raw_read(p->sfd, raw, sizeof raw), got;
    assert_int_equal(server_open(p, raw, n, n, plain, &got), TLSREC_OK);
    return got;
}

static void server_to_client(pair *p, const void *msg, size_t len) {
    size_t n = tlsrec_seal(p->rec, cx, sealed, msg, len);
    assert_true(n > len);
    write_all(p->sfd, sealed, n);
}

static void test_each_suite(void **state) {
    (void)state;
    static const char *names[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                  "TLS_CHACHA20_POLY1305_SHA256"};
    static uint8_t big[40000], got[65536];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7 + i / 251);
    for (size_t k = 0; k < 3; k++) {
        pair p;
        open_pair(&p, names[k], 0, NULL);
        assert_string_equal(SSL_get_cipher_name(p.s), names[k]);
        detach(&p);
        assert_int_equal(client_read(&p, got, sizeof got), 0); /* the ticket, no data */
        assert_int_equal(client_to_server(&p, "hello", 5), 5);
        assert_memory_equal(plain, "hello", 5);
        server_to_client(&p, "world", 5);
        assert_int_equal(client_read(&p, got, sizeof got), 5);
        assert_memory_equal(got, "world", 5);

        /* Three records from the client, read a few bytes at a time: the
         * unfinished record is held between reads. */
        assert_int_equal(SSL_write(p.c, big, sizeof big), (int)sizeof big);
        size_t n = raw_read(p.sfd, raw, sizeof raw), len;
        for (size_t step = 1; step < 20000; step = step * 7 + 3) {
            tlsrec copy = *p.rec; /* the same records again from the same state */
            assert_int_equal(server_open(&p, raw, n, step, plain, &len), TLSREC_OK);
            assert_int_equal(len, sizeof big);
            assert_memory_equal(plain, big, sizeof big);
            *p.rec = copy;
        }
        assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_OK);

        /* Full records to the client. */
        for (size_t off = 0; off < sizeof big; off += TLSREC_MAX_PLAIN) {
            size_t k2 = sizeof big - off < TLSREC_MAX_PLAIN ? sizeof big - off : TLSREC_MAX_PLAIN;
            server_to_client(&p, big + off, k2);
        }
        assert_int_equal(client_read(&p, got, sizeof got), sizeof big);
        assert_memory_equal(got, big, sizeof big);
        close_pair(&p);
    }
}

static void test_key_update(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    /* The client updates its keys and asks for ours. */
    assert_int_equal(SSL_key_update(p.c, SSL_KEY_UPDATE_REQUESTED), 1);
    assert_int_equal(client_to_server(&p, "after", 5), 5);
    assert_memory_equal(plain, "after", 5);
    assert_int_equal(p.rec->rd.seq, 1); /* the new key's first record */
    assert_int_equal(p.rec->update_due, 1);
    server_to_client(&p, "reply", 5); /* our KeyUpdate goes first */
    assert_int_equal(p.rec->update_due, 0);
    assert_int_equal(p.rec->wr.seq, 1);
    assert_int_equal(client_read(&p, got, sizeof got), 5);
    assert_memory_equal(got, "reply", 5);
    assert_int_equal(client_to_server(&p, "again", 5), 5);
    /* And one of our own, as when a key has sealed TLSREC_REKEY_AFTER
     * records (a sequence number cannot be skipped to get there). */
    p.rec->update_due = 1;
    server_to_client(&p, "fresh", 5);
    assert_int_equal(p.rec->wr.seq, 1);
    assert_int_equal(client_read(&p, got, sizeof got), 5);
    assert_memory_equal(got, "fresh", 5);
    assert_int_equal(client_to_server(&p, "still", 5), 5);
    close_pair(&p);
}

static void test_close_notify(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    size_t len;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    /* Data, then the client's close_notify, read together. */
    assert_int_equal(SSL_write(p.c, "last", 4), 4);
    SSL_shutdown(p.c);
    size_t n = raw_read(p.sfd, raw, sizeof raw);
    assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_CLOSED);
    assert_int_equal(len, 4);
    assert_memory_equal(plain, "last", 4);
    close_pair(&p);

    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    n = tlsrec_close_notify(p.rec, cx, sealed);
    assert_true(n > 0);
    write_all(p.sfd, sealed, n);
    int rc = SSL_read(p.c, got, sizeof got);
    assert_true(rc <= 0);
    assert_int_equal(SSL_get_error(p.c, rc), SSL_ERROR_ZERO_RETURN);
    ERR_clear_error();
    close_pair(&p);
}

/* A session that ends leaves no key, IV or traffic secret behind in the
 * memory it gives back, and frees the part of a record it held. */
static void test_clear_wipes(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    size_t len;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    assert_int_equal(SSL_write(p.c, "half", 4), 4);
    size_t n = raw_read(p.sfd, raw, sizeof raw);
    assert_int_equal(server_open(&p, raw, n - 3, n - 3, plain, &len), TLSREC_OK);
    assert_int_equal(tlsrec_held(p.rec), n - 3);
    static const uint8_t zero[sizeof(tlsrec)];
    assert_memory_not_equal(p.rec, zero, sizeof zero);
    tlsrec_clear(p.rec);
    assert_memory_equal(p.rec, zero, sizeof zero);
    free(p.rec);
    p.rec = NULL;
    close_pair(&p);
}

static void test_bad_records(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    size_t len;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    assert_int_equal(SSL_write(p.c, "forged", 6), 6);
    size_t n = raw_read(p.sfd, raw, sizeof raw);
    for (size_t i = 0; i < n; i++) { /* any byte changed, header included */
        if (i == 3 || i == 4) continue; /* the length: judged below */
        tlsrec copy = *p.rec;
        raw[i] ^= 0x20;
        assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_ERROR);
        raw[i] ^= 0x20;
        *p.rec = copy;
    }
    /* Replayed: the sequence number has moved on. */
    assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_OK);
    assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_ERROR);
    close_pair(&p);

    /* Refused from the header alone, before any body: a length past the
     * largest record, one too short for a tag, a plaintext record. */
    static const uint8_t heads[][5] = {
        {23, 3, 3, 0x41, 0x02}, {23, 3, 3, 0, 16}, {21, 3, 3, 0, 2}, {20, 3, 3, 0, 1}};
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        open_pair(&p, NULL, 0, NULL);
        detach(&p);
        assert_int_equal(server_open(&p, heads[i], 5, 5, plain, &len), TLSREC_ERROR);
        close_pair(&p);
    }
}

static void test_resumption(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got); /* takes the ticket */
    SSL_SESSION *sess = SSL_get1_session(p.c);
    assert_non_null(sess);
    assert_true(SSL_SESSION_is_resumable(sess));
    close_pair(&p);
    open_pair(&p, NULL, 0, sess);
    assert_int_equal(SSL_session_reused(p.c), 1);
    detach(&p);
    assert_int_equal(client_to_server(&p, "resumed", 7), 7);
    server_to_client(&p, "yes", 3);
    assert_int_equal(client_read(&p, got, sizeof got), 3);
    close_pair(&p);
    SSL_SESSION_free(sess);
}

static void test_tls12_stays(void **state) {
    (void)state;
    pair p;
    uint8_t got[16];
    tlsrec *rec = NULL;
    uint8_t *owed = NULL;
    size_t owed_len;
    open_pair(&p, NULL, 1, NULL);
    assert_int_equal(SSL_version(p.s), TLS1_2_VERSION);
    assert_int_equal(tls_detach(p.s, &rec, &owed, &owed_len), 0);
    assert_null(rec);
    assert_null(owed);
    assert_int_equal(SSL_write(p.s, "via openssl", 11), 11);
    assert_int_equal(client_read(&p, got, sizeof got), 11);
    close_pair(&p);
}


/* Review: a record as a (possibly misbehaving) client would seal it, with
 * the key, IV and sequence number the server expects next: outer type 23,
 * then content, inner type and pad zero bytes. Returns its length. */
static size_t forge(const tlsrec *r, uint8_t *out, uint8_t type, const uint8_t *content,
                    size_t len, size_t pad) {
    static const char *ciphers[] = {"AES-128-GCM", "AES-256-GCM", "ChaCha20-Poly1305"};
    size_t body = len + 1 + pad + 16;
    uint8_t nonce[12], inner[TLSREC_MAX_RECORD + 1024];
    memcpy(nonce, r->rd.iv, 12);
    for (int i = 0; i < 8; i++) nonce[11 - i] ^= (uint8_t)(r->rd.seq >> (8 * i));
    if (len) memcpy(inner, content, len);
    inner[len] = type;
    memset(inner + len + 1, 0, pad);
    out[0] = 23, out[1] = 3, out[2] = 3, out[3] = (uint8_t)(body >> 8), out[4] = (uint8_t)body;
    EVP_CIPHER *ciph = EVP_CIPHER_fetch(NULL, ciphers[r->suite], NULL);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n;
    assert_int_equal(EVP_EncryptInit_ex(c, ciph, NULL, r->rd.key, nonce), 1);
    assert_int_equal(EVP_EncryptUpdate(c, NULL, &n, out, 5), 1);
    assert_int_equal(EVP_EncryptUpdate(c, out + 5, &n, inner, (int)(len + 1 + pad)), 1);
    assert_int_equal(EVP_EncryptFinal_ex(c, out + 5 + len + 1 + pad, &n), 1);
    assert_int_equal(EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, 16, out + 5 + len + 1 + pad), 1);
    EVP_CIPHER_CTX_free(c);
    EVP_CIPHER_free(ciph);
    return 5 + body;
}

static uint8_t forged[2 * TLSREC_MAX_RECORD];

/* Opens one forged record in a fresh detached session: the status. */
static int open_forged(uint8_t type, const uint8_t *content, size_t len, size_t pad) {
    pair p;
    uint8_t got[256];
    size_t plen;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    size_t n = forge(p.rec, forged, type, content, len, pad);
    int rc = server_open(&p, forged, n, n, plain, &plen);
    close_pair(&p);
    return rc;
}

/* RFC 8446 5.4: the full TLSInnerPlaintext (content, type, padding) must
 * not exceed 2^14 + 1 bytes; 5.2 wants record_overflow otherwise. A full
 * record of data plus 200 bytes of padding is 2^14 + 201. */
static void test_review_padding_overflow(void **state) {
    (void)state;
    static uint8_t data[TLSREC_MAX_PLAIN];
    assert_int_equal(open_forged(23, data, sizeof data, 0), TLSREC_OK); /* the largest legal one */
    assert_int_equal(open_forged(23, data, 100, 16384 - 100), TLSREC_OK); /* 2^14 + 1 exactly */
    assert_int_equal(open_forged(23, data, sizeof data, 200), TLSREC_ERROR);
}

/* Records that carry nothing cost the client its bytes only, but each
 * costs the server a decryption: TLSREC_MAX_EMPTY in a row pass, one more
 * closes; a record with data starts the count again. */
static void test_empty_records_capped(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    size_t plen;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    static const uint8_t data[] = "x";
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < TLSREC_MAX_EMPTY; i++) {
            size_t n = forge(p.rec, forged, 23, NULL, 0, (size_t)i % 3);
            assert_int_equal(server_open(&p, forged, n, n, plain, &plen), TLSREC_OK);
        }
        if (round == 0) { /* data: the count starts over */
            size_t n = forge(p.rec, forged, 23, data, 1, 0);
            assert_int_equal(server_open(&p, forged, n, n, plain, &plen), TLSREC_OK);
            assert_int_equal(plen, 1);
        }
    }
    size_t n = forge(p.rec, forged, 23, NULL, 0, 0);
    assert_int_equal(server_open(&p, forged, n, n, plain, &plen), TLSREC_ERROR);
    close_pair(&p);
}

/* What a client must not send after the handshake, each refused; and
 * what it may (zero-length data, padding, a KeyUpdate). */
static void test_review_post_handshake(void **state) {
    (void)state;
    static const uint8_t nst[] = {4, 0, 0, 4, 0, 0, 0, 0};          /* a client NewSessionTicket */
    static const uint8_t ch[] = {1, 0, 0, 2, 3, 3};                 /* a second ClientHello (cut) */
    static const uint8_t ku2[] = {24, 0, 0, 1, 2};                  /* KeyUpdate, bad value */
    static const uint8_t ku_more[] = {24, 0, 0, 1, 0, 24, 0, 0, 1, 0}; /* two in one record */
    static const uint8_t cert[] = {11, 0, 0, 4, 0, 0, 0, 0};        /* an unasked Certificate */
    static const uint8_t ccs[] = {1};
    static const uint8_t fatal[] = {2, 40};                         /* handshake_failure */
    static const uint8_t cn[] = {2, 0};                             /* close_notify, "fatal" */
    static const uint8_t ku0[] = {24, 0, 0, 1, 0};
    assert_int_equal(open_forged(22, nst, sizeof nst, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(22, ch, sizeof ch, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(22, ku2, sizeof ku2, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(22, ku_more, sizeof ku_more, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(22, cert, sizeof cert, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(20, ccs, sizeof ccs, 0), TLSREC_ERROR); /* protected CCS */
    assert_int_equal(open_forged(21, fatal, sizeof fatal, 0), TLSREC_ERROR);
    assert_int_equal(open_forged(21, cn, sizeof cn, 0), TLSREC_CLOSED);
    assert_int_equal(open_forged(21, NULL, 0, 0), TLSREC_ERROR);  /* empty alert */
    assert_int_equal(open_forged(22, NULL, 0, 0), TLSREC_ERROR);  /* empty handshake */
    assert_int_equal(open_forged(24, ku0, sizeof ku0, 0), TLSREC_ERROR); /* heartbeat type */
    assert_int_equal(open_forged(23, NULL, 0, 0), TLSREC_OK);     /* zero-length data */
    assert_int_equal(open_forged(23, NULL, 0, 300), TLSREC_OK);   /* padding only */
    assert_int_equal(open_forged(22, ku0, sizeof ku0, 50), TLSREC_OK); /* padded KeyUpdate */
    assert_int_equal(open_forged(0, NULL, 0, 0), TLSREC_ERROR);   /* all zeros: no type */
}

/* The client's first application data sent at once behind its Finished,
 * in the same write: nothing of it may be left inside OpenSSL when the
 * session leaves it, nor be opened with a wrong key. */
static void test_review_data_with_finished(void **state) {
    (void)state;
    static const char *names[] = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                  "TLS_CHACHA20_POLY1305_SHA256"};
    for (size_t k = 0; k < 3; k++) {
        int sv[2];
        pair p = {0};
        uint8_t got[64];
        size_t len;
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        p.sfd = sv[0], p.cfd = sv[1];
        p.s = tls_session(srv, p.sfd);
        p.cctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(p.cctx, SSL_VERIFY_NONE, NULL);
        assert_int_equal(SSL_CTX_set_ciphersuites(p.cctx, names[k]), 1);
        p.c = SSL_new(p.cctx);
        SSL_set_fd(p.c, p.cfd);
        SSL_set_connect_state(p.c);
        /* The client finishes first and writes (Finished, then data,
         * then a KeyUpdate and more data) before the server reads any. */
        int cdone = 0, sdone = 0;
        for (int i = 0; i < 20 && !cdone; i++) {
            cdone = SSL_do_handshake(p.c) == 1;
            if (!cdone) SSL_do_handshake(p.s);
        }
        assert_true(cdone);
        assert_int_equal(SSL_write(p.c, "early", 5), 5);
        assert_int_equal(SSL_key_update(p.c, SSL_KEY_UPDATE_REQUESTED), 1);
        assert_int_equal(SSL_write(p.c, "later", 5), 5);
        for (int i = 0; i < 20 && !sdone; i++) sdone = SSL_do_handshake(p.s) == 1;
        assert_true(sdone);
        detach(&p);
        size_t n = raw_read(p.sfd, raw, sizeof raw);
        assert_int_equal(server_open(&p, raw, n, n, plain, &len), TLSREC_OK);
        assert_int_equal(len, 10);
        assert_memory_equal(plain, "earlylater", 10);
        server_to_client(&p, "ok", 2);
        assert_int_equal(client_read(&p, got, sizeof got), 2);
        close_pair(&p);
    }
}

/* 0-RTT forced by the client (its ticket allows none: the server
 * rejects and skips it): the first record tlsrec opens is the client's
 * first after Finished, with the application key at sequence 0. */
static void test_review_early_data_rejected(void **state) {
    (void)state;
    pair p;
    uint8_t got[256];
    size_t len, written = 0;
    open_pair(&p, NULL, 0, NULL);
    detach(&p);
    client_read(&p, got, sizeof got);
    SSL_SESSION *sess = SSL_get1_session(p.c);
    assert_non_null(sess);
    close_pair(&p);
    assert_int_equal(SSL_SESSION_get_max_early_data(sess), 0);
    assert_int_equal(SSL_SESSION_set_max_early_data(sess, 16384), 1); /* lie to the client */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    p.sfd = sv[0], p.cfd = sv[1], p.cctx = NULL, p.rec = NULL;
    p.s = tls_session(srv, p.sfd);
    p.c = SSL_new(client_ctx);
    SSL_set_fd(p.c, p.cfd);
    SSL_set_connect_state(p.c);
    SSL_set_session(p.c, sess);
    assert_int_equal(SSL_write_early_data(p.c, "zero-rtt", 8, &written), 1);
    int cdone = 0, sdone = 0;
    for (int i = 0; i < 20 && !(cdone && sdone); i++) {
        if (!cdone) cdone = SSL_do_handshake(p.c) == 1;
        if (!sdone) sdone = SSL_do_handshake(p.s) == 1;
    }
    ERR_print_errors_fp(stderr);
    assert_true(cdone && sdone);
    assert_int_equal(SSL_get_early_data_status(p.c), SSL_EARLY_DATA_REJECTED);
    detach(&p);
    assert_int_equal(client_to_server(&p, "one-rtt", 7), 7);
    assert_memory_equal(plain, "one-rtt", 7);
    (void)len;
    close_pair(&p);
    SSL_SESSION_free(sess);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_suite),  cmocka_unit_test(test_key_update),
        cmocka_unit_test(test_close_notify), cmocka_unit_test(test_clear_wipes),
        cmocka_unit_test(test_bad_records),
        cmocka_unit_test(test_resumption),  cmocka_unit_test(test_tls12_stays),
        cmocka_unit_test(test_review_padding_overflow), cmocka_unit_test(test_empty_records_capped), cmocka_unit_test(test_review_post_handshake),
        cmocka_unit_test(test_review_data_with_finished),
        cmocka_unit_test(test_review_early_data_rejected),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
