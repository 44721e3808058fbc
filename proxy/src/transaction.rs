//! RFC 3261 §17 non-INVITE transactions, sans-IO: the caller passes `now` and carries out
//! what the machines return. SUBSCRIBE, OPTIONS and NOTIFY are all non-INVITE, so the
//! INVITE machines are not needed.
//!
//! - [`Client`] (§17.1.2): one NOTIFY we sent. Over an unreliable transport it is
//!   retransmitted on Timer E (T1, doubling, capped at T2; at T2 once a provisional answer
//!   came); Timer F ends it without an answer; after the final answer it stays `Completed`
//!   for Timer K (T4 unreliable, zero reliable), absorbing retransmitted answers.
//! - [`ServerTransactions`] (§17.2.2): the requests of one flow. A retransmission (same
//!   branch, sent-by and method, §17.2.3) is absorbed while the core works on the original
//!   and gets the same final response afterwards, for Timer J (64·T1 unreliable, zero
//!   reliable). The table is bounded: beyond its size the oldest entry is forgotten.

use sip::{HeaderName, Method, Request, Response, Via};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// Default T1, the RTT estimate (RFC 3261 §17.1.1.1).
pub const DEFAULT_T1: Duration = Duration::from_millis(500);
/// Default T2, the longest retransmit interval of a non-INVITE request.
pub const DEFAULT_T2: Duration = Duration::from_secs(4);
/// Default T4, the longest a message stays in the network.
pub const DEFAULT_T4: Duration = Duration::from_secs(5);
/// Server transactions one flow remembers at once.
pub const MAX_SERVER_TRANSACTIONS: usize = 1024;

/// The RFC 3261 timer values (`--sip-t1`, `--sip-t2`, `--sip-t4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// T1: first retransmit interval; Timer J is 64·T1.
    pub t1: Duration,
    /// T2: the retransmit interval's cap.
    pub t2: Duration,
    /// T4: Timer K.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: DEFAULT_T1,
            t2: DEFAULT_T2,
            t4: DEFAULT_T4,
        }
    }
}

impl Timers {
    /// Timer J: how long a non-INVITE server transaction keeps its final response.
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1.saturating_mul(64)
        }
    }

    /// Timer K: how long a completed client transaction absorbs retransmitted answers.
    pub fn timer_k(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }
}

/// State of a non-INVITE client transaction (RFC 3261 Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Sent, nothing heard.
    Trying,
    /// A provisional answer came.
    Proceeding,
    /// The final answer came; absorbing retransmissions of it until Timer K.
    Completed,
    /// Over.
    Terminated,
}

/// What a client transaction asks of its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// Timer E: send the request again, unchanged.
    Retransmit,
    /// Timer F: no final answer in time (a `408`-equivalent outcome, §8.1.3.1).
    TimedOut,
    /// Timer K fired: the transaction is gone.
    Terminated,
}

/// What an answer meant to the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// 1xx: keep waiting.
    Provisional,
    /// The final answer: hand it to the core.
    Final,
    /// A retransmitted or late answer: nothing to do.
    Absorbed,
}

/// A non-INVITE client transaction (RFC 3261 §17.1.2).
#[derive(Debug, Clone)]
pub struct Client {
    state: ClientState,
    timers: Timers,
    reliable: bool,
    /// Timer E: when to retransmit next and the interval after that; `None` on reliable
    /// transports.
    timer_e: Option<(Instant, Duration)>,
    /// Timer F.
    timer_f: Instant,
    /// Timer K, once completed.
    timer_k: Option<Instant>,
}

impl Client {
    /// A transaction whose request was just sent at `now`; `timeout` is Timer F (64·T1 in
    /// the RFC; the proxy's `--notify-timeout`).
    pub fn start(timers: Timers, reliable: bool, timeout: Duration, now: Instant) -> Self {
        Self {
            state: ClientState::Trying,
            timers,
            reliable,
            timer_e: (!reliable).then(|| (now + timers.t1, timers.t1)),
            timer_f: now + timeout,
            timer_k: None,
        }
    }

