// Subscriptions with `recover` (PROTOCOL.md section 7) against the real high-templar binary:
// resume after a dropped socket, a restarted server, a gap notice; and, against a scripted
// fake server, the client's own promises (at most once, in order; stale frames dropped).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';

import { connect } from '../dist/index.js';
import {
  WAIT_MS,
  controlledWebSocket,
  demoStatus,
  inbox,
  sleep,
  startDemo,
  startServer,
  trigger,
  triggerBatch,
  waitFor,
} from './helpers.mjs';

const LOBBY = { target: 'demo', room: 'lobby' };
const OTHER = { target: 'demo', room: 'other' };
/** Fast backoff so reconnect tests do not idle; the logic is the same at any scale. */
const FAST = { backoffInitial: 20, backoffMax: 200 };

/** Subscribes with `recover`; publishes land in the returned inbox as `{data, offset, replayed}`. */
function recovering(ht, room) {
  const received = inbox();
  const sub = ht.subscribe(room, (data, info) => received.push({ data, ...info }), {
    recover: true,
  });
  return { sub, received };
}

/** Collects `count` events, resolving with their argument lists; rejects after WAIT_MS. */
function collect(ht, event, count) {
  const seen = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`${seen.length} of ${count} '${event}' events in time`));
    }, WAIT_MS);
    const off = ht.on(event, (...args) => {
      seen.push(args);
      if (seen.length < count) return;
      clearTimeout(timer);
      off();
      resolve(seen);
    });
  });
}

test('after the socket drops, the publishes missed are replayed in order, then live ones', async (t) => {
  const server = await startDemo();
  t.after(() => server.stop());
  const sockets = controlledWebSocket();
  const ht = connect(server.url, { ...FAST, WebSocket: sockets.WebSocket });
  t.after(() => ht.close());
  const lobby = recovering(ht, LOBBY);
  const other = recovering(ht, OTHER);
  // A 3.1-style subscription beside them: no positions, no replay.
  const plain = inbox();
  const plainSub = ht.subscribe(LOBBY, (data, info) => plain.push({ data, ...info }));
  await Promise.all([lobby.sub.ready, other.sub.ready, plainSub.ready]);
  assert.equal(lobby.sub.position.offset, 0, 'a fresh node has taken in nothing');
  assert.equal(plainSub.position, null);

  await trigger(server, [LOBBY], 'before');
  assert.deepEqual(await lobby.received.next(), { data: 'before', offset: 1, replayed: false });
  assert.deepEqual(await plain.next(), { data: 'before', offset: undefined, replayed: false });
  assert.deepEqual(lobby.sub.position, { epoch: lobby.sub.position.epoch, offset: 1 });

  // Away: the socket dies, and the client may not reconnect until the triggers are in.
  sockets.hold();
  const waiting = waitFor(ht, 'state', (state) => state === 'waiting');
  sockets.last().terminate();
  await waiting;
  for (const n of [1, 2, 3]) await trigger(server, [LOBBY], `missed ${n}`);
  await trigger(server, [OTHER], 'missed elsewhere');

  const recovered = collect(ht, 'recovered', 2);
  sockets.release();
  const events = await recovered;
  const byRoom = new Map(events.map(([sub, ok]) => [sub, ok]));
  assert.equal(byRoom.get(lobby.sub), true, 'the event names the lobby subscription');
  assert.equal(byRoom.get(other.sub), true, 'the event names the other subscription');
  assert.equal(events.length, 2, 'plain subscriptions have nothing to recover');

  for (const [n, offset] of [[1, 2], [2, 3], [3, 4]]) {
    assert.deepEqual(await lobby.received.next(), { data: `missed ${n}`, offset, replayed: true });
  }
  assert.deepEqual(await other.received.next(), {
    data: 'missed elsewhere',
    offset: 5,
    replayed: true,
  });
  // The status answer comes after every resubscription's: all three are live again.
  await ht.status();
  await trigger(server, [LOBBY], 'live');
  assert.deepEqual(await lobby.received.next(), { data: 'live', offset: 6, replayed: false });
  // The plain subscription lost what was published while away, as in 3.1.
  assert.deepEqual(await plain.next(), { data: 'live', offset: undefined, replayed: false });
  assert.equal(lobby.received.pending + other.received.pending + plain.pending, 0);
  assert.equal(sockets.sockets.length, 2);
});

