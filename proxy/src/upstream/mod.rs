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
mod discovery;
pub mod ring;
#[cfg(test)]
mod tests;

use crate::metrics::{Metrics, ReattachLabel, ServerStateLabel};
use crate::notifier::{Answer, Command, Event, Notification, Reason, SubscriptionId, Verdict};
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use proto::v1::{ProxyMessage, ServerMessage};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
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

/// Identifies a server for as long as the proxy knows it (never reused).
pub type ServerId = usize;

/// Request ids of the proxy's own re-attach Subscribes: the dialogs count from 0, so the
/// top bit keeps the two apart, and an Answer with it set never reaches a dialog.
const REATTACH_REQUEST: u64 = 1 << 63;
/// `Retry-After` for a SUBSCRIBE or refresh whose server session broke before it answered.
const RETRY_AFTER_LOST: u32 = 1;
/// How often the balancer looks at the server set, and how long a server must have been
/// serving before subscriptions move to it (a flapping server does not pull users back and
/// forth).
const BALANCE_TICK: Duration = Duration::from_millis(250);
const SETTLE: Duration = Duration::from_secs(1);
/// How long a server must have said NOT_SERVING before its subscriptions move: longer than
/// the spread between servers noticing one database outage (two failed probes a second
/// apart, each up to 2 s), so that a shared outage is seen as one.
const OUT_HOLD: Duration = Duration::from_secs(3);
/// Subscriptions moved per tick at most, so that a new server is not flooded.
const MOVES_PER_TICK: usize = 1000;
/// How often subscriptions whose re-attach was refused (no server holds them) are retried.
const RETRY_DETACHED: Duration = Duration::from_secs(1);

/// The proxy's one routing table: each subscription's server and connection, and what the
/// proxy needs to move it to another server (re-attach). Connections add and remove their
/// subscriptions through [`Upstreams`]; a server's session reader finds the connection
/// here, and a command finds its server here.
#[derive(Debug, Default)]
pub struct Routes(
    Mutex<HashMap<SubscriptionId, Route>>,
    /// A subscription was detached since the balancer last looked.
    AtomicBool,
);

#[derive(Debug, Clone)]
struct Route {
    /// The server that holds the subscription now.
    server: ServerId,
    conn: ConnectionHandle,
    /// The initial Subscribe without its credentials: the template of a re-attach.
    subscribe: Option<Command>,
    /// Requests sent to `server` that it has not answered (Subscribe, Refresh).
    pending: Vec<u64>,
    /// The initial Subscribe was granted: the subscription can move.
    attached: bool,
    /// The identity the grant named, sent as the flow identity of a re-attach.
    identity: Option<String>,
    /// When the granted duration ends.
    expires_at: Option<Instant>,
    /// The highest Notification version any server sent for it: a re-attach resumes after it.
    last_version: Option<u64>,
    /// A terminated Notification came: the subscription is ending and stays put.
    ended: bool,
    /// The request id of our re-attach Subscribe while its Answer is awaited.
    reattach: Option<u64>,
    /// A re-attach was refused for a passing reason (the new server's database is down, it
    /// is overloaded): no server holds the subscription; the balancer tries again.
    detached: bool,
    /// It was re-attached at least once: when its dialog goes, the server holding it is
    /// told (the dialog may have said goodbye to the server it knew first).
    moved: bool,
}

impl Route {
    fn new(server: ServerId, conn: ConnectionHandle) -> Self {
        Self {
            server,
            conn,
            subscribe: None,
            pending: Vec::new(),
            attached: false,
            identity: None,
            expires_at: None,
            last_version: None,
            ended: false,
            reattach: None,
            detached: false,
            moved: false,
        }
    }

    /// Nothing is outstanding on its server: it can move without an answer going astray.
    fn idle(&self) -> bool {
        self.attached
            && !self.ended
            && !self.detached
            && self.pending.is_empty()
            && self.reattach.is_none()
            && self.last_version.is_some()
    }
}

impl Routes {
    fn insert(&self, sub: SubscriptionId, server: ServerId, conn: ConnectionHandle) {
        lock(&self.0).insert(sub, Route::new(server, conn));
    }

