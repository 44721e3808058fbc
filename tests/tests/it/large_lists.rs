//! A user in thousands of conferences still gets a list: a state larger than one NOTIFY
//! (`--max-notify-bytes`, 64 KiB by default) goes out as a full document marked
//! `complete="false"` and partials at the next versions, each within the cap, nearest
//! conferences first; applied in order they are exactly the database's list. A fetch
//! (`Expires: 0`) gets the same parts and ends with the last one.

use crate::system;
use conflist_tests::client::receive_complete;
use conflist_tests::{ServerOptions, SipWsClient};
use document::{Conference, ConferenceList, DocumentState, Entry};
use sip::{HeaderName, Request, SubscriptionState};
use sqlx::{Executor, PgConnection};

/// What a conference's row says, as the document must show it.
type Row = (String, Option<String>, Option<String>, Option<String>);

/// `user`'s conferences in the database: URI, display text, subject, free text; by URI.
pub(crate) async fn db_list(db: &mut PgConnection, user: &str) -> Vec<Row> {
    sqlx::query_as(
        "SELECT c.conference_uri, c.display_text, c.subject, c.free_text
         FROM conflist_conferences c JOIN conflist_members m USING (conference_uri)
         WHERE m.user_uri = $1 ORDER BY c.conference_uri COLLATE \"C\"",
    )
    .bind(format!("sip:{user}@example.com"))
    .fetch_all(db)
    .await
    .unwrap()
}

/// The same fields of a list a client assembled (sorted by entity, as `apply` returns it).
pub(crate) fn rows_of(list: &[Conference]) -> Vec<Row> {
    list.iter()
        .map(|c| {
            (
                c.entity.clone(),
                c.description.display_text.clone(),
                c.description.subject.clone(),
                c.description.free_text.clone(),
            )
        })
        .collect()
}

/// Checks the shape of a multi-part state: every body within `cap`, the first a full
/// document marked incomplete, then partials at consecutive versions that only add
/// conferences, each conference once, the last one complete. Returns the entities of each
/// part, in document order.
pub(crate) fn check_parts(parts: &[(Request, ConferenceList)], cap: usize) -> Vec<Vec<String>> {
    assert!(
        parts.len() > 1,
        "a state over the cap comes in several parts"
    );
    let mut seen = std::collections::HashSet::new();
    let first_version = parts[0].1.version;
    for (i, (notify, doc)) in parts.iter().enumerate() {
        assert!(
            notify.body.len() <= cap,
            "part {i}: {} bytes > {cap}",
            notify.body.len()
        );
        assert_eq!(
            doc.version,
            first_version + i as u64,
            "part {i}: versions contiguous"
        );
        let want_state = if i == 0 {
            DocumentState::Full
        } else {
            DocumentState::Partial
        };
        assert_eq!(doc.state, want_state, "part {i}");
        assert_eq!(
            doc.complete,
            i + 1 == parts.len(),
            "part {i}: complete flag"
        );
        assert!(!doc.entries.is_empty(), "part {i} adds conferences");
        for e in &doc.entries {
            let Entry::Full(c) = e else {
                panic!("part {i} deletes {}", e.entity())
            };
            assert!(seen.insert(c.entity.clone()), "{} sent twice", c.entity);
        }
    }
    parts
        .iter()
        .map(|(_, d)| d.entries.iter().map(|e| e.entity().to_owned()).collect())
        .collect()
}

fn state(notify: &Request) -> SubscriptionState {
    SubscriptionState::parse(
        notify
            .headers
            .get(&HeaderName::SUBSCRIPTION_STATE)
            .expect("NOTIFY without Subscription-State"),
    )
    .expect("bad Subscription-State")
}

