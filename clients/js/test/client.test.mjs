// The client against the real high-templar binary (built by `cargo build`).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';

import { backoffDelay, connect, requestId } from '../dist/index.js';
import { inbox, sleep, startBackend, startDemo, startServer, trigger, waitFor } from './helpers.mjs';

const LOBBY = { target: 'demo', room: 'lobby' };
const OTHER = { target: 'demo', room: 'other' };
/** Fast backoff so reconnect tests do not idle; the logic is the same at any scale. */
const FAST = { backoffInitial: 20, backoffMax: 200 };

test('subscribe and receive publishes', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const [rooms] = await waitFor(ht, 'authorized');
  assert.deepEqual(rooms, [{ target: 'demo', room: '*' }]);
  assert.equal(ht.state, 'authorized');

  const received = inbox();
  const sub = ht.subscribe(LOBBY, (data) => received.push(data));
  await sub.ready;
  const answer = await trigger(server, [LOBBY], { text: 'hello' });
  assert.equal(answer.delivered, 1);
  assert.deepEqual(await received.next(), { text: 'hello' });
});

test('subscriptions made before authorization are sent once authorized', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const received = inbox();
  const sub = ht.subscribe(LOBBY, (data) => received.push(data));
  assert.equal(ht.state, 'connecting');
  await sub.ready;
  await trigger(server, [LOBBY], 1);
  assert.equal(await received.next(), 1);
});

test('a room that is not allowed rejects and is not retried', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const errors = [];
  ht.on('error', (error) => errors.push(error.message));
  const sub = ht.subscribe({ target: 'secret' }, () => {});
  await assert.rejects(sub.ready, /room-not-found/);
  assert.match(errors.join('\n'), /room-not-found/);
  // Answers are matched in order: a later request still gets its own answer.
  const status = await ht.status();
  assert.equal(status.num_rooms, 0);
});

test('unsubscribe stops publishes for that room only', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const lobby = inbox();
  const other = inbox();
  const lobbySub = ht.subscribe(LOBBY, (data) => lobby.push(data));
  const otherSub = ht.subscribe(OTHER, (data) => other.push(data));
  await Promise.all([lobbySub.ready, otherSub.ready]);
  assert.equal((await ht.status()).num_rooms, 2);

  lobbySub.unsubscribe();
  // The status answer comes after the unsubscribe's: the server has dropped the room.
  assert.equal((await ht.status()).num_rooms, 1);
  assert.equal((await trigger(server, [LOBBY], 'gone')).delivered, 0);
  await trigger(server, [OTHER], 'still here');
  assert.equal(await other.next(), 'still here');
  assert.equal(lobby.pending, 0);
});

test('reconnects after the server restarts and restores subscriptions', async (t) => {
  let server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const received = inbox();
  await ht.subscribe(LOBBY, (data) => received.push(data)).ready;
  await trigger(server, [LOBBY], 'before');
  assert.equal(await received.next(), 'before');

  const waiting = waitFor(ht, 'state', (state) => state === 'waiting');
  await server.stop();
  const [, info] = await waiting;
  assert.equal(info.code, 1001, 'the server closes with 1001 (going away) on shutdown');

  const authorized = waitFor(ht, 'authorized');
  server = await startDemo(server.port);
  await authorized;
  // Resubscribing happens as the connection is authorized, so this answer comes after it.
  assert.equal((await ht.status()).num_rooms, 1);
  assert.equal((await trigger(server, [LOBBY], 'after')).delivered, 1);
  assert.equal(await received.next(), 'after');
});

test('unauthorized stops reconnecting', async (t) => {
  const backend = await startBackend(() => ({ status: 403, body: {} }));
  t.after(() => backend.close());
  const server = await startServer(['--api-url', backend.apiUrl]);
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const states = [];
  ht.on('state', (state) => states.push(state));
  await waitFor(ht, 'unauthorized');
  assert.equal(ht.state, 'unauthorized');
  // Many backoff periods later there was still no second attempt.
  await sleep(FAST.backoffMax * 3);
  assert.equal(backend.calls.filter((c) => c.url.endsWith('/bootstrap/')).length, 1);
  assert.deepEqual(states, ['connecting', 'unauthorized']);
});

test('backend unavailable (close 1013) backs off and retries until authorized', async (t) => {
  let answer = { status: 500, body: {} };
  const backend = await startBackend(() => answer);
  t.after(() => backend.close());
  const server = await startServer(['--api-url', backend.apiUrl]);
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const errors = [];
  ht.on('error', (error) => errors.push(error.message));
  const received = inbox();
  const sub = ht.subscribe(LOBBY, (data) => received.push(data));

  const [, info] = await waitFor(ht, 'state', (state) => state === 'waiting');
  assert.equal(info.code, 1013);
  assert.match(errors[0], /backend-unavailable/);
  answer = { status: 200, body: { allowed_rooms: [LOBBY] } };
  await waitFor(ht, 'authorized');
  await sub.ready;
  assert.ok(backend.calls.filter((c) => c.url.endsWith('/bootstrap/')).length >= 2);
});

test('a connection that stops answering pings is dropped and reopened', async (t) => {
  // A real websocket server that authorizes, then ignores everything: a half-dead peer.
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((resolve) => wss.once('listening', resolve));
  t.after(() => {
    for (const socket of wss.clients) socket.terminate();
    return new Promise((resolve) => wss.close(resolve));
  });
  let connections = 0;
  wss.on('connection', (socket) => {
    connections += 1;
    socket.send(JSON.stringify({ is_authorized: true, allowed_rooms: [] }));
  });
  const ht = connect(`ws://127.0.0.1:${wss.address().port}/ws/`, {
    ...FAST,
    pingInterval: 20,
    deadAfter: 50,
  });
  t.after(() => ht.close());
  await waitFor(ht, 'authorized');
  const [error] = await waitFor(ht, 'error');
  assert.match(error.message, /no answer from server/);
  await waitFor(ht, 'authorized');
  assert.equal(connections, 2);
});

test('close() is final', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  await waitFor(ht, 'authorized');
  const states = [];
  ht.on('state', (state) => states.push(state));
  ht.close();
  assert.equal(ht.state, 'closed');
  await assert.rejects(ht.status(), /not connected/);
  assert.deepEqual(states, ['closed']);
});

test('request ids are UUIDs and backoff stays within its cap', () => {
  assert.match(requestId(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  for (let attempt = 0; attempt < 50; attempt++) {
    const delay = backoffDelay(attempt, 500, 30_000);
    assert.ok(delay >= 0 && delay < Math.min(30_000, 500 * 2 ** attempt), `${attempt}: ${delay}`);
  }
});
