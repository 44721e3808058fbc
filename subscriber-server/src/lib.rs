//! conflist subscriber-server: the notifier of the `conference-list` event package.
//!
//! It accepts gRPC session streams from proxies (`conflist.v1`), admits subscriptions, reads
//! each subscriber's conferences from the directory (PostgreSQL or embedded SQLite) and sends
//! versioned `application/conference-list+xml` notifications. It knows no SIP syntax.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`api`]: the tonic service; proto ⇄ domain conversion, one task per session.
//! - [`subscription`]: sans-IO admission policy, per-session registry (versions, expiry,
//!   delivery and rate state) and the full/partial decision.
//! - [`cache`]: per-user documents shared by all sessions; recomputes changed users.
//! - [`changes`]: the change follower (change log + LISTEN, or snapshot polling).
//! - [`directory`]: SQL against the database contract; migrations; change-log triggers.
//! - [`metrics`]: the counters and gauges behind `/metrics` (served by `conflist-service`).

pub mod api;
pub mod cache;
pub mod changes;
pub mod config;
pub mod directory;
pub mod metrics;
pub mod subscription;

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Runs the server until `shutdown` resolves, then terminates every subscription with
/// `reason=deactivated` and waits up to the grace period for sessions to finish.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let directory = directory::Directory::connect(&config.database_url, config.db_max_connections)
        .await
        .context("connect to the database")?;
    if config.migrate || config.demo_data {
        directory
            .migrate()
            .await
            .context("apply the reference schema")?;
    }
    if config.demo_data {
        directory.load_demo_data().await.context("load demo data")?;
    }

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let cache = Arc::new(cache::Cache::new(directory.clone()));
    tracker.spawn(changes::run(
        cache.clone(),
        changes::FollowerConfig {
            mode: config.change_detection,
            interval: config.change_interval,
            retention: config.change_retention,
        },
        metrics.clone(),
        token.clone(),
    ));
    let ctx = Arc::new(api::Context {
        policy: subscription::Policy {
            min_expires: config.min_expires,
            default_expires: config.default_expires,
            max_expires: config.max_expires,
            sip_domain: config.sip_domain.clone(),
        },
        cache,
        notify_policy: subscription::NotifyPolicy {
            min_interval: config.min_notify_interval,
            full_only: config.full_documents,
        },
        metrics,
        shutdown: token.clone(),
        tracker: tracker.clone(),
    });

    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("bind gRPC listener {}", config.grpc_listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind admin listener {}", config.admin_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let admin_addr = admin.local_addr()?;
    info!(grpc.addr = %grpc_addr, admin.addr = %admin_addr, "conflist-server listening");
    // A stable line on stdout for supervisors and the test harness.
    println!("READY grpc={grpc_addr} admin={admin_addr}");

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::v1::subscription_service_server::SubscriptionServiceServer<api::SessionService>>()
        .await;
    let service = proto::v1::subscription_service_server::SubscriptionServiceServer::new(
        api::SessionService::new(ctx),
    );
    let grpc_token = token.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
            .add_service(health_service)
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(grpc), async move {
                grpc_token.cancelled().await;
            }),
    );
    let admin_token = token.clone();
    let admin_task = tokio::spawn(async move {
        let ready: conflist_service::ReadinessCheck = Arc::new(move || {
            let directory = directory.clone();
            Box::pin(async move { directory.ping().await.map_err(|_| "database unreachable") })
        });
        axum::serve(admin, conflist_service::admin_router(registry, ready))
            .with_graceful_shutdown(async move { admin_token.cancelled().await })
            .await
    });

    shutdown.await;
    info!("shutting down: terminating subscriptions");
    token.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "sessions did not finish within the grace period");
    }
    match tokio::time::timeout(config.shutdown_grace, grpc_task).await {
        Ok(Ok(Err(e))) => warn!(error = %e, "gRPC server ended with an error"),
        Err(_) => warn!("gRPC server did not stop within the grace period"),
        _ => {}
    }
    let _ = admin_task.await;
    info!("stopped");
    Ok(())
}

/// Runs a one-off `db` command.
pub async fn run_db_command(config: &Config, command: &config::DbCommand) -> anyhow::Result<()> {
    let directory = directory::Directory::connect(&config.database_url, 2)
        .await
        .context("connect to the database")?;
    match command {
        config::DbCommand::Migrate => {
            directory
                .migrate()
                .await
                .context("apply the reference schema")?;
        }
        config::DbCommand::DemoData => {
            directory
                .migrate()
                .await
                .context("apply the reference schema")?;
            directory.load_demo_data().await.context("load demo data")?;
        }
        config::DbCommand::Install { watches } => {
            let watches = watches
                .iter()
                .map(|w| directory::changelog::Watch::parse(w))
                .collect::<Result<Vec<_>, _>>()?;
            directory
                .install_watches(&watches)
                .await
                .context("install the change log and triggers")?;
            for w in &watches {
                println!("watching {} (conference: {})", w.table, w.conference_expr);
            }
        }
        config::DbCommand::Uninstall => {
            let removed = directory
                .uninstall_watches()
                .await
                .context("remove the change log and triggers")?;
            println!("removed triggers from: {}", removed.join(", "));
        }
    }
    directory.close().await;
    Ok(())
}
