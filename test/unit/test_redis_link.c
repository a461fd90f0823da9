/* Unit tests for redis_link: the URL, what counts as a lasting error, the
 * backoff's bounds, the problem slot, and resolution of a numeric host. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "redis.h"

static void test_url_parts(void **state) {
    (void)state;
    redis_link l;
    char err[256];
    assert_int_equal(redis_link_init(&l, "redis://bob:s3cr@t/x@10.0.0.5:6380/3", 5000, err,
                                     sizeof(err)), 0);
    assert_string_equal(l.user, "bob");
    assert_string_equal(l.pass, "s3cr@t/x"); /* the last '@' ends the password */
    assert_string_equal(l.host, "10.0.0.5");
    assert_int_equal(l.port, 6380);
    assert_int_equal(l.db, 3);
    assert_string_equal(l.ip, "10.0.0.5"); /* numeric: no resolver needed */
    assert_int_equal(l.timeout_ms, 5000);
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://:pw@redis.example:6379/", 100, err,
                                     sizeof(err)), 0);
    assert_string_equal(l.user, "");
    assert_string_equal(l.pass, "pw");
    assert_string_equal(l.host, "redis.example");
    assert_string_equal(l.ip, ""); /* a name: the consumer resolves it */
    assert_int_equal(l.db, 0);
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://[::1]:7000", 100, err, sizeof(err)), 0);
    assert_string_equal(l.host, "::1");
    assert_string_equal(l.ip, "::1");
    assert_int_equal(l.port, 7000);
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1", 100, err, sizeof(err)), 0);
    assert_int_equal(l.port, 6379);
    redis_link_destroy(&l);
}

static void test_bad_url_hides_password(void **state) {
    (void)state;
    redis_link l;
    char err[256];
    static const char *const bad[] = {
        "http://127.0.0.1",  "redis://",          "redis://host:0",   "redis://host:70000",
        "redis://host:x",    "redis://host/abc",  "redis://[::1",     "redis://[]:1",
        "redis://host:1x",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(redis_link_init(&l, bad[i], 100, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "bad redis_url"));
        redis_link_destroy(&l);
    }
    assert_int_equal(redis_link_init(&l, "redis://:hunter2@host:99999", 100, err, sizeof(err)), -1);
    assert_null(strstr(err, "hunter2"));
    redis_link_destroy(&l);
}

/* Issue 15: '@', ':' and '/' in a password are percent-encoded in the URL
 * and decoded before AUTH; a bad escape is a bad URL, never repeated. */
static void test_url_percent_encoding(void **state) {
    (void)state;
    redis_link l;
    char err[256];
    assert_int_equal(redis_link_init(&l, "redis://us%3Aer:p%40ss%3Aw%2Frd%25@10.0.0.5:6380",
                                     100, err, sizeof(err)), 0);
    assert_string_equal(l.user, "us:er");
    assert_string_equal(l.pass, "p@ss:w/rd%");
    assert_string_equal(l.host, "10.0.0.5");
    assert_int_equal(l.port, 6380);
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://:%41%62c@h", 100, err, sizeof(err)), 0);
    assert_string_equal(l.pass, "Abc");
    redis_link_destroy(&l);

    static const char *const bad[] = {"redis://:hunter2%@h", "redis://:hunter2%4@h",
                                      "redis://:hunter2%zz@h", "redis://:hunter2:6379"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(redis_link_init(&l, bad[i], 100, err, sizeof(err)), -1);
        assert_non_null(strstr(err, "bad redis_url"));
        assert_null(strstr(err, "hunter2"));
        redis_link_destroy(&l);
    }
}

static void test_lasting_errors(void **state) {
    (void)state;
    assert_true(redis_error_lasting("WRONGTYPE Operation against a key holding the wrong kind"));
    assert_true(redis_error_lasting("NOAUTH Authentication required."));
    assert_true(redis_error_lasting("WRONGPASS invalid username-password pair"));
    assert_true(redis_error_lasting("NOPERM this user has no permissions to run the 'xadd'"));
    assert_false(redis_error_lasting("LOADING Redis is loading the dataset in memory"));
    assert_false(redis_error_lasting("OOM command not allowed when used memory > 'maxmemory'."));
    assert_false(redis_error_lasting("READONLY You can't write against a read only replica."));
    assert_false(redis_error_lasting("OUTOFORDER message 3 after 1"));
    assert_false(redis_error_lasting("BUSY Redis is busy running a script."));
}

static void test_backoff_bounds(void **state) {
    (void)state;
    int ms = REDIS_BACKOFF_MIN_MS;
    for (int i = 0; i < 200; i++) {
        int next = redis_backoff(ms);
        int doubled = ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : ms * 2;
        assert_true(next <= doubled);
        assert_true(next >= doubled - doubled / 4); /* jitter: at most a quarter */
        assert_true(next >= REDIS_BACKOFF_MIN_MS);
        ms = next;
    }
    assert_true(ms > REDIS_BACKOFF_MAX_MS / 2); /* it got there */
}

