//! One proxy session's subscriptions, sans-IO: the state machine that `api`'s session task
//! runs.
//!
//! [`Session::handle`] takes what happened ([`Input`]: a request of the proxy, the end of a
//! sign-in or directory load the machine asked for, users whose lists changed, an admin
//! command, a deadline, shutdown) at an instant given on both clocks ([`Now`]), and returns
//! what to do ([`Output`]), in order: Answers and Notifications to send (an Answer always
//! before the Notification it leads to), sign-ins and loads to start, cache attachments to
//! release. Its timer is [`Session::next_deadline`]: feed [`Input::Deadline`] then.
//!
//! It owns the initial SUBSCRIBEs waiting for their sign-in and load, the refreshes queued
//! behind one whose credentials are being verified, and the live subscriptions
//! ([`Registry`]); each [`Subscription`] owns its delivery state. The one shared thing it
//! reads is the per-user documents, through [`Documents`] (the cache; a map in tests). No
//! sockets, no tasks, no clock.
//!
//! A re-attached subscription (`resume_version = v`, moved here from another server) is
//! admitted like any other; its first Notification is full state with version v + 1, so
//! the client's versions stay contiguous.

#[cfg(test)]
mod tests;

use crate::admin::SubscriptionInfo;
use crate::auth::{Credentials, Label, Outcome, Verdict, loggable};
use crate::cache::{AttachError, Cache, UserDoc};
use crate::directory::DirectoryError;
use crate::metrics::{AuthLabel, Metrics};
use crate::subscription::{
    Delivered, NotifyPolicy, Plan, Policy, Registry, Rejection, SubscribeRequest, Subscription,
    Window, same_aor,
};
use document::ConferenceList;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Refreshes of one subscription waiting behind one whose credentials are being verified;
/// more are answered 503 (an honest client has one refresh in flight).
pub const MAX_QUEUED_REFRESHES: usize = 8;
/// How long a fetch (`Expires: 0`) may take to send its state, in parts when large.
pub const FETCH_LIFETIME: Duration = Duration::from_secs(60);
/// Reason of the per-user subscription cap's 403.
const TOO_MANY: &str = "too many subscriptions for this user";

/// An instant on both clocks: the monotonic one for expiry and rate control, the wall clock
/// for windows, admission times and commit-to-notify latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic.
    pub at: Instant,
    /// Wall clock.
    pub wall: SystemTime,
}

impl Now {
    /// Both clocks, read now (the shell's job; tests pass fixed values).
    pub fn system() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `d` later on both clocks.
    #[must_use]
    pub fn after(self, d: Duration) -> Self {
        Self {
            at: self.at + d,
            wall: self.wall + d,
        }
    }

    fn utc(self) -> chrono::DateTime<chrono::Utc> {
        self.wall.into()
    }

    fn unix(self) -> u64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Where the machine reads each user's current list (shared by every session).
pub trait Documents {
    /// The user's current document, `None` when not cached.
    fn current(&self, user: &str) -> Option<Arc<UserDoc>>;
}

impl Documents for Cache {
    fn current(&self, user: &str) -> Option<Arc<UserDoc>> {
        Cache::current(self, user)
    }
}

/// A fixed set of documents (tests, fuzzing).
impl Documents for HashMap<String, Arc<UserDoc>> {
    fn current(&self, user: &str) -> Option<Arc<UserDoc>> {
        self.get(user).cloned()
    }
}

/// What a session needs of the server's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Admission and expiry rules.
    pub policy: Policy,
    /// Partial/full and rate-control policy.
    pub notify_policy: NotifyPolicy,
    /// The window of subscriptions that ask for none.
    pub default_window: Window,
    /// Sign-in is on (`--auth`): credentials are verified, a request without any is
    /// challenged unless its flow identity is trusted.
    pub auth: bool,
    /// `Subscribe.flow_identity` is honoured (the proxy hop is authenticated).
    pub trust_flow_identity: bool,
    /// The proxy's address, as the admin API shows it.
    pub proxy: String,
}

