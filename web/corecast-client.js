// corecast-client: a typed client for the corecast WebSocket server.
//
// Speaks protocol v1 (docs/PROTOCOL.md in the corecast repository): rooms, publish with
// acks, presence and history paging, token refresh, and reconnect with exact recovery
// (`join` with `since: {epoch, seq}`). No runtime dependencies: it needs a WebSocket
// constructor, the global one (browsers, Node >= 22) or an injected one (the `ws` package).
//
// Recovery contract: per room the client remembers the stream's `epoch` and the last
// `seq` it delivered. After a reconnect it rejoins with both; the server replays what was
// missed before `joined`, and the client drops any message whose seq it already
// delivered. So an app sees every message of a recovered room exactly once, in seq order;
// when the server cannot recover (`recovered: false`), the room emits `resync`.
/** The server protocol version this client speaks (docs/PROTOCOL.md, "corecast protocol v1"). */
export const PROTOCOL_VERSION = 1;
/** A refused request or a client-side failure, with the server's (or the client's) `code`. */
export class CorecastError extends Error {
    constructor(code, message, opts = {}) {
        super(message);
        this.name = 'CorecastError';
        this.code = code;
        this.ref = opts.ref;
        this.room = opts.room;
        this.fromServer = opts.fromServer ?? false;
    }
}
/** A small typed event emitter. A throwing handler is reported asynchronously and never breaks the client. */
export class Emitter {
    constructor() {
        this.handlers = new Map();
    }
    /** Calls `handler` on every `event`; returns a function that unsubscribes it. */
    on(event, handler) {
        let set = this.handlers.get(event);
        if (!set)
            this.handlers.set(event, (set = new Set()));
        set.add(handler);
        return () => this.off(event, handler);
    }
    /** Calls `handler` on the next `event` only. */
    once(event, handler) {
        const off = this.on(event, (payload) => {
            off();
            handler(payload);
        });
        return off;
    }
    /** Removes a handler added with `on`. */
    off(event, handler) {
        this.handlers.get(event)?.delete(handler);
    }
    emit(event, payload) {
        const set = this.handlers.get(event);
        if (!set)
            return;
        for (const handler of [...set]) {
            try {
                handler(payload);
            }
            catch (err) {
                setTimeout(() => {
                    throw err;
                }, 0);
            }
        }
    }
}
const OPEN = 1;
/** Closes after which retrying cannot help: protocol violation, binary, bad UTF-8, too big. */
const FATAL_CLOSES = new Set([1002, 1003, 1007, 1009]);
function str(v) {
    return typeof v === 'string' ? v : undefined;
}
function int(v) {
    return typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined;
}
function toMessage(m) {
    const msg = { room: str(m.room) ?? '', user: str(m.user) ?? '', raw: m };
    const seq = int(m.seq);
    if (seq !== undefined)
        msg.seq = seq;
    if (typeof m.text === 'string')
        msg.text = m.text;
    if ('data' in m)
        msg.data = m.data;
    if (typeof m.event === 'string')
        msg.event = m.event;
    if (m.tags && typeof m.tags === 'object' && !Array.isArray(m.tags)) {
        const tags = {};
        for (const [k, v] of Object.entries(m.tags))
            if (typeof v === 'string')
                tags[k] = v;
        msg.tags = tags;
    }
    if (m.volatile === true)
        msg.volatile = true;
    if (typeof m.ts === 'number')
        msg.ts = m.ts;
    return msg;
}
/** The `exp` claim of a JWT (seconds), without verifying it; undefined when unreadable. */
export function tokenExpiry(token) {
    try {
        const part = token.split('.')[1];
        if (!part)
            return undefined;
        const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
        const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
        return int(json?.exp);
    }
    catch {
        return undefined;
    }
}
/**
 * One room as seen by one client. Get it with {@link Corecast.room}; it stays joined
 * across reconnects until {@link Room.leave}.
 */
