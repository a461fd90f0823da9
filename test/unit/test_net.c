/* Unit tests for net: the listen backlog (listen_backlog, 0 = somaxconn)
 * and the accept-queue length /metrics reports as chatd_listen_backlog. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net.h"

static char err[256];

static int somaxconn(void) {
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    int n = 0;
    if (f) {
        if (fscanf(f, "%d", &n) != 1) n = 0;
        fclose(f);
    }
    return n > 0 ? n : SOMAXCONN;
}

static int port_of(int fd) {
    struct sockaddr_in sin;
    socklen_t sl = sizeof sin;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
    return ntohs(sin.sin_port);
}

static int connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    return fd;
}

static void test_backlog_default_is_somaxconn(void **state) {
    (void)state;
    assert_int_equal(net_backlog(0), somaxconn());
    assert_int_equal(net_backlog(-1), somaxconn());
    assert_int_equal(net_backlog(128), 128);
}

/* Connections the kernel completed and nobody accepted are counted, and
 * leave the count as they are accepted. */
static void test_accept_queue_counts_waiting_connections(void **state) {
    (void)state;
    int l = net_listen("127.0.0.1", 0, 16, err, sizeof err);
    assert_true(l >= 0);
    int port = port_of(l);
    assert_int_equal(net_accept_queue(l), 0);
    int c[5];
    for (int i = 0; i < 5; i++) c[i] = connect_to(port);
    assert_int_equal(net_accept_queue(l), 5);
    for (int i = 0; i < 2; i++) {
        int a = accept(l, NULL, NULL);
        assert_true(a >= 0);
        close(a);
    }
    assert_int_equal(net_accept_queue(l), 3);
    for (int i = 0; i < 5; i++) close(c[i]);
    close(l);
}

/* The backlog asked for is the one the kernel holds to (one more than it,
 * on Linux): a small one fills, and a client beyond it is not completed. */
static void test_backlog_is_applied(void **state) {
    (void)state;
    int l = net_listen("127.0.0.1", 0, 2, err, sizeof err);
    assert_true(l >= 0);
    int port = port_of(l);
    int c[3];
    for (int i = 0; i < 3; i++) c[i] = connect_to(port);
    assert_int_equal(net_accept_queue(l), 3);
    /* A fourth waits for a retransmission (its SYN is dropped), so connect
     * it without blocking: it does not join the queue. */
    int d = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
    connect(d, (struct sockaddr *)&sin, sizeof sin);
    usleep(50 * 1000);
    assert_int_equal(net_accept_queue(l), 3);
    close(d);
    for (int i = 0; i < 3; i++) close(c[i]);
    close(l);
}

static void test_listen_errors(void **state) {
    (void)state;
    assert_int_equal(net_listen("not-an-ip", 0, 0, err, sizeof err), -1);
    assert_non_null(strstr(err, "not an IP address"));
    assert_int_equal(net_accept_queue(-1), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backlog_default_is_somaxconn),
        cmocka_unit_test(test_accept_queue_counts_waiting_connections),
        cmocka_unit_test(test_backlog_is_applied),
        cmocka_unit_test(test_listen_errors),
    };
    return cmocka_run_group_tests_name("net", tests, NULL, NULL);
}
