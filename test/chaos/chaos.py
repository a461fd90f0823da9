#!/usr/bin/python3
"""chatd chaos run (issue 11): `make chaos`, CHAOS_SECONDS (default 300).

Starts its own redis-server (appendonly yes, appendfsync always), the
fault proxy of test/integration/faultproxy.py in front of it, and two chatd
nodes (broker = redis through the proxy, redis_timeout 2s) on free
127.0.0.1 ports. The checker of test/integration/checker.py runs the whole
time: senders on both nodes send numbered messages at a steady rate, every
client collects what arrives, closed clients come back under new names.

Meanwhile, one after another with quiet gaps of CHAOS_GAP seconds (default
4-10, random), it injects random faults from the fault tests' list:

  refuse-write    one publish (XADD / EVALSHA / EVAL) refused with OOM,
                  LOADING or READONLY mid-pipeline
  oom             every write refused with OOM for 100 ms, three times
  client-kill     CLIENT KILL TYPE normal (straight to Redis), twice
  redis-restart   redis-server stopped and started again (its data kept)
  redis-sigstop   redis-server frozen with SIGSTOP for 5 s
  blackhole       every Redis connection silent for 15 s, never closed
  redis-empty     redis-server restarted without its data (what it held
                  but no node had read yet, sent from 2 s before the stop
                  until Redis exited, is excused from "delivered everywhere")
  refuse-conns    Redis unreachable (connections closed and refused) for 3 s
  loading         every command answered -LOADING for 2 s
  no-backend      every connection accepted and closed at once for 3 s (a
                  load balancer with no backend)
  script-flush    SCRIPT FLUSH, then one NOSCRIPT injected mid-pipeline
  delay           Redis 50 ms away each way for 5 s
  node-sigterm    a node stopped with SIGTERM (must exit 0, store what it
                  accepted, close clients with 1001), started again
  node-sigkill    a node killed with SIGKILL, started again
  node-late       a node stopped, then started while Redis is unreachable;
                  its clients must miss nothing sent after their 101

At the end it stops the traffic, lets the nodes settle (at most 30 s),
runs the checker and prints the figures: messages sent, echoed, delivered,
refused (by close code), faults injected (by kind), max delivery latency.
Exits 1 on any checker violation, a node exiting non-zero after SIGTERM, a
sanitizer report in a node's log, or a close code 1006 not caused by a
SIGKILL.

Environment: CHAOS_SECONDS, CHAOS_SEED (random by default; printed),
CHAOS_RATE (messages/s per sender, 20), CHAOS_SENDERS (per node, 2),
CHAOS_FAULTS (comma-separated subset of the kinds above), CHATD_BIN
(default build/chatd), CHAOS_KEEP=1 keeps the temp dir with the logs.
Only the processes it started are ever signalled.
"""

import asyncio
import collections
import os
import pathlib
import random
import shutil
import signal
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "test", "integration"))
os.environ.setdefault("CHATD_BIN", os.path.join(REPO, "build", "chatd"))

import pytest  # noqa: E402  (conftest's helpers fail through pytest.fail)

import conftest  # noqa: E402
from checker import Checker, nodes_delivering  # noqa: E402
from conftest import Chatd, RedisServer, sanitizer_report  # noqa: E402
from faultproxy import (LOADING, NOSCRIPT, OOM, READONLY, WRITE_COMMANDS,  # noqa: E402
                        FaultProxy, command_name)


def env_num(name, default):
    v = os.environ.get(name)
    return type(default)(v) if v else default


