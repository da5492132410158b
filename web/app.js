// corecast web client: plain ES2020, no framework, no build step.
//
// Speaks protocol v1 (docs/PROTOCOL.md) over one WebSocket to the page's own origin.
// All user-supplied text reaches the DOM through textContent / text nodes only; nothing
// here ever assigns innerHTML.
//
// Map of this file:
//   config & helpers      constants, el() DOM builder, validation, formatting
//   state                 the connection and the joined rooms (the single source of truth)
//   connection            connect, welcome, disconnect, reconnect with capped backoff + jitter
//   protocol handlers     one function per server message type
//   rooms                 join / switch / leave, sidebar, unread counters
//   messages              rendering, pending → acked → confirmed, notices, scrolling
//   presence              paged presence query, join/leave events, the panel
//   ui wiring             name form, composer, drawers, toasts, keyboard
'use strict';

(() => {
  // ───────────────────────── config & helpers ─────────────────────────

  const STORE = { name: 'corecast.name', rooms: 'corecast.rooms', current: 'corecast.current' };
  const DEFAULT_ROOM = 'lobby';
  const BACKOFF = { baseMs: 500, capMs: 30000, stableMs: 10000 };
  const MAX_MESSAGES_PER_ROOM = 500;
  const PRESENCE_PAGE = 200;
  const PRESENCE_MAX = 1000;
  // The server refuses frames over --max-message-bytes (64 KiB by default) with close 1009;
  // stay well below it, leaving room for the JSON envelope and escapes.
  const MAX_TEXT_BYTES = 48 * 1024;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  const NARROW = window.matchMedia('(max-width: 720px)');
  const MEDIUM = window.matchMedia('(max-width: 1060px)');

  const $ = (id) => document.getElementById(id);
  const utf8 = new TextEncoder();
  const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

  /** Builds an element. Strings among `children` become text nodes, never markup. */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  /** Why `name` is not a valid user name (protocol: 1–64 bytes, no controls, no @ or :), or null. */
  function nameProblem(name) {
    if (!name) return 'Please enter a name.';
    if (utf8.encode(name).length > 64) return 'That name is too long (64 bytes at most).';
    if (CONTROL.test(name)) return 'Names cannot contain control characters.';
    if (name.includes('@') || name.includes(':')) return 'Names cannot contain “@” or “:”.';
    return null;
  }

  /** Why `room` is not a valid room name (1–128 bytes, no controls, not starting with @), or null. */
  function roomProblem(room) {
    if (!room) return 'Enter a room name.';
    if (utf8.encode(room).length > 128) return 'Room names are at most 128 bytes.';
    if (CONTROL.test(room)) return 'Room names cannot contain control characters.';
    if (room.startsWith('@')) return 'Room names starting with “@” are reserved.';
    return null;
  }

  function storageGet(key) {
    try { return localStorage.getItem(key); } catch { return null; }
  }
  function storageSet(key, value) {
    try { localStorage.setItem(key, value); } catch { /* private mode: just don't remember */ }
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
  const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });
  const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric' });

  function dayLabel(date) {
    const today = new Date();
    const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
    if (date.toDateString() === today.toDateString()) return 'Today';
    if (date.toDateString() === yesterday.toDateString()) return 'Yesterday';
    return dayFmt.format(date);
  }

  /** A stable hue for a user name, so each person keeps one avatar colour. */
  function hueOf(name) {
    let h = 2166136261;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
    return (h >>> 0) % 360;
  }

  function avatar(name, extraClass) {
    const initial = Array.from(name.trim())[0] || '?';
    const node = el('span', { class: extraClass ? `avatar ${extraClass}` : 'avatar', 'aria-hidden': 'true' }, initial.toUpperCase());
    node.style.setProperty('--hue', String(hueOf(name)));
    return node;
  }

  // ───────────────────────── state ─────────────────────────

  /**
   * A room this client has joined (or is joining).
   * @typedef {object} Room
   * @property {string} name
   * @property {boolean} system          server-managed (`@user:…`): no join/leave/presence
   * @property {'joining'|'joined'} status
   * @property {string|null} epoch       from `joined`; identifies the room's stream
   * @property {number|null} lastSeq     highest message seq seen in this epoch
   * @property {boolean} hadSession      joined before on an earlier connection
   * @property {boolean} resumeAsked     the current join carried `since`
   * @property {number} unread
   * @property {number} count            distinct users in the room
   * @property {Set<string>} users       known members (from presence pages and events)
   * @property {Array<Pending>} pending  own messages sent but not yet seen back
   * @property {Array<string|null>} presencePages  `after` of each presence query in flight
   * @property {HTMLOListElement} list   this room's message list
   * @property {HTMLLIElement} item      this room's sidebar entry
   * @property {number|null} scrollTop   saved scroll position while not shown
   */

  /**
   * An own message on its way: pending → sent (acked, seq known) → confirmed (seen back).
   * @typedef {object} Pending
   * @property {string} id
   * @property {Room} room
   * @property {string} text
   * @property {number|null} seq
   * @property {HTMLLIElement} li
   */

  const state = {
    /** The name the user chose (sent as ?name=). */
    name: '',
    /** The name the server calls us (from `welcome`). */
    me: '',
    /** @type {WebSocket|null} */
    ws: null,
    /** 'connecting' | 'online' | 'reconnecting' | 'offline' */
    conn: 'offline',
    /** Failed attempts in a row: drives the backoff. */
    attempt: 0,
    onlineSince: 0,
    everOnline: false,
    retryTimer: 0,
    countdownTimer: 0,
    retryAt: 0,
    /** @type {Map<string, Room>} in sidebar order */
    rooms: new Map(),
    /** @type {Room|null} */
    current: null,
    nextId: 1,
    /** Outstanding requests by `id`, to route `ack` / `error` / `presence` answers. */
    requests: new Map(),
  };

  // ───────────────────────── connection ─────────────────────────

  function connect() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    if (state.ws) return;
    if (!navigator.onLine) {
      setConn('offline');
      return;
    }
    setConn(state.everOnline ? 'reconnecting' : 'connecting');
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    url.search = `?name=${encodeURIComponent(state.name)}`;
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      toast(`Cannot connect: ${err.message}`);
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    ws.addEventListener('message', (event) => {
      if (ws !== state.ws || typeof event.data !== 'string') return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg && typeof msg === 'object' && typeof msg.type === 'string') dispatch(msg);
    });
    ws.addEventListener('close', () => {
      if (ws !== state.ws) return;
      state.ws = null;
      onDisconnected();
    });
  }

  /** Closes on purpose (name change): no reconnect until `connect()` is called again. */
  function disconnect() {
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, 'bye');
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    onConnectionLost();
    setConn('offline');
  }

  function onDisconnected() {
    onConnectionLost();
    scheduleReconnect();
  }

  /** Everything tied to the old connection ends: requests, joins, pending messages. */
  function onConnectionLost() {
    if (Date.now() - state.onlineSince >= BACKOFF.stableMs && state.onlineSince) state.attempt = 0;
    state.onlineSince = 0;
    state.requests.clear();
    for (const room of state.rooms.values()) {
      if (room.status === 'joined') room.hadSession = true;
      room.presencePages = [];
      if (!room.system) room.status = 'joining';
      for (const p of [...room.pending]) {
        if (p.seq === null) markFailed(p, 'Not sent: connection lost');
        else markSent(p); // sequenced; the message itself may still be recovered or missed
      }
      renderRoomItem(room);
    }
    updateComposer();
  }

  /** Exponential backoff with "equal jitter": wait in [d/2, d], d = min(cap, base·2^attempt). */
  function scheduleReconnect() {
    const ceiling = Math.min(BACKOFF.capMs, BACKOFF.baseMs * 2 ** state.attempt);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    state.attempt = Math.min(state.attempt + 1, 16);
    if (!navigator.onLine) {
      setConn('offline');
      return;
    }
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(connect, delay);
    setConn('waiting');
    state.countdownTimer = setInterval(() => setConn('waiting'), 1000);
  }

  function reconnectNow() {
    state.attempt = 0;
    connect();
  }

  function setConn(kind) {
    const box = $('conn');
    const retry = $('conn-retry');
    let label;
    let countdown = '';
    let stateName = kind;
    switch (kind) {
      case 'connecting': label = 'Connecting…'; break;
      case 'online': label = 'Online'; break;
      case 'reconnecting': label = 'Reconnecting…'; break;
      case 'waiting': {
        label = 'Reconnecting';
        countdown = ` in ${Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000))}s`;
        stateName = 'reconnecting';
        break;
      }
      default: label = navigator.onLine ? 'Offline' : 'Offline (no network)'; stateName = 'offline';
    }
    state.conn = stateName;
    box.dataset.state = stateName;
    $('chat').dataset.conn = stateName;
    // The live region announces state changes; the per-second countdown is aria-hidden.
    if ($('conn-text').textContent !== label) $('conn-text').textContent = label;
    $('conn-countdown').textContent = countdown;
    retry.hidden = !(kind === 'waiting' || (stateName === 'offline' && state.name && !state.ws));
    updateComposer();
  }

  function send(obj) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  /**
   * Sends a request with a fresh `id` and remembers what it was for, so that the `ack` or
   * `error` echoing the id as `ref` finds its way back.
   */
  function request(obj, meta) {
    const id = `c${state.nextId++}`;
    if (!send({ ...obj, id })) return null;
    if (meta) state.requests.set(id, meta);
    return id;
  }

  // ───────────────────────── protocol handlers ─────────────────────────

  const handlers = {
    welcome(m) {
      state.me = typeof m.user === 'string' ? m.user : state.name;
      state.onlineSince = Date.now();
      const first = !state.everOnline;
      state.everOnline = true;
      setConn('online');
      renderMe();
      for (const room of state.rooms.values()) {
        if (!room.system) sendJoin(room);
      }
      // A first visit starts in the lobby; someone who left every room stays roomless.
      if (first && state.rooms.size === 0 && storageGet(STORE.rooms) === null) joinRoom(DEFAULT_ROOM, { focus: !NARROW.matches });
      renderPresence();
    },

    joined(m) {
      const room = state.rooms.get(m.room);
      if (!room) return; // left meanwhile; the server has our leave queued after the join
      const seq = Number.isSafeInteger(m.seq) ? m.seq : null;
      const sameStream = room.epoch !== null && room.epoch === m.epoch;
      const recovered = m.recovered === true && sameStream;
      if (room.hadSession && !recovered) {
        addNotice(room, 'You may have missed messages while you were disconnected.', 'warn');
      }
      // When recovering, replayed messages (before or after this frame) continue from our
      // own lastSeq; otherwise the stream restarts at the room's current seq.
      if (!recovered) room.lastSeq = seq;
      room.epoch = typeof m.epoch === 'string' ? m.epoch : null;
      room.status = 'joined';
      room.resumeAsked = false;
      for (const [id, req] of state.requests) if (req.kind === 'join' && req.room === room.name) state.requests.delete(id);
      if (Number.isSafeInteger(m.members)) room.count = m.members;
      room.users.add(state.me);
      if (!room.hadSession) addNotice(room, 'You joined the room.');
      requestPresence(room);
      renderRoomItem(room);
      if (room === state.current) {
        renderPresence();
        updateComposer();
      }
    },

    message(m) {
      if (typeof m.room !== 'string' || typeof m.text !== 'string') return;
      let room = state.rooms.get(m.room);
      if (!room && m.room.startsWith('@')) room = addRoom(m.room, { system: true });
      if (!room) return;
      const seq = Number.isSafeInteger(m.seq) ? m.seq : null;
      if (seq !== null && room.lastSeq !== null) {
        if (seq <= room.lastSeq) return; // a replayed message we already have
        if (seq > room.lastSeq + 1) {
          const missed = seq - room.lastSeq - 1;
          addNotice(room, `${missed} message${missed === 1 ? '' : 's'} missed.`, 'warn');
        }
      }
      if (seq !== null) room.lastSeq = seq;
      const user = typeof m.user === 'string' ? m.user : '?';
      const own = user === state.me;
      if (own) {
        const p =
          (seq !== null && room.pending.find((x) => x.seq === seq)) ||
          room.pending.find((x) => x.seq === null && x.text === m.text);
        if (p) {
          confirm(p, m);
          return;
        }
      }
      appendMessage(room, { user, text: m.text, ts: m.ts, seq, own });
      if (!own) bumpUnread(room);
    },

    ack(m) {
      const req = state.requests.get(String(m.ref));
      if (!req || req.kind !== 'message') return;
      state.requests.delete(String(m.ref));
      const p = req.pending;
      if (!p.li.isConnected || !p.room.pending.includes(p)) return;
      p.seq = Number.isSafeInteger(m.seq) ? m.seq : null;
      markSent(p);
    },

    join(m) {
      const room = state.rooms.get(m.room);
      if (!room || typeof m.user !== 'string') return;
      if (!room.users.has(m.user)) {
        room.users.add(m.user);
        room.count += 1;
      }
      addNotice(room, `${m.user} joined`);
      renderRoomItem(room);
      if (room === state.current) renderPresence();
    },

    leave(m) {
      const room = state.rooms.get(m.room);
      if (!room || typeof m.user !== 'string') return;
      if (room.users.delete(m.user)) room.count = Math.max(room.users.size, room.count - 1);
      addNotice(room, `${m.user} left`);
      renderRoomItem(room);
      if (room === state.current) renderPresence();
    },

    presence(m) {
      const room = state.rooms.get(m.room);
      if (!room || !Array.isArray(m.users)) return;
      // Answers come in request order; a first page (no `after`) replaces the list.
      const after = room.presencePages.length ? room.presencePages.shift() : null;
      if (after === null) room.users = new Set([state.me]);
      for (const u of m.users) if (typeof u === 'string') room.users.add(u);
      if (Number.isSafeInteger(m.count)) room.count = m.count;
      if (typeof m.next === 'string' && room.users.size < PRESENCE_MAX) requestPresence(room, m.next);
      if (room === state.current) renderPresence();
    },

    left() {
      // The room was removed locally when the user clicked Leave.
    },

    error(m) {
      const ref = m.ref === undefined || m.ref === null ? null : String(m.ref);
      const req = ref === null ? null : state.requests.get(ref);
      if (ref !== null) state.requests.delete(ref);
      const text = typeof m.message === 'string' && m.message ? m.message : String(m.code || 'error');
      if (req && req.kind === 'message') {
        markFailed(req.pending, `Not sent: ${text}`);
      } else if (req && req.kind === 'join') {
        if (m.code === 'already_joined') return;
        const room = state.rooms.get(req.room);
        if (room) removeRoom(room);
        toast(`Could not join #${req.room}: ${text}`);
        return;
      }
      toast(text);
    },
  };

  function dispatch(msg) {
    const handler = Object.prototype.hasOwnProperty.call(handlers, msg.type) ? handlers[msg.type] : null;
    if (handler) handler(msg); // unknown types are ignored (the protocol only grows)
  }

  // ───────────────────────── rooms ─────────────────────────

  function addRoom(name, { system = false } = {}) {
    const list = el('ol', {
      class: 'messages',
      dataset: { room: name },
      role: 'log',
      'aria-live': 'polite',
      'aria-relevant': 'additions',
      'aria-label': `Messages in ${name}`,
      tabindex: '0',
      hidden: true,
    });
    list.addEventListener('scroll', () => {
      if (isNearBottom(list)) $('jump').hidden = true;
    });
    $('message-area').insertBefore(list, $('jump'));
    /** @type {Room} */
    const room = {
      name,
      system,
      status: system ? 'joined' : 'joining',
      epoch: null,
      lastSeq: null,
      hadSession: false,
      resumeAsked: false,
      unread: 0,
      count: 0,
      users: new Set(),
      pending: [],
      presencePages: [],
      list,
      item: el('li', { class: 'room-item', dataset: { room: name } }),
      scrollTop: null,
      lastDay: '',
    };
    state.rooms.set(name, room);
    $('room-list').append(room.item);
    renderRoomItem(room);
    saveRooms();
    return room;
  }

  function sendJoin(room) {
    room.status = 'joining';
    const msg = { type: 'join', room: room.name };
    if (room.epoch !== null && room.lastSeq !== null) {
      msg.since = { epoch: room.epoch, seq: room.lastSeq };
      room.resumeAsked = true;
    }
    request(msg, { kind: 'join', room: room.name });
    renderRoomItem(room);
  }

  /** Joins (or just switches to, when already joined) the room the user named. */
  function joinRoom(name, { focus = true } = {}) {
    let room = state.rooms.get(name);
    if (!room) {
      room = addRoom(name);
      if (state.conn === 'online') sendJoin(room);
    }
    switchTo(room, { focus });
    return room;
  }

  function switchTo(room, { focus = false } = {}) {
    const previous = state.current;
    if (previous && previous !== room) {
      previous.scrollTop = isNearBottom(previous.list) ? null : previous.list.scrollTop;
      previous.list.hidden = true;
    }
    state.current = room;
    storageSet(STORE.current, room ? room.name : '');
    $('jump').hidden = true;
    $('empty-room').hidden = !!room;
    $('room').classList.toggle('no-room', !room);
    for (const r of state.rooms.values()) renderRoomItem(r);
    if (room) {
      room.list.hidden = false;
      room.list.scrollTop = room.scrollTop === null ? room.list.scrollHeight : room.scrollTop;
      room.unread = 0;
      renderRoomItem(room);
      $('room-name').textContent = room.system ? 'notifications' : room.name;
      $('leave-room').hidden = room.system;
      $('members-toggle').hidden = room.system;
    } else {
      $('room-name').textContent = 'no room';
      $('leave-room').hidden = true;
      $('members-toggle').hidden = true;
    }
    updateTitle();
    renderPresence();
    updateComposer();
    closeDrawers();
    if (focus && room) $('composer-input').focus();
  }

  function leaveRoom(room) {
    if (room.system) return;
    const hadFocus = room.item.contains(document.activeElement);
    request({ type: 'leave', room: room.name }, null);
    removeRoom(room);
    if (hadFocus && document.activeElement === document.body) $('join-input').focus();
  }

  function removeRoom(room) {
    const names = [...state.rooms.keys()];
    const index = names.indexOf(room.name);
    state.rooms.delete(room.name);
    room.item.remove();
    room.list.remove();
    saveRooms();
    if (state.current === room) {
      const rest = [...state.rooms.values()];
      const next = rest[Math.min(index, rest.length - 1)] || null;
      state.current = null;
      switchTo(next);
      (next ? $('composer-input') : $('join-input')).focus();
    }
    renderEmptySidebar();
    updateTitle();
  }

  function saveRooms() {
    const names = [...state.rooms.values()].filter((r) => !r.system).map((r) => r.name);
    storageSet(STORE.rooms, JSON.stringify(names));
    renderEmptySidebar();
  }

  function renderEmptySidebar() {
    $('no-rooms').hidden = state.rooms.size > 0;
  }

  function renderRoomItem(room) {
    const current = room === state.current;
    const label = room.system ? 'notifications' : room.name;
    const badge = el('span', { class: 'badge', hidden: room.unread === 0 }, room.unread > 99 ? '99+' : String(room.unread));
    const link = el(
      'button',
      {
        type: 'button',
        class: 'room-link',
        'aria-current': current ? 'true' : null,
        title: label,
        onclick: () => switchTo(room, { focus: !NARROW.matches }),
      },
      el('span', { class: 'hash', 'aria-hidden': 'true' }, room.system ? '@' : '#'),
      el('span', { class: 'room-label' }, label),
      room.status === 'joining' && state.conn === 'online' ? el('span', { class: 'spinner', role: 'img', 'aria-label': 'joining' }) : null,
      badge,
      room.unread ? el('span', { class: 'visually-hidden' }, `, ${room.unread} unread`) : null,
    );
    const children = [link];
    if (!room.system) {
      children.push(
        el(
          'button',
          { type: 'button', class: 'room-leave', title: `Leave #${room.name}`, 'aria-label': `Leave ${room.name}`, onclick: () => leaveRoom(room) },
          el('span', { 'aria-hidden': 'true' }, '×'),
        ),
      );
    }
    room.item.classList.toggle('current', current);
    room.item.classList.toggle('unread', room.unread > 0);
    const hadFocus = room.item.contains(document.activeElement) ? document.activeElement.className : null;
    room.item.replaceChildren(...children);
    if (hadFocus) {
      const again = room.item.querySelector(`.${hadFocus.split(' ')[0]}`);
      if (again) again.focus();
    }
  }

  function bumpUnread(room) {
    if (room === state.current && !document.hidden) return;
    room.unread += 1;
    renderRoomItem(room);
    updateTitle();
  }

  function updateTitle() {
    let total = 0;
    for (const r of state.rooms.values()) total += r.unread;
    const where = state.current ? (state.current.system ? 'notifications' : `#${state.current.name}`) : '';
    document.title = `${total ? `(${total}) ` : ''}${where ? `${where} · ` : ''}corecast`;
  }

  /**
   * Shows the rooms that exist on the server (e.g. from a future `GET /stats`), each one
   * click away from joining. Nothing calls this yet: the server has no such endpoint.
   * @param {Array<{name: string, members?: number}>} rooms
   */
  function showServerRooms(rooms) {
    const list = $('server-room-list');
    list.replaceChildren(
      ...rooms.map((r) =>
        el(
          'li',
          { class: 'room-item' },
          el(
            'button',
            { type: 'button', class: 'room-link', onclick: () => joinRoom(r.name) },
            el('span', { class: 'hash', 'aria-hidden': 'true' }, '#'),
            el('span', { class: 'room-label' }, r.name),
            Number.isSafeInteger(r.members) ? el('span', { class: 'room-meta' }, String(r.members)) : null,
          ),
        ),
      ),
    );
    $('server-rooms').hidden = rooms.length === 0;
  }

  // ───────────────────────── messages ─────────────────────────

  function isNearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  }

  /** Appends `node` to the room's list, keeping the view pinned to the bottom if it was. */
  function appendToRoom(room, node, { forceScroll = false } = {}) {
    const list = room.list;
    const shown = room === state.current;
    const pinned = shown && isNearBottom(list);
    list.append(node);
    while (list.childElementCount > MAX_MESSAGES_PER_ROOM) list.firstElementChild.remove();
    if (!shown) return;
    if (pinned || forceScroll) {
      list.scrollTop = list.scrollHeight;
    } else if (node.classList.contains('msg')) {
      $('jump').hidden = false;
    }
  }

  function dayDivider(room, date) {
    const key = date.toDateString();
    if (room.lastDay === key) return;
    room.lastDay = key;
    appendToRoom(room, el('li', { class: 'day', role: 'separator' }, el('span', {}, dayLabel(date))));
  }

  function fillTime(li, ts) {
    const time = li.querySelector('time');
    if (!Number.isFinite(ts)) {
      time.textContent = '';
      return;
    }
    const date = new Date(ts);
    time.dateTime = date.toISOString();
    time.title = fullFmt.format(date);
    time.textContent = timeFmt.format(date);
  }

  /** Builds one message row. `own` rows have no avatar or author line. */
  function messageNode(room, { user, text, ts, seq, own }) {
    const prev = room.list.lastElementChild;
    const now = Number.isFinite(ts) ? ts : Date.now();
    const continued =
      prev && prev.classList.contains('msg') && prev.dataset.user === user && now - Number(prev.dataset.ts || 0) < GROUP_WINDOW_MS;
    const li = el('li', {
      class: `msg${own ? ' own' : ''}${continued ? ' continued' : ''}`,
      dataset: { user, ts: String(now) },
    });
    if (seq !== null && seq !== undefined) li.dataset.seq = String(seq);
    const meta = el(
      'div',
      { class: 'meta' },
      el('span', { class: 'author' }, own ? 'You' : user),
      el('time', {}),
      el('span', { class: 'status', 'aria-live': 'off' }),
    );
    const body = el('div', { class: 'body' }, meta, el('p', { class: 'text' }, text));
    li.append(own ? el('span', { class: 'avatar-gap', 'aria-hidden': 'true' }) : continued ? el('span', { class: 'avatar-gap' }) : avatar(user), body);
    fillTime(li, ts);
    return li;
  }

  function appendMessage(room, m) {
    if (Number.isFinite(m.ts)) dayDivider(room, new Date(m.ts));
    appendToRoom(room, messageNode(room, m), { forceScroll: m.own });
  }

  function addNotice(room, text, tone) {
    dayDivider(room, new Date());
    appendToRoom(room, el('li', { class: tone ? `notice ${tone}` : 'notice' }, el('span', {}, text)));
  }

  function sendMessage(room, text) {
    if (utf8.encode(text).length > MAX_TEXT_BYTES) {
      toast(`That message is too long (at most ${MAX_TEXT_BYTES / 1024} KiB).`);
      return false;
    }
    if (state.conn !== 'online') {
      toast('Not connected: the message was not sent.');
      return false;
    }
    dayDivider(room, new Date());
    const li = messageNode(room, { user: state.me, text, ts: NaN, seq: null, own: true });
    li.classList.add('pending');
    li.querySelector('.status').textContent = 'Sending…';
    /** @type {Pending} */
    const p = { id: '', room, text, seq: null, li };
    const id = request({ type: 'message', room: room.name, text }, { kind: 'message', pending: p });
    if (id === null) return false;
    p.id = id;
    li.dataset.id = id;
    room.pending.push(p);
    appendToRoom(room, li, { forceScroll: true });
    return true;
  }

  /** The server sequenced it (ack): no longer pending, though not yet seen back. */
  function markSent(p) {
    p.li.classList.remove('pending');
    if (p.seq !== null) p.li.dataset.seq = String(p.seq);
    p.li.querySelector('.status').textContent = '';
  }

  /** The message came back from the room: it is final. */
  function confirm(p, m) {
    p.room.pending.splice(p.room.pending.indexOf(p), 1);
    p.li.classList.remove('pending', 'failed');
    if (Number.isSafeInteger(m.seq)) p.li.dataset.seq = String(m.seq);
    if (Number.isFinite(m.ts)) p.li.dataset.ts = String(m.ts);
    fillTime(p.li, m.ts);
    p.li.querySelector('.status').replaceChildren();
  }

  function markFailed(p, reason) {
    const index = p.room.pending.indexOf(p);
    if (index >= 0) p.room.pending.splice(index, 1);
    p.li.classList.remove('pending');
    p.li.classList.add('failed');
    const retry = el('button', { type: 'button', class: 'link-button' }, 'Retry');
    const discard = el('button', { type: 'button', class: 'link-button' }, 'Discard');
    retry.addEventListener('click', () => {
      if (state.conn !== 'online') {
        toast('Still offline: try again once connected.');
        return;
      }
      p.li.remove();
      sendMessage(p.room, p.text);
    });
    discard.addEventListener('click', () => p.li.remove());
    p.li.querySelector('.status').replaceChildren(el('span', {}, reason), ' · ', retry, ' · ', discard);
  }

  // ───────────────────────── presence ─────────────────────────

  function requestPresence(room, after) {
    const msg = { type: 'presence', room: room.name, limit: PRESENCE_PAGE };
    if (after) msg.after = after;
    // `presence` answers carry no `ref`: remember which page each one is.
    if (send(msg)) room.presencePages.push(after || null);
  }

  function renderPresence() {
    const room = state.current;
    const list = $('presence-list');
    const more = $('presence-more');
    if (!room || room.system) {
      list.replaceChildren();
      $('presence-count').textContent = '0';
      $('member-count').textContent = '0';
      more.hidden = true;
      return;
    }
    const count = Math.max(room.count, room.users.size);
    $('presence-count').textContent = String(count);
    $('member-count').textContent = String(count);
    const users = [...room.users].sort((a, b) => (a === state.me ? -1 : b === state.me ? 1 : a.localeCompare(b)));
    list.replaceChildren(
      ...users.map((u) =>
        el(
          'li',
          { class: u === state.me ? 'member is-me' : 'member', dataset: { user: u } },
          avatar(u, 'small'),
          el('span', { class: 'member-name' }, u),
          u === state.me ? el('span', { class: 'you' }, 'you') : null,
        ),
      ),
    );
    const hidden = count - users.length;
    more.hidden = hidden <= 0;
    more.textContent = hidden > 0 ? `and ${hidden} more` : '';
  }

  // ───────────────────────── ui wiring ─────────────────────────

  function renderMe() {
    const name = state.me || state.name;
    $('me-name').textContent = name;
    const a = avatar(name, 'small');
    a.id = 'me-avatar';
    $('me-avatar').replaceWith(a);
  }

  function updateComposer() {
    const input = $('composer-input');
    const room = state.current;
    const online = state.conn === 'online';
    const canSend = online && room && !room.system;
    $('send').disabled = !canSend;
    const focusable = input.disabled;
    input.disabled = !room || room.system;
    if (!room) input.placeholder = 'Join a room to chat';
    else if (room.system) input.placeholder = 'Notifications are read-only';
    else if (!online) input.placeholder = state.conn === 'offline' ? 'Offline' : 'Reconnecting…';
    else input.placeholder = `Message #${room.name}`;
    // Give the composer focus when it becomes usable and nothing else has it.
    if (focusable && !input.disabled && document.activeElement === document.body && !NARROW.matches) input.focus();
  }

  function autosize() {
    const input = $('composer-input');
    input.style.height = 'auto';
    input.style.height = `${Math.min(input.scrollHeight, 180)}px`;
  }

  function toast(text) {
    const box = $('toasts');
    const node = el('div', { class: 'toast' }, el('span', {}, text));
    const close = el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss' }, '×');
    close.addEventListener('click', () => node.remove());
    node.append(close);
    box.append(node);
    while (box.childElementCount > 3) box.firstElementChild.remove();
    setTimeout(() => {
      node.classList.add('leaving');
      setTimeout(() => node.remove(), 300);
    }, 6000);
  }

  function closeDrawers() {
    const chat = $('chat');
    chat.classList.remove('rooms-open', 'presence-open');
    $('rooms-toggle').setAttribute('aria-expanded', 'false');
    $('members-toggle').setAttribute('aria-expanded', String(!MEDIUM.matches && !chat.classList.contains('presence-closed')));
    $('scrim').hidden = true;
  }

  function toggleDrawer(which) {
    const chat = $('chat');
    if (which === 'presence' && !MEDIUM.matches) {
      // Wide screens: the panel is part of the layout; the button collapses it.
      chat.classList.toggle('presence-closed');
      $('members-toggle').setAttribute('aria-expanded', String(!chat.classList.contains('presence-closed')));
      return;
    }
    const cls = which === 'rooms' ? 'rooms-open' : 'presence-open';
    const opening = !chat.classList.contains(cls);
    closeDrawers();
    if (!opening) return;
    chat.classList.add(cls);
    $(which === 'rooms' ? 'rooms-toggle' : 'members-toggle').setAttribute('aria-expanded', 'true');
    $('scrim').hidden = false;
    const target = which === 'rooms' ? $('sidebar').querySelector('[aria-current="true"], .room-link, #join-input') : $('presence');
    if (target) {
      if (target === $('presence')) target.setAttribute('tabindex', '-1');
      target.focus();
    }
  }

  function showWelcome() {
    $('chat').hidden = true;
    $('welcome').hidden = false;
    const input = $('name-input');
    input.value = state.name || storageGet(STORE.name) || '';
    input.focus();
    input.select();
  }

  function enterChat(name) {
    state.name = name;
    storageSet(STORE.name, name);
    $('welcome').hidden = true;
    $('chat').hidden = false;
    renderMe();
    connect();
    if (state.current) $('composer-input').focus();
    else $('join-input').focus();
  }

  function wire() {
    $('name-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const name = $('name-input').value.trim();
      const problem = nameProblem(name);
      const err = $('name-error');
      err.hidden = !problem;
      err.textContent = problem || '';
      $('name-input').setAttribute('aria-invalid', problem ? 'true' : 'false');
      if (problem) {
        $('name-input').focus();
        return;
      }
      if (name !== state.name || !state.ws) {
        disconnect();
        state.attempt = 0;
      }
      enterChat(name);
    });

    $('change-name').addEventListener('click', () => {
      disconnect();
      showWelcome();
    });

    $('join-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const input = $('join-input');
      const name = input.value.trim();
      const problem = roomProblem(name);
      if (problem) {
        toast(problem);
        input.focus();
        return;
      }
      input.value = '';
      joinRoom(name, { focus: true });
    });

    const composer = $('composer-input');
    $('composer').addEventListener('submit', (event) => {
      event.preventDefault();
      const room = state.current;
      const text = composer.value;
      if (!room || !text.trim()) return;
      if (sendMessage(room, text)) {
        composer.value = '';
        autosize();
      }
      composer.focus();
    });
    composer.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        const form = $('composer');
        if (form.requestSubmit) form.requestSubmit();
        else form.dispatchEvent(new Event('submit', { cancelable: true }));
      }
    });
    composer.addEventListener('input', autosize);

    $('leave-room').addEventListener('click', () => {
      if (state.current) leaveRoom(state.current);
    });
    $('jump').addEventListener('click', () => {
      const room = state.current;
      if (room) room.list.scrollTop = room.list.scrollHeight;
      $('jump').hidden = true;
    });
    $('conn-retry').addEventListener('click', reconnectNow);
    $('rooms-toggle').addEventListener('click', () => toggleDrawer('rooms'));
    $('members-toggle').addEventListener('click', () => toggleDrawer('presence'));
    $('scrim').addEventListener('click', closeDrawers);
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && ($('chat').classList.contains('rooms-open') || $('chat').classList.contains('presence-open'))) {
        closeDrawers();
      }
    });
    MEDIUM.addEventListener('change', closeDrawers);

    window.addEventListener('online', () => {
      if (!state.ws && state.name && !$('chat').hidden) reconnectNow();
    });
    window.addEventListener('offline', () => {
      if (!state.ws) {
        clearTimeout(state.retryTimer);
        clearInterval(state.countdownTimer);
        setConn('offline');
      }
    });
    document.addEventListener('visibilitychange', () => {
      if (document.hidden || !state.current) return;
      state.current.unread = 0;
      renderRoomItem(state.current);
      updateTitle();
    });
  }

  function restoreRooms() {
    let names = [];
    try {
      const parsed = JSON.parse(storageGet(STORE.rooms) || '[]');
      if (Array.isArray(parsed)) names = parsed.filter((n) => typeof n === 'string' && !roomProblem(n));
    } catch {
      names = [];
    }
    for (const name of names) if (!state.rooms.has(name)) addRoom(name);
    const current = state.rooms.get(storageGet(STORE.current) || '') || state.rooms.values().next().value || null;
    switchTo(current);
  }

  function start() {
    wire();
    restoreRooms();
    renderEmptySidebar();
    setConn('offline');
    const remembered = (storageGet(STORE.name) || '').trim();
    if (remembered && !nameProblem(remembered)) {
      enterChat(remembered);
    } else {
      showWelcome();
    }
  }

  // Exposed for the browser test and for future features (a rooms list from GET /stats).
  window.corecast = Object.freeze({
    showServerRooms,
    get state() {
      return { conn: state.conn, me: state.me, current: state.current ? state.current.name : null };
    },
  });

  start();
})();
