//! `conflist-bench-compare`: conflist side by side with Kamailio 5.6 presence (the anchor in
//! `../shared/anchors/kamailio`), in one run, with the same load generator
//! (`conflist-loadgen`) over the same transport against both, on this machine's 2 cores.
//!
//! Phases (each system fresh for every step):
//! * **rate**: new subscriptions (SUBSCRIBE → 200 → NOTIFY → 200) offered at a ladder of
//!   rates for a few seconds each, over WebSocket (one connection per subscriber) and UDP;
//!   the highest rate with < 1 % failures, time to first NOTIFY p50/p99, CPU seconds of the
//!   system's processes per 1 000 subscriptions. conflist with sign-in (digest) and without.
//! * **hold**: N subscriptions held over WebSocket, one connection each; PSS of every
//!   process of the system → bytes per subscription.
//! * **fanout**: one committed change (conflist) or one PUBLISH (Kamailio) affecting N live
//!   subscribers, one connection each → change to NOTIFY received, p50/p99/last.
//! * **bytes**: a full and a partial conference-list NOTIFY against RFC 4575
//!   `conference-info` documents for the same conferences (10 participants each).
//!
//! Results: stdout and `bench/results/compare.md`.
//!
//!     cargo build --release --bins && cargo run --release -p conflist-bench --bin conflist-bench-compare

use anyhow::{Context, Result, bail};
use clap::Parser;
use conflist_bench::procstat::{total_cpu, total_pss};
use conflist_tests::{Proxy, Server, ServerOptions, TestDb, spawn_proxy, spawn_server};
use sqlx::Executor;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Connections one process (proxy or load generator) is given at most (the machine's hard
/// limit is 20 000 open files per process).
const PER_PROCESS: usize = 15_000;
/// `--db-tls`.
static DB_TLS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// New subscriptions per second while opening a hold or a fan-out.
const HOLD_RATE: usize = 1500;
/// The digest password of every bench user.
const PASSWORD: &str = "bench-password";
/// Conferences every bench user is a member of (besides the fan-out ones).
const LIST: usize = 5;

#[derive(Debug, Parser)]
#[command(about = "conflist vs Kamailio presence, side by side")]
struct Opts {
    /// Results file.
    #[arg(long, default_value = "bench/results/compare.md")]
    out: PathBuf,
    /// Phases to run.
    #[arg(long, value_delimiter = ',', default_value = "bytes,rate,hold,fanout")]
    phases: Vec<String>,
    /// Offered rates of the rate phase, per second.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,4000,6000,8000"
    )]
    rates: Vec<usize>,
    /// Seconds each rate is offered.
    #[arg(long, default_value_t = 4)]
    rate_seconds: usize,
    /// Transports of the rate phase.
    #[arg(long, value_delimiter = ',', default_value = "ws,udp")]
    transports: Vec<String>,
    /// Subscriptions held in the hold phase.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000,100000")]
    hold: Vec<usize>,
    /// Subscribers affected in the fan-out phase.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    fanout: Vec<usize>,
    /// Changes per fan-out size.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Record a `perf` profile of the system's processes during every rate step into this
    /// directory (`perf report -i DIR/<system>-<transport>-<rate>.data`).
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Connect conflist to PostgreSQL with libpq's default `sslmode=prefer` (TLS on Debian's
    /// cluster) instead of `disable` (the before figure of that tuning).
    #[arg(long)]
    db_tls: bool,
    /// Systems to run: `conflist-auth`, `conflist`, `kamailio`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "conflist-auth,conflist,kamailio"
    )]
    systems: Vec<String>,
}

fn main() -> Result<()> {
    conflist_bench::with_bin_dir()?;
    let opts = Opts::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(run(opts))
}

/// Which system a step runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    /// conflist, digest sign-in on.
    ConflistAuth,
    /// conflist, sign-in off (as the Kamailio anchor: no authentication).
    Conflist,
    /// Kamailio 5.6 presence.
    Kamailio,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::ConflistAuth => "conflist (digest)",
            System::Conflist => "conflist (no auth)",
            System::Kamailio => "Kamailio 5.6",
        }
    }
}

/// A started system: its processes and where to send SIP.
struct Running {
    pids: Vec<u32>,
    /// `ws://…` per proxy (Kamailio: one).
    ws: Vec<String>,
    udp: String,
    conflist: Option<ConflistProcs>,
    kamailio: Option<conflist_bench::kamailio::Kamailio>,
}

struct ConflistProcs {
    server: Server,
    proxies: Vec<Proxy>,
}

