//! A SIP-over-WebSocket connection that carries many subscription dialogs at once.
//!
//! The harness's `SipWsClient` owns its socket and handles one exchange at a time; the bench
//! needs every NOTIFY answered the moment it arrives while it keeps sending SUBSCRIBEs, so the
//! socket is split: a writer task drains an outgoing queue (batching writes), and a reader task
//! stamps each message on arrival, answers each NOTIFY with 200 at once and reports to the
//! bench over one shared event channel.

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use sip::{HeaderName, Message, Method, Response, StatusCode};
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Prefix of every bench Call-ID; the dialog index follows.
const CALL_ID_PREFIX: &str = "bench-";

/// What a connection reports to the bench.
#[derive(Debug)]
pub(crate) enum Event {
    /// A final response to one of our SUBSCRIBEs.
    Response { dialog: usize, status: u16 },
    /// A NOTIFY, already answered with 200.
    Notify(Notify),
    /// The connection ended (closed by the proxy, or an I/O error).
    Closed { conn: usize, reason: String },
}

/// The parts of a NOTIFY the bench measures.
#[derive(Debug)]
pub(crate) struct Notify {
    pub(crate) dialog: usize,
    /// When the reader took the WebSocket message off the socket.
    pub(crate) at: Instant,
    pub(crate) body_len: usize,
    /// `version` attribute of the document.
    pub(crate) version: Option<u64>,
    /// True for `state="partial"`.
    pub(crate) partial: bool,
    /// The document (XML).
    pub(crate) body: String,
    /// `Subscription-State: terminated…`.
    pub(crate) terminated: bool,
}

/// One WebSocket connection to the proxy; dropping it stops its tasks.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Random per connection: Via host, Contact and branch prefix.
    id: String,
    branch: u64,
    out: mpsc::UnboundedSender<String>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Connection {
    /// Connects to `url` (subprotocol `sip`); events go to `events`, tagged `conn`.
    pub(crate) async fn connect(
        url: &str,
        conn: usize,
        events: mpsc::UnboundedSender<Event>,
    ) -> Result<Self> {
        let mut req = url.into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "sip".parse()?);
        let (ws, resp) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("connect {url}"))?;
        let proto = resp.headers().get("sec-websocket-protocol");
        if proto.map(|p| p.as_bytes()) != Some(b"sip") {
            bail!("proxy did not select subprotocol sip: {proto:?}");
        }
        let (mut sink, mut stream) = ws.split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();

        let writer = tokio::spawn(async move {
            while let Some(first) = outgoing.recv().await {
                if sink.feed(Ws::Text(first.into())).await.is_err() {
                    return;
                }
                // Batch whatever else is queued into the same flush.
                while let Ok(more) = outgoing.try_recv() {
                    if sink.feed(Ws::Text(more.into())).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });

        let answers = out.clone();
        let reader = tokio::spawn(async move {
            let reason = loop {
                let raw = match stream.next().await {
                    None => break "closed".to_owned(),
                    Some(Err(e)) => break format!("read error: {e}"),
                    Some(Ok(Ws::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Ws::Binary(b))) => b.to_vec(),
                    Some(Ok(Ws::Close(f))) => break format!("close frame: {f:?}"),
                    Some(Ok(_)) => continue,
                };
                let at = Instant::now();
                match on_message(&raw, at, &answers) {
                    Ok(Some(event)) => {
                        if events.send(event).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => break format!("bad message from the proxy: {e:#}"),
                }
            };
            let _ = events.send(Event::Closed { conn, reason });
        });

        Ok(Self {
            id: format!("{:012x}", rand::random::<u64>() >> 16),
            branch: 0,
            out,
            reader,
            writer,
        })
    }

    /// Sends an initial SUBSCRIBE for dialog `dialog` (user `u<dialog+1>`).
    pub(crate) fn subscribe(&mut self, dialog: usize, expires: u32) -> Result<()> {
        self.branch += 1;
        let (id, branch) = (&self.id, self.branch);
        let user = format!("u{}", dialog + 1);
        let request = format!(
            "SUBSCRIBE sip:{user}@example.com SIP/2.0\r\n\
             Via: SIP/2.0/WSS {id}.invalid;branch=z9hG4bK{id}x{branch}\r\n\
             Max-Forwards: 70\r\n\
             To: <sip:{user}@example.com>\r\n\
             From: <sip:{user}@example.com>;tag=ft{dialog}\r\n\
             Call-ID: {CALL_ID_PREFIX}{dialog}\r\n\
             CSeq: 1 SUBSCRIBE\r\n\
             Contact: <sip:{id}@{id}.invalid;transport=ws>\r\n\
             Event: conference-list\r\n\
             Accept: application/conference-list+xml\r\n\
             Expires: {expires}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        self.out
            .send(request)
            .ok()
            .context("connection writer has stopped")
    }
}

/// Parses one message; answers a NOTIFY with 200 before reporting it.
fn on_message(
    raw: &[u8],
    at: Instant,
    answers: &mpsc::UnboundedSender<String>,
) -> Result<Option<Event>> {
    let message = sip::parse_message(raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    match message {
        Message::Response(r) => {
            let dialog = dialog_of(r.headers.get(&HeaderName::CALL_ID))?;
            let status = r.status.as_u16();
            // Provisional responses are not the answer we wait for.
            Ok((status >= 200).then_some(Event::Response { dialog, status }))
        }
        Message::Request(r) if r.method == Method::Notify => {
            let ok = Response::for_request(&r, StatusCode::OK);
            let ok = String::from_utf8(ok.to_bytes()).context("200 is not UTF-8")?;
            // The writer is gone only when the connection is being torn down.
            let _ = answers.send(ok);
            let dialog = dialog_of(r.headers.get(&HeaderName::CALL_ID))?;
            let terminated = r
                .headers
                .get(&HeaderName::SUBSCRIPTION_STATE)
                .is_some_and(|s| s.trim_start().starts_with("terminated"));
            let body = String::from_utf8_lossy(&r.body).into_owned();
            Ok(Some(Event::Notify(Notify {
                dialog,
                at,
                body_len: r.body.len(),
                version: root_attribute(&body, "version").and_then(|v| v.parse().ok()),
                partial: root_attribute(&body, "state") == Some("partial"),
                body,
                terminated,
            })))
        }
        Message::Request(r) => bail!("unexpected {} request", r.method),
    }
}

fn dialog_of(call_id: Option<&str>) -> Result<usize> {
    let call_id = call_id.context("message without Call-ID")?;
    call_id
        .strip_prefix(CALL_ID_PREFIX)
        .and_then(|i| i.parse().ok())
        .with_context(|| format!("Call-ID {call_id:?} is not one of ours"))
}

/// Value of attribute `name` of the `<conference-list …>` root element.
fn root_attribute<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let tag_start = xml.find("<conference-list")?;
    let tag = &xml[tag_start..];
    let tag = &tag[..tag.find('>')?];
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_document_attributes_and_call_ids() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<conference-list xmlns="urn:x" entity="sip:u1@example.com" version="7" state="partial"><conference entity="sip:bench@conf.example.com"><conference-description><subject>s12</subject></conference-description></conference></conference-list>"#;
        assert_eq!(
            root_attribute(xml, "version"),
            Some("7"),
            "not the XML declaration's"
        );
        assert_eq!(root_attribute(xml, "state"), Some("partial"));
        assert_eq!(dialog_of(Some("bench-42")).unwrap(), 42);
        assert!(dialog_of(Some("other-1")).is_err());
    }
}
