//! One flow (a WebSocket, TCP or TLS connection, or a UDP source address), whatever its
//! transport ([`Wire`]): reads SIP messages, feeds the sans-IO [`Dialogs`], carries out the
//! actions (write to the client, talk to the notifier), and keeps the flow alive (WebSocket
//! ping with a dead-peer timeout; RFC 5626 CRLF keep-alive answered). Everything about the
//! flow is bounded: message size (by the wire), the event queue from the notifier, the
//! write time per message, the number of dialogs, the time without any dialog
//! (`--idle-timeout`) and the rate of new SUBSCRIBEs per client address.

use super::limits::{Limits, SubscribeDecision};
use super::wire::{Inbound, Outbound, ReadError, Wire};
use crate::dialog::{Action, DialogConfig, Dialogs, Limit, Rejection, Reply};
use crate::metrics::Metrics;
use crate::notifier::Event;
use crate::upstream::{ConnectionHandle, Upstreams};
use sip::Message;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Events from the notifier buffered per connection before it counts as too slow.
pub const EVENT_QUEUE: usize = 4096;
/// Consecutive unparseable messages after which a connection is closed.
pub const MAX_BAD_MESSAGES: u32 = 8;

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest SIP message (one WebSocket message).
    pub max_message_size: usize,
    /// WebSocket ping interval; no frame for two intervals = dead peer.
    pub keepalive_interval: Duration,
    /// Longest a single write may take before the client counts as stalled.
    pub write_timeout: Duration,
    /// After shutdown starts, how long to wait for answers to the final NOTIFYs.
    pub drain_timeout: Duration,
    /// A connection without any dialog for this long is closed (`--idle-timeout`).
    pub idle_timeout: Duration,
    /// TLS handshake plus HTTP upgrade must finish within this (`--handshake-timeout`).
    pub handshake_timeout: Duration,
}

/// What every connection shares.
#[derive(Debug)]
pub struct Shared {
    /// Connection settings.
    pub config: ConnectionConfig,
    /// Dialog settings.
    pub dialog: DialogConfig,
    /// The notifiers.
    pub upstreams: Upstreams,
    /// Metrics.
    pub metrics: Metrics,
    /// Free connection slots.
    pub connection_slots: Arc<Semaphore>,
    /// Cancelled when the proxy shuts down.
    pub shutdown: CancellationToken,
    /// Proxy instance id, part of every subscription id.
    pub instance: String,
    /// Connection counter for ids.
    pub next_connection: AtomicU64,
    /// Per-client limits: trusted proxies, origins, connections and SUBSCRIBEs per address.
    pub limits: Limits,
}

/// Who is on the other end of one flow, and the listener's dialog settings.
#[derive(Debug, Clone)]
pub struct ConnectionParams {
    /// The peer (a load balancer when the client is behind one).
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted load balancer forwarded.
    pub client_addr: IpAddr,
    /// Dialog settings of the listener (its transport in Via and Contact).
    pub dialog: DialogConfig,
    /// Probe the peer every interval and drop it when silent for two (WebSocket); `None`
    /// for transports whose liveness is the socket itself or the NOTIFY transactions.
    pub keepalive: Option<Duration>,
}

impl ConnectionParams {
    /// A flow whose client is the peer itself, with the WebSocket keep-alive.
    pub fn direct(peer: SocketAddr, dialog: DialogConfig, keepalive: Option<Duration>) -> Self {
        Self {
            peer,
            client_addr: peer.ip().to_canonical(),
            dialog,
            keepalive,
        }
    }
}

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closed it.
    ClientClosed,
    /// Reading failed (socket error, WebSocket protocol error, unframeable stream).
    ReadFailed,
    /// A write failed.
    WriteFailed,
    /// No sign of life for two keep-alive intervals.
    Unresponsive,
    /// The client did not take its notifications fast enough.
    TooSlow,
    /// Too many malformed messages in a row.
    Malformed,
    /// No dialog for the idle timeout.
    Idle,
    /// The proxy is stopping.
    Shutdown,
}

