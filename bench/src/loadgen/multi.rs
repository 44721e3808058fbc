//! `--processes P`: the parent runs itself P times (each child marked by
//! `CONFLIST_LOADGEN_CHILD=<index>/<P>` and taking its slice of the clients), passes a stop
//! on to them (a `STOP` line on their stdin), prints one OPENED line once every child has
//! printed its own, merges their results and notify logs, then prints DONE. A child whose
//! stdin closes (the parent was killed) exits at once; the parent kills its children when it
//! ends early.

use super::run::{finish, part_path};
use super::stats::{self, RunInfo, Tally, bump};
use super::{CHILD_ENV, Config, Slice};
use anyhow::{Context, Result};
use std::io::Write as _;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, watch};

/// What a child said on stdout.
#[derive(Debug)]
enum Line {
    Opened {
        established: u64,
        failed: u64,
    },
    Result(Box<Tally>),
    /// Its stdout closed.
    End,
}

fn parse_opened(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("OPENED ")?;
    let mut established = None;
    let mut failed = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=')? {
            ("established", v) => established = v.parse().ok(),
            ("failed", v) => failed = v.parse().ok(),
            _ => {}
        }
    }
    Some((established?, failed?))
}

struct Kid {
    slice: Slice,
    child: Child,
    stdin: Option<ChildStdin>,
    opened: Option<(u64, u64)>,
    result: Option<Tally>,
    ended: bool,
}

pub(crate) async fn parent(cfg: Config) -> Result<()> {
    let count = cfg.args.processes.min(cfg.connections()).max(1);
    let per_child = cfg.args.clients.div_ceil(count);
    let per_conn_files = per_child.div_ceil(cfg.args.dialogs_per_connection);
    if per_conn_files > 19_000 {
        eprintln!(
            "loadgen: warning: {per_conn_files} sockets per child process; the open-files \
             limit may be 20 000 (use more --processes)"
        );
    }
    let (stop_tx, mut stop) = watch::channel(false);
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                eprintln!("loadgen: stop requested; passing it on to the children");
                stop_tx.send_replace(true);
            }
        });
    }
    let exe = std::env::current_exe().context("locate the loadgen binary")?;
    let (tx, mut lines) = mpsc::unbounded_channel::<(usize, Line)>();
    let mut kids = Vec::new();
    for index in 0..count {
        let slice = Slice::of(
            cfg.args.clients,
            cfg.args.dialogs_per_connection,
            index,
            count,
        );
        let mut child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .env(CHILD_ENV, format!("{index}/{count}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start a child process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("child stdout")?;
        let tx = tx.clone();
        let k = index as usize;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some((established, failed)) = parse_opened(&line) {
                    let _ = tx.send((
                        k,
                        Line::Opened {
                            established,
                            failed,
                        },
                    ));
                } else if let Some(json) = line.strip_prefix("RESULT ") {
                    match serde_json::from_str::<Tally>(json) {
                        Ok(t) => {
                            let _ = tx.send((k, Line::Result(Box::new(t))));
                        }
                        Err(e) => eprintln!("loadgen: child {k}: bad RESULT: {e}"),
                    }
                }
            }
            let _ = tx.send((k, Line::End));
        });
        kids.push(Kid {
            slice,
            child,
            stdin,
            opened: None,
            result: None,
            ended: false,
        });
    }
    drop(tx);

    let mut printed_opened = false;
    let mut stop_sent = false;
    while kids.iter().any(|k| !k.ended) {
        tokio::select! {
            got = lines.recv() => {
                let Some((k, line)) = got else { break };
                match line {
                    Line::Opened { established, failed } => kids[k].opened = Some((established, failed)),
                    Line::Result(t) => kids[k].result = Some(*t),
                    Line::End => {
                        kids[k].ended = true;
                        if kids[k].opened.is_none() {
                            // Died before its OPENED: all of its clients failed.
                            kids[k].opened = Some((0, u64::from(kids[k].slice.len())));
                        }
                    }
                }
            }
            _ = stop.changed(), if !stop_sent => {
                stop_sent = true;
                for kid in &mut kids {
                    if let Some(stdin) = kid.stdin.as_mut() {
                        let _ = stdin.write_all(b"STOP\n").await;
                        let _ = stdin.flush().await;
                    }
                }
            }
        }
        if !printed_opened && kids.iter().all(|k| k.opened.is_some()) {
            let (e, f) = kids
                .iter()
                .filter_map(|k| k.opened)
                .fold((0, 0), |(e, f), (ke, kf)| (e + ke, f + kf));
            println!("OPENED established={e} failed={f}");
            std::io::stdout().flush()?;
            printed_opened = true;
        }
    }

    let mut total = Tally::default();
    let mut failed_children = 0;
    for (k, kid) in kids.iter_mut().enumerate() {
        let status = kid.child.wait().await;
        match kid.result.take() {
            Some(t) => total.merge(t),
            None => {
                failed_children += 1;
                eprintln!("loadgen: child {k} ended without results ({status:?})");
                let n = u64::from(kid.slice.len());
                total.clients += n;
                total.failed += n;
                for _ in 0..n {
                    bump(&mut total.failures, "child_failed");
                }
            }
        }
        kid.stdin = None;
    }

    if let Some(log) = cfg.args.notify_log.clone() {
        let parts: Vec<_> = (0..count).map(|i| part_path(&log, i)).collect();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?,
            );
            for part in parts {
                if let Ok(mut f) = std::fs::File::open(&part) {
                    std::io::copy(&mut f, &mut out)?;
                    let _ = std::fs::remove_file(&part);
                }
            }
            out.flush()?;
            Ok(())
        })
        .await??;
    }

    let summary = stats::summary(
        &mut total,
        &RunInfo {
            target: &cfg.args.target,
            transport: cfg.target.transport.name(),
            processes: count,
            dialogs_per_connection: cfg.args.dialogs_per_connection,
            rate: cfg.args.rate,
        },
    );
    finish(&summary, cfg.args.out.as_deref())?;
    if failed_children > 0 {
        anyhow::bail!("{failed_children} child process(es) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_opened_lines() {
        assert_eq!(parse_opened("OPENED established=5 failed=2"), Some((5, 2)));
        assert_eq!(parse_opened("OPENED failed=0 established=1"), Some((1, 0)));
        assert_eq!(parse_opened("OPENED established=5"), None);
        assert_eq!(parse_opened("DONE"), None);
    }
}
