"""Chat runs on the Redis deployments of redisfarm.py (issue 14), shared by
test_cluster.py and test_sentinel.py:

  start_nodes()   chatd nodes on a farm, delivering in every shard;
  demo()          text and chatd.v1 clients in several rooms on every node
                  send; every message reaches every client of its room,
                  once, in one order per room everywhere;
  Rooms           one Checker (checker.py) per room, all at once: steady
                  traffic in several rooms while a test fails Redis over,
                  each room judged on its own (order, loss, duplicates);
  resume_after()  how long after a fault delivery in a room came back;
  Watcher, probe_since()  chatd.v1 clients that keep what they had when a
                  master died, and rejoin with `since` to learn whether
                  it was kept (recovered:true) or lost (recovered:false).

Every wait is bounded in time and every loop in count.
"""

import asyncio
import collections
import time

from checker import Checker, connect_retry, nodes_delivering
from jsonclient import Closed, JsonClient, check_joined, check_msg, parse_id, url
from redisfarm import rooms_per_shard

import websockets

STREAM = "chatd:messages"


def now():
    return time.monotonic()


async def in_thread(fn, *a):
    return await asyncio.to_thread(fn, *a)


def start_nodes(chatd, shards, n=2, **conf):
    """n chatd nodes (broker = redis, the farm's directives in conf), each
    delivering in every shard: a probe room of each is heard on every node."""
    conf = dict(dict(broker="redis", workers=2), shards=shards, **conf)
    nodes = [chatd(name=f"n{i}", **conf) for i in range(n)]

    async def ready():
        for rooms in rooms_per_shard(shards, prefix="_sync").values():
            await nodes_delivering(nodes, 30, room=rooms[0])

    asyncio.run(asyncio.wait_for(ready(), 60 * shards))
    return nodes


# --------------------------------------------------------------------------
# the demo


class TextPeer:
    """A text-protocol client of one room: what it received, as (user, text)."""

    def __init__(self, name, room, ws):
        self.name, self.room, self.ws = name, room, ws
        self.got = []
        self.foreign = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            async for m in self.ws:
                if isinstance(m, str) and ": " in m:
                    self.got.append(tuple(m.split(": ", 1)))
                else:
                    self.foreign.append(m)
        except websockets.ConnectionClosed:
            pass

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            pass
        self.task.cancel()


def _json_msgs(c, room):
    return [check_msg(f, room) for f in c.log if f.get("op") == "msg" and f.get("room") == room]


async def demo(nodes, rooms, msgs=5, timeout=45.0):
    """On every node: two text clients in each room and one chatd.v1 client
    in all of them. Each sends msgs messages to each of its rooms (the
    chatd.v1 one without waiting for acks). Asserts, per room: every client
    got every message of the room once and nothing else, all in one order;
    each sender's in its send order; the chatd.v1 ids grow, are the same on
    every node, and are the ids the senders were acked. Returns {room:
    [ids in order]}."""
    text, jsons = [], []
    for ni, node in enumerate(nodes):
        for ri, room in enumerate(rooms):
            for k in "ab":
                name = f"t{ni}{ri}{k}"
                text.append(TextPeer(name, room, await connect_retry(node.url(name, room=room), 20)))
        c = await JsonClient.connect_retry(url(node, f"j{ni}"), f"j{ni}")
        for room in rooms:
            await c.join(room)
        jsons.append(c)

    want = collections.defaultdict(set)
    refs = {}  # ref -> (json client, room, text)
    for i in range(msgs):
        for p in text:
            await p.ws.send(f"m{i}")
            want[p.room].add((p.name, f"m{i}"))
        for c in jsons:
            for room in rooms:
                ref = c.ref()
                refs[ref] = (c.name, room, f"m{i}")
                await c.req("send", room=room, text=f"m{i}", ref=ref)
                want[room].add((c.name, f"m{i}"))
        await asyncio.sleep(0.02)

    def complete():
        for p in text:
            if not want[p.room] <= set(p.got):
                return False
        for c in jsons:
            for room in rooms:
                if not want[room] <= {(f["user"], f["text"]) for f in _json_msgs(c, room)}:
                    return False
        return True

    deadline = now() + timeout
    while not complete():
        if now() > deadline:
            short = {p.name: len(want[p.room] - set(p.got)) for p in text if want[p.room] - set(p.got)}
            short.update({f"{c.name}/{room}": len(want[room] - {(f["user"], f["text"]) for f in _json_msgs(c, room)})
                          for c in jsons for room in rooms})
            raise AssertionError(f"demo: not every message arrived within {timeout}s; missing per client: {short}")
        for c in jsons:
            await c.drain(0.05)
    for c in jsons:
        await c.drain(0.5)  # a late duplicate would show now

    ids = {}
    for room in rooms:
        seqs = {p.name: p.got for p in text if p.room == room}
        seqs.update({c.name: [(f["user"], f["text"]) for f in _json_msgs(c, room)] for c in jsons})
        ref_name, ref = next(iter(seqs.items()))
        for name, seq in seqs.items():
            assert len(seq) == len(set(seq)), f"{room}: {name} received a message twice"
            assert set(seq) == want[room], (f"{room}: {name} received {len(set(seq) - want[room])} "
                                            f"messages of other rooms, e.g. {sorted(set(seq) - want[room])[:3]}")
            assert seq == ref, (f"{room}: {name} and {ref_name} disagree on the order at "
                                f"{next(i for i, (x, y) in enumerate(zip(seq, ref)) if x != y)}")
        for sender in {u for u, _ in want[room]}:
            assert [t for u, t in ref if u == sender] == [f"m{i}" for i in range(msgs)], \
                f"{room}: {sender}'s messages out of their send order"
        per = [[f["id"] for f in _json_msgs(c, room)] for c in jsons]
        keys = [parse_id(i) for i in per[0]]
        assert keys == sorted(set(keys)), f"{room}: ids do not grow: {per[0][:10]}"
        assert all(p == per[0] for p in per), f"{room}: the nodes gave one message different ids"
        ids[room] = per[0]
    byid = {(f["room"], f["user"], f["text"]): f["id"] for f in jsons[0].log if f.get("op") == "msg"}
    for c in jsons:
        errors = [f for f in c.log if f.get("op") == "error"]
        assert not errors, f"{c.name}: {errors[:3]}"
        for f in c.log:
            if f.get("op") == "ack" and f.get("ref") in refs:
                name, room, t = refs[f["ref"]]
                assert f["id"] == byid[(room, name, t)], f"{c.name}: ack {f} is not the id of its msg"
        acked = sum(1 for f in c.log if f.get("op") == "ack")
        assert acked == msgs * len(rooms), f"{c.name}: {acked} acks for {msgs * len(rooms)} sends"
    foreign = {p.name: p.foreign[:2] for p in text if p.foreign}
    assert not foreign, f"text clients got frames that are not NAME: TEXT: {foreign}"
    for p in text:
        await p.close()
    for c in jsons:
        await c.close()
    return ids


