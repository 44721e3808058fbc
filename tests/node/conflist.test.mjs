// Unit tests of the web client's module `web/conflist.js` (NOTIFY bodies → the list), and its
// cross-check against the Rust crate `conflist-document`: the example
// `document/examples/sequences.rs` generates random sequences of full, partial, gapped and
// corrupted documents with the state `apply` gives after each; conflist.js must agree on every
// step (same conferences, same version, same gap, same kind of error).
//
// Run: (cd tests/node && node --test conflist.test.mjs). The cross-check runs
// `cargo run -q -p conflist-document --example sequences` (set CONFLIST_SEQUENCES_FILE to a
// file with its output to skip cargo).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rustSequences } from './sequences.mjs';
import {
  CONTENT_TYPE,
  ConferenceListState,
  DocumentError,
  EVENT,
  NAMESPACE,
  VersionGapError,
  applyDocument,
  compareEntities,
  joinLink,
  parseDocument,
  parseXml,
  sortForDisplay,
  statusOf,
  titleOf,
} from '../../web/conflist.js';

const USER = 'sip:alice@example.com';
const doc = (version, state, body = '', rootAttrs = '') =>
  `<?xml version="1.0" encoding="UTF-8"?><conference-list xmlns="${NAMESPACE}" entity="${USER}" version="${version}" state="${state}"${rootAttrs}>${body}</conference-list>`;
const conf = (id, inner = '') => `<conference entity="sip:${id}@conf.example.com" state="full">${inner}</conference>`;
const deleted = (id, reason) =>
  `<conference entity="sip:${id}@conf.example.com" state="deleted"${reason === undefined ? '' : ` reason="${reason}"`}/>`;
const subject = (s) => `<conference-description><subject>${s}</subject></conference-description>`;
const entities = (list) => list.map((c) => c.entity.replace(/^sip:(\d+)@.*$/, '$1'));

test('constants name the event, the MIME type and the namespace', () => {
  assert.equal(EVENT, 'conference-list');
  assert.equal(CONTENT_TYPE, 'application/conference-list+xml');
  assert.equal(NAMESPACE, 'urn:conflist:params:xml:ns:conference-list');
});

test('a full document is parsed into every field of the format', () => {
  const xml = doc(
    7,
    'full',
    `<conference entity="sip:1001@conf.example.com" state="full"><conference-description>` +
      `<display-text>Weekly sync</display-text><subject>Roadmap &amp; plans</subject><free-text>Bring notes</free-text>` +
      `<keywords>a  b&#9;c</keywords><conf-uris><entry><uri>sip:1001@conf.example.com</uri><display-text>Dial-in</display-text>` +
      `<purpose>participation</purpose></entry></conf-uris><service-uris><entry><uri>https://meet.example.com/1001</uri>` +
      `<purpose>web-page</purpose></entry></service-uris><maximum-user-count> 50 </maximum-user-count>` +
      `<available-media><entry label="1"><type>audio</type></entry></available-media></conference-description>` +
      `<schedule start="2026-11-24T09:00:00Z" end="2026-11-24T10:00:00Z"/><role>organizer</role></conference>`,
  );
  const d = parseDocument(xml);
  assert.equal(d.version, 7n);
  assert.equal(d.state, 'full');
  assert.equal(d.complete, true);
  assert.deepEqual(d.entries, [
    {
      entity: 'sip:1001@conf.example.com',
      deleted: false,
      conference: {
        entity: 'sip:1001@conf.example.com',
        displayText: 'Weekly sync',
        subject: 'Roadmap & plans',
        freeText: 'Bring notes',
        keywords: ['a', 'b', 'c'],
        confUris: [{ uri: 'sip:1001@conf.example.com', displayText: 'Dial-in', purpose: 'participation' }],
        serviceUris: [{ uri: 'https://meet.example.com/1001', displayText: null, purpose: 'web-page' }],
        maximumUserCount: 50,
        availableMedia: [{ label: '1', type: 'audio', displayText: null }],
        start: '2026-11-24T09:00:00Z',
        end: '2026-11-24T10:00:00Z',
        timeZone: null,
        recurrence: null,
        role: 'organizer',
        response: null,
        status: null,
        organizer: null,
        passcodeRequired: null,
        revision: null,
      },
    },
  ]);
  assert.equal(joinLink(d.entries[0].conference), 'https://meet.example.com/1001');
  assert.equal(titleOf(d.entries[0].conference), 'Roadmap & plans');
});

