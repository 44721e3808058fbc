//! Rendering: compact canonical XML, declaration first, no whitespace between elements.
//!
//! A document is its envelope (the declaration and the root element's start and end tags,
//! [`ConferenceList::envelope_len`]) around its entries, each rendered on its own
//! ([`entry_len`]); the root is never self-closing, so a document's length is exactly the sum.

use crate::NAMESPACE;
use crate::model::{
    Conference, ConferenceDescription, ConferenceList, DocumentState, Entry, MediaEntry, Organizer,
    Schedule, UriEntry,
};

const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;
const ROOT_END: &str = "</conference-list>";

/// Renders `list`, entries in the order of `list.entries`.
pub(crate) fn render(list: &ConferenceList) -> Vec<u8> {
    let mut w = Writer(String::from(DECLARATION));
    root_start(&mut w, list);
    for e in &list.entries {
        entry(&mut w, e);
    }
    w.0.push_str(ROOT_END);
    w.0.into_bytes()
}

/// The number of bytes `entry` adds to a rendered document (wherever it stands in it).
///
/// With [`ConferenceList::envelope_len`], exact: a document renders to
/// `envelope_len() + Σ entry_len(e)` bytes, so a notifier can split a state that is too
/// large for one NOTIFY without rendering it whole.
pub fn entry_len(e: &Entry) -> usize {
    let mut w = Writer::default();
    entry(&mut w, e);
    w.0.len()
}

/// [`entry_len`] of `Entry::Full(c)`, without owning `c`.
pub fn conference_len(c: &Conference) -> usize {
    let mut w = Writer::default();
    conference(&mut w, c);
    w.0.len()
}

/// The bytes of `list` rendered without its entries: declaration and root start and end tags.
pub(crate) fn envelope_len(list: &ConferenceList) -> usize {
    let mut w = Writer::default();
    root_start(&mut w, list);
    DECLARATION.len() + w.0.len() + ROOT_END.len()
}

/// `<conference-list …>`; `complete` is written only when false (absent means true).
fn root_start(w: &mut Writer, list: &ConferenceList) {
    let state = match list.state {
        DocumentState::Full => "full",
        DocumentState::Partial => "partial",
    };
    let version = list.version.to_string();
    let mut attrs = vec![
        ("xmlns", NAMESPACE),
        ("entity", list.entity.as_str()),
        ("version", version.as_str()),
        ("state", state),
    ];
    if !list.complete {
        attrs.push(("complete", "false"));
    }
    w.start_tag("conference-list", &attrs);
}

fn entry(w: &mut Writer, e: &Entry) {
    match e {
        Entry::Full(c) => conference(w, c),
        Entry::Deleted { entity, reason } => {
            let mut attrs = vec![("entity", entity.as_str()), ("state", "deleted")];
            if let Some(reason) = reason {
                attrs.push(("reason", reason.as_str()));
            }
            w.element("conference", &attrs, "");
        }
    }
}

fn conference(w: &mut Writer, c: &Conference) {
    let mut attrs = vec![("entity", c.entity.as_str()), ("state", "full")];
    if let Some(revision) = c.revision.as_deref().filter(|r| !r.is_empty()) {
        attrs.push(("revision", revision));
    }
    w.element_with("conference", &attrs, |body| {
        body.element_with("conference-description", &[], |b| {
            description(b, &c.description)
        });
        schedule(body, &c.schedule);
        body.opt_text("role", c.role.as_deref());
        body.opt_text("response", c.response.map(|r| r.as_str()));
        body.opt_text("status", c.status.map(|s| s.as_str()));
        if let Some(o) = &c.organizer {
            organizer(body, o);
        }
        body.opt_text(
            "passcode-required",
            c.passcode_required
                .map(|p| if p { "true" } else { "false" }),
        );
    });
}

/// `<schedule …/>` with its non-empty attributes; nothing when there are none.
fn schedule(w: &mut Writer, s: &Schedule) {
    let attrs: Vec<(&str, &str)> = [
        ("start", &s.start),
        ("end", &s.end),
        ("time-zone", &s.time_zone),
        ("recurrence", &s.recurrence),
    ]
    .into_iter()
    .filter_map(|(name, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (name, v)))
    .collect();
    if !attrs.is_empty() {
        w.element("schedule", &attrs, "");
    }
}

