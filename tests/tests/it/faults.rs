//! Faults: database connections killed, server restarted, database down at startup.
//! Nothing is lost; subscribers converge on the database's state.

use crate::live_updates::{exec, watching};
use crate::system;
use conflist_tests::process::{http_get_status, terminate, wait_ready};
use conflist_tests::{
    EVENT_TIMEOUT, ListView, ServerOptions, SipWsClient, TestDb, spawn_server, start_proxy,
};
use proto::v1::ProxyMessage;
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use sip::HeaderName;
use std::time::Duration;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The Session service's name in health checks.
pub(crate) const SERVICE: &str = "conflist.v1.SubscriptionService";

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

/// The gRPC health status that `service` (`""`: the whole server) reports on `grpc`
/// (`http://…`).
pub(crate) async fn grpc_health(grpc: &str, service: &str) -> ServingStatus {
    let channel = Endpoint::from_shared(grpc.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

/// Polls `check` every 50 ms until it holds, for at most `within`; panics naming `what`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback port where the tests' PostgreSQL is not reachable (nothing listens: the
/// connection is refused) until [`LatePostgres::open`] forwards it there.
struct LatePostgres {
    port: u16,
    /// `host:port` of the real PostgreSQL.
    upstream: String,
    /// The database's URL through this port.
    url: String,
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl LatePostgres {
    /// A port nothing listens on, and `url` rewritten to go through it.
    fn new(url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // postgres://user@host:port/db?params → the host:port part.
        let (scheme, rest) = url.split_once("://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (user, host) = match authority.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), authority),
        };
        let upstream = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5432")
        };
        Self {
            port,
            upstream,
            url: format!("{scheme}://{user}127.0.0.1:{port}{path}"),
            forwarder: None,
        }
    }

    /// From now on, connections to the port reach PostgreSQL.
    async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let upstream = self.upstream.clone();
        self.forwarder = Some(tokio::spawn(async move {
            // Dropped with the accept loop, so aborting it ends every forwarded connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }
}

impl Drop for LatePostgres {
    fn drop(&mut self) {
        if let Some(f) = &self.forwarder {
            f.abort();
        }
    }
}

#[tokio::test]
async fn a_server_started_while_the_database_is_down_waits_unready_then_serves() {
    let db = TestDb::create().await.unwrap();
    let mut late = LatePostgres::new(&db.url);
    let server = spawn_server(
        &late.url,
        &ServerOptions {
            capture_log: true,
            ..ServerOptions::default()
        },
    )
    .await
    .expect("READY although the database is down");

    // Up, not ready, and saying why.
    assert_eq!(http_get_status(&server.admin, "/livez").await.unwrap(), 200);
    assert_eq!(
        http_get_status(&server.admin, "/readyz").await.unwrap(),
        503
    );
    for service in [SERVICE, ""] {
        assert_eq!(
            grpc_health(&server.grpc, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    let channel = Endpoint::from_shared(server.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel::<ProxyMessage>(1);
    let refused = SubscriptionServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("no sessions before the database is reachable");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "database not reachable yet");
    let warned = server.log.wait_for("database not reachable").await.unwrap();
    assert!(warned.contains("WARN"), "{warned}");
    // A proxy in front of it has no session to use yet: SUBSCRIBE is answered 503.
    let proxy = start_proxy(&server.grpc, &[]).await.unwrap();
    let mut early = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let err = early.subscribe("alice", 600).await.unwrap_err().to_string();
    assert!(err.contains("503"), "{err}");

    // PostgreSQL becomes reachable: startup completes (demo data included), within the
    // retry pause (at most 5 s) and a probe.
    late.open().await;
    eventually(Duration::from_secs(20), "/readyz 200", || async {
        http_get_status(&server.admin, "/readyz").await.ok() == Some(200)
    })
    .await;
    for service in [SERVICE, ""] {
        assert_eq!(
            grpc_health(&server.grpc, service).await,
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    server.log.wait_for("completing startup").await.unwrap();
    wait_ready(&proxy.admin).await.unwrap();
    // Bounded: the proxy re-opens its session on its own backoff (at most 5 s).
    let mut alice = None;
    for _ in 0..100 {
        let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
        match c.subscribe("alice", 600).await {
            Ok(_) => {
                alice = Some(c);
                break;
            }
            Err(e) if e.to_string().contains("503") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let mut alice = alice.expect("a SUBSCRIBE once the database is back");
    let mut view = ListView::default();
    view.next(&mut alice).await.unwrap();
    assert_eq!(
        view.entities(),
        [
            "sip:1001@conf.example.com",
            "sip:1002@conf.example.com",
            "sip:1003@conf.example.com"
        ]
    );
}
