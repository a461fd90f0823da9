/* Unit tests for proxy.c: trusted_proxies lists, X-Forwarded-For and PROXY
 * protocol v1 and v2 headers, fed from hand-built bytes. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "proxy.h"

static void ip_of(const char *s, uint8_t ip[16]) {
    assert_int_equal(proxy_parse_ip(s, strlen(s), ip), 0);
}

static void expect_ip(const uint8_t ip[16], const char *want) {
    char buf[64];
    proxy_format_ip(ip, buf, sizeof buf);
    assert_string_equal(buf, want);
}

/* ---- trusted_proxies ------------------------------------------------------ */

static void test_nets(void **state) {
    (void)state;
    proxy_net n[PROXY_NETS_MAX];
    const char *why = NULL;
    assert_int_equal(proxy_parse_nets("", n, PROXY_NETS_MAX, &why), 0);
    assert_int_equal(proxy_parse_nets(" , ", n, PROXY_NETS_MAX, &why), 0);
    assert_int_equal(proxy_parse_nets("10.0.0.0/8, 192.0.2.7 ::1 2001:db8::/32", n, PROXY_NETS_MAX, &why), 4);
    uint8_t ip[16];
    ip_of("10.200.3.4", ip);
    assert_true(proxy_trusted(n, 4, ip));
    ip_of("11.0.0.1", ip);
    assert_false(proxy_trusted(n, 4, ip));
    ip_of("192.0.2.7", ip);
    assert_true(proxy_trusted(n, 4, ip));
    ip_of("192.0.2.8", ip);
    assert_false(proxy_trusted(n, 4, ip));
    ip_of("::1", ip);
    assert_true(proxy_trusted(n, 4, ip));
    ip_of("2001:db8:ffff::9", ip);
    assert_true(proxy_trusted(n, 4, ip));
    ip_of("2001:db9::9", ip);
    assert_false(proxy_trusted(n, 4, ip));
    /* An IPv4 /n never matches IPv6 addresses outside ::ffff:0:0/96. */
    assert_int_equal(proxy_parse_nets("0.0.0.0/0", n, PROXY_NETS_MAX, &why), 1);
    ip_of("::2", ip);
    assert_false(proxy_trusted(n, 1, ip));
    ip_of("203.0.113.9", ip);
    assert_true(proxy_trusted(n, 1, ip));
    /* Host bits are cleared; odd prefix lengths compare bit by bit. */
    assert_int_equal(proxy_parse_nets("10.1.2.3/15", n, PROXY_NETS_MAX, &why), 1);
    ip_of("10.1.255.255", ip);
    assert_true(proxy_trusted(n, 1, ip));
    ip_of("10.2.0.0", ip);
    assert_false(proxy_trusted(n, 1, ip));
    ip_of("10.0.0.0", ip);
    assert_true(proxy_trusted(n, 1, ip));
}

static void test_nets_bad(void **state) {
    (void)state;
    proxy_net n[2];
    static const char *const bad[] = {"localhost", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x",
                                      "10.0.0/8", "1.2.3.4/0008", "1.2.3.4.5"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *why = NULL;
        if (proxy_parse_nets(bad[i], n, 2, &why) != -1) fail_msg("'%s' was accepted", bad[i]);
        assert_non_null(why);
    }
    const char *why = NULL;
    assert_int_equal(proxy_parse_nets("1.1.1.1 2.2.2.2 3.3.3.3", n, 2, &why), -1);
    assert_string_equal(why, "too many entries");
}

/* ---- X-Forwarded-For ------------------------------------------------------ */

static int xff(const char *v, const char *trusted, char *out) {
    proxy_net n[PROXY_NETS_MAX];
    const char *why;
    int nn = proxy_parse_nets(trusted, n, PROXY_NETS_MAX, &why);
    assert_true(nn >= 0);
    uint8_t ip[16];
    memset(ip, 0xaa, sizeof ip);
    /* An allocation of exactly the value's length: no NUL to lean on. */
    char *copy = malloc(strlen(v) + 1);
    memcpy(copy, v, strlen(v));
    int r = proxy_xff(copy, strlen(v), n, nn, ip);
    free(copy);
    if (r) proxy_format_ip(ip, out, 64);
    return r;
}

