/* Unit tests for config (and the small log module it uses). Run from the
 * repository root: one test opens conf/chatd.conf. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

static char err[512];

/* Where a config came from (file, line of each directive) is not a
 * setting: forget it before comparing two configs. */
static config *settings(config *cfg) {
    memset(cfg->file, 0, sizeof cfg->file);
    memset(cfg->line, 0, sizeof cfg->line);
    return cfg;
}

/* The whole text of a file, or fails the test. */
static char *slurp(const char *path) {
    static char text[262144];
    FILE *f = fopen(path, "r");
    if (f == NULL) fail_msg("cannot open %s", path);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

static int set(config *cfg, const char *key, const char *value) {
    err[0] = '\0';
    return config_set(cfg, key, value, err, sizeof err);
}

static int parse(config *cfg, const char *text) {
    err[0] = '\0';
    return config_parse(cfg, "t.conf", text, err, sizeof err);
}

/* Sets key to value on a default config and expects the given reason. */
static void expect_bad(const char *key, const char *value, const char *reason) {
    config cfg, before;
    config_defaults(&cfg);
    before = cfg;
    if (set(&cfg, key, value) != -1) fail_msg("%s = '%s' was accepted", key, value);
    char want[128];
    snprintf(want, sizeof want, "for '%s': %s (expected ", key, reason);
    if (strstr(err, want) == NULL) fail_msg("%s = '%s': got \"%s\", want \"%s\"", key, value, err, want);
    assert_memory_equal(&cfg, &before, sizeof cfg); /* a bad value changes nothing */
}

/* ---- defaults ------------------------------------------------------------ */

static void test_defaults(void **state) {
    (void)state;
    config cfg;
    memset(&cfg, 0x5a, sizeof cfg);
    config_defaults(&cfg);
    assert_string_equal(cfg.bind, "0.0.0.0");
    assert_int_equal(cfg.port, 5000);
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(cfg.max_clients, 0);
    assert_int_equal(cfg.max_header_bytes, 8192);
    assert_int_equal(cfg.handshake_timeout_ms, 10000);
    assert_int_equal(cfg.n_origins, 0);
    assert_string_equal(cfg.default_room, "lobby");
    assert_int_equal(cfg.max_username, 32);
    assert_int_equal(cfg.max_room, 64);
    assert_int_equal(cfg.max_message, 65536);
    assert_int_equal(cfg.ping_interval_ms, 30000);
    assert_int_equal(cfg.ping_timeout_ms, 10000);
    assert_int_equal(cfg.max_output_buffer, 1048576);
    assert_int_equal(cfg.broker, BROKER_LOCAL);
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:6379");
    assert_string_equal(cfg.stream, "chatd:messages");
    assert_int_equal(cfg.stream_maxlen, 100000);
    assert_int_equal(cfg.publish_queue, 1024);
    assert_int_equal(cfg.ring_size, 65536);
    assert_int_equal(cfg.log_level, LOG_INFO);
    assert_int_equal(cfg.shutdown_timeout_ms, 5000);
    assert_int_equal(config_check(&cfg, err, sizeof err), 0);
}

/* ---- types ---------------------------------------------------------------- */

static void test_sizes(void **state) {
    (void)state;
    static const struct {
        const char *v;
        int64_t want;
    } ok[] = {
        {"300", 300},       {"8k", 8192},        {"8K", 8192},      {"8kb", 8192},
        {"8KB", 8192},      {"8kB", 8192},       {"1m", 1048576},   {"1M", 1048576},
        {"1mb", 1048576},   {"4096b", 4096},     {"0001k", 1024},   {"256", 256},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        config cfg;
        config_defaults(&cfg);
        if (set(&cfg, "max_header_bytes", ok[i].v) != 0) fail_msg("'%s': %s", ok[i].v, err);
        assert_int_equal(cfg.max_header_bytes, ok[i].want);
    }
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "max_output_buffer", "1g"), 0);
    assert_int_equal(cfg.max_output_buffer, 1073741824LL);
    assert_int_equal(set(&cfg, "max_output_buffer", "1G"), 0);
    assert_int_equal(set(&cfg, "max_output_buffer", "4k"), 0);
    assert_int_equal(cfg.max_output_buffer, 4096);
    assert_int_equal(set(&cfg, "max_message", "64m"), 0);
    assert_int_equal(cfg.max_message, 64LL << 20);
    assert_int_equal(set(&cfg, "max_message", "1"), 0);
    assert_int_equal(cfg.max_message, 1);

    expect_bad("max_header_bytes", "8x", "unknown unit");
    expect_bad("max_header_bytes", "8kk", "unknown unit");
    expect_bad("max_header_bytes", "8 k", "unknown unit");
    expect_bad("max_header_bytes", "1.5k", "unknown unit");
    expect_bad("max_header_bytes", "k", "not a number");
    expect_bad("max_header_bytes", "", "not a number");
    expect_bad("max_header_bytes", "+8k", "not a number");
    expect_bad("max_header_bytes", "-8k", "out of range");
    expect_bad("max_header_bytes", "255", "out of range");
    expect_bad("max_header_bytes", "1025k", "out of range");
    expect_bad("max_header_bytes", "2m", "out of range");
    expect_bad("max_message", "0", "out of range");
    expect_bad("max_message", "65m", "out of range");
    expect_bad("max_output_buffer", "4095", "out of range");
    expect_bad("max_output_buffer", "2g", "out of range");
    expect_bad("max_output_buffer", "99999999999999999999", "out of range");
    expect_bad("max_output_buffer", "9999999999999g", "out of range");
}

static void test_durations(void **state) {
    (void)state;
    static const struct {
        const char *v;
        int want;
    } ok[] = {
        {"10", 10000}, {"10s", 10000}, {"250ms", 250}, {"100ms", 100},
        {"2m", 120000}, {"1h", 3600000}, {"3600", 3600000}, {"90s", 90000},
        {"1.5s", 1500}, {"2.0s", 2000}, {"0.25m", 15000}, {"0.5", 500}, {"0.75h", 2700000},
        {"0.001h", 3600},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        config cfg;
        config_defaults(&cfg);
        if (set(&cfg, "handshake_timeout", ok[i].v) != 0) fail_msg("'%s': %s", ok[i].v, err);
        assert_int_equal(cfg.handshake_timeout_ms, ok[i].want);
    }
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "shutdown_timeout", "0"), 0);
    assert_int_equal(cfg.shutdown_timeout_ms, 0);
    assert_int_equal(set(&cfg, "shutdown_timeout", "10m"), 0);
    assert_int_equal(cfg.shutdown_timeout_ms, 600000);
    assert_int_equal(set(&cfg, "ping_interval", "45s"), 0);
    assert_int_equal(cfg.ping_interval_ms, 45000);
    assert_int_equal(set(&cfg, "ping_timeout", "500ms"), 0);
    assert_int_equal(cfg.ping_timeout_ms, 500);

    expect_bad("handshake_timeout", "10x", "unknown unit");
    expect_bad("handshake_timeout", "1w", "unknown unit");
    expect_bad("handshake_timeout", "1.5x", "unknown unit");
    expect_bad("handshake_timeout", "150.5ms", "finer than a millisecond");
    expect_bad("handshake_timeout", "1.s", "not a number");
    expect_bad("handshake_timeout", "1.0000000001s", "too many decimals");
    expect_bad("handshake_timeout", "0.05s", "out of range");
    expect_bad("handshake_timeout", "s", "not a number");
    expect_bad("handshake_timeout", "99ms", "out of range");
    expect_bad("handshake_timeout", "0", "out of range");
    expect_bad("handshake_timeout", "61m", "out of range");
    expect_bad("ping_interval", "2h", "out of range");
    expect_bad("ping_timeout", "-1s", "out of range");
    expect_bad("shutdown_timeout", "601", "out of range");
    expect_bad("shutdown_timeout", "99999999999999h", "out of range");
}

