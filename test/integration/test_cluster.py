"""Issue 14: chatd on a real Redis Cluster of three masters and three
replicas (redisfarm.py), with shards = 3 and two seed nodes: the demo across
two nodes in several rooms; each master holding one shard's stream; a
master killed with SIGKILL while messages flow in several rooms, judged
room by room by checker.py -- with redis_wait_replicas = 1 nothing
acknowledged is lost, with 0 a loss is told to a client that rejoins with
`since` (recovered:false), never hidden.

The failover times are printed (pytest -s). Run:
  CHATD_BIN=$PWD/build/chatd /usr/bin/python3 -m pytest -q -s -p no:cacheprovider \
      test/integration/test_cluster.py
"""

import asyncio
import collections

import pytest

from conftest import CHATD_URL, arun, metrics
from farmchat import (STREAM, Rooms, Watcher, demo, in_thread, now, probe_since, resume_after,
                      start_nodes)
from redisfarm import keyslot, redis_cluster, rooms_per_shard, shard_key, shard_of, shard_tag  # noqa: F401

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own Redis Cluster and nodes"),
]

SHARDS = 3
RATE = 20.0         # messages per second per sender
WARMUP = 2.0        # traffic before the fault
AFTER = 3.0         # traffic after the cluster is whole again
LAG = 0.5           # the killed master's replica is cut off this long before


def cluster_nodes(redis_cluster, chatd, **conf):
    c = redis_cluster()
    nodes = start_nodes(chatd, SHARDS, redis_cluster=c.seeds(2), **conf)
    return c, nodes


def fault_rooms():
    """Two rooms in shard 0 (the one whose master dies), one in each other."""
    per = rooms_per_shard(SHARDS, per_shard=2)
    return per[0] + [rs[0] for k, rs in per.items() if k != 0]


def test_demo_and_shards_over_masters(redis_cluster, chatd):
    """(a) The demo across two nodes on the cluster; (b) the shards' streams
    land one on each master, and every key of a room lives in its shard's
    slot, on the master that serves it."""
    c, nodes = cluster_nodes(redis_cluster, chatd)
    rooms = [r for rs in rooms_per_shard(SHARDS, per_shard=2).values() for r in rs]
    ids = arun(demo(nodes, rooms), 90)
    assert all(len(v) == 6 * 5 for v in ids.values()), {r: len(v) for r, v in ids.items()}

    masters = c.masters()
    keys = {m.name: sorted(k.decode() for k in m.cli("KEYS", f"{STREAM}*")) for m in masters}
    print(f"keys per master: {keys}")
    untagged = [k for ks in keys.values() for k in ks if not k.startswith(f"{STREAM}:{{")]
    for k in range(SHARDS):
        stream = shard_key(STREAM, k, SHARDS)
        m = c.master_of_key(stream)
        assert stream in keys[m.name], f"shard {k}'s stream {stream} is not on {m.name}, its slot's master"
        assert m.cli("TYPE", stream) == "stream"
        lo_rooms = [r for r in rooms if shard_of(r, SHARDS) == k]
        entries = [dict(zip(e[1][0::2], e[1][1::2])) for e in m.cli("XRANGE", stream, "-", "+")]
        n = sum(1 for e in entries if b"kind" not in e and e.get(b"room", b"").decode() in lo_rooms)
        assert n == 30 * len(lo_rooms), f"shard {k}'s stream holds {n} messages of {lo_rooms}"
    owners = {c.master_of_key(shard_key(STREAM, k, SHARDS)).name for k in range(SHARDS)}
    assert len(owners) == SHARDS, f"the {SHARDS} shard streams are on {owners}, not one per master"
    for room in rooms:
        prefix = f"{STREAM}:{{{shard_tag(shard_of(room, SHARDS), SHARDS)}}}"
        mine = [(name, k) for name, ks in keys.items() for k in ks if k.endswith(f":{room}")]
        assert mine, f"no key of room {room} in the cluster"
        for name, k in mine:
            assert k.startswith(prefix), f"room {room} is in shard {shard_of(room, SHARDS)} ({prefix}) but has key {k}"
            assert c.master_of_key(k).name == name
    assert not untagged, f"keys outside every shard's slot: {untagged}"


