//! conflist subscriber-server: the notifier of the `conference-list` event package.
//!
//! It accepts gRPC session streams from proxies (`conflist.v1`), admits subscriptions, reads
//! each subscriber's conferences from the directory (PostgreSQL or embedded SQLite) and sends
//! versioned `application/conference-list+xml` notifications. It knows no SIP syntax.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`api`]: the tonic service; proto ⇄ domain conversion, one task per session.
//! - [`session`]: sans-IO state machine of one proxy session (inputs in, outputs out).
//! - [`auth`]: sign-in: digest (RFC 8760) and bearer (RFC 8898) credentials, stateless
//!   nonces, failure throttling, and the proxy hop's shared secret.
//! - [`subscription`]: sans-IO admission policy, per-session registry (versions, expiry,
//!   delivery and rate state) and the full/partial decision.
//! - [`cache`]: per-user documents shared by all sessions; recomputes changed users.
//! - [`changes`]: the change follower (change log + LISTEN, or snapshot polling).
//! - [`directory`]: SQL against the database contract; migrations; change-log triggers.
//! - [`admin`]: the JSON admin API (`/admin/…`, behind `--admin-token-file`).
//! - [`health`]: gRPC health (database probe, drain) and the gate that holds Session calls
//!   until startup completes.
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
pub mod health;
pub mod metrics;
pub mod session;
pub mod subscription;

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use config::Config;

/// Runs the server until `shutdown` resolves, then drains (gRPC health NOT_SERVING, up to
/// `--drain-timeout` for proxies to move the subscriptions away), terminates what is left
/// with `reason=deactivated` and waits up to the grace period for sessions to finish.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let secrets = config
        .load_secrets()
        .map_err(|e| anyhow::anyhow!("read secrets: {e}"))?;
    run_with(config, secrets, shutdown).await
}

/// How long startup waits for the change follower to take its place in the change log
/// before serving anyway.
const FOLLOWER_START: std::time::Duration = std::time::Duration::from_secs(5);

