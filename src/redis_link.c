/* redis_link — what every Redis connection of the broker shares: the URL,
 * the resolved address, liveness settings, backoff, and the lasting problem
 * an operator must fix (see redis.h). */
#include "redis.h"

#include <hiredis/hiredis.h>

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
        snprintf(l->ip, sizeof(l->ip), "%s", l->host);
    l->ip_port = l->port;
    l->nshards = 1;
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

void redis_link_destroy(redis_link *l) {
    free(l->map);
    pthread_mutex_destroy(&l->lock);
}

int redis_link_route(redis_link *l, int nshards, const char *cluster, const char *sentinel,
                     const char *master_name, char *err, size_t errlen) {
    const char *list = cluster[0] ? cluster : sentinel;
    l->nshards = nshards;
    l->mode = cluster[0] ? REDIS_CLUSTER : sentinel[0] ? REDIS_SENTINEL : REDIS_SINGLE;
    if (l->mode == REDIS_SINGLE) return 0;
    l->nseeds = redis_addr_list_parse(list, l->mode == REDIS_CLUSTER ? 6379 : 26379, l->seed,
                                      REDIS_MAX_SEEDS, err, errlen);
    if (l->nseeds < 0) return -1;
    snprintf(l->master_name, sizeof(l->master_name), "%s", master_name);
    l->ip[0] = '\0'; /* the sentinels name it */
    if (l->mode == REDIS_CLUSTER && l->db) {
        snprintf(err, errlen, "redis_url names database %d: a Redis Cluster has only 0", l->db);
        return -1;
    }
    for (int k = 0; k < nshards; k++) {
        char tag[32];
        l->slot[k] = cluster_shard_tag(k, nshards, tag, sizeof(tag));
    }
    return 0;
}

