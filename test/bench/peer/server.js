// The chat a Node.js user would write, for side-by-side benchmarks:
// ws + ioredis, XADD per message, one XREAD loop per node broadcasting
// "NAME: TEXT" to every client of the room. Same URL and wire format as
// chatd: ws://host:PORT/?username=NAME[&room=ROOM].
'use strict';
const http = require('http');
const { WebSocketServer } = require('ws');
const Redis = require('ioredis');

const PORT = parseInt(process.env.PORT || '5000', 10);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const STREAM = process.env.STREAM || 'chatd:messages';

const pub = new Redis(REDIS_URL);
const sub = new Redis(REDIS_URL);
const rooms = new Map(); // room -> Set of sockets

const server = http.createServer((req, res) => {
  res.writeHead(req.url === '/healthz' ? 200 : 404);
  res.end();
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 * 1024 });

wss.on('connection', (ws, req) => {
  const q = new URL(req.url, 'http://x').searchParams;
  const user = q.get('username');
  const room = q.get('room') || 'lobby';
  if (!user) { ws.close(1008, 'username required'); return; }
  let set = rooms.get(room);
  if (!set) rooms.set(room, (set = new Set()));
  set.add(ws);
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
  ws.on('message', (data, isBinary) => {
    if (isBinary) { ws.close(1003, 'binary'); return; }
    pub.xadd(STREAM, 'MAXLEN', '~', '100000', '*', 'room', room, 'user', user, 'text', data.toString());
  });
  ws.on('close', () => { set.delete(ws); if (set.size === 0) rooms.delete(room); });
});

setInterval(() => {
  for (const ws of wss.clients) {
    if (!ws.isAlive) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}, 30000);

async function consume() {
  const last = await sub.xrevrange(STREAM, '+', '-', 'COUNT', 1);
  let id = last.length ? last[0][0] : '0-0';
  for (;;) {
    const res = await sub.xread('COUNT', 512, 'BLOCK', 1000, 'STREAMS', STREAM, id);
    if (!res) continue;
    for (const [, entries] of res) {
      for (const [eid, fields] of entries) {
        id = eid;
        const f = {};
        for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1];
        const set = rooms.get(f.room);
        if (!set) continue;
        const line = `${f.user}: ${f.text}`;
        for (const ws of set) if (ws.readyState === 1) ws.send(line);
      }
    }
  }
}

consume().catch((e) => { console.error(e); process.exit(1); });
server.listen(PORT, '127.0.0.1', () => console.error(`peer listening at ws://127.0.0.1:${PORT}`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
