"""Issue 2: one chatd node -- the demo, rooms, handshake, frames, limits,
timers, shutdown and configuration, against the real binary."""

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import (
    CHATD_BIN, HOST, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WS_KEY,
    RawWs, arun, close_payload, expect_close, expect_silence, free_port, frame,
    http_exchange, http_request_bytes, metrics, parse_close, recv_text, run_chatd_cmd,
    sanitizer_report, wait_until, write_config, ws_connect,
)


# --------------------------------------------------------------------------
# chat


def test_demo(chatd):
    """The original demo: Alice sends Hello!, Alice and Bob both see it."""
    srv = chatd()

    async def main():
        alice = await ws_connect(srv.url("Alice"))
        bob = await ws_connect(srv.url("Bob"))
        await alice.send("Hello!")
        assert await recv_text(alice) == "Alice: Hello!"
        assert await recv_text(bob) == "Alice: Hello!"
        await bob.send("Hi Alice")
        assert await recv_text(alice) == "Bob: Hi Alice"
        assert await recv_text(bob) == "Bob: Hi Alice"
        await alice.close()
        await bob.close()
        assert alice.close_code == 1000

    arun(main(), 30)


def test_rooms_isolate(chatd):
    """room=a and room=b do not see each other; no room means lobby."""
    srv = chatd()

    async def main():
        a1 = await ws_connect(srv.url("a1", room="a"))
        a2 = await ws_connect(srv.url("a2", room="a"))
        b1 = await ws_connect(srv.url("b1", room="b"))
        l1 = await ws_connect(srv.url("l1"))
        l2 = await ws_connect(srv.url("l2", room="lobby"))

        await a1.send("in a")
        assert await recv_text(a1) == "a1: in a"
        assert await recv_text(a2) == "a1: in a"
        # Had "in a" leaked into b or lobby it would come before these.
        await b1.send("in b")
        assert await recv_text(b1) == "b1: in b"
        await l1.send("in lobby")
        assert await recv_text(l1) == "l1: in lobby"
        assert await recv_text(l2) == "l1: in lobby"
        await l2.send("default room is lobby")
        assert await recv_text(l1) == "l2: default room is lobby"
        assert await recv_text(l2) == "l2: default room is lobby"
        for ws in (a1, a2, b1):
            await expect_silence(ws, 0.2)
        for ws in (a1, a2, b1, l1, l2):
            await ws.close()

    arun(main(), 30)


def fnv1a(data):
    """room.c's room_hash: 32-bit FNV-1a."""
    h = 2166136261
    for b in data:
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h


def colliding_room_names(limit=5_000_000):
    """Two room names with the same room_hash, by brute force (a birthday
    search: about 80,000 names on average)."""
    seen = {}
    for i in range(limit):
        name = f"r{i:x}"
        h = fnv1a(name.encode())
        if h in seen:
            return seen[h], name
        seen[h] = name
    pytest.fail("no colliding pair of room names found")


def test_rooms_with_one_hash_isolate(chatd):
    """Two rooms whose names have the same hash (so the same bucket too) on
    one worker are two rooms: neither hears the other. A lookup that trusts
    the hash, or the bucket, alone would join them."""
    a, b = colliding_room_names()
    assert a != b and fnv1a(a.encode()) == fnv1a(b.encode())
    srv = chatd(workers=1)

    async def main():
        a1 = await ws_connect(srv.url("a1", room=a))
        b1 = await ws_connect(srv.url("b1", room=b))
        a2 = await ws_connect(srv.url("a2", room=a))
        await a1.send("in a")
        assert await recv_text(a1) == "a1: in a"
        assert await recv_text(a2) == "a1: in a"
        await b1.send("in b")
        assert await recv_text(b1) == "b1: in b"
        # Had "in a" leaked into b it would have come before "in b".
        await expect_silence(a1, 0.2)
        await expect_silence(a2, 0.2)
        await expect_silence(b1, 0.2)
        for ws in (a1, a2, b1):
            await ws.close()

    arun(main(), 30)


def test_percent_decoded_names(chatd):
    srv = chatd()

    async def main():
        j = await ws_connect(srv.url(raw_query="username=J%C3%BCrgen&room=caf%C3%A9"))
        k = await ws_connect(srv.url("Kim", room="café"))
        other = await ws_connect(srv.url("Other", room="cafe"))
        await j.send("Grüße")
        assert await recv_text(j) == "Jürgen: Grüße"
        assert await recv_text(k) == "Jürgen: Grüße"
        await other.send("x")
        assert await recv_text(other) == "Other: x"
        for ws in (j, k, other):
            await ws.close()

    arun(main(), 30)


def test_one_order_for_everyone(chatd):
    """Several senders at once: every client sees the same sequence, each
    sender's messages in its send order."""
    srv = chatd(workers=2)
    n_clients, per = 6, 50

    async def main():
        clients = [await ws_connect(srv.url(f"u{i}")) for i in range(n_clients)]

        async def sender(i, ws):
            for k in range(per):
                await ws.send(f"{k}")

        async def reader(ws):
            got = []
            for _ in range(n_clients * per):
                got.append(await recv_text(ws, 10))
            return got

        readers = [asyncio.create_task(reader(ws)) for ws in clients]
        await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(clients)))
        seqs = await asyncio.gather(*readers)
        for s in seqs[1:]:
            assert s == seqs[0]
        for i in range(n_clients):
            mine = [int(m.split(": ", 1)[1]) for m in seqs[0] if m.startswith(f"u{i}: ")]
            assert mine == list(range(per))
        for ws in clients:
            await ws.close()

    arun(main(), 60)