    /// Decides where a command from a dialog goes, and notes a request on its way (the
    /// Subscribe is kept as the template of a re-attach, without its credentials), under one
    /// lock so that a move cannot slip between the two. While no server holds the
    /// subscription for sure (a re-attach awaits its Answer, or was refused for now), a
    /// refresh is answered 503 and a `Delivered` is dropped: the new server knows nothing
    /// of the versions it would name.
    fn prepare(&self, command: &Command) -> Prepared {
        let mut routes = lock(&self.0);
        let Some(r) = routes.get_mut(command.sub()) else {
            return Prepared::NoRoute;
        };
        let moving = r.detached || r.reattach.is_some();
        match command {
            Command::Refresh { .. } | Command::Delivered { .. } if moving => {
                return if matches!(command, Command::Refresh { .. }) {
                    Prepared::Busy
                } else {
                    Prepared::Drop
                };
            }
            Command::Unsubscribe { .. } if r.detached => return Prepared::Drop,
            _ => {}
        }
        match command {
            Command::Subscribe { request_id, .. } => {
                r.pending.push(*request_id);
                let mut template = command.clone();
                if let Command::Subscribe {
                    credentials,
                    flow_identity,
                    ..
                } = &mut template
                {
                    *credentials = None;
                    *flow_identity = None;
                }
                r.subscribe = Some(template);
            }
            Command::Refresh { request_id, .. } => r.pending.push(*request_id),
            Command::Unsubscribe { .. } | Command::Delivered { .. } => {}
        }
        Prepared::Send(r.server)
    }

    /// Number of subscriptions on each server.
    fn count_on(&self, server: ServerId) -> usize {
        lock(&self.0)
            .values()
            .filter(|r| r.server == server)
            .count()
    }
}

/// Where a subscription being moved is, as the mover saw it.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// On this server, whose session is up.
    Live(&'a Upstream),
    /// On this server, whose session is gone.
    Lost(ServerId),
    /// On no server (a re-attach was refused for now).
    Detached,
}

/// Where [`Routes::prepare`] sends a command.
enum Prepared {
    /// To this server.
    Send(ServerId),
    /// Nowhere: answer a refresh 503.
    Busy,
    /// Nowhere, and nothing to answer.
    Drop,
    /// The subscription has no route.
    NoRoute,
}

/// One subscriber-server.
#[derive(Debug)]
pub struct Upstream {
    endpoint: String,
    /// Its id in [`Upstreams`] (and in [`Routes`]).
    id: ServerId,
    commands: mpsc::Sender<ProxyMessage>,
    routes: Arc<Routes>,
    connected: AtomicBool,
    /// Its gRPC health says SERVING (true until it says otherwise).
    serving: AtomicBool,
    /// Discovery no longer lists it: its subscriptions move away, then its session stops.
    removed: AtomicBool,
    /// Since when it has been connected and serving.
    eligible_since: Mutex<Option<Instant>>,
    /// Since when it has been connected but not serving.
    out_since: Mutex<Option<Instant>>,
    metrics: Metrics,
    /// Cancelled to end the current session: a `Delivered` or `Unsubscribe` did not fit in
    /// the command queue. Each session installs a fresh token.
    end_session: Mutex<CancellationToken>,
    /// Ends its session task for good (proxy stopping, or the server removed).
    stop: CancellationToken,
    /// Wakes the balancer when its state changes.
    changed: Arc<Notify>,
}

