//! The status map: the one place that picks the SIP status, reason phrase and extra
//! headers of every response the proxy sends, and the label it is counted under in
//! `conflist_proxy_responses_total`. Everything else says *why* ([`Reply`]); this module
//! says *what that is in SIP*.

use super::{ALLOW, CONTENT_TYPE, EVENT_PACKAGE};
use crate::notifier::{Challenge, Verdict};
use sip::{HeaderName, Headers, NameAddr, Request, Response, StatusCode};

/// Default `Retry-After` of a 503 for a notifier that named none.
const DEFAULT_RETRY_AFTER: u32 = 5;

/// Why a request was refused before it reached the notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The codec or the RFC 3261 §8.2 checks refused it; the text says why.
    Malformed(String),
    /// A header the request needs is missing or does not parse: `Missing Event`, `Bad From`…
    BadHeader(&'static str),
    /// An Event parameter (`past`, `ahead`, `max`) out of range.
    BadEventParameter(&'static str),
    /// The digest `uri` names another resource than the Request-URI (RFC 2617 §3.2.2.5).
    DigestUriMismatch,
    /// Another SIP version (RFC 3261 §8.2.1).
    VersionNotSupported,
    /// Not a `sip:`/`sips:` Request-URI, or one without a user.
    UnsupportedUriScheme,
    /// `Max-Forwards: 0` (RFC 3261 §16.3, answered as a UAS).
    TooManyHops,
    /// `Require` names extensions we do not support (listed in `Unsupported`).
    BadExtension(String),
    /// Another event package (RFC 6665 §4.2.1.2).
    BadEvent,
    /// `Accept` excludes our body type.
    NotAcceptable,
    /// No dialog matches an in-dialog request.
    NoSuchDialog,
    /// A method this element does not serve (in or out of a dialog).
    MethodNotAllowed,
    /// An in-dialog CSeq not above the last one (RFC 3261 §12.2.2).
    CSeqOutOfOrder,
    /// A refresh while the dialog's earlier requests still wait for the notifier.
    RequestPending,
    /// The Record-Route set is over `--max-route-set-size`.
    RouteSetTooLarge,
    /// `--max-dialogs-per-connection` reached.
    TooManyDialogs,
    /// The client address is over `--max-subscribes-per-address`.
    RateLimited,
    /// The notifier's session went away before it answered.
    UpstreamLost,
}

/// Why the proxy sends a response: every response it makes is one of these.
#[derive(Debug, Clone, Copy)]
pub enum Reply<'a> {
    /// 200 to OPTIONS (what this element can do).
    Capabilities,
    /// 200 to a SUBSCRIBE the notifier granted.
    Granted {
        /// Granted duration.
        expires: u32,
        /// Our Contact.
        contact: &'a str,
    },
    /// The notifier's refusal.
    Refused(&'a Verdict),
    /// Refused by the proxy itself.
    Rejected(&'a Rejection),
}

impl Reply<'_> {
    /// Status and reason phrase (`None` = the status's standard phrase).
    pub fn status(&self) -> (StatusCode, Option<&str>) {
        match self {
            Reply::Capabilities | Reply::Granted { .. } => (StatusCode::OK, None),
            Reply::Refused(v) => (
                match v {
                    Verdict::Ok { .. } => StatusCode::OK,
                    Verdict::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                    Verdict::Forbidden => StatusCode::FORBIDDEN,
                    Verdict::NotFound => StatusCode::NOT_FOUND,
                    Verdict::IntervalTooBrief { .. } => StatusCode::INTERVAL_TOO_BRIEF,
                    Verdict::BadEvent => StatusCode::BAD_EVENT,
                    Verdict::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
                    Verdict::NoSuchSubscription => StatusCode::CALL_DOES_NOT_EXIST,
                    Verdict::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    Verdict::Internal => StatusCode::SERVER_INTERNAL_ERROR,
                },
                None,
            ),
            Reply::Rejected(r) => match r {
                Rejection::Malformed(why) => (StatusCode::BAD_REQUEST, Some(why.as_str())),
                Rejection::BadHeader(why) => (StatusCode::BAD_REQUEST, Some(why)),
                Rejection::BadEventParameter(why) => (StatusCode::BAD_REQUEST, Some(why)),
                Rejection::DigestUriMismatch => (
                    StatusCode::BAD_REQUEST,
                    Some("Digest uri does not match the Request-URI"),
                ),
                Rejection::RouteSetTooLarge => {
                    (StatusCode::BAD_REQUEST, Some("Record-Route too large"))
                }
                Rejection::VersionNotSupported => (StatusCode::VERSION_NOT_SUPPORTED, None),
                Rejection::UnsupportedUriScheme => (StatusCode::UNSUPPORTED_URI_SCHEME, None),
                Rejection::TooManyHops => (StatusCode::TOO_MANY_HOPS, None),
                Rejection::BadExtension(_) => (StatusCode::BAD_EXTENSION, None),
                Rejection::BadEvent => (StatusCode::BAD_EVENT, None),
                Rejection::NotAcceptable => (StatusCode::NOT_ACCEPTABLE, None),
                Rejection::NoSuchDialog => (StatusCode::CALL_DOES_NOT_EXIST, None),
                Rejection::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, None),
                Rejection::CSeqOutOfOrder => {
                    (StatusCode::SERVER_INTERNAL_ERROR, Some("CSeq out of order"))
                }
                Rejection::RequestPending => {
                    (StatusCode::SERVER_INTERNAL_ERROR, Some("Request pending"))
                }
                Rejection::TooManyDialogs => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Too many subscriptions on this connection"),
                ),
                Rejection::RateLimited | Rejection::UpstreamLost => {
                    (StatusCode::SERVICE_UNAVAILABLE, None)
                }
            },
        }
    }

    /// The label of `conflist_proxy_responses_total{outcome=…}`: why, in one word.
    pub fn label(&self) -> &'static str {
        match self {
            Reply::Capabilities => "options",
            Reply::Granted { .. } => "granted",
            Reply::Refused(v) => match v {
                Verdict::Ok { .. } => "granted",
                Verdict::Unauthorized(_) => "unauthorized",
                Verdict::Forbidden => "forbidden",
                Verdict::NotFound => "not_found",
                Verdict::IntervalTooBrief { .. } => "interval_too_brief",
                Verdict::BadEvent => "bad_event",
                Verdict::NotAcceptable => "not_acceptable",
                Verdict::NoSuchSubscription => "no_such_subscription",
                Verdict::Unavailable { .. } => "notifier_unavailable",
                Verdict::Internal => "notifier_error",
            },
            Reply::Rejected(r) => match r {
                Rejection::Malformed(_)
                | Rejection::BadHeader(_)
                | Rejection::BadEventParameter(_)
                | Rejection::DigestUriMismatch => "malformed",
                Rejection::VersionNotSupported => "version_not_supported",
                Rejection::UnsupportedUriScheme => "unsupported_uri_scheme",
                Rejection::TooManyHops => "too_many_hops",
                Rejection::BadExtension(_) => "bad_extension",
                Rejection::BadEvent => "bad_event",
                Rejection::NotAcceptable => "not_acceptable",
                Rejection::NoSuchDialog => "no_such_dialog",
                Rejection::MethodNotAllowed => "method_not_allowed",
                Rejection::CSeqOutOfOrder => "cseq_out_of_order",
                Rejection::RequestPending => "request_pending",
                Rejection::RouteSetTooLarge => "route_set_too_large",
                Rejection::TooManyDialogs => "too_many_dialogs",
                Rejection::RateLimited => "rate_limited",
                Rejection::UpstreamLost => "upstream_lost",
            },
        }
    }

    /// The headers this reply adds to the copied ones.
    fn decorate(&self, h: &mut Headers) {
        match self {
            Reply::Capabilities => {
                h.push(HeaderName::ALLOW, ALLOW);
                h.push(HeaderName::ACCEPT, CONTENT_TYPE);
                h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE);
            }
            Reply::Granted { expires, contact } => {
                h.push(HeaderName::CONTACT, *contact);
                h.push(HeaderName::EXPIRES, expires.to_string());
            }
            Reply::Refused(v) => match v {
                Verdict::IntervalTooBrief { min } => {
                    h.push(HeaderName::MIN_EXPIRES, min.to_string());
                }
                Verdict::BadEvent => h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE),
                Verdict::NotAcceptable => h.push(HeaderName::ACCEPT, CONTENT_TYPE),
                Verdict::Unavailable { retry_after } => h.push(
                    HeaderName::RETRY_AFTER,
                    retry_after.unwrap_or(DEFAULT_RETRY_AFTER).to_string(),
                ),
                Verdict::Unauthorized(challenge) => push_challenges(h, challenge),
                _ => {}
            },
            Reply::Rejected(r) => match r {
                Rejection::BadExtension(unsupported) => {
                    h.push(HeaderName::UNSUPPORTED, unsupported.clone());
                }
                Rejection::BadEvent => h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE),
                Rejection::NotAcceptable => h.push(HeaderName::ACCEPT, CONTENT_TYPE),
                Rejection::MethodNotAllowed => h.push(HeaderName::ALLOW, ALLOW),
                Rejection::RequestPending | Rejection::RateLimited | Rejection::UpstreamLost => {
                    h.push(HeaderName::RETRY_AFTER, "1");
                }
                Rejection::TooManyDialogs => h.push(HeaderName::RETRY_AFTER, "30"),
                _ => {}
            },
        }
    }
}

