"""Issue 12: recovery with `since` and scroll-back with `history`, against
real nodes and a real redis-server: exactly once at the seam while 50
messages/s flow (20 runs in a row), across nodes, after SIGKILL and restart
of the serving node, after a Redis restart with and without its data,
paging down to the start of what is kept, `unavailable` while Redis is
away; and with the local broker, `since` after a restart.

The truth is what the sender got acked: every message the receiver gets
must be one of them, with the acked id and text, and the receiver's
messages over all its connections must be exactly the acked ones from its
first on, in id order, each once."""

import asyncio
import random
import shutil
import signal
import time

import pytest

from checker import nodes_delivering
from conftest import CHATD_URL, arun
from jsonclient import Closed, JsonClient, check_joined, check_msg, parse_id, url

pytestmark = pytest.mark.skipif(bool(CHATD_URL), reason="starts its own nodes")

STREAM = "chatd:messages"


def redis_node(chatd, r, name, **kw):
    conf = dict(broker="redis", redis_url=r.url, workers=2)
    conf.update(kw)
    return chatd(name=name, **conf)


async def in_thread(fn, *a):
    """Runs a blocking fixture call (a node's start, Redis' restart) off the
    event loop, so that the flow and the readers go on meanwhile."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *a)


class Flow:
    """One sender sending `rate` messages per second into room, each with a
    ref; records what was acked (the truth) and every error."""

    def __init__(self, client, room, rate=50.0):
        self.c = client
        self.room = room
        self.rate = rate
        self.sent = {}       # ref -> text
        self.acks = {}       # ref -> id
        self.ack_order = []  # ids in the order the acks arrived
        self.errors = []
        self.closed = None
        self.sending = False
        self.tasks = []

    def start(self):
        self.sending = True
        self.tasks = [asyncio.ensure_future(self._send()), asyncio.ensure_future(self._read())]

    async def _send(self):
        t0 = time.monotonic()
        for k in range(1_000_000):
            if not self.sending or self.closed:
                return
            await asyncio.sleep(max(0.0, t0 + k / self.rate - time.monotonic()))
            ref, text = f"f{k}", f"m{k}"
            self.sent[ref] = text
            try:
                await self.c.req("send", room=self.room, text=text, ref=ref)
            except Exception as e:  # noqa: BLE001 -- reported by stop()
                self.closed = f"send failed: {e!r}"
                return

    async def _read(self):
        for _ in range(10_000_000):
            try:
                f = await self.c._read(3600)
            except Closed as e:
                self.closed = f"closed {e.code} {e.reason!r}"
                return
            if f["op"] == "ack" and f.get("ref") in self.sent:
                assert f["ref"] not in self.acks, f"two acks for {f['ref']}"
                self.acks[f["ref"]] = f["id"]
                self.ack_order.append(f["id"])
            elif f["op"] == "error":
                self.errors.append(f)

    def answered(self):
        return len(self.acks) + len(self.errors)

    async def wait_acks_after(self, n, timeout=30.0):
        """Waits until more than n messages are acked."""
        deadline = time.monotonic() + timeout
        while len(self.acks) <= n:
            assert not self.closed, f"sender {self.closed}"
            assert time.monotonic() < deadline, f"no ack for {timeout}s ({len(self.acks)} acked)"
            await asyncio.sleep(0.05)

    async def stop(self, timeout=30.0):
        """Stops sending; waits until every message sent is answered."""
        self.sending = False
        await asyncio.sleep(0.05)
        deadline = time.monotonic() + timeout
        while self.answered() < len(self.sent) and not self.closed:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        assert not self.closed, f"the sender's connection: {self.closed}"
        assert not self.errors, f"the sender got errors: {self.errors[:5]}"
        assert len(self.acks) == len(self.sent), \
            f"{len(self.sent) - len(self.acks)} of {len(self.sent)} sends never answered in {timeout}s"
        keys = [parse_id(i) for i in self.ack_order]
        assert all(a < b for a, b in zip(keys, keys[1:])), "the acks of one sender came out of id order"

    def acked(self):
        """[(id, text)] of every acked message, in id order."""
        return sorted(((i, self.sent[r]) for r, i in self.acks.items()), key=lambda x: parse_id(x[0]))

    def last_id(self):
        return max(self.acks.values(), key=parse_id)


class Receiver:
    """One user that keeps reconnecting with since; `got` is every msg of
    room it received over all its connections, in order."""

    def __init__(self, name, room):
        self.name = name
        self.room = room
        self.got = []       # (id, text)
        self.since = None
        self.epoch = None
        self.c = None
        self.joins = []

    async def connect(self, node, via_url=False, recovered=None, timeout=30.0):
        params = {}
        if self.since is not None:
            params = dict(since=self.since, epoch=self.epoch)
        if via_url:
            c = await JsonClient.connect_retry(url(node, self.name, self.room, **params), self.name, timeout)
            j = check_joined(await c.recv(10), self.room)
        else:
            c = await JsonClient.connect_retry(url(node, self.name), self.name, timeout)
            j = await c.join(self.room, **params)
        assert c.log[0] is j, f"a frame before joined: {c.log[:3]}"
        if recovered is not None:
            assert j["recovered"] is recovered, f"join {len(self.joins)} with {params} to {node.name}: {j}"
        if recovered:
            assert j["epoch"] == self.epoch, f"epoch changed: {self.epoch} -> {j}"
        self.joins.append(j)
        self.epoch = self.epoch or j["epoch"]
        self.c = c
        return j

    def _take(self):
        for f in self.c.take("msg", room=self.room):
            check_msg(f, self.room)
            self.got.append((f["id"], f["text"]))
            self.since = f["id"]

    async def read_for(self, seconds):
        """Reads for seconds (or until the node goes away)."""
        try:
            await self.c.drain(seconds)
        except Closed:
            pass
        self._take()

    async def read_until(self, last_id, timeout=15.0):
        deadline = time.monotonic() + timeout
        while last_id not in {i for i, _ in self.got}:
            assert time.monotonic() < deadline, (f"{self.name}: {last_id} not received in {timeout}s; "
                                                 f"last: {self.got[-3:]}")
            await self.read_for(0.1)

    async def drop(self, abort=False):
        self._take()
        if abort:
            self.c.abort()
        else:
            await self.c.close()


def verify(rcv, flow, what=""):
    """rcv.got is exactly the acked messages from its first on, once each,
    in order, with the acked ids and texts."""
    acked = flow.acked()
    assert rcv.got, f"{what}: {rcv.name} received nothing"
    index = {i: k for k, (i, _) in enumerate(acked)}
    ids = [i for i, _ in rcv.got]
    dups = sorted({i for i in ids if ids.count(i) > 1}, key=parse_id)
    assert not dups, f"{what}: {rcv.name} received {len(dups)} messages twice, e.g. {dups[:5]}"
    unknown = [g for g in rcv.got if g[0] not in index]
    assert not unknown, f"{what}: {rcv.name} received messages never acked: {unknown[:5]}"
    start = index[ids[0]]
    want = acked[start:]
    if rcv.got != want:
        have = set(ids)
        missing = [w for w in want if w[0] not in have]
        wrong = [(g, acked[index[g[0]]]) for g in rcv.got if acked[index[g[0]]] != g]
        order = next((k for k, (g, w) in enumerate(zip(rcv.got, want)) if g != w), None)
        raise AssertionError(
            f"{what}: {rcv.name} got {len(rcv.got)} messages, {len(want)} acked from its first on: "
            f"missing {len(missing)} {missing[:6]}; wrong text {wrong[:3]}; first difference at "
            f"{order}: {rcv.got[order:order + 3] if order is not None else ''} vs "
            f"{want[order:order + 3] if order is not None else ''}")


async def sender(node, room, name="sender"):
    s = await JsonClient.connect_retry(url(node, name, room), name)
    check_joined(await s.recv(10), room)
    return s


# --------------------------------------------------------------------------
# the seam


@pytest.mark.redis
@pytest.mark.slow
def test_recovery_exactly_once_at_the_seam_20_runs(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")

    async def main():
        await nodes_delivering([a])
        flow = Flow(await sender(a, "seam"), "seam", 50)
        flow.start()
        rcv = Receiver("rcv", "seam")
        j = await rcv.connect(a, recovered=False)
        assert j["epoch"] == r.cli("GET", f"{STREAM}:epoch").decode(), j
        await rcv.read_for(0.5)
        rng = random.Random(12)
        for run in range(20):
            await rcv.drop(abort=run % 2 == 1)
            await asyncio.sleep(rng.choice([0.0, 0.02, 0.1, 0.25]))
            await rcv.connect(a, via_url=run % 3 == 0, recovered=True)
            await rcv.read_for(rng.uniform(0.6, 0.9))
        await flow.stop()
        await rcv.read_until(flow.last_id())
        verify(rcv, flow, "20 reconnects with since at 50 msg/s")
        assert len(flow.acks) >= 500, len(flow.acks)
        await rcv.drop()

    arun(main(), 120)


@pytest.mark.redis
@pytest.mark.slow
def test_recovery_across_nodes(redis, chatd):
    r = redis()
    nodes = [redis_node(chatd, r, n) for n in ("a", "b", "c")]

    async def main():
        await nodes_delivering(nodes)
        flow = Flow(await sender(nodes[0], "across"), "across", 50)
        flow.start()
        rcv = Receiver("rcv", "across")
        await rcv.connect(nodes[1], recovered=False)
        await rcv.read_for(0.5)
        for run in range(8):
            await rcv.drop(abort=run % 2 == 0)
            await asyncio.sleep(0.05 * (run % 3))
            await rcv.connect(nodes[(run + 2) % 3], via_url=run % 2 == 1, recovered=True)
            await rcv.read_for(0.7)
        await flow.stop()
        await rcv.read_until(flow.last_id())
        verify(rcv, flow, "reconnects to other nodes")
        await rcv.drop()

    arun(main(), 90)


@pytest.mark.redis
@pytest.mark.slow
def test_recovery_after_sigkill_and_restart_of_the_serving_node(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        flow = Flow(await sender(b, "kill"), "kill", 50)
        flow.start()
        rcv = Receiver("rcv", "kill")
        await rcv.connect(a, recovered=False)
        await rcv.read_for(1.0)

        # a dies under the receiver; it goes to b
        a.kill()
        await rcv.read_for(0.5)
        with pytest.raises(Closed):
            await rcv.c.ping(2)
        await rcv.connect(b, recovered=True)
        await rcv.read_for(0.8)

        # a comes back with an empty memory; the receiver goes back to it
        await in_thread(a.start)
        await rcv.drop()
        await rcv.connect(a, recovered=True)
        await rcv.read_for(0.8)

        # a dies again and the receiver waits for it: the restarted node
        # that served it recovers it
        a.kill()
        await rcv.read_for(0.3)
        await asyncio.sleep(0.5)
        t = asyncio.ensure_future(in_thread(a.start))
        await rcv.connect(a, via_url=True, recovered=True, timeout=30)
        await t
        await rcv.read_for(0.8)
        await flow.stop()
        await rcv.read_until(flow.last_id())
        verify(rcv, flow, "SIGKILL and restart of the serving node")
        await rcv.drop()

    arun(main(), 120)


@pytest.mark.redis
@pytest.mark.slow
def test_recovery_after_redis_restart_with_persistence(redis, chatd):
    r = redis()  # appendonly yes: a restart keeps everything acked
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        stayer = Receiver("stayer", "persist")
        await stayer.connect(b, recovered=False)
        flow = Flow(await sender(a, "persist"), "persist", 50)
        flow.start()
        rcv = Receiver("rcv", "persist")
        await rcv.connect(a, recovered=False)
        await rcv.read_for(1.0)
        epoch = rcv.epoch
        await rcv.drop()

        await in_thread(r.restart)
        n = len(flow.acks)
        await flow.wait_acks_after(n + 25, 30)  # stored again, after the restart
        assert r.cli("GET", f"{STREAM}:epoch").decode() == epoch
        j = await rcv.connect(b, recovered=True)
        assert j["epoch"] == epoch
        await rcv.read_for(0.8)
        await rcv.drop()
        await rcv.connect(a, recovered=True)
        await rcv.read_for(0.5)
        await flow.stop()
        await rcv.read_until(flow.last_id())
        verify(rcv, flow, "since across a Redis restart with its data")
        await stayer.read_until(flow.last_id())
        verify(stayer, flow, "a client connected throughout a Redis restart")
        assert stayer.got[0] == flow.acked()[0], "the stayer missed the first messages"
        await rcv.drop()
        await stayer.drop()

    arun(main(), 120)


@pytest.mark.redis
@pytest.mark.slow
def test_redis_restart_without_its_data_changes_the_epoch(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        s = await sender(a, "wipe")
        old = [await s.say("wipe", f"old{k}") for k in range(20)]
        rcv = Receiver("rcv", "wipe")
        await rcv.connect(b, recovered=False)
        stayer = Receiver("stayer", "wipe")
        await stayer.connect(a, recovered=False)
        old += [await s.say("wipe", f"old{k}") for k in range(20, 25)]
        await rcv.read_until(old[-1])
        epoch = rcv.epoch
        await rcv.drop()

        def wipe():
            r.stop()
            for p in r.dir.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            r.start()

        await in_thread(wipe)
        new = [await s.say("wipe", "new0", timeout=30)]
        new += [await s.say("wipe", f"new{k}") for k in range(1, 10)]
        await stayer.read_until(new[-1], 20)

        lives = []
        for node in (b, a):
            c = Receiver("rcv", "wipe")
            c.since, c.epoch = rcv.since, epoch
            j = await c.connect(node)
            assert j["recovered"] is False, (f"{node.name}: Redis lost its data ({STREAM}:epoch is now "
                                             f"{r.cli('GET', f'{STREAM}:epoch')!r}), yet a since of the "
                                             f"old epoch {epoch} got {j}")
            assert j["epoch"] != epoch, f"Redis lost its data, the epoch stayed {epoch}: {j}"
            assert j["epoch"] == r.cli("GET", f"{STREAM}:epoch").decode(), j
            live = await s.say("wipe", f"live-{node.name}")
            lives.append(f"live-{node.name}")
            await c.read_until(live)
            assert [t for _, t in c.got] == [f"new{k}" for k in range(10)] + lives, \
                f"after recovered:false at {node.name}, the latest history of the new epoch, then live: {c.got}"
            await c.drop()
            # the new epoch recovers as usual
            c2 = Receiver("rcv", "wipe")
            c2.since, c2.epoch = new[4], j["epoch"]
            await c2.connect(node, recovered=True)
            await c2.read_until(live)
            assert [i for i, _ in c2.got][:5] == new[5:], c2.got
            await c2.drop()
        await s.close()
        await stayer.drop()

    arun(main(), 120)


@pytest.mark.redis
def test_join_with_history_is_exact_at_the_seam(redis, chatd):
    """Joins with history=N while 50 msg/s flow, on both nodes: the replay
    and the live messages after it are one run of the acked messages,
    without a gap or a repeat, at least N long."""
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        flow = Flow(await sender(a, "hseam"), "hseam", 50)
        flow.start()
        await flow.wait_acks_after(30, 10)
        joiners = []
        for k in range(10):
            c = await JsonClient.connect_retry(url((a, b)[k % 2], f"j{k}"), f"j{k}")
            j = await c.join("hseam", history=10 + k)
            assert c.log[0] is j and j["recovered"] is False, j
            joiners.append(c)
            await asyncio.sleep(0.13)
        await asyncio.sleep(0.3)
        await flow.stop()
        last = flow.last_id()
        for k, c in enumerate(joiners):
            rcv = Receiver(c.name, "hseam")
            rcv.c = c
            await rcv.read_until(last)
            verify(rcv, flow, f"join with history={10 + k}")
            assert len(rcv.got) >= 10 + k, len(rcv.got)
            await c.close()

    arun(main(), 60)


# --------------------------------------------------------------------------
# scroll-back and what is kept


@pytest.mark.redis
def test_history_pages_to_the_start_of_what_is_kept(redis, chatd):
    r = redis()
    conf = dict(history_max=30, history_size=10)
    a = redis_node(chatd, r, "a", **conf)
    b = redis_node(chatd, r, "b", **conf)

    async def main():
        await nodes_delivering([a, b])
        s = await sender(a, "scroll")
        texts = [f"m{k}" for k in range(120)]
        refs = []
        for t in texts:
            refs.append(s.ref())
            await s.req("send", room="scroll", text=t, ref=refs[-1])
        ids = [(await s.expect_answer(ref, "ack", 20))["id"] for ref in refs]
        byid = dict(zip(ids, texts))

        key = f"{STREAM}:history:scroll"
        entries = r.cli("XRANGE", key, "-", "+")
        kept_ids = [e[0].decode() for e in entries]
        assert 30 <= len(kept_ids) <= 120, len(kept_ids)
        assert kept_ids == ids[-len(kept_ids):], "Redis history is not the latest acked messages"
        for e in entries[-3:]:
            kv = dict(zip(e[1][0::2], e[1][1::2]))
            assert kv.get(b"user") == b"sender" and kv.get(b"text").decode() == byid[e[0].decode()], kv
            assert int(kv.get(b"ts")) > 0, kv
        ttl = r.cli("TTL", key)
        assert 0 < ttl <= 7 * 86400, f"history key TTL {ttl} (history_ttl 7d)"

        # page back from b (it holds 10 in memory), 7 at a time
        q = await JsonClient.connect_retry(url(b, "reader"), "reader")
        collected, before = [], None
        for n in range(40):
            req = dict(room="scroll", limit=7)
            if before:
                req["before"] = before
            await q.req("history", **req)
            page = await q.expect("history", room="scroll", timeout=10)
            msgs = page["messages"]
            for m in msgs:
                assert byid.get(m["id"]) == m["text"] and m["user"] == "sender", m
            if before:
                assert not msgs or parse_id(msgs[-1]["id"]) < parse_id(before), (before, msgs)
            keys = [parse_id(m["id"]) for m in msgs]
            assert keys == sorted(set(keys)), f"page {n} not oldest first: {msgs}"
            collected = [m["id"] for m in msgs] + collected
            if not page["more"]:
                break
            assert len(msgs) == 7, page
            before = msgs[0]["id"]
        else:
            raise AssertionError("more:true after 40 pages of 7")
        assert collected == kept_ids, (f"paged {len(collected)} ({collected[:2]}..), kept "
                                       f"{len(kept_ids)} ({kept_ids[:2]}..)")
        await q.req("history", room="scroll", before=kept_ids[0])
        page = await q.expect("history", room="scroll")
        assert page == {"op": "history", "room": "scroll", "messages": [], "more": False}, page

        # a since older than what is kept: recovered false and the latest 50
        # (of what is kept); a since inside it: recovered
        oldest = ids.index(kept_ids[0])
        for node in (a, b):
            c = Receiver("late", "scroll")
            c.since, c.epoch = ids[0], s.log[0]["epoch"]
            await c.connect(node, recovered=oldest <= 1)
            await c.read_until(ids[-1])
            want = ids[1:] if oldest <= 1 else ids[-min(50, len(kept_ids)):]
            assert [i for i, _ in c.got] == want, f"{node.name}: {len(c.got)} replayed: {c.got[:2]}"
            await c.drop()
            c = Receiver("mid", "scroll")
            c.since, c.epoch = ids[-25], s.log[0]["epoch"]
            await c.connect(node, recovered=True)
            await c.read_until(ids[-1])
            assert [i for i, _ in c.got] == ids[-24:]
            await c.drop()
        await q.close()
        await s.close()

    arun(main(), 60)


@pytest.mark.redis
@pytest.mark.slow
def test_unavailable_while_redis_is_away(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a", workers=1, publish_queue=4, redis_timeout="3s", history_size=5)

    async def main():
        await nodes_delivering([a])
        s = await sender(a, "away")
        w = await sender(a, "away", "watcher")
        before = [await s.say("away", f"b{k}") for k in range(8)]
        r.proc.send_signal(signal.SIGSTOP)
        try:
            refs = [f"q{k}" for k in range(10)]
            for k, ref in enumerate(refs):
                await s.req("send", room="away", text=f"q{k}", ref=ref)
            answers_early = []
            first = await s.expect(("error", "ack"), timeout=3)
            assert first["op"] == "error" and first.get("code") == "unavailable", first
            await s.ping()
            await s.req("history", room="away", before=before[2], limit=2, ref="h")
            for _ in range(100):
                f = await s.expect(("history", "error"), timeout=10)
                if f["op"] == "history" or f.get("ref") == "h":
                    break
                answers_early.append(f)
            assert f["op"] == "error" and f.get("code") == "unavailable" and f.get("ref") == "h", f
            await s.ping()
        finally:
            r.proc.send_signal(signal.SIGCONT)
        answers = {f["ref"]: f for f in [first] + answers_early}
        for ref in refs:
            if ref not in answers:
                answers[ref] = await s.expect(("ack", "error"), ref=ref, timeout=20)
        acked = [ref for ref in refs if answers[ref]["op"] == "ack"]
        refused = [ref for ref in refs if answers[ref]["op"] == "error"]
        assert all(answers[ref].get("code") == "unavailable" for ref in refused), answers
        assert 1 <= len(refused) <= 9 and acked == refs[:len(acked)], answers
        # Redis is back: a send is taken again ("try again" may last until
        # the publisher has Redis' own answers for what it kept)
        t_back = time.monotonic()
        for k in range(100):
            await s.req("send", room="away", text="after", ref=f"after{k}")
            f = await s.expect(("ack", "error"), ref=f"after{k}", timeout=10)
            if f["op"] == "ack":
                last = f["id"]
                break
            assert f.get("code") == "unavailable", f
            assert time.monotonic() - t_back < 2, f"sends refused for 2s after Redis came back: {f}"
            await asyncio.sleep(0.05)
        got = await w.msgs_until("away", last, 10)
        want = before + [answers[ref]["id"] for ref in acked] + [last]
        assert [m["id"] for m in got] == want, [m["text"] for m in got]
        await s.close()
        await w.close()

    arun(main(), 90)


# --------------------------------------------------------------------------
# the local broker


def test_local_broker_since_after_a_restart_is_not_recovered(chatd):
    node = chatd()
    state = {}

    async def before():
        a = await JsonClient.connect(url(node, "alice", "lr"), "alice")
        j = check_joined(await a.recv(), "lr")
        state["epoch"] = j["epoch"]
        state["ids"] = [await a.say("lr", f"x{k}") for k in range(3)]
        c = Receiver("bob", "lr")
        c.since, c.epoch = state["ids"][0], j["epoch"]
        await c.connect(node, recovered=True)  # the same life: recovered
        await c.read_until(state["ids"][-1])
        assert [i for i, _ in c.got] == state["ids"][1:]
        await c.drop()
        await a.close()

    arun(before(), 30)
    rc, problems = node.stop()
    assert rc == 0 and not problems, (rc, problems)
    node.start()

    async def after():
        kept = []  # the new life's history
        for via_url in (False, True):
            c = Receiver("bob", "lr")
            c.since, c.epoch = state["ids"][-1], state["epoch"]
            j = await c.connect(node, via_url=via_url, recovered=False)
            assert j["epoch"] != state["epoch"], j
            await c.read_for(0.3)
            assert c.got == kept, f"after recovered:false, the latest history of this life: {c.got}"
            a = await JsonClient.connect(url(node, "alice", "lr"), "alice")
            await a.expect("joined")
            i = await a.say("lr", f"new life {via_url}")
            kept.append((i, f"new life {via_url}"))
            await c.read_until(i)
            assert c.got == kept, c.got
            await c.drop()
            await a.close()

    arun(after(), 30)


@pytest.mark.redis
@pytest.mark.slow
def test_recovery_to_a_node_that_reads_behind_repeats_nothing(redis, chatd):
    """A client read message X on node A, and rejoins on node C whose
    reads lag (0.4 s between C and Redis): its since is ahead of what C has
    delivered when it joins. Redis knows X, so the answer is recovered:true;
    X then reaches C's room log later and must not be told again."""
    from faultproxy import FaultProxy
    r = redis()
    with FaultProxy(r.port) as px:
        a = redis_node(chatd, r, "a")
        c = chatd(name="c", broker="redis", redis_url=px.url, workers=2)

        async def main():
            await nodes_delivering([a, c])
            mover = await JsonClient.connect(url(a, "mover"), "mover")
            j = await mover.join("seam")
            await mover.say("seam", "before")
            await asyncio.sleep(0.5)  # C has read it too
            px.set_delay(0.4)
            x = await mover.say("seam", "X")
            await mover.expect("msg", room="seam", id=x)
            mover.abort()
            back = await JsonClient.connect(url(c, "mover"), "mover")
            await back.req("join", room="seam", since=x, epoch=j["epoch"])
            joined = check_joined(await back.expect("joined", room="seam", timeout=10), "seam")
            assert joined["recovered"] is True, joined
            await back.drain(2.0)
            again = [f for f in back.pending if f.get("op") == "msg" and parse_id(f["id"]) <= parse_id(x)]
            assert again == [], f"told again after recovered:true: {again}"
            px.set_delay(0)
            await back.close()

        arun(main(), 60)
