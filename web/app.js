// The conference-list page: sign in (digest password or bearer token) with JsSIP, subscribe to
// `conference-list`, keep the list live with conflist.js, show it.
//
// Settings come from the JSON block the proxy renders (#conflist-config): title, wsUrl (null:
// this page's host, ws: or wss: as the page) and sipDomain (completes a bare user name).
// JsSIP is the vendored build (/vendor/jssip.min.js, the global `JsSIP`).

import {
  CONTENT_TYPE,
  ConferenceListState,
  EVENT,
  joinLink,
  sortForDisplay,
  startOf,
  statusOf,
  titleOf,
} from './conflist.js';

const config = JSON.parse(document.getElementById('conflist-config').textContent);
const WS_URL = config.wsUrl || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;
/** Subscription duration asked for; JsSIP refreshes before it ends. */
const EXPIRES = 600;
/** Re-subscribe delays after a failure: 1 s doubling to 30 s, with jitter. */
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;
/** How long a changed conference stays highlighted. */
const HIGHLIGHT_MS = 2_500;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('signin'),
  user: $('user'),
  password: $('password'),
  token: $('token'),
  passwordField: $('password-field'),
  tokenField: $('token-field'),
  error: $('signin-error'),
  button: $('signin-button'),
  listView: $('list-view'),
  who: $('who'),
  notice: $('notice'),
  list: $('conferences'),
  empty: $('empty'),
  connection: $('connection'),
};

const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
$('zone').textContent = zone || 'your time zone';
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short', year: 'numeric' });
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', timeZoneName: 'short' });
const timeOnlyFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });

const STATE_TEXT = {
  'signed-out': 'Signed out',
  connecting: 'Connecting…',
  subscribing: 'Subscribing…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  error: 'Not signed in',
};

function setConnection(state, detail) {
  ui.connection.dataset.state = state;
  ui.connection.textContent = detail ? `${STATE_TEXT[state]} ${detail}` : STATE_TEXT[state];
}

function notice(text) {
  ui.notice.textContent = text;
}

/** `alice`, `alice@example.com` or `sip:alice@example.com` → a SIP URI. */
function userUri(user) {
  const u = user.trim();
  if (/^sips?:/i.test(u)) return u;
  return u.includes('@') ? `sip:${u}` : `sip:${u}@${config.sipDomain}`;
}

