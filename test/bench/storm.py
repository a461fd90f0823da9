#!/usr/bin/python3
"""Issue 12's benchmark: a reconnect storm with recovery.

N chatd.v1 clients in R rooms spread over several chatd nodes behind one
redis-server; a sender on the first node sends M messages per second round
the rooms; one node (the last) is SIGKILLed. Every client of that node
reconnects at once to the next node with `since` and `epoch` of what it
last saw. Printed:

  - time from the SIGKILL until every client is back with recovered:true
    (and p50/p99 over the clients that were cut off);
  - Redis commands used per recovered client: INFO commandstats over the
    recovery, minus the traffic's own commands (measured over the same
    length of time just before the kill), divided by the clients recovered;
  - lost / duplicated / foreign messages over all clients, checked against
    what the sender got acked, per room; recovered:false answers.

  test/bench/storm.py                          # the issue's 10,000 clients in 100 rooms, 3 nodes
  test/bench/storm.py --clients 1000 --rooms 20 --warm 3 --hold 5   # a smoke check

Clients run in --procs worker processes (this script again with
--client-proc), at most 20,000 open files each, and bind source addresses
127.0.0.2 .. so that no address runs out of ephemeral ports. Only loopback;
every process started is stopped at the end by its pid; every wait is
bounded. Python 3 standard library plus Debian's python3-websockets.
"""

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHATD = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")
PROTO = "chatd.v1"

procs = []  # (Popen, name)


