//! Rendering: compact canonical XML, declaration first, no whitespace between elements.

use crate::NAMESPACE;
use crate::model::{
    Conference, ConferenceDescription, ConferenceList, DocumentState, Entry, MediaEntry, UriEntry,
};

/// Renders `list`; entries are written sorted by entity as written (stable), so that a
/// parsed document renders to the same bytes again even when an entity held characters
/// XML cannot carry (they are written as U+FFFD, and sorted as such).
pub(crate) fn render(list: &ConferenceList) -> Vec<u8> {
    let mut w = Writer::default();
    w.0.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let state = match list.state {
        DocumentState::Full => "full",
        DocumentState::Partial => "partial",
    };
    let version = list.version.to_string();
    let mut entries: Vec<&Entry> = list.entries.iter().collect();
    entries.sort_by_cached_key(|e| as_written(e.entity()));
    let mut body = Writer::default();
    for entry in entries {
        match entry {
            Entry::Full(c) => conference(&mut body, c),
            Entry::Deleted { entity, .. } => {
                body.element(
                    "conference",
                    &[("entity", entity), ("state", "deleted")],
                    "",
                );
            }
        }
    }
    let attrs = [
        ("xmlns", NAMESPACE),
        ("entity", list.entity.as_str()),
        ("version", version.as_str()),
        ("state", state),
    ];
    w.element("conference-list", &attrs, &body.0);
    w.0.into_bytes()
}

fn conference(w: &mut Writer, c: &Conference) {
    let mut body = Writer::default();
    body.element("conference-description", &[], &description(&c.description));
    let times: Vec<(&str, &str)> = [("start", &c.schedule.start), ("end", &c.schedule.end)]
        .into_iter()
        .filter_map(|(name, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (name, v)))
        .collect();
    if !times.is_empty() {
        body.element("schedule", &times, "");
    }
    body.opt_text("role", c.role.as_deref());
    w.element(
        "conference",
        &[("entity", &c.entity), ("state", "full")],
        &body.0,
    );
}

fn description(d: &ConferenceDescription) -> String {
    let mut w = Writer::default();
    w.opt_text("display-text", d.display_text.as_deref());
    w.opt_text("subject", d.subject.as_deref());
    w.opt_text("free-text", d.free_text.as_deref());
    let keywords: Vec<&str> = d
        .keywords
        .iter()
        .map(String::as_str)
        .filter(|k| !k.is_empty())
        .collect();
    w.opt_text("keywords", Some(&keywords.join(" ")));
    w.element("conf-uris", &[], &uris(&d.conf_uris));
    w.element("service-uris", &[], &uris(&d.service_uris));
    if let Some(n) = d.maximum_user_count {
        w.text("maximum-user-count", &n.to_string());
    }
    w.element("available-media", &[], &media(&d.available_media));
    w.0
}

fn uris(entries: &[UriEntry]) -> String {
    let mut w = Writer::default();
    for e in entries {
        let mut body = Writer::default();
        body.text("uri", &e.uri);
        body.opt_text("display-text", e.display_text.as_deref());
        body.opt_text("purpose", e.purpose.as_deref());
        w.element("entry", &[], &body.0);
    }
    w.0
}

fn media(entries: &[MediaEntry]) -> String {
    let mut w = Writer::default();
    for e in entries {
        let mut body = Writer::default();
        body.opt_text("display-text", e.display_text.as_deref());
        body.text("type", &e.media_type);
        w.element("entry", &[("label", &e.label)], &body.0);
    }
    w.0
}

/// A string being written; `body` arguments are already-rendered markup.
#[derive(Default)]
struct Writer(String);

impl Writer {
    /// `<name attrs>body</name>`, or `<name attrs/>` when `body` is empty. An element
    /// with neither attributes nor body is omitted (an optional container left empty).
    fn element(&mut self, name: &str, attrs: &[(&str, &str)], body: &str) {
        if attrs.is_empty() && body.is_empty() {
            return;
        }
        self.0.push('<');
        self.0.push_str(name);
        for (key, value) in attrs {
            self.0.push(' ');
            self.0.push_str(key);
            self.0.push_str("=\"");
            escape(&mut self.0, value, true);
            self.0.push('"');
        }
        if body.is_empty() {
            self.0.push_str("/>");
        } else {
            self.0.push('>');
            self.0.push_str(body);
            self.0.push_str("</");
            self.0.push_str(name);
            self.0.push('>');
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

/// `s` with the characters XML 1.0 cannot carry replaced as [`escape`] replaces them.
fn as_written(s: &str) -> String {
    s.chars()
        .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
        .collect()
}

/// True for the characters XML 1.0 can carry (`Char` production; Rust has no surrogates).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Escapes `s` into `out`. Characters XML 1.0 cannot carry become U+FFFD. `\r`
/// (and in attributes `\t`, `\n`) become character references so that end-of-line
/// and attribute-value normalization give back exactly `s`.
fn escape(out: &mut String, s: &str, attr: bool) {
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
    use crate::model::{Conference, Schedule};

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
    fn entries_sort_as_written_so_render_is_a_fixed_point() {
        // Found by the document fuzz target: "\u{0}" sorts before "sip:", U+FFFD after.
        let deleted = |e: &str| Entry::Deleted { entity: e.into() };
        let list = ConferenceList {
            entity: "sip:a@x".into(),
            version: 1,
            state: DocumentState::Partial,
            entries: vec![deleted("sip:1@x"), deleted("\u{0}")],
        };
        let once = ConferenceList::parse(&list.render()).unwrap();
        assert_eq!(once.render(), list.render());
        assert_eq!(once.entries[1], deleted("\u{FFFD}"));
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
            },
            role: Some(String::new()),
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
    fn empty_list_is_self_closing() {
        let xml = ConferenceList::full("sip:a@x", 0, vec![]).render();
        assert_eq!(
            String::from_utf8(xml).unwrap(),
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<conference-list xmlns="urn:conflist:params:xml:ns:conference-list" entity="sip:a@x" version="0" state="full"/>"#,
            )
        );
    }
}
