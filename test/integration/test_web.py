"""The chat page over plain HTTP (issue 13): what GET / and the page's
files answer, their types, caching and Content-Security-Policy, HEAD,
/config.json, and `web = off`. The page itself in a browser: test/browser/.
"""

import json
import re
import socket
import time

from conftest import HOST, WS_KEY, http_exchange, http_request_bytes, metrics, parse_head
from test_tls import TlsWs, pki, tls_node  # noqa: F401 (pki is a fixture)


def get(port, path, method="GET", headers=(), host=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or f'{HOST}:{port}'}"] + list(headers)
    return http_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def head_raw(port, path, headers=()):
    """HEAD: reads up to the server's close, so bytes after the head show."""
    lines = [f"HEAD {path} HTTP/1.1", f"Host: {HOST}:{port}"] + list(headers)
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, _, hdrs = parse_head(head)
    return status, hdrs, rest


def csp_directives(value):
    out = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_page(chatd):
    srv = chatd()
    r = get(srv.port, "/")
    assert r.status == 200, r
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert int(r.header("content-length")) == len(r.body)
    assert r.body.startswith(b"<!doctype html>")
    assert b'src="/app.js"' in r.body and b'href="/app.css"' in r.body
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("referrer-policy") == "no-referrer"
    csp = csp_directives(r.header("content-security-policy"))
    assert csp["default-src"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    # 'self' alone does not cover ws: everywhere: the page's own host is named
    assert csp["connect-src"] == ["'self'", f"ws://{HOST}:{srv.port}", f"wss://{HOST}:{srv.port}"]
    assert "unsafe" not in r.header("content-security-policy")
    # no inline script or style for the policy to block
    assert not re.search(rb"<script(?![^>]*\bsrc=)", r.body)
    assert b"<style" not in r.body and b" style=" not in r.body
    assert not re.search(rb"\son[a-z]+\s*=", r.body), "no event handler attributes"
    # a link with a room and a name is the same page
    r2 = get(srv.port, "/?room=kitchen&name=Alice")
    assert r2.status == 200 and r2.body == r.body


def test_files(chatd):
    srv = chatd()
    for path, ctype, marker in (
        ("/app.js", "text/javascript; charset=utf-8", b"chatd.v1"),
        ("/app.css", "text/css; charset=utf-8", b".msg"),
        ("/favicon.svg", "image/svg+xml", b"<svg"),
    ):
        r = get(srv.port, path)
        assert r.status == 200, (path, r)
        assert r.header("content-type") == ctype, path
        assert int(r.header("content-length")) == len(r.body)
        assert marker in r.body, path
        assert r.header("x-content-type-options") == "nosniff"
        assert re.fullmatch(r'"[0-9a-f]{16}"', r.header("etag")), r.header("etag")
        assert r.header("cache-control") == "no-cache"


def test_not_found(chatd):
    srv = chatd()
    for path in ("/nope", "/index.html", "/app.js/", "/APP.JS", "//", "/web/app.js"):
        assert get(srv.port, path).status == 404, path


def test_methods(chatd):
    srv = chatd()
    r = http_exchange(srv.port, f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n\r\n".encode())
    assert r.status == 405
    assert r.header("allow") == "GET, HEAD"
    r = get(srv.port, "/app.css", method="DELETE")
    assert r.status == 405
    # the WebSocket upgrade on / is untouched by the page
    r = http_exchange(srv.port, http_request_bytes("/?username=x", method="POST"))
    assert r.status == 405


def test_head(chatd):
    srv = chatd()
    full = get(srv.port, "/app.js")
    status, hdrs, rest = head_raw(srv.port, "/app.js")
    assert status == 200
    assert rest == b""
    assert hdrs["content-length"] == full.header("content-length")
    assert hdrs["etag"] == full.header("etag")
    assert hdrs["content-type"] == full.header("content-type")
    status, hdrs, rest = head_raw(srv.port, "/")
    assert status == 200 and rest == b""
    assert "content-security-policy" in hdrs


def test_etag_revalidation(chatd):
    srv = chatd()
    before = metrics(srv.port).get('chatd_http_responses_total{status="304"}', 0)
    for path in ("/", "/app.js", "/app.css"):
        first = get(srv.port, path)
        etag = first.header("etag")
        again = get(srv.port, path)
        assert again.header("etag") == etag, "the same bytes keep their tag"
        for inm in (etag, "W/" + etag, f'"0000000000000000", {etag}', "*"):
            r = get(srv.port, path, headers=[f"If-None-Match: {inm}"])
            assert r.status == 304, (path, inm, r)
            assert r.body == b""
            assert r.header("etag") == etag
            assert r.header("cache-control") == "no-cache"
        r = get(srv.port, path, headers=['If-None-Match: "0000000000000000"'])
        assert r.status == 200 and r.body == first.body
    tags = {get(srv.port, p).header("etag") for p in ("/", "/app.js", "/app.css", "/favicon.svg")}
    assert len(tags) == 4
    m = metrics(srv.port)
    assert m['chatd_http_responses_total{status="304"}'] == before + 12
    assert "refused with 304" not in srv.log()


def test_etag_same_on_every_node(chatd):
    a, b = chatd(name="a"), chatd(name="b")
    for path in ("/", "/app.js"):
        assert get(a.port, path).header("etag") == get(b.port, path).header("etag")


def test_config_json(chatd):
    srv = chatd()
    r = get(srv.port, "/config.json")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.header("cache-control") == "no-store"
    c = json.loads(r.body)
    assert c == {"protocol": "chatd.v1", "auth": "name", "default_room": "lobby",
                 "max_username": 32, "max_room": 64, "max_message": 65536}


def test_config_json_with_auth(chatd):
    srv = chatd(auth_secret='"not in the page"', default_room='"say \\"hi\\""', max_username=20)
    r = get(srv.port, "/config.json")
    c = json.loads(r.body)
    assert c["auth"] == "token"
    assert c["default_room"] == 'say "hi"'
    assert c["max_username"] == 20
    assert b"not in the page" not in r.body
    # the page needs no token; only the upgrade does
    assert get(srv.port, "/").status == 200


def test_csp_host_is_checked(chatd):
    srv = chatd()
    r = get(srv.port, "/", host="chat.example.org")
    assert "ws://chat.example.org wss://chat.example.org;" in r.header("content-security-policy")
    r = get(srv.port, "/", host="x; script-src *")
    csp = csp_directives(r.header("content-security-policy"))
    assert csp["connect-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]


def test_web_off(chatd):
    """web = off: no page; GET / answers what it answered before the page."""
    srv = chatd(web="off")
    r = get(srv.port, "/")
    assert r.status == 400
    assert b"expected a WebSocket upgrade" in r.body
    for path in ("/app.js", "/app.css", "/favicon.svg", "/config.json"):
        assert get(srv.port, path).status == 404, path
    # the WebSocket side is unchanged
    with socket.create_connection((HOST, srv.port), timeout=5) as s:
        s.sendall(http_request_bytes("/?username=x", key=WS_KEY))
        assert s.recv(12) == b"HTTP/1.1 101"


def test_page_over_tls(chatd, pki):
    """The page over wss's port: its largest file whole, through a small
    receive buffer so that the node's TLS writes have to wait and resume."""
    srv = tls_node(chatd, pki["a"])
    plain = get(srv.port, "/app.js")
    with TlsWs(srv.tls_port, rcvbuf=4096) as w:
        w.send(f"GET /app.js HTTP/1.1\r\nHost: {HOST}:{srv.tls_port}\r\n\r\n".encode())
        time.sleep(0.2)  # let the node fill the small buffer first
        r = w.read_http()
    assert r.status == 200
    assert r.body == plain.body
    with TlsWs(srv.tls_port) as w:
        w.send(f"GET / HTTP/1.1\r\nHost: localhost:{srv.tls_port}\r\n\r\n".encode())
        r = w.read_http()
    assert r.status == 200
    assert f"wss://localhost:{srv.tls_port};" in r.header("content-security-policy")
