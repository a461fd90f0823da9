"""Hardening (issue 6): slow consumers, floods, half-open handshake floods,
per-address caps. Real chatd, real sockets; every wait bounded."""

import asyncio
import os
import resource
import socket
import struct
import threading
import time

import pytest
import websockets

from conftest import (
    HOST, OP_CLOSE, OP_TEXT, RawWs, arun, expect_close, frame, free_port, http_request_bytes, metrics,
    parse_close, recv_text, run_chatd_cmd, wait_until, write_config, ws_connect,
)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


ASAN = "asan" in os.environ.get("CHATD_BIN", "")


def test_slow_reader_is_cut_with_1008_and_memory_stays_bounded(chatd):
    """A reader that stops reading during a 100 MB broadcast is closed with
    1008 once it passes max_output_buffer; the node's RSS stays within
    64 MiB of where it started (128 under ASan); the others receive everything."""
    # Under ASan freed blocks wait in a quarantine (256 MiB by default)
    # before their memory is used again: with a smaller one the RSS shows
    # what the node holds, not how much it has freed.
    env = {"ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":quarantine_size_mb=32"}
    node = chatd(env=env if ASAN else None, max_output_buffer="1m", max_message="64k")
    total_mb = 40 if ASAN else 100
    size = 60 * 1024
    count = total_mb * 1024 * 1024 // size
    text = "x" * size

    slow = RawWs(node.port)
    slow.handshake("/?username=slow")
    base = rss_kib(node.proc.pid)
    peak = [base]

    async def main():
        async with websockets.connect(node.url("sender"), max_size=None) as snd, \
                websockets.connect(node.url("reader"), max_size=None) as rd:
            got = {"sender": 0, "reader": 0}

            async def drain(ws, name):
                while got[name] < count:
                    m = await asyncio.wait_for(ws.recv(), 30)
                    assert m == "sender: " + text
                    got[name] += 1

            async def send():
                # Keep at most 8 messages (480 KB) in flight towards the
                # honest readers, well under their 1 MiB bound.
                for i in range(count):
                    for _ in range(3000):
                        if i - min(got.values()) < 8:
                            break
                        await asyncio.sleep(0.002)
                    await snd.send(text)
                    if i % 64 == 0:
                        peak[0] = max(peak[0], rss_kib(node.proc.pid))

            await asyncio.gather(send(), drain(snd, "sender"), drain(rd, "reader"))
            return got

    # The slow reader wakes up once it has been cut (within the node's
    # close wait): it reads the frames it had, then the close frame 1008.
    result = {}

    def wake_and_read():
        try:
            node.wait_log(r"slow consumer", timeout=120)
            deadline = time.monotonic() + 30
            for _ in range(100000):
                if time.monotonic() > deadline:
                    break
                op, payload = slow.recv_frame(timeout=10)
                if op == OP_CLOSE:
                    result["code"] = parse_close(payload)[0]
                    return
                assert op == OP_TEXT
        except Exception as e:  # reported below
            result["error"] = repr(e)

    t = threading.Thread(target=wake_and_read)
    t.start()
    got = arun(main(), timeout=300)
    t.join(60)
    assert got == {"sender": count, "reader": count}
    grown_mib = (peak[0] - base) / 1024
    # ASan's own bookkeeping (shadow memory, the quarantine above) makes the
    # bound looser under ASan; the plain build is the one that holds to 64.
    bound = 128 if ASAN else 64
    assert grown_mib < bound, f"RSS grew by {grown_mib:.1f} MiB during the broadcast"
    assert result.get("code") == 1008, result
    slow.close()
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] == 1, m
    assert m['chatd_clients_closed_total{reason="rate_limit"}'] == 0, m