/** The `sub` claim of a JWT (not verified here: the server does that). */
function tokenSubject(token) {
  try {
    const payload = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(payload)).sub ?? null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Showing the list.

function formatWhen(c) {
  const start = Date.parse(startOf(c) ?? '');
  const endText = c.nextOccurrence?.start ? c.nextOccurrence.end : c.end;
  const end = Date.parse(endText ?? '');
  if (Number.isNaN(start)) return Number.isNaN(end) ? '' : `until ${dayFmt.format(end)} ${timeFmt.format(end)}`;
  const prefix = c.nextOccurrence?.start ? 'Next: ' : '';
  let text = `${prefix}${dayFmt.format(start)}, ${Number.isNaN(end) ? timeFmt.format(start) : timeOnlyFmt.format(start)}`;
  if (!Number.isNaN(end)) {
    const sameDay = dayFmt.format(start) === dayFmt.format(end);
    text += ` – ${sameDay ? '' : `${dayFmt.format(end)}, `}${timeFmt.format(end)}`;
  }
  return text;
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function conferenceItem(c, now) {
  const status = statusOf(c, now);
  const li = element('li', 'conference');
  li.dataset.entity = c.entity;
  if (status) {
    li.dataset.status = status;
    li.classList.add(`status-${status}`);
  }
  if (status === 'live') li.classList.add('is-live');
  const title = titleOf(c);
  li.append(element('div', 'title', title));
  if (c.displayText && c.displayText !== title) li.append(element('div', 'sub', c.displayText));
  const when = formatWhen(c);
  if (when) {
    const t = element('div', 'time', when);
    const iso = startOf(c);
    if (iso) t.title = iso;
    li.append(t);
  }
  const side = element('div', 'side');
  if (status) side.append(element('span', `badge status-${status}`, status));
  if (c.role) side.append(element('span', 'badge role', c.role));
  const link = joinLink(c);
  if (link && status !== 'ended' && status !== 'cancelled') {
    const a = element('a', 'join', 'Join');
    a.href = link;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    side.append(a);
  }
  li.append(side);
  return li;
}

const highlighted = new Map(); // entity → time the highlight ends

function render(conferences, changed = []) {
  const now = Date.now();
  for (const e of changed) highlighted.set(e, now + HIGHLIGHT_MS);
  const items = sortForDisplay(conferences, now).map((c) => {
    const li = conferenceItem(c, now);
    if ((highlighted.get(c.entity) ?? 0) > now) li.classList.add('changed');
    return li;
  });
  ui.list.replaceChildren(...items);
  ui.empty.hidden = conferences.length > 0;
}

// ---------------------------------------------------------------------------------------------
// One signed-in session: a JsSIP UA and its conference-list subscription.

class Session {
  constructor({ uri, password, token }) {
    this.uri = uri;
    this.password = password;
    this.token = token;
    this.list = new ConferenceListState();
    this.subscriber = null;
    this.stopped = false;
    this.retryTimer = null;
    this.failures = 0;
    this.hadList = false;
  }

  start() {
    const options = {
      sockets: [new JsSIP.WebSocketInterface(WS_URL)],
      uri: this.uri,
      register: false,
      user_agent: 'conflist-web',
      // JsSIP's own reconnect backoff, in seconds.
      connection_recovery_min_interval: 1,
      connection_recovery_max_interval: 30,
    };
    // JsSIP copies authorization_jwt into the Authorization header as is.
    if (this.token) options.authorization_jwt = `Bearer ${this.token}`;
    else options.password = this.password;
    this.ua = new JsSIP.UA(options);
    this.ua.on('connecting', () => setConnection(this.hadList ? 'reconnecting' : 'connecting'));
    this.ua.on('connected', () => this.subscribe());
    this.ua.on('disconnected', () => {
      if (this.stopped) return;
      // The subscription lived on that connection; JsSIP reconnects with backoff and
      // `connected` subscribes again.
      this.dropSubscriber();
      setConnection('reconnecting');
    });
    setConnection('connecting');
    this.ua.start();
  }

  subscribe() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.dropSubscriber({ unsubscribe: true });
    setConnection('subscribing');
    const sub = this.ua.subscribe(this.uri, EVENT, CONTENT_TYPE, { expires: EXPIRES });
    this.subscriber = sub;
    sub.on('notify', (isFinal, request, body) => {
      if (sub === this.subscriber && body) this.onDocument(body);
    });
    sub.on('terminated', (code, reason, retryAfter) => {
      if (sub === this.subscriber) this.onTerminated(sub.C, code, reason, retryAfter);
    });
    sub.subscribe();
  }

  onDocument(body) {
    const r = this.list.apply(body);
    if (r.kind === 'applied') {
      this.failures = 0;
      setConnection('live');
      const parts = [];
      if (this.hadList && r.changed.length) parts.push(`${r.changed.length} changed`);
      if (r.removed.length) parts.push(`${r.removed.length} removed`);
      notice(parts.length ? `Updated ${timeOnlyFmt.format(new Date())}: ${parts.join(', ')}` : '');
      render(r.conferences, this.hadList ? r.changed : []);
      this.hadList = true;
    } else if (r.kind === 'gap') {
      notice(`Missed an update (version ${r.got}, expected ${r.expected}); reloading the list…`);
      this.subscribe();
    } else {
      notice(`The server sent a list this page cannot read (${r.error.message}); reloading…`);
      this.retryLater();
    }
  }

  onTerminated(C, code, reason, retryAfter) {
    this.subscriber = null;
    if (this.stopped) return;
    if (code === C.SUBSCRIBE_AUTHENTICATION_FAILED) {
      signOut(
        this.token
          ? 'The token was refused. Check that it is valid and not expired.'
          : 'Wrong user name or password.',
      );
      return;
    }
    if (code === C.FINAL_NOTIFY_RECEIVED) {
      if (reason === 'rejected' || reason === 'noresource') {
        setConnection('error');
        notice(reason === 'rejected' ? 'The server ended the subscription (rejected).' : 'This list no longer exists.');
        return;
      }
      // deactivated (a server or proxy restarts), timeout, probation, giveup: subscribe again,
      // at once for deactivated (RFC 6665 §4.1.3), else after Retry-After or the backoff.
      if (reason === 'deactivated' || !reason) {
        this.subscribe();
        return;
      }
      this.retryLater(retryAfter ? retryAfter * 1000 : undefined);
      return;
    }
    if (code === C.SUBSCRIBE_TRANSPORT_ERROR && !this.ua.isConnected()) return; // `connected` resubscribes
    notice('The server did not accept the subscription; trying again…');
    this.retryLater();
  }

  retryLater(ms) {
    if (this.stopped || this.retryTimer) return;
    this.failures += 1;
    const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.failures - 1));
    const delay = ms ?? backoff * (0.5 + Math.random() / 2);
    setConnection('reconnecting', `(in ${Math.ceil(delay / 1000)} s)`);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.ua.isConnected()) this.subscribe();
    }, delay);
  }

  dropSubscriber({ unsubscribe = false } = {}) {
    const sub = this.subscriber;
    this.subscriber = null;
    if (sub && unsubscribe && this.ua.isConnected()) {
      try {
        sub.terminate();
      } catch {
        // already ended
      }
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.dropSubscriber({ unsubscribe: true });
    this.ua?.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// The form.

let session = null;
let tick = null;

function method() {
  return ui.form.elements.method.value;
}

function showMethod() {
  const token = method() === 'token';
  ui.tokenField.hidden = !token;
  ui.passwordField.hidden = token;
}

function signOut(error) {
  session?.stop();
  session = null;
  clearInterval(tick);
  ui.listView.hidden = true;
  ui.form.hidden = false;
  ui.button.disabled = false;
  ui.list.replaceChildren();
  notice('');
  ui.error.hidden = !error;
  ui.error.textContent = error ?? '';
  setConnection(error ? 'error' : 'signed-out');
  if (error) (method() === 'token' ? ui.token : ui.password).focus();
}

ui.form.addEventListener('change', showMethod);
ui.form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  ui.error.hidden = true;
  if (typeof globalThis.JsSIP === 'undefined') {
    signOut('JsSIP did not load (/vendor/jssip.min.js).');
    return;
  }
  const useToken = method() === 'token';
  const token = ui.token.value.trim();
  let user = ui.user.value.trim();
  if (useToken && !user) user = tokenSubject(token) ?? '';
  if (!user) return signOut(useToken ? 'The token names no user: enter the user too.' : 'Enter your user name.');
  if (useToken ? !token : !ui.password.value) return signOut(useToken ? 'Paste your token.' : 'Enter your password.');
  const uri = userUri(user);
  ui.form.hidden = true;
  ui.listView.hidden = false;
  ui.who.textContent = uri;
  ui.empty.hidden = true;
  notice('');
  session = new Session({ uri, password: useToken ? null : ui.password.value, token: useToken ? token : null });
  ui.password.value = '';
  session.start();
  // Live, upcoming and ended follow the clock.
  tick = setInterval(() => session && render(session.list.conferences), 30_000);
});
$('signout').addEventListener('click', () => signOut());
showMethod();
