//! SIP test clients for the plain transports of RFC 3261 §18: UDP (one message per datagram),
//! TCP and TLS (a byte stream framed by Content-Length, §18.3). One implementation of the
//! SIP side ([`SipClient`]) over a small [`Wire`] trait; [`SipDgramClient`] and
//! [`SipStreamClient`] are its two instances. Unlike the WebSocket client, these clients
//! name their real address: Via `SIP/2.0/UDP 127.0.0.1:PORT;branch=…;rport`, Contact
//! `<sip:user@127.0.0.1:PORT;transport=udp>` (TCP and TLS likewise).

use crate::EVENT_TIMEOUT;
use crate::auth::{Auth, Challenge, DigestInput, authorization};
use crate::client::{EVENT, Subscribed, Subscription, name_addr};
use anyhow::{Context, Result, anyhow, bail};
use sip::{HeaderName, Message, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Largest message a stream client accepts from the proxy (head and body).
const MAX_STREAM_MESSAGE: usize = 1 << 20;

/// How SIP messages travel: whole datagrams, or a framed byte stream.
pub trait Wire: Send {
    /// The Via transport token: `UDP`, `TCP` or `TLS`.
    fn transport(&self) -> &'static str;
    /// The local address the proxy sees (the Via sent-by and the Contact).
    fn local_addr(&self) -> SocketAddr;
    /// Sends bytes as they are: one datagram, or written to the stream.
    fn send(&mut self, bytes: &[u8]) -> impl Future<Output = Result<()>> + Send;
    /// The raw bytes of the next message; `None` when the peer closed the stream. Cancel
    /// safe: bytes already read stay buffered.
    fn recv_raw(&mut self) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
}

/// A UDP socket bound to 127.0.0.1 and connected to the proxy's UDP listener.
#[derive(Debug)]
pub struct Dgram {
    socket: UdpSocket,
    local: SocketAddr,
}

impl Dgram {
    /// Binds 127.0.0.1:0 and connects to `proxy` (`IP:PORT`).
    pub async fn connect(proxy: &str) -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket
            .connect(proxy)
            .await
            .with_context(|| format!("connect UDP {proxy}"))?;
        let local = socket.local_addr()?;
        Ok(Self { socket, local })
    }
}

impl Wire for Dgram {
    fn transport(&self) -> &'static str {
        "UDP"
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let sent = self.socket.send(bytes).await?;
        if sent != bytes.len() {
            bail!("sent {sent} of {} bytes in one datagram", bytes.len());
        }
        Ok(())
    }

    async fn recv_raw(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65_536];
        // A connected socket only receives from the proxy's address. ICMP "port unreachable"
        // (the proxy is gone) shows as an error here.
        let n = self.socket.recv(&mut buf).await?;
        buf.truncate(n);
        Ok(Some(buf))
    }
}

/// Byte streams the stream client runs on (TCP, or TLS over TCP).
pub trait StreamIo: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> StreamIo for T {}

/// A TCP or TLS connection to the proxy, with the bytes read but not yet framed.
#[derive(Debug)]
pub struct Stream {
    io: Box<dyn StreamIo>,
    buf: Vec<u8>,
    local: SocketAddr,
    transport: &'static str,
}

