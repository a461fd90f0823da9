#!/usr/bin/python3
"""chatd soak test (issue 6): `make soak`, about 10 minutes.

Starts its own redis-server and two chatd nodes (build/asan/chatd, ASan +
UBSan, broker = redis) on free 127.0.0.1 ports, then for SOAK_SECONDS
(default 600) runs at once:

  churn       a pool of connections (SOAK_CHURN_POOL, 1,500) cycling through
              SOAK_CHURN_CLIENTS (2,000) names: connect, send 1-3 messages,
              leave with a close frame, by dropping the socket, or mid-frame
  well-behaved  SOAK_WB (20) clients in room "soak", split over both nodes,
              each sending a numbered message every 200 ms; at the end every
              connection of every one must have received an unbroken slice of
              the order the Redis stream holds, nothing twice, and everything
              sent must be in it (see check_wb); a client closed with 1013
              (publish refused during a Redis outage) reconnects and goes on,
              its refused messages accounted for
  chatters    4 clients making room "soak" busy (2 KB messages, 10/s each)
  slow readers  raw sockets in room "soak" that stop reading: the node must
              cut them with 1008
  flooders    clients past rate_limit: closed with 1008
  malformed   garbage, bad frames, half-open and oversized handshakes:
              each must get its close code or HTTP status
  redis kills `CLIENT KILL TYPE normal SKIPME yes` every 30 s

Every 10 s it samples each node's VmRSS and prints a line; at the end it
stops the nodes with SIGTERM (exit code 0, no sanitizer report in the logs),
stops Redis, prints the RSS verdict and a table of counts, and exits 1 if
any check failed. Only the processes it started are ever signalled.

Environment: SOAK_SECONDS, SOAK_CHURN_POOL, SOAK_CHURN_CLIENTS, SOAK_WB,
CHATD_BIN (default build/asan/chatd), SOAK_KEEP=1 keeps the temp dir.

Load runs in three processes (churn, abuse = slow readers + flooders +
malformed, and this one for the well-behaved clients, chatters, RSS and
Redis kills), so the churn cannot starve the checks of CPU.
"""

import asyncio
import base64
import collections
import logging
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import websockets

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CHATD_BIN = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "asan", "chatd")
HOST = "127.0.0.1"


def env_num(name, default):
    v = os.environ.get(name)
    return type(default)(v) if v else default


DURATION = env_num("SOAK_SECONDS", 600.0)
CHURN_POOL = env_num("SOAK_CHURN_POOL", 1500)
CHURN_CLIENTS = env_num("SOAK_CHURN_CLIENTS", 2000)
N_WB = env_num("SOAK_WB", 20)
N_CHATTERS = 4
CHAT_SIZE = 2000            # bytes of a chatter's message
CHAT_EVERY = 0.1            # s between a chatter's messages
N_SLOW = 4                  # slow readers at once
KILL_EVERY = 30.0           # s between Redis CLIENT KILLs
RSS_EVERY = 10.0            # s between RSS samples
MAX_OUTPUT = 256 * 1024     # max_output_buffer of the nodes
RSS_FACTOR, RSS_SLACK_MIB = 1.15, 16.0

SAN_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer")
ASAN_OPTIONS = ("detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=66:"
                "quarantine_size_mb=16:allocator_release_to_os_interval_ms=1000")
UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1:exitcode=66"

logging.getLogger("websockets").setLevel(logging.CRITICAL)
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def say(*a):
    print(*a, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def quiet_loop_errors(loop):
    # Dropped sockets make websockets' internal tasks end with errors nobody
    # awaits; they are the point of the exercise, not news.
    loop.set_exception_handler(lambda _loop, _ctx: None)


# ---------------------------------------------------------------------------
# processes we start: redis-server and the chatd nodes


class Proc:
    def __init__(self, name, argv, log_path, env=None, cwd=None):
        self.name, self.argv, self.log_path = name, argv, log_path
        self.env, self.cwd = env, cwd
        self.proc = None
        self.rc = None

    def start(self):
        self._log = open(self.log_path, "ab")
        # Own session: a Ctrl-C on the terminal reaches only soak.py, which
        # then stops these in order.
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, env=self.env, cwd=self.cwd,
                                     start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30.0):
        """Signals our own pid and waits; kills it after timeout. Returns rc."""
        if self.proc is None:
            return self.rc
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
                self.rc = "killed"
                self._log.close()
                return self.rc
        self.rc = self.proc.returncode
        self._log.close()
        return self.rc

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def redis_sync(port, *args, timeout=5):
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(resp(*args))
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0]


def http_get(port, path, timeout=2):
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return s.recv(4096)


def wait_ready(pred, timeout, proc, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} while starting:\n"
                               + proc.log()[-3000:])
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready within {timeout}s")


