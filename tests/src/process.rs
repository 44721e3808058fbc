//! The real binaries as child processes on loopback ports chosen by the OS. A process is
//! ready when it prints its `READY …` line; it is killed when its handle is dropped.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Directory of the built binaries: `CONFLIST_BIN_DIR`, else the target dir of this test.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CONFLIST_BIN_DIR") {
        return dir.into();
    }
    // target/<profile>/deps/it-<hash> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (`cargo build --workspace --bins`)",
            path.display()
        );
    }
    Ok(path)
}

/// Knobs for a test server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub min_expires: u32,
    /// Load the reference schema and demo data (`--demo-data`).
    pub demo: bool,
    /// Fixed gRPC address (a restarted server takes over its predecessor's port).
    pub grpc_listen: Option<String>,
    /// Authentication on (the binary's default). Off by default in tests that are about
    /// something else; the sign-in tests turn it on.
    pub auth: bool,
    pub extra_args: Vec<String>,
    /// Keep the server's log (standard error) in [`Server::log`]; with `CONFLIST_TEST_LOGS`
    /// it is also printed.
    pub capture_log: bool,
    /// `--drain-timeout`, given as `CONFLIST_DRAIN_TIMEOUT` so that a `--drain-timeout` in
    /// `extra_args` wins. Zero by default: a test that stops a server with subscriptions on
    /// it does not wait for proxies to move them unless it asks to.
    pub drain_timeout: Duration,
    /// Extra environment; a `RUST_LOG` here replaces the default `info`.
    pub env: Vec<(String, String)>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            min_expires: 1,
            demo: true,
            grpc_listen: None,
            auth: false,
            extra_args: Vec::new(),
            capture_log: false,
            drain_timeout: Duration::ZERO,
            env: Vec::new(),
        }
    }
}

/// A running `conflist-server`.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    /// `http://host:port` of the gRPC listener.
    pub grpc: String,
    /// `host:port` of the gRPC listener.
    pub grpc_addr: String,
    pub admin: String,
    /// Its log lines, when started with [`ServerOptions::capture_log`].
    pub log: Log,
}

/// Log lines of a process, kept as they arrive (at most [`Log::MAX_LINES`]).
#[derive(Debug, Clone, Default)]
pub struct Log {
    inner: std::sync::Arc<LogInner>,
}

#[derive(Debug, Default)]
struct LogInner {
    lines: std::sync::Mutex<Vec<String>>,
    added: tokio::sync::Notify,
    captured: std::sync::atomic::AtomicBool,
}

impl Log {
    /// Lines kept; later ones are dropped.
    pub const MAX_LINES: usize = 10_000;

    fn push(&self, line: String) {
        if let Ok(mut lines) = self.inner.lines.lock()
            && lines.len() < Self::MAX_LINES
        {
            lines.push(line);
        }
        self.inner.added.notify_waiters();
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.inner
            .lines
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The first line containing `needle`, waiting for it at most [`crate::EVENT_TIMEOUT`].
    pub async fn wait_for(&self, needle: &str) -> Result<String> {
        self.wait_until(&format!("with {needle:?}"), |l| l.contains(needle))
            .await
    }

    /// The first line `wanted` accepts, waiting for it at most [`crate::EVENT_TIMEOUT`];
    /// `what` describes it in the error.
    pub async fn wait_until(&self, what: &str, wanted: impl Fn(&str) -> bool) -> Result<String> {
        if !self
            .inner
            .captured
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            bail!("the log is not captured (ServerOptions::capture_log, spawn_proxy_logged)");
        }
        let deadline = tokio::time::Instant::now() + crate::EVENT_TIMEOUT;
        loop {
            let added = self.inner.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(line) = self.lines().into_iter().find(|l| wanted(l)) {
                return Ok(line);
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                bail!("no log line {what} within the timeout");
            }
        }
    }
}

/// A running `conflist-proxy`.
#[derive(Debug)]
pub struct Proxy {
    pub child: Child,
    pub ws_url: String,
    /// `wss://…` when the proxy serves WSS.
    pub wss_url: Option<String>,
    /// `IP:PORT` of the SIP-over-UDP listener (`--udp-listen`), when on.
    pub udp: Option<String>,
    /// `IP:PORT` of the SIP-over-TCP listener (`--tcp-listen`), when on.
    pub tcp: Option<String>,
    /// `IP:PORT` of the SIP-over-TLS listener (`--tls-listen`), when on.
    pub tls: Option<String>,
    pub admin: String,
    /// Its log lines, when started with [`spawn_proxy_logged`].
    pub log: Log,
}

/// Starts a server on `database_url` with the demo data loaded.
pub async fn spawn_server(database_url: &str, opts: &ServerOptions) -> Result<Server> {
    let mut cmd = Command::new(binary("conflist-server")?);
    cmd.args(["--database-url", database_url]);
    if opts.demo {
        cmd.arg("--demo-data");
    }
    cmd.args([
        "--grpc-listen",
        opts.grpc_listen.as_deref().unwrap_or("127.0.0.1:0"),
        "--admin-listen",
        "127.0.0.1:0",
        "--min-expires",
        &opts.min_expires.to_string(),
        "--shutdown-grace",
        "3s",
    ]);
    if !opts.auth {
        cmd.args(["--auth", "off"]);
    }
    cmd.args(&opts.extra_args);
    cmd.env(
        "CONFLIST_DRAIN_TIMEOUT",
        format!("{}ms", opts.drain_timeout.as_millis()),
    );
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    let log = Log::default();
    let (child, fields, _) =
        start_line(cmd, &["grpc", "admin"], opts.capture_log.then_some(&log)).await?;
    Ok(Server {
        child,
        grpc: format!("http://{}", fields[0]),
        grpc_addr: fields[0].clone(),
        admin: fields[1].clone(),
        log,
    })
}

