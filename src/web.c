/* web — the chat page's routes (see web.h).
 *
 * The files live in web/ and are compiled into the binary (web_assets.S),
 * so the page a node serves is always the one written for its protocol,
 * and an operator has nothing to install or keep in step with the binary.
 */
#include "web.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* From web_assets.S: each file's first byte and the byte past its last. */
extern const char web_index_html[], web_index_html_end[];
extern const char web_app_js[], web_app_js_end[];
extern const char web_app_css[], web_app_css_end[];
extern const char web_favicon_svg[], web_favicon_svg_end[];

typedef struct asset {
    const char *path;
    const char *type;
    const char *start, *end;
    int page; /* the HTML document: it carries the Content-Security-Policy */
} asset;

static const asset assets[] = {
    {"/", "text/html; charset=utf-8", web_index_html, web_index_html_end, 1},
    {"/app.js", "text/javascript; charset=utf-8", web_app_js, web_app_js_end, 0},
    {"/app.css", "text/css; charset=utf-8", web_app_css, web_app_css_end, 0},
    {"/favicon.svg", "image/svg+xml", web_favicon_svg, web_favicon_svg_end, 0},
};
#define N_ASSETS (sizeof assets / sizeof assets[0])

#define CONFIG_PATH "/config.json"

static const asset *find_asset(const char *path, size_t len) {
    for (size_t i = 0; i < N_ASSETS; i++)
        if (strlen(assets[i].path) == len && memcmp(assets[i].path, path, len) == 0)
            return &assets[i];
    return NULL;
}

/* A strong validator from the bytes themselves (FNV-1a, 64 bits): the
 * same file gives the same tag on every node and across restarts, and a
 * new binary with a changed file gives a new one. About 30 KiB hashed per
 * request, on a path that serves one page per user: cheaper than keeping
 * state. */
static void etag_of(const asset *a, char out[19]) {
    uint64_t h = 14695981039346656037ULL;
    for (const unsigned char *p = (const unsigned char *)a->start;
         p < (const unsigned char *)a->end; p++)
        h = (h ^ *p) * 1099511628211ULL;
    snprintf(out, 19, "\"%016llx\"", (unsigned long long)h);
}

int web_etag(const char *path, char *out, size_t outlen) {
    const asset *a = find_asset(path, strlen(path));
    if (!a || outlen < 19)
        return -1;
    etag_of(a, out);
    return 0;
}

static int is_ows(char c) { return c == ' ' || c == '\t'; }

/* RFC 9110 13.1.2: If-None-Match is "*" or a list of entity tags, compared
 * weakly (a W/ prefix does not matter). */
