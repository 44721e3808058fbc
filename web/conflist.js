// conflist.js: turns the NOTIFY bodies of a `conference-list` subscription
// (`application/conference-list+xml`) into the subscriber's list of conferences.
//
// A dependency-free ES module for browsers and Node. It parses the XML (the browser's DOMParser
// when there is one, else a small built-in parser, or a parser you inject), and applies full and
// partial documents exactly as the Rust crate `conflist-document` does (`document/src/diff.rs`,
// `apply`):
//   * a `state="full"` document replaces the list, whatever its version;
//   * a `state="partial"` document must carry the held version + 1 (a version gap is reported,
//     the list is left as it was, and the application re-subscribes to get a full document);
//     its `state="full"` conferences replace or add, its `state="deleted"` ones remove;
//   * a conference listed twice: the later one wins; the list is kept sorted by entity (a
//     document lists them in the notifier's order, nearest first; use `sortForDisplay`);
//   * a state too large for one NOTIFY comes as a `state="full"` document with
//     `complete="false"`, then partials at the following versions that add to it, the last
//     without `complete`: nothing special to apply, and `ConferenceListState#complete` says
//     whether the list held is the whole state yet.
// Versions are BigInts (the format's versions are unsigned 64-bit). Tokens this version does
// not know in `<status>`, `<response>` and a deletion's `reason` read as `null`.
//
// Use with any SIP library: feed every NOTIFY body to `ConferenceListState#apply`.

/** The XML namespace of every element of the document. */
export const NAMESPACE = 'urn:conflist:params:xml:ns:conference-list';
/** The MIME type, for `Accept` and `Content-Type`. */
export const CONTENT_TYPE = 'application/conference-list+xml';
/** The SIP event package. */
export const EVENT = 'conference-list';

const U64_MAX = (1n << 64n) - 1n;
const U32_MAX = 4294967295n;

/**
 * Why a document could not be parsed or applied. `code` mirrors the Rust `DocumentError`:
 * `xml`, `wrong-root`, `missing-attribute`, `bad-attribute`, `missing-element`, `bad-element`,
 * `deleted-in-full`, `version-gap`.
 */
export class DocumentError extends Error {
  constructor(code, message, detail = {}) {
    super(message);
    this.name = 'DocumentError';
    this.code = code;
    Object.assign(this, detail);
  }
}

/** A partial document that does not follow the held version: re-subscribe for a full one. */
export class VersionGapError extends DocumentError {
  constructor(expected, got) {
    super('version-gap', `version gap: expected ${expected}, got ${got}`, { expected, got });
    this.name = 'VersionGapError';
  }
}

const xmlError = (msg) => new DocumentError('xml', `malformed XML: ${msg}`);

// ---------------------------------------------------------------------------------------------
// XML: both parsers produce the same small tree:
//   element = { ns: string|null, local: string, attrs: Map<unprefixed name, value>, children: [] }
//   children hold elements and strings (text and CDATA, references resolved).

const NAME_START = /[A-Za-z_:\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u02FF\u0370-\u037D\u037F-\u1FFF\u200C-\u200D\u2070-\u218F\u2C00-\u2FEF\u3001-\uD7FF\uF900-\uFDCF\uFDF0-\uFFFD\uD800-\uDBFF]/;
const PREDEFINED = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

function isXmlChar(cp) {
  return (
    cp === 0x9 || cp === 0xa || cp === 0xd ||
    (cp >= 0x20 && cp <= 0xd7ff) || (cp >= 0xe000 && cp <= 0xfffd) || (cp >= 0x10000 && cp <= 0x10ffff)
  );
}

/** Resolves `&…;` references in `s` (the text between markup). */
function resolveRefs(s) {
  if (!s.includes('&')) return s;
  return s.replace(/&([^;&]*);|&/g, (m, ref) => {
    if (ref === undefined) throw xmlError('"&" without a reference');
    if (ref[0] === '#') {
      const cp = /^#x[0-9A-Fa-f]+$/.test(ref) ? parseInt(ref.slice(2), 16) : /^#[0-9]+$/.test(ref) ? parseInt(ref.slice(1), 10) : NaN;
      if (!isXmlChar(cp)) throw xmlError(`bad character reference &${ref};`);
      return String.fromCodePoint(cp);
    }
    const c = PREDEFINED[ref];
    if (c === undefined) throw xmlError(`unknown entity &${ref};`);
    return c;
  });
}

