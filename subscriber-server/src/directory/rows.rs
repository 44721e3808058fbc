//! The contract's columns: which optional ones this database has (found at startup), the
//! queries built from them, and the decoding of one row into a [`Conference`] as its member
//! sees it (next occurrence of a recurring meeting, the per-conference size limit).
//!
//! Required columns (README "Database contract"): `conflist_conferences(conference_uri,
//! display_text, subject, free_text, keywords, web_page, maximum_user_count,
//! available_media, starts_at, ends_at)` and `conflist_members(conference_uri, user_uri,
//! role)`. Optional ones ([`OPTIONAL_CONFERENCE_COLUMNS`], [`OPTIONAL_MEMBER_COLUMNS`]) are
//! read when the relation has them and are `NULL` otherwise, so an operator's existing
//! views keep working unchanged and gain a field by adding a column.

use super::recurrence::{self, Series};
use chrono::{DateTime, Utc};
use document::{
    Conference, ConferenceDescription, MediaEntry, Organizer, Response, Schedule, Status, UriEntry,
};
use std::collections::BTreeSet;
use tracing::warn;

/// Optional columns of `conflist_conferences`, in select order.
pub const OPTIONAL_CONFERENCE_COLUMNS: [&str; 8] = [
    "status",
    "organizer_uri",
    "organizer_name",
    "time_zone",
    "recurrence",
    "recurrence_exdates",
    "revision",
    "passcode_required",
];

/// Optional columns of `conflist_members`.
pub const OPTIONAL_MEMBER_COLUMNS: [&str; 1] = ["response"];

/// The back-end a query is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// Which optional columns the contract relations have (names as in the constants above).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// Present optional columns of `conflist_conferences`.
    pub conferences: BTreeSet<String>,
    /// Present optional columns of `conflist_members`.
    pub members: BTreeSet<String>,
}

impl Columns {
    /// Every optional column (the reference schema's set).
    pub fn all() -> Self {
        Self {
            conferences: OPTIONAL_CONFERENCE_COLUMNS.map(str::to_owned).into(),
            members: OPTIONAL_MEMBER_COLUMNS.map(str::to_owned).into(),
        }
    }

    /// Keeps the optional ones among the column names of each relation.
    pub fn found(conferences: &[String], members: &[String]) -> Self {
        let pick = |names: &[String], optional: &[&str]| {
            optional
                .iter()
                .filter(|o| names.iter().any(|n| n.eq_ignore_ascii_case(o)))
                .map(|o| (*o).to_owned())
                .collect()
        };
        Self {
            conferences: pick(conferences, &OPTIONAL_CONFERENCE_COLUMNS),
            members: pick(members, &OPTIONAL_MEMBER_COLUMNS),
        }
    }

