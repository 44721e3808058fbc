// The conference-list page: sign in (digest password or bearer token) with JsSIP, subscribe to
// `conference-list`, keep the list live with conflist.js, show it.
//
// Settings come from the JSON block the proxy renders (#conflist-config): title, wsUrl (null:
// this page's host, ws: or wss: as the page) and sipDomain (completes a bare user name).
// JsSIP is the vendored build (/vendor/jssip.min.js, the global `JsSIP`).
//
// Each conference shows its title, time (the next occurrence of a recurring meeting, with a
// "repeats" hint; the meeting's own time zone too when it differs from the browser's), a status
// badge (live, upcoming, scheduled, ended, cancelled: struck through), the role, the invitation
// response, the organiser, a lock when a passcode is required, and the join link. A list sent in
// several NOTIFYs shows "Loading…" until its last part is in.

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
/** While a list sent in several NOTIFYs arrives, re-draw it at most this often. */
const LOADING_RENDER_MS = 500;

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
  loading: $('loading'),
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
  loading: 'Loading…',
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
  const prefix = c.nextOccurrence?.start || c.recurrence ? 'Next: ' : '';
  let text = `${prefix}${dayFmt.format(start)}, ${Number.isNaN(end) ? timeFmt.format(start) : timeOnlyFmt.format(start)}`;
  if (!Number.isNaN(end)) {
    const sameDay = dayFmt.format(start) === dayFmt.format(end);
    text += ` – ${sameDay ? '' : `${dayFmt.format(end)}, `}${timeFmt.format(end)}`;
  }
  return text;
}

const zoneFormats = new Map(); // time zone → formatters, or null when the browser does not know it
function zoneFormat(tz) {
  if (!zoneFormats.has(tz)) {
    try {
      zoneFormats.set(tz, {
        compare: new Intl.DateTimeFormat('en-GB', { timeZone: tz, dateStyle: 'short', timeStyle: 'short' }),
        day: new Intl.DateTimeFormat(undefined, { timeZone: tz, weekday: 'short', day: 'numeric', month: 'short' }),
        time: new Intl.DateTimeFormat(undefined, { timeZone: tz, hour: '2-digit', minute: '2-digit' }),
      });
    } catch {
      zoneFormats.set(tz, null);
    }
  }
  return zoneFormats.get(tz);
}
const localCompare = new Intl.DateTimeFormat('en-GB', { dateStyle: 'short', timeStyle: 'short' });

/**
 * The meeting's time in its own time zone when that zone shows another wall-clock time than the
 * browser's ("09:30 – 09:45 in Europe/Berlin"); null when there is none or it is the same.
 */
function formatMeetingZone(c) {
  const tz = c.timeZone;
  if (!tz || tz === zone) return null;
  const start = Date.parse(startOf(c) ?? '');
  const f = zoneFormat(tz);
  if (Number.isNaN(start)) return `in ${tz}`;
  if (!f) return `time zone ${tz}`;
  if (f.compare.format(start) === localCompare.format(start)) return null;
  const end = Date.parse((c.nextOccurrence?.start ? c.nextOccurrence.end : c.end) ?? '');
  const day = f.day.format(start) !== dayFmt.format(start) ? `${f.day.format(start)}, ` : '';
  const until = Number.isNaN(end) ? '' : ` – ${f.time.format(end)}`;
  return `${day}${f.time.format(start)}${until} in ${tz}`;
}

const FREQ = {
  SECONDLY: ['second', 'every second'],
  MINUTELY: ['minute', 'every minute'],
  HOURLY: ['hour', 'hourly'],
  DAILY: ['day', 'daily'],
  WEEKLY: ['week', 'weekly'],
  MONTHLY: ['month', 'monthly'],
  YEARLY: ['year', 'yearly'],
};
const WEEKDAYS = { MO: 'Mon', TU: 'Tue', WE: 'Wed', TH: 'Thu', FR: 'Fri', SA: 'Sat', SU: 'Sun' };

/**
 * A short reading of an RRULE value: "repeats weekdays", "repeats weekly on Mon, Wed",
 * "repeats every 2 weeks", "repeats daily"; "repeats" for a rule it does not read.
 */
