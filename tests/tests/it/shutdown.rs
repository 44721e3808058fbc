//! Graceful shutdown: SIGTERM to either process ends every subscription with a final
//! NOTIFY `terminated;reason=deactivated` (RFC 6665 §4.2.2: re-subscribe at once), then exit 0.

use crate::system;
use conflist_tests::process::terminate;
use conflist_tests::{EVENT_TIMEOUT, ServerOptions, SipWsClient};
use sip::{HeaderName, SubscriptionState};

fn deactivated() -> SubscriptionState {
    SubscriptionState::Terminated {
        reason: Some("deactivated".into()),
        retry_after: None,
    }
}

async fn subscribed(url: &str, user: &str) -> SipWsClient {
    let mut c = SipWsClient::connect(url).await.unwrap();
    c.subscribe(user, 600).await.unwrap();
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    c
}

fn subscription_state(n: &sip::Request) -> SubscriptionState {
    SubscriptionState::parse(n.headers.get(&HeaderName::SUBSCRIPTION_STATE).unwrap()).unwrap()
}

#[tokio::test]
async fn server_sigterm_deactivates_subscriptions_and_exits_cleanly() {
    let mut sys = system(ServerOptions::default()).await;
    let mut alice = subscribed(&sys.proxy.ws_url, "alice").await;
    let mut bob = subscribed(&sys.proxy.ws_url, "bob").await;

    terminate(&sys.server.child).unwrap();
    for c in [&mut alice, &mut bob] {
        let n = c.recv_notify().await.unwrap();
        assert_eq!(subscription_state(&n), deactivated());
        c.respond(&n, 200).await.unwrap();
    }
    let status = tokio::time::timeout(EVENT_TIMEOUT, sys.server.child.wait())
        .await
        .expect("server did not exit")
        .unwrap();
    assert!(status.success(), "server exit status {status}");
}

#[tokio::test]
async fn proxy_sigterm_sends_final_notifies_then_closes() {
    let mut sys = system(ServerOptions::default()).await;
    let mut alice = subscribed(&sys.proxy.ws_url, "alice").await;

    terminate(&sys.proxy.child).unwrap();
    let n = alice.recv_notify().await.unwrap();
    assert_eq!(subscription_state(&n), deactivated());
    assert!(n.body.is_empty());
    alice.respond(&n, 200).await.unwrap();
    assert!(
        alice.closed().await,
        "proxy closes the connection after the last dialog ends"
    );
    let status = tokio::time::timeout(EVENT_TIMEOUT, sys.proxy.child.wait())
        .await
        .expect("proxy did not exit")
        .unwrap();
    assert!(status.success(), "proxy exit status {status}");
}
