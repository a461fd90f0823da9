"""The delivery checker of the fault tests (issue 11) and of `make chaos`.

Senders on every node send numbered messages ("0", "1", ...) at a steady
rate for the whole run; every client (senders too) collects what arrives
as "NAME: TEXT". When the traffic stops the checker waits (bounded) for the
nodes to settle, then proves:

  1. exactly once: no client received any message twice;
  2. each sender's order: every client received each sender's messages in
     increasing order and without a gap (a gap is a lost message);
  3. one total order: every client that stayed connected for the whole run
     saw the same sequence, and every other client (one that joined late or
     was closed) saw a contiguous slice of it;
  4. nothing echoed is lost: a message echoed to its sender reached every
     client that stayed connected, and every client that joined before it
     was sent (a client with its 101 hears everything sent after it);
  5. nothing silently dropped: a sender still connected at the end had all
     its messages echoed; a sender that was closed had its unechoed
     messages refused with a close code from `allowed_codes`, and for codes
     in `strict_codes` (1001 at a graceful stop) everything it sent before
     the close must still have been stored and delivered.

A closed sender (or receiver) reconnects under a new name (NAME~1, NAME~2,
...) so that each name's order starts from 0 and stays checkable; it tries
its own node first, then the others, and retries a refused upgrade (503
while a node does not yet know where the stream ends) until it gets in.

`exempt(t0, t1)` excuses messages *sent* in [t0, t1] from rules 2 and 4
(used when Redis loses data on purpose: what it held but no node had read
yet is gone); they are still never duplicated, and are reported.

All times are time.monotonic(); the checker runs on the caller's asyncio
loop. Python standard library plus Debian's python3-websockets.
"""

import asyncio
import collections
import random
import time

import websockets

TEXT_ROOM = "faults"


def now():
    return time.monotonic()


class Conn:
    """One WebSocket connection of the checker: what it sent and received."""

    def __init__(self, name, node, role):
        self.name = name
        self.node = node            # the Chatd it is connected to
        self.role = role            # "sender" or "receiver"
        self.ws = None
        self.t_open = None          # the 101 was received
        self.t_close = None
        self.close_code = None
        self.close_reason = ""
        self.got = []               # (sender name, seq)
        self.t_got = []             # arrival time of each
        self.foreign = []           # frames that are not "NAME: <int>"
        self.sent = []              # (seq, send time) of each message sent
        self.send_error = None

    @property
    def closed(self):
        return self.t_close is not None

    @property
    def gone(self):
        """Closed by the other side (or its node) before the checker's end."""
        return not getattr(self, "stayed", not self.closed)

    def echoed(self):
        return [s for (n, s) in self.got if n == self.name]

    def __repr__(self):
        return f"<{self.role} {self.name}@{self.node.name}>"


def _parse(m):
    if not isinstance(m, str) or ": " not in m:
        return None
    name, text = m.split(": ", 1)
    try:
        return name, int(text)
    except ValueError:
        return None


async def connect_retry(url, timeout=30.0, stats=None):
    """websockets.connect with retries while the node refuses (503, a
    refused TCP connect, a closed socket) for at most `timeout` s."""
    deadline = now() + timeout
    delay = 0.05
    last = None
    while True:
        try:
            return await websockets.connect(url, open_timeout=max(1.0, min(10.0, deadline - now())),
                                            close_timeout=3, ping_interval=None,
                                            max_size=None, max_queue=None)
        except websockets.InvalidStatusCode as e:
            last = f"HTTP {e.status_code}"
            if stats is not None:
                stats[f"upgrade refused {e.status_code}"] += 1
        except (OSError, asyncio.TimeoutError, websockets.InvalidHandshake,
                websockets.ConnectionClosed, EOFError) as e:
            last = f"{type(e).__name__}: {e}"
            if stats is not None:
                stats["connect failed"] += 1
        if now() + delay > deadline:
            raise ConnectionError(f"could not connect to {url} within {timeout}s (last: {last})")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


