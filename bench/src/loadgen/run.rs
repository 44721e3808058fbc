//! One process's run over its slice of the clients: the pacer (opening, then the paced
//! unsubscribe), the collector of the connections' reports, the hold, and the results.

use super::conn::{self, Cmd, LogLine, Reason, Report, Shared};
use super::stats::{self, Counters, RunInfo, Tally, bump};
use super::{Config, Slice};
use anyhow::{Context, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// Per-client progress, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Idle,
    Pending,
    Up,
    Failed,
    Lost,
    Unsubscribing,
    Finished,
}

/// Stop requests (SIGTERM/SIGINT, or the parent's STOP line): `true` once asked.
pub(crate) type Stop = watch::Receiver<bool>;

/// SIGTERM (and SIGINT unless `ignore_int`) set the stop flag.
fn stop_on_signals(tx: watch::Sender<bool>, ignore_int: bool) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {
                    if ignore_int {
                        continue;
                    }
                }
            }
            eprintln!("loadgen: stop requested");
            tx.send_replace(true);
        }
    });
    Ok(())
}

/// The process's own run (no children).
pub(crate) async fn single(cfg: Config) -> Result<()> {
    let (tx, stop) = watch::channel(false);
    stop_on_signals(tx, false)?;
    let slice = Slice::of(cfg.args.clients, cfg.args.dialogs_per_connection, 0, 1);
    let out = cfg.args.out.clone();
    let log = cfg.args.notify_log.clone();
    let info = (
        cfg.args.target.clone(),
        cfg.target.transport.name(),
        cfg.args.dialogs_per_connection,
        cfg.args.rate,
    );
    let mut tally = run_slice(cfg, slice, log, stop, String::new()).await?;
    let summary = stats::summary(
        &mut tally,
        &RunInfo {
            target: &info.0,
            transport: info.1,
            processes: 1,
            dialogs_per_connection: info.2,
            rate: info.3,
        },
    );
    finish(&summary, out.as_deref())
}

/// Writes the summary (and a short form to stderr), then prints DONE.
pub(crate) fn finish(summary: &serde_json::Value, out: Option<&Path>) -> Result<()> {
    eprintln!(
        "loadgen: established {} failed {} {} in {} s; first NOTIFY p50 {} p99 {} ms; \
         notifies {}",
        summary["established"],
        summary["failed"],
        summary["failures"],
        summary["opening_seconds"],
        summary["first_notify_ms"]["p50"],
        summary["first_notify_ms"]["p99"],
        summary["notifies_received"],
    );
    if let Some(path) = out {
        let text = serde_json::to_string_pretty(summary)? + "\n";
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    println!("DONE");
    std::io::stdout().flush()?;
    Ok(())
}

/// A child process: its slice, then `RESULT <json>` and `DONE` on stdout for the parent.
/// A `STOP` line on stdin (or SIGTERM) ends the hold; end of stdin (the parent is gone)
/// ends the process at once. SIGINT is left to the parent (a terminal's Ctrl-C reaches
/// both, and the parent passes it on).
pub(crate) async fn child(cfg: Config, index: u32, count: u32) -> Result<()> {
    let (tx, stop) = watch::channel(false);
    let stdin_tx = tx.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => {
                    eprintln!("loadgen[{index}]: the parent is gone; exiting");
                    std::process::exit(3);
                }
                Ok(_) if line.trim() == "STOP" => {
                    stdin_tx.send_replace(true);
                }
                Ok(_) => {}
            }
        }
    });
    stop_on_signals(tx, true)?;
    let slice = Slice::of(
        cfg.args.clients,
        cfg.args.dialogs_per_connection,
        index,
        count,
    );
    let log = cfg.args.notify_log.as_deref().map(|p| part_path(p, index));
    let tally = run_slice(cfg, slice, log, stop, format!("[{index}]")).await?;
    println!("RESULT {}", serde_json::to_string(&tally)?);
    println!("DONE");
    std::io::stdout().flush()?;
    Ok(())
}

/// Child `index`'s part of the notify log.
pub(crate) fn part_path(log: &Path, index: u32) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(format!(".part{index}"));
    PathBuf::from(s)
}

/// The `--notify-log` writer: a thread, so file writes never stall a runtime worker.
fn start_log(
    path: &Path,
) -> Result<(
    std::sync::mpsc::Sender<LogLine>,
    std::thread::JoinHandle<std::io::Result<()>>,
)> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let (tx, rx) = std::sync::mpsc::channel::<LogLine>();
    let handle = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::with_capacity(256 * 1024, file);
        for l in rx {
            writeln!(
                w,
                "{} {} {} {}",
                l.client,
                l.unix_ns,
                l.bytes,
                u8::from(l.partial)
            )?;
        }
        w.flush()
    });
    Ok((tx, handle))
}

