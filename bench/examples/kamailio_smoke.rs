//! Smoke test of `conflist_bench::kamailio` against the real anchor: start it, read PSS, CPU
//! and shm, PUBLISH for a presentity nobody watches (expect 200), subscribe 2W watchers of one
//! presentity over W WebSocket connections (two dialogs each: From `sip:w<i>@127.0.0.1` and From
//! the presentity itself) and W over one UDP socket (all From one user),
//! then PUBLISH three rounds and check that every watcher gets exactly one NOTIFY per round
//! with that round's note and a single tuple (the etag is reused), and stop.
//!
//!     cargo run --release -p conflist-bench --example kamailio_smoke [-- W [SIP_PORT WS_PORT]]
//!
//! Defaults: W = 10, ports 5072 / 8072. Needs the anchor (`CONFLIST_KAMAILIO_ANCHOR`) and
//! root if Kamailio is not installed yet.

use anyhow::{Context, Result, bail, ensure};
use conflist_bench::kamailio::{Kamailio, ws_subscribe};
use futures_util::{SinkExt, StreamExt};
use sip::{HeaderName, Message, Method, Response, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The presentity every watcher subscribes to.
const FAN: &str = "fan";
const ROUNDS: usize = 3;
const WAIT: Duration = Duration::from_secs(5);

/// What a watcher's reader reports.
#[derive(Debug)]
enum Seen {
    Response {
        call_id: String,
        status: u16,
    },
    Notify {
        call_id: String,
        at: SystemTime,
        body: String,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let watchers: usize = args.first().map_or(Ok(10), |a| a.parse())?;
    let sip_port: u16 = args.get(1).map_or(Ok(5072), |a| a.parse())?;
    let ws_port: u16 = args.get(2).map_or(Ok(8072), |a| a.parse())?;
    let dir = std::env::temp_dir().join("conflist-kamailio-smoke");

    let started = Instant::now();
    let kam = Kamailio::start(&dir, sip_port, ws_port, &[]).await?;
    println!(
        "started in {:.1} s: pid {}, {} processes, udp/tcp {}, {}, rundir {}",
        started.elapsed().as_secs_f64(),
        kam.pid,
        kam.pids().len(),
        kam.sip_addr(),
        kam.ws_url(),
        kam.rundir.display()
    );
    let outcome = run(&kam, watchers).await;
    let pids = kam.pids();
    kam.try_stop().await?;
    let left = pids
        .iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .count();
    println!("stopped; {left} of its {} processes left", pids.len());
    outcome
}

async fn run(kam: &Kamailio, watchers: usize) -> Result<()> {
    report(kam, "idle").await;

    let p = kam
        .publish_with("sip:nobody@127.0.0.1", "nobody watches", None)
        .await?;
    println!(
        "PUBLISH, 0 watchers: {} in {:.2} ms, etag {:?}, {} retransmissions",
        p.status,
        (p.answered_at - p.sent_at).as_secs_f64() * 1e3,
        p.etag,
        p.retransmissions
    );
    ensure!(p.status == 200, "expected 200");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let presentity = kam.presentity_uri(FAN);
    let mut call_ids = Vec::new();
    // 2W watchers over W WebSocket connections, two dialogs on each: From sip:w<i>@127.0.0.1,
    // and From the presentity itself (as the load generator's `--user-template fan` does).
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut subs = Vec::new();
        for (j, from) in [format!("sip:w{i}@127.0.0.1"), presentity.clone()]
            .iter()
            .enumerate()
        {
            let call_id = format!("ws-{i}-{j}");
            subs.push(ws_subscribe(
                &presentity,
                from,
                &call_id,
                &format!("wt{i}.{j}"),
                600,
            ));
            call_ids.push(call_id);
        }
        tasks.push(ws_watcher(&kam.ws_url(), subs, tx.clone()).await?);
    }
    // W watchers over one UDP socket, all From sip:same@127.0.0.1 (distinct dialogs).
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let local = udp.local_addr()?;
    tasks.push(tokio::spawn(udp_reader(Arc::clone(&udp), tx.clone())));
    for i in 0..watchers {
        let call_id = format!("udp-{i}");
        let sub = udp_subscribe(&presentity, local, &call_id, i);
        udp.send_to(sub.as_bytes(), kam.sip_addr()).await?;
        call_ids.push(call_id);
    }
    drop(tx);

    // Every dialog: a 2xx and its first NOTIFY (the dummy document).
    let mut status: HashMap<String, u16> = HashMap::new();
    let mut first: HashMap<String, String> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while status.len() < call_ids.len() || first.len() < call_ids.len() {
        let seen = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .context("subscriptions not all answered and notified in time")?
            .context("readers stopped")?;
        match seen {
            Seen::Response { call_id, status: s } => {
                status.insert(call_id, s);
            }
            Seen::Notify { call_id, body, .. } => {
                first.entry(call_id).or_insert(body);
            }
        }
    }
    let bad: Vec<_> = status.iter().filter(|(_, s)| **s / 100 != 2).collect();
    ensure!(bad.is_empty(), "SUBSCRIBEs not accepted: {bad:?}");
    let statuses: std::collections::BTreeSet<u16> = status.values().copied().collect();
    println!(
        "{} subscriptions to {presentity} ({} over {watchers} WS connections, {watchers} over UDP from one user): answered {statuses:?}, first NOTIFY each; e.g. {}",
        call_ids.len(),
        2 * watchers,
        one_line(first.values().next().map_or("", String::as_str))
    );
    report(kam, "subscribed").await;

    for round in 1..=ROUNDS {
        let sent = kam.publish(FAN, round).await?;
        let note = format!("<note>round {round}</note>");
        let mut got: HashMap<String, (SystemTime, String)> = HashMap::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while got.len() < call_ids.len() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Seen::Notify { call_id, at, body })) => {
                    if got.insert(call_id.clone(), (at, body)).is_some() {
                        bail!("round {round}: two NOTIFYs for {call_id}");
                    }
                }
                Ok(Some(Seen::Response { .. })) => {}
                Ok(None) => bail!("readers stopped"),
                Err(_) => bail!(
                    "round {round}: only {} of {} NOTIFYs within {WAIT:?}",
                    got.len(),
                    call_ids.len()
                ),
            }
        }
        let mut offsets = Vec::new();
        for (call_id, (at, body)) in &got {
            ensure!(
                body.contains(&note),
                "round {round}: {call_id} got {}",
                one_line(body)
            );
            ensure!(
                body.matches("<tuple").count() == 1,
                "round {round}: {call_id}: not one tuple: {}",
                one_line(body)
            );
            offsets.push(signed_ms(*at, sent));
        }
        offsets.sort_by(f64::total_cmp);
        println!(
            "round {round}: {} NOTIFYs with {note}, one tuple each; from sending the PUBLISH: first {:+.2} ms, last {:+.2} ms",
            got.len(),
            offsets.first().copied().unwrap_or(f64::NAN),
            offsets.last().copied().unwrap_or(f64::NAN),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Without the etag a PUBLISH adds a second publication; presence_xml merges the
    // documents of all publications of the presentity, one tuple per tuple id.
    let p = kam
        .publish_with(&presentity, "no etag", None)
        .await
        .context("PUBLISH without etag")?;
    let mut seen: Vec<(usize, String)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < call_ids.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Seen::Notify { body, .. })) => {
                let notes: Vec<&str> = body
                    .split("<note>")
                    .skip(1)
                    .filter_map(|n| n.split("</note>").next())
                    .collect();
                seen.push((body.matches("<tuple").count(), notes.join(", ")));
            }
            Ok(Some(Seen::Response { .. })) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let count = seen.len();
    seen.sort();
    seen.dedup();
    println!(
        "PUBLISH without etag: {} (sent → 200 {:.2} ms); {count} NOTIFYs (expected {}), (tuples, notes): {seen:?}",
        p.status,
        (p.answered_at - p.sent_at).as_secs_f64() * 1e3,
        call_ids.len()
    );
    report(kam, "after the rounds").await;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