def failover_run(c, nodes, lag, watch=False, restart=True):
    """Traffic in fault_rooms() on both nodes; after WARMUP the master of
    shard 0 is killed (its replica cut off `lag` s before, so that the
    master holds writes the replica lacks); once the replica is promoted and
    the cluster ok, the killed node is started again (restart: it comes back
    as a replica). watch: chatd.v1 Watchers in shard 0's rooms on every node.
    Returns a dict of what happened."""
    rooms = fault_rooms()
    run = Rooms(nodes, rooms, rate=RATE, senders_per_node=1, receivers_per_node=1)
    stream = shard_key(STREAM, 0, SHARDS)
    old = c.master_of_key(stream)
    rep = c.replica_of(old)
    out = dict(rooms=rooms, run=run, old=old, stream=stream, watchers=[], snap=[])

    async def main():
        watchers = [await Watcher.join(n, f"w{i}", rooms[:2]) for i, n in enumerate(nodes)] if watch else []
        await run.start()
        await asyncio.sleep(WARMUP)
        out["t_cut"] = now()
        if lag:
            await in_thread(rep.detach)
            await asyncio.sleep(lag)
        out["t_kill"] = await in_thread(c.kill, old)
        await in_thread(rep.attach)
        out["new"] = await in_thread(c.wait_failover, old)
        out["t_promoted"] = now()
        if restart:
            await in_thread(c.restart, old)
            await in_thread(c.wait_replica_of, old, out["new"])
            out["t_back"] = now()
        await asyncio.sleep(AFTER)
        await run.stop()
        out["watchers"] = watchers
        out["snap"] = [{room: w.last_before(room, out["t_promoted"]) for room in rooms[:2]} for w in watchers]
        for w in watchers:
            await w.close()

    try:
        arun(main(), 120)
    finally:
        rep.attach()
    took = out["t_promoted"] - out["t_kill"]
    for room in rooms:
        resume, gap = resume_after(run.checkers[room], out["t_kill"])
        print(f"room {room} (shard {shard_of(room, SHARDS)}): delivery resumed "
              f"{'never' if resume is None else f'{resume:.2f}s'} after the SIGKILL; longest silence "
              f"{gap if gap is None else round(gap, 2)}s")
        out.setdefault("resume", {})[room] = resume
    print(f"{rep.name} promoted {took:.2f}s after the SIGKILL of {old.name}"
          + (f"; {old.name} back as its replica {out['t_back'] - out['t_promoted']:.2f}s later"
             if "t_back" in out else ""))
    return out


def test_master_killed_wait_1(redis_cluster, chatd):
    """(c) redis_wait_replicas = 1: a master dies while its replica is
    LAG s behind (the publishes it holds are not acked: WAIT 1 waits);
    the replica is promoted; every room keeps its order, nothing acked is
    lost, nothing is stored twice, and delivery resumes within seconds."""
    c, nodes = cluster_nodes(redis_cluster, chatd, redis_wait_replicas=1)
    out = failover_run(c, nodes, LAG)
    out["run"].assert_ok(f"after the SIGKILL of {out['old'].name} (redis_wait_replicas = 1)")
    for room, resume in out["resume"].items():
        assert resume is not None and resume < 20, f"room {room}: delivery resumed after {resume}s"


