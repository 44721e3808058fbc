//! conflist proxy: the SIP edge of the conference-list service.
//!
//! Browsers (and gateways) connect over SIP-over-WebSocket (RFC 7118) and SUBSCRIBE to
//! `conference-list`. The proxy validates the SIP, owns each subscription's dialog and its
//! NOTIFY transactions, and forwards the subscription's meaning over one gRPC session per
//! subscriber-server (`conflist.v1`). It holds no database connection.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`transport`]: the WebSocket listener and the per-connection shell (I/O, keep-alive,
//!   limits) that executes the dialog core's actions.
//! - [`dialog`]: sans-IO dialogs and NOTIFY transactions of one connection.
//! - [`notifier`]: the domain form of what goes to and comes from the subscriber-server.
//! - [`upstream`]: gRPC sessions, routing of events to connections, rendezvous hashing.
//! - [`metrics`]: the counters and gauges behind `/metrics` (served by `conflist-service`).

pub mod config;
pub mod dialog;
pub mod metrics;
pub mod notifier;
pub mod transport;
pub mod upstream;

use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Runs the proxy until `shutdown` resolves; then every dialog gets a final NOTIFY
/// (`terminated;reason=deactivated`) and the proxy waits up to the grace period.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let ws = TcpListener::bind(config.ws_listen)
        .await
        .with_context(|| format!("bind WebSocket listener {}", config.ws_listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind admin listener {}", config.admin_listen))?;
    let ws_addr = ws.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let token = CancellationToken::new();
    let upstream_token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let upstreams =
        upstream::Upstreams::start(&config.servers, &metrics, &upstream_token, &tracker);

    let local_host = config
        .public_host
        .clone()
        .unwrap_or_else(|| ws_addr.to_string());
    let shared = Arc::new(transport::connection::Shared {
        config: transport::connection::ConnectionConfig {
            max_message_size: config.max_message_size,
            keepalive_interval: config.keepalive_interval,
            write_timeout: config.write_timeout,
            drain_timeout: config.shutdown_grace,
        },
        dialog: dialog::DialogConfig {
            local_host,
            via_transport: "WS",
            contact_transport: "ws",
            notify_timeout: config.notify_timeout,
            max_dialogs: config.max_dialogs_per_connection,
        },
        upstreams: upstreams.clone(),
        metrics,
        connection_slots: Arc::new(Semaphore::new(config.max_connections)),
        shutdown: token.clone(),
        instance: format!("{:08x}", rand::random::<u32>()),
        next_connection: AtomicU64::new(0),
    });

    info!(ws.addr = %ws_addr, admin.addr = %admin_addr, servers = ?config.servers, "conflist-proxy listening");
    println!("READY ws=ws://{ws_addr} admin={admin_addr}");

    let ws_token = token.clone();
    let ws_server = tokio::spawn(async move {
        axum::serve(
            ws,
            transport::ws::router(shared).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { ws_token.cancelled().await })
        .await
    });
    let admin_token = token.clone();
    let admin_server = tokio::spawn(async move {
        let ready: conflist_service::ReadinessCheck = Arc::new(move || {
            let up = upstreams.any_connected();
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err("no subscriber-server session")
                }
            })
        });
        axum::serve(admin, conflist_service::admin_router(registry, ready))
            .with_graceful_shutdown(async move { admin_token.cancelled().await })
            .await
    });

    shutdown.await;
    info!("shutting down: final NOTIFYs to every dialog");
    token.cancel();
    // Connections drain within the grace period (their own drain timeout); then the
    // upstream sessions, which carried their Unsubscribes, stop.
    let grace = config.shutdown_grace + std::time::Duration::from_secs(1);
    match tokio::time::timeout(grace, ws_server).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "WebSocket server ended with an error"),
        Err(_) => warn!("connections did not finish within the grace period"),
        _ => {}
    }
    upstream_token.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("upstream sessions did not stop within the grace period");
    }
    let _ = admin_server.await;
    info!("stopped");
    Ok(())
}
