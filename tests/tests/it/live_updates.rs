//! Live updates from the database, through the proxy, on real PostgreSQL: every change to a
//! conference a user belongs to reaches each of the user's subscriptions as a partial
//! document; changes elsewhere send nothing.

use crate::system;
use conflist_tests::{ListView, ServerOptions, SipWsClient};
use document::{DocumentState, Entry};
use sqlx::{Executor, PgConnection};

const C1001: &str = "sip:1001@conf.example.com";
const C1002: &str = "sip:1002@conf.example.com";
const C1003: &str = "sip:1003@conf.example.com";

/// A client subscribed to `user`'s list, holding its first (full) document.
pub(crate) async fn watching(url: &str, user: &str) -> (SipWsClient, ListView) {
    let mut c = SipWsClient::connect(url).await.unwrap();
    c.subscribe(user, 600).await.unwrap();
    let mut view = ListView::default();
    let (_, doc) = view.next(&mut c).await.unwrap();
    assert_eq!(doc.unwrap().state, DocumentState::Full);
    (c, view)
}

pub(crate) async fn exec(db: &mut PgConnection, sql: &str) {
    db.execute(sqlx::AssertSqlSafe(sql.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn entities(doc: &document::ConferenceList) -> Vec<(&str, bool)> {
    doc.entries
        .iter()
        .map(|e| match e {
            Entry::Full(c) => (c.entity.as_str(), true),
            Entry::Deleted { entity, .. } => (entity.as_str(), false),
        })
        .collect()
}

#[tokio::test]
async fn a_subject_change_is_a_partial_with_only_that_conference() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;

    exec(&mut db, "UPDATE conflist_conferences SET subject = 'Moved to </subject><x>' WHERE conference_uri = 'sip:1001@conf.example.com'").await;
    let (notify, doc) = view.next(&mut alice).await.unwrap();
    let doc = doc.unwrap();
    assert_eq!((doc.version, doc.state), (1, DocumentState::Partial));
    assert_eq!(entities(&doc), [(C1001, true)]);
    assert_eq!(
        view.get(C1001).unwrap().description.subject.as_deref(),
        Some("Moved to </subject><x>"),
        "text round-trips escaped"
    );
    assert!(
        notify
            .headers
            .get(&sip::HeaderName::SUBSCRIPTION_STATE)
            .unwrap()
            .starts_with("active;expires="),
    );
    assert_eq!(view.entities(), [C1001, C1002, C1003]);
}

#[tokio::test]
async fn membership_changes_add_and_delete_entries() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;

    exec(&mut db, "INSERT INTO conflist_members VALUES ('sip:1004@conf.example.com', 'sip:alice@example.com', 'moderator')").await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(entities(&doc), [("sip:1004@conf.example.com", true)]);
    assert_eq!(
        view.get("sip:1004@conf.example.com")
            .unwrap()
            .role
            .as_deref(),
        Some("moderator")
    );

    exec(&mut db, "DELETE FROM conflist_members WHERE conference_uri = 'sip:1002@conf.example.com' AND user_uri = 'sip:alice@example.com'").await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(entities(&doc), [(C1002, false)]);
    assert_eq!(view.entities(), [C1001, C1003, "sip:1004@conf.example.com"]);
}

#[tokio::test]
async fn a_deleted_conference_is_deleted_for_every_member() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let mut members = Vec::new();
    for user in ["alice", "bob", "carol", "dave"] {
        members.push(watching(&sys.proxy.ws_url, user).await);
    }
    exec(
        &mut db,
        "DELETE FROM conflist_conferences WHERE conference_uri = 'sip:1003@conf.example.com'",
    )
    .await;
    for (client, view) in &mut members {
        let doc = view.next(client).await.unwrap().1.unwrap();
        assert_eq!(entities(&doc), [(C1003, false)]);
        assert!(view.get(C1003).is_none());
    }
}

#[tokio::test]
async fn a_new_conference_reaches_its_members_only_and_other_changes_send_nothing() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut alice_view) = watching(&sys.proxy.ws_url, "alice").await;
    let (mut carol, mut carol_view) = watching(&sys.proxy.ws_url, "carol").await;

    exec(&mut db, "BEGIN; \
        INSERT INTO conflist_conferences (conference_uri, display_text) VALUES ('sip:2000@conf.example.com', 'Offsite'); \
        INSERT INTO conflist_members VALUES ('sip:2000@conf.example.com', 'sip:carol@example.com', 'organizer'); \
        COMMIT").await;
    // A change to a conference alice is not in (1005: carol and dave).
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'not for alice' WHERE conference_uri = 'sip:1005@conf.example.com'").await;

    let doc = carol_view.next(&mut carol).await.unwrap().1.unwrap();
    assert!(entities(&doc).contains(&("sip:2000@conf.example.com", true)));
    assert_eq!(
        carol_view
            .get("sip:2000@conf.example.com")
            .unwrap()
            .description
            .display_text
            .as_deref(),
        Some("Offsite")
    );

    // Alice's next NOTIFY is for a change of hers, and it is her first since the full one:
    // neither the new conference nor the change to 1005 produced one.
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'for alice' WHERE conference_uri = 'sip:1002@conf.example.com'").await;
    let doc = alice_view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(
        doc.version, 1,
        "alice got no NOTIFY for others' conferences"
    );
    assert_eq!(entities(&doc), [(C1002, true)]);
    assert_eq!(alice_view.notifies, 2);
}

