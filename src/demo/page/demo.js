// The demo page's behaviour, on top of the high-templar TypeScript client (client.js, the
// browser build of clients/js). Everything from the network is shown with textContent, never
// as HTML: in demo mode anyone may publish.
import { connect } from '/demo/client.js';

/** Log lines kept on the page; older ones are dropped so a busy room cannot grow it forever. */
const MAX_LOG_LINES = 200;
/** How often the node status is refreshed. */
const STATUS_INTERVAL_MS = 1000;
/** How long "drop the connection" keeps the page offline: time to publish something it misses. */
const OFFLINE_MS = 5000;

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/`;

/** While offline (after "drop the connection"), new sockets wait until this time. */
let offlineUntil = 0;
/** The socket in use, for the drop button. */
let current = null;

/**
 * The browser's WebSocket, as the client sees it, with what a network blip does: the drop
 * button closes the socket under the client's feet, and connections opened while "offline"
 * wait until it is over. The client notices and reconnects on its own.
 */
class DroppableWebSocket {
  constructor(url) {
    this.socket = null;
    this.abandoned = false;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    const open = () => {
      if (this.abandoned) return;
      const socket = new WebSocket(url);
      socket.onopen = (event) => this.onopen?.(event);
      socket.onmessage = (event) => this.onmessage?.(event);
      socket.onclose = (event) => this.onclose?.(event);
      socket.onerror = (event) => this.onerror?.(event);
      this.socket = socket;
      current = socket;
    };
    const wait = offlineUntil - Date.now();
    if (wait > 0) setTimeout(open, wait);
    else open();
  }

  get readyState() {
    if (this.socket) return this.socket.readyState;
    return this.abandoned ? WebSocket.CLOSED : WebSocket.CONNECTING;
  }

  send(data) {
    this.socket.send(data);
  }

  close(code, reason) {
    if (this.socket) this.socket.close(code, reason);
    else this.abandoned = true;
  }
}

const ht = connect(wsUrl, { WebSocket: DroppableWebSocket });

for (const el of document.querySelectorAll('.host')) el.textContent = location.host;

ht.on('state', (state, info) => {
  const el = $('state');
  el.dataset.state = state;
  el.textContent = state === 'waiting' ? `reconnecting in ${(info.delay / 1000).toFixed(1)} s` : state;
});

ht.on('authorized', (rooms) => {
  const list = $('allowed-rooms');
  list.replaceChildren(...rooms.map((room) => item(JSON.stringify(room))));
  logInfo('connected and authorized');
  $('drop-button').disabled = false;
});

ht.on('unauthorized', () => logInfo('the backend refused this connection'));
ht.on('error', (error) => logInfo(`error: ${error.message}`));
ht.on('recovered', (sub, recovered) => {
  const label = JSON.stringify(sub.room);
  logInfo(
    recovered
      ? `resumed ${label}: what it missed is replayed`
      : `could not recover ${label}: an app would refetch its state now`,
  );
});
ht.on('gap', (sub, offset) => {
  logInfo(`fell behind on ${JSON.stringify(sub.room)} (lost up to #${offset}): resuming`);
});

$('drop-button').addEventListener('click', () => {
  if (!current) return;
  offlineUntil = Date.now() + OFFLINE_MS;
  $('drop-button').disabled = true;
  logInfo(`connection dropped: offline for ${OFFLINE_MS / 1000} s, publish something meanwhile`);
  // Code 4000: the application's own range; the server just sees the socket go.
  current.close(4000, 'dropped by the demo page');
});

$('subscribe-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const result = $('subscribe-result');
  const room = parseJson($('subscribe-room').value, result);
  if (room === undefined) return;
  const label = JSON.stringify(room);
  const sub = ht.subscribe(room, (data, info) => logPublish(label, data, info), {
    recover: true,
  });
  const entry = item(label);
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = 'unsubscribe';
  button.addEventListener('click', () => {
    sub.unsubscribe();
    entry.remove();
    logInfo(`unsubscribed from ${label}`);
  });
  entry.append(button);
  $('subscriptions').append(entry);
  show(result, 'subscribing…');
  sub.ready.then(
    () => {
      show(result, `subscribed to ${label}`);
      logInfo(`subscribed to ${label}`);
    },
    (error) => {
      entry.remove();
      show(result, error.message, true);
    },
  );
});

$('publish-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('publish-result');
  const room = parseJson($('publish-room').value, result);
  if (room === undefined) return;
  const data = parseJson($('publish-data').value, result);
  if (data === undefined) return;
  try {
    const response = await fetch('/trigger/', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ rooms: [room], data }),
    });
    const answer = await response.json();
    if (response.ok) show(result, `delivered to ${answer.delivered} subscription(s)`);
    else show(result, answer.error || `HTTP ${response.status}`, true);
  } catch (error) {
    show(result, `publish failed: ${error.message}`, true);
  }
});

async function refreshStatus() {
  try {
    const response = await fetch('/demo/status', { cache: 'no-store' });
    const status = await response.json();
    $('status-connections').textContent = status.open_connections;
    $('status-rooms').textContent = status.num_rooms;
    $('status-triggers').textContent = status.rabbitmq_messages_received;
    $('status-sent').textContent = status.ws_messages_send;
    $('status-since').textContent = status.online_since;
  } catch {
    $('status-connections').textContent = 'server unreachable';
  }
}
refreshStatus();
setInterval(refreshStatus, STATUS_INTERVAL_MS);

function parseJson(text, resultEl) {
  try {
    return JSON.parse(text);
  } catch (error) {
    show(resultEl, `not JSON: ${error.message}`, true);
    return undefined;
  }
}

function show(el, text, isError = false) {
  el.textContent = text;
  el.classList.toggle('error', isError);
}

function item(text) {
  const li = document.createElement('li');
  const span = document.createElement('span');
  span.textContent = text;
  li.append(span);
  return li;
}

function logPublish(roomLabel, data, info) {
  const li = document.createElement('li');
  li.className = 'publish';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date().toLocaleTimeString();
  li.append(time);
  if (info.replayed) {
    // Published while this page was away, replayed from the server's history.
    li.classList.add('replayed');
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = 'recovered';
    li.append(badge);
  }
  const room = document.createElement('span');
  room.className = 'room';
  room.textContent = roomLabel;
  const body = document.createElement('code');
  body.textContent = JSON.stringify(data);
  li.append(room, body);
  if (info.offset !== undefined) {
    const offset = document.createElement('span');
    offset.className = 'offset';
    offset.textContent = `#${info.offset}`;
    li.append(offset);
  }
  addLogLine(li);
}

function logInfo(text) {
  const li = document.createElement('li');
  li.className = 'info';
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  addLogLine(li);
}

function addLogLine(li) {
  const log = $('log');
  log.prepend(li);
  while (log.children.length > MAX_LOG_LINES) log.lastElementChild.remove();
}
