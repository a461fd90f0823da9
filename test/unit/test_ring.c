/* Unit tests for the SPSC ring: single-threaded semantics, the doorbell
 * answer of ring_push, and a two-thread sequence check (run under TSan by
 * `make test`). Every test is bounded in time: a broken ring (a missing
 * fence loses a wake-up) must fail the run, not hang it. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ring.h"

/* A test still running after this long hangs: SIGALRM ends the run with a
 * failure naming it (cmocka cannot be re-entered from a signal handler, so
 * the handler reports and exits). */
#ifndef TEST_SECONDS
#define TEST_SECONDS 60
#endif

static const char *running_test = "?";

static void on_alarm(int sig) {
    (void)sig;
    static const char pre[] = "[  FAILED  ] ";
    static const char post[] = ": still running after the time limit (a hang: lost wake-up?)\n";
    ssize_t rc = write(2, pre, sizeof pre - 1);
    rc = write(2, running_test, strlen(running_test));
    rc = write(2, post, sizeof post - 1);
    (void)rc;
    _exit(1);
}

static int arm(void **state) {
    running_test = *state ? (const char *)*state : "?";
    alarm(TEST_SECONDS);
    return 0;
}

static int disarm(void **state) {
    (void)state;
    alarm(0);
    return 0;
}

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
        while ((rc = ring_push(s->r, (void *)i)) < 0) {
            /* The consumer gave up (a lost wake-up or a wrong value):
             * stop rather than wait forever for room. */
            if (atomic_load(&s->done)) return NULL;
            sched_yield();
        }
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
            if ((uintptr_t)p != expect) { /* out of order: fail below */
                s->received = expect - 1;
                atomic_store(&s->done, 1);
                return NULL;
            }
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
    atomic_store(&s->done, 1);
    return NULL;
}

/* One run of the stress; a failed check fails the test. */
static void stress_once(void) {
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

/* A lost wake-up is a race: a few rounds catch a missing fence nearly
 * every time (one round about nine times in ten). */
static void test_two_threads(void **state) {
    (void)state;
    for (int round = 0; round < 3; round++) stress_once();
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
#define BOUNDED(f) {#f, f, arm, disarm, #f}
    const struct CMUnitTest tests[] = {
        BOUNDED(test_bad_sizes),
        BOUNDED(test_fifo_and_full),
        BOUNDED(test_wraps_around),
        BOUNDED(test_doorbell_only_on_empty),
        BOUNDED(test_two_threads),
    };
    return cmocka_run_group_tests_name("ring", tests, NULL, NULL);
}
