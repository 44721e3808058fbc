//! N proxies × M servers as real processes on one test database, a pool of lean
//! SIP-over-WebSocket subscribers spread over the proxies, a driver of conference changes and
//! a checker that every subscriber ends with the database's state (issue 11's failover tests).
//!
//! The subscribers are not [`crate::SipWsClient`]s: a thousand dialogs would be a thousand
//! connections and a thousand tasks each holding a client. Here one task drives one WebSocket
//! that carries several dialogs (`dialogs_per_connection`), answers every NOTIFY 200 at once
//! and applies its document with the `document` crate, as a browser would. What each dialog
//! saw (versions, Subscription-State, the `n<seq>` subjects it was shown and when) is kept
//! for the checker.
//!
//! Every wait is for an event under a deadline: a NOTIFY applied wakes the checker; metrics
//! and `/readyz`, which cannot be subscribed to, are polled at a bounded rate.

use crate::db::TestDb;
use crate::process::{Proxy, Server, ServerOptions, http_get, spawn_server, wait_ready};
use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use sip::{HeaderName, Message, Method, Request, Response, StatusCode};
use sqlx::{Connection, Executor, PgConnection};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The proxies' `--shutdown-grace` in the cluster.
pub const PROXY_GRACE: Duration = Duration::from_secs(3);

/// How the proxies learn the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// `--server a,b,c`.
    List,
    /// `--servers-file PATH --discovery-interval 200ms` (servers can be added while running).
    File,
}

/// The shape of a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Users `sip:u0000@example.com` … .
    pub users: usize,
    /// Conferences `sip:c000@conf.example.com` …, subject `n0` at the start.
    pub conferences: usize,
    /// Conferences each user is a member of.
    pub memberships: usize,
    pub servers: usize,
    pub proxies: usize,
    /// Live subscriptions; subscription `i` is for user `i % users`.
    pub subscriptions: usize,
    /// Dialogs carried by one WebSocket connection.
    pub dialogs_per_connection: usize,
    pub discovery: Discovery,
    /// Servers reach PostgreSQL through a [`Forwarder`] (to simulate a database restart).
    pub forwarder: bool,
    /// Extra arguments for every server.
    pub server_args: Vec<String>,
    /// Extra arguments for every proxy.
    pub proxy_args: Vec<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            users: 1000,
            conferences: 100,
            memberships: 3,
            servers: 3,
            proxies: 2,
            subscriptions: 1000,
            dialogs_per_connection: 10,
            discovery: Discovery::List,
            forwarder: false,
            server_args: Vec::new(),
            proxy_args: Vec::new(),
        }
    }
}

/// The URI of user `i`.
pub fn user_uri(i: usize) -> String {
    format!("sip:u{i:04}@example.com")
}

/// The URI of conference `i`.
pub fn conference_uri(i: usize) -> String {
    format!("sip:c{i:03}@conf.example.com")
}

/// A running cluster. Dropping it kills every process and subscriber task.
#[derive(Debug)]
pub struct Cluster {
    pub spec: ClusterSpec,
    /// Index = server number; a killed server stays in place (its child has exited).
    pub servers: Vec<Server>,
    pub proxies: Vec<Proxy>,
    pub subscribers: Subscribers,
    /// The `--servers-file`, with [`Discovery::File`].
    pub servers_file: Option<PathBuf>,
    pub forwarder: Option<Forwarder>,
    /// The URL the servers use (through the forwarder when there is one).
    pub server_db_url: String,
    pub db: TestDb,
}