impl Close {
    /// The reason as logged.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::ClientClosed => "client closed",
            Close::ReadFailed => "read failed",
            Close::WriteFailed => "write failed",
            Close::Unresponsive => "peer unresponsive",
            Close::TooSlow => "too slow",
            Close::Malformed => "too many malformed messages",
            Close::Idle => "idle",
            Close::Shutdown => "shutdown",
        }
    }
}

/// The outcome of one loop turn: dialog actions, a unit to write first, maybe close.
#[derive(Default)]
struct Step {
    actions: Vec<Action>,
    write: Option<Outbound>,
    close: Option<Close>,
}

impl Step {
    fn none() -> Self {
        Self::default()
    }
    fn actions(actions: Vec<Action>) -> Self {
        Self {
            actions,
            ..Self::default()
        }
    }
    fn write(out: Outbound) -> Self {
        Self {
            write: Some(out),
            ..Self::default()
        }
    }
    fn close(why: Close) -> Self {
        Self {
            close: Some(why),
            ..Self::default()
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    dialogs: Dialogs,
    handle: ConnectionHandle,
    bad_messages: u32,
    peer: SocketAddr,
    /// The client's address (see [`ConnectionParams::client_addr`]).
    client_addr: IpAddr,
    /// Whether this connection already logged a rate-limited SUBSCRIBE at info level.
    rate_limit_logged: bool,
}

/// Serves one flow until it closes, the peer dies, it idles out, or the proxy stops.
pub async fn run<W: Wire>(mut wire: W, params: ConnectionParams, shared: Arc<Shared>) {
    let ConnectionParams {
        peer,
        client_addr,
        dialog,
        keepalive,
    } = params;
    let n = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    // Also the prefix of this flow's subscription ids; the listener's span has the field.
    let id = format!("{}-{n}", shared.instance);
    tracing::Span::current().record("conn.id", id.as_str());
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let close = CancellationToken::new();
    let mut dialogs = Dialogs::new(dialog, id, rand::random());
    dialogs.set_client_address(client_addr.to_string());
    let mut conn = Connection {
        dialogs,
        handle: ConnectionHandle {
            events: events_tx,
            close: close.clone(),
        },
        bad_messages: 0,
        peer,
        client_addr,
        rate_limit_logged: false,
        shared,
    };
    conn.shared.metrics.connections.inc();
    debug!("connection open");
    // Without a keep-alive the probe never fires (an interval far beyond any session).
    let probe_every = keepalive.unwrap_or(Duration::from_secs(86_400 * 365));
    let mut probe = tokio::time::interval_at(Instant::now() + probe_every, probe_every);
    let mut last_seen = Instant::now();
    let shutdown = conn.shared.shutdown.clone();
    let mut drain_deadline: Option<Instant> = None;
    let idle_timeout = conn.shared.config.idle_timeout;
    let write_timeout = conn.shared.config.write_timeout;
    // The idle clock runs only while the flow holds nothing; it restarts whenever it does.
    let mut idle_since = Instant::now();

    let reason = loop {
        let deadline = conn.dialogs.next_deadline();
        let step = tokio::select! {
            unit = wire.recv() => {
                last_seen = Instant::now();
                match unit {
                    Some(Ok(Inbound::Message(bytes))) => conn.on_bytes(&bytes),
                    Some(Ok(Inbound::Ping)) => Step::write(Outbound::Pong),
                    Some(Ok(Inbound::Alive)) => Step::none(),
                    None => Step::close(Close::ClientClosed),
                    Some(Err(e)) => {
                        info!(error = %e, "read failed; closing");
                        let mut step = Step::close(Close::ReadFailed);
                        if let ReadError::Framing { head: Some(head), error } = &e {
                            // The head parses far enough for a 400 that says why.
                            step.write = super::salvage_bad_request(head, &error.to_string())
                                .map(Outbound::Message);
                        }
                        step
                    }
                }
            }
            Some(event) = events.recv() => {
                log_event(&event);
                Step::actions(conn.dialogs.on_event(*event, Instant::now()))
            }
            () = sleep_until_opt(deadline) => Step::actions(conn.dialogs.on_timeout(Instant::now())),
            _ = probe.tick(), if keepalive.is_some() => {
                if last_seen.elapsed() > probe_every * 2 {
                    Step::close(Close::Unresponsive)
                } else {
                    Step::write(Outbound::Probe)
                }
            }
            () = close.cancelled() => Step::close(Close::TooSlow),
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + conn.shared.config.drain_timeout);
                Step::actions(conn.dialogs.on_shutdown(Instant::now()))
            }
            () = sleep_until_opt(drain_deadline) => Step::close(Close::Shutdown),
            () = tokio::time::sleep_until(idle_since + idle_timeout),
                if drain_deadline.is_none() && conn.dialogs.is_idle() => Step::close(Close::Idle),
        };
        let mut closing = step.close;
        if let Some(out) = step.write
            && let Err(why) = write(&mut wire, out, write_timeout).await
        {
            closing = Some(why);
        }
        for action in step.actions {
            if closing.is_some() {
                // The wire is done; the notifier side must still hear about everything.
                if !action.is_send() {
                    conn.execute_upstream(action);
                }
            } else if let Err(why) = conn.execute(action, &mut wire).await {
                closing = Some(why);
            }
        }
        if !conn.dialogs.is_idle() {
            idle_since = Instant::now();
        }
        if let Some(why) = closing {
            break why;
        }
        if drain_deadline.is_some() && conn.dialogs.is_empty() {
            break Close::Shutdown;
        }
    };

