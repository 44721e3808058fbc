//! The conference directory: reads a subscriber's conferences through the database contract.
//!
//! The contract is two relations with fixed column names, `conflist_conferences` and
//! `conflist_members` (see README "Database contract"). The reference schema provides them as
//! tables (`migrations/`); an operator maps an existing schema onto them with views. Only
//! this module knows SQL. PostgreSQL and SQLite (the embedded demo default) are the two
//! back-ends; both run the same directory tests.
//!
//! Rows are decoded one by one: a row that cannot be decoded (a `NULL` where the contract
//! needs a value, a wrong type, invalid UTF-8 in a SQLite `TEXT`) is skipped, logged with its
//! conference and counted (`conflist_server_rows_skipped_total`), so one bad row costs its
//! member that conference and nobody anything else.
//!
//! With a read replica (`--read-database-url`), conference, membership and credential reads
//! go to it; the change log, its `LISTEN`, pruning, triggers and migrations stay on the
//! primary. A change batch waits for the replica to replay past the primary's WAL position
//! taken after the log read ([`Directory::await_replica`]); a replica still behind after a
//! bounded wait is skipped, for that batch and for every read until it has caught up, so no
//! list is read from a state older than a change already applied. Every query is timed into
//! `conflist_server_db_query_seconds{query}`.

pub mod changelog;
pub mod credentials;
pub mod recurrence;
pub mod rows;

use crate::metrics::QueryLabel;
use changelog::{RESYNC_MARK, Watch};
pub use credentials::{NewCredentials, StoredCredentials};
use document::Conference;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use rows::{Columns, ConferenceRow, Decoder, Dialect, Oversize, Queries};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{ColumnIndex, Decode, FromRow, Row};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

/// Why the directory could not answer. Never shown to SIP clients (they see 503).
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The URL names neither `postgres://` nor `sqlite:`.
    #[error("unsupported database URL scheme (expected postgres:// or sqlite:)")]
    UnsupportedUrl,
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The operation needs PostgreSQL.
    #[error("this needs PostgreSQL")]
    PostgresOnly,
    /// Applying the reference schema failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A watch definition was refused (see [`changelog::check_expression`]).
    #[error(transparent)]
    Watch(#[from] changelog::WatchError),
    /// The database answered something that is not a snapshot (`pg_current_snapshot()`).
    #[error("unexpected snapshot {0:?} from the database")]
    BadSnapshot(String),
    /// The database answered something that is not a WAL position (`pg_lsn`).
    #[error("unexpected WAL position {0:?} from the database")]
    BadWalPosition(String),
    /// The database did not answer within the time allowed.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
}

impl DirectoryError {
    /// Whether the database could not be reached or is restarting (worth waiting for), as
    /// opposed to refusing us for good (credentials, TLS, a missing database or relation).
    pub fn is_unreachable(&self) -> bool {
        fn sql(e: &sqlx::Error) -> bool {
            match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Protocol(_)
                | sqlx::Error::WorkerCrashed => true,
                // Connection exceptions, insufficient resources (too many connections),
                // operator intervention (starting up, shutting down), system errors.
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || c.starts_with("53")
                        || c.starts_with("57P")
                        || c.starts_with("58")
                }),
                _ => false,
            }
        }
        match self {
            DirectoryError::Database(e) => sql(e),
            DirectoryError::Migrate(
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _),
            ) => sql(e),
            DirectoryError::Timeout(_) => true,
            _ => false,
        }
    }
}

/// The database-query histogram family (`conflist_server_db_query_seconds{query}`).
pub type QueryTimes = Family<QueryLabel, Histogram, fn() -> Histogram>;

/// A pool on one of the two supported back-ends (and an optional PostgreSQL read replica),
/// and the counters of rows it had to skip and of query times.
#[derive(Debug, Clone)]
pub struct Directory {
    /// The primary: the change log, migrations, and reads without a replica.
    db: Db,
    /// The read replica (`--read-database-url`), if any.
    replica: Option<Replica>,
    query_times: QueryTimes,
    rows_skipped: Counter,
    truncated: Counter,
    /// The queries for the optional columns found ([`Directory::discover_columns`]).
    queries: Arc<RwLock<Arc<Queries>>>,
    /// Most bytes one conference may take in a document (`--max-conference-bytes`).
    max_conference_bytes: usize,
}

/// The default of `--max-conference-bytes`.
pub const DEFAULT_MAX_CONFERENCE_BYTES: usize = 16 * 1024;

/// Longest wait for a pool connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A read replica and what it must have replayed before it serves reads again.
#[derive(Debug, Clone)]
struct Replica {
    /// Always [`Db::Postgres`].
    db: Db,
    /// A primary WAL position a change batch needed and the replica had not replayed
    /// within the wait: until it has, reads go to the primary (a list read from the
    /// replica now could miss a change the cache has already applied).
    behind: Arc<Mutex<Option<WalLsn>>>,
}

