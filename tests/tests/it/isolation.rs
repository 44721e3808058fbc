//! One huge conference costs only itself: with 100 other users subscribed through the same
//! proxy (one gRPC session), a 5 MB free text on one of carol's conferences reaches carol
//! truncated within the NOTIFY cap and is counted, the others are served as before, no
//! dialog ends and the session stays up.

use crate::live_updates::{exec, watching};
use conflist_tests::process::metric;
use conflist_tests::{ServerOptions, TestDb, spawn_proxy, spawn_server};
use document::{DocumentState, Entry};
use futures_util::future::join_all;
use sip::{HeaderName, Request};

const USERS: usize = 100;
const SHARED: &str = "sip:shared@conf.example.com";
const C1005: &str = "sip:1005@conf.example.com";

fn active(n: &Request) -> bool {
    n.headers
        .get(&HeaderName::SUBSCRIPTION_STATE)
        .is_some_and(|s| s.starts_with("active;"))
}

#[tokio::test]
async fn a_five_megabyte_free_text_is_truncated_for_its_user_and_costs_nobody_else() {
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .unwrap();
    let proxy = spawn_proxy(&server, &["--max-subscribes-per-address", "1000"])
        .await
        .unwrap();
    let mut conn = db.connect().await.unwrap();
    exec(
        &mut conn,
        "BEGIN;
         INSERT INTO conflist_users (user_uri, display_name)
         SELECT 'sip:u' || i || '@example.com', 'User ' || i FROM generate_series(1, 100) AS i;
         INSERT INTO conflist_conferences (conference_uri, display_text, subject)
         SELECT 'sip:own-' || i || '@conf.example.com', 'Desk of user ' || i, 'Own ' || i
         FROM generate_series(1, 100) AS i;
         INSERT INTO conflist_conferences (conference_uri, display_text, subject)
         VALUES ('sip:shared@conf.example.com', 'Town hall', 'before');
         INSERT INTO conflist_members (conference_uri, user_uri, role)
         SELECT 'sip:own-' || i || '@conf.example.com', 'sip:u' || i || '@example.com', 'organizer'
         FROM generate_series(1, 100) AS i
         UNION ALL
         SELECT 'sip:shared@conf.example.com', 'sip:u' || i || '@example.com', 'participant'
         FROM generate_series(1, 100) AS i;
         COMMIT",
    )
    .await;

    let users: Vec<String> = (1..=USERS).map(|i| format!("u{i}")).collect();
    let mut others = join_all(users.iter().map(|u| watching(&proxy.ws_url, u))).await;
    for (i, (_, view)) in others.iter().enumerate() {
        let own = format!("sip:own-{}@conf.example.com", i + 1);
        assert_eq!(view.entities(), [own.as_str(), SHARED], "u{}", i + 1);
    }
    let (mut carol, mut carol_view) = watching(&proxy.ws_url, "carol").await;
    let truncated = "conflist_server_conferences_truncated_total";
    let truncated_before = metric(&server.admin, truncated).await.unwrap();
    let subscriptions = (USERS + 1) as f64;
    assert_eq!(
        metric(&proxy.admin, "conflist_proxy_dialogs")
            .await
            .unwrap(),
        subscriptions
    );

    exec(
        &mut conn,
        "UPDATE conflist_conferences SET free_text = repeat('x', 5 * 1024 * 1024)
         WHERE conference_uri = 'sip:1005@conf.example.com'",
    )
    .await;
    let (notify, doc) = carol_view.next(&mut carol).await.unwrap();
    let doc = doc.unwrap();
    assert!(active(&notify));
    assert!(
        notify.body.len() <= 16_384 + 1_024,
        "the conference is cut to --max-conference-bytes: {} bytes",
        notify.body.len()
    );
    assert_eq!(doc.state, DocumentState::Partial);
    assert!(matches!(&doc.entries[..], [Entry::Full(c)] if c.entity == C1005));
    let text = carol_view
        .get(C1005)
        .unwrap()
        .description
        .free_text
        .clone()
        .unwrap();
    let kept = text.strip_suffix('…').expect("truncated text ends with …");
    assert!(
        kept.len() > 8_000 && kept.bytes().all(|b| b == b'x'),
        "{} bytes kept",
        kept.len()
    );
    assert!(metric(&server.admin, truncated).await.unwrap() > truncated_before);
    assert_eq!(
        metric(&server.admin, "conflist_server_rows_skipped_total")
            .await
            .unwrap(),
        0.0,
        "truncated, not left out"
    );

    // Everybody else: the next NOTIFY is the next change of theirs, at version 1 (carol's
    // conference sent them nothing), and it still arrives.
    exec(
        &mut conn,
        "UPDATE conflist_conferences SET subject = 'after' WHERE conference_uri = 'sip:shared@conf.example.com'",
    )
    .await;
    let got = join_all(others.iter_mut().map(|(c, v)| v.next(c))).await;
    for (i, r) in got.into_iter().enumerate() {
        let (notify, doc) = r.unwrap_or_else(|e| panic!("u{}: {e:#}", i + 1));
        let doc = doc.unwrap();
        assert!(active(&notify), "u{}", i + 1);
        assert_eq!((doc.version, doc.state), (1, DocumentState::Partial));
        assert!(
            matches!(&doc.entries[..], [Entry::Full(c)]
                if c.entity == SHARED && c.description.subject.as_deref() == Some("after")),
            "u{}: {doc:?}",
            i + 1
        );
    }

    // No dialog ended, the one gRPC session was never replaced.
    assert_eq!(
        metric(&proxy.admin, "conflist_proxy_dialogs")
            .await
            .unwrap(),
        subscriptions
    );
    assert_eq!(
        metric(&server.admin, "conflist_server_subscriptions")
            .await
            .unwrap(),
        subscriptions
    );
    assert_eq!(
        metric(&server.admin, "conflist_server_sessions")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        metric(&server.admin, "conflist_server_sessions_stalled_total")
            .await
            .unwrap(),
        0.0
    );
    assert_eq!(
        metric(&proxy.admin, "conflist_proxy_upstream_sessions")
            .await
            .unwrap(),
        1.0
    );
    assert_eq!(
        metric(
            &proxy.admin,
            "conflist_proxy_upstream_queue_overflows_total"
        )
        .await
        .unwrap(),
        0.0
    );
    assert_eq!(
        metric(&proxy.admin, "conflist_proxy_upstream_unavailable_total")
            .await
            .unwrap(),
        0.0
    );
}
