//! The tonic `SubscriptionService`: one task per proxy session stream. This module converts
//! `conflist.v1` messages to the domain types of [`crate::subscription`] and [`crate::auth`]
//! and back; policy and state live there, SQL in [`crate::directory`].
//!
//! Sign-in (authentication on): a Subscribe with credentials is verified by
//! [`Authenticator`], one with only a `flow_identity` is trusted when the proxy hop is
//! authenticated (the proxy vouches for its flow; see [`Context::trust_flow_identity`]), one
//! with neither is challenged. The identity must then be the subscriber. A Refresh keeps
//! the identity bound at creation; credentials it carries are verified again, in order with
//! the other refreshes of that subscription, and credentials of another user are a failed
//! sign-in like a wrong password (401, counted, throttled).
//!
//! Reads never wait on writes: the session task hands what it sends to the stream with
//! `try_send`; when the proxy stops reading and the stream's queue is full, messages wait in
//! a bounded backlog while the task keeps reading. A backlog that makes no progress for
//! [`Context::stall_timeout`], or outgrows [`SESSION_BACKLOG`], ends that session (counted);
//! other sessions never wait for it.

use crate::admin::{self, SubscriptionInfo};
use crate::auth::{Authenticator, Credentials, Label, Outcome, Verdict, digest, loggable};
use crate::cache::{AttachError, Cache, SessionKey, SessionWake};
use crate::directory::DirectoryError;
use crate::metrics::{AuthLabel, Metrics};
use crate::subscription::{
    self, Delivered, NotifyPolicy, Plan, Policy, Registry, Rejection, SubscribeRequest,
    Subscription, Window,
};
use document::ConferenceList;
use proto::v1::{
    self, Answer, AnswerStatus, DeliveryOutcome, Notification, ProxyMessage, ServerMessage,
    SubscriptionState, TerminationReason, proxy_message, server_message,
    subscription_service_server::SubscriptionService,
};
use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

/// Outbound messages buffered per session in the stream's queue.
const SESSION_QUEUE: usize = 1024;
/// Outbound messages held beyond the stream's queue while the proxy is not reading, on top
/// of one per subscription of the session (each has at most one Notification in flight, so
/// a fan-out to every subscription of a session fits); one more ends the session at once.
pub const SESSION_BACKLOG: usize = 1024;
/// Refreshes of one subscription waiting behind one whose credentials are being verified;
/// more are answered 503 (an honest client has one refresh in flight).
const MAX_QUEUED_REFRESHES: usize = 8;
/// How long a fetch (`Expires: 0`) may take to send its state, in parts when large.
const FETCH_LIFETIME: Duration = Duration::from_secs(60);
/// Reason of the per-user subscription cap's 403.
const TOO_MANY: &str = "too many subscriptions for this user";

/// Shared by every session of one server instance.
#[derive(Debug)]
pub struct Context {
    /// Admission and expiry rules.
    pub policy: Policy,
    /// Per-user documents, shared by all sessions.
    pub cache: Arc<Cache>,
    /// Partial/full and rate-control policy.
    pub notify_policy: NotifyPolicy,
    /// The window of subscriptions that ask for none (`--window-*`).
    pub default_window: Window,
    /// Registered metrics.
    pub metrics: Metrics,
    /// Cancelled on shutdown: sessions terminate their subscriptions (reason=deactivated).
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Sign-in; `None` with `--auth off`.
    pub auth: Option<Authenticator>,
    /// Whether `Subscribe.flow_identity` is honoured: only when the proxy hop is
    /// authenticated (the shared secret or required client certificates). Otherwise any
    /// host that reaches the gRPC port could name any identity, so it is ignored and the
    /// request is challenged like one without credentials.
    pub trust_flow_identity: bool,
    /// Most live subscriptions per user on this instance (beyond: 403).
    pub max_subscriptions_per_user: usize,
    /// How long a session's outbound backlog may wait without progress (the proxy stopped
    /// reading) before the session ends (`--session-stall-timeout`).
    pub stall_timeout: Duration,
    /// The admin API's view of the sessions (see [`crate::admin`]).
    pub admin: Arc<admin::Hub>,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct SessionService {
    ctx: Arc<Context>,
}

impl SessionService {
    /// A service over `ctx`.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// The response stream of one session: its messages, then, when the session ended because
/// the proxy stopped reading, that status (seen by a proxy that reads again).
#[derive(Debug)]
pub struct Outgoing {
    rx: mpsc::Receiver<ServerMessage>,
    end: Option<oneshot::Receiver<Status>>,
}

impl tokio_stream::Stream for Outgoing {
    type Item = Result<ServerMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(m))),
            // The session is over (its sender dropped, after any end status was set).
            Poll::Ready(None) => {
                let status = self.end.take().and_then(|mut end| end.try_recv().ok());
                Poll::Ready(status.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[tonic::async_trait]
impl SubscriptionService for SessionService {
    type SessionStream = Outgoing;

    async fn session(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.ctx.shutdown.is_cancelled() {
            return Err(Status::unavailable("shutting down"));
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let (end_tx, end_rx) = oneshot::channel();
        let mut session = Session::new(self.ctx.clone(), tx);
        session.out.end = Some(end_tx);
        session.proxy = peer.clone();
        let span = info_span!("session", proxy.addr = %peer);
        self.ctx
            .tracker
            .spawn(session.run(request.into_inner()).instrument(span));
        Ok(Response::new(Outgoing {
            rx,
            end: Some(end_rx),
        }))
    }
}

/// How a new subscription's requester is identified.
#[derive(Debug)]
enum AuthStep {
    /// Authentication off: the From address (requester) must be the subscriber.
    Off,
    /// The proxy vouches for the flow's identity.
    Flow(String),
    /// Verify these credentials.
    Verify(Credentials),
}

/// What a spawned task of the session found.
#[derive(Debug)]
enum Done {
    /// An initial SUBSCRIBE was signed in, admitted and its document loaded (or not).
    Subscribe(Box<Admitted>),
    /// The credentials of a refresh were verified.
    Refresh(Box<Verified>),
}

/// A refresh whose credentials were verified.
#[derive(Debug)]
struct Verified {
    refresh: v1::Refresh,
    username: Option<String>,
    verdict: Result<Verdict, DirectoryError>,
}

/// An initial SUBSCRIBE after sign-in, admission and load.
#[derive(Debug)]
struct Admitted {
    id: String,
    subscriber: String,
    request_id: u64,
    first_version: u64,
    /// The part of the list asked for.
    window: Window,
    /// The largest body the client's transport carries.
    max_body_bytes: Option<usize>,
    /// The sign-in outcome and digest user name, when credentials were verified.
    auth: Option<(Label, Option<String>)>,
    outcome: Admission,
}

#[derive(Debug)]
enum Admission {
    /// Admitted; the cache holds the user for this session.
    Ready {
        granted: u32,
        identity: Option<String>,
    },
    /// Refused by policy (or the per-user cap).
    Rejected(Rejection),
    /// Not signed in: challenge or throttle.
    Auth(Outcome),
    /// The directory failed.
    Failed(DirectoryError),
}

/// Why the session must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The proxy went away (its side of the stream is closed).
    PeerGone,
    /// The proxy stopped reading: the backlog is full, or made no progress for the stall
    /// timeout.
    Stalled,
}

/// The session's send path. Never waits: a message goes into the stream's bounded queue, or,
/// while the proxy is not reading, into a bounded backlog that the session task moves on as
/// the stream makes room.
#[derive(Debug)]
struct Outbound {
    tx: mpsc::Sender<ServerMessage>,
    backlog: VecDeque<ServerMessage>,
    /// When the backlog last made progress (`None` while it is empty).
    stalled_since: Option<Instant>,
    /// Where to leave the status the stream ends with after a stall.
    end: Option<oneshot::Sender<Status>>,
}

impl Outbound {
    fn new(tx: mpsc::Sender<ServerMessage>) -> Self {
        Self {
            tx,
            backlog: VecDeque::new(),
            stalled_since: None,
            end: None,
        }
    }

    /// Queues `msg` behind everything sent before it; the backlog may hold
    /// [`SESSION_BACKLOG`] + `subscriptions` messages.
    fn send(&mut self, msg: ServerMessage, subscriptions: usize) -> Result<(), Stop> {
        if self.backlog.is_empty() {
            return match self.tx.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::PeerGone),
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.stalled_since = Some(Instant::now());
                    self.backlog.push_back(msg);
                    Ok(())
                }
            };
        }
        if self.backlog.len() >= SESSION_BACKLOG.saturating_add(subscriptions) {
            return Err(Stop::Stalled);
        }
        self.backlog.push_back(msg);
        Ok(())
    }

