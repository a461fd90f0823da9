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

void log_write(int level, const char *fmt, ...) {
    char line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (level < LOG_DEBUG) level = LOG_DEBUG;
    if (level > LOG_ERROR) level = LOG_ERROR;

    int n = snprintf(line, sizeof line, "%04d-%02d-%02d %02d:%02d:%02d.%03ld %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], thread_name);
    if (n < 0) return;
    size_t head = (size_t)n;

    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + head, sizeof line - head - 1, fmt, ap); /* keep 1 byte for '\n' */
    va_end(ap);
    if (m < 0) m = 0;

    size_t len = head + (size_t)m;
    if (len > sizeof line - 2) {
        len = sizeof line - 2;
        memcpy(line + len - 3, "...", 3);
    }
    /* One event, one line: a newline inside the message (a user name, say)
     * must not forge a second log line. */
    for (size_t i = head; i < len; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t') line[i] = ' ';
    line[len++] = '\n';

    ssize_t w;
    do
        w = write(STDERR_FILENO, line, len);
    while (w < 0 && errno == EINTR);
}