test('after a server restart (a new epoch) the client hears recovered=false and goes on', async (t) => {
  let server = await startDemo();
  t.after(() => server.stop());
  const ht = connect(server.url, FAST);
  t.after(() => ht.close());
  const lobby = recovering(ht, LOBBY);
  await lobby.sub.ready;
  const oldEpoch = lobby.sub.position.epoch;
  await trigger(server, [LOBBY], 1);
  await trigger(server, [LOBBY], 2);
  assert.equal((await lobby.received.next()).offset, 1);
  assert.equal((await lobby.received.next()).offset, 2);

  const recovered = waitFor(ht, 'recovered');
  await server.stop();
  server = await startDemo(server.port);
  const [sub, ok] = await recovered;
  assert.equal(sub, lobby.sub);
  assert.deepEqual(sub.room, LOBBY);
  assert.equal(ok, false, 'the old epoch cannot be recovered: refetch the room');
  assert.notEqual(sub.position.epoch, oldEpoch);
  assert.equal(sub.position.offset, 0);

  // The new epoch counts from 1 again: not mistaken for a duplicate of the old offset 1.
  await trigger(server, [LOBBY], 'after');
  assert.deepEqual(await lobby.received.next(), { data: 'after', offset: 1, replayed: false });
});

test('a client that falls behind gets a gap notice and resumes on the same connection', async (t) => {
  // Eight frames of outgoing queue: a stalled reader overflows it quickly.
  const server = await startServer(['--demo', '--outgoing-queue', '8']);
  t.after(() => server.stop());
  const sockets = controlledWebSocket();
  const ht = connect(server.url, { ...FAST, WebSocket: sockets.WebSocket });
  t.after(() => ht.close());
  const seen = [];
  const sub = ht.subscribe(LOBBY, (data, info) => seen.push({ n: data.n, ...info }), {
    recover: true,
  });
  await sub.ready;
  const states = [];
  ht.on('state', (state) => states.push(state));
  const gaps = [];
  ht.on('gap', (gapSub, offset) => gaps.push({ sub: gapSub, offset }));
  const recovered = waitFor(ht, 'recovered');

  // Stop reading; publish more than the kernel's socket buffers and the queue hold together.
  sockets.last()._socket.pause();
  const TOTAL = 400;
  const BATCH = 20;
  const pad = 'p'.repeat(32 * 1024);
  for (let first = 1; first <= TOTAL; first += BATCH) {
    const batch = [];
    for (let n = first; n < first + BATCH; n++) batch.push({ rooms: [LOBBY], data: { n, pad } });
    await triggerBatch(server, batch);
  }
  const status = await demoStatus(server);
  assert.ok(status.gap_drops > 0, `the server dropped publishes: ${JSON.stringify(status)}`);
  sockets.last()._socket.resume();

  const [recoveredSub, ok] = await recovered;
  assert.equal(recoveredSub, sub);
  assert.equal(ok, true);
  const deadline = Date.now() + WAIT_MS;
  while (seen.length < TOTAL && Date.now() < deadline) await sleep(20);
  assert.deepEqual(
    seen.map((p) => p.n),
    Array.from({ length: TOTAL }, (_, i) => i + 1),
    'every trigger exactly once, in order',
  );
  assert.deepEqual(seen.map((p) => p.offset), seen.map((p) => p.n), 'offsets are positions');
  assert.ok(gaps.length >= 1 && gaps.every((g) => g.sub === sub), JSON.stringify(gaps));
  // Live up to the last one received before the gap (none, when the server dropped every
  // queued publish before the first was written: PROTOCOL.md section 7 drops the queued
  // ones), replayed from there on (later notices name the replaced subscription and are
  // dropped with its frames).
  const firstReplayed = seen.findIndex((p) => p.replayed);
  assert.ok(firstReplayed >= 0, 'the lost ones came back as replays');
  assert.ok(seen.slice(firstReplayed).every((p) => p.replayed));
  const lastLive = firstReplayed > 0 ? seen[firstReplayed - 1].offset : 0;
  assert.ok(gaps[0].offset > lastLive, 'the gap names a publish not received');
  assert.deepEqual(states, [], 'the connection stayed open');
  assert.equal(sockets.sockets.length, 1);
  assert.equal((await demoStatus(server)).slow_client_disconnects, 0);
});