    /// Moves the backlog into the stream as far as it has room.
    fn flush(&mut self) -> Result<(), Stop> {
        let before = self.backlog.len();
        while let Some(msg) = self.backlog.pop_front() {
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(msg)) => {
                    self.backlog.push_front(msg);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::PeerGone),
            }
        }
        if self.backlog.is_empty() {
            self.stalled_since = None;
        } else if self.backlog.len() < before {
            self.stalled_since = Some(Instant::now());
        }
        Ok(())
    }

    /// Waits until the stream has room for the backlog (never, while it is empty).
    async fn room(&self) -> Result<(), Stop> {
        if self.backlog.is_empty() {
            return std::future::pending().await;
        }
        // The permit only proves there is room; `flush` takes it with `try_send` (this
        // session is the queue's only sender).
        self.tx
            .reserve()
            .await
            .map(drop)
            .map_err(|_| Stop::PeerGone)
    }
}

struct Session {
    ctx: Arc<Context>,
    out: Outbound,
    registry: Registry,
    /// Initial SUBSCRIBEs waiting for sign-in and their first document, by subscription id.
    pending: HashMap<String, u64>,
    /// Subscriptions with a refresh whose credentials are being verified, and the refreshes
    /// queued behind it (answered in order).
    verifying: HashMap<String, VecDeque<v1::Refresh>>,
    tasks: JoinSet<Done>,
    key: SessionKey,
    wake: Arc<SessionWake>,
    /// The proxy's address, as the admin API shows it.
    proxy: String,
    /// What the admin API shows beyond the registry, by subscription id (entries of ended
    /// subscriptions are pruned; the registry decides what is live).
    meta: HashMap<String, SubMeta>,
    /// Commands from the admin API, and this session's place in its hub.
    admin: (admin::Registration, mpsc::Receiver<admin::Command>),
}

/// Per-subscription facts for the admin API.
#[derive(Debug, Clone, Copy)]
struct SubMeta {
    since: u64,
    version: Option<u64>,
    delivered: Option<u64>,
}

impl Session {
    fn new(ctx: Arc<Context>, out: mpsc::Sender<ServerMessage>) -> Self {
        ctx.metrics.sessions.inc();
        let (key, wake) = ctx.cache.register_session();
        let admin = ctx.admin.register();
        Self {
            ctx,
            out: Outbound::new(out),
            registry: Registry::default(),
            pending: HashMap::new(),
            verifying: HashMap::new(),
            tasks: JoinSet::new(),
            key,
            wake,
            proxy: "unknown".to_owned(),
            meta: HashMap::new(),
            admin,
        }
    }

