//! One client connection: reads SIP messages, feeds the sans-IO [`Dialogs`], carries out the
//! actions (write to the socket, talk to the notifier), and keeps the flow alive (WebSocket
//! ping with a dead-peer timeout; RFC 5626 CRLF keep-alive answered). Everything about the
//! connection is bounded: message size (by the WebSocket layer), the event queue from the
//! notifier, the write time per message, the number of dialogs, the time without any dialog
//! (`--idle-timeout`) and the rate of new SUBSCRIBEs per client address.

use super::limits::{Limits, SubscribeDecision};
use crate::dialog::{Action, DialogConfig, Dialogs, Limit};
use crate::metrics::Metrics;
use crate::notifier::SubscriptionId;
use crate::upstream::{ConnectionHandle, Upstream, Upstreams};
use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sip::Message;
use std::collections::HashMap;
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

/// Who is on the other end of one connection, and the listener's dialog settings.
#[derive(Debug, Clone)]
pub struct ConnectionParams {
    /// The TCP peer (a load balancer when the client is behind one).
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted load balancer forwarded.
    pub client_addr: IpAddr,
    /// Dialog settings of the listener (Via/Contact transport `WS` or `WSS`).
    pub dialog: DialogConfig,
}

/// The outcome of one loop turn: dialog actions, raw bytes to write first, maybe close.
#[derive(Default)]
struct Step {
    actions: Vec<Action>,
    raw: Option<Vec<u8>>,
    ping: bool,
    close: Option<&'static str>,
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
    fn raw(bytes: Vec<u8>) -> Self {
        Self {
            raw: Some(bytes),
            ..Self::default()
        }
    }
    fn raw_frame_ping() -> Self {
        Self {
            ping: true,
            ..Self::default()
        }
    }
    fn close(why: &'static str) -> Self {
        Self {
            close: Some(why),
            ..Self::default()
        }
    }
}

struct Connection {
    shared: Arc<Shared>,
    dialogs: Dialogs,
    routed: HashMap<SubscriptionId, Arc<Upstream>>,
    handle: ConnectionHandle,
    bad_messages: u32,
    peer: SocketAddr,
    /// The client's address (see [`ConnectionParams::client_addr`]).
    client_addr: IpAddr,
    /// Whether this connection already logged a rate-limited SUBSCRIBE at info level.
    rate_limit_logged: bool,
}

/// Serves one WebSocket until it closes, the peer dies, or the proxy stops; the client is
/// the peer itself and the dialog settings are [`Shared::dialog`].
pub async fn run(socket: WebSocket, peer: SocketAddr, shared: Arc<Shared>) {
    let params = ConnectionParams {
        peer,
        client_addr: peer.ip().to_canonical(),
        dialog: shared.dialog.clone(),
    };
    run_with(socket, params, shared).await;
}

/// Serves one WebSocket for the client and listener described by `params`.
pub async fn run_with(socket: WebSocket, params: ConnectionParams, shared: Arc<Shared>) {
    let ConnectionParams {
        peer,
        client_addr,
        dialog,
    } = params;
    let n = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let close = CancellationToken::new();
    let mut dialogs = Dialogs::new(dialog, format!("{}-{n}", shared.instance), rand::random());
    dialogs.set_client_address(client_addr.to_string());
    let mut conn = Connection {
        dialogs,
        routed: HashMap::new(),
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
    let (mut sink, mut stream) = socket.split();
    let keepalive = conn.shared.config.keepalive_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
    let mut last_seen = Instant::now();
    let shutdown = conn.shared.shutdown.clone();
    let mut drain_deadline: Option<Instant> = None;
    let idle_timeout = conn.shared.config.idle_timeout;
    // The idle clock runs only while there is no dialog; it restarts whenever there is one.
    let mut idle_since = Instant::now();

    let reason = loop {
        let deadline = conn.dialogs.next_deadline();
        let step = tokio::select! {
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Text(t))) => conn.on_bytes(t.as_bytes()),
                    Some(Ok(WsMessage::Binary(b))) => conn.on_bytes(&b),
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => Step::none(),
                    Some(Ok(WsMessage::Close(_))) | None => Step::close("client closed"),
                    Some(Err(e)) => {
                        info!(error = %e, "websocket error; closing");
                        Step::close("websocket error")
                    }
                }
            }
            Some(event) = events.recv() => Step::actions(conn.dialogs.on_event(event, Instant::now())),
            () = sleep_until_opt(deadline) => Step::actions(conn.dialogs.on_timeout(Instant::now())),
            _ = ping.tick() => {
                if last_seen.elapsed() > keepalive * 2 {
                    Step::close("peer unresponsive")
                } else {
                    Step::raw_frame_ping()
                }
            }
            () = close.cancelled() => Step::close("too slow"),
            () = shutdown.cancelled(), if drain_deadline.is_none() => {
                drain_deadline = Some(Instant::now() + conn.shared.config.drain_timeout);
                Step::actions(conn.dialogs.on_shutdown(Instant::now()))
            }
            () = sleep_until_opt(drain_deadline) => Step::close("shutdown"),
            () = tokio::time::sleep_until(idle_since + idle_timeout),
                if drain_deadline.is_none() && conn.dialogs.is_empty() => Step::close("idle"),
        };
        let write_timeout = conn.shared.config.write_timeout;
        let mut closing = step.close;
        if step.ping
            && let Err(why) = send_ws(
                &mut sink,
                WsMessage::Ping(Default::default()),
                write_timeout,
            )
            .await
        {
            closing = Some(why);
        }
        if let Some(raw) = step.raw
            && let Err(why) = send_ws(&mut sink, text_or_binary(raw), write_timeout).await
        {
            closing = Some(why);
        }
        for action in step.actions {
            if closing.is_some() {
                // The socket is done; the notifier side must still hear about everything.
                if !matches!(action, Action::Send(_)) {
                    conn.execute_upstream(action);
                }
            } else if let Err(why) = conn.execute(action, &mut sink).await {
                closing = Some(why);
            }
        }
        if !conn.dialogs.is_empty() {
            idle_since = Instant::now();
        }
        if let Some(why) = closing {
            break why;
        }
        if drain_deadline.is_some() && conn.dialogs.is_empty() {
            break "shutdown";
        }
    };

    for action in conn.dialogs.on_close() {
        // Only notifier-side actions matter now; the socket is done.
        if !matches!(action, Action::Send(_)) {
            conn.execute_upstream(action);
        }
    }
    // Every dialog is gone now; nothing may stay routed to this connection.
    for (sub, up) in conn.routed.drain() {
        up.unroute(&sub);
        conn.shared.metrics.dialogs.dec();
    }
    let _ = sink.close().await;
    conn.shared.metrics.connections.dec();
    if reason == "too slow" {
        warn!(reason, "connection closed");
    } else if reason == "idle" {
        conn.shared.metrics.idle_connections_closed.inc();
        info!(reason, idle_timeout = ?idle_timeout, "connection closed: no dialog for the idle timeout");
    } else {
        debug!(reason, "connection closed");
    }
}

