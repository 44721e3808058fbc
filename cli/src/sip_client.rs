//! A small SIP-over-WebSocket subscriber (subprotocol `sip`, RFC 7118), as a browser library
//! speaks it: Contact in `.invalid`, one SIP message per WebSocket message. It signs in with
//! a digest answer to the 401 or an unprompted bearer token (RFC 8898 §2.2).

use crate::{AuthFailed, Unreachable};
use anyhow::{Context as _, Result, anyhow, bail};
use conflist_cli::digest::{Challenge, DigestInput, authorization};
use futures_util::{SinkExt as _, StreamExt as _};
use sip::{HeaderName, Message, Request, Response, StatusCode};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long to wait for the handshake and for each answer to a request we sent.
pub(crate) const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// How the subscriber signs in.
#[derive(Debug, Clone)]
pub(crate) enum Auth {
    /// No credentials (a server with `--auth off`).
    None,
    /// Answer a digest challenge (SHA-256 preferred, else MD5).
    Digest { username: String, password: String },
    /// `Authorization: Bearer <token>` on the initial SUBSCRIBE.
    Bearer(String),
}

/// One WebSocket connection to a proxy.
#[derive(Debug)]
pub(crate) struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    id: String,
    branch: u64,
}

/// An established subscription dialog.
#[derive(Debug, Clone)]
pub(crate) struct Dialog {
    /// The list's address of record, `sip:user@domain`.
    pub(crate) aor: String,
    call_id: String,
    from_tag: String,
    to_tag: String,
    cseq: u32,
    /// Seconds the server granted.
    pub(crate) expires: u32,
}

