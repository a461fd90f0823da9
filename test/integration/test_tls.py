"""Issue 4: wss -- TLS beside ws on one node, one chat for both, versions,
garbage and stalls on the TLS port, bytes behind the request, certificate
reload on SIGHUP, and start failures that name the file. Issue 16: the
session after the handshake in chatd's own record layer (resumption,
KeyUpdate, forged records), several acceptor threads, certificate key types
and key exchange groups.

Certificates are made here with the openssl command line (self-signed, EC
P-256 unless a test asks for another key, CN=localhost, SAN IP:127.0.0.1),
in the test's temporary folder.
"""

import asyncio
import os
import random
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import time
import warnings

import pytest

from conftest import (
    CHATD_URL, HOST, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWs, arun, expect_close, frame,
    free_port, http_request_bytes, metrics, parse_close, recv_text, run_chatd_cmd,
    sanitizer_report, write_config, ws_connect,
)
from test_redis import wait_nodes_ready

pytestmark = pytest.mark.skipif(bool(CHATD_URL), reason="starts its own TLS nodes")


# --------------------------------------------------------------------------
# certificates


class Cert:
    def __init__(self, cert, key, serial):
        self.cert, self.key, self.serial = cert, key, serial
        self.der = ssl.PEM_cert_to_DER_cert(cert.read_text())