/// The largest gRPC message either way on a session.
const GRPC_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// HTTP/2 flow-control windows of a session stream and of a connection.
const GRPC_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const GRPC_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// How long one attempt to reach the database at startup may take.
const STARTUP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after the first failed startup attempt; doubled after each, up to the maximum.
const STARTUP_RETRY_FIRST: Duration = Duration::from_millis(250);
const STARTUP_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a drain looks at the subscription count.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// [`run`] with the secrets and keys already read (`main` reads them first so that bad
/// files exit with code 64).
///
/// The listeners are bound (and `READY` printed) whether or not the database answers: a
/// database that is not reachable yet is waited for, with the server up but unready
/// (`/readyz` 503, gRPC health NOT_SERVING, Session calls `UNAVAILABLE`). One that refuses
/// us for good (credentials, TLS, schema) ends the run with an error.
pub async fn run_with(
    config: Config,
    secrets: config::Secrets,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let directory = directory::Directory::connect_lazy(
        &config.database_url,
        config.db_max_connections,
        config.read_database_url.as_deref(),
    )
    .context("open the database pool")?
    .with_rows_skipped(metrics.rows_skipped.clone())
    .with_conference_limit(
        config.max_conference_bytes,
        metrics.conferences_truncated.clone(),
    )
    .with_query_times(metrics.db_query.clone());
    let startup = Startup {
        directory: directory.clone(),
        migrate: config.migrate || config.demo_data,
        demo_data: config.demo_data,
    };
    // One attempt before binding: a database that refuses us for good exits here, before
    // READY, as a bad configuration does.
    let columns = match startup.attempt().await {
        Ok(columns) => Some(columns),
        Err((_, e)) if e.is_unreachable() => {
            warn!(attempt = 1, error = %e, "database not reachable; serving unready until it is");
            None
        }
        Err((step, e)) => return Err(e).context(step),
    };
    if secrets.auth.is_none() {
        warn!("--auth off: subscribers are not authenticated (the From address is trusted)");
    } else if config.unauthenticated_hop_exposed() {
        warn!(
            grpc.addr = %config.grpc_listen,
            "the proxy hop is not authenticated and gRPC listens beyond loopback: any host \
             that reaches the gRPC port can open sessions; set --grpc-secret-file or \
             --grpc-client-ca (flow identities are ignored until then)"
        );
    } else if !config.hop_authenticated() {
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

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Arc::new(health::Health::new(reporter).await);
    let gate = health::Gate::default();
    // Explicit limits above the body cap: one Notification never ends a session (the
    // proxy's own receive limit is 16 MiB; the largest body allowed is 4 MiB).
    let service =
        proto::v1::subscription_service_server::SubscriptionServiceServer::new(gate.clone())
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
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
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
    let hub = Arc::new(admin::Hub::default());
    let admin_token = token.clone();
    let admin_api = admin::router(hub.clone(), secrets.admin_token);
    let ready_health = health.clone();
    let admin_task = tokio::spawn(async move {
        // Ready as the health probe last saw the database (every second): a readiness
        // check answers at once instead of waiting on a pool during an outage.
        let ready: conflist_service::ReadinessCheck = Arc::new(move || {
            let health = ready_health.clone();
            Box::pin(async move {
                if !health.is_started().await {
                    return Err("starting: database not reachable yet");
                }
                if health.is_reachable().await {
                    Ok(())
                } else {
                    Err("database unreachable")
                }
            })
        });
        let router = conflist_service::admin_router(registry, ready, env!("CARGO_PKG_VERSION"));
        axum::serve(admin, router.merge(admin_api))
            .with_graceful_shutdown(async move { admin_token.cancelled().await })
            .await
    });

    let serve = Serve {
        config: config.clone(),
        auth: secrets.auth,
        metrics: metrics.clone(),
        token: token.clone(),
        tracker: tracker.clone(),
        hub,
        health: health.clone(),
        gate,
    };
    // A startup that failed for good after READY ends the run like a shutdown, with its error.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    match columns {
        Some(columns) => serve.start(directory, &columns).await,
        None => {
            let token = token.clone();
            tracker.spawn(async move {
                tokio::select! {
                    done = startup.retry() => match done {
                        Ok(columns) => serve.start(directory, &columns).await,
                        Err(e) => {
                            let _ = fatal_tx.send(e);
                        }
                    },
                    () = token.cancelled() => {}
                }
            });
        }
    }

    let fatal = tokio::select! {
        () = shutdown => None,
        Ok(e) = fatal_rx => Some(e),
    };
    match &fatal {
        None => drain(&health, &metrics, config.drain_timeout).await,
        Some(e) => error!("startup failed: {e:#}"),
    }
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
    match fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The database half of startup: reach it, apply the reference schema and demo data if
/// asked, read which optional columns it has. Every step may be repeated.
#[derive(Debug)]
struct Startup {
    directory: directory::Directory,
    migrate: bool,
    demo_data: bool,
}

impl Startup {
    /// One attempt; on failure, the step (for the error's context) and why.
    async fn attempt(
        &self,
    ) -> Result<directory::rows::Columns, (&'static str, directory::DirectoryError)> {
        let step = |step| move |e| (step, e);
        let d = &self.directory;
        tokio::time::timeout(STARTUP_CONNECT_TIMEOUT, d.check_reachable())
            .await
            .unwrap_or(Err(directory::DirectoryError::Timeout(
                STARTUP_CONNECT_TIMEOUT,
            )))
            .map_err(step("connect to the database"))?;
        if self.migrate {
            d.migrate()
                .await
                .map_err(step("apply the reference schema"))?;
        }
        if self.demo_data {
            d.load_demo_data().await.map_err(step("load demo data"))?;
        }
        d.discover_columns().await.map_err(step(
            "read the columns of conflist_conferences and conflist_members",
        ))
    }

    /// Attempts until one succeeds (pausing longer after each failure, up to
    /// [`STARTUP_RETRY_MAX`]) or one fails for a reason other than reachability.
    async fn retry(&self) -> anyhow::Result<directory::rows::Columns> {
        let mut pause = STARTUP_RETRY_FIRST;
        for attempt in 2_u64.. {
            tokio::time::sleep(pause).await;
            match self.attempt().await {
                Ok(columns) => {
                    info!(attempt, "database reachable: completing startup");
                    return Ok(columns);
                }
                Err((_, e)) if e.is_unreachable() => {
                    pause = (pause * 2).min(STARTUP_RETRY_MAX);
                    warn!(attempt, error = %e, retry_in = ?pause, "database not reachable yet");
                }
                Err((step, e)) => return Err(e).context(step),
            }
        }
        anyhow::bail!("gave up reaching the database")
    }
}

/// What completing startup needs besides the database.
struct Serve {
    config: Config,
    auth: Option<auth::AuthConfig>,
    metrics: metrics::Metrics,
    token: CancellationToken,
    tracker: TaskTracker,
    hub: Arc<admin::Hub>,
    health: Arc<health::Health>,
    gate: health::Gate,
}

impl Serve {
    /// The rest of startup once the database has answered: the cache, the change follower,
    /// the sessions' context, the probe; then the gate opens and health says SERVING.
    async fn start(self, directory: directory::Directory, columns: &directory::rows::Columns) {
        let Self {
            config,
            auth,
            metrics,
            token,
            tracker,
            hub,
            health,
            gate,
        } = self;
        info!(optional_columns = %columns.describe(), "database contract");
        let cache =
            Arc::new(cache::Cache::new(directory.clone()).with_max_age(Some(config.cache_max_age)));
        let (following, followed) = tokio::sync::oneshot::channel();
        tracker.spawn(changes::run(
            cache.clone(),
            changes::FollowerConfig {
                mode: config.change_detection,
                interval: config.change_interval,
                retention: config.change_retention,
                verify_interval: (!config.verify_interval.is_zero())
                    .then_some(config.verify_interval),
            },
            metrics.clone(),
            token.clone(),
            following,
        ));
        // No subscription before the follower holds its place in the change log: a change
        // committed after a subscriber's first load but before that place would be skipped.
        // A log that cannot be read (not installed) delays serving only so long: the
        // follower keeps retrying and warning, and updates start when it succeeds.
        match tokio::time::timeout(FOLLOWER_START, followed).await {
            Ok(_) => {}
            Err(_) => warn!(
                waited = ?FOLLOWER_START,
                "serving before the change follower could read the change log"
            ),
        }
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
            auth: auth.map(auth::Authenticator::new),
            trust_flow_identity: config.hop_authenticated(),
            max_subscriptions_per_user: config.max_subscriptions_per_user,
            stall_timeout: config.session_stall_timeout,
            admin: hub,
        });
        gate.open(api::SessionService::new(ctx));
        health.started().await;
        tracker.spawn(health::probe(health, directory, metrics, token));
    }
}

