/* log — one line per event on stderr: time with milliseconds, level,
 * thread, message, and for events about something (a connection) its
 * fields. The level is checked before anything is formatted.
 * Any thread may log; each thread names itself once with log_thread().
 *
 * log_format = text: "TIME LEVEL [thread] message key=value ...".
 * log_format = json: one object per line, {"ts","level","thread","msg"}
 * and the fields as members, for log shippers.
 */
#ifndef CHATD_LOG_H
#define CHATD_LOG_H

#include <stdatomic.h>
#include <stddef.h>

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };
enum { LOG_TEXT = 0, LOG_JSON = 1 };

/* Set by main at start and on SIGHUP; every thread reads it. Relaxed: it
 * orders nothing, a line is merely logged or not. */
extern _Atomic int log_level;
extern int log_format; /* set by main before other threads start */

/* Names the calling thread in its log lines ("main", "worker-1", ...). */
void log_thread(const char *name);

/* Parses "debug", "info", "warn" or "error"; returns the level or -1. */
int log_level_parse(const char *s);

/* Parses "text" or "json"; returns LOG_TEXT, LOG_JSON or -1. */
int log_format_parse(const char *s);

/* A field of a line: a string (s not NULL) or an integer (s NULL). */
typedef struct log_field {
    const char *key;
    const char *s;
    long long i;
} log_field;

static inline const char *log_nonnull(const char *s) { return s ? s : ""; }
#define LOG_STR(k, v) ((log_field){(k), log_nonnull(v), 0})
#define LOG_INT(k, v) ((log_field){(k), NULL, (long long)(v)})

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* log_write with fields f[0..n) after the message. */
void log_fields(int level, const log_field *f, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* What names a connection in its lines: text puts "conn ID ADDR USER: "
 * before the message, json the members conn, addr and user. */
typedef struct log_conn {
    unsigned long long id;
    const char *addr;
    const char *user;
} log_conn;

/* log_fields about connection lc. */
void log_conn_fields(int level, const log_conn *lc, const log_field *f, size_t n, const char *fmt,
                     ...) __attribute__((format(printf, 5, 6)));

#define LOG(level, ...)                                                                            \
    do {                                                                                           \
        if ((level) >= atomic_load_explicit(&log_level, memory_order_relaxed))                     \
            log_write((level), __VA_ARGS__);                                                       \
    } while (0)
#define log_debug(...) LOG(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) LOG(LOG_INFO, __VA_ARGS__)
#define log_warn(...) LOG(LOG_WARN, __VA_ARGS__)
#define log_error(...) LOG(LOG_ERROR, __VA_ARGS__)

#endif
