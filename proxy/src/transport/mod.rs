//! Transports: SIP over WebSocket (RFC 7118, plain and TLS), UDP, TCP and TLS (RFC 3261
//! §18). Each one only frames messages ([`wire`]); the flow driver in [`connection`] and
//! the sans-IO dialog core behind it are the same for all of them.
//!
//! - [`listener`]: our accept loop: TLS, the HTTP/1.1 upgrade under a handshake deadline,
//!   per-address connection limits at accept, and tracking of every connection task.
//! - [`ws`]: the upgrade handler (subprotocol `sip`, Origin, `X-Forwarded-For`, caps).
//! - [`wire`]: each transport's framing behind one trait: WebSocket, TCP/TLS, UDP.
//! - [`connection`]: one flow over any wire: SIP in, dialog actions out, keep-alive, idle.
//! - [`sip_listener`]: the SIP-over-TCP and SIP-over-TLS accept loop.
//! - [`udp`]: the SIP-over-UDP socket and its flows, one per source address.
//! - [`limits`]: the pure per-client limit state (CIDR, origins, counters, token buckets).
//! - [`tls`]: the rustls server configuration from PEM files.

pub mod connection;
pub mod limits;
pub mod listener;
pub mod sip_listener;
pub mod tls;
pub mod udp;
pub mod wire;
pub mod ws;

use sip::{HeaderName, NameAddr, Request, Via};
use std::net::SocketAddr;

/// RFC 3261 §18.2.1 and RFC 3581: note where the request really came from in its top Via
/// (`received` when the sent-by host differs from the source address or the client asked
/// for `rport`, which is filled in). Browser clients put an unresolvable `*.invalid` host there.
pub fn stamp_via(req: &mut Request, peer: SocketAddr) {
    let Some(first) = req.headers.get_split(&HeaderName::VIA).next() else {
        return;
    };
    let Ok(mut via) = Via::parse(first) else {
        return;
    };
    let ip = peer.ip().to_string();
    // RFC 3581 §4: with `rport`, `received` is added even when it equals the sent-by host.
    let rport = via.params.contains("rport");
    if rport || via.host.trim_start_matches('[').trim_end_matches(']') != ip {
        via.params.set("received", Some(&ip));
    }
    if rport {
        via.params.set("rport", Some(&peer.port().to_string()));
    }
    replace_first_via(req, &via.to_string());
}

/// Replaces the first Via value, keeping any further values of that line and later lines.
fn replace_first_via(req: &mut Request, top: &str) {
    let all: Vec<String> = req
        .headers
        .get_split(&HeaderName::VIA)
        .map(str::to_owned)
        .collect();
    req.headers.remove(&HeaderName::VIA);
    let mut vias = all.into_iter();
    vias.next();
    let mut rebuilt = Vec::with_capacity(1 + vias.len());
    rebuilt.push(top.to_owned());
    rebuilt.extend(vias);
    // Via must stay first among the headers for readability; position does not matter to SIP.
    let rest: Vec<(HeaderName, String)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.clone(), v.to_owned()))
        .collect();
    let mut headers = sip::Headers::new();
    for v in rebuilt {
        headers.push(HeaderName::VIA, v);
    }
    for (n, v) in rest {
        headers.push(n, v);
    }
    req.headers = headers;
}

/// True for a SUBSCRIBE that would create a dialog (RFC 6665 §4.1.2.1: its To has no tag).
/// A To that does not parse is left to the dialog core, which answers 400.
pub fn is_initial_subscribe(req: &Request) -> bool {
    req.method == sip::Method::Subscribe
        && req
            .headers
            .get(&HeaderName::TO)
            .and_then(|t| NameAddr::parse(t).ok())
            .is_some_and(|to| to.tag().is_none())
}

