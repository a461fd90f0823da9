/* log — one line per event on stderr: time with milliseconds, level,
 * thread, message. The level is checked before anything is formatted.
 * Any thread may log; each thread names itself once with log_thread().
 */
#ifndef CHATD_LOG_H
#define CHATD_LOG_H

#include <stdatomic.h>

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Set by main at start and on SIGHUP; every thread reads it. Relaxed: it
 * orders nothing, a line is merely logged or not. */
extern _Atomic int log_level;

/* Names the calling thread in its log lines ("main", "worker-1", ...). */
void log_thread(const char *name);

/* Parses "debug", "info", "warn" or "error"; returns the level or -1. */
int log_level_parse(const char *s);

void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

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
