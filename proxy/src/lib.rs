//! conflist proxy: the SIP edge of the conference-list service.
//!
//! Browsers (and gateways) connect over SIP-over-WebSocket (RFC 7118), room systems and
//! softphones over UDP, TCP or TLS, and SUBSCRIBE to
//! `conference-list`. The proxy validates the SIP, owns each subscription's dialog and its
//! NOTIFY transactions, and forwards the subscription's meaning over one gRPC session per
//! subscriber-server (`conflist.v1`). It holds no database connection.
//!
//! Layout:
//! - [`config`]: flags and environment.
//! - [`transport`]: the listeners (WebSocket plain and TLS, UDP, TCP, TLS: accept loops,
//!   handshake deadline, Origin check, per-client limits), each transport's framing, and
//!   the one flow driver (I/O, keep-alive, idle timeout) that executes the dialog core's
//!   actions.
//! - [`dialog`]: sans-IO dialogs of one flow: validation, the status map, NOTIFY delivery.
//! - [`transaction`]: sans-IO RFC 3261 non-INVITE client and server transactions.
//! - [`notifier`]: the domain form of what goes to and comes from the subscriber-server.
//! - [`upstream`]: gRPC sessions, routing of events to connections, rendezvous hashing.
//! - [`metrics`]: the counters and gauges behind `/metrics` (served by `conflist-service`).
//! - [`web`]: the web page served to plain `GET`s on the WebSocket port (`--web-page`).

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod dialog;
pub mod metrics;
pub mod notifier;
pub mod transaction;
pub mod transport;
pub mod upstream;
pub mod web;

use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use config::Config;

