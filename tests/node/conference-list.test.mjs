// Acceptance: the unmodified browser SIP libraries — npm `jssip` and `sip.js`, under Node with
// `ws` standing in for the browser's WebSocket — each subscribe to `conference-list` through the
// running proxy and subscriber-server, receive the document, refresh and unsubscribe.
//
// Run: cargo build -p conflist-proxy -p conflist-server && (cd tests/node && npm ci && node --test)
// CONFLIST_TEST_TRACE=1 prints every WebSocket message; CONFLIST_TEST_LOGS=1 streams the
// binaries' logs. On failure the test's wire transcript and the binaries' logs go to stderr.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import JsSIP from 'jssip';
import { Core, Subscriber, SubscriptionState, UserAgent } from 'sip.js';
import {
  Inbox,
  RecordingWebSocket,
  TRACE,
  nextEvent,
  parseConferenceList,
  startSystem,
  wire,
  withTimeout,
} from './harness.mjs';

// Both libraries construct `new WebSocket(url, 'sip')` from the global, as in a browser.
globalThis.WebSocket = RecordingWebSocket;

const EVENT = 'conference-list';
const CONTENT_TYPE = 'application/conference-list+xml';
const NAMESPACE = 'urn:conflist:params:xml:ns:conference-list';
const EXPIRES = 60;

const DEMO = {
  alice: ['1001', '1002', '1003'],
  bob: ['1001', '1002', '1003', '1004'],
};
const conferenceUris = (ids) => ids.map((id) => `sip:${id}@conf.example.com`).sort();

let sys;

before(async () => {
  sys = await startSystem();
});

after(async () => {
  if (sys) await sys.stop();
});

/** Runs `body`; on failure prints what went over the wire since the test began, and the logs. */
async function reportingFailures(name, body) {
  const since = wire.mark();
  try {
    await body();
  } catch (err) {
    const parts = [`\n######## ${name} FAILED: ${err?.message ?? err}\n`];
    if (!TRACE) parts.push(`######## WebSocket traffic of this test:\n${wire.transcript(since)}`);
    if (sys) parts.push(sys.logs());
    process.stderr.write(parts.join(''));
    throw err;
  }
}

/**
 * Checks a conference-list document: root element, namespace, entity, state, and (for a full
 * document) exactly the user's conferences. Returns the version.
 */
function checkDocument(body, user, { first }) {
  assert.ok(body && body.length > 0, 'NOTIFY has a body');
  const doc = parseConferenceList(body);
  assert.equal(doc.rootName, 'conference-list', `root element of:\n${body}`);
  assert.equal(doc.root.xmlns, NAMESPACE, `default namespace of the root in:\n${body}`);
  assert.equal(doc.root.entity, `sip:${user}@example.com`, `entity of the root in:\n${body}`);
  assert.match(doc.root.version ?? '', /^\d+$/, `version of the root in:\n${body}`);
  const version = Number(doc.root.version);
  if (first) {
    assert.equal(version, 0, `first NOTIFY has version="0":\n${body}`);
    assert.equal(doc.root.state, 'full', `first NOTIFY has state="full":\n${body}`);
  }
  if (doc.root.state === 'full') {
    assert.deepEqual(
      doc.conferences.map((c) => c.entity).sort(),
      conferenceUris(DEMO[user]),
      `${user}'s conferences and no others in:\n${body}`,
    );
  }
  return version;
}

/** Event, Content-Type and Subscription-State of a non-final NOTIFY (any `getHeader` API). */
function checkActiveNotifyHeaders(request) {
  assert.equal(request.getHeader('Event')?.split(';')[0].trim(), EVENT, 'NOTIFY Event header');
  assert.equal(request.getHeader('Content-Type')?.split(';')[0].trim(), CONTENT_TYPE, 'NOTIFY Content-Type');
  const state = request.getHeader('Subscription-State') ?? '';
  const m = /^active\s*;.*\bexpires\s*=\s*(\d+)/i.exec(state);
  assert.ok(m, `Subscription-State "${state}" is active with expires`);
  assert.ok(Number(m[1]) <= EXPIRES, `Subscription-State expires ${m[1]} <= ${EXPIRES}`);
}