redisContext *redis_link_dial(redis_link *l, const char *host, int port, int timeout_ms, char *err,
                              size_t errlen) {
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    redisReply *r = NULL;
    if (c == NULL || c->err) {
        snprintf(err, errlen, "cannot reach %s:%d: %s", host, port, c ? c->errstr : "out of memory");
        goto fail;
    }
    redis_link_tune(l, c->fd);
    redisSetTimeout(c, tv);
    if (l->pass[0]) {
        r = l->user[0] ? redisCommand(c, "AUTH %s %s", l->user, l->pass)
                       : redisCommand(c, "AUTH %s", l->pass);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    if (l->db && l->mode != REDIS_CLUSTER) {
        r = redisCommand(c, "SELECT %d", l->db);
        if (r == NULL || r->type == REDIS_REPLY_ERROR) goto fail_reply;
        freeReplyObject(r);
    }
    return c;
fail_reply:
    snprintf(err, errlen, "%s:%d: %s", host, port,
             r ? r->str : c->errstr[0] ? c->errstr : "no answer");
    if (r) freeReplyObject(r);
fail:
    if (c) redisFree(c);
    return NULL;
}

/* How long a sentinel or a cluster node may take to tell the route: the
 * consumer thread waits meanwhile, for every shard, so a hung one (of
 * several) is passed over soon. */
static int probe_ms(const redis_link *l) { return l->timeout_ms < 500 ? l->timeout_ms : 500; }

/* Asks each sentinel in turn which server is the primary, the one that
 * answered last time first. */
static int refresh_sentinel(redis_link *l, char *err, size_t errlen) {
    snprintf(err, errlen, "no sentinel answered");
    for (int j = 0; j < l->nseeds; j++) {
        int i = (l->good + j) % l->nseeds;
        int t = probe_ms(l);
        struct timeval tv = {t / 1000, (t % 1000) * 1000};
        redisContext *c = redisConnectWithTimeout(l->seed[i].host, l->seed[i].port, tv);
        if (c == NULL || c->err) {
            snprintf(err, errlen, "sentinel %s:%d: %s", l->seed[i].host, l->seed[i].port,
                     c ? c->errstr : "out of memory");
            if (c) redisFree(c);
            continue;
        }
        redisSetTimeout(c, tv);
        redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", l->master_name);
        redis_addr a;
        int ok = sentinel_parse_master(r, &a) == 0;
        if (!ok)
            snprintf(err, errlen, "sentinel %s:%d does not know a primary named %s",
                     l->seed[i].host, l->seed[i].port, l->master_name);
        if (r) freeReplyObject(r);
        redisFree(c);
        if (!ok) continue;
        l->good = i;
        pthread_mutex_lock(&l->lock);
        int changed = strcmp(l->ip, a.host) != 0 || l->ip_port != a.port;
        snprintf(l->ip, sizeof(l->ip), "%s", a.host);
        l->ip_port = a.port;
        pthread_mutex_unlock(&l->lock);
        if (changed) atomic_fetch_add_explicit(&l->failovers, 1, memory_order_relaxed);
        return 0;
    }
    return -1;
}

/* Asks the nodes it knows (the masters of the map, then the seeds) for the
 * slot map. */
static int refresh_cluster(redis_link *l, char *err, size_t errlen) {
    cluster_map *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    redis_addr ask[1 + CLUSTER_MAX_NODES + REDIS_MAX_SEEDS];
    int n = 0;
    if (l->good_node.port) ask[n++] = l->good_node; /* it answered last time */
    pthread_mutex_lock(&l->lock);
    for (int i = 0; l->map && i < l->map->nnodes; i++) ask[n++] = l->map->node[i];
    pthread_mutex_unlock(&l->lock);
    for (int i = 0; i < l->nseeds; i++) ask[n++] = l->seed[i];
    snprintf(err, errlen, "no cluster node answered");
    for (int i = 0; i < n; i++) {
        redisContext *c = redis_link_dial(l, ask[i].host, ask[i].port, probe_ms(l), err, errlen);
        if (c == NULL) continue;
        redisReply *r = redisCommand(c, "CLUSTER SLOTS");
        int ok = r && cluster_map_parse_slots(m, r, ask[i].host, err, errlen) == 0;
        if (r && r->type == REDIS_REPLY_ERROR) snprintf(err, errlen, "%s", r->str);
        if (r) freeReplyObject(r);
        redisFree(c);
        /* A node that lost contact may answer with a partial map: ask on. */
        if (!ok || !cluster_map_complete(m)) continue;
        l->good_node = ask[i];
        pthread_mutex_lock(&l->lock);
        int changed = l->map == NULL;
        for (int k = 0; !changed && k < l->nshards; k++) {
            redis_addr a, b;
            changed = cluster_map_owner(l->map, l->slot[k], &a) < 0 ||
                      cluster_map_owner(m, l->slot[k], &b) < 0 || strcmp(a.host, b.host) != 0 ||
                      a.port != b.port;
        }
        cluster_map *old = l->map;
        l->map = m;
        pthread_mutex_unlock(&l->lock);
        if (changed && old) atomic_fetch_add_explicit(&l->failovers, 1, memory_order_relaxed);
        free(old);
        return 0;
    }
    free(m);
    return -1;
}

int redis_link_refresh(redis_link *l, char *err, size_t errlen) {
    atomic_store_explicit(&l->stale, 0, memory_order_relaxed);
    int rc = l->mode == REDIS_SENTINEL  ? refresh_sentinel(l, err, errlen)
             : l->mode == REDIS_CLUSTER ? refresh_cluster(l, err, errlen)
                                        : redis_link_resolve(l, err, errlen);
    if (rc < 0) atomic_store_explicit(&l->stale, 1, memory_order_relaxed);
    return rc;
}

int redis_link_addr(redis_link *l, int shard, char *ip, size_t iplen, int *port) {
    int rc = 0;
    pthread_mutex_lock(&l->lock);
    if (l->mode == REDIS_CLUSTER) {
        redis_addr a;
        rc = l->map ? cluster_map_owner(l->map, l->slot[shard], &a) : -1;
        if (rc == 0) {
            snprintf(ip, iplen, "%s", a.host);
            *port = a.port;
        }
    } else {
        snprintf(ip, iplen, "%s", l->ip);
        *port = l->ip_port;
        rc = ip[0] ? 0 : -1;
    }
    pthread_mutex_unlock(&l->lock);
    return rc;
}

void redis_link_moved(redis_link *l, const redis_addr *to, int slot) {
    atomic_fetch_add_explicit(&l->moves, 1, memory_order_relaxed); /* a counter */
    pthread_mutex_lock(&l->lock);
    if (l->map == NULL || cluster_map_move(l->map, slot, to) < 0)
        atomic_store_explicit(&l->stale, 1, memory_order_relaxed);
    pthread_mutex_unlock(&l->lock);
}

void redis_link_want_refresh(redis_link *l) {
    atomic_store_explicit(&l->stale, 1, memory_order_relaxed); /* a hint: read at the next loop */
}

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
    l->ip_port = l->port;
    pthread_mutex_unlock(&l->lock);
    return 0;
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