impl Stream {
    /// A TCP connection to `proxy` (`IP:PORT`).
    pub async fn tcp(proxy: &str) -> Result<Self> {
        let tcp = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("connect TCP {proxy}"))?;
        let local = tcp.local_addr()?;
        Ok(Self {
            io: Box::new(tcp),
            buf: Vec::new(),
            local,
            transport: "TCP",
        })
    }

    /// A TLS connection to `proxy` (`IP:PORT`), verifying the proxy's certificate for its IP
    /// address with `config` (e.g. [`crate::tls::TestPki::client_config`]).
    pub async fn tls(proxy: &str, config: Arc<rustls::ClientConfig>) -> Result<Self> {
        let addr: SocketAddr = proxy.parse().with_context(|| format!("address {proxy}"))?;
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect TCP {proxy}"))?;
        let local = tcp.local_addr()?;
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {proxy}"))?;
        Ok(Self {
            io: Box::new(tls),
            buf: Vec::new(),
            local,
            transport: "TLS",
        })
    }

    /// The first whole message in the buffer, removed from it, without the CRLF keep-alives
    /// before it. Framed by `sip::framing::parse_stream`; a message whose head it rejects
    /// (the proxy's 400 may echo an offending header verbatim) is framed by its
    /// Content-Length line alone, so the raw answer still reaches the caller.
    fn take_message(&mut self) -> Result<Option<Vec<u8>>> {
        let skip = sip::framing::skip_keepalives(&self.buf);
        let end = match sip::framing::parse_stream(&self.buf, MAX_STREAM_MESSAGE) {
            Ok(Some((_, consumed))) => consumed,
            Ok(None) => return Ok(None),
            Err(e) => match lenient_frame(&self.buf[skip..]) {
                Some(len) if skip + len <= self.buf.len() => skip + len,
                Some(_) => return Ok(None),
                None => bail!(
                    "proxy sent bytes that do not frame as SIP ({e}): {}",
                    String::from_utf8_lossy(&self.buf)
                ),
            },
        };
        let message = self.buf[skip..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(message))
    }
}

/// Head length plus Content-Length of a message at the start of `buf`, reading only the
/// head's end and a `Content-Length`/`l` line; `None` if either is missing or unreadable.
fn lenient_frame(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let body: usize = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
            .then(|| value.trim().parse().ok())
            .flatten()
    })?;
    Some(head_end + body)
}

