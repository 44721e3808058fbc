// Acceptance (issue 8): a user in 10 000 conferences subscribes with unmodified JsSIP (under
// Node, `ws` as the browser's WebSocket) and gets the whole list as several NOTIFYs, each body at
// most 64 KiB, the first within 1 s of the SUBSCRIBE; web/conflist.js (ConferenceListState)
// assembles them into exactly what the database holds.
//
// The conferences are inserted with generate_series: subjects with XML specials and non-ASCII,
// free text of varying length (each conference 300–800 bytes in the document), past, live,
// upcoming and undated meetings, statuses, recurring meetings with a time zone, organisers,
// responses and passcode flags.
//
// The figures (time to the first NOTIFY and where it went, time to the complete list, number of
// NOTIFYs, largest body) are printed and written to target/large-list.txt.
//
// Run: cargo build --workspace --bins && (cd tests/node && node --test large-list.test.mjs)

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import JsSIP from 'jssip';
import { ConferenceListState } from '../../web/conflist.js';
import {
  RecordingWebSocket,
  TRACE,
  nextEvent,
  runSql,
  setPassword,
  startSystem,
  wire,
  withTimeout,
} from './harness.mjs';

globalThis.WebSocket = RecordingWebSocket;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPORT = path.resolve(HERE, '..', '..', 'target', 'large-list.txt');

const EVENT = 'conference-list';
const CONTENT_TYPE = 'application/conference-list+xml';
const COUNT = 10_000;
const USER = 'max';
const USER_URI = `sip:${USER}@example.com`;
/** The server's default --max-notify-bytes. */
const MAX_BODY = 65_536;
/** The acceptance bound for the first NOTIFY. */
const FIRST_NOTIFY_MS = 1_000;
const PASSWORD = `max-${randomBytes(9).toString('base64url')}`;
/** Bound for the whole list to arrive. */
const COMPLETE_MS = 45_000;

let sys;

before(async () => {
  sys = await startSystem();
  insertConferences(sys.db.url);
  setPassword(sys.db.url, USER, PASSWORD);
  // The inserts went through the change log; wait until the server has read them, so the
  // measurement below is of a subscription, not of the follower catching up with 20 000 rows.
  const { admin } = await sys.server.ready;
  await waitForChangesRead(admin, COUNT);
});

after(async () => {
  if (sys) await sys.stop();
});

/** The 10 000 conferences of `max` (and a few rows of other users, which must not show). */
function insertConferences(url) {
  runSql(
    url,
    `
    INSERT INTO conflist_users (user_uri, display_name) VALUES ('${USER_URI}', 'Max') ON CONFLICT DO NOTHING;
    INSERT INTO conflist_conferences
      (conference_uri, display_text, subject, free_text, keywords, web_page, maximum_user_count,
       available_media, starts_at, ends_at, status, organizer_uri, organizer_name, time_zone,
       recurrence, revision, passcode_required)
    SELECT
      format('sip:big-%s@conf.example.com', i),
      format('Team %s café — room %s', i % 97, i % 13),
      format('Project %s: planning <phase %s> & "risks" (Ü%s)', i, i % 7, i % 3),
      repeat(format('Agenda item %s: review the open actions, decide on the next steps. ', i % 11), 2 + i % 6),
      format('project%s planning weekly', i % 50),
      format('https://meet.example.com/big-%s', i),
      10 + i % 90,
      CASE i % 3 WHEN 0 THEN 'audio' WHEN 1 THEN 'audio,video' ELSE 'audio,video,text' END,
      CASE WHEN i % 101 = 0 THEN NULL
           ELSE date_trunc('second', now()) - interval '30 days' + i * interval '9 minutes' END,
      CASE WHEN i % 101 = 0 OR i % 97 = 0 THEN NULL
           ELSE date_trunc('second', now()) - interval '30 days' + i * interval '9 minutes' + (30 + (i % 4) * 15) * interval '1 minute' END,
      CASE WHEN i % 13 = 0 THEN 'cancelled' WHEN i % 5 = 0 THEN 'scheduled' END,
      CASE WHEN i % 2 = 0 THEN format('sip:org%s@example.com', i % 20) END,
      CASE WHEN i % 2 = 0 THEN format('Organiser %s', i % 20) END,
      CASE WHEN i % 50 = 0 THEN 'Europe/Berlin' WHEN i % 7 = 0 THEN 'America/New_York' END,
      CASE WHEN i % 50 = 0 AND i % 101 <> 0 THEN 'FREQ=WEEKLY;BYDAY=MO,WE' END,
      (i % 4)::text,
      CASE WHEN i % 3 = 0 THEN TRUE WHEN i % 3 = 1 THEN FALSE END
    FROM generate_series(1, ${COUNT}) AS i;
    INSERT INTO conflist_members (conference_uri, user_uri, role, response)
    SELECT format('sip:big-%s@conf.example.com', i), '${USER_URI}',
      CASE WHEN i % 10 = 0 THEN 'organizer' ELSE 'participant' END,
      CASE i % 5 WHEN 0 THEN 'accepted' WHEN 1 THEN 'declined' WHEN 2 THEN 'tentative'
                 WHEN 3 THEN 'needs-action' END
    FROM generate_series(1, ${COUNT}) AS i;
    INSERT INTO conflist_members (conference_uri, user_uri, role)
    SELECT format('sip:big-%s@conf.example.com', i), 'sip:alice@example.com', 'participant'
    FROM generate_series(1, 50) AS i;
    `,
  );
}

