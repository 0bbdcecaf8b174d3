// Three real nodes behind a real nginx, one RabbitMQ stream as their shared log (issue 13,
// docs/scale-out.md): the TypeScript client's own reconnect and resume carry a subscription
// across a SIGKILLed node without losing or repeating a trigger, and the killed node, once
// restarted, recovers a position given out before its restart from its warmed history.
//
// Needs: the binary (target/debug/high-templar, or HT_BINARY), nginx (NGINX, else `nginx` on
// the PATH or /usr/sbin/nginx), RabbitMQ (HT_TEST_AMQP_URL, default guest@127.0.0.1) and
// rabbitmqctl. HT_CLIENT_JS points at another build of the client (default ../dist).
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import WebSocket from 'ws';

import { BINARY, freePort, sleep, startBackend } from './helpers.mjs';

const { connect } = await import(process.env.HT_CLIENT_JS ?? '../dist/index.js');

const AMQP_URL = process.env.HT_TEST_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672/%2f';
/** Triggers in the flow, and the pace: ~200/s for 5 s. */
const TOTAL = 1000;
const EVERY_MS = 5;
/** The client's node is killed once it has received this many. */
const KILL_AFTER = 300;
/** How long a step may take before the test fails instead of hanging. */
const STEP_MS = 30_000;
const ROOM = { chat: '1' };

/** One high-templar node: the real binary, its public and internal ports fixed for restarts. */
function node(args) {
  const port = { public: 0, internal: 0 };
  let child = null;
  return {
    port,
    async start() {
      port.public ||= await freePort();
      port.internal ||= await freePort();
      const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('HT_')));
      child = spawn(
        BINARY,
        [...args, '--listen', `127.0.0.1:${port.public}`, '--internal-listen', `127.0.0.1:${port.internal}`],
        { env: { ...env, RUST_LOG: 'warn', NO_COLOR: '1' }, stdio: ['ignore', 'inherit', 'inherit'] },
      );
      const started = Date.now();
      await until(() => ready(port.internal), 'the node to be ready');
      return Date.now() - started;
    },
    kill(signal) {
      if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill(signal);
      return exited;
    },
    status: () => getJson(`http://127.0.0.1:${port.internal}/status`),
    post: (body) =>
      fetch(`http://127.0.0.1:${port.internal}/trigger/`, { method: 'POST', body: JSON.stringify(body) }),
  };
}

async function ready(port) {
  try {
    return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200;
  } catch {
    return false;
  }
}

async function getJson(url) {
  return (await fetch(url)).json();
}

