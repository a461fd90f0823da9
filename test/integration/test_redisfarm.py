"""The Redis deployments of redisfarm.py, proven without chatd: a Cluster of
three masters and three replicas forms, places keys where CRC16 says, and a
master killed with SIGKILL is replaced by its replica, keeping a write that
WAIT 1 confirmed, while a replica that was cut off loses what its master
took since; a primary under three Sentinels is failed over the same
way, and the killed node comes back as a replica. The failover times are
printed (run with -s to see them). Marked `farm`: make test leaves these
out (the chatd tests on these fixtures would fail first); run them by hand
after changing redisfarm.py:
  /usr/bin/python3 -m pytest -q -s -p no:cacheprovider test/integration/test_redisfarm.py"""

import time

import pytest

from conftest import CHATD_URL
from redisfarm import (SLOTS, fnv1a32, keyslot, redis_cluster, sentinel_farm, shard_key,  # noqa: F401
                       shard_range, shard_tag)

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.farm,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own Redis processes"),
]


def test_hashes():
    # Redis' own examples (cluster spec) and FNV-1a's reference values
    assert keyslot("123456789") == 12739
    assert keyslot("foo{bar}") == keyslot("bar") == keyslot("{bar}baz")
    assert keyslot("foo{}{bar}") == keyslot("foo{}{bar}".encode())
    assert keyslot("{}x") == keyslot(b"{}x") != keyslot("x")  # an empty tag: the whole key
    assert fnv1a32("") == 0x811C9DC5 and fnv1a32("a") == 0xE40C292C and fnv1a32("foobar") == 0xBF9CF968
    for shards in (1, 2, 3, 7, 64):
        for k in range(shards):
            lo, hi = shard_range(k, shards)
            assert lo <= keyslot(shard_tag(k, shards)) < hi


def test_cluster_forms_places_keys_and_fails_over(redis_cluster):
    t0 = time.monotonic()
    c = redis_cluster()
    formed = time.monotonic() - t0
    masters = c.masters()
    assert len(masters) == 3, masters
    replicas = [c.replica_of(m) for m in masters]
    assert len(set(replicas) | set(masters)) == 6, (masters, replicas)

    # our CRC16 is Redis': a few keys, and the shard streams of 3 shards
    keys = ["chatd:messages", "a", "room-7", "x{y}z"] + [shard_key("chatd:messages", k, 3) for k in range(3)]
    for key in keys:
        assert masters[0].cli("CLUSTER", "KEYSLOT", key) == keyslot(key), key
    owners = [c.master_of_key(shard_key("chatd:messages", k, 3)) for k in range(3)]
    print(f"cluster formed in {formed:.2f}s; shard tags {[shard_tag(k, 3) for k in range(3)]} "
          f"on {[o.name for o in owners]}")
    assert len(set(owners)) == 3, f"the tags of 3 shards do not land on 3 masters: {owners}"

    # a write that one replica confirmed survives the SIGKILL of its master
    key = shard_key("chatd:messages", 1, 3)
    m = c.master_of_key(key)
    rep = c.replica_of(m)
    added, acked = m.pipeline(("XADD", key, "*", "n", "1"), ("WAIT", 1, 2000))
    assert isinstance(added, bytes) and acked == 1, (added, acked)
    t_kill = c.kill(m)
    new = c.wait_failover(m)
    took = time.monotonic() - t_kill
    assert new is rep, f"{new} took over, not {m}'s replica {rep}"
    assert new.cli("XLEN", key) == 1
    assert new.info()["role"] == "master"
    print(f"cluster failover: {rep.name} serves {m.name}'s slots {took:.2f}s after the SIGKILL")

    # a replica that was cut off falls behind: what its master took since is
    # gone with the master (what chatd's redis_wait_replicas is for)
    key2 = shard_key("chatd:messages", 2, 3)
    m2 = c.master_of_key(key2)
    rep2 = c.replica_of(m2)
    m2.pipeline(("XADD", key2, "*", "n", "kept"), ("WAIT", 1, 2000))
    rep2.detach()
    added, acked = m2.pipeline(("XADD", key2, "*", "n", "lost"), ("WAIT", 1, 300))
    assert isinstance(added, bytes) and acked == 0, (added, acked)
    c.kill(m2)
    rep2.attach()
    assert c.wait_failover(m2) is rep2
    assert [e[1] for e in rep2.cli("XRANGE", key2, "-", "+")] == [[b"n", b"kept"]]

    # the killed master comes back as a replica of the new one
    t = time.monotonic()
    c.restart(m)
    c.wait_replica_of(m, new)
    print(f"killed master back as an in-sync replica {time.monotonic() - t:.2f}s after its restart")
    assert m.info("keyspace").get("db0", "").startswith("keys=1,"), m.info("keyspace")
    assert new.pipeline(("XADD", key, "*", "n", "2"), ("WAIT", 1, 2000))[1] == 1


def test_sentinel_forms_and_fails_over(sentinel_farm):
    t0 = time.monotonic()
    f = sentinel_farm()
    formed = time.monotonic() - t0
    p = f.primary()
    assert p is f.data[0], p
    assert p.pipeline(("SET", "k", "v"), ("WAIT", 1, 2000)) == ["OK", 1]

    old, t_kill = f.fail_primary()
    new = f.wait_new_primary(old)
    took = f.t_promoted - t_kill
    assert new is f.data[1]
    assert new.cli("GET", "k") == b"v"
    new.cli("SET", "k", "w")  # writable: a primary
    print(f"sentinel farm formed in {formed:.2f}s; failover: {new.name} named primary by the "
          f"sentinels {took:.2f}s after the SIGKILL")

    t = time.monotonic()
    f.restart(old)
    f.wait_replica_of(old, new)
    f.wait_ok(primary=new)
    back = time.monotonic() - t
    assert old.cli("GET", "k") == b"w"
    assert new.pipeline(("SET", "k", "x"), ("WAIT", 1, 2000)) == ["OK", 1]
    print(f"killed primary back as an in-sync replica {back:.2f}s after its restart")
