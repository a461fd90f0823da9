"""permessage-deflate (RFC 7692, issue 16) against the real chatd binary.

Clients: Debian's python3-websockets (it offers permessage-deflate unless
told `compression=None`) and raw sockets, which show the RSV1 bit of every
server frame and send what no library would: RSV1 where it does not
belong, broken deflate data, decompression bombs.

chatd always answers an offer with server_no_context_takeover and
client_no_context_takeover, so every compressed frame stands alone: the
tests inflate each with a fresh zlib decompressor, as a client may.
"""

import asyncio
import json
import random
import signal
import time
import zlib

import pytest

from conftest import (
    OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWs, arun, close_payload, expect_close, frame,
    metrics, parse_close, recv_text, write_config, ws_connect,
)

CHROME_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAIL = b"\x00\x00\xff\xff"
LONG = ("so I think we should meet at the station around seven, then grab something to eat "
        "before the movie starts, what do you think? ")


def deflate(data, wbits=15, level=6, flush=zlib.Z_SYNC_FLUSH, ctx=None):
    """A message as a client compresses it: raw deflate, the sync flush's
    tail removed (RFC 7692 7.2.1)."""
    if isinstance(data, str):
        data = data.encode()
    z = ctx or zlib.compressobj(level, zlib.DEFLATED, -wbits)
    out = z.compress(data) + z.flush(flush)
    if flush == zlib.Z_SYNC_FLUSH:
        assert out.endswith(TAIL)
        out = out[:-4]
    return out


