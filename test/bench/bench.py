#!/usr/bin/python3
"""make bench: chatd against the Node.js ws + ioredis peer and the nginx +
nchan peer, same scenarios, same load generator (build/chatbench), same run.

Starts its own redis-server and server nodes on loopback, samples every
server's RSS and CPU time from /proc, and appends a dated table to
BENCHMARKS.md (with the commit and the machine) plus a latency plot.
Stops everything it started, also when interrupted.

  test/bench/bench.py [--scenarios 1,2,3,4,5,6,7,8,9,big,shards] [--servers chatd,node,nchan]
                      [--quick]

Scenarios 1-5 are those of issue 5 (5: reconnect storm after SIGKILL of one
node); 6 is the figure of issue 3: messages per second published on node A
and delivered on node B through Redis, 1,000 clients in one room, latency
from send on A to receipt on B; 7 is issue 16's permessage-deflate: one
chatd node, 1,000 clients in one room, chat text and a JSON-ish message,
every client with and without compression (chatd only), bytes on the wire
and server CPU per delivery. 8 (issue 16, chatd only) is a wss burst: 5,000
clients at once, time until all are upgraded and each one's handshake time;
9 is scenario 2 over wss on one node, server CPU per delivery. "big" is
issue 16's 150,000 clients on 8 nodes (--big-clients, --big-nodes,
--big-rate), loopback source addresses, all established and held idle, then
one message per second to all of them in one room: server memory per
connection and the time to reach everyone. "shards" is issue 14's figure
(chatd only): messages per second through one Redis with one shard, then
through a Redis Cluster of three masters with six shards, six rooms of 4
clients each with its own chatbench (senders on node A, receivers on node
B), the CPU of every process and of chatd's consumer thread and workers,
two runs, each configuration after waiting for a quiet machine.

The peers: test/bench/peer/server.js (Node) and test/bench/peer/nchan.conf
(nginx + nchan, one nginx per node, nchan_pubsub over WebSocket, every node
on the bench's Redis). nchan takes part in scenarios 1, 2, 3 and big; 4-9
need what it does not offer in this setup (a chat wss listener, a node to
SIGKILL with its worker, chatd's stream, permessage-deflate measured on
chatd) and skip it.

--quick scales the scenarios down (10k clients instead of 60k, shorter
holds, 4k clients in the storm, two rates in scenario 6) for a run that fits
in a few minutes.
"""
import argparse
import datetime
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHATD = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")
CHATBENCH = os.environ.get("CHATBENCH_BIN") or os.path.join(REPO, "build", "chatbench")
PEER = os.path.join(REPO, "test", "bench", "peer", "server.js")
NCHAN_CONF = os.path.join(REPO, "test", "bench", "peer", "nchan.conf")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SRC_IPS = "127.0.0.2-127.0.0.60"

procs = []  # (Popen, name): everything we started, stopped at exit
CHATD_EXTRA = []  # config lines every chatd node gets (--chatd-conf)


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair(lo=20000, hi=29999):
    """A port P with P + 10000 free too (a Redis Cluster node's bus), below
    the kernel's ephemeral range so that no outgoing connection takes them."""
    for _ in range(2000):
        p = random.randint(lo, hi)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


# Where chatd puts a room and a shard's keys (as redis_cluster.c and
# test/integration/redisfarm.py): FNV-1a of the room name mod shards; shard
# k's keys carry the tag "<k>-<j>" of the smallest j whose CRC16 slot lies in
# the k-th part of the slot space.

def _crc16(data):
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def keyslot(key):
    key = key.encode()
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return _crc16(key) % 16384


def shard_of(room, shards):
    h = 0x811C9DC5
    for b in room.encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h % shards


def shard_tag(k, shards):
    lo, hi = k * 16384 // shards, (k + 1) * 16384 // shards
    for j in range(1_000_000):
        if lo <= keyslot(f"{k}-{j}") < hi:
            return f"{k}-{j}"
    raise RuntimeError(f"no tag for shard {k} of {shards}")


def one_room_per_shard(shards, prefix="room"):
    """["<prefix>-<i>", ...]: the first room of each shard, shard 0 first."""
    out = {}
    for i in range(100_000):
        out.setdefault(shard_of(f"{prefix}-{i}", shards), f"{prefix}-{i}")
        if len(out) == shards:
            return [out[k] for k in range(shards)]
    raise RuntimeError("one_room_per_shard loop bound")


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def start(cmd, name, env=None, logpath=None):
    out = open(logpath, "ab") if logpath else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                         env=dict(os.environ, **(env or {})))
    procs.append((p, name))
    return p


def stop(p, timeout=15):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
    procs[:] = [(q, n) for q, n in procs if q is not p]


def stop_all(*_):
    # Newest first: the load generator before the servers it talks to,
    # the servers before their Redis.
    for p, _ in reversed(list(procs)):
        stop(p, 10)


def _resp(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp(f) for _ in range(n)]
    raise RuntimeError(f"bad RESP line {line!r}")