/**
 * The built-in parser: XML 1.0 well-formed documents with namespaces (no DTD processing; a
 * DOCTYPE is skipped). Enough for this format; used where there is no DOMParser.
 */
export function parseXml(input) {
  const text = String(input).replace(/^\uFEFF/, '').replace(/\r\n?/g, '\n');
  let i = 0;
  const fail = (msg) => {
    throw xmlError(`${msg} at offset ${i}`);
  };
  const startsWith = (s) => text.startsWith(s, i);
  const skipTo = (end, what) => {
    const j = text.indexOf(end, i);
    if (j < 0) fail(`unterminated ${what}`);
    const body = text.slice(i, j);
    i = j + end.length;
    return body;
  };
  const skipMisc = () => {
    for (;;) {
      const ws = /^[ \t\n]*/.exec(text.slice(i, i + 4096))[0];
      i += ws.length;
      if (ws.length === 4096) continue;
      if (startsWith('<!--')) {
        i += 4;
        if (skipTo('-->', 'comment').includes('--')) fail('"--" inside a comment');
      } else if (startsWith('<?')) {
        i += 2;
        skipTo('?>', 'processing instruction');
      } else return;
    }
  };
  const readName = () => {
    const m = /^[^\s/>=<"'!?&;]+/.exec(text.slice(i, i + 1024));
    if (!m || !NAME_START.test(m[0][0])) fail('expected a name');
    i += m[0].length;
    return m[0];
  };
  const scopes = [new Map([['xml', 'http://www.w3.org/XML/1998/namespace']])];
  const resolve = (prefix, scope) => {
    const uri = scope.get(prefix);
    if (uri === undefined && prefix !== '') fail(`unbound namespace prefix "${prefix}"`);
    return uri || null;
  };

  const readElement = () => {
    i += 1; // '<'
    const qname = readName();
    const raw = [];
    for (;;) {
      const ws = /^[ \t\n]*/.exec(text.slice(i))[0];
      i += ws.length;
      if (startsWith('/>') || startsWith('>')) break;
      if (!ws) fail('expected whitespace before an attribute');
      const name = readName();
      const eq = /^[ \t\n]*=[ \t\n]*/.exec(text.slice(i));
      if (!eq) fail(`expected "=" after attribute ${name}`);
      i += eq[0].length;
      const quote = text[i];
      if (quote !== '"' && quote !== "'") fail('expected a quoted attribute value');
      i += 1;
      const value = skipTo(quote, 'attribute value');
      if (value.includes('<')) fail('"<" in an attribute value');
      if (raw.some((a) => a.name === name)) fail(`duplicate attribute ${name}`);
      // Attribute-value normalization (XML 1.0 §3.3.3, CDATA): literal whitespace becomes a
      // space; characters from references are kept.
      raw.push({ name, value: resolveRefs(value.replace(/[\t\n]/g, ' ')) });
    }
    const scope = new Map(scopes[scopes.length - 1]);
    for (const a of raw) {
      if (a.name === 'xmlns') scope.set('', a.value);
      else if (a.name.startsWith('xmlns:')) scope.set(a.name.slice(6), a.value);
    }
    const colon = qname.indexOf(':');
    const prefix = colon < 0 ? '' : qname.slice(0, colon);
    const el = { ns: resolve(prefix, scope), local: colon < 0 ? qname : qname.slice(colon + 1), attrs: new Map(), children: [] };
    for (const a of raw) {
      if (a.name === 'xmlns' || a.name.startsWith('xmlns:')) continue;
      const c = a.name.indexOf(':');
      if (c >= 0) resolve(a.name.slice(0, c), scope);
      else el.attrs.set(a.name, a.value);
    }
    if (startsWith('/>')) {
      i += 2;
      return el;
    }
    i += 1; // '>'
    scopes.push(scope);
    for (;;) {
      const lt = text.indexOf('<', i);
      if (lt < 0) fail(`unclosed element <${qname}>`);
      if (lt > i) {
        const chunk = text.slice(i, lt);
        if (chunk.includes(']]>')) fail('"]]>" in text');
        el.children.push(resolveRefs(chunk));
        i = lt;
      }
      if (startsWith('</')) {
        i += 2;
        const close = readName();
        if (close !== qname) fail(`</${close}> closes <${qname}>`);
        i += /^[ \t\n]*/.exec(text.slice(i))[0].length;
        if (text[i] !== '>') fail('expected ">"');
        i += 1;
        scopes.pop();
        return el;
      } else if (startsWith('<![CDATA[')) {
        i += 9;
        el.children.push(skipTo(']]>', 'CDATA section'));
      } else if (startsWith('<!--') || startsWith('<?')) {
        skipMisc();
      } else if (startsWith('<!')) {
        fail('markup declaration inside an element');
      } else {
        el.children.push(readElement());
      }
    }
  };

  if (startsWith('<?xml') && /^<\?xml[ \t\n?]/.test(text.slice(i, i + 6))) {
    i += 5;
    skipTo('?>', 'XML declaration');
  }
  skipMisc();
  if (startsWith('<!DOCTYPE')) {
    let depth = 0;
    for (; i < text.length; i++) {
      if (text[i] === '[') depth++;
      else if (text[i] === ']') depth--;
      else if (text[i] === '>' && depth <= 0) break;
    }
    if (i >= text.length) fail('unterminated DOCTYPE');
    i += 1;
    skipMisc();
  }
  if (text[i] !== '<') fail(i >= text.length ? 'no root element' : 'text before the root element');
  const root = readElement();
  skipMisc();
  if (i < text.length) fail('content after the root element');
  return root;
}

/** The browser's DOMParser, turned into the same tree as `parseXml`. */
function parseWithDom(DOMParserClass, text) {
  const doc = new DOMParserClass().parseFromString(String(text), 'application/xml');
  const errors = doc.getElementsByTagName('parsererror');
  for (const e of Array.from(errors)) {
    if (e.namespaceURI !== NAMESPACE) throw xmlError((e.textContent || 'parser error').trim());
  }
  const convert = (node) => {
    const el = { ns: node.namespaceURI || null, local: node.localName, attrs: new Map(), children: [] };
    for (const a of Array.from(node.attributes)) {
      if (!a.prefix && a.name !== 'xmlns') el.attrs.set(a.localName, a.value);
    }
    for (const c of Array.from(node.childNodes)) {
      if (c.nodeType === 1) el.children.push(convert(c));
      else if (c.nodeType === 3 || c.nodeType === 4) el.children.push(c.data);
    }
    return el;
  };
  if (!doc.documentElement) throw xmlError('no root element');
  return convert(doc.documentElement);
}

/** Picks the parser: an injected `parse(text) → tree`, the global DOMParser, or `parseXml`. */
function toTree(xml, parser) {
  if (typeof parser === 'function') return parser(xml);
  if (parser === 'builtin') return parseXml(xml);
  if (typeof globalThis.DOMParser === 'function') return parseWithDom(globalThis.DOMParser, xml);
  return parseXml(xml);
}

// ---------------------------------------------------------------------------------------------
// The document (mirrors document/src/parse.rs).

const ours = (el, local) => typeof el === 'object' && el.ns === NAMESPACE && (local === undefined || el.local === local);
const elements = (el) => el.children.filter((c) => typeof c === 'object');
/** The element's own text (its child elements are skipped, as in the Rust parser). */
const ownText = (el) => el.children.filter((c) => typeof c === 'string').join('');
const nonEmpty = (s) => (s === '' ? null : s);

// Rust's `str::trim` (Unicode White_Space), as the crate trims tokens.
const RUST_WS = '\\t\\n\\v\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000';
const RUST_TRIM = new RegExp(`^[${RUST_WS}]+|[${RUST_WS}]+$`, 'g');
const rustTrim = (s) => s.replace(RUST_TRIM, '');
const asciiLower = (s) => s.replace(/[A-Z]/g, (c) => c.toLowerCase());

/** `<status>` tokens; `<response>` tokens; deletion reasons (model.rs `from_token`). */
export const STATUSES = ['scheduled', 'active', 'ended', 'cancelled'];
export const RESPONSES = ['needs-action', 'accepted', 'declined', 'tentative'];
export const DELETE_REASONS = ['removed', 'cancelled', 'out-of-window'];

/** A status token (trimmed, ASCII case-insensitive), or null when unknown. */
function statusToken(s) {
  const t = asciiLower(rustTrim(s));
  return STATUSES.includes(t) ? t : null;
}

/** A response token (trimmed, ASCII case-insensitive, `_` read as `-`), or null when unknown. */
function responseToken(s) {
  const t = asciiLower(rustTrim(s).replaceAll('_', '-'));
  return RESPONSES.includes(t) ? t : null;
}

/** A deletion reason (trimmed, exact), or null when absent or unknown. */
function reasonToken(s) {
  if (s === undefined) return null;
  const t = rustTrim(s);
  return DELETE_REASONS.includes(t) ? t : null;
}

/** `xs:boolean` (`true`, `false`, `1`, `0` after whitespace collapsing), or null when invalid. */
function parseBoolean(s) {
  const t = s.replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, '');
  if (t === 'true' || t === '1') return true;
  if (t === 'false' || t === '0') return false;
  return null;
}

