//! Request validation, pure: what a SUBSCRIBE or OPTIONS must carry to be served, as a
//! typed [`Rejection`] when it does not (the status map turns it into SIP). The Event,
//! Contact, Expires and Authorization checks are written once and shared by dialog-creating
//! and refreshing SUBSCRIBEs (RFC 6665 §4.2.1, RFC 3261 §8.2 and §12.2.2).

use super::EVENT_PACKAGE;
use super::status::Rejection;
use crate::notifier::{Credentials, Window};
use sip::{Event as EventHeader, HeaderName, NameAddr, Request, Uri};

/// The parts of a valid dialog-creating SUBSCRIBE the dialog needs.
#[derive(Debug)]
pub(super) struct Initial {
    pub subscriber: String,
    pub requester: String,
    pub call_id: String,
    pub from: NameAddr,
    pub from_tag: String,
    pub to: NameAddr,
    pub contact: Uri,
    pub cseq: u32,
    pub event: String,
    pub window: Window,
    pub accept: Vec<String>,
    pub expires: Option<u32>,
    pub credentials: Option<Credentials>,
    pub route_set: Vec<String>,
}

/// The parts of a valid in-dialog SUBSCRIBE.
#[derive(Debug)]
pub(super) struct Refresh {
    pub cseq: u32,
    pub expires: Option<u32>,
    pub credentials: Option<Credentials>,
    /// A new remote target (RFC 3261 §12.2.2: a target refresh request may replace it).
    pub contact: Option<Uri>,
}

/// RFC 3261 §8.2.2.1 and §8.2.2.3, for every request served (RFC 4475 §3.3.2, §3.3.3,
/// §3.3.5): a `sip:`/`sips:` Request-URI and no required extension.
pub(super) fn check_common(req: &Request) -> Result<(), Rejection> {
    if !req.uri.is_sip() {
        return Err(Rejection::UnsupportedUriScheme);
    }
    let required: Vec<&str> = req.headers.get_split(&HeaderName::REQUIRE).collect();
    if !required.is_empty() {
        return Err(Rejection::BadExtension(required.join(", ")));
    }
    Ok(())
}

/// A dialog-creating SUBSCRIBE (RFC 6665 §4.2.1).
pub(super) fn check_initial(
    req: &Request,
    max_route_set_size: usize,
) -> Result<Initial, Rejection> {
    if !req.uri.is_sip() {
        return Err(Rejection::UnsupportedUriScheme);
    }
    if let Some(mf) = req.headers.get(&HeaderName::MAX_FORWARDS)
        && sip::parse_delta_seconds(mf) == Ok(0)
    {
        return Err(Rejection::TooManyHops);
    }
    check_common(req)?;
    let event = event_of(req)?;
    let window = Window::from_event_params(&event.params).map_err(Rejection::BadEventParameter)?;
    let event = event.to_string();
    let accept = accept_of(req)?;
    let expires = expires_of(req)?;
    let Some(contact) = contact_of(req)? else {
        return Err(Rejection::BadHeader("Missing Contact"));
    };
    let from = name_addr(req, &HeaderName::FROM).ok_or(Rejection::BadHeader("Bad From"))?;
    let to = name_addr(req, &HeaderName::TO).ok_or(Rejection::BadHeader("Bad To"))?;
    let Some(from_tag) = from.tag().map(str::to_owned) else {
        return Err(Rejection::BadHeader("Missing From tag"));
    };
    let Some(subscriber) = req.uri.aor() else {
        return Err(Rejection::UnsupportedUriScheme);
    };
    let Some(requester) = from.uri.aor() else {
        return Err(Rejection::BadHeader("Bad From"));
    };
    let route_set: Vec<String> = req
        .headers
        .get_split(&HeaderName::RECORD_ROUTE)
        .map(str::to_owned)
        .collect();
    if route_set.iter().map(String::len).sum::<usize>() > max_route_set_size {
        return Err(Rejection::RouteSetTooLarge);
    }
    let credentials = credentials_of(req)?;
    Ok(Initial {
        subscriber,
        requester,
        call_id: call_id_of(req),
        from,
        from_tag,
        to,
        contact,
        cseq: cseq_of(req),
        event,
        window,
        accept,
        expires,
        credentials,
        route_set,
    })
}

/// An in-dialog SUBSCRIBE: the same Event package, and well-formed Expires, Authorization
/// and Contact. Whether its CSeq is in order is the dialog's to say.
pub(super) fn check_refresh(req: &Request) -> Result<Refresh, Rejection> {
    let expires = expires_of(req)?;
    let credentials = credentials_of(req)?;
    event_of(req)?;
    let contact = contact_of(req)?;
    Ok(Refresh {
        cseq: cseq_of(req),
        expires,
        credentials,
        contact,
    })
}