    async fn run(mut self, mut inbound: Streaming<ProxyMessage>) {
        info!("proxy session opened");
        let shutdown = self.ctx.shutdown.clone();
        let wake = self.wake.clone();
        let stall_timeout = self.ctx.stall_timeout;
        let outcome = loop {
            let deadline = self.registry.next_deadline();
            let stalled_at = self.out.stalled_since.map(|t| t + stall_timeout);
            let step = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => self.on_message(msg).await,
                    Ok(None) => break "proxy closed the session",
                    Err(status) => {
                        debug!(%status, "session stream failed");
                        break "session stream failed";
                    }
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(done) => self.on_done(done).await,
                    Err(e) => {
                        warn!(error = %e, "session task failed");
                        Ok(())
                    }
                },
                () = wake.changed() => self.on_users_changed().await,
                Some(cmd) = self.admin.1.recv() => self.on_admin(cmd).await,
                () = sleep_until_opt(deadline) => self.on_deadline().await,
                room = self.out.room() => room.and_then(|()| self.out.flush()),
                () = sleep_until_opt(stalled_at) => Err(Stop::Stalled),
                () = shutdown.cancelled() => {
                    self.deactivate_all().await;
                    break "server shutting down";
                }
            };
            match step {
                Ok(()) => {}
                Err(Stop::PeerGone) => break "proxy went away",
                Err(Stop::Stalled) => {
                    self.ctx.metrics.sessions_stalled.inc();
                    if let Some(end) = self.out.end.take() {
                        let _ = end.send(Status::unavailable(
                            "session ended: the proxy stopped reading",
                        ));
                    }
                    warn!(
                        backlog = self.out.backlog.len(),
                        stall_timeout = ?stall_timeout,
                        "proxy stopped reading; ending its session"
                    );
                    break "proxy stopped reading";
                }
            }
        };
        let dropped = self.registry.drain().len();
        self.ctx.metrics.subscriptions.dec_by(dropped as i64);
        self.ctx.metrics.sessions.dec();
        self.ctx.cache.unregister_session(self.key);
        info!(reason = outcome, dropped, "proxy session closed");
    }

    async fn on_done(&mut self, done: Done) -> Result<(), Stop> {
        match done {
            Done::Subscribe(admitted) => self.on_admitted(*admitted).await,
            Done::Refresh(v) => {
                let Verified {
                    refresh,
                    username,
                    verdict,
                } = *v;
                self.on_refresh_verified(refresh, username, verdict).await
            }
        }
    }

    async fn on_message(&mut self, msg: ProxyMessage) -> Result<(), Stop> {
        match msg.kind {
            Some(proxy_message::Kind::Subscribe(s)) => self.on_subscribe(s).await,
            Some(proxy_message::Kind::Refresh(r)) => self.on_refresh(r).await,
            Some(proxy_message::Kind::Unsubscribe(u)) => {
                self.pending.remove(&u.subscription_id);
                self.drop_sub(&u.subscription_id);
                Ok(())
            }
            Some(proxy_message::Kind::Delivered(d)) => {
                let outcome = DeliveryOutcome::try_from(d.outcome).unwrap_or_default();
                if outcome == DeliveryOutcome::Accepted {
                    let delivered = self
                        .registry
                        .get_mut(&d.subscription_id)
                        .map(|sub| (sub.delivered(d.version), sub.in_flight));
                    if let Some((Delivered::Current { .. }, _)) = delivered
                        && let Some(meta) = self.meta.get_mut(&d.subscription_id)
                    {
                        meta.delivered = Some(d.version);
                    }
                    match delivered {
                        Some((Delivered::Current { follow_up: true }, _)) => {
                            return self.send_state(&d.subscription_id, false).await;
                        }
                        Some((Delivered::Stale, in_flight)) => debug!(
                            subscription.id = %d.subscription_id,
                            version = d.version,
                            ?in_flight,
                            "Delivered for a notification not in flight; ignored"
                        ),
                        Some((Delivered::Current { follow_up: false }, _)) | None => {}
                    }
                } else if self.drop_sub(&d.subscription_id) {
                    // Whatever version it answers, the proxy has ended the dialog.
                    debug!(subscription.id = %d.subscription_id, ?outcome, "subscriber refused a notification; dropped");
                }
                Ok(())
            }
            None => {
                debug!("empty proxy message ignored");
                Ok(())
            }
        }
    }

    async fn on_subscribe(&mut self, s: v1::Subscribe) -> Result<(), Stop> {
        let id = s.subscription_id.clone();
        if id.is_empty() || self.registry.contains(&id) || self.pending.contains_key(&id) {
            warn!(subscription.id = %id, "duplicate or empty subscription id");
            return self
                .send_answer(
                    &id,
                    s.request_id,
                    AnswerStatus::InternalError,
                    0,
                    0,
                    "duplicate subscription id",
                )
                .await;
        }
        let req = SubscribeRequest {
            subscriber: s.subscriber_uri,
            requester: s.requester_uri,
            event: s.event,
            accept: s.accept,
            expires: s.expires,
            window: window_from_proto(s.window.as_ref()),
        };
        let step = match (&self.ctx.auth, credentials_from_proto(s.credentials)) {
            (None, _) => AuthStep::Off,
            (Some(_), Some(creds)) => AuthStep::Verify(creds),
            // The flow vouches only for its own user: a SUBSCRIBE for another list on the
            // same connection (a gateway multiplexing users) is challenged, not refused.
            (Some(_), None)
                if !s.flow_identity.is_empty()
                    && self.ctx.trust_flow_identity
                    && subscription::same_aor(&s.flow_identity, &req.subscriber) =>
            {
                AuthStep::Flow(s.flow_identity)
            }
            (Some(a), None) => {
                if !s.flow_identity.is_empty() {
                    debug!(
                        subscription.id = %id,
                        "flow identity ignored: the proxy hop is not authenticated"
                    );
                }
                let verdict = a.no_credentials();
                self.count_auth(verdict.label);
                debug!(
                    subscription.id = %id,
                    subscriber = %req.subscriber,
                    auth.outcome = verdict.label.as_str(),
                    "no credentials: challenged"
                );
                return self
                    .send_auth_answer(&id, s.request_id, &verdict.outcome)
                    .await;
            }
        };
        self.pending.insert(id.clone(), s.request_id);
        let first_version = s.resume_version.map_or(0, |v| v.saturating_add(1));
        let window = req.window;
        let max_body_bytes = s
            .max_body_bytes
            .filter(|m| *m > 0)
            .and_then(|m| usize::try_from(m).ok());
        let task = admit(self.ctx.clone(), self.key, req, step, s.client_address);
        let request_id = s.request_id;
        self.tasks.spawn(async move {
            let (subscriber, auth, outcome) = task.await;
            Done::Subscribe(Box::new(Admitted {
                id,
                subscriber,
                request_id,
                first_version,
                window,
                max_body_bytes,
                auth,
                outcome,
            }))
        });
        Ok(())
    }

    async fn on_refresh(&mut self, r: v1::Refresh) -> Result<(), Stop> {
        if let Some(queue) = self.verifying.get_mut(&r.subscription_id) {
            if queue.len() >= MAX_QUEUED_REFRESHES {
                let id = r.subscription_id;
                return self
                    .reject(&id, r.request_id, &Rejection::Unavailable)
                    .await;
            }
            queue.push_back(r);
            return Ok(());
        }
        self.start_refresh(r).await
    }

    /// A refresh with credentials is verified in a task (the subscription's later refreshes
    /// queue behind it); one without is applied at once.
    async fn start_refresh(&mut self, mut r: v1::Refresh) -> Result<(), Stop> {
        let creds = if self.ctx.auth.is_some() && self.registry.contains(&r.subscription_id) {
            credentials_from_proto(r.credentials.take())
        } else {
            None
        };
        let Some(creds) = creds else {
            return self.apply_refresh(r).await;
        };
        self.verifying.entry(r.subscription_id.clone()).or_default();
        let ctx = self.ctx.clone();
        let username = digest_username(&creds);
        let bound = self
            .registry
            .get(&r.subscription_id)
            .and_then(|s| s.identity.clone());
        let client_address = r.client_address.clone();
        self.tasks.spawn(async move {
            let now = unix_now();
            let verdict = match ctx.auth.as_ref() {
                Some(a) => a
                    .authenticate(&creds, &client_address, now, ctx.cache.directory())
                    .await
                    .map(|v| match &bound {
                        Some(bound) => a.require_identity(v, bound, &creds, &client_address, now),
                        None => v,
                    }),
                None => Ok(Verdict {
                    outcome: Outcome::Challenge { stale: false },
                    label: Label::Failed,
                }),
            };
            Done::Refresh(Box::new(Verified {
                refresh: r,
                username,
                verdict,
            }))
        });
        Ok(())
    }

    async fn on_refresh_verified(
        &mut self,
        r: v1::Refresh,
        username: Option<String>,
        verdict: Result<Verdict, DirectoryError>,
    ) -> Result<(), Stop> {
        let id = r.subscription_id.clone();
        match verdict {
            Err(e) => {
                self.ctx.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "credentials lookup failed");
                self.reject(&id, r.request_id, &Rejection::Unavailable)
                    .await?;
            }
            Ok(v) => {
                self.count_auth(v.label);
                let subscriber = self.registry.get(&id).map(|s| s.subscriber.clone());
                info!(
                    subscription.id = %id,
                    subscriber = subscriber.as_deref().unwrap_or(""),
                    username = username.as_deref().unwrap_or(""),
                    auth.outcome = v.label.as_str(),
                    "refresh sign-in"
                );
                match v.outcome {
                    // The verifying task already held the identity to the bound one.
                    Outcome::Authenticated { .. } => self.apply_refresh(r).await?,
                    other => self.send_auth_answer(&id, r.request_id, &other).await?,
                }
            }
        }
        self.drain_refreshes(&id).await
    }

    /// Applies the refreshes queued behind a verified one, up to the next that needs
    /// verifying.
    async fn drain_refreshes(&mut self, id: &str) -> Result<(), Stop> {
        loop {
            let Some(queue) = self.verifying.get_mut(id) else {
                return Ok(());
            };
            let Some(next) = queue.pop_front() else {
                self.verifying.remove(id);
                return Ok(());
            };
            let needs_verifying = self.ctx.auth.is_some()
                && self.registry.contains(id)
                && next.credentials.as_ref().is_some_and(|c| c.kind.is_some());
            if needs_verifying {
                return self.start_refresh(next).await;
            }
            self.apply_refresh(next).await?;
        }
    }

    /// A refresh whose credentials (if any) are settled: new expiry, or the end.
    async fn apply_refresh(&mut self, r: v1::Refresh) -> Result<(), Stop> {
        let id = r.subscription_id;
        let Some(identity) = self.registry.get(&id).map(|s| s.identity.clone()) else {
            return self
                .reject(&id, r.request_id, &Rejection::NoSuchSubscription)
                .await;
        };
        let granted = match self.ctx.policy.grant(r.expires) {
            Ok(g) => g,
            Err(rejection) => return self.reject(&id, r.request_id, &rejection).await,
        };
        self.send(server_message::Kind::Answer(self.answer(
            &id,
            r.request_id,
            AnswerStatus::Ok,
            Answer {
                granted_expires: granted,
                identity: identity.unwrap_or_default(),
                ..Answer::default()
            },
        )))
        .await?;
        if granted == 0 {
            // Unsubscribe (RFC 6665 §4.1.2.3): the final NOTIFY ends the subscription.
            if let Some(mut sub) = self.registry.remove(&id) {
                self.released(&sub.subscriber);
                return self
                    .terminate(&id, &mut sub, TerminationReason::Timeout)
                    .await;
            }
            return Ok(());
        }
        self.registry
            .refresh(&id, Instant::now(), Duration::from_secs(granted.into()));
        // RFC 6665 §4.2.1.2: every refresh is answered by a NOTIFY (an empty partial when
        // the client is current).
        self.send_state(&id, true).await
    }

    async fn on_admitted(&mut self, admitted: Admitted) -> Result<(), Stop> {
        let Admitted {
            id,
            subscriber,
            request_id,
            first_version,
            window,
            max_body_bytes,
            auth,
            outcome,
        } = admitted;
        let still_wanted = self.pending.remove(&id).is_some();
        if let Some((label, username)) = &auth {
            self.count_auth(*label);
            info!(
                subscription.id = %id,
                %subscriber,
                username = username.as_deref().unwrap_or(""),
                auth.outcome = label.as_str(),
                "sign-in"
            );
        }
        let (granted, identity) = match outcome {
            Admission::Ready { granted, identity } => (granted, identity),
            Admission::Failed(e) => {
                self.ctx.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "directory read failed");
                if !still_wanted {
                    return Ok(());
                }
                return self.reject(&id, request_id, &Rejection::Unavailable).await;
            }
            _ if !still_wanted => return Ok(()),
            Admission::Rejected(r) => return self.reject(&id, request_id, &r).await,
            Admission::Auth(outcome) => {
                return self.send_auth_answer(&id, request_id, &outcome).await;
            }
        };
        if !still_wanted {
            self.ctx.cache.detach(self.key, &subscriber); // unsubscribed while loading
            return Ok(());
        }
        let now = Instant::now();
        self.send(server_message::Kind::Answer(self.answer(
            &id,
            request_id,
            AnswerStatus::Ok,
            Answer {
                granted_expires: granted,
                identity: identity.clone().unwrap_or_default(),
                ..Answer::default()
            },
        )))
        .await?;
        info!(subscription.id = %id, %subscriber, granted, "subscription accepted");
        // A fetch (RFC 6665 §4.4.3) lives only until its state has gone out, which takes
        // more than one NOTIFY for a large list: it ends with the last part, or at
        // FETCH_LIFETIME.
        let fetch = granted == 0;
        let lifetime = if fetch {
            FETCH_LIFETIME
        } else {
            Duration::from_secs(granted.into())
        };
        let mut sub = Subscription::new(subscriber.clone(), now + lifetime, first_version)
            .with_identity(identity)
            .with_window(window.or(self.ctx.default_window))
            .with_max_body_bytes(max_body_bytes);
        sub.fetch = fetch;
        self.registry.insert(id.clone(), sub);
        if self.meta.len() > 2 * self.registry.len() + 64 {
            let registry = &self.registry;
            self.meta.retain(|id, _| registry.contains(id));
        }
        self.meta.insert(
            id.clone(),
            SubMeta {
                since: unix_now(),
                version: None,
                delivered: None,
            },
        );
        self.ctx.metrics.subscriptions.inc();
        self.send_state(&id, true).await
    }

    /// A command of the admin API; answers it (a requester that gave up is ignored).
    async fn on_admin(&mut self, cmd: admin::Command) -> Result<(), Stop> {
        let registry = &self.registry;
        self.meta.retain(|id, _| registry.contains(id));
        match cmd {
            admin::Command::List { user, reply } => {
                let now = Instant::now();
                let list = self
                    .meta
                    .iter()
                    .filter_map(|(id, meta)| {
                        let sub = self.registry.get(id)?;
                        if user
                            .as_deref()
                            .is_some_and(|u| !subscription::same_aor(u, &sub.subscriber))
                        {
                            return None;
                        }
                        Some(SubscriptionInfo {
                            id: id.clone(),
                            user: sub.subscriber.clone(),
                            proxy: self.proxy.clone(),
                            since: meta.since,
                            expires: sub.remaining_secs(now),
                            version: meta.version,
                            last_delivered: meta.delivered,
                        })
                    })
                    .collect();
                let _ = reply.send(list);
                Ok(())
            }
            admin::Command::Resend { user, reply } => {
                let ids: Vec<String> = self
                    .meta
                    .keys()
                    .filter(|id| {
                        self.registry
                            .get(id)
                            .is_some_and(|s| subscription::same_aor(&user, &s.subscriber))
                    })
                    .cloned()
                    .collect();
                for id in &ids {
                    if let Some(sub) = self.registry.get_mut(id) {
                        // Forget what the client holds: the next Notification is full state
                        // (after the one in flight, if any).
                        sub.forget_sent();
                    }
                }
                let _ = reply.send(ids.len());
                info!(subscriber = %user, subscriptions = ids.len(), "admin: full resend");
                for id in &ids {
                    self.send_state(id, true).await?;
                }
                Ok(())
            }
        }
    }

    /// Users whose lists changed: each of their subscriptions gets the new state (subject
    /// to flow and rate control).
    async fn on_users_changed(&mut self) -> Result<(), Stop> {
        for user in self.wake.take() {
            for id in self.registry.subs_of(&user) {
                self.send_state(&id, false).await?;
            }
        }
        Ok(())
    }

    async fn on_deadline(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        for (id, mut sub) in self.registry.take_expired(now) {
            self.ctx.metrics.subscriptions.dec();
            self.ctx.cache.detach(self.key, &sub.subscriber);
            info!(subscription.id = %id, subscriber = %sub.subscriber, "subscription expired");
            self.terminate(&id, &mut sub, TerminationReason::Timeout)
                .await?;
        }
        for id in self.registry.take_due_sends(now) {
            self.send_state(&id, false).await?;
        }
        Ok(())
    }

    /// Sends what `id`'s client should now see, if anything (see [`subscription::plan`]).
    async fn send_state(&mut self, id: &str, owed: bool) -> Result<(), Stop> {
        let now = Instant::now();
        let wall = chrono::Utc::now();
        let Some(user) = self.registry.get(id).map(|s| s.subscriber.clone()) else {
            return Ok(());
        };
        let Some(latest) = self.ctx.cache.current(&user) else {
            return Ok(());
        };
        let Some(sub) = self.registry.get_mut(id) else {
            return Ok(());
        };
        let mut policy = self.ctx.notify_policy;
        if let Some(max) = sub.max_body_bytes {
            policy.max_body_bytes = policy.max_body_bytes.min(max);
        }
        let expires = sub.remaining_secs(now);
        let plan = subscription::plan(sub, &latest.conferences, now, wall, owed, policy);
        let fetch = sub.fetch;
        // Time alone can change what a windowed subscription shows: look again then.
        if let Some(review) = sub.review_at() {
            let wait = (review - wall).to_std().unwrap_or_default();
            self.registry.schedule_send(id, now + wait);
        }
        match plan {
            Plan::Nothing => Ok(()),
            Plan::Defer(at) => {
                self.registry.schedule_send(id, at);
                Ok(())
            }
            Plan::Send(doc) if fetch && doc.complete => {
                // The last part of a fetch ends it.
                let version = doc.version;
                if self.drop_sub(id) {
                    info!(subscription.id = %id, "fetch answered");
                }
                self.send_notification(
                    id,
                    version,
                    SubscriptionState::Terminated,
                    TerminationReason::Timeout,
                    0,
                    Some(doc),
                )
                .await
            }
            Plan::Send(doc) => {
                let version = doc.version;
                self.send_notification(
                    id,
                    version,
                    SubscriptionState::Active,
                    TerminationReason::Unspecified,
                    expires,
                    Some(doc),
                )
                .await
            }
        }
    }

    /// Removes a live subscription; true if it was live.
    fn drop_sub(&mut self, id: &str) -> bool {
        match self.registry.remove(id) {
            Some(sub) => {
                self.released(&sub.subscriber);
                true
            }
            None => false,
        }
    }

    fn released(&self, subscriber: &str) {
        self.ctx.metrics.subscriptions.dec();
        self.ctx.cache.detach(self.key, subscriber);
    }

    async fn deactivate_all(&mut self) {
        for (id, request_id) in std::mem::take(&mut self.pending) {
            let _ = self.reject(&id, request_id, &Rejection::Unavailable).await;
        }
        for (id, mut sub) in self.registry.drain() {
            self.ctx.metrics.subscriptions.dec();
            if self
                .terminate(&id, &mut sub, TerminationReason::Deactivated)
                .await
                .is_err()
            {
                break;
            }
        }
        // The last words must reach the proxy: give it up to the stall timeout to take what
        // is still in the backlog.
        let give_up = Instant::now() + self.ctx.stall_timeout;
        while !self.out.backlog.is_empty() {
            let moved = tokio::select! {
                room = self.out.room() => room.and_then(|()| self.out.flush()),
                () = tokio::time::sleep_until(give_up) => Err(Stop::Stalled),
            };
            if moved.is_err() {
                break;
            }
        }
    }

    async fn terminate(
        &mut self,
        id: &str,
        sub: &mut Subscription,
        reason: TerminationReason,
    ) -> Result<(), Stop> {
        let version = sub.take_version();
        self.send_notification(id, version, SubscriptionState::Terminated, reason, 0, None)
            .await
    }

    async fn send_notification(
        &mut self,
        id: &str,
        version: u64,
        state: SubscriptionState,
        reason: TerminationReason,
        expires: u32,
        doc: Option<ConferenceList>,
    ) -> Result<(), Stop> {
        let (content_type, body) = match doc {
            Some(d) => (document::CONTENT_TYPE.to_owned(), d.render()),
            None => (String::new(), Vec::new()),
        };
        self.ctx.metrics.notifications.inc();
        self.ctx
            .metrics
            .notification_bytes
            .inc_by(body.len() as u64);
        debug!(subscription.id = %id, version, ?state, ?reason, bytes = body.len(), "notification");
        if let Some(meta) = self.meta.get_mut(id) {
            meta.version = Some(version);
        }
        self.send(server_message::Kind::Notification(Notification {
            subscription_id: id.to_owned(),
            version,
            state: state.into(),
            reason: reason.into(),
            expires,
            content_type,
            body,
        }))
        .await
    }

    async fn reject(&mut self, id: &str, request_id: u64, r: &Rejection) -> Result<(), Stop> {
        let (status, min) = match r {
            Rejection::BadEvent => (AnswerStatus::BadEvent, 0),
            Rejection::NotAcceptable => (AnswerStatus::NotAcceptable, 0),
            Rejection::Forbidden(_) => (AnswerStatus::Forbidden, 0),
            Rejection::NotFound => (AnswerStatus::NotFound, 0),
            Rejection::IntervalTooBrief { min } => (AnswerStatus::IntervalTooBrief, *min),
            Rejection::NoSuchSubscription => (AnswerStatus::NoSuchSubscription, 0),
            Rejection::Unavailable => (AnswerStatus::Unavailable, 0),
        };
        debug!(subscription.id = %id, rejection = %r, "request rejected");
        self.send_answer(id, request_id, status, 0, min, &r.to_string())
            .await
    }

    async fn send_answer(
        &mut self,
        id: &str,
        request_id: u64,
        status: AnswerStatus,
        granted_expires: u32,
        min_expires: u32,
        reason: &str,
    ) -> Result<(), Stop> {
        let answer = self.answer(
            id,
            request_id,
            status,
            Answer {
                granted_expires,
                min_expires,
                reason: reason.to_owned(),
                ..Answer::default()
            },
        );
        self.send(server_message::Kind::Answer(answer)).await
    }

    /// `fields` with the id, request id and status filled in; counted by status.
    fn answer(&self, id: &str, request_id: u64, status: AnswerStatus, fields: Answer) -> Answer {
        self.ctx
            .metrics
            .answers
            .get_or_create(&crate::metrics::StatusLabel::new(status))
            .inc();
        Answer {
            subscription_id: id.to_owned(),
            request_id,
            status: status.into(),
            ..fields
        }
    }

    /// The answer to a request that did not sign in: 401 with a fresh challenge, or 503
    /// with Retry-After when throttled.
    async fn send_auth_answer(
        &mut self,
        id: &str,
        request_id: u64,
        outcome: &Outcome,
    ) -> Result<(), Stop> {
        let answer = match (outcome, &self.ctx.auth) {
            (Outcome::Challenge { stale }, Some(a)) => {
                let c = a.challenge(*stale, unix_now());
                self.answer(
                    id,
                    request_id,
                    AnswerStatus::Unauthorized,
                    Answer {
                        challenge: Some(v1::Challenge {
                            realm: c.realm,
                            nonce: c.nonce,
                            opaque: c.opaque,
                            algorithms: c.algorithms.iter().map(|a| (*a).to_owned()).collect(),
                            stale: c.stale,
                        }),
                        reason: "authentication required".into(),
                        ..Answer::default()
                    },
                )
            }
            (Outcome::Throttled { retry_after }, _) => self.answer(
                id,
                request_id,
                AnswerStatus::Unavailable,
                Answer {
                    retry_after: *retry_after,
                    reason: "too many failed sign-ins".into(),
                    ..Answer::default()
                },
            ),
            // Not reached: only failures are answered here, and only with auth on.
            _ => self.answer(
                id,
                request_id,
                AnswerStatus::InternalError,
                Answer::default(),
            ),
        };
        self.send(server_message::Kind::Answer(answer)).await
    }

    fn count_auth(&self, label: Label) {
        self.ctx
            .metrics
            .auth
            .get_or_create(&AuthLabel::new(label))
            .inc();
    }

    /// Hands a message to the send path; never waits for the proxy.
    async fn send(&mut self, kind: server_message::Kind) -> Result<(), Stop> {
        let subscriptions = self.registry.len();
        self.out
            .send(ServerMessage { kind: Some(kind) }, subscriptions)
    }
}

