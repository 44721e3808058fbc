//! The data model of the document.

use std::collections::BTreeMap;

use crate::DocumentError;

/// One conference the subscriber belongs to (`<conference state="full">`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conference {
    /// The conference URI (`entity` attribute); the key of the conference.
    pub entity: String,
    /// `<conference-description>`.
    pub description: ConferenceDescription,
    /// `<schedule start=".." end=".." time-zone=".." recurrence=".."/>`.
    pub schedule: Schedule,
    /// `<role>`: a free token such as `organizer`, `moderator`, `participant`.
    pub role: Option<String>,
    /// `<response>`: the subscriber's answer to the invitation, beside the role.
    pub response: Option<Response>,
    /// `<status>`: the meeting's coarse state.
    pub status: Option<Status>,
    /// `<organizer>`: who organises the meeting.
    pub organizer: Option<Organizer>,
    /// `<passcode-required>`: whether joining needs a passcode (never the passcode itself).
    pub passcode_required: Option<bool>,
    /// The `revision` attribute: the conference's revision or last-modified time, as the
    /// database gives it (opaque; it changes whenever the conference does).
    pub revision: Option<String>,
}

/// `<status>` of a conference: a coarse state that changes a few times per meeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// `scheduled`: not started yet.
    Scheduled,
    /// `active`: taking place now.
    Active,
    /// `ended`: over.
    Ended,
    /// `cancelled`: will not take place.
    Cancelled,
}

impl Status {
    /// Every status, in document order.
    pub const ALL: [Status; 4] = [
        Status::Scheduled,
        Status::Active,
        Status::Ended,
        Status::Cancelled,
    ];

    /// The token in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Active => "active",
            Status::Ended => "ended",
            Status::Cancelled => "cancelled",
        }
    }

    /// The status a token names (ASCII case-insensitive), if any.
    pub fn from_token(token: &str) -> Option<Status> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str().eq_ignore_ascii_case(token.trim()))
    }
}

/// `<response>`: the subscriber's answer to the invitation (RFC 5545 PARTSTAT values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// `needs-action`: not answered.
    NeedsAction,
    /// `accepted`.
    Accepted,
    /// `declined`.
    Declined,
    /// `tentative`.
    Tentative,
}

impl Response {
    /// Every response, in document order.
    pub const ALL: [Response; 4] = [
        Response::NeedsAction,
        Response::Accepted,
        Response::Declined,
        Response::Tentative,
    ];

    /// The token in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            Response::NeedsAction => "needs-action",
            Response::Accepted => "accepted",
            Response::Declined => "declined",
            Response::Tentative => "tentative",
        }
    }

    /// The response a token names (ASCII case-insensitive; `_` taken as `-`), if any.
    pub fn from_token(token: &str) -> Option<Response> {
        let token = token.trim().replace('_', "-");
        Response::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(&token))
    }
}

/// `<organizer>`: `<uri>` and an optional `<display-text>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Organizer {
    /// `<uri>`.
    pub uri: String,
    /// `<display-text>`.
    pub display_text: Option<String>,
}

/// The `reason` attribute of a `state="deleted"` conference: why it left the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeleteReason {
    /// `removed`: the subscriber is no longer a member, or the conference is gone.
    Removed,
    /// `cancelled`: the meeting was cancelled (and the server hides cancelled meetings).
    Cancelled,
    /// `out-of-window`: it left the time window or count the subscriber asked for.
    OutOfWindow,
}

impl DeleteReason {
    /// Every reason, in document order.
    pub const ALL: [DeleteReason; 3] = [
        DeleteReason::Removed,
        DeleteReason::Cancelled,
        DeleteReason::OutOfWindow,
    ];

    /// The token in the document.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Removed => "removed",
            DeleteReason::Cancelled => "cancelled",
            DeleteReason::OutOfWindow => "out-of-window",
        }
    }

    /// The reason a token names, if any.
    pub fn from_token(token: &str) -> Option<DeleteReason> {
        DeleteReason::ALL
            .into_iter()
            .find(|r| r.as_str() == token.trim())
    }
}

/// `<conference-description>` (RFC 4575 element names).
///
/// `None`, empty strings and empty lists are all rendered as absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConferenceDescription {
    /// `<display-text>`.
    pub display_text: Option<String>,
    /// `<subject>`.
    pub subject: Option<String>,
    /// `<free-text>`.
    pub free_text: Option<String>,
    /// `<keywords>`: whitespace-separated tokens (a keyword holding
    /// whitespace comes back split, an empty one is dropped).
    pub keywords: Vec<String>,
    /// `<conf-uris>`: the URIs to join the conference.
    pub conf_uris: Vec<UriEntry>,
    /// `<service-uris>`: auxiliary URIs (web page, recording…).
    pub service_uris: Vec<UriEntry>,
    /// `<maximum-user-count>`.
    pub maximum_user_count: Option<u32>,
    /// `<available-media>`.
    pub available_media: Vec<MediaEntry>,
}

