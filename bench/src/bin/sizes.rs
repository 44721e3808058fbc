//! `conflist-bench-sizes`: the bytes on the wire for the lists people have, on the real
//! binaries with PostgreSQL.
//!
//! One fresh database, one `conflist-server` and one `conflist-proxy` (from
//! `CONFLIST_BIN_DIR`, by default next to this binary), the server's defaults (64 KiB NOTIFY
//! bodies). It measures:
//! * a user in 20 conferences: the full NOTIFY, then the partial after one change;
//! * a user in 10 000 conferences: the first NOTIFY (bytes and time from the SUBSCRIBE), then
//!   every part of the state until it is complete (count, largest, total, time).
//!
//! Results go to stdout and `bench/results/sizes.md`.
//!
//!     cargo build --release --bins && cargo run --release -p conflist-bench --bin conflist-bench-sizes

use anyhow::{Context, Result, bail, ensure};
use conflist_tests::client::ListView;
use conflist_tests::{SipWsClient, TestDb};
use sqlx::Executor;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Conferences of the small and the large list.
const SMALL: usize = 20;
const LARGE: usize = 10_000;
/// Results file.
const OUT: &str = "bench/results/sizes.md";

fn main() -> Result<()> {
    conflist_bench::with_bin_dir()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// Inserts `n` conferences `sip:<prefix>-<i>@conf.example.com` with realistic text (a title,
/// a subject, two sentences of free text, a web page, a start a day apart) for `user`.
async fn seed(db: &TestDb, user: &str, prefix: &str, n: usize) -> Result<()> {
    let mut pg = db.connect().await?;
    let sql = format!(
        "INSERT INTO conflist_conferences (conference_uri, display_text, subject, free_text,
             keywords, web_page, maximum_user_count, available_media, starts_at, ends_at,
             status, organizer_uri, organizer_name, time_zone)
         SELECT 'sip:{prefix}-' || i || '@conf.example.com', 'Project meeting ' || i,
                'Status of work package ' || i,
                'Agenda: progress since last time, open issues, next steps. Please read the '
                || 'minutes of meeting ' || (i - 1) || ' before joining.',
                'project weekly', 'https://meet.example.com/{prefix}-' || i, 25, 'audio,video',
                timestamptz '2026-12-01T09:00:00Z' + (i || ' hours')::interval,
                timestamptz '2026-12-01T10:00:00Z' + (i || ' hours')::interval,
                'scheduled', 'sip:chair@example.com', 'The Chair', 'Europe/Berlin'
         FROM generate_series(1, {n}) AS i;
         INSERT INTO conflist_members (conference_uri, user_uri, role, response)
         SELECT 'sip:{prefix}-' || i || '@conf.example.com', '{user}', 'participant', 'accepted'
         FROM generate_series(1, {n}) AS i;"
    );
    pg.execute(sqlx::AssertSqlSafe(sql)).await?;
    Ok(())
}

struct Large {
    first_bytes: usize,
    first_after: Duration,
    parts: usize,
    largest: usize,
    total: usize,
    complete_after: Duration,
}

async fn run() -> Result<()> {
    let started = Instant::now();
    let db = TestDb::create().await?;
    let (_server, proxy) = conflist_bench::start_services(&db, &[]).await?;
    seed(&db, "sip:small@example.com", "s", SMALL).await?;
    seed(&db, "sip:large@example.com", "l", LARGE).await?;

    // 20 conferences: the full NOTIFY, then one change → the partial.
    let mut c = SipWsClient::connect(&proxy.ws_url).await?;
    let mut view = ListView::default();
    c.subscribe("small", 600).await?;
    let (n, _) = view.next(&mut c).await?;
    let full = n.body.len();
    ensure!(
        view.conferences.len() == SMALL,
        "small list: {}",
        view.conferences.len()
    );
    let mut pg = db.connect().await?;
    pg.execute("UPDATE conflist_conferences SET subject = 'Moved to Thursday' WHERE conference_uri = 'sip:s-7@conf.example.com'")
        .await?;
    let (n, doc) = view.next(&mut c).await?;
    let partial = n.body.len();
    ensure!(
        doc.is_some_and(|d| d.state == document::DocumentState::Partial && d.entries.len() == 1),
        "expected a partial with the one changed conference"
    );

    // 10 000 conferences: every part until the state is complete.
    let mut c = SipWsClient::connect(&proxy.ws_url).await?;
    let mut view = ListView::default();
    let t0 = Instant::now();
    c.subscribe("large", 600).await?;
    let (n, doc) = view.next(&mut c).await?;
    let mut large = Large {
        first_bytes: n.body.len(),
        first_after: t0.elapsed(),
        parts: 1,
        largest: n.body.len(),
        total: n.body.len(),
        complete_after: t0.elapsed(),
    };
    let mut complete = doc.as_ref().is_some_and(|d| d.complete);
    while !complete {
        let (n, doc) = view.next(&mut c).await?;
        large.parts += 1;
        large.largest = large.largest.max(n.body.len());
        large.total += n.body.len();
        complete = doc.as_ref().is_some_and(|d| d.complete);
        if large.parts > 10 * LARGE {
            bail!("the large state never completed");
        }
    }
    large.complete_after = t0.elapsed();
    ensure!(
        view.conferences.len() == LARGE,
        "large list assembled {} of {LARGE}",
        view.conferences.len()
    );

    let report = report(full, partial, &large, started.elapsed());
    println!("{report}");
    let out = PathBuf::from(OUT);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &report).with_context(|| format!("write {OUT}"))?;
    eprintln!("results written to {OUT}");
    Ok(())
}

fn report(full: usize, partial: usize, large: &Large, elapsed: Duration) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# NOTIFY sizes\n");
    let _ = writeln!(
        s,
        "Body bytes of the NOTIFYs a subscriber receives, on the real binaries with PostgreSQL \
         (server defaults: `--max-notify-bytes 65536`). Conferences carry a title, a subject, \
         two sentences of free text, a web page, start and end, status, organiser, time zone \
         and the member's response.\n"
    );
    let _ = writeln!(
        s,
        "- command: `cargo build --release --bins && cargo run --release -p conflist-bench --bin conflist-bench-sizes`"
    );
    let _ = writeln!(
        s,
        "- services: `{}`",
        conflist_tests::process::bin_dir().display()
    );
    let _ = writeln!(s, "- total run time: {:.1} s\n", elapsed.as_secs_f64());
    let _ = writeln!(s, "| what | bytes |");
    let _ = writeln!(s, "|---|---:|");
    let _ = writeln!(s, "| full NOTIFY, user in {SMALL} conferences | {full} |");
    let _ = writeln!(
        s,
        "| partial NOTIFY after one change (same user) | {partial} |"
    );
    let _ = writeln!(
        s,
        "| partial ÷ full | {:.1} % |",
        100.0 * partial as f64 / full.max(1) as f64
    );
    let _ = writeln!(
        s,
        "| first NOTIFY, user in {LARGE} conferences | {} |",
        large.first_bytes
    );
    let _ = writeln!(s, "| largest NOTIFY of that state | {} |", large.largest);
    let _ = writeln!(s, "| all NOTIFYs of that state | {} |\n", large.total);
    let _ = writeln!(
        s,
        "The {LARGE}-conference state took {} NOTIFYs; the first arrived {:.0} ms after the \
         SUBSCRIBE was sent, the last {:.0} ms after.",
        large.parts,
        large.first_after.as_secs_f64() * 1000.0,
        large.complete_after.as_secs_f64() * 1000.0
    );
    s
}