/// Signs in (if asked to), admits and loads a new subscription; runs as a session task.
/// Returns the subscriber, the sign-in label and user name, and the admission.
async fn admit(
    ctx: Arc<Context>,
    key: SessionKey,
    req: SubscribeRequest,
    step: AuthStep,
    client_address: String,
) -> (String, Option<(Label, Option<String>)>, Admission) {
    let mut auth = None;
    let identity = match step {
        AuthStep::Off => None,
        AuthStep::Flow(identity) => Some(identity),
        AuthStep::Verify(creds) => {
            let Some(authenticator) = ctx.auth.as_ref() else {
                return (
                    req.subscriber,
                    None,
                    Admission::Rejected(Rejection::Unavailable),
                );
            };
            let username = digest_username(&creds);
            let verdict = authenticator
                .authenticate(&creds, &client_address, unix_now(), ctx.cache.directory())
                .await;
            match verdict {
                Ok(v) => {
                    auth = Some((v.label, username));
                    match v.outcome {
                        Outcome::Authenticated { identity } => Some(identity),
                        other => return (req.subscriber, auth, Admission::Auth(other)),
                    }
                }
                Err(e) => return (req.subscriber, None, Admission::Failed(e)),
            }
        }
    };
    let granted = match ctx.policy.admit(&req, identity.as_deref()) {
        Ok(g) => g,
        Err(r) => return (req.subscriber, auth, Admission::Rejected(r)),
    };
    let outcome = match ctx
        .cache
        .attach_limited(key, &req.subscriber, ctx.max_subscriptions_per_user)
        .await
    {
        // The cache now holds the user; the first plan reads the document from it.
        Ok(_) => Admission::Ready { granted, identity },
        Err(AttachError::TooMany) => Admission::Rejected(Rejection::Forbidden(TOO_MANY)),
        Err(AttachError::Directory(e)) => Admission::Failed(e),
    };
    (req.subscriber, auth, outcome)
}

