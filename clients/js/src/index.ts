/**
 * high-templar-client: one websocket to a high-templar server, rooms to subscribe to, and
 * the reconnect logic every frontend would otherwise write by hand.
 *
 * Protocol quirks handled here (see PROTOCOL.md):
 * - Answers to subscribe/unsubscribe/status carry no requestId: the server answers in order,
 *   so pending requests are a FIFO and each answer settles the oldest one. `pong` and publish
 *   frames are not answers.
 * - The first frame says whether the backend authorised us. `is_authorized: false` without an
 *   error is final (logged out): no reconnect. With `error: "backend-unavailable"` (close
 *   1013) the backend is down: back off and retry.
 * - Subscriptions live on one connection; after a reconnect every one is sent again.
 * - Subscriptions with `recover` (PROTOCOL.md section 7) keep the epoch and the last position
 *   received, and come back with `since` after a reconnect or a gap notice, so the server
 *   replays what they missed. Every (re)send uses a fresh requestId: a frame for an older id is
 *   from a subscription already replaced, and is dropped.
 */

/** A room: a flat JSON object, e.g. `{target: 'message', customer: '1'}`. */
export type Room = Record<string, string | number | boolean | null>;

/**
 * Where the client is:
 * - `connecting`: socket opening, or waiting for the server's first frame;
 * - `authorized`: ready; subscriptions are (being) sent;
 * - `waiting`: disconnected, reconnecting after a backoff delay;
 * - `unauthorized`: the backend refused us; final;
 * - `closed`: `close()` was called; final.
 */
export type State = 'connecting' | 'authorized' | 'waiting' | 'unauthorized' | 'closed';

/** Extra facts about a state change. */
export interface StateInfo {
  /** In `waiting`: milliseconds until the next attempt. */
  delay?: number;
  /** In `waiting`: consecutive failed attempts so far. */
  attempt?: number;
  /** Close code of the socket that ended, when there was one. */
  code?: number;
}

/** The minimal WebSocket surface used, met by browsers' WebSocket and the `ws` package. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface Options {
  /** Sent as `?token=`; the server forwards it to the backend as `Authorization: Token <t>`. */
  token?: string;
  /** WebSocket implementation; default: the global one, else the `ws` package (Node). */
  WebSocket?: WebSocketConstructor;
  /** Milliseconds between keep-alive `ping`s; well under the server's 300 s idle timeout. */
  pingInterval?: number;
  /** A connection that does not answer a ping this fast (ms) is dead. */
  deadAfter?: number;
  /** A connection whose first frame (the server asks the backend first) takes longer is dead. */
  connectTimeout?: number;
  /** First reconnect delay ceiling, in ms; doubles per failed attempt... */
  backoffInitial?: number;
  /** ...up to this ceiling. The actual delay is uniform in [0, ceiling) ("full jitter"). */
  backoffMax?: number;
}

/** Defaults: a ping every 25 s costs ~nothing and keeps proxies with 60 s timeouts open. */
export const DEFAULTS = {
  pingInterval: 25_000,
  deadAfter: 10_000,
  // Above the server's default backend timeout (10 s), which answers backend-unavailable.
  connectTimeout: 20_000,
  backoffInitial: 500,
  backoffMax: 30_000,
} as const;

/** The server's close code for "try again later" (backend unavailable). */
export const CLOSE_TRY_AGAIN_LATER = 1013;

export interface Events {
  state: (state: State, info: StateInfo) => void;
  authorized: (allowedRooms: Room[]) => void;
  unauthorized: () => void;
  error: (error: Error) => void;
  /**
   * A subscription with `recover` came back (after a reconnect or a gap): `true` when the
   * server replays what it missed (those publishes follow, marked `replayed`), `false` when it
   * cannot (restarted, history too short): refetch this room's state from the API.
   */
  recovered: (subscription: Subscription, recovered: boolean) => void;
  /**
   * The server dropped publishes of this subscription (the connection fell behind); `offset`
   * is the newest one lost. The client resumes at once; `recovered` follows.
   */
  gap: (subscription: Subscription, offset: number) => void;
}

export interface SubscribeOptions {
  /**
   * Keep this subscription's position and resume from it after every reconnect and gap
   * notice: nothing published meanwhile is lost while the server's history holds it
   * (PROTOCOL.md section 7). Default false: the 3.1 protocol, byte for byte.
   */
  recover?: boolean;
}

