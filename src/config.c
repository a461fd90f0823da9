/* config — defaults, file parser and environment (see config.h).
 *
 * Every directive is one row of `directives` below. config_defaults and
 * config_set both walk that table: a default is a string that goes through
 * the very setter a file value goes through, so the two can never drift.
 * Only the few types whose values are not a number or a plain string
 * (listen, origins, broker, log_level, redis_url) have setters of their own.
 * The same table drives the dump of `chatd -T` and the warnings of `-t`.
 */
#include "config.h"

#include "log.h"
#include "redis_cluster.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum {
    T_INT,       /* integer; the field is an int or an int64_t */
    T_SIZE,      /* bytes, optionally k/m/g (KiB, MiB, GiB) */
    T_DURATION,  /* milliseconds in an int; plain numbers are seconds */
    T_STRING,    /* min..max bytes into a char array */
    T_LISTEN,    /* ADDRESS:PORT into bind and port */
    T_ORIGINS,   /* list into allowed_origins and n_origins */
    T_BROKER,    /* local | redis */
    T_LOGLEVEL,  /* debug | info | warn | error */
    T_REDIS_URL, /* redis://[[user]:password@]host[:port][/db] */
    T_TLS_LISTEN, /* like T_LISTEN into tls_bind and tls_port; empty = off */
    T_TLS_VERSION, /* 1.2 | 1.3 */
    T_BOOL,      /* on | off into an int */
    T_PATH,      /* a file; config_load makes a relative one absolute from
                    the config file's directory */
    T_PROXIES,   /* addresses and CIDRs into trusted_proxies (proxy.h) */
    T_LOGFORMAT, /* text | json */
    T_PROXYPROTO, /* off | on | ws | wss: which listeners expect a PROXY header */
    T_ADDRS,     /* "host:port, ..." (redis_cluster.h) into a char array */
} ctype;

enum {
    F_POW2 = 1u << 0,      /* T_INT: a power of two */
    F_AUTO = 1u << 1,      /* T_INT: "auto" means 0 */
    F_PRINTABLE = 1u << 2, /* T_STRING: UTF-8 without control characters */
    F_NOSPACE = 1u << 3,   /* T_STRING: printable ASCII or UTF-8, no blanks */
    F_SECRET = 1u << 4,    /* never echoed in errors nor shown by -T */
    F_RELOAD = 1u << 5,    /* SIGHUP applies it: every thread that reads it
                              switches to the next config at a safe point,
                              and nothing made at start depends on it */
};

typedef struct directive {
    const char *name;
    ctype type;
    unsigned flags;
    int64_t min, max; /* value bounds; for strings, length bounds */
    const char *def;  /* parsed by the setter like a value from a file */
    size_t offset, size;
    const char *help;
} directive;

#define FIELD(f) offsetof(config, f), sizeof(((config *)0)->f)
#define KIB 1024LL
#define MIB (1024LL * KIB)
#define GIB (1024LL * MIB)
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)