def test_flood_past_rate_limit_closed_1008_client_at_limit_kept(chatd):
    node = chatd(rate_limit=20, rate_burst=20)

    async def main():
        async with websockets.connect(node.url("flooder")) as fl, \
                websockets.connect(node.url("steady")) as st:
            # the flooder sends 200 at once: past the burst of 20
            for i in range(200):
                try:
                    await fl.send(f"f{i}")
                except websockets.ConnectionClosed:
                    break
            with pytest.raises(websockets.ConnectionClosed) as ei:
                for _ in range(300):
                    await asyncio.wait_for(fl.recv(), 5)
            assert ei.value.rcvd is not None and ei.value.rcvd.code == 1008

            # the steady client sends 10 per second for 3 s: under the limit
            seen = []
            for i in range(30):
                await st.send(f"s{i}")
                await asyncio.sleep(0.1)
            deadline = time.monotonic() + 10
            while len([m for m in seen if m.startswith("steady: ")]) < 30:
                assert time.monotonic() < deadline, f"steady got {seen[-5:]}"
                seen.append(await asyncio.wait_for(st.recv(), 5))
            assert [m for m in seen if m.startswith("steady: ")] == [f"steady: s{i}" for i in range(30)]

    arun(main(), timeout=60)
    node.wait_log(r"over rate_limit, closing with 1008")
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="rate_limit"}'] == 1, m
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] == 0, m


def test_close_frame_sent_when_peer_close_comes_in_the_same_read(chatd):
    """The node closes a flooder with 1008 while the flooder's own close is
    already in the same read: the node's close frame still goes out before
    TCP closes (RFC 6455 5.5.1), it is not dropped with the connection."""
    node = chatd(rate_limit=1, rate_burst=1)
    with RawWs(node.port) as w:
        w.handshake("/?username=flooder")
        w.send(frame(OP_TEXT, b"one") + frame(OP_TEXT, b"two")
               + frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
        op, p = w.recv_frame(timeout=5)
        if op == OP_TEXT:  # its own first message may come first
            assert p == b"flooder: one"
            op, p = w.recv_frame(timeout=5)
        assert op == OP_CLOSE and parse_close(p)[0] == 1008, (op, p)
        w.expect_eof(5)


@pytest.mark.heavy
@pytest.mark.parametrize("max_pending", [None, 1000])
def test_half_open_flood_does_not_keep_honest_clients_out(chatd, max_pending):
    """2,000 connections that start a request and never finish it; honest
    clients still get in well within the handshake timeout. At max_pending
    the node stops accepting and closes only handshakes idle for a second,
    so the flood ahead of the honest client in the listen queue cycles
    through max_pending slots a second: two cycles here."""
    over = {"handshake_timeout": "10s"}
    if max_pending:
        over["max_pending"] = max_pending
    node = chatd(**over)
    socks = []
    try:
        for i in range(2000):
            s = socket.create_connection((HOST, node.port), timeout=5)
            s.sendall(b"GET /?username=half HTTP/1.1\r\nHost: x\r\n")  # never finished
            socks.append(s)

        async def main():
            t0 = time.monotonic()
            async with websockets.connect(node.url("honest"), open_timeout=5) as ws:
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 5) == "honest: still here"
            return time.monotonic() - t0

        took = arun(main(), timeout=30)
        assert took < 5
        if max_pending:
            node.wait_log(r"closed: idle for \d+ ms with \d+ handshakes pending", timeout=5)
            m = metrics(node.port)
            assert m['chatd_handshake_failures_total{reason="max_pending"}'] > 0, m
            assert m["chatd_accept_pauses_total"] > 0, m
    finally:
        for s in socks:
            s.close()


def test_per_address_cap_429(chatd):
    node = chatd(max_clients_per_ip=3)

    async def main():
        cs = [await websockets.connect(node.url(f"u{i}")) for i in range(3)]
        with pytest.raises(websockets.InvalidStatusCode) as ei:
            await websockets.connect(node.url("fourth"))
        assert ei.value.status_code == 429
        await cs[0].close()
        # the count goes down with the close: a new client fits again
        for _ in range(50):
            try:
                c = await websockets.connect(node.url("again"))
                break
            except websockets.InvalidStatusCode:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("a closed client's slot was not given back")
        await c.close()
        for x in cs[1:]:
            await x.close()

    arun(main(), timeout=30)


def test_per_address_refusal_gives_its_max_clients_slot_back(chatd):
    """An upgrade is counted against max_clients when it is judged (the
    acceptor threads judge at once); one refused after that, with 429 by
    max_clients_per_ip, gives the slot back at once, not when it closes:
    while the refused client holds its socket open, a client from another
    address still fits."""
    node = chatd(max_clients=2, max_clients_per_ip=1, handshake_timeout="10s")

    async def main():
        first = await ws_connect(node.url("first"))
        refused = socket.create_connection((HOST, node.port), timeout=5)
        try:
            refused.sendall(http_request_bytes("/?username=second"))
            assert refused.recv(4096).startswith(b"HTTP/1.1 429 ")
            other = await ws_connect(node.url("other"), local_addr=("127.0.0.2", 0))
            await other.close()
        finally:
            refused.close()
        await first.close()

    arun(main(), timeout=30)


