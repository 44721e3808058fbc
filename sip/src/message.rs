//! SIP messages (RFC 3261 §7): requests, responses and methods. [`StatusCode`], [`Headers`]
//! and [`HeaderName`] are defined in private modules and re-exported here.

use std::fmt;

pub use crate::headers::{HeaderName, Headers};
pub use crate::status::StatusCode;

use crate::ParseError;
use crate::lex::is_token_str;
use crate::uri::Uri;

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A request (RFC 3261 §7.1).
    Request(Request),
    /// A response (RFC 3261 §7.2).
    Response(Response),
}

/// A SIP request (RFC 3261 §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method of the Request-Line.
    pub method: Method,
    /// The Request-URI.
    pub uri: Uri,
    /// Header lines in order.
    pub headers: Headers,
    /// Body octets.
    pub body: Vec<u8>,
}

/// A SIP response (RFC 3261 §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// The reason phrase (may be empty, RFC 4475 §3.1.1.13).
    pub reason: String,
    /// Header lines in order.
    pub headers: Headers,
    /// Body octets.
    pub body: Vec<u8>,
}

/// A request method (RFC 3261 §7.1, §27.4); extension methods are kept in `Other`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// RFC 3261.
    Invite,
    /// RFC 3261.
    Ack,
    /// RFC 3261.
    Bye,
    /// RFC 3261.
    Cancel,
    /// RFC 3261.
    Options,
    /// RFC 3261.
    Register,
    /// RFC 6665.
    Subscribe,
    /// RFC 6665.
    Notify,
    /// RFC 3515.
    Refer,
    /// RFC 3428.
    Message,
    /// RFC 6086.
    Info,
    /// RFC 3311.
    Update,
    /// RFC 3262.
    Prack,
    /// RFC 3903.
    Publish,
    /// Any other token, case kept.
    Other(String),
}

const METHODS: &[(Method, &str)] = &[
    (Method::Invite, "INVITE"),
    (Method::Ack, "ACK"),
    (Method::Bye, "BYE"),
    (Method::Cancel, "CANCEL"),
    (Method::Options, "OPTIONS"),
    (Method::Register, "REGISTER"),
    (Method::Subscribe, "SUBSCRIBE"),
    (Method::Notify, "NOTIFY"),
    (Method::Refer, "REFER"),
    (Method::Message, "MESSAGE"),
    (Method::Info, "INFO"),
    (Method::Update, "UPDATE"),
    (Method::Prack, "PRACK"),
    (Method::Publish, "PUBLISH"),
];

impl Method {
    /// The method token as printed.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Other(s) => s,
            known => METHODS
                .iter()
                .find(|(m, _)| m == known)
                .map_or("", |(_, s)| s),
        }
    }

    /// Parses an RFC 3261 §25.1 token; method names are case-sensitive (§7.1).
    pub fn parse(token: &str) -> Result<Method, ParseError> {
        if !is_token_str(token) {
            return Err(ParseError::BadMethod);
        }
        Ok(METHODS
            .iter()
            .find(|(_, s)| *s == token)
            .map_or_else(|| Method::Other(token.to_owned()), |(m, _)| m.clone()))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Request {
    /// A request with no headers and no body.
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            method,
            uri,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }
}

impl Response {
    /// A response with the canonical reason, no headers and no body.
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            reason: status.canonical_reason().to_owned(),
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// RFC 3261 §8.2.6.2: copies all Via lines, From, To, Call-ID and CSeq from the request,
    /// in that order; reason = canonical reason. Adds nothing else (the caller adds a To-tag,
    /// Contact...).
    pub fn for_request(req: &Request, status: StatusCode) -> Response {
        let mut resp = Response::new(status);
        for via in req.headers.get_all(&HeaderName::VIA) {
            resp.headers.push(HeaderName::VIA, via);
        }
        for name in [
            HeaderName::FROM,
            HeaderName::TO,
            HeaderName::CALL_ID,
            HeaderName::CSEQ,
        ] {
            if let Some(v) = req.headers.get(&name) {
                resp.headers.push(name, v);
            }
        }
        resp
    }
}

impl Message {
    /// The header lines of either kind.
    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }

    /// Mutable header lines of either kind.
    pub fn headers_mut(&mut self) -> &mut Headers {
        match self {
            Message::Request(r) => &mut r.headers,
            Message::Response(r) => &mut r.headers,
        }
    }

    /// The body of either kind.
    pub fn body(&self) -> &[u8] {
        match self {
            Message::Request(r) => &r.body,
            Message::Response(r) => &r.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_roundtrip_and_are_case_sensitive() {
        assert_eq!(Method::parse("SUBSCRIBE"), Ok(Method::Subscribe));
        assert_eq!(Method::parse("PRACK"), Ok(Method::Prack));
        assert_eq!(
            Method::parse("subscribe"),
            Ok(Method::Other("subscribe".into()))
        );
        assert_eq!(
            Method::parse("RE%47IST%45R"),
            Ok(Method::Other("RE%47IST%45R".into()))
        );
        assert_eq!(Method::parse(""), Err(ParseError::BadMethod));
        assert_eq!(Method::parse("IN VITE"), Err(ParseError::BadMethod));
        assert_eq!(Method::parse("<X>"), Err(ParseError::BadMethod));
        assert_eq!(Method::Notify.to_string(), "NOTIFY");
        assert_eq!(Method::Other("FOO".into()).as_str(), "FOO");
    }

    #[test]
    fn for_request_copies_dialog_headers_in_order() {
        let mut req = Request::new(Method::Subscribe, Uri::parse("sip:a@b").unwrap());
        req.headers
            .push(HeaderName::new("v"), "SIP/2.0/WS x;branch=z9hG4bK1");
        req.headers.push(HeaderName::CSEQ, "1 SUBSCRIBE");
        req.headers.push(HeaderName::TO, "<sip:a@b>");
        req.headers.push(HeaderName::EVENT, "presence");
        req.headers.push(HeaderName::FROM, "<sip:c@d>;tag=1");
        req.headers
            .push(HeaderName::VIA, "SIP/2.0/UDP y;branch=z9hG4bK2");
        req.headers.push(HeaderName::CALL_ID, "cid");
        let resp = Response::for_request(&req, StatusCode::ACCEPTED);
        assert_eq!(resp.reason, "Accepted");
        let lines: Vec<_> = resp.headers.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(
            lines,
            vec![
                ("Via", "SIP/2.0/WS x;branch=z9hG4bK1"),
                ("Via", "SIP/2.0/UDP y;branch=z9hG4bK2"),
                ("From", "<sip:c@d>;tag=1"),
                ("To", "<sip:a@b>"),
                ("Call-ID", "cid"),
                ("CSeq", "1 SUBSCRIBE"),
            ]
        );
        assert!(resp.body.is_empty());
    }
}