/// Runs the proxy until `shutdown` resolves; then every dialog gets a final NOTIFY
/// (`terminated;reason=deactivated`) and the proxy waits up to the grace period.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let ws = match config.ws_listen.addr() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind WebSocket listener {addr}"))?,
        ),
        None => None,
    };
    let wss = match (config.wss_listen, &config.tls_cert, &config.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let tls = transport::tls::server_config(cert, key)
                .context("load the WSS certificate and key")?;
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind secure WebSocket listener {addr}"))?;
            Some((tcp, tls))
        }
        _ => None,
    };
    let udp = match config.udp_listen.addr() {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .with_context(|| format!("bind SIP UDP listener {addr}"))?,
        ),
        None => None,
    };
    let tcp = match config.tcp_listen.addr() {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind SIP TCP listener {addr}"))?,
        ),
        None => None,
    };
    let tls = match (config.tls_listen, &config.tls_cert, &config.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let tls = transport::tls::server_config(cert, key)
                .context("load the TLS certificate and key")?;
            let tcp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind SIP TLS listener {addr}"))?;
            Some((tcp, tls))
        }
        _ => None,
    };
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("bind admin listener {}", config.admin_listen))?;
    let ws_addr = ws.as_ref().map(TcpListener::local_addr).transpose()?;
    let wss_addr = wss.as_ref().map(|(tcp, _)| tcp.local_addr()).transpose()?;
    let admin_addr = admin.local_addr()?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::Metrics::register(&mut registry);
    let token = CancellationToken::new();
    let upstream_token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let security = upstream_security(&config).context("load the gRPC TLS files and secret")?;
    if security.secret.is_some() {
        for s in config
            .servers
            .iter()
            .chain(&config.servers_dns)
            .filter(|s| sends_in_clear(s))
        {
            warn!(server = %s, "the gRPC secret goes to this server unencrypted: use https:// (--grpc-ca)");
        }
    }
    let static_servers = config.static_servers();
    let upstreams = upstream::Upstreams::start(
        &static_servers,
        &security,
        &metrics,
        &upstream_token,
        &tracker,
    );
    let discovery = upstream::Discovery {
        dns: config.servers_dns.clone(),
        file: config.servers_file.clone(),
        interval: config.discovery_interval,
    };
    if discovery.is_dynamic() {
        upstreams.discover(static_servers, discovery).await;
    }

    let udp_addr = udp
        .as_ref()
        .map(tokio::net::UdpSocket::local_addr)
        .transpose()?;
    let tcp_addr = tcp.as_ref().map(TcpListener::local_addr).transpose()?;
    let tls_addr = tls.as_ref().map(|(l, _)| l.local_addr()).transpose()?;
    let local_host = config.public_host.clone().unwrap_or_else(|| {
        [ws_addr, wss_addr, udp_addr, tcp_addr, tls_addr]
            .into_iter()
            .flatten()
            .next()
            .map(|a| a.to_string())
            .unwrap_or_default()
    });
    let shared = Arc::new(transport::connection::Shared {
        config: transport::connection::ConnectionConfig {
            max_message_size: config.max_message_size,
            keepalive_interval: config.keepalive_interval,
            write_timeout: config.write_timeout,
            drain_timeout: config.shutdown_grace,
            idle_timeout: config.idle_timeout,
            handshake_timeout: config.handshake_timeout,
        },
        dialog: dialog::DialogConfig {
            local_host,
            transport: dialog::Transport::Ws,
            timers: transaction::Timers {
                t1: config.sip_t1,
                t2: config.sip_t2,
                t4: config.sip_t4,
            },
            notify_timeout: config.notify_timeout,
            notify_retry: dialog::NotifyRetry {
                max_retry_after: config.notify_max_retry_after,
                max_retries: config.notify_retries,
            },
            max_dialogs: config.max_dialogs_per_connection,
            max_route_set_size: config.max_route_set_size,
            flow_identity_lifetime: config.flow_identity_lifetime,
        },
        upstreams: upstreams.clone(),
        metrics,
        connection_slots: Arc::new(Semaphore::new(config.max_connections)),
        shutdown: token.clone(),
        instance: format!("{:08x}", rand::random::<u32>()),
        next_connection: AtomicU64::new(0),
        limits: transport::limits::Limits::new(config.limits()).context("--allowed-origin")?,
    });

    // Each listener's Via/Contact: its own transport, and its own address unless
    // --public-host names one.
    // A UDP "flow" is only a source address, which anyone can forge: no identity is
    // remembered for it (every SUBSCRIBE over UDP signs in).
    let listener_dialog = |addr: SocketAddr, transport| dialog::DialogConfig {
        local_host: config
            .public_host
            .clone()
            .unwrap_or_else(|| addr.to_string()),
        transport,
        flow_identity_lifetime: if transport == dialog::Transport::Udp {
            std::time::Duration::ZERO
        } else {
            shared.dialog.flow_identity_lifetime
        },
        ..shared.dialog.clone()
    };
    let mut listeners = Vec::new();
    let mut ready = String::from("READY");
    if let (Some(tcp), Some(addr)) = (ws, ws_addr) {
        listeners.push(transport::listener::Listener::plain(
            tcp,
            listener_dialog(addr, dialog::Transport::Ws),
        )?);
        ready.push_str(&format!(" ws=ws://{addr}"));
    }
    ready.push_str(&format!(" admin={admin_addr}"));
    if let (Some((tcp, tls)), Some(addr)) = (wss, wss_addr) {
        listeners.push(transport::listener::Listener::tls(
            tcp,
            tls,
            listener_dialog(addr, dialog::Transport::Wss),
        )?);
        ready.push_str(&format!(" wss=wss://{addr}"));
    }
    let mut servers = tokio::task::JoinSet::new();
    if let (Some(socket), Some(addr)) = (udp, udp_addr) {
        let l = transport::udp::UdpListener::new(
            socket,
            listener_dialog(addr, dialog::Transport::Udp),
        )?;
        servers.spawn(transport::udp::serve(l, shared.clone()));
        ready.push_str(&format!(" udp={addr}"));
    }
    if let (Some(tcp), Some(addr)) = (tcp, tcp_addr) {
        let l = transport::sip_listener::StreamListener::new(
            tcp,
            None,
            listener_dialog(addr, dialog::Transport::Tcp),
        )?;
        servers.spawn(transport::sip_listener::serve(l, shared.clone()));
        ready.push_str(&format!(" tcp={addr}"));
    }
    if let (Some((tcp, tls)), Some(addr)) = (tls, tls_addr) {
        let l = transport::sip_listener::StreamListener::new(
            tcp,
            Some(tls),
            listener_dialog(addr, dialog::Transport::Tls),
        )?;
        servers.spawn(transport::sip_listener::serve(l, shared.clone()));
        ready.push_str(&format!(" tls={addr}"));
    }
    info!(ws.addr = ?ws_addr, wss.addr = ?wss_addr, udp.addr = ?udp_addr, tcp.addr = ?tcp_addr, tls.addr = ?tls_addr, admin.addr = %admin_addr, servers = ?config.servers, servers.dns = ?config.servers_dns, servers.file = ?config.servers_file, "conflist-proxy listening");
    println!("{ready}");

    let page = config.web().map(|s| Arc::new(web::WebPage::new(&s)));
    if page.is_some() {
        for (scheme, addr) in [("http", ws_addr), ("https", wss_addr)] {
            if let Some(addr) = addr {
                info!(url = %format!("{scheme}://{addr}/"), "web page");
            }
        }
    }
    servers.spawn(transport::listener::serve_with_page(
        listeners, shared, page,
    ));
    let admin_token = token.clone();
    let admin_server = tokio::spawn(async move {
        let ready: conflist_service::ReadinessCheck = Arc::new(move || {
            let up = upstreams.any_connected();
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err("no subscriber-server session")
                }
            })
        });
        let router = conflist_service::admin_router(registry, ready, env!("CARGO_PKG_VERSION"));
        axum::serve(admin, router)
            .with_graceful_shutdown(async move { admin_token.cancelled().await })
            .await
    });

    shutdown.await;
    info!("shutting down: final NOTIFYs to every dialog");
    token.cancel();
    // Connections drain within the grace period (their own drain timeout); then the
    // upstream sessions, which carried their Unsubscribes, stop.
    let grace = config.shutdown_grace + std::time::Duration::from_secs(1);
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = servers.join_next().await {
            if let Err(e) = r {
                warn!(error = %e, "a listener ended abnormally");
            }
        }
    });
    if drained.await.is_err() {
        warn!("connections did not finish within the grace period");
    }
    upstream_token.cancel();
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!("upstream sessions did not stop within the grace period");
    }
    let _ = admin_server.await;
    info!("stopped");
    Ok(())
}