impl Running {
    async fn stop(self) {
        if let Some(k) = self.kamailio {
            k.stop().await;
        }
        if let Some(c) = self.conflist {
            for p in &c.proxies {
                let _ = conflist_tests::process::terminate(&p.child);
            }
            let _ = conflist_tests::process::terminate(&c.server.child);
            drop(c);
        }
    }
}

/// The bench database: `users` users, each in [`LIST`] conferences, digest credentials,
/// and one fan-out conference per size whose members are users 1..=size.
async fn seed(db: &TestDb, users: usize, fanout: &[usize]) -> Result<()> {
    let mut pg = db.connect().await?;
    let sql = format!(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject, free_text,
             web_page, maximum_user_count, available_media, starts_at, ends_at, status,
             organizer_uri, organizer_name, time_zone)
         SELECT 'sip:c' || i || '@conf.example.com', 'Project meeting ' || i,
                'Status of work package ' || i,
                'Agenda: progress, open issues, next steps.',
                'https://meet.example.com/c' || i, 25, 'audio,video',
                timestamptz '2026-12-01T09:00:00Z' + (i || ' days')::interval,
                timestamptz '2026-12-01T10:00:00Z' + (i || ' days')::interval,
                'scheduled', 'sip:chair@example.com', 'The Chair', 'Europe/Berlin'
         FROM generate_series(1, {LIST}) AS i;
         INSERT INTO conflist_members (conference_uri, user_uri, role, response)
         SELECT 'sip:c' || i || '@conf.example.com', 'sip:user' || u || '@example.com',
                'participant', 'accepted'
         FROM generate_series(1, {LIST}) AS i, generate_series(1, {users}) AS u;
         INSERT INTO conflist_credentials (username, realm, user_uri, ha1_md5, ha1_sha256)
         SELECT 'user' || u, 'example.com', 'sip:user' || u || '@example.com',
                md5('user' || u || ':example.com:{PASSWORD}'),
                encode(sha256(convert_to('user' || u || ':example.com:{PASSWORD}', 'UTF8')), 'hex')
         FROM generate_series(1, {users}) AS u;"
    );
    pg.execute(sqlx::AssertSqlSafe(sql))
        .await
        .context("seed users")?;
    for n in fanout {
        let sql = format!(
            "INSERT INTO conflist_conferences (conference_uri, display_text, subject)
             VALUES ('sip:fan{n}@conf.example.com', 'Fan-out {n}', 'r0');
             INSERT INTO conflist_members (conference_uri, user_uri, role)
             SELECT 'sip:fan{n}@conf.example.com', 'sip:user' || u || '@example.com', 'participant'
             FROM generate_series(1, {n}) AS u;"
        );
        pg.execute(sqlx::AssertSqlSafe(sql))
            .await
            .context("seed fan-out conference")?;
    }
    pg.execute("ANALYZE").await?;
    Ok(())
}

/// Starts conflist on `db`: one server, `proxies` proxies with WebSocket and UDP listeners.
async fn start_conflist(db: &TestDb, auth: bool, proxies: usize) -> Result<Running> {
    // PostgreSQL on the same host over loopback, as an operator would connect to a local
    // database: no TLS (libpq's default `prefer` would negotiate it with Debian's
    // snakeoil certificate and encrypt every query).
    let sep = if db.url.contains('?') { '&' } else { '?' };
    let url = if DB_TLS.load(std::sync::atomic::Ordering::Relaxed) {
        db.url.clone()
    } else {
        format!("{}{sep}sslmode=disable", db.url)
    };
    let server = spawn_server(
        &url,
        &ServerOptions {
            demo: false,
            auth,
            min_expires: 60,
            extra_args: vec![
                "--auth-algorithms".into(),
                "SHA-256,MD5".into(),
                "--max-subscriptions-per-user".into(),
                "100000".into(),
            ],
            ..ServerOptions::default()
        },
    )
    .await
    .context("start conflist-server")?;
    let mut ps = Vec::new();
    for _ in 0..proxies.max(1) {
        let p = spawn_proxy(
            &server,
            &[
                "--udp-listen",
                "127.0.0.1:0",
                "--max-connections",
                "19000",
                "--max-connections-per-address",
                "19000",
                "--max-subscribes-per-address",
                "1000000",
            ],
        )
        .await
        .context("start conflist-proxy")?;
        ps.push(p);
    }
    let mut pids: Vec<u32> = ps.iter().filter_map(|p| p.child.id()).collect();
    pids.extend(server.child.id());
    let ws = ps.iter().map(|p| p.ws_url.clone()).collect();
    let udp = ps
        .first()
        .and_then(|p| p.udp.clone())
        .map(|a| format!("udp:{a}"))
        .context("the proxy serves no UDP")?;
    Ok(Running {
        pids,
        ws,
        udp,
        conflist: Some(ConflistProcs {
            server,
            proxies: ps,
        }),
        kamailio: None,
    })
}

