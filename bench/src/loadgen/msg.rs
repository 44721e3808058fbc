//! A light, allocation-free scan of the SIP messages the load generator receives (NOTIFYs and
//! responses from a server it talks to, not hostile input), and the 200 that answers a request
//! by copying its Via, From, To, Call-ID and CSeq lines verbatim (RFC 3261 §8.2.6.2).

use memchr::memmem;

/// The start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start<'a> {
    Request { method: &'a [u8] },
    Response { status: u16 },
}

/// The headers this program looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Name {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    Expires,
    SubscriptionState,
    ContentLength,
    WwwAuthenticate,
    ProxyAuthenticate,
    Other,
}

impl Name {
    fn of(name: &[u8]) -> Name {
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if is("via") || is("v") {
            Name::Via
        } else if is("from") || is("f") {
            Name::From
        } else if is("to") || is("t") {
            Name::To
        } else if is("call-id") || is("i") {
            Name::CallId
        } else if is("cseq") {
            Name::CSeq
        } else if is("contact") || is("m") {
            Name::Contact
        } else if is("expires") {
            Name::Expires
        } else if is("subscription-state") {
            Name::SubscriptionState
        } else if is("content-length") || is("l") {
            Name::ContentLength
        } else if is("www-authenticate") {
            Name::WwwAuthenticate
        } else if is("proxy-authenticate") {
            Name::ProxyAuthenticate
        } else {
            Name::Other
        }
    }
}

/// One header field (folded continuation lines included).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header<'a> {
    pub(crate) name: Name,
    pub(crate) value: &'a [u8],
    /// The whole field as received, without its final CRLF.
    pub(crate) raw: &'a [u8],
}

/// A scanned message: the start line, the fields this program uses, the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg<'a> {
    pub(crate) start: Start<'a>,
    /// The header fields (after the start line's CRLF, up to the blank line).
    fields: &'a [u8],
    pub(crate) call_id: Option<&'a [u8]>,
    pub(crate) cseq: Option<(u32, &'a [u8])>,
    pub(crate) from: Option<&'a [u8]>,
    pub(crate) to: Option<&'a [u8]>,
    pub(crate) contact: Option<&'a [u8]>,
    pub(crate) expires: Option<&'a [u8]>,
    pub(crate) sub_state: Option<&'a [u8]>,
    pub(crate) body: &'a [u8],
}

/// Iterates over the header fields of `fields` (CRLF- or LF-terminated lines).
pub(crate) fn headers(fields: &[u8]) -> impl Iterator<Item = Header<'_>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let rest = fields.get(pos..)?;
        if rest.is_empty() {
            return None;
        }
        // The field ends at a line break not followed by SP/HT (folding).
        let mut search = 0;
        let (end, next) = loop {
            match memchr::memchr(b'\n', &rest[search..]) {
                None => break (rest.len(), rest.len()),
                Some(i) => {
                    let nl = search + i;
                    if matches!(rest.get(nl + 1), Some(b' ' | b'\t')) {
                        search = nl + 1;
                        continue;
                    }
                    break (nl, nl + 1);
                }
            }
        };
        pos += next;
        let raw = trim_cr(&rest[..end]);
        let (name, value) = match memchr::memchr(b':', raw) {
            Some(c) => (raw[..c].trim_ascii(), raw[c + 1..].trim_ascii()),
            None => (raw.trim_ascii(), &raw[raw.len()..]),
        };
        Some(Header {
            name: Name::of(name),
            value,
            raw,
        })
    })
    .filter(|h| !h.raw.is_empty())
}

fn trim_cr(s: &[u8]) -> &[u8] {
    s.strip_suffix(b"\r").unwrap_or(s)
}

/// Scans one complete message (one datagram, WebSocket message or framed stream message).
pub(crate) fn scan(raw: &[u8]) -> Option<Msg<'_>> {
    // Leading CRLFs (keep-alives) are not part of the message.
    let start_at = raw.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let raw = &raw[start_at..];
    let (head_len, body_start) = match memmem::find(raw, b"\r\n\r\n") {
        Some(i) => (i + 2, i + 4),
        None => match memmem::find(raw, b"\n\n") {
            Some(i) => (i + 1, i + 2),
            None => (raw.len(), raw.len()),
        },
    };
    let head = &raw[..head_len];
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = trim_cr(&head[..line_end]);
    let fields = head.get(line_end + 1..).unwrap_or_default();
    let start = if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        let code = rest.get(..3)?;
        let status = std::str::from_utf8(code).ok()?.parse().ok()?;
        Start::Response { status }
    } else {
        let sp = memchr::memchr(b' ', line)?;
        if !line.ends_with(b" SIP/2.0") {
            return None;
        }
        Start::Request {
            method: &line[..sp],
        }
    };
    let mut m = Msg {
        start,
        fields,
        call_id: None,
        cseq: None,
        from: None,
        to: None,
        contact: None,
        expires: None,
        sub_state: None,
        body: &raw[body_start..],
    };
    let mut content_length = None;
    for h in headers(fields) {
        let v = Some(h.value);
        match h.name {
            Name::CallId => m.call_id = v,
            Name::CSeq => m.cseq = parse_cseq(h.value),
            Name::From => m.from = v,
            Name::To => m.to = v,
            Name::Contact if m.contact.is_none() => m.contact = v,
            Name::Expires => m.expires = v,
            Name::SubscriptionState => m.sub_state = v,
            Name::ContentLength => content_length = parse_u32(h.value),
            _ => {}
        }
    }
    if let Some(n) = content_length
        && (n as usize) < m.body.len()
    {
        m.body = &m.body[..n as usize];
    }
    Some(m)
}

