/* Unit tests for redis_cluster: slots against values Redis gives, shard
 * tags, room shards, redirects, address lists, the slot map read from
 * hand-built CLUSTER SLOTS replies (good and malformed), and the replies of
 * Sentinel and ROLE. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_cluster.h"

/* ---- hand-built replies -------------------------------------------------- */

static redisReply *mk(int type) {
    redisReply *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->type = type;
    return r;
}

static redisReply *rnum(long long v) {
    redisReply *r = mk(REDIS_REPLY_INTEGER);
    r->integer = v;
    return r;
}

static redisReply *rtext(int type, const char *s) {
    redisReply *r = mk(type);
    r->str = strdup(s);
    assert_non_null(r->str);
    r->len = strlen(s);
    return r;
}

static redisReply *rstr(const char *s) { return rtext(REDIS_REPLY_STRING, s); }
static redisReply *rerr(const char *s) { return rtext(REDIS_REPLY_ERROR, s); }
static redisReply *rnil(void) { return mk(REDIS_REPLY_NIL); }

/* An array of n elements, all NULL until the caller sets them. */
static redisReply *rvec(size_t n) {
    redisReply *r = mk(REDIS_REPLY_ARRAY);
    r->elements = n;
    r->element = calloc(n ? n : 1, sizeof *r->element);
    assert_non_null(r->element);
    return r;
}

/* An array of the n elements given, any of which may be NULL. */
static redisReply *rarr(size_t n, ...) {
    redisReply *r = rvec(n);
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) r->element[i] = va_arg(ap, redisReply *);
    va_end(ap);
    return r;
}

static void rfree(redisReply *r) {
    if (r == NULL) return;
    if (r->element != NULL)
        for (size_t i = 0; i < r->elements; i++) rfree(r->element[i]);
    free(r->element);
    free(r->str);
    free(r);
}

/* A CLUSTER SLOTS node: [host, port, id]. */
static redisReply *node(const char *host, int port) {
    return rarr(3, rstr(host), rnum(port), rstr("07c37dfeb235213a872192d90877d0cd55635b91"));
}

/* The reply of a cluster made by redis-cli --cluster create with 3 masters
 * and a replica each (the last master has lost its replica). */
static redisReply *three_masters(void) {
    return rarr(3,
                rarr(4, rnum(0), rnum(5460), node("127.0.0.1", 7000), node("127.0.0.1", 7003)),
                rarr(4, rnum(5461), rnum(10922), node("127.0.0.1", 7001),
                     node("127.0.0.1", 7004)),
                rarr(3, rnum(10923), rnum(16383), node("127.0.0.1", 7002)));
}

static cluster_map *new_map(void) {
    cluster_map *m = calloc(1, sizeof *m);
    assert_non_null(m);
    return m;
}

static void expect_owner(const cluster_map *m, int slot, const char *host, int port) {
    redis_addr a;
    if (cluster_map_owner(m, slot, &a) != 0) fail_msg("slot %d has no owner", slot);
    assert_string_equal(a.host, host);
    assert_int_equal(a.port, port);
}

/* ---- slots ---------------------------------------------------------------- */

static void test_crc16(void **state) {
    (void)state;
    assert_int_equal(cluster_crc16("123456789", 9), 0x31C3); /* the spec's check value */
    assert_int_equal(cluster_crc16("", 0), 0);
    assert_int_equal(cluster_crc16("A", 1), 0x58E5);         /* XMODEM of one byte */
}

static int slot_of(const char *key) { return cluster_keyslot(key, strlen(key)); }

static void test_keyslot(void **state) {
    (void)state;
    /* What CLUSTER KEYSLOT answers. */
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of("somekey"), 11058);
    assert_int_equal(slot_of("foo{hash_tag}"), 2515);
    assert_int_equal(slot_of("bar{hash_tag}"), 2515);
    assert_int_equal(slot_of("{user1}.following"), 8106);
    /* The spec's hash tag examples. */
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_int_equal(slot_of("{user1000}.followers"), slot_of("user1000"));
    assert_int_equal(slot_of("foo{}{bar}"), cluster_crc16("foo{}{bar}", 10) & 16383);
    assert_int_not_equal(slot_of("foo{}{bar}"), slot_of("bar"));
    assert_int_equal(slot_of("foo{{bar}}zap"), cluster_crc16("{bar", 4) & 16383);
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    /* No closing brace, or one only before the opening: the whole key. */
    assert_int_equal(slot_of("foo{bar"), cluster_crc16("foo{bar", 7) & 16383);
    assert_int_equal(slot_of("}bar{"), cluster_crc16("}bar{", 5) & 16383);
    /* The length counts, not a NUL: keys are binary. */
    assert_int_not_equal(cluster_keyslot("a\0b", 3), slot_of("a"));
    assert_int_equal(cluster_keyslot("{a\0b}x", 6), cluster_crc16("a\0b", 3) & 16383);
    /* A closing brace past len is not seen. */
    assert_int_equal(cluster_keyslot("foo{bar}", 4), cluster_crc16("foo{", 4) & 16383);
}

