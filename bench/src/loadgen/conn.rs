//! One connection (a WebSocket or TCP connection, or a UDP socket) carrying up to
//! `--dialogs-per-connection` subscription dialogs, driven by one task: it reads, answers
//! every NOTIFY with 200 in the same pass, runs the dialogs' timers (UDP retransmissions,
//! first-NOTIFY timeout, refreshes) and writes everything queued in one batch per pass.

use super::msg::{self, Msg, Name, Start};
use super::stats::Counters;
use super::{Config, DigestChoice, Transport};
use conflist_tests::auth::{Challenge, DigestInput, authorization};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as Ws};

/// RFC 3261 T1 and T2: SUBSCRIBE retransmissions over UDP (Timer E).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Largest stream message accepted (head and body).
const MAX_STREAM_MESSAGE: usize = 4 << 20;
/// Messages handled per wake-up before the task writes and looks at its other inputs.
const READ_BATCH: usize = 64;
/// Errors printed per process (the rest are only counted).
const MAX_PRINTED_ERRORS: u64 = 5;

thread_local! {
    /// Receive buffer of the worker thread (UDP datagrams, TCP reads): no per-socket buffer.
    static RECV_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

/// What the controller asks of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmd {
    /// Open client `client`'s subscription (dispatched at `at`).
    Start { client: u32, at: Instant },
    /// End client `client`'s subscription (Expires: 0).
    Unsubscribe { client: u32 },
}

/// Why a subscription failed or ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No first NOTIFY (or no final response) in time.
    Timeout,
    /// The connection (or WebSocket handshake) failed.
    Connect,
    /// The connection closed, or failed in use.
    Closed,
    /// The first NOTIFY's body lacks the expected root element.
    BadBody,
    /// The NOTIFY said `Subscription-State: terminated`.
    Terminated,
    /// A final response of this status.
    Status(u16),
    /// Unsubscribe asked of a dialog that is not active.
    NotActive,
    /// The unsubscribe got its 2xx but no terminated NOTIFY in time.
    NoFinalNotify,
    /// Ended by SIGTERM/SIGINT while waiting for the first NOTIFY.
    Interrupted,
    /// Never started (SIGTERM/SIGINT during the opening).
    NotStarted,
}

impl Reason {
    pub(crate) fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            Reason::Timeout => "timeout".into(),
            Reason::Connect => "connect".into(),
            Reason::Closed => "closed".into(),
            Reason::BadBody => "bad_body".into(),
            Reason::Terminated => "terminated".into(),
            Reason::Status(s) => s.to_string().into(),
            Reason::NotActive => "not_active".into(),
            Reason::NoFinalNotify => "no_final_notify".into(),
            Reason::Interrupted => "interrupted".into(),
            Reason::NotStarted => "not_started".into(),
        }
    }
}

/// What a connection tells the controller.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Report {
    /// First NOTIFY read: the subscription is established.
    Opened {
        client: u32,
        first_notify_us: u32,
        before_200: bool,
        at: Instant,
    },
    /// The subscription failed before its first NOTIFY.
    Failed {
        client: u32,
        reason: Reason,
        at: Instant,
    },
    /// The initial SUBSCRIBE's 2xx (after the first SUBSCRIBE by `us`).
    Ok {
        us: u32,
    },
    /// An established subscription ended without our asking.
    Lost {
        client: u32,
        reason: Reason,
    },
    RefreshSent,
    Refreshed,
    RefreshFailed {
        client: u32,
        reason: Reason,
    },
    /// The unsubscribe finished.
    Unsubscribed {
        client: u32,
        result: Result<(), Reason>,
        at: Instant,
    },
}

/// One line of `--notify-log`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogLine {
    pub(crate) client: u32,
    pub(crate) unix_ns: u64,
    pub(crate) bytes: u32,
    pub(crate) partial: bool,
}

/// What every connection task of a process shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    /// Random per process: prefix of Call-IDs, tags and branches.
    pub(crate) run: String,
    /// `<run>.`: the Call-ID prefix.
    pub(crate) call_prefix: Vec<u8>,
    pub(crate) counters: Counters,
    pub(crate) errors_printed: AtomicU64,
    pub(crate) reports: mpsc::UnboundedSender<Report>,
    pub(crate) log: Option<std::sync::mpsc::Sender<LogLine>>,
}

impl Shared {
    fn report(&self, r: Report) {
        // The controller is gone only when the process is ending.
        let _ = self.reports.send(r);
    }

    fn print_error(&self, what: std::fmt::Arguments<'_>) {
        let n = self
            .errors_printed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < MAX_PRINTED_ERRORS {
            eprintln!("loadgen: {what}");
        } else if n == MAX_PRINTED_ERRORS {
            eprintln!("loadgen: (further errors are only counted)");
        }
    }
}

pub(crate) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// SUBSCRIBE sent, no first NOTIFY yet.
    Opening,
    /// First NOTIFY read.
    Up,
    /// Unsubscribe sent, waiting for its 2xx and the terminated NOTIFY.
    Unsub,
    /// Over (failed, lost or unsubscribed).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Initial,
    Refresh,
    Unsub,
}

/// The SUBSCRIBE transaction in flight.
#[derive(Debug)]
struct Txn {
    kind: Kind,
    cseq: u32,
    auth_tries: u8,
    /// The request, for retransmissions (UDP only).
    resend: Vec<u8>,
    interval: Duration,
}

