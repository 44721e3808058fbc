//! Conformance table: every RFC 4475 message (valid, invalid, valid-but-odd, and the one
//! unclassified file of its archive) and every RFC 5118 message, sent to a real proxy over
//! WebSocket, one message per connection. Each row states the RFC's verdict, the reaction
//! the RFC asks of an element in the proxy's role — a UAS that serves SUBSCRIBE and OPTIONS
//! over a message-framed transport (so the RFCs' UDP advice applies: WebSocket, like UDP,
//! frames each message) — and what the proxy did. The table is printed (shown on failure,
//! or always with `--nocapture`) and always written to `target/conformance.md`.
//!
//! The same table runs over UDP (one socket per message; `target/conformance-udp.md`) and
//! over TCP (one connection per message; `target/conformance-tcp.md`). On a stream the
//! framing is Content-Length's (RFC 3261 §18.3), which changes the allowed reaction to a few
//! messages ([`STREAM_RULES`]); after an invalid message the proxy may close the connection.
//! Over UDP and TCP, after every row that ended in a close or a wait, a fresh socket or
//! connection must still get its OPTIONS answered (the listener still serves), and after
//! the table the proxy must still be running.
//!
//! How an outcome is observed without waiting for a timeout: after the message, the client
//! sends an OPTIONS (Call-ID `conformance-probe`); everything that arrives before its 200 is
//! the proxy's answer to the message, and nothing at all means the proxy dropped it.

use crate::system;
use conflist_tests::transport_client::{SipClient, Wire};
use conflist_tests::{
    Proxy, ServerOptions, SipDgramClient, SipStreamClient, SipWsClient, TestDb, spawn_proxy,
    spawn_server,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const PROBE: &str = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS probe.invalid;branch=z9hG4bKprobe\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:probe@example.com>;tag=p\r\nCall-ID: conformance-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

/// What the proxy did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Did {
    /// Answered with these status codes (one, unless it misbehaved).
    Answered(Vec<u16>),
    /// No answer, and the connection still serves.
    Dropped,
    /// The connection was closed, after these answers (none over WebSocket, where an answer
    /// before a close is not told apart).
    Closed(Vec<u16>),
    /// After these answers the probe got no answer within [`PROBE_WAIT`], the connection
    /// open: on a stream the proxy waits for the rest of a message.
    Waiting(Vec<u16>),
}

fn codes(codes: &[u16]) -> String {
    let codes: Vec<String> = codes.iter().map(u16::to_string).collect();
    codes.join(" + ")
}

impl std::fmt::Display for Did {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Did::Answered(got) => f.write_str(&codes(got)),
            Did::Dropped => f.write_str("dropped"),
            Did::Closed(got) if got.is_empty() => f.write_str("closed"),
            Did::Closed(got) => write!(f, "{}, then closed", codes(got)),
            Did::Waiting(got) if got.is_empty() => f.write_str("no answer, waiting"),
            Did::Waiting(got) => write!(f, "{}, then waiting", codes(got)),
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
    /// Exactly these answers, in order, each one of its set (a stream carrying two messages);
    /// the connection may be closed after them.
    Answers(&'static [&'static [u16]]),
    /// A stream the message leaves undelimited: no 2xx, and the connection closed.
    Unframed,
    /// A stream whose message is not complete yet: no 2xx; the proxy waits for the rest or
    /// closes the connection.
    Incomplete,
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
            (Allowed::Answers(sets), Did::Answered(got) | Did::Closed(got)) => {
                got.len() == sets.len() && got.iter().zip(sets).all(|(g, set)| set.contains(g))
            }
            (Allowed::Unframed, Did::Closed(got))
            | (Allowed::Incomplete, Did::Closed(got) | Did::Waiting(got)) => no_2xx(got),
            _ => false,
        }
    }
}

