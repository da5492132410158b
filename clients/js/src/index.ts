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

/** Error codes the server sends in `error` frames (docs/PROTOCOL.md, "Errors"). */
export type ServerErrorCode =
  | 'bad_json'
  | 'invalid_field'
  | 'missing_field'
  | 'unknown_type'
  | 'invalid_room'
  | 'not_member'
  | 'already_joined'
  | 'forbidden'
  | 'unavailable'
  | 'rate_limited'
  | 'text_too_long'
  | 'data_too_large'
  | 'too_many_rooms'
  | 'room_exists'
  | 'no_such_room'
  | 'password_required'
  | 'wrong_password'
  | 'invalid_token';

/**
 * Error codes the client itself raises: `timeout` (no answer within `requestTimeoutMs`),
 * `disconnected` (the connection was lost before the answer: a publish may or may not have
 * been sequenced), `offline` (publish while disconnected with `offline: 'reject'`),
 * `queue_full` (the offline queue is at `maxQueue`), `closed` (the client was closed or
 * gave up reconnecting), `left` (the room was left before a queued publish was sent).
 */
export type ClientErrorCode = 'timeout' | 'disconnected' | 'offline' | 'queue_full' | 'closed' | 'left';

/** Every error code a {@link CorecastError} can carry. Unknown server codes pass through as strings. */
export type ErrorCode = ServerErrorCode | ClientErrorCode | (string & {});

/** A refused request or a client-side failure, with the server's (or the client's) `code`. */
export class CorecastError extends Error {
  /** The server's error code (`not_member`, …) or a client code (`timeout`, …). */
  readonly code: ErrorCode;
  /** The request id the server echoed, when the error answers a request. */
  readonly ref: string | undefined;
  /** The room the failed request was about, when there was one. */
  readonly room: string | undefined;
  /** True when the code comes from the server, false for client-side codes. */
  readonly fromServer: boolean;

  constructor(code: ErrorCode, message: string, opts: { ref?: string; room?: string; fromServer?: boolean } = {}) {
    super(message);
    this.name = 'CorecastError';
    this.code = code;
    this.ref = opts.ref;
    this.room = opts.room;
    this.fromServer = opts.fromServer ?? false;
  }
}

/** A room message as delivered live or replayed. Unknown fields stay available in `raw`. */
export interface Message {
  room: string;
  /** Position in the room's stream; absent for volatile messages. */
  seq?: number;
  user: string;
  text?: string;
  /** Structured payload: any JSON value but `null`, as the publisher wrote it. */
  data?: unknown;
  /** Application event name, to dispatch on without looking into `data`. */
  event?: string;
  /** String tags set by a server-side publish. */
  tags?: Record<string, string>;
  /** True for a volatile message: no `seq`, never stored or replayed. */
  volatile?: boolean;
  /** Server time in ms since the Unix epoch, set when the message was sequenced. */
  ts?: number;
  /** The frame as received. */
  raw: Record<string, unknown>;
}

/** The `welcome` frame: who the server says we are. */
export interface Welcome {
  user: string;
  conn: string;
  shard: number;
  /** The token's display name, when it has one. */
  name?: string;
}

/** What `joined` said. */
export interface JoinInfo {
  room: string;
  members: number;
  seq: number;
  epoch: string;
  private: boolean;
  /** Present when the join asked for recovery (`since`). */
  recovered?: boolean;
  /** True when this join re-established a room after a reconnect. */
  rejoin: boolean;
}

/** One page of a room's members, sorted by name. */
export interface PresencePage {
  count: number;
  users: string[];
  /** Cursor for the next page (`after`), absent on the last page. */
  next?: string;
}

/** One page of a room's history, newest first. */
export interface HistoryPage {
  epoch: string;
  messages: Message[];
}

/** Options of a publish (docs/PROTOCOL.md, "Structured payloads"). */
export interface PublishOptions {
  /** An event name (1–64 bytes, no control characters). */
  event?: string;
  /** To current members only: no `seq`, not stored, not replayed (typing indicators, cursors). */
  volatile?: boolean;
  /** This connection does not receive its own message. */
  skipSelf?: boolean;
  /** Overrides the client's `requestTimeoutMs` for this publish. */
  timeoutMs?: number;
}

