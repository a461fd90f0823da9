/* Unit tests for room.c: members and the room log, the per-room history
 * ring, the node-wide history budget, and when rooms are freed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "room.h"

static msg *chat(const char *name, int n) {
    char text[32];
    snprintf(text, sizeof text, "m%d", n);
    return msg_new(MSG_CHAT, name, strlen(name), "u", 1, text, strlen(text), 1000, (uint64_t)n, 0);
}

static uint32_t refs(msg *m) { return atomic_load(&m->refs); }

/* Keeps m (with one more reference held by the test) as r's history. */
static msg *remember(room_index *ix, room *r, msg *m) {
    msg_ref(m, 1);
    room_remember(ix, r, m);
    return m;
}

static void test_history_keeps_the_newest_per_room(void **state) {
    (void)state;
    room_index ix;
    assert_int_equal(room_index_init(&ix, 5, 1 << 20), 0);
    room *r = room_get(&ix, "a", 1);
    msg *m[12];
    for (int i = 0; i < 12; i++) m[i] = remember(&ix, r, chat("a", i));
    assert_int_equal(r->hist_len, 5);
    for (uint32_t i = 0; i < 5; i++) assert_ptr_equal(room_hist_at(r, i), m[7 + i]);
    for (int i = 0; i < 7; i++) assert_int_equal(refs(m[i]), 1); /* dropped: only ours */
    for (int i = 7; i < 12; i++) assert_int_equal(refs(m[i]), 2);
    room_index_free(&ix);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(refs(m[i]), 1);
        msg_unref(m[i]);
    }
}

static void test_budget_drops_the_nodes_oldest_first(void **state) {
    (void)state;
    room_index ix;
    msg *probe = chat("a", 0);
    size_t one = msg_size(probe);
    msg_unref(probe);
    /* Room for 4 messages in all, 100 per room. */
    assert_int_equal(room_index_init(&ix, 100, 4 * one), 0);
    room *a = room_get(&ix, "a", 1), *b = room_get(&ix, "b", 1);
    msg *ma0 = remember(&ix, a, chat("a", 0));
    msg *mb0 = remember(&ix, b, chat("b", 0));
    msg *ma1 = remember(&ix, a, chat("a", 1));
    msg *mb1 = remember(&ix, b, chat("b", 1));
    assert_int_equal(ix.hist_bytes, 4 * one);
    msg *ma2 = remember(&ix, a, chat("a", 2)); /* a0 goes: the oldest of all */
    assert_int_equal(refs(ma0), 1);
    assert_int_equal(a->hist_len, 2);
    assert_int_equal(b->hist_len, 2);
    msg *ma3 = remember(&ix, a, chat("a", 3)); /* then b0 */
    assert_int_equal(refs(mb0), 1);
    assert_int_equal(b->hist_len, 1);
    assert_ptr_equal(room_hist_at(b, 0), mb1);
    assert_int_equal(ix.hist_bytes, 4 * one);
    /* b, with no members, is freed once its last message goes. */
    msg *ma4 = remember(&ix, a, chat("a", 4)); /* a1 */
    msg *ma5 = remember(&ix, a, chat("a", 5)); /* b1: b is empty */
    assert_int_equal(refs(mb1), 1);
    assert_null(room_find(&ix, "b", 1));
    assert_int_equal(ix.nrooms, 1);
    room_index_free(&ix);
    msg *all[] = {ma0, mb0, ma1, mb1, ma2, ma3, ma4, ma5};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        assert_int_equal(refs(all[i]), 1);
        msg_unref(all[i]);
    }
}

static void test_a_room_keeps_its_newest_past_the_budget(void **state) {
    (void)state;
    room_index ix;
    assert_int_equal(room_index_init(&ix, 10, 1), 0); /* less than one message */
    room *r = room_get(&ix, "a", 1);
    msg *m0 = remember(&ix, r, chat("a", 0));
    msg *m1 = remember(&ix, r, chat("a", 1));
    assert_int_equal(r->hist_len, 1);
    assert_ptr_equal(room_hist_at(r, 0), m1);
    room_index_free(&ix);
    msg_unref(m0);
    msg_unref(m1);
}

