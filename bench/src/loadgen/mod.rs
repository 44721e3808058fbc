//! `conflist-loadgen`: K SIP subscribers against a SIP event server (conflist, or Kamailio's
//! presence server for comparison), over WebSocket, UDP or TCP.
//!
//! Every subscriber optionally signs in with digest, SUBSCRIBEs, answers every NOTIFY with
//! 200 at once, refreshes at half the granted Expires and records its times. SUBSCRIBEs are
//! paced at `--rate` with at most `--max-pending` waiting for their first NOTIFY. A parent
//! process can split the clients over `--processes` children (each < 20 000 sockets).
//!
//! Stdout carries only the driver protocol: one `OPENED established=<n> failed=<m>` line once
//! every client has its first NOTIFY or failed, then `DONE` at the very end. Everything else
//! goes to stderr; the summary goes to `--out` (JSON), later NOTIFYs to `--notify-log`.
//!
//! Per dialog: Call-ID `<run>.<client>`, From-tag `<run>.<client>`, branch
//! `z9hG4bK<run>.<client>.<cseq>` (`run` is random per process), Via with the real local
//! address and `;rport`, Contact `<sip:lg@IP:PORT;transport=udp|tcp>` (WebSocket:
//! `<sip:lg@<run>c<conn>.invalid;transport=ws>`), Max-Forwards 70, Content-Length always.
//! A 401/407 is answered once with digest credentials (again only for `stale=true`). Over
//! UDP a SUBSCRIBE is sent again at 0.5, 1.5, 3.5 s … (T1 doubling to T2 = 4 s) until a
//! response. Every request is answered (NOTIFY, OPTIONS: 200; ACK: nothing; others 405),
//! a repeated NOTIFY (CSeq not above the dialog's last) too, but it is counted only as a
//! retransmission. Refreshes go in the dialog to the notifier's Contact at half the granted
//! Expires (the 2xx's Expires, or the first NOTIFY's `expires=` when it came first).
//!
//! Outcomes of the opening (the `failures` keys): `timeout` (no first NOTIFY within
//! `--timeout` of the SUBSCRIBE's dispatch, connect included), a status code such as `503`
//! (final non-2xx), `connect`, `closed`, `bad_body` (first NOTIFY without the
//! `--expect-root` element), `terminated` (first NOTIFY already terminated),
//! `interrupted` / `not_started` (SIGTERM/SIGINT during the opening), `child_failed`.
//!
//! `--out` JSON: `clients`, `started`, `established`, `failed`, `failures` {reason: n},
//! `notify_before_200`, `opening_seconds` (first SUBSCRIBE dispatched → last
//! established/failed), `achieved_rate` ((started − 1) / (last − first dispatch)),
//! `established_rate`, `first_notify_ms` {p50, p90, p99, max} (SUBSCRIBE sent → first
//! NOTIFY read), `ok_ms` {p50, p90, p99, max} (first SUBSCRIBE sent → 2xx read, the 401
//! round included), `notifies_received`, `responses_sent`, `notify_retransmissions`,
//! `unknown_notifies`, `subscribe_retransmissions`, `malformed`, `refreshes` {sent, ok,
//! failed}, `lost` {reason: n} (established, then ended by the server or the connection),
//! `unsubscribe` {ok, failed, seconds} or null, `hold_seconds`, `interrupted`, plus
//! `target`, `transport`, `processes`, `connections`, `dialogs_per_connection`, `rate`.
//! Percentiles are nearest-rank.
//!
//! `--notify-log`: one line per NOTIFY after its dialog's first (retransmissions and the
//! final NOTIFYs of our own unsubscribe excluded; refresh-triggered and terminated ones
//! included): `<client> <unix_ns> <body_bytes> <partial>`, space-separated, `unix_ns` taken
//! when the message was read off the socket, `partial` 1 when the body has
//! `state="partial"`. With `--processes` the children's parts are concatenated at the end
//! (lines are in time order within a child, not across children).

mod conn;
mod msg;
mod multi;
mod run;
mod stats;

use anyhow::{Context, Result, bail};
use clap::Parser;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Environment variable marking a child process: `<index>/<count>`.
pub(crate) const CHILD_ENV: &str = "CONFLIST_LOADGEN_CHILD";

