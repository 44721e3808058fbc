//! The server's Prometheus metrics: one struct, registered under the `conflist_server` prefix.
//! Labels are bounded (answer status names and sign-in outcomes only; never users or ids).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use proto::v1::AnswerStatus;
use std::sync::atomic::AtomicU64;

/// Label of an answer counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    status: StatusValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are printed as written")]
enum StatusValue {
    ok,
    unauthorized,
    forbidden,
    not_found,
    interval_too_brief,
    bad_event,
    not_acceptable,
    no_such_subscription,
    unavailable,
    internal_error,
}

impl StatusLabel {
    /// The label for `status`.
    pub fn new(status: AnswerStatus) -> Self {
        let status = match status {
            AnswerStatus::Ok => StatusValue::ok,
            AnswerStatus::Unauthorized => StatusValue::unauthorized,
            AnswerStatus::Forbidden => StatusValue::forbidden,
            AnswerStatus::NotFound => StatusValue::not_found,
            AnswerStatus::IntervalTooBrief => StatusValue::interval_too_brief,
            AnswerStatus::BadEvent => StatusValue::bad_event,
            AnswerStatus::NotAcceptable => StatusValue::not_acceptable,
            AnswerStatus::NoSuchSubscription => StatusValue::no_such_subscription,
            AnswerStatus::Unavailable => StatusValue::unavailable,
            AnswerStatus::InternalError | AnswerStatus::Unspecified => StatusValue::internal_error,
        };
        Self { status }
    }
}

/// Label of the sign-in counter (`conflist_server_auth_total{outcome}`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabel {
    outcome: AuthValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types, reason = "label values are printed as written")]
enum AuthValue {
    ok,
    challenged,
    failed,
    stale,
    throttled,
    replayed,
}

impl AuthLabel {
    /// The label for a sign-in outcome.
    pub fn new(label: crate::auth::Label) -> Self {
        use crate::auth::Label;
        let outcome = match label {
            Label::Ok => AuthValue::ok,
            Label::Challenged => AuthValue::challenged,
            Label::Failed => AuthValue::failed,
            Label::Stale => AuthValue::stale,
            Label::Throttled => AuthValue::throttled,
            Label::Replayed => AuthValue::replayed,
        };
        Self { outcome }
    }
}

/// Label of the database query histogram (`conflist_server_db_query_seconds{query}`): a
/// fixed set of query names, never SQL text.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    /// Which query.
    pub query: &'static str,
}

/// Label of the pool gauge (`conflist_server_db_pool_connections{pool,state}`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `primary` or `replica`.
    pub pool: &'static str,
    /// `idle` or `in_use`.
    pub state: &'static str,
}

