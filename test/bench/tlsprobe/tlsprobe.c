/* tlsprobe — where a wss connection's memory and CPU go, in chatd's own TLS
 * context (issue 16).
 *
 *   build/tlsprobe --cert C --key K [--conns N] [--groups G] [--tls 1.2|1.3]
 *                  [--resume] [--no-ticket] [--keep-openssl] [--writes N]
 *                  [--sites N]
 *
 * Builds the server context with chatd's tls.c (tls_new, tls_session,
 * tls_detach: the very code a node runs) and a client context, then makes
 * N connection pairs over socketpairs, driving both ends in this one
 * thread. Each pair does what a chatd client does: the TLS handshake (after
 * which a TLS 1.3 session leaves OpenSSL for tlsrec, as in chatd), the HTTP
 * request, the 101, one WebSocket frame; then both sides sit idle, as an
 * idle wss client does on a worker. --keep-openssl keeps every session in
 * OpenSSL instead (what chatd did before tlsrec).
 *
 * Every byte OpenSSL allocates goes through CRYPTO_set_mem_functions here
 * and is kept by call site (OpenSSL passes file and line) and by side: the
 * server side is whatever is allocated inside the calls chatd makes on its
 * session, so the client's share never blurs the figure; a session's
 * tlsrec is added to it. Server CPU is the thread CPU time of those calls
 * alone.
 *
 * --groups G makes the client offer only G (X25519, P-256, ...), --tls pins
 * the version, --resume makes every client resume one session (the first
 * connection's) instead of a full handshake, --no-ticket makes the client
 * refuse session tickets (so a TLS 1.2 server keeps its sessions in its
 * cache, to be resumed by id). --writes N then times N writes of one small
 * frame (64 bytes) to the first client, as a worker writes a delivery:
 * server CPU per write, its write(2) included; allocations are not counted
 * then (counting them would slow OpenSSL's, which allocates per write).
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config.h"
#include "tls.h"
#include "tlsrec.h"

/* ---- allocations by call site ------------------------------------------ */

#define SITES 8192
#define BUCKETS (1u << 20)

typedef struct site {
    const char *file;
    int line;
    int64_t live[2];      /* bytes, by side (0: other, 1: server) */
    int64_t nlive[2];     /* allocations */
    int64_t chunk[2];     /* bytes with malloc's chunk header and rounding */
} site;

typedef struct rec {
    void *p;
    size_t n;
    int site;
    int side;
    struct rec *next;
} rec;

static site sites[SITES];
static int nsites;
static rec *bucket[BUCKETS];
static int side;          /* 1 while chatd's side runs */

static size_t chunk_of(size_t n) { /* glibc, 64-bit: 8-byte header, 16-byte steps */
    size_t c = (n + 8 + 15) & ~(size_t)15;
    return c < 32 ? 32 : c;
}

static int site_of(const char *file, int line) {
    if (file == NULL) file = "?";
    for (int i = 0; i < nsites; i++)
        if (sites[i].line == line && strcmp(sites[i].file, file) == 0) return i;
    if (nsites == SITES) return SITES - 1; /* the last one takes the rest */
    sites[nsites].file = file;
    sites[nsites].line = line;
    return nsites++;
}

static unsigned hash_ptr(const void *p) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ull;
    return (unsigned)(x >> 32) & (BUCKETS - 1);
}

static void track(void *p, size_t n, const char *file, int line) {
    rec *r = malloc(sizeof *r);
    if (r == NULL) abort();
    *r = (rec){p, n, site_of(file, line), side, bucket[hash_ptr(p)]};
    bucket[hash_ptr(p)] = r;
    site *s = &sites[r->site];
    s->live[side] += (int64_t)n;
    s->nlive[side]++;
    s->chunk[side] += (int64_t)chunk_of(n);
}