/* ---- shard tags ----------------------------------------------------------- */

static void test_shard_tags(void **state) {
    (void)state;
    for (int n = 1; n <= SHARDS_MAX; n++) {
        char tags[SHARDS_MAX][32];
        for (int k = 0; k < n; k++) {
            int lo = k * CLUSTER_SLOTS / n, hi = (k + 1) * CLUSTER_SLOTS / n;
            int slot = cluster_shard_tag(k, n, tags[k], sizeof tags[k]);
            if (slot < lo || slot >= hi)
                fail_msg("n %d k %d: slot %d not in [%d, %d)", n, k, slot, lo, hi);
            /* The slot of the key the caller builds. */
            char key[64];
            snprintf(key, sizeof key, "chatd:messages:{%.31s}", tags[k]);
            assert_int_equal(slot_of(key), slot);
            /* "<k>-<j>" with the smallest j that lands in the range. */
            int kk = -1, j = -1, used = 0;
            assert_int_equal(sscanf(tags[k], "%d-%d%n", &kk, &j, &used), 2);
            assert_int_equal(kk, k);
            assert_int_equal((size_t)used, strlen(tags[k]));
            for (int jj = 0; jj < j; jj++) {
                char t[32];
                snprintf(t, sizeof t, "%d-%d", k, jj);
                int s = slot_of(t);
                if (s >= lo && s < hi) fail_msg("n %d k %d: '%s' lands too, before j %d", n, k, t, j);
            }
            for (int o = 0; o < k; o++) assert_string_not_equal(tags[o], tags[k]);
            char again[32];
            assert_int_equal(cluster_shard_tag(k, n, again, sizeof again), slot);
            assert_string_equal(again, tags[k]);
        }
    }
}

static void test_shard_tag_bounds(void **state) {
    (void)state;
    char t[32];
    assert_int_equal(cluster_shard_tag(0, 0, t, sizeof t), -1);
    assert_int_equal(cluster_shard_tag(0, SHARDS_MAX + 1, t, sizeof t), -1);
    assert_int_equal(cluster_shard_tag(-1, 4, t, sizeof t), -1);
    assert_int_equal(cluster_shard_tag(4, 4, t, sizeof t), -1);
    int slot = cluster_shard_tag(3, 4, t, sizeof t);
    assert_true(slot >= 0);
    size_t len = strlen(t);
    char small[32];
    assert_int_equal(cluster_shard_tag(3, 4, small, len), -1);
    assert_int_equal(cluster_shard_tag(3, 4, small, len + 1), slot);
    assert_string_equal(small, t);
}

/* Shards of a cluster made with even ranges land one per master. */
static void test_shard_tags_spread_over_masters(void **state) {
    (void)state;
    cluster_map *m = new_map();
    redisReply *r = three_masters();
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", NULL, 0), 0);
    int on[3] = {0};
    for (int k = 0; k < 6; k++) {
        char t[32];
        redis_addr a;
        assert_int_equal(cluster_map_owner(m, cluster_shard_tag(k, 6, t, sizeof t), &a), 0);
        on[a.port - 7000]++;
    }
    assert_int_equal(on[0], 2);
    assert_int_equal(on[1], 2);
    assert_int_equal(on[2], 2);
    rfree(r);
    free(m);
}

/* ---- room shards ---------------------------------------------------------- */