/** What onData learns besides the trigger's data. */
export interface PublishInfo {
  /** The trigger's position; only on subscriptions with `recover`. */
  offset?: number;
  /** Replayed from the server's history after a resume, not live. */
  replayed: boolean;
}

export type OnData = (data: unknown, info: PublishInfo) => void;

/** Where a subscription with `recover` is in the server's sequence. */
export interface Position {
  epoch: string;
  /** The last position received (or, before any publish, the newest when it subscribed). */
  offset: number;
}

/** One room subscription; survives reconnects until `unsubscribe()`. */
export interface Subscription {
  readonly room: Room;
  /** Whether it was made with `recover`. */
  readonly recover: boolean;
  /** With `recover`: where it resumes from; null until the server first answered. */
  readonly position: Position | null;
  /** Resolves when the server first accepted it; rejects if the room is not allowed. */
  readonly ready: Promise<void>;
  unsubscribe(): void;
}

/** A connection, made by {@link connect}. */
export interface HighTemplar {
  readonly state: State;
  /** Rooms the backend allows, from the last authorisation. */
  readonly allowedRooms: Room[];
  on<E extends keyof Events>(event: E, listener: Events[E]): () => void;
  /**
   * Subscribes to `room`; `onData` gets every publish, at most once and in order. The
   * returned object is the one the `recovered` and `gap` events name.
   */
  subscribe(room: Room, onData: OnData, options?: SubscribeOptions): Subscription;
  /** The server's status object (PROTOCOL.md section 5). */
  status(): Promise<Record<string, unknown>>;
  /** Closes for good: no reconnect. */
  close(): void;
}

/** Opens a connection to `url` (e.g. `wss://example.com/ws/`) and keeps it open. */
export function connect(url: string, options: Options = {}): HighTemplar {
  return new Client(url, options);
}

/** A v4 UUID; `crypto.randomUUID` exists only in secure contexts, hence the fallback. */
export function requestId(): string {
  const c = (globalThis as any).crypto;
  if (c && typeof c.randomUUID === 'function') return c.randomUUID();
  const hex = [...Array(32)].map(() => Math.floor(Math.random() * 16).toString(16));
  hex[12] = '4';
  hex[16] = ((parseInt(hex[16], 16) & 3) | 8).toString(16);
  const s = hex.join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}

/** Full-jitter backoff: uniform in [0, min(max, initial * 2^attempt)). */
export function backoffDelay(attempt: number, initial: number, max: number): number {
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.floor(Math.random() * ceiling);
}

interface Sub {
  room: Room;
  onData: OnData;
  recover: boolean;
  /** What the app holds: the object events name. */
  handle: Subscription;
  /** The requestId on the current connection; null when not (yet) sent on it. */
  requestId: string | null;
  confirmed: boolean;
  /** With `recover`: the epoch of the last answer, null before any. */
  epoch: string | null;
  /** With `recover`: the last position received; a publish at or below it is a duplicate. */
  offset: number | null;
  /** Publishes up to this position are replays (the top of the last `recovered: true`). */
  replayedThrough: number | null;
  resolve: () => void;
  reject: (error: Error) => void;
}

type Pending =
  | { kind: 'subscribe'; sub: Sub; requestId: string; resume: boolean }
  | { kind: 'unsubscribe' }
  | { kind: 'status'; resolve: (v: Record<string, unknown>) => void; reject: (e: Error) => void };

const OPEN = 1;

class Client implements HighTemplar {
  private _state: State = 'connecting';
  private _allowedRooms: Room[] = [];
  private readonly listeners: { [E in keyof Events]: Set<Events[E]> } = {
    state: new Set(),
    authorized: new Set(),
    unauthorized: new Set(),
    error: new Set(),
    recovered: new Set(),
    gap: new Set(),
  };
  private readonly subs = new Set<Sub>();
  /** requestId → subscription, for the current connection. */
  private readonly byRequestId = new Map<string, Sub>();
  private pending: Pending[] = [];
  private socket: WebSocketLike | null = null;
  private attempt = 0;
  private timers: { ping?: any; dead?: any; retry?: any } = {};
  private readonly opts: Required<Omit<Options, 'token' | 'WebSocket'>> & Options;