static void test_problem_slot(void **state) {
    (void)state;
    redis_link l;
    char err[256], out[192];
    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1", 100, err, sizeof(err)), 0);
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "");
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_WRITE, "WRONGTYPE"), 1);
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_WRITE, "WRONGTYPE"), 0); /* once */
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "WRONGTYPE");
    /* Each side clears only its own. */
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_READ, NULL), 0);
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "WRONGTYPE");
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_READ, "NOPERM"), 1);
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "NOPERM");
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_READ, NULL), 1);
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "WRONGTYPE");
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_WRITE, NULL), 1);
    assert_int_equal(redis_link_set_problem(&l, REDIS_PROBLEM_WRITE, NULL), 0);
    redis_link_problem(&l, out, sizeof(out));
    assert_string_equal(out, "");
    redis_link_destroy(&l);
}

static void test_resolve(void **state) {
    (void)state;
    redis_link l;
    char err[256], ip[64];
    int port = 0;
    assert_int_equal(redis_link_init(&l, "redis://localhost:6380", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_addr(&l, 0, ip, sizeof(ip), &port), -1);
    assert_int_equal(redis_link_refresh(&l, err, sizeof(err)), 0);
    assert_int_equal(redis_link_addr(&l, 0, ip, sizeof(ip), &port), 0);
    assert_true(strcmp(ip, "127.0.0.1") == 0 || strcmp(ip, "::1") == 0);
    assert_int_equal(port, 6380);
    redis_link_destroy(&l);
}

/* Where each shard is: the URL's host for all, or nothing known until the
 * sentinels or the cluster said; a MOVED teaches the map one slot. */
static void test_route(void **state) {
    (void)state;
    redis_link l;
    char err[256], ip[256];
    int port = 0;
    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1:7000", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_route(&l, 4, "", "", "", err, sizeof(err)), 0);
    assert_int_equal(l.mode, REDIS_SINGLE);
    for (int k = 0; k < 4; k++) {
        assert_int_equal(redis_link_addr(&l, k, ip, sizeof(ip), &port), 0);
        assert_string_equal(ip, "127.0.0.1");
        assert_int_equal(port, 7000);
    }
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1:7000", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_route(&l, 1, "", "127.0.0.1, 127.0.0.2:26380", "main", err,
                                      sizeof(err)), 0);
    assert_int_equal(l.mode, REDIS_SENTINEL);
    assert_int_equal(l.nseeds, 2);
    assert_int_equal(l.seed[0].port, 26379); /* the sentinels' port */
    assert_int_equal(l.seed[1].port, 26380);
    assert_string_equal(l.master_name, "main");
    assert_int_equal(redis_link_addr(&l, 0, ip, sizeof(ip), &port), -1); /* ask them first */
    redis_link_destroy(&l);

    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_route(&l, 3, "127.0.0.1:7001 127.0.0.1:7002", "", "", err,
                                      sizeof(err)), 0);
    assert_int_equal(l.mode, REDIS_CLUSTER);
    assert_int_equal(l.nseeds, 2);
    for (int k = 0; k < 3; k++) {
        assert_true(l.slot[k] >= k * CLUSTER_SLOTS / 3 && l.slot[k] < (k + 1) * CLUSTER_SLOTS / 3);
        assert_int_equal(redis_link_addr(&l, k, ip, sizeof(ip), &port), -1); /* no map yet */
    }
    redis_addr to = {"127.0.0.9", 7009};
    redis_link_moved(&l, &to, l.slot[1]); /* no map: asks for one */
    assert_int_equal(atomic_load(&l.stale), 1);
    l.map = calloc(1, sizeof(*l.map));
    assert_non_null(l.map);
    redis_link_moved(&l, &to, l.slot[1]);
    assert_int_equal(redis_link_addr(&l, 1, ip, sizeof(ip), &port), 0);
    assert_string_equal(ip, "127.0.0.9");
    assert_int_equal(port, 7009);
    assert_int_equal(redis_link_addr(&l, 0, ip, sizeof(ip), &port), -1);
    redis_link_destroy(&l);

    /* A Redis Cluster has database 0 only. */
    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1/2", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_route(&l, 1, "127.0.0.1:7001", "", "", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "database 2"));
    redis_link_destroy(&l);
    assert_int_equal(redis_link_init(&l, "redis://127.0.0.1", 100, err, sizeof(err)), 0);
    assert_int_equal(redis_link_route(&l, 1, "127.0.0.1:0", "", "", err, sizeof(err)), -1);
    redis_link_destroy(&l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_parts),     cmocka_unit_test(test_bad_url_hides_password),
        cmocka_unit_test(test_url_percent_encoding),
        cmocka_unit_test(test_lasting_errors), cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_problem_slot),   cmocka_unit_test(test_resolve),
        cmocka_unit_test(test_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
