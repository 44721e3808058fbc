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
    /// `<schedule start=".." end=".."/>`.
    pub schedule: Schedule,
    /// `<role>`: a free token such as `organizer`, `moderator`, `participant`.
    pub role: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule {
    /// The `start` attribute.
    pub start: Option<String>,
    /// The `end` attribute.
    pub end: Option<String>,
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
    },
}

impl Entry {
    /// The conference URI of the entry.
    pub fn entity(&self) -> &str {
        match self {
            Entry::Full(c) => &c.entity,
            Entry::Deleted { entity } => entity,
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
    /// The conferences, sorted by entity when built by [`ConferenceList::full`] or [`crate::diff`].
    pub entries: Vec<Entry>,
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
        }
    }

    /// Canonical XML bytes (UTF-8).
    pub fn render(&self) -> Vec<u8> {
        crate::render::render(self)
    }

    /// Parses a document (namespace-aware). Unknown elements are ignored (forward compatibility).
    pub fn parse(xml: &[u8]) -> Result<ConferenceList, DocumentError> {
        crate::parse::parse(xml)
    }
}
