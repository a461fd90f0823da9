/* tls — the server's TLS context: certificate, key, versions, and reload;
 * and the move of a TLS 1.3 session out of OpenSSL after its handshake.
 *
 * One SSL_CTX is shared by every TLS connection (OpenSSL reference counts
 * it, so a connection keeps the context it started with). Library-like: no
 * logging; errors into the caller's buffer.
 */
#ifndef CHATD_TLS_H
#define CHATD_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct tls tls;
struct tlsrec;

/* Main thread, at start: loads cfg's certificate and key. NULL with err
 * naming the file on failure (missing, unreadable, or key not matching). */
tls *tls_new(const config *cfg, char *err, size_t errlen);

/* Main thread, on SIGHUP: loads cfg's files (the reloaded config: the
 * files, ciphers and version may have changed) into a new context and puts
 * it in service for new connections. On failure the old context stays and
 * err says why. Returns 0 or -1. */
int tls_reload(tls *t, const config *cfg, char *err, size_t errlen);

/* Acceptor thread: a new server session on fd (an SSL *), or NULL. */
void *tls_session(tls *t, int fd);

/* Acceptor thread, once SSL_do_handshake has returned 1 on ssl: moves a
 * TLS 1.3 session to chatd's record layer (tlsrec.h). Returns 1 when moved:
 * ssl is freed, *rec is the session (malloc'd) and *owed (malloc'd, NULL
 * when empty) holds the *owed_len bytes of the session ticket's records,
 * to be written before anything else. Returns 0 when the session stays
 * OpenSSL's (TLS 1.2, or a suite tlsrec lacks; its ticket goes out with
 * its next write), -1 on failure (ssl is still the caller's to free). */
int tls_detach(void *ssl, struct tlsrec **rec, uint8_t **owed, size_t *owed_len);

/* Main thread, after every thread has stopped. */
void tls_free(tls *t);

/* "TLSv1.3" etc. of an established session. Any thread owning it. */
const char *tls_version(void *ssl);

#endif
