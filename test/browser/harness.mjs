// The processes of the browser test: a redis-server and chatd nodes on free
// loopback ports, each with its own config file and log under one temporary
// folder, as test/integration/conftest.py does for the Python tests.
//
// Only what this file started is ever signalled (by its own pid), also when
// the test fails or the runner is interrupted; every wait is bounded.
//
// Environment:
//   CHATD_BIN   the binary (default <repo>/build/chatd)
//   CHROMIUM    the browser (default /usr/bin/chromium)
//   KEEP_TMP=1  leave the temporary folder (configs, logs) behind

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '..', '..');
export const CHATD_BIN = process.env.CHATD_BIN || path.join(REPO, 'build', 'chatd');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const ARTEFACTS = path.join(REPO, 'build', 'browser');
export const HOST = '127.0.0.1';

export const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'chatd-browser-'));

const children = new Set();

function killAll(sig) {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill(sig); } catch { /* gone already */ }
    }
  }
}

// Last resort: whatever is still running when node exits goes with it.
process.on('exit', () => {
  killAll('SIGKILL');
  if (!process.env.KEEP_TMP) fs.rmSync(TMP, { recursive: true, force: true });
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    killAll('SIGKILL');
    process.exit(130);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls fn() until it returns something truthy; throws after ms. */
export async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}` +
        (last instanceof Error ? `: ${last.message}` : ''));
    }
    await sleep(50);
  }
}

/** A loopback TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function portAnswers(port, send, expect, ms = 1000) {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port });
    let buf = '';
    const done = (v) => { s.destroy(); resolve(v); };
    s.setTimeout(ms, () => done(false));
    s.on('error', () => done(false));
    s.on('connect', () => s.write(send));
    s.on('data', (d) => {
      buf += d.toString('latin1');
      if (expect.test(buf)) done(true);
    });
    s.on('end', () => done(expect.test(buf)));
  });
}

function exited(child, ms) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    child.once('exit', () => { clearTimeout(t); resolve(true); });
  });
}

async function stopChild(child, sig, ms) {
  if (!child) return;
  if (child.exitCode === null && child.signalCode === null) child.kill(sig);
  if (!(await exited(child, ms))) {
    child.kill('SIGKILL');
    await exited(child, 5000);
  }
  children.delete(child);
}

/** A redis-server of this test. Without persistence: a restart loses
 * everything, which is how the test makes a gap. */
export class Redis {
  constructor(port) {
    this.port = port;
    this.dir = path.join(TMP, `redis-${port}`);
    fs.mkdirSync(this.dir, { recursive: true });
    this.logPath = path.join(TMP, `redis-${port}.log`);
    this.proc = null;
  }

  get url() { return `redis://${HOST}:${this.port}`; }

  async start() {
    const log = fs.openSync(this.logPath, 'a');
    this.proc = spawn('redis-server', [
      '--port', String(this.port), '--bind', HOST, '--save', '', '--appendonly', 'no',
      '--dir', this.dir, '--daemonize', 'no', '--protected-mode', 'no',
    ], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    children.add(this.proc);
    await waitFor(async () => {
      if (this.proc.exitCode !== null) throw new Error(`redis-server exited: ${this.log()}`);
      return portAnswers(this.port, 'PING\r\n', /\+PONG/);
    }, 10000, `redis-server on ${this.port}`);
    return this;
  }

  async stop() {
    await stopChild(this.proc, 'SIGTERM', 10000);
    this.proc = null;
  }

  log() {
    try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }
}

/** One chatd node on its own port; restartable on the same port. */
export class Chatd {
  constructor(name, port, conf) {
    this.name = name;
    this.port = port;
    this.conf = {
      listen: `${HOST}:${port}`,
      workers: 2,
      log_level: 'info',
      shutdown_timeout: '2s',
      ...conf,
    };
    this.confPath = path.join(TMP, `${name}.conf`);
    this.logPath = path.join(TMP, `${name}.log`);
    this.proc = null;
  }

  get origin() { return `http://${HOST}:${this.port}`; }

  async start() {
    fs.writeFileSync(this.confPath, Object.entries(this.conf).map(([k, v]) => `${k} = ${v}\n`).join(''));
    const from = fs.existsSync(this.logPath) ? fs.statSync(this.logPath).size : 0;
    const log = fs.openSync(this.logPath, 'a');
    const env = { ...process.env };
    delete env.PORT;
    delete env.REDIS_URL;
    this.proc = spawn(CHATD_BIN, ['-c', this.confPath], { stdio: ['ignore', log, log], env, cwd: TMP });
    fs.closeSync(log);
    children.add(this.proc);
    const proc = this.proc;
    await waitFor(async () => {
      if (proc.exitCode !== null) throw new Error(`${this.name} exited at start:\n${this.log()}`);
      return this.log().slice(from).includes('chatd listening at ws://') &&
        portAnswers(this.port, 'GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n', /^HTTP\/1\.1 200/);
    }, 15000, `${this.name} ready on ${this.port}`);
    return this;
  }

  /** SIGKILL: a crash, on purpose. */
  async kill() {
    await stopChild(this.proc, 'SIGKILL', 5000);
    this.proc = null;
  }

  /** SIGTERM and wait; returns the exit code (null if it had to be killed). */
  async stop() {
    if (!this.proc) return 0;
    const proc = this.proc;
    await stopChild(proc, 'SIGTERM', 15000);
    this.proc = null;
    return proc.exitCode;
  }

  log() {
    try { return fs.readFileSync(this.logPath, 'utf8'); } catch { return ''; }
  }
}

/** Stops everything still running, gently first. */
export async function stopAll() {
  const running = [...children];
  await Promise.all(running.map((c) => stopChild(c, 'SIGTERM', 10000)));
}

/** An HS256 JSON Web Token, as an application's login service would mint. */
export function mintToken(secret, claims) {
  const enc = (b) => Buffer.from(b).toString('base64url');
  const head = enc(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = enc(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}