class Checker:
    """Checker(nodes).start(); ... faults ...; await stop(); check().

    nodes: the Chatd nodes to spread clients over (more can join with
    add_node). rate: messages per second per sender.
    """

    def __init__(self, nodes, senders_per_node=2, receivers_per_node=1, rate=20.0, room=TEXT_ROOM,
                 allowed_codes=(1001, 1011, 1013), strict_codes=(), strict_margin=0.05,
                 reconnect=True, connect_timeout=30.0, log=None, prefix=""):
        self.nodes = list(nodes)
        self.prefix = prefix        # before every client's name (several checkers at once)
        self.senders_per_node = senders_per_node
        self.receivers_per_node = receivers_per_node
        self.rate = rate
        self.room = room
        self.allowed_codes = set(allowed_codes)
        self.strict_codes = set(strict_codes)
        self.strict_margin = strict_margin
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.conns = []
        self.tasks = []
        self.sending = False
        self.stopping = False
        self.exempt_windows = []
        self.t_start = None         # first send
        self.stats = collections.Counter()
        self.log = log or (lambda s: None)
        self.violations = []
        self.notes = []
        self.dead_nodes = set()     # node names not to reconnect to

    # -- traffic -------------------------------------------------------------

    def url(self, node, name):
        return node.url(name, room=self.room)

    async def _open(self, conn, nodes):
        """Connects conn to the first of nodes that lets it in."""
        last = None
        deadline = now() + self.connect_timeout
        while not self.stopping:
            for node in nodes:
                if node.name in self.dead_nodes:
                    continue
                try:
                    # one node at a time, briefly: a stopped node must not
                    # keep a client from the others
                    per_try = 1.0 if len(nodes) > 1 else 5.0
                    left = max(0.3, min(deadline - now(), per_try))
                    ws = await connect_retry(self.url(node, conn.name), left, self.stats)
                except ConnectionError as e:
                    last = e
                    continue
                conn.node, conn.ws, conn.t_open = node, ws, now()
                return True
            if now() > deadline:
                self.notes.append(f"{conn.name} could not connect within {self.connect_timeout}s: {last}")
                return False
            await asyncio.sleep(0.2)
        return False

    async def _read(self, conn):
        ws = conn.ws
        try:
            async for m in ws:
                t = now()
                p = _parse(m)
                if p is None:
                    conn.foreign.append(m)
                else:
                    conn.got.append(p)
                    conn.t_got.append(t)
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 -- recorded, the check reports it
            conn.foreign.append(f"reader error {type(e).__name__}: {e}")
        conn.t_close = now()
        conn.close_code = ws.close_code
        conn.close_reason = ws.close_reason or ""
        self.stats[f"closed {conn.close_code}"] += 1

    def _order(self, home):
        others = [n for n in self.nodes if n is not home]
        random.shuffle(others)
        return [home] + others

    async def _client(self, base, home, role, pinned=False):
        gen = 0
        while not self.stopping:
            name = base if gen == 0 else f"{base}~{gen}"
            conn = Conn(name, home, role)
            # pinned: the first connection waits for its own node (a node
            # that is starting must not pass its clients to the others)
            if not await self._open(conn, [home] if pinned and gen == 0 else self._order(home)):
                return
            self.conns.append(conn)
            self.log(f"{name} in at {conn.node.name}")
            reader = asyncio.ensure_future(self._read(conn))
            if role == "sender":
                await self._send_loop(conn, reader)
            await reader
            if self.stopping or not self.reconnect:
                return
            self.stats[f"{role} reconnects"] += 1
            gen += 1
            await asyncio.sleep(random.uniform(0.05, 0.3))

    async def _send_loop(self, conn, reader):
        while not self.sending and not self.stopping and not reader.done():
            await asyncio.sleep(0.01)
        interval = 1.0 / self.rate
        nxt = now() + random.uniform(0, interval)
        seq = 0
        while self.sending and not reader.done():
            delay = nxt - now()
            if delay > 0:
                await asyncio.sleep(delay)
            if not self.sending or reader.done():
                break
            t = now()
            if self.t_start is None:
                self.t_start = t
            try:
                await asyncio.wait_for(conn.ws.send(str(seq)), 10)
            except websockets.ConnectionClosed:
                break
            except asyncio.TimeoutError:
                conn.send_error = f"send of {seq} blocked for 10 s"
                break
            conn.sent.append((seq, t))
            seq += 1
            nxt += interval
            if nxt < now() - interval:  # fell behind (a stalled loop): no burst
                nxt = now()
        # done sending: the reader goes on until the end (echoes, others' messages)

    def _spawn(self, node, pinned=False):
        i = self.nodes.index(node)
        for k in range(self.receivers_per_node):
            self.tasks.append(asyncio.ensure_future(
                self._client(f"{self.prefix}r{i}{chr(97 + k)}", node, "receiver", pinned)))
        for k in range(self.senders_per_node):
            self.tasks.append(asyncio.ensure_future(
                self._client(f"{self.prefix}s{i}{chr(97 + k)}", node, "sender", pinned)))

    async def start(self, timeout=30.0):
        """Connects every client (bounded), then starts the traffic."""
        for node in self.nodes:
            self._spawn(node)
        want = len(self.nodes) * (self.senders_per_node + self.receivers_per_node)
        deadline = now() + timeout
        while len(self.conns) < want:
            if now() > deadline:
                raise AssertionError(f"only {len(self.conns)} of {want} clients connected within "
                                     f"{timeout}s; {self.notes}")
            await asyncio.sleep(0.02)
        self.sending = True
        return self

    async def add_node(self, node, timeout=30.0):
        """Spreads clients onto a node started later; returns once they are in
        (they retry while the node refuses upgrades)."""
        self.nodes.append(node)
        before = len(self.conns)
        self._spawn(node, pinned=True)
        want = before + self.senders_per_node + self.receivers_per_node
        deadline = now() + timeout
        while len([c for c in self.conns if c.node is node]) < self.senders_per_node + self.receivers_per_node:
            if now() > deadline:
                raise AssertionError(f"clients of {node.name} not in within {timeout}s "
                                     f"({len(self.conns) - before} of {want - before}); {self.notes}")
            await asyncio.sleep(0.02)

    def node_gone(self, node):
        """The node will not come back: nobody reconnects to it."""
        self.dead_nodes.add(node.name)

    def exempt(self, t0, t1):
        self.exempt_windows.append((t0, t1))

    async def stop(self, settle=20.0, stall=10.0):
        """Stops sending, waits (at most `settle` s) until every connected
        sender has its echoes and every connected client has what the others
        have, then a short quiet time for late duplicates; closes all. Gives
        up early when nothing at all arrived for `stall` s (a node that is
        stuck for good; its backoff is shorter than that)."""
        self.sending = False
        await asyncio.sleep(0.05)
        t_stop = now()
        deadline = t_stop + settle
        while now() < deadline:
            if self._settled():
                break
            last = max([c.t_got[-1] for c in self.conns if c.t_got] + [t_stop])
            if now() - last > stall:
                self.notes.append(f"nothing arrived for {stall:.0f}s: stopped waiting")
                deadline = now()
                continue
            await asyncio.sleep(0.05)
        else:
            waiting = [f"{c.name} ({len(c.sent) - len(c.echoed())} of {len(c.sent)} unechoed)"
                       for c in self.conns if not c.closed and c.role == "sender"
                       and len(c.echoed()) < len(c.sent)]
            self.notes.append(f"not settled {now() - t_stop:.0f}s after the traffic stopped; "
                              f"senders still waiting for echoes: {', '.join(waiting) or 'none'}")
        await asyncio.sleep(0.5)
        self.t_end = now()
        self.stopping = True
        open_conns = [c for c in self.conns if not c.closed]
        for c in self.conns:
            c.stayed = not c.closed
        await asyncio.gather(*(self._close(c) for c in open_conns), return_exceptions=True)
        for t in self.tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _close(self, c):
        try:
            await asyncio.wait_for(c.ws.close(), 5)
        except Exception:  # noqa: BLE001
            pass

    def _settled(self):
        alive = [c for c in self.conns if not c.closed]
        for c in alive:
            if c.role == "sender" and len(c.echoed()) < len(c.sent):
                return False
        lens = {len(c.got) for c in alive if c.t_open is not None and self.t_start and c.t_open < self.t_start}
        if len(lens) > 1:
            return False
        return True

    # -- the check -----------------------------------------------------------

    def _exempt(self, key, sendtime):
        t = sendtime.get(key)
        return t is not None and any(a <= t <= b for a, b in self.exempt_windows)

    def check(self):
        """Returns the list of violations (empty when all holds) and fills
        self.figures."""
        v = self.violations = []
        conns = self.conns
        sendtime = {}
        for c in conns:
            for seq, t in c.sent:
                sendtime[(c.name, seq)] = t
        senders = {c.name: c for c in conns if c.role == "sender"}
        ex = lambda k: self._exempt(k, sendtime)  # noqa: E731

        # 1. exactly once; and frames that are not ours
        for c in conns:
            cnt = collections.Counter(c.got)
            dups = [k for k, n in cnt.items() if n > 1]
            if dups:
                v.append(f"DUPLICATED: {c.name}@{c.node.name} received {len(dups)} messages more than "
                         f"once, e.g. {dups[:5]}")
            if c.foreign:
                v.append(f"UNEXPECTED FRAMES at {c.name}: {c.foreign[:3]}")
            unknown = [k for k in cnt if k not in sendtime]
            if unknown:
                v.append(f"NEVER SENT: {c.name} received {len(unknown)} messages nobody sent, e.g. {unknown[:5]}")

        # 2. each sender's order, without gaps
        gaps = collections.defaultdict(list)  # (sender, missing seqs) -> clients
        for c in conns:
            last = {}
            for (name, seq) in c.got:
                if name in last:
                    prev = last[name]
                    if seq <= prev:
                        v.append(f"REORDERED: {c.name} received {name}'s {seq} after its {prev}")
                    elif seq != prev + 1:
                        missing = [(name, k) for k in range(prev + 1, seq)]
                        lost = [k for k in missing if not ex(k)]
                        if lost:
                            gaps[(name, prev, seq, len(lost), tuple(k for _, k in lost[:8]))].append(
                                f"{c.name}@{c.node.name}")
                elif name == c.name and seq != 0 and not ex((name, 0)):
                    v.append(f"LOST: {c.name}'s first echo is its message {seq}, not 0")
                last[name] = max(seq, last.get(name, -1))

        for (name, prev, seq, n, eg), who in gaps.items():
            v.append(f"LOST: {name}'s message{'s' if n > 1 else ''} {list(eg)}{' ...' if n > len(eg) else ''} "
                     f"never reached {len(who)} of {len(conns)} clients ({', '.join(who[:6])}"
                     f"{' ...' if len(who) > 6 else ''}): they got its {seq} right after its {prev}")

        # 5. nothing silently dropped; refusals by code
        refused = collections.Counter()
        lost_wipe = 0
        must = {}  # message -> why it had to arrive everywhere
        for s in senders.values():
            echoed = s.echoed()
            sent = [k for k, _ in s.sent]
            must.update(((s.name, k), "echoed") for k in echoed)
            es = set(echoed)
            unechoed = [k for k in sent if k not in es]
            if s.send_error:
                v.append(f"SEND BLOCKED: {s.name}: {s.send_error}")
            if not s.gone:
                for k in sent:
                    must.setdefault((s.name, k), "its sender is connected")
                silent = [k for k in unechoed if not ex((s.name, k))]
                lost_wipe += len(unechoed) - len(silent)
                if silent:
                    v.append(f"SILENTLY DROPPED: {s.name}@{s.node.name} is still connected and sent "
                             f"{len(sent)} messages, but {len(silent)} never came back to it: "
                             f"{silent[:10]}{' ...' if len(silent) > 10 else ''}")
                continue
            if unechoed:
                refused[s.close_code] += len(unechoed)
                if s.close_code not in self.allowed_codes:
                    v.append(f"BAD CLOSE: {s.name}@{s.node.name} was closed with {s.close_code} "
                             f"{s.close_reason!r}; {len(unechoed)} of its messages never echoed "
                             f"(allowed: {sorted(self.allowed_codes)})")
                if s.close_code in self.strict_codes:
                    cut = s.t_close - self.strict_margin
                    for k, t in s.sent:
                        if t < cut:
                            must.setdefault((s.name, k), f"sent before its sender's {s.close_code}")
        must = {k: why for k, why in must.items() if not ex(k)}

        # 3. one total order
        stayed = [c for c in conns if not c.gone]
        full = [c for c in stayed if self.t_start is not None and c.t_open < self.t_start]
        base = full or sorted(stayed, key=lambda c: c.t_open)[:1]
        if not base:
            v.append("NO RECEIVER stayed connected to the end")
            ref = []
        else:
            ref_c = max(base, key=lambda c: len(c.got))
            ref = [k for k in ref_c.got if not ex(k)]
            for c in full:
                mine = [k for k in c.got if not ex(k)]
                if mine != ref:
                    i = next((i for i, (a, b) in enumerate(zip(mine, ref)) if a != b), min(len(mine), len(ref)))
                    v.append(f"ORDER DIFFERS: {c.name}@{c.node.name} and {ref_c.name}@{ref_c.node.name} "
                             f"(both connected throughout) differ at position {i} of {len(mine)}/{len(ref)}: "
                             f"{mine[i:i + 3]} vs {ref[i:i + 3]}")
        # Every client's sequence must be a contiguous slice of one common
        # order: then each message has one successor and one predecessor
        # across all clients, and following successors never loops.
        succ, pred, clash = {}, {}, collections.OrderedDict()
        for c in conns:
            mine, seen_k = [], set()
            for k in c.got:
                if not ex(k) and k not in seen_k:  # duplicates are reported above
                    seen_k.add(k)
                    mine.append(k)
            who = f"{c.name}@{c.node.name}"
            for x, y in zip(mine, mine[1:]):
                if x in succ and succ[x][0] != y:
                    clash.setdefault(("after", x), (succ[x], (y, who)))
                else:
                    succ.setdefault(x, (y, who))
                if y in pred and pred[y][0] != x:
                    clash.setdefault(("before", y), (pred[y], (x, who)))
                else:
                    pred.setdefault(y, (x, who))
        for (side, k), ((m1, w1), (m2, w2)) in list(clash.items())[:10]:
            v.append(f"ORDER DIFFERS: {side} {k}, {w1} got {m1} but {w2} got {m2} "
                     f"(a message missing at one of them, or the order differs)")
        if len(clash) > 10:
            v.append(f"ORDER DIFFERS: ... {len(clash) - 10} more such places")
        if not clash:
            heads = [k for k in succ if k not in pred]
            visited = set()
            for h in heads:
                k = h
                while k is not None and k not in visited:
                    visited.add(k)
                    k = succ.get(k, (None,))[0]
            loop = [k for k in succ if k not in visited]
            if loop:
                v.append(f"ORDER DIFFERS: clients disagree on the order of {len(loop)} messages "
                         f"(one saw x before y, another y before x), e.g. {loop[:4]}")

        # 4. everything that must arrive, arrived
        missing = collections.defaultdict(list)  # (missing messages) -> clients
        for c in stayed:
            have = set(c.got)
            miss = sorted((k for k in must if k not in have and sendtime[k] > c.t_open),
                          key=lambda k: sendtime[k])
            if miss:
                late = " (joined late: sent after its 101)" if c not in full else ""
                missing[tuple(miss)].append(f"{c.name}@{c.node.name}{late}")
        for miss, who in missing.items():
            why = collections.Counter(must[k] for k in miss)
            v.append(f"LOST: {len(miss)} messages that had to arrive "
                     f"({', '.join(f'{n} {w}' for w, n in why.items())}) never reached "
                     f"{len(who)} clients connected to the end: {', '.join(who[:6])}"
                     f"{' ...' if len(who) > 6 else ''}; e.g. {list(miss[:8])}")

        # figures
        lat = []
        for c in conns:
            for k, t in zip(c.got, c.t_got):
                if k in sendtime:
                    lat.append(t - sendtime[k])
        self.figures = {
            "senders": len(senders),
            "clients": len(conns),
            "sent": sum(len(s.sent) for s in senders.values()),
            "echoed": sum(len(set(s.echoed())) for s in senders.values()),
            "delivered": sum(len(c.got) for c in conns),
            "refused": dict(refused),
            "lost in a Redis wipe (exempt)": lost_wipe,
            "max latency s": round(max(lat), 3) if lat else None,
            "reconnects": self.stats["sender reconnects"] + self.stats["receiver reconnects"],
            "closes": {c.close_code: sum(1 for x in conns if x.gone and x.close_code == c.close_code)
                       for c in conns if c.gone},
            "upgrades refused": sum(n for k, n in self.stats.items() if k.startswith("upgrade refused")),
        }
        return v

    def assert_ok(self, what=""):
        v = self.check()
        if v:
            head = f"{len(v)} delivery violations{' ' + what if what else ''}:"
            lines = v[:25] + ([f"... and {len(v) - 25} more"] if len(v) > 25 else [])
            raise AssertionError("\n".join([head] + lines + [f"figures: {self.figures}"] + self.notes))
        return self.figures

    # -- helpers for scenarios ----------------------------------------------

    def receivers_at(self, node):
        return [c for c in self.conns if c.node is node]

    def latency_after(self, t, clients=None):
        """Max delivery latency of messages sent at or after t."""
        sendtime = {(c.name, seq): ts for c in self.conns for seq, ts in c.sent}
        worst = 0.0
        for c in clients or self.conns:
            for k, tr in zip(c.got, c.t_got):
                ts = sendtime.get(k)
                if ts is not None and ts >= t:
                    worst = max(worst, tr - ts)
        return worst

    def last_arrival(self, clients=None):
        ts = [c.t_got[-1] for c in (clients or self.conns) if c.t_got]
        return max(ts) if ts else None


async def nodes_delivering(nodes, timeout=20.0, room="_sync"):
    """Returns once every node's consumer delivers from the stream: a probe
    in room (_sync) is sent from the first node until a watcher on every node
    has seen one (entries after it are then seen by every node). Upgrades
    refused with 503 (a node not ready yet) are retried. With shards, each
    shard is its own stream: call it with a room of each."""
    ws = [await connect_retry(n.url(f"watch{i}", room=room), timeout) for i, n in enumerate(nodes)]
    seen = [False] * len(ws)

    async def watch(i):
        await ws[i].recv()
        seen[i] = True

    tasks = [asyncio.ensure_future(watch(i)) for i in range(len(ws))]
    deadline = time.monotonic() + timeout
    k = 0
    try:
        while not all(seen):
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not delivering through Redis within {timeout}s: "
                                     f"{dict(zip([n.name for n in nodes], seen))}")
            await ws[0].send(f"probe{k}")
            k += 1
            await asyncio.sleep(0.1)
    finally:
        for t in tasks:
            t.cancel()
        for w in ws:
            await w.close()
