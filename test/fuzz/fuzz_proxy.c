/* libFuzzer target for proxy.h: PROXY headers, X-Forwarded-For values and
 * trusted_proxies lists.
 *
 * Input: byte 0 picks the mode (% 3), the rest is the bytes:
 *   0  a PROXY header and what follows it
 *   1  an X-Forwarded-For value, walked against a fixed trusted list
 *   2  a trusted_proxies list
 *
 * Contracts checked, whatever the input: a header's length is within the
 * input and PROXY_HEADER_MAX, and the same header alone parses to the same
 * length and address; PROXY_MORE means every shorter prefix wants more too
 * and the input is shorter than PROXY_HEADER_MAX; PROXY_BAD stays bad
 * whatever follows. An X-Forwarded-For answer is an address that formats
 * and parses back to itself. A list parses to at most its room, each entry
 * trusting its own address. Every buffer is allocated to its exact size, so
 * ASan sees any overread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"
#include "fuzz.h"

static int parse(const uint8_t *data, size_t len, proxy_info *pi) {
    uint8_t *copy = malloc(len ? len : 1);
    CHECK(copy);
    if (len) memcpy(copy, data, len);
    int r = proxy_parse_header(copy, len, pi);
    free(copy);
    return r;
}

static void fuzz_header(const uint8_t *data, size_t len) {
    proxy_info pi, again;
    int r = parse(data, len, &pi);
    if (r > 0) {
        CHECK((size_t)r <= len && r <= PROXY_HEADER_MAX);
        CHECK(parse(data, (size_t)r, &again) == r);
        CHECK(again.local == pi.local);
        if (!pi.local) {
            CHECK(memcmp(again.ip, pi.ip, 16) == 0 && again.port == pi.port);
            char buf[64];
            proxy_format_addr(pi.ip, pi.port, buf, sizeof buf);
        }
        if (r > 1) CHECK(parse(data, (size_t)r - 1, &again) == PROXY_MORE);
    } else if (r == PROXY_MORE) {
        CHECK(len < PROXY_HEADER_MAX);
        if (len > 0) CHECK(parse(data, len - 1, &again) == PROXY_MORE);
    } else {
        CHECK(r == PROXY_BAD);
        uint8_t *more = malloc(len + 1);
        CHECK(more);
        if (len) memcpy(more, data, len);
        for (int b = 0; b < 256; b += 85) {
            more[len] = (uint8_t)b;
            CHECK(proxy_parse_header(more, len + 1, &again) == PROXY_BAD);
        }
        free(more);
    }
}

static void fuzz_xff(const uint8_t *data, size_t len) {
    proxy_net nets[PROXY_NETS_MAX];
    const char *why;
    int n = proxy_parse_nets("10.0.0.0/8 127.0.0.1 ::1 2001:db8::/32", nets, PROXY_NETS_MAX, &why);
    CHECK(n == 4);
    char *v = malloc(len ? len : 1);
    CHECK(v);
    if (len) memcpy(v, data, len);
    uint8_t ip[16], back[16];
    if (proxy_xff(v, len, nets, n, ip)) {
        char text[64];
        proxy_format_ip(ip, text, sizeof text);
        CHECK(proxy_parse_ip(text, strlen(text), back) == 0);
        CHECK(memcmp(ip, back, 16) == 0);
    }
    free(v);
}

static void fuzz_nets(const uint8_t *data, size_t len) {
    char *s = malloc(len + 1);
    CHECK(s);
    if (len) memcpy(s, data, len);
    s[len] = '\0';
    proxy_net nets[4];
    const char *why = NULL;
    int n = proxy_parse_nets(s, nets, 4, &why);
    CHECK(n >= -1 && n <= 4);
    if (n < 0) CHECK(why != NULL);
    for (int i = 0; i < n; i++) {
        CHECK(nets[i].bits <= 128);
        CHECK(proxy_trusted(&nets[i], 1, nets[i].ip));
    }
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    switch (data[0] % 3) {
    case 0: fuzz_header(data + 1, size - 1); break;
    case 1: fuzz_xff(data + 1, size - 1); break;
    default: fuzz_nets(data + 1, size - 1); break;
    }
    return 0;
}
