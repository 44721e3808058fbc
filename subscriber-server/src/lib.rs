//! conflist subscriber-server: the notifier of the `conference-list` event package.
//!
//! It accepts gRPC session streams from proxies (`conflist.v1`), admits subscriptions, reads
//! each subscriber's conferences from the directory (PostgreSQL or embedded SQLite) and sends
//! versioned `application/conference-list+xml` notifications. It knows no SIP syntax.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`api`]: the tonic service; proto ⇄ domain conversion, one task per session.
//! - [`auth`]: sign-in: digest (RFC 8760) and bearer (RFC 8898) credentials, stateless
//!   nonces, failure throttling, and the proxy hop's shared secret.
//! - [`subscription`]: sans-IO admission policy, per-session registry (versions, expiry,
//!   delivery and rate state) and the full/partial decision.
//! - [`cache`]: per-user documents shared by all sessions; recomputes changed users.
//! - [`changes`]: the change follower (change log + LISTEN, or snapshot polling).
//! - [`directory`]: SQL against the database contract; migrations; change-log triggers.
//! - [`admin`]: the JSON admin API (`/admin/…`, behind `--admin-token-file`).
//! - [`metrics`]: the counters and gauges behind `/metrics` (served by `conflist-service`).

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod admin;
pub mod api;
pub mod auth;
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
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Runs the server until `shutdown` resolves, then terminates every subscription with
/// `reason=deactivated` and waits up to the grace period for sessions to finish.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let secrets = config
        .load_secrets()
        .map_err(|e| anyhow::anyhow!("read secrets: {e}"))?;
    run_with(config, secrets, shutdown).await
}

/// The largest gRPC message either way on a session.
const GRPC_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// HTTP/2 flow-control windows of a session stream and of a connection.
const GRPC_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const GRPC_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// [`run`] with the secrets and keys already read (`main` reads them first so that bad
/// files exit with code 64).
pub async fn run_with(
    config: Config,
    secrets: config::Secrets,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
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
    let directory = directory
        .with_rows_skipped(metrics.rows_skipped.clone())
        .with_conference_limit(
            config.max_conference_bytes,
            metrics.conferences_truncated.clone(),
        );
    let columns = directory
        .discover_columns()
        .await
        .context("read the columns of conflist_conferences and conflist_members")?;
    info!(optional_columns = %columns.describe(), "database contract");
    let cache =
        Arc::new(cache::Cache::new(directory.clone()).with_max_age(Some(config.cache_max_age)));
    tracker.spawn(changes::run(
        cache.clone(),
        changes::FollowerConfig {
            mode: config.change_detection,
            interval: config.change_interval,
            retention: config.change_retention,
            verify_interval: (!config.verify_interval.is_zero()).then_some(config.verify_interval),
        },
        metrics.clone(),
        token.clone(),
    ));
    let hub = Arc::new(admin::Hub::default());
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
            max_body_bytes: config.max_notify_bytes,
            show_cancelled: !config.hide_cancelled,
        },
        default_window: subscription::Window {
            past: config.window_past,
            ahead: config.window_ahead,
            max: config.window_max,
        },
        metrics: metrics.clone(),
        shutdown: token.clone(),
        tracker: tracker.clone(),
        auth: secrets.auth.map(auth::Authenticator::new),
        trust_flow_identity: config.hop_authenticated(),
        max_subscriptions_per_user: config.max_subscriptions_per_user,
        stall_timeout: config.session_stall_timeout,
        admin: hub.clone(),
    });
    if ctx.auth.is_none() {
        warn!("--auth off: subscribers are not authenticated (the From address is trusted)");
    } else if config.unauthenticated_hop_exposed() {
        warn!(
            grpc.addr = %config.grpc_listen,
            "the proxy hop is not authenticated and gRPC listens beyond loopback: any host \
             that reaches the gRPC port can open sessions; set --grpc-secret-file or \
             --grpc-client-ca (flow identities are ignored until then)"
        );
    } else if !ctx.trust_flow_identity {
        info!(
            "the proxy hop is not authenticated: flow identities are ignored, every SUBSCRIBE \
             must carry credentials (set --grpc-secret-file or --grpc-client-ca)"
        );
    }

    let grpc = TcpListener::bind(config.grpc_listen)
        .await
        .with_context(|| format!("bind gRPC listener {}", config.grpc_listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind admin listener {}", config.admin_listen))?;
    let grpc_addr = grpc.local_addr()?;
    let admin_addr = admin.local_addr()?;
    info!(
        grpc.addr = %grpc_addr,
        admin.addr = %admin_addr,
        grpc.tls = secrets.grpc_tls.is_some(),
        grpc.secret = secrets.grpc_secret.is_some(),
        "conflist-server listening"
    );
    // A stable line on stdout for supervisors and the test harness.
    println!("READY grpc={grpc_addr} admin={admin_addr}");

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<proto::v1::subscription_service_server::SubscriptionServiceServer<api::SessionService>>()
        .await;
    // Explicit limits above the body cap: one Notification never ends a session (the
    // proxy's own receive limit is 16 MiB; the largest body allowed is 4 MiB).
    let service = proto::v1::subscription_service_server::SubscriptionServiceServer::new(
        api::SessionService::new(ctx),
    )
    .max_encoding_message_size(GRPC_MAX_MESSAGE_BYTES)
    .max_decoding_message_size(GRPC_MAX_MESSAGE_BYTES);
    // With a proxy secret, every Session call must present it (the health service stays open).
    let (plain, guarded) = match &secrets.grpc_secret {
        Some(secret) => (
            None,
            Some(tonic::service::interceptor::InterceptedService::new(
                service,
                auth::proxy::ProxySecret::new(secret, metrics.proxy_rejected.clone()),
            )),
        ),
        None => (Some(service), None),
    };
    // HTTP/2 windows above one full NOTIFY body, so a Notification never waits for a
    // WINDOW_UPDATE (the default window is 64 KiB, the default body cap as large).
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW));
    if let Some(tls) = secrets.grpc_tls {
        builder = builder.tls_config(tls).context("configure gRPC TLS")?;
    }
    // With our own listener tonic sets no socket options: without TCP_NODELAY the last
    // segment of every Notification waited for the proxy's delayed ACK (about 40 ms).
    let incoming = TcpListenerStream::new(grpc).map(|stream| {
        if let Ok(s) = &stream
            && let Err(e) = s.set_nodelay(true)
        {
            warn!(error = %e, "TCP_NODELAY on a gRPC connection");
        }
        stream
    });
    let grpc_token = token.clone();
    let grpc_task = tokio::spawn(
        builder
            .add_service(health_service)
            .add_optional_service(plain)
            .add_optional_service(guarded)
            .serve_with_incoming_shutdown(incoming, async move {
                grpc_token.cancelled().await;
            }),
    );
    let admin_token = token.clone();
    let admin_api = admin::router(hub, secrets.admin_token);
    let admin_task = tokio::spawn(async move {
        let ready: conflist_service::ReadinessCheck = Arc::new(move || {
            let directory = directory.clone();
            Box::pin(async move { directory.ping().await.map_err(|_| "database unreachable") })
        });
        axum::serve(
            admin,
            conflist_service::admin_router(registry, ready).merge(admin_api),
        )
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
            let (removed, refused) = directory
                .uninstall_watches()
                .await
                .context("remove the change log and triggers")?;
            println!("removed triggers from: {}", removed.join(", "));
            for name in &refused {
                eprintln!(
                    "conflist-server: skipped {name:?} in conflist_watched: not a table name"
                );
            }
        }
    }
    directory.close().await;
    Ok(())
}