/// Load generator: K SIP subscribers (SUBSCRIBE, answer every NOTIFY, refresh, unsubscribe).
#[derive(Debug, Clone, Parser)]
#[command(name = "conflist-loadgen")]
pub(crate) struct Args {
    /// `ws://HOST:PORT[/path]` (subprotocol sip), `udp:HOST:PORT` or `tcp:HOST:PORT`.
    #[arg(long)]
    pub(crate) target: String,
    /// Number of subscribers (dialogs).
    #[arg(long)]
    pub(crate) clients: u32,
    /// Dialogs multiplexed on one WS/TCP connection or UDP socket.
    #[arg(long, default_value_t = 1)]
    pub(crate) dialogs_per_connection: u32,
    /// New SUBSCRIBEs per second, paced evenly.
    #[arg(long, default_value_t = 100.0)]
    pub(crate) rate: f64,
    /// Most subscriptions between SUBSCRIBE sent and first NOTIFY (or failure) at once.
    #[arg(long, default_value_t = 2000)]
    pub(crate) max_pending: u32,
    /// User part of the AOR: `{i}` is replaced by the user number (i % N) + OFFSET; without `{i}`
    /// every client uses the same name; a comma-separated list (`alice,bob`) is used round
    /// robin.
    #[arg(long, default_value = "user{i}")]
    pub(crate) user_template: String,
    /// N for `{i}` [default: --clients].
    #[arg(long)]
    pub(crate) user_count: Option<u32>,
    /// The first user number of `{i}` (several load generators share one user range).
    #[arg(long, default_value_t = 1)]
    pub(crate) user_offset: u32,
    /// Host part of Request-URI, To and From.
    #[arg(long, default_value = "example.com")]
    pub(crate) domain: String,
    /// Digest password (answering 401/407 challenges); none: no sign-in.
    #[arg(long)]
    pub(crate) password: Option<String>,
    /// Which digest challenge to answer when several are offered: `first`, `md5`, `sha-256`.
    #[arg(long, default_value = "first", value_parser = ["first", "md5", "sha-256"])]
    pub(crate) digest_algorithm: String,
    /// Event package.
    #[arg(long, default_value = "conference-list")]
    pub(crate) event: String,
    /// Accept header.
    #[arg(long, default_value = "application/conference-list+xml")]
    pub(crate) accept: String,
    /// Root element the first NOTIFY's body must have (`any`: no check).
    #[arg(long, default_value = "conference-list")]
    pub(crate) expect_root: String,
    /// Expires of each SUBSCRIBE (refreshed at half the granted value).
    #[arg(long, default_value_t = 600)]
    pub(crate) expires: u32,
    /// A subscription without its first NOTIFY by then failed; also the limit of every
    /// later transaction (refresh, unsubscribe).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
    /// Local addresses to bind, round robin per connection: `A,B,C` or a range `A-B`.
    #[arg(long)]
    pub(crate) sources: Option<String>,
    /// Child processes sharing the clients (each holds < 20 000 sockets).
    #[arg(long, default_value_t = 1)]
    pub(crate) processes: u32,
    /// After the opening phase, keep every subscription alive this long (SIGTERM/SIGINT end
    /// it early).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) hold: Duration,
    /// End every dialog with Expires: 0 (paced at --rate), answering the final NOTIFYs.
    #[arg(long)]
    pub(crate) unsubscribe: bool,
    /// JSON summary file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// One line per NOTIFY after a dialog's first: `<client> <unix_ns> <body_bytes> <partial 0|1>`.
    #[arg(long)]
    pub(crate) notify_log: Option<PathBuf>,
    /// Tokio worker threads per process.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: usize,
}

/// The transport of `--target`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Ws,
    Udp,
    Tcp,
}

impl Transport {
    /// The Via transport token.
    pub(crate) fn via(self) -> &'static str {
        match self {
            Transport::Ws => "WS",
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// The Contact `transport=` parameter (and the summary's name).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A parsed `--target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) transport: Transport,
    /// `HOST:PORT`.
    pub(crate) host_port: String,
    /// The WebSocket URL (WS only).
    pub(crate) url: String,
}

/// Parses `ws://HOST:PORT[/path]`, `udp:HOST:PORT`, `tcp:HOST:PORT`.
pub(crate) fn parse_target(s: &str) -> Result<Target> {
    let (transport, rest) = if let Some(rest) = s.strip_prefix("ws://") {
        (Transport::Ws, rest)
    } else if let Some(rest) = s.strip_prefix("udp:") {
        (Transport::Udp, rest.trim_start_matches("//"))
    } else if let Some(rest) = s.strip_prefix("tcp:") {
        (Transport::Tcp, rest.trim_start_matches("//"))
    } else {
        bail!("--target {s:?}: expected ws://HOST:PORT, udp:HOST:PORT or tcp:HOST:PORT");
    };
    let host_port = rest.split('/').next().unwrap_or_default();
    let Some((host, port)) = host_port.rsplit_once(':') else {
        bail!("--target {s:?}: no port");
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        bail!("--target {s:?}: expected HOST:PORT");
    }
    Ok(Target {
        transport,
        host_port: host_port.to_owned(),
        url: s.to_owned(),
    })
}

/// Parses `--sources`: `A,B,C` or an inclusive IPv4 range `A-B` (last octets, or any
/// addresses with A ≤ B); mixed forms `A,B-C` too.
pub(crate) fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: std::net::Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("--sources: {a:?} is not an IPv4 address"))?;
            let b: std::net::Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("--sources: {b:?} is not an IPv4 address"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a >= 65_536 {
                bail!("--sources: bad range {part:?}");
            }
            out.extend((a..=b).map(|n| IpAddr::V4(n.into())));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("--sources: {part:?} is not an IP address"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("--sources {s:?}: no address");
    }
    Ok(out)
}

