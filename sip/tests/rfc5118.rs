//! RFC 5118 (IPv6 torture tests) against `parse_message` and `check_request`. The messages
//! are transcribed from the RFC text into `tests/data/rfc5118/` (see its README).

use std::path::PathBuf;

use conflist_sip as sip;

use sip::{Message, ParseError, Via, check_request, parse_message};

fn load(name: &str) -> Vec<u8> {
    let full: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/data/rfc5118",
        &format!("{name}.dat"),
    ]
    .iter()
    .collect();
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn request(name: &str) -> sip::Request {
    match parse_message(&load(name)) {
        Ok(Message::Request(r)) => {
            check_request(&r).unwrap_or_else(|e| panic!("{name}: {e}"));
            r
        }
        other => panic!("{name}: {other:?}"),
    }
}

/// Every message but §4.2 is one a parser must accept (§4.1, §4.3–§4.10).
const ACCEPTED: [&str; 11] = [
    "ipv6-good",
    "port-ambiguous",
    "port-unambiguous",
    "via-received-param-with-delim",
    "via-received-param-no-delim",
    "ipv6-in-sdp",
    "mult-ip-in-header",
    "mult-ip-in-sdp",
    "ipv4-mapped-ipv6",
    "ipv6-bug-abnf-3-colons",
    "ipv6-correct-abnf-2-colons",
];

#[test]
fn the_twelve_files_are_there() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc5118");
    let count = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "dat")
        })
        .count();
    assert_eq!(count, ACCEPTED.len() + 1);
}

#[test]
fn valid_messages_parse_validate_and_survive_printing() {
    for name in ACCEPTED {
        let r = request(name);
        let printed = Message::Request(r.clone()).to_bytes();
        assert_eq!(
            parse_message(&printed),
            Ok(Message::Request(r)),
            "{name}: print/parse"
        );
        // Every Via of every message parses (§4.5, §4.7, §4.9).
        let req = request(name);
        Via::parse_all(&req.headers).unwrap_or_else(|e| panic!("{name}: Via: {e}"));
    }
}

/// §4.2: the Request-URI's IPv6 address lacks its `[` `]`: "should respond with a 400".
#[test]
fn an_undelimited_ipv6_request_uri_is_rejected() {
    assert_eq!(
        parse_message(&load("ipv6-bad")),
        Err(ParseError::BadRequestUri)
    );
}

/// §4.3 / §4.4: the port belongs outside the brackets; inside, it is part of the address.
#[test]
fn ports_inside_and_outside_the_brackets() {
    let ambiguous = request("port-ambiguous");
    assert_eq!(ambiguous.uri.host(), "[2001:db8::10:5070]");
    assert_eq!(ambiguous.uri.port(), None);
    let unambiguous = request("port-unambiguous");
    assert_eq!(unambiguous.uri.host(), "[2001:db8::10]");
    assert_eq!(unambiguous.uri.port(), Some(5070));
}

/// §4.5: `received` with or without brackets; §4.7: mixed families and ports in Via.
#[test]
fn via_hosts_and_received_parameters() {
    let with = Via::parse_all(&request("via-received-param-with-delim").headers).unwrap();
    assert_eq!(with[0].host, "[2001:db8::9:1]");
    assert_eq!(with[0].received(), Some("[2001:db8::9:255]"));
    let without = Via::parse_all(&request("via-received-param-no-delim").headers).unwrap();
    assert_eq!(without[0].received(), Some("2001:db8::9:255"));

    let multi = Via::parse_all(&request("mult-ip-in-header").headers).unwrap();
    let hosts: Vec<(&str, Option<u16>)> = multi.iter().map(|v| (v.host.as_str(), v.port)).collect();
    assert_eq!(
        hosts,
        [
            ("[2001:db8::9:1]", Some(6050)),
            ("192.0.2.1", None),
            ("[2001:db8::9:255]", None)
        ]
    );
    assert_eq!(multi[2].received(), Some("192.0.2.200"));
}

/// §4.6, §4.8, §4.9: the SDP bodies (IPv6 without brackets) are carried untouched.
#[test]
fn sdp_bodies_are_kept() {
    for (name, needle) in [
        ("ipv6-in-sdp", "c=IN IP6 2001:db8::20\r\n"),
        ("mult-ip-in-sdp", "c=IN IP6 2001:db8::1\r\n"),
        ("ipv4-mapped-ipv6", "c=IN IP6 ::ffff:192.0.2.2\r\n"),
    ] {
        let r = request(name);
        assert!(
            String::from_utf8_lossy(&r.body).contains(needle),
            "{name}: body lost {needle:?}"
        );
    }
    let mapped = Via::parse_all(&request("ipv4-mapped-ipv6").headers).unwrap();
    assert_eq!(mapped[0].host, "[::ffff:192.0.2.10]");
    assert_eq!(mapped[0].port, Some(19823));
}

/// §4.10: "an implementation must tolerate both" the RFC 3261 three-colon form and the
/// correct two-colon form.
#[test]
fn both_abnf_forms_are_tolerated() {
    assert_eq!(
        request("ipv6-bug-abnf-3-colons").uri.host(),
        "[2001:db8:::192.0.2.1]"
    );
    assert_eq!(
        request("ipv6-correct-abnf-2-colons").uri.host(),
        "[2001:db8::192.0.2.1]"
    );
}