export class Room extends Emitter {
    /** @internal Use {@link Corecast.room}. */
    constructor(client, name, password) {
        super();
        /** The stream's epoch, from the last `joined` (null before the first). */
        this.epoch = null;
        /** The last seq delivered to `message` handlers (or `joined.seq`); null before the first join. */
        this.seq = null;
        /** `idle` (not joined), `joining`, `joined`. */
        this.status = 'idle';
        /** Whether the app wants the room joined (rejoined after every reconnect). */
        this.wanted = false;
        /** @internal */ this.mode = 'join';
        /** @internal */ this.sinceAsked = false;
        /** @internal */ this.hadSession = false;
        /** @internal */ this.replayed = 0;
        /** @internal */ this.waiters = [];
        /** @internal */ this.info = null;
        this.client = client;
        this.name = name;
        this.password = password;
    }
    /**
     * Joins the room (sent now when connected, else on connect) and resolves with `joined`.
     * Rejects with the server's error (`wrong_password`, `invalid_room`, …) or `timeout`.
     * Joining a joined room resolves at once.
     */
    join() {
        return this.enter('join');
    }
    /** Creates the room (private with the room's `password`) and joins it; rejects with `room_exists`. */
    create() {
        return this.enter('create');
    }
    enter(mode) {
        if (this.status === 'joined' && this.info)
            return Promise.resolve(this.info);
        const promise = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
        if (this.status === 'idle') {
            this.mode = mode;
            this.wanted = true;
            this.status = 'joining';
            this.client._sendJoin(this);
        }
        return promise;
    }
    /**
     * Publishes `text` (a string) or `data` (any other JSON value but `null`) and resolves
     * with the message's `seq` from the server's `ack` (`NaN` for a volatile message, which
     * has none). Rejects with a {@link CorecastError}:
     * the server's code (`not_member`, `rate_limited`, `text_too_long`, …) or a client code.
     * While disconnected the publish is queued (bounded) or rejected, per `offline`.
     */
    publish(body, opts = {}) {
        const frame = { type: 'message', room: this.name };
        if (typeof body === 'string')
            frame.text = body;
        else
            frame.data = body;
        if (opts.event !== undefined)
            frame.event = opts.event;
        if (opts.volatile)
            frame.volatile = true;
        if (opts.skipSelf)
            frame.skip_self = true;
        return this.client._publish(this, frame, opts.timeoutMs);
    }
    /** One page of members: `after` is the previous page's `next`, `limit` 1–1000 (default 100). */
    presence(opts = {}) {
        const frame = { type: 'presence', room: this.name };
        if (opts.after !== undefined)
            frame.after = opts.after;
        if (opts.limit !== undefined)
            frame.limit = opts.limit;
        return this.client._request(frame, 'presence', this.name);
    }
    /** Every page of members, in name order. */
    async *presencePages(opts = {}) {
        let after;
        do {
            const page = await this.presence({ after, limit: opts.limit });
            yield page;
            after = page.next;
        } while (after !== undefined);
    }
    /** One page of history: messages with `seq < before` (newest when absent), newest first; `limit` 1–100. */
    history(opts = {}) {
        const frame = { type: 'history', room: this.name };
        if (opts.before !== undefined)
            frame.before = opts.before;
        if (opts.limit !== undefined)
            frame.limit = opts.limit;
        return this.client._request(frame, 'history', this.name);
    }
    /**
     * Pages back through history, newest first, until the server holds no more. Stops if the
     * stream's epoch changes between pages (older pages would belong to another stream).
     */
    async *historyPages(opts = {}) {
        let before = opts.before;
        let epoch;
        for (;;) {
            const page = await this.history({ before, limit: opts.limit });
            if (page.messages.length === 0)
                return;
            if (epoch !== undefined && page.epoch !== epoch)
                return;
            epoch = page.epoch;
            yield page;
            const oldest = page.messages[page.messages.length - 1]?.seq;
            if (oldest === undefined || oldest <= 1)
                return;
            before = oldest;
        }
    }
    /** Leaves the room: no more events, no rejoin. Resolves on `left` (at once when disconnected). */
    leave() {
        return this.client._leave(this);
    }
    /** Deletes the room (its creator only); resolves on `deleted`, rejects with `forbidden` or `no_such_room`. */
    delete() {
        return this.client._request({ type: 'delete', room: this.name }, 'delete', this.name);
    }
    /** @internal */
    _emit(event, payload) {
        this.emit(event, payload);
    }
}
/**
 * A corecast connection: `new Corecast(url, options)`, then `connect()`. Reconnects on its
 * own (see {@link CorecastOptions}) and rejoins every room with recovery.
 */
