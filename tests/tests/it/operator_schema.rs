//! The README's worked example, as it is written: an operator schema (docs/operator-schema.sql)
//! mapped with views, the install command run as the README says, and live updates flowing
//! from writes to the operator's own tables.

use crate::live_updates::exec;
use conflist_tests::process::bin_dir;
use conflist_tests::{ListView, ServerOptions, SipWsClient, TestDb, spawn_proxy, spawn_server};
use document::{DocumentState, Entry};
use sqlx::Executor;

const BOARD: &str = "sip:room-1@conf.example.com";
const SUPPORT: &str = "sip:room-2@conf.example.com";

#[tokio::test]
async fn an_operator_schema_mapped_with_views_gets_live_updates() {
    let db = TestDb::create().await.unwrap();
    let mut conn = db.connect().await.unwrap();
    let schema = include_str!("../../../docs/operator-schema.sql");
    conn.execute(schema).await.unwrap();

    // The README's install command.
    let out = std::process::Command::new(bin_dir().join("conflist-server"))
        .args([
            "--database-url",
            &db.url,
            "db",
            "install",
            "--watch",
            "rooms='sip:room-' || id || '@conf.example.com'",
            "--watch",
            "room_access='sip:room-' || room_id || '@conf.example.com'",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("watching room_access"));

    let server = spawn_server(
        &db.url,
        &ServerOptions {
            demo: false,
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();

    let mut frank = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    frank.subscribe("frank", 600).await.unwrap();
    let mut view = ListView::default();
    view.next(&mut frank).await.unwrap();
    assert_eq!(view.entities(), [BOARD, SUPPORT]);
    let support = view.get(SUPPORT).unwrap();
    assert_eq!(support.role.as_deref(), Some("organizer"));
    assert_eq!(support.description.available_media.len(), 1, "audio only");
    assert_eq!(
        view.get(BOARD).unwrap().schedule.start.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );

    // A write to the operator's own table → a partial with that conference.
    exec(
        &mut conn,
        "UPDATE rooms SET topic = 'Budget 2027', seats = 10 WHERE id = 1",
    )
    .await;
    let doc = view.next(&mut frank).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    let board = view.get(BOARD).unwrap();
    assert_eq!(board.description.subject.as_deref(), Some("Budget 2027"));
    assert_eq!(board.description.maximum_user_count, Some(10));

    // Access revoked → deleted; a new room granted → appears.
    exec(
        &mut conn,
        "DELETE FROM room_access WHERE room_id = 1 AND account_id = 2",
    )
    .await;
    let doc = view.next(&mut frank).await.unwrap().1.unwrap();
    assert!(matches!(&doc.entries[..], [Entry::Deleted { entity, .. }] if entity == BOARD));
    exec(
        &mut conn,
        "BEGIN; INSERT INTO rooms (id, title) VALUES (3, 'Retro'); \
        INSERT INTO room_access VALUES (3, 2, false); COMMIT",
    )
    .await;
    view.next(&mut frank).await.unwrap();
    assert_eq!(view.entities(), [SUPPORT, "sip:room-3@conf.example.com"]);

    // Uninstall removes the triggers and the log.
    let out = std::process::Command::new(bin_dir().join("conflist-server"))
        .args(["--database-url", &db.url, "db", "uninstall"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let triggers: (i64,) =
        sqlx::query_as("SELECT count(*) FROM pg_trigger WHERE tgname = 'conflist_changes'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(triggers.0, 0);
}
