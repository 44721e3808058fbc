//! The embedded SQLite default gets live updates too (triggers fill the same change log,
//! read on the change interval).

use conflist_tests::{ListView, ServerOptions, SipWsClient, spawn_proxy, spawn_server};
use document::{DocumentState, Entry};
use sqlx::{Connection, Executor, SqliteConnection};

#[tokio::test]
async fn sqlite_changes_reach_subscribers() {
    let path = std::env::temp_dir().join(format!("conflist-it-{:x}.db", rand::random::<u64>()));
    let url = format!("sqlite:{}", path.display());
    let server = spawn_server(&url, &ServerOptions::default()).await.unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    c.subscribe("dave", 600).await.unwrap();
    let mut view = ListView::default();
    view.next(&mut c).await.unwrap();
    assert_eq!(view.entities().len(), 3);

    let mut db = SqliteConnection::connect(&url).await.unwrap();
    db.execute("UPDATE conflist_conferences SET subject = 'from sqlite' WHERE conference_uri = 'sip:1005@conf.example.com'")
        .await
        .unwrap();
    let doc = view.next(&mut c).await.unwrap().1.unwrap();
    assert_eq!(doc.state, DocumentState::Partial);
    assert!(
        matches!(&doc.entries[..], [Entry::Full(conf)] if conf.description.subject.as_deref() == Some("from sqlite"))
    );
    drop((c, proxy, server));
    let _ = std::fs::remove_file(&path);
}
