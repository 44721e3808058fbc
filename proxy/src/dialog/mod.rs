//! The SIP side of every subscription on one connection, sans-IO.
//!
//! [`Dialogs`] takes SIP requests and responses from the client, Answers and Notifications
//! from the notifier, and the time; it returns [`Action`]s for the shell in
//! `transport::connection` to carry out. It owns each dialog's tags, CSeqs, route set and
//! remote target (RFC 3261 §12), and the NOTIFY client transaction towards the client: one in
//! flight per dialog, newer notifications queued behind it, CSeq strictly increasing, Timer F
//! as a deadline (RFC 3261 §17.1.2.2; reliable transports never retransmit). An error answer
//! with `Retry-After` is not a failed NOTIFY (RFC 6665 §4.2.2): the same notification goes out
//! again after that delay, as a new transaction, a bounded number of times ([`NotifyRetry`]).
//! No I/O, no clock, no global randomness: the caller passes `now` and a seed.

mod build;
#[cfg(test)]
mod tests;

use crate::notifier::{
    Answer, Challenge, Command, Credentials, Event, Notification, Outcome, Reason, State,
    SubscriptionId, Verdict, Window,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sip::{
    Event as EventHeader, HeaderName, Message, Method, NameAddr, Request, Response, StatusCode, Uri,
};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

/// The event package served.
pub const EVENT_PACKAGE: &str = "conference-list";
/// Its body type.
pub const CONTENT_TYPE: &str = "application/conference-list+xml";
/// Methods this element accepts as a UAS.
pub const ALLOW: &str = "SUBSCRIBE, OPTIONS";
/// Notifications queued behind the one in flight, per dialog.
pub const MAX_QUEUED_NOTIFICATIONS: usize = 16;
/// SUBSCRIBEs of one dialog waiting for the notifier at once.
pub const MAX_PENDING_REQUESTS: usize = 4;
/// Default [`NotifyRetry::max_retry_after`] (`--notify-max-retry-after`).
pub const DEFAULT_NOTIFY_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Default [`NotifyRetry::max_retries`] (`--notify-retries`).
pub const DEFAULT_NOTIFY_RETRIES: u32 = 3;

/// How a NOTIFY answered with an error carrying `Retry-After` is retried. RFC 6665 §4.2.2
/// counts only a timeout or an error without Retry-After as a failed NOTIFY; the bounds keep
/// a client that always asks for more time from holding its dialog forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyRetry {
    /// Longest Retry-After honoured; an answer asking for longer ends the subscription.
    pub max_retry_after: Duration,
    /// Retries of one notification; the next error answer ends the subscription. Zero
    /// ends it at the first error, with or without Retry-After.
    pub max_retries: u32,
}

impl Default for NotifyRetry {
    fn default() -> Self {
        Self {
            max_retry_after: DEFAULT_NOTIFY_MAX_RETRY_AFTER,
            max_retries: DEFAULT_NOTIFY_RETRIES,
        }
    }
}

/// Settings shared by every connection's dialogs.
#[derive(Debug, Clone)]
pub struct DialogConfig {
    /// `host:port` this proxy puts in Via and Contact.
    pub local_host: String,
    /// Via transport token, e.g. `WS`.
    pub via_transport: &'static str,
    /// `transport=` parameter of our Contact, e.g. `ws`.
    pub contact_transport: &'static str,
    /// Timer F for NOTIFY: no final answer by then = failed delivery.
    pub notify_timeout: Duration,
    /// Most dialogs on one connection (a gateway multiplexes many).
    pub max_dialogs: usize,
    /// Most bytes of Record-Route a dialog stores as its route set (RFC 3261 §12.1.1).
    pub max_route_set_size: usize,
    /// How long an identity the notifier authenticated on this flow is offered for later
    /// SUBSCRIBEs of the flow without credentials; zero turns flow identities off (for
    /// gateways that multiplex many users on one connection).
    pub flow_identity_lifetime: Duration,
    /// Retrying NOTIFYs answered with an error and `Retry-After`.
    pub notify_retry: NotifyRetry,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this message to the client on this connection.
    Send(Message),
    /// Route notifier events for `sub` to this connection; pick its notifier by `subscriber`.
    /// Always precedes the subscription's first command.
    Route {
        /// The new subscription.
        sub: SubscriptionId,
        /// Whose list (the notifier is chosen by it).
        subscriber: String,
    },
    /// Tell the notifier.
    Upstream(Command),
    /// The dialog is gone: stop routing `sub` here.
    Unroute(SubscriptionId),
    /// A limit refused a request (its response is in the actions too): log and count it.
    Refused(Limit),
    /// The client answered a NOTIFY with an error and `Retry-After`: the same notification
    /// goes out again `after` this delay (at the deadline in [`Dialogs::next_deadline`]).
    /// Log and count it.
    NotifyRetry {
        /// The subscription.
        sub: SubscriptionId,
        /// The delay the client asked for.
        after: Duration,
    },
}

