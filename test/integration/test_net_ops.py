"""Running behind proxies and operating a node (issue 15): trusted_proxies
with X-Forwarded-For and the PROXY protocol, access logs and log_format,
a plain HTTP request on the TLS port, and token expiry on live connections.

Every test starts its own chatd on loopback ports and bounds every wait.
"""

import asyncio
import json
import re
import socket
import ssl
import struct
import time

import pytest

from conftest import (
    HOST, OP_CLOSE, OP_TEXT, RawWs, arun, close_payload, expect_close, http_request_bytes,
    metrics, parse_close, ws_connect, wait_until,
)
from test_auth import SECRET, claims, jwt, token_url
from test_tls import client_ctx, make_cert, tls_node


def upgrade(port, path="/?username=u", extra=None, prefix=b"", timeout=5.0):
    """Sends prefix (a PROXY header) and an upgrade; returns (RawWs, status)
    with the status None when the server closed without an answer."""
    w = RawWs(port, timeout)
    w.send(prefix + http_request_bytes(path, extra=extra))
    try:
        return w, w.read_http().status
    except (EOFError, ConnectionResetError):
        return w, None


def xff(port, value, user="u"):
    return upgrade(port, f"/?username={user}", extra=[f"X-Forwarded-For: {value}"])


def proxy_v1(src, sport=40000, dst="127.0.0.1", dport=5000):
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src=None, sport=40000, local=False, tlv=b""):
    if local:
        return V2_SIG + b"\x20\x00\x00\x00"
    if ":" in src:
        body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
                + struct.pack(">HH", sport, 5000))
        fam = 0x21
    else:
        body = socket.inet_aton(src) + socket.inet_aton("127.0.0.1") + struct.pack(">HH", sport, 5000)
        fam = 0x11
    body += tlv
    return V2_SIG + bytes([0x21, fam]) + struct.pack(">H", len(body)) + body


def log_lines(node, word):
    return [ln for ln in node.log().splitlines() if word in ln]


# --------------------------------------------------------------------------
# X-Forwarded-For


def test_xff_from_trusted_proxy_counts_per_real_address(chatd):
    node = chatd(trusted_proxies="127.0.0.1", max_clients_per_ip=1)
    a, sa = xff(node.port, "203.0.113.1", "alice")
    b, sb = xff(node.port, "203.0.113.2", "bob")
    c, sc = xff(node.port, "203.0.113.1", "carol")
    try:
        assert (sa, sb, sc) == (101, 101, 429)
        # Logs name the client, not the proxy.
        node.wait_log(r"conn \d+ 203\.0\.113\.1 alice: open")
        node.wait_log(r"conn \d+ 203\.0\.113\.2 bob: open")
        node.wait_log(r"conn \d+ 203\.0\.113\.1 carol: refused with 429")
    finally:
        for w in (a, b, c):
            w.close()
    # The count follows the real address out too: alice gone, her address
    # may come back.
    wait_until(lambda: log_lines(node, "alice: close"), 5, what="alice's close line")
    d, sd = xff(node.port, "203.0.113.1", "dave")
    d.close()
    assert sd == 101


def test_xff_takes_the_rightmost_untrusted_address(chatd):
    node = chatd(trusted_proxies="127.0.0.1, 10.0.0.0/8", max_clients_per_ip=1)
    # The left of the list is whatever the client said: worth nothing.
    a, sa = xff(node.port, "6.6.6.6, 203.0.113.5, 10.1.1.1", "alice")
    b, sb = xff(node.port, "7.7.7.7, 203.0.113.5", "bob")
    try:
        assert (sa, sb) == (101, 429)
        node.wait_log(r"conn \d+ 203\.0\.113\.5 alice: open")
    finally:
        a.close()
        b.close()


def test_xff_from_untrusted_peer_is_ignored(chatd):
    node = chatd(trusted_proxies="10.9.9.9", max_clients_per_ip=1)
    a, sa = xff(node.port, "203.0.113.1", "alice")
    b, sb = xff(node.port, "203.0.113.2", "bob")
    try:
        assert (sa, sb) == (101, 429)
        node.wait_log(r"conn \d+ 127\.0\.0\.1:\d+ alice: open")
        assert "203.0.113" not in node.log()
    finally:
        a.close()
        b.close()