test('status, response, organizer, passcode flag, revision, time zone, recurrence, reasons', () => {
  const xml = doc(
    3,
    'partial',
    `<conference entity="sip:1@x" state="full" revision="r&amp;7"><schedule start="2026-11-24T09:00:00Z" time-zone="Europe/Berlin" ` +
      `recurrence="FREQ=WEEKLY;BYDAY=TU"/><role>participant</role><response>tentative</response><status>active</status>` +
      `<organizer><uri>sip:carol@example.com</uri><display-text>Carol</display-text></organizer>` +
      `<passcode-required>true</passcode-required></conference>` +
      deleted(2, 'removed') + deleted(3, 'cancelled') + deleted(4, 'out-of-window') + deleted(5) + deleted(6, 'superseded'),
  );
  const d = parseDocument(xml);
  const c = d.entries[0].conference;
  assert.deepEqual(
    [c.revision, c.start, c.end, c.timeZone, c.recurrence, c.role, c.response, c.status, c.passcodeRequired],
    ['r&7', '2026-11-24T09:00:00Z', null, 'Europe/Berlin', 'FREQ=WEEKLY;BYDAY=TU', 'participant', 'tentative', 'active', true],
  );
  assert.deepEqual(c.organizer, { uri: 'sip:carol@example.com', displayText: 'Carol' });
  assert.deepEqual(
    d.entries.slice(1).map((e) => [e.deleted, e.reason]),
    [[true, 'removed'], [true, 'cancelled'], [true, 'out-of-window'], [true, null], [true, null]],
  );
  assert.equal(statusOf(c), 'live');

  // Lenient where the Rust crate is: tokens trimmed (Unicode white space), ASCII case, `_`.
  const one = (inner) => parseDocument(doc(0, 'full', conf(1, inner))).entries[0].conference;
  assert.equal(one('<status>\u0085 Cancelled\n</status>').status, 'cancelled');
  assert.equal(one('<status>postponed</status>').status, null, 'unknown status tokens read as absent');
  assert.equal(one('<response> NEEDS_ACTION </response>').response, 'needs-action');
  assert.equal(one('<response>delegated</response>').response, null);
  assert.equal(one('<passcode-required> 0 </passcode-required>').passcodeRequired, false);
  assert.equal(one('<passcode-required>1</passcode-required>').passcodeRequired, true);
  assert.equal(one('<organizer><uri></uri></organizer>').organizer, null);
  assert.equal(one('<schedule start="" end="2026-11-24T10:00:00Z"/>').start, null);
  const reason = (r) => parseDocument(doc(1, 'partial', deleted(1, r))).entries[0].reason;
  assert.equal(reason(' removed&#10;'), 'removed');
  assert.equal(reason('REMOVED'), null, 'reasons are case-sensitive, as in Rust');
  for (const [value, complete] of [['false', false], ['0', false], ['1', true], [' true ', true]]) {
    assert.equal(parseDocument(doc(0, 'full', '', ` complete="${value}"`)).complete, complete, value);
  }
  const errors = [
    [doc(0, 'full', '', ' complete="no"'), 'bad-attribute'],
    [doc(0, 'full', conf(1, '<passcode-required>yes</passcode-required>')), 'bad-element'],
    [doc(0, 'full', conf(1, '<organizer><display-text>x</display-text></organizer>')), 'missing-element'],
  ];
  for (const [body, code] of errors) {
    assert.throws(() => parseDocument(body), (e) => e instanceof DocumentError && e.code === code, body);
  }
});

test('a state sent in several NOTIFYs: complete once the last part is applied', () => {
  const s = new ConferenceListState();
  assert.equal(s.complete, false, 'nothing held yet');
  s.apply(doc(0, 'full', conf(1009)));
  assert.equal(s.complete, true);
  let r = s.apply(doc(4, 'full', conf(1002) + conf(1001), ' complete="false"'));
  assert.equal(r.kind, 'applied');
  assert.equal(r.complete, false);
  assert.equal(s.complete, false);
  assert.deepEqual(entities(s.conferences), ['1001', '1002']);
  r = s.apply(doc(5, 'partial', conf(1004), ' complete="false"'));
  assert.equal(s.complete, false);
  r = s.apply(doc(6, 'partial', conf(1003)));
  assert.equal(r.complete, true);
  assert.equal(s.complete, true);
  assert.deepEqual(entities(s.conferences), ['1001', '1002', '1003', '1004']);
  assert.deepEqual(r.changed, ['sip:1003@conf.example.com']);

  // A lost part is a gap; the list stays incomplete until the new subscription's state is in.
  s.apply(doc(10, 'full', conf(1001), ' complete="false"'));
  assert.equal(s.apply(doc(12, 'partial', conf(1003))).kind, 'gap');
  assert.equal(s.complete, false);
  s.reset();
  assert.equal(s.complete, false);

  r = s.apply(doc(0, 'full', conf(1001)));
  r = s.apply(doc(1, 'partial', deleted(1001, 'out-of-window') + deleted(1005)));
  assert.deepEqual(r.deleted, [
    { entity: 'sip:1001@conf.example.com', reason: 'out-of-window' },
    { entity: 'sip:1005@conf.example.com', reason: null },
  ]);
  assert.deepEqual(r.removed, ['sip:1001@conf.example.com']);
});

