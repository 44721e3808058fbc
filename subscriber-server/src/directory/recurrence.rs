//! Next occurrence of a recurring meeting: sans-IO, the caller passes `now`.
//!
//! A meeting row may carry a series start and end (UTC instants; the end is optional), an
//! IANA time zone (default UTC), an RFC 5545 `RRULE` value and an `EXDATE` value.
//! [`next_occurrence`] picks the occurrence to show in the conference list:
//!
//! * The occurrence in progress at `now` (`start <= now < end`, each occurrence lasting
//!   `series end - series start`), else the first one that starts after `now`. Without a
//!   series end an occurrence has no duration and is "in progress" only at its instant: the
//!   shown one is the first with `start >= now`.
//! * When the series is exhausted (`UNTIL` or `COUNT` passed, or every remaining date
//!   excluded) the last occurrence, a past meeting, is shown.
//! * [`Occurrence::changes_at`] is the first instant at which another answer results: the
//!   shown occurrence's end, or, without a series end, the instant just after its start
//!   (`start + 1 ns`: at `start` itself it is still shown). `None` when nothing will change,
//!   i.e. the shown occurrence is the last one. Evaluating again at `changes_at` rolls the
//!   meeting forward on time.
//! * The rule is evaluated in the time zone: `DTSTART` is the series start in that zone, so a
//!   weekly 09:00 `Europe/Berlin` meeting stays at 09:00 local time across DST changes.
//!   Local times that fall in a DST gap or overlap are resolved by the `rrule` crate. As with
//!   that crate (and python-dateutil) the series start counts as an occurrence only if it
//!   matches the rule (RFC 5545 leaves an unsynchronised `DTSTART` undefined). Instants are
//!   taken to whole seconds, the resolution of RFC 5545: the series start is truncated and
//!   the duration measured from the truncated start.
//! * `EXDATE` holds comma-separated RFC 5545 values: `20261207T090000Z` excludes the
//!   occurrence starting at that UTC instant, `20261207T090000` the one starting at that
//!   local time in the series' zone, and the date `20261207` every occurrence starting on
//!   that local day. A leading `EXDATE:` is accepted.
//! * The rule text is a single `RRULE` value, with or without a leading `RRULE:`. Several
//!   lines or other properties (`DTSTART`, `EXDATE`, …) are refused: `DTSTART` comes from
//!   the series start. `UNTIL` must be a UTC date-time (`…Z`), as RFC 5545 requires when
//!   `DTSTART` has a time zone.
//!
//! Work is bounded. The `rrule` crate iterates from `DTSTART`, so for a rule without `COUNT`
//! the evaluation starts instead from a later `DTSTART` a period or so before `now`, aligned
//! to the rule's interval, with every rule part the crate derives from `DTSTART` made
//! explicit: a daily meeting that started ten years ago or a `FREQ=SECONDLY` one that
//! started last month cost a handful of steps. (Minutely and secondly rules with
//! `BYHOUR`/`BYMINUTE` are not moved: the crate does not keep their phase across skipped
//! hours.) At most [`MAX_OCCURRENCES`] occurrences are generated per evaluation (beyond
//! that: [`RecurrenceError::TooManyIterations`]), and the crate's own loop limit (100 000
//! periods without a date) bounds the search between two of them. The crate reports that
//! limit as the end of the series, so a rule that never matches yields
//! [`RecurrenceError::NoOccurrences`] after a few tens of milliseconds. On any error the
//! caller shows the series' own start and end.

use chrono::{
    DateTime, Datelike, LocalResult, Month, NaiveDate, NaiveDateTime, SubsecRound, TimeDelta,
    TimeZone, Timelike, Utc, Weekday,
};
use rrule::{Frequency, RRule, RRuleSet, Tz, Unvalidated, Validated};

/// The most occurrences generated for one evaluation (the `rrule` crate's `all` limit).
pub const MAX_OCCURRENCES: u16 = u16::MAX;

/// Successive `all` limits: most evaluations need only a few occurrences.
const LIMITS: [u16; 4] = [8, 256, 8192, MAX_OCCURRENCES];

/// A meeting series as stored in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series<'a> {
    /// Start of the series, which is the start of its first occurrence when that matches
    /// the rule.
    pub start: DateTime<Utc>,
    /// End of the first occurrence; `end - start` is every occurrence's duration. `None`:
    /// occurrences are instants.
    pub end: Option<DateTime<Utc>>,
    /// IANA time-zone name in which the rule is evaluated; `None` is UTC.
    pub time_zone: Option<&'a str>,
    /// The RFC 5545 `RRULE` value, e.g. `FREQ=WEEKLY;BYDAY=MO,WE`, optionally after `RRULE:`.
    pub rrule: &'a str,
    /// The RFC 5545 `EXDATE` value: comma-separated dates or date-times to skip.
    pub exdate: Option<&'a str>,
}

