//! SIGTERM on a server drains first: gRPC health says NOT_SERVING at once (proxies move its
//! subscriptions to other servers), the server waits until it holds none or
//! `--drain-timeout` has passed, then deactivates what is left within `--shutdown-grace`.

use crate::faults::{SERVICE, grpc_health};
use crate::system;
use conflist_tests::process::terminate;
use conflist_tests::{EVENT_TIMEOUT, ServerOptions, SipWsClient};
use sip::{HeaderName, Message, SubscriptionState};
use std::time::{Duration, Instant};
use tonic_health::pb::health_check_response::ServingStatus;

/// The test harness's `--shutdown-grace`.
const GRACE: Duration = Duration::from_secs(3);

fn state_of(n: &sip::Request) -> SubscriptionState {
    SubscriptionState::parse(n.headers.get(&HeaderName::SUBSCRIPTION_STATE).unwrap()).unwrap()
}

async fn subscribed(url: &str, user: &str) -> (SipWsClient, conflist_tests::Subscription) {
    let mut c = SipWsClient::connect(url).await.unwrap();
    let dialog = c.subscribe(user, 600).await.unwrap().dialog;
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    (c, dialog)
}

#[tokio::test]
async fn a_drain_waits_at_most_the_drain_timeout_then_deactivates() {
    let drain = Duration::from_secs(2);
    let mut sys = system(ServerOptions {
        drain_timeout: drain,
        capture_log: true,
        ..ServerOptions::default()
    })
    .await;
    let (mut alice, _) = subscribed(&sys.proxy.ws_url, "alice").await;

    let sigterm = Instant::now();
    terminate(&sys.server.child).unwrap();
    let line = sys.server.log.wait_for("draining").await.unwrap();
    assert!(line.contains("subscriptions=1"), "{line}");
    for service in [SERVICE, ""] {
        assert_eq!(
            grpc_health(&sys.server.grpc, service).await,
            ServingStatus::NotServing,
            "{service:?} during the drain"
        );
    }
    // One server: nowhere to move alice, so the drain runs its full course.
    let n = alice.recv_notify().await.unwrap();
    let notified = sigterm.elapsed();
    assert_eq!(
        state_of(&n),
        SubscriptionState::Terminated {
            reason: Some("deactivated".into()),
            retry_after: None,
        }
    );
    alice.respond(&n, 200).await.unwrap();
    assert!(
        notified >= drain - Duration::from_millis(100),
        "deactivated after {notified:?}, before the drain timeout"
    );
    assert!(
        notified <= drain + Duration::from_secs(2),
        "deactivated only after {notified:?}"
    );
    let status = tokio::time::timeout(drain + GRACE + EVENT_TIMEOUT, sys.server.child.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    let exited = sigterm.elapsed();
    assert!(status.success(), "server exit status {status}");
    assert!(
        exited <= drain + GRACE + Duration::from_secs(1),
        "exited {exited:?} after SIGTERM"
    );
    let ended = sys.server.log.wait_for("drain ended").await.unwrap();
    assert!(ended.contains("subscriptions_left=1"), "{ended}");
}

#[tokio::test]
async fn a_drain_ends_as_soon_as_no_subscription_is_left() {
    let mut sys = system(ServerOptions {
        drain_timeout: Duration::from_secs(60),
        capture_log: true,
        ..ServerOptions::default()
    })
    .await;
    let (mut alice, mut dialog) = subscribed(&sys.proxy.ws_url, "alice").await;

    let sigterm = Instant::now();
    terminate(&sys.server.child).unwrap();
    sys.server.log.wait_for("draining").await.unwrap();
    // The last subscription goes (as when a proxy moves it away): the drain is over.
    alice.resubscribe(&mut dialog, 0).await.unwrap();
    let (mut answered, mut ended) = (false, false);
    while !(answered && ended) {
        match alice.recv().await.unwrap() {
            Message::Response(r) => {
                assert_eq!(r.status.as_u16(), 200);
                answered = true;
            }
            Message::Request(n) => {
                assert!(
                    matches!(state_of(&n), SubscriptionState::Terminated { .. }),
                    "{n:?}"
                );
                alice.respond(&n, 200).await.unwrap();
                ended = true;
            }
        }
    }
    let status = tokio::time::timeout(EVENT_TIMEOUT, sys.server.child.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    assert!(status.success(), "server exit status {status}");
    let exited = sigterm.elapsed();
    assert!(
        exited < Duration::from_secs(10),
        "exited {exited:?} after SIGTERM: the drain waited although nothing was left"
    );
    let line = sys.server.log.wait_for("drain ended").await.unwrap();
    assert!(line.contains("subscriptions_left=0"), "{line}");
}