/** Connection states, in the order a connection usually goes through them. */
export type ConnectionState = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** A minimal WebSocket: the browser's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: any) => void) | null;
}

/**
 * A WebSocket constructor (`globalThis.WebSocket`, or `WebSocket` from the `ws` package)
 * whose instances behave as {@link WebSocketLike}. The instance type is left open because
 * the `ws` package's overloaded declarations do not match the DOM's exactly.
 */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => unknown;

/** Reconnect backoff: capped exponential with full jitter, reset after a stable connection. */
export interface BackoffOptions {
  /** First ceiling in ms (default 500). */
  baseMs?: number;
  /** Largest ceiling in ms (default 30000). */
  capMs?: number;
  /** Floor of every jittered delay in ms (default 0: full jitter over [0, ceiling)). */
  minMs?: number;
  /** A connection that lasted this long resets the backoff (default 10000). */
  stableMs?: number;
}

/** Options of {@link Corecast}. */
export interface CorecastOptions {
  /** Guest name (`?name=`). */
  name?: string;
  /** A fixed JWT. */
  token?: string;
  /** Called on every connect and before the token expires; its token is sent with `refresh`. */
  getToken?: () => string | Promise<string>;
  /** How the token travels: the `bearer.<jwt>` subprotocol (default; browsers cannot set headers) or `?token=`. */
  tokenIn?: 'protocol' | 'query';
  /** Refresh this many ms before the token's `exp` (default 30000). */
  refreshBeforeMs?: number;
  /** The WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Reconnect automatically (default true). */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** Also reconnect after an application close code 4000–4999 (default false). */
  reconnectOnAppClose?: boolean;
  /** Bound on every request in ms (default 10000). */
  requestTimeoutMs?: number;
  /** Publishes made while disconnected: queue them until connected (default) or reject. */
  offline?: 'queue' | 'reject';
  /** Most publishes queued while disconnected (default 100); beyond, they reject with `queue_full`. */
  maxQueue?: number;
}

/** Events of {@link Corecast}. */
export interface ClientEvents {
  connecting: { attempt: number };
  connected: Welcome;
  disconnected: { code: number; reason: string; willReconnect: boolean };
  reconnecting: { delay: number; attempt: number };
  /** A personal push (room `@user:<id>`). */
  push: Message;
  /** The server joined this connection to a room (`POST /api/subscribe`); the room is joined. */
  subscribed: Room;
  /** A server-wide broadcast (room `@all`). */
  broadcast: Message;
  /** A new token was accepted by `refresh`. */
  token: { exp?: number };
  /** An error that answers no pending request (e.g. `bad_json`), or a failing `getToken`. */
  error: CorecastError;
}

/** Events of {@link Room}. */
export interface RoomEvents {
  message: Message;
  /** A volatile message (no seq). */
  volatile: Message;
  join: { user: string };
  leave: { user: string };
  joined: JoinInfo;
  /** A rejoin recovered every missed message (`replayed` of them came from history). */
  recovered: { epoch: string; seq: number; replayed: number };
  /** A rejoin could not recover: reload the room's state (e.g. with `history()`). */
  resync: { epoch: string; seq: number; previousEpoch: string | null; previousSeq: number | null };
  /** The room was left; `reason` is set when the server removed this connection (`POST /api/unsubscribe`). */
  left: { reason?: string };
  deleted: Record<string, never>;
  /** A rejoin after a reconnect was refused; the room is no longer joined. */
  error: CorecastError;
}

type Handler<T> = (payload: T) => void;

/** A small typed event emitter. A throwing handler is reported asynchronously and never breaks the client. */
export class Emitter<M> {
  private handlers = new Map<keyof M, Set<Handler<any>>>();

  /** Calls `handler` on every `event`; returns a function that unsubscribes it. */
  on<K extends keyof M>(event: K, handler: Handler<M[K]>): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  /** Calls `handler` on the next `event` only. */
  once<K extends keyof M>(event: K, handler: Handler<M[K]>): () => void {
    const off = this.on(event, (payload) => {
      off();
      handler(payload);
    });
    return off;
  }