def log(*a):
    print("storm:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def id_key(i):
    ms, n = i.split("-")
    return int(ms), int(n)


# --------------------------------------------------------------------------
# Redis without a client library


def redis_cmd(port, *args, timeout=10):
    req = b"*%d\r\n" % len(args)
    for a in args:
        a = str(a).encode()
        req += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(req)
        with s.makefile("rb") as f:
            return _resp(f)


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


def commandstats(port):
    """{command: calls} from INFO commandstats."""
    out = {}
    for line in redis_cmd(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, rest = line[len("cmdstat_"):].split(":", 1)
            fields = dict(kv.split("=", 1) for kv in rest.split(","))
            out[name] = int(fields["calls"])
    return out


def delta(after, before):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


# --------------------------------------------------------------------------
# processes


def start(cmd, name, logpath=None, **kw):
    out = open(logpath, "ab") if logpath else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stdout=kw.pop("stdout", out), stderr=out, **kw)
    procs.append((p, name))
    return p


def stop(p, timeout=15):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def stop_all():
    for p, _ in reversed(procs):
        stop(p, 10)


def http_status(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            return int(s.recv(64).split(b" ", 2)[1])
    except (OSError, ValueError, IndexError):
        return None


def wait_ready(port, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(port, "/readyz") == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"node :{port} not ready within {timeout}s")


# --------------------------------------------------------------------------
# the client processes


class Client:
    __slots__ = ("i", "user", "room", "node", "since", "epoch", "got", "cut", "t_cut", "t_back", "codes",
                 "recovered", "not_recovered", "reconnects", "errors", "ws", "joined_once", "cut_at")

    def __init__(self, i, room, node):
        self.i, self.user, self.room, self.node = i, f"u{i}", room, node
        self.since = self.epoch = None
        self.got = []
        self.cut = False
        self.t_cut = self.t_back = None
        self.recovered = 0
        self.not_recovered = 0
        self.reconnects = 0
        self.errors = []
        self.ws = None
        self.joined_once = False
        self.codes = []
        self.cut_at = None  # the node it was on when first cut off


async def client_proc(a):
    import websockets

    nodes = a.nodes.split(",")
    src = a.src_ips.split(",") if a.src_ips else [None]
    clients = [Client(i, f"r{i % a.rooms}", i % len(nodes)) for i in range(a.first, a.first + a.count)]
    stopping = False
    sem = asyncio.Semaphore(a.concurrency)

    def out(kind, **kw):
        print(json.dumps(dict(kind=kind, **kw)), flush=True)

    async def connect(c):
        q = f"username={c.user}&room={c.room}"
        if c.since is not None:
            q += f"&since={c.since}&epoch={c.epoch}"
        ip = src[c.i % len(src)]
        kw = {"local_addr": (ip, 0)} if ip else {}
        return await websockets.connect(f"ws://127.0.0.1:{nodes[c.node]}/?{q}", subprotocols=[PROTO],
                                        open_timeout=30, close_timeout=2, ping_interval=None,
                                        max_size=None, max_queue=None, **kw)

    async def run(c):
        tries = 0
        while not stopping and tries < 200:
            try:
                async with sem:
                    c.ws = await connect(c)
                j = json.loads(await asyncio.wait_for(c.ws.recv(), 30))
                if j.get("op") != "joined":
                    c.errors.append(f"first frame {j}")
                tries = 0
            except Exception as e:  # noqa: BLE001 -- a refused or failed connect: next node
                tries += 1
                c.node = (c.node + 1) % len(nodes)
                if c.cut and len(c.errors) < 5:
                    c.errors.append(f"connect: {type(e).__name__}")
                await asyncio.sleep(min(1.0, 0.05 * tries) * random.random())
                continue
            if c.joined_once:
                if j.get("recovered") is True:
                    c.recovered += 1
                else:
                    c.not_recovered += 1
                c.t_back = time.time()
            c.joined_once = True
            c.epoch = j.get("epoch")
            try:
                async for m in c.ws:
                    f = json.loads(m)
                    if f.get("op") == "msg" and f.get("room") == c.room:
                        c.got.append(f["id"])
                        c.since = f["id"]
            except websockets.ConnectionClosed:
                pass
            except Exception as e:  # noqa: BLE001
                c.errors.append(f"read: {e!r}")
            c.codes.append(c.ws.close_code)
            if stopping:
                return
            # cut off (its node died): straight to another node, spread
            # over the others as a load balancer would
            c.cut = True
            c.t_cut = c.t_cut or time.time()
            c.cut_at = c.node if c.cut_at is None else c.cut_at
            c.reconnects += 1
            if len(nodes) > 1:
                c.node = (c.node + 1 + c.i % (len(nodes) - 1)) % len(nodes)

    tasks = [asyncio.ensure_future(run(c)) for c in clients]
    loop = asyncio.get_running_loop()
    t_status = 0.0
    reading = loop.run_in_executor(None, sys.stdin.readline)  # one reader at a time
    while True:
        line = None
        done, _ = await asyncio.wait([reading], timeout=0.5)
        if done:
            line = reading.result() or "stop"
            reading = loop.run_in_executor(None, sys.stdin.readline)
        if time.monotonic() - t_status >= 0.5 or line:
            t_status = time.monotonic()
            out("status", joined=sum(1 for c in clients if c.joined_once),
                cut=sum(1 for c in clients if c.cut),
                back=sum(1 for c in clients if c.cut and c.t_back),
                recovered=sum(1 for c in clients if c.cut and c.recovered),
                not_recovered=sum(c.not_recovered for c in clients))
        if line is None:
            continue
        cmd = line.split()
        if not cmd or cmd[0] == "stop":
            break
        if cmd[0] == "check":
            with open(cmd[1]) as f:
                truth = json.load(f)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # until everyone has its room's last message
                if all(not truth[c.room] or truth[c.room][-1] in c.got[-3:] for c in clients):
                    break
                await asyncio.sleep(0.1)
            lost = dup = foreign = unordered = 0
            examples = []
            for c in clients:
                ids = truth[c.room]
                pos = {i: k for k, i in enumerate(ids)}
                got = c.got
                dup += len(got) - len(set(got))
                foreign += sum(1 for i in got if i not in pos)
                mine = [pos[i] for i in got if i in pos]
                unordered += sum(1 for x, y in zip(mine, mine[1:]) if y <= x)
                if mine:
                    have = set(mine)
                    missing = [k for k in range(mine[0], len(ids)) if k not in have]
                    lost += len(missing)
                    if missing and len(examples) < 5:
                        examples.append(f"{c.user}@{c.room}: {[ids[k] for k in missing[:4]]}")
            cut = [c for c in clients if c.cut]
            out("result", clients=len(clients), cut=len(cut),
                back=sum(1 for c in cut if c.t_back), recovered=sum(1 for c in cut if c.recovered),
                not_recovered=sum(c.not_recovered for c in clients),
                back_times=[c.t_back - c.t_cut for c in cut if c.t_back and c.t_cut],
                t_last_back=max([c.t_back for c in cut if c.t_back] or [0]),
                close_codes={str(k): n for k, n in collections.Counter(
                    x for c in clients for x in c.codes if not stopping).items()},
                cut_from_survivors=sum(1 for c in cut if c.cut_at != len(nodes) - 1),
                lost=lost, dup=dup, foreign=foreign, unordered=unordered, examples=examples,
                received=sum(len(c.got) for c in clients),
                errors=[e for c in clients for e in c.errors][:10])
    stopping = True
    for c in clients:
        if c.ws is not None:
            try:
                await asyncio.wait_for(c.ws.close(), 1)
            except Exception:  # noqa: BLE001
                pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------
# the sender (in the orchestrator)


class Sender:
    """Connections on the first node joined in every room (up to 50 each),
    sending `rate` messages per second round the rooms; the acks per room,
    in order, are the truth."""

    def __init__(self, port, rooms, rate):
        self.port, self.rooms, self.rate = port, rooms, rate
        self.truth = {f"r{k}": [] for k in range(rooms)}
        self.pending = {}
        self.errors = []
        self.sent = 0
        self.sending = False

    async def open(self):
        import websockets
        self.conns = []
        names = list(self.truth)
        for k in range(0, len(names), 50):
            ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/?username=sender{k}",
                                          subprotocols=[PROTO], open_timeout=30, ping_interval=None,
                                          max_size=None, max_queue=None)
            for room in names[k:k + 50]:
                await ws.send(json.dumps({"op": "join", "room": room}))
            self.conns.append((ws, names[k:k + 50]))
        self.readers = [asyncio.ensure_future(self._read(ws)) for ws, _ in self.conns]

    async def _read(self, ws):
        import websockets
        try:
            async for m in ws:
                f = json.loads(m)
                if f.get("op") == "ack" and f.get("ref") in self.pending:
                    room = self.pending.pop(f["ref"])
                    self.truth[room].append(f["id"])
                elif f.get("op") == "error":
                    self.errors.append(f)
                    self.pending.pop(f.get("ref"), None)
        except websockets.ConnectionClosed as e:
            if self.sending:
                self.errors.append(f"sender connection closed: {e}")

    async def run(self):
        self.sending = True
        t0 = time.monotonic()
        conn_of = {room: ws for ws, rooms in self.conns for room in rooms}
        names = list(self.truth)
        k = 0
        while self.sending:
            await asyncio.sleep(max(0.0, t0 + k / self.rate - time.monotonic()))
            room = names[k % len(names)]
            ref = f"s{k}"
            self.pending[ref] = room
            await conn_of[room].send(json.dumps({"op": "send", "room": room, "text": f"{room}:{k}", "ref": ref}))
            self.sent += 1
            k += 1

    async def finish(self, timeout=30):
        self.sending = False
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for room in self.truth:
            self.truth[room].sort(key=id_key)


# --------------------------------------------------------------------------
# the orchestrator


def node_conf(path, port, redis_port, a):
    lines = [f"listen = 127.0.0.1:{port}", "broker = redis", f"redis_url = redis://127.0.0.1:{redis_port}",
             "log_level = warn", f"workers = {a.workers}", f"presence_ttl = {a.presence_ttl}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Pool:
    """The client processes; their status lines are read by a thread."""

    def __init__(self, a, ports, work):
        import threading
        self.procs = []
        self.status = {}
        self.results = {}
        per = -(-a.clients // a.procs)
        ips = [f"127.0.0.{k}" for k in range(2, 2 + a.src_ips)] if a.src_ips else []
        for p in range(a.procs):
            first, count = p * per, min(per, a.clients - p * per)
            if count <= 0:
                break
            my_ips = ips[p::a.procs] or ips
            cmd = [sys.executable, os.path.abspath(__file__), "--client-proc", "--nodes", ",".join(map(str, ports)),
                   "--first", str(first), "--count", str(count), "--rooms", str(a.rooms),
                   "--concurrency", str(a.concurrency), "--src-ips", ",".join(my_ips)]
            proc = start(cmd, f"clients{p}", os.path.join(work, f"clients{p}.log"),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                         preexec_fn=lambda: _nofile(20000))
            self.procs.append(proc)
            t = threading.Thread(target=self._watch, args=(p, proc), daemon=True)
            t.start()

    def _watch(self, p, proc):
        for line in proc.stdout:
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m["kind"] == "status":
                self.status[p] = m
            elif m["kind"] == "result":
                self.results[p] = m

    def total(self, key):
        return sum(s.get(key, 0) for s in self.status.values())

    def tell(self, line):
        for proc in self.procs:
            try:
                proc.stdin.write(line + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass


def _nofile(n):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def wait(pred, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def orchestrate(a):
    work = tempfile.mkdtemp(prefix="storm-")
    log(f"work dir {work}")
    rport = free_port()
    rdir = os.path.join(work, "redis")
    os.makedirs(rdir)
    start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--dir", rdir, "--maxclients", "10000"], "redis", os.path.join(work, "redis.log"))
    wait(lambda: _ping(rport), 10, "redis")
    ports, nodes = [], []
    for k in range(a.nodes):
        port = free_port()
        conf = os.path.join(work, f"node{k}.conf")
        node_conf(conf, port, rport, a)
        nodes.append(start([a.chatd, "-c", conf], f"node{k}", os.path.join(work, f"node{k}.log"),
                           stdin=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        wait_ready(port)

    loop = asyncio.new_event_loop()
    sender = Sender(ports[0], a.rooms, a.rate)
    loop.run_until_complete(asyncio.wait_for(sender.open(), 30))
    pool = Pool(a, ports, work)
    t0 = time.monotonic()
    log(f"{a.clients} clients in {a.rooms} rooms over {a.nodes} nodes, {len(pool.procs)} client processes")

    def run_loop_for(seconds):
        loop.run_until_complete(asyncio.sleep(seconds))

    send_task = loop.create_task(sender.run())
    for _ in range(100000):
        run_loop_for(0.2)
        if pool.total("joined") >= a.clients:
            break
        if time.monotonic() - t0 > a.connect_timeout:
            raise RuntimeError(f"only {pool.total('joined')} of {a.clients} clients joined "
                               f"within {a.connect_timeout}s")
    log(f"all {a.clients} joined in {time.monotonic() - t0:.1f}s; traffic for {a.warm}s")
    run_loop_for(max(0.0, a.warm - a.baseline))
    c0 = commandstats(rport)
    tb = time.monotonic()
    run_loop_for(a.baseline)
    c1 = commandstats(rport)
    base_s = time.monotonic() - tb
    base = delta(c1, c0)

    victim = nodes[-1]
    log(f"SIGKILL node{a.nodes - 1} (pid {victim.pid})")
    t_kill_wall = time.time()
    t_kill = time.monotonic()
    victim.kill()
    victim.wait(10)
    expected_cut = len(range(a.nodes - 1, a.clients, a.nodes))
    for _ in range(100000):
        run_loop_for(0.1)
        # every cut happens at the kill; the statuses come twice a second
        if time.monotonic() - t_kill > 1.5 and 0 < pool.total("cut") <= pool.total("recovered"):
            break
        if time.monotonic() - t_kill > a.recover_timeout:
            log(f"not every client recovered within {a.recover_timeout}s: "
                f"cut {pool.total('cut')}, back {pool.total('back')}, recovered {pool.total('recovered')}")
            break
    t_all = time.monotonic() - t_kill
    log(f"cut {pool.total('cut')}, back {pool.total('back')}, recovered {pool.total('recovered')} "
        f"after {t_all:.2f}s; traffic for {a.hold}s more")
    c2 = commandstats(rport)
    storm = delta(c2, c1)
    run_loop_for(a.hold)
    send_task.cancel()
    loop.run_until_complete(asyncio.gather(send_task, return_exceptions=True))
    loop.run_until_complete(sender.finish())
    truth_path = os.path.join(work, "truth.json")
    with open(truth_path, "w") as f:
        json.dump(sender.truth, f)
    pool.tell(f"check {truth_path}")
    for _ in range(100000):  # the loop runs meanwhile: the sender keeps reading
        if len(pool.results) == len(pool.procs):
            break
        if time.monotonic() - t_kill > a.recover_timeout + a.hold + 120:
            raise RuntimeError("the client processes' results did not come")
        run_loop_for(0.1)
    pool.tell("stop")
    for proc in pool.procs:
        try:
            proc.stdin.close()  # ends the process' stdin reader thread too
        except OSError:
            pass
    for proc in pool.procs:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for ws, _ in sender.conns:
        try:
            loop.run_until_complete(asyncio.wait_for(ws.close(), 5))
        except Exception:  # noqa: BLE001 -- closed already
            pass
    for t in sender.readers:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*sender.readers, return_exceptions=True))

    R = pool.results.values()
    s = lambda k: sum(r[k] for r in R)  # noqa: E731
    back_times = [t for r in R for t in r["back_times"]]
    recovered = s("recovered")
    storm_dur = t_all
    storm_calls = sum(storm.values())
    base_rate = sum(base.values()) / base_s if base_s else 0
    extra = storm_calls - base_rate * storm_dur
    top = sorted(((k, v - base.get(k, 0) / base_s * storm_dur) for k, v in storm.items()),
                 key=lambda kv: -kv[1])[:6]
    last_back = max((r["t_last_back"] for r in R), default=0)
    figures = {
        "clients": a.clients, "rooms": a.rooms, "nodes": a.nodes, "rate msg/s": a.rate,
        "clients cut off": s("cut"), "about (clients / nodes)": expected_cut,
        "cut from surviving nodes": s("cut_from_survivors"),
        "close codes seen": dict(sum((collections.Counter(r["close_codes"]) for r in R), collections.Counter())),
        "back": s("back"), "recovered:true": recovered, "recovered:false": s("not_recovered"),
        "all back and recovered s": round(last_back - t_kill_wall, 2) if last_back and recovered >= s("cut") else "no",
        "back p50 s": round(pct(back_times, 0.5), 3) if back_times else None,
        "back p99 s": round(pct(back_times, 0.99), 3) if back_times else None,
        "redis commands during recovery": storm_calls,
        "traffic's own (baseline) commands/s": round(base_rate, 1),
        "redis commands per recovered client": round(extra / recovered, 2) if recovered else None,
        "scripts (evalsha) per recovered client": round(
            (storm.get("evalsha", 0) - base.get("evalsha", 0) / base_s * storm_dur) / recovered, 2)
        if recovered and base_s else None,
        "top commands over baseline (calls inside scripts count)": {k: round(v) for k, v in top},
        "messages acked": sum(len(v) for v in sender.truth.values()),
        "sender errors": len(sender.errors),
        "received": s("received"),
        "lost": s("lost"), "duplicated": s("dup"), "never sent": s("foreign"), "out of order": s("unordered"),
        "examples": [e for r in R for e in r["examples"]][:5],
        "client errors": [e for r in R for e in r["errors"]][:5],
    }
    print(json.dumps(figures, indent=2))
    ok = figures["lost"] == 0 and figures["duplicated"] == 0 and figures["never sent"] == 0 \
        and recovered >= s("cut") and figures["recovered:false"] == 0
    log("OK" if ok else "FAILED: see the figures")
    return 0 if ok else 1


def _ping(port):
    try:
        return redis_cmd(port, "PING", timeout=1) == "PONG"
    except (OSError, RuntimeError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--rooms", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second, round the rooms")
    ap.add_argument("--procs", type=int, default=4, help="client processes (20,000 fds each at most)")
    ap.add_argument("--src-ips", type=int, default=40, help="source addresses 127.0.0.2.. (0: the default)")
    ap.add_argument("--concurrency", type=int, default=500, help="handshakes in flight per client process")
    ap.add_argument("--workers", default="auto", help="chatd workers per node")
    ap.add_argument("--presence-ttl", default="15s")
    ap.add_argument("--warm", type=float, default=10.0, help="seconds of traffic before the kill")
    ap.add_argument("--baseline", type=float, default=5.0, help="the last seconds of warm: commands/s of the traffic")
    ap.add_argument("--hold", type=float, default=5.0, help="seconds of traffic after everyone is back")
    ap.add_argument("--connect-timeout", type=float, default=180.0)
    ap.add_argument("--recover-timeout", type=float, default=120.0)
    ap.add_argument("--chatd", default=CHATD)
    if "--client-proc" in sys.argv[1:]:
        cp = argparse.ArgumentParser()
        cp.add_argument("--client-proc", action="store_true")
        cp.add_argument("--nodes", help="ports, comma-separated")
        cp.add_argument("--first", type=int)
        cp.add_argument("--count", type=int)
        cp.add_argument("--rooms", type=int)
        cp.add_argument("--concurrency", type=int)
        cp.add_argument("--src-ips", default="")
        asyncio.run(client_proc(cp.parse_args()))
        return 0
    a = ap.parse_args()
    a.baseline = min(a.baseline, a.warm)
    try:
        return orchestrate(a)
    finally:
        stop_all()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