  constructor(private readonly url: string, options: Options) {
    this.opts = { ...DEFAULTS, ...options };
    // Listeners are attached synchronously after connect() returns; open after that.
    setTimeout(() => this.open(), 0);
  }

  get state(): State {
    return this._state;
  }

  get allowedRooms(): Room[] {
    return this._allowedRooms;
  }

  on<E extends keyof Events>(event: E, listener: Events[E]): () => void {
    this.listeners[event].add(listener);
    return () => this.listeners[event].delete(listener);
  }

  subscribe(room: Room, onData: OnData, options: SubscribeOptions = {}): Subscription {
    let resolve!: () => void;
    let reject!: (error: Error) => void;
    const ready = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // A caller that never awaits `ready` must not get an unhandled rejection.
    ready.catch(() => {});
    const recover = options.recover === true;
    const sub: Sub = {
      room,
      onData,
      recover,
      handle: {
        room,
        recover,
        get position() {
          return sub.epoch !== null && sub.offset !== null
            ? { epoch: sub.epoch, offset: sub.offset }
            : null;
        },
        ready,
        unsubscribe: () => this.unsubscribe(sub),
      },
      requestId: null,
      confirmed: false,
      epoch: null,
      offset: null,
      replayedThrough: null,
      resolve,
      reject,
    };
    this.subs.add(sub);
    if (this._state === 'authorized') this.sendSubscribe(sub);
    return sub.handle;
  }