static void test_listen(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "listen", "127.0.0.1:6000"), 0);
    assert_string_equal(cfg.bind, "127.0.0.1");
    assert_int_equal(cfg.port, 6000);
    assert_int_equal(set(&cfg, "listen", "[::]:5000"), 0);
    assert_string_equal(cfg.bind, "::");
    assert_int_equal(cfg.port, 5000);
    assert_int_equal(set(&cfg, "listen", "[::1]:1"), 0);
    assert_string_equal(cfg.bind, "::1");
    assert_int_equal(cfg.port, 1);
    assert_int_equal(set(&cfg, "listen", "[2001:db8::ffff:1.2.3.4]:65535"), 0);
    assert_string_equal(cfg.bind, "2001:db8::ffff:1.2.3.4");
    assert_int_equal(cfg.port, 65535);

    expect_bad("listen", "5000", "missing ':PORT'");
    expect_bad("listen", ":5000", "missing address");
    expect_bad("listen", "localhost:5000", "not an IPv4 address");
    expect_bad("listen", "1.2.3:5000", "not an IPv4 address");
    expect_bad("listen", ":::5000", "an IPv6 address goes in brackets, as in [::1]:5000");
    expect_bad("listen", "1.2.3.4:0", "port not in 1..65535");
    expect_bad("listen", "1.2.3.4:65536", "port not in 1..65535");
    expect_bad("listen", "1.2.3.4:", "port not in 1..65535");
    expect_bad("listen", "1.2.3.4:50x", "port not in 1..65535");
    expect_bad("listen", "[::1]5000", "missing ':PORT'");
    expect_bad("listen", "[::1:5000", "missing ']' after the IPv6 address");
    expect_bad("listen", "[]:5000", "missing address");
    expect_bad("listen", "[1.2.3.4]:5000", "not an IPv6 address");
}

static void test_ints(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "workers", "4"), 0);
    assert_int_equal(cfg.workers, 4);
    assert_int_equal(set(&cfg, "workers", "auto"), 0);
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(set(&cfg, "workers", "256"), 0);
    assert_int_equal(cfg.workers, 256);
    assert_int_equal(set(&cfg, "workers", "0"), 0); /* 0 is auto too */
    assert_int_equal(cfg.workers, 0);
    assert_int_equal(set(&cfg, "max_clients", "10000000"), 0);
    assert_int_equal(cfg.max_clients, 10000000);
    assert_int_equal(set(&cfg, "max_username", "256"), 0);
    assert_int_equal(cfg.max_username, 256);
    assert_int_equal(set(&cfg, "max_room", "1"), 0);
    assert_int_equal(cfg.max_room, 1);
    assert_int_equal(set(&cfg, "stream_maxlen", "1000000000000"), 0);
    assert_int_equal(cfg.stream_maxlen, 1000000000000LL);
    assert_int_equal(set(&cfg, "stream_maxlen", "0"), 0);
    assert_int_equal(cfg.stream_maxlen, 0);
    assert_int_equal(set(&cfg, "publish_queue", "1000000"), 0);
    assert_int_equal(cfg.publish_queue, 1000000);
    assert_int_equal(set(&cfg, "ring_size", "64"), 0);
    assert_int_equal(cfg.ring_size, 64);
    assert_int_equal(set(&cfg, "ring_size", "16777216"), 0);
    assert_int_equal(cfg.ring_size, 16777216);

    expect_bad("workers", "257", "out of range");
    expect_bad("workers", "-1", "out of range");
    expect_bad("workers", "four", "not a number");
    expect_bad("workers", "Auto", "not a number");
    expect_bad("workers", "4k", "not an integer");
    expect_bad("max_clients", "10000001", "out of range");
    expect_bad("max_clients", "-1", "out of range");
    expect_bad("max_username", "0", "out of range");
    expect_bad("max_username", "257", "out of range");
    expect_bad("max_room", "0", "out of range");
    expect_bad("stream_maxlen", "1000000000001", "out of range");
    expect_bad("publish_queue", "0", "out of range");
    expect_bad("publish_queue", "1000001", "out of range");
    expect_bad("ring_size", "1000", "not a power of two");
    expect_bad("ring_size", "32", "out of range");
    expect_bad("ring_size", "33554432", "out of range");
    expect_bad("ring_size", "64k", "not an integer");
}

static void test_origins(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "allowed_origins", "https://a.example, http://b.example:8080 null"), 0);
    assert_int_equal(cfg.n_origins, 3);
    assert_string_equal(cfg.allowed_origins[0], "https://a.example");
    assert_string_equal(cfg.allowed_origins[1], "http://b.example:8080");
    assert_string_equal(cfg.allowed_origins[2], "null");

    /* A later line replaces the list, it does not add to it. */
    assert_int_equal(set(&cfg, "allowed_origins", "https://c.example,https://d.example"), 0);
    assert_int_equal(cfg.n_origins, 2);
    assert_string_equal(cfg.allowed_origins[0], "https://c.example");
    assert_string_equal(cfg.allowed_origins[1], "https://d.example");
    assert_string_equal(cfg.allowed_origins[2], "");

    assert_int_equal(set(&cfg, "allowed_origins", " ,, "), 0);
    assert_int_equal(cfg.n_origins, 0);
    assert_int_equal(set(&cfg, "allowed_origins", "https://x"), 0);
    assert_int_equal(set(&cfg, "allowed_origins", ""), 0);
    assert_int_equal(cfg.n_origins, 0);

    /* Exactly CONFIG_MAX_ORIGINS fit; one more does not. */
    char list[CONFIG_MAX_ORIGINS * 32] = "";
    for (int i = 0; i < CONFIG_MAX_ORIGINS; i++) {
        char one[32];
        snprintf(one, sizeof one, "http://h%d.example ", i);
        strcat(list, one);
    }
    assert_int_equal(set(&cfg, "allowed_origins", list), 0);
    assert_int_equal(cfg.n_origins, CONFIG_MAX_ORIGINS);
    assert_string_equal(cfg.allowed_origins[CONFIG_MAX_ORIGINS - 1], "http://h15.example");
    strcat(list, "http://one-too-many.example");
    expect_bad("allowed_origins", list, "too many origins");

    /* 127 bytes fit, 128 do not. */
    char origin[200] = "https://";
    memset(origin + 8, 'a', 119);
    origin[127] = '\0';
    assert_int_equal(set(&cfg, "allowed_origins", origin), 0);
    assert_string_equal(cfg.allowed_origins[0], origin);
    strcat(origin, "a");
    expect_bad("allowed_origins", origin, "an origin is longer than 127 bytes");

    expect_bad("allowed_origins", "example.com", "an origin is scheme://host[:port]");
    expect_bad("allowed_origins", "://example.com", "an origin is scheme://host[:port]");
    expect_bad("allowed_origins", "https://", "an origin needs a host");
    expect_bad("allowed_origins", "https://a.example/", "an origin has no path, not even a trailing '/'");
    expect_bad("allowed_origins", "https://ok.example https://a.example/chat",
               "an origin has no path, not even a trailing '/'");
    expect_bad("allowed_origins", "https://caf\xc3\xa9.example", "an origin is printable ASCII");
}

static void test_strings(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "default_room", "general"), 0);
    assert_string_equal(cfg.default_room, "general");
    assert_int_equal(set(&cfg, "default_room", "caf\xc3\xa9 corner"), 0);
    assert_string_equal(cfg.default_room, "caf\xc3\xa9 corner");
    char room[80];
    memset(room, 'r', 64);
    room[64] = '\0';
    assert_int_equal(set(&cfg, "default_room", room), 0);
    assert_string_equal(cfg.default_room, room);
    strcat(room, "r");
    expect_bad("default_room", room, "too long");
    expect_bad("default_room", "", "empty");
    expect_bad("default_room", "a\tb", "contains a control character");
    expect_bad("default_room", "a\x7f", "contains a control character");
    expect_bad("default_room", "caf\xc3", "not valid UTF-8");
    expect_bad("default_room", "\xc0\xaf", "not valid UTF-8");
    expect_bad("default_room", "\xed\xa0\x80", "not valid UTF-8");

    assert_int_equal(set(&cfg, "stream", "{chat}:messages"), 0);
    assert_string_equal(cfg.stream, "{chat}:messages");
    char stream[140];
    memset(stream, 's', 127);
    stream[127] = '\0';
    assert_int_equal(set(&cfg, "stream", stream), 0);
    assert_string_equal(cfg.stream, stream);
    strcat(stream, "s");
    expect_bad("stream", stream, "too long");
    expect_bad("stream", "", "empty");
    expect_bad("stream", "chat messages", "contains a space");
    expect_bad("stream", "chat\tmessages", "contains a control character");
}

