/* web — the chat page chatd serves on GET / (the directive `web`), pure.
 *
 * The page is four files in web/ (index.html, app.js, app.css,
 * favicon.svg), compiled into the binary by src/web_assets.S, plus
 * /config.json, which tells the page what this node expects (a token or a
 * free name, the limits on names). Like handshake: the parts of a request
 * in, status and response bytes out; no sockets, no logging. Any thread.
 */
#ifndef CHATD_WEB_H
#define CHATD_WEB_H

#include <stddef.h>

#include "config.h"
#include "handshake.h"

typedef struct web_request {
    const char *path;          /* the request target without its query */
    size_t path_len;
    int method;                /* WEB_GET, WEB_HEAD or WEB_OTHER */
    const char *if_none_match; /* the If-None-Match value, or NULL */
    size_t if_none_match_len;
    const char *host;          /* the one Host value, or NULL */
    size_t host_len;
} web_request;

enum { WEB_OTHER = 0, WEB_GET = 1, WEB_HEAD = 2 };

/* The page's answer to rq, when cfg->web is on and rq->path is one of its
 * routes: returns 1 with out filled (status, response = status line and
 * headers, and for a GET of a file out->body = its bytes, static, never
 * freed). Otherwise returns 0 and leaves out alone.
 *   GET or HEAD of a file → 200 with Content-Type, Content-Length,
 *   `Cache-Control: no-cache` and a strong ETag of its bytes (so a browser
 *   revalidates each load and gets 304 while the binary is the same);
 *   If-None-Match that names its ETag (or `*`) → 304;
 *   /config.json → 200 application/json, `Cache-Control: no-store`;
 *   the HTML carries the Content-Security-Policy (see web.c);
 *   any other method → 405 with `Allow: GET, HEAD`. */
int web_respond(const config *cfg, const web_request *rq, hs_result *out);

/* The ETag of the file at path ("/app.js", ...), quoted, into out (at
 * least 19 bytes). Returns 0, or -1 when path is not one of the files. */
int web_etag(const char *path, char *out, size_t outlen);

#endif
