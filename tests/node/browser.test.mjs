// The web page the proxy serves, in a real browser: headless Debian Chromium (/usr/bin/chromium,
// installed by scripts/setup) driven by playwright-core, against the real system (harness:
// PostgreSQL with the demo data, conflist-server with sign-in on, conflist-proxy serving the
// page on its WebSocket port).
//
// alice signs in with her password and sees her three conferences with their meeting fields
// (status badges, next occurrence and "repeats", the meeting's own time zone, organiser,
// response, passcode padlock); a conference is changed in the database and the page shows the
// change within 1 s, highlighted and re-sorted (it becomes live); a cancelled one is struck
// through; a list sent in several NOTIFYs shows "Loading…" until complete; she signs in again
// with a bearer token; then a wrong password shows the error. The page's conflist.js (with the
// browser's DOMParser) is also cross-checked against the Rust crate.
// Screenshots: target/browser-test/{1-signed-in,2-after-change,2b-cancelled,3-wrong-password}.png.
//
// Run: (cd tests/node && node --test browser.test.mjs), binaries built.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { randomBytes } from 'node:crypto';
import { runSql, setPassword, startSystem } from './harness.mjs';
import { rustSequences } from './sequences.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Where the screenshots go. */
export const SCREENSHOTS = path.resolve(HERE, '..', '..', 'target', 'browser-test');
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const WAIT_MS = 10_000;
const ALICE = ['sip:1001@conf.example.com', 'sip:1002@conf.example.com', 'sip:1003@conf.example.com'];

let sys;
let context;
let profile;
let pageUrl;
const consoleErrors = [];

before(async () => {
  sys = await startSystem();
  pageUrl = sys.wsUrl.replace(/^ws:/, 'http:').replace(/\/?$/, '/');
  rmSync(SCREENSHOTS, { recursive: true, force: true });
  mkdirSync(SCREENSHOTS, { recursive: true });
  profile = mkdtempSync(path.join(os.tmpdir(), 'conflist-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 900, height: 700 },
    timezoneId: 'Europe/Berlin',
    locale: 'en-GB',
  });
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  if (sys) await sys.stop();
});

/** Runs `body` with a fresh page; on failure saves a screenshot and prints the page's console. */
async function withPage(name, body) {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') consoleErrors.push(`${name}: ${m.text()}`);
  });
  page.on('pageerror', (e) => consoleErrors.push(`${name}: ${e.message}`));
  try {
    await body(page);
  } catch (err) {
    await page.screenshot({ path: path.join(SCREENSHOTS, `failed-${name}.png`), fullPage: true }).catch(() => {});
    process.stderr.write(`\n######## ${name} FAILED; page console errors:\n${consoleErrors.join('\n')}\n${sys.logs()}`);
    throw err;
  } finally {
    await page.close();
  }
}

const items = (page) =>
  page.$$eval('#conferences li.conference', (lis) =>
    lis.map((li) => ({
      entity: li.dataset.entity,
      status: li.dataset.status ?? null,
      badge: li.querySelector('.badge.status')?.textContent ?? null,
      title: li.querySelector('.title-text')?.textContent,
      struck: getComputedStyle(li.querySelector('.title')).textDecorationLine.includes('line-through'),
      lock: li.querySelector('.lock')?.getAttribute('aria-label') ?? null,
      time: li.querySelector('.time')?.textContent ?? null,
      meetingZone: li.querySelector('.meeting-zone')?.textContent ?? null,
      recurrence: li.querySelector('.recurrence')?.textContent ?? null,
      organizer: li.querySelector('.organizer')?.textContent ?? null,
      role: li.querySelector('.badge.role')?.textContent ?? null,
      response: li.querySelector('.badge.response')?.textContent ?? null,
      join: li.querySelector('a.join')?.getAttribute('href') ?? null,
      changed: li.classList.contains('changed'),
    })),
  );

async function signIn(page, { user, password, token }) {
  await page.goto(pageUrl);
  await page.fill('#user', user ?? '');
  if (token) {
    await page.check('input[name=method][value=token]');
    await page.fill('#token', token);
  } else {
    await page.fill('#password', password);
  }
  await page.click('#signin-button');
}

async function waitForList(page, count) {
  await page.waitForSelector('#connection[data-state=live]', { timeout: WAIT_MS });
  await page.waitForFunction((n) => document.querySelectorAll('#conferences li.conference').length === n, count, { timeout: WAIT_MS });
}