static void untrack(void *p) {
    rec **pp = &bucket[hash_ptr(p)];
    for (; *pp; pp = &(*pp)->next) {
        rec *r = *pp;
        if (r->p != p) continue;
        site *s = &sites[r->site];
        s->live[r->side] -= (int64_t)r->n;
        s->nlive[r->side]--;
        s->chunk[r->side] -= (int64_t)chunk_of(r->n);
        *pp = r->next;
        free(r);
        return;
    }
}

static void *m_malloc(size_t n, const char *file, int line) {
    void *p = malloc(n);
    if (p) track(p, n, file, line);
    return p;
}

static void *m_realloc(void *old, size_t n, const char *file, int line) {
    if (old) untrack(old);
    void *p = realloc(old, n);
    if (p) track(p, n, file, line);
    return p;
}

static void m_free(void *p, const char *file, int line) {
    (void)file, (void)line;
    if (p) untrack(p);
    free(p);
}

/* Server-side totals now: bytes, allocations, bytes with chunk overhead. */
static void server_totals(int64_t *bytes, int64_t *count, int64_t *chunk) {
    *bytes = *count = *chunk = 0;
    for (int i = 0; i < nsites; i++) {
        *bytes += sites[i].live[1];
        *count += sites[i].nlive[1];
        *chunk += sites[i].chunk[1];
    }
}

/* ---- CPU of the server side --------------------------------------------- */

static int64_t server_ns;
static struct timespec t_in;

static void server_begin(void) {
    side = 1;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t_in);
}

static void server_end(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    server_ns += (t.tv_sec - t_in.tv_sec) * 1000000000LL + (t.tv_nsec - t_in.tv_nsec);
    side = 0;
}

static int64_t thread_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* ---- one connection pair ------------------------------------------------ */

typedef struct pair {
    SSL *s, *c;
    tlsrec *rec;          /* the server's session once detached */
    int sfd, cfd;
} pair;

static tlsrec_cx *cx;
static int keep_openssl;