# --------------------------------------------------------------------------
# handshake


def test_upgrade_accept_key(chatd):
    srv = chatd()
    with RawWs(srv.port) as w:
        r = w.handshake("/?username=raw")
        assert r.header("upgrade").lower() == "websocket"
        assert "upgrade" in r.header("connection").lower()


def _req(path="/?username=x", **kw):
    return http_request_bytes(path, **kw)


HANDSHAKE_ERRORS = [
    # id, request bytes, status, body must contain (case-insensitive) or None
    ("missing-key", _req(key=None), 400, None),
    ("short-key", _req(key="abc"), 400, None),
    ("key-not-16-bytes", _req(key="dGhlIHNhbXBsZSBub25jZQ"), 400, None),
    ("key-bad-base64", _req(key="dGhlIHNhbXBsZSBub25j!!=="), 400, None),
    ("version-8", _req(version="8"), 426, None),
    ("version-missing", _req(version=None), 426, None),
    ("post", _req(method="POST"), 405, None),
    ("put", _req(method="PUT"), 405, None),
    ("unknown-path", _req("/chat?username=x"), 404, None),
    ("missing-username", _req("/"), 400, "username"),
    ("missing-username-room-only", _req("/?room=a"), 400, "username"),
    ("empty-username", _req("/?username="), 400, "username"),
    ("username-too-long", _req("/?username=" + "x" * 33), 400, "username"),
    ("username-control-char", _req("/?username=a%01b"), 400, "username"),
    ("username-invalid-utf8", _req("/?username=%FF%FE"), 400, "username"),
    ("username-bad-escape", _req("/?username=%G1"), 400, "username"),
    ("username-nul", _req("/?username=a%00b"), 400, "username"),
    ("username-unit-separator", _req("/?username=a%1Fb"), 400, "username"),
    ("username-escape", _req("/?username=a%1Bb"), 400, "username"),
    ("username-del", _req("/?username=a%7Fb"), 400, "username"),
    ("room-unit-separator", _req("/?username=x&room=r%1F"), 400, "room"),
    ("room-too-long", _req("/?username=x&room=" + "r" * 65), 400, "room"),
    # WebSocket headers but no Upgrade (a plain GET / is the web page: test_web.py)
    ("no-upgrade-header", _req(upgrade=False, extra=[f"Sec-WebSocket-Key: {WS_KEY}",
                                                     "Sec-WebSocket-Version: 13"]), 400, None),
    ("upgrade-not-websocket", _req(upgrade=False, extra=["Upgrade: h2c", "Connection: Upgrade",
                                                          f"Sec-WebSocket-Key: {WS_KEY}",
                                                          "Sec-WebSocket-Version: 13"]), 400, None),
    ("http-1.0", _req().replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400, None),
    ("no-host", b"GET /?username=x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + WS_KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n",
     400, None),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n", 400, None),
]


@pytest.mark.parametrize("req,status,body", [h[1:] for h in HANDSHAKE_ERRORS],
                         ids=[h[0] for h in HANDSHAKE_ERRORS])
def test_handshake_errors(chatd, req, status, body):
    srv = chatd()
    with RawWs(srv.port) as w:
        w.send(req)
        r = w.read_http()
        assert r.status == status, f"sent {req!r}, got {r!r}"
        if status == 426:
            assert r.header("sec-websocket-version") == "13", r
        if body is not None:
            text = r.body.decode("utf-8", "replace").lower()
            assert body in text and len(text.strip()) > len(body), f"no reason in body: {r!r}"
        # A refused request ends the connection.
        w.expect_eof(3)


def test_username_max_length_accepted(chatd):
    srv = chatd()

    async def main():
        name = "n" * 32
        ws = await ws_connect(srv.url(name))
        await ws.send("hi")
        assert await recv_text(ws) == f"{name}: hi"
        await ws.close()

    arun(main(), 20)


def test_origin_allow_list(chatd):
    srv = chatd(allowed_origins="http://good.example https://also.example:8443")
    r = http_exchange(srv.port, _req(extra=["Origin: http://evil.example"]))
    assert r.status == 403, r
    with RawWs(srv.port) as w:
        w.handshake("/?username=o", extra=["Origin: http://good.example"])
    with RawWs(srv.port) as w:
        w.handshake("/?username=o", extra=["Origin: https://also.example:8443"])


def test_cross_site_page_cannot_join(chatd):
    """A page on another site opens a WebSocket to the chat: the browser
    sends that page's Origin, which is not on the list, so it gets 403 and
    never sees the room; the page of the chat itself gets in."""
    import websockets
    srv = chatd(allowed_origins="https://chat.example")
    foreign = ["https://evil.example", "https://chat.example.evil.example",
               "http://chat.example", "https://chat.example:8443", "null",
               "https://evil.example/https://chat.example"]

    async def main():
        alice = await ws_connect(srv.url("Alice"), origin="https://chat.example")
        for o in foreign:
            with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
                await ws_connect(srv.url("Mallory"), origin=o)
            assert e.value.status_code == 403, o
        await alice.send("private")
        assert await recv_text(alice) == "Alice: private"
        await alice.close()

    arun(main(), 30)


def test_healthz(chatd):
    srv = chatd()
    r = http_exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r