/// The CA, client certificate and secret for the sessions to the servers, read from files.
fn upstream_security(config: &Config) -> anyhow::Result<upstream::Security> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read =
        |p: &std::path::Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let tls = match &config.grpc_ca {
        None => None,
        Some(ca) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&config.grpc_tls_cert, &config.grpc_tls_key) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(domain) = &config.grpc_tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            Some(tls)
        }
    };
    let secret = match &config.grpc_secret_file {
        None => None,
        Some(path) => {
            let raw = conflist_service::settings::read_secret("--grpc-secret-file", path)
                .map_err(anyhow::Error::msg)?;
            let secret = String::from_utf8(raw)
                .with_context(|| format!("{} is not UTF-8", path.display()))?;
            Some(format!("Bearer {secret}").parse().with_context(|| {
                format!(
                    "{} holds characters not allowed in metadata",
                    path.display()
                )
            })?)
        }
    };
    Ok(upstream::Security { tls, secret })
}

/// An `http://` server URL whose host is not loopback: a secret sent there crosses a network
/// in clear.
fn sends_in_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_non_loopback_plaintext_servers_count_as_in_clear() {
        assert!(!super::sends_in_clear("http://127.0.0.1:50051"));
        assert!(!super::sends_in_clear("http://[::1]:50051"));
        assert!(!super::sends_in_clear("http://localhost:50051"));
        assert!(!super::sends_in_clear("https://server:50051"));
        assert!(super::sends_in_clear(
            "http://conflist-server-0.conflist-server:50051"
        ));
        assert!(super::sends_in_clear("http://10.0.0.5:50051"));
    }
}
