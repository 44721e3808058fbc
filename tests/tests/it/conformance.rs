//! Conformance table: every RFC 4475 message (valid, invalid, valid-but-odd, and the one
//! unclassified file of its archive) and every RFC 5118 message, sent to a real proxy over
//! WebSocket, one message per connection. Each row states the RFC's verdict, the reaction
//! the RFC asks of an element in the proxy's role — a UAS that serves SUBSCRIBE and OPTIONS
//! over a message-framed transport (so the RFCs' UDP advice applies: WebSocket, like UDP,
//! frames each message) — and what the proxy did. The table is printed (shown on failure,
//! or always with `--nocapture`) and always written to `target/conformance.md`.
//!
//! How an outcome is observed without waiting for a timeout: after the message, the client
//! sends an OPTIONS (Call-ID `conformance-probe`); everything that arrives before its 200 is
//! the proxy's answer to the message, and nothing at all means the proxy dropped it.

use crate::system;
use conflist_tests::{ServerOptions, SipWsClient};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PROBE: &str = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS probe.invalid;branch=z9hG4bKprobe\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:probe@example.com>;tag=p\r\nCall-ID: conformance-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

/// What the proxy did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    /// Answered with these status codes (one, unless it misbehaved).
    Answered(Vec<u16>),
    /// No answer, and the connection still serves.
    Dropped,
    /// The connection was closed.
    Closed,
}

impl std::fmt::Display for Did {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Did::Answered(codes) => {
                let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
                write!(f, "{}", codes.join(" + "))
            }
            Did::Dropped => f.write_str("dropped"),
            Did::Closed => f.write_str("closed"),
        }
    }
}

