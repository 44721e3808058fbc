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
//! pruned unseen, so every cached user is recomputed (a resync). A logged `TRUNCATE` (see
//! [`crate::directory::changelog::RESYNC_MARK`]) resyncs too.
//!
//! What the log cannot see (a write with triggers disabled, a table behind a view that is
//! not watched) is repaired by verification: every `--verify-interval` (log mode) the
//! follower re-reads every cached user whole, one slice per wake-up, and counts the lists it
//! had to correct.
//!
//! Pruning is commit-safe: a row is deleted only when it is older than the retention *and*
//! was visible to a read of this server at least the retention ago ([`PruneHorizon`]), so a
//! transaction that commits late keeps its rows for the full retention after its commit.
//!
//! With a read replica, a batch is recomputed from it only once it has replayed past the
//! primary's WAL position taken after the log read (waiting at most [`REPLICA_WAIT`]);
//! otherwise from the primary (counted in `conflist_server_replica_fallbacks_total`).

use crate::cache::Cache;
use crate::directory::changelog::CHANNEL;
use crate::directory::{ChangeCursor, Directory, PruneMark, ReplicaCatchUp};
use crate::metrics::Metrics;
use sqlx::postgres::PgListener;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::{Instant, Interval, MissedTickBehavior};
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
    /// Log mode: how often every cached user is re-read whole; `None`: never.
    pub verify_interval: Option<Duration>,
}

/// Rows per page of a change-log read.
const PAGE: i64 = 10_000;
/// Longest wait for the read replica to replay a batch's log read before the batch reads
/// the primary instead.
pub const REPLICA_WAIT: Duration = Duration::from_secs(2);
/// Users re-read per verification slice (one slice per follower wake-up).
const VERIFY_SLICE: usize = 500;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// A transaction open this long gets a warning (its changes wait for its commit).
const FRONTIER_WARN_AGE: Duration = Duration::from_secs(60);
/// Least time between two such warnings.
const FRONTIER_WARN_EVERY: Duration = Duration::from_secs(60);
/// Longest timer period used (larger settings are treated as this; Instant arithmetic
/// beyond it could overflow).
const MAX_PERIOD: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Runs until `shutdown`.
///
/// `following` is sent once the follower holds its place: for the change log, once it has
/// read its starting cursor (changes committed after that are seen); polling and `off` need
/// no place. The server admits no subscription before that.
pub async fn run(
    cache: Arc<Cache>,
    cfg: FollowerConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
    following: tokio::sync::oneshot::Sender<()>,
) {
    match cfg.mode {
        Mode::Off => {
            let _ = following.send(());
            shutdown.cancelled().await;
        }
        Mode::Poll => {
            let _ = following.send(());
            poll(&cache, &cfg, &metrics, &shutdown).await;
        }
        Mode::Log => follow_log(&cache, &cfg, &metrics, &shutdown, following).await,
    }
}