KEY_TYPES = {
    "ecdsa-p256": ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
    "ecdsa-p384": ["ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
    "rsa-2048": ["rsa:2048"],
}


def make_cert(folder, name, serial, key_type="ecdsa-p256"):
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", *KEY_TYPES[key_type],
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-set_serial", str(serial), "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    return Cert(cert, key, serial)


def der_serial(der):
    """The serial of a DER certificate, as openssl prints it (hex)."""
    r = subprocess.run(["openssl", "x509", "-noout", "-serial", "-inform", "DER"], input=der,
                       capture_output=True, check=True, timeout=30)
    return int(r.stdout.decode().strip().split("=", 1)[1], 16)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """Two certificates with their keys: a (serial 0xA1) and b (serial 0xB2)."""
    d = tmp_path_factory.mktemp("pki")
    return {"a": make_cert(d, "a", 0xA1), "b": make_cert(d, "b", 0xB2)}


# --------------------------------------------------------------------------
# nodes and clients


def tls_node(chatd, cert, name=None, **kw):
    """A node serving ws on its port and wss on node.tls_port."""
    tport = free_port()
    conf = dict(tls_listen=f"{HOST}:{tport}", tls_cert=str(cert.cert), tls_key=str(cert.key))
    conf.update(kw)
    node = chatd(name=name, **conf)
    node.tls_port = tport
    assert f"wss://{HOST}:{tport}" in node.log(), node.log()
    return node


def wss_url(node, username, room=None):
    return node.url(username, room=room).replace(f"ws://{HOST}:{node.port}/",
                                                 f"wss://{HOST}:{node.tls_port}/", 1)


def client_ctx(version=None, cafile=None):
    """A client context: pinned to one version when given; verifying against
    cafile when given, else accepting any certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile=str(cafile))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
    return ctx


async def wss_connect(node, username, ctx=None, room=None):
    return await ws_connect(wss_url(node, username, room), ssl=ctx or client_ctx())


def ssl_object(ws):
    return ws.transport.get_extra_info("ssl_object")


class TlsWs(RawWs):
    """RawWs over TLS: the TLS handshake is done in the constructor.
    rcvbuf shrinks the socket's receive buffer (set before connecting)."""

    def __init__(self, port, ctx=None, timeout=5.0, session=None, rcvbuf=None):
        if rcvbuf is None:
            super().__init__(port, timeout)
        else:
            self.port, self.timeout, self.buf, self.response, self.last_fin = port, timeout, b"", None, True
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((HOST, port))
        self.sock = (ctx or client_ctx()).wrap_socket(self.sock, server_hostname=HOST,
                                                      session=session)


def raw_read(sock, want, timeout):
    """Up to `want` bytes from a plain socket, less if the peer closes;
    raises TimeoutError when neither happens in time."""
    deadline = time.monotonic() + timeout
    buf = b""
    for _ in range(1000):
        if len(buf) >= want:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"only {len(buf)} bytes and no close within {timeout}s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(want - len(buf))
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return buf


def wait_closed(sock, timeout):
    """Reads and discards until the peer closes; returns the seconds it took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    for _ in range(10000):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - t0
        except socket.timeout:
            break
        except ConnectionResetError:
            return time.monotonic() - t0
    raise AssertionError(f"connection still open after {timeout}s")


def client_hello(version, suites=(0xC02B, 0xC02C, 0xC009, 0xC00A, 0xC02F, 0xC013, 0x002F, 0x00FF)):
    """A TLS ClientHello record offering exactly `version` (no
    supported_versions extension): ECDHE-ECDSA, ECDHE-RSA and RSA suites."""
    def ext(kind, data):
        return struct.pack("!HH", kind, len(data)) + data

    exts = ext(0x000A, struct.pack("!H", 4) + b"\x00\x17\x00\x1d")  # groups: P-256, x25519
    exts += ext(0x000B, b"\x01\x00")  # point formats: uncompressed
    exts += ext(0x000D, struct.pack("!H", 6) + b"\x04\x03\x08\x04\x04\x01")  # sig algs
    cs = b"".join(struct.pack("!H", s) for s in suites)
    body = struct.pack("!H", version) + bytes(range(32)) + b"\x00"
    body += struct.pack("!H", len(cs)) + cs + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def hello_answer(port, hello, timeout=3.0):
    """Sends a hand-built ClientHello; returns the first bytes the server
    answers (6 at most: record header and handshake type)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(hello)
        return raw_read(s, 6, timeout)


async def exchange(a, a_name, b, b_name, tag=""):
    """a and b (in one room) each send one message; both see both."""
    await a.send(f"from {a_name}{tag}")
    for ws in (a, b):
        assert await recv_text(ws, 10) == f"{a_name}: from {a_name}{tag}"
    await b.send(f"from {b_name}{tag}")
    for ws in (a, b):
        assert await recv_text(ws, 10) == f"{b_name}: from {b_name}{tag}"


# --------------------------------------------------------------------------
# one chat for ws and wss


def test_wss_and_ws_share_a_chat(chatd, pki):
    """A wss client (verifying the configured certificate) and a ws client
    on the same node talk both ways."""
    srv = tls_node(chatd, pki["a"])

    async def main():
        alice = await wss_connect(srv, "Alice", client_ctx(cafile=pki["a"].cert))
        bob = await ws_connect(srv.url("Bob"))
        assert ssl_object(alice).getpeercert(binary_form=True) == pki["a"].der
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


def test_wss_with_permessage_deflate(chatd, pki):
    """permessage-deflate over wss: large messages both ways, compressed
    (the shared frames go through the TLS record staging like plain ones),
    the same text for a plain wss client beside."""
    srv = tls_node(chatd, pki["a"])
    text = "so I think we should meet at the station around seven " * 400  # 22 KB

    async def main():
        z = await wss_connect(srv, "Zed")
        p = await ws_connect(wss_url(srv, "Pam"), ssl=client_ctx(), compression=None)
        assert z.response_headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")
        assert p.response_headers.get("Sec-WebSocket-Extensions") is None
        for k in range(5):
            await z.send(f"{k} {text}")
            for ws in (z, p):
                assert await recv_text(ws) == f"Zed: {k} {text}"
        await z.close()
        await p.close()

    arun(main(), 30)
    m = metrics(srv.port)
    assert m["chatd_messages_received_compressed_total"] == 5
    assert m["chatd_frames_compressed_total"] >= 5


@pytest.mark.redis
def test_wss_and_ws_across_redis_nodes(chatd, redis, pki):
    """Redis broker: wss on node A and ws on node B share one chat."""
    r = redis()
    a = tls_node(chatd, pki["a"], name="a", broker="redis", redis_url=r.url)
    b = chatd(name="b", broker="redis", redis_url=r.url)

    async def main():
        await wait_nodes_ready([a, b])
        alice = await wss_connect(a, "Alice")
        bob = await ws_connect(b.url("Bob"))
        await exchange(alice, "Alice", bob, "Bob")
        await alice.close()
        await bob.close()

    arun(main(), 60)


# --------------------------------------------------------------------------
# versions


def test_tls_versions(chatd, pki):
    """TLS 1.3 and 1.2 chat; 1.1 is refused with an alert, never a
    ServerHello; tls_ciphers picks the 1.2 suite."""
    suite = "ECDHE-ECDSA-AES256-GCM-SHA384"
    srv = tls_node(chatd, pki["a"], tls_ciphers=f"{suite}:ECDHE-ECDSA-CHACHA20-POLY1305")

    async def main():
        for v, name in ((ssl.TLSVersion.TLSv1_3, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")):
            ws = await wss_connect(srv, "v", client_ctx(v))
            assert ssl_object(ws).version() == name
            if name == "TLSv1.2":
                assert ssl_object(ws).cipher()[0] == suite
            await ws.send(name)
            assert await recv_text(ws) == f"v: {name}"
            await ws.close()

    arun(main(), 30)

    # A TLS 1.1 client as Python's OpenSSL makes one (when it still can).
    ctx = client_ctx(ssl.TLSVersion.TLSv1_1)
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    with pytest.raises(ssl.SSLError) as e:
        TlsWs(srv.tls_port, ctx).close()
    # NO_PROTOCOLS_AVAILABLE: this OpenSSL cannot offer 1.1; the hand-built
    # hello below proves the refusal then.
    assert e.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "NO_PROTOCOLS_AVAILABLE"), e.value

    # And by hand: the same hello answered by a ServerHello at 1.2 (so the
    # hello is sound) and by an alert or a close at 1.1.
    ans = hello_answer(srv.tls_port, client_hello(0x0303))
    assert ans[:1] == b"\x16" and ans[5:6] == b"\x02", f"no ServerHello for TLS 1.2: {ans!r}"
    ans = hello_answer(srv.tls_port, client_hello(0x0302))
    assert ans[:1] in (b"", b"\x15"), f"TLS 1.1 hello not refused: {ans!r}"
    ans = hello_answer(srv.tls_port, client_hello(0x0301))
    assert ans[:1] in (b"", b"\x15"), f"TLS 1.0 hello not refused: {ans!r}"

    async def still():
        ws = await wss_connect(srv, "after")
        await ws.send("x")
        assert await recv_text(ws) == "after: x"
        await ws.close()

    arun(still(), 20)


def test_min_version_13_refuses_12(chatd, pki):
    srv = tls_node(chatd, pki["a"], tls_min_version="1.3")
    with pytest.raises(ssl.SSLError):
        TlsWs(srv.tls_port, client_ctx(ssl.TLSVersion.TLSv1_2)).close()
    ans = hello_answer(srv.tls_port, client_hello(0x0303))
    assert ans[:1] in (b"", b"\x15"), f"TLS 1.2 hello not refused: {ans!r}"
    with TlsWs(srv.tls_port, client_ctx(ssl.TLSVersion.TLSv1_3)) as w:
        assert w.sock.version() == "TLSv1.3"
        w.handshake("/?username=t13", then=frame(OP_TEXT, "ok"))
        assert w.recv_text() == "t13: ok"


def test_session_resumption(chatd, pki):
    """A client that comes back with its session skips the full handshake,
    at 1.2 (session cache) and 1.3 (tickets)."""
    srv = tls_node(chatd, pki["a"])
    for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = client_ctx(v)
        with TlsWs(srv.tls_port, ctx) as w:
            w.handshake("/?username=r")  # a 1.3 ticket comes with the first read
            session = w.sock.session
            assert not w.sock.session_reused
        assert session is not None
        with TlsWs(srv.tls_port, ctx, session=session) as w:
            assert w.sock.session_reused, f"{v.name}: session not resumed"
            w.handshake("/?username=r", then=frame(OP_TEXT, "again"))
            assert w.recv_text() == "r: again"


def s_client(port, chunks, args=(), timeout=20):
    """openssl s_client against port: writes each (pause_s, bytes) of chunks
    to its stdin after the pause, then closes stdin (s_client then ends the
    connection); returns what it printed, stdout and stderr together. A
    chunk that is one letter and a newline is one of s_client's commands (K:
    a KeyUpdate that asks for the server's)."""
    p = subprocess.Popen(["openssl", "s_client", "-connect", f"{HOST}:{port}", *args],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for pause, data in chunks:
            time.sleep(pause)
            p.stdin.write(data)
            p.stdin.flush()
        time.sleep(0.5)
        p.stdin.close()
        p.wait(timeout)  # its few KB of output fit in the pipe
        return p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def test_session_resumption_with_s_client(chatd, pki, tmp_path):
    """openssl s_client saves the session (the TLS 1.3 ticket the node
    sends once the session has left OpenSSL) and comes back with it:
    "Reused", and it chats."""
    srv = tls_node(chatd, pki["a"])
    sess = tmp_path / "sess.pem"
    request = http_request_bytes("/?username=s")
    out = s_client(srv.tls_port, [(0.3, request)], ["-sess_out", str(sess)])
    assert b"101 Switching Protocols" in out and b"New, TLSv1.3" in out, out[-2000:]
    assert sess.exists()
    out = s_client(srv.tls_port, [(0.3, request), (0.3, frame(OP_TEXT, "back"))],
                   ["-sess_in", str(sess)])
    assert b"Reused, TLSv1.3" in out, out[-2000:]
    assert b"s: back" in out, out[-2000:]


def test_key_update(chatd, pki):
    """A client updates its keys and asks for the node's (s_client's K):
    its next message is read, and the node's answer after its own
    KeyUpdate is read by the client."""
    srv = tls_node(chatd, pki["a"])
    out = s_client(srv.tls_port, [(0.3, http_request_bytes("/?username=k")), (0.5, b"K\n"),
                                  (0.5, frame(OP_TEXT, "after the update")),
                                  (0.5, b"K\n"), (0.5, frame(OP_TEXT, "and again"))])
    assert out.count(b"KEYUPDATE") == 2, out[-2000:]
    assert b"k: after the update" in out and b"k: and again" in out, out[-2000:]
    assert "TLS:" not in srv.log(), srv.log()


def test_forged_record_closes_one_client(chatd, pki):
    """Bytes that are no record of the session, sent after the handshake,
    close that connection (logged with the reason); the node serves on."""
    srv = tls_node(chatd, pki["a"])
    with TlsWs(srv.tls_port) as w:
        w.handshake("/?username=forger")
        raw = socket.socket(fileno=os.dup(w.sock.fileno()))
        try:
            raw.sendall(b"\x17\x03\x03\x00\x20" + bytes(range(32)))
            wait_closed(raw, 5)
        finally:
            raw.close()
    srv.wait_log(r"forger: TLS: TLS record failed authentication, closing", 5)

    async def main():
        alice = await wss_connect(srv, "Alice")
        bob = await ws_connect(srv.url("Bob"))
        await exchange(alice, "Alice", bob, "Bob")
        await alice.close()
        await bob.close()

    arun(main(), 30)


@pytest.mark.tsan
def test_acceptor_threads_share_the_limits(chatd, pki):
    """Four acceptor threads take 200 clients arriving at once, half wss
    and half ws: max_clients holds exactly (150 upgraded, 50 refused with
    503), they all chat, and /metrics adds up every thread's counts."""
    import websockets
    srv = tls_node(chatd, pki["a"], acceptor_threads=4, workers=2, max_clients=150)
    assert "4 acceptor threads" in srv.log()
    n = 200

    async def one(i):
        try:
            if i % 2:
                return i, await wss_connect(srv, f"c{i}")
            return i, await ws_connect(srv.url(f"c{i}"))
        except websockets.InvalidStatusCode as e:
            return i, e.status_code

    async def main():
        got = await asyncio.gather(*(one(i) for i in range(n)))
        open_ = [(i, ws) for i, ws in got if not isinstance(ws, int)]
        refused = [ws for _, ws in got if isinstance(ws, int)]
        assert (len(open_), refused) == (150, [503] * 50)
        m = await asyncio.to_thread(metrics, srv.port)
        assert m["chatd_clients"] == 150
        assert m['chatd_http_responses_total{status="101"}'] == 150
        assert m['chatd_http_responses_total{status="503"}'] == 50
        i0, ws0 = open_[0]
        await ws0.send("to all")
        for _, ws in open_:
            assert await recv_text(ws, 20) == f"c{i0}: to all"
        await asyncio.gather(*(ws.close() for _, ws in open_))

    arun(main(), 120)


# --------------------------------------------------------------------------
# certificate key types and key exchange groups


@pytest.mark.parametrize("key_type", sorted(KEY_TYPES))
def test_certificate_key_types(chatd, tmp_path, key_type):
    """Whatever key the operator's certificate has (ECDSA P-256 or P-384,
    RSA), chatd serves it as it is: TLS 1.3 and 1.2 clients verifying it
    chat, and TLS 1.2 picks the suite that signs with that key."""
    cert = make_cert(tmp_path, key_type, 0xC3, key_type)
    srv = tls_node(chatd, cert)
    signer = "RSA" if key_type.startswith("rsa") else "ECDSA"

    async def main():
        for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            ws = await wss_connect(srv, "k", client_ctx(v, cafile=cert.cert))
            assert ssl_object(ws).getpeercert(binary_form=True) == cert.der
            if v == ssl.TLSVersion.TLSv1_2:
                assert ssl_object(ws).cipher()[0].startswith(f"ECDHE-{signer}-"), ssl_object(ws).cipher()
            await ws.send(key_type)
            assert await recv_text(ws) == f"k: {key_type}"
            await ws.close()

    arun(main(), 30)


def server_temp_key(port, args):
    """The key exchange s_client reports ("X25519", "prime256v1", ...), or
    None when the handshake failed."""
    out = s_client(port, [], args).decode(errors="replace")
    for line in out.splitlines():
        if line.startswith("Server Temp Key:"):
            return line.split(":", 1)[1].split(",")[0 if "X25519" in line else 1].strip()
    return None


def test_key_exchange_groups(chatd, pki):
    """X25519 first: a TLS 1.2 client listing P-256 first still gets X25519
    (the server's order); a client with P-256 or P-384 alone gets it; the
    groups that cost the server most (finite-field, X448) are not offered."""
    srv = tls_node(chatd, pki["a"])
    port = srv.tls_port
    assert server_temp_key(port, []) == "X25519"
    assert server_temp_key(port, ["-tls1_2", "-groups", "P-256:X25519"]) == "X25519"
    assert server_temp_key(port, ["-groups", "P-256"]) == "prime256v1"
    assert server_temp_key(port, ["-groups", "P-384"]) == "secp384r1"
    for costly in ("ffdhe2048", "ffdhe8192", "X448"):
        assert server_temp_key(port, ["-groups", costly]) is None, costly
    assert srv.running


# --------------------------------------------------------------------------
# garbage, stalls and limits on the TLS port


def test_plain_http_and_garbage_on_tls_port(chatd, pki):
    """Plain HTTP and random bytes to the TLS port are closed at once (not
    by the 10 s handshake deadline); the node keeps serving. (Fewer than 5
    bytes, a record header, leave nothing to judge: the deadline closes
    those, see the stall test.)"""
    srv = tls_node(chatd, pki["a"], handshake_timeout="10s")
    rng = random.Random(4)
    blobs = [http_request_bytes("/?username=plain"), b"GET /healthz HTTP/1.1\r\n\r\n"]
    blobs += [bytes(rng.randrange(256) for _ in range(n)) for n in (5, 7, 64, 3000)]
    for blob in blobs:
        with socket.create_connection((HOST, srv.tls_port), timeout=5) as s:
            s.sendall(blob)
            took = wait_closed(s, 5)
        assert took < 3, f"{blob[:20]!r}...: closed only after {took:.1f}s"
    assert "TLS handshake failed" in srv.log()

    async def main():
        alice = await wss_connect(srv, "Alice")
        bob = await ws_connect(srv.url("Bob"))
        await exchange(alice, "Alice", bob, "Bob")
        await alice.close()
        await bob.close()

    arun(main(), 30)


def test_stalled_tls_handshakes_time_out(chatd, pki):
    """Clients that stall before, inside, or right after the TLS handshake
    are closed after handshake_timeout (1 s); a wss client connects and
    chats meanwhile, and stays past the deadline."""
    srv = tls_node(chatd, pki["a"], handshake_timeout="1s")
    hello = client_hello(0x0303)
    silent = socket.create_connection((HOST, srv.tls_port), timeout=5)
    half = socket.create_connection((HOST, srv.tls_port), timeout=5)
    half.sendall(hello[:len(hello) // 2])
    t0 = time.monotonic()
    after_tls = TlsWs(srv.tls_port)  # TLS done, no HTTP request
    try:
        async def main():
            alice = await wss_connect(srv, "Alice")
            bob = await ws_connect(srv.url("Bob"))
            await exchange(alice, "Alice", bob, "Bob")
            await asyncio.sleep(max(0.0, t0 + 1.5 - time.monotonic()))
            await exchange(alice, "Alice", bob, "Bob", " later")
            await alice.close()
            await bob.close()

        assert time.monotonic() - t0 < 0.9, "too slow to test the deadline"
        arun(main(), 30)
        for s in (silent, half):
            wait_closed(s, 3)
        after_tls.expect_eof(3)
        took = time.monotonic() - t0
        assert took < 4, f"stalled handshakes closed after {took:.1f}s"
    finally:
        for s in (silent, half):
            s.close()
        after_tls.close()
    assert srv.log().count("handshake timeout") >= 3, srv.log()


def test_max_pending_covers_tls(chatd, pki):
    """At max_pending the oldest TLS handshake goes when a new one comes;
    the newcomer finishes."""
    srv = tls_node(chatd, pki["a"], max_pending=3, handshake_timeout="10s")
    stalled = []
    try:
        for _ in range(3):
            stalled.append(socket.create_connection((HOST, srv.tls_port), timeout=5))
            time.sleep(0.05)  # accepted in this order
        time.sleep(0.2)
        with TlsWs(srv.tls_port) as w:
            w.handshake("/?username=new", then=frame(OP_TEXT, "in"))
            assert w.recv_text() == "new: in"
        took = wait_closed(stalled[0], 3)
        assert took < 2
    finally:
        for s in stalled:
            s.close()
    assert "handshakes pending" in srv.log()


def test_http_answers_over_tls(chatd, pki):
    """The HTTP side over TLS: /healthz answers 200, a bad upgrade 400, and
    the connection then ends."""
    srv = tls_node(chatd, pki["a"])
    for req, status in ((b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
                        (http_request_bytes("/"), 400),
                        (http_request_bytes("/?username=x", version="8"), 426)):
        with TlsWs(srv.tls_port) as w:
            w.send(req)
            r = w.read_http()
            assert r.status == status, r
            w.expect_eof(3)


# --------------------------------------------------------------------------
# bytes behind the request


def test_frames_in_the_request_record(chatd, pki):
    """The upgrade request and the first frames in one TLS record: nothing
    is lost in the handoff to the worker, also when the record holds more
    than the acceptor reads at once, and when the request head alone does."""
    srv = tls_node(chatd, pki["a"])
    with TlsWs(srv.tls_port) as w:
        w.handshake("/?username=raw", then=frame(OP_TEXT, "first"))
        assert w.recv_text() == "raw: first"
        w.send_frame(OP_TEXT, "second")
        assert w.recv_text() == "raw: second"

    texts = [c * 3000 for c in "xyz"]
    with TlsWs(srv.tls_port) as w:
        w.handshake("/?username=big", then=b"".join(frame(OP_TEXT, t) for t in texts))
        for t in texts:
            assert w.recv_text() == f"big: {t}"

    with TlsWs(srv.tls_port) as w:
        w.handshake("/?username=pad", extra=["X-Pad: " + "p" * 5000],
                    then=frame(OP_TEXT, "after a long head"))
        assert w.recv_text() == "pad: after a long head"


def test_tls_reader_that_falls_behind(chatd, pki):
    """A wss client that stops reading while megabytes are sent to it (the
    server's TLS writes are refused and retried) gets every message intact
    and in order once it reads again."""
    srv = tls_node(chatd, pki["a"], max_output_buffer="64m", max_message="64k")
    n, size = 384, 16000
    with TlsWs(srv.tls_port, rcvbuf=4096, timeout=20) as slow:
        slow.handshake("/?username=slow")

        async def send_all():
            ws = await wss_connect(srv, "fast")
            for k in range(n):
                await ws.send(f"{k:05d}" + "m" * (size - 5))
            last = None
            for _ in range(n):  # its own copies: everything left the server
                last = await recv_text(ws, 20)
            assert last.startswith(f"fast: {n - 1:05d}")
            await ws.close()

        arun(send_all(), 60)
        for k in range(n):
            t = slow.recv_text(timeout=20)
            assert t == f"fast: {k:05d}" + "m" * (size - 5), f"message {k}: {t[:40]!r}..."


@pytest.mark.parametrize("then", ["ping", "invalid-utf8"])
def test_control_frame_while_a_tls_write_waits(chatd, pki, then):
    """A wss client's socket is full, so the server holds a refused TLS
    write to offer again; then the client pings (the pong is queued) or
    sends bad UTF-8 (the close 1007 is queued). Every frame must still
    arrive intact and in order, the pong or the close frame included: the
    held bytes are owed before anything queued after them."""
    srv = tls_node(chatd, pki["a"], max_output_buffer="64m", workers=1)
    n, size = 8000, 1000
    body = lambda k: f"{k:05d}" + "x" * (size - 5)
    with TlsWs(srv.tls_port, rcvbuf=4096, timeout=30) as slow:
        slow.handshake("/?username=slow")

        async def send_all():
            ws = await ws_connect(srv.url("pub"))
            for k in range(n):
                await ws.send(body(k))
            for _ in range(n):  # its own copies: the server has them all
                await recv_text(ws, 20)
            await ws.close()

        arun(send_all(), 120)
        time.sleep(0.3)  # the server's writes to slow are refused by now
        if then == "ping":
            slow.send_frame(OP_PING, b"are you there")
        else:
            slow.send_frame(OP_TEXT, b"\xff\xfe")
        # Now read at full speed: a 4 KiB window can crawl on loopback, and
        # the node gives a client it is closing 3 s to take the close frame.
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        got, pong, close = 0, None, None
        for _ in range(n + 2):
            op, p = slow.recv_frame(timeout=20)
            if op == OP_TEXT:
                assert p.decode() == "pub: " + body(got), f"frame {got}: {p[:40]!r}..."
                got += 1
            elif op == OP_PONG:
                pong = p
            elif op == OP_CLOSE:
                close = parse_close(p)
                break
            else:
                raise AssertionError(f"unexpected opcode {op}")
            if then == "ping" and got == n and pong is not None:
                break
        if then == "ping":
            assert (got, pong) == (n, b"are you there")
        else:
            assert close is not None and close[0] == 1007, close


def test_shutdown_with_tls_clients(chatd, pki):
    """SIGTERM with wss clients open and TLS handshakes pending: clients get
    1001, the process exits 0 (the fixture checks for sanitizer reports)."""
    srv = tls_node(chatd, pki["a"], shutdown_timeout="2s")

    async def main():
        ws = await wss_connect(srv, "lib")
        raw = TlsWs(srv.tls_port)
        raw.handshake("/?username=raw")
        idle = TlsWs(srv.tls_port)  # TLS done, no request
        half = socket.create_connection((HOST, srv.tls_port), timeout=5)
        half.sendall(client_hello(0x0303)[:20])
        await ws.send("before")
        assert await recv_text(ws) == "lib: before"
        assert await asyncio.to_thread(raw.recv_text) == "lib: before"
        t0 = time.monotonic()
        srv.send_signal(signal.SIGTERM)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001, ws.close_code
        await asyncio.to_thread(expect_close, raw, 1001)
        rc = await asyncio.to_thread(srv.wait, 8)
        assert rc == 0, f"exit code {rc}"
        assert time.monotonic() - t0 < 4
        for s in (raw, idle):
            s.close()
        half.close()

    arun(main(), 30)


# --------------------------------------------------------------------------
# reload


def peer_der(port):
    with TlsWs(port) as w:
        return w.sock.getpeercert(binary_form=True)


def put_file(path, data):
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_sighup_reloads_certificate(chatd, pki, tmp_path):
    """SIGHUP: new clients get the new certificate, old ones keep chatting;
    a broken, mismatched or missing file is logged and the last good
    certificate stays in service."""
    a, b = pki["a"], pki["b"]
    shutil.copyfile(a.cert, tmp_path / "live.crt")
    shutil.copyfile(a.key, tmp_path / "live.key")
    live = Cert(tmp_path / "live.crt", tmp_path / "live.key", a.serial)
    srv = tls_node(chatd, live)
    assert peer_der(srv.tls_port) == a.der

    async def main():
        old = await wss_connect(srv, "old")
        assert ssl_object(old).getpeercert(binary_form=True) == a.der

        put_file(live.cert, b.cert.read_bytes())
        put_file(live.key, b.key.read_bytes())
        srv.send_signal(signal.SIGHUP)
        await asyncio.to_thread(srv.wait_log, r"SIGHUP: reloaded", 10)
        der = await asyncio.to_thread(peer_der, srv.tls_port)
        assert der == b.der
        assert der_serial(der) == 0xB2
        new = await wss_connect(srv, "new")
        await exchange(old, "old", new, "new")

        broken = [
            ("garbage", lambda: put_file(live.cert, b"-----BEGIN CERTIFICATE-----\nnope\n"),
             r"ERROR.*SIGHUP: .*bad certificate.*live\.crt.*old certificate stays"),
            ("mismatch", lambda: put_file(live.cert, a.cert.read_bytes()),
             r"ERROR.*SIGHUP: .*live\.key does not match the certificate in .*live\.crt.*old certificate stays"),
            ("missing", lambda: live.cert.unlink(),
             r"ERROR.*SIGHUP: .*cannot read tls_cert .*live\.crt.*old certificate stays"),
        ]
        for what, breakit, pattern in broken:
            breakit()
            srv.send_signal(signal.SIGHUP)
            await asyncio.to_thread(srv.wait_log, pattern, 10)
            assert await asyncio.to_thread(peer_der, srv.tls_port) == b.der, what
            await exchange(old, "old", new, "new", f" after {what}")
        assert srv.running
        await old.close()
        await new.close()

    arun(main(), 60)
    assert srv.log().count("SIGHUP: reloaded") == 1


# --------------------------------------------------------------------------
# start failures


def _failing(tmp_path, pki, case):
    """(overrides, text stderr must hold) for one start-failure case."""
    b = pki["b"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not PEM\n")
    keydir = tmp_path / "keydir.pem"
    keydir.mkdir(exist_ok=True)
    missing = tmp_path / "missing.pem"
    return {
        "missing-cert": ({"tls_cert": missing}, str(missing)),
        "missing-key": ({"tls_key": missing}, str(missing)),
        "garbage-cert": ({"tls_cert": garbage}, str(garbage)),
        "garbage-key": ({"tls_key": garbage}, str(garbage)),
        "unreadable-key": ({"tls_key": keydir}, str(keydir)),
        "key-not-matching": ({"tls_key": b.key}, f"{b.key} does not match"),
        "bad-ciphers": ({"tls_ciphers": "NO-SUCH-CIPHER"}, "tls_ciphers"),
        "min-version-1.1": ({"tls_min_version": "1.1"}, "tls_min_version"),
        "no-key": ({"tls_key": ""}, "tls_key"),
    }[case]


@pytest.mark.parametrize("case", ["missing-cert", "missing-key", "garbage-cert", "garbage-key",
                                  "unreadable-key", "key-not-matching", "bad-ciphers",
                                  "min-version-1.1", "no-key"])
def test_start_fails_naming_the_file(tmp_path, pki, case):
    overrides, must = _failing(tmp_path, pki, case)
    conf = {"listen": f"{HOST}:{free_port()}", "workers": 1,
            "tls_listen": f"{HOST}:{free_port()}",
            "tls_cert": pki["a"].cert, "tls_key": pki["a"].key}
    conf.update(overrides)
    path = write_config(tmp_path / "bad.conf", conf)
    for args in (["-t", "-c", str(path)], ["-c", str(path)]):
        r = run_chatd_cmd(args, timeout=15)
        assert r.returncode == 1, (args, r.returncode, r.stderr)
        assert must in r.stderr, (args, r.stderr)
        assert not sanitizer_report(r.stderr), r.stderr


def test_check_good_tls_config(tmp_path, pki):
    path = write_config(tmp_path / "good.conf", {
        "listen": f"{HOST}:{free_port()}", "tls_listen": f"{HOST}:{free_port()}",
        "tls_cert": pki["a"].cert, "tls_key": pki["a"].key, "tls_min_version": "1.3"})
    r = run_chatd_cmd(["-t", "-c", str(path)])
    assert r.returncode == 0, r.stderr
    assert not sanitizer_report(r.stderr + r.stdout)