/// What the RFC allows an element in our role to do.
#[derive(Debug, Clone, Copy)]
enum Allowed {
    /// One of these responses.
    Status(&'static [u16]),
    /// Discard it (a response no transaction of ours matches; RFC 3261 §17.1.3, §18.1.2).
    Drop,
    /// No verdict from the RFC: any non-2xx answer or none, as long as nothing breaks.
    NoVerdict,
}

impl Allowed {
    fn admits(self, did: &Did) -> bool {
        match (self, did) {
            (Allowed::Status(codes), Did::Answered(got)) => {
                got.len() == 1 && codes.contains(&got[0])
            }
            (Allowed::Drop, Did::Dropped) => true,
            (Allowed::NoVerdict, Did::Dropped) => true,
            (Allowed::NoVerdict, Did::Answered(got)) => {
                got.len() == 1 && !(200..300).contains(&got[0])
            }
            _ => false,
        }
    }
}

/// One message of the table.
struct Case {
    rfc: &'static str,
    file: &'static str,
    section: &'static str,
    verdict: &'static str,
    /// The reaction the RFC asks of a UAS serving SUBSCRIBE/OPTIONS, in words.
    reaction: &'static str,
    allowed: Allowed,
}

const fn case(
    rfc: &'static str,
    file: &'static str,
    section: &'static str,
    verdict: &'static str,
    reaction: &'static str,
    allowed: Allowed,
) -> Case {
    Case {
        rfc,
        file,
        section,
        verdict,
        reaction,
        allowed,
    }
}

use Allowed::{Drop, NoVerdict, Status};

const NOT_SERVED: &str = "parse; the method is not served: 405 with Allow (RFC 3261 §8.2.1)";
const UNKNOWN_METHOD: &str =
    "parse; unknown method: 405 with Allow or 501 (RFC 3261 §8.2.1, §21.5.2)";
const OPTIONS_OK: &str = "parse; answer the OPTIONS: 200 (RFC 3261 §11.2)";
const DISCARD: &str = "discard: a response matching no client transaction (RFC 3261 §18.1.2)";
const BAD_REQUEST: &str = "should respond 400 Bad Request";

/// RFC 4475, in section order (file names as in its Appendix A archive).
#[rustfmt::skip]
const RFC4475: &[Case] = &[
    case("4475", "valid/wsinv.dat", "3.1.1.1", "valid", "parse; INVITE is not served: 405 (RFC 3261 §8.2.1), or, as its To-tag names no dialog, 481 (§12.2.2)", Status(&[405, 481])),
    case("4475", "valid/intmeth.dat", "3.1.1.2", "valid", UNKNOWN_METHOD, Status(&[405, 501])),
    case("4475", "valid/esc01.dat", "3.1.1.3", "valid", NOT_SERVED, Status(&[405])),
    case("4475", "valid/escnull.dat", "3.1.1.4", "valid", NOT_SERVED, Status(&[405])),
    case("4475", "valid/esc02.dat", "3.1.1.5", "valid", "parse; RE%47IST%45R is an unknown method, not REGISTER: 405 or 501", Status(&[405, 501])),
    case("4475", "valid/lwsdisp.dat", "3.1.1.6", "valid", OPTIONS_OK, Status(&[200])),
    case("4475", "valid/longreq.dat", "3.1.1.7", "valid", NOT_SERVED, Status(&[405])),
    case("4475", "valid/dblreq.dat", "3.1.1.8", "valid", "process the first request (REGISTER: 405), discard the trailing octets; one answer", Status(&[405])),
    case("4475", "valid/semiuri.dat", "3.1.1.9", "valid", OPTIONS_OK, Status(&[200])),
    case("4475", "valid/transports.dat", "3.1.1.10", "valid", OPTIONS_OK, Status(&[200])),
    case("4475", "valid/mpart01.dat", "3.1.1.11", "valid", NOT_SERVED, Status(&[405])),
    case("4475", "valid/unreason.dat", "3.1.1.12", "valid", DISCARD, Drop),
    case("4475", "valid/noreason.dat", "3.1.1.13", "valid", DISCARD, Drop),
    case("4475", "invalid/badinv01.dat", "3.1.2.1", "invalid", BAD_REQUEST, Status(&[400])),
    case("4475", "invalid/clerr.dat", "3.1.2.2", "invalid", "message-framed transport (as UDP): respond 400 Bad Request", Status(&[400])),
    case("4475", "invalid/ncl.dat", "3.1.2.3", "invalid", "respond with an error (400); message-framed, so the rest is discarded", Status(&[400])),
    case("4475", "invalid/scalar02.dat", "3.1.2.4", "invalid", "respond 400 Bad Request (overlarge CSeq)", Status(&[400])),
    case("4475", "invalid/scalarlg.dat", "3.1.2.5", "invalid", "a response: simply discard it", Drop),
    case("4475", "invalid/quotbal.dat", "3.1.2.6", "invalid", BAD_REQUEST, Status(&[400])),
    case("4475", "invalid/ltgtruri.dat", "3.1.2.7", "invalid", "reject with 400 Bad Request (liberal: ignore the brackets)", Status(&[400, 405])),
    case("4475", "invalid/lwsruri.dat", "3.1.2.8", "invalid", "reject with 400 Bad Request", Status(&[400])),
    case("4475", "invalid/lwsstart.dat", "3.1.2.9", "invalid", "reject with 400 Bad Request (liberal: ignore the extra SP)", Status(&[400, 405])),
    case("4475", "invalid/trws.dat", "3.1.2.10", "invalid", "reject with 400 Bad Request (liberal: ignore the trailing SP)", Status(&[400, 200])),
    case("4475", "invalid/escruri.dat", "3.1.2.11", "invalid", "reject with 400 Bad Request (liberal: ignore the escaped headers)", Status(&[400, 405])),
    case("4475", "invalid/baddate.dat", "3.1.2.12", "invalid", "reject with 400 Bad Request (liberal: ignore the Date)", Status(&[400, 405])),
    case("4475", "invalid/regbadct.dat", "3.1.2.13", "invalid", "reject with 400 Bad Request (liberal: infer the <>)", Status(&[400, 405])),
    case("4475", "invalid/badaspec.dat", "3.1.2.14", "invalid", "reject with 400 Bad Request (liberal: ignore the spaces)", Status(&[400, 200])),
    case("4475", "invalid/baddn.dat", "3.1.2.15", "invalid", "reject with 400 Bad Request (liberal: infer the quotes)", Status(&[400, 200])),
    case("4475", "invalid/badvers.dat", "3.1.2.16", "invalid", "respond 505 Version Not Supported", Status(&[505])),
    case("4475", "invalid/mismatch01.dat", "3.1.2.17", "invalid", "respond 400 Bad Request", Status(&[400])),
    case("4475", "invalid/mismatch02.dat", "3.1.2.18", "invalid", "respond 501 Not Implemented; 400 is also acceptable", Status(&[501, 400])),
    case("4475", "invalid/bigcode.dat", "3.1.2.19", "invalid", "a response: simply drop it", Drop),
    case("4475", "valid/badbranch.dat", "3.2.1", "valid-but-odd", "reject with 400, or fall back to RFC 2543 matching and process (OPTIONS: 200)", Status(&[400, 200])),
    case("4475", "valid/insuf.dat", "3.3.1", "valid-but-odd", "must not break; ideally respond 400 Bad Request", Status(&[400])),
    case("4475", "valid/unkscm.dat", "3.3.2", "valid-but-odd", "reject with 416 Unsupported URI Scheme", Status(&[416])),
    case("4475", "valid/novelsc.dat", "3.3.3", "valid-but-odd", "a scheme never accepted here: 416 Unsupported URI Scheme (404 if some such URIs were)", Status(&[416])),
    case("4475", "valid/unksm2.dat", "3.3.4", "valid-but-odd", "parse; REGISTER is not served here: 405 (a registrar: 400)", Status(&[405, 400])),
    case("4475", "valid/bext01.dat", "3.3.5", "valid-but-odd", "respond 420 Bad Extension with Unsupported listing the Require values (UAS role)", Status(&[420])),
    case("4475", "valid/invut.dat", "3.3.6", "valid-but-odd", "415 from an INVITE server; method inspection comes first here: 405 (RFC 3261 §8.2.1 before §8.2.3)", Status(&[405, 415])),
    case("4475", "valid/regaut01.dat", "3.3.7", "valid-but-odd", "401 from a registrar; REGISTER is not served here: 405", Status(&[405, 401])),
    case("4475", "valid/multi01.dat", "3.3.8", "valid-but-odd", "respond 400 Bad Request", Status(&[400])),
    case("4475", "valid/mcl01.dat", "3.3.9", "valid-but-odd", "respond with an error (400); message-framed, so the rest is discarded", Status(&[400])),
    case("4475", "valid/bcast.dat", "3.3.10", "valid-but-odd", "parse; a response matching no transaction: discard", Drop),
    case("4475", "valid/zeromf.dat", "3.3.11", "valid-but-odd", "an endpoint processes it as if Max-Forwards were positive: OPTIONS 200", Status(&[200])),
    case("4475", "valid/cparam01.dat", "3.3.12", "valid-but-odd", NOT_SERVED, Status(&[405])),
    case("4475", "valid/cparam02.dat", "3.3.13", "valid-but-odd", NOT_SERVED, Status(&[405])),
    case("4475", "valid/regescrt.dat", "3.3.14", "valid-but-odd", NOT_SERVED, Status(&[405])),
    case("4475", "valid/sdp01.dat", "3.3.15", "valid-but-odd", "406 from an INVITE server; method inspection comes first here: 405", Status(&[405, 406])),
    case("4475", "valid/inv2543.dat", "3.4.1", "valid-but-odd", "accept for backward compatibility (INVITE: 405), or reject 400", Status(&[405, 400])),
    case("4475", "unclassified/test.dat", "(none)", "unclassified", "no verdict in the RFC (no SIP-Version): no 2xx, nothing breaks", NoVerdict),
];

/// RFC 5118, in section order.
#[rustfmt::skip]
const RFC5118: &[Case] = &[
    case("5118", "ipv6-good.dat", "4.1", "valid", "parse; REGISTER is not served here: 405", Status(&[405])),
    case("5118", "ipv6-bad.dat", "4.2", "invalid", "should respond 400 Bad Request (IPv6 Request-URI without [ ])", Status(&[400])),
    case("5118", "port-ambiguous.dat", "4.3", "valid", "well-formed (the port is part of the address): REGISTER 405", Status(&[405])),
    case("5118", "port-unambiguous.dat", "4.4", "valid", "parse; REGISTER 405", Status(&[405])),
    case("5118", "via-received-param-with-delim.dat", "4.5", "valid", "must parse and continue: BYE in no dialog: 481 (RFC 3261 §12.2.2)", Status(&[481])),
    case("5118", "via-received-param-no-delim.dat", "4.5", "valid", "must parse: OPTIONS 200", Status(&[200])),
    case("5118", "ipv6-in-sdp.dat", "4.6", "valid", "parse; INVITE is not served here: 405", Status(&[405])),
    case("5118", "mult-ip-in-header.dat", "4.7", "valid", "parse every Via: BYE in no dialog: 481", Status(&[481])),
    case("5118", "mult-ip-in-sdp.dat", "4.8", "valid", "parse; INVITE 405", Status(&[405])),
    case("5118", "ipv4-mapped-ipv6.dat", "4.9", "valid", "must parse the mapped addresses: INVITE 405", Status(&[405])),
    case("5118", "ipv6-bug-abnf-3-colons.dat", "4.10", "valid", "must tolerate the RFC 3261 ABNF form: OPTIONS 200", Status(&[200])),
    case("5118", "ipv6-correct-abnf-2-colons.dat", "4.10", "valid", "must accept: OPTIONS 200", Status(&[200])),
];

fn data_dir(rfc: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sip/tests/data/rfc{rfc}"))
}

fn table_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("conformance.md")
}