/// The response to `req` for `reply` (RFC 3261 §8.2.6): the copied headers, `to_tag` (the
/// dialog's) or, for a request without one, a tag derived from the request so a
/// retransmission gets the same response (§8.2.6.2).
pub fn respond(req: &Request, reply: Reply<'_>, to_tag: Option<&str>) -> Response {
    let (status, reason) = reply.status();
    let mut resp = Response::for_request(req, status);
    if let Some(r) = reason {
        resp.reason = r.chars().filter(|c| !c.is_control()).collect();
    }
    match to_tag {
        Some(tag) => set_to_tag(&mut resp.headers, tag),
        None if status != StatusCode::TRYING && request_to_tag(req).is_none() => {
            set_to_tag(&mut resp.headers, &stable_tag(req));
        }
        None => {}
    }
    reply.decorate(&mut resp.headers);
    resp
}

/// The status line of a request the codec could not parse (`salvage`): 505 for another
/// version, else 400 with `why`.
pub fn unparseable(other_version: bool, why: &str) -> (u16, String) {
    let rejection = if other_version {
        Rejection::VersionNotSupported
    } else {
        Rejection::Malformed(why.to_owned())
    };
    let reply = Reply::Rejected(&rejection);
    let (status, reason) = reply.status();
    let reason = reason.unwrap_or_else(|| status.canonical_reason());
    (
        status.as_u16(),
        reason.chars().filter(|c| !c.is_control()).collect(),
    )
}