export class Corecast extends Emitter {
    constructor(url, options = {}) {
        super();
        /** The user id from the last `welcome`. */
        this.user = null;
        this.ws = null;
        this._state = 'idle';
        this.wanted = false;
        this.attempt = 0;
        this.connectedAt = 0;
        this.tokenRetried = false;
        this.nextId = 1;
        this.pending = new Map();
        this.rooms = new Map();
        this.queue = [];
        this.connectWaiters = [];
        this.closeWaiters = [];
        this.url = url;
        this.opts = options;
        this.token = options.token;
        const ctor = options.WebSocket ?? globalThis.WebSocket;
        if (!ctor)
            throw new TypeError('corecast-client: no global WebSocket; pass options.WebSocket (e.g. from the `ws` package)');
        this.Ctor = ctor;
    }
    /** The connection state. */
    get state() {
        return this._state;
    }
    /**
     * Connects (and keeps reconnecting until {@link close}). Resolves with the next `welcome`;
     * rejects with `closed` if the client is closed or gives up first.
     */
    connect() {
        const promise = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
        if (!this.wanted) {
            this.wanted = true;
            this.attempt = 0;
            void this.open();
        }
        return promise;
    }
    /** Closes for good (no reconnect); pending requests and queued publishes reject with `closed`. */
    close(code = 1000, reason = 'bye') {
        this.wanted = false;
        clearTimeout(this.retryTimer);
        clearTimeout(this.refreshTimer);
        const ws = this.ws;
        this.ws = null;
        for (const room of this.rooms.values())
            if (room.status === 'joined')
                room.hadSession = true;
        this.failAll('closed', 'the client was closed');
        this.setState('closed');
        if (!ws)
            return Promise.resolve();
        const done = new Promise((resolve) => this.closeWaiters.push(resolve));
        ws.onclose = () => {
            const waiters = this.closeWaiters;
            this.closeWaiters = [];
            for (const w of waiters)
                w();
        };
        try {
            ws.close(code, reason);
        }
        catch {
            ws.onclose({ code, reason });
        }
        this.emit('disconnected', { code, reason, willReconnect: false });
        return done;
    }
    /** The room named `name` (one object per name); `password` is sent when joining a private room. */
    room(name, opts = {}) {
        let room = this.rooms.get(name);
        if (!room) {
            room = new Room(this, name, opts.password);
            this.rooms.set(name, room);
        }
        else if (opts.password !== undefined) {
            room.password = opts.password;
        }
        return room;
    }
    /**
     * Sends any request frame with a fresh `id` and resolves with its `ack`, or rejects with
     * its `error`. For frames whose answer carries `ref` (other answers arrive as events);
     * useful for protocol additions this version does not wrap yet. An error the server
     * sends without `ref` (see the README) reaches the `error` event and this rejects with `timeout`.
     */
    request(frame, opts = {}) {
        return this._request({ ...frame }, 'request', str(frame.room), opts.timeoutMs);
    }
    /** Skips the wait of a scheduled reconnect (e.g. when the browser comes back online) and resets the backoff. */
    retryNow() {
        if (this._state !== 'reconnecting' || !this.wanted || this.ws)
            return;
        clearTimeout(this.retryTimer);
        this.attempt = 0;
        void this.open();
    }
    /** Fetches a new token with `getToken` now and sends it with `refresh`; resolves with the new `exp`. */
    async refreshToken() {
        if (!this.opts.getToken)
            throw new CorecastError('invalid_token', 'no getToken option to refresh with');
        const token = await this.opts.getToken();
        const answer = await this._request({ type: 'refresh', token }, 'refresh');
        this.token = token;
        const exp = int(answer.exp) ?? tokenExpiry(token);
        this.scheduleRefresh(exp);
        this.emit('token', { exp });
        return exp;
    }
    // ───────────── connection ─────────────
    setState(state) {
        this._state = state;
    }
    async open() {
        const attempt = this.attempt;
        this.setState(this.connectedAt || attempt > 0 ? 'reconnecting' : 'connecting');
        this.emit('connecting', { attempt });
        let token = this.token;
        if (this.opts.getToken) {
            try {
                token = await this.opts.getToken();
                this.token = token;
            }
            catch (err) {
                this.emit('error', new CorecastError('invalid_token', `getToken failed: ${String(err)}`));
                this.scheduleReconnect();
                return;
            }
            if (!this.wanted || this.ws)
                return; // closed, or connected by another path meanwhile
        }
        const url = new URL(this.url);
        let protocols;
        if (this.opts.name !== undefined && token === undefined)
            url.searchParams.set('name', this.opts.name);
        if (token !== undefined) {
            if (this.opts.tokenIn === 'query')
                url.searchParams.set('token', token);
            else
                protocols = ['corecast', `bearer.${token}`];
        }
        let ws;
        try {
            ws = (protocols ? new this.Ctor(url.href, protocols) : new this.Ctor(url.href));
        }
        catch (err) {
            this.emit('error', new CorecastError('disconnected', `cannot open a WebSocket: ${String(err)}`));
            this.scheduleReconnect();
            return;
        }
        this.ws = ws;
        ws.onerror = () => { }; // a close event follows every error
        ws.onmessage = (ev) => {
            if (ws !== this.ws || typeof ev.data !== 'string')
                return;
            let frame;
            try {
                frame = JSON.parse(ev.data);
            }
            catch {
                return;
            }
            if (frame && typeof frame === 'object' && typeof frame.type === 'string')
                this.dispatch(frame);
        };
        ws.onclose = (ev) => {
            if (ws !== this.ws)
                return;
            this.ws = null;
            this.onClosed(ev.code, ev.reason ?? '');
        };
    }
    onClosed(code, reason) {
        clearTimeout(this.refreshTimer);
        const lived = this.connectedAt ? Date.now() - this.connectedAt : 0;
        if (lived >= (this.opts.backoff?.stableMs ?? 10000))
            this.attempt = 0;
        this.failPending('disconnected', `connection lost (${code}${reason ? ` ${reason}` : ''}) before the server answered`);
        for (const room of this.rooms.values()) {
            if (room.status === 'joined')
                room.hadSession = true;
            if (room.wanted)
                room.status = 'joining';
        }
        let retry = this.wanted && this.opts.reconnect !== false;
        let delay;
        // 1012: the server restarts and keeps its history (--data-dir): come back promptly,
        // with the backoff from its start, and recover with `since`.
        if (code === 1012)
            this.attempt = 0;
        if (FATAL_CLOSES.has(code))
            retry = false;
        if (code >= 4000 && code <= 4999 && !this.opts.reconnectOnAppClose)
            retry = false;
        if (code === 1008) {
            // Only an expired token is worth a retry, once, with a fresh token.
            if (/expired/i.test(reason) && this.opts.getToken && !this.tokenRetried) {
                this.tokenRetried = true;
                delay = 0;
            }
            else {
                retry = false;
            }
        }
        this.emit('disconnected', { code, reason, willReconnect: retry });
        if (retry) {
            this.scheduleReconnect(delay);
        }
        else {
            this.wanted = false;
            this.setState('closed');
            this.failAll('closed', `the connection closed (${code}${reason ? ` ${reason}` : ''}) and will not be retried`);
        }
    }
    scheduleReconnect(delay) {
        if (!this.wanted)
            return;
        const base = this.opts.backoff?.baseMs ?? 500;
        const cap = this.opts.backoff?.capMs ?? 30000;
        const ceiling = Math.min(cap, base * 2 ** this.attempt);
        const min = Math.min(this.opts.backoff?.minMs ?? 0, ceiling);
        const wait = delay ?? Math.floor(min + Math.random() * (ceiling - min)); // full jitter
        this.attempt = Math.min(this.attempt + 1, 30);
        this.setState('reconnecting');
        this.emit('reconnecting', { delay: wait, attempt: this.attempt });
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => void this.open(), wait);
    }
    scheduleRefresh(exp) {
        clearTimeout(this.refreshTimer);
        if (!this.opts.getToken || exp === undefined)
            return;
        const before = this.opts.refreshBeforeMs ?? 30000;
        const wait = Math.max(0, exp * 1000 - Date.now() - before);
        this.refreshTimer = setTimeout(() => {
            this.refreshToken().catch((err) => this.emit('error', err instanceof CorecastError ? err : new CorecastError('invalid_token', String(err))));
        }, Math.min(wait, 2 ** 31 - 1));
    }
    /** Rejects everything waiting on the connection that just ended (queued publishes survive). */
    failPending(code, message) {
        const pending = [...this.pending.values()];
        this.pending.clear();
        for (const p of pending) {
            clearTimeout(p.timer);
            p.reject(new CorecastError(code, message, { ref: p.id, room: p.room }));
        }
    }
    /** Rejects every request, queued publish, join and connect() waiter: the client stops. */
    failAll(code, message) {
        this.failPending(code, message);
        const queue = this.queue;
        this.queue = [];
        for (const q of queue)
            q.reject(new CorecastError(code, message, { room: q.room.name }));
        for (const room of this.rooms.values()) {
            const waiters = room.waiters;
            room.waiters = [];
            for (const w of waiters)
                w.reject(new CorecastError(code, message, { room: room.name }));
            if (room.wanted)
                room.status = 'joining';
        }
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.reject(new CorecastError(code, message));
    }
    send(frame) {
        const ws = this.ws;
        if (!ws || ws.readyState !== OPEN || this._state !== 'connected')
            return false;
        ws.send(JSON.stringify(frame));
        return true;
    }
    // ───────────── requests ─────────────
    /** @internal */
    _request(frame, kind, room, timeoutMs) {
        return new Promise((resolve, reject) => {
            const id = `c${this.nextId++}`;
            frame.id = id;
            if (!this.send(frame)) {
                reject(new CorecastError(this.wanted ? 'offline' : 'closed', 'not connected', { room }));
                return;
            }
            const p = { id, kind, room, resolve, reject, timer: undefined };
            const bound = timeoutMs ?? this.opts.requestTimeoutMs ?? 10000;
            p.timer = setTimeout(() => {
                if (this.pending.get(id) !== p)
                    return;
                this.pending.delete(id);
                reject(new CorecastError('timeout', `no answer within ${bound} ms`, { ref: id, room }));
            }, bound);
            this.pending.set(id, p);
        });
    }
    /** The oldest pending request of `kind` about `room` (answers without `ref` come in request order). */
    take(kind, room) {
        for (const p of this.pending.values()) {
            if (p.kind === kind && (room === undefined || p.room === room)) {
                this.pending.delete(p.id);
                clearTimeout(p.timer);
                return p;
            }
        }
        return undefined;
    }
    /** @internal */
    _publish(room, frame, timeoutMs) {
        if (this._state === 'connected')
            return this._request(frame, 'publish', room.name, timeoutMs).then((a) => int(a.seq) ?? NaN);
        if (!this.wanted && this._state !== 'idle')
            return Promise.reject(new CorecastError('closed', 'the client is closed', { room: room.name }));
        if (this.opts.offline === 'reject')
            return Promise.reject(new CorecastError('offline', 'not connected', { room: room.name }));
        if (this.queue.length >= (this.opts.maxQueue ?? 100)) {
            return Promise.reject(new CorecastError('queue_full', 'too many publishes queued while disconnected', { room: room.name }));
        }
        return new Promise((resolve, reject) => this.queue.push({ room, frame, timeoutMs, resolve, reject }));
    }
    /** @internal */
    _sendJoin(room) {
        if (this._state !== 'connected')
            return; // sent on welcome
        const frame = { type: room.mode, room: room.name };
        if (room.password !== undefined)
            frame.password = room.password;
        room.sinceAsked = false;
        room.replayed = 0;
        if (room.mode === 'join' && room.epoch !== null && room.seq !== null) {
            frame.since = { epoch: room.epoch, seq: room.seq };
            room.sinceAsked = true;
        }
        room.status = 'joining';
        this._request(frame, 'join', room.name).catch((err) => {
            if (err.code === 'disconnected' || err.code === 'closed')
                return; // rejoined on the next welcome
            if (err.code === 'timeout') {
                this.rejectJoin(room, err, false);
                return;
            }
            this.rejectJoin(room, err, true);
        });
    }
    rejectJoin(room, err, final) {
        if (final) {
            room.wanted = false;
            room.status = 'idle';
        }
        const waiters = room.waiters;
        room.waiters = [];
        for (const w of waiters)
            w.reject(err);
        if (waiters.length === 0 && final)
            room._emit('error', err);
    }
    /** @internal */
    async _leave(room) {
        const was = room.status;
        room.wanted = false;
        room.status = 'idle';
        room.info = null;
        this.rejectJoin(room, new CorecastError('left', 'the room was left before it was joined', { room: room.name }), false);
        const keep = [];
        for (const q of this.queue) {
            if (q.room === room)
                q.reject(new CorecastError('left', 'the room was left before the publish was sent', { room: room.name }));
            else
                keep.push(q);
        }
        this.queue = keep;
        if (was === 'idle' || this._state !== 'connected')
            return;
        await this._request({ type: 'leave', room: room.name }, 'leave', room.name);
    }
    // ───────────── frames ─────────────
    dispatch(m) {
        switch (m.type) {
            case 'welcome':
                return this.onWelcome(m);
            case 'joined':
                return this.onJoined(m);
            case 'message':
                return this.onMessage(m);
            case 'ack': {
                const p = this.pending.get(String(m.ref));
                if (!p)
                    return;
                this.pending.delete(p.id);
                clearTimeout(p.timer);
                p.resolve(m);
                return;
            }
            case 'error':
                return this.onError(m);
            case 'presence': {
                const p = this.take('presence', str(m.room));
                const page = {
                    count: int(m.count) ?? 0,
                    users: Array.isArray(m.users) ? m.users.filter((u) => typeof u === 'string') : [],
                };
                if (typeof m.next === 'string')
                    page.next = m.next;
                p?.resolve(page);
                return;
            }
            case 'history': {
                const p = this.take('history', str(m.room));
                const messages = Array.isArray(m.messages)
                    ? m.messages.filter((x) => !!x && typeof x === 'object').map(toMessage)
                    : [];
                p?.resolve({ epoch: str(m.epoch) ?? '', messages });
                return;
            }
            case 'join':
            case 'leave': {
                const room = this.rooms.get(str(m.room) ?? '');
                const user = str(m.user);
                if (room && room.wanted && user !== undefined)
                    room._emit(m.type, { user });
                return;
            }
            case 'left': {
                this.take('leave', str(m.room))?.resolve(undefined);
                const room = this.rooms.get(str(m.room) ?? '');
                const reason = str(m.reason);
                if (room && reason !== undefined) {
                    // Removed by the server: not rejoined after a reconnect.
                    room.wanted = false;
                    room.status = 'idle';
                    room.info = null;
                }
                room?._emit('left', reason === undefined ? {} : { reason });
                return;
            }
            case 'deleted': {
                const room = this.rooms.get(str(m.room) ?? '');
                this.take('delete', str(m.room))?.resolve(undefined);
                if (room) {
                    room.wanted = false;
                    room.status = 'idle';
                    room.info = null;
                    room._emit('deleted', {});
                }
                return;
            }
            case 'refreshed':
                this.take('refresh')?.resolve(m);
                return;
            default:
                return; // the protocol only grows: unknown types are ignored
        }
    }
    onWelcome(m) {
        const welcome = { user: str(m.user) ?? '', conn: str(m.conn) ?? '', shard: int(m.shard) ?? 0 };
        if (typeof m.name === 'string')
            welcome.name = m.name;
        this.user = welcome.user;
        this.connectedAt = Date.now();
        this.tokenRetried = false;
        this.setState('connected');
        for (const room of this.rooms.values())
            if (room.wanted)
                this._sendJoin(room);
        // Joins first: a message sent right after a join is accepted by the server.
        const queue = this.queue;
        this.queue = [];
        for (const q of queue)
            this._request(q.frame, 'publish', q.room.name, q.timeoutMs).then((a) => q.resolve(int(a.seq) ?? NaN), q.reject);
        if (this.token !== undefined)
            this.scheduleRefresh(tokenExpiry(this.token));
        this.emit('connected', welcome);
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.resolve(welcome);
    }
    onJoined(m) {
        const name = str(m.room) ?? '';
        let room = this.rooms.get(name);
        let subscribed = false;
        if (!room && name !== '') {
            // A room this client never asked for: the server subscribed it (`POST /api/subscribe`).
            room = this.room(name);
            room.wanted = true;
            subscribed = true;
        }
        if (!room || !room.wanted)
            return; // left meanwhile: the server has our leave queued
        this.take('join', room.name);
        const seq = int(m.seq) ?? 0;
        const epoch = str(m.epoch) ?? '';
        const rejoin = room.hadSession;
        if (room.sinceAsked && m.recovered === true && epoch === room.epoch) {
            if (room.seq === null || room.seq < seq)
                room.seq = seq;
            room._emit('recovered', { epoch, seq, replayed: room.replayed });
        }
        else {
            const previousEpoch = room.epoch;
            const previousSeq = room.seq;
            room.epoch = epoch;
            room.seq = seq;
            if (room.sinceAsked)
                room._emit('resync', { epoch, seq, previousEpoch, previousSeq });
        }
        room.status = 'joined';
        room.sinceAsked = false;
        const info = { room: room.name, members: int(m.members) ?? 0, seq, epoch, private: m.private === true, rejoin };
        if (typeof m.recovered === 'boolean')
            info.recovered = m.recovered;
        room.info = info;
        const waiters = room.waiters;
        room.waiters = [];
        for (const w of waiters)
            w.resolve(info);
        room._emit('joined', info);
        if (subscribed)
            this.emit('subscribed', room);
    }
    onMessage(m) {
        const name = str(m.room);
        if (name === undefined)
            return;
        const msg = toMessage(m);
        if (name.startsWith('@')) {
            // Personal pushes and broadcasts: implicit rooms, never rejoined, so nothing to dedupe.
            this.emit(name === '@all' ? 'broadcast' : 'push', msg);
            return;
        }
        const room = this.rooms.get(name);
        if (!room || !room.wanted)
            return;
        if (msg.seq === undefined) {
            room._emit(m.volatile === true ? 'volatile' : 'message', msg);
            return;
        }
        if (room.seq !== null && msg.seq <= room.seq)
            return; // already delivered (replay overlap)
        room.seq = msg.seq;
        if (room.status === 'joining')
            room.replayed += 1;
        room._emit('message', msg);
    }
    onError(m) {
        const ref = m.ref === undefined || m.ref === null ? undefined : String(m.ref);
        const p = ref === undefined ? undefined : this.pending.get(ref);
        const code = str(m.code) ?? 'error';
        const err = new CorecastError(code, str(m.message) || code, { ref, room: p?.room, fromServer: true });
        if (!p) {
            this.emit('error', err);
            return;
        }
        this.pending.delete(p.id);
        clearTimeout(p.timer);
        p.reject(err);
    }
}
