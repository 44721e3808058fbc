//! The conference directory: reads a subscriber's conferences through the database contract.
//!
//! The contract is two relations with fixed column names, `conflist_conferences` and
//! `conflist_members` (see README "Database contract"). The reference schema provides them as
//! tables (`migrations/`); an operator maps an existing schema onto them with views. Only
//! this module knows SQL. PostgreSQL and SQLite (the embedded demo default) are the two
//! back-ends; both run the same directory tests.

pub mod changelog;
pub mod credentials;

use changelog::Watch;
pub use credentials::{NewCredentials, StoredCredentials};
use document::{Conference, ConferenceDescription, MediaEntry, Schedule, UriEntry};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

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
}

/// A pool on one of the two supported back-ends.
#[derive(Debug, Clone)]
pub enum Directory {
    /// The operator's PostgreSQL.
    Postgres(PgPool),
    /// The embedded default (a file or in-memory database).
    Sqlite(SqlitePool),
}

const POSTGRES_QUERY: &str = r#"
SELECT c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count::BIGINT AS maximum_user_count, c.available_media,
       to_char(c.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS starts_at,
       to_char(c.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.user_uri = $1
ORDER BY c.conference_uri"#;

const SQLITE_QUERY: &str = r#"
SELECT c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count, c.available_media,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.starts_at) AS starts_at,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.ends_at) AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.user_uri = ?1
ORDER BY c.conference_uri"#;

