// Test harness for the Node client tests: a fresh PostgreSQL database, the real
// `conflist-server` (sign-in on, as it ships) and `conflist-proxy` binaries as child processes on
// loopback ports the OS picks, and a recorder of every WebSocket message the SIP libraries send
// and receive. Secrets, the users' passwords and (for WSS) a self-signed certificate are made
// fresh for every run in a temporary directory.
//
// Nothing here knows SIP beyond splitting a message into start line, headers and body for the
// assertions; the libraries under test talk to the proxy unmodified.

import { spawn, spawnSync } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createHmac, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket as WsWebSocket } from 'ws';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');

export const TRACE = process.env.CONFLIST_TEST_TRACE === '1';
const CHILD_LOGS = Boolean(process.env.CONFLIST_TEST_LOGS);

/** Default wait for any one event (a response, a NOTIFY, a state change). */
export const EVENT_TIMEOUT_MS = 10_000;

// ---------------------------------------------------------------------------------------------
// Waiting, always bounded.

/** Resolves with `promise`, or rejects with `what` after `ms`. */
export function withTimeout(promise, what, ms = EVENT_TIMEOUT_MS) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The next `event` of an EventEmitter-like object (JsSIP objects are EventEmitters). */
export function nextEvent(emitter, event, what, ms = EVENT_TIMEOUT_MS) {
  return withTimeout(
    new Promise((resolve) => emitter.once(event, (...args) => resolve(args))),
    what ?? `event "${event}"`,
    ms,
  );
}

