"""Issue 15: SIGHUP reloads every directive that can change without
dropping a client, applies nothing when the new file has an error, and logs
what changed and what needs a restart.

Each test starts its own node, rewrites its config file, sends SIGHUP and
waits for the reload's last log line; workers switch to the new config at
their next tick (250 ms), so a test that needs the workers to see it waits
a little longer."""

import asyncio
import re
import shutil
import signal
import time

import pytest

from conftest import (
    CHATD_URL, HOST, arun, free_port, http_exchange, http_request_bytes, metrics, port_open,
    recv_text, write_config, ws_connect,
)
from test_auth import SECRET, claims, jwt, token_url
from test_tls import Cert, exchange, peer_der, pki, put_file, ssl_object, tls_node, wss_connect  # noqa: F401

pytestmark = pytest.mark.skipif(bool(CHATD_URL), reason="rewrites its own nodes' config files")

WORKER_SWITCH = 0.4  # > the workers' tick: every thread has the new config

DONE = re.compile(r"SIGHUP: (reloaded .*need|.*nothing is applied)")


def sighup(node, text=None, wait_workers=True, **changes):
    """Rewrites node's config (with changes, or as text), sends SIGHUP and
    waits for the reload to finish. Returns the log lines it wrote."""
    before = node.log()
    if text is not None:
        node.conf_path.write_text(text)
    else:
        node.conf.update(changes)
        write_config(node.conf_path, node.conf)
    node.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while not DONE.search(node.log()[len(before):]):
        assert time.monotonic() < deadline, "no end of reload in the log:\n" + node.log()[-3000:]
        assert node.running, node.log()
        time.sleep(0.02)
    if wait_workers:
        time.sleep(WORKER_SWITCH)
    return node.log()[len(before):]


def upgrade_status(node, path, extra=None):
    return http_exchange(node.port, http_request_bytes(path, extra=extra)).status


async def closed_with(ws, timeout=5):
    """Waits for the server's close; returns its code."""
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return ws.close_code


def test_limits_reload_without_dropping_clients(chatd):
    """rate_limit, allowed_origins and max_message change under connected
    clients: they keep chatting, and the new limits apply."""
    node = chatd()
    evil = ["Origin: http://evil.example"]
    assert upgrade_status(node, "/?username=x", evil) == 101

    async def main():
        a = await ws_connect(node.url("alice"))
        b = await ws_connect(node.url("bob"))
        await exchange(a, "alice", b, "bob", " before")
        log = await asyncio.to_thread(
            sighup, node, rate_limit=2, rate_burst=2, max_message="1k",
            allowed_origins="http://good.example")
        for line in ("SIGHUP: rate_limit: 0 -> 2", "SIGHUP: rate_burst: 0 -> 2",
                     "SIGHUP: max_message: 64k -> 1k",
                     "SIGHUP: allowed_origins: (empty) -> http://good.example",
                     "4 changes applied, 0 need a restart"):
            assert line in log, log
        # The clients are still there and chat on.
        await exchange(a, "alice", b, "bob", " after")
        # The new rate limit holds for a client connected before it.
        for i in range(10):
            try:
                await b.send(f"burst {i}")
            except Exception:
                break
        assert await closed_with(b) == 1008
        # New connections: the origin list and the new max_message.
        assert upgrade_status(node, "/?username=x", evil) == 403
        assert upgrade_status(node, "/?username=x", ["Origin: http://good.example"]) == 101
        c = await ws_connect(node.url("carol"), origin="http://good.example")
        await c.send("x" * 2000)
        assert await closed_with(c) == 1009
        # Alice was never dropped.
        await asyncio.sleep(1.1)  # her tokens refill
        await a.send("still here")
        while (m := await recv_text(a, 5)).startswith("bob: burst"):
            pass
        assert m == "alice: still here"
        await a.close()

    arun(main(), 20)


def test_broken_file_changes_nothing(chatd):
    """A file with an error: logged with file:line, nothing of it applied,
    not even the good lines before the bad one."""
    node = chatd()
    good = "\n".join(f"{k} = {v}" for k, v in node.conf.items())
    text = good + "\nrate_limit = 1\nallowed_origins = http://good.example\nno_such_directive = 1\n"
    bad_line = text.count("\n")

    async def main():
        a = await ws_connect(node.url("alice"))
        log = await asyncio.to_thread(sighup, node, text)
        assert re.search(rf"ERROR .*SIGHUP: {re.escape(str(node.conf_path))}:{bad_line}: "
                         r"unknown directive 'no_such_directive'.*nothing is applied", log), log
        assert "rate_limit:" not in log and "reloaded" not in log, log
        # A value that parses but fails the checks: the same.
        log = await asyncio.to_thread(
            sighup, node, good + "\nrate_limit = 1\nmax_room = 4\ndefault_room = kitchen\n")
        assert re.search(r"ERROR .*SIGHUP: default_room 'kitchen' is 7 bytes, longer than "
                         r"max_room \(4\).*nothing is applied", log), log
        # The old behaviour: no rate limit, any origin.
        for i in range(20):
            await a.send(f"m{i}")
        for i in range(20):
            assert await recv_text(a, 5) == f"alice: m{i}"
        assert upgrade_status(node, "/?username=x", ["Origin: http://evil.example"]) == 101
        await a.close()

    arun(main(), 20)