test('partials follow the held version; a full document replaces at any version', () => {
  const s = new ConferenceListState();
  let r = s.apply(doc(0, 'full', conf(1002, subject('b')) + conf(1001, subject('a'))));
  assert.equal(r.kind, 'applied');
  assert.deepEqual(entities(r.conferences), ['1001', '1002']);
  assert.deepEqual(r.changed.sort(), ['sip:1001@conf.example.com', 'sip:1002@conf.example.com']);

  r = s.apply(doc(1, 'partial', conf(1001, subject('moved')) + deleted(1002) + conf(1003)));
  assert.equal(r.kind, 'applied');
  assert.equal(s.version, 1n);
  assert.deepEqual(entities(s.conferences), ['1001', '1003']);
  assert.equal(s.conferences[0].subject, 'moved');
  assert.deepEqual(r.changed, ['sip:1001@conf.example.com', 'sip:1003@conf.example.com']);
  assert.deepEqual(r.removed, ['sip:1002@conf.example.com']);

  // A gap: reported, nothing changes.
  r = s.apply(doc(3, 'partial', deleted(1001)));
  assert.equal(r.kind, 'gap');
  assert.equal(r.expected, 2n);
  assert.equal(r.got, 3n);
  assert.ok(r.error instanceof VersionGapError);
  assert.equal(s.version, 1n);
  assert.deepEqual(entities(s.conferences), ['1001', '1003']);

  // A repeated version is a gap too.
  assert.equal(s.apply(doc(1, 'partial')).kind, 'gap');

  // A full document at any version replaces; unchanged conferences are not "changed".
  r = s.apply(doc(40, 'full', conf(1003)));
  assert.equal(r.kind, 'applied');
  assert.deepEqual(entities(s.conferences), ['1003']);
  assert.deepEqual(r.changed, []);
  assert.deepEqual(r.removed, ['sip:1001@conf.example.com']);
  assert.equal(s.version, 40n);
});

test('the last entry of a conference wins, deletions of unknown conferences are ignored', () => {
  const s = new ConferenceListState();
  s.apply(doc(0, 'full', conf(1001)));
  const r = s.apply(doc(1, 'partial', conf(1002, subject('x')) + deleted(1002) + deleted(1009) + conf(1001, subject('1')) + conf(1001, subject('2'))));
  assert.equal(r.kind, 'applied');
  assert.deepEqual(entities(s.conferences), ['1001']);
  assert.equal(s.conferences[0].subject, '2');
});

test('a partial first document applies to an empty list; versions are 64-bit', () => {
  const s = new ConferenceListState();
  assert.equal(s.apply(doc(5, 'partial', conf(1001))).kind, 'applied');
  const max = (1n << 64n) - 1n;
  assert.equal(s.apply(doc(max, 'full')).kind, 'applied');
  assert.equal(s.version, max);
  const r = s.apply(doc(0, 'partial'));
  assert.equal(r.kind, 'gap', 'u64::MAX has no next version (Rust: checked_add)');
  assert.equal(r.expected, 0n);
  assert.equal(s.apply(doc('18446744073709551616', 'full')).error.code, 'bad-attribute');
  assert.throws(() => applyDocument([], 3n, parseDocument(doc(5, 'partial'))), VersionGapError);
});

