//! Parsing: namespace-aware, lenient about unknown elements and whitespace between elements.

use std::borrow::Cow;

use quick_xml::NsReader;
use quick_xml::XmlVersion;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{Namespace, ResolveResult};

use crate::model::{
    Conference, ConferenceDescription, ConferenceList, DeleteReason, DocumentState, Entry,
    MediaEntry, Organizer, Response, Schedule, Status, UriEntry,
};
use crate::{DocumentError, NAMESPACE};

pub(crate) fn parse(xml: &[u8]) -> Result<ConferenceList, DocumentError> {
    let text =
        std::str::from_utf8(xml).map_err(|e| DocumentError::Xml(format!("not UTF-8: {e}")))?;
    let mut p = Parser::new(text);
    let root = loop {
        match p.next()? {
            Node::Open(e, ours) => break Element { start: e, ours },
            Node::Text(t) if t.trim().is_empty() => {}
            Node::Text(_) => return Err(xml_error("text before the root element")),
            Node::Close | Node::Eof => return Err(xml_error("no root element")),
        }
    };
    if !root.is("conference-list") {
        return Err(DocumentError::WrongRoot);
    }
    let entity = required(&root.start, "entity")?;
    let version = required(&root.start, "version")?;
    let version = parse_u64(&version).ok_or(DocumentError::BadAttribute("version"))?;
    let state = match required(&root.start, "state")?.as_str() {
        "full" => DocumentState::Full,
        "partial" => DocumentState::Partial,
        _ => return Err(DocumentError::BadAttribute("state")),
    };
    let complete = match optional(&root.start, "complete")? {
        None => true,
        Some(v) => parse_bool(&v).ok_or(DocumentError::BadAttribute("complete"))?,
    };
    let mut entries = Vec::new();
    p.children(|p, e| {
        if e.is("conference") {
            entries.push(conference(p, &e.start, state)?);
        } else {
            p.skip()?;
        }
        Ok(())
    })?;
    loop {
        match p.next()? {
            Node::Eof => break,
            Node::Text(t) if t.trim().is_empty() => {}
            _ => return Err(xml_error("content after the root element")),
        }
    }
    Ok(ConferenceList {
        entity,
        version,
        state,
        entries,
        complete,
    })
}

fn conference(
    p: &mut Parser<'_>,
    start: &BytesStart<'_>,
    doc: DocumentState,
) -> Result<Entry, DocumentError> {
    let entity = required(start, "entity")?;
    match required(start, "state")?.as_str() {
        "full" => {}
        "deleted" if doc == DocumentState::Full => {
            return Err(DocumentError::DeletedInFull(entity));
        }
        "deleted" => {
            let reason = optional(start, "reason")?.and_then(|r| DeleteReason::from_token(&r));
            p.skip()?;
            return Ok(Entry::Deleted { entity, reason });
        }
        _ => return Err(DocumentError::BadAttribute("state")),
    }
    let mut c = Conference {
        entity,
        revision: optional(start, "revision")?.and_then(non_empty),
        ..Conference::default()
    };
    p.children(|p, e| {
        if e.is("conference-description") {
            c.description = description(p)?;
        } else if e.is("schedule") {
            let attr = |name| Ok(optional(&e.start, name)?.and_then(non_empty));
            c.schedule = Schedule {
                start: attr("start")?,
                end: attr("end")?,
                time_zone: attr("time-zone")?,
                recurrence: attr("recurrence")?,
            };
            p.skip()?;
        } else if e.is("role") {
            c.role = non_empty(p.text()?);
        } else if e.is("response") {
            c.response = Response::from_token(&p.text()?);
        } else if e.is("status") {
            c.status = Status::from_token(&p.text()?);
        } else if e.is("organizer") {
            c.organizer = organizer(p)?;
        } else if e.is("passcode-required") {
            let v = parse_bool(&p.text()?).ok_or(DocumentError::BadElement("passcode-required"))?;
            c.passcode_required = Some(v);
        } else {
            p.skip()?;
        }
        Ok(())
    })?;
    Ok(Entry::Full(c))
}

/// `<organizer>`: `<uri>` is required; an empty one makes the organizer absent.
fn organizer(p: &mut Parser<'_>) -> Result<Option<Organizer>, DocumentError> {
    let mut uri = None;
    let mut display_text = None;
    p.children(|p, e| {
        match e.local() {
            Some("uri") => uri = Some(p.text()?),
            Some("display-text") => display_text = non_empty(p.text()?),
            _ => p.skip()?,
        }
        Ok(())
    })?;
    let uri = uri.ok_or(DocumentError::MissingElement("uri"))?;
    Ok((!uri.is_empty()).then_some(Organizer { uri, display_text }))
}

fn description(p: &mut Parser<'_>) -> Result<ConferenceDescription, DocumentError> {
    let mut d = ConferenceDescription::default();
    p.children(|p, e| {
        match e.local() {
            Some("display-text") => d.display_text = non_empty(p.text()?),
            Some("subject") => d.subject = non_empty(p.text()?),
            Some("free-text") => d.free_text = non_empty(p.text()?),
            Some("keywords") => {
                d.keywords = p.text()?.split_whitespace().map(str::to_owned).collect()
            }
            Some("conf-uris") => d.conf_uris = uris(p)?,
            Some("service-uris") => d.service_uris = uris(p)?,
            Some("maximum-user-count") => {
                let n = p
                    .text()?
                    .trim()
                    .parse()
                    .map_err(|_| DocumentError::BadElement("maximum-user-count"))?;
                d.maximum_user_count = Some(n);
            }
            Some("available-media") => d.available_media = media(p)?,
            _ => p.skip()?,
        }
        Ok(())
    })?;
    Ok(d)
}

