"""Issue 12: the JSON protocol chatd.v1 (PROTOCOL.md) op by op, on one node
with the local broker: the subprotocol, join/leave/send/history/typing/ping,
every error code, the 16-errors rule, rooms per connection, limits, a text
client beside JSON clients, the token's rooms claim, presence_max."""

import asyncio
import json
import socket
import time
import pytest

from conftest import (
    OP_TEXT, RawWs, arun, expect_close, expect_silence, http_request_bytes, recv_text, ws_connect,
)
from jsonclient import (
    SUBPROTOCOL, JsonClient, check_joined, check_msg, close_all, parse_id, url,
)
from test_auth import SECRET, claims, jwt

PROTO_HEADER = f"Sec-WebSocket-Protocol: {SUBPROTOCOL}"


async def jc(node, user, room=None, **params):
    return await JsonClient.connect(url(node, user, room, **params), user)


async def say_many(c, room, texts, timeout=10.0):
    """Sends every text at once (pipelined), then waits for all the acks;
    returns the ids in send order."""
    refs = []
    for t in texts:
        r = c.ref()
        refs.append(r)
        await c.req("send", room=room, text=t, ref=r)
    return [(await c.expect_answer(r, "ack", timeout))["id"] for r in refs]


def ids_increase(ids, what):
    keys = [parse_id(i) for i in ids]
    assert all(a < b for a, b in zip(keys, keys[1:])), f"{what}: ids do not grow: {ids}"


def index_of(log, pred):
    return next((i for i, f in enumerate(log) if pred(f)), None)


# --------------------------------------------------------------------------
# the subprotocol


def test_subprotocol_is_chosen_only_when_offered(chatd):
    node = chatd()
    for offer, chosen in (("chatd.v1", "chatd.v1"), ("foo, chatd.v1", "chatd.v1"),
                          ("chatd.v1, foo", "chatd.v1")):
        with RawWs(node.port) as w:
            r = w.handshake("/?username=raw", extra=[f"Sec-WebSocket-Protocol: {offer}"])
            assert r.header("sec-websocket-protocol") == chosen, (offer, r)
            w.send_frame(OP_TEXT, json.dumps({"op": "ping"}))
            assert json.loads(w.recv_text()) == {"op": "pong"}
    # Offering something else: no subprotocol chosen, a text client as before.
    with RawWs(node.port) as w:
        r = w.handshake("/?username=raw", extra=["Sec-WebSocket-Protocol: chat.v2"])
        assert r.header("sec-websocket-protocol") is None, r
        w.send_frame(OP_TEXT, '{"op":"ping"}')
        assert w.recv_text() == 'raw: {"op":"ping"}'


def test_invalid_utf8_still_closes_1007(chatd):
    node = chatd()
    with RawWs(node.port) as w:
        w.handshake("/?username=raw&room=r", extra=[PROTO_HEADER])
        w.send_frame(OP_TEXT, b'{"op":"send","room":"r","text":"\xc3\x28"}')
        expect_close(w, 1007)


# --------------------------------------------------------------------------
# join, send, ack, msg


def test_url_room_is_joined_first_and_no_room_means_none(chatd):
    node = chatd()

    async def main():
        alice = await jc(node, "alice", "kitchen")
        j = check_joined(await alice.recv(5), "kitchen")
        assert j["recovered"] is False and j["members"] == ["alice"] and j["count"] == 1, j
        epoch = j["epoch"]

        bob = await jc(node, "bob")
        await bob.silence(0.3)  # in no room: nothing at all
        await bob.req("send", room="kitchen", text="x", ref="r1")
        await bob.expect_error("not_member", ref="r1")
        await bob.req("send", room="lobby", text="x", ref="r2")
        await bob.expect_error("not_member", ref="r2")

        j = await bob.join("kitchen")
        assert j["recovered"] is False and sorted(j["members"]) == ["alice", "bob"] and j["count"] == 2, j
        assert j["epoch"] == epoch, j
        p = await alice.expect("presence", room="kitchen")
        assert p == {"op": "presence", "room": "kitchen", "joined": "bob"}, p
        await bob.req("join", room="kitchen", ref="again")
        await bob.expect_error("already_member", ref="again")
        await bob.ping()
        await close_all([alice, bob])

    arun(main(), 30)