static const directive directives[] = {
    /* network */
    {"listen", T_LISTEN, 0, 1, 65535, "0.0.0.0:5000", FIELD(bind),
     "address:port of the WebSocket listener ([::]:5000 for IPv6)"},
    {"listen_backlog", T_INT, 0, 0, 1000000, "0", FIELD(listen_backlog),
     "connections the kernel queues while chatd is at max_pending; 0 = somaxconn"},
    {"workers", T_INT, F_AUTO, 0, 256, "auto", FIELD(workers),
     "worker threads; auto = one per core"},
    {"acceptor_threads", T_INT, F_AUTO, 0, 64, "auto", FIELD(acceptor_threads),
     "threads that accept and run the TLS and HTTP handshakes; auto = one per core"},
    {"max_clients", T_INT, F_RELOAD, 0, 10000000, "0", FIELD(max_clients),
     "cap on concurrent WebSocket clients; 0 = as many as open files allow"},
    {"max_header_bytes", T_SIZE, F_RELOAD, 256, 1 * MIB, "8k", FIELD(max_header_bytes),
     "largest HTTP request head (answered with 431)"},
    {"handshake_timeout", T_DURATION, F_RELOAD, 100, HOUR, "10s", FIELD(handshake_timeout_ms),
     "time for the whole HTTP request to arrive"},
    {"allowed_origins", T_ORIGINS, F_RELOAD, 0, CONFIG_MAX_ORIGINS, "", FIELD(allowed_origins),
     "Origin values allowed to connect, space or comma separated; empty = any"},
    {"web", T_BOOL, F_RELOAD, 0, 1, "on", FIELD(web), "on: GET / serves the chat page; off: it does not"},
    {"trusted_proxies", T_PROXIES, 0, 0, PROXY_NETS_MAX, "", FIELD(trusted_proxies),
     "proxies (addresses or CIDRs) whose X-Forwarded-For or PROXY header names the client"},
    {"proxy_protocol", T_PROXYPROTO, 0, 0, 0, "off", FIELD(proxy_protocol),
     "on (both listeners), ws or wss (that one): connections start with a PROXY header"},

    /* TLS */
    {"tls_listen", T_TLS_LISTEN, 0, 0, 65535, "", FIELD(tls_bind),
     "address:port of the wss listener; empty = no TLS"},
    {"tls_cert", T_PATH, F_RELOAD, 0, 255, "", FIELD(tls_cert), "PEM certificate chain file"},
    {"tls_key", T_PATH, F_RELOAD, 0, 255, "", FIELD(tls_key), "PEM private key file"},
    {"tls_ciphers", T_STRING, F_RELOAD, 0, 255, "", FIELD(tls_ciphers),
     "OpenSSL cipher list for TLS 1.2; empty = OpenSSL's default"},
    {"tls_min_version", T_TLS_VERSION, F_RELOAD, 0, 0, "1.2", FIELD(tls_min_version),
     "oldest TLS version offered: 1.2 or 1.3"},

    /* abuse limits and authentication */
    {"max_pending", T_INT, F_RELOAD, 1, 1000000, "4096", FIELD(max_pending),
     "handshakes in progress at once; at the cap the listen queue holds the rest"},
    {"max_clients_per_ip", T_INT, F_RELOAD, 0, 10000000, "0", FIELD(max_clients_per_ip),
     "WebSocket clients from one IP address; 0 = no limit"},
    {"rate_limit", T_INT, F_RELOAD, 0, 1000000, "0", FIELD(rate_limit),
     "messages per second one client may send (closed with 1008); 0 = no limit"},
    {"rate_burst", T_INT, F_RELOAD, 0, 1000000, "0", FIELD(rate_burst),
     "messages one client may send at once; 0 = rate_limit"},
    {"auth_secret", T_STRING, F_SECRET | F_RELOAD, 0, 255, "", FIELD(auth_secret),
     "HS256 secret: when set, clients need ?token=JWT whose sub is the user name"},
    {"auth_secret_previous", T_STRING, F_SECRET | F_RELOAD, 0, 255, "", FIELD(auth_secret_previous),
     "HS256 secret also accepted while tokens move to a new auth_secret"},

    /* protocol */
    {"default_room", T_STRING, F_PRINTABLE | F_RELOAD, 1, 64, "lobby", FIELD(default_room),
     "room of a client that names none"},
    {"max_username", T_INT, F_RELOAD, 1, 256, "32", FIELD(max_username), "longest user name, bytes"},
    {"max_room", T_INT, F_RELOAD, 1, 256, "64", FIELD(max_room), "longest room name, bytes"},
    {"max_message", T_SIZE, F_RELOAD, 1, 64 * MIB, "64k", FIELD(max_message),
     "largest message (closed with 1009)"},
    {"ping_interval", T_DURATION, F_RELOAD, 100, HOUR, "30s", FIELD(ping_interval_ms),
     "ping a connection idle this long"},
    {"ping_timeout", T_DURATION, F_RELOAD, 100, HOUR, "10s", FIELD(ping_timeout_ms),
     "close a connection whose pong does not come within this"},
    {"max_output_buffer", T_SIZE, F_RELOAD, 4 * KIB, 1 * GIB, "1m", FIELD(max_output_buffer),
     "bytes queued for one slow client before it is closed with 1008"},
    {"max_rooms_per_conn", T_INT, F_RELOAD, 1, 10000, "64", FIELD(max_rooms_per_conn),
     "rooms one chatd.v1 connection may be in at once"},
    {"permessage_deflate", T_BOOL, F_RELOAD, 0, 1, "on", FIELD(permessage_deflate),
     "on: accept a client's permessage-deflate offer (RFC 7692); off: decline it"},
    {"compression_min_size", T_SIZE, F_RELOAD, 0, 64 * MIB, "64", FIELD(compression_min_size),
     "messages shorter than this go to deflate clients uncompressed"},

    /* history and presence */
    {"history_size", T_INT, 0, 0, 100000, "100", FIELD(history_size),
     "recent messages per room each node keeps in memory; 0 = none"},
    {"history_bytes", T_SIZE, 0, 0, 64 * GIB, "64m", FIELD(history_bytes),
     "memory for those recent messages, per node; the oldest go first"},
    {"history_max", T_INT, 0, 0, 10000000, "1000", FIELD(history_max),
     "messages per room kept in Redis for scroll-back and recovery; 0 = none"},
    {"history_ttl", T_DURATION, 0, SEC, 365 * DAY, "7d", FIELD(history_ttl_ms),
     "Redis forgets the history of a room quiet this long"},
    {"presence_ttl", T_DURATION, 0, 500, HOUR, "15s", FIELD(presence_ttl_ms),
     "members of a node that stopped answering disappear within this"},
    {"presence_max", T_INT, 0, 0, 100000, "100", FIELD(presence_max),
     "members listed when joining a room; past it only their count"},

    /* broker */
    {"broker", T_BROKER, 0, 0, 0, "local", FIELD(broker),
     "local (one node, in process) or redis (nodes share a Redis stream)"},
    {"redis_url", T_REDIS_URL, 0, 0, 0, "redis://127.0.0.1:6379", FIELD(redis_url),
     "Redis server of the redis broker"},
    {"redis_password", T_STRING, F_SECRET, 0, 255, "", FIELD(redis_password),
     "Redis password, in place of one in redis_url"},
    {"redis_password_file", T_PATH, 0, 0, 255, "", FIELD(redis_password_file),
     "file whose first line is the Redis password"},
    {"redis_cluster", T_ADDRS, 0, 0, 255, "", FIELD(redis_cluster),
     "seed nodes of a Redis Cluster (host:port, ...), in place of redis_url's host"},
    {"redis_sentinel", T_ADDRS, 0, 0, 255, "", FIELD(redis_sentinel),
     "Sentinels (host:port, ...) that name the Redis primary, in place of redis_url's host"},
    {"redis_master_name", T_STRING, F_NOSPACE, 0, 127, "", FIELD(redis_master_name),
     "the primary's name in the Sentinels' configuration"},
    {"redis_wait_replicas", T_INT, 0, 0, 16, "0", FIELD(redis_wait_replicas),
     "replicas that must have a message before it counts as stored (WAIT)"},
    {"shards", T_INT, 0, 1, SHARDS_MAX, "1", FIELD(shards),
     "streams the rooms are spread over (a room's keys share one Cluster slot)"},
    {"stream", T_STRING, F_NOSPACE, 1, 127, "chatd:messages", FIELD(stream),
     "Redis stream key holding the messages"},
    {"stream_maxlen", T_INT, 0, 0, 1000000000000LL, "100000", FIELD(stream_maxlen),
     "approximate entries kept in the stream; 0 = no trimming"},
    {"publish_queue", T_INT, 0, 1, 1000000, "1024", FIELD(publish_queue),
     "messages per worker waiting to be stored"},
    {"redis_timeout", T_DURATION, 0, 100, 10 * MIN, "5s", FIELD(redis_timeout_ms),
     "a Redis command unanswered this long means the connection is dead"},
    {"ring_size", T_INT, F_POW2, 64, 16777216, "65536", FIELD(ring_size),
     "entries in each inter-thread ring, a power of two"},

    /* process */
    {"log_level", T_LOGLEVEL, F_RELOAD, 0, 0, "info", FIELD(log_level), "debug, info, warn or error"},
    {"log_format", T_LOGFORMAT, 0, 0, 0, "text", FIELD(log_format),
     "text, or json: one JSON object per line"},
    {"access_log", T_BOOL, 0, 0, 1, "on", FIELD(access_log),
     "on: a line at info when a connection opens and when it closes"},
    {"shutdown_timeout", T_DURATION, F_RELOAD, 0, 10 * MIN, "5s", FIELD(shutdown_timeout_ms),
     "on shutdown: time to store accepted messages, then for clients to close"},
    {"drain_delay", T_DURATION, F_RELOAD, 0, 10 * MIN, "0", FIELD(drain_delay_ms),
     "on shutdown: fail readiness this long before closing any client"},
    {"drain_time", T_DURATION, F_RELOAD, 0, 10 * MIN, "0", FIELD(drain_time_ms),
     "on shutdown: close clients in batches spread over this; 0 = all at once"},
};

#define N_DIRECTIVES (sizeof directives / sizeof directives[0])
_Static_assert(N_DIRECTIVES <= CONFIG_MAX_DIRECTIVES, "raise CONFIG_MAX_DIRECTIVES");

