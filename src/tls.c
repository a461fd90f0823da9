/* tls — the shared server SSL_CTX and its reload (see tls.h).
 *
 * Lean per connection: SSL_MODE_RELEASE_BUFFERS gives an idle session's
 * read and write buffers back (about 34 KB each otherwise), compression is
 * off, session resumption is on (cache and TLS 1.3 tickets).
 */
#include "tls.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

struct tls {
    pthread_mutex_t mu; /* guards ctx: swapped by main, used by the acceptor */
    SSL_CTX *ctx;
};

static void ssl_error(char *err, size_t errlen, const char *what, const char *file) {
    char buf[256];
    unsigned long e = ERR_peek_last_error();
    ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s %s: %s", what, file, e ? buf : "failed");
    ERR_clear_error();
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
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    static const unsigned char sid_ctx[] = "chatd";
    SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
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
    if ((t->ctx = tls_load(cfg, err, errlen)) == NULL) {
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
    pthread_mutex_lock(&t->mu);
    SSL *ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->mu);
    if (ssl == NULL) return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

void tls_free(tls *t) {
    if (t == NULL) return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

const char *tls_version(void *ssl) { return SSL_get_version(ssl); }