def test_xff_with_more_lines_than_kept_is_refused(chatd):
    """haproxy's `option forwardfor` appends its own line: a client that sent
    eight of its own before it would, if the ninth were dropped, pass for
    the proxy itself (and lock out everyone behind it by max_clients_per_ip)."""
    node = chatd(trusted_proxies="127.0.0.1", max_clients_per_ip=1)
    lines = [f"X-Forwarded-For: 198.51.100.{k}" for k in range(9)]
    w, status = upgrade(node.port, "/?username=many", extra=lines)
    w.close()
    assert status == 400
    ok, s_ok = xff(node.port, "203.0.113.1", "alice")  # the proxy's address is not used up
    try:
        assert s_ok == 101
    finally:
        ok.close()


# --------------------------------------------------------------------------
# PROXY protocol


def test_proxy_protocol_v1_and_v2_from_trusted_peer(chatd):
    node = chatd(trusted_proxies="127.0.0.1", proxy_protocol="on", max_clients_per_ip=1)
    a, sa = upgrade(node.port, "/?username=alice", prefix=proxy_v1("198.51.100.7", 41000))
    b, sb = upgrade(node.port, "/?username=bob", prefix=proxy_v2("2001:db8::5", 42000))
    c, sc = upgrade(node.port, "/?username=carol",
                    prefix=proxy_v2("198.51.100.7", 43000, tlv=b"\x04\x00\x03abc"))
    try:
        assert (sa, sb, sc) == (101, 101, 429)
        node.wait_log(r"conn \d+ 198\.51\.100\.7:41000 alice: open")
        node.wait_log(r"conn \d+ \[2001:db8::5\]:42000 bob: open")
        # The upgraded connection works: bytes after the header and the
        # request are the client's.
        a.send_frame(OP_TEXT, b"hi")
        assert a.recv_text() == "alice: hi"
    finally:
        for w in (a, b, c):
            w.close()


def test_proxy_header_in_pieces(chatd):
    node = chatd(trusted_proxies="127.0.0.0/8", proxy_protocol="on")
    hdr = proxy_v2("192.0.2.44", 44000)
    with RawWs(node.port) as w:
        for i in range(0, len(hdr), 7):
            w.send(hdr[i:i + 7])
            time.sleep(0.02)
        w.send(http_request_bytes("/?username=slow"))
        assert w.read_http().status == 101
    node.wait_log(r"conn \d+ 192\.0\.2\.44:44000 slow: open")