static void test_room_shard(void **state) {
    (void)state;
    /* FNV-1a 32-bit: "" is the offset basis 0x811c9dc5, "a" 0xe40c292c,
     * "foobar" 0xbf9cf968. */
    assert_int_equal(cluster_room_shard("", 0, 1000), 0x811c9dc5u % 1000);
    assert_int_equal(cluster_room_shard("a", 1, 1000), 0xe40c292cu % 1000);
    assert_int_equal(cluster_room_shard("foobar", 6, 1000), 0xbf9cf968u % 1000);
    assert_int_equal(cluster_room_shard("lobby", 5, 1), 0);
    assert_int_equal(cluster_room_shard("lobby", 5, 0), 0);
    for (int n = 1; n <= SHARDS_MAX; n++) {
        int s = cluster_room_shard("general", 7, n);
        assert_true(s >= 0 && s < n);
        assert_int_equal(cluster_room_shard("general", 7, n), s);
    }
    int count[8] = {0};
    for (int i = 0; i < 10000; i++) {
        char room[32];
        int len = snprintf(room, sizeof room, "room-%d", i);
        int s = cluster_room_shard(room, (size_t)len, 8);
        assert_true(s >= 0 && s < 8);
        count[s]++;
    }
    for (int s = 0; s < 8; s++)
        if (count[s] < 10000 / 8 / 2) fail_msg("shard %d has %d rooms of 10000", s, count[s]);
}

/* ---- redirects ------------------------------------------------------------ */

static void expect_redirect(const char *err, int ask, int slot, const char *host, int port) {
    int a = -1, s = -1;
    redis_addr to;
    if (cluster_redirect_parse(err, &a, &s, &to) != 0) fail_msg("'%s' refused", err);
    assert_int_equal(a, ask);
    assert_int_equal(s, slot);
    assert_string_equal(to.host, host);
    assert_int_equal(to.port, port);
}

static void test_redirect(void **state) {
    (void)state;
    expect_redirect("MOVED 3999 127.0.0.1:6381", 0, 3999, "127.0.0.1", 6381);
    expect_redirect("ASK 3999 127.0.0.1:6381", 1, 3999, "127.0.0.1", 6381);
    expect_redirect("MOVED 0 ::1:6381", 0, 0, "::1", 6381);
    expect_redirect("ASK 16383 2001:db8::5:7000", 1, 16383, "2001:db8::5", 7000);
    expect_redirect("MOVED 5 :6381", 0, 5, "", 6381);
    expect_redirect("MOVED 12 redis-3.example:65535", 0, 12, "redis-3.example", 65535);
    expect_redirect("MOVED 1 h:1", 0, 1, "h", 1);
    char err[300], host[256];
    memset(host, 'h', 255);
    host[255] = '\0';
    snprintf(err, sizeof err, "MOVED 7 %s:7000", host);
    expect_redirect(err, 0, 7, host, 7000);
}

static void test_redirect_bad(void **state) {
    (void)state;
    static const char *const bad[] = {
        "ERR unknown command",  "MOVED",
        "MOVED ",               "MOVED 3999",
        "MOVED 3999 ",          "MOVED 16384 127.0.0.1:6381",
        "MOVED -1 h:1",         "MOVED +1 h:1",
        "MOVED 1 h:0",          "MOVED 1 h:70000",
        "MOVED 1 h:65536",      "MOVED 1 h:-1",
        "MOVED 1 h:+1",         "MOVED 1 h",
        "MOVED 1 h:",           "MOVED3999 h:1",
        "MOVED 3999h:1",        "MOVED  1 h:1",
        "MOVED 1  h:1",         "MOVED 99999999999999999999 h:1",
        "MOVED 1 h:99999999999999999999", "MOVED 4294967297 h:1",
        "MOVED 1 h:6381 extra", "MOVED 1 h:6381x",
        "MOVED 1 h:6381\n",     "MOVED 1 a b:6381",
        "moved 1 h:1",          "ASKING 1 h:1",
        "ASK",                  "",
        "-MOVED 1 h:1",         "TRYAGAIN Multiple keys request during rehashing of slot",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int a = 7, s = 7;
        redis_addr to = {"untouched", 7};
        if (cluster_redirect_parse(bad[i], &a, &s, &to) != -1) fail_msg("'%s' was accepted", bad[i]);
        assert_int_equal(a, 7);
        assert_int_equal(s, 7);
        assert_string_equal(to.host, "untouched");
        assert_int_equal(to.port, 7);
    }
    int a, s;
    redis_addr to;
    assert_int_equal(cluster_redirect_parse(NULL, &a, &s, &to), -1);
    char err[300], host[257];
    memset(host, 'h', 256);
    host[256] = '\0';
    snprintf(err, sizeof err, "MOVED 7 %s:7000", host);
    assert_int_equal(cluster_redirect_parse(err, &a, &s, &to), -1);
}

/* ---- address lists -------------------------------------------------------- */