/* ---- small helpers ---------------------------------------------------- */

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (err == NULL || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const directive *find_directive(const char *name) {
    for (size_t i = 0; i < N_DIRECTIVES; i++)
        if (strcmp(directives[i].name, name) == 0) return &directives[i];
    return NULL;
}

static void *field_ptr(config *cfg, const directive *d) { return (char *)cfg + d->offset; }

static int64_t field_get_int(const config *cfg, const directive *d) {
    const char *p = (const char *)cfg + d->offset;
    if (d->size == sizeof(int64_t)) {
        int64_t v;
        memcpy(&v, p, sizeof v);
        return v;
    }
    int v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void field_set_int(config *cfg, const directive *d, int64_t v) {
    char *p = field_ptr(cfg, d);
    if (d->size == sizeof(int64_t)) {
        memcpy(p, &v, sizeof v);
    } else {
        int i = (int)v; /* bounds in the table keep every int field in range */
        memcpy(p, &i, sizeof i);
    }
}

/* "1m" for 1048576, "1500" for 1500: the largest unit that divides exactly. */
static const char *fmt_size(int64_t v, char *buf, size_t len) {
    static const struct {
        int64_t mul;
        const char *suffix;
    } units[] = {{GIB, "g"}, {MIB, "m"}, {KIB, "k"}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (v != 0 && v % units[i].mul == 0) {
            snprintf(buf, len, "%" PRId64 "%s", v / units[i].mul, units[i].suffix);
            return buf;
        }
    snprintf(buf, len, "%" PRId64, v);
    return buf;
}

static const char *fmt_duration(int64_t ms, char *buf, size_t len) {
    static const struct {
        int64_t mul;
        const char *suffix;
    } units[] = {{DAY, "d"}, {HOUR, "h"}, {MIN, "m"}, {SEC, "s"}};
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (ms != 0 && ms % units[i].mul == 0) {
            snprintf(buf, len, "%" PRId64 "%s", ms / units[i].mul, units[i].suffix);
            return buf;
        }
    snprintf(buf, len, ms == 0 ? "0" : "%" PRId64 "ms", ms);
    return buf;
}

/* What a value of this directive looks like, for "(expected ...)". */
static void describe(const directive *d, char *buf, size_t len) {
    char lo[32], hi[32];
    switch (d->type) {
    case T_INT:
        if (d->flags & F_AUTO)
            snprintf(buf, len, "auto or an integer 1..%" PRId64, d->max);
        else
            snprintf(buf, len, "%s %" PRId64 "..%" PRId64,
                     (d->flags & F_POW2) ? "a power of two" : "an integer", d->min, d->max);
        break;
    case T_SIZE:
        snprintf(buf, len, "a size %s..%s: bytes or a number with k, m or g",
                 fmt_size(d->min, lo, sizeof lo), fmt_size(d->max, hi, sizeof hi));
        break;
    case T_DURATION:
        snprintf(buf, len, "a duration %s..%s: seconds or a number with ms, s, m, h or d",
                 fmt_duration(d->min, lo, sizeof lo), fmt_duration(d->max, hi, sizeof hi));
        break;
    case T_PATH:
        snprintf(buf, len, "a file, relative to the config file's directory, up to %" PRId64
                 " bytes", d->max);
        break;
    case T_ADDRS:
        snprintf(buf, len, "host:port addresses separated by commas or blanks, e.g. "
                           "10.0.0.1:7000, 10.0.0.2:7000");
        break;
    case T_STRING:
        snprintf(buf, len, "%" PRId64 "..%" PRId64 " bytes%s", d->min, d->max,
                 (d->flags & F_NOSPACE)    ? " without spaces or control characters"
                 : (d->flags & F_PRINTABLE) ? " of printable UTF-8"
                                            : "");
        break;
    case T_LISTEN:
        snprintf(buf, len, "ADDRESS:PORT with a numeric address, e.g. 0.0.0.0:5000 or [::]:5000");
        break;
    case T_ORIGINS:
        snprintf(buf, len,
                 "up to %d origins such as https://chat.example.com, separated by spaces "
                 "or commas",
                 CONFIG_MAX_ORIGINS);
        break;
    case T_BROKER:
        snprintf(buf, len, "local or redis");
        break;
    case T_LOGLEVEL:
        snprintf(buf, len, "debug, info, warn or error");
        break;
    case T_REDIS_URL:
        snprintf(buf, len, "redis://[[user]:password@]host[:port][/db]");
        break;
    case T_TLS_LISTEN:
        snprintf(buf, len, "nothing, or ADDRESS:PORT with a numeric address, e.g. 0.0.0.0:5443");
        break;
    case T_TLS_VERSION:
        snprintf(buf, len, "1.2 or 1.3 (nginx's TLSv1.2 or TLSv1.3 too)");
        break;
    case T_BOOL:
        snprintf(buf, len, "on or off");
        break;
    case T_PROXIES:
        snprintf(buf, len, "up to %d addresses or CIDRs such as 10.0.0.0/8 or ::1, separated "
                 "by spaces or commas", PROXY_NETS_MAX);
        break;
    case T_LOGFORMAT:
        snprintf(buf, len, "text or json");
        break;
    case T_PROXYPROTO:
        snprintf(buf, len, "off, on (both listeners), ws or wss (that listener only)");
        break;
    }
}

/* ---- value parsers: each returns NULL or the reason the value is bad --- */

/* Decimal integer with an optional '-', no blanks. *end gets the rest. */
static const char *parse_number(const char *s, int64_t *out, const char **end) {
    bool neg = false;
    const char *p = s;
    if (*p == '-') {
        neg = true;
        p++;
    }
    if (*p < '0' || *p > '9') return "not a number";
    int64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        int digit = *p - '0';
        if (v > (INT64_MAX - digit) / 10) return "out of range";
        v = v * 10 + digit;
    }
    *out = neg ? -v : v;
    *end = p;
    return NULL;
}

static const char *check_range(const directive *d, int64_t v) {
    if (v < d->min || v > d->max) return "out of range";
    return NULL;
}

static const char *parse_int(const directive *d, const char *s, int64_t *out) {
    if ((d->flags & F_AUTO) && strcmp(s, "auto") == 0) {
        *out = 0;
        return NULL;
    }
    const char *end;
    const char *why = parse_number(s, out, &end);
    if (why != NULL) return why;
    if (*end != '\0') return "not an integer";
    if ((why = check_range(d, *out)) != NULL) return why;
    if ((d->flags & F_POW2) && (*out & (*out - 1)) != 0) return "not a power of two";
    return NULL;
}

static const char *scale(const directive *d, int64_t v, int64_t mul, int64_t *out) {
    if (v > INT64_MAX / mul || v < INT64_MIN / mul) return "out of range";
    *out = v * mul;
    return check_range(d, *out);
}

static const char *parse_size(const directive *d, const char *s, int64_t *out) {
    const char *end;
    int64_t v;
    const char *why = parse_number(s, &v, &end);
    if (why != NULL) return why;
    int64_t mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = KIB; end++; break;
    case 'm': case 'M': mul = MIB; end++; break;
    case 'g': case 'G': mul = GIB; end++; break;
    default: break;
    }
    if (*end == 'b' || *end == 'B') end++;
    if (*end != '\0') return "unknown unit";
    return scale(d, v, mul, out);
}

static const char *parse_duration(const directive *d, const char *s, int64_t *out) {
    const char *end;
    int64_t v, frac = 0, den = 1;
    const char *why = parse_number(s, &v, &end);
    if (why != NULL) return why;
    if (*end == '.') { /* 1.5s, 0.25m: a fraction, down to a millisecond */
        if (end[1] < '0' || end[1] > '9') return "not a number";
        for (end++; *end >= '0' && *end <= '9'; end++) {
            if (den >= 1000000000) return "too many decimals";
            frac = frac * 10 + (*end - '0');
            den *= 10;
        }
        if (s[0] == '-') frac = -frac; /* "-0.5": the whole part has no sign */
    }
    int64_t mul;
    if (*end == '\0' || strcmp(end, "s") == 0)
        mul = SEC;
    else if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0)
        mul = MIN;
    else if (strcmp(end, "h") == 0)
        mul = HOUR;
    else if (strcmp(end, "d") == 0)
        mul = DAY;
    else
        return "unknown unit";
    if (frac * mul % den != 0) return "finer than a millisecond";
    if (v > INT64_MAX / mul - 1 || v < INT64_MIN / mul + 1) return "out of range";
    *out = v * mul + frac * mul / den;
    return check_range(d, *out);
}

