//! Framing for stream transports (TCP/TLS, RFC 3261 §18.3) and RFC 5626 keep-alives.

use crate::ParseError;
use crate::message::Message;
use crate::parse::{content_length, find_head_end, leading_crlf_len, parse_head};

/// For stream transports (TCP/TLS): `Ok(None)` = need more bytes; `Ok(Some((msg, consumed)))`
/// = one message and the bytes it used. Leading CRLFs (RFC 5626 keep-alives) are skipped and
/// counted in `consumed`. Content-Length is required on streams (RFC 3261 §18.3). `max_len`
/// bounds head + body size; beyond it the result is [`ParseError::TooLarge`].
pub fn parse_stream(buf: &[u8], max_len: usize) -> Result<Option<(Message, usize)>, ParseError> {
    let skip = leading_crlf_len(buf);
    let rest = buf.get(skip..).unwrap_or_default();
    let window = rest.get(..max_len).unwrap_or(rest);
    let Some(head_len) = find_head_end(window) else {
        return if rest.len() >= max_len {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = parse_head(rest.get(..head_len).unwrap_or_default())?;
    let body_len = content_length(&head.headers)?.ok_or(ParseError::MissingContentLength)?;
    let total = head_len
        .checked_add(body_len)
        .filter(|t| *t <= max_len)
        .ok_or(ParseError::TooLarge)?;
    let Some(body) = rest.get(head_len..total) else {
        return Ok(None);
    };
    Ok(Some((head.into_message(body.to_vec()), skip + total)))
}

/// One unit cut from a stream by [`frame_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// RFC 5626 §3.5.1 keep-alive "ping" (CRLF CRLF): answer with a CRLF "pong".
    Ping,
    /// A lone CRLF: a "pong", or padding between messages.
    Pong,
    /// The bytes of one message (head and `Content-Length` bytes of body), for
    /// [`crate::parse_message`].
    Message(Vec<u8>),
}

/// Why a stream cannot be framed any further: its connection must close (RFC 3261 §18.3:
/// without a usable Content-Length the next message's start is unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The head, or head and body, exceed the limit.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// Content-Length missing, unparseable, or given twice with different values.
    #[error("no usable Content-Length on a stream transport")]
    BadContentLength,
}

/// Cuts the next unit off the front of `buf`: `Ok(None)` = need more bytes, else the unit
/// and the bytes it used. Only framing is done here (the head is scanned for
/// `Content-Length`/`l` alone), so a message whose head does not parse still comes out
/// whole and gets its 400 from the one parser every transport uses.
pub fn frame_stream(buf: &[u8], max_len: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.starts_with(b"\r\n\r\n") {
        return Ok(Some((Frame::Ping, 4)));
    }
    if buf.starts_with(b"\r\n") {
        // CRLF then something else: a pong. CRLF alone (or CRLF CR): wait for more.
        return match buf.get(2) {
            None => Ok(None),
            Some(b'\r') if buf.len() < 4 => Ok(None),
            Some(_) => Ok(Some((Frame::Pong, 2))),
        };
    }
    let window = buf.get(..max_len).unwrap_or(buf);
    let Some(head_len) = find_head_end(window) else {
        return if buf.len() >= max_len {
            Err(FrameError::TooLarge(max_len))
        } else {
            Ok(None)
        };
    };
    let head = buf.get(..head_len).unwrap_or_default();
    let body_len = scan_content_length(head)?;
    let total = head_len
        .checked_add(body_len)
        .filter(|t| *t <= max_len)
        .ok_or(FrameError::TooLarge(max_len))?;
    match buf.get(..total) {
        Some(msg) => Ok(Some((Frame::Message(msg.to_vec()), total))),
        None => Ok(None),
    }
}

/// The Content-Length of a raw head (long or compact name, any case, folded values not
/// supported for it): exactly one value, or several equal ones.
fn scan_content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found: Option<usize> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = name.trim_ascii();
        if !(name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l")) {
            continue;
        }
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        let n = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or(FrameError::BadContentLength)?;
        if found.is_some_and(|prev| prev != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    found.ok_or(FrameError::BadContentLength)
}

/// Length of the head at the start of `buf` through its empty line, once it has arrived.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    find_head_end(buf)
}

/// Number of leading CRLF bytes, so a caller can drain keep-alives that arrive alone.
pub fn skip_keepalives(buf: &[u8]) -> usize {
    leading_crlf_len(buf)
}

/// RFC 5626 §3.5.1: the double-CRLF "ping".
pub fn is_keepalive_ping(buf: &[u8]) -> bool {
    buf == b"\r\n\r\n"
}

