//! SIP over TCP and over TLS (RFC 3261 §18, §26.2): accept → per-address and global
//! connection caps → TLS handshake within `--handshake-timeout` (TLS) → one flow per
//! connection ([`connection::run`] over a [`StreamWire`]). The NOTIFYs of a dialog go over
//! the connection that created it, as for WebSocket (RFC 5626 flows). Every connection task
//! is tracked: [`serve`] returns only when all are done.

use super::connection::{self, ConnectionParams, Shared};
use super::listener::ACCEPT_BACKOFF;
use super::wire::StreamWire;
use crate::dialog::DialogConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

/// One bound SIP stream listener.
pub struct StreamListener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    dialog: DialogConfig,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for StreamListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamListener")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamListener {
    /// A listener; `tls` makes it SIP over TLS. `dialog` carries its Via transport.
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        dialog: DialogConfig,
    ) -> std::io::Result<Self> {
        Ok(Self {
            local_addr: tcp.local_addr()?,
            tcp,
            tls: tls.map(TlsAcceptor::from),
            dialog,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Serves `l` until shutdown, then waits for its connections to drain.
pub async fn serve(l: StreamListener, shared: Arc<Shared>) {
    let tracker = TaskTracker::new();
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
                warn!(error = %e, server.addr = %l.local_addr, "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let client_addr = peer.ip().to_canonical();
        let guard = match shared.limits.connections.try_acquire(client_addr) {
            Ok(g) => g,
            Err(why) => {
                shared.metrics.address_connections_refused.inc();
                info!(client.addr = %peer, reason = %why, "connection refused at the per-address limit");
                continue;
            }
        };
        let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
            shared.metrics.connections_refused.inc();
            info!(client.addr = %peer, "connection refused at --max-connections");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(client.addr = %peer, error = %e, "set TCP_NODELAY failed");
        }
        let params = ConnectionParams::direct(peer, l.dialog.clone(), None);
        let span = tracing::info_span!(
            "sip",
            client.addr = %peer,
            transport = l.dialog.transport.via(),
            conn.id = tracing::field::Empty,
        );
        let tls = l.tls.clone();
        let shared = shared.clone();
        tracker.spawn(
            async move {
                let max = shared.config.max_message_size;
                match tls {
                    None => connection::run(StreamWire::new(tcp, max), params, shared).await,
                    Some(acceptor) => {
                        let timeout = shared.config.handshake_timeout;
                        let handshake = tokio::select! {
                            r = tokio::time::timeout(timeout, acceptor.accept(tcp)) => r,
                            () = shared.shutdown.cancelled() => return,
                        };
                        match handshake {
                            Ok(Ok(stream)) => {
                                connection::run(StreamWire::new(stream, max), params, shared).await;
                            }
                            Ok(Err(e)) => {
                                shared.metrics.tls_handshake_failures.inc();
                                debug!(error = %e, "TLS handshake failed");
                            }
                            Err(_) => {
                                shared.metrics.handshake_timeouts.inc();
                                info!(handshake_timeout = ?timeout, "connection dropped at the handshake timeout");
                            }
                        }
                    }
                }
                drop(permit);
                drop(guard);
            }
            .instrument(span),
        );
    }
    debug!(server.addr = %l.local_addr, "listener closed");
    tracker.close();
    tracker.wait().await;
}