def test_send_ack_and_msg(chatd):
    node = chatd()

    async def main():
        alice = await jc(node, "alice", "r")
        bob = await jc(node, "bob", "r")
        await alice.expect("joined", room="r")
        await bob.expect("joined", room="r")
        text = 'caf\u00e9 "q" \\ \n\t \U0001F600 {"op":"ping"}'
        t0 = time.time() * 1000
        await alice.req("send", room="r", text=text, ref="x1")
        ack = await alice.expect_answer("x1", "ack")
        assert set(ack) == {"op", "ref", "id"}, ack
        for c in (alice, bob):
            m = check_msg(await c.expect("msg", room="r"), "r")
            assert (m["id"], m["user"], m["text"]) == (ack["id"], "alice", text), m
            assert t0 - 2000 <= m["ts"] <= time.time() * 1000 + 2000, (t0, m)

        # A number ref comes back as the number; no ref, no ref in the ack.
        await bob.req("send", room="r", text="n", ref=7)
        ack7 = await bob.expect("ack", ref=7)
        assert ack7["ref"] == 7 and not isinstance(ack7["ref"], str), ack7
        await bob.req("send", room="r", text="plain")
        plain = await bob.expect("msg", room="r", text="plain")
        ack_plain = await bob.expect("ack", id=plain["id"])
        assert "ref" not in ack_plain, ack_plain
        ids_increase([ack["id"], ack7["id"], plain["id"]], "room r")
        got = [m["id"] for m in alice.take("msg", room="r")]
        got += [m["id"] for m in [await alice.expect("msg", room="r") for _ in range(2 - len(got))]]
        assert got == [ack7["id"], plain["id"]], got
        await close_all([alice, bob])

    arun(main(), 30)


def test_join_with_history(chatd):
    node = chatd()

    async def main():
        alice = await jc(node, "alice", "h")
        await alice.expect("joined", room="h")
        texts = [f"t{i}" for i in range(8)]
        ids = await say_many(alice, "h", texts)
        ids_increase(ids, "room h")

        bob = await jc(node, "bob")
        await bob.join("h", history=3)
        got = await bob.msgs_until("h", ids[-1])
        assert [(m["id"], m["text"], m["user"]) for m in got] == list(zip(ids[-3:], texts[-3:], ["alice"] * 3))
        assert bob.log[0]["op"] == "joined", bob.log[:3]  # joined before any message of the room

        carol = await jc(node, "carol")
        await carol.join("h", history=100)
        got = await carol.msgs_until("h", ids[-1])
        assert [m["id"] for m in got] == ids

        # history=N in the URL, with the URL's room
        dave = await jc(node, "dave", "h", history=2)
        check_joined(await dave.recv(), "h")
        got = await dave.msgs_until("h", ids[-1])
        assert [m["id"] for m in got] == ids[-2:]

        # no history asked: only live messages
        erin = await jc(node, "erin")
        await erin.join("h")
        live = await alice.say("h", "live")
        got = await erin.msgs_until("h", live)
        assert [m["text"] for m in got] == ["live"]
        for c in (bob, carol, dave):
            assert [m["text"] for m in await c.msgs_until("h", live)] == ["live"]
        await close_all([alice, bob, carol, dave, erin])

    arun(main(), 30)


