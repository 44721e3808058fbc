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
    let up = ups.servers()[0].clone();
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

/// A fake server on loopback that hands each session to the test.
async fn fake_server() -> (
    String,
    mpsc::Receiver<HeldSession>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (sessions_tx, sessions) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(SubscriptionServiceServer::new(Stalling {
                sessions: sessions_tx,
            }))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (format!("http://{addr}"), sessions, task)
}

async fn next_command(inbound: &mut Streaming<ProxyMessage>) -> proto::v1::proxy_message::Kind {
    tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("a command in time")
        .unwrap()
        .unwrap()
        .kind
        .unwrap()
}

fn notification(sub: &str, version: u64) -> Result<ServerMessage, Status> {
    Ok(ServerMessage {
        kind: Some(server_message::Kind::Notification(
            proto::v1::Notification {
                subscription_id: sub.into(),
                version,
                state: proto::v1::SubscriptionState::Active.into(),
                expires: 600,
                content_type: "application/conference-list+xml".into(),
                body: b"<conference-list/>".to_vec(),
                ..Default::default()
            },
        )),
    })
}

fn answer(sub: &str, request_id: u64, identity: &str) -> Result<ServerMessage, Status> {
    Ok(ServerMessage {
        kind: Some(server_message::Kind::Answer(ProtoAnswer {
            subscription_id: sub.into(),
            request_id,
            status: AnswerStatus::Ok.into(),
            granted_expires: 600,
            identity: identity.into(),
            ..ProtoAnswer::default()
        })),
    })
}

fn subscribe(sub: &str, subscriber: &str) -> Command {
    Command::Subscribe {
        sub: sub.into(),
        request_id: 1,
        subscriber: subscriber.into(),
        requester: subscriber.into(),
        event: "conference-list".into(),
        accept: vec![],
        expires: Some(600),
        credentials: None,
        flow_identity: None,
        client_address: "192.0.2.1".into(),
        window: crate::notifier::Window::default(),
        max_body_bytes: None,
    }
}

#[tokio::test]
async fn a_lost_session_re_attaches_its_subscriptions_and_answers_what_was_in_flight() {
    let (a_url, mut a_sessions, a_task) = fake_server().await;
    let (b_url, mut b_sessions, b_task) = fake_server().await;
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let metrics = Metrics::default();
    let ups = Upstreams::start(
        &[a_url.clone(), b_url.clone()],
        &Security::default(),
        &metrics,
        &shutdown,
        &tracker,
    );
    let (mut a_in, a_out) = a_sessions.recv().await.unwrap();
    let (mut b_in, b_out) = b_sessions.recv().await.unwrap();
    while !ups.servers().iter().all(|s| s.is_connected()) {
        tokio::task::yield_now().await;
    }
    // A subscriber that server A owns.
    let subscriber = (0..)
        .map(|i| format!("sip:user{i}@example.com"))
        .find(|s| ups.pick(s).unwrap().endpoint() == a_url)
        .unwrap();
    let (conn, mut events) = connection();
    assert!(ups.route("s1".into(), &subscriber, conn));
    ups.send(subscribe("s1", &subscriber));
    assert!(matches!(
        next_command(&mut a_in).await,
        proto::v1::proxy_message::Kind::Subscribe(_)
    ));
    a_out.send(answer("s1", 1, &subscriber)).await.unwrap();
    a_out.send(notification("s1", 0)).await.unwrap();
    a_out.send(notification("s1", 1)).await.unwrap();
    for _ in 0..3 {
        next_event(&mut events).await;
    }
    ups.send(refresh("s1", 2));
    assert!(matches!(
        next_command(&mut a_in).await,
        proto::v1::proxy_message::Kind::Refresh(_)
    ));

    // Server A's session breaks before it answers the refresh.
    drop(a_out);
    drop(a_in);
    a_task.abort();

    // The refresh gets 503 with Retry-After; the dialog sees nothing else.
    assert_eq!(
        next_event(&mut events).await,
        Event::Answer(Answer {
            sub: "s1".into(),
            request_id: 2,
            verdict: Verdict::Unavailable {
                retry_after: Some(RETRY_AFTER_LOST)
            },
        })
    );
    // B gets the subscription, resuming after version 1, signed in as before.
    let proto::v1::proxy_message::Kind::Subscribe(s) = next_command(&mut b_in).await else {
        panic!("expected a re-attach Subscribe");
    };
    assert_eq!(s.subscription_id, "s1");
    assert_eq!(s.resume_version, Some(1));
    assert_eq!(s.flow_identity, subscriber);
    assert_eq!(s.subscriber_uri, subscriber);
    assert!(s.credentials.is_none());
    assert!(s.expires.is_some_and(|e| (590..=600).contains(&e)));
    assert_ne!(s.request_id & REATTACH_REQUEST, 0);
    // Until B has answered, a refresh gets 503 (B does not hold the subscription yet, and
    // would say 481) and a Delivered for A's version is not passed on.
    ups.send(refresh("s1", 3));
    assert_eq!(
        next_event(&mut events).await,
        Event::Answer(Answer {
            sub: "s1".into(),
            request_id: 3,
            verdict: Verdict::Unavailable {
                retry_after: Some(RETRY_AFTER_LOST)
            },
        })
    );
    ups.send(delivered("s1"));
    // Its Answer stays in the proxy; its Notification reaches the dialog.
    b_out
        .send(answer("s1", s.request_id, &subscriber))
        .await
        .unwrap();
    b_out.send(notification("s1", 2)).await.unwrap();
    match next_event(&mut events).await {
        Event::Notification(n) => assert_eq!(n.version, 2),
        other => panic!("expected B's notification, got {other:?}"),
    }
    // Commands follow the subscription to B.
    ups.send(delivered("s1"));
    assert!(matches!(
        next_command(&mut b_in).await,
        proto::v1::proxy_message::Kind::Delivered(_)
    ));
    assert_eq!(
        metrics
            .reattached
            .get_or_create(&ReattachLabel {
                reason: "session_lost"
            })
            .get(),
        1
    );
    shutdown.cancel();
    tracker.close();
    b_task.abort();
}

