//! A peer that stops reading, and a client that asks for a NOTIFY later.
//!
//! * A raw gRPC client opens a `Session` on a real `conflist-server`, floods it with requests
//!   and never reads: the server keeps reading (its reads never wait on writes), keeps serving
//!   another session, and ends the stalled one after `--session-stall-timeout`, counted; a
//!   client that reads again finds the stream ended with UNAVAILABLE.
//! * A subscriber answers a NOTIFY `503` with `Retry-After: 1`: the proxy sends the same
//!   version again a second later as a new transaction, and the subscription lives on.

use crate::live_updates::{exec, watching};
use crate::system;
use conflist_tests::process::http_get;
use conflist_tests::{EVENT_TIMEOUT, Server, ServerOptions, TestDb, spawn_server};
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use proto::v1::{
    AnswerStatus, ProxyMessage, Refresh, ServerMessage, Subscribe, proxy_message, server_message,
};
use sip::{HeaderName, Response, StatusCode};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Streaming};

/// Requests the stalled client sends: far more answers than its small HTTP/2 window, the
/// server's stream queue and its backlog hold together.
const FLOOD: u64 = 20_000;

/// One `Session` stream; `window` sets our HTTP/2 receive windows (small = back-pressure
/// reaches the server early when we do not read).
async fn open(
    server: &Server,
    window: Option<u32>,
) -> (mpsc::Sender<ProxyMessage>, Streaming<ServerMessage>) {
    let channel = Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect()
        .await
        .unwrap();
    let mut client = SubscriptionServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    let response = tokio::time::timeout(EVENT_TIMEOUT, client.session(ReceiverStream::new(rx)))
        .await
        .expect("session answered in time")
        .expect("session opened");
    (tx, response.into_inner())
}

fn subscribe(id: &str, request_id: u64, user: &str) -> ProxyMessage {
    ProxyMessage {
        kind: Some(proxy_message::Kind::Subscribe(Subscribe {
            subscription_id: id.into(),
            request_id,
            subscriber_uri: user.into(),
            requester_uri: user.into(),
            event: "conference-list".into(),
            expires: Some(600),
            client_address: "192.0.2.20:5060".into(),
            ..Subscribe::default()
        })),
    }
}

fn refresh(id: &str, request_id: u64) -> ProxyMessage {
    ProxyMessage {
        kind: Some(proxy_message::Kind::Refresh(Refresh {
            subscription_id: id.into(),
            request_id,
            expires: Some(600),
            credentials: None,
            client_address: "192.0.2.21:5060".into(),
        })),
    }
}

async fn next(rx: &mut Streaming<ServerMessage>) -> server_message::Kind {
    tokio::time::timeout(EVENT_TIMEOUT, rx.message())
        .await
        .expect("a server message in time")
        .expect("the stream did not fail")
        .expect("the stream did not end")
        .kind
        .expect("a message kind")
}

/// A subscription for `user` on `hop`: its Answer is OK and its first Notification follows.
async fn subscribed(
    tx: &mpsc::Sender<ProxyMessage>,
    rx: &mut Streaming<ServerMessage>,
    id: &str,
    user: &str,
) {
    tx.send(subscribe(id, 1, user)).await.unwrap();
    match next(rx).await {
        server_message::Kind::Answer(a) => {
            assert_eq!(a.subscription_id, id);
            assert_eq!(
                AnswerStatus::try_from(a.status),
                Ok(AnswerStatus::Ok),
                "{a:?}"
            );
        }
        other => panic!("expected the Answer, got {other:?}"),
    }
    match next(rx).await {
        server_message::Kind::Notification(n) => assert_eq!(n.subscription_id, id),
        other => panic!("expected the first Notification, got {other:?}"),
    }
}