READYZ = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def test_readyz_on_a_local_node(chatd):
    """A node with the in-process broker is ready at once: /readyz 200
    "ready", only for GET; /healthz plain "ok"; the broker's gauges say up."""
    srv = chatd()
    r = http_exchange(srv.port, READYZ)
    assert (r.status, r.body) == (200, b"ready\n"), r
    r = http_exchange(srv.port, b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert r.status == 405 and r.header("allow") == "GET", r
    r = http_exchange(srv.port, HEALTHZ)
    assert (r.status, r.body) == (200, b"ok\n"), r
    m = metrics(srv.port)
    assert m["chatd_broker_up"] == 1, m
    assert m["chatd_publish_queue"] == 0, m
    assert m["chatd_publish_oldest_seconds"] == 0, m
    assert m["chatd_stream_read_lag"] == 0, m
    assert m["chatd_messages_oversize_total"] == 0, m
    assert m["chatd_stream_resets_total"] == 0, m
    assert m['chatd_listen_backlog{listener="ws"}'] == 0, m
    assert m["chatd_accept_pauses_total"] == 0, m


def test_redis_away_node_alive_but_not_ready(chatd):
    """Redis is not there (its port is closed): /readyz answers 503 naming
    Redis, /healthz stays 200 (the process serves) and names the problem,
    and an upgrade is refused with 503: no client gets a 101 before the
    consumer knows where the stream ends."""
    port = free_port()
    srv = chatd(broker="redis", redis_url=f"redis://127.0.0.1:{port}", workers=1)
    refused = metrics(srv.port)['chatd_http_responses_total{status="503"}']
    r = http_exchange(srv.port, READYZ)
    assert r.status == 503, r
    assert b"redis" in r.body.lower(), r
    h = http_exchange(srv.port, HEALTHZ)
    assert h.status == 200 and h.body.startswith(b"ok\n") and b"broker: " in h.body, h
    with RawWs(srv.port) as w:
        w.send(http_request_bytes("/?username=early"))
        u = w.read_http()
        assert u.status == 503 and u.body.startswith(b"not ready: "), u
        w.expect_eof(3)
    m = metrics(srv.port)
    assert m["chatd_broker_up"] == 0, m
    assert m["chatd_clients"] == 0, m
    assert m['chatd_http_responses_total{status="503"}'] == refused + 2, m


def test_readyz_503_while_draining(chatd):
    """On SIGTERM with drain_time the node first fails readiness: while it
    closes its clients over drain_time, /readyz answers 503 "draining" and
    an upgrade is refused with 503; the clients get 1001."""
    srv = chatd(drain_time="3s", shutdown_timeout="10s", workers=1)

    async def main():
        clients = [await ws_connect(srv.url(f"c{i}")) for i in range(20)]
        srv.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        r = await asyncio.to_thread(http_exchange, srv.port, READYZ)
        assert (r.status, r.body) == (503, b"draining\n"), r
        u = await asyncio.to_thread(http_exchange, srv.port, http_request_bytes("/?username=late"))
        assert (u.status, u.body) == (503, b"draining\n"), u
        h = await asyncio.to_thread(http_exchange, srv.port, HEALTHZ)
        assert h.status == 200, h
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1001, ws.close_code

    arun(main(), 30)
    assert srv.wait(15) == 0


def test_drain_delay_serves_clients_while_readiness_fails(chatd):
    """drain_delay: on SIGTERM /readyz fails at once, yet the clients are
    served on (a message still reaches them) and none is closed before
    drain_delay has passed -- time for a balancer to take the node out."""
    srv = chatd(drain_delay="1.5s", shutdown_timeout="10s", workers=1)

    async def main():
        a = await ws_connect(srv.url("a"))
        b = await ws_connect(srv.url("b"))
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        r = await asyncio.to_thread(http_exchange, srv.port, READYZ)
        assert (r.status, r.body) == (503, b"draining\n"), r
        await a.send("still here")
        assert await recv_text(b, 5) == "a: still here"
        await asyncio.wait_for(b.wait_closed(), 10)
        closed = time.monotonic() - t0
        assert b.close_code == 1001, b.close_code
        assert closed >= 1.4, f"closed {closed:.2f} s after SIGTERM, before drain_delay"
        await asyncio.wait_for(a.wait_closed(), 10)

    arun(main(), 30)
    assert srv.wait(15) == 0


def test_drain_delay_is_not_waited_for_without_clients(chatd):
    """drain_delay is time for a balancer to move clients away: a node
    that has none left to serve exits at once."""
    srv = chatd(drain_delay="5s", shutdown_timeout="10s", workers=2)
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    assert srv.wait(15) == 0
    took = time.monotonic() - t0
    assert took < 2.5, f"exited {took:.2f} s after SIGTERM with no clients and drain_delay 5s"


def test_client_with_its_101_hears_the_next_message(chatd):
    """A client that has its 101 is in the room: a message sent right after
    (from a client on another worker) reaches it. Joining after the 101 was
    written would let such a message pass before the join, now and then.
    (A message sent just before may reach it too: harmless, and in order.)"""
    srv = chatd(workers=2)
    rounds = 300

    async def main():
        s = await ws_connect(srv.url("s"))
        for i in range(rounds):
            c = await ws_connect(srv.url(f"c{i}"))
            await s.send(f"m{i}")
            # Earlier messages still on their way to c's worker when it
            # joined may come first; m{i} must come.
            for _ in range(i + 1):
                got = await recv_text(c)
                if got == f"s: m{i}":
                    break
                assert got.startswith("s: m") and int(got[4:]) < i, f"round {i}: {got}"
            assert await recv_text(s) == f"s: m{i}"
            await c.close()
        await s.close()

    # Two busy processes make the node's threads wait for a core now and
    # then, which is what opens the window between a 101 and the join.
    busy = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()+30\nwhile time.time()<t: pass"])
            for _ in range(2)]
    try:
        arun(main(), 60)
    finally:
        for b in busy:
            b.kill()
            b.wait(5)


