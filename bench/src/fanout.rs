//! One fan-out measurement: N subscribers of one conference, R committed changes to it, and
//! for each change the time until every subscriber has its NOTIFY.

use crate::client::{Connection, Event, Notify};
use anyhow::{Context, Result, bail};
use conflist_tests::TestDb;
use conflist_tests::process::http_get;
use sqlx::PgConnection;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The conference every bench user is a member of.
const CONFERENCE: &str = "sip:bench@conf.example.com";
/// Expires asked for (well inside the server's bounds, longer than any run).
const EXPIRES: u32 = 3600;
/// Most SUBSCRIBEs in flight at once, so the bench does not overload what it measures.
const MAX_OUTSTANDING: usize = 500;
/// The subscribe phase fails if nothing at all happens for this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Metrics worth a look after a run (prefixes of OpenMetrics sample lines).
const METRICS: &[&str] = &[
    "conflist_server_notifications_total",
    "conflist_server_directory_errors_total",
    "conflist_proxy_notifies_total",
    "conflist_proxy_slow_connections_closed_total",
    "conflist_proxy_parse_errors_total",
];

/// What to measure.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub(crate) subscribers: usize,
    /// Conferences in each subscriber's list: the changed one plus `list_size - 1` others.
    pub(crate) list_size: usize,
    /// Extra `conflist-server` arguments.
    pub(crate) server_args: Vec<String>,
    pub(crate) connections: usize,
    pub(crate) rounds: u32,
    /// Pause after a round's last NOTIFY (or timeout) before the next change.
    pub(crate) round_gap: Duration,
    /// A round ends after this long even if NOTIFYs are missing (they count as missing).
    pub(crate) round_timeout: Duration,
}

/// One round's outcome.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    pub(crate) received: usize,
    pub(crate) expected: usize,
    /// Until the first NOTIFY of the round.
    pub(crate) first: Option<Duration>,
    /// Until the last NOTIFY of the round (or the timeout).
    pub(crate) last: Duration,
}

/// What one size measured.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) subscribers: usize,
    pub(crate) connections: usize,
    /// SUBSCRIBEs answered 200.
    pub(crate) subscribed: usize,
    /// SUBSCRIBEs answered otherwise, as `status×count`.
    pub(crate) rejected: Vec<u16>,
    /// From the first SUBSCRIBE until every initial NOTIFY was in.
    pub(crate) subscribe_time: Duration,
    pub(crate) rounds: Vec<Round>,
    /// One per received round NOTIFY: receipt − commit acknowledged.
    pub(crate) latencies: Vec<Duration>,
    /// Round NOTIFYs that never came within the round timeout.
    pub(crate) missing: usize,
    /// NOTIFYs that were not the current round's (late, duplicate, or unexplained).
    pub(crate) unexpected: usize,
    /// Round NOTIFYs with a full instead of a partial document.
    pub(crate) not_partial: usize,
    /// Round NOTIFYs whose version was not the dialog's previous version + 1.
    pub(crate) version_gaps: usize,
    /// Subscriptions the server terminated during the rounds.
    pub(crate) terminated: usize,
    /// Connections that closed during the rounds, with the reason.
    pub(crate) closed: Vec<String>,
    /// Body bytes of the round NOTIFYs and of the initial (full) NOTIFYs.
    pub(crate) partial_bytes: Vec<usize>,
    pub(crate) full_bytes: Vec<usize>,
    /// Selected metrics of the server and proxy after the rounds.
    pub(crate) metrics: Vec<String>,
    /// `SELECT version()`.
    pub(crate) postgres: String,
}

/// Per-dialog bookkeeping.
#[derive(Debug, Clone, Default)]
struct Dialog {
    answered: bool,
    ok: bool,
    /// Version of the last document received.
    version: Option<u64>,
    /// Last round whose NOTIFY arrived (0 = the initial one).
    round: Option<u32>,
    alive: bool,
}

