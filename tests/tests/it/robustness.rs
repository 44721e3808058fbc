//! Robustness of the live path (issue 13): a bad row costs only its conference, changes the
//! log cannot see are repaired, the change log stays bounded and commit-safe, and operator
//! input in `db install` / `db uninstall` runs no injected SQL.

use crate::live_updates::{exec, watching};
use crate::system;
use conflist_server::directory::{ChangeCursor, Directory};
use conflist_tests::process::{bin_dir, http_get};
use conflist_tests::{ServerOptions, TestDb};
use document::{DocumentState, Entry};
use sqlx::Executor;
use std::collections::HashSet;
use std::time::Duration;

const C1001: &str = "sip:1001@conf.example.com";
const C1002: &str = "sip:1002@conf.example.com";
const C1004: &str = "sip:1004@conf.example.com";

fn options(extra: &[&str]) -> ServerOptions {
    ServerOptions {
        extra_args: extra.iter().map(|a| (*a).to_owned()).collect(),
        ..ServerOptions::default()
    }
}

/// The value of the counter or gauge `name` on an admin endpoint.
async fn metric(admin: &str, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

fn server_command(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("conflist-server"))
        .args(["--database-url", url])
        .args(args)
        .output()
        .unwrap()
}

async fn table_exists(conn: &mut sqlx::PgConnection, table: &str) -> bool {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(conn)
        .await
        .unwrap();
    exists
}

#[tokio::test]
async fn a_bad_row_costs_only_its_conference() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    // Both cached: a resync that reads dave's rows must not stop bob's updates.
    let (mut dave, mut dave_view) = watching(&sys.proxy.ws_url, "dave").await;
    let (mut bob, mut bob_view) = watching(&sys.proxy.ws_url, "bob").await;

    // An operator's data: dave's membership of 1004 loses its role.
    exec(
        &mut db,
        "ALTER TABLE conflist_members ALTER COLUMN role DROP NOT NULL",
    )
    .await;
    exec(&mut db, &format!("UPDATE conflist_members SET role = NULL WHERE conference_uri = '{C1004}' AND user_uri = 'sip:dave@example.com'")).await;
    // For dave the row is skipped: 1004 goes away from his list, nothing else.
    let doc = dave_view.next(&mut dave).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert!(matches!(&doc.entries[..], [Entry::Deleted { entity, .. }] if entity == C1004));
    assert_eq!(
        dave_view.entities(),
        ["sip:1003@conf.example.com", "sip:1005@conf.example.com"]
    );

    // Everyone else carries on: bob's next change reaches him as a partial.
    exec(&mut db, &format!("UPDATE conflist_conferences SET subject = 'still live' WHERE conference_uri = '{C1002}'")).await;
    let doc = bob_view.next(&mut bob).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert_eq!(doc.version, 1, "bob got nothing for dave's bad row");
    assert_eq!(
        bob_view.get(C1002).unwrap().description.subject.as_deref(),
        Some("still live")
    );
    assert!(bob_view.get(C1004).is_some(), "bob's own 1004 row is fine");

    // A new subscription of dave is answered (not 503), without the bad conference.
    let (_tab, tab_view) = watching(&sys.proxy.ws_url, "dave").await;
    assert_eq!(
        tab_view.entities(),
        ["sip:1003@conf.example.com", "sip:1005@conf.example.com"]
    );
    assert!(metric(&sys.server.admin, "conflist_server_rows_skipped_total").await >= 1.0);
}

#[tokio::test]
async fn a_truncate_resyncs_every_subscriber() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let mut members = Vec::new();
    for user in ["alice", "bob"] {
        members.push(watching(&sys.proxy.ws_url, user).await);
    }
    exec(&mut db, "TRUNCATE conflist_members").await;
    for (client, view) in &mut members {
        while !view.entities().is_empty() {
            view.next(client).await.unwrap();
        }
    }
    // Afterwards the log is followed as before.
    exec(
        &mut db,
        &format!(
            "INSERT INTO conflist_members VALUES ('{C1001}', 'sip:alice@example.com', 'organizer')"
        ),
    )
    .await;
    let (alice, view) = &mut members[0];
    view.next(alice).await.unwrap();
    assert_eq!(view.entities(), [C1001]);
}

