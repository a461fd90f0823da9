"""A chatd.v1 client for the integration tests (issue 12, PROTOCOL.md).

JsonClient.connect(url) offers the subprotocol `chatd.v1` and asserts the
server chose it. Every frame received is parsed as one JSON object with an
`op` (anything else fails the test: the contract is one object per frame),
appended to `log` (arrival order, never consumed) and to `pending` (what no
`expect`/`recv` has taken yet). `expect(op, **fields)` returns the first
pending or newly read frame with that op and those field values, reading
for at most `timeout` seconds; the frames it passes over stay pending, so a
test can take them later in order.

Every wait is bounded in time and every loop in count. Python standard
library plus Debian's python3-websockets.
"""

import asyncio
import collections
import itertools
import json
import re
import time
import urllib.parse

import websockets

SUBPROTOCOL = "chatd.v1"
ID_RX = re.compile(r"(\d+)-(\d+)")
MAX_FRAMES = 1_000_000  # loop bound of every reading loop


def url(node, user=None, room=None, **params):
    """ws://127.0.0.1:PORT/?username=..&room=..&k=v of a node (params in
    order, percent-encoded; None values left out)."""
    q = [("username", user), ("room", room)] + list(params.items())
    qs = urllib.parse.urlencode([(k, str(v)) for k, v in q if v is not None], quote_via=urllib.parse.quote)
    return f"ws://127.0.0.1:{node.port}/" + (f"?{qs}" if qs else "")


def parse_id(s):
    """A message id "<ms>-<n>" as the pair of numbers it is compared by."""
    assert isinstance(s, str), f"id is not a string: {s!r}"
    m = ID_RX.fullmatch(s)
    assert m, f"id is not <ms>-<n>: {s!r}"
    return int(m.group(1)), int(m.group(2))


def id_before(s):
    """An id just before s (for `since`: everything after it includes s)."""
    ms, n = parse_id(s)
    return f"{ms}-{n - 1}" if n > 0 else f"{ms - 1}-{2 ** 63 - 1}" if ms > 0 else "0-0"


def check_msg(f, room=None):
    """Asserts f is a well-formed msg frame (of room); returns it."""
    assert f.get("op") == "msg", f
    for k, t in (("room", str), ("id", str), ("user", str), ("text", str), ("ts", int)):
        assert isinstance(f.get(k), t) and not isinstance(f.get(k), bool), f"msg field {k}: {f}"
    parse_id(f["id"])
    if room is not None:
        assert f["room"] == room, f
    now_ms = time.time() * 1000
    assert abs(f["ts"] - now_ms) < 600_000, f"ts {f['ts']} is not near now ({now_ms:.0f}): {f}"
    return f


def check_joined(f, room=None):
    assert f.get("op") == "joined", f
    assert isinstance(f.get("room"), str), f
    if room is not None:
        assert f["room"] == room, f
    assert isinstance(f.get("epoch"), str) and f["epoch"], f"joined without an epoch string: {f}"
    assert isinstance(f.get("recovered"), bool), f"joined.recovered is not a boolean: {f}"
    assert isinstance(f.get("count"), int) and not isinstance(f["count"], bool), f"joined.count: {f}"
    if "members" in f:
        m = f["members"]
        assert isinstance(m, list) and all(isinstance(u, str) for u in m), f
        assert len(set(m)) == len(m), f"a member listed twice: {f}"
        assert f["count"] == len(m), f"count {f['count']} but {len(m)} members: {f}"
    return f