/// The answer to a request the codec rejected, built from its raw header lines when the five
/// headers a response needs can be found (so the client learns why): `505 Version Not
/// Supported` for a request line with another SIP version (RFC 3261 §8.2.1, §21.5.6; RFC 4475
/// §3.1.2.16), `400` with `reason` otherwise. `None` when no response can be built (no
/// request line, a response, a missing header); the caller then drops the message with a log
/// line. Header lines may be folded or compact; a header block without its final empty line
/// (RFC 4475 §3.1.2.15 as archived) is still read.
pub fn salvage_bad_request(buf: &[u8], reason: &str) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.split("\r\n");
    let start = lines.next()?;
    if start.starts_with("SIP/") {
        return None;
    }
    let version = start.split_whitespace().last()?;
    let (proto, number) = version.split_at_checked(4)?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !proto.eq_ignore_ascii_case("SIP/")
        || !number
            .split_once('.')
            .is_some_and(|(a, b)| numeric(a) && numeric(b))
        || start.split_whitespace().count() < 3
    {
        return None;
    }
    let (code, reason) = crate::dialog::status::unparseable(number != "2.0", reason);
    // (name, value) of the headers a response copies; singletons keep their first value.
    let mut out: Vec<(&str, String)> = Vec::new();
    let mut continuing = false;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if continuing && let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
            continue;
        }
        continuing = false;
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => "Via",
            "from" | "f" => "From",
            "to" | "t" => "To",
            "call-id" | "i" => "Call-ID",
            "cseq" => "CSeq",
            _ => continue,
        };
        if name != "Via" && out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        out.push((name, value.trim().to_owned()));
        continuing = true;
    }
    for needed in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if !out.iter().any(|(n, _)| *n == needed) {
            return None;
        }
    }
    let mut resp = format!("SIP/2.0 {code} {reason}\r\n");
    for (n, v) in &out {
        if v.chars().any(char::is_control) {
            return None;
        }
        if *n == "To" {
            resp.push_str(&format!("To: {}\r\n", with_to_tag(v, &out)));
        } else {
            resp.push_str(&format!("{n}: {v}\r\n"));
        }
    }
    resp.push_str("Content-Length: 0\r\n\r\n");
    Some(resp.into_bytes())
}

