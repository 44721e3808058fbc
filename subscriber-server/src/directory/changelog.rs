//! The change log (outbox) on PostgreSQL: the table, and per-table trigger functions that an
//! operator installs on their own tables with `conflist-server db install`.
//!
//! Each watched table gets an `AFTER INSERT OR UPDATE OR DELETE … FOR EACH ROW` trigger that
//! logs the affected conference URI, computed by an operator-given SQL expression over the
//! row's columns (for old and new rows), and a `pg_notify('conflist_changes', '')` as the
//! wake-up (payload-less, so PostgreSQL folds one transaction's wake-ups into one).
//! A conference-level entry is enough: the server recomputes every cached user who was or is
//! a member of a logged conference. `TRUNCATE` fires no row trigger, so a statement-level
//! trigger logs [`RESYNC_MARK`] instead: every server then recomputes every cached user.
//!
//! Operator input: table names are `[schema.]name` of letters, digits and underscores, checked
//! when given and again when read back from `conflist_watched`. The `--watch` expression is
//! trusted operator SQL (like a view definition) spliced into the function body; it is
//! refused when it could end that body or the statement (see [`check_expression`]).

/// LISTEN channel of the wake-up.
pub const CHANNEL: &str = "conflist_changes";

/// The `conference_uri` a `TRUNCATE` logs: not a URI, it means "recompute everyone cached".
pub const RESYNC_MARK: &str = "*";