/// The domain form of `conflist.v1.Credentials`; `None` when absent or empty.
/// The window a Subscribe asks for (absent fields: the server's defaults).
fn window_from_proto(w: Option<&v1::Window>) -> Window {
    let Some(w) = w else {
        return Window::default();
    };
    let secs = |s: Option<u32>| s.map(|s| Duration::from_secs(s.into()));
    Window {
        past: secs(w.past_seconds),
        ahead: secs(w.ahead_seconds),
        max: w.max_count.map(|n| n as usize),
    }
}

fn credentials_from_proto(c: Option<v1::Credentials>) -> Option<Credentials> {
    match c?.kind? {
        v1::credentials::Kind::Digest(d) => {
            Some(Credentials::Digest(Box::new(digest::DigestCredentials {
                username: d.username,
                realm: d.realm,
                nonce: d.nonce,
                uri: d.uri,
                response: d.response,
                algorithm: d.algorithm,
                qop: d.qop,
                nc: d.nc,
                cnonce: d.cnonce,
                opaque: d.opaque,
                method: d.method,
            })))
        }
        v1::credentials::Kind::BearerToken(t) if !t.is_empty() => Some(Credentials::Bearer(t)),
        v1::credentials::Kind::BearerToken(_) => None,
    }
}

/// The digest user name, cut for logs (bearer tokens are never logged).
fn digest_username(c: &Credentials) -> Option<String> {
    c.username().map(loggable)
}