function required(el, name) {
  const v = el.attrs.get(name);
  if (v === undefined) throw new DocumentError('missing-attribute', `missing attribute \`${name}\``, { attribute: name });
  return v;
}

/** `xs:unsignedLong` as a BigInt: digits only, no sign. */
function parseU64(s) {
  const t = s.trim();
  if (!/^[0-9]+$/.test(t)) return null;
  const v = BigInt(t);
  return v <= U64_MAX ? v : null;
}

function uriEntries(el) {
  const out = [];
  for (const e of elements(el)) {
    if (!ours(e, 'entry')) continue;
    const entry = { uri: null, displayText: null, purpose: null };
    for (const c of elements(e)) {
      if (ours(c, 'uri')) entry.uri = ownText(c);
      else if (ours(c, 'display-text')) entry.displayText = nonEmpty(ownText(c));
      else if (ours(c, 'purpose')) entry.purpose = nonEmpty(ownText(c));
    }
    if (entry.uri === null) throw new DocumentError('missing-element', 'missing element <uri>', { element: 'uri' });
    out.push(entry);
  }
  return out;
}

function mediaEntries(el) {
  const out = [];
  for (const e of elements(el)) {
    if (!ours(e, 'entry')) continue;
    const entry = { label: required(e, 'label'), type: null, displayText: null };
    for (const c of elements(e)) {
      if (ours(c, 'type')) entry.type = ownText(c);
      else if (ours(c, 'display-text')) entry.displayText = nonEmpty(ownText(c));
    }
    if (entry.type === null) throw new DocumentError('missing-element', 'missing element <type>', { element: 'type' });
    out.push(entry);
  }
  return out;
}