  /** Removes a handler added with `on`. */
  off<K extends keyof M>(event: K, handler: Handler<M[K]>): void {
    this.handlers.get(event)?.delete(handler);
  }

  protected emit<K extends keyof M>(event: K, payload: M[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(payload);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
}

type Frame = Record<string, unknown>;
type Timer = ReturnType<typeof setTimeout>;

interface Pending {
  id: string;
  kind: 'publish' | 'join' | 'presence' | 'history' | 'leave' | 'delete' | 'refresh' | 'request';
  room?: string;
  resolve: (value: any) => void;
  reject: (err: CorecastError) => void;
  timer: Timer | undefined;
}

interface Queued {
  room: Room;
  frame: Frame;
  timeoutMs: number | undefined;
  resolve: (seq: number) => void;
  reject: (err: CorecastError) => void;
}

const OPEN = 1;
/** Closes after which retrying cannot help: protocol violation, binary, bad UTF-8, too big. */
const FATAL_CLOSES = new Set([1002, 1003, 1007, 1009]);

function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}
function int(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isSafeInteger(v) ? v : undefined;
}

function toMessage(m: Frame): Message {
  const msg: Message = { room: str(m.room) ?? '', user: str(m.user) ?? '', raw: m };
  const seq = int(m.seq);
  if (seq !== undefined) msg.seq = seq;
  if (typeof m.text === 'string') msg.text = m.text;
  if ('data' in m) msg.data = m.data;
  if (typeof m.event === 'string') msg.event = m.event;
  if (m.tags && typeof m.tags === 'object' && !Array.isArray(m.tags)) {
    const tags: Record<string, string> = {};
    for (const [k, v] of Object.entries(m.tags as Record<string, unknown>)) if (typeof v === 'string') tags[k] = v;
    msg.tags = tags;
  }
  if (m.volatile === true) msg.volatile = true;
  if (typeof m.ts === 'number') msg.ts = m.ts;
  return msg;
}

/** The `exp` claim of a JWT (seconds), without verifying it; undefined when unreadable. */
export function tokenExpiry(token: string): number | undefined {
  try {
    const part = token.split('.')[1];
    if (!part) return undefined;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return int(json?.exp);
  } catch {
    return undefined;
  }
}

/**
 * One room as seen by one client. Get it with {@link Corecast.room}; it stays joined
 * across reconnects until {@link Room.leave}.
 */
export class Room extends Emitter<RoomEvents> {
  /** The room's name. */
  readonly name: string;
  /** The stream's epoch, from the last `joined` (null before the first). */
  epoch: string | null = null;
  /** The last seq delivered to `message` handlers (or `joined.seq`); null before the first join. */
  seq: number | null = null;
  /** `idle` (not joined), `joining`, `joined`. */
  status: 'idle' | 'joining' | 'joined' = 'idle';
  /** Whether the app wants the room joined (rejoined after every reconnect). */
  wanted = false;
  /** @internal */ password: string | undefined;
  /** @internal */ mode: 'join' | 'create' = 'join';
  /** @internal */ sinceAsked = false;
  /** @internal */ hadSession = false;
  /** @internal */ replayed = 0;
  /** @internal */ waiters: Array<{ resolve: (info: JoinInfo) => void; reject: (err: CorecastError) => void }> = [];
  /** @internal */ info: JoinInfo | null = null;
  private readonly client: Corecast;

  /** @internal Use {@link Corecast.room}. */
  constructor(client: Corecast, name: string, password?: string) {
    super();
    this.client = client;
    this.name = name;
    this.password = password;
  }

  /**
   * Joins the room (sent now when connected, else on connect) and resolves with `joined`.
   * Rejects with the server's error (`wrong_password`, `invalid_room`, …) or `timeout`.
   * Joining a joined room resolves at once.
   */
  join(): Promise<JoinInfo> {
    return this.enter('join');
  }

  /** Creates the room (private with the room's `password`) and joins it; rejects with `room_exists`. */
  create(): Promise<JoinInfo> {
    return this.enter('create');
  }

