//! The mission's path: SUBSCRIBE → 200 → NOTIFY (the user's full list) → 200, refresh,
//! unsubscribe, expiry.

use crate::system;
use conflist_tests::client::document_of;
use conflist_tests::{ServerOptions, SipWsClient};
use sip::{HeaderName, SubscriptionState};

/// The entities of a document, sorted (documents list the nearest conference first).
fn entities(doc: &document::ConferenceList) -> Vec<String> {
    let mut entities: Vec<String> = doc.entries.iter().map(|e| e.entity().to_owned()).collect();
    entities.sort();
    entities
}

fn state(notify: &sip::Request) -> SubscriptionState {
    let raw = notify
        .headers
        .get(&HeaderName::SUBSCRIPTION_STATE)
        .expect("NOTIFY without Subscription-State");
    SubscriptionState::parse(raw).expect("bad Subscription-State")
}

#[tokio::test]
async fn subscribe_notify_refresh_unsubscribe() {
    let sys = system(ServerOptions::default()).await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();

    let sub = c.subscribe("alice", 600).await.unwrap();
    assert_eq!(sub.response.headers.get(&HeaderName::EXPIRES), Some("600"));
    assert!(sub.response.headers.get(&HeaderName::CONTACT).is_some());
    let mut dialog = sub.dialog;

    // First NOTIFY: full list of alice's conferences and nobody else's.
    let n = c.recv_notify().await.unwrap();
    assert_eq!(n.headers.get(&HeaderName::EVENT), Some("conference-list"));
    assert_eq!(
        n.headers.get(&HeaderName::CONTENT_TYPE),
        Some("application/conference-list+xml")
    );
    assert!(
        matches!(state(&n), SubscriptionState::Active { expires } if (599..=600).contains(&expires))
    );
    let to = sip::NameAddr::parse(n.headers.get(&HeaderName::TO).unwrap()).unwrap();
    let from = sip::NameAddr::parse(n.headers.get(&HeaderName::FROM).unwrap()).unwrap();
    assert_eq!(
        to.tag(),
        Some(dialog.from_tag.as_str()),
        "NOTIFY To-tag = our From-tag"
    );
    assert_eq!(
        from.tag(),
        Some(dialog.to_tag.as_str()),
        "NOTIFY From-tag = the 200's To-tag"
    );
    assert!(
        n.uri.host().ends_with(".invalid"),
        "NOTIFY goes to our Contact: {}",
        n.uri
    );
    let doc = document_of(&n).unwrap();
    assert_eq!(doc.entity, "sip:alice@example.com");
    assert_eq!(doc.version, 0);
    assert_eq!(doc.state, document::DocumentState::Full);
    assert_eq!(
        entities(&doc),
        [
            "sip:1001@conf.example.com",
            "sip:1002@conf.example.com",
            "sip:1003@conf.example.com"
        ]
    );
    let cseq1 = sip::CSeq::parse(n.headers.get(&HeaderName::CSEQ).unwrap())
        .unwrap()
        .seq;
    c.respond(&n, 200).await.unwrap();

    // Refresh: 200 with the new duration, then a NOTIFY with the next version.
    c.resubscribe(&mut dialog, 120).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.headers.get(&HeaderName::EXPIRES), Some("120"));
    let n = c.recv_notify().await.unwrap();
    assert_eq!(document_of(&n).unwrap().version, 1);
    assert!(matches!(state(&n), SubscriptionState::Active { expires } if expires <= 120));
    let cseq2 = sip::CSeq::parse(n.headers.get(&HeaderName::CSEQ).unwrap())
        .unwrap()
        .seq;
    assert!(cseq2 > cseq1, "NOTIFY CSeq increases");
    c.respond(&n, 200).await.unwrap();

    // Unsubscribe: 200, then the final NOTIFY.
    c.resubscribe(&mut dialog, 0).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.headers.get(&HeaderName::EXPIRES), Some("0"));
    let n = c.recv_notify().await.unwrap();
    assert_eq!(
        state(&n),
        SubscriptionState::Terminated {
            reason: Some("timeout".into()),
            retry_after: None
        }
    );
    c.respond(&n, 200).await.unwrap();

    // The dialog is gone: another refresh is 481.
    c.resubscribe(&mut dialog, 60).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 481);
}

