#!/usr/bin/python3
"""make bench: chatd against the Node.js ws + ioredis peer, same scenarios,
same load generator (build/chatbench), same run.

Starts its own redis-server and server nodes on loopback, samples every
server's RSS and CPU time from /proc, and appends a dated table to
BENCHMARKS.md (with the commit and the machine) plus a latency plot.
Stops everything it started, also when interrupted.

  test/bench/bench.py [--scenarios 1,2,3,4,5] [--servers chatd,node] [--quick]

--quick scales the scenarios down (10k clients instead of 60k, shorter
holds) for a run that fits in a few minutes.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHATD = os.path.join(REPO, "build", "chatd")
CHATBENCH = os.path.join(REPO, "build", "chatbench")
PEER = os.path.join(REPO, "test", "bench", "peer", "server.js")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SRC_IPS = "127.0.0.2-127.0.0.60"

procs = []  # (Popen, name): everything we started, stopped at exit


def log(*a):
    print("bench:", *a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    for p, _ in list(procs):
        stop(p, 10)


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except FileNotFoundError:
        return 0.0


class Cluster:
    """A redis-server and `nodes` servers of one kind sharing it."""

    def __init__(self, kind, nodes, workdir, tls=None):
        self.kind, self.workdir = kind, workdir
        self.redis_port = free_port()
        rdir = os.path.join(workdir, f"redis-{self.redis_port}")
        os.makedirs(rdir, exist_ok=True)
        self.redis = start(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", "--dir", rdir,
                            "--maxclients", "1000"], "redis")
        wait_port(self.redis_port)
        self.nodes, self.ports = [], []
        for i in range(nodes):
            port = free_port()
            logp = os.path.join(workdir, f"{kind}-{port}.log")
            url = f"redis://127.0.0.1:{self.redis_port}"
            if kind == "chatd":
                conf = os.path.join(workdir, f"chatd-{port}.conf")
                lines = [f"listen = 127.0.0.1:{port}", "broker = redis", f"redis_url = {url}",
                         "log_level = warn", "workers = auto"]
                if tls:
                    tport = free_port()
                    lines += [f"tls_listen = 127.0.0.1:{tport}", f"tls_cert = {tls[0]}",
                              f"tls_key = {tls[1]}"]
                    port = tport
                with open(conf, "w") as f:
                    f.write("\n".join(lines) + "\n")
                p = start([CHATD, "-c", conf], f"chatd:{port}", logpath=logp)
            else:
                if tls:
                    raise RuntimeError("the Node peer is measured without TLS here")
                p = start(["node", PEER], f"node:{port}", env={"PORT": str(port), "REDIS_URL": url},
                          logpath=logp)
            wait_port(port)
            self.nodes.append(p)
            self.ports.append(port)

    def rss_kib(self):
        return sum(rss_kib(p.pid) for p in self.nodes)

    def cpu_s(self):
        return sum(cpu_s(p.pid) for p in self.nodes)

    def redis_cpu_s(self):
        return cpu_s(self.redis.pid)

    def urls(self, scheme="ws", room=None):
        q = "username=u{i}" + (f"&room={room}" if room else "")
        return [f"{scheme}://127.0.0.1:{p}/?{q}" for p in self.ports]

    def close(self):
        for p in self.nodes:
            stop(p)
        stop(self.redis)


def chatbench(args, cluster, timeout):
    """Runs chatbench; samples the cluster's RSS while it runs. Returns the
    JSON report plus rss_peak_kib."""
    cmd = [CHATBENCH, "-v"] + args
    log(" ".join(cmd))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append((p, "chatbench"))
    at_start = {}

    def watch_stderr():
        # chatbench -v says when every client is connected and the measured
        # phase begins: server CPU is counted from there, so handshakes do
        # not blur the cost per delivery.
        for line in p.stderr:
            if "starting the run" in line and "cpu" not in at_start:
                at_start["cpu"] = cluster.cpu_s()
                at_start["redis_cpu"] = cluster.redis_cpu_s()
            if "client " not in line:
                sys.stderr.write(line)

    t = threading.Thread(target=watch_stderr, daemon=True)
    t.start()
    peak = 0
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        peak = max(peak, cluster.rss_kib())
        time.sleep(0.5)
    if p.poll() is None:
        p.kill()
    out = p.stdout.read()
    p.wait()
    t.join(5)
    procs[:] = [(q, n) for q, n in procs if q is not p]
    sys.stderr.write(out)
    line = [l for l in out.splitlines() if l.startswith("{")]
    if not line:
        raise RuntimeError("chatbench printed no JSON report")
    r = json.loads(line[-1])
    r["rss_peak_kib"] = peak
    r["cpu_at_start"] = at_start.get("cpu", cluster.cpu_s())
    r["redis_cpu_at_start"] = at_start.get("redis_cpu", cluster.redis_cpu_s())
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
        return {"scenario": 3, "server": kind, "clients": nodes * per, "connected": r["connected"],
                "expected": r["expected"], "delivered": r["delivered"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"]}
    finally:
        c.close()


def s4_wss(kind, q, work):
    n = 10000
    tls = (os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"))
    if not os.path.exists(tls[0]):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                        "-keyout", tls[1], "-out", tls[0]], check=True, capture_output=True)
    c = Cluster(kind, 1, work, tls=tls)
    try:
        time.sleep(1)
        base = c.rss_kib()
        cpu0 = c.cpu_s()
        r = chatbench(["--mode", "idle", "--conns", str(n), "--procs", "2", "--ramp", "0",
                       "--insecure", "--duration", "10", "--connect-timeout", "120"]
                      + sum([["--url", u] for u in c.urls("wss")], []), c, timeout=300)
        return {"scenario": 4, "server": kind, "clients": n, "connected": r["connected"],
                "failed": r["failed"], "connect_s": r["connect_s"],
                "handshakes_per_s": round(r["connected"] / max(1e-9, r["connect_s"])),
                "kib_per_conn": round((r["rss_peak_kib"] - base) / max(1, r["connected"]), 2),
                "server_cpu_s": round(c.cpu_s() - cpu0, 2)}
    finally:
        c.close()


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
    ap.add_argument("--scenarios", default="1,2,3,4")
    ap.add_argument("--servers", default="chatd,node")
    ap.add_argument("--rates", default="5,10,20,50,100,200")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(REPO, "BENCHMARKS.md"))
    a = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: (stop_all(), sys.exit(130)))
    scen = {int(x) for x in a.scenarios.split(",")}
    servers = a.servers.split(",")
    rates = [float(x) if "." in x else int(x) for x in a.rates.split(",")]
    work = tempfile.mkdtemp(prefix="chatd-bench-")
    results = {1: [], 2: [], 3: [], 4: []}
    try:
        for kind in servers:
            if 1 in scen:
                results[1].append(s1_idle(kind, a.quick, work)); log(results[1][-1])
            if 2 in scen:
                results[2] += s2_fanout(kind, a.quick, work, rates)
            if 3 in scen:
                results[3].append(s3_big_room(kind, a.quick, work)); log(results[3][-1])
            if 4 in scen and kind == "chatd":
                results[4].append(s4_wss(kind, a.quick, work)); log(results[4][-1])
    finally:
        stop_all()

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
          f"{platform.release()}; load generator, servers and Redis on the same machine."]
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
               table(results[3], ["server", "clients", "connected", "expected", "delivered",
                                  "p50_ms", "p99_ms", "max_ms"])]
    if results[4]:
        md += ["\n### 4. wss idle clients\n",
               table(results[4], ["server", "clients", "connected", "failed", "connect_s",
                                  "handshakes_per_s", "kib_per_conn", "server_cpu_s"])]
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
