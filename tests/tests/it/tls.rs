//! TLS on every hop: WSS at the edge, mutual TLS or a shared secret between proxy and
//! server, TLS to PostgreSQL; and the WebSocket handshake's Origin check.

use crate::system;
use conflist_tests::pgtls::TlsCluster;
use conflist_tests::process::http_get_status;
use conflist_tests::tls::{TestPki, test_dir};
use conflist_tests::{
    ServerOptions, SipWsClient, TestDb, spawn_proxy, spawn_proxy_to, spawn_server, start_proxy,
};

async fn subscribes(url: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) {
    let mut c = SipWsClient::connect_with(url, &[], tls).await.unwrap();
    c.subscribe("alice", 600).await.unwrap();
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    assert!(!n.body.is_empty());
}

/// A SUBSCRIBE through a proxy with no server session is answered 503 at once.
async fn refused_upstream(url: &str) {
    let mut c = SipWsClient::connect(url).await.unwrap();
    let err = c.subscribe("alice", 600).await.unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");
}

#[tokio::test]
async fn wss_with_a_generated_certificate() {
    let pki = TestPki::generate(&test_dir("wss")).unwrap();
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .unwrap();
    let (cert, key) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
    );
    let proxy = spawn_proxy(
        &server,
        &[
            "--wss-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    )
    .await
    .unwrap();
    let wss = proxy.wss_url.clone().expect("READY line names the wss URL");
    assert!(wss.starts_with("wss://"), "{wss}");
    subscribes(&wss, Some(pki.client_config().unwrap())).await;
    // A client that does not trust the certificate does not get in.
    let untrusted = TestPki::generate(&test_dir("other-ca")).unwrap();
    assert!(
        SipWsClient::connect_with(&wss, &[], Some(untrusted.client_config().unwrap()))
            .await
            .is_err()
    );
    // Plain WS still works beside it.
    subscribes(&proxy.ws_url, None).await;
}

#[tokio::test]
async fn a_disallowed_origin_is_refused_at_the_handshake() {
    let sys = system(ServerOptions::default()).await;
    let url = &sys.proxy.ws_url;
    let err = SipWsClient::connect_with(url, &[("Origin", "https://evil.example")], None)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("403"), "{err:#}");
    // Same origin (the page served from the proxy's own address) and no Origin are fine.
    let host = url.trim_start_matches("ws://").trim_end_matches('/');
    let same = format!("http://{host}");
    SipWsClient::connect_with(url, &[("Origin", &same)], None)
        .await
        .unwrap();
    subscribes(url, None).await;

    // An operator's allow-list.
    let listed = spawn_proxy(
        &sys.server,
        &["--allowed-origin", "https://app.example.com"],
    )
    .await
    .unwrap();
    SipWsClient::connect_with(
        &listed.ws_url,
        &[("Origin", "https://app.example.com")],
        None,
    )
    .await
    .unwrap();
    assert!(
        SipWsClient::connect_with(&listed.ws_url, &[("Origin", "https://evil.example")], None)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_server_refuses_proxies_without_the_shared_secret() {
    let dir = test_dir("grpc-secret");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("grpc.secret");
    std::fs::write(&secret, "proxy-hop-secret\n").unwrap();
    let wrong = dir.join("wrong.secret");
    std::fs::write(&wrong, "guess\n").unwrap();
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            extra_args: vec!["--grpc-secret-file".into(), secret.display().to_string()],
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let none = start_proxy(&server.grpc, &[]).await.unwrap();
    let guessed = start_proxy(
        &server.grpc,
        &["--grpc-secret-file", wrong.to_str().unwrap()],
    )
    .await
    .unwrap();
    let good = spawn_proxy_to(
        &server.grpc,
        &["--grpc-secret-file", secret.to_str().unwrap()],
    )
    .await
    .unwrap();
    subscribes(&good.ws_url, None).await;
    for p in [&none, &guessed] {
        assert_ne!(http_get_status(&p.admin, "/readyz").await.unwrap(), 200);
        refused_upstream(&p.ws_url).await;
    }
}

#[tokio::test]
async fn mutual_tls_between_proxy_and_server() {
    let pki = TestPki::generate(&test_dir("mtls")).unwrap();
    let db = TestDb::create().await.unwrap();
    let p = |f: &std::path::Path| f.display().to_string();
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            extra_args: vec![
                "--grpc-tls-cert".into(),
                p(&pki.server_cert),
                "--grpc-tls-key".into(),
                p(&pki.server_key),
                "--grpc-client-ca".into(),
                p(&pki.ca_cert),
            ],
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let https = format!("https://127.0.0.1:{}", port_of(&server.grpc_addr));
    let plain = start_proxy(&server.grpc, &[]).await.unwrap();
    let no_client_cert = start_proxy(&https, &["--grpc-ca", &p(&pki.ca_cert)])
        .await
        .unwrap();
    let good = spawn_proxy_to(
        &https,
        &[
            "--grpc-ca",
            &p(&pki.ca_cert),
            "--grpc-tls-cert",
            &p(&pki.client_cert),
            "--grpc-tls-key",
            &p(&pki.client_key),
        ],
    )
    .await
    .unwrap();
    subscribes(&good.ws_url, None).await;
    for p in [&plain, &no_client_cert] {
        assert_ne!(http_get_status(&p.admin, "/readyz").await.unwrap(), 200);
        refused_upstream(&p.ws_url).await;
    }
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn the_server_reads_a_postgresql_that_requires_tls() {
    let pki = TestPki::generate(&test_dir("pgtls")).unwrap();
    let cluster = TlsCluster::start(&pki).expect("a TLS-only PostgreSQL cluster");
    // Without TLS the cluster refuses the server, which exits instead of becoming READY.
    assert!(
        spawn_server(&cluster.url("disable"), &ServerOptions::default())
            .await
            .is_err()
    );
    let server = spawn_server(&cluster.url("require"), &ServerOptions::default())
        .await
        .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    subscribes(&proxy.ws_url, None).await;
    // verify-full against the test CA works too (the certificate names 127.0.0.1).
    let verify = format!(
        "{}&sslrootcert={}",
        cluster.url("verify-full"),
        pki.ca_cert.display()
    );
    let server = spawn_server(
        &verify,
        &ServerOptions {
            demo: false,
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    subscribes(&proxy.ws_url, None).await;
}