static void test_addr_list(void **state) {
    (void)state;
    redis_addr a[8];
    char err[256];
    assert_int_equal(redis_addr_list_parse("127.0.0.1:7000", 6379, a, 8, err, sizeof err), 1);
    assert_string_equal(a[0].host, "127.0.0.1");
    assert_int_equal(a[0].port, 7000);

    assert_int_equal(redis_addr_list_parse(",, redis-a:7000,\tredis-b , [::1]:7002 [fe80::1%lo] ,",
                                           26379, a, 8, err, sizeof err), 4);
    assert_string_equal(a[0].host, "redis-a");
    assert_int_equal(a[0].port, 7000);
    assert_string_equal(a[1].host, "redis-b");
    assert_int_equal(a[1].port, 26379);
    assert_string_equal(a[2].host, "::1");
    assert_int_equal(a[2].port, 7002);
    assert_string_equal(a[3].host, "fe80::1%lo");
    assert_int_equal(a[3].port, 26379);

    /* Exactly max entries fit. */
    assert_int_equal(redis_addr_list_parse("a b", 1, a, 2, err, sizeof err), 2);
    char s[300];
    memset(s, 'h', 255);
    snprintf(s + 255, sizeof s - 255, ":1");
    assert_int_equal(redis_addr_list_parse(s, 1, a, 8, err, sizeof err), 1);
    assert_int_equal(strlen(a[0].host), 255);

    char out[300];
    redis_addr v4 = {"10.0.0.1", 7000}, v6 = {"::1", 7001};
    redis_addr_format(&v4, out, sizeof out);
    assert_string_equal(out, "10.0.0.1:7000");
    redis_addr_format(&v6, out, sizeof out);
    assert_string_equal(out, "[::1]:7001");
}

static void expect_list_error(const char *s, int max, const char *want) {
    redis_addr a[4];
    char err[256] = "";
    if (redis_addr_list_parse(s, 6379, a, max, err, sizeof err) != -1)
        fail_msg("'%s' was accepted", s);
    if (strstr(err, want) == NULL) fail_msg("'%s': error '%s' lacks '%s'", s, err, want);
}

static void test_addr_list_bad(void **state) {
    (void)state;
    expect_list_error("", 4, "bad address '': no address");
    expect_list_error(" ,\t, ", 4, "no address");
    expect_list_error("a:0", 4, "bad address 'a:0': bad port");
    expect_list_error("good:1 a:70000", 4, "bad address 'a:70000': bad port");
    expect_list_error("a:x", 4, "bad address 'a:x': bad port");
    expect_list_error("a:", 4, "bad address 'a:': bad port");
    expect_list_error("a:1x", 4, "bad port");
    expect_list_error("a:99999999999999999999", 4, "bad port");
    expect_list_error(":7000", 4, "bad address ':7000': empty host");
    expect_list_error("[]:7000", 4, "empty host");
    expect_list_error("[::1", 4, "bad address '[::1': unclosed '['");
    expect_list_error("[::1 ]:7000", 4, "unclosed '['");
    expect_list_error("[::1]x", 4, "after ']'");
    expect_list_error("[::1]:", 4, "bad port");
    expect_list_error("::1", 4, "brackets");
    expect_list_error("fe80::1:7000", 4, "brackets");
    expect_list_error("a:1:2", 4, "brackets");
    expect_list_error("a\x01:1", 4, "control character");
    expect_list_error("a b c", 2, "bad address 'c': more than 2 addresses");
    expect_list_error("a", 0, "more than 0 addresses");
    char s[300];
    memset(s, 'h', 256);
    snprintf(s + 256, sizeof s - 256, ":1");
    expect_list_error(s, 4, "...': host longer than 255 bytes"); /* the entry is cut */
    /* A NULL error buffer is allowed. */
    redis_addr a[1];
    assert_int_equal(redis_addr_list_parse("", 1, a, 1, NULL, 0), -1);
}

/* ---- the slot map --------------------------------------------------------- */