async fn report(kam: &Kamailio, when: &str) {
    let shm = kam.shm_used().await;
    println!(
        "{when}: {} processes, PSS {:.1} MB, CPU {:.2} s, shm real_used {}",
        kam.pids().len(),
        kam.pss_bytes() as f64 / 1e6,
        kam.cpu_seconds(),
        shm.map_or("?".to_owned(), |b| format!("{:.1} MB", b as f64 / 1e6))
    );
}

/// One WebSocket connection sending `subscribes`, answering every NOTIFY with 200.
async fn ws_watcher(
    url: &str,
    subscribes: Vec<String>,
    tx: mpsc::UnboundedSender<Seen>,
) -> Result<tokio::task::JoinHandle<()>> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse()?);
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("connect {url}"))?;
    ensure!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|p| p.as_bytes())
            == Some(b"sip"),
        "Kamailio did not select subprotocol sip"
    );
    let (mut sink, mut stream) = ws.split();
    for sub in subscribes {
        sink.send(Ws::Text(sub.into())).await?;
    }
    Ok(tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            let raw = match msg {
                Ws::Text(t) => t.as_bytes().to_vec(),
                Ws::Binary(b) => b.to_vec(),
                _ => continue,
            };
            let at = SystemTime::now();
            match on_message(&raw, at) {
                Ok((seen, answer)) => {
                    if let Some(a) = answer
                        && sink.send(Ws::Text(a.into())).await.is_err()
                    {
                        return;
                    }
                    let _ = tx.send(seen);
                }
                Err(e) => eprintln!("bad message over WS: {e:#}"),
            }
        }
    }))
}

