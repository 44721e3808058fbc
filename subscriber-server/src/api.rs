//! The tonic `SubscriptionService`: one task per proxy session stream. This module converts
//! `conflist.v1` messages to the domain inputs of the session machine ([`crate::session`])
//! and its outputs back, and performs the I/O the machine asks for: sign-ins
//! ([`crate::auth`]) and directory loads ([`crate::cache`]) in spawned tasks, cache
//! releases, admin answers, and the send path. Policy and state live in the machine and
//! [`crate::subscription`], SQL in [`crate::directory`].
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
use crate::auth::{Authenticator, Credentials, Label, Outcome, Verdict, digest};
use crate::cache::{Cache, SessionKey, SessionWake};
use crate::metrics::Metrics;
use crate::session::{self, AdminAnswer, AdminQuery, Delivery, Input, Now, Output, Reply};
use crate::subscription::{NotifyPolicy, Policy, Rejection, SubscribeRequest, Window};
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

impl Context {
    /// What a session machine needs of this context; `proxy` is the peer's address.
    fn settings(&self, proxy: String) -> session::Settings {
        session::Settings {
            policy: self.policy.clone(),
            notify_policy: self.notify_policy,
            default_window: self.default_window,
            auth: self.auth.is_some(),
            trust_flow_identity: self.trust_flow_identity,
            proxy,
        }
    }
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
        let mut task = SessionTask::new(self.ctx.clone(), tx, peer.clone());
        task.out.end = Some(end_tx);
        let span = info_span!("session", proxy.addr = %peer);
        self.ctx
            .tracker
            .spawn(task.run(request.into_inner()).instrument(span));
        Ok(Response::new(Outgoing {
            rx,
            end: Some(end_rx),
        }))
    }
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

/// Where the answer to an admin command goes.
#[derive(Debug)]
enum AdminReply {
    List(oneshot::Sender<Vec<SubscriptionInfo>>),
    Resend(oneshot::Sender<usize>),
}

impl AdminReply {
    /// Answers (a requester that gave up is ignored).
    fn send(self, answer: AdminAnswer) {
        match (self, answer) {
            (AdminReply::List(reply), AdminAnswer::List(list)) => {
                let _ = reply.send(list);
            }
            (AdminReply::Resend(reply), AdminAnswer::Resent(n)) => {
                let _ = reply.send(n);
            }
            (reply, answer) => debug!(?reply, ?answer, "admin answer of another kind; dropped"),
        }
    }
}

/// One proxy session: runs its machine ([`session::Session`]) and performs its outputs.
struct SessionTask {
    ctx: Arc<Context>,
    out: Outbound,
    machine: session::Session,
    /// Sign-ins and loads the machine asked for; each ends with the input to feed back.
    tasks: JoinSet<Input>,
    /// The subscription each of those tasks is for (for the log line of one that fails).
    task_subscriptions: HashMap<tokio::task::Id, String>,
    key: SessionKey,
    wake: Arc<SessionWake>,
    /// Commands from the admin API, and this session's place in its hub.
    admin: (admin::Registration, mpsc::Receiver<admin::Command>),
}

impl SessionTask {
    fn new(ctx: Arc<Context>, out: mpsc::Sender<ServerMessage>, proxy: String) -> Self {
        ctx.metrics.sessions.inc();
        let (key, wake) = ctx.cache.register_session();
        let admin = ctx.admin.register();
        let machine = session::Session::new(ctx.settings(proxy), ctx.metrics.clone());
        Self {
            ctx,
            out: Outbound::new(out),
            machine,
            tasks: JoinSet::new(),
            task_subscriptions: HashMap::new(),
            key,
            wake,
            admin,
        }
    }

