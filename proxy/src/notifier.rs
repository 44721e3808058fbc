//! What the proxy tells the notifier (subscriber-server) and hears back, as domain types.
//! `upstream` converts these to and from `conflist.v1`; `dialog` never sees proto types.

/// Proxy-wide unique id of one subscription (one SIP dialog).
pub type SubscriptionId = String;

/// The part of a list a subscriber asks for, from the Event header's parameters
/// (`Event: conference-list;past=86400;ahead=1209600;max=200`); `None` = the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Seconds before now: conferences that ended longer ago are left out.
    pub past: Option<u32>,
    /// Seconds after now: conferences that start later are left out.
    pub ahead: Option<u32>,
    /// At most this many conferences, nearest first.
    pub max: Option<u32>,
}

impl Window {
    /// The window named by an Event header's parameters: each of `past`, `ahead` and `max`
    /// must be `1*10DIGIT` within 32 bits; other parameters are ignored (RFC 6665 §8.2.1).
    pub fn from_event_params(params: &sip::Params) -> Result<Window, &'static str> {
        let number = |name: &str| -> Result<Option<u32>, &'static str> {
            if !params.contains(name) {
                return Ok(None);
            }
            match params.value(name) {
                Some(v)
                    if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    v.parse().map(Some).map_err(|_| "Bad Event parameter")
                }
                _ => Err("Bad Event parameter"),
            }
        };
        Ok(Window {
            past: number("past")?,
            ahead: number("ahead")?,
            max: number("max")?,
        })
    }
}

/// A request to the notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A new subscription.
    Subscribe {
        /// Chosen by the proxy.
        sub: SubscriptionId,
        /// Correlates the Answer.
        request_id: u64,
        /// Whose list: the Request-URI's address of record.
        subscriber: String,
        /// Who asks: the From address of record.
        requester: String,
        /// Event package.
        event: String,
        /// Accept values, one media range each; empty = package default.
        accept: Vec<String>,
        /// Requested duration.
        expires: Option<u32>,
        /// The request's Authorization, if it had one.
        credentials: Option<Credentials>,
        /// Identity the flow already proved (set only when `credentials` is `None`).
        flow_identity: Option<String>,
        /// The client's address, for per-address throttling of failed sign-ins.
        client_address: String,
        /// The part of the list asked for (Event parameters `past`, `ahead`, `max`).
        window: Window,
        /// The largest NOTIFY body the flow's transport carries (UDP); `None`: no limit
        /// beyond the notifier's own.
        max_body_bytes: Option<u32>,
    },
    /// An in-dialog SUBSCRIBE; `Some(0)` unsubscribes.
    Refresh {
        /// The dialog's subscription.
        sub: SubscriptionId,
        /// Correlates the Answer.
        request_id: u64,
        /// Requested duration.
        expires: Option<u32>,
        /// The refresh's Authorization, if it had one (verified again by the notifier).
        credentials: Option<Credentials>,
        /// The client's address, for per-address throttling of failed sign-ins.
        client_address: String,
    },
    /// The dialog is gone without a final NOTIFY (connection lost).
    Unsubscribe {
        /// The dialog's subscription.
        sub: SubscriptionId,
    },
    /// The client's answer to a NOTIFY.
    Delivered {
        /// The dialog's subscription.
        sub: SubscriptionId,
        /// Version of the notification answered.
        version: u64,
        /// What the client said.
        outcome: Outcome,
    },
}

impl Command {
    /// The subscription this command is about.
    pub fn sub(&self) -> &str {
        match self {
            Command::Subscribe { sub, .. }
            | Command::Refresh { sub, .. }
            | Command::Unsubscribe { sub }
            | Command::Delivered { sub, .. } => sub,
        }
    }

    /// The command's name, as logged.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Subscribe { .. } => "subscribe",
            Command::Refresh { .. } => "refresh",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Delivered { .. } => "delivered",
        }
    }
}

