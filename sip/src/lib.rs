//! Sans-IO SIP message codec (RFC 3261) for the conflist proxy: parse, print, typed headers,
//! stream framing and request validation.
//!
//! # Architecture Invariant
//!
//! This crate has no tokio, no sockets, no clocks and no randomness: every function is a pure
//! transformation of bytes and values, so it can be tested and fuzzed in isolation. Callers own
//! all I/O, timers and tag/branch generation. Bad input is always an error value, never a panic.
//!
//! # Layout
//!
//! * [`message`] — [`Message`], [`Request`], [`Response`], [`Method`], [`StatusCode`],
//!   [`Headers`], [`HeaderName`] (RFC 3261 §7).
//! * [`parse`] — [`parse_message`] for one whole datagram / WebSocket frame (RFC 3261 §7, §18.3).
//! * [`print`](mod@print) — `to_bytes` for requests and responses; Content-Length is always recomputed.
//! * [`framing`] — stream (TCP/TLS) framing and RFC 5626 keep-alives.
//! * [`uri`] — [`Uri`]: SIP/SIPS URIs parsed, other schemes kept opaque (RFC 3261 §19.1).
//! * [`params`] — [`Params`], ordered `;name=value` lists.
//! * [`name_addr`] — [`NameAddr`] for From, To, Contact, Route, Record-Route (RFC 3261 §20.10).
//! * [`header`] — typed headers: [`Via`], [`CSeq`], [`Event`], [`SubscriptionState`],
//!   [`MediaRange`] (Accept), [`Contact`], [`Credentials`] (Authorization) and
//!   [`DigestChallenge`] (WWW-Authenticate), delta-seconds helpers (Expires, Min-Expires,
//!   Max-Forwards).
//! * [`validate`] — [`check_request`]: the RFC 3261 §8.2 / §16.3 sanity checks before acting.
//! * `error` — [`ParseError`], whose `Display` is a client-safe 400 reason phrase.

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod error;
pub mod framing;
pub mod header;
mod headers;
mod lex;
pub mod message;
pub mod name_addr;
pub mod params;
pub mod parse;
pub mod print;
mod status;
pub mod uri;
pub mod validate;

pub use error::ParseError;
pub use header::accept::{MediaRange, parse_accept};
pub use header::authorization::{Credentials, DigestChallenge, DigestResponse};
pub use header::contact::{Contact, parse_contacts};
pub use header::cseq::CSeq;
pub use header::event::Event;
pub use header::expires::{expires, max_forwards, min_expires, parse_delta_seconds};
pub use header::subscription_state::SubscriptionState;
pub use header::via::Via;
pub use message::{HeaderName, Headers, Message, Method, Request, Response, StatusCode};
pub use name_addr::NameAddr;
pub use params::Params;
pub use parse::{MAX_HEADERS, parse_message};
pub use uri::Uri;
pub use validate::{ValidationError, check_request};
