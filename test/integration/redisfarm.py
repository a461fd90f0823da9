"""Real Redis deployments for the tests of issue 14: a Redis Cluster of three
masters and three replicas, and a primary with one replica under three
Sentinels -- every process a real redis-server on a free 127.0.0.1 port, in
the test's tmp dir, stopped by its pid at teardown even when the test fails.

  redis_cluster (fixture): factory, redis_cluster(**kw) -> a running
      RedisCluster; masters(), replica_of(m), master_of_slot(s), kill(n),
      wait_failover(old), restart(n), wait_replica_of(n, master).
  sentinel_farm (fixture): factory, sentinel_farm(**kw) -> a running
      SentinelFarm; primary(), fail_primary(), wait_new_primary(old),
      restart(n), wait_replica_of(n, primary).

Also the hash functions that place keys: keyslot() (CRC16-XMODEM of the
key's hash tag, as Redis Cluster does), fnv1a32() and shard_of() (the room
-> shard map of chatd), shard_tag() (the hash tag of a shard's keys).

Failover is made fast and sure: cluster-node-timeout 1000 ms and replicas
that may always take over (cluster-replica-validity-factor 0); Sentinel with
down-after 1000 ms, failover-timeout 4000 ms and its internal periods cut
with SENTINEL DEBUG (Redis 7), so that a killed primary that comes back is
made a replica within seconds, not the default 10-20. No persistence
(--save '' --appendonly no): a node that was killed and started again knows
only what it syncs from its master -- exactly the failover the tests are
about. Every wait is bounded in time and every loop in count.
"""

import random
import signal
import socket
import subprocess
import time

import pytest

from conftest import HOST, RespError, _Reader, redis_cmd, resp_encode

SLOTS = 16384


# --------------------------------------------------------------------------
# where keys go


