/* chatd's chat page: a reference client of the chatd.v1 protocol
 * (PROTOCOL.md). Plain JavaScript, no framework, no build step.
 *
 * Rules this file keeps:
 * - Nothing from the network or the user is ever parsed as HTML: every
 *   text goes into the page through textContent or createTextNode.
 * - A message is shown once: it is keyed by the room's epoch and its id.
 * - After the connection is lost, it comes back by itself (exponential
 *   backoff with jitter) and joins every room again with `since` = the last
 *   id it saw there and the epoch it had; when the server answers
 *   `recovered: false`, the room shows a marker where messages may be
 *   missing.
 */
'use strict';

(function () {
  const HISTORY = 50;              /* messages asked for on a first join */
  const TYPING_EVERY_MS = 2000;    /* send `typing` at most this often */
  const TYPING_SHOW_MS = 3000;     /* show "X is typing" this long */
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const PING_IDLE_MS = 25000;      /* quiet this long: ask for a pong */
  const PING_WAIT_MS = 10000;      /* no answer this long: the link is dead */
  const REFUSED_AFTER = 3;         /* failed upgrades while /readyz says 200 */

  const $ = (id) => document.getElementById(id);
  const ui = {
    picker: $('picker'), pickForm: $('pick-form'), pickHint: $('pick-hint'),
    nameRow: $('name-row'), name: $('pick-name'), tokenRow: $('token-row'),
    token: $('pick-token'), room: $('pick-room'), pickError: $('pick-error'),
    chat: $('chat'), tabs: $('tabs'), addRoom: $('add-room'), addRoomName: $('add-room-name'),
    status: $('status'), logs: $('logs'), members: $('members'),
    membersToggle: $('members-toggle'), memberCount: $('member-count'),
    membersRoom: $('members-room'), membersNote: $('members-note'), memberList: $('member-list'),
    typing: $('typing'), sendForm: $('send-form'), text: $('text'), me: $('me'),
  };

  /* What /config.json says; these defaults hold until it answers. */
  let cfg = { auth: 'name', default_room: 'lobby', max_username: 32, max_room: 64, max_message: 65536 };

  const S = {
    me: '',            /* our user name (with a token: its sub, for display) */
    token: '',         /* with auth: the token */
    rooms: new Map(),  /* name -> room, in tab order */
    current: null,     /* the room on screen */
    ws: null,
    open: false,       /* the socket is open */
    attempt: 0,        /* reconnects since the last good join */
    retryTimer: 0,
    refused: 0,        /* upgrades refused while the node said it was ready */
    nextRef: 1,
    pending: new Map(), /* ref -> {kind, room, text} */
    lastRx: 0,         /* when the last frame came */
    pingAt: 0,         /* when our unanswered ping went, or 0 */
    pingTimer: 0,
    stopped: false,    /* true once we gave up (back to the picker) */
  };

  /* ---- small helpers ---------------------------------------------------- */

  const utf8len = (s) => new TextEncoder().encode(s).length;
  /* Nothing below U+0020, no U+007F: what the server accepts in names. */
  const hasControl = (s) => /[\u0000-\u001f\u007f]/.test(s);

  function nameProblem(s, max, what) {
    if (!s) return what + ' is empty';
    if (utf8len(s) > max) return what + ' is too long (at most ' + max + ' bytes)';
    if (hasControl(s)) return what + ' contains a control character';
    return null;
  }

  /* Ids are "<ms>-<n>"; compare them as two numbers, never as strings. */
  function idParts(id) {
    const m = /^(\d+)-(\d+)$/.exec(String(id));
    return m ? [Number(m[1]), Number(m[2])] : [0, 0];
  }
  function idCmp(a, b) {
    const x = idParts(a), y = idParts(b);
    return x[0] - y[0] || x[1] - y[1];
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  /* The user name in a token (display only: the server checks the token). */
  function tokenSub(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
      const sub = JSON.parse(json).sub;
      return typeof sub === 'string' ? sub : '';
    } catch (e) {
      return '';
    }
  }

  function timeText(ts) {
    const d = new Date(ts);
    const now = new Date();
    const opts = { hour: '2-digit', minute: '2-digit' };
    if (d.toDateString() !== now.toDateString()) {
      opts.month = 'short';
      opts.day = 'numeric';
      if (d.getFullYear() !== now.getFullYear()) opts.year = 'numeric';
    }
    return d.toLocaleString([], opts);
  }

  function setStatus(text, conn) {
    ui.status.textContent = text;
    if (conn) document.body.dataset.conn = conn;
  }

  /* ---- rooms and their views ------------------------------------------- */

  function makeRoom(name) {
    const r = {
      name,
      epoch: null,        /* from the last `joined` */
      lastId: null,       /* the newest id seen in this epoch */
      seen: new Set(),    /* epoch + ' ' + id of every message shown */
      joined: false,      /* joined on the current socket */
      askedSince: false,  /* the join in flight carries `since` */
      members: new Set(),
      count: 0,
      listed: true,       /* false: the server sent a count only */
      typing: new Map(),  /* user -> until (ms) */
      lastTypingSent: 0,
      unread: 0,
      seg: null,          /* the last gap marker: messages sort after it */
    };
    r.log = el('ol', 'log');
    r.log.setAttribute('role', 'log');
    r.log.setAttribute('aria-label', 'Messages in ' + name);
    r.log.dataset.room = name;
    r.log.hidden = true;
    ui.logs.appendChild(r.log);

    r.tab = el('div', 'tab');
    r.tab.dataset.room = name;
    r.tab.setAttribute('role', 'tab');
    const b = el('button', 'tab-name');
    b.type = 'button';
    b.appendChild(document.createTextNode(name));
    r.badge = el('span', 'tab-unread');
    b.appendChild(r.badge);
    b.addEventListener('click', () => show(name));
    const x = el('button', 'tab-close', '\u00d7');
    x.type = 'button';
    x.title = 'Leave ' + name;
    x.setAttribute('aria-label', 'Leave ' + name);
    x.addEventListener('click', () => leave(name));
    r.tab.append(b, x);
    ui.tabs.appendChild(r.tab);
    return r;
  }

  function show(name) {
    const r = S.rooms.get(name);
    if (!r) return;
    S.current = name;
    for (const o of S.rooms.values()) {
      o.log.hidden = o !== r;
      o.tab.setAttribute('aria-selected', String(o === r));
    }
    r.unread = 0;
    r.badge.textContent = '';
    r.log.scrollTop = r.log.scrollHeight;
    r.tab.scrollIntoView({ block: 'nearest', inline: 'nearest' });
    renderMembers();
    renderTyping();
    updateUrl();
    document.title = name + ' \u2013 chatd';
  }

  function updateUrl() {
    const q = new URLSearchParams();
    if (S.current) q.set('room', S.current);
    if (cfg.auth !== 'token' && S.me) q.set('name', S.me);
    history.replaceState(null, '', '/?' + q.toString());
  }

  function nearBottom(log) {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 60;
  }

  function addNote(r, text, cls) {
    const stick = nearBottom(r.log);
    const li = el('li', 'note' + (cls ? ' ' + cls : ''), text);
    r.log.appendChild(li);
    if (stick) r.log.scrollTop = r.log.scrollHeight;
    return li;
  }

  function addMessage(r, m) {
    if (typeof m.id !== 'string') return;
    const key = r.epoch + ' ' + m.id;
    if (r.seen.has(key)) return;
    r.seen.add(key);
    if (r.lastId === null || idCmp(m.id, r.lastId) > 0) r.lastId = m.id;

    const li = el('li', 'msg');
    li.dataset.id = m.id;
    const user = String(m.user);
    if (user === S.me) li.classList.add('mine');
    const meta = el('div', 'meta');
    meta.appendChild(el('span', 'user', user));
    const t = el('time', 'time', timeText(m.ts));
    if (typeof m.ts === 'number') {
      t.dateTime = new Date(m.ts).toISOString();
      t.title = new Date(m.ts).toLocaleString();
    }
    meta.appendChild(t);
    li.appendChild(meta);
    li.appendChild(el('div', 'text', String(m.text)));

    /* In order by id, after the last gap marker: messages come in order,
     * so this looks back a step or two at most. */
    const stick = nearBottom(r.log);
    let before = null;
    for (let e = r.log.lastElementChild; e && e !== r.seg; e = e.previousElementSibling) {
      if (e.classList.contains('msg')) {
        if (idCmp(e.dataset.id, m.id) < 0) break;
        before = e;
      }
    }
    r.log.insertBefore(li, before);
    if (stick || user === S.me) r.log.scrollTop = r.log.scrollHeight;

    if (r.typing.delete(user) && r.name === S.current) renderTyping();
    if (r.name !== S.current) {
      r.unread++;
      r.badge.textContent = String(r.unread);
    }
  }

  function renderMembers() {
    const r = S.rooms.get(S.current);
    ui.memberList.textContent = '';
    if (!r) return;
    ui.membersRoom.textContent = r.name;
    const names = [...r.members].sort((a, b) => a.localeCompare(b));
    const n = r.listed ? names.length : r.count;
    ui.memberCount.textContent = String(n);
    ui.membersNote.textContent = r.listed ? '' : n + ' people (too many to list)';
    if (!r.listed) return;
    for (const u of names) {
      const li = el('li', u === S.me ? 'me' : '', u);
      ui.memberList.appendChild(li);
    }
  }

  function renderTyping() {
    const r = S.rooms.get(S.current);
    const now = Date.now();
    const who = [];
    if (r) {
      for (const [u, until] of r.typing) {
        if (until > now) who.push(u);
        else r.typing.delete(u);
      }
    }
    who.sort();
    let text = '';
    if (who.length === 1) text = who[0] + ' is typing\u2026';
    else if (who.length === 2) text = who[0] + ' and ' + who[1] + ' are typing\u2026';
    else if (who.length > 2) text = who.length + ' people are typing\u2026';
    ui.typing.textContent = text;
  }
  setInterval(renderTyping, 500);

  /* ---- the connection --------------------------------------------------- */

  function send(obj) {
    if (!S.ws || !S.open) return false;
    S.ws.send(JSON.stringify(obj));
    return true;
  }

  function join(r) {
    r.joined = false;
    const req = { op: 'join', room: r.name, ref: ref({ kind: 'join', room: r.name }) };
    if (r.epoch !== null && r.lastId !== null) {
      req.since = r.lastId;
      req.epoch = r.epoch;
      r.askedSince = true;
    } else {
      req.history = HISTORY;
      r.askedSince = false;
    }
    send(req);
  }

  function ref(what) {
    const n = S.nextRef++;
    S.pending.set(n, what);
    return n;
  }

  function wsUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const q = cfg.auth === 'token'
      ? 'token=' + encodeURIComponent(S.token)
      : 'username=' + encodeURIComponent(S.me);
    return scheme + '//' + location.host + '/?' + q;
  }

  function connect() {
    clearTimeout(S.retryTimer);
    if (S.stopped) return;
    if (S.ws) { /* one socket at a time: a new attempt replaces a pending one */
      const old = S.ws;
      S.ws = null;
      old.close();
    }
    setStatus(S.attempt ? 'Reconnecting\u2026' : 'Connecting\u2026', 'connecting');
    let ws;
    try {
      ws = new WebSocket(wsUrl(), 'chatd.v1');
    } catch (e) {
      giveUp('Cannot connect: ' + e.message);
      return;
    }
    S.ws = ws;
    let opened = false;
    /* Every handler first checks that ws is still the page's socket: one
     * replaced by disconnect() says nothing more. */
    ws.onopen = () => {
      if (ws !== S.ws) return;
      if (ws.protocol !== 'chatd.v1') {
        ws.close();
        giveUp('This server does not speak chatd.v1.');
        return;
      }
      opened = true;
      S.open = true;
      S.refused = 0;
      S.lastRx = Date.now();
      S.pingAt = 0;
      setStatus('', 'open');
      for (const r of S.rooms.values()) join(r);
      armPing();
    };
    ws.onmessage = (e) => {
      if (ws !== S.ws) return;
      S.lastRx = Date.now();
      let m;
      try {
        m = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (m && typeof m === 'object') handle(m);
    };
    ws.onclose = () => {
      if (ws === S.ws) lost(opened);
    };
  }

  /* The page's socket is gone (closed, or found dead): forget it and try
   * again, or find out why it was never let in. */
  function lost(opened) {
    S.ws = null;
    S.open = false;
    clearTimeout(S.pingTimer);
    for (const r of S.rooms.values()) {
      r.joined = false;
      r.typing.clear();
    }
    renderTyping();
    lostSends();
    if (S.stopped) return;
    if (!opened) checkRefused();
    else retry();
  }

  /* A socket that closed before it opened: the node is away, not ready,
   * or refused us (a bad token, a full node). The page cannot see the HTTP
   * status of a failed upgrade, so it asks /readyz: a node that says it is
   * ready and still refuses, several times running, is refusing us. */
  function checkRefused() {
    fetch('/readyz', { cache: 'no-store' })
      .then((res) => {
        if (res.ok) S.refused++;
        else S.refused = 0;
      }, () => { S.refused = 0; })
      .then(() => {
        if (S.stopped) return;
        if (S.refused >= REFUSED_AFTER) {
          giveUp(cfg.auth === 'token'
            ? 'The server did not accept the token (it may have expired).'
            : 'The server refused the connection (it may be full, or the name not allowed).');
        } else {
          retry();
        }
      });
  }

  /* Exponential backoff with jitter: a node that comes back is not hit by
   * every page in the same millisecond. */
  function retry() {
    const exp = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.min(S.attempt, 10));
    const delay = Math.round(exp / 2 + Math.random() * exp / 2);
    S.attempt++;
    setStatus('Connection lost. Reconnecting in ' + Math.ceil(delay / 1000) + ' s\u2026', 'offline');
    clearTimeout(S.retryTimer);
    S.retryTimer = setTimeout(connect, delay);
  }

  /* Browsers answer the server's pings without telling the page, so a link
   * that went silent (a phone in a tunnel, a laptop that slept) is found
   * with the protocol's own ping: after a quiet while, and at once when the
   * page comes back to the foreground or the network comes back. */
  function ping() {
    if (!S.open || S.pingAt) return;
    S.pingAt = Date.now();
    send({ op: 'ping' });
  }

  function armPing() {
    clearTimeout(S.pingTimer);
    S.pingTimer = setTimeout(() => {
      if (!S.open) return;
      const now = Date.now();
      if (S.pingAt && S.lastRx >= S.pingAt) S.pingAt = 0;
      if (S.pingAt && now - S.pingAt >= PING_WAIT_MS) { /* no answer: dead */
        const ws = S.ws;
        lost(true);
        ws.close();
        return;
      }
      if (now - S.lastRx >= PING_IDLE_MS) ping();
      armPing();
    }, 1000);
  }

  function wake() {
    if (S.open && Date.now() - S.lastRx > 5000) ping();
    else if (!S.ws && !S.stopped && S.rooms.size) { /* waiting to retry: now */
      S.attempt = 0;
      connect();
    }
  }
  window.addEventListener('online', wake);
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') wake();
  });

  function lostSends() {
    for (const [n, p] of S.pending) {
      if (p.kind === 'send') {
        const r = S.rooms.get(p.room);
        if (r) addNote(r, 'The connection was lost before the server confirmed a message; '
          + 'if it was stored it appears above once the room is back.', 'error');
      }
      S.pending.delete(n);
    }
  }

  /* Closes the socket now; its close event is then ignored. */
  function disconnect() {
    const ws = S.ws;
    S.ws = null;
    S.open = false;
    clearTimeout(S.pingTimer);
    clearTimeout(S.retryTimer);
    for (const r of S.rooms.values()) r.joined = false;
    if (ws) ws.close();
  }

  function giveUp(why) {
    S.stopped = true;
    disconnect();
    setStatus(why, 'stopped');
    openPicker(why);
  }

  /* ---- frames from the server ------------------------------------------ */

  function handle(m) {
    const r = typeof m.room === 'string' ? S.rooms.get(m.room) : undefined;
    switch (m.op) {
      case 'joined': {
        if (!r) return;
        for (const [n, p] of S.pending) if (p.kind === 'join' && p.room === r.name) S.pending.delete(n);
        const epochChanged = r.epoch !== null && m.epoch !== r.epoch;
        if (r.askedSince && m.recovered === false) {
          const gap = el('li', 'gap',
            'Messages may be missing here: the server could not replay everything since you were last connected.');
          gap.setAttribute('role', 'note');
          const stick = nearBottom(r.log);
          r.log.appendChild(gap);
          if (stick) r.log.scrollTop = r.log.scrollHeight;
          r.seg = gap;
        }
        r.epoch = typeof m.epoch === 'string' ? m.epoch : String(m.epoch);
        if (epochChanged) r.lastId = null;
        r.askedSince = false;
        r.joined = true;
        S.attempt = 0;
        r.members = new Set(Array.isArray(m.members) ? m.members.map(String) : []);
        r.listed = Array.isArray(m.members);
        r.count = typeof m.count === 'number' ? m.count : r.members.size;
        if (r.name === S.current) renderMembers();
        break;
      }
      case 'msg':
        if (r) addMessage(r, m);
        break;
      case 'history':
        if (r && Array.isArray(m.messages)) for (const x of m.messages) addMessage(r, x);
        break;
      case 'ack':
        S.pending.delete(m.ref);
        break;
      case 'presence':
        if (!r) return;
        if (typeof m.joined === 'string') {
          if (r.listed) r.members.add(m.joined);
          else r.count++;
        }
        if (typeof m.left === 'string') {
          if (r.listed) r.members.delete(m.left);
          else r.count = Math.max(0, r.count - 1);
          r.typing.delete(m.left);
        }
        if (r.name === S.current) {
          renderMembers();
          renderTyping();
        }
        break;
      case 'typing':
        if (!r || typeof m.user !== 'string' || m.user === S.me) return;
        r.typing.set(m.user, Date.now() + TYPING_SHOW_MS);
        if (r.name === S.current) renderTyping();
        break;
      case 'left':
        break;
      case 'error':
        onError(m);
        break;
      default:
        break; /* pong, and ops of later versions */
    }
  }

  function onError(m) {
    const p = S.pending.get(m.ref);
    S.pending.delete(m.ref);
    const reason = String(m.reason || m.code || 'error');
    if (p && p.kind === 'join') {
      const r = S.rooms.get(p.room);
      if (!r) return;
      if (m.code === 'already_member') { /* joined after all */
        r.joined = true;
        return;
      }
      if (m.code === 'unavailable') { /* try again in a moment */
        addNote(r, 'Could not join yet: ' + reason + '. Trying again\u2026', 'error');
        setTimeout(() => { if (S.open && S.rooms.has(r.name)) join(r); }, 2000);
        return;
      }
      removeRoom(p.room);
      const target = S.rooms.get(S.current);
      if (target) addNote(target, 'Could not join ' + p.room + ': ' + reason, 'error');
      else openPicker('Could not join ' + p.room + ': ' + reason);
      return;
    }
    const r = S.rooms.get(p ? p.room : S.current);
    if (!r) return;
    if (p && p.kind === 'send') {
      addNote(r, 'Not sent: ' + reason, 'error');
      if (!ui.text.value) ui.text.value = p.text;
    } else {
      addNote(r, reason, 'error');
    }
  }

  /* ---- what the user does ---------------------------------------------- */

  function addRoom(name) {
    if (S.rooms.has(name)) {
      show(name);
      return;
    }
    const r = makeRoom(name);
    S.rooms.set(name, r);
    show(name);
    if (S.open) join(r);
  }

  function removeRoom(name) {
    const r = S.rooms.get(name);
    if (!r) return;
    r.log.remove();
    r.tab.remove();
    S.rooms.delete(name);
    if (S.current === name) {
      S.current = null;
      const next = S.rooms.keys().next();
      if (!next.done) show(next.value);
      else {
        renderMembers();
        renderTyping();
      }
    }
  }

  function leave(name) {
    if (S.open) send({ op: 'leave', room: name });
    removeRoom(name);
    if (S.rooms.size === 0) openPicker('');
  }

  ui.addRoom.addEventListener('submit', (e) => {
    e.preventDefault();
    const name = ui.addRoomName.value.trim();
    const why = nameProblem(name, cfg.max_room, 'Room name');
    if (why) {
      ui.addRoomName.setCustomValidity(why);
      ui.addRoomName.reportValidity();
      return;
    }
    ui.addRoomName.setCustomValidity('');
    ui.addRoomName.value = '';
    addRoom(name);
    ui.text.focus();
  });
  ui.addRoomName.addEventListener('input', () => ui.addRoomName.setCustomValidity(''));

  ui.sendForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const r = S.rooms.get(S.current);
    const text = ui.text.value;
    if (!r || !text.trim()) return;
    if (utf8len(text) > cfg.max_message) {
      addNote(r, 'Too long to send: at most ' + cfg.max_message + ' bytes.', 'error');
      return;
    }
    if (!S.open || !r.joined) {
      addNote(r, 'Not connected yet: your message stays in the box.', 'error');
      return;
    }
    send({ op: 'send', room: r.name, text, ref: ref({ kind: 'send', room: r.name, text }) });
    ui.text.value = '';
    r.lastTypingSent = 0;
  });

  ui.text.addEventListener('input', () => {
    const r = S.rooms.get(S.current);
    if (!r || !r.joined || !ui.text.value) return;
    const now = Date.now();
    if (now - r.lastTypingSent < TYPING_EVERY_MS) return;
    r.lastTypingSent = now;
    send({ op: 'typing', room: r.name });
  });

  ui.membersToggle.addEventListener('click', () => {
    const open = !ui.members.classList.contains('open');
    ui.members.classList.toggle('open', open);
    ui.membersToggle.setAttribute('aria-expanded', String(open));
  });

  ui.status.addEventListener('click', () => {
    if (!S.open && !S.stopped && S.ws === null) { /* "reconnect now" */
      S.attempt = 0;
      connect();
    }
  });

  /* ---- start ------------------------------------------------------------ */

  function openPicker(error) {
    ui.chat.hidden = true;
    ui.picker.hidden = false;
    ui.pickError.textContent = error || '';
    const token = cfg.auth === 'token';
    ui.nameRow.hidden = token;
    ui.name.required = !token;
    ui.tokenRow.hidden = !token;
    ui.token.required = token;
    ui.pickHint.textContent = token
      ? 'This server asks for a token: paste the one you were given, and pick a room.'
      : 'Pick a name and a room.';
    if (!ui.room.value) ui.room.value = S.current || cfg.default_room;
    if (!token && !ui.name.value) ui.name.value = S.me || localStorage.getItem('chatd.name') || '';
    if (token && !ui.token.value) ui.token.value = S.token;
    (token ? ui.token : ui.name.value ? ui.room : ui.name).focus();
  }

  function start(who, room) {
    if (cfg.auth === 'token') {
      S.token = who;
      S.me = tokenSub(who);
      try { sessionStorage.setItem('chatd.token', who); } catch (e) { /* private mode */ }
    } else {
      S.me = who;
      try { localStorage.setItem('chatd.name', who); } catch (e) { /* private mode */ }
    }
    ui.me.textContent = S.me || '(the name in your token)';
    ui.picker.hidden = true;
    ui.chat.hidden = false;
    S.stopped = false;
    S.attempt = 0;
    S.refused = 0;
    addRoom(room);
    if (!S.ws) connect();
    ui.text.focus();
  }

  ui.pickForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const token = cfg.auth === 'token';
    const who = token ? ui.token.value.trim() : ui.name.value.trim();
    const room = ui.room.value.trim();
    const why = token
      ? (who ? null : 'Token is empty')
      : nameProblem(who, cfg.max_username, 'Name');
    const rwhy = nameProblem(room, cfg.max_room, 'Room name');
    if (why || rwhy) {
      ui.pickError.textContent = why || rwhy;
      return;
    }
    ui.pickError.textContent = '';
    if (token ? S.token !== who : S.me !== who) disconnect(); /* another user */
    start(who, room);
  });

  function main() {
    const q = new URLSearchParams(location.search);
    const frag = new URLSearchParams(location.hash.slice(1));
    let token = frag.get('token') || '';
    if (token) { /* keep it out of the address bar, bookmarks and shares */
      history.replaceState(null, '', location.pathname + location.search);
    } else {
      try { token = sessionStorage.getItem('chatd.token') || ''; } catch (e) { /* none */ }
    }
    const room = (q.get('room') || '').trim();
    const name = (q.get('name') || q.get('username') || '').trim();
    if (room) ui.room.value = room;
    if (name) ui.name.value = name;
    if (token) ui.token.value = token;

    fetch('/config.json', { cache: 'no-store' })
      .then((res) => (res.ok ? res.json() : null))
      .catch(() => null)
      .then((c) => {
        if (c && typeof c === 'object') cfg = Object.assign(cfg, c);
        const who = cfg.auth === 'token' ? token : name;
        const ok = who && room && !nameProblem(room, cfg.max_room, 'Room') &&
          (cfg.auth === 'token' || !nameProblem(name, cfg.max_username, 'Name'));
        if (ok) start(who, room);
        else openPicker('');
      });
  }

  main();
})();