/// The per-dialog limits the core enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_route_set_size`.
    RouteSet,
    /// `max_dialogs`.
    DialogsPerConnection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The initial SUBSCRIBE awaits its Answer.
    Establishing,
    /// 200 sent.
    Active,
}

/// The dialog's one notification between the notifier and the client: a NOTIFY transaction
/// (Timer F at `deadline`), or one waiting until `deadline` to be sent again.
#[derive(Debug)]
struct InFlight {
    /// The transaction's branch; `None` while waiting to retry after `Retry-After`.
    branch: Option<String>,
    cseq: u32,
    version: u64,
    deadline: Instant,
    terminal: bool,
    /// What was sent, for a retry.
    note: Notification,
    /// When it was first sent: a retry counts its `expires` down from there.
    first_sent: Instant,
    /// Retries so far.
    retries: u32,
}

#[derive(Debug)]
struct Dialog {
    phase: Phase,
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// Our side: the SUBSCRIBE's To, with our tag.
    local: NameAddr,
    /// Their side: the SUBSCRIBE's From, with their tag.
    remote: NameAddr,
    remote_target: Uri,
    route_set: Vec<String>,
    /// The Event header value to echo (package and id).
    event: String,
    local_cseq: u32,
    remote_cseq: u32,
    /// Requests waiting for the notifier's Answer, by request id.
    pending: Vec<(u64, Request)>,
    in_flight: Option<InFlight>,
    queue: VecDeque<Notification>,
}

/// Every dialog of one connection.
#[derive(Debug)]
pub struct Dialogs {
    cfg: DialogConfig,
    id_prefix: String,
    rng: SmallRng,
    next_sub: u64,
    next_request: u64,
    dialogs: HashMap<SubscriptionId, Dialog>,
    /// (Call-ID, our tag) → subscription.
    by_key: HashMap<(String, String), SubscriptionId>,
    /// NOTIFY branch → subscription.
    by_branch: HashMap<String, SubscriptionId>,
    deadlines: BTreeSet<(Instant, SubscriptionId)>,
    /// The identity the notifier authenticated on this flow (DESIGN: identity binds to the
    /// flow that created it) and until when it is offered; later SUBSCRIBEs without
    /// credentials on this flow carry it. A refused sign-in on the flow forgets it.
    flow_identity: Option<(String, Instant)>,
    /// The client's address, passed on for per-address throttling of failed sign-ins.
    client_address: String,
}

impl Dialogs {
    /// Dialogs of one connection. `id_prefix` makes subscription ids unique proxy-wide; `seed`
    /// feeds tags and branches (the shell passes OS randomness, tests a constant).
    pub fn new(cfg: DialogConfig, id_prefix: String, seed: u64) -> Self {
        Self {
            cfg,
            id_prefix,
            rng: SmallRng::seed_from_u64(seed),
            next_sub: 0,
            next_request: 0,
            dialogs: HashMap::new(),
            by_key: HashMap::new(),
            by_branch: HashMap::new(),
            deadlines: BTreeSet::new(),
            flow_identity: None,
            client_address: String::new(),
        }
    }

    /// Records the client's address (after any trusted load balancer's X-Forwarded-For).
    pub fn set_client_address(&mut self, addr: String) {
        self.client_address = addr;
    }