impl<'a> Msg<'a> {
    /// Every header field in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = Header<'a>> + use<'a> {
        headers(self.fields)
    }

    /// The method of a request.
    #[cfg(test)]
    pub(crate) fn method(&self) -> Option<&'a [u8]> {
        match self.start {
            Start::Request { method } => Some(method),
            Start::Response { .. } => None,
        }
    }
}

fn parse_cseq(v: &[u8]) -> Option<(u32, &[u8])> {
    let sp = v.iter().position(|b| b.is_ascii_whitespace())?;
    Some((parse_u32(&v[..sp])?, v[sp..].trim_ascii()))
}

/// A decimal number (surrounding whitespace allowed).
pub(crate) fn parse_u32(v: &[u8]) -> Option<u32> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Appends `SIP/2.0 <status> <reason>` answering `m` (its Via, From, To, Call-ID and CSeq
/// lines copied as they are) with an empty body.
pub(crate) fn write_response(out: &mut Vec<u8>, m: &Msg<'_>, status: &str) {
    out.extend_from_slice(b"SIP/2.0 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in m.headers() {
        if matches!(
            h.name,
            Name::Via | Name::From | Name::To | Name::CallId | Name::CSeq
        ) {
            out.extend_from_slice(h.raw);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

/// The value of parameter `name` (case-insensitive) of a header value such as a To/From
/// name-addr (parameters after the `>`) or a Subscription-State.
pub(crate) fn param<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let after_uri = match memchr::memrchr(b'>', value) {
        Some(i) => &value[i + 1..],
        None => value,
    };
    for p in after_uri.split(|b| *b == b';').skip(1) {
        let (k, v) = match memchr::memchr(b'=', p) {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &p[p.len()..]),
        };
        if k.trim_ascii().eq_ignore_ascii_case(name.as_bytes()) {
            let v = v.trim_ascii();
            return Some(
                v.strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v),
            );
        }
    }
    None
}

/// The URI of a name-addr (`"x" <sip:a@b;p>;tag=1` → `sip:a@b;p`) or addr-spec.
pub(crate) fn uri_of(value: &[u8]) -> &[u8] {
    if let Some(lt) = memchr::memchr(b'<', value) {
        let rest = &value[lt + 1..];
        return &rest[..memchr::memchr(b'>', rest).unwrap_or(rest.len())];
    }
    let end = memchr::memchr2(b';', b',', value).unwrap_or(value.len());
    value[..end].trim_ascii()
}

/// `Subscription-State: terminated…`.
pub(crate) fn is_terminated(sub_state: &[u8]) -> bool {
    sub_state
        .trim_ascii_start()
        .get(..10)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"terminated"))
}

/// The first element of an XML document is `<root …>` or `<prefix:root …>` (after an XML
/// declaration, comments, processing instructions and a DOCTYPE). `root = "any"` accepts
/// every body.
pub(crate) fn has_root(body: &[u8], root: &str) -> bool {
    if root == "any" {
        return true;
    }
    let mut s = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    loop {
        s = s.trim_ascii_start();
        if s.starts_with(b"<?") {
            let Some(i) = memmem::find(s, b"?>") else {
                return false;
            };
            s = &s[i + 2..];
        } else if s.starts_with(b"<!--") {
            let Some(i) = memmem::find(s, b"-->") else {
                return false;
            };
            s = &s[i + 3..];
        } else if s.starts_with(b"<!") {
            let Some(i) = memchr::memchr(b'>', s) else {
                return false;
            };
            s = &s[i + 1..];
        } else if let Some(tag) = s.strip_prefix(b"<") {
            let end = tag
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/')
                .unwrap_or(tag.len());
            let name = &tag[..end];
            let local = match memchr::memrchr(b':', name) {
                Some(i) => &name[i + 1..],
                None => name,
            };
            return local == root.as_bytes();
        } else {
            return false;
        }
    }
}

