//! A SIP-over-WebSocket test client that speaks like a browser library: Contact in
//! `.invalid`, Via transport `WSS`, one SIP message per WebSocket message.

use crate::EVENT_TIMEOUT;
use crate::auth::{Auth, Challenge, DigestInput, authorization};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use sip::{HeaderName, Message, Request, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The event package's name, the default [`SipWsClient::event`].
pub const EVENT: &str = "conference-list";

/// One WebSocket connection to the proxy.
#[derive(Debug)]
pub struct SipWsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Random per client, used in Call-IDs, tags and the Contact host.
    id: String,
    branch: u64,
    /// How `subscribe` signs in.
    pub auth: Auth,
    /// The Authorization value of the last digest answer `subscribe` sent.
    pub last_authorization: Option<String>,
    /// The Event header value of the SUBSCRIBEs this client builds (`conference-list`;
    /// set e.g. `conference-list;past=3600` to ask for a window).
    pub event: String,
}

/// An established subscription dialog, from the subscriber's side.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub user: String,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub cseq: u32,
}

/// What the first exchange of a SUBSCRIBE produced.
#[derive(Debug)]
pub struct Subscribed {
    pub response: Response,
    pub dialog: Subscription,
}

impl SipWsClient {
    /// Connects with subprotocol `sip`.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, &[], None).await
    }

    /// Connects from the loopback address `source` (e.g. 127.0.0.2), so that per-address
    /// limits of the proxy see another client.
    pub async fn connect_from(url: &str, source: std::net::IpAddr) -> Result<Self> {
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse()?);
        let host = req.uri().authority().context("no host in URL")?.as_str();
        let target: std::net::SocketAddr = host.parse()?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(source, 0))?;
        let stream = socket.connect(target).await?;
        let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
        Ok(Self {
            ws,
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            branch: 0,
            auth: Auth::None,
            last_authorization: None,
            event: EVENT.to_owned(),
        })
    }

    /// Connects with subprotocol `sip`, extra handshake headers, and (for `wss://`) a TLS
    /// client configuration that trusts the test CA.
    pub async fn connect_with(
        url: &str,
        headers: &[(&'static str, &str)],
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Self> {
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse()?);
        for (name, value) in headers {
            req.headers_mut().insert(*name, value.parse()?);
        }
        let connector = tls.map(tokio_tungstenite::Connector::Rustls);
        let (ws, resp) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector)
                .await
                .with_context(|| format!("connect {url}"))?;
        let proto = resp.headers().get("sec-websocket-protocol");
        if proto.map(|p| p.as_bytes()) != Some(b"sip") {
            bail!("server did not select subprotocol sip: {proto:?}");
        }
        Ok(Self {
            ws,
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            branch: 0,
            auth: Auth::None,
            last_authorization: None,
            event: EVENT.to_owned(),
        })
    }

    /// Sends raw text as one WebSocket message.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        Ok(self.ws.send(Ws::Text(text.into())).await?)
    }

    /// Sends raw bytes as one binary WebSocket message.
    pub async fn send_binary(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.ws.send(Ws::Binary(bytes.to_vec().into())).await?)
    }

    /// The next text or binary message as raw bytes; pings are skipped.
    pub async fn recv_raw(&mut self) -> Result<Vec<u8>> {
        loop {
            let msg = tokio::time::timeout(EVENT_TIMEOUT, self.ws.next())
                .await
                .context("no message from the proxy within the timeout")?
                .ok_or_else(|| anyhow!("connection closed"))??;
            match msg {
                Ws::Text(t) => return Ok(t.as_bytes().to_vec()),
                Ws::Binary(b) => return Ok(b.to_vec()),
                Ws::Close(_) => bail!("connection closed"),
                _ => continue,
            }
        }
    }

    /// The next SIP message.
    pub async fn recv(&mut self) -> Result<Message> {
        let raw = self.recv_raw().await?;
        sip::parse_message(&raw).map_err(|e| {
            anyhow!(
                "proxy sent unparseable SIP ({e}): {}",
                String::from_utf8_lossy(&raw)
            )
        })
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
            other => bail!("expected a NOTIFY, got {:?}", start_line(&other)),
        }
    }

    /// True when the proxy closes the connection before `EVENT_TIMEOUT`.
    pub async fn closed(&mut self) -> bool {
        loop {
            match tokio::time::timeout(EVENT_TIMEOUT, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Ws::Close(_)))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Answers a request (e.g. 200 to a NOTIFY).
    pub async fn respond(&mut self, req: &Request, status: u16) -> Result<()> {
        let status = StatusCode::new(status).context("status")?;
        let resp = Response::for_request(req, status);
        self.send_text(&String::from_utf8(resp.to_bytes())?).await
    }

    fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bK{}x{}", self.id, self.branch)
    }

    /// A dialog-creating SUBSCRIBE for `user`'s list; `extra` lines go in verbatim
    /// (each ending in CRLF), e.g. `Accept: …\r\n` or `Expires: 2\r\n`.
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
        let (id, event) = (&self.id, &self.event);
        format!(
            "SUBSCRIBE sip:{user}@example.com SIP/2.0\r\n\
             Via: SIP/2.0/WSS {id}.invalid;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@example.com>\r\n\
             From: \"{user}\" <sip:{user}@example.com>;tag=ft{id}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{id}@{id}.invalid;transport=ws>\r\n\
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
        self.resubscribe_with(d, expires, "").await
    }

    /// [`Self::resubscribe`] with extra header lines (each ending in CRLF).
    pub async fn resubscribe_with(
        &mut self,
        d: &mut Subscription,
        expires: u32,
        extra: &str,
    ) -> Result<()> {
        d.cseq += 1;
        let branch = self.next_branch();
        let (id, event) = (&self.id, &self.event);
        let (user, call_id, from_tag, to_tag, cseq) =
            (&d.user, &d.call_id, &d.from_tag, &d.to_tag, d.cseq);
        let req = format!(
            "SUBSCRIBE sip:conflist@proxy.invalid SIP/2.0\r\n\
             Via: SIP/2.0/WSS {id}.invalid;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@example.com>;tag={to_tag}\r\n\
             From: <sip:{user}@example.com>;tag={from_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{id}@{id}.invalid;transport=ws>\r\n\
             Event: {event}\r\n\
             Expires: {expires}\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        );
        self.send_text(&req).await
    }
}