test('the proxy serves the page and its files on the WebSocket port', async () => {
  const res = await fetch(pageUrl);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/html; charset=utf-8');
  assert.match(res.headers.get('content-security-policy') ?? '', /script-src 'self'/);
  const html = await res.text();
  assert.match(html, /<title>Conference list<\/title>/);
  assert.match(html, /"wsUrl":null/);
  for (const [file, type] of [
    ['app.js', 'text/javascript; charset=utf-8'],
    ['conflist.js', 'text/javascript; charset=utf-8'],
    ['vendor/jssip.min.js', 'text/javascript; charset=utf-8'],
    ['style.css', 'text/css; charset=utf-8'],
  ]) {
    const r = await fetch(pageUrl + file);
    assert.equal(r.status, 200, file);
    assert.equal(r.headers.get('content-type'), type, file);
    const etag = r.headers.get('etag');
    assert.ok(etag, `${file} has an ETag`);
    await r.arrayBuffer();
    const again = await fetch(pageUrl + file, { headers: { 'If-None-Match': etag } });
    assert.equal(again.status, 304, `${file} revalidates`);
  }
  const missing = await fetch(pageUrl + 'no-such-file');
  assert.ok(missing.status >= 400 && missing.status < 500, `a path that is no file is refused (${missing.status})`);
});