def test_join_since_recovers_exactly_what_was_missed(chatd):
    node = chatd(history_size=10)

    async def main():
        alice = await jc(node, "alice", "s")
        await alice.expect("joined", room="s")
        bob = await jc(node, "bob", "s")
        j = check_joined(await bob.recv(), "s")
        epoch = j["epoch"]
        first = await say_many(alice, "s", ["a0", "a1", "a2"])
        got = await bob.msgs_until("s", first[-1])
        assert [m["id"] for m in got] == first
        await bob.close()
        missed = await say_many(alice, "s", ["b0", "b1", "b2", "b3", "b4"])

        # since + epoch in a join: recovered, exactly the 5 after, then live
        bob2 = await jc(node, "bob")
        j = await bob2.join("s", since=first[-1], epoch=epoch)
        assert j["recovered"] is True and j["epoch"] == epoch, j
        got = await bob2.msgs_until("s", missed[-1])
        assert [(m["id"], m["text"]) for m in got] == list(zip(missed, ["b0", "b1", "b2", "b3", "b4"]))
        live = await alice.say("s", "live")
        assert [m["id"] for m in await bob2.msgs_until("s", live)] == [live]

        # the same in the URL
        bob3 = await jc(node, "bob", "s", since=missed[1], epoch=epoch)
        j = check_joined(await bob3.recv(), "s")
        assert j["recovered"] is True, j
        assert [m["id"] for m in await bob3.msgs_until("s", live)] == missed[2:] + [live]

        # since the newest id: recovered, nothing to replay
        bob4 = await jc(node, "bob")
        j = await bob4.join("s", since=live, epoch=epoch)
        assert j["recovered"] is True, j
        await bob4.silence(0.3, "msg")

        # another epoch: recovered false, the latest history (default 50:
        # all 9 kept), or N of them with history=N
        bob5 = await jc(node, "bob")
        other = epoch[:-1] + ("1" if epoch[-1] != "1" else "2")  # as long, another epoch
        j = await bob5.join("s", since=first[-1], epoch=other)
        assert j["recovered"] is False and j["epoch"] == epoch, j
        assert [m["id"] for m in await bob5.msgs_until("s", live)] == first + missed + [live]
        bob6 = await jc(node, "bob")
        j = await bob6.join("s", since=first[-1], epoch="0", history=2)
        assert j["recovered"] is False, j
        assert [m["id"] for m in await bob6.msgs_until("s", live)] == [missed[-1], live]

        # since older than what is kept (history_size 10): recovered false,
        # the latest that are kept
        more = await say_many(alice, "s", [f"c{i}" for i in range(12)])
        bob7 = await jc(node, "bob")
        j = await bob7.join("s", since=first[0], epoch=epoch)
        assert j["recovered"] is False, j
        assert [m["id"] for m in await bob7.msgs_until("s", more[-1])] == more[-10:]
        await close_all([alice, bob, bob2, bob3, bob4, bob5, bob6, bob7])

    arun(main(), 40)


# --------------------------------------------------------------------------
# leave, history, rooms


def test_leave(chatd):
    node = chatd()

    async def main():
        alice = await jc(node, "alice", "r")
        bob = await jc(node, "bob", "r")
        await alice.expect("joined", room="r")
        await bob.expect("joined", room="r")
        await alice.expect("presence", room="r", joined="bob")
        left = await bob.leave("r")
        assert left == {"op": "left", "room": "r"}, left
        p = await alice.expect("presence", room="r", left="bob")
        assert p == {"op": "presence", "room": "r", "left": "bob"}, p
        await alice.say("r", "after leave")
        await bob.silence(0.4, "msg")
        await bob.req("send", room="r", text="x", ref="s1")
        await bob.expect_error("not_member", ref="s1")
        await bob.req("leave", room="r", ref="l2")
        await bob.expect_error("not_member", ref="l2")
        await bob.req("typing", room="r", ref="t1")
        await bob.expect_error("not_member", ref="t1")
        j = await bob.join("r")
        assert sorted(j["members"]) == ["alice", "bob"], j
        await alice.expect("presence", room="r", joined="bob")
        i = await alice.say("r", "back")
        assert [m["text"] for m in await bob.msgs_until("r", i)] == ["back"]
        await close_all([alice, bob])

    arun(main(), 30)