/// Names one sign-in or load the machine asked for; the shell reports its end with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// A new subscription: the domain form of `conflist.v1.Subscribe`.
#[derive(Debug, Clone)]
pub struct Subscribe {
    /// The proxy's subscription id.
    pub id: String,
    /// Correlates the Answer.
    pub request_id: u64,
    /// What is asked for.
    pub request: SubscribeRequest,
    /// Credentials the SUBSCRIBE carried.
    pub credentials: Option<Credentials>,
    /// The identity the proxy says this flow already proved.
    pub flow_identity: Option<String>,
    /// The client's address (failed sign-ins are throttled by it).
    pub client_address: String,
    /// Re-attach: the last version the client has seen (from another server).
    pub resume_version: Option<u64>,
    /// The largest body the client's transport carries.
    pub max_body_bytes: Option<usize>,
}

/// A refresh (or `Expires: 0`) of a live subscription.
#[derive(Debug, Clone)]
pub struct Refresh {
    /// The subscription.
    pub id: String,
    /// Correlates the Answer.
    pub request_id: u64,
    /// Requested seconds; `None` = default.
    pub expires: Option<u32>,
    /// Credentials the refresh carried (verified again, against the bound identity).
    pub credentials: Option<Credentials>,
    /// The client's address.
    pub client_address: String,
}

/// How the client answered a Notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx.
    Accepted,
    /// A final failure: the dialog is gone.
    Rejected,
    /// No answer in time, or the connection went away.
    TimedOut,
}

/// The admin API's question to this session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminQuery {
    /// The live subscriptions, of one user (same address of record) or all.
    List {
        /// Only this user's.
        user: Option<String>,
    },
    /// Full state to every subscription of `user`.
    Resend {
        /// The address of record.
        user: String,
    },
}

/// What happened.
#[derive(Debug)]
pub enum Input {
    /// The proxy asks for a new subscription.
    Subscribe(Subscribe),
    /// The proxy refreshes one.
    Refresh(Refresh),
    /// The proxy ended one (the dialog is gone, or the subscription moved to another
    /// server): dropped without a Notification.
    Unsubscribe {
        /// The subscription.
        id: String,
    },
    /// The client answered the Notification of `version`.
    Delivered {
        /// The subscription.
        id: String,
        /// The Notification's version.
        version: u64,
        /// How it answered.
        outcome: Delivery,
    },
    /// A sign-in asked for by [`Output::Verify`] finished.
    Verified {
        /// Its ticket.
        ticket: Ticket,
        /// The verdict, or why the credentials could not be read.
        verdict: Result<Verdict, DirectoryError>,
    },
    /// A load asked for by [`Output::Load`] finished; on success the cache holds the user
    /// for this session.
    Loaded {
        /// Its ticket.
        ticket: Ticket,
        /// The outcome.
        result: Result<(), AttachError>,
    },
    /// These users' lists changed.
    UsersChanged(HashSet<String>),
    /// The admin API asks; answered by one [`Output::Admin`].
    Admin(AdminQuery),
    /// [`Session::next_deadline`] was reached.
    Deadline,
    /// The server is shutting down: every subscription ends (`deactivated`), every waiting
    /// SUBSCRIBE is answered 503, then [`Output::End`].
    Shutdown,
    /// The stream is gone: forget everything without a word.
    Closed,
}

/// What to do, in order.
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send this Answer.
    Answer(Answer),
    /// Send this Notification.
    Notify(Notification),
    /// Verify credentials, then report [`Input::Verified`].
    Verify(Verify),
    /// Attach `user` to this session in the cache (loading the list if it is not cached,
    /// refused over the per-user cap), then report [`Input::Loaded`].
    Load {
        /// Report with this.
        ticket: Ticket,
        /// Whose list.
        user: String,
    },
    /// One subscription of this session fewer needs `user` (detach it in the cache).
    Release {
        /// Whose list.
        user: String,
    },
    /// The answer to [`Input::Admin`].
    Admin(AdminAnswer),
    /// The session is over: deliver what was sent, then close the stream.
    End,
}

/// Credentials to verify (sign-in).
#[derive(Debug, PartialEq)]
pub struct Verify {
    /// Report with this.
    pub ticket: Ticket,
    /// What to verify.
    pub credentials: Credentials,
    /// Where they came from (throttling).
    pub client_address: String,
    /// A refresh's: the identity the subscription was created with; signing in as anyone
    /// else is a failure like a wrong password.
    pub bound: Option<String>,
}

/// The answer to a Subscribe or Refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The subscription.
    pub id: String,
    /// The request answered.
    pub request_id: u64,
    /// What it says.
    pub reply: Reply,
}