impl Wire for Stream {
    fn transport(&self) -> &'static str {
        self.transport
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.io.write_all(bytes).await?;
        Ok(self.io.flush().await?)
    }

    async fn recv_raw(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            let mut chunk = [0u8; 16_384];
            // Cancel safe: nothing is lost if the read is dropped before it completes.
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A SIP client over any [`Wire`]; the SIP logic mirrors [`crate::SipWsClient`].
#[derive(Debug)]
pub struct SipClient<W> {
    wire: W,
    /// Random per client, used in Call-IDs, tags and branches.
    id: String,
    branch: u64,
    /// How `subscribe` signs in.
    pub auth: Auth,
    /// The Authorization value of the last digest answer `subscribe` sent.
    pub last_authorization: Option<String>,
    /// The Event header value of the SUBSCRIBEs this client builds.
    pub event: String,
}

/// SIP over UDP.
pub type SipDgramClient = SipClient<Dgram>;
/// SIP over TCP or TLS.
pub type SipStreamClient = SipClient<Stream>;

impl SipClient<Dgram> {
    /// A UDP client of the proxy's UDP listener `addr` (`IP:PORT`).
    pub async fn udp(addr: &str) -> Result<Self> {
        Ok(Self::over(Dgram::connect(addr).await?))
    }
}

impl SipClient<Stream> {
    /// A TCP client of the proxy's TCP listener `addr`.
    pub async fn tcp(addr: &str) -> Result<Self> {
        Ok(Self::over(Stream::tcp(addr).await?))
    }

    /// A TLS client of the proxy's TLS listener `addr`, trusting what `config` trusts.
    pub async fn tls(addr: &str, config: Arc<rustls::ClientConfig>) -> Result<Self> {
        Ok(Self::over(Stream::tls(addr, config).await?))
    }
}

impl<W: Wire> SipClient<W> {
    /// A client over an established wire.
    pub fn over(wire: W) -> Self {
        Self {
            wire,
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            branch: 0,
            auth: Auth::None,
            last_authorization: None,
            event: EVENT.to_owned(),
        }
    }

    /// The Via transport token of this client (`UDP`, `TCP`, `TLS`).
    pub fn transport(&self) -> &'static str {
        self.wire.transport()
    }

    /// The client's own address, as the proxy sees it.
    pub fn local_addr(&self) -> SocketAddr {
        self.wire.local_addr()
    }

    /// Sends raw bytes (one datagram, or onto the stream).
    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.wire.send(bytes).await
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.wire.send(text.as_bytes()).await
    }

    /// The next message's raw bytes within `timeout`: `Ok(None)` if nothing came, an error
    /// if the connection closed.
    pub async fn recv_raw_within(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        match tokio::time::timeout(timeout, self.wire.recv_raw()).await {
            Err(_) => Ok(None),
            Ok(Ok(Some(raw))) => Ok(Some(raw)),
            Ok(Ok(None)) => bail!("connection closed"),
            Ok(Err(e)) => Err(e),
        }
    }

    /// The next message's raw bytes, within [`EVENT_TIMEOUT`].
    pub async fn recv_raw(&mut self) -> Result<Vec<u8>> {
        self.recv_raw_within(EVENT_TIMEOUT)
            .await?
            .context("no message from the proxy within the timeout")
    }

    /// The next SIP message.
    pub async fn recv(&mut self) -> Result<Message> {
        let raw = self.recv_raw().await?;
        parse(&raw)
    }

    /// The next SIP message within `timeout`, or `None` if nothing came.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Option<Message>> {
        match self.recv_raw_within(timeout).await? {
            Some(raw) => Ok(Some(parse(&raw)?)),
            None => Ok(None),
        }
    }

    /// The next message, which must be a response.
    pub async fn recv_response(&mut self) -> Result<Response> {
        match self.recv().await? {
            Message::Response(r) => Ok(r),
            Message::Request(r) => bail!("expected a response, got {} request", r.method),
        }
    }

    /// The next message, which must be a NOTIFY.
    pub async fn recv_notify(&mut self) -> Result<Request> {
        match self.recv().await? {
            Message::Request(r) if r.method == sip::Method::Notify => Ok(r),
            Message::Request(r) => bail!("expected a NOTIFY, got {} request", r.method),
            Message::Response(r) => bail!("expected a NOTIFY, got {} response", r.status.as_u16()),
        }
    }

    /// True when the peer closes the stream before [`EVENT_TIMEOUT`] (messages before the
    /// close are skipped). Over UDP, which has no connection, only a socket error (an ICMP
    /// "port unreachable": the proxy is gone) counts.
    pub async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.wire.recv_raw()).await {
                Err(_) => return false,
                Ok(Ok(None) | Err(_)) => return true,
                Ok(Ok(Some(_))) => continue,
            }
        }
    }

    /// Answers a request (e.g. 200 to a NOTIFY).
    pub async fn respond(&mut self, req: &Request, status: u16) -> Result<()> {
        let status = StatusCode::new(status).context("status")?;
        let resp = Response::for_request(req, status);
        self.send(&resp.to_bytes()).await
    }

    /// A new branch (RFC 3261 magic cookie first).
    pub fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bK{}x{}", self.id, self.branch)
    }

    /// The Via value for a request of this client with `branch`.
    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.transport(),
            self.local_addr()
        )
    }

    /// The Contact value for `user` at this client's address.
    pub fn contact(&self, user: &str) -> String {
        format!(
            "<sip:{user}@{};transport={}>",
            self.local_addr(),
            self.transport().to_ascii_lowercase()
        )
    }

    /// A dialog-creating SUBSCRIBE for `user`'s list; `extra` lines go in verbatim (each
    /// ending in CRLF).
    pub fn initial_subscribe(&mut self, user: &str, call_id: &str, extra: &str) -> String {
        self.initial_subscribe_cseq(user, call_id, 1, extra)
    }

    /// [`Self::initial_subscribe`] with a chosen CSeq (the retry after a 401 uses the next).
    pub fn initial_subscribe_cseq(
        &mut self,
        user: &str,
        call_id: &str,
        cseq: u32,
        extra: &str,
    ) -> String {
        let branch = self.next_branch();
        let (via, contact) = (self.via(&branch), self.contact(user));
        let (id, event) = (&self.id, &self.event);
        format!(
            "SUBSCRIBE sip:{user}@example.com SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@example.com>\r\n\
             From: \"{user}\" <sip:{user}@example.com>;tag=ft{id}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: {contact}\r\n\
             Event: {event}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// SUBSCRIBE with Accept and Expires, signing in with [`Self::auth`] (answering one
    /// digest challenge) → the final response and the CSeq it answered.
    pub async fn subscribe_answer(
        &mut self,
        user: &str,
        call_id: &str,
        expires: u32,
    ) -> Result<(Response, u32)> {
        let base = format!("Accept: application/conference-list+xml\r\nExpires: {expires}\r\n");
        let first = match &self.auth {
            Auth::Bearer(token) => format!("{base}Authorization: Bearer {token}\r\n"),
            _ => base.clone(),
        };
        let req = self.initial_subscribe(user, call_id, &first);
        self.send_text(&req).await?;
        let response = self.recv_response().await?;
        let Auth::Digest {
            username,
            password,
            algorithm,
        } = self.auth.clone()
        else {
            return Ok((response, 1));
        };
        if response.status.as_u16() != 401 {
            return Ok((response, 1));
        }
        let challenges = Challenge::all(&response)?;
        let challenge = challenges
            .iter()
            .find(|c| c.algorithm.eq_ignore_ascii_case(algorithm))
            .with_context(|| format!("401 offers no {algorithm} challenge: {challenges:?}"))?;
        let cnonce = format!("{:08x}", rand::random::<u32>());
        let authz = authorization(
            challenge,
            &DigestInput {
                username: &username,
                password: &password,
                method: "SUBSCRIBE",
                uri: &format!("sip:{user}@example.com"),
                nc: 1,
                cnonce: &cnonce,
            },
        );
        self.last_authorization = Some(authz.clone());
        let req = self.initial_subscribe_cseq(
            user,
            call_id,
            2,
            &format!("{base}Authorization: {authz}\r\n"),
        );
        self.send_text(&req).await?;
        Ok((self.recv_response().await?, 2))
    }

    /// SUBSCRIBE with Accept and Expires → expects 200; returns the dialog.
    pub async fn subscribe(&mut self, user: &str, expires: u32) -> Result<Subscribed> {
        let call_id = format!("{}-{}", self.id, rand::random::<u32>());
        let (response, cseq) = self.subscribe_answer(user, &call_id, expires).await?;
        if response.status != StatusCode::OK {
            bail!(
                "SUBSCRIBE answered {} {}",
                response.status.as_u16(),
                response.reason
            );
        }
        let to_tag = name_addr(&response, &HeaderName::TO)?
            .tag()
            .context("200 without To-tag")?
            .to_owned();
        Ok(Subscribed {
            response,
            dialog: Subscription {
                user: user.to_owned(),
                call_id,
                from_tag: format!("ft{}", self.id),
                to_tag,
                cseq,
            },
        })
    }

    /// An in-dialog SUBSCRIBE (refresh, or unsubscribe with `expires` 0).
    pub async fn resubscribe(&mut self, d: &mut Subscription, expires: u32) -> Result<()> {
        d.cseq += 1;
        let branch = self.next_branch();
        let (via, contact) = (self.via(&branch), self.contact(&d.user));
        let event = &self.event;
        let (user, call_id, from_tag, to_tag, cseq) =
            (&d.user, &d.call_id, &d.from_tag, &d.to_tag, d.cseq);
        let req = format!(
            "SUBSCRIBE sip:conflist@proxy.invalid SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@example.com>;tag={to_tag}\r\n\
             From: <sip:{user}@example.com>;tag={from_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: {contact}\r\n\
             Event: {event}\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        self.send_text(&req).await
    }
}

fn parse(raw: &[u8]) -> Result<Message> {
    sip::parse_message(raw).map_err(|e| {
        anyhow!(
            "proxy sent unparseable SIP ({e}): {}",
            String::from_utf8_lossy(raw)
        )
    })
}
