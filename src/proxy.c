/* proxy — trusted proxy lists, X-Forwarded-For and PROXY headers (see
 * proxy.h). */
#include "proxy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

#define V1_MAX 107 /* proxy-protocol.txt 2.1: the longest v1 line, CRLF included */

static void map4(const uint8_t a[4], uint8_t ip[16]) {
    memset(ip, 0, 10);
    ip[10] = ip[11] = 0xff;
    memcpy(ip + 12, a, 4);
}

static int is_v4(const uint8_t ip[16]) {
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(ip, prefix, 12) == 0;
}

/* 4 or 6 for a numeric address of that family, 0 if neither. */
static int parse_ip(const char *s, size_t len, uint8_t ip[16]) {
    char buf[INET6_ADDRSTRLEN];
    uint8_t a[16];
    if (len == 0 || len >= sizeof buf) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, a) == 1) {
        map4(a, ip);
        return 4;
    }
    if (inet_pton(AF_INET6, buf, a) == 1) {
        memcpy(ip, a, 16);
        return 6;
    }
    return 0;
}

int proxy_parse_ip(const char *s, size_t len, uint8_t ip[16]) {
    uint8_t k[16];
    if (parse_ip(s, len, k) == 0) return -1;
    memcpy(ip, k, 16);
    return 0;
}

void proxy_format_ip(const uint8_t ip[16], char *out, size_t outlen) {
    char buf[INET6_ADDRSTRLEN] = "?";
    if (is_v4(ip)) inet_ntop(AF_INET, ip + 12, buf, sizeof buf);
    else inet_ntop(AF_INET6, ip, buf, sizeof buf);
    snprintf(out, outlen, "%s", buf);
}

void proxy_format_addr(const uint8_t ip[16], uint16_t port, char *out, size_t outlen) {
    char host[INET6_ADDRSTRLEN];
    proxy_format_ip(ip, host, sizeof host);
    if (port == 0) snprintf(out, outlen, "%s", host);
    else if (is_v4(ip)) snprintf(out, outlen, "%s:%u", host, port);
    else snprintf(out, outlen, "[%s]:%u", host, port);
}

int proxy_parse_nets(const char *s, proxy_net *out, int max, const char **why) {
    int n = 0;
    const char *p = s;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '\0') break;
        size_t len = strcspn(p, " \t,");
        if (n == max) {
            *why = "too many entries";
            return -1;
        }
        const char *slash = memchr(p, '/', len);
        size_t alen = slash ? (size_t)(slash - p) : len;
        proxy_net net;
        int fam = parse_ip(p, alen, net.ip);
        if (fam == 0) {
            *why = "not a numeric IPv4 or IPv6 address";
            return -1;
        }
        int maxbits = fam == 4 ? 32 : 128, bits = maxbits;
        if (slash) {
            const char *b = slash + 1, *e = p + len;
            if (b == e || e - b > 3) {
                *why = "bad prefix length after '/'";
                return -1;
            }
            bits = 0;
            for (; b < e; b++) {
                if (*b < '0' || *b > '9') {
                    *why = "bad prefix length after '/'";
                    return -1;
                }
                bits = bits * 10 + (*b - '0');
            }
            if (bits > maxbits) {
                *why = "prefix length too long for the address";
                return -1;
            }
        }
        net.bits = (uint8_t)(fam == 4 ? 96 + bits : bits);
        /* Clear host bits, so that 10.1.2.3/8 means 10.0.0.0/8. */
        for (int i = net.bits; i < 128; i++) net.ip[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
        out[n++] = net;
        p += len;
    }
    return n;
}

int proxy_trusted(const proxy_net *nets, int n, const uint8_t ip[16]) {
    for (int k = 0; k < n; k++) {
        int bits = nets[k].bits, full = bits / 8, rest = bits % 8;
        if (memcmp(nets[k].ip, ip, (size_t)full) != 0) continue;
        if (rest && ((nets[k].ip[full] ^ ip[full]) & (uint8_t)(0xff00u >> rest))) continue;
        return 1;
    }
    return 0;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* One X-Forwarded-For entry: an address, "[v6]", "[v6]:port" or
 * "v4:port". */
static int xff_entry(const char *s, size_t len, uint8_t ip[16]) {
    while (len && is_blank(*s)) s++, len--;
    while (len && is_blank(s[len - 1])) len--;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL) return -1;
        size_t after = len - (size_t)(close - s) - 1;
        if (after && (close[1] != ':' || after == 1)) return -1;
        return parse_ip(s + 1, (size_t)(close - s - 1), ip) == 6 ? 0 : -1;
    }
    if (parse_ip(s, len, ip)) return 0;
    const char *colon = memchr(s, ':', len); /* v4:port (an IPv6 address parsed above) */
    if (colon && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) == NULL &&
        colon + 1 < s + len)
        return parse_ip(s, (size_t)(colon - s), ip) == 4 ? 0 : -1;
    return -1;
}

