//! The listener in-process on loopback: raw TCP (and TLS) clients speak the bytes a browser
//! would. Every wait is for an event (a response, EOF) under a 10 s guard; counters are read
//! after [`serve`] has returned, when every connection task has ended.

use super::*;
use crate::metrics::Metrics;
use crate::transport::connection::ConnectionConfig;
use crate::transport::limits::{Limits, LimitsConfig};
use crate::upstream::{Security, Upstreams};
use std::sync::atomic::AtomicU64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(10);

struct Options {
    handshake_timeout: Duration,
    idle_timeout: Duration,
    limits: LimitsConfig,
    tls: bool,
    max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            limits: LimitsConfig {
                trusted_proxies: Vec::new(),
                allowed_origins: Vec::new(),
                max_connections_per_address: 256,
                max_subscribes_per_address: 20,
                max_tracked_addresses: 1000,
            },
            tls: false,
            max_connections: 100,
        }
    }
}

struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    served: JoinHandle<()>,
}

impl Proxy {
    async fn start(opts: Options) -> Self {
        let metrics = Metrics::default();
        let upstream_token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let upstreams = Upstreams::start(
            &[],
            &Security::default(),
            &metrics,
            &upstream_token,
            &tracker,
        );
        let dialog = DialogConfig {
            local_host: "proxy.test:5060".into(),
            transport: if opts.tls {
                crate::dialog::Transport::Wss
            } else {
                crate::dialog::Transport::Ws
            },
            timers: crate::transaction::Timers::default(),
            notify_timeout: Duration::from_secs(32),
            max_dialogs: 100,
            max_route_set_size: 4096,
            flow_identity_lifetime: Duration::from_secs(600),
            notify_retry: crate::dialog::NotifyRetry::default(),
        };
        let shared = Arc::new(Shared {
            config: ConnectionConfig {
                max_message_size: 65_536,
                keepalive_interval: Duration::from_secs(60),
                write_timeout: Duration::from_secs(5),
                drain_timeout: Duration::from_millis(200),
                idle_timeout: opts.idle_timeout,
                handshake_timeout: opts.handshake_timeout,
            },
            dialog: dialog.clone(),
            upstreams,
            metrics,
            connection_slots: Arc::new(Semaphore::new(opts.max_connections)),
            shutdown: CancellationToken::new(),
            instance: "test".into(),
            next_connection: AtomicU64::new(0),
            limits: Limits::new(opts.limits).unwrap(),
        });
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = if opts.tls {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/transport/testdata");
            let config =
                crate::transport::tls::server_config(&dir.join("cert.pem"), &dir.join("key.pem"))
                    .unwrap();
            Listener::tls(tcp, config, dialog).unwrap()
        } else {
            Listener::plain(tcp, dialog).unwrap()
        };
        let addr = listener.local_addr();
        let served = tokio::spawn(serve(vec![listener], shared.clone()));
        Self {
            addr,
            shared,
            served,
        }
    }

    /// Shuts down and waits for every connection task; then the counters are final.
    async fn stop(self) -> Metrics {
        self.shared.shutdown.cancel();
        tokio::time::timeout(GUARD, self.served)
            .await
            .expect("serve did not return")
            .unwrap();
        self.shared.metrics.clone()
    }

    async fn connect(&self) -> Client<TcpStream> {
        Client::new(TcpStream::connect(self.addr).await.unwrap())
    }
}

use std::path::Path;

/// A byte-level WebSocket client: the upgrade request, masked text frames, raw reads.
struct Client<S> {
    io: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    fn new(io: S) -> Self {
        Self {
            io,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn upgrade(&mut self, host: &str, extra: &str) -> String {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n{extra}\r\n"
        );
        self.send(req.as_bytes()).await;
        self.read_head().await
    }

    /// Like [`Client::upgrade`], but `None` when the server closes without answering.
    async fn try_upgrade(&mut self, host: &str) -> Option<String> {
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n"
        );
        if self.io.write_all(req.as_bytes()).await.is_err() {
            return None;
        }
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(String::from_utf8(head).unwrap());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads up to the end of an HTTP head; later bytes stay buffered.
    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            assert!(self.fill().await, "EOF before the end of the HTTP head");
        }
    }

    /// Reads more bytes; false at EOF (a reset counts as EOF).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(GUARD, self.io.read(&mut chunk))
            .await
            .expect("no data and no EOF within the guard")
        {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Everything until the server closes.
    async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    async fn send_text(&mut self, text: &str) {
        let payload = text.as_bytes();
        let mut frame = vec![0x81];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(n).unwrap().to_be_bytes());
            }
        }
        let mask = [1u8, 2, 3, 4];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.send(&frame).await;
    }

    /// The next server frame (opcode, payload); `None` at EOF.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let frame: Vec<u8> = self.buf.drain(..header + len).collect();
                    return Some((opcode, frame[header..].to_vec()));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }
}

