//! The proxy's Prometheus metrics, registered under `conflist_proxy`. No per-user labels.

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;

/// Every metric the proxy exports.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Open client connections.
    pub connections: Gauge,
    /// Upgrades refused at the connection cap.
    pub connections_refused: Counter,
    /// Live dialogs (subscriptions).
    pub dialogs: Gauge,
    /// SIP requests received.
    pub requests: Counter,
    /// Messages that did not parse.
    pub parse_errors: Counter,
    /// NOTIFY requests sent.
    pub notifies: Counter,
    /// Connections closed because they could not keep up.
    pub slow_connections_closed: Counter,
    /// Open sessions to subscriber-servers.
    pub upstream_sessions: Gauge,
    /// Commands that could not reach a subscriber-server.
    pub upstream_unavailable: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `conflist_proxy`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("conflist_proxy");
        r.register(
            "connections",
            "Open client connections",
            m.connections.clone(),
        );
        r.register(
            "connections_refused",
            "Upgrades refused at the connection cap",
            m.connections_refused.clone(),
        );
        r.register("dialogs", "Live subscription dialogs", m.dialogs.clone());
        r.register("sip_requests", "SIP requests received", m.requests.clone());
        r.register(
            "parse_errors",
            "Malformed SIP messages",
            m.parse_errors.clone(),
        );
        r.register("notifies", "NOTIFY requests sent", m.notifies.clone());
        r.register(
            "slow_connections_closed",
            "Connections closed for not keeping up",
            m.slow_connections_closed.clone(),
        );
        r.register(
            "upstream_sessions",
            "Open subscriber-server sessions",
            m.upstream_sessions.clone(),
        );
        r.register(
            "upstream_unavailable",
            "Commands that could not reach a subscriber-server",
            m.upstream_unavailable.clone(),
        );
        m
    }
}
