//! The proxy's limits, each tried while another client (from another loopback address) keeps
//! being served: connections per address, a slowloris handshake, idle connections,
//! SUBSCRIBEs per address per second, oversized route sets, subscriptions per user.

use conflist_tests::{ServerOptions, SipWsClient, TestDb, spawn_proxy, spawn_server};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BYSTANDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn served(url: &str) {
    let mut c = SipWsClient::connect_from(url, BYSTANDER).await.unwrap();
    c.subscribe("bob", 600).await.unwrap();
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
}

async fn setup(proxy_args: &[&str]) -> (TestDb, conflist_tests::Server, conflist_tests::Proxy) {
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .unwrap();
    let proxy = spawn_proxy(&server, proxy_args).await.unwrap();
    (db, server, proxy)
}

fn addr_of(ws_url: &str) -> String {
    ws_url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned()
}

/// True when the peer closes `s` within `within` (EOF or reset), writing nothing.
async fn closed_by_peer(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_refused() {
    let (_db, _server, proxy) = setup(&["--max-connections-per-address", "50"]).await;
    let addr = addr_of(&proxy.ws_url);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(SipWsClient::connect(&proxy.ws_url).await.unwrap());
    }
    // 10 000 more from the same address: every one is closed at once, before any HTTP.
    let mut refused = 0;
    for _ in 0..10_000 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if closed_by_peer(&mut s, Duration::from_secs(5)).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 10_000);
    assert!(SipWsClient::connect(&proxy.ws_url).await.is_err());
    let (_, metrics) = conflist_tests::process::http_get(&proxy.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("conflist_proxy_address_connections_refused_total 10001"),
        "refusals are counted:\n{metrics}"
    );
    served(&proxy.ws_url).await;
    // The held ones still work.
    let c = held.last_mut().unwrap();
    c.subscribe("alice", 600).await.unwrap();
}

#[tokio::test]
async fn a_slowloris_handshake_is_dropped_at_the_deadline() {
    let (_db, _server, proxy) = setup(&["--handshake-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(addr_of(&proxy.ws_url)).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    served(&proxy.ws_url).await;
    // One header byte every 100 ms never finishes the request; the proxy hangs up.
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the slow handshake was never dropped");
}

#[tokio::test]
async fn idle_connections_without_dialogs_are_closed() {
    let (_db, _server, proxy) = setup(&["--idle-timeout", "1s"]).await;
    let mut idle = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let mut busy = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    busy.subscribe("alice", 600).await.unwrap();
    let n = busy.recv_notify().await.unwrap();
    busy.respond(&n, 200).await.unwrap();
    assert!(idle.closed().await, "an idle connection is closed");
    // The one with a dialog lives on: an OPTIONS still gets its answer.
    busy.send_text("OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKo\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:a@example.com>;tag=1\r\nCall-ID: busy\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    assert_eq!(busy.recv_response().await.unwrap().status.as_u16(), 200);
}

#[tokio::test]
async fn subscribes_per_address_are_rate_limited() {
    let (_db, _server, proxy) = setup(&["--max-subscribes-per-address", "5"]).await;
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let mut statuses = Vec::new();
    for i in 0..30 {
        let req = c.initial_subscribe("alice", &format!("burst-{i}"), "Expires: 0\r\n");
        c.send_text(&req).await.unwrap();
    }
    while statuses.len() < 30 {
        match c.recv().await.unwrap() {
            sip::Message::Response(r) => {
                if r.status.as_u16() == 503 {
                    assert_eq!(r.headers.get(&sip::HeaderName::RETRY_AFTER), Some("1"));
                }
                statuses.push(r.status.as_u16());
            }
            sip::Message::Request(n) => c.respond(&n, 200).await.unwrap(),
        }
    }
    let limited = statuses.iter().filter(|s| **s == 503).count();
    assert!(limited >= 15, "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    served(&proxy.ws_url).await;
}

#[tokio::test]
async fn ten_thousand_dialogs_with_60kb_of_record_route_store_nothing() {
    let count: usize = std::env::var("CONFLIST_ROUTE_SET_DIALOGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (_db, _server, proxy) = setup(&["--max-subscribes-per-address", "1000000"]).await;
    let pid = proxy.child.id().unwrap();
    let before = rss_kib(pid);
    let rr = format!(
        "Record-Route: {}\r\n",
        (0..640)
            .map(|i| format!("<sip:p{i:03}xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx@proxy.example.com;lr>"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(rr.len() > 60_000, "{}", rr.len());
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(SipWsClient::connect(&proxy.ws_url).await.unwrap());
    }
    for i in 0..count {
        let c = &mut conns[i % 10];
        let req = c.initial_subscribe("alice", &format!("rr-{i}"), &rr);
        c.send_text(&req).await.unwrap();
        let r = c.recv_response().await.unwrap();
        assert_eq!(r.status.as_u16(), 400);
        assert_eq!(r.reason, "Record-Route too large");
    }
    served(&proxy.ws_url).await;
    let (_, metrics) = conflist_tests::process::http_get(&proxy.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("conflist_proxy_route_sets_refused_total {count}")),
        "refusals are counted:\n{metrics}"
    );
    let after = rss_kib(pid);
    let report = format!(
        "proxy RSS before {before} KiB, after {count} SUBSCRIBEs with {} bytes of Record-Route: {after} KiB\n",
        rr.len()
    );
    eprint!("{report}");
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("limits-rss.txt");
    std::fs::write(&out, report).unwrap();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
}

#[tokio::test]
async fn subscriptions_per_user_are_capped() {
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            extra_args: vec!["--max-subscriptions-per-user".into(), "3".into()],
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    for _ in 0..3 {
        c.subscribe("alice", 600).await.unwrap();
        let n = c.recv_notify().await.unwrap();
        c.respond(&n, 200).await.unwrap();
    }
    let (r, _) = c.subscribe_answer("alice", "fourth", 600).await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    served(&proxy.ws_url).await;
}