/// Runs one size on a fresh database, server and proxy; all are gone when this returns.
pub(crate) async fn run(p: &Params) -> Result<Outcome> {
    let n = p.subscribers;
    let db = TestDb::create().await?;
    // Every server setting is its default (200 ms rate control) unless `server_args` says
    // otherwise.
    let (server, proxy) = conflist_bench::start_services(&db, &p.server_args).await?;
    let mut pg = db
        .connect()
        .await
        .context("connect to the bench database")?;
    let postgres: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&mut pg)
        .await?;
    seed(&mut pg, n, p.list_size).await?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut conns = Vec::with_capacity(p.connections);
    for c in 0..p.connections {
        conns.push(Connection::connect(&proxy.ws_url, c, events_tx.clone()).await?);
    }
    drop(events_tx);

    let mut out = Outcome {
        subscribers: n,
        connections: p.connections,
        postgres,
        ..Outcome::default()
    };
    let mut dialogs = vec![Dialog::default(); n];
    subscribe_all(&mut conns, &mut events, &mut dialogs, &mut out).await?;
    eprintln!(
        "  {n} subscribed ({} rejected) over {} connections in {:.1} s",
        out.rejected.len(),
        p.connections,
        out.subscribe_time.as_secs_f64()
    );

    // The initial NOTIFYs count as sent now: keep the rate control out of round 1 as well.
    tokio::time::sleep(p.round_gap).await;
    for round in 1..=p.rounds {
        let r = run_round(round, p, &mut pg, &mut events, &mut dialogs, &mut out).await?;
        eprintln!(
            "  round {round}/{}: {}/{} NOTIFYs, first after {:.1} ms, last after {:.1} ms",
            p.rounds,
            r.received,
            r.expected,
            r.first.map_or(f64::NAN, ms),
            ms(r.last)
        );
        out.rounds.push(r);
        tokio::time::sleep(p.round_gap).await;
    }

    for (name, admin) in [("server", &server.admin), ("proxy", &proxy.admin)] {
        let (_, body) = http_get(admin, "/metrics")
            .await
            .with_context(|| format!("{name} /metrics"))?;
        out.metrics.extend(
            body.lines()
                .filter(|l| METRICS.iter().any(|m| l.starts_with(m)))
                .map(str::to_owned),
        );
    }
    drop(conns);
    drop(proxy);
    drop(server);
    drop(pg);
    drop(db);
    Ok(out)
}

/// N users (`sip:u1@example.com` …), each a member of the bench conference and of
/// `list_size - 1` others (which never change).
async fn seed(pg: &mut PgConnection, n: usize, list_size: usize) -> Result<()> {
    let n = i32::try_from(n).context("too many subscribers")?;
    let others = i32::try_from(list_size.saturating_sub(1)).context("list too long")?;
    sqlx::query(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject) \
         VALUES ($1, 'Bench', 's0')",
    )
    .bind(CONFERENCE)
    .execute(&mut *pg)
    .await
    .context("insert the bench conference")?;
    sqlx::query(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject) \
         SELECT 'sip:other' || k || '@conf.example.com', 'Other ' || k, 'unchanged' \
         FROM generate_series(1, $1) k",
    )
    .bind(others)
    .execute(&mut *pg)
    .await
    .context("insert the other conferences")?;
    // The database is fresh: every conference in it is one of ours.
    sqlx::query(
        "INSERT INTO conflist_members (conference_uri, user_uri, role) \
         SELECT c.conference_uri, 'sip:u' || g || '@example.com', 'participant' \
         FROM conflist_conferences c, generate_series(1, $1) g",
    )
    .bind(n)
    .execute(&mut *pg)
    .await
    .context("insert the memberships")?;
    Ok(())
}

