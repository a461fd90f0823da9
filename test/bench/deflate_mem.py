#!/usr/bin/python3
"""Issue 16: server memory per idle connection with and without
permessage-deflate, after one message each way.

For each mode (plain, deflate) and run: a fresh chatd node (workers = 2,
compression_min_size = 0, plus --conf lines), warmed up by 4 clients so that
each worker's compressor and decompressor exist; then N raw clients, each in
a room of its own, each sending one message (compressed, in deflate mode)
and reading it back (compressed); one second later, the node's RSS growth
divided by N. Every process it starts is stopped by its pid.

  test/bench/deflate_mem.py [--clients 5000] [--runs 2] [--conf 'history_size = 0']
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "test", "integration"))
from conftest import OP_TEXT  # noqa: E402
from test_deflate import CHROME_OFFER, LONG, ZRaw, deflate, rss_kib  # noqa: E402

CHATD = os.environ.get("CHATD_BIN") or os.path.join(REPO, "build", "chatd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exchange(port, name, room, offer):
    w = ZRaw(port, timeout=10)
    w.handshake(f"/?username={name}&room={room}", offer=offer)
    w.send_frame(OP_TEXT, deflate(LONG) if offer else LONG, rsv=4 if offer else 0)
    return w


def one(mode, n, extra, work):
    port = free_port()
    conf = os.path.join(work, f"{mode}.conf")
    with open(conf, "w") as f:
        f.write(f"listen = 127.0.0.1:{port}\nworkers = 2\nlog_level = warn\n"
                f"compression_min_size = 0\n" + "".join(line + "\n" for line in extra))
    p = subprocess.Popen([CHATD, "-c", conf], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    clients = []
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        offer = CHROME_OFFER if mode == "deflate" else None
        for k in range(4):
            w = exchange(port, f"warm{k}", f"warm{k}", offer)
            w.recv_z()
            w.close()
        time.sleep(0.5)
        base = rss_kib(p.pid)
        for i in range(n):
            clients.append(exchange(port, f"u{i}", f"r{i}", offer))
        for w in clients:
            compressed, _, _ = w.recv_z()
            assert compressed == (mode == "deflate")
        time.sleep(1)
        return (rss_kib(p.pid) - base) / n
    finally:
        for w in clients:
            w.close()
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--conf", action="append", default=[], help="a line for the node's config")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chatd-mem-") as work:
        for run in range(1, a.runs + 1):
            for mode in ("plain", "deflate"):
                per = one(mode, a.clients, a.conf, work)
                print(f"run {run} {mode}: {per:.3f} KiB per idle connection "
                      f"({a.clients} clients{', ' + '; '.join(a.conf) if a.conf else ''})", flush=True)


if __name__ == "__main__":
    main()