  private enter(mode: 'join' | 'create'): Promise<JoinInfo> {
    if (this.status === 'joined' && this.info) return Promise.resolve(this.info);
    const promise = new Promise<JoinInfo>((resolve, reject) => this.waiters.push({ resolve, reject }));
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
  publish(body: unknown, opts: PublishOptions = {}): Promise<number> {
    const frame: Frame = { type: 'message', room: this.name };
    if (typeof body === 'string') frame.text = body;
    else frame.data = body;
    if (opts.event !== undefined) frame.event = opts.event;
    if (opts.volatile) frame.volatile = true;
    if (opts.skipSelf) frame.skip_self = true;
    return this.client._publish(this, frame, opts.timeoutMs);
  }

  /** One page of members: `after` is the previous page's `next`, `limit` 1–1000 (default 100). */
  presence(opts: { after?: string; limit?: number } = {}): Promise<PresencePage> {
    const frame: Frame = { type: 'presence', room: this.name };
    if (opts.after !== undefined) frame.after = opts.after;
    if (opts.limit !== undefined) frame.limit = opts.limit;
    return this.client._request(frame, 'presence', this.name);
  }

  /** Every page of members, in name order. */
  async *presencePages(opts: { limit?: number } = {}): AsyncGenerator<PresencePage, void, undefined> {
    let after: string | undefined;
    do {
      const page = await this.presence({ after, limit: opts.limit });
      yield page;
      after = page.next;
    } while (after !== undefined);
  }

  /** One page of history: messages with `seq < before` (newest when absent), newest first; `limit` 1–100. */
  history(opts: { before?: number; limit?: number } = {}): Promise<HistoryPage> {
    const frame: Frame = { type: 'history', room: this.name };
    if (opts.before !== undefined) frame.before = opts.before;
    if (opts.limit !== undefined) frame.limit = opts.limit;
    return this.client._request(frame, 'history', this.name);
  }

  /**
   * Pages back through history, newest first, until the server holds no more. Stops if the
   * stream's epoch changes between pages (older pages would belong to another stream).
   */
  async *historyPages(opts: { before?: number; limit?: number } = {}): AsyncGenerator<HistoryPage, void, undefined> {
    let before = opts.before;
    let epoch: string | undefined;
    for (;;) {
      const page = await this.history({ before, limit: opts.limit });
      if (page.messages.length === 0) return;
      if (epoch !== undefined && page.epoch !== epoch) return;
      epoch = page.epoch;
      yield page;
      const oldest = page.messages[page.messages.length - 1]?.seq;
      if (oldest === undefined || oldest <= 1) return;
      before = oldest;
    }
  }

  /** Leaves the room: no more events, no rejoin. Resolves on `left` (at once when disconnected). */
  leave(): Promise<void> {
    return this.client._leave(this);
  }

  /** Deletes the room (its creator only); resolves on `deleted`, rejects with `forbidden` or `no_such_room`. */
  delete(): Promise<void> {
    return this.client._request({ type: 'delete', room: this.name }, 'delete', this.name);
  }

  /** @internal */
  _emit<K extends keyof RoomEvents>(event: K, payload: RoomEvents[K]): void {
    this.emit(event, payload);
  }
}

/**
 * A corecast connection: `new Corecast(url, options)`, then `connect()`. Reconnects on its
 * own (see {@link CorecastOptions}) and rejoins every room with recovery.
 */
export class Corecast extends Emitter<ClientEvents> {
  /** The server's `ws://…/ws` URL. */
  readonly url: string;
  /** The user id from the last `welcome`. */
  user: string | null = null;
  private readonly opts: CorecastOptions;
  private readonly Ctor: WebSocketConstructor;
  private ws: WebSocketLike | null = null;
  private _state: ConnectionState = 'idle';
  private wanted = false;
  private attempt = 0;
  private connectedAt = 0;
  private retryTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private token: string | undefined;
  private tokenRetried = false;
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly rooms = new Map<string, Room>();
  private queue: Queued[] = [];
  private connectWaiters: Array<{ resolve: (w: Welcome) => void; reject: (e: CorecastError) => void }> = [];
  private closeWaiters: Array<() => void> = [];