#[tokio::test]
async fn a_user_in_two_thousand_conferences_gets_the_whole_list_in_parts() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    db.execute(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject, free_text, web_page)
         SELECT 'sip:big-' || i || '@conf.example.com', 'Conference ' || i,
                'Subject of conference number ' || i, repeat('free text ', 60) || i,
                'https://meet.example.com/big-' || i
         FROM generate_series(1, 2000) AS i;
         INSERT INTO conflist_members (conference_uri, user_uri, role)
         SELECT 'sip:big-' || i || '@conf.example.com', 'sip:carol@example.com', 'participant'
         FROM generate_series(1, 2000) AS i;",
    )
    .await
    .unwrap();
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    c.subscribe("carol", 600).await.unwrap();
    let (list, parts) = receive_complete(&mut c).await.unwrap();

    let entities = check_parts(&parts, 65_536);
    assert_eq!(parts[0].1.version, 0);
    let total: usize = parts.iter().map(|(n, _)| n.body.len()).sum();
    assert!(total > 1_000_000, "{total} bytes in {} parts", parts.len());
    assert!(
        parts[0].0.body.len() > 60_000,
        "the first part is filled up to the cap: {} bytes",
        parts[0].0.body.len()
    );
    assert_eq!(rows_of(&list), db_list(&mut db, "carol").await);
    assert_eq!(list.len(), 2003);
    // Nearest first across the parts: the recurring standup's next occurrence comes before
    // the 2 000 undated conferences, the weekly sync of last month after them.
    assert!(entities[0].contains(&"sip:1005@conf.example.com".to_owned()));
    assert_eq!(
        entities.last().unwrap().last().map(String::as_str),
        Some("sip:1001@conf.example.com")
    );
    for (n, _) in &parts {
        assert!(matches!(state(n), SubscriptionState::Active { .. }));
    }

    // The connection and the session are still up: a second subscriber is served.
    let mut alice = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    alice.subscribe("alice", 600).await.unwrap();
    let n = alice.recv_notify().await.unwrap();
    alice.respond(&n, 200).await.unwrap();
}

#[tokio::test]
async fn a_fetch_of_a_large_list_gets_every_part_and_ends_with_the_last() {
    const CAP: usize = 16_384;
    let sys = system(ServerOptions {
        extra_args: [
            "--max-notify-bytes",
            "16384",
            "--max-conference-bytes",
            "4096",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..ServerOptions::default()
    })
    .await;
    let mut db = sys.db.connect().await.unwrap();
    db.execute(
        "INSERT INTO conflist_conferences (conference_uri, display_text, free_text)
         SELECT 'sip:fetch-' || i || '@conf.example.com', 'Fetched ' || i,
                repeat('0123456789abcdef', 64) || i
         FROM generate_series(1, 300) AS i;
         INSERT INTO conflist_members (conference_uri, user_uri, role)
         SELECT 'sip:fetch-' || i || '@conf.example.com', 'sip:dave@example.com', 'participant'
         FROM generate_series(1, 300) AS i;",
    )
    .await
    .unwrap();
    let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    let sub = c.subscribe("dave", 0).await.unwrap();
    assert_eq!(sub.response.headers.get(&HeaderName::EXPIRES), Some("0"));
    let (list, parts) = receive_complete(&mut c).await.unwrap();

    check_parts(&parts, CAP);
    assert!(
        parts.len() >= 20,
        "300 × 1 KiB in 16 KiB parts: {}",
        parts.len()
    );
    let (last, earlier) = parts.split_last().unwrap();
    for (n, _) in earlier {
        assert!(
            matches!(state(n), SubscriptionState::Active { .. }),
            "{:?}",
            state(n)
        );
    }
    assert_eq!(
        state(&last.0),
        SubscriptionState::Terminated {
            reason: Some("timeout".into()),
            retry_after: None
        },
        "the last part ends the fetch"
    );
    assert_eq!(rows_of(&list), db_list(&mut db, "dave").await);
    assert_eq!(list.len(), 303);
    // Nothing follows the final NOTIFY: the dialog is gone.
    let mut dialog = sub.dialog;
    c.resubscribe(&mut dialog, 60).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 481);
}
