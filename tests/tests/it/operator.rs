//! The operator's tools on real processes: `conflist watch` (the built CLI binary) prints a
//! live change within a second of the commit, and the server's admin API lists exactly the
//! live subscriptions across two proxies, forces full state on request, and refuses callers
//! without the admin token.

use crate::live_updates::{exec, watching};
use conflist_tests::process::bin_dir;
use conflist_tests::tls::test_dir;
use conflist_tests::{ServerOptions, TestDb, spawn_proxy, spawn_server};
use document::DocumentState;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::Command;

const TOKEN: &str = "admin-token-for-tests";

fn conflist() -> Command {
    let path = bin_dir().join("conflist");
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    let mut cmd = Command::new(path);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// One HTTP/1.0 request to the admin port → status and body.
async fn admin(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("admin answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("HTTP status");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

async fn admin_json(addr: &str, method: &str, path: &str) -> Value {
    let (status, body) = admin(addr, method, path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test]
async fn watch_prints_a_live_change_within_a_second_of_the_commit() {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .expect("server");
    let proxy = spawn_proxy(&server, &[]).await.expect("proxy");
    let mut conn = db.connect().await.unwrap();

    let mut child = conflist()
        .args(["watch", "sip:alice@example.com", "--ws", &proxy.ws_url])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut table = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the table within 10 s")
            .unwrap()
            .expect("conflist watch exited before printing the list");
        let done = line.starts_with('(');
        table.push(line);
        if done {
            break;
        }
    }
    assert!(table[0].starts_with("START"), "{table:#?}");
    assert_eq!(table.last().unwrap(), "(3 conferences)", "{table:#?}");
    assert_eq!(
        table.len(),
        5,
        "a header, three rows, the count: {table:#?}"
    );

    let started = Instant::now();
    exec(
        &mut conn,
        "UPDATE conflist_conferences SET subject = 'Moved by the operator test' \
         WHERE conference_uri = 'sip:1001@conf.example.com'",
    )
    .await;
    let committed = Instant::now();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("a change line within 10 s")
        .unwrap()
        .expect("conflist watch exited");
    let printed = Instant::now();
    let latency = printed - committed;
    println!(
        "conflist watch: commit -> printed line {latency:?} (statement issued -> printed {:?})",
        printed - started
    );
    assert!(
        line.starts_with("~ sip:1001@conf.example.com  subject \"")
            && line.ends_with("-> \"Moved by the operator test\""),
        "only what changed is printed: {line}"
    );
    assert!(
        latency < Duration::from_secs(1),
        "printed {latency:?} after the commit"
    );
    child.kill().await.unwrap();
}

#[tokio::test]
async fn the_admin_api_lists_live_subscriptions_and_forces_full_state() {
    let db = TestDb::create().await.expect("test database");
    let dir = test_dir("operator");
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let opts = ServerOptions {
        extra_args: vec![
            "--admin-token-file".into(),
            token_file.to_str().unwrap().into(),
        ],
        ..ServerOptions::default()
    };
    let server = spawn_server(&db.url, &opts).await.expect("server");
    let p1 = spawn_proxy(&server, &[]).await.expect("proxy 1");
    let p2 = spawn_proxy(&server, &[]).await.expect("proxy 2");

    // Without the token, or with a wrong one: 401.
    for token in [None, Some("wrong-token"), Some("")] {
        for (method, path) in [
            ("GET", "/admin/subscriptions"),
            ("GET", "/admin/counts"),
            ("POST", "/admin/resend?user=sip:bob@example.com"),
        ] {
            let (status, body) = admin(&server.admin, method, path, token).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {body}");
        }
    }
    // Metrics stay open.
    assert_eq!(admin(&server.admin, "GET", "/metrics", None).await.0, 200);

    let (_alice, _) = watching(&p1.ws_url, "alice").await;
    let (mut bob1, mut bob1_view) = watching(&p2.ws_url, "bob").await;
    let (mut bob2, mut bob2_view) = watching(&p2.ws_url, "bob").await;

    // Every subscription is listed once the proxies reported the first NOTIFY delivered.
    let mut subs = Vec::new();
    for _ in 0..100 {
        let v = admin_json(&server.admin, "GET", "/admin/subscriptions").await;
        subs = v["subscriptions"].as_array().unwrap().clone();
        if subs.len() == 3 && subs.iter().all(|s| s["last_delivered"] == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let users: Vec<&str> = subs.iter().map(|s| s["user"].as_str().unwrap()).collect();
    assert_eq!(
        users,
        [
            "sip:alice@example.com",
            "sip:bob@example.com",
            "sip:bob@example.com"
        ],
        "{subs:#?}"
    );
    for s in &subs {
        assert_eq!(s["version"], 0, "{s}");
        assert_eq!(s["last_delivered"], 0, "{s}");
        assert!(s["expires"].as_u64().unwrap() > 500, "{s}");
        assert!(s["since"].as_u64().unwrap() > 1_700_000_000, "{s}");
        assert!(!s["id"].as_str().unwrap().is_empty(), "{s}");
    }
    let proxy_of = |i: usize| subs[i]["proxy"].as_str().unwrap().to_owned();
    assert_eq!(proxy_of(1), proxy_of(2), "both of bob's are on proxy 2");
    assert_ne!(proxy_of(0), proxy_of(1), "alice's is on the other proxy");
    assert_ne!(subs[1]["id"], subs[2]["id"]);

    let only_bob = admin_json(
        &server.admin,
        "GET",
        "/admin/subscriptions?user=sip%3Abob%40example.com",
    )
    .await;
    assert_eq!(only_bob["subscriptions"].as_array().unwrap().len(), 2);

    let counts = admin_json(&server.admin, "GET", "/admin/counts").await;
    assert_eq!(
        (
            &counts["subscriptions"],
            &counts["sessions"],
            &counts["users"]
        ),
        (&Value::from(3), &Value::from(2), &Value::from(2)),
        "{counts}"
    );

    // A forced resend: full state on both of bob's subscriptions, though nothing changed.
    let resent = admin_json(
        &server.admin,
        "POST",
        "/admin/resend?user=sip:bob@example.com",
    )
    .await;
    assert_eq!(resent["resent"], 2, "{resent}");
    for (client, view) in [(&mut bob1, &mut bob1_view), (&mut bob2, &mut bob2_view)] {
        let (notify, doc) = view.next(client).await.unwrap();
        let doc = doc.expect("a document");
        assert_eq!((doc.version, doc.state), (1, DocumentState::Full));
        assert!(
            String::from_utf8_lossy(&notify.body).contains("state=\"full\""),
            "the body says state=\"full\""
        );
        assert_eq!(doc.entries.len(), 4, "bob's whole list");
    }

    // The CLI's admin subcommands call the same API.
    let out = conflist()
        .args([
            "admin",
            "subscriptions",
            "--admin",
            &format!("http://{}", server.admin),
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--user",
            "sip:bob@example.com",
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["subscriptions"].as_array().unwrap().len(), 2, "{v}");
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "nope\n").unwrap();
    let out = conflist()
        .args([
            "admin",
            "counts",
            "--admin",
            &format!("http://{}", server.admin),
            "--admin-token-file",
            wrong.to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "authentication failed: {out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_the_flag_the_admin_api_is_not_served() {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .expect("server");
    let (status, _) = admin(&server.admin, "GET", "/admin/counts", Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert_eq!(admin(&server.admin, "GET", "/livez", None).await.0, 200);
}

#[tokio::test]
async fn list_prints_the_list_once_and_unreachable_exits_4() {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .expect("server");
    let proxy = spawn_proxy(&server, &[]).await.expect("proxy");
    let out = conflist()
        .args(["list", "sip:bob@example.com", "--ws", &proxy.ws_url])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.trim_end().ends_with("(4 conferences)"), "{text}");

    let out = conflist()
        .args([
            "list",
            "sip:bob@example.com",
            "--ws",
            &proxy.ws_url,
            "--json",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let objects: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 1, "one object per NOTIFY: {text}");
    let doc = &objects[0]["document"];
    assert_eq!(doc["state"], "full", "{text}");
    assert_eq!(doc["version"], 0, "{text}");
    assert_eq!(doc["conferences"].as_array().unwrap().len(), 4, "{text}");
    assert!(
        objects[0]["subscription_state"]
            .as_str()
            .unwrap()
            .starts_with("terminated"),
        "{text}"
    );
    let out = conflist()
        .args(["admin", "counts"])
        .env_remove("CONFLIST_ADMIN_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no token file: {out:?}");

    // A port nobody listens on: the proxy is unreachable.
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", free.local_addr().unwrap());
    drop(free);
    let out = conflist()
        .args(["list", "sip:bob@example.com", "--ws", &url])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Bad arguments: clap's 2.
    let out = conflist().args(["watch"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[tokio::test]
async fn list_signs_in_with_digest_and_a_wrong_password_exits_3() {
    let db = TestDb::create().await.expect("test database");
    let opts = ServerOptions {
        auth: true,
        ..ServerOptions::default()
    };
    let server = spawn_server(&db.url, &opts).await.expect("server");
    conflist_tests::process::set_password(&db.url, "alice", "wonderland")
        .await
        .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.expect("proxy");
    let dir = test_dir("operator-auth");
    std::fs::create_dir_all(&dir).unwrap();
    let right = dir.join("right.pw");
    std::fs::write(&right, "wonderland\n").unwrap();
    let wrong = dir.join("wrong.pw");
    std::fs::write(&wrong, "looking-glass\n").unwrap();
    let list = |file: &std::path::Path| {
        let mut cmd = conflist();
        cmd.args([
            "list",
            "sip:alice@example.com",
            "--ws",
            &proxy.ws_url,
            "--password-file",
            file.to_str().unwrap(),
        ]);
        cmd
    };
    let out = list(&right).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim_end()
            .ends_with("(3 conferences)"),
        "{out:?}"
    );
    let out = list(&wrong).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = conflist()
        .args(["list", "sip:alice@example.com", "--ws", &proxy.ws_url])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "no credentials: {out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
