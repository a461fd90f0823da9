"""Issue 12: presence across nodes (members in `joined`, `presence` events
in the room's order with its messages, a user with several connections),
no ghosts after SIGKILL of a node (its members leave within presence_ttl),
and typing relayed across nodes through Redis, never stored."""

import asyncio
import socket
import time

import pytest

from checker import nodes_delivering
from conftest import CHATD_URL, HOST, _Reader, arun, resp_encode
from jsonclient import JsonClient, check_joined, close_all, url

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(bool(CHATD_URL), reason="starts its own nodes and Redis"),
]

STREAM = "chatd:messages"
PRESENCE_TTL = 2.0
MARGIN = 3.0


def redis_node(chatd, r, name, **kw):
    conf = dict(broker="redis", redis_url=r.url, workers=2, presence_ttl="2s")
    conf.update(kw)
    return chatd(name=name, **conf)


async def jc(node, user, room=None, **params):
    c = await JsonClient.connect_retry(url(node, user, room, **params), user)
    if room is not None:
        check_joined(await c.recv(10), room)
    return c


def room_events(c, room):
    """msg and presence frames of room in arrival order, as comparable
    tuples."""
    out = []
    for f in c.log:
        if f.get("room") != room:
            continue
        if f["op"] == "msg":
            out.append(("msg", f["id"]))
        elif f["op"] == "presence":
            assert set(f) in ({"op", "room", "joined"}, {"op", "room", "left"}), f
            out.append(("joined", f["joined"]) if "joined" in f else ("left", f["left"]))
    return out


def members(r, room):
    h = r.cli("HGETALL", f"{STREAM}:presence:{room}") or []
    return {h[k].decode(): int(h[k + 1]) for k in range(0, len(h), 2)}


async def wait_members(r, room, want, timeout=1.0):
    """The presence hash of room holds exactly want (within timeout)."""
    deadline = time.monotonic() + timeout
    while set(members(r, room)) != want:
        assert time.monotonic() < deadline, f"presence hash of {room}: {members(r, room)}, want {want}"
        await asyncio.sleep(0.05)


async def wait_event(c, room, kind, user, timeout):
    return await c.expect("presence", room=room, timeout=timeout, **{kind: user})


