//! Printing messages to wire bytes (RFC 3261 §7).
//!
//! Headers are printed in stored order as `Name: value\r\n` with the stored spelling of the
//! name. Any stored Content-Length is dropped and a fresh one, computed from the body, is
//! appended last (RFC 3261 §20.14). CR and LF inside stored values are replaced by spaces so
//! a value can never inject a header line.

use crate::message::{HeaderName, Headers, Message, Request, Response};

impl Request {
    /// The request as wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        push_clean(&mut out, &format!("{} {} SIP/2.0", self.method, self.uri));
        write_tail(&mut out, &self.headers, &self.body);
        out
    }
}

impl Response {
    /// The response as wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        push_clean(
            &mut out,
            &format!("SIP/2.0 {} {}", self.status.as_u16(), self.reason),
        );
        write_tail(&mut out, &self.headers, &self.body);
        out
    }
}

impl Message {
    /// The message as wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }
}

/// Appends `line` with CR/LF replaced by SP, then CRLF.
fn push_clean(out: &mut Vec<u8>, line: &str) {
    out.extend(
        line.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn write_tail(out: &mut Vec<u8>, headers: &Headers, body: &[u8]) {
    for (name, value) in headers.iter() {
        if *name != HeaderName::CONTENT_LENGTH {
            push_clean(out, &format!("{name}: {value}"));
        }
    }
    push_clean(out, &format!("Content-Length: {}", body.len()));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use crate::message::{HeaderName, Method, Request, Response, StatusCode};
    use crate::uri::Uri;

    #[test]
    fn request_recomputes_content_length() {
        let mut req = Request::new(Method::Notify, Uri::parse("sip:a@b;transport=ws").unwrap());
        req.headers.push(HeaderName::new("l"), "999");
        req.headers.push(HeaderName::new("x-Foo"), "bar");
        req.headers.push(HeaderName::new("i"), "cid");
        req.body = b"hello".to_vec();
        assert_eq!(
            String::from_utf8(req.to_bytes()).unwrap(),
            "NOTIFY sip:a@b;transport=ws SIP/2.0\r\nx-Foo: bar\r\nCall-ID: cid\r\n\
             Content-Length: 5\r\n\r\nhello"
        );
    }

    #[test]
    fn response_and_injection_guard() {
        let mut resp = Response::new(StatusCode::OK);
        resp.headers.push(HeaderName::TO, "<sip:a@b>\r\nEvil: 1");
        assert_eq!(
            String::from_utf8(resp.to_bytes()).unwrap(),
            "SIP/2.0 200 OK\r\nTo: <sip:a@b>  Evil: 1\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
