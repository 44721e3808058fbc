//! The directory reads the same documents from PostgreSQL and from the embedded SQLite
//! default, through the same migrations and demo data.

use conflist_server::directory::Directory;
use conflist_tests::TestDb;

async fn demo_directory(url: &str) -> Directory {
    let d = Directory::connect(url, 2).await.expect("connect");
    d.migrate().await.expect("migrate");
    d.load_demo_data().await.expect("demo data");
    // Loading twice is harmless (demo command re-run).
    d.load_demo_data().await.expect("demo data again");
    d
}

fn entities(confs: &[document::Conference]) -> Vec<&str> {
    confs.iter().map(|c| c.entity.as_str()).collect()
}

#[tokio::test]
async fn postgres_and_sqlite_return_the_same_conferences() {
    let db = TestDb::create().await.expect("test database");
    let pg = demo_directory(&db.url).await;
    let dir = std::env::temp_dir().join(format!("conflist-{:x}.db", rand::random::<u64>()));
    let sqlite = demo_directory(&format!("sqlite:{}", dir.display())).await;

    for (user, expected) in [
        ("sip:alice@example.com", vec!["1001", "1002", "1003"]),
        ("sip:bob@example.com", vec!["1001", "1002", "1003", "1004"]),
        ("sip:nobody@example.com", vec![]),
    ] {
        let from_pg = pg.conferences_of(user).await.unwrap();
        let from_sqlite = sqlite.conferences_of(user).await.unwrap();
        let want: Vec<String> = expected
            .iter()
            .map(|n| format!("sip:{n}@conf.example.com"))
            .collect();
        assert_eq!(entities(&from_pg), want, "{user} on PostgreSQL");
        assert_eq!(from_pg, from_sqlite, "{user}: back-ends disagree");
    }

    let alice = pg.conferences_of("sip:alice@example.com").await.unwrap();
    let weekly = &alice[0];
    assert_eq!(
        weekly.description.display_text.as_deref(),
        Some("Weekly sync")
    );
    assert_eq!(weekly.role.as_deref(), Some("organizer"));
    assert_eq!(
        weekly.schedule.start.as_deref(),
        Some("2026-11-24T09:00:00Z")
    );
    assert_eq!(weekly.schedule.end.as_deref(), Some("2026-11-24T10:00:00Z"));
    assert_eq!(weekly.description.maximum_user_count, Some(50));
    let all_hands = &alice[2];
    assert_eq!(
        all_hands.description.subject.as_deref(),
        Some("Quarterly <results> & plans"),
        "text arrives unescaped; the renderer escapes it"
    );
    pg.close().await;
    sqlite.close().await;
    let _ = std::fs::remove_file(dir);
}
