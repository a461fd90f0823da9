"""Shards on one Redis (issue 14): rooms spread over `shards` streams whose
keys carry a hash tag, one order per room across nodes, recovery with
since + epoch per shard; and redis_wait_replicas holding delivery and the
ack until a replica has the message. (Redis Cluster and Sentinel:
test_cluster.py, test_sentinel.py.)"""

import asyncio

import pytest

from checker import nodes_delivering
from conftest import arun, metrics
from jsonclient import JsonClient, url
from test_recovery import Flow, Receiver, redis_node, sender, verify

STREAM = "chatd:messages"


def crc16(data):
    """CRC16-XMODEM, as Redis Cluster hashes keys."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def shard_tag(k, n):
    """The tag chatd gives shard k of n: "<k>-<j>" for the smallest j whose
    slot lies in the shard's part of the slot space."""
    lo, hi = k * 16384 // n, (k + 1) * 16384 // n
    for j in range(100000):
        tag = f"{k}-{j}"
        if lo <= crc16(tag.encode()) % 16384 < hi:
            return tag
    raise AssertionError("no tag")


def room_shard(room, n):
    """FNV-1a 32-bit of the room name, mod n."""
    h = 2166136261
    for b in room.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return h % n


@pytest.mark.redis
def test_rooms_spread_over_shards_keep_their_order_and_recover(redis, chatd):
    """shards = 4 on one Redis, two nodes: each room's messages (sent on node
    a) reach a receiver on node b exactly once and in order, including
    across a reconnect to the other node with since + epoch; every room's
    keys live under its shard's tag, each shard stream holds only its own
    rooms."""
    n = 4
    r = redis()
    a = redis_node(chatd, r, "a", shards=n)
    b = redis_node(chatd, r, "b", shards=n)
    rooms = [f"room{i}" for i in range(8)]
    assert len({room_shard(x, n) for x in rooms}) >= 3, "the rooms should land in several shards"

    async def main():
        await nodes_delivering([a, b])
        flows = [Flow(await sender(a, x, f"s{i}"), x, 25) for i, x in enumerate(rooms)]
        rcvs = [Receiver(f"r{i}", x) for i, x in enumerate(rooms)]
        for rc in rcvs:
            await rc.connect(b, recovered=False)
        for f in flows:
            f.start()
        for rc in rcvs:
            await rc.read_for(0.1)
        await asyncio.sleep(0.6)
        for rc in rcvs:  # over to the other node, recovering what passed meanwhile
            await rc.drop()
        await asyncio.sleep(0.3)
        epochs = set()
        for rc in rcvs:
            j = await rc.connect(a, recovered=True)
            epochs.add(j["epoch"])
        await asyncio.sleep(0.6)
        for f in flows:
            await f.stop()
        for rc, f in zip(rcvs, flows):
            await rc.read_until(f.last_id())
            verify(rc, f, f"room {rc.room}")
            await rc.drop()
        return epochs

    epochs = arun(main(), 90)
    for node in (a, b):
        m = metrics(node.port)
        assert m["chatd_redis_shards_up"] == n, m
        assert m["chatd_redis_redirects_total"] == 0, m
    tags = {k: shard_tag(k, n) for k in range(n)}
    assert r.cli("EXISTS", STREAM) == 0, "with shards the plain stream key is not used"
    for k, tag in tags.items():
        prefix = f"{STREAM}:{{{tag}}}"
        mine = {x for x in rooms if room_shard(x, n) == k}
        entries = r.cli("XRANGE", prefix, "-", "+")
        seen = {e[1][e[1].index(b"room") + 1].decode() for e in entries} - {"_sync"}
        assert seen <= mine, f"shard {k} stream holds rooms of other shards: {seen - mine}"
        assert r.cli("GET", f"{prefix}:epoch") is not None, f"shard {k} has no epoch"
        for x in mine:
            assert r.cli("EXISTS", f"{prefix}:history:{x}") == 1, f"{x}: no history under {prefix}"
    # The epoch a client gets is its room's shard's.
    assert epochs <= {r.cli("GET", f"{STREAM}:{{{t}}}:epoch").decode() for t in tags.values()}


@pytest.mark.redis
def test_wait_replicas_holds_delivery_until_a_replica_has_it(redis, chatd):
    """redis_wait_replicas = 1 with no replica: a message is neither acked
    nor delivered (it is not safe from a failover); once a replica is
    attached it is, exactly once."""
    r = redis()
    a = redis_node(chatd, r, "a", redis_wait_replicas=1, redis_timeout="1s")

    async def main():
        s = await JsonClient.connect_retry(url(a, "sam", "w"), "sam")
        await s.expect("joined", room="w")
        rc = await JsonClient.connect_retry(url(a, "rita", "w"), "rita")
        await rc.expect("joined", room="w")
        await s.req("send", room="w", text="held", ref="h1")
        await asyncio.sleep(2.5)
        assert not [f for f in s.log if f["op"] in ("ack", "msg")], f"acked without a replica: {s.log}"
        assert not [f for f in rc.log if f["op"] == "msg"], f"delivered without a replica: {rc.log}"
        replica = await asyncio.to_thread(redis, args=["--replicaof", "127.0.0.1", str(r.port)])
        ack = await s.expect("ack", ref="h1", timeout=20)
        m = await rc.expect("msg", room="w", timeout=10)
        assert m["text"] == "held" and m["id"] == ack["id"], (m, ack)
        assert replica.cli("XLEN", r.cli("KEYS", "chatd:messages")[0].decode()) >= 1
        await rc.drain(0.5)
        assert len([f for f in rc.log if f["op"] == "msg"]) == 1, rc.log
        await s.close()
        await rc.close()

    arun(main(), 60)
