"""Issue 14: chatd through Redis Sentinel (redisfarm.py: a primary, one
replica, three Sentinels), named by redis_sentinel and redis_master_name:
the demo across two nodes in several rooms; and the primary killed with
SIGKILL while messages flow in several rooms (redis_wait_replicas = 1): the
Sentinels promote the replica, chatd follows, and once the killed primary
is started again (the Sentinels make it a replica) chatd keeps writing to
the new primary -- judged room by room by checker.py.

The failover times are printed (pytest -s). Run:
  CHATD_BIN=$PWD/build/chatd /usr/bin/python3 -m pytest -q -s -p no:cacheprovider \
      test/integration/test_sentinel.py
"""

import asyncio
import time

import pytest

from conftest import CHATD_URL, arun
from farmchat import STREAM, Rooms, demo, in_thread, now, resume_after, start_nodes
from redisfarm import rooms_per_shard, sentinel_farm, shard_key  # noqa: F401

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own Redis, Sentinels and nodes"),
]

RATE = 20.0         # messages per second per sender
WARMUP = 2.0        # traffic before the fault
AFTER = 3.0         # traffic after the killed primary is a replica again


def sentinel_nodes(sentinel_farm, chatd, shards, **conf):
    f = sentinel_farm()
    nodes = start_nodes(chatd, shards, redis_sentinel=f.addrs(), redis_master_name=f.master_name, **conf)
    return f, nodes


def test_demo_through_sentinel(sentinel_farm, chatd):
    """The demo across two nodes, the primary found through the Sentinels;
    one shard: the keys are today's names, on the primary."""
    f, nodes = sentinel_nodes(sentinel_farm, chatd, 1)
    rooms = ["lobby", "kitchen", "garden"]
    ids = arun(demo(nodes, rooms), 90)
    p = f.primary()
    assert p.cli("TYPE", STREAM) == "stream", f"no stream {STREAM} on the primary {p}"
    for room in rooms:
        kept = [e[0].decode() for e in p.cli("XRANGE", f"{STREAM}:history:{room}", "-", "+")]
        assert kept == ids[room], f"{STREAM}:history:{room} on the primary: {len(kept)} of {len(ids[room])}"


def test_primary_killed_wait_1(sentinel_farm, chatd):
    """Two shards (their streams on the one primary); SIGKILL of the primary
    mid-run; the Sentinels promote the replica; the killed one is started
    again and made a replica. Every room keeps its order, nothing acked is
    lost or doubled, delivery resumes, and what is sent after the old
    primary came back is written to the new one."""
    shards = 2
    f, nodes = sentinel_nodes(sentinel_farm, chatd, shards, redis_wait_replicas=1)
    rooms = [rs[0] for rs in rooms_per_shard(shards).values()] + ["lobby"]
    run = Rooms(nodes, rooms, rate=RATE, senders_per_node=1, receivers_per_node=1)
    out = {}

    async def main():
        await run.start()
        await asyncio.sleep(WARMUP)
        old, out["t_kill"] = await in_thread(f.fail_primary)
        out["old"] = old
        out["new"] = await in_thread(f.wait_new_primary, old)
        out["t_promoted"] = f.t_promoted
        await in_thread(f.restart, old)
        await in_thread(f.wait_replica_of, old, out["new"])
        out["t_back"], out["wall_back"] = now(), time.time()
        await asyncio.sleep(AFTER)
        await run.stop()

    arun(main(), 120)
    old, new = out["old"], out["new"]
    print(f"{new.name} named primary {out['t_promoted'] - out['t_kill']:.2f}s after the SIGKILL of "
          f"{old.name}; {old.name} an in-sync replica {out['t_back'] - out['t_promoted']:.2f}s after that")
    resumed = {}
    for room in rooms:
        resumed[room], gap = resume_after(run.checkers[room], out["t_kill"])
        print(f"room {room}: delivery resumed "
              f"{'never' if resumed[room] is None else f'{resumed[room]:.2f}s'} after the SIGKILL; "
              f"longest silence {gap if gap is None else round(gap, 2)}s")
    run.assert_ok(f"after the SIGKILL of the primary {old.name} (redis_wait_replicas = 1)")
    for room, t in resumed.items():
        assert t is not None and t < 30, f"room {room}: delivery resumed after {t}s"

    # written to the new primary after the old one came back, and kept by it
    # (the old one, now its replica, has them too)
    back_ms = int(out["wall_back"] * 1000)
    for k in range(shards):
        key = shard_key(STREAM, k, shards)
        after = new.cli("XRANGE", key, f"{back_ms}-0", "+")
        assert after, f"nothing written to {key} on the new primary {new.name} after {old.name} came back"
        assert old.info()["role"] == "slave" and old.cli("XLEN", key) == new.cli("XLEN", key)