/* Length of the valid UTF-8 sequence at s (not overlong, no surrogates,
 * at most U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *s) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80) return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
        if (s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80 || (s[3] & 0xc0) != 0x80) return 0;
        return 4;
    }
    return 0;
}

static const char *parse_string(const directive *d, const char *s) {
    size_t len = strlen(s);
    if (len == 0 && d->min > 0) return "empty";
    if ((int64_t)len < d->min) return "too short";
    if ((int64_t)len > d->max) return "too long";
    if (d->flags & (F_PRINTABLE | F_NOSPACE)) {
        const unsigned char *p = (const unsigned char *)s;
        while (*p != '\0') {
            if (*p < 0x20 || *p == 0x7f) return "contains a control character";
            if ((d->flags & F_NOSPACE) && *p == ' ') return "contains a space";
            size_t n = utf8_seq(p);
            if (n == 0) return "not valid UTF-8";
            p += n;
        }
    }
    return NULL;
}

static bool parse_port(const char *s, int *port) {
    if (*s == '\0' || strlen(s) > 5) return false;
    long v = 0;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9') return false;
        v = v * 10 + (*s - '0');
    }
    if (v < 1 || v > 65535) return false;
    *port = (int)v;
    return true;
}

/* Numeric addresses only: the listener binds what is written here, and a
 * host name that resolves to several addresses would be a guess. */
static const char *parse_listen(const char *s, char *bind, size_t bindlen, int *port) {
    char host[64];
    const char *colon;
    unsigned char addr[sizeof(struct in6_addr)];

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (close == NULL) return "missing ']' after the IPv6 address";
        size_t n = (size_t)(close - s - 1);
        if (n == 0) return "missing address";
        if (n >= sizeof host) return "address too long";
        memcpy(host, s + 1, n);
        host[n] = '\0';
        if (close[1] != ':') return "missing ':PORT'";
        colon = close + 1;
        if (inet_pton(AF_INET6, host, addr) != 1) return "not an IPv6 address";
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL) return "missing ':PORT'";
        size_t n = (size_t)(colon - s);
        if (n == 0) return "missing address";
        if (n >= sizeof host) return "address too long";
        memcpy(host, s, n);
        host[n] = '\0';
        if (strchr(host, ':') != NULL) return "an IPv6 address goes in brackets, as in [::1]:5000";
        if (inet_pton(AF_INET, host, addr) != 1) return "not an IPv4 address";
    }
    int p;
    if (!parse_port(colon + 1, &p)) return "port not in 1..65535";
    if (strlen(host) >= bindlen) return "address too long";
    strcpy(bind, host);
    *port = p;
    return NULL;
}

/* An Origin header is "null" or scheme://host[:port], lower case, without a
 * path; reject anything else here, since it could never match. */
static const char *check_origin(const char *o, size_t len) {
    if (len == 4 && memcmp(o, "null", 4) == 0) return NULL;
    const char *sep = NULL;
    for (size_t i = 0; i + 2 < len; i++)
        if (o[i] == ':' && o[i + 1] == '/' && o[i + 2] == '/') {
            sep = o + i;
            break;
        }
    if (sep == NULL || sep == o) return "an origin is scheme://host[:port]";
    const char *host = sep + 3, *endp = o + len;
    if (host == endp) return "an origin needs a host";
    for (const char *p = o; p < endp; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 0x20 || c >= 0x7f) return "an origin is printable ASCII";
        if (p >= host && c == '/') return "an origin has no path, not even a trailing '/'";
    }
    return NULL;
}

static const char *parse_origins(const char *s, char list[][128], int *count) {
    int n = 0;
    const char *p = s;
    for (;;) {
        p += strspn(p, " \t,");
        if (*p == '\0') break;
        size_t len = strcspn(p, " \t,");
        if (n == CONFIG_MAX_ORIGINS) return "too many origins";
        if (len >= 128) return "an origin is longer than 127 bytes";
        const char *why = check_origin(p, len);
        if (why != NULL) return why;
        memcpy(list[n], p, len);
        list[n][len] = '\0';
        n++;
        p += len;
    }
    *count = n;
    return NULL;
}

/* The database a redis URL names (0 when none). */
static long url_db(const char *url) {
    const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : url;
    const char *at = strrchr(p, '@'); /* '/' in a password is written %2F */
    const char *slash = strchr(at ? at + 1 : p, '/');
    return slash ? strtol(slash + 1, NULL, 10) : 0;
}

static const char *parse_redis_url(const char *s, size_t cap) {
    static const char prefix[] = "redis://";
    if (strncmp(s, prefix, sizeof prefix - 1) != 0) return "must start with redis://";
    if (strlen(s) >= cap) return "too long";
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
        if (*p <= 0x20 || *p == 0x7f) return "contains a space or control character";

    const char *rest = s + sizeof prefix - 1;
    const char *at = strrchr(rest, '@');
    const char *hostport = rest;
    if (at != NULL) {
        const char *colon = memchr(rest, ':', (size_t)(at - rest));
        if (colon == NULL) return "credentials are [user]:password@";
        if (colon + 1 == at) return "empty password";
        /* '@', ':' or '/' in a password are written %40, %3A, %2F. */
        for (const char *p = rest; p < at; p++)
            if (*p == '%' && !(isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2])))
                return "'%' in the user or password is not followed by two hex digits";
        hostport = at + 1;
    }
    const char *slash = strchr(hostport, '/');
    const char *hostend = slash != NULL ? slash : hostport + strlen(hostport);
    const char *portstr = NULL;

    if (hostport[0] == '[') {
        const char *close = memchr(hostport, ']', (size_t)(hostend - hostport));
        if (close == NULL) return "missing ']' after the IPv6 address";
        char host[64];
        size_t n = (size_t)(close - hostport - 1);
        if (n == 0 || n >= sizeof host) return "bad IPv6 address";
        memcpy(host, hostport + 1, n);
        host[n] = '\0';
        unsigned char addr[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET6, host, addr) != 1) return "bad IPv6 address";
        if (close + 1 != hostend) {
            if (close[1] != ':') return "text after the IPv6 address";
            portstr = close + 2;
        }
    } else {
        const char *p = hostport;
        for (; p < hostend && *p != ':'; p++) {
            char c = *p;
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '-' || c == '_';
            if (!ok) return "bad character in the host";
        }
        if (p == hostport) return "missing host";
        if (p < hostend) portstr = p + 1;
    }
    if (portstr != NULL) {
        char port[8];
        size_t n = (size_t)(hostend - portstr);
        if (n >= sizeof port) return "port not in 1..65535";
        memcpy(port, portstr, n);
        port[n] = '\0';
        int pv;
        if (!parse_port(port, &pv)) return "port not in 1..65535";
    }
    if (slash != NULL) {
        const char *db = slash + 1;
        if (*db == '\0') return "missing database number after '/'";
        if (strspn(db, "0123456789") != strlen(db) || strlen(db) > 9)
            return "database is a number 0..999999999";
    }
    return NULL;
}

/* ---- applying one directive ------------------------------------------- */