impl Upstream {
    fn new(
        endpoint: String,
        id: ServerId,
        commands: mpsc::Sender<ProxyMessage>,
        routes: Arc<Routes>,
        metrics: Metrics,
    ) -> Self {
        Self {
            endpoint,
            id,
            commands,
            routes,
            connected: AtomicBool::new(false),
            serving: AtomicBool::new(true),
            removed: AtomicBool::new(false),
            eligible_since: Mutex::new(None),
            out_since: Mutex::new(None),
            metrics,
            end_session: Mutex::new(CancellationToken::new()),
            stop: CancellationToken::new(),
            changed: Arc::new(Notify::new()),
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

    /// Whether new and moved subscriptions may go to it: its session is up, its health
    /// says SERVING, and discovery still lists it.
    pub fn is_eligible(&self) -> bool {
        self.is_connected()
            && self.serving.load(Ordering::Relaxed)
            && !self.removed.load(Ordering::Relaxed)
    }

    /// Eligible for at least [`SETTLE`]: the balancer moves subscriptions to it.
    fn is_settled(&self, now: Instant) -> bool {
        self.is_eligible()
            && lock(&self.eligible_since)
                .is_some_and(|since| now.saturating_duration_since(since) >= SETTLE)
    }

    /// Records a change of connected/serving state and wakes the balancer.
    fn state_changed(&self) {
        let mut since = lock(&self.eligible_since);
        match (self.is_eligible(), *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
        drop(since);
        let out = self.is_connected() && !self.serving.load(Ordering::Relaxed);
        let mut since = lock(&self.out_since);
        match (out, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, Some(_)) => *since = None,
            _ => {}
        }
        drop(since);
        self.changed.notify_one();
    }

    /// Routes `sub` to this server and its events to `conn` from now on.
    fn route(&self, sub: SubscriptionId, conn: ConnectionHandle) {
        self.routes.insert(sub, self.id, conn);
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
        let Err(full) = self.send_proto(convert::to_proto(command)) else {
            return;
        };
        self.metrics.upstream_unavailable.inc();
        match verdict_needed {
            Some(request_id) => {
                refuse(&self.routes, &self.metrics, &sub, request_id, None);
            }
            None if full => {
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

    /// Queues `msg` for the session; `Err(true)` when the queue is full, `Err(false)` when
    /// no session is up.
    fn send_proto(&self, msg: ProxyMessage) -> Result<(), bool> {
        if !self.is_connected() {
            return Err(false);
        }
        self.commands.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => true,
            mpsc::error::TrySendError::Closed(_) => false,
        })
    }
}

/// Where the proxy finds its servers besides the static `--server` list: DNS names that
/// resolve to many addresses (a Kubernetes headless Service) and a file of endpoints, both
/// read again every `interval`.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    /// `http://name:port` (or `https://`): every address `name` resolves to is a server.
    pub dns: Vec<String>,
    /// One endpoint URL per line; `#` starts a comment.
    pub file: Option<std::path::PathBuf>,
    /// How often both are read again.
    pub interval: Duration,
}

impl Discovery {
    /// True when anything beyond the static list is configured.
    pub fn is_dynamic(&self) -> bool {
        !self.dns.is_empty() || self.file.is_some()
    }
}

/// All known servers, the routing table and the balancer.
#[derive(Debug, Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    servers: RwLock<Vec<Arc<Upstream>>>,
    routes: Arc<Routes>,
    metrics: Metrics,
    security: Security,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    next_id: AtomicUsize,
    next_reattach: AtomicU64,
    /// Wakes the balancer: a server's state changed.
    changed: Arc<Notify>,
}

impl Upstreams {
    /// Starts one session task per endpoint (they reconnect until `shutdown`) and the
    /// balancer that moves subscriptions when servers come, go or stop serving.
    pub fn start(
        endpoints: &[String],
        security: &Security,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> Self {
        let inner = Arc::new(Inner {
            servers: RwLock::new(Vec::new()),
            routes: Arc::new(Routes::default()),
            metrics: metrics.clone(),
            security: security.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            next_id: AtomicUsize::new(0),
            next_reattach: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
        });
        for endpoint in endpoints {
            inner.add(endpoint.clone());
        }
        tracker.spawn(balance(inner.clone()));
        Self { inner }
    }

    /// Reads `discovery`'s sources once now and then every interval, adding and removing
    /// servers (the static `endpoints` given to [`Upstreams::start`] always stay).
    pub async fn discover(&self, statics: Vec<String>, discovery: Discovery) {
        let inner = self.inner.clone();
        let mut found = discovery::Found::default();
        discovery::sync(&inner, &statics, &discovery, &mut found).await;
        self.inner.tracker.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(discovery.interval) => {}
                    () = inner.shutdown.cancelled() => return,
                }
                discovery::sync(&inner, &statics, &discovery, &mut found).await;
            }
        });
    }

    /// Routes a new subscription: to the server that owns `subscriber`, its events to
    /// `conn`. False when there is no server at all.
    pub fn route(&self, sub: SubscriptionId, subscriber: &str, conn: ConnectionHandle) -> bool {
        let Some(up) = self.pick(subscriber) else {
            return false;
        };
        up.route(sub, conn);
        self.inner.metrics.dialogs.inc();
        true
    }

    /// Sends a command to the server of its subscription (see [`Upstream::send`]). While
    /// no server holds it (a re-attach waits for a retry) a refresh is answered 503 and the
    /// rest is dropped: no server has anything to update.
    pub fn send(&self, command: Command) {
        match self.inner.routes.prepare(&command) {
            Prepared::Send(id) => match self.inner.server(id) {
                Some(up) => up.send(command),
                None => {
                    debug!(subscription.id = %command.sub(), "command for a server no longer known")
                }
            },
            Prepared::Busy => {
                if let Command::Refresh {
                    sub, request_id, ..
                } = &command
                {
                    let retry = Some(RETRY_AFTER_LOST);
                    refuse(
                        &self.inner.routes,
                        &self.inner.metrics,
                        sub,
                        *request_id,
                        retry,
                    );
                }
            }
            Prepared::Drop => {}
            Prepared::NoRoute => {
                debug!(subscription.id = %command.sub(), "command for a subscription with no route")
            }
        }
    }

    /// Stops routing `sub` (its dialog is gone).
    pub fn unroute(&self, sub: &str) {
        let Some(route) = lock(&self.inner.routes.0).remove(sub) else {
            return;
        };
        self.inner.metrics.dialogs.dec();
        // The dialog's goodbye went to whichever server it last knew; a moved subscription
        // may be held by another, which must not keep it until it expires.
        if route.moved
            && !route.ended
            && !route.detached
            && let Some(up) = self.inner.server(route.server)
        {
            let _ = up.send_proto(convert::to_proto(Command::Unsubscribe {
                sub: sub.to_owned(),
            }));
        }
    }

    /// The server for `subscriber`: rendezvous hashing over the eligible servers (connected,
    /// serving, listed); else over the connected ones; else over all, so the request fails
    /// fast with 503.
    pub fn pick(&self, subscriber: &str) -> Option<Arc<Upstream>> {
        let servers = read(&self.inner.servers);
        let listed: Vec<&Arc<Upstream>> = servers
            .iter()
            .filter(|s| !s.removed.load(Ordering::Relaxed))
            .collect();
        let eligible: Vec<&Arc<Upstream>> =
            listed.iter().copied().filter(|s| s.is_eligible()).collect();
        let connected: Vec<&Arc<Upstream>> = listed
            .iter()
            .copied()
            .filter(|s| s.is_connected())
            .collect();
        let candidates = [eligible, connected, listed]
            .into_iter()
            .find(|c| !c.is_empty())
            .unwrap_or_default();
        ring::pick(subscriber, &candidates, |s| s.endpoint()).map(|s| (*s).clone())
    }

    /// True when at least one server session is up.
    pub fn any_connected(&self) -> bool {
        read(&self.inner.servers).iter().any(|s| s.is_connected())
    }

    /// The servers known now (tests and the admin view).
    pub fn servers(&self) -> Vec<Arc<Upstream>> {
        read(&self.inner.servers).clone()
    }
}