    /// One line for the startup log.
    pub fn describe(&self) -> String {
        let list = |s: &BTreeSet<String>| {
            if s.is_empty() {
                "none".to_owned()
            } else {
                s.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        format!(
            "conflist_conferences: {}; conflist_members: {}",
            list(&self.conferences),
            list(&self.members)
        )
    }
}

/// The three directory queries for one back-end and column set.
#[derive(Debug, Clone)]
pub struct Queries {
    /// One user's conferences (`$1`/`?1`: the user).
    pub of_user: String,
    /// Several users' conferences (`$1`: an array; SQLite `?1`: a JSON array).
    pub of_users: String,
    /// Every membership of some conferences (same binds as `of_users`).
    pub of_conferences: String,
}

impl Queries {
    /// The queries reading `columns` on `dialect`.
    pub fn build(dialect: Dialect, columns: &Columns) -> Self {
        let select = select_list(dialect, columns);
        let from = "FROM conflist_members m \
                    JOIN conflist_conferences c ON c.conference_uri = m.conference_uri";
        let (one, many) = match dialect {
            Dialect::Postgres => ("m.user_uri = $1", "ANY($1)"),
            Dialect::Sqlite => ("m.user_uri = ?1", "(SELECT value FROM json_each(?1))"),
        };
        let in_list = |col: &str| match dialect {
            Dialect::Postgres => format!("{col} = {many}"),
            Dialect::Sqlite => format!("{col} IN {many}"),
        };
        Self {
            of_user: format!("SELECT {select} {from} WHERE {one} ORDER BY c.conference_uri"),
            of_users: format!(
                "SELECT m.user_uri, {select} {from} WHERE {} ORDER BY m.user_uri, c.conference_uri",
                in_list("m.user_uri")
            ),
            of_conferences: format!(
                "SELECT m.user_uri, {select} {from} WHERE {}",
                in_list("m.conference_uri")
            ),
        }
    }
}

/// The select list: required columns, then every optional one as itself (as text) or
/// `NULL` when absent. Column names are constants, never input.
fn select_list(dialect: Dialect, columns: &Columns) -> String {
    let time = |col: &str| match dialect {
        Dialect::Postgres => {
            format!(
                "to_char(c.{col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS {col}"
            )
        }
        Dialect::Sqlite => format!("strftime('%Y-%m-%dT%H:%M:%SZ', c.{col}) AS {col}"),
    };
    let count = match dialect {
        Dialect::Postgres => "c.maximum_user_count::BIGINT AS maximum_user_count",
        Dialect::Sqlite => "c.maximum_user_count",
    };
    let text = |table: &str, col: &str, present: bool| {
        if present {
            format!("CAST({table}.{col} AS TEXT) AS {col}")
        } else {
            format!("CAST(NULL AS TEXT) AS {col}")
        }
    };
    let mut parts = vec![
        "c.conference_uri, c.display_text, c.subject, c.free_text, c.keywords, c.web_page"
            .to_owned(),
        count.to_owned(),
        "c.available_media".to_owned(),
        time("starts_at"),
        time("ends_at"),
        "m.role".to_owned(),
    ];
    for col in OPTIONAL_CONFERENCE_COLUMNS {
        parts.push(text("c", col, columns.conferences.contains(col)));
    }
    for col in OPTIONAL_MEMBER_COLUMNS {
        parts.push(text("m", col, columns.members.contains(col)));
    }
    parts.join(", ")
}

/// One row of the contract join, as both back-ends return it.
#[derive(Debug, Default, sqlx::FromRow)]
pub struct ConferenceRow {
    pub(super) conference_uri: String,
    pub(super) display_text: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) free_text: Option<String>,
    pub(super) keywords: Option<String>,
    pub(super) web_page: Option<String>,
    pub(super) maximum_user_count: Option<i64>,
    pub(super) available_media: Option<String>,
    pub(super) starts_at: Option<String>,
    pub(super) ends_at: Option<String>,
    pub(super) role: String,
    pub(super) status: Option<String>,
    pub(super) organizer_uri: Option<String>,
    pub(super) organizer_name: Option<String>,
    pub(super) time_zone: Option<String>,
    pub(super) recurrence: Option<String>,
    pub(super) recurrence_exdates: Option<String>,
    pub(super) revision: Option<String>,
    pub(super) passcode_required: Option<String>,
    pub(super) response: Option<String>,
}

/// How rows become conferences: the instant next occurrences are computed for, and the
/// per-conference size limit.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    /// Now, for the next occurrence of recurring meetings.
    pub now: DateTime<Utc>,
    /// Most bytes one conference may take in a document; longer text is truncated.
    pub max_conference_bytes: usize,
}

/// What [`Decoder::decode`] had to do to a conference that was too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    /// It fits.
    Fits,
    /// Its text was shortened to fit.
    Truncated,
    /// It cannot fit even with its text cut (huge URIs): left out.
    Skipped,
}

/// Text that stands for what truncation cut.
const ELLIPSIS: &str = "…";

impl Decoder {
    /// The conference as its member sees it, and what the size limit did to it.
    pub fn decode(&self, row: ConferenceRow) -> (Option<Conference>, Oversize) {
        let mut c = self.conference(row);
        let mut len = document::conference_len(&c);
        if len <= self.max_conference_bytes {
            return (Some(c), Oversize::Fits);
        }
        let original = len;
        // Longest text first, cut again while over.
        for _ in 0..16 {
            let over = len.saturating_sub(self.max_conference_bytes);
            if over == 0 {
                break;
            }
            c.description.keywords.clear();
            let d = &mut c.description;
            let longest = [&mut d.free_text, &mut d.subject, &mut d.display_text]
                .into_iter()
                .flatten()
                .max_by_key(|t| t.len());
            if let Some(longest) = longest.filter(|t| t.len() > ELLIPSIS.len()) {
                // Scale by how much too large the whole is: escaping makes the text's share
                // of the document larger than its own length.
                let keep = (longest.len() as u128 * self.max_conference_bytes as u128
                    / len.max(1) as u128) as usize;
                let keep = keep.min(longest.len().saturating_sub(ELLIPSIS.len() + 1));
                truncate(longest, keep);
            }
            let before = len;
            len = document::conference_len(&c);
            if len == before {
                break;
            }
        }
        if len > self.max_conference_bytes {
            warn!(
                conference = %c.entity,
                bytes = original,
                limit = self.max_conference_bytes,
                "conference too large for a document even with its text cut; left out"
            );
            return (None, Oversize::Skipped);
        }
        warn!(
            conference = %c.entity,
            bytes = original,
            limit = self.max_conference_bytes,
            "conference text truncated to the per-conference limit"
        );
        (Some(c), Oversize::Truncated)
    }