    for action in conn.dialogs.on_close() {
        // Only notifier-side actions matter now; the wire is done.
        if !action.is_send() {
            conn.execute_upstream(action);
        }
    }
    wire.close().await;
    conn.shared.metrics.connections.dec();
    match reason {
        Close::TooSlow => warn!(reason = reason.as_str(), "connection closed"),
        Close::Idle => {
            conn.shared.metrics.idle_connections_closed.inc();
            info!(reason = reason.as_str(), idle_timeout = ?idle_timeout, "connection closed: no dialog for the idle timeout");
        }
        _ => debug!(reason = reason.as_str(), "connection closed"),
    }
}

impl Connection {
    fn on_bytes(&mut self, buf: &[u8]) -> Step {
        match sip::parse_message(buf) {
            Ok(Message::Request(mut req)) => {
                self.bad_messages = 0;
                self.shared.metrics.requests.inc();
                super::stamp_via(&mut req, self.peer);
                // New subscriptions, and any SUBSCRIBE carrying credentials (a refresh must
                // not be an unthrottled password oracle), count against the address's rate.
                let counted = super::is_initial_subscribe(&req)
                    || (req.method == sip::Method::Subscribe
                        && req.headers.get(&sip::HeaderName::AUTHORIZATION).is_some());
                if counted && let Some(refusal) = self.rate_limit(&req) {
                    return Step::actions(vec![refusal]);
                }
                Step::actions(self.dialogs.on_request(req, Instant::now()))
            }
            Ok(Message::Response(resp)) => {
                self.bad_messages = 0;
                let actions = self.dialogs.on_response(&resp, Instant::now());
                if let Some(rtt) = self.dialogs.take_round_trip() {
                    self.shared
                        .metrics
                        .notify_round_trip
                        .observe(rtt.as_secs_f64());
                }
                Step::actions(actions)
            }
            Err(e) => {
                self.shared.metrics.parse_errors.inc();
                self.bad_messages += 1;
                info!(error = %e, bytes = buf.len(), "malformed SIP message");
                let mut step = Step::none();
                step.write = super::salvage_bad_request(buf, &e.to_string()).map(Outbound::Message);
                if self.bad_messages >= MAX_BAD_MESSAGES {
                    step.close = Some(Close::Malformed);
                }
                step
            }
        }
    }