/// A header parsed as name-addr.
pub fn name_addr(resp: &Response, name: &HeaderName) -> Result<sip::NameAddr> {
    let v = resp
        .headers
        .get(name)
        .with_context(|| format!("no {name:?} header"))?;
    Ok(sip::NameAddr::parse(v)?)
}

/// The entities of every conference in a NOTIFY body, parsed with the document crate.
pub fn document_of(notify: &Request) -> Result<document::ConferenceList> {
    document::ConferenceList::parse(&notify.body)
        .map_err(|e| anyhow!("NOTIFY body is not a conference-list document: {e}"))
}

fn start_line(m: &Message) -> String {
    match m {
        Message::Request(r) => format!("{} request", r.method),
        Message::Response(r) => format!("{} response", r.status.as_u16()),
    }
}

/// Receives a whole state on `client` (see [`ListView::until_complete`]): the list, sorted
/// by entity, and every NOTIFY with its document.
pub async fn receive_complete(
    client: &mut SipWsClient,
) -> Result<(
    Vec<document::Conference>,
    Vec<(Request, document::ConferenceList)>,
)> {
    let mut view = ListView::default();
    let parts = view.until_complete(client).await?;
    Ok((view.conferences, parts))
}

/// A subscriber's view of its list: applies every document as a client would (full replaces,
/// partial patches, a version gap is an error) and answers each NOTIFY with 200.
#[derive(Debug, Default)]
pub struct ListView {
    pub conferences: Vec<document::Conference>,
    pub version: Option<u64>,
    pub notifies: usize,
}

impl ListView {
    /// Receives the next NOTIFY on `client`, answers 200, applies its document (if any) and
    /// returns it with the NOTIFY.
    pub async fn next(
        &mut self,
        client: &mut SipWsClient,
    ) -> Result<(Request, Option<document::ConferenceList>)> {
        let notify = client.recv_notify().await?;
        client.respond(&notify, 200).await?;
        self.notifies += 1;
        if notify.body.is_empty() {
            return Ok((notify, None));
        }
        let doc = document_of(&notify)?;
        self.conferences = document::apply(&self.conferences, self.version, &doc)
            .map_err(|e| anyhow!("applying version {}: {e}", doc.version))?;
        self.version = Some(doc.version);
        Ok((notify, Some(doc)))
    }

    /// Receives, answers and applies NOTIFYs until the state is complete: a document without
    /// `complete="false"` (a large state comes as a full document marked incomplete, then
    /// partials). Returns every NOTIFY with its document, in order; [`Self::conferences`]
    /// is then the whole list. A NOTIFY without a body is an error.
    pub async fn until_complete(
        &mut self,
        client: &mut SipWsClient,
    ) -> Result<Vec<(Request, document::ConferenceList)>> {
        let mut parts = Vec::new();
        loop {
            let (notify, doc) = self.next(client).await?;
            let doc =
                doc.with_context(|| format!("NOTIFY without a body after {} parts", parts.len()))?;
            let complete = doc.complete;
            parts.push((notify, doc));
            if complete {
                return Ok(parts);
            }
        }
    }

    /// Entities held, sorted.
    pub fn entities(&self) -> Vec<String> {
        self.conferences.iter().map(|c| c.entity.clone()).collect()
    }

    /// The held conference `entity`.
    pub fn get(&self, entity: &str) -> Option<&document::Conference> {
        self.conferences.iter().find(|c| c.entity == entity)
    }
}
