/* Unit tests for msg's compressed frames: built once, shared, the same
 * frame for every caller, and threads racing to build it (run under TSan
 * by make test). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zlib.h>

#include "msg.h"
#include "pmd.h"
#include "ws.h"

static const char text[] =
    "so I think we should meet at the station around seven, then grab something to eat "
    "before the movie starts, what do you think?";

static msg *chat(const char *t) {
    return msg_new(MSG_CHAT, "room", 4, "alice", 5, t, strlen(t), 1733000000000ULL, 7, 1733000000000LL);
}

/* Inflates a compressed server frame the way a client does; returns the
 * payload length written to out. */
static size_t client_inflate(const uint8_t *f, uint32_t len, uint8_t *out, size_t cap) {
    assert_int_equal(f[0], 0x80 | WS_RSV1 | WS_OP_TEXT);
    size_t h = ws_frame_header_size(f);
    z_stream s;
    memset(&s, 0, sizeof s);
    assert_int_equal(inflateInit2(&s, -15), Z_OK);
    uint8_t in[4096];
    assert_true(len - h + 4 <= sizeof in);
    memcpy(in, f + h, len - h);
    memcpy(in + len - h, "\x00\x00\xff\xff", 4);
    s.next_in = in;
    s.avail_in = (uInt)(len - h + 4);
    s.next_out = out;
    s.avail_out = (uInt)cap;
    assert_int_equal(inflate(&s, Z_SYNC_FLUSH), Z_OK);
    inflateEnd(&s);
    return cap - s.avail_out;
}

static void test_built_once_and_shared(void **state) {
    (void)state;
    pmd *z1 = pmd_new(), *z2 = pmd_new();
    msg *m = chat(text);
    uint32_t len, len2, plen;
    int deflated;
    assert_null(msg_zframe_built(m, 0, &len));
    const uint8_t *f = msg_zframe(m, 0, z1, &len, &deflated);
    assert_non_null(f);
    assert_int_equal(deflated, 1);
    /* Another worker's call finds the same bytes and compresses nothing. */
    const uint8_t *g = msg_zframe(m, 0, z2, &len2, &deflated);
    assert_ptr_equal(f, g);
    assert_int_equal(len, len2);
    assert_int_equal(deflated, 0);
    assert_ptr_equal(msg_zframe_built(m, 0, &len2), f);
    /* It is the text frame, shorter, and reads back to it. */
    const uint8_t *plain = msg_frame(m, 0, &plen);
    assert_true(len < plen);
    uint8_t out[4096];
    size_t ph = ws_frame_header_size(plain);
    assert_int_equal(client_inflate(f, len, out, sizeof out), plen - ph);
    assert_memory_equal(out, plain + ph, plen - ph);
    /* The chatd.v1 frame has a slot of its own. */
    assert_null(msg_zframe_built(m, 1, &len2));
    const uint8_t *j = msg_zframe(m, 1, z2, &len2, &deflated);
    assert_non_null(j);
    assert_ptr_not_equal(j, f);
    plain = msg_frame(m, 1, &plen);
    ph = ws_frame_header_size(plain);
    assert_int_equal(client_inflate(j, len2, out, sizeof out), plen - ph);
    assert_memory_equal(out, plain + ph, plen - ph);
    msg_unref(m); /* frees both compressed frames (ASan: no leak) */
    pmd_free(z1);
    pmd_free(z2);
}

static void test_no_gain_is_plain(void **state) {
    (void)state;
    pmd *z = pmd_new();
    msg *m = chat("ok");
    uint32_t len;
    int deflated;
    /* "alice: ok" cannot get shorter: plain, and decided for good. */
    assert_null(msg_zframe(m, 0, z, &len, &deflated));
    assert_int_equal(deflated, 1);
    assert_null(msg_zframe(m, 0, z, &len, &deflated));
    assert_int_equal(deflated, 0);
    assert_null(msg_zframe_built(m, 0, &len));
    msg_unref(m);
    /* A private frame (one frame for both protocols) compresses too. */
    char big[600];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    m = msg_private(big, strlen(big));
    assert_non_null(msg_zframe(m, 1, z, &len, &deflated));
    assert_true(len < 100);
    msg_unref(m);
    pmd_free(z);
}

#define RACERS 4
#define ROUNDS 2000

static pthread_barrier_t start;

typedef struct racer {
    msg **msgs;
    const uint8_t *got[ROUNDS];
    pthread_t t;
} racer;

static void *race(void *arg) {
    racer *r = arg;
    pmd *z = pmd_new();
    pthread_barrier_wait(&start); /* all at once, on the same messages */
    for (int i = 0; i < ROUNDS; i++) {
        uint32_t len;
        int deflated;
        r->got[i] = msg_zframe(r->msgs[i], i & 1, z, &len, &deflated);
        /* read every byte: TSan sees a read of a frame published without
         * release/acquire */
        unsigned sum = 0;
        for (uint32_t k = 0; k < len; k++) sum += r->got[i][k];
        (void)sum;
        msg_unref(r->msgs[i]);
    }
    pmd_free(z);
    return NULL;
}

/* Threads ask for the same messages at once: each message ends up with one
 * frame that all of them got, and the last reference frees it. */
static void test_race(void **state) {
    (void)state;
    msg **msgs = calloc(ROUNDS, sizeof *msgs);
    assert_non_null(msgs);
    for (int i = 0; i < ROUNDS; i++) {
        char t[200];
        snprintf(t, sizeof t, "%s %d", text, i);
        msgs[i] = chat(t);
        msg_ref(msgs[i], RACERS); /* one per racer, dropped as each is done */
    }
    racer *r = calloc(RACERS, sizeof *r);
    assert_non_null(r);
    pthread_barrier_init(&start, NULL, RACERS);
    for (int k = 0; k < RACERS; k++) {
        r[k].msgs = msgs;
        assert_int_equal(pthread_create(&r[k].t, NULL, race, &r[k]), 0);
    }
    for (int k = 0; k < RACERS; k++) pthread_join(r[k].t, NULL);
    pthread_barrier_destroy(&start);
    for (int i = 0; i < ROUNDS; i++) {
        uint32_t len;
        assert_non_null(r[0].got[i]);
        assert_ptr_equal(msg_zframe_built(msgs[i], i & 1, &len), r[0].got[i]);
        for (int k = 1; k < RACERS; k++) assert_ptr_equal(r[k].got[i], r[0].got[i]);
        msg_unref(msgs[i]);
    }
    free(r);
    free(msgs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_built_once_and_shared),
        cmocka_unit_test(test_no_gain_is_plain),
        cmocka_unit_test(test_race),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
