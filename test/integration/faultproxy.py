"""A fault-injecting TCP proxy between chatd and a real redis-server.

Written for the fault tests of issue 11: chatd's redis_url points at the
proxy, the proxy forwards to a real redis-server, and the test switches
faults on and off at any moment from its own thread:

  pass through        (the default)
  refuse commands     a Rule: a predicate on the command's argv (or a set of
                      names), an error string, optionally "the next N" only,
                      optionally held back until more commands have been
                      pipelined behind it. Only the matching command is
                      refused; the rest of a pipeline goes to Redis and the
                      replies reach the client in command order.
  black hole          both directions stop without closing: bytes are
                      dropped (a dead network path: the connections caught in
                      it stay dead for good) or held and released afterwards
  refuse connections  every connection closed, the port closed (connect
                      gets ECONNREFUSED) until allowed again
  close on accept     every connection closed, new ones accepted and closed
                      at once (a load balancer with no backend)
  delay               each direction delayed by a fixed time, order kept
  counts              commands seen, by name (upper case), and reply bytes
                      by the name of the command they answer

To refuse ONE command of a pipeline the proxy parses RESP both ways: the
client's commands (multibulk, or inline) and Redis' replies (RESP2 and the
RESP3 types). Each connection keeps a FIFO of reply slots: a forwarded
command's slot is filled by the next reply from Redis, a refused command's
slot holds the injected error, and replies leave in slot order. A command
refused inside MULTI dooms the transaction as Redis would (its EXEC is sent
as DISCARD and answered -EXECABORT). Pub/Sub and MONITOR are not modelled
(chatd uses neither): a reply with no slot waiting is passed on as is.

When Redis itself is down, the proxy still accepts a connection and then
closes it (it cannot know before accepting): chatd sees a connection that
ends at once rather than ECONNREFUSED. refuse_connections() gives a real
ECONNREFUSED.

The proxy runs an asyncio loop in its own daemon thread; every public
method is safe to call from any other thread and returns once the change is
in effect. Standard library only.
"""

import asyncio
import collections
import socket
import threading
import time

HOST = "127.0.0.1"

# Commands that store a message: today's XADD, the Lua publish of issue 11
# (EVALSHA after SCRIPT LOAD, or EVAL), or a Redis function.
WRITE_COMMANDS = frozenset({"XADD", "EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL"})

OOM = "OOM command not allowed when used memory > 'maxmemory'."
LOADING = "LOADING Redis is loading the dataset in memory"
READONLY = "READONLY You can't write against a read only replica."
NOSCRIPT = "NOSCRIPT No matching script. Please use EVAL."
BUSY = "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT."


class ProtocolError(Exception):
    pass


# --------------------------------------------------------------------------
# RESP parsing (incremental: None until a whole element is buffered)


def _line(buf, pos):
    end = buf.find(b"\r\n", pos)
    return (None, pos) if end < 0 else (bytes(buf[pos:end]), end + 2)


def parse_reply(buf, pos=0):
    """One complete reply starting at buf[pos]: returns the position after
    it, or None when buf does not hold all of it yet. RESP2 and RESP3."""
    if pos >= len(buf):
        return None
    t = buf[pos:pos + 1]
    ln, p = _line(buf, pos + 1)
    if ln is None:
        return None
    if t in (b"+", b"-", b":", b"_", b",", b"#", b"("):
        return p
    if t in (b"$", b"=", b"!"):
        n = int(ln)
        if n < 0:
            return p
        return p + n + 2 if len(buf) >= p + n + 2 else None
    if t in (b"*", b"~", b">", b"%", b"|"):
        n = int(ln)
        if n < 0:
            return p
        if t in (b"%", b"|"):
            n *= 2
        for _ in range(n):
            p = parse_reply(buf, p)
            if p is None:
                return None
        return p
    raise ProtocolError(f"bad reply type {bytes(t)!r} at {pos}")


def parse_command(buf, pos=0):
    """One complete client command at buf[pos]: returns (argv as a list of
    bytes, position after it), or None when incomplete."""
    if pos >= len(buf):
        return None
    if buf[pos:pos + 1] != b"*":  # inline command
        ln, p = _line(buf, pos)
        if ln is None:
            return None
        return ln.split(), p
    ln, p = _line(buf, pos + 1)
    if ln is None:
        return None
    n = int(ln)
    argv = []
    for _ in range(max(n, 0)):
        if buf[p:p + 1] == b"":
            return None
        if buf[p:p + 1] != b"$":
            raise ProtocolError(f"expected a bulk string at {p}, got {bytes(buf[p:p + 1])!r}")
        ln, p2 = _line(buf, p + 1)
        if ln is None:
            return None
        m = int(ln)
        if len(buf) < p2 + m + 2:
            return None
        argv.append(bytes(buf[p2:p2 + m]))
        p = p2 + m + 2
    return argv, p


