//! The optional credentials relation of the database contract:
//!
//! ```sql
//! conflist_credentials(username TEXT, realm TEXT, user_uri TEXT,
//!                      ha1_md5 TEXT NULL, ha1_sha256 TEXT NULL,
//!                      PRIMARY KEY (username, realm))
//! ```
//!
//! One row per digest user name and realm: the address of record the name signs in as, and
//! HA1 = H(username:realm:password) in lowercase hex for MD5 and SHA-256 (RFC 8760). An
//! operator's database without the relation is valid: every user is then unknown (digest
//! sign-in always fails; bearer tokens still work), and a warning is logged once.

use super::{Db, Directory, DirectoryError};
use std::sync::atomic::{AtomicBool, Ordering};

/// One row of `conflist_credentials`. Holds secrets-equivalent HA1s: never log it.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCredentials {
    /// The address of record this user name signs in as.
    pub user_uri: String,
    /// H(username:realm:password) with MD5, lowercase hex.
    pub ha1_md5: Option<String>,
    /// H(username:realm:password) with SHA-256, lowercase hex.
    pub ha1_sha256: Option<String>,
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredentials")
            .field("user_uri", &self.user_uri)
            .field("ha1_md5", &self.ha1_md5.as_ref().map(|_| "[redacted]"))
            .field(
                "ha1_sha256",
                &self.ha1_sha256.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// Set once the missing relation has been reported.
static MISSING_WARNED: AtomicBool = AtomicBool::new(false);

const POSTGRES_SELECT: &str = "SELECT user_uri, ha1_md5, ha1_sha256 FROM conflist_credentials \
     WHERE username = $1 AND realm = $2";
const SQLITE_SELECT: &str = "SELECT user_uri, ha1_md5, ha1_sha256 FROM conflist_credentials \
     WHERE username = ?1 AND realm = ?2";
const UPSERT_POSTGRES: &str = "INSERT INTO conflist_credentials \
     (username, realm, user_uri, ha1_md5, ha1_sha256) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (username, realm) DO UPDATE SET user_uri = EXCLUDED.user_uri, \
     ha1_md5 = EXCLUDED.ha1_md5, ha1_sha256 = EXCLUDED.ha1_sha256";
const UPSERT_SQLITE: &str = "INSERT INTO conflist_credentials \
     (username, realm, user_uri, ha1_md5, ha1_sha256) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (username, realm) DO UPDATE SET user_uri = excluded.user_uri, \
     ha1_md5 = excluded.ha1_md5, ha1_sha256 = excluded.ha1_sha256";

/// What [`Directory::set_credentials`] writes.
#[derive(Clone, PartialEq, Eq)]
pub struct NewCredentials<'a> {
    /// Digest user name.
    pub username: &'a str,
    /// Realm the HA1s were computed for.
    pub realm: &'a str,
    /// Address of record.
    pub user_uri: &'a str,
    /// MD5 HA1, hex.
    pub ha1_md5: Option<&'a str>,
    /// SHA-256 HA1, hex.
    pub ha1_sha256: Option<&'a str>,
}

impl std::fmt::Debug for NewCredentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("user_uri", &self.user_uri)
            .finish_non_exhaustive()
    }
}

impl Directory {
    /// The row for (`username`, `realm`), or `None` for an unknown user, including when the
    /// relation does not exist (warned once).
    pub async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<StoredCredentials>, DirectoryError> {
        let result = match self.reader() {
            Db::Postgres(pool) => {
                self.timed(
                    "credentials",
                    sqlx::query_as::<_, StoredCredentials>(POSTGRES_SELECT)
                        .bind(username)
                        .bind(realm)
                        .fetch_optional(pool),
                )
                .await
            }
            Db::Sqlite(pool) => {
                self.timed(
                    "credentials",
                    sqlx::query_as::<_, StoredCredentials>(SQLITE_SELECT)
                        .bind(username)
                        .bind(realm)
                        .fetch_optional(pool),
                )
                .await
            }
        };
        match result {
            Ok(row) => Ok(row),
            Err(e) if is_missing_relation(&e) => {
                if !MISSING_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "relation conflist_credentials does not exist: every digest user is \
                         unknown (run `conflist-server db migrate` or provide it as a view)"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts or replaces the row of (`username`, `realm`), on the primary.
    pub async fn set_credentials(&self, c: &NewCredentials<'_>) -> Result<(), DirectoryError> {
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(UPSERT_POSTGRES)
                    .bind(c.username)
                    .bind(c.realm)
                    .bind(c.user_uri)
                    .bind(c.ha1_md5)
                    .bind(c.ha1_sha256)
                    .execute(pool)
                    .await?;
            }
            Db::Sqlite(pool) => {
                sqlx::query(UPSERT_SQLITE)
                    .bind(c.username)
                    .bind(c.realm)
                    .bind(c.user_uri)
                    .bind(c.ha1_md5)
                    .bind(c.ha1_sha256)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// PostgreSQL `undefined_table` (42P01), or SQLite's "no such table".
pub(crate) fn is_missing_relation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("42P01") || db.message().contains("no such table")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite(migrate: bool) -> Directory {
        let d = Directory::connect("sqlite::memory:", 1).await.unwrap();
        if migrate {
            d.migrate().await.unwrap();
        }
        d
    }

    #[tokio::test]
    async fn upsert_then_read_back() {
        let d = sqlite(true).await;
        assert_eq!(d.credentials("alice", "example.com").await.unwrap(), None);
        let mut row = NewCredentials {
            username: "alice",
            realm: "example.com",
            user_uri: "sip:alice@example.com",
            ha1_md5: Some("00"),
            ha1_sha256: None,
        };
        d.set_credentials(&row).await.unwrap();
        row.ha1_md5 = Some("11");
        row.ha1_sha256 = Some("22");
        d.set_credentials(&row).await.unwrap();
        let got = d
            .credentials("alice", "example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.user_uri, "sip:alice@example.com");
        assert_eq!(got.ha1_md5.as_deref(), Some("11"));
        assert_eq!(got.ha1_sha256.as_deref(), Some("22"));
        assert_eq!(
            d.credentials("alice", "other").await.unwrap(),
            None,
            "per realm"
        );
        assert!(!format!("{got:?}").contains("22"), "Debug redacts HA1s");
    }

    #[tokio::test]
    async fn a_database_without_the_relation_has_no_users() {
        let d = sqlite(false).await;
        assert_eq!(d.credentials("alice", "example.com").await.unwrap(), None);
    }
}
