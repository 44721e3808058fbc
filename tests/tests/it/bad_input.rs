//! Bad input over the WebSocket gets the right SIP error or a closed connection, and never
//! disturbs other connections.

use crate::system;
use conflist_tests::{ServerOptions, SipWsClient};
use sip::HeaderName;

const OPTIONS: &str = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKopt\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\nCall-ID: opt-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

/// The connection still answers: OPTIONS → 200.
async fn still_serves(c: &mut SipWsClient) {
    c.send_text(OPTIONS).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(
        r.headers.get(&HeaderName::ALLOW_EVENTS),
        Some("conference-list")
    );
}

fn subscribe_with(c: &mut SipWsClient, extra: &str) -> String {
    c.initial_subscribe("alice", &format!("bad-{}", rand::random::<u32>()), extra)
}

async fn status_of(c: &mut SipWsClient, req: &str) -> sip::Response {
    c.send_text(req).await.unwrap();
    c.recv_response().await.unwrap()
}

#[tokio::test]
async fn garbage_and_binary_frames_are_dropped_and_the_connection_keeps_serving() {
    let sys = system(ServerOptions::default()).await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    c.send_text("this is not SIP at all").await.unwrap();
    c.send_binary(&[0, 159, 146, 150, 255, 0, 13, 10, 13, 10])
        .await
        .unwrap();
    still_serves(&mut c).await;
    // RFC 7118 allows SIP in binary frames.
    c.send_binary(OPTIONS.as_bytes()).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 200);
    // RFC 5626 keep-alive: a double CRLF is answered with a single CRLF.
    c.send_text("\r\n\r\n").await.unwrap();
    assert_eq!(c.recv_raw().await.unwrap(), b"\r\n");
}

#[tokio::test]
async fn malformed_requests_get_400_with_the_reason() {
    let sys = system(ServerOptions::default()).await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();

    let no_call_id: String = subscribe_with(&mut c, "")
        .lines()
        .filter(|l| !l.starts_with("Call-ID"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let r = status_of(&mut c, &no_call_id).await;
    assert_eq!(
        (r.status.as_u16(), r.reason.as_str()),
        (400, "Missing Call-ID")
    );

    // A request line the codec rejects, answered from the salvaged headers.
    let bad_uri = subscribe_with(&mut c, "").replacen(
        "SUBSCRIBE sip:alice@example.com",
        "SUBSCRIBE <sip:alice@example.com>",
        1,
    );
    let r = status_of(&mut c, &bad_uri).await;
    assert_eq!(r.status.as_u16(), 400);
    assert!(
        r.headers
            .get(&HeaderName::VIA)
            .unwrap()
            .contains("branch=z9hG4bK")
    );
    still_serves(&mut c).await;
}

#[tokio::test]
async fn unsupported_requests_get_their_sip_errors() {
    let sys = system(ServerOptions {
        min_expires: 60,
        ..ServerOptions::default()
    })
    .await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();

    let unknown_method = OPTIONS.replace("OPTIONS", "FROB");
    let r = status_of(&mut c, &unknown_method).await;
    assert_eq!(r.status.as_u16(), 405);
    assert_eq!(
        r.headers.get(&HeaderName::ALLOW),
        Some("SUBSCRIBE, OPTIONS")
    );

    let presence = subscribe_with(&mut c, "").replace("Event: conference-list", "Event: presence");
    let r = status_of(&mut c, &presence).await;
    assert_eq!(r.status.as_u16(), 489);
    assert_eq!(
        r.headers.get(&HeaderName::ALLOW_EVENTS),
        Some("conference-list")
    );

    let pidf = subscribe_with(&mut c, "Accept: application/pidf+xml\r\n");
    let r = status_of(&mut c, &pidf).await;
    assert_eq!(r.status.as_u16(), 406);
    assert_eq!(
        r.headers.get(&HeaderName::ACCEPT),
        Some("application/conference-list+xml")
    );

    let brief = subscribe_with(&mut c, "Expires: 10\r\n");
    let r = status_of(&mut c, &brief).await;
    assert_eq!(r.status.as_u16(), 423);
    assert_eq!(r.headers.get(&HeaderName::MIN_EXPIRES), Some("60"));

    let hops = subscribe_with(&mut c, "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(status_of(&mut c, &hops).await.status.as_u16(), 483);

    let someone_else =
        subscribe_with(&mut c, "").replace("From: \"alice\" <sip:alice@", "From: <sip:mallory@");
    assert_eq!(status_of(&mut c, &someone_else).await.status.as_u16(), 403);

    let unknown_dialog = subscribe_with(&mut c, "").replace(
        "To: <sip:alice@example.com>",
        "To: <sip:alice@example.com>;tag=nosuch",
    );
    assert_eq!(
        status_of(&mut c, &unknown_dialog).await.status.as_u16(),
        481
    );

    let stray_notify = OPTIONS.replace("OPTIONS", "NOTIFY");
    assert_eq!(status_of(&mut c, &stray_notify).await.status.as_u16(), 481);

    // No Accept at all means the package's default type (RFC 6665 §4.1.2): accepted.
    let no_accept = subscribe_with(&mut c, "Expires: 60\r\n");
    let r = status_of(&mut c, &no_accept).await;
    assert_eq!(r.status.as_u16(), 200);
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
}

#[tokio::test]
async fn a_huge_message_closes_only_that_connection() {
    let sys = system(ServerOptions::default()).await;
    let mut victim = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    let mut bystander = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    let huge = subscribe_with(&mut victim, &format!("X-Huge: {}\r\n", "a".repeat(1 << 20)));
    // The proxy may close while we are still writing; either way the connection ends.
    let _ = victim.send_text(&huge).await;
    assert!(
        victim.closed().await,
        "an oversized message must close the connection"
    );
    still_serves(&mut bystander).await;
}

// The RFC 4475 / RFC 5118 messages, each with the answer its RFC asks for: conformance.rs.
