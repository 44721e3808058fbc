//! The command path with a full queue, and a session to a server that stops reading: new
//! requests get 503, a `Delivered` or `Unsubscribe` that does not fit ends the session (never
//! silently lost), and events keep flowing while the writer waits.

use super::*;
use crate::notifier::{Outcome, State};
use proto::v1::subscription_service_server::{SubscriptionService, SubscriptionServiceServer};
use proto::v1::{Answer as ProtoAnswer, AnswerStatus, server_message};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// Long enough for anything that is going to happen on loopback.
const WAIT: Duration = Duration::from_secs(10);

fn connection() -> (ConnectionHandle, mpsc::Receiver<Box<Event>>) {
    let (events, rx) = mpsc::channel(64);
    let handle = ConnectionHandle {
        events,
        close: CancellationToken::new(),
    };
    (handle, rx)
}

fn delivered(sub: &str) -> Command {
    Command::Delivered {
        sub: sub.into(),
        version: 3,
        outcome: Outcome::Accepted,
    }
}

fn refresh(sub: &str, request_id: u64) -> Command {
    Command::Refresh {
        sub: sub.into(),
        request_id,
        expires: Some(600),
        credentials: None,
        client_address: String::new(),
    }
}

/// A connected upstream whose queue holds one command and is full.
fn full_upstream() -> (Upstream, mpsc::Receiver<ProxyMessage>) {
    let (tx, rx) = mpsc::channel(1);
    let up = Upstream::new(
        "http://test".into(),
        0,
        tx,
        Arc::default(),
        Metrics::default(),
    );
    up.connected.store(true, Ordering::Relaxed);
    up.send(delivered("first"));
    (up, rx)
}

#[tokio::test]
async fn a_full_queue_answers_requests_503_and_ends_the_session_for_delivered_and_unsubscribe() {
    let (up, mut queued) = full_upstream();
    let (conn, mut events) = connection();
    up.route("s1".into(), conn);
    let session = lock(&up.end_session).clone();

    up.send(refresh("s1", 7));
    assert_eq!(
        *events.try_recv().unwrap(),
        Event::Answer(Answer {
            sub: "s1".into(),
            request_id: 7,
            verdict: Verdict::Unavailable { retry_after: None },
        })
    );
    assert!(
        !session.is_cancelled(),
        "a refused request leaves the session up"
    );

    up.send(delivered("s1"));
    assert!(
        session.is_cancelled(),
        "a Delivered that does not fit ends the session"
    );
    assert_eq!(up.metrics.upstream_queue_overflows.get(), 1);
    up.send(delivered("s1"));
    assert_eq!(
        up.metrics.upstream_queue_overflows.get(),
        1,
        "counted once per session"
    );

    *lock(&up.end_session) = CancellationToken::new();
    let session = lock(&up.end_session).clone();
    up.send(Command::Unsubscribe { sub: "s1".into() });
    assert!(session.is_cancelled(), "so does an Unsubscribe");
    assert_eq!(up.metrics.upstream_queue_overflows.get(), 2);

    // Only the command that fitted is queued; nothing else was slipped in or dropped.
    assert!(queued.try_recv().is_ok());
    assert!(queued.try_recv().is_err());
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn with_no_session_up_nothing_is_ended_and_requests_get_503() {
    let (up, _queued) = full_upstream();
    up.connected.store(false, Ordering::Relaxed);
    let (conn, mut events) = connection();
    up.route("s1".into(), conn);
    let session = lock(&up.end_session).clone();
    up.send(delivered("s1"));
    up.send(refresh("s1", 2));
    assert!(!session.is_cancelled());
    assert_eq!(up.metrics.upstream_queue_overflows.get(), 0);
    assert!(matches!(
        *events.try_recv().unwrap(),
        Event::Answer(Answer {
            verdict: Verdict::Unavailable { .. },
            ..
        })
    ));
}

/// A session as the fake server holds it: what the proxy sends, and where to answer.
type HeldSession = (
    Streaming<ProxyMessage>,
    mpsc::Sender<Result<ServerMessage, Status>>,
);

/// A server that accepts one session and hands it to the test, which never reads it.
#[derive(Debug, Clone)]
struct Stalling {
    sessions: mpsc::Sender<HeldSession>,
}

#[tonic::async_trait]
impl SubscriptionService for Stalling {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.sessions.send((request.into_inner(), tx)).await;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn ok_answer(sub: &str) -> Result<ServerMessage, Status> {
    Ok(ServerMessage {
        kind: Some(server_message::Kind::Answer(ProtoAnswer {
            subscription_id: sub.into(),
            request_id: 1,
            status: AnswerStatus::Ok.into(),
            granted_expires: 600,
            ..ProtoAnswer::default()
        })),
    })
}

async fn next_event(events: &mut mpsc::Receiver<Box<Event>>) -> Event {
    *tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the connection's queue is open")
}

#[tokio::test]
async fn a_server_that_stops_reading_does_not_stop_events_and_overflow_ends_the_session() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sessions_tx, mut sessions) = mpsc::channel(1);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            // Small windows, so that a server that does not read pushes back early.
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .add_service(SubscriptionServiceServer::new(Stalling {
                sessions: sessions_tx,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let metrics = Metrics::default();
    let ups = Upstreams::start(
        &[format!("http://{addr}")],
        &Security::default(),
        &metrics,
        &shutdown,
        &tracker,
    );
    let up = ups.servers[0].clone();
    let (_inbound, to_proxy) = tokio::time::timeout(WAIT, sessions.recv())
        .await
        .expect("the proxy opens a session")
        .unwrap();
    let (probe, mut probe_events) = connection();
    up.route("probe".into(), probe.clone());
    to_proxy.send(ok_answer("probe")).await.unwrap();
    next_event(&mut probe_events).await; // the session is up: its reader delivers

    // The server reads nothing: keep sending until the writer is stuck and the queue fills
    // up behind it (it only drains while the stream takes commands).
    let (held, mut held_events) = connection();
    up.route("held".into(), held);
    let mut rounds = 0;
    while up.commands.capacity() > 100 {
        for _ in 0..100 {
            up.send(delivered("held"));
        }
        tokio::task::yield_now().await;
        rounds += 1;
        assert!(
            rounds < 10_000,
            "the queue never filled: is the server reading?"
        );
    }
    assert_eq!(metrics.upstream_queue_overflows.get(), 0);

    // The writer waits for the server; the reader does not wait for the writer.
    up.route("probe2".into(), probe);
    to_proxy.send(ok_answer("probe2")).await.unwrap();
    match next_event(&mut probe_events).await {
        Event::Answer(a) => assert_eq!(a.sub, "probe2"),
        other => panic!("expected the Answer, got {other:?}"),
    }

    // The Delivered that does not fit ends the session; its subscriptions end with
    // deactivated, so their clients re-subscribe.
    for _ in 0..=up.commands.capacity() {
        up.send(delivered("held"));
    }
    assert_eq!(metrics.upstream_queue_overflows.get(), 1);
    match next_event(&mut held_events).await {
        Event::Notification(n) => {
            assert_eq!(n.state, State::Terminated(Reason::Deactivated));
        }
        other => panic!("expected the end of the subscription, got {other:?}"),
    }
    assert!(
        up.commands.capacity() > 0,
        "the dead session's queue was emptied"
    );

    shutdown.cancel();
    tracker.close();
    server.abort();
}