static int none_match_hits(const char *v, size_t n, const char *etag) {
    size_t elen = strlen(etag);
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && is_ows(v[a]))
            a++;
        while (b > a && is_ows(v[b - 1]))
            b--;
        if (b - a == 1 && v[a] == '*')
            return 1;
        if (b - a >= 2 && v[a] == 'W' && v[a + 1] == '/')
            a += 2;
        if (b - a == elen && memcmp(v + a, etag, elen) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

/* A Host value we may repeat in a header: a DNS name or an IPv4 address,
 * or an IPv6 address in brackets, and an optional port. Anything else
 * (and anything longer than a DNS name) is left out of the policy. */
static int host_ok(const char *h, size_t n) {
    if (n == 0 || n > 255 + 6)
        return 0;
    size_t i = 0;
    if (h[0] == '[') {
        for (i = 1; i < n && h[i] != ']'; i++)
            if (!strchr("0123456789abcdefABCDEF:.", h[i]))
                return 0;
        if (i == n || i == 1)
            return 0;
        i++;
    } else {
        for (; i < n && h[i] != ':'; i++) {
            char c = h[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-'))
                return 0;
        }
        if (i == 0)
            return 0;
    }
    if (i == n)
        return 1;
    if (h[i] != ':' || n - i < 2 || n - i > 6)
        return 0;
    for (i++; i < n; i++)
        if (h[i] < '0' || h[i] > '9')
            return 0;
    return 1;
}

/* Appends to buf (cap bytes, *len used); returns -1 once it does not fit. */
static int append(char *buf, size_t cap, size_t *len, const char *fmt, va_list ap) {
    size_t room = cap - *len;
    int n = vsnprintf(buf + *len, room, fmt, ap);
    if (n < 0 || (size_t)n >= room)
        return -1;
    *len += (size_t)n;
    return 0;
}

/* Appends to out->response. */
static int put(hs_result *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put(hs_result *out, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = append(out->response, sizeof out->response, &out->response_len, fmt, ap);
    va_end(ap);
    return rc;
}

typedef struct strbuf {
    char buf[512];
    size_t len;
} strbuf;

static int tput(strbuf *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int tput(strbuf *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = append(t->buf, sizeof t->buf, &t->len, fmt, ap);
    va_end(ap);
    return rc;
}

static void start(hs_result *out, int status, const char *text) {
    out->response_len = 0;
    out->status = status;
    out->upgrade = 0;
    out->metrics = 0;
    out->health_check = 0;
    out->ready_check = 0;
    out->body = NULL;
    out->body_len = 0;
    out->reason = "web page";
    put(out, "HTTP/1.1 %d %s\r\n", status, text);
}

/* Headers every answer of the page has. nosniff: a browser never takes
 * a file for another type than the one we name. */
static int common_headers(hs_result *out) {
    return put(out, "X-Content-Type-Options: nosniff\r\n"
                    "Connection: close\r\n");
}

/* The policy of the page: its own script and style files only (no inline
 * code, so an injected tag cannot run), no plugins, no frames, and network
 * access only back to this node. 'self' covers ws: and wss: of the same
 * host in CSP Level 3, but not in every browser that is still in use
 * (Safari before 15.4 among them), so the page's own host is also named
 * with both schemes when the request said which it is. */
static int csp_header(hs_result *out, const web_request *rq) {
    int rc = put(out, "Content-Security-Policy: default-src 'none'; script-src 'self'; "
                      "style-src 'self'; img-src 'self'; connect-src 'self'");
    if (rq->host && host_ok(rq->host, rq->host_len))
        rc |= put(out, " ws://%.*s wss://%.*s", (int)rq->host_len, rq->host, (int)rq->host_len,
                  rq->host);
    rc |= put(out, "; base-uri 'none'; form-action 'self'; frame-ancestors 'none'\r\n"
                   "Referrer-Policy: no-referrer\r\n");
    return rc;
}

static void method_not_allowed(hs_result *out) {
    static const char body[] = "method not allowed\n";
    start(out, 405, "Method Not Allowed");
    put(out, "Allow: GET, HEAD\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n",
        sizeof body - 1);
    common_headers(out);
    put(out, "\r\n%s", body);
    out->reason = "method not allowed";
}

/* Writes s as the inside of a JSON string. Names in the config are UTF-8
 * without control characters, so only '"' and '\' need escaping. */
static int put_json_string(strbuf *t, const char *s) {
    int rc = tput(t, "\"");
    for (; *s && rc == 0; s++)
        rc = (*s == '"' || *s == '\\') ? tput(t, "\\%c", *s) : tput(t, "%c", *s);
    return rc | tput(t, "\"");
}

/* What the page needs to know before it connects: whether the node wants
 * a token (auth_secret set) or a free name, and the limits on names and
 * messages, so it can say what is wrong before the server refuses. The
 * secret itself is never part of it. */
static void config_json(const config *cfg, const web_request *rq, hs_result *out) {
    strbuf body = {.len = 0};
    int rc = tput(&body, "{\"protocol\":\"chatd.v1\",\"auth\":%s,\"default_room\":",
                  cfg->auth_secret[0] ? "\"token\"" : "\"name\"");
    rc |= put_json_string(&body, cfg->default_room);
    rc |= tput(&body, ",\"max_username\":%d,\"max_room\":%d,\"max_message\":%lld}\n",
               cfg->max_username, cfg->max_room, (long long)cfg->max_message);
    start(out, 200, "OK");
    rc |= put(out, "Content-Type: application/json\r\nContent-Length: %zu\r\n"
                   "Cache-Control: no-store\r\n", body.len);
    rc |= common_headers(out);
    rc |= put(out, "\r\n");
    if (rq->method == WEB_GET)
        rc |= put(out, "%s", body.buf);
    if (rc) /* cannot happen: a room name is at most 64 bytes, 128 escaped */
        hs_error_response(out, 500, "internal error");
}

int web_respond(const config *cfg, const web_request *rq, hs_result *out) {
    if (!cfg->web)
        return 0;
    const asset *a = find_asset(rq->path, rq->path_len);
    int is_config = rq->path_len == sizeof CONFIG_PATH - 1 &&
                    memcmp(rq->path, CONFIG_PATH, sizeof CONFIG_PATH - 1) == 0;
    if (!a && !is_config)
        return 0;
    if (rq->method != WEB_GET && rq->method != WEB_HEAD) {
        method_not_allowed(out);
        return 1;
    }
    if (is_config) {
        config_json(cfg, rq, out);
        return 1;
    }

    char etag[19];
    etag_of(a, etag);
    int rc;
    if (rq->if_none_match && none_match_hits(rq->if_none_match, rq->if_none_match_len, etag)) {
        start(out, 304, "Not Modified");
        rc = put(out, "ETag: %s\r\nCache-Control: no-cache\r\n", etag);
    } else {
        size_t len = (size_t)(a->end - a->start);
        start(out, 200, "OK");
        rc = put(out, "Content-Type: %s\r\nContent-Length: %zu\r\nETag: %s\r\n"
                      "Cache-Control: no-cache\r\n", a->type, len, etag);
        if (a->page)
            rc |= csp_header(out, rq);
        if (rq->method == WEB_GET) {
            out->body = a->start;
            out->body_len = len;
        }
    }
    rc |= common_headers(out);
    rc |= put(out, "\r\n");
    if (rc) /* cannot happen: the host in the policy is at most 261 bytes */
        hs_error_response(out, 500, "internal error");
    return 1;
}