const sameDialogRequest = (callId, method) => (sip) => !sip.isResponse && sip.method === method && sip.header('call-id') === callId;
const responseTo = (callId, method) => (sip) =>
  sip.isResponse && sip.header('call-id') === callId && sip.cseqMethod() === method;

/**
 * Waits on the wire for the terminated NOTIFY of dialog `callId` (from `since` on) and for the
 * client's 200 to it; returns the NOTIFY.
 */
async function finalNotifyOnWire(callId, since) {
  const notify = await wire.waitFor(
    (sip) =>
      sameDialogRequest(callId, 'NOTIFY')(sip) &&
      /^terminated\b/i.test(sip.header('subscription-state') ?? ''),
    `a NOTIFY with Subscription-State: terminated (Call-ID ${callId})`,
    { since },
  );
  const cseq = notify.sip.header('cseq');
  const ok = await wire.waitFor(
    (sip, e) => e.dir === '->' && responseTo(callId, 'NOTIFY')(sip) && sip.header('cseq') === cseq,
    `the client's response to the final NOTIFY (CSeq ${cseq})`,
    { since: notify.seq },
  );
  assert.equal(ok.sip.status, 200, `client answered the final NOTIFY with ${ok.sip.startLine}`);
  return notify;
}

// ---------------------------------------------------------------------------------------------

