/* clock — the monotonic millisecond clock every deadline uses.
 *
 * Wall time can step (NTP, an operator, a VM resumed): a deadline kept in
 * wall time would then kick healthy clients or never fire. libevent's own
 * timers are monotonic already; this is for the deadlines we compare by
 * hand. Any thread.
 */
#ifndef CHATD_CLOCK_H
#define CHATD_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Milliseconds on CLOCK_MONOTONIC: only differences mean anything. */
static inline int64_t clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif
