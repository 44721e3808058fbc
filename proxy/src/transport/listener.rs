//! Our accept loop for the SIP WebSocket listeners (`--ws-listen`, `--wss-listen`).
//!
//! accept → per-address check (peers that are not trusted load balancers) → one task per
//! connection → TLS handshake (WSS) → HTTP/1.1 with upgrades serving [`ws::router`]. The TLS
//! handshake and the upgrade request together must finish within `--handshake-timeout`, so a
//! client that trickles its headers is dropped at that deadline. Every task, including the
//! upgraded WebSocket connection, is tracked: [`serve`] returns only when all are done, which
//! is what shutdown waits for (axum's `serve` does not track upgraded connections).
//!
//! Only the upgrade (and, with `--web-page`, the page's files) is served: any other answer
//! carries `Connection: close`, so an HTTP connection never outlives its one request. Connections still in their handshake are
//! capped at `--max-connections` as well (beyond the cap they are closed at accept), so at
//! most twice that many client sockets are open at once.

use super::connection::Shared;
use super::ws::{self, ConnectionContext};
use crate::dialog::DialogConfig;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tracing::{Instrument, debug, info, warn};

/// Pause after an `accept()` failure that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Largest HTTP upgrade request head buffered, bytes (hyper's minimum is 8 KiB); a larger
/// head is refused by hyper with 431.
pub const MAX_UPGRADE_REQUEST_BYTES: usize = 16 * 1024;