impl Connection {
    fn on_bytes(&mut self, buf: &[u8]) -> Step {
        // RFC 5626 §3.5.1 keep-alive: answer a double-CRLF ping with a CRLF pong.
        if sip::framing::is_keepalive_ping(buf) {
            return Step::raw(b"\r\n".to_vec());
        }
        if sip::framing::is_keepalive_pong(buf) {
            return Step::none();
        }
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
                    return Step::actions(vec![Action::Send(refusal)]);
                }
                Step::actions(self.dialogs.on_request(req, Instant::now()))
            }
            Ok(Message::Response(resp)) => {
                self.bad_messages = 0;
                Step::actions(self.dialogs.on_response(&resp, Instant::now()))
            }
            Err(e) => {
                self.shared.metrics.parse_errors.inc();
                self.bad_messages += 1;
                info!(error = %e, bytes = buf.len(), "malformed SIP message");
                let mut step = Step::none();
                step.raw = super::salvage_bad_request(buf, &e.to_string());
                if self.bad_messages >= MAX_BAD_MESSAGES {
                    step.close = Some("too many malformed messages");
                }
                step
            }
        }
    }

    /// `Some(503)` when this client address is over `--max-subscribes-per-address`; the
    /// request then never reaches the dialog core.
    fn rate_limit(&mut self, req: &sip::Request) -> Option<Message> {
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
        Some(super::service_unavailable(req, 1))
    }

    async fn execute(
        &mut self,
        action: Action,
        sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    ) -> Result<(), &'static str> {
        match action {
            Action::Send(msg) => {
                let frame = encode(&msg);
                if matches!(msg, Message::Request(_)) {
                    self.shared.metrics.notifies.inc();
                }
                send_ws(sink, frame, self.shared.config.write_timeout).await
            }
            other => {
                self.execute_upstream(other);
                Ok(())
            }
        }
    }

    fn execute_upstream(&mut self, action: Action) {
        match action {
            Action::Route { sub, subscriber } => {
                if let Some(up) = self.shared.upstreams.pick(&subscriber) {
                    up.route(sub.clone(), self.handle.clone());
                    self.routed.insert(sub, up);
                    self.shared.metrics.dialogs.inc();
                }
            }
            Action::Upstream(cmd) => {
                if let Some(up) = self.routed.get(cmd.sub()) {
                    up.send(cmd);
                }
            }
            Action::Unroute(sub) => {
                if let Some(up) = self.routed.remove(&sub) {
                    up.unroute(&sub);
                    self.shared.metrics.dialogs.dec();
                }
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
            Action::Send(_) => {}
        }
    }
}

fn encode(msg: &Message) -> WsMessage {
    text_or_binary(msg.to_bytes())
}

/// SIP is UTF-8 in practice (text frames, which browsers expect); anything else goes binary.
fn text_or_binary(bytes: Vec<u8>) -> WsMessage {
    match String::from_utf8(bytes) {
        Ok(text) => WsMessage::Text(text.into()),
        Err(e) => WsMessage::Binary(e.into_bytes().into()),
    }
}

async fn send_ws(
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    frame: WsMessage,
    timeout: Duration,
) -> Result<(), &'static str> {
    match tokio::time::timeout(timeout, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("write failed"),
        Err(_) => Err("too slow"),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
