/* config — chatd's settings: defaults, the file parser, environment.
 *
 * One directive per line, `key = value`, `#` starts a comment. Each
 * directive is one row in the table in config.c (name, type, bounds,
 * default, field). Parsed on the main thread; once published a config is
 * read-only and shared by all threads. A reload (SIGHUP) never changes a
 * published config: main builds the next one (config_merge) and publishes
 * it (config_publish); each thread switches its own pointer at a safe point
 * of its loop (config_current).
 */
#ifndef CHATD_CONFIG_H
#define CHATD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "proxy.h"

#define CONFIG_MAX_ORIGINS 16
#define CONFIG_MAX_DIRECTIVES 96 /* room in `line` below; config.c asserts it */

typedef enum { BROKER_LOCAL = 0, BROKER_REDIS = 1 } broker_kind;

enum { PROXY_ON_WS = 1, PROXY_ON_WSS = 2 }; /* proxy_protocol: which listeners */

typedef struct config {
    /* network */
    char bind[64];              /* address of the ws listener */
    int port;                   /* port of the ws listener */
    int listen_backlog;         /* listen(2) backlog; 0: somaxconn */
    int workers;                /* 0 in the file means auto: one per core */
    int acceptor_threads;       /* likewise: threads for TLS and HTTP handshakes */
    int max_clients;            /* 0: as many as open files allow */
    int max_header_bytes;       /* request head limit (→ 431) */
    int handshake_timeout_ms;   /* whole request must arrive in this (→ close) */
    char allowed_origins[CONFIG_MAX_ORIGINS][128]; /* empty: any origin */
    int n_origins;
    int web;                    /* 1: GET / serves the chat page (web.h) */
    proxy_net trusted_proxies[PROXY_NETS_MAX]; /* peers whose X-Forwarded-For
                                   and PROXY headers name the client */
    int n_trusted_proxies;
    int proxy_protocol;         /* PROXY_ON_WS | PROXY_ON_WSS: connections on
                                   those listeners start with a PROXY
                                   header (v1 or v2) from a trusted peer */

    /* TLS (wss://): off while tls_port is 0 */
    char tls_bind[64];          /* address of the wss listener */
    int tls_port;
    char tls_cert[256];         /* PEM certificate chain */
    char tls_key[256];          /* PEM private key */
    char tls_ciphers[256];      /* TLS 1.2 cipher list; empty: OpenSSL's */
    int tls_min_version;        /* 0x0303 (TLS 1.2) or 0x0304 (TLS 1.3) */

    /* abuse limits and authentication (0 or empty: off) */
    int max_pending;            /* handshakes in progress; the oldest goes */
    int max_clients_per_ip;     /* WebSocket clients from one address */
    int rate_limit;             /* messages per second per client (→ 1008) */
    int rate_burst;             /* messages allowed at once; 0: rate_limit */
    char auth_secret[256];      /* HS256 key: ?token= JWT required when set */
    char auth_secret_previous[256]; /* also accepted, for rotating the key */

    /* protocol */
    char default_room[65];
    int max_username;           /* bytes */
    int max_room;               /* bytes */
    int64_t max_message;        /* bytes of one message (→ 1009) */
    int ping_interval_ms;       /* ping a connection idle this long */
    int ping_timeout_ms;        /* close it if no pong within this */
    int64_t max_output_buffer;  /* bytes queued for one client (→ 1008) */
    int max_rooms_per_conn;     /* chatd.v1: rooms one connection may be in */
    int permessage_deflate;     /* 1: accept permessage-deflate offers */
    int compression_min_size;   /* smaller payloads go out uncompressed */

    /* history and presence */
    int history_size;           /* per room, in each node's memory; 0: none */
    int64_t history_bytes;      /* node memory for it */
    int history_max;            /* per room, in Redis; 0: none */
    int64_t history_ttl_ms;     /* Redis history of a quiet room expires */
    int presence_ttl_ms;        /* a silent node's members go within this */
    int presence_max;           /* members listed in `joined`; past it a count */

    /* broker */
    broker_kind broker;
    char redis_url[256];        /* user and password percent-encoded */
    char redis_password[256];   /* replaces the URL's password; secret */
    char redis_password_file[256]; /* file whose first line is the password */
    char redis_pass[256];       /* the password in effect, decoded, from either
                                   of the two above (config_load_secrets);
                                   empty: the URL's own */
    char redis_cluster[256];    /* seed nodes "host:port, ..."; empty: none */
    char redis_sentinel[256];   /* sentinels "host:port, ..."; empty: none */
    char redis_master_name[128];/* the primary the sentinels watch */
    int redis_wait_replicas;    /* replicas that must have a message first */
    int shards;                 /* streams the rooms are spread over */
    char stream[128];
    int64_t stream_maxlen;
    int publish_queue;          /* per worker, messages not yet stored */
    int redis_timeout_ms;       /* unanswered command → connection dead */
    int ring_size;              /* entries in each inter-thread ring */

    /* process */
    int log_level;              /* LOG_DEBUG .. LOG_ERROR, see log.h */
    int log_format;             /* LOG_TEXT or LOG_JSON, see log.h */
    int access_log;             /* 1: a line at each connection's open and close */
    int shutdown_timeout_ms;    /* to store what was accepted, then to close */
    int drain_delay_ms;         /* readiness fails this long before closes */
    int drain_time_ms;          /* clients closed in batches over this */

    /* where each directive was set, for warnings: the file and, per row of
     * the directive table, the line (0: not set by a file) */
    char file[256];
    int line[CONFIG_MAX_DIRECTIVES];
} config;