test('bad documents are typed errors and leave the list alone', () => {
  const s = new ConferenceListState();
  s.apply(doc(0, 'full', conf(1001)));
  const cases = [
    ['<conference-list', 'xml'],
    [doc(1, 'partial').replace(NAMESPACE, 'urn:other'), 'wrong-root'],
    [doc(1, 'partial').replace(' version="1"', ''), 'missing-attribute'],
    [doc(1, 'whole'), 'bad-attribute'],
    [doc(1, 'full', deleted(1001)), 'deleted-in-full'],
    [doc(1, 'partial', conf(1001, '<conference-description><maximum-user-count>x</maximum-user-count></conference-description>')), 'bad-element'],
    [doc(1, 'partial', conf(1001, '<conference-description><conf-uris><entry/></conf-uris></conference-description>')), 'missing-element'],
    [doc(1, 'partial', '<conference entity="sip:1@x" state="partial"/>'), 'bad-attribute'],
    [doc(1, 'partial', '&nbsp;'), 'xml'],
    [`${doc(1, 'partial')}<x/>`, 'xml'],
  ];
  for (const [xml, code] of cases) {
    const r = s.apply(xml);
    assert.equal(r.kind, 'error', `${xml} is refused`);
    assert.ok(r.error instanceof DocumentError);
    assert.equal(r.error.code, code, `${xml}: ${r.error.message}`);
  }
  assert.equal(s.version, 0n);
  assert.deepEqual(entities(s.conferences), ['1001']);
});

test('the built-in XML parser: namespaces, prefixes, CDATA, references, foreign elements', () => {
  const xml =
    `<?xml version="1.0"?>\r\n<!-- c --><cl:conference-list xmlns:cl="${NAMESPACE}" xmlns:x="urn:x" entity="${USER}" version=" 2 " state="partial">` +
    `<x:conference entity="sip:9@x" state="full"/>` +
    `<cl:conference entity="sip:1@x" state="full" x:extra="1"><cl:conference-description><cl:subject>a<![CDATA[<b>]]>&#x1F600;<x:i>skipped</x:i>\r\nz</cl:subject>` +
    `<x:subject>not ours</x:subject></cl:conference-description><cl:schedule start="a&#10;b\tc"/></cl:conference></cl:conference-list>`;
  const d = parseDocument(xml, { parser: 'builtin' });
  assert.equal(d.version, 2n);
  assert.deepEqual(d.entries.map((e) => e.entity), ['sip:1@x']);
  assert.equal(d.entries[0].conference.subject, 'a<b>😀\nz');
  assert.equal(d.entries[0].conference.start, 'a\nb c');
  assert.equal(parseXml('<a xmlns="urn:a"><b/></a>').children[0].ns, 'urn:a');
  assert.throws(() => parseXml('<a><b></a>'), DocumentError);
  assert.throws(() => parseXml('<a x="1" x="2"/>'), DocumentError);
  assert.throws(() => parseXml('<p:a/>'), DocumentError);
});

test('an injected parser is used', () => {
  let called = 0;
  const s = new ConferenceListState({
    parser: (text) => {
      called += 1;
      return parseXml(text);
    },
  });
  assert.equal(s.apply(doc(0, 'full', conf(1))).kind, 'applied');
  assert.equal(called, 1);
});

test('entities sort by code point, as the Rust crate sorts them (not by UTF-16 unit)', () => {
  assert.ok(compareEntities('sip:\u{E000}', 'sip:😀') < 0);
  assert.ok('sip:\u{E000}' > 'sip:😀', 'UTF-16 order differs');
  assert.ok(compareEntities('sip:a', 'sip:ab') < 0);
  assert.equal(compareEntities('x', 'x'), 0);
});

test('status: from the document when it has one, else from the schedule; nearest-first order', () => {
  const now = Date.parse('2026-11-24T09:30:00Z');
  const base = parseDocument(doc(0, 'full', conf(1))).entries[0].conference;
  const at = (start, end, extra = {}) => ({ ...base, start, end, ...extra });
  const live = at('2026-11-24T09:00:00Z', '2026-11-24T10:00:00Z', { entity: 'live' });
  const soon = at('2026-11-24T11:00:00Z', '2026-11-24T12:00:00Z', { entity: 'soon' });
  const later = at('2026-11-25T11:00:00Z', null, { entity: 'later' });
  const ended = at('2026-11-23T09:00:00Z', '2026-11-23T10:00:00Z', { entity: 'ended' });
  const undated = at(null, null, { entity: 'undated' });
  const cancelled = at('2026-11-24T09:00:00Z', '2026-11-24T10:00:00Z', { entity: 'cancelled', status: 'cancelled' });
  assert.equal(statusOf(live, now), 'live');
  assert.equal(statusOf(soon, now), 'upcoming');
  assert.equal(statusOf(ended, now), 'ended');
  assert.equal(statusOf(undated, now), null);
  assert.equal(statusOf(cancelled, now), 'cancelled');
  assert.equal(statusOf({ ...soon, status: 'active' }, now), 'live');
  assert.equal(statusOf({ ...ended, nextOccurrence: { start: '2026-11-24T09:15:00Z', end: '2026-11-24T09:45:00Z' } }, now), 'live');
  assert.deepEqual(
    sortForDisplay([undated, later, soon, ended, cancelled, live], now).map((c) => c.entity),
    ['live', 'cancelled', 'soon', 'later', 'undated', 'ended'],
  );
  // A status element and a next-occurrence in the document are read.
  const withExt = parseDocument(
    doc(0, 'full', conf(1, '<status>cancelled</status><next-occurrence start="2026-12-01T09:00:00Z" end="2026-12-01T10:00:00Z"/>')),
  ).entries[0].conference;
  assert.equal(withExt.status, 'cancelled');
  assert.deepEqual(withExt.nextOccurrence, { start: '2026-12-01T09:00:00Z', end: '2026-12-01T10:00:00Z' });
  assert.equal(joinLink({ ...base, serviceUris: [{ uri: 'javascript:alert(1)', purpose: 'web-page', displayText: null }] }), null);
});

