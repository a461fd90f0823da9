// The page's side of the chatd.v1 contract, against a scripted server: the
// page is served by a real chatd node, and its WebSocket is answered by a
// mock in this file (playwright's routeWebSocket), so the test can do what
// a healthy server never does on cue: replay messages the page has already
// seen, lose its history, drop the link again and again. It checks what the
// page sends (since and epoch on a rejoin, typing at most every 2 s, the
// backoff between attempts) and what it shows (each message once, in order,
// a marker at a gap). web.test.mjs runs the page against real nodes.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

import { CHATD_BIN, CHROMIUM, Chatd, freePort, sleep, stopAll, waitFor } from './harness.mjs';

const { chromium } = await import('playwright-core');
const STEP_MS = 10000;

let node, browser;
const watchdog = setTimeout(() => {
  console.error('page test: over 120 s, giving up');
  process.exit(1);
}, 120000);
watchdog.unref();

before(async () => {
  for (const f of [CHATD_BIN, CHROMIUM]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing (make; third_party/install-deps.sh)`);
  }
  node = await new Chatd('page', await freePort(), { workers: 1 }).start();
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  const code = node ? await node.stop() : 0;
  await stopAll();
  clearTimeout(watchdog);
  assert.equal(code, 0);
});

/** A scripted chatd.v1 server for one page. */
class Mock {
  constructor() {
    this.epoch = 'epoch-1';
    this.msgs = [];        // [{id, user, text, ts}] of room r, in order
    this.connects = [];    // ms of each connection
    this.requests = [];    // every JSON object the page sent
    this.ws = null;
    this.refuse = 0;       // close the next n connections at once
    this.onJoin = null;    // (req, mock) => true when it answered itself
    this.n = 0;
  }

  id(ms) { return `${ms}-${this.n++}`; }

  add(text, user = 'Bob', ms = 1700000000000 + this.n * 1000) {
    const m = { id: this.id(ms), user, text, ts: ms };
    this.msgs.push(m);
    return m;
  }

  send(obj) { if (this.ws) this.ws.send(JSON.stringify(obj)); }

  msg(m) { this.send({ op: 'msg', room: 'r', ...m }); }

  attach(ws) {
    this.connects.push(Date.now());
    if (this.refuse > 0) {
      this.refuse--;
      ws.close({ code: 1011, reason: 'go away' });
      return;
    }
    this.ws = ws;
    ws.onMessage((data) => {
      const req = JSON.parse(String(data));
      this.requests.push(req);
      if (req.op === 'join') {
        if (this.onJoin && this.onJoin(req, this)) return;
        this.send({ op: 'joined', room: req.room, epoch: this.epoch, recovered: false, count: 1,
          members: ['Alice'] });
        for (const m of this.msgs.slice(-(req.history || 50))) this.msg(m);
      } else if (req.op === 'send') {
        const m = this.add(req.text, 'Alice', Date.now());
        this.send({ op: 'ack', ref: req.ref, id: m.id });
        this.msg(m);
      }
    });
    ws.onClose(() => { if (this.ws === ws) this.ws = null; });
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close({ code: 1001, reason: 'going away' });
  }
}

async function open(mock) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  await page.routeWebSocket(/\/\?/, (ws) => mock.attach(ws));
  await page.goto(node.origin + '/?room=r&name=Alice');
  return page;
}

const texts = (page) => page.$$eval('ol.log li', (els) =>
  els.map((e) => (e.classList.contains('gap') ? '--gap--' : e.classList.contains('msg')
    ? e.querySelector('.text').textContent : null)).filter((t) => t !== null));

async function showsTexts(page, want, what) {
  await waitFor(async () => JSON.stringify(await texts(page)) === JSON.stringify(want), STEP_MS,
    `${what}: ${JSON.stringify(want)}, have ${JSON.stringify(await texts(page).catch(() => []))}`);
}

const joins = (mock) => mock.requests.filter((r) => r.op === 'join');

test('a rejoin asks for what came after the last id, and an overlapping replay shows once', async () => {
  const mock = new Mock();
  for (const t of ['one', 'two', 'three']) mock.add(t);
  const page = await open(mock);
  await showsTexts(page, ['one', 'two', 'three'], 'the history');
  assert.equal(joins(mock)[0].history, 50);
  assert.equal(joins(mock)[0].since, undefined);

  // The server replays from an older point than asked: the page must not
  // show "two" and "three" again.
  mock.onJoin = (req, m) => {
    m.send({ op: 'joined', room: 'r', epoch: m.epoch, recovered: true, members: ['Alice'] });
    for (const x of m.msgs.slice(1)) m.msg(x);
    return true;
  };
  mock.add('four');
  mock.add('five');
  mock.drop();
  await showsTexts(page, ['one', 'two', 'three', 'four', 'five'], 'after the rejoin');
  const rejoin = joins(mock)[1];
  assert.equal(rejoin.since, mock.msgs[2].id, 'since is the last id the page had');
  assert.equal(rejoin.epoch, 'epoch-1');
  assert.equal(rejoin.history, undefined);
  // a live message the server sends twice is shown once too
  mock.msg(mock.msgs[4]);
  mock.msg(mock.add('six'));
  await showsTexts(page, ['one', 'two', 'three', 'four', 'five', 'six'], 'live after a repeat');
  assert.equal(await page.locator('.gap').count(), 0);
  assert.deepEqual(page.errors, []);
  await page.context().close();
});

test('ids are ordered as numbers, and a late older message goes in its place', async () => {
  const mock = new Mock();
  mock.msgs = [
    { id: '999-5', user: 'Bob', text: 'a', ts: 999 },
    { id: '1000-0', user: 'Bob', text: 'c', ts: 1000 },
  ];
  const page = await open(mock);
  await showsTexts(page, ['a', 'c'], 'two messages');
  mock.msg({ id: '999-10', user: 'Bob', text: 'b', ts: 999 }); // "999-10" < "1000-0" as numbers
  await showsTexts(page, ['a', 'b', 'c'], 'the late one in its place');
  await page.context().close();
});

test('recovered:false after a since shows a gap marker, new epoch messages after it', async () => {
  const mock = new Mock();
  for (const t of ['old 1', 'old 2']) mock.add(t);
  const page = await open(mock);
  await showsTexts(page, ['old 1', 'old 2'], 'the history');
  // Redis lost everything: new epoch, ids start again lower than before
  mock.epoch = 'epoch-2';
  mock.msgs = [{ id: '5-0', user: 'Bob', text: 'new 1', ts: 5 }, { id: '6-0', user: 'Bob', text: 'new 2', ts: 6 }];
  mock.drop();
  await showsTexts(page, ['old 1', 'old 2', '--gap--', 'new 1', 'new 2'], 'the gap');
  const rejoin = joins(mock)[1];
  assert.equal(rejoin.epoch, 'epoch-1');
  assert.ok(rejoin.since);
  // the next rejoin uses the new epoch and the new ids
  mock.onJoin = (req, m) => {
    m.send({ op: 'joined', room: 'r', epoch: m.epoch, recovered: true, members: ['Alice'] });
    return true;
  };
  mock.drop();
  await waitFor(() => joins(mock).length === 3, STEP_MS, 'a third join');
  assert.equal(joins(mock)[2].epoch, 'epoch-2');
  assert.equal(joins(mock)[2].since, '6-0');
  await sleep(200);
  assert.deepEqual(await texts(page), ['old 1', 'old 2', '--gap--', 'new 1', 'new 2']);
  await page.context().close();
});

test('reconnects back off exponentially, with jitter; refused three times, the page says so', async () => {
  const mock = new Mock();
  const page = await open(mock);
  await waitFor(() => joins(mock).length === 1, STEP_MS, 'the first join');
  // Two refusals in a row (the page gives up only after three while the
  // node says it is ready: then it is refusing this page, not down).
  mock.refuse = 2;
  mock.drop();
  await waitFor(() => joins(mock).length === 2, 20000, 'a join after two refusals');
  const t = mock.connects;
  const gaps = t.slice(1).map((x, i) => x - t[i]);
  // delays are drawn from [d/2, d] with d = 500 ms, 1 s, 2 s
  assert.equal(gaps.length, 3);
  assert.ok(gaps[0] >= 200 && gaps[0] <= 1000, `first delay ${gaps[0]}`);
  assert.ok(gaps[1] >= 450 && gaps[1] <= 1500, `second delay ${gaps[1]}`);
  assert.ok(gaps[2] >= 950 && gaps[2] <= 2500, `third delay ${gaps[2]}`);
  assert.equal(await page.evaluate(() => document.body.dataset.conn), 'open');
  // A node that answers /readyz 200 and still refuses the upgrade three
  // times running is refusing this page: it stops and says so.
  mock.refuse = 3;
  mock.drop();
  await page.waitForSelector('#picker:not([hidden])', { timeout: 20000 });
  assert.match(await page.textContent('#pick-error'), /refused/);
  const n = mock.connects.length;
  await sleep(1500);
  assert.equal(mock.connects.length, n, 'no more attempts');
  await page.context().close();
});

test('typing is sent at most once per 2 s, and a refused send keeps its text', async () => {
  const mock = new Mock();
  const page = await open(mock);
  await waitFor(() => joins(mock).length === 1, STEP_MS, 'the join');
  const start = Date.now();
  let i = 0;
  while (Date.now() - start < 3000) {
    await page.type('#text', 'x');
    if (++i % 20 === 0) await page.fill('#text', '');
    await sleep(50);
  }
  const typing = mock.requests.filter((r) => r.op === 'typing');
  assert.ok(typing.length >= 1 && typing.length <= 2, `${typing.length} typing requests in 3 s`);
  assert.deepEqual(typing[0], { op: 'typing', room: 'r' });

  const orig = mock.ws;
  await page.fill('#text', 'too fast');
  // answer this send with an error instead of storing it
  const before = mock.requests.length;
  orig.onMessage((data) => {
    const req = JSON.parse(String(data));
    mock.requests.push(req);
    if (req.op === 'send') mock.send({ op: 'error', ref: req.ref, code: 'rate_limited', reason: 'over rate_limit' });
  });
  await page.press('#text', 'Enter');
  await waitFor(() => mock.requests.length > before, STEP_MS, 'the send');
  await page.waitForSelector('li.note.error');
  assert.match(await page.textContent('li.note.error'), /Not sent: over rate_limit/);
  assert.equal(await page.inputValue('#text'), 'too fast');
  assert.deepEqual(page.errors, []);
  await page.context().close();
});