#[derive(Debug)]
struct Dialog {
    state: State,
    /// The first SUBSCRIBE was sent.
    sent: Instant,
    cseq: u32,
    got_ok: bool,
    to_tag: Option<Box<[u8]>>,
    target: Option<Box<[u8]>>,
    txn: Option<Txn>,
    last_notify_cseq: Option<u32>,
    refresh_token: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    Retransmit,
    TxnTimeout,
    OpenTimeout,
    Refresh,
    UnsubWait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    local: u32,
    kind: TimerKind,
    token: u32,
}

/// Messages queued for the next write: `buf` holds them back to back, `ends` where each ends.
#[derive(Debug, Default)]
struct Out {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Out {
    fn end(&mut self) {
        self.ends.push(self.buf.len());
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
    }
}

/// The SIP side of a connection: its dialogs and timers.
#[derive(Debug)]
struct Sip {
    shared: Arc<Shared>,
    transport: Transport,
    /// `SIP/2.0/UDP 127.0.0.1:40000`.
    via: String,
    /// `<sip:lg@127.0.0.1:40000;transport=udp>`.
    contact: String,
    /// Client index of `dialogs[0]`.
    base: u32,
    dialogs: Vec<Dialog>,
    timers: BinaryHeap<Reverse<Timer>>,
    out: Out,
}

fn host_port(a: SocketAddr) -> String {
    match a.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", a.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", a.port()),
    }
}

impl Sip {
    fn new(shared: Arc<Shared>, local: SocketAddr, conn: u32, base: u32, count: u32) -> Sip {
        let transport = shared.cfg.target.transport;
        let hp = host_port(local);
        let via = format!("SIP/2.0/{} {hp}", transport.via());
        let contact = match transport {
            Transport::Ws => format!("<sip:lg@{}c{conn}.invalid;transport=ws>", shared.run),
            t => format!("<sip:lg@{hp};transport={}>", t.name()),
        };
        let now = Instant::now();
        let dialogs = (0..count)
            .map(|_| Dialog {
                state: State::Idle,
                sent: now,
                cseq: 0,
                got_ok: false,
                to_tag: None,
                target: None,
                txn: None,
                last_notify_cseq: None,
                refresh_token: 0,
            })
            .collect();
        Sip {
            shared,
            transport,
            via,
            contact,
            base,
            dialogs,
            timers: BinaryHeap::new(),
            out: Out::default(),
        }
    }