  constructor(url: string, options: CorecastOptions = {}) {
    super();
    this.url = url;
    this.opts = options;
    this.token = options.token;
    const ctor = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!ctor) throw new TypeError('corecast-client: no global WebSocket; pass options.WebSocket (e.g. from the `ws` package)');
    this.Ctor = ctor;
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /**
   * Connects (and keeps reconnecting until {@link close}). Resolves with the next `welcome`;
   * rejects with `closed` if the client is closed or gives up first.
   */
  connect(): Promise<Welcome> {
    const promise = new Promise<Welcome>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.wanted) {
      this.wanted = true;
      this.attempt = 0;
      void this.open();
    }
    return promise;
  }

  /** Closes for good (no reconnect); pending requests and queued publishes reject with `closed`. */
  close(code = 1000, reason = 'bye'): Promise<void> {
    this.wanted = false;
    clearTimeout(this.retryTimer);
    clearTimeout(this.refreshTimer);
    const ws = this.ws;
    this.ws = null;
    for (const room of this.rooms.values()) if (room.status === 'joined') room.hadSession = true;
    this.failAll('closed', 'the client was closed');
    this.setState('closed');
    if (!ws) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.closeWaiters.push(resolve));
    ws.onclose = () => {
      const waiters = this.closeWaiters;
      this.closeWaiters = [];
      for (const w of waiters) w();
    };
    try {
      ws.close(code, reason);
    } catch {
      ws.onclose({ code, reason });
    }
    this.emit('disconnected', { code, reason, willReconnect: false });
    return done;
  }