/// What an Answer says; `api` maps it to a status (and so a SIP status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Accepted for `granted` seconds (0: a fetch or an unsubscribe), signed in as
    /// `identity`.
    Ok {
        /// Granted seconds.
        granted: u32,
        /// The authenticated identity (`None` with authentication off).
        identity: Option<String>,
    },
    /// Refused by policy.
    Rejected(Rejection),
    /// Not signed in: 401 with a fresh challenge.
    Challenge {
        /// RFC 3261 §22.4.
        stale: bool,
    },
    /// Too many failed sign-ins: 503 with Retry-After.
    Throttled {
        /// Seconds.
        retry_after: u32,
    },
    /// A request the proxy should never send (a duplicate subscription id).
    Internal(&'static str),
}

/// A Notification of one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The subscription.
    pub id: String,
    /// Its version (per subscription, up by one each time).
    pub version: u64,
    /// Active or terminated.
    pub state: State,
    /// The document; `None` for a final Notification without a body.
    pub document: Option<ConferenceList>,
}

/// Subscription-State of a Notification (RFC 6665 §4.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Active, for `expires` more seconds.
    Active {
        /// Seconds left.
        expires: u32,
    },
    /// Ended, and why.
    Terminated(Reason),
}

/// Why a subscription ended (RFC 6665 §4.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Expired, unsubscribed, or a fetch answered.
    Timeout,
    /// The server is shutting down.
    Deactivated,
}

/// The admin API's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAnswer {
    /// The subscriptions asked for.
    List(Vec<SubscriptionInfo>),
    /// How many subscriptions were sent full state.
    Resent(usize),
}

/// An initial SUBSCRIBE between its arrival and its Answer.
#[derive(Debug)]
struct Pending {
    /// The sign-in or load in progress for it.
    ticket: Ticket,
    request_id: u64,
    request: SubscribeRequest,
    resume_version: Option<u64>,
    max_body_bytes: Option<usize>,
    /// Set once signed in and admitted: granted seconds and identity.
    admitted: Option<(u32, Option<String>)>,
}

/// A sign-in or load in progress.
#[derive(Debug)]
enum Job {
    /// The credentials of an initial SUBSCRIBE.
    SignIn {
        id: String,
        subscriber: String,
        username: Option<String>,
    },
    /// The list of an admitted SUBSCRIBE.
    Load { id: String, user: String },
    /// The credentials of a refresh (held here until verified).
    Refresh {
        refresh: Refresh,
        username: Option<String>,
    },
}

impl Job {
    /// The subscription the job is for.
    fn subscription(&self) -> &str {
        match self {
            Job::SignIn { id, .. } | Job::Load { id, .. } => id,
            Job::Refresh { refresh, .. } => &refresh.id,
        }
    }
}

/// The machine.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    metrics: Metrics,
    registry: Registry,
    /// Initial SUBSCRIBEs waiting for sign-in or their first document, by subscription id.
    pending: HashMap<String, Pending>,
    /// Subscriptions with a refresh whose credentials are being verified, and the refreshes
    /// queued behind it (answered in order).
    verifying: HashMap<String, VecDeque<Refresh>>,
    jobs: HashMap<Ticket, Job>,
    next_ticket: u64,
    out: Vec<Output>,
}

impl Session {
    /// An empty session.
    pub fn new(settings: Settings, metrics: Metrics) -> Self {
        Self {
            settings,
            metrics,
            registry: Registry::default(),
            pending: HashMap::new(),
            verifying: HashMap::new(),
            jobs: HashMap::new(),
            next_ticket: 0,
            out: Vec::new(),
        }
    }

    /// Live subscriptions.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// True when no subscription is live.
    pub fn is_empty(&self) -> bool {
        self.registry.is_empty()
    }

