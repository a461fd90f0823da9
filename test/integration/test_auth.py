"""Authentication (issue 6): with auth_secret set, the upgrade needs
?token=, an HS256 JWT whose sub is the name and whose exp has not passed;
otherwise 401 and nothing else happens. Tokens are made here with hmac,
hashlib and base64, as a client's issuer would."""

import asyncio
import base64
import hashlib
import hmac
import json
import time

import pytest
import websockets

from conftest import (
    OP_TEXT, RawWs, arun, expect_silence, frame, http_exchange, http_request_bytes, recv_text,
    ws_connect,
)

SECRET = "integration-secret"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(claims, secret=SECRET, header=None):
    """header.payload.signature; claims is a dict or raw payload bytes."""
    h = b64url(json.dumps(header or {"alg": "HS256", "typ": "JWT"}).encode())
    p = b64url(claims if isinstance(claims, bytes) else json.dumps(claims).encode())
    mac = hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64url(mac)}"


def claims(sub="alice", ttl=300, **more):
    c = {"sub": sub, "exp": int(time.time()) + ttl}
    c.update(more)
    return c


def token_url(node, token, extra=""):
    return f"ws://127.0.0.1:{node.port}/?{extra}token={token}"


def assert_401(node, path):
    """The upgrade at path gets 401 with a one-line reason, then the server
    closes the connection. Returns the reason."""
    with RawWs(node.port) as w:
        w.send(http_request_bytes(path))
        r = w.read_http()
        assert r.status == 401, f"{path}: expected 401, got {r!r}"
        assert r.header("connection") == "close"
        assert r.body.endswith(b"\n") and b"\n" not in r.body[:-1], r.body
        w.expect_eof()
    return r.body.decode().strip()


def test_valid_token_name_is_sub(chatd):
    node = chatd(auth_secret=SECRET)

    async def main():
        alice = await ws_connect(token_url(node, jwt(claims("Alice"))))
        bob = await ws_connect(token_url(node, jwt(claims("J\u00fcrgen B"))))
        await alice.send("Hello!")
        assert await recv_text(alice) == "Alice: Hello!"
        assert await recv_text(bob) == "Alice: Hello!"
        await bob.send("Hi")
        assert await recv_text(alice) == "J\u00fcrgen B: Hi"
        assert await recv_text(bob) == "J\u00fcrgen B: Hi"
        await alice.close()
        await bob.close()

    arun(main(), 30)


def test_username_in_query_does_not_override_sub(chatd):
    node = chatd(auth_secret=SECRET)
    tok = jwt(claims("alice"))

    async def main():
        # Before and after the token; valid, invalid and someone else's name.
        m1 = await ws_connect(token_url(node, tok, "username=mallory&"))
        m2 = await ws_connect(f"{token_url(node, tok)}&username=bob")
        m3 = await ws_connect(token_url(node, tok, "username=%zz&room=kitchen&"))
        k = await ws_connect(token_url(node, jwt(claims("kim")), "room=kitchen&"))
        await m1.send("one")
        assert await recv_text(m1) == "alice: one"
        assert await recv_text(m2) == "alice: one"
        await m3.send("two")
        assert await recv_text(k) == "alice: two"
        assert await recv_text(m3) == "alice: two"
        for w in (m1, m2, m3, k):
            await w.close()

    arun(main(), 30)


def _refusals():
    now = int(time.time())
    hs = {"alg": "HS256", "typ": "JWT"}
    h_none = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    p_alice = b64url(json.dumps(claims("alice")).encode())
    good = jwt(claims("alice"))
    return {
        "expired": jwt({"sub": "alice", "exp": now - 60}),
        "expired now": jwt({"sub": "alice", "exp": now - 1}),
        "wrong signature": jwt(claims("alice"), secret="not-the-secret"),
        "alg none unsigned": f"{h_none}.{p_alice}.",
        "alg none signed": jwt(claims("alice"), header={"alg": "none"}),
        "alg HS512": jwt(claims("alice"), header={"alg": "HS512"}),
        "no alg": jwt(claims("alice"), header={"typ": "JWT"}),
        "garbage": "not-a-token",
        "two parts": good.rsplit(".", 1)[0],
        "four parts": good + ".AAAA",
        "bad base64url": good.replace(".", ".+", 1),
        "padding": good + "=",
        "payload not json": jwt(b"alice"),
        "sub missing": jwt({"exp": now + 300}),
        "sub not a string": jwt({"sub": 42, "exp": now + 300}),
        "sub with control": jwt({"sub": "a\nb", "exp": now + 300}),
        "exp missing": jwt({"sub": "alice"}),
        "exp a string": jwt({"sub": "alice", "exp": str(now + 300)}),
        "nbf in the future": jwt(claims("alice", nbf=now + 120)),
        "header not json": "bm9wZQ." + good.split(".", 1)[1],
        "signature of another payload": ".".join(
            [good.split(".")[0], b64url(json.dumps(claims("mallory")).encode()),
             good.split(".")[2]]),
        "header re-encoded": ".".join(
            [b64url(json.dumps(hs, separators=(",", ":")).encode())] + good.split(".")[1:]),
    }


def test_bad_tokens_get_401_and_the_server_keeps_serving(chatd):
    node = chatd(auth_secret=SECRET)
    reasons = {}
    for name, tok in _refusals().items():
        reasons[name] = assert_401(node, f"/?token={tok}")
    reasons["missing"] = assert_401(node, "/?username=alice")
    reasons["missing, nothing at all"] = assert_401(node, "/")
    reasons["empty"] = assert_401(node, "/?token=&username=alice")

    assert reasons["expired"] == "token has expired"
    assert reasons["wrong signature"] == "token signature is wrong"
    assert reasons["alg none unsigned"] == "token alg must be HS256"
    assert reasons["nbf in the future"] == "token is not valid yet"
    assert reasons["missing"] == "token is required"
    assert all(r.startswith("token ") for r in reasons.values()), reasons
    node.wait_log(r"refused with 401: token signature is wrong")

    async def main():
        w = await ws_connect(token_url(node, jwt(claims("still"))))
        await w.send("here")
        assert await recv_text(w) == "still: here"
        await w.close()

    arun(main(), 30)


def test_401_hands_nothing_over(chatd):
    """A refused upgrade with a frame right behind it: the frame never
    reaches the room, and a websockets client sees the 401."""
    node = chatd(auth_secret=SECRET)

    async def main():
        listener = await ws_connect(token_url(node, jwt(claims("listener"))))
        bad = jwt(claims("alice"), secret="wrong")
        with RawWs(node.port) as w:
            w.send(http_request_bytes(f"/?token={bad}") + frame(OP_TEXT, "sneaked in"))
            assert w.read_http().status == 401
            w.expect_eof()
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await ws_connect(token_url(node, jwt({"sub": "x", "exp": 1})))
        assert e.value.status_code == 401
        await expect_silence(listener, 0.5)
        await listener.send("ok")
        assert await recv_text(listener) == "listener: ok"
        await listener.close()

    arun(main(), 30)


def test_auth_off_by_default(chatd):
    """Without auth_secret ?username= is the name, and a token is ignored."""
    node = chatd()

    async def main():
        a = await ws_connect(node.url("Alice"))
        b = await ws_connect(f"{node.url('Bob')}&token={jwt(claims('alice'))}")
        await b.send("hi")
        assert await recv_text(a) == "Bob: hi"
        assert await recv_text(b) == "Bob: hi"
        await a.close()
        await b.close()

    arun(main(), 30)
    r = http_exchange(node.port, http_request_bytes("/?room=r"))
    assert r.status == 400