impl Replica {
    fn behind(&self) -> Option<WalLsn> {
        *self.behind.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads go to the primary until the replica has replayed `lsn`.
    fn mark_behind(&self, lsn: WalLsn) {
        let mut behind = self.behind.lock().unwrap_or_else(PoisonError::into_inner);
        *behind = Some(behind.map_or(lsn, |b| b.max(lsn)));
    }

    /// The replica has replayed `lsn`: it serves reads again unless a later position is
    /// still pending. Logs when it does.
    fn caught_up(&self, lsn: WalLsn) {
        let mut behind = self.behind.lock().unwrap_or_else(PoisonError::into_inner);
        if behind.is_some_and(|b| b <= lsn) {
            *behind = None;
            info!(wal = %lsn, "the read replica has caught up: directory reads go to it again");
        }
    }
}

/// A PostgreSQL WAL position (`pg_lsn`, text form `X/Y` in hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalLsn(pub u64);

impl FromStr for WalLsn {
    type Err = DirectoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DirectoryError::BadWalPosition(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl std::fmt::Display for WalLsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// How a change batch's reads were placed ([`Directory::await_replica`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaCatchUp {
    /// No replica: everything reads the primary.
    NoReplica,
    /// The replica has replayed the batch's position and serves its reads.
    CaughtUp,
    /// The replica had not replayed it within the wait (or could not say): the primary
    /// serves reads until it has.
    Behind,
    /// The replica was already behind an earlier batch and has not replayed this one
    /// either; not waited for (the primary serves the reads anyway).
    StillBehind,
}

/// Connections of one pool, for `conflist_server_db_pool_connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    /// `primary` or `replica`.
    pub pool: &'static str,
    /// Connections open.
    pub size: u32,
    /// Of those, idle.
    pub idle: usize,
}

/// Whether `url` names PostgreSQL.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

#[derive(Debug, Clone)]
enum Db {
    /// The operator's PostgreSQL.
    Postgres(PgPool),
    /// The embedded default (a file or in-memory database).
    Sqlite(SqlitePool),
}

/// Demo users and conferences (valid SQL on both back-ends, idempotent).
pub const DEMO_DATA: &str = include_str!("../../demo/demo-data.sql");

/// A row of the batch query: the user, then the conference.
#[derive(Debug, sqlx::FromRow)]
struct UserConferenceRow {
    user_uri: String,
    #[sqlx(flatten)]
    conference: ConferenceRow,
}

/// A PostgreSQL snapshot (`pg_current_snapshot()`): transactions below `xmin` had ended,
/// those from `xmax` on had not started, and `xip` lists those in between still running.
/// Its size is bounded by the number of concurrent transactions, however long one runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSnapshot {
    /// Oldest transaction still running (or `xmax` when none is).
    pub xmin: u64,
    /// First transaction id not yet assigned.
    pub xmax: u64,
    /// Transactions in `[xmin, xmax)` still running.
    pub xip: Vec<u64>,
}

impl FromStr for PgSnapshot {
    type Err = DirectoryError;

    /// Parses PostgreSQL's text form `xmin:xmax:xip,xip,…`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DirectoryError::BadSnapshot(s.to_owned());
        let mut parts = s.split(':');
        let (Some(xmin), Some(xmax), Some(xip), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let xip = xip
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().map_err(|_| bad()))
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(Self {
            xmin: xmin.parse().map_err(|_| bad())?,
            xmax: xmax.parse().map_err(|_| bad())?,
            xip,
        })
    }
}

impl std::fmt::Display for PgSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

/// Where the change-log reader stands.
#[derive(Debug, Clone)]
pub enum ChangeCursor {
    /// PostgreSQL: every log row whose transaction is visible in `snapshot` has been read;
    /// the next read takes those visible in a newer snapshot and not in this one. Ids alone
    /// would lose changes (sequences hand out ids in call order, not commit order), and
    /// a remembered set of ids would grow without bound behind one long transaction.
    Postgres {
        /// The snapshot of the last read.
        snapshot: PgSnapshot,
    },
    /// SQLite: one writer at a time, so ids commit in order.
    Sqlite {
        /// Last id handled.
        last_id: i64,
    },
}

impl ChangeCursor {
    /// What may be pruned once `--change-retention` has passed since this cursor was taken:
    /// rows that were committed (and read) when it was taken.
    pub fn prune_mark(&self) -> PruneMark {
        match self {
            ChangeCursor::Postgres { snapshot } => PruneMark::Postgres(snapshot.clone()),
            ChangeCursor::Sqlite { last_id } => PruneMark::Sqlite(*last_id),
        }
    }

    /// The oldest transaction still running at the last read (PostgreSQL only): its log
    /// rows, if any, are read when it commits.
    pub fn oldest_open(&self) -> Option<u64> {
        match self {
            ChangeCursor::Postgres { snapshot } => snapshot.xip.iter().copied().min(),
            ChangeCursor::Sqlite { .. } => None,
        }
    }

    /// How many transaction ids the cursor holds (bounded by concurrent transactions).
    pub fn tracked(&self) -> usize {
        match self {
            ChangeCursor::Postgres { snapshot } => snapshot.xip.len(),
            ChangeCursor::Sqlite { .. } => 1,
        }
    }
}

/// A point in the log below which every row had committed at a known time (a past cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PruneMark {
    /// Rows whose transaction is visible in this snapshot.
    Postgres(PgSnapshot),
    /// Rows with an id up to this one.
    Sqlite(i64),
}

