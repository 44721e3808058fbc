//! Random document sequences as JSON, for cross-checking other implementations of [`apply`]
//! (the web client's `web/conflist.js`: `tests/node/conflist.test.mjs` runs this).
//!
//! Run with: `cargo run -q -p conflist-document --example sequences -- [SEED] [COUNT]`
//!
//! Each sequence is what one subscriber receives: full documents, partial documents that
//! follow the held version, partials with a version gap, partials with duplicate or unknown
//! entries, states sent in several parts (a full document with `complete="false"`, then
//! partials, sometimes with a part lost), and corrupted bodies. For every step it prints the
//! XML body (rendered by this crate, sometimes edited) and what a client holds after it,
//! computed with [`ConferenceList::parse`] and [`apply`]: `applied` (the version, whether the
//! state is `complete`, the document's `deleted` entries with their `reason` in document
//! order, and the conferences), `gap` (expected and got) or `error` (the [`DocumentError`]
//! kind); a client keeps its list on `gap` and `error`. Versions are JSON strings (they are
//! 64-bit). Output: one JSON object,
//! `{"seed":…,"sequences":[{"steps":[{"xml":…,"outcome":{…}}…]}…]}`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use conflist_document::{
    Conference, ConferenceDescription, ConferenceList, DeleteReason, DocumentError, DocumentState,
    Entry, MediaEntry, Organizer, Response, Schedule, Status, UriEntry, apply, diff, entry_len,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Default seed and number of sequences.
const DEFAULT_SEED: u64 = 1;
const DEFAULT_COUNT: usize = 200;
/// Steps per sequence.
const STEPS: usize = 12;

/// Text mixing markup characters, whitespace (`\r` too), non-ASCII and characters XML cannot
/// carry (rendered as U+FFFD).
fn text() -> impl Strategy<Value = String> {
    "[ -~\t\r\néß😀\u{FFFD}\u{0}\u{1}\u{2028}]{0,12}"
}

fn keyword() -> impl Strategy<Value = String> {
    "[!-~é😀]{1,8}"
}

/// Conference URIs from a small pool (so steps collide), some outside the BMP or above the
/// surrogates, where UTF-16 order differs from code-point order.
fn entity() -> impl Strategy<Value = String> {
    "sip:[ab&<\"'\u{E000}😀][ab]?"
}

fn uri_entry() -> impl Strategy<Value = UriEntry> {
    (
        text(),
        proptest::option::of(text()),
        proptest::option::of(prop_oneof![
            Just("web-page".to_owned()),
            Just("participation".to_owned()),
            text()
        ]),
    )
        .prop_map(|(uri, display_text, purpose)| UriEntry {
            uri,
            display_text,
            purpose,
        })
}

fn media_entry() -> impl Strategy<Value = MediaEntry> {
    ("[ -~😀]{0,4}", "[ -~\r]{0,6}", proptest::option::of(text())).prop_map(
        |(label, media_type, display_text)| MediaEntry {
            label,
            media_type,
            display_text,
        },
    )
}

fn description() -> impl Strategy<Value = ConferenceDescription> {
    (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::collection::vec(keyword(), 0..4),
        proptest::collection::vec(uri_entry(), 0..3),
        proptest::collection::vec(uri_entry(), 0..3),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(media_entry(), 0..3),
    )
        .prop_map(
            |(dt, subject, ft, kw, conf, service, max, media)| ConferenceDescription {
                display_text: dt,
                subject,
                free_text: ft,
                keywords: kw,
                conf_uris: conf,
                service_uris: service,
                maximum_user_count: max,
                available_media: media,
            },
        )
}

fn date_time() -> impl Strategy<Value = String> {
    prop_oneof![
        "20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][1-9]T[01][0-9]:[0-5][0-9]:[0-5][0-9]Z",
        "20[0-9]{2}-0[1-9]-1[0-9]T10:00:00[+-]0[0-9]:00",
        text(),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::option::of(date_time()),
        proptest::option::of(date_time()),
        proptest::option::of(prop_oneof![
            Just("Europe/Berlin".to_owned()),
            Just("America/New_York".to_owned()),
            text()
        ]),
        proptest::option::of(prop_oneof![
            Just("FREQ=WEEKLY;BYDAY=MO".to_owned()),
            Just("FREQ=DAILY;COUNT=5".to_owned()),
            text()
        ]),
    )
        .prop_map(|(start, end, time_zone, recurrence)| Schedule {
            start,
            end,
            time_zone,
            recurrence,
        })
}

