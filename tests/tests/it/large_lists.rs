//! A user in thousands of conferences still gets a list: the document (about 1.7 MB for
//! 2 000 conferences) passes the gRPC hop and the WebSocket write path.

use crate::system;
use conflist_tests::client::document_of;
use conflist_tests::{ServerOptions, SipWsClient};
use sqlx::Executor;

#[tokio::test]
async fn a_user_in_two_thousand_conferences_gets_the_whole_list() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    db.execute(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject, free_text, web_page)
         SELECT 'sip:big-' || i || '@conf.example.com', 'Conference ' || i,
                'Subject of conference number ' || i, repeat('free text ', 60),
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
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    assert!(n.body.len() > 1_000_000, "{} bytes", n.body.len());
    let doc = document_of(&n).unwrap();
    let big = doc
        .entries
        .iter()
        .filter(|e| e.entity().starts_with("sip:big-"))
        .count();
    assert_eq!(big, 2000);
    // The connection and the session are still up: a second subscriber is served.
    let mut alice = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    alice.subscribe("alice", 600).await.unwrap();
    let n = alice.recv_notify().await.unwrap();
    alice.respond(&n, 200).await.unwrap();
}