// ---------------------------------------------------------------------------------------------
// Cross-check against the Rust crate.

/** What conflist.js makes of one step, in the generator's JSON shape. */
function outcomeOf(result) {
  if (result.kind === 'applied') {
    return { kind: 'applied', version: String(result.version), complete: result.complete, deleted: result.deleted, conferences: result.conferences };
  }
  if (result.kind === 'gap') return { kind: 'gap', expected: String(result.expected), got: String(result.got) };
  return { kind: 'error', code: result.error.code };
}

/** Runs every sequence through a fresh `ConferenceListState`; returns the steps that disagree. */
function crossCheck(data, options = {}) {
  const mismatches = [];
  let steps = 0;
  data.sequences.forEach((sequence, s) => {
    const state = new ConferenceListState(options);
    sequence.steps.forEach((step, i) => {
      steps += 1;
      const got = outcomeOf(state.apply(step.xml));
      try {
        assert.deepEqual(got, step.outcome);
      } catch (err) {
        mismatches.push({ sequence: s, step: i, xml: step.xml, rust: step.outcome, js: got, diff: err.message });
      }
    });
  });
  return { steps, mismatches };
}

test('conflist.js agrees with the Rust crate on every step of generated sequences', { timeout: 900_000 }, () => {
  const data = rustSequences(Number(process.env.CONFLIST_SEQUENCES_SEED ?? 1), 300);
  const kinds = {};
  for (const s of data.sequences) for (const st of s.steps) kinds[st.outcome.kind + (st.outcome.code ? `:${st.outcome.code}` : '')] = 1;
  for (const k of ['applied', 'gap', 'error:xml', 'error:deleted-in-full', 'error:bad-attribute', 'error:wrong-root', 'error:bad-element', 'error:missing-element']) {
    assert.ok(kinds[k], `the sequences exercise ${k} (seen: ${Object.keys(kinds).join(', ')})`);
  }
  // …and the newer fields: incomplete states, every deletion reason, every status and response.
  const seen = new Set();
  for (const s of data.sequences) {
    for (const { outcome: o } of s.steps) {
      if (o.kind !== 'applied') continue;
      if (!o.complete) seen.add('incomplete');
      for (const d of o.deleted) seen.add(`reason:${d.reason}`);
      for (const c of o.conferences) {
        seen.add(`status:${c.status}`);
        seen.add(`response:${c.response}`);
        seen.add(`organizer:${c.organizer !== null}`);
        seen.add(`passcode:${c.passcodeRequired}`);
      }
    }
  }
  const wanted = ['incomplete', 'reason:null', 'organizer:true', 'organizer:false', 'passcode:true', 'passcode:false', 'passcode:null'];
  for (const t of ['removed', 'cancelled', 'out-of-window']) wanted.push(`reason:${t}`);
  for (const t of ['scheduled', 'active', 'ended', 'cancelled', null]) wanted.push(`status:${t}`);
  for (const t of ['needs-action', 'accepted', 'declined', 'tentative', null]) wanted.push(`response:${t}`);
  for (const w of wanted) assert.ok(seen.has(w), `the sequences exercise ${w}`);
  const { steps, mismatches } = crossCheck(data, { parser: 'builtin' });
  assert.ok(steps >= 3000, `${steps} steps checked`);
  assert.deepEqual(
    mismatches.slice(0, 3).map((m) => `sequence ${m.sequence} step ${m.step}\nxml: ${m.xml}\n${m.diff}`),
    [],
    `${mismatches.length} of ${steps} steps disagree`,
  );
});