/// `<organizer>`; nothing when its URI is empty (it is required).
fn organizer(w: &mut Writer, o: &Organizer) {
    if o.uri.is_empty() {
        return;
    }
    w.element_with("organizer", &[], |b| {
        b.text("uri", &o.uri);
        b.opt_text("display-text", o.display_text.as_deref());
    });
}

fn description(w: &mut Writer, d: &ConferenceDescription) {
    w.opt_text("display-text", d.display_text.as_deref());
    w.opt_text("subject", d.subject.as_deref());
    w.opt_text("free-text", d.free_text.as_deref());
    if d.keywords.iter().any(|k| !k.is_empty()) {
        let keywords: Vec<&str> = d
            .keywords
            .iter()
            .map(String::as_str)
            .filter(|k| !k.is_empty())
            .collect();
        w.text("keywords", &keywords.join(" "));
    }
    w.element_with("conf-uris", &[], |b| uris(b, &d.conf_uris));
    w.element_with("service-uris", &[], |b| uris(b, &d.service_uris));
    if let Some(n) = d.maximum_user_count {
        w.text("maximum-user-count", &n.to_string());
    }
    w.element_with("available-media", &[], |b| media(b, &d.available_media));
}

fn uris(w: &mut Writer, entries: &[UriEntry]) {
    for e in entries {
        w.element_with("entry", &[], |b| {
            b.text("uri", &e.uri);
            b.opt_text("display-text", e.display_text.as_deref());
            b.opt_text("purpose", e.purpose.as_deref());
        });
    }
}

fn media(w: &mut Writer, entries: &[MediaEntry]) {
    for e in entries {
        w.element_with("entry", &[("label", &e.label)], |b| {
            b.opt_text("display-text", e.display_text.as_deref());
            b.text("type", &e.media_type);
        });
    }
}

/// A string being written; `body` arguments are already-rendered markup.
#[derive(Default)]
struct Writer(String);

impl Writer {
    /// `<name attrs>body</name>`, or `<name attrs/>` when `body` is empty. An element
    /// with neither attributes nor body is omitted (an optional container left empty).
    fn element(&mut self, name: &str, attrs: &[(&str, &str)], body: &str) {
        self.element_with(name, attrs, |w| w.0.push_str(body));
    }

    /// [`Writer::element`] whose body `f` writes in place (no intermediate string): the
    /// start tag is written first and turned into `<name attrs/>`, or taken back when
    /// there are no attributes either, if `f` wrote nothing.
    fn element_with(&mut self, name: &str, attrs: &[(&str, &str)], f: impl FnOnce(&mut Writer)) {
        let start = self.0.len();
        self.open(name, attrs);
        self.0.push('>');
        let body = self.0.len();
        f(self);
        if self.0.len() == body {
            if attrs.is_empty() {
                self.0.truncate(start);
            } else {
                self.0.truncate(body - 1);
                self.0.push_str("/>");
            }
        } else {
            self.0.push_str("</");
            self.0.push_str(name);
            self.0.push('>');
        }
    }

    /// `<name attrs>`: a start tag whose content and end tag the caller writes.
    fn start_tag(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.open(name, attrs);
        self.0.push('>');
    }

    /// `<name attrs`, unterminated.
    fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        self.0.push('<');
        self.0.push_str(name);
        for (key, value) in attrs {
            self.0.push(' ');
            self.0.push_str(key);
            self.0.push_str("=\"");
            escape(&mut self.0, value, true);
            self.0.push('"');
        }
    }

    /// `<name>text</name>`, written even when `text` is empty (required elements).
    fn text(&mut self, name: &str, text: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push('>');
        escape(&mut self.0, text, false);
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
    }

    /// `<name>text</name>` unless `text` is absent or empty.
    fn opt_text(&mut self, name: &str, text: Option<&str>) {
        if let Some(text) = text.filter(|t| !t.is_empty()) {
            self.text(name, text);
        }
    }
}