/* Fills cfg with every directive's default. */
void config_defaults(config *cfg);

/* Parses a config file into cfg (which holds defaults or earlier values).
 * File paths in it (tls_cert, tls_key, redis_password_file) that are
 * relative are taken from the file's directory, and stored absolute.
 * Returns 0, or -1 with "FILE:LINE: reason" (or "FILE: reason" for an
 * unreadable file) in err. */
int config_load(config *cfg, const char *path, char *err, size_t errlen);

/* Parses the text of a config file; name is used in messages. Same
 * contract as config_load. */
int config_parse(config *cfg, const char *name, const char *text, char *err, size_t errlen);

/* Applies one directive. Returns 0, or -1 with the reason (no file or
 * line) in err. */
int config_set(config *cfg, const char *key, const char *value, char *err, size_t errlen);

/* Applies PORT and REDIS_URL from the environment (REDIS_URL also selects
 * the Redis broker). Returns 0, or -1 with a reason naming the variable. */
int config_apply_env(config *cfg, char *err, size_t errlen);

/* Checks relations between directives (e.g. ping_timeout < ping_interval
 * is not required, but ring_size must be a power of two). Returns 0 or -1
 * with a reason. */
int config_check(const config *cfg, char *err, size_t errlen);

/* Reads what secrets the config names from files (redis_password_file)
 * and sets redis_pass. Returns 0, or -1 with a reason naming the file. */
int config_load_secrets(config *cfg, char *err, size_t errlen);

/* Settings that change nothing as the config stands (tls_cert without
 * tls_listen, redis_url with broker = local, ...): one line each,
 * "FILE:LINE: text", '\n'-separated into buf. Returns how many. */
int config_warnings(const config *cfg, char *buf, size_t len);

/* Writes the effective configuration as a config file, every directive,
 * secrets (auth_secret, redis_password, the password in redis_url)
 * masked. */
void config_dump(const config *cfg, FILE *out);

/* The name of row i of the directive table, NULL past the last: for tests
 * that check every directive is documented. */
const char *config_directive_name(size_t i);

/* 1 if a SIGHUP applies the directive to a running node, 0 if a change
 * needs a restart, -1 for an unknown name. */
int config_reloadable(const char *name);

/* What a reload does: directive names (static strings, table order). */
typedef struct config_changes {
    const char *changed[CONFIG_MAX_DIRECTIVES]; /* applied */
    int nchanged;
    const char *restart[CONFIG_MAX_DIRECTIVES]; /* differ, but kept until a restart */
    int nrestart;
} config_changes;

/* Pure: next = running with every reloadable directive taken from fresh
 * (a checked config parsed from the file again); directives that need a
 * restart keep their running values. Fills ch. next may not alias either. */
void config_merge(const config *running, const config *fresh, config *next, config_changes *ch);

/* The value of directive name in cfg as a config file would say it
 * (secrets masked, "" for an empty one). Returns 0, or -1 for an unknown
 * name. */
int config_value(const config *cfg, const char *name, char *buf, size_t len);

/* Main thread: puts cfg in force. It must stay valid until every other
 * thread has stopped: readers may hold it after the next publish. */
void config_publish(const config *cfg);

/* Any thread: the config in force, NULL before the first publish. Threads
 * call it at a safe point (between events) and switch their own pointer. */
const config *config_current(void);

#endif
