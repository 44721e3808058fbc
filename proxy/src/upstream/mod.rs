//! The gRPC side: one long-lived `Session` stream per subscriber-server, multiplexing every
//! subscription this proxy holds there; events are demultiplexed to connections by
//! subscription id. A server is picked per subscriber by rendezvous hashing ([`ring`]), so one
//! user's subscriptions share that server's cache.
//!
//! Bounded everywhere: commands to a server go through a bounded queue (`try_send`, never
//! blocking a connection); events to a connection go through the connection's bounded queue,
//! and a connection that cannot keep up is closed (its client re-subscribes and gets full
//! state) rather than slowing the other subscriptions.
//!
//! Each session reads and writes on separate paths: a writer moves commands from the queue
//! into the stream as the server takes them, while the reader hands every event on with
//! `try_send` and never waits for the writer, so two peers with full buffers cannot stall
//! each other. When the queue is full, a new Subscribe or Refresh is answered 503; a
//! `Delivered` or `Unsubscribe` must never be lost (the server would keep a NOTIFY in flight
//! or a subscription nobody holds), so one that does not fit ends the session: every
//! subscription on it ends with `terminated;reason=deactivated` and its client re-subscribes.

mod convert;
pub mod ring;
#[cfg(test)]
mod tests;

use crate::metrics::Metrics;
use crate::notifier::{Answer, Command, Event, Notification, Reason, SubscriptionId, Verdict};
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use proto::v1::{ProxyMessage, ServerMessage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Commands buffered per server before new subscriptions get 503 (and a `Delivered` or
/// `Unsubscribe` ends the session).
pub const COMMAND_QUEUE: usize = 8192;
/// Largest message accepted from a subscriber-server, and so the largest NOTIFY body the
/// proxy can deliver. Set explicitly: tonic's default of 4 MiB would end the whole session
/// (every subscription on it) for one user's large list.
pub const MAX_NOTIFICATION_BYTES: usize = 16 * 1024 * 1024;
/// Commands handed to the gRPC stream but not yet taken by it; the writer waits for room
/// here, the queue above absorbs the rest.
const STREAM_QUEUE: usize = 256;
/// On shutdown, how long the session may take to flush the last commands (the connections'
/// final Unsubscribes) and see the server close its side.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The connection's event queue. Boxed: a bounded channel allocates its first block of
    /// 32 slots up front, per connection, so its slot size is memory every idle connection
    /// holds (an `Event` is 136 bytes; a box, 8).
    pub events: mpsc::Sender<Box<Event>>,
    /// Cancelled when the connection cannot keep up.
    pub close: CancellationToken,
}

/// The proxy's one routing table: each subscription's server and connection. Connections
/// add and remove their subscriptions through [`Upstreams`]; a server's session reader
/// finds the connection here, and a command finds its server here.
#[derive(Debug, Default)]
pub struct Routes(Mutex<HashMap<SubscriptionId, Route>>);

#[derive(Debug, Clone)]
struct Route {
    /// Index of the server in [`Upstreams`].
    server: usize,
    conn: ConnectionHandle,
}

impl Routes {
    fn insert(&self, sub: SubscriptionId, server: usize, conn: ConnectionHandle) {
        lock(&self.0).insert(sub, Route { server, conn });
    }

    fn remove(&self, sub: &str) -> bool {
        lock(&self.0).remove(sub).is_some()
    }

    fn server_of(&self, sub: &str) -> Option<usize> {
        lock(&self.0).get(sub).map(|r| r.server)
    }

    fn connection_of(&self, sub: &str) -> Option<ConnectionHandle> {
        lock(&self.0).get(sub).map(|r| r.conn.clone())
    }

    /// The subscriptions held on `server`, with their connections.
    fn on_server(&self, server: usize) -> Vec<(SubscriptionId, ConnectionHandle)> {
        lock(&self.0)
            .iter()
            .filter(|(_, r)| r.server == server)
            .map(|(sub, r)| (sub.clone(), r.conn.clone()))
            .collect()
    }
}

/// One subscriber-server.
#[derive(Debug)]
pub struct Upstream {
    endpoint: String,
    /// Its index in [`Upstreams`] (and in [`Routes`]).
    index: usize,
    commands: mpsc::Sender<ProxyMessage>,
    routes: Arc<Routes>,
    connected: AtomicBool,
    metrics: Metrics,
    /// Cancelled to end the current session: a `Delivered` or `Unsubscribe` did not fit in
    /// the command queue. Each session installs a fresh token.
    end_session: Mutex<CancellationToken>,
}

impl Upstream {
    fn new(
        endpoint: String,
        index: usize,
        commands: mpsc::Sender<ProxyMessage>,
        routes: Arc<Routes>,
        metrics: Metrics,
    ) -> Self {
        Self {
            endpoint,
            index,
            commands,
            routes,
            connected: AtomicBool::new(false),
            metrics,
            end_session: Mutex::new(CancellationToken::new()),
        }
    }

    /// The server's endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether its session stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Routes `sub` to this server and its events to `conn` from now on.
    fn route(&self, sub: SubscriptionId, conn: ConnectionHandle) {
        self.routes.insert(sub, self.index, conn);
    }

    /// Sends a command without waiting. When the server is unreachable or its queue is full,
    /// a Subscribe or Refresh is answered `Unavailable` at once (the client gets 503). A
    /// `Delivered` or `Unsubscribe` that finds the queue full ends the session instead of
    /// being lost; with no session up there is nothing left for it to update.
    pub fn send(&self, command: Command) {
        let verdict_needed = match &command {
            Command::Subscribe { request_id, .. } | Command::Refresh { request_id, .. } => {
                Some(*request_id)
            }
            Command::Unsubscribe { .. } | Command::Delivered { .. } => None,
        };
        let sub = command.sub().to_owned();
        let result = if self.is_connected() {
            self.commands.try_send(convert::to_proto(command))
        } else {
            Err(mpsc::error::TrySendError::Closed(ProxyMessage::default()))
        };
        let Err(error) = result else {
            return;
        };
        self.metrics.upstream_unavailable.inc();
        match verdict_needed {
            Some(request_id) => {
                let answer = Event::Answer(Answer {
                    sub: sub.clone(),
                    request_id,
                    verdict: Verdict::Unavailable { retry_after: None },
                });
                deliver(&self.routes, &self.metrics, &sub, answer);
            }
            None if matches!(error, mpsc::error::TrySendError::Full(_)) => {
                let end = lock(&self.end_session);
                if end.is_cancelled() {
                    debug!(subscription.id = %sub, "command queue full; the session is ending");
                } else {
                    self.metrics.upstream_queue_overflows.inc();
                    warn!(endpoint = %self.endpoint, subscription.id = %sub, "command queue full: ending the session rather than losing a Delivered or Unsubscribe");
                    end.cancel();
                }
            }
            None => {}
        }
    }
}

/// All configured servers.
#[derive(Debug, Clone)]
pub struct Upstreams {
    servers: Arc<Vec<Arc<Upstream>>>,
    routes: Arc<Routes>,
    metrics: Metrics,
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
        let routes = Arc::new(Routes::default());
        let servers = endpoints
            .iter()
            .enumerate()
            .map(|(index, endpoint)| {
                let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
                let up = Arc::new(Upstream::new(
                    endpoint.clone(),
                    index,
                    tx,
                    routes.clone(),
                    metrics.clone(),
                ));
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
            routes,
            metrics: metrics.clone(),
        }
    }

    /// Routes a new subscription: to the server that owns `subscriber`, its events to
    /// `conn`. False when there is no server at all.
    pub fn route(&self, sub: SubscriptionId, subscriber: &str, conn: ConnectionHandle) -> bool {
        let Some(up) = self.pick(subscriber) else {
            return false;
        };
        up.route(sub, conn);
        self.metrics.dialogs.inc();
        true
    }

    /// Sends a command to the server of its subscription (see [`Upstream::send`]).
    pub fn send(&self, command: Command) {
        let server = self.routes.server_of(command.sub());
        match server.and_then(|i| self.servers.get(i)) {
            Some(up) => up.send(command),
            None => {
                debug!(subscription.id = %command.sub(), "command for a subscription with no route")
            }
        }
    }

    /// Stops routing `sub` (its dialog is gone).
    pub fn unroute(&self, sub: &str) {
        if self.routes.remove(sub) {
            self.metrics.dialogs.dec();
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
                    .tcp_nodelay(true)
                    // Windows above the largest NOTIFY body: a Notification never waits
                    // for a WINDOW_UPDATE (HTTP/2's default window is 64 KiB).
                    .initial_stream_window_size(4 * 1024 * 1024)
                    .initial_connection_window_size(16 * 1024 * 1024)
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
            )
            .max_decoding_message_size(MAX_NOTIFICATION_BYTES),
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
        let (stream_tx, stream_rx) = mpsc::channel(STREAM_QUEUE);
        let end = CancellationToken::new();
        *lock(&up.end_session) = end.clone();
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
        let ended = {
            // Two paths, polled side by side: neither waits for the other.
            let writer = write_commands(&mut commands, &stream_tx);
            let reader = read_events(&up, &mut inbound);
            tokio::select! {
                why = writer => why,
                why = reader => why,
                () = end.cancelled() => "command queue full",
                // Cancelled after the connections have drained: flush what they queued
                // (their final Unsubscribes) below, then end the session.
                () = shutdown.cancelled() => "proxy stopping",
            }
        };
        if ended == "proxy stopping" {
            flush(&mut commands, stream_tx, &mut inbound).await;
        }
        up.connected.store(false, Ordering::Relaxed);
        up.metrics.upstream_sessions.dec();
        warn!(endpoint = %up.endpoint, reason = ended, "server session down");
        // Commands still queued were meant for the session that is gone: requests get 503
        // while their routes still exist, the rest described state the server has dropped.
        drain_while_down(&up, &mut commands);
        lose_all(&up);
        if ended == "proxy stopping" || shutdown.is_cancelled() {
            return;
        }
    }
}

/// The session's send path: moves commands into the stream as fast as the server takes
/// them. Room in the stream is reserved before a command is taken off the queue, so a
/// cancelled writer never loses one.
async fn write_commands(
    commands: &mut mpsc::Receiver<ProxyMessage>,
    stream: &mpsc::Sender<ProxyMessage>,
) -> &'static str {
    loop {
        let Ok(permit) = stream.reserve().await else {
            return "stream closed";
        };
        let Some(cmd) = commands.recv().await else {
            return "proxy stopping";
        };
        permit.send(cmd);
    }
}

