/* redis_cluster — key slots, shard tags, the slot map, redirects and the
 * replies of Sentinel and ROLE (see redis_cluster.h). */
#include "redis_cluster.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* The decimal number s[0..len) if it is one and at most max, else -1.
 * Checked digit by digit, so no length of digits overflows. */
static int parse_num(const char *s, size_t len, int max) {
    if (len == 0) return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
        if (v > max) return -1;
    }
    return v;
}

static int parse_port(const char *s, size_t len) {
    int p = parse_num(s, len, 65535);
    return p == 0 ? -1 : p;
}

/* Copies a host into a; -1 if too long or holding a byte that no host name
 * has (a NUL, a blank, a control character). Empty is allowed here. */
static int set_host(redis_addr *a, const char *s, size_t len) {
    if (len >= sizeof a->host) return -1;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f) return -1;
    memcpy(a->host, s, len);
    a->host[len] = '\0';
    return 0;
}

/* ---- slots ------------------------------------------------------------- */

uint16_t cluster_crc16(const void *buf, size_t len) {
    const uint8_t *p = buf;
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

int cluster_keyslot(const char *key, size_t len) {
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        const char *close = memchr(open + 1, '}', len - (size_t)(open - key) - 1);
        /* "{}" is no tag: the whole key is hashed. */
        if (close != NULL && close > open + 1) {
            key = open + 1;
            len = (size_t)(close - key);
        }
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

int cluster_shard_tag(int k, int n, char *out, size_t cap) {
    if (n < 1 || n > SHARDS_MAX || k < 0 || k >= n) return -1;
    int lo = k * CLUSTER_SLOTS / n, hi = (k + 1) * CLUSTER_SLOTS / n;
    /* A range holds at least 256 slots, so a few thousand tries find one;
     * the bound only keeps the loop finite. */
    for (int j = 0; j < 1000000; j++) {
        char tag[32];
        int len = snprintf(tag, sizeof tag, "%d-%d", k, j);
        int slot = cluster_keyslot(tag, (size_t)len);
        if (slot < lo || slot >= hi) continue;
        if ((size_t)len >= cap) return -1;
        memcpy(out, tag, (size_t)len + 1);
        return slot;
    }
    return -1;
}

int cluster_room_shard(const char *room, size_t len, int n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)room[i];
        h *= 16777619u;
    }
    return n < 1 ? 0 : (int)(h % (uint32_t)n);
}

/* ---- addresses --------------------------------------------------------- */

int cluster_redirect_parse(const char *err, int *ask, int *slot, redis_addr *to) {
    if (err == NULL) return -1;
    int is_ask = strncmp(err, "ASK ", 4) == 0;
    if (!is_ask && strncmp(err, "MOVED ", 6) != 0) return -1;
    const char *p = err + (is_ask ? 4 : 6);
    size_t digits = strspn(p, "0123456789");
    if (p[digits] != ' ') return -1;
    int s = parse_num(p, digits, CLUSTER_SLOTS - 1);
    const char *addr = p + digits + 1, *colon = strrchr(addr, ':');
    if (s < 0 || colon == NULL) return -1;
    /* The port runs to the end: junk after it makes it no number. */
    redis_addr a;
    a.port = parse_port(colon + 1, strlen(colon + 1));
    if (a.port < 0 || set_host(&a, addr, (size_t)(colon - addr)) < 0) return -1;
    *ask = is_ask;
    *slot = s;
    *to = a;
    return 0;
}

/* One entry of an address list, s[0..len) (no blank or comma in it), into
 * a. NULL, or why it is not an address. */
static const char *parse_entry(const char *s, size_t len, int default_port, redis_addr *a) {
    const char *host = s, *port = NULL, *end = s + len;
    size_t hlen = len;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL) return "unclosed '['";
        host = s + 1;
        hlen = (size_t)(close - host);
        if (close + 1 < end) {
            if (close[1] != ':') return "expected ':port' after ']'";
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', len);
        if (colon != NULL) {
            if (memchr(colon + 1, ':', (size_t)(end - colon - 1)) != NULL)
                return "an IPv6 address goes in brackets, as [::1]:6379";
            hlen = (size_t)(colon - s);
            port = colon + 1;
        }
    }
    if (hlen == 0) return "empty host";
    a->port = default_port;
    if (port != NULL && (a->port = parse_port(port, (size_t)(end - port))) < 0)
        return "bad port (expected 1..65535)";
    if (hlen >= sizeof a->host) return "host longer than 255 bytes";
    if (set_host(a, host, hlen) < 0) return "control character in host";
    return NULL;
}

int redis_addr_list_parse(const char *s, int default_port, redis_addr *out, int max,
                          char *err, size_t errlen) {
    int n = 0;
    for (const char *p = s;;) {
        p += strspn(p, " \t,");
        if (*p == '\0') break;
        size_t len = strcspn(p, " \t,");
        int shown = len > 80 ? 77 : (int)len; /* a runaway entry is cut */
        const char *more = len > 80 ? "..." : "";
        redis_addr a;
        const char *why = parse_entry(p, len, default_port, &a);
        if (why != NULL) return fail(err, errlen, "bad address '%.*s%s': %s", shown, p, more, why);
        if (n == max)
            return fail(err, errlen, "bad address '%.*s%s': more than %d addresses", shown, p,
                        more, max);
        out[n++] = a;
        p += len;
    }
    if (n == 0) return fail(err, errlen, "bad address '%s': no address in the list", s);
    return n;
}