    fn timer(&mut self, at: Instant, local: usize, kind: TimerKind, token: u32) {
        self.timers.push(Reverse(Timer {
            at,
            local: local as u32,
            kind,
            token,
        }));
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.0.at)
    }

    fn client(&self, local: usize) -> u32 {
        self.base + local as u32
    }

    fn local_of(&self, call_id: Option<&[u8]>) -> Option<usize> {
        let n = call_id?.strip_prefix(self.shared.call_prefix.as_slice())?;
        let client = msg::parse_u32(n)?;
        let local = client.checked_sub(self.base)? as usize;
        (local < self.dialogs.len()).then_some(local)
    }

    /// Queues a SUBSCRIBE of `kind` for dialog `local` (a new transaction, CSeq + 1).
    /// `resend` is a spare buffer (from the previous transaction) for the retransmission copy.
    fn subscribe(
        &mut self,
        local: usize,
        kind: Kind,
        authz: Option<(&str, &str)>,
        tries: u8,
        mut resend: Vec<u8>,
        now: Instant,
    ) {
        let client = self.client(local);
        let cfg = &self.shared.cfg;
        let run = &self.shared.run;
        let mut user = String::new();
        cfg.users.write(client, &mut user);
        let domain = &cfg.args.domain;
        let d = &mut self.dialogs[local];
        d.cseq += 1;
        let cseq = d.cseq;
        let buf = &mut self.out.buf;
        let start = buf.len();
        buf.extend_from_slice(b"SUBSCRIBE ");
        match (&d.target, kind) {
            (Some(t), Kind::Refresh | Kind::Unsub) => buf.extend_from_slice(t),
            _ => {
                let _ = write!(buf, "sip:{user}@{domain}");
            }
        }
        let _ = write!(
            buf,
            " SIP/2.0\r\nVia: {};branch=z9hG4bK{run}.{client}.{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{domain}>;tag={run}.{client}\r\n\
             To: <sip:{user}@{domain}>",
            self.via
        );
        if kind != Kind::Initial
            && let Some(tag) = &d.to_tag
        {
            buf.extend_from_slice(b";tag=");
            buf.extend_from_slice(tag);
        }
        let expires = if kind == Kind::Unsub {
            0
        } else {
            cfg.args.expires
        };
        let _ = write!(
            buf,
            "\r\nCall-ID: {run}.{client}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: {}\r\n\
             Event: {}\r\nAccept: {}\r\nExpires: {expires}\r\n",
            self.contact, cfg.args.event, cfg.args.accept
        );
        if let Some((name, value)) = authz {
            let _ = write!(buf, "{name}: {value}\r\n");
        }
        buf.extend_from_slice(b"User-Agent: conflist-loadgen\r\nContent-Length: 0\r\n\r\n");
        let udp = self.transport == Transport::Udp;
        resend.clear();
        if udp {
            resend.extend_from_slice(&buf[start..]);
        }
        d.txn = Some(Txn {
            kind,
            cseq,
            auth_tries: tries,
            resend,
            interval: T1,
        });
        self.out.end();
        if udp {
            self.timer(now + T1, local, TimerKind::Retransmit, cseq);
        }
        let timeout = self.shared.cfg.args.timeout;
        self.timer(now + timeout, local, TimerKind::TxnTimeout, cseq);
    }

    /// The Request-URI dialog `local`'s next SUBSCRIBE of `kind` uses (for the digest).
    fn ruri(&self, local: usize, kind: Kind) -> String {
        let d = &self.dialogs[local];
        match (&d.target, kind) {
            (Some(t), Kind::Refresh | Kind::Unsub) => String::from_utf8_lossy(t).into_owned(),
            _ => format!(
                "sip:{}@{}",
                self.shared.cfg.users.name(self.client(local)),
                self.shared.cfg.args.domain
            ),
        }
    }

    /// The `Authorization`/`Proxy-Authorization` answering a 401/407's challenge, and
    /// whether that challenge said `stale=true` (the nonce expired, the password was right).
    fn authorize(
        &self,
        m: &Msg<'_>,
        status: u16,
        local: usize,
        kind: Kind,
    ) -> Option<(String, bool)> {
        let password = self.shared.cfg.args.password.as_deref()?;
        let want = if status == 407 {
            Name::ProxyAuthenticate
        } else {
            Name::WwwAuthenticate
        };
        let challenges: Vec<Challenge> = m
            .headers()
            .filter(|h| h.name == want)
            .filter_map(|h| Challenge::parse(std::str::from_utf8(h.value).ok()?).ok())
            .collect();
        let pick = |alg: &str| {
            challenges
                .iter()
                .find(|c| c.algorithm.eq_ignore_ascii_case(alg))
        };
        let challenge = match self.shared.cfg.digest {
            DigestChoice::First => None,
            DigestChoice::Md5 => pick("MD5"),
            DigestChoice::Sha256 => pick("SHA-256"),
        }
        .or_else(|| challenges.first())?;
        let username = self.shared.cfg.users.name(self.client(local));
        let uri = self.ruri(local, kind);
        let cnonce = format!("{:016x}", rand::random::<u64>());
        let value = authorization(
            challenge,
            &DigestInput {
                username: &username,
                password,
                method: "SUBSCRIBE",
                uri: &uri,
                nc: 1,
                cnonce: &cnonce,
            },
        );
        Some((value, challenge.stale))
    }

    fn start(&mut self, client: u32, at: Instant) {
        let Some(local) = client
            .checked_sub(self.base)
            .map(|l| l as usize)
            .filter(|l| *l < self.dialogs.len())
        else {
            return;
        };
        if self.dialogs[local].state != State::Idle {
            return;
        }
        let d = &mut self.dialogs[local];
        d.state = State::Opening;
        let d_sent = Instant::now();
        d.sent = d_sent;
        let timeout = self.shared.cfg.args.timeout;
        self.timer(at + timeout, local, TimerKind::OpenTimeout, 0);
        self.subscribe(local, Kind::Initial, None, 0, Vec::new(), d_sent);
    }

    fn unsubscribe(&mut self, client: u32) {
        let local = client
            .checked_sub(self.base)
            .map(|l| l as usize)
            .filter(|l| *l < self.dialogs.len());
        match local {
            Some(local) if self.dialogs[local].state == State::Up => {
                let d = &mut self.dialogs[local];
                d.state = State::Unsub;
                // A refresh in flight is dropped: the unsubscribe replaces it.
                let spare = d.txn.take().map(|t| t.resend).unwrap_or_default();
                self.subscribe(local, Kind::Unsub, None, 0, spare, Instant::now());
            }
            _ => self.shared.report(Report::Unsubscribed {
                client,
                result: Err(Reason::NotActive),
                at: Instant::now(),
            }),
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Start { client, at } => self.start(client, at),
            Cmd::Unsubscribe { client } => self.unsubscribe(client),
        }
    }

    fn refuse(&self, cmd: Cmd, reason: Reason) {
        refuse(&self.shared, cmd, reason);
    }

    fn fail(&mut self, local: usize, reason: Reason) {
        let d = &mut self.dialogs[local];
        d.state = State::Done;
        d.txn = None;
        let client = self.client(local);
        self.shared.report(Report::Failed {
            client,
            reason,
            at: Instant::now(),
        });
    }

    fn schedule_refresh(&mut self, local: usize, from: Instant, granted: u32) {
        if granted < 2 {
            return;
        }
        let d = &mut self.dialogs[local];
        d.refresh_token += 1;
        let token = d.refresh_token;
        let at = from + Duration::from_secs(u64::from(granted / 2));
        self.timer(at, local, TimerKind::Refresh, token);
    }

    /// The connection is gone: every dialog ends.
    fn lose_all(&mut self, reason: Reason) {
        let at = Instant::now();
        for local in 0..self.dialogs.len() {
            let client = self.client(local);
            let d = &mut self.dialogs[local];
            let r = match d.state {
                State::Opening => Report::Failed { client, reason, at },
                State::Up => Report::Lost { client, reason },
                State::Unsub => Report::Unsubscribed {
                    client,
                    result: Err(reason),
                    at,
                },
                State::Idle | State::Done => continue,
            };
            d.state = State::Done;
            d.txn = None;
            self.shared.report(r);
        }
    }

    /// Runs every timer due at `now`.
    fn fire(&mut self, now: Instant) {
        while let Some(Reverse(t)) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            self.on_timer(t, now);
        }
    }

    fn on_timer(&mut self, t: Timer, now: Instant) {
        let local = t.local as usize;
        let client = self.client(local);
        let d = &mut self.dialogs[local];
        let txn_matches = d.txn.as_ref().is_some_and(|x| x.cseq == t.token);
        match t.kind {
            TimerKind::Retransmit if txn_matches => {
                let Some(txn) = d.txn.as_mut() else { return };
                self.out.buf.extend_from_slice(&txn.resend);
                self.out.end();
                txn.interval = (txn.interval * 2).min(T2);
                let next = now + txn.interval;
                Counters::add(&self.shared.counters.subscribe_retransmissions);
                self.timer(next, local, TimerKind::Retransmit, t.token);
            }
            TimerKind::TxnTimeout if txn_matches => {
                let kind = d.txn.take().map(|x| x.kind);
                let report = match (kind, d.state) {
                    (Some(Kind::Initial), State::Opening) => {
                        self.fail(local, Reason::Timeout);
                        return;
                    }
                    (Some(Kind::Refresh), State::Up) => Report::RefreshFailed {
                        client,
                        reason: Reason::Timeout,
                    },
                    (Some(Kind::Unsub), State::Unsub) => Report::Unsubscribed {
                        client,
                        result: Err(Reason::Timeout),
                        at: now,
                    },
                    _ => return,
                };
                d.state = State::Done;
                self.shared.report(report);
            }
            TimerKind::OpenTimeout if d.state == State::Opening => {
                self.fail(local, Reason::Timeout);
            }
            TimerKind::Refresh if d.state == State::Up && d.refresh_token == t.token => {
                let spare = d.txn.take().map(|x| x.resend).unwrap_or_default();
                self.subscribe(local, Kind::Refresh, None, 0, spare, now);
                self.shared.report(Report::RefreshSent);
            }
            TimerKind::UnsubWait if d.state == State::Unsub && d.txn.is_none() => {
                d.state = State::Done;
                self.shared.report(Report::Unsubscribed {
                    client,
                    result: Err(Reason::NoFinalNotify),
                    at: now,
                });
            }
            _ => {}
        }
    }

    /// One complete message off the wire.
    fn on_message(&mut self, raw: &[u8], at: Instant, ns: u64) {
        let Some(m) = msg::scan(raw) else {
            Counters::add(&self.shared.counters.malformed);
            return;
        };
        match m.start {
            Start::Request { method } => {
                if method == b"ACK" {
                    return;
                }
                let notify = method == b"NOTIFY";
                let status = if notify || method == b"OPTIONS" {
                    "200 OK"
                } else {
                    "405 Method Not Allowed"
                };
                msg::write_response(&mut self.out.buf, &m, status);
                self.out.end();
                Counters::add(&self.shared.counters.responses_sent);
                if notify {
                    Counters::add(&self.shared.counters.notifies);
                    self.on_notify(&m, at, ns);
                }
            }
            Start::Response { status } => self.on_response(&m, status, at),
        }
    }

    fn on_notify(&mut self, m: &Msg<'_>, at: Instant, ns: u64) {
        let counters = &self.shared.counters;
        let Some(local) = self.local_of(m.call_id) else {
            Counters::add(&counters.unknown_notifies);
            return;
        };
        let client = self.client(local);
        let d = &mut self.dialogs[local];
        if let Some((n, _)) = m.cseq {
            if d.last_notify_cseq.is_some_and(|last| n <= last) {
                Counters::add(&counters.notify_retransmissions);
                return;
            }
            d.last_notify_cseq = Some(n);
        }
        let terminated = m.sub_state.is_some_and(msg::is_terminated);
        match d.state {
            State::Opening => {
                if terminated {
                    self.fail(local, Reason::Terminated);
                } else if !msg::has_root(m.body, &self.shared.cfg.args.expect_root) {
                    self.fail(local, Reason::BadBody);
                } else {
                    d.state = State::Up;
                    if d.to_tag.is_none() {
                        d.to_tag = m.from.and_then(|f| msg::param(f, "tag")).map(Box::from);
                    }
                    if d.target.is_none() {
                        d.target = m.contact.map(|c| Box::from(msg::uri_of(c)));
                    }
                    let before_200 = !d.got_ok;
                    let first_notify_us = micros(at.saturating_duration_since(d.sent));
                    if before_200
                        && let Some(e) = m
                            .sub_state
                            .and_then(|s| msg::param(s, "expires"))
                            .and_then(msg::parse_u32)
                    {
                        self.schedule_refresh(local, at, e);
                    }
                    self.shared.report(Report::Opened {
                        client,
                        first_notify_us,
                        before_200,
                        at,
                    });
                }
            }
            State::Up => {
                if let Some(log) = &self.shared.log {
                    let _ = log.send(LogLine {
                        client,
                        unix_ns: ns,
                        bytes: m.body.len() as u32,
                        partial: msg::is_partial(m.body),
                    });
                }
                if terminated {
                    d.state = State::Done;
                    d.txn = None;
                    self.shared.report(Report::Lost {
                        client,
                        reason: Reason::Terminated,
                    });
                }
            }
            State::Unsub if terminated => {
                d.state = State::Done;
                d.txn = None;
                self.shared.report(Report::Unsubscribed {
                    client,
                    result: Ok(()),
                    at,
                });
            }
            _ => {}
        }
    }

    fn on_response(&mut self, m: &Msg<'_>, status: u16, at: Instant) {
        let Some(local) = self.local_of(m.call_id) else {
            return;
        };
        let Some((cseq, method)) = m.cseq else {
            return;
        };
        if !method.eq_ignore_ascii_case(b"SUBSCRIBE") {
            return;
        }
        let client = self.client(local);
        let d = &mut self.dialogs[local];
        let Some(txn) = d.txn.as_mut().filter(|t| t.cseq == cseq) else {
            return;
        };
        if status < 200 {
            txn.interval = T2;
            return;
        }
        let Some(txn) = d.txn.take() else { return };
        // Credentials once; again only for a stale nonce (a wrong password stays wrong).
        if matches!(status, 401 | 407)
            && let Some((value, stale)) = self.authorize(m, status, local, txn.kind)
            && (txn.auth_tries == 0 || (stale && txn.auth_tries < 3))
        {
            let name = if status == 407 {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            let tries = txn.auth_tries + 1;
            self.subscribe(local, txn.kind, Some((name, &value)), tries, txn.resend, at);
            return;
        }
        let d = &mut self.dialogs[local];
        let ok = (200..300).contains(&status);
        let granted = m
            .expires
            .and_then(msg::parse_u32)
            .unwrap_or(self.shared.cfg.args.expires);
        match txn.kind {
            Kind::Initial => {
                if ok {
                    d.got_ok = true;
                    if d.to_tag.is_none() {
                        d.to_tag = m.to.and_then(|t| msg::param(t, "tag")).map(Box::from);
                    }
                    if d.target.is_none() {
                        d.target = m.contact.map(|c| Box::from(msg::uri_of(c)));
                    }
                    let us = micros(at.saturating_duration_since(d.sent));
                    let live = matches!(d.state, State::Opening | State::Up);
                    self.shared.report(Report::Ok { us });
                    if live {
                        self.schedule_refresh(local, at, granted);
                    }
                } else {
                    match d.state {
                        State::Opening => self.fail(local, Reason::Status(status)),
                        State::Up => {
                            d.state = State::Done;
                            self.shared.report(Report::Lost {
                                client,
                                reason: Reason::Status(status),
                            });
                        }
                        _ => {}
                    }
                }
            }
            Kind::Refresh => {
                if d.state != State::Up {
                    return;
                }
                if ok {
                    self.shared.report(Report::Refreshed);
                    self.schedule_refresh(local, at, granted);
                } else {
                    d.state = State::Done;
                    self.shared.report(Report::RefreshFailed {
                        client,
                        reason: Reason::Status(status),
                    });
                }
            }
            Kind::Unsub => {
                if d.state != State::Unsub {
                    return;
                }
                if ok {
                    let timeout = self.shared.cfg.args.timeout;
                    self.timer(at + timeout, local, TimerKind::UnsubWait, 0);
                } else {
                    d.state = State::Done;
                    self.shared.report(Report::Unsubscribed {
                        client,
                        result: Err(Reason::Status(status)),
                        at,
                    });
                }
            }
        }
    }

    /// Cuts stream bytes into messages and handles them; returns the bytes used.
    fn on_stream(&mut self, data: &[u8], at: Instant, ns: u64) -> Result<usize, Reason> {
        let mut pos = 0;
        while pos < data.len() {
            match sip::framing::frame_stream(&data[pos..], MAX_STREAM_MESSAGE) {
                Ok(None) => break,
                Ok(Some((frame, used))) => {
                    pos += used;
                    match frame {
                        sip::framing::Frame::Ping => {
                            self.out.buf.extend_from_slice(b"\r\n");
                            self.out.end();
                        }
                        sip::framing::Frame::Pong => {}
                        sip::framing::Frame::Message(m) => self.on_message(&m, at, ns),
                    }
                }
                Err(e) => {
                    self.shared.print_error(format_args!("stream framing: {e}"));
                    return Err(Reason::Closed);
                }
            }
        }
        Ok(pos)
    }
}

