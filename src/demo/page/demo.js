// The demo page's behaviour, on top of the high-templar TypeScript client (client.js, the
// browser build of clients/js). Everything from the network is shown with textContent, never
// as HTML: in demo mode anyone may publish.
import { connect } from '/demo/client.js';

/** Log lines kept on the page; older ones are dropped so a busy room cannot grow it forever. */
const MAX_LOG_LINES = 200;
/** How often the node status is refreshed. */
const STATUS_INTERVAL_MS = 1000;

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/`;
const ht = connect(wsUrl);

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
});

ht.on('unauthorized', () => logInfo('the backend refused this connection'));
ht.on('error', (error) => logInfo(`error: ${error.message}`));

$('subscribe-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const result = $('subscribe-result');
  const room = parseJson($('subscribe-room').value, result);
  if (room === undefined) return;
  const label = JSON.stringify(room);
  const sub = ht.subscribe(room, (data) => logPublish(label, data));
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

function logPublish(roomLabel, data) {
  const li = document.createElement('li');
  li.className = 'publish';
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date().toLocaleTimeString();
  const room = document.createElement('span');
  room.className = 'room';
  room.textContent = roomLabel;
  const body = document.createElement('code');
  body.textContent = JSON.stringify(data);
  li.append(time, room, body);
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
