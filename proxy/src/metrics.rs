//! The proxy's Prometheus metrics, registered under `conflist_proxy`. No per-user labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;

/// Labels of `conflist_proxy_responses_total`: the status and why it was chosen (the status
/// map's [`crate::dialog::Reply::label`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// The status code.
    pub status: u16,
    /// Why.
    pub outcome: &'static str,
}

/// Label of `conflist_proxy_reattached_total`: why a subscription moved to another server.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReattachLabel {
    /// `session_lost`, `not_serving` or `rebalance`.
    pub reason: &'static str,
}

/// Label of `conflist_proxy_servers`: the known servers by state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerStateLabel {
    /// `serving`, `not_serving` or `down`.
    pub state: &'static str,
}

/// Every metric the proxy exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open client connections.
    pub connections: Gauge,
    /// Connections refused at `--max-connections` (upgrades with 503; handshakes beyond the
    /// same number in progress are closed at accept).
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
    /// `accept()` failures on a client listener (e.g. out of file descriptors).
    pub accept_errors: Counter,
    /// Failed TLS handshakes on the WSS listener.
    pub tls_handshake_failures: Counter,
    /// Connections dropped for not finishing TLS and the upgrade within `--handshake-timeout`.
    pub handshake_timeouts: Counter,
    /// Upgrades refused with 403 for a browser Origin not allowed (`--allowed-origin`).
    pub origins_refused: Counter,
    /// Connections refused at `--max-connections-per-address` (or a full address table).
    pub address_connections_refused: Counter,
    /// Initial SUBSCRIBEs answered 503 at `--max-subscribes-per-address`.
    pub subscribes_rate_limited: Counter,
    /// Connections closed after `--idle-timeout` without a dialog.
    pub idle_connections_closed: Counter,
    /// SUBSCRIBEs refused because the route set was over `--max-route-set-size`.
    pub route_sets_refused: Counter,
    /// SUBSCRIBEs refused at `--max-dialogs-per-connection`.
    pub dialogs_per_connection_refused: Counter,
    /// NOTIFYs answered with an error and `Retry-After`, to be sent again.
    pub notify_retries: Counter,
    /// Server sessions ended because their command queue could not take a `Delivered` or
    /// `Unsubscribe` (the server stopped reading): losing one would desynchronise it.
    pub upstream_queue_overflows: Counter,
    /// Responses sent, by status and outcome.
    pub responses: Family<ResponseLabels, Counter>,
    /// NOTIFYs sent again on Timer E (unreliable transports).
    pub notify_retransmissions: Counter,
    /// Responses sent again to a retransmitted request.
    pub response_retransmissions: Counter,
    /// Subscriptions moved to another server, by why.
    pub reattached: Family<ReattachLabel, Counter>,
    /// Re-attaches the new server refused, or that found no server: the subscription ended
    /// with `deactivated`.
    pub reattach_failed: Counter,
    /// Seconds from a NOTIFY's first transmission to its final answer.
    pub notify_round_trip: Histogram,
    /// Known subscriber-servers, by state.
    pub servers: Family<ServerStateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            dialogs: Gauge::default(),
            requests: Counter::default(),
            parse_errors: Counter::default(),
            notifies: Counter::default(),
            slow_connections_closed: Counter::default(),
            upstream_sessions: Gauge::default(),
            upstream_unavailable: Counter::default(),
            accept_errors: Counter::default(),
            tls_handshake_failures: Counter::default(),
            handshake_timeouts: Counter::default(),
            origins_refused: Counter::default(),
            address_connections_refused: Counter::default(),
            subscribes_rate_limited: Counter::default(),
            idle_connections_closed: Counter::default(),
            route_sets_refused: Counter::default(),
            dialogs_per_connection_refused: Counter::default(),
            notify_retries: Counter::default(),
            upstream_queue_overflows: Counter::default(),
            responses: Family::default(),
            notify_retransmissions: Counter::default(),
            response_retransmissions: Counter::default(),
            reattached: Family::default(),
            reattach_failed: Counter::default(),
            // 1 ms to about 33 s, doubling.
            notify_round_trip: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            servers: Family::default(),
        }
    }
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
            "Connections refused at the connection cap",
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
        r.register(
            "accept_errors",
            "Failed accept() calls on client listeners",
            m.accept_errors.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Failed TLS handshakes on the WSS listener",
            m.tls_handshake_failures.clone(),
        );
        r.register(
            "handshake_timeouts",
            "Connections dropped for not completing TLS and the upgrade in time",
            m.handshake_timeouts.clone(),
        );
        r.register(
            "origins_refused",
            "Upgrades refused for a browser Origin that is not allowed",
            m.origins_refused.clone(),
        );
        r.register(
            "address_connections_refused",
            "Connections refused at the per-address connection limit",
            m.address_connections_refused.clone(),
        );
        r.register(
            "subscribes_rate_limited",
            "Initial SUBSCRIBEs refused at the per-address rate limit",
            m.subscribes_rate_limited.clone(),
        );
        r.register(
            "idle_connections_closed",
            "Connections closed for holding no dialog for the idle timeout",
            m.idle_connections_closed.clone(),
        );
        r.register(
            "route_sets_refused",
            "SUBSCRIBEs refused for a route set over the size limit",
            m.route_sets_refused.clone(),
        );
        r.register(
            "dialogs_per_connection_refused",
            "SUBSCRIBEs refused at the dialogs-per-connection limit",
            m.dialogs_per_connection_refused.clone(),
        );
        r.register(
            "notify_retries",
            "NOTIFYs answered with an error and Retry-After, sent again after the delay",
            m.notify_retries.clone(),
        );
        r.register(
            "upstream_queue_overflows",
            "Server sessions ended because their command queue could not take a Delivered or Unsubscribe",
            m.upstream_queue_overflows.clone(),
        );
        r.register(
            "responses",
            "SIP responses sent, by status and the reason it was chosen",
            m.responses.clone(),
        );
        r.register(
            "notify_retransmissions",
            "NOTIFYs retransmitted on Timer E over unreliable transports",
            m.notify_retransmissions.clone(),
        );
        r.register(
            "response_retransmissions",
            "Responses sent again to a retransmitted request",
            m.response_retransmissions.clone(),
        );
        r.register(
            "reattached",
            "Subscriptions moved to another server, by reason (session_lost, not_serving, rebalance)",
            m.reattached.clone(),
        );
        r.register(
            "reattach_failed",
            "Re-attaches refused or without a server: the subscription ended with deactivated",
            m.reattach_failed.clone(),
        );
        r.register_with_unit(
            "notify_round_trip",
            "From a NOTIFY's first transmission to its final answer",
            prometheus_client::registry::Unit::Seconds,
            m.notify_round_trip.clone(),
        );
        r.register(
            "servers",
            "Known subscriber-servers, by state (serving, not_serving, down)",
            m.servers.clone(),
        );
        m
    }

    /// Counts one response sent.
    pub fn count_response(&self, status: u16, outcome: &'static str) {
        self.responses
            .get_or_create(&ResponseLabels { status, outcome })
            .inc();
    }
}
