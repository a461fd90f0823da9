/* proxy — real client addresses behind trusted proxies, pure.
 *
 * trusted_proxies lists, X-Forwarded-For and the PROXY protocol (v1 text
 * and v2 binary, haproxy's proxy-protocol.txt) are parsed here from bytes;
 * no sockets, no logging. Addresses are 16-byte keys: IPv6, or IPv4 mapped
 * into ::ffff:0:0/96, so one comparison serves both. Any thread.
 */
#ifndef CHATD_PROXY_H
#define CHATD_PROXY_H

#include <stddef.h>
#include <stdint.h>

#define PROXY_NETS_MAX 32   /* entries in trusted_proxies */
#define PROXY_HEADER_MAX 536 /* longest PROXY header accepted (v1 is 107 at
                                most; v2 TLVs beyond this are refused) */

/* One trusted_proxies entry: the first `bits` bits of ip (a 16-byte key;
 * an IPv4 /n is 96 + n bits). */
typedef struct proxy_net {
    uint8_t ip[16];
    uint8_t bits;
} proxy_net;

/* Parses a list of addresses and CIDRs ("10.0.0.0/8 ::1, 192.0.2.7"),
 * separated by blanks or commas, into out (room for max). Returns the
 * count (0 for an empty list), or -1 with *why set to a static reason. */
int proxy_parse_nets(const char *s, proxy_net *out, int max, const char **why);

/* 1 if ip is in one of nets[0..n). */
int proxy_trusted(const proxy_net *nets, int n, const uint8_t ip[16]);

/* Parses a numeric IPv4 or IPv6 address s[0..len) into a key. Returns 0
 * or -1. */
int proxy_parse_ip(const char *s, size_t len, uint8_t ip[16]);

/* The address as text ("192.0.2.7", "2001:db8::1") into out. */
void proxy_format_ip(const uint8_t ip[16], char *out, size_t outlen);

/* The address with its port ("192.0.2.7:5000", "[2001:db8::1]:5000"), or
 * without it when port is 0 (X-Forwarded-For names none). */
void proxy_format_addr(const uint8_t ip[16], uint16_t port, char *out, size_t outlen);

/* The client of an X-Forwarded-For value v[0..len) (comma-separated, the
 * proxy nearest to us appends on the right), reached through peer: the
 * right-most address that is not trusted, walking left only past trusted
 * ones. An entry may be "[v6]", "[v6]:port" or "v4:port". An entry that
 * is not an address ends the walk there. Writes into ip and returns 1 if
 * the value names anyone, 0 if not (ip untouched). */
int proxy_xff(const char *v, size_t len, const proxy_net *nets, int n, uint8_t ip[16]);

/* What a PROXY header said. */
typedef struct proxy_info {
    int local;       /* 1: LOCAL (v2) or UNKNOWN (v1), or a family we do not
                        speak: no address, keep the connection's own */
    uint8_t ip[16];  /* the source, when !local */
    uint16_t port;
} proxy_info;

enum { PROXY_MORE = 0, PROXY_BAD = -1 };

/* Parses the PROXY header at the start of buf[0..len). Returns the bytes it
 * takes (> 0) with out filled; PROXY_MORE when buf holds a valid beginning
 * that is not complete (every byte of buf then belongs to the header); or
 * PROXY_BAD as soon as the bytes cannot be a header. */
int proxy_parse_header(const uint8_t *buf, size_t len, proxy_info *out);

#endif
