//! The `application/conference-list+xml` document of the SIP conference-list
//! subscription service: the list of conferences a subscriber belongs to.
//!
//! This crate is sans-IO: it models the document, renders it to canonical XML
//! bytes, parses such bytes back, computes the partial document between two
//! conference sets ([`diff`]) and applies a document to the set a client
//! holds ([`apply`]). It does no I/O, reads no clock and keeps no state; SIP,
//! subscriptions, storage and timers live in other crates.
//!
//! The element names of `<conference-description>` and the
//! `version` / `state="full|partial|deleted"` model follow RFC 4575.
//!
//! Text that XML 1.0 cannot carry (control characters such as U+0000, and
//! U+FFFE / U+FFFF) is replaced with U+FFFD at render time, so a rendered
//! document is always well-formed. Empty optional strings are rendered as
//! absent and parse back as `None`. Tokens this version does not know in
//! `<status>`, `<response>` and a deleted conference's `reason` parse as `None`,
//! so that a newer server may add some.
//!
//! Layout:
//! - `model`: the data types ([`ConferenceList`], [`Conference`], [`Entry`], …).
//! - `render`: [`ConferenceList::render`], compact canonical XML, entries in list order;
//!   [`entry_len`] and [`ConferenceList::envelope_len`], its exact size, to split a state.
//! - `parse`: [`ConferenceList::parse`], namespace-aware, forward compatible.
//! - `diff`: [`diff`], [`apply`] and [`prefer_full`].
//! - `conference-list.xsd` (crate directory): the XML Schema, as [`XSD`].

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod diff;
mod model;
mod parse;
mod render;

pub use diff::{apply, diff, prefer_full};
pub use model::{
    Conference, ConferenceDescription, ConferenceList, DeleteReason, DocumentState, Entry,
    MediaEntry, Organizer, Response, Schedule, Status, UriEntry,
};
pub use render::{conference_len, entry_len};

/// The MIME type of the document, for `Content-Type` and `Accept`.
pub const CONTENT_TYPE: &str = "application/conference-list+xml";

/// The XML namespace of every element of the document.
pub const NAMESPACE: &str = "urn:conflist:params:xml:ns:conference-list";

/// The XML Schema of the document (`document/conference-list.xsd`).
pub const XSD: &str = include_str!("../conference-list.xsd");

/// Why a document could not be parsed or applied.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DocumentError {
    /// The bytes are not well-formed UTF-8 XML.
    #[error("malformed XML: {0}")]
    Xml(String),
    /// The root element is not `<conference-list>` in [`NAMESPACE`].
    #[error("root element is not <conference-list> in namespace {NAMESPACE}")]
    WrongRoot,
    /// A required attribute is missing.
    #[error("missing attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute has a value outside its type.
    #[error("invalid value of attribute `{0}`")]
    BadAttribute(&'static str),
    /// A required child element is missing.
    #[error("missing element <{0}>")]
    MissingElement(&'static str),
    /// An element has content outside its type.
    #[error("invalid content of element <{0}>")]
    BadElement(&'static str),
    /// A `state="full"` document holds a `state="deleted"` conference.
    #[error("conference {0} is deleted inside a full document")]
    DeletedInFull(String),
    /// A partial document does not follow the version the client holds.
    #[error("version gap: expected {expected}, got {got}")]
    VersionGap {
        /// The version the client can apply (held + 1).
        expected: u64,
        /// The version of the document.
        got: u64,
    },
}
