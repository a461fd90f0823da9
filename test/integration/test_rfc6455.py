"""RFC 6455 conformance, case by case after the Autobahn TestSuite's server
cases, sections 1-7 and 9, against the real chatd binary over raw sockets.

chatd is a chat server, not an echo server: a text message M from user NAME
comes back to everyone in the room, the sender included, as the text frame
`NAME: M`. That is the "echo" the Autobahn cases wait for. Binary messages
are refused with 1003, so the binary cases expect that close instead.

Test ids start with the Autobahn case number they follow ("3.2", "6.4.1");
"x" marks a case of ours in the same spirit. Where Autobahn sends the frames
in one go, "flushed" frame by frame or in 1-byte "chops", the tests do the
same through the `mode` parameter:
    one     all frames in one write
    frames  one write per frame, a 2 ms pause between them
    bytes   one write per byte (past 512 bytes in chops of 997, as
            Autobahn's 1.1.8, to keep big frames cheap)

One chatd node serves the whole module (max_message = 1 MiB so that the
section 9 sizes fit); every test talks in rooms of its own, so no test sees
another's messages. The node must still run after each test and exit 0 with
a clean log at the end (sanitizer builds: no report).

Where the RFC lets the server choose, the tests accept each allowed choice
and no more:
  * A frame that fails the connection ends the client's membership of its
    room at once, so the client's own copy of a message it sent in the SAME
    write just before may or may not come back before the close frame
    (Autobahn grades the missing copy "non-strict"). Everyone else in the
    room always gets it; the "echo-first" mode waits for the copy before
    sending the bad frame, which is Autobahn's strict expectation.
  * A close without a code is answered with an empty close frame (or 1000).
  * Close codes 1012-1014 (IANA registered after RFC 6455) are accepted like
    1011, as the current Autobahn 7.7/7.9 lists imply (they test neither).
"""

import itertools
import random
import socket
import struct
import time

import pytest

from conftest import (
    CHATD_URL, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Chatd, RawWs, arun,
    close_payload, frame, mask_bytes, parse_close, recv_text, sanitizer_report, ws_connect,
)

LIMIT = 1 << 20            # the node's max_message
OP_BIN = OP_BINARY

_rng = random.Random(6455)
_ids = itertools.count(1)


# --------------------------------------------------------------------------
# the node


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One chatd for the module (or the one at CHATD_URL, with its own
    limits: the tests that need max_message = 1 MiB are then skipped)."""
    tmp = tmp_path_factory.mktemp("rfc6455")
    if CHATD_URL:
        n = Chatd.from_url(tmp, CHATD_URL)
        n.limit = None
        yield n
        return
    n = Chatd(tmp, "rfc6455", {"max_message": "1m", "max_output_buffer": "8m", "workers": 2})
    n.limit = LIMIT
    n.start()
    yield n
    rc, problems = n.stop()
    rep = sanitizer_report(n.log())
    if rc != 0 or problems or rep:
        tail = "\n".join(n.log().splitlines()[-60:])
        pytest.fail(f"chatd exited with {rc} {problems} {rep or ''}\n--- log tail ---\n{tail}",
                    pytrace=False)


@pytest.fixture(autouse=True)
def still_running(node):
    """After each test: the node survived it."""
    yield
    if node.external:
        return
    rep = sanitizer_report(node.log())
    if not node.running or rep:
        tail = "\n".join(node.log().splitlines()[-40:])
        pytest.fail(f"chatd died or reported a problem during this test: {rep}\n{tail}",
                    pytrace=False)


def need_limit(node):
    if node.limit != LIMIT:
        pytest.skip("needs the module's own chatd (max_message = 1m)")


# --------------------------------------------------------------------------
# frames and clients


def mframe(opcode, payload=b"", fin=True, rsv=0, mask=True, length=None):
    """A client frame as conftest.frame builds it, but with a fresh random
    mask key each time (so unmasking is tested at every key offset)."""
    key = bytes(_rng.getrandbits(8) for _ in range(4))
    return frame(opcode, payload, fin=fin, mask=mask, rsv=rsv, mask_key=key, length=length)


def text(p, fin=True, rsv=0):
    return mframe(OP_TEXT, p, fin=fin, rsv=rsv)


def cont(p, fin=True, rsv=0):
    return mframe(OP_CONT, p, fin=fin, rsv=rsv)


def ping(p=b"", fin=True, rsv=0):
    return mframe(OP_PING, p, fin=fin, rsv=rsv)


def pong(p=b"", fin=True, rsv=0):
    return mframe(OP_PONG, p, fin=fin, rsv=rsv)


def close(code=None, reason=b"", fin=True, rsv=0):
    return mframe(OP_CLOSE, b"" if code is None else close_payload(code, reason), fin=fin, rsv=rsv)


def fragments(payload, size, opcode=OP_TEXT):
    """payload as a fragmented message of size-byte fragments."""
    if isinstance(payload, str):
        payload = payload.encode()
    parts = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    return [mframe(opcode if i == 0 else OP_CONT, p, fin=(i == len(parts) - 1))
            for i, p in enumerate(parts)]


def pattern(n, seed=0):
    """n bytes of printable ASCII that show any loss or reordering."""
    unit = bytes(0x21 + (i * 7 + seed) % 94 for i in range(4096 + 94))
    reps = n // len(unit) + 1
    return (unit * reps)[:n]


def pieces(data, mode):
    if mode == "one":
        return [data]
    if mode == "bytes":
        head = [data[i:i + 1] for i in range(min(len(data), 512))]
        return head + [data[i:i + 997] for i in range(512, len(data), 997)]
    raise ValueError(mode)


def send(w, frames, mode="one"):
    """Sends frames as mode says. The server may have failed the connection
    by then; it keeps reading (and ignoring) until we close, but a reset is
    no error here: the test looks at what the server sent."""
    try:
        if mode == "frames":
            for f in frames:
                w.send(f)
                time.sleep(0.002)
            return
        for p in pieces(b"".join(frames), mode):
            w.send(p)
    except (BrokenPipeError, ConnectionResetError):
        pass


def connect(node, room=None, name=None, timeout=10.0):
    """A raw client in a room of its own (or room), upgraded."""
    i = next(_ids)
    w = RawWs(node.port, timeout)
    w.name = name or f"u{i}"
    w.room = room or f"rfc{i}"
    w.handshake(f"/?username={w.name}&room={w.room}")
    return w


def said(w, payload):
    """The frame everyone in w's room gets when w sends text payload."""
    if isinstance(payload, str):
        payload = payload.encode()
    return (OP_TEXT, w.name.encode() + b": " + payload)