/// The body announces a partial document (`state="partial"`).
pub(crate) fn is_partial(body: &[u8]) -> bool {
    memmem::find(body, b"state=\"partial\"").is_some()
        || memmem::find(body, b"state='partial'").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTIFY: &[u8] = b"NOTIFY sip:lg@10.0.0.1:5000;transport=udp SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKabc\r\n\
        v: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKdef, SIP/2.0/UDP 1.2.3.4\r\n\
        To: <sip:user1@example.com>;tag=ft1\r\n\
        f: <sip:user1@example.com>;tag=srv9\r\n\
        i: lgabc.17\r\n\
        CSeq: 3 NOTIFY\r\n\
        Subscription-State: active;expires=599\r\n\
        X-Folded: a,\r\n b\r\n\
        Contact: <sip:127.0.0.1:5072>\r\n\
        Content-Type: application/pidf+xml\r\n\
        l: 12\r\n\r\n<presence/>\nEXTRA";

    #[test]
    fn scans_a_notify() {
        let m = scan(NOTIFY).unwrap();
        assert_eq!(m.method(), Some(&b"NOTIFY"[..]));
        assert_eq!(m.call_id, Some(&b"lgabc.17"[..]));
        assert_eq!(m.cseq, Some((3, &b"NOTIFY"[..])));
        assert_eq!(m.sub_state, Some(&b"active;expires=599"[..]));
        assert_eq!(m.body, b"<presence/>\n", "cut at Content-Length");
        assert_eq!(param(m.from.unwrap(), "tag"), Some(&b"srv9"[..]));
        assert_eq!(param(m.sub_state.unwrap(), "expires"), Some(&b"599"[..]));
        assert_eq!(uri_of(m.contact.unwrap()), b"sip:127.0.0.1:5072");
        let folded = m
            .headers()
            .find(|h| h.raw.starts_with(b"X-Folded"))
            .unwrap();
        assert_eq!(folded.raw, b"X-Folded: a,\r\n b");
        assert!(!is_terminated(m.sub_state.unwrap()));
        assert!(is_terminated(b" Terminated;reason=timeout"));
    }

    #[test]
    fn answers_with_the_copied_lines() {
        let m = scan(NOTIFY).unwrap();
        let mut out = Vec::new();
        write_response(&mut out, &m, "200 OK");
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "SIP/2.0 200 OK\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5072;branch=z9hG4bKabc\r\n\
             v: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKdef, SIP/2.0/UDP 1.2.3.4\r\n\
             To: <sip:user1@example.com>;tag=ft1\r\n\
             f: <sip:user1@example.com>;tag=srv9\r\n\
             i: lgabc.17\r\n\
             CSeq: 3 NOTIFY\r\n\
             Content-Length: 0\r\n\r\n"
        );
        // The project's parser agrees it is a well-formed response.
        let parsed = sip::parse_message(&out).unwrap();
        assert_eq!(parsed.headers().get_all(&sip::HeaderName::VIA).count(), 2);
        let r = scan(&out).unwrap();
        assert_eq!(r.start, Start::Response { status: 200 });
        assert_eq!(r.body, b"");
    }

    #[test]
    fn scans_responses_and_lf_only_messages() {
        let raw = b"SIP/2.0 401 Unauthorized\nCall-ID: x\nCSeq: 1 SUBSCRIBE\n\
            WWW-Authenticate: Digest realm=\"example.com\", nonce=\"n\"\n\
            WWW-Authenticate: Digest realm=\"example.com\", nonce=\"m\", algorithm=SHA-256\n\
            Content-Length: 0\n\n";
        let m = scan(raw).unwrap();
        assert_eq!(m.start, Start::Response { status: 401 });
        let challenges: Vec<_> = m
            .headers()
            .filter(|h| h.name == Name::WwwAuthenticate)
            .map(|h| h.value)
            .collect();
        assert_eq!(challenges.len(), 2);
        assert!(challenges[1].ends_with(b"SHA-256"));
        assert!(scan(b"garbage").is_none());
        assert!(scan(b"\r\n\r\n").is_none());
        assert!(scan(b"SIP/2.0 2").is_none());
    }

    #[test]
    fn roots_and_partials() {
        assert!(has_root(
            b"<?xml version=\"1.0\"?>\n<conference-list xmlns=\"x\">",
            "conference-list"
        ));
        assert!(has_root(b"<cl:conference-list/>", "conference-list"));
        assert!(has_root(
            b"\xEF\xBB\xBF<!-- c --><!DOCTYPE x>\r\n<presence entity=\"a\">",
            "presence"
        ));
        assert!(!has_root(b"<conference-listing>", "conference-list"));
        assert!(!has_root(b"<presence>", "conference-list"));
        assert!(!has_root(b"", "conference-list"));
        assert!(has_root(b"", "any"));
        assert!(is_partial(
            b"<conference-list version=\"3\" state=\"partial\">"
        ));
        assert!(!is_partial(b"<conference-list state=\"full\">"));
    }

    #[test]
    fn params_and_uris() {
        assert_eq!(param(b"<sip:a@b;tag=x>;tag=y", "tag"), Some(&b"y"[..]));
        assert_eq!(param(b"<sip:a@b;tag=x>", "tag"), None);
        assert_eq!(param(b"sip:a@b;TAG = z ;x", "tag"), Some(&b"z"[..]));
        assert_eq!(
            uri_of(b"\"A\" <sip:a@b;transport=ws>;expires=3"),
            b"sip:a@b;transport=ws"
        );
        assert_eq!(uri_of(b"sip:a@b;transport=udp"), b"sip:a@b");
        assert_eq!(parse_u32(b" 42 "), Some(42));
        assert_eq!(parse_u32(b"4x"), None);
    }
}