fn conference() -> impl Strategy<Value = Conference> {
    (
        (
            entity(),
            description(),
            schedule(),
            proptest::option::of(prop_oneof![Just("organizer".to_owned()), text()]),
        ),
        (
            proptest::option::of(proptest::sample::select(Response::ALL.to_vec())),
            proptest::option::of(proptest::sample::select(Status::ALL.to_vec())),
            // An empty URI: the organizer is not rendered.
            proptest::option::of(
                (text(), proptest::option::of(text()))
                    .prop_map(|(uri, display_text)| Organizer { uri, display_text }),
            ),
            proptest::option::of(any::<bool>()),
            proptest::option::of(prop_oneof![Just("2026-11-20T08:15:00Z".to_owned()), text()]),
        ),
    )
        .prop_map(
            |(
                (entity, description, schedule, role),
                (response, status, organizer, passcode_required, revision),
            )| Conference {
                entity,
                description,
                schedule,
                role,
                response,
                status,
                organizer,
                passcode_required,
                revision,
            },
        )
}

fn delete_reason() -> impl Strategy<Value = Option<DeleteReason>> {
    proptest::option::of(proptest::sample::select(DeleteReason::ALL.to_vec()))
}

fn conferences() -> impl Strategy<Value = Vec<Conference>> {
    proptest::collection::vec(conference(), 0..5)
}

/// Draws one value of `s`.
fn draw<S: Strategy>(runner: &mut TestRunner, s: S) -> S::Value {
    s.new_tree(runner).expect("strategy draws").current()
}

/// Conferences by entity (last wins), sorted: a set the server might hold.
fn as_set(cs: Vec<Conference>) -> Vec<Conference> {
    let by: BTreeMap<String, Conference> = cs.into_iter().map(|c| (c.entity.clone(), c)).collect();
    by.into_values().collect()
}

/// What the client holds.
struct Client {
    held: Vec<Conference>,
    version: Option<u64>,
}

/// `set` as a notifier sends a state too large for one NOTIFY: a full document with
/// `complete="false"`, then partials at the following versions adding to it, each at most
/// `budget` bytes (or one entry), the last complete.
fn in_parts(user: &str, version: u64, set: Vec<Conference>, budget: usize) -> Vec<ConferenceList> {
    let whole = ConferenceList::full(user, version, set);
    let mut parts: Vec<ConferenceList> = Vec::new();
    let mut size = 0;
    for e in whole.entries.iter() {
        let len = entry_len(e);
        match parts.last_mut() {
            Some(p) if size + len <= budget || p.entries.is_empty() => {
                p.entries.push(e.clone());
                size += len;
            }
            _ => {
                let p = ConferenceList {
                    entity: user.to_owned(),
                    version: version.wrapping_add(parts.len() as u64),
                    state: if parts.is_empty() {
                        DocumentState::Full
                    } else {
                        DocumentState::Partial
                    },
                    entries: vec![e.clone()],
                    complete: false,
                };
                size = p.envelope_len() + len;
                parts.push(p);
            }
        }
    }
    match parts.last_mut() {
        Some(last) => last.complete = true,
        None => parts.push(whole),
    }
    parts
}