SECONDS = env_num("CHAOS_SECONDS", 300.0)
SEED = env_num("CHAOS_SEED", random.randrange(1 << 30))
RATE = env_num("CHAOS_RATE", 20.0)
SENDERS = env_num("CHAOS_SENDERS", 2)
GAP = (4.0, 10.0)
SETTLE = 30.0
Failed = pytest.fail.Exception


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Chaos:
    def __init__(self, tmp):
        self.tmp = tmp
        self.redis = RedisServer(tmp, args=["--appendfsync", "always"])
        self.proxy = None
        self.nodes = []
        self.faults = collections.Counter()
        self.problems = []
        self.kills = []          # (node name, monotonic time) of every SIGKILL
        self.windows = []        # (kind, start, end) of every fault
        self.checker = None
        self.rng = random.Random(SEED)

    # -- processes -------------------------------------------------------------

    def start(self):
        self.redis.start()
        self.proxy = FaultProxy(self.redis.port).start()
        for i in range(2):
            n = Chatd(self.tmp, f"n{i}", dict(broker="redis", redis_url=self.proxy.url, workers=2,
                                             redis_timeout="2s", shutdown_timeout="5s"))
            n.start()
            self.nodes.append(n)

    def stop_node(self, n, sig=signal.SIGTERM):
        rc, problems = n.stop(sig)
        self.problems += problems
        if rc != 0:
            self.problems.append(f"{n.name} exited with {rc} after {sig.name}")

    def start_node(self, n):
        try:
            n.start(timeout=30)
        except Failed as e:
            self.problems.append(f"{n.name} did not start again: {str(e)[:500]}")

    def shutdown(self):
        for n in self.nodes:
            if n.proc is not None:
                self.stop_node(n)
            rep = sanitizer_report(n.log())
            if rep:
                self.problems.append(f"{n.name} log has a sanitizer report: {rep}")
        if self.proxy:
            self.proxy.stop()
        try:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        except (OSError, AttributeError):
            pass
        self.redis.stop()

    # -- faults ----------------------------------------------------------------

    async def t(self, fn, *a):
        return await asyncio.to_thread(fn, *a)

    async def f_refuse_write(self):
        err = self.rng.choice([OOM, LOADING, READONLY])
        rule = await self.t(lambda: self.proxy.refuse(WRITE_COMMANDS, err, count=1, hold=2))
        deadline = time.monotonic() + 10
        while rule.hits < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await self.t(self.proxy.remove, rule)
        return f"{err.split()[0]}, {rule.hits} refused"

    async def f_oom(self):
        rule = await self.t(lambda: self.proxy.refuse(WRITE_COMMANDS, OOM, active=False))
        for _ in range(3):
            await self.t(self.proxy.set_active, rule, True)
            await asyncio.sleep(0.1)
            await self.t(self.proxy.set_active, rule, False)
            await asyncio.sleep(1.0)
        await self.t(self.proxy.remove, rule)
        return f"{rule.hits} writes refused"

    async def f_client_kill(self):
        killed = []
        for _ in range(2):
            killed.append(await self.t(self.redis.cli, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            await asyncio.sleep(1.0)
        return f"killed {killed}"

    async def f_redis_restart(self):
        await self.t(self.redis.stop)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await self.t(self.redis.start)
        return ""

    async def f_redis_sigstop(self):
        os.kill(self.redis.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(5.0)
        finally:
            os.kill(self.redis.proc.pid, signal.SIGCONT)
        return ""

    async def f_blackhole(self):
        await self.t(self.proxy.blackhole, "drop")
        try:
            await asyncio.sleep(15.0)
        finally:
            await self.t(self.proxy.heal)
        return ""

    async def f_redis_empty(self):
        info = ""
        if self.rng.random() < 0.5:
            # the old stream's ids ran ahead of the clock: the new ones go backwards
            ahead = f"{int(time.time() * 1000) + 3600 * 1000}-0"
            await self.t(self.redis.cli, "XADD", "chatd:messages", ahead, "room", "elsewhere",
                         "user", "clock", "text", "ahead")
            await asyncio.sleep(0.5)
            info = "ids going backwards"
        t_stop = time.monotonic()
        await self.t(self.redis.stop)
        for p in list(self.redis.dir.iterdir()):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.checker.exempt(t_stop - 2.0, time.monotonic())
        await asyncio.sleep(1.0)
        await self.t(self.redis.start)
        return info

    async def f_no_backend(self):
        before = self.proxy.accepted
        await self.t(self.proxy.close_on_accept, True)
        try:
            await asyncio.sleep(3.0)
        finally:
            await self.t(self.proxy.close_on_accept, False)
        return f"{self.proxy.accepted - before} connections tried"

    async def f_loading(self):
        rule = await self.t(lambda: self.proxy.refuse(lambda argv: command_name(argv) != "INFO", LOADING))
        await asyncio.sleep(2.0)
        await self.t(self.proxy.remove, rule)
        return f"{rule.hits} refused"

    async def f_script_flush(self):
        await self.t(self.redis.cli, "SCRIPT", "FLUSH")
        rule = await self.t(lambda: self.proxy.refuse({"EVALSHA", "FCALL"}, NOSCRIPT, count=1, hold=2))
        await asyncio.sleep(1.0)
        await self.t(self.proxy.remove, rule)
        return f"+{rule.hits} NOSCRIPT"

    async def f_refuse_conns(self):
        await self.t(self.proxy.refuse_connections)
        try:
            await asyncio.sleep(3.0)
        finally:
            await self.t(self.proxy.allow_connections)
        return ""

    async def f_delay(self):
        await self.t(self.proxy.set_delay, 0.05)
        await asyncio.sleep(5.0)
        await self.t(self.proxy.set_delay, 0)
        return ""

    def _pick_node(self):
        """The running node with the most clients (a fault where nobody is
        connected proves little); ties broken at random."""
        up = [n for n in self.nodes if n.proc is not None]
        if not up:
            return None
        load = {n.name: sum(1 for c in self.checker.conns if c.node is n and not c.closed) for n in up}
        top = max(load.values())
        return self.rng.choice([n for n in up if load[n.name] == top])

    async def f_node_sigterm(self):
        n = self._pick_node()
        await self.t(self.stop_node, n)
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await self.t(self.start_node, n)
        return n.name

    async def f_node_sigkill(self):
        n = self._pick_node()
        self.kills.append((n.name, time.monotonic()))
        await self.t(n.kill)
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        await self.t(self.start_node, n)
        return n.name

    async def f_node_late(self):
        n = self._pick_node()
        await self.t(self.stop_node, n)
        await self.t(self.proxy.refuse_connections)
        try:
            await self.t(self.start_node, n)
            await asyncio.sleep(3.0)
        finally:
            await self.t(self.proxy.allow_connections)
        return n.name

    KINDS = {
        "refuse-write": ("f_refuse_write", 12),
        "oom": ("f_oom", 5),
        "client-kill": ("f_client_kill", 3),
        "redis-restart": ("f_redis_restart", 10),
        "redis-sigstop": ("f_redis_sigstop", 7),
        "blackhole": ("f_blackhole", 17),
        "redis-empty": ("f_redis_empty", 10),
        "refuse-conns": ("f_refuse_conns", 5),
        "loading": ("f_loading", 4),
        "no-backend": ("f_no_backend", 4),
        "script-flush": ("f_script_flush", 3),
        "delay": ("f_delay", 6),
        "node-sigterm": ("f_node_sigterm", 25),
        "node-sigkill": ("f_node_sigkill", 20),
        "node-late": ("f_node_late", 30),
    }

    # -- the run -----------------------------------------------------------------

    async def wait_ready(self, timeout=30):
        await nodes_delivering(self.nodes, timeout)

    async def run(self):
        await self.wait_ready()
        self.checker = Checker(self.nodes, senders_per_node=SENDERS, receivers_per_node=1, rate=RATE,
                               allowed_codes=(1001, 1011, 1013, 1006), strict_codes={1001},
                               connect_timeout=60.0)
        await self.checker.start()
        kinds = os.environ.get("CHAOS_FAULTS")
        kinds = [k.strip() for k in kinds.split(",")] if kinds else list(self.KINDS)
        unknown = [k for k in kinds if k not in self.KINDS]
        if unknown:
            raise SystemExit(f"unknown CHAOS_FAULTS {unknown}; kinds: {', '.join(self.KINDS)}")
        t0 = time.monotonic()
        say(f"traffic on: {2 * SENDERS} senders at {RATE}/s, faults from {', '.join(kinds)}")
        while True:
            gap = self.rng.uniform(*GAP)
            left = SECONDS - (time.monotonic() - t0) - gap
            fits = [k for k in kinds if self.KINDS[k][1] <= left]
            if not fits:
                break
            kind = self.rng.choice(fits)
            fn, cost = self.KINDS[kind]
            await asyncio.sleep(gap)
            t = time.monotonic()
            try:
                info = await getattr(self, fn)()
            except Exception as e:  # noqa: BLE001 -- a fault that could not be injected is a problem
                self.problems.append(f"fault {kind} failed: {type(e).__name__}: {e}")
                info = "FAILED"
            self.faults[kind] += 1
            self.windows.append((kind, t, time.monotonic()))
            c = self.checker
            say(f"{kind:14} {info:32} {time.monotonic() - t:5.1f}s  sent {sum(len(x.sent) for x in c.conns)}, "
                f"clients {sum(1 for x in c.conns if not x.closed)}")
        left = SECONDS - (time.monotonic() - t0)
        if left > 0:
            await asyncio.sleep(left)
        say("traffic off; settling")
        await self.checker.stop(settle=SETTLE)


RECOVERY = 5.0  # seconds after a fault still counted as its own


def latency_by_fault(ck, windows):
    """[(kind or 'quiet', max delivery latency)] of messages by the fault
    running (or recovering) when they were sent."""
    sendtime = {(c.name, seq): t for c in ck.conns for seq, t in c.sent}
    worst = collections.defaultdict(float)
    for c in ck.conns:
        for k, tr in zip(c.got, c.t_got):
            ts = sendtime.get(k)
            if ts is None:
                continue
            # the latest fault that began by then (a message sent just
            # before a fault may wait for its end too)
            kind = next((w[0] for w in reversed(windows) if w[1] - 1.0 <= ts <= w[2] + RECOVERY), "quiet")
            worst[kind] = max(worst[kind], tr - ts)
    return sorted(worst.items(), key=lambda kv: -kv[1])


def main():
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="chatd-chaos-"))
    say(f"chaos: {SECONDS:.0f} s, seed {SEED}, chatd {conftest.CHATD_BIN}, logs in {tmp}")
    chaos = Chaos(tmp)
    violations = []
    try:
        chaos.start()
        try:
            asyncio.run(asyncio.wait_for(chaos.run(), SECONDS + 180))
        except asyncio.TimeoutError:
            chaos.problems.append("the run did not finish in time")
    except Failed as e:
        chaos.problems.append(f"setup failed: {str(e)[:2000]}")
    finally:
        chaos.shutdown()
    ck = chaos.checker
    if ck is not None and ck.conns:
        violations = ck.check()
        for c in ck.conns:
            if c.gone and c.close_code == 1006:
                if not any(name == c.node.name and t - 1.0 <= c.t_close <= t + 3.0 for name, t in chaos.kills):
                    violations.append(f"BAD CLOSE: {c.name}@{c.node.name} lost its connection (1006) "
                                      f"with no SIGKILL of its node")
        f = ck.figures
        print()
        print("figures")
        print(f"  run                 {SECONDS:.0f} s, seed {SEED}")
        print(f"  messages sent       {f['sent']}")
        print(f"  echoed to sender    {f['echoed']}")
        print(f"  delivered           {f['delivered']} (frames at all clients)")
        refused = ", ".join(f"{n} with {code}" for code, n in sorted(f["refused"].items())) or "none"
        print(f"  refused             {refused}")
        print(f"  lost in Redis wipes {f['lost in a Redis wipe (exempt)']} (exempt)")
        print(f"  max latency         {f['max latency s']} s")
        closes = ", ".join(f"{n} with {code}" for code, n in sorted(f["closes"].items(), key=str)) or "none"
        print(f"  clients             {f['clients']} connections, {f['reconnects']} reconnects, "
              f"{f['upgrades refused']} upgrades refused; closed by the server: {closes}")
        faults = ", ".join(f"{k} {n}" for k, n in sorted(chaos.faults.items())) or "none"
        print(f"  faults              {sum(chaos.faults.values())}: {faults}")
        print(f"  max latency by what was going on when the message was sent "
              f"(from 1 s before a fault to {RECOVERY:.0f} s after it; quiet otherwise):")
        for kind, worst in latency_by_fault(ck, chaos.windows):
            print(f"    {kind:16} {worst:.3f} s")
        for n in ck.notes:
            print(f"  note: {n}")
    else:
        chaos.problems.append("no traffic ran")
    bad = violations + chaos.problems
    if os.environ.get("CHAOS_KEEP") != "1" and not bad:
        shutil.rmtree(tmp, ignore_errors=True)
    if bad:
        print()
        print(f"FAIL: {len(bad)} problems (logs in {tmp})")
        for v in bad[:40]:
            print(f"  {v}")
        if len(bad) > 40:
            print(f"  ... and {len(bad) - 40} more")
        return 1
    print("\nOK: nothing lost, duplicated or reordered; every unechoed message was refused with a close code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