#[tokio::test]
async fn every_subscription_of_a_user_is_notified() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut tab1, mut view1) = watching(&sys.proxy.ws_url, "bob").await;
    let (mut tab2, mut view2) = watching(&sys.proxy.ws_url, "bob").await;
    exec(&mut db, "UPDATE conflist_conferences SET maximum_user_count = 99 WHERE conference_uri = 'sip:1004@conf.example.com'").await;
    for (c, v) in [(&mut tab1, &mut view1), (&mut tab2, &mut view2)] {
        v.next(c).await.unwrap();
        assert_eq!(
            v.get("sip:1004@conf.example.com")
                .unwrap()
                .description
                .maximum_user_count,
            Some(99)
        );
    }
}

#[tokio::test]
async fn a_burst_of_changes_is_coalesced_and_converges() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;

    let confs = [C1001, C1002, C1003];
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let conf = confs[i % 3];
        exec(&mut db, &format!("UPDATE conflist_conferences SET subject = 'burst {i}' WHERE conference_uri = '{conf}'")).await;
    }
    let burst = started.elapsed();
    // The last three writes set 'burst 997' (1002), 'burst 998' (1003), 'burst 999' (1001).
    let expected = [
        (C1001, "burst 999"),
        (C1002, "burst 997"),
        (C1003, "burst 998"),
    ];
    let converged = |v: &ListView| {
        expected
            .iter()
            .all(|(c, s)| v.get(c).and_then(|c| c.description.subject.as_deref()) == Some(*s))
    };
    let mut versions = vec![view.version.unwrap()];
    while !converged(&view) {
        // `next` fails on any version gap; every NOTIFY must move the version up by one.
        view.next(&mut alice).await.unwrap();
        versions.push(view.version.unwrap());
    }
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "versions {versions:?}"
    );
    assert_eq!(view.entities(), [C1001, C1002, C1003]);
    let notifies = view.notifies - 1;
    println!("1000 changes in {burst:?} -> {notifies} NOTIFYs");
    assert!(
        (1..100).contains(&notifies),
        "{notifies} NOTIFYs for 1000 changes: not coalesced"
    );
}

#[tokio::test]
async fn changes_racing_new_subscriptions_are_neither_lost_nor_reordered() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..300 {
            exec(&mut db, &format!("UPDATE conflist_conferences SET subject = 'race {i}' WHERE conference_uri = '{C1001}'")).await;
        }
        db
    });
    // Subscriptions start while the writes land: each is answered from some snapshot and
    // must then be carried to the final state by partials, versions contiguous.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(watching(&sys.proxy.ws_url, "alice").await);
    }
    let _db = writer.await.unwrap();
    for (client, view) in &mut clients {
        while view
            .get(C1001)
            .and_then(|c| c.description.subject.as_deref())
            != Some("race 299")
        {
            view.next(client).await.unwrap(); // fails on a version gap
        }
        assert_eq!(view.entities(), [C1001, C1002, C1003]);
    }
}

#[tokio::test]
async fn polling_mode_finds_changes_without_the_change_log() {
    let sys = system(ServerOptions {
        extra_args: vec![
            "--change-detection".into(),
            "poll".into(),
            "--change-interval".into(),
            "100ms".into(),
        ],
        ..ServerOptions::default()
    })
    .await;
    let mut db = sys.db.connect().await.unwrap();
    // Prove the log is not what carries the change: drop it first.
    exec(&mut db, "DROP TABLE conflist_changes CASCADE").await;
    exec(
        &mut db,
        "DROP TRIGGER conflist_changes ON conflist_conferences",
    )
    .await;
    let (mut bob, mut view) = watching(&sys.proxy.ws_url, "bob").await;
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'polled' WHERE conference_uri = 'sip:1004@conf.example.com'").await;
    let doc = view.next(&mut bob).await.unwrap().1.unwrap();
    assert_eq!(entities(&doc), [("sip:1004@conf.example.com", true)]);
    assert_eq!(
        view.get("sip:1004@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("polled")
    );
}