    async fn run(mut self, mut inbound: Streaming<ProxyMessage>) {
        info!("proxy session opened");
        let shutdown = self.ctx.shutdown.clone();
        let wake = self.wake.clone();
        let stall_timeout = self.ctx.stall_timeout;
        let outcome = loop {
            let deadline = self.machine.next_deadline();
            let stalled_at = self.out.stalled_since.map(|t| t + stall_timeout);
            let step = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => self.on_message(msg),
                    Ok(None) => break "proxy closed the session",
                    Err(status) => {
                        debug!(%status, "session stream failed");
                        break "session stream failed";
                    }
                },
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => match done {
                    Ok((task, input)) => {
                        self.task_subscriptions.remove(&task);
                        self.step(input)
                    }
                    Err(e) => {
                        let sub = self.task_subscriptions.remove(&e.id());
                        warn!(subscription.id = sub.as_deref(), error = %e, "session task failed");
                        Ok(())
                    }
                },
                () = wake.changed() => {
                    let users = self.wake.take();
                    self.step(Input::UsersChanged(users))
                }
                Some(cmd) = self.admin.1.recv() => self.on_admin(cmd),
                () = sleep_until_opt(deadline) => self.step(Input::Deadline),
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
        let dropped = self.machine.len();
        let _ = self.step(Input::Closed);
        // Loads still running would attach their users to this session after it is gone
        // (and pin those cache entries): end them first.
        self.tasks.shutdown().await;
        self.ctx.metrics.sessions.dec();
        self.ctx.cache.unregister_session(self.key);
        info!(reason = outcome, dropped, "proxy session closed");
    }

    /// Feeds `input` to the machine now and performs what it says.
    fn step(&mut self, input: Input) -> Result<(), Stop> {
        let outputs = self
            .machine
            .handle(input, Now::system(), self.ctx.cache.as_ref());
        self.perform(outputs, None)
    }

    fn on_message(&mut self, msg: ProxyMessage) -> Result<(), Stop> {
        match input_from_proto(msg) {
            Some(input) => self.step(input),
            None => {
                debug!("empty proxy message ignored");
                Ok(())
            }
        }
    }

    /// A command of the admin API; answered through its reply channel.
    fn on_admin(&mut self, cmd: admin::Command) -> Result<(), Stop> {
        let (query, reply) = match cmd {
            admin::Command::List { user, reply } => {
                (AdminQuery::List { user }, AdminReply::List(reply))
            }
            admin::Command::Resend { user, reply } => {
                (AdminQuery::Resend { user }, AdminReply::Resend(reply))
            }
        };
        let outputs =
            self.machine
                .handle(Input::Admin(query), Now::system(), self.ctx.cache.as_ref());
        self.perform(outputs, Some(reply))
    }

    /// Carries out the machine's outputs in order; stops at the first message the proxy
    /// cannot take (the session ends).
    fn perform(&mut self, outputs: Vec<Output>, mut reply: Option<AdminReply>) -> Result<(), Stop> {
        for output in outputs {
            match output {
                Output::Answer(a) => {
                    let answer = self.answer_to_proto(a);
                    self.send(server_message::Kind::Answer(answer))?;
                }
                Output::Notify(n) => {
                    let notification = self.notification_to_proto(n);
                    self.send(server_message::Kind::Notification(notification))?;
                }
                Output::Verify(v) => self.spawn_verify(v),
                Output::Load { ticket, user } => {
                    let ctx = self.ctx.clone();
                    let key = self.key;
                    self.spawn_job(ticket, async move {
                        let result = ctx
                            .cache
                            .attach_limited(key, &user, ctx.max_subscriptions_per_user)
                            .await
                            .map(drop);
                        Input::Loaded { ticket, result }
                    });
                }
                Output::Release { user } => self.ctx.cache.detach(self.key, &user),
                Output::Admin(answer) => {
                    if let Some(reply) = reply.take() {
                        reply.send(answer);
                    }
                }
                Output::End => {}
            }
        }
        Ok(())
    }

    /// Runs the job of `ticket` in a task, in a span with its subscription's id (the
    /// directory's and the sign-in's log lines carry it).
    fn spawn_job(
        &mut self,
        ticket: session::Ticket,
        job: impl Future<Output = Input> + Send + 'static,
    ) {
        let sub = self.machine.job_subscription(ticket);
        let span = info_span!("job", subscription.id = sub);
        let task = self.tasks.spawn(job.instrument(span)).id();
        if let Some(sub) = sub {
            self.task_subscriptions.insert(task, sub.to_owned());
        }
    }