    /// The identity this flow has proved, if it is still offered at `now`.
    pub fn flow_identity(&self, now: Instant) -> Option<&str> {
        self.flow_identity
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(id, _)| id.as_str())
    }

    /// Number of dialogs.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// The earliest NOTIFY transaction deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// A request from the client (already parsed; Via already stamped with received/rport).
    pub fn on_request(&mut self, req: Request, now: Instant) -> Vec<Action> {
        if req.method == Method::Ack {
            return Vec::new(); // never answered (RFC 3261 §17.2.1)
        }
        if let Err(e) = sip::validate::check_request(&req) {
            return vec![reply(
                &req,
                StatusCode::BAD_REQUEST,
                Some(&e.to_string()),
                |_| {},
            )];
        }
        let to_tag = to_tag(&req);
        match (&req.method, to_tag) {
            (Method::Subscribe, None) => self.on_initial_subscribe(req, now),
            (Method::Subscribe, Some(tag)) => self.on_refresh(req, &tag, now),
            (Method::Options, None) => {
                // RFC 3261 §8.2.2.1 and §8.2.2.3 hold for every request (RFC 4475 §3.3.2,
                // §3.3.3, §3.3.5); a SUBSCRIBE meets them in `check_initial`.
                if !req.uri.is_sip() {
                    return vec![reply(
                        &req,
                        StatusCode::UNSUPPORTED_URI_SCHEME,
                        None,
                        |_| {},
                    )];
                }
                let required: Vec<&str> = req.headers.get_split(&HeaderName::REQUIRE).collect();
                if !required.is_empty() {
                    let unsupported = required.join(", ");
                    return vec![reply(&req, StatusCode::BAD_EXTENSION, None, |h| {
                        h.push(HeaderName::UNSUPPORTED, unsupported);
                    })];
                }
                vec![reply(&req, StatusCode::OK, None, |h| {
                    h.push(HeaderName::ALLOW, ALLOW);
                    h.push(HeaderName::ACCEPT, CONTENT_TYPE);
                    h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE);
                })]
            }
            (_, Some(tag)) => {
                if self.find(&req, &tag).is_some() {
                    vec![reply(&req, StatusCode::METHOD_NOT_ALLOWED, None, |h| {
                        h.push(HeaderName::ALLOW, ALLOW);
                    })]
                } else {
                    vec![reply(&req, StatusCode::CALL_DOES_NOT_EXIST, None, |_| {})]
                }
            }
            (Method::Notify | Method::Cancel, None) => {
                vec![reply(&req, StatusCode::CALL_DOES_NOT_EXIST, None, |_| {})]
            }
            (_, None) => vec![reply(&req, StatusCode::METHOD_NOT_ALLOWED, None, |h| {
                h.push(HeaderName::ALLOW, ALLOW);
            })],
        }
    }

    fn on_initial_subscribe(&mut self, req: Request, now: Instant) -> Vec<Action> {
        let checked = match check_initial(&req, self.cfg.max_route_set_size) {
            Ok(c) => c,
            Err(Refusal::Limit(limit, response)) => return vec![*response, Action::Refused(limit)],
            Err(Refusal::Invalid(response)) => return vec![*response],
        };
        if self.dialogs.len() >= self.cfg.max_dialogs {
            return vec![
                reply(
                    &req,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("Too many subscriptions on this connection"),
                    |h| h.push(HeaderName::RETRY_AFTER, "30"),
                ),
                Action::Refused(Limit::DialogsPerConnection),
            ];
        }
        let sub = format!("{}-{}", self.id_prefix, self.next_sub);
        self.next_sub += 1;
        let request_id = self.take_request_id();
        let local_tag = self.random_hex();
        let mut local = checked.to;
        local.set_tag(&local_tag);
        let remote_cseq = checked.cseq;
        let dialog = Dialog {
            phase: Phase::Establishing,
            call_id: checked.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: checked.from_tag,
            local,
            remote: checked.from,
            remote_target: checked.contact,
            route_set: req
                .headers
                .get_split(&HeaderName::RECORD_ROUTE)
                .map(str::to_owned)
                .collect(),
            event: checked.event,
            local_cseq: 0,
            remote_cseq,
            pending: Vec::new(),
            in_flight: None,
            queue: VecDeque::new(),
        };
        let command = Command::Subscribe {
            sub: sub.clone(),
            request_id,
            subscriber: checked.subscriber.clone(),
            requester: checked.requester,
            event: EVENT_PACKAGE.to_owned(),
            accept: checked.accept,
            expires: checked.expires,
            flow_identity: if checked.credentials.is_none() {
                self.flow_identity(now).map(str::to_owned)
            } else {
                None
            },
            credentials: checked.credentials,
            client_address: self.client_address.clone(),
            window: checked.window,
        };
        let mut dialog = dialog;
        dialog.pending.push((request_id, req));
        self.by_key
            .insert((checked.call_id, local_tag), sub.clone());
        self.dialogs.insert(sub.clone(), dialog);
        vec![
            Action::Route {
                sub,
                subscriber: checked.subscriber,
            },
            Action::Upstream(command),
        ]
    }

    fn on_refresh(&mut self, req: Request, tag: &str, _now: Instant) -> Vec<Action> {
        let Some(sub) = self.find(&req, tag) else {
            return vec![reply(&req, StatusCode::CALL_DOES_NOT_EXIST, None, |_| {})];
        };
        let cseq = cseq_of(&req);
        let event = req.headers.get(&HeaderName::EVENT).map(EventHeader::parse);
        let expires = match optional_seconds(&req, &HeaderName::EXPIRES) {
            Ok(e) => e,
            Err(r) => return vec![*r],
        };
        let credentials = match credentials_of(&req) {
            Ok(c) => c,
            Err(r) => return vec![*r],
        };
        let request_id = self.take_request_id();
        let Some(d) = self.dialogs.get_mut(&sub) else {
            return vec![reply(&req, StatusCode::CALL_DOES_NOT_EXIST, None, |_| {})];
        };
        if cseq <= d.remote_cseq {
            return vec![reply(
                &req,
                StatusCode::SERVER_INTERNAL_ERROR,
                Some("CSeq out of order"),
                |_| {},
            )];
        }
        match event {
            Some(Ok(e)) if e.package == EVENT_PACKAGE => {}
            Some(Ok(_)) => return vec![bad_event(&req)],
            Some(Err(_)) => {
                return vec![reply(
                    &req,
                    StatusCode::BAD_REQUEST,
                    Some("Bad Event"),
                    |_| {},
                )];
            }
            None => {
                return vec![reply(
                    &req,
                    StatusCode::BAD_REQUEST,
                    Some("Missing Event"),
                    |_| {},
                )];
            }
        }
        d.remote_cseq = cseq;
        if d.phase != Phase::Active || d.pending.len() >= MAX_PENDING_REQUESTS {
            return vec![reply(
                &req,
                StatusCode::SERVER_INTERNAL_ERROR,
                Some("Request pending"),
                |h| {
                    h.push(HeaderName::RETRY_AFTER, "1");
                },
            )];
        }
        // RFC 3261 §12.2.2: a target refresh request may replace the remote target.
        if let Some(contact) = req.headers.get_split(&HeaderName::CONTACT).next() {
            match NameAddr::parse(contact) {
                Ok(c) => d.remote_target = c.uri,
                Err(_) => {
                    return vec![reply(
                        &req,
                        StatusCode::BAD_REQUEST,
                        Some("Bad Contact"),
                        |_| {},
                    )];
                }
            }
        }
        d.pending.push((request_id, req));
        vec![Action::Upstream(Command::Refresh {
            sub,
            request_id,
            expires,
            credentials,
            client_address: self.client_address.clone(),
        })]
    }

    /// Something the notifier sent for a subscription of this connection.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Answer(a) => self.on_answer(&a, now),
            Event::Notification(n) => self.on_notification(n, now),
        }
    }

    fn on_answer(&mut self, answer: &Answer, now: Instant) -> Vec<Action> {
        let contact = self.contact();
        let Some(d) = self.dialogs.get_mut(&answer.sub) else {
            return Vec::new();
        };
        let Some(pos) = d
            .pending
            .iter()
            .position(|(id, _)| *id == answer.request_id)
        else {
            return Vec::new();
        };
        let (_, req) = d.pending.remove(pos);
        let initial = d.phase == Phase::Establishing;
        let local_tag = d.local_tag.clone();
        let with_tag = |h: &mut sip::Headers| set_to_tag(h, &local_tag);
        let response = match &answer.verdict {
            Verdict::Ok { granted, identity } => {
                d.phase = Phase::Active;
                let lifetime = self.cfg.flow_identity_lifetime;
                if let Some(id) = identity
                    && !lifetime.is_zero()
                {
                    self.flow_identity = Some((id.clone(), now + lifetime));
                }
                reply(&req, StatusCode::OK, None, |h| {
                    with_tag(h);
                    h.push(HeaderName::CONTACT, contact.clone());
                    h.push(HeaderName::EXPIRES, granted.to_string());
                })
            }
            verdict => reply(&req, verdict_status(verdict), None, |h| {
                with_tag(h);
                match verdict {
                    Verdict::IntervalTooBrief { min } => {
                        h.push(HeaderName::MIN_EXPIRES, min.to_string())
                    }
                    Verdict::BadEvent => h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE),
                    Verdict::NotAcceptable => h.push(HeaderName::ACCEPT, CONTENT_TYPE),
                    Verdict::Unavailable { retry_after } => h.push(
                        HeaderName::RETRY_AFTER,
                        retry_after.unwrap_or(5).to_string(),
                    ),
                    Verdict::Unauthorized(challenge) => push_challenges(h, challenge),
                    _ => {}
                }
            }),
        };
        if matches!(
            answer.verdict,
            Verdict::Unauthorized(_) | Verdict::Forbidden
        ) {
            // Someone on this flow failed to sign in or overreached: stop vouching for it.
            self.flow_identity = None;
        }
        let ends_dialog = match &answer.verdict {
            Verdict::Ok { .. } => false,
            Verdict::NoSuchSubscription => true,
            _ => initial,
        };
        let mut actions = vec![response];
        if ends_dialog {
            self.remove(&answer.sub, &mut actions);
        } else if initial {
            // The 200 goes out before the first NOTIFY (some browser libraries answer 481
            // to a NOTIFY that overtakes it); anything queued meanwhile follows now.
            self.send_next(&answer.sub, now, &mut actions);
        }
        actions
    }

    fn on_notification(&mut self, n: Notification, now: Instant) -> Vec<Action> {
        let Some(d) = self.dialogs.get_mut(&n.sub) else {
            // The dialog is gone; make sure the notifier forgets it too.
            return if matches!(n.state, State::Terminated(_)) {
                Vec::new()
            } else {
                vec![Action::Upstream(Command::Unsubscribe { sub: n.sub })]
            };
        };
        if d.phase == Phase::Establishing && matches!(n.state, State::Terminated(_)) {
            // The notifier answers before it notifies, so this is the proxy's own end of a
            // lost session: the SUBSCRIBE waiting for that Answer gets 503 now rather than
            // never (the client retries, RFC 3261 §21.5.4).
            let mut actions = Vec::new();
            for (_, req) in std::mem::take(&mut d.pending) {
                actions.push(reply(&req, StatusCode::SERVICE_UNAVAILABLE, None, |h| {
                    h.push(HeaderName::RETRY_AFTER, "1")
                }));
            }
            self.remove(&n.sub, &mut actions);
            return actions;
        }
        if d.in_flight.is_some() || d.phase == Phase::Establishing {
            if d.queue.len() >= MAX_QUEUED_NOTIFICATIONS {
                // A client that does not answer NOTIFYs: keep the newest state. The version
                // gap this leaves makes the client re-subscribe (DESIGN: gaps are visible).
                d.queue.pop_front();
            }
            d.queue.push_back(n);
            return Vec::new();
        }
        let mut actions = Vec::new();
        self.send_notify(n, now, &mut actions);
        actions
    }

    /// A response from the client: the answer to one of our NOTIFYs.
    pub fn on_response(&mut self, resp: &Response, now: Instant) -> Vec<Action> {
        let branch = sip::Via::parse_all(&resp.headers)
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|v| v.branch().map(str::to_owned));
        let Some(sub) = branch.and_then(|b| self.by_branch.get(&b).cloned()) else {
            return Vec::new(); // stray or late response
        };
        if resp.status.is_provisional() {
            return Vec::new();
        }
        let Some(d) = self.dialogs.get_mut(&sub) else {
            return Vec::new();
        };
        let cseq_ok = resp
            .headers
            .get(&HeaderName::CSEQ)
            .and_then(|c| sip::CSeq::parse(c).ok())
            .zip(d.in_flight.as_ref())
            .is_some_and(|(c, f)| c.seq == f.cseq && c.method == Method::Notify);
        if !cseq_ok {
            return Vec::new();
        }
        let Some(mut done) = d.in_flight.take() else {
            return Vec::new();
        };
        if let Some(branch) = done.branch.take() {
            self.by_branch.remove(&branch);
        }
        self.deadlines.remove(&(done.deadline, sub.clone()));
        let accepted = resp.status.is_success();
        let retry = (!accepted)
            .then(|| retry_delay(resp, &done, self.cfg.notify_retry))
            .flatten()
            .and_then(|after| Some((after, now.checked_add(after)?)));
        if let Some((after, at)) = retry {
            // Not a failed NOTIFY (RFC 6665 §4.2.2): the same notification waits for the
            // delay, still in flight, so newer ones keep queueing behind it.
            done.deadline = at;
            done.retries += 1;
            self.deadlines.insert((done.deadline, sub.clone()));
            d.in_flight = Some(done);
            return vec![Action::NotifyRetry { sub, after }];
        }
        let outcome = if accepted {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        };
        let mut actions = Vec::new();
        if done.version_known() {
            actions.push(Action::Upstream(Command::Delivered {
                sub: sub.clone(),
                version: done.version,
                outcome,
            }));
        }
        if done.terminal || !accepted {
            self.remove(&sub, &mut actions);
        } else {
            self.send_next(&sub, now, &mut actions);
        }
        actions
    }

    /// NOTIFY transactions whose Timer F fired by `now` fail; their dialogs end. NOTIFYs
    /// waiting out a `Retry-After` until `now` go out again.
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some((at, sub)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(done) = self.dialogs.get_mut(&sub).and_then(|d| d.in_flight.take()) else {
                continue;
            };
            let Some(branch) = &done.branch else {
                self.retry_notify(done, now, &mut actions);
                continue;
            };
            self.by_branch.remove(branch);
            if done.version_known() {
                actions.push(Action::Upstream(Command::Delivered {
                    sub: sub.clone(),
                    version: done.version,
                    outcome: Outcome::Timeout,
                }));
            }
            self.remove(&sub, &mut actions);
        }
        actions
    }

    /// Graceful shutdown: a final NOTIFY (`terminated;reason=deactivated`, RFC 6665 §4.2.2:
    /// retry at once, elsewhere) for every established dialog, and Unsubscribe upstream.
    pub fn on_shutdown(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let subs: Vec<SubscriptionId> = self.dialogs.keys().cloned().collect();
        for sub in subs {
            actions.push(Action::Upstream(Command::Unsubscribe { sub: sub.clone() }));
            let note = Notification::terminated(sub.clone(), Reason::Deactivated);
            match self.dialogs.get_mut(&sub) {
                Some(d) if d.phase == Phase::Active => {
                    d.queue.clear();
                    if d.in_flight.as_ref().is_some_and(|f| f.branch.is_none())
                        && let Some(f) = d.in_flight.take()
                    {
                        // Waiting out a Retry-After: the final word replaces the retry (the
                        // notifier is being told Unsubscribe anyway).
                        self.deadlines.remove(&(f.deadline, sub.clone()));
                    }
                    if d.in_flight.is_none() {
                        self.send_notify(note, now, &mut actions);
                    } else {
                        d.queue.push_back(note);
                    }
                }
                _ => self.remove(&sub, &mut actions),
            }
        }
        actions
    }

    /// The connection is gone: every dialog ends without a word to the client.
    pub fn on_close(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let subs: Vec<SubscriptionId> = self.dialogs.keys().cloned().collect();
        for sub in subs {
            actions.push(Action::Upstream(Command::Unsubscribe { sub: sub.clone() }));
            self.remove(&sub, &mut actions);
        }
        actions
    }

    fn send_next(&mut self, sub: &str, now: Instant, actions: &mut Vec<Action>) {
        let next = self.dialogs.get_mut(sub).and_then(|d| d.queue.pop_front());
        if let Some(n) = next {
            self.send_notify(n, now, actions);
        }
    }

    fn send_notify(&mut self, n: Notification, now: Instant, actions: &mut Vec<Action>) {
        let terminal = matches!(n.state, State::Terminated(_));
        let version = if n.content_type.is_some() || !terminal {
            n.version
        } else {
            u64::MAX
        };
        let flight = InFlight {
            branch: None,
            cseq: 0,
            version,
            deadline: now,
            terminal,
            note: n,
            first_sent: now,
            retries: 0,
        };
        self.transmit(flight, now, actions);
    }

    /// Sends the notification waiting out a Retry-After again: same version and body, a new
    /// transaction (new branch, next CSeq), `expires` counted down from the first attempt.
    fn retry_notify(&mut self, mut flight: InFlight, now: Instant, actions: &mut Vec<Action>) {
        if !flight.terminal {
            // Still active: never 0 (that reads as the end), the notifier ends it on time.
            let elapsed = now.saturating_duration_since(flight.first_sent).as_secs();
            let left = u64::from(flight.note.expires)
                .saturating_sub(elapsed)
                .max(1);
            flight.note.expires = u32::try_from(left).unwrap_or(u32::MAX);
        }
        self.transmit(flight, now, actions);
    }

    /// Starts a NOTIFY transaction for `flight` (a new branch, the next CSeq, Timer F).
    fn transmit(&mut self, mut flight: InFlight, now: Instant, actions: &mut Vec<Action>) {
        let branch = format!("z9hG4bK{}", self.random_hex());
        let contact = self.contact();
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            self.cfg.via_transport, self.cfg.local_host
        );
        let deadline = now + self.cfg.notify_timeout;
        let sub = flight.note.sub.clone();
        let Some(d) = self.dialogs.get_mut(&sub) else {
            return;
        };
        d.local_cseq += 1;
        let request = build::notify(d, &flight.note, &via, &contact);
        flight.branch = Some(branch.clone());
        flight.cseq = d.local_cseq;
        flight.deadline = deadline;
        d.in_flight = Some(flight);
        self.by_branch.insert(branch, sub.clone());
        self.deadlines.insert((deadline, sub));
        actions.push(Action::Send(Message::Request(request)));
    }

    fn remove(&mut self, sub: &str, actions: &mut Vec<Action>) {
        if let Some(d) = self.dialogs.remove(sub) {
            self.by_key.remove(&(d.call_id, d.local_tag));
            if let Some(f) = d.in_flight {
                if let Some(branch) = &f.branch {
                    self.by_branch.remove(branch);
                }
                self.deadlines.remove(&(f.deadline, sub.to_owned()));
            }
            actions.push(Action::Unroute(sub.to_owned()));
        }
    }

    fn find(&self, req: &Request, local_tag: &str) -> Option<SubscriptionId> {
        let call_id = req.headers.get(&HeaderName::CALL_ID)?.trim();
        let sub = self
            .by_key
            .get(&(call_id.to_owned(), local_tag.to_owned()))?;
        let from_tag = from_tag(req)?;
        let d = self.dialogs.get(sub)?;
        (d.remote_tag == from_tag).then(|| sub.clone())
    }

    fn contact(&self) -> String {
        format!(
            "<sip:conflist@{};transport={}>",
            self.cfg.local_host, self.cfg.contact_transport
        )
    }

    fn take_request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    fn random_hex(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }
}