  /** The room named `name` (one object per name); `password` is sent when joining a private room. */
  room(name: string, opts: { password?: string } = {}): Room {
    let room = this.rooms.get(name);
    if (!room) {
      room = new Room(this, name, opts.password);
      this.rooms.set(name, room);
    } else if (opts.password !== undefined) {
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
  request(frame: Frame, opts: { timeoutMs?: number } = {}): Promise<Frame> {
    return this._request({ ...frame }, 'request', str(frame.room), opts.timeoutMs);
  }

  /** Skips the wait of a scheduled reconnect (e.g. when the browser comes back online) and resets the backoff. */
  retryNow(): void {
    if (this._state !== 'reconnecting' || !this.wanted || this.ws) return;
    clearTimeout(this.retryTimer);
    this.attempt = 0;
    void this.open();
  }

  /** Fetches a new token with `getToken` now and sends it with `refresh`; resolves with the new `exp`. */
  async refreshToken(): Promise<number | undefined> {
    if (!this.opts.getToken) throw new CorecastError('invalid_token', 'no getToken option to refresh with');
    const token = await this.opts.getToken();
    const answer: Frame = await this._request({ type: 'refresh', token }, 'refresh');
    this.token = token;
    const exp = int(answer.exp) ?? tokenExpiry(token);
    this.scheduleRefresh(exp);
    this.emit('token', { exp });
    return exp;
  }

  // ───────────── connection ─────────────

  private setState(state: ConnectionState): void {
    this._state = state;
  }

  private async open(): Promise<void> {
    const attempt = this.attempt;
    this.setState(this.connectedAt || attempt > 0 ? 'reconnecting' : 'connecting');
    this.emit('connecting', { attempt });
    let token = this.token;
    if (this.opts.getToken) {
      try {
        token = await this.opts.getToken();
        this.token = token;
      } catch (err) {
        this.emit('error', new CorecastError('invalid_token', `getToken failed: ${String(err)}`));
        this.scheduleReconnect();
        return;
      }
      if (!this.wanted || this.ws) return; // closed, or connected by another path meanwhile
    }
    const url = new URL(this.url);
    let protocols: string[] | undefined;
    if (this.opts.name !== undefined && token === undefined) url.searchParams.set('name', this.opts.name);
    if (token !== undefined) {
      if (this.opts.tokenIn === 'query') url.searchParams.set('token', token);
      else protocols = ['corecast', `bearer.${token}`];
    }
    let ws: WebSocketLike;
    try {
      ws = (protocols ? new this.Ctor(url.href, protocols) : new this.Ctor(url.href)) as WebSocketLike;
    } catch (err) {
      this.emit('error', new CorecastError('disconnected', `cannot open a WebSocket: ${String(err)}`));
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onerror = () => {}; // a close event follows every error
    ws.onmessage = (ev) => {
      if (ws !== this.ws || typeof ev.data !== 'string') return;
      let frame: unknown;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (frame && typeof frame === 'object' && typeof (frame as Frame).type === 'string') this.dispatch(frame as Frame);
    };
    ws.onclose = (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.onClosed(ev.code, ev.reason ?? '');
    };
  }

  private onClosed(code: number, reason: string): void {
    clearTimeout(this.refreshTimer);
    const lived = this.connectedAt ? Date.now() - this.connectedAt : 0;
    if (lived >= (this.opts.backoff?.stableMs ?? 10_000)) this.attempt = 0;
    this.failPending('disconnected', `connection lost (${code}${reason ? ` ${reason}` : ''}) before the server answered`);
    for (const room of this.rooms.values()) {
      if (room.status === 'joined') room.hadSession = true;
      if (room.wanted) room.status = 'joining';
    }
    let retry = this.wanted && this.opts.reconnect !== false;
    let delay: number | undefined;
    // 1012: the server restarts and keeps its history (--data-dir): come back promptly,
    // with the backoff from its start, and recover with `since`.
    if (code === 1012) this.attempt = 0;
    if (FATAL_CLOSES.has(code)) retry = false;
    if (code >= 4000 && code <= 4999 && !this.opts.reconnectOnAppClose) retry = false;
    if (code === 1008) {
      // Only an expired token is worth a retry, once, with a fresh token.
      if (/expired/i.test(reason) && this.opts.getToken && !this.tokenRetried) {
        this.tokenRetried = true;
        delay = 0;
      } else {
        retry = false;
      }
    }
    this.emit('disconnected', { code, reason, willReconnect: retry });
    if (retry) {
      this.scheduleReconnect(delay);
    } else {
      this.wanted = false;
      this.setState('closed');
      this.failAll('closed', `the connection closed (${code}${reason ? ` ${reason}` : ''}) and will not be retried`);
    }
  }

  private scheduleReconnect(delay?: number): void {
    if (!this.wanted) return;
    const base = this.opts.backoff?.baseMs ?? 500;
    const cap = this.opts.backoff?.capMs ?? 30_000;
    const ceiling = Math.min(cap, base * 2 ** this.attempt);
    const min = Math.min(this.opts.backoff?.minMs ?? 0, ceiling);
    const wait = delay ?? Math.floor(min + Math.random() * (ceiling - min)); // full jitter
    this.attempt = Math.min(this.attempt + 1, 30);
    this.setState('reconnecting');
    this.emit('reconnecting', { delay: wait, attempt: this.attempt });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => void this.open(), wait);
  }

  private scheduleRefresh(exp: number | undefined): void {
    clearTimeout(this.refreshTimer);
    if (!this.opts.getToken || exp === undefined) return;
    const before = this.opts.refreshBeforeMs ?? 30_000;
    const wait = Math.max(0, exp * 1000 - Date.now() - before);
    this.refreshTimer = setTimeout(() => {
      this.refreshToken().catch((err) =>
        this.emit('error', err instanceof CorecastError ? err : new CorecastError('invalid_token', String(err))),
      );
    }, Math.min(wait, 2 ** 31 - 1));
  }

  /** Rejects everything waiting on the connection that just ended (queued publishes survive). */
  private failPending(code: ClientErrorCode, message: string): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new CorecastError(code, message, { ref: p.id, room: p.room }));
    }
  }

  /** Rejects every request, queued publish, join and connect() waiter: the client stops. */
  private failAll(code: ClientErrorCode, message: string): void {
    this.failPending(code, message);
    const queue = this.queue;
    this.queue = [];
    for (const q of queue) q.reject(new CorecastError(code, message, { room: q.room.name }));
    for (const room of this.rooms.values()) {
      const waiters = room.waiters;
      room.waiters = [];
      for (const w of waiters) w.reject(new CorecastError(code, message, { room: room.name }));
      if (room.wanted) room.status = 'joining';
    }
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(new CorecastError(code, message));
  }

  private send(frame: Frame): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN || this._state !== 'connected') return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // ───────────── requests ─────────────

  /** @internal */
  _request<T>(frame: Frame, kind: Pending['kind'], room?: string, timeoutMs?: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = `c${this.nextId++}`;
      frame.id = id;
      if (!this.send(frame)) {
        reject(new CorecastError(this.wanted ? 'offline' : 'closed', 'not connected', { room }));
        return;
      }
      const p: Pending = { id, kind, room, resolve, reject, timer: undefined };
      const bound = timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
      p.timer = setTimeout(() => {
        if (this.pending.get(id) !== p) return;
        this.pending.delete(id);
        reject(new CorecastError('timeout', `no answer within ${bound} ms`, { ref: id, room }));
      }, bound);
      this.pending.set(id, p);
    });
  }

  /** The oldest pending request of `kind` about `room` (answers without `ref` come in request order). */
  private take(kind: Pending['kind'], room?: string): Pending | undefined {
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
  _publish(room: Room, frame: Frame, timeoutMs: number | undefined): Promise<number> {
    if (this._state === 'connected') return this._request<Frame>(frame, 'publish', room.name, timeoutMs).then((a) => int(a.seq) ?? NaN);
    if (!this.wanted && this._state !== 'idle') return Promise.reject(new CorecastError('closed', 'the client is closed', { room: room.name }));
    if (this.opts.offline === 'reject') return Promise.reject(new CorecastError('offline', 'not connected', { room: room.name }));
    if (this.queue.length >= (this.opts.maxQueue ?? 100)) {
      return Promise.reject(new CorecastError('queue_full', 'too many publishes queued while disconnected', { room: room.name }));
    }
    return new Promise<number>((resolve, reject) => this.queue.push({ room, frame, timeoutMs, resolve, reject }));
  }

  /** @internal */
  _sendJoin(room: Room): void {
    if (this._state !== 'connected') return; // sent on welcome
    const frame: Frame = { type: room.mode, room: room.name };
    if (room.password !== undefined) frame.password = room.password;
    room.sinceAsked = false;
    room.replayed = 0;
    if (room.mode === 'join' && room.epoch !== null && room.seq !== null) {
      frame.since = { epoch: room.epoch, seq: room.seq };
      room.sinceAsked = true;
    }
    room.status = 'joining';
    this._request<Frame>(frame, 'join', room.name).catch((err: CorecastError) => {
      if (err.code === 'disconnected' || err.code === 'closed') return; // rejoined on the next welcome
      if (err.code === 'timeout') {
        this.rejectJoin(room, err, false);
        return;
      }
      this.rejectJoin(room, err, true);
    });
  }

  private rejectJoin(room: Room, err: CorecastError, final: boolean): void {
    if (final) {
      room.wanted = false;
      room.status = 'idle';
    }
    const waiters = room.waiters;
    room.waiters = [];
    for (const w of waiters) w.reject(err);
    if (waiters.length === 0 && final) room._emit('error', err);
  }

  /** @internal */
  async _leave(room: Room): Promise<void> {
    const was = room.status;
    room.wanted = false;
    room.status = 'idle';
    room.info = null;
    this.rejectJoin(room, new CorecastError('left', 'the room was left before it was joined', { room: room.name }), false);
    const keep: Queued[] = [];
    for (const q of this.queue) {
      if (q.room === room) q.reject(new CorecastError('left', 'the room was left before the publish was sent', { room: room.name }));
      else keep.push(q);
    }
    this.queue = keep;
    if (was === 'idle' || this._state !== 'connected') return;
    await this._request({ type: 'leave', room: room.name }, 'leave', room.name);
  }

  // ───────────── frames ─────────────

  private dispatch(m: Frame): void {
    switch (m.type) {
      case 'welcome':
        return this.onWelcome(m);
      case 'joined':
        return this.onJoined(m);
      case 'message':
        return this.onMessage(m);
      case 'ack': {
        const p = this.pending.get(String(m.ref));
        if (!p) return;
        this.pending.delete(p.id);
        clearTimeout(p.timer);
        p.resolve(m);
        return;
      }
      case 'error':
        return this.onError(m);
      case 'presence': {
        const p = this.take('presence', str(m.room));
        const page: PresencePage = {
          count: int(m.count) ?? 0,
          users: Array.isArray(m.users) ? m.users.filter((u): u is string => typeof u === 'string') : [],
        };
        if (typeof m.next === 'string') page.next = m.next;
        p?.resolve(page);
        return;
      }
      case 'history': {
        const p = this.take('history', str(m.room));
        const messages = Array.isArray(m.messages)
          ? m.messages.filter((x): x is Frame => !!x && typeof x === 'object').map(toMessage)
          : [];
        p?.resolve({ epoch: str(m.epoch) ?? '', messages });
        return;
      }
      case 'join':
      case 'leave': {
        const room = this.rooms.get(str(m.room) ?? '');
        const user = str(m.user);
        if (room && room.wanted && user !== undefined) room._emit(m.type, { user });
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

  private onWelcome(m: Frame): void {
    const welcome: Welcome = { user: str(m.user) ?? '', conn: str(m.conn) ?? '', shard: int(m.shard) ?? 0 };
    if (typeof m.name === 'string') welcome.name = m.name;
    this.user = welcome.user;
    this.connectedAt = Date.now();
    this.tokenRetried = false;
    this.setState('connected');
    for (const room of this.rooms.values()) if (room.wanted) this._sendJoin(room);
    // Joins first: a message sent right after a join is accepted by the server.
    const queue = this.queue;
    this.queue = [];
    for (const q of queue) this._request<Frame>(q.frame, 'publish', q.room.name, q.timeoutMs).then((a) => q.resolve(int(a.seq) ?? NaN), q.reject);
    if (this.token !== undefined) this.scheduleRefresh(tokenExpiry(this.token));
    this.emit('connected', welcome);
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve(welcome);
  }

  private onJoined(m: Frame): void {
    const name = str(m.room) ?? '';
    let room = this.rooms.get(name);
    let subscribed = false;
    if (!room && name !== '') {
      // A room this client never asked for: the server subscribed it (`POST /api/subscribe`).
      room = this.room(name);
      room.wanted = true;
      subscribed = true;
    }
    if (!room || !room.wanted) return; // left meanwhile: the server has our leave queued
    this.take('join', room.name);
    const seq = int(m.seq) ?? 0;
    const epoch = str(m.epoch) ?? '';
    const rejoin = room.hadSession;
    if (room.sinceAsked && m.recovered === true && epoch === room.epoch) {
      if (room.seq === null || room.seq < seq) room.seq = seq;
      room._emit('recovered', { epoch, seq, replayed: room.replayed });
    } else {
      const previousEpoch = room.epoch;
      const previousSeq = room.seq;
      room.epoch = epoch;
      room.seq = seq;
      if (room.sinceAsked) room._emit('resync', { epoch, seq, previousEpoch, previousSeq });
    }
    room.status = 'joined';
    room.sinceAsked = false;
    const info: JoinInfo = { room: room.name, members: int(m.members) ?? 0, seq, epoch, private: m.private === true, rejoin };
    if (typeof m.recovered === 'boolean') info.recovered = m.recovered;
    room.info = info;
    const waiters = room.waiters;
    room.waiters = [];
    for (const w of waiters) w.resolve(info);
    room._emit('joined', info);
    if (subscribed) this.emit('subscribed', room);
  }

  private onMessage(m: Frame): void {
    const name = str(m.room);
    if (name === undefined) return;
    const msg = toMessage(m);
    if (name.startsWith('@')) {
      // Personal pushes and broadcasts: implicit rooms, never rejoined, so nothing to dedupe.
      this.emit(name === '@all' ? 'broadcast' : 'push', msg);
      return;
    }
    const room = this.rooms.get(name);
    if (!room || !room.wanted) return;
    if (msg.seq === undefined) {
      room._emit(m.volatile === true ? 'volatile' : 'message', msg);
      return;
    }
    if (room.seq !== null && msg.seq <= room.seq) return; // already delivered (replay overlap)
    room.seq = msg.seq;
    if (room.status === 'joining') room.replayed += 1;
    room._emit('message', msg);
  }

  private onError(m: Frame): void {
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