def test_metrics(chatd):
    """GET /metrics counts what the node did: clients now, answers by
    status, messages in, messages fanned out, frames written."""
    srv = chatd(workers=2)
    m = metrics(srv.port)
    assert m["chatd_clients"] == 0
    assert m["chatd_messages_received_total"] == 0
    assert http_exchange(srv.port, _req(key=None)).status == 400
    assert http_exchange(srv.port, _req("/nowhere?username=x")).status == 404
    r = http_exchange(srv.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert r.status == 405

    async def main():
        a = await ws_connect(srv.url("a"))
        b = await ws_connect(srv.url("b"))
        for i in range(3):
            await a.send(f"m{i}")
        for i in range(3):
            assert await recv_text(a) == f"a: m{i}"
            assert await recv_text(b) == f"a: m{i}"
        m = await asyncio.to_thread(metrics, srv.port)
        assert m["chatd_clients"] == 2
        assert sum(v for k, v in m.items() if k.startswith("chatd_worker_clients{")) == 2
        assert m["chatd_messages_received_total"] == 3
        assert m["chatd_messages_delivered_total"] == 3
        assert m["chatd_frames_sent_total"] == 6
        assert m['chatd_http_responses_total{status="101"}'] == 2
        assert m['chatd_http_responses_total{status="400"}'] == 1
        assert m['chatd_http_responses_total{status="404"}'] == 1
        assert m['chatd_http_responses_total{status="405"}'] == 1
        assert m['chatd_http_responses_total{status="200"}'] == 1  # the first GET /metrics
        await a.close()
        await b.close()

    arun(main(), 30)
    wait_until(lambda: metrics(srv.port)["chatd_clients"] == 0, 5)


def test_metrics_with_many_workers(chatd):
    """A line per worker: with the most workers allowed the answer is still
    whole (every metric there, Content-Length right)."""
    srv = chatd(workers=256)
    m = metrics(srv.port)
    assert len([k for k in m if k.startswith("chatd_worker_clients{")]) == 256
    assert "chatd_messages_lost_total" in m


def test_header_too_large_431(chatd):
    srv = chatd(max_header_bytes="1k")
    big = _req(extra=["X-Padding: " + "p" * 2000])
    r = http_exchange(srv.port, big)
    assert r.status == 431, r
    # Just under the limit still works.
    with RawWs(srv.port) as w:
        w.handshake("/?username=x", extra=["X-Padding: " + "p" * 600])


def test_max_clients_503(chatd):
    srv = chatd(max_clients=2)

    async def main():
        a = await ws_connect(srv.url("a"))
        b = await ws_connect(srv.url("b"))
        r = await asyncio.to_thread(http_exchange, srv.port, _req("/?username=c"))
        assert r.status == 503, r
        await a.send("still here")
        assert await recv_text(b) == "a: still here"
        # A freed slot is usable again (the worker may take a moment to
        # account for the close).
        await a.close()
        deadline = time.monotonic() + 5
        for _ in range(100):
            r = await asyncio.to_thread(http_exchange, srv.port, _req("/?username=d"))
            if r.status == 101 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert r.status == 101, r
        await b.close()

    arun(main(), 30)


def test_handshake_timeout(chatd):
    """A connection that never finishes its request is closed after
    handshake_timeout; connected clients keep chatting meanwhile."""
    srv = chatd(handshake_timeout="500ms")

    async def main():
        alice = await ws_connect(srv.url("alice"))
        silent = socket.create_connection((HOST, srv.port), timeout=5)
        partial = socket.create_connection((HOST, srv.port), timeout=5)
        partial.sendall(b"GET /?username=slow HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        t0 = time.monotonic()

        def wait_closed(s):
            s.settimeout(3)
            try:
                while True:
                    d = s.recv(4096)
                    if not d:
                        return time.monotonic() - t0
            except ConnectionResetError:
                return time.monotonic() - t0
            except socket.timeout:
                return None

        closed = asyncio.gather(asyncio.to_thread(wait_closed, silent),
                                asyncio.to_thread(wait_closed, partial))
        for i in range(5):
            await alice.send(f"m{i}")
            assert await recv_text(alice) == f"alice: m{i}"
        t_silent, t_partial = await closed
        silent.close()
        partial.close()
        assert t_silent is not None and t_silent < 2.0, f"silent connection not closed: {t_silent}"
        assert t_partial is not None and t_partial < 2.0, f"partial request not closed: {t_partial}"
        await alice.send("after")
        assert await recv_text(alice) == "alice: after"
        await alice.close()

    arun(main(), 30)


def test_bytes_right_behind_request(chatd):
    """Handshake and the first frame in one write: the frame is not lost."""
    srv = chatd()
    with RawWs(srv.port) as w:
        first = frame(OP_TEXT, "first") + frame(OP_TEXT, "second")
        w.handshake("/?username=eager", then=first)
        assert w.recv_text() == "eager: first"
        assert w.recv_text() == "eager: second"


# --------------------------------------------------------------------------
# frames


def _frames(*parts):
    return b"".join(parts)


PROTOCOL_ERRORS = [
    ("unmasked-text", frame(OP_TEXT, "hi", mask=False), 1002),
    ("unmasked-ping", frame(OP_PING, "p", mask=False), 1002),
    ("rsv1", frame(OP_TEXT, "hi", rsv=4), 1002),
    ("rsv2", frame(OP_TEXT, "hi", rsv=2), 1002),
    ("rsv3", frame(OP_TEXT, "hi", rsv=1), 1002),
    ("rsv-on-ping", frame(OP_PING, "p", rsv=4), 1002),
    ("opcode-3", frame(0x3, "x"), 1002),
    ("opcode-7", frame(0x7, "x"), 1002),
    ("opcode-0xB", frame(0xB, "x"), 1002),
    ("opcode-0xF", frame(0xF, "x"), 1002),
    ("ping-126-bytes", frame(OP_PING, b"p" * 126), 1002),
    ("close-126-bytes", frame(OP_CLOSE, close_payload(1000, b"r" * 124)), 1002),
    ("fragmented-ping", frame(OP_PING, "p", fin=False), 1002),
    ("fragmented-close", frame(OP_CLOSE, close_payload(1000), fin=False), 1002),
    ("continuation-without-start", frame(OP_CONT, "x"), 1002),
    ("continuation-fin0-without-start", frame(OP_CONT, "x", fin=False), 1002),
    ("text-inside-fragmented-message",
     _frames(frame(OP_TEXT, "a", fin=False), frame(OP_TEXT, "b")), 1002),
    ("64bit-length-top-bit",
     bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\x00\x00\x00\x00", 1002),
    ("invalid-utf8", frame(OP_TEXT, b"ab\xffcd"), 1007),
    ("invalid-utf8-surrogate", frame(OP_TEXT, b"\xed\xa0\x80"), 1007),
    ("invalid-utf8-overlong", frame(OP_TEXT, b"\xc0\xaf"), 1007),
    ("invalid-utf8-truncated-end", frame(OP_TEXT, b"ok\xe2\x82"), 1007),
    ("invalid-utf8-across-fragments",
     _frames(frame(OP_TEXT, b"ok\xc3", fin=False), frame(OP_CONT, b"\x28 rest")), 1007),
    ("invalid-utf8-fail-fast", frame(OP_TEXT, b"\xff", fin=False), 1007),
    ("close-reason-invalid-utf8", frame(OP_CLOSE, close_payload(1000, b"\xff\xfe")), 1007),
    ("close-code-999", frame(OP_CLOSE, close_payload(999)), 1002),
    ("close-code-1004", frame(OP_CLOSE, close_payload(1004)), 1002),
    ("close-code-1005", frame(OP_CLOSE, close_payload(1005)), 1002),
    ("close-code-1006", frame(OP_CLOSE, close_payload(1006)), 1002),
    ("close-code-1016", frame(OP_CLOSE, close_payload(1016)), 1002),
    ("close-code-2000", frame(OP_CLOSE, close_payload(2000)), 1002),
    ("close-code-5000", frame(OP_CLOSE, close_payload(5000)), 1002),
    ("close-code-0", frame(OP_CLOSE, close_payload(0)), 1002),
    ("close-payload-1-byte", frame(OP_CLOSE, b"\x03"), 1002),
    ("binary", frame(OP_BINARY, b"\x00\x01"), 1003),
    ("binary-fragmented", frame(OP_BINARY, b"\x00", fin=False), 1003),
]


@pytest.mark.parametrize("data,code", [p[1:] for p in PROTOCOL_ERRORS],
                         ids=[p[0] for p in PROTOCOL_ERRORS])
def test_protocol_errors(chatd, data, code):
    srv = chatd(max_message="4k")
    with RawWs(srv.port) as w:
        w.handshake("/?username=bad")
        w.send(data)
        expect_close(w, code)
    # The node is unharmed.
    with RawWs(srv.port) as w:
        w.handshake("/?username=good")
        w.send_frame(OP_TEXT, "fine")
        assert w.recv_text() == "good: fine"


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999])
def test_close_echo(chatd, code):
    """The client's close is echoed with the same code, then TCP closes."""
    srv = chatd()
    with RawWs(srv.port) as w:
        w.handshake("/?username=closer")
        w.send_frame(OP_CLOSE, close_payload(code, "bye"))
        op, p = w.recv_frame()
        assert op == OP_CLOSE, (op, p)
        assert parse_close(p)[0] == code, p
        w.expect_eof()


def test_close_empty_payload_echo(chatd):
    srv = chatd()
    with RawWs(srv.port) as w:
        w.handshake("/?username=closer")
        w.send_frame(OP_CLOSE, b"")
        op, p = w.recv_frame()
        assert op == OP_CLOSE, (op, p)
        assert len(p) in (0, 2) and (len(p) == 0 or parse_close(p)[0] == 1000), p
        w.expect_eof()


def test_close_echo_websockets(chatd):
    srv = chatd()

    async def main():
        ws = await ws_connect(srv.url("lib"))
        await ws.close(1000, "bye")
        assert ws.close_code == 1000
        assert ws.close_rcvd.code == 1000

    arun(main(), 20)


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))], ids=["empty", "short", "125"])
def test_ping_pong(chatd, payload):
    srv = chatd()
    with RawWs(srv.port) as w:
        w.handshake("/?username=pinger")
        w.send_frame(OP_PING, payload)
        op, p = w.recv_frame()
        assert (op, p) == (OP_PONG, payload)
        # An unsolicited pong is ignored.
        w.send_frame(OP_PONG, b"unsolicited")
        w.send_frame(OP_TEXT, "still ok")
        assert w.recv_text() == "pinger: still ok"