async fn start_kamailio(work: &Path) -> Result<Running> {
    let k = conflist_bench::kamailio::Kamailio::start(work, 5072, 8072, &[])
        .await
        .context("start Kamailio (the anchor's start.sh)")?;
    Ok(Running {
        pids: k.pids(),
        ws: vec![format!("ws://127.0.0.1:{}", k.ws_port)],
        udp: format!("udp:127.0.0.1:{}", k.sip_port),
        conflist: None,
        kamailio: Some(k),
    })
}

async fn start(system: System, db: &TestDb, proxies: usize, work: &Path) -> Result<Running> {
    match system {
        System::ConflistAuth => start_conflist(db, true, proxies).await,
        System::Conflist => start_conflist(db, false, proxies).await,
        System::Kamailio => start_kamailio(work).await,
    }
}

/// One load generator run (possibly several processes of it).
struct Load {
    child: Child,
    out: PathBuf,
}

/// The summary a load generator writes.
#[derive(Debug, Clone, Default)]
struct Summary {
    clients: u64,
    established: u64,
    failed: u64,
    failures: String,
    achieved_rate: f64,
    p50: f64,
    p99: f64,
    opening_seconds: f64,
}

impl Summary {
    fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        let ms = |k: &str| {
            v.get("first_notify_ms")
                .and_then(|m| m.get(k))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(f64::NAN)
        };
        Ok(Self {
            clients: n("clients"),
            established: n("established"),
            failed: n("failed"),
            failures: v.get("failures").map(|f| f.to_string()).unwrap_or_default(),
            achieved_rate: f("achieved_rate"),
            p50: ms("p50"),
            p99: ms("p99"),
            opening_seconds: f("opening_seconds"),
        })
    }

    fn merge(parts: &[Summary]) -> Summary {
        let mut s = Summary::default();
        for p in parts {
            s.clients += p.clients;
            s.established += p.established;
            s.failed += p.failed;
            s.achieved_rate += p.achieved_rate;
            s.opening_seconds = s.opening_seconds.max(p.opening_seconds);
            if !p.failures.is_empty() && p.failures != "{}" {
                s.failures.push_str(&p.failures);
            }
        }
        // Percentiles of parts: the worst part's, which bounds the whole from above.
        s.p50 = parts.iter().map(|p| p.p50).fold(f64::NAN, f64::max);
        s.p99 = parts.iter().map(|p| p.p99).fold(f64::NAN, f64::max);
        s
    }

    fn failure_ratio(&self) -> f64 {
        if self.clients == 0 {
            return 1.0;
        }
        1.0 - self.established as f64 / self.clients as f64
    }
}

/// What the load generator is asked to do.
struct LoadSpec<'a> {
    target: &'a str,
    clients: usize,
    rate: usize,
    system: System,
    hold: Option<Duration>,
    /// First user number (1-based) and how many users to cycle through.
    user_offset: usize,
    notify_log: Option<PathBuf>,
    /// Kamailio fan-out: every client subscribes to this one presentity.
    presentity: Option<&'a str>,
}

fn loadgen_bin() -> PathBuf {
    conflist_tests::process::bin_dir().join("conflist-loadgen")
}