#[tokio::test]
async fn a_two_second_subscription_expires_with_reason_timeout() {
    let sys = system(ServerOptions::default()).await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    let sub = c.subscribe("bob", 2).await.unwrap();
    assert_eq!(sub.response.headers.get(&HeaderName::EXPIRES), Some("2"));
    let n = c.recv_notify().await.unwrap();
    assert_eq!(
        entities(&document_of(&n).unwrap()).len(),
        4,
        "bob is in four conferences"
    );
    c.respond(&n, 200).await.unwrap();
    let started = std::time::Instant::now();
    let n = c.recv_notify().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(
        state(&n),
        SubscriptionState::Terminated {
            reason: Some("timeout".into()),
            retry_after: None
        }
    );
    assert!(waited.as_millis() >= 1500, "expired too early: {waited:?}");
    c.respond(&n, 200).await.unwrap();
}

#[tokio::test]
async fn every_user_sees_only_their_own_conferences() {
    let sys = system(ServerOptions::default()).await;
    let expected = [
        ("carol", vec!["1001", "1003", "1005"]),
        ("dave", vec!["1003", "1004", "1005"]),
    ];
    for (user, confs) in expected {
        let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
        c.subscribe(user, 60).await.unwrap();
        let n = c.recv_notify().await.unwrap();
        let want: Vec<String> = confs
            .iter()
            .map(|n| format!("sip:{n}@conf.example.com"))
            .collect();
        assert_eq!(entities(&document_of(&n).unwrap()), want, "{user}");
        c.respond(&n, 200).await.unwrap();
    }
}

#[tokio::test]
async fn many_dialogs_share_one_connection() {
    let sys = system(ServerOptions::default()).await;
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    let users = ["alice", "bob", "carol", "dave"];
    let mut call_ids = Vec::new();
    for user in users {
        let call_id = format!("multi-{user}");
        let req = c.initial_subscribe(user, &call_id, "Expires: 60\r\n");
        c.send_text(&req).await.unwrap();
        call_ids.push(call_id);
    }
    // Each dialog's 200 precedes its NOTIFY; dialogs interleave freely.
    let mut answered = std::collections::HashSet::new();
    let mut notified = std::collections::HashSet::new();
    while notified.len() < users.len() {
        match c.recv().await.unwrap() {
            sip::Message::Response(r) => {
                assert_eq!(r.status.as_u16(), 200);
                answered.insert(r.headers.get(&HeaderName::CALL_ID).unwrap().to_owned());
            }
            sip::Message::Request(n) => {
                let call_id = n.headers.get(&HeaderName::CALL_ID).unwrap().to_owned();
                assert!(
                    answered.contains(&call_id),
                    "NOTIFY overtook its 200 on {call_id}"
                );
                notified.insert(call_id);
                c.respond(&n, 200).await.unwrap();
            }
        }
    }
    assert_eq!(notified.len(), 4);
}

/// Reads one gauge from an admin `/metrics` endpoint.
async fn gauge(admin: &str, name: &str) -> i64 {
    let (_, body) = conflist_tests::process::http_get(admin, "/metrics")
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Polls (bounded: 200 × 25 ms) until `name` at `admin` reads `want`.
async fn gauge_reaches(admin: &str, name: &str, want: i64) -> i64 {
    let mut last = gauge(admin, name).await;
    for _ in 0..200 {
        if last == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        last = gauge(admin, name).await;
    }
    last
}

#[tokio::test]
async fn vanished_clients_leave_nothing_behind_in_either_process() {
    let sys = system(ServerOptions::default()).await;
    let mut clients = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
        c.subscribe(user, 600).await.unwrap();
        let n = c.recv_notify().await.unwrap();
        c.respond(&n, 200).await.unwrap();
        clients.push(c);
    }
    assert_eq!(gauge(&sys.proxy.admin, "conflist_proxy_dialogs").await, 3);
    assert_eq!(
        gauge(&sys.server.admin, "conflist_server_subscriptions").await,
        3
    );
    drop(clients); // connections vanish without unsubscribing
    assert_eq!(
        gauge_reaches(&sys.proxy.admin, "conflist_proxy_dialogs", 0).await,
        0
    );
    assert_eq!(
        gauge_reaches(&sys.proxy.admin, "conflist_proxy_connections", 0).await,
        0
    );
    assert_eq!(
        gauge_reaches(&sys.server.admin, "conflist_server_subscriptions", 0).await,
        0
    );
}
