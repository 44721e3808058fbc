//! The SIP side of every subscription on one flow (a WebSocket, TCP or TLS connection, or
//! a UDP source address), sans-IO.
//!
//! [`Dialogs`] takes SIP requests and responses from the client, Answers and Notifications
//! from the notifier, and the time; it returns [`Action`]s for the shell in
//! `transport::connection` to carry out. It owns each dialog's tags, CSeqs, route set and
//! remote target (RFC 3261 §12), the flow's server transactions (a retransmitted request
//! gets the same response, never a second dialog) and, per dialog, the one NOTIFY in flight
//! (`delivery`): newer notifications queue behind it, CSeq strictly increasing.
//! Validation is in `validate`, the choice of every SIP status in [`status`].
//! No I/O, no clock, no global randomness: the caller passes `now` and a seed.

mod build;
mod delivery;
pub mod status;
#[cfg(test)]
mod tests;
mod validate;

pub use delivery::{DEFAULT_NOTIFY_MAX_RETRY_AFTER, DEFAULT_NOTIFY_RETRIES, NotifyRetry};
pub use status::{Rejection, Reply};

use crate::notifier::{
    Answer, Command, Event, Notification, Outcome, Reason, State, SubscriptionId, Verdict,
};
use crate::transaction::{self, Answered, ClientEvent, Incoming, ServerTransactions, Timers};
use delivery::{Attempt, InFlight};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sip::{HeaderName, Message, Method, NameAddr, Request, Response, Uri};
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
/// The largest NOTIFY body asked of the notifier for a UDP flow: a datagram holds 65 507
/// bytes, less our headers (with a route set of up to `--max-route-set-size`, 4 KiB by
/// default). Larger states go out as several NOTIFYs (the notifier's multi-part delivery).
pub const UDP_MAX_BODY_BYTES: u32 = 60_000;
/// SUBSCRIBEs of one dialog waiting for the notifier at once.
pub const MAX_PENDING_REQUESTS: usize = 4;

/// The SIP transport of a flow: what goes in our Via and Contact, and whether the
/// transport is reliable (RFC 3261 §17: no retransmissions, Timers J and K zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// SIP over WebSocket (RFC 7118).
    Ws,
    /// SIP over secure WebSocket.
    Wss,
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2).
    Tls,
}

