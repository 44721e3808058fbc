//! The SIP-over-WebSocket listener (RFC 7118): HTTP upgrade with subprotocol `sip` required,
//! one SIP message per WebSocket message, small per-connection buffers, a connection cap.

use super::connection::{self, Shared};
use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{Instrument, debug};

/// The router serving WebSocket upgrades on any path.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(upgrade))
        .fallback(get(upgrade))
        .with_state(shared)
}

async fn upgrade(
    ws: WebSocketUpgrade,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(shared): State<Arc<Shared>>,
) -> Response {
    let ws = ws.protocols(["sip"]);
    if ws.selected_protocol().is_none() {
        debug!(client.addr = %peer, "upgrade without subprotocol sip refused");
        return (
            StatusCode::BAD_REQUEST,
            "WebSocket subprotocol \"sip\" required (RFC 7118)\n",
        )
            .into_response();
    }
    let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
        shared.metrics.connections_refused.inc();
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let max = shared.config.max_message_size;
    ws.read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(max.saturating_mul(4).max(64 * 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws", client.addr = %peer);
            async move {
                connection::run(socket, peer, shared).await;
                drop(permit);
            }
            .instrument(span)
        })
}