#[tokio::test]
async fn a_change_with_triggers_disabled_converges_within_the_verify_interval() {
    let sys = system(options(&["--verify-interval", "1s"])).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;
    let logged = || "SELECT count(*) FROM conflist_changes";
    let (before,): (i64,) = sqlx::query_as(logged()).fetch_one(&mut db).await.unwrap();
    // `replica` disables ordinary triggers: no change-log row is written.
    exec(&mut db, &format!("BEGIN; SET LOCAL session_replication_role = replica; \
        UPDATE conflist_conferences SET subject = 'unlogged' WHERE conference_uri = '{C1001}'; COMMIT")).await;
    let (after,): (i64,) = sqlx::query_as(logged()).fetch_one(&mut db).await.unwrap();
    assert_eq!(
        before, after,
        "the write must bypass the log for this test to mean anything"
    );

    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert_eq!(
        view.get(C1001).unwrap().description.subject.as_deref(),
        Some("unlogged")
    );
    assert!(metric(&sys.server.admin, "conflist_server_verify_repairs_total").await >= 1.0);
    assert!(
        metric(
            &sys.server.admin,
            "conflist_server_change_frontier_age_seconds"
        )
        .await
            >= 0.0
    );
}

#[tokio::test]
async fn an_unwatched_table_behind_a_view_converges_within_the_verify_interval() {
    let db = TestDb::create().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    conn.execute(include_str!("../../../docs/operator-schema.sql"))
        .await
        .unwrap();
    let out = server_command(
        &db.url,
        &[
            "db",
            "install",
            "--watch",
            "rooms='sip:room-' || id || '@conf.example.com'",
            "--watch",
            "room_access='sip:room-' || room_id || '@conf.example.com'",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = conflist_tests::spawn_server(
        &db.url,
        &ServerOptions {
            demo: false,
            ..options(&["--verify-interval", "1s"])
        },
    )
    .await
    .unwrap();
    let proxy = conflist_tests::spawn_proxy(&server, &[]).await.unwrap();
    let (mut frank, mut view) = watching(&proxy.ws_url, "frank").await;
    assert_eq!(view.entities().len(), 2);

    // `accounts` is not watched: renaming frank's login moves his rooms to another user.
    exec(
        &mut conn,
        "UPDATE accounts SET login = 'francis' WHERE login = 'frank'",
    )
    .await;
    while !view.entities().is_empty() {
        view.next(&mut frank).await.unwrap();
    }
}

#[tokio::test]
async fn a_stale_cache_entry_is_re_read_for_a_new_subscription() {
    // Verification off: only the cache's max age can find the unlogged change.
    let sys = system(options(&[
        "--verify-interval",
        "0s",
        "--cache-max-age",
        "0s",
    ]))
    .await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut tab1, mut view1) = watching(&sys.proxy.ws_url, "alice").await;
    exec(&mut db, &format!("BEGIN; SET LOCAL session_replication_role = replica; \
        UPDATE conflist_conferences SET subject = 'unlogged' WHERE conference_uri = '{C1001}'; COMMIT")).await;

    let (_tab2, view2) = watching(&sys.proxy.ws_url, "alice").await;
    assert_eq!(
        view2.get(C1001).unwrap().description.subject.as_deref(),
        Some("unlogged"),
        "the new subscription is served from a fresh read"
    );
    // The re-read corrected the shared entry, so the older tab follows.
    view1.next(&mut tab1).await.unwrap();
    assert_eq!(
        view1.get(C1001).unwrap().description.subject.as_deref(),
        Some("unlogged")
    );
}

#[tokio::test]
async fn db_uninstall_runs_no_sql_from_conflist_watched() {
    let db = TestDb::create().await.unwrap();
    let out = server_command(&db.url, &["db", "migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conn = db.connect().await.unwrap();
    exec(&mut conn, "CREATE TABLE victim (x INT)").await;
    // Anyone who can write conflist_watched could plant this.
    sqlx::query("INSERT INTO conflist_watched (table_name, conference_expr) VALUES ($1, 'x')")
        .bind("conflist_members; DROP TABLE victim; --")
        .execute(&mut conn)
        .await
        .unwrap();

    let out = server_command(&db.url, &["db", "uninstall"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        table_exists(&mut conn, "victim").await,
        "the injected DROP ran"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("skipped"),
        "the hostile name is reported: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!table_exists(&mut conn, "conflist_changes").await);
    let (triggers,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM pg_trigger WHERE tgname IN ('conflist_changes', 'conflist_changes_truncate')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(triggers, 0, "the genuine watches were removed");
}

#[tokio::test]
async fn db_install_refuses_an_expression_that_closes_the_function_body() {
    let db = TestDb::create().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    exec(
        &mut conn,
        "CREATE TABLE rooms (id INT); CREATE TABLE victim (x INT)",
    )
    .await;
    for expr in [
        "rooms=id::text $conflist$; DROP TABLE victim; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $conflist$ SELECT 1",
        "rooms=id::text FROM rooms; DROP TABLE victim",
    ] {
        let out = server_command(&db.url, &["db", "install", "--watch", expr]);
        assert_eq!(out.status.code(), Some(64), "{expr}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("watch expression"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(table_exists(&mut conn, "victim").await);
    assert!(
        !table_exists(&mut conn, "conflist_changes").await,
        "nothing was installed"
    );
}

/// Commits one change-log row per conference, each in its own transaction.
async fn log_rows(conn: &mut sqlx::PgConnection, conferences: &[String]) {
    for c in conferences {
        sqlx::query("INSERT INTO conflist_changes (conference_uri) VALUES ($1)")
            .bind(c)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_long_transaction_keeps_log_reads_paged_and_the_cursor_bounded() {
    let db = TestDb::create().await.unwrap();
    let d = Directory::connect(&db.url, 4).await.unwrap();
    d.migrate().await.unwrap();
    let mut cursor = d.change_cursor().await.unwrap();

    // A writing transaction that stays open pins the snapshot's xmin.
    let mut long = db.connect().await.unwrap();
    exec(&mut long, "BEGIN").await;
    let (long_txid,): (String,) = sqlx::query_as("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut long)
        .await
        .unwrap();
    let long_txid: u64 = long_txid.parse().unwrap();
    exec(
        &mut long,
        "INSERT INTO conflist_changes (conference_uri) VALUES ('sip:long@conf.example.com')",
    )
    .await;

    let mut other = db.connect().await.unwrap();
    let mut expected = HashSet::new();
    for round in 0..3 {
        let batch: Vec<String> = (0..40)
            .map(|i| format!("sip:{round}-{i}@conf.example.com"))
            .collect();
        log_rows(&mut other, &batch).await;
        // Pages of 7 rows: 40 rows take several queries and all arrive.
        let read = d.read_changes(&mut cursor, 7).await.unwrap();
        assert_eq!(
            read.rows, 40,
            "round {round}: each committed row exactly once"
        );
        assert_eq!(
            read.conferences,
            batch.iter().cloned().collect::<HashSet<_>>()
        );
        expected.extend(batch);
        // Transaction ids are cluster-wide: other tests' transactions may be running too.
        let ChangeCursor::Postgres { snapshot } = &cursor else {
            unreachable!("PostgreSQL")
        };
        assert!(
            snapshot.xip.contains(&long_txid),
            "the long transaction is still running"
        );
        assert!(cursor.oldest_open().is_some_and(|t| t <= long_txid));
        assert!(
            cursor.tracked() < 40,
            "the cursor holds running transactions, not the {} rows read: {}",
            expected.len(),
            cursor.tracked()
        );
    }
    assert_eq!(d.read_changes(&mut cursor, 7).await.unwrap().rows, 0);

    exec(&mut long, "COMMIT").await;
    let read = d.read_changes(&mut cursor, 7).await.unwrap();
    assert_eq!(read.rows, 1, "the late commit is read once it commits");
    assert!(read.conferences.contains("sip:long@conf.example.com"));
    assert_eq!(d.read_changes(&mut cursor, 7).await.unwrap().rows, 0);
    let ChangeCursor::Postgres { snapshot } = &cursor else {
        unreachable!("PostgreSQL")
    };
    assert!(!snapshot.xip.contains(&long_txid));
    d.close().await;
}

#[tokio::test]
async fn pruning_spares_rows_that_a_late_commit_wrote() {
    let db = TestDb::create().await.unwrap();
    let d = Directory::connect(&db.url, 4).await.unwrap();
    d.migrate().await.unwrap();
    let mut reader = d.change_cursor().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    // Rows written two hours ago by transactions long committed.
    exec(&mut conn, "INSERT INTO conflist_changes (conference_uri, changed_at) VALUES ('sip:early@conf.example.com', clock_timestamp() - interval '2 hours')").await;
    // A transaction that wrote two hours ago and has not committed yet.
    let mut late = db.connect().await.unwrap();
    exec(&mut late, "BEGIN; INSERT INTO conflist_changes (conference_uri, changed_at) VALUES ('sip:late@conf.example.com', clock_timestamp() - interval '2 hours')").await;
    // The mark a pruner took (a cursor from then), and the late commit after it.
    let mark = d.change_cursor().await.unwrap().prune_mark();
    exec(&mut late, "COMMIT").await;

    let pruned = d
        .prune_changes(Duration::from_secs(3600), &mark)
        .await
        .unwrap();
    assert_eq!(pruned, 1, "only the early row, committed before the mark");
    let read = d.read_changes(&mut reader, 100).await.unwrap();
    assert_eq!(
        read.conferences,
        HashSet::from(["sip:late@conf.example.com".to_owned()]),
        "the late commit's row is still there to read"
    );
    let (default,): (String,) = sqlx::query_as(
        "SELECT column_default FROM information_schema.columns \
         WHERE table_name = 'conflist_changes' AND column_name = 'changed_at'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(default, "clock_timestamp()");
    d.close().await;
}

#[tokio::test]
async fn a_truncate_is_logged_as_a_resync_on_operator_tables_too() {
    let db = TestDb::create().await.unwrap();
    let d = Directory::connect(&db.url, 2).await.unwrap();
    d.migrate().await.unwrap();
    d.load_demo_data().await.unwrap();
    let mut cursor = d.change_cursor().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    exec(&mut conn, "TRUNCATE conflist_members").await;
    let read = d.read_changes(&mut cursor, 100).await.unwrap();
    assert!(read.resync);
    assert!(read.conferences.is_empty());
    d.close().await;
}

#[tokio::test]
async fn a_member_row_without_a_role_is_skipped_by_every_directory_query() {
    let db = TestDb::create().await.unwrap();
    let d = Directory::connect(&db.url, 2).await.unwrap();
    d.migrate().await.unwrap();
    d.load_demo_data().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    exec(
        &mut conn,
        "ALTER TABLE conflist_members ALTER COLUMN role DROP NOT NULL",
    )
    .await;
    exec(&mut conn, &format!("UPDATE conflist_members SET role = NULL WHERE conference_uri = '{C1004}' AND user_uri = 'sip:dave@example.com'")).await;

    let dave = d.conferences_of("sip:dave@example.com").await.unwrap();
    assert_eq!(dave.len(), 2);
    let many = d
        .conferences_of_many(&["sip:dave@example.com".into(), "sip:bob@example.com".into()])
        .await
        .unwrap();
    assert_eq!(many["sip:bob@example.com"].len(), 4);
    assert_eq!(many["sip:dave@example.com"].len(), 2);
    let members = d.memberships_of(&[C1004.to_owned()]).await.unwrap();
    assert_eq!(
        members.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["sip:bob@example.com"]
    );
    assert_eq!(d.rows_skipped(), 3);
    d.close().await;
}