    /// The 503 when this client address is over `--max-subscribes-per-address`; the
    /// request then never reaches the dialog core.
    fn rate_limit(&mut self, req: &sip::Request) -> Option<Action> {
        let decision = self
            .shared
            .limits
            .subscribes
            .check(self.client_addr, Instant::now());
        if decision == SubscribeDecision::Allowed {
            return None;
        }
        self.shared.metrics.subscribes_rate_limited.inc();
        // One info line per connection; a flood would otherwise flood the log too.
        if self.rate_limit_logged {
            debug!(client.ip = %self.client_addr, ?decision, "SUBSCRIBE rate-limited: 503");
        } else {
            self.rate_limit_logged = true;
            info!(client.ip = %self.client_addr, ?decision, "SUBSCRIBE rate-limited: 503 (further ones on this connection log at debug)");
        }
        let reply = Reply::Rejected(&Rejection::RateLimited);
        Some(Action::Respond {
            response: crate::dialog::status::respond(req, reply, None),
            outcome: reply.label(),
        })
    }

    async fn execute<W: Wire>(&mut self, action: Action, wire: &mut W) -> Result<(), Close> {
        let m = &self.shared.metrics;
        let bytes = match action {
            Action::Respond { response, outcome } => {
                m.count_response(response.status.as_u16(), outcome);
                response.to_bytes()
            }
            Action::Notify(request) => {
                m.notifies.inc();
                request.to_bytes()
            }
            Action::Resend(msg) => {
                match &msg {
                    Message::Request(_) => m.notify_retransmissions.inc(),
                    Message::Response(_) => m.response_retransmissions.inc(),
                };
                msg.to_bytes()
            }
            other => {
                self.execute_upstream(other);
                return Ok(());
            }
        };
        write(
            wire,
            Outbound::Message(bytes),
            self.shared.config.write_timeout,
        )
        .await
    }

    fn execute_upstream(&mut self, action: Action) {
        let upstreams = &self.shared.upstreams;
        match action {
            Action::Route { sub, subscriber } => {
                debug!(subscription.id = %sub, %subscriber, "dialog routed");
                upstreams.route(sub, &subscriber, self.handle.clone());
            }
            Action::Upstream(cmd) => {
                debug!(subscription.id = %cmd.sub(), command = cmd.name(), "to the server");
                upstreams.send(cmd);
            }
            Action::Unroute(sub) => {
                debug!(subscription.id = %sub, "dialog gone: unrouted");
                upstreams.unroute(&sub);
            }
            Action::Refused(limit) => {
                let m = &self.shared.metrics;
                match limit {
                    Limit::RouteSet => m.route_sets_refused.inc(),
                    Limit::DialogsPerConnection => m.dialogs_per_connection_refused.inc(),
                };
                debug!(?limit, "SUBSCRIBE refused at a limit");
            }
            Action::NotifyRetry { sub, after } => {
                self.shared.metrics.notify_retries.inc();
                debug!(subscription.id = %sub, ?after, "NOTIFY answered with Retry-After; will retry");
            }
            Action::Respond { .. } | Action::Notify(_) | Action::Resend(_) => {}
        }
    }
}

/// A debug line for each Answer and Notification from the server.
fn log_event(event: &Event) {
    match event {
        Event::Answer(a) => {
            debug!(subscription.id = %a.sub, request_id = a.request_id, verdict = ?a.verdict, "answer from the server");
        }
        Event::Notification(n) => {
            debug!(subscription.id = %n.sub, version = n.version, state = ?n.state, bytes = n.body.len(), "notification from the server");
        }
    }
}

/// One write, bounded by the write timeout (a client that does not read is too slow).
async fn write<W: Wire>(wire: &mut W, out: Outbound, timeout: Duration) -> Result<(), Close> {
    match tokio::time::timeout(timeout, wire.send(out)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Close::WriteFailed),
        Err(_) => Err(Close::TooSlow),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