/// What one read of the change log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The conferences logged.
    pub conferences: HashSet<String>,
    /// A `TRUNCATE` was logged: recompute every cached user.
    pub resync: bool,
    /// Log rows read.
    pub rows: u64,
    /// The oldest `changed_at` among the rows read (`None`: no rows).
    pub oldest: Option<SystemTime>,
    /// The newest `changed_at` among the rows read (`None`: no rows).
    pub newest: Option<SystemTime>,
    /// With a read replica and rows read: the primary's WAL position after the read. The
    /// replica must have replayed it before it serves this batch's reads.
    pub wal: Option<WalLsn>,
}

impl LogRead {
    /// One log row; `changed_at` in Unix seconds (`None`: unreadable).
    fn take(&mut self, conference: String, changed_at: Option<f64>) {
        self.rows += 1;
        if conference == RESYNC_MARK {
            self.resync = true;
        } else {
            self.conferences.insert(conference);
        }
        let at = changed_at
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d));
        if let Some(at) = at {
            self.oldest = Some(self.oldest.map_or(at, |o| o.min(at)));
            self.newest = Some(self.newest.map_or(at, |n| n.max(at)));
        }
    }
}

/// A log row: id, conference, `changed_at` as Unix seconds.
type LogRow = (i64, String, Option<f64>);

/// New log rows on PostgreSQL: those whose transaction is not visible in the previous
/// snapshot (`txid >= xmax`, or running then) and is visible in the target one; one page.
const POSTGRES_READ_LOG: &str = "SELECT id, conference_uri, \
     EXTRACT(EPOCH FROM changed_at)::float8 FROM conflist_changes \
     WHERE (txid >= ($1::text)::xid8 OR txid = ANY(($2::text[])::xid8[])) \
       AND pg_visible_in_snapshot(txid, ($3::text)::pg_snapshot) AND id > $4 \
     ORDER BY id LIMIT $5";

