// The demo page served by the real binary (`--demo`), driven in headless Chromium: subscribe
// through the form, publish with curl, see the message on the page; drop the connection,
// publish while it is away, see the message come back marked recovered. Leaves screenshots in
// target/artifacts/demo.png and demo-recovery.png.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

import { WAIT_MS, startDemo, trigger } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** Flags for a quiet, self-contained headless run in a container (no sandbox, no network
 * side-traffic, no QUIC). */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const ARTIFACTS = fileURLToPath(new URL('../../../target/artifacts/', import.meta.url));

/** A demo server and a fresh headless Chromium on its page, all stopped after the test. */
async function openDemoPage(t) {
  const server = await startDemo();
  // A fresh profile directory per run: Playwright takes it as userDataDir.
  const profile = mkdtempSync(join(tmpdir(), 'ht-chromium-'));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1100, height: 820 },
  });
  // One hook, in this order: the browser must be gone before its profile is removed.
  t.after(async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
    await server.stop();
  });
  const page = browser.pages()[0] ?? (await browser.newPage());
  page.setDefaultTimeout(WAIT_MS);
  const consoleErrors = [];
  page.on('pageerror', (error) => consoleErrors.push(error.message));
  await page.goto(`${server.http}/`);
  await page.locator('#state[data-state="authorized"]').waitFor();
  return { server, page, consoleErrors };
}

test('the demo page subscribes, receives a curl trigger and publishes', async (t) => {
  const { server, page, consoleErrors } = await openDemoPage(t);
  await page.locator('#allowed-rooms li', { hasText: '"target":"demo"' }).waitFor();

  await page.fill('#subscribe-room', '{"target": "demo", "room": "browser"}');
  await page.click('#subscribe-button');
  await page.locator('#subscribe-result', { hasText: 'subscribed to' }).waitFor();

  const body = JSON.stringify({
    rooms: [{ target: 'demo', room: 'browser' }],
    data: { text: 'hello from curl' },
  });
  const { stdout } = await promisify(execFile)('curl', [
    '--silent', '--show-error', '--fail',
    '--data', body,
    '--header', 'Content-Type: application/json',
    `${server.http}/trigger/`,
  ]);
  assert.equal(JSON.parse(stdout).delivered, 1, stdout);
  await page.locator('#log li.publish', { hasText: 'hello from curl' }).waitFor();

  // The page's own publish form goes through the open demo trigger path too.
  await page.fill('#publish-room', '{"target": "demo", "room": "browser"}');
  await page.fill('#publish-data', '{"text": "hello from the form"}');
  await page.click('#publish-button');
  await page.locator('#publish-result', { hasText: 'delivered to 1 subscription' }).waitFor();
  await page.locator('#log li.publish', { hasText: 'hello from the form' }).waitFor();

  // The status panel is polled every second: it shows this page's connection and room.
  await page.locator('#status-connections', { hasText: /^1$/ }).waitFor();
  await page.locator('#status-rooms', { hasText: /^1$/ }).waitFor();

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'demo.png'), fullPage: true });
  assert.deepEqual(consoleErrors, []);
});

test('the demo page drops its connection and shows what it missed as recovered', async (t) => {
  const { server, page, consoleErrors } = await openDemoPage(t);
  const ROOM = { target: 'demo', room: 'recovery' };
  await page.fill('#subscribe-room', JSON.stringify(ROOM));
  await page.click('#subscribe-button');
  await page.locator('#subscribe-result', { hasText: 'subscribed to' }).waitFor();
  await trigger(server, [ROOM], { text: 'before the drop' });
  const before = page.locator('#log li.publish', { hasText: 'before the drop' });
  await before.waitFor();
  assert.equal(await before.locator('.badge').count(), 0, 'a live message has no badge');

  // The button closes the socket and keeps the page offline for 5 s; the client reconnects on
  // its own after that.
  await page.click('#drop-button');
  await page.locator('#state:not([data-state="authorized"])').waitFor();
  const away = await trigger(server, [ROOM], { text: 'published while away' });
  assert.equal(away.delivered, 0, 'published while the page had no connection');

  const replayed = page.locator('#log li.publish.replayed', { hasText: 'published while away' });
  await replayed.waitFor({ timeout: WAIT_MS * 2 });
  assert.equal(await replayed.locator('.badge').textContent(), 'recovered');
  await page.locator('#state[data-state="authorized"]').waitFor();
  await page.locator('#log li.info', { hasText: /resumed .*recovery.*replayed/ }).waitFor();

  // Live again: the next message is not marked.
  await trigger(server, [ROOM], { text: 'back live' });
  const live = page.locator('#log li.publish', { hasText: 'back live' });
  await live.waitFor();
  assert.equal(await live.locator('.badge').count(), 0);
  assert.equal(await page.locator('#log li.publish', { hasText: 'published while away' }).count(), 1);

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, 'demo-recovery.png'), fullPage: true });
  assert.deepEqual(consoleErrors, []);
});