/* Applies value to cfg, or leaves cfg untouched and returns the reason. */
static const char *apply(config *cfg, const directive *d, const char *value) {
    const char *why = NULL;
    int64_t v = 0;
    switch (d->type) {
    case T_INT:
        why = parse_int(d, value, &v);
        if (why == NULL) field_set_int(cfg, d, v);
        break;
    case T_SIZE:
        why = parse_size(d, value, &v);
        if (why == NULL) field_set_int(cfg, d, v);
        break;
    case T_DURATION:
        why = parse_duration(d, value, &v);
        if (why == NULL) field_set_int(cfg, d, v);
        break;
    case T_STRING:
    case T_PATH:
        why = parse_string(d, value);
        if (why == NULL) memcpy(field_ptr(cfg, d), value, strlen(value) + 1);
        break;
    case T_ADDRS: {
        redis_addr a[REDIS_MAX_SEEDS];
        static char reason[160]; /* main thread only, like the rest of config */
        why = parse_string(d, value);
        if (why == NULL && value[0] &&
            redis_addr_list_parse(value, 6379, a, REDIS_MAX_SEEDS, reason, sizeof reason) < 0)
            why = reason;
        if (why == NULL) memcpy(field_ptr(cfg, d), value, strlen(value) + 1);
        break;
    }
    case T_LISTEN: {
        char bind[sizeof cfg->bind] = "";
        int port;
        why = parse_listen(value, bind, sizeof bind, &port);
        if (why == NULL) {
            memcpy(cfg->bind, bind, sizeof bind);
            cfg->port = port;
        }
        break;
    }
    case T_ORIGINS: {
        char list[CONFIG_MAX_ORIGINS][128] = {{0}}; /* whole: configs compare bytewise */
        int n;
        why = parse_origins(value, list, &n);
        if (why == NULL) {
            memset(cfg->allowed_origins, 0, sizeof cfg->allowed_origins);
            memcpy(cfg->allowed_origins, list, (size_t)n * sizeof list[0]);
            cfg->n_origins = n;
        }
        break;
    }
    case T_BROKER:
        if (strcmp(value, "local") == 0)
            cfg->broker = BROKER_LOCAL;
        else if (strcmp(value, "redis") == 0)
            cfg->broker = BROKER_REDIS;
        else
            why = "unknown broker";
        break;
    case T_LOGLEVEL: {
        int level = log_level_parse(value);
        if (level < 0)
            why = "unknown level";
        else
            cfg->log_level = level;
        break;
    }
    case T_REDIS_URL:
        why = parse_redis_url(value, sizeof cfg->redis_url);
        if (why == NULL) memcpy(cfg->redis_url, value, strlen(value) + 1);
        break;
    case T_TLS_LISTEN: {
        char bind[sizeof cfg->tls_bind] = "";
        int port = 0;
        if (value[0] != '\0') why = parse_listen(value, bind, sizeof bind, &port);
        if (why == NULL) {
            memcpy(cfg->tls_bind, bind, sizeof bind);
            cfg->tls_port = port;
        }
        break;
    }
    case T_TLS_VERSION: {
        /* nginx spells versions TLSv1.2; OpenSSL's names are the same. */
        const char *ver = strncasecmp(value, "TLSv", 4) == 0 ? value + 4 : value;
        if (strcmp(ver, "1.2") == 0)
            cfg->tls_min_version = 0x0303;
        else if (strcmp(ver, "1.3") == 0)
            cfg->tls_min_version = 0x0304;
        else if (strcmp(ver, "1") == 0 || strcmp(ver, "1.0") == 0 || strcmp(ver, "1.1") == 0)
            why = "TLS 1.0 and 1.1 are never offered";
        else
            why = "not a TLS version";
        break;
    }
    case T_BOOL:
        if (strcmp(value, "on") == 0 || strcmp(value, "off") == 0)
            field_set_int(cfg, d, value[1] == 'n');
        else
            why = "neither on nor off";
        break;
    case T_PROXIES: {
        proxy_net nets[PROXY_NETS_MAX];
        int n = proxy_parse_nets(value, nets, PROXY_NETS_MAX, &why);
        if (n >= 0) {
            memset(cfg->trusted_proxies, 0, sizeof cfg->trusted_proxies);
            memcpy(cfg->trusted_proxies, nets, (size_t)n * sizeof nets[0]);
            cfg->n_trusted_proxies = n;
        }
        break;
    }
    case T_LOGFORMAT: {
        int f = log_format_parse(value);
        if (f < 0)
            why = "unknown format";
        else
            cfg->log_format = f;
        break;
    }
    case T_PROXYPROTO: {
        static const char *const names[] = {"off", "ws", "wss", "on"}; /* by mask */
        int f = -1;
        for (int k = 0; k < 4; k++)
            if (strcmp(value, names[k]) == 0) f = k;
        if (f < 0)
            why = "unknown value";
        else
            cfg->proxy_protocol = f;
        break;
    }
    }
    return why;
}

/* Values are echoed in messages; a runaway one is cut to keep them short. */
static void bad_value(char *err, size_t errlen, const directive *d, const char *value,
                      const char *why) {
    char expected[160];
    describe(d, expected, sizeof expected);
    /* A secret, or a URL that may hold a password where we cannot tell
     * (it is malformed), is not repeated. */
    if ((d->flags & F_SECRET) || d->type == T_REDIS_URL) {
        seterr(err, errlen, "bad value (not repeated here) for '%s': %s (expected %s)", d->name,
               why, expected);
        return;
    }
    int cut = strlen(value) > 80 ? 77 : 80;
    seterr(err, errlen, "bad value '%.*s%s' for '%s': %s (expected %s)", cut, value,
           cut == 77 ? "..." : "", d->name, why, expected);
}

int config_set(config *cfg, const char *key, const char *value, char *err, size_t errlen) {
    const directive *d = find_directive(key);
    if (d == NULL) {
        /* Only its first word: "auth_secret s3cret" (no '=') is all key,
         * and the rest of it must not reach a log. */
        int n = 0;
        while (n < 80 && key[n] && key[n] != ' ' && key[n] != '\t') n++;
        seterr(err, errlen, "unknown directive '%.*s'", n, key);
        return -1;
    }
    const char *why = apply(cfg, d, value);
    if (why != NULL) {
        bad_value(err, errlen, d, value, why);
        return -1;
    }
    return 0;
}

void config_defaults(config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const char *why = apply(cfg, &directives[i], directives[i].def);
        if (why != NULL) { /* a bad row in the table: a bug, caught by any test */
            fprintf(stderr, "config: default of '%s' is invalid: %s\n", directives[i].name, why);
            abort();
        }
    }
}

/* ---- the file ---------------------------------------------------------- */

static bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

static char *trim(char *s, char *end) {
    while (s < end && is_blank(*s)) s++;
    while (end > s && is_blank(end[-1])) end--;
    *end = '\0';
    return s;
}

/* Makes a relative path absolute from dir (NULL: leaves it). */
static int resolve_path(config *cfg, const directive *d, const char *dir, char *err,
                        size_t errlen) {
    char *v = field_ptr(cfg, d);
    if (dir == NULL || v[0] == '\0' || v[0] == '/') return 0;
    char full[PATH_MAX];
    int n = snprintf(full, sizeof full, "%s/%s", dir, v);
    if (n < 0 || (size_t)n >= d->size) {
        seterr(err, errlen, "'%s' is too long once taken from %s (at most %zu bytes)", d->name,
               dir, d->size - 1);
        return -1;
    }
    memcpy(v, full, (size_t)n + 1);
    return 0;
}

