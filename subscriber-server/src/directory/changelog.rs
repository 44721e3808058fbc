//! The change log (outbox) on PostgreSQL: the table, and per-table trigger functions that an
//! operator installs on their own tables with `conflist-server db install`.
//!
//! Each watched table gets an `AFTER INSERT OR UPDATE OR DELETE … FOR EACH ROW` trigger that
//! logs the affected conference URI, computed by an operator-given SQL expression over the
//! row's columns (for old and new rows), and a `pg_notify('conflist_changes', '')` as the
//! wake-up (payload-less, so PostgreSQL folds one transaction's wake-ups into one).
//! A conference-level entry is enough: the server recomputes every cached user who was or is
//! a member of a logged conference.

/// LISTEN channel of the wake-up.
pub const CHANNEL: &str = "conflist_changes";

/// Creates the log table and the registry of watched tables (idempotent).
pub const CREATE_LOG: &str = r#"
CREATE TABLE IF NOT EXISTS conflist_changes (
    id             BIGSERIAL PRIMARY KEY,
    conference_uri TEXT NOT NULL,
    txid           XID8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS conflist_changes_by_txid ON conflist_changes (txid);
CREATE INDEX IF NOT EXISTS conflist_changes_by_time ON conflist_changes (changed_at);
CREATE TABLE IF NOT EXISTS conflist_watched (
    table_name      TEXT PRIMARY KEY,
    conference_expr TEXT NOT NULL
);
"#;

/// Why a watch definition is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// Not `table` or `schema.table` made of letters, digits and underscores.
    #[error("table name {0:?} must be [schema.]name of letters, digits and underscores")]
    BadTable(String),
    /// Not `TABLE=EXPRESSION`.
    #[error("watch {0:?} must be TABLE=SQL_EXPRESSION")]
    BadSpec(String),
}

/// One table to watch and the SQL expression that yields the conference URI of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    /// `[schema.]table`.
    pub table: String,
    /// SQL over the row's columns, e.g. `'sip:' || room_id || '@conf.example.com'`.
    pub conference_expr: String,
}

impl Watch {
    /// Parses `TABLE=EXPRESSION` (the command line form).
    pub fn parse(spec: &str) -> Result<Self, WatchError> {
        let (table, expr) = spec
            .split_once('=')
            .ok_or_else(|| WatchError::BadSpec(spec.to_owned()))?;
        let (table, expr) = (table.trim(), expr.trim());
        if expr.is_empty() {
            return Err(WatchError::BadSpec(spec.to_owned()));
        }
        check_table(table)?;
        Ok(Self {
            table: table.to_owned(),
            conference_expr: expr.to_owned(),
        })
    }

    /// Name of this table's trigger function.
    fn function(&self) -> String {
        format!("conflist_log_{}", self.table.replace('.', "_"))
    }

    /// SQL that (re)creates the trigger function and trigger. The expression is the
    /// operator's own SQL (an administrator's input, like a view definition).
    pub fn install_sql(&self) -> String {
        let (f, t, e) = (self.function(), &self.table, &self.conference_expr);
        format!(
            r#"
CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $conflist$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO conflist_changes (conference_uri) SELECT {e} FROM (SELECT OLD.*) AS r;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO conflist_changes (conference_uri)
        SELECT {e} FROM (SELECT NEW.*) AS r
        WHERE TG_OP = 'INSERT' OR ({e}) IS DISTINCT FROM (SELECT {e} FROM (SELECT OLD.*) AS r);
    END IF;
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$conflist$;
DROP TRIGGER IF EXISTS conflist_changes ON {t};
CREATE TRIGGER conflist_changes AFTER INSERT OR UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION {f}();
"#
        )
    }

    /// SQL that removes the trigger and its function.
    pub fn uninstall_sql(&self) -> String {
        format!(
            "DROP TRIGGER IF EXISTS conflist_changes ON {t}; DROP FUNCTION IF EXISTS {f}();",
            t = self.table,
            f = self.function()
        )
    }
}

fn check_table(table: &str) -> Result<(), WatchError> {
    let ok = !table.is_empty()
        && table.split('.').count() <= 2
        && table.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(WatchError::BadTable(table.to_owned()))
    }
}

/// The watches of the reference schema.
pub fn reference_watches() -> [Watch; 2] {
    [
        Watch {
            table: "conflist_conferences".into(),
            conference_expr: "conference_uri".into(),
        },
        Watch {
            table: "conflist_members".into(),
            conference_expr: "conference_uri".into(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watch_specs_and_refuses_odd_table_names() {
        let w = Watch::parse("app.rooms = 'sip:' || id || '@conf.example.com'").unwrap();
        assert_eq!(w.table, "app.rooms");
        assert_eq!(w.conference_expr, "'sip:' || id || '@conf.example.com'");
        assert_eq!(w.function(), "conflist_log_app_rooms");
        assert!(matches!(Watch::parse("rooms"), Err(WatchError::BadSpec(_))));
        assert!(matches!(
            Watch::parse("rooms="),
            Err(WatchError::BadSpec(_))
        ));
        for bad in ["ro oms=x", "a;drop=x", "1rooms=x", "a.b.c=x", ".a=x"] {
            assert!(
                matches!(Watch::parse(bad), Err(WatchError::BadTable(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn install_sql_logs_old_and_new_rows_and_wakes_listeners() {
        let sql = reference_watches()[1].install_sql();
        assert!(sql.contains("CREATE OR REPLACE FUNCTION conflist_log_conflist_members()"));
        assert!(sql.contains("SELECT conference_uri FROM (SELECT OLD.*) AS r"));
        assert!(sql.contains("SELECT conference_uri FROM (SELECT NEW.*) AS r"));
        assert!(sql.contains("pg_notify('conflist_changes', '')"));
        assert!(sql.contains("AFTER INSERT OR UPDATE OR DELETE ON conflist_members"));
    }
}