static void test_enums(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "broker", "redis"), 0);
    assert_int_equal(cfg.broker, BROKER_REDIS);
    assert_int_equal(set(&cfg, "broker", "local"), 0);
    assert_int_equal(cfg.broker, BROKER_LOCAL);
    expect_bad("broker", "kafka", "unknown broker");
    expect_bad("broker", "", "unknown broker");

    static const struct {
        const char *v;
        int want;
    } levels[] = {{"debug", LOG_DEBUG}, {"info", LOG_INFO}, {"warn", LOG_WARN},
                  {"error", LOG_ERROR}, {"ERROR", LOG_ERROR}, {"Debug", LOG_DEBUG}};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        assert_int_equal(set(&cfg, "log_level", levels[i].v), 0);
        assert_int_equal(cfg.log_level, levels[i].want);
    }
    expect_bad("log_level", "verbose", "unknown level");
    expect_bad("log_level", "warning", "unknown level");
    expect_bad("log_level", "", "unknown level");
}

static void test_redis_url(void **state) {
    (void)state;
    static const char *const ok[] = {
        "redis://localhost",
        "redis://127.0.0.1:6379",
        "redis://redis-1.internal_net:6380",
        "redis://:secret@10.0.0.5:6379/0",
        "redis://user:secret@host",
        "redis://user:p@ss@host:1/15", /* the last '@' ends the credentials */
        "redis://[::1]",
        "redis://[::1]:6379/2",
        "redis://h/999999999",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        config cfg;
        config_defaults(&cfg);
        if (set(&cfg, "redis_url", ok[i]) != 0) fail_msg("'%s': %s", ok[i], err);
        assert_string_equal(cfg.redis_url, ok[i]);
        assert_int_equal(cfg.broker, BROKER_LOCAL); /* the broker is its own directive */
    }
    expect_bad("redis_url", "http://localhost:6379", "must start with redis://");
    expect_bad("redis_url", "rediss://localhost:6379", "must start with redis://");
    expect_bad("redis_url", "localhost:6379", "must start with redis://");
    expect_bad("redis_url", "", "must start with redis://");
    expect_bad("redis_url", "redis://", "missing host");
    expect_bad("redis_url", "redis://:6379", "missing host");
    expect_bad("redis_url", "redis://user@host", "credentials are [user]:password@");
    expect_bad("redis_url", "redis://:@host", "empty password");
    expect_bad("redis_url", "redis://host:0", "port not in 1..65535");
    expect_bad("redis_url", "redis://host:65536", "port not in 1..65535");
    expect_bad("redis_url", "redis://host:", "port not in 1..65535");
    expect_bad("redis_url", "redis://host:12345678", "port not in 1..65535");
    expect_bad("redis_url", "redis://host/", "missing database number after '/'");
    expect_bad("redis_url", "redis://host/x", "database is a number 0..999999999");
    expect_bad("redis_url", "redis://host/1/2", "database is a number 0..999999999");
    expect_bad("redis_url", "redis://ho$t", "bad character in the host");
    expect_bad("redis_url", "redis://host 1", "contains a space or control character");
    expect_bad("redis_url", "redis://[::1", "missing ']' after the IPv6 address");
    expect_bad("redis_url", "redis://[zz]:1", "bad IPv6 address");
    expect_bad("redis_url", "redis://[::1]x", "text after the IPv6 address");
    char longurl[300] = "redis://";
    memset(longurl + 8, 'h', 260);
    longurl[268] = '\0';
    expect_bad("redis_url", longurl, "too long");
}

/* ---- the file syntax -------------------------------------------------------- */

static void test_file_syntax(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    const char *text =
        "# a comment\n"
        "\n"
        "   # an indented comment\n"
        "listen=127.0.0.1:7000\n"
        "\tworkers\t=\t3\t# trailing comment\n"
        "stream = chat#1          \n"          /* '#' inside a word is kept */
        "default_room = \"a # b  \"  # quoted keeps '#' and blanks\n"
        "ping_interval = 20s\r\n"             /* CRLF */
        "ping_interval = 25s\n"               /* last one wins */
        "allowed_origins =\n"
        "max_room = 70 #no blank after '#' is fine\n"
        "redis_url = \"redis://:p#w@h\"#comment right after the quote\n"
        "   \r\n"
        "log_level = # only a comment: empty value\n";
    /* log_level's empty value is an error; everything before it applied. */
    assert_int_equal(parse(&cfg, text), -1);
    assert_string_equal(err, "t.conf:14: bad value '' for 'log_level': unknown level "
                             "(expected debug, info, warn or error)");
    assert_string_equal(cfg.bind, "127.0.0.1");
    assert_int_equal(cfg.port, 7000);
    assert_int_equal(cfg.workers, 3);
    assert_string_equal(cfg.stream, "chat#1");
    assert_string_equal(cfg.default_room, "a # b  ");
    assert_int_equal(cfg.ping_interval_ms, 25000);
    assert_int_equal(cfg.n_origins, 0);
    assert_int_equal(cfg.max_room, 70);
    assert_string_equal(cfg.redis_url, "redis://:p#w@h");

    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "default_room = \"say \\\"hi\\\" \\\\o/\"\n"), 0);
    assert_string_equal(cfg.default_room, "say \"hi\" \\o/");
    assert_int_equal(parse(&cfg, "allowed_origins = \"https://a.example https://b.example\""), 0);
    assert_int_equal(cfg.n_origins, 2);
    assert_int_equal(parse(&cfg, "default_room = \"\\n\""), 0); /* other escapes stay */
    assert_string_equal(cfg.default_room, "\\n");
    assert_int_equal(parse(&cfg, "allowed_origins = \"\""), 0);
    assert_int_equal(cfg.n_origins, 0);

    /* Empty text, only blanks, no final newline, a BOM. */
    assert_int_equal(parse(&cfg, ""), 0);
    assert_int_equal(parse(&cfg, "\n\n  \n"), 0);
    assert_int_equal(parse(&cfg, "max_room = 12"), 0);
    assert_int_equal(cfg.max_room, 12);
    assert_int_equal(parse(&cfg, "\xef\xbb\xbfmax_room = 13\n"), 0);
    assert_int_equal(cfg.max_room, 13);
}