    fn conference(&self, row: ConferenceRow) -> Conference {
        let keywords = row
            .keywords
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let available_media = row
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
        let service_uris = non_empty(row.web_page)
            .map(|uri| UriEntry {
                uri,
                display_text: None,
                purpose: Some("web-page".to_owned()),
            })
            .into_iter()
            .collect();
        let conf_uris = vec![UriEntry {
            uri: row.conference_uri.clone(),
            display_text: None,
            purpose: Some("participation".to_owned()),
        }];
        let schedule = self.schedule(
            &row.conference_uri,
            row.starts_at,
            row.ends_at,
            non_empty(row.time_zone),
            non_empty(row.recurrence),
            non_empty(row.recurrence_exdates).as_deref(),
        );
        let conference = row.conference_uri.as_str();
        let status = token(conference, "status", row.status, Status::from_token);
        let response = token(conference, "response", row.response, Response::from_token);
        let passcode_required = token(
            conference,
            "passcode_required",
            row.passcode_required,
            boolean,
        );
        Conference {
            description: ConferenceDescription {
                display_text: non_empty(row.display_text),
                subject: non_empty(row.subject),
                free_text: non_empty(row.free_text),
                keywords,
                conf_uris,
                service_uris,
                // Negative or absurd counts in operator data are omitted, not wrapped.
                maximum_user_count: row.maximum_user_count.and_then(|n| u32::try_from(n).ok()),
                available_media,
            },
            schedule,
            role: non_empty(Some(row.role)),
            response,
            status,
            organizer: non_empty(row.organizer_uri).map(|uri| Organizer {
                uri,
                display_text: non_empty(row.organizer_name),
            }),
            passcode_required,
            revision: non_empty(row.revision),
            entity: row.conference_uri,
        }
    }

    /// The schedule shown: a recurring meeting's next occurrence (the series' own times
    /// when its rule cannot be evaluated, logged).
    fn schedule(
        &self,
        conference: &str,
        start: Option<String>,
        end: Option<String>,
        time_zone: Option<String>,
        rrule: Option<String>,
        exdate: Option<&str>,
    ) -> Schedule {
        let time_zone = time_zone.filter(|tz| match recurrence::parse_time_zone(tz) {
            Ok(_) => true,
            Err(e) => {
                warn!(conference, error = %e, "time zone left out");
                false
            }
        });
        let mut schedule = Schedule {
            start,
            end,
            time_zone,
            recurrence: None,
        };
        let Some(rule) = rrule else {
            return schedule;
        };
        let Some(series_start) = schedule.start.as_deref().and_then(parse_time) else {
            warn!(
                conference,
                "a recurrence without a start time cannot be evaluated; shown as not recurring"
            );
            return schedule;
        };
        let series = Series {
            start: series_start,
            end: schedule.end.as_deref().and_then(parse_time),
            time_zone: schedule.time_zone.as_deref(),
            rrule: &rule,
            exdate,
        };
        match recurrence::next_occurrence(&series, self.now) {
            Ok(next) => {
                schedule.start = Some(format_time(next.start));
                schedule.end = next.end.map(format_time);
                let rule = rule.trim();
                let rule = match rule.get(..6) {
                    Some(p) if p.eq_ignore_ascii_case("RRULE:") => &rule[6..],
                    _ => rule,
                };
                schedule.recurrence = Some(rule.to_owned());
            }
            Err(e) => {
                warn!(conference, error = %e, "recurrence cannot be evaluated; the series' own times are shown");
            }
        }
        schedule
    }
}

/// A token column's value parsed; an unknown value is logged and left out.
fn token<T>(
    conference: &str,
    column: &str,
    value: Option<String>,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let value = non_empty(value)?;
    let parsed = parse(&value);
    if parsed.is_none() {
        warn!(conference, column, value = %value, "unknown value in the directory; the field is left out");
    }
    parsed
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

/// `true`/`false` as PostgreSQL (`true`, `t`), SQLite (`1`) or an operator's text gives it.
fn boolean(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" | "yes" | "y" | "on" => Some(true),
        "false" | "f" | "0" | "no" | "n" | "off" => Some(false),
        _ => None,
    }
}

/// Cuts `text` to at most `keep` bytes at a character boundary and marks the cut.
fn truncate(text: &mut String, keep: usize) {
    let mut at = keep.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.truncate(at);
    text.push_str(ELLIPSIS);
}

