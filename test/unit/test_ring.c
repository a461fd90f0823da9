/* Unit tests for the SPSC ring: single-threaded semantics, the doorbell
 * answer of ring_push, and a two-thread sequence check (run under TSan by
 * `make test`). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "ring.h"

static void test_bad_sizes(void **state) {
    (void)state;
    assert_null(ring_new(0));
    assert_null(ring_new(1));
    assert_null(ring_new(3));
    assert_null(ring_new(100));
    ring *r = ring_new(2);
    assert_non_null(r);
    ring_free(r);
}

static void test_fifo_and_full(void **state) {
    (void)state;
    ring *r = ring_new(8);
    assert_null(ring_pop(r));
    for (uintptr_t i = 1; i <= 8; i++) assert_true(ring_push(r, (void *)i) >= 0);
    assert_int_equal(ring_push(r, (void *)99), -1); /* full */
    assert_int_equal(ring_count(r), 8);
    for (uintptr_t i = 1; i <= 8; i++) assert_ptr_equal(ring_pop(r), (void *)i);
    assert_null(ring_pop(r));
    assert_int_equal(ring_count(r), 0);
    ring_free(r);
}

static void test_wraps_around(void **state) {
    (void)state;
    ring *r = ring_new(4);
    uintptr_t next_in = 1, next_out = 1;
    for (int round = 0; round < 1000; round++) {
        int k = round % 4 + 1;
        for (int i = 0; i < k; i++) assert_true(ring_push(r, (void *)next_in++) >= 0);
        for (int i = 0; i < k; i++) assert_ptr_equal(ring_pop(r), (void *)next_out++);
    }
    assert_null(ring_pop(r));
    ring_free(r);
}

static void test_doorbell_only_on_empty(void **state) {
    (void)state;
    ring *r = ring_new(8);
    assert_int_equal(ring_push(r, (void *)1), 1); /* was empty: ring */
    assert_int_equal(ring_push(r, (void *)2), 0); /* not empty: quiet */
    assert_int_equal(ring_push(r, (void *)3), 0);
    ring_pop(r);
    assert_int_equal(ring_push(r, (void *)4), 0); /* still not empty */
    ring_pop(r), ring_pop(r), ring_pop(r);
    assert_null(ring_pop(r));
    assert_int_equal(ring_push(r, (void *)5), 1); /* drained: ring again */
    ring_free(r);
}

/* Two threads: the consumer sleeps on a "doorbell" (a condition variable)
 * only when the ring is empty; every value must arrive once, in order, and
 * no push may be left waiting without a bell (the test would hang, so the
 * wait is bounded and counted as a failure). */
#define STRESS_N 2000000

typedef struct stress {
    ring *r;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int bells;
    _Atomic int done;
    uintptr_t received;
    int lost_wakeup;
} stress;

static void *producer(void *arg) {
    stress *s = arg;
    for (uintptr_t i = 1; i <= STRESS_N; i++) {
        int rc;
        while ((rc = ring_push(s->r, (void *)i)) < 0) sched_yield();
        if (rc == 1) {
            pthread_mutex_lock(&s->mu);
            s->bells++;
            pthread_cond_signal(&s->cv);
            pthread_mutex_unlock(&s->mu);
        }
    }
    return NULL;
}

static void *consumer(void *arg) {
    stress *s = arg;
    uintptr_t expect = 1;
    while (expect <= STRESS_N) {
        void *p;
        while ((p = ring_pop(s->r)) != NULL) {
            if ((uintptr_t)p != expect) return NULL; /* out of order: fail below */
            expect++;
        }
        if (expect > STRESS_N) break;
        /* Empty: sleep until a bell (bounded: 2 s means a lost wake-up). */
        pthread_mutex_lock(&s->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 2;
        while (s->bells == 0) {
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0) {
                s->lost_wakeup = 1;
                break;
            }
        }
        s->bells = 0;
        pthread_mutex_unlock(&s->mu);
        if (s->lost_wakeup) break;
    }
    s->received = expect - 1;
    return NULL;
}

static void test_two_threads(void **state) {
    (void)state;
    stress s = {.r = ring_new(1024)};
    pthread_mutex_init(&s.mu, NULL);
    pthread_cond_init(&s.cv, NULL);
    pthread_t pt, ct;
    pthread_create(&ct, NULL, consumer, &s);
    pthread_create(&pt, NULL, producer, &s);
    pthread_join(pt, NULL);
    pthread_join(ct, NULL);
    assert_int_equal(s.lost_wakeup, 0);
    assert_int_equal(s.received, STRESS_N);
    assert_null(ring_pop(s.r));
    ring_free(s.r);
    pthread_mutex_destroy(&s.mu);
    pthread_cond_destroy(&s.cv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_sizes),
        cmocka_unit_test(test_fifo_and_full),
        cmocka_unit_test(test_wraps_around),
        cmocka_unit_test(test_doorbell_only_on_empty),
        cmocka_unit_test(test_two_threads),
    };
    return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