function describeRecurrence(rule) {
  const parts = new Map();
  for (const p of rule.split(';')) {
    const eq = p.indexOf('=');
    if (eq > 0) parts.set(p.slice(0, eq).trim().toUpperCase(), p.slice(eq + 1).trim().toUpperCase());
  }
  const freq = FREQ[parts.get('FREQ')];
  if (!freq) return 'repeats';
  const interval = Number(parts.get('INTERVAL') ?? '1');
  const days = (parts.get('BYDAY') ?? '').split(',').filter((d) => WEEKDAYS[d]);
  let text;
  if (days.length && (parts.get('FREQ') === 'WEEKLY' || parts.get('FREQ') === 'DAILY') && interval === 1) {
    const set = [...new Set(days)].sort((a, b) => Object.keys(WEEKDAYS).indexOf(a) - Object.keys(WEEKDAYS).indexOf(b));
    if (set.join() === 'MO,TU,WE,TH,FR') text = 'repeats weekdays';
    else if (set.length === 7) text = 'repeats daily';
    else text = `repeats weekly on ${set.map((d) => WEEKDAYS[d]).join(', ')}`;
  } else if (Number.isInteger(interval) && interval > 1) {
    text = `repeats every ${interval} ${freq[0]}s`;
  } else {
    text = `repeats ${freq[1]}`;
  }
  if (parts.has('UNTIL') || parts.has('COUNT')) text += ' (limited)';
  return text;
}

const RESPONSE_TEXT = {
  accepted: 'Accepted',
  declined: 'Declined',
  tentative: 'Tentative',
  'needs-action': 'Not answered',
};

const STATUS_TEXT = {
  live: 'Live',
  upcoming: 'Upcoming',
  scheduled: 'Scheduled',
  ended: 'Ended',
  cancelled: 'Cancelled',
};

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

/** `sip:carol@example.com` → `carol@example.com`. */
function bareUri(uri) {
  return uri.replace(/^sips?:/i, '');
}

const SVG = 'http://www.w3.org/2000/svg';

/** A padlock (inline SVG, no emoji font needed), labelled "Passcode required". */
function lockIcon() {
  const span = element('span', 'lock');
  span.title = 'Passcode required';
  span.setAttribute('role', 'img');
  span.setAttribute('aria-label', 'Passcode required');
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('aria-hidden', 'true');
  const shackle = document.createElementNS(SVG, 'path');
  shackle.setAttribute('d', 'M5 7V5a3 3 0 0 1 6 0v2');
  shackle.setAttribute('fill', 'none');
  shackle.setAttribute('stroke', 'currentColor');
  shackle.setAttribute('stroke-width', '1.6');
  const body = document.createElementNS(SVG, 'rect');
  for (const [k, v] of Object.entries({ x: 3, y: 7, width: 10, height: 8, rx: 1.5, fill: 'currentColor' })) body.setAttribute(k, String(v));
  svg.append(shackle, body);
  span.append(svg);
  return span;
}

