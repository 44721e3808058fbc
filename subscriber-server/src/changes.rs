//! The change follower: finds which conferences changed and has the cache recompute the
//! users they touch.
//!
//! * `log` (default): the change-log table is the truth; PostgreSQL `LISTEN` is only the
//!   wake-up, and the log is also read every interval, so a lost wake-up (dropped
//!   connection, restart) delays a change by at most one interval and never loses it. On
//!   SQLite the log is read every interval.
//! * `poll`: for databases where triggers are not allowed. Every interval, recompute every
//!   cached user and diff (one query).
//! * `off`: documents change only on SUBSCRIBE/refresh.
//!
//! If the log could not be read for longer than half the retention, rows may have been
//! pruned unseen, so every cached user is recomputed (a resync).

use crate::cache::Cache;
use crate::directory::ChangeCursor;
use crate::directory::changelog::CHANNEL;
use crate::metrics::Metrics;
use sqlx::postgres::PgListener;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How changes are detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Change-log table filled by triggers, LISTEN as the wake-up.
    Log,
    /// Periodic snapshot diff of every cached user.
    Poll,
    /// No live updates.
    Off,
}

/// Follower settings.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// Detection mode.
    pub mode: Mode,
    /// Log read / poll interval.
    pub interval: Duration,
    /// Log rows older than this are pruned.
    pub retention: Duration,
}

/// Rows read per SQLite batch.
const BATCH: i64 = 10_000;

/// Runs until `shutdown`.
pub async fn run(
    cache: Arc<Cache>,
    cfg: FollowerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    match cfg.mode {
        Mode::Off => shutdown.cancelled().await,
        Mode::Poll => poll(&cache, &cfg, &metrics, &shutdown).await,
        Mode::Log => follow_log(&cache, &cfg, &metrics, &shutdown).await,
    }
}

async fn poll(
    cache: &Cache,
    cfg: &FollowerConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cache.follower_wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
        if cache.is_empty() {
            continue;
        }
        match cache.apply_changes(&HashSet::new(), true).await {
            Ok(n) => {
                metrics.users_changed.inc_by(n as u64);
            }
            Err(e) => {
                metrics.change_errors.inc();
                warn!(error = %e, "snapshot poll failed");
            }
        }
    }
}

async fn follow_log(
    cache: &Cache,
    cfg: &FollowerConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let directory = cache.directory().clone();
    let mut cursor = loop {
        match directory.change_cursor().await {
            Ok(c) => break c,
            Err(e) => {
                metrics.change_errors.inc();
                warn!(error = %e, "cannot read the change log (is it installed? `conflist-server db install`); retrying");
                tokio::select! {
                    () = tokio::time::sleep(cfg.interval.max(Duration::from_secs(1))) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut listener: Option<PgListener> = None;
    let mut tick = tokio::time::interval(cfg.interval);
    let mut prune = tokio::time::interval(Duration::from_secs(60));
    let mut last_read = Instant::now();
    info!(mode = "log", interval = ?cfg.interval, "following the change log");
    loop {
        if listener.is_none()
            && let Some(pool) = directory.postgres_pool()
        {
            listener = listen(pool).await;
        }
        tokio::select! {
            n = recv(&mut listener) => match n {
                Ok(true) => {}
                Ok(false) => debug!("LISTEN connection re-established; reading the log"),
                Err(e) => {
                    debug!(error = %e, "LISTEN connection lost");
                    listener = None;
                }
            },
            _ = tick.tick() => {}
            () = cache.follower_wake.notified() => {}
            _ = prune.tick() => {
                match directory.prune_changes(cfg.retention).await {
                    Ok(n) if n > 0 => debug!(rows = n, "pruned the change log"),
                    Ok(_) => {}
                    Err(e) => debug!(error = %e, "pruning the change log failed"),
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        }
        match read_all(&directory, &mut cursor).await {
            Ok(changed) => {
                let resync = last_read.elapsed() > cfg.retention / 2;
                last_read = Instant::now();
                if resync {
                    warn!(
                        "change log unread for longer than half its retention; resyncing every cached user"
                    );
                    metrics.resyncs.inc();
                }
                metrics.changes_read.inc_by(changed.len() as u64);
                match cache.apply_changes(&changed, resync).await {
                    Ok(n) => {
                        metrics.users_changed.inc_by(n as u64);
                    }
                    Err(e) => {
                        // The cursor moved past these rows: recompute everyone next time.
                        metrics.change_errors.inc();
                        warn!(error = %e, "recomputing changed users failed; will resync");
                        last_read = Instant::now() - cfg.retention;
                        cache.follower_wake.notify_one();
                    }
                }
            }
            Err(e) => {
                metrics.change_errors.inc();
                warn!(error = %e, "reading the change log failed; retrying");
            }
        }
    }
}

async fn read_all(
    directory: &crate::directory::Directory,
    cursor: &mut ChangeCursor,
) -> Result<HashSet<String>, crate::directory::DirectoryError> {
    let mut all = HashSet::new();
    loop {
        let before = match cursor {
            ChangeCursor::Sqlite { last_id } => Some(*last_id),
            ChangeCursor::Postgres { .. } => None,
        };
        let batch = directory.read_changes(cursor, BATCH).await?;
        let more = match (&*cursor, before) {
            (ChangeCursor::Sqlite { last_id }, Some(b)) => *last_id - b >= BATCH,
            _ => false,
        };
        all.extend(batch);
        if !more {
            return Ok(all);
        }
    }
}

async fn listen(pool: &sqlx::PgPool) -> Option<PgListener> {
    let mut l = match PgListener::connect_with(pool).await {
        Ok(l) => l,
        Err(e) => {
            debug!(error = %e, "LISTEN connection failed; reading the log on the interval");
            return None;
        }
    };
    match l.listen(CHANNEL).await {
        Ok(()) => Some(l),
        Err(e) => {
            debug!(error = %e, "LISTEN failed");
            None
        }
    }
}

/// `Ok(true)` = a wake-up, `Ok(false)` = the connection was re-established (read the log),
/// pending forever without a listener.
async fn recv(listener: &mut Option<PgListener>) -> Result<bool, sqlx::Error> {
    match listener {
        Some(l) => Ok(l.try_recv().await?.is_some()),
        None => std::future::pending().await,
    }
}