static void test_errors(void **state) {
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"workers = 2\n\nnope = 1\n", "t.conf:3: unknown directive 'nope'"},
        {"Listen = 0.0.0.0:5000", "t.conf:1: unknown directive 'Listen'"},
        {"max clients = 5", "t.conf:1: unknown directive 'max'"},
        {"# c\nmax_header_bytes = 8x # c\n",
         "t.conf:2: bad value '8x' for 'max_header_bytes': unknown unit (expected a size "
         "256..1m: bytes or a number with k, m or g)"},
        {"handshake_timeout = 2h",
         "t.conf:1: bad value '2h' for 'handshake_timeout': out of range (expected a duration "
         "100ms..1h: seconds or a number with ms, s, m, h or d)"},
        {"workers = 999",
         "t.conf:1: bad value '999' for 'workers': out of range (expected auto or an integer "
         "1..256)"},
        {"ring_size = 100",
         "t.conf:1: bad value '100' for 'ring_size': not a power of two (expected a power of "
         "two 64..16777216)"},
        {"stream = \"a b\"",
         "t.conf:1: bad value 'a b' for 'stream': contains a space (expected 1..127 bytes "
         "without spaces or control characters)"},
        {"default_room = \"\"",
         "t.conf:1: bad value '' for 'default_room': empty (expected 1..64 bytes of printable "
         "UTF-8)"},
        {"listen = localhost:5000",
         "t.conf:1: bad value 'localhost:5000' for 'listen': not an IPv4 address (expected "
         "ADDRESS:PORT with a numeric address, e.g. 0.0.0.0:5000 or [::]:5000)"},
        {"broker = kafka",
         "t.conf:1: bad value 'kafka' for 'broker': unknown broker (expected local or redis)"},
        {"redis_url = localhost",
         "t.conf:1: bad value (not repeated here) for 'redis_url': must start with redis:// "
         "(expected "
         "redis://[[user]:password@]host[:port][/db])"},
        {"allowed_origins = example.com",
         "t.conf:1: bad value 'example.com' for 'allowed_origins': an origin is "
         "scheme://host[:port] (expected up to 16 origins such as https://chat.example.com, "
         "separated by spaces or commas)"},
        {"listen 0.0.0.0:5000", "t.conf:1: expected 'key = value'"},
        {"\n\nworkers\n", "t.conf:3: expected 'key = value'"},
        {"= 5", "t.conf:1: expected 'key = value'"},
        {"  =", "t.conf:1: expected 'key = value'"},
        {"workers # = 5", "t.conf:1: expected 'key = value'"},
        {"x\n", "t.conf:1: expected 'key = value'"},
        {"stream = \"abc", "t.conf:1: unterminated quoted value for 'stream'"},
        {"stream = \"abc\\\"", "t.conf:1: unterminated quoted value for 'stream'"},
        {"stream = \"abc\" def", "t.conf:1: text after the closing quote of 'stream'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config cfg;
        config_defaults(&cfg);
        assert_int_equal(parse(&cfg, cases[i].text), -1);
        assert_string_equal(err, cases[i].want);
    }

    /* config_set gives the reason without file or line. */
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "nope", "1"), -1);
    assert_string_equal(err, "unknown directive 'nope'");
    assert_int_equal(set(&cfg, "max_room", "x"), -1);
    assert_string_equal(err, "bad value 'x' for 'max_room': not a number (expected an integer 1..256)");

    /* A runaway value is cut in the message; a small buffer is not overrun. */
    char big[300];
    memset(big, '9', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(set(&cfg, "max_room", big), -1);
    assert_non_null(strstr(err, "999...' for 'max_room': out of range"));
    assert_true(strlen(err) < 250);
    char small[16];
    memset(small, 'x', sizeof small);
    assert_int_equal(config_set(&cfg, "nope", "1", small, sizeof small), -1);
    assert_string_equal(small, "unknown directi");
    assert_int_equal(config_set(&cfg, "nope", "1", NULL, 0), -1);

    /* The first error stops the parse. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "max_room = 10\nbad = 1\nmax_room = 20\n"), -1);
    assert_string_equal(err, "t.conf:2: unknown directive 'bad'");
    assert_int_equal(cfg.max_room, 10);
}

/* Review of issue 14: what `chatd -t` lets through that the start then
 * refuses, or takes with another meaning. */
static void test_review14_negative_fraction(void **state) {
    (void)state;
    /* A negative fraction keeps its sign (config.c parse_duration: "-0.5"
     * parses as v = 0, and `if (v < 0) frac = -frac` never fires). */
    expect_bad("shutdown_timeout", "-0.5s", "out of range");
}

static void test_review14_cluster_db(void **state) {
    (void)state;
    config cfg;
    /* A Cluster has only database 0: redis_link_route refuses it at start
     * (redis_link.c:125); the check must say so first. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "broker = redis\nredis_url = redis://127.0.0.1:6379/3\n"
                                 "redis_cluster = 127.0.0.1:7000\n"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
}

static void test_review14_seeds(void **state) {
    (void)state;
    config cfg;
    /* More seeds than redis_link keeps (REDIS_MAX_SEEDS, 16): the start
     * fails with "more than 16 addresses"; config takes 128. */
    config_defaults(&cfg);
    char text[512] = "broker = redis\nredis_cluster = ";
    for (int i = 1; i <= 17; i++) snprintf(text + strlen(text), sizeof text - strlen(text), "10.0.0.%d:7000 ", i);
    strcat(text, "\n");
    if (parse(&cfg, text) == 0 && config_check(&cfg, err, sizeof err) == 0)
        fail_msg("17 cluster seeds pass the check; the start refuses them");
}

static void test_review14_master_name_alone(void **state) {
    (void)state;
    config cfg;
    /* redis_master_name without redis_sentinel is ignored: say so. The rule
     * is in config_warnings' table but tested against broker = local. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "broker = redis\nredis_master_name = mymaster\n"), 0);
    char warnings[512];
    assert_int_equal(config_warnings(&cfg, warnings, sizeof warnings), 1);
}

/* ---- files, environment, cross-checks ------------------------------------- */

static void test_shipped_conf(void **state) {
    (void)state;
    config defaults, cfg;
    config_defaults(&defaults);
    config_defaults(&cfg);
    if (config_load(&cfg, "conf/chatd.conf", err, sizeof err) != 0) fail_msg("%s", err);
    /* It documents the defaults, changes nothing and warns of nothing. */
    char warnings[1024];
    assert_int_equal(config_warnings(&cfg, warnings, sizeof warnings), 0);
    assert_memory_equal(settings(&cfg), &defaults, sizeof cfg);
    assert_int_equal(config_check(&cfg, err, sizeof err), 0);

    /* Every directive of the table is listed, set, in the file. */
    const char *text = slurp("conf/chatd.conf");
    const char *name;
    for (size_t i = 0; (name = config_directive_name(i)) != NULL; i++) {
        char want[64];
        snprintf(want, sizeof want, "\n%s = ", name);
        char bare[64];
        snprintf(bare, sizeof bare, "\n%s =\n", name);
        if (strstr(text, want) == NULL && strstr(text, bare) == NULL)
            fail_msg("conf/chatd.conf does not set '%s'", name);
    }

    /* And every directive there is known, since the file parsed. A zeroed
     * config loaded from it equals the defaults too: the file is complete. */
    config zero;
    memset(&zero, 0, sizeof zero);
    assert_int_equal(config_load(&zero, "conf/chatd.conf", err, sizeof err), 0);
    assert_memory_equal(settings(&zero), &defaults, sizeof zero);
}

/* Every directive of the table is in the man page (as a .TP entry in bold)
 * and in the README's directive table. */
static void test_documented(void **state) {
    (void)state;
    const char *name;
    const char *man = slurp("doc/chatd.8");
    for (size_t i = 0; (name = config_directive_name(i)) != NULL; i++) {
        char want[80];
        snprintf(want, sizeof want, ".TP\n.B %s\n", name);
        if (strstr(man, want) == NULL) fail_msg("doc/chatd.8 does not describe '%s'", name);
    }
    const char *readme = slurp("README.md");
    for (size_t i = 0; (name = config_directive_name(i)) != NULL; i++) {
        char want[80];
        snprintf(want, sizeof want, "\n| `%s` |", name);
        if (strstr(readme, want) == NULL) fail_msg("README.md's table lacks '%s'", name);
    }
}

static void test_load_errors(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(config_load(&cfg, "no/such/chatd.conf", err, sizeof err), -1);
    assert_string_equal(err, "no/such/chatd.conf: cannot open: No such file or directory");

    /* Errors in a real file carry its path and line. */
    char path[] = "/tmp/test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char body[] = "workers = 2\nmax_message = 1t\n";
    assert_int_equal(write(fd, body, sizeof body - 1), (ssize_t)(sizeof body - 1));
    close(fd);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    char want[256];
    snprintf(want, sizeof want,
             "%s:2: bad value '1t' for 'max_message': unknown unit (expected a size 1..64m: "
             "bytes or a number with k, m or g)",
             path);
    assert_string_equal(err, want);
    assert_int_equal(cfg.workers, 2);

    /* A file with a NUL byte is refused rather than half read. */
    fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "workers = 2\n\0x", 14), 14);
    close(fd);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), -1);
    assert_non_null(strstr(err, ": contains a NUL byte"));

    /* A directory opens but cannot be read. */
    assert_int_equal(config_load(&cfg, "/tmp", err, sizeof err), -1);
    assert_string_equal(err, "/tmp: cannot read: Is a directory");
    unlink(path);
}