def redis_cmd(port, *args):
    """One command to the bench's own redis-server, RESP2, no client library."""
    req = b"*%d\r\n" % len(args)
    for a in args:
        a = str(a).encode()
        req += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        with s.makefile("rb") as f:
            return _resp(f)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def machine_busy_s():
    """CPU time the whole machine spent busy (all cores, /proc/stat: user,
    nice, system, irq, softirq; this kernel charges softirq ticks to the
    task they interrupt as well, so our processes' times include theirs)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK


def children(pid):
    """Pids whose parent is pid (an nginx master's workers)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except FileNotFoundError:
        return 0.0


class Cluster:
    """A redis-server and `nodes` servers of one kind sharing it; or, with
    masters > 0 (chatd only), a Redis Cluster of that many masters without
    replicas, made as test/integration/redisfarm.py makes it, and chatd
    nodes with `shards` streams spread over it."""

    def __init__(self, kind, nodes, workdir, tls=None, shards=1, masters=0, extra=()):
        self.kind, self.workdir = kind, workdir
        self.shards, self.masters = shards, masters
        self.redis_ports, self.redis_procs = [], []
        for _ in range(max(1, masters)):
            self._start_redis(cluster=masters > 0)
        self.redis_port, self.redis = self.redis_ports[0], self.redis_procs[0]
        if masters:
            self._create_cluster()
        self.nodes, self.ports = [], []
        for i in range(nodes):
            port = free_port()
            logp = os.path.join(workdir, f"{kind}-{port}.log")
            url = f"redis://127.0.0.1:{self.redis_port}"
            if kind == "chatd":
                conf = os.path.join(workdir, f"chatd-{port}.conf")
                lines = [f"listen = 127.0.0.1:{port}", "broker = redis", f"redis_url = {url}",
                         "log_level = warn", "workers = auto"] + CHATD_EXTRA
                if shards != 1:
                    lines.append(f"shards = {shards}")
                if masters:
                    lines.append("redis_cluster = " +
                                 ", ".join(f"127.0.0.1:{p}" for p in self.redis_ports))
                lines += extra
                if tls:
                    tport = free_port()
                    lines += [f"tls_listen = 127.0.0.1:{tport}", f"tls_cert = {tls[0]}",
                              f"tls_key = {tls[1]}"]
                    port = tport
                with open(conf, "w") as f:
                    f.write("\n".join(lines) + "\n")
                p = start([CHATD, "-c", conf], f"chatd:{port}", logpath=logp)
            elif tls or shards != 1 or masters:
                raise RuntimeError(f"the {kind} peer is measured without TLS or shards here")
            elif kind == "node":
                p = start(["node", PEER], f"node:{port}", env={"PORT": str(port), "REDIS_URL": url},
                          logpath=logp)
            elif kind == "nchan":
                ndir = os.path.join(workdir, f"nchan-{port}")
                os.makedirs(ndir, exist_ok=True)
                with open(NCHAN_CONF) as f:
                    conf = f.read()
                for k, v in (("@DIR@", ndir), ("@PORT@", port), ("@REDIS_PORT@", self.redis_port)):
                    conf = conf.replace(k, str(v))
                cpath = os.path.join(ndir, "nginx.conf")
                with open(cpath, "w") as f:
                    f.write(conf)
                p = start([NGINX, "-p", ndir + "/", "-c", cpath, "-e", ndir + "/error.log"],
                          f"nchan:{port}", logpath=logp)
            else:
                raise RuntimeError(f"unknown server kind {kind}")
            wait_port(port)
            self.nodes.append(p)
            self.ports.append(port)
        # The processes of each node: chatd or node itself; an nginx master
        # and its worker, which the master forks after it listens.
        self.pids = [[p.pid] for p in self.nodes]
        deadline = time.monotonic() + 10
        while kind == "nchan" and time.monotonic() < deadline:
            self.pids = [[p.pid] + children(p.pid) for p in self.nodes]
            if all(len(x) > 1 for x in self.pids):
                break
            time.sleep(0.1)

    def node_pids(self, i):
        return self.pids[i]

    def node_cpu_s(self, i):
        return sum(cpu_s(q) for q in self.node_pids(i))

    def _start_redis(self, cluster):
        # A Cluster node also listens on port + 10000 (its bus).
        port = free_port_pair() if cluster else free_port()
        rdir = os.path.join(self.workdir, f"redis-{port}")
        os.makedirs(rdir, exist_ok=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", rdir, "--maxclients", "1000"]
        if cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "5000"]
        self.redis_procs.append(start(cmd, f"redis:{port}"))
        self.redis_ports.append(port)
        wait_port(port)

    def _create_cluster(self, timeout=60):
        """redis-cli --cluster create, no replicas: the masters get even
        slot ranges in the order given. Waits until every node says ok."""
        r = subprocess.run(["redis-cli", "--cluster", "create"]
                           + [f"127.0.0.1:{p}" for p in self.redis_ports]
                           + ["--cluster-replicas", "0", "--cluster-yes"],
                           capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{r.stdout[-2000:]}{r.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in redis_cmd(p, "CLUSTER", "INFO")
                   for p in self.redis_ports):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Redis Cluster is not ok after {timeout}s")

    def wait_shards_up(self, timeout=60):
        """Until every chatd node reads every shard (chatd_redis_shards_up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(node_metrics(p).get("chatd_redis_shards_up") == self.shards
                   for p in self.ports):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the nodes do not read all {self.shards} shards after {timeout}s")

    def rss_kib(self):
        return sum(rss_kib(q) for i in range(len(self.nodes)) for q in self.node_pids(i))

    def cpu_s(self):
        return sum(self.node_cpu_s(i) for i in range(len(self.nodes)))

    def redis_cpu_s(self):
        return sum(cpu_s(p.pid) for p in self.redis_procs)

    def stream_keys(self, stream="chatd:messages"):
        """The stream of every shard, as chatd names them."""
        if self.shards == 1 and not self.masters:
            return [stream]
        return [f"{stream}:{{{shard_tag(k, self.shards)}}}" for k in range(self.shards)]

    def _port_of(self, key):
        if not self.masters:
            return self.redis_port
        slot = keyslot(key)
        for r in redis_cmd(self.redis_port, "CLUSTER", "SLOTS"):
            if r[0] <= slot <= r[1]:
                return int(r[2][1])
        raise RuntimeError(f"no master serves slot {slot}")

    def stream_entries_added(self, stream="chatd:messages"):
        """Entries ever XADDed to the streams of every shard (survives
        MAXLEN trimming)."""
        n = 0
        for key in self.stream_keys(stream):
            try:
                info = redis_cmd(self._port_of(key), "XINFO", "STREAM", key)
            except RuntimeError:  # no such key: nothing was published
                continue
            d = dict(zip(info[::2], info[1::2]))
            n += int(d.get("entries-added", d.get("length", 0)))
        return n

    def urls(self, scheme="ws", room=None):
        q = "username=u{i}" + (f"&room={room}" if room else "")
        return [f"{scheme}://127.0.0.1:{p}/?{q}" for p in self.ports]

    def close(self):
        for p in self.nodes:
            stop(p)
        for p in self.redis_procs:
            stop(p)


def chatbench(args, cluster, timeout, on_start=None):
    """Runs chatbench; samples the cluster's RSS while it runs. Returns the
    JSON report plus rss_peak_kib and client_cpu_s, the load generator's CPU
    time (user + system, all its processes) from the start of the measured
    phase. on_start() is called (from a thread) when every client is
    connected and the measured phase begins."""
    cmd = [CHATBENCH, "-v"] + args
    log(" ".join(cmd))
    # chatbench waits for its processes and we wait for chatbench: their CPU
    # time adds up in ours for children.
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    client0 = ru.ru_utime + ru.ru_stime
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append((p, "chatbench"))
    at_start = {}
    hold = []  # RSS samples once every client is connected

    def watch_stderr():
        # chatbench -v says when every client is connected and the measured
        # phase begins: server CPU is counted from there, so handshakes do
        # not blur the cost per delivery.
        for line in p.stderr:
            if "starting the run" in line and "cpu" not in at_start:
                at_start["cpu"] = cluster.cpu_s()
                at_start["redis_cpu"] = cluster.redis_cpu_s()
                at_start["client_cpu"] = sum(cpu_s(q) for q in [p.pid] + children(p.pid))
                at_start["busy"], at_start["t"] = machine_busy_s(), time.monotonic()
                if on_start:
                    on_start()
            if "client " not in line:
                sys.stderr.write(line)

    t = threading.Thread(target=watch_stderr, daemon=True)
    t.start()
    peak = 0
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        rss = cluster.rss_kib()
        peak = max(peak, rss)
        if "cpu" in at_start:
            hold.append(rss)
        time.sleep(0.5)
    if p.poll() is None:
        p.kill()
    out = p.stdout.read()
    p.wait()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = ru.ru_utime + ru.ru_stime - client0
    busy, t_end = machine_busy_s(), time.monotonic()
    t.join(5)
    procs[:] = [(q, n) for q, n in procs if q is not p]
    sys.stderr.write(out)
    line = [l for l in out.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError("chatbench printed no JSON report")
    r = json.loads(line[-1])
    r["rss_peak_kib"] = peak
    r["rss_hold_kib"] = sorted(hold)[len(hold) // 2] if hold else peak
    r["cpu_at_start"] = at_start.get("cpu", cluster.cpu_s())
    r["redis_cpu_at_start"] = at_start.get("redis_cpu", cluster.redis_cpu_s())
    r["client_cpu_s"] = client_cpu - at_start.get("client_cpu", 0)
    # What the rest of the machine (other users of the shared cores) took
    # while we measured: a share of all cores.
    if "busy" in at_start:
        ours = (cluster.cpu_s() - r["cpu_at_start"] + cluster.redis_cpu_s()
                - r["redis_cpu_at_start"] + r["client_cpu_s"])
        wall = max(1e-9, t_end - at_start["t"]) * (os.cpu_count() or 1)
        r["others_pct"] = round(max(0.0, busy - at_start["busy"] - ours) / wall * 100, 1)
    return r


# ---- scenarios -----------------------------------------------------------

def s1_idle(kind, q, work):
    nodes, per = (4, 2500) if q else (4, 15000)
    hold = 15 if q else 60
    c = Cluster(kind, nodes, work)
    try:
        time.sleep(1)
        base = c.rss_kib()
        n = nodes * per
        r = chatbench(["--mode", "idle", "--conns", str(n), "--ramp", "4000", "--procs", "4",
                       "--src-ips", SRC_IPS, "--duration", str(hold), "--connect-timeout", "120"]
                      + sum([["--url", u] for u in c.urls()], []), c, timeout=hold + 200)
        r["kib_per_conn"] = (r["rss_peak_kib"] - base) / max(1, r["connected"])
        return {"scenario": 1, "server": kind, "clients": n, "connected": r["connected"],
                "failed": r["failed"], "connect_s": r["connect_s"],
                "kib_per_conn": round(r["kib_per_conn"], 2)}
    finally:
        c.close()


def s2_fanout(kind, q, work, rates):
    per = 2500 if q else 5000
    rows = []
    for rate in rates:
        c = Cluster(kind, 2, work)
        try:
            time.sleep(0.5)
            dur = 5 if q else 10
            r = chatbench(["--mode", "broadcast", "--conns", str(2 * per), "--procs", "2",
                           "--ramp", "5000", "--senders", "10", "--rate", str(rate),
                           "--duration", str(dur), "--drain", "5"]
                          + sum([["--url", u] for u in c.urls(room="bench")], []), c, timeout=240)
            cpu = c.cpu_s() - r["cpu_at_start"]
            lost = r["expected"] - r["delivered"]
            rows.append({"scenario": 2, "server": kind, "rate": rate, "clients": 2 * per,
                         "deliveries_per_s": round(r["deliveries_per_s"]),
                         "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                         "expected": r["expected"], "delivered": r["delivered"], "lost": lost,
                         "dup": r["dup"], "reorder": r["reorder"],
                         "cpu_s_per_M": round(cpu / max(1, r["delivered"]) * 1e6, 2),
                         "redis_cpu_s": round(c.redis_cpu_s() - r["redis_cpu_at_start"], 2)})
            log(rows[-1])
        finally:
            c.close()
    return rows


def s3_big_room(kind, q, work):
    nodes, per = (4, 2500) if q else (4, 15000)
    c = Cluster(kind, nodes, work)
    try:
        time.sleep(1)
        dur = 10 if q else 30
        r = chatbench(["--mode", "broadcast", "--conns", str(nodes * per), "--procs", "4",
                       "--ramp", "4000", "--src-ips", SRC_IPS, "--senders", "1", "--rate", "1",
                       "--duration", str(dur), "--drain", "10", "--connect-timeout", "120"]
                      + sum([["--url", u] for u in c.urls(room="all")], []), c, timeout=dur + 300)
        delivered = max(1, r["delivered"])
        return {"scenario": 3, "server": kind, "clients": nodes * per, "connected": r["connected"],
                "expected": r["expected"], "delivered": r["delivered"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                "cpu_us_per_delivery": round((c.cpu_s() - r["cpu_at_start"]) / delivered * 1e6, 2),
                "client_cpu_us_per_delivery": round(r["client_cpu_s"] / delivered * 1e6, 2),
                "others_pct": r.get("others_pct", "")}
    finally:
        c.close()


WSS_KEYS = {"ec": ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], "rsa": ["rsa:2048"],
            "rsa4096": ["rsa:4096"]}


def wss_cert(work, key):
    """A self-signed certificate and key: key "ec" (ECDSA P-256), "rsa"
    (RSA-2048) or "rsa4096"."""
    tls = (os.path.join(work, f"cert-{key}.pem"), os.path.join(work, f"key-{key}.pem"))
    if not os.path.exists(tls[0]):
        kind = WSS_KEYS[key]
        subprocess.run(["openssl", "req", "-x509", "-newkey"] + kind +
                       ["-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-keyout", tls[1], "-out", tls[0]], check=True, capture_output=True)
    return tls


def s4_wss(kind, q, work, key="ec", groups=None):
    n = 10000
    c = Cluster(kind, 1, work, tls=wss_cert(work, key))
    try:
        time.sleep(1)
        base = c.rss_kib()
        cpu0 = c.cpu_s()
        r = chatbench(["--mode", "idle", "--conns", str(n), "--procs", "2", "--ramp", "0",
                       "--insecure", "--duration", "10", "--connect-timeout", "120"]
                      + (["--groups", groups] if groups else [])
                      + sum([["--url", u] for u in c.urls("wss")], []), c, timeout=300)
        return {"scenario": 4, "server": kind, "clients": n, "connected": r["connected"],
                "failed": r["failed"], "connect_s": r["connect_s"],
                "handshakes_per_s": round(r["connected"] / max(1e-9, r["connect_s"])),
                "kib_per_conn": round((r["rss_peak_kib"] - base) / max(1, r["connected"]), 2),
                "kib_per_conn_held": round((r["rss_hold_kib"] - base) / max(1, r["connected"]), 2),
                "server_cpu_s": round(c.cpu_s() - cpu0, 2),
                "cpu_ms_per_handshake": round((r["cpu_at_start"] - cpu0) * 1000
                                              / max(1, r["connected"]), 3)}
    finally:
        c.close()


def s8_wss_burst(kind, q, work, key="ec", groups=None, n=None):
    """5,000 wss clients at once (no ramp, every handshake in flight): how
    long until all are upgraded, how long each waited, server CPU each."""
    n = n or (2000 if q else 5000)
    c = Cluster(kind, 1, work, tls=wss_cert(work, key))
    try:
        time.sleep(1)
        cpu0 = c.cpu_s()
        r = chatbench(["--mode", "idle", "--conns", str(n), "--procs", "2", "--ramp", "0",
                       "--inflight", str(n), "--insecure", "--duration", "2",
                       "--connect-timeout", "120"]
                      + (["--groups", groups] if groups else [])
                      + sum([["--url", u] for u in c.urls("wss")], []), c, timeout=300)
        return {"scenario": 8, "server": kind, "key": key, "groups": groups or "default",
                "conf": "; ".join(CHATD_EXTRA) or "-", "clients": n, "connected": r["connected"], "failed": r["failed"],
                "all_upgraded_s": r["connect_s"], "hs_p50_ms": r["hs_p50_ms"],
                "hs_p99_ms": r["hs_p99_ms"], "hs_max_ms": r["hs_max_ms"],
                "cpu_ms_per_handshake": round((r["cpu_at_start"] - cpu0) * 1000
                                              / max(1, r["connected"]), 3)}
    finally:
        c.close()


def s9_wss_fanout(kind, q, work, key="ec", rate=50):
    """Scenario 2 over wss, one node: 2,000 clients in one room, 10 senders
    at `rate` messages/s: server CPU per delivery through the TLS record
    layer."""
    n = 2000
    c = Cluster(kind, 1, work, tls=wss_cert(work, key))
    try:
        time.sleep(1)
        dur = 5 if q else 10
        r = chatbench(["--mode", "broadcast", "--conns", str(n), "--procs", "2", "--ramp", "0",
                       "--insecure", "--senders", "10", "--rate", str(rate), "--duration", str(dur),
                       "--drain", "5", "--connect-timeout", "120"]
                      + sum([["--url", u] for u in c.urls("wss", room="bench")], []), c,
                      timeout=300)
        cpu = c.cpu_s() - r["cpu_at_start"]
        return {"scenario": 9, "server": kind, "rate": rate, "clients": n,
                "deliveries_per_s": round(r["deliveries_per_s"]), "p50_ms": r["p50_ms"],
                "p99_ms": r["p99_ms"], "lost": r["expected"] - r["delivered"],
                "cpu_s_per_M": round(cpu / max(1, r["delivered"]) * 1e6, 2)}
    finally:
        c.close()


def s5_storm(kind, q, work, per=None):
    """Scenario 1's clients, then SIGKILL of the node holding a quarter of
    them: chatbench --reconnect sends each of its clients at once to another
    node and measures until the last one is back. With 15,000 per node the
    three survivors need 20,000 clients each: more than 20,000 open files
    per process allow, so a few cannot come back (the table says how many)."""
    nodes, per = 4, per or (1000 if q else 15000)
    hold, kill_at = (20, 5) if q else (60, 10)
    c = Cluster(kind, nodes, work)
    victim = c.nodes[0]  # clients 0, 4, 8, ...: exactly `per` of them
    state, timers = {}, []

    def kill():
        state["survivors_cpu"] = sum(cpu_s(p.pid) for p in c.nodes[1:])
        log(f"SIGKILL {kind} node :{c.ports[0]} (pid {victim.pid}) holding {per} clients")
        victim.kill()  # SIGKILL, by the pid we started
        state["killed"] = True

    def on_start():
        t = threading.Timer(kill_at, kill)
        t.daemon = True
        timers.append(t)
        t.start()

    try:
        time.sleep(1)
        n = nodes * per
        r = chatbench(["--mode", "idle", "--conns", str(n), "--ramp", "4000", "--procs", "4",
                       "--src-ips", SRC_IPS, "--duration", str(hold), "--connect-timeout", "120",
                       "--reconnect", "--reconnect-tries", "10", "--reconnect-timeout", "5",
                       "--reconnect-backoff", "0.1"]
                      + sum([["--url", u] for u in c.urls()], []), c, timeout=hold + 200,
                      on_start=on_start)
        if not state.get("killed"):
            raise RuntimeError("scenario 5: the node was never killed (the run ended first)")
        survivors_cpu = sum(cpu_s(p.pid) for p in c.nodes[1:]) - state["survivors_cpu"]
        never = r["rc_never_back"]
        return {"scenario": 5, "server": kind, "clients": n, "connected": r["connected"],
                "killed_node_clients": per, "dropped": r["rc_drops"], "back": r["rc_back"],
                "never_back": never,
                "all_back_s": r["rc_back_s"] if never == 0 and r["rc_drops"] else "no",
                "last_back_s": r["rc_back_s"], "down_p50_ms": r["rc_down_p50_ms"],
                "down_p99_ms": r["rc_down_p99_ms"], "down_max_ms": r["rc_down_max_ms"],
                "attempts": r["rc_attempts"], "retries": r["rc_attempts"] - r["rc_drops"],
                "failed": r["rc_failed"], "refused": r["rc_refused"],
                "http_failed": r["rc_http_failed"], "timeouts": r["rc_timeout"],
                "other_failed": r["rc_other_failed"], "held_at_end": r["held"],
                "survivors_cpu_s": round(survivors_cpu, 2)}
    finally:
        for t in timers:
            t.cancel()
        c.close()


def s6_redis(kind, q, work, rates):
    """Issue 3's figure: two nodes on one Redis, 1,000 clients in one room,
    the 10 senders on node A, the 990 measured receivers on node B."""
    n, senders = 1000, 10
    dur = 5 if q else 10
    rows = []
    for i, rate in enumerate(rates):
        c = Cluster(kind, 2, work)
        cpu = {}
        try:
            time.sleep(0.5)
            url_a, url_b = c.urls(room="r6")

            def on_start():
                cpu["a"], cpu["b"] = cpu_s(c.nodes[0].pid), cpu_s(c.nodes[1].pid)

            r = chatbench(["--mode", "broadcast", "--conns", str(n), "--procs", "2",
                           "--ramp", "2000", "--senders", str(senders), "--rate", str(rate),
                           "--duration", str(dur), "--drain", "5",
                           "--sender-url", url_a, "--url", url_b], c, timeout=dur + 120,
                          on_start=on_start)
            published = c.stream_entries_added()
            lost = r["expected"] - r["delivered"]
            rows.append({"scenario": 6, "server": kind, "rate": rate, "clients": n,
                         "sent": r["sent"], "published": published,
                         "published_per_s": round(published / dur),
                         "deliveries_per_s": round(r["deliveries_per_s"]),
                         "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                         "expected": r["expected"], "delivered": r["delivered"], "lost": lost,
                         "dup": r["dup"], "reorder": r["reorder"],
                         "cpu_a_s": round(cpu_s(c.nodes[0].pid) - cpu.get("a", 0), 2),
                         "cpu_b_s": round(cpu_s(c.nodes[1].pid) - cpu.get("b", 0), 2),
                         "redis_cpu_s": round(c.redis_cpu_s() - r["redis_cpu_at_start"], 2)})
            log(rows[-1])
        finally:
            c.close()
        # Far past saturation every further step only piles up backlog.
        if (r["p99_ms"] > 5000 or lost > 0.05 * max(1, r["expected"])) and i + 1 < len(rates):
            log(f"scenario 6: {kind} saturated at {rate} msg/s; skipping {rates[i + 1:]}")
            rows.append({"scenario": 6, "server": kind, "rate": ", ".join(map(str, rates[i + 1:])),
                         "sent": "skipped: saturated below"})
            break
    return rows


def s7_deflate(kind, q, work, runs=2, rates=(20,)):
    """Issue 16: one node, 1,000 clients in one room, 5 senders at each of
    rates (msg/s in all) for 10 s, all clients offering permessage-deflate
    as Chromium does, or none. Chat text of about 150 bytes (random common
    words) and a JSON-ish order of about 2 KB. Bytes of data frames the
    clients read per delivery; server CPU per delivery from the moment all
    are connected (user + system of the process); RSS growth per client
    (peak while the clients are there, over the node after a warm-up of 8
    clients that made each worker's compressor and decompressor, a fixed
    cost of a few hundred KiB per worker, not one per client). The
    configurations of a run follow each other, so that a noisy moment of
    the shared machine does not fall on one side only."""
    if kind != "chatd":
        return []
    n = 500 if q else 1000
    dur = 5 if q else 10
    rows = []
    for run, rate, (pad, size), deflate in [(run, rate, m, d) for run in range(1, runs + 1)
                                            for rate in rates
                                            for m in (("words", 150), ("json", 2000))
                                            for d in (False, True)]:
        z = ["--deflate"] if deflate else []
        c = Cluster(kind, 1, work)
        try:
            time.sleep(0.5)
            chatbench(["--mode", "broadcast", "--conns", "8", "--senders", "4", "--rate", "20",
                       "--duration", "1", "--drain", "2", "--msg-size", str(size), "--pad", pad]
                      + z + ["--url", c.urls(room="warm")[0]], c, timeout=60)
            time.sleep(0.5)
            base = c.rss_kib()
            m0 = node_metrics(c.ports[0])
            r = chatbench(["--mode", "broadcast", "--conns", str(n), "--procs", "2",
                           "--ramp", "2000", "--senders", "5", "--rate", str(rate),
                           "--duration", str(dur), "--drain", "5", "--msg-size", str(size),
                           "--pad", pad] + z + ["--url", c.urls(room="z")[0]], c,
                          timeout=dur + 120)
            cpu = c.cpu_s() - r["cpu_at_start"]
            m = node_metrics(c.ports[0])
            rows.append({
                "scenario": 7, "server": kind, "run": run, "rate": rate,
                "message": f"{pad} {size} B", "deflate": "on" if deflate else "off",
                "clients": n, "negotiated": r["deflate_clients"], "delivered": r["delivered"],
                "lost": r["expected"] - r["delivered"],
                "bytes_per_delivery": round(r["data_bytes"] / max(1, r["delivered"]), 1),
                "cpu_us_per_delivery": round(cpu / max(1, r["delivered"]) * 1e6, 2),
                "compressions": m.get("chatd_compressions_total", 0)
                - m0.get("chatd_compressions_total", 0),
                "messages": r["sent"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "kib_per_client": round((r["rss_peak_kib"] - base) / max(1, r["connected"]), 2)})
            log(rows[-1])
        finally:
            c.close()
    return rows


def conntrack_wait(need, limit_s=240):
    """Loopback connections are tracked on this machine (nf_conntrack), and
    a closed one stays in the table for 120 s (TIME_WAIT): a big run right
    after another could fill it, and the kernel would then drop new
    connections. Waits, at most limit_s, until `need` more entries fit.
    Returns the entries in the table then (None: no conntrack)."""
    try:
        with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
            cap = int(f.read())
    except OSError:
        return None
    deadline = time.monotonic() + limit_s
    while True:
        with open("/proc/sys/net/netfilter/nf_conntrack_count") as f:
            n = int(f.read())
        if n + need <= 0.95 * cap or time.monotonic() > deadline:
            return n
        log(f"conntrack holds {n:,} of {cap:,} entries, {need:,} more would not fit: waiting")
        time.sleep(5)


def s_big(kind, q, work, nodes, clients, rate=1):
    """Issue 16: `clients` on `nodes` nodes sharing one Redis, all in one
    room, bound round-robin to scenario 1's loopback source addresses; held
    idle once all are established (server memory per connection: the growth
    of the servers' summed RSS, the peak while idle, over the nodes before
    the clients came, as in scenario 1), then `rate` messages per second
    (one) to all of them: latency of every delivery (p99: the time to reach all but the
    last 1 %; max: the last client of the slowest message) and server CPU
    per delivery from the first message on."""
    if q:
        clients = clients // 10
    hold, dur = (10, 10) if q else (20, 30)
    # 20,000 open files per process: at most 18,000 clients per chatbench
    # process, and at least 4 to spread the client work.
    procs = max(4, -(-clients // 18000))
    conntrack = conntrack_wait(clients + 2000)
    c = Cluster(kind, nodes, work)
    idle, stop_idle = {"peak": 0}, threading.Event()

    def sample_idle():
        # From "all established" until the first message (--hold).
        end = time.monotonic() + hold
        while time.monotonic() < end and not stop_idle.is_set():
            idle["peak"] = max(idle["peak"], c.rss_kib())
            time.sleep(0.5)
        idle["cpu"] = c.cpu_s()

    def on_start():
        t = threading.Thread(target=sample_idle, daemon=True)
        idle["thread"] = t
        t.start()

    try:
        time.sleep(1)
        base = c.rss_kib()
        r = chatbench(["--mode", "broadcast", "--conns", str(clients), "--procs", str(procs),
                       "--ramp", "4000", "--src-ips", SRC_IPS, "--senders", "1", "--rate", str(rate),
                       "--hold", str(hold), "--duration", str(dur), "--drain", "15",
                       "--connect-timeout", str(clients // 4000 + 120)]
                      + sum([["--url", u] for u in c.urls(room="all")], []), c,
                      timeout=clients // 4000 + hold + dur + 400, on_start=on_start)
        stop_idle.set()
        if "thread" in idle:
            idle["thread"].join(5)
        conn = max(1, r["connected"])
        cpu = c.cpu_s() - idle.get("cpu", r["cpu_at_start"])
        return {"scenario": "big", "server": kind, "nodes": nodes, "clients": clients,
                "hold_s": hold, "duration_s": dur, "rate": rate,
                "procs": procs, "conntrack_before": conntrack, "connected": r["connected"],
                "failed": r["failed"], "connect_s": r["connect_s"],
                "kib_per_conn": round((idle["peak"] - base) / conn, 2),
                "kib_per_conn_run": round((r["rss_peak_kib"] - base) / conn, 2),
                "sent": r["sent"], "expected": r["expected"], "delivered": r["delivered"],
                "lost": r["expected"] - r["delivered"], "dropped": r["dropped"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                "cpu_us_per_delivery": round(cpu / max(1, r["delivered"]) * 1e6, 2),
                "client_cpu_us_per_delivery": round(r["client_cpu_s"] / max(1, r["delivered"]) * 1e6,
                                                    2),
                "others_pct": r.get("others_pct", "")}
    finally:
        stop_idle.set()
        c.close()


def node_metrics(port):
    """GET /metrics of a node, as {name: number} (labels kept in the name)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    out = {}
    for line in data.split(b"\r\n\r\n", 1)[-1].decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def s7_summary(rows):
    """Medians (of two runs: their mean) per message and deflate setting."""
    out = []
    for rate, msg in dict.fromkeys((r["rate"], r["message"]) for r in rows):
        for d in ("off", "on"):
            rs = [r for r in rows if (r["rate"], r["message"], r["deflate"]) == (rate, msg, d)]
            if not rs:
                continue
            med = lambda k: statistics.median(r[k] for r in rs)
            vals = lambda k: ", ".join(str(r[k]) for r in rs)
            out.append({"rate": rate, "message": msg, "deflate": d,
                        "bytes_per_delivery": f"{med('bytes_per_delivery'):.1f} ({vals('bytes_per_delivery')})",
                        "cpu_us_per_delivery": f"{med('cpu_us_per_delivery'):.2f} ({vals('cpu_us_per_delivery')})",
                        "compressions_per_message": ", ".join(
                            f"{r['compressions'] / max(1, r['messages']):.3f}" for r in rs),
                        "kib_per_client": f"{med('kib_per_client'):.2f} ({vals('kib_per_client')})",
                        "p99_ms": vals("p99_ms")})
    return out


def thread_cpu_s(pid):
    """CPU seconds of each thread of pid, in the order they were made."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # fields[19]: start time; the thread id breaks a tie.
        out.append(((int(fields[19]), int(t)), (int(fields[11]) + int(fields[12])) / CLK_TCK))
    return [c for _, c in sorted(out)]


def tree_cpu_s(pid):
    """CPU seconds of pid and of its live children (chatbench forks its
    client processes even with --procs 1)."""
    total = cpu_s(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except FileNotFoundError:
        kids = []
    return total + sum(cpu_s(k) for k in kids)


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def wait_quiet(max_s=1500, every=20, below=2.0):
    """The 2 cores are shared with other work: before a measurement, wait
    (polling every `every` s, at most max_s) until no test suite runs
    (run-tests.sh) and the 1-minute load average is below `below`. Returns
    (seconds waited, load average, whether a suite still ran)."""
    t0 = time.monotonic()
    for _ in range(max_s // every + 2):
        busy = subprocess.run(["pgrep", "-f", "run-tests.sh"], capture_output=True).returncode == 0
        la = load1()
        if not busy and la < below:
            break
        if time.monotonic() - t0 >= max_s:
            log(f"still busy after {max_s}s (load {la}, run-tests.sh: {busy}); measuring anyway")
            break
        log(f"waiting for a quiet machine: load {la}, run-tests.sh running: {busy}")
        time.sleep(every)
    return round(time.monotonic() - t0), load1(), busy


def shards_step(c, rooms, rate, dur, per_room, senders, drain=5):
    """One chatbench per room at once, rate/len(rooms) msg/s each, senders
    on node A, the other clients on node B. CPU is taken over the send
    window: from the moment every chatbench has started its run until
    `dur` seconds later."""
    stream0 = c.stream_entries_added()
    runs, started = [], []
    for k, room in enumerate(rooms):
        url_a, url_b = [f"ws://127.0.0.1:{p}/?username=r{k}u{{i}}&room={room}" for p in c.ports]
        cmd = [CHATBENCH, "-v", "--mode", "broadcast", "--conns", str(per_room),
               "--senders", str(senders), "--rate", f"{rate / len(rooms):.3f}",
               "--duration", str(dur), "--drain", str(drain),
               "--sender-url", url_a, "--url", url_b]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append((p, "chatbench"))
        ev = threading.Event()

        def watch(p=p, ev=ev):
            for line in p.stderr:
                if "starting the run" in line:
                    ev.set()
                elif "client " not in line and "chatbench:" in line and "connected" not in line:
                    sys.stderr.write(line)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        runs.append((p, t))
        started.append(ev)
    log(f"shards: {len(rooms)} x chatbench --conns {per_room} --senders {senders} "
        f"--rate {rate / len(rooms):.1f} --duration {dur}")
    try:
        deadline = time.monotonic() + 60
        for ev in started:
            if not ev.wait(max(0.1, deadline - time.monotonic())):
                raise RuntimeError("a chatbench did not start its run within 60 s")

        def snap():
            return {"a": thread_cpu_s(c.nodes[0].pid), "b": thread_cpu_s(c.nodes[1].pid),
                    "redis": [cpu_s(r.pid) for r in c.redis_procs],
                    "bench": sum(tree_cpu_s(p.pid) for p, _ in runs),
                    "entries": c.stream_entries_added(),
                    "t": time.monotonic()}

        s0 = snap()
        time.sleep(dur)
        s1 = snap()
        reports = []
        for p, t in runs:
            try:
                out, _ = p.communicate(timeout=dur + drain + 120)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate(timeout=10)
            t.join(5)
            line = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not line:
                raise RuntimeError(f"chatbench printed no JSON report:\n{out[-2000:]}")
            reports.append(json.loads(line[-1]))
            if reports[-1]["dropped"] or reports[-1]["expected"] != reports[-1]["delivered"]:
                sys.stderr.write("".join(ln + "\n" for ln in out.splitlines()
                                         if ln.startswith(("held", "send", "delivery"))))
    finally:
        for p, _ in runs:
            stop(p, 5)
    published = c.stream_entries_added() - stream0
    win = s1["t"] - s0["t"]

    def d(key):
        return s1[key] - s0[key]

    def node(key):
        # Threads: main, the consumer (broker), the workers, the acceptor.
        th = [x - y for x, y in zip(s1[key], s0[key])]
        return round(sum(th), 2), round(th[1], 2), round(sum(th[2:-1]), 2), \
            round(max(th[2:-1]), 2)

    a, b = node("a"), node("b")
    redis = [x - y for x, y in zip(s1["redis"], s0["redis"])]
    lost = sum(r["expected"] - r["delivered"] for r in reports)
    return {"rate": rate, "sent": sum(r["sent"] for r in reports),
            "published": published,
            "published_per_s": round(d("entries") / win),
            "delivered_per_s": round(sum(r["deliveries_per_s"] for r in reports) / per_room),
            "deliveries_per_s": round(sum(r["deliveries_per_s"] for r in reports)),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in reports), 1),
            "p99_ms": round(max(r["p99_ms"] for r in reports), 1),
            "lost": lost, "dup": sum(r["dup"] for r in reports),
            "closed": sum(r["dropped"] for r in reports),
            "reorder": sum(r["reorder"] for r in reports),
            "cpu_a": a[0], "consumer_a": a[1], "workers_a": a[2], "worker_max_a": a[3],
            "cpu_b": b[0], "consumer_b": b[1], "workers_b": b[2], "worker_max_b": b[3],
            "cpu_redis": " + ".join(f"{x:.2f}" for x in redis),
            "cpu_bench": round(d("bench"), 2),
            "cpu_all": round(a[0] + b[0] + sum(redis) + d("bench"), 2), "window_s": round(win, 2)}


# A worker's publish_queue is per shard: with six shards a worker may have
# six times as many messages waiting for Redis. The third configuration
# gives one shard the same room, to tell that budget from Redis' speed.
SHARD_CONFIGS = (("1 Redis, shards = 1", 0, 1, ()),
                 ("3 masters, shards = 6", 3, 6, ()),
                 ("1 Redis, shards = 1, publish_queue = 6144", 0, 1, ("publish_queue = 6144",)))


def s_shards(q, work, rates, runs=2, max_wait=1500, per_room=4, senders=2):
    """Issue 14's figure: messages per second through one Redis with one
    shard, then through a Redis Cluster of three masters (no replicas) with
    six shards, two chatd nodes. Six rooms, one per shard of six (the same
    six with one shard), each its own chatbench: `senders` of its
    `per_room` clients on node A, the rest on node B; the total rate split
    evenly. Then one Redis again with six shards' worth of publish_queue.
    Rates step up until a step saturates (p99 > 2 s or a loss).
    The configurations of a run follow each other, each after waiting for
    a quiet machine (the first of a run up to max_wait, the others up to 5
    minutes: our own load of the one before must decay first)."""
    rooms = one_room_per_shard(6)
    dur = 5 if q else 10
    rows = []
    for run in range(1, runs + 1):
        for i, (name, masters, shards, conf) in enumerate(SHARD_CONFIGS):
            waited, la, suite = wait_quiet(max_wait if i == 0 else min(max_wait, 300))
            log(f"shards run {run}, {name}: waited {waited}s, load {la}, "
                f"run-tests.sh running: {suite}")
            c = Cluster("chatd", 2, work, shards=shards, masters=masters, extra=conf)
            try:
                c.wait_shards_up()
                for rate in rates:
                    la = load1()
                    r = shards_step(c, rooms, rate, dur, per_room, senders)
                    r.update({"scenario": "shards", "config": name, "run": run,
                              "load1_before": la, "waited_s": waited})
                    rows.append(r)
                    log(r)
                    if r["p99_ms"] > 2000 or r["lost"] > 0:
                        break
            finally:
                c.close()
    return rows


def shards_summary(rows):
    """Per configuration and rate: medians of the runs (with every value)."""
    out = []
    for name, rate in dict.fromkeys((r["config"], r["rate"]) for r in rows):
        rs = [r for r in rows if (r["config"], r["rate"]) == (name, rate)]
        row = {"config": name, "rate": rate, "runs": len(rs)}
        for k in ("published_per_s", "delivered_per_s", "p50_ms", "p99_ms", "lost", "cpu_a",
                  "consumer_a", "worker_max_a", "cpu_b", "consumer_b", "worker_max_b",
                  "cpu_bench", "cpu_all"):
            vals = [r[k] for r in rs]
            med = statistics.median(vals)
            med = round(med) if k in ("published_per_s", "delivered_per_s", "lost") else round(med, 2)
            row[k] = f"{med}" + (f" ({', '.join(str(v) for v in vals)})" if len(set(vals)) > 1 else "")
        row["cpu_redis"] = "; ".join(r["cpu_redis"] for r in rs)
        out.append(row)
    return out


# ---- report --------------------------------------------------------------

def table(rows, cols):
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(out)


def plot(rows, path):
    if not shutil.which("gnuplot"):
        log("gnuplot not installed: no plot")
        return None
    data = {}
    for r in rows:
        data.setdefault(r["server"], []).append((r["deliveries_per_s"], r["p99_ms"], r["p50_ms"]))
    files = []
    for server, pts in data.items():
        fn = path + f".{server}.dat"
        with open(fn, "w") as f:
            for x, p99, p50 in sorted(pts):
                f.write(f"{x} {p99} {p50}\n")
        files.append((server, fn))
    plots = ", ".join(f"'{fn}' using 1:2 with linespoints title '{s} p99', "
                      f"'{fn}' using 1:3 with linespoints title '{s} p50'" for s, fn in files)
    script = (f"set terminal png size 900,560; set output '{path}';"
              "set title 'Fan-out, 10 senders into one room: latency vs delivered messages/s';"
              "set xlabel 'deliveries per second'; set ylabel 'latency (ms)'; set logscale y;"
              f"set key left top; plot {plots}")
    subprocess.run(["gnuplot", "-e", script], check=False)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", default="1,2,3,4,5,6")
    ap.add_argument("--runs7", type=int, default=2, help="scenario 7: runs of each configuration")
    ap.add_argument("--rates7", default="20,200",
                    help="scenario 7: total send rates, msg/s, into the room of 1,000")
    ap.add_argument("--servers", default="chatd,node,nchan")
    ap.add_argument("--big-clients", type=int, default=150000,
                    help="scenario big: clients (default 150000; --quick: a tenth)")
    ap.add_argument("--big-nodes", type=int, default=8, help="scenario big: nodes (default 8)")
    ap.add_argument("--big-rate", type=float, default=1,
                    help="scenario big: messages per second into the room (default 1)")
    ap.add_argument("--rates", default="5,10,20,50,100,200")
    ap.add_argument("--storm-per-node", type=int, default=None,
                    help="scenario 5 clients per node (default 15000; --quick: 1000)")
    ap.add_argument("--rates6", default=None,
                    help="scenario 6 total send rates, msg/s (default 20,50,100,200,500,1000,"
                         "2000,5000; --quick: 100,1000); stops after a saturated rate")
    ap.add_argument("--rates-shards", default="2000,5000,10000,20000,30000,40000,60000,80000",
                    help="scenario shards: total send rates, msg/s, over the six rooms; "
                         "stops after a saturated rate (p99 > 2 s or a loss)")
    ap.add_argument("--runs-shards", type=int, default=2,
                    help="scenario shards: runs of each configuration")
    ap.add_argument("--wait-quiet", type=int, default=1500,
                    help="scenario shards: before each run, wait at most this many seconds "
                         "for no run-tests.sh and a load average under 2 (0: do not wait)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wss-key", default="ec", choices=sorted(WSS_KEYS),
                    help="scenarios 4, 8, 9: ECDSA P-256 (default), RSA-2048 or RSA-4096")
    ap.add_argument("--burst-clients", type=int, default=None,
                    help="scenario 8 clients (default 5000; --quick: 2000)")
    ap.add_argument("--chatd-conf", action="append", default=[],
                    help="a config line for every chatd node, e.g. 'acceptor_threads = 1'")
    ap.add_argument("--wss-groups", default=None,
                    help="scenarios 4 and 8: key exchange groups the clients offer "
                         "(default: OpenSSL's, X25519 first)")
    ap.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    a = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (stop_all(), sys.exit(130)))
    scen = set(a.scenarios.split(","))
    known = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "big", "shards"}
    if scen - known:
        ap.error(f"unknown scenarios {sorted(scen - known)}")
    servers = a.servers.split(",")
    rates = [float(x) if "." in x else int(x) for x in a.rates.split(",")]
    rates6 = a.rates6 or ("100,1000" if a.quick else "20,50,100,200,500,1000,2000,5000")
    rates6 = [float(x) if "." in x else int(x) for x in rates6.split(",")]
    work = tempfile.mkdtemp(prefix="chatd-bench-")
    CHATD_EXTRA[:] = a.chatd_conf
    results = {1: [], 2: [], 3: [], 4: [], 5: [], 6: [], 7: [], 8: [], 9: [], "big": [],
               "shards": []}
    load = [os.getloadavg()]
    try:
        for kind in servers:
            if "1" in scen:
                results[1].append(s1_idle(kind, a.quick, work)); log(results[1][-1])
            if "2" in scen:
                results[2] += s2_fanout(kind, a.quick, work, rates)
            if "3" in scen:
                results[3].append(s3_big_room(kind, a.quick, work)); log(results[3][-1])
            if "4" in scen and kind == "chatd":
                results[4].append(s4_wss(kind, a.quick, work, a.wss_key, a.wss_groups))
                log(results[4][-1])
            if "5" in scen and kind != "nchan":
                results[5].append(s5_storm(kind, a.quick, work, a.storm_per_node)); log(results[5][-1])
            if "6" in scen and kind != "nchan":
                results[6] += s6_redis(kind, a.quick, work, rates6)
            if "7" in scen:
                results[7] += s7_deflate(kind, a.quick, work, a.runs7,
                                         [int(x) for x in a.rates7.split(",")])
            if "8" in scen and kind == "chatd":
                results[8].append(s8_wss_burst(kind, a.quick, work, a.wss_key, a.wss_groups,
                                               a.burst_clients))
                log(results[8][-1])
            if "9" in scen and kind == "chatd":
                results[9].append(s9_wss_fanout(kind, a.quick, work, a.wss_key))
                log(results[9][-1])
            if "big" in scen:
                results["big"].append(s_big(kind, a.quick, work, a.big_nodes, a.big_clients,
                                            a.big_rate))
                log(results["big"][-1])
            if "shards" in scen and kind == "chatd":
                results["shards"] += s_shards(a.quick, work,
                                              [int(x) for x in a.rates_shards.split(",")],
                                              a.runs_shards, a.wait_quiet)
    finally:
        stop_all()
    load.append(os.getloadavg())

    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    cmd = "make bench" + (" BENCH_ARGS='" + " ".join(sys.argv[1:]) + "'" if sys.argv[1:] else "")
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    md = [f"\n## Run of {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, commit {commit}",
          f"\n`{cmd}` on {os.cpu_count()} cores ({cpu}), {platform.system()} "
          f"{platform.release()}; load generator, servers and Redis on the same machine; load "
          f"average {load[0][0]:.2f} / {load[0][1]:.2f} / {load[0][2]:.2f} at the start, "
          f"{load[1][0]:.2f} / {load[1][1]:.2f} / {load[1][2]:.2f} at the end."]
    if results[1]:
        md += ["\n### 1. Idle clients\n",
               table(results[1], ["server", "clients", "connected", "failed", "connect_s", "kib_per_conn"])]
    if results[2]:
        md += ["\n### 2. Fan-out: 10 senders into one room\n",
               table(results[2], ["server", "rate", "clients", "deliveries_per_s", "p50_ms", "p99_ms",
                                  "max_ms", "lost", "dup", "reorder", "cpu_s_per_M", "redis_cpu_s"])]
        best = {}
        for r in results[2]:
            if r["p99_ms"] < 1000 and r["lost"] == 0:
                best[r["server"]] = max(best.get(r["server"], 0), r["deliveries_per_s"])
        md.append("\nHighest rate with p99 < 1 s and nothing lost: " +
                  ", ".join(f"{k} {v:,} deliveries/s" for k, v in best.items()))
        if "chatd" in best and best.get("node"):
            md.append(f" (ratio chatd/node {best['chatd'] / best['node']:.1f}x)")
        png = plot(results[2], os.path.join(REPO, "build", "bench-latency.png"))
        if png:
            md.append(f"\n\nPlot: `{os.path.relpath(png, REPO)}`.")
    if results[3]:
        md += ["\n### 3. One room of all clients, one message per second\n",
               "Server CPU (user + system of the server processes) and the load generator's "
               "CPU (all of chatbench's processes) from the moment all are connected, per "
               "delivery; `others_pct`: the share of the machine's cores that other work took "
               "meanwhile.\n",
               table(results[3], ["server", "clients", "connected", "expected", "delivered",
                                  "p50_ms", "p99_ms", "max_ms", "cpu_us_per_delivery",
                                  "client_cpu_us_per_delivery", "others_pct"])]
    if results[4]:
        md += ["\n### 4. wss idle clients\n",
               "`kib_per_conn`: peak RSS growth (handshakes in flight included) per client;"
               " `kib_per_conn_held`: median RSS growth while every client is held idle.\n",
               table(results[4], ["server", "clients", "connected", "failed", "connect_s",
                                  "handshakes_per_s", "kib_per_conn", "kib_per_conn_held",
                                  "server_cpu_s", "cpu_ms_per_handshake"])]
    if results[5]:
        r0 = results[5][0]
        md += [f"\n### 5. Reconnect storm: SIGKILL of the node holding {r0['killed_node_clients']:,}"
               f" of {r0['clients']:,} idle clients\n",
               "Each dropped client reconnects at once to another node (chatbench --reconnect:"
               " spread evenly over the survivors, next node on failure, at most 10 attempts"
               " with 0.1-2 s backoff, 5 s per attempt). `all_back_s`: from the first drop"
               " until the last dropped client is upgraded again; `down_*`: per client.\n",
               table(results[5], ["server", "clients", "dropped", "back", "never_back",
                                  "all_back_s", "last_back_s", "down_p50_ms", "down_p99_ms",
                                  "down_max_ms", "attempts", "failed", "refused", "http_failed",
                                  "timeouts", "other_failed", "held_at_end", "survivors_cpu_s"])]
    if results[6]:
        md += ["\n### 6. Through Redis: 1,000 clients in one room, 10 senders on node A, "
               "990 receivers on node B\n",
               "`published`: entries XADDed to the stream (Redis `entries-added`); latency from "
               "send on A to receipt on B; deliveries count every client.\n",
               table(results[6], ["server", "rate", "sent", "published_per_s", "deliveries_per_s",
                                  "p50_ms", "p99_ms", "max_ms", "lost", "dup", "reorder",
                                  "cpu_a_s", "cpu_b_s", "redis_cpu_s"])]
        best = {}
        for r in results[6]:
            if "lost" in r and r["p99_ms"] < 1000 and r["lost"] == 0:
                if r["published_per_s"] > best.get(r["server"], (0, 0))[0]:
                    best[r["server"]] = (r["published_per_s"], r["deliveries_per_s"])
        md.append("\nHighest rate with p99 < 1 s and nothing lost: " +
                  (", ".join(f"{k} {v[0]:,} msg/s published ({v[1]:,} deliveries/s)"
                             for k, v in best.items()) or "none"))
    if results[7]:
        n7 = results[7][0]["clients"]
        md += [f"\n### 7. permessage-deflate: {n7:,} clients in one room, 5 senders\n",
               "Every client offers permessage-deflate as Chromium does (`on`) or not (`off`); "
               "where accepted, senders compress too. `bytes_per_delivery`: bytes of data frames "
               "the clients read (headers included) per delivery; `cpu_us_per_delivery`: server "
               "CPU (user + system) from the moment all clients are connected; `compressions`: "
               "the node's `chatd_compressions_total`.\n",
               table(results[7], ["run", "rate", "message", "deflate", "negotiated", "delivered",
                                  "lost",
                                  "bytes_per_delivery", "cpu_us_per_delivery", "compressions",
                                  "messages", "p50_ms", "p99_ms", "kib_per_client"]),
               "\nMedians (both values):\n",
               table(s7_summary(results[7]), ["rate", "message", "deflate", "bytes_per_delivery",
                                              "cpu_us_per_delivery", "compressions_per_message",
                                              "kib_per_client", "p99_ms"])]
    if results[8]:
        md += ["\n### 8. wss burst: every client at once\n",
               "`all_upgraded_s`: from the first connect() until the last client has its 101;"
               " `hs_*`: per client, connect() to 101 (listen queue, TLS, HTTP); CPU: the"
               " server's, until every client is upgraded, per handshake.\n",
               table(results[8], ["server", "key", "groups", "conf", "clients", "connected", "failed",
                                  "all_upgraded_s", "hs_p50_ms", "hs_p99_ms", "hs_max_ms",
                                  "cpu_ms_per_handshake"])]
    if results[9]:
        md += ["\n### 9. wss fan-out: 2,000 clients in one room, 10 senders\n",
               table(results[9], ["server", "rate", "clients", "deliveries_per_s", "p50_ms",
                                  "p99_ms", "lost", "cpu_s_per_M"])]
    if results["big"]:
        rb = results["big"][0]
        md += [f"\n### big. {rb['clients']:,} clients on {rb['nodes']} nodes, one room, "
               f"{rb['rate']:g} message(s) per second\n",
               "All established through scenario 1's loopback source addresses, held idle "
               f"{rb['hold_s']} s (`kib_per_conn`: growth of the servers' summed RSS, the peak "
               "while idle, per client; `kib_per_conn_run`: the peak while the messages went "
               f"out), then {rb['duration_s']} s of {rb['rate']:g} message(s) per second to all "
               "of them; "
               "latency of every delivery, `max_ms` the last "
               "client of the slowest message; server CPU per delivery from the first message "
               "on, the load generator's (all of chatbench's processes) from the moment all "
               "were connected (it answers the servers' pings while idle). "
               "`conntrack_before`: the kernel's connection-tracking entries when it began; "
               "`others_pct`: the share of the machine's cores that other work took from the "
               "moment all were connected.\n",
               table(results["big"], ["server", "clients", "procs", "conntrack_before",
                                      "connected", "failed", "connect_s", "kib_per_conn",
                                      "kib_per_conn_run", "sent", "expected", "delivered",
                                      "lost", "dropped", "p50_ms", "p99_ms", "max_ms",
                                      "cpu_us_per_delivery", "client_cpu_us_per_delivery",
                                      "others_pct"])]
    if results["shards"]:
        md += ["\n### shards: one Redis, then a Redis Cluster of 3 masters with 6 shards\n",
               "Two chatd nodes; six rooms (one per shard of six), one chatbench each, "
               "2 senders on node A and 2 receivers on node B per room, the total rate split "
               "evenly. `published_per_s`: entries added to the shard streams in the send "
               "window; `delivered_per_s`: deliveries per second over clients per room; p50: "
               "median of the rooms', p99: the worst room's; `closed`: clients the server "
               "closed (1013 when a worker's publish_queue is full). CPU: seconds in the send window "
               "(10 s = one core): each node, its consumer thread, its busiest worker; each "
               "Redis; all chatbench processes; `cpu_all`: all of these (the machine's 2 cores "
               "give 20 s at most; the rest went to other work). `load1_before`: the 1-minute "
               "load average before the step.\n",
               table(results["shards"], ["config", "run", "load1_before", "rate", "sent",
                                         "published_per_s", "delivered_per_s", "p50_ms",
                                         "p99_ms", "lost", "closed", "dup", "reorder", "cpu_a",
                                         "consumer_a", "worker_max_a", "cpu_b", "consumer_b",
                                         "worker_max_b", "cpu_redis", "cpu_bench",
                                         "cpu_all"]),
               "\nMedians of the runs (every value in parentheses where they differ):\n",
               table(shards_summary(results["shards"]),
                     ["config", "rate", "runs", "published_per_s", "delivered_per_s", "p50_ms",
                      "p99_ms", "lost", "cpu_a", "consumer_a", "worker_max_a", "cpu_b",
                      "consumer_b", "worker_max_b", "cpu_redis", "cpu_bench", "cpu_all"])]
    text = "\n".join(md) + "\n"
    print(text)
    with open(a.out, "a") as f:
        f.write(text)
    log(f"appended to {a.out}")


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