def test_fragmented_message_just_under_max(chatd):
    """4096 bytes (max_message = 4k) in 64 fragments with pings between:
    arrives whole, and every ping is answered."""
    srv = chatd(max_message="4k")
    text = "".join(chr(ord("a") + i % 26) for i in range(4096 - 64)) + "é" * 32  # 4096 bytes
    data = text.encode()
    assert len(data) == 4096
    listener = RawWs(srv.port)
    listener.handshake("/?username=listener")
    with RawWs(srv.port) as w, listener:
        w.handshake("/?username=frag")
        out = []
        step = len(data) // 64
        for i in range(64):
            chunk = data[i * step:(i + 1) * step]
            op = OP_TEXT if i == 0 else OP_CONT
            out.append(frame(op, chunk, fin=(i == 63)))
            if i % 8 == 3:
                out.append(frame(OP_PING, f"p{i}"))
        # Half as one write, the rest frame by frame: both paths.
        half = len(out) // 2
        w.send(b"".join(out[:half]))
        for f in out[half:]:
            w.send(f)
        pongs = []
        for _ in range(20):
            op, p = w.recv_frame()
            if op == OP_PONG:
                pongs.append(p.decode())
                continue
            assert op == OP_TEXT and w.last_fin
            assert p.decode() == "frag: " + text
            break
        assert pongs == [f"p{i}" for i in range(64) if i % 8 == 3]
        assert listener.recv_text() == "frag: " + text