int proxy_xff(const char *v, size_t len, const proxy_net *nets, int n, uint8_t ip[16]) {
    uint8_t cur[16];
    int found = 0;
    size_t end = len;
    for (;;) {
        size_t start = end;
        while (start > 0 && v[start - 1] != ',') start--;
        uint8_t k[16];
        if (xff_entry(v + start, end - start, k) < 0) break;
        memcpy(cur, k, 16);
        found = 1;
        if (!proxy_trusted(nets, n, k) || start == 0) break;
        end = start - 1;
    }
    if (found) memcpy(ip, cur, 16);
    return found;
}

/* ---- PROXY headers ------------------------------------------------------ */

/* A v1 port: 1 to 5 digits, at most 65535. */
static int v1_port(const char *s, size_t len, uint16_t *port) {
    if (len == 0 || len > 5) return -1;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) return -1;
    *port = (uint16_t)v;
    return 0;
}

static int parse_v1(const uint8_t *buf, size_t len, proxy_info *out) {
    size_t end = 0;
    while (end < len && buf[end] != '\r' && buf[end] != '\n') {
        if (buf[end] < 0x20 || buf[end] > 0x7e) return PROXY_BAD;
        end++;
    }
    if (end == len) return len >= V1_MAX ? PROXY_BAD : PROXY_MORE;
    if (buf[end] != '\r' || end + 2 > V1_MAX) return PROXY_BAD;
    if (end + 1 == len) return PROXY_MORE;
    if (buf[end + 1] != '\n') return PROXY_BAD;

    /* "PROXY" SP proto [SP src SP dst SP sport SP dport] CRLF */
    const char *f[6];
    size_t fl[6];
    int nf = 0;
    const char *s = (const char *)buf;
    size_t i = 0;
    while (i < end) {
        if (nf == 6) return PROXY_BAD;
        size_t j = i;
        while (j < end && buf[j] != ' ') j++;
        if (j == i) return PROXY_BAD; /* two spaces in a row, or a trailing one */
        f[nf] = s + i;
        fl[nf++] = j - i;
        i = j < end ? j + 1 : j;
        if (j < end && i == end) return PROXY_BAD;
    }
    memset(out, 0, sizeof *out);
    if (nf >= 2 && fl[1] == 7 && memcmp(f[1], "UNKNOWN", 7) == 0) {
        out->local = 1; /* the rest of the line is to be ignored */
        return (int)(end + 2);
    }
    if (nf != 6 || fl[1] != 4) return PROXY_BAD;
    int fam = memcmp(f[1], "TCP4", 4) == 0 ? 4 : memcmp(f[1], "TCP6", 4) == 0 ? 6 : 0;
    uint8_t dst[16];
    uint16_t dport;
    if (fam == 0 || parse_ip(f[2], fl[2], out->ip) != fam || parse_ip(f[3], fl[3], dst) != fam ||
        v1_port(f[4], fl[4], &out->port) < 0 || v1_port(f[5], fl[5], &dport) < 0)
        return PROXY_BAD;
    return (int)(end + 2);
}

static int parse_v2(const uint8_t *buf, size_t len, proxy_info *out) {
    if (len < 16) return PROXY_MORE;
    uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f, fam = buf[13];
    size_t body = (size_t)buf[14] << 8 | buf[15];
    if (ver != 2 || cmd > 1) return PROXY_BAD;
    if (16 + body > PROXY_HEADER_MAX) return PROXY_BAD;
    size_t need = fam == 0x11 ? 12 : fam == 0x21 ? 36 : 0;
    if (cmd == 1 && body < need) return PROXY_BAD;
    if (len < 16 + body) return PROXY_MORE;
    memset(out, 0, sizeof *out);
    const uint8_t *a = buf + 16;
    if (cmd == 0 || need == 0) {
        out->local = 1; /* LOCAL (a health check), or UDP, unix, unspecified */
    } else if (fam == 0x11) {
        map4(a, out->ip);
        out->port = (uint16_t)(a[8] << 8 | a[9]);
    } else {
        memcpy(out->ip, a, 16);
        out->port = (uint16_t)(a[32] << 8 | a[33]);
    }
    return (int)(16 + body);
}

int proxy_parse_header(const uint8_t *buf, size_t len, proxy_info *out) {
    size_t k = len < 12 ? len : 12;
    if (len > 0 && memcmp(buf, v2_sig, k) == 0) return k < 12 ? PROXY_MORE : parse_v2(buf, len, out);
    k = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", k) != 0) return PROXY_BAD;
    if (len < 6) return PROXY_MORE;
    return parse_v1(buf, len, out);
}
