//! Faults: database connections killed, server restarted. Nothing is lost; subscribers
//! converge on the database's state.

use crate::live_updates::{exec, watching};
use crate::system;
use conflist_tests::process::terminate;
use conflist_tests::{EVENT_TIMEOUT, ListView, ServerOptions, SipWsClient, spawn_server};
use sip::HeaderName;

#[tokio::test]
async fn a_change_made_while_the_server_reconnects_is_delivered() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;

    // Kill every other connection to this database: the server's pool and its LISTEN.
    let killed: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) k",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(killed.0 >= 1, "the server had no connections to kill");
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'after the outage' WHERE conference_uri = 'sip:1003@conf.example.com'").await;

    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(doc.version, 1);
    assert_eq!(
        view.get("sip:1003@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("after the outage")
    );
}

#[tokio::test]
async fn subscribers_converge_after_a_server_restart() {
    let mut sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;
    let grpc = sys.server.grpc.trim_start_matches("http://").to_owned();

    exec(&mut db, "UPDATE conflist_conferences SET subject = 'before restart' WHERE conference_uri = 'sip:1001@conf.example.com'").await;
    let _ = view.next(&mut alice).await.unwrap();

    terminate(&sys.server.child).unwrap();
    // The subscription ends with deactivated: re-subscribe at once.
    let (notify, _) = view.next(&mut alice).await.unwrap();
    assert_eq!(
        notify.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("terminated;reason=deactivated")
    );
    tokio::time::timeout(EVENT_TIMEOUT, sys.server.child.wait())
        .await
        .unwrap()
        .unwrap();

    // Changes while no server runs.
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'during restart' WHERE conference_uri = 'sip:1001@conf.example.com'").await;
    exec(&mut db, "DELETE FROM conflist_members WHERE conference_uri = 'sip:1002@conf.example.com' AND user_uri = 'sip:alice@example.com'").await;

    // A new server on the same address; the proxy's session comes back by itself.
    sys.server = spawn_server(
        &sys.db.url,
        &ServerOptions {
            grpc_listen: Some(grpc),
            demo: false, // the database keeps what happened while it was down
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    // Re-subscribe (the client may race the proxy's reconnect: 503 means try again).
    let mut resubscribed = None;
    // Bounded: 150 tries, 100 ms apart (the proxy's reconnect backoff is at most 5 s).
    for _ in 0..150 {
        let mut c = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
        match c.subscribe("alice", 600).await {
            Ok(_) => {
                resubscribed = Some(c);
                break;
            }
            Err(e) if e.to_string().contains("503") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut alice = resubscribed.expect("proxy never reconnected to the restarted server");
    let mut view = ListView::default();
    view.next(&mut alice).await.unwrap();
    assert_eq!(
        view.entities(),
        ["sip:1001@conf.example.com", "sip:1003@conf.example.com"]
    );
    assert_eq!(
        view.get("sip:1001@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("during restart")
    );

    // And live updates flow again.
    exec(&mut db, "UPDATE conflist_conferences SET subject = 'after restart' WHERE conference_uri = 'sip:1003@conf.example.com'").await;
    view.next(&mut alice).await.unwrap();
    assert_eq!(
        view.get("sip:1003@conf.example.com")
            .unwrap()
            .description
            .subject
            .as_deref(),
        Some("after restart")
    );
}