void redis_addr_format(const redis_addr *a, char *out, size_t outlen) {
    if (strchr(a->host, ':') != NULL) snprintf(out, outlen, "[%s]:%d", a->host, a->port);
    else snprintf(out, outlen, "%s:%d", a->host, a->port);
}

/* ---- the slot map ------------------------------------------------------ */

/* The index of a master in m, added if new; -1 when the table is full. */
static int node_index(cluster_map *m, const redis_addr *a) {
    for (int i = 0; i < m->nnodes; i++)
        if (m->node[i].port == a->port && strcmp(m->node[i].host, a->host) == 0) return i;
    if (m->nnodes == CLUSTER_MAX_NODES) return -1;
    m->node[m->nnodes] = *a;
    return m->nnodes++;
}

static int is_int(const redisReply *r) { return r != NULL && r->type == REDIS_REPLY_INTEGER; }

/* A node of CLUSTER SLOTS, [host, port, id, ...], into a. NULL or why not. */
static const char *node_addr(const redisReply *r, const char *asked, redis_addr *a) {
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element == NULL)
        return "master is not [host, port, ...]";
    const redisReply *h = r->element[0], *p = r->element[1];
    const char *host = "";
    size_t hlen = 0;
    if (h != NULL && h->type == REDIS_REPLY_STRING && h->str != NULL) {
        host = h->str;
        hlen = h->len;
    } else if (h == NULL || h->type != REDIS_REPLY_NIL) {
        return "master's host is not a string";
    }
    if (!is_int(p) || p->integer < 1 || p->integer > 65535) return "bad master port";
    /* "" (before Redis 7), "?" and nil (Redis 7: an unknown endpoint) all
     * mean: the address we asked. */
    if (hlen == 0 || (hlen == 1 && host[0] == '?')) {
        host = asked != NULL ? asked : "";
        hlen = strlen(host);
    }
    if (hlen == 0) return "master with no address";
    if (set_host(a, host, hlen) < 0) return "bad master host";
    a->port = (int)p->integer;
    return NULL;
}

/* One entry of CLUSTER SLOTS, [start, end, master, replica...], into m.
 * NULL or why not. */
static const char *add_range(cluster_map *m, const redisReply *e, const char *asked) {
    if (e == NULL || e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element == NULL)
        return "not [start, end, master, ...]";
    const redisReply *start = e->element[0], *end = e->element[1];
    if (!is_int(start) || !is_int(end)) return "start or end is not an integer";
    if (start->integer < 0 || end->integer >= CLUSTER_SLOTS || start->integer > end->integer)
        return "slot range out of bounds";
    redis_addr a;
    const char *why = node_addr(e->element[2], asked, &a);
    if (why != NULL) return why;
    int i = node_index(m, &a);
    if (i < 0) return "more masters than the table holds (128)";
    memset(m->owner + start->integer, i + 1, (size_t)(end->integer - start->integer + 1));
    return NULL;
}

int cluster_map_parse_slots(cluster_map *m, const redisReply *r, const char *asked, char *err,
                            size_t errlen) {
    if (r == NULL) return fail(err, errlen, "CLUSTER SLOTS: no reply");
    if (r->type == REDIS_REPLY_ERROR)
        return fail(err, errlen, "CLUSTER SLOTS: %s", r->str != NULL ? r->str : "error");
    if (r->type != REDIS_REPLY_ARRAY || (r->elements > 0 && r->element == NULL))
        return fail(err, errlen, "CLUSTER SLOTS: the reply is not an array");
    /* Into a copy, so that a bad reply leaves the map in use as it was; on
     * the heap, as it is too big for a small thread stack. */
    cluster_map *t = calloc(1, sizeof *t);
    if (t == NULL) return fail(err, errlen, "CLUSTER SLOTS: out of memory");
    for (size_t i = 0; i < r->elements; i++) {
        const char *why = add_range(t, r->element[i], asked);
        if (why != NULL) {
            free(t);
            return fail(err, errlen, "CLUSTER SLOTS: entry %zu: %s", i, why);
        }
    }
    memcpy(m, t, sizeof *m);
    free(t);
    return 0;
}

int cluster_map_owner(const cluster_map *m, int slot, redis_addr *out) {
    if (slot < 0 || slot >= CLUSTER_SLOTS || m->owner[slot] == 0) return -1;
    *out = m->node[m->owner[slot] - 1];
    return 0;
}

int cluster_map_move(cluster_map *m, int slot, const redis_addr *to) {
    if (slot < 0 || slot >= CLUSTER_SLOTS) return -1;
    int i = node_index(m, to);
    if (i < 0) return -1;
    m->owner[slot] = (uint8_t)(i + 1);
    return 0;
}

int cluster_map_complete(const cluster_map *m) {
    for (int s = 0; s < CLUSTER_SLOTS; s++)
        if (m->owner[s] == 0) return 0;
    return 1;
}

/* ---- Sentinel and ROLE ------------------------------------------------- */

static int is_str(const redisReply *r) {
    return r != NULL && r->type == REDIS_REPLY_STRING && r->str != NULL;
}

int sentinel_parse_master(const redisReply *r, redis_addr *out) {
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element == NULL)
        return -1;
    const redisReply *h = r->element[0], *p = r->element[1];
    if (!is_str(h) || !is_str(p) || h->len == 0) return -1;
    redis_addr a;
    a.port = parse_port(p->str, p->len);
    if (a.port < 0 || set_host(&a, h->str, h->len) < 0) return -1;
    *out = a;
    return 0;
}

int redis_role_is_master(const redisReply *r) {
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element == NULL)
        return 0;
    const redisReply *role = r->element[0];
    return is_str(role) && role->len == 6 && memcmp(role->str, "master", 6) == 0;
}