async fn start_load(spec: &LoadSpec<'_>, work: &Path, tag: &str) -> Result<Load> {
    let out = work.join(format!("load-{tag}.json"));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Command::new(loadgen_bin());
    cmd.arg("--target")
        .arg(spec.target)
        .arg("--clients")
        .arg(spec.clients.to_string())
        .arg("--rate")
        .arg(spec.rate.to_string())
        .arg("--timeout")
        .arg("10s")
        .arg("--expires")
        .arg("600")
        .arg("--processes")
        .arg(spec.clients.div_ceil(PER_PROCESS).max(1).to_string())
        .arg("--sources")
        .arg("127.0.0.2-127.0.0.9")
        .arg("--out")
        .arg(&out);
    match spec.system {
        System::Kamailio => {
            cmd.args([
                "--event",
                "presence",
                "--accept",
                "application/pidf+xml",
                "--expect-root",
                "presence",
                "--domain",
                "127.0.0.1",
            ]);
            match spec.presentity {
                Some(p) => cmd.args(["--user-template", p]),
                None => cmd.args(["--user-template", "user{i}"]),
            };
        }
        System::Conflist | System::ConflistAuth => {
            cmd.args(["--domain", "example.com", "--user-template", "user{i}"]);
            if spec.system == System::ConflistAuth {
                cmd.args(["--password", PASSWORD]);
            }
        }
    }
    cmd.arg("--user-count")
        .arg(spec.clients.max(1).to_string())
        .arg("--user-offset")
        .arg(spec.user_offset.to_string());
    if let Some(h) = spec.hold {
        cmd.arg("--hold").arg(format!("{}s", h.as_secs()));
    }
    if let Some(log) = &spec.notify_log {
        cmd.arg("--notify-log").arg(log);
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", loadgen_bin().display()))?;
    Ok(Load { child, out })
}

impl Load {
    /// Waits for `OPENED …` (every client established or failed).
    async fn opened(&mut self, timeout: Duration) -> Result<()> {
        let stdout = self.child.stdout.as_mut().context("loadgen stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .context("the load generator did not open in time")??;
            match line {
                Some(l) if l.starts_with("OPENED") => return Ok(()),
                Some(_) => {}
                None => bail!("the load generator ended before OPENED"),
            }
        }
    }

    /// Ends a hold (SIGTERM) and waits for the summary.
    async fn finish(mut self) -> Result<Summary> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .context("the load generator did not finish")??;
        if !status.success() {
            bail!("the load generator failed: {status}");
        }
        Summary::read(&self.out)
    }

    /// Waits for a run without hold to end by itself.
    async fn done(mut self) -> Result<Summary> {
        let status = tokio::time::timeout(Duration::from_secs(300), self.child.wait())
            .await
            .context("the load generator did not finish")??;
        if !status.success() {
            bail!("the load generator failed: {status}");
        }
        Summary::read(&self.out)
    }
}

/// What [`load_on`] runs.
struct LoadOn<'a> {
    transport: &'a str,
    system: System,
    clients: usize,
    rate: usize,
    hold: Option<Duration>,
    notify_log: Option<&'a Path>,
    presentity: Option<&'a str>,
}

/// Runs `clients` subscriptions against `r` split evenly over its WebSocket endpoints
/// (one load generator per endpoint) or its UDP address.
async fn load_on(r: &Running, l: &LoadOn<'_>, work: &Path) -> Result<Vec<Load>> {
    let LoadOn {
        transport,
        system,
        clients,
        rate,
        hold,
        notify_log,
        presentity,
    } = *l;
    let targets: Vec<String> = match transport {
        "udp" => vec![r.udp.clone()],
        _ => r.ws.clone(),
    };
    let parts = targets.len();
    let mut loads = Vec::new();
    let mut offset = 1;
    for (i, t) in targets.iter().enumerate() {
        let share = clients / parts + usize::from(i < clients % parts);
        let spec = LoadSpec {
            target: t,
            clients: share,
            rate: (rate / parts).max(1),
            system,
            hold,
            user_offset: offset,
            notify_log: notify_log.map(|l| l.with_extension(format!("{i}.log"))),
            presentity,
        };
        offset += share;
        loads.push(start_load(&spec, work, &format!("{i}")).await?);
    }
    Ok(loads)
}

/// `perf record -g` of `pids` into `dir/<name>.data`, until [`stop_perf`].
fn start_perf(dir: &Path, pids: &[u32], name: &str) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "record",
            "--call-graph",
            "dwarf,16384",
            "-F",
            "499",
            "-p",
            &list.join(","),
            "-o",
        ])
        .arg(dir.join(format!("{name}.data")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawn perf (Debian linux-perf)")
}

async fn stop_perf(mut p: Child) {
    if let Some(pid) = p.id() {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), p.wait()).await;
}

#[derive(Debug, Clone)]
struct RateRow {
    system: System,
    transport: String,
    rate: usize,
    summary: Summary,
    cpu_per_1000: f64,
}

