/* acceptor — the threads that accept connections, run the TLS and HTTP
 * sides of the handshake under limits, and hand upgraded connections to
 * workers.
 */
#ifndef CHATD_ACCEPTOR_H
#define CHATD_ACCEPTOR_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "tls.h"
#include "worker.h"

typedef struct acceptor acceptor;

/* Main thread: binds the ws listener, and the wss one when t is not NULL,
 * for nthreads acceptor threads that share them (each hands off to the
 * workers through its own ring, worker_new's nacceptors). ceiling is how
 * many upgraded connections open files allow; the cap is the lower of it
 * and max_clients of the config in force (each acceptor thread switches to
 * a reloaded config, config_current, between events). Any acceptor thread
 * answers GET /metrics from the acceptor threads' counters, the workers'
 * and b's. NULL with err filled on failure. */
acceptor *acceptor_new(const config *cfg, tls *t, struct broker *b, worker **workers,
                       int nworkers, int nthreads, int64_t ceiling, char *err, size_t errlen);
/* Main thread: starts the acceptor threads (-1 if one could not start:
 * acceptor_stop then stops those that did). */
int acceptor_start(acceptor *a);
/* Main thread, on SIGTERM: from now on /readyz answers 503 and upgrades
 * are refused with 503, while the node drains its clients. */
void acceptor_drain(acceptor *a);
/* Main thread: stops the acceptor threads and joins them. */
void acceptor_stop(acceptor *a);
void acceptor_free(acceptor *a);

#endif