test('alice signs in with her password, sees her list, and database changes within 1 s', { timeout: 120_000 }, async () => {
  // Times relative to now, so that the test does not depend on the date: 1001 tomorrow (and
  // every day after, in the browser's time zone), 1002 in two days (status scheduled), 1003
  // ended three days ago (status ended; New York time). The demo data gives 1002 a passcode and
  // organiser Bob (alice: tentative), 1003 organiser Dave (alice: accepted).
  runSql(
    sys.db.url,
    "UPDATE conflist_conferences SET starts_at = now() + CASE conference_uri " +
      "WHEN 'sip:1001@conf.example.com' THEN interval '1 day' WHEN 'sip:1002@conf.example.com' THEN interval '2 days' " +
      "ELSE interval '-3 days' END, ends_at = now() + CASE conference_uri " +
      "WHEN 'sip:1001@conf.example.com' THEN interval '25 hours' WHEN 'sip:1002@conf.example.com' THEN interval '49 hours' " +
      "ELSE interval '-71 hours' END, status = CASE conference_uri WHEN 'sip:1002@conf.example.com' THEN 'scheduled' " +
      "WHEN 'sip:1003@conf.example.com' THEN 'ended' END, " +
      "recurrence = CASE conference_uri WHEN 'sip:1001@conf.example.com' THEN 'FREQ=DAILY' END, " +
      "time_zone = CASE conference_uri WHEN 'sip:1001@conf.example.com' THEN 'Europe/Berlin' ELSE time_zone END " +
      "WHERE conference_uri IN ('sip:1001@conf.example.com', 'sip:1002@conf.example.com', 'sip:1003@conf.example.com')",
  );
  await withPage('password', async (page) => {
    await signIn(page, { user: 'alice', password: sys.passwords.alice });
    await waitForList(page, 3);
    assert.equal(await page.textContent('#who'), 'sip:alice@example.com');
    const before = await items(page);
    assert.deepEqual(before.map((c) => c.entity).sort(), ALICE);
    const weekly = before.find((c) => c.entity === ALICE[0]);
    assert.equal(weekly.title, 'Team status');
    assert.equal(weekly.role, 'organizer');
    assert.equal(weekly.join, 'https://meet.example.com/1001');
    assert.equal(weekly.status, 'upcoming', 'no status in the database: upcoming from the schedule');
    assert.equal(weekly.badge, 'Upcoming');
    assert.match(weekly.time, /CET/, 'shown in the browser time zone (Europe/Berlin)');
    assert.match(weekly.time, /^Next: /, 'a recurring meeting shows its next occurrence');
    assert.equal(weekly.recurrence, 'repeats daily');
    assert.equal(weekly.meetingZone, null, "no second time zone: the meeting's is the browser's");
    assert.equal(weekly.organizer, null);
    assert.equal(weekly.response, null);
    assert.equal(weekly.lock, null, 'no passcode, no lock');
    const review = before.find((c) => c.entity === ALICE[1]);
    assert.equal(review.status, 'scheduled');
    assert.equal(review.badge, 'Scheduled');
    assert.equal(review.lock, 'Passcode required');
    assert.equal(review.organizer, 'Organiser: Bob');
    assert.equal(review.response, 'Tentative');
    assert.equal(review.recurrence, null);
    const allHands = before.find((c) => c.entity === ALICE[2]);
    assert.equal(allHands.title, 'Quarterly <results> & plans');
    assert.equal(allHands.status, 'ended');
    assert.equal(allHands.badge, 'Ended');
    assert.equal(allHands.join, null, 'no join link for an ended conference');
    assert.equal(allHands.organizer, 'Organiser: Dave');
    assert.equal(allHands.response, 'Accepted');
    assert.match(allHands.meetingZone ?? '', / in America\/New_York$/, "the meeting's own time zone, which is not the browser's");
    assert.deepEqual(before.map((c) => c.struck), [false, false, false], 'nothing struck through');
    // Nearest first: upcoming by start (1001, 1002), then ended (1003).
    assert.deepEqual(before.map((c) => c.entity), ALICE);
    await page.screenshot({ path: path.join(SCREENSHOTS, '1-signed-in.png'), fullPage: true });

    // The design review moves to now and starts: new subject, active, so it goes first.
    runSql(
      sys.db.url,
      "UPDATE conflist_conferences SET subject = 'Moved to now', starts_at = now() - interval '5 minutes', " +
        "ends_at = now() + interval '55 minutes', status = 'active' WHERE conference_uri = 'sip:1002@conf.example.com'",
    );
    const committed = Date.now();
    await page.waitForFunction(
      () => document.querySelector('#conferences li.conference .title-text')?.textContent === 'Moved to now',
      null,
      { timeout: WAIT_MS, polling: 20 },
    );
    const elapsed = Date.now() - committed;
    const afterChange = await items(page);
    assert.ok(elapsed < 1000, `the change reached the page ${elapsed} ms after the commit (limit 1000 ms)`);
    assert.equal(afterChange[0].entity, ALICE[1], 'the live conference is first');
    assert.equal(afterChange[0].status, 'live');
    assert.equal(afterChange[0].badge, 'Live', 'status active shows as live');
    assert.equal(afterChange[0].changed, true, 'the changed conference is highlighted');
    assert.deepEqual(afterChange.slice(1).map((c) => [c.entity, c.changed]), [[ALICE[0], false], [ALICE[2], false]]);
    assert.match(await page.textContent('#notice'), /1 changed/);
    await page.screenshot({ path: path.join(SCREENSHOTS, '2-after-change.png'), fullPage: true });
    process.stdout.write(`# change shown ${elapsed} ms after the commit; screenshots in ${SCREENSHOTS}\n`);

    // The weekly sync is cancelled: it stays in the list, struck through, without a join link.
    runSql(sys.db.url, "UPDATE conflist_conferences SET status = 'cancelled' WHERE conference_uri = 'sip:1001@conf.example.com'");
    await page.waitForSelector(`#conferences li.conference[data-entity="${ALICE[0]}"][data-status=cancelled]`, { timeout: WAIT_MS });
    const cancelled = (await items(page)).find((c) => c.entity === ALICE[0]);
    assert.equal(cancelled.badge, 'Cancelled');
    assert.equal(cancelled.struck, true, 'a cancelled conference is struck through');
    assert.equal(cancelled.join, null, 'no join link for a cancelled conference');
    assert.equal(cancelled.changed, true, 'highlighted');
    assert.match(await page.textContent('#notice'), /1 changed/);
    await page.screenshot({ path: path.join(SCREENSHOTS, '2b-cancelled.png'), fullPage: true });

    await page.click('#signout');
    await page.waitForSelector('#signin:not([hidden])');
    assert.equal(await page.getAttribute('#connection', 'data-state'), 'signed-out');
  });
});

test('alice signs in with a bearer token (user taken from the token)', { timeout: 60_000 }, async () => {
  await withPage('token', async (page) => {
    await signIn(page, { token: sys.makeToken('alice') });
    await waitForList(page, 3);
    assert.equal(await page.textContent('#who'), 'sip:alice@example.com');
  });
});

