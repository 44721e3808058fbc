//! RFC 4475 torture tests against `parse_message` and `check_request`.

use std::path::PathBuf;

use conflist_sip as sip;

use sip::{Message, Method, ParseError, ValidationError, check_request, framing, parse_message};

fn load(path: &str) -> Vec<u8> {
    let full: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/data/rfc4475", path]
        .iter()
        .collect();
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Parse + validate (requests only).
fn verdict(bytes: &[u8]) -> Result<Message, String> {
    let msg = parse_message(bytes).map_err(|e| format!("parse: {e}"))?;
    if let Message::Request(r) = &msg {
        check_request(r).map_err(|e| format!("validate: {e}"))?;
    }
    Ok(msg)
}

/// RFC 4475 §3.1.1: the 13 valid messages.
const VALID: [&str; 13] = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "longreq",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "unreason",
    "noreason",
];

#[test]
fn valid_messages_parse_and_validate() {
    for name in VALID {
        let bytes = load(&format!("valid/{name}.dat"));
        if let Err(e) = verdict(&bytes) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn invalid_messages_are_rejected() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475/invalid");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(verdict(&bytes).is_err(), "{} was accepted", path.display());
        count += 1;
    }
    assert_eq!(count, 19);
}

#[test]
fn invalid_responses_fail_at_parse() {
    assert_eq!(
        parse_message(&load("invalid/bigcode.dat")),
        Err(ParseError::BadStatusCode)
    );
    assert_eq!(
        parse_message(&load("invalid/scalarlg.dat")),
        Err(ParseError::BadCSeq)
    );
}

#[test]
fn invalid_messages_fail_for_the_right_reason() {
    let parse_errors = [
        ("badvers", ParseError::VersionNotSupported),
        ("clerr", ParseError::BodyTooShort),
        ("ncl", ParseError::BadContentLength),
        ("ltgtruri", ParseError::BadRequestUri),
        ("escruri", ParseError::BadRequestUri),
        ("lwsruri", ParseError::BadStartLine),
        ("lwsstart", ParseError::BadStartLine),
        ("trws", ParseError::BadStartLine),
        ("baddn", ParseError::Incomplete),
    ];
    for (name, err) in parse_errors {
        assert_eq!(
            parse_message(&load(&format!("invalid/{name}.dat"))),
            Err(err),
            "{name}"
        );
    }
    let validation_errors = [
        ("badaspec", ValidationError::Bad("To")),
        ("baddate", ValidationError::Bad("Date")),
        ("badinv01", ValidationError::Bad("Via")),
        ("mismatch01", ValidationError::CSeqMethodMismatch),
        ("mismatch02", ValidationError::CSeqMethodMismatch),
        ("quotbal", ValidationError::Bad("To")),
        ("regbadct", ValidationError::Bad("Contact")),
        ("scalar02", ValidationError::Bad("CSeq")),
    ];
    for (name, err) in validation_errors {
        let Ok(Message::Request(r)) = parse_message(&load(&format!("invalid/{name}.dat"))) else {
            panic!("{name} should parse");
        };
        assert_eq!(check_request(&r), Err(err), "{name}");
    }
}

#[test]
fn baddn_with_final_crlf_is_still_rejected() {
    let mut bytes = load("invalid/baddn.dat");
    bytes.extend_from_slice(b"\r\n");
    let Ok(Message::Request(r)) = parse_message(&bytes) else {
        panic!("baddn + CRLF should parse");
    };
    assert_eq!(check_request(&r), Err(ValidationError::Bad("From")));
}

#[test]
fn odd_but_valid_messages_parse_and_validate() {
    for name in [
        "unkscm",
        "novelsc",
        "unksm2",
        "bext01",
        "invut",
        "regaut01",
        "zeromf",
        "cparam01",
        "cparam02",
        "sdp01",
        "badbranch",
        "regescrt",
    ] {
        if let Err(e) = verdict(&load(&format!("valid/{name}.dat"))) {
            panic!("{name}: {e}");
        }
    }
    let Ok(Message::Request(r)) = parse_message(&load("valid/unkscm.dat")) else {
        panic!("unkscm should parse");
    };
    assert!(!r.uri.is_sip());
    assert_eq!(r.uri.scheme(), "nobodyknowsthisscheme");
    assert!(matches!(
        verdict(&load("valid/bcast.dat")),
        Ok(Message::Response(_))
    ));
}