def test_history_op_pages_back_to_the_start_of_what_is_kept(chatd):
    node = chatd(history_size=30)

    async def main():
        alice = await jc(node, "alice", "p")
        await alice.expect("joined", room="p")
        texts = [f"m{i}" for i in range(100)]
        ids = await say_many(alice, "p", texts, timeout=20)
        ids_increase(ids, "room p")
        byid = dict(zip(ids, texts))

        bob = await jc(node, "bob")  # not a member: history needs no join
        await bob.req("history", room="p", limit=10, ref="h0")
        page = await bob.expect("history", room="p")
        assert page["more"] is True and [m["id"] for m in page["messages"]] == ids[-10:], page

        collected = []
        before = None
        for n in range(20):
            q = dict(room="p", limit=7)
            if before is not None:
                q["before"] = before
            await bob.req("history", **q)
            page = await bob.expect("history", room="p")
            assert isinstance(page["more"], bool), page
            msgs = page["messages"]
            for m in msgs:
                assert set(m) >= {"id", "user", "text", "ts"}, m
                assert m["user"] == "alice" and byid.get(m["id"]) == m["text"], m
            ids_increase([m["id"] for m in msgs], f"page {n}")
            if before is not None and msgs:
                assert parse_id(msgs[-1]["id"]) < parse_id(before), (before, msgs)
            collected = [m["id"] for m in msgs] + collected
            if not page["more"]:
                break
            assert len(msgs) == 7, page
            before = msgs[0]["id"]
        else:
            raise AssertionError("more:true for 20 pages of 7 with history_size 30")
        assert collected == ids[-30:], f"paged {len(collected)}: {collected[:3]}..{collected[-3:]}"

        # default limit 50 (only 30 kept), limit 100 allowed, before the oldest: nothing
        await bob.req("history", room="p")
        page = await bob.expect("history", room="p")
        assert [m["id"] for m in page["messages"]] == ids[-30:] and page["more"] is False, page
        await bob.req("history", room="p", limit=100)
        page = await bob.expect("history", room="p")
        assert len(page["messages"]) == 30 and page["more"] is False, page
        await bob.req("history", room="p", before=ids[-30], limit=5)
        page = await bob.expect("history", room="p")
        assert page["messages"] == [] and page["more"] is False, page
        await bob.req("history", room="p", before=ids[-2], limit=3)
        page = await bob.expect("history", room="p")
        assert [m["id"] for m in page["messages"]] == ids[-5:-2] and page["more"] is True, page
        await bob.req("history", room="never-used")
        page = await bob.expect("history", room="never-used")
        assert page["messages"] == [] and page["more"] is False, page
        await close_all([alice, bob])

    arun(main(), 40)


@pytest.mark.tsan
def test_two_rooms_on_one_connection_interleaved_in_order(chatd):
    node = chatd(workers=2)

    async def main():
        s = await jc(node, "s")
        a = await jc(node, "a", "r1")
        b = await jc(node, "b", "r2")
        c = await jc(node, "c", "r1")
        await s.join("r1")
        await s.join("r2")
        await c.join("r2")
        for x in (a, b, c):
            await x.expect("joined")

        async def pipeline(cl, plan):
            refs = []
            for k, room in enumerate(plan):
                r = cl.ref()
                refs.append((r, room, f"{cl.name}{k}"))
                await cl.req("send", room=room, text=f"{cl.name}{k}", ref=r)
                if k % 7 == 0:
                    await asyncio.sleep(0.001)
            return refs

        plan_s = ["r2" if k % 3 == 0 else "r1" for k in range(60)]
        refs = await asyncio.gather(pipeline(s, plan_s), pipeline(a, ["r1"] * 20), pipeline(b, ["r2"] * 20))
        sent = {}  # (room, id) -> text: ids are compared within a room only
        ack_order = {}
        for cl, rs in zip((s, a, b), refs):
            for r, room, text in rs:
                ack = await cl.expect_answer(r, "ack", 15)
                sent[(room, ack["id"])] = text
            # the acks come in the order of the sends of one connection
            ack_order[cl.name] = [f["id"] for f in cl.log if f["op"] == "ack"]
            assert len(ack_order[cl.name]) == len(rs), cl.name

        async def order(cl, rooms):
            want = {k for k in sent if k[0] in rooms}
            deadline = time.monotonic() + 10
            for _ in range(10000):
                have = {(f["room"], f["id"]) for f in cl.log if f["op"] == "msg"}
                if have >= want or time.monotonic() > deadline:
                    break
                await cl.drain(0.05)
            seq = [(check_msg(f)["room"], f["id"]) for f in cl.log if f["op"] == "msg"]
            assert len(seq) == len(set(seq)), f"{cl.name}: a message twice"
            for k, f in zip(seq, [f for f in cl.log if f["op"] == "msg"]):
                assert sent.get(k) == f["text"], f"{cl.name}: {f} was not sent so"
            assert set(seq) == want, f"{cl.name}: missing {sorted(want - set(seq))[:5]}"
            for room in rooms:
                ids_increase([i for r, i in seq if r == room], f"{cl.name} {room}")
            return seq

        seq_c = await order(c, {"r1", "r2"})
        seq_s = await order(s, {"r1", "r2"})
        seq_a = await order(a, {"r1"})
        seq_b = await order(b, {"r2"})
        # one order of both rooms for every connection in both
        assert seq_c == seq_s, "c and s saw the two rooms interleaved differently"
        assert seq_a == [k for k in seq_c if k[0] == "r1"]
        assert seq_b == [k for k in seq_c if k[0] == "r2"]
        # each sender's messages in its send order, which is the order of its acks
        for name, rs in zip(("s", "a", "b"), refs):
            mine = [k for k in seq_c if sent[k].startswith(name)]
            assert [sent[k] for k in mine] == [t for _, _, t in rs], name
            assert [i for _, i in mine] == ack_order[name], name
        await close_all([s, a, b, c])

    arun(main(), 40)