static void test_env(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    unsetenv("PORT");
    unsetenv("REDIS_URL");
    config before = cfg;
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    assert_memory_equal(&cfg, &before, sizeof cfg);

    setenv("PORT", "5001", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.port, 5001);
    assert_string_equal(cfg.bind, "0.0.0.0");
    assert_int_equal(cfg.broker, BROKER_LOCAL);

    setenv("PORT", "", 1); /* empty counts as unset */
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.port, 5001);

    static const char *const bad_ports[] = {"0", "65536", "abc", "50x", "-1", " 80", "999999"};
    for (size_t i = 0; i < sizeof bad_ports / sizeof bad_ports[0]; i++) {
        setenv("PORT", bad_ports[i], 1);
        assert_int_equal(config_apply_env(&cfg, err, sizeof err), -1);
        char want[96];
        snprintf(want, sizeof want, "PORT: bad value '%s' (expected a port 1..65535)", bad_ports[i]);
        assert_string_equal(err, want);
        assert_int_equal(cfg.port, 5001);
    }
    unsetenv("PORT");

    setenv("REDIS_URL", "redis://10.1.2.3:6390/1", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.redis_url, "redis://10.1.2.3:6390/1");
    assert_int_equal(cfg.broker, BROKER_REDIS);

    config_defaults(&cfg);
    setenv("REDIS_URL", "http://10.1.2.3", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "REDIS_URL: bad value (not repeated here): must start with redis:// "
                             "(expected redis://[[user]:password@]host[:port][/db])");
    setenv("REDIS_URL", "redis://:hunter2@h:0", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), -1);
    assert_null(strstr(err, "hunter2"));
    assert_int_equal(cfg.broker, BROKER_LOCAL);
    assert_string_equal(cfg.redis_url, "redis://127.0.0.1:6379");

    /* Both at once; a later config file line does not undo the environment
     * because main applies the environment after the file. */
    setenv("PORT", "6000", 1);
    setenv("REDIS_URL", "redis://localhost", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    assert_int_equal(cfg.port, 6000);
    assert_string_equal(cfg.redis_url, "redis://localhost");
    assert_int_equal(cfg.broker, BROKER_REDIS);
    unsetenv("PORT");
    unsetenv("REDIS_URL");
}

static void test_check(void **state) {
    (void)state;
    config cfg;

    config_defaults(&cfg);
    cfg.ring_size = 1000; /* filled in code, past the setter */
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "ring_size: 1000 is not a power of two");

    config_defaults(&cfg);
    cfg.workers = 300;
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "workers: 300 is out of range 0..256");

    config_defaults(&cfg);
    cfg.port = 0;
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "listen: port 0 is out of range 1..65535");

    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "default_room = a-rather-long-room-name\nmax_room = 8\n"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "default_room 'a-rather-long-room-name' is 23 bytes, longer than "
                             "max_room (8)");

    /* Slowness is what waits behind the frame being written: a message
     * larger than max_output_buffer is fine. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "max_message = 64m\nmax_output_buffer = 4k\n"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), 0);

    config_defaults(&cfg);
    cfg.log_level = 7;
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "log_level: 7 is not a level");
}

/* ---- log ---------------------------------------------------------------- */

/* Runs fn with stderr sent to a temporary file; returns what it wrote. */
static char *capture_stderr(void (*fn)(void)) {
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn();
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    static char out[8192];
    rewind(tmp);
    size_t n = fread(out, 1, sizeof out - 1, tmp);
    out[n] = '\0';
    fclose(tmp);
    return out;
}

static void log_some(void) {
    log_thread("worker-12345678901234"); /* cut to 15 bytes */
    log_warn("hello %d\nforged line", 42);
    log_debug("not shown at info");
    log_thread("main");
    log_error("bye");
}

static void log_long(void) {
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_info("%s", big);
}

static void test_log(void **state) {
    (void)state;
    assert_int_equal(log_level_parse("debug"), LOG_DEBUG);
    assert_int_equal(log_level_parse("info"), LOG_INFO);
    assert_int_equal(log_level_parse("warn"), LOG_WARN);
    assert_int_equal(log_level_parse("error"), LOG_ERROR);
    assert_int_equal(log_level_parse("WARN"), LOG_WARN);
    assert_int_equal(log_level_parse("trace"), -1);
    assert_int_equal(log_level_parse(""), -1);
    assert_int_equal(log_level_parse(NULL), -1);

    assert_int_equal(log_level, LOG_INFO);
    const char *out = capture_stderr(log_some);
    /* "2026-11-28 17:45:01.123 WARN  [worker-12345678] hello 42 forged line\n" */
    int y, mo, d, h, mi, s, ms;
    char rest[200];
    assert_int_equal(sscanf(out, "%4d-%2d-%2d %2d:%2d:%2d.%3d %199[^\n]", &y, &mo, &d, &h, &mi,
                            &s, &ms, rest),
                     8);
    assert_true(y >= 2024 && mo >= 1 && mo <= 12 && ms >= 0 && ms <= 999);
    assert_int_equal(out[4], '-');
    assert_int_equal(out[19], '.');
    assert_string_equal(rest, "WARN  [worker-12345678] hello 42 forged line");
    const char *second = strchr(out, '\n') + 1;
    assert_int_equal(strlen(second), 23 + strlen(" ERROR [main] bye\n"));
    assert_string_equal(second + 23, " ERROR [main] bye\n");

    out = capture_stderr(log_long);
    assert_int_equal(strlen(out), 2047);
    assert_string_equal(out + 2047 - 4, "...\n");
    assert_non_null(strstr(out, " INFO  [main] xxx"));

    log_level = LOG_ERROR;
    out = capture_stderr(log_long);
    assert_string_equal(out, "");
    log_level = LOG_INFO;
}

static void log_conn_lines(void) {
    log_thread("worker-1");
    log_conn lc = {7, "203.0.113.9:5000", "a \"b\"\n"};
    log_field f[] = {LOG_STR("rooms", "lobby,den"), LOG_INT("bytes_in", 42), LOG_STR("reason", "")};
    log_conn_fields(LOG_INFO, &lc, f, 3, "close");
    log_thread("main");
}

static void log_long_json(void) {
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    log_conn lc = {1, "::1", big};
    log_field f[] = {LOG_STR("rooms", big), LOG_STR("reason", big)};
    log_conn_fields(LOG_INFO, &lc, f, 2, "%s\"\\", big);
}

/* Connection lines and log_format = json: fields after the message, user
 * names quoted, one line per event whatever they hold. */
static void test_log_fields(void **state) {
    (void)state;
    const char *out = capture_stderr(log_conn_lines);
    const char *m = strstr(out, " INFO  [worker-1] ");
    assert_non_null(m);
    assert_string_equal(m, " INFO  [worker-1] conn 7 203.0.113.9:5000 \"a \\\"b\\\" \": close "
                           "rooms=lobby,den bytes_in=42 reason=\"\"\n");

    log_format = LOG_JSON;
    out = capture_stderr(log_conn_lines);
    /* {"ts":"2026-11-28T17:45:01.123Z","level":"info",... */
    assert_int_equal(strncmp(out, "{\"ts\":\"", 7), 0);
    assert_int_equal(out[17], 'T');
    assert_int_equal(out[30], 'Z');
    assert_string_equal(out + 31, "\",\"level\":\"info\",\"thread\":\"worker-1\",\"msg\":\"close\","
                                  "\"conn\":7,\"addr\":\"203.0.113.9:5000\",\"user\":\"a \\\"b\\\"\\u000a\","
                                  "\"rooms\":\"lobby,den\",\"bytes_in\":42,\"reason\":\"\"}\n");
    /* Too long: every string is cut, and the line is still one object. */
    out = capture_stderr(log_long_json);
    size_t n = strlen(out);
    assert_true(n <= 2047);
    assert_string_equal(out + n - 2, "}\n");
    assert_non_null(strstr(out, "\"reason\":\"xxx"));
    assert_non_null(strstr(out, "...\"}\n"));
    assert_null(strchr(out, '\n') + 1 == out + n ? NULL : out);
    log_format = LOG_TEXT;
}

static void test_tls(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(cfg.tls_port, 0); /* off by default */
    assert_int_equal(cfg.tls_min_version, 0x0303);
    assert_int_equal(set(&cfg, "tls_listen", "127.0.0.1:5443"), 0);
    assert_string_equal(cfg.tls_bind, "127.0.0.1");
    assert_int_equal(cfg.tls_port, 5443);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "tls_listen needs tls_cert and tls_key"));
    assert_int_equal(set(&cfg, "tls_cert", "/tmp/c.pem"), 0);
    assert_int_equal(set(&cfg, "tls_key", "/tmp/k.pem"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), 0);
    assert_int_equal(set(&cfg, "tls_min_version", "1.3"), 0);
    assert_int_equal(cfg.tls_min_version, 0x0304);
    expect_bad("tls_min_version", "1.1", "TLS 1.0 and 1.1 are never offered");
    expect_bad("tls_min_version", "1.0", "TLS 1.0 and 1.1 are never offered");
    assert_int_equal(set(&cfg, "tls_listen", "nowhere"), -1);
    assert_non_null(strstr(err, "bad value 'nowhere' for 'tls_listen'"));
    assert_int_equal(set(&cfg, "tls_listen", ""), 0);
    assert_int_equal(cfg.tls_port, 0);
}