static void test_xff(void **state) {
    (void)state;
    char out[64];
    assert_int_equal(xff("203.0.113.9", "127.0.0.1", out), 1);
    assert_string_equal(out, "203.0.113.9");
    /* The right-most address that is not trusted: the left is the client's
     * own claim, worth nothing. */
    assert_int_equal(xff("1.1.1.1, 203.0.113.9", "127.0.0.1", out), 1);
    assert_string_equal(out, "203.0.113.9");
    assert_int_equal(xff("1.1.1.1, 203.0.113.9, 10.0.0.2", "127.0.0.1 10.0.0.0/8", out), 1);
    assert_string_equal(out, "203.0.113.9");
    /* All trusted: the left-most. */
    assert_int_equal(xff("10.0.0.3,10.0.0.2", "10.0.0.0/8", out), 1);
    assert_string_equal(out, "10.0.0.3");
    /* Forms with ports and brackets. */
    assert_int_equal(xff(" [2001:db8::1]:443 ", "10.0.0.0/8", out), 1);
    assert_string_equal(out, "2001:db8::1");
    assert_int_equal(xff("2001:db8::2", "10.0.0.0/8", out), 1);
    assert_string_equal(out, "2001:db8::2");
    assert_int_equal(xff("198.51.100.4:5555", "10.0.0.0/8", out), 1);
    assert_string_equal(out, "198.51.100.4");
    /* Garbage ends the walk: what was found right of it stands. */
    assert_int_equal(xff("1.1.1.1, unknown, 10.0.0.2", "10.0.0.0/8", out), 1);
    assert_string_equal(out, "10.0.0.2");
    assert_int_equal(xff("unknown", "10.0.0.0/8", out), 0);
    assert_int_equal(xff("", "10.0.0.0/8", out), 0);
    assert_int_equal(xff("1.1.1.1,", "10.0.0.0/8", out), 0);
    assert_int_equal(xff("[::1", "10.0.0.0/8", out), 0);
    assert_int_equal(xff("[1.2.3.4]", "10.0.0.0/8", out), 0);
    assert_int_equal(xff("1.2.3.4:", "10.0.0.0/8", out), 0);
}

/* ---- PROXY headers --------------------------------------------------------- */

static int parse(const void *buf, size_t len, proxy_info *pi) {
    uint8_t *copy = malloc(len ? len : 1); /* exact size: ASan sees overreads */
    memcpy(copy, buf, len);
    int r = proxy_parse_header(copy, len, pi);
    free(copy);
    return r;
}

static void test_v1(void **state) {
    (void)state;
    proxy_info pi;
    const char *h = "PROXY TCP4 203.0.113.9 10.0.0.1 51234 5000\r\nGET /";
    size_t hl = strlen("PROXY TCP4 203.0.113.9 10.0.0.1 51234 5000\r\n");
    assert_int_equal(parse(h, strlen(h), &pi), (int)hl);
    assert_false(pi.local);
    expect_ip(pi.ip, "203.0.113.9");
    assert_int_equal(pi.port, 51234);
    /* Every proper prefix wants more; not one byte beyond is needed. */
    for (size_t k = 0; k < hl; k++) assert_int_equal(parse(h, k, &pi), PROXY_MORE);
    assert_int_equal(parse(h, hl, &pi), (int)hl);

    h = "PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n";
    assert_int_equal(parse(h, strlen(h), &pi), (int)strlen(h));
    expect_ip(pi.ip, "2001:db8::1");
    assert_int_equal(pi.port, 1);

    h = "PROXY UNKNOWN\r\n";
    assert_int_equal(parse(h, strlen(h), &pi), (int)strlen(h));
    assert_true(pi.local);
    h = "PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
    assert_int_equal(parse(h, strlen(h), &pi), (int)strlen(h));
    assert_true(pi.local);
}

static void test_v1_bad(void **state) {
    (void)state;
    proxy_info pi;
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "PROXY\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 51234\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 51234 5000 7\r\n",
        "PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
        "PROXY TCP6 203.0.113.9 10.0.0.1 1 2\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 65536 2\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 -1 2\r\n",
        "PROXY TCP4  203.0.113.9 10.0.0.1 1 2\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 1 2 \r\n",
        "PROXY TCP5 203.0.113.9 10.0.0.1 1 2\r\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 1 2\n",
        "PROXY TCP4 203.0.113.9 10.0.0.1 1 2\rX",
        "PROXY TCP4 203.0.113.9\t10.0.0.1 1 2\r\n",
        "proxy TCP4 203.0.113.9 10.0.0.1 1 2\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (parse(bad[i], strlen(bad[i]), &pi) != PROXY_BAD) fail_msg("accepted: %s", bad[i]);
    /* No CRLF within 107 bytes. */
    char longl[200];
    memset(longl, 'A', sizeof longl);
    memcpy(longl, "PROXY UNKNOWN ", 14);
    assert_int_equal(parse(longl, 106, &pi), PROXY_MORE);
    assert_int_equal(parse(longl, 107, &pi), PROXY_BAD);
    /* The first byte already tells. */
    assert_int_equal(parse("G", 1, &pi), PROXY_BAD);
    assert_int_equal(parse("\x16", 1, &pi), PROXY_BAD);
    assert_int_equal(parse("", 0, &pi), PROXY_MORE);
}