/// One step's body: a document, sometimes edited into something invalid. A state sent in
/// parts queues its later parts in `pending`, sent as the next steps.
fn body(
    runner: &mut TestRunner,
    client: &Client,
    server: &mut Vec<Conference>,
    pending: &mut VecDeque<String>,
) -> String {
    let user = "sip:alice@example.com";
    let next_version = client.version.map_or(0, |v| v.wrapping_add(1));
    let random_version = |runner: &mut TestRunner| {
        draw(
            runner,
            prop_oneof![
                Just(0u64),
                Just(u64::MAX),
                Just(u64::MAX - 1),
                any::<u64>(),
                0u64..20
            ],
        )
    };
    let kind = draw(runner, 0u8..120);
    let doc = match kind {
        // A full document of a new server set.
        0..=14 => {
            *server = as_set(draw(runner, conferences()));
            let v = if kind < 8 {
                next_version
            } else {
                random_version(runner)
            };
            ConferenceList::full(user, v, server.clone())
        }
        // The partial a notifier sends: the diff to a changed set, at the next version.
        15..=59 => {
            let mut next: BTreeMap<String, Conference> = server
                .iter()
                .map(|c| (c.entity.clone(), c.clone()))
                .collect();
            for c in draw(runner, proptest::collection::vec(conference(), 0..3)) {
                next.insert(c.entity.clone(), c);
            }
            let keys: Vec<String> = next.keys().cloned().collect();
            for (k, drop) in keys
                .into_iter()
                .zip(draw(runner, proptest::collection::vec(any::<bool>(), 6)))
            {
                if drop && draw(runner, 0u8..3) == 0 {
                    next.remove(&k);
                }
            }
            let next: Vec<Conference> = next.into_values().collect();
            let d = diff(user, next_version, &client.held, &next);
            *server = next;
            d
        }
        // A partial at a version that does not follow.
        60..=71 => {
            let mut d = diff(user, random_version(runner), &client.held, server);
            if d.version == next_version {
                d.version = d.version.wrapping_add(2);
            }
            d
        }
        // A partial with arbitrary entries: duplicates, deletions of unknown conferences.
        72..=81 => {
            let entries = draw(
                runner,
                proptest::collection::vec((conference(), any::<bool>()), 0..6),
            )
            .into_iter()
            .map(|(c, deleted)| {
                if deleted {
                    Entry::Deleted {
                        entity: c.entity,
                        reason: draw(runner, delete_reason()),
                    }
                } else {
                    Entry::Full(c)
                }
            })
            .collect();
            let d = ConferenceList {
                entity: user.to_owned(),
                version: next_version,
                state: DocumentState::Partial,
                entries,
                complete: draw(runner, 0u8..4) > 0,
            };
            if draw(runner, any::<bool>()) {
                let xml = String::from_utf8(d.render()).expect("rendered documents are UTF-8");
                return edit(runner, &xml);
            }
            d
        }
        // A full document with duplicate entities (the later one wins).
        82..=85 => ConferenceList {
            entity: user.to_owned(),
            version: next_version,
            state: DocumentState::Full,
            entries: draw(runner, conferences())
                .into_iter()
                .map(Entry::Full)
                .collect(),
            complete: true,
        },
        // A new server set in parts, at the next version; sometimes a part is lost or
        // edited (the ones after it are then gaps, or apply to what the client has).
        100..=113 => {
            *server = as_set(draw(runner, proptest::collection::vec(conference(), 0..7)));
            let budget = draw(runner, 200usize..1500);
            let mut parts: VecDeque<String> = in_parts(user, next_version, server.clone(), budget)
                .iter()
                .map(|p| String::from_utf8(p.render()).expect("rendered documents are UTF-8"))
                .collect();
            if parts.len() > 1 {
                match draw(runner, 0u8..8) {
                    0 => {
                        let i = draw(runner, 0..parts.len());
                        parts.remove(i);
                    }
                    1 => {
                        let i = draw(runner, 0..parts.len());
                        if let Some(p) = parts.get_mut(i) {
                            *p = edit(runner, p);
                        }
                    }
                    _ => {}
                }
            }
            let first = parts.pop_front().unwrap_or_default();
            pending.extend(parts);
            return first;
        }
        // A partial with reasons as another implementation might write them.
        114..=119 => {
            let keep = draw(
                runner,
                proptest::collection::vec(any::<bool>(), server.len()),
            );
            let next: Vec<Conference> = server
                .iter()
                .zip(keep)
                .filter(|(_, keep)| *keep)
                .map(|(c, _)| c.clone())
                .collect();
            let mut d = diff(user, next_version, &client.held, &next);
            *server = next;
            for e in &mut d.entries {
                if let Entry::Deleted { reason, .. } = e {
                    *reason = draw(runner, delete_reason());
                }
            }
            let xml = String::from_utf8(d.render()).expect("rendered documents are UTF-8");
            return edit(runner, &xml);
        }
        // An edited body.
        _ => {
            let doc = ConferenceList::full(user, next_version, server.clone());
            if draw(runner, any::<bool>()) {
                return corrupt(runner, &doc);
            }
            let xml = String::from_utf8(doc.render()).expect("rendered documents are UTF-8");
            return edit(runner, &xml);
        }
    };
    String::from_utf8(doc.render()).expect("rendered documents are UTF-8")
}