def short(fr):
    op, p = fr
    return (op, p if len(p) <= 60 else p[:40] + b"...%d bytes" % len(p))


def next_frame(w, timeout=None):
    fr = w.recv_frame(timeout)
    assert w.last_fin, f"chatd sent a fragment: {short(fr)}"
    return fr


def expect_frames(w, frames, timeout=10.0):
    """The next frames from the server are exactly frames, in order."""
    for i, want in enumerate(frames):
        got = next_frame(w, timeout)
        if got != want:
            pytest.fail(f"frame {i}: expected {short(want)}, got {short(got)}")


def expect_end(w, timeout=5.0):
    """After its close frame the server sends nothing and closes TCP."""
    assert w.buf == b"", f"bytes after the server's close frame: {w.buf[:40]!r}"
    try:
        w._fill(time.monotonic() + timeout)
    except (EOFError, ConnectionResetError):
        return
    except TimeoutError:
        raise AssertionError("server did not close the TCP connection after its close frame")
    raise AssertionError(f"bytes after the server's close frame: {w.buf[:40]!r}")


def expect_close(w, code, maybe=(), timeout=5.0):
    """Reads up to the server's close frame: before it only a prefix of
    `maybe` (copies and pongs the server may still send), then close `code`
    with a UTF-8 reason, then the end of TCP. Answers the close as a client
    would."""
    seen = []
    for _ in range(len(maybe) + 1):
        try:
            fr = next_frame(w, timeout)
        except EOFError:
            raise AssertionError(f"TCP closed without a close frame (expected {code}); "
                                 f"before: {[short(f) for f in seen]}")
        if fr[0] == OP_CLOSE:
            break
        seen.append(fr)
    else:
        raise AssertionError(f"expected close {code}, got more frames: {[short(f) for f in seen]}")
    if seen != list(maybe[:len(seen)]):
        pytest.fail(f"before the close: {[short(f) for f in seen]}, "
                    f"allowed: a prefix of {[short(f) for f in maybe]}")
    got, reason = parse_close(fr[1])
    assert got == code, f"expected close {code}, got {got} {reason!r}"
    reason.decode("utf-8")
    try:
        w.send(close(1000))
    except OSError:
        pass
    expect_end(w, timeout)
    return seen


def close_cleanly(w, code=1000, reason=b""):
    """Client-initiated close: the server echoes the code, then ends TCP."""
    w.send(close(code, reason))
    op, p = next_frame(w)
    assert op == OP_CLOSE, short((op, p))
    got, r = parse_close(p)
    if code is None:
        assert got in (None, 1000), (got, r)
    else:
        assert got == code, (got, r)
    r.decode("utf-8")
    expect_end(w)


def expect_quiet(w):
    """Nothing more is queued for w: its own marker message comes next."""
    w.send(text(b"marker"))
    expect_frames(w, [said(w, b"marker")])


def run_ok(node, frames, expect, mode="one"):
    """Sends frames; the server answers with exactly `expect` (frames built
    by lambdas of the client, for its name), then closes cleanly."""
    with connect(node) as w:
        send(w, frames, mode)
        expect_frames(w, [e(w) for e in expect])
        close_cleanly(w)


def run_fail(node, good, bad, code, mode="one", pongs=()):
    """good: text payloads sent as valid messages first; bad: frames that
    fail the connection. A listener in the room gets exactly the good
    messages; the sender gets its copies (all of them in mode echo-first,
    where they are awaited before `bad` is sent; else perhaps not all),
    the pongs of pings in `good`... never anything after the close."""
    with connect(node) as listener, connect(node, room=listener.room) as w:
        copies = [said(w, g) for g in good]
        if mode == "echo-first":
            for g, c in zip(good, copies):
                send(w, [text(g)])
                expect_frames(w, [c])
            send(w, bad, "frames")
            expect_close(w, code)
        else:
            send(w, [text(g) for g in good] + list(bad), mode)
            expect_close(w, code, maybe=copies)
        expect_frames(listener, copies)
        expect_quiet(listener)


# --------------------------------------------------------------------------
# 1 framing: text and binary messages of every length class


LENGTHS = [0, 125, 126, 127, 128, 65535, 65536]


@pytest.mark.parametrize("mode", ["one", "bytes"])
@pytest.mark.parametrize("n", LENGTHS)
def test_1_1_text_lengths(node, n, mode):
    """1.1.1-1.1.8: a text message of each length class comes back whole."""
    payload = pattern(n, n)
    run_ok(node, [text(payload)], [lambda w: said(w, payload)], mode)


@pytest.mark.parametrize("mode", ["one", "bytes"])
@pytest.mark.parametrize("n", LENGTHS)
def test_1_2_binary_lengths_refused(node, n, mode):
    """1.2.1-1.2.8: binary messages are refused with 1003 at any length."""
    with connect(node) as w:
        send(w, [mframe(OP_BIN, b"\xfe" * n)], mode)
        expect_close(w, 1003)


def test_1_x_lengths_through_websockets(node):
    """The same lengths through a library client, which also checks every
    frame chatd sends (masking, lengths, UTF-8) as a browser would."""
    async def main():
        room = f"rfc{next(_ids)}"
        ws = await ws_connect(f"ws://127.0.0.1:{node.port}/?username=lib&room={room}")
        for n in LENGTHS:
            m = pattern(n, 3).decode()
            await ws.send(m)
            assert await recv_text(ws, 10) == "lib: " + m
        await ws.close()
        assert ws.close_code == 1000

    arun(main(), 30)


# --------------------------------------------------------------------------
# 2 pings and pongs