const POSTGRES_MANY: &str = r#"
SELECT m.user_uri, c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count::BIGINT AS maximum_user_count, c.available_media,
       to_char(c.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS starts_at,
       to_char(c.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.user_uri = ANY($1)
ORDER BY m.user_uri, c.conference_uri"#;

const POSTGRES_OF_CONFERENCES: &str = r#"
SELECT m.user_uri, c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count::BIGINT AS maximum_user_count, c.available_media,
       to_char(c.starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS starts_at,
       to_char(c.ends_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.conference_uri = ANY($1)"#;

const SQLITE_MANY: &str = r#"
SELECT m.user_uri, c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count, c.available_media,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.starts_at) AS starts_at,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.ends_at) AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.user_uri IN (SELECT value FROM json_each(?1))
ORDER BY m.user_uri, c.conference_uri"#;

const SQLITE_OF_CONFERENCES: &str = r#"
SELECT m.user_uri, c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page,
       c.maximum_user_count, c.available_media,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.starts_at) AS starts_at,
       strftime('%Y-%m-%dT%H:%M:%SZ', c.ends_at) AS ends_at,
       m.role
FROM conflist_members m
JOIN conflist_conferences c ON c.conference_uri = m.conference_uri
WHERE m.conference_uri IN (SELECT value FROM json_each(?1))"#;

/// Demo users and conferences (valid SQL on both back-ends, idempotent).
pub const DEMO_DATA: &str = include_str!("../../demo/demo-data.sql");

/// A row of the batch query: the user, then the conference.
#[derive(Debug, sqlx::FromRow)]
struct UserConferenceRow {
    user_uri: String,
    #[sqlx(flatten)]
    conference: ConferenceRow,
}

/// Where the change-log reader stands.
#[derive(Debug)]
pub enum ChangeCursor {
    /// PostgreSQL: every log row with `txid < frontier` is final (its transaction ended, as
    /// the snapshot's xmin proves); rows above it already handled are remembered by id.
    /// Ids alone would lose changes: sequences hand out ids in call order, not commit order.
    Postgres {
        /// xmin of the last read's snapshot.
        frontier: u64,
        /// Handled rows at or above the frontier: id → txid.
        seen: HashMap<i64, u64>,
    },
    /// SQLite: one writer at a time, so ids commit in order.
    Sqlite {
        /// Last id handled.
        last_id: i64,
    },
}

/// One row of the contract join, as both back-ends return it.
#[derive(Debug, sqlx::FromRow)]
struct ConferenceRow {
    conference_uri: String,
    display_text: Option<String>,
    subject: Option<String>,
    free_text: Option<String>,
    keywords: Option<String>,
    web_page: Option<String>,
    maximum_user_count: Option<i64>,
    available_media: Option<String>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    role: String,
}

impl Directory {
    /// Opens a pool for `url` (`postgres://…` or `sqlite:…`). PostgreSQL URLs are parsed by
    /// sqlx's `PgConnectOptions`, so TLS is configured in the URL: `sslmode=require`, or
    /// `sslmode=verify-full&sslrootcert=/path/ca.pem` (rustls with aws-lc-rs).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DirectoryError> {
        let acquire = Duration::from_secs(5);
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire)
                .connect(url)
                .await?;
            Ok(Directory::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(acquire)
                .connect_with(options)
                .await?;
            Ok(Directory::Sqlite(pool))
        } else {
            Err(DirectoryError::UnsupportedUrl)
        }
    }

    /// Applies the reference schema of this back-end (idempotent).
    pub async fn migrate(&self) -> Result<(), DirectoryError> {
        match self {
            Directory::Postgres(pool) => {
                sqlx::migrate!("migrations/postgres").run(pool).await?;
                self.install_watches(&changelog::reference_watches())
                    .await?;
            }
            Directory::Sqlite(pool) => sqlx::migrate!("migrations/sqlite").run(pool).await?,
        }
        Ok(())
    }

    /// Inserts the demo users, conferences and memberships.
    pub async fn load_demo_data(&self) -> Result<(), DirectoryError> {
        match self {
            Directory::Postgres(pool) => {
                sqlx::raw_sql(DEMO_DATA).execute(pool).await?;
            }
            Directory::Sqlite(pool) => {
                sqlx::raw_sql(DEMO_DATA).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Cheap round trip for readiness checks.
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        match self {
            Directory::Postgres(pool) => {
                sqlx::raw_sql("SELECT 1").execute(pool).await?;
            }
            Directory::Sqlite(pool) => {
                sqlx::raw_sql("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Every conference `user` (an address of record) is a member of, sorted by entity.
    pub async fn conferences_of(&self, user: &str) -> Result<Vec<Conference>, DirectoryError> {
        let rows: Vec<ConferenceRow> = match self {
            Directory::Postgres(pool) => {
                sqlx::query_as(POSTGRES_QUERY)
                    .bind(user)
                    .fetch_all(pool)
                    .await?
            }
            Directory::Sqlite(pool) => {
                sqlx::query_as(SQLITE_QUERY)
                    .bind(user)
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(ConferenceRow::into_conference)
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
        let rows: Vec<UserConferenceRow> = match self {
            Directory::Postgres(pool) => {
                sqlx::query_as(POSTGRES_MANY)
                    .bind(users)
                    .fetch_all(pool)
                    .await?
            }
            Directory::Sqlite(pool) => {
                sqlx::query_as(SQLITE_MANY)
                    .bind(json_array(users))
                    .fetch_all(pool)
                    .await?
            }
        };
        for row in rows {
            out.entry(row.user_uri)
                .or_default()
                .push(row.conference.into_conference());
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
        let rows: Vec<UserConferenceRow> = match self {
            Directory::Postgres(pool) => {
                sqlx::query_as(POSTGRES_OF_CONFERENCES)
                    .bind(conferences)
                    .fetch_all(pool)
                    .await?
            }
            Directory::Sqlite(pool) => {
                sqlx::query_as(SQLITE_OF_CONFERENCES)
                    .bind(json_array(conferences))
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| (r.user_uri, r.conference.into_conference()))
            .collect())
    }

    /// A cursor at the log's current end: what is logged from now on will be read.
    pub async fn change_cursor(&self) -> Result<ChangeCursor, DirectoryError> {
        Ok(match self {
            Directory::Postgres(pool) => ChangeCursor::Postgres {
                frontier: current_xmin(pool).await?,
                seen: HashMap::new(),
            },
            Directory::Sqlite(pool) => {
                let (last_id,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM conflist_changes")
                        .fetch_one(pool)
                        .await?;
                ChangeCursor::Sqlite { last_id }
            }
        })
    }

    /// Conferences logged since `cursor`, which moves past them. At most `limit` rows on
    /// SQLite per call (call again while it returns a full batch).
    pub async fn read_changes(
        &self,
        cursor: &mut ChangeCursor,
        limit: i64,
    ) -> Result<HashSet<String>, DirectoryError> {
        let mut changed = HashSet::new();
        match (self, cursor) {
            (Directory::Postgres(pool), ChangeCursor::Postgres { frontier, seen }) => {
                // xmin first: every transaction below it has ended, so the read that follows
                // sees all of their rows.
                let xmin = current_xmin(pool).await?;
                let rows: Vec<(i64, String, String)> = sqlx::query_as(
                    "SELECT id, conference_uri, txid::text FROM conflist_changes \
                     WHERE txid >= ($1::text)::xid8 ORDER BY id",
                )
                .bind(frontier.to_string())
                .fetch_all(pool)
                .await?;
                for (id, conference, txid) in rows {
                    if seen.contains_key(&id) {
                        continue;
                    }
                    seen.insert(id, txid.parse().unwrap_or(u64::MAX));
                    changed.insert(conference);
                }
                *frontier = xmin.max(*frontier);
                let f = *frontier;
                seen.retain(|_, txid| *txid >= f);
            }
            (Directory::Sqlite(pool), ChangeCursor::Sqlite { last_id }) => {
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, conference_uri FROM conflist_changes WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .bind(*last_id)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                for (id, conference) in rows {
                    *last_id = id;
                    changed.insert(conference);
                }
            }
            _ => {}
        }
        Ok(changed)
    }

    /// Deletes log rows older than `retention`; returns how many.
    pub async fn prune_changes(&self, retention: Duration) -> Result<u64, DirectoryError> {
        let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        Ok(match self {
            Directory::Postgres(pool) => sqlx::query(
                "DELETE FROM conflist_changes WHERE changed_at < now() - make_interval(secs => $1)",
            )
            .bind(secs as f64)
            .execute(pool)
            .await?
            .rows_affected(),
            Directory::Sqlite(pool) => sqlx::query(
                "DELETE FROM conflist_changes \
                 WHERE changed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || ?1 || ' seconds')",
            )
            .bind(secs)
            .execute(pool)
            .await?
            .rows_affected(),
        })
    }

    /// PostgreSQL only: creates the change log and installs triggers on `watches`
    /// (the operator's tables). Idempotent.
    pub async fn install_watches(&self, watches: &[Watch]) -> Result<(), DirectoryError> {
        let Directory::Postgres(pool) = self else {
            return Err(DirectoryError::PostgresOnly);
        };
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

    /// PostgreSQL only: removes every installed trigger and the change log.
    pub async fn uninstall_watches(&self) -> Result<Vec<String>, DirectoryError> {
        let Directory::Postgres(pool) = self else {
            return Err(DirectoryError::PostgresOnly);
        };
        let mut tx = pool.begin().await?;
        let exists: (bool,) = sqlx::query_as("SELECT to_regclass('conflist_watched') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await?;
        let mut removed = Vec::new();
        if exists.0 {
            let watched: Vec<(String, String)> =
                sqlx::query_as("SELECT table_name, conference_expr FROM conflist_watched")
                    .fetch_all(&mut *tx)
                    .await?;
            for (table, conference_expr) in watched {
                let w = Watch {
                    table,
                    conference_expr,
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(w.uninstall_sql()))
                    .execute(&mut *tx)
                    .await?;
                removed.push(w.table);
            }
        }
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS conflist_watched; DROP TABLE IF EXISTS conflist_changes;",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// The PostgreSQL pool (for LISTEN), if that is the back-end.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match self {
            Directory::Postgres(pool) => Some(pool),
            Directory::Sqlite(_) => None,
        }
    }

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        match self {
            Directory::Postgres(pool) => pool.close().await,
            Directory::Sqlite(pool) => pool.close().await,
        }
    }
}

async fn current_xmin(pool: &PgPool) -> Result<u64, DirectoryError> {
    let (xmin,): (String,) = sqlx::query_as("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(pool)
        .await?;
    Ok(xmin.parse().unwrap_or(0))
}

/// A JSON array of strings, for SQLite's `json_each` (it has no array binds).
fn json_array(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

impl ConferenceRow {
    fn into_conference(self) -> Conference {
        let non_empty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());
        let keywords = self
            .keywords
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let available_media = self
            .available_media
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .enumerate()
            .map(|(i, media)| MediaEntry {
                label: (i + 1).to_string(),
                media_type: media.to_owned(),
                display_text: None,
            })
            .collect();
        let service_uris = non_empty(self.web_page)
            .map(|uri| UriEntry {
                uri,
                display_text: None,
                purpose: Some("web-page".to_owned()),
            })
            .into_iter()
            .collect();
        let conf_uris = vec![UriEntry {
            uri: self.conference_uri.clone(),
            display_text: None,
            purpose: Some("participation".to_owned()),
        }];
        Conference {
            description: ConferenceDescription {
                display_text: non_empty(self.display_text),
                subject: non_empty(self.subject),
                free_text: non_empty(self.free_text),
                keywords,
                conf_uris,
                service_uris,
                // Negative or absurd counts in operator data are omitted, not wrapped.
                maximum_user_count: self.maximum_user_count.and_then(|n| u32::try_from(n).ok()),
                available_media,
            },
            schedule: Schedule {
                start: self.starts_at,
                end: self.ends_at,
            },
            role: non_empty(Some(self.role)),
            entity: self.conference_uri,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ConferenceRow {
        ConferenceRow {
            conference_uri: "sip:1@conf.example.com".into(),
            display_text: Some("Sync".into()),
            subject: Some("   ".into()),
            free_text: None,
            keywords: Some(" a  b ".into()),
            web_page: Some("https://meet.example.com/1".into()),
            maximum_user_count: Some(-5),
            available_media: Some("audio, video,".into()),
            starts_at: Some("2026-11-24T09:00:00Z".into()),
            ends_at: None,
            role: "organizer".into(),
        }
    }

    #[test]
    fn row_maps_to_the_document_model() {
        let c = row().into_conference();
        assert_eq!(c.entity, "sip:1@conf.example.com");
        assert_eq!(c.description.display_text.as_deref(), Some("Sync"));
        assert_eq!(c.description.subject, None, "blank text is omitted");
        assert_eq!(c.description.keywords, vec!["a", "b"]);
        assert_eq!(
            c.description.maximum_user_count, None,
            "negative count omitted"
        );
        let media: Vec<(&str, &str)> = c
            .description
            .available_media
            .iter()
            .map(|m| (m.label.as_str(), m.media_type.as_str()))
            .collect();
        assert_eq!(media, vec![("1", "audio"), ("2", "video")]);
        assert_eq!(
            c.description.conf_uris[0].purpose.as_deref(),
            Some("participation")
        );
        assert_eq!(
            c.description.service_uris[0].uri,
            "https://meet.example.com/1"
        );
        assert_eq!(c.schedule.start.as_deref(), Some("2026-11-24T09:00:00Z"));
        assert_eq!(c.role.as_deref(), Some("organizer"));
    }
}