/** `max`'s conferences as the database holds them (JSON from psql). */
function databaseRows(url) {
  const sql = `
    SELECT coalesce(json_agg(json_build_object(
      'entity', c.conference_uri, 'subject', c.subject, 'displayText', c.display_text,
      'start', c.starts_at, 'status', c.status, 'role', m.role, 'response', m.response,
      'organizerName', c.organizer_name, 'timeZone', c.time_zone, 'recurrence', c.recurrence,
      'passcodeRequired', c.passcode_required, 'revision', c.revision)), '[]')
    FROM conflist_members m JOIN conflist_conferences c USING (conference_uri)
    WHERE m.user_uri = '${USER_URI}'`;
  const r = spawnSync('psql', ['-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', url, '-c', sql], {
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    timeout: 30_000,
  });
  if (r.error || r.status !== 0) throw new Error(`psql failed: ${r.error ?? r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Bytes of text per conference of `max` in the database: [min, avg, max]. */
function databaseTextBytes(url) {
  const sql = `
    SELECT min(n), round(avg(n)), max(n) FROM (
      SELECT octet_length(concat(c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords,
        c.web_page, c.available_media, c.organizer_uri, c.organizer_name, c.time_zone, c.recurrence)) AS n
      FROM conflist_members m JOIN conflist_conferences c USING (conference_uri)
      WHERE m.user_uri = '${USER_URI}') t`;
  const r = spawnSync('psql', ['-X', '-q', '-A', '-t', '-F', ' ', '-d', url, '-c', sql], { encoding: 'utf8', timeout: 30_000 });
  if (r.error || r.status !== 0) throw new Error(`psql failed: ${r.error ?? r.stderr}`);
  return r.stdout.trim().split(' ').map(Number);
}

/** Polls the server's /metrics (no event to wait for) until it has read `n` changed conferences. */
async function waitForChangesRead(admin, n, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const text = await (await fetch(`http://${admin}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
      const m = /^conflist_server_changes_read_total (\d+)/m.exec(text);
      last = m ? m[1] : 'no conflist_server_changes_read_total';
      if (m && Number(m[1]) >= n) return;
    } catch (err) {
      last = String(err.cause ?? err);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the server did not read ${n} changed conferences within ${ms} ms (last: ${last})`);
}

const ms = (x) => `${x.toFixed(1)} ms`;

test(`JsSIP, ${COUNT} conferences: multi-part NOTIFYs, first within 1 s, each ≤ 64 KiB, list = database`, { timeout: 120_000 }, async () => {
  const since = wire.mark();
  // When each message of this subscription passed the recorder (monotonic clock).
  const stamps = [];
  const onEntry = (e) => {
    if (e.sip) stamps.push({ seq: e.seq, at: performance.now() });
  };
  wire.on('entry', onEntry);
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(sys.wsUrl)],
    uri: USER_URI,
    register: false,
    password: PASSWORD,
  });
  // Terminated in `finally`: a live JsSIP subscription keeps its refresh timer, and with it
  // this test process, alive for minutes after the test.
  let subscriber = null;
  try {
    const connected = nextEvent(ua, 'connected', 'the JsSIP UA to connect');
    ua.start();
    await connected;

    const list = new ConferenceListState();
    const notifies = [];
    let resolveFirst;
    let resolveComplete;
    let failed;
    const first = new Promise((r) => (resolveFirst = r));
    const complete = new Promise((r, reject) => {
      resolveComplete = r;
      failed = reject;
    });
    let completeAt = null;
    let completeSnapshot = null;

    subscriber = ua.subscribe(USER_URI, EVENT, CONTENT_TYPE, { expires: 600 });
    subscriber.on('notify', (isFinal, request, body) => {
      const at = performance.now();
      if (!body) return;
      const bytes = Buffer.byteLength(body, 'utf8');
      const a0 = performance.now();
      const r = list.apply(body);
      const applyMs = performance.now() - a0;
      notifies.push({ at, applyMs, bytes, isFinal, kind: r.kind, state: r.state, complete: r.complete, version: r.version });
      if (notifies.length === 1) resolveFirst();
      if (r.kind !== 'applied') {
        failed(new Error(`NOTIFY ${notifies.length} was not applied: ${r.kind} ${r.error?.message ?? ''}`));
        return;
      }
      if (list.complete && completeAt === null) {
        completeAt = at;
        completeSnapshot = list.conferences;
        resolveComplete();
      }
    });
    subscriber.on('terminated', (code) => failed(new Error(`subscription terminated early (code ${code})`)));

    const t0 = performance.now();
    subscriber.subscribe();
    await withTimeout(Promise.race([first, complete]), 'the first NOTIFY', 10_000);
    await withTimeout(complete, 'the complete list', COMPLETE_MS);
    wire.off('entry', onEntry);

    // Where the time to the first NOTIFY went, from the wire.
    const stampOf = (entry) => stamps.find((s) => s.seq === entry.seq)?.at;
    const mine = wire.filter((sip) => sip.header('call-id') !== undefined, since);
    const subscribes = mine.filter((e) => e.dir === '->' && e.sip.method === 'SUBSCRIBE');
    const callId = subscribes[0].sip.header('call-id');
    const ofDialog = mine.filter((e) => e.sip.header('call-id') === callId);
    const challenge = ofDialog.find((e) => e.dir === '<-' && e.sip.isResponse && e.sip.status === 401);
    const authed = subscribes.find((e) => e.sip.header('authorization'));
    const ok = ofDialog.find((e) => e.dir === '<-' && e.sip.isResponse && e.sip.status === 200 && e.sip.cseqMethod() === 'SUBSCRIBE');
    const notifyEntries = ofDialog.filter((e) => e.dir === '<-' && e.sip.method === 'NOTIFY');
    const wireBodies = notifyEntries.map((e) => Buffer.byteLength(e.sip.body, 'utf8'));

    // Per part: NOTIFY on the wire → the client's 200 (JsSIP), and that 200 → the next NOTIFY
    // (proxy and server, but also ConferenceListState.apply: JsSIP answers, then emits `notify`
    // synchronously, so the next message is read only after the apply).
    const answers = ofDialog.filter((e) => e.dir === '->' && e.sip.isResponse && e.sip.cseqMethod() === 'NOTIFY');
    let clientMs = 0;
    let serverMs = 0;
    let applyMs = 0;
    for (const [i, n] of notifyEntries.entries()) {
      const answer = answers.find((a) => a.sip.header('cseq') === n.sip.header('cseq'));
      if (answer) clientMs += stampOf(answer) - stampOf(n);
      const next = notifyEntries[i + 1];
      if (answer && next) serverMs += stampOf(next) - stampOf(answer);
    }
    for (const n of notifies) applyMs += n.applyMs;
    const firstMs = notifies[0].at - t0;
    const completeMs = completeAt - t0;
    const largest = Math.max(...notifies.map((n) => n.bytes));
    const totalBytes = notifies.reduce((s, n) => s + n.bytes, 0);
    const partsUntilComplete = notifies.findIndex((n) => n.complete) + 1;
    const [textMin, textAvg, textMax] = databaseTextBytes(sys.db.url);
    const lines = [
      `large list: ${COUNT} conferences, JsSIP ${JsSIP.version} (digest MD5), binaries from ${process.env.CONFLIST_BIN_DIR || 'target/debug'}`,
      `  text per conference in the database: ${textMin}–${textMax} bytes, ${textAvg} on average`,
      `  SUBSCRIBE → 401:                   ${challenge ? ms(stampOf(challenge) - t0) : 'n/a'}`,
      `  SUBSCRIBE → authenticated SUBSCRIBE: ${authed ? ms(stampOf(authed) - t0) : 'n/a'}`,
      `  SUBSCRIBE → 200:                   ${ok ? ms(stampOf(ok) - t0) : 'n/a'}`,
      `  SUBSCRIBE → first NOTIFY event:    ${ms(firstMs)} (bound ${FIRST_NOTIFY_MS} ms)`,
      `  SUBSCRIBE → complete list:         ${ms(completeMs)}`,
      `  NOTIFYs until complete:            ${partsUntilComplete} (${notifies.length} received in all)`,
      `  per part, NOTIFY → client's 200:   ${ms(clientMs / notifyEntries.length)} (of it ConferenceListState.apply ${ms(applyMs / notifies.length)})`,
      `  per part, 200 → next NOTIFY:       ${ms(serverMs / Math.max(1, notifyEntries.length - 1))} (proxy and server, and the apply above: JsSIP answers before its notify event, which holds the event loop)`,
      `  largest body:                      ${largest} bytes (cap ${MAX_BODY}); ${totalBytes} bytes in all, ${Math.round(totalBytes / COUNT)} per conference`,
    ];
    const report = lines.join('\n') + '\n';
    process.stdout.write(report);
    mkdirSync(path.dirname(REPORT), { recursive: true });
    writeFileSync(REPORT, report);

    // The parts: a full document marked incomplete, then partials with consecutive versions, the
    // last of them complete.
    assert.ok(partsUntilComplete > 1, `a list of ${COUNT} conferences comes in several NOTIFYs (got ${partsUntilComplete})`);
    assert.equal(notifies[0].state, 'full', 'the first NOTIFY is a full document');
    assert.equal(notifies[0].complete, false, 'the first NOTIFY is marked complete="false"');
    for (let i = 1; i < partsUntilComplete; i++) {
      assert.equal(notifies[i].state, 'partial', `part ${i + 1} is a partial document`);
      assert.equal(notifies[i].version, notifies[i - 1].version + 1n, `part ${i + 1} has the next version`);
    }
    for (const [i, n] of notifies.entries()) {
      assert.ok(n.bytes <= MAX_BODY, `NOTIFY ${i + 1} body is ${n.bytes} bytes, over ${MAX_BODY}`);
    }
    assert.deepEqual(wireBodies.slice(0, notifies.length), notifies.map((n) => n.bytes), 'JsSIP got the bodies sent on the wire');
    assert.ok(
      firstMs <= FIRST_NOTIFY_MS,
      `the first NOTIFY came ${ms(firstMs)} after the SUBSCRIBE, over ${FIRST_NOTIFY_MS} ms:\n${report}`,
    );

    // The assembled list is the database's.
    const rows = databaseRows(sys.db.url);
    assert.equal(rows.length, COUNT, `the database holds ${COUNT} conferences of ${USER}`);
    const got = new Map(completeSnapshot.map((c) => [c.entity, c]));
    assert.deepEqual([...got.keys()].sort(), rows.map((r) => r.entity).sort(), 'the same conferences as the database');
    const mismatches = [];
    for (const r of rows) {
      const c = got.get(r.entity);
      const expect = {
        subject: r.subject,
        displayText: r.displayText,
        status: r.status,
        role: r.role,
        response: r.response,
        organizer: r.organizerName,
        timeZone: r.timeZone,
        recurrence: r.recurrence,
        passcode: r.passcodeRequired === true,
        revision: r.revision,
        // A recurring meeting shows its next occurrence instead of the first one.
        start: r.recurrence ? undefined : r.start === null ? null : Date.parse(r.start),
      };
      const actual = {
        subject: c.subject,
        displayText: c.displayText,
        status: c.status,
        role: c.role,
        response: c.response,
        organizer: c.organizer?.displayText ?? null,
        timeZone: c.timeZone,
        recurrence: c.recurrence,
        passcode: c.passcodeRequired === true,
        revision: c.revision,
        start: r.recurrence ? undefined : c.start === null ? null : Date.parse(c.start),
      };
      if (JSON.stringify(actual) !== JSON.stringify(expect)) {
        mismatches.push(`${r.entity}: got ${JSON.stringify(actual)}, database ${JSON.stringify(expect)}`);
      }
    }
    assert.equal(mismatches.length, 0, `${mismatches.length} conferences differ from the database (first 5):\n${mismatches.slice(0, 5).join('\n')}`);
    assert.ok(!got.has('sip:1001@conf.example.com'), "no other user's conference in the list");
  } catch (err) {
    process.stderr.write(`\n######## large list FAILED: ${err.message}\n${sys.logs()}`);
    if (TRACE) process.stderr.write(wire.transcript(since).slice(0, 20_000));
    throw err;
  } finally {
    wire.off('entry', onEntry);
    if (subscriber) {
      subscriber.removeAllListeners('terminated');
      const ended = nextEvent(subscriber, 'terminated', 'the JsSIP subscription to end', 5_000);
      try {
        subscriber.terminate();
      } catch {
        // already terminated
      }
      await ended.catch(() => {});
    }
    const disconnected = nextEvent(ua, 'disconnected', 'the JsSIP UA to disconnect', 5_000);
    ua.stop();
    await disconnected.catch(() => {});
  }
});