    /// The state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// When [`Client::on_timer`] must next be called; `None` once terminated.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => Some(match self.timer_e {
                Some((e, _)) => e.min(self.timer_f),
                None => self.timer_f,
            }),
            ClientState::Completed => self.timer_k,
            ClientState::Terminated => None,
        }
    }

    /// An answer matching this transaction (its branch and method) arrived at `now`.
    pub fn on_response(&mut self, final_answer: bool, now: Instant) -> Answered {
        match (self.state, final_answer) {
            (ClientState::Trying | ClientState::Proceeding, false) => {
                self.state = ClientState::Proceeding;
                Answered::Provisional
            }
            (ClientState::Trying | ClientState::Proceeding, true) => {
                self.state = ClientState::Completed;
                self.timer_e = None;
                let k = self.timers.timer_k(self.reliable);
                if k.is_zero() {
                    self.state = ClientState::Terminated;
                } else {
                    self.timer_k = Some(now + k);
                }
                Answered::Final
            }
            (ClientState::Completed | ClientState::Terminated, _) => Answered::Absorbed,
        }
    }

    /// The timers due at `now`: at most one event per call (call again while the deadline
    /// has passed).
    pub fn on_timer(&mut self, now: Instant) -> Option<ClientEvent> {
        match self.state {
            ClientState::Trying | ClientState::Proceeding => {
                if now >= self.timer_f {
                    self.state = ClientState::Terminated;
                    return Some(ClientEvent::TimedOut);
                }
                let (at, interval) = self.timer_e?;
                if now < at {
                    return None;
                }
                // Trying doubles up to T2; Proceeding retransmits every T2 (§17.1.2.2).
                let next = match self.state {
                    ClientState::Proceeding => self.timers.t2,
                    _ => interval.saturating_mul(2).min(self.timers.t2),
                };
                self.timer_e = Some((now + next, next));
                Some(ClientEvent::Retransmit)
            }
            ClientState::Completed => {
                if self.timer_k.is_some_and(|k| now >= k) {
                    self.state = ClientState::Terminated;
                    return Some(ClientEvent::Terminated);
                }
                None
            }
            ClientState::Terminated => None,
        }
    }
}

/// What a server transaction table says about an incoming request.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A new transaction: hand the request to the core.
    New,
    /// A retransmission while the core has not answered: nothing to send.
    Absorbed,
    /// A retransmission of a request already answered: send this response again.
    Repeat(Box<Response>),
}

/// RFC 3261 §17.2.3: what identifies a server transaction. For RFC 3261 branches (magic
/// cookie `z9hG4bK`) the branch, the sent-by and the method (ACK is not a method here:
/// non-INVITE only); for older clients Call-ID, CSeq, From-tag and the top Via instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    id: String,
    sent_by: String,
    method: String,
}

impl Key {
    fn of_request(req: &Request) -> Option<Self> {
        Self::new(&req.headers, req.method.as_str())
    }

    fn of_response(resp: &Response) -> Option<Self> {
        let method = resp
            .headers
            .get(&HeaderName::CSEQ)
            .and_then(|c| sip::CSeq::parse(c).ok())?
            .method;
        Self::new(&resp.headers, method.as_str())
    }

    fn new(headers: &sip::Headers, method: &str) -> Option<Self> {
        let top = headers.get_split(&HeaderName::VIA).next()?;
        let via = Via::parse(top).ok()?;
        let sent_by = match via.port {
            Some(p) => format!("{}:{p}", via.host.to_ascii_lowercase()),
            None => via.host.to_ascii_lowercase(),
        };
        let id = match via.branch() {
            Some(b) if b.starts_with("z9hG4bK") => b.to_owned(),
            _ => {
                // RFC 2543 matching (§17.2.3, second half), simplified to the headers that
                // stay the same across retransmissions.
                let from = headers.get(&HeaderName::FROM).unwrap_or_default();
                let call_id = headers.get(&HeaderName::CALL_ID).unwrap_or_default();
                let cseq = headers.get(&HeaderName::CSEQ).unwrap_or_default();
                format!("2543 {call_id} {cseq} {from} {top}")
            }
        };
        Some(Self {
            id,
            sent_by,
            method: method.to_owned(),
        })
    }
}