function conferenceItem(c, now, self) {
  const status = statusOf(c, now);
  const li = element('li', 'conference');
  li.dataset.entity = c.entity;
  if (status) {
    li.dataset.status = status;
    li.classList.add(`status-${status}`);
  }
  if (status === 'live') li.classList.add('is-live');
  const title = titleOf(c);
  const head = element('div', 'title');
  head.append(element('span', 'title-text', title));
  if (c.passcodeRequired) head.append(' ', lockIcon());
  li.append(head);
  if (c.displayText && c.displayText !== title) li.append(element('div', 'sub', c.displayText));
  const when = formatWhen(c);
  if (when) {
    const t = element('div', 'time', when);
    const iso = startOf(c);
    if (iso) t.title = iso;
    li.append(t);
  }
  const meta = [];
  const inZone = formatMeetingZone(c);
  if (inZone) meta.push(element('span', 'meeting-zone', inZone));
  if (c.recurrence) {
    const r = element('span', 'recurrence', describeRecurrence(c.recurrence));
    r.title = c.recurrence;
    meta.push(r);
  }
  if (c.organizer && c.organizer.uri !== self) {
    const o = element('span', 'organizer', `Organiser: ${c.organizer.displayText ?? bareUri(c.organizer.uri)}`);
    o.title = c.organizer.uri;
    meta.push(o);
  }
  if (meta.length) {
    const line = element('div', 'meta');
    meta.forEach((m, i) => line.append(...(i ? [' · ', m] : [m])));
    li.append(line);
  }
  const side = element('div', 'side');
  if (status) side.append(element('span', `badge status status-${status}`, STATUS_TEXT[status] ?? status));
  if (c.role) side.append(element('span', 'badge role', c.role));
  if (c.response) {
    const r = element('span', `badge response response-${c.response}`, RESPONSE_TEXT[c.response]);
    r.dataset.response = c.response;
    r.title = 'Your answer to the invitation';
    side.append(r);
  }
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

function render(conferences, { changed = [], complete = true, self = null } = {}) {
  const now = Date.now();
  for (const e of changed) highlighted.set(e, now + HIGHLIGHT_MS);
  const items = sortForDisplay(conferences, now).map((c) => {
    const li = conferenceItem(c, now, self);
    if ((highlighted.get(c.entity) ?? 0) > now) li.classList.add('changed');
    return li;
  });
  ui.list.replaceChildren(...items);
  ui.list.setAttribute('aria-busy', String(!complete));
  ui.loading.hidden = complete;
  ui.empty.hidden = !complete || conferences.length > 0;
}

/** "Loading… 120 conferences so far" while a list sent in several NOTIFYs arrives. */
function showLoading(count) {
  ui.loading.hidden = false;
  ui.loading.textContent = `Loading… ${count} conference${count === 1 ? '' : 's'} so far`;
}

/** "2 removed (out of window)", "1 removed (cancelled)", "3 removed". */
function removedText(deleted, removed) {
  const reasons = new Map();
  const gone = new Set(removed);
  for (const d of deleted) {
    if (!gone.has(d.entity)) continue;
    const key = d.reason && d.reason !== 'removed' ? d.reason.replaceAll('-', ' ') : '';
    reasons.set(key, (reasons.get(key) ?? 0) + 1);
  }
  const counted = [...reasons.values()].reduce((a, b) => a + b, 0);
  if (counted < removed.length) reasons.set('', (reasons.get('') ?? 0) + removed.length - counted);
  return [...reasons].map(([why, n]) => `${n} removed${why ? ` (${why})` : ''}`);
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
    /** When the list was last drawn while a multi-part state arrives (null: not loading). */
    this.loadingSince = null;
    /** Deletions in the parts of a multi-part state so far, for the notice. */
    this.pendingDeleted = [];
    /** The last complete list: entity → conference. */
    this.lastComplete = null;
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
      if (!r.complete) {
        // A part of a list sent in several NOTIFYs (nearest conferences first): show the first
        // part at once, then the count, and re-draw now and then until the last part is in.
        setConnection('loading');
        this.pendingDeleted.push(...r.deleted);
        const now = Date.now();
        if (this.loadingSince === null || r.state === 'full' || now - this.loadingSince >= LOADING_RENDER_MS) {
          this.loadingSince = now;
          render(r.conferences, { complete: false, self: this.uri });
        }
        showLoading(r.conferences.length);
        return;
      }
      setConnection('live');
      let { changed, removed, deleted } = r;
      if (this.loadingSince !== null) {
        // The last part: what changed is what differs from the last complete list (a full
        // resend in parts repeats the unchanged conferences).
        const held = this.lastComplete ?? new Map();
        const same = (a, b) => a === b || (a !== undefined && JSON.stringify(a) === JSON.stringify(b));
        changed = r.conferences.filter((c) => !same(held.get(c.entity), c)).map((c) => c.entity);
        const now = new Set(r.conferences.map((c) => c.entity));
        removed = [...held.keys()].filter((e) => !now.has(e));
        deleted = [...this.pendingDeleted, ...r.deleted];
      }
      this.lastComplete = new Map(r.conferences.map((c) => [c.entity, c]));
      this.loadingSince = null;
      this.pendingDeleted = [];
      const parts = [];
      if (this.hadList && changed.length) parts.push(`${changed.length} changed`);
      if (this.hadList && removed.length) parts.push(...removedText(deleted, removed));
      notice(parts.length ? `Updated ${timeOnlyFmt.format(new Date())}: ${parts.join(', ')}` : '');
      render(r.conferences, { changed: this.hadList ? changed : [], self: this.uri });
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
  ui.loading.hidden = true;
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
  tick = setInterval(() => {
    if (session?.list.complete) render(session.list.conferences, { self: session.uri });
  }, 30_000);
});
$('signout').addEventListener('click', () => signOut());
showMethod();
