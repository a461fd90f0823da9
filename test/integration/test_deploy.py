"""Issue 14: the deployment we document is the one we test. haproxy runs
conf/haproxy.cfg itself -- the test only sets the addresses it reads from
the environment -- in front of two chatd nodes that share one
redis-server; all three are started here on free loopback ports and
stopped by pid.

- Clients through the balancer chat: text clients, chatd.v1 clients and
  wscat (the README's demo client) land on both nodes, and every message
  reaches every client in one order.
- A rolling restart: a node stopped with SIGTERM fails /readyz, haproxy's
  check marks it down (within drain_delay, before any client is closed),
  its clients are closed with 1001 in batches over drain_time, reconnect through haproxy in one attempt (no 503 reaches
  them), land on the other node and recover with since + epoch while
  messages flow; nothing acknowledged is lost or doubled. The node starts
  again and new clients reach it.
- chatd's access log names the client, not haproxy: X-Forwarded-For (the
  file as it is) and the PROXY protocol (its commented line taken in).

Python clients connect from 127.0.0.5 and .6, haproxy reaches the nodes
from 127.0.0.1, which is all trusted_proxies lists. haproxy chroots and
drops to its own user as Debian's config does, so this needs root (as
make test's install step does)."""

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import websockets

from checker import nodes_delivering
from conftest import (
    CHATD_URL, HOST, REPO, arun, free_port, http_exchange, metrics, port_open, recv_text,
    wait_until, ws_connect,
)
from jsonclient import Closed, JsonClient, check_joined, check_msg, close_all, parse_id
from test_recovery import Flow, verify

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own nodes, Redis and haproxy"),
    pytest.mark.skipif(os.geteuid() != 0, reason="conf/haproxy.cfg chroots and changes user: needs root"),
]

HAPROXY_CFG = os.path.join(REPO, "conf", "haproxy.cfg")
WSCAT = os.path.join(REPO, "test", "tools", "node_modules", ".bin", "wscat")
CLIENT_IP = "127.0.0.5"  # where the Python clients connect from
DRAIN_TIME = 2
DRAIN_DELAY = 3  # > haproxy's fall 2 x inter 1s, as the README advises


def redis_node(chatd, r, name, **kw):
    conf = dict(broker="redis", redis_url=r.url, workers=2, trusted_proxies=HOST,
                drain_delay=f"{DRAIN_DELAY}s", drain_time=f"{DRAIN_TIME}s")
    conf.update(kw)
    return chatd(name=name, **conf)


async def in_thread(fn, *a):
    """A blocking call (a node's start or stop, an HTTP probe) off the event
    loop, so the clients go on reading meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *a)


# --------------------------------------------------------------------------
# haproxy


class Haproxy:
    """haproxy -db -f conf/haproxy.cfg (or cfg) with the addresses of this
    test in its environment; stderr (its log) into haproxy.log."""

    def __init__(self, tmp_path, nodes, cfg=HAPROXY_CFG):
        self.cfg = cfg
        self.nodes = nodes
        self.port = free_port()
        self.admin = str(tmp_path / "ha.sock")
        assert len(self.admin) < 100, f"unix socket path too long: {self.admin}"
        self.log_path = tmp_path / "haproxy.log"
        self.env = dict(os.environ, CHATD_LB_LISTEN=f"{HOST}:{self.port}", CHATD_LB_LOG="stderr",
                        CHATD_LB_ADMIN=self.admin)
        for k, n in enumerate(nodes, 1):
            self.env[f"CHATD_NODE{k}"] = f"{HOST}:{n.port}"
        self.proc = None

    def start(self, timeout=10):
        exe = shutil.which("haproxy") or pytest.fail("haproxy is not installed: third_party/install-deps.sh test")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([exe, "-db", "-f", self.cfg], stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log, env=self.env)
        deadline = time.monotonic() + timeout
        while not (port_open(self.port) and os.path.exists(self.admin)):
            if self.proc.poll() is not None:
                pytest.fail(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"haproxy not listening within {timeout}s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # hard stop: its tunnels go at once
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.proc = None

    def log(self):
        return self.log_path.read_text(errors="replace")

    def command(self, cmd):
        """One command on the runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.admin)
            s.sendall(cmd.encode() + b"\n")
            data = b""
            for _ in range(10000):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return data.decode()

    def servers(self):
        """{server name: its row of `show stat`} of backend chatd."""
        lines = self.command("show stat").splitlines()
        head = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(head, ln.split(","))) for ln in lines[1:] if ln]
        return {r["svname"]: r for r in rows if r["pxname"] == "chatd" and r["svname"] not in ("BACKEND",)}

    def wait_status(self, server, status, timeout=10):
        """Waits until haproxy's check says status (UP, DOWN) of server;
        returns its row."""
        def now():
            row = self.servers()[server]
            return row if row["status"] == status else None
        return wait_until(now, timeout, 0.05, f"haproxy to mark {server} {status}")

    def url(self, user, room=None, **params):
        q = [("username", user), ("room", room)] + list(params.items())
        return f"ws://{HOST}:{self.port}/?" + "&".join(f"{k}={v}" for k, v in q if v is not None)


