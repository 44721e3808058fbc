//! The conference directory: reads a subscriber's conferences through the database contract.
//!
//! The contract is two relations with fixed column names, `conflist_conferences` and
//! `conflist_members` (see README "Database contract"). The reference schema provides them as
//! tables (`migrations/`); an operator maps an existing schema onto them with views. Only
//! this module knows SQL. PostgreSQL and SQLite (the embedded demo default) are the two
//! back-ends; both run the same directory tests.

use document::{Conference, ConferenceDescription, MediaEntry, Schedule, UriEntry};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
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

/// Demo users and conferences (valid SQL on both back-ends, idempotent).
pub const DEMO_DATA: &str = include_str!("../../demo/demo-data.sql");

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
    /// Opens a pool for `url` (`postgres://…` or `sqlite:…`).
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
            Directory::Postgres(pool) => sqlx::migrate!("migrations/postgres").run(pool).await?,
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

    /// Closes the pool, waiting for checked-out connections.
    pub async fn close(&self) {
        match self {
            Directory::Postgres(pool) => pool.close().await,
            Directory::Sqlite(pool) => pool.close().await,
        }
    }
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
