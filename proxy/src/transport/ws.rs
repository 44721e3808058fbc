//! The SIP-over-WebSocket upgrade (RFC 7118): subprotocol `sip` required, a browser Origin
//! checked against `--allowed-origin`, the client address taken from a trusted load
//! balancer's `X-Forwarded-For`, the per-address and global connection caps, then one SIP
//! message per WebSocket message with small per-connection buffers.
//!
//! A request that is not an upgrade at all (no `Upgrade` header) may instead get a file of the
//! web page ([`crate::web`], `--web-page`); anything else keeps the upgrade's own refusal.

use super::connection::{self, ConnectionParams, Shared};
use super::limits::AddressGuard;
use super::wire::WsWire;
use crate::dialog::DialogConfig;
use crate::web::WebPage;
use axum::Extension;
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info};

/// What the listener knows about one TCP connection; it puts this into every request's
/// extensions (next to `ConnectInfo<SocketAddr>`) for the upgrade handler.
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// Dialog settings of the listener the connection came in on (`WS` or `WSS`).
    pub dialog: Arc<DialogConfig>,
    /// The peer's slot in the per-address table, taken at accept when the peer is not a
    /// trusted load balancer (for one, the slot is taken here, for the forwarded client).
    pub address_guard: Option<Arc<AddressGuard>>,
    /// Tracks the upgraded connection, so shutdown waits for its final NOTIFYs.
    pub tracker: TaskTracker,
}

/// The router serving WebSocket upgrades on any path (no web page).
pub fn router(shared: Arc<Shared>) -> Router {
    router_with_page(shared, None)
}

/// The router serving WebSocket upgrades on any path and, when `page` is given, the web
/// page's files to plain `GET`s.
pub fn router_with_page(shared: Arc<Shared>, page: Option<Arc<WebPage>>) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .fallback(get(upgrade))
        .with_state(RouterState { shared, page })
}

/// What the handler needs: the connections' shared state and the web page, if served.
#[derive(Debug, Clone)]
struct RouterState {
    shared: Arc<Shared>,
    page: Option<Arc<WebPage>>,
}

async fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    uri: Uri,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(RouterState { shared, page }): State<RouterState>,
    context: Option<Extension<ConnectionContext>>,
    headers: HeaderMap,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(refused) => {
            // Only a request that asks for no upgrade at all is a page request; a broken
            // upgrade keeps its refusal.
            if !headers.contains_key(header::UPGRADE)
                && let Some(page) = &page
                && let Some(resp) = page.response(uri.path(), &headers)
            {
                debug!(client.addr = %peer, path = uri.path(), status = resp.status().as_u16(), "web page");
                return resp;
            }
            return refused.into_response();
        }
    };
    let ws = ws.protocols(["sip"]);
    if ws.selected_protocol().is_none() {
        debug!(client.addr = %peer, "upgrade without subprotocol sip refused");
        return (
            StatusCode::BAD_REQUEST,
            "WebSocket subprotocol \"sip\" required (RFC 7118)\n",
        )
            .into_response();
    }
    // A header that is not text cannot match anything: "" is no origin and "unknown" stops
    // the X-Forwarded-For walk.
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or(""));
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if !shared.limits.origins.allows(origin, host) {
        shared.metrics.origins_refused.inc();
        info!(client.addr = %peer, origin = ?origin, host = ?host, "upgrade from a browser origin that is not allowed refused: 403");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let client_addr = shared.limits.trusted.client_addr(
        peer.ip(),
        headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("unknown")),
    );
    let (dialog, guard, tracker) = match context {
        Some(Extension(c)) => (c.dialog, c.address_guard, Some(c.tracker)),
        None => (Arc::new(shared.dialog.clone()), None, None),
    };
    let guard = match guard {
        Some(g) => g,
        None => match shared.limits.connections.try_acquire(client_addr) {
            Ok(g) => Arc::new(g),
            Err(why) => {
                shared.metrics.address_connections_refused.inc();
                info!(client.addr = %peer, client.ip = %client_addr, reason = %why, "upgrade refused at the per-address limit: 503");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many connections from your address\n",
                )
                    .into_response();
            }
        },
    };
    let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
        shared.metrics.connections_refused.inc();
        info!(client.addr = %peer, "upgrade refused at --max-connections: 503");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    // Counted by the tracker from here, so shutdown waits for this connection's drain.
    let tracked = tracker.map(|t| t.token());
    let max = shared.config.max_message_size;
    ws.read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        // Outgoing NOTIFYs can be far larger than what clients may send: the write buffer
        // must hold the largest notification the upstream accepts (plus SIP headers).
        .max_write_buffer_size(crate::upstream::MAX_NOTIFICATION_BYTES + 64 * 1024)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!(
                "ws",
                client.addr = %peer,
                client.ip = %client_addr,
                transport = dialog.transport.via(),
                conn.id = tracing::field::Empty,
            );
            let params = ConnectionParams {
                peer,
                client_addr,
                dialog: (*dialog).clone(),
                keepalive: Some(shared.config.keepalive_interval),
            };
            async move {
                connection::run(WsWire(socket), params, shared).await;
                drop(permit);
                drop(guard);
                drop(tracked);
            }
            .instrument(span)
        })
}