/// A command a connection cannot carry out (it is gone): reported as failed.
fn refuse(shared: &Shared, cmd: Cmd, reason: Reason) {
    let at = Instant::now();
    shared.report(match cmd {
        Cmd::Start { client, .. } => Report::Failed { client, reason, at },
        Cmd::Unsubscribe { client } => Report::Unsubscribed {
            client,
            result: Err(reason),
            at,
        },
    });
}

/// The socket of a connection.
enum Wire {
    Ws(Box<WebSocketStream<TcpStream>>),
    Tcp {
        stream: TcpStream,
        /// A message cut by the end of a read, waiting for the rest.
        pending: Vec<u8>,
    },
    Udp(UdpSocket),
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wire::Ws(_) => "Wire::Ws",
            Wire::Tcp { .. } => "Wire::Tcp",
            Wire::Udp(_) => "Wire::Udp",
        })
    }
}

fn ws_config() -> WebSocketConfig {
    // Small eager read buffer (the default 128 KiB per connection adds up to GBs).
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(64 * 1024)
}

async fn tcp_connect(shared: &Shared, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let addr = shared.cfg.addr;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connects connection `conn` (bound to its `--sources` address).
async fn connect(shared: &Shared, conn: u32) -> anyhow::Result<(Wire, SocketAddr)> {
    use anyhow::Context as _;
    let sources = &shared.cfg.sources;
    let source = (!sources.is_empty()).then(|| sources[conn as usize % sources.len()]);
    let addr = shared.cfg.addr;
    let from = source.map(|s| format!(" from {s}")).unwrap_or_default();
    match shared.cfg.target.transport {
        Transport::Udp => {
            let bind = source.unwrap_or(if addr.is_ipv4() {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            });
            let socket = UdpSocket::bind(SocketAddr::new(bind, 0))
                .await
                .with_context(|| format!("bind UDP{from}"))?;
            socket
                .connect(addr)
                .await
                .with_context(|| format!("connect UDP {addr}{from}"))?;
            let local = socket.local_addr()?;
            Ok((Wire::Udp(socket), local))
        }
        Transport::Tcp => {
            let stream = tcp_connect(shared, source)
                .await
                .with_context(|| format!("connect TCP {addr}{from}"))?;
            let local = stream.local_addr()?;
            Ok((
                Wire::Tcp {
                    stream,
                    pending: Vec::new(),
                },
                local,
            ))
        }
        Transport::Ws => {
            use tungstenite::client::IntoClientRequest as _;
            let stream = tcp_connect(shared, source)
                .await
                .with_context(|| format!("connect TCP {addr}{from}"))?;
            let local = stream.local_addr()?;
            let mut req = shared.cfg.target.url.as_str().into_client_request()?;
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", "sip".parse()?);
            let (ws, resp) =
                tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
                    .await
                    .with_context(|| {
                        format!("WebSocket handshake with {}", shared.cfg.target.url)
                    })?;
            let proto = resp.headers().get("sec-websocket-protocol");
            if proto.map(|p| p.as_bytes()) != Some(b"sip") {
                anyhow::bail!("the server did not select subprotocol sip: {proto:?}");
            }
            Ok((Wire::Ws(Box::new(ws)), local))
        }
    }
}

impl Wire {
    /// Waits until something is readable, then handles what is there (a bounded batch).
    /// Cancel safe: the only await point is the wait. `Err`: the connection is over.
    async fn read(&mut self, sip: &mut Sip) -> Result<(), Reason> {
        match self {
            Wire::Ws(ws) => {
                let mut next = Some(ws.next().await);
                let mut n = 0;
                while let Some(item) = next {
                    let at = Instant::now();
                    let ns = unix_ns();
                    match item {
                        None => return Err(Reason::Closed),
                        Some(Err(e)) => {
                            sip.shared.print_error(format_args!("WebSocket read: {e}"));
                            return Err(Reason::Closed);
                        }
                        Some(Ok(Ws::Text(t))) => sip.on_message(t.as_bytes(), at, ns),
                        Some(Ok(Ws::Binary(b))) => sip.on_message(&b, at, ns),
                        Some(Ok(Ws::Close(_))) => return Err(Reason::Closed),
                        Some(Ok(_)) => {}
                    }
                    n += 1;
                    if n >= READ_BATCH {
                        break;
                    }
                    next = ws.next().now_or_never();
                }
                Ok(())
            }
            Wire::Udp(socket) => {
                socket.readable().await.map_err(|_| Reason::Closed)?;
                RECV_BUF.with_borrow_mut(|buf| {
                    for _ in 0..READ_BATCH {
                        match socket.try_recv(buf) {
                            Ok(n) => sip.on_message(&buf[..n], Instant::now(), unix_ns()),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            // ICMP port unreachable and the like: UDP carries on (timeouts
                            // and retransmissions decide).
                            Err(_) => break,
                        }
                    }
                });
                Ok(())
            }
            Wire::Tcp { stream, pending } => {
                stream.readable().await.map_err(|_| Reason::Closed)?;
                RECV_BUF.with_borrow_mut(|buf| {
                    for _ in 0..READ_BATCH {
                        let n = match stream.try_read(buf) {
                            Ok(0) => return Err(Reason::Closed),
                            Ok(n) => n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(_) => return Err(Reason::Closed),
                        };
                        let (at, ns) = (Instant::now(), unix_ns());
                        if pending.is_empty() {
                            let used = sip.on_stream(&buf[..n], at, ns)?;
                            pending.extend_from_slice(&buf[used..n]);
                        } else {
                            pending.extend_from_slice(&buf[..n]);
                            let used = sip.on_stream(pending, at, ns)?;
                            pending.drain(..used);
                            if pending.is_empty() && pending.capacity() > 65_536 {
                                *pending = Vec::new();
                            }
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Ok(())
                })
            }
        }
    }

    /// Writes everything queued (one flush).
    async fn write(&mut self, out: &mut Out) -> Result<(), Reason> {
        if out.ends.is_empty() {
            return Ok(());
        }
        let result = match self {
            Wire::Ws(ws) => {
                let mut start = 0;
                let mut r = Ok(());
                for &end in &out.ends {
                    let seg = &out.buf[start..end];
                    start = end;
                    let m = match std::str::from_utf8(seg) {
                        Ok(s) => Ws::Text(s.into()),
                        Err(_) => Ws::Binary(tungstenite::Bytes::copy_from_slice(seg)),
                    };
                    if ws.feed(m).await.is_err() {
                        r = Err(Reason::Closed);
                        break;
                    }
                }
                if r.is_ok() && ws.flush().await.is_err() {
                    r = Err(Reason::Closed);
                }
                r
            }
            Wire::Tcp { stream, .. } => {
                use tokio::io::AsyncWriteExt as _;
                stream.write_all(&out.buf).await.map_err(|_| Reason::Closed)
            }
            Wire::Udp(socket) => {
                let mut start = 0;
                for &end in &out.ends {
                    // Lost datagrams are what retransmissions are for.
                    let _ = socket.send(&out.buf[start..end]).await;
                    start = end;
                }
                Ok(())
            }
        };
        out.clear();
        result
    }

    async fn close(&mut self) {
        if let Wire::Ws(ws) = self {
            let _ = tokio::time::timeout(Duration::from_secs(1), WebSocketStream::close(ws, None))
                .await;
        }
    }
}

/// The task of connection `conn` (global index) with clients `[base, base + count)`. The
/// first command is the Start of its first client; it ends when `rx` closes (the
/// controller is done) or the connection fails (every dialog is then reported).
pub(crate) async fn run(
    shared: Arc<Shared>,
    conn: u32,
    base: u32,
    count: u32,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
) {
    let Some(first) = rx.recv().await else {
        return;
    };
    let deadline = match first {
        Cmd::Start { at, .. } => at + shared.cfg.args.timeout,
        Cmd::Unsubscribe { .. } => Instant::now(),
    };
    let connected = tokio::time::timeout_at(deadline.into(), connect(&shared, conn)).await;
    let (mut wire, local) = match connected {
        Ok(Ok(c)) => c,
        failed => {
            let reason = match failed {
                Err(_) => Reason::Timeout,
                Ok(Err(e)) => {
                    shared.print_error(format_args!("{e:#}"));
                    Reason::Connect
                }
                Ok(Ok(_)) => Reason::Connect,
            };
            refuse(&shared, first, reason);
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                refuse(&shared, cmd, reason);
            }
            return;
        }
    };
    let mut sip = Sip::new(shared, local, conn, base, count);
    sip.command(first);
    let sleep = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    let lost = loop {
        if let Err(reason) = wire.write(&mut sip.out).await {
            break Some(reason);
        }
        let next = sip.next_deadline();
        if next != armed {
            if let Some(t) = next {
                sleep.as_mut().reset(t.into());
            }
            armed = next;
        }
        tokio::select! {
            r = wire.read(&mut sip) => {
                if let Err(reason) = r {
                    // Answers to what was read before the end still go out if they can.
                    let _ = wire.write(&mut sip.out).await;
                    break Some(reason);
                }
            }
            cmd = rx.recv() => match cmd {
                Some(cmd) => sip.command(cmd),
                None => break None,
            },
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                sip.fire(Instant::now());
            }
        }
    };
    match lost {
        Some(reason) => {
            sip.lose_all(reason);
            rx.close();
            while let Ok(cmd) = rx.try_recv() {
                sip.refuse(cmd, reason);
            }
        }
        None => {
            let _ = wire.write(&mut sip.out).await;
            wire.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn sip(target: &str, extra: &[&str]) -> (Sip, mpsc::UnboundedReceiver<Report>) {
        let mut argv = vec!["lg", "--target", target, "--clients", "4"];
        argv.extend_from_slice(extra);
        let cfg = Config::new(super::super::Args::parse_from(argv)).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg,
            run: "lgtest".into(),
            call_prefix: b"lgtest.".to_vec(),
            counters: Counters::default(),
            errors_printed: AtomicU64::new(0),
            reports: tx,
            log: None,
        });
        let local = "127.0.0.1:40000".parse().unwrap();
        (Sip::new(shared, local, 0, 0, 4), rx)
    }

    fn take(sip: &mut Sip) -> String {
        let s = String::from_utf8(sip.out.buf.clone()).unwrap();
        sip.out.clear();
        s
    }

    fn notify(cseq: u32, state: &str, body: &str) -> String {
        format!(
            "NOTIFY sip:lg@127.0.0.1:40000;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bKn{cseq}\r\n\
             From: <sip:user1@example.com>;tag=srv\r\n\
             To: <sip:user1@example.com>;tag=lgtest.0\r\n\
             Call-ID: lgtest.0\r\nCSeq: {cseq} NOTIFY\r\n\
             Contact: <sip:notifier@127.0.0.1:5060;transport=tcp>\r\n\
             Subscription-State: {state}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn response(status: &str, cseq: u32, extra: &str) -> String {
        format!(
            "SIP/2.0 {status}\r\nVia: SIP/2.0/TCP 127.0.0.1:40000;branch=x;rport=40000\r\n\
             From: <sip:user1@example.com>;tag=lgtest.0\r\n\
             To: <sip:user1@example.com>;tag=srv\r\nCall-ID: lgtest.0\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn subscribe_notify_before_200_refresh_and_retransmitted_notify() {
        let (mut sip, mut rx) = sip("tcp:127.0.0.1:5060", &["--expires", "600"]);
        sip.start(0, Instant::now());
        let req = take(&mut sip);
        for line in [
            "SUBSCRIBE sip:user1@example.com SIP/2.0\r\n",
            "Via: SIP/2.0/TCP 127.0.0.1:40000;branch=z9hG4bKlgtest.0.1;rport\r\n",
            "Max-Forwards: 70\r\n",
            "From: <sip:user1@example.com>;tag=lgtest.0\r\n",
            "To: <sip:user1@example.com>\r\n",
            "Call-ID: lgtest.0\r\n",
            "CSeq: 1 SUBSCRIBE\r\n",
            "Contact: <sip:lg@127.0.0.1:40000;transport=tcp>\r\n",
            "Event: conference-list\r\n",
            "Accept: application/conference-list+xml\r\n",
            "Expires: 600\r\n",
        ] {
            assert!(req.contains(line), "{line:?} in {req}");
        }
        assert!(req.ends_with("Content-Length: 0\r\n\r\n"));
        sip::parse_message(req.as_bytes()).unwrap();

        let n = notify(
            1,
            "active;expires=600",
            "<?xml version=\"1.0\"?><conference-list/>",
        );
        let now = Instant::now();
        sip.on_message(n.as_bytes(), now, 1);
        let ok = take(&mut sip);
        assert!(ok.starts_with("SIP/2.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("CSeq: 1 NOTIFY\r\n"));
        match rx.try_recv().unwrap() {
            Report::Opened { before_200, .. } => assert!(before_200),
            r => panic!("{r:?}"),
        }
        // The 200 comes after the NOTIFY: counted for ok_ms, nothing else.
        sip.on_message(response("200 OK", 1, "Expires: 300\r\n").as_bytes(), now, 2);
        assert!(matches!(rx.try_recv().unwrap(), Report::Ok { .. }));
        // A repeated NOTIFY is answered again but not reported.
        sip.on_message(n.as_bytes(), now, 3);
        assert!(take(&mut sip).starts_with("SIP/2.0 200 OK"));
        assert!(rx.try_recv().is_err());
        assert_eq!(
            sip.shared
                .counters
                .notify_retransmissions
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Refresh at half the granted 300 s, in the dialog, to the notifier's Contact.
        sip.fire(now + Duration::from_secs(151));
        let refresh = take(&mut sip);
        assert!(
            refresh.starts_with("SUBSCRIBE sip:notifier@127.0.0.1:5060;transport=tcp SIP/2.0\r\n"),
            "{refresh}"
        );
        assert!(refresh.contains("To: <sip:user1@example.com>;tag=srv\r\n"));
        assert!(refresh.contains("CSeq: 2 SUBSCRIBE\r\n"));
        assert!(matches!(rx.try_recv().unwrap(), Report::RefreshSent));
        // A later NOTIFY with terminated ends the dialog as lost.
        sip.on_message(
            notify(2, "terminated;reason=noresource", "").as_bytes(),
            now,
            4,
        );
        match rx.try_recv().unwrap() {
            Report::Lost { reason, .. } => assert_eq!(reason, Reason::Terminated),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn answers_a_digest_challenge_once() {
        let (mut sip, mut rx) = sip("ws://127.0.0.1:8080", &["--password", "pw"]);
        sip.start(0, Instant::now());
        let first = take(&mut sip);
        assert!(first.contains("Contact: <sip:lg@lgtestc0.invalid;transport=ws>\r\n"));
        assert!(first.contains("Via: SIP/2.0/WS 127.0.0.1:40000;branch="));
        let challenge = "WWW-Authenticate: Digest realm=\"example.com\", nonce=\"abc\", \
                         algorithm=MD5, qop=\"auth\"\r\n";
        let now = Instant::now();
        sip.on_message(
            response("401 Unauthorized", 1, challenge).as_bytes(),
            now,
            1,
        );
        let second = take(&mut sip);
        assert!(second.contains("CSeq: 2 SUBSCRIBE\r\n"), "{second}");
        assert!(second.contains(
            "Authorization: Digest username=\"user1\", realm=\"example.com\", nonce=\"abc\", \
             uri=\"sip:user1@example.com\""
        ));
        assert!(rx.try_recv().is_err());
        // Refused again (not stale): a failure by status, no third attempt.
        sip.on_message(
            response("401 Unauthorized", 2, challenge).as_bytes(),
            now,
            2,
        );
        assert!(take(&mut sip).is_empty());
        match rx.try_recv().unwrap() {
            Report::Failed { reason, .. } => assert_eq!(reason, Reason::Status(401)),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn udp_retransmits_on_timer_e_until_a_response() {
        let (mut sip, mut rx) = sip("udp:127.0.0.1:5060", &["--timeout", "10s"]);
        let t0 = Instant::now();
        sip.start(0, t0);
        let req = take(&mut sip);
        sip.fire(t0 + Duration::from_millis(600));
        assert_eq!(take(&mut sip), req, "the same request again");
        sip.fire(t0 + Duration::from_millis(1200));
        assert!(take(&mut sip).is_empty(), "next one at 1.5 s");
        sip.fire(t0 + Duration::from_millis(1700));
        assert_eq!(take(&mut sip), req);
        sip.on_message(response("100 Trying", 1, "").as_bytes(), t0, 1);
        sip.on_message(response("200 OK", 1, "").as_bytes(), t0, 1);
        assert!(matches!(rx.try_recv().unwrap(), Report::Ok { .. }));
        sip.fire(t0 + Duration::from_secs(5));
        assert!(
            take(&mut sip).is_empty(),
            "no retransmission after the response"
        );
        // No NOTIFY by --timeout: failed.
        sip.fire(t0 + Duration::from_secs(11));
        match rx.try_recv().unwrap() {
            Report::Failed { reason, .. } => assert_eq!(reason, Reason::Timeout),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn a_first_notify_without_the_root_fails() {
        let (mut sip, mut rx) = sip("tcp:127.0.0.1:5060", &["--expect-root", "presence"]);
        sip.start(0, Instant::now());
        take(&mut sip);
        let n = notify(1, "active;expires=60", "<conference-list/>");
        sip.on_message(n.as_bytes(), Instant::now(), 1);
        assert!(
            take(&mut sip).starts_with("SIP/2.0 200 OK"),
            "answered all the same"
        );
        match rx.try_recv().unwrap() {
            Report::Failed { reason, .. } => assert_eq!(reason, Reason::BadBody),
            r => panic!("{r:?}"),
        }
    }
}