def error_reply(text):
    text = text.replace("\r", " ").replace("\n", " ")
    return b"-" + text.encode() + b"\r\n"


def command_name(argv):
    return argv[0].decode("latin-1").upper() if argv else ""


# --------------------------------------------------------------------------


class Rule:
    """Refuses the commands it matches with `error`.

    match: a predicate argv -> bool (argv a list of bytes), or a set/list of
    command names (case-insensitive). count: refuse only the next `count`
    matches, then the rule is spent. hold: keep the injected error back
    until `hold` more commands have been forwarded behind the refused one on
    the same connection (a refusal mid-pipeline, as when Redis refuses one
    command and stores the ones after it), at most hold_timeout seconds.
    `active` may be flipped at any time; `hits` counts refusals.
    """

    def __init__(self, match, error, count=None, hold=0, hold_timeout=1.0, active=True):
        if callable(match):
            self.pred = match
        else:
            names = {n.upper() for n in ([match] if isinstance(match, str) else match)}
            self.pred = lambda argv: command_name(argv) in names
        self.error = error
        self.count = count
        self.hold = hold
        self.hold_timeout = hold_timeout
        self.active = active
        self.hits = 0
        self.refused = []  # argv of each refused command
        self.mid_pipeline = 0  # held refusals that had `hold` commands forwarded behind them

    @property
    def spent(self):
        return self.count is not None and self.hits >= self.count

    def take(self, argv):
        if not self.active or self.spent or not self.pred(argv):
            return False
        self.hits += 1
        self.refused.append(argv)
        return True


class _Slot:
    __slots__ = ("data", "forwarded", "replace", "hold", "deadline", "name", "rule")

    def __init__(self, data=None, forwarded=True, replace=None, hold=0, deadline=None, name="",
                 rule=None):
        self.name = name            # the command's name
        self.rule = rule            # the Rule that refused it
        self.data = data            # reply bytes once known
        self.forwarded = forwarded  # waits for a reply from Redis
        self.replace = replace      # bytes to send instead of Redis' reply
        self.hold = hold            # forwarded commands still to come behind it
        self.deadline = deadline    # monotonic time the hold ends anyway

    @property
    def ready(self):
        return self.data is not None and (self.hold <= 0 or time.monotonic() >= self.deadline)


class _Pipe:
    """A writer for one direction: keeps order, applies the proxy's delay,
    and drops everything once its connection is dead."""

    def __init__(self, proxy, conn, writer):
        self.proxy, self.conn, self.writer = proxy, conn, writer
        self.queue = collections.deque()
        self.wake = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    def put(self, data):
        if data and not self.conn.dead:
            self.queue.append((time.monotonic() + self.proxy._delay, data))
            self.wake.set()

    async def _run(self):
        try:
            while True:
                while not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                due, data = self.queue.popleft()
                left = due - time.monotonic()
                if left > 0:
                    await asyncio.sleep(left)
                if self.conn.dead:
                    continue
                await self.proxy._flowing.wait()
                if self.conn.dead:
                    continue
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if not self.conn.dead:
                self.conn.close()