static void die(const char *what) {
    fprintf(stderr, "tlsprobe: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Both ends step the handshake until both are done (a few rounds). */
static void handshake(pair *p) {
    int sdone = 0, cdone = 0;
    for (int round = 0; round < 20 && !(sdone && cdone); round++) {
        if (!cdone) {
            int r = SSL_do_handshake(p->c);
            if (r == 1) cdone = 1;
            else if (SSL_get_error(p->c, r) != SSL_ERROR_WANT_READ) die("client handshake failed");
        }
        if (!sdone) {
            server_begin();
            int r = SSL_do_handshake(p->s);
            int e = r == 1 ? 0 : SSL_get_error(p->s, r);
            server_end();
            if (r == 1) sdone = 1;
            else if (e != SSL_ERROR_WANT_READ) die("server handshake failed");
        }
    }
    if (!(sdone && cdone)) die("handshake did not finish");
    if (keep_openssl) {
        server_begin();
        SSL_new_session_ticket(p->s); /* chatd's context sends none by itself */
        SSL_do_handshake(p->s);
        server_end();
        return;
    }
    uint8_t *owed;
    size_t owed_len;
    server_begin();
    int rc = tls_detach(p->s, &p->rec, &owed, &owed_len);
    server_end();
    if (rc < 0) die("tls_detach failed");
    if (rc == 0) return; /* TLS 1.2: stays OpenSSL's */
    p->s = NULL;
    if (owed_len && write(p->sfd, owed, owed_len) != (ssize_t)owed_len) die("write failed");
    free(owed);
}

/* The server's end with tlsrec: reads and opens what is there. */
static size_t drain_rec(pair *p) {
    static uint8_t buf[TLSREC_MAX_RECORD + 65536];
    size_t have = tlsrec_held(p->rec), plain;
    const char *why;
    server_begin();
    ssize_t n = read(p->sfd, buf + have, sizeof buf - have);
    int rc = TLSREC_ERROR;
    if (n > 0) {
        tlsrec_unhold(p->rec, buf);
        rc = tlsrec_open(p->rec, cx, buf, have + (size_t)n, &plain, &why);
    }
    server_end();
    if (rc != TLSREC_OK) die("server read failed");
    return plain;
}

/* Reads what is there on one end, until it wants more. */
static size_t drain(SSL *ssl, int server) {
    uint8_t buf[16384];
    size_t got = 0;
    for (int i = 0; i < 64; i++) {
        if (server) server_begin();
        int n = SSL_read(ssl, buf, sizeof buf);
        int e = n > 0 ? 0 : SSL_get_error(ssl, n);
        if (server) server_end();
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        if (e == SSL_ERROR_WANT_READ) return got;
        die("read failed");
    }
    return got;
}

static void put_rec(pair *p, const void *buf, size_t len) {
    static uint8_t out[TLSREC_MAX_PLAIN + TLSREC_SEAL_EXTRA];
    server_begin();
    size_t n = tlsrec_seal(p->rec, cx, out, buf, len);
    ssize_t wr = n ? write(p->sfd, out, n) : -1;
    server_end();
    if (wr != (ssize_t)n) die("server write failed");
}

static void put(SSL *ssl, int server, const void *buf, size_t len) {
    if (server) server_begin();
    int n = SSL_write(ssl, buf, (int)len);
    if (server) server_end();
    if (n != (int)len) die("write failed");
}

/* What a chatd client and its worker say after the handshake: the request,
 * the 101, one masked text frame; then each side reads all there is. */
static void converse(pair *p) {
    static const char req[] =
        "GET /?username=probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n";
    static const char resp[] =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    static const uint8_t frame[] = {0x81, 0x85, 1, 2, 3, 4, 'h' ^ 1, 'e' ^ 2, 'l' ^ 3, 'l' ^ 4, 'o' ^ 1};
    put(p->c, 0, req, sizeof req - 1);
    if (p->rec) drain_rec(p);
    else drain(p->s, 1);
    if (p->rec) put_rec(p, resp, sizeof resp - 1);
    else put(p->s, 1, resp, sizeof resp - 1);
    drain(p->c, 0); /* the ticket and the 101 */
    put(p->c, 0, frame, sizeof frame);
    if (p->rec) drain_rec(p);
    else drain(p->s, 1);
}

static void open_pair(pair *p, tls *t, SSL_CTX *cctx, SSL_SESSION *sess) {
    p->rec = NULL;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        die("socketpair (raise the open files limit?)");
    p->sfd = sv[0];
    p->cfd = sv[1];
    server_begin();
    p->s = tls_session(t, p->sfd);
    server_end();
    p->c = SSL_new(cctx);
    if (p->s == NULL || p->c == NULL || SSL_set_fd(p->c, p->cfd) != 1) die("SSL_new failed");
    SSL_set_connect_state(p->c);
    if (sess) SSL_set_session(p->c, sess);
}

static void close_pair(pair *p) {
    server_begin();
    SSL_free(p->s);
    if (p->rec) tlsrec_clear(p->rec);
    free(p->rec);
    server_end();
    SSL_shutdown(p->c); /* else OpenSSL takes the client's session for a bad one */
    SSL_free(p->c);
    close(p->sfd);
    close(p->cfd);
}

/* Server CPU (ns) of n writes of a 64-byte frame on p; the client's end
 * is read raw (undecrypted) now and then, outside the count. */
static int64_t time_writes(pair *p, int n) {
    static uint8_t sinkbuf[1 << 20];
    uint8_t frame[64];
    memset(frame, 'x', sizeof frame);
    frame[0] = 0x81;
    frame[1] = sizeof frame - 2;
    int64_t before = server_ns;
    for (int i = 0; i < n; i++) {
        if (p->rec) put_rec(p, frame, sizeof frame);
        else put(p->s, 1, frame, sizeof frame);
        if (i % 64 == 63)
            while (read(p->cfd, sinkbuf, sizeof sinkbuf) > 0) {}
    }
    return server_ns - before;
}

/* ---- report ----------------------------------------------------------- */

static int by_live(const void *a, const void *b) {
    int64_t x = ((const site *)a)->live[1], y = ((const site *)b)->live[1];
    return x < y ? 1 : x > y ? -1 : 0;
}

static void report_sites(int n, int top) {
    static site sorted[SITES];
    memcpy(sorted, sites, sizeof(site) * (size_t)nsites);
    qsort(sorted, (size_t)nsites, sizeof(site), by_live);
    printf("\nserver bytes per connection by OpenSSL call site (idle), largest first:\n");
    printf("%10s %8s %10s  %s\n", "bytes", "allocs", "w/ chunk", "site");
    for (int i = 0; i < nsites && i < top; i++) {
        const site *s = &sorted[i];
        if (s->live[1] <= 0) break;
        const char *f = s->file;
        while (strncmp(f, "../", 3) == 0) f += 3;
        printf("%10.1f %8.2f %10.1f  %s:%d\n", (double)s->live[1] / n, (double)s->nlive[1] / n,
               (double)s->chunk[1] / n, f, s->line);
    }
}

static void usage(void) {
    fprintf(stderr, "usage: tlsprobe --cert FILE --key FILE [--conns N] [--groups G] "
                    "[--tls 1.2|1.3] [--resume] [--no-ticket] [--keep-openssl] [--writes N] "
                    "[--sites N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *cert = NULL, *key = NULL, *groups = NULL, *version = NULL;
    int n = 1000, resume = 0, top = 25, no_ticket = 0, writes = 0;
    static const struct option opts[] = {
        {"cert", required_argument, NULL, 'c'}, {"key", required_argument, NULL, 'k'},
        {"conns", required_argument, NULL, 'n'}, {"groups", required_argument, NULL, 'g'},
        {"tls", required_argument, NULL, 't'},   {"resume", no_argument, NULL, 'r'},
        {"sites", required_argument, NULL, 's'}, {"no-ticket", no_argument, NULL, 'T'},
        {"keep-openssl", no_argument, NULL, 'K'}, {"writes", required_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    for (int ch; (ch = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (ch) {
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'n': n = atoi(optarg); break;
        case 'g': groups = optarg; break;
        case 't': version = optarg; break;
        case 'r': resume = 1; break;
        case 's': top = atoi(optarg); break;
        case 'T': no_ticket = 1; break;
        case 'K': keep_openssl = 1; break;
        case 'w': writes = atoi(optarg); break;
        default: usage();
        }
    }
    if (cert == NULL || key == NULL || n < 1 || n > 9000) usage();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (writes == 0 && !CRYPTO_set_mem_functions(m_malloc, m_realloc, m_free))
        die("cannot count allocations");

    config cfg;
    char err[512];
    config_defaults(&cfg);
    if (config_set(&cfg, "tls_cert", cert, err, sizeof err) < 0 ||
        config_set(&cfg, "tls_key", key, err, sizeof err) < 0)
        die(err);
    tls *t = tls_new(&cfg, err, sizeof err);
    if (t == NULL) die(err);
    if ((cx = tlsrec_cx_new()) == NULL) die("tlsrec_cx_new");

    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    if (cctx == NULL) die("client context");
    SSL_CTX_set_verify(cctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(cctx, SSL_MODE_RELEASE_BUFFERS);
    if (no_ticket) SSL_CTX_set_options(cctx, SSL_OP_NO_TICKET);
    if (groups && SSL_CTX_set1_groups_list(cctx, groups) != 1) die("bad --groups");
    if (version) {
        int v = strcmp(version, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
        SSL_CTX_set_min_proto_version(cctx, v);
        SSL_CTX_set_max_proto_version(cctx, v);
    }

    /* One connection first: the session to resume, and every lazily
     * built shared structure (provider caches, the cache's hash table)
     * made before counting. */
    SSL_SESSION *sess = NULL;
    {
        pair p;
        open_pair(&p, t, cctx, NULL);
        handshake(&p);
        converse(&p);
        sess = SSL_get1_session(p.c);
        close_pair(&p);
    }
    pair *ps = calloc((size_t)n, sizeof *ps);
    if (ps == NULL) die("out of memory");
    int64_t b0, c0, k0, b1, c1, k1, b2, c2, k2, b3, c3, k3;
    server_ns = 0;
    int64_t wall0 = thread_ns();
    server_totals(&b0, &c0, &k0);
    for (int i = 0; i < n; i++) open_pair(&ps[i], t, cctx, resume ? sess : NULL);
    server_totals(&b1, &c1, &k1);
    int64_t new_ns = server_ns;
    int reused = 0;
    for (int i = 0; i < n; i++) {
        handshake(&ps[i]);
        reused += SSL_session_reused(ps[i].c);
    }
    server_totals(&b2, &c2, &k2);
    int64_t hs_ns = server_ns;
    for (int i = 0; i < n; i++) converse(&ps[i]);
    server_totals(&b3, &c3, &k3);
    int recs = 0; /* malloc'd by tls_detach, outside OpenSSL's count */
    for (int i = 0; i < n; i++) recs += ps[i].rec != NULL;
    b3 += recs * (int64_t)sizeof(tlsrec);
    c3 += recs;
    k3 += recs * (int64_t)chunk_of(sizeof(tlsrec));
    int64_t all_ns = thread_ns() - wall0;

    SSL *client = ps[0].c;
    EVP_PKEY *pub = X509_get0_pubkey(SSL_get0_peer_certificate(client));
    printf("tlsprobe: %d connections, %s, %s, group %s, certificate %s (%d bits), %s\n", n,
           SSL_get_version(client), SSL_get_cipher_name(client),
           SSL_group_to_name(client, SSL_get_negotiated_group(client)),
           OBJ_nid2sn(EVP_PKEY_get_base_id(pub)), EVP_PKEY_get_bits(pub),
           resume ? (reused == n ? "every one resumed" : "NOT all resumed") : "full handshakes");
    printf("sessions moved to tlsrec: %d of %d\n", recs, n);
    if (ps[0].s)
        printf("server sessions in the context's cache: %ld\n",
               SSL_CTX_sess_number(SSL_get_SSL_CTX(ps[0].s)));
    if (writes == 0) printf("\nserver side, per connection    bytes  allocs  w/ chunk\n");
    if (writes == 0) {
        printf("after SSL_new + SSL_set_fd  %8.1f %7.2f %9.1f\n", (double)(b1 - b0) / n,
               (double)(c1 - c0) / n, (double)(k1 - k0) / n);
        printf("after the handshake         %8.1f %7.2f %9.1f\n", (double)(b2 - b0) / n,
               (double)(c2 - c0) / n, (double)(k2 - k0) / n);
        printf("idle (request, 101, frame)  %8.1f %7.2f %9.1f   (tlsrec included)\n",
               (double)(b3 - b0) / n, (double)(c3 - c0) / n, (double)(k3 - k0) / n);
    }
    printf("\nserver CPU per connection: %.3f ms (SSL_new %.3f, handshake %.3f, request "
           "to idle %.3f); client and probe %.3f ms\n",
           (double)server_ns / n / 1e6, (double)new_ns / n / 1e6,
           (double)(hs_ns - new_ns) / n / 1e6, (double)(server_ns - hs_ns) / n / 1e6,
           (double)(all_ns - server_ns) / n / 1e6);
    if (writes == 0) report_sites(n, top);
    if (writes > 0)
        printf("\nserver CPU per write of a 64-byte frame (%s): %.3f us\n",
               ps[0].rec ? "tlsrec" : "OpenSSL", (double)time_writes(&ps[0], writes) / writes / 1e3);

    for (int i = 0; i < n; i++) close_pair(&ps[i]);
    free(ps);
    SSL_SESSION_free(sess);
    SSL_CTX_free(cctx);
    tls_free(t);
    tlsrec_cx_free(cx);
    return 0;
}