# --------------------------------------------------------------------------
# A burst of connections (issue 11 item 4): a reconnect storm after a node
# loss. Every client must get its 101; none may be refused or closed.


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def raise_nofile():
    """Raises this process's open-file soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def connect_burst(port, n, ssl_ctx=None, sources=4, timeout=60):
    """Opens n connections at once (no semaphore: every connect is issued
    before the first request is sent), from 127.0.0.2.. in turn. ws: every
    connect is issued first, then every request in the same order, so the
    server sees thousands of connections land before their first bytes (as
    in a reconnect storm) yet no client is silent for long. wss: asyncio's
    TLS streams, each connecting and then handshaking. Returns ({status:
    count}, with "error: ..." keys for failures; the open sockets or
    writers; seconds until the last answer)."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    socks = []
    if ssl_ctx is None:
        for i in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            # The port is chosen at connect: bind(port 0) would search the
            # whole port range for each of thousands of sockets.
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((f"127.0.0.{2 + i % sources}", 0))
            sock.connect_ex((HOST, port))  # in progress, or up already on loopback
        print(f"{n} connects issued in {time.monotonic() - t0:.2f}s")

    async def one(i):
        req = http_request_bytes(f"/?username=b{i}")
        sock = socks[i] if socks else socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if ssl_ctx is not None:
                sock.setblocking(False)
                sock.bind((f"127.0.0.{2 + i % sources}", 0))
                await loop.sock_connect(sock, (HOST, port))
                r, w = await asyncio.open_connection(sock=sock, ssl=ssl_ctx,
                                                     server_hostname="localhost")
                w.write(req)
                head = await r.readuntil(b"\r\n\r\n")
                return int(head.split(b" ", 2)[1]), w
            await loop.sock_sendall(sock, req)  # tries at once, else when connected
            head = b""
            for _ in range(100):
                if b"\r\n\r\n" in head:
                    break
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    raise EOFError(f"closed after {head!r}")
                head += chunk
            return int(head.split(b" ", 2)[1]), sock
        except BaseException:
            sock.close()
            raise

    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True), timeout)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    took = time.monotonic() - t0
    statuses, conns = {}, []
    for r in results:
        if isinstance(r, BaseException):
            key = f"error: {type(r).__name__}: {r}"[:80]
        else:
            key = r[0]
            conns.append(r[1])
        statuses[key] = statuses.get(key, 0) + 1
    return statuses, conns, took


def run_burst(node, port, n, ssl_ctx=None, timeout=90):
    """The burst against node's port; asserts all n were upgraded and are
    counted as clients, then closes them. Returns the seconds it took."""
    assert raise_nofile() >= n + 200, "this test needs more open files than the limit allows"

    async def main():
        statuses, conns, took = await connect_burst(port, n, ssl_ctx, timeout=timeout - 30)
        try:
            assert statuses == {101: n}, statuses
            wait_until(lambda: metrics(node.port)["chatd_clients"] == n, 20,
                       what=f"{n} clients counted")
            return took
        finally:
            for c in conns:
                if isinstance(c, socket.socket):
                    c.close()
                else:
                    c.transport.abort()

    took = arun(main(), timeout=timeout)
    m = metrics(node.port)
    assert m['chatd_http_responses_total{status="101"}'] == n, m
    assert m['chatd_handshake_failures_total{reason="max_pending"}'] == 0, m
    assert m['chatd_http_responses_total{status="503"}'] == 0, m
    print(f"burst of {n}: all upgraded in {took:.2f}s, "
          f"{m['chatd_accept_pauses_total']} pauses at max_pending")
    wait_until(lambda: metrics(node.port)["chatd_clients"] == 0, 30, what="clients gone")
    return took