impl InFlight {
    /// Body-less terminal NOTIFYs the proxy made itself carry no notifier version.
    fn version_known(&self) -> bool {
        self.version != u64::MAX
    }
}

/// How long to wait before sending `flight` again after the error answer `resp`, if at all.
/// RFC 6665 §4.2.2: a non-2xx answer without `Retry-After` fails the NOTIFY; one with it
/// does not. 481 always ends the dialog (RFC 3261 §12.2.1.2), terminal notifications are
/// not retried (the subscription ends either way), and `policy` bounds the delay and the
/// number of attempts.
fn retry_delay(resp: &Response, flight: &InFlight, policy: NotifyRetry) -> Option<Duration> {
    if resp.status == StatusCode::CALL_DOES_NOT_EXIST
        || flight.terminal
        || flight.retries >= policy.max_retries
    {
        return None;
    }
    let after = Duration::from_secs(retry_after(resp)?.into());
    (after <= policy.max_retry_after).then_some(after)
}

/// The delta-seconds of a response's `Retry-After` (RFC 3261 §20.33: a number, then an
/// optional comment and parameters).
fn retry_after(resp: &Response) -> Option<u32> {
    let value = resp.headers.get(&HeaderName::RETRY_AFTER)?;
    let seconds = value.split([';', '(']).next()?;
    sip::parse_delta_seconds(seconds).ok()
}

