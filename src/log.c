/* log — one line per event on stderr (see log.h).
 *
 * Each line is built in a stack buffer and handed to the kernel with one
 * write(2): smaller than PIPE_BUF, so lines from different threads never
 * interleave even when stderr is a pipe. Times are UTC, so lines from
 * nodes on different machines sort together.
 */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

_Atomic int log_level = LOG_INFO;
/* Set by main before other threads start; read-only afterwards. */
int log_format = LOG_TEXT;

static _Thread_local char thread_name[16] = "main";

/* Longer lines are cut, ending in "...". Stays below PIPE_BUF (4096). */
#define LOG_LINE_MAX 2048

static const char *const level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void log_thread(const char *name) {
    snprintf(thread_name, sizeof thread_name, "%s", name != NULL ? name : "?");
}

int log_level_parse(const char *s) {
    if (s == NULL) return -1;
    for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
        if (strcasecmp(s, level_names[i]) == 0) return i;
    return -1;
}

int log_format_parse(const char *s) {
    if (s == NULL) return -1;
    if (strcmp(s, "text") == 0) return LOG_TEXT;
    if (strcmp(s, "json") == 0) return LOG_JSON;
    return -1;
}

/* Appends to line[*len..cap) as far as it fits. */
static void put(char *line, size_t cap, size_t *len, const char *s, size_t n) {
    if (n > cap - *len) n = cap - *len;
    memcpy(line + *len, s, n);
    *len += n;
}

/* A JSON string with its quotes, of at most max bytes of s (cut at a
 * character boundary, ending in "..."): control characters escaped, so a
 * user name cannot forge a field or a line. */
static void put_json(char *line, size_t cap, size_t *len, const char *s, size_t max) {
    static const char hex[] = "0123456789abcdef";
    size_t n = strlen(s), cut = 0;
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80) n--;
        cut = 1;
    }
    put(line, cap, len, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(line, cap, len, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(line, cap, len, e, 6);
        } else {
            put(line, cap, len, (const char *)&c, 1);
        }
    }
    if (cut) put(line, cap, len, "...", 3);
    put(line, cap, len, "\"", 1);
}

/* The JSON line into line[0..cap), strings cut to max bytes each. Returns
 * its length; > cap - 1 means it did not fit. */
static size_t json_line(char *line, size_t cap, int level, const char *when, const char *msg,
                        const log_conn *lc, const log_field *f, size_t nf, size_t max) {
    static const char *const lower[] = {"debug", "info", "warn", "error"};
    size_t len = 0;
    char num[40];
    put(line, cap, &len, "{\"ts\":", 6);
    put_json(line, cap, &len, when, max);
    put(line, cap, &len, ",\"level\":", 9);
    put_json(line, cap, &len, lower[level], max);
    put(line, cap, &len, ",\"thread\":", 10);
    put_json(line, cap, &len, thread_name, max);
    put(line, cap, &len, ",\"msg\":", 7);
    put_json(line, cap, &len, msg, max);
    if (lc) {
        int k = snprintf(num, sizeof num, ",\"conn\":%llu", lc->id);
        put(line, cap, &len, num, (size_t)k);
        put(line, cap, &len, ",\"addr\":", 8);
        put_json(line, cap, &len, lc->addr, max);
        put(line, cap, &len, ",\"user\":", 8);
        put_json(line, cap, &len, lc->user, max);
    }
    for (size_t i = 0; i < nf; i++) {
        put(line, cap, &len, ",", 1);
        put_json(line, cap, &len, f[i].key, max);
        put(line, cap, &len, ":", 1);
        if (f[i].s) {
            put_json(line, cap, &len, f[i].s, max);
        } else {
            int k = snprintf(num, sizeof num, "%lld", f[i].i);
            put(line, cap, &len, num, (size_t)k);
        }
    }
    put(line, cap, &len, "}", 1);
    return len;
}

/* A text field's value: bare when it is one plain word, else quoted with
 * '"' and '\' escaped (control characters become spaces below). */
static void put_text_value(char *line, size_t cap, size_t *len, const char *s) {
    int bare = *s != '\0';
    for (const char *p = s; *p && bare; p++)
        if (*p == ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p < 0x20) bare = 0;
    if (bare) {
        put(line, cap, len, s, strlen(s));
        return;
    }
    put(line, cap, len, "\"", 1);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') put(line, cap, len, "\\", 1);
        put(line, cap, len, s, 1);
    }
    put(line, cap, len, "\"", 1);
}

static void log_vwrite(int level, const log_conn *lc, const log_field *f, size_t nf,
                       const char *fmt, va_list ap) {
    char msg[LOG_LINE_MAX], line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (level < LOG_DEBUG) level = LOG_DEBUG;
    if (level > LOG_ERROR) level = LOG_ERROR;
    if (vsnprintf(msg, sizeof msg, fmt, ap) < 0) msg[0] = '\0';

    char when[96], num[40];
    snprintf(when, sizeof when, "%04d-%02d-%02d%c%02d:%02d:%02d.%03ld%s", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, log_format == LOG_JSON ? 'T' : ' ', tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, log_format == LOG_JSON ? "Z" : "");
    size_t cap = LOG_LINE_MAX - 2, len = 0; /* as before: at most 2047 bytes with the newline */
    if (log_format == LOG_JSON) {
        /* Too long: every string shorter, so the line stays one object. */
        static const size_t max[] = {LOG_LINE_MAX, 256, 48};
        for (size_t k = 0; k < sizeof max / sizeof max[0]; k++)
            if ((len = json_line(line, cap, level, when, msg, lc, f, nf > 16 ? 16 : nf, max[k])) < cap)
                break;
        if (len >= cap) return;
    } else {
        int n = snprintf(line, cap, "%s %-5s [%s] ", when, level_names[level], thread_name);
        if (n < 0) return;
        len = (size_t)n;
        if (lc) {
            int k = snprintf(num, sizeof num, "conn %llu ", lc->id);
            put(line, cap, &len, num, (size_t)k);
            put(line, cap, &len, lc->addr, strlen(lc->addr));
            put(line, cap, &len, " ", 1);
            put_text_value(line, cap, &len, lc->user);
            put(line, cap, &len, ": ", 2);
        }
        put(line, cap, &len, msg, strlen(msg));
        for (size_t i = 0; i < nf; i++) {
            put(line, cap, &len, " ", 1);
            put(line, cap, &len, f[i].key, strlen(f[i].key));
            put(line, cap, &len, "=", 1);
            if (f[i].s) {
                put_text_value(line, cap, &len, f[i].s);
            } else {
                int k = snprintf(num, sizeof num, "%lld", f[i].i);
                put(line, cap, &len, num, (size_t)k);
            }
        }
        if (len >= cap) {
            len = cap;
            memcpy(line + len - 3, "...", 3);
        }
        /* One event, one line: a newline inside the message (a user name, say)
         * must not forge a second log line. */
        for (size_t i = (size_t)n; i < len; i++)
            if ((unsigned char)line[i] < 0x20 && line[i] != '\t') line[i] = ' ';
    }
    line[len++] = '\n';

    ssize_t w;
    do
        w = write(STDERR_FILENO, line, len);
    while (w < 0 && errno == EINTR);
}

void log_write(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, NULL, NULL, 0, fmt, ap);
    va_end(ap);
}

void log_fields(int level, const log_field *f, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, NULL, f, n, fmt, ap);
    va_end(ap);
}

void log_conn_fields(int level, const log_conn *lc, const log_field *f, size_t n, const char *fmt,
                     ...) {
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, lc, f, n, fmt, ap);
    va_end(ap);
}