impl Cluster {
    /// Database, seed, servers, proxies (each with a session to every server), then every
    /// subscription established with its first full NOTIFY.
    pub async fn start(spec: ClusterSpec) -> Result<Self> {
        let db = TestDb::create().await?;
        let forwarder = if spec.forwarder {
            Some(Forwarder::start(upstream_of(&db.url)?, true).await?)
        } else {
            None
        };
        let server_db_url = match &forwarder {
            Some(f) => f.url_for(&db.url)?,
            None => db.url.clone(),
        };
        // The first server applies the schema; then the seed; then the others.
        let first = spawn_server(&server_db_url, &server_options(&spec, true)).await?;
        seed(&db, &spec).await?;
        let opts = server_options(&spec, false);
        let rest = futures_util::future::join_all(
            (1..spec.servers).map(|_| spawn_server(&server_db_url, &opts)),
        )
        .await;
        let mut servers = vec![first];
        for s in rest {
            servers.push(s?);
        }
        let servers_file = match spec.discovery {
            Discovery::File => {
                let path = std::env::temp_dir().join(format!(
                    "conflist-servers-{:016x}.txt",
                    rand::random::<u64>()
                ));
                write_servers_file(&path, &servers)?;
                Some(path)
            }
            Discovery::List => None,
        };
        let source = match &servers_file {
            Some(p) => ServerSource::File(p.clone()),
            None => ServerSource::List(
                servers
                    .iter()
                    .map(|s| s.grpc.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        };
        let proxies = futures_util::future::join_all(
            (0..spec.proxies).map(|_| spawn_cluster_proxy(&source, &spec.proxy_args)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        for p in &proxies {
            gauge_reaches(
                &p.admin,
                "conflist_proxy_upstream_sessions",
                spec.servers as f64,
                Duration::from_secs(15),
            )
            .await
            .with_context(|| format!("proxy {} did not open a session to every server", p.admin))?;
        }
        let urls: Vec<String> = proxies.iter().map(|p| p.ws_url.clone()).collect();
        let subscribers = Subscribers::start(&urls, &spec).await?;
        let cluster = Self {
            spec,
            servers,
            proxies,
            subscribers,
            servers_file,
            forwarder,
            server_db_url,
            db,
        };
        cluster
            .subscribers
            .wait_established(Duration::from_secs(40))
            .await?;
        Ok(cluster)
    }

    /// Every conference URI.
    pub fn conference_uris(&self) -> Vec<String> {
        (0..self.spec.conferences).map(conference_uri).collect()
    }

    /// Starts a change driver writing directly to the database (never through the forwarder).
    pub async fn driver(&self, per_second: u32) -> Result<ChangeDriver> {
        ChangeDriver::start(&self.db.url, self.conference_uris(), per_second).await
    }

    /// Starts one more server on the database; with [`Discovery::File`] it is appended to the
    /// servers file (written whole and renamed, so a proxy never reads half a line).
    pub async fn add_server(&mut self) -> Result<usize> {
        let server = spawn_server(&self.server_db_url, &server_options(&self.spec, false)).await?;
        self.servers.push(server);
        if let Some(path) = &self.servers_file {
            write_servers_file(path, &self.servers)?;
        }
        Ok(self.servers.len() - 1)
    }

    /// Dialog indices whose connection goes to proxy `p`.
    pub fn dialogs_of_proxy(&self, p: usize) -> Vec<usize> {
        self.subscribers.dialogs_of_proxy(p)
    }

    /// The database's true list of every user: (conference URI, subject), sorted, read as the
    /// server reads it (members joined with conferences).
    pub async fn truth(&self) -> Result<HashMap<String, Vec<(String, Option<String>)>>> {
        let mut conn = self.db.connect().await?;
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT m.user_uri, c.conference_uri, c.subject \
             FROM conflist_members m JOIN conflist_conferences c USING (conference_uri) \
             ORDER BY m.user_uri, c.conference_uri",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await.ok();
        let mut out: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
        for (user, conf, subject) in rows {
            out.entry(user).or_default().push((conf, subject));
        }
        Ok(out)
    }

    /// Waits (woken by every applied NOTIFY, at most `deadline`) until every dialog that
    /// `include` selects holds the database's list, then reports what the dialogs saw.
    /// Call after the driver stopped.
    pub async fn check(
        &self,
        changes: &[Change],
        include: &dyn Fn(usize) -> bool,
        deadline: Duration,
    ) -> Result<Report> {
        let truth = self.truth().await?;
        let started = Instant::now();
        let until = started + deadline;
        let shared = &self.subscribers.shared;
        let included: Vec<usize> = (0..shared.dialogs.len()).filter(|d| include(*d)).collect();
        let mut mismatched;
        loop {
            let progressed = shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            mismatched = Vec::new();
            for &d in &included {
                let ds = lock(&shared.dialogs[d]);
                let want = truth.get(&ds.user).map_or(&[][..], Vec::as_slice);
                if !ds.complete || ds.list() != want {
                    mismatched.push(d);
                }
            }
            if mismatched.is_empty() || tokio::time::timeout_at(until, progressed).await.is_err() {
                break;
            }
        }
        let converged_after = started.elapsed();
        let mut report = Report {
            dialogs_checked: included.len(),
            converged: mismatched.is_empty(),
            converged_after,
            changes: changes.len(),
            ..Report::default()
        };
        for &d in mismatched.iter().take(5) {
            let ds = lock(&shared.dialogs[d]);
            report.mismatched.push(format!(
                "dialog {d} ({}, proxy {}): holds {:?} (version {:?}, {} full documents, \
                 complete {}, last NOTIFY {:?} before the check, {}), database {:?}",
                ds.user,
                ds.proxy,
                ds.list(),
                ds.version,
                ds.fulls,
                ds.complete,
                ds.last_notify.map(|t| started.saturating_duration_since(t)),
                ds.state,
                truth.get(&ds.user)
            ));
        }
        report.mismatched_count = mismatched.len();
        // Changes by conference, in commit order.
        let mut by_conf: HashMap<&str, Vec<&Change>> = HashMap::new();
        for c in changes {
            by_conf.entry(c.conference.as_str()).or_default().push(c);
        }
        for &d in &included {
            let ds = lock(&shared.dialogs[d]);
            report.notifies += ds.notifies;
            report.regressions += ds.regressions;
            if let Some((state, _)) = &ds.terminated {
                report.terminated_count += 1;
                if report.terminated.len() < 10 {
                    report
                        .terminated
                        .push(format!("dialog {d} ({}): {state}", ds.user));
                }
            }
            if ds.closed.is_some() {
                report.closed += 1;
            }
            for e in ds.errors.iter().take(3) {
                if report.errors.len() < 20 {
                    report.errors.push(format!("dialog {d} ({}): {e}", ds.user));
                }
            }
            report.error_count += ds.errors.len();
            let Some(list) = truth.get(&ds.user) else {
                continue;
            };
            for (conf, _) in list {
                let seen = ds.observed.get(conf).map_or(&[][..], Vec::as_slice);
                for change in by_conf.get(conf.as_str()).into_iter().flatten() {
                    match seen.iter().find(|(seq, _)| *seq >= change.seq) {
                        Some((_, at)) => {
                            let behind = at.saturating_duration_since(change.committed);
                            if behind > report.longest_behind {
                                report.longest_behind = behind;
                                report.longest_behind_what = format!(
                                    "dialog {d} ({}) saw n{} on {conf}",
                                    ds.user, change.seq
                                );
                            }
                        }
                        None => report.missing += 1,
                    }
                }
            }
        }
        Ok(report)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(path) = &self.servers_file {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Options of a cluster server; only the first applies the schema (`migrate`): DDL while
/// the change driver writes can deadlock with its UPDATEs.
fn server_options(spec: &ClusterSpec, migrate: bool) -> ServerOptions {
    // A small pool per server: a cluster test runs up to four servers next to other tests,
    // all on one PostgreSQL (max_connections 100 by default), and 1 000 subscriptions need
    // only a few connections each.
    let mut extra_args = vec!["--db-max-connections".to_owned(), "6".to_owned()];
    if migrate {
        extra_args.push("--migrate".to_owned());
    }
    extra_args.extend(spec.server_args.iter().cloned());
    ServerOptions {
        demo: false,
        extra_args,
        // Long enough for the proxies to move every subscription away on SIGTERM (they
        // usually finish in well under a second).
        drain_timeout: Duration::from_secs(10),
        ..ServerOptions::default()
    }
}

fn write_servers_file(path: &std::path::Path, servers: &[Server]) -> Result<()> {
    let mut text = String::from("# conflist servers (failover test)\n");
    for s in servers {
        text.push_str(&s.grpc);
        text.push('\n');
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Users, conferences and memberships: user `u` is in conferences `(u + k·stride) mod C`.
async fn seed(db: &TestDb, spec: &ClusterSpec) -> Result<()> {
    let mut conn = db.connect().await?;
    let confs: Vec<String> = (0..spec.conferences)
        .map(|i| format!("('{}', 'Conference {i}', 'n0')", conference_uri(i)))
        .collect();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject) VALUES {}",
        confs.join(",")
    )))
    .await
    .context("seed conferences")?;
    let stride = (spec.conferences / spec.memberships.max(1)).max(1);
    let mut members = BTreeSet::new();
    for u in 0..spec.users {
        for k in 0..spec.memberships {
            members.insert(((u * 7 + k * stride) % spec.conferences, u));
        }
    }
    for chunk in members.into_iter().collect::<Vec<_>>().chunks(2000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(c, u)| format!("('{}', '{}')", conference_uri(*c), user_uri(*u)))
            .collect();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO conflist_members (conference_uri, user_uri) VALUES {}",
            values.join(",")
        )))
        .await
        .context("seed members")?;
    }
    conn.close().await.ok();
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Proxies

/// Where a cluster proxy finds its servers.
#[derive(Debug, Clone)]
pub enum ServerSource {
    /// Comma-separated gRPC URLs.
    List(String),
    /// A file of URLs, re-read every 200 ms.
    File(PathBuf),
}

/// Starts a proxy ([`crate::process::start_proxy`]: loopback listeners, a 3 s
/// [`PROXY_GRACE`]) with the cluster's limits (one client address carries every
/// subscriber); waits for `/readyz`.
pub async fn spawn_cluster_proxy(source: &ServerSource, extra: &[String]) -> Result<Proxy> {
    let mut args: Vec<String> = Vec::new();
    let servers = match source {
        ServerSource::List(list) => list.as_str(),
        ServerSource::File(path) => {
            args.extend([
                "--servers-file".to_owned(),
                path.display().to_string(),
                "--discovery-interval".to_owned(),
                "200ms".to_owned(),
            ]);
            ""
        }
    };
    args.extend(
        [
            "--max-subscribes-per-address",
            "1000000",
            "--max-connections-per-address",
            "100000",
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = crate::process::start_proxy(servers, &args).await?;
    wait_ready(&proxy.admin).await?;
    Ok(proxy)
}

// ---------------------------------------------------------------------------------------
// Metrics

/// The `/metrics` text of `addr`.
pub async fn metrics_text(addr: &str) -> Result<String> {
    let (status, body) = http_get(addr, "/metrics").await?;
    if status != 200 {
        bail!("/metrics of {addr} answered {status}");
    }
    Ok(body)
}

/// The sum of every series named exactly `name` (any labels) whose labels contain `label`
/// (e.g. `reason="rebalance"`; empty: all), or None when there is no such series.
pub fn sum_series(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        if series != name {
            continue;
        }
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => ("", rest),
        };
        if !label.is_empty() && !labels.contains(label) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// [`sum_series`] of `addr`'s `/metrics`; an error when the family is absent.
pub async fn metric_sum(addr: &str, name: &str, label: &str) -> Result<f64> {
    let text = metrics_text(addr).await?;
    sum_series(&text, name, label)
        .with_context(|| format!("no {name}{{{label}}} in /metrics of {addr}"))
}

/// Polls the gauge `name` on `addr` every 50 ms until it equals `want`, at most `within`.
pub async fn gauge_reaches(addr: &str, name: &str, want: f64, within: Duration) -> Result<()> {
    let until = Instant::now() + within;
    let mut last = None;
    loop {
        last = metric_sum(addr, name, "").await.ok().or(last);
        if last == Some(want) {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("{name} on {addr} is {last:?}, not {want}, after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Subscribers

/// What one dialog saw.
#[derive(Debug, Default)]
pub struct DialogState {
    pub user: String,
    /// The proxy its connection goes to.
    pub proxy: usize,
    pub established: bool,
    /// The list as applied, sorted by entity.
    pub conferences: Vec<document::Conference>,
    /// The last document version received.
    pub version: Option<u64>,
    /// False while the last document applied says `complete="false"`.
    pub complete: bool,
    pub notifies: usize,
    /// Full documents received (the first, and one per re-attach).
    pub fulls: usize,
    /// When the last NOTIFY arrived.
    pub last_notify: Option<Instant>,
    /// The last Subscription-State.
    pub state: String,
    /// The first `terminated…` Subscription-State and when it arrived.
    pub terminated: Option<(String, Instant)>,
    /// When the connection closed.
    pub closed: Option<Instant>,
    /// Version gaps, documents that do not parse or apply, SUBSCRIBE failures.
    pub errors: Vec<String>,
    /// Per conference, each `n<seq>` subject shown (when it changed) and when.
    pub observed: HashMap<String, Vec<(u64, Instant)>>,
    /// A conference shown with an older `n<seq>` than before.
    pub regressions: usize,
}

impl DialogState {
    /// (conference, subject) of what the dialog holds.
    pub fn list(&self) -> Vec<(String, Option<String>)> {
        self.conferences
            .iter()
            .map(|c| (c.entity.clone(), c.description.subject.clone()))
            .collect()
    }

    fn apply(&mut self, notify: &Request, now: Instant) {
        self.notifies += 1;
        self.last_notify = Some(now);
        let state = notify
            .headers
            .get(&HeaderName::SUBSCRIPTION_STATE)
            .unwrap_or_default()
            .to_owned();
        if state.starts_with("terminated") && self.terminated.is_none() {
            self.terminated = Some((state.clone(), now));
        }
        self.state = state;
        if notify.body.is_empty() {
            return;
        }
        let doc = match document::ConferenceList::parse(&notify.body) {
            Ok(doc) => doc,
            Err(e) => {
                self.errors.push(format!("unparseable document: {e}"));
                return;
            }
        };
        if doc.state == document::DocumentState::Full {
            self.fulls += 1;
        }
        let expected = self.version.map_or(0, |v| v + 1);
        if doc.version != expected {
            self.errors.push(format!(
                "version {} ({:?}) after {:?}",
                doc.version, doc.state, self.version
            ));
        }
        match document::apply(&self.conferences, self.version, &doc) {
            Ok(list) => self.conferences = list,
            Err(e) => self
                .errors
                .push(format!("applying version {}: {e}", doc.version)),
        }
        self.version = Some(doc.version);
        self.complete = doc.complete;
        self.established = true;
        for entry in &doc.entries {
            let document::Entry::Full(c) = entry else {
                continue;
            };
            let Some(seq) = c
                .description
                .subject
                .as_deref()
                .and_then(|s| s.strip_prefix('n'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let seen = self.observed.entry(c.entity.clone()).or_default();
            match seen.last() {
                Some((last, _)) if *last == seq => {}
                Some((last, _)) if *last > seq => {
                    self.regressions += 1;
                    seen.push((seq, now));
                }
                _ => seen.push((seq, now)),
            }
        }
    }
}

/// State shared by the connection tasks and the checker.
#[derive(Debug)]
pub struct Shared {
    pub dialogs: Vec<Mutex<DialogState>>,
    /// Woken after every NOTIFY applied and every connection closed.
    pub progress: Notify,
    /// NOTIFYs for a Call-ID no dialog of the connection has.
    pub strays: AtomicUsize,
}

/// The subscriber pool: connection `c` goes to proxy `c % P` and carries dialogs
/// `c·K … c·K+K-1`.
#[derive(Debug)]
pub struct Subscribers {
    pub shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(m: &Mutex<DialogState>) -> std::sync::MutexGuard<'_, DialogState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

static CLIENT_SEQ: AtomicU64 = AtomicU64::new(0);

impl Subscribers {
    /// Connects every connection and sends its SUBSCRIBEs (not waiting for them).
    pub async fn start(proxies: &[String], spec: &ClusterSpec) -> Result<Self> {
        let per = spec.dialogs_per_connection.max(1);
        let connections = spec.subscriptions.div_ceil(per);
        let dialogs = (0..spec.subscriptions)
            .map(|d| {
                Mutex::new(DialogState {
                    user: user_uri(d % spec.users),
                    proxy: (d / per) % proxies.len(),
                    complete: true,
                    ..DialogState::default()
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            dialogs,
            progress: Notify::new(),
            strays: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        for c in 0..connections {
            let url = proxies[c % proxies.len()].clone();
            let members: Vec<usize> = (c * per..((c + 1) * per).min(spec.subscriptions)).collect();
            let ws = connect_ws(&url).await?;
            let users: Vec<(usize, String)> = members
                .iter()
                .map(|&d| (d, user_name(d % spec.users)))
                .collect();
            tasks.push(tokio::spawn(run_connection(ws, users, shared.clone())));
        }
        Ok(Self { shared, tasks })
    }

    /// Waits until every dialog has applied its first document, at most `within`.
    pub async fn wait_established(&self, within: Duration) -> Result<()> {
        let until = Instant::now() + within;
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let mut missing = 0;
            let mut failed = Vec::new();
            for (d, m) in self.shared.dialogs.iter().enumerate() {
                let ds = lock(m);
                if !ds.established {
                    missing += 1;
                    if (ds.closed.is_some() || !ds.errors.is_empty()) && failed.len() < 5 {
                        failed.push(format!(
                            "dialog {d} ({}): {:?} closed {}",
                            ds.user,
                            ds.errors,
                            ds.closed.is_some()
                        ));
                    }
                }
            }
            if missing == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(until, progressed).await.is_err() {
                bail!("{missing} subscriptions not established within {within:?}: {failed:?}");
            }
        }
    }

    /// Dialog indices on proxy `p`.
    pub fn dialogs_of_proxy(&self, p: usize) -> Vec<usize> {
        (0..self.shared.dialogs.len())
            .filter(|d| lock(&self.shared.dialogs[*d]).proxy == p)
            .collect()
    }

    /// Runs `f` on dialog `d`'s state.
    pub fn with<T>(&self, d: usize, f: impl FnOnce(&DialogState) -> T) -> T {
        f(&lock(&self.shared.dialogs[d]))
    }

    /// Waits until every dialog in `dialogs` satisfies `done`, woken by NOTIFYs, at most
    /// `within`; returns how many do not.
    pub async fn wait_all(
        &self,
        dialogs: &[usize],
        done: impl Fn(&DialogState) -> bool,
        within: Duration,
    ) -> usize {
        let until = Instant::now() + within;
        loop {
            let progressed = self.shared.progress.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            let left = dialogs
                .iter()
                .filter(|d| !done(&lock(&self.shared.dialogs[**d])))
                .count();
            if left == 0 || tokio::time::timeout_at(until, progressed).await.is_err() {
                return left;
            }
        }
    }
}

fn user_name(i: usize) -> String {
    format!("u{i:04}")
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn connect_ws(url: &str) -> Result<WsStream> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("connect {url}"))?;
    Ok(ws)
}

/// Most SUBSCRIBE attempts per dialog (503 → try again after Retry-After, at most 1 s).
const SUBSCRIBE_ATTEMPTS: u32 = 30;

fn subscribe_text(host: &str, branch: u64, user: &str, call_id: &str, tag: &str) -> String {
    format!(
        "SUBSCRIBE sip:{user}@example.com SIP/2.0\r\n\
         Via: SIP/2.0/WSS {host}.invalid;branch=z9hG4bK{host}x{branch}\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:{user}@example.com>\r\n\
         From: <sip:{user}@example.com>;tag={tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:{host}@{host}.invalid;transport=ws>\r\n\
         Event: conference-list\r\n\
         Accept: application/conference-list+xml\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A connection's SIP state: Via host, branch counter, Call-ID → dialog, attempts.
struct ConnState {
    host: String,
    branch: u64,
    by_call: HashMap<String, usize>,
    attempts: HashMap<usize, u32>,
}

impl ConnState {
    /// A new initial SUBSCRIBE for dialog `d` (a fresh Call-ID per attempt).
    fn subscribe(&mut self, d: usize, user: &str) -> String {
        self.branch += 1;
        let attempt = self.attempts.entry(d).or_insert(0);
        *attempt += 1;
        let call_id = format!("{}-d{d}-a{attempt}", self.host);
        self.by_call.insert(call_id.clone(), d);
        let tag = format!("t{}d{d}", self.host);
        subscribe_text(&self.host, self.branch, user, &call_id, &tag)
    }
}

/// One WebSocket: SUBSCRIBE each dialog (again after a 503), answer every NOTIFY 200, apply.
async fn run_connection(mut ws: WsStream, users: Vec<(usize, String)>, shared: Arc<Shared>) {
    let mut conn = ConnState {
        host: format!("h{:x}", CLIENT_SEQ.fetch_add(1, Ordering::Relaxed)),
        branch: 0,
        by_call: HashMap::new(),
        attempts: HashMap::new(),
    };
    let mut retries: Vec<(Instant, usize, String)> = Vec::new();
    for (d, user) in &users {
        let text = conn.subscribe(*d, user);
        if ws.send(Ws::Text(text.into())).await.is_err() {
            break;
        }
    }
    let user_of: HashMap<usize, String> = users.iter().cloned().collect();
    loop {
        let next_retry = retries.iter().map(|r| r.0).min();
        let msg = tokio::select! {
            m = ws.next() => m,
            () = async {
                match next_retry {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = Instant::now();
                let due: Vec<_> = retries.iter().filter(|r| r.0 <= now).cloned().collect();
                retries.retain(|r| r.0 > now);
                for (_, d, user) in due {
                    let text = conn.subscribe(d, &user);
                    if ws.send(Ws::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                continue;
            }
        };
        let raw = match msg {
            Some(Ok(Ws::Text(t))) => t.as_bytes().to_vec(),
            Some(Ok(Ws::Binary(b))) => b.to_vec(),
            Some(Ok(Ws::Close(_)) | Err(_)) | None => break,
            Some(Ok(_)) => continue,
        };
        let now = Instant::now();
        let Ok(message) = sip::parse_message(&raw) else {
            for (d, _) in &users {
                lock(&shared.dialogs[*d]).errors.push(format!(
                    "unparseable SIP: {}",
                    String::from_utf8_lossy(&raw)
                ));
            }
            continue;
        };
        match message {
            Message::Request(req) => {
                let call_id = req.headers.get(&HeaderName::CALL_ID).unwrap_or_default();
                let dialog = conn.by_call.get(call_id).copied();
                let status = match (&req.method, dialog) {
                    (Method::Notify, Some(_)) => StatusCode::OK,
                    (Method::Notify, None) => StatusCode::new(481).unwrap_or(StatusCode::OK),
                    _ => StatusCode::new(405).unwrap_or(StatusCode::OK),
                };
                let resp = Response::for_request(&req, status);
                if ws
                    .send(Ws::Text(
                        String::from_utf8_lossy(&resp.to_bytes())
                            .into_owned()
                            .into(),
                    ))
                    .await
                    .is_err()
                {
                    break;
                }
                match (req.method == Method::Notify, dialog) {
                    (true, Some(d)) => {
                        lock(&shared.dialogs[d]).apply(&req, now);
                        shared.progress.notify_waiters();
                    }
                    (true, None) => {
                        shared.strays.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            Message::Response(resp) => {
                let call_id = resp.headers.get(&HeaderName::CALL_ID).unwrap_or_default();
                let Some(&d) = conn.by_call.get(call_id) else {
                    continue;
                };
                let code = resp.status.as_u16();
                if code == 200 {
                    continue;
                }
                let tries = conn.attempts.get(&d).copied().unwrap_or(0);
                if code == 503 && tries < SUBSCRIBE_ATTEMPTS {
                    let after = resp
                        .headers
                        .get(&HeaderName::RETRY_AFTER)
                        .and_then(|v| v.split(';').next())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1)
                        .clamp(0, 1);
                    let delay = Duration::from_millis(200).max(Duration::from_secs(after) / 2);
                    let user = user_of.get(&d).cloned().unwrap_or_default();
                    retries.push((now + delay, d, user));
                } else {
                    lock(&shared.dialogs[d])
                        .errors
                        .push(format!("SUBSCRIBE answered {code} {}", resp.reason));
                    shared.progress.notify_waiters();
                }
            }
        }
    }
    let now = Instant::now();
    for (d, _) in &users {
        lock(&shared.dialogs[*d]).closed = Some(now);
    }
    shared.progress.notify_waiters();
}

// ---------------------------------------------------------------------------------------
// Change driver

/// One committed change: conference `conference` got subject `n<seq>`.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: u64,
    pub conference: String,
    /// When the UPDATE's commit returned.
    pub committed: Instant,
}

/// What a driver did.
#[derive(Debug, Default)]
pub struct Driven {
    pub changes: Vec<Change>,
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl Driven {
    /// Committed changes per second.
    pub fn rate(&self) -> f64 {
        self.changes.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Updates a random conference's subject to `n<seq>` at a steady rate until stopped.
#[derive(Debug)]
pub struct ChangeDriver {
    stop: watch::Sender<bool>,
    committed: watch::Receiver<u64>,
    task: JoinHandle<Driven>,
}

impl ChangeDriver {
    /// Starts writing `per_second` changes a second to the database at `url`.
    pub async fn start(url: &str, conferences: Vec<String>, per_second: u32) -> Result<Self> {
        if conferences.is_empty() || per_second == 0 {
            bail!("nothing to drive");
        }
        let url = url.to_owned();
        let mut conn = PgConnection::connect(&url).await?;
        let (stop, mut stop_rx) = watch::channel(false);
        let (count_tx, committed) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut out = Driven::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                if *stop_rx.borrow() {
                    break;
                }
                seq += 1;
                let conf = conferences[rand::random_range(0..conferences.len())].clone();
                let result = sqlx::query(
                    "UPDATE conflist_conferences SET subject = $1 WHERE conference_uri = $2",
                )
                .bind(format!("n{seq}"))
                .bind(&conf)
                .execute(&mut conn)
                .await;
                match result {
                    Ok(_) => {
                        out.changes.push(Change {
                            seq,
                            conference: conf,
                            committed: Instant::now(),
                        });
                        count_tx.send_replace(out.changes.len() as u64);
                    }
                    Err(e) => {
                        out.errors.push(format!("n{seq}: {e}"));
                        if let Ok(c) = PgConnection::connect(&url).await {
                            conn = c;
                        }
                    }
                }
            }
            out.elapsed = started.elapsed();
            conn.close().await.ok();
            out
        });
        Ok(Self {
            stop,
            committed,
            task,
        })
    }

    /// Changes committed so far.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Waits until `n` changes in all are committed, at most `within`.
    pub async fn wait_committed(&mut self, n: u64, within: Duration) -> Result<()> {
        let waited = tokio::time::timeout(within, self.committed.wait_for(|c| *c >= n))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => bail!("driver stopped"),
            Err(_) => bail!(
                "driver committed {} of {n} within {within:?}",
                self.committed()
            ),
        }
    }

    /// Stops and returns what was committed.
    pub async fn stop(self) -> Result<Driven> {
        self.stop.send_replace(true);
        Ok(self.task.await?)
    }
}

// ---------------------------------------------------------------------------------------
// Report

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub dialogs_checked: usize,
    pub converged: bool,
    /// From the start of the check (the driver stopped) to convergence or the deadline.
    pub converged_after: Duration,
    pub mismatched_count: usize,
    /// A few dialogs that did not converge.
    pub mismatched: Vec<String>,
    pub error_count: usize,
    /// A few version gaps and document errors.
    pub errors: Vec<String>,
    pub terminated_count: usize,
    /// A few terminated dialogs.
    pub terminated: Vec<String>,
    pub closed: usize,
    /// Changes to a member's conference the member never saw (nor anything later).
    pub missing: usize,
    pub regressions: usize,
    pub notifies: usize,
    pub changes: usize,
    /// The longest time from a change's commit until a member dialog showed it (or later).
    pub longest_behind: Duration,
    pub longest_behind_what: String,
}

impl Report {
    /// True when every checked dialog converged with contiguous versions, none terminated,
    /// none closed, and no change went missing.
    pub fn clean(&self) -> bool {
        self.converged
            && self.error_count == 0
            && self.terminated_count == 0
            && self.closed == 0
            && self.missing == 0
    }

    /// Prints `<label>: longest behind = … ms` and the counts; panics unless [`Self::clean`].
    pub fn assert_clean(&self, label: &str) {
        self.print(label);
        assert!(self.clean(), "{label}: {self:#?}");
    }

    /// Prints the summary lines.
    pub fn print(&self, label: &str) {
        println!(
            "{label}: longest behind = {} ms ({})",
            self.longest_behind.as_millis(),
            self.longest_behind_what
        );
        println!(
            "{label}: {} dialogs, {} changes, {} NOTIFYs, converged {} in {} ms after the \
             driver stopped, {} mismatched, {} version/document errors, {} terminated, {} \
             connections' dialogs closed, {} missing, {} regressions",
            self.dialogs_checked,
            self.changes,
            self.notifies,
            self.converged,
            self.converged_after.as_millis(),
            self.mismatched_count,
            self.error_count,
            self.terminated_count,
            self.closed,
            self.missing,
            self.regressions
        );
    }
}

// ---------------------------------------------------------------------------------------
// TCP forwarder (a PostgreSQL "restart" without touching the shared PostgreSQL)

/// A TCP forwarder to PostgreSQL: [`Forwarder::down`] drops every forwarded connection and
/// closes the listening socket (new connections are refused), [`Forwarder::up`] listens again
/// on the same port.
#[derive(Debug)]
pub struct Forwarder {
    pub addr: SocketAddr,
    ctl: watch::Sender<(bool, u64)>,
    /// Connections forwarded so far.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a `postgres://` URL (port 5432 when absent).
pub fn upstream_of(url: &str) -> Result<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.is_empty() {
        bail!("no host in {url}");
    }
    Ok(if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    })
}

fn bind_reuse(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Forwarder {
    /// A forwarder on a free loopback port to `upstream`, listening when `up`.
    pub async fn start(upstream: String, up: bool) -> Result<Self> {
        let probe = bind_reuse("127.0.0.1:0".parse()?)?;
        let addr = probe.local_addr()?;
        let mut listener = up.then_some(probe);
        let (ctl, mut rx) = watch::channel((up, 0u64));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let (up, epoch) = *rx.borrow_and_update();
                if !up {
                    listener = None;
                } else if listener.is_none() {
                    // The port was ours a moment ago; retry briefly if the kernel still holds it.
                    for _ in 0..100 {
                        if let Ok(l) = bind_reuse(addr) {
                            listener = Some(l);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let Some(l) = &listener else {
                    if rx.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                tokio::select! {
                    accepted = l.accept() => {
                        if let Ok((client, _)) = accepted {
                            count.fetch_add(1, Ordering::Relaxed);
                            tokio::spawn(pipe(client, upstream.clone(), rx.clone(), epoch));
                        }
                    }
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Self {
            addr,
            ctl,
            accepted,
            task,
        })
    }

    /// `url` with its host and port replaced by the forwarder's.
    pub fn url_for(&self, url: &str) -> Result<String> {
        let upstream = upstream_of(url)?;
        if !url.contains(&upstream) {
            bail!("cannot rewrite {url}: spell its port");
        }
        Ok(url.replacen(&upstream, &self.addr.to_string(), 1))
    }

    /// Kills every forwarded connection and refuses new ones.
    pub fn down(&self) {
        self.ctl.send_modify(|(up, epoch)| {
            *up = false;
            *epoch += 1;
        });
    }

    /// Accepts connections again.
    pub fn up(&self) {
        self.ctl.send_modify(|(up, _)| *up = true);
    }
}

async fn pipe(
    mut client: TcpStream,
    upstream: String,
    mut rx: watch::Receiver<(bool, u64)>,
    epoch: u64,
) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = rx.wait_for(|(_, e)| *e != epoch) => {}
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers for the tests

/// Kills the server `i` with SIGKILL and waits for it to exit.
pub async fn kill_9(server: &mut Server) -> Result<()> {
    server.child.start_kill()?;
    tokio::time::timeout(Duration::from_secs(10), server.child.wait())
        .await
        .context("killed server did not exit")??;
    Ok(())
}

/// A per-server count of `conflist_server_subscriptions` (None for a server that does not
/// answer, e.g. killed).
pub async fn subscriptions_per_server(servers: &[Server]) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for s in servers {
        out.push(
            metric_sum(&s.admin, "conflist_server_subscriptions", "")
                .await
                .ok(),
        );
    }
    out
}

/// Sums `name{label}` over `addrs`, counting an address that does not answer or lacks the
/// family as 0; also returns how many lacked it.
pub async fn sum_over(addrs: &[String], name: &str, label: &str) -> (f64, usize) {
    let mut total = 0.0;
    let mut absent = 0;
    for a in addrs {
        match metric_sum(a, name, label).await {
            Ok(v) => total += v,
            Err(_) => absent += 1,
        }
    }
    (total, absent)
}