static void test_map_three_masters(void **state) {
    (void)state;
    cluster_map *m = new_map();
    char err[256];
    redisReply *r = three_masters();
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), 0);
    assert_int_equal(m->nnodes, 3);
    expect_owner(m, 0, "127.0.0.1", 7000);
    expect_owner(m, 5460, "127.0.0.1", 7000);
    expect_owner(m, 5461, "127.0.0.1", 7001);
    expect_owner(m, 10922, "127.0.0.1", 7001);
    expect_owner(m, 10923, "127.0.0.1", 7002);
    expect_owner(m, 16383, "127.0.0.1", 7002);
    expect_owner(m, slot_of("foo"), "127.0.0.1", 7002);
    expect_owner(m, slot_of("bar"), "127.0.0.1", 7000);
    assert_true(cluster_map_complete(m));
    redis_addr a;
    assert_int_equal(cluster_map_owner(m, -1, &a), -1);
    assert_int_equal(cluster_map_owner(m, CLUSTER_SLOTS, &a), -1);
    rfree(r);

    /* A new reply replaces the map whole: slots it leaves out have no owner. */
    r = rarr(2, rarr(3, rnum(100), rnum(200), node("10.0.0.9", 7000)),
             rarr(3, rnum(300), rnum(300), node("10.0.0.9", 7000)));
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), 0);
    assert_int_equal(m->nnodes, 1); /* one master for two ranges */
    expect_owner(m, 100, "10.0.0.9", 7000);
    expect_owner(m, 200, "10.0.0.9", 7000);
    expect_owner(m, 300, "10.0.0.9", 7000);
    assert_int_equal(cluster_map_owner(m, 99, &a), -1);
    assert_int_equal(cluster_map_owner(m, 201, &a), -1);
    assert_int_equal(cluster_map_owner(m, 0, &a), -1);
    assert_false(cluster_map_complete(m));
    rfree(r);

    /* An empty reply: a cluster with no slots assigned yet. */
    r = rarr(0);
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), 0);
    assert_int_equal(m->nnodes, 0);
    assert_int_equal(cluster_map_owner(m, 100, &a), -1);
    rfree(r);
    free(m);
}

static void test_map_unknown_host(void **state) {
    (void)state;
    cluster_map *m = new_map();
    char err[256];
    /* "" (older Redis), "?" and nil (Redis 7's unknown endpoint) are the
     * node that answered; the port is still the reply's. */
    redisReply *r = rarr(3, rarr(3, rnum(0), rnum(9), node("", 7000)),
                         rarr(3, rnum(10), rnum(19), node("?", 7001)),
                         rarr(3, rnum(20), rnum(16383),
                              rarr(3, rnil(), rnum(7002), rstr("id"))));
    assert_int_equal(cluster_map_parse_slots(m, r, "::1", err, sizeof err), 0);
    expect_owner(m, 0, "::1", 7000);
    expect_owner(m, 10, "::1", 7001);
    expect_owner(m, 16383, "::1", 7002);
    assert_true(cluster_map_complete(m));
    /* With no address asked, nobody knows where it is. */
    assert_int_equal(cluster_map_parse_slots(m, r, NULL, err, sizeof err), -1);
    assert_non_null(strstr(err, "no address"));
    assert_int_equal(cluster_map_parse_slots(m, r, "", err, sizeof err), -1);
    rfree(r);
    free(m);
}

typedef redisReply *(*reply_maker)(void);

static redisReply *m_err(void) { return rerr("ERR This instance has cluster support disabled"); }
static redisReply *m_nil(void) { return rnil(); }
static redisReply *m_int(void) { return rnum(3); }
static redisReply *m_str(void) { return rstr("0 16383 127.0.0.1 7000"); }
static redisReply *m_null_entry(void) { return rarr(2, rarr(3, rnum(0), rnum(1), node("h", 1)), NULL); }
static redisReply *m_int_entry(void) { return rarr(1, rnum(0)); }
static redisReply *m_nil_entry(void) { return rarr(1, rnil()); }
static redisReply *m_short_entry(void) { return rarr(1, rarr(2, rnum(0), rnum(100))); }
static redisReply *m_empty_entry(void) { return rarr(1, rarr(0)); }
static redisReply *m_null_master(void) { return rarr(1, rarr(3, rnum(0), rnum(100), NULL)); }
static redisReply *m_null_start(void) { return rarr(1, rarr(3, NULL, rnum(100), node("h", 1))); }
static redisReply *m_null_end(void) { return rarr(1, rarr(3, rnum(0), NULL, node("h", 1))); }
static redisReply *m_str_start(void) { return rarr(1, rarr(3, rstr("0"), rnum(100), node("h", 1))); }
static redisReply *m_str_end(void) { return rarr(1, rarr(3, rnum(0), rstr("100"), node("h", 1))); }
static redisReply *m_start_gt_end(void) { return rarr(1, rarr(3, rnum(100), rnum(50), node("h", 1))); }
static redisReply *m_end_high(void) { return rarr(1, rarr(3, rnum(0), rnum(16384), node("h", 1))); }
static redisReply *m_start_neg(void) { return rarr(1, rarr(3, rnum(-1), rnum(10), node("h", 1))); }
static redisReply *m_huge(void) { return rarr(1, rarr(3, rnum(1LL << 40), rnum(1LL << 41), node("h", 1))); }
static redisReply *m_master_str(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rstr("h:1"))); }
static redisReply *m_master_int(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rnum(7000))); }
static redisReply *m_master_short(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(1, rstr("h")))); }
static redisReply *m_master_empty(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(0))); }
static redisReply *m_host_null(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, NULL, rnum(1)))); }
static redisReply *m_host_int(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, rnum(7), rnum(1)))); }
static redisReply *m_host_err(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, rerr("ERR"), rnum(1)))); }
static redisReply *m_port_str(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, rstr("h"), rstr("7000")))); }
static redisReply *m_port_null(void) { return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, rstr("h"), NULL))); }
static redisReply *m_port_zero(void) { return rarr(1, rarr(3, rnum(0), rnum(9), node("h", 0))); }
static redisReply *m_port_high(void) { return rarr(1, rarr(3, rnum(0), rnum(9), node("h", 65536))); }
static redisReply *m_port_neg(void) { return rarr(1, rarr(3, rnum(0), rnum(9), node("h", -1))); }
static redisReply *m_host_blank(void) { return rarr(1, rarr(3, rnum(0), rnum(9), node("a b", 1))); }

