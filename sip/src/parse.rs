//! Parsing one whole message from a datagram or WebSocket frame (RFC 3261 §7, §18.3).

use crate::ParseError;
use crate::header::cseq::CSeq;
use crate::lex::{is_token_str, is_ws, parse_u32_digits, trim_lws};
use crate::message::{HeaderName, Headers, Message, Method, Request, Response, StatusCode};
use crate::uri::Uri;

/// Most header lines (after unfolding) a message may carry; more is an error.
pub const MAX_HEADERS: usize = 256;

/// Parses one whole message (a UDP datagram or a WebSocket frame).
///
/// * Leading CRLFs are ignored (RFC 3261 §7.5).
/// * Body: Content-Length octets if the header is present (fewer is an error, extra trailing
///   octets are ignored, RFC 3261 §18.3 / RFC 4475 §3.1.1.8); the whole remainder otherwise.
/// * Folded header lines are unfolded (RFC 3261 §7.3.1); names are case-insensitive and
///   compact forms are mapped.
/// * The start line is strict (RFC 4475 §3.1.2.7–§3.1.2.11, §3.1.2.16, §3.1.2.19).
/// * Content-Length must be digits fitting in 32 bits, repeated only with the same value.
/// * A response's CSeq must parse (RFC 4475 §3.1.2.5): responses cannot be answered with a
///   400, so they are rejected here; a request's CSeq is left to [`crate::check_request`].
pub fn parse_message(buf: &[u8]) -> Result<Message, ParseError> {
    let buf = buf.get(leading_crlf_len(buf)..).unwrap_or_default();
    if buf.is_empty() {
        return Err(ParseError::Empty);
    }
    let head_len = find_head_end(buf).ok_or(ParseError::Incomplete)?;
    let head = parse_head(buf.get(..head_len).unwrap_or_default())?;
    let rest = buf.get(head_len..).unwrap_or_default();
    let body = match content_length(&head.headers)? {
        Some(len) => rest.get(..len).ok_or(ParseError::BodyTooShort)?,
        None => rest,
    };
    Ok(head.into_message(body.to_vec()))
}

/// Number of leading `\r\n` pairs, in bytes.
pub(crate) fn leading_crlf_len(buf: &[u8]) -> usize {
    let mut n = 0;
    while buf.get(n..).is_some_and(|b| b.starts_with(b"\r\n")) {
        n += 2;
    }
    n
}

/// Length of the head including the empty line, if the empty line has arrived.
pub(crate) fn find_head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// A parsed start line.
#[derive(Debug)]
enum StartLine {
    Request(Method, Uri),
    Response(StatusCode, String),
}

/// Start line and headers, before the body is attached.
#[derive(Debug)]
pub(crate) struct Head {
    start: StartLine,
    pub(crate) headers: Headers,
}

impl Head {
    pub(crate) fn into_message(self, body: Vec<u8>) -> Message {
        let headers = self.headers;
        match self.start {
            StartLine::Request(method, uri) => Message::Request(Request {
                method,
                uri,
                headers,
                body,
            }),
            StartLine::Response(status, reason) => Message::Response(Response {
                status,
                reason,
                headers,
                body,
            }),
        }
    }
}

/// Parses the head: start line, header lines, final empty line (all included in `head`).
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    let text = text
        .strip_suffix("\r\n\r\n")
        .ok_or(ParseError::Incomplete)?;
    let mut lines = text.split("\r\n");
    let start = parse_start_line(lines.next().unwrap_or_default())?;
    let headers = parse_header_lines(lines)?;
    if matches!(start, StartLine::Response(..)) {
        for v in headers.get_all(&HeaderName::CSEQ) {
            CSeq::parse(v)?;
        }
    }
    Ok(Head { start, headers })
}

fn is_sip_version(s: &str) -> bool {
    s.eq_ignore_ascii_case("SIP/2.0")
}

fn version_error(s: &str) -> ParseError {
    match s.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("SIP/") => ParseError::VersionNotSupported,
        _ => ParseError::BadStartLine,
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if line.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(ParseError::BadStartLine);
    }
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        return parse_status_line(line);
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err(ParseError::BadStartLine);
    };
    let method = Method::parse(method)?;
    let uri = Uri::parse(uri).map_err(|_| ParseError::BadRequestUri)?;
    if uri.headers().is_some() {
        return Err(ParseError::BadRequestUri);
    }
    if !is_sip_version(version) {
        return Err(version_error(version));
    }
    Ok(StartLine::Request(method, uri))
}

