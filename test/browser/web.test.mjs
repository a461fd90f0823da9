// The chat page in a real browser (issue 13): Debian's headless Chromium,
// driven by playwright-core, against two real chatd nodes sharing a real
// redis-server, plus one node with auth_secret. Run with
//   node --test test/browser/web.test.mjs
// (make test does, after third_party/install-deps.sh installed chromium and
// ran npm ci here). Screenshots go to build/browser/.
//
// The cases share one cluster and run in order: each leaves the pages in
// the state the next one starts from (Alice on node A, Bob on node B, both
// in "kitchen").

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

import {
  ARTEFACTS, CHATD_BIN, CHROMIUM, Chatd, Redis, TMP, freePort, mintToken, sleep, stopAll, waitFor,
} from './harness.mjs';

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  throw new Error('playwright-core is missing: run third_party/install-deps.sh (npm ci in test/browser)');
}

const SECRET = 'browser-test-secret';
const STEP_MS = 15000; // the longest any one expectation may take

let redis, nodeA, nodeB, nodeAuth, browser;
let alice, bob;
const pages = [];

// Bounded: however the cases go, the run ends.
const watchdog = setTimeout(() => {
  console.error('browser test: over 170 s, giving up');
  process.exit(1);
}, 170000);
watchdog.unref();

before(async () => {
  for (const f of [CHATD_BIN, CHROMIUM]) {
    if (!fs.existsSync(f)) throw new Error(`${f} is missing (make; third_party/install-deps.sh)`);
  }
  fs.mkdirSync(ARTEFACTS, { recursive: true });
  redis = await new Redis(await freePort()).start();
  const shared = { broker: 'redis', redis_url: redis.url };
  nodeA = new Chatd('a', await freePort(), shared);
  nodeB = new Chatd('b', await freePort(), shared);
  nodeAuth = new Chatd('auth', await freePort(), { auth_secret: `"${SECRET}"` });
  await Promise.all([nodeA.start(), nodeB.start(), nodeAuth.start()]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  // Logs are worth keeping when something failed: copy them next to the
  // screenshots.
  for (const n of [nodeA, nodeB, nodeAuth]) {
    if (n) fs.writeFileSync(path.join(ARTEFACTS, `${n.name}.log`), n.log());
  }
  for (const p of pages) {
    fs.writeFileSync(path.join(ARTEFACTS, `console-${p.who}.log`), p.consoleLog.join('\n') + '\n');
  }
  if (browser) await browser.close().catch(() => {});
  const codes = [];
  for (const n of [nodeA, nodeB, nodeAuth]) if (n) codes.push([n.name, await n.stop()]);
  await stopAll();
  clearTimeout(watchdog);
  console.log(`browser test: artefacts in ${ARTEFACTS}, temporary files in ${TMP}`);
  for (const [name, code] of codes) assert.equal(code, 0, `chatd ${name} exited with ${code}`);
});

// ---- the page, seen from outside ------------------------------------------

async function openPage(who, node, query, opts = {}) {
  const phone = opts.phone === true;
  const context = await browser.newContext({
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 800 },
    deviceScaleFactor: phone ? 2 : 1,
    isMobile: phone,
    hasTouch: phone,
    locale: 'en-GB',
    timezoneId: opts.timezoneId || 'Asia/Kolkata', // +05:30: local time must show
  });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.who = who;
  page.consoleLog = [];
  page.errors = [];
  page.on('console', (m) => {
    page.consoleLog.push(`${m.type()}: ${m.text()}`);
    // A node that is down makes the browser log failed connections; those
    // are expected while the tests kill nodes. Anything else is a bug, CSP
    // violations included.
    if (m.type() === 'error' && !/WebSocket connection|Failed to load resource|ERR_CONNECTION_REFUSED/.test(m.text())) {
      page.errors.push(m.text());
    }
  });
  page.on('pageerror', (e) => page.errors.push(String(e)));
  pages.push(page);
  await page.goto(node.origin + '/' + query);
  return page;
}

const conn = (page) => page.evaluate(() => document.body.dataset.conn);