def test_max_rooms_per_conn(chatd):
    node = chatd(max_rooms_per_conn=3)

    async def main():
        x = await jc(node, "x")
        for r in ("a", "b", "c"):
            await x.join(r)
        await x.req("join", room="d", ref="j4")
        await x.expect_error("too_many_rooms", ref="j4")
        await x.ping()
        await x.leave("a")
        await x.join("d")
        await x.req("join", room="a", ref="j5")
        await x.expect_error("too_many_rooms", ref="j5")
        # the URL's room counts
        y = await jc(node, "y", "u")
        await y.expect("joined", room="u")
        await y.join("v")
        await y.join("w")
        await y.req("join", room="z", ref="j6")
        await y.expect_error("too_many_rooms", ref="j6")
        i = await y.say("w", "still here")
        assert [m["id"] for m in await y.msgs_until("w", i)] == [i]
        await close_all([x, y])

    arun(main(), 30)


# --------------------------------------------------------------------------
# errors


def test_every_error_code_and_the_connection_stays_open(chatd):
    node = chatd()

    async def main():
        c = await jc(node, "c", "r")
        await c.expect("joined", room="r")

        async def err(raw, code, ref=None, codes=None):
            await c.send(raw)
            f = await c.expect("error", timeout=5)
            want = codes or (code,)
            assert f.get("code") in want, f"{raw!r}: expected {want}, got {f}"
            assert isinstance(f.get("reason"), str) and f["reason"], f
            if ref is not None:
                assert f.get("ref") == ref and type(f["ref"]) is type(ref), f"{raw!r}: ref not echoed: {f}"
            await c.ping()  # still open; a good request between errors
            return f

        for raw in ("not json", "[1,2]", "42", '"op"', "null", '{"op":"ping"', "", "{} {}"):
            await err(raw, "bad_json")
        await err({"op": "dance", "ref": "u1"}, "unknown_op", "u1")
        await err({"op": "dance", "ref": 5}, "unknown_op", 5)
        await err({"op": "PING"}, "unknown_op")
        await err({"room": "r", "ref": "m0"}, None, "m0", codes=("bad_request", "unknown_op"))
        await err({"op": 5, "ref": "m1"}, None, "m1", codes=("bad_request", "unknown_op"))
        for i, (req, code) in enumerate([
            ({"op": "send", "room": "r"}, "bad_request"),
            ({"op": "send", "room": "r", "text": 5}, "bad_request"),
            ({"op": "send", "text": "x"}, "bad_request"),
            ({"op": "send", "room": 5, "text": "x"}, "bad_request"),
            ({"op": "join"}, "bad_request"),
            ({"op": "join", "room": ["r"]}, "bad_request"),
            ({"op": "join", "room": "q", "history": "3"}, "bad_request"),
            ({"op": "join", "room": "q", "history": -1}, "bad_request"),
            ({"op": "history", "room": "r", "limit": 0}, "bad_request"),
            ({"op": "history", "room": "r", "limit": 101}, "bad_request"),
            ({"op": "history", "room": "r", "limit": "5"}, "bad_request"),
            ({"op": "history", "room": "r", "before": "yesterday"}, "bad_request"),
            ({"op": "history"}, "bad_request"),
            ({"op": "leave"}, "bad_request"),
            ({"op": "typing"}, "bad_request"),
            ({"op": "join", "room": ""}, "bad_room"),
            ({"op": "join", "room": "x" * 65}, "bad_room"),
            ({"op": "join", "room": "\u00e9" * 33}, "bad_room"),
            ({"op": "join", "room": "a\u0001b"}, "bad_room"),
            ({"op": "join", "room": "a\nb"}, "bad_room"),
            ({"op": "join", "room": "a\u007fb"}, "bad_room"),
            ({"op": "send", "room": "nowhere", "text": "x"}, "not_member"),
            ({"op": "typing", "room": "nowhere"}, "not_member"),
            ({"op": "leave", "room": "nowhere"}, "not_member"),
            ({"op": "join", "room": "r"}, "already_member"),
        ]):
            ref = f"e{i}"
            await err(dict(req, ref=ref), code, ref)

        # the longest names are fine
        for room in ("x" * 64, "\u00e9" * 32, "with space & \u00fcml\u00e4ut"):
            j = await c.join(room)
            assert j["room"] == room
        # nothing sent by a failed request reached the room
        watcher = await jc(node, "w", "r")
        await watcher.expect("joined", room="r")
        i = await c.say("r", "good")
        assert [m["text"] for m in await watcher.msgs_until("r", i)] == ["good"]
        await close_all([c, watcher])

    arun(main(), 40)