def test_master_killed_wait_0_loss_is_told(redis_cluster, chatd):
    """(d) redis_wait_replicas = 0: a master dies while its replica is LAG s
    behind, so messages it had acked are gone from the promoted replica.
    Those (sent from the cut to the kill) are excused from the checker's
    loss rules, never from order and duplicates; and a chatd.v1 client
    that rejoins with the last id it had from the dead master is told
    recovered:false when that id is gone, recovered:true (and exactly what
    followed) when it was kept."""
    c, nodes = cluster_nodes(redis_cluster, chatd)
    rooms = fault_rooms()
    out = failover_run(c, nodes, LAG, watch=True, restart=False)
    run = out["run"]
    run.exempt(out["t_cut"] - 0.5, out["t_kill"])
    run.assert_ok(f"after the SIGKILL of {out['old'].name} (redis_wait_replicas = 0)")

    new = out["new"]
    kept = {e[0].decode() for e in new.cli("XRANGE", out["stream"], "-", "+")}
    lost = collections.Counter()
    for w in out["watchers"]:
        for _, f in w.msgs:
            if f["room"] in rooms[:2] and f["id"] not in kept:
                lost[f["id"]] += 1
    print(f"{len(lost)} messages delivered before the failover are not in the promoted replica's stream")

    async def probes():
        told = []
        for w, snap in zip(out["watchers"], out["snap"]):
            for room, since in snap.items():
                assert since is not None, f"{w.c.name} got nothing in {room} before the failover"
                for node in nodes:
                    j, replay = await probe_since(node, room, since, w.epochs[room])
                    was_kept = since in kept
                    told.append((room, since, was_kept, j["recovered"]))
                    if was_kept:
                        assert j["recovered"] is True, f"{node.name}: since {since} is kept, yet {j}"
                        want = w.ids_after(room, since)
                        assert replay[:len(want)] == want, (f"{node.name}: since {since} replayed "
                                                            f"{replay[:5]}..., the watcher had {want[:5]}...")
                    else:
                        assert j["recovered"] is False, (f"{node.name}: {since} was lost in the failover "
                                                         f"(not in {out['stream']} on {new.name}), yet {j}")
                        assert all(i in kept for i in replay), f"{node.name}: replayed lost ids {replay}"
        return told

    told = arun(probes(), 60)
    print(f"rejoins with since (room, since, kept, recovered): {told}")


def test_slot_migration_while_messages_flow(redis_cluster, chatd):
    """(e) Shard 0's slot is moved to another master, key by key, while
    messages flow in its rooms (CLUSTER SETSLOT IMPORTING / MIGRATING,
    MIGRATE, SETSLOT NODE -- what redis-cli --cluster reshard does): chatd
    follows ASK while the keys move and MOVED after, nothing is lost,
    doubled or reordered, and both nodes count the redirects they followed."""
    c = redis_cluster(replicas=0)
    nodes = start_nodes(chatd, SHARDS, redis_cluster=c.seeds(2))
    rooms = rooms_per_shard(SHARDS, per_shard=2)[0]
    run = Rooms(nodes, rooms, rate=RATE, senders_per_node=1, receivers_per_node=1)
    stream = shard_key(STREAM, 0, SHARDS)
    slot = keyslot(stream)
    src = c.master_of_slot(slot)
    dst = next(m for m in c.masters() if m is not src)
    ids = {m.port: m.cli("CLUSTER", "MYID").decode() for m in (src, dst)}

    async def main():
        await run.start()
        await asyncio.sleep(WARMUP)
        await in_thread(dst.cli, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
        await in_thread(src.cli, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
        moved = 0
        for _ in range(200):  # a few keys at a time, the flow going on meanwhile: ASK
            keys = await in_thread(src.cli, "CLUSTER", "GETKEYSINSLOT", slot, 3)
            if not keys:
                break
            await in_thread(src.cli, "MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            await asyncio.sleep(0.2)
        assert moved and not await in_thread(src.cli, "CLUSTER", "GETKEYSINSLOT", slot, 1)
        await asyncio.sleep(0.5)  # every key at dst, the slot still src's: ASK
        for m in c.masters():
            await in_thread(m.cli, "CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
        await asyncio.sleep(AFTER)  # now MOVED, for whoever still asks src
        await run.stop()

    arun(main(), 120)
    run.assert_ok(f"shard 0's slot {slot} moved from {src.name} to {dst.name}")
    assert c.master_of_slot(slot) is dst
    assert dst.cli("TYPE", stream) == "stream"
    redirects = [metrics(n.port)["chatd_redis_redirects_total"] for n in nodes]
    assert all(r > 0 for r in redirects), f"redirects followed per node: {redirects}"