@pytest.mark.heavy
@pytest.mark.parametrize("max_pending", [None, 200])
def test_burst_of_10000_ws_connections_all_established(chatd, max_pending):
    """10,000 clients connect at once to one node: all get their 101, none
    is refused or closed. The connections land before their requests, so
    the node reaches max_pending (surely at 200; at the default 4096 when
    it accepts faster than the clients write) and must pause accepting (the
    kernel's listen queue holds the rest) rather than push out healthy
    handshakes."""
    over = {"workers": 2, "max_clients": 12000}
    if max_pending:
        over["max_pending"] = max_pending
    node = chatd(**over)
    run_burst(node, node.port, 10000)
    if max_pending:
        assert metrics(node.port)["chatd_accept_pauses_total"] > 0


@pytest.mark.heavy
def test_burst_of_wss_connections_all_established(chatd, tmp_path):
    """The same on the wss listener: 2,000 TLS clients at once, all get
    their 101. Fewer than on ws, and under max_pending: Python's TLS client
    is the slow side here, so slow that with a lower cap its own clients
    would sit a second between two TLS flights, which is what the node
    rightly takes for a silent connection when it is at the cap."""
    import ssl
    from test_tls import client_ctx, make_cert
    cert = make_cert(tmp_path, "burst", 0xC3)
    tport = free_port()
    node = chatd(workers=2, max_clients=12000, tls_listen=f"{HOST}:{tport}",
                 tls_cert=str(cert.cert), tls_key=str(cert.key))
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    # Under ASan every handshake costs the node several times its CPU, and
    # the Python clients take the other core: 500 there (the plain build's
    # run shows the 2,000).
    run_burst(node, tport, 500 if ASAN else 2000, ssl_ctx=ctx, timeout=120)


# --------------------------------------------------------------------------
# Slowness is judged by what is queued behind the frame in progress (issue
# 11 item 5), and the cut comes at max_output_buffer, not some multiple.


def test_entry_larger_than_max_output_buffer_reaches_every_reader(chatd, tmp_path):
    """One 20 KB message into a room of 5 readers on a node whose
    max_output_buffer is 4k: every reader gets it, none is closed as slow
    (the frame being written is not a backlog)."""
    over = {"max_output_buffer": "4k", "max_message": "64k"}
    node = chatd(**over)
    text = "y" * (20 * 1024)

    async def main():
        readers = [await ws_connect(node.url(f"r{i}")) for i in range(5)]
        snd = await ws_connect(node.url("big"))
        try:
            await snd.send(text)
            for ws in readers + [snd]:
                assert await recv_text(ws, 10) == "big: " + text
            await snd.send("after")
            for ws in readers + [snd]:
                assert await recv_text(ws, 10) == "big: after"
        finally:
            for ws in readers + [snd]:
                await ws.close()

    arun(main(), timeout=60)
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] == 0, m
    assert "slow consumer" not in node.log()


def test_largest_message_and_one_behind_it_reach_every_reader(chatd):
    """Within the configuration's rule (max_output_buffer holds one largest
    message): a message of max_message bytes and a short one right behind
    it, in one write, reach all 5 readers of a room on a node whose
    max_output_buffer is 4k; none is closed (the frame being written is not
    a backlog: only the short one is queued behind it)."""
    node = chatd(max_output_buffer="4k", max_message="4040", workers=1)
    text = "y" * 4040
    short = "s" * 100  # the two frames: 4,049 + 109 bytes, over 4 KiB together

    async def main():
        readers = [await ws_connect(node.url(f"r{i}")) for i in range(5)]
        try:
            with RawWs(node.port) as snd:
                snd.handshake("/?username=big")
                # Both frames in one write: one read, one batch, one pass.
                snd.send(frame(OP_TEXT, text) + frame(OP_TEXT, short))
                for ws in readers:
                    assert await recv_text(ws, 10) == "big: " + text
                    assert await recv_text(ws, 10) == "big: " + short
        finally:
            for ws in readers:
                await ws.close()

    arun(main(), timeout=60)
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] == 0, m
    assert "slow consumer" not in node.log()


