//! What a flow is made of, per transport: the [`Wire`] the connection driver reads SIP
//! from and writes SIP to. WebSocket frames one message per WebSocket message (RFC 7118),
//! TCP and TLS cut the byte stream by Content-Length (RFC 3261 §18.3,
//! [`sip::framing::frame_stream`]), UDP is one message per datagram from one source
//! address. Every wire hands the driver raw message bytes, so parsing, the 400 for what
//! does not parse, and everything after are the same for all of them.

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use sip::framing::{Frame, FrameError, frame_stream};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// What arrives from the peer.
#[derive(Debug)]
pub enum Inbound {
    /// One SIP message, unparsed.
    Message(Vec<u8>),
    /// An RFC 5626 CRLF CRLF ping: answer [`Outbound::Pong`].
    Ping,
    /// Proof of life without SIP (a WebSocket ping or pong, a CRLF pong).
    Alive,
}

/// What the driver writes.
#[derive(Debug)]
pub enum Outbound {
    /// One SIP message.
    Message(Vec<u8>),
    /// The RFC 5626 CRLF pong.
    Pong,
    /// A transport-level liveness probe (WebSocket ping); wires without one ignore it.
    Probe,
}

/// Why reading from a wire failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The WebSocket layer refused a frame (too large, protocol error).
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The stream cannot be framed any more; `head` is the message head that could not be
    /// delimited, when there is one (it still gets its 400 before the close).
    #[error("{error}")]
    Framing {
        /// Why.
        error: FrameError,
        /// The head, when it arrived whole.
        head: Option<Vec<u8>>,
    },
}

/// One flow's transport. `recv` must be cancel-safe (the driver selects on it).
pub trait Wire: Send + 'static {
    /// The next unit from the peer; `None` when the peer closed the flow.
    fn recv(&mut self) -> impl Future<Output = Option<Result<Inbound, ReadError>>> + Send;
    /// Writes one unit.
    fn send(&mut self, out: Outbound) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes our side, best effort.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// SIP over WebSocket: one message per WebSocket message.
#[derive(Debug)]
pub struct WsWire(pub WebSocket);

impl Wire for WsWire {
    async fn recv(&mut self) -> Option<Result<Inbound, ReadError>> {
        match self.0.next().await? {
            Ok(WsMessage::Text(t)) => Some(Ok(ws_inbound(t.as_bytes()))),
            Ok(WsMessage::Binary(b)) => Some(Ok(ws_inbound(&b))),
            Ok(WsMessage::Ping(_) | WsMessage::Pong(_)) => Some(Ok(Inbound::Alive)),
            Ok(WsMessage::Close(_)) => None,
            Err(e) => Some(Err(ReadError::WebSocket(e.to_string()))),
        }
    }

    async fn send(&mut self, out: Outbound) -> io::Result<()> {
        let frame = match out {
            Outbound::Message(bytes) => text_or_binary(bytes),
            Outbound::Pong => WsMessage::Text("\r\n".into()),
            Outbound::Probe => WsMessage::Ping(Default::default()),
        };
        self.0.send(frame).await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let _ = self.0.close().await;
    }
}

/// RFC 5626 keep-alives inside WebSocket messages (RFC 7118 allows them).
fn ws_inbound(buf: &[u8]) -> Inbound {
    if sip::framing::is_keepalive_ping(buf) {
        Inbound::Ping
    } else if sip::framing::is_keepalive_pong(buf) {
        Inbound::Alive
    } else {
        Inbound::Message(buf.to_vec())
    }
}

/// SIP is UTF-8 in practice (text frames, which browsers expect); anything else goes binary.
fn text_or_binary(bytes: Vec<u8>) -> WsMessage {
    match String::from_utf8(bytes) {
        Ok(text) => WsMessage::Text(text.into()),
        Err(e) => WsMessage::Binary(e.into_bytes().into()),
    }
}

/// Bytes read from a stream at a time.
const READ_CHUNK: usize = 8 * 1024;

/// SIP over a byte stream (TCP, or TLS over TCP): messages cut by Content-Length.
#[derive(Debug)]
pub struct StreamWire<IO> {
    reader: ReadHalf<IO>,
    writer: WriteHalf<IO>,
    buf: Vec<u8>,
    max_message_size: usize,
}

impl<IO: AsyncRead + AsyncWrite + Send + 'static> StreamWire<IO> {
    /// A wire over `io`; a message above `max_message_size` ends the connection.
    pub fn new(io: IO, max_message_size: usize) -> Self {
        let (reader, writer) = tokio::io::split(io);
        Self {
            reader,
            writer,
            buf: Vec::new(),
            max_message_size,
        }
    }

    /// The next complete unit in the buffer, if one is there.
    fn take(&mut self) -> Result<Option<Inbound>, ReadError> {
        let framed = frame_stream(&self.buf, self.max_message_size).map_err(|error| {
            let head = sip::framing::head_len(&self.buf)
                .and_then(|n| self.buf.get(..n))
                .map(<[u8]>::to_vec);
            ReadError::Framing { error, head }
        })?;
        let Some((frame, used)) = framed else {
            return Ok(None);
        };
        self.buf.drain(..used);
        if self.buf.is_empty() {
            // An idle connection holds no read buffer.
            self.buf = Vec::new();
        }
        Ok(Some(match frame {
            Frame::Ping => Inbound::Ping,
            Frame::Pong => Inbound::Alive,
            Frame::Message(m) => Inbound::Message(m),
        }))
    }
}

impl<IO: AsyncRead + AsyncWrite + Send + 'static> Wire for StreamWire<IO> {
    async fn recv(&mut self) -> Option<Result<Inbound, ReadError>> {
        loop {
            match self.take() {
                Ok(Some(unit)) => return Some(Ok(unit)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            // `read_buf` is cancel-safe: bytes are in `buf` once it returns, or not read.
            self.buf.reserve(READ_CHUNK);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    async fn send(&mut self, out: Outbound) -> io::Result<()> {
        match out {
            Outbound::Message(bytes) => self.writer.write_all(&bytes).await,
            Outbound::Pong => self.writer.write_all(b"\r\n").await,
            Outbound::Probe => Ok(()),
        }
    }

    async fn close(&mut self) {
        let _ = self.writer.shutdown().await;
    }
}

/// SIP over UDP: the datagrams of one source address, demultiplexed by the listener; what
/// we send goes to that address (responses by RFC 3581 rport, NOTIFYs to the flow).
#[derive(Debug)]
pub struct UdpWire {
    datagrams: mpsc::Receiver<Vec<u8>>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
}

impl UdpWire {
    /// The flow of `peer` on `socket`, fed by the listener through `datagrams`.
    pub fn new(
        datagrams: mpsc::Receiver<Vec<u8>>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    ) -> Self {
        Self {
            datagrams,
            socket,
            peer,
        }
    }
}

impl Wire for UdpWire {
    async fn recv(&mut self) -> Option<Result<Inbound, ReadError>> {
        let d = self.datagrams.recv().await?;
        Some(Ok(if sip::framing::is_keepalive_ping(&d) {
            Inbound::Ping
        } else if d.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            Inbound::Alive
        } else {
            Inbound::Message(d)
        }))
    }

    async fn send(&mut self, out: Outbound) -> io::Result<()> {
        match out {
            Outbound::Message(bytes) => self.socket.send_to(&bytes, self.peer).await.map(drop),
            Outbound::Pong => self.socket.send_to(b"\r\n", self.peer).await.map(drop),
            Outbound::Probe => Ok(()),
        }
    }

    async fn close(&mut self) {}
}
