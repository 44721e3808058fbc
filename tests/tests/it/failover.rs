//! Issue 11's acceptance on real processes: 2 proxies × 3 servers, 1000 live subscriptions,
//! at least 20 conference changes a second, and a failure mid-stream (kill -9 or SIGTERM of a
//! server, SIGTERM of a proxy, a fourth server added, PostgreSQL gone for 3 s). Afterwards
//! every subscriber holds the database's list, its versions went up by one per NOTIFY, no
//! dialog ended and no change went missing; the longest time a subscriber was behind is
//! printed (`failover …: longest behind = … ms`).

use conflist_tests::cluster::{
    Cluster, ClusterSpec, Discovery, Forwarder, PROXY_GRACE, kill_9, metric_sum,
    subscriptions_per_server, sum_over, upstream_of,
};
use conflist_tests::process::{http_get_status, terminate};
use conflist_tests::{ListView, ServerOptions, SipWsClient, TestDb, spawn_proxy, spawn_server};
use std::time::Duration;
use tokio::time::Instant;

/// Changes per second the driver writes (the acceptance asks for at least 20).
const RATE: u32 = 25;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn everyone(_: usize) -> bool {
    true
}

/// Stops the driver and checks it kept the rate without a failed write.
async fn stop(driver: conflist_tests::cluster::ChangeDriver) -> conflist_tests::cluster::Driven {
    let driven = driver.stop().await.expect("driver");
    assert!(
        driven.errors.is_empty(),
        "driver errors: {:?}",
        driven.errors
    );
    assert!(
        driven.rate() >= 20.0,
        "only {:.1} changes/s ({} in {:?})",
        driven.rate(),
        driven.changes.len(),
        driven.elapsed
    );
    driven
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_harness_converges_without_failures() {
    let cluster = Cluster::start(ClusterSpec {
        servers: 2,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster");
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(100, secs(15)).await.unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(20))
        .await
        .unwrap();
    report.assert_clean("failover (no failure, 2 proxies × 2 servers)");
    assert_eq!(
        cluster
            .subscribers
            .shared
            .strays
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_server_loses_nothing() {
    let mut cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster");
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(50, secs(10)).await.unwrap();
    let held = subscriptions_per_server(&cluster.servers).await;
    kill_9(&mut cluster.servers[1]).await.unwrap();
    let at = driver.committed();
    driver.wait_committed(at + 100, secs(15)).await.unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(20))
        .await
        .unwrap();
    println!("failover kill -9: subscriptions per server before the kill {held:?}");
    report.assert_clean("failover kill -9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drain_of_a_server_loses_nothing() {
    let mut cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster");
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(50, secs(10)).await.unwrap();
    let held = subscriptions_per_server(&cluster.servers).await;
    let sent = Instant::now();
    terminate(&cluster.servers[1].child).unwrap();
    // Drain (default --drain-timeout 10 s) plus the 3 s shutdown grace, with room.
    let status = tokio::time::timeout(secs(20), cluster.servers[1].child.wait())
        .await
        .expect("drained server did not exit")
        .unwrap();
    let drained_in = sent.elapsed();
    let at = driver.committed();
    driver.wait_committed(at + 50, secs(10)).await.unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(20))
        .await
        .unwrap();
    println!(
        "failover SIGTERM server: held {held:?}, exited {status} after {} ms",
        drained_in.as_millis()
    );
    report.assert_clean("failover SIGTERM server");
    assert!(status.success(), "drained server exited {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_proxy_deactivates_only_its_clients() {
    let mut cluster = Cluster::start(ClusterSpec::default())
        .await
        .expect("cluster");
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(50, secs(10)).await.unwrap();
    let mine = cluster.dialogs_of_proxy(0);
    let others = cluster.dialogs_of_proxy(1);
    assert!(!mine.is_empty() && !others.is_empty());
    let sent = Instant::now();
    terminate(&cluster.proxies[0].child).unwrap();
    // Every dialog of the stopped proxy gets its final NOTIFY: a proxy that exited without
    // sending them (or before they were written) leaves dialogs here.
    let left = cluster
        .subscribers
        .wait_all(&mine, |d| d.terminated.is_some(), PROXY_GRACE + secs(2))
        .await;
    let status = tokio::time::timeout(PROXY_GRACE + secs(5), cluster.proxies[0].child.wait())
        .await
        .expect("proxy did not exit")
        .unwrap();
    let mut slowest = Duration::ZERO;
    let mut wrong = Vec::new();
    for &d in &mine {
        cluster.subscribers.with(d, |ds| match &ds.terminated {
            Some((state, at)) => {
                slowest = slowest.max(at.saturating_duration_since(sent));
                if state != "terminated;reason=deactivated" {
                    wrong.push(format!("dialog {d}: {state}"));
                }
            }
            None => wrong.push(format!("dialog {d}: no terminated NOTIFY ({})", ds.state)),
        });
    }
    println!(
        "failover SIGTERM proxy: {} of {} dialogs deactivated, the last after {} ms; proxy exited {status}",
        mine.len() - left,
        mine.len(),
        slowest.as_millis()
    );
    assert!(
        wrong.is_empty(),
        "{} dialogs: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    assert!(
        slowest <= PROXY_GRACE,
        "the last deactivated NOTIFY came {slowest:?} after SIGTERM (grace {PROXY_GRACE:?})"
    );
    assert!(status.success(), "proxy exited {status}");

    let at = driver.committed();
    driver.wait_committed(at + 50, secs(10)).await.unwrap();
    let driven = stop(driver).await;
    let others_only = |d: usize| others.contains(&d);
    let report = cluster
        .check(&driven.changes, &others_only, secs(20))
        .await
        .unwrap();
    report.assert_clean("failover SIGTERM proxy (the other proxy's clients)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_server_takes_about_a_quarter() {
    let mut cluster = Cluster::start(ClusterSpec {
        discovery: Discovery::File,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster");
    let total = cluster.spec.subscriptions as f64;
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(30, secs(10)).await.unwrap();
    let new = cluster.add_server().await.unwrap();
    let proxy_admins: Vec<String> = cluster.proxies.iter().map(|p| p.admin.clone()).collect();

    // Settled: the new server holds some, and neither the per-server counts nor the proxies'
    // rebalance counters changed for a second. Polled (metrics are not an event), bounded.
    let mut last = None;
    let mut stable_since = Instant::now();
    let until = Instant::now() + secs(20);
    let (counts, rebalanced) = loop {
        let counts = subscriptions_per_server(&cluster.servers).await;
        let (rebalanced, _) = sum_over(
            &proxy_admins,
            "conflist_proxy_reattached_total",
            "reason=\"rebalance\"",
        )
        .await;
        let now = (counts.clone(), rebalanced);
        if last.as_ref() != Some(&now) {
            last = Some(now.clone());
            stable_since = Instant::now();
        }
        let on_new = counts[new].unwrap_or(0.0);
        if (on_new > 0.0 && stable_since.elapsed() >= secs(1)) || Instant::now() >= until {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let on_new = counts[new].unwrap_or(0.0);
    let held: f64 = counts.iter().flatten().sum();
    println!(
        "failover fourth server: it holds {on_new} of {total} subscriptions ({:.1} %), per server {counts:?}, \
         proxies counted {rebalanced} rebalance re-attaches",
        100.0 * on_new / total
    );

    let at = driver.committed();
    driver.wait_committed(at + 50, secs(10)).await.unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(20))
        .await
        .unwrap();
    report.assert_clean("failover fourth server");
    let share = on_new / total;
    assert!(
        (0.15..=0.35).contains(&share),
        "the fourth server took {:.1} % of the subscriptions",
        100.0 * share
    );
    assert_eq!(held, total, "servers hold {held} subscriptions in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_nothing() {
    let cluster = Cluster::start(ClusterSpec {
        forwarder: true,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster");
    let forwarder = cluster.forwarder.as_ref().unwrap();
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(50, secs(10)).await.unwrap();
    let before = driver.committed();
    // "Restart": every server connection reset, new ones refused while 3 s of changes
    // (75 at 25/s) are written directly.
    forwarder.down();
    driver.wait_committed(before + 75, secs(10)).await.unwrap();
    // Readiness at the end of the outage, probed at once on every server (a probe that takes
    // longer than a second counts as unready and is reported; the outage is not prolonged).
    let probes = futures_util::future::join_all(cluster.servers.iter().map(|s| async {
        let asked = Instant::now();
        let status = tokio::time::timeout(secs(1), http_get_status(&s.admin, "/readyz")).await;
        (status.ok().and_then(Result::ok), asked.elapsed())
    }))
    .await;
    let unready = probes.iter().filter(|(s, _)| *s != Some(200)).count();
    forwarder.up();
    let during = driver.committed() - before;
    driver
        .wait_committed(before + during + 100, secs(15))
        .await
        .unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(25))
        .await
        .unwrap();
    println!(
        "failover PostgreSQL restart: {during} changes written during the outage, {unready} of {} servers unready at its end (/readyz: {probes:?}), {} connections forwarded",
        cluster.servers.len(),
        forwarder
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    report.assert_clean("failover PostgreSQL restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_while_the_database_is_down_waits_unready() {
    let db = TestDb::create().await.unwrap();
    let forwarder = Forwarder::start(upstream_of(&db.url).unwrap(), false)
        .await
        .unwrap();
    let mut server = spawn_server(
        &forwarder.url_for(&db.url).unwrap(),
        &ServerOptions::default(),
    )
    .await
    .expect("a server whose database is down still prints READY");
    assert_eq!(http_get_status(&server.admin, "/livez").await.unwrap(), 200);
    assert_eq!(
        http_get_status(&server.admin, "/readyz").await.unwrap(),
        503
    );
    // It stays up while the database is down (this wait is the point of the test).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "server exited while the database was down"
    );
    assert_eq!(
        http_get_status(&server.admin, "/readyz").await.unwrap(),
        503
    );

    forwarder.up();
    let until = Instant::now() + secs(15);
    while http_get_status(&server.admin, "/readyz").await.ok() != Some(200) {
        assert!(
            Instant::now() < until,
            "not ready 15 s after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let proxy = spawn_proxy(&server, &[]).await.unwrap();
    let mut alice = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    alice.subscribe("alice", 600).await.unwrap();
    let mut view = ListView::default();
    view.until_complete(&mut alice).await.unwrap();
    assert_eq!(view.conferences.len(), 3, "alice's demo list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_failover() {
    let mut cluster = Cluster::start(ClusterSpec {
        subscriptions: 300,
        ..ClusterSpec::default()
    })
    .await
    .expect("cluster");
    let mut driver = cluster.driver(RATE).await.unwrap();
    driver.wait_committed(25, secs(10)).await.unwrap();
    let proxies: Vec<String> = cluster.proxies.iter().map(|p| p.admin.clone()).collect();
    let survivors: Vec<String> = [0, 2]
        .iter()
        .map(|&i| cluster.servers[i].admin.clone())
        .collect();
    let moving = [
        (&proxies, "conflist_proxy_reattached_total"),
        (&proxies, "conflist_proxy_notify_round_trip_seconds_count"),
        (&survivors, "conflist_server_commit_to_notify_seconds_count"),
        (&survivors, "conflist_server_db_query_seconds_count"),
        (&survivors, "conflist_server_subscriptions_resumed_total"),
    ];
    let mut before = Vec::new();
    for (addrs, name) in moving {
        before.push(sum_over(addrs, name, "").await.0);
    }
    kill_9(&mut cluster.servers[1]).await.unwrap();
    let at = driver.committed();
    driver.wait_committed(at + 75, secs(10)).await.unwrap();
    let driven = stop(driver).await;
    let report = cluster
        .check(&driven.changes, &everyone, secs(20))
        .await
        .unwrap();

    let mut problems = Vec::new();
    for ((addrs, name), was) in moving.into_iter().zip(before) {
        let (now, absent) = sum_over(addrs, name, "").await;
        println!("failover metrics: {name} {was} → {now}");
        if absent > 0 {
            problems.push(format!("{name}: absent on {absent} of {}", addrs.len()));
        } else if now <= was {
            problems.push(format!("{name}: did not move ({was} → {now})"));
        }
    }
    for addr in proxies.iter().chain(&survivors) {
        match metric_sum(addr, "conflist_build_info", "version=").await {
            Ok(1.0) => {}
            other => problems.push(format!("{addr}: conflist_build_info {other:?}")),
        }
        match metric_sum(addr, "process_open_fds", "").await {
            Ok(v) if v > 0.0 => {}
            other => problems.push(format!("{addr}: process_open_fds {other:?}")),
        }
    }
    // Each proxy counts the killed server as down; each survivor reports its pool and the
    // change log's lag.
    for addr in &proxies {
        match metric_sum(addr, "conflist_proxy_servers", "state=\"down\"").await {
            Ok(1.0) => {}
            other => problems.push(format!(
                "{addr}: conflist_proxy_servers{{state=down}} {other:?}"
            )),
        }
    }
    for addr in &survivors {
        match metric_sum(
            addr,
            "conflist_server_db_pool_connections",
            "pool=\"primary\"",
        )
        .await
        {
            Ok(v) if v > 0.0 => {}
            other => problems.push(format!("{addr}: db_pool_connections {other:?}")),
        }
        match metric_sum(addr, "conflist_server_change_log_lag_seconds", "").await {
            Ok(v) if v >= 0.0 => {}
            other => problems.push(format!("{addr}: change_log_lag_seconds {other:?}")),
        }
    }
    report.assert_clean("failover metrics");
    assert!(problems.is_empty(), "metrics: {problems:#?}");
}

/// `--servers-dns`: the proxy finds its server by resolving a name (here `localhost`,
/// through the system resolver as a headless Service's name would be) and serves through it.
#[tokio::test]
async fn a_server_found_by_dns_serves_subscriptions() {
    let db = TestDb::create().await.unwrap();
    let server = spawn_server(&db.url, &ServerOptions::default())
        .await
        .unwrap();
    let port = server.grpc.rsplit(':').next().unwrap().to_owned();
    let dns = format!("http://localhost:{port}");
    let proxy = conflist_tests::process::start_proxy(
        "",
        &["--servers-dns", &dns, "--discovery-interval", "200ms"],
    )
    .await
    .unwrap();
    conflist_tests::process::wait_ready(&proxy.admin)
        .await
        .unwrap();
    let mut alice = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    alice.subscribe("alice", 600).await.unwrap();
    let n = alice.recv_notify().await.unwrap();
    assert!(
        String::from_utf8_lossy(&n.body).contains("<conference-list"),
        "a full list came through the server found by DNS"
    );
    alice.respond(&n, 200).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let serving = conflist_tests::cluster::metric_sum(
            &proxy.admin,
            "conflist_proxy_servers",
            "state=\"serving\"",
        )
        .await
        .unwrap_or(0.0);
        if serving == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "serving servers: {serving}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
