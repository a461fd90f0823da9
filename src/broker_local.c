/* broker_local — the in-process broker for a single node.
 *
 * Each worker pushes the messages its clients send into its own ring
 * towards the broker thread, which gives each the next sequence number and
 * fans it out to every worker. One thread assigns the order, so every
 * client sees the same order, and a client's own messages keep theirs.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "broker_backend.h"
#include "log.h"

#define LOCAL_BATCH 256 /* messages taken from one worker before the next */

typedef struct local {
    int bell_fd;       /* workers → broker thread doorbell */
    ring **out;        /* per worker: msg * towards the broker */
    uint64_t seq;      /* broker thread: last sequence given */
} local;

static int local_init(broker *b, char *err, size_t errlen) {
    local *l = calloc(1, sizeof(*l));
    if (l == NULL) goto oom;
    b->impl = l;
    l->bell_fd = eventfd(0, EFD_CLOEXEC);
    l->out = calloc((size_t)b->nworkers, sizeof(*l->out));
    if (l->bell_fd < 0 || l->out == NULL) goto oom;
    for (int i = 0; i < b->nworkers; i++)
        if ((l->out[i] = ring_new((size_t)b->cfg->ring_size)) == NULL) goto oom;
    return 0;
oom:
    snprintf(err, errlen, "local broker: %s", l && l->bell_fd < 0 ? strerror(errno) : "out of memory");
    b->ops->free(b);
    return -1;
}

static void local_free(broker *b) {
    local *l = b->impl;
    if (l == NULL) return;
    if (l->out) {
        for (int i = 0; i < b->nworkers; i++) {
            if (l->out[i] == NULL) continue;
            msg *m;
            while ((m = ring_pop(l->out[i]))) msg_unref(m);
            ring_free(l->out[i]);
        }
        free(l->out);
    }
    if (l->bell_fd >= 0) close(l->bell_fd);
    free(l);
    b->impl = NULL;
}

static void local_ring(local *l) {
    uint64_t one = 1;
    ssize_t rc = write(l->bell_fd, &one, sizeof(one));
    (void)rc; /* a saturated counter still wakes */
}

static void local_interrupt(broker *b) { local_ring(b->impl); }

static void *local_run(void *arg) {
    broker *b = arg;
    local *l = b->impl;
    log_thread("broker");
    /* acquire: see broker_stop */
    while (!atomic_load_explicit(&b->stop, memory_order_acquire)) {
        struct pollfd pfd = {l->bell_fd, POLLIN, 0};
        if (poll(&pfd, 1, 1000) <= 0) continue;
        uint64_t v;
        ssize_t rc = read(l->bell_fd, &v, sizeof(v));
        (void)rc;
        int moved;
        do {
            moved = 0;
            for (int i = 0; i < b->nworkers; i++) {
                msg *m;
                for (int k = 0; k < LOCAL_BATCH && (m = ring_pop(l->out[i])); k++, moved++) {
                    m->id_seq = ++l->seq;
                    if (broker_fanout(b, m) < 0) return NULL;
                }
            }
            broker_flush_wakes(b);
        } while (moved);
    }
    return NULL;
}

static int local_attach(broker *b, int wid, struct event_base *base) {
    (void)b, (void)wid, (void)base;
    return 0;
}

static void local_detach(broker *b, int wid) { (void)b, (void)wid; }

static int64_t local_publish(broker *b, int wid, uint64_t conn_id, const char *rname,
                             size_t room_len, const char *user, size_t user_len,
                             const char *text, size_t text_len) {
    local *l = b->impl;
    (void)conn_id; /* nothing here can refuse a message for good */
    msg *m = msg_new(rname, room_len, user, user_len, text, text_len);
    if (m == NULL) return -1;
    int rc = ring_push(l->out[wid - 1], m); /* worker ids start at 1 */
    if (rc < 0) {
        msg_unref(m);
        return -1;
    }
    if (rc == 1) local_ring(l);
    return 0;
}

const broker_ops broker_local_ops = {
    .name = "local",
    .init = local_init,
    .run = local_run,
    .interrupt = local_interrupt,
    .attach = local_attach,
    .detach = local_detach,
    .publish = local_publish,
    .free = local_free,
};