test('a list sent in several NOTIFYs shows "Loading…" until its last part, then all of it', { timeout: 120_000 }, async () => {
  // 300 conferences of ~1 KB each: several NOTIFYs of at most 64 KiB.
  const count = 300;
  const password = `max-${randomBytes(9).toString('base64url')}`;
  runSql(
    sys.db.url,
    `INSERT INTO conflist_conferences (conference_uri, subject, free_text, web_page, starts_at, ends_at)
       SELECT format('sip:many-%s@conf.example.com', i), format('Meeting %s', i),
              repeat('A fairly long agenda that fills the conference description. ', 12),
              format('https://meet.example.com/many-%s', i),
              now() + i * interval '1 hour', now() + i * interval '1 hour' + interval '30 minutes'
       FROM generate_series(1, ${count}) AS i;
     INSERT INTO conflist_members (conference_uri, user_uri)
       SELECT format('sip:many-%s@conf.example.com', i), 'sip:max@example.com' FROM generate_series(1, ${count}) AS i;`,
  );
  setPassword(sys.db.url, 'max', password);
  await withPage('loading', async (page) => {
    await page.goto(pageUrl);
    // Every state the page goes through, as it goes through it.
    await page.evaluate(() => {
      window.seen = [];
      const snap = () =>
        window.seen.push({
          state: document.getElementById('connection').dataset.state,
          loading: !document.getElementById('loading').hidden,
          items: document.querySelectorAll('#conferences li.conference').length,
        });
      const observer = new MutationObserver(snap);
      observer.observe(document.getElementById('connection'), { attributes: true, childList: true, characterData: true, subtree: true });
      observer.observe(document.getElementById('loading'), { attributes: true, childList: true, characterData: true, subtree: true });
    });
    await page.fill('#user', 'max');
    await page.fill('#password', password);
    await page.click('#signin-button');
    await waitForList(page, count);
    const seen = await page.evaluate(() => window.seen);
    const loading = seen.filter((s) => s.state === 'loading');
    assert.ok(loading.length > 0, `the page showed "Loading…" (states seen: ${JSON.stringify(seen)})`);
    assert.ok(loading.every((s) => s.loading), 'the loading line is shown while loading');
    assert.ok(
      loading.some((s) => s.items > 0 && s.items < count),
      `the first part is shown before the list is complete (${JSON.stringify(loading)})`,
    );
    const firstLive = seen.findIndex((s) => s.state === 'live');
    assert.ok(firstLive > seen.findIndex((s) => s.state === 'loading'), 'live only after loading');
    assert.ok(seen.slice(firstLive).every((s) => s.state !== 'live' || s.items === count), 'live means the whole list');
    assert.equal(await page.isVisible('#loading'), false, 'no loading line once complete');
    assert.equal(await page.textContent('#notice'), '', 'the first list is no change');
    assert.equal((await items(page)).filter((c) => c.changed).length, 0, 'nothing highlighted on the first list');
  });
});

test('a wrong password shows a clear message and no list', { timeout: 60_000 }, async () => {
  await withPage('wrong-password', async (page) => {
    await signIn(page, { user: 'alice', password: `not-${sys.passwords.alice}` });
    await page.waitForSelector('#signin-error:not([hidden])', { timeout: WAIT_MS });
    assert.equal(await page.textContent('#signin-error'), 'Wrong user name or password.');
    assert.equal(await page.getAttribute('#connection', 'data-state'), 'error');
    assert.equal(await page.isVisible('#list-view'), false);
    assert.equal((await items(page)).length, 0);
    await page.screenshot({ path: path.join(SCREENSHOTS, '3-wrong-password.png'), fullPage: true });
  });
});

test("the page's conflist.js with the browser's DOMParser agrees with the Rust crate", { timeout: 600_000 }, async () => {
  const data = rustSequences(11, 60);
  await withPage('cross-check', async (page) => {
    await page.goto(pageUrl);
    const outcomes = await page.evaluate(async (sequences) => {
      const m = await import('/conflist.js');
      return sequences.map((s) => {
        const state = new m.ConferenceListState();
        return s.steps.map((step) => {
          const r = state.apply(step.xml);
          if (r.kind === 'applied') {
            return { kind: 'applied', version: String(r.version), complete: r.complete, deleted: r.deleted, conferences: r.conferences };
          }
          if (r.kind === 'gap') return { kind: 'gap', expected: String(r.expected), got: String(r.got) };
          return { kind: 'error', code: r.error.code };
        });
      });
    }, data.sequences);
    let steps = 0;
    const mismatches = [];
    data.sequences.forEach((s, i) =>
      s.steps.forEach((step, j) => {
        steps += 1;
        try {
          assert.deepEqual(outcomes[i][j], step.outcome);
        } catch (err) {
          mismatches.push(`sequence ${i} step ${j}\nxml: ${step.xml}\n${err.message}`);
        }
      }),
    );
    assert.deepEqual(mismatches.slice(0, 3), [], `${mismatches.length} of ${steps} steps disagree`);
  });
  // Chromium's DOMParser builds an error document with an inline style for malformed XML;
  // the page's CSP blocks that style and says so. Nothing else may show up.
  const errors = consoleErrors.filter((e) => !/cross-check: Applying inline style violates/.test(e));
  assert.deepEqual(errors, [], 'no errors in the page console');
});