/// The To value with a tag (RFC 3261 §8.2.6.2) derived from the request's headers, so a
/// retransmission gets the same one; left as received when it has a tag or does not parse.
fn with_to_tag(to: &str, headers: &[(&str, String)]) -> String {
    match NameAddr::parse(to) {
        Ok(mut addr) if addr.tag().is_none() => {
            let parts = headers.iter().flat_map(|(n, v)| [*n, v.as_str()]);
            addr.set_tag(&crate::dialog::status::stable_tag_of(parts));
            addr.to_string()
        }
        _ => to.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(via: &str) -> Request {
        let raw = format!(
            "OPTIONS sip:x@example.com SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        match sip::parse_message(raw.as_bytes()).unwrap() {
            sip::Message::Request(r) => r,
            sip::Message::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn stamps_received_and_rport_on_the_top_via_only() {
        let mut req = request("SIP/2.0/WSS abc.invalid;branch=z9hG4bK1;rport");
        stamp_via(&mut req, "127.0.0.1:40000".parse().unwrap());
        let vias: Vec<&str> = req.headers.get_split(&HeaderName::VIA).collect();
        assert_eq!(
            vias,
            vec![
                "SIP/2.0/WSS abc.invalid;branch=z9hG4bK1;rport=40000;received=127.0.0.1",
                "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKold"
            ]
        );
    }

    #[test]
    fn rport_brings_received_even_when_the_host_is_the_source() {
        let mut req = request("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport");
        stamp_via(&mut req, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(
            req.headers.get_split(&HeaderName::VIA).next(),
            Some("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1;rport=5060;received=127.0.0.1")
        );
    }

    #[test]
    fn no_received_when_the_host_is_the_source() {
        let mut req = request("SIP/2.0/WS 127.0.0.1:5;branch=z9hG4bK1");
        stamp_via(&mut req, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(
            req.headers.get(&HeaderName::VIA),
            Some("SIP/2.0/WS 127.0.0.1:5;branch=z9hG4bK1")
        );
    }

    fn subscribe(to: &str) -> Request {
        let raw = format!(
            "SUBSCRIBE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK1\r\nFrom: <sip:alice@example.com>;tag=f1\r\nTo: {to}\r\nCall-ID: c1\r\nCSeq: 7 SUBSCRIBE\r\nEvent: conference-list\r\nContent-Length: 0\r\n\r\n"
        );
        match sip::parse_message(raw.as_bytes()).unwrap() {
            sip::Message::Request(r) => r,
            sip::Message::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn only_a_tagless_subscribe_is_initial() {
        assert!(is_initial_subscribe(&subscribe("<sip:alice@example.com>")));
        assert!(!is_initial_subscribe(&subscribe(
            "<sip:alice@example.com>;tag=t9"
        )));
        assert!(!is_initial_subscribe(&request(
            "SIP/2.0/WS h.invalid;branch=z9hG4bK1"
        )));
    }

    #[test]
    fn salvages_a_400_only_when_the_response_headers_are_there() {
        let bad = b"SUBSCRIBE <sip:x@example.com> SIP/2.0\r\nv: SIP/2.0/WS h.invalid;branch=z9hG4bKa\r\nf: <sip:a@example.com>;tag=1\r\nt: <sip:x@example.com>\r\ni: abc\r\nCSeq: 1 SUBSCRIBE\r\n\r\n";
        let resp = String::from_utf8(salvage_bad_request(bad, "Bad Request-URI").unwrap()).unwrap();
        let to_tag = |resp: &str| {
            let to = resp.lines().find_map(|l| l.strip_prefix("To: ")).unwrap();
            NameAddr::parse(to).unwrap().tag().map(str::to_owned)
        };
        let tag = to_tag(&resp).expect("a To-tag");
        assert_eq!(tag.len(), 16);
        assert_eq!(
            resp,
            format!(
                "SIP/2.0 400 Bad Request-URI\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bKa\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>;tag={tag}\r\nCall-ID: abc\r\nCSeq: 1 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n"
            )
        );
        // Stable per request, so a retransmission gets the same To-tag.
        assert_eq!(
            salvage_bad_request(bad, "Bad Request-URI").unwrap(),
            resp.as_bytes()
        );
        assert!(salvage_bad_request(b"\x00\xff garbage", "x").is_none());
        assert!(salvage_bad_request(b"SIP/2.0 200 OK\r\nVia: a\r\n\r\n", "x").is_none());
        let no_call_id =
            b"SUBSCRIBE sip:x@e SIP/2.0\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCSeq: 1 SUBSCRIBE\r\n\r\n";
        assert!(salvage_bad_request(no_call_id, "x").is_none());
        // No SIP-Version at all: not recognisably SIP, dropped.
        let no_version =
            b"INVITE sip:x@e\r\nVia: a\r\nFrom: b\r\nTo: c\r\nCall-ID: d\r\nCSeq: 1 INVITE\r\n\r\n";
        assert!(salvage_bad_request(no_version, "x").is_none());
    }

    #[test]
    fn another_sip_version_gets_505() {
        // RFC 4475 §3.1.2.16 (badvers.dat).
        let bad = b"OPTIONS sip:t.watson@example.org SIP/7.0\r\nVia:     SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\nMax-Forwards:     70\r\nFrom:    A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe\r\nTo:      T. Watson <sip:t.watson@example.org>\r\nCall-ID: badvers.31417@c.example.com\r\nCSeq:    1 OPTIONS\r\nl: 0\r\n\r\n";
        let resp = String::from_utf8(salvage_bad_request(bad, "ignored").unwrap()).unwrap();
        assert!(
            resp.starts_with("SIP/2.0 505 Version Not Supported\r\n"),
            "{resp}"
        );
        assert!(resp.contains("\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\n"));
        assert!(resp.contains("\r\nCSeq: 1 OPTIONS\r\n"));
        let sip::Message::Response(parsed) = sip::parse_message(resp.as_bytes()).unwrap() else {
            panic!("not a response");
        };
        assert_eq!(parsed.status.as_u16(), 505);
        // The version is case-insensitive (RFC 3261 §7.1): sip/2.0 is not another version.
        let lower = String::from_utf8_lossy(bad).replacen("SIP/7.0\r\n", "sip/2.0\r\n", 1);
        let resp = salvage_bad_request(lower.as_bytes(), "Bad Request").unwrap();
        assert!(resp.starts_with(b"SIP/2.0 400 Bad Request\r\n"));
    }

    #[test]
    fn salvage_reads_folded_unterminated_and_padded_heads() {
        // Trailing spaces after the version (RFC 4475 §3.1.2.10), a folded Via, duplicate
        // singletons (first kept) and no final empty line (§3.1.2.15 as archived).
        let bad = b"OPTIONS sip:x@example.com SIP/2.0  \r\nVia: SIP/2.0/UDP h.example.com\r\n ;branch=z9hG4bKf\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>;tag=2\r\nTo: <sip:y@example.com>\r\nCall-ID: c\r\nno colon here\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n";
        let resp = String::from_utf8(salvage_bad_request(bad, "Bad Request").unwrap()).unwrap();
        assert_eq!(
            resp,
            "SIP/2.0 400 Bad Request\r\nVia: SIP/2.0/UDP h.example.com ;branch=z9hG4bKf\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:x@example.com>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