def test_slow_reader_cut_near_max_output_buffer(chatd):
    """A reader that never reads is cut once about max_output_buffer
    (64 KiB) is queued for it beyond what the kernel took: the backlog the
    node logs at the cut is more than the limit and at most the limit plus
    two frames (a cut at 2x or 8x the limit fails here). The kernel's socket
    buffers (the node's send buffer grows to megabytes on loopback) are not
    the node's backlog: enough messages are sent to fill them first."""
    limit = 64 * 1024
    node = chatd(max_output_buffer="64k", max_message="16k", workers=1)
    size = 15000
    text = "z" * size
    frame_len = 4 + len("sender: ") + size

    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.settimeout(5)
    slow.connect((HOST, node.port))
    slow.sendall(http_request_bytes("/?username=slow"))
    head = b""
    for _ in range(1000):
        if b"\r\n\r\n" in head:
            break
        head += slow.recv(1)  # byte by byte: nothing past the 101 is read
    assert head.startswith(b"HTTP/1.1 101"), head

    async def main():
        # max_queue=None: the sender's own echoes pile up unread, and a
        # client that stops reading its socket would not see the close.
        snd = await ws_connect(node.url("sender"))
        rd = await ws_connect(node.url("reader"))
        try:
            for i in range(1, 1500):
                await snd.send(text)
                assert await asyncio.wait_for(rd.recv(), 10) == "sender: " + text
                # One worker: the cut, if any, happened in the pass that
                # delivered this message to the reader.
                if "slow consumer" in node.log():
                    return i
            return None
        finally:
            await snd.close()
            await rd.close()

    try:
        sent = arun(main(), timeout=120)
    finally:
        slow.close()
    assert sent is not None, "the slow reader was never cut"
    queued = int(node.wait_log(r"slow consumer, (\d+) bytes queued").group(1))
    print(f"cut after {sent} messages ({sent * frame_len} bytes), {queued} bytes queued")
    assert limit < queued <= limit + 2 * frame_len, queued
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] == 1, m


# --------------------------------------------------------------------------
# Deadlines follow the monotonic clock (issue 11 item 6). The wall clock is
# stepped for the node alone by a small LD_PRELOAD shim that moves
# CLOCK_REALTIME, gettimeofday and time back by an hour once a file exists.

CLOCK_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long step(void) {
    const char *f = getenv("CLOCK_STEP_FILE");
    return f && access(f, F_OK) == 0 ? -3600 : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int rc = real(id, ts);
    if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += step();
    return rc;
}

int gettimeofday(struct timeval *tv, void *tz) {
    static int (*real)(struct timeval *, void *);
    if (!real) real = (int (*)(struct timeval *, void *))dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0 && tv) tv->tv_sec += step();
    return rc;
}

time_t time(time_t *t) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    if (t) *t = tv.tv_sec;
    return tv.tv_sec;
}
"""


def test_wall_clock_step_back_does_not_trip_the_rate_limit(chatd, tmp_path):
    """The wall clock goes back an hour (an operator, NTP, a VM resumed)
    while a client chats at half its rate_limit: it is not closed for
    flooding, and still gets pinged when idle. With the rate bucket on wall
    time the step would cost it an hour's worth of tokens."""
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler for the clock shim")
    src, lib = tmp_path / "clockshim.c", tmp_path / "clockshim.so"
    src.write_text(CLOCK_SHIM)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-ldl"],
                   check=True, capture_output=True, timeout=60)
    flag = tmp_path / "stepped"
    env = {"LD_PRELOAD": str(lib), "CLOCK_STEP_FILE": str(flag),
           # an ASan build wants its runtime first; the shim only wraps libc
           "ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0")
           .lstrip(":")}
    node = chatd(env=env, rate_limit=10, rate_burst=5, ping_interval="1s", ping_timeout="2s",
                 workers=1)

    async def main():
        ws = await ws_connect(node.url("steady"))
        try:
            await ws.send("before")
            assert await recv_text(ws) == "steady: before"
            flag.touch()
            # libevent re-reads the wall clock at most every 5 s: wait it out.
            await asyncio.sleep(6)
            for i in range(10):
                await ws.send(f"after{i}")
                assert await recv_text(ws) == f"steady: after{i}"
                await asyncio.sleep(0.2)
            # Idle now: the node pings within ping_interval (the websockets
            # client answers by itself), and does not drop it.
            await asyncio.sleep(2.5)
            await ws.send("still here")
            assert await recv_text(ws) == "steady: still here"
        finally:
            await ws.close()

    arun(main(), timeout=60)
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="rate_limit"}'] == 0, m
    assert "over rate_limit" not in node.log()