static redisReply *m_host_long(void) {
    char h[257];
    memset(h, 'h', 256);
    h[256] = '\0';
    return rarr(1, rarr(3, rnum(0), rnum(9), node(h, 1)));
}

/* The first entry is good, the last bad: nothing of the first may stay. */
static redisReply *m_good_then_bad(void) {
    return rarr(2, rarr(3, rnum(0), rnum(16383), node("10.9.9.9", 1)),
                rarr(3, rnum(0), rnum(16384), node("h", 1)));
}

/* Arrays that say they have elements but hold no vector. */
static redisReply *m_no_vector(void) {
    redisReply *r = mk(REDIS_REPLY_ARRAY);
    r->elements = 3;
    return r;
}

static redisReply *m_entry_no_vector(void) {
    redisReply *e = mk(REDIS_REPLY_ARRAY);
    e->elements = 3;
    return rarr(1, e);
}

static redisReply *m_master_no_vector(void) {
    redisReply *n = mk(REDIS_REPLY_ARRAY);
    n->elements = 3;
    return rarr(1, rarr(3, rnum(0), rnum(9), n));
}

static redisReply *m_str_no_text(void) {
    redisReply *h = mk(REDIS_REPLY_STRING); /* str NULL */
    h->len = 5;
    return rarr(1, rarr(3, rnum(0), rnum(9), rarr(2, h, rnum(1))));
}

static redisReply *m_err_no_text(void) { return mk(REDIS_REPLY_ERROR); }

/* One more master than the table holds, each with its own slot. */
static redisReply *m_too_many(void) {
    redisReply *r = rvec(CLUSTER_MAX_NODES + 1);
    for (int i = 0; i <= CLUSTER_MAX_NODES; i++)
        r->element[i] = rarr(3, rnum(i), rnum(i), node("127.0.0.1", 10000 + i));
    return r;
}

static void test_map_malformed(void **state) {
    (void)state;
    static const reply_maker bad[] = {
        m_err,          m_nil,           m_int,           m_str,          m_null_entry,
        m_int_entry,    m_nil_entry,     m_short_entry,   m_empty_entry,  m_null_master,
        m_null_start,   m_null_end,      m_str_start,     m_str_end,      m_start_gt_end,
        m_end_high,     m_start_neg,     m_huge,          m_master_str,   m_master_int,
        m_master_short, m_master_empty,  m_host_null,     m_host_int,     m_host_err,
        m_port_str,     m_port_null,     m_port_zero,     m_port_high,    m_port_neg,
        m_host_blank,   m_host_long,     m_good_then_bad, m_no_vector,    m_entry_no_vector,
        m_master_no_vector, m_str_no_text, m_err_no_text, m_too_many,
    };
    cluster_map *m = new_map(), *before = new_map();
    redisReply *good = three_masters();
    assert_int_equal(cluster_map_parse_slots(m, good, "127.0.0.1", NULL, 0), 0);
    rfree(good);
    memcpy(before, m, sizeof *m);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        redisReply *r = bad[i]();
        char err[256] = "";
        if (cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err) != -1)
            fail_msg("bad reply %zu was accepted", i);
        if (strncmp(err, "CLUSTER SLOTS: ", 15) != 0) fail_msg("bad reply %zu: error '%s'", i, err);
        if (memcmp(m, before, sizeof *m) != 0) fail_msg("bad reply %zu changed the map", i);
        rfree(r);
    }
    char err[256];
    assert_int_equal(cluster_map_parse_slots(m, NULL, "127.0.0.1", err, sizeof err), -1);
    assert_int_equal(memcmp(m, before, sizeof *m), 0);
    redisReply *r = m_err();
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), -1);
    assert_string_equal(err, "CLUSTER SLOTS: ERR This instance has cluster support disabled");
    rfree(r);
    r = m_end_high();
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), -1);
    assert_string_equal(err, "CLUSTER SLOTS: entry 0: slot range out of bounds");
    rfree(r);
    free(before);
    free(m);
}

