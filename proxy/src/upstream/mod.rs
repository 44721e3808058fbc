//! The gRPC side: one long-lived `Session` stream per subscriber-server, multiplexing every
//! subscription this proxy holds there; events are demultiplexed to connections by
//! subscription id. A server is picked per subscriber by rendezvous hashing ([`ring`]), so one
//! user's subscriptions share that server's cache.
//!
//! Bounded everywhere: commands to a server go through a bounded queue (`try_send`: a full
//! queue answers 503, it never blocks a connection); events to a connection go through the
//! connection's bounded queue, and a connection that cannot keep up is closed (its client
//! re-subscribes and gets full state) rather than slowing the other subscriptions.

mod convert;
pub mod ring;

use crate::metrics::Metrics;
use crate::notifier::{Answer, Command, Event, Notification, Reason, SubscriptionId, Verdict};
use proto::v1::ProxyMessage;
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Commands buffered per server before new subscriptions get 503.
pub const COMMAND_QUEUE: usize = 8192;

/// How the sessions to the servers are secured (DESIGN: mutual TLS or a checked secret).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS for `https://` endpoints: the CA, and our client certificate for mutual TLS.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Sent as `authorization: Bearer <secret>` metadata on every session.
    pub secret: Option<tonic::metadata::AsciiMetadataValue>,
}

/// Adds the shared secret to each call.
#[derive(Debug, Clone)]
struct SecretInterceptor(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for SecretInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(secret) = &self.0 {
            req.metadata_mut().insert("authorization", secret.clone());
        }
        Ok(req)
    }
}

/// Where a subscription's events go: the connection's queue and its kill switch.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    /// The connection's event queue.
    pub events: mpsc::Sender<Event>,
    /// Cancelled when the connection cannot keep up.
    pub close: CancellationToken,
}

type Routes = Arc<Mutex<HashMap<SubscriptionId, ConnectionHandle>>>;

/// One subscriber-server.
#[derive(Debug)]
pub struct Upstream {
    endpoint: String,
    commands: mpsc::Sender<ProxyMessage>,
    routes: Routes,
    connected: AtomicBool,
    metrics: Metrics,
}

impl Upstream {
    /// The server's endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether its session stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Routes `sub`'s events to `conn` from now on.
    pub fn route(&self, sub: SubscriptionId, conn: ConnectionHandle) {
        lock(&self.routes).insert(sub, conn);
    }

    /// Stops routing `sub`.
    pub fn unroute(&self, sub: &str) {
        lock(&self.routes).remove(sub);
    }

    /// Sends a command without waiting. When the server is unreachable or its queue is full,
    /// a Subscribe or Refresh is answered `Unavailable` at once (the client gets 503).
    pub fn send(&self, command: Command) {
        let verdict_needed = match &command {
            Command::Subscribe { request_id, .. } | Command::Refresh { request_id, .. } => {
                Some(*request_id)
            }
            _ => None,
        };
        let sub = command.sub().to_owned();
        let sent =
            self.is_connected() && self.commands.try_send(convert::to_proto(command)).is_ok();
        if !sent {
            self.metrics.upstream_unavailable.inc();
            if let Some(request_id) = verdict_needed {
                let answer = Event::Answer(Answer {
                    sub: sub.clone(),
                    request_id,
                    verdict: Verdict::Unavailable { retry_after: None },
                });
                deliver(&self.routes, &self.metrics, &sub, answer);
            }
        }
    }
}

/// All configured servers.
#[derive(Debug, Clone)]
pub struct Upstreams {
    servers: Arc<Vec<Arc<Upstream>>>,
}

impl Upstreams {
    /// Starts one session task per endpoint; they reconnect until `shutdown`.
    pub fn start(
        endpoints: &[String],
        security: &Security,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let servers = endpoints
            .iter()
            .map(|endpoint| {
                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                let up = Arc::new(Upstream {
                    endpoint: endpoint.clone(),
                    commands: tx,
                    routes: Arc::default(),
                    connected: AtomicBool::new(false),
                    metrics: metrics.clone(),
                });
                tracker.spawn(run_session(
                    up.clone(),
                    security.clone(),
                    rx,
                    shutdown.clone(),
                ));
                up
            })
            .collect();
        Self {
            servers: Arc::new(servers),
        }
    }

    /// The server for `subscriber` (rendezvous hashing over the connected servers; all
    /// servers when none is connected, so the request fails fast with 503).
    pub fn pick(&self, subscriber: &str) -> Option<Arc<Upstream>> {
        let connected: Vec<&Arc<Upstream>> =
            self.servers.iter().filter(|s| s.is_connected()).collect();
        let candidates = if connected.is_empty() {
            self.servers.iter().collect()
        } else {
            connected
        };
        ring::pick(subscriber, &candidates, |s| s.endpoint()).cloned()
    }