impl Directory {
    /// Opens a pool for `url` (`postgres://…` or `sqlite:…`). PostgreSQL URLs are parsed by
    /// sqlx's `PgConnectOptions`, so TLS is configured in the URL: `sslmode=require`, or
    /// `sslmode=verify-full&sslrootcert=/path/ca.pem` (rustls with aws-lc-rs).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DirectoryError> {
        let d = Self::connect_lazy(url, max_connections, None)?;
        d.check_reachable().await?;
        Ok(d)
    }

    /// Like [`Directory::connect`], but connects on first use, so a server can start (and
    /// say it is not ready) while the database is down; `read_url` is the read replica
    /// (PostgreSQL only). Fails only on a URL it cannot use.
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        read_url: Option<&str>,
    ) -> Result<Self, DirectoryError> {
        let postgres = |url: &str| -> Result<PgPool, DirectoryError> {
            Ok(PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy(url)?)
        };
        let db = if is_postgres_url(url) {
            Db::Postgres(postgres(url)?)
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_lazy_with(options);
            Db::Sqlite(pool)
        } else {
            return Err(DirectoryError::UnsupportedUrl);
        };
        let replica = match read_url {
            None => None,
            Some(read) if is_postgres_url(read) && matches!(db, Db::Postgres(_)) => Some(Replica {
                db: Db::Postgres(postgres(read)?),
                behind: Arc::default(),
            }),
            Some(_) => return Err(DirectoryError::PostgresOnly),
        };
        let dialect = match db {
            Db::Postgres(_) => Dialect::Postgres,
            Db::Sqlite(_) => Dialect::Sqlite,
        };
        Ok(Self {
            db,
            replica,
            query_times: Family::new_with_constructor(crate::metrics::latency_histogram),
            rows_skipped: Counter::default(),
            truncated: Counter::default(),
            queries: Arc::new(RwLock::new(Arc::new(Queries::build(
                dialect,
                &Columns::default(),
            )))),
            max_conference_bytes: DEFAULT_MAX_CONFERENCE_BYTES,
        })
    }

    /// Conferences larger than `bytes` in a document are truncated (or left out when even
    /// that cannot make them fit), counted in `truncated` / the skipped-rows counter.
    #[must_use]
    pub fn with_conference_limit(mut self, bytes: usize, truncated: Counter) -> Self {
        self.max_conference_bytes = bytes;
        self.truncated = truncated;
        self
    }

    /// Times every query into `family` (the registered `db_query` metric).
    #[must_use]
    pub fn with_query_times(mut self, family: QueryTimes) -> Self {
        self.query_times = family;
        self
    }

    /// Runs `query` and records how long it took under `name` (a fixed name, never SQL).
    async fn timed<T>(&self, name: &'static str, query: impl Future<Output = T>) -> T {
        let start = Instant::now();
        let out = query.await;
        self.query_times
            .get_or_create(&QueryLabel { query: name })
            .observe(start.elapsed().as_secs_f64());
        out
    }

    /// Where directory reads go now: the replica, unless there is none or it is behind a
    /// change batch.
    fn reader(&self) -> &Db {
        match &self.replica {
            Some(r) if r.behind().is_none() => &r.db,
            _ => &self.db,
        }
    }

    /// Whether a read replica is configured.
    pub fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Connections of each pool (primary, then the replica if any).
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        let usage = |pool: &'static str, db: &Db| match db {
            Db::Postgres(p) => PoolUsage {
                pool,
                size: p.size(),
                idle: p.num_idle(),
            },
            Db::Sqlite(p) => PoolUsage {
                pool,
                size: p.size(),
                idle: p.num_idle(),
            },
        };
        let mut out = vec![usage("primary", &self.db)];
        out.extend(self.replica.iter().map(|r| usage("replica", &r.db)));
        out
    }

    /// Opens (and closes) one connection of its own to each database, outside the pools,
    /// so a failure reports the database's own error (a pool only says it timed out).
    pub async fn check_reachable(&self) -> Result<(), DirectoryError> {
        use sqlx::Connection as _;
        for db in std::iter::once(&self.db).chain(self.replica.iter().map(|r| &r.db)) {
            match db {
                Db::Postgres(pool) => {
                    let conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
                    conn.close().await?;
                }
                Db::Sqlite(pool) => {
                    let conn =
                        sqlx::SqliteConnection::connect_with(&pool.connect_options()).await?;
                    conn.close().await?;
                }
            }
        }
        Ok(())
    }

    /// Conferences truncated so far.
    pub fn truncated(&self) -> u64 {
        self.truncated.get()
    }

    /// Finds which optional columns of the contract this database has and reads them from
    /// now on; returns them (for the startup log). Until called, none are read.
    pub async fn discover_columns(&self) -> Result<Columns, DirectoryError> {
        const CONFERENCES: &str = "SELECT * FROM conflist_conferences";
        const MEMBERS: &str = "SELECT * FROM conflist_members";
        let (conferences, members, dialect) = match &self.db {
            Db::Postgres(pool) => (
                column_names(pool, CONFERENCES).await?,
                column_names(pool, MEMBERS).await?,
                Dialect::Postgres,
            ),
            Db::Sqlite(pool) => (
                column_names(pool, CONFERENCES).await?,
                column_names(pool, MEMBERS).await?,
                Dialect::Sqlite,
            ),
        };
        let found = Columns::found(&conferences, &members);
        let queries = Arc::new(Queries::build(dialect, &found));
        *self.queries.write().unwrap_or_else(PoisonError::into_inner) = queries;
        Ok(found)
    }

    fn queries(&self) -> Arc<Queries> {
        self.queries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Rows to conferences at this instant (next occurrences are computed for now).
    fn decoder(&self) -> Decoder {
        Decoder {
            now: chrono::Utc::now(),
            max_conference_bytes: self.max_conference_bytes,
        }
    }

    /// One row to its conference; a conference too large even when cut is left out and
    /// counted with the rows skipped.
    fn conference(&self, decoder: &Decoder, row: ConferenceRow) -> Option<Conference> {
        let (c, oversize) = decoder.decode(row);
        match oversize {
            Oversize::Fits => {}
            Oversize::Truncated => {
                self.truncated.inc();
            }
            Oversize::Skipped => {
                self.rows_skipped.inc();
            }
        }
        c
    }

    /// Counts skipped rows in `counter` (the registered `rows_skipped` metric).
    #[must_use]
    pub fn with_rows_skipped(mut self, counter: Counter) -> Self {
        self.rows_skipped = counter;
        self
    }

    /// Rows skipped so far because they could not be decoded.
    pub fn rows_skipped(&self) -> u64 {
        self.rows_skipped.get()
    }

    /// Applies the reference schema of this back-end (idempotent).
    pub async fn migrate(&self) -> Result<(), DirectoryError> {
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::migrate!("migrations/postgres").run(pool).await?;
                self.install_watches(&changelog::reference_watches())
                    .await?;
            }
            Db::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// Inserts the demo users, conferences and memberships.
    pub async fn load_demo_data(&self) -> Result<(), DirectoryError> {
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::raw_sql(DEMO_DATA).execute(pool).await?;
            }
            Db::Sqlite(pool) => {
                sqlx::raw_sql(DEMO_DATA).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// The health probe (readiness follows it): is the primary database reachable? Through the pool when it has
    /// room, else over a connection of its own, so that a pool busy with a burst of loads
    /// (a failover moving many subscriptions here) does not read as an outage and send the
    /// subscriptions on to the next server. The replica is not asked: reads fall back to
    /// the primary when it lags, so it does not decide whether this server serves.
    pub async fn probe(&self) -> Result<(), DirectoryError> {
        use sqlx::Connection as _;
        let saturated = |size: u32, idle: usize, max: u32| idle == 0 && size >= max;
        self.timed("ping", async {
            match &self.db {
                Db::Postgres(pool) => {
                    if saturated(
                        pool.size(),
                        pool.num_idle(),
                        pool.options().get_max_connections(),
                    ) {
                        let conn =
                            sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
                        conn.close().await
                    } else {
                        sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop)
                    }
                }
                Db::Sqlite(pool) => sqlx::raw_sql("SELECT 1").execute(pool).await.map(drop),
            }
        })
        .await?;
        Ok(())
    }

    /// After a change-log read that needs `lsn` (see [`LogRead::wal`]): waits at most
    /// `wait` for the replica to replay it. Caught up: the replica serves the batch.
    /// Not (or it cannot say): reads go to the primary until it has. A replica already
    /// behind is asked once, not waited for, so a lagging replica delays no batch twice.
    pub async fn await_replica(&self, lsn: Option<WalLsn>, wait: Duration) -> ReplicaCatchUp {
        let (Some(replica), Some(lsn)) = (&self.replica, lsn) else {
            return ReplicaCatchUp::NoReplica;
        };
        if replica.behind().is_some() {
            return if self.replica_has(replica, lsn).await.unwrap_or(false) {
                replica.caught_up(lsn);
                ReplicaCatchUp::CaughtUp
            } else {
                replica.mark_behind(lsn);
                ReplicaCatchUp::StillBehind
            };
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(5);
        loop {
            match self.replica_has(replica, lsn).await {
                Ok(true) => {
                    replica.caught_up(lsn);
                    return ReplicaCatchUp::CaughtUp;
                }
                Ok(false) => {}
                Err(e) => {
                    debug!(error = %e, "asking the read replica how far it has replayed failed");
                    break;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        replica.mark_behind(lsn);
        ReplicaCatchUp::Behind
    }

    /// If reads were moved to the primary because the replica was behind, checks once
    /// whether it has caught up, and moves them back. Returns whether reads go to the
    /// primary for that reason still.
    pub async fn recheck_replica(&self) -> bool {
        let Some(replica) = &self.replica else {
            return false;
        };
        let Some(lsn) = replica.behind() else {
            return false;
        };
        if self.replica_has(replica, lsn).await.unwrap_or(false) {
            replica.caught_up(lsn);
        }
        replica.behind().is_some()
    }

    /// Whether the replica has replayed `lsn` (a database not in recovery has everything).
    async fn replica_has(&self, replica: &Replica, lsn: WalLsn) -> Result<bool, DirectoryError> {
        let Db::Postgres(pool) = &replica.db else {
            return Ok(true);
        };
        let (done,): (bool,) = self
            .timed(
                "replica_replay",
                sqlx::query_as(
                    "SELECT NOT pg_is_in_recovery() \
                     OR COALESCE(pg_last_wal_replay_lsn() >= ($1::text)::pg_lsn, false)",
                )
                .bind(lsn.to_string())
                .fetch_one(pool),
            )
            .await?;
        Ok(done)
    }

    /// Every conference `user` (an address of record) is a member of, sorted by entity.
    pub async fn conferences_of(&self, user: &str) -> Result<Vec<Conference>, DirectoryError> {
        let q = self.queries();
        let sql = sqlx::AssertSqlSafe(q.of_user.as_str());
        let rows: Vec<ConferenceRow> = match self.reader() {
            Db::Postgres(pool) => self.decode(
                &self
                    .timed(
                        "conferences_of",
                        sqlx::query(sql).bind(user).fetch_all(pool),
                    )
                    .await?,
            ),
            Db::Sqlite(pool) => self.decode(
                &self
                    .timed(
                        "conferences_of",
                        sqlx::query(sql).bind(user).fetch_all(pool),
                    )
                    .await?,
            ),
        };
        let decoder = self.decoder();
        Ok(rows
            .into_iter()
            .filter_map(|r| self.conference(&decoder, r))
            .collect())
    }

    /// The conferences of each of `users` (users with none are absent), one query.
    pub async fn conferences_of_many(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, Vec<Conference>>, DirectoryError> {
        let mut out: HashMap<String, Vec<Conference>> = HashMap::new();
        if users.is_empty() {
            return Ok(out);
        }
        let q = self.queries();
        let sql = sqlx::AssertSqlSafe(q.of_users.as_str());
        const NAME: &str = "conferences_of_many";
        let rows: Vec<UserConferenceRow> = match self.reader() {
            Db::Postgres(pool) => self.decode(
                &self
                    .timed(NAME, sqlx::query(sql).bind(users).fetch_all(pool))
                    .await?,
            ),
            Db::Sqlite(pool) => self.decode(
                &self
                    .timed(
                        NAME,
                        sqlx::query(sql).bind(json_array(users)).fetch_all(pool),
                    )
                    .await?,
            ),
        };
        let decoder = self.decoder();
        for row in rows {
            let user = out.entry(row.user_uri).or_default();
            user.extend(self.conference(&decoder, row.conference));
        }
        Ok(out)
    }

    /// Every membership of `conferences` with the conference as that member sees it
    /// (role included): `(user, conference)` pairs, one query, one row per member.
    pub async fn memberships_of(
        &self,
        conferences: &[String],
    ) -> Result<Vec<(String, Conference)>, DirectoryError> {
        if conferences.is_empty() {
            return Ok(Vec::new());
        }
        let q = self.queries();
        let sql = sqlx::AssertSqlSafe(q.of_conferences.as_str());
        const NAME: &str = "members_of";
        let rows: Vec<UserConferenceRow> = match self.reader() {
            Db::Postgres(pool) => self.decode(
                &self
                    .timed(NAME, sqlx::query(sql).bind(conferences).fetch_all(pool))
                    .await?,
            ),
            Db::Sqlite(pool) => self.decode(
                &self
                    .timed(
                        NAME,
                        sqlx::query(sql)
                            .bind(json_array(conferences))
                            .fetch_all(pool),
                    )
                    .await?,
            ),
        };
        let decoder = self.decoder();
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let c = self.conference(&decoder, r.conference)?;
                Some((r.user_uri, c))
            })
            .collect())
    }

    /// Decodes each row on its own; a row that fails is skipped, logged with its
    /// conference (as far as that can be read) and counted.
    fn decode<R, T>(&self, rows: &[R]) -> Vec<T>
    where
        R: Row,
        T: for<'r> FromRow<'r, R>,
        for<'r> Vec<u8>: Decode<'r, R::Database>,
        &'static str: ColumnIndex<R>,
    {
        rows.iter()
            .filter_map(|row| match T::from_row(row) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.rows_skipped.inc();
                    let conference = row
                        .try_get_unchecked::<Option<Vec<u8>>, _>("conference_uri")
                        .ok()
                        .flatten()
                        .map_or_else(
                            || "(unreadable)".to_owned(),
                            |b| String::from_utf8_lossy(&b).into_owned(),
                        );
                    warn!(
                        conference = %conference,
                        error = %e,
                        "skipping a directory row that cannot be decoded; its member does not see \
                         this conference until the row is fixed"
                    );
                    None
                }
            })
            .collect()
    }

    /// A cursor at the log's current end: what is logged from now on will be read.
    pub async fn change_cursor(&self) -> Result<ChangeCursor, DirectoryError> {
        self.timed("change_cursor", async {
            Ok(match &self.db {
                Db::Postgres(pool) => ChangeCursor::Postgres {
                    snapshot: current_snapshot(pool).await?,
                },
                Db::Sqlite(pool) => {
                    let (last_id,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM conflist_changes")
                            .fetch_one(pool)
                            .await?;
                    ChangeCursor::Sqlite { last_id }
                }
            })
        })
        .await
    }

    /// Conferences logged since `cursor`, which moves past them only when the whole read
    /// succeeded (a failed read is simply repeated). Reads pages of at most `page` rows, so
    /// no single query returns an unbounded tail.
    pub async fn read_changes(
        &self,
        cursor: &mut ChangeCursor,
        page: i64,
    ) -> Result<LogRead, DirectoryError> {
        let mut read = self
            .timed("change_log", self.read_log(cursor, page))
            .await?;
        if read.rows > 0
            && self.replica.is_some()
            && let Db::Postgres(pool) = &self.db
        {
            // After the read: every row it saw had committed, so its commit record lies
            // before this position. The insert position, not the write position: with
            // `synchronous_commit = off` a commit is visible before its WAL is written.
            let (lsn,): (String,) = self
                .timed(
                    "wal_position",
                    sqlx::query_as("SELECT pg_current_wal_insert_lsn()::text").fetch_one(pool),
                )
                .await?;
            read.wal = Some(lsn.parse()?);
        }
        Ok(read)
    }

    /// [`Directory::read_changes`] without the WAL position.
    async fn read_log(
        &self,
        cursor: &mut ChangeCursor,
        page: i64,
    ) -> Result<LogRead, DirectoryError> {
        let mut read = LogRead::default();
        let page = page.max(1);
        match (&self.db, cursor) {
            (Db::Postgres(pool), ChangeCursor::Postgres { snapshot }) => {
                // The target snapshot first: every row visible in it is committed, so each
                // page below (a later snapshot) sees all of them.
                let target = current_snapshot(pool).await?;
                let xip: Vec<String> = snapshot.xip.iter().map(u64::to_string).collect();
                let mut after = 0_i64;
                loop {
                    let rows: Vec<LogRow> = sqlx::query_as(POSTGRES_READ_LOG)
                        .bind(snapshot.xmax.to_string())
                        .bind(&xip)
                        .bind(target.to_string())
                        .bind(after)
                        .bind(page)
                        .fetch_all(pool)
                        .await?;
                    let full = rows.len() as i64 >= page;
                    for (id, conference, changed_at) in rows {
                        after = id;
                        read.take(conference, changed_at);
                    }
                    if !full {
                        break;
                    }
                }
                *snapshot = target;
            }
            (Db::Sqlite(pool), ChangeCursor::Sqlite { last_id }) => {
                let mut after = *last_id;
                loop {
                    let rows: Vec<LogRow> = sqlx::query_as(
                        "SELECT id, conference_uri, \
                         (julianday(changed_at) - 2440587.5) * 86400.0 \
                         FROM conflist_changes WHERE id > ?1 ORDER BY id LIMIT ?2",
                    )
                    .bind(after)
                    .bind(page)
                    .fetch_all(pool)
                    .await?;
                    let full = rows.len() as i64 >= page;
                    for (id, conference, changed_at) in rows {
                        after = id;
                        read.take(conference, changed_at);
                    }
                    if !full {
                        break;
                    }
                }
                *last_id = after;
            }
            _ => {}
        }
        Ok(read)
    }

    /// Deletes log rows older than `retention` that `mark` shows committed (take the mark
    /// at least `retention` ago): a transaction that commits late keeps its rows until every
    /// reader had `retention` to see them. Returns how many were deleted.
    pub async fn prune_changes(
        &self,
        retention: Duration,
        mark: &PruneMark,
    ) -> Result<u64, DirectoryError> {
        // Beyond a century the interval would overflow; nothing is that old anyway.
        let secs = retention.as_secs().min(100 * 365 * 24 * 3600);
        self.timed("prune", self.prune(secs, mark)).await
    }

    async fn prune(&self, secs: u64, mark: &PruneMark) -> Result<u64, DirectoryError> {
        Ok(match (&self.db, mark) {
            (Db::Postgres(pool), PruneMark::Postgres(snapshot)) => sqlx::query(
                "DELETE FROM conflist_changes \
                 WHERE changed_at < clock_timestamp() - make_interval(secs => $1) \
                   AND txid < ($2::text)::xid8 \
                   AND pg_visible_in_snapshot(txid, ($3::text)::pg_snapshot)",
            )
            .bind(secs as f64)
            .bind(snapshot.xmax.to_string())
            .bind(snapshot.to_string())
            .execute(pool)
            .await?
            .rows_affected(),
            (Db::Sqlite(pool), PruneMark::Sqlite(last_id)) => sqlx::query(
                "DELETE FROM conflist_changes \
                 WHERE changed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ?1 || ' seconds') \
                   AND id <= ?2",
            )
            .bind(secs as i64)
            .bind(*last_id)
            .execute(pool)
            .await?
            .rows_affected(),
            _ => 0,
        })
    }

    /// PostgreSQL only: creates the change log and installs triggers on `watches`
    /// (the operator's tables). Idempotent. Every watch is checked first.
    pub async fn install_watches(&self, watches: &[Watch]) -> Result<(), DirectoryError> {
        let Db::Postgres(pool) = &self.db else {
            return Err(DirectoryError::PostgresOnly);
        };
        for w in watches {
            w.check()?;
        }
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(changelog::CREATE_LOG)
            .execute(&mut *tx)
            .await?;
        for w in watches {
            sqlx::raw_sql(sqlx::AssertSqlSafe(w.install_sql()))
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO conflist_watched (table_name, conference_expr) VALUES ($1, $2) \
                 ON CONFLICT (table_name) DO UPDATE SET conference_expr = EXCLUDED.conference_expr",
            )
            .bind(&w.table)
            .bind(&w.conference_expr)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// PostgreSQL only: removes every installed trigger and the change log. Returns the
    /// tables whose triggers were removed, and the names in `conflist_watched` that were
    /// skipped because they are not `[schema.]name` identifiers (`db install` never writes
    /// such a name, so someone else did; no SQL is built from them).
    pub async fn uninstall_watches(&self) -> Result<(Vec<String>, Vec<String>), DirectoryError> {
        let Db::Postgres(pool) = &self.db else {
            return Err(DirectoryError::PostgresOnly);
        };
        let mut tx = pool.begin().await?;
        let exists: (bool,) = sqlx::query_as("SELECT to_regclass('conflist_watched') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
        let (mut removed, mut refused) = (Vec::new(), Vec::new());
        if exists.0 {
            let watched: Vec<(String,)> = sqlx::query_as("SELECT table_name FROM conflist_watched")
                .fetch_all(&mut *tx)
                .await?;
            for (table,) in watched {
                let w = Watch {
                    table,
                    // Only the table name goes into the uninstall SQL.
                    conference_expr: "NULL".to_owned(),
                };
                if let Err(e) = w.check() {
                    warn!(error = %e, "conflist_watched holds a name that is not a table name; skipped");
                    refused.push(w.table);
                    continue;
                }
                sqlx::raw_sql(sqlx::AssertSqlSafe(w.uninstall_sql()))
                    .execute(&mut *tx)
                    .await?;
                removed.push(w.table);
            }
        }
        sqlx::raw_sql(changelog::DROP_LOG).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((removed, refused))
    }

    /// The PostgreSQL pool (for LISTEN), if that is the back-end.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.db {
            Db::Postgres(pool) => Some(pool),
            Db::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, if that is the back-end (tests write through it).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.db {
            Db::Sqlite(pool) => Some(pool),
            Db::Postgres(_) => None,
        }
    }

    /// Closes the pools, waiting for checked-out connections.
    pub async fn close(&self) {
        for db in std::iter::once(&self.db).chain(self.replica.iter().map(|r| &r.db)) {
            match db {
                Db::Postgres(pool) => pool.close().await,
                Db::Sqlite(pool) => pool.close().await,
            }
        }
    }
}

async fn current_snapshot(pool: &PgPool) -> Result<PgSnapshot, DirectoryError> {
    let (snapshot,): (String,) = sqlx::query_as("SELECT pg_current_snapshot()::text")
        .fetch_one(pool)
        .await?;
    snapshot.parse()
}

/// The column names of a query's result, without running it.
async fn column_names<'p, DB: sqlx::Database>(
    pool: &'p sqlx::Pool<DB>,
    query: &'static str,
) -> Result<Vec<String>, sqlx::Error>
where
    &'p sqlx::Pool<DB>: sqlx::Executor<'p, Database = DB>,
{
    use sqlx::{Column, Executor, SqlSafeStr};
    let described = pool.describe(query.into_sql_str()).await?;
    Ok(described
        .columns()
        .iter()
        .map(|c| c.name().to_owned())
        .collect())
}

/// A JSON array of strings, for SQLite's `json_each` (it has no array binds).
fn json_array(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_parse_compare_and_print_as_postgresql_does() {
        let a: WalLsn = "16/B374D848".parse().unwrap();
        assert_eq!(a.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(a.to_string(), "16/B374D848");
        let b: WalLsn = "17/0".parse().unwrap();
        assert!(b > a, "the high half orders first");
        for bad in ["", "16", "x/1", "1/100000000", "1/2/3"] {
            assert!(bad.parse::<WalLsn>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_replica_behind_serves_no_reads_until_it_has_replayed_the_latest_need() {
        let r = Replica {
            db: Db::Postgres(PgPool::connect_lazy("postgres://u@127.0.0.1:1/db").unwrap()),
            behind: Arc::default(),
        };
        assert_eq!(r.behind(), None);
        r.mark_behind(WalLsn(10));
        r.mark_behind(WalLsn(5));
        assert_eq!(r.behind(), Some(WalLsn(10)), "the latest need is kept");
        r.caught_up(WalLsn(7));
        assert_eq!(r.behind(), Some(WalLsn(10)), "not far enough");
        r.caught_up(WalLsn(12));
        assert_eq!(r.behind(), None);
    }

    #[test]
    fn log_reads_keep_the_oldest_and_newest_change_times() {
        let mut read = LogRead::default();
        read.take("sip:a".into(), Some(200.5));
        read.take("sip:b".into(), Some(100.0));
        read.take("sip:c".into(), None);
        read.take("sip:d".into(), Some(-1.0));
        let at = |s: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s);
        assert_eq!(read.rows, 4);
        assert_eq!(read.oldest, Some(at(100.0)));
        assert_eq!(read.newest, Some(at(200.5)));
    }

    #[test]
    fn snapshots_round_trip_through_their_text_form() {
        for text in ["10:10:", "5:12:5,7,11"] {
            let s: PgSnapshot = text.parse().unwrap();
            assert_eq!(s.to_string(), text);
        }
        let s: PgSnapshot = "5:12:5,7,11".parse().unwrap();
        assert_eq!((s.xmin, s.xmax, s.xip.as_slice()), (5, 12, &[5, 7, 11][..]));
        for bad in ["", "1:2", "1:2:3:4", "a:2:", "1:2:x"] {
            assert!(bad.parse::<PgSnapshot>().is_err(), "{bad}");
        }
    }

    fn entities(confs: &[Conference]) -> Vec<&str> {
        confs.iter().map(|c| c.entity.as_str()).collect()
    }

    #[tokio::test]
    async fn invalid_utf8_in_sqlite_text_skips_only_that_row() {
        let d = Directory::connect("sqlite::memory:", 1).await.unwrap();
        d.migrate().await.unwrap();
        d.load_demo_data().await.unwrap();
        let Db::Sqlite(pool) = &d.db else {
            unreachable!("connected to sqlite")
        };
        sqlx::query(
            "UPDATE conflist_conferences SET subject = CAST(X'C328FF' AS TEXT) \
             WHERE conference_uri = 'sip:1002@conf.example.com'",
        )
        .execute(pool)
        .await
        .unwrap();

        let alice = d.conferences_of("sip:alice@example.com").await.unwrap();
        assert_eq!(
            entities(&alice),
            ["sip:1001@conf.example.com", "sip:1003@conf.example.com"]
        );
        assert_eq!(d.rows_skipped(), 1);
        let many = d
            .conferences_of_many(&[
                "sip:alice@example.com".into(),
                "sip:carol@example.com".into(),
            ])
            .await
            .unwrap();
        assert_eq!(many["sip:alice@example.com"].len(), 2);
        assert_eq!(
            many["sip:carol@example.com"].len(),
            3,
            "carol is not in 1002"
        );
        assert_eq!(d.rows_skipped(), 2);
        let members = d
            .memberships_of(&[
                "sip:1002@conf.example.com".into(),
                "sip:1004@conf.example.com".into(),
            ])
            .await
            .unwrap();
        assert!(
            members
                .iter()
                .all(|(_, c)| c.entity == "sip:1004@conf.example.com")
        );
        assert_eq!(members.len(), 2);
        assert_eq!(d.rows_skipped(), 4, "both members of 1002");
    }

    #[tokio::test]
    async fn sqlite_log_reads_page_and_prune_only_below_the_mark() {
        let d = Directory::connect("sqlite::memory:", 1).await.unwrap();
        d.migrate().await.unwrap();
        let mut cursor = d.change_cursor().await.unwrap();
        d.load_demo_data().await.unwrap();
        let read = d.read_changes(&mut cursor, 3).await.unwrap();
        assert_eq!(
            read.conferences.len(),
            5,
            "every demo conference, over pages of 3"
        );
        assert_eq!(
            read.rows, 26,
            "5 conferences, 13 memberships, then 3 conferences and 5 memberships updated"
        );
        let (oldest, newest) = (read.oldest.unwrap(), read.newest.unwrap());
        assert!(oldest <= newest);
        let age = SystemTime::now().duration_since(oldest).unwrap();
        assert!(
            age < Duration::from_secs(60),
            "changed_at read: {age:?} old"
        );
        assert_eq!(read.wal, None, "no replica, no WAL position");
        assert_eq!(d.read_changes(&mut cursor, 3).await.unwrap().rows, 0);

        let Db::Sqlite(pool) = &d.db else {
            unreachable!("connected to sqlite")
        };
        sqlx::query("UPDATE conflist_changes SET changed_at = '2000-01-01T00:00:00.000Z'")
            .execute(pool)
            .await
            .unwrap();
        let mark = PruneMark::Sqlite(10);
        assert_eq!(
            d.prune_changes(Duration::from_secs(3600), &mark)
                .await
                .unwrap(),
            10
        );
        let left: (i64,) = sqlx::query_as("SELECT count(*) FROM conflist_changes")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(left.0, 16, "rows past the mark stay, however old");
    }
}