class _Conn:
    def __init__(self, proxy, creader, cwriter):
        self.proxy = proxy
        self.id = proxy._next_id
        proxy._next_id += 1
        self.creader, self.cwriter = creader, cwriter
        self.ureader = self.uwriter = None
        self.dead = False           # caught in a dropping black hole: for good
        self.closed = False
        self.slots = collections.deque()
        self.in_multi = False
        self.multi_doomed = False
        self.tasks = []
        self.to_client = self.to_server = None
        self.hold_timer = None

    async def run(self):
        p = self.proxy
        if p._blackhole == "drop":
            self.dead = True  # the path is dead: a connection that never answers
        else:
            try:
                self.ureader, self.uwriter = await asyncio.wait_for(
                    asyncio.open_connection(p.upstream_host, p.upstream_port), 5)
            except (OSError, asyncio.TimeoutError):
                self.close()
                return
            if self.closed:  # closed (refuse mode) while connecting
                self.uwriter.close()
                return
            self.to_server = _Pipe(p, self, self.uwriter)
        self.to_client = _Pipe(p, self, self.cwriter)
        client = asyncio.ensure_future(self._from_client())
        self.tasks = [client]
        if self.ureader is not None:
            self.tasks.append(asyncio.ensure_future(self._from_server()))
        try:
            # Either side's end ends the connection, except behind a dead
            # path: there the client never learns that Redis went away.
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            if self.dead and not client.done():
                await client
        except (asyncio.CancelledError, Exception):
            pass
        self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for w in (self.cwriter, self.uwriter):
            if w is not None:
                try:
                    w.close()
                except Exception:
                    pass
        for t in self.tasks:
            t.cancel()
        for pipe in (self.to_client, self.to_server):
            if pipe is not None:
                pipe.task.cancel()
        if self.hold_timer is not None:
            self.hold_timer.cancel()
        self.proxy._conns.discard(self)

    async def _from_client(self):
        buf = bytearray()
        while True:
            chunk = await self.creader.read(65536)
            if not chunk:
                return
            await self.proxy._flowing.wait()
            if self.dead:
                continue  # into the void
            buf += chunk
            pos = 0
            while True:
                got = parse_command(buf, pos)
                if got is None:
                    break
                argv, end = got
                self._command(argv, bytes(buf[pos:end]))
                pos = end
            del buf[:pos]
            self._emit()

    def _command(self, argv, raw):
        p = self.proxy
        name = command_name(argv)
        p._count(name)
        rule = next((r for r in p._rules if r.take(argv)), None)
        if rule is not None:
            p._log.append((time.monotonic(), self.id, name, rule.error))
            if self.in_multi:
                self.multi_doomed = True
            hold = rule.hold
            self.slots.append(_Slot(error_reply(rule.error), forwarded=False, hold=hold,
                                    deadline=time.monotonic() + rule.hold_timeout, name=name, rule=rule))
            if hold:
                if self.hold_timer is not None:
                    self.hold_timer.cancel()
                self.hold_timer = asyncio.get_running_loop().call_later(
                    rule.hold_timeout + 0.01, self._emit)
            return
        replace = None
        if name == "MULTI":
            self.in_multi, self.multi_doomed = True, False
        elif name in ("EXEC", "DISCARD"):
            if name == "EXEC" and self.multi_doomed:
                raw = b"*1\r\n$7\r\nDISCARD\r\n"
                replace = error_reply("EXECABORT Transaction discarded because of previous errors.")
            self.in_multi = self.multi_doomed = False
        for s in self.slots:
            if s.hold > 0:
                s.hold -= 1
                if s.hold == 0 and time.monotonic() < s.deadline:
                    s.rule.mid_pipeline += 1
        self.slots.append(_Slot(forwarded=True, replace=replace, name=name))
        self.to_server.put(raw)

    async def _from_server(self):
        buf = bytearray()
        while True:
            chunk = await self.ureader.read(65536)
            if not chunk:
                return
            await self.proxy._flowing.wait()
            if self.dead:
                continue
            buf += chunk
            pos = 0
            while True:
                end = parse_reply(buf, pos)
                if end is None:
                    break
                self._reply(bytes(buf[pos:end]))
                pos = end
            del buf[:pos]
            self._emit()

    def _reply(self, raw):
        slot = next((s for s in self.slots if s.forwarded and s.data is None), None)
        if slot is None:  # a push with no command waiting (not used by chatd)
            self.to_client.put(raw)
            return
        slot.data = slot.replace if slot.replace is not None else raw
        self.proxy._count_reply(slot.name, len(raw))

    def _emit(self):
        if self.closed or self.dead:
            return
        out = []
        while self.slots and self.slots[0].ready:
            out.append(self.slots.popleft().data)
        if out:
            self.to_client.put(b"".join(out))
        if self.slots and self.slots[0].data is not None and not self.slots[0].ready:
            # held back: look again when the hold times out
            left = self.slots[0].deadline - time.monotonic()
            if self.hold_timer is not None:
                self.hold_timer.cancel()
            self.hold_timer = asyncio.get_running_loop().call_later(max(left, 0) + 0.01, self._emit)