    /// True when at least one server session is up.
    pub fn any_connected(&self) -> bool {
        self.servers.iter().any(|s| s.is_connected())
    }
}

/// Keeps a session stream to one server open, reconnecting with backoff.
async fn run_session(
    up: Arc<Upstream>,
    security: Security,
    mut commands: mpsc::Receiver<ProxyMessage>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connect = tonic::transport::Endpoint::from_shared(up.endpoint.clone()).and_then(|ep| {
            match (&security.tls, up.endpoint.starts_with("https://")) {
                (Some(tls), true) => ep.tls_config(tls.clone()),
                _ => Ok(ep),
            }
        });
        let channel = match connect {
            Ok(ep) => {
                let ep = ep
                    .connect_timeout(Duration::from_secs(5))
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10));
                tokio::select! {
                    c = ep.connect() => c,
                    () = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                warn!(endpoint = %up.endpoint, error = %e, "invalid server endpoint; giving up on it");
                return;
            }
        };
        let mut client = match channel {
            Ok(ch) => SubscriptionServiceClient::with_interceptor(
                ch,
                SecretInterceptor(security.secret.clone()),
            ),
            Err(e) => {
                debug!(endpoint = %up.endpoint, error = %e, "server not reachable");
                drain_while_down(&up, &mut commands);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let (stream_tx, stream_rx) = mpsc::channel(COMMAND_QUEUE);
        let response = tokio::select! {
            r = client.session(ReceiverStream::new(stream_rx)) => r,
            () = shutdown.cancelled() => return,
        };
        let mut inbound = match response {
            Ok(r) => r.into_inner(),
            Err(status) => {
                warn!(endpoint = %up.endpoint, %status, "server refused the session");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        up.connected.store(true, Ordering::Relaxed);
        up.metrics.upstream_sessions.inc();
        info!(endpoint = %up.endpoint, "server session up");
        let ended = loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => if stream_tx.send(cmd).await.is_err() { break "stream closed" },
                    None => break "proxy stopping",
                },
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => {
                        if let Some((sub, event)) = convert::from_proto(msg) {
                            deliver(&up.routes, &up.metrics, &sub, event);
                        }
                    }
                    Ok(None) => break "server closed the session",
                    Err(status) => { debug!(%status, "session error"); break "session failed" }
                },
                // Cancelled after the connections have drained: flush what they queued
                // (their final Unsubscribes), then end the session.
                () = shutdown.cancelled() => {
                    while let Ok(cmd) = commands.try_recv() {
                        if stream_tx.send(cmd).await.is_err() {
                            break;
                        }
                    }
                    break "proxy stopping";
                }
            }
        };
        up.connected.store(false, Ordering::Relaxed);
        up.metrics.upstream_sessions.dec();
        warn!(endpoint = %up.endpoint, reason = ended, "server session down");
        lose_all(&up);
        if ended == "proxy stopping" || shutdown.is_cancelled() {
            return;
        }
    }
}

/// While no session is up, queued commands cannot be delivered: answer them Unavailable.
fn drain_while_down(up: &Upstream, commands: &mut mpsc::Receiver<ProxyMessage>) {
    while let Ok(msg) = commands.try_recv() {
        if let Some((sub, request_id)) = convert::request_of(&msg) {
            let answer = Event::Answer(Answer {
                sub: sub.clone(),
                request_id,
                verdict: Verdict::Unavailable { retry_after: None },
            });
            deliver(&up.routes, &up.metrics, &sub, answer);
        }
    }
}

/// The session with this server is gone: every subscription routed there ends with
/// `terminated;reason=deactivated`, so its client re-subscribes at once (RFC 6665 §4.2.2).
fn lose_all(up: &Upstream) {
    let routes: Vec<(SubscriptionId, ConnectionHandle)> = lock(&up.routes).drain().collect();
    for (sub, conn) in routes {
        let note = Notification::terminated(sub.clone(), Reason::Deactivated);
        if conn.events.try_send(Event::Notification(note)).is_err() {
            conn.close.cancel();
        }
    }
}

/// Hands `event` to the connection holding `sub`; closes a connection that cannot keep up.
fn deliver(routes: &Routes, metrics: &Metrics, sub: &str, event: Event) {
    let Some(conn) = lock(routes).get(sub).cloned() else {
        debug!(subscription.id = %sub, "event for a subscription no longer here");
        return;
    };
    match conn.events.try_send(event) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.slow_connections_closed.inc();
            warn!(subscription.id = %sub, "connection cannot keep up with its notifications; closing it");
            conn.close.cancel();
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