fn uris(p: &mut Parser<'_>) -> Result<Vec<UriEntry>, DocumentError> {
    let mut entries = Vec::new();
    p.children(|p, e| {
        if !e.is("entry") {
            return p.skip();
        }
        let mut uri = None;
        let mut entry = UriEntry::default();
        p.children(|p, e| {
            match e.local() {
                Some("uri") => uri = Some(p.text()?),
                Some("display-text") => entry.display_text = non_empty(p.text()?),
                Some("purpose") => entry.purpose = non_empty(p.text()?),
                _ => p.skip()?,
            }
            Ok(())
        })?;
        entry.uri = uri.ok_or(DocumentError::MissingElement("uri"))?;
        entries.push(entry);
        Ok(())
    })?;
    Ok(entries)
}

fn media(p: &mut Parser<'_>) -> Result<Vec<MediaEntry>, DocumentError> {
    let mut entries = Vec::new();
    p.children(|p, e| {
        if !e.is("entry") {
            return p.skip();
        }
        let label = required(&e.start, "label")?;
        let mut media_type = None;
        let mut display_text = None;
        p.children(|p, e| {
            match e.local() {
                Some("type") => media_type = Some(p.text()?),
                Some("display-text") => display_text = non_empty(p.text()?),
                _ => p.skip()?,
            }
            Ok(())
        })?;
        let media_type = media_type.ok_or(DocumentError::MissingElement("type"))?;
        entries.push(MediaEntry {
            label,
            media_type,
            display_text,
        });
        Ok(())
    })?;
    Ok(entries)
}

fn xml_error(msg: impl std::fmt::Display) -> DocumentError {
    DocumentError::Xml(msg.to_string())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// `xs:unsignedLong`: digits only (after whitespace collapsing), no sign.
fn parse_u64(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `xs:boolean`: `true`, `false`, `1` or `0`, after whitespace collapsing.
fn parse_bool(s: &str) -> Option<bool> {
    match s.trim_matches([' ', '\t', '\r', '\n']) {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// The value of the unprefixed attribute `name`, unescaped and normalized.
fn optional(start: &BytesStart<'_>, name: &str) -> Result<Option<String>, DocumentError> {
    for attr in start.attributes() {
        let attr = attr.map_err(xml_error)?;
        if attr.key.as_ref() == name {
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(xml_error)?;
            return Ok(Some(value.into_owned()));
        }
    }
    Ok(None)
}

fn required(start: &BytesStart<'_>, name: &'static str) -> Result<String, DocumentError> {
    optional(start, name)?.ok_or(DocumentError::MissingAttribute(name))
}

/// An opened element and whether it is in [`NAMESPACE`].
struct Element<'a> {
    start: BytesStart<'a>,
    ours: bool,
}

impl Element<'_> {
    /// The local name, for an element of our namespace.
    fn local(&self) -> Option<&str> {
        self.ours.then(|| self.start.local_name().into_inner())
    }

    fn is(&self, name: &str) -> bool {
        self.local() == Some(name)
    }
}

/// What the parser works with: comments, PIs, declarations are dropped,
/// text, CDATA and references come as text.
enum Node<'a> {
    Open(BytesStart<'a>, bool),
    Close,
    Text(Cow<'a, str>),
    Eof,
}

struct Parser<'a> {
    reader: NsReader<&'a [u8]>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        let mut reader = NsReader::from_str(text);
        reader.config_mut().expand_empty_elements = true;
        Parser { reader }
    }

    fn next(&mut self) -> Result<Node<'a>, DocumentError> {
        loop {
            let (ns, event) = self.reader.read_resolved_event().map_err(xml_error)?;
            return Ok(match event {
                Event::Start(e) => {
                    let ours = matches!(ns, ResolveResult::Bound(Namespace(n)) if n == NAMESPACE);
                    Node::Open(e, ours)
                }
                Event::End(_) => Node::Close,
                Event::Text(t) => Node::Text(t.xml10_content()),
                Event::CData(t) => Node::Text(t.xml10_content()),
                Event::GeneralRef(r) => {
                    if let Some(c) = r.resolve_char_ref().map_err(xml_error)? {
                        Node::Text(Cow::Owned(c.to_string()))
                    } else if let Some(s) = resolve_predefined_entity(&r) {
                        Node::Text(Cow::Borrowed(s))
                    } else {
                        return Err(xml_error(format_args!("unknown entity &{};", &*r)));
                    }
                }
                Event::Empty(_) => return Err(xml_error("unexpected empty element event")),
                Event::Eof => Node::Eof,
                Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => continue,
            });
        }
    }

    /// Calls `f` for each child element of the element just opened, up to its end;
    /// `f` must consume the child (parse it or [`Parser::skip`] it). Text is ignored.
    fn children(
        &mut self,
        mut f: impl FnMut(&mut Self, Element<'a>) -> Result<(), DocumentError>,
    ) -> Result<(), DocumentError> {
        loop {
            match self.next()? {
                Node::Open(start, ours) => f(self, Element { start, ours })?,
                Node::Text(_) => {}
                Node::Close => return Ok(()),
                Node::Eof => return Err(xml_error("unexpected end of document")),
            }
        }
    }

    /// The text of the element just opened, up to its end; child elements are skipped.
    fn text(&mut self) -> Result<String, DocumentError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Node::Open(..) => self.skip()?,
                Node::Text(t) => text.push_str(&t),
                Node::Close => return Ok(text),
                Node::Eof => return Err(xml_error("unexpected end of document")),
            }
        }
    }

    /// Skips the rest of the element just opened.
    fn skip(&mut self) -> Result<(), DocumentError> {
        self.children(|p, _| p.skip())
    }
}
