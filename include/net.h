/* net — socket helpers. Library-like: no logging, errors into a buffer.
 * Any thread. */
#ifndef CHATD_NET_H
#define CHATD_NET_H

#include <stddef.h>
#include <sys/socket.h>

/* A non-blocking listening TCP socket on addr:port (IPv4 or IPv6 literal,
 * SO_REUSEADDR) with a listen queue of backlog connections (<= 0: the
 * system's somaxconn; the kernel caps it there anyway). Returns the fd, or
 * -1 with err filled. */
int net_listen(const char *addr, int port, int backlog, char *err, size_t errlen);

/* The backlog net_listen uses for `backlog`: itself when > 0, else
 * /proc/sys/net/core/somaxconn, else SOMAXCONN. */
int net_backlog(int backlog);

/* Connections of listening socket fd that the kernel has established and
 * nobody has accepted yet (Linux TCP_INFO), or -1 when unknown. */
long net_accept_queue(int fd);

/* "1.2.3.4:5" or "[::1]:5" into out. */
void net_format_addr(const struct sockaddr *sa, char *out, size_t outlen);

#endif
