//! What part of a user's list one subscription shows, and in which order, sans-IO (the
//! wall-clock instant is passed in).
//!
//! * **Order, nearest first**: live meetings (started and not ended, or `status` active),
//!   then upcoming ones by start, then undated ones, then past ones (the latest first). A
//!   state too large for one NOTIFY goes out in this order, so the first NOTIFY holds what
//!   the user needs now.
//! * **Window**: a subscriber may ask for the conferences whose (next) occurrence overlaps
//!   `[now - past, now + ahead]`, and for at most `max` of them, nearest first. Undated
//!   conferences are always inside the time window. As time passes, conferences enter and
//!   leave it: [`View::valid_until`] is the next instant that can happen, when the session
//!   plans the subscription again (with no database change).
//! * **Cancelled meetings** are shown with `status` cancelled, or, when the server hides
//!   them, removed with reason `cancelled`.

use chrono::{DateTime, Utc};
use document::{Conference, DeleteReason, Status};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::directory::rows::parse_time;

/// The part of a list asked for; `None` = unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Conferences that ended longer ago than this are left out.
    pub past: Option<Duration>,
    /// Conferences that start later than this from now are left out.
    pub ahead: Option<Duration>,
    /// At most this many conferences, nearest first.
    pub max: Option<usize>,
}

impl Window {
    /// True when it leaves nothing out.
    pub fn is_unbounded(&self) -> bool {
        self.past.is_none() && self.ahead.is_none() && self.max.is_none()
    }

    /// Each bound of `self`, or `default`'s where `self` has none.
    #[must_use]
    pub fn or(self, default: Window) -> Window {
        Window {
            past: self.past.or(default.past),
            ahead: self.ahead.or(default.ahead),
            max: self.max.or(default.max),
        }
    }
}

/// Where a conference stands at an instant, in list order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    /// Taking place now.
    Live,
    /// Starts later.
    Upcoming,
    /// No start time.
    Undated,
    /// Over.
    Past,
}

/// A conference's start and end (the start when it has no end), parsed.
fn times(c: &Conference) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let start = parse_time(c.schedule.start.as_deref()?)?;
    let end = c
        .schedule
        .end
        .as_deref()
        .and_then(parse_time)
        .filter(|e| *e >= start)
        .unwrap_or(start);
    Some((start, end))
}

/// The bucket of `c` at `now`: `status` active or ended decides when given, else the times.
pub fn bucket(c: &Conference, now: DateTime<Utc>) -> Bucket {
    match (c.status, times(c)) {
        (Some(Status::Active), _) => Bucket::Live,
        (Some(Status::Ended), _) => Bucket::Past,
        (_, None) => Bucket::Undated,
        (_, Some((start, end))) if start <= now && now < end => Bucket::Live,
        (_, Some((start, _))) if start > now => Bucket::Upcoming,
        _ => Bucket::Past,
    }
}

/// The sort key of nearest-first order: bucket, then start (live, upcoming), latest end
/// first (past), then entity.
pub fn nearest_first_key(c: &Conference, now: DateTime<Utc>) -> (Bucket, i64, String) {
    let b = bucket(c, now);
    let t = match (b, times(c)) {
        (Bucket::Past, Some((_, end))) => -end.timestamp(),
        (Bucket::Live | Bucket::Upcoming, Some((start, _))) => start.timestamp(),
        _ => 0,
    };
    (b, t, c.entity.clone())
}

/// Sorts conferences nearest first at `now`.
pub fn sort_nearest_first(conferences: &mut [&Conference], now: DateTime<Utc>) {
    conferences.sort_by_cached_key(|c| nearest_first_key(c, now));
}

/// One subscription's view of a user's list at an instant.
#[derive(Debug, Clone)]
pub struct View {
    /// The user's list it was made from (the cache's, compared by identity).
    pub source: Arc<Vec<Conference>>,
    /// What the subscription shows, in the source's order; the source itself when
    /// nothing is left out.
    pub shown: Arc<Vec<Conference>>,
    /// Conferences of the source left out, and why.
    pub hidden: HashMap<String, DeleteReason>,
    /// When the view can next change with no change to the source (a conference entering
    /// or leaving the window, or reordering under `max`); `None`: never.
    pub valid_until: Option<DateTime<Utc>>,
}

impl View {
    /// Whether this view still holds for `source` at `now`.
    pub fn holds(&self, source: &Arc<Vec<Conference>>, now: DateTime<Utc>) -> bool {
        Arc::ptr_eq(&self.source, source) && self.valid_until.is_none_or(|t| now < t)
    }

