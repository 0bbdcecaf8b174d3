// Test helpers: the real high-templar binary on a free port, a tiny real HTTP backend, and
// waiting for client events with a deadline (so a broken client fails instead of hanging).
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

import { WebSocket as NodeWebSocket } from 'ws';

/** How long a test waits for something that should happen. */
export const WAIT_MS = 10_000;

export const BINARY =
  process.env.HT_BINARY ??
  fileURLToPath(new URL('../../../target/debug/high-templar', import.meta.url));

export async function freePort() {
  const server = net.createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Starts the binary with `args` on `port`; resolves once it accepts TCP connections. */
export async function startServer(args, port) {
  port ??= await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HT_')));
  const child = spawn(BINARY, [...args, '--listen', `127.0.0.1:${port}`], {
    env: { ...env, RUST_LOG: 'error', NO_COLOR: '1' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    if (exited) throw new Error(`server exited early: ${JSON.stringify(exited)}`);
    if (await canConnect(port)) break;
    if (Date.now() > deadline) throw new Error('server did not start listening');
    await sleep(25);
  }
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws/`,
    http: `http://127.0.0.1:${port}`,
    async stop() {
      if (exited) return;
      const done = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await done;
    },
  };
}

export const startDemo = (port) => startServer(['--demo'], port);

function canConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** A real HTTP backend: `reply()` gives `{status, body}` for each bootstrap call. */
export async function startBackend(reply) {
  const calls = [];
  const server = createServer((req, res) => {
    calls.push({ url: req.url, headers: req.headers });
    const { status, body } = req.url.endsWith('/bootstrap/') ? reply() : { status: 200, body: {} };
    res.writeHead(status, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify(body));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    apiUrl: `http://127.0.0.1:${server.address().port}/api/`,
    calls,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** The node's status over HTTP (demo mode), readable while a client's socket is stalled. */
export async function demoStatus(server) {
  const response = await fetch(`${server.http}/demo/status`);
  return response.json();
}

/**
 * A WebSocket implementation for `connect(url, { WebSocket })` that lets a test reach the real
 * sockets (`last()`: a `ws` WebSocket, to `terminate()` or pause) and hold new connections
 * back (`hold()` ... `release()`), so what happens while the client is away is deterministic.
 */
export function controlledWebSocket() {
  const sockets = [];
  let gate = null;
  let release = () => {};
  class ControlledWebSocket {
    constructor(url) {
      this.inner = null;
      this.abandoned = false;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      const start = () => {
        if (this.abandoned) return;
        const ws = new NodeWebSocket(url);
        this.inner = ws;
        sockets.push(ws);
        ws.onopen = (event) => this.onopen?.(event);
        ws.onmessage = (event) => this.onmessage?.(event);
        ws.onclose = (event) => this.onclose?.(event);
        ws.onerror = (event) => this.onerror?.(event);
      };
      if (gate) gate.then(start);
      else start();
    }
    get readyState() {
      if (this.inner) return this.inner.readyState;
      return this.abandoned ? NodeWebSocket.CLOSED : NodeWebSocket.CONNECTING;
    }
    send(data) {
      this.inner.send(data);
    }
    close(code, reason) {
      if (this.inner) this.inner.close(code, reason);
      else this.abandoned = true;
    }
  }
  return {
    WebSocket: ControlledWebSocket,
    sockets,
    last: () => sockets[sockets.length - 1],
    /** Connections opened from now on wait for `release()`. */
    hold() {
      gate ??= new Promise((resolve) => (release = resolve));
    },
    release() {
      gate = null;
      release();
    },
  };
}

/** POSTs a trigger; in demo mode no token is needed. */
export async function trigger(server, rooms, data) {
  const response = await fetch(`${server.http}/trigger/`, {
    method: 'POST',
    body: JSON.stringify({ rooms, data }),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`trigger refused: ${JSON.stringify(answer)}`);
  return answer;
}

/** POSTs a batch of triggers (a JSON list) in one request. */
export async function triggerBatch(server, triggers) {
  const response = await fetch(`${server.http}/trigger/`, {
    method: 'POST',
    body: JSON.stringify(triggers),
  });
  const answer = await response.json();
  if (!response.ok) throw new Error(`trigger refused: ${JSON.stringify(answer)}`);
  return answer;
}

/** Resolves with the event's arguments when `predicate(...args)` holds; rejects after WAIT_MS. */
export function waitFor(ht, event, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no '${event}' event in time (state: ${ht.state})`));
    }, WAIT_MS);
    const off = ht.on(event, (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

/** A queue of received publish data, read one at a time with a deadline. */
export function inbox() {
  const items = [];
  const waiters = [];
  return {
    push(data) {
      const waiter = waiters.shift();
      if (waiter) waiter(data);
      else items.push(data);
    },
    next() {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no publish in time')), WAIT_MS);
        waiters.push((data) => {
          clearTimeout(timer);
          resolve(data);
        });
      });
    },
    get pending() {
      return items.length;
    },
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