#[tokio::test]
async fn a_server_that_is_no_longer_listed_hands_its_subscriptions_over_and_stops() {
    let (a_url, mut a_sessions, a_task) = fake_server().await;
    let (b_url, mut b_sessions, b_task) = fake_server().await;
    let dir = std::env::temp_dir().join(format!("conflist-servers-{}", std::process::id()));
    std::fs::write(&dir, format!("{a_url}\n{b_url}\n")).unwrap();
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let metrics = Metrics::default();
    let ups = Upstreams::start(&[], &Security::default(), &metrics, &shutdown, &tracker);
    ups.discover(
        vec![],
        Discovery {
            dns: vec![],
            file: Some(dir.clone()),
            interval: Duration::from_millis(100),
        },
    )
    .await;
    let (mut a_in, a_out) = a_sessions.recv().await.unwrap();
    let (mut b_in, _b_out) = b_sessions.recv().await.unwrap();
    while !ups.servers().iter().all(|s| s.is_connected()) {
        tokio::task::yield_now().await;
    }
    let subscriber = (0..)
        .map(|i| format!("sip:user{i}@example.com"))
        .find(|s| ups.pick(s).unwrap().endpoint() == a_url)
        .unwrap();
    let (conn, mut events) = connection();
    assert!(ups.route("s1".into(), &subscriber, conn));
    ups.send(subscribe("s1", &subscriber));
    next_command(&mut a_in).await;
    a_out.send(answer("s1", 1, "")).await.unwrap();
    a_out.send(notification("s1", 0)).await.unwrap();
    next_event(&mut events).await;
    next_event(&mut events).await;

    // A leaves the file: the subscription moves to B (resuming after 0), A is told to drop
    // it, and A's session then ends.
    std::fs::write(&dir, format!("{b_url}\n")).unwrap();
    let proto::v1::proxy_message::Kind::Subscribe(s) = next_command(&mut b_in).await else {
        panic!("expected a re-attach Subscribe");
    };
    assert_eq!(s.resume_version, Some(0));
    assert_eq!(
        next_command(&mut a_in).await,
        proto::v1::proxy_message::Kind::Unsubscribe(proto::v1::Unsubscribe {
            subscription_id: "s1".into()
        })
    );
    // A notification A still sends is dropped: the subscription is B's now.
    let _ = a_out.send(notification("s1", 1)).await;
    tokio::time::timeout(WAIT, async {
        while ups.servers().len() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("A is retired once it holds nothing");
    assert!(
        events.try_recv().is_err(),
        "nothing from A reached the dialog"
    );
    assert_eq!(
        metrics
            .reattached
            .get_or_create(&ReattachLabel {
                reason: "not_serving"
            })
            .get(),
        1
    );
    let _ = std::fs::remove_file(&dir);
    shutdown.cancel();
    tracker.close();
    a_task.abort();
    b_task.abort();
}

#[tokio::test]
async fn not_serving_servers_are_left_alone_briefly_and_during_a_shared_outage() {
    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let ups = Upstreams::start(
        &[],
        &Security::default(),
        &Metrics::default(),
        &shutdown,
        &tracker,
    );
    let inner = &ups.inner;
    let servers: Vec<Arc<Upstream>> = (0..4)
        .map(|i| {
            let (tx, _rx) = mpsc::channel(1);
            let up = Arc::new(Upstream::new(
                format!("http://s{i}"),
                i,
                tx,
                inner.routes.clone(),
                Metrics::default(),
            ));
            up.connected.store(true, Ordering::Relaxed);
            write(&inner.servers).push(up.clone());
            up
        })
        .collect();
    let now = Instant::now();
    let out = |up: &Upstream, for_: Duration| {
        up.serving.store(false, Ordering::Relaxed);
        *lock(&up.out_since) = Some(now - for_);
    };
    // Just out: held (another server may be about to notice the same outage).
    out(&servers[0], Duration::from_secs(1));
    assert!(inner.movable_out(now).is_empty());
    // Out for longer than OUT_HOLD, most servers serving: its subscriptions may move.
    out(&servers[0], OUT_HOLD);
    assert_eq!(inner.movable_out(now), vec![0]);
    // Two of four out is not yet most.
    out(&servers[1], OUT_HOLD * 2);
    assert_eq!(inner.movable_out(now), vec![0, 1]);
    // Three of four out looks like their shared database: nobody moves...
    out(&servers[2], OUT_HOLD * 2);
    assert!(inner.movable_out(now).is_empty());
    // ...except off a server discovery no longer lists.
    servers[3].removed.store(true, Ordering::Relaxed);
    assert_eq!(inner.movable_out(now), vec![3]);
    shutdown.cancel();
}