/// The parts of a valid initial SUBSCRIBE the dialog needs.
struct Initial {
    subscriber: String,
    requester: String,
    call_id: String,
    from: NameAddr,
    from_tag: String,
    to: NameAddr,
    contact: Uri,
    cseq: u32,
    event: String,
    window: Window,
    accept: Vec<String>,
    expires: Option<u32>,
    credentials: Option<Credentials>,
}

/// RFC 6665 §4.2.1 checks of a dialog-creating SUBSCRIBE; a rejection is the response to send.
/// Why an initial SUBSCRIBE is not taken: an invalid request, or a limit; each carries the
/// response to send.
enum Refusal {
    Invalid(Box<Action>),
    Limit(Limit, Box<Action>),
}

impl From<Action> for Refusal {
    fn from(response: Action) -> Self {
        Refusal::Invalid(Box::new(response))
    }
}

impl From<Box<Action>> for Refusal {
    fn from(response: Box<Action>) -> Self {
        Refusal::Invalid(response)
    }
}

fn check_initial(req: &Request, max_route_set_size: usize) -> Result<Initial, Refusal> {
    let bad = |reason: &str| reply(req, StatusCode::BAD_REQUEST, Some(reason), |_| {});
    if !req.uri.is_sip() {
        return Err(reply(req, StatusCode::UNSUPPORTED_URI_SCHEME, None, |_| {}).into());
    }
    if let Some(mf) = req.headers.get(&HeaderName::MAX_FORWARDS)
        && sip::parse_delta_seconds(mf) == Ok(0)
    {
        return Err(reply(req, StatusCode::TOO_MANY_HOPS, None, |_| {}).into());
    }
    let required: Vec<&str> = req.headers.get_split(&HeaderName::REQUIRE).collect();
    if !required.is_empty() {
        let unsupported = required.join(", ");
        return Err(reply(req, StatusCode::BAD_EXTENSION, None, |h| {
            h.push(HeaderName::UNSUPPORTED, unsupported.clone());
        })
        .into());
    }
    let event = match req.headers.get(&HeaderName::EVENT).map(EventHeader::parse) {
        None => return Err(bad("Missing Event").into()),
        Some(Err(_)) => return Err(bad("Bad Event").into()),
        Some(Ok(e)) if e.package != EVENT_PACKAGE => return Err(bad_event(req).into()),
        Some(Ok(e)) => e,
    };
    let window = Window::from_event_params(&event.params).map_err(|r| Box::new(bad(r)))?;
    let event = event.to_string();
    let accept = match sip::parse_accept(&req.headers) {
        Err(_) => return Err(bad("Bad Accept").into()),
        Ok(None) => Vec::new(), // RFC 6665 §4.1.2: no Accept = the package's default type
        Ok(Some(ranges)) => {
            if !ranges
                .iter()
                .any(|r| r.matches("application", "conference-list+xml"))
            {
                return Err(reply(req, StatusCode::NOT_ACCEPTABLE, None, |h| {
                    h.push(HeaderName::ACCEPT, CONTENT_TYPE);
                })
                .into());
            }
            req.headers
                .get_split(&HeaderName::ACCEPT)
                .map(str::to_owned)
                .collect()
        }
    };
    let expires = optional_seconds(req, &HeaderName::EXPIRES)?;
    let Some(contact) = req.headers.get_split(&HeaderName::CONTACT).next() else {
        return Err(bad("Missing Contact").into());
    };
    let contact = NameAddr::parse(contact)
        .map_err(|_| Box::new(bad("Bad Contact")))?
        .uri;
    let from = header_name_addr(req, &HeaderName::FROM).ok_or_else(|| Box::new(bad("Bad From")))?;
    let to = header_name_addr(req, &HeaderName::TO).ok_or_else(|| Box::new(bad("Bad To")))?;
    let Some(from_tag) = from.tag().map(str::to_owned) else {
        return Err(bad("Missing From tag").into());
    };
    let Some(subscriber) = req.uri.aor() else {
        return Err(reply(req, StatusCode::UNSUPPORTED_URI_SCHEME, None, |_| {}).into());
    };
    let Some(requester) = from.uri.aor() else {
        return Err(bad("Bad From").into());
    };
    let route_set_size: usize = req
        .headers
        .get_split(&HeaderName::RECORD_ROUTE)
        .map(str::len)
        .sum();
    if route_set_size > max_route_set_size {
        return Err(Refusal::Limit(
            Limit::RouteSet,
            Box::new(bad("Record-Route too large")),
        ));
    }
    let credentials = credentials_of(req)?;
    let call_id = req
        .headers
        .get(&HeaderName::CALL_ID)
        .map(|c| c.trim().to_owned())
        .unwrap_or_default();
    Ok(Initial {
        subscriber,
        requester,
        call_id,
        from,
        from_tag,
        to,
        contact,
        cseq: cseq_of(req),
        event,
        window,
        accept,
        expires,
        credentials,
    })
}