/** A queue of values pushed by callbacks, awaited one at a time with a timeout. */
export class Inbox {
  #items = [];
  #waiters = [];
  push(item) {
    const w = this.#waiters.shift();
    if (w) w(item);
    else this.#items.push(item);
  }
  next(what, ms = EVENT_TIMEOUT_MS) {
    if (this.#items.length) return Promise.resolve(this.#items.shift());
    return withTimeout(new Promise((resolve) => this.#waiters.push(resolve)), what, ms);
  }
  get pending() {
    return this.#items.length;
  }
}

// ---------------------------------------------------------------------------------------------
// SIP text, just enough to look at what went over the wire.

const COMPACT = {
  i: 'call-id', o: 'event', c: 'content-type', l: 'content-length', f: 'from', t: 'to',
  v: 'via', m: 'contact', k: 'supported', u: 'allow-events', e: 'content-encoding',
};

/** Splits a SIP message into start line, headers (lower-case names, compact forms expanded) and body. */
export function parseSip(text) {
  const sep = text.indexOf('\r\n\r\n');
  const head = sep < 0 ? text : text.slice(0, sep);
  const body = sep < 0 ? '' : text.slice(sep + 4);
  const lines = head.split('\r\n');
  const startLine = lines.shift() ?? '';
  const headers = [];
  for (const line of lines) {
    if (/^[ \t]/.test(line) && headers.length) {
      headers[headers.length - 1].value += ' ' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    let name = line.slice(0, colon).trim().toLowerCase();
    name = COMPACT[name] ?? name;
    headers.push({ name, value: line.slice(colon + 1).trim() });
  }
  const m = /^SIP\/2\.0 (\d{3}) ?(.*)$/.exec(startLine);
  const r = /^([A-Z]+) (\S+) SIP\/2\.0$/.exec(startLine);
  return {
    startLine,
    isResponse: Boolean(m),
    status: m ? Number(m[1]) : undefined,
    method: r ? r[1] : undefined,
    uri: r ? r[2] : undefined,
    headers,
    body,
    header(name) {
      const h = headers.find((x) => x.name === name.toLowerCase());
      return h ? h.value : undefined;
    },
    /** Every value of header `name`, in order (one per header line). */
    headerAll(name) {
      return headers.filter((x) => x.name === name.toLowerCase()).map((x) => x.value);
    },
    cseqMethod() {
      return (this.header('cseq') ?? '').split(/\s+/)[1];
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The conference-list document, parsed minimally.

const XML_ENTITIES = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };
function unescapeXml(s) {
  return s.replace(/&(amp|lt|gt|quot|apos|#\d+|#x[0-9a-fA-F]+);/g, (_, e) => {
    if (e[0] !== '#') return XML_ENTITIES[e];
    return String.fromCodePoint(e[1] === 'x' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
  });
}

function attributes(tagBody) {
  const attrs = {};
  for (const m of tagBody.matchAll(/([\w:.-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g)) {
    attrs[m[1]] = unescapeXml(m[2] ?? m[3]);
  }
  return attrs;
}

/**
 * The root element (name and attributes) and the `entity` of every `<conference>` element of a
 * conference-list document.
 */
export function parseConferenceList(xml) {
  const withoutProlog = xml.replace(/<\?[\s\S]*?\?>/g, '').replace(/<!--[\s\S]*?-->/g, '');
  const root = /<([^\s/>!?]+)((?:\s[^>]*?)?)\s*(\/?)>/.exec(withoutProlog);
  if (!root) throw new Error(`no root element in document:\n${xml}`);
  const conferences = [];
  for (const m of withoutProlog.matchAll(/<conference(?=[\s/>])([^>]*)>/g)) {
    conferences.push(attributes(m[1]));
  }
  return { rootName: root[1], root: attributes(root[2]), conferences };
}

// ---------------------------------------------------------------------------------------------
// The wire: every WebSocket message in and out, for assertions and for failure reports.

let connCounter = 0;

class Wire extends EventEmitter {
  entries = [];

  record(conn, dir, text) {
    const entry = { seq: this.entries.length, at: new Date().toISOString(), conn, dir, text };
    if (dir === '->' || dir === '<-') entry.sip = parseSip(text);
    this.entries.push(entry);
    if (TRACE) process.stderr.write(formatEntry(entry));
    this.emit('entry', entry);
    return entry;
  }

  /** Index to pass as `since` to only look at what happens from now on. */
  mark() {
    return this.entries.length;
  }

  /** The first SIP message (from `since` on) matching `pred`, waiting for it if need be. */
  waitFor(pred, what, { since = 0, ms = EVENT_TIMEOUT_MS } = {}) {
    const found = this.entries.slice(since).find((e) => e.sip && pred(e.sip, e));
    if (found) return Promise.resolve(found);
    let listener;
    return withTimeout(
      new Promise((resolve) => {
        listener = (e) => {
          if (e.seq >= since && e.sip && pred(e.sip, e)) resolve(e);
        };
        this.on('entry', listener);
      }),
      `${what} on the wire`,
      ms,
    ).finally(() => this.off('entry', listener));
  }

  /** SIP messages (from `since` on) matching `pred`. */
  filter(pred, since = 0) {
    return this.entries.slice(since).filter((e) => e.sip && pred(e.sip, e));
  }

  transcript(since = 0) {
    return this.entries.slice(since).map(formatEntry).join('');
  }
}

function formatEntry(e) {
  const arrow = { '->': 'client -> proxy', '<-': 'proxy -> client' }[e.dir] ?? e.dir;
  const text = e.text.replace(/\r\n/g, '\n');
  return `--- ${e.at} ws#${e.conn} ${arrow} ---\n${text}${text.endsWith('\n') ? '' : '\n'}`;
}

export const wire = new Wire();

/**
 * The `ws` WebSocket, recording everything that goes through it. Browsers' WebSocket API is what
 * both libraries use (`new WebSocket(url, 'sip')`, onmessage or addEventListener, `send(string)`); `ws`
 * implements it, so the libraries run unmodified.
 *
 * The libraries pass no options, so what a browser would get from its trust store comes from
 * `RecordingWebSocket.defaultOptions` (`startSystem({ wss: true })` puts the test certificate
 * there as `ca`); options given to the constructor win.
 */
export class RecordingWebSocket extends WsWebSocket {
  static defaultOptions = {};

  constructor(url, protocols, options) {
    super(url, protocols, { ...RecordingWebSocket.defaultOptions, ...options });
    const conn = ++connCounter;
    this.connId = conn;
    wire.record(conn, 'connect', `${url} (subprotocols offered: ${JSON.stringify(protocols)})`);
    this.on('open', () => wire.record(conn, 'open', `negotiated subprotocol: ${JSON.stringify(this.protocol)}`));
    this.on('message', (data, isBinary) => {
      const text = Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.from(data).toString('utf8');
      wire.record(conn, '<-', isBinary ? `[binary frame]\n${text}` : text);
    });
    this.on('close', (code, reason) => wire.record(conn, 'close', `code=${code} reason=${reason}`));
    this.on('error', (err) => wire.record(conn, 'error', String(err)));
  }

  send(data, ...rest) {
    const text = typeof data === 'string' ? data : Buffer.from(data).toString('utf8');
    wire.record(this.connId, '->', text);
    return super.send(data, ...rest);
  }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL.

const DEFAULT_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres';

function replaceDatabase(url, name) {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

function psql(adminUrl, sql) {
  const r = spawnSync('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', adminUrl, '-c', sql], {
    encoding: 'utf8',
    env: { ...process.env, PGCONNECT_TIMEOUT: process.env.PGCONNECT_TIMEOUT ?? '5' },
    timeout: 30_000,
  });
  if (r.error) {
    if (r.error.code === 'ENOENT') {
      throw new Error('psql not found: install the PostgreSQL client (`apt-get install postgresql-client`)');
    }
    throw r.error;
  }
  return r;
}

/** Runs `sql` on the database at `url` with psql (one transaction, committed when this returns). */
export function runSql(url, sql) {
  const r = psql(url, sql);
  if (r.status !== 0) throw new Error(`psql failed (code ${r.status}) on ${JSON.stringify(sql)}: ${r.stderr.trim()}`);
  return r.stdout;
}

/** A fresh `conflist_node_<random>` database; `drop()` removes it (WITH (FORCE)). */
export function createDatabase() {
  const adminUrl = process.env.TEST_DATABASE_URL || DEFAULT_ADMIN_URL;
  const shown = new URL(adminUrl);
  shown.password = '';
  const probe = psql(adminUrl, 'SELECT 1');
  if (probe.status !== 0) {
    throw new Error(
      `PostgreSQL not reachable at ${shown.host}: start it with ` +
        '`pg_ctlcluster --skip-systemctl-redirect 15 main start` or set TEST_DATABASE_URL\n' +
        `(psql said: ${probe.stderr.trim()})`,
    );
  }
  const name = `conflist_node_${randomBytes(8).toString('hex')}`;
  const created = psql(adminUrl, `CREATE DATABASE ${name}`);
  if (created.status !== 0) throw new Error(`CREATE DATABASE ${name} failed: ${created.stderr.trim()}`);
  return {
    name,
    url: replaceDatabase(adminUrl, name),
    drop() {
      const r = psql(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      if (r.status !== 0) throw new Error(`DROP DATABASE ${name} failed: ${r.stderr.trim()}`);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The binaries.

export function binDir() {
  return process.env.CONFLIST_BIN_DIR || path.join(REPO, 'target', 'debug');
}

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.proc.kill('SIGKILL');
});

/**
 * Starts `name` with `args`; the returned handle's `ready` resolves with its READY fields once it
 * prints the READY line. Throws at once if the binary is missing.
 * Its stderr is kept (last 400 lines) for failure reports, and streamed when CONFLIST_TEST_LOGS is set.
 */
export function startBinary(name, args, readyKeys) {
  const bin = path.join(binDir(), name);
  if (!existsSync(bin)) {
    throw new Error(
      `${bin} not found: build first (\`cargo build -p conflist-proxy -p conflist-server\`) ` +
        'or point CONFLIST_BIN_DIR at the binaries',
    );
  }
  const proc = spawn(bin, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'info', NO_COLOR: '1' },
  });
  const child = { name, proc, stderrTail: [], exited: null };
  children.add(child);
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      child.exited = { code, signal };
      children.delete(child);
      resolve(child.exited);
    });
  });
  child.exitedPromise = exited;

  let errBuf = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => {
    if (CHILD_LOGS) process.stderr.write(chunk.replace(/^(?=.)/gm, `[${name}] `));
    errBuf += chunk;
    const lines = errBuf.split('\n');
    errBuf = lines.pop();
    child.stderrTail.push(...lines.map((l) => l.replace(/\x1b\[[0-9;]*m/g, '')));
    if (child.stderrTail.length > 400) child.stderrTail.splice(0, child.stderrTail.length - 400);
  });

  const ready = new Promise((resolve, reject) => {
    let outBuf = '';
    let done = false;
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      // Keep draining after READY so the child never blocks on a full pipe.
      if (done) return;
      outBuf += chunk;
      const nl = outBuf.indexOf('\n');
      if (nl < 0) return;
      done = true;
      const line = outBuf.slice(0, nl).trim();
      const fields = {};
      for (const part of line.split(/\s+/)) {
        const eq = part.indexOf('=');
        if (eq > 0) fields[part.slice(0, eq)] = part.slice(eq + 1);
      }
      const missing = readyKeys.filter((k) => !fields[k]);
      if (!line.startsWith('READY') || missing.length) {
        reject(new Error(`${name} printed ${JSON.stringify(line)} instead of READY with ${readyKeys.join(', ')}`));
      } else {
        resolve(fields);
      }
    });
    exited.then(({ code, signal }) => {
      if (!done) {
        done = true;
        reject(
          new Error(
            `${name} exited (code ${code}, signal ${signal}) before READY; its stderr:\n` +
              child.stderrTail.join('\n'),
          ),
        );
      }
    });
    proc.on('error', (err) => {
      if (!done) {
        done = true;
        reject(err);
      }
    });
  });
  child.ready = withTimeout(ready, `${name} to print READY`, 30_000);
  return child;
}

/** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
export async function stopBinary(child, graceMs = 5_000) {
  if (!child || child.exited) return child?.exited;
  child.proc.kill('SIGTERM');
  let timer;
  const killed = new Promise((resolve) => {
    timer = setTimeout(() => {
      process.stderr.write(`warning: ${child.name} did not exit within ${graceMs} ms of SIGTERM; sending SIGKILL\n`);
      child.proc.kill('SIGKILL');
      resolve();
    }, graceMs);
  });
  await Promise.race([child.exitedPromise, killed]);
  clearTimeout(timer);
  return child.exitedPromise;
}

/** Polls the proxy's `/readyz` (an event we cannot subscribe to) every 50 ms for at most 10 s. */
export async function waitReady(adminAddr, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://${adminAddr}/readyz`, { signal: AbortSignal.timeout(1_000) });
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (err) {
      last = String(err.cause ?? err);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`proxy admin ${adminAddr}/readyz not 200 within ${ms} ms (last: ${last})`);
}

// ---------------------------------------------------------------------------------------------
// Sign-in material: secrets, passwords, tokens, a certificate.

/** The JWT audience and issuer the server is started with (`--jwt-audience`, `--jwt-issuer`). */
export const JWT_AUDIENCE = 'conflist';
export const JWT_ISSUER = 'conflist-node-tests';

const base64url = (data) => Buffer.from(data).toString('base64url');

/**
 * An HS256 JWT: header `{"alg":"HS256","typ":"JWT"}`, claims `sub`, `iat`, `exp` (now + `ttlSeconds`),
 * `aud`, `iss`, then `claims` on top (to break one on purpose).
 */
export function signJwt(secret, sub, { ttlSeconds = 3600, claims = {} } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = base64url(
    JSON.stringify({ sub, iat: now, exp: now + ttlSeconds, aud: JWT_AUDIENCE, iss: JWT_ISSUER, ...claims }),
  );
  const signature = createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

/** Runs `conflist-server ARGS` as a one-off command (stdin `input`), bounded by 30 s; returns stdout. */
function serverCommand(args, input, what) {
  const bin = path.join(binDir(), 'conflist-server');
  const r = spawnSync(bin, args, {
    input,
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', NO_COLOR: '1' },
  });
  if (r.error) throw new Error(`${what}: ${r.error.message}`);
  if (r.status !== 0) {
    throw new Error(`${what} exited with code ${r.status} (signal ${r.signal}); its stderr:\n${r.stderr}`);
  }
  return r.stdout;
}

/** `conflist-server --database-url URL user set-password USER`, the password on stdin. */
export function setPassword(databaseUrl, user, password) {
  const out = serverCommand(
    ['--database-url', databaseUrl, 'user', 'set-password', user],
    `${password}\n`,
    `user set-password ${user}`,
  );
  if (out.includes(password)) throw new Error(`user set-password ${user} printed the password`);
}

/** A self-signed P-256 certificate for 127.0.0.1 and localhost, valid one day, written into `dir`. */
function makeCertificate(dir) {
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  // prettier-ignore
  const r = spawnSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    '-keyout', key, '-out', cert,
  ], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) {
    if (r.error.code === 'ENOENT') throw new Error('openssl not found: it makes the test certificate for wss://');
    throw r.error;
  }
  if (r.status !== 0) throw new Error(`openssl req failed (code ${r.status}):\n${r.stderr}`);
  return { cert, key, pem: readFileSync(cert, 'utf8') };
}

/**
 * The whole system: database, server (demo data, sign-in on), proxy. `stop()` tears it all down,
 * drops the database and removes the temporary directory, whatever state it got to.
 *
 * The server gets `--auth-secret-file` (nonce key), `--jwt-secret-file` (HS256), `--jwt-audience`,
 * `--jwt-issuer` and `--grpc-secret-file` (the proxy sends the same secret); once it is READY, alice and bob get random passwords (`sys.passwords`).
 * `sys.makeToken(user, opts)` signs a JWT the server accepts (see `signJwt`).
 * With `{ wss: true }` the proxy also serves WSS with a fresh self-signed certificate
 * (`sys.wssUrl`), and `RecordingWebSocket` trusts it.
 */
export async function startSystem({ wss = false } = {}) {
  const sys = { db: null, server: null, proxy: null, wsUrl: null, wssUrl: null, dir: null };
  sys.stop = async () => {
    const errors = [];
    // Both at once: each one's shutdown ends the other's gRPC session, so neither waits out
    // its grace period for a peer that is going away anyway.
    const stopped = await Promise.allSettled([stopBinary(sys.proxy), stopBinary(sys.server)]);
    for (const r of stopped) if (r.status === 'rejected') errors.push(r.reason);
    if (sys.db) {
      try {
        sys.db.drop();
      } catch (err) {
        errors.push(err);
      }
    }
    if (sys.dir) rmSync(sys.dir, { recursive: true, force: true });
    if (sys.ca) RecordingWebSocket.defaultOptions = {};
    if (errors.length) throw new AggregateError(errors, 'cleanup failed');
  };
  sys.logs = () =>
    [sys.server, sys.proxy]
      .filter(Boolean)
      .map((c) => `===== ${c.name} stderr (last ${c.stderrTail.length} lines) =====\n${c.stderrTail.join('\n')}\n`)
      .join('');
  try {
    sys.dir = mkdtempSync(path.join(os.tmpdir(), 'conflist-node-'));
    const jwtSecret = randomBytes(32).toString('hex');
    const jwtSecretFile = path.join(sys.dir, 'jwt.secret');
    writeFileSync(jwtSecretFile, `${jwtSecret}\n`, { mode: 0o600 });
    const nonceSecretFile = path.join(sys.dir, 'nonce.secret');
    writeFileSync(nonceSecretFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    // The proxy<->server hop is authenticated, as in production.
    const grpcSecretFile = path.join(sys.dir, 'grpc.secret');
    writeFileSync(grpcSecretFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    sys.jwtSecretFile = jwtSecretFile;
    // The file holds the secret and a newline; the server drops trailing newlines from the key.
    sys.makeToken = (user, opts) => signJwt(jwtSecret, user, opts);
    sys.passwords = {
      alice: `alice-${randomBytes(9).toString('base64url')}`,
      bob: `bob-${randomBytes(9).toString('base64url')}`,
    };

    sys.db = createDatabase();
    sys.server = startBinary(
      'conflist-server',
      [
        '--database-url', sys.db.url,
        '--demo-data',
        '--grpc-listen', '127.0.0.1:0',
        '--admin-listen', '127.0.0.1:0',
        '--min-expires', '1',
        '--auth-secret-file', nonceSecretFile,
        '--jwt-secret-file', jwtSecretFile,
        '--jwt-audience', JWT_AUDIENCE,
        '--jwt-issuer', JWT_ISSUER,
        '--grpc-secret-file', grpcSecretFile,
      ],
      ['grpc', 'admin'],
    );
    const s = await sys.server.ready;
    // The credentials table comes with the demo-data migration, so only now.
    for (const [user, password] of Object.entries(sys.passwords)) setPassword(sys.db.url, user, password);

    const proxyArgs = [
      '--server', `http://${s.grpc}`, '--grpc-secret-file', grpcSecretFile,
      '--ws-listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0',
    ];
    const proxyReady = ['ws', 'admin'];
    if (wss) {
      const { cert, key, pem } = makeCertificate(sys.dir);
      proxyArgs.push('--wss-listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key);
      proxyReady.push('wss');
      sys.ca = pem;
      RecordingWebSocket.defaultOptions = { ca: pem };
    }
    sys.proxy = startBinary('conflist-proxy', proxyArgs, proxyReady);
    const p = await sys.proxy.ready;
    await waitReady(p.admin);
    sys.wsUrl = p.ws;
    if (wss) sys.wssUrl = p.wss;
    return sys;
  } catch (err) {
    const logs = sys.logs();
    await sys.stop().catch(() => {});
    err.message += logs ? `\n${logs}` : '';
    throw err;
  }
}