/* trusted_proxies, proxy_protocol, log_format and access_log (issue 15). */
static void test_net_ops(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(cfg.n_trusted_proxies, 0);
    assert_int_equal(cfg.proxy_protocol, 0);
    assert_int_equal(cfg.log_format, LOG_TEXT);
    assert_int_equal(cfg.access_log, 1);

    assert_int_equal(set(&cfg, "trusted_proxies", "127.0.0.1, 10.0.0.0/8 ::1 2001:db8::/32"), 0);
    assert_int_equal(cfg.n_trusted_proxies, 4);
    uint8_t ip[16];
    assert_int_equal(proxy_parse_ip("10.20.30.40", 11, ip), 0);
    assert_true(proxy_trusted(cfg.trusted_proxies, cfg.n_trusted_proxies, ip));
    assert_int_equal(proxy_parse_ip("11.0.0.1", 8, ip), 0);
    assert_false(proxy_trusted(cfg.trusted_proxies, cfg.n_trusted_proxies, ip));
    assert_int_equal(set(&cfg, "trusted_proxies", ""), 0);
    assert_int_equal(cfg.n_trusted_proxies, 0);
    expect_bad("trusted_proxies", "lb.example.com", "not a numeric IPv4 or IPv6 address");
    expect_bad("trusted_proxies", "10.0.0.0/40", "prefix length too long for the address");

    assert_int_equal(set(&cfg, "log_format", "json"), 0);
    assert_int_equal(cfg.log_format, LOG_JSON);
    expect_bad("log_format", "xml", "unknown format");
    assert_int_equal(set(&cfg, "access_log", "off"), 0);
    assert_int_equal(cfg.access_log, 0);

    /* PROXY headers trusted from no one would refuse every client. */
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "proxy_protocol", "on"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "proxy_protocol needs trusted_proxies"));
    assert_int_equal(set(&cfg, "trusted_proxies", "127.0.0.1"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), 0);
    /* Per listener: ws, wss, or on for both. */
    assert_int_equal(set(&cfg, "proxy_protocol", "ws"), 0);
    assert_int_equal(cfg.proxy_protocol, PROXY_ON_WS);
    assert_int_equal(set(&cfg, "proxy_protocol", "wss"), 0);
    assert_int_equal(cfg.proxy_protocol, PROXY_ON_WSS);
    assert_int_equal(set(&cfg, "proxy_protocol", "on"), 0);
    assert_int_equal(cfg.proxy_protocol, PROXY_ON_WS | PROXY_ON_WSS);
    expect_bad("proxy_protocol", "yes", "unknown value");
}

/* permessage_deflate and compression_min_size (issue 16): both reload. */
static void test_compression(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(cfg.permessage_deflate, 1);
    assert_int_equal(cfg.compression_min_size, 64);
    assert_int_equal(set(&cfg, "permessage_deflate", "off"), 0);
    assert_int_equal(cfg.permessage_deflate, 0);
    assert_int_equal(set(&cfg, "permessage_deflate", "on"), 0);
    assert_int_equal(cfg.permessage_deflate, 1);
    assert_int_equal(set(&cfg, "compression_min_size", "0"), 0);
    assert_int_equal(cfg.compression_min_size, 0);
    assert_int_equal(set(&cfg, "compression_min_size", "1k"), 0);
    assert_int_equal(cfg.compression_min_size, 1024);
    assert_int_equal(set(&cfg, "compression_min_size", "64m"), 0);
    assert_int_equal(cfg.compression_min_size, 64 << 20);
    expect_bad("permessage_deflate", "yes", "neither on nor off");
    expect_bad("compression_min_size", "65m", "out of range");
    expect_bad("compression_min_size", "-1", "out of range");
    expect_bad("compression_min_size", "big", "not a number");
    assert_int_equal(config_reloadable("permessage_deflate"), 1);
    assert_int_equal(config_reloadable("compression_min_size"), 1);

    char buf[64];
    assert_int_equal(parse(&cfg, "permessage_deflate = off\ncompression_min_size = 2k\n"), 0);
    assert_int_equal(config_value(&cfg, "permessage_deflate", buf, sizeof buf), 0);
    assert_string_equal(buf, "off");
    assert_int_equal(config_value(&cfg, "compression_min_size", buf, sizeof buf), 0);
    assert_string_equal(buf, "2k");

    /* A reload applies both. */
    config running, next;
    config_changes ch;
    config_defaults(&running);
    config_merge(&running, &cfg, &next, &ch);
    assert_int_equal(next.permessage_deflate, 0);
    assert_int_equal(next.compression_min_size, 2048);
    assert_int_equal(ch.nrestart, 0);
}

/* ---- issue 15: nginx's spellings, paths, conflicts, warnings, secrets ---- */

static void test_tls_version_spellings(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "tls_min_version", "TLSv1.3"), 0);
    assert_int_equal(cfg.tls_min_version, 0x0304);
    assert_int_equal(set(&cfg, "tls_min_version", "TLSv1.2"), 0);
    assert_int_equal(cfg.tls_min_version, 0x0303);
    assert_int_equal(set(&cfg, "tls_min_version", "tlsv1.3"), 0);
    assert_int_equal(cfg.tls_min_version, 0x0304);
    expect_bad("tls_min_version", "TLSv1.1", "TLS 1.0 and 1.1 are never offered");
    expect_bad("tls_min_version", "TLSv1", "TLS 1.0 and 1.1 are never offered");
    expect_bad("tls_min_version", "1.4", "not a TLS version");
    expect_bad("tls_min_version", "TLSv1.3 TLSv1.2", "not a TLS version");
    expect_bad("tls_min_version", "SSLv3", "not a TLS version");
}

/* A directory with a config file in it; returns its path. */
static const char *conf_dir(const char *text) {
    static char dir[] = "/tmp/chatd-test-config-XXXXXX";
    strcpy(dir, "/tmp/chatd-test-config-XXXXXX");
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/chatd.conf", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return dir;
}

static void rm_dir(const char *dir) {
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_relative_paths(void **state) {
    (void)state;
    const char *dir = conf_dir("tls_cert = cert.pem\ntls_key = keys/key.pem\n"
                               "redis_password_file = ../pw\nbroker = redis\n");
    char path[160], want[256];
    snprintf(path, sizeof path, "%s/chatd.conf", dir);
    config cfg;
    config_defaults(&cfg);
    /* Loaded from anywhere: the working directory plays no part. */
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir("/"), 0);
    int rc = config_load(&cfg, path, err, sizeof err);
    assert_int_equal(chdir(cwd), 0);
    if (rc != 0) fail_msg("%s", err);
    snprintf(want, sizeof want, "%s/cert.pem", dir);
    assert_string_equal(cfg.tls_cert, want);
    snprintf(want, sizeof want, "%s/keys/key.pem", dir);
    assert_string_equal(cfg.tls_key, want);
    snprintf(want, sizeof want, "%s/../pw", dir);
    assert_string_equal(cfg.redis_password_file, want);
    rm_dir(dir);

    /* Absolute paths stay; text that is no file (config_parse) keeps its paths. */
    dir = conf_dir("tls_cert = /etc/ssl/c.pem\n");
    snprintf(path, sizeof path, "%s/chatd.conf", dir);
    config_defaults(&cfg);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), 0);
    assert_string_equal(cfg.tls_cert, "/etc/ssl/c.pem");
    rm_dir(dir);
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "tls_cert = c.pem\n"), 0);
    assert_string_equal(cfg.tls_cert, "c.pem");
}