/// A timer ticking every `period` (capped), the first tick one period from now.
fn every(period: Duration) -> Interval {
    let period = period.clamp(Duration::from_millis(1), MAX_PERIOD);
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

async fn poll(
    cache: &Cache,
    cfg: &FollowerConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let mut tick = every(cfg.interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cache.follower_wake.notified() => {}
            () = shutdown.cancelled() => return,
        }
        // Every cached user is read again anyway: recurring meetings roll on with it.
        cache.take_due_rolls(chrono::Utc::now());
        if cache.is_empty() {
            continue;
        }
        match cache.apply_changes(&HashSet::new(), true, None).await {
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
    following: tokio::sync::oneshot::Sender<()>,
) {
    let directory = cache.directory().clone();
    let mut cursor = loop {
        match directory.change_cursor().await {
            Ok(c) => {
                let _ = following.send(());
                break c;
            }
            Err(e) => {
                metrics.change_errors.inc();
                warn!(error = %e, "cannot read the change log (is it installed? `conflist-server db install`); retrying");
                tokio::select! {
                    () = tokio::time::sleep(cfg.interval.clamp(Duration::from_secs(1), MAX_PERIOD)) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    };
    let mut listener: Option<PgListener> = None;
    let mut tick = every(cfg.interval);
    let mut prune = every(PRUNE_EVERY);
    let mut verify_tick = cfg.verify_interval.map(every);
    let mut verification = Verification::default();
    let mut horizon = PruneHorizon::default();
    let mut frontier = FrontierWatch::default();
    let mut progress = Progress {
        last_read: Some(Instant::now()),
        ..Progress::default()
    };
    info!(mode = "log", interval = ?cfg.interval, verify_interval = ?cfg.verify_interval, "following the change log");
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
            _ = next_tick(&mut verify_tick), if verification.is_idle() => {
                verification.start(cache.cached_users());
            }
            _ = prune.tick() => {
                let now = Instant::now();
                horizon.record(now, cursor.prune_mark(), cfg.retention);
                if let Some(mark) = horizon.due(now, cfg.retention) {
                    match directory.prune_changes(cfg.retention, &mark).await {
                        Ok(n) if n > 0 => debug!(rows = n, "pruned the change log"),
                        Ok(_) => {}
                        Err(e) => debug!(error = %e, "pruning the change log failed"),
                    }
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        }
        read_and_apply(
            cache,
            &directory,
            &mut cursor,
            cfg,
            metrics,
            &mut progress,
            &mut frontier,
        )
        .await;
        if let Some(slice) = verification.next_slice() {
            match cache.verify(&slice).await {
                Ok(n) => verification.repaired(n),
                Err(e) => {
                    metrics.change_errors.inc();
                    warn!(error = %e, "verifying cached users failed; they are verified again next time");
                }
            }
            if let Some(repaired) = verification.finished() {
                metrics.verify_repairs.inc_by(repaired as u64);
                metrics.users_changed.inc_by(repaired as u64);
                if repaired > 0 {
                    warn!(
                        users = repaired,
                        "verification corrected cached lists: the database changed without a \
                         change-log row (a write with triggers disabled, or an unwatched table \
                         behind a view?)"
                    );
                }
            }
        }
    }
}

/// One pass of the follower: read the log past `cursor` and recompute whom it touches.
async fn read_and_apply(
    cache: &Cache,
    directory: &Directory,
    cursor: &mut ChangeCursor,
    cfg: &FollowerConfig,
    metrics: &Metrics,
    progress: &mut Progress,
    frontier: &mut FrontierWatch,
) {
    let Progress {
        last_read,
        conferences: retry_conferences,
        resync: retry_resync,
        changed_at: retry_changed_at,
    } = progress;
    let read = match directory.read_changes(cursor, PAGE).await {
        Ok(read) => read,
        Err(e) => {
            metrics.change_errors.inc();
            warn!(error = %e, "reading the change log failed; retrying");
            return;
        }
    };
    metrics.change_log_lag.set(
        read.newest
            .and_then(|at| SystemTime::now().duration_since(at).ok())
            .map_or(0.0, |lag| lag.as_secs_f64()),
    );
    match directory.await_replica(read.wal, REPLICA_WAIT).await {
        ReplicaCatchUp::Behind => {
            metrics.replica_fallbacks.inc();
            warn!(
                rows = read.rows,
                wait = ?REPLICA_WAIT,
                "the read replica has not replayed the change-log read; directory reads go to \
                 the primary until it has"
            );
        }
        ReplicaCatchUp::StillBehind => {
            metrics.replica_fallbacks.inc();
        }
        ReplicaCatchUp::NoReplica | ReplicaCatchUp::CaughtUp => {}
    }
    let now = Instant::now();
    let age = frontier.observe(now, cursor.oldest_open());
    metrics
        .change_frontier_age
        .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    if frontier.should_warn(now, age) {
        warn!(
            age_secs = age.as_secs(),
            "a database transaction has been open for a long time; changes it logs reach \
             subscribers when it commits"
        );
    }
    // `None`: never read yet (the cache is empty then, so this is cheap).
    let mut resync = last_read.is_none_or(|at| now.duration_since(at) > cfg.retention / 2);
    *last_read = Some(now);
    if resync {
        warn!("change log unread for longer than half its retention; resyncing every cached user");
    }
    if read.resync {
        info!("a TRUNCATE of a watched table was logged; resyncing every cached user");
        resync = true;
    }
    if resync {
        metrics.resyncs.inc();
    }
    metrics.changes_read.inc_by(read.conferences.len() as u64);
    // Recurring meetings whose occurrence ended are read again like changed conferences.
    let mut conferences = read.conferences;
    conferences.extend(cache.take_due_rolls(chrono::Utc::now()));
    // A batch whose recompute failed (the cursor moved past its rows) goes again with this
    // one: only its users are recomputed, not every cached user, so a database that is
    // slow for a moment does not turn into a full resync on top of the load.
    conferences.extend(std::mem::take(retry_conferences));
    resync |= std::mem::take(retry_resync);
    let changed_at = match (read.oldest, retry_changed_at.take()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match cache.apply_changes(&conferences, resync, changed_at).await {
        Ok(n) => {
            metrics.users_changed.inc_by(n as u64);
        }
        Err(e) => {
            // The cursor moved past these rows: keep them for the next read (bounded:
            // beyond the limit, recompute everyone instead).
            metrics.change_errors.inc();
            warn!(error = %e, conferences = conferences.len(), "recomputing changed users failed; will retry them");
            if resync || conferences.len() > MAX_RETRY_CONFERENCES {
                *retry_resync = true;
            } else {
                *retry_conferences = conferences;
            }
            *retry_changed_at = changed_at;
            cache.follower_wake.notify_one();
        }
    }
}

/// Most conferences of failed batches kept for the next read; beyond, everyone is resynced.
const MAX_RETRY_CONFERENCES: usize = 100_000;

/// Where the follower stands between reads: when it last read the log, and what a failed
/// recompute left for the next read.
#[derive(Debug, Default)]
struct Progress {
    /// The last read (`None`: never read yet).
    last_read: Option<Instant>,
    /// The conferences whose users were not recomputed.
    conferences: std::collections::HashSet<String>,
    /// Every cached user must be recomputed (a failed resync, or too many conferences).
    resync: bool,
    /// The oldest `changed_at` of those failed batches.
    changed_at: Option<SystemTime>,
}

/// Waits for `tick`'s next tick; forever without one.
async fn next_tick(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One verification pass over the cached users, walked in slices (sans-IO).
#[derive(Debug, Default)]
struct Verification {
    pending: Vec<String>,
    running: bool,
    repaired: usize,
}

impl Verification {
    /// No pass under way: the next may start.
    fn is_idle(&self) -> bool {
        !self.running
    }

    fn start(&mut self, users: Vec<String>) {
        self.pending = users;
        self.running = true;
        self.repaired = 0;
    }

    /// The next users to re-read, if a pass is under way.
    fn next_slice(&mut self) -> Option<Vec<String>> {
        if !self.running {
            return None;
        }
        let at = self.pending.len().saturating_sub(VERIFY_SLICE);
        Some(self.pending.split_off(at))
    }

    fn repaired(&mut self, n: usize) {
        self.repaired += n;
    }

    /// When the pass has just ended: how many lists it corrected.
    fn finished(&mut self) -> Option<usize> {
        if self.running && self.pending.is_empty() {
            self.running = false;
            Some(self.repaired)
        } else {
            None
        }
    }
}

/// Past cursors with the time they were taken (sans-IO): a cursor taken at least the
/// retention ago marks rows that every reader has had the whole retention to see since
/// their commit. Sampled at most ~256 times per retention, so it stays small.
#[derive(Debug, Default)]
pub struct PruneHorizon {
    samples: VecDeque<(Instant, PruneMark)>,
}

impl PruneHorizon {
    /// Remembers `mark` as taken at `now` (skipped if the last sample is very recent).
    pub fn record(&mut self, now: Instant, mark: PruneMark, retention: Duration) {
        let spacing = retention / 256;
        if let Some((at, last)) = self.samples.back()
            && (*last == mark || now.duration_since(*at) < spacing)
        {
            return;
        }
        self.samples.push_back((now, mark));
    }

    /// The newest mark taken at least `retention` before `now`, if any; older ones are
    /// forgotten.
    pub fn due(&mut self, now: Instant, retention: Duration) -> Option<PruneMark> {
        let old_enough = |at: &Instant| now.duration_since(*at) >= retention;
        while self.samples.len() > 1 && self.samples.get(1).is_some_and(|(at, _)| old_enough(at)) {
            self.samples.pop_front();
        }
        self.samples
            .front()
            .filter(|(at, _)| old_enough(at))
            .map(|(_, mark)| mark.clone())
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when no sample is held.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// How long the oldest running transaction has been seen running (sans-IO). It holds the
/// log reader's frontier: its rows, and only its, wait for its commit.
#[derive(Debug, Default)]
pub struct FrontierWatch {
    oldest: Option<(u64, Instant)>,
    warned: Option<Instant>,
}

impl FrontierWatch {
    /// Notes the oldest running transaction at `now`; returns how long it has been seen.
    pub fn observe(&mut self, now: Instant, oldest_open: Option<u64>) -> Duration {
        match (oldest_open, self.oldest) {
            (None, _) => {
                self.oldest = None;
                Duration::ZERO
            }
            (Some(txid), Some((seen, since))) if seen == txid => now.duration_since(since),
            (Some(txid), _) => {
                self.oldest = Some((txid, now));
                Duration::ZERO
            }
        }
    }

    /// Whether to warn about `age` now (rate-limited).
    pub fn should_warn(&mut self, now: Instant, age: Duration) -> bool {
        if age < FRONTIER_WARN_AGE
            || self
                .warned
                .is_some_and(|at| now.duration_since(at) < FRONTIER_WARN_EVERY)
        {
            return false;
        }
        self.warned = Some(now);
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_marks_are_used_only_once_they_are_a_retention_old() {
        let t0 = Instant::now();
        let retention = Duration::from_secs(3600);
        let mut h = PruneHorizon::default();
        assert_eq!(
            h.due(t0, retention),
            None,
            "nothing sampled: nothing pruned"
        );
        h.record(t0, PruneMark::Sqlite(10), retention);
        h.record(
            t0 + Duration::from_secs(1),
            PruneMark::Sqlite(11),
            retention,
        );
        assert_eq!(h.len(), 1, "samples closer than retention/256 are skipped");
        h.record(
            t0 + Duration::from_secs(60),
            PruneMark::Sqlite(20),
            retention,
        );
        h.record(
            t0 + Duration::from_secs(120),
            PruneMark::Sqlite(20),
            retention,
        );
        assert_eq!(h.len(), 2, "an unchanged mark is not sampled again");
        assert_eq!(h.due(t0 + Duration::from_secs(3599), retention), None);
        assert_eq!(
            h.due(t0 + Duration::from_secs(3600), retention),
            Some(PruneMark::Sqlite(10))
        );
        assert_eq!(
            h.due(t0 + Duration::from_secs(3700), retention),
            Some(PruneMark::Sqlite(20))
        );
        assert_eq!(h.len(), 1, "older marks are forgotten");
    }

    #[test]
    fn the_horizon_stays_small_whatever_the_retention() {
        let t0 = Instant::now();
        let retention = Duration::from_secs(24 * 3600);
        let mut h = PruneHorizon::default();
        for i in 0..24 * 60 {
            let now = t0 + Duration::from_secs(60 * i);
            h.record(now, PruneMark::Sqlite(i as i64), retention);
            h.due(now, retention);
        }
        assert!(h.len() <= 260, "{}", h.len());
    }

    #[test]
    fn the_frontier_age_is_how_long_one_transaction_stays_oldest() {
        let t0 = Instant::now();
        let mut f = FrontierWatch::default();
        assert_eq!(f.observe(t0, None), Duration::ZERO);
        assert_eq!(f.observe(t0, Some(100)), Duration::ZERO);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(f.observe(at(30), Some(100)), Duration::from_secs(30));
        assert!(!f.should_warn(at(30), Duration::from_secs(30)));
        assert_eq!(f.observe(at(90), Some(100)), Duration::from_secs(90));
        assert!(f.should_warn(at(90), Duration::from_secs(90)));
        assert!(
            !f.should_warn(at(100), Duration::from_secs(100)),
            "rate-limited"
        );
        assert!(f.should_warn(at(150), Duration::from_secs(150)));
        assert_eq!(f.observe(at(151), Some(105)), Duration::ZERO, "it ended");
        assert_eq!(f.observe(at(152), None), Duration::ZERO);
    }

    #[test]
    fn a_verification_walks_every_user_in_slices_once() {
        let mut v = Verification::default();
        assert!(v.is_idle());
        assert_eq!(v.next_slice(), None);
        let users: Vec<String> = (0..VERIFY_SLICE * 2 + 1).map(|i| i.to_string()).collect();
        v.start(users);
        assert!(!v.is_idle());
        let mut seen = HashSet::new();
        let mut slices = 0;
        let result = loop {
            let slice = v.next_slice().unwrap();
            assert!(slice.len() <= VERIFY_SLICE);
            slices += 1;
            seen.extend(slice);
            v.repaired(1);
            if let Some(n) = v.finished() {
                break n;
            }
        };
        assert_eq!((slices, result, seen.len()), (3, 3, VERIFY_SLICE * 2 + 1));
        assert!(v.is_idle());
        v.start(Vec::new());
        assert_eq!(v.next_slice(), Some(Vec::new()));
        assert_eq!(v.finished(), Some(0), "an empty cache ends at once");
    }
}