/// Sends `bytes` on a fresh connection and observes the outcome (see the module doc).
async fn observe(ws_url: &str, bytes: &[u8]) -> Did {
    let mut c = SipWsClient::connect(ws_url).await.expect("connect");
    // SIP is UTF-8 text in practice; the few non-UTF-8 messages (RFC 7118 allows either)
    // go as binary frames.
    let sent = match std::str::from_utf8(bytes) {
        Ok(text) => c.send_text(text).await,
        Err(_) => c.send_binary(bytes).await,
    };
    if sent.is_err() || c.send_text(PROBE).await.is_err() {
        return Did::Closed;
    }
    let mut answers = Vec::new();
    loop {
        let Ok(raw) = c.recv_raw().await else {
            return Did::Closed;
        };
        let text = String::from_utf8_lossy(&raw);
        // Read raw: a 400 may echo an offending header (an overlarge CSeq) verbatim.
        if text.contains("\r\nCall-ID: conformance-probe\r\n") {
            assert!(text.starts_with("SIP/2.0 200 "), "probe answered: {text}");
            break;
        }
        let status: u16 = text.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0);
        answers.push(status);
    }
    if answers.is_empty() {
        Did::Dropped
    } else {
        Did::Answered(answers)
    }
}

#[tokio::test]
async fn rfc4475_and_rfc5118_table() {
    let sys = system(ServerOptions::default()).await;
    let mut table = String::from(
        "# Conformance: RFC 4475 and RFC 5118 messages against conflist-proxy\n\n\
         Role: a UAS serving SUBSCRIBE and OPTIONS over WebSocket (message-framed, as UDP).\n\
         Written by `tests/tests/it/conformance.rs`.\n\n\
         | RFC | § | message | verdict | reaction the RFC asks | proxy did | ok |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for c in RFC4475.iter().chain(RFC5118) {
        let path = data_dir(c.rfc).join(c.file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let did = observe(&sys.proxy.ws_url, &bytes).await;
        let mark = if c.allowed.admits(&did) {
            "✓"
        } else {
            failures.push(format!(
                "RFC {} §{} {}: proxy did {did}, the RFC asks: {}",
                c.rfc, c.section, c.file, c.reaction
            ));
            "✗"
        };
        let _ = writeln!(
            table,
            "| {} | {} | `{}` | {} | {} | {did} | {mark} |",
            c.rfc, c.section, c.file, c.verdict, c.reaction
        );
    }
    let total = RFC4475.len() + RFC5118.len();
    let _ = writeln!(
        table,
        "\n{total} messages; {} as the RFC asks, {} failing.",
        total - failures.len(),
        failures.len()
    );
    let out = table_path();
    let _ = std::fs::create_dir_all(out.parent().expect("target dir"));
    std::fs::write(&out, &table).expect("write the conformance table");
    eprintln!("{table}");
    println!("conformance table written to {}", out.display());

    // Every archived message is in the table, and nothing else.
    for (rfc, dirs) in [
        ("4475", &["valid", "invalid", "unclassified"][..]),
        ("5118", &["."][..]),
    ] {
        let mut files = Vec::new();
        for dir in dirs {
            for e in std::fs::read_dir(data_dir(rfc).join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "dat") {
                    let name = p.file_name().unwrap().to_string_lossy().to_string();
                    files.push(if *dir == "." {
                        name
                    } else {
                        format!("{dir}/{name}")
                    });
                }
            }
        }
        let cases = if rfc == "4475" { RFC4475 } else { RFC5118 };
        files.sort();
        let mut listed: Vec<String> = cases.iter().map(|c| c.file.to_owned()).collect();
        listed.sort();
        assert_eq!(files, listed, "RFC {rfc}: table and data directory differ");
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}