/// The user names of `--user-template`: client i uses `users.name(i)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Users {
    /// `prefix{i}suffix`, i = (client % count) + offset.
    Numbered {
        prefix: String,
        suffix: String,
        count: u32,
        offset: u32,
    },
    /// Names used round robin (one name: everyone the same).
    List(Vec<String>),
}

impl Users {
    #[cfg(test)]
    pub(crate) fn parse(template: &str, count: u32) -> Result<Users> {
        Self::parse_from(template, count, 1)
    }

    /// The user names of `template`, numbered from `offset`.
    pub(crate) fn parse_from(template: &str, count: u32, offset: u32) -> Result<Users> {
        if let Some((prefix, suffix)) = template.split_once("{i}") {
            if count == 0 {
                bail!("--user-count must be at least 1");
            }
            if suffix.contains("{i}") {
                bail!("--user-template: {{i}} at most once");
            }
            return Ok(Users::Numbered {
                prefix: prefix.to_owned(),
                suffix: suffix.to_owned(),
                count,
                offset,
            });
        }
        let names: Vec<String> = template
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            bail!("--user-template is empty");
        }
        Ok(Users::List(names))
    }

    /// Appends client `i`'s user name to `out`.
    pub(crate) fn write(&self, i: u32, out: &mut String) {
        match self {
            Users::Numbered {
                prefix,
                suffix,
                count,
                offset,
            } => {
                use std::fmt::Write as _;
                let _ = write!(
                    out,
                    "{prefix}{}{suffix}",
                    u64::from(i % count) + u64::from(*offset)
                );
            }
            Users::List(names) => out.push_str(&names[i as usize % names.len()]),
        }
    }

    pub(crate) fn name(&self, i: u32) -> String {
        let mut s = String::new();
        self.write(i, &mut s);
        s
    }
}

/// Which digest challenge to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DigestChoice {
    First,
    Md5,
    Sha256,
}

/// Everything a process needs, derived from [`Args`] once.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) args: Args,
    pub(crate) target: Target,
    /// The resolved target address.
    pub(crate) addr: SocketAddr,
    pub(crate) users: Users,
    pub(crate) sources: Vec<IpAddr>,
    pub(crate) digest: DigestChoice,
}

impl Config {
    pub(crate) fn new(args: Args) -> Result<Config> {
        let target = parse_target(&args.target)?;
        if args.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if args.dialogs_per_connection == 0 {
            bail!("--dialogs-per-connection must be at least 1");
        }
        if !(args.rate.is_finite() && args.rate > 0.0) {
            bail!("--rate must be > 0");
        }
        if args.max_pending == 0 {
            bail!("--max-pending must be at least 1");
        }
        if args.processes == 0 {
            bail!("--processes must be at least 1");
        }
        if args.threads == 0 {
            bail!("--threads must be at least 1");
        }
        if args.timeout.is_zero() {
            bail!("--timeout must be > 0");
        }
        let users = Users::parse_from(
            &args.user_template,
            args.user_count.unwrap_or(args.clients),
            args.user_offset,
        )?;
        let sources = match &args.sources {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&target.host_port)
            .with_context(|| format!("resolve {}", target.host_port))?
            .next()
            .with_context(|| format!("{} has no address", target.host_port))?;
        for path in [&args.out, &args.notify_log].into_iter().flatten() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.is_dir()
            {
                bail!("{}: no directory {}", path.display(), dir.display());
            }
        }
        let digest = match args.digest_algorithm.as_str() {
            "md5" => DigestChoice::Md5,
            "sha-256" => DigestChoice::Sha256,
            _ => DigestChoice::First,
        };
        Ok(Config {
            args,
            target,
            addr,
            users,
            sources,
            digest,
        })
    }

    /// Connections in the whole run.
    pub(crate) fn connections(&self) -> u32 {
        self.args.clients.div_ceil(self.args.dialogs_per_connection)
    }
}