/* Where a file's directives come from: its name, its directory (for
 * relative paths; NULL for text that is no file) and the line. */
typedef struct source {
    const char *name;
    const char *dir;
    int line;
} source;

/* Parses one line in place. Returns 0 (blank, comment or applied) or -1
 * with the reason in err (no file or line). */
static int parse_line(config *cfg, char *line, const source *src, char *err, size_t errlen) {
    char *end = line + strlen(line);
    char *p = line;
    while (p < end && is_blank(*p)) p++;
    if (p == end || *p == '#') return 0;

    /* The key ends at '='; a '#' after a blank before it starts a comment. */
    char *eq = NULL;
    for (char *q = p; q < end; q++) {
        if (*q == '=') {
            eq = q;
            break;
        }
        if (*q == '#' && is_blank(q[-1])) break;
    }
    if (eq == NULL) {
        seterr(err, errlen, "expected 'key = value'");
        return -1;
    }
    char *key = trim(p, eq);
    if (*key == '\0') {
        seterr(err, errlen, "expected 'key = value'");
        return -1;
    }

    char *v = eq + 1;
    while (v < end && is_blank(*v)) v++;
    char *value;
    if (*v == '"') {
        /* Quoted: keeps '#' and blanks; \" and \\ are the only escapes. */
        char *out = v, *q = v + 1;
        value = v;
        for (;; q++) {
            if (q == end) {
                seterr(err, errlen, "unterminated quoted value for '%.80s'", key);
                return -1;
            }
            if (*q == '"') break;
            if (*q == '\\' && (q[1] == '"' || q[1] == '\\')) q++;
            *out++ = *q;
        }
        *out = '\0';
        for (q++; q < end && is_blank(*q); q++) {}
        if (q < end && *q != '#') {
            seterr(err, errlen, "text after the closing quote of '%.80s'", key);
            return -1;
        }
    } else {
        /* A '#' first ("key = # comment") or after a blank ends the value. */
        char *q = v;
        while (q < end && !(*q == '#' && (q == v || is_blank(q[-1])))) q++;
        value = trim(v, q);
    }
    if (config_set(cfg, key, value, err, errlen) != 0) return -1;
    const directive *d = find_directive(key);
    cfg->line[d - directives] = src->line;
    return d->type == T_PATH ? resolve_path(cfg, d, src->dir, err, errlen) : 0;
}

static int parse_text(config *cfg, const char *name, const char *dir, const char *text, char *err,
                      size_t errlen) {
    size_t len = strlen(text);
    char *buf = malloc(len + 1);
    if (buf == NULL) {
        seterr(err, errlen, "%s: out of memory", name);
        return -1;
    }
    memcpy(buf, text, len + 1);

    char *line = buf;
    if (strncmp(line, "\xef\xbb\xbf", 3) == 0) line += 3; /* a BOM some editors add */
    int rc = 0;
    snprintf(cfg->file, sizeof cfg->file, "%s", name);
    source src = {name, dir, 0};
    for (int lineno = 1; line != NULL; lineno++) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) *nl = '\0';
        char why[512];
        src.line = lineno;
        if (parse_line(cfg, line, &src, why, sizeof why) != 0) {
            seterr(err, errlen, "%s:%d: %s", name, lineno, why);
            rc = -1;
            break;
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(buf);
    return rc;
}

int config_parse(config *cfg, const char *name, const char *text, char *err, size_t errlen) {
    return parse_text(cfg, name, NULL, text, err, errlen);
}

int config_load(config *cfg, const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    int rc = -1;
    for (;;) {
        if (cap - len < 4096) {
            size_t ncap = cap == 0 ? 8192 : cap * 2;
            char *n = realloc(text, ncap);
            if (n == NULL) {
                seterr(err, errlen, "%s: out of memory", path);
                goto out;
            }
            text = n;
            cap = ncap;
        }
        size_t got = fread(text + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    text[len] = '\0';
    if (strlen(text) != len) {
        seterr(err, errlen, "%s: contains a NUL byte; not a text file?", path);
        goto out;
    }
    /* Relative paths in the file mean the file's directory, as a service
     * manager starts chatd from anywhere; stored absolute, so a later
     * reload or a chdir cannot change what they name. */
    char dir[PATH_MAX], real[PATH_MAX];
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) + (slash == path) : 1,
             slash ? path : ".");
    if (realpath(dir, real) == NULL) {
        seterr(err, errlen, "%s: cannot resolve its directory: %s", path, strerror(errno));
        goto out;
    }
    rc = parse_text(cfg, path, real, text, err, errlen);
out:
    free(text);
    fclose(f);
    return rc;
}

/* ---- environment and cross-checks ------------------------------------- */

/* An empty variable counts as unset, as `PORT= chatd` usually means. */
int config_apply_env(config *cfg, char *err, size_t errlen) {
    const char *port = getenv("PORT");
    if (port != NULL && *port != '\0') {
        int p;
        if (!parse_port(port, &p)) {
            seterr(err, errlen, "PORT: bad value '%.80s' (expected a port 1..65535)", port);
            return -1;
        }
        cfg->port = p;
    }
    const char *url = getenv("REDIS_URL");
    if (url != NULL && *url != '\0') {
        const char *why = parse_redis_url(url, sizeof cfg->redis_url);
        if (why != NULL) {
            seterr(err, errlen, "REDIS_URL: bad value (not repeated here): %s (expected %s)", why,
                   "redis://[[user]:password@]host[:port][/db]");
            return -1;
        }
        memcpy(cfg->redis_url, url, strlen(url) + 1);
        cfg->broker = BROKER_REDIS;
    }
    return 0;
}

/* Where the password of a redis:// URL starts (after "user:"), or NULL. */
static const char *url_password(const char *url) {
    if (strncmp(url, "redis://", 8) != 0) return NULL;
    const char *at = strrchr(url + 8, '@');
    if (at == NULL) return NULL;
    const char *colon = memchr(url + 8, ':', (size_t)(at - url - 8));
    return colon != NULL && colon + 1 < at ? colon + 1 : NULL;
}