@pytest.mark.tsan
def test_presence_across_two_nodes_in_the_rooms_order(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        w1 = await jc(a, "w1")
        j = await w1.join("p")
        assert j["members"] == ["w1"] and j["count"] == 1, j
        w2 = await jc(b, "w2")
        j = await w2.join("p")
        assert sorted(j["members"]) == ["w1", "w2"], j
        await wait_event(w1, "p", "joined", "w2", 5)

        alice = await jc(a, "alice")
        j = await alice.join("p")
        assert sorted(j["members"]) == ["alice", "w1", "w2"] and j["count"] == 3, j
        for w in (w1, w2):
            await wait_event(w, "p", "joined", "alice", 5)

        # before -> bob joined -> after, at both nodes
        before = await w1.say("p", "before")
        bob = await jc(b, "bob")
        j = await bob.join("p")
        assert sorted(j["members"]) == ["alice", "bob", "w1", "w2"], j
        after = await w2.say("p", "after")
        got = await bob.msgs_until("p", after)
        assert [m["text"] for m in got] == ["after"], got
        for w in (w1, w2):
            await w.msgs_until("p", after)
            ev = room_events(w, "p")
            k = ev.index(("msg", before))
            assert ev[k:k + 3] == [("msg", before), ("joined", "bob"), ("msg", after)], ev[k:]

        # joins and leaves amid a stream of messages: one order everywhere
        carol = await jc(b, "carol", "p")
        stop = False

        async def chatter():
            for k in range(1000):
                if stop:
                    return
                await carol.req("send", room="p", text=f"c{k}", ref=f"c{k}")
                await asyncio.sleep(0.02)

        t = asyncio.ensure_future(chatter())
        for k in range(4):
            d = await jc(a if k % 2 else b, f"dave{k}", "p")
            await asyncio.sleep(0.1)
            if k % 2:
                await d.leave("p")
                await d.close()
            else:
                d.abort()  # gone without a close: the node notices
            await asyncio.sleep(0.1)
        await bob.leave("p")
        alice.abort()
        stop = True
        await t
        last = await carol.say("p", "last")
        for w in (w1, w2):
            await w.msgs_until("p", last, 10)
            for who in ["bob", "alice"] + [f"dave{k}" for k in range(4)]:
                await wait_event(w, "p", "left", who, PRESENCE_TTL + MARGIN)
        # from w2's join on, w1 and w2 must have seen one sequence
        ev1 = room_events(w1, "p")
        ev1 = ev1[ev1.index(("joined", "w2")) + 1:]
        ev2 = room_events(w2, "p")
        assert ev1 == ev2, "the two nodes delivered joins, leaves and messages in different orders:\n" \
            + "\n".join(f"{x} | {y}" for x, y in zip(ev1, ev2) if x != y)[:2000]
        # each user joined once and left once, in that order
        for who in ["alice", "bob", "carol"] + [f"dave{k}" for k in range(4)]:
            mine = [e for e in ev2 if e[1] == who and e[0] != "msg"]
            want = [("joined", who)] + ([] if who == "carol" else [("left", who)])
            assert mine == want, (who, mine)
        late = await jc(b, "late")
        j = await late.join("p")
        assert sorted(j["members"]) == ["carol", "late", "w1", "w2"], j
        await wait_members(r, "p", {"carol", "late", "w1", "w2"})
        await close_all([w1, w2, bob, carol, late])

    arun(main(), 90)


def test_user_with_two_connections_leaves_when_the_last_goes(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        w = await jc(b, "w", "two")
        c1 = await jc(a, "alice", "two")
        await wait_event(w, "two", "joined", "alice", 5)
        c2 = await jc(b, "alice")
        j = await c2.join("two")
        assert sorted(j["members"]) == ["alice", "w"] and j["count"] == 2, j
        c3 = await jc(a, "alice", "two")  # a third, on the first's node
        x = await jc(a, "x")
        j = await x.join("two")
        assert sorted(j["members"]) == ["alice", "w", "x"], j
        assert members(r, "two").get("alice") in (2, 3), members(r, "two")  # holders: nodes or connections
        await w.silence(1.0, "presence", joined="alice")

        await c1.leave("two")
        c3.abort()
        await c2.say("two", "still here")
        await w.silence(PRESENCE_TTL + 0.5, "presence", left="alice")
        y = await jc(b, "y")
        j = await y.join("two")
        assert sorted(j["members"]) == ["alice", "w", "x", "y"], j
        assert members(r, "two").get("alice") == 1, members(r, "two")

        await c2.close()
        await wait_event(w, "two", "left", "alice", 5)
        await w.silence(0.5, "presence", left="alice")
        await wait_members(r, "two", {"w", "x", "y"})
        await close_all([w, c1, x, y])

    arun(main(), 60)


def test_sigkill_of_a_node_leaves_no_ghosts(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        w = await jc(b, "w", "g")
        await w.join("g2")
        dave = await jc(b, "dave", "g")
        alice = await jc(a, "alice", "g")
        bob = await jc(a, "bob", "g")
        await bob.join("g2")
        for who in ("dave", "alice", "bob"):
            await wait_event(w, "g", "joined", who, 5)
        await wait_event(w, "g2", "joined", "bob", 5)
        m = await dave.say("g", "before the crash")
        await w.msgs_until("g", m)

        a.kill()
        t0 = time.monotonic()
        for room, who in (("g", "alice"), ("g", "bob"), ("g2", "bob")):
            await wait_event(w, room, "left", who, PRESENCE_TTL + MARGIN - (time.monotonic() - t0))
        took = time.monotonic() - t0
        assert took <= PRESENCE_TTL + MARGIN, took
        await wait_members(r, "g", {"w", "dave"})
        await wait_members(r, "g2", {"w"})
        nina = await jc(b, "nina")
        j = await nina.join("g")
        assert sorted(j["members"]) == ["dave", "nina", "w"], f"a ghost after SIGKILL: {j}"
        j = await nina.join("g2")
        assert sorted(j["members"]) == ["nina", "w"], f"a ghost after SIGKILL: {j}"

        # the node comes back; alice with it; no stray leave for her later
        await asyncio.get_running_loop().run_in_executor(None, a.start)
        alice = await jc(a, "alice", "g")
        await wait_event(w, "g", "joined", "alice", 5)
        await w.silence(PRESENCE_TTL + 1.0, "presence", left="alice")
        omar = await jc(b, "omar")
        j = await omar.join("g")
        assert sorted(j["members"]) == ["alice", "dave", "nina", "omar", "w"], j
        ev = [e for e in room_events(w, "g") if e[0] != "msg"]
        assert [e for e in ev if e[1] in ("alice", "bob")] == [
            ("joined", "alice"), ("joined", "bob"), ("left", "alice"), ("left", "bob"), ("joined", "alice")] or \
            [e for e in ev if e[1] in ("alice", "bob")] == [
            ("joined", "alice"), ("joined", "bob"), ("left", "bob"), ("left", "alice"), ("joined", "alice")], ev
        await close_all([w, dave, alice, nina, omar])

    arun(main(), 60)


def test_typing_across_nodes_through_redis_never_stored(redis, chatd):
    r = redis()
    a = redis_node(chatd, r, "a")
    b = redis_node(chatd, r, "b")

    async def main():
        await nodes_delivering([a, b])
        ta = await jc(a, "ta", "t")
        tb = await jc(b, "tb", "t")
        m = await ta.say("t", "a message")
        await tb.msgs_until("t", m)
        xlen = r.cli("XLEN", STREAM)
        hlen = r.cli("XLEN", f"{STREAM}:history:t")
        sub = socket.create_connection((HOST, r.port), timeout=5)
        try:
            sub.sendall(resp_encode("SUBSCRIBE", f"{STREAM}:typing"))
            rd = _Reader(sub)
            assert rd.reply()[0] == b"subscribe"
            await ta.req("typing", room="t")
            f = await tb.expect("typing", room="t", timeout=5)
            assert f == {"op": "typing", "room": "t", "user": "ta"}, f
            msg = rd.reply()
            assert msg[0] == b"message" and msg[1] == f"{STREAM}:typing".encode(), msg
        finally:
            sub.close()
        await ta.silence(0.5, "typing")
        await asyncio.sleep(1.1)
        await tb.req("typing", room="t")
        await ta.expect("typing", room="t", user="tb", timeout=5)
        await tb.silence(0.3, "typing")
        assert r.cli("XLEN", STREAM) == xlen and r.cli("XLEN", f"{STREAM}:history:t") == hlen
        for e in r.cli("XRANGE", STREAM, "-", "+"):
            assert b"typing" not in e[1], e
        m2 = await tb.say("t", "after")
        c = await jc(b, "late")
        await c.join("t", history=10)
        got = await c.msgs_until("t", m2)
        assert [x["text"] for x in got] == ["a message", "after"], got
        await c.silence(0.3, "typing")
        await close_all([ta, tb, c])

    arun(main(), 40)