/// Creates the log table, the registry of watched tables and the shared `TRUNCATE` trigger
/// function (idempotent). `changed_at` is the insert's wall-clock time (`clock_timestamp()`,
/// not the transaction's start), and an older log gets that default here too.
pub const CREATE_LOG: &str = r#"
CREATE TABLE IF NOT EXISTS conflist_changes (
    id             BIGSERIAL PRIMARY KEY,
    conference_uri TEXT NOT NULL,
    txid           XID8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
ALTER TABLE conflist_changes ALTER COLUMN changed_at SET DEFAULT clock_timestamp();
CREATE INDEX IF NOT EXISTS conflist_changes_by_txid ON conflist_changes (txid);
CREATE INDEX IF NOT EXISTS conflist_changes_by_time ON conflist_changes (changed_at);
CREATE TABLE IF NOT EXISTS conflist_watched (
    table_name      TEXT PRIMARY KEY,
    conference_expr TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION conflist_log_truncate() RETURNS trigger LANGUAGE plpgsql AS $conflist$
BEGIN
    INSERT INTO conflist_changes (conference_uri) VALUES ('*');
    PERFORM pg_notify('conflist_changes', '');
    RETURN NULL;
END
$conflist$;
"#;

/// Drops the shared objects of [`CREATE_LOG`] (after every watch's own trigger is gone).
pub const DROP_LOG: &str = "DROP FUNCTION IF EXISTS conflist_log_truncate() CASCADE; \
     DROP TABLE IF EXISTS conflist_watched; DROP TABLE IF EXISTS conflist_changes;";

/// Why a watch definition is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    /// Not `table` or `schema.table` made of letters, digits and underscores.
    #[error("table name {0:?} must be [schema.]name of letters, digits and underscores")]
    BadTable(String),
    /// Not `TABLE=EXPRESSION`.
    #[error("watch {0:?} must be TABLE=SQL_EXPRESSION")]
    BadSpec(String),
    /// The expression could end the trigger function's body or its statement.
    #[error(
        "watch expression {expr:?}: {reason} (an expression may not contain `$`, nor `;`, \
         `--` or `/*` outside string literals, and its quotes and parentheses must balance)"
    )]
    BadExpression {
        /// The refused expression.
        expr: String,
        /// What in it is refused.
        reason: &'static str,
    },
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
        let w = Self {
            table: table.to_owned(),
            conference_expr: expr.to_owned(),
        };
        w.check()?;
        Ok(w)
    }

    /// Checks the table name and the expression (also for watches read back from the
    /// database, which anyone with write access to `conflist_watched` could have edited).
    pub fn check(&self) -> Result<(), WatchError> {
        check_table(&self.table)?;
        check_expression(&self.conference_expr)
    }

    /// Name of this table's trigger function.
    fn function(&self) -> String {
        format!("conflist_log_{}", self.table.replace('.', "_"))
    }

    /// SQL that (re)creates the trigger function, the row trigger and the `TRUNCATE`
    /// trigger. The expression is the operator's own SQL (an administrator's input, like a
    /// view definition); call [`Watch::check`] first.
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
DROP TRIGGER IF EXISTS conflist_changes_truncate ON {t};
CREATE TRIGGER conflist_changes_truncate AFTER TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION conflist_log_truncate();
"#
        )
    }

    /// SQL that removes the triggers and the function; call [`Watch::check`] first (only
    /// the table name is used).
    pub fn uninstall_sql(&self) -> String {
        format!(
            "DROP TRIGGER IF EXISTS conflist_changes ON {t}; \
             DROP TRIGGER IF EXISTS conflist_changes_truncate ON {t}; \
             DROP FUNCTION IF EXISTS {f}();",
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

/// Refuses an expression that could close the dollar-quoted function body (`$` anywhere:
/// PostgreSQL ends `$conflist$` even inside a string literal), end the statement (`;`),
/// comment out the rest of it (`--`, `/*`) outside string literals and quoted identifiers, or
/// leave a quote or parenthesis open. Anything else is trusted operator SQL.
pub fn check_expression(expr: &str) -> Result<(), WatchError> {
    let refuse = |reason| {
        Err(WatchError::BadExpression {
            expr: expr.to_owned(),
            reason,
        })
    };
    if expr.contains('$') {
        return refuse("`$` could end the function body");
    }
    let mut quote: Option<char> = None;
    let mut depth: usize = 0;
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            // A doubled quote inside is an escaped quote: leaving and re-entering is the same.
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            ';' => return refuse("`;` would end the statement"),
            '-' if chars.peek() == Some(&'-') => return refuse("`--` starts a comment"),
            '/' if chars.peek() == Some(&'*') => return refuse("`/*` starts a comment"),
            '(' => depth += 1,
            ')' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return refuse("a `)` closes more than was opened"),
            },
            _ => {}
        }
    }
    if quote.is_some() {
        return refuse("a quote is left open");
    }
    if depth != 0 {
        return refuse("a `(` is left open");
    }
    Ok(())
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
        assert!(sql.contains(
            "AFTER TRUNCATE ON conflist_members\n    FOR EACH STATEMENT EXECUTE FUNCTION conflist_log_truncate()"
        ));
        assert!(CREATE_LOG.contains(&format!("VALUES ('{RESYNC_MARK}')")));
        assert!(CREATE_LOG.contains("DEFAULT clock_timestamp()"));
        assert!(
            !CREATE_LOG.contains("now()"),
            "now() is the transaction's start"
        );
    }

    #[test]
    fn expressions_that_could_leave_the_function_body_are_refused() {
        for ok in [
            "'sip:room-' || id || '@conf.example.com'",
            "conference_uri",
            "'sip:' || id || '@conf.example.com;transport=ws'",
            "'it''s -- fine /* here */'",
            "\"Odd;Column\"",
            "lower(coalesce(a, (b)))",
        ] {
            assert_eq!(check_expression(ok), Ok(()), "{ok}");
        }
        for bad in [
            "id $conflist$; DROP TABLE victim; $conflist$",
            "'$$'",
            "id; DROP TABLE victim",
            "id -- rest commented",
            "id /* rest",
            "'open",
            "\"open",
            "f(id",
            "id) FROM t; (x",
            "'a''",
        ] {
            assert!(
                matches!(check_expression(bad), Err(WatchError::BadExpression { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Watch::parse("rooms=id; DROP TABLE rooms"),
            Err(WatchError::BadExpression { .. })
        ));
    }

    #[test]
    fn watches_read_back_are_checked_again() {
        let hostile = Watch {
            table: "conflist_members; DROP TABLE victim; --".into(),
            conference_expr: "conference_uri".into(),
        };
        assert!(matches!(hostile.check(), Err(WatchError::BadTable(_))));
        assert_eq!(reference_watches()[0].check(), Ok(()));
    }
}
