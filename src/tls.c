/* tls — the shared server SSL_CTX, its reload, and the move of a TLS 1.3
 * session to tlsrec once its handshake is done (see tls.h).
 *
 * Lean per connection: a TLS 1.3 session leaves OpenSSL after the
 * handshake (its SSL object alone is 7.4 KiB); a TLS 1.2 one stays, with
 * SSL_MODE_RELEASE_BUFFERS giving its read and write buffers back while
 * idle (about 34 KB otherwise). Compression is off. Resumption is by
 * stateless tickets only: the server keeps no session cache.
 */
#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tlsrec.h"

/* The key exchange groups offered, in the server's order of preference:
 * X25519 costs the least (a full handshake about 0.45 ms of CPU, P-256
 * 0.55 ms); every browser offers one of the first three. OpenSSL's own
 * list also has X448 and the finite-field groups, which let any client
 * make the server spend up to 113 ms on one handshake (ffdhe8192). */
#define TLS_GROUPS "X25519:P-256:P-384:P-521"

struct tls {
    pthread_mutex_t mu; /* guards ctx: swapped by main, used by the acceptors */
    SSL_CTX *ctx;
};

static void ssl_error(char *err, size_t errlen, const char *what, const char *file) {
    char buf[256];
    unsigned long e = ERR_peek_last_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s %s: %s", what, file, e ? buf : "failed");
    ERR_clear_error();
}

/* A session's TLS 1.3 application traffic secrets, as the keylog callback
 * hands them over during the handshake; kept in the SSL's ex_data. */
typedef struct secrets {
    uint8_t client[48], server[48];
    size_t client_len, server_len;
} secrets;

static int secrets_idx = -1; /* set once by tls_new, before other threads */

static void secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                         void *argp) {
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr) OPENSSL_cleanse(ptr, sizeof(secrets));
    free(ptr);
}

/* "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>" (hex), and the
 * server's: the only way OpenSSL 3.0 gives the traffic secrets out (nginx's
 * QUIC layer for OpenSSL takes them the same way). */
static void tls_keylog(const SSL *ssl, const char *line) {
    secrets *s = SSL_get_ex_data(ssl, secrets_idx);
    uint8_t *dst;
    size_t *len;
    if (s == NULL) return;
    if (strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24) == 0) dst = s->client, len = &s->client_len;
    else if (strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24) == 0) dst = s->server, len = &s->server_len;
    else return;
    const char *hex = strchr(line + 24, ' ');
    size_t n = hex ? strlen(++hex) : 0;
    *len = 0;
    if (n % 2 || n / 2 > sizeof s->client) return;
    for (size_t i = 0; i < n / 2; i++) {
        int v = OPENSSL_hexchar2int((unsigned char)hex[2 * i]) * 16 +
                OPENSSL_hexchar2int((unsigned char)hex[2 * i + 1]);
        if (v < 0) return;
        dst[i] = (uint8_t)v;
    }
    *len = n / 2;
}

static SSL_CTX *tls_load(const config *cfg, char *err, size_t errlen) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, cfg->tls_min_version);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_RENEGOTIATION);
    /* Writes gather frames afresh on every retry, into a buffer that may
     * move, and a partial write is progress like any other. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Resumption by stateless tickets only: TLS 1.3 never caches its
     * sessions, and a TLS 1.2 client that takes a ticket has no id to
     * cache; a cache would only keep 1 KB for 300 s of each TLS 1.2 client
     * without tickets, under one more lock. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    static const unsigned char sid_ctx[] = "chatd";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
    /* TLS 1.3 tickets are sent by tls_detach, one per session, through
     * whichever record layer the session ends up with. */
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_keylog_callback(ctx, tls_keylog);
    if (SSL_CTX_set1_groups_list(ctx, TLS_GROUPS) != 1) {
        ssl_error(err, errlen, "TLS: cannot set the groups", TLS_GROUPS);
        goto fail;
    }
    if (cfg->tls_ciphers[0] && SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        ssl_error(err, errlen, "TLS: bad tls_ciphers", cfg->tls_ciphers);
        goto fail;
    }
    FILE *f = fopen(cfg->tls_cert, "r");
    if (f == NULL) {
        snprintf(err, errlen, "TLS: cannot read tls_cert %s: %m", cfg->tls_cert);
        goto fail;
    }
    fclose(f);
    if ((f = fopen(cfg->tls_key, "r")) == NULL) {
        snprintf(err, errlen, "TLS: cannot read tls_key %s: %m", cfg->tls_key);
        goto fail;
    }
    fclose(f);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        ssl_error(err, errlen, "TLS: bad certificate in tls_cert", cfg->tls_cert);
        goto fail;
    }
    /* A key not matching the certificate is refused here already: leave
     * that to the check below, which says so plainly. */
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1 &&
        ERR_GET_REASON(ERR_peek_last_error()) != X509_R_KEY_VALUES_MISMATCH) {
        ssl_error(err, errlen, "TLS: bad private key in tls_key", cfg->tls_key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "TLS: the key in %s does not match the certificate in %s",
                 cfg->tls_key, cfg->tls_cert);
        ERR_clear_error();
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

tls *tls_new(const config *cfg, char *err, size_t errlen) {
    tls *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "TLS: out of memory");
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    if (secrets_idx < 0)
        secrets_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, secrets_free);
    if (secrets_idx < 0 || (t->ctx = tls_load(cfg, err, errlen)) == NULL) {
        tls_free(t);
        return NULL;
    }
    return t;
}