/// `SIP-Version SP Status-Code SP Reason-Phrase` (a missing final SP is tolerated).
fn parse_status_line(line: &str) -> Result<StartLine, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !is_sip_version(version) {
        return Err(version_error(version));
    }
    let code = parts.next().unwrap_or_default();
    let status = (code.len() == 3)
        .then(|| parse_u32_digits(code))
        .flatten()
        .and_then(|c| u16::try_from(c).ok())
        .and_then(StatusCode::new)
        .ok_or(ParseError::BadStatusCode)?;
    let reason = parts.next().unwrap_or_default().to_owned();
    Ok(StartLine::Response(status, reason))
}

/// Unfolds continuation lines and parses each logical header line.
fn parse_header_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Headers, ParseError> {
    let mut headers = Headers::new();
    let mut current: Option<String> = None;
    for line in lines {
        if line.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(ParseError::BadHeader);
        }
        if line.bytes().next().is_some_and(is_ws) {
            let cur = current.as_mut().ok_or(ParseError::BadHeader)?;
            cur.push(' ');
            cur.push_str(trim_lws(line));
            continue;
        }
        if let Some(prev) = current.replace(line.to_owned()) {
            push_header(&mut headers, &prev)?;
        }
    }
    if let Some(last) = current {
        push_header(&mut headers, &last)?;
    }
    Ok(headers)
}

fn push_header(headers: &mut Headers, line: &str) -> Result<(), ParseError> {
    if headers.len() >= MAX_HEADERS {
        return Err(ParseError::TooManyHeaders);
    }
    let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
    let name = name.trim_end_matches([' ', '\t']);
    if !is_token_str(name) {
        return Err(ParseError::BadHeader);
    }
    headers.push(HeaderName::new(name), trim_lws(value));
    Ok(())
}