/// The clients one process runs: `[start, end)`, aligned to whole connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) index: u32,
    pub(crate) count: u32,
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Slice {
    /// Child `index` of `count`: connections split evenly, clients follow.
    pub(crate) fn of(clients: u32, per_conn: u32, index: u32, count: u32) -> Slice {
        let conns = u64::from(clients.div_ceil(per_conn));
        let c0 = conns * u64::from(index) / u64::from(count);
        let c1 = conns * u64::from(index + 1) / u64::from(count);
        let clip = |c: u64| (c * u64::from(per_conn)).min(u64::from(clients)) as u32;
        Slice {
            index,
            count,
            start: clip(c0),
            end: clip(c1),
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.end - self.start
    }
}

/// Parses `CONFLIST_LOADGEN_CHILD=<index>/<count>`.
fn child_marker() -> Result<Option<(u32, u32)>> {
    let Some(v) = std::env::var_os(CHILD_ENV) else {
        return Ok(None);
    };
    let v = v.to_string_lossy();
    let parsed = v
        .split_once('/')
        .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
        .filter(|(i, n)| i < n);
    parsed
        .map(Some)
        .with_context(|| format!("{CHILD_ENV}={v:?}: expected <index>/<count>"))
}

/// The binary's entry point.
pub(crate) fn main() -> Result<()> {
    let args = Args::parse();
    let child = child_marker()?;
    let cfg = Config::new(args)?;
    let threads = cfg.args.threads;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    match child {
        Some((index, count)) => rt.block_on(run::child(cfg, index, count)),
        None if cfg.args.processes > 1 => rt.block_on(multi::parent(cfg)),
        None => rt.block_on(run::single(cfg)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("ws://127.0.0.1:8080").unwrap();
        assert_eq!(t.transport, Transport::Ws);
        assert_eq!(t.host_port, "127.0.0.1:8080");
        let t = parse_target("ws://localhost:8072/ws").unwrap();
        assert_eq!(t.host_port, "localhost:8072");
        assert_eq!(
            parse_target("udp:127.0.0.1:5060").unwrap().transport,
            Transport::Udp
        );
        assert_eq!(
            parse_target("tcp:127.0.0.1:5060").unwrap().host_port,
            "127.0.0.1:5060"
        );
        assert!(parse_target("http://x:1").is_err());
        assert!(parse_target("udp:127.0.0.1").is_err());
        assert!(parse_target("tcp:127.0.0.1:99999").is_err());
    }

    #[test]
    fn sources() {
        let v = parse_sources("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(
            v,
            ["127.0.0.2", "127.0.0.3", "127.0.0.4"].map(|s| s.parse::<IpAddr>().unwrap())
        );
        let v = parse_sources("127.0.0.2, 127.0.0.9").unwrap();
        assert_eq!(v.len(), 2);
        let v = parse_sources("10.0.0.255-10.0.1.1,::1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[1], "10.0.1.0".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.9-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources(",").is_err());
    }

    #[test]
    fn user_templates() {
        let u = Users::parse("user{i}", 3).unwrap();
        assert_eq!(u.name(0), "user1");
        assert_eq!(u.name(2), "user3");
        assert_eq!(u.name(3), "user1");
        let u = Users::parse("u{i}x", 10).unwrap();
        assert_eq!(u.name(41), "u2x");
        let u = Users::parse("alice", 1000).unwrap();
        assert_eq!(u.name(0), "alice");
        assert_eq!(u.name(999), "alice");
        let u = Users::parse("alice,bob,carol,dave", 1).unwrap();
        assert_eq!(u.name(1), "bob");
        assert_eq!(u.name(4), "alice");
        assert!(Users::parse("u{i}", 0).is_err());
        assert!(Users::parse("{i}{i}", 2).is_err());
        assert_eq!(Users::parse_from("u{i}", 10, 501).unwrap().name(12), "u503");
        assert!(Users::parse("", 2).is_err());
    }

    #[test]
    fn slices_cover_the_clients_on_connection_boundaries() {
        for (k, d, p) in [
            (10, 1, 3),
            (1000, 7, 4),
            (5, 10, 2),
            (3, 1, 5),
            (20_001, 3, 2),
        ] {
            let mut next = 0;
            for i in 0..p {
                let s = Slice::of(k, d, i, p);
                assert_eq!(s.start, next, "{k} {d} {p}");
                assert!(s.start.is_multiple_of(d) || s.start == k);
                next = s.end;
            }
            assert_eq!(next, k);
        }
        let s = Slice::of(10, 1, 0, 1);
        assert_eq!((s.start, s.end, s.len()), (0, 10, 10));
    }
}