fn no_2xx(codes: &[u16]) -> bool {
    !codes.iter().any(|c| (200..300).contains(c))
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

use Allowed::{Answers, Drop, Incomplete, NoVerdict, Status, Unframed};

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

/// Where a byte stream changes the reaction (TCP). A datagram or a WebSocket message is
/// delimited by its transport; on a stream the Content-Length header field delimits the
/// message and MUST be present (RFC 3261 §18.3, §20.14), so a message whose Content-Length
/// is missing, ambiguous or wrong leaves the stream undelimited.
#[rustfmt::skip]
const STREAM_RULES: &[(&str, &str, Allowed)] = &[
    ("valid/dblreq.dat", "on a stream Content-Length: 0 ends the REGISTER and the INVITE after it is the next message (RFC 3261 §18.3): REGISTER 405, then INVITE 405; the INVITE's Content-Length: 150 leaves 5 octets of its body over (`C` CRLF CRLF), no message: discarded, or the connection closed", Answers(&[&[405], &[405]])),
    ("valid/inv2543.dat", "no Content-Length, which a stream MUST carry (RFC 3261 §18.3, §20.14): the body cannot be delimited; error answers only, connection closed", Unframed),
    ("valid/mcl01.dat", "two Content-Length values: the stream cannot be delimited (RFC 3261 §18.3, RFC 4475 §3.3.9); error answers only, connection closed", Unframed),
    ("invalid/ncl.dat", "negative Content-Length: the stream cannot be delimited (RFC 3261 §18.3, RFC 4475 §3.1.2.3); error answers only, connection closed", Unframed),
    ("invalid/clerr.dat", "Content-Length beyond the body: over a stream the receiver can only wait for the rest and close the connection if it never comes (RFC 4475 §3.1.2.2); the probe becomes body; no 2xx", Incomplete),
    ("invalid/baddn.dat", "no empty line ends the head, so over a stream it runs on into the next message, the probe (RFC 3261 §18.3): an error answer or none, then the proxy waits or closes; no 2xx", Incomplete),
];

/// The transport a table runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Udp,
    Tcp,
}

/// The reaction asked of the proxy for one message over one transport.
struct Expect {
    reaction: String,
    allowed: Allowed,
    /// The connection may be closed after (or instead of) an allowed answer.
    close_ok: bool,
}

impl Expect {
    fn of(c: &Case, t: Transport) -> Expect {
        if t == Transport::Tcp {
            if let Some((_, reaction, allowed)) = STREAM_RULES.iter().find(|r| r.0 == c.file) {
                return Expect {
                    reaction: format!("stream: {reaction}"),
                    allowed: *allowed,
                    close_ok: false,
                };
            }
            // An invalid message may not yield the Content-Length that frames the stream
            // (RFC 3261 §18.3), so the connection may be closed after it.
            if matches!(c.verdict, "invalid" | "unclassified") {
                return Expect {
                    reaction: format!(
                        "{}; stream: the connection may then be closed (RFC 3261 §18.3)",
                        c.reaction
                    ),
                    allowed: c.allowed,
                    close_ok: true,
                };
            }
        }
        Expect {
            reaction: c.reaction.to_owned(),
            allowed: c.allowed,
            close_ok: false,
        }
    }

    fn admits(&self, did: &Did) -> bool {
        if self.allowed.admits(did) {
            return true;
        }
        match did {
            Did::Closed(got) if self.close_ok => {
                got.is_empty() || self.allowed.admits(&Did::Answered(got.clone()))
            }
            _ => false,
        }
    }
}

fn data_dir(rfc: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../sip/tests/data/rfc{rfc}"))
}