/// Credentials a request carried (RFC 3261 §22.4, RFC 8898); the notifier verifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A digest response, with the method it was computed for.
    Digest {
        /// The Authorization parameters.
        response: Box<sip::DigestResponse>,
        /// The request's method (`SUBSCRIBE`), part of A2.
        method: String,
    },
    /// A bearer token (a JWT).
    Bearer(String),
}

/// A digest challenge from the notifier: one WWW-Authenticate per algorithm, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`, shared by every algorithm offered.
    pub nonce: String,
    /// `opaque`, if any.
    pub opaque: Option<String>,
    /// Algorithms in the order to offer them (the last is the one single-challenge clients use).
    pub algorithms: Vec<String>,
    /// The nonce was stale but the credentials right: retry with the new nonce.
    pub stale: bool,
}

/// The client's answer to a NOTIFY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Accepted,
    /// A final failure (481…): the subscription is over.
    Rejected,
    /// No final answer in time, or the connection went away.
    Timeout,
}

/// The notifier's verdict on a Subscribe or Refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Granted for this many seconds.
    Ok {
        /// Granted duration.
        granted: u32,
        /// Who the notifier authenticated (`None` with authentication off).
        identity: Option<String>,
    },
    /// Credentials needed or wrong (401 with the challenge).
    Unauthorized(Challenge),
    /// Not allowed (403).
    Forbidden,
    /// No such user (404).
    NotFound,
    /// Duration too short (423 with Min-Expires).
    IntervalTooBrief {
        /// Min-Expires.
        min: u32,
    },
    /// Event package not served (489).
    BadEvent,
    /// Accept excludes the package type (406).
    NotAcceptable,
    /// Refresh of an unknown subscription (481).
    NoSuchSubscription,
    /// Notifier overloaded, its database down, or too many failed sign-ins (503).
    Unavailable {
        /// Seconds to put in Retry-After; `None` = the proxy's default.
        retry_after: Option<u32>,
    },
    /// Anything else (500).
    Internal,
}

/// An Answer from the notifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The subscription.
    pub sub: SubscriptionId,
    /// The request answered.
    pub request_id: u64,
    /// The verdict.
    pub verdict: Verdict,
}

/// Subscription-State of a NOTIFY (RFC 6665 §8.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Active, with the seconds left.
    Active,
    /// Pending authorisation.
    Pending,
    /// Over; the reason is given.
    Terminated(Reason),
}

/// RFC 6665 §4.2.2 termination reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Retry at once (e.g. the serving instance went away).
    Deactivated,
    /// Retry later.
    Probation,
    /// Authorisation withdrawn.
    Rejected,
    /// Expired or unsubscribed.
    Timeout,
    /// Retry later, possibly.
    Giveup,
    /// The resource is gone.
    Noresource,
    /// Will never change.
    Invariant,
    /// No reason given.
    None,
}

impl Reason {
    /// The token in `Subscription-State: terminated;reason=…`, if any.
    pub fn token(self) -> Option<&'static str> {
        Some(match self {
            Reason::Deactivated => "deactivated",
            Reason::Probation => "probation",
            Reason::Rejected => "rejected",
            Reason::Timeout => "timeout",
            Reason::Giveup => "giveup",
            Reason::Noresource => "noresource",
            Reason::Invariant => "invariant",
            Reason::None => return None,
        })
    }
}

/// A notification to deliver as a NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The subscription.
    pub sub: SubscriptionId,
    /// Document version (echoed in Delivered).
    pub version: u64,
    /// Subscription-State.
    pub state: State,
    /// Seconds left (Active/Pending).
    pub expires: u32,
    /// Body type; `None` = no body.
    pub content_type: Option<String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Notification {
    /// A body-less `terminated` notification the proxy makes itself (shutdown, lost upstream).
    pub fn terminated(sub: SubscriptionId, reason: Reason) -> Self {
        Self {
            sub,
            version: 0,
            state: State::Terminated(reason),
            expires: 0,
            content_type: None,
            body: Vec::new(),
        }
    }
}

/// Something the notifier sent for one subscription, routed to the connection holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An Answer.
    Answer(Answer),
    /// A Notification.
    Notification(Notification),
}
