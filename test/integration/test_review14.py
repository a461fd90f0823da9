"""Review of issue 14: each test was written, failing, for a defect an
adversarial review found in the sharded, Cluster- and Sentinel-aware Redis
path (its docstring tells the defect and the code path as it was); they now
guard the fixes.

  CHATD_BIN=$PWD/build/chatd /usr/bin/python3 -m pytest -q -p no:cacheprovider \
      test/integration/test_review14.py
"""

import asyncio
import os
import signal
import socket
import threading
import time

import pytest

from conftest import (CHATD_URL, HOST, _Reader, arun, free_port, metrics, resp_encode, run_chatd_cmd,
                      wait_until)
from redisfarm import redis_cluster, sentinel_farm  # noqa: F401
from faultproxy import FaultProxy
from jsonclient import JsonClient, url

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own Redis and nodes"),
]

STREAM = "chatd:messages"


class Relay:
    """A plain TCP relay (bytes only, no RESP parsing) for a replica's link
    to its master. freeze() keeps every connection open but drops every byte
    both ways from then on: the master still counts the replica as online
    (until repl-timeout) while it receives nothing and acks nothing -- a
    replication link behind a black hole."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.port = free_port()
        self.frozen = False
        self.socks = []
        self.lock = threading.Lock()
        self.lsock = None
        self.stopping = False

    def start(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((HOST, self.port))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        for _ in range(1_000_000):
            if self.stopping:
                return
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                u = socket.create_connection((HOST, self.upstream_port), timeout=2)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        src.settimeout(0.2)
        for _ in range(10_000_000):
            if self.stopping:
                return
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if self.frozen:
                continue  # dropped: the black hole
            try:
                dst.sendall(data)
            except OSError:
                return

    def freeze(self):
        self.frozen = True

    def stop(self):
        self.stopping = True
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
        try:
            self.lsock.close()
        except OSError:
            pass


def replica_in_sync(r):
    info = r.cli("INFO", "replication").decode()
    return "master_link_status:up" in info and "master_sync_in_progress:0" in info


def texts(entries):
    out = []
    for _id, fields in entries:
        d = dict(zip(fields[0::2], fields[1::2]))
        if b"text" in d:
            out.append(d[b"text"].decode())
    return out


@pytest.fixture
def lagging_replica(redis):
    """A primary whose only replica is linked through a Relay (freeze() it
    to make the replica lag while the primary still counts it online)."""
    made = []

    def make():
        p = redis(args=["--repl-timeout", "60", "--maxmemory-policy", "noeviction"])
        relay = Relay(p.port).start()
        made.append(relay)
        r = redis(args=["--replicaof", HOST, str(relay.port), "--repl-ping-replica-period", "1"])
        wait_until(lambda: replica_in_sync(r), 15, what="the replica in sync")
        return p, relay, r

    try:
        yield make
    finally:
        for relay in made:
            relay.stop()


@pytest.mark.slow
@pytest.mark.faults
def test_publisher_wait_covers_a_resent_message(lagging_replica, chatd):
    """PASSES on Debian's Redis 7.0 (every executed command sets the
    client's WAIT offset there); FAILS on Redis 7.2 and later, whose call()
    sets it only when the command propagated something. A guard for the
    Redis that operators of a Cluster may well run.

    redis_pub.c:500 (pub_on_wait) after pub_on_connect (:603-605): a
    message stored on the primary whose WAIT failed is sent again on a new
    connection; the script answers "stored already" and writes nothing, so
    that connection's replication offset (WAIT's target) is 0 and WAIT
    counts any online replica -- one that lacks the message included. The
    publisher then forgets the message: a failover loses it without an ack
    and without a 1011 (the consumer's comment at redis_consume.c:24-25
    relies on the publisher "storing it again")."""
    p, relay, r = lagging_replica()
    proxy = FaultProxy(p.port).start()
    try:
        a = chatd(name="a", broker="redis", redis_url=proxy.url, workers=1,
                  redis_wait_replicas=1, redis_timeout="1s", shutdown_timeout="1s")

        async def main():
            s = await JsonClient.connect_retry(url(a, "sam", "w"), "sam")
            await s.expect("joined", room="w")
            await s.req("send", room="w", text="m0", ref="h0")
            await s.expect("ack", ref="h0", timeout=15)
            relay.freeze()  # the replica is online for the primary, and gets nothing
            await s.req("send", room="w", text="m1", ref="h1")
            await s.drain(1.5)
            assert not s.take("ack", ref="h1"), "acked with the only replica cut off"
            assert metrics(a.port)["chatd_publish_queue"] == 1
            proxy.kill_connections()  # a network blip: publisher and reader reconnect
            await s.drain(3.0)
            have = texts(r.cli("XRANGE", STREAM, "-", "+"))
            assert "m1" not in have, have
            queued = metrics(a.port)["chatd_publish_queue"]
            assert queued == 1, (
                f"the publisher dropped m1 from its queue as if a replica had it, yet the "
                f"replica has only {have}: a failover now loses m1 and its sender is never told")
            await s.close()

        arun(main(), 60)
    finally:
        proxy.stop()


@pytest.mark.slow
@pytest.mark.faults
def test_consumer_delivers_nothing_after_a_refused_set(lagging_replica, chatd):
    """PASSES on Debian's Redis 7.0 (the reader's XRANGE/XREAD on the new
    connection already set its WAIT offset there); FAILS on Redis 7.2 and
    later (the offset moves only with a command that propagated: a refused
    SET leaves it at 0). A guard, as above.

    redis_consume.c:776-782 (handle_replies, REQ_WAIT) ignores the reply
    to `SET <key>:synced` (rep[0]). When Redis refuses that SET (OOM here;
    MOVED/ASK for a reader in ASK mode, which sends no ASKING before it:
    send_wait, :702-712) the WAIT after it measures the connection's
    earlier writes -- none on a new connection -- and counts any online
    replica: entries no replica has are delivered and acked under
    redis_wait_replicas = 1."""
    p, relay, r = lagging_replica()
    proxy = FaultProxy(p.port).start()
    try:
        a = chatd(name="a", broker="redis", redis_url=proxy.url, workers=1,
                  redis_wait_replicas=1, redis_timeout="1s", shutdown_timeout="1s")

        async def main():
            s = await JsonClient.connect_retry(url(a, "sam", "w"), "sam")
            await s.expect("joined", room="w")
            await s.req("send", room="w", text="m0", ref="h0")
            await s.expect("ack", ref="h0", timeout=15)
            relay.freeze()
            await s.req("send", room="w", text="m1", ref="h1")
            await s.drain(1.5)
            assert not s.take("ack", ref="h1"), "acked with the only replica cut off"
            p.cli("CONFIG", "SET", "maxmemory", "1")  # Redis out of memory: writes refused
            proxy.kill_connections()  # the reader reconnects and reads m1 again
            await s.drain(3.0)
            have = texts(r.cli("XRANGE", STREAM, "-", "+"))
            assert "m1" not in have, have
            acked = s.take("ack", ref="h1")
            assert not acked, (
                f"m1 acked under redis_wait_replicas = 1 while the only replica has {have}")
            p.cli("CONFIG", "SET", "maxmemory", "0")
            await s.close()

        arun(main(), 60)
    finally:
        proxy.stop()


async def latencies(s, room, seconds, every=0.2):
    """Sends a message every `every` seconds for `seconds`; returns the time
    from each send to its msg coming back (the sender is in the room)."""
    out = []
    end = time.monotonic() + seconds
    for i in range(10_000):
        if time.monotonic() >= end:
            break
        ref = f"l{time.monotonic_ns()}-{i}"
        t = time.monotonic()
        await s.req("send", room=room, text=ref, ref=ref)
        await s.expect("msg", room=room, text=ref, timeout=30)
        out.append(time.monotonic() - t)
        await asyncio.sleep(max(0.0, every - (time.monotonic() - t)))
    return out


@pytest.mark.slow
def test_a_hung_sentinel_does_not_stall_delivery(sentinel_farm, chatd):
    """redis_link.c:169-199 (refresh_sentinel) asks the sentinels in list
    order with a blocking connect and command of redis_timeout each, on the
    consumer thread, every ROUTE_CHECK_MS (redis_consume.c:896-907) and
    before every reader connect (:556). One hung sentinel of three (a
    frozen host: the kernel still accepts, nothing answers) -- which
    Sentinel itself tolerates -- blocks the consumer redis_timeout per
    refresh, and the next refresh is due at once (routed_ms is taken
    before the refresh): every shard's delivery stalls for about
    redis_timeout at a time, for as long as that sentinel hangs."""
    f = sentinel_farm()
    s0 = f.sentinels[0]
    a = chatd(name="a", broker="redis", redis_sentinel=f.addrs(), redis_master_name=f.master_name,
              workers=1, redis_timeout="2s")

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", "w"), "sam")
        await s.expect("joined", room="w")
        before = await latencies(s, "w", 2.0)
        os.kill(s0.proc.pid, signal.SIGSTOP)
        try:
            during = await latencies(s, "w", 6.0)
        finally:
            os.kill(s0.proc.pid, signal.SIGCONT)
        await s.close()
        return before, during

    before, during = arun(main(), 90)
    print(f"\nlatency before: max {max(before):.3f}s; with sentinel 0 hung: max {max(during):.3f}s, "
          f"median {sorted(during)[len(during) // 2]:.3f}s, {len(during)} messages")
    assert max(before) < 0.5, before
    assert max(during) < 1.0, (
        f"one hung sentinel of three stalls delivery: latencies {[round(x, 2) for x in during]}")


@pytest.mark.slow
def test_a_hung_master_does_not_stall_the_other_shards(redis_cluster, chatd):
    """The consumer thread drives every shard, and a reader that connects
    again makes blocking calls of up to READ_BLOCK_MS + redis_timeout each
    on that thread (reader_connect, redis_consume.c:550-640: dial, then
    check_last_entry's XRANGE :432-446; sweep's EVAL :502-512; epoch_seen's
    SET :456; declare_loss's SET :425; the ASK redial in refused() :730).
    One hung master (a frozen host: the kernel accepts, nothing answers)
    with no failover yet (cluster-node-timeout not reached, or no replica)
    stalls the rooms of every other shard for seconds at a time."""
    c = redis_cluster(masters=3, replicas=0, node_timeout=30000, full_coverage=False)
    shards = 3
    a = chatd(name="a", broker="redis", redis_cluster=c.seeds(2), shards=shards, workers=1,
              redis_timeout="2s")
    from redisfarm import rooms_per_shard, shard_key
    rooms = rooms_per_shard(shards)
    hung = c.master_of_key(shard_key(STREAM, 1, shards))

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", rooms[0][0]), "sam")
        await s.expect("joined", room=rooms[0][0])
        await s.req("join", room=rooms[2][0])
        await s.expect("joined", room=rooms[2][0])
        await s.req("join", room=rooms[1][0])
        await s.expect("joined", room=rooms[1][0])
        await latencies(s, rooms[1][0], 0.5)  # shard 1 has entries: its reader has a last id
        before = await latencies(s, rooms[0][0], 1.0) + await latencies(s, rooms[2][0], 1.0)
        os.kill(hung.proc.pid, signal.SIGSTOP)
        try:
            during = []
            for _ in range(3):
                during += await latencies(s, rooms[0][0], 1.5)
                during += await latencies(s, rooms[2][0], 1.5)
        finally:
            os.kill(hung.proc.pid, signal.SIGCONT)
        await s.close()
        return before, during

    before, during = arun(main(), 120)
    print(f"\nshards 0 and 2, latency before: max {max(before):.3f}s; with shard 1's master hung: "
          f"max {max(during):.3f}s, median {sorted(during)[len(during) // 2]:.3f}s")
    assert max(before) < 0.5, before
    assert max(during) < 1.0, (
        f"shard 1's hung master stalls shards 0 and 2: latencies {[round(x, 2) for x in during]}")


@pytest.mark.slow
def test_ask_mode_ends_once_the_slot_has_moved(redis_cluster, chatd):
    """redis_consume.c: a reader sent away by ASK sets rd->asking (:735),
    and only disconnect() clears it (:156); follow_route skips asking
    readers (:881), and send_read never runs the checked read while asking
    (:678). Once the slot has moved for good nothing ends ASK mode: the
    shard's reader reads on with ASKING forever and never again runs XINFO
    or reads the epoch -- a new epoch (another node declaring a loss), a
    reset stream or a trimming gap on that shard go unseen until the
    connection happens to drop."""
    shards = 3
    c = redis_cluster(replicas=0)
    a = chatd(name="a", broker="redis", redis_cluster=c.seeds(2), shards=shards, workers=1)
    from redisfarm import keyslot, rooms_per_shard, shard_key
    room = rooms_per_shard(shards)[0][0]
    stream = shard_key(STREAM, 0, shards)
    slot = keyslot(stream)
    src = c.master_of_slot(slot)
    dst = next(m for m in c.masters() if m is not src)
    ids = {m.port: m.cli("CLUSTER", "MYID").decode() for m in (src, dst)}

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", room), "sam")
        await s.expect("joined", room=room)
        await s.say(room, "before")
        dst.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
        src.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
        for _ in range(100):
            keys = src.cli("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            src.cli("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
        await asyncio.sleep(1.5)  # the reader's next read at src is told ASK
        assert metrics(a.port)["chatd_redis_redirects_total"] > 0, "the reader was never told ASK"
        for m in c.masters():
            m.cli("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
        await s.say(room, "after")
        await asyncio.sleep(1.0)
        dst.cli("SET", f"{stream}:epoch", "00000000000000ab")  # a new epoch, as a loss sets
        await asyncio.sleep(4.0)  # CHECK_EVERY_MS is 1 s
        await s.close()

    arun(main(), 60)
    assert "the epoch of " + stream + " changed" in a.log(), (
        "the shard's reader never looked at the epoch again after the slot moved (still in ASK "
        "mode):\n" + "\n".join(a.log().splitlines()[-15:]))


@pytest.mark.faults
def test_drain_waits_for_every_shard_a_client_sent_to(redis, chatd):
    """worker.c:236 judges a client by c->ticket, the ticket of the last
    message it sent (chat.c:639, conn.h:90), as if storing were one
    sequence. With shards it is one per shard: a client whose message in a
    room of shard 0 cannot be stored (Redis refuses it, passing errors:
    LOADING here) and who then sent one in a room of shard 1 (stored) is
    closed with 1001 "server shutting down", and its shard-0 message is
    dropped at exit -- a lost message hidden behind a 1001, which the drain
    promises never to do (worker.c:224-228)."""
    from redisfarm import rooms_per_shard, shard_key
    shards = 2
    r = redis()
    proxy = FaultProxy(r.port).start()
    try:
        a = chatd(name="a", broker="redis", redis_url=proxy.url, workers=1, shards=shards,
                  shutdown_timeout="3s")
        per = rooms_per_shard(shards)
        room0, room1 = per[0][0], per[1][0]
        prefix0 = shard_key(STREAM, 0, shards).encode()

        async def main():
            s = await JsonClient.connect_retry(url(a, "sam", room0), "sam")
            await s.expect("joined", room=room0)
            await s.join(room1)
            proxy.refuse(lambda argv: argv[:1] == [b"EVALSHA"] and len(argv) > 3 and argv[3] == prefix0,
                         "LOADING Redis is loading the dataset in memory")
            await s.req("send", room=room0, text="in shard 0", ref="a0")
            await s.say(room1, "in shard 1")
            a.send_signal(signal.SIGTERM)
            closed = None
            for _ in range(1000):
                try:
                    await s.recv(timeout=15)
                except Exception as e:  # the close
                    closed = e
                    break
            return closed

        closed = arun(main(), 60)
        a.wait(15)
        assert "messages of " + prefix0.decode() + " not stored" in a.log(), a.log()
        code = getattr(closed, "code", None)
        assert code == 1011, (
            f"the client's message in {room0} was never stored (dropped at exit), yet it was "
            f"closed with {code} {getattr(closed, 'reason', '')!r}")
    finally:
        proxy.stop()


@pytest.mark.faults
def test_a_refused_read_is_retried_after_a_backoff_not_at_once(redis, chatd):
    """Fixed on main by 7cad0ee (found independently); kept as a guard.
    Measured before it: MASTERDOWN from a real replica, 165k reads in 3 s
    and 1.4 s of chatd CPU; CLUSTERDOWN, 15k new connections in 3 s to
    one live master (a CLUSTER SLOTS refresh per turn).

    redis_consume.c:948: READ_REFUSED calls back_off(), which sets
    retry_ms -- but retry_ms is only looked at while the reader has no
    connection (:913-914); a refused read keeps its connection, so the next
    turn sends the next read at once: while Redis refuses reads (LOADING
    after a restart, CLUSTERDOWN and TRYAGAIN during a failover or a slot
    move, MASTERDOWN) the consumer spins, one read per round trip, and
    back_off's want_refresh makes every turn refresh the route too
    (consumer_turn :897: a successful refresh sets no refresh_ms) -- in a
    Cluster a new connection and CLUSTER SLOTS per node per turn."""
    r = redis()
    proxy = FaultProxy(r.port).start()
    try:
        a = chatd(name="a", broker="redis", redis_url=proxy.url, workers=1)
        rule = proxy.refuse({"XREAD"}, "LOADING Redis is loading the dataset in memory")
        proxy.reset_counts()
        time.sleep(2.0)
        n = proxy.counts().get("XREAD", 0)
        proxy.remove(rule)
        cpu = None
        try:
            with open(f"/proc/{a.proc.pid}/stat") as f:
                st = f.read().split(")")[1].split()
            cpu = (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
        # backoff 50 ms doubling to 2 s: about 6 reads in 2 s; allow 40
        assert n <= 40, f"{n} reads refused in 2 s (chatd CPU so far {cpu}s): no backoff"
    finally:
        proxy.stop()


def pipeline(port, cmds, timeout=10):
    """Sends cmds (tuples) on one connection; returns their replies."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(b"".join(resp_encode(*c) for c in cmds))
        r = _Reader(s)
        return [r.reply() for _ in cmds]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.slow
@pytest.mark.faults
def test_held_entries_do_not_leak_when_wait_is_refused(redis, chatd):
    """redis_consume.c: a refused WAIT (handle_replies :783-784: here "ERR
    WAIT cannot be used with replica instances", the node chatd reads was
    turned into a replica) keeps rd->held and the connection; the next turn
    reads the same entries again (:922-924, no backoff: see above) and
    entries_read (:759) overwrites rd->held without freeing it. Every read
    leaks one XREAD reply (up to 512 entries): memory grows without bound
    (before main's 7cad0ee, which makes a refused read wait its backoff,
    ~190 MB in 3 s; now one reply per backoff, up to 2 s). Under the ASan
    build LeakSanitizer names it at exit."""
    p = redis()
    a = chatd(name="a", broker="redis", redis_url=p.url, workers=1, redis_wait_replicas=1,
              redis_timeout="1s", shutdown_timeout="1s")
    q = redis()  # the primary p is about to follow
    key = STREAM

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", "w"), "sam")
        await s.expect("joined", room="w")
        await s.req("send", room="w", text="m1", ref="h1")  # held: p has no replica
        await s.drain(1.0)
        pipeline(q.port, [("XADD", key, "*", "room", "w", "user", "bob", "text", f"{i:04d}" + "x" * 4000,
                      "mid", f"other.1.{i + 1}") for i in range(512)])  # another node's, on q
        p.cli("REPLICAOF", HOST, str(q.port))  # p becomes q's replica and gets q's stream
        wait_until(lambda: b"master_link_status:up" in p.cli("INFO", "replication"), 10,
                   what="p a replica of q")
        await s.drain(1.0)
        before = rss_kb(a.proc.pid)
        await s.drain(4.0)
        after = rss_kb(a.proc.pid)
        await s.close()
        return before, after

    before, after = arun(main(), 60)
    p.cli("REPLICAOF", "NO", "ONE")
    if "asan" in os.environ.get("CHATD_BIN", ""):
        return  # ASan's quarantine grows RSS by design; its leak check at exit judges here
    assert after - before < 6_000, (
        f"chatd's RSS grew from {before} kB to {after} kB in 4 s while it read a replica "
        f"under redis_wait_replicas = 1")


class BlackHole:
    """A port whose SYNs are dropped (its listen queue is full and nobody
    accepts): connect() hangs until its timeout, as towards a host that
    went dark."""

    def __init__(self):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((HOST, 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fill = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect((HOST, self.port))
            except BlockingIOError:
                pass
            self.fill.append(s)
        time.sleep(0.2)

    def close(self):
        for s in self.fill + [self.lsock]:
            s.close()


@pytest.mark.slow
def test_shutdown_does_not_wait_for_dials_to_a_dark_redis(chatd):
    """redis_consume.c:911-921: every turn the consumer dials each shard
    whose retry time passed, one after the other, each dial blocking up to
    redis_timeout (redis_link_dial: redisConnectWithTimeout, then AUTH);
    b->stop is looked at only between turns (:981). With Redis dark (SYNs
    dropped) and shards = 16, a turn lasts 16 x redis_timeout, and SIGTERM
    waits for it: the node outlives shutdown_timeout by that much (a
    supervisor's stop timeout kills it, the drain promises are void)."""
    bh = BlackHole()
    try:
        a = chatd(name="a", broker="redis", redis_url=f"redis://{HOST}:{bh.port}", workers=1,
                  shards=16, redis_timeout="1s", shutdown_timeout="1s")
        time.sleep(2.5)  # the consumer is well into its dials
        t = time.monotonic()
        rc, problems = a.stop(timeout=40)
        took = time.monotonic() - t
        assert not problems, problems
        assert took < 5.0, f"SIGTERM to exit: {took:.1f}s with shutdown_timeout 1s (exit {rc})"
    finally:
        bh.close()


@pytest.mark.slow
def test_a_lost_shard_leaves_the_other_rooms_open(redis_cluster, chatd):
    """Design, not a slip: broker_redis.c redis_ready fails /readyz while
    any shard is not read (nstarted < nshards, nup < nshards), and the
    acceptor then refuses every upgrade with 503. A master lost for good
    in a cluster run with cluster-require-full-coverage no (or one being
    failed over, for its seconds) takes every room of every node out, not
    only its shard's -- and behind haproxy every node at once. (Slot map
    and readers are fine: the other shards are read, chatd_redis_shards_up
    says 2.)"""
    from redisfarm import rooms_per_shard, shard_key
    shards = 3
    c = redis_cluster(masters=3, replicas=0, node_timeout=1000, full_coverage=False)
    lost = c.master_of_key(shard_key(STREAM, 1, shards))
    seeds = ", ".join(m.addr for m in c.masters() if m is not lost)
    lost.kill()
    wait_until(lambda: any(f"{lost.port}@" in ln and "fail" in ln.split()[2]
                           for n in c.nodes if n.running
                           for ln in n.cli("CLUSTER", "NODES").decode().splitlines()),
               15, what="the lost master flagged fail")
    a = chatd(name="a", broker="redis", redis_cluster=seeds, shards=shards, workers=1)
    room = rooms_per_shard(shards)[0][0]

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", room), "sam", timeout=8)
        await s.expect("joined", room=room)
        await s.say(room, "shard 0 still has its master", timeout=10)
        await s.close()

    try:
        arun(main(), 40)
    except AssertionError as e:
        up = metrics(a.port)["chatd_redis_shards_up"]
        raise AssertionError(f"{up} of {shards} shards are read, yet no room takes a client: {e}")


def test_a_stream_name_with_braces_is_refused_with_shards(tmp_path):
    """Redis hashes the FIRST {...} of a key: a stream name with braces
    (`stream = chat:{main}`, as Cluster users write keys) would put every
    shard's keys ("<stream>:{<tag>}") in the slot of "main" while chatd
    routes each shard by its own tag -- MOVED forever. So the check refuses
    it, with the reason, where shards or redis_cluster give keys their own
    tag; alone (one shard on one Redis) the name is fine."""
    for extra, ok in (("shards = 3\n", False), ("redis_cluster = 127.0.0.1:7000\n", False),
                      ("", True)):
        path = tmp_path / "c.conf"
        path.write_text("broker = redis\nstream = chat:{main}\n" + extra)
        r = run_chatd_cmd(["-t", "-c", str(path)])
        if ok:
            assert r.returncode == 0, (extra, r.stdout, r.stderr)
        else:
            assert r.returncode != 0 and "has a brace" in r.stderr, (extra, r.stdout, r.stderr)