def start_servers(tmp, procs):
    rport = free_port()
    rdir = os.path.join(tmp, "redis")
    os.mkdir(rdir)
    redis = Proc("redis", ["redis-server", "--port", str(rport), "--bind", HOST, "--save", "",
                           "--appendonly", "no", "--dir", rdir, "--daemonize", "no",
                           "--protected-mode", "no", "--maxclients", "1000"],
                 os.path.join(tmp, "redis.log"))
    procs.append(redis)
    redis.start()
    wait_ready(lambda: redis_sync(rport, "PING", timeout=1) == b"+PONG", 15, redis, "redis-server")

    env = dict(os.environ)
    env.pop("PORT", None)
    env.pop("REDIS_URL", None)
    env["ASAN_OPTIONS"] = ASAN_OPTIONS
    env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    nodes = []
    for i in (1, 2):
        port = free_port()
        conf = os.path.join(tmp, f"node{i}.conf")
        with open(conf, "w") as f:
            f.write(f"""# written by test/soak/soak.py
listen = {HOST}:{port}
workers = 2
broker = redis
redis_url = redis://{HOST}:{rport}
log_level = warn
max_output_buffer = 256k
rate_limit = 50
rate_burst = 100
shutdown_timeout = 5s
""")
        n = Proc(f"node{i}", [CHATD_BIN, "-c", conf], os.path.join(tmp, f"node{i}.log"), env=env,
                 cwd=tmp)
        n.port = port
        procs.append(n)
        n.start()
        nodes.append(n)
    for n in nodes:
        wait_ready(lambda n=n: http_get(n.port, "/healthz").startswith(b"HTTP/1.1 200"), 60, n,
                   n.name)
    return redis, rport, nodes


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------
# WebSocket bits by hand, for the raw-socket clients

WS_KEY = base64.b64encode(b"soak-test-key-16").decode()