    /// Verifies credentials in a task: the sign-in, held to the bound identity for a
    /// refresh.
    fn spawn_verify(&mut self, v: session::Verify) {
        let ctx = self.ctx.clone();
        self.spawn_job(v.ticket, async move {
            let session::Verify {
                ticket,
                credentials,
                client_address,
                bound,
            } = v;
            let now = unix_now();
            let verdict = match ctx.auth.as_ref() {
                Some(a) => a
                    .authenticate(&credentials, &client_address, now, ctx.cache.directory())
                    .await
                    .map(|v| match &bound {
                        Some(bound) => {
                            a.require_identity(v, bound, &credentials, &client_address, now)
                        }
                        None => v,
                    }),
                // Not reached: the machine verifies only with authentication on.
                None => Ok(Verdict {
                    outcome: Outcome::Challenge { stale: false },
                    label: Label::Failed,
                }),
            };
            Input::Verified { ticket, verdict }
        });
    }

    async fn deactivate_all(&mut self) {
        let outputs = self
            .machine
            .handle(Input::Shutdown, Now::system(), self.ctx.cache.as_ref());
        // A proxy that cannot take them has gone or stopped reading: the session ends
        // either way.
        let _ = self.perform(outputs, None);
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

    /// The proto form of an Answer; counted by status.
    fn answer_to_proto(&self, a: session::Answer) -> Answer {
        let session::Answer {
            id,
            request_id,
            reply,
        } = a;
        let (status, fields) = match reply {
            Reply::Ok { granted, identity } => (
                AnswerStatus::Ok,
                Answer {
                    granted_expires: granted,
                    identity: identity.unwrap_or_default(),
                    ..Answer::default()
                },
            ),
            Reply::Rejected(r) => {
                let (status, min) = match r {
                    Rejection::BadEvent => (AnswerStatus::BadEvent, 0),
                    Rejection::NotAcceptable => (AnswerStatus::NotAcceptable, 0),
                    Rejection::Forbidden(_) => (AnswerStatus::Forbidden, 0),
                    Rejection::NotFound => (AnswerStatus::NotFound, 0),
                    Rejection::IntervalTooBrief { min } => (AnswerStatus::IntervalTooBrief, min),
                    Rejection::NoSuchSubscription => (AnswerStatus::NoSuchSubscription, 0),
                    Rejection::Unavailable => (AnswerStatus::Unavailable, 0),
                };
                (
                    status,
                    Answer {
                        min_expires: min,
                        reason: r.to_string(),
                        ..Answer::default()
                    },
                )
            }
            Reply::Challenge { stale } => match &self.ctx.auth {
                Some(a) => {
                    let c = a.challenge(stale, unix_now());
                    (
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
                // Not reached: the machine challenges only with authentication on.
                None => (AnswerStatus::InternalError, Answer::default()),
            },
            Reply::Throttled { retry_after } => (
                AnswerStatus::Unavailable,
                Answer {
                    retry_after,
                    reason: "too many failed sign-ins".into(),
                    ..Answer::default()
                },
            ),
            Reply::Internal(reason) => (
                AnswerStatus::InternalError,
                Answer {
                    reason: reason.to_owned(),
                    ..Answer::default()
                },
            ),
        };
        self.ctx
            .metrics
            .answers
            .get_or_create(&crate::metrics::StatusLabel::new(status))
            .inc();
        Answer {
            subscription_id: id,
            request_id,
            status: status.into(),
            ..fields
        }
    }

    /// The proto form of a Notification (the document rendered); counted with its bytes.
    fn notification_to_proto(&self, n: session::Notification) -> Notification {
        let session::Notification {
            id,
            version,
            state,
            document,
        } = n;
        let (state, reason, expires) = match state {
            session::State::Active { expires } => (
                SubscriptionState::Active,
                TerminationReason::Unspecified,
                expires,
            ),
            session::State::Terminated(session::Reason::Timeout) => {
                (SubscriptionState::Terminated, TerminationReason::Timeout, 0)
            }
            session::State::Terminated(session::Reason::Deactivated) => (
                SubscriptionState::Terminated,
                TerminationReason::Deactivated,
                0,
            ),
        };
        let (content_type, body) = match document {
            Some(d) => (document::CONTENT_TYPE.to_owned(), d.render()),
            None => (String::new(), Vec::new()),
        };
        self.ctx.metrics.notifications.inc();
        self.ctx
            .metrics
            .notification_bytes
            .inc_by(body.len() as u64);
        debug!(subscription.id = %id, version, ?state, ?reason, bytes = body.len(), "notification");
        Notification {
            subscription_id: id,
            version,
            state: state.into(),
            reason: reason.into(),
            expires,
            content_type,
            body,
        }
    }

    /// Hands a message to the send path; never waits for the proxy.
    fn send(&mut self, kind: server_message::Kind) -> Result<(), Stop> {
        let subscriptions = self.machine.len();
        self.out
            .send(ServerMessage { kind: Some(kind) }, subscriptions)
    }
}

/// The machine's input for a proxy message; `None` when it carries nothing.
fn input_from_proto(msg: ProxyMessage) -> Option<Input> {
    Some(match msg.kind? {
        proxy_message::Kind::Subscribe(s) => Input::Subscribe(subscribe_from_proto(s)),
        proxy_message::Kind::Refresh(r) => Input::Refresh(session::Refresh {
            id: r.subscription_id,
            request_id: r.request_id,
            expires: r.expires,
            credentials: credentials_from_proto(r.credentials),
            client_address: r.client_address,
        }),
        proxy_message::Kind::Unsubscribe(u) => Input::Unsubscribe {
            id: u.subscription_id,
        },
        proxy_message::Kind::Delivered(d) => Input::Delivered {
            id: d.subscription_id,
            version: d.version,
            outcome: match DeliveryOutcome::try_from(d.outcome).unwrap_or_default() {
                DeliveryOutcome::Accepted => Delivery::Accepted,
                DeliveryOutcome::Timeout => Delivery::TimedOut,
                DeliveryOutcome::Rejected | DeliveryOutcome::Unspecified => Delivery::Rejected,
            },
        },
    })
}

/// The domain form of `conflist.v1.Subscribe`.
fn subscribe_from_proto(s: v1::Subscribe) -> session::Subscribe {
    session::Subscribe {
        id: s.subscription_id,
        request_id: s.request_id,
        request: SubscribeRequest {
            subscriber: s.subscriber_uri,
            requester: s.requester_uri,
            event: s.event,
            accept: s.accept,
            expires: s.expires,
            window: window_from_proto(s.window.as_ref()),
        },
        credentials: credentials_from_proto(s.credentials),
        flow_identity: Some(s.flow_identity).filter(|f| !f.is_empty()),
        client_address: s.client_address,
        resume_version: s.resume_version,
        max_body_bytes: s
            .max_body_bytes
            .filter(|m| *m > 0)
            .and_then(|m| usize::try_from(m).ok()),
    }
}

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

/// The domain form of `conflist.v1.Credentials`; `None` when absent or empty.
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
    //! The session task driven message by message (no sockets): sign-in and authorisation
    //! through the real authenticator and directory (in-memory SQLite with the demo data),
    //! the answers they produce on the wire, the admin reply channels, and the send path.
    //! The machine's own logic is tested without I/O in `session::tests`.

    use super::*;
    use crate::auth::AuthConfig;
    use crate::directory::{Directory, NewCredentials};
    use crate::metrics::AuthLabel;
    use crate::subscription;
    use document::ConferenceList;

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
        session: SessionTask,
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
                session: SessionTask::new(ctx, tx, "unknown".into()),
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
                .unwrap();
            // Each finished task may start the next (a sign-in, then the load).
            while let Some(done) = self.session.tasks.join_next().await {
                self.session.step(done.unwrap()).unwrap();
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
        assert!(
            h.session.machine.subscription("s1").is_some(),
            "the subscription stays"
        );

        let a = h
            .refresh("s1", Some(digest_for(&ch, "alice", "wonderland", 2)))
            .await;
        assert_eq!(status(&a), AnswerStatus::Ok);
        assert_eq!(h.session.machine.unanswered(), 0);
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
        assert!(
            h.session.machine.subscription("s1").is_some(),
            "the subscription stays"
        );

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
        assert!(h.session.machine.subscription("s1").is_none());
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
            .unwrap();
        let resent = next_notification(&mut h);
        assert_eq!((resent.subscription_id.as_str(), resent.version), ("s1", 1));
        let doc = ConferenceList::parse(&resent.body).unwrap();
        assert_eq!(doc.state, document::DocumentState::Full);
        let (reply, list) = oneshot::channel();
        h.session
            .on_admin(admin::Command::List { user: None, reply })
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
}