/// The request's Authorization (RFC 3261 §22.4): Digest or Bearer. A request may carry one
/// per realm; the first one that parses is used. Unparseable credentials are a 400.
fn credentials_of(req: &Request) -> Result<Option<Credentials>, Box<Action>> {
    let mut values = req
        .headers
        .iter()
        .filter(|(n, _)| **n == HeaderName::AUTHORIZATION)
        .map(|(_, v)| v)
        .peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let parsed = values.find_map(|v| sip::Credentials::parse(v).ok());
    match parsed {
        Some(sip::Credentials::Digest(response)) => {
            // RFC 2617 §3.2.2.5: the digest-uri must name the resource of the Request-Line
            // (the response is computed over it; another one means credentials made for
            // another request).
            let same = Uri::parse(&response.uri).is_ok_and(|u| u == req.uri)
                || response.uri == req.uri.to_string();
            if !same {
                return Err(Box::new(reply(
                    req,
                    StatusCode::BAD_REQUEST,
                    Some("Digest uri does not match the Request-URI"),
                    |_| {},
                )));
            }
            Ok(Some(Credentials::Digest {
                response,
                method: req.method.to_string(),
            }))
        }
        Some(sip::Credentials::Bearer(token)) => Ok(Some(Credentials::Bearer(token))),
        None => Err(Box::new(reply(
            req,
            StatusCode::BAD_REQUEST,
            Some("Bad Authorization"),
            |_| {},
        ))),
    }
}