static void test_listener_conflicts(void **state) {
    (void)state;
    config cfg;
    static const struct {
        const char *listen, *tls_listen;
        int ok;
    } cases[] = {
        {"0.0.0.0:5000", "0.0.0.0:5000", 0},   {"0.0.0.0:5000", "127.0.0.1:5000", 0},
        {"127.0.0.1:5000", "[::]:5000", 0},    {"127.0.0.1:5000", "127.0.0.1:5000", 0},
        {"127.0.0.1:5000", "127.0.0.2:5000", 1}, {"0.0.0.0:5000", "0.0.0.0:5443", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        config_defaults(&cfg);
        assert_int_equal(set(&cfg, "listen", cases[i].listen), 0);
        assert_int_equal(set(&cfg, "tls_listen", cases[i].tls_listen), 0);
        assert_int_equal(set(&cfg, "tls_cert", "/c"), 0);
        assert_int_equal(set(&cfg, "tls_key", "/k"), 0);
        int rc = config_check(&cfg, err, sizeof err);
        if (cases[i].ok ? rc != 0 : rc != -1)
            fail_msg("%s and %s: rc %d (%s)", cases[i].listen, cases[i].tls_listen, rc, err);
        if (!cases[i].ok) assert_non_null(strstr(err, "listen and tls_listen are both on port 5000"));
    }
    /* PORT in the environment can make them meet too: checked after it. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "tls_listen = 0.0.0.0:5443\ntls_cert = /c\ntls_key = /k\n"), 0);
    setenv("PORT", "5443", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    unsetenv("PORT");
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "port 5443"));
}

static int warnings(const char *text, char *out, size_t len) {
    config cfg;
    config_defaults(&cfg);
    if (parse(&cfg, text) != 0) fail_msg("%s", err);
    return config_warnings(&cfg, out, len);
}

static void test_ignored_settings(void **state) {
    (void)state;
    char w[1024];
    assert_int_equal(warnings("tls_cert = /c.pem\ntls_key = /k.pem\n", w, sizeof w), 2);
    assert_non_null(strstr(w, "t.conf:1: tls_cert is ignored: tls_listen is empty"));
    assert_non_null(strstr(w, "\nt.conf:2: tls_key is ignored: tls_listen is empty"));
    assert_int_equal(warnings("tls_min_version = TLSv1.3\n", w, sizeof w), 1);
    assert_int_equal(warnings("tls_listen = 127.0.0.1:5443\ntls_cert = /c\ntls_key = /k\n", w,
                              sizeof w), 0);

    assert_int_equal(warnings("\nredis_url = redis://10.0.0.5:6379\n", w, sizeof w), 1);
    assert_non_null(strstr(w, "t.conf:2: redis_url is ignored: broker = local"));
    assert_int_equal(warnings("redis_password = x\nstream = s\n", w, sizeof w), 2);
    assert_int_equal(warnings("broker = redis\nredis_url = redis://10.0.0.5\n", w, sizeof w), 0);
    /* Set to its default, as the shipped file does: nothing is ignored. */
    assert_int_equal(warnings("redis_url = redis://127.0.0.1:6379\ntls_cert =\n", w, sizeof w), 0);

    assert_int_equal(warnings("rate_burst = 40\n", w, sizeof w), 1);
    assert_non_null(strstr(w, "rate_burst is ignored: rate_limit = 0"));
    assert_int_equal(warnings("rate_limit = 20\nrate_burst = 40\n", w, sizeof w), 0);

    /* REDIS_URL in the environment selects the Redis broker: nothing ignored. */
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "redis_url = redis://10.0.0.5\n"), 0);
    setenv("REDIS_URL", "redis://10.0.0.6", 1);
    assert_int_equal(config_apply_env(&cfg, err, sizeof err), 0);
    unsetenv("REDIS_URL");
    assert_int_equal(config_warnings(&cfg, w, sizeof w), 0);
}

static void test_redis_passwords(void **state) {
    (void)state;
    config cfg;
    /* Percent-encoded credentials are valid; a bad escape is not. */
    config_defaults(&cfg);
    assert_int_equal(set(&cfg, "redis_url", "redis://u:p%40ss%3Aw%2Frd@h:6379"), 0);
    expect_bad("redis_url", "redis://:pa%zzss@h", "'%' in the user or password is not followed "
                                                 "by two hex digits");
    /* A malformed URL, a secret: never echoed. */
    assert_int_equal(set(&cfg, "redis_url", "redis://:hunter2@host:99999"), -1);
    assert_null(strstr(err, "hunter2"));
    assert_int_equal(set(&cfg, "redis_url", "redis://:hunter2host"), -1);
    assert_null(strstr(err, "hunter2"));
    char long_secret[300];
    memset(long_secret, 'S', sizeof long_secret - 1);
    long_secret[sizeof long_secret - 1] = '\0';
    assert_int_equal(set(&cfg, "auth_secret", long_secret), -1);
    assert_null(strstr(err, "SSSS"));
    assert_int_equal(set(&cfg, "redis_password", long_secret), -1);
    assert_null(strstr(err, "SSSS"));

    /* Given twice: an error. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "redis_password = a\nredis_password_file = /p\n"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_string_equal(err, "redis_password and redis_password_file are both set: give one");
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "redis_url = redis://:a@h\nredis_password = b\n"), 0);
    assert_int_equal(config_check(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_url has a password and redis_password is set"));

    /* The password in effect: the directive, or the file's first line. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "broker = redis\nredis_password = p@ss:w/rd\n"), 0);
    assert_int_equal(config_load_secrets(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.redis_pass, "p@ss:w/rd");
    const char *dir = conf_dir("broker = redis\nredis_password_file = pw\n");
    char path[160];
    snprintf(path, sizeof path, "%s/pw", dir);
    FILE *f = fopen(path, "w");
    fputs("from file\nsecond line\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/chatd.conf", dir);
    config_defaults(&cfg);
    assert_int_equal(config_load(&cfg, path, err, sizeof err), 0);
    assert_int_equal(config_load_secrets(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.redis_pass, "from file");
    snprintf(path, sizeof path, "%s/pw", dir);
    unlink(path);
    assert_int_equal(config_load_secrets(&cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "redis_password_file"));
    assert_non_null(strstr(err, "/pw: cannot open"));
    rm_dir(dir);
    /* With the local broker the file is not read (the warning says so). */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "redis_password_file = /no/such/file\n"), 0);
    assert_int_equal(config_load_secrets(&cfg, err, sizeof err), 0);
}

static char *dump(const config *cfg) {
    static char *text;
    size_t len;
    free(text);
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    config_dump(cfg, f);
    fclose(f);
    return text;
}

static void test_dump(void **state) {
    (void)state;
    config cfg, again;
    /* Every directive, and read back it is the same config. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "workers = 3\nmax_message = 1500\nping_interval = 250ms\n"
                                 "allowed_origins = https://a.example, null\nweb = off\n"
                                 "listen = [::1]:7000\ntls_listen = 127.0.0.1:7443\n"
                                 "tls_cert = /c d.pem\ntls_key = /k#.pem\nlog_level = warn\n"
                                 "tls_min_version = TLSv1.3\nbroker = redis\n"
                                 "default_room = \"the \\\"hall\\\"\"\n"),
                     0);
    char *text = dump(&cfg);
    const char *name;
    for (size_t i = 0; (name = config_directive_name(i)) != NULL; i++) {
        char want[80];
        snprintf(want, sizeof want, "%s%s = ", i ? "\n" : "", name);
        if (strstr(text, want) == NULL) fail_msg("the dump lacks %s:\n%s", name, text);
    }
    assert_non_null(strstr(text, "\nworkers = 3\n"));
    assert_int_equal(strncmp(text, "listen = [::1]:7000\n", 20), 0);
    assert_non_null(strstr(text, "\ntls_cert = \"/c d.pem\"\n"));
    config_defaults(&again);
    if (parse(&again, text) != 0) fail_msg("%s\n%s", err, text);
    assert_memory_equal(settings(&again), settings(&cfg), sizeof cfg);

    /* Secrets masked: auth_secret, redis_password, the URL's password. */
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "auth_secret = \"s3cret value\"\nredis_password = hunter2\n"
                                 "redis_url = redis://bob:pa%40ss@10.0.0.5:6380/2\n"),
                     0);
    text = dump(&cfg);
    assert_null(strstr(text, "s3cret"));
    assert_null(strstr(text, "hunter2"));
    assert_null(strstr(text, "pa%40ss"));
    assert_non_null(strstr(text, "\nauth_secret = ********\n"));
    assert_non_null(strstr(text, "\nredis_password = ********\n"));
    assert_non_null(strstr(text, "\nredis_url = redis://bob:********@10.0.0.5:6380/2\n"));
}

