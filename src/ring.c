/* ring — bounded SPSC queue of pointers (see ring.h).
 *
 * Synchronisation, one line per atomic access:
 *   producer  store head  (release)  publishes the slot written before it
 *   consumer  load  head  (acquire)  sees that slot's contents
 *   consumer  store tail  (release)  hands the slot back after reading it
 *   producer  load  tail  (acquire)  may overwrite the slot only after that
 *   both      fence (seq_cst) between their store and the other side's load,
 *             so a push into a ring the consumer is draining is either seen
 *             by the consumer's last look or seen as "ring was empty" by the
 *             producer, who then rings the doorbell (a store-load pair, as
 *             in Dekker's algorithm: acquire/release alone would let both
 *             miss each other and a message would wait until the next one).
 * Each side keeps its own index with relaxed loads: only it writes it.
 */
#include "ring.h"

#include <stdlib.h>

ring *ring_new(size_t size) {
    if (size < 2 || (size & (size - 1)) != 0) return NULL;
    ring *r = aligned_alloc(RING_CACHELINE,
                            (sizeof(ring) + size * sizeof(void *) + RING_CACHELINE - 1) /
                                RING_CACHELINE * RING_CACHELINE);
    if (r == NULL) return NULL;
    atomic_init(&r->head, 0);
    atomic_init(&r->tail, 0);
    r->mask = size - 1;
    return r;
}

void ring_free(ring *r) { free(r); }

int ring_push(ring *r, void *p) {
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed); /* own index */
    size_t tail = atomic_load_explicit(&r->tail, memory_order_acquire); /* slot is free */
    if (head - tail > r->mask) return -1;
    r->slot[head & r->mask] = p;
    atomic_store_explicit(&r->head, head + 1, memory_order_release); /* publish slot */
    atomic_thread_fence(memory_order_seq_cst); /* order head store before tail load */
    tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    return tail == head ? 1 : 0;
}

void *ring_pop(ring *r) {
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed); /* own index */
    size_t head = atomic_load_explicit(&r->head, memory_order_acquire); /* see slot */
    if (head == tail) {
        /* Looks empty: look once more after a full fence, pairing with the
         * producer's fence, so that a push we miss is one whose producer saw
         * tail == its head and rang the doorbell. */
        atomic_thread_fence(memory_order_seq_cst);
        head = atomic_load_explicit(&r->head, memory_order_acquire);
        if (head == tail) return NULL;
    }
    void *p = r->slot[tail & r->mask];
    atomic_store_explicit(&r->tail, tail + 1, memory_order_release); /* free slot */
    return p;
}

size_t ring_count(ring *r) {
    size_t head = atomic_load_explicit(&r->head, memory_order_relaxed); /* estimate */
    size_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed); /* estimate */
    return head - tail;
}