/// The Content-Length, if present: digits only, fits in `u32`, every copy equal
/// (RFC 3261 §20.14, RFC 4475 §3.1.2.3, §3.3.9).
pub(crate) fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut found: Option<u32> = None;
    for v in headers.get_all(&HeaderName::CONTENT_LENGTH) {
        let n = parse_u32_digits(trim_lws(v)).ok_or(ParseError::BadContentLength)?;
        if found.is_some_and(|prev| prev != n) {
            return Err(ParseError::BadContentLength);
        }
        found = Some(n);
    }
    found
        .map(|n| usize::try_from(n).map_err(|_| ParseError::BadContentLength))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> Request {
        match parse_message(bytes) {
            Ok(Message::Request(r)) => r,
            other => panic!("expected request, got {other:?}"),
        }
    }

    #[test]
    fn compact_folded_and_case_insensitive_headers() {
        let r = req(b"SUBSCRIBE sip:conf@example.com SIP/2.0\r\n\
v: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n\
f: <sip:u@example.com>;tag=1\r\n\
t: <sip:conf@example.com>\r\n\
i: abc\r\n\
CSEQ: 1\r\n SUBSCRIBE\r\n\
o: conference\r\n\
NewFangled:   a\r\n\t continued\r\n\
l: 0\r\n\r\n");
        assert_eq!(r.method, Method::Subscribe);
        assert_eq!(r.uri.to_string(), "sip:conf@example.com");
        assert_eq!(
            r.headers.get(&HeaderName::VIA),
            Some("SIP/2.0/WS a.invalid;branch=z9hG4bK1")
        );
        assert_eq!(r.headers.get(&HeaderName::CALL_ID), Some("abc"));
        assert_eq!(r.headers.get(&HeaderName::CSEQ), Some("1 SUBSCRIBE"));
        assert_eq!(r.headers.get(&HeaderName::EVENT), Some("conference"));
        assert_eq!(
            r.headers.get(&HeaderName::new("newfangled")),
            Some("a continued")
        );
        let names: Vec<_> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "Via",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Event",
                "NewFangled",
                "Content-Length"
            ]
        );
        assert!(r.body.is_empty());
    }

    #[test]
    fn body_by_content_length_and_remainder() {
        let r = req(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcdef");
        assert_eq!(r.body, b"abc");
        let r = req(b"\r\n\r\nMESSAGE sip:a@b SIP/2.0\r\nX: 1\r\n\r\nabcdef");
        assert_eq!(r.body, b"abcdef");
        let r = req(b"MESSAGE sip:a@b SIP/2.0\r\nl: 0005\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn content_length_errors() {
        let cases: [(&[u8], ParseError); 6] = [
            (
                b"M sip:a@b SIP/2.0\r\nl: 9\r\n\r\nabc",
                ParseError::BodyTooShort,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nl: -1\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nl: x\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nl: 4294967296\r\n\r\n",
                ParseError::BadContentLength,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nl: 1\r\nl: 2\r\n\r\nab",
                ParseError::BadContentLength,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nl:\r\n\r\n",
                ParseError::BadContentLength,
            ),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                parse_message(bytes),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn start_line_errors() {
        let cases: [(&[u8], ParseError); 11] = [
            (b"", ParseError::Empty),
            (b"\r\n\r\n", ParseError::Empty),
            (
                b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n",
                ParseError::Incomplete,
            ),
            (
                b"OPTIONS  sip:a@b SIP/2.0\r\n\r\n",
                ParseError::BadStartLine,
            ),
            (
                b"OPTIONS sip:a@b SIP/2.0 \r\n\r\n",
                ParseError::BadStartLine,
            ),
            (
                b"OPTIONS sip:a@b SIP/7.0\r\n\r\n",
                ParseError::VersionNotSupported,
            ),
            (
                b"OPTIONS <sip:a@b> SIP/2.0\r\n\r\n",
                ParseError::BadRequestUri,
            ),
            (
                b"OPTIONS sip:a@b?Route=x SIP/2.0\r\n\r\n",
                ParseError::BadRequestUri,
            ),
            (b"OPT(IONS sip:a@b SIP/2.0\r\n\r\n", ParseError::BadMethod),
            (b"SIP/2.0 4294967301 big\r\n\r\n", ParseError::BadStatusCode),
            (b"SIP/2.0 099 low\r\n\r\n", ParseError::BadStatusCode),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                parse_message(bytes),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn header_line_errors() {
        let cases: [(&[u8], ParseError); 4] = [
            (
                b"M sip:a@b SIP/2.0\r\n folded-first\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nno colon\r\n\r\n",
                ParseError::BadHeader,
            ),
            (
                b"M sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n",
                ParseError::BadHeader,
            ),
            (b"M sip:a@b SIP/2.0\r\nX: \xff\r\n\r\n", ParseError::NotUtf8),
        ];
        for (bytes, err) in cases {
            assert_eq!(
                parse_message(bytes),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn header_limit() {
        let mut msg = b"M sip:a@b SIP/2.0\r\n".to_vec();
        msg.extend(b"X: 1\r\n".repeat(MAX_HEADERS));
        let ok = [msg.as_slice(), b"\r\n"].concat();
        assert!(parse_message(&ok).is_ok());
        let too_many = [msg.as_slice(), b"X: 1\r\n\r\n"].concat();
        assert_eq!(parse_message(&too_many), Err(ParseError::TooManyHeaders));
    }

    #[test]
    fn responses() {
        let m = parse_message(b"SIP/2.0 100 \r\nCSeq: 1 INVITE\r\n\r\n").unwrap();
        let Message::Response(r) = m else {
            panic!("not a response")
        };
        assert_eq!(r.status, StatusCode::TRYING);
        assert_eq!(r.reason, "");
        let m = parse_message(b"SIP/2.0 489 Bad  Event\r\n\r\n").unwrap();
        let Message::Response(r) = m else {
            panic!("not a response")
        };
        assert_eq!(r.status, StatusCode::BAD_EVENT);
        assert_eq!(r.reason, "Bad  Event");
        assert_eq!(
            parse_message(b"SIP/2.0 503 x\r\nCSeq: 9292394834772304023312 OPTIONS\r\n\r\n"),
            Err(ParseError::BadCSeq)
        );
    }
}