#[derive(Debug)]
struct Entry {
    /// The final response, once sent.
    response: Option<Box<Response>>,
    /// When the entry goes (Timer J once answered; a bound while waiting for the core).
    expires: Instant,
}

/// The server transactions of one flow (RFC 3261 §17.2.2).
#[derive(Debug)]
pub struct ServerTransactions {
    timers: Timers,
    reliable: bool,
    /// Longest a request may wait for the core before its entry is dropped (the core
    /// answers or times out well within this; it only bounds the table).
    waiting: Duration,
    entries: HashMap<Key, Entry>,
    expiry: BTreeSet<(Instant, Key)>,
}

impl ServerTransactions {
    /// An empty table for a flow of this reliability.
    pub fn new(timers: Timers, reliable: bool) -> Self {
        Self {
            timers,
            reliable,
            waiting: timers.t1.saturating_mul(64).max(Duration::from_secs(32)),
            entries: HashMap::new(),
            expiry: BTreeSet::new(),
        }
    }

    /// Number of transactions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A request arrived: new, or a retransmission of one this table holds. ACK (which
    /// only belongs to INVITE transactions) and requests without a usable Via are always new.
    pub fn on_request(&mut self, req: &Request, now: Instant) -> Incoming {
        if req.method == Method::Ack {
            return Incoming::New;
        }
        let Some(key) = Key::of_request(req) else {
            return Incoming::New;
        };
        if let Some(entry) = self.entries.get(&key) {
            return match &entry.response {
                Some(resp) => Incoming::Repeat(resp.clone()),
                None => Incoming::Absorbed,
            };
        }
        if self.entries.len() >= MAX_SERVER_TRANSACTIONS
            && let Some(oldest) = self.expiry.pop_first()
        {
            self.entries.remove(&oldest.1);
        }
        let expires = now + self.waiting;
        self.expiry.insert((expires, key.clone()));
        self.entries.insert(
            key,
            Entry {
                response: None,
                expires,
            },
        );
        Incoming::New
    }