test('JsSIP subscribes to conference-list as alice: document, refresh, unsubscribe', async () => {
  await reportingFailures('JsSIP', async () => {
    const since = wire.mark();
    const ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(sys.wsUrl)],
      uri: 'sip:alice@example.com',
      register: false,
    });
    try {
      const connected = nextEvent(ua, 'connected', 'the JsSIP UA to connect');
      ua.start();
      await connected;

      const subscriber = ua.subscribe('sip:alice@example.com', EVENT, CONTENT_TYPE, { expires: EXPIRES });
      const C = subscriber.C;
      const codeName = (code) => Object.keys(C).find((k) => !k.startsWith('STATE_') && C[k] === code) ?? code;

      const notifies = new Inbox();
      subscriber.on('notify', (isFinal, request, body, contentType) =>
        notifies.push({ isFinal, request, body, contentType }),
      );
      let terminatedInfo = null;
      const terminated = new Promise((resolve) =>
        subscriber.on('terminated', (code, reason, retryAfter) => {
          terminatedInfo = { code, name: codeName(code), reason, retryAfter };
          resolve(terminatedInfo);
        }),
      );
      // Fails a wait early, with the library's reason, if the subscription ends instead.
      const unlessTerminated = (promise) =>
        Promise.race([
          promise,
          terminated.then((t) => {
            throw new Error(`JsSIP subscription terminated early: ${JSON.stringify(t)}`);
          }),
        ]);

      // Subscribe: 200 (dialog, "accepted"), then the first NOTIFY ("active", "notify").
      const accepted = nextEvent(subscriber, 'accepted', 'JsSIP "accepted" (2xx to SUBSCRIBE)');
      const active = nextEvent(subscriber, 'active', 'JsSIP "active" (NOTIFY with Subscription-State: active)');
      subscriber.subscribe();
      await unlessTerminated(accepted);
      await unlessTerminated(active);
      const first = await unlessTerminated(notifies.next('the first NOTIFY with a body (JsSIP "notify")'));
      assert.equal(first.isFinal, false, 'first NOTIFY is not final');
      assert.equal(first.contentType?.split(';')[0].trim(), CONTENT_TYPE);
      checkActiveNotifyHeaders(first.request);
      const v0 = checkDocument(first.body, 'alice', { first: true });
      assert.equal(subscriber.state, C.STATE_ACTIVE);

      const subscribe = wire.filter((sip, e) => e.dir === '->' && sip.method === 'SUBSCRIBE', since)[0];
      assert.ok(subscribe, 'JsSIP sent a SUBSCRIBE');
      const callId = subscribe.sip.header('call-id');

      // Refresh: an in-dialog SUBSCRIBE → 200 and a NOTIFY with a higher version.
      const beforeRefresh = wire.mark();
      subscriber.subscribe();
      const refreshOk = await unlessTerminated(
        wire.waitFor(
          (sip, e) => e.dir === '<-' && responseTo(callId, 'SUBSCRIBE')(sip) && sip.status >= 200,
          'the final response to the refreshing SUBSCRIBE',
          { since: beforeRefresh },
        ),
      );
      assert.equal(refreshOk.sip.status, 200, `refresh answered ${refreshOk.sip.startLine}`);
      const second = await unlessTerminated(notifies.next('the NOTIFY after the refresh'));
      assert.equal(second.isFinal, false);
      checkActiveNotifyHeaders(second.request);
      const v1 = checkDocument(second.body, 'alice', { first: false });
      assert.ok(v1 > v0, `version after refresh (${v1}) > first version (${v0})`);

      // Unsubscribe: SUBSCRIBE with Expires: 0 → final NOTIFY → "terminated".
      const beforeUnsubscribe = wire.mark();
      subscriber.terminate();
      const t = await withTimeout(terminated, 'JsSIP "terminated" after terminate()');
      assert.equal(
        t.code,
        C.FINAL_NOTIFY_RECEIVED,
        `JsSIP ended the subscription because of a final NOTIFY, not ${t.name}`,
      );
      const unsubscribe = wire.filter(
        (sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip),
        beforeUnsubscribe,
      )[0];
      assert.equal(unsubscribe?.sip.header('expires'), '0', 'terminate() sent Expires: 0');
      const finalNotify = await finalNotifyOnWire(callId, beforeUnsubscribe);
      assert.equal(finalNotify.sip.header('event')?.split(';')[0].trim(), EVENT);
      assert.equal(subscriber.state, C.STATE_TERMINATED);
    } finally {
      const disconnected = nextEvent(ua, 'disconnected', 'the JsSIP UA to disconnect', 5_000);
      ua.stop();
      await disconnected;
    }
  });
});