async fn udp_reader(sock: Arc<UdpSocket>, tx: mpsc::UnboundedSender<Seen>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((len, from)) = sock.recv_from(&mut buf).await {
        let at = SystemTime::now();
        match on_message(&buf[..len], at) {
            Ok((seen, answer)) => {
                if let Some(a) = answer {
                    let _ = sock.send_to(a.as_bytes(), from).await;
                }
                let _ = tx.send(seen);
            }
            Err(e) => eprintln!("bad message over UDP: {e:#}"),
        }
    }
}

/// What was seen, and the 200 to send back for a NOTIFY.
fn on_message(raw: &[u8], at: SystemTime) -> Result<(Seen, Option<String>)> {
    let message = sip::parse_message(raw).map_err(|e| anyhow::anyhow!("{e}"))?;
    let call_id = message
        .headers()
        .get(&HeaderName::CALL_ID)
        .context("no Call-ID")?
        .to_owned();
    match message {
        Message::Response(r) => Ok((
            Seen::Response {
                call_id,
                status: r.status.as_u16(),
            },
            None,
        )),
        Message::Request(r) if r.method == Method::Notify => {
            let ok = Response::for_request(&r, StatusCode::OK);
            let ok = String::from_utf8(ok.to_bytes())?;
            let body = String::from_utf8_lossy(&r.body).into_owned();
            Ok((Seen::Notify { call_id, at, body }, Some(ok)))
        }
        Message::Request(r) => bail!("unexpected {}", r.method),
    }
}

fn udp_subscribe(presentity: &str, local: SocketAddr, call_id: &str, i: usize) -> String {
    format!(
        "SUBSCRIBE {presentity} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}-1;rport\r\n\
         Max-Forwards: 70\r\n\
         To: <{presentity}>\r\n\
         From: <sip:same@127.0.0.1>;tag=ut{i}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:same@{local}>\r\n\
         Event: presence\r\n\
         Accept: application/pidf+xml\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// `at - reference` in milliseconds, negative when `at` is earlier.
fn signed_ms(at: SystemTime, reference: SystemTime) -> f64 {
    match at.duration_since(reference) {
        Ok(d) => d.as_secs_f64() * 1e3,
        Err(e) => -e.duration().as_secs_f64() * 1e3,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