    /// A live subscription.
    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.registry.get(id)
    }

    /// Requests not answered yet: initial SUBSCRIBEs signing in or loading, refreshes being
    /// verified or queued behind one.
    pub fn unanswered(&self) -> usize {
        let verifying = self
            .jobs
            .values()
            .filter(|j| matches!(j, Job::Refresh { .. }))
            .count();
        self.pending.len() + verifying + self.verifying.values().map(VecDeque::len).sum::<usize>()
    }

    /// The subscription a sign-in or load in progress is for (its shell's logs carry it).
    pub fn job_subscription(&self, ticket: Ticket) -> Option<&str> {
        self.jobs.get(&ticket).map(Job::subscription)
    }

    /// When to feed [`Input::Deadline`]: the earliest expiry or deferred send.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.registry.next_deadline()
    }

    /// Handles `input` at `now`, reading users' lists from `docs`; returns what to do, in
    /// order.
    pub fn handle(&mut self, input: Input, now: Now, docs: &impl Documents) -> Vec<Output> {
        match input {
            Input::Subscribe(s) => self.on_subscribe(s),
            Input::Refresh(r) => self.on_refresh(r, now, docs),
            Input::Unsubscribe { id } => {
                self.pending.remove(&id);
                self.drop_sub(&id);
            }
            Input::Delivered {
                id,
                version,
                outcome,
            } => self.on_delivered(&id, version, outcome, now, docs),
            Input::Verified { ticket, verdict } => self.on_verified(ticket, verdict, now, docs),
            Input::Loaded { ticket, result } => self.on_loaded(ticket, result, now, docs),
            Input::UsersChanged(users) => {
                for user in users {
                    for id in self.registry.subs_of(&user) {
                        self.send_state(&id, false, now, docs);
                    }
                }
            }
            Input::Admin(query) => self.on_admin(query, now, docs),
            Input::Deadline => self.on_deadline(now, docs),
            Input::Shutdown => self.deactivate_all(),
            Input::Closed => {
                let dropped = self.registry.drain().len();
                self.metrics.subscriptions.dec_by(dropped as i64);
                self.pending.clear();
                self.verifying.clear();
                self.jobs.clear();
            }
        }
        std::mem::take(&mut self.out)
    }

    fn on_subscribe(&mut self, s: Subscribe) {
        let Subscribe {
            id,
            request_id,
            request,
            credentials,
            flow_identity,
            client_address,
            resume_version,
            max_body_bytes,
        } = s;
        if id.is_empty() || self.registry.contains(&id) || self.pending.contains_key(&id) {
            warn!(subscription.id = %id, "duplicate or empty subscription id");
            self.answer(id, request_id, Reply::Internal("duplicate subscription id"));
            return;
        }
        let pending = Pending {
            ticket: self.ticket(),
            request_id,
            request,
            resume_version,
            max_body_bytes,
            admitted: None,
        };
        if !self.settings.auth {
            // Authentication off: the From address (requester) must be the subscriber.
            return self.admit(id, pending, None);
        }
        if let Some(credentials) = credentials {
            let username = credentials.username().map(loggable);
            self.jobs.insert(
                pending.ticket,
                Job::SignIn {
                    id: id.clone(),
                    subscriber: pending.request.subscriber.clone(),
                    username,
                },
            );
            self.out.push(Output::Verify(Verify {
                ticket: pending.ticket,
                credentials,
                client_address,
                bound: None,
            }));
            self.pending.insert(id, pending);
            return;
        }
        // The flow vouches only for its own user: a SUBSCRIBE for another list on the same
        // connection (a gateway multiplexing users) is challenged, not refused.
        match flow_identity {
            Some(flow)
                if self.settings.trust_flow_identity
                    && same_aor(&flow, &pending.request.subscriber) =>
            {
                self.admit(id, pending, Some(flow));
            }
            flow => {
                if flow.is_some() && !self.settings.trust_flow_identity {
                    debug!(
                        subscription.id = %id,
                        "flow identity ignored: the proxy hop is not authenticated"
                    );
                }
                self.count_auth(Label::Challenged);
                debug!(
                    subscription.id = %id,
                    subscriber = %pending.request.subscriber,
                    auth.outcome = Label::Challenged.as_str(),
                    "no credentials: challenged"
                );
                self.answer(id, request_id, Reply::Challenge { stale: false });
            }
        }
    }

    /// Admission by policy for `identity` (who signed in; `None` with authentication off),
    /// then the load.
    fn admit(&mut self, id: String, mut pending: Pending, identity: Option<String>) {
        let admitted = match self
            .settings
            .policy
            .admit(&pending.request, identity.as_deref())
        {
            // A moved subscription keeps what is left of its duration, however short: the
            // client's dialog never asked for less than the minimum, time did.
            Err(Rejection::IntervalTooBrief { .. }) if pending.resume_version.is_some() => {
                Ok(pending.request.expires.unwrap_or(1).max(1))
            }
            other => other,
        };
        match admitted {
            Err(rejection) => self.reject(id, pending.request_id, rejection),
            Ok(granted) => {
                let ticket = self.ticket();
                let user = pending.request.subscriber.clone();
                pending.ticket = ticket;
                pending.admitted = Some((granted, identity));
                self.jobs.insert(
                    ticket,
                    Job::Load {
                        id: id.clone(),
                        user: user.clone(),
                    },
                );
                self.pending.insert(id, pending);
                self.out.push(Output::Load { ticket, user });
            }
        }
    }

    fn on_verified(
        &mut self,
        ticket: Ticket,
        verdict: Result<Verdict, DirectoryError>,
        now: Now,
        docs: &impl Documents,
    ) {
        match self.jobs.remove(&ticket) {
            Some(Job::SignIn {
                id,
                subscriber,
                username,
            }) => self.on_signed_in(ticket, id, &subscriber, username.as_deref(), verdict),
            Some(Job::Refresh { refresh, username }) => {
                self.on_refresh_verified(refresh, username.as_deref(), verdict, now, docs);
            }
            Some(job @ Job::Load { .. }) => {
                debug!(subscription.id = %job.subscription(), ?ticket, "a verification reported for a load; ignored");
                self.jobs.insert(ticket, job);
            }
            None => debug!(?ticket, "a verification nobody waits for; ignored"),
        }
    }

    /// The sign-in of an initial SUBSCRIBE finished (counted even if it was unsubscribed
    /// meanwhile).
    fn on_signed_in(
        &mut self,
        ticket: Ticket,
        id: String,
        subscriber: &str,
        username: Option<&str>,
        verdict: Result<Verdict, DirectoryError>,
    ) {
        let wanted = self.pending.get(&id).is_some_and(|p| p.ticket == ticket);
        let verdict = match verdict {
            Ok(v) => v,
            Err(e) => {
                self.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "directory read failed");
                if wanted && let Some(p) = self.pending.remove(&id) {
                    self.reject(id, p.request_id, Rejection::Unavailable);
                }
                return;
            }
        };
        self.count_auth(verdict.label);
        info!(
            subscription.id = %id,
            %subscriber,
            username = username.unwrap_or(""),
            auth.outcome = verdict.label.as_str(),
            "sign-in"
        );
        if !wanted {
            return;
        }
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match verdict.outcome {
            Outcome::Authenticated { identity } => self.admit(id, pending, Some(identity)),
            other => self.auth_answer(id, pending.request_id, &other),
        }
    }

    fn on_loaded(
        &mut self,
        ticket: Ticket,
        result: Result<(), AttachError>,
        now: Now,
        docs: &impl Documents,
    ) {
        let (id, user) = match self.jobs.remove(&ticket) {
            Some(Job::Load { id, user }) => (id, user),
            Some(job) => {
                debug!(subscription.id = %job.subscription(), ?ticket, "a load reported for a sign-in; ignored");
                self.jobs.insert(ticket, job);
                return;
            }
            None => {
                debug!(?ticket, "a load nobody waits for; ignored");
                return;
            }
        };
        let wanted = self.pending.get(&id).is_some_and(|p| p.ticket == ticket);
        match result {
            Err(AttachError::Directory(e)) => {
                self.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "directory read failed");
                if wanted && let Some(p) = self.pending.remove(&id) {
                    self.reject(id, p.request_id, Rejection::Unavailable);
                }
            }
            Err(AttachError::TooMany) => {
                if wanted && let Some(p) = self.pending.remove(&id) {
                    self.reject(id, p.request_id, Rejection::Forbidden(TOO_MANY));
                }
            }
            // Unsubscribed while loading.
            Ok(()) if !wanted => self.out.push(Output::Release { user }),
            Ok(()) => {
                if let Some(p) = self.pending.remove(&id) {
                    self.accept(&id, p, now, docs);
                }
            }
        }
    }

    /// Signed in, admitted and loaded: the Answer, then the first Notification.
    fn accept(&mut self, id: &str, pending: Pending, now: Now, docs: &impl Documents) {
        let Pending {
            request_id,
            request,
            resume_version,
            max_body_bytes,
            admitted,
            ..
        } = pending;
        let Some((granted, identity)) = admitted else {
            return;
        };
        self.answer(
            id.to_owned(),
            request_id,
            Reply::Ok {
                granted,
                identity: identity.clone(),
            },
        );
        info!(subscription.id = %id, subscriber = %request.subscriber, granted, "subscription accepted");
        // A fetch (RFC 6665 §4.4.3) lives only until its state has gone out, which takes
        // more than one NOTIFY for a large list: it ends with the last part, or at
        // FETCH_LIFETIME.
        let fetch = granted == 0;
        let lifetime = if fetch {
            FETCH_LIFETIME
        } else {
            Duration::from_secs(granted.into())
        };
        // Re-attached: the client holds `v`; full state as v + 1 keeps its versions
        // contiguous.
        let first_version = resume_version.map_or(0, |v| v.saturating_add(1));
        let sub = Subscription::new(request.subscriber, now.at + lifetime, first_version)
            .with_identity(identity)
            .with_window(request.window.or(self.settings.default_window))
            .with_max_body_bytes(max_body_bytes)
            .with_fetch(fetch)
            .with_since(now.unix());
        self.registry.insert(id.to_owned(), sub);
        self.metrics.subscriptions.inc();
        if let Some(v) = resume_version {
            self.metrics.subscriptions_resumed.inc();
            info!(subscription.id = %id, resume_version = v, "subscription re-attached");
        }
        self.send_state(id, true, now, docs);
    }

    fn on_refresh(&mut self, r: Refresh, now: Now, docs: &impl Documents) {
        if let Some(queue) = self.verifying.get_mut(&r.id) {
            if queue.len() >= MAX_QUEUED_REFRESHES {
                return self.reject(r.id, r.request_id, Rejection::Unavailable);
            }
            queue.push_back(r);
            return;
        }
        self.start_refresh(r, now, docs);
    }

    /// A refresh with credentials is verified first (the subscription's later refreshes
    /// queue behind it); one without is applied at once.
    fn start_refresh(&mut self, mut r: Refresh, now: Now, docs: &impl Documents) {
        let credentials = if self.settings.auth && self.registry.contains(&r.id) {
            r.credentials.take()
        } else {
            None
        };
        let Some(credentials) = credentials else {
            return self.apply_refresh(r, now, docs);
        };
        self.verifying.entry(r.id.clone()).or_default();
        let ticket = self.ticket();
        let bound = self
            .registry
            .get(&r.id)
            .and_then(|s| s.identity().map(str::to_owned));
        let username = credentials.username().map(loggable);
        self.out.push(Output::Verify(Verify {
            ticket,
            credentials,
            client_address: r.client_address.clone(),
            bound,
        }));
        self.jobs.insert(
            ticket,
            Job::Refresh {
                refresh: r,
                username,
            },
        );
    }

    fn on_refresh_verified(
        &mut self,
        r: Refresh,
        username: Option<&str>,
        verdict: Result<Verdict, DirectoryError>,
        now: Now,
        docs: &impl Documents,
    ) {
        let id = r.id.clone();
        match verdict {
            Err(e) => {
                self.metrics.directory_errors.inc();
                warn!(subscription.id = %id, error = %e, "credentials lookup failed");
                self.reject(r.id, r.request_id, Rejection::Unavailable);
            }
            Ok(v) => {
                self.count_auth(v.label);
                info!(
                    subscription.id = %id,
                    subscriber = self.registry.get(&id).map_or("", |s| s.subscriber()),
                    username = username.unwrap_or(""),
                    auth.outcome = v.label.as_str(),
                    "refresh sign-in"
                );
                match v.outcome {
                    // The shell already held the identity to the bound one.
                    Outcome::Authenticated { .. } => self.apply_refresh(r, now, docs),
                    other => self.auth_answer(r.id, r.request_id, &other),
                }
            }
        }
        self.drain_refreshes(&id, now, docs);
    }

    /// Applies the refreshes queued behind a verified one, up to the next that needs
    /// verifying.
    fn drain_refreshes(&mut self, id: &str, now: Now, docs: &impl Documents) {
        loop {
            let Some(queue) = self.verifying.get_mut(id) else {
                return;
            };
            let Some(next) = queue.pop_front() else {
                self.verifying.remove(id);
                return;
            };
            let needs_verifying =
                self.settings.auth && self.registry.contains(id) && next.credentials.is_some();
            if needs_verifying {
                return self.start_refresh(next, now, docs);
            }
            self.apply_refresh(next, now, docs);
        }
    }

    /// A refresh whose credentials (if any) are settled: new expiry, or the end.
    fn apply_refresh(&mut self, r: Refresh, now: Now, docs: &impl Documents) {
        let Refresh {
            id,
            request_id,
            expires,
            ..
        } = r;
        let Some(identity) = self
            .registry
            .get(&id)
            .map(|s| s.identity().map(str::to_owned))
        else {
            return self.reject(id, request_id, Rejection::NoSuchSubscription);
        };
        let granted = match self.settings.policy.grant(expires) {
            Ok(g) => g,
            Err(rejection) => return self.reject(id, request_id, rejection),
        };
        self.answer(id.clone(), request_id, Reply::Ok { granted, identity });
        if granted == 0 {
            // Unsubscribe (RFC 6665 §4.1.2.3): the final NOTIFY ends the subscription.
            if let Some(mut sub) = self.registry.remove(&id) {
                self.released(sub.subscriber().to_owned());
                self.terminate(&id, &mut sub, Reason::Timeout);
            }
            return;
        }
        self.registry
            .refresh(&id, now.at, Duration::from_secs(granted.into()));
        // RFC 6665 §4.2.1.2: every refresh is answered by a NOTIFY (an empty partial when
        // the client is current).
        self.send_state(&id, true, now, docs);
    }

    fn on_delivered(
        &mut self,
        id: &str,
        version: u64,
        outcome: Delivery,
        now: Now,
        docs: &impl Documents,
    ) {
        if outcome != Delivery::Accepted {
            if self.drop_sub(id) {
                // Whatever version it answers, the proxy has ended the dialog.
                debug!(subscription.id = %id, ?outcome, "subscriber refused a notification; dropped");
            }
            return;
        }
        let Some(sub) = self.registry.get_mut(id) else {
            return;
        };
        match sub.delivered(version) {
            Delivered::Current { follow_up: true } => self.send_state(id, false, now, docs),
            Delivered::Current { follow_up: false } => {}
            Delivered::Stale => debug!(
                subscription.id = %id,
                version,
                in_flight = ?sub.in_flight(),
                "Delivered for a notification not in flight; ignored"
            ),
        }
    }

    /// A command of the admin API: one [`Output::Admin`], then any Notifications.
    fn on_admin(&mut self, query: AdminQuery, now: Now, docs: &impl Documents) {
        match query {
            AdminQuery::List { user } => {
                let list = self
                    .registry
                    .iter()
                    .filter(|(_, sub)| {
                        user.as_deref()
                            .is_none_or(|u| same_aor(u, sub.subscriber()))
                    })
                    .map(|(id, sub)| SubscriptionInfo {
                        id: id.to_owned(),
                        user: sub.subscriber().to_owned(),
                        proxy: self.settings.proxy.clone(),
                        since: sub.since(),
                        expires: sub.remaining_secs(now.at),
                        version: sub.last_version(),
                        last_delivered: sub.last_delivered(),
                    })
                    .collect();
                self.out.push(Output::Admin(AdminAnswer::List(list)));
            }
            AdminQuery::Resend { user } => {
                let ids: Vec<String> = self
                    .registry
                    .iter()
                    .filter(|(_, sub)| same_aor(&user, sub.subscriber()))
                    .map(|(id, _)| id.to_owned())
                    .collect();
                for id in &ids {
                    if let Some(sub) = self.registry.get_mut(id) {
                        // Forget what the client holds: the next Notification is full state
                        // (after the one in flight, if any).
                        sub.forget_sent();
                    }
                }
                self.out.push(Output::Admin(AdminAnswer::Resent(ids.len())));
                info!(subscriber = %user, subscriptions = ids.len(), "admin: full resend");
                for id in &ids {
                    self.send_state(id, true, now, docs);
                }
            }
        }
    }

    fn on_deadline(&mut self, now: Now, docs: &impl Documents) {
        for (id, mut sub) in self.registry.take_expired(now.at) {
            self.released(sub.subscriber().to_owned());
            info!(subscription.id = %id, subscriber = %sub.subscriber(), "subscription expired");
            self.terminate(&id, &mut sub, Reason::Timeout);
        }
        for id in self.registry.take_due_sends(now.at) {
            self.send_state(&id, false, now, docs);
        }
    }

    /// Sends what `id`'s client should now see, if anything (see [`Subscription::plan`]).
    fn send_state(&mut self, id: &str, owed: bool, now: Now, docs: &impl Documents) {
        let Some(sub) = self.registry.get_mut(id) else {
            return;
        };
        let Some(latest) = docs.current(sub.subscriber()) else {
            return;
        };
        let wall = now.utc();
        let expires = sub.remaining_secs(now.at);
        sub.note_revision(latest.revision, latest.changed_at);
        let plan = sub.plan(
            &latest.conferences,
            now.at,
            wall,
            owed,
            self.settings.notify_policy,
        );
        let fetch = sub.is_fetch();
        let review = sub.review_at();
        let carried = match plan {
            Plan::Send(_) => sub.take_unsent_change(),
            _ => None,
        };
        if let Some(committed) = carried {
            let latency = now.wall.duration_since(committed).unwrap_or_default();
            self.metrics.commit_to_notify.observe(latency.as_secs_f64());
        }
        // Time alone can change what a windowed subscription shows: look again then.
        if let Some(review) = review {
            let wait = (review - wall).to_std().unwrap_or_default();
            self.registry.schedule_send(id, now.at + wait);
        }
        match plan {
            Plan::Nothing => {}
            Plan::Defer(at) => self.registry.schedule_send(id, at),
            Plan::Send(doc) if fetch && doc.complete => {
                // The last part of a fetch ends it.
                if self.drop_sub(id) {
                    info!(subscription.id = %id, "fetch answered");
                }
                self.notify(
                    id,
                    doc.version,
                    State::Terminated(Reason::Timeout),
                    Some(doc),
                );
            }
            Plan::Send(doc) => {
                self.notify(id, doc.version, State::Active { expires }, Some(doc));
            }
        }
    }

    /// Removes a live subscription; true if it was live.
    fn drop_sub(&mut self, id: &str) -> bool {
        match self.registry.remove(id) {
            Some(sub) => {
                self.released(sub.subscriber().to_owned());
                true
            }
            None => false,
        }
    }

    fn released(&mut self, user: String) {
        self.metrics.subscriptions.dec();
        self.out.push(Output::Release { user });
    }

    /// Shutdown: 503 to every waiting SUBSCRIBE, `deactivated` to every subscription.
    fn deactivate_all(&mut self) {
        let pending: Vec<(String, Pending)> = self.pending.drain().collect();
        for (id, p) in pending {
            self.reject(id, p.request_id, Rejection::Unavailable);
        }
        for (id, mut sub) in self.registry.drain() {
            self.metrics.subscriptions.dec();
            self.terminate(&id, &mut sub, Reason::Deactivated);
        }
        self.out.push(Output::End);
    }

    /// The final Notification of `sub`, without a body.
    fn terminate(&mut self, id: &str, sub: &mut Subscription, reason: Reason) {
        let version = sub.take_version();
        self.notify(id, version, State::Terminated(reason), None);
    }

    fn notify(&mut self, id: &str, version: u64, state: State, document: Option<ConferenceList>) {
        self.out.push(Output::Notify(Notification {
            id: id.to_owned(),
            version,
            state,
            document,
        }));
    }

    fn reject(&mut self, id: String, request_id: u64, rejection: Rejection) {
        debug!(subscription.id = %id, %rejection, "request rejected");
        self.answer(id, request_id, Reply::Rejected(rejection));
    }

    /// The answer to a request that did not sign in: a challenge, or throttled.
    fn auth_answer(&mut self, id: String, request_id: u64, outcome: &Outcome) {
        let reply = match outcome {
            Outcome::Challenge { stale } => Reply::Challenge { stale: *stale },
            Outcome::Throttled { retry_after } => Reply::Throttled {
                retry_after: *retry_after,
            },
            // Not reached: only failures are answered here.
            Outcome::Authenticated { .. } => Reply::Internal(""),
        };
        self.answer(id, request_id, reply);
    }

    fn answer(&mut self, id: String, request_id: u64, reply: Reply) {
        self.out.push(Output::Answer(Answer {
            id,
            request_id,
            reply,
        }));
    }

    fn count_auth(&self, label: Label) {
        self.metrics
            .auth
            .get_or_create(&AuthLabel::new(label))
            .inc();
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }
}
