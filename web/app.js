// corecast web client: plain ES2020, no framework, no build step.
//
// Speaks protocol v1 (docs/PROTOCOL.md) over one WebSocket to the page's own origin,
// through the corecast-client library (clients/js; its build is committed as
// corecast-client.js): reconnect, recovery with `since`, acks and presence paging live
// there, not here.
// All user-supplied text reaches the DOM through textContent / text nodes only; nothing
// here ever assigns innerHTML.
//
// Map of this file:
//   config & helpers      constants, el() DOM builder, validation, formatting
//   state                 the connection and the joined rooms (the single source of truth)
//   connection            the library's client: connect, welcome, disconnect, reconnect state
//   room events           one function per room event of the library
//   rooms                 join / switch / leave, sidebar, unread counters
//   messages              rendering, pending → acked → confirmed, notices, scrolling
//   presence              paged presence query, join/leave events, the panel
//   ui wiring             name form, composer, drawers, toasts, keyboard
import { Corecast } from '/corecast-client.js';

(() => {
  // ───────────────────────── config & helpers ─────────────────────────

  const STORE = { name: 'corecast.name', rooms: 'corecast.rooms', current: 'corecast.current' };
  const DEFAULT_ROOM = 'lobby';
  const BACKOFF = { baseMs: 500, capMs: 30000, stableMs: 10000, minMs: 250 };
  const MAX_MESSAGES_PER_ROOM = 500;
  const PRESENCE_PAGE = 200;
  const PRESENCE_MAX = 1000;
  // The server refuses frames over --max-message-bytes (64 KiB by default) with close 1009;
  // stay well below it, leaving room for the JSON envelope and escapes.
  const MAX_TEXT_BYTES = 48 * 1024;
  const GROUP_WINDOW_MS = 5 * 60 * 1000;
  // Typing indicators are volatile messages (never stored): sent at most every 3 s while
  // typing, shown for 5 s after the last one.
  const TYPING_EVERY_MS = 3000;
  const TYPING_SHOWN_MS = 5000;
  // A data-only message shows its JSON compactly, cut at this many characters.
  const DATA_SHOWN_CHARS = 600;
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
   * @property {any} remote              the library's room (null for system rooms)
   * @property {Array<() => void>} offs  unsubscribes the library's room events
   * @property {object|null} presenceLoad  the presence load in flight (a newer one wins)
   * @property {number} unread
   * @property {number} count            distinct users in the room
   * @property {Set<string>} users       known members (from presence pages and events)
   * @property {Array<Pending>} pending  own messages sent but not yet seen back
   * @property {HTMLOListElement} list   this room's message list
   * @property {HTMLLIElement} item      this room's sidebar entry
   * @property {number|null} scrollTop   saved scroll position while not shown
   * @property {Map<string, number>} typing  users typing now, with the timer that forgets them
   * @property {number} typingSentAt     when we last told the room we are typing (ms)
   */

  /**
   * An own message on its way: pending → sent (acked, seq known) → confirmed (seen back).
   * @typedef {object} Pending
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
    /** @type {Corecast|null} the library's client for the current name */
    client: null,
    /** 'connecting' | 'online' | 'reconnecting' | 'offline' */
    conn: 'offline',
    everOnline: false,
    countdownTimer: 0,
    retryAt: 0,
    /** @type {Map<string, Room>} in sidebar order */
    rooms: new Map(),
    /** @type {Room|null} */
    current: null,
  };

  // ───────────────────────── connection ─────────────────────────

  function connect() {
    clearInterval(state.countdownTimer);
    if (state.client) return;
    const url = new URL('/ws', location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const client = new Corecast(url.href, { name: state.name, backoff: BACKOFF });
    state.client = client;
    client.on('connecting', () => {
      clearInterval(state.countdownTimer);
      setConn(state.everOnline ? 'reconnecting' : 'connecting');
    });
    client.on('connected', (welcome) => onWelcome(welcome));
    client.on('disconnected', ({ code, reason, willReconnect }) => {
      onConnectionLost();
      if (!willReconnect && state.client === client) {
        state.client = null;
        setConn('offline');
        if (code !== 1000) toast(`Disconnected (${code}${reason ? `: ${reason}` : ''}).`);
      }
    });
    client.on('reconnecting', ({ delay }) => {
      state.retryAt = Date.now() + delay;
      setConn('waiting');
      clearInterval(state.countdownTimer);
      state.countdownTimer = setInterval(() => setConn('waiting'), 1000);
    });
    client.on('push', (m) => onSystemMessage(m));
    client.on('broadcast', (m) => onSystemMessage(m));
    client.on('error', (err) => toast(err.message));
    for (const room of state.rooms.values()) if (!room.system) bindRoom(room);
    client.connect().catch(() => {}); // a final close is reported by 'disconnected'
  }

  /** Closes on purpose (name change): no reconnect until `connect()` is called again. */
  function disconnect() {
    const client = state.client;
    state.client = null;
    clearInterval(state.countdownTimer);
    for (const room of state.rooms.values()) unbindRoom(room);
    if (client) client.close(1000, 'bye');
    onConnectionLost();
    setConn('offline');
  }

  /** Everything tied to the old connection ends: joins and presence loads (the library fails unacked sends). */
  function onConnectionLost() {
    for (const room of state.rooms.values()) {
      room.presenceLoad = null;
      if (!room.system) room.status = 'joining';
      renderRoomItem(room);
    }
    updateComposer();
  }

  function reconnectNow() {
    if (state.client) state.client.retryNow();
    else connect();
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
    retry.hidden = !(kind === 'waiting' || (stateName === 'offline' && state.name && !state.client));
    updateComposer();
  }

  // ───────────────────────── room events ─────────────────────────

  function onWelcome(welcome) {
    state.me = welcome.user || state.name;
    clearInterval(state.countdownTimer);
    const first = !state.everOnline;
    state.everOnline = true;
    setConn('online');
    renderMe();
    // A first visit starts in the lobby; someone who left every room stays roomless.
    if (first && state.rooms.size === 0 && storageGet(STORE.rooms) === null) joinRoom(DEFAULT_ROOM, { focus: !NARROW.matches });
    renderPresence();
  }

  /** Subscribes a sidebar room to the library's room and joins it (rejoined by the library after reconnects). */
  function bindRoom(room) {
    if (!state.client || room.system) return;
    unbindRoom(room);
    const remote = state.client.room(room.name);
    room.remote = remote;
    room.status = 'joining';
    room.offs = [
      remote.on('joined', (info) => onJoined(room, info)),
      remote.on('message', (m) => onMessage(room, m)),
      remote.on('volatile', (m) => onVolatile(room, m)),
      remote.on('join', ({ user }) => onPresenceJoin(room, user)),
      remote.on('leave', ({ user }) => onPresenceLeave(room, user)),
      remote.on('resync', () => addNotice(room, 'You may have missed messages while you were disconnected.', 'warn')),
      remote.on('error', (err) => joinFailed(room, err)),
    ];
    remote.join().catch((err) => {
      if (['closed', 'left', 'timeout', 'disconnected'].includes(err.code)) return;
      joinFailed(room, err);
    });
    renderRoomItem(room);
  }

  function unbindRoom(room) {
    for (const off of room.offs) off();
    room.offs = [];
    room.remote = null;
  }

  function joinFailed(room, err) {
    if (state.rooms.get(room.name) !== room) return;
    unbindRoom(room);
    removeRoom(room);
    toast(`Could not join #${room.name}: ${err.message}`);
  }

  function onJoined(room, info) {
    room.status = 'joined';
    room.count = info.members;
    room.users.add(state.me);
    if (!info.rejoin) addNotice(room, 'You joined the room.');
    requestPresence(room);
    renderRoomItem(room);
    if (room === state.current) {
      renderPresence();
      updateComposer();
    }
  }

  /** A personal push (`@user:…`) or broadcast (`@all`): shown in a read-only room. */
  function onSystemMessage(m) {
    const room = state.rooms.get(m.room) || addRoom(m.room, { system: true });
    onMessage(room, m);
  }

  function onMessage(room, m) {
    const seq = Number.isSafeInteger(m.seq) ? m.seq : null;
    const user = m.user || '?';
    const own = user === state.me;
    if (typeof m.text !== 'string') {
      // A data-only message (dashboards, bots, the server API): its event and compact JSON.
      if (m.data === undefined) return;
      appendMessage(room, { user, text: '', ts: m.ts, seq, own, event: m.event, data: m.data });
      if (!own) bumpUnread(room);
      return;
    }
    if (own) {
      const p =
        (seq !== null && room.pending.find((x) => x.seq === seq)) ||
        room.pending.find((x) => x.seq === null && x.text === m.text);
      if (p) {
        confirm(p, m);
        return;
      }
    }
    appendMessage(room, { user, text: m.text, ts: m.ts, seq, own, event: m.event, data: m.data });
    if (!own) bumpUnread(room);
    if (room.typing && room.typing.has(user)) {
      clearTimeout(room.typing.get(user));
      stopTyping(room, user); // their message arrived: they are done typing it
    }
  }

  /** A volatile message: only typing indicators are shown; they expire on their own. */
  function onVolatile(room, m) {
    const user = m.user || '?';
    if (m.event !== 'typing' || user === state.me) return;
    const on = !(m.data && m.data.typing === false);
    clearTimeout(room.typing.get(user));
    if (on) room.typing.set(user, setTimeout(() => stopTyping(room, user), TYPING_SHOWN_MS));
    else room.typing.delete(user);
    if (room === state.current) renderTyping();
  }

  function stopTyping(room, user) {
    room.typing.delete(user);
    if (room === state.current) renderTyping();
  }

  /** "bob is typing…" under the current room's messages. */
  function renderTyping() {
    const line = $('typing');
    const room = state.current;
    const users = room ? [...room.typing.keys()] : [];
    const label =
      users.length === 0 ? '' : users.length === 1 ? `${users[0]} is typing…` : users.length === 2 ? `${users[0]} and ${users[1]} are typing…` : 'Several people are typing…';
    line.textContent = label;
    line.hidden = label === '';
  }

  /** Tells the room that we are typing: volatile (never stored), at most every few seconds. */
  function announceTyping() {
    const room = state.current;
    if (!room || !room.remote || room.system || room.status !== 'joined' || state.conn !== 'online') return;
    const now = Date.now();
    if (now - room.typingSentAt < TYPING_EVERY_MS) return;
    room.typingSentAt = now;
    room.remote.publish({ typing: true }, { event: 'typing', volatile: true, skipSelf: true }).catch(() => {});
  }

  function onPresenceJoin(room, user) {
    // In a cluster our own join may come back from the room's presence holder after
    // `joined` (docs/CLUSTER.md): we are in the list already, and it is no news to us.
    if (user === state.me) return;
    if (!room.users.has(user)) {
      room.users.add(user);
      room.count += 1;
    }
    addNotice(room, `${user} joined`);
    renderRoomItem(room);
    if (room === state.current) renderPresence();
  }

  function onPresenceLeave(room, user) {
    if (room.users.delete(user)) room.count = Math.max(room.users.size, room.count - 1);
    addNotice(room, `${user} left`);
    renderRoomItem(room);
    if (room === state.current) renderPresence();
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
      remote: null,
      offs: [],
      presenceLoad: null,
      unread: 0,
      count: 0,
      users: new Set(),
      pending: [],
      list,
      item: el('li', { class: 'room-item', dataset: { room: name } }),
      scrollTop: null,
      lastDay: '',
      typing: new Map(),
      typingSentAt: 0,
    };
    state.rooms.set(name, room);
    $('room-list').append(room.item);
    renderRoomItem(room);
    saveRooms();
    return room;
  }

  /** Joins (or just switches to, when already joined) the room the user named. */
  function joinRoom(name, { focus = true } = {}) {
    let room = state.rooms.get(name);
    if (!room) {
      room = addRoom(name);
      bindRoom(room);
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
    renderTyping();
    updateComposer();
    closeDrawers();
    if (focus && room) $('composer-input').focus();
  }

  function leaveRoom(room) {
    if (room.system) return;
    const hadFocus = room.item.contains(document.activeElement);
    if (room.remote) room.remote.leave().catch(() => {});
    unbindRoom(room);
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
  /** The bubble's content: an event badge, the text, and `data` as compact JSON. */
  function bubble(text, event, data) {
    const parts = [];
    if (typeof event === 'string' && event !== '') parts.push(el('span', { class: 'event-badge' }, event));
    if (text) parts.push(text);
    if (data !== undefined) {
      let json = JSON.stringify(data);
      if (json.length > DATA_SHOWN_CHARS) json = `${json.slice(0, DATA_SHOWN_CHARS)}…`;
      parts.push(el('code', { class: 'data' }, json));
    }
    return el('p', { class: data !== undefined && !text ? 'text data-only' : 'text' }, ...parts);
  }

  function messageNode(room, { user, text, ts, seq, own, event, data }) {
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
    const body = el('div', { class: 'body' }, meta, bubble(text, event, data));
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
    if (state.conn !== 'online' || !room.remote) {
      toast('Not connected: the message was not sent.');
      return false;
    }
    dayDivider(room, new Date());
    room.typingSentAt = 0; // the next message's typing is announced at once
    const li = messageNode(room, { user: state.me, text, ts: NaN, seq: null, own: true });
    li.classList.add('pending');
    li.querySelector('.status').textContent = 'Sending…';
    /** @type {Pending} */
    const p = { room, text, seq: null, li };
    room.pending.push(p);
    appendToRoom(room, li, { forceScroll: true });
    room.remote.publish(text).then(
      (seq) => {
        if (!p.li.isConnected || !p.room.pending.includes(p)) return; // already seen back
        p.seq = seq;
        markSent(p);
      },
      (err) => {
        if (!p.room.pending.includes(p)) return;
        markFailed(p, err.code === 'disconnected' ? 'Not sent: connection lost' : `Not sent: ${err.message}`);
      },
    );
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

  /** Loads the member list page by page (at most PRESENCE_MAX names); a newer load wins. */
  async function requestPresence(room) {
    if (!room.remote) return;
    const load = {};
    room.presenceLoad = load;
    const users = new Set([state.me]);
    let count = 0;
    try {
      for await (const page of room.remote.presencePages({ limit: PRESENCE_PAGE })) {
        if (room.presenceLoad !== load) return;
        for (const u of page.users) users.add(u);
        count = page.count;
        if (users.size >= PRESENCE_MAX) break;
      }
    } catch {
      return; // the connection dropped: the rejoin loads it again
    }
    if (room.presenceLoad !== load) return;
    room.presenceLoad = null;
    room.users = users;
    room.count = count;
    renderRoomItem(room);
    if (room === state.current) renderPresence();
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
      if (name !== state.name || !state.client) disconnect();
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
    composer.addEventListener('input', () => {
      if (composer.value.trim()) announceTyping();
    });

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
      if (state.name && !$('chat').hidden) reconnectNow();
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
