//! Whether this server serves, as proxies see it: gRPC health (tonic-health, for the
//! `SubscriptionService` name and for `""`, the whole server) and the [`Gate`] in front of
//! the Session service.
//!
//! It serves when startup has completed (the database was reached, migrated if asked, its
//! columns read), the database answers (the [`probe`], every second; [`FAILURES_TO_UNSERVE`]
//! failures in a row take it out, one success puts it back), and no drain has begun
//! (SIGTERM: proxies move the subscriptions elsewhere). Until startup completes, Session
//! calls fail `UNAVAILABLE`; the listeners are up from the start, so `/livez` answers and
//! supervisors see the process.

use crate::api;
use crate::directory::{Directory, DirectoryError};
use crate::metrics::{Metrics, PoolLabel};
use proto::v1::ProxyMessage;
use proto::v1::subscription_service_server::{SubscriptionService, SubscriptionServiceServer};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, info, warn};

/// How often the database is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed probes in a row that make the server NOT_SERVING (one failure may be a blip).
pub const FAILURES_TO_UNSERVE: u32 = 2;

/// The gRPC name of the Session service, as health checks name it.
pub const SERVICE_NAME: &str =
    <SubscriptionServiceServer<Gate> as tonic::server::NamedService>::NAME;

/// What decides serving (sans-IO).
#[derive(Debug, Default)]
struct State {
    started: bool,
    reachable: bool,
    failures: u32,
    draining: bool,
    /// What health last said (`None`: nothing yet).
    published: Option<bool>,
}

impl State {
    fn serving(&self) -> bool {
        self.started && self.reachable && !self.draining
    }

    /// One probe's result; returns the new reachability when it changed.
    fn probe(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            if !self.reachable {
                self.reachable = true;
                return Some(true);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.reachable && self.failures >= FAILURES_TO_UNSERVE {
                self.reachable = false;
                return Some(false);
            }
        }
        None
    }
}

/// Serving state and the health service that reports it.
#[derive(Debug)]
pub struct Health {
    reporter: HealthReporter,
    state: Mutex<State>,
}

impl Health {
    /// NOT_SERVING (for both names) until [`Health::started`].
    pub async fn new(reporter: HealthReporter) -> Self {
        let health = Self {
            reporter,
            state: Mutex::default(),
        };
        health.update(|_| ()).await;
        health
    }

    /// Applies `change` and publishes the result if serving changed. The lock is held
    /// while publishing, so two updates never publish out of order.
    async fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let mut state = self.state.lock().await;
        let out = change(&mut state);
        let serving = state.serving();
        if state.published != Some(serving) {
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in [SERVICE_NAME, ""] {
                self.reporter.set_service_status(name, status).await;
            }
            state.published = Some(serving);
        }
        out
    }

    /// Startup has completed (the database answered just now).
    pub async fn started(&self) {
        self.update(|s| {
            s.started = true;
            s.reachable = true;
            s.failures = 0;
        })
        .await;
    }

    /// Whether startup has completed.
    pub async fn is_started(&self) -> bool {
        self.state.lock().await.started
    }

    /// Whether the probes say the database is reachable (two failures in a row say not).
    pub async fn is_reachable(&self) -> bool {
        self.state.lock().await.reachable
    }

    /// SIGTERM: NOT_SERVING from now on, whatever the probe says.
    pub async fn drain(&self) {
        self.update(|s| s.draining = true).await;
    }

    /// Records one probe; returns the new reachability when it changed.
    async fn probed(&self, ok: bool) -> Option<bool> {
        self.update(|s| s.probe(ok)).await
    }
}