/// The session's receive path: hands every event to its connection without waiting.
async fn read_events(up: &Upstream, inbound: &mut tonic::Streaming<ServerMessage>) -> &'static str {
    loop {
        match inbound.message().await {
            Ok(Some(msg)) => {
                if let Some((sub, event)) = convert::from_proto(msg) {
                    deliver(&up.routes, &up.metrics, &sub, event);
                }
            }
            Ok(None) => return "server closed the session",
            Err(status) => {
                debug!(%status, "session error");
                return "session failed";
            }
        }
    }
}

/// Shutdown: sends what is still queued, closes our side and waits (bounded) for the
/// server to close its own, so the final Unsubscribes are read before the stream goes.
async fn flush(
    commands: &mut mpsc::Receiver<ProxyMessage>,
    stream: mpsc::Sender<ProxyMessage>,
    inbound: &mut tonic::Streaming<ServerMessage>,
) {
    let done = async {
        while let Ok(cmd) = commands.try_recv() {
            if stream.send(cmd).await.is_err() {
                return;
            }
        }
        drop(stream);
        while let Ok(Some(_)) = inbound.message().await {}
    };
    if tokio::time::timeout(FLUSH_TIMEOUT, done).await.is_err() {
        debug!("server did not take the last commands in time");
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
/// The routes stay until each dialog ends and unroutes itself.
fn lose_all(up: &Upstream) {
    for (sub, conn) in up.routes.on_server(up.index) {
        let note = Notification::terminated(sub.clone(), Reason::Deactivated);
        if conn
            .events
            .try_send(Box::new(Event::Notification(note)))
            .is_err()
        {
            conn.close.cancel();
        }
    }
}

/// Hands `event` to the connection holding `sub`; closes a connection that cannot keep up.
fn deliver(routes: &Routes, metrics: &Metrics, sub: &str, event: Event) {
    let Some(conn) = routes.connection_of(sub) else {
        debug!(subscription.id = %sub, "event for a subscription no longer here");
        return;
    };
    match conn.events.try_send(Box::new(event)) {
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