/// Buckets from 1 ms to about 33 s, doubling: database queries and end-to-end latencies.
pub(crate) fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the server exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Live subscriptions on this instance.
    pub subscriptions: Gauge,
    /// Open proxy sessions.
    pub sessions: Gauge,
    /// Proxy sessions ended because the proxy stopped reading (`--session-stall-timeout` or
    /// a full backlog).
    pub sessions_stalled: Counter,
    /// Notifications sent.
    pub notifications: Counter,
    /// Answers sent, by status.
    pub answers: Family<StatusLabel, Counter>,
    /// Failed directory reads.
    pub directory_errors: Counter,
    /// Notification body bytes sent.
    pub notification_bytes: Counter,
    /// Conferences read from the change log.
    pub changes_read: Counter,
    /// Users whose list changed.
    pub users_changed: Counter,
    /// Failures reading the change log or recomputing users.
    pub change_errors: Counter,
    /// Full recomputations after the log could not be read for too long.
    pub resyncs: Counter,
    /// Sign-in attempts, by outcome.
    pub auth: Family<AuthLabel, Counter>,
    /// gRPC calls refused for lacking the proxy secret.
    pub proxy_rejected: Counter,
    /// Directory rows skipped because they could not be decoded.
    pub rows_skipped: Counter,
    /// Conferences whose text was cut to the per-conference limit.
    pub conferences_truncated: Counter,
    /// Seconds the oldest running database transaction has been seen running (it holds
    /// the change-log frontier).
    pub change_frontier_age: Gauge,
    /// Cached lists that verification found wrong and corrected (unlogged changes).
    pub verify_repairs: Counter,
    /// Subscriptions a proxy re-attached here from another server (`resume_version`).
    pub subscriptions_resumed: Counter,
    /// Seconds from a change's row in the change log (`changed_at`) to the first
    /// Notification that carries it.
    pub commit_to_notify: Histogram,
    /// Database query time, by query.
    pub db_query: Family<QueryLabel, Histogram, fn() -> Histogram>,
    /// Seconds between now and the newest change-log row the last batch read.
    pub change_log_lag: Gauge<f64, AtomicU64>,
    /// Database pool connections, by pool and state.
    pub db_pool: Family<PoolLabel, Gauge>,
    /// SIGTERM drains started.
    pub drains: Counter,
    /// Change batches read from the primary because the read replica had not replayed
    /// their log read in time.
    pub replica_fallbacks: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            subscriptions: Gauge::default(),
            sessions: Gauge::default(),
            sessions_stalled: Counter::default(),
            notifications: Counter::default(),
            answers: Family::default(),
            directory_errors: Counter::default(),
            notification_bytes: Counter::default(),
            changes_read: Counter::default(),
            users_changed: Counter::default(),
            change_errors: Counter::default(),
            resyncs: Counter::default(),
            auth: Family::default(),
            proxy_rejected: Counter::default(),
            rows_skipped: Counter::default(),
            conferences_truncated: Counter::default(),
            change_frontier_age: Gauge::default(),
            verify_repairs: Counter::default(),
            subscriptions_resumed: Counter::default(),
            commit_to_notify: latency_histogram(),
            db_query: Family::new_with_constructor(latency_histogram),
            change_log_lag: Gauge::default(),
            db_pool: Family::default(),
            drains: Counter::default(),
            replica_fallbacks: Counter::default(),
        }
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `conflist_server`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("conflist_server");
        r.register(
            "subscriptions",
            "Live subscriptions",
            m.subscriptions.clone(),
        );
        r.register("sessions", "Open proxy sessions", m.sessions.clone());
        r.register(
            "sessions_stalled",
            "Proxy sessions ended because the proxy stopped reading",
            m.sessions_stalled.clone(),
        );
        r.register(
            "notifications",
            "Notifications sent",
            m.notifications.clone(),
        );
        r.register(
            "answers",
            "Answers to proxy requests, by status",
            m.answers.clone(),
        );
        r.register(
            "directory_errors",
            "Directory reads that failed",
            m.directory_errors.clone(),
        );
        r.register(
            "notification_bytes",
            "Notification body bytes sent",
            m.notification_bytes.clone(),
        );
        r.register(
            "changes_read",
            "Changed conferences read from the change log",
            m.changes_read.clone(),
        );
        r.register(
            "users_changed",
            "Users whose conference list changed",
            m.users_changed.clone(),
        );
        r.register(
            "change_errors",
            "Change log read or recompute failures",
            m.change_errors.clone(),
        );
        r.register(
            "resyncs",
            "Recomputations of every cached user",
            m.resyncs.clone(),
        );
        r.register(
            "auth",
            "Sign-in attempts, by outcome (ok, challenged, failed, stale, throttled, replayed)",
            m.auth.clone(),
        );
        r.register(
            "proxy_rejected",
            "gRPC calls refused because they lacked the proxy secret",
            m.proxy_rejected.clone(),
        );
        r.register(
            "rows_skipped",
            "Directory rows skipped because they could not be decoded (NULL or ill-typed column, invalid UTF-8)",
            m.rows_skipped.clone(),
        );
        r.register(
            "conferences_truncated",
            "Conferences larger than --max-conference-bytes whose text was truncated (one too large even then is left out and counted in rows_skipped)",
            m.conferences_truncated.clone(),
        );
        r.register_with_unit(
            "change_frontier_age",
            "How long the oldest running database transaction has been seen running; its change-log rows wait for its commit",
            prometheus_client::registry::Unit::Seconds,
            m.change_frontier_age.clone(),
        );
        r.register(
            "verify_repairs",
            "Cached lists that periodic verification corrected (changes the change log did not carry)",
            m.verify_repairs.clone(),
        );
        r.register(
            "subscriptions_resumed",
            "Subscriptions a proxy re-attached to this server from another one (resume_version)",
            m.subscriptions_resumed.clone(),
        );
        r.register_with_unit(
            "commit_to_notify",
            "From a change's change-log row (changed_at) to the first Notification carrying it",
            prometheus_client::registry::Unit::Seconds,
            m.commit_to_notify.clone(),
        );
        r.register_with_unit(
            "db_query",
            "Database query time, by query",
            prometheus_client::registry::Unit::Seconds,
            m.db_query.clone(),
        );
        r.register_with_unit(
            "change_log_lag",
            "Age of the newest change-log row the last batch read (0 when nothing was read)",
            prometheus_client::registry::Unit::Seconds,
            m.change_log_lag.clone(),
        );
        r.register(
            "db_pool_connections",
            "Database pool connections, by pool (primary, replica) and state (idle, in_use)",
            m.db_pool.clone(),
        );
        r.register("drains", "SIGTERM drains started", m.drains.clone());
        r.register(
            "replica_fallbacks",
            "Change batches read from the primary because the read replica had not replayed past their change-log read in time",
            m.replica_fallbacks.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn auth_outcomes_are_exported_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.auth
            .get_or_create(&AuthLabel::new(crate::auth::Label::Stale))
            .inc();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("conflist_server_auth_total{outcome=\"stale\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("conflist_server_proxy_rejected_total 0"),
            "{out}"
        );
    }
}