def test_sixteen_errors_in_a_row_close_1008(chatd):
    node = chatd()

    async def main():
        c = await jc(node, "c")
        for round_ in range(2):
            for k in range(15):
                await c.req("dance", ref=f"{round_}.{k}")
            for k in range(15):
                await c.expect_error("unknown_op", ref=f"{round_}.{k}")
            await c.ping()  # a good request: the count starts again
        for k in range(15):
            await c.req("send", room="nowhere", text="x", ref=f"n{k}")
        for k in range(15):
            await c.expect_error("not_member", ref=f"n{k}")
        await c.join("r")  # good again
        for k in range(16):
            await c.send("not json")
        await c.expect_closed(1008, 5)
        errs = [f for f in c.log[-17:] if f["op"] == "error"]
        assert len(errs) >= 15, c.log[-17:]

    arun(main(), 30)


def test_too_large(chatd):
    node = chatd(max_message=1000)

    async def main():
        a = await jc(node, "a", "r")
        b = await jc(node, "b", "r")
        await a.expect("joined")
        await b.expect("joined")
        ok = [await a.say("r", "x" * 1000), await a.say("r", "\u00e9" * 500)]
        for n, text in ((1001, "y" * 1001), (1002, "\u00e9" * 501)):
            await a.req("send", room="r", text=text, ref=f"big{n}")
            await a.expect_error("too_large", ref=f"big{n}")
            await a.ping()
        last = await a.say("r", "small")
        got = await b.msgs_until("r", last)
        assert [m["id"] for m in got] == ok + [last], [(m["id"], len(m["text"])) for m in got]
        assert got[0]["text"] == "x" * 1000 and got[1]["text"] == "\u00e9" * 500
        await close_all([a, b])

    arun(main(), 30)


def test_rate_limited_is_an_error_not_a_close(chatd):
    node = chatd(rate_limit=5, rate_burst=5)

    async def main():
        a = await jc(node, "a", "r")
        b = await jc(node, "b", "r")
        await a.expect("joined")
        await b.expect("joined")
        refs = [f"f{k}" for k in range(14)]
        for k, r in enumerate(refs):
            await a.req("send", room="r", text=f"f{k}", ref=r)
        answers = {}
        for r in refs:
            f = await a.expect(("ack", "error"), ref=r, timeout=5)
            assert f["op"] == "ack" or f.get("code") == "rate_limited", f
            answers[r] = f
        acked = [r for r in refs if answers[r]["op"] == "ack"]
        refused = [r for r in refs if answers[r]["op"] == "error"]
        assert refs[:4] == acked[:4], f"the burst was not taken: {answers}"
        assert len(refused) >= 2, f"14 sends at once, burst 5, rate 5/s: nothing refused: {answers}"
        assert len(a.take("ack")) == 0 and len(a.take("error")) == 0, "an answer twice"
        await a.ping()
        await asyncio.sleep(1.3)
        last = await a.say("r", "later")
        want = [answers[r]["id"] for r in acked] + [last]
        got = await b.msgs_until("r", last)
        assert [m["id"] for m in got] == want, "b got something refused, or lost something acked"
        assert [m["text"] for m in got[:-1]] == [f"f{refs.index(r)}" for r in acked]
        await close_all([a, b])

    arun(main(), 30)


