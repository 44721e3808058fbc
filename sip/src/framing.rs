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
    fn keepalive_detection() {
        assert!(is_keepalive_ping(b"\r\n\r\n"));
        assert!(!is_keepalive_ping(b"\r\n"));
        assert!(is_keepalive_pong(b"\r\n"));
        assert!(!is_keepalive_pong(b"\r\n\r\n"));
    }
}