/** A conference as the list holds it; every field the format defines, `null`/`[]` when absent. */
function emptyConference(entity) {
  return {
    entity,
    displayText: null,
    subject: null,
    freeText: null,
    keywords: [],
    confUris: [],
    serviceUris: [],
    maximumUserCount: null,
    availableMedia: [],
    start: null,
    end: null,
    timeZone: null,
    recurrence: null,
    role: null,
    response: null,
    status: null,
    organizer: null,
    passcodeRequired: null,
    revision: null,
  };
}

function description(c, el) {
  for (const e of elements(el)) {
    if (!ours(e)) continue;
    switch (e.local) {
      case 'display-text': c.displayText = nonEmpty(ownText(e)); break;
      case 'subject': c.subject = nonEmpty(ownText(e)); break;
      case 'free-text': c.freeText = nonEmpty(ownText(e)); break;
      case 'keywords': c.keywords = ownText(e).split(/[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+/).filter(Boolean); break;
      case 'conf-uris': c.confUris = uriEntries(e); break;
      case 'service-uris': c.serviceUris = uriEntries(e); break;
      case 'maximum-user-count': {
        const t = ownText(e).trim();
        if (!/^\+?[0-9]+$/.test(t) || BigInt(t) > U32_MAX) {
          throw new DocumentError('bad-element', 'invalid content of element <maximum-user-count>', { element: 'maximum-user-count' });
        }
        c.maximumUserCount = Number(t);
        break;
      }
      case 'available-media': c.availableMedia = mediaEntries(e); break;
      default: extension(c, e);
    }
  }
}

/**
 * An element this format does not define: a `next-occurrence` (start, end) is read when present
 * so that a page can show it (absent from the object otherwise); anything else is ignored. The
 * format itself gives a recurring meeting's next occurrence as its `schedule`.
 */
function extension(c, e) {
  if (e.local === 'next-occurrence') {
    c.nextOccurrence = { start: e.attrs.get('start') ?? null, end: e.attrs.get('end') ?? null };
  }
}

/** `<organizer>`: `{ uri, displayText }`; null when its `<uri>` is empty. */
function organizer(el) {
  let uri = null;
  let displayText = null;
  for (const c of elements(el)) {
    if (ours(c, 'uri')) uri = ownText(c);
    else if (ours(c, 'display-text')) displayText = nonEmpty(ownText(c));
  }
  if (uri === null) throw new DocumentError('missing-element', 'missing element <uri>', { element: 'uri' });
  return uri === '' ? null : { uri, displayText };
}

function conferenceEntry(el, docState) {
  const entity = required(el, 'entity');
  const state = required(el, 'state');
  if (state === 'deleted') {
    if (docState === 'full') {
      throw new DocumentError('deleted-in-full', `conference ${entity} is deleted inside a full document`, { entity });
    }
    return { entity, deleted: true, reason: reasonToken(el.attrs.get('reason')) };
  }
  if (state !== 'full') throw new DocumentError('bad-attribute', 'invalid value of attribute `state`', { attribute: 'state' });
  const c = emptyConference(entity);
  c.revision = nonEmpty(el.attrs.get('revision') ?? '');
  for (const e of elements(el)) {
    if (!ours(e)) continue;
    switch (e.local) {
      case 'conference-description': description(c, e); break;
      case 'schedule': {
        const attr = (name) => nonEmpty(e.attrs.get(name) ?? '');
        c.start = attr('start');
        c.end = attr('end');
        c.timeZone = attr('time-zone');
        c.recurrence = attr('recurrence');
        break;
      }
      case 'role': c.role = nonEmpty(ownText(e)); break;
      case 'response': c.response = responseToken(ownText(e)); break;
      case 'status': c.status = statusToken(ownText(e)); break;
      case 'organizer': c.organizer = organizer(e); break;
      case 'passcode-required': {
        const v = parseBoolean(ownText(e));
        if (v === null) {
          throw new DocumentError('bad-element', 'invalid content of element <passcode-required>', { element: 'passcode-required' });
        }
        c.passcodeRequired = v;
        break;
      }
      default: extension(c, e);
    }
  }
  return { entity, deleted: false, conference: c };
}

/**
 * Parses one NOTIFY body: `{ entity, version (BigInt), state: 'full'|'partial', complete, entries }`,
 * each entry `{ entity, deleted: true, reason }` (reason `removed`, `cancelled`, `out-of-window` or
 * null) or `{ entity, deleted: false, conference }`, in document order. `complete` is false when the
 * next document continues this one's state (`complete="false"`).
 * Throws `DocumentError`. `options.parser`: a function `(text) → tree` (see `parseXml`) or
 * `'builtin'`; the default is DOMParser where it exists.
 */
export function parseDocument(xml, { parser } = {}) {
  const root = toTree(xml, parser);
  if (!ours(root, 'conference-list')) {
    throw new DocumentError('wrong-root', `root element is not <conference-list> in namespace ${NAMESPACE}`);
  }
  const entity = required(root, 'entity');
  const version = parseU64(required(root, 'version'));
  if (version === null) throw new DocumentError('bad-attribute', 'invalid value of attribute `version`', { attribute: 'version' });
  const state = required(root, 'state');
  if (state !== 'full' && state !== 'partial') {
    throw new DocumentError('bad-attribute', 'invalid value of attribute `state`', { attribute: 'state' });
  }
  let complete = true;
  if (root.attrs.has('complete')) {
    complete = parseBoolean(root.attrs.get('complete'));
    if (complete === null) throw new DocumentError('bad-attribute', 'invalid value of attribute `complete`', { attribute: 'complete' });
  }
  const entries = elements(root).filter((e) => ours(e, 'conference')).map((e) => conferenceEntry(e, state));
  return { entity, version, state, complete, entries };
}

/**
 * Code-point order (= UTF-8 byte order, the Rust crate's order), not UTF-16 order. UTF-16 code
 * units compare in code-point order except where one side is a surrogate (a code point above
 * U+FFFF) and the other a unit from U+E000 up: there the surrogate's code point is the larger.
 */
export function compareEntities(a, b) {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  if (i === n) return a.length - b.length;
  const x = a.charCodeAt(i);
  const y = b.charCodeAt(i);
  const sx = x >= 0xd800 && x <= 0xdfff;
  const sy = y >= 0xd800 && y <= 0xdfff;
  if (sx === sy) return x - y;
  return sx ? 1 : -1;
}

/**
 * `apply` of the Rust crate: the list after `doc` (sorted by entity), given the list held and
 * its version (`null` when none is held). Throws `VersionGapError` for a partial document whose
 * version is not `heldVersion + 1`.
 */
export function applyDocument(held, heldVersion, doc) {
  const set = new Map();
  if (doc.state === 'partial') {
    if (heldVersion !== null && heldVersion !== undefined) {
      const hv = BigInt(heldVersion);
      if (hv === U64_MAX || hv + 1n !== doc.version) throw new VersionGapError((hv + 1n) & U64_MAX, doc.version);
    }
    for (const c of held) set.set(c.entity, c);
  }
  for (const e of doc.entries) {
    if (e.deleted) set.delete(e.entity);
    else set.set(e.entity, e.conference);
  }
  return [...set.values()].sort((a, b) => compareEntities(a.entity, b.entity));
}

function sameConference(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The list one subscription holds. Feed it every NOTIFY body with `apply(body)`; it never
 * throws for a bad document, it returns what happened:
 *   { kind: 'applied', version, state, complete, changed: [entity…], removed: [entity…],
 *     deleted: [{ entity, reason }…], conferences }
 *   { kind: 'gap', expected, got }  the list is unchanged: re-subscribe (then `reset()`)
 *   { kind: 'error', error }        the body is not a valid document; the list is unchanged
 * `changed` names the conferences added or modified by this document (not the unchanged ones a
 * full document repeats); `removed` the ones it removed; `deleted` the document's deletions in
 * document order, with why (`removed`, `cancelled`, `out-of-window`, or null). `complete` is
 * false while a state sent in several NOTIFYs is still arriving (show the list as loading).
 */
export class ConferenceListState {
  constructor({ parser } = {}) {
    this.parser = parser;
    this.reset();
  }

  /** Forgets the list (before a new subscription, whose first document is full). */
  reset() {
    /** The conferences, sorted by entity. */
    this.conferences = [];
    /** The version held (BigInt), or null. */
    this.version = null;
    /** The subscriber URI of the last document. */
    this.entity = null;
    /**
     * Whether `conferences` is the whole state: false before the first document and while a
     * state sent in several parts (`complete="false"`) is still arriving.
     */
    this.complete = false;
  }

  apply(body) {
    let doc;
    try {
      doc = parseDocument(body, { parser: this.parser });
    } catch (error) {
      return { kind: 'error', error };
    }
    let next;
    try {
      next = applyDocument(this.conferences, this.version, doc);
    } catch (error) {
      if (error instanceof VersionGapError) return { kind: 'gap', expected: error.expected, got: error.got, error };
      return { kind: 'error', error };
    }
    const before = new Map(this.conferences.map((c) => [c.entity, c]));
    const after = new Map(next.map((c) => [c.entity, c]));
    const isChanged = (c) => !before.has(c.entity) || !sameConference(before.get(c.entity), c);
    // A partial changes only what it carries (the rest keeps its objects): compare just those,
    // so each part of a large state costs its own size, not the whole list's.
    const changed =
      doc.state === 'partial'
        ? [...new Set(doc.entries.filter((e) => !e.deleted).map((e) => e.entity))]
            .map((e) => after.get(e))
            .filter((c) => c && isChanged(c))
            .map((c) => c.entity)
            .sort(compareEntities)
        : next.filter(isChanged).map((c) => c.entity);
    const removed = [...before.keys()].filter((e) => !after.has(e));
    const deleted = doc.entries.filter((e) => e.deleted).map((e) => ({ entity: e.entity, reason: e.reason }));
    this.conferences = next;
    this.version = doc.version;
    this.entity = doc.entity;
    this.complete = doc.complete;
    return { kind: 'applied', version: doc.version, state: doc.state, complete: doc.complete, changed, removed, deleted, conferences: next };
  }
}

// ---------------------------------------------------------------------------------------------
// Presentation helpers (no DOM).

function time(s) {
  if (!s) return NaN;
  const t = Date.parse(s);
  return Number.isNaN(t) ? NaN : t;
}

/** `live`, `upcoming`, `ended` from the schedule (of the next occurrence when there is one). */
function scheduleStatus(c, now) {
  const when = c.nextOccurrence?.start ? c.nextOccurrence : c;
  const start = time(when.start);
  const end = time(when.end);
  if (!Number.isNaN(start) && now < start) return 'upcoming';
  if (!Number.isNaN(end) && now >= end) return 'ended';
  if (!Number.isNaN(start)) return 'live';
  return null;
}

/**
 * The conference's status: the document's own `status` when it has one (`scheduled`, `active`
 * shown as `live`, `ended`, `cancelled`), else derived from the schedule (of the next occurrence when there is one): `live`
 * (now within start..end; no end: from start on), `upcoming`, `ended`, or `null` without a
 * schedule.
 */
export function statusOf(c, now = Date.now()) {
  if (c.status) return c.status === 'active' ? 'live' : c.status;
  return scheduleStatus(c, now);
}

/** The start that matters to the user: the next occurrence's, else the schedule's. */
export function startOf(c) {
  return c.nextOccurrence?.start ?? c.start;
}

const RANK = { live: 0, upcoming: 1, scheduled: 1, ended: 3 };

/**
 * Display order, nearest first: live, then upcoming by start, then undated, then ended (most
 * recent first); ties by entity. A conference with another status (`cancelled`) sits where its
 * schedule puts it, but never among the live ones.
 */
export function sortForDisplay(conferences, now = Date.now()) {
  const key = (c) => {
    const s = statusOf(c, now);
    let rank = s === null ? 2 : RANK[s];
    if (rank === undefined) {
      const d = scheduleStatus(c, now);
      rank = d === null ? 2 : Math.max(1, RANK[d]);
    }
    const t = time(startOf(c));
    return { rank, t: Number.isNaN(t) ? 0 : rank === 3 ? -t : t };
  };
  return [...conferences].sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    return ka.rank - kb.rank || ka.t - kb.t || compareEntities(a.entity, b.entity);
  });
}

/** The web page to join (`service-uris` entry with purpose `web-page`), else null. */
export function joinLink(c) {
  const e = c.serviceUris.find((u) => u.purpose === 'web-page' && /^https?:\/\//i.test(u.uri));
  return e ? e.uri : null;
}

/** The line to show as the conference's title. */
export function titleOf(c) {
  return c.subject ?? c.displayText ?? c.entity;
}