/// Wall-clock unix seconds: nonces and tokens are stamped with it, so every instance agrees.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    //! The session driven message by message (no sockets): sign-in, authorisation and the
    //! answers they produce, over an in-memory SQLite directory with the demo data.

    use super::*;
    use crate::auth::AuthConfig;
    use crate::directory::{Directory, NewCredentials};

    const REALM: &str = "example.com";

    async fn context(auth: bool, max_per_user: usize, trust_flow_identity: bool) -> Arc<Context> {
        let directory = Directory::connect("sqlite::memory:", 1).await.unwrap();
        directory.migrate().await.unwrap();
        directory.load_demo_data().await.unwrap();
        for (user, password) in [("alice", "wonderland"), ("bob", "builder")] {
            let md5 = digest::ha1(digest::Algorithm::Md5, user, REALM, password);
            let sha = digest::ha1(digest::Algorithm::Sha256, user, REALM, password);
            directory
                .set_credentials(&NewCredentials {
                    username: user,
                    realm: REALM,
                    user_uri: &format!("sip:{user}@example.com"),
                    ha1_md5: Some(&md5),
                    ha1_sha256: Some(&sha),
                })
                .await
                .unwrap();
        }
        let auth = auth.then(|| {
            Authenticator::new(AuthConfig {
                realm: REALM.into(),
                sip_domain: "example.com".into(),
                algorithms: crate::auth::DEFAULT_ALGORITHMS.to_vec(),
                nonce_secret: b"test".to_vec(),
                nonce_lifetime: Duration::from_secs(300),
                max_failures: 3,
                failure_window: Duration::from_secs(60),
                bearer: None,
            })
        });
        Arc::new(Context {
            policy: Policy {
                min_expires: 60,
                default_expires: 3600,
                max_expires: 7200,
                sip_domain: "example.com".into(),
            },
            cache: Arc::new(Cache::new(directory)),
            notify_policy: NotifyPolicy {
                min_interval: Duration::ZERO,
                full_only: false,
                max_body_bytes: subscription::DEFAULT_MAX_BODY_BYTES,
                show_cancelled: true,
            },
            default_window: Window::default(),
            metrics: Metrics::default(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            auth,
            trust_flow_identity,
            max_subscriptions_per_user: max_per_user,
            stall_timeout: Duration::from_secs(10),
            admin: Arc::default(),
        })
    }

    struct Harness {
        session: Session,
        rx: mpsc::Receiver<ServerMessage>,
        next_request: u64,
    }

    impl Harness {
        async fn new(auth: bool) -> Self {
            Self::with_limit(auth, 100).await
        }

        async fn with_limit(auth: bool, max_per_user: usize) -> Self {
            Self::with_context(context(auth, max_per_user, true).await)
        }

        /// Authentication on, but the proxy hop is not authenticated.
        async fn untrusted_hop() -> Self {
            Self::with_context(context(true, 100, false).await)
        }

        fn with_context(ctx: Arc<Context>) -> Self {
            let (tx, rx) = mpsc::channel(64);
            Self {
                session: Session::new(ctx, tx),
                rx,
                next_request: 1,
            }
        }

        /// How often sign-in ended with `label`.
        fn auth_count(&self, label: Label) -> u64 {
            self.session
                .ctx
                .metrics
                .auth
                .get_or_create(&AuthLabel::new(label))
                .get()
        }

        /// Whether a Notification is waiting on the stream.
        fn notification_waiting(&mut self) -> bool {
            std::iter::from_fn(|| self.rx.try_recv().ok()).any(|m| {
                matches!(
                    m,
                    ServerMessage {
                        kind: Some(server_message::Kind::Notification(_))
                    }
                )
            })
        }

        /// Sends `kind`, runs the tasks it starts, and returns the Answer to it.
        async fn ask(&mut self, kind: proxy_message::Kind) -> Answer {
            self.session
                .on_message(ProxyMessage { kind: Some(kind) })
                .await
                .unwrap();
            while let Some(done) = self.session.tasks.join_next().await {
                self.session.on_done(done.unwrap()).await.unwrap();
            }
            loop {
                match self.rx.try_recv().unwrap().kind {
                    Some(server_message::Kind::Answer(a)) => return a,
                    _ => continue,
                }
            }
        }

        async fn subscribe(
            &mut self,
            id: &str,
            user: &str,
            credentials: Option<v1::Credentials>,
            flow_identity: &str,
        ) -> Answer {
            let request_id = self.request();
            self.ask(proxy_message::Kind::Subscribe(v1::Subscribe {
                subscription_id: id.into(),
                request_id,
                subscriber_uri: format!("sip:{user}@example.com"),
                requester_uri: format!("sip:{user}@example.com"),
                credentials,
                event: "conference-list".into(),
                accept: vec![],
                expires: Some(600),
                resume_version: None,
                client_address: "192.0.2.1:5555".into(),
                flow_identity: flow_identity.into(),
                window: None,
                max_body_bytes: None,
            }))
            .await
        }

        async fn refresh(&mut self, id: &str, credentials: Option<v1::Credentials>) -> Answer {
            self.refresh_from(id, credentials, "192.0.2.1:5555").await
        }

        async fn refresh_from(
            &mut self,
            id: &str,
            credentials: Option<v1::Credentials>,
            client_address: &str,
        ) -> Answer {
            let request_id = self.request();
            self.ask(proxy_message::Kind::Refresh(v1::Refresh {
                subscription_id: id.into(),
                request_id,
                expires: Some(600),
                credentials,
                client_address: client_address.into(),
            }))
            .await
        }

        fn request(&mut self) -> u64 {
            self.next_request += 1;
            self.next_request
        }
    }

    /// What a client answers to `challenge`, with MD5 (the last algorithm offered).
    fn digest_for(
        challenge: &v1::Challenge,
        user: &str,
        password: &str,
        nc: u32,
    ) -> v1::Credentials {
        let mut d = digest::DigestCredentials {
            username: user.into(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: format!("sip:{user}@example.com"),
            algorithm: challenge.algorithms.last().cloned().unwrap_or_default(),
            qop: "auth".into(),
            nc: format!("{nc:08x}"),
            cnonce: "abcdef".into(),
            opaque: challenge.opaque.clone(),
            method: "SUBSCRIBE".into(),
            ..Default::default()
        };
        let alg = digest::Algorithm::parse(&d.algorithm).unwrap();
        d.response =
            digest::expected_response(alg, &digest::ha1(alg, user, &d.realm, password), &d);
        v1::Credentials {
            kind: Some(v1::credentials::Kind::Digest(v1::DigestCredentials {
                username: d.username,
                realm: d.realm,
                nonce: d.nonce,
                uri: d.uri,
                response: d.response,
                algorithm: d.algorithm,
                qop: d.qop,
                nc: d.nc,
                cnonce: d.cnonce,
                opaque: d.opaque,
                method: d.method,
            })),
        }
    }

    fn status(a: &Answer) -> AnswerStatus {
        AnswerStatus::try_from(a.status).unwrap()
    }

    #[tokio::test]
    async fn without_credentials_a_challenge_then_signed_in() {
        let mut h = Harness::new(true).await;
        let a = h.subscribe("s1", "alice", None, "").await;
        assert_eq!(status(&a), AnswerStatus::Unauthorized);
        let ch = a.challenge.unwrap();
        assert_eq!(ch.realm, REALM);
        assert_eq!(ch.algorithms, vec!["SHA-256", "MD5"]);
        assert!(!ch.stale);

        let creds = digest_for(&ch, "alice", "wonderland", 1);
        let a = h.subscribe("s2", "alice", Some(creds), "").await;
        assert_eq!(status(&a), AnswerStatus::Ok, "{a:?}");
        assert_eq!(a.identity, "sip:alice@example.com");
        assert_eq!(a.granted_expires, 600);
    }

    #[tokio::test]
    async fn unknown_user_and_wrong_password_look_the_same() {
        let mut h = Harness::new(true).await;
        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();
        let wrong = h
            .subscribe(
                "s1",
                "alice",
                Some(digest_for(&ch, "alice", "guess", 1)),
                "",
            )
            .await;
        let unknown = h
            .subscribe("s2", "zed", Some(digest_for(&ch, "zed", "guess", 1)), "")
            .await;
        for a in [&wrong, &unknown] {
            assert_eq!(status(a), AnswerStatus::Unauthorized);
            assert_eq!(a.reason, "authentication required");
        }
        let (w, u) = (wrong.challenge.unwrap(), unknown.challenge.unwrap());
        assert_eq!(
            (&w.realm, &w.opaque, &w.algorithms, w.stale),
            (&u.realm, &u.opaque, &u.algorithms, u.stale)
        );
        assert_ne!(w.nonce, u.nonce);
    }

    #[tokio::test]
    async fn the_identity_must_be_the_subscriber() {
        let mut h = Harness::new(true).await;
        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();
        // bob signs in correctly but asks for alice's list.
        let a = h
            .subscribe(
                "s1",
                "alice",
                Some(digest_for(&ch, "bob", "builder", 1)),
                "",
            )
            .await;
        assert_eq!(status(&a), AnswerStatus::Forbidden);
        // A flow identity vouched for by the proxy is trusted, and checked the same way.
        let a = h
            .subscribe("s2", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        assert_eq!(a.identity, "sip:alice@example.com");
        // A flow that proved bob, asking for alice's list without credentials: challenged
        // (a gateway may carry several users), not refused.
        let a = h
            .subscribe("s3", "alice", None, "sip:bob@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Unauthorized);
    }

    #[tokio::test]
    async fn authentication_off_keeps_the_from_rule() {
        let mut h = Harness::new(false).await;
        let a = h.subscribe("s1", "alice", None, "").await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        assert_eq!(a.identity, "", "no identity without authentication");
    }

    #[tokio::test]
    async fn refresh_credentials_are_verified_against_the_bound_identity() {
        let mut h = Harness::new(true).await;
        let a = h
            .subscribe("s1", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);

        let a = h.refresh("s1", None).await;
        assert_eq!(
            status(&a),
            AnswerStatus::Ok,
            "no credentials: the bound identity stands"
        );
        assert_eq!(a.identity, "sip:alice@example.com");

        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();
        let a = h
            .refresh("s1", Some(digest_for(&ch, "alice", "guess", 1)))
            .await;
        assert_eq!(status(&a), AnswerStatus::Unauthorized);
        assert!(a.challenge.is_some());
        assert!(h.session.registry.contains("s1"), "the subscription stays");

        let a = h
            .refresh("s1", Some(digest_for(&ch, "alice", "wonderland", 2)))
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        assert!(h.session.verifying.is_empty());
    }

    #[tokio::test]
    async fn a_refresh_signed_in_as_another_user_is_a_failed_sign_in() {
        let mut h = Harness::new(true).await;
        let a = h
            .subscribe("s1", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();

        // bob's right password and a wrong one for bob must look the same on alice's
        // subscription, or refreshes are a password oracle.
        let right = h
            .refresh_from(
                "s1",
                Some(digest_for(&ch, "bob", "builder", 1)),
                "198.51.100.9:1",
            )
            .await;
        let wrong = h
            .refresh_from(
                "s1",
                Some(digest_for(&ch, "bob", "guess", 2)),
                "198.51.100.9:2",
            )
            .await;
        for a in [&right, &wrong] {
            assert_eq!(status(a), AnswerStatus::Unauthorized, "{a:?}");
            assert_eq!(a.reason, "authentication required");
            assert_eq!(a.identity, "");
        }
        let (r, w) = (right.challenge.unwrap(), wrong.challenge.unwrap());
        assert_eq!(
            (&r.realm, &r.opaque, &r.algorithms, r.stale),
            (&w.realm, &w.opaque, &w.algorithms, w.stale)
        );
        assert_eq!(h.auth_count(Label::Failed), 2, "both count as failures");
        assert_eq!(h.auth_count(Label::Ok), 0);
        assert!(h.session.registry.contains("s1"), "the subscription stays");

        // Counted against bob and the address: a third failure blocks both.
        h.refresh_from(
            "s1",
            Some(digest_for(&ch, "bob", "builder", 3)),
            "198.51.100.9:3",
        )
        .await;
        let a = h
            .subscribe("s2", "bob", Some(digest_for(&ch, "bob", "builder", 4)), "")
            .await;
        assert_eq!(status(&a), AnswerStatus::Unavailable, "bob is throttled");
        let a = h
            .refresh_from(
                "s1",
                Some(digest_for(&ch, "alice", "wonderland", 5)),
                "198.51.100.9:4",
            )
            .await;
        assert_eq!(
            status(&a),
            AnswerStatus::Unavailable,
            "the address is throttled"
        );
    }

    #[tokio::test]
    async fn refresh_failures_are_throttled_per_client_address() {
        let mut h = Harness::new(true).await;
        let a = h
            .subscribe("s1", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();
        // Three wrong guesses for three different users from one address (3 per window):
        // only the per-address count can catch them.
        for (nc, user) in [(1, "carol"), (2, "dave"), (3, "erin")] {
            let a = h
                .refresh_from(
                    "s1",
                    Some(digest_for(&ch, user, "guess", nc)),
                    "203.0.113.5:4000",
                )
                .await;
            assert_eq!(status(&a), AnswerStatus::Unauthorized);
        }
        let a = h
            .refresh_from(
                "s1",
                Some(digest_for(&ch, "alice", "wonderland", 4)),
                "203.0.113.5:4001",
            )
            .await;
        assert_eq!(status(&a), AnswerStatus::Unavailable, "{a:?}");
        assert!((1..=60).contains(&a.retry_after));
        let a = h
            .refresh_from(
                "s1",
                Some(digest_for(&ch, "alice", "wonderland", 5)),
                "198.51.100.1:1",
            )
            .await;
        assert_eq!(
            status(&a),
            AnswerStatus::Ok,
            "another address is not throttled"
        );
    }

    #[tokio::test]
    async fn a_flow_identity_from_an_unauthenticated_hop_is_ignored() {
        let mut h = Harness::untrusted_hop().await;
        let a = h
            .subscribe("s1", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Unauthorized, "{a:?}");
        assert!(a.challenge.is_some());
        assert_eq!(a.identity, "");
        assert!(!h.session.registry.contains("s1"));
        assert!(!h.notification_waiting(), "no document without sign-in");
        assert_eq!(h.auth_count(Label::Challenged), 1);

        // Credentials still work.
        let creds = digest_for(&a.challenge.unwrap(), "alice", "wonderland", 1);
        let a = h.subscribe("s2", "alice", Some(creds), "").await;
        assert_eq!(status(&a), AnswerStatus::Ok);
    }

    #[tokio::test]
    async fn repeated_failures_are_throttled_with_retry_after() {
        let mut h = Harness::new(true).await;
        let ch = h
            .subscribe("s0", "alice", None, "")
            .await
            .challenge
            .unwrap();
        for nc in 1..=3 {
            let id = format!("f{nc}");
            let a = h
                .subscribe(
                    &id,
                    "alice",
                    Some(digest_for(&ch, "alice", "guess", nc)),
                    "",
                )
                .await;
            assert_eq!(status(&a), AnswerStatus::Unauthorized);
        }
        let a = h
            .subscribe(
                "s1",
                "alice",
                Some(digest_for(&ch, "alice", "wonderland", 4)),
                "",
            )
            .await;
        assert_eq!(status(&a), AnswerStatus::Unavailable);
        assert!((1..=60).contains(&a.retry_after), "{}", a.retry_after);
    }

    #[tokio::test]
    async fn subscriptions_per_user_are_capped() {
        let mut h = Harness::with_limit(true, 2).await;
        for id in ["s1", "s2"] {
            let a = h
                .subscribe(id, "alice", None, "sip:alice@example.com")
                .await;
            assert_eq!(status(&a), AnswerStatus::Ok);
        }
        let a = h
            .subscribe("s3", "alice", None, "sip:alice@example.com")
            .await;
        assert_eq!(status(&a), AnswerStatus::Forbidden);
        assert_eq!(a.reason, "too many subscriptions for this user");
        let a = h.subscribe("s4", "bob", None, "sip:bob@example.com").await;
        assert_eq!(status(&a), AnswerStatus::Ok, "per user");
    }

    /// The next Notification the session sent, skipping other messages.
    fn next_notification(h: &mut Harness) -> Notification {
        loop {
            if let Some(server_message::Kind::Notification(n)) = h.rx.try_recv().unwrap().kind {
                return n;
            }
        }
    }

    #[tokio::test]
    async fn the_admin_api_lists_and_a_resend_is_full_state_after_the_one_in_flight() {
        let mut h = Harness::new(false).await;
        for (id, user) in [("s2", "bob"), ("s1", "alice")] {
            let a = h.subscribe(id, user, None, "").await;
            assert_eq!(status(&a), AnswerStatus::Ok);
            let first = next_notification(&mut h);
            assert_eq!((first.subscription_id.as_str(), first.version), (id, 0));
        }
        let (reply, list) = oneshot::channel();
        h.session
            .on_admin(admin::Command::List {
                user: Some("sip:alice@example.com".into()),
                reply,
            })
            .await
            .unwrap();
        let list = list.await.unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].id.as_str(), list[0].version, list[0].last_delivered),
            ("s1", Some(0), None)
        );

        // Version 0 is still in flight: the resend waits for its answer, then is full.
        let (reply, count) = oneshot::channel();
        h.session
            .on_admin(admin::Command::Resend {
                user: "sip:alice@example.com".into(),
                reply,
            })
            .await
            .unwrap();
        assert_eq!(count.await.unwrap(), 1);
        assert!(
            !h.notification_waiting(),
            "nothing overtakes the one in flight"
        );
        h.session
            .on_message(ProxyMessage {
                kind: Some(proxy_message::Kind::Delivered(v1::Delivered {
                    subscription_id: "s1".into(),
                    version: 0,
                    outcome: DeliveryOutcome::Accepted.into(),
                })),
            })
            .await
            .unwrap();
        let resent = next_notification(&mut h);
        assert_eq!((resent.subscription_id.as_str(), resent.version), ("s1", 1));
        let doc = ConferenceList::parse(&resent.body).unwrap();
        assert_eq!(doc.state, document::DocumentState::Full);
        let (reply, list) = oneshot::channel();
        h.session
            .on_admin(admin::Command::List { user: None, reply })
            .await
            .unwrap();
        let list = list.await.unwrap();
        assert_eq!(list.len(), 2);
        let s1 = list.iter().find(|s| s.id == "s1").unwrap();
        assert_eq!((s1.version, s1.last_delivered), (Some(1), Some(0)));
    }

    fn answer_msg(n: u64) -> ServerMessage {
        ServerMessage {
            kind: Some(server_message::Kind::Answer(Answer {
                request_id: n,
                ..Answer::default()
            })),
        }
    }

    #[tokio::test]
    async fn the_send_path_never_waits_and_ends_a_session_whose_backlog_is_full() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut out = Outbound::new(tx);
        for n in 0..5 {
            out.send(answer_msg(n), 0).unwrap();
        }
        assert_eq!(out.backlog.len(), 3, "the stream's queue took two");
        assert!(out.stalled_since.is_some());

        // The proxy reads one: the backlog moves on, in order, and its clock restarts.
        let first = out.stalled_since;
        assert_eq!(rx.recv().await.unwrap(), answer_msg(0));
        out.room().await.unwrap();
        out.flush().unwrap();
        assert_eq!(out.backlog.len(), 2);
        assert!(out.stalled_since >= first);
        for n in 1..5 {
            assert_eq!(rx.recv().await.unwrap(), answer_msg(n));
            out.flush().unwrap();
        }
        assert!(out.backlog.is_empty() && out.stalled_since.is_none());

        // A proxy that reads nothing: the backlog fills, then the session must end.
        for n in 0..(2 + SESSION_BACKLOG as u64) {
            out.send(answer_msg(n), 0).unwrap();
        }
        assert_eq!(out.backlog.len(), SESSION_BACKLOG);
        assert_eq!(out.send(answer_msg(0), 0), Err(Stop::Stalled));
        // With subscriptions on the session, one more message each fits (a fan-out to all).
        for n in 0..3 {
            out.send(answer_msg(n), 3).unwrap();
        }
        assert_eq!(out.backlog.len(), SESSION_BACKLOG + 3);
        assert_eq!(out.send(answer_msg(0), 3), Err(Stop::Stalled));

        drop(rx);
        assert_eq!(out.flush(), Err(Stop::PeerGone));
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_stall_status_after_what_was_queued() {
        use tokio_stream::StreamExt;
        let (tx, rx) = mpsc::channel(4);
        let (end_tx, end_rx) = oneshot::channel();
        let mut stream = Outgoing {
            rx,
            end: Some(end_rx),
        };
        tx.send(answer_msg(1)).await.unwrap();
        end_tx.send(Status::unavailable("stalled")).unwrap();
        drop(tx);
        assert_eq!(stream.next().await.unwrap().unwrap(), answer_msg(1));
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn a_delivered_for_another_version_does_not_clear_the_one_in_flight() {
        let mut h = Harness::new(false).await;
        let a = h.subscribe("s1", "alice", None, "").await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        let in_flight = |h: &Harness| h.session.registry.get("s1").unwrap().in_flight;
        assert_eq!(in_flight(&h), Some(0), "the first notification");
        let delivered = |version| {
            proxy_message::Kind::Delivered(v1::Delivered {
                subscription_id: "s1".into(),
                version,
                outcome: DeliveryOutcome::Accepted.into(),
            })
        };
        h.session
            .on_message(ProxyMessage {
                kind: Some(delivered(5)),
            })
            .await
            .unwrap();
        assert_eq!(
            in_flight(&h),
            Some(0),
            "a Delivered for version 5 is ignored"
        );
        h.session
            .on_message(ProxyMessage {
                kind: Some(delivered(0)),
            })
            .await
            .unwrap();
        assert_eq!(in_flight(&h), None);
    }
}
