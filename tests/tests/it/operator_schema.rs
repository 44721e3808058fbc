//! The README's worked example, as it is written: an operator schema (docs/operator-schema.sql)
//! mapped with views, the install command run as the README says, and live updates flowing
//! from writes to the operator's own tables. Its second variant
//! (docs/operator-schema-meetings.sql) also maps the optional columns from the operator's own
//! meeting fields.

use crate::live_updates::exec;
use conflist_tests::process::bin_dir;
use conflist_tests::{
    ListView, Proxy, Server, ServerOptions, SipWsClient, TestDb, spawn_proxy, spawn_server,
};
use document::{DocumentState, Entry, Organizer, Response, Status};
use sqlx::{Executor, PgConnection};

const BOARD: &str = "sip:room-1@conf.example.com";
const SUPPORT: &str = "sip:room-2@conf.example.com";
const CHECK_IN: &str = "sip:room-3@conf.example.com";

/// Loads `schema`, runs the README's install command, and starts a server (log captured)
/// and a proxy on it.
async fn operator_system(db: &TestDb, schema: &'static str) -> (PgConnection, Server, Proxy) {
    let mut conn = db.connect().await.unwrap();
    conn.execute(schema).await.unwrap();
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
            capture_log: true,
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    (conn, server, proxy)
}

#[tokio::test]
async fn an_operator_schema_mapped_with_views_gets_live_updates() {
    let db = TestDb::create().await.unwrap();
    let (mut conn, server, proxy) =
        operator_system(&db, include_str!("../../../docs/operator-schema.sql")).await;
    // Views without optional columns: the server found none, and the documents have none.
    let line = server.log.wait_for("optional_columns=").await.unwrap();
    assert!(
        line.contains("conflist_conferences: none; conflist_members: none"),
        "{line}"
    );

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
    assert!(view.conferences.iter().all(|c| c.status.is_none()
        && c.response.is_none()
        && c.organizer.is_none()
        && c.schedule.time_zone.is_none()
        && c.schedule.recurrence.is_none()));

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

#[tokio::test]
async fn the_meetings_variant_maps_the_operators_fields_onto_the_optional_columns() {
    let db = TestDb::create().await.unwrap();
    let (mut conn, server, proxy) = operator_system(
        &db,
        include_str!("../../../docs/operator-schema-meetings.sql"),
    )
    .await;
    let line = server.log.wait_for("optional_columns=").await.unwrap();
    assert!(
        line.contains(
            "conflist_conferences: organizer_name, organizer_uri, recurrence, status, time_zone; \
             conflist_members: response"
        ),
        "{line}"
    );

    let mut frank = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    frank.subscribe("frank", 600).await.unwrap();
    let mut view = ListView::default();
    view.next(&mut frank).await.unwrap();
    assert_eq!(view.entities(), [BOARD, SUPPORT, CHECK_IN]);

    let board = view.get(BOARD).unwrap();
    assert_eq!(board.status, Some(Status::Scheduled), "planned");
    assert_eq!(
        board.organizer,
        Some(Organizer {
            uri: "sip:erin@example.com".into(),
            display_text: Some("Erin Example".into()),
        })
    );
    assert_eq!(board.role.as_deref(), Some("participant"));
    assert_eq!(board.response, Some(Response::Tentative), "maybe");
    assert_eq!(board.schedule.time_zone.as_deref(), Some("Europe/Berlin"));
    assert_eq!(board.schedule.recurrence, None);
    assert_eq!(
        board.schedule.start.as_deref(),
        Some("2026-12-01T10:00:00Z")
    );
    assert_eq!(
        (board.revision.as_deref(), board.passcode_required),
        (None, None)
    );

    let support = view.get(SUPPORT).unwrap();
    assert_eq!(support.status, Some(Status::Active), "running");
    assert_eq!(support.organizer, None);
    assert_eq!(
        support.response,
        Some(Response::NeedsAction),
        "not answered"
    );
    assert_eq!(support.role.as_deref(), Some("organizer"));

    // The daily check-in shows its next occurrence (the one under way, else the next):
    // 00:00–00:15 UTC of today, or of tomorrow once today's is over.
    let check_in = view.get(CHECK_IN).unwrap();
    assert_eq!(check_in.schedule.time_zone.as_deref(), Some("Asia/Tokyo"));
    assert_eq!(check_in.schedule.recurrence.as_deref(), Some("FREQ=DAILY"));
    let (start, end): (String, String) = sqlx::query_as(
        "SELECT to_char(d, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                to_char(d + interval '15 minutes', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         FROM (SELECT date_trunc('day', (now() AT TIME ZONE 'UTC') - interval '15 minutes')
                      + interval '1 day' AS d) AS next",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(check_in.schedule.start.as_deref(), Some(start.as_str()));
    assert_eq!(check_in.schedule.end.as_deref(), Some(end.as_str()));
    assert_eq!(
        check_in.organizer.as_ref().map(|o| o.uri.as_str()),
        Some("sip:frank@example.com")
    );
    assert_eq!(check_in.response, Some(Response::Accepted));

    // The operator's own writes: the meeting called off, an answer changed.
    exec(
        &mut conn,
        "UPDATE rooms SET phase = 'called_off' WHERE id = 1",
    )
    .await;
    let doc = view.next(&mut frank).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert!(matches!(&doc.entries[..], [Entry::Full(c)] if c.entity == BOARD));
    assert_eq!(view.get(BOARD).unwrap().status, Some(Status::Cancelled));
    exec(
        &mut conn,
        "UPDATE room_access SET rsvp = 'no' WHERE room_id = 1 AND account_id = 2",
    )
    .await;
    let doc = view.next(&mut frank).await.unwrap().1.unwrap();
    assert!(matches!(&doc.entries[..], [Entry::Full(c)] if c.entity == BOARD));
    assert_eq!(view.get(BOARD).unwrap().response, Some(Response::Declined));
    assert_eq!(view.entities(), [BOARD, SUPPORT, CHECK_IN]);
}