    /// The core answered a request: a final response is kept for Timer J (on a reliable
    /// flow the transaction ends at once); a provisional one changes nothing.
    pub fn on_response(&mut self, resp: &Response, now: Instant) {
        if resp.status.is_provisional() {
            return;
        }
        let Some(key) = Key::of_response(resp) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&key) else {
            return;
        };
        self.expiry.remove(&(entry.expires, key.clone()));
        let j = self.timers.timer_j(self.reliable);
        if j.is_zero() {
            self.entries.remove(&key);
            return;
        }
        entry.response = Some(Box::new(resp.clone()));
        entry.expires = now + j;
        self.expiry.insert((entry.expires, key));
    }

    /// Forgets the transactions whose time is up at `now`.
    pub fn on_timer(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiry.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.expiry.pop_first() {
                self.entries.remove(&key);
            }
        }
    }

    /// When [`ServerTransactions::on_timer`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.expiry.first().map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives a transaction to its end, recording when each retransmission happens.
    fn retransmissions(mut tx: Client, start: Instant) -> (Vec<Duration>, Option<Duration>) {
        let mut at = Vec::new();
        let mut timed_out = None;
        while let Some(deadline) = tx.deadline() {
            match tx.on_timer(deadline) {
                Some(ClientEvent::Retransmit) => at.push(deadline - start),
                Some(ClientEvent::TimedOut) => {
                    timed_out = Some(deadline - start);
                    break;
                }
                Some(ClientEvent::Terminated) | None => break,
            }
        }
        (at, timed_out)
    }

    #[test]
    fn timer_e_doubles_from_t1_to_t2_until_timer_f() {
        let now = Instant::now();
        let tx = Client::start(Timers::default(), false, Duration::from_secs(32), now);
        let (at, timed_out) = retransmissions(tx, now);
        // 0.5, 1.5, 3.5, 7.5, then every 4 s (T2) until F at 32 s.
        let expected: Vec<Duration> = [
            500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
        ]
        .into_iter()
        .map(ms)
        .collect();
        assert_eq!(at, expected);
        assert_eq!(timed_out, Some(Duration::from_secs(32)));
    }

    #[test]
    fn reliable_transports_never_retransmit() {
        let now = Instant::now();
        let tx = Client::start(Timers::default(), true, Duration::from_secs(32), now);
        let (at, timed_out) = retransmissions(tx, now);
        assert!(at.is_empty());
        assert_eq!(timed_out, Some(Duration::from_secs(32)));
    }

    #[test]
    fn a_provisional_answer_slows_retransmission_to_t2() {
        let now = Instant::now();
        let mut tx = Client::start(Timers::default(), false, Duration::from_secs(32), now);
        assert_eq!(tx.on_timer(now + ms(500)), Some(ClientEvent::Retransmit));
        assert_eq!(tx.on_response(false, now + ms(600)), Answered::Provisional);
        assert_eq!(tx.state(), ClientState::Proceeding);
        // The next one was already scheduled at 1.5 s; after it, every T2.
        assert_eq!(tx.deadline(), Some(now + ms(1500)));
        assert_eq!(tx.on_timer(now + ms(1500)), Some(ClientEvent::Retransmit));
        assert_eq!(tx.deadline(), Some(now + ms(5500)));
    }

    #[test]
    fn the_final_answer_completes_and_timer_k_absorbs_repeats() {
        let now = Instant::now();
        let mut tx = Client::start(Timers::default(), false, Duration::from_secs(32), now);
        assert_eq!(tx.on_response(true, now + ms(100)), Answered::Final);
        assert_eq!(tx.state(), ClientState::Completed);
        assert_eq!(tx.on_response(true, now + ms(200)), Answered::Absorbed);
        assert_eq!(tx.deadline(), Some(now + ms(5100)));
        assert_eq!(tx.on_timer(now + ms(5000)), None);
        assert_eq!(tx.on_timer(now + ms(5100)), Some(ClientEvent::Terminated));
        assert_eq!(tx.deadline(), None);
        // Reliable: terminated at the final answer (Timer K = 0).
        let mut tx = Client::start(Timers::default(), true, Duration::from_secs(32), now);
        assert_eq!(tx.on_response(true, now), Answered::Final);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    fn request(branch: &str, method: &str) -> Request {
        let raw = format!(
            "{method} sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch={branch}\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        match sip::parse_message(raw.as_bytes()).unwrap() {
            sip::Message::Request(r) => r,
            sip::Message::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn a_retransmission_is_absorbed_then_answered_the_same_until_timer_j() {
        let now = Instant::now();
        let mut t = ServerTransactions::new(Timers::default(), false);
        let req = request("z9hG4bKa", "SUBSCRIBE");
        assert_eq!(t.on_request(&req, now), Incoming::New);
        assert_eq!(t.on_request(&req, now + ms(500)), Incoming::Absorbed);
        let resp = Response::for_request(&req, sip::StatusCode::OK);
        t.on_response(&resp, now + ms(600));
        assert_eq!(
            t.on_request(&req, now + ms(1000)),
            Incoming::Repeat(Box::new(resp.clone()))
        );
        // Another branch, or another method with the same branch, is another transaction.
        assert_eq!(
            t.on_request(&request("z9hG4bKb", "SUBSCRIBE"), now),
            Incoming::New
        );
        assert_eq!(
            t.on_request(&request("z9hG4bKa", "OPTIONS"), now),
            Incoming::New
        );
        // Timer J = 64·T1 = 32 s after the answer.
        t.on_timer(now + ms(600) + Duration::from_secs(32));
        assert_eq!(
            t.on_request(&req, now + Duration::from_secs(33)),
            Incoming::New
        );
    }

    #[test]
    fn reliable_flows_forget_a_transaction_at_its_answer() {
        let now = Instant::now();
        let mut t = ServerTransactions::new(Timers::default(), true);
        let req = request("z9hG4bKa", "SUBSCRIBE");
        assert_eq!(t.on_request(&req, now), Incoming::New);
        t.on_response(&Response::for_request(&req, sip::StatusCode::OK), now);
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut t = ServerTransactions::new(Timers::default(), false);
        for i in 0..MAX_SERVER_TRANSACTIONS + 10 {
            t.on_request(&request(&format!("z9hG4bK{i}"), "OPTIONS"), now);
        }
        assert_eq!(t.len(), MAX_SERVER_TRANSACTIONS);
    }
}