/// One WWW-Authenticate per offered algorithm, in the notifier's order (RFC 8760 §2.4: the
/// preferred first; clients that read a single challenge take the last).
fn push_challenges(h: &mut sip::Headers, c: &Challenge) {
    for algorithm in &c.algorithms {
        let challenge = sip::DigestChallenge {
            realm: c.realm.clone(),
            nonce: c.nonce.clone(),
            opaque: c.opaque.clone(),
            algorithm: algorithm.clone(),
            stale: c.stale,
        };
        h.push(HeaderName::WWW_AUTHENTICATE, challenge.to_string());
    }
}

fn header_name_addr(req: &Request, name: &HeaderName) -> Option<NameAddr> {
    req.headers.get(name).and_then(|v| NameAddr::parse(v).ok())
}

fn to_tag(req: &Request) -> Option<String> {
    header_name_addr(req, &HeaderName::TO).and_then(|t| t.tag().map(str::to_owned))
}

fn from_tag(req: &Request) -> Option<String> {
    header_name_addr(req, &HeaderName::FROM).and_then(|t| t.tag().map(str::to_owned))
}

/// CSeq number of a request that passed validation.
fn cseq_of(req: &Request) -> u32 {
    req.headers
        .get(&HeaderName::CSEQ)
        .and_then(|c| sip::CSeq::parse(c).ok())
        .map_or(0, |c| c.seq)
}