int config_check(const config *cfg, char *err, size_t errlen) {
    /* The setters already enforce the bounds; check again for a config
     * that was filled or edited in code. */
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const directive *d = &directives[i];
        if (d->type != T_INT && d->type != T_SIZE && d->type != T_DURATION) continue;
        int64_t v = field_get_int(cfg, d);
        if (v < d->min || v > d->max) {
            seterr(err, errlen, "%s: %" PRId64 " is out of range %" PRId64 "..%" PRId64, d->name,
                   v, d->min, d->max);
            return -1;
        }
        if ((d->flags & F_POW2) && (v & (v - 1)) != 0) {
            seterr(err, errlen, "%s: %" PRId64 " is not a power of two", d->name, v);
            return -1;
        }
    }
    if (cfg->port < 1 || cfg->port > 65535) {
        seterr(err, errlen, "listen: port %d is out of range 1..65535", cfg->port);
        return -1;
    }
    if (cfg->tls_port && (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0')) {
        seterr(err, errlen, "tls_listen needs tls_cert and tls_key");
        return -1;
    }
    if (cfg->proxy_protocol && cfg->n_trusted_proxies == 0) {
        seterr(err, errlen, "proxy_protocol needs trusted_proxies: it would refuse everyone");
        return -1;
    }
    /* Two listeners on one port: bind would fail at start, after -t said
     * yes. Different specific addresses on one port are fine. */
    bool any = strcmp(cfg->bind, "0.0.0.0") == 0 || strcmp(cfg->bind, "::") == 0 ||
               strcmp(cfg->tls_bind, "0.0.0.0") == 0 || strcmp(cfg->tls_bind, "::") == 0;
    if (cfg->tls_port == cfg->port && (any || strcmp(cfg->bind, cfg->tls_bind) == 0)) {
        seterr(err, errlen,
               "listen and tls_listen are both on port %d: give each a port of its own "
               "(ws:// and wss:// cannot share one)",
               cfg->port);
        return -1;
    }
    if (cfg->redis_password[0] && cfg->redis_password_file[0]) {
        seterr(err, errlen, "redis_password and redis_password_file are both set: give one");
        return -1;
    }
    if ((cfg->redis_password[0] || cfg->redis_password_file[0]) && url_password(cfg->redis_url)) {
        seterr(err, errlen, "redis_url has a password and %s is set: give the password once",
               cfg->redis_password[0] ? "redis_password" : "redis_password_file");
        return -1;
    }
    if (cfg->n_origins < 0 || cfg->n_origins > CONFIG_MAX_ORIGINS) {
        seterr(err, errlen, "allowed_origins: %d entries, at most %d", cfg->n_origins,
               CONFIG_MAX_ORIGINS);
        return -1;
    }
    if (cfg->log_level < LOG_DEBUG || cfg->log_level > LOG_ERROR) {
        seterr(err, errlen, "log_level: %d is not a level", cfg->log_level);
        return -1;
    }
    if (cfg->redis_cluster[0] && cfg->redis_sentinel[0]) {
        seterr(err, errlen, "redis_cluster and redis_sentinel are both set: give one");
        return -1;
    }
    if (cfg->redis_cluster[0] && url_db(cfg->redis_url) != 0) {
        seterr(err, errlen, "redis_url names database %ld: a Redis Cluster has only 0",
               url_db(cfg->redis_url));
        return -1;
    }
    /* The hash tag is the first {...} of a key: the stream's own would put
     * every shard in one slot. */
    if ((cfg->shards > 1 || cfg->redis_cluster[0]) && strpbrk(cfg->stream, "{}")) {
        seterr(err, errlen, "stream '%s' has a brace: with shards or redis_cluster the keys "
               "carry their own hash tag", cfg->stream);
        return -1;
    }
    if (cfg->redis_sentinel[0] && cfg->redis_master_name[0] == '\0') {
        seterr(err, errlen, "redis_sentinel needs redis_master_name: the primary's name");
        return -1;
    }
    if (cfg->broker == BROKER_REDIS && parse_redis_url(cfg->redis_url, sizeof cfg->redis_url)) {
        seterr(err, errlen, "redis_url is not a Redis URL (not repeated here)");
        return -1;
    }
    /* The default room must be a room a client could also name. */
    size_t room = strnlen(cfg->default_room, sizeof cfg->default_room);
    if (room == 0) {
        seterr(err, errlen, "default_room is empty");
        return -1;
    }
    if (room > (size_t)cfg->max_room) {
        seterr(err, errlen, "default_room '%.64s' is %zu bytes, longer than max_room (%d)",
               cfg->default_room, room, cfg->max_room);
        return -1;
    }
    return 0;
}

/* ---- secrets, warnings, the dump --------------------------------------- */

int config_load_secrets(config *cfg, char *err, size_t errlen) {
    cfg->redis_pass[0] = '\0';
    if (cfg->broker != BROKER_REDIS) return 0; /* ignored: config_warnings says so */
    if (cfg->redis_password[0]) {
        memcpy(cfg->redis_pass, cfg->redis_password, sizeof cfg->redis_pass);
        return 0;
    }
    if (cfg->redis_password_file[0] == '\0') return 0;
    const char *path = cfg->redis_password_file;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        seterr(err, errlen, "redis_password_file %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char buf[sizeof cfg->redis_pass + 2];
    bool got = fgets(buf, sizeof buf, f) != NULL;
    fclose(f);
    size_t n = got ? strcspn(buf, "\r\n") : 0;
    if (n == 0) {
        seterr(err, errlen, "redis_password_file %s: the first line is empty", path);
        return -1;
    }
    if (n >= sizeof cfg->redis_pass) {
        seterr(err, errlen, "redis_password_file %s: the password is longer than %zu bytes", path,
               sizeof cfg->redis_pass - 1);
        return -1;
    }
    memcpy(cfg->redis_pass, buf, n);
    cfg->redis_pass[n] = '\0';
    explicit_bzero(buf, sizeof buf);
    return 0;
}

/* Set by the file to something other than its default. */
static bool set_by_file(const config *cfg, const config *def, const directive *d) {
    return cfg->line[d - directives] > 0 &&
           memcmp((const char *)cfg + d->offset, (const char *)def + d->offset, d->size) != 0;
}

int config_warnings(const config *cfg, char *buf, size_t len) {
    static const struct {
        const char *name, *ignored_when;
    } rules[] = {
        {"tls_cert", "tls_listen is empty (no wss:// listener)"},
        {"tls_key", "tls_listen is empty (no wss:// listener)"},
        {"tls_ciphers", "tls_listen is empty (no wss:// listener)"},
        {"tls_min_version", "tls_listen is empty (no wss:// listener)"},
        {"redis_url", "broker = local (set broker = redis, or REDIS_URL in the environment)"},
        {"redis_password", "broker = local"},
        {"redis_password_file", "broker = local"},
        {"stream", "broker = local"},
        {"stream_maxlen", "broker = local"},
        {"redis_timeout", "broker = local"},
        {"redis_cluster", "broker = local"},
        {"redis_sentinel", "broker = local"},
        {"redis_wait_replicas", "broker = local"},
        {"shards", "broker = local"},
        {"redis_master_name", "redis_sentinel is empty"},
        {"history_ttl", "broker = local"},
        {"rate_burst", "rate_limit = 0 (no limit)"},
        {"auth_secret_previous", "auth_secret is empty (no authentication)"},
    };
    static config def; /* main thread only, like the rest of config */
    config_defaults(&def);
    int count = 0;
    size_t used = 0;
    if (len > 0) buf[0] = '\0';
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++) {
        const directive *d = find_directive(rules[i].name);
        bool off = strncmp(d->name, "tls_", 4) == 0 ? cfg->tls_port == 0
                   : strcmp(d->name, "rate_burst") == 0 ? cfg->rate_limit == 0
                   : strcmp(d->name, "auth_secret_previous") == 0 ? cfg->auth_secret[0] == '\0'
                   : strcmp(d->name, "redis_master_name") == 0 ? cfg->redis_sentinel[0] == '\0'
                                                        : cfg->broker == BROKER_LOCAL;
        if (!off || !set_by_file(cfg, &def, d)) continue;
        count++;
        if (used < len) {
            int n = snprintf(buf + used, len - used, "%s%s:%d: %s is ignored: %s",
                             used ? "\n" : "", cfg->file, cfg->line[d - directives], d->name,
                             rules[i].ignored_when);
            used += n > 0 ? (size_t)n : 0;
        }
    }
    return count;
}

#define MASK "********"