PINGS = [
    ("2.1", b""),
    ("2.2", b"Hello, world!"),
    ("2.3", b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff"),
    ("2.4", b"\xfe" * 125),
]


@pytest.mark.parametrize("mode", ["one", "bytes"])
@pytest.mark.parametrize("payload", [p[1] for p in PINGS], ids=[p[0] for p in PINGS])
def test_2_ping_answered_with_same_payload(node, payload, mode):
    """2.1-2.4, 2.6 (bytes): a pong with the ping's payload, byte for byte."""
    run_ok(node, [ping(payload)], [lambda w: (OP_PONG, payload)], mode)


@pytest.mark.parametrize("mode", ["one", "bytes"])
def test_2_5_ping_126_bytes_1002(node, mode):
    with connect(node) as w:
        send(w, [ping(b"\xfe" * 126)], mode)
        expect_close(w, 1002)


def test_2_5_x_ping_with_16bit_length_under_126_1002(node):
    """A control frame's length must fit the 7-bit field: 126 + 16-bit 5."""
    with connect(node) as w:
        key = b"\x01\x02\x03\x04"
        send(w, [bytes([0x89, 0x80 | 126]) + struct.pack("!H", 5) + key + mask_bytes(b"abcde", key)])
        expect_close(w, 1002)


@pytest.mark.parametrize("payload", [b"", b"unsolicited pong payload"], ids=["2.7", "2.8"])
def test_2_7_unsolicited_pong_ignored(node, payload):
    """Nothing answers an unsolicited pong: the next frame is the copy of
    the message sent after it."""
    run_ok(node, [pong(payload), text(b"after pong")], [lambda w: said(w, b"after pong")])


def test_2_9_pong_then_ping(node):
    run_ok(node, [pong(b"unsolicited pong payload"), ping(b"ping payload")],
           [lambda w: (OP_PONG, b"ping payload")])


@pytest.mark.parametrize("mode", ["one", "frames"], ids=["2.10", "2.11"])
def test_2_10_ten_pings_ten_pongs_in_order(node, mode):
    payloads = [b"payload-%d" % i for i in range(10)]
    run_ok(node, [ping(p) for p in payloads], [lambda w, p=p: (OP_PONG, p) for p in payloads], mode)


def test_2_x_many_full_size_pings_in_one_write(node):
    """40 pings of 125 bytes in one write (5 KiB of pongs to queue at once):
    every one is answered, in order."""
    payloads = [bytes([i]) * 125 for i in range(40)]
    run_ok(node, [ping(p) for p in payloads], [lambda w, p=p: (OP_PONG, p) for p in payloads])


def test_2_x_ping_then_close_in_one_write(node):
    """The pong comes before the close echo; then TCP ends."""
    with connect(node) as w:
        send(w, [ping(b"last"), close(1000, b"bye")])
        expect_frames(w, [(OP_PONG, b"last")])
        op, p = next_frame(w)
        assert op == OP_CLOSE and parse_close(p)[0] == 1000, (op, p)
        expect_end(w)


def test_2_x_ping_between_messages(node):
    """The pong and the copies may interleave (the copies come back through
    the room); the copies keep their order."""
    with connect(node) as w:
        send(w, [text(b"m1"), ping(b"p"), text(b"m2")])
        got = [next_frame(w) for _ in range(3)]
        assert (OP_PONG, b"p") in got, got
        assert [g for g in got if g[0] == OP_TEXT] == [said(w, b"m1"), said(w, b"m2")], got
        close_cleanly(w)


# --------------------------------------------------------------------------
# 3 reserved bits


HELLO = b"Hello, world!"

RSV_CASES = [
    # id, good messages first, bad frames, mode
    ("3.1", [], [text(HELLO, rsv=1)], "one"),
    ("3.2", [HELLO], [text(HELLO, rsv=2), ping()], "one"),
    ("3.2-echo-first", [HELLO], [text(HELLO, rsv=2), ping()], "echo-first"),
    ("3.3", [HELLO], [text(HELLO, rsv=3), ping()], "frames"),
    ("3.3-echo-first", [HELLO], [text(HELLO, rsv=3), ping()], "echo-first"),
    ("3.4", [HELLO], [text(HELLO, rsv=4), ping()], "bytes"),
    ("3.4-echo-first", [HELLO], [text(HELLO, rsv=4), ping()], "echo-first"),
    ("3.5", [], [mframe(OP_BIN, b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=5)], "one"),
    ("3.6", [], [ping(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff", rsv=6)], "one"),
    ("3.7", [], [close(1000, rsv=7)], "one"),
]
for _op, _name in [(OP_TEXT, "text"), (OP_BIN, "binary"), (OP_PING, "ping"), (OP_PONG, "pong"),
                   (OP_CLOSE, "close")]:
    for _rsv, _bit in [(4, "rsv1"), (2, "rsv2"), (1, "rsv3")]:
        _p = close_payload(1000) if _op == OP_CLOSE else b"x"
        RSV_CASES.append((f"x-{_bit}-{_name}", [], [mframe(_op, _p, rsv=_rsv)], "one"))
        RSV_CASES.append((f"x-{_bit}-{_name}-after-message", [b"before"],
                          [mframe(_op, _p, rsv=_rsv), ping()], "echo-first"))
RSV_CASES += [
    ("x-rsv1-continuation", [], [text(b"a", fin=False), cont(b"b", rsv=4)], "one"),
    ("x-rsv-split-header", [b"first"], [text(b"second", rsv=2)], "bytes"),
]


@pytest.mark.parametrize("good,bad,mode", [c[1:] for c in RSV_CASES], ids=[c[0] for c in RSV_CASES])
def test_3_reserved_bits_1002(node, good, bad, mode):
    """RSV bits without a negotiated extension fail the connection with
    1002; messages before it are delivered, frames after it ignored (no
    pong for the ping that follows)."""
    run_fail(node, good, bad, 1002, mode)


# --------------------------------------------------------------------------
# 4 opcodes


OPCODE_CASES = []
for _i, _op in enumerate([3, 4, 5, 6, 7]):
    OPCODE_CASES.append((f"4.1.{_i + 1}-op{_op}", [], [mframe(_op)], "one"))
    OPCODE_CASES.append((f"4.1.{_i + 1}-op{_op}-payload-after-message", [HELLO],
                         [mframe(_op, b"reserved opcode payload"), ping()],
                         ["one", "frames", "bytes", "echo-first", "one"][_i]))
for _i, _op in enumerate([0xB, 0xC, 0xD, 0xE, 0xF]):
    OPCODE_CASES.append((f"4.2.{_i + 1}-op{_op:X}", [], [mframe(_op)], "one"))
    OPCODE_CASES.append((f"4.2.{_i + 1}-op{_op:X}-payload-after-message", [HELLO],
                         [mframe(_op, b"reserved opcode payload"), ping()],
                         ["one", "frames", "bytes", "echo-first", "one"][_i]))
OPCODE_CASES += [
    ("x-op3-inside-fragmented-message", [], [text(b"a", fin=False), mframe(3, b"b")], "one"),
    ("x-opB-inside-fragmented-message", [], [text(b"a", fin=False), mframe(0xB, b"b")], "one"),
    ("x-op3-not-final", [], [mframe(3, b"b", fin=False)], "one"),
]


@pytest.mark.parametrize("good,bad,mode", [c[1:] for c in OPCODE_CASES],
                         ids=[c[0] for c in OPCODE_CASES])
def test_4_reserved_opcodes_1002(node, good, bad, mode):
    run_fail(node, good, bad, 1002, mode)


# --------------------------------------------------------------------------
# 5 fragmentation


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG], ids=["5.1-ping", "5.2-pong"])
def test_5_1_fragmented_control_1002(node, opcode):
    run_fail(node, [], [mframe(opcode, b"fragment1", fin=False), cont(b"fragment2")], 1002)


def test_5_x_fragmented_close_1002(node):
    run_fail(node, [], [close(1000, fin=False), cont(b"")], 1002)


@pytest.mark.parametrize("mode", ["one", "frames", "bytes"], ids=["5.3", "5.4", "5.5"])
def test_5_3_text_in_two_fragments(node, mode):
    run_ok(node, [text(b"fragment1", fin=False), cont(b"fragment2")],
           [lambda w: said(w, b"fragment1fragment2")], mode)


@pytest.mark.parametrize("mode", ["one", "frames", "bytes"], ids=["5.6", "5.7", "5.8"])
def test_5_6_ping_between_fragments_answered_first(node, mode):
    """The pong comes at once; the message when its last fragment is in."""
    run_ok(node, [text(b"fragment1", fin=False), ping(b"ping payload"), cont(b"fragment2")],
           [lambda w: (OP_PONG, b"ping payload"), lambda w: said(w, b"fragment1fragment2")], mode)


FRAG_FAILS = [
    ("5.9", [cont(b"non-continuation payload"), text(HELLO)], "one"),
    ("5.10", [cont(b"non-continuation payload"), text(HELLO)], "frames"),
    ("5.11", [cont(b"non-continuation payload"), text(HELLO)], "bytes"),
    ("5.12", [cont(b"non-continuation payload", fin=False), text(HELLO)], "one"),
    ("5.13", [cont(b"non-continuation payload", fin=False), text(HELLO)], "frames"),
    ("5.14", [cont(b"non-continuation payload", fin=False), text(HELLO)], "bytes"),
    ("5.16", [cont(b"fragment1", fin=False), text(b"fragment2", fin=False), text(b"fragment3")] * 2,
     "one"),
    ("5.17", [cont(b"fragment1"), text(b"fragment2", fin=False), cont(b"fragment3")] * 2, "one"),
    ("5.18", [text(b"fragment1", fin=False), text(b"fragment2")], "one"),
    ("x-binary-inside-text", [text(b"fragment1", fin=False), mframe(OP_BIN, b"x")], "one"),
    ("x-empty-continuation-without-start", [cont(b"")], "one"),
]


@pytest.mark.parametrize("frames,mode", [c[1:] for c in FRAG_FAILS], ids=[c[0] for c in FRAG_FAILS])
def test_5_fragmentation_errors_1002(node, frames, mode):
    """A continuation with no message to continue, or a new message inside
    one, fails the connection; the text after it is not delivered."""
    run_fail(node, [], frames, 1002, mode)


@pytest.mark.parametrize("mode", ["one", "echo-first"])
def test_5_15_continuation_after_final_fragment_1002(node, mode):
    """fragment1 + fragment2 (final) is a whole message and is delivered;
    the continuation after it fails the connection."""
    with connect(node) as listener, connect(node, room=listener.room) as w:
        first = [text(b"fragment1", fin=False), cont(b"fragment2")]
        bad = [cont(b"fragment3", fin=False), text(b"fragment4")]
        copy = said(w, b"fragment1fragment2")
        if mode == "echo-first":
            send(w, first)
            expect_frames(w, [copy])
            send(w, bad)
            expect_close(w, 1002)
        else:
            send(w, first + bad)
            expect_close(w, 1002, maybe=[copy])
        expect_frames(listener, [copy])
        expect_quiet(listener)


@pytest.mark.parametrize("mode", ["frames", "bytes"], ids=["5.19", "5.20"])
def test_5_19_pings_inside_a_message_in_stages(node, mode):
    """Five fragments with two pings between them, sent in stages: each pong
    arrives while the message is still incomplete (we wait for it before
    sending more), the message once the last fragment is in."""
    with connect(node) as w:
        send(w, [text(b"fragment1", fin=False), cont(b"fragment2", fin=False), ping(b"pongme 1!")],
             mode)
        expect_frames(w, [(OP_PONG, b"pongme 1!")])
        send(w, [cont(b"fragment3", fin=False), cont(b"fragment4", fin=False), ping(b"pongme 2!")],
             mode)
        expect_frames(w, [(OP_PONG, b"pongme 2!")])
        send(w, [cont(b"fragment5")], mode)
        expect_frames(w, [said(w, b"fragment1fragment2fragment3fragment4fragment5")])
        close_cleanly(w)


@pytest.mark.parametrize("mode", ["one", "frames"])
def test_5_x_many_one_byte_fragments(node, mode):
    """A message of 200 one-byte fragments (the first and last included)."""
    msg = pattern(200, 5)
    run_ok(node, fragments(msg, 1), [lambda w: said(w, msg)], mode)


def test_5_x_fragments_chopped_bytewise_with_pings(node):
    """Fragments of 7 bytes with a ping after every third, all sent one byte
    per write: every pong in order, then the whole message."""
    msg = pattern(300, 9)
    frames, pongs = [], []
    frags = fragments(msg, 7)
    for i, f in enumerate(frags):
        frames.append(f)
        if i % 3 == 2 and i < len(frags) - 1:  # none after the last: the copy may overtake it
            pongs.append(b"p%d" % i)
            frames.append(ping(pongs[-1]))
    run_ok(node, frames, [lambda w, p=p: (OP_PONG, p) for p in pongs] + [lambda w: said(w, msg)],
           "bytes")


def test_5_x_empty_fragments(node):
    """6.1.2/6.1.3: empty fragments around a payload, and a message of only
    empty fragments."""
    frames = [text(b"", fin=False), cont(b"middle frame payload", fin=False), cont(b""),
              text(b"", fin=False), cont(b"", fin=False), cont(b"")]
    run_ok(node, frames, [lambda w: said(w, b"middle frame payload"), lambda w: said(w, b"")])


def test_5_x_fragmented_message_then_next_message(node):
    """After a fragmented message ends, a new one starts cleanly."""
    run_ok(node, [text(b"a", fin=False), cont(b"b"), text(b"c"), text(b"d", fin=False), cont(b"e")],
           [lambda w: said(w, b"ab"), lambda w: said(w, b"c"), lambda w: said(w, b"de")])


def test_5_x_fragmented_message_to_listener(node):
    """Another member gets the reassembled message once, not fragments."""
    with connect(node) as listener, connect(node, room=listener.room) as w:
        send(w, fragments(b"one two three four", 4), "frames")
        expect_frames(w, [said(w, b"one two three four")])
        expect_frames(listener, [said(w, b"one two three four")])
        expect_quiet(listener)


# --------------------------------------------------------------------------
# 6 UTF-8


KOSME = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"  # κόσμε with U+1F79

VALID_UTF8 = [
    ("6.1.1-empty", b""),
    ("6.2.1", "Hello-µ@ßöäüàá-UTF-8!!".encode()),
    ("6.5.1", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"),
    ("6.5.2-dollar", b"hello\x24world"),
    ("6.5.3-cent", b"hello\xc2\xa2world"),
    ("6.5.4-euro", b"hello\xe2\x82\xacworld"),
    ("6.5.5-U+24B62", b"hello\xf0\xa4\xad\xa2world"),
    ("6.7.1-nul", b"\x00"),
    ("6.7.2-U+0080", b"\xc2\x80"),
    ("6.7.3-U+0800", b"\xe0\xa0\x80"),
    ("6.7.4-U+10000", b"\xf0\x90\x80\x80"),
    ("6.9.1-U+007F", b"\x7f"),
    ("6.9.2-U+07FF", b"\xdf\xbf"),
    ("6.9.3-U+FFFF", b"\xef\xbf\xbf"),
    ("6.9.4-U+10FFFF", b"\xf4\x8f\xbf\xbf"),
    ("6.11.1-U+D7FF", b"\xed\x9f\xbf"),
    ("6.11.2-U+E000", b"\xee\x80\x80"),
    ("6.11.3-U+FFFD", b"\xef\xbf\xbd"),
    ("6.22-U+FFFE", b"\xef\xbf\xbe"),
    ("6.22-U+1FFFE", b"\xf0\x9f\xbf\xbe"),
    ("6.22-U+10FFFE", b"\xf4\x8f\xbf\xbe"),
    ("6.23-U+FFF9", b"\xef\xbf\xb9"),
    ("x-bom", b"\xef\xbb\xbfhello"),
    ("x-emoji", "😀 smile 🎉".encode()),
]
VALID_UTF8 += [(f"6.6-prefix{i}", KOSME[:i]) for i in (2, 5, 7, 9, 11)]

INVALID_UTF8 = [
    ("6.3.1-surrogate-inside", KOSME + b"\xed\xa0\x80edited"),
    ("6.8.1-5-byte-first", b"\xf8\x88\x80\x80\x80"),
    ("6.8.2-6-byte-first", b"\xfc\x84\x80\x80\x80\x80"),
    ("6.10.1-U+1FFFFF", b"\xf7\xbf\xbf\xbf"),
    ("6.10.2-5-byte-last", b"\xfb\xbf\xbf\xbf\xbf"),
    ("6.10.3-6-byte-last", b"\xfd\xbf\xbf\xbf\xbf\xbf"),
    ("6.11.5-U+110000", b"\xf4\x90\x80\x80"),
    ("6.12.1-lone-80", b"\x80"),
    ("6.12.2-lone-bf", b"\xbf"),
    ("6.12.3", b"\x80\xbf"),
    ("6.12.6", b"\x80\xbf\x80\xbf\x80\xbf"),
    ("6.12.8-all-continuations", bytes(range(0x80, 0xc0))),
    ("6.13.1-lonely-2-byte-starts", b"".join(bytes([b, 0x20]) for b in range(0xc0, 0xe0))),
    ("6.13.2-lonely-3-byte-starts", b"".join(bytes([b, 0x20]) for b in range(0xe0, 0xf0))),
    ("6.13.3-lonely-4-byte-starts", b"".join(bytes([b, 0x20]) for b in range(0xf0, 0xf8))),
    ("6.13.4-lonely-5-byte-starts", b"".join(bytes([b, 0x20]) for b in range(0xf8, 0xfc))),
    ("6.13.5-lonely-6-byte-starts", b"\xfc\x20\xfd\x20"),
    ("6.14.1-truncated-c0", b"\xc0"),
    ("6.14.2-truncated-e0-80", b"\xe0\x80"),
    ("6.14.3-truncated-f0-80-80", b"\xf0\x80\x80"),
    ("6.14.4-truncated-f8", b"\xf8\x80\x80\x80"),
    ("6.14.6-truncated-df", b"\xdf"),
    ("6.14.7-truncated-ef-bf", b"\xef\xbf"),
    ("6.14.8-truncated-f7", b"\xf7\xbf\xbf"),
    ("x-truncated-euro-at-end", b"ok\xe2\x82"),
    ("x-truncated-emoji-at-end", b"ok\xf0\x9f\x98"),
    ("x-truncated-U+10FFFF-at-end", b"\xf4\x8f\xbf"),
    ("6.15.1-concatenated-incomplete",
     b"\xc0\xe0\x80\xf0\x80\x80\xf8\x80\x80\x80\xfc\x80\x80\x80\x80\xdf\xef\xbf\xf7\xbf\xbf"),
    ("6.16.1-fe", b"\xfe"),
    ("6.16.2-ff", b"\xff"),
    ("6.16.3", b"\xfe\xfe\xff\xff"),
    ("6.17.1-overlong-slash-2", b"\xc0\xaf"),
    ("6.17.2-overlong-slash-3", b"\xe0\x80\xaf"),
    ("6.17.3-overlong-slash-4", b"\xf0\x80\x80\xaf"),
    ("6.17.4-overlong-slash-5", b"\xf8\x80\x80\x80\xaf"),
    ("6.17.5-overlong-slash-6", b"\xfc\x80\x80\x80\x80\xaf"),
    ("6.18.1-max-overlong-2", b"\xc1\xbf"),
    ("6.18.2-max-overlong-3", b"\xe0\x9f\xbf"),
    ("6.18.3-max-overlong-4", b"\xf0\x8f\xbf\xbf"),
    ("6.19.1-overlong-nul-2", b"\xc0\x80"),
    ("6.19.2-overlong-nul-3", b"\xe0\x80\x80"),
    ("6.19.3-overlong-nul-4", b"\xf0\x80\x80\x80"),
    ("6.20.1-U+D800", b"\xed\xa0\x80"),
    ("6.20.2-U+DB7F", b"\xed\xad\xbf"),
    ("6.20.3-U+DB80", b"\xed\xae\x80"),
    ("6.20.4-U+DBFF", b"\xed\xaf\xbf"),
    ("6.20.5-U+DC00", b"\xed\xb0\x80"),
    ("6.20.6-U+DF80", b"\xed\xbe\x80"),
    ("6.20.7-U+DFFF", b"\xed\xbf\xbf"),
    ("6.21.1-pair-D800-DC00", b"\xed\xa0\x80\xed\xb0\x80"),
    ("6.21.2-pair-D800-DFFF", b"\xed\xa0\x80\xed\xbf\xbf"),
    ("6.21.4-pair-DB7F-DFFF", b"\xed\xad\xbf\xed\xbf\xbf"),
    ("6.21.8-pair-DBFF-DFFF", b"\xed\xaf\xbf\xed\xbf\xbf"),
]
INVALID_UTF8 += [(f"6.6-prefix{i}", KOSME[:i]) for i in (1, 3, 4, 6, 8, 10)]


@pytest.mark.parametrize("mode", ["frame", "fragments"])
@pytest.mark.parametrize("payload", [v[1] for v in VALID_UTF8], ids=[v[0] for v in VALID_UTF8])
def test_6_valid_utf8_delivered(node, payload, mode):
    """Valid UTF-8 is delivered byte for byte: in one frame, and fragmented
    at every byte (so inside code points; 6.2.3, 6.2.4)."""
    frames = [text(payload)] if mode == "frame" else fragments(payload, 1)
    run_ok(node, frames, [lambda w: said(w, payload)])


@pytest.mark.parametrize("mode", ["frame", "fragments"])
@pytest.mark.parametrize("payload", [v[1] for v in INVALID_UTF8], ids=[v[0] for v in INVALID_UTF8])
def test_6_invalid_utf8_1007(node, payload, mode):
    """Invalid UTF-8 fails the connection with 1007 (6.3.2: fragmented at
    every byte, each fragment its own write), and nobody gets the text."""
    frames = [text(payload)] if mode == "frame" else fragments(payload, 1)
    run_fail(node, [], frames, 1007, "one" if mode == "frame" else "frames")


def test_6_x_every_scalar_value(node):
    """Every Unicode scalar value, U+0000..U+10FFFF without the surrogates,
    in 256 KiB messages, is accepted and delivered unchanged."""
    need_limit(node)
    chars = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    data = chars.encode("utf-8")
    with connect(node) as w:
        off = 0
        for _ in range(64):
            if off >= len(data):
                break
            end = min(len(data), off + 256 * 1024)
            while end < len(data) and data[end] & 0xC0 == 0x80:
                end -= 1  # cut on a character boundary
            send(w, [text(data[off:end])])
            expect_frames(w, [said(w, data[off:end])])
            off = end
        assert off == len(data)
        close_cleanly(w)


def fail_fast(node, first, later, timeout=3.0):
    """Sends `first` only and expects close 1007 within timeout, without
    `later` (the rest of the message) ever being sent: the server must not
    wait for the message's end. Then sends `later`, which changes nothing."""
    with connect(node) as w:
        send(w, first, "frames")
        expect_fail_fast(w, timeout)
        send(w, later)
        try:
            w.send(close(1000))
        except OSError:
            pass
        expect_end(w)


def expect_fail_fast(w, timeout):
    try:
        op, p = next_frame(w, timeout)
    except TimeoutError:
        raise AssertionError(f"no close 1007 within {timeout}s of the invalid bytes: "
                             "the server waits for the rest of the message")
    assert op == OP_CLOSE, f"expected close 1007, got {short((op, p))}"
    assert parse_close(p)[0] == 1007, p


def test_6_4_1_fail_fast_on_fragment(node):
    """κόσμε, then a fragment with U+110000, then (never needed) the end."""
    fail_fast(node, [text(KOSME, fin=False), cont(b"\xf4\x90\x80\x80", fin=False)],
              [cont(b"edited")])


def test_6_4_2_fail_fast_across_fragment_boundary(node):
    """κόσμε\\xf4 is a valid prefix; the next fragment's \\x90 makes it
    impossible."""
    fail_fast(node, [text(KOSME + b"\xf4", fin=False), cont(b"\x90", fin=False)],
              [cont(b"\x80\x80edited")])


def test_6_4_3_fail_fast_inside_one_frame(node):
    """One frame whose payload arrives in chops: the close comes after the
    chop with the bad bytes, before the frame is complete."""
    payload = KOSME + b"\xf4\x90\x80\x80" + b"edited"
    f = text(payload)
    hdr = len(f) - len(payload)
    fail_fast(node, [f[:hdr + len(KOSME)], f[hdr + len(KOSME):hdr + len(KOSME) + 4]],
              [f[hdr + len(KOSME) + 4:]])


def test_6_4_4_fail_fast_on_the_byte(node):
    """As 6.4.3, chopped at the byte: up to \\xf4 it is a valid prefix and
    the connection stays open; \\x90 gets 1007 at once."""
    payload = KOSME + b"\xf4\x90\x80\x80" + b"edited"
    f = text(payload)
    at = len(f) - len(payload) + len(KOSME) + 1
    with connect(node) as w:
        send(w, [f[:at]], "bytes")
        time.sleep(0.2)
        assert not readable(w), "closed on a valid prefix"
        send(w, [f[at:at + 1]])
        expect_fail_fast(w, 3.0)
        send(w, [f[at + 1:]])
        w.send(close(1000))
        expect_end(w)


def readable(w):
    """Whether the server sent anything (without reading it)."""
    if w.buf:
        return True
    w.sock.setblocking(False)
    try:
        return bool(w.sock.recv(1, socket.MSG_PEEK)) or True
    except BlockingIOError:
        return False
    finally:
        w.sock.settimeout(w.timeout)


def test_6_x_fail_fast_in_first_fragment(node):
    """An invalid sequence in the FIRST fragment of a fragmented message:
    1007 comes before the final fragment is ever sent."""
    fail_fast(node, [text(b"ab\xed\xa0\x80cd", fin=False)], [cont(b"ef")])


def test_6_x_fail_fast_in_first_fragment_of_big_message(node):
    """Same with a 64 KiB first fragment whose bad byte is its first one."""
    fail_fast(node, [text(b"\xff" + pattern(65535), fin=False)], [cont(b"end")])


def test_6_x_fail_fast_before_frame_payload_complete(node):
    """The header announces 1000 bytes; 10 of them, invalid, are enough."""
    payload = b"abc\xc0\xafdefg" + b"x" * 990
    f = text(payload)
    hdr = len(f) - len(payload)
    fail_fast(node, [f[:hdr + 10]], [f[hdr + 10:]])


def test_6_x_valid_sequence_split_across_fragments(node):
    """A 4-byte character cut 2+2 over two fragments, and 1+3."""
    e = "😀".encode()
    run_ok(node, [text(b"a" + e[:2], fin=False), cont(e[2:] + b"b"),
                  text(e[:1], fin=False), cont(e[1:])],
           [lambda w: said(w, b"a" + e + b"b"), lambda w: said(w, e)])


def test_6_x_truncated_sequence_at_message_end_fragmented(node):
    """The message ends (FIN) inside a character: 1007."""
    run_fail(node, [], [text(b"ok\xe2", fin=False), cont(b"\x82")], 1007)


def test_6_x_utf8_state_resets_between_messages(node):
    """A message ending exactly on a boundary does not leak its decoder
    state into the next: two valid messages back to back."""
    run_ok(node, [text("é".encode()), text(b"\x41")],
           [lambda w: said(w, "é".encode()), lambda w: said(w, b"A")])


# --------------------------------------------------------------------------
# 7 close handling


def test_7_1_1_message_then_close(node):
    with connect(node) as w:
        send(w, [text(b"Hello World!")])
        expect_frames(w, [said(w, b"Hello World!")])
        close_cleanly(w)


def test_7_1_2_second_close_ignored(node):
    with connect(node) as w:
        send(w, [close(1000), close(1000)])
        op, p = next_frame(w)
        assert op == OP_CLOSE and parse_close(p)[0] == 1000
        expect_end(w)


@pytest.mark.parametrize("after", ["ping", "text", "fragment", "binary", "garbage"],
                         ids=["7.1.3-ping", "7.1.4-text", "7.1.5-fragment", "x-binary",
                              "x-garbage"])
def test_7_1_3_frames_after_close_ignored(node, after):
    """After the client's close nothing it sends is answered or delivered:
    no pong, no message, not even an error close for junk."""
    with connect(node) as listener, connect(node, room=listener.room) as w:
        tail = {
            "ping": [ping(b"after close")],
            "text": [text(b"after close")],
            "fragment": [cont(b"fragment2")],
            "binary": [mframe(OP_BIN, b"\x00")],
            "garbage": [b"\xff\xff\xff\xff"],
        }[after]
        head = [text(b"fragment1", fin=False)] if after == "fragment" else []
        send(w, head + [close(1000)] + tail)
        op, p = next_frame(w)
        assert op == OP_CLOSE and parse_close(p)[0] == 1000, short((op, p))
        expect_end(w)
        expect_quiet(listener)


def test_7_1_6_big_message_close_ping(node):
    """256 KiB message, close and ping back to back: the copy, if it comes,
    comes whole before the close echo; no pong."""
    need_limit(node)
    payload = pattern(256 * 1024, 1)
    with connect(node) as listener, connect(node, room=listener.room) as w:
        send(w, [text(payload), close(1000), ping(b"never")])
        expect_close(w, 1000, maybe=[said(w, payload)], timeout=10)
        expect_frames(listener, [said(w, payload)])
        expect_quiet(listener)


def slow_reader(node, room=None):
    """A client with a small receive buffer, so that a big frame to it is
    still being written when the next thing happens."""
    w = connect(node, room=room)
    w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return w


def test_7_x_close_while_copy_half_written(node):
    """The client closes while its 1 MiB copy is half written: chatd ends
    that frame first (never a close inside a frame), then echoes the close."""
    need_limit(node)
    payload = pattern(LIMIT, 2)
    with slow_reader(node) as w:
        send(w, [text(payload)])
        w._fill(time.monotonic() + 10)  # the copy has started to arrive
        time.sleep(0.05)
        send(w, [close(1000), ping(b"never")])
        expect_close(w, 1000, maybe=[said(w, payload)], timeout=10)


def test_2_x_pong_waits_for_frame_boundary(node):
    """A ping while a 1 MiB frame is being written to us: the pong comes
    before or after that frame, never inside it, and the copy is whole."""
    need_limit(node)
    payload = pattern(LIMIT, 4)
    with slow_reader(node) as w:
        send(w, [text(payload)])
        w._fill(time.monotonic() + 10)
        time.sleep(0.05)
        send(w, [ping(b"mid-frame")])
        got = [next_frame(w, 20), next_frame(w, 20)]
        assert sorted(short(g) for g in got) == sorted([short(said(w, payload)),
                                                         short((OP_PONG, b"mid-frame"))])
        assert said(w, payload) in got
        close_cleanly(w)


def test_7_3_1_close_without_payload(node):
    with connect(node) as w:
        close_cleanly(w, None)


def test_7_3_2_close_one_byte_payload_1002(node):
    run_fail(node, [], [mframe(OP_CLOSE, b"\x03")], 1002)


@pytest.mark.parametrize("reason", [b"", b"Hello World!", b"*" * 123, "é".encode() * 61 + b"x"],
                         ids=["7.3.3-no-reason", "7.3.4-reason", "7.3.5-123-bytes",
                              "x-123-bytes-utf8"])
def test_7_3_3_close_with_reason(node, reason):
    with connect(node) as w:
        close_cleanly(w, 1000, reason)


def test_7_3_6_close_payload_126_bytes_1002(node):
    run_fail(node, [], [mframe(OP_CLOSE, close_payload(1000, b"*" * 124))], 1002)


@pytest.mark.parametrize("reason", [
    KOSME + b"\xed\xa0\x80edited",   # 7.5.1
    b"\xff",
    b"ok\xe2\x82",                   # truncated at the end
    b"\xc0\xaf",
], ids=["7.5.1", "x-ff", "x-truncated", "x-overlong"])
def test_7_5_1_close_reason_invalid_utf8_1007(node, reason):
    run_fail(node, [], [close(1000, reason)], 1007)


VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]
# Registered with IANA after RFC 6455; Autobahn tests them neither way.
REGISTERED_LATER = [1012, 1013, 1014]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999]
OUT_OF_RANGE = [5000, 65535]     # Autobahn 7.13.1/7.13.2: informational


@pytest.mark.parametrize("code", VALID_CODES + REGISTERED_LATER,
                         ids=[f"7.7.{i + 1}-{c}" for i, c in enumerate(VALID_CODES)]
                         + [f"x-{c}" for c in REGISTERED_LATER])
def test_7_7_valid_close_code_echoed(node, code):
    with connect(node) as w:
        close_cleanly(w, code, b"reason")


@pytest.mark.parametrize("code", INVALID_CODES + OUT_OF_RANGE,
                         ids=[f"7.9.{i + 1}-{c}" for i, c in enumerate(INVALID_CODES)]
                         + [f"7.13.{i + 1}-{c}" for i, c in enumerate(OUT_OF_RANGE)])
def test_7_9_invalid_close_code_1002(node, code):
    run_fail(node, [], [close(code)], 1002)


def test_7_x_close_after_failure_not_answered(node):
    """After the server failed the connection it answers nothing the client
    sends: not a close, not a ping."""
    with connect(node) as w:
        send(w, [mframe(3)])
        op, p = next_frame(w)
        assert op == OP_CLOSE and parse_close(p)[0] == 1002
        send(w, [ping(b"x"), close(1000)])
        expect_end(w)


def test_7_x_server_ends_tcp_without_waiting(node):
    """After the close handshake the server closes TCP itself at once; the
    client need not."""
    with connect(node) as w:
        w.send(close(1000))
        t0 = time.monotonic()
        op, p = next_frame(w)
        assert op == OP_CLOSE
        expect_end(w, timeout=2.0)
        assert time.monotonic() - t0 < 2.0


def test_7_x_close_through_websockets(node):
    """A library client's close with a reason completes cleanly."""
    async def main():
        ws = await ws_connect(f"ws://127.0.0.1:{node.port}/?username=lib&room=rfc{next(_ids)}")
        await ws.send("before close")
        assert await recv_text(ws) == "lib: before close"
        await ws.close(4000, "done here")
        assert ws.close_rcvd is not None and ws.close_rcvd.code == 4000

    arun(main(), 20)


# --------------------------------------------------------------------------
# other frame errors


MISC_FAILS = [
    ("x-unmasked-text", [mframe(OP_TEXT, b"hi", mask=False)], 1002),
    ("x-unmasked-ping", [mframe(OP_PING, b"p", mask=False)], 1002),
    ("x-unmasked-close", [mframe(OP_CLOSE, close_payload(1000), mask=False)], 1002),
    ("x-unmasked-continuation", [text(b"a", fin=False), mframe(OP_CONT, b"b", mask=False)], 1002),
    ("x-64bit-length-top-bit",
     [bytes([0x81, 0xFF]) + struct.pack("!Q", 1 << 63) + b"\x00\x00\x00\x00"], 1002),
    ("x-64bit-length-all-ones", [bytes([0x81, 0xFF]) + b"\xff" * 8 + b"\x00\x00\x00\x00"], 1002),
]


@pytest.mark.parametrize("mode", ["one", "bytes"])
@pytest.mark.parametrize("frames,code", [c[1:] for c in MISC_FAILS], ids=[c[0] for c in MISC_FAILS])
def test_x_frame_errors(node, frames, code, mode):
    run_fail(node, [], frames, code, mode)


# --------------------------------------------------------------------------
# 9 limits and performance


SIZES = [64 * 1024, 256 * 1024, 1024 * 1024]


@pytest.mark.parametrize("n", SIZES, ids=["9.1.1-64k", "9.1.2-256k", "9.1.3-1m"])
def test_9_1_big_text_single_frame(node, n):
    """A big text in one frame reaches the sender and another member whole."""
    need_limit(node)
    payload = pattern(n, 11)
    with connect(node) as listener, connect(node, room=listener.room) as w:
        send(w, [text(payload)])
        expect_frames(w, [said(w, payload)], timeout=20)
        expect_frames(listener, [said(w, payload)], timeout=20)
        close_cleanly(w)


@pytest.mark.parametrize("n", SIZES, ids=["9.2.1-64k", "9.2.2-256k", "9.2.3-1m"])
def test_9_2_big_binary_refused(node, n):
    need_limit(node)
    with connect(node) as w:
        send(w, [mframe(OP_BIN, b"\xfe" * n)])
        expect_close(w, 1003)


@pytest.mark.parametrize("size", [64, 256, 1024, 4096, 16384, 65536, 262144, 1048576],
                         ids=lambda s: f"9.3-frag{s}")
def test_9_3_1m_text_fragmented(node, size):
    """1 MiB of text in fragments of 64 bytes .. 1 MiB: delivered whole."""
    need_limit(node)
    payload = pattern(LIMIT, size)
    with connect(node) as w:
        send(w, fragments(payload, size))
        expect_frames(w, [said(w, payload)], timeout=30)
        close_cleanly(w)


@pytest.mark.parametrize("size", [64, 65536], ids=lambda s: f"9.4-frag{s}")
def test_9_4_binary_fragmented_refused(node, size):
    need_limit(node)
    with connect(node) as w:
        send(w, fragments(b"\xfe" * (256 * 1024), size, OP_BIN))
        expect_close(w, 1003)


@pytest.mark.parametrize("chop", [64, 128, 256, 512, 1024, 2048], ids=lambda c: f"9.5-chop{c}")
def test_9_5_1m_text_chopped(node, chop):
    """One 1 MiB frame written in chops of 64 .. 2048 bytes."""
    need_limit(node)
    payload = pattern(LIMIT, chop)
    f = text(payload)
    with connect(node) as w:
        for i in range(0, len(f), chop):
            w.send(f[i:i + chop])
        expect_frames(w, [said(w, payload)], timeout=30)
        close_cleanly(w)


@pytest.mark.parametrize("n", [0, 16, 64, 256, 1024, 4096],
                         ids=lambda n: f"9.7-{n}")
def test_9_7_round_trips(node, n):
    """Messages of n bytes sent one at a time, each after the previous came
    back, 1000 of them as Autobahn sends."""
    with connect(node) as w:
        for i in range(1000):
            payload = pattern(n, i)
            w.send(text(payload))
            got = next_frame(w)
            if got != said(w, payload):
                pytest.fail(f"round trip {i}: {short(got)}")
        close_cleanly(w)


def test_9_x_pipelined_messages(node):
    """1000 messages of 1 KiB in one write, delivered in order."""
    payloads = [pattern(1024, i) for i in range(1000)]
    with connect(node) as w:
        send(w, [text(p) for p in payloads])
        for i, p in enumerate(payloads):
            got = next_frame(w)
            if got != said(w, p):
                pytest.fail(f"message {i}: {short(got)}")
        close_cleanly(w)


@pytest.mark.parametrize("how", ["single-frame", "fragmented", "chopped", "fragment-exact-then-1"])
def test_9_x_just_over_max_message_1009(node, how):
    """max_message + 1 bytes fails with 1009, however it is cut; a message
    of exactly max_message on the same node was delivered (9.3)."""
    need_limit(node)
    payload = pattern(LIMIT + 1)
    if how == "single-frame":
        frames, mode = [text(payload)], "one"
    elif how == "fragmented":
        frames, mode = fragments(payload, 65536), "one"
    elif how == "chopped":
        frames, mode = [text(payload)], "bytes"
    else:
        frames, mode = [text(payload[:LIMIT], fin=False), cont(payload[LIMIT:])], "one"
    run_fail(node, [], frames, 1009, mode)


def test_9_x_over_limit_refused_at_the_header(node):
    """A frame announcing more than max_message is refused before any of its
    payload is sent."""
    need_limit(node)
    with connect(node) as w:
        key = b"\x11\x22\x33\x44"
        send(w, [bytes([0x81, 0xFF]) + struct.pack("!Q", LIMIT + 1) + key])
        expect_close(w, 1009)