impl Dialog {
    /// The dialog's Call-ID.
    pub(crate) fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Whether `req` belongs to this dialog (an old dialog's last NOTIFY may still arrive).
    pub(crate) fn owns(&self, req: &Request) -> bool {
        req.headers.get(&HeaderName::CALL_ID).map(str::trim) == Some(self.call_id.as_str())
    }
}

impl Client {
    /// Connects with subprotocol `sip`; any failure to reach the proxy is [`Unreachable`].
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let mut req = url
            .into_client_request()
            .with_context(|| format!("bad WebSocket URL {url}"))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse()?);
        let (ws, resp) =
            tokio::time::timeout(ANSWER_TIMEOUT, tokio_tungstenite::connect_async(req))
                .await
                .map_err(|_| anyhow!(Unreachable(format!("{url}: no handshake in time"))))?
                .map_err(|e| anyhow!(Unreachable(format!("{url}: {e}"))))?;
        if resp
            .headers()
            .get("sec-websocket-protocol")
            .map(|p| p.as_bytes())
            != Some(b"sip")
        {
            bail!(Unreachable(format!(
                "{url}: not a SIP WebSocket (subprotocol sip refused)"
            )));
        }
        Ok(Self {
            ws,
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            branch: 0,
        })
    }

    async fn send(&mut self, text: String) -> Result<()> {
        self.ws
            .send(Ws::Text(text.into()))
            .await
            .map_err(|e| anyhow!(Unreachable(format!("send: {e}"))))
    }

    /// The next SIP message, or `None` when the connection closed.
    pub(crate) async fn recv(&mut self) -> Result<Option<Message>> {
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            let raw = match msg.map_err(|e| anyhow!(Unreachable(format!("receive: {e}"))))? {
                Ws::Text(t) => t.as_bytes().to_vec(),
                Ws::Binary(b) => b.to_vec(),
                Ws::Close(_) => return Ok(None),
                _ => continue,
            };
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue; // CRLF keep-alive (RFC 5626)
            }
            return sip::parse_message(&raw)
                .map(Some)
                .map_err(|e| anyhow!("the proxy sent unparseable SIP: {e}"));
        }
    }

    /// The next response of Call-ID `call_id` (NOTIFYs that arrive first are answered and
    /// returned too; responses of other dialogs, such as an earlier unsubscribe, are skipped).
    async fn recv_response(&mut self, call_id: &str, early: &mut Vec<Request>) -> Result<Response> {
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| anyhow!(Unreachable("no answer to SUBSCRIBE in time".into())))??;
            match msg {
                Some(Message::Response(r))
                    if r.headers.get(&HeaderName::CALL_ID).map(str::trim) == Some(call_id) =>
                {
                    return Ok(r);
                }
                Some(Message::Response(_)) => {}
                Some(Message::Request(r)) => {
                    self.respond(&r, 200).await?;
                    early.push(r);
                }
                None => bail!(Unreachable("the proxy closed the connection".into())),
            }
        }
    }

    /// Answers a request (200 to a NOTIFY).
    pub(crate) async fn respond(&mut self, req: &Request, status: u16) -> Result<()> {
        let status = StatusCode::new(status).context("status")?;
        let resp = Response::for_request(req, status);
        self.send(String::from_utf8(resp.to_bytes())?).await
    }

    fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bK{}x{}", self.id, self.branch)
    }

    fn subscribe_text(&mut self, aor: &str, call_id: &str, cseq: u32, extra: &str) -> String {
        let branch = self.next_branch();
        let id = &self.id;
        format!(
            "SUBSCRIBE {aor} SIP/2.0\r\n\
             Via: SIP/2.0/WSS {id}.invalid;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <{aor}>\r\n\
             From: <{aor}>;tag=ft{id}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{id}@{id}.invalid;transport=ws>\r\n\
             Event: conference-list\r\n\
             Accept: application/conference-list+xml\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        )
    }

    /// Subscribes to `aor`'s list for `expires` seconds (0: a fetch), signing in with `auth`.
    /// Returns the dialog and any NOTIFY that overtook the 200 (already answered).
    pub(crate) async fn subscribe(
        &mut self,
        aor: &str,
        expires: u32,
        auth: &Auth,
    ) -> Result<(Dialog, Vec<Request>)> {
        let call_id = format!("{}-{}", self.id, rand::random::<u32>());
        let base = format!("Expires: {expires}\r\n");
        let first = match auth {
            Auth::Bearer(token) => format!("{base}Authorization: Bearer {token}\r\n"),
            _ => base.clone(),
        };
        let mut early = Vec::new();
        let req = self.subscribe_text(aor, &call_id, 1, &first);
        self.send(req).await?;
        let mut response = self.recv_response(&call_id, &mut early).await?;
        let mut cseq = 1;
        if response.status.as_u16() == 401 {
            let Auth::Digest { username, password } = auth else {
                bail!(AuthFailed(match auth {
                    Auth::Bearer(_) => "the token was refused (401)".into(),
                    _ => "the server requires sign-in: give --password-file or --token".into(),
                }));
            };
            let challenges = Challenge::all(&response)?;
            let challenge = challenges
                .iter()
                .find(|c| c.algorithm.eq_ignore_ascii_case("SHA-256"))
                .or_else(|| challenges.first())
                .context("401 without a digest challenge")?;
            let cnonce = format!("{:08x}", rand::random::<u32>());
            let authz = authorization(
                challenge,
                &DigestInput {
                    username,
                    password,
                    method: "SUBSCRIBE",
                    uri: aor,
                    nc: 1,
                    cnonce: &cnonce,
                },
            );
            cseq = 2;
            let req = self.subscribe_text(
                aor,
                &call_id,
                cseq,
                &format!("{base}Authorization: {authz}\r\n"),
            );
            self.send(req).await?;
            response = self.recv_response(&call_id, &mut early).await?;
        }
        match response.status.as_u16() {
            200..=299 => {}
            401 => bail!(AuthFailed("wrong user name or password (401)".into())),
            403 => bail!(AuthFailed(format!(
                "403 {}: the signed-in user may not read {aor}",
                response.reason
            ))),
            code => bail!("SUBSCRIBE answered {code} {}", response.reason),
        }
        let to = response
            .headers
            .get(&HeaderName::TO)
            .context("200 without To")?;
        let to_tag = sip::NameAddr::parse(to)?
            .tag()
            .context("200 without To-tag")?
            .to_owned();
        let granted = response
            .headers
            .get(&HeaderName::EXPIRES)
            .and_then(|e| e.trim().parse().ok())
            .unwrap_or(expires);
        Ok((
            Dialog {
                aor: aor.to_owned(),
                call_id,
                from_tag: format!("ft{}", self.id),
                to_tag,
                cseq,
                expires: granted,
            },
            early,
        ))
    }

    /// An in-dialog SUBSCRIBE: a refresh (the 200 is read by the caller's receive loop).
    pub(crate) async fn refresh(&mut self, d: &mut Dialog, expires: u32) -> Result<()> {
        d.cseq += 1;
        let branch = self.next_branch();
        let id = &self.id;
        let req = format!(
            "SUBSCRIBE sip:conflist@proxy.invalid SIP/2.0\r\n\
             Via: SIP/2.0/WSS {id}.invalid;branch={branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <{aor}>;tag={to_tag}\r\n\
             From: <{aor}>;tag={from_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{id}@{id}.invalid;transport=ws>\r\n\
             Event: conference-list\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n",
            aor = d.aor,
            to_tag = d.to_tag,
            from_tag = d.from_tag,
            call_id = d.call_id,
            cseq = d.cseq,
        );
        self.send(req).await
    }
}
