//! The tonic `SubscriptionService`: one task per proxy session stream. This module converts
//! `conflist.v1` messages to the domain types of [`crate::subscription`] and back; policy and
//! state live there, SQL in [`crate::directory`].

use crate::cache::{Cache, SessionKey, SessionWake, UserDoc};
use crate::directory::DirectoryError;
use crate::metrics::Metrics;
use crate::subscription::{
    self, NotifyPolicy, Plan, Policy, Registry, Rejection, SubscribeRequest, Subscription,
};
use document::ConferenceList;
use proto::v1::{
    self, Answer, AnswerStatus, DeliveryOutcome, Notification, ProxyMessage, ServerMessage,
    SubscriptionState, TerminationReason, proxy_message, server_message,
    subscription_service_server::SubscriptionService,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

/// Outbound messages buffered per session before the session task waits for the proxy.
const SESSION_QUEUE: usize = 1024;

/// Shared by every session of one server instance.
#[derive(Debug)]
pub struct Context {
    /// Admission and expiry rules.
    pub policy: Policy,
    /// Per-user documents, shared by all sessions.
    pub cache: Arc<Cache>,
    /// Partial/full and rate-control policy.
    pub notify_policy: NotifyPolicy,
    /// Registered metrics.
    pub metrics: Metrics,
    /// Cancelled on shutdown: sessions terminate their subscriptions (reason=deactivated).
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tracker: TaskTracker,
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

#[tonic::async_trait]
impl SubscriptionService for SessionService {
    type SessionStream = ReceiverStream<Result<ServerMessage, Status>>;

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
        let session = Session::new(self.ctx.clone(), tx);
        let span = info_span!("session", proxy.addr = %peer);
        self.ctx
            .tracker
            .spawn(session.run(request.into_inner()).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// An initial SUBSCRIBE waiting for its user's document.
#[derive(Debug)]
struct Loaded {
    id: String,
    subscriber: String,
    request_id: u64,
    granted: u32,
    first_version: u64,
    result: Result<Arc<UserDoc>, DirectoryError>,
}

/// The proxy went away; the session ends.
#[derive(Debug)]
struct PeerGone;

struct Session {
    ctx: Arc<Context>,
    out: mpsc::Sender<Result<ServerMessage, Status>>,
    registry: Registry,
    /// Initial SUBSCRIBEs waiting for their first document, by subscription id.
    pending: HashMap<String, u64>,
    loads: JoinSet<Loaded>,
    key: SessionKey,
    wake: Arc<SessionWake>,
}

impl Session {
    fn new(ctx: Arc<Context>, out: mpsc::Sender<Result<ServerMessage, Status>>) -> Self {
        ctx.metrics.sessions.inc();
        let (key, wake) = ctx.cache.register_session();
        Self {
            ctx,
            out,
            registry: Registry::default(),
            pending: HashMap::new(),
            loads: JoinSet::new(),
            key,
            wake,
        }
    }

    async fn run(mut self, mut inbound: Streaming<ProxyMessage>) {
        info!("proxy session opened");
        let shutdown = self.ctx.shutdown.clone();
        let wake = self.wake.clone();
        let outcome = loop {
            let deadline = self.registry.next_deadline();
            let step = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(msg)) => self.on_message(msg).await,
                    Ok(None) => break "proxy closed the session",
                    Err(status) => {
                        debug!(%status, "session stream failed");
                        break "session stream failed";
                    }
                },
                Some(done) = self.loads.join_next(), if !self.loads.is_empty() => match done {
                    Ok(loaded) => self.on_loaded(loaded).await,
                    Err(e) => {
                        warn!(error = %e, "directory load task failed");
                        Ok(())
                    }
                },
                () = wake.changed() => self.on_users_changed().await,
                () = sleep_until_opt(deadline) => self.on_deadline().await,
                () = shutdown.cancelled() => {
                    self.deactivate_all().await;
                    break "server shutting down";
                }
            };
            if step.is_err() {
                break "proxy stopped reading";
            }
        };
        let dropped = self.registry.drain().len();
        self.ctx.metrics.subscriptions.dec_by(dropped as i64);
        self.ctx.metrics.sessions.dec();
        self.ctx.cache.unregister_session(self.key);
        info!(reason = outcome, dropped, "proxy session closed");
    }

    async fn on_message(&mut self, msg: ProxyMessage) -> Result<(), PeerGone> {
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
                    let follow_up = match self.registry.get_mut(&d.subscription_id) {
                        Some(sub) => {
                            sub.in_flight = false;
                            sub.pending || sub.owed
                        }
                        None => false,
                    };
                    if follow_up {
                        return self.send_state(&d.subscription_id, false).await;
                    }
                } else if self.drop_sub(&d.subscription_id) {
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

    async fn on_subscribe(&mut self, s: v1::Subscribe) -> Result<(), PeerGone> {
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
        };
        let granted = match self.ctx.policy.admit(&req) {
            Ok(g) => g,
            Err(rejection) => return self.reject(&id, s.request_id, &rejection).await,
        };
        self.pending.insert(id.clone(), s.request_id);
        let cache = self.ctx.cache.clone();
        let key = self.key;
        let request_id = s.request_id;
        let first_version = s.resume_version.map_or(0, |v| v.saturating_add(1));
        self.loads.spawn(async move {
            let result = cache.attach(key, &req.subscriber).await;
            Loaded {
                id,
                subscriber: req.subscriber,
                request_id,
                granted,
                first_version,
                result,
            }
        });
        Ok(())
    }

    async fn on_refresh(&mut self, r: v1::Refresh) -> Result<(), PeerGone> {
        let id = r.subscription_id;
        if !self.registry.contains(&id) {
            return self
                .reject(&id, r.request_id, &Rejection::NoSuchSubscription)
                .await;
        }
        let granted = match self.ctx.policy.grant(r.expires) {
            Ok(g) => g,
            Err(rejection) => return self.reject(&id, r.request_id, &rejection).await,
        };
        self.send_answer(&id, r.request_id, AnswerStatus::Ok, granted, 0, "")
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

    async fn on_loaded(&mut self, loaded: Loaded) -> Result<(), PeerGone> {
        let Loaded {
            id,
            subscriber,
            request_id,
            granted,
            first_version,
            result,
        } = loaded;
        let still_wanted = self.pending.remove(&id).is_some();
        let doc = match result {
            Ok(doc) => doc,
            Err(e) => {
                self.ctx.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "directory read failed");
                if !still_wanted {
                    return Ok(());
                }
                return self.reject(&id, request_id, &Rejection::Unavailable).await;
            }
        };
        if !still_wanted {
            self.ctx.cache.detach(self.key, &subscriber); // unsubscribed while loading
            return Ok(());
        }
        let now = Instant::now();
        self.send_answer(&id, request_id, AnswerStatus::Ok, granted, 0, "")
            .await?;
        info!(subscription.id = %id, %subscriber, granted, "subscription accepted");
        let mut sub = Subscription::new(
            subscriber.clone(),
            now + Duration::from_secs(granted.into()),
            first_version,
        );
        if granted == 0 {
            // A fetch: one NOTIFY with the state, terminated at once.
            self.ctx.cache.detach(self.key, &subscriber);
            let full =
                ConferenceList::full(subscriber, sub.take_version(), doc.conferences.to_vec());
            let version = full.version;
            return self
                .send_notification(
                    &id,
                    version,
                    SubscriptionState::Terminated,
                    TerminationReason::Timeout,
                    0,
                    Some(full),
                )
                .await;
        }
        self.registry.insert(id.clone(), sub);
        self.ctx.metrics.subscriptions.inc();
        self.send_state(&id, true).await
    }

    /// Users whose lists changed: each of their subscriptions gets the new state (subject
    /// to flow and rate control).
    async fn on_users_changed(&mut self) -> Result<(), PeerGone> {
        for user in self.wake.take() {
            for id in self.registry.subs_of(&user) {
                self.send_state(&id, false).await?;
            }
        }
        Ok(())
    }

    async fn on_deadline(&mut self) -> Result<(), PeerGone> {
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
    async fn send_state(&mut self, id: &str, owed: bool) -> Result<(), PeerGone> {
        let now = Instant::now();
        let Some(user) = self.registry.get(id).map(|s| s.subscriber.clone()) else {
            return Ok(());
        };
        let Some(latest) = self.ctx.cache.current(&user) else {
            return Ok(());
        };
        let policy = self.ctx.notify_policy;
        let Some(sub) = self.registry.get_mut(id) else {
            return Ok(());
        };
        let expires = sub.remaining_secs(now);
        match subscription::plan(sub, &latest.conferences, now, owed, policy) {
            Plan::Nothing => Ok(()),
            Plan::Defer(at) => {
                self.registry.schedule_send(id, at);
                Ok(())
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
    }

    async fn terminate(
        &mut self,
        id: &str,
        sub: &mut Subscription,
        reason: TerminationReason,
    ) -> Result<(), PeerGone> {
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
    ) -> Result<(), PeerGone> {
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

    async fn reject(&mut self, id: &str, request_id: u64, r: &Rejection) -> Result<(), PeerGone> {
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
    ) -> Result<(), PeerGone> {
        self.ctx
            .metrics
            .answers
            .get_or_create(&crate::metrics::StatusLabel::new(status))
            .inc();
        self.send(server_message::Kind::Answer(Answer {
            subscription_id: id.to_owned(),
            request_id,
            status: status.into(),
            granted_expires,
            min_expires,
            challenge: None,
            reason: reason.to_owned(),
        }))
        .await
    }

    async fn send(&mut self, kind: server_message::Kind) -> Result<(), PeerGone> {
        self.out
            .send(Ok(ServerMessage { kind: Some(kind) }))
            .await
            .map_err(|_| PeerGone)
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