/// SIGTERM's first step: NOT_SERVING at once (proxies move this server's subscriptions to
/// their new owners), then wait until none is left here or `timeout` has passed.
async fn drain(health: &health::Health, metrics: &metrics::Metrics, timeout: Duration) {
    health.drain().await;
    metrics.drains.inc();
    let held = metrics.subscriptions.get();
    info!(subscriptions = held, timeout = ?timeout, "draining: gRPC health NOT_SERVING");
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    loop {
        let now = tokio::time::Instant::now();
        if metrics.subscriptions.get() <= 0 || now >= deadline {
            break;
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
    let left = metrics.subscriptions.get();
    info!(
        subscriptions_moved = (held - left).max(0),
        subscriptions_left = left,
        waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "drain ended"
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn drained(held: i64, leaves_after: Option<Duration>, timeout: Duration) -> Duration {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let health = health::Health::new(reporter).await;
        health.started().await;
        let metrics = metrics::Metrics::default();
        metrics.subscriptions.set(held);
        if let Some(after) = leaves_after {
            let m = metrics.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                m.subscriptions.set(0);
            });
        }
        let start = tokio::time::Instant::now();
        drain(&health, &metrics, timeout).await;
        assert_eq!(metrics.drains.get(), 1);
        start.elapsed()
    }

    /// Real time, in tens of milliseconds (tokio's paused clock is not enabled here).
    #[tokio::test]
    async fn a_drain_waits_for_the_last_subscription_or_the_timeout() {
        let ms = Duration::from_millis;
        assert!(drained(0, None, ms(10_000)).await < ms(100), "nothing held");
        assert!(drained(3, None, Duration::ZERO).await < ms(100), "0 skips");
        let full = drained(3, None, ms(200)).await;
        assert!(
            full >= ms(200) && full < ms(1000),
            "at most the timeout: {full:?}"
        );
        let early = drained(3, Some(ms(50)), ms(10_000)).await;
        assert!(
            early >= ms(50) && early < ms(1000),
            "ends when none is left: {early:?}"
        );
    }

    #[tokio::test]
    async fn startup_reports_an_unreachable_database_as_worth_waiting_for() {
        let unreachable = Startup {
            directory: directory::Directory::connect_lazy("postgres://u@127.0.0.1:1/db", 1, None)
                .unwrap(),
            migrate: true,
            demo_data: true,
        };
        let (step, e) = unreachable.attempt().await.unwrap_err();
        assert_eq!(step, "connect to the database");
        assert!(e.is_unreachable(), "{e}");
        let reachable = Startup {
            directory: directory::Directory::connect_lazy("sqlite::memory:", 1, None).unwrap(),
            migrate: true,
            demo_data: true,
        };
        let columns = reachable.attempt().await.unwrap();
        assert_eq!(columns, directory::rows::Columns::all());
    }
}