def test_restart_only_change_is_logged_not_applied(chatd):
    node = chatd(workers=2)
    other = free_port()

    async def main():
        a = await ws_connect(node.url("alice"))
        log = await asyncio.to_thread(sighup, node, workers=3, listen=f"{HOST}:{other}",
                                      ring_size=1024, ping_interval="20s")
        assert re.search(r"WARN .*SIGHUP: workers: 2 -> 3 needs a restart; keeping 2", log), log
        assert re.search(rf"WARN .*SIGHUP: listen: {HOST}:{node.port} -> {HOST}:{other} needs a "
                         rf"restart; keeping {HOST}:{node.port}", log), log
        assert "SIGHUP: ring_size: 65536 -> 1024 needs a restart" in log, log
        assert "SIGHUP: ping_interval: 30s -> 20s\n" in log, log
        assert "1 change applied, 3 need a restart" in log, log
        # Not applied: still two workers, still the old port, Alice still in.
        m = metrics(node.port)
        assert sorted(k for k in m if k.startswith("chatd_worker_clients{")) == [
            'chatd_worker_clients{worker="1"}', 'chatd_worker_clients{worker="2"}'], m
        assert not port_open(other)
        await a.send("hi")
        assert await recv_text(a, 5) == "alice: hi"
        await a.close()

    arun(main(), 20)


def test_log_level_reloads(chatd):
    node = chatd(log_level="info")

    async def connect_and_close(name):
        ws = await ws_connect(node.url(name))
        await ws.send("hello")
        assert await recv_text(ws, 5) == f"{name}: hello"
        await ws.close()

    async def main():
        await connect_and_close("first")
        assert " DEBUG " not in node.log()
        log = await asyncio.to_thread(sighup, node, log_level="debug")
        assert "SIGHUP: log_level: info -> debug" in log, log
        await connect_and_close("second")
        await asyncio.to_thread(node.wait_log, r"DEBUG .*second: upgraded", 5)
        await asyncio.to_thread(sighup, node, log_level="error")
        seen = node.log().count(" DEBUG ")
        await connect_and_close("third")
        await asyncio.sleep(0.3)
        assert node.log().count(" DEBUG ") == seen, node.log()[-2000:]
        assert "third" not in node.log()

    arun(main(), 20)


def test_auth_secret_rotation(chatd):
    """Rotate: new secret in auth_secret, old in auth_secret_previous --
    tokens of both pass and connected clients stay; then drop the previous:
    old tokens are refused."""
    new_secret = "the-new-integration-secret"
    node = chatd(auth_secret=SECRET)
    old_tok, new_tok = jwt(claims("olga")), jwt(claims("nina"), secret=new_secret)
    old_path, new_path = f"/?token={old_tok}", f"/?token={new_tok}"
    assert upgrade_status(node, old_path) == 101
    assert upgrade_status(node, new_path) == 401

    async def main():
        olga = await ws_connect(token_url(node, old_tok))
        log = await asyncio.to_thread(sighup, node, auth_secret=new_secret,
                                      auth_secret_previous=SECRET)
        assert "SIGHUP: auth_secret: ******** -> ********" in log, log
        assert "SIGHUP: auth_secret_previous: (empty) -> ********" in log, log
        assert upgrade_status(node, old_path) == 101
        assert upgrade_status(node, new_path) == 101
        nina = await ws_connect(token_url(node, new_tok))
        await exchange(olga, "olga", nina, "nina", " during")

        log = await asyncio.to_thread(sighup, node, auth_secret_previous="")
        assert "SIGHUP: auth_secret_previous: ******** -> (empty)" in log, log
        r = http_exchange(node.port, http_request_bytes(old_path))
        assert r.status == 401 and b"token signature is wrong" in r.body, r
        assert upgrade_status(node, new_path) == 101
        # Olga connected under the old secret and stays (until her token's exp).
        await exchange(olga, "olga", nina, "nina", " after")
        await olga.close()
        await nina.close()

    arun(main(), 20)
    assert SECRET not in node.log() and new_secret not in node.log()


def test_tls_certificate_reloads_with_the_config(chatd, pki, tmp_path):
    """The certificate is read again with the rest; a certificate that does
    not load stops the whole reload."""
    a, b = pki["a"], pki["b"]
    shutil.copyfile(a.cert, tmp_path / "live.crt")
    shutil.copyfile(a.key, tmp_path / "live.key")
    live = Cert(tmp_path / "live.crt", tmp_path / "live.key", a.serial)
    node = tls_node(chatd, live)
    assert peer_der(node.tls_port) == a.der

    async def main():
        old = await wss_connect(node, "old")
        put_file(live.cert, b.cert.read_bytes())
        put_file(live.key, b.key.read_bytes())
        log = await asyncio.to_thread(sighup, node, rate_limit=50)
        assert "SIGHUP: reloaded" in log and "SIGHUP: rate_limit: 0 -> 50" in log, log
        assert await asyncio.to_thread(peer_der, node.tls_port) == b.der
        assert ssl_object(old).getpeercert(binary_form=True) == a.der
        new = await wss_connect(node, "new")
        await exchange(old, "old", new, "new")

        put_file(live.cert, a.cert.read_bytes())  # does not match the key
        log = await asyncio.to_thread(sighup, node, rate_limit=1, allowed_origins="http://x.example")
        assert re.search(r"ERROR .*SIGHUP: .*does not match the certificate.*nothing is applied",
                         log), log
        assert "rate_limit: 50 -> 1" not in log, log
        assert await asyncio.to_thread(peer_der, node.tls_port) == b.der
        # rate_limit is still 50: a burst of 10 passes.
        for i in range(10):
            await old.send(f"m{i}")
        for i in range(10):
            assert await recv_text(old, 5) == f"old: m{i}"
        await old.close()
        await new.close()

    arun(main(), 20)