/// Runs a one-off `user` command.
pub async fn run_user_command(
    config: &Config,
    command: &config::UserCommand,
) -> anyhow::Result<()> {
    match command {
        config::UserCommand::SetPassword { username } => {
            // Standard input is read on a blocking thread (tokio's stdin is not enabled).
            let input = tokio::task::spawn_blocking(|| {
                use std::io::Read as _;
                let mut buf = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(4096)
                    .read_to_end(&mut buf)
                    .map(|_| buf)
            })
            .await
            .context("read the password")?
            .context("read the password from standard input")?;
            let first_line = input.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let password = config::password_from_input(first_line)
                .map_err(|e| anyhow::anyhow!("read the password: {e}"))?;
            let realm = config.realm();
            let user_uri = format!("sip:{username}@{}", config.sip_domain);
            let md5 = auth::digest::ha1(auth::digest::Algorithm::Md5, username, realm, &password);
            let sha256 =
                auth::digest::ha1(auth::digest::Algorithm::Sha256, username, realm, &password);
            let directory = directory::Directory::connect(&config.database_url, 2)
                .await
                .context("connect to the database")?;
            let written = directory
                .set_credentials(&directory::NewCredentials {
                    username,
                    realm,
                    user_uri: &user_uri,
                    ha1_md5: Some(&md5),
                    ha1_sha256: Some(&sha256),
                })
                .await;
            directory.close().await;
            match written {
                Ok(()) => {}
                Err(directory::DirectoryError::Database(e))
                    if directory::credentials::is_missing_relation(&e) =>
                {
                    anyhow::bail!(
                        "store the password: relation conflist_credentials does not exist \
                         (run `conflist-server db migrate`)"
                    );
                }
                Err(e) => return Err(e).context("store the password"),
            }
            println!("password set for {username} ({user_uri}, realm {realm})");
        }
    }
    Ok(())
}

/// Runs a one-off `token` command.
pub fn run_token_command(config: &Config, command: &config::TokenCommand) -> anyhow::Result<()> {
    match command {
        config::TokenCommand::Issue { user, ttl } => {
            let secret = config.jwt_secret().map_err(anyhow::Error::msg)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let token = auth::bearer::issue_hs256(
                &secret,
                &auth::bearer::TokenRequest {
                    subject: user,
                    now,
                    ttl: *ttl,
                    issuer: config.jwt_issuer.as_deref(),
                    audience: config.jwt_audience.as_deref(),
                },
            )
            .context("sign the token")?;
            println!("{token}");
        }
    }
    Ok(())
}
