//! A PostgreSQL database created for one test and dropped after it.

use anyhow::{Context, Result};
use sqlx::{Connection, Executor, PgConnection};

/// Where the tests' PostgreSQL is; `TEST_DATABASE_URL` points elsewhere.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A fresh database; dropped (with FORCE) when this value is dropped.
#[derive(Debug)]
pub struct TestDb {
    admin_url: String,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl TestDb {
    /// Creates `conflist_test_<random>` on the server of `TEST_DATABASE_URL` (or the default).
    pub async fn create() -> Result<Self> {
        let admin_url =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned());
        let mut conn = PgConnection::connect(&admin_url).await.with_context(|| {
            format!(
                "PostgreSQL not reachable at {admin_url}: start it with \
                 `pg_ctlcluster --skip-systemctl-redirect 15 main start`, or set TEST_DATABASE_URL"
            )
        })?;
        let name = format!("conflist_test_{:016x}", rand::random::<u64>());
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .context("create test database")?;
        conn.close().await.ok();
        let url = replace_database(&admin_url, &name);
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }

    /// A connection to the test database, for making changes in tests.
    pub async fn connect(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect(&self.url).await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // The name is ours (hex only), so the dynamic SQL is safe.
        // Drop runs inside a runtime; do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = PgConnection::connect(&admin_url).await {
                    let _ = c.execute(sqlx::AssertSqlSafe(sql)).await;
                }
            });
        })
        .join();
    }
}

/// `postgres://u@h:p/db?x` with the database replaced.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_part() {
        assert_eq!(
            super::replace_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::replace_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            super::replace_database("postgres://h", "x"),
            "postgres://h/x"
        );
    }
}