/// An `<entry>` of `<conf-uris>` or `<service-uris>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UriEntry {
    /// `<uri>`.
    pub uri: String,
    /// `<display-text>`.
    pub display_text: Option<String>,
    /// `<purpose>`, e.g. `participation`, `web-page`.
    pub purpose: Option<String>,
}

/// An `<entry label="..">` of `<available-media>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaEntry {
    /// The `label` attribute.
    pub label: String,
    /// `<type>`, e.g. `audio`, `video`.
    pub media_type: String,
    /// `<display-text>`.
    pub display_text: Option<String>,
}

/// `<schedule>`: `xs:dateTime` texts such as `2026-11-24T09:00:00Z`, kept as given.
///
/// For a recurring meeting `start` and `end` are those of the next occurrence (the one
/// taking place now, or else the next to begin), computed by the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    /// The `start` attribute.
    pub start: Option<String>,
    /// The `end` attribute.
    pub end: Option<String>,
    /// The `time-zone` attribute: the meeting's IANA time zone (`Europe/Berlin`), in which
    /// its recurrence is evaluated and its organiser sees its times.
    pub time_zone: Option<String>,
    /// The `recurrence` attribute: the RFC 5545 `RRULE` value (`FREQ=WEEKLY;BYDAY=MO`)
    /// when the meeting recurs.
    pub recurrence: Option<String>,
}

/// The `state` attribute of `<conference-list>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentState {
    /// The document holds every conference of the subscriber.
    Full,
    /// The document holds only added, changed and deleted conferences.
    Partial,
}

/// One `<conference>` of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "the agreed API matches Entry::Full(Conference) by value; entries are few"
)]
pub enum Entry {
    /// `state="full"`: the whole conference, replacing what the client had.
    Full(Conference),
    /// `state="deleted"`: an empty element; the client drops the conference.
    Deleted {
        /// The conference URI.
        entity: String,
        /// Why it left the list (the `reason` attribute), when known.
        reason: Option<DeleteReason>,
    },
}

impl Entry {
    /// The conference URI of the entry.
    pub fn entity(&self) -> &str {
        match self {
            Entry::Full(c) => &c.entity,
            Entry::Deleted { entity, .. } => entity,
        }
    }
}

/// A whole `<conference-list>` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceList {
    /// The subscriber URI (`entity` attribute).
    pub entity: String,
    /// The document version; each NOTIFY of a subscription increments it.
    pub version: u64,
    /// Full or partial.
    pub state: DocumentState,
    /// The conferences, sorted by entity when built by [`ConferenceList::full`] or
    /// [`crate::diff`]; rendered in this order (a notifier puts the nearest first).
    pub entries: Vec<Entry>,
    /// False when this document leaves the state incomplete and the next Notification
    /// continues it (`complete="false"` on the root; absent means true): a state too large
    /// for one NOTIFY goes out as a `full` document with `complete="false"`, followed by
    /// `partial` documents at consecutive versions that add to it, the last of which has
    /// no `complete` attribute. [`crate::apply`] needs nothing special for this (the full
    /// document replaces, the partials add); a client shows the list as still loading
    /// while the document it applied last is not complete.
    pub complete: bool,
}

impl ConferenceList {
    /// A full document of `conferences` (sorted by entity inside; duplicates by entity: keep the last).
    pub fn full(
        entity: impl Into<String>,
        version: u64,
        conferences: Vec<Conference>,
    ) -> ConferenceList {
        let by_entity: BTreeMap<String, Conference> = conferences
            .into_iter()
            .map(|c| (c.entity.clone(), c))
            .collect();
        ConferenceList {
            entity: entity.into(),
            version,
            state: DocumentState::Full,
            entries: by_entity.into_values().map(Entry::Full).collect(),
            complete: true,
        }
    }

    /// Canonical XML bytes (UTF-8), entries in the order of [`ConferenceList::entries`].
    pub fn render(&self) -> Vec<u8> {
        crate::render::render(self)
    }

    /// The bytes of this document rendered without its entries: the declaration and the
    /// root element's start and end tags (with `complete` as currently set). Exact:
    /// `self.render().len() == self.envelope_len() + self.entries.iter().map(entry_len).sum()`
    /// (see [`crate::entry_len`]).
    pub fn envelope_len(&self) -> usize {
        crate::render::envelope_len(self)
    }

    /// Parses a document (namespace-aware). Unknown elements are ignored (forward compatibility).
    pub fn parse(xml: &[u8]) -> Result<ConferenceList, DocumentError> {
        crate::parse::parse(xml)
    }
}