/// The value of the unlabelled metric `name` on the server's admin port.
async fn metric(server: &Server, name: &str) -> Option<f64> {
    let (_, body) = http_get(&server.admin, "/metrics").await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits (polling: a metric is not an event we can subscribe to) until `name` is `want`.
async fn metric_reaches(server: &Server, name: &str, want: f64) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let got = metric(server, name).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {got:?}, not {want}, after {EVENT_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_proxy_that_stops_reading_loses_its_session_and_nobody_else_waits() {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            extra_args: vec!["--session-stall-timeout".into(), "2s".into()],
            ..ServerOptions::default()
        },
    )
    .await
    .expect("server");

    // The stalled peer: subscribes once, then floods refreshes (each answered at once) and
    // never reads. Its sends must all be taken: the server keeps reading.
    let (stalled_tx, mut stalled_rx) = open(&server, Some(65_535)).await;
    stalled_tx
        .send(subscribe("stalled-0", 1, "sip:bob@example.com"))
        .await
        .unwrap();
    let flood = tokio::spawn(async move {
        for n in 0..FLOOD {
            if stalled_tx
                .send(refresh(&format!("stalled-{n}"), n + 2))
                .await
                .is_err()
            {
                break;
            }
        }
        stalled_tx
    });

    // Another proxy's session is served at once, however far the stalled one is behind.
    let (tx, mut rx) = open(&server, None).await;
    subscribed(&tx, &mut rx, "healthy-1", "sip:alice@example.com").await;

    let stalled_tx = tokio::time::timeout(EVENT_TIMEOUT, flood)
        .await
        .expect("the server kept reading the stalled session")
        .unwrap();
    metric_reaches(&server, "conflist_server_sessions_stalled_total", 1.0).await;
    metric_reaches(&server, "conflist_server_sessions", 1.0).await;
    metric_reaches(&server, "conflist_server_subscriptions", 1.0).await;

    // The healthy session still works after the stalled one ended.
    subscribed(&tx, &mut rx, "healthy-2", "sip:carol@example.com").await;

    // Reading again, the stalled peer gets what was already on its way, then the end.
    let mut received = 0u64;
    let status = loop {
        match tokio::time::timeout(EVENT_TIMEOUT, stalled_rx.message())
            .await
            .expect("the ended stream drains in time")
        {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended without a status after {received} messages"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        received < FLOOD,
        "the session ended before answering everything ({received} of {FLOOD} answers)"
    );
    drop(stalled_tx);
}

#[tokio::test]
async fn a_503_with_retry_after_to_a_notify_keeps_the_subscription() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;

    exec(&mut db, "UPDATE conflist_conferences SET subject = 'Retry me' WHERE conference_uri = 'sip:1001@conf.example.com'").await;
    let first = alice.recv_notify().await.unwrap();
    let first_doc = conflist_tests::client::document_of(&first).unwrap();
    let mut busy = Response::for_request(&first, StatusCode::SERVICE_UNAVAILABLE);
    busy.headers.push(HeaderName::RETRY_AFTER, "1");
    let refused_at = Instant::now();
    alice
        .send_text(&String::from_utf8(busy.to_bytes()).unwrap())
        .await
        .unwrap();

    // The same version again, as a new transaction, after the delay; answered 200 this time.
    let (again, doc) = view.next(&mut alice).await.unwrap();
    assert!(
        refused_at.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured: {:?}",
        refused_at.elapsed()
    );
    let doc = doc.expect("a document");
    assert_eq!(doc.version, first_doc.version, "the same notification");
    assert_eq!(doc, first_doc);
    let cseq = |r: &sip::Request| {
        sip::CSeq::parse(r.headers.get(&HeaderName::CSEQ).unwrap())
            .unwrap()
            .seq
    };
    assert!(cseq(&again) > cseq(&first), "a new CSeq");
    assert!(
        again
            .headers
            .get(&HeaderName::SUBSCRIPTION_STATE)
            .unwrap()
            .starts_with("active;"),
    );
    assert_eq!(
        view.get("sip:1001@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("Retry me")
    );

    // The subscription lives on: the server took the Delivered for that version and the
    // next change arrives as the next version.
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'After the retry' WHERE conference_uri = 'sip:1002@conf.example.com'").await;
    let (_, doc) = view.next(&mut alice).await.unwrap();
    assert_eq!(doc.expect("a document").version, first_doc.version + 1);
    assert_eq!(
        view.get("sip:1002@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("After the retry")
    );
}