#[test]
fn odd_messages_with_expected_failures() {
    let Ok(Message::Request(insuf)) = parse_message(&load("valid/insuf.dat")) else {
        panic!("insuf should parse");
    };
    assert_eq!(check_request(&insuf), Err(ValidationError::Missing("From")));
    assert_eq!(
        parse_message(&load("valid/mcl01.dat")),
        Err(ParseError::BadContentLength)
    );
    let Ok(Message::Request(multi)) = parse_message(&load("valid/multi01.dat")) else {
        panic!("multi01 should parse");
    };
    assert!(matches!(
        check_request(&multi),
        Err(ValidationError::Duplicate(_))
    ));
}

#[test]
fn nothing_panics_on_any_file() {
    for dir in ["valid", "invalid", "unclassified"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/rfc4475")
            .join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let _ = verdict(&bytes);
            let _ = framing::parse_stream(&bytes, 65_536);
        }
    }
    // RFC 2543 syntax (§3.4.1): the RFC only asks for no crash; we happen to accept it.
    assert!(verdict(&load("valid/inv2543.dat")).is_ok());
    // Not classified by the RFC: request line without SIP-Version.
    assert_eq!(
        parse_message(&load("unclassified/test.dat")),
        Err(ParseError::BadStartLine)
    );
}

#[test]
fn selected_details() {
    // §3.1.1.8: two requests in one datagram; only the first is taken.
    let Ok(Message::Request(r)) = parse_message(&load("valid/dblreq.dat")) else {
        panic!("dblreq should parse");
    };
    assert_eq!(r.method, Method::Register);
    assert!(r.body.is_empty());

    // §3.1.1.1: folded, spaced, case-mangled headers.
    let Ok(Message::Request(r)) = parse_message(&load("valid/wsinv.dat")) else {
        panic!("wsinv should parse");
    };
    let vias = sip::Via::parse_all(&r.headers).unwrap();
    let hosts: Vec<_> = vias.iter().map(|v| v.host.as_str()).collect();
    assert_eq!(
        hosts,
        ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    );
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    let from = sip::NameAddr::parse(r.headers.get(&sip::HeaderName::FROM).unwrap()).unwrap();
    assert_eq!(from.display_name.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(sip::max_forwards(&r.headers), Ok(Some(68)));
    assert_eq!(r.body.len(), 150);

    // §3.1.1.7: 34 Via lines in every spelling.
    let Ok(Message::Request(r)) = parse_message(&load("valid/longreq.dat")) else {
        panic!("longreq should parse");
    };
    assert_eq!(sip::Via::parse_all(&r.headers).unwrap().len(), 34);

    // §3.1.1.13: empty reason phrase.
    let Ok(Message::Response(resp)) = parse_message(&load("valid/noreason.dat")) else {
        panic!("noreason should parse");
    };
    assert_eq!(resp.reason, "");

    // §3.1.1.11: binary multipart body is kept exactly.
    let Ok(Message::Request(r)) = parse_message(&load("valid/mpart01.dat")) else {
        panic!("mpart01 should parse");
    };
    assert_eq!(r.body.len(), 553);
}

#[test]
fn valid_messages_survive_a_print_parse_cycle() {
    fn without_length(mut m: Message) -> Message {
        m.headers_mut().remove(&sip::HeaderName::CONTENT_LENGTH);
        m
    }
    for name in VALID {
        let msg = parse_message(&load(&format!("valid/{name}.dat"))).unwrap();
        let printed = msg.to_bytes();
        let again = parse_message(&printed).unwrap();
        assert_eq!(again.to_bytes(), printed, "{name}: printing is not stable");
        // Printing moves Content-Length last; everything else is unchanged.
        assert_eq!(without_length(again), without_length(msg), "{name}");
    }
}
