/* redis_link — what every Redis connection of the broker shares: the URL,
 * the resolved address, liveness settings, backoff, and the lasting problem
 * an operator must fix (see redis.h). */
#include "redis.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes n bytes of percent-encoded src (RFC 3986 userinfo) into dst.
 * Returns 0, or -1 for a '%' without two hex digits or a result too long. */
static int pct_decode(char *dst, size_t cap, const char *src, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = hi * 16 + lo;
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        dst[o++] = (char)c;
    }
    dst[o] = '\0';
    return 0;
}

int redis_link_init(redis_link *l, const char *url, int timeout_ms, char *err, size_t errlen) {
    memset(l, 0, sizeof(*l));
    l->port = 6379;
    l->timeout_ms = timeout_ms;
    pthread_mutex_init(&l->lock, NULL);
    const char *p = url, *at = NULL;
    if (strncmp(p, "redis://", 8) != 0) goto bad;
    p += 8;
    at = strrchr(p, '@'); /* the password may hold '@' */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        /* '@', ':' and '/' in a user or password are written %40, %3A, %2F */
        if (colon) {
            if (pct_decode(l->user, sizeof(l->user), p, (size_t)(colon - p)) < 0 ||
                pct_decode(l->pass, sizeof(l->pass), colon + 1, (size_t)(at - colon - 1)) < 0)
                goto bad;
        } else if (pct_decode(l->pass, sizeof(l->pass), p, (size_t)(at - p)) < 0) {
            goto bad;
        }
        p = at + 1;
    }
    const char *end;
    if (*p == '[') { /* [IPv6]:port */
        end = strchr(p, ']');
        if (end == NULL || end == p + 1 || (size_t)(end - p - 1) >= sizeof(l->host)) goto bad;
        snprintf(l->host, sizeof(l->host), "%.*s", (int)(end - p - 1), p + 1);
        end++;
    } else {
        end = p + strcspn(p, ":/");
        if (end == p || (size_t)(end - p) >= sizeof(l->host)) goto bad;
        snprintf(l->host, sizeof(l->host), "%.*s", (int)(end - p), p);
    }
    if (*end == ':') {
        char *e;
        long port = strtol(end + 1, &e, 10);
        if (e == end + 1 || port < 1 || port > 65535) goto bad;
        l->port = (int)port;
        end = e;
    }
    if (*end == '/' && end[1]) {
        char *e;
        long db = strtol(end + 1, &e, 10);
        if (*e || db < 0 || db > 1000000) goto bad;
        l->db = (int)db;
    } else if (*end && !(*end == '/' && !end[1])) {
        goto bad;
    }
    /* A numeric host needs no resolver: the workers may connect at once. */
    struct in6_addr a6;
    if (inet_pton(AF_INET, l->host, &a6) == 1 || inet_pton(AF_INET6, l->host, &a6) == 1)
        snprintf(l->ip, sizeof(l->ip), "%.63s", l->host);
    return 0;
bad:
    /* Never repeated: a malformed URL may hold a password where the
     * grammar cannot tell (a missing '@'). */
    memset(l->pass, 0, sizeof(l->pass));
    snprintf(err, errlen,
             "bad redis_url (expected redis://[[user]:password@]host[:port][/db]; "
             "the URL is not repeated here)");
    return -1;
}

void redis_link_destroy(redis_link *l) { pthread_mutex_destroy(&l->lock); }

int redis_link_resolve(redis_link *l, char *err, size_t errlen) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(l->host, NULL, &hints, &res);
    if (rc != 0 || res == NULL) {
        snprintf(err, errlen, "cannot resolve %s: %s", l->host,
                 rc ? gai_strerror(rc) : "no address");
        return -1;
    }
    char ip[64];
    const void *addr = res->ai_family == AF_INET6
                           ? (const void *)&((struct sockaddr_in6 *)res->ai_addr)->sin6_addr
                           : (const void *)&((struct sockaddr_in *)res->ai_addr)->sin_addr;
    inet_ntop(res->ai_family, addr, ip, sizeof(ip));
    freeaddrinfo(res);
    pthread_mutex_lock(&l->lock);
    snprintf(l->ip, sizeof(l->ip), "%s", ip);
    pthread_mutex_unlock(&l->lock);
    return 0;
}

int redis_link_ip(redis_link *l, char *ip, size_t iplen) {
    pthread_mutex_lock(&l->lock);
    snprintf(ip, iplen, "%s", l->ip);
    pthread_mutex_unlock(&l->lock);
    return ip[0] ? 0 : -1;
}

void redis_link_tune(const redis_link *l, int fd) {
    int one = 1, idle = l->timeout_ms / 1000 > 0 ? l->timeout_ms / 1000 : 1;
    int intvl = idle / 3 > 0 ? idle / 3 : 1, cnt = 3;
    unsigned int user_timeout = (unsigned int)l->timeout_ms;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    /* Unacknowledged data older than this fails the socket: a black hole is
     * noticed even while we are writing into it. */
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}

int redis_link_set_problem(redis_link *l, int side, const char *text) {
    /* relaxed: a hint that spares the lock when there is nothing to clear */
    if (text == NULL && !atomic_load_explicit(&l->has_problem[side], memory_order_relaxed))
        return 0;
    pthread_mutex_lock(&l->lock);
    int changed = strcmp(l->problem[side], text ? text : "") != 0;
    snprintf(l->problem[side], sizeof(l->problem[side]), "%s", text ? text : "");
    l->problem_ms[side] = clock_ms();
    atomic_store_explicit(&l->has_problem[side], text != NULL, memory_order_relaxed);
    pthread_mutex_unlock(&l->lock);
    return changed;
}

void redis_link_problem(redis_link *l, char *out, size_t outlen) {
    int64_t now = clock_ms();
    out[0] = '\0';
    /* relaxed: asked for every upgrade; no problem, no lock */
    if (!atomic_load_explicit(&l->has_problem[REDIS_PROBLEM_READ], memory_order_relaxed) &&
        !atomic_load_explicit(&l->has_problem[REDIS_PROBLEM_WRITE], memory_order_relaxed))
        return;
    pthread_mutex_lock(&l->lock);
    for (int side = 0; side < 2 && out[0] == '\0'; side++)
        if (l->problem[side][0] && now - l->problem_ms[side] < REDIS_PROBLEM_TTL_MS)
            snprintf(out, outlen, "%s", l->problem[side]);
    pthread_mutex_unlock(&l->lock);
}

int redis_error_lasting(const char *err) {
    static const char *const lasting[] = {"WRONGTYPE", "NOAUTH", "WRONGPASS", "NOPERM"};
    for (size_t i = 0; i < sizeof(lasting) / sizeof(lasting[0]); i++)
        if (strncmp(err, lasting[i], strlen(lasting[i])) == 0) return 1;
    return 0;
}

int redis_backoff(int ms) {
    static _Thread_local unsigned seed;
    if (seed == 0) seed = (unsigned)clock_ms() ^ (unsigned)(uintptr_t)&seed;
    ms = ms * 2 > REDIS_BACKOFF_MAX_MS ? REDIS_BACKOFF_MAX_MS : ms * 2;
    return ms - (int)((unsigned)rand_r(&seed) % (unsigned)(ms / 4 + 1));
}
