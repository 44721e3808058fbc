//! A read replica (`--read-database-url`): conference, membership and credential reads go
//! to it, the change log is followed on the primary.

use crate::live_updates::{exec, watching};
use conflist_server::directory::Directory;
use conflist_tests::process::{http_get, metric};
use conflist_tests::{ServerOptions, TestDb, spawn_proxy, spawn_server};
use document::{DocumentState, Entry};

const C1002: &str = "sip:1002@conf.example.com";
const C1003: &str = "sip:1003@conf.example.com";

/// `url` with one more query parameter.
fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn replica_args(url: &str) -> Vec<String> {
    vec!["--read-database-url".to_owned(), url.to_owned()]
}

#[tokio::test]
async fn subscribe_live_updates_and_metrics_through_a_replica_url() {
    let db = TestDb::create().await.unwrap();
    let replica = with_param(&db.url, "application_name=conflist-replica");
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            extra_args: replica_args(&replica),
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&proxy.ws_url, "alice").await;
    assert_eq!(view.entities().len(), 3);

    exec(
        &mut conn,
        "UPDATE conflist_conferences SET subject = 'through the replica' \
         WHERE conference_uri = 'sip:1003@conf.example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert_eq!(
        view.get(C1003).unwrap().description.subject.as_deref(),
        Some("through the replica")
    );

    // The replica's pool holds connections of its own (named by the URL) and is reported.
    let (replica_backends,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'conflist-replica'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(replica_backends >= 1, "no connection of the replica pool");
    let (_, body) = http_get(&server.admin, "/metrics").await.unwrap();
    assert!(
        body.contains("conflist_server_db_pool_connections{pool=\"replica\",state=\"idle\"}"),
        "{body}"
    );
    assert!(
        body.contains("conflist_server_db_query_seconds_count{query=\"members_of\"}"),
        "{body}"
    );
    assert_eq!(
        metric(&server.admin, "conflist_server_replica_fallbacks_total")
            .await
            .unwrap(),
        0.0,
        "a database that is not in recovery is always caught up"
    );
    let lag = metric(&server.admin, "conflist_server_change_log_lag_seconds")
        .await
        .unwrap();
    assert!((0.0..60.0).contains(&lag), "change-log lag {lag}");
    // Both binaries say which build runs and how many descriptors they hold.
    for admin in [&server.admin, &proxy.admin] {
        let (_, body) = http_get(admin, "/metrics").await.unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            body.contains(&format!("conflist_build_info{{version=\"{version}\"}} 1")),
            "{body}"
        );
        let fds = metric(admin, "process_open_fds").await.unwrap();
        assert!(fds >= 3.0, "{admin}: {fds} open descriptors");
    }
}

/// With a "replica" that holds other data than the primary, what the subscriber sees shows
/// where each read went: the lists come from the replica, the changes from the primary's log.
#[tokio::test]
async fn lists_are_read_from_the_replica_and_changes_from_the_primary_log() {
    let primary = TestDb::create().await.unwrap();
    let replica = TestDb::create().await.unwrap();
    let d = Directory::connect(&replica.url, 2).await.unwrap();
    d.migrate().await.unwrap();
    d.load_demo_data().await.unwrap();
    d.close().await;
    let mut on_replica = replica.connect().await.unwrap();
    let mut on_primary = primary.connect().await.unwrap();
    exec(
        &mut on_replica,
        "UPDATE conflist_conferences SET subject = 'replica copy' \
         WHERE conference_uri = 'sip:1003@conf.example.com'",
    )
    .await;
    let server = spawn_server(
        &primary.url,
        &ServerOptions {
            extra_args: replica_args(&replica.url),
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    let (mut alice, mut view) = watching(&proxy.ws_url, "alice").await;
    assert_eq!(
        view.get(C1003).unwrap().description.subject.as_deref(),
        Some("replica copy"),
        "the initial list is read from the replica"
    );

    // A change logged only on the replica is not followed; one logged on the primary is,
    // and its users are recomputed from the replica.
    exec(
        &mut on_replica,
        "UPDATE conflist_conferences SET subject = 'replica only' \
         WHERE conference_uri = 'sip:1002@conf.example.com'",
    )
    .await;
    exec(
        &mut on_replica,
        "UPDATE conflist_conferences SET subject = 'replica, later' \
         WHERE conference_uri = 'sip:1003@conf.example.com'",
    )
    .await;
    exec(
        &mut on_primary,
        "UPDATE conflist_conferences SET subject = 'primary, later' \
         WHERE conference_uri = 'sip:1003@conf.example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    let changed: Vec<&str> = doc
        .entries
        .iter()
        .map(|e| match e {
            Entry::Full(c) => c.entity.as_str(),
            Entry::Deleted { entity, .. } => entity.as_str(),
        })
        .collect();
    assert_eq!(
        changed,
        [C1003],
        "only the conference the primary's log names"
    );
    assert_eq!(
        view.get(C1003).unwrap().description.subject.as_deref(),
        Some("replica, later")
    );
    assert_ne!(
        view.get(C1002).unwrap().description.subject.as_deref(),
        Some("replica only")
    );
}