fn table_path(name: &str) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join(name)
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
        return Did::Closed(Vec::new());
    }
    let mut answers = Vec::new();
    loop {
        let Ok(raw) = c.recv_raw().await else {
            return Did::Closed(Vec::new());
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

/// How long a UDP or TCP client waits for the probe's answer before the row counts as
/// [`Did::Waiting`] (a stream whose message is incomplete never answers it).
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// After the probe's 200 over UDP, how long to keep listening for answers to the message
/// that the proxy, serving datagrams concurrently, may have sent after it.
const UDP_STRAGGLERS: Duration = Duration::from_millis(100);

/// An OPTIONS from `c` with a branch of its own; returns it and the branch.
fn probe<W: Wire>(c: &mut SipClient<W>) -> (String, String) {
    let branch = c.next_branch();
    let text = format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:probe@example.com>;tag=p\r\nCall-ID: conformance-probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        c.via(&branch)
    );
    (text, branch)
}

/// The 200 to the probe with `branch` (read raw: other answers may not parse).
fn is_probe_answer(raw: &[u8], branch: &str) -> bool {
    let text = String::from_utf8_lossy(raw);
    text.starts_with("SIP/2.0 200 ")
        && text.contains("\r\nCall-ID: conformance-probe\r\n")
        && text.contains(branch)
}

fn status_of(raw: &[u8]) -> u16 {
    String::from_utf8_lossy(raw)
        .get(8..11)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sends `bytes` and then the probe on `c` (a fresh socket or connection) and observes the
/// outcome.
async fn observe_on<W: Wire>(mut c: SipClient<W>, bytes: &[u8]) -> Did {
    let (probe, branch) = probe(&mut c);
    if c.send(bytes).await.is_err() || c.send_text(&probe).await.is_err() {
        return Did::Closed(Vec::new());
    }
    let mut answers = Vec::new();
    loop {
        match c.recv_raw_within(PROBE_WAIT).await {
            Err(_) => return Did::Closed(answers),
            Ok(None) => return Did::Waiting(answers),
            Ok(Some(raw)) if is_probe_answer(&raw, &branch) => break,
            Ok(Some(raw)) => answers.push(status_of(&raw)),
        }
    }
    if c.transport() == "UDP" {
        while let Ok(Some(raw)) = c.recv_raw_within(UDP_STRAGGLERS).await {
            answers.push(status_of(&raw));
        }
    }
    if answers.is_empty() {
        Did::Dropped
    } else {
        Did::Answered(answers)
    }
}

/// A fresh client's OPTIONS gets its 200: the listener still serves.
async fn answers_a_probe<W: Wire>(mut c: SipClient<W>) -> bool {
    let (probe, branch) = probe(&mut c);
    if c.send_text(&probe).await.is_err() {
        return false;
    }
    matches!(c.recv_raw().await, Ok(raw) if is_probe_answer(&raw, &branch))
}

/// Runs every message through `observe`, checking with `alive` after each close or wait
/// that the listener still answers; writes the table to `target/{file}` and returns the
/// failures.
async fn run_table(
    t: Transport,
    role: &str,
    file: &str,
    mut observe: impl AsyncFnMut(&[u8]) -> Did,
    mut alive: impl AsyncFnMut() -> bool,
) -> Vec<String> {
    let mut table = format!(
        "# Conformance: RFC 4475 and RFC 5118 messages against conflist-proxy\n\n\
         {role}\n\
         Written by `tests/tests/it/conformance.rs`.\n\n\
         | RFC | § | message | verdict | reaction the RFC asks | proxy did | ok |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for c in RFC4475.iter().chain(RFC5118) {
        let path = data_dir(c.rfc).join(c.file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let expect = Expect::of(c, t);
        let did = observe(&bytes).await;
        let mut shown = did.to_string();
        let mut ok = expect.admits(&did);
        if !ok {
            failures.push(format!(
                "RFC {} §{} {} over {t:?}: proxy did {did}, the RFC asks: {}",
                c.rfc, c.section, c.file, expect.reaction
            ));
        }
        if matches!(did, Did::Closed(_) | Did::Waiting(_)) && !alive().await {
            failures.push(format!(
                "RFC {} §{} {} over {t:?}: afterwards a fresh client's OPTIONS went unanswered",
                c.rfc, c.section, c.file
            ));
            shown.push_str("; listener stopped answering");
            ok = false;
        }
        let mark = if ok { "✓" } else { "✗" };
        let _ = writeln!(
            table,
            "| {} | {} | `{}` | {} | {} | {shown} | {mark} |",
            c.rfc, c.section, c.file, c.verdict, expect.reaction
        );
    }
    let total = RFC4475.len() + RFC5118.len();
    let _ = writeln!(
        table,
        "\n{total} messages; {} as the RFC asks, {} failing.",
        total - failures.len(),
        failures.len()
    );
    let out = table_path(file);
    let _ = std::fs::create_dir_all(out.parent().expect("target dir"));
    std::fs::write(&out, &table).expect("write the conformance table");
    eprintln!("{table}");
    println!("conformance table written to {}", out.display());
    failures
}

/// Every archived message is in the table, and nothing else.
fn assert_the_tables_cover_the_archive() {
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
    for (file, _, _) in STREAM_RULES {
        assert!(
            RFC4475.iter().chain(RFC5118).any(|c| c.file == *file),
            "stream rule for {file}, which is not in the table"
        );
    }
}

#[tokio::test]
async fn rfc4475_and_rfc5118_table() {
    let sys = system(ServerOptions::default()).await;
    let url = sys.proxy.ws_url.clone();
    let failures = run_table(
        Transport::Ws,
        "Role: a UAS serving SUBSCRIBE and OPTIONS over WebSocket (message-framed, as UDP).",
        "conformance.md",
        async |bytes: &[u8]| observe(&url, bytes).await,
        async || true,
    )
    .await;
    assert_the_tables_cover_the_archive();
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

/// A server and a proxy with `listener` (`--udp-listen` or `--tcp-listen`) on.
async fn proxy_with(listener: &str) -> (TestDb, conflist_tests::Server, Proxy) {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .expect("server");
    let proxy = spawn_proxy(&server, &[listener, "127.0.0.1:0"])
        .await
        .expect("proxy");
    (db, server, proxy)
}

/// The proxy process is still running and its listener answers.
async fn still_serves(proxy: &mut Proxy, alive: bool, failures: &mut Vec<String>) {
    if let Ok(Some(status)) = proxy.child.try_wait() {
        failures.push(format!("the proxy exited: {status}"));
    } else if !alive {
        failures.push("after the table a fresh client's OPTIONS went unanswered".to_owned());
    }
}

/// Acceptance 4 over UDP: one socket per message, the probe from the same socket.
#[tokio::test]
async fn rfc4475_and_rfc5118_table_over_udp() {
    let (_db, _server, mut proxy) = proxy_with("--udp-listen").await;
    let addr = proxy
        .udp
        .clone()
        .expect("READY line names the udp listener");
    let mut failures = run_table(
        Transport::Udp,
        "Role: a UAS serving SUBSCRIBE and OPTIONS over UDP (RFC 3261 §18: one message per \
         datagram). Each message from a fresh socket, the probe from the same socket; answers \
         are expected at that socket (the request's source address and port).",
        "conformance-udp.md",
        async |bytes: &[u8]| observe_on(SipDgramClient::udp(&addr).await.unwrap(), bytes).await,
        async || answers_a_probe(SipDgramClient::udp(&addr).await.unwrap()).await,
    )
    .await;
    let alive = answers_a_probe(SipDgramClient::udp(&addr).await.unwrap()).await;
    still_serves(&mut proxy, alive, &mut failures).await;
    assert!(
        failures.is_empty(),
        "conformance failures over UDP:\n{}",
        failures.join("\n")
    );
}

/// Acceptance 4 over TCP: one connection per message, the message and the probe written
/// back to back; see [`STREAM_RULES`] for what the stream changes.
#[tokio::test]
async fn rfc4475_and_rfc5118_table_over_tcp() {
    let (_db, _server, mut proxy) = proxy_with("--tcp-listen").await;
    let addr = proxy
        .tcp
        .clone()
        .expect("READY line names the tcp listener");
    let mut failures = run_table(
        Transport::Tcp,
        "Role: a UAS serving SUBSCRIBE and OPTIONS over TCP (RFC 3261 §18.3: a stream framed \
         by Content-Length). One connection per message; the message and the probe are \
         written back to back; a row that ends in a close or a wait is followed by an OPTIONS \
         on a fresh connection, which must be answered.",
        "conformance-tcp.md",
        async |bytes: &[u8]| observe_on(SipStreamClient::tcp(&addr).await.unwrap(), bytes).await,
        async || answers_a_probe(SipStreamClient::tcp(&addr).await.unwrap()).await,
    )
    .await;
    let alive = answers_a_probe(SipStreamClient::tcp(&addr).await.unwrap()).await;
    still_serves(&mut proxy, alive, &mut failures).await;
    assert!(
        failures.is_empty(),
        "conformance failures over TCP:\n{}",
        failures.join("\n")
    );
}