fn status(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn upgrade_keeps_connect_info_and_selects_sip() {
    let proxy = Proxy::start(Options::default()).await;
    let mut c = proxy.connect().await;
    let head = c.upgrade(&proxy.addr.to_string(), "").await;
    assert_eq!(status(&head), 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: sip"),
        "{head}"
    );
    // An OPTIONS over the socket is answered: the connection shell runs.
    c.send_text("OPTIONS sip:proxy.test SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bKo1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:proxy.test>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").await;
    let (opcode, payload) = c.read_frame().await.unwrap();
    assert_eq!(opcode, 1);
    let text = String::from_utf8(payload).unwrap();
    assert!(text.starts_with("SIP/2.0 200"), "{text}");
    // The Via got received= from the ConnectInfo peer address.
    assert!(text.contains("received=127.0.0.1"), "{text}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_answered_and_closed() {
    let proxy = Proxy::start(Options::default()).await;
    let mut c = proxy.connect().await;
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let all = String::from_utf8(c.read_to_eof().await).unwrap();
    assert!(all.starts_with("HTTP/1.1 4"), "{all}");
    assert!(
        all.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
    let m = proxy.stop().await;
    assert_eq!(m.handshake_timeouts.get(), 0);
}

#[tokio::test]
async fn a_slow_upgrade_request_is_dropped_at_the_handshake_timeout() {
    let proxy = Proxy::start(Options {
        handshake_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let mut c = proxy.connect().await;
    // Slowloris: a head that never ends.
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: web").await;
    let rest = c.read_to_eof().await;
    assert!(!rest.starts_with(b"HTTP/1.1 101"));
    // A client that sends nothing at all is dropped as well.
    let mut silent = proxy.connect().await;
    silent.read_to_eof().await;
    let m = proxy.stop().await;
    assert_eq!(m.handshake_timeouts.get(), 2);
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_at_max_connections() {
    let proxy = Proxy::start(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    let host = proxy.addr.to_string();
    let mut first = proxy.connect().await;
    first.send(b"GET / HTTP/1.1\r\n").await; // still in its handshake
    // Accepts are taken in order, so the first holds the only handshake slot by now.
    let mut second = proxy.connect().await;
    assert!(
        second.read_to_eof().await.is_empty(),
        "closed before any HTTP"
    );
    drop(first);
    // The slot frees when the first's task has seen the EOF; until then a newcomer is
    // closed at accept, so each attempt ends in an answer or a close.
    let head = tokio::time::timeout(GUARD, async {
        loop {
            if let Some(head) = proxy.connect().await.try_upgrade(&host).await {
                break head;
            }
        }
    })
    .await
    .expect("the slot never came free");
    assert_eq!(status(&head), 101, "{head}");
    let m = proxy.stop().await;
    assert!(m.connections_refused.get() >= 1);
}

#[tokio::test]
async fn a_foreign_browser_origin_gets_403_and_the_same_origin_passes() {
    let proxy = Proxy::start(Options::default()).await;
    let host = proxy.addr.to_string();
    let mut c = proxy.connect().await;
    let head = c.upgrade(&host, "Origin: https://evil.example\r\n").await;
    assert_eq!(status(&head), 403, "{head}");
    let mut c = proxy.connect().await;
    let head = c
        .upgrade(&host, &format!("Origin: http://{host}\r\n"))
        .await;
    assert_eq!(status(&head), 101, "{head}");
    let m = proxy.stop().await;
    assert_eq!(m.origins_refused.get(), 1);
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_closed_at_accept() {
    let mut opts = Options::default();
    opts.limits.max_connections_per_address = 1;
    let proxy = Proxy::start(opts).await;
    let host = proxy.addr.to_string();
    let mut first = proxy.connect().await;
    assert_eq!(status(&first.upgrade(&host, "").await), 101);
    let mut second = proxy.connect().await;
    assert!(
        second.read_to_eof().await.is_empty(),
        "closed before any HTTP"
    );
    assert_eq!(
        proxy
            .shared
            .limits
            .connections
            .count("127.0.0.1".parse().unwrap()),
        1
    );
    drop(first);
    let shared = proxy.shared.clone();
    let m = proxy.stop().await;
    assert_eq!(m.address_connections_refused.get(), 1);
    assert_eq!(
        shared.limits.connections.addresses(),
        0,
        "every guard is dropped"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let mut opts = Options::default();
    opts.limits.max_connections_per_address = 1;
    opts.limits.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    let proxy = Proxy::start(opts).await;
    let host = proxy.addr.to_string();
    let xff = |ip: &str| format!("X-Forwarded-For: 198.51.100.1, {ip}\r\n");
    let mut a = proxy.connect().await;
    assert_eq!(status(&a.upgrade(&host, &xff("203.0.113.9")).await), 101);
    let mut again = proxy.connect().await;
    let head = again.upgrade(&host, &xff("203.0.113.9")).await;
    assert_eq!(status(&head), 503, "{head}");
    let mut b = proxy.connect().await;
    assert_eq!(status(&b.upgrade(&host, &xff("203.0.113.10")).await), 101);
    let limits = &proxy.shared.limits.connections;
    assert_eq!(limits.count("203.0.113.9".parse().unwrap()), 1);
    assert_eq!(
        limits.count("127.0.0.1".parse().unwrap()),
        0,
        "the proxy itself is not counted"
    );
    let m = proxy.stop().await;
    assert_eq!(m.address_connections_refused.get(), 1);
}

fn subscribe(call_id: &str) -> String {
    format!(
        "SUBSCRIBE sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WS h.invalid;branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=f{call_id}\r\nTo: <sip:alice@example.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:alice@h.invalid;transport=ws>\r\nEvent: conference-list\r\nAccept: application/conference-list+xml\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}

#[tokio::test]
async fn initial_subscribes_over_the_rate_get_503_with_retry_after() {
    let mut opts = Options::default();
    opts.limits.max_subscribes_per_address = 1; // burst 2
    let proxy = Proxy::start(opts).await;
    let mut c = proxy.connect().await;
    assert_eq!(status(&c.upgrade(&proxy.addr.to_string(), "").await), 101);
    for id in ["s1", "s2", "s3"] {
        c.send_text(&subscribe(id)).await;
    }
    let refused = loop {
        let (_, payload) = c
            .read_frame()
            .await
            .expect("no answer to the third SUBSCRIBE");
        let text = String::from_utf8(payload).unwrap();
        if text.contains("Call-ID: s3\r\n") {
            break text;
        }
        assert!(
            !text.contains("Retry-After: 1"),
            "only the third is rate-limited: {text}"
        );
    };
    assert!(refused.starts_with("SIP/2.0 503 "), "{refused}");
    assert!(refused.contains("Retry-After: 1\r\n"), "{refused}");
    assert!(
        refused.contains("To: <sip:alice@example.com>;tag="),
        "{refused}"
    );
    let m = proxy.stop().await;
    assert_eq!(m.subscribes_rate_limited.get(), 1);
}

#[tokio::test]
async fn a_connection_without_dialogs_is_closed_at_the_idle_timeout() {
    let proxy = Proxy::start(Options {
        idle_timeout: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let mut c = proxy.connect().await;
    assert_eq!(status(&c.upgrade(&proxy.addr.to_string(), "").await), 101);
    // A keep-alive ping does not count as activity.
    c.send_text("\r\n\r\n").await;
    let mut saw_close = false;
    while let Some((opcode, _)) = c.read_frame().await {
        saw_close |= opcode == 0x8;
    }
    assert!(saw_close, "the server sends a Close frame");
    let m = proxy.stop().await;
    assert_eq!(m.idle_connections_closed.get(), 1);
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/transport/testdata");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn wss_upgrades_over_tls_and_drops_a_silent_handshake() {
    let proxy = Proxy::start(Options {
        tls: true,
        handshake_timeout: Duration::from_secs(2),
        ..Options::default()
    })
    .await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(GUARD, tls_connector().connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut c = Client::new(tls);
    let head = c
        .upgrade("localhost", "Origin: https://localhost\r\n")
        .await;
    assert_eq!(status(&head), 101, "{head}");
    // A TCP connection that never starts TLS is dropped at the deadline.
    let mut silent = proxy.connect().await;
    silent.read_to_eof().await;
    // Not TLS at all: a failed handshake.
    let mut plain = proxy.connect().await;
    plain.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    plain.read_to_eof().await;
    let m = proxy.stop().await;
    assert_eq!(m.handshake_timeouts.get(), 1);
    assert_eq!(m.tls_handshake_failures.get(), 1);
}