async function connected(page) {
  await waitFor(async () => (await conn(page)) === 'open', STEP_MS, `${page.who}'s page to connect`);
}

/** The messages on screen in room: [{id, user, text}]. */
function messages(page, room) {
  return page.evaluate((r) => {
    const log = [...document.querySelectorAll('ol.log')].find((l) => l.dataset.room === r);
    if (!log) return [];
    return [...log.querySelectorAll('li.msg')].map((li) => ({
      id: li.dataset.id,
      user: li.querySelector('.user').textContent,
      text: li.querySelector('.text').textContent,
      time: li.querySelector('time').textContent,
      iso: li.querySelector('time').dateTime,
    }));
  }, room);
}

const members = (page) => page.$$eval('#member-list li', (els) => els.map((e) => e.textContent).sort());

async function shows(page, room, text) {
  return waitFor(async () => (await messages(page, room)).find((m) => m.text === text),
    STEP_MS, `${page.who} to show ${JSON.stringify(text.slice(0, 40))} in ${room}`);
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

async function hasMembers(page, want) {
  await waitFor(async () => JSON.stringify(await members(page)) === JSON.stringify([...want].sort()),
    STEP_MS, `${page.who}'s member list to be ${want.join(', ')}`);
}

function noDuplicates(list, who) {
  const ids = list.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${who} shows a message twice: ${ids.join(' ')}`);
}

/** One counter of a node's /metrics. */
async function metric(node, name) {
  const body = await (await fetch(`${node.origin}/metrics`)).text();
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `${node.name} has no ${name}`);
  return Number(line.split(' ')[1]);
}

function assertNoErrors(page) {
  assert.deepEqual(page.errors, [], `${page.who}'s page logged errors`);
}

// ---- the cases --------------------------------------------------------------

test('two pages on two nodes chat with each other', async () => {
  alice = await openPage('alice', nodeA, '?room=kitchen&name=Alice');
  bob = await openPage('bob', nodeB, '?room=kitchen&name=Bob');
  await Promise.all([connected(alice), connected(bob)]);
  // the link skipped the picker
  assert.equal(await alice.isVisible('#picker'), false);
  await hasMembers(alice, ['Alice', 'Bob']);
  await hasMembers(bob, ['Alice', 'Bob']);

  await say(alice, 'Hello Bob, from node A');
  await shows(bob, 'kitchen', 'Hello Bob, from node A');
  await say(bob, 'Hi Alice, from node B');
  await shows(alice, 'kitchen', 'Hi Alice, from node B');
  await shows(bob, 'kitchen', 'Hi Alice, from node B');

  const a = await messages(alice, 'kitchen');
  const b = await messages(bob, 'kitchen');
  assert.deepEqual(a.map((m) => [m.id, m.user, m.text]), b.map((m) => [m.id, m.user, m.text]));
  assert.deepEqual(a.map((m) => m.user), ['Alice', 'Bob']);
  // the reader's local time: Asia/Kolkata is UTC+05:30
  for (const m of a) {
    const want = new Date(m.iso).toLocaleString('en-GB',
      { hour: '2-digit', minute: '2-digit', timeZone: 'Asia/Kolkata' });
    assert.equal(m.time, want);
  }
  // the message box is empty again, and still focused for the next line
  assert.equal(await alice.inputValue('#text'), '');
});

test('the other page shows who is typing', async () => {
  // Typed as a person types, a key at a time: the page sends `typing` at
  // most every 2 s, and the server relays at most one a second per room
  // (so one sent right after Bob's own may be dropped; the next one shows).
  await alice.click('#text');
  await waitFor(async () => {
    await alice.keyboard.type('x');
    return (await bob.textContent('#typing')).includes('Alice is typing');
  }, STEP_MS, 'Bob to see Alice typing');
  assert.equal(await alice.textContent('#typing'), '');
  // it goes away on its own a few seconds later
  await waitFor(async () => (await bob.textContent('#typing')) === '', 8000, 'the typing line to clear');
  await alice.fill('#text', '');
});

test('markup is shown as text and never runs', async () => {
  const evil = [
    '<script>window.__pwned = 1</script>',
    '<img src=x onerror="window.__pwned = 2">',
    '<b>bold?</b> &amp; <a href="javascript:alert(1)">link</a>',
  ];
  for (const t of evil) await say(alice, t);
  for (const t of evil) await shows(bob, 'kitchen', t);
  for (const p of [alice, bob]) {
    assert.equal(await p.evaluate(() => window.__pwned), undefined);
    assert.equal(await p.locator('ol.log img, ol.log script, ol.log b, ol.log a').count(), 0);
  }
});

test('the page survives SIGKILL and restart of its node, and recovers exactly what it missed', async () => {
  await nodeA.kill();
  await waitFor(async () => (await conn(alice)) !== 'open', STEP_MS, 'Alice to notice');
  const missed = ['while you were away 1', 'while you were away 2', 'while you were away 3'];
  for (const t of missed) await say(bob, t);
  for (const t of missed) await shows(bob, 'kitchen', t);
  await nodeA.start();
  await connected(alice);
  for (const t of missed) await shows(alice, 'kitchen', t);
  await say(alice, 'back again');
  await shows(bob, 'kitchen', 'back again');
  await shows(alice, 'kitchen', 'back again');
  // exactly what Bob saw: nothing lost, nothing twice, the same order
  const a = await messages(alice, 'kitchen');
  const b = await messages(bob, 'kitchen');
  noDuplicates(a, 'Alice');
  assert.deepEqual(a.map((m) => [m.id, m.text]), b.map((m) => [m.id, m.text]));
  assert.equal(await alice.locator('ol.log .gap').count(), 0, 'no gap: nothing was lost');
});

test('presence shows who joins and drops a page that closes', async () => {
  // Carol comes without a name in the link: the picker asks for one
  const carol = await openPage('carol', nodeB, '?room=kitchen');
  await carol.waitForSelector('#picker:not([hidden])', { timeout: STEP_MS });
  assert.equal(await carol.inputValue('#pick-room'), 'kitchen');
  await carol.fill('#pick-name', 'Carol');
  await carol.click('#pick-go');
  await connected(carol);
  await hasMembers(carol, ['Alice', 'Bob', 'Carol']);
  await hasMembers(alice, ['Alice', 'Bob', 'Carol']);
  assertNoErrors(carol);
  await carol.context().close();
  await hasMembers(alice, ['Alice', 'Bob']);
  await hasMembers(bob, ['Alice', 'Bob']);
});

test('several rooms as tabs', async () => {
  for (const p of [alice, bob]) {
    await p.fill('#add-room-name', 'garden');
    await p.press('#add-room-name', 'Enter');
  }
  await hasMembers(alice, ['Alice', 'Bob']);
  await say(bob, 'in the garden');
  await shows(alice, 'garden', 'in the garden');
  assert.equal((await messages(alice, 'kitchen')).some((m) => m.text === 'in the garden'), false);
  // back to the kitchen tab: new garden messages count as unread
  await alice.click('.tab[data-room="kitchen"] .tab-name');
  await say(bob, 'still in the garden');
  await shows(alice, 'garden', 'still in the garden');
  assert.equal(await alice.textContent('.tab[data-room="garden"] .tab-unread'), '1');
  assert.equal(await alice.isVisible('ol.log[data-room="garden"]'), false);
  await alice.click('.tab[data-room="garden"] .tab-name');
  assert.equal(await alice.textContent('.tab[data-room="garden"] .tab-unread'), '');
  await alice.click('.tab[data-room="kitchen"] .tab-name');
});

test('screenshots at desktop and phone size; long messages wrap', async () => {
  const long = 'a-very-long-word-'.repeat(60) + ' and then some ordinary words to end it';
  const [inA, outB] = [await metric(nodeA, 'chatd_messages_received_compressed_total'),
    await metric(nodeB, 'chatd_frames_compressed_total')];
  await say(alice, long);
  await shows(bob, 'kitchen', long);
  // Chromium offers permessage-deflate and chatd accepts: the message went
  // in compressed on node A and came out compressed on node B.
  assert.ok(await metric(nodeA, 'chatd_messages_received_compressed_total') > inA);
  // (a worker counts a frame just after writing it)
  await waitFor(async () => (await metric(nodeB, 'chatd_frames_compressed_total')) > outB,
    STEP_MS, 'node B to count a compressed frame');
  await alice.screenshot({ path: path.join(ARTEFACTS, 'desktop.png') });

  const erin = await openPage('erin', nodeB, '?room=kitchen&name=Erin', { phone: true });
  await connected(erin);
  await shows(erin, 'kitchen', long);
  const overflow = await erin.evaluate(() => ({
    page: document.documentElement.scrollWidth - window.innerWidth,
    texts: [...document.querySelectorAll('li.msg .text')].map((e) => e.scrollWidth - e.clientWidth),
  }));
  assert.ok(overflow.page <= 0, `the phone page scrolls sideways by ${overflow.page}px`);
  assert.ok(overflow.texts.every((d) => d <= 0), 'a message is wider than its box');
  await erin.screenshot({ path: path.join(ARTEFACTS, 'phone.png') });
  // on a phone the member list is a panel behind a button
  assert.equal(await erin.isVisible('#members'), false);
  await erin.click('#members-toggle');
  assert.equal(await erin.isVisible('#members'), true);
  await erin.screenshot({ path: path.join(ARTEFACTS, 'phone-members.png') });
  assertNoErrors(erin);
  await erin.context().close();
  await hasMembers(alice, ['Alice', 'Bob']);
});

test('a gap in the history shows a marker', async () => {
  // Redis restarted without its data (no persistence here): the epoch
  // changes, and Alice's node comes back to a Redis that lost what she saw.
  await nodeA.kill();
  await redis.stop();
  await redis.start();
  await nodeA.start();
  await connected(alice);
  await waitFor(async () => (await alice.locator('ol.log[data-room="kitchen"] .gap').count()) === 1,
    STEP_MS, 'the gap marker in kitchen');
  assert.equal(await alice.isVisible('ol.log[data-room="kitchen"] .gap'), true);
  assert.equal(await alice.locator('ol.log[data-room="garden"] .gap').count(), 1);
  // the chat goes on after it, and what was shown before stays
  await waitFor(async () => (await conn(bob)) === 'open', STEP_MS, 'Bob to be connected');
  await say(alice, 'after the gap');
  await shows(bob, 'kitchen', 'after the gap');
  const a = await messages(alice, 'kitchen');
  noDuplicates(a, 'Alice');
  assert.ok(a.some((m) => m.text === 'Hello Bob, from node A'));
  assert.equal(a[a.length - 1].text, 'after the gap');
  await alice.screenshot({ path: path.join(ARTEFACTS, 'gap.png') });
});

test('with auth_secret the page takes a token instead of a name', async () => {
  const token = mintToken(SECRET, { sub: 'Dana', exp: Math.floor(Date.now() / 1000) + 3600 });
  const dana = await openPage('dana', nodeAuth, `?room=vault#token=${token}`);
  await connected(dana);
  assert.equal(await dana.textContent('#me'), 'Dana');
  assert.equal(await dana.evaluate(() => location.hash), '', 'the token left the address bar');
  await hasMembers(dana, ['Dana']);
  await say(dana, 'signed in');
  const m = await shows(dana, 'vault', 'signed in');
  assert.equal(m.user, 'Dana');
  assertNoErrors(dana);

  // no token: the picker asks for one, not for a name
  const anon = await openPage('anon', nodeAuth, '?room=vault');
  await anon.waitForSelector('#picker:not([hidden])', { timeout: STEP_MS });
  assert.equal(await anon.isVisible('#pick-token'), true);
  assert.equal(await anon.isVisible('#pick-name'), false);
  // a token the node refuses sends the page back to the picker, saying so
  await anon.fill('#pick-token', mintToken('wrong secret', { sub: 'Eve', exp: 4102444800 }));
  await anon.click('#pick-go');
  await waitFor(async () => /token/.test(await anon.textContent('#pick-error')), 20000,
    'the picker to say the token was refused');
  await anon.context().close();
});

test('no page logged an error', () => {
  for (const p of [alice, bob]) assertNoErrors(p);
});