test('publishes are delivered at most once and in order; frames of replaced subscriptions are dropped', async (t) => {
  // A scripted server: the real one never sends duplicates, so this plays one that does.
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
  await new Promise((resolve) => wss.once('listening', resolve));
  t.after(() => {
    for (const socket of wss.clients) socket.terminate();
    return new Promise((resolve) => wss.close(resolve));
  });
  const fromClient = inbox();
  let server;
  wss.on('connection', (socket) => {
    server = socket;
    socket.on('message', (text) => fromClient.push(JSON.parse(String(text))));
    socket.send(JSON.stringify({ is_authorized: true, allowed_rooms: [LOBBY] }));
  });
  const send = (frame) => server.send(JSON.stringify(frame));
  const publish = (requestId, offset) => send({ type: 'publish', data: offset, requestId, offset });

  const ht = connect(`ws://127.0.0.1:${wss.address().port}/ws/`, FAST);
  t.after(() => ht.close());
  const plainSub = ht.subscribe(LOBBY, () => {});
  const lobby = recovering(ht, LOBBY);
  const plainFrame = await fromClient.next();
  assert.deepEqual(Object.keys(plainFrame).sort(), ['requestId', 'room', 'type'], 'plain stays 3.1');
  const first = await fromClient.next();
  assert.equal(first.recover, true);
  send({ code: 'success' });
  send({ code: 'success', epoch: 'E', offset: 5 });
  await Promise.all([plainSub.ready, lobby.sub.ready]);

  for (const offset of [6, 7, 7, 6, 8]) publish(first.requestId, offset);
  for (const offset of [6, 7, 8]) {
    assert.deepEqual(await lobby.received.next(), { data: offset, offset, replayed: false });
  }

  // A gap: the client drops the old subscription and comes back `since` its last offset.
  const gap = waitFor(ht, 'gap');
  send({ type: 'gap', requestId: first.requestId, offset: 10 });
  assert.deepEqual(await gap, [lobby.sub, 10]);
  assert.deepEqual(await fromClient.next(), { type: 'unsubscribe', requestId: first.requestId });
  const resume = await fromClient.next();
  assert.deepEqual(resume.since, { epoch: 'E', offset: 8 });
  assert.notEqual(resume.requestId, first.requestId);
  // Still in flight from the old subscription: dropped, the resume replays them.
  publish(first.requestId, 11);
  send({ code: 'success' });
  const recovered = waitFor(ht, 'recovered');
  send({ code: 'success', recovered: true, epoch: 'E', offset: 11 });
  assert.deepEqual(await recovered, [lobby.sub, true]);
  for (const offset of [9, 10, 11, 10, 12]) publish(resume.requestId, offset);
  for (const [offset, replayed] of [[9, true], [10, true], [11, true], [12, false]]) {
    assert.deepEqual(await lobby.received.next(), { data: offset, offset, replayed });
  }
  await sleep(50);
  assert.equal(lobby.received.pending, 0);
  assert.deepEqual(lobby.sub.position, { epoch: 'E', offset: 12 });
});