/// Starts a proxy in front of `server` and waits until its gRPC session is up.
pub async fn spawn_proxy(server: &Server, extra_args: &[&str]) -> Result<Proxy> {
    spawn_proxy_to(&server.grpc, extra_args).await
}

/// Starts a proxy in front of the servers `servers` (comma-separated URLs) and waits until
/// one gRPC session is up.
pub async fn spawn_proxy_to(servers: &str, extra_args: &[&str]) -> Result<Proxy> {
    let proxy = start_proxy(servers, extra_args).await?;
    wait_ready(&proxy.admin).await?;
    Ok(proxy)
}

/// [`spawn_proxy`] with extra environment (a `RUST_LOG` there replaces the default `info`),
/// keeping the proxy's log (standard error) in [`Proxy::log`].
pub async fn spawn_proxy_logged(
    server: &Server,
    extra_args: &[&str],
    env: &[(&str, &str)],
) -> Result<Proxy> {
    let proxy = launch_proxy(&server.grpc, extra_args, env, true).await?;
    wait_ready(&proxy.admin).await?;
    Ok(proxy)
}

/// Starts a proxy without waiting for its sessions (for tests where none can come up).
pub async fn start_proxy(servers: &str, extra_args: &[&str]) -> Result<Proxy> {
    launch_proxy(servers, extra_args, &[], false).await
}

async fn launch_proxy(
    servers: &str,
    extra_args: &[&str],
    env: &[(&str, &str)],
    capture_log: bool,
) -> Result<Proxy> {
    let mut cmd = Command::new(binary("conflist-proxy")?);
    cmd.args([
        "--server",
        servers,
        "--ws-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--shutdown-grace",
        "3s",
    ]);
    cmd.args(extra_args);
    cmd.envs(env.iter().copied());
    let log = Log::default();
    let (child, fields, line) =
        start_line(cmd, &["ws", "admin"], capture_log.then_some(&log)).await?;
    Ok(Proxy {
        child,
        ws_url: fields[0].clone(),
        wss_url: field(&line, "wss"),
        udp: field(&line, "udp"),
        tcp: field(&line, "tcp"),
        tls: field(&line, "tls"),
        admin: fields[1].clone(),
        log,
    })
}

fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// Sends SIGTERM (graceful shutdown).
pub fn terminate(child: &Child) -> Result<()> {
    let pid = child.id().context("process already gone")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    Ok(())
}

async fn start_line(
    mut cmd: Command,
    keys: &[&str],
    capture: Option<&Log>,
) -> Result<(Child, Vec<String>, String)> {
    let print = std::env::var_os("CONFLIST_TEST_LOGS").is_some();
    cmd.stdout(Stdio::piped())
        .stderr(if capture.is_some() {
            Stdio::piped()
        } else if print {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    if !cmd.as_std().get_envs().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    let mut child = cmd.spawn().context("spawn")?;
    if let Some(log) = capture {
        log.inner
            .captured
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let stderr = child.stderr.take().context("no stderr")?;
        let log = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if print {
                    eprintln!("{line}");
                }
                log.push(line);
            }
        });
    }
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("process did not print READY within 30 s")??
        .context("process exited before READY (run with CONFLIST_TEST_LOGS=1 to see why)")?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let fields = keys
        .iter()
        .map(|k| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
                .with_context(|| format!("no {k}= in {line:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((child, fields, line))
}

/// Polls `/readyz` (an event we cannot subscribe to) every 20 ms for at most 10 s.
pub async fn wait_ready(admin: &str) -> Result<()> {
    for _ in 0..500 {
        if http_get_status(admin, "/readyz").await.ok() == Some(200) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("proxy at {admin} not ready within 10 s")
}

/// Minimal HTTP/1.0 GET returning the status code.
pub async fn http_get_status(addr: &str, path: &str) -> Result<u16> {
    Ok(http_get(addr, path).await?.0)
}

/// Minimal HTTP/1.0 GET returning status and body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `conflist-server user set-password USER` with the password on standard input.
pub async fn set_password(database_url: &str, user: &str, password: &str) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut child = Command::new(binary("conflist-server")?)
        .args(["--database-url", database_url, "user", "set-password", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawn conflist-server user set-password")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    stdin.write_all(format!("{password}\n").as_bytes()).await?;
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .context("set-password did not finish within 30 s")??;
    if !out.status.success() {
        bail!(
            "set-password failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let printed = String::from_utf8_lossy(&out.stdout);
    if printed.contains(password) {
        bail!("set-password printed the password: {printed}");
    }
    Ok(())
}

/// The value of the unlabelled counter or gauge `name` (e.g. `conflist_server_sessions`,
/// `conflist_proxy_notifies_total`) on the admin endpoint `addr`.
pub async fn metric(addr: &str, name: &str) -> Result<f64> {
    let (_, body) = http_get(addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name} in /metrics of {addr}"))
}