/// The occurrence to show, see the [module documentation](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// Start of the occurrence.
    pub start: DateTime<Utc>,
    /// End of the occurrence, when the series has an end.
    pub end: Option<DateTime<Utc>>,
    /// When another occurrence will be shown (evaluate again then); `None` if never.
    pub changes_at: Option<DateTime<Utc>>,
}

/// Why no occurrence could be computed. The caller shows the series' own start and end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecurrenceError {
    /// The time-zone name is not in the IANA database.
    #[error("unknown time zone {0:?}")]
    UnknownTimeZone(String),
    /// The `RRULE` text is not a valid rule for this series.
    #[error("invalid RRULE: {0}")]
    InvalidRule(String),
    /// An `EXDATE` value is not an RFC 5545 date or date-time.
    #[error("invalid EXDATE value {0:?}")]
    InvalidExdate(String),
    /// The series ends before it starts.
    #[error("the series ends before it starts")]
    EndBeforeStart,
    /// The rule, less the excluded dates, yields no occurrence at all.
    #[error("the recurrence yields no occurrence")]
    NoOccurrences,
    /// Finding the occurrence would take more work than allowed.
    #[error("the recurrence needs too many iterations to evaluate")]
    TooManyIterations,
    /// An occurrence falls outside the representable time range.
    #[error("an occurrence is out of the representable time range")]
    OutOfRange,
}

/// Checks an IANA time-zone name (`Europe/Berlin`), exactly as spelled.
pub fn parse_time_zone(name: &str) -> Result<chrono_tz::Tz, RecurrenceError> {
    name.parse::<chrono_tz::Tz>()
        .map_err(|_| RecurrenceError::UnknownTimeZone(name.to_owned()))
}

/// The occurrence of `series` to show at `now`; see the [module documentation](self).
pub fn next_occurrence(
    series: &Series<'_>,
    now: DateTime<Utc>,
) -> Result<Occurrence, RecurrenceError> {
    evaluate(series, now, true)
}

fn evaluate(
    series: &Series<'_>,
    now: DateTime<Utc>,
    allow_rebase: bool,
) -> Result<Occurrence, RecurrenceError> {
    let zone = match series.time_zone {
        Some(name) => parse_time_zone(name)?,
        None => chrono_tz::UTC,
    };
    let tz = Tz::Tz(zone);
    let rule = parse_rule(series.rrule)?;
    let exclusions = series
        .exdate
        .map(Exclusions::parse)
        .transpose()?
        .unwrap_or_default();
    let start = series.start.trunc_subsecs(0);
    let duration = match series.end {
        Some(end) if end < series.start => return Err(RecurrenceError::EndBeforeStart),
        Some(end) => Some(end - start),
        None => None,
    };
    let dt_start = start.with_timezone(&tz);
    let validated = rule
        .clone()
        .validate(dt_start)
        .map_err(|e| RecurrenceError::InvalidRule(e.to_string()))?;
    let scan = Scan {
        now,
        duration,
        exclusions: &exclusions,
    };

    if allow_rebase {
        // Occurrences starting before `target` are over (or past `UNTIL`).
        let mut target = match duration {
            Some(duration) => now
                .checked_sub_signed(duration)
                .ok_or(RecurrenceError::OutOfRange)?,
            None => now,
        };
        if let Some(until) = validated.get_until() {
            target = target.min(until.with_timezone(&Utc));
        }
        if let Some(base) = moved_start(&validated, dt_start, target.with_timezone(&tz)) {
            // Nothing from `base` on (a past `UNTIL`, excluded dates): scan from the start.
            if let Ok(moved) = explicit_rule(&rule, &validated).validate(base)
                && let Some(found) = scan.run(&RRuleSet::new(base).rrule(moved))?
            {
                return Ok(found);
            }
        }
    }
    scan.run(&RRuleSet::new(dt_start).rrule(validated))?
        .ok_or(RecurrenceError::NoOccurrences)
}

/// Parses the rule column: one `RRULE` value, optionally after `RRULE:`.
fn parse_rule(text: &str) -> Result<RRule<Unvalidated>, RecurrenceError> {
    if text.contains(['\n', '\r']) {
        return Err(RecurrenceError::InvalidRule(
            "must be a single RRULE value, not several lines".into(),
        ));
    }
    let text = text.trim();
    let value = match text.get(..6) {
        Some(prefix) if prefix.eq_ignore_ascii_case("RRULE:") => &text[6..],
        _ => text,
    };
    if value.contains(':') {
        return Err(RecurrenceError::InvalidRule(
            "must hold only the RRULE value, no other property".into(),
        ));
    }
    if value.is_empty() {
        return Err(RecurrenceError::InvalidRule("empty".into()));
    }
    value
        .parse::<RRule<Unvalidated>>()
        .map_err(|e| RecurrenceError::InvalidRule(e.to_string()))
}