/// Sends every SUBSCRIBE (at most [`MAX_OUTSTANDING`] unanswered) and waits for every answer
/// and every initial NOTIFY.
async fn subscribe_all(
    conns: &mut [Connection],
    events: &mut mpsc::UnboundedReceiver<Event>,
    dialogs: &mut [Dialog],
    out: &mut Outcome,
) -> Result<()> {
    let n = dialogs.len();
    let start = Instant::now();
    let (mut next, mut outstanding, mut answered, mut initial) = (0, 0, 0, 0);
    while answered < n || initial < out.subscribed {
        while next < n && outstanding < MAX_OUTSTANDING {
            conns[next % conns.len()].subscribe(next, EXPIRES)?;
            next += 1;
            outstanding += 1;
        }
        let event = tokio::time::timeout(IDLE_TIMEOUT, events.recv())
            .await
            .with_context(|| {
                format!("subscribe phase stalled: {answered}/{n} answered, {initial} NOTIFYs")
            })?
            .context("every connection closed")?;
        match event {
            Event::Response { dialog, status } => {
                let Some(d) = dialogs.get_mut(dialog).filter(|d| !d.answered) else {
                    continue;
                };
                d.answered = true;
                answered += 1;
                outstanding -= 1;
                if status == 200 {
                    d.ok = true;
                    d.alive = true;
                    out.subscribed += 1;
                } else {
                    out.rejected.push(status);
                }
            }
            Event::Notify(nt) => {
                let Some(d) = dialogs.get_mut(nt.dialog).filter(|d| d.round.is_none()) else {
                    out.unexpected += 1;
                    continue;
                };
                d.round = Some(0);
                d.version = nt.version;
                out.full_bytes.push(nt.body_len);
                initial += 1;
            }
            Event::Closed { conn, reason } => {
                bail!("connection {conn} closed while subscribing: {reason}")
            }
        }
    }
    out.subscribe_time = start.elapsed();
    Ok(())
}

/// One committed change and the wait for its NOTIFYs.
async fn run_round(
    round: u32,
    p: &Params,
    pg: &mut PgConnection,
    events: &mut mpsc::UnboundedReceiver<Event>,
    dialogs: &mut [Dialog],
    out: &mut Outcome,
) -> Result<Round> {
    let subject = format!("s{round}");
    let subject_element = format!("<subject>{subject}</subject>");
    let expected = dialogs.iter().filter(|d| d.alive).count();
    // Autocommit: execute() returns once PostgreSQL has acknowledged the COMMIT.
    sqlx::query("UPDATE conflist_conferences SET subject = $1 WHERE conference_uri = $2")
        .bind(&subject)
        .bind(CONFERENCE)
        .execute(&mut *pg)
        .await
        .with_context(|| format!("round {round}: update"))?;
    let committed = Instant::now();
    let deadline = tokio::time::Instant::from_std(committed + p.round_timeout);

    let mut received = 0;
    let mut first = None;
    let mut last = Duration::ZERO;
    while received < expected {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            break; // timed out, or every connection is gone
        };
        match event {
            Event::Notify(nt) => {
                if let Some(latency) = record(round, &subject_element, committed, &nt, dialogs, out)
                {
                    received += 1;
                    first = Some(first.map_or(latency, |f: Duration| f.min(latency)));
                    last = last.max(latency);
                }
            }
            Event::Response { .. } => out.unexpected += 1,
            Event::Closed { conn, reason } => out.closed.push(format!("conn {conn}: {reason}")),
        }
    }
    if received < expected {
        last = p.round_timeout;
    }
    out.missing += expected - received;
    Ok(Round {
        received,
        expected,
        first,
        last,
    })
}

/// Books one NOTIFY received during `round`; its latency if it is that round's NOTIFY (the
/// document holds `subject_element`) for its dialog.
fn record(
    round: u32,
    subject_element: &str,
    committed: Instant,
    nt: &Notify,
    dialogs: &mut [Dialog],
    out: &mut Outcome,
) -> Option<Duration> {
    let Some(d) = dialogs.get_mut(nt.dialog) else {
        out.unexpected += 1;
        return None;
    };
    if nt.terminated && d.alive {
        d.alive = false;
        out.terminated += 1;
    }
    let current = nt.body.contains(subject_element) && d.round < Some(round);
    if !current || !d.ok {
        out.unexpected += 1;
        return None;
    }
    if nt.version.is_none() || nt.version != d.version.map(|v| v + 1) {
        out.version_gaps += 1;
    }
    d.version = nt.version;
    d.round = Some(round);
    if !nt.partial {
        out.not_partial += 1;
    }
    out.partial_bytes.push(nt.body_len);
    let latency = nt.at.saturating_duration_since(committed);
    out.latencies.push(latency);
    Some(latency)
}

/// Milliseconds, for printing.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