impl Transport {
    /// The Via transport token.
    pub fn via(self) -> &'static str {
        match self {
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The `transport=` parameter of our Contact.
    pub fn contact_param(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// The largest NOTIFY body the transport carries, when the notifier's cap may be too
    /// large for it: over UDP a NOTIFY must fit one datagram ([`UDP_MAX_BODY_BYTES`]).
    pub fn max_body_bytes(self) -> Option<u32> {
        (self == Transport::Udp).then_some(UDP_MAX_BODY_BYTES)
    }

    /// Reliable (stream) transports never retransmit.
    pub fn reliable(self) -> bool {
        self != Transport::Udp
    }
}

/// Settings shared by every flow's dialogs.
#[derive(Debug, Clone)]
pub struct DialogConfig {
    /// `host:port` this proxy puts in Via and Contact.
    pub local_host: String,
    /// The transport of the listener.
    pub transport: Transport,
    /// T1, T2, T4.
    pub timers: Timers,
    /// Timer F for NOTIFY: no final answer by then = failed delivery.
    pub notify_timeout: Duration,
    /// Most dialogs on one flow (a gateway multiplexes many).
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
    /// Send this response to the client; `outcome` is its label in
    /// `conflist_proxy_responses_total` ([`Reply::label`]).
    Respond {
        /// The response.
        response: Response,
        /// Why it was sent.
        outcome: &'static str,
    },
    /// Send this NOTIFY to the client (a new transaction).
    Notify(Request),
    /// Send this message again, unchanged: a NOTIFY on Timer E, or the response to a
    /// retransmitted request.
    Resend(Message),
    /// Route notifier events for `sub` to this flow; pick its notifier by `subscriber`.
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

impl Action {
    /// True for the actions that write to the client.
    pub fn is_send(&self) -> bool {
        matches!(
            self,
            Action::Respond { .. } | Action::Notify(_) | Action::Resend(_)
        )
    }
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
    /// The deadline of `in_flight` as entered in [`Dialogs::deadlines`].
    scheduled: Option<Instant>,
    queue: VecDeque<Notification>,
}

/// Every dialog of one flow.
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
    /// When each dialog's notification in flight needs the core again.
    deadlines: BTreeSet<(Instant, SubscriptionId)>,
    /// The flow's server transactions.
    server: ServerTransactions,
    /// The identity the notifier authenticated on this flow (DESIGN: identity binds to the
    /// flow that created it) and until when it is offered; later SUBSCRIBEs without
    /// credentials on this flow carry it. A refused sign-in on the flow forgets it.
    flow_identity: Option<(String, Instant)>,
    /// The client's address, passed on for per-address throttling of failed sign-ins.
    client_address: String,
    /// Round trip of the NOTIFY the last [`Dialogs::on_response`] completed, for the
    /// shell's histogram ([`Dialogs::take_round_trip`]).
    round_trip: Option<Duration>,
}

impl Dialogs {
    /// Dialogs of one flow. `id_prefix` makes subscription ids unique proxy-wide; `seed`
    /// feeds tags and branches (the shell passes OS randomness, tests a constant).
    pub fn new(cfg: DialogConfig, id_prefix: String, seed: u64) -> Self {
        Self {
            server: ServerTransactions::new(cfg.timers, cfg.transport.reliable()),
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
            round_trip: None,
        }
    }

    /// How long the NOTIFY answered by the last [`Dialogs::on_response`] took, from its
    /// first transmission to its final answer (`None` if that response completed none).
    pub fn take_round_trip(&mut self) -> Option<Duration> {
        self.round_trip.take()
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

    /// True when the flow holds nothing at all: no dialog and no server transaction still
    /// answering retransmissions (a UDP flow may go then).
    pub fn is_idle(&self) -> bool {
        self.dialogs.is_empty() && self.server.is_empty()
    }

    /// When [`Dialogs::on_timeout`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let notify = self.deadlines.first().map(|(at, _)| *at);
        match (notify, self.server.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A request from the client (already parsed; Via already stamped with received/rport).
    pub fn on_request(&mut self, req: Request, now: Instant) -> Vec<Action> {
        if req.method == Method::Ack {
            return Vec::new(); // never answered (RFC 3261 §17.2.1)
        }
        match self.server.on_request(&req, now) {
            Incoming::New => {}
            Incoming::Absorbed => return Vec::new(),
            Incoming::Repeat(resp) => return vec![Action::Resend(Message::Response(*resp))],
        }
        let actions = self.serve(req, now);
        self.record(actions, now)
    }

    fn serve(&mut self, req: Request, now: Instant) -> Vec<Action> {
        if let Err(e) = sip::validate::check_request(&req) {
            return vec![reject(&req, &Rejection::Malformed(e.to_string()))];
        }
        match (&req.method, validate::to_tag(&req)) {
            (Method::Subscribe, None) => self.on_initial_subscribe(req, now),
            (Method::Subscribe, Some(tag)) => self.on_refresh(req, &tag),
            (Method::Options, None) => match validate::check_common(&req) {
                Err(r) => vec![reject(&req, &r)],
                Ok(()) => vec![respond(&req, Reply::Capabilities, None)],
            },
            (_, Some(tag)) => match self.find(&req, &tag) {
                Some(_) => vec![reject(&req, &Rejection::MethodNotAllowed)],
                None => vec![reject(&req, &Rejection::NoSuchDialog)],
            },
            (Method::Notify | Method::Cancel, None) => {
                vec![reject(&req, &Rejection::NoSuchDialog)]
            }
            (_, None) => vec![reject(&req, &Rejection::MethodNotAllowed)],
        }
    }

    /// Notes every final response among `actions` in the server transactions.
    fn record(&mut self, actions: Vec<Action>, now: Instant) -> Vec<Action> {
        for a in &actions {
            if let Action::Respond { response, .. } = a {
                self.server.on_response(response, now);
            }
        }
        actions
    }

    fn on_initial_subscribe(&mut self, req: Request, now: Instant) -> Vec<Action> {
        let checked = match validate::check_initial(&req, self.cfg.max_route_set_size) {
            Ok(c) => c,
            Err(r @ Rejection::RouteSetTooLarge) => {
                return vec![reject(&req, &r), Action::Refused(Limit::RouteSet)];
            }
            Err(r) => return vec![reject(&req, &r)],
        };
        if self.dialogs.len() >= self.cfg.max_dialogs {
            return vec![
                reject(&req, &Rejection::TooManyDialogs),
                Action::Refused(Limit::DialogsPerConnection),
            ];
        }
        let sub = format!("{}-{}", self.id_prefix, self.next_sub);
        self.next_sub += 1;
        let request_id = self.take_request_id();
        let local_tag = self.random_hex();
        let mut local = checked.to;
        local.set_tag(&local_tag);
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
            max_body_bytes: self.cfg.transport.max_body_bytes(),
        };
        let dialog = Dialog {
            phase: Phase::Establishing,
            call_id: checked.call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: checked.from_tag,
            local,
            remote: checked.from,
            remote_target: checked.contact,
            route_set: checked.route_set,
            event: checked.event,
            local_cseq: 0,
            remote_cseq: checked.cseq,
            pending: vec![(request_id, req)],
            in_flight: None,
            scheduled: None,
            queue: VecDeque::new(),
        };
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

    fn on_refresh(&mut self, req: Request, tag: &str) -> Vec<Action> {
        let Some(sub) = self.find(&req, tag) else {
            return vec![reject(&req, &Rejection::NoSuchDialog)];
        };
        let refresh = match validate::check_refresh(&req) {
            Ok(r) => r,
            Err(r) => return vec![reject(&req, &r)],
        };
        let request_id = self.take_request_id();
        let Some(d) = self.dialogs.get_mut(&sub) else {
            return vec![reject(&req, &Rejection::NoSuchDialog)];
        };
        if refresh.cseq <= d.remote_cseq {
            return vec![reject(&req, &Rejection::CSeqOutOfOrder)];
        }
        d.remote_cseq = refresh.cseq;
        if d.phase != Phase::Active || d.pending.len() >= MAX_PENDING_REQUESTS {
            return vec![reject(&req, &Rejection::RequestPending)];
        }
        if let Some(target) = refresh.contact {
            d.remote_target = target;
        }
        d.pending.push((request_id, req));
        vec![Action::Upstream(Command::Refresh {
            sub,
            request_id,
            expires: refresh.expires,
            credentials: refresh.credentials,
            client_address: self.client_address.clone(),
        })]
    }

    /// Something the notifier sent for a subscription of this flow.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let actions = match event {
            Event::Answer(a) => self.on_answer(&a, now),
            Event::Notification(n) => self.on_notification(n, now),
        };
        self.record(actions, now)
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
        let tag = Some(d.local_tag.as_str());
        let response = match &answer.verdict {
            Verdict::Ok { granted, identity } => {
                d.phase = Phase::Active;
                let reply = Reply::Granted {
                    expires: *granted,
                    contact: &contact,
                };
                let response = respond(&req, reply, tag);
                let lifetime = self.cfg.flow_identity_lifetime;
                if let Some(id) = identity
                    && !lifetime.is_zero()
                {
                    self.flow_identity = Some((id.clone(), now + lifetime));
                }
                response
            }
            verdict => respond(&req, Reply::Refused(verdict), tag),
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
            let mut actions: Vec<Action> = std::mem::take(&mut d.pending)
                .into_iter()
                .map(|(_, req)| reject(&req, &Rejection::UpstreamLost))
                .collect();
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
        self.transmit(InFlight::new(n, now), now, &mut actions);
        actions
    }

    /// A response from the client: the answer to one of our NOTIFYs.
    pub fn on_response(&mut self, resp: &Response, now: Instant) -> Vec<Action> {
        let branch = sip::Via::parse_all(&resp.headers)
            .ok()
            .and_then(|v| v.into_iter().next())
            .and_then(|v| v.branch().map(str::to_owned));
        let Some(sub) = branch.and_then(|b| self.by_branch.get(&b).cloned()) else {
            // Stray, late, or a retransmitted answer to a transaction already complete
            // (what Timer K absorbs): nothing matches any more.
            return Vec::new();
        };
        let answered = {
            let Some(Attempt::Sent { cseq, tx, .. }) = self
                .dialogs
                .get_mut(&sub)
                .and_then(|d| d.in_flight.as_mut())
                .map(|f| &mut f.attempt)
            else {
                return Vec::new();
            };
            let cseq_ok = resp
                .headers
                .get(&HeaderName::CSEQ)
                .and_then(|c| sip::CSeq::parse(c).ok())
                .is_some_and(|c| c.seq == *cseq && c.method == Method::Notify);
            if !cseq_ok {
                return Vec::new();
            }
            tx.on_response(resp.status.is_final(), now)
        };
        match answered {
            Answered::Provisional => {
                self.reschedule(&sub);
                return Vec::new();
            }
            Answered::Absorbed => return Vec::new(),
            Answered::Final => {}
        }
        let Some(mut done) = self.dialogs.get_mut(&sub).and_then(|d| d.in_flight.take()) else {
            return Vec::new();
        };
        if let Some(branch) = done.branch() {
            self.by_branch.remove(branch);
        }
        self.reschedule(&sub);
        self.round_trip = Some(now.saturating_duration_since(done.first_sent));
        let accepted = resp.status.is_success();
        let retry = (!accepted)
            .then(|| done.retry_delay(resp, self.cfg.notify_retry))
            .flatten()
            .and_then(|after| Some((after, now.checked_add(after)?)));
        if let Some((after, until)) = retry {
            // Not a failed NOTIFY (RFC 6665 §4.2.2): the same notification waits for the
            // delay, still in flight, so newer ones keep queueing behind it.
            done.attempt = Attempt::Waiting { until };
            done.retries += 1;
            if let Some(d) = self.dialogs.get_mut(&sub) {
                d.in_flight = Some(done);
            }
            self.reschedule(&sub);
            return vec![Action::NotifyRetry { sub, after }];
        }
        let outcome = if accepted {
            Outcome::Accepted
        } else {
            Outcome::Rejected
        };
        let mut actions = Vec::new();
        if let Some(version) = done.version {
            actions.push(Action::Upstream(Command::Delivered {
                sub: sub.clone(),
                version,
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

    /// The timers due at `now`: NOTIFYs retransmitted (Timer E) or failed (Timer F, the
    /// dialog ends), NOTIFYs waiting out a `Retry-After` sent again, server transactions
    /// forgotten (Timer J).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<Action> {
        self.server.on_timer(now);
        let mut actions = Vec::new();
        while let Some((at, sub)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let due = {
                let Some(d) = self.dialogs.get_mut(&sub) else {
                    continue;
                };
                d.scheduled = None;
                let Some(flight) = d.in_flight.as_mut() else {
                    continue;
                };
                match &mut flight.attempt {
                    Attempt::Waiting { until } if *until <= now => Due::Retry,
                    Attempt::Waiting { .. } => Due::Nothing,
                    Attempt::Sent { tx, request, .. } => match tx.on_timer(now) {
                        Some(ClientEvent::TimedOut) => Due::TimedOut,
                        Some(ClientEvent::Retransmit) => {
                            if let Some(r) = request {
                                actions.push(Action::Resend(Message::Request((**r).clone())));
                            }
                            Due::Nothing
                        }
                        Some(ClientEvent::Terminated) | None => Due::Nothing,
                    },
                }
            };
            match due {
                Due::Retry => {
                    if let Some(flight) =
                        self.dialogs.get_mut(&sub).and_then(|d| d.in_flight.take())
                    {
                        self.transmit(flight, now, &mut actions);
                    }
                }
                Due::TimedOut => {
                    let Some(done) = self.dialogs.get_mut(&sub).and_then(|d| d.in_flight.take())
                    else {
                        continue;
                    };
                    if let Some(branch) = done.branch() {
                        self.by_branch.remove(branch);
                    }
                    if let Some(version) = done.version {
                        actions.push(Action::Upstream(Command::Delivered {
                            sub: sub.clone(),
                            version,
                            outcome: Outcome::Timeout,
                        }));
                    }
                    self.remove(&sub, &mut actions);
                }
                // Retransmitted, or nothing due yet: wait for the next deadline.
                Due::Nothing => self.reschedule(&sub),
            }
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
            let (active, waiting) = match self.dialogs.get_mut(&sub) {
                Some(d) if d.phase == Phase::Active => {
                    d.queue.clear();
                    let waiting = d
                        .in_flight
                        .as_ref()
                        .is_some_and(|f| matches!(f.attempt, Attempt::Waiting { .. }));
                    (true, waiting)
                }
                _ => (false, false),
            };
            if !active {
                self.remove(&sub, &mut actions);
                continue;
            }
            if waiting {
                // Waiting out a Retry-After: the final word replaces the retry (the
                // notifier is being told Unsubscribe anyway).
                if let Some(d) = self.dialogs.get_mut(&sub) {
                    d.in_flight = None;
                }
                self.reschedule(&sub);
            }
            match self.dialogs.get_mut(&sub) {
                Some(d) if d.in_flight.is_some() => d.queue.push_back(note),
                _ => self.transmit(InFlight::new(note, now), now, &mut actions),
            }
        }
        actions
    }

    /// The flow is gone: every dialog ends without a word to the client.
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
            self.transmit(InFlight::new(n, now), now, actions);
        }
    }

    /// Starts a NOTIFY transaction for `flight`: a new branch, the next CSeq, Timer E (over
    /// UDP) and Timer F.
    fn transmit(&mut self, mut flight: InFlight, now: Instant, actions: &mut Vec<Action>) {
        let branch = format!("z9hG4bK{}", self.random_hex());
        let contact = self.contact();
        let via = format!(
            "SIP/2.0/{} {};branch={branch}",
            self.cfg.transport.via(),
            self.cfg.local_host
        );
        let sub = flight.note.sub.clone();
        let reliable = self.cfg.transport.reliable();
        let tx =
            transaction::Client::start(self.cfg.timers, reliable, self.cfg.notify_timeout, now);
        let Some(d) = self.dialogs.get_mut(&sub) else {
            return;
        };
        d.local_cseq += 1;
        let note = if flight.retries > 0 {
            flight.for_retry(now)
        } else {
            &flight.note
        };
        let request = build::notify(d, note, &via, &contact);
        flight.attempt = Attempt::Sent {
            branch: branch.clone(),
            cseq: d.local_cseq,
            request: (!reliable).then(|| Box::new(request.clone())),
            tx,
        };
        d.in_flight = Some(flight);
        self.by_branch.insert(branch, sub.clone());
        self.reschedule(&sub);
        actions.push(Action::Notify(request));
    }

    /// Puts `sub`'s notification in flight at its current deadline in [`Self::deadlines`].
    fn reschedule(&mut self, sub: &str) {
        let Some(d) = self.dialogs.get_mut(sub) else {
            return;
        };
        if let Some(old) = d.scheduled.take() {
            self.deadlines.remove(&(old, sub.to_owned()));
        }
        if let Some(at) = d.in_flight.as_ref().and_then(InFlight::deadline) {
            d.scheduled = Some(at);
            self.deadlines.insert((at, sub.to_owned()));
        }
    }

    fn remove(&mut self, sub: &str, actions: &mut Vec<Action>) {
        if let Some(d) = self.dialogs.remove(sub) {
            self.by_key.remove(&(d.call_id, d.local_tag));
            if let Some(f) = &d.in_flight
                && let Some(branch) = f.branch()
            {
                self.by_branch.remove(branch);
            }
            if let Some(at) = d.scheduled {
                self.deadlines.remove(&(at, sub.to_owned()));
            }
            actions.push(Action::Unroute(sub.to_owned()));
        }
    }

    fn find(&self, req: &Request, local_tag: &str) -> Option<SubscriptionId> {
        let call_id = req.headers.get(&HeaderName::CALL_ID)?.trim();
        let sub = self
            .by_key
            .get(&(call_id.to_owned(), local_tag.to_owned()))?;
        let from_tag = validate::from_tag(req)?;
        let d = self.dialogs.get(sub)?;
        (d.remote_tag == from_tag).then(|| sub.clone())
    }

    fn contact(&self) -> String {
        format!(
            "<sip:conflist@{};transport={}>",
            self.cfg.local_host,
            self.cfg.transport.contact_param()
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

/// What a timer due for a notification in flight asks for.
enum Due {
    /// The Retry-After wait is over: send it again.
    Retry,
    /// Timer F: the delivery failed.
    TimedOut,
    /// Nothing more now (a retransmission went out, or it is not due yet).
    Nothing,
}

/// The response action for `reply` to `req`.
fn respond(req: &Request, reply: Reply<'_>, to_tag: Option<&str>) -> Action {
    Action::Respond {
        response: status::respond(req, reply, to_tag),
        outcome: reply.label(),
    }
}

/// The response action refusing `req` for `why`.
fn reject(req: &Request, why: &Rejection) -> Action {
    respond(req, Reply::Rejected(why), None)
}
