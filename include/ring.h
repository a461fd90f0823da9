/* ring — bounded single-producer/single-consumer queue of pointers.
 *
 * Exactly one thread may push and exactly one (other) thread may pop over
 * the ring's life. Lock-free, no allocation after ring_new. Size is a power
 * of two. The producer learns from ring_push whether the consumer may have
 * gone to sleep on an empty ring, so doorbells ring only on
 * empty → non-empty.
 */
#ifndef CHATD_RING_H
#define CHATD_RING_H

#include <stdatomic.h>
#include <stddef.h>

#define RING_CACHELINE 64

typedef struct ring {
    /* Written by the producer, read by the consumer. */
    _Alignas(RING_CACHELINE) _Atomic size_t head;
    /* Written by the consumer, read by the producer. */
    _Alignas(RING_CACHELINE) _Atomic size_t tail;
    /* Immutable after ring_new. */
    _Alignas(RING_CACHELINE) size_t mask;
    void *slot[];
} ring;

/* A ring of size slots (power of two, >= 2). NULL on bad size or OOM.
 * Any thread, before the ring is shared. */
ring *ring_new(size_t size);
void ring_free(ring *r);

/* Producer only. Returns 1 if pushed and the ring was empty just before
 * (the consumer may be asleep: ring its doorbell), 0 if pushed into a
 * non-empty ring, -1 if the ring is full (nothing pushed). */
int ring_push(ring *r, void *p);

/* Consumer only. Returns the oldest pointer, or NULL if the ring is empty.
 * An empty answer is reliable against a concurrent push: if it returns
 * NULL, that push saw the ring empty and rang the doorbell. */
void *ring_pop(ring *r);

/* Either side: approximate number of entries. */
size_t ring_count(ring *r);

#endif
