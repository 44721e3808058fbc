// The README's "Web client" snippets (tests/node/snippets/*.mjs, included in README.md
// verbatim) run against the real system: JsSIP and SIP.js with conflist.js get the user's list
// and then a live change; a wrong password reaches onError. A test also checks that README.md
// holds each snippet exactly as the file has it.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Inbox, RecordingWebSocket, runSql, startSystem } from './harness.mjs';
import { watchWithJsSIP } from './snippets/jssip.mjs';
import { watchWithSipJs } from './snippets/sipjs.mjs';

// Both libraries construct `new WebSocket(url, 'sip')` from the global, as in a browser.
globalThis.WebSocket = RecordingWebSocket;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const README = path.resolve(HERE, '..', '..', 'README.md');
const SNIPPETS = ['jssip.mjs', 'sipjs.mjs'];

let sys;

before(async () => {
  sys = await startSystem();
});

after(async () => {
  if (sys) await sys.stop();
});

test('README.md shows each snippet verbatim', () => {
  const readme = readFileSync(README, 'utf8');
  for (const name of SNIPPETS) {
    const code = readFileSync(path.join(HERE, 'snippets', name), 'utf8');
    assert.ok(readme.includes('```js\n' + code + '```\n'), `README.md has tests/node/snippets/${name} verbatim in a \`\`\`js block`);
  }
});

/** Runs `watch` until the list has `count` conferences, changes 1001, waits for that change. */
async function listThenChange(watch, { user, password, count, subject }) {
  const lists = new Inbox();
  const errors = [];
  const stop = await watch({
    wsUrl: sys.wsUrl,
    user,
    password,
    onList: (conferences, changed) => lists.push({ conferences, changed }),
    onError: (e) => errors.push(e),
  });
  try {
    const first = await lists.next('the first list');
    assert.equal(first.conferences.length, count, JSON.stringify(first.conferences.map((c) => c.entity)));
    runSql(sys.db.url, `UPDATE conflist_conferences SET subject = '${subject}' WHERE conference_uri = 'sip:1001@conf.example.com'`);
    const next = await lists.next('the list after the change');
    assert.deepEqual(next.changed, ['sip:1001@conf.example.com']);
    assert.equal(next.conferences.find((c) => c.entity === 'sip:1001@conf.example.com').subject, subject);
    assert.deepEqual(errors, []);
  } finally {
    await stop();
  }
}

test('the JsSIP snippet: the list, then a live change', async () => {
  await listThenChange(watchWithJsSIP, { user: 'sip:alice@example.com', password: sys.passwords.alice, count: 3, subject: 'JsSIP snippet' });
});

test('the SIP.js snippet: the list, then a live change', async () => {
  await listThenChange(watchWithSipJs, { user: 'sip:bob@example.com', password: sys.passwords.bob, count: 4, subject: 'SIP.js snippet' });
});

test('the JsSIP snippet reports a wrong password', async () => {
  const errors = new Inbox();
  const stop = watchWithJsSIP({
    wsUrl: sys.wsUrl,
    user: 'sip:alice@example.com',
    password: 'wrong',
    onList: () => assert.fail('no list with a wrong password'),
    onError: (e) => errors.push(e),
  });
  try {
    assert.equal((await errors.next('onError')).message, 'wrong password');
  } finally {
    await stop();
  }
});