/* Appends to a buffer, cutting at its end; b->len counts what fits. */
typedef struct sbuf {
    char *p;
    size_t cap, len;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(sbuf *b, const char *fmt, ...) {
    if (b->len >= b->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n > 0) b->len = b->len + (size_t)n < b->cap ? b->len + (size_t)n : b->cap - 1;
}

/* A value as the file would say it: quoted when it holds blanks, '#',
 * '"' or '\' (or is empty and must stay a value). */
static void put_value(sbuf *b, const char *v) {
    if (v[0] != '\0' && strpbrk(v, " \t#\"\\") == NULL) {
        put(b, "%s", v);
        return;
    }
    if (v[0] == '\0') return;
    put(b, "\"");
    for (; *v; v++) put(b, "%s%c", *v == '"' || *v == '\\' ? "\\" : "", *v);
    put(b, "\"");
}

static void put_listen(sbuf *b, const char *bind, int port) {
    bool v6 = strchr(bind, ':') != NULL;
    put(b, "%s%s%s:%d", v6 ? "[" : "", bind, v6 ? "]" : "", port);
}

/* Directive d's value in cfg as the file would say it, secrets masked. */
static void format_value(const config *cfg, const directive *d, char *out, size_t len) {
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    sbuf b = {out, len, 0};
    char buf[512];
    const char *s = (const char *)cfg + d->offset;
    int64_t v = 0;
    if (len > 0) out[0] = '\0';
    if (d->type == T_INT || d->type == T_SIZE || d->type == T_DURATION || d->type == T_BOOL)
        v = field_get_int(cfg, d);
    switch (d->type) {
    case T_INT:
        if ((d->flags & F_AUTO) && v == 0) put(&b, "auto");
        else put(&b, "%" PRId64, v);
        break;
    case T_SIZE: put(&b, "%s", fmt_size(v, buf, sizeof buf)); break;
    case T_DURATION: put(&b, "%s", fmt_duration(v, buf, sizeof buf)); break;
    case T_STRING:
    case T_PATH:
    case T_ADDRS:
        put_value(&b, (d->flags & F_SECRET) && s[0] ? MASK : s);
        break;
    case T_LISTEN: put_listen(&b, cfg->bind, cfg->port); break;
    case T_TLS_LISTEN:
        if (cfg->tls_port) put_listen(&b, cfg->tls_bind, cfg->tls_port);
        break;
    case T_ORIGINS:
        for (int k = 0; k < cfg->n_origins && k < CONFIG_MAX_ORIGINS; k++)
            put(&b, "%s%s", k ? ", " : "", cfg->allowed_origins[k]);
        break;
    case T_BROKER: put(&b, "%s", cfg->broker == BROKER_REDIS ? "redis" : "local"); break;
    case T_LOGLEVEL:
        put(&b, "%s", cfg->log_level >= 0 && cfg->log_level <= 3 ? levels[cfg->log_level] : "?");
        break;
    case T_REDIS_URL: {
        const char *pw = url_password(s);
        if (pw == NULL) {
            put_value(&b, s);
            break;
        }
        snprintf(buf, sizeof buf, "%.*s" MASK "%s", (int)(pw - s), s, strrchr(s, '@'));
        put_value(&b, buf);
        break;
    }
    case T_TLS_VERSION: put(&b, "%s", cfg->tls_min_version == 0x0304 ? "1.3" : "1.2"); break;
    case T_BOOL: put(&b, "%s", v ? "on" : "off"); break;
    case T_PROXIES:
        for (int k = 0; k < cfg->n_trusted_proxies; k++) {
            const proxy_net *n = &cfg->trusted_proxies[k];
            char ip[64];
            proxy_format_ip(n->ip, ip, sizeof ip);
            /* An IPv4 net is 96 bits of ::ffff:0:0/96 and its own. */
            int v4 = strchr(ip, ':') == NULL, bits = v4 ? n->bits - 96 : n->bits;
            put(&b, "%s%s", k ? " " : "", ip);
            if (bits != (v4 ? 32 : 128)) put(&b, "/%d", bits);
        }
        break;
    case T_LOGFORMAT: put(&b, "%s", cfg->log_format == LOG_JSON ? "json" : "text"); break;
    case T_PROXYPROTO: {
        static const char *const names[] = {"off", "ws", "wss", "on"};
        put(&b, "%s", names[cfg->proxy_protocol & 3]);
        break;
    }
    }
}

void config_dump(const config *cfg, FILE *out) {
    char buf[PROXY_NETS_MAX * 48 + CONFIG_MAX_ORIGINS * 130 + 64];
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        format_value(cfg, &directives[i], buf, sizeof buf);
        fprintf(out, "%s = %s\n", directives[i].name, buf);
    }
}

int config_value(const config *cfg, const char *name, char *buf, size_t len) {
    const directive *d = find_directive(name);
    if (d == NULL) return -1;
    format_value(cfg, d, buf, len);
    return 0;
}

/* ---- reload ------------------------------------------------------------ */

int config_reloadable(const char *name) {
    const directive *d = find_directive(name);
    return d == NULL ? -1 : (d->flags & F_RELOAD) != 0;
}

/* Whether d says something different in a and b. Strings compare as
 * strings: the bytes after the NUL are whatever an earlier value left. */
static bool differs(const config *a, const config *b, const directive *d) {
    const char *x = (const char *)a + d->offset, *y = (const char *)b + d->offset;
    switch (d->type) {
    case T_STRING:
    case T_PATH:
    case T_ADDRS:
    case T_REDIS_URL:
        return strncmp(x, y, d->size) != 0;
    case T_LISTEN:
        return strcmp(a->bind, b->bind) != 0 || a->port != b->port;
    case T_TLS_LISTEN:
        return strcmp(a->tls_bind, b->tls_bind) != 0 || a->tls_port != b->tls_port;
    case T_ORIGINS:
        if (a->n_origins != b->n_origins) return true;
        for (int k = 0; k < a->n_origins && k < CONFIG_MAX_ORIGINS; k++)
            if (strcmp(a->allowed_origins[k], b->allowed_origins[k]) != 0) return true;
        return false;
    default:
        return memcmp(x, y, d->size) != 0;
    }
}

void config_merge(const config *running, const config *fresh, config *next, config_changes *ch) {
    *next = *running;
    ch->nchanged = ch->nrestart = 0;
    for (size_t i = 0; i < N_DIRECTIVES; i++) {
        const directive *d = &directives[i];
        if (!differs(running, fresh, d)) continue;
        if (!(d->flags & F_RELOAD)) {
            ch->restart[ch->nrestart++] = d->name;
            continue;
        }
        ch->changed[ch->nchanged++] = d->name;
        memcpy((char *)next + d->offset, (const char *)fresh + d->offset, d->size);
        if (d->type == T_ORIGINS) next->n_origins = fresh->n_origins;
        next->line[i] = fresh->line[i];
    }
}

/* Published by main, read by every thread at its safe points. */
static _Atomic(const config *) live;

void config_publish(const config *cfg) {
    /* release: the config's contents, written by main, are visible to a
     * thread that loads this pointer (acquire) */
    atomic_store_explicit(&live, cfg, memory_order_release);
}

const config *config_current(void) {
    /* acquire: pairs with config_publish's release */
    return atomic_load_explicit(&live, memory_order_acquire);
}

const char *config_directive_name(size_t i) { return i < N_DIRECTIVES ? directives[i].name : NULL; }
