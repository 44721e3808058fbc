//! SIP over UDP and TCP with a third-party client: sipp (Debian `sip-tester`;
//! `scripts/setup` installs it) runs the scenarios in `tests/sipp/` against the proxy's
//! `--udp-listen` / `--tcp-listen` listeners, signing in with digest. sipp missing is a
//! failure, not a skip.
//!
//! sipp joins every `WWW-Authenticate` of a 401 into one string and answers the first
//! `algorithm=` in it; before 3.7.3 (Debian 12 ships 3.6.1) it speaks only MD5. So the
//! server here offers MD5 first (`--auth-algorithms MD5,SHA-256`): with the default
//! `SHA-256,MD5`, sipp 3.6 gives up with "authentication must use MD5 or AKAv1-MD5".

use conflist_tests::process::metric;
use conflist_tests::tls::test_dir;
use conflist_tests::{
    EVENT_TIMEOUT, Proxy, Server, ServerOptions, TestDb, set_password, spawn_proxy, spawn_server,
};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::Command;
use tokio::time::Instant;

const ALICE_PASSWORD: &str = "sipp alice password 7";
/// sipp's own global timeout (`-timeout`, a failure with `-timeout_error`); every `<recv>`
/// of the scenarios waits at most 10 s.
const SIPP_TIMEOUT: &str = "20s";
/// Our bound on the sipp process, above its own timeout.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// sipp's `-t`: one socket for the call.
    fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    fn listener(self, proxy: &Proxy) -> String {
        let (addr, name) = match self {
            Transport::Udp => (&proxy.udp, "udp"),
            Transport::Tcp => (&proxy.tcp, "tcp"),
        };
        addr.clone()
            .unwrap_or_else(|| panic!("the proxy's READY line has no {name}="))
    }
}

/// A database with alice's password, a server with sign-in on (MD5 first) and a proxy with
/// UDP and TCP listeners, sharing the proxy-hop secret like a production pair.
struct Setup {
    proxy: Proxy,
    server: Server,
    _db: TestDb,
    dir: PathBuf,
}

async fn setup() -> Setup {
    let db = TestDb::create().await.expect("test database");
    let dir = test_dir("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let grpc = dir.join("grpc.secret");
    std::fs::write(&grpc, "proxy-hop-secret\n").unwrap();
    let grpc = grpc.to_str().unwrap();
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            auth: true,
            extra_args: [
                "--auth-algorithms",
                "MD5,SHA-256",
                "--grpc-secret-file",
                grpc,
            ]
            .map(str::to_owned)
            .to_vec(),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("server");
    // Demo data (and so the credentials table) exists once the server is READY.
    set_password(&db.url, "alice", ALICE_PASSWORD)
        .await
        .unwrap();
    let proxy = spawn_proxy(
        &server,
        &[
            "--grpc-secret-file",
            grpc,
            "--udp-listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
        ],
    )
    .await
    .expect("proxy");
    Setup {
        proxy,
        server,
        _db: db,
        dir,
    }
}

/// The path of a committed scenario.
fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp")
        .join(format!("{name}.xml"))
}

/// What a finished sipp run left behind.
struct Run {
    status: ExitStatus,
    report: String,
}

/// Runs `scenario` once (`-m 1`) as alice against `target`, its files in `dir`.
async fn sipp(scenario: &Path, transport: Transport, target: &str, dir: &Path) -> Run {
    let errors = dir.join("sipp-errors.log");
    let messages = dir.join("sipp-messages.log");
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario)
        .args(["-t", transport.sipp_mode(), "-m", "1"])
        // Headers say 127.0.0.1 and the socket is bound to it; the port is the first free
        // one from 5060 (sipp's default search).
        .args(["-i", "127.0.0.1", "-bind_local"])
        .args(["-s", "alice", "-au", "alice", "-ap", ALICE_PASSWORD])
        // The digest uri is the Request-URI of the SUBSCRIBE (RFC 3261 §22.4), not sipp's
        // default remote ip:port.
        .args(["-auth_uri", "alice@example.com"])
        // A failed call is not a phone call: no BYE; an unexpected message fails it.
        .args(["-default_behaviors", "all,-bye", "-nostdin"])
        .args(["-timeout", SIPP_TIMEOUT, "-timeout_error"])
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&errors)
        .arg("-trace_msg")
        .arg("-message_file")
        .arg(&messages)
        .arg(target)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "sipp is not installed: apt-get install sip-tester (scripts/setup installs it as root)"
        ),
        Err(e) => panic!("spawn sipp: {e}"),
    };
    let out = tokio::time::timeout(PROCESS_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("sipp did not exit within {PROCESS_TIMEOUT:?}"))
        .expect("wait for sipp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = format!(
        "--- sipp's last screen ---\n{}\n--- stderr ---\n{}\n--- {} ---\n{}\n--- {} ---\n{}",
        last_screen(&stdout),
        String::from_utf8_lossy(&out.stderr),
        errors.display(),
        read_or_absent(&errors),
        messages.display(),
        read_or_absent(&messages),
    );
    Run {
        status: out.status,
        report,
    }
}

/// The last "Scenario Screen" sipp printed (its per-message counters), without the
/// terminal escapes.
fn last_screen(stdout: &str) -> String {
    let plain: String = strip_escapes(stdout);
    match plain.rfind("Scenario Screen") {
        Some(i) => plain[plain[..i].rfind('\n').map_or(0, |n| n + 1)..].to_owned(),
        None => plain,
    }
}

fn strip_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (@..~).
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn read_or_absent(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"))
}

async fn gauge_reaches(admin: &str, name: &str, want: f64) -> Result<(), String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let got = metric(admin, name).await.ok();
        if got == Some(want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} is {got:?}, not {want}, after {EVENT_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the scenario `name` over `transport` against a fresh system; sipp must exit 0
/// (every message of the scenario came, its checks held, no unexpected message).
async fn run(name: &str, transport: Transport) -> Setup {
    let s = setup().await;
    let target = transport.listener(&s.proxy);
    let run = sipp(&scenario(name), transport, &target, &s.dir).await;
    assert!(
        run.status.success(),
        "sipp {name}.xml over {transport:?} to {target} exited with {} \
         (1: the call failed; 255: a fatal error or the global timeout)\n{}",
        run.status,
        run.report
    );
    s
}

#[tokio::test]
async fn sipp_subscribes_over_udp() {
    run("subscribe", Transport::Udp).await;
}

#[tokio::test]
async fn sipp_subscribes_over_tcp() {
    run("subscribe", Transport::Tcp).await;
}

/// After the un-SUBSCRIBE and the final NOTIFY, neither the proxy nor the server keeps the
/// subscription.
async fn unsubscribe(transport: Transport) {
    let s = run("unsubscribe", transport).await;
    for (admin, gauge) in [
        (&s.proxy.admin, "conflist_proxy_dialogs"),
        (&s.server.admin, "conflist_server_subscriptions"),
    ] {
        if let Err(e) = gauge_reaches(admin, gauge, 0.0).await {
            panic!("after sipp unsubscribed over {transport:?}: {e}");
        }
    }
}

#[tokio::test]
async fn sipp_unsubscribes_over_udp() {
    unsubscribe(Transport::Udp).await;
}

#[tokio::test]
async fn sipp_unsubscribes_over_tcp() {
    unsubscribe(Transport::Tcp).await;
}