fn optional_seconds(req: &Request, name: &HeaderName) -> Result<Option<u32>, Box<Action>> {
    match req.headers.get(name) {
        None => Ok(None),
        Some(v) => sip::parse_delta_seconds(v).map(Some).map_err(|_| {
            Box::new(reply(
                req,
                StatusCode::BAD_REQUEST,
                Some("Bad Expires"),
                |_| {},
            ))
        }),
    }
}

fn bad_event(req: &Request) -> Action {
    reply(req, StatusCode::BAD_EVENT, None, |h| {
        h.push(HeaderName::ALLOW_EVENTS, EVENT_PACKAGE);
    })
}

fn verdict_status(v: &Verdict) -> StatusCode {
    match v {
        Verdict::Ok { .. } => StatusCode::OK,
        Verdict::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Verdict::Forbidden => StatusCode::FORBIDDEN,
        Verdict::NotFound => StatusCode::NOT_FOUND,
        Verdict::IntervalTooBrief { .. } => StatusCode::INTERVAL_TOO_BRIEF,
        Verdict::BadEvent => StatusCode::BAD_EVENT,
        Verdict::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
        Verdict::NoSuchSubscription => StatusCode::CALL_DOES_NOT_EXIST,
        Verdict::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Verdict::Internal => StatusCode::SERVER_INTERNAL_ERROR,
    }
}

/// A response to `req` (RFC 3261 §8.2.6): copied headers, a To-tag when the request had none.
fn reply(
    req: &Request,
    status: StatusCode,
    reason: Option<&str>,
    extra: impl FnOnce(&mut sip::Headers),
) -> Action {
    let mut resp = Response::for_request(req, status);
    if let Some(r) = reason {
        resp.reason = r.to_owned();
    }
    if status != StatusCode::TRYING && to_tag(req).is_none() {
        set_to_tag(&mut resp.headers, &random_tag_for(req));
    }
    extra(&mut resp.headers);
    Action::Send(Message::Response(resp))
}

/// Sets the To-tag of a response (replacing one `reply` may have set).
fn set_to_tag(headers: &mut sip::Headers, tag: &str) {
    if let Some(mut to) = headers
        .get(&HeaderName::TO)
        .and_then(|t| NameAddr::parse(t).ok())
    {
        to.set_tag(tag);
        headers.set(HeaderName::TO, to.to_string());
    }
}

/// A To-tag for a response outside any dialog: derived from the request so retransmissions
/// get the same tag (RFC 3261 §8.2.6.2 only asks that it be stable per request).
fn random_tag_for(req: &Request) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    req.headers.get(&HeaderName::CALL_ID).hash(&mut h);
    req.headers.get(&HeaderName::FROM).hash(&mut h);
    req.headers.get(&HeaderName::CSEQ).hash(&mut h);
    format!("{:016x}", h.finish())
}