/// The controller's view of its slice.
struct Ctl {
    slice: Slice,
    per_conn: u32,
    clients_total: u32,
    shared: Arc<Shared>,
    status: Vec<Status>,
    conns: Vec<Option<mpsc::UnboundedSender<Cmd>>>,
    tasks: JoinSet<()>,
    tally: Tally,
    pending: u32,
    resolved: u32,
    unsub_pending: u32,
    /// Instant ↔ unix time of this process.
    base: (Instant, u64),
    label: String,
}

impl Ctl {
    fn ns(&self, at: Instant) -> u64 {
        self.base.1 + at.saturating_duration_since(self.base.0).as_nanos() as u64
    }

    fn idx(&self, client: u32) -> Option<usize> {
        let i = client.checked_sub(self.slice.start)? as usize;
        (i < self.status.len()).then_some(i)
    }

    /// Sends `cmd` to the connection of `client`, spawning its task on first use.
    fn send(&mut self, client: u32, cmd: Cmd) -> bool {
        let conn = client / self.per_conn;
        let local = (conn - self.slice.start / self.per_conn) as usize;
        if let Some(tx) = &self.conns[local] {
            return tx.send(cmd).is_ok();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = tx.send(cmd).is_ok();
        self.conns[local] = Some(tx);
        let base = conn * self.per_conn;
        let count = self.per_conn.min(self.clients_total - base);
        self.tasks
            .spawn(conn::run(self.shared.clone(), conn, base, count, rx));
        self.tally.connections += 1;
        sent
    }

    fn dispatch(&mut self, client: u32, now: Instant) {
        let Some(i) = self.idx(client) else { return };
        self.status[i] = Status::Pending;
        self.pending += 1;
        self.tally.started += 1;
        let ns = self.ns(now);
        self.tally.first_sent_ns.get_or_insert(ns);
        self.tally.last_sent_ns = Some(ns);
        if !self.send(client, Cmd::Start { client, at: now }) {
            self.on_report(Report::Failed {
                client,
                reason: Reason::Closed,
                at: now,
            });
        }
    }

    fn opening_outcome(&mut self, client: u32, at: Instant, reason: Option<Reason>) -> bool {
        let Some(i) = self.idx(client) else {
            return false;
        };
        if self.status[i] != Status::Pending {
            return false;
        }
        self.pending -= 1;
        self.resolved += 1;
        self.tally.last_opened_ns = Some(self.ns(at));
        match reason {
            None => {
                self.status[i] = Status::Up;
                self.tally.established += 1;
            }
            Some(r) => {
                self.status[i] = Status::Failed;
                self.tally.failed += 1;
                bump(&mut self.tally.failures, &r.label());
            }
        }
        true
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::Opened {
                client,
                first_notify_us,
                before_200,
                at,
            } => {
                if self.opening_outcome(client, at, None) {
                    self.tally.first_notify_us.push(first_notify_us);
                    if before_200 {
                        self.tally.notify_before_200 += 1;
                    }
                }
            }
            Report::Failed { client, reason, at } => {
                self.opening_outcome(client, at, Some(reason));
            }
            Report::Ok { us } => self.tally.ok_us.push(us),
            Report::Lost { client, reason } => {
                if let Some(i) = self.idx(client)
                    && self.status[i] == Status::Up
                {
                    self.status[i] = Status::Lost;
                    bump(&mut self.tally.lost, &reason.label());
                }
            }
            Report::RefreshSent => self.tally.refreshes_sent += 1,
            Report::Refreshed => self.tally.refreshes_ok += 1,
            Report::RefreshFailed { client, reason } => {
                bump(&mut self.tally.refresh_failures, &reason.label());
                if let Some(i) = self.idx(client)
                    && self.status[i] == Status::Up
                {
                    self.status[i] = Status::Lost;
                    bump(&mut self.tally.lost, "refresh_failed");
                }
            }
            Report::Unsubscribed { client, result, at } => {
                let Some(i) = self.idx(client) else { return };
                if self.status[i] != Status::Unsubscribing {
                    return;
                }
                self.status[i] = Status::Finished;
                self.unsub_pending -= 1;
                self.tally.unsub_last_ns = Some(self.ns(at));
                match result {
                    Ok(()) => self.tally.unsubscribed += 1,
                    Err(r) => bump(&mut self.tally.unsubscribe_failures, &r.label()),
                }
            }
        }
    }