def test_message_just_over_max_fragmented_1009(chatd):
    srv = chatd(max_message="4k")
    with RawWs(srv.port) as w:
        w.handshake("/?username=big")
        data = b"x" * 4097
        w.send(frame(OP_TEXT, data[:2048], fin=False) + frame(OP_CONT, data[2048:4000], fin=False)
               + frame(OP_CONT, data[4000:]))
        expect_close(w, 1009)


def test_message_just_over_max_single_frame_1009(chatd):
    srv = chatd(max_message="4k")
    with RawWs(srv.port) as w:
        w.handshake("/?username=big")
        w.send(frame(OP_TEXT, b"y" * 4097))
        expect_close(w, 1009)


def test_huge_declared_length_1009(chatd):
    """A frame header announcing 1 GiB is refused at the header."""
    srv = chatd(max_message="4k")
    with RawWs(srv.port) as w:
        w.handshake("/?username=big")
        w.send(bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 30) + b"\x01\x02\x03\x04" + b"z" * 100)
        expect_close(w, 1009)


def test_thousand_frames_in_one_write(chatd):
    srv = chatd()
    with RawWs(srv.port) as w:
        w.handshake("/?username=burst")
        w.send(b"".join(frame(OP_TEXT, f"m{i}") for i in range(1000)))
        for i in range(1000):
            assert w.recv_text(timeout=10) == f"burst: m{i}"


def test_thousand_frames_byte_by_byte_split(chatd):
    """The same frames arriving in odd-sized pieces still parse in order."""
    srv = chatd()
    data = b"".join(frame(OP_TEXT, f"s{i}") for i in range(200))
    with RawWs(srv.port) as w:
        w.handshake("/?username=split")
        for i in range(0, len(data), 7):
            w.send(data[i:i + 7])
        for i in range(200):
            assert w.recv_text(timeout=10) == f"split: s{i}"


@pytest.mark.slow
@pytest.mark.tsan
def test_broadcast_200_clients(chatd):
    """200 clients in one room all receive every broadcast (threaded
    fan-out over all workers)."""
    srv = chatd(workers=4)
    n = 200

    async def main():
        clients = await asyncio.gather(*(ws_connect(srv.url(f"c{i}")) for i in range(n)))
        # Eight senders spread over the workers, ten messages each, all at once.
        msgs = []
        for k in range(10):
            for s in (0, 1, 2, 3, 77, 101, 150, 199):
                msgs.append((s, f"b{s}-{k}"))

        async def reader(ws):
            return [await recv_text(ws, 20) for _ in range(len(msgs))]

        readers = [asyncio.create_task(reader(ws)) for ws in clients]
        for s, text in msgs:
            await clients[s].send(text)
        seqs = await asyncio.gather(*readers)
        expect = sorted(f"c{s}: {t}" for s, t in msgs)
        for i, s in enumerate(seqs):
            assert sorted(s) == expect, f"client {i}"
            for snd in (0, 1, 2, 3, 77, 101, 150, 199):
                mine = [m for m in s if m.startswith(f"c{snd}: ")]
                assert mine == [f"c{snd}: b{snd}-{k}" for k in range(10)], f"client {i}: order of c{snd}"
            assert s == seqs[0], f"client {i} saw another order"
        await asyncio.gather(*(ws.close() for ws in clients))

    arun(main(), 90)