/// A rendered document made invalid (or, by chance, still valid) in one of several ways.
fn corrupt(runner: &mut TestRunner, doc: &ConferenceList) -> String {
    let xml = String::from_utf8(doc.render()).expect("rendered documents are UTF-8");
    // Each edit keeps the XML well-formed and breaks one rule (or none), so that the first
    // fault is the same whichever order a parser checks things in.
    let edits: [&[(&str, &str)]; 12] = [
        &[(r#"state="full">"#, r#"state="whole">"#)],
        // `" version="`: the root's attribute, not the XML declaration's.
        &[(r#"" version=""#, r#"" revision=""#)],
        &[(r#"" version=""#, r#"" version="-"#)],
        &[(r#"" version=""#, r#"" version="99999999999999999999"#)],
        &[(r#"" version=""#, r#"" version=" 0"#)],
        &[(
            r#"" state="full"><conference-description>"#,
            r#"" state="deleted"><conference-description>"#,
        )],
        &[(r#"state="full"/>"#, r#"state="deleted"/>"#)],
        &[(r#"state="full">"#, r#"state="partial">"#)],
        &[("urn:conflist:params", "urn:other:params")],
        &[
            ("<conference-list ", "<conference-lists "),
            ("</conference-list>", "</conference-lists>"),
        ],
        &[("<maximum-user-count>", "<maximum-user-count>x")],
        &[("<uri>", "<uri/><purpose>"), ("</uri>", "</purpose>")],
    ];
    let k = draw(runner, 0..edits.len() + 3);
    if k >= edits.len() {
        // Truncated at a random character.
        let chars: Vec<char> = xml.chars().collect();
        let at = draw(runner, 0..chars.len().max(1));
        return chars[..at].iter().collect();
    }
    edits[k]
        .iter()
        .fold(xml, |xml, (from, to)| xml.replacen(from, to, 1))
}

/// A rendered document with one of its new-format fields written as another implementation
/// might write it: tokens in other case, padded, or unknown (which parse as absent), booleans
/// as digits; or one of those fields made invalid.
fn edit(runner: &mut TestRunner, xml: &str) -> String {
    let edits: &[(&str, &str)] = &[
        (r#"reason="removed""#, r#"reason="gone""#),
        (r#"reason="cancelled""#, r#"reason=" cancelled&#10;""#),
        (r#"reason="out-of-window""#, r#"reason="OUT-OF-WINDOW""#),
        ("<status>", "<status>\u{85}"),
        ("<status>", "<status>re"),
        ("<status>a", "<status> A"),
        ("<response>needs-action<", "<response> Needs_Action <"),
        ("<response>", "<response>x-"),
        ("<passcode-required>true<", "<passcode-required> 1\t<"),
        ("<passcode-required>false<", "<passcode-required>0<"),
        ("<passcode-required>", "<passcode-required>x"),
        ("<organizer><uri>", r#"<organizer><uri xmlns="urn:other">"#),
        (
            "<organizer><uri>",
            "<organizer><uri></uri><display-text/><uri>",
        ),
        ("<schedule ", r#"<schedule time-zone="" "#),
        (r#"complete="false""#, r#"complete="0""#),
        (r#"complete="false""#, r#"complete=" false ""#),
        (r#"complete="false""#, r#"complete="no""#),
        ("<conference-list ", r#"<conference-list complete="1" "#),
        ("<conference-list ", r#"<conference-list complete="0" "#),
        ("<conference-list ", r#"<conference-list complete="yes" "#),
    ];
    let (from, to) = edits[draw(runner, 0..edits.len())];
    if from == "<conference-list " && xml.contains(r#" complete=""#) {
        // A duplicate attribute: parsers may or may not notice before the value.
        return xml.to_owned();
    }
    xml.replacen(from, to, 1)
}

fn error_kind(e: &DocumentError) -> &'static str {
    match e {
        DocumentError::Xml(_) => "xml",
        DocumentError::WrongRoot => "wrong-root",
        DocumentError::MissingAttribute(_) => "missing-attribute",
        DocumentError::BadAttribute(_) => "bad-attribute",
        DocumentError::MissingElement(_) => "missing-element",
        DocumentError::BadElement(_) => "bad-element",
        DocumentError::DeletedInFull(_) => "deleted-in-full",
        DocumentError::VersionGap { .. } => "version-gap",
    }
}

/// A JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
}

fn json_uris(out: &mut String, uris: &[UriEntry]) {
    out.push('[');
    for (i, u) in uris.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"uri\":");
        json_str(out, &u.uri);
        out.push_str(",\"displayText\":");
        json_opt(out, u.display_text.as_deref());
        out.push_str(",\"purpose\":");
        json_opt(out, u.purpose.as_deref());
        out.push('}');
    }
    out.push(']');
}

/// A conference in the shape `conflist.js` gives it.
fn json_conference(out: &mut String, c: &Conference) {
    let d = &c.description;
    out.push_str("{\"entity\":");
    json_str(out, &c.entity);
    out.push_str(",\"displayText\":");
    json_opt(out, d.display_text.as_deref());
    out.push_str(",\"subject\":");
    json_opt(out, d.subject.as_deref());
    out.push_str(",\"freeText\":");
    json_opt(out, d.free_text.as_deref());
    out.push_str(",\"keywords\":[");
    for (i, k) in d.keywords.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(out, k);
    }
    out.push_str("],\"confUris\":");
    json_uris(out, &d.conf_uris);
    out.push_str(",\"serviceUris\":");
    json_uris(out, &d.service_uris);
    out.push_str(",\"maximumUserCount\":");
    match d.maximum_user_count {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"availableMedia\":[");
    for (i, m) in d.available_media.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"label\":");
        json_str(out, &m.label);
        out.push_str(",\"type\":");
        json_str(out, &m.media_type);
        out.push_str(",\"displayText\":");
        json_opt(out, m.display_text.as_deref());
        out.push('}');
    }
    out.push_str("],\"start\":");
    json_opt(out, c.schedule.start.as_deref());
    out.push_str(",\"end\":");
    json_opt(out, c.schedule.end.as_deref());
    out.push_str(",\"timeZone\":");
    json_opt(out, c.schedule.time_zone.as_deref());
    out.push_str(",\"recurrence\":");
    json_opt(out, c.schedule.recurrence.as_deref());
    out.push_str(",\"role\":");
    json_opt(out, c.role.as_deref());
    out.push_str(",\"response\":");
    json_opt(out, c.response.map(Response::as_str));
    out.push_str(",\"status\":");
    json_opt(out, c.status.map(Status::as_str));
    out.push_str(",\"organizer\":");
    match &c.organizer {
        Some(o) => {
            out.push_str("{\"uri\":");
            json_str(out, &o.uri);
            out.push_str(",\"displayText\":");
            json_opt(out, o.display_text.as_deref());
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push_str(",\"passcodeRequired\":");
    out.push_str(match c.passcode_required {
        Some(true) => "true",
        Some(false) => "false",
        None => "null",
    });
    out.push_str(",\"revision\":");
    json_opt(out, c.revision.as_deref());
    out.push('}');
}

/// Applies `xml` to the client as a subscriber would, and writes the outcome.
fn step(out: &mut String, client: &mut Client, xml: &str) {
    let outcome = ConferenceList::parse(xml.as_bytes())
        .and_then(|doc| apply(&client.held, client.version, &doc).map(|held| (doc, held)));
    match outcome {
        Ok((doc, held)) => {
            let _ = write!(
                out,
                "{{\"kind\":\"applied\",\"version\":\"{}\",\"complete\":{},\"deleted\":[",
                doc.version, doc.complete
            );
            let deleted = doc.entries.iter().filter_map(|e| match e {
                Entry::Deleted { entity, reason } => Some((entity, reason)),
                Entry::Full(_) => None,
            });
            for (i, (entity, reason)) in deleted.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"entity\":");
                json_str(out, entity);
                out.push_str(",\"reason\":");
                json_opt(out, reason.map(DeleteReason::as_str));
                out.push('}');
            }
            out.push_str("],\"conferences\":[");
            for (i, c) in held.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_conference(out, c);
            }
            out.push_str("]}");
            client.held = held;
            client.version = Some(doc.version);
        }
        Err(DocumentError::VersionGap { expected, got }) => {
            let _ = write!(
                out,
                "{{\"kind\":\"gap\",\"expected\":\"{expected}\",\"got\":\"{got}\"}}"
            );
        }
        Err(e) => {
            let _ = write!(
                out,
                "{{\"kind\":\"error\",\"code\":\"{}\"}}",
                error_kind(&e)
            );
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args
        .next()
        .map_or(DEFAULT_SEED, |s| s.parse().expect("SEED is a number"));
    let count: usize = args
        .next()
        .map_or(DEFAULT_COUNT, |s| s.parse().expect("COUNT is a number"));
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let mut out = String::new();
    let _ = write!(out, "{{\"seed\":{seed},\"sequences\":[");
    for s in 0..count {
        if s > 0 {
            out.push(',');
        }
        out.push_str("{\"steps\":[");
        let mut client = Client {
            held: Vec::new(),
            version: None,
        };
        let mut server = Vec::new();
        let mut pending = VecDeque::new();
        for i in 0..STEPS {
            if i > 0 {
                out.push(',');
            }
            let xml = match pending.pop_front() {
                Some(xml) => xml,
                None => body(&mut runner, &client, &mut server, &mut pending),
            };
            out.push_str("{\"xml\":");
            json_str(&mut out, &xml);
            out.push_str(",\"outcome\":");
            step(&mut out, &mut client, &xml);
            out.push('}');
        }
        out.push_str("]}");
    }
    out.push_str("]}\n");
    print!("{out}");
}