/// `rule` with every part the crate derives from `DTSTART` (`BYMONTH`, `BYMONTHDAY`,
/// `BYDAY`, `BYHOUR`, `BYMINUTE`, `BYSECOND`) set as `validated` derived it, so that it
/// yields the same dates from another `DTSTART` in an aligned period.
fn explicit_rule(rule: &RRule<Unvalidated>, validated: &RRule<Validated>) -> RRule<Unvalidated> {
    let mut rule = rule.clone();
    let months: Vec<Month> = validated
        .get_by_month()
        .iter()
        .filter_map(|&m| Month::try_from(m).ok())
        .collect();
    if !months.is_empty() {
        rule = rule.by_month(&months);
    }
    // The validated rule keeps negative month days apart (without a getter).
    let mut month_days = validated.get_by_month_day().to_vec();
    month_days.extend(rule.get_by_month_day().iter().filter(|&&d| d < 0));
    if !month_days.is_empty() {
        rule = rule.by_month_day(month_days);
    }
    if !validated.get_by_weekday().is_empty() {
        rule = rule.by_weekday(validated.get_by_weekday().to_vec());
    }
    if !validated.get_by_hour().is_empty() {
        rule = rule.by_hour(validated.get_by_hour().to_vec());
    }
    if !validated.get_by_minute().is_empty() {
        rule = rule.by_minute(validated.get_by_minute().to_vec());
    }
    if !validated.get_by_second().is_empty() {
        rule = rule.by_second(validated.get_by_second().to_vec());
    }
    rule
}

/// A later `DTSTART` from which the rule yields the same dates: the local start of a period
/// `k × INTERVAL` periods after the series start's and at least one interval before
/// `target`'s (or one interval earlier when that local time does not exist). `None` when
/// the rule cannot be moved (`COUNT`, sub-daily rules whose phase the crate does not keep)
/// or there is nothing to skip.
fn moved_start(
    rule: &RRule<Validated>,
    dt_start: DateTime<Tz>,
    target: DateTime<Tz>,
) -> Option<DateTime<Tz>> {
    let freq = rule.get_freq();
    let keeps_phase = match freq {
        Frequency::Minutely => rule.get_by_hour().is_empty(),
        Frequency::Secondly => rule.get_by_hour().is_empty() && rule.get_by_minute().is_empty(),
        _ => true,
    };
    if rule.get_count().is_some() || !keeps_phase || target <= dt_start {
        return None;
    }
    let interval = i64::from(rule.get_interval().max(1));
    let (s, t) = (dt_start.naive_local(), target.naive_local());
    let week_start = rule.get_week_start();
    let diff = period_diff(freq, week_start, s, t)?;
    let latest = diff.div_euclid(interval) * interval - interval;
    [latest, latest - interval]
        .into_iter()
        .filter(|&k| k > 0)
        .find_map(|k| {
            let naive = period_start(freq, week_start, s, k)?;
            match dt_start.timezone().from_local_datetime(&naive) {
                LocalResult::Single(dt) => Some(dt),
                LocalResult::Ambiguous(earliest, _) => Some(earliest),
                LocalResult::None => None,
            }
        })
}

/// The first day of the week (starting on `week_start`) that holds `date`.
fn week_of(date: NaiveDate, week_start: Weekday) -> Option<NaiveDate> {
    let offset =
        (date.weekday().num_days_from_monday() + 7 - week_start.num_days_from_monday()) % 7;
    date.checked_sub_signed(TimeDelta::days(i64::from(offset)))
}

/// How many `freq` periods (in local wall-clock terms, as the crate counts) lie between
/// the periods holding `s` and `t`.
fn period_diff(
    freq: Frequency,
    week_start: Weekday,
    s: NaiveDateTime,
    t: NaiveDateTime,
) -> Option<i64> {
    let days = (t.date() - s.date()).num_days();
    let hours = days * 24 + i64::from(t.hour()) - i64::from(s.hour());
    let minutes = hours * 60 + i64::from(t.minute()) - i64::from(s.minute());
    Some(match freq {
        Frequency::Yearly => i64::from(t.year()) - i64::from(s.year()),
        Frequency::Monthly => {
            (i64::from(t.year()) - i64::from(s.year())) * 12 + i64::from(t.month())
                - i64::from(s.month())
        }
        Frequency::Weekly => {
            (week_of(t.date(), week_start)? - week_of(s.date(), week_start)?).num_days() / 7
        }
        Frequency::Daily => days,
        Frequency::Hourly => hours,
        Frequency::Minutely => minutes,
        Frequency::Secondly => minutes * 60 + i64::from(t.second()) - i64::from(s.second()),
    })
}