test('SIP.js subscribes to conference-list as bob: document, refresh, unsubscribe', async () => {
  await reportingFailures('SIP.js', async () => {
    const since = wire.mark();
    const libraryLog = [];
    const ua = new UserAgent({
      uri: UserAgent.makeURI('sip:bob@example.com'),
      transportOptions: { server: sys.wsUrl },
      logBuiltinEnabled: false,
      logConfiguration: false,
      logLevel: 'warn',
      logConnector: (level, category, label, content) => {
        const line = `[sip.js ${level}] ${category}: ${content}`;
        libraryLog.push(line);
        if (TRACE) process.stderr.write(line + '\n');
      },
    });
    try {
      await withTimeout(ua.start(), 'the SIP.js UserAgent to connect');

      const target = UserAgent.makeURI('sip:bob@example.com');
      const subscriber = new Subscriber(ua, target, EVENT, {
        expires: EXPIRES,
        extraHeaders: [`Accept: ${CONTENT_TYPE}`],
      });
      const notifications = new Inbox();
      subscriber.delegate = {
        onNotify: (notification) => {
          notification.accept();
          notifications.push(notification.request);
        },
      };
      const states = new Inbox();
      subscriber.stateChange.addListener((s) => states.push(s));
      const nextState = async (expected) => {
        const s = await states.next(`the SIP.js Subscriber to become ${expected}`);
        assert.equal(s, expected, `SIP.js Subscriber state (log: ${libraryLog.slice(-5).join(' | ')})`);
      };

      // Subscribe: NotifyWait → first NOTIFY → Subscribed.
      await subscriber.subscribe();
      await nextState(SubscriptionState.NotifyWait);
      const first = await notifications.next('the first NOTIFY (SIP.js delegate.onNotify)');
      await nextState(SubscriptionState.Subscribed);
      checkActiveNotifyHeaders(first);
      const v0 = checkDocument(first.body, 'bob', { first: true });
      const dialog = subscriber.dialog;
      assert.ok(dialog, 'SIP.js created a subscription dialog');
      assert.equal(dialog.subscriptionState, Core.SubscriptionState.Active);
      const callId = first.callId;

      const ok = wire.filter((sip, e) => e.dir === '<-' && responseTo(callId, 'SUBSCRIBE')(sip), since)[0];
      assert.equal(ok?.sip.status, 200, 'the SUBSCRIBE was answered 200');

      // Refresh: subscribe() on an active Subscriber sends an in-dialog SUBSCRIBE (what its own
      // timer does at 90% of the duration) → 200 and a NOTIFY with a higher version.
      const beforeRefresh = wire.mark();
      await subscriber.subscribe();
      const refresh = await wire.waitFor(
        (sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip),
        'the refreshing SUBSCRIBE sent by SIP.js',
        { since: beforeRefresh },
      );
      assert.equal(refresh.sip.header('expires'), String(EXPIRES), 'refresh asks for the same duration');
      const refreshOk = await wire.waitFor(
        (sip, e) => e.dir === '<-' && responseTo(callId, 'SUBSCRIBE')(sip) && sip.status >= 200,
        'the final response to the refreshing SUBSCRIBE',
        { since: beforeRefresh },
      );
      assert.equal(refreshOk.sip.status, 200, `refresh answered ${refreshOk.sip.startLine}`);
      const second = await notifications.next('the NOTIFY after the refresh');
      checkActiveNotifyHeaders(second);
      const v1 = checkDocument(second.body, 'bob', { first: false });
      assert.ok(v1 > v0, `version after refresh (${v1}) > first version (${v0})`);
      assert.equal(subscriber.state, SubscriptionState.Subscribed);

      // Unsubscribe: SUBSCRIBE with Expires: 0; the Subscriber is Terminated at once, and the
      // dialog when the final NOTIFY arrives (SIP.js accepts that one itself, without the delegate).
      const beforeUnsubscribe = wire.mark();
      await subscriber.unsubscribe();
      await nextState(SubscriptionState.Terminated);
      assert.equal(subscriber.state, SubscriptionState.Terminated);
      const unsubscribe = await wire.waitFor(
        (sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip),
        'the unsubscribing SUBSCRIBE',
        { since: beforeUnsubscribe },
      );
      assert.equal(unsubscribe.sip.header('expires'), '0', 'unsubscribe() sent Expires: 0');
      const unsubscribeOk = await wire.waitFor(
        (sip, e) => e.dir === '<-' && responseTo(callId, 'SUBSCRIBE')(sip) && sip.status >= 200,
        'the final response to the unsubscribing SUBSCRIBE',
        { since: beforeUnsubscribe },
      );
      assert.equal(unsubscribeOk.sip.status, 200, `unsubscribe answered ${unsubscribeOk.sip.startLine}`);
      const finalNotify = await finalNotifyOnWire(callId, beforeUnsubscribe);
      assert.equal(finalNotify.sip.header('event')?.split(';')[0].trim(), EVENT);
      assert.equal(dialog.subscriptionState, Core.SubscriptionState.Terminated, 'the SIP.js dialog is terminated');
      assert.equal(notifications.pending, 0, 'no NOTIFY reached the delegate after unsubscribe()');
    } finally {
      await withTimeout(ua.stop(), 'the SIP.js UserAgent to stop', 5_000);
    }
  });
});