def inflate(payload, wbits=15):
    """A compressed server frame as a fresh client decompressor reads it."""
    d = zlib.decompressobj(-wbits)
    return d.decompress(payload + TAIL) + d.flush()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class ZRaw(RawWs):
    """RawWs that lets server data frames carry RSV1 (recv_frame records it
    in last_rsv1 and returns the payload as sent) and still refuses RSV2,
    RSV3, RSV1 on control frames and masked server frames."""

    def __init__(self, port, timeout=5.0):
        super().__init__(port, timeout)
        self.last_rsv1 = False

    def handshake(self, path="/?username=raw", then=b"", offer=CHROME_OFFER, extra=(), **kw):
        r = super().handshake(path, then, extra=([offer] if offer else []) + list(extra), **kw)
        return r

    def recv_frame(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        for _ in range(100000):
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = int.from_bytes(self.buf[2:10], "big"), 10
                elif n >= 126:
                    n = None
                if n is not None and len(self.buf) >= off + n:
                    assert not b1 & 0x80, "server frames must not be masked"
                    assert not b0 & 0x30, f"server frame with RSV2/RSV3: {b0:#x}"
                    assert not (b0 & 0x40 and b0 & 0x08), f"compressed control frame: {b0:#x}"
                    self.last_frame = self.buf[:off + n]
                    payload = self.buf[off:off + n]
                    self.buf = self.buf[off + n:]
                    self.last_fin = bool(b0 & 0x80)
                    self.last_rsv1 = bool(b0 & 0x40)
                    return b0 & 0x0F, payload
            self._fill(deadline)
        raise AssertionError("frame loop bound reached")

    def recv_z(self, timeout=None):
        """Next text message as (compressed, text, raw frame bytes); pings
        are answered. chatd never fragments its frames."""
        for _ in range(1000):
            op, p = self.recv_frame(timeout)
            if op == OP_PING:
                self.send_frame(OP_PONG, p)
                continue
            if op == OP_PONG:
                continue
            assert op == OP_TEXT and self.last_fin, (op, p[:40])
            z = self.last_rsv1
            return z, (inflate(p) if z else p).decode("utf-8"), self.last_frame
        raise AssertionError("message loop bound reached")


# --------------------------------------------------------------------------
# negotiation, end to end (the cases are unit tests in test_handshake.c)


def test_negotiation_answers(chatd):
    node = chatd()
    with ZRaw(node.port) as w:
        r = w.handshake("/?username=a")
        assert r.header("sec-websocket-extensions") == ANSWER
    with ZRaw(node.port) as w:
        r = w.handshake("/?username=b", offer="Sec-WebSocket-Extensions: x-webkit-deflate-frame, "
                        "permessage-deflate; server_max_window_bits=20, "
                        "permessage-deflate; server_max_window_bits=10; client_no_context_takeover")
        assert r.header("sec-websocket-extensions") == ANSWER + "; server_max_window_bits=10"
    for bad in ("permessage-deflate; foo", "permessage-deflate; client_max_window_bits=16",
                "permessage-deflate;;", "permessage-deflate; server_no_context_takeover; "
                "server_no_context_takeover"):
        with ZRaw(node.port) as w:
            r = w.handshake("/?username=c", offer="Sec-WebSocket-Extensions: " + bad)
            assert r.header("sec-websocket-extensions") is None, bad
            # declined: RSV1 is a protocol error like any unknown RSV bit
            w.send_frame(OP_TEXT, deflate(LONG), rsv=4)
            expect_close(w, 1002)
    with ZRaw(node.port) as w:
        w.handshake("/?username=d")
        w.send_frame(OP_TEXT, deflate(LONG), rsv=4)
        z, text, _ = w.recv_z()
        assert text == "d: " + LONG
    node.wait_log(r"d: open rooms=lobby proto=text tls=off deflate=on ")
    node.wait_log(r"c: open rooms=lobby proto=text tls=off deflate=off ")

    off = chatd(name="off", permessage_deflate="off")
    with ZRaw(off.port) as w:
        r = w.handshake("/?username=e")
        assert r.header("sec-websocket-extensions") is None

    async def lib():
        ws = await ws_connect(off.url("f"))
        assert ws.response_headers.get("Sec-WebSocket-Extensions") is None
        await ws.send(LONG)
        assert await recv_text(ws) == "f: " + LONG
        await ws.close()
        ws = await ws_connect(node.url("g"))
        assert ws.response_headers.get("Sec-WebSocket-Extensions") == ANSWER
        await ws.close()

    arun(lib())


# --------------------------------------------------------------------------
# outgoing: compressed once per node, RSV1 only above compression_min_size


def test_mixed_room_gets_every_message(chatd):
    """Compressed and plain clients of both protocols in one room (two
    workers), every size up to max_message: all get every message, in one
    order, whatever each negotiated."""
    node = chatd(workers=2)
    sizes = [0, 1, 40, 100, 1000, 20000, 65536 - 10]
    rnd = random.Random(16)

    def text_of(n):
        words = ["station", "seven", "movie", "\u00e9t\u00e9", "\U0001f600", "ok", "ticket", "x"]
        s = ""
        while len(s.encode()) < n:
            s += rnd.choice(words) + " "
        s = s.encode()[:n].decode("utf-8", "ignore")
        return s

    async def main():
        zt = await ws_connect(node.url("zt", "mix"))
        pt = await ws_connect(node.url("pt", "mix"), compression=None)
        zj = await ws_connect(node.url("zj"), subprotocols=["chatd.v1"])
        pj = await ws_connect(node.url("pj"), subprotocols=["chatd.v1"], compression=None)
        assert zt.response_headers.get("Sec-WebSocket-Extensions") == ANSWER
        assert zj.response_headers.get("Sec-WebSocket-Extensions") == ANSWER
        assert pt.response_headers.get("Sec-WebSocket-Extensions") is None
        assert pj.response_headers.get("Sec-WebSocket-Extensions") is None
        for j in (zj, pj):
            await j.send('{"op":"join","room":"mix"}')
            for _ in range(20):
                m = json.loads(await recv_text(j))
                if m.get("op") == "joined":
                    break
        sent = []
        for n in sizes:
            for who, ws in (("zt", zt), ("pt", pt)):
                t = text_of(n)
                await ws.send(t)
                sent.append((who, t))
        # Two senders: each one's messages in its order, and one order for
        # all four clients (the node's).
        order = None
        for ws in (zt, pt):
            got = [await recv_text(ws, 10) for _ in sent]
            seen = [tuple(g.split(": ", 1)) for g in got]
            for who in ("zt", "pt"):
                assert [t for w, t in seen if w == who] == [t for w, t in sent if w == who]
            assert order is None or seen == order
            order = seen
        for j in (zj, pj):
            got = []
            for _ in range(200):
                if len(got) == len(sent):
                    break
                m = json.loads(await recv_text(j, 10))
                if m.get("op") == "msg":
                    got.append((m["user"], m["text"]))
            assert got == order
        for ws in (zt, pt, zj, pj):
            await ws.close()

    arun(main(), 60)
    m = metrics(node.port)
    assert m["chatd_frames_compressed_total"] > 0
    assert m["chatd_messages_received_compressed_total"] >= len(sizes)


def test_rsv1_on_the_wire(chatd):
    """Above compression_min_size a deflate client's frames have RSV1 and
    inflate to the text; below it, and for a plain client, none has. Two
    deflate clients on different workers get the very same bytes: the
    frame is compressed once per node."""
    node = chatd(workers=2, compression_min_size=100)
    with ZRaw(node.port) as z1, ZRaw(node.port) as z2, ZRaw(node.port) as zj, \
            RawWs(node.port) as p:
        z1.handshake("/?username=z1&room=w")
        z2.handshake("/?username=z2&room=w")
        zj.handshake("/?username=zj", extra=["Sec-WebSocket-Protocol: chatd.v1"])
        p.handshake("/?username=p&room=w")
        zj.send_frame(OP_TEXT, '{"op":"join","room":"w"}')
        for _ in range(10):  # joined, then presence
            _, t, _ = zj.recv_z()
            if '"op":"joined"' in t:
                break
        # payload "p: " + text: 99 bytes, 100 bytes, and more
        cases = [("a" * 96, False), ("b" * 97, True), (LONG * 8, True), ("tiny", False)]
        time.sleep(0.2)  # a worker counts a frame just after writing it
        before = metrics(node.port)
        for text, _ in cases:
            p.send_frame(OP_TEXT, text)
        frames = built = 0
        for text, compressed in cases:
            assert p.recv_text() == "p: " + text  # RawWs: no RSV bit, ever
            z, got, f1 = z1.recv_z()
            assert (z, got) == (compressed, "p: " + text)
            z, got, f2 = z2.recv_z()
            assert (z, got) == (compressed, "p: " + text)
            assert f1 == f2
            if compressed:
                assert len(f1) < len("p: " + text)
                frames += 2
                built += 1
        # the chatd.v1 frames of the same messages: by their own size
        for text, _ in cases:
            for _ in range(10):
                z, got, _ = zj.recv_z()
                if '"op":"msg"' in got:
                    break
            assert f'"text":"{text}"' in got, got
            assert z == (len(got.encode()) >= 100), got
            frames += z
            built += z
        time.sleep(0.2)
        after = metrics(node.port)
        assert after["chatd_frames_compressed_total"] - before["chatd_frames_compressed_total"] == frames
        # once per message and protocol, or a little more when both
        # workers raced for the same frame (each race costs one deflate)
        ran = after["chatd_compressions_total"] - before["chatd_compressions_total"]
        assert built <= ran <= 2 * built, (built, ran)


def test_window_bits_honoured(chatd):
    """server_max_window_bits=9: compressed frames only for payloads that fit
    the 512-byte window, and they inflate with it."""
    node = chatd(compression_min_size=0)
    with ZRaw(node.port) as z, RawWs(node.port) as p:
        r = z.handshake("/?username=z&room=wb", offer="Sec-WebSocket-Extensions: "
                        "permessage-deflate; server_max_window_bits=9")
        assert r.header("sec-websocket-extensions") == ANSWER + "; server_max_window_bits=9"
        p.handshake("/?username=p&room=wb")
        for text in ("x" * 509, LONG * 5, LONG[:100]):  # payloads 512, over 512, 103
            p.send_frame(OP_TEXT, text)
            assert p.recv_text() == "p: " + text
            op, payload = z.recv_frame()
            want = ("p: " + text).encode()
            if len(want) <= 512:
                assert z.last_rsv1
                assert inflate(payload, wbits=9) == want
            else:
                assert not z.last_rsv1 and payload == want


def test_compression_min_size_reloads(chatd):
    node = chatd(compression_min_size=100)
    text = LONG  # a payload of 3 + 127 bytes
    with ZRaw(node.port) as z, RawWs(node.port) as p:
        z.handshake("/?username=z&room=r")
        p.handshake("/?username=p&room=r")
        p.send_frame(OP_TEXT, text)
        assert p.recv_text() == "p: " + text
        assert z.recv_z()[:2] == (True, "p: " + text)
        node.conf["compression_min_size"] = "1k"
        node.conf["permessage_deflate"] = "off"
        write_config(node.conf_path, node.conf)
        node.send_signal(signal.SIGHUP)
        node.wait_log(r"SIGHUP: compression_min_size: 100 -> 1k")
        # the workers switch at their next tick (250 ms) or doorbell
        deadline = time.monotonic() + 5
        for _ in range(100):
            p.send_frame(OP_TEXT, text)
            assert p.recv_text() == "p: " + text
            z_, got, _ = z.recv_z()
            assert got == "p: " + text
            if not z_:
                break
            assert time.monotonic() < deadline, "compression_min_size never applied"
            time.sleep(0.05)
        # an open connection keeps what it negotiated; new ones get nothing
        z.send_frame(OP_TEXT, deflate(text), rsv=4)
        assert p.recv_text() == "z: " + text
    with ZRaw(node.port) as w:
        r = w.handshake("/?username=late")
        assert r.header("sec-websocket-extensions") is None


# --------------------------------------------------------------------------
# incoming: inflated under max_message, checked, RSV1 only where it belongs


def test_client_compressed_forms(chatd):
    node = chatd()
    with ZRaw(node.port) as z, RawWs(node.port) as p:
        z.handshake("/?username=z&room=in")
        p.handshake("/?username=p&room=in")
        # one frame
        z.send_frame(OP_TEXT, deflate("hello " * 50), rsv=4)
        assert p.recv_text() == "z: " + "hello " * 50
        # fragmented: RSV1 on the first frame only, a ping in between
        d = deflate(LONG * 5)
        z.send(frame(OP_TEXT, d[:7], fin=False, rsv=4) + frame(OP_PING, b"p")
               + frame(OP_CONT, d[7:20], fin=False) + frame(OP_CONT, d[20:]))
        assert p.recv_text() == "z: " + LONG * 5
        # ended with a final block instead of a sync flush (RFC 7692 7.2.3.4)
        z.send_frame(OP_TEXT, deflate("final block", flush=zlib.Z_FINISH), rsv=4)
        assert p.recv_text() == "z: final block"
        # stored (uncompressed) blocks, and a small window
        z.send_frame(OP_TEXT, deflate("stored " * 10, level=0), rsv=4)
        assert p.recv_text() == "z: " + "stored " * 10
        z.send_frame(OP_TEXT, deflate(LONG * 3, wbits=9), rsv=4)
        assert p.recv_text() == "z: " + LONG * 3
        # the empty message: 0x00 (RFC 7692 7.2.3.6), or nothing at all
        z.send_frame(OP_TEXT, b"\x00", rsv=4)
        assert p.recv_text() == "z: "
        z.send_frame(OP_TEXT, b"", rsv=4)
        assert p.recv_text() == "z: "
        # plain messages still work beside them
        z.send_frame(OP_TEXT, "plain")
        assert p.recv_text() == "z: plain"
        # exactly max_message (64k: "z: " is not counted) once inflated
        big = "y" * 65536
        z.send_frame(OP_TEXT, deflate(big), rsv=4)
        assert p.recv_text(10) == "z: " + big
        # one byte more is too big, however small it is on the wire
        z.send_frame(OP_TEXT, deflate(big + "y"), rsv=4)
        assert expect_close(z, 1009) == b"message larger than the limit once inflated"


@pytest.mark.parametrize("case", ["cont", "ping", "close", "pong", "rsv2", "plain-conn"])
def test_rsv1_where_it_does_not_belong(chatd, case):
    node = chatd()
    with ZRaw(node.port) as z:
        z.handshake("/?username=z", offer=None if case == "plain-conn" else CHROME_OFFER)
        if case == "cont":
            z.send(frame(OP_TEXT, deflate("abc")[:1], fin=False, rsv=4)
                   + frame(OP_CONT, deflate("abc")[1:], rsv=4))
        elif case in ("ping", "pong"):
            z.send_frame(OP_PING if case == "ping" else OP_PONG, b"", rsv=4)
        elif case == "close":
            z.send_frame(OP_CLOSE, close_payload(1000), rsv=4)
        elif case == "rsv2":
            z.send_frame(OP_TEXT, deflate("abc"), rsv=6)
        else:
            z.send_frame(OP_TEXT, deflate("abc"), rsv=4)
        expect_close(z, 1002)


def test_bad_compressed_data(chatd):
    """Each broken message closes its sender with 1007 (1009 when it is too
    big once inflated); nobody else notices, and the node stays fine."""
    node = chatd(workers=2)
    ctx = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflate(LONG, ctx=ctx)
    takeover = deflate(LONG, ctx=ctx)  # points back into the message before
    good = deflate(LONG * 2)
    curated = {
        "reserved block type": b"\xff\xff\xff",
        "cut in its last block": good[:-3],
        "context taken over": takeover,
        "bytes after the final block": deflate("x", flush=zlib.Z_FINISH) + b"\x00\x00",
        "invalid UTF-8 inside": deflate(b"ok \xff\xfe ok"),
        "truncated UTF-8 inside": deflate(b"euro \xe2\x82"),
        "a stored block that lies": b"\x00\x05\x00\xfa\xffab",
    }
    with RawWs(node.port) as bystander:
        bystander.handshake("/?username=by&room=calm")
        for name, payload in curated.items():
            with ZRaw(node.port) as z:
                z.handshake("/?username=bad&room=calm")
                z.send_frame(OP_TEXT, payload, rsv=4)
                reason = expect_close(z, 1007)
                assert reason in (b"invalid compressed data", b"invalid UTF-8 in a text message"), \
                    (name, reason)
        bystander.send_frame(OP_TEXT, "still here")
        assert bystander.recv_text() == "by: still here"

    # A fuzz-like batch: mutations of good compressed messages, each on a
    # connection of its own. A mutation may happen to stay valid (then the
    # sender hears its own message back, as UTF-8); otherwise 1007 or 1009.
    rnd = random.Random(7692)
    seeds = [deflate(LONG * k + "\u00e9t\u00e9 \U0001f600") for k in (1, 2, 5)] + [good]
    outcomes = {}
    for i in range(200):
        p = bytearray(rnd.choice(seeds))
        kind = i % 4
        if kind == 0:
            for _ in range(rnd.randint(1, 4)):
                p[rnd.randrange(len(p))] ^= 1 << rnd.randrange(8)
        elif kind == 1:
            p = p[:rnd.randrange(len(p))]
        elif kind == 2:
            p = bytearray(rnd.randbytes(rnd.randint(1, 300)))
        else:
            at = rnd.randrange(len(p))
            p[at:at] = rnd.randbytes(rnd.randint(1, 20))
        with ZRaw(node.port) as z:
            z.handshake("/?username=fz&room=fuzz")
            z.send_frame(OP_TEXT, bytes(p), rsv=4)
            op, payload = z.recv_frame()
            if op == OP_CLOSE:
                code = parse_close(payload)[0]
                assert code in (1007, 1009), (i, bytes(p), code)
                outcomes[code] = outcomes.get(code, 0) + 1
            else:
                assert op == OP_TEXT
                text = (inflate(payload) if z.last_rsv1 else payload).decode("utf-8")
                assert text.startswith("fz: ")
                outcomes["delivered"] = outcomes.get("delivered", 0) + 1
    assert outcomes.get(1007, 0) > 100, outcomes
    with RawWs(node.port) as after:
        after.handshake("/?username=after&room=calm")
        after.send_frame(OP_TEXT, "fine")
        assert after.recv_text() == "after: fine"
    m = metrics(node.port)
    assert m["chatd_messages_received_compressed_total"] >= 200 + len(curated)


def test_decompression_bomb(chatd):
    """A small frame that inflates past max_message costs its sender a 1009
    and the node nothing: the others keep chatting, the memory stays."""
    node = chatd(workers=2, max_message="64k")
    bomb = deflate(b"a" * (16 << 20))  # 16 MiB in about 16 KiB
    assert len(bomb) < 20000
    half = len(bomb) // 2
    with RawWs(node.port) as a, RawWs(node.port) as b:
        a.handshake("/?username=a&room=calm")
        b.handshake("/?username=b&room=calm")
        a.send_frame(OP_TEXT, "before")
        assert b.recv_text() == "a: before"

        def one(fragmented):
            with ZRaw(node.port) as z:
                z.handshake("/?username=bomber&room=calm")
                t0 = time.monotonic()
                if fragmented:
                    z.send(frame(OP_TEXT, bomb[:half], fin=False, rsv=4) + frame(OP_CONT, bomb[half:]))
                else:
                    z.send_frame(OP_TEXT, bomb, rsv=4)
                op, payload = z.recv_frame()
                took = time.monotonic() - t0
                assert op == OP_CLOSE
                assert parse_close(payload) == (1009, b"message larger than the limit once inflated")
                return took

        one(False)
        one(True)
        base = rss_kib(node.proc.pid)
        took = [one(k % 2 == 1) for k in range(40)]
        grown = rss_kib(node.proc.pid) - base
        # 40 bombs of 16 MiB each: not one was inflated past 64 KiB
        assert grown < 4096, f"RSS grew by {grown} KiB"
        print(f"bomb: 1009 after {1000 * sorted(took)[len(took) // 2]:.1f} ms (median of 40), "
              f"RSS {base} KiB, +{grown} KiB")
        assert a.recv_text() == "a: before"
        a.send_frame(OP_TEXT, "after")
        assert b.recv_text() == "a: after"
        assert a.recv_text() == "a: after"
        # 42 bombers came and went; a and b never noticed
        b.send_frame(OP_TEXT, "and me")
        assert a.recv_text() == "b: and me"

    # Compressed bytes past the wire limit (64k + 8k + 64) are refused at the
    # frame header, before anything is read or inflated.
    with ZRaw(node.port) as z:
        z.handshake("/?username=big")
        z.send(frame(OP_TEXT, b"", rsv=4, length=65536 + 8192 + 65)[:10])
        expect_close(z, 1009)


def test_idle_memory_does_not_grow(chatd):
    """No compression state stays with a connection: after each client sent
    a compressed message and got one back, a deflate client holds what a
    plain one holds (a per-connection zlib stream would be 40 to 300 KiB)."""
    n = 300
    per = {}
    for mode in ("plain", "deflate"):
        node = chatd(name=mode, workers=2, compression_min_size=0)
        offer = CHROME_OFFER if mode == "deflate" else None
        # warm both workers up: their compressor and decompressor exist now
        for k in range(4):
            with ZRaw(node.port) as w:
                w.handshake(f"/?username=warm{k}&room=warm{k}", offer=offer)
                w.send_frame(OP_TEXT, deflate(LONG) if offer else LONG, rsv=4 if offer else 0)
                assert w.recv_z()[1] == f"warm{k}: " + LONG
        time.sleep(0.3)
        base = rss_kib(node.proc.pid)
        clients = []
        try:
            for i in range(n):
                w = ZRaw(node.port)
                clients.append(w)
                w.handshake(f"/?username=u{i}&room=r{i}", offer=offer)
                w.send_frame(OP_TEXT, deflate(LONG) if offer else LONG, rsv=4 if offer else 0)
            for i, w in enumerate(clients):
                z, text, _ = w.recv_z()
                assert text == f"u{i}: " + LONG and z == (mode == "deflate")
            time.sleep(0.3)
            per[mode] = (rss_kib(node.proc.pid) - base) / n
        finally:
            for w in clients:
                w.close()
        node.stop()
    print(f"RSS per idle connection: plain {per['plain']:.2f} KiB, deflate {per['deflate']:.2f} KiB")
    assert per["deflate"] < per["plain"] + 2, per


@pytest.mark.tsan
def test_threaded_compressed_broadcast(chatd):
    """Deflate clients on four workers: every worker asks for the same
    compressed frames at once (the compare-and-swap), TSan watching."""
    srv = chatd(workers=4)
    n, senders = 60, (0, 1, 2, 3, 31, 59)

    async def main():
        clients = await asyncio.gather(*(ws_connect(srv.url(f"c{i}", "tz")) for i in range(n)))
        msgs = [(s, f"{LONG} {s}-{k}") for k in range(5) for s in senders]

        async def reader(ws):
            return [await recv_text(ws, 30) for _ in msgs]

        readers = [asyncio.create_task(reader(ws)) for ws in clients]
        for s, text in msgs:
            await clients[s].send(text)
        seqs = await asyncio.gather(*readers)
        want = sorted(f"c{s}: {t}" for s, t in msgs)
        for s in seqs:
            assert sorted(s) == want and s == seqs[0]
        await asyncio.gather(*(ws.close() for ws in clients))

    arun(main(), 120)
    m = metrics(srv.port)
    assert m["chatd_frames_compressed_total"] >= n * 30