/* -T prints the new directives as the file would say them. */
static void test_dump_net_ops(void **state) {
    (void)state;
    config cfg, again;
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "trusted_proxies = 10.1.2.3/8, ::1 192.0.2.7 2001:db8::/32\n"
                                 "proxy_protocol = on\nlog_format = json\naccess_log = off\n"),
                     0);
    char *text = dump(&cfg);
    assert_non_null(strstr(text, "\ntrusted_proxies = 10.0.0.0/8 ::1 192.0.2.7 2001:db8::/32\n"));
    assert_non_null(strstr(text, "\nproxy_protocol = on\n"));
    assert_non_null(strstr(text, "\nlog_format = json\n"));
    assert_non_null(strstr(text, "\naccess_log = off\n"));
    config_defaults(&again);
    if (parse(&again, text) != 0) fail_msg("%s\n%s", err, text);
    assert_memory_equal(settings(&again), settings(&cfg), sizeof cfg);
}

/* True if name is among the n names of list. */
static int has(const char *const *list, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (strcmp(list[i], name) == 0) return 1;
    return 0;
}

static void test_merge(void **state) {
    (void)state;
    static config running, fresh, next;
    static config_changes ch;
    config_defaults(&running);
    assert_int_equal(parse(&running, "listen = 127.0.0.1:7000\nworkers = 2\nrate_limit = 5\n"
                                     "auth_secret = old\nhistory_size = 10\n"),
                     0);

    /* The same file again: nothing changes, next is running. */
    config_defaults(&fresh);
    assert_int_equal(parse(&fresh, "listen = 127.0.0.1:7000\nworkers = 2\nrate_limit = 5\n"
                                   "auth_secret = old\nhistory_size = 10\n"),
                     0);
    config_merge(&running, &fresh, &next, &ch);
    assert_int_equal(ch.nchanged, 0);
    assert_int_equal(ch.nrestart, 0);
    assert_memory_equal(&next, &running, sizeof next);

    /* Reloadable directives are taken, the others kept and reported. */
    config_defaults(&fresh);
    assert_int_equal(parse(&fresh, "listen = 127.0.0.1:7001\nworkers = 3\nrate_limit = 7\n"
                                   "auth_secret = new\nauth_secret_previous = old\n"
                                   "allowed_origins = http://a.example, http://b.example\n"
                                   "log_level = debug\nmax_message = 1k\nhistory_size = 20\n"
                                   "broker = redis\nring_size = 1024\n"),
                     0);
    config_merge(&running, &fresh, &next, &ch);
    const char *changed[] = {"rate_limit", "auth_secret", "auth_secret_previous",
                             "allowed_origins", "log_level", "max_message"};
    const char *restart[] = {"listen", "workers", "history_size", "broker", "ring_size"};
    assert_int_equal(ch.nchanged, sizeof changed / sizeof changed[0]);
    assert_int_equal(ch.nrestart, sizeof restart / sizeof restart[0]);
    for (size_t i = 0; i < sizeof changed / sizeof changed[0]; i++)
        if (!has(ch.changed, ch.nchanged, changed[i])) fail_msg("%s not applied", changed[i]);
    for (size_t i = 0; i < sizeof restart / sizeof restart[0]; i++)
        if (!has(ch.restart, ch.nrestart, restart[i])) fail_msg("%s not kept", restart[i]);
    assert_int_equal(next.rate_limit, 7);
    assert_string_equal(next.auth_secret, "new");
    assert_string_equal(next.auth_secret_previous, "old");
    assert_int_equal(next.n_origins, 2);
    assert_string_equal(next.allowed_origins[1], "http://b.example");
    assert_int_equal(next.log_level, LOG_DEBUG);
    assert_int_equal(next.max_message, 1024);
    assert_int_equal(next.port, 7000); /* restart-only: the running values */
    assert_int_equal(next.workers, 2);
    assert_int_equal(next.history_size, 10);
    assert_int_equal(next.broker, BROKER_LOCAL);
    assert_int_equal(next.ring_size, running.ring_size);
    assert_int_equal(config_check(&next, err, sizeof err), 0);

    /* Fewer origins: the list shrinks; an emptied secret counts as a change. */
    static config after;
    config_defaults(&fresh);
    assert_int_equal(parse(&fresh, "listen = 127.0.0.1:7000\nworkers = 2\nrate_limit = 7\n"
                                   "auth_secret = new\nallowed_origins = http://a.example\n"
                                   "log_level = debug\nmax_message = 1k\nhistory_size = 10\n"),
                     0);
    config_merge(&next, &fresh, &after, &ch);
    assert_int_equal(ch.nchanged, 2);
    assert_true(has(ch.changed, ch.nchanged, "auth_secret_previous"));
    assert_true(has(ch.changed, ch.nchanged, "allowed_origins"));
    assert_int_equal(ch.nrestart, 0);
    assert_int_equal(after.n_origins, 1);
    assert_string_equal(after.auth_secret_previous, "");

    /* Every directive is judged, and the judgement is what config_reloadable says. */
    const char *name;
    for (size_t i = 0; (name = config_directive_name(i)) != NULL; i++)
        assert_true(config_reloadable(name) == 0 || config_reloadable(name) == 1);
    assert_int_equal(config_reloadable("no_such"), -1);
    assert_int_equal(config_reloadable("stream"), 0);
    assert_int_equal(config_reloadable("tls_cert"), 1);

    /* Values for the log: as the file says them, secrets masked. */
    char buf[256];
    assert_int_equal(config_value(&next, "auth_secret", buf, sizeof buf), 0);
    assert_string_equal(buf, "********");
    assert_int_equal(config_value(&next, "max_message", buf, sizeof buf), 0);
    assert_string_equal(buf, "1k");
    assert_int_equal(config_value(&next, "allowed_origins", buf, sizeof buf), 0);
    assert_string_equal(buf, "http://a.example, http://b.example");
    assert_int_equal(config_value(&running, "auth_secret_previous", buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    assert_int_equal(config_value(&next, "no_such", buf, sizeof buf), -1);
}

/* A key without '=' is all one "directive": only its first word is echoed,
 * so that "auth_secret s3cret" does not put the secret in a log. */
static void test_unknown_key_hides_the_rest(void **state) {
    (void)state;
    config cfg;
    config_defaults(&cfg);
    assert_int_equal(parse(&cfg, "auth_secret c2VjcmV0IGtleQ==\n"), -1); /* nginx style */
    assert_non_null(strstr(err, "unknown directive 'auth_secret'"));
    assert_null(strstr(err, "c2Vj"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),  cmocka_unit_test(test_sizes),
        cmocka_unit_test(test_durations), cmocka_unit_test(test_listen),
        cmocka_unit_test(test_ints),      cmocka_unit_test(test_origins),
        cmocka_unit_test(test_strings),   cmocka_unit_test(test_enums),
        cmocka_unit_test(test_redis_url), cmocka_unit_test(test_file_syntax),
        cmocka_unit_test(test_errors),    cmocka_unit_test(test_shipped_conf),
        cmocka_unit_test(test_documented),
        cmocka_unit_test(test_tls_version_spellings), cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_listener_conflicts), cmocka_unit_test(test_ignored_settings),
        cmocka_unit_test(test_redis_passwords), cmocka_unit_test(test_dump),
        cmocka_unit_test(test_load_errors), cmocka_unit_test(test_env),
        cmocka_unit_test(test_check),     cmocka_unit_test(test_log),
        cmocka_unit_test(test_tls),       cmocka_unit_test(test_net_ops),
        cmocka_unit_test(test_log_fields), cmocka_unit_test(test_dump_net_ops),
        cmocka_unit_test(test_merge),     cmocka_unit_test(test_unknown_key_hides_the_rest),
        cmocka_unit_test(test_compression),
        cmocka_unit_test(test_review14_negative_fraction), cmocka_unit_test(test_review14_cluster_db),
        cmocka_unit_test(test_review14_seeds), cmocka_unit_test(test_review14_master_name_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
