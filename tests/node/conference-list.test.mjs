// Acceptance: the unmodified browser SIP libraries — npm `jssip` and `sip.js`, under Node with
// `ws` standing in for the browser's WebSocket — each sign in to the running proxy and
// subscriber-server (sign-in on, as shipped), subscribe to `conference-list`, receive the
// document, refresh and unsubscribe. Sign-in is digest MD5 (what both libraries speak) or a bearer
// JWT; JsSIP also does it all over wss:// with a generated certificate. A wrong password gets no list.
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
/** The digest realm: the server's default, its SIP domain. */
const REALM = 'example.com';

const DEMO = {
  alice: ['1001', '1002', '1003'],
  bob: ['1001', '1002', '1003', '1004'],
};
const conferenceUris = (ids) => ids.map((id) => `sip:${id}@conf.example.com`).sort();

let sys;

before(async () => {
  sys = await startSystem({ wss: true });
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
 * document that is complete) exactly the user's conferences. Returns the version.
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
  // A full document with complete="false" is the first part of a state sent in several NOTIFYs.
  if (doc.root.state === 'full' && !['false', '0'].includes(doc.root.complete?.trim())) {
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
// Sign-in, as seen on the wire.

/**
 * How a scenario signs in:
 * - `{ kind: 'digest', user }`: the first SUBSCRIBE goes without credentials and gets a 401;
 *   the library retries with `Authorization: Digest … algorithm=MD5`, answered 200.
 * - `{ kind: 'bearer', token }`: the first SUBSCRIBE already carries `Authorization: Bearer
 *   <token>` and is answered 200, with no 401 at all.
 * `refresh` is the Authorization the refreshing and unsubscribing SUBSCRIBEs carry, as the library
 * sends it (`null`: none; the server knows the dialog and the flow).
 */
const digest = (user, { refresh = null } = {}) => ({ kind: 'digest', user, refresh });
const bearer = (token, { refresh = null } = {}) => ({ kind: 'bearer', token, refresh });

/** The final response to the client's request `req` (same Call-ID and CSeq), from the wire. */
function finalResponseTo(req) {
  const callId = req.sip.header('call-id');
  const cseq = req.sip.header('cseq');
  return wire.waitFor(
    (sip, e) =>
      e.dir === '<-' && sip.isResponse && sip.status >= 200 && sip.header('call-id') === callId && sip.header('cseq') === cseq,
    `the final response to ${req.sip.method} (Call-ID ${callId}, CSeq ${cseq})`,
    { since: req.seq },
  );
}

/** A digest parameter of a `WWW-Authenticate` or `Authorization` value (quotes removed). */
function digestParam(value, name) {
  const m = new RegExp(`(?:^Digest\\s+|,)\\s*${name}\\s*=\\s*(?:"([^"]*)"|([^\\s,]+))`, 'i').exec(value ?? '');
  return m ? (m[1] ?? m[2]) : undefined;
}

/**
 * Checks how the subscription `callId` (SUBSCRIBEs from `since` on) signed in, per `auth`; the
 * subscription must already have been accepted.
 */
async function checkSignIn(auth, callId, since) {
  const subscribes = wire.filter((sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip), since);
  assert.ok(subscribes.length > 0, `SUBSCRIBEs with Call-ID ${callId} on the wire`);
  const first = subscribes[0];
  const firstAnswer = await finalResponseTo(first);
  if (auth.kind === 'digest') {
    assert.equal(first.sip.header('authorization'), undefined, 'the first SUBSCRIBE has no Authorization');
    assert.equal(firstAnswer.sip.status, 401, `the first SUBSCRIBE was answered ${firstAnswer.sip.startLine}, not 401`);
    const challenges = firstAnswer.sip.headerAll('www-authenticate');
    assert.equal(challenges.length, 2, `two WWW-Authenticate headers in the 401: ${JSON.stringify(challenges)}`);
    for (const c of challenges) {
      assert.match(c, /^Digest\s/i, `WWW-Authenticate "${c}" is a Digest challenge`);
      assert.equal(digestParam(c, 'realm'), REALM, `realm of "${c}"`);
      assert.ok(digestParam(c, 'nonce'), `nonce in "${c}"`);
    }
    assert.equal(digestParam(challenges[0], 'algorithm'), 'SHA-256', 'the first challenge is SHA-256');
    assert.equal(digestParam(challenges.at(-1), 'algorithm'), 'MD5', 'the last challenge (the one the library reads) is MD5');

    const retry = subscribes[1];
    assert.ok(retry, 'the library retried the SUBSCRIBE after the 401');
    const authorization = retry.sip.header('authorization') ?? '';
    assert.match(authorization, /^Digest\s/i, `the retry carries Authorization: Digest (got "${authorization}")`);
    assert.equal(digestParam(authorization, 'algorithm'), 'MD5', `algorithm=MD5 in "${authorization}"`);
    assert.equal(digestParam(authorization, 'username'), auth.user, `username in "${authorization}"`);
    assert.equal(digestParam(authorization, 'realm'), REALM, `realm in "${authorization}"`);
    assert.equal(
      digestParam(authorization, 'nonce'),
      digestParam(challenges.at(-1), 'nonce'),
      'the retry answers the MD5 challenge',
    );
    const retryAnswer = await finalResponseTo(retry);
    assert.equal(retryAnswer.sip.status, 200, `the authenticated SUBSCRIBE was answered ${retryAnswer.sip.startLine}`);
  } else {
    assert.equal(first.sip.header('authorization'), `Bearer ${auth.token}`, 'the first SUBSCRIBE carries the bearer token');
    assert.equal(firstAnswer.sip.status, 200, `the SUBSCRIBE with a bearer token was answered ${firstAnswer.sip.startLine}`);
    const challenged = wire.filter((sip) => responseTo(callId, 'SUBSCRIBE')(sip) && sip.status === 401, since);
    assert.equal(challenged.length, 0, 'no 401 for a SUBSCRIBE with a valid bearer token');
  }
}

/** Checks the Authorization of an in-dialog SUBSCRIBE (a refresh or the unsubscribe). */
function checkInDialogAuthorization(auth, request, what) {
  const got = request.sip.header('authorization');
  if (auth.refresh === null) {
    assert.equal(got, undefined, `the ${what} carries no Authorization`);
  } else {
    assert.equal(got, auth.refresh, `the ${what} carries ${auth.refresh.split(' ')[0]} credentials`);
  }
}

// ---------------------------------------------------------------------------------------------
// JsSIP

/**
 * JsSIP (`ua.subscribe(...)`, `Subscriber`) subscribes to `user`'s list through `wsUrl`, signing
 * in per `auth` with `uaOptions`: SUBSCRIBE → document, refresh → higher version, terminate() →
 * final NOTIFY.
 */
async function jssipScenario({ user, wsUrl, uaOptions, auth }) {
  const since = wire.mark();
  const ua = new JsSIP.UA({
    sockets: [new JsSIP.WebSocketInterface(wsUrl)],
    uri: `sip:${user}@example.com`,
    register: false,
    ...uaOptions,
  });
  try {
    const connected = nextEvent(ua, 'connected', 'the JsSIP UA to connect');
    ua.start();
    await connected;
    const opened = wire.entries.slice(since).find((e) => e.dir === 'connect');
    assert.ok(opened?.text.startsWith(`${wsUrl} `), `JsSIP connected to ${wsUrl} (wire: ${opened?.text})`);

    const subscriber = ua.subscribe(`sip:${user}@example.com`, EVENT, CONTENT_TYPE, { expires: EXPIRES });
    const C = subscriber.C;
    const codeName = (code) => Object.keys(C).find((k) => !k.startsWith('STATE_') && C[k] === code) ?? code;

    const notifies = new Inbox();
    subscriber.on('notify', (isFinal, request, body, contentType) => notifies.push({ isFinal, request, body, contentType }));
    const terminated = new Promise((resolve) =>
      subscriber.on('terminated', (code, reason, retryAfter) => resolve({ code, name: codeName(code), reason, retryAfter })),
    );
    // Fails a wait early, with the library's reason, if the subscription ends instead.
    const unlessTerminated = (promise) =>
      Promise.race([
        promise,
        terminated.then((t) => {
          throw new Error(`JsSIP subscription terminated early: ${JSON.stringify(t)}`);
        }),
      ]);

    // Subscribe (signing in): 200 (dialog, "accepted"), then the first NOTIFY ("active", "notify").
    const accepted = nextEvent(subscriber, 'accepted', 'JsSIP "accepted" (2xx to SUBSCRIBE)');
    const active = nextEvent(subscriber, 'active', 'JsSIP "active" (NOTIFY with Subscription-State: active)');
    subscriber.subscribe();
    await unlessTerminated(accepted);
    await unlessTerminated(active);
    const first = await unlessTerminated(notifies.next('the first NOTIFY with a body (JsSIP "notify")'));
    assert.equal(first.isFinal, false, 'first NOTIFY is not final');
    assert.equal(first.contentType?.split(';')[0].trim(), CONTENT_TYPE);
    checkActiveNotifyHeaders(first.request);
    const v0 = checkDocument(first.body, user, { first: true });
    assert.equal(subscriber.state, C.STATE_ACTIVE);

    const subscribe = wire.filter((sip, e) => e.dir === '->' && sip.method === 'SUBSCRIBE', since)[0];
    assert.ok(subscribe, 'JsSIP sent a SUBSCRIBE');
    const callId = subscribe.sip.header('call-id');
    await checkSignIn(auth, callId, since);

    // Refresh: an in-dialog SUBSCRIBE → 200 and a NOTIFY with a higher version.
    const beforeRefresh = wire.mark();
    subscriber.subscribe();
    const refresh = await unlessTerminated(
      wire.waitFor(
        (sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip),
        'the refreshing SUBSCRIBE sent by JsSIP',
        { since: beforeRefresh },
      ),
    );
    checkInDialogAuthorization(auth, refresh, 'refreshing SUBSCRIBE');
    const refreshOk = await unlessTerminated(finalResponseTo(refresh));
    assert.equal(refreshOk.sip.status, 200, `refresh answered ${refreshOk.sip.startLine}`);
    const second = await unlessTerminated(notifies.next('the NOTIFY after the refresh'));
    assert.equal(second.isFinal, false);
    checkActiveNotifyHeaders(second.request);
    const v1 = checkDocument(second.body, user, { first: false });
    assert.ok(v1 > v0, `version after refresh (${v1}) > first version (${v0})`);

    // Unsubscribe: SUBSCRIBE with Expires: 0 → final NOTIFY → "terminated".
    const beforeUnsubscribe = wire.mark();
    subscriber.terminate();
    const t = await withTimeout(terminated, 'JsSIP "terminated" after terminate()');
    assert.equal(t.code, C.FINAL_NOTIFY_RECEIVED, `JsSIP ended the subscription because of a final NOTIFY, not ${t.name}`);
    const unsubscribe = wire.filter(
      (sip, e) => e.dir === '->' && sameDialogRequest(callId, 'SUBSCRIBE')(sip),
      beforeUnsubscribe,
    )[0];
    assert.ok(unsubscribe, 'terminate() sent a SUBSCRIBE');
    assert.equal(unsubscribe.sip.header('expires'), '0', 'terminate() sent Expires: 0');
    checkInDialogAuthorization(auth, unsubscribe, 'unsubscribing SUBSCRIBE');
    const finalNotify = await finalNotifyOnWire(callId, beforeUnsubscribe);
    assert.equal(finalNotify.sip.header('event')?.split(';')[0].trim(), EVENT);
    const unsubscribeOk = await finalResponseTo(unsubscribe);
    assert.equal(unsubscribeOk.sip.status, 200, `unsubscribe answered ${unsubscribeOk.sip.startLine}`);
    assert.equal(subscriber.state, C.STATE_TERMINATED);
  } finally {
    const disconnected = nextEvent(ua, 'disconnected', 'the JsSIP UA to disconnect', 5_000);
    ua.stop();
    await disconnected;
  }
}

test('JsSIP, digest MD5 (password), as alice: document, refresh, unsubscribe', async () => {
  await reportingFailures('JsSIP digest', () =>
    jssipScenario({
      user: 'alice',
      wsUrl: sys.wsUrl,
      uaOptions: { password: sys.passwords.alice },
      // JsSIP answers the challenge of one request only; in-dialog requests go without.
      auth: digest('alice'),
    }),
  );
});

test('JsSIP, bearer JWT (authorization_jwt), as alice: document, refresh, unsubscribe', async () => {
  const token = sys.makeToken('alice');
  await reportingFailures('JsSIP bearer', () =>
    jssipScenario({
      user: 'alice',
      wsUrl: sys.wsUrl,
      // JsSIP puts the option's value, as is, in the Authorization of every request it sends:
      // the "Bearer " scheme is the application's to write.
      uaOptions: { authorization_jwt: `Bearer ${token}` },
      auth: bearer(token, { refresh: `Bearer ${token}` }),
    }),
  );
});

test('JsSIP over wss:// (generated certificate), digest MD5, as alice: document, refresh, unsubscribe', async () => {
  assert.match(sys.wssUrl ?? '', /^wss:\/\/127\.0\.0\.1:\d+/, `the proxy serves WSS (READY wss=${sys.wssUrl})`);
  await reportingFailures('JsSIP wss', () =>
    jssipScenario({
      user: 'alice',
      wsUrl: sys.wssUrl,
      uaOptions: { password: sys.passwords.alice },
      auth: digest('alice'),
    }),
  );
});

test('JsSIP with a wrong password: 401 twice, subscription terminated, no list', async () => {
  await reportingFailures('JsSIP wrong password', async () => {
    const since = wire.mark();
    const ua = new JsSIP.UA({
      sockets: [new JsSIP.WebSocketInterface(sys.wsUrl)],
      uri: 'sip:alice@example.com',
      register: false,
      password: `not-${sys.passwords.alice}`,
    });
    try {
      const connected = nextEvent(ua, 'connected', 'the JsSIP UA to connect');
      ua.start();
      await connected;

      const subscriber = ua.subscribe('sip:alice@example.com', EVENT, CONTENT_TYPE, { expires: EXPIRES });
      const C = subscriber.C;
      const codeName = (code) => Object.keys(C).find((k) => !k.startsWith('STATE_') && C[k] === code) ?? code;
      const notifies = [];
      subscriber.on('notify', (isFinal, request, body) => notifies.push(body));
      let accepted = false;
      subscriber.on('accepted', () => {
        accepted = true;
      });
      const terminated = nextEvent(subscriber, 'terminated', 'JsSIP "terminated" after the refused sign-in');
      subscriber.subscribe();
      const [code] = await terminated;
      assert.equal(
        code,
        C.SUBSCRIBE_AUTHENTICATION_FAILED,
        `JsSIP ended the subscription because sign-in failed, not ${codeName(code)}`,
      );
      assert.equal(subscriber.state, C.STATE_TERMINATED);
      assert.equal(accepted, false, 'no "accepted": no 2xx to the SUBSCRIBE');

      const subscribes = wire.filter((sip, e) => e.dir === '->' && sip.method === 'SUBSCRIBE', since);
      assert.equal(subscribes.length, 2, 'JsSIP sent the SUBSCRIBE, then one retry with credentials');
      const callId = subscribes[0].sip.header('call-id');
      assert.equal(subscribes[0].sip.header('authorization'), undefined, 'the first SUBSCRIBE has no Authorization');
      assert.match(subscribes[1].sip.header('authorization') ?? '', /^Digest\s.*\balgorithm=MD5\b/i, 'the retry carries MD5 credentials');
      for (const s of subscribes) {
        const answer = await finalResponseTo(s);
        assert.equal(answer.sip.status, 401, `SUBSCRIBE CSeq ${s.sip.header('cseq')} answered ${answer.sip.startLine}, not 401`);
      }

      // Nothing follows on the flow: the proxy answers an OPTIONS on the same connection, and up
      // to that answer no NOTIFY (no list) reached the client.
      const beforeOptions = wire.mark();
      ua.sendOptions('sip:alice@example.com');
      await wire.waitFor(
        (sip, e) => e.dir === '<-' && sip.isResponse && sip.cseqMethod() === 'OPTIONS' && sip.status >= 200,
        'the answer to an OPTIONS after the refusal',
        { since: beforeOptions },
      );
      const leaked = wire.filter((sip) => sameDialogRequest(callId, 'NOTIFY')(sip), since);
      assert.equal(leaked.length, 0, 'no NOTIFY for the refused subscription');
      assert.equal(notifies.length, 0, 'no NOTIFY with a body reached JsSIP');
    } finally {
      const disconnected = nextEvent(ua, 'disconnected', 'the JsSIP UA to disconnect', 5_000);
      ua.stop();
      await disconnected;
    }
  });
});

// ---------------------------------------------------------------------------------------------
// SIP.js

/**
 * SIP.js (`UserAgent`, `Subscriber`) subscribes to `user`'s list, signing in per `auth` with
 * `uaOptions` and the Subscriber's `extraHeaders`: subscribe() → document, subscribe() again →
 * refresh with a higher version, unsubscribe() → final NOTIFY.
 */
async function sipjsScenario({ user, uaOptions = {}, extraHeaders = [], auth }) {
  const since = wire.mark();
  const libraryLog = [];
  const ua = new UserAgent({
    uri: UserAgent.makeURI(`sip:${user}@example.com`),
    transportOptions: { server: sys.wsUrl },
    logBuiltinEnabled: false,
    logConfiguration: false,
    logLevel: 'warn',
    logConnector: (level, category, label, content) => {
      const line = `[sip.js ${level}] ${category}: ${content}`;
      libraryLog.push(line);
      if (TRACE) process.stderr.write(line + '\n');
    },
    ...uaOptions,
  });
  try {
    await withTimeout(ua.start(), 'the SIP.js UserAgent to connect');

    const target = UserAgent.makeURI(`sip:${user}@example.com`);
    const subscriber = new Subscriber(ua, target, EVENT, {
      expires: EXPIRES,
      extraHeaders: [`Accept: ${CONTENT_TYPE}`, ...extraHeaders],
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

    // Subscribe (signing in): NotifyWait → first NOTIFY → Subscribed.
    await subscriber.subscribe();
    await nextState(SubscriptionState.NotifyWait);
    const first = await notifications.next('the first NOTIFY (SIP.js delegate.onNotify)');
    await nextState(SubscriptionState.Subscribed);
    checkActiveNotifyHeaders(first);
    const v0 = checkDocument(first.body, user, { first: true });
    const dialog = subscriber.dialog;
    assert.ok(dialog, 'SIP.js created a subscription dialog');
    assert.equal(dialog.subscriptionState, Core.SubscriptionState.Active);
    const callId = first.callId;
    await checkSignIn(auth, callId, since);

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
    checkInDialogAuthorization(auth, refresh, 'refreshing SUBSCRIBE');
    const refreshOk = await finalResponseTo(refresh);
    assert.equal(refreshOk.sip.status, 200, `refresh answered ${refreshOk.sip.startLine}`);
    const second = await notifications.next('the NOTIFY after the refresh');
    checkActiveNotifyHeaders(second);
    const v1 = checkDocument(second.body, user, { first: false });
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
    checkInDialogAuthorization(auth, unsubscribe, 'unsubscribing SUBSCRIBE');
    const unsubscribeOk = await finalResponseTo(unsubscribe);
    assert.equal(unsubscribeOk.sip.status, 200, `unsubscribe answered ${unsubscribeOk.sip.startLine}`);
    const finalNotify = await finalNotifyOnWire(callId, beforeUnsubscribe);
    assert.equal(finalNotify.sip.header('event')?.split(';')[0].trim(), EVENT);
    assert.equal(dialog.subscriptionState, Core.SubscriptionState.Terminated, 'the SIP.js dialog is terminated');
    assert.equal(notifications.pending, 0, 'no NOTIFY reached the delegate after unsubscribe()');
  } finally {
    await withTimeout(ua.stop(), 'the SIP.js UserAgent to stop', 5_000);
  }
}

test('SIP.js, digest MD5 (authorizationUsername/Password), as bob: document, refresh, unsubscribe', async () => {
  await reportingFailures('SIP.js digest', () =>
    sipjsScenario({
      user: 'bob',
      uaOptions: { authorizationUsername: 'bob', authorizationPassword: sys.passwords.bob },
      auth: digest('bob'),
    }),
  );
});

test('SIP.js, bearer JWT (Subscriber extraHeaders), as bob: document, refresh, unsubscribe', async () => {
  // `sub` as an address of record, the other form the server accepts.
  const token = sys.makeToken('sip:bob@example.com');
  await reportingFailures('SIP.js bearer', () =>
    sipjsScenario({
      user: 'bob',
      // SIP.js puts the Subscriber's extraHeaders on the initial SUBSCRIBE only; the refresh and
      // the unsubscribe go without Authorization, and the server knows the dialog and the flow.
      extraHeaders: [`Authorization: Bearer ${token}`],
      auth: bearer(token),
    }),
  );
});