    /// The view of `source` through `window` at `now`; cancelled meetings are left out
    /// (reason `cancelled`) unless `show_cancelled`.
    pub fn new(
        source: &Arc<Vec<Conference>>,
        window: &Window,
        show_cancelled: bool,
        now: DateTime<Utc>,
    ) -> View {
        let all = View {
            source: source.clone(),
            shown: source.clone(),
            hidden: HashMap::new(),
            valid_until: None,
        };
        let cancelled = |c: &Conference| !show_cancelled && c.status == Some(Status::Cancelled);
        if window.is_unbounded() && !source.iter().any(cancelled) {
            return all;
        }
        let span = |d: Option<Duration>| {
            d.and_then(|d| chrono::Duration::from_std(d).ok())
                .unwrap_or(chrono::Duration::MAX)
        };
        let (past, ahead) = (span(window.past), span(window.ahead));
        let mut hidden = HashMap::new();
        let mut inside: Vec<&Conference> = Vec::new();
        let mut next: Option<DateTime<Utc>> = None;
        let mut boundary = |t: Option<DateTime<Utc>>| {
            if let Some(t) = t.filter(|t| *t > now) {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for c in source.iter() {
            if cancelled(c) {
                hidden.insert(c.entity.clone(), DeleteReason::Cancelled);
                continue;
            }
            let Some((start, end)) = times(c) else {
                inside.push(c);
                continue;
            };
            // It enters when now + ahead reaches its start, and leaves when now - past
            // passes its end.
            let enters = start.checked_sub_signed(ahead);
            let leaves = end.checked_add_signed(past);
            boundary(enters);
            boundary(leaves.map(|t| t + chrono::Duration::seconds(1)));
            if window.max.is_some() {
                boundary(Some(start));
                boundary(Some(end));
            }
            let entered = enters.is_none_or(|t| t <= now);
            let left = leaves.is_some_and(|t| t < now);
            if entered && !left {
                inside.push(c);
            } else {
                hidden.insert(c.entity.clone(), DeleteReason::OutOfWindow);
            }
        }
        if let Some(max) = window.max
            && inside.len() > max
        {
            sort_nearest_first(&mut inside, now);
            for c in inside.drain(max..) {
                hidden.insert(c.entity.clone(), DeleteReason::OutOfWindow);
            }
        }
        if hidden.is_empty() && next.is_none() {
            return all;
        }
        let shown = source
            .iter()
            .filter(|c| !hidden.contains_key(&c.entity))
            .cloned()
            .collect();
        View {
            source: source.clone(),
            shown: Arc::new(shown),
            hidden,
            valid_until: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        parse_time(s).unwrap()
    }

    fn conf(n: u32, start: Option<&str>, end: Option<&str>) -> Conference {
        let mut c = Conference {
            entity: format!("sip:{n}@conf.example.com"),
            ..Conference::default()
        };
        c.schedule.start = start.map(str::to_owned);
        c.schedule.end = end.map(str::to_owned);
        c
    }

    fn entities<'a>(cs: impl IntoIterator<Item = &'a Conference>) -> Vec<String> {
        cs.into_iter().map(|c| c.entity.clone()).collect()
    }

    const NOW: &str = "2026-12-01T12:00:00Z";

    fn list() -> Arc<Vec<Conference>> {
        Arc::new(vec![
            conf(
                1,
                Some("2026-11-01T09:00:00Z"),
                Some("2026-11-01T10:00:00Z"),
            ), // past, old
            conf(
                2,
                Some("2026-12-01T11:00:00Z"),
                Some("2026-12-01T13:00:00Z"),
            ), // live
            conf(3, None, None),                         // undated
            conf(4, Some("2026-12-20T09:00:00Z"), None), // upcoming, far
            conf(
                5,
                Some("2026-12-01T15:00:00Z"),
                Some("2026-12-01T16:00:00Z"),
            ), // upcoming, soon
            conf(
                6,
                Some("2026-11-30T09:00:00Z"),
                Some("2026-11-30T10:00:00Z"),
            ), // past, recent
        ])
    }

    #[test]
    fn nearest_first_is_live_upcoming_undated_past() {
        let l = list();
        let mut refs: Vec<&Conference> = l.iter().collect();
        sort_nearest_first(&mut refs, at(NOW));
        let order: Vec<String> = entities(refs);
        let n = |i: u32| format!("sip:{i}@conf.example.com");
        assert_eq!(order, vec![n(2), n(5), n(4), n(3), n(6), n(1)]);

        let mut ended = conf(
            7,
            Some("2026-12-01T11:00:00Z"),
            Some("2026-12-01T13:00:00Z"),
        );
        ended.status = Some(Status::Ended);
        assert_eq!(bucket(&ended, at(NOW)), Bucket::Past, "status decides");
        ended.status = Some(Status::Active);
        ended.schedule = Default::default();
        assert_eq!(bucket(&ended, at(NOW)), Bucket::Live);
    }

    #[test]
    fn an_unbounded_view_is_the_source_itself() {
        let l = list();
        let v = View::new(&l, &Window::default(), true, at(NOW));
        assert!(Arc::ptr_eq(&v.shown, &l));
        assert_eq!(v.valid_until, None);
        assert!(v.holds(&l, at("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn a_window_keeps_what_overlaps_it_and_says_when_that_changes() {
        let l = list();
        let w = Window {
            past: Some(Duration::from_secs(86_400)),
            ahead: Some(Duration::from_secs(7 * 86_400)),
            max: None,
        };
        let v = View::new(&l, &w, true, at(NOW));
        let n = |i: u32| format!("sip:{i}@conf.example.com");
        assert_eq!(entities(v.shown.iter()), vec![n(2), n(3), n(5)]);
        for (i, why) in [
            (1, "ended too long ago"),
            (4, "too far ahead"),
            (6, "ended 26 h ago"),
        ] {
            assert_eq!(
                v.hidden.get(&n(i)),
                Some(&DeleteReason::OutOfWindow),
                "{why}"
            );
        }
        // The first change: 2 (ends 13:00) leaves a day and a second later.
        assert_eq!(v.valid_until, Some(at("2026-12-02T13:00:01Z")));
        assert!(v.holds(&l, at("2026-12-02T13:00:00Z")));
        assert!(!v.holds(&l, at("2026-12-02T13:00:01Z")));
        let later = View::new(&l, &w, true, at("2026-12-02T13:00:01Z"));
        assert_eq!(entities(later.shown.iter()), vec![n(3), n(5)]);
    }

    #[test]
    fn the_window_boundaries_are_exact() {
        let l = Arc::new(vec![conf(
            1,
            Some("2026-12-01T11:00:00Z"),
            Some("2026-12-01T11:30:00Z"),
        )]);
        let w = Window {
            past: Some(Duration::from_secs(600)),
            ..Window::default()
        };
        // Ended 11:30, past 10 min: shown up to 11:40:00, left out from 11:40:01.
        let v = View::new(&l, &w, true, at("2026-12-01T11:35:00Z"));
        assert_eq!(v.shown.len(), 1);
        assert_eq!(v.valid_until, Some(at("2026-12-01T11:40:01Z")));
        let v = View::new(&l, &w, true, at("2026-12-01T11:40:01Z"));
        assert!(v.shown.is_empty());
        assert_eq!(v.valid_until, None);

        let w = Window {
            ahead: Some(Duration::from_secs(3600)),
            ..Window::default()
        };
        // Starts 11:00, ahead one hour: enters at 10:00.
        let v = View::new(&l, &w, true, at("2026-12-01T09:59:59Z"));
        assert!(v.shown.is_empty());
        assert_eq!(v.valid_until, Some(at("2026-12-01T10:00:00Z")));
        assert_eq!(
            View::new(&l, &w, true, at("2026-12-01T10:00:00Z"))
                .shown
                .len(),
            1
        );
    }

    #[test]
    fn max_keeps_the_nearest_and_cancelled_can_be_hidden() {
        let l = list();
        let w = Window {
            max: Some(2),
            ..Window::default()
        };
        let v = View::new(&l, &w, true, at(NOW));
        let n = |i: u32| format!("sip:{i}@conf.example.com");
        assert_eq!(entities(v.shown.iter()), vec![n(2), n(5)]);
        assert_eq!(v.hidden.len(), 4);

        let mut with_cancelled = (*l).clone();
        with_cancelled[0].status = Some(Status::Cancelled);
        let l = Arc::new(with_cancelled);
        let v = View::new(&l, &Window::default(), false, at(NOW));
        assert_eq!(v.hidden.get(&n(1)), Some(&DeleteReason::Cancelled));
        assert_eq!(v.shown.len(), 5);
        let v = View::new(&l, &Window::default(), true, at(NOW));
        assert!(Arc::ptr_eq(&v.shown, &l), "shown with its status");
    }
}
