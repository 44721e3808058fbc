//! Soak: many subscribe / refresh / unsubscribe cycles through real processes, with abrupt
//! disconnects mid-transaction (the WebSocket dropped between a SUBSCRIBE and its answer,
//! between a NOTIFY and its 200, in the middle of a refresh) and a server restart on the
//! same gRPC port half-way. At the end, nothing may be left behind: the gauges are back at
//! their starting values exactly, and open file descriptors and resident memory of each
//! process are back within a stated margin of their level after warm-up.
//!
//! Time-bounded: two phases of [`PHASE`] each, a restart, and at most [`SETTLE`] of waiting
//! for the gauges (~50 s in all on two cores).

use crate::system;
use conflist_tests::process::{http_get, terminate};
use conflist_tests::{ServerOptions, SipWsClient, spawn_server};
use sip::HeaderName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Length of each load phase (before and after the restart).
const PHASE: Duration = Duration::from_secs(18);
/// Concurrent clients.
const WORKERS: usize = 8;
/// Longest wait for the gauges to come back (polled: an event we cannot subscribe to).
const SETTLE: Duration = Duration::from_secs(15);
/// One cycle never takes longer than this, whatever the processes do.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(12);
/// Database connections the server may hold; its pool may grow to this under load and
/// keep the connections open, so it is part of the file-descriptor margin.
const DB_MAX_CONNECTIONS: usize = 4;
/// Open file descriptors allowed above the warm-up level: the database pool's growth plus
/// a few for sockets still in the kernel's close handshake. A leak per cycle (thousands of
/// cycles) is far beyond it.
const FD_MARGIN: usize = DB_MAX_CONNECTIONS + 4;
/// Resident memory allowed above the warm-up level: allocators keep freed pages for reuse
/// (glibc keeps per-thread arenas), so RSS after a burst sits somewhat above RSS before it;
/// a leak of a kilobyte per cycle over the thousands of cycles run here is past it.
const RSS_MARGIN_KIB: u64 = 16 * 1024;

const USERS: [&str; 3] = ["alice", "bob", "carol"];

#[derive(Debug, Default)]
struct Counts {
    full_cycles: AtomicU64,
    dropped_before_answer: AtomicU64,
    dropped_before_notify_answer: AtomicU64,
    dropped_mid_refresh: AtomicU64,
    failed: AtomicU64,
}

/// What one process holds, from /proc.
#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    rss_kib: u64,
}

fn usage(pid: u32) -> Usage {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    Usage { fds, rss_kib }
}

