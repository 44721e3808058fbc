//! `conflist-bench`: NOTIFY fan-out latency on the real binaries.
//!
//! For each size N it starts a fresh PostgreSQL database, one `conflist-server` and one
//! `conflist-proxy` (from `CONFLIST_BIN_DIR`, by default the directory of this binary, so a
//! release bench uses the release services), subscribes N users who are all members of one
//! conference, then commits `--rounds` changes to that conference and times, per subscriber,
//! the commit acknowledgement → NOTIFY receipt. Results go to stdout and a Markdown file.
//!
//!     cargo build --release --bins && cargo run --release -p conflist-bench -- --subscribers 1,100,10000

mod client;
mod fanout;

use anyhow::{Context, Result, bail};
use clap::Parser;
use fanout::{Outcome, Params, ms};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Most WebSocket connections the bench opens (one process may hold 20 000 open files).
const MAX_CONNECTIONS: usize = 5000;
/// The proxy's default `--max-dialogs-per-connection`.
const MAX_DIALOGS_PER_CONNECTION: usize = 10_000;

/// NOTIFY fan-out latency: committed change → NOTIFY at every subscriber.
#[derive(Debug, Parser)]
#[command(name = "conflist-bench")]
struct Args {
    /// Sizes to measure: subscribers of the one changed conference, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    subscribers: Vec<usize>,
    /// Conferences in each subscriber's list: the changed one plus this many minus one that
    /// never change (with only one, a partial document is no smaller than the full one, and
    /// the server sends full documents).
    #[arg(long, default_value_t = 10)]
    list_size: usize,
    /// Committed changes per size.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// WebSocket connections per size, dialogs spread evenly [default: min(subscribers, 50)].
    #[arg(long)]
    connections: Option<usize>,
    /// Pause after a round's last NOTIFY; above the server's 200 ms --min-notify-interval so
    /// its rate control never defers a NOTIFY.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    round_gap: Duration,
    /// A round's NOTIFYs not in by then count as missing.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    round_timeout: Duration,
    /// Extra conflist-server argument, e.g. `--server-arg=--full-documents` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Markdown results file (its directory is created).
    #[arg(long, default_value = "bench/results/fanout.md")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    conflist_bench::with_bin_dir()?;
    check(&args)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

fn check(args: &Args) -> Result<()> {
    if args.subscribers.is_empty() || args.subscribers.contains(&0) {
        bail!("--subscribers needs sizes of at least 1");
    }
    if args.list_size == 0 {
        bail!("--list-size must be at least 1");
    }
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(c) = args.connections
        && !(1..=MAX_CONNECTIONS).contains(&c)
    {
        bail!("--connections must be 1..={MAX_CONNECTIONS}");
    }
    for &n in &args.subscribers {
        if n.div_ceil(connections(args, n)) > MAX_DIALOGS_PER_CONNECTION {
            bail!(
                "{n} subscribers need more --connections (at most {MAX_DIALOGS_PER_CONNECTION} dialogs each)"
            );
        }
    }
    Ok(())
}

/// Connections for size `n`: never more than there are dialogs.
fn connections(args: &Args, n: usize) -> usize {
    args.connections.unwrap_or(50).min(n)
}

async fn run(args: Args) -> Result<()> {
    let bin_dir = conflist_tests::process::bin_dir();
    for bin in ["conflist-server", "conflist-proxy"] {
        if !bin_dir.join(bin).exists() {
            bail!(
                "{} not found: run `cargo build --release --bins` first",
                bin_dir.join(bin).display()
            );
        }
    }
    let profile = profile_of(&bin_dir);
    eprintln!("services from {} ({profile} build)", bin_dir.display());
    if profile != "release" {
        eprintln!("warning: not a release build; numbers will not be representative");
    }

    let started = Instant::now();
    let mut outcomes = Vec::new();
    for &n in &args.subscribers {
        let params = Params {
            subscribers: n,
            list_size: args.list_size,
            server_args: args.server_args.clone(),
            connections: connections(&args, n),
            rounds: args.rounds,
            round_gap: args.round_gap,
            round_timeout: args.round_timeout,
        };
        eprintln!("{n} subscribers, {} connections", params.connections);
        let outcome = fanout::run(&params)
            .await
            .with_context(|| format!("size {n}"))?;
        outcomes.push(outcome);
    }

    let report = report(&args, &bin_dir, &profile, &outcomes, started.elapsed());
    println!("{report}");
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.out, &report).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// `release` for target/release, etc.; the directory name otherwise.
fn profile_of(bin_dir: &Path) -> String {
    let dir = std::fs::canonicalize(bin_dir).unwrap_or_else(|_| bin_dir.to_owned());
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The Markdown report.
fn report(
    args: &Args,
    bin_dir: &Path,
    profile: &str,
    outcomes: &[Outcome],
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    let command: Vec<String> = std::env::args().skip(1).collect();
    let postgres = outcomes.first().map_or("?", |o| o.postgres.as_str());
    let _ = writeln!(s, "# NOTIFY fan-out latency\n");
    let _ = writeln!(
        s,
        "Time from a committed change to NOTIFY receipt at the client: each round is one \
         autocommit `UPDATE conflist_conferences SET subject = …` of the one conference all N \
         subscribers are members of; the clock starts when PostgreSQL has acknowledged the \
         COMMIT and stops, per subscriber, when its NOTIFY (carrying the new subject) is read \
         off the WebSocket. Percentiles are nearest-rank over every round's samples.\n"
    );
    let _ = writeln!(
        s,
        "- date: {}",
        shell("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
    );
    let _ = writeln!(s, "- commit: {}", commit());
    let _ = writeln!(s, "- machine: {}", machine());
    let _ = writeln!(s, "- PostgreSQL: {postgres}");
    let _ = writeln!(s, "- services: `{}` ({profile} build)", bin_dir.display());
    let _ = writeln!(
        s,
        "- command: `cargo build --release --bins && cargo run --release -p conflist-bench -- {}`",
        command.join(" ")
    );
    let _ = writeln!(
        s,
        "- setup: one conflist-server (change detection `log` with LISTEN and \
         `--min-notify-interval 200ms`, the defaults; extra arguments: {}), one \
         conflist-proxy (defaults), PostgreSQL and the \
         bench client on the same machine over 127.0.0.1, a fresh database per size; each \
         subscriber's list holds {} conferences (the changed one and {} that never change); \
         {} rounds per size, each started {} after the previous round's last NOTIFY so rate \
         control never defers one; a NOTIFY not in within {} counts as missing",
        if args.server_args.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", args.server_args.join(" "))
        },
        args.list_size,
        args.list_size - 1,
        args.rounds,
        humantime::format_duration(args.round_gap),
        humantime::format_duration(args.round_timeout),
    );
    let _ = writeln!(s, "- total run time: {:.1} s\n", elapsed.as_secs_f64());

    let _ = writeln!(
        s,
        "| subscribers | connections | rounds | samples | missing | p50 ms | p99 ms | max ms | partial NOTIFY bytes | full NOTIFY bytes |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let mut lat = o.latencies.clone();
        lat.sort_unstable();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.subscribers,
            o.connections,
            o.rounds.len(),
            lat.len(),
            o.missing,
            fmt_ms(percentile(&lat, 0.50)),
            fmt_ms(percentile(&lat, 0.99)),
            fmt_ms(lat.last().copied()),
            fmt_mean(&o.partial_bytes),
            fmt_mean(&o.full_bytes),
        );
    }

    let _ = writeln!(s, "\n## Details\n");
    for o in outcomes {
        let per_round: Vec<String> = o
            .rounds
            .iter()
            .map(|r| format!("{}/{}", fmt_ms(r.first), fmt_ms(Some(r.last))))
            .collect();
        let _ = writeln!(
            s,
            "- **{} subscribers**: subscribed {} ({} rejected{}) in {:.1} s; \
             ms until each round's first/last NOTIFY: {}; unexpected NOTIFYs {}, full documents \
             among round NOTIFYs {}, version gaps {}, terminated {}, connections closed {}{}",
            o.subscribers,
            o.subscribed,
            o.rejected.len(),
            rejected_statuses(&o.rejected),
            o.subscribe_time.as_secs_f64(),
            per_round.join(" "),
            o.unexpected,
            o.not_partial,
            o.version_gaps,
            o.terminated,
            o.closed.len(),
            o.closed
                .first()
                .map(|c| format!(" (first: {c})"))
                .unwrap_or_default(),
        );
        for m in &o.metrics {
            let _ = writeln!(s, "  - `{m}`");
        }
    }
    s
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a rank within the sample count"
    )]
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), |d| format!("{:.1}", ms(d)))
}

fn fmt_mean(v: &[usize]) -> String {
    if v.is_empty() {
        return "–".to_owned();
    }
    format!("{}", v.iter().sum::<usize>() / v.len())
}

fn rejected_statuses(statuses: &[u16]) -> String {
    let mut distinct: Vec<u16> = statuses.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = distinct.iter().map(u16::to_string).collect();
    format!(": {}", parts.join(", "))
}

/// A command's trimmed stdout, or `?`.
fn shell(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

/// Short commit, `+dirty` when tracked files differ from it.
fn commit() -> String {
    let head = shell("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = shell("git", &["status", "--porcelain", "--untracked-files=no"]);
    if head != "?" && dirty != "?" {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// CPUs, CPU model, memory and kernel.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("?", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "?".to_owned(),
            |kb| format!("{:.1}", kb / 1024.0 / 1024.0),
        );
    format!(
        "{cpus} CPUs ({model}), {mem_gib} GiB RAM, Linux {}",
        shell("uname", &["-r"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v[..1], 0.99), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