    fn progress(&self, phase: &str) {
        eprintln!(
            "loadgen{}: {phase}: started {} established {} failed {} pending {} notifies {}",
            self.label,
            self.tally.started,
            self.tally.established,
            self.tally.failed,
            self.pending,
            self.shared
                .counters
                .notifies
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }

    /// Every client not yet resolved fails with `reason` (`not_started` for those never sent).
    fn fail_unresolved(&mut self, reason: Reason, at: Instant) {
        for i in 0..self.status.len() {
            let client = self.slice.start + i as u32;
            match self.status[i] {
                Status::Pending => {
                    self.opening_outcome(client, at, Some(reason));
                }
                Status::Idle => {
                    self.status[i] = Status::Failed;
                    self.resolved += 1;
                    self.tally.failed += 1;
                    bump(&mut self.tally.failures, &Reason::NotStarted.label());
                }
                _ => {}
            }
        }
    }
}

/// Even pacing at `rate` per second: a tick every 1/rate (at least 1 ms), each releasing
/// the SUBSCRIBEs that are due.
struct Pacer {
    period: Duration,
    next_due: Instant,
    interval: tokio::time::Interval,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Pacer {
            period,
            next_due: Instant::now(),
            interval,
        }
    }

    /// How many are due now (at most `room`), advancing the schedule; when `room` runs out
    /// the schedule does not build up a backlog (no burst once room frees up).
    fn due(&mut self, room: u32) -> u32 {
        let now = Instant::now();
        let mut n = 0;
        while n < room && self.next_due <= now {
            n += 1;
            self.next_due += self.period;
        }
        if self.next_due < now {
            self.next_due = now;
        }
        n
    }
}

