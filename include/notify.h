/* notify — the sd_notify(3) protocol without libsystemd: one datagram of
 * "KEY=VALUE" lines to the unix socket named by $NOTIFY_SOCKET, which a
 * service manager (systemd with Type=notify) sets. Main thread. */
#ifndef CHATD_NOTIFY_H
#define CHATD_NOTIFY_H

#include <stddef.h>

/* Sends state (e.g. "READY=1") when NOTIFY_SOCKET is set. Returns 1 if
 * sent, 0 when there is no NOTIFY_SOCKET, or -1 with the reason in err. */
int notify_send(const char *state, char *err, size_t errlen);

#endif