# --------------------------------------------------------------------------
# typing, presence_max, text clients, tokens


def test_typing_relayed_to_others_never_to_sender_never_stored(chatd):
    node = chatd()

    async def main():
        a = await jc(node, "a", "t")
        b = await jc(node, "b", "t")
        d = await jc(node, "d", "t2")
        for c in (a, b, d):
            await c.expect("joined")
        txt = await ws_connect(url(node, "txt", "t"))
        m0 = await a.say("t", "before typing")
        assert await recv_text(txt) == "a: before typing"

        await a.req("typing", room="t")
        f = await b.expect("typing", room="t", timeout=3)
        assert f == {"op": "typing", "room": "t", "user": "a"}, f
        t_first = time.monotonic()
        for _ in range(4):
            await a.req("typing", room="t")
        await b.silence(max(0.1, 0.9 - (time.monotonic() - t_first)), "typing")
        await a.silence(0.1, "typing")
        await d.silence(0.1, "typing")
        await asyncio.sleep(max(0.0, 1.15 - (time.monotonic() - t_first)))
        await a.req("typing", room="t")
        await b.expect("typing", room="t", user="a", timeout=3)
        await a.silence(0.3, "typing")
        await expect_silence(txt, 0.2)  # a text client sees no typing

        m1 = await a.say("t", "after typing")
        assert await recv_text(txt) == "a: after typing"
        # never stored: not in history, not in a join's history
        await b.req("history", room="t")
        h = await b.expect("history", room="t")
        assert [(m["id"], m["text"]) for m in h["messages"]] == [(m0, "before typing"), (m1, "after typing")], h
        e = await jc(node, "e")
        await e.join("t", history=50)
        got = await e.msgs_until("t", m1)
        assert [m["id"] for m in got] == [m0, m1]
        await e.silence(0.3, "typing")
        await txt.close()
        await close_all([a, b, d, e])

    arun(main(), 30)


def test_presence_max_gives_count_only(chatd):
    node = chatd(presence_max=2)

    async def main():
        cs = []
        for k, name in enumerate(("u1", "u2", "u3", "u4")):
            c = await jc(node, name)
            j = await c.join("big")
            assert j["count"] == k + 1, j
            if k + 1 <= 2:
                assert sorted(j["members"]) == sorted(x.name for x in cs + [c]), j
            else:
                assert "members" not in j, f"{k + 1} members, presence_max 2: {j}"
            cs.append(c)
        await cs[3].leave("big")
        await cs[2].leave("big")
        c = await jc(node, "u5")
        j = await c.join("big")
        assert j["count"] == 3 and "members" not in j, j
        await cs[1].leave("big")
        c6 = await jc(node, "u6")
        j = await c6.join("big")
        assert j["count"] == 3 and "members" not in j, j
        await c.leave("big")
        c7 = await jc(node, "u7")
        await c6.leave("big")
        # c6 and c7 may be on different workers: the broker has the leave
        # in the order once u1 is told (two members left, so u1 hears it).
        await cs[0].expect("presence", room="big", left="u6")
        j = await c7.join("big")
        assert sorted(j.get("members", [])) == ["u1", "u7"] and j["count"] == 2, j
        await close_all(cs + [c, c6, c7])

    arun(main(), 30)