def test_proxy_protocol_refuses_connections_without_a_valid_header(chatd):
    node = chatd(trusted_proxies="127.0.0.1", proxy_protocol="on")
    for bad in (b"", b"PROXY TCP4 nonsense\r\n", V2_SIG + b"\x22\x11\x00\x00"):
        w, status = upgrade(node.port, prefix=bad)
        w.close()
        assert status is None, bad
    # A LOCAL header (the balancer's own health check) keeps the peer's address.
    with RawWs(node.port) as w:
        w.send(proxy_v2(local=True) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert w.read_http().status == 200
    with RawWs(node.port) as w:
        w.send(proxy_v2(local=True) + b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        r = w.read_http()
    m = {ln.rsplit(" ", 1)[0]: ln.rsplit(" ", 1)[1] for ln in r.body.decode().splitlines()
         if ln and not ln.startswith("#")}
    assert int(m["chatd_proxy_refused_total"]) == 3
    assert len(log_lines(node, "no valid PROXY header")) == 3


def test_proxy_protocol_refuses_untrusted_peers(chatd):
    node = chatd(trusted_proxies="10.9.9.9", proxy_protocol="on")
    w, status = upgrade(node.port, prefix=proxy_v1("198.51.100.7"))
    w.close()
    assert status is None
    node.wait_log(r"conn \d+ 127\.0\.0\.1:\d+ -: closed: "
                  r"proxy_protocol is on and the peer is not a trusted proxy")


def test_proxy_protocol_needs_trusted_proxies(chatd):
    node = chatd(start=False, proxy_protocol="on")
    from conftest import run_chatd_cmd
    from conftest import write_config
    write_config(node.conf_path, node.conf)
    r = run_chatd_cmd(["-t", "-c", str(node.conf_path)])
    assert r.returncode != 0
    assert "proxy_protocol needs trusted_proxies" in r.stdout + r.stderr


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("pki-ops"), "ops", 0xC3)


def test_proxy_header_before_tls(chatd, cert):
    node = tls_node(chatd, cert, trusted_proxies="127.0.0.1", proxy_protocol="on")
    raw = socket.create_connection((HOST, node.tls_port), timeout=5)
    try:
        raw.sendall(proxy_v1("198.51.100.9", 45000))
        s = client_ctx().wrap_socket(raw, server_hostname="localhost")
        s.sendall(http_request_bytes("/?username=tlsuser"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        s.close()
    finally:
        raw.close()
    node.wait_log(r"conn \d+ 198\.51\.100\.9:45000 tlsuser: open .*tls=on")


def test_proxy_protocol_per_listener(chatd, cert):
    """proxy_protocol = wss: the balancer in front of the TLS port speaks
    PROXY, the plain port is reached directly (and the other way round)."""
    node = tls_node(chatd, cert, trusted_proxies="127.0.0.1", proxy_protocol="wss")
    w, status = upgrade(node.port, "/?username=direct")  # ws: no header expected
    w.close()
    assert status == 101
    raw = socket.create_connection((HOST, node.tls_port), timeout=5)
    try:  # wss: a TLS hello where the PROXY header must be is refused
        s = client_ctx().wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        with pytest.raises((ssl.SSLError, OSError)):
            s.do_handshake()
            s.sendall(http_request_bytes("/?username=nohdr"))
            if not s.recv(4096):
                raise OSError("closed")
    finally:
        raw.close()
    node.stop()
    node2 = tls_node(chatd, cert, trusted_proxies="127.0.0.1", proxy_protocol="ws")
    w, status = upgrade(node2.port, "/?username=nohdr2")  # ws now expects the header
    w.close()
    assert status is None
    w, status = upgrade(node2.port, "/?username=withhdr", prefix=proxy_v1("198.51.100.10", 45001))
    w.close()
    assert status == 101


# --------------------------------------------------------------------------
# plain HTTP on the TLS port


def test_plain_http_on_tls_port_gets_400(chatd, cert):
    node = tls_node(chatd, cert)
    with RawWs(node.tls_port) as w:
        w.send(http_request_bytes("/?username=plain"))
        r = w.read_http()
        assert r.status == 400, r
        assert b"plain HTTP request was sent to HTTPS port" in r.body
        assert r.header("connection") == "close"
        w.expect_eof()
    node.wait_log(r"refused with 400: plain HTTP on the TLS port")
    # TLS clients are served as before.
    s = client_ctx().wrap_socket(socket.create_connection((HOST, node.tls_port), timeout=5),
                                 server_hostname="localhost")
    try:
        s.sendall(http_request_bytes("/?username=secure"))
        assert s.recv(4096).startswith(b"HTTP/1.1 101")
    finally:
        s.close()
    assert metrics(node.port)['chatd_http_responses_total{status="400"}'] == 1


# --------------------------------------------------------------------------
# logs


def test_access_log_open_and_close_lines(chatd):
    node = chatd()
    with RawWs(node.port) as w:
        w.handshake("/?username=alice&room=den")
        w.send_frame(OP_TEXT, b"hello")
        assert w.recv_text() == "alice: hello"
        w.send_frame(OP_CLOSE, close_payload(1000, b"bye"))
        op, p = w.recv_frame()
        assert op == OP_CLOSE and parse_close(p)[0] == 1000
    node.wait_log(r"alice: close ")
    opened = log_lines(node, "alice: open")
    assert len(opened) == 1, node.log()
    assert re.search(r" INFO  \[worker-\d+\] conn \d+ 127\.0\.0\.1:\d+ alice: open rooms=den "
                     r"proto=text tls=off", opened[0]), opened[0]
    closed = log_lines(node, "alice: close")[0]
    f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', closed.split(": close", 1)[1]))
    assert f["rooms"] == "den"
    assert int(f["duration_ms"]) >= 0
    assert int(f["msgs_in"]) == 1 and int(f["msgs_out"]) == 1
    assert int(f["bytes_in"]) >= 2 * (6 + 5) and int(f["bytes_out"]) > len("alice: hello")
    assert f["code"] == "1000"
    assert f["reason"] == '"closed by the client"'


def test_access_log_off(chatd):
    node = chatd(access_log="off")
    with RawWs(node.port) as w:
        w.handshake("/?username=quiet")
    time.sleep(0.3)
    assert not log_lines(node, "quiet: open") and not log_lines(node, "quiet: close")


def test_connection_lines_name_address_and_user(chatd):
    node = chatd(rate_limit=1, rate_burst=1)
    with RawWs(node.port) as w:
        w.handshake("/?username=spammer")
        for _ in range(3):
            w.send_frame(OP_TEXT, b"x")
        expect_close(w, 1008)
    node.wait_log(r"conn \d+ 127\.0\.0\.1:\d+ spammer: over rate_limit, closing with 1008")
    node.wait_log(r"spammer: close .*code=1008 reason=\"rate limit exceeded\"")


def test_log_format_json(chatd):
    node = chatd(log_format="json")
    with RawWs(node.port) as w:
        w.handshake("/?username=" + "j%22son%20user%5C")
        w.send_frame(OP_TEXT, b"hi")
        w.recv_text()
    node.wait_log(r'"msg":"close"')
    lines = node.log().splitlines()
    objs = [json.loads(ln) for ln in lines]  # every line is one JSON object
    for o in objs:
        assert {"ts", "level", "thread", "msg"} <= o.keys(), o
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", o["ts"]), o
    opened = [o for o in objs if o["msg"] == "open"][0]
    assert opened["user"] == 'j"son user\\' and opened["level"] == "info"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", opened["addr"]) and isinstance(opened["conn"], int)
    assert opened["rooms"] == "lobby" and opened["proto"] == "text"
    closed = [o for o in objs if o["msg"] == "close"][0]
    assert closed["conn"] == opened["conn"]
    assert closed["msgs_in"] == 1 and closed["msgs_out"] == 1 and closed["code"] == 1006
    assert isinstance(closed["bytes_in"], int) and isinstance(closed["duration_ms"], int)
    assert any("chatd listening at ws://" in o["msg"] for o in objs)


# --------------------------------------------------------------------------
# token expiry


def test_expired_token_closes_a_text_client(chatd):
    node = chatd(auth_secret=SECRET)
    with RawWs(node.port, timeout=6) as w:
        w.handshake(f"/?token={jwt(claims('alice', ttl=2))}")
        t0 = time.monotonic()
        reason = expect_close(w, 1008, timeout=6)
        assert reason == b"token expired"
        assert time.monotonic() - t0 <= 3.5
    node.wait_log(r"alice: token expired, closing with 1008")


def test_refreshed_token_keeps_the_connection(chatd):
    node = chatd(auth_secret=SECRET)

    async def main():
        ws = await ws_connect(token_url(node, jwt(claims("alice", ttl=2))), subprotocols=["chatd.v1"])
        # Not for alice, or not valid: refused, the old exp stands.
        await ws.send(json.dumps({"op": "refresh", "token": jwt(claims("bob", ttl=60)), "ref": 1}))
        e = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (e["op"], e["code"], e["ref"]) == ("error", "forbidden", 1), e
        await ws.send(json.dumps({"op": "refresh", "token": jwt(claims("alice", ttl=60), "wrong")}))
        e = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (e["op"], e["code"]) == ("error", "bad_token"), e
        await ws.send(json.dumps({"op": "refresh"}))
        e = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (e["op"], e["code"]) == ("error", "bad_request"), e
        fresh = claims("alice", ttl=60)
        await ws.send(json.dumps({"op": "refresh", "token": jwt(fresh), "ref": "r"}))
        a = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert a == {"op": "refreshed", "exp": fresh["exp"], "ref": "r"}, a
        await asyncio.sleep(3.2)  # past the first token's exp
        await ws.send(json.dumps({"op": "ping"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["op"] == "pong"
        await ws.close()

        # Without a refresh, a chatd.v1 client goes at exp too.
        ws = await ws_connect(token_url(node, jwt(claims("carol", ttl=2))), subprotocols=["chatd.v1"])
        try:
            await asyncio.wait_for(ws.recv(), 5)
            raise AssertionError("expected a close")
        except Exception as e:  # websockets.ConnectionClosed
            assert getattr(e, "rcvd", None) is not None, e
            assert (e.rcvd.code, e.rcvd.reason) == (1008, "token expired")

    arun(main(), timeout=30)


def test_refresh_without_auth_is_an_error(chatd):
    node = chatd()

    async def main():
        ws = await ws_connect(node.url("alice"), subprotocols=["chatd.v1"])
        await ws.send(json.dumps({"op": "refresh", "token": "x.y.z"}))
        e = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (e["op"], e["code"]) == ("error", "bad_request"), e
        await ws.close()

    arun(main())