/// The local start of the period `k` periods after the one holding `s`; for a secondly
/// rule, `s` plus `k` seconds.
fn period_start(
    freq: Frequency,
    week_start: Weekday,
    s: NaiveDateTime,
    k: i64,
) -> Option<NaiveDateTime> {
    let midnight = |date: NaiveDate| date.and_hms_opt(0, 0, 0);
    let hour = s.date().and_hms_opt(s.hour(), 0, 0)?;
    let minute = s.date().and_hms_opt(s.hour(), s.minute(), 0)?;
    match freq {
        Frequency::Yearly => midnight(NaiveDate::from_ymd_opt(
            i32::try_from(i64::from(s.year()) + k).ok()?,
            1,
            1,
        )?),
        Frequency::Monthly => {
            let month = i64::from(s.year()) * 12 + i64::from(s.month0()) + k;
            let year = i32::try_from(month.div_euclid(12)).ok()?;
            let month0 = u32::try_from(month.rem_euclid(12)).ok()?;
            midnight(NaiveDate::from_ymd_opt(year, month0 + 1, 1)?)
        }
        Frequency::Weekly => midnight(
            week_of(s.date(), week_start)?
                .checked_add_signed(TimeDelta::try_days(k.checked_mul(7)?)?)?,
        ),
        Frequency::Daily => midnight(s.date().checked_add_signed(TimeDelta::try_days(k)?)?),
        Frequency::Hourly => hour.checked_add_signed(TimeDelta::try_hours(k)?),
        Frequency::Minutely => minute.checked_add_signed(TimeDelta::try_minutes(k)?),
        Frequency::Secondly => s.checked_add_signed(TimeDelta::try_seconds(k)?),
    }
}

/// One evaluation's parameters.
struct Scan<'a> {
    now: DateTime<Utc>,
    duration: Option<TimeDelta>,
    exclusions: &'a Exclusions,
}

impl Scan<'_> {
    /// The occurrence to show among `set`'s, or `None` if `set` yields none (not excluded).
    fn run(&self, set: &RRuleSet) -> Result<Option<Occurrence>, RecurrenceError> {
        for limit in LIMITS {
            let result = set.clone().all(limit);
            let complete = !result.limited;
            let mut last = None;
            let mut shown = None;
            for date in &result.dates {
                if self.exclusions.excludes(date) {
                    continue;
                }
                let date = date.with_timezone(&Utc);
                if let Some(shown) = shown {
                    return self.occurrence(shown, true).map(Some);
                }
                if self.is_current(date)? {
                    shown = Some(date);
                } else {
                    last = Some(date);
                }
            }
            if complete {
                return match shown.or(last) {
                    Some(date) => self.occurrence(date, false).map(Some),
                    None => Ok(None),
                };
            }
            if result.dates.len() < usize::from(limit) {
                // The crate gave up looking for the next date.
                break;
            }
        }
        Err(RecurrenceError::TooManyIterations)
    }

    /// Whether an occurrence starting at `start` is in progress or still to come.
    fn is_current(&self, start: DateTime<Utc>) -> Result<bool, RecurrenceError> {
        Ok(match self.duration {
            Some(duration) => end_of(start, duration)? > self.now,
            None => start >= self.now,
        })
    }

    fn occurrence(&self, start: DateTime<Utc>, more: bool) -> Result<Occurrence, RecurrenceError> {
        let end = self.duration.map(|d| end_of(start, d)).transpose()?;
        let changes_at = match (more, end) {
            (false, _) => None,
            (true, Some(end)) => Some(end),
            (true, None) => Some(end_of(start, TimeDelta::nanoseconds(1))?),
        };
        Ok(Occurrence {
            start,
            end,
            changes_at,
        })
    }
}

fn end_of(start: DateTime<Utc>, duration: TimeDelta) -> Result<DateTime<Utc>, RecurrenceError> {
    start
        .checked_add_signed(duration)
        .ok_or(RecurrenceError::OutOfRange)
}

/// The parsed `EXDATE` values.
#[derive(Debug, Default)]
struct Exclusions {
    /// `…Z` values: occurrence starts.
    instants: Vec<DateTime<Utc>>,
    /// Local date-times in the series' zone.
    local: Vec<NaiveDateTime>,
    /// Dates: every occurrence starting that local day.
    dates: Vec<NaiveDate>,
}