class Closed(AssertionError):
    """The server closed the connection while the test waited for a frame."""

    def __init__(self, what, code, reason):
        super().__init__(f"{what}: connection closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class JsonClient:
    def __init__(self, ws, name=None):
        self.ws = ws
        self.name = name or "client"
        self.log = []
        self.pending = collections.deque()
        self._refs = itertools.count(1)

    @classmethod
    async def connect(cls, url, name=None, timeout=10.0, **kw):
        opts = dict(subprotocols=[SUBPROTOCOL], open_timeout=timeout, close_timeout=5,
                    ping_interval=None, max_size=None, max_queue=None)
        opts.update(kw)
        ws = await websockets.connect(url, **opts)
        assert ws.subprotocol == SUBPROTOCOL, f"server chose subprotocol {ws.subprotocol!r}"
        return cls(ws, name)

    @classmethod
    async def connect_retry(cls, url, name=None, timeout=20.0, **kw):
        """connect, retried while the node refuses (503 while not ready, a
        refused TCP connect) for at most timeout seconds."""
        deadline = time.monotonic() + timeout
        delay, last = 0.05, None
        for _ in range(10000):
            try:
                return await cls.connect(url, name, timeout=max(1.0, min(10.0, deadline - time.monotonic())), **kw)
            except websockets.InvalidStatusCode as e:
                last = f"HTTP {e.status_code}"
            except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake,
                    websockets.ConnectionClosed, EOFError) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        raise AssertionError(f"{name}: could not connect to {url} within {timeout}s (last: {last})")

    # -- sending -------------------------------------------------------------

    def ref(self):
        return f"{self.name}-{next(self._refs)}"

    async def send(self, obj):
        """Sends obj as JSON (a str is sent as it is)."""
        try:
            await self.ws.send(obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False))
        except websockets.ConnectionClosed:
            raise Closed(f"{self.name} sending", self.ws.close_code, self.ws.close_reason) from None

    async def req(self, op, **fields):
        await self.send(dict(op=op, **fields))

    async def join(self, room, timeout=10.0, **fields):
        """Joins room; returns the checked `joined` frame."""
        await self.req("join", room=room, **fields)
        return check_joined(await self.expect("joined", room=room, timeout=timeout), room)

    async def leave(self, room, timeout=10.0):
        await self.req("leave", room=room)
        return await self.expect("left", room=room, timeout=timeout)

    async def say(self, room, text, timeout=10.0):
        """Sends text to room and waits for its ack; returns the id."""
        ref = self.ref()
        await self.req("send", room=room, text=text, ref=ref)
        return (await self.expect_answer(ref, "ack", timeout))["id"]

    async def expect_answer(self, ref, op, timeout=10.0):
        """The ack or error for ref; asserts it is op (an error where an ack
        was due fails with the error's code and reason)."""
        f = await self.expect(("ack", "error"), ref=ref, timeout=timeout)
        assert f["op"] == op, f"{self.name}: expected {op} for ref {ref!r}, got {f}"
        if op == "ack":
            parse_id(f["id"])
        return f

    async def expect_error(self, code, ref=None, timeout=5.0):
        match = {} if ref is None else {"ref": ref}
        f = await self.expect("error", timeout=timeout, **match)
        assert f.get("code") == code, f"{self.name}: expected error {code}, got {f}"
        assert isinstance(f.get("reason"), str), f"error without a reason string: {f}"
        return f

    async def ping(self, timeout=5.0):
        """ping -> pong: proves the connection is open and served."""
        await self.req("ping")
        return await self.expect("pong", timeout=timeout)

    # -- receiving -----------------------------------------------------------

    async def _read(self, timeout):
        try:
            m = await asyncio.wait_for(self.ws.recv(), max(0.0, timeout))
        except websockets.ConnectionClosed:
            raise Closed(self.name, self.ws.close_code, self.ws.close_reason) from None
        assert isinstance(m, str), f"{self.name}: binary frame {m[:60]!r}"
        try:
            f = json.loads(m)
        except ValueError:
            raise AssertionError(f"{self.name}: frame is not JSON: {m[:200]!r}") from None
        assert isinstance(f, dict) and isinstance(f.get("op"), str), f"{self.name}: frame {m[:200]!r}"
        self.log.append(f)
        return f

    async def recv(self, timeout=5.0):
        """The next frame not yet taken."""
        if self.pending:
            return self.pending.popleft()
        return await self._read(timeout)

    @staticmethod
    def _matches(f, op, match):
        ops = op if isinstance(op, tuple) else (op,)
        return (op is None or f["op"] in ops) and all(f.get(k) == v for k, v in match.items())

    async def expect(self, op, timeout=5.0, **match):
        """The first frame (pending, then new) whose op is op (or one of a
        tuple) and whose fields equal match; others stay pending."""
        for i, f in enumerate(self.pending):
            if self._matches(f, op, match):
                del self.pending[i]
                return f
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FRAMES):
            left = deadline - time.monotonic()
            try:
                f = await self._read(left)
            except asyncio.TimeoutError:
                break
            except Closed as e:
                raise Closed(f"{self.name} waiting for {op} {match} (pending: {self._tail()})",
                             e.code, e.reason) from None
            if self._matches(f, op, match):
                return f
            self.pending.append(f)
        raise AssertionError(f"{self.name}: no {op} {match or ''} within {timeout}s; "
                             f"pending: {self._tail()}")

    def _tail(self, n=8):
        p = list(self.pending)
        return (f"... {len(p) - n} more, " if len(p) > n else "") + repr(p[-n:])

    def take(self, op, **match):
        """Removes and returns every pending frame that matches, in order."""
        out = [f for f in self.pending if self._matches(f, op, match)]
        if out:
            self.pending = collections.deque(f for f in self.pending if not self._matches(f, op, match))
        return out

    async def drain(self, timeout):
        """Reads whatever arrives for timeout seconds into pending."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FRAMES):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                self.pending.append(await self._read(left))
            except asyncio.TimeoutError:
                return

    async def silence(self, timeout=0.5, op=None, **match):
        """Asserts no frame (of op, with match) arrives within timeout, nor
        is pending; other frames stay pending."""
        await self.drain(timeout)
        bad = [f for f in self.pending if self._matches(f, op, match)]
        assert not bad, f"{self.name}: unexpected frames {bad[:5]}"

    async def msgs_until(self, room, last_id, timeout=10.0):
        """Takes the pending and new msg frames of room up to and including
        the one with id last_id; returns them in arrival order."""
        got = []
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FRAMES):
            f = await self.expect("msg", room=room, timeout=max(0.0, deadline - time.monotonic()))
            got.append(check_msg(f, room))
            if f["id"] == last_id:
                return got
            if parse_id(f["id"]) > parse_id(last_id):
                raise AssertionError(f"{self.name}: msg {f['id']} past {last_id} without it: "
                                     f"{[g['id'] for g in got[-5:]]}")
        raise AssertionError("msgs_until loop bound")

    async def expect_closed(self, code, timeout=5.0):
        """Reads until the server closes; asserts the close code."""
        deadline = time.monotonic() + timeout
        for _ in range(MAX_FRAMES):
            try:
                self.pending.append(await self._read(deadline - time.monotonic()))
            except Closed as e:
                assert e.code == code, f"{self.name}: closed with {e.code} {e.reason!r}, expected {code}"
                return e
            except asyncio.TimeoutError:
                break
        raise AssertionError(f"{self.name}: not closed within {timeout}s (expected {code}); "
                             f"pending: {self._tail()}")

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (asyncio.TimeoutError, websockets.ConnectionClosed, OSError):
            pass

    def abort(self):
        """Drops the TCP connection without a close handshake (a phone in a
        tunnel)."""
        t = self.ws.transport
        if t is not None:
            t.abort()


async def close_all(clients):
    await asyncio.gather(*(c.close() for c in clients if c is not None), return_exceptions=True)