/// Runs one slice: opening, OPENED line, hold, unsubscribe, stop. Returns its tally.
async fn run_slice(
    cfg: Config,
    slice: Slice,
    notify_log: Option<PathBuf>,
    mut stop: Stop,
    label: String,
) -> Result<Tally> {
    let share = f64::from(slice.len()) / f64::from(cfg.args.clients);
    let rate = cfg.args.rate * share;
    let max_pending = ((f64::from(cfg.args.max_pending) * share).ceil() as u32).max(1);
    let hold = cfg.args.hold;
    let unsubscribe = cfg.args.unsubscribe;
    let timeout = cfg.args.timeout;
    let per_conn = cfg.args.dialogs_per_connection;
    let clients_total = cfg.args.clients;
    let (log_tx, log_thread) = match &notify_log {
        Some(p) => {
            let (tx, h) = start_log(p)?;
            (Some(tx), Some(h))
        }
        None => (None, None),
    };
    let (rep_tx, mut reports) = mpsc::unbounded_channel();
    let run = format!("lg{:08x}", rand::random::<u32>());
    let shared = Arc::new(Shared {
        call_prefix: format!("{run}.").into_bytes(),
        run,
        cfg,
        counters: Counters::default(),
        errors_printed: AtomicU64::new(0),
        reports: rep_tx,
        log: log_tx,
    });
    let n = slice.len();
    let conns = (slice.end.div_ceil(per_conn) - slice.start / per_conn) as usize;
    let mut ctl = Ctl {
        slice,
        per_conn,
        clients_total,
        shared,
        status: vec![Status::Idle; n as usize],
        conns: vec![None; conns],
        tasks: JoinSet::new(),
        tally: Tally {
            clients: u64::from(n),
            unsubscribe,
            ..Tally::default()
        },
        pending: 0,
        resolved: 0,
        unsub_pending: 0,
        base: (Instant::now(), conn::unix_ns()),
        label,
    };
    let mut batch = Vec::with_capacity(256);
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let stopped_early = *stop.borrow();
    let mut interrupted = stopped_early;

    // Opening.
    let mut pacer = Pacer::new(rate);
    let mut started = 0u32;
    let mut last_dispatch = Instant::now();
    if interrupted {
        ctl.fail_unresolved(Reason::NotStarted, Instant::now());
    }
    while ctl.resolved < n {
        tokio::select! {
            _ = pacer.interval.tick(), if started < n => {
                let room = (n - started).min(max_pending.saturating_sub(ctl.pending));
                let now = Instant::now();
                for _ in 0..pacer.due(room) {
                    ctl.dispatch(slice.start + started, now);
                    started += 1;
                }
                last_dispatch = now;
            }
            k = reports.recv_many(&mut batch, 256) => {
                if k == 0 {
                    break;
                }
                for r in batch.drain(..) {
                    ctl.on_report(r);
                }
            }
            _ = progress.tick() => {
                ctl.progress("opening");
                // Safety net: a connection task that never reports (it cannot happen by
                // design, but the OPENED line must come).
                if started == n && last_dispatch.elapsed() > timeout + Duration::from_secs(5) {
                    ctl.fail_unresolved(Reason::Timeout, Instant::now());
                }
            }
            _ = stop.changed() => {
                interrupted = true;
                ctl.fail_unresolved(Reason::Interrupted, Instant::now());
            }
        }
    }
    println!(
        "OPENED established={} failed={}",
        ctl.tally.established, ctl.tally.failed
    );
    std::io::stdout().flush()?;
    ctl.progress("opened");

    // Hold.
    if !interrupted && !hold.is_zero() {
        let began = Instant::now();
        let end = tokio::time::Instant::now() + hold;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(end) => break,
                k = reports.recv_many(&mut batch, 256) => {
                    if k == 0 {
                        break;
                    }
                    for r in batch.drain(..) {
                        ctl.on_report(r);
                    }
                }
                _ = stop.changed() => {
                    interrupted = true;
                    break;
                }
            }
        }
        ctl.tally.hold_seconds = began.elapsed().as_secs_f64();
    }

    // Unsubscribe, paced like the opening.
    if unsubscribe {
        let todo: Vec<u32> = (0..n)
            .filter(|i| ctl.status[*i as usize] == Status::Up)
            .map(|i| slice.start + i)
            .collect();
        let mut pacer = Pacer::new(rate);
        let mut next = 0usize;
        let mut deadline = Instant::now() + timeout + Duration::from_secs(5);
        while next < todo.len() || ctl.unsub_pending > 0 {
            tokio::select! {
                _ = pacer.interval.tick(), if next < todo.len() => {
                    let left = (todo.len() - next) as u32;
                    let room = left.min(max_pending.saturating_sub(ctl.unsub_pending));
                    let now = Instant::now();
                    for _ in 0..pacer.due(room) {
                        let client = todo[next];
                        next += 1;
                        let Some(i) = ctl.idx(client) else { continue };
                        if ctl.status[i] != Status::Up {
                            continue;
                        }
                        ctl.status[i] = Status::Unsubscribing;
                        ctl.unsub_pending += 1;
                        let ns = ctl.ns(now);
                        ctl.tally.unsub_first_ns.get_or_insert(ns);
                        if !ctl.send(client, Cmd::Unsubscribe { client }) {
                            ctl.on_report(Report::Unsubscribed {
                                client,
                                result: Err(Reason::Closed),
                                at: now,
                            });
                        }
                    }
                    deadline = now + timeout + Duration::from_secs(5);
                }
                k = reports.recv_many(&mut batch, 256) => {
                    if k == 0 {
                        break;
                    }
                    for r in batch.drain(..) {
                        ctl.on_report(r);
                    }
                }
                _ = progress.tick() => {
                    eprintln!(
                        "loadgen{}: unsubscribing: sent {next} of {} ok {} waiting {}",
                        ctl.label, todo.len(), ctl.tally.unsubscribed, ctl.unsub_pending
                    );
                    if next == todo.len() && Instant::now() > deadline {
                        break;
                    }
                }
            }
        }
        if ctl.unsub_pending > 0 {
            let waiting = ctl.unsub_pending;
            *ctl.tally
                .unsubscribe_failures
                .entry("timeout".to_owned())
                .or_default() += u64::from(waiting);
            ctl.unsub_pending = 0;
        }
    }

    // Stop: closing every command channel ends the connection tasks.
    ctl.conns.clear();
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while ctl.tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "loadgen{}: {} connections did not close in 5 s; aborted",
            ctl.label,
            ctl.tasks.len()
        );
        ctl.tasks.shutdown().await;
    }
    while let Ok(r) = reports.try_recv() {
        ctl.on_report(r);
    }
    ctl.tally.interrupted = interrupted;
    ctl.tally.take_counters(&ctl.shared.counters);
    let tally = ctl.tally;
    drop(ctl.shared);
    if let Some(h) = log_thread {
        let written = tokio::task::spawn_blocking(move || h.join()).await?;
        match written {
            Ok(r) => r.context("write the notify log")?,
            Err(_) => anyhow::bail!("the notify-log writer panicked"),
        }
    }
    Ok(tally)
}