/// Probes the database every [`PROBE_EVERY`] until `shutdown`, and on the same tick updates
/// the pool gauges and lets a lagging read replica serve again once it has caught up.
pub async fn probe(
    health: Arc<Health>,
    directory: Directory,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let result = match tokio::time::timeout(PROBE_TIMEOUT, directory.probe()).await {
            Ok(r) => r,
            Err(_) => Err(DirectoryError::Timeout(PROBE_TIMEOUT)),
        };
        match (health.probed(result.is_ok()).await, &result) {
            (Some(false), Err(e)) => warn!(
                error = %e,
                failures = FAILURES_TO_UNSERVE,
                "database unreachable: gRPC health NOT_SERVING"
            ),
            (Some(true), _) => info!("database reachable again: gRPC health SERVING"),
            (None, Err(e)) => debug!(error = %e, "database probe failed"),
            _ => {}
        }
        for usage in directory.pool_usage() {
            let idle = i64::try_from(usage.idle).unwrap_or(i64::MAX);
            let in_use = i64::from(usage.size).saturating_sub(idle).max(0);
            for (state, value) in [("idle", idle), ("in_use", in_use)] {
                metrics
                    .db_pool
                    .get_or_create(&PoolLabel {
                        pool: usage.pool,
                        state,
                    })
                    .set(value);
            }
        }
        directory.recheck_replica().await;
    }
}

/// The Session service until startup completes: a call waits (at most `GATE_WAIT`) for
/// startup, then fails `UNAVAILABLE`; once open, each call goes to the real service. The
/// wait covers the last moments of a normal startup (the change follower taking its place),
/// so a proxy connecting right after the READY line is not turned away.
#[derive(Clone, Default)]
pub struct Gate {
    service: Arc<OnceLock<api::SessionService>>,
    opened: Arc<tokio::sync::Notify>,
}

/// How long a Session call waits for startup before it is refused.
const GATE_WAIT: Duration = Duration::from_secs(6);

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("open", &self.service.get().is_some())
            .finish()
    }
}

impl Gate {
    /// Lets calls through to `service` from now on (the first call wins).
    pub fn open(&self, service: api::SessionService) {
        let _ = self.service.set(service);
        self.opened.notify_waiters();
    }

    /// The service, once open, waiting at most [`GATE_WAIT`].
    async fn service(&self) -> Option<&api::SessionService> {
        let opened = self.opened.notified();
        if let Some(s) = self.service.get() {
            return Some(s);
        }
        let _ = tokio::time::timeout(GATE_WAIT, opened).await;
        self.service.get()
    }
}

#[tonic::async_trait]
impl SubscriptionService for Gate {
    type SessionStream = <api::SessionService as SubscriptionService>::SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        match self.service().await {
            Some(service) => service.session(request).await,
            None => Err(Status::unavailable("database not reachable yet")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_failed_probes_in_a_row_unserve_and_one_success_serves_again() {
        let mut s = State::default();
        assert!(!s.serving(), "not before startup");
        s.started = true;
        assert_eq!(s.probe(true), Some(true));
        assert!(s.serving());
        assert_eq!(s.probe(false), None, "one failure may be a blip");
        assert!(s.serving());
        assert_eq!(s.probe(true), None);
        assert_eq!(s.probe(false), None, "the count starts again");
        assert_eq!(s.probe(false), Some(false));
        assert!(!s.serving());
        assert_eq!(s.probe(false), None, "said once");
        assert_eq!(s.probe(true), Some(true));
        assert!(s.serving());
        s.draining = true;
        assert!(!s.serving(), "a drain wins over the probe");
        assert_eq!(s.probe(true), None);
        assert!(!s.serving());
    }

    #[tokio::test]
    async fn health_reports_both_names_and_follows_the_state() {
        let (reporter, _service) = tonic_health::server::health_reporter();
        let health = Health::new(reporter).await;
        async fn published(h: &Health) -> Option<bool> {
            h.state.lock().await.published
        }
        assert_eq!(published(&health).await, Some(false));
        health.started().await;
        assert_eq!(published(&health).await, Some(true));
        assert!(health.is_started().await);
        assert_eq!(health.probed(false).await, None);
        assert_eq!(health.probed(false).await, Some(false));
        assert_eq!(published(&health).await, Some(false));
        assert_eq!(health.probed(true).await, Some(true));
        health.drain().await;
        assert_eq!(published(&health).await, Some(false));
        assert_eq!(SERVICE_NAME, "conflist.v1.SubscriptionService");
    }
}