static void test_map_node_table_limit(void **state) {
    (void)state;
    cluster_map *m = new_map();
    /* Exactly as many masters as the table holds is fine. */
    redisReply *r = rvec(CLUSTER_MAX_NODES);
    for (int i = 0; i < CLUSTER_MAX_NODES; i++)
        r->element[i] = rarr(3, rnum(i * 2), rnum(i * 2 + 1), node("127.0.0.1", 10000 + i));
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", NULL, 0), 0);
    assert_int_equal(m->nnodes, CLUSTER_MAX_NODES);
    expect_owner(m, 0, "127.0.0.1", 10000);
    expect_owner(m, 255, "127.0.0.1", 10000 + CLUSTER_MAX_NODES - 1);
    rfree(r);
    r = m_too_many();
    char err[256];
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", err, sizeof err), -1);
    assert_non_null(strstr(err, "more masters"));
    rfree(r);
    free(m);
}

static void test_map_move(void **state) {
    (void)state;
    cluster_map *m = new_map();
    redisReply *r = three_masters();
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", NULL, 0), 0);
    rfree(r);
    /* To a known master: no new node. */
    redis_addr to = {"127.0.0.1", 7001};
    assert_int_equal(cluster_map_move(m, 100, &to), 0);
    assert_int_equal(m->nnodes, 3);
    expect_owner(m, 100, "127.0.0.1", 7001);
    expect_owner(m, 99, "127.0.0.1", 7000);
    expect_owner(m, 101, "127.0.0.1", 7000);
    /* To a new one (same host, other port). */
    redis_addr fresh = {"127.0.0.1", 7010};
    assert_int_equal(cluster_map_move(m, 200, &fresh), 0);
    assert_int_equal(m->nnodes, 4);
    expect_owner(m, 200, "127.0.0.1", 7010);
    assert_int_equal(cluster_map_move(m, -1, &fresh), -1);
    assert_int_equal(cluster_map_move(m, CLUSTER_SLOTS, &fresh), -1);
    free(m);

    /* Into an empty map until the table is full. */
    m = new_map();
    for (int i = 0; i < CLUSTER_MAX_NODES; i++) {
        redis_addr a = {"10.0.0.1", 1000 + i};
        assert_int_equal(cluster_map_move(m, i, &a), 0);
    }
    redis_addr one_more = {"10.0.0.1", 5000}, known = {"10.0.0.1", 1005};
    assert_int_equal(cluster_map_move(m, 500, &one_more), -1);
    redis_addr a;
    assert_int_equal(cluster_map_owner(m, 500, &a), -1);
    assert_int_equal(cluster_map_move(m, 500, &known), 0);
    expect_owner(m, 500, "10.0.0.1", 1005);
    free(m);
}

static void test_map_complete(void **state) {
    (void)state;
    cluster_map *m = new_map();
    assert_false(cluster_map_complete(m));
    redisReply *r = rarr(2, rarr(3, rnum(0), rnum(8000), node("h", 1)),
                         rarr(3, rnum(8002), rnum(16383), node("h", 2)));
    assert_int_equal(cluster_map_parse_slots(m, r, "127.0.0.1", NULL, 0), 0);
    rfree(r);
    assert_false(cluster_map_complete(m)); /* slot 8001 is nobody's */
    redis_addr a;
    assert_int_equal(cluster_map_owner(m, 8001, &a), -1);
    redis_addr to = {"h", 3};
    assert_int_equal(cluster_map_move(m, 8001, &to), 0);
    assert_true(cluster_map_complete(m));
    free(m);
}