static void test_forget_all_frees_idle_rooms(void **state) {
    (void)state;
    room_index ix;
    assert_int_equal(room_index_init(&ix, 10, 1 << 20), 0);
    member mb;
    memset(&mb, 0, sizeof mb);
    room *a = room_get(&ix, "a", 1), *b = room_get(&ix, "b", 1);
    room_join(a, &mb); /* a has a member, b only history */
    msg *m0 = remember(&ix, a, chat("a", 0));
    msg *m1 = remember(&ix, b, chat("b", 0));
    room_forget_shard(&ix, 0, 1);
    assert_int_equal(a->hist_len, 0);
    assert_int_equal(ix.hist_bytes, 0);
    assert_ptr_equal(room_find(&ix, "a", 1), a);
    assert_null(room_find(&ix, "b", 1));
    assert_int_equal(refs(m0), 1);
    assert_int_equal(refs(m1), 1);
    room_leave(&ix, &mb);
    assert_null(room_find(&ix, "a", 1));
    room_index_free(&ix);
    msg_unref(m0);
    msg_unref(m1);
}

static void test_log_entries_leave_when_every_member_wrote_them(void **state) {
    (void)state;
    room_index ix;
    assert_int_equal(room_index_init(&ix, 0, 0), 0);
    member x, y;
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    room *r = room_get(&ix, "a", 1);
    room_join(r, &x);
    room_join(r, &y);
    msg *m[3];
    for (int i = 0; i < 3; i++) {
        m[i] = chat("a", i);
        msg_ref(m[i], 1);
        assert_int_equal(room_append(&ix, r, m[i]), 0);
    }
    assert_ptr_equal(room_next_dirty(&ix), r);
    assert_null(room_next_dirty(&ix));
    room_settle(&ix, r);
    /* Backlog: behind the entry each writes next, per protocol. */
    assert_int_equal(room_backlog(r, &x, 0), m[1]->frame_len + m[2]->frame_len);
    assert_int_equal(room_backlog(r, &x, 1), m[1]->jframe_len + m[2]->jframe_len);
    room_advance(r, &x);
    room_advance(r, &x);
    assert_int_equal(refs(m[0]), 2); /* y still has to write it */
    room_advance(r, &y);
    assert_int_equal(refs(m[0]), 1);
    assert_int_equal(r->tail, 1);
    room_leave(&ix, &y); /* gives back m1 and m2 for y; x still owes m2 */
    assert_int_equal(refs(m[1]), 1);
    assert_int_equal(refs(m[2]), 2);
    room_leave(&ix, &x);
    assert_int_equal(refs(m[2]), 1);
    assert_null(room_find(&ix, "a", 1));
    room_index_free(&ix);
    for (int i = 0; i < 3; i++) msg_unref(m[i]);
}

static void test_a_dirty_room_outlives_its_last_member(void **state) {
    (void)state;
    room_index ix;
    assert_int_equal(room_index_init(&ix, 0, 0), 0);
    member x;
    memset(&x, 0, sizeof x);
    room *r = room_get(&ix, "a", 1);
    room_join(r, &x);
    assert_int_equal(room_append(&ix, r, chat("a", 0)), 0);
    assert_ptr_equal(room_next_dirty(&ix), r);
    room_leave(&ix, &x); /* during the worker's pass: r stays */
    assert_ptr_equal(room_find(&ix, "a", 1), r);
    room_settle(&ix, r);
    assert_null(room_find(&ix, "a", 1));
    room_index_free(&ix);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_history_keeps_the_newest_per_room),
        cmocka_unit_test(test_budget_drops_the_nodes_oldest_first),
        cmocka_unit_test(test_a_room_keeps_its_newest_past_the_budget),
        cmocka_unit_test(test_forget_all_frees_idle_rooms),
        cmocka_unit_test(test_log_entries_leave_when_every_member_wrote_them),
        cmocka_unit_test(test_a_dirty_room_outlives_its_last_member),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