/// One WWW-Authenticate per offered algorithm, in the notifier's order (RFC 8760 §2.4: the
/// preferred first; clients that read a single challenge take the last).
fn push_challenges(h: &mut Headers, c: &Challenge) {
    for algorithm in &c.algorithms {
        let challenge = sip::DigestChallenge {
            realm: c.realm.clone(),
            nonce: c.nonce.clone(),
            opaque: c.opaque.clone(),
            algorithm: algorithm.clone(),
            stale: c.stale,
        };
        h.push(HeaderName::WWW_AUTHENTICATE, challenge.to_string());
    }
}

fn request_to_tag(req: &Request) -> Option<String> {
    req.headers
        .get(&HeaderName::TO)
        .and_then(|t| NameAddr::parse(t).ok())
        .and_then(|t| t.tag().map(str::to_owned))
}

/// Sets the To-tag of a response.
fn set_to_tag(headers: &mut Headers, tag: &str) {
    if let Some(mut to) = headers
        .get(&HeaderName::TO)
        .and_then(|t| NameAddr::parse(t).ok())
    {
        to.set_tag(tag);
        headers.set(HeaderName::TO, to.to_string());
    }
}

/// A To-tag for a response outside any dialog: derived from the request (Call-ID, From,
/// CSeq), so retransmissions get the same tag (RFC 3261 §8.2.6.2 only asks that it be
/// stable per request). FNV-1a: fixed across builds, unlike std's `DefaultHasher`.
pub fn stable_tag(req: &Request) -> String {
    let parts = [
        req.headers.get(&HeaderName::CALL_ID),
        req.headers.get(&HeaderName::FROM),
        req.headers.get(&HeaderName::CSEQ),
    ];
    stable_tag_of(parts.iter().map(|p| p.unwrap_or_default()))
}

/// [`stable_tag`] over raw header values (for requests the codec refused).
pub fn stable_tag_of<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
