//! SIP over UDP (RFC 3261 §18): one socket per listener, one flow per source address. The
//! receive loop hands each datagram to its flow's bounded queue (a full queue drops the
//! datagram: UDP is lossy and the client retransmits) and starts a flow for a new address
//! within the per-address and global caps. A flow is the same driver as a connection
//! ([`connection::run`] over a [`UdpWire`]): it answers to the source address and port
//! (RFC 3581 `rport`, which is also what a client behind NAT needs), sends NOTIFYs there,
//! retransmits them on Timer E, and ends after `--idle-timeout` holding no dialog and no
//! transaction. On shutdown the loop keeps reading until every flow has drained, so the
//! answers to the final NOTIFYs still arrive.

use super::connection::{self, ConnectionParams, Shared};
use super::wire::UdpWire;
use crate::dialog::DialogConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, warn};

/// Largest UDP payload (IPv4: 65 535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;
/// Datagrams queued per flow before new ones are dropped.
pub const FLOW_QUEUE: usize = 64;

/// One bound SIP-over-UDP socket.
#[derive(Debug)]
pub struct UdpListener {
    socket: Arc<UdpSocket>,
    dialog: DialogConfig,
    local_addr: SocketAddr,
}

impl UdpListener {
    /// A listener on `socket`; `dialog` carries Via transport `UDP`.
    pub fn new(socket: UdpSocket, dialog: DialogConfig) -> std::io::Result<Self> {
        Ok(Self {
            local_addr: socket.local_addr()?,
            socket: Arc::new(socket),
            dialog,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Serves `l` until shutdown and every flow has drained.
pub async fn serve(l: UdpListener, shared: Arc<Shared>) {
    let tracker = TaskTracker::new();
    let mut flows: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<SocketAddr>();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut stopping = false;
    let max = shared.config.max_message_size;
    loop {
        if stopping && flows.is_empty() {
            break;
        }
        tokio::select! {
            r = l.socket.recv_from(&mut buf) => {
                let (n, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // ICMP errors surface here on some systems; nothing to do for them.
                        debug!(error = %e, server.addr = %l.local_addr, "UDP receive failed");
                        continue;
                    }
                };
                let Some(datagram) = buf.get(..n).filter(|_| n <= max) else {
                    shared.metrics.parse_errors.inc();
                    debug!(client.addr = %peer, bytes = n, "datagram over --max-message-size dropped");
                    continue;
                };
                let datagram = datagram.to_vec();
                let datagram = match flows.get(&peer) {
                    Some(flow) => match flow.try_send(datagram) {
                        Ok(()) => continue,
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            debug!(client.addr = %peer, "flow queue full; datagram dropped");
                            continue;
                        }
                        // The flow just ended: a new one takes the datagram.
                        Err(mpsc::error::TrySendError::Closed(d)) => d,
                    },
                    None => datagram,
                };
                if stopping {
                    continue;
                }
                if let Some(flow) = start_flow(&l, peer, &shared, &tracker, ended_tx.clone()) {
                    // A fresh queue has room for its first datagram.
                    let _ = flow.try_send(datagram);
                    flows.insert(peer, flow);
                }
            }
            Some(peer) = ended.recv() => {
                if flows.get(&peer).is_some_and(mpsc::Sender::is_closed) {
                    flows.remove(&peer);
                }
            }
            () = shared.shutdown.cancelled(), if !stopping => {
                stopping = true;
            }
        }
    }
    debug!(server.addr = %l.local_addr, "UDP listener closed");
    tracker.close();
    tracker.wait().await;
}

/// Starts the flow of `peer`, within the per-address and global caps.
fn start_flow(
    l: &UdpListener,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    ended: mpsc::UnboundedSender<SocketAddr>,
) -> Option<mpsc::Sender<Vec<u8>>> {
    let client_addr = peer.ip().to_canonical();
    let guard = match shared.limits.connections.try_acquire(client_addr) {
        Ok(g) => g,
        Err(why) => {
            shared.metrics.address_connections_refused.inc();
            info!(client.addr = %peer, reason = %why, "UDP flow refused at the per-address limit");
            return None;
        }
    };
    let Ok(permit) = shared.connection_slots.clone().try_acquire_owned() else {
        shared.metrics.connections_refused.inc();
        warn!(client.addr = %peer, "UDP flow refused at --max-connections");
        return None;
    };
    let (tx, rx) = mpsc::channel(FLOW_QUEUE);
    let wire = UdpWire::new(rx, l.socket.clone(), peer);
    let params = ConnectionParams::direct(peer, l.dialog.clone(), None);
    let span = tracing::info_span!(
        "sip",
        client.addr = %peer,
        transport = "UDP",
        conn.id = tracing::field::Empty,
    );
    let shared = shared.clone();
    tracker.spawn(
        async move {
            connection::run(wire, params, shared).await;
            drop(permit);
            drop(guard);
            let _ = ended.send(peer);
        }
        .instrument(span),
    );
    Some(tx)
}