def _crc16_table():
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else c << 1
        table.append(c & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def crc16(data):
    """CRC16-CCITT (XMODEM): polynomial 0x1021, init 0, as in Redis' crc16.c."""
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc


def keyslot(key):
    """The Cluster slot of key: CRC16 of the first non-empty {tag} if any."""
    if isinstance(key, str):
        key = key.encode()
    s = key.find(b"{")
    if s >= 0:
        e = key.find(b"}", s + 1)
        if e > s + 1:
            key = key[s + 1:e]
    return crc16(key) % SLOTS


def fnv1a32(data):
    if isinstance(data, str):
        data = data.encode()
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def shard_of(room, shards):
    """cluster_room_shard(): the shard a room belongs to."""
    return fnv1a32(room) % shards


def shard_range(k, shards):
    """Shard k's part of the slot space, [lo, hi)."""
    return k * SLOTS // shards, (k + 1) * SLOTS // shards


def shard_tag(k, shards):
    """The hash tag of shard k's keys: "<k>-<j>" for the smallest j whose
    slot lies in shard k's part of the slot space."""
    lo, hi = shard_range(k, shards)
    for j in range(1_000_000):
        tag = f"{k}-{j}"
        if lo <= keyslot(tag) < hi:
            return tag
    raise AssertionError(f"no tag for shard {k} of {shards}")


def shard_key(stream, k, shards):
    """The stream of shard k: `<stream>:{<tag>}`."""
    return f"{stream}:{{{shard_tag(k, shards)}}}"


def rooms_per_shard(shards, per_shard=1, prefix="room"):
    """{shard: [room names]}: the first per_shard rooms "<prefix>-<i>" of
    every shard."""
    out = {k: [] for k in range(shards)}
    for i in range(10000):
        name = f"{prefix}-{i}"
        k = shard_of(name, shards)
        if len(out[k]) < per_shard:
            out[k].append(name)
        if all(len(v) == per_shard for v in out.values()):
            return out
    raise AssertionError("rooms_per_shard loop bound")


# --------------------------------------------------------------------------
# one redis-server


_taken = set()


def _bindable(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair(offset=10000, lo=20000, hi=29999):
    """A port P such that P and P + offset are free (a Cluster node listens
    on both: P for clients, P + 10000 for its bus). Below the kernel's
    ephemeral range, so that no outgoing connection takes them meanwhile;
    never one this process handed out before."""
    for _ in range(2000):
        p = random.randint(lo, hi)
        if p in _taken or p + offset in _taken:
            continue
        if _bindable(p) and (not offset or _bindable(p + offset)):
            _taken.update((p, p + offset))
            return p
    raise AssertionError("no free port pair found")


def wait_for(pred, timeout, what, interval=0.05):
    """Polls pred() until it returns a true value, which it returns; fails
    the test after timeout seconds, saying what it waited for."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(1_000_000):
        try:
            v = pred()
        except (OSError, RespError, ConnectionError, ValueError) as e:
            v, last = None, e
        if v:
            return v
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}"
                        + (f" (last error: {last})" if last else ""))
        time.sleep(interval)
    raise AssertionError("wait_for loop bound")


def parse_info(text):
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


class RedisProc:
    """One redis-server (a data node or a Sentinel) of a farm: its own
    port, dir, config file (written by the farm; Redis may rewrite it) and
    log. start() waits for PING; kill() is SIGKILL; stop() SIGTERM, then
    SIGKILL; start() again reuses port, dir and config."""

    def __init__(self, tmp_path, name, conf_lines, port=None, sentinel=False, bus=False):
        self.name = name
        self.port = port or free_port_pair(10000 if bus else 0)
        self.sentinel = sentinel
        self.dir = tmp_path / f"{name}-{self.port}"
        self.dir.mkdir(exist_ok=True)
        self.conf_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        self.log_path = tmp_path / f"{name}-{self.port}.log"
        base = [f"port {self.port}", f"bind {HOST}", "protected-mode no", "daemonize no",
                f'dir "{self.dir}"', 'logfile ""']
        self.conf_path.write_text("\n".join(base + list(conf_lines)) + "\n")
        self.proc = None
        self._log = None

    @property
    def addr(self):
        return f"{HOST}:{self.port}"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=10):
        assert self.proc is None, f"{self.name} already started"
        self._log = open(self.log_path, "ab")
        argv = ["redis-server", str(self.conf_path)] + (["--sentinel"] if self.sentinel else [])
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=self._log, cwd=str(self.dir))
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} at start:\n{self.log()[-3000:]}")
            try:
                if redis_cmd(self.port, "PING", timeout=1) == "PONG":
                    return self
            except (OSError, RespError, ConnectionError):
                pass
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name} not answering PING within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.02)
        raise AssertionError("start loop bound")

    def kill(self, timeout=10):
        """SIGKILL (a crash the test stages); waits for the exit. Returns
        the time.monotonic() of the kill."""
        assert self.running, f"{self.name} is not running"
        t = time.monotonic()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        self._close()
        return t

    def stop(self, timeout=5):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close()

    def _close(self):
        if self._log:
            self._log.close()
        self._log = None
        self.proc = None

    def detach(self):
        """A replica that falls behind: its link to its master is cut and
        cannot come back (the AUTH it now sends is refused) until attach().
        (SIGSTOP would not do: what the master sent waits in the socket's
        buffer and is read on SIGCONT.)"""
        self.cli("CONFIG", "SET", "masterauth", "redisfarm-detached")
        self.cli("CLIENT", "KILL", "TYPE", "master")

    def attach(self):
        if self.running:
            self.cli("CONFIG", "SET", "masterauth", "")

    def cli(self, *args, timeout=5):
        return redis_cmd(self.port, *args, timeout=timeout)

    def pipeline(self, *cmds, timeout=10):
        """Sends cmds (tuples) on one connection; returns their replies (an
        error reply as a RespError in its place). WAIT counts the writes of
        its own connection: write and WAIT must go together."""
        with socket.create_connection((HOST, self.port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"".join(resp_encode(*c) for c in cmds))
            r = _Reader(s)
            return [r.reply() for _ in cmds]

    def info(self, section="replication"):
        return parse_info(self.cli("INFO", section))

    def in_sync_replica(self, master=None):
        """True when this is a replica (of master, if given) whose link is up
        and whose first sync is done."""
        i = self.info()
        return (i.get("role") == "slave" and i.get("master_link_status") == "up"
                and i.get("master_sync_in_progress") == "0"
                and (master is None or int(i.get("master_port", 0)) == master.port))

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self):
        return f"<{self.name} {self.addr}{'' if self.running else ' down'}>"


def _farm_fixture(tmp_path, cls):
    farms = []

    def make(**kw):
        f = cls(tmp_path, **kw)
        farms.append(f)
        f.start()
        return f

    return farms, make


# --------------------------------------------------------------------------
# Redis Cluster


class ClusterNode:
    """One line of CLUSTER NODES."""

    def __init__(self, line):
        f = line.split()
        self.id = f[0]
        self.addr = f[1].split("@")[0]
        self.port = int(self.addr.rsplit(":", 1)[1])
        self.flags = set(f[2].split(","))
        self.master_id = None if f[3] == "-" else f[3]
        self.link = f[7]
        self.slots = []
        for s in f[8:]:
            if s.startswith("["):
                continue  # a slot being migrated
            lo, _, hi = s.partition("-")
            self.slots.append((int(lo), int(hi or lo)))

    @property
    def is_master(self):
        return "master" in self.flags

    @property
    def failed(self):
        return bool(self.flags & {"fail", "fail?", "noaddr"})

    def serves(self, slot):
        return any(lo <= slot <= hi for lo, hi in self.slots)


class RedisCluster:
    """A Redis Cluster of `masters` masters with `replicas` replicas each,
    made by `redis-cli --cluster create`, every node on 127.0.0.1.

    start() waits (bounded) until every node says cluster_state:ok, knows
    every other node, and every replica is in sync. full_coverage: the
    cluster-require-full-coverage of every node (Redis' default yes: while a
    master is down and not yet replaced, the whole cluster refuses)."""

    def __init__(self, tmp_path, masters=3, replicas=1, node_timeout=1000, full_coverage=True,
                 extra=()):
        self.tmp_path = tmp_path
        self.n_masters = masters
        self.replicas = replicas
        self.node_timeout = node_timeout
        conf = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {node_timeout}",
            # a replica may take over however long it was cut off
            "cluster-replica-validity-factor 0",
            f"cluster-require-full-coverage {'yes' if full_coverage else 'no'}",
            "save ''",
            "appendonly no",
            # a (re)started replica syncs at once, without a file
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "repl-ping-replica-period 1",
        ] + list(extra)
        self.nodes = [RedisProc(tmp_path, f"cnode{i}", conf, bus=True)
                      for i in range(masters * (1 + replicas))]

    # -- life --------------------------------------------------------------

    def start(self, timeout=40):
        for n in self.nodes:
            n.start()
        r = subprocess.run(["redis-cli", "--cluster", "create"] + [n.addr for n in self.nodes]
                           + ["--cluster-replicas", str(self.replicas), "--cluster-yes"],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        (self.tmp_path / "cluster-create.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0 or "[OK] All 16384 slots covered" not in r.stdout:
            pytest.fail(f"redis-cli --cluster create failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr}")
        self.wait_ok(timeout)
        return self

    def stop(self):
        for n in self.nodes:
            n.stop()

    # -- the view of the cluster --------------------------------------------

    def node_at(self, port):
        return next(n for n in self.nodes if n.port == port)

    def view(self, via=None):
        """CLUSTER NODES as seen by via (default: the first running node)."""
        via = via or next(n for n in self.nodes if n.running)
        text = via.cli("CLUSTER", "NODES")
        return [ClusterNode(ln) for ln in text.decode().splitlines() if ln.strip()]

    def masters(self):
        """The running masters that serve slots, by their first slot."""
        ms = [c for c in self.view() if c.is_master and c.slots and not c.failed]
        return [self.node_at(c.port) for c in sorted(ms, key=lambda c: c.slots[0][0])]

    def replica_of(self, master):
        """The (first) replica of master, as the cluster sees it."""
        v = self.view()
        mid = next(c.id for c in v if c.port == master.port)
        return next(self.node_at(c.port) for c in v if c.master_id == mid and not c.failed)

    def master_of_slot(self, slot):
        """The master serving slot, or None (while a failover is under way)."""
        c = next((c for c in self.view() if c.is_master and not c.failed and c.serves(slot)), None)
        return c and self.node_at(c.port)

    def master_of_key(self, key):
        return self.master_of_slot(keyslot(key))

    def seeds(self, n=2):
        """`redis_cluster` for chatd: the first n nodes' addresses."""
        return ", ".join(x.addr for x in self.nodes[:n])

    def state_ok(self, node):
        return parse_info(node.cli("CLUSTER", "INFO")).get("cluster_state") == "ok"

    def _healthy(self):
        """Every running node: cluster_state ok and the same view (the same
        masters serving every slot, the same master for every running
        replica, no running node flagged failing); every running replica in
        sync with its master."""
        running = [n for n in self.nodes if n.running]
        ports = {n.port for n in running}
        views = []
        for n in running:
            if not self.state_ok(n):
                return False
            v = self.view(n)
            if any(c.failed for c in v if c.port in ports):
                return False
            masters = sorted((c.port, tuple(c.slots)) for c in v if c.is_master and c.slots)
            if sum(hi - lo + 1 for _, s in masters for lo, hi in s) != SLOTS:
                return False
            ids = {c.id: c.port for c in v}
            pairs = sorted((c.port, ids.get(c.master_id)) for c in v
                           if c.port in ports and not c.is_master)
            views.append((masters, pairs))
        if any(m != views[0] for m in views):
            return False
        master_ports = {p for p, _ in views[0][0]}
        if len(views[0][1]) + len(master_ports) != len(running):
            return False
        return all(n.in_sync_replica() for n in running if n.port not in master_ports)

    def wait_ok(self, timeout=30):
        """Waits until _healthy(): cluster_state:ok everywhere, one view,
        replicas in sync."""
        return wait_for(self._healthy, timeout, "the cluster to be ok, agreed and in sync")

    # -- faults --------------------------------------------------------------

    def kill(self, node):
        """SIGKILL of node; returns the time.monotonic() of the kill."""
        return node.kill()

    def wait_failover(self, old, timeout=20):
        """After old (a master) was killed: waits until another node serves
        its slots as a master and every running node is ok again. Returns
        the new master."""
        via = next(n for n in self.nodes if n.running and n is not old)
        slots = next((c.slots for c in self.view(via) if c.port == old.port), None)
        assert slots, f"{old} served no slot"

        def promoted():
            m = self.master_of_slot(slots[0][0])
            return m if m not in (None, old) and all(self.state_ok(n) for n in self.nodes if n.running) else None

        return wait_for(promoted, timeout, f"a replica of {old} to be promoted")

    def restart(self, node):
        """Starts a killed node again (its nodes.conf kept): the cluster makes
        it a replica of whoever took its slots."""
        node.start()
        return node

    def wait_replica_of(self, node, master, timeout=20):
        """Waits until node is a replica of master, in sync, and the cluster
        is ok."""
        wait_for(lambda: node.in_sync_replica(master), timeout, f"{node} to be an in-sync replica of {master}")
        self.wait_ok(timeout)


@pytest.fixture
def redis_cluster(tmp_path):
    """Factory: redis_cluster(**RedisCluster options) -> a running
    RedisCluster; every node stopped at teardown."""
    farms, make = _farm_fixture(tmp_path, RedisCluster)
    try:
        yield make
    finally:
        for f in farms:
            f.stop()


# --------------------------------------------------------------------------
# Sentinel


class SentinelFarm:
    """A primary, `replicas` replicas and `sentinels` Sentinels (quorum 2)
    watching it as `master_name`. start() waits (bounded) until the replicas
    are in sync and every Sentinel names the primary, knows every replica
    and every other Sentinel."""

    def __init__(self, tmp_path, master_name="chatd", replicas=1, sentinels=3, quorum=2,
                 down_after_ms=1000, failover_timeout_ms=4000):
        self.master_name = master_name
        self.quorum = quorum
        data = ["save ''", "appendonly no", "repl-diskless-sync yes", "repl-diskless-sync-delay 0",
                "repl-ping-replica-period 1"]
        self.data = [RedisProc(tmp_path, "primary", data)]
        self.data += [RedisProc(tmp_path, f"replica{i}", data + [f"replicaof {HOST} {self.data[0].port}"])
                      for i in range(replicas)]
        p = self.data[0].port
        sconf = [
            f"sentinel monitor {master_name} {HOST} {p} {quorum}",
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        self.sentinels = [RedisProc(tmp_path, f"sentinel{i}", sconf, sentinel=True) for i in range(sentinels)]

    @property
    def nodes(self):
        return self.data + self.sentinels

    def start(self, timeout=30):
        for n in self.data:
            n.start()
        for s in self.sentinels:
            s.start()
            # Redis 7's knobs for the periods Sentinel otherwise fixes: INFO
            # every second (a restarted primary is seen at once), hellos
            # every 0.5 s (sentinels find each other, and a node that came
            # back as a primary is turned into a replica after 4 hellos, 2 s),
            # PING every 0.25 s (the first PING to a newly promoted primary
            # goes out one period after the switch: at the default 1 s, as
            # long as down-after, a sentinel may call it down before it could
            # answer and fail it over again, to the empty node restarted
            # meanwhile), and no 30 s TILT after a slow tick.
            s.cli("SENTINEL", "DEBUG", "info-period", 1000, "publish-period", 500, "ping-period", 250,
                  "tilt-period", 3000, "min-link-reconnect-period", 1000, "election-timeout", 3000)
        self.wait_ok(timeout)
        return self

    def stop(self):
        for n in self.nodes:
            n.stop()

    def node_at(self, port):
        return next(n for n in self.data if n.port == port)

    def addrs(self):
        """`redis_sentinel` for chatd."""
        return ", ".join(s.addr for s in self.sentinels)

    def seen_primary(self, sentinel):
        r = sentinel.cli("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return None if r is None else (r[0].decode(), int(r[1]))

    def primary(self):
        """The primary as a majority of the running Sentinels name it (and it
        says role:master), or None."""
        votes = {}
        live = [s for s in self.sentinels if s.running]
        for s in live:
            try:
                a = self.seen_primary(s)
            except (OSError, RespError, ConnectionError):
                continue
            votes[a] = votes.get(a, 0) + 1
        for a, n in votes.items():
            if a and n > len(live) // 2:
                node = self.node_at(a[1])
                if node.running and node.info().get("role") == "master":
                    return node
        return None

    def master_state(self, s):
        """SENTINEL MASTER of sentinel s, as a dict of strings."""
        r = [x.decode() if isinstance(x, bytes) else str(x) for x in s.cli("SENTINEL", "MASTER", self.master_name)]
        return dict(zip(r[0::2], r[1::2]))

    def _sentinel_ok(self, s, primary):
        m = self.master_state(s)
        if int(m.get("port", 0)) != primary.port or "o_down" in m.get("flags", "") \
                or "s_down" in m.get("flags", ""):
            return False
        if int(m.get("num-other-sentinels", 0)) != len(self.sentinels) - 1:
            return False
        replicas = s.cli("SENTINEL", "REPLICAS", self.master_name)
        ok = 0
        for r in replicas:
            d = dict(zip(*[iter(x.decode() for x in r)] * 2))
            if "s_down" not in d["flags"] and "disconnected" not in d["flags"] \
                    and d.get("master-link-status") == "ok":
                ok += 1
        return ok >= len(self.data) - 1 - sum(1 for n in self.data if not n.running)

    def _healthy(self, primary=None):
        primary = primary or self.primary()
        if primary is None:
            return False
        if not all(n.in_sync_replica(primary) for n in self.data if n is not primary and n.running):
            return False
        return all(self._sentinel_ok(s, primary) for s in self.sentinels if s.running) and primary

    def wait_ok(self, timeout=30, primary=None):
        """Waits until every running replica is in sync with the primary and
        every running Sentinel agrees on it, its replicas and each other.
        Returns the primary."""
        return wait_for(lambda: self._healthy(primary), timeout,
                        "the Sentinels to agree on the primary, replicas in sync")

    def fail_primary(self):
        """SIGKILL of the primary; returns (the killed node, time of the kill)."""
        p = self.primary()
        assert p is not None, "no primary to fail"
        return p, p.kill()

    def _settled_on(self, primary):
        """Every running Sentinel names primary, sees it up and has no
        failover under way."""
        for s in self.sentinels:
            if not s.running:
                continue
            m = self.master_state(s)
            if int(m.get("port", 0)) != primary.port or m.get("flags") != "master":
                return False
        return True

    def wait_new_primary(self, old, timeout=20):
        """Waits until a majority of the Sentinels name a primary other than
        old and it says role:master, then until every Sentinel names it and
        has finished the failover (restarting old before that could make the
        Sentinels pick it, empty, again). Returns the new primary; its
        time.monotonic() of promotion is in self.t_promoted."""
        def moved():
            p = self.primary()
            return p if p is not None and p is not old else None
        p = wait_for(moved, timeout, f"the Sentinels to promote a replica of {old}")
        self.t_promoted = time.monotonic()
        wait_for(lambda: self._settled_on(p), timeout, f"every Sentinel to settle on {p}")
        return p

    def restart(self, node):
        """Starts a killed node again, with its own config (it comes back a
        primary of nothing, until the Sentinels make it a replica)."""
        node.start()
        return node

    def wait_replica_of(self, node, primary, timeout=20):
        wait_for(lambda: node.in_sync_replica(primary), timeout,
                 f"{node} to be made an in-sync replica of {primary}")


@pytest.fixture
def sentinel_farm(tmp_path):
    """Factory: sentinel_farm(**SentinelFarm options) -> a running
    SentinelFarm; every process stopped at teardown."""
    farms, make = _farm_fixture(tmp_path, SentinelFarm)
    try:
        yield make
    finally:
        for f in farms:
            f.stop()
