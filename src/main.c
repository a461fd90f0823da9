/* chatd — wires the modules together and owns start and stop order.
 *
 *   main      config, signals, start, orderly stop
 *   acceptor  listener, HTTP handshake, handoff to workers
 *   worker×N  upgraded connections, rooms, delivery
 *   broker    the shared order: local, or the Redis stream consumer
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

#include "acceptor.h"
#include "broker.h"
#include "config.h"
#include "log.h"
#include "notify.h"
#include "tls.h"
#include "version.h"
#include "worker.h"

#define FD_RESERVE 64 /* descriptors kept for listeners, Redis, logs, eventfds */

static void usage(FILE *f) {
    fprintf(f, "usage: chatd [-t | -T] [-c FILE]\n"
               "       chatd -h | --help | -v | --version\n"
               "  -c FILE        configuration file (default: built-in defaults); relative\n"
               "                 paths in it are taken from its directory\n"
               "  -t             check the configuration (with the TLS certificate and key\n"
               "                 and the Redis password file), print warnings, and exit\n"
               "  -T             as -t, then print the effective configuration (after\n"
               "                 PORT and REDIS_URL, secrets masked) and exit\n"
               "  -h, --help     print this help and exit\n"
               "  -v, --version  print the version and exit\n"
               "environment: PORT replaces the port of listen; REDIS_URL sets redis_url and\n"
               "broker = redis; NOTIFY_SOCKET (systemd) is told READY=1 once listening.\n"
               "See chatd(8).\n");
}

/* Tells the service manager, if any; a failure costs only the telling. */
static void notify(const char *state) {
    char err[160];
    if (notify_send(state, err, sizeof(err)) < 0) log_warn("%s", err);
}

/* Raises the open-files soft limit to the hard limit and returns how many
 * clients fit. */
static int64_t raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return 1024 - FD_RESERVE;
    if (rl.rlim_cur < rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) getrlimit(RLIMIT_NOFILE, &rl);
    }
    int64_t n = rl.rlim_cur == RLIM_INFINITY ? 1000000 : (int64_t)rl.rlim_cur;
    return n > FD_RESERVE * 2 ? n - FD_RESERVE : n / 2;
}

/* Every config published after the first, in a list freed once all other
 * threads have stopped. A thread may still read a config after the next
 * one is published (it switches at its next safe point), and knowing when
 * every thread has switched would need an acknowledgement from each; a
 * config is a few KB and one is kept per SIGHUP that changed something,
 * so keeping them all is the simpler sound choice. */
typedef struct kept_config {
    config cfg;
    struct kept_config *next;
} kept_config;

static void log_change(const char *verb, const config *from, const config *to, const char *name) {
    char a[2200], b[2200];
    config_value(from, name, a, sizeof(a));
    config_value(to, name, b, sizeof(b));
    if (strcmp(verb, "applied") == 0)
        log_info("SIGHUP: %s: %s -> %s", name, a[0] ? a : "(empty)", b[0] ? b : "(empty)");
    else
        log_warn("SIGHUP: %s: %s -> %s needs a restart; keeping %s", name, a[0] ? a : "(empty)",
                 b[0] ? b : "(empty)", a[0] ? a : "(empty)");
}

/* SIGHUP: reads the file as at start; on any error applies nothing. Else
 * publishes running with the reloadable directives of the file, and
 * returns the config now in force. */