class FaultProxy:
    """FaultProxy(redis_port).start(); chatd's redis_url = proxy.url."""

    def __init__(self, upstream_port, upstream_host=HOST, port=None):
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.port = port or _free_port()
        self._rules = []
        self._counts = collections.Counter()
        self._reply_bytes = collections.Counter()
        self._counts_lock = threading.Lock()
        self._log = []
        self._delay = 0.0
        self._blackhole = None      # None, "drop" or "hold"
        self._refusing = False
        self._closing = False       # accept, then close at once
        self._conns = set()
        self._next_id = 1
        self._server = None
        self._loop = None
        self._thread = None
        self.accepted = 0

    @property
    def url(self):
        return f"redis://{HOST}:{self.port}"

    # -- life ----------------------------------------------------------------

    def start(self):
        ready = threading.Event()

        def run():
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._flowing = asyncio.Event()
            self._flowing.set()
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()
            # stopped: close what is left
            for c in list(self._conns):
                c.close()
            pending = asyncio.all_tasks(self._loop)
            for t in pending:
                t.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def stop(self):
        if self._loop is None:
            return
        loop = self._loop

        def halt():
            if self._server is not None:
                self._server.close()
                self._server = None
            self._flowing.set()
            loop.stop()

        loop.call_soon_threadsafe(halt)
        self._thread.join(10)
        self._loop = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    async def _listen(self):
        self._server = await asyncio.start_server(self._accept, HOST, self.port, reuse_address=True,
                                                  backlog=1024)

    async def _accept(self, reader, writer):
        try:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        self.accepted += 1
        if self._refusing or self._closing:
            writer.close()
            return
        c = _Conn(self, reader, writer)
        self._conns.add(c)
        await c.run()

    def _call(self, fn, timeout=10):
        """Runs fn() on the proxy's loop and returns its result."""
        async def wrap():
            r = fn()
            if asyncio.iscoroutine(r):
                r = await r
            return r
        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(timeout)

    def _count(self, name):
        with self._counts_lock:
            self._counts[name] += 1

    def _count_reply(self, name, n):
        with self._counts_lock:
            self._reply_bytes[name] += n

    # -- faults --------------------------------------------------------------

    def refuse(self, match, error, count=None, hold=0, hold_timeout=1.0, active=True):
        """Adds and returns a Rule (see Rule). Rules are checked in the order
        they were added; the first that takes a command refuses it."""
        rule = Rule(match, error, count, hold, hold_timeout, active)
        self._call(lambda: self._rules.append(rule))
        return rule

    def remove(self, rule):
        self._call(lambda: self._rules.remove(rule) if rule in self._rules else None)

    def clear_rules(self):
        self._call(self._rules.clear)

    def set_active(self, rule, active):
        def f():
            rule.active = active
        self._call(f)

    def blackhole(self, mode="drop"):
        """Stops both directions without closing anything. mode "drop": every
        byte is dropped, the connections open now (and those opened during
        the black hole) stay dead after heal(), as behind a firewall that
        lost their state; "hold": bytes wait and flow again at heal()."""
        assert mode in ("drop", "hold")

        def f():
            self._blackhole = mode
            if mode == "drop":
                for c in self._conns:
                    c.dead = True
                    for pipe in (c.to_client, c.to_server):
                        if pipe is not None:
                            pipe.queue.clear()
            else:
                self._flowing.clear()
        self._call(f)

    def heal(self):
        """Ends a black hole: new connections work again (dead ones stay dead)."""
        def f():
            self._blackhole = None
            self._flowing.set()
        self._call(f)

    def refuse_connections(self):
        """Closes every connection and the listening port: connects fail with
        ECONNREFUSED until allow_connections()."""
        def f():
            self._refusing = True
            if self._server is not None:
                self._server.close()
                self._server = None
            for c in list(self._conns):
                c.close()
        self._call(f)

    def allow_connections(self):
        async def f():
            self._refusing = False
            if self._server is None:
                for _ in range(50):
                    try:
                        await self._listen()
                        return
                    except OSError:
                        await asyncio.sleep(0.1)
                raise RuntimeError(f"fault proxy cannot listen on {self.port} again")
        self._call(f)

    def close_on_accept(self, on=True):
        """on: every connection is closed, and new ones are accepted and
        closed at once (a load balancer with no backend, a Redis at
        maxclients): connect succeeds, then the connection ends."""
        def f():
            self._closing = on
            if on:
                for c in list(self._conns):
                    c.close()
        self._call(f)

    def kill_connections(self):
        """Closes every connection now (new ones are accepted)."""
        self._call(lambda: [c.close() for c in list(self._conns)])

    def set_delay(self, seconds):
        """Delays each direction by `seconds` (0 ends it), order kept."""
        def f():
            self._delay = float(seconds)
        self._call(f)

    def reset(self):
        """Back to pass through: no rules, no delay, no black hole, listening."""
        self.clear_rules()
        self.close_on_accept(False)
        self.set_delay(0)
        self.heal()
        self.allow_connections()

    # -- observations --------------------------------------------------------

    def counts(self):
        """Commands seen so far by name, e.g. {'XADD': 120, 'XREAD': 30}."""
        with self._counts_lock:
            return dict(self._counts)

    def reply_bytes(self):
        """Bytes of Redis' replies passed on, by the name of the command
        they answer (a reply inside EXEC counts for EXEC)."""
        with self._counts_lock:
            return dict(self._reply_bytes)

    def reset_counts(self):
        with self._counts_lock:
            self._counts.clear()
            self._reply_bytes.clear()

    def connections(self):
        return self._call(lambda: len(self._conns))

    def refusals(self):
        """(monotonic time, connection id, command, error) of every refusal."""
        return self._call(lambda: list(self._log))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]