/// One bound client listener: plain WebSocket or WebSocket over TLS.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    dialog: Arc<DialogConfig>,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .field("dialog", &self.dialog)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// A plain `ws://` listener; `dialog` carries Via/Contact transport `WS`/`ws`.
    pub fn plain(tcp: TcpListener, dialog: DialogConfig) -> io::Result<Self> {
        Ok(Self {
            local_addr: tcp.local_addr()?,
            tcp,
            tls: None,
            dialog: Arc::new(dialog),
        })
    }

    /// A `wss://` listener; `dialog` carries Via/Contact transport `WSS`/`wss`.
    pub fn tls(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        dialog: DialogConfig,
    ) -> io::Result<Self> {
        Ok(Self {
            local_addr: tcp.local_addr()?,
            tcp,
            tls: Some(TlsAcceptor::from(config)),
            dialog: Arc::new(dialog),
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Serves every listener until `shared.shutdown` is cancelled, then waits until every
/// connection task has ended: handshakes are dropped, upgraded connections drain their
/// dialogs (bounded by their own drain timeout). The caller bounds the wait as a whole.
pub async fn serve(listeners: Vec<Listener>, shared: Arc<Shared>) {
    serve_with_page(listeners, shared, None).await;
}

/// [`serve`], with the web page ([`crate::web`]) answering plain `GET`s when `page` is given.
pub async fn serve_with_page(
    listeners: Vec<Listener>,
    shared: Arc<Shared>,
    page: Option<Arc<crate::web::WebPage>>,
) {
    let tracker = TaskTracker::new();
    let router = ws::router_with_page(shared.clone(), page);
    let handshakes = Arc::new(Semaphore::new(
        shared.connection_slots.available_permits().max(1),
    ));
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            router.clone(),
            shared.clone(),
            tracker.clone(),
            handshakes.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

async fn accept_loop(
    l: Listener,
    router: Router,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    handshakes: Arc<Semaphore>,
) {
    let shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = l.tcp.accept() => r,
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                shared.metrics.accept_errors.inc();
                if is_connection_error(&e) {
                    debug!(error = %e, server.addr = %l.local_addr, "accept failed for one connection");
                    continue;
                }
                warn!(error = %e, server.addr = %l.local_addr, backoff = ?ACCEPT_BACKOFF, "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let peer_ip = peer.ip().to_canonical();
        // A trusted load balancer carries many clients; they are counted at the upgrade,
        // by their forwarded address.
        let address_guard = if shared.limits.trusted.contains(peer_ip) {
            None
        } else {
            match shared.limits.connections.try_acquire(peer_ip) {
                Ok(g) => Some(Arc::new(g)),
                Err(why) => {
                    shared.metrics.address_connections_refused.inc();
                    info!(client.addr = %peer, server.addr = %l.local_addr, reason = %why, "connection refused at the per-address limit");
                    continue; // dropping the socket closes it before any HTTP
                }
            }
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            info!(client.addr = %peer, server.addr = %l.local_addr, "connection refused: --max-connections handshakes in progress");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(client.addr = %peer, error = %e, "set TCP_NODELAY failed");
        }
        let context = ConnectionContext {
            dialog: l.dialog.clone(),
            address_guard,
            tracker: tracker.clone(),
        };
        let span = tracing::debug_span!("accept", client.addr = %peer, server.addr = %l.local_addr);
        let connection = serve_connection(
            tcp,
            peer,
            l.tls.clone(),
            context,
            router.clone(),
            shared.clone(),
        );
        tracker.spawn(
            async move {
                connection.await;
                drop(handshake);
            }
            .instrument(span),
        );
    }
    debug!(server.addr = %l.local_addr, "listener closed");
}

/// Errors that concern only the connection being accepted; anything else (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM) is about the process and gets [`ACCEPT_BACKOFF`].
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// How the pre-WebSocket phase of one connection ended badly.
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("{0} not finished within the handshake timeout")]
    Timeout(&'static str),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("HTTP: {0}")]
    Http(hyper::Error),
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    context: ConnectionContext,
    router: Router,
    shared: Arc<Shared>,
) {
    let timeout = shared.config.handshake_timeout;
    let deadline = Instant::now() + timeout;
    let handshake = async {
        match tls {
            None => serve_http(tcp, peer, context, router, deadline).await,
            Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                Err(_) => Err(HandshakeError::Timeout("TLS handshake")),
                Ok(Err(e)) => Err(HandshakeError::Tls(e)),
                Ok(Ok(stream)) => serve_http(stream, peer, context, router, deadline).await,
            },
        }
    };
    let result = tokio::select! {
        r = handshake => r,
        // Nothing is lost: an upgraded connection runs in its own task and drains there.
        () = shared.shutdown.cancelled() => return,
    };
    match result {
        Ok(()) => {}
        Err(e @ HandshakeError::Timeout(_)) => {
            shared.metrics.handshake_timeouts.inc();
            info!(client.addr = %peer, handshake_timeout = ?timeout, error = %e, "connection dropped at the handshake timeout");
        }
        Err(e @ HandshakeError::Tls(_)) => {
            shared.metrics.tls_handshake_failures.inc();
            debug!(client.addr = %peer, error = %e, "connection closed");
        }
        Err(e @ HandshakeError::Http(_)) => {
            debug!(client.addr = %peer, error = %e, "connection closed");
        }
    }
}

/// HTTP/1.1 until the upgrade (or the one answer that refuses it), within `deadline`.
/// hyper's `header_read_timeout` drops a slow head early; the outer deadline also bounds
/// writing the answer.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    context: ConnectionContext,
    router: Router,
    deadline: Instant,
) -> Result<(), HandshakeError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(context.clone());
        let router = router.clone();
        async move {
            let mut resp = router.oneshot(req).await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(remaining.max(Duration::from_millis(1)))
        .max_buf_size(MAX_UPGRADE_REQUEST_BYTES);
    let conn = http
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    match tokio::time::timeout_at(deadline, conn).await {
        Err(_) => Err(HandshakeError::Timeout("HTTP upgrade")),
        Ok(Err(e)) if e.is_timeout() => Err(HandshakeError::Timeout("HTTP upgrade request head")),
        Ok(Err(e)) => Err(HandshakeError::Http(e)),
        Ok(Ok(())) => Ok(()),
    }
}

#[cfg(test)]
mod tests;