static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static size_t v2(uint8_t *out, uint8_t vercmd, uint8_t fam, const uint8_t *body, uint16_t len) {
    memcpy(out, sig, 12);
    out[12] = vercmd;
    out[13] = fam;
    out[14] = (uint8_t)(len >> 8);
    out[15] = (uint8_t)len;
    if (len) memcpy(out + 16, body, len); /* body may be NULL then */
    return 16u + len;
}

static void test_v2(void **state) {
    (void)state;
    proxy_info pi;
    uint8_t b[700];
    uint8_t body4[12] = {203, 0, 113, 9, 10, 0, 0, 1, 0xc8, 0x22, 0x13, 0x88};
    size_t n = v2(b, 0x21, 0x11, body4, sizeof body4);
    b[n] = 0x16; /* the TLS record behind it is not ours */
    assert_int_equal(parse(b, n + 1, &pi), (int)n);
    assert_false(pi.local);
    expect_ip(pi.ip, "203.0.113.9");
    assert_int_equal(pi.port, 0xc822);
    for (size_t k = 0; k < n; k++) assert_int_equal(parse(b, k, &pi), PROXY_MORE);

    /* TLVs after the addresses are skipped. */
    uint8_t body6[36 + 7] = {0x20, 0x01, 0x0d, 0xb8, [15] = 1, [16] = 0x20, [17] = 1, [32] = 0x01,
                             [33] = 0xbb, [34] = 0x13, [35] = 0x88, [36] = 0x04, [37] = 0, [38] = 4};
    n = v2(b, 0x21, 0x21, body6, sizeof body6);
    assert_int_equal(parse(b, n, &pi), (int)n);
    expect_ip(pi.ip, "2001:db8::1");
    assert_int_equal(pi.port, 443);

    /* LOCAL: a health check from the proxy itself. */
    n = v2(b, 0x20, 0x00, NULL, 0);
    assert_int_equal(parse(b, n, &pi), 16);
    assert_true(pi.local);
    /* A family we do not speak (unix): the connection's own address. */
    uint8_t unixb[216] = {0};
    n = v2(b, 0x21, 0x31, unixb, sizeof unixb);
    assert_int_equal(parse(b, n, &pi), (int)n);
    assert_true(pi.local);
}

static void test_v2_bad(void **state) {
    (void)state;
    proxy_info pi;
    uint8_t b[700];
    uint8_t body4[12] = {203, 0, 113, 9, 10, 0, 0, 1, 0xc8, 0x22, 0x13, 0x88};
    size_t n = v2(b, 0x11, 0x11, body4, sizeof body4); /* version 1 */
    assert_int_equal(parse(b, n, &pi), PROXY_BAD);
    n = v2(b, 0x22, 0x11, body4, sizeof body4); /* command 2 */
    assert_int_equal(parse(b, n, &pi), PROXY_BAD);
    n = v2(b, 0x21, 0x11, body4, 11); /* too short for TCP4 */
    assert_int_equal(parse(b, n, &pi), PROXY_BAD);
    n = v2(b, 0x21, 0x21, body4, 12); /* too short for TCP6 */
    assert_int_equal(parse(b, n, &pi), PROXY_BAD);
    uint8_t big[600] = {0};
    n = v2(b, 0x21, 0x11, big, (uint16_t)(PROXY_HEADER_MAX - 16 + 1));
    assert_int_equal(parse(b, 16, &pi), PROXY_BAD); /* known from the length alone */
    n = v2(b, 0x21, 0x11, big, (uint16_t)(PROXY_HEADER_MAX - 16));
    assert_int_equal(parse(b, n, &pi), (int)n);
    /* A wrong signature byte anywhere. */
    for (int i = 0; i < 12; i++) {
        n = v2(b, 0x21, 0x11, body4, sizeof body4);
        b[i] ^= 0x40;
        if (parse(b, n, &pi) != PROXY_BAD) fail_msg("signature byte %d changed, still accepted", i);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nets), cmocka_unit_test(test_nets_bad), cmocka_unit_test(test_xff),
        cmocka_unit_test(test_v1),   cmocka_unit_test(test_v1_bad),   cmocka_unit_test(test_v2),
        cmocka_unit_test(test_v2_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