impl Exclusions {
    fn parse(text: &str) -> Result<Self, RecurrenceError> {
        let text = text.trim();
        let text = match text.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("EXDATE:") => &text[7..],
            _ => text,
        };
        let mut exclusions = Self::default();
        for value in text.split(',').map(str::trim).filter(|v| !v.is_empty()) {
            let invalid = || RecurrenceError::InvalidExdate(value.to_owned());
            let bytes = value.as_bytes();
            let digits = |range: std::ops::Range<usize>| {
                bytes
                    .get(range)
                    .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
            };
            let date = || {
                if !digits(0..8) {
                    return Err(invalid());
                }
                NaiveDate::parse_from_str(&value[..8], "%Y%m%d").map_err(|_| invalid())
            };
            match bytes.len() {
                8 => exclusions.dates.push(date()?),
                15 | 16 if bytes[8].eq_ignore_ascii_case(&b'T') && digits(9..15) => {
                    let time = chrono::NaiveTime::parse_from_str(&value[9..15], "%H%M%S")
                        .map_err(|_| invalid())?;
                    let local = date()?.and_time(time);
                    if bytes.len() == 15 {
                        exclusions.local.push(local);
                    } else if bytes[15].eq_ignore_ascii_case(&b'Z') {
                        exclusions.instants.push(local.and_utc());
                    } else {
                        return Err(invalid());
                    }
                }
                _ => return Err(invalid()),
            }
        }
        Ok(exclusions)
    }

    fn excludes(&self, start: &DateTime<Tz>) -> bool {
        let local = start.naive_local();
        self.instants.contains(&start.with_timezone(&Utc))
            || self.local.contains(&local)
            || self.dates.contains(&local.date())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn series<'a>(
        start: &str,
        end: Option<&str>,
        zone: Option<&'a str>,
        rule: &'a str,
    ) -> Series<'a> {
        Series {
            start: at(start),
            end: end.map(at),
            time_zone: zone,
            rrule: rule,
            exdate: None,
        }
    }

    #[test]
    fn weekly_keeps_local_time_across_dst() {
        // Monday 2027-03-22 09:00 CET; Berlin switches to CEST on 2027-03-28.
        let s = series(
            "2027-03-22T08:00:00Z",
            Some("2027-03-22T09:00:00Z"),
            Some("Europe/Berlin"),
            "FREQ=WEEKLY;BYDAY=MO",
        );
        let occ = next_occurrence(&s, at("2027-03-24T12:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2027-03-29T07:00:00Z"));
        assert_eq!(occ.end, Some(at("2027-03-29T08:00:00Z")));
        assert_eq!(occ.changes_at, occ.end);
        assert_eq!(
            occ.start.with_timezone(&chrono_tz::Europe::Berlin).hour(),
            9
        );
        // Before the change the same rule gives 08:00 UTC.
        let occ = next_occurrence(&s, at("2027-03-22T07:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2027-03-22T08:00:00Z"));
    }

    #[test]
    fn local_time_in_dst_gap_does_not_panic() {
        // 02:30 does not exist in Berlin on 2027-03-28; the crate picks some instant that day.
        let s = series(
            "2027-03-20T01:30:00Z",
            Some("2027-03-20T02:00:00Z"),
            Some("Europe/Berlin"),
            "FREQ=DAILY",
        );
        let occ = next_occurrence(&s, at("2027-03-27T12:00:00Z")).unwrap();
        let local = occ.start.with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(local.date_naive(), "2027-03-28".parse().unwrap());
        let occ = next_occurrence(&s, occ.changes_at.unwrap()).unwrap();
        assert_eq!(occ.start, at("2027-03-29T00:30:00Z"));
    }

    #[test]
    fn daily_skips_exdates() {
        let mut s = series(
            "2026-12-01T09:00:00Z",
            Some("2026-12-01T10:00:00Z"),
            None,
            "FREQ=DAILY",
        );
        s.exdate = Some("20261207T090000Z");
        let occ = next_occurrence(&s, at("2026-12-06T10:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-12-08T09:00:00Z"));

        // Local date-times and dates in the series' zone.
        let mut s = series(
            "2026-12-01T08:00:00Z",
            Some("2026-12-01T09:00:00Z"),
            Some("Europe/Berlin"),
            "RRULE:FREQ=DAILY",
        );
        s.exdate = Some("20261207T090000, 20261208");
        let occ = next_occurrence(&s, at("2026-12-06T10:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-12-09T08:00:00Z"));
        // A UTC value that matches no occurrence start excludes nothing.
        s.exdate = Some("EXDATE:20261207T090000Z");
        let occ = next_occurrence(&s, at("2026-12-06T10:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-12-07T08:00:00Z"));
    }

    #[test]
    fn exhausted_count_shows_last_occurrence() {
        let s = series(
            "2026-01-01T09:00:00Z",
            Some("2026-01-01T10:00:00Z"),
            None,
            "FREQ=DAILY;COUNT=3",
        );
        let occ = next_occurrence(&s, at("2026-02-01T00:00:00Z")).unwrap();
        assert_eq!(
            occ,
            Occurrence {
                start: at("2026-01-03T09:00:00Z"),
                end: Some(at("2026-01-03T10:00:00Z")),
                changes_at: None,
            }
        );
        // The last occurrence, in progress or to come: nothing changes after it either.
        let occ = next_occurrence(&s, at("2026-01-03T09:30:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-01-03T09:00:00Z"));
        assert_eq!(occ.changes_at, None);
        let occ = next_occurrence(&s, at("2026-01-02T09:30:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-01-02T09:00:00Z"));
        assert_eq!(occ.changes_at, Some(at("2026-01-02T10:00:00Z")));
    }

    #[test]
    fn exhausted_until_and_exdates_show_last_occurrence() {
        let mut s = series(
            "2020-01-06T09:00:00Z",
            Some("2020-01-06T10:00:00Z"),
            None,
            "FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20250101T000000Z",
        );
        let occ = next_occurrence(&s, at("2027-06-01T00:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2024-12-30T09:00:00Z"));
        assert_eq!(occ.changes_at, None);
        // Every remaining date excluded.
        s.exdate = Some("20241230,20241225T090000Z");
        let occ = next_occurrence(&s, at("2024-12-20T00:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2024-12-23T09:00:00Z"));
        assert_eq!(occ.changes_at, None);
        let occ = next_occurrence(&s, at("2024-12-24T00:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2024-12-23T09:00:00Z"));
    }

    #[test]
    fn in_progress_occurrence_is_shown_until_its_end() {
        let s = series(
            "2026-03-02T09:00:00Z",
            Some("2026-03-02T10:00:00Z"),
            None,
            "FREQ=DAILY",
        );
        let occ = next_occurrence(&s, at("2026-03-10T09:30:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-03-10T09:00:00Z"));
        assert_eq!(occ.changes_at, Some(at("2026-03-10T10:00:00Z")));
        // At its end the next one is shown.
        let occ = next_occurrence(&s, at("2026-03-10T10:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-03-11T09:00:00Z"));
        // Before the series starts, the first occurrence.
        let occ = next_occurrence(&s, at("2026-01-01T00:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-03-02T09:00:00Z"));
    }

    #[test]
    fn without_end_occurrences_are_instants() {
        let s = series("2026-03-02T09:00:00Z", None, None, "FREQ=DAILY");
        let occ = next_occurrence(&s, at("2026-03-10T09:00:00Z")).unwrap();
        assert_eq!(occ.start, at("2026-03-10T09:00:00Z"));
        assert_eq!(occ.end, None);
        let changes_at = occ.changes_at.unwrap();
        assert_eq!(changes_at, occ.start + TimeDelta::nanoseconds(1));
        let occ = next_occurrence(&s, changes_at).unwrap();
        assert_eq!(occ.start, at("2026-03-11T09:00:00Z"));
    }

    #[test]
    fn secondly_series_rolls_forward() {
        let now = at("2026-05-01T12:00:00Z");
        let start = now - TimeDelta::seconds(30);
        let s = Series {
            start,
            end: Some(start + TimeDelta::seconds(2)),
            time_zone: Some("Europe/Berlin"),
            rrule: "FREQ=SECONDLY;INTERVAL=4",
            exdate: None,
        };
        // Occurrences at -30, -26, …, -2 (ended at now), +2.
        let occ = next_occurrence(&s, now).unwrap();
        assert_eq!(occ.start, now + TimeDelta::seconds(2));
        assert_eq!(occ.end, Some(now + TimeDelta::seconds(4)));
        assert_eq!(occ.changes_at, occ.end);
        let occ = next_occurrence(&s, now + TimeDelta::seconds(3)).unwrap();
        assert_eq!(occ.start, now + TimeDelta::seconds(2));

        // Started 30 days ago (648 000 occurrences back): starts near `now` instead.
        let start = now - TimeDelta::days(30) - TimeDelta::seconds(1);
        let s = Series {
            start,
            end: Some(start + TimeDelta::seconds(2)),
            ..s
        };
        // 2 592 001 s = 4 × 648 000 + 1: the occurrence that began a second ago is on.
        let occ = next_occurrence(&s, now).unwrap();
        assert_eq!(occ.start, now - TimeDelta::seconds(1));
        assert_eq!(occ.changes_at, Some(now + TimeDelta::seconds(1)));
        assert_eq!(
            evaluate(&s, now, false),
            Err(RecurrenceError::TooManyIterations)
        );
    }

    #[test]
    fn daily_started_ten_years_ago() {
        let s = series(
            "2016-05-02T07:00:00Z",
            Some("2016-05-02T07:30:00Z"),
            Some("Europe/Berlin"),
            "FREQ=DAILY;BYDAY=MO,TU,WE,TH,FR",
        );
        let now = at("2026-05-01T12:00:00Z"); // a Friday
        let occ = next_occurrence(&s, now).unwrap();
        assert_eq!(occ.start, at("2026-05-04T07:00:00Z"));
        // Moved to a later start: the crate yields only a few dates.
        let validated = parse_rule(s.rrule)
            .unwrap()
            .validate(s.start.with_timezone(&Tz::Tz(chrono_tz::Europe::Berlin)))
            .unwrap();
        let base = moved_start(
            &validated,
            s.start.with_timezone(&Tz::Tz(chrono_tz::Europe::Berlin)),
            (now - TimeDelta::minutes(30)).with_timezone(&Tz::Tz(chrono_tz::Europe::Berlin)),
        )
        .unwrap();
        assert_eq!(base.naive_local(), "2026-04-30T00:00:00".parse().unwrap());
        assert_eq!(evaluate(&s, now, false), Ok(occ));
    }

    /// Whether the evaluation of `s` at `now` starts from a moved `DTSTART`.
    fn was_moved(s: &Series<'_>, now: DateTime<Utc>) -> bool {
        let tz = Tz::Tz(
            s.time_zone
                .map_or(chrono_tz::UTC, |z| parse_time_zone(z).unwrap()),
        );
        let dt_start = s.start.with_timezone(&tz);
        let validated = parse_rule(s.rrule).unwrap().validate(dt_start).unwrap();
        let mut target = now - s.end.map_or(TimeDelta::zero(), |end| end - s.start);
        if let Some(until) = validated.get_until() {
            target = target.min(until.with_timezone(&Utc));
        }
        moved_start(&validated, dt_start, target.with_timezone(&tz)).is_some()
    }

    /// Moving `DTSTART` forward must not change any answer.
    #[test]
    fn moved_start_gives_the_same_answers() {
        let rules = [
            "FREQ=DAILY",
            "FREQ=DAILY;INTERVAL=3",
            "FREQ=DAILY;BYHOUR=9,17;BYMINUTE=15",
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE",
            "FREQ=WEEKLY;INTERVAL=3;BYDAY=SU,TH;WKST=SU",
            "FREQ=WEEKLY;INTERVAL=2",
            "FREQ=MONTHLY;BYMONTHDAY=-1",
            "FREQ=MONTHLY;INTERVAL=5;BYMONTHDAY=31,-3",
            "FREQ=MONTHLY;BYDAY=-1FR",
            "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            "FREQ=MONTHLY;INTERVAL=2",
            "FREQ=YEARLY",
            "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29",
            "FREQ=YEARLY;BYWEEKNO=1;BYDAY=MO",
            "FREQ=YEARLY;INTERVAL=2;BYMONTH=3,10;BYDAY=-1SU",
            "FREQ=HOURLY;INTERVAL=5",
            "FREQ=HOURLY;INTERVAL=7;BYDAY=MO,SA",
            "FREQ=HOURLY;BYHOUR=1,2,3;BYMINUTE=30",
            "FREQ=MINUTELY;INTERVAL=97",
            "FREQ=MINUTELY;INTERVAL=13;BYDAY=SU",
            "FREQ=SECONDLY;INTERVAL=3607",
            "FREQ=DAILY;UNTIL=20260105T000000Z",
            "FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20260301T000000Z",
        ];
        let starts = [
            "2025-01-31T10:17:23Z",
            "2025-10-26T00:45:00Z",
            "2025-03-30T01:30:00Z",
        ];
        let zones = [None, Some("Europe/Berlin"), Some("America/Santiago")];
        let mut checked = 0;
        let mut moves = 0;
        for rule in rules {
            // Evaluating from the series start costs a step per date: keep sub-daily short.
            let sub_daily = ["HOURLY", "MINUTELY", "SECONDLY"]
                .iter()
                .any(|f| rule.contains(f));
            let stride = if sub_daily { 50_000 } else { 86_400 * 9 };
            for start in starts {
                for zone in zones {
                    for end in [None, Some(TimeDelta::minutes(50))] {
                        let mut s = series(start, None, zone, rule);
                        s.end = end.map(|d| s.start + d);
                        let mut now = s.start - TimeDelta::hours(1);
                        for step in 0..12 {
                            now += TimeDelta::seconds(stride + 3_599 * step);
                            let moved = next_occurrence(&s, now);
                            let plain = evaluate(&s, now, false);
                            assert_eq!(moved, plain, "{rule} from {start} in {zone:?} at {now}");
                            checked += usize::from(plain.is_ok());
                            moves += usize::from(was_moved(&s, now));
                        }
                    }
                }
            }
        }
        assert!(checked > 4_000, "{checked}");
        assert!(moves > 3_000, "{moves}");
    }

    #[test]
    fn errors() {
        let ok = series("2026-01-01T09:00:00Z", None, None, "FREQ=DAILY");
        let now = at("2026-02-01T00:00:00Z");
        let zone = Series {
            time_zone: Some("Europe/Atlantis"),
            ..ok
        };
        assert_eq!(
            next_occurrence(&zone, now),
            Err(RecurrenceError::UnknownTimeZone("Europe/Atlantis".into()))
        );
        assert!(parse_time_zone("Europe/Berlin").is_ok());
        for rule in [
            "FREQ=FORTNIGHTLY",
            "BYDAY=MO",
            "",
            "FREQ=DAILY;BYHOUR=25",
            "FREQ=DAILY;UNTIL=20251231T000000Z",
            "FREQ=DAILY;UNTIL=20261231T000000",
            "DTSTART:20260101T090000Z",
            "EXDATE:20260101T090000Z",
            "RRULE;X-A=B:FREQ=DAILY",
            "FREQ=DAILY\nEXDATE:20260102T090000Z",
            "FREQ=DAILY\r\n",
        ] {
            let s = Series { rrule: rule, ..ok };
            assert!(
                matches!(
                    next_occurrence(&s, now),
                    Err(RecurrenceError::InvalidRule(_))
                ),
                "{rule:?}: {:?}",
                next_occurrence(&s, now)
            );
        }
        for exdate in [
            "2026-01-02",
            "20260102T0900",
            "20260132",
            "20260102T090000X",
            "x",
        ] {
            let s = Series {
                exdate: Some(exdate),
                ..ok
            };
            assert_eq!(
                next_occurrence(&s, now),
                Err(RecurrenceError::InvalidExdate(exdate.into()))
            );
        }
        let backwards = Series {
            end: Some(ok.start - TimeDelta::seconds(1)),
            ..ok
        };
        assert_eq!(
            next_occurrence(&backwards, now),
            Err(RecurrenceError::EndBeforeStart)
        );
        for rule in ["FREQ=DAILY;COUNT=0", "FREQ=DAILY;INTERVAL=0"] {
            let s = Series { rrule: rule, ..ok };
            assert_eq!(
                next_occurrence(&s, now),
                Err(RecurrenceError::NoOccurrences),
                "{rule}"
            );
        }
        let all_excluded = Series {
            rrule: "FREQ=DAILY;COUNT=2",
            exdate: Some("20260101,20260102"),
            ..ok
        };
        assert_eq!(
            next_occurrence(&all_excluded, now),
            Err(RecurrenceError::NoOccurrences)
        );
    }

    #[test]
    fn rules_that_never_match_stop() {
        let now = at("2026-02-01T00:00:00Z");
        for rule in [
            "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
            "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=30",
            "FREQ=YEARLY;BYMONTH=4;BYMONTHDAY=31",
        ] {
            let s = series("2026-01-01T09:00:00Z", None, None, rule);
            let result = next_occurrence(&s, now);
            assert!(
                matches!(
                    result,
                    Err(RecurrenceError::TooManyIterations | RecurrenceError::NoOccurrences)
                ),
                "{rule}: {result:?}"
            );
        }
    }

    #[test]
    fn leading_rrule_name_is_accepted() {
        let now = at("2026-01-05T12:00:00Z");
        let plain = series("2026-01-01T09:00:00Z", None, None, "FREQ=DAILY");
        let expected = next_occurrence(&plain, now).unwrap();
        for rule in ["RRULE:FREQ=DAILY", "rrule:freq=daily", " RRULE:FREQ=DAILY "] {
            let s = Series {
                rrule: rule,
                ..plain
            };
            assert_eq!(next_occurrence(&s, now), Ok(expected), "{rule}");
        }
        assert_eq!(expected.start, at("2026-01-06T09:00:00Z"));
    }
}
