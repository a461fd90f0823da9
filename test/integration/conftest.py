"""Helpers and fixtures for the chatd integration tests.

Every test starts the real chatd binary (and a real redis-server where it
needs one) on free loopback ports, talks to it with real WebSocket clients
(Debian's python3-websockets) or raw sockets for malformed input, and stops
what it started -- its own pids only.

Environment:
  CHATD_BIN    binary to test (default <repo>/build/chatd); point it at
               build/asan/chatd or build/tsan/chatd for the sanitizer runs
  CHATD_URL    ws://127.0.0.1:PORT of an already running chatd: the tests that
               need no special configuration use it and start nothing (for
               debugging); the others are skipped
  CHATD_START_TIMEOUT  seconds to wait for readiness (default 15)

Every wait is bounded in time and every loop in count.
"""

import asyncio
import base64
import hashlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")
CHATD_URL = os.environ.get("CHATD_URL")
START_TIMEOUT = float(os.environ.get("CHATD_START_TIMEOUT", "15"))
HOST = "127.0.0.1"

SANITIZER_MARKS = (
    "ERROR: AddressSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ERROR: LeakSanitizer",
)

# RFC 6455 section 1.3: this key must be answered with this accept value.
WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_for(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def free_port():
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def sanitizer_report(text):
    """The first line of a sanitizer report in text, or None."""
    for line in text.splitlines():
        if any(mark in line for mark in SANITIZER_MARKS):
            return line
    return None


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it is true; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port, host=HOST):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# chatd processes