def test_abrupt_disconnects_do_not_disturb_others(chatd):
    srv = chatd()

    async def main():
        alice = await ws_connect(srv.url("alice"))
        bob = await ws_connect(srv.url("bob"))

        def rudeness():
            # Closed without a close frame.
            w = RawWs(srv.port)
            w.handshake("/?username=gone")
            w.close()
            # Closed in the middle of a frame header.
            w = RawWs(srv.port)
            w.handshake("/?username=mid-header")
            w.send(b"\x81")
            w.close()
            # Closed in the middle of a payload.
            w = RawWs(srv.port)
            w.handshake("/?username=mid-payload")
            w.send(frame(OP_TEXT, b"q" * 1000)[:300])
            w.close()
            # Reset (RST) in the middle of a fragmented message.
            w = RawWs(srv.port)
            w.handshake("/?username=reset")
            w.send(frame(OP_TEXT, "part", fin=False))
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.close()
            # Reset in the middle of the handshake.
            s = socket.create_connection((HOST, srv.port), timeout=5)
            s.sendall(b"GET /?username=x HTTP/1.1\r\nHost: a\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            # A reader that vanishes while messages are being sent to it.
            w = RawWs(srv.port)
            w.handshake("/?username=vanish")
            return w

        for round_ in range(3):
            vanish = await asyncio.to_thread(rudeness)
            await alice.send(f"r{round_}")
            vanish.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            vanish.close()
            await alice.send(f"s{round_}")
            assert await recv_text(bob) == f"alice: r{round_}"
            assert await recv_text(bob) == f"alice: s{round_}"
            assert await recv_text(alice) == f"alice: r{round_}"
            assert await recv_text(alice) == f"alice: s{round_}"
        await alice.close()
        await bob.close()

    arun(main(), 30)
    r = http_exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r


# --------------------------------------------------------------------------
# timers


@pytest.mark.slow
def test_idle_ping_and_answered_pings_keep_alive(chatd):
    srv = chatd(ping_interval="500ms", ping_timeout="500ms")
    with RawWs(srv.port) as w:
        w.handshake("/?username=idle")
        t0 = time.monotonic()
        op, p = w.recv_frame(timeout=3)
        assert op == OP_PING, (op, p)
        assert time.monotonic() - t0 < 2.5
        assert len(p) <= 125
        w.send_frame(OP_PONG, p)
        # Answering keeps it alive across several ping periods.
        deadline = time.monotonic() + 2.0
        pings = 1
        while time.monotonic() < deadline:
            try:
                op, p = w.recv_frame(timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            assert op == OP_PING, (op, p)
            pings += 1
            w.send_frame(OP_PONG, p)
        assert pings >= 2
        w.send_frame(OP_TEXT, "alive")
        assert w.recv_text() == "idle: alive"


@pytest.mark.slow
def test_unanswered_ping_drops_client(chatd):
    srv = chatd(ping_interval="500ms", ping_timeout="500ms")
    with RawWs(srv.port) as w:
        w.handshake("/?username=deaf")
        t0 = time.monotonic()
        op, _ = w.recv_frame(timeout=3)
        assert op == OP_PING
        # Never answer: the server must end the connection (a close frame
        # first is polite; then TCP must close).
        deadline = t0 + 4
        got_close = None
        for _ in range(100):
            try:
                op, p = w.recv_frame(timeout=max(0.05, deadline - time.monotonic()))
            except EOFError:
                break
            except ConnectionResetError:
                break
            except TimeoutError:
                pytest.fail("client that never answered the ping was not dropped within 4 s")
            if op == OP_CLOSE:
                got_close = p
                w.expect_eof(3)
                break
        elapsed = time.monotonic() - t0
        assert elapsed < 4, elapsed
        assert elapsed >= 0.3, f"dropped too early ({elapsed:.2f}s)"


# --------------------------------------------------------------------------
# shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown_1001(chatd, sig):
    srv = chatd(shutdown_timeout="5s")
    if srv.external:
        pytest.skip("needs its own process")

    async def main():
        clients = [await ws_connect(srv.url(f"u{i}", room=f"r{i % 2}")) for i in range(4)]
        raws = []
        for i in range(2):
            w = RawWs(srv.port)
            w.handshake(f"/?username=raw{i}")
            raws.append(w)
        await clients[0].send("before")
        assert await recv_text(clients[0]) == "u0: before"
        t0 = time.monotonic()
        srv.send_signal(sig)

        def raw_close(w):
            op, p = w.recv_frame(timeout=5)
            assert op == OP_CLOSE, (op, p)
            code = parse_close(p)[0]
            w.send_frame(OP_CLOSE, close_payload(code))
            w.expect_eof(5)
            w.close()
            return code

        raw_codes = await asyncio.gather(*(asyncio.to_thread(raw_close, w) for w in raws))
        assert raw_codes == [1001, 1001]
        for ws in clients:
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1001, ws.close_code
        rc = await asyncio.to_thread(srv.wait, 8)
        assert rc == 0, f"exit code {rc}"
        assert time.monotonic() - t0 < 6

    arun(main(), 40)


@pytest.mark.slow
def test_shutdown_with_unresponsive_client_within_timeout(chatd):
    """A client that never answers the close does not hold the process past
    shutdown_timeout."""
    srv = chatd(shutdown_timeout="1s")
    if srv.external:
        pytest.skip("needs its own process")
    w = RawWs(srv.port)
    w.handshake("/?username=stubborn")
    t0 = time.monotonic()
    srv.send_signal(signal.SIGTERM)
    op, p = w.recv_frame(timeout=5)
    assert op == OP_CLOSE and parse_close(p)[0] == 1001, (op, p)
    rc = srv.wait(6)
    elapsed = time.monotonic() - t0
    w.close()
    assert rc == 0, rc
    assert elapsed < 3.5, f"took {elapsed:.1f}s with shutdown_timeout 1s"


# --------------------------------------------------------------------------
# configuration


BAD_CONFIGS = [
    ("unknown-key", ["workers = 1", "no_such_directive = 1"], 2),
    ("bad-int", ["log_level = info", "", "workers = banana"], 3),
    ("bad-size", ["max_message = lots"], 1),
    ("bad-duration", ["# comment", "ping_interval = soon"], 2),
    ("bad-log-level", ["log_level = chatty"], 1),
    ("bad-listen", ["listen = nowhere"], 1),
    ("no-equals", ["workers = 1", "max_clients 10"], 2),
    ("out-of-range", ["max_username = 100000"], 1),
    ("bad-broker", ["broker = carrier-pigeon"], 1),
]


@pytest.mark.parametrize("lines,bad_line", [b[1:] for b in BAD_CONFIGS], ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_line(tmp_path, lines, bad_line):
    path = tmp_path / "bad.conf"
    path.write_text("\n".join(lines) + "\n")
    r = run_chatd_cmd(["-c", str(path)])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"{path}:{bad_line}:" in r.stderr, r.stderr
    assert not sanitizer_report(r.stderr), r.stderr
    r = run_chatd_cmd(["-t", "-c", str(path)])
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert f"{path}:{bad_line}:" in r.stderr, r.stderr


def test_missing_config_file(tmp_path):
    path = tmp_path / "absent.conf"
    r = run_chatd_cmd(["-c", str(path)])
    assert r.returncode == 1
    assert str(path) in r.stderr, r.stderr


def test_check_good_config(tmp_path):
    path = write_config(tmp_path / "good.conf", {"listen": f"{HOST}:{free_port()}", "workers": 2,
                                                 "max_message": "8k", "ping_interval": "250ms"})
    r = run_chatd_cmd(["-t", "-c", str(path)])
    assert r.returncode == 0, r.stderr
    assert not sanitizer_report(r.stderr + r.stdout)


def test_check_shipped_config():
    repo_conf = os.path.join(os.path.dirname(__file__), "..", "..", "conf", "chatd.conf")
    r = run_chatd_cmd(["-t", "-c", repo_conf])
    assert r.returncode == 0, r.stderr


def test_env_port_override(chatd):
    port = free_port()
    srv = chatd(start=False, env={"PORT": str(port)})
    if srv.external:
        pytest.skip("needs its own process")
    file_port = srv.port
    srv.port = port  # where it must listen; the file still names file_port
    srv.start()
    assert f":{port}" in srv.log()

    async def main():
        ws = await ws_connect(srv.url("env"))
        await ws.send("on env port")
        assert await recv_text(ws) == "env: on env port"
        await ws.close()

    arun(main(), 20)
    s = socket.socket()
    try:
        s.settimeout(1)
        assert s.connect_ex((HOST, file_port)) != 0, "still listening on the file's port"
    finally:
        s.close()


def test_upgrade_header_variants(chatd):
    """What browsers send: token lists, odd case, headers one byte at a time."""
    srv = chatd()
    req = (f"GET /?username=fx HTTP/1.1\r\nhost: 127.0.0.1\r\nUPGRADE: WebSocket\r\n"
           f"connection: keep-alive, Upgrade\r\nsec-websocket-key: {WS_KEY}\r\n"
           f"Sec-WebSocket-Version: 13\r\nUser-Agent: test\r\n\r\n").encode()
    with RawWs(srv.port) as w:
        for i in range(len(req)):
            w.send(req[i:i + 1])
        r = w.read_http()
        assert r.status == 101, r
        w.send_frame(OP_TEXT, "ok")
        assert w.recv_text() == "fx: ok"


def test_large_message_64bit_length(chatd):
    """65,536 bytes (max_message 64k) in one frame with a 64-bit length:
    delivered whole, in a frame with a 64-bit length."""
    srv = chatd(max_message="64k")
    text = ("0123456789abcdef" * 4096)
    assert len(text) == 65536
    with RawWs(srv.port, timeout=10) as w:
        w.handshake("/?username=L")
        w.send(frame(OP_TEXT, text))
        assert w.recv_text() == "L: " + text
        w.send(frame(OP_TEXT, text + "!"))
        expect_close(w, 1009)


def test_messages_then_close_in_one_write(chatd):
    """Frames before a close in the same write are delivered, then the close
    is echoed; anything after the close is ignored."""
    srv = chatd()
    with RawWs(srv.port) as listener, RawWs(srv.port) as w:
        listener.handshake("/?username=listener")
        w.handshake("/?username=quick")
        w.send(frame(OP_TEXT, "one") + frame(OP_TEXT, "two") + frame(OP_CLOSE, close_payload(1000, "done"))
               + frame(OP_TEXT, "after close"))
        # The sender's own copies may come before the echo or not at all (no
        # data after the server's close frame, RFC 6455 5.5.1).
        own = []
        for _ in range(3):
            op, p = w.recv_frame()
            if op == OP_CLOSE:
                break
            own.append(p.decode())
        assert op == OP_CLOSE and parse_close(p)[0] == 1000, (op, p)
        assert own == ["quick: one", "quick: two"][:len(own)], own
        w.expect_eof()
        assert listener.recv_text() == "quick: one"
        assert listener.recv_text() == "quick: two"
        listener.send_frame(OP_TEXT, "mark")
        assert listener.recv_text() == "listener: mark"  # "after close" never came