async fn gauge(admin: &str, name: &str) -> i64 {
    let (_, body) = http_get(admin, "/metrics").await.expect("/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as i64)
        .unwrap_or_else(|| panic!("no {name} at {admin}/metrics"))
}

/// Polls `name` (bounded by `SETTLE`) until it reads `want`; returns the last reading.
async fn gauge_settles(admin: &str, name: &str, want: i64) -> i64 {
    let until = Instant::now() + SETTLE;
    loop {
        let v = gauge(admin, name).await;
        if v == want || Instant::now() >= until {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The four gauges: proxy connections and dialogs, server subscriptions and sessions.
async fn gauges(proxy: &str, server: &str) -> [i64; 4] {
    [
        gauge(proxy, "conflist_proxy_connections").await,
        gauge(proxy, "conflist_proxy_dialogs").await,
        gauge(server, "conflist_server_subscriptions").await,
        gauge(server, "conflist_server_sessions").await,
    ]
}

/// One cycle of kind `n % 4`; an error (a 503 while the server restarts, a terminated
/// NOTIFY instead of a 200, …) ends the cycle with the connection dropped, as a browser
/// would, and is counted.
async fn cycle(ws_url: &str, user: &str, n: u64, counts: &Counts) -> anyhow::Result<()> {
    let mut c = SipWsClient::connect(ws_url).await?;
    match n % 4 {
        // Drop between the SUBSCRIBE and its answer.
        1 => {
            let call_id = format!("soak-{n}-{}", rand::random::<u32>());
            let req = c.initial_subscribe(
                user,
                &call_id,
                "Accept: application/conference-list+xml\r\nExpires: 600\r\n",
            );
            c.send_text(&req).await?;
            drop(c);
            counts.dropped_before_answer.fetch_add(1, Ordering::Relaxed);
        }
        // Drop between the NOTIFY and its 200.
        2 => {
            c.subscribe(user, 600).await?;
            c.recv_notify().await?;
            drop(c);
            counts
                .dropped_before_notify_answer
                .fetch_add(1, Ordering::Relaxed);
        }
        // Drop in the middle of a refresh.
        3 => {
            let mut d = c.subscribe(user, 600).await?.dialog;
            let n = c.recv_notify().await?;
            c.respond(&n, 200).await?;
            c.resubscribe(&mut d, 600).await?;
            drop(c);
            counts.dropped_mid_refresh.fetch_add(1, Ordering::Relaxed);
        }
        // The whole life: subscribe, refresh, unsubscribe, each NOTIFY answered.
        _ => {
            let mut d = c.subscribe(user, 600).await?.dialog;
            let n = c.recv_notify().await?;
            c.respond(&n, 200).await?;
            c.resubscribe(&mut d, 600).await?;
            anyhow::ensure!(c.recv_response().await?.status.as_u16() == 200, "refresh");
            let n = c.recv_notify().await?;
            c.respond(&n, 200).await?;
            c.resubscribe(&mut d, 0).await?;
            anyhow::ensure!(
                c.recv_response().await?.status.as_u16() == 200,
                "unsubscribe"
            );
            let n = c.recv_notify().await?;
            let state = n.headers.get(&HeaderName::SUBSCRIPTION_STATE).unwrap_or("");
            anyhow::ensure!(state.starts_with("terminated"), "final NOTIFY: {state}");
            c.respond(&n, 200).await?;
            counts.full_cycles.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `WORKERS` clients cycling until `deadline`.
async fn load(ws_url: &str, deadline: Instant, counts: &Arc<Counts>, next: &Arc<AtomicU64>) {
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (url, counts, next) = (ws_url.to_owned(), counts.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let user = USERS[w % USERS.len()];
                let outcome = tokio::time::timeout(CYCLE_TIMEOUT, cycle(&url, user, n, &counts));
                if !matches!(outcome.await, Ok(Ok(()))) {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker panicked");
    }
}

/// One full cycle per user, so lazily built state (caches, buffers, pools) exists before
/// the baseline is taken.
async fn warm_up(ws_url: &str) {
    let counts = Counts::default();
    for (i, user) in USERS.iter().enumerate() {
        cycle(ws_url, user, 4 * i as u64, &counts)
            .await
            .expect("warm-up cycle");
    }
}

fn within(name: &str, before: Usage, after: Usage, report: &mut Vec<String>) -> bool {
    let ok =
        after.fds <= before.fds + FD_MARGIN && after.rss_kib <= before.rss_kib + RSS_MARGIN_KIB;
    report.push(format!(
        "{name}: fds {} -> {} (margin +{FD_MARGIN}), RSS {} KiB -> {} KiB (margin +{RSS_MARGIN_KIB} KiB) {}",
        before.fds,
        after.fds,
        before.rss_kib,
        after.rss_kib,
        if ok { "ok" } else { "GREW" }
    ));
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_cycles_with_abrupt_disconnects_and_a_restart_leave_nothing_behind() {
    let started = Instant::now();
    let opts = ServerOptions {
        extra_args: vec![
            "--db-max-connections".into(),
            DB_MAX_CONNECTIONS.to_string(),
        ],
        ..ServerOptions::default()
    };
    let mut sys = system(opts.clone()).await;
    // The sys.proxy spawned by `system` has the default SUBSCRIBE rate limit; the soak needs
    // a proxy without one (all clients share 127.0.0.1).
    let proxy =
        conflist_tests::spawn_proxy(&sys.server, &["--max-subscribes-per-address", "1000000"])
            .await
            .expect("proxy");
    let (ws, padmin) = (proxy.ws_url.clone(), proxy.admin.clone());
    let proxy_pid = proxy.child.id().expect("proxy pid");
    let grpc = sys.server.grpc_addr.clone();

    warm_up(&ws).await;
    let mut report = Vec::new();
    let base_gauges = {
        // The warm-up's last dialog may still be closing.
        gauge_settles(&padmin, "conflist_proxy_connections", 0).await;
        gauge_settles(&padmin, "conflist_proxy_dialogs", 0).await;
        gauge_settles(&sys.server.admin, "conflist_server_subscriptions", 0).await;
        gauges(&padmin, &sys.server.admin).await
    };
    // Two sessions: the one of sys.proxy and the one of the soak proxy.
    assert_eq!(base_gauges, [0, 0, 0, 2], "starting gauges");
    let proxy_before = usage(proxy_pid);
    let server1_before = usage(sys.server.child.id().expect("server pid"));

    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    load(&ws, Instant::now() + PHASE, &counts, &next).await;
    let before_restart = counts.full_cycles.load(Ordering::Relaxed);
    let server1_after = usage(sys.server.child.id().expect("server pid"));

    // Restart the server on the same gRPC port while clients keep cycling.
    let restart = {
        let ws = ws.clone();
        let (counts, next) = (counts.clone(), next.clone());
        tokio::spawn(async move {
            load(&ws, Instant::now() + Duration::from_secs(4), &counts, &next).await
        })
    };
    terminate(&sys.server.child).expect("SIGTERM");
    tokio::time::timeout(Duration::from_secs(15), sys.server.child.wait())
        .await
        .expect("server did not stop")
        .expect("wait");
    sys.server = spawn_server(
        &sys.db.url,
        &ServerOptions {
            grpc_listen: Some(grpc),
            demo: false,
            ..opts
        },
    )
    .await
    .expect("restarted server");
    restart.await.expect("restart load");
    // Both proxies come back to the new server (bounded by SETTLE).
    assert_eq!(
        gauge_settles(&sys.server.admin, "conflist_server_sessions", 2).await,
        2,
        "proxies did not reconnect"
    );
    warm_up(&ws).await;
    gauge_settles(&sys.server.admin, "conflist_server_subscriptions", 0).await;
    let server2_pid = sys.server.child.id().expect("server pid");
    let server2_before = usage(server2_pid);

    load(&ws, Instant::now() + PHASE, &counts, &next).await;

    // Everything winds down by itself.
    let settled = [
        gauge_settles(&padmin, "conflist_proxy_connections", 0).await,
        gauge_settles(&padmin, "conflist_proxy_dialogs", 0).await,
        gauge_settles(&sys.server.admin, "conflist_server_subscriptions", 0).await,
        gauge_settles(&sys.server.admin, "conflist_server_sessions", 2).await,
    ];
    let proxy_after = usage(proxy_pid);
    let server2_after = usage(server2_pid);

    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    report.insert(
        0,
        format!(
            "soak: {} cycles in {:.0?}: {} full (subscribe, refresh, unsubscribe; {before_restart} before the restart), \
             {} dropped before the SUBSCRIBE's answer, {} before the NOTIFY's 200, {} mid-refresh, {} cut short by errors",
            c(&next),
            started.elapsed(),
            c(&counts.full_cycles),
            c(&counts.dropped_before_answer),
            c(&counts.dropped_before_notify_answer),
            c(&counts.dropped_mid_refresh),
            c(&counts.failed),
        ),
    );
    report.push(format!(
        "gauges [proxy connections, proxy dialogs, server subscriptions, server sessions]: {base_gauges:?} -> {settled:?}"
    ));
    let mut ok = within("proxy", proxy_before, proxy_after, &mut report);
    ok &= within(
        "server (first run, at the restart)",
        server1_before,
        server1_after,
        &mut report,
    );
    ok &= within(
        "server (after the restart)",
        server2_before,
        server2_after,
        &mut report,
    );
    let text = report.join("\n");
    eprintln!("{text}");
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("soak.txt");
    let _ = std::fs::write(&out, format!("{text}\n"));
    println!("soak report written to {}", out.display());

    assert_eq!(settled, base_gauges, "gauges did not return\n{text}");
    assert!(ok, "resources grew\n{text}");
    assert!(
        c(&counts.full_cycles) >= 40,
        "too few complete cycles to mean anything\n{text}"
    );
    assert!(
        c(&counts.dropped_before_answer) >= 20
            && c(&counts.dropped_before_notify_answer) >= 20
            && c(&counts.dropped_mid_refresh) >= 20,
        "too few abrupt disconnects\n{text}"
    );
}