/// A `YYYY-MM-DDTHH:MM:SSZ` time as both back-ends' queries format it (or any RFC 3339).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The document's time form, as the queries write it.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ConferenceRow {
        ConferenceRow {
            conference_uri: "sip:1@conf.example.com".into(),
            display_text: Some("Sync".into()),
            subject: Some("   ".into()),
            keywords: Some(" a  b ".into()),
            web_page: Some("https://meet.example.com/1".into()),
            maximum_user_count: Some(-5),
            available_media: Some("audio, video,".into()),
            starts_at: Some("2026-11-24T09:00:00Z".into()),
            role: "organizer".into(),
            ..ConferenceRow::default()
        }
    }

    fn decoder() -> Decoder {
        Decoder {
            now: parse_time("2026-12-01T12:00:00Z").unwrap(),
            max_conference_bytes: 4096,
        }
    }

    fn decode(row: ConferenceRow) -> Conference {
        let (c, oversize) = decoder().decode(row);
        assert_eq!(oversize, Oversize::Fits);
        c.unwrap()
    }

    #[test]
    fn row_maps_to_the_document_model() {
        let c = decode(row());
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
        assert_eq!((c.status, c.response, c.organizer), (None, None, None));
    }

    #[test]
    fn optional_columns_map_to_their_fields_and_unknown_tokens_are_left_out() {
        let c = decode(ConferenceRow {
            status: Some("Cancelled".into()),
            response: Some("needs_action".into()),
            organizer_uri: Some("sip:bob@example.com".into()),
            organizer_name: Some("Bob".into()),
            passcode_required: Some("t".into()),
            revision: Some("42".into()),
            time_zone: Some("Europe/Berlin".into()),
            ..row()
        });
        assert_eq!(c.status, Some(Status::Cancelled));
        assert_eq!(c.response, Some(Response::NeedsAction));
        assert_eq!(
            c.organizer,
            Some(Organizer {
                uri: "sip:bob@example.com".into(),
                display_text: Some("Bob".into())
            })
        );
        assert_eq!(c.passcode_required, Some(true));
        assert_eq!(c.revision.as_deref(), Some("42"));
        assert_eq!(c.schedule.time_zone.as_deref(), Some("Europe/Berlin"));

        let c = decode(ConferenceRow {
            status: Some("postponed".into()),
            response: Some("maybe".into()),
            passcode_required: Some("sometimes".into()),
            time_zone: Some("Mars/Olympus".into()),
            ..row()
        });
        assert_eq!(
            (
                c.status,
                c.response,
                c.passcode_required,
                c.schedule.time_zone
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn a_recurring_meeting_shows_its_next_occurrence() {
        // Daily 09:00-09:30 from 2026-11-24; now is 2026-12-01 12:00 → 2026-12-02 09:00.
        let c = decode(ConferenceRow {
            ends_at: Some("2026-11-24T09:30:00Z".into()),
            recurrence: Some("RRULE:FREQ=DAILY".into()),
            ..row()
        });
        assert_eq!(c.schedule.start.as_deref(), Some("2026-12-02T09:00:00Z"));
        assert_eq!(c.schedule.end.as_deref(), Some("2026-12-02T09:30:00Z"));
        assert_eq!(c.schedule.recurrence.as_deref(), Some("FREQ=DAILY"));

        let c = decode(ConferenceRow {
            recurrence: Some("FREQ=NEVER".into()),
            ..row()
        });
        assert_eq!(
            c.schedule.start.as_deref(),
            Some("2026-11-24T09:00:00Z"),
            "a bad rule shows the series' own time"
        );
        assert_eq!(c.schedule.recurrence, None);
    }

    #[test]
    fn oversized_text_is_truncated_to_the_limit_and_huge_uris_skip_the_conference() {
        let d = decoder();
        let (c, oversize) = d.decode(ConferenceRow {
            free_text: Some("<&é".repeat(1_000_000)),
            ..row()
        });
        assert_eq!(oversize, Oversize::Truncated);
        let c = c.unwrap();
        let len = document::conference_len(&c);
        assert!(len <= d.max_conference_bytes, "{len}");
        assert!(
            len > d.max_conference_bytes / 2,
            "not cut more than needed: {len}"
        );
        assert!(c.description.free_text.unwrap().ends_with(ELLIPSIS));
        assert_eq!(c.description.display_text.as_deref(), Some("Sync"));

        let (c, oversize) = d.decode(ConferenceRow {
            web_page: Some(format!("https://x/{}", "a".repeat(10_000))),
            ..row()
        });
        assert_eq!((c, oversize), (None, Oversize::Skipped));
    }

    #[test]
    fn queries_read_present_optional_columns_and_null_for_the_rest() {
        let cols = Columns::found(
            &["conference_uri".into(), "STATUS".into(), "other".into()],
            &["response".into()],
        );
        assert_eq!(
            cols.describe(),
            "conflist_conferences: status; conflist_members: response"
        );
        for dialect in [Dialect::Postgres, Dialect::Sqlite] {
            let q = Queries::build(dialect, &cols);
            assert!(q.of_user.contains("CAST(c.status AS TEXT) AS status"));
            assert!(q.of_user.contains("CAST(NULL AS TEXT) AS revision"));
            assert!(q.of_user.contains("CAST(m.response AS TEXT) AS response"));
        }
    }
}