async function until(predicate, what) {
  const deadline = Date.now() + STEP_MS;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** nginx in front of `ports`, as docs/scale-out.md configures it, in a temp prefix of its own. */
async function startNginx(ports) {
  const dir = mkdtempSync(join(tmpdir(), 'ht-nginx-'));
  const port = await freePort();
  const servers = ports.map((p) => `server 127.0.0.1:${p};`).join(' ');
  // Temp paths, pid and logs under `dir`: no root needed, nothing of the system's touched.
  const conf = `
daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream high_templar { least_conn; ${servers} }
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen 127.0.0.1:${port};
    location /ws/ {
      proxy_pass http://high_templar;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_connect_timeout 2s;
      proxy_read_timeout 600s;
      proxy_send_timeout 600s;
    }
  }
}
`;
  writeFileSync(join(dir, 'nginx.conf'), conf);
  const binary =
    process.env.NGINX ?? ['/usr/sbin/nginx', '/usr/local/sbin/nginx'].find((p) => existsSync(p)) ?? 'nginx';
  const child = spawn(binary, ['-p', dir, '-c', join(dir, 'nginx.conf')], { stdio: ['ignore', 'inherit', 'inherit'] });
  await until(async () => {
    try {
      await fetch(`http://127.0.0.1:${port}/`);
      return true;
    } catch {
      return false;
    }
  }, 'nginx to listen');
  return {
    url: `ws://127.0.0.1:${port}/ws/`,
    async stop() {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGQUIT');
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A raw websocket: the first frame, then send/receive JSON. */
async function rawClient(url) {
  const ws = new WebSocket(url);
  const frames = [];
  const waiters = [];
  ws.on('message', (data) => {
    const frame = JSON.parse(data.toString());
    const waiter = waiters.shift();
    if (waiter) waiter(frame);
    else frames.push(frame);
  });
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const next = () =>
    frames.length
      ? Promise.resolve(frames.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error('no frame in time')), STEP_MS);
          waiters.push((frame) => {
            clearTimeout(timer);
            resolve(frame);
          });
        });
  assert.equal((await next()).is_authorized, true);
  return { send: (value) => ws.send(JSON.stringify(value)), next, close: () => ws.close() };
}

test('three nodes behind nginx: a SIGKILLed node costs its client nothing', { timeout: 180_000 }, async (t) => {
  // Torn down in this order whatever happens: clients, nginx, nodes, then the durable stream
  // (deleted under running nodes, it would be recreated by them).
  const cleanup = [];
  t.after(async () => {
    for (const step of cleanup.reverse()) await step().catch(() => {});
  });
  const backend = await startBackend(() => ({ status: 200, body: { allowed_rooms: [{ chat: '*' }] } }));
  cleanup.push(() => backend.close());
  const exchange = `ht-scale-${randomUUID()}`;
  const stream = `ht-scale-${randomUUID()}`;
  cleanup.push(async () => execFileSync('rabbitmqctl', ['-q', 'delete_queue', stream]));
  const args = ['--api-url', backend.apiUrl, '--amqp-url', AMQP_URL, '--amqp-exchange', exchange, '--amqp-stream', stream];
  const nodes = [node(args), node(args), node(args)];
  cleanup.push(async () => {
    for (const n of nodes) await n.kill('SIGKILL');
  });
  for (const n of nodes) await n.start();
  const nginx = await startNginx(nodes.map((n) => n.port.public));
  cleanup.push(() => nginx.stop());

  // The client, through nginx, with its own reconnect and resume.
  const ht = connect(nginx.url, { backoffInitial: 50, backoffMax: 500 });
  cleanup.push(async () => ht.close());
  const received = [];
  const offsets = [];
  const recovered = [];
  let lastAt = 0;
  let longestSilence = 0;
  const sub = ht.subscribe(
    ROOM,
    (data, info) => {
      const now = Date.now();
      if (lastAt) longestSilence = Math.max(longestSilence, now - lastAt);
      lastAt = now;
      received.push(data);
      offsets.push(info.offset);
    },
    { recover: true },
  );
  ht.on('recovered', (_, ok) => recovered.push(ok));
  await sub.ready;

  // Which node holds it: the one with a connection open.
  let home = -1;
  await until(async () => {
    const open = await Promise.all(nodes.map(async (n) => (await n.status()).open_connections));
    home = open.indexOf(1);
    return home >= 0;
  }, 'the client to be connected');
  const publisher = nodes[(home + 1) % 3];

  // ~200 triggers/s into the exchange (through another node's /trigger/, in order).
  const flow = (async () => {
    const started = Date.now();
    for (let n = 1; n <= TOTAL; n++) {
      const response = await publisher.post({ rooms: [ROOM], data: n });
      assert.equal(response.status, 200, await response.text());
      await sleep(Math.max(0, started + n * EVERY_MS - Date.now()));
    }
  })();
  await until(() => received.length >= KILL_AFTER, `${KILL_AFTER} publishes`);
  const killedAt = Date.now();
  await nodes[home].kill('SIGKILL');
  await flow;
  await until(() => received.length >= TOTAL, `all ${TOTAL} publishes (have ${received.length})`);
  await sleep(300); // a duplicate would come now
  assert.deepEqual(received, Array.from({ length: TOTAL }, (_, i) => i + 1), 'every trigger once, in order');
  assert.ok(offsets.every((o, i) => i === 0 || o > offsets[i - 1]), 'offsets increase');
  assert.deepEqual(recovered, [true], 'resumed once, recovered');
  let landed = -1;
  await until(async () => {
    const alive = nodes.filter((_, i) => i !== home);
    const open = await Promise.all(alive.map(async (n) => (await n.status()).open_connections));
    landed = open.indexOf(1);
    return landed >= 0;
  }, 'the client to land on another node');

  // The killed node comes back, warms from the stream, and recovers a position given out
  // by another node before it restarted.
  const warmMs = await nodes[home].start();
  const before = sub.position.epoch;
  const since = { epoch: before, offset: offsets[99] };
  const resumed = await rawClient(`ws://127.0.0.1:${nodes[home].port.public}/ws/`);
  cleanup.push(async () => resumed.close());
  resumed.send({ type: 'subscribe', room: ROOM, requestId: 'r', since });
  const answer = await resumed.next();
  assert.equal(answer.recovered, true, JSON.stringify(answer));
  assert.equal(answer.epoch, before);
  const replayed = [];
  while (replayed.length < TOTAL - 100) replayed.push((await resumed.next()).data);
  assert.deepEqual(replayed, Array.from({ length: TOTAL - 100 }, (_, i) => i + 101));

  console.log(
    `# scale-out: ${TOTAL} triggers at ~${1000 / EVERY_MS}/s; node killed after ${KILL_AFTER}; ` +
      `longest silence on the client ${longestSilence} ms (kill at +0, ` +
      `all received ${lastAt - killedAt} ms after the kill); restarted node ready in ${warmMs} ms, ` +
      `recovered ${replayed.length} triggers for a position from before its restart`,
  );
});