def write_config(path, overrides):
    lines = ["# written by the integration tests"]
    for k, v in overrides.items():
        lines.append(f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")
    return path


class Chatd:
    """One chatd process on its own port, with its log in a file.

    Chatd(tmp_path, name, overrides) writes name.conf, start() runs the
    binary with stderr into name.log and waits until it listens.
    """

    def __init__(self, tmp_path, name="chatd", overrides=None, env=None, port=None):
        self.tmp_path = tmp_path
        self.name = name
        self.port = port or free_port()
        self.conf = {
            "listen": f"{HOST}:{self.port}",
            "workers": 2,
            "log_level": "info",
            "shutdown_timeout": "5s",
        }
        self.conf.update(overrides or {})
        self.env = dict(os.environ)
        self.env.pop("PORT", None)
        self.env.pop("REDIS_URL", None)
        self.env.update(env or {})
        self.conf_path = tmp_path / f"{name}.conf"
        self.log_path = tmp_path / f"{name}.log"
        self.proc = None
        self.returncode = None
        self.external = False
        self.starts = 0

    @classmethod
    def from_url(cls, tmp_path, url):
        u = urllib.parse.urlparse(url)
        c = cls(tmp_path, "external", port=u.port)
        c.external = True
        return c

    # -- process management ------------------------------------------------

    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None, "already running"
        write_config(self.conf_path, self.conf)
        self.starts += 1
        self._log_file = open(self.log_path, "ab")
        self._log_offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [CHATD_BIN, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            env=self.env,
            cwd=str(self.tmp_path),
        )
        self.returncode = None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                pytest.fail(f"{self.name} exited with {self.returncode} at start:\n{self.log()}")
            if "chatd listening at ws://" in self.log(since_start=True) and port_open(self.port):
                self._settle(deadline)
                return self
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name} not ready within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def _settle(self, deadline):
        """A Redis node admits clients once its consumer knows where the
        stream ends (/readyz 200): give it a moment, as a load balancer
        would, but return anyway when Redis is meant to be away."""
        if self.conf.get("broker") != "redis" and "REDIS_URL" not in self.env:
            return
        end = min(deadline, time.monotonic() + 2)
        while time.monotonic() < end:
            try:
                if http_exchange(self.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200:
                    return
            except (OSError, AssertionError):
                pass
            time.sleep(0.02)

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout):
        """Waits for the process to exit; returns its code or None."""
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.returncode

    def stop(self, sig=signal.SIGTERM, timeout=None):
        """Sends sig and waits; returns (exit code, problems list)."""
        problems = []
        if self.external or self.proc is None:
            return 0, problems
        if timeout is None:
            timeout = parse_duration(self.conf.get("shutdown_timeout", "5s")) + 10
        if self.proc.poll() is None:
            self.send_signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            problems.append(f"{self.name} did not exit within {timeout}s of {sig.name}; killed")
            self.proc.kill()
            rc = self.wait(10)
        self.returncode = rc
        self._log_file.close()
        self.proc = None
        return rc, problems

    def kill(self, timeout=10):
        """SIGKILL on purpose (a crash the test stages): waits for the exit;
        the chatd fixture does not count this exit code as a failure."""
        assert self.proc is not None
        self.proc.kill()
        self.wait(timeout)
        self._log_file.close()
        self.proc = None
        self.returncode = None

    def log(self, since_start=False):
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        if since_start:
            data = data[self._log_offset:]
        return data.decode("utf-8", "replace")

    def wait_log(self, pattern, timeout=10):
        """Waits until the log matches the regular expression pattern."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log()), timeout, what=f"log /{pattern}/ of {self.name}")

    # -- addresses ---------------------------------------------------------

    def url(self, username=None, room=None, raw_query=None):
        q = raw_query
        if q is None:
            parts = []
            if username is not None:
                parts.append("username=" + urllib.parse.quote(username, safe=""))
            if room is not None:
                parts.append("room=" + urllib.parse.quote(room, safe=""))
            q = "&".join(parts)
        return f"ws://{HOST}:{self.port}/" + (f"?{q}" if q else "")


def parse_duration(v):
    s = str(v).strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", s)
    if not m:
        return 5.0
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


@pytest.fixture
def chatd(tmp_path):
    """Factory: chatd(**overrides) starts a node and returns its Chatd.

    chatd(name="a", env={...}, start=False, **directives). At teardown every
    node still running gets SIGTERM; the test fails when one does not exit
    0, or when a log holds a sanitizer report.
    """
    nodes = []

    def make(name=None, env=None, start=True, **overrides):
        if CHATD_URL:
            if overrides or env or nodes:
                pytest.skip("needs its own chatd configuration (CHATD_URL is set)")
            c = Chatd.from_url(tmp_path, CHATD_URL)
            nodes.append(c)
            return c
        c = Chatd(tmp_path, name or f"chatd{len(nodes) + 1}", overrides, env)
        nodes.append(c)
        if start:
            c.start()
        return c

    yield make

    problems = []
    for c in nodes:
        if c.external:
            continue
        mine = []
        if c.proc is not None:
            rc, p = c.stop()
            mine += p
            if rc != 0:
                mine.append(f"{c.name} exited with {rc} after SIGTERM")
        elif c.returncode not in (None, 0):
            mine.append(f"{c.name} exited with {c.returncode}")
        rep = sanitizer_report(c.log())
        if rep:
            mine.append(f"{c.name} log has a sanitizer report: {rep}")
        if mine:
            mine.append(f"--- {c.name} log (last 60 lines) ---\n" + "\n".join(c.log().splitlines()[-60:]))
        problems += mine
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def run_chatd_cmd(args, env=None, timeout=20):
    """Runs chatd with args to completion; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("PORT", None)
    e.pop("REDIS_URL", None)
    e.update(env or {})
    return subprocess.run(
        [CHATD_BIN] + list(args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=e,
        timeout=timeout,
    )


# --------------------------------------------------------------------------
# redis-server


class RespError(Exception):
    pass


def resp_encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if not isinstance(a, bytes):
            a = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class _Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        ln, self.buf = self.buf.split(b"\r\n", 1)
        return ln

    def exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        ln = self.line()
        t, rest = ln[:1], ln[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            return RespError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise ValueError(f"bad RESP reply {ln!r}")


def redis_cmd(port, *args, timeout=5):
    """Sends one command to 127.0.0.1:port on a new connection; returns the
    reply (bytes, str, int, list, None), raises RespError on an error reply."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(resp_encode(*args))
        r = _Reader(s).reply()
    if isinstance(r, RespError):
        raise r
    return r


class RedisServer:
    """A redis-server of this test: own port, own dir, appendonly yes;
    args: extra command-line options (e.g. ["--appendfsync", "always"])."""

    def __init__(self, tmp_path, port=None, name="redis", args=()):
        self.args = [str(a) for a in args]
        self.port = port or free_port()
        self.dir = tmp_path / f"{name}-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.log_path = tmp_path / f"{name}-{self.port}.log"
        self.proc = None

    @property
    def url(self):
        return f"redis://{HOST}:{self.port}"

    def start(self, timeout=10):
        assert self.proc is None
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", HOST,
                "--save", "", "--appendonly", "yes", "--dir", str(self.dir),
                "--daemonize", "no", "--protected-mode", "no",
            ] + self.args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server exited with {self.proc.returncode}:\n"
                            + self.log_path.read_text(errors="replace"))
            try:
                if redis_cmd(self.port, "PING", timeout=1) == "PONG":
                    return self
            except (OSError, RespError, ConnectionError):
                pass
            if time.monotonic() >= deadline:
                pytest.fail(f"redis-server not answering PING within {timeout}s")
            time.sleep(0.02)

    def stop(self, timeout=10):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        self.proc = None

    def restart(self):
        self.stop()
        self.start()

    def cli(self, *args, timeout=5):
        return redis_cmd(self.port, *args, timeout=timeout)


@pytest.fixture
def redis(tmp_path):
    """Factory: redis() starts a redis-server (optionally redis(port=P,
    start=False, args=[...extra options])); every one is stopped at
    teardown, even on failure."""
    servers = []

    def make(port=None, start=True, args=()):
        r = RedisServer(tmp_path, port, name=f"redis{len(servers) + 1}", args=args)
        servers.append(r)
        if start:
            r.start()
        return r

    try:
        yield make
    finally:
        for r in servers:
            r.stop()


# --------------------------------------------------------------------------
# raw sockets: HTTP and WebSocket frames by hand


def mask_bytes(data, key):
    """XORs data with the 4-byte key, fast enough for MiB payloads."""
    n = len(data)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0, mask_key=b"\x37\xfa\x21\x3d", length=None):
    """One WebSocket frame as bytes. rsv is the 3-bit RSV1..3 field (4 = RSV1);
    length overrides the encoded payload length (for malformed frames)."""
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0xF)
    n = len(payload) if length is None else length
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    return head + mask_key + mask_bytes(payload, mask_key)


def close_payload(code, reason=b""):
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


def http_request_bytes(path="/?username=raw", method="GET", key=WS_KEY, version="13",
                       extra=None, upgrade=True, host=None):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host or HOST}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
        if key is not None:
            lines.append(f"Sec-WebSocket-Key: {key}")
        if version is not None:
            lines.append(f"Sec-WebSocket-Version: {version}")
    for h in extra or []:
        lines.append(h)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class HttpResponse:
    def __init__(self, status, reason, headers, body, raw):
        self.status, self.reason, self.headers, self.body, self.raw = status, reason, headers, body, raw

    def header(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return f"HttpResponse({self.status} {self.reason!r}, {self.headers!r}, body={self.body!r})"


def parse_head(head):
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3}) ?(.*)", lines[0])
    assert m, f"not an HTTP status line: {lines[0]!r}"
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(m.group(1)), m.group(2), headers


class RawWs:
    """A WebSocket client by hand, for what a library would never send.

    RawWs(port).handshake() sends the upgrade and reads the 101; send() sends
    bytes; recv_frame() returns (opcode, payload) of the next server frame,
    joining nothing (fragments come back one by one, with .last_fin).
    """

    def __init__(self, port, timeout=5.0):
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.response = None
        self.last_fin = True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, *a, **kw):
        self.sock.sendall(frame(*a, **kw))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no data from the server in time")
        if not chunk:
            raise EOFError("server closed the TCP connection")
        self.buf += chunk

    def read_http(self, timeout=None):
        """Reads one HTTP response head and its body (by Content-Length, or
        up to the server's close when it has none)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        for _ in range(10000):
            if b"\r\n\r\n" in self.buf:
                break
            self._fill(deadline)
        else:
            raise AssertionError("response head too long")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status, reason, headers = parse_head(head)
        body = b""
        if status != 101:
            if "content-length" in headers:
                n = int(headers["content-length"])
                for _ in range(10000):
                    if len(self.buf) >= n:
                        break
                    self._fill(deadline)
                body, self.buf = self.buf[:n], self.buf[n:]
            else:
                for _ in range(10000):
                    try:
                        self._fill(deadline)
                    except EOFError:
                        break
                body, self.buf = self.buf, b""
        self.response = HttpResponse(status, reason, headers, body, head)
        return self.response

    def handshake(self, path="/?username=raw", then=b"", **kw):
        """Sends the upgrade request (plus `then` in the same write) and
        asserts the 101 with the right accept value."""
        self.send(http_request_bytes(path, **kw) + then)
        r = self.read_http()
        assert r.status == 101, f"expected 101, got {r!r}"
        assert r.header("sec-websocket-accept") == accept_for(kw.get("key", WS_KEY))
        return r

    def recv_frame(self, timeout=None):
        """Next frame from the server as (opcode, payload). Asserts what the
        server must do: no mask, no RSV bits."""
        deadline = time.monotonic() + (timeout or self.timeout)
        for _ in range(100000):
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n = b1 & 0x7F
                off = 2
                if n == 126:
                    if len(self.buf) >= 4:
                        n = struct.unpack("!H", self.buf[2:4])[0]
                        off = 4
                    else:
                        n = None
                elif n == 127:
                    if len(self.buf) >= 10:
                        n = struct.unpack("!Q", self.buf[2:10])[0]
                        off = 10
                    else:
                        n = None
                if n is not None and len(self.buf) >= off + n:
                    assert not b1 & 0x80, "server frames must not be masked"
                    assert not b0 & 0x70, f"server frame with RSV bits: {b0:#x}"
                    payload = self.buf[off:off + n]
                    self.buf = self.buf[off + n:]
                    self.last_fin = bool(b0 & 0x80)
                    return b0 & 0x0F, payload
            self._fill(deadline)
        raise AssertionError("frame loop bound reached")

    def recv_message(self, timeout=None, answer_pings=True):
        """Next data message (opcode, payload) with fragments joined; pings are
        answered and pongs skipped."""
        deadline = time.monotonic() + (timeout or self.timeout)
        parts, op = [], None
        for _ in range(100000):
            o, p = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if o == OP_PING:
                if answer_pings:
                    self.send_frame(OP_PONG, p)
                continue
            if o == OP_PONG:
                continue
            if o == OP_CLOSE:
                return o, p
            if op is None:
                op = o
            parts.append(p)
            if self.last_fin:
                return op, b"".join(parts)
        raise AssertionError("message loop bound reached")

    def recv_text(self, timeout=None):
        op, p = self.recv_message(timeout)
        assert op == OP_TEXT, f"expected a text message, got opcode {op} payload {p!r}"
        return p.decode("utf-8")

    def expect_eof(self, timeout=None):
        """Asserts the server closes TCP (after whatever it still sends)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        for _ in range(100000):
            try:
                self._fill(deadline)
            except EOFError:
                return
            except ConnectionResetError:
                return
            except TimeoutError:
                raise AssertionError("server did not close the TCP connection in time")
            self.buf = b""
        raise AssertionError("server kept sending data")


def parse_close(payload):
    if len(payload) == 0:
        return None, b""
    assert len(payload) >= 2, f"close payload of {len(payload)} byte"
    return struct.unpack("!H", payload[:2])[0], payload[2:]


def expect_close(ws, code, timeout=5.0):
    """Reads frames until a close frame; asserts its code, then that the
    server closes TCP. Data frames and pongs before the close are skipped
    (at most a bounded number). Returns the close reason."""
    deadline = time.monotonic() + timeout
    seen = []
    for _ in range(10000):
        try:
            op, payload = ws.recv_frame(max(0.01, deadline - time.monotonic()))
        except EOFError:
            raise AssertionError(f"server closed TCP without a close frame (expected {code}); "
                                 f"frames before: {seen[:5]!r}")
        except ConnectionResetError:
            raise AssertionError(f"connection reset without a close frame (expected {code})")
        except TimeoutError:
            raise AssertionError(f"no close frame within {timeout}s (expected {code}); "
                                 f"frames before: {seen[:5]!r}")
        if op == OP_CLOSE:
            got, reason = parse_close(payload)
            assert got == code, f"expected close {code}, got close {got} reason {reason!r}"
            try:
                reason.decode("utf-8")
            except UnicodeDecodeError:
                raise AssertionError(f"server close reason is not UTF-8: {reason!r}")
            # Answer the close as a client would, then the server ends TCP.
            try:
                ws.send_frame(OP_CLOSE, close_payload(code))
            except OSError:
                pass
            ws.expect_eof(max(0.5, deadline - time.monotonic()))
            return reason
        seen.append((op, payload[:40]))
    raise AssertionError("close loop bound reached")


def http_exchange(port, data, timeout=5.0):
    """Sends raw bytes, returns the HttpResponse."""
    with RawWs(port, timeout) as w:
        w.send(data)
        return w.read_http()


def metrics(port):
    """GET /metrics, parsed: {'name': value, 'name{label="v"}': value}."""
    r = http_exchange(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert r.status == 200, r
    assert r.header("content-type").startswith("text/plain; version=0.0.4"), r
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value) if "." in value else int(value)
    return out


# --------------------------------------------------------------------------
# asyncio and websockets


def arun(coro, timeout=60):
    """Runs a coroutine to completion, bounded by timeout seconds."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def ws_connect(url, **kw):
    import websockets
    opts = dict(open_timeout=10, close_timeout=5, ping_interval=None, max_size=None, max_queue=None)
    opts.update(kw)
    return await websockets.connect(url, **opts)


async def recv_text(ws, timeout=5.0):
    m = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(m, str), f"expected text, got {m!r}"
    return m


async def expect_silence(ws, timeout=0.3):
    """Asserts nothing arrives on ws within timeout seconds."""
    try:
        m = await asyncio.wait_for(ws.recv(), timeout)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected message {m!r}")