/* ---- Sentinel and ROLE ---------------------------------------------------- */

static void test_sentinel(void **state) {
    (void)state;
    redis_addr a = {"untouched", 1};
    redisReply *r = rarr(2, rstr("127.0.0.1"), rstr("6380"));
    assert_int_equal(sentinel_parse_master(r, &a), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6380);
    rfree(r);
    r = rarr(2, rstr("::1"), rstr("65535"));
    assert_int_equal(sentinel_parse_master(r, &a), 0);
    assert_string_equal(a.host, "::1");
    assert_int_equal(a.port, 65535);
    rfree(r);

    redisReply *bad[] = {
        rnil(),
        rerr("ERR unknown command"),
        rnum(6380),
        rstr("127.0.0.1:6380"),
        rarr(0),
        rarr(1, rstr("127.0.0.1")),
        rarr(3, rstr("127.0.0.1"), rstr("6380"), rstr("x")),
        rarr(2, NULL, rstr("6380")),
        rarr(2, rstr("127.0.0.1"), NULL),
        rarr(2, rstr("127.0.0.1"), rnum(6380)),
        rarr(2, rnum(1), rstr("6380")),
        rarr(2, rnil(), rnil()),
        rarr(2, rstr(""), rstr("6380")),
        rarr(2, rstr("127.0.0.1"), rstr("0")),
        rarr(2, rstr("127.0.0.1"), rstr("70000")),
        rarr(2, rstr("127.0.0.1"), rstr("63x")),
        rarr(2, rstr("127.0.0.1"), rstr("")),
        rarr(2, rstr("a b"), rstr("6380")),
        m_no_vector(),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        a = (redis_addr){"untouched", 1};
        if (sentinel_parse_master(bad[i], &a) != -1) fail_msg("bad reply %zu was accepted", i);
        assert_string_equal(a.host, "untouched");
        rfree(bad[i]);
    }
    assert_int_equal(sentinel_parse_master(NULL, &a), -1);
}

static void test_role(void **state) {
    (void)state;
    redisReply *master = rarr(3, rstr("master"), rnum(3129659),
                              rarr(1, rarr(3, rstr("127.0.0.1"), rstr("9001"), rstr("3129242"))));
    assert_int_equal(redis_role_is_master(master), 1);
    rfree(master);
    redisReply *no_replicas = rarr(3, rstr("master"), rnum(0), rarr(0));
    assert_int_equal(redis_role_is_master(no_replicas), 1);
    rfree(no_replicas);

    redisReply *not_master[] = {
        rarr(5, rstr("slave"), rstr("127.0.0.1"), rnum(9999), rstr("connected"), rnum(3167038)),
        rarr(2, rstr("sentinel"), rarr(1, rstr("mymaster"))),
        rerr("NOPERM this user has no permissions to run the 'role' command"),
        rstr("master"),
        rtext(REDIS_REPLY_STATUS, "master"),
        rnil(),
        rarr(0),
        rarr(1, NULL),
        rarr(1, rnum(1)),
        rarr(1, rstr("MASTER")),
        rarr(1, rstr("masters")),
        rarr(1, rstr("maste")),
        m_no_vector(),
    };
    for (size_t i = 0; i < sizeof not_master / sizeof not_master[0]; i++) {
        if (redis_role_is_master(not_master[i]) != 0) fail_msg("reply %zu taken for a master", i);
        rfree(not_master[i]);
    }
    assert_int_equal(redis_role_is_master(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16),
        cmocka_unit_test(test_keyslot),
        cmocka_unit_test(test_shard_tags),
        cmocka_unit_test(test_shard_tag_bounds),
        cmocka_unit_test(test_shard_tags_spread_over_masters),
        cmocka_unit_test(test_room_shard),
        cmocka_unit_test(test_redirect),
        cmocka_unit_test(test_redirect_bad),
        cmocka_unit_test(test_addr_list),
        cmocka_unit_test(test_addr_list_bad),
        cmocka_unit_test(test_map_three_masters),
        cmocka_unit_test(test_map_unknown_host),
        cmocka_unit_test(test_map_malformed),
        cmocka_unit_test(test_map_node_table_limit),
        cmocka_unit_test(test_map_move),
        cmocka_unit_test(test_map_complete),
        cmocka_unit_test(test_sentinel),
        cmocka_unit_test(test_role),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
