//! Process plumbing shared by `conflist-proxy` and `conflist-server`: logging setup, the
//! shutdown signal, and the admin HTTP endpoint with the process metrics both export
//! (`conflist_build_info`, `process_open_fds`). Nothing here knows SIP, gRPC or SQL.

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod settings;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::ffi::OsStr;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::Arc;

/// Logs to stderr as `text` or `json`; the level comes from `RUST_LOG` (default `info`).
/// Colours only when stderr is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>), so log files and collectors get plain text.
///
/// `json` is one object per line: the event's own fields under `fields`, the innermost
/// span's under `span` and every enclosing span's under `spans` (outermost first). A line
/// about one subscription carries `subscription.id` in one of them (the proxy's flows also
/// `conn.id`, the prefix of their subscriptions' ids).
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = use_ansi(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and never with a non-empty
/// `NO_COLOR`.
fn use_ansi(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Resolves on SIGINT or SIGTERM; both mean "drain gracefully".
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the process");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A readiness check: `Err(why)` is answered 503 with the reason.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), &'static str>> + Send>> + Send + Sync>;

struct AdminState {
    registry: Registry,
    ready: ReadinessCheck,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

/// The admin router: `/livez` (process up), `/readyz` (`ready` says so), `/metrics`
/// (OpenMetrics text of `registry`, plus `conflist_build_info{version}` and
/// `process_open_fds`). `version` is the binary's own `CARGO_PKG_VERSION`.
pub fn admin_router(
    mut registry: Registry,
    ready: ReadinessCheck,
    version: &'static str,
) -> Router {
    register_process_metrics(&mut registry, version);
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(AdminState { registry, ready }))
}

/// Label of `conflist_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// `conflist_build_info{version} 1` (one series: which build runs, for dashboards and
/// alerts on mixed versions) and the open-descriptor collector.
fn register_process_metrics(registry: &mut Registry, version: &'static str) {
    let info = Family::<BuildLabel, Gauge>::default();
    info.get_or_create(&BuildLabel { version }).set(1);
    registry.register(
        "conflist_build_info",
        "The running build (always 1), by version",
        info,
    );
    registry.register_collector(Box::new(OpenFds));
}

/// `process_open_fds`, counted on each scrape (the name node_exporter and the Prometheus
/// client libraries use). Absent where `/proc/self/fd` cannot be read.
#[derive(Debug)]
struct OpenFds;

impl Collector for OpenFds {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(n) = open_fds() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(n);
        let metric = encoder.encode_descriptor(
            "process_open_fds",
            "Open file descriptors of this process",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Entries of `/proc/self/fd` (the directory's own descriptor, open while it is read, is
/// not subtracted: one off, as in the Prometheus client libraries).
fn open_fds() -> Option<i64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    i64::try_from(entries.count()).ok()
}

async fn readyz(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Registry, register_process_metrics, use_ansi};
    use std::ffi::OsStr;

    #[test]
    fn build_info_and_open_descriptors_are_exported() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry, "1.2.3");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("conflist_build_info{version=\"1.2.3\"} 1"),
            "{out}"
        );
        let fds: i64 = out
            .lines()
            .find_map(|l| l.strip_prefix("process_open_fds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no process_open_fds in {out}"));
        assert!(fds >= 3, "stdin, stdout, stderr at least: {fds}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(use_ansi(true, None));
        assert!(
            use_ansi(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None), "a pipe or file gets plain text");
        assert!(!use_ansi(false, Some(OsStr::new("1"))));
    }
}