impl Inner {
    fn server(&self, id: ServerId) -> Option<Arc<Upstream>> {
        read(&self.servers).iter().find(|s| s.id == id).cloned()
    }

    /// Adds a server and starts its session task.
    fn add(self: &Arc<Self>, endpoint: String) -> Arc<Upstream> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut up = Upstream::new(endpoint, id, tx, self.routes.clone(), self.metrics.clone());
        up.stop = self.shutdown.child_token();
        up.changed = self.changed.clone();
        let up = Arc::new(up);
        write(&self.servers).push(up.clone());
        self.tracker.spawn(run_session(
            self.clone(),
            up.clone(),
            self.security.clone(),
            rx,
        ));
        info!(endpoint = %up.endpoint, "server added");
        up
    }

    /// The servers subscriptions may go to, as the balancer sees them (settled).
    fn settled(&self, now: Instant) -> Vec<Arc<Upstream>> {
        read(&self.servers)
            .iter()
            .filter(|s| s.is_settled(now))
            .cloned()
            .collect()
    }

    /// The session with `from` is gone. A SUBSCRIBE or refresh it had not answered gets
    /// 503 with `Retry-After`; every established subscription moves to the server that now
    /// owns its subscriber, resuming after the last version its client was sent; with no
    /// server to move to it ends with `terminated;reason=deactivated`, so its client
    /// re-subscribes at once (RFC 6665 §4.2.2).
    fn failover(&self, from: &Upstream) {
        let targets: Vec<Arc<Upstream>> = read(&self.servers)
            .iter()
            .filter(|s| s.id != from.id && s.is_eligible())
            .cloned()
            .collect();
        let candidates: Vec<&Arc<Upstream>> = targets.iter().collect();
        // Other servers are up but none serves (a database outage they all share): keep the
        // subscriptions, detached, until one serves again, rather than send every client
        // back to re-subscribe into the same outage.
        let wait = candidates.is_empty()
            && read(&self.servers)
                .iter()
                .any(|s| s.id != from.id && s.is_connected());
        let mut unanswered = Vec::new();
        let mut moves = Vec::new();
        let mut lost = Vec::new();
        {
            let mut routes = lock(&self.routes.0);
            for (sub, route) in routes.iter_mut().filter(|(_, r)| r.server == from.id) {
                let initial = match &route.subscribe {
                    Some(Command::Subscribe { request_id, .. }) => Some(*request_id),
                    _ => None,
                };
                let mut answered_initial = false;
                for request_id in route.pending.drain(..) {
                    answered_initial |= Some(request_id) == initial;
                    unanswered.push((sub.clone(), request_id));
                }
                route.reattach = None;
                if route.ended || answered_initial {
                    // Ending already, or its 503 ends it.
                    continue;
                }
                if !route.attached {
                    route.ended = true;
                    lost.push((sub.clone(), route.conn.clone()));
                    continue;
                }
                let subscriber = match &route.subscribe {
                    Some(Command::Subscribe { subscriber, .. }) => subscriber.as_str(),
                    _ => "",
                };
                match ring::pick(subscriber, &candidates, |s| s.endpoint()) {
                    Some(to) => moves.push((sub.clone(), (*to).clone())),
                    None if wait => {
                        route.detached = true;
                        self.routes.1.store(true, Ordering::Relaxed);
                    }
                    None => {
                        route.ended = true;
                        lost.push((sub.clone(), route.conn.clone()));
                    }
                }
            }
        }
        for (sub, request_id) in unanswered {
            refuse(
                &self.routes,
                &self.metrics,
                &sub,
                request_id,
                Some(RETRY_AFTER_LOST),
            );
        }
        let moved = moves.len();
        for (sub, to) in moves {
            if !self.reattach(&sub, &to, Source::Lost(from.id), "session_lost") {
                self.detach(&sub);
            }
        }
        if wait {
            warn!(endpoint = %from.endpoint, "session lost and no other server serving: its subscriptions wait for one");
            self.changed.notify_one();
        }
        if !lost.is_empty() {
            warn!(endpoint = %from.endpoint, subscriptions = lost.len(), "no other server is serving: ending the subscriptions of the lost session with deactivated");
        }
        for (sub, conn) in lost {
            self.metrics.reattach_failed.inc();
            terminate(&sub, &conn);
        }
        if moved > 0 {
            info!(endpoint = %from.endpoint, subscriptions = moved, "re-attached the subscriptions of a lost session");
        }
    }

    /// Moves `sub` to `to` with a re-attach Subscribe (the client's dialog does not notice:
    /// the new server's first Notification continues its versions), then drops it on the
    /// server that held it, if that one is still up. The route must still be as `source`
    /// says (the caller looked without the lock); if it is not, nothing is done. Everything
    /// happens under the routing table's lock, so no command of the dialog can reach the new
    /// server before the re-attach. False when `to` could not take it (nothing changed).
    fn reattach(&self, sub: &str, to: &Upstream, source: Source<'_>, reason: &'static str) -> bool {
        let request_id = REATTACH_REQUEST | self.next_reattach.fetch_add(1, Ordering::Relaxed);
        {
            let mut routes = lock(&self.routes.0);
            let Some(route) = routes.get_mut(sub) else {
                return true;
            };
            let still = match source {
                Source::Live(from) => route.server == from.id && route.idle(),
                Source::Lost(id) => {
                    route.server == id && route.attached && !route.ended && route.reattach.is_none()
                }
                Source::Detached => route.detached && !route.ended,
            };
            if !still {
                return true;
            }
            let Some(Command::Subscribe { .. }) = &route.subscribe else {
                return false;
            };
            let now = Instant::now();
            let remaining = route
                .expires_at
                .map(|at| at.saturating_duration_since(now).as_secs());
            if remaining == Some(0) {
                return false;
            }
            let mut command = route.subscribe.clone().unwrap_or(Command::Unsubscribe {
                sub: sub.to_owned(),
            });
            if let Command::Subscribe {
                request_id: id,
                expires,
                flow_identity,
                ..
            } = &mut command
            {
                *id = request_id;
                *expires = remaining.map(|r| u32::try_from(r).unwrap_or(u32::MAX));
                flow_identity.clone_from(&route.identity);
            }
            let mut msg = convert::to_proto(command);
            if let Some(proto::v1::proxy_message::Kind::Subscribe(s)) = &mut msg.kind {
                s.resume_version = route.last_version;
            }
            if to.send_proto(msg).is_err() {
                return false;
            }
            route.server = to.id;
            route.reattach = Some(request_id);
            route.detached = false;
            route.moved = true;
        }
        if let Source::Live(from) = source {
            from.send(Command::Unsubscribe {
                sub: sub.to_owned(),
            });
        }
        self.metrics
            .reattached
            .get_or_create(&ReattachLabel { reason })
            .inc();
        true
    }

    /// Leaves `sub` with no server; the balancer re-attaches it when one serves.
    fn detach(&self, sub: &str) {
        if let Some(r) = lock(&self.routes.0).get_mut(sub) {
            r.detached = true;
        }
        self.routes.1.store(true, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Ends `sub` with `deactivated` (its client re-subscribes).
    fn end(&self, sub: &str) {
        let conn = lock(&self.routes.0).get_mut(sub).and_then(|r| {
            (!r.ended).then(|| {
                r.ended = true;
                r.conn.clone()
            })
        });
        if let Some(conn) = conn {
            self.metrics.reattach_failed.inc();
            terminate(sub, &conn);
        }
    }

    /// One pass of the balancer: subscriptions whose owner (rendezvous hashing over the
    /// settled servers) is not the server holding them move there, at most
    /// [`MOVES_PER_TICK`] at a time. True when some could not move yet.
    fn rebalance(&self, now: Instant) -> bool {
        let settled = self.settled(now);
        let candidates: Vec<&Arc<Upstream>> = settled.iter().collect();
        if candidates.is_empty() {
            return false;
        }
        let eligible: HashSet<ServerId> = read(&self.servers)
            .iter()
            .filter(|s| s.is_eligible())
            .map(|s| s.id)
            .collect();
        let movable: HashSet<ServerId> = self.movable_out(now).into_iter().collect();
        let mut moves = Vec::new();
        let mut expired = Vec::new();
        let mut left = false;
        {
            let routes = lock(&self.routes.0);
            for (sub, route) in routes.iter() {
                let Some(Command::Subscribe { subscriber, .. }) = &route.subscribe else {
                    continue;
                };
                let Some(owner) = ring::pick(subscriber, &candidates, |s| s.endpoint()) else {
                    continue;
                };
                if route.detached && !route.ended {
                    if route.expires_at.is_some_and(|at| at <= now) {
                        expired.push(sub.clone());
                    } else if moves.len() >= MOVES_PER_TICK {
                        left = true;
                    } else {
                        moves.push((sub.clone(), None, (*owner).clone()));
                    }
                    continue;
                }
                if owner.id == route.server {
                    continue;
                }
                // Off a server that is not serving only once it has been out for a while,
                // and not while most servers are out (see `movable_out`); off a server whose
                // session is down never (the failover's business).
                if !eligible.contains(&route.server) && !movable.contains(&route.server) {
                    continue;
                }
                if !route.idle() || moves.len() >= MOVES_PER_TICK {
                    left |= !route.ended;
                    continue;
                }
                moves.push((sub.clone(), Some(route.server), (*owner).clone()));
            }
        }
        for sub in expired {
            self.end(&sub);
        }
        for (sub, from, to) in moves {
            let Some(from) = from else {
                // Detached: nobody holds it, nothing to drop anywhere.
                if !self.reattach(&sub, &to, Source::Detached, "retry") {
                    left = true;
                }
                continue;
            };
            let Some(from) = self.server(from) else {
                continue;
            };
            // A server whose session is down is the failover's business, not ours.
            if !from.is_connected() {
                continue;
            }
            let reason = if from.is_eligible() {
                "rebalance"
            } else {
                "not_serving"
            };
            if !self.reattach(&sub, &to, Source::Live(&from), reason) {
                left = true;
            }
        }
        left
    }

    /// Connected servers whose subscriptions the balancer may move away although nobody
    /// asked it to rebalance: those no longer listed, and those not serving for at least
    /// [`OUT_HOLD`] — unless more of the connected servers are out than serving, which looks
    /// like an outage they share (one database) and moving would only pile every
    /// subscription onto the last server to notice.
    fn movable_out(&self, now: Instant) -> Vec<ServerId> {
        let servers = read(&self.servers);
        let connected: Vec<&Arc<Upstream>> = servers.iter().filter(|s| s.is_connected()).collect();
        let out = connected
            .iter()
            .filter(|s| !s.serving.load(Ordering::Relaxed))
            .count();
        let shared_outage = out * 2 > connected.len();
        connected
            .iter()
            .filter(|s| {
                s.removed.load(Ordering::Relaxed)
                    || (!shared_outage
                        && !s.serving.load(Ordering::Relaxed)
                        && lock(&s.out_since)
                            .is_some_and(|t| now.saturating_duration_since(t) >= OUT_HOLD))
            })
            .map(|s| s.id)
            .collect()
    }

    /// Servers removed from discovery that hold nothing any more stop their sessions.
    fn retire(&self) {
        let mut servers = write(&self.servers);
        servers.retain(|s| {
            let gone = s.removed.load(Ordering::Relaxed) && self.routes.count_on(s.id) == 0;
            if gone {
                info!(endpoint = %s.endpoint, "server removed");
                s.stop.cancel();
            }
            !gone
        });
    }

    fn count_states(&self) {
        let (mut serving, mut not_serving, mut down) = (0, 0, 0);
        for s in read(&self.servers).iter() {
            if !s.is_connected() {
                down += 1;
            } else if s.is_eligible() {
                serving += 1;
            } else {
                not_serving += 1;
            }
        }
        for (state, n) in [
            ("serving", serving),
            ("not_serving", not_serving),
            ("down", down),
        ] {
            self.metrics
                .servers
                .get_or_create(&ServerStateLabel { state })
                .set(n);
        }
    }
}

/// The balancer: wakes when a server's state changes, and on a tick (a server settles,
/// moves left over), and moves subscriptions to their owners.
async fn balance(inner: Arc<Inner>) {
    let mut last: Vec<ServerId> = Vec::new();
    let mut left = false;
    let mut last_retry = Instant::now();
    loop {
        tokio::select! {
            () = inner.changed.notified() => {}
            () = tokio::time::sleep(BALANCE_TICK) => {}
            () = inner.shutdown.cancelled() => return,
        }
        let now = Instant::now();
        inner.count_states();
        let mut set: Vec<ServerId> = inner.settled(now).iter().map(|s| s.id).collect();
        set.push(ServerId::MAX);
        set.extend(inner.movable_out(now));
        // Detached subscriptions are retried at most once a second.
        let retry = now.saturating_duration_since(last_retry) >= RETRY_DETACHED
            && inner.routes.1.swap(false, Ordering::Relaxed);
        if retry {
            last_retry = now;
        }
        if set != last || left || retry {
            left = inner.rebalance(now);
            last = set;
        }
        inner.retire();
    }
}

/// Keeps a session stream to one server open, reconnecting with backoff, and watches its
/// gRPC health.
async fn run_session(
    inner: Arc<Inner>,
    up: Arc<Upstream>,
    security: Security,
    mut commands: mpsc::Receiver<ProxyMessage>,
) {
    let shutdown = up.stop.clone();
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
        let channel = match channel {
            Ok(ch) => ch,
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
        let mut client = SubscriptionServiceClient::with_interceptor(
            channel.clone(),
            SecretInterceptor(security.secret.clone()),
        )
        .max_decoding_message_size(MAX_NOTIFICATION_BYTES);
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
                drain_while_down(&up, &mut commands);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        up.serving.store(true, Ordering::Relaxed);
        up.connected.store(true, Ordering::Relaxed);
        up.state_changed();
        up.metrics.upstream_sessions.inc();
        info!(endpoint = %up.endpoint, "server session up");
        let ended = {
            // Three paths, polled side by side: none waits for another.
            let writer = write_commands(&mut commands, &stream_tx);
            let reader = read_events(&up, &mut inbound);
            let health = watch_health(&up, channel);
            tokio::select! {
                why = writer => why,
                why = reader => why,
                () = health => "health watch ended",
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
        up.state_changed();
        up.metrics.upstream_sessions.dec();
        warn!(endpoint = %up.endpoint, reason = ended, "server session down");
        // Commands still queued were meant for the session that is gone: requests get 503
        // while their routes still exist, the rest described state the server has dropped.
        drain_while_down(&up, &mut commands);
        if ended == "proxy stopping" || shutdown.is_cancelled() {
            return;
        }
        inner.failover(&up);
    }
}

/// Follows the server's gRPC health (`grpc.health.v1.Health/Watch` for the session
/// service): NOT_SERVING takes it out of the rendezvous set (its subscriptions move), SERVING
/// puts it back. A server without the health service counts as serving. A watch that breaks
/// while the session stays up is opened again (after a pause), so a later drain is seen.
/// Never returns: the session's own paths decide when it ends.
async fn watch_health(up: &Upstream, channel: tonic::transport::Channel) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(channel);
    loop {
        let request = HealthCheckRequest {
            service: SERVICE_NAME.to_owned(),
        };
        match client.watch(request).await {
            Ok(r) => {
                let mut stream = r.into_inner();
                while let Ok(Some(r)) = stream.message().await {
                    let serving = r.status == ServingStatus::Serving as i32;
                    if up.serving.swap(serving, Ordering::Relaxed) != serving {
                        if serving {
                            info!(endpoint = %up.endpoint, "server serving again");
                        } else {
                            warn!(endpoint = %up.endpoint, "server not serving (database unreachable or draining): moving its subscriptions");
                        }
                        up.state_changed();
                    }
                }
                debug!(endpoint = %up.endpoint, "health watch ended; watching again");
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                debug!(endpoint = %up.endpoint, "no health service; the session alone decides");
                return std::future::pending().await;
            }
            Err(status) => debug!(endpoint = %up.endpoint, %status, "health watch refused"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The gRPC service whose health the proxy follows.
const SERVICE_NAME: &str = "conflist.v1.SubscriptionService";

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
                    let notification = matches!(event, Event::Notification(_));
                    if deliver(&up.routes, &up.metrics, Some(up.id), &sub, event)
                        == Delivered::NoRoute
                        && notification
                    {
                        // Its dialog is gone but the server still holds it (a goodbye lost
                        // in a move): let it go rather than keep it until it expires.
                        up.send(Command::Unsubscribe { sub });
                    }
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
/// A re-attach still queued is the failover's to redo, not a dialog's to answer.
fn drain_while_down(up: &Upstream, commands: &mut mpsc::Receiver<ProxyMessage>) {
    while let Ok(msg) = commands.try_recv() {
        if let Some((sub, request_id)) = convert::request_of(&msg) {
            if request_id & REATTACH_REQUEST != 0 {
                continue;
            }
            refuse(&up.routes, &up.metrics, &sub, request_id, None);
        }
    }
}

/// Ends a subscription the proxy can no longer serve with `terminated;reason=deactivated`,
/// so its client re-subscribes at once (RFC 6665 §4.2.2). The route stays until the dialog
/// ends and unroutes itself.
fn terminate(sub: &str, conn: &ConnectionHandle) {
    let note = Notification::terminated(sub.to_owned(), Reason::Deactivated);
    if conn
        .events
        .try_send(Box::new(Event::Notification(note)))
        .is_err()
    {
        conn.close.cancel();
    }
}

/// Answers `request_id` of `sub` Unavailable (503, with `retry_after` as Retry-After) from
/// the proxy itself: no server will.
fn refuse(
    routes: &Routes,
    metrics: &Metrics,
    sub: &str,
    request_id: u64,
    retry_after: Option<u32>,
) {
    let answer = Event::Answer(Answer {
        sub: sub.to_owned(),
        request_id,
        verdict: Verdict::Unavailable { retry_after },
    });
    deliver(routes, metrics, None, sub, answer);
}

/// What [`deliver`] did with an event.
#[derive(Debug, PartialEq, Eq)]
enum Delivered {
    /// Handed on, kept (a re-attach's Answer), or dropped as stale.
    Done,
    /// No route: the subscription's dialog is gone.
    NoRoute,
}

/// Hands `event` (from server `from`, or made by the proxy when `None`) to the connection
/// holding `sub`, keeping the route's re-attach state; closes a connection that cannot keep
/// up. An event from a server that no longer holds the subscription is dropped (it moved),
/// and the Answer to a re-attach stays here. The hand-off happens under the table's lock,
/// so the events of one subscription reach its connection in the order the route allowed
/// them (never an old server's version after the new server's).
fn deliver(
    routes: &Routes,
    metrics: &Metrics,
    from: Option<ServerId>,
    sub: &str,
    event: Event,
) -> Delivered {
    let mut table = lock(&routes.0);
    let Some(route) = table.get_mut(sub) else {
        debug!(subscription.id = %sub, "event for a subscription no longer here");
        return Delivered::NoRoute;
    };
    if from.is_some_and(|id| id != route.server) {
        debug!(subscription.id = %sub, "event from the server the subscription moved away from");
        return Delivered::Done;
    }
    match &event {
        Event::Answer(a) if Some(a.request_id) == route.reattach => {
            route.reattach = None;
            match &a.verdict {
                Verdict::Ok { granted, .. } => {
                    route.expires_at =
                        Instant::now().checked_add(Duration::from_secs(u64::from(*granted)));
                }
                Verdict::Unavailable { .. } => {
                    // Its database is down or it is overloaded: nobody holds the
                    // subscription now; the balancer tries again (its client keeps its
                    // dialog and gets full state once a server takes it).
                    debug!(subscription.id = %sub, "re-attach refused for now; will retry");
                    route.detached = true;
                    routes.1.store(true, Ordering::Relaxed);
                }
                verdict => {
                    warn!(subscription.id = %sub, ?verdict, "the new server refused the re-attach: ending the subscription");
                    metrics.reattach_failed.inc();
                    route.ended = true;
                    terminate(sub, &route.conn);
                }
            }
            return Delivered::Done;
        }
        Event::Answer(a) if a.request_id & REATTACH_REQUEST != 0 => {
            debug!(subscription.id = %sub, "answer to an earlier re-attach; dropped");
            return Delivered::Done;
        }
        Event::Answer(a) => {
            route.pending.retain(|id| *id != a.request_id);
            if let Verdict::Ok { granted, identity } = &a.verdict {
                let initial = matches!(&route.subscribe, Some(Command::Subscribe { request_id, .. }) if *request_id == a.request_id);
                if initial {
                    route.attached = true;
                    route.identity.clone_from(identity);
                }
                route.expires_at =
                    Instant::now().checked_add(Duration::from_secs(u64::from(*granted)));
            }
        }
        Event::Notification(n) => {
            if from.is_some() {
                route.last_version =
                    Some(route.last_version.map_or(n.version, |v| v.max(n.version)));
            }
            if matches!(n.state, crate::notifier::State::Terminated(_)) {
                route.ended = true;
            }
        }
    }
    match route.conn.events.try_send(Box::new(event)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.slow_connections_closed.inc();
            warn!(subscription.id = %sub, "connection cannot keep up with its notifications; closing it");
            route.conn.close.cancel();
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
    Delivered::Done
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}