/// RFC 5626 §3.5.1: the single-CRLF "pong".
pub fn is_keepalive_pong(buf: &[u8]) -> bool {
    buf == b"\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{HeaderName, Method};

    const MSG: &[u8] = b"NOTIFY sip:a@b SIP/2.0\r\nCall-ID: x\r\nContent-Length: 4\r\n\r\nbody";

    fn call_id(m: &Message) -> Option<&str> {
        m.headers().get(&HeaderName::CALL_ID)
    }

    #[test]
    fn every_split_point_needs_more_until_complete() {
        for cut in 0..MSG.len() {
            assert_eq!(parse_stream(&MSG[..cut], 4096), Ok(None), "cut at {cut}");
        }
        let (m, used) = parse_stream(MSG, 4096).unwrap().unwrap();
        assert_eq!(used, MSG.len());
        assert_eq!(m.body(), b"body");
        let Message::Request(r) = m else {
            panic!("not a request")
        };
        assert_eq!(r.method, Method::Notify);
    }

    #[test]
    fn back_to_back_and_keepalives() {
        let second = b"SIP/2.0 200 OK\r\nCall-ID: y\r\nl: 0\r\n\r\n";
        let buf = [b"\r\n\r\n".as_slice(), MSG, second].concat();
        let (m1, used1) = parse_stream(&buf, 4096).unwrap().unwrap();
        assert_eq!(used1, 4 + MSG.len());
        assert_eq!(call_id(&m1), Some("x"));
        let (m2, used2) = parse_stream(&buf[used1..], 4096).unwrap().unwrap();
        assert_eq!(used2, second.len());
        assert_eq!(call_id(&m2), Some("y"));
        assert_eq!(parse_stream(b"\r\n\r\n", 4096), Ok(None));
        assert_eq!(skip_keepalives(b"\r\n\r\nINV"), 4);
    }

    #[test]
    fn limits_and_required_content_length() {
        assert_eq!(parse_stream(MSG, 20), Err(ParseError::TooLarge));
        assert_eq!(parse_stream(MSG, MSG.len() - 1), Err(ParseError::TooLarge));
        assert!(parse_stream(MSG, MSG.len()).unwrap().is_some());
        assert_eq!(parse_stream(&[b'A'; 100], 50), Err(ParseError::TooLarge));
        assert_eq!(
            parse_stream(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", 4096),
            Err(ParseError::MissingContentLength)
        );
    }

    #[test]
    fn frames_cut_messages_pings_and_pongs_without_parsing_them() {
        let bad_head = b"NOT A REQUEST LINE\r\nl: 2\r\n\r\nab";
        let buf = [b"\r\n\r\n".as_slice(), MSG, b"\r\n", bad_head].concat();
        let (f, n) = frame_stream(&buf, 4096).unwrap().unwrap();
        assert_eq!((f, n), (Frame::Ping, 4));
        let (f, n) = frame_stream(&buf[4..], 4096).unwrap().unwrap();
        assert_eq!((f, n), (Frame::Message(MSG.to_vec()), MSG.len()));
        let rest = &buf[4 + MSG.len()..];
        assert_eq!(frame_stream(rest, 4096).unwrap().unwrap(), (Frame::Pong, 2));
        assert_eq!(
            frame_stream(&rest[2..], 4096).unwrap().unwrap(),
            (Frame::Message(bad_head.to_vec()), bad_head.len())
        );
        for cut in 0..MSG.len() {
            assert_eq!(frame_stream(&MSG[..cut], 4096), Ok(None), "cut at {cut}");
        }
        assert_eq!(frame_stream(b"\r\n", 4096), Ok(None));
        assert_eq!(frame_stream(b"\r\n\r", 4096), Ok(None));
    }

    #[test]
    fn frames_need_one_content_length_and_stay_under_the_limit() {
        assert_eq!(
            frame_stream(b"OPTIONS sip:a@b SIP/2.0\r\n\r\n", 4096),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            frame_stream(
                b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nab",
                4096
            ),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(frame_stream(MSG, 20), Err(FrameError::TooLarge(20)));
        assert_eq!(
            frame_stream(&[b'A'; 100], 50),
            Err(FrameError::TooLarge(50))
        );
    }

    #[test]
    fn keepalive_detection() {
        assert!(is_keepalive_ping(b"\r\n\r\n"));
        assert!(!is_keepalive_ping(b"\r\n"));
        assert!(is_keepalive_pong(b"\r\n"));
        assert!(!is_keepalive_pong(b"\r\n\r\n"));
    }
}