static const config *reload(const char *path, const config *running, tls *t, kept_config **kept) {
    char err[512];
    config *fresh = malloc(sizeof(*fresh));
    kept_config *k = malloc(sizeof(*k));
    config_changes *ch = malloc(sizeof(*ch));
    if (fresh == NULL || k == NULL || ch == NULL) {
        log_error("SIGHUP: out of memory; nothing is applied");
        goto out;
    }
    config_defaults(fresh);
    if ((path && config_load(fresh, path, err, sizeof(err)) < 0) ||
        config_apply_env(fresh, err, sizeof(err)) < 0 ||
        config_check(fresh, err, sizeof(err)) < 0 ||
        config_load_secrets(fresh, err, sizeof(err)) < 0) {
        log_error("SIGHUP: %s; nothing is applied, the running configuration stays", err);
        goto out;
    }
    config_merge(running, fresh, &k->cfg, ch);
    char warnings[2048];
    int nwarn = config_warnings(fresh, warnings, sizeof(warnings));
    for (char *w = nwarn ? strtok(warnings, "\n") : NULL; w; w = strtok(NULL, "\n"))
        log_warn("SIGHUP: %s", w);
    /* The certificate files may have changed under the same names: load
     * them on every SIGHUP. A bad one stops the whole reload. */
    if (t && tls_reload(t, &k->cfg, err, sizeof(err)) < 0) {
        log_error("SIGHUP: %s; the old certificate stays in service and nothing is applied", err);
        goto out;
    }
    for (int i = 0; i < ch->nrestart; i++) log_change("kept", running, fresh, ch->restart[i]);
    for (int i = 0; i < ch->nchanged; i++) log_change("applied", running, &k->cfg, ch->changed[i]);
    log_info("SIGHUP: reloaded %s%s: %d change%s applied, %d need%s a restart",
             path ? path : "(defaults)", t ? " and the TLS certificate" : "", ch->nchanged,
             ch->nchanged == 1 ? "" : "s", ch->nrestart, ch->nrestart == 1 ? "s" : "");
    if (ch->nchanged > 0) {
        atomic_store_explicit(&log_level, k->cfg.log_level, memory_order_relaxed);
        config_publish(&k->cfg);
        running = &k->cfg;
        k->next = *kept;
        *kept = k;
        k = NULL;
    }
out:
    if (fresh) explicit_bzero(fresh, sizeof(*fresh)); /* secrets */
    free(fresh);
    free(k);
    free(ch);
    return running;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int test_only = 0, dump = 0, opt;
    char err[512];
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'v'},
        {NULL, 0, NULL, 0},
    };
    while ((opt = getopt_long(argc, argv, "c:tThv", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c': path = optarg; break;
        case 't': test_only = 1; break;
        case 'T': test_only = dump = 1; break;
        case 'h': usage(stdout); return 0;
        case 'v': printf("chatd %s\n", chatd_version); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 1;
    }

    static config cfg;
    config_defaults(&cfg);
    if ((path && config_load(&cfg, path, err, sizeof(err)) < 0) ||
        config_apply_env(&cfg, err, sizeof(err)) < 0 || config_check(&cfg, err, sizeof(err)) < 0 ||
        config_load_secrets(&cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "chatd: %s\n", err);
        return 1;
    }
    char warnings[2048];
    int nwarn = config_warnings(&cfg, warnings, sizeof(warnings));
    if (test_only) {
        for (char *w = nwarn ? strtok(warnings, "\n") : NULL; w; w = strtok(NULL, "\n"))
            fprintf(stderr, "chatd: warning: %s\n", w);
        /* The certificate and key are part of the configuration: check them. */
        tls *tc = cfg.tls_port ? tls_new(&cfg, err, sizeof(err)) : NULL;
        if (cfg.tls_port && tc == NULL) {
            fprintf(stderr, "chatd: %s\n", err);
            return 1;
        }
        tls_free(tc);
        if (dump) {
            printf("# chatd %s: effective configuration of %s, after the environment;\n"
                   "# secrets are masked\n",
                   chatd_version, path ? path : "(defaults)");
            config_dump(&cfg, stdout);
        } else {
            printf("chatd: configuration %s is valid%s\n", path ? path : "(defaults)",
                   nwarn ? " (with warnings)" : "");
        }
        return 0;
    }
    log_level = cfg.log_level;
    log_format = cfg.log_format;
    config_publish(&cfg); /* before any thread starts: they load it at will */
    for (char *w = nwarn ? strtok(warnings, "\n") : NULL; w; w = strtok(NULL, "\n"))
        log_warn("%s", w);

    /* Signals: handled by main with sigwait; every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    int64_t ceiling = raise_nofile();
    int64_t max_clients = cfg.max_clients > 0 && cfg.max_clients < ceiling ? cfg.max_clients
                                                                           : ceiling;
    const config *running = &cfg; /* the config in force: main's own view */
    kept_config *kept = NULL;
    log_info("open files allow %lld clients%s", (long long)ceiling,
             max_clients < ceiling ? " (max_clients is lower)" : "");
    if (cfg.max_clients > ceiling)
        log_warn("max_clients %d is above what open files allow; capped at %lld",
                 cfg.max_clients, (long long)ceiling);

    evthread_use_pthreads();
    int ncores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int nworkers = cfg.workers > 0 ? cfg.workers : ncores;
    if (nworkers < 1) nworkers = 1;
    int nacceptors = cfg.acceptor_threads > 0 ? cfg.acceptor_threads : ncores;
    if (nacceptors < 1) nacceptors = 1;

    int rc = 1;
    worker **workers = calloc((size_t)nworkers, sizeof(*workers));
    broker *b = NULL;
    acceptor *a = NULL;
    tls *t = NULL;
    int started = 0;
    if (workers == NULL) {
        log_error("out of memory");
        return 1;
    }
    for (int i = 0; i < nworkers; i++)
        if ((workers[i] = worker_new(i + 1, &cfg, nacceptors, err, sizeof(err))) == NULL) goto fatal;
    if ((b = broker_new(&cfg, workers, nworkers, err, sizeof(err))) == NULL) goto fatal;
    if (cfg.tls_port && (t = tls_new(&cfg, err, sizeof(err))) == NULL) goto fatal;
    if ((a = acceptor_new(&cfg, t, b, workers, nworkers, nacceptors, ceiling, err, sizeof(err))) == NULL)
        goto fatal;
    if (broker_start(b) < 0) goto fatal_thread;
    for (; started < nworkers; started++)
        if (worker_start(workers[started], b) < 0) goto fatal_thread;
    if (acceptor_start(a) < 0) goto fatal_thread;
    char wss[128] = "";
    if (t)
        snprintf(wss, sizeof(wss), " and wss://%s%s%s:%d", strchr(cfg.tls_bind, ':') ? "[" : "",
                 cfg.tls_bind, strchr(cfg.tls_bind, ':') ? "]" : "", cfg.tls_port);
    log_info("chatd listening at ws://%s%s%s:%d%s (%d workers, %d acceptor threads, broker %s, "
             "version %s)",
             strchr(cfg.bind, ':') ? "[" : "", cfg.bind, strchr(cfg.bind, ':') ? "]" : "",
             cfg.port, wss, nworkers, nacceptors, broker_name(b), chatd_version);
    /* The listeners are bound and the threads run: systemd's Type=notify
     * may now count the service as started. */
    char ready[320];
    snprintf(ready, sizeof(ready), "READY=1\nMAINPID=%ld\nSTATUS=listening on port %d%s",
             (long)getpid(), cfg.port, t ? " and a TLS port" : "");
    notify(ready);

    for (;;) {
        int sig;
        if (sigwait(&sigs, &sig) != 0) continue;
        if (sig == SIGHUP) {
            /* systemd (253 and later) wants the time with it, to tell
             * this reload from an older one */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            char reloading[64];
            unsigned long long usec = (unsigned long long)ts.tv_sec * 1000000ULL +
                                      (unsigned long long)ts.tv_nsec / 1000;
            snprintf(reloading, sizeof reloading, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
            notify(reloading);
            running = reload(path, running, t, &kept);
            notify("READY=1");
            continue;
        }
        log_info("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
        notify("STOPPING=1");
        break;
    }
    rc = 0;
    goto stop;

fatal_thread:
    snprintf(err, sizeof(err), "cannot start a thread: %s", strerror(errno));
fatal:
    log_error("%s", err);
stop:
    /* Fail readiness and take no new clients; the workers store what they
     * accepted (the broker still runs, and delivers it), then close their
     * clients; only then do the broker and the acceptor go. */
    if (a) acceptor_drain(a);
    for (int i = 0; i < started; i++) worker_stop(workers[i]);
    for (int i = 0; i < started; i++) worker_join(workers[i]);
    if (a) acceptor_stop(a);
    if (b) broker_stop(b);
    acceptor_free(a);
    for (int i = 0; i < nworkers; i++) worker_free(workers[i]);
    broker_free(b);
    tls_free(t);
    free(workers);
    while (kept) { /* every thread is gone: nobody reads them any more */
        kept_config *next = kept->next;
        explicit_bzero(&kept->cfg, sizeof(kept->cfg));
        free(kept);
        kept = next;
    }
    libevent_global_shutdown();
    if (rc == 0) log_info("bye");
    return rc;
}