# --------------------------------------------------------------------------
# steady traffic in several rooms


class Rooms:
    """One Checker per room over the same nodes (client names prefixed
    k<i>- so that each is unique), started, stopped and judged together."""

    def __init__(self, nodes, rooms, **ck):
        self.checkers = {room: Checker(nodes, room=room, prefix=f"k{i}-", **ck) for i, room in enumerate(rooms)}

    async def start(self):
        await asyncio.gather(*(c.start() for c in self.checkers.values()))

    async def stop(self, settle=20.0):
        await asyncio.gather(*(c.stop(settle=settle) for c in self.checkers.values()))

    def exempt(self, t0, t1):
        for c in self.checkers.values():
            c.exempt(t0, t1)

    def assert_ok(self, what):
        bad = []
        for room, c in self.checkers.items():
            v = c.check()
            print(f"room {room}: {c.figures}")
            if v:
                bad.append(f"room {room}: {len(v)} violations:\n  " + "\n  ".join(v[:12])
                           + f"\n  figures: {c.figures}" + ("\n  " + "\n  ".join(c.notes) if c.notes else ""))
        if bad:
            raise AssertionError(f"delivery violations {what}:\n" + "\n".join(bad))


def resume_after(ck, t):
    """(resume, gap): resume is the longest, over the receivers connected
    throughout, from t to the first arrival of a message sent at or after
    t (None if one never got any); gap is the longest silence any of them
    had while the traffic flowed."""
    sendtime = {(c.name, seq): ts for c in ck.conns for seq, ts in c.sent}
    resume, gap = 0.0, 0.0
    for c in ck.conns:
        if c.role != "receiver" or not getattr(c, "stayed", False):
            continue
        first = next((tr for k, tr in zip(c.got, c.t_got) if sendtime.get(k, -1.0) >= t), None)
        if first is None:
            return None, None
        resume = max(resume, first - t)
        ts = [tr for tr in c.t_got if ck.t_start and tr >= ck.t_start]
        gap = max([gap] + [b - a for a, b in zip(ts, ts[1:])])
    return resume, gap


# --------------------------------------------------------------------------
# what a chatd.v1 client had, and whether it was kept


class Watcher:
    """A chatd.v1 client in some rooms that only listens: every msg frame
    with its arrival time, and its epoch per room."""

    def __init__(self, c, epochs):
        self.c = c
        self.epochs = epochs
        self.msgs = []      # (arrival, frame)
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def join(cls, node, name, rooms):
        c = await JsonClient.connect_retry(url(node, name), name)
        epochs = {}
        for room in rooms:
            epochs[room] = (await c.join(room))["epoch"]
        return cls(c, epochs)

    async def _read(self):
        for _ in range(10_000_000):
            try:
                f = await self.c._read(3600)
            except (Closed, asyncio.CancelledError):
                return
            if f.get("op") == "msg":
                self.msgs.append((now(), f))

    def last_before(self, room, t):
        """The id of the last msg of room that arrived before t, or None."""
        ids = [f["id"] for ta, f in self.msgs if ta < t and f["room"] == room]
        return ids[-1] if ids else None

    def ids_after(self, room, since):
        k = parse_id(since)
        return [f["id"] for _, f in self.msgs if f["room"] == room and parse_id(f["id"]) > k]

    async def close(self):
        self.task.cancel()
        await self.c.close()


async def probe_since(node, room, since, epoch, name="prober", settle=1.0):
    """Joins room on node with since and epoch; returns (joined, the ids of
    the msg frames that followed within settle s)."""
    c = await JsonClient.connect_retry(url(node, name), name)
    try:
        j = check_joined(await c.join(room, since=since, epoch=epoch, timeout=15), room)
        await c.drain(settle)
        return j, [f["id"] for f in c.take("msg", room=room)]
    finally:
        await c.close()