def frame(op, payload=b"", fin=True, mask=True, rsv=0, length=None):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | ((rsv & 7) << 4) | (op & 0xF)
    n = len(payload) if length is None else length
    mb = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mb | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mb | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mb | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def upgrade_request(port, path, extra=(), version="13", method="GET", key=WS_KEY):
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
             f"Sec-WebSocket-Version: {version}"]
    lines += list(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_frames(buf):
    """Complete frames at the start of buf: ([(op, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        h = 2
        if n == 126:
            if len(buf) < 4:
                break
            n = struct.unpack("!H", buf[2:4])[0]
            h = 4
        elif n == 127:
            if len(buf) < 10:
                break
            n = struct.unpack("!Q", buf[2:10])[0]
            h = 10
        if len(buf) < h + n:
            break
        out.append((buf[0] & 0x0F, buf[h:h + n]))
        buf = buf[h + n:]
    return out, buf


def close_code(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


class Counts(collections.Counter):
    pass


# ---------------------------------------------------------------------------
# churn (own process)


async def churn_main(ports, stop, live, seed):
    random.seed(seed)
    c = Counts()
    loop = asyncio.get_running_loop()
    quiet_loop_errors(loop)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ident = [0]

    async def one(slot):
        k = ident[0] % CHURN_CLIENTS
        ident[0] += 1
        port = ports[k % 2]
        url = f"ws://{HOST}:{port}/?username=c{k}&room=churn-{k % 250}"
        try:
            ws = await websockets.connect(url, open_timeout=30, close_timeout=10,
                                          ping_interval=None, max_queue=None, max_size=2 ** 20)
        except Exception as e:
            c["connect failed"] += 1
            c[f"connect failed: {type(e).__name__} {e}"[:90]] += 1
            await asyncio.sleep(1)
            return
        c["connected"] += 1
        live[0] += 1
        try:
            life = random.uniform(2, 18)
            end = time.monotonic() + life
            sends = random.randint(1, 3)
            try:
                for j in range(sends):
                    await asyncio.sleep(life / (sends + 1))
                    await ws.send(f"hello {j} from c{k}")
                    c["messages sent"] += 1
                await asyncio.sleep(max(0, end - time.monotonic()))
            except websockets.ConnectionClosed:
                code = ws.close_code
                if code == 1013:
                    c["refused 1013 (redis kill)"] += 1
                else:
                    c["unexpected close by server"] += 1
                    c[f"unexpected close code {code}"] += 1
                return
            mode = random.random()
            if mode < 0.5:
                try:
                    await ws.close()
                except Exception:
                    pass
                if ws.close_code == 1000:
                    c["left with close frame"] += 1
                elif ws.close_code == 1013:
                    c["refused 1013 (redis kill)"] += 1
                else:
                    c["unexpected close answer"] += 1
                    c[f"close answered with {ws.close_code}"] += 1
            elif mode < 0.8:
                ws.transport.abort()
                c["dropped socket"] += 1
            else:
                # mid-frame: header of a 1000-byte text frame, then part of it
                f = frame(0x1, b"x" * 1000)
                ws.transport.write(f[:random.randint(1, 300)])
                await asyncio.sleep(0.01)
                ws.transport.abort()
                c["dropped mid-frame"] += 1
        finally:
            live[0] -= 1
            if ws.transport and not ws.transport.is_closing():
                ws.transport.abort()

    async def slot_loop(slot):
        await asyncio.sleep(slot * 0.01)  # ramp: about 100 new clients a second
        for _ in range(100000):
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(one(slot), 90)
            except asyncio.TimeoutError:
                c["churn iteration over 90 s"] += 1

    await asyncio.gather(*(slot_loop(s) for s in range(CHURN_POOL)))
    return c


# ---------------------------------------------------------------------------
# abuse (own process): slow readers, flooders, malformed input


def tcp_queues(local_port, remote_port):
    """(tx_queue, rx_queue) of the socket local_port -> remote_port on
    127.0.0.1, from /proc/net/tcp; None if not found."""
    want = f"0100007F:{local_port:04X} 0100007F:{remote_port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                if want in line:
                    q = line.split()[4]
                    tx, rx = q.split(":")
                    return int(tx, 16), int(rx, 16)
    except OSError:
        pass
    return None


async def raw_handshake(port, path, sock=None, timeout=20):
    loop = asyncio.get_running_loop()
    if sock is None:
        sock = socket.socket()
        sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
    await loop.sock_sendall(sock, upgrade_request(port, path))
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no 101 in time")
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), left)
        if not chunk:
            raise EOFError("closed during the handshake")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:40]!r}")
    return sock, rest


async def slow_reader(ports, k, room_bytes, c, stop):
    """Connects to room soak, stops reading, and drains once the node's
    backlog for it should have passed max_output_buffer: then it expects the
    close frame 1008."""
    loop = asyncio.get_running_loop()
    port = ports[k % 2]
    sock = socket.socket()
    sock.setblocking(False)
    # A small window and segment keep the kernels' buffers small, so the
    # close frame comes soon after the backlog the node dropped.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    except OSError:
        pass
    try:
        try:
            _, rest = await raw_handshake(port, f"/?username=slow{k}&room=soak", sock)
        except Exception as e:
            c["slow: handshake failed"] += 1
            c[f"slow: handshake failed: {e}"[:80]] += 1
            return
        c["slow: connected"] += 1
        my_port = sock.getsockname()[1]
        base = room_bytes.value
        got = len(rest)
        buf = rest
        t0 = time.monotonic()
        for cycle in range(20):
            # not reading; estimate the node's backlog for us
            while True:
                await asyncio.sleep(0.25)
                if stop.is_set():
                    c["slow: still waiting at the end (not counted)"] += 1
                    return
                if time.monotonic() - t0 > 120:
                    c["slow: not cut within 120 s (unexpected)"] += 1
                    return
                since = room_bytes.value - base - got
                if since < MAX_OUTPUT:
                    continue
                mine = tcp_queues(my_port, port)
                theirs = tcp_queues(port, my_port)
                if mine is None or theirs is None:
                    break  # gone: read what there is
                backlog = since - mine[1] - theirs[0]
                if backlog > MAX_OUTPUT + 16 * 1024:
                    break
            await asyncio.sleep(0.2)
            # drain: frames, then the close frame or EOF
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(sock, 262144), 1.0)
                except asyncio.TimeoutError:
                    break  # quiet for a second: not cut yet
                except OSError:
                    chunk = b""
                if not chunk:
                    c["slow: cut, EOF without close frame (close wait passed)"] += 1
                    return
                got += len(chunk)
                buf += chunk
                frames, buf = parse_frames(buf)
                for op, payload in frames:
                    if op == 0x8:
                        code = close_code(payload)
                        if code == 1008:
                            c["slow: cut with 1008"] += 1
                            try:
                                await loop.sock_sendall(sock, frame(0x8, struct.pack("!H", 1000)))
                            except OSError:
                                pass
                        else:
                            c[f"slow: closed with {code} (unexpected)"] += 1
                        return
                    if op == 0x9:
                        await loop.sock_sendall(sock, frame(0xA, payload))
            c["slow: drained, not cut yet (read on)"] += 1
        c["slow: not cut after 20 cycles (unexpected)"] += 1
    finally:
        sock.close()


async def flooder(ports, k, c):
    port = ports[k % 2]
    url = f"ws://{HOST}:{port}/?username=flood{k}&room=flood"
    try:
        ws = await websockets.connect(url, open_timeout=20, close_timeout=5, ping_interval=None,
                                      max_queue=None)
    except Exception:
        c["flood: connect failed (unexpected)"] += 1
        return
    try:
        try:
            for i in range(300):
                await ws.send(f"flood {i}")
        except websockets.ConnectionClosed:
            pass
        try:
            for _ in range(1000):
                await asyncio.wait_for(ws.recv(), 15)
        except websockets.ConnectionClosed:
            pass
        except asyncio.TimeoutError:
            c["flood: not closed within 15 s (unexpected)"] += 1
            return
        code = ws.close_code
        if code == 1008:
            c["flood: closed with 1008"] += 1
        elif code == 1013:
            c["flood: refused 1013 (redis kill)"] += 1
        else:
            c[f"flood: closed with {code} (unexpected)"] += 1
    finally:
        ws.transport.abort()


# Malformed cases: (name, kind, what to send, expected).
# kind "http": bytes sent instead of a request, expected = HTTP status.
# kind "ws": frames sent after a good handshake, expected = close code.
def malformed_cases(port):
    big = "X-Pad: " + "a" * 9000
    return [
        ("garbage instead of HTTP", "http", b"\x00\x01\x02garbage\xff\xfe\r\n\r\n", 400),
        ("oversized header", "http", upgrade_request(port, "/?username=m", extra=[big]), 431),
        ("version 8", "http", upgrade_request(port, "/?username=m", version="8"), 426),
        ("POST", "http", upgrade_request(port, "/?username=m", method="POST"), 405),
        ("unknown path", "http", upgrade_request(port, "/nope?username=m"), 404),
        ("no username", "http", upgrade_request(port, "/"), 400),
        ("bad key", "http", upgrade_request(port, "/?username=m", key="short"), 400),
        ("healthz", "http", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ("unmasked frame", "ws", frame(0x1, b"hi", mask=False), 1002),
        ("bad UTF-8", "ws", frame(0x1, b"ok \xc3\x28"), 1007),
        ("bad UTF-8 across fragments", "ws",
         frame(0x1, b"ab\xe2\x82", fin=False) + frame(0x0, b"\x28"), 1007),
        ("reserved opcode 3", "ws", frame(0x3, b"x"), 1002),
        ("reserved opcode 0xB", "ws", frame(0xB, b"x"), 1002),
        ("RSV1 set", "ws", frame(0x1, b"x", rsv=4), 1002),
        ("binary", "ws", frame(0x2, b"\x00\x01"), 1003),
        ("ping of 126 bytes", "ws", frame(0x9, b"p" * 126), 1002),
        ("fragmented ping", "ws", frame(0x9, b"p", fin=False), 1002),
        ("continuation first", "ws", frame(0x0, b"x"), 1002),
        ("text inside a fragmented message", "ws",
         frame(0x1, b"a", fin=False) + frame(0x1, b"b"), 1002),
        ("message over max_message", "ws", frame(0x1, b"", length=10 ** 6)[:10], 1009),
        ("close code 1005", "ws", frame(0x8, struct.pack("!H", 1005)), 1002),
        ("close code 999", "ws", frame(0x8, struct.pack("!H", 999)), 1002),
        ("close reason bad UTF-8", "ws", frame(0x8, struct.pack("!H", 1000) + b"\xff"), 1007),
        ("close 1000", "ws", frame(0x8, struct.pack("!H", 1000)), 1000),
        ("one-byte close payload", "ws", frame(0x8, b"\x03"), 1002),
    ]


async def read_http_status(reader, timeout=15):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    line = head.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else None


async def malformed_one(ports, k, c):
    port = ports[k % 2]
    cases = malformed_cases(port)
    roll = random.random()
    if roll < 0.08:
        await half_open(port, c, wait_for_server=(k % 4 == 0))
        return
    name, kind, data, expected = random.choice(cases)
    try:
        if kind == "http":
            reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 20)
            try:
                writer.write(data)
                await writer.drain()
                status = await read_http_status(reader)
            finally:
                writer.transport.abort()
            ok = status == expected
            got = status
        else:
            sock, rest = await raw_handshake(port, f"/?username=bad{k}&room=malformed")
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(data)
                await writer.drain()
                buf = rest
                got = "no close frame"
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    chunk = await asyncio.wait_for(reader.read(65536),
                                                   max(0.1, deadline - time.monotonic()))
                    if not chunk:
                        got = "EOF without close frame"
                        break
                    buf += chunk
                    frames, buf = parse_frames(buf)
                    close = [p for op, p in frames if op == 0x8]
                    if close:
                        got = close_code(close[0])
                        break
                if got == expected and expected != 1000:
                    writer.write(frame(0x8, struct.pack("!H", expected)))
            finally:
                writer.transport.abort()
            ok = got == expected
    except Exception as e:
        ok, got = False, f"{type(e).__name__}: {e}"[:60]
    if ok:
        c[f"malformed ok: {name}"] += 1
    else:
        c["malformed unexpected"] += 1
        c[f"malformed UNEXPECTED: {name}: expected {expected}, got {got}"] += 1


async def half_open(port, c, wait_for_server):
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 20)
    except Exception:
        c["malformed unexpected"] += 1
        c["malformed UNEXPECTED: half-open: connect failed"] += 1
        return
    try:
        writer.write(b"GET /?username=half HTTP/1.1\r\nHost: x\r\nUpgr")
        await writer.drain()
        if not wait_for_server:
            await asyncio.sleep(random.uniform(0.5, 5))
            c["malformed ok: half-open, abandoned by us"] += 1
            return
        # handshake_timeout is 10 s: the node must close it, answering nothing
        try:
            data = await asyncio.wait_for(reader.read(4096), 20)
        except asyncio.TimeoutError:
            data = None
        except OSError:
            data = b""
        if data == b"":
            c["malformed ok: half-open, closed by the node"] += 1
        else:
            c["malformed unexpected"] += 1
            c[f"malformed UNEXPECTED: half-open: got {data!r:.40}"] += 1
    finally:
        writer.transport.abort()


async def abuse_main(ports, stop, room_bytes, seed):
    random.seed(seed)
    c = Counts()
    quiet_loop_errors(asyncio.get_running_loop())

    async def slow_loop(i):
        for n in range(10000):
            if stop.is_set():
                return
            await slow_reader(ports, i + N_SLOW * n, room_bytes, c, stop)
            await asyncio.sleep(1)

    async def flood_loop():
        for n in range(10000):
            if stop.is_set():
                return
            await asyncio.wait_for(flooder(ports, n, c), 60)
            await asyncio.sleep(3)

    async def malformed_loop(j):
        for n in range(100000):
            if stop.is_set():
                return
            try:
                await asyncio.wait_for(malformed_one(ports, n * 3 + j, c), 60)
            except asyncio.TimeoutError:
                c["malformed unexpected"] += 1
                c["malformed UNEXPECTED: case over 60 s"] += 1
            await asyncio.sleep(random.uniform(0.1, 0.6))

    tasks = [slow_loop(i) for i in range(N_SLOW)] + [flood_loop()] + \
            [malformed_loop(j) for j in range(3)]
    await asyncio.gather(*tasks)
    return c


def child(fn, args, out_q, name):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        res = asyncio.run(fn(*args))
        out_q.put((name, dict(res), None))
    except BaseException:  # reported by the parent
        import traceback
        out_q.put((name, {}, traceback.format_exc()))


class LiveCount:
    """A process-shared int used as counter[0]."""

    def __init__(self, v):
        self.v = v

    def __getitem__(self, _):
        return self.v.value

    def __setitem__(self, _, x):
        self.v.value = x


# ---------------------------------------------------------------------------
# well-behaved clients and chatters (this process)


class Session:
    def __init__(self):
        self.recv = []        # ids (sender, n) of well-behaved messages, in order
        self.sent = []        # ns sent in this session
        self.close_code = None
        self.ended_by_us = False


class WellBehaved:
    def __init__(self, idx, port, room_bytes, c, observer):
        self.name = f"wb{idx:02d}"
        self.port = port
        self.sessions = []
        self.n = 0
        self.hellos = 0
        self.room_bytes = room_bytes
        self.c = c
        self.observer = observer
        self.ws = None
        self.session = None

    async def connect(self):
        url = f"ws://{HOST}:{self.port}/?username={self.name}&room=soak"
        for attempt in range(30):
            try:
                self.ws = await websockets.connect(url, open_timeout=20, close_timeout=10,
                                                   ping_interval=None, max_queue=None,
                                                   max_size=2 ** 20)
                break
            except Exception:
                self.c["wb: connect failed (unexpected)"] += 1
                await asyncio.sleep(1)
        else:
            raise RuntimeError(f"{self.name}: cannot connect")
        self.session = Session()
        self.sessions.append(self.session)
        self.reader = asyncio.create_task(self._read(self.ws, self.session))

    async def _read(self, ws, s):
        try:
            async for m in ws:
                if self.observer:
                    b = len(m.encode())
                    self.room_bytes.value += b + (2 if b < 126 else 4)
                user, _, text = m.partition(": ")
                if user.startswith("wb"):
                    if text.startswith("h"):
                        self.hellos += 1
                    else:
                        s.recv.append((user, int(text)))
        except websockets.ConnectionClosed:
            pass
        s.close_code = ws.close_code

    async def run(self, sending, stop_sending):
        """Sends a numbered message every 200 ms between the two events."""
        await sending.wait()
        await asyncio.sleep(random.uniform(0, 0.2))
        next_t = time.monotonic()
        for _ in range(10 ** 6):
            if stop_sending.is_set():
                return
            if self.reader.done():
                code = self.session.close_code
                if code == 1013:
                    self.c["wb: refused with 1013, reconnected"] += 1
                else:
                    self.c[f"wb: closed by the node with {code} (unexpected)"] += 1
                await asyncio.sleep(random.uniform(0.2, 1.0))
                await self.connect()
                continue
            try:
                await self.ws.send(str(self.n))
                self.session.sent.append(self.n)
                self.n += 1
            except websockets.ConnectionClosed:
                await asyncio.wait_for(self.reader, 10)
                continue
            next_t += 0.2
            await asyncio.sleep(max(0, next_t - time.monotonic()))
            if next_t < time.monotonic() - 1:
                next_t = time.monotonic()

    async def close(self):
        if self.reader.done():  # closed by the node at the very end
            return
        self.session.ended_by_us = True
        try:
            await asyncio.wait_for(self.ws.close(), 15)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.reader, 5)
        except Exception:
            self.reader.cancel()
        if self.session.close_code != 1000:
            self.c[f"wb: own close answered with {self.session.close_code} (unexpected)"] += 1


async def chatter(i, port, stop, c):
    url = f"ws://{HOST}:{port}/?username=chat{i}&room=soak"
    text = ("chatter %d " % i).ljust(CHAT_SIZE, "z")
    for _ in range(1000):
        if stop.is_set():
            return
        try:
            ws = await websockets.connect(url, open_timeout=20, close_timeout=10,
                                          ping_interval=None, max_queue=None, max_size=2 ** 20)
        except Exception:
            c["chatter: connect failed (unexpected)"] += 1
            await asyncio.sleep(1)
            continue

        async def drain():
            try:
                async for _m in ws:
                    pass
            except websockets.ConnectionClosed:
                pass

        t = asyncio.create_task(drain())
        try:
            while not stop.is_set() and not t.done():
                await ws.send(text)
                c["chatter: messages"] += 1
                await asyncio.sleep(CHAT_EVERY)
        except websockets.ConnectionClosed:
            pass
        try:
            if stop.is_set() and not t.done():
                await asyncio.wait_for(ws.close(), 15)
            await asyncio.wait_for(t, 15)
        except Exception:
            c["chatter: close timed out (unexpected)"] += 1
        if not (stop.is_set() and ws.close_code == 1000):
            if ws.close_code == 1013:
                c["chatter: refused 1013, reconnected"] += 1
            else:
                c[f"chatter: closed with {ws.close_code} (unexpected)"] += 1
            await asyncio.sleep(0.5)


async def redis_killer(rport, stop, c, t0):
    await asyncio.sleep(KILL_EVERY / 2)
    for _ in range(100000):
        if stop.is_set():
            return
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(HOST, rport), 5)
            w.write(resp("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            line = await asyncio.wait_for(r.readline(), 5)
            w.close()
            killed = int(line[1:]) if line.startswith(b":") else -1
            c["redis kills"] += 1
            c["redis connections killed"] += max(0, killed)
            if killed < 2:
                c[f"redis kill found {killed} connections (odd)"] += 1
        except Exception:
            c["redis kill failed (unexpected)"] += 1
        for _ in range(int(KILL_EVERY * 10)):
            if stop.is_set():
                return
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------
# the one order, as the Redis stream holds it

STREAM = "chatd:messages"


async def resp_read(reader):
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis closed the connection")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest
    if t == b"-":
        raise RuntimeError(rest.decode(errors="replace"))
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        return None if n < 0 else (await reader.readexactly(n + 2))[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [await resp_read(reader) for _ in range(n)]
    raise ValueError(f"bad RESP line {line!r}")


class StreamFollower:
    """Reads the stream as the nodes' consumers do (entries in stream order,
    a re-sent publish -- a mid whose seq is not above its publisher's last --
    skipped) and keeps the well-behaved messages of room soak: the reference
    order every well-behaved client must see a slice of. Polled every second,
    far ahead of MAXLEN trimming; reconnects after a Redis kill."""

    def __init__(self, rport):
        self.rport = rport
        self.last = None
        self.order = []
        self.seqs = {}
        self.conn = None
        self.c = Counts()

    async def poll(self):
        for _ in range(10000):
            try:
                if self.conn is None:
                    self.conn = await asyncio.wait_for(asyncio.open_connection(HOST, self.rport), 5)
                r, w = self.conn
                start = b"-" if self.last is None else b"(" + self.last
                w.write(resp("XRANGE", STREAM, start, "+", "COUNT", "2000"))
                rep = await asyncio.wait_for(resp_read(r), 10)
            except Exception:
                if self.conn:
                    self.conn[1].transport.abort()
                self.conn = None
                self.c["stream reads retried (connection killed)"] += 1
                return
            for eid, fields in rep:
                self.last = eid
                kv = dict(zip(fields[0::2], fields[1::2]))
                mid = kv.get(b"mid")
                if mid:
                    pub, _, seq = mid.rpartition(b".")
                    seq = int(seq)
                    if seq <= self.seqs.get(pub, -1):
                        self.c["stream entries skipped as re-sent"] += 1
                        continue
                    self.seqs[pub] = seq
                user, text = kv.get(b"user", b""), kv.get(b"text", b"")
                if kv.get(b"room") == b"soak" and user.startswith(b"wb") and text.isdigit():
                    self.order.append((user.decode(), int(text)))
            if len(rep) < 2000:
                return

    async def run(self, stop):
        for _ in range(10 ** 6):
            await self.poll()
            if stop.is_set():
                return
            await asyncio.sleep(1)


# ---------------------------------------------------------------------------
# the delivery check


def check_wb(wbs, ref):
    """Every well-behaved message sent (and not refused) reached every
    well-behaved client connected at the time exactly once, in one order.

    ref is the order of the stream (StreamFollower). Each session (one
    connection of one client) must be an unbroken slice of it: a gap is a
    miss, a step back an order violation. No client may see a message twice.
    Every message sent must be in ref, unless its session ended with 1013
    and it belongs to the undelivered tail of that session (refused)."""
    c = Counts()
    sessions = [s.recv for w in wbs for s in w.sessions]
    for w in wbs:
        cnt = collections.Counter(i for s in w.sessions for i in s.recv)
        c["duplicates"] += sum(v - 1 for v in cnt.values() if v > 1)
    if len(set(ref)) != len(ref):
        c["duplicates in the stream order"] += len(ref) - len(set(ref))
    stray = set(i for s in sessions for i in s) - set(ref)
    c["received but not in the stream"] += len(stray)
    ref = ref + sorted(stray)
    pos = {i: k for k, i in enumerate(ref)}
    for w in wbs:
        for si, s in enumerate(w.sessions):
            p = [pos[i] for i in s.recv]
            for a, b in zip(p, p[1:]):
                if b < a:
                    c["order violations"] += 1
                elif b > a + 1:
                    c["messages missed inside a session"] += b - a - 1
            if si == 0 and p and p[0] != 0:
                c["messages missed at the start"] += p[0]
            if s.ended_by_us and p and p[-1] != len(ref) - 1:
                c["messages missed at the end"] += len(ref) - 1 - p[-1]
    delivered = set(ref)
    for w in wbs:
        prev_max = -1
        for s in w.sessions:
            c["sent"] += len(s.sent)
            got = [(w.name, n) in delivered for n in s.sent]
            if s.close_code == 1013 and not s.ended_by_us:
                k = got.index(False) if False in got else len(got)
                # undelivered from the first refused one on: refused; a
                # message delivered after a refused one means a gap
                c["refused (1013)"] += got[k:].count(False)
                c["gap before a delivered message in a refused session"] += got[k:].count(True)
            else:
                c["lost"] += got.count(False)
            # per-sender order inside one connection
            mine = [pos[(w.name, n)] for n in s.sent if (w.name, n) in delivered]
            c["sender order violations"] += sum(1 for a, b in zip(mine, mine[1:]) if b < a)
            if mine and min(mine) < prev_max:  # across connections
                c["(info) reconnected sender's messages interleave its earlier connection's"] += 1
            if mine:
                prev_max = max(prev_max, max(mine))
    c["delivered (distinct)"] = len(ref)
    c["receiving sessions"] = len(sessions)
    return c


# ---------------------------------------------------------------------------


def rss_warmup():
    return min(60.0, DURATION / 4)


def rss_verdict(samples, names):
    """samples: [(t, [mib per node])]. Past the warm-up (rss_warmup()), flat
    = max of the last third <= max of the first third * RSS_FACTOR +
    RSS_SLACK_MIB, per node."""
    out, ok = [], True
    samples = [s for s in samples if s[0] >= rss_warmup()]
    n = len(samples)
    if n < 3:
        return False, ["too few RSS samples"]
    third = max(1, n // 3)
    for j, name in enumerate(names):
        first = max(s[1][j] for s in samples[:third])
        last = max(s[1][j] for s in samples[-third:])
        limit = first * RSS_FACTOR + RSS_SLACK_MIB
        flat = last <= limit
        ok &= flat
        out.append(f"{name}: first-third max {first:.1f} MiB, last-third max {last:.1f} MiB, "
                   f"limit {limit:.1f} MiB -> {'flat' if flat else 'GROWING'}")
    return ok, out


async def main_async(nodes, rport, ports, ctx_objs, results):
    stop_load, stop_q, room_bytes, live_churn = ctx_objs
    c = Counts()
    loop = asyncio.get_running_loop()
    quiet_loop_errors(loop)
    t0 = time.monotonic()
    follower = StreamFollower(rport)
    stop_follow = asyncio.Event()
    follow = asyncio.create_task(follower.run(stop_follow))
    wbs = [WellBehaved(i, ports[i % 2], room_bytes, c, observer=(i == 0)) for i in range(N_WB)]
    await asyncio.gather(*(w.connect() for w in wbs))
    # both nodes deliver through Redis: a hello from wb00 until all saw one
    for k in range(300):
        if all(w.hellos for w in wbs):
            break
        await wbs[0].ws.send(f"h{k}")
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("well-behaved clients never all saw a hello: nodes not delivering")
    say(f"soak: nodes deliver through Redis ({time.monotonic() - t0:.1f}s); load for "
        f"{DURATION:.0f}s")
    results["go"].set()

    sending, stop_sending, stop_chat = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sending.set()
    stop_kill = asyncio.Event()
    tasks = [asyncio.create_task(w.run(sending, stop_sending)) for w in wbs]
    chat = [asyncio.create_task(chatter(i, ports[i % 2], stop_chat, c)) for i in range(N_CHATTERS)]
    killer = asyncio.create_task(redis_killer(rport, stop_kill, c, t0))

    samples = results["rss"]
    start = time.monotonic()
    say(f"{'t(s)':>6} {'node1 MiB':>10} {'node2 MiB':>10}   (churn open, wb sent)")
    for k in range(100000):
        el = time.monotonic() - start
        mib = [rss_mib(n.pid) for n in nodes]
        samples.append((el, mib))
        say(f"{el:6.0f} {mib[0]:10.1f} {mib[1]:10.1f}   ({live_churn.value}, "
            f"{sum(w.n for w in wbs)})")
        for n in nodes:
            if not n.alive():
                raise RuntimeError(f"{n.name} died with {n.proc.returncode} at {el:.0f}s")
        if el >= DURATION:
            break
        await asyncio.sleep(max(0.0, min(RSS_EVERY * (k + 1), DURATION) - (time.monotonic() - start)))

    stop_load.set()
    stop_kill.set()
    stop_chat.set()
    stop_sending.set()
    await asyncio.wait_for(asyncio.gather(*tasks, killer), 60)
    await asyncio.wait_for(asyncio.gather(*chat, return_exceptions=True), 60)
    # let the last messages arrive: until every open session has every message
    # sent, or 30 s
    last = [(w.name, w.session.sent[-1]) for w in wbs if w.session.sent]
    for _ in range(60):
        if all(set(last) <= set(w.session.recv[-3 * N_WB:]) for w in wbs if not w.reader.done()):
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # late duplicates
    await asyncio.gather(*(w.close() for w in wbs))
    stop_follow.set()
    await asyncio.wait_for(follow, 60)
    for _ in range(20):  # a last read, after everything was sent
        await follower.poll()
        if follower.conn is not None:
            break
        await asyncio.sleep(0.5)
    results["wb"] = check_wb(wbs, follower.order)
    c.update(follower.c)
    results["main"] = c


def main():
    if not os.access(CHATD_BIN, os.X_OK):
        say(f"soak: {CHATD_BIN} missing: run `make SAN=asan chatd` (make soak does)")
        return 2
    tmp = tempfile.mkdtemp(prefix="chatd-soak-")
    procs, children = [], []
    failures = []
    results = {"rss": []}
    interrupted = []

    def on_signal(sig, _frame):
        interrupted.append(sig)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ok = False
    node_report = []
    child_counts = {}
    try:
        redis, rport, nodes = start_servers(tmp, procs)
        ports = [n.port for n in nodes]
        say(f"soak: redis :{rport} (pid {redis.pid}), node1 :{ports[0]} (pid {nodes[0].pid}), "
            f"node2 :{ports[1]} (pid {nodes[1].pid}); logs in {tmp}")
        ctx = mp.get_context("fork")
        stop_load = ctx.Event()
        go = ctx.Event()
        results["go"] = go
        room_bytes = ctx.Value("q", 0, lock=False)
        live_churn = ctx.Value("i", 0, lock=False)
        out_q = ctx.Queue()

        def delayed(fn):
            async def run(*a):
                for _ in range(1200):
                    if go.is_set():
                        break
                    await asyncio.sleep(0.05)
                return await fn(*a)
            return run

        children.append(ctx.Process(target=child, daemon=True, args=(
            delayed(churn_main), (ports, stop_load, LiveCount(live_churn), 1), out_q, "churn")))
        children.append(ctx.Process(target=child, daemon=True, args=(
            delayed(abuse_main), (ports, stop_load, room_bytes, 2), out_q, "abuse")))
        for p in children:
            p.start()

        async def top():
            await asyncio.wait_for(
                main_async(nodes, rport, ports, (stop_load, None, room_bytes, live_churn), results),
                DURATION + 300)
        asyncio.run(top())

        # the children stop within their iteration bounds (90 s at most)
        deadline = time.monotonic() + 120
        while len(child_counts) < len(children) and time.monotonic() < deadline:
            try:
                name, cnt, err = out_q.get(timeout=1)
            except Exception:
                continue
            child_counts[name] = cnt
            if err:
                failures.append(f"{name} process failed:\n{err}")
        for name in ("churn", "abuse"):
            if name not in child_counts:
                failures.append(f"{name} process did not report within 120 s of the end")

        # stop the nodes: SIGTERM, exit 0, no sanitizer report
        for n in nodes:
            n.proc.send_signal(signal.SIGTERM)
        for n in nodes:
            rc = n.stop(timeout=60)
            log = n.log()
            reps = [ln for ln in log.splitlines() if any(m in ln for m in SAN_MARKS)]
            node_report.append((n.name, rc, len(reps)))
            if rc != 0:
                failures.append(f"{n.name} exited with {rc} after SIGTERM")
            if reps:
                failures.append(f"{n.name} log has a sanitizer report: {reps[0]}")
            if rc != 0 or reps:
                failures.append(f"--- {n.name} log (last 80 lines) ---\n"
                                + "\n".join(log.splitlines()[-80:]))
        ok = True
    except KeyboardInterrupt:
        failures.append("interrupted" + (f" by signal {interrupted[0]}" if interrupted else ""))
    except Exception as e:
        import traceback
        failures.append(f"soak aborted: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in children:
            if p.is_alive():
                p.terminate()
            p.join(10)
        for pr in reversed(procs):  # nodes first, then redis
            if pr.alive():
                pr.stop(timeout=30)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    # -- report -------------------------------------------------------------
    say("\n=== RSS (VmRSS, MiB)")
    for t, mib in results["rss"]:
        say(f"{t:6.0f}s " + " ".join(f"node{j + 1} {m:7.1f}" for j, m in enumerate(mib)))
    say(f"rule: samples from {rss_warmup():.0f}s on (warm-up: min(60s, run/4)) split in thirds; "
        f"flat when, per node, max of the last third <= {RSS_FACTOR:.2f} x max of the first "
        f"third + {RSS_SLACK_MIB:.0f} MiB")
    if ok:
        flat, lines = rss_verdict(results["rss"], ["node1", "node2"])
        for ln in lines:
            say("  " + ln)
        if not flat:
            failures.append("RSS not flat")

    wb = results.get("wb", Counts())
    main_c = results.get("main", Counts())
    bad = []
    rows = []

    def section(title, cnt, unexpected_keys=()):
        rows.append(("", ""))
        rows.append((f"[{title}]", ""))
        for k in sorted(cnt):
            rows.append((k, cnt[k]))
            if "unexpected" in k.lower() or "UNEXPECTED" in k or k in unexpected_keys:
                if cnt[k]:
                    bad.append(f"{title}: {k} = {cnt[k]}")

    section("well-behaved delivery", wb,
            ("duplicates", "lost", "order violations", "duplicates in the stream order",
             "received but not in the stream",
             "messages missed inside a session", "messages missed at the start",
             "messages missed at the end", "sender order violations",
             "gap before a delivered message in a refused session"))
    section("this process: wb, chatters, redis kills", main_c)
    churn = child_counts.get("churn", {})
    section("churn", churn)
    abuse = child_counts.get("abuse", {})
    section("abuse: slow readers, flooders, malformed", abuse)
    rows.append(("", ""))
    rows.append(("[nodes]", ""))
    for name, rc, nrep in node_report:
        rows.append((f"{name} exit code", rc))
        rows.append((f"{name} sanitizer reports", nrep))

    if ok:
        if wb.get("sent", 0) == 0 or wb.get("delivered (distinct)", 0) == 0:
            bad.append("no well-behaved messages went through")
        if DURATION >= 60:
            if abuse.get("slow: cut with 1008", 0) == 0:
                bad.append("no slow reader was cut with 1008")
            if abuse.get("flood: closed with 1008", 0) == 0:
                bad.append("no flooder was closed with 1008")
            if main_c.get("redis kills", 0) == 0:
                bad.append("no Redis kill happened")
            if churn.get("connected", 0) < min(CHURN_POOL, 100):
                bad.append("churn made too few connections")

    say("\n=== summary")
    w = max(len(str(k)) for k, _ in rows) if rows else 10
    for k, v in rows:
        say(f"  {k:<{w}}  {v}" if k else "")
    failures += bad
    if failures:
        say("\n=== FAILED")
        for f in failures:
            say("  - " + f)
        say(f"logs kept in {tmp}")
        return 1
    say("\n=== PASSED: no crash, no sanitizer report, nothing lost, RSS flat")
    if os.environ.get("SOAK_KEEP"):
        say(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