/// True for the characters XML 1.0 can carry (`Char` production; Rust has no surrogates).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `s` into `out`. Characters XML 1.0 cannot carry become U+FFFD. `\r`
/// (and in attributes `\t`, `\n`) become character references so that end-of-line
/// and attribute-value normalization give back exactly `s`.
fn escape(out: &mut String, s: &str, attr: bool) {
    // Most text is printable ASCII with nothing to escape: copy it whole.
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && !matches!(b, b'&' | b'<' | b'>' | b'"'))
    {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' if attr => out.push_str("&quot;"),
            '\r' => out.push_str("&#13;"),
            '\n' if attr => out.push_str("&#10;"),
            '\t' if attr => out.push_str("&#9;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Conference, DeleteReason, Schedule};

    #[test]
    fn escape_text_and_attributes() {
        let mut s = String::new();
        escape(&mut s, "a&<>\"'\r\n\t\u{0}😀", false);
        assert_eq!(s, "a&amp;&lt;&gt;\"'&#13;\n\t\u{FFFD}😀");
        let mut s = String::new();
        escape(&mut s, "a&<>\"'\r\n\t\u{1}\u{FFFE}", true);
        assert_eq!(s, "a&amp;&lt;&gt;&quot;'&#13;&#10;&#9;\u{FFFD}\u{FFFD}");
    }

    #[test]
    fn entries_render_in_list_order_so_render_is_a_fixed_point() {
        // Found by the document fuzz target when entries were sorted at render time:
        // "\u{0}" sorts before "sip:", the U+FFFD it is written as after.
        let deleted = |e: &str| Entry::Deleted {
            entity: e.into(),
            reason: None,
        };
        let list = ConferenceList {
            entity: "sip:a@x".into(),
            version: 1,
            state: DocumentState::Partial,
            entries: vec![deleted("sip:2@x"), deleted("\u{0}"), deleted("sip:1@x")],
            complete: true,
        };
        let once = ConferenceList::parse(&list.render()).unwrap();
        assert_eq!(once.render(), list.render());
        assert_eq!(
            once.entries,
            [deleted("sip:2@x"), deleted("\u{FFFD}"), deleted("sip:1@x")]
        );
    }

    #[test]
    fn empty_optionals_are_omitted() {
        let c = Conference {
            entity: "sip:1@x".into(),
            description: ConferenceDescription {
                subject: Some(String::new()),
                keywords: vec![String::new()],
                ..Default::default()
            },
            schedule: Schedule {
                start: Some(String::new()),
                end: None,
                time_zone: Some(String::new()),
                recurrence: Some(String::new()),
            },
            role: Some(String::new()),
            organizer: Some(Organizer {
                uri: String::new(),
                display_text: Some("Nobody".into()),
            }),
            revision: Some(String::new()),
            ..Default::default()
        };
        let xml = ConferenceList::full("sip:a@x", 1, vec![c]).render();
        assert_eq!(
            String::from_utf8(xml).unwrap(),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:a@x" version="1" state="full">"#,
                r#"<conference entity="sip:1@x" state="full"/>"#,
                r#"</conference-list>"#
            )
        );
    }

    #[test]
    fn empty_list_has_start_and_end_tags() {
        let mut list = ConferenceList::full("sip:a@x", 0, vec![]);
        list.complete = false;
        let xml = String::from_utf8(list.render()).unwrap();
        assert_eq!(
            xml,
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:a@x" version="0" state="full" complete="false">"#,
                r#"</conference-list>"#,
            )
        );
        assert_eq!(list.envelope_len(), xml.len());
    }

    #[test]
    fn entry_len_is_what_the_entry_adds() {
        let entries = [
            Entry::Deleted {
                entity: "sip:&\u{0}".into(),
                reason: Some(DeleteReason::OutOfWindow),
            },
            Entry::Full(Conference {
                entity: "sip:1@x".into(),
                role: Some("<é>".into()),
                ..Default::default()
            }),
        ];
        let mut list = ConferenceList::full("sip:a@x", 9, vec![]);
        let empty = list.render().len();
        list.entries = entries.to_vec();
        assert_eq!(
            list.render().len(),
            empty + entries.iter().map(entry_len).sum::<usize>()
        );
        assert_eq!(
            entry_len(&entries[0]),
            "<conference entity=\"sip:&amp;\u{FFFD}\" state=\"deleted\" reason=\"out-of-window\"/>"
                .len()
        );
    }
}