@pytest.fixture
def haproxy(tmp_path):
    """Factory: haproxy(nodes, cfg=...) starts haproxy in front of nodes
    (server chatd1 is nodes[0], ...); stopped at teardown, even on
    failure."""
    started = []

    def make(nodes, cfg=HAPROXY_CFG):
        h = Haproxy(tmp_path, nodes, cfg)
        started.append(h)
        return h.start()

    try:
        yield make
    finally:
        for h in started:
            h.stop()


def opened(node, user):
    """The addresses of user's `open` lines in node's access log."""
    return re.findall(rf"conn \d+ (\S+) {re.escape(user)}: open ", node.log())


def home(nodes, user, timeout=5):
    """The node whose access log has user's newest connection: the one with
    more `open` lines than before (counted in `before`, per node)."""
    return wait_until(lambda: [n for n in nodes if opened(n, user)], timeout, what=f"{user}'s open line")


# --------------------------------------------------------------------------
# wscat


class Wscat:
    """wscat --connect URL driven through a pipe, as a person would type:
    each line written is a message, each line it prints one received (it
    prefixes a prompt "> " when stdout is not a terminal)."""

    def __init__(self, url, log_path):
        if not os.access(WSCAT, os.X_OK):
            pytest.fail(f"{WSCAT} is missing: third_party/install-deps.sh test (npm ci in test/tools)")
        self._err = open(log_path, "ab")
        self.proc = subprocess.Popen([WSCAT, "--connect", url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for _ in range(100000):
            raw = self.proc.stdout.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            while line.startswith("> "):
                line = line[2:]
            self.lines.append(line)

    def say(self, text):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self):
        """End of input: wscat closes the connection and exits."""
        if self.proc.stdin:
            self.proc.stdin.close()
            self.proc.stdin = None
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        self._err.close()
        return self.proc.returncode


# --------------------------------------------------------------------------
# the tests


def test_chat_through_haproxy_text_chatd_v1_and_wscat(redis, chatd, haproxy, tmp_path):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")
    lb = haproxy([a, b])
    local = dict(local_addr=(CLIENT_IP, 0))

    async def main():
        await nodes_delivering([a, b])
        lb.wait_status("chatd1", "UP")
        lb.wait_status("chatd2", "UP")
        # what the file keeps from the world, and what it lets through
        assert http_exchange(lb.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").status == 404
        assert http_exchange(lb.port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").status == 200

        texts, jsons = [], []
        for k in range(3):
            texts.append(await ws_connect(lb.url(f"t{k}"), **local))
            c = await JsonClient.connect(lb.url(f"j{k}", "lobby"), f"j{k}", **local)
            check_joined(await c.recv(10), "lobby")
            jsons.append(c)
        users = [f"t{k}" for k in range(3)] + [f"j{k}" for k in range(3)]
        where = {u: home([a, b], u) for u in users}
        assert {n.name for ns in where.values() for n in ns} == {"a", "b"}, \
            f"leastconn put every client on one node: { {u: [n.name for n in ns] for u, ns in where.items()} }"
        assert metrics(a.port)["chatd_clients"] >= 2 and metrics(b.port)["chatd_clients"] >= 2
        for u, ns in where.items():  # X-Forwarded-For from haproxy, trusted: the client's address
            assert sum(opened(n, u) == [CLIENT_IP] for n in ns) == 1, \
                f"{u}: open lines {[(n.name, opened(n, u)) for n in (a, b)]}; want one with {CLIENT_IP}"

        # wscat reads its input only once connected, and says nothing when
        # it is: it is in once a message sent after its open line reaches it
        w = Wscat(lb.url("wscat"), tmp_path / "wscat.err")
        home([a, b], "wscat")
        await texts[0].send("t0 sees wscat in")
        wait_until(lambda: "t0: t0 sees wscat in" in w.lines, 10, what=f"wscat's first line ({w.lines})")
        w.say("hello from wscat")
        sent = [("t0", "t0 sees wscat in"), ("wscat", "hello from wscat")]

        async def text_sender(k, ws):
            for m in range(5):
                await ws.send(f"t{k}-{m}")
                await asyncio.sleep(0.01)

        async def json_sender(k, c):
            for m in range(5):
                await c.req("send", room="lobby", text=f"j{k}-{m}", ref=f"r{m}")
                await asyncio.sleep(0.01)

        senders = [text_sender(k, ws) for k, ws in enumerate(texts)]
        senders += [json_sender(k, c) for k, c in enumerate(jsons)]
        t = asyncio.ensure_future(asyncio.gather(*senders))
        await asyncio.sleep(0.03)
        w.say("wscat again")
        await t
        sent += [(f"t{k}", f"t{k}-{m}") for k in range(3) for m in range(5)]
        sent += [(f"j{k}", f"j{k}-{m}") for k in range(3) for m in range(5)]
        sent.append(("wscat", "wscat again"))
        n = len(sent)

        seen = {}
        for k, ws in enumerate(texts):
            got = [await recv_text(ws, 10) for _ in range(n)]
            seen[f"t{k}"] = [tuple(g.split(": ", 1)) for g in got]
        for k, c in enumerate(jsons):
            frames = [check_msg(await c.expect("msg", room="lobby", timeout=10), "lobby") for _ in range(n)]
            ids = [parse_id(f["id"]) for f in frames]
            assert ids == sorted(set(ids)), f"j{k}: ids out of order or repeated: {ids}"
            seen[f"j{k}"] = [(f["user"], f["text"]) for f in frames]
            acks = c.take("ack")
            assert len(acks) == 5 and not c.take("error"), f"j{k}: acks {acks}, log {c.log[-5:]}"
        wait_until(lambda: len(w.lines) >= n, 10, what=f"wscat to print {n} lines (has {w.lines})")
        seen["wscat"] = [tuple(g.split(": ", 1)) for g in w.lines]
        assert w.stop() == 0
        assert sorted(seen["t0"]) == sorted(sent), f"t0 got {seen['t0']}, sent {sent}"
        for who, got in seen.items():
            assert got == seen["t0"], f"{who} saw another order than t0:\n{got}\n{seen['t0']}"
        for ws in texts:
            await ws.close()
        await close_all(jsons)
        # haproxy logs a tunnel when it ends
        log = wait_until(lambda: (lambda t: t if t.count(" 101 ") >= 7 else None)(lb.log()), 5,
                         what="haproxy's log lines of the 7 clients")
        assert "username=" not in log, f"haproxy logs the query string:\n{log[-800:]}"

    arun(main(), 60)


class Member:
    """A chatd.v1 user in room through the balancer. follow() reads, and
    when its node closes it, reconnects through haproxy once -- no retry:
    the balancer must find a node -- with since + epoch, and must get
    recovered:true. `got` is every msg over all its connections."""

    def __init__(self, lb, name, room):
        self.lb, self.name, self.room = lb, name, room
        self.c = None
        self.got = []
        self.since = self.epoch = None
        self.closes = []  # (code, monotonic time)
        self.joins = []

    async def connect(self):
        params = {} if self.since is None else dict(since=self.since, epoch=self.epoch)
        try:
            self.c = await JsonClient.connect(self.lb.url(self.name, self.room, **params), self.name,
                                              local_addr=(CLIENT_IP, 0))
        except websockets.InvalidStatusCode as e:
            raise AssertionError(f"{self.name}: haproxy answered {e.status_code} to a reconnect "
                                 f"(after {len(self.joins)} joins)") from None
        j = check_joined(await self.c.recv(10), self.room)
        if self.since is not None:
            assert j["recovered"] is True and j["epoch"] == self.epoch, \
                f"{self.name} rejoined with since={self.since} epoch={self.epoch}: {j}"
        self.epoch = j["epoch"]
        self.joins.append(j)

    def _take(self):
        for f in self.c.take("msg", room=self.room):
            check_msg(f, self.room)
            self.got.append((f["id"], f["text"]))
            self.since = f["id"]

    async def follow(self, until):
        """Reads (reconnecting when closed) until until() is true."""
        for _ in range(100000):
            try:
                await self.c.drain(0.05)
            except Closed as e:
                self.closes.append((e.code, time.monotonic()))
                self._take()
                await self.connect()
            self._take()
            if until():
                return
        raise AssertionError("follow loop bound")

    async def read_until(self, last_id, timeout=15):
        deadline = time.monotonic() + timeout
        while last_id not in {i for i, _ in self.got}:
            assert time.monotonic() < deadline, f"{self.name}: {last_id} not received; last {self.got[-3:]}"
            await self.follow(lambda: True)


def test_rolling_restart_behind_haproxy(redis, chatd, haproxy):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")
    lb = haproxy([a, b])
    server = {a.name: "chatd1", b.name: "chatd2"}

    async def main():
        await nodes_delivering([a, b])
        lb.wait_status("chatd1", "UP")
        lb.wait_status("chatd2", "UP")
        s = await JsonClient.connect(lb.url("sender", "roll"), "sender", local_addr=(CLIENT_IP, 0))
        check_joined(await s.recv(10), "roll")
        (stay,) = home([a, b], "sender")
        (go,) = [n for n in (a, b) if n is not stay]  # the node to restart: not the sender's
        members = []
        for k in range(9):
            m = Member(lb, f"m{k}", "roll")
            await m.connect()
            members.append(m)
        on = {m.name: home([a, b], m.name)[0] for m in members}
        movers = [m for m in members if on[m.name] is go]
        stayers = [m for m in members if on[m.name] is stay]
        assert len(movers) >= 3 and stayers, f"leastconn: {[(k, n.name) for k, n in on.items()]}"

        flow = Flow(s, "roll", 50)
        flow.start()
        await flow.wait_acks_after(10)
        done = False
        readers = [asyncio.ensure_future(m.follow(lambda: done)) for m in members]

        # SIGTERM: /readyz fails at once, then haproxy's check marks the node down
        t0 = time.monotonic()
        stopping = asyncio.ensure_future(in_thread(go.stop))
        probe = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
        for _ in range(200):
            rsp = await in_thread(http_exchange, go.port, probe)
            if rsp.status == 503:
                break
            await asyncio.sleep(0.01)
        assert rsp.status == 503 and b"draining" in rsp.body, rsp
        row = await in_thread(lb.wait_status, server[go.name], "DOWN", 5)
        assert row["check_status"] == "L7STS" and row["check_code"] == "503", \
            f"haproxy marked {go.name} down for another reason than its /readyz: {row}"
        t_down = time.monotonic()

        rc, problems = await stopping
        failed = [t.exception() for t in readers if t.done() and t.exception()]
        assert not failed, failed[0]
        assert rc == 0 and not problems, (rc, problems, go.log()[-2000:])
        t_exit = time.monotonic() - t0
        assert all(m.closes for m in movers), [(m.name, m.closes) for m in movers]
        codes = {c for m in movers for c, _ in m.closes}
        assert codes == {1001}, f"the draining node closed its clients with {codes}"
        times = sorted(t for m in movers for _, t in m.closes)
        # drain_delay: no client is closed before haproxy took the node out,
        # so none of them can reconnect to it
        assert times[0] > t_down, f"a client closed {t_down - times[0]:.2f} s before haproxy marked the node down"
        assert times[-1] - times[0] >= DRAIN_TIME / 4, \
            f"closes not spread over drain_time: {[round(t - t0, 2) for t in times]}"
        for m in movers:  # each came back through haproxy, to the other node
            assert len(opened(stay, m.name)) == 1 and len(m.joins) == 2, (m.name, m.joins)
        assert not any(m.closes for m in stayers)

        # the node starts again; haproxy's check brings it back; new clients reach it
        await in_thread(go.start)
        await in_thread(lb.wait_status, server[go.name], "UP", 10)
        fresh = []
        for k in range(2):
            m = Member(lb, f"n{k}", "roll")
            await m.connect()
            fresh.append(m)
            assert len(opened(go, m.name)) == 1, f"{m.name} did not reach the restarted node"
        readers += [asyncio.ensure_future(m.follow(lambda: done)) for m in fresh]
        n = len(flow.acks)
        await flow.wait_acks_after(n + 10)

        await flow.stop()
        done = True
        await asyncio.gather(*readers)
        for m in members + fresh:
            await m.read_until(flow.last_id())
            verify(m, flow, "a rolling restart behind haproxy")
        stats = lb.servers()[server[go.name]]
        print(f"\nSIGTERM to exit {t_exit:.2f}s; closes at "
              f"{[round(t - t0, 2) for t in times]}s; haproxy retries {stats['wretr']}, "
              f"redispatches {stats['wredis']} on {server[go.name]}; {len(flow.acks)} messages")
        await close_all([s] + [m.c for m in members + fresh])

    arun(main(), 90)


def test_proxy_protocol_variant_names_the_client(chatd, haproxy, tmp_path):
    """The file's PROXY protocol line taken in (the only change), nodes
    with proxy_protocol = on: the checks pass through it, and the access
    log has the client's address and port. (Local brokers: the nodes'
    /readyz is behind the PROXY header too, out of the fixture's reach.)"""
    text = open(HAPROXY_CFG).read()
    line = "    # default-server send-proxy-v2\n"
    assert text.count(line) == 1, "conf/haproxy.cfg lost its PROXY protocol line"
    cfg = tmp_path / "haproxy-proxy.cfg"
    cfg.write_text(text.replace(line, line.replace("# ", "")))
    a, b = (chatd(name=n, workers=2, trusted_proxies=HOST, proxy_protocol="on") for n in "ab")
    lb = haproxy([a, b], str(cfg))
    src = "127.0.0.6"

    async def main():
        for s in ("chatd1", "chatd2"):  # down first until the checks speak PROXY
            row = lb.wait_status(s, "UP")
            assert row["check_status"] == "L7OK", row
        clients = []
        for u in ("p1", "p2"):
            c = await JsonClient.connect(lb.url(u, "pp"), u, local_addr=(src, 0))
            check_joined(await c.recv(10), "pp")
            clients.append(c)
        where = {u: home([a, b], u) for u in ("p1", "p2")}
        assert {ns[0].name for ns in where.values()} == {"a", "b"}, where
        for u, (n,) in where.items():
            (addr,) = opened(n, u)
            assert re.fullmatch(rf"{re.escape(src)}:\d+", addr), f"{u} logged as {addr} by {n.name}"
        mid = await clients[0].say("pp", "over the PROXY protocol")
        f = await clients[0].expect("msg", room="pp", id=mid, timeout=10)
        assert f["text"] == "over the PROXY protocol"
        await close_all(clients)

    arun(main(), 60)
