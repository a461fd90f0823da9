/* net — socket helpers. Library-like: no logging, errors into a buffer.
 * Any thread. */
#ifndef CHATD_NET_H
#define CHATD_NET_H

#include <stddef.h>
#include <sys/socket.h>

/* A non-blocking listening TCP socket on addr:port (IPv4 or IPv6 literal,
 * SO_REUSEADDR). Returns the fd, or -1 with err filled. */
int net_listen(const char *addr, int port, char *err, size_t errlen);

/* "1.2.3.4:5" or "[::1]:5" into out. */
void net_format_addr(const struct sockaddr *sa, char *out, size_t outlen);

#endif