def test_text_client_beside_json_clients(chatd):
    node = chatd()

    async def main():
        j = await jc(node, "json", "mix")
        await j.expect("joined", room="mix")
        ids = await say_many(j, "mix", ["one", "two", "three"])
        # a text client with ?history=2: the last 2 lines first, then live
        t = await ws_connect(url(node, "txt", "mix", history=2))
        assert await recv_text(t) == "json: two"
        assert await recv_text(t) == "json: three"
        await j.req("typing", room="mix")
        await t.send('{"op":"send","room":"mix","text":"not a request"}')
        assert await recv_text(t) == 'txt: {"op":"send","room":"mix","text":"not a request"}'
        m = check_msg(await j.expect("msg", room="mix", user="txt"), "mix")
        assert m["text"] == '{"op":"send","room":"mix","text":"not a request"}'
        assert parse_id(m["id"]) > parse_id(ids[-1])
        j2 = await jc(node, "json2")
        await j2.join("mix")
        await j2.leave("mix")
        i = await j.say("mix", "four")
        # no presence, no typing, no JSON: only NAME: TEXT lines
        assert await recv_text(t) == "json: four"
        await expect_silence(t, 0.3)
        # a text client's room without the URL: lobby, JSON clients in lobby hear it
        lob = await jc(node, "lj", "lobby")
        await lob.expect("joined", room="lobby")
        tl = await ws_connect(url(node, "tl"))
        await tl.send("hi lobby")
        assert await recv_text(tl) == "tl: hi lobby"
        f = await lob.expect("msg", room="lobby")
        assert (f["user"], f["text"]) == ("tl", "hi lobby")
        await j.silence(0.2, "msg", text="hi lobby")
        assert i
        for w in (t, tl):
            await w.close()
        await close_all([j, j2, lob])

    arun(main(), 30)


def test_token_rooms_claim(chatd):
    node = chatd(auth_secret=SECRET)
    tok = jwt(claims("alice", rooms=["lobby", "team-*"]))

    def tok_url(token, room=None):
        return url(node, None, room, token=token)

    for room in ("secret", "team", "lobby2", "Team-a"):
        for extra in ([PROTO_HEADER], []):
            with RawWs(node.port) as w:
                p = f"/?token={tok}&room={room}"
                w.send(http_request_bytes(p, extra=extra))
                r = w.read_http()
                assert r.status == 403, f"room {room} {extra}: {r!r}"

    async def main():
        a = await JsonClient.connect(tok_url(tok, "team-red"), "alice")
        j = check_joined(await a.recv(), "team-red")
        assert j["members"] == ["alice"], j
        for room in ("lobby", "team-blue", "team-"):
            await a.join(room)
        for k, room in enumerate(("teams", "lobbyx", "secret", "team")):
            await a.req("join", room=room, ref=f"j{k}")
            await a.expect_error("forbidden", ref=f"j{k}")
            await a.req("history", room=room, ref=f"h{k}")
            await a.expect_error("forbidden", ref=f"h{k}")
            await a.ping()
        await a.req("history", room="team-blue")
        await a.expect("history", room="team-blue")
        i = await a.say("team-red", "hello")
        m = await a.expect("msg", room="team-red", id=i)
        assert m["user"] == "alice", m
        # no claim: any room
        b = await JsonClient.connect(tok_url(jwt(claims("bob")), "secret"), "bob")
        check_joined(await b.recv(), "secret")
        await b.join("team-red")
        # a text client with the claim in an allowed room
        t = await ws_connect(tok_url(tok, "team-red"))
        await a.say("team-red", "to text")
        assert await recv_text(t) == "alice: to text"
        await t.close()
        await close_all([a, b])

    arun(main(), 30)


def test_answers_a_client_does_not_read_are_a_backlog(chatd):
    """A client that floods pings and never reads: its pongs are a backlog
    like room messages are, so past max_output_buffer (twice it for private
    answers) it is closed with 1008 rather than buffered without end."""
    from conftest import HOST, frame, metrics
    node = chatd(max_output_buffer="8k")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little for us
    s.settimeout(5)
    s.connect((HOST, node.port))
    try:
        s.sendall(http_request_bytes("/?username=flood", extra=[PROTO_HEADER]))
        ping = json.dumps({"op": "ping", "ref": "r" * 120}).encode()
        batch = frame(OP_TEXT, ping) * 500
        deadline = time.monotonic() + 30
        for _ in range(2000):  # at most 1,000,000 pings, 30 s
            if time.monotonic() > deadline or "of answers queued" in node.log():
                break
            try:
                s.sendall(batch)
            except OSError:  # closed under us: what we wait for
                break
        node.wait_log(r"slow consumer, \d+ bytes of answers queued, closing with 1008", 10)
    finally:
        s.close()
    m = metrics(node.port)
    assert m['chatd_clients_closed_total{reason="max_output_buffer"}'] >= 1, m