  status(): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      if (this._state !== 'authorized' || !this.socket) {
        reject(new Error(`not connected (state: ${this._state})`));
        return;
      }
      this.pending.push({ kind: 'status', resolve, reject });
      this.socket.send(JSON.stringify({ type: 'status' }));
    });
  }

  close(): void {
    if (this._state === 'closed') return;
    this.teardown(1000);
    this.setState('closed', {});
  }

  // --- connection lifecycle -------------------------------------------------------------

  private async open(): Promise<void> {
    if (this._state === 'closed' || this._state === 'unauthorized') return;
    this.setState('connecting', {});
    let Impl: WebSocketConstructor;
    try {
      Impl = this.opts.WebSocket ?? (await defaultWebSocket());
    } catch (error) {
      this.emit('error', asError(error));
      this.setState('closed', {});
      return;
    }
    if (this._state !== 'connecting') return; // closed while loading `ws`
    let socket: WebSocketLike;
    try {
      socket = new Impl(withToken(this.url, this.opts.token));
    } catch (error) {
      this.emit('error', asError(error));
      this.retry(undefined);
      return;
    }
    this.socket = socket;
    let first = true;
    // Until the first frame, the bootstrap call is the one that may hang.
    this.armDeadTimer(this.opts.connectTimeout);
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      const text = typeof event.data === 'string' ? event.data : String(event.data);
      if (first) {
        first = false;
        this.onFirstFrame(text);
      } else {
        this.onFrame(text);
      }
    };
    socket.onclose = (event) => {
      if (socket !== this.socket) return;
      this.teardown(undefined);
      this.retry(event.code);
    };
    socket.onerror = () => {
      // Always followed by a close event, which decides what happens next.
    };
  }

  private onFirstFrame(text: string): void {
    clearTimeout(this.timers.dead);
    this.timers.dead = undefined;
    let hello: any;
    try {
      hello = JSON.parse(text);
    } catch {
      hello = null;
    }
    if (hello && hello.is_authorized === true) {
      this.attempt = 0;
      this._allowedRooms = Array.isArray(hello.allowed_rooms) ? hello.allowed_rooms : [];
      this.setState('authorized', {});
      this.emit('authorized', this._allowedRooms);
      for (const sub of this.subs) this.sendSubscribe(sub);
      this.timers.ping = setInterval(() => this.ping(), this.opts.pingInterval);
      return;
    }
    if (hello && hello.is_authorized === false && !hello.error) {
      this.teardown(1000);
      this.setState('unauthorized', {});
      this.emit('unauthorized');
      return;
    }
    // backend-unavailable (or something unexpected): the server closes with 1013; retry.
    const reason = hello && hello.error ? hello.error : `unexpected first frame: ${text.slice(0, 100)}`;
    this.emit('error', new Error(`server: ${reason}`));
    this.teardown(undefined);
    this.retry(CLOSE_TRY_AGAIN_LATER);
  }

  private onFrame(text: string): void {
    if (text === 'pong') {
      clearTimeout(this.timers.dead);
      this.timers.dead = undefined;
      return;
    }
    let frame: any;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit('error', new Error(`non-JSON frame from server: ${text.slice(0, 100)}`));
      return;
    }
    if (frame && typeof frame.type === 'string') {
      // Frames with a type are never answers; an unknown id is a subscription unsubscribed or
      // replaced locally that the server has not dropped yet.
      const sub = this.byRequestId.get(frame.requestId);
      if (!sub) return;
      if (frame.type === 'publish') this.onPublish(sub, frame);
      else if (frame.type === 'gap') this.onGap(sub, frame);
      else if (frame.type === 'unsubscribed') this.onRevoked(sub);
      return;
    }
    const request = this.pending.shift();
    if (!request) {
      this.emit('error', new Error(`unexpected frame from server: ${text.slice(0, 100)}`));
      return;
    }
    const failed = frame && frame.code === 'error';
    switch (request.kind) {
      case 'subscribe': {
        const sub = request.sub;
        if (!failed) {
          if (!sub.confirmed) sub.resolve();
          sub.confirmed = true;
          // An answer for an older requestId (unsubscribed since) moves nothing.
          if (sub.recover && request.requestId === sub.requestId) {
            this.onSubscribed(sub, frame, request.resume);
          }
          return;
        }
        // Not allowed: retrying after a reconnect would fail the same way.
        if (sub.requestId) this.byRequestId.delete(sub.requestId);
        if (this.subs.delete(sub)) {
          const error = new Error(`subscribe ${JSON.stringify(sub.room)}: ${frame.message}`);
          sub.reject(error);
          this.emit('error', error);
        }
        return;
      }
      case 'unsubscribe':
        return; // not-subscribed only means it was already gone
      case 'status':
        if (failed) request.reject(new Error(`status: ${frame.message}`));
        else request.resolve(frame);
    }
  }

  /**
   * Sends `sub` under a fresh requestId: plain, or with `recover` either `since` its position
   * (a resume) or `recover: true` (first time, or no position to resume from).
   */
  private sendSubscribe(sub: Sub): void {
    if (!this.socket || this.socket.readyState !== OPEN) return;
    const id = requestId();
    sub.requestId = id;
    this.byRequestId.set(id, sub);
    const message: Record<string, unknown> = { type: 'subscribe', room: sub.room, requestId: id };
    // Resubscribing a subscription the app already had is a resume, whether or not a position
    // is known: the app hears `recovered` either way.
    let resume = false;
    if (sub.recover) {
      resume = sub.confirmed;
      if (sub.epoch !== null && sub.offset !== null) {
        message.since = { epoch: sub.epoch, offset: sub.offset };
      } else {
        message.recover = true;
      }
    }
    this.pending.push({ kind: 'subscribe', sub, requestId: id, resume });
    this.socket.send(JSON.stringify(message));
  }

  /** The server accepted a subscription with `recover`: note where it starts. */
  private onSubscribed(sub: Sub, answer: any, resume: boolean): void {
    const epoch = typeof answer.epoch === 'string' ? answer.epoch : null;
    const top = typeof answer.offset === 'number' ? answer.offset : null;
    const recovered = resume && answer.recovered === true && epoch !== null && top !== null;
    if (recovered) {
      // What it missed follows: positions up to the top are replays.
      sub.replayedThrough = top;
    } else {
      // A fresh start (or a server without positions): nothing before the top will come.
      sub.offset = top;
      sub.replayedThrough = null;
    }
    sub.epoch = epoch;
    if (resume) this.emit('recovered', sub.handle, recovered);
  }

  private onPublish(sub: Sub, frame: any): void {
    const offset = typeof frame.offset === 'number' ? frame.offset : undefined;
    if (sub.recover && offset !== undefined) {
      // Overlapping resumes may send a position twice: at most once, in order.
      if (sub.offset !== null && offset <= sub.offset) return;
      sub.offset = offset;
    }
    const replayed =
      offset !== undefined && sub.replayedThrough !== null && offset <= sub.replayedThrough;
    sub.onData(frame.data, { offset, replayed });
  }

  /** Publishes were dropped: resume on this connection from the last one received. */
  private onGap(sub: Sub, frame: any): void {
    if (!sub.recover || !this.socket || this.socket.readyState !== OPEN) return;
    // The old subscription goes (its frames still in flight are dropped: the resume replays
    // them), then the new one comes back `since` the last position received.
    const old = sub.requestId;
    if (old) {
      this.byRequestId.delete(old);
      this.pending.push({ kind: 'unsubscribe' });
      this.socket.send(JSON.stringify({ type: 'unsubscribe', requestId: old }));
    }
    this.sendSubscribe(sub);
    // After the resume is sent: a listener may unsubscribe or close.
    this.emit('gap', sub.handle, typeof frame.offset === 'number' ? frame.offset : NaN);
  }

  /** The server dropped a room no longer allowed (re-authorisation): retrying would fail. */
  private onRevoked(sub: Sub): void {
    if (sub.requestId) this.byRequestId.delete(sub.requestId);
    sub.requestId = null;
    if (this.subs.delete(sub)) {
      this.emit('error', new Error(`subscribe ${JSON.stringify(sub.room)}: revoked by the server`));
    }
  }

  private unsubscribe(sub: Sub): void {
    if (!this.subs.delete(sub)) return;
    const id = sub.requestId;
    sub.requestId = null;
    if (!id) return;
    this.byRequestId.delete(id);
    if (this._state === 'authorized' && this.socket && this.socket.readyState === OPEN) {
      this.pending.push({ kind: 'unsubscribe' });
      this.socket.send(JSON.stringify({ type: 'unsubscribe', requestId: id }));
    }
  }

  private ping(): void {
    if (!this.socket || this.socket.readyState !== OPEN) return;
    this.socket.send('ping');
    // Still waiting for the previous pong: its deadline stands, or frequent pings would
    // postpone it forever.
    if (this.timers.dead === undefined) this.armDeadTimer(this.opts.deadAfter);
  }

  /** No answer in time: the network may hold a dead TCP connection for minutes; drop it. */
  private armDeadTimer(ms: number): void {
    clearTimeout(this.timers.dead);
    this.timers.dead = setTimeout(() => {
      this.emit('error', new Error(`no answer from server in ${ms} ms`));
      this.teardown(4000);
      this.retry(undefined);
    }, ms);
  }

  /** Drops the socket and per-connection state; subscriptions stay for the next one. */
  private teardown(code: number | undefined): void {
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.dead);
    clearTimeout(this.timers.retry);
    this.timers = {};
    const socket = this.socket;
    this.socket = null;
    if (socket) {
      socket.onmessage = socket.onclose = socket.onerror = socket.onopen = null;
      try {
        socket.close(code);
      } catch {
        // Closing a socket that never opened can throw; it is gone either way.
      }
    }
    this.byRequestId.clear();
    for (const sub of this.subs) sub.requestId = null;
    const pending = this.pending;
    this.pending = [];
    for (const request of pending) {
      if (request.kind === 'status') request.reject(new Error('connection lost'));
    }
  }

  private retry(code: number | undefined): void {
    if (this._state === 'closed' || this._state === 'unauthorized') return;
    const delay = backoffDelay(this.attempt, this.opts.backoffInitial, this.opts.backoffMax);
    this.attempt += 1;
    this.setState('waiting', { delay, attempt: this.attempt, code });
    this.timers.retry = setTimeout(() => this.open(), delay);
  }

  // --- events ---------------------------------------------------------------------------

  private setState(state: State, info: StateInfo): void {
    this._state = state;
    this.emit('state', state, info);
  }

  private emit<E extends keyof Events>(event: E, ...args: Parameters<Events[E]>): void {
    for (const listener of this.listeners[event]) {
      try {
        (listener as (...a: Parameters<Events[E]>) => void)(...args);
      } catch (error) {
        // A throwing listener must not break the connection logic.
        setTimeout(() => {
          throw error;
        }, 0);
      }
    }
  }
}

function withToken(url: string, token: string | undefined): string {
  if (!token) return url;
  return `${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
}

async function defaultWebSocket(): Promise<WebSocketConstructor> {
  const global = (globalThis as any).WebSocket;
  if (typeof global === 'function') return global;
  // A variable keeps bundlers from pulling the Node-only `ws` package into browser builds.
  const name = 'ws';
  const mod: any = await import(name);
  return mod.WebSocket ?? mod.default;
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