async fn rate_phase(
    o: &Opts,
    db: &TestDb,
    systems: &[System],
    work: &Path,
) -> Result<Vec<RateRow>> {
    let mut rows = Vec::new();
    for transport in &o.transports {
        for &system in systems {
            for &rate in &o.rates {
                let clients = rate * o.rate_seconds;
                let proxies = if transport == "ws" {
                    clients.div_ceil(PER_PROCESS)
                } else {
                    1
                };
                let r = start(system, db, proxies, work).await?;
                let cpu0 = total_cpu(&r.pids);
                let perf = match &o.perf {
                    Some(dir) => Some(start_perf(
                        dir,
                        &r.pids,
                        &format!("{system:?}-{transport}-{rate}"),
                    )?),
                    None => None,
                };
                let loads = load_on(
                    &r,
                    &LoadOn {
                        transport,
                        system,
                        clients,
                        rate,
                        hold: None,
                        notify_log: None,
                        presentity: None,
                    },
                    work,
                )
                .await?;
                let mut parts = Vec::new();
                for l in loads {
                    parts.push(l.done().await?);
                }
                let cpu = total_cpu(&r.pids) - cpu0;
                if let Some(p) = perf {
                    stop_perf(p).await;
                }
                r.stop().await;
                let summary = Summary::merge(&parts);
                let ok =
                    summary.failure_ratio() < 0.01 && summary.achieved_rate >= 0.9 * rate as f64;
                eprintln!(
                    "rate {transport} {} {rate}/s: {}/{} established, p50 {:.1} ms p99 {:.1} ms, {:.2} CPU s, {}",
                    system.name(),
                    summary.established,
                    summary.clients,
                    summary.p50,
                    summary.p99,
                    cpu,
                    if ok { "sustained" } else { "NOT sustained" }
                );
                rows.push(RateRow {
                    system,
                    transport: transport.clone(),
                    rate,
                    cpu_per_1000: cpu / (summary.established.max(1) as f64) * 1000.0,
                    summary,
                });
                if !ok {
                    break;
                }
            }
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone)]
struct HoldRow {
    system: System,
    n: usize,
    established: u64,
    pss_idle: u64,
    pss_held: u64,
    processes: usize,
    /// conflist: the proxies' and the server's PSS when held.
    split: Option<(u64, u64)>,
}

async fn hold_phase(
    o: &Opts,
    db: &TestDb,
    systems: &[System],
    work: &Path,
) -> Result<Vec<HoldRow>> {
    let mut rows = Vec::new();
    for &system in systems {
        for &n in &o.hold {
            if system == System::Kamailio && n > 19_000 {
                // Kamailio's TCP main process holds every WebSocket connection (the anchor's
                // tcp_max_connections=19500): beyond that it cannot hold one each.
                continue;
            }
            let r = start(system, db, n.div_ceil(PER_PROCESS), work).await?;
            let pss_idle = total_pss(&r.pids);
            let mut loads = load_on(
                &r,
                &LoadOn {
                    transport: "ws",
                    system,
                    clients: n,
                    // Below the sustained rate (about 2 000/s here): a hold measures
                    // memory, not overload.
                    rate: HOLD_RATE,
                    hold: Some(Duration::from_secs(3600)),
                    notify_log: None,
                    presentity: None,
                },
                work,
            )
            .await?;
            for l in &mut loads {
                l.opened(Duration::from_secs(300)).await?;
            }
            let pss_held = total_pss(&r.pids);
            let split = r.conflist.as_ref().map(|c| {
                let proxies: Vec<u32> = c.proxies.iter().filter_map(|p| p.child.id()).collect();
                let server: Vec<u32> = c.server.child.id().into_iter().collect();
                (total_pss(&proxies), total_pss(&server))
            });
            let mut parts = Vec::new();
            for l in loads {
                parts.push(l.finish().await?);
            }
            let s = Summary::merge(&parts);
            eprintln!(
                "hold {} {n}: {} established, PSS {} → {} MiB",
                system.name(),
                s.established,
                pss_idle >> 20,
                pss_held >> 20
            );
            rows.push(HoldRow {
                system,
                n,
                established: s.established,
                pss_idle,
                pss_held,
                processes: r.pids.len(),
                split,
            });
            r.stop().await;
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone)]
struct FanRow {
    system: System,
    n: usize,
    samples: usize,
    expected: usize,
    p50: f64,
    p99: f64,
    last: f64,
    first: f64,
}

fn unix_ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Reads every notify log `<base>.<i>.log`: (client, unix ns) per NOTIFY.
fn read_notify_logs(base: &Path, parts: usize) -> Vec<u128> {
    let mut at = Vec::new();
    for i in 0..parts {
        let path = base.with_extension(format!("{i}.log"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines() {
            if let Some(ns) = line
                .split([' ', ',', '\t'])
                .filter(|f| !f.is_empty())
                .nth(1)
                .and_then(|f| f.parse::<u128>().ok())
            {
                at.push(ns);
            }
        }
    }
    at
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn fanout_phase(
    o: &Opts,
    db: &TestDb,
    systems: &[System],
    work: &Path,
) -> Result<Vec<FanRow>> {
    let mut rows = Vec::new();
    let mut pg = db.connect().await?;
    for &system in systems {
        for &n in &o.fanout {
            let r = start(system, db, n.div_ceil(PER_PROCESS), work).await?;
            let base = work.join(format!("fan-{}-{n}", system as u8));
            let presentity = (system == System::Kamailio).then_some("fan");
            let mut loads = load_on(
                &r,
                &LoadOn {
                    transport: "ws",
                    system,
                    clients: n,
                    rate: HOLD_RATE,
                    hold: Some(Duration::from_secs(3600)),
                    notify_log: Some(&base),
                    presentity,
                },
                work,
            )
            .await?;
            for l in &mut loads {
                l.opened(Duration::from_secs(300)).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut commits = Vec::new();
            for round in 1..=o.rounds {
                match &r.kamailio {
                    Some(k) => match k.publish("fan", round).await {
                        Ok(at) => commits.push(unix_ns(at)),
                        // Its NOTIFYs are still counted against the previous change; the
                        // missing round shows in "expected".
                        Err(e) => eprintln!("fanout: PUBLISH of round {round} failed: {e:#}"),
                    },
                    None => {
                        let sql = format!(
                            "UPDATE conflist_conferences SET subject = 'r{round}' WHERE conference_uri = 'sip:fan{n}@conf.example.com'"
                        );
                        pg.execute(sqlx::AssertSqlSafe(sql)).await?;
                        commits.push(unix_ns(SystemTime::now()));
                    }
                }
                // Past the server's 200 ms rate control and the round's delivery, so rounds
                // do not overlap (a NOTIFY is counted against the latest change before it).
                tokio::time::sleep(Duration::from_millis(400 + (n as u64) / 3)).await;
            }
            let parts = loads.len();
            for l in loads {
                l.finish().await?;
            }
            r.stop().await;
            let mut latencies = Vec::new();
            let mut per_round_first = vec![f64::INFINITY; commits.len()];
            let mut per_round_last = vec![0.0f64; commits.len()];
            for at in read_notify_logs(&base, parts) {
                let Some(k) = commits.iter().rposition(|c| *c <= at) else {
                    continue;
                };
                let ms = (at - commits[k]) as f64 / 1e6;
                latencies.push(ms);
                per_round_first[k] = per_round_first[k].min(ms);
                per_round_last[k] = per_round_last[k].max(ms);
            }
            latencies.sort_by(f64::total_cmp);
            let row = FanRow {
                system,
                n,
                samples: latencies.len(),
                expected: n * o.rounds,
                p50: percentile(&latencies, 50.0),
                p99: percentile(&latencies, 99.0),
                last: per_round_last.iter().copied().fold(0.0, f64::max),
                first: per_round_first
                    .iter()
                    .copied()
                    .fold(f64::INFINITY, f64::min),
            };
            eprintln!(
                "fanout {} {n}: {}/{} NOTIFYs, p50 {:.1} p99 {:.1} last {:.1} ms",
                system.name(),
                row.samples,
                row.expected,
                row.p50,
                row.p99,
                row.last
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Default)]
struct Bytes {
    full: usize,
    partial: usize,
    conferences: usize,
    rfc4575: usize,
}

/// A user in 20 conferences with every field filled: the full NOTIFY, the partial after
/// one change, and the RFC 4575 documents for the same conferences.
async fn bytes_phase(db: &TestDb) -> Result<Bytes> {
    let r = start_conflist(db, false, 1).await?;
    let mut pg = db.connect().await?;
    pg.execute(
        "INSERT INTO conflist_members (conference_uri, user_uri, role, response)
         SELECT conference_uri, 'sip:bytes@example.com', 'participant', 'accepted'
         FROM conflist_conferences WHERE conference_uri LIKE 'sip:c%';
         INSERT INTO conflist_conferences (conference_uri, display_text, subject, free_text,
             web_page, maximum_user_count, available_media, starts_at, ends_at, status,
             organizer_uri, organizer_name, time_zone)
         SELECT 'sip:b' || i || '@conf.example.com', 'Project meeting ' || i,
                'Status of work package ' || i,
                'Agenda: progress since last time, open issues, next steps. Please read the '
                || 'minutes of meeting ' || (i - 1) || ' before joining.',
                'https://meet.example.com/b' || i, 25, 'audio,video',
                timestamptz '2026-12-01T09:00:00Z' + (i || ' hours')::interval,
                timestamptz '2026-12-01T10:00:00Z' + (i || ' hours')::interval,
                'scheduled', 'sip:chair@example.com', 'The Chair', 'Europe/Berlin'
         FROM generate_series(1, 15) AS i;
         INSERT INTO conflist_members (conference_uri, user_uri, role, response)
         SELECT 'sip:b' || i || '@conf.example.com', 'sip:bytes@example.com', 'participant', 'accepted'
         FROM generate_series(1, 15) AS i;",
    )
    .await?;
    let ws = r.ws.first().cloned().context("no WebSocket listener")?;
    let mut c = conflist_tests::SipWsClient::connect(&ws).await?;
    let mut view = conflist_tests::client::ListView::default();
    c.subscribe("bytes", 600).await?;
    let (n, doc) = view.next(&mut c).await?;
    let doc = doc.context("the first NOTIFY carries a document")?;
    let mut b = Bytes {
        full: n.body.len(),
        conferences: view.conferences.len(),
        ..Bytes::default()
    };
    for e in &doc.entries {
        if let document::Entry::Full(conf) = e {
            b.rfc4575 += conflist_bench::conference_info::render(conf, 10).len();
        }
    }
    pg.execute(
        "UPDATE conflist_conferences SET subject = 'Moved to Thursday' WHERE conference_uri = 'sip:b7@conf.example.com'",
    )
    .await?;
    let (n, _) = view.next(&mut c).await?;
    b.partial = n.body.len();
    r.stop().await;
    Ok(b)
}

async fn run(o: Opts) -> Result<()> {
    let started = Instant::now();
    DB_TLS.store(o.db_tls, std::sync::atomic::Ordering::Relaxed);
    let work = std::env::temp_dir().join(format!("conflist-compare-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let max_users = o
        .hold
        .iter()
        .chain(o.fanout.iter())
        .copied()
        .chain(o.rates.iter().map(|r| r * o.rate_seconds))
        .max()
        .unwrap_or(1000);
    let db = TestDb::create().await?;
    let t = Instant::now();
    conflist_bench::start_services(&db, &[]).await.map(drop)?; // applies the schema
    seed(&db, max_users, &o.fanout).await?;
    eprintln!(
        "seeded {max_users} users in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let systems: Vec<System> = [
        ("conflist-auth", System::ConflistAuth),
        ("conflist", System::Conflist),
        ("kamailio", System::Kamailio),
    ]
    .into_iter()
    .filter(|(name, _)| o.systems.iter().any(|s| s == name))
    .map(|(_, s)| s)
    .collect();
    let no_auth: Vec<System> = systems
        .iter()
        .copied()
        .filter(|s| *s != System::ConflistAuth)
        .collect();
    let want = |p: &str| o.phases.iter().any(|x| x == p);
    let bytes = if want("bytes") {
        Some(bytes_phase(&db).await?)
    } else {
        None
    };
    let rate = if want("rate") {
        rate_phase(&o, &db, &systems, &work).await?
    } else {
        Vec::new()
    };
    let hold = if want("hold") {
        hold_phase(&o, &db, &no_auth, &work).await?
    } else {
        Vec::new()
    };
    let fan = if want("fanout") {
        fanout_phase(&o, &db, &no_auth, &work).await?
    } else {
        Vec::new()
    };
    let report = report(&o, bytes.as_ref(), &rate, &hold, &fan, started.elapsed());
    println!("{report}");
    if let Some(dir) = o.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&o.out, &report).with_context(|| format!("write {}", o.out.display()))?;
    eprintln!("results written to {}", o.out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

fn report(
    o: &Opts,
    bytes: Option<&Bytes>,
    rate: &[RateRow],
    hold: &[HoldRow],
    fan: &[FanRow],
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# conflist vs Kamailio 5.6 presence\n");
    let _ = writeln!(
        s,
        "- command: `cargo build --release --bins && cargo run --release -p conflist-bench --bin conflist-bench-compare`"
    );
    let _ = writeln!(
        s,
        "- services: `{}` (release build)",
        conflist_tests::process::bin_dir().display()
    );
    let _ = writeln!(
        s,
        "- machine: {} CPUs; everything (PostgreSQL, both systems, the load generator) on the same 2 cores over loopback",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "- load generator: `conflist-loadgen` against both; every subscriber on its own connection (WebSocket) or socket (UDP); SUBSCRIBE → 200 → NOTIFY → 200; at most 2 000 pending"
    );
    let _ = writeln!(
        s,
        "- Kamailio: the anchor's tuned presence configuration (in memory, no authentication); conflist: PostgreSQL, one server, one proxy per {PER_PROCESS} connections"
    );
    let _ = writeln!(s, "- total run time: {:.0} s\n", elapsed.as_secs_f64());

    if let Some(b) = bytes {
        let _ = writeln!(s, "## Bytes\n");
        let _ = writeln!(s, "| what | bytes |\n|---|---:|");
        let _ = writeln!(
            s,
            "| full conference-list NOTIFY body, {} conferences | {} |",
            b.conferences, b.full
        );
        let _ = writeln!(s, "| partial after one change | {} |", b.partial);
        let _ = writeln!(
            s,
            "| RFC 4575 conference-info, same conferences, 10 participants each | {} |",
            b.rfc4575
        );
        let _ = writeln!(
            s,
            "| partial ÷ full | {:.1} % |",
            100.0 * b.partial as f64 / b.full.max(1) as f64
        );
        let _ = writeln!(
            s,
            "| full ÷ RFC 4575 | {:.1} % |\n",
            100.0 * b.full as f64 / b.rfc4575.max(1) as f64
        );
    }

    if !rate.is_empty() {
        let _ = writeln!(
            s,
            "## Rate (new subscriptions, {} s per step)\n",
            o.rate_seconds
        );
        let _ = writeln!(
            s,
            "| transport | system | offered /s | established | failed | achieved /s | first NOTIFY p50 ms | p99 ms | CPU s per 1 000 |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in rate {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.2} |",
                r.transport,
                r.system.name(),
                r.rate,
                r.summary.established,
                r.summary.failed,
                r.summary.achieved_rate,
                r.summary.p50,
                r.summary.p99,
                r.cpu_per_1000
            );
        }
        let _ = writeln!(
            s,
            "\n**Highest sustained rate** (< 1 % failed, ≥ 90 % of the offered rate achieved):\n"
        );
        let _ = writeln!(
            s,
            "| transport | system | rate /s | p50 ms | p99 ms | CPU s per 1 000 | ÷ Kamailio |\n|---|---|---:|---:|---:|---:|---:|"
        );
        for t in &o.transports {
            let best = |sys: System| {
                rate.iter()
                    .filter(|r| {
                        &r.transport == t
                            && r.system == sys
                            && r.summary.failure_ratio() < 0.01
                            && r.summary.achieved_rate >= 0.9 * r.rate as f64
                    })
                    .max_by_key(|r| r.rate)
            };
            let kam = best(System::Kamailio)
                .map(|r| r.rate as f64)
                .unwrap_or(f64::NAN);
            for sys in [System::ConflistAuth, System::Conflist, System::Kamailio] {
                if let Some(r) = best(sys) {
                    let _ = writeln!(
                        s,
                        "| {t} | {} | {} | {:.1} | {:.1} | {:.2} | {} |",
                        sys.name(),
                        r.rate,
                        r.summary.p50,
                        r.summary.p99,
                        r.cpu_per_1000,
                        ratio(r.rate as f64, kam)
                    );
                }
            }
        }
        let _ = writeln!(s);
    }

    if !hold.is_empty() {
        let _ = writeln!(s, "## Hold (WebSocket, one connection per subscription)\n");
        let _ = writeln!(
            s,
            "| system | subscriptions | established | processes | PSS idle MiB | PSS held MiB | bytes per subscription (held ÷ n) | added bytes per subscription |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for h in hold {
            let per = h.pss_held as f64 / h.established.max(1) as f64;
            let added = h.pss_held.saturating_sub(h.pss_idle) as f64 / h.established.max(1) as f64;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {:.0} |",
                h.system.name(),
                h.n,
                h.established,
                h.processes,
                h.pss_idle as f64 / 1048576.0,
                h.pss_held as f64 / 1048576.0,
                per,
                added
            );
        }
        let _ = writeln!(s);
    }

    for h in hold {
        if let Some((p, srv)) = h.split {
            let n = h.established.max(1) as f64;
            let _ = writeln!(
                s,
                "- {} at {}: proxies {:.0} B and server {:.0} B of PSS per subscription",
                h.system.name(),
                h.n,
                p as f64 / n,
                srv as f64 / n
            );
        }
    }
    if !hold.is_empty() {
        let _ = writeln!(s);
    }

    if !fan.is_empty() {
        let _ = writeln!(
            s,
            "## Fan-out (one change → N live subscribers, one WebSocket each)\n"
        );
        let _ = writeln!(
            s,
            "conflist: an `UPDATE` of a conference all N are members of, from the COMMIT's acknowledgement; Kamailio: a PUBLISH for the presentity all N watch, from the moment it is sent (its 200 can be read after the first NOTIFYs). {} changes per size.\n",
            o.rounds
        );
        let _ = writeln!(
            s,
            "| system | subscribers | NOTIFYs | expected | first ms | p50 ms | p99 ms | last ms |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for f in fan {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                f.system.name(),
                f.n,
                f.samples,
                f.expected,
                f.first,
                f.p50,
                f.p99,
                f.last
            );
        }
        let _ = writeln!(s);
    }
    s
}