/// The Event header, which must name our package.
fn event_of(req: &Request) -> Result<EventHeader, Rejection> {
    match req.headers.get(&HeaderName::EVENT).map(EventHeader::parse) {
        None => Err(Rejection::BadHeader("Missing Event")),
        Some(Err(_)) => Err(Rejection::BadHeader("Bad Event")),
        Some(Ok(e)) if e.package != EVENT_PACKAGE => Err(Rejection::BadEvent),
        Some(Ok(e)) => Ok(e),
    }
}

/// The Accept values (one media range each); empty = the package's default type (RFC 6665
/// §4.1.2). One of them must admit our type.
fn accept_of(req: &Request) -> Result<Vec<String>, Rejection> {
    match sip::parse_accept(&req.headers) {
        Err(_) => Err(Rejection::BadHeader("Bad Accept")),
        Ok(None) => Ok(Vec::new()),
        Ok(Some(ranges)) => {
            if !ranges
                .iter()
                .any(|r| r.matches("application", "conference-list+xml"))
            {
                return Err(Rejection::NotAcceptable);
            }
            Ok(req
                .headers
                .get_split(&HeaderName::ACCEPT)
                .map(str::to_owned)
                .collect())
        }
    }
}

/// The first Contact's URI, if there is a Contact.
fn contact_of(req: &Request) -> Result<Option<Uri>, Rejection> {
    match req.headers.get_split(&HeaderName::CONTACT).next() {
        None => Ok(None),
        Some(c) => NameAddr::parse(c)
            .map(|c| Some(c.uri))
            .map_err(|_| Rejection::BadHeader("Bad Contact")),
    }
}

fn expires_of(req: &Request) -> Result<Option<u32>, Rejection> {
    match req.headers.get(&HeaderName::EXPIRES) {
        None => Ok(None),
        Some(v) => sip::parse_delta_seconds(v)
            .map(Some)
            .map_err(|_| Rejection::BadHeader("Bad Expires")),
    }
}

/// The request's Authorization (RFC 3261 §22.4): Digest or Bearer. A request may carry one
/// per realm; the first one that parses is used. Unparseable credentials are a 400.
fn credentials_of(req: &Request) -> Result<Option<Credentials>, Rejection> {
    let mut values = req
        .headers
        .iter()
        .filter(|(n, _)| **n == HeaderName::AUTHORIZATION)
        .map(|(_, v)| v)
        .peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    match values.find_map(|v| sip::Credentials::parse(v).ok()) {
        Some(sip::Credentials::Digest(response)) => {
            // RFC 2617 §3.2.2.5: the digest-uri must name the resource of the Request-Line
            // (the response is computed over it; another one means credentials made for
            // another request).
            let same = Uri::parse(&response.uri).is_ok_and(|u| u == req.uri)
                || response.uri == req.uri.to_string();
            if !same {
                return Err(Rejection::DigestUriMismatch);
            }
            Ok(Some(Credentials::Digest {
                response,
                method: req.method.to_string(),
            }))
        }
        Some(sip::Credentials::Bearer(token)) => Ok(Some(Credentials::Bearer(token))),
        None => Err(Rejection::BadHeader("Bad Authorization")),
    }
}

fn name_addr(req: &Request, name: &HeaderName) -> Option<NameAddr> {
    req.headers.get(name).and_then(|v| NameAddr::parse(v).ok())
}

/// The To-tag, if any.
pub(super) fn to_tag(req: &Request) -> Option<String> {
    name_addr(req, &HeaderName::TO).and_then(|t| t.tag().map(str::to_owned))
}

/// The From-tag, if any.
pub(super) fn from_tag(req: &Request) -> Option<String> {
    name_addr(req, &HeaderName::FROM).and_then(|t| t.tag().map(str::to_owned))
}

/// The Call-ID, trimmed (empty when missing; validation has refused that already).
pub(super) fn call_id_of(req: &Request) -> String {
    req.headers
        .get(&HeaderName::CALL_ID)
        .map(|c| c.trim().to_owned())
        .unwrap_or_default()
}

/// CSeq number of a request that passed validation.
fn cseq_of(req: &Request) -> u32 {
    req.headers
        .get(&HeaderName::CSEQ)
        .and_then(|c| sip::CSeq::parse(c).ok())
        .map_or(0, |c| c.seq)
}