int tls_reload(tls *t, const config *cfg, char *err, size_t errlen) {
    SSL_CTX *ctx = tls_load(cfg, err, errlen);
    if (ctx == NULL) return -1;
    pthread_mutex_lock(&t->mu);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    pthread_mutex_unlock(&t->mu);
    SSL_CTX_free(old); /* sessions made from it hold their own references */
    return 0;
}

void *tls_session(tls *t, int fd) {
    /* Only the reference is taken under the lock: SSL_new itself takes
     * some 40 us, which the acceptor threads would otherwise queue for. */
    pthread_mutex_lock(&t->mu);
    SSL_CTX *ctx = t->ctx;
    SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->mu);
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the session holds its own reference */
    if (ssl == NULL) return NULL;
    secrets *s = calloc(1, sizeof(*s));
    if (s == NULL || SSL_set_ex_data(ssl, secrets_idx, s) != 1) {
        free(s);
        SSL_free(ssl);
        return NULL;
    }
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

/* Records in buf[0..len), all complete; -1 if it is not whole records. */
static long count_records(const uint8_t *buf, size_t len) {
    long n = 0;
    size_t off = 0;
    while (off + TLSREC_HEADER <= len) {
        size_t body = (size_t)buf[off + 3] << 8 | buf[off + 4];
        if (off + TLSREC_HEADER + body > len) return -1;
        off += TLSREC_HEADER + body;
        n++;
    }
    return off == len ? n : -1;
}

int tls_detach(void *ssl_, tlsrec **rec, uint8_t **owed, size_t *owed_len) {
    SSL *ssl = ssl_;
    *rec = NULL;
    *owed = NULL;
    *owed_len = 0;
    if (SSL_version(ssl) != TLS1_3_VERSION) return 0;
    uint16_t suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(ssl));
    secrets *s = SSL_get_ex_data(ssl, secrets_idx);
    size_t len = tlsrec_secret_len(suite);
    /* Nothing of the client's may wait inside OpenSSL: tlsrec starts at
     * the first record after its Finished (OpenSSL reads record by record,
     * as read-ahead is off). */
    if (len == 0 || s == NULL || s->client_len != len || s->server_len != len ||
        SSL_has_pending(ssl)) {
        if (SSL_new_session_ticket(ssl) == 1) SSL_do_handshake(ssl); /* or with the next write */
        ERR_clear_error();
        return 0;
    }
    /* The ticket is written into memory: its records were sealed with
     * OpenSSL's sequence numbers, which tlsrec continues from. */
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem == NULL) return -1;
    SSL_set0_wbio(ssl, mem); /* ssl owns it now */
    tlsrec *r = calloc(1, sizeof(*r));
    char *data;
    long n, nrec;
    if (r == NULL || SSL_new_session_ticket(ssl) != 1 || SSL_do_handshake(ssl) != 1 ||
        (n = BIO_get_mem_data(mem, &data)) < 0 || (nrec = count_records((uint8_t *)data, (size_t)n)) < 0 ||
        tlsrec_init(r, suite, s->client, s->server) < 0 ||
        (n > 0 && (*owed = malloc((size_t)n)) == NULL)) {
        if (r) tlsrec_clear(r);
        free(r);
        ERR_clear_error();
        return -1;
    }
    r->wr.seq = (uint64_t)nrec;
    if (n > 0) memcpy(*owed, data, (size_t)n);
    *owed_len = (size_t)n;
    *rec = r;
    SSL_free(ssl); /* the secrets go with it, wiped */
    return 1;
}

void tls_free(tls *t) {
    if (t == NULL) return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

const char *tls_version(void *ssl) { return SSL_get_version(ssl); }
