//! Meeting fields and windows end to end: a status change is a partial; cancelled meetings
//! are shown as cancelled or (`--hide-cancelled`) removed with reason `cancelled`; a
//! recurring meeting rolls on to its next occurrence by itself; the Event parameters
//! `past`, `ahead` and `max` bound the list, and a conference leaving the window as time
//! passes is removed with reason `out-of-window` without any database change.

use crate::live_updates::{exec, watching};
use crate::system;
use conflist_tests::{ListView, ServerOptions, SipWsClient};
use document::{DeleteReason, DocumentState, Entry, Status};
use sqlx::PgConnection;
use std::time::{Duration, Instant};

const C1001: &str = "sip:1001@conf.example.com";
const C1002: &str = "sip:1002@conf.example.com";
const C1003: &str = "sip:1003@conf.example.com";

/// A partial's only entry, which must be a full conference: its entity and status.
fn only_full(doc: &document::ConferenceList) -> (&str, Option<Status>) {
    assert_eq!(doc.state, DocumentState::Partial, "{doc:?}");
    match &doc.entries[..] {
        [Entry::Full(c)] => (c.entity.as_str(), c.status),
        other => panic!("expected one full conference, got {other:?}"),
    }
}

/// A partial's only entry, which must be a deletion: its entity and reason.
fn only_deleted(doc: &document::ConferenceList) -> (&str, Option<DeleteReason>) {
    assert_eq!(doc.state, DocumentState::Partial, "{doc:?}");
    match &doc.entries[..] {
        [Entry::Deleted { entity, reason }] => (entity.as_str(), *reason),
        other => panic!("expected one deletion, got {other:?}"),
    }
}

#[tokio::test]
async fn a_status_change_is_a_partial_and_a_cancelled_meeting_stays_marked_cancelled() {
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;
    assert_eq!(
        view.get(C1001).unwrap().status,
        None,
        "no status in the demo row"
    );
    assert_eq!(view.get(C1003).unwrap().status, Some(Status::Scheduled));

    exec(
        &mut db,
        "UPDATE conflist_conferences SET status = 'active' WHERE conference_uri = 'sip:1001@conf.example.com'",
    )
    .await;
    let (notify, doc) = view.next(&mut alice).await.unwrap();
    assert_eq!(only_full(&doc.unwrap()), (C1001, Some(Status::Active)));
    assert!(
        String::from_utf8_lossy(&notify.body).contains("<status>active</status>"),
        "{}",
        String::from_utf8_lossy(&notify.body)
    );

    exec(
        &mut db,
        "UPDATE conflist_conferences SET status = 'cancelled' WHERE conference_uri = 'sip:1001@conf.example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(only_full(&doc), (C1001, Some(Status::Cancelled)));
    assert_eq!(view.entities(), [C1001, C1002, C1003]);
}

#[tokio::test]
async fn with_hide_cancelled_a_cancelled_meeting_is_deleted_with_reason_cancelled() {
    let sys = system(ServerOptions {
        extra_args: vec!["--hide-cancelled".into()],
        ..ServerOptions::default()
    })
    .await;
    let mut db = sys.db.connect().await.unwrap();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;
    assert_eq!(view.entities(), [C1001, C1002, C1003]);

    exec(
        &mut db,
        "UPDATE conflist_conferences SET status = 'cancelled' WHERE conference_uri = 'sip:1002@conf.example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(only_deleted(&doc), (C1002, Some(DeleteReason::Cancelled)));
    assert_eq!(view.entities(), [C1001, C1003]);

    // Rescheduled: back, with its status.
    exec(
        &mut db,
        "UPDATE conflist_conferences SET status = 'scheduled' WHERE conference_uri = 'sip:1002@conf.example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(only_full(&doc), (C1002, Some(Status::Scheduled)));
    assert_eq!(view.entities(), [C1001, C1002, C1003]);

    // Other deletions say `removed`.
    exec(
        &mut db,
        "DELETE FROM conflist_members WHERE conference_uri = 'sip:1001@conf.example.com' AND user_uri = 'sip:alice@example.com'",
    )
    .await;
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    assert_eq!(only_deleted(&doc), (C1001, Some(DeleteReason::Removed)));
}

/// `b - a` in seconds, for two document times (the database as the calculator).
async fn seconds_between(db: &mut PgConnection, a: &str, b: &str) -> f64 {
    let (d,): (f64,) =
        sqlx::query_as("SELECT extract(epoch FROM $2::timestamptz - $1::timestamptz)::float8")
            .bind(a)
            .bind(b)
            .fetch_one(db)
            .await
            .unwrap();
    d
}

#[tokio::test]
async fn a_recurring_meeting_rolls_on_to_its_next_occurrence_by_itself() {
    const REC: &str = "sip:rec@conf.example.com";
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    exec(
        &mut db,
        "BEGIN;
         INSERT INTO conflist_conferences (conference_uri, display_text, starts_at, ends_at, recurrence)
         VALUES ('sip:rec@conf.example.com', 'Every four seconds',
                 date_trunc('second', now()) - interval '1 second',
                 date_trunc('second', now()) + interval '1 second',
                 'FREQ=SECONDLY;INTERVAL=4');
         INSERT INTO conflist_members VALUES ('sip:rec@conf.example.com', 'sip:alice@example.com', 'participant');
         COMMIT",
    )
    .await;
    let (series_start,): (String,) = sqlx::query_as(
        "SELECT to_char(starts_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
         FROM conflist_conferences WHERE conference_uri = $1",
    )
    .bind(REC)
    .fetch_one(&mut db)
    .await
    .unwrap();
    let started = Instant::now();
    let (mut alice, mut view) = watching(&sys.proxy.ws_url, "alice").await;
    let first = view.get(REC).unwrap().schedule.clone();
    assert_eq!(
        first.recurrence.as_deref(),
        Some("FREQ=SECONDLY;INTERVAL=4")
    );
    let (s1, e1) = (first.start.unwrap(), first.end.unwrap());
    // An occurrence of the series: a multiple of 4 s after its start, 2 s long.
    let offset = seconds_between(&mut db, &series_start, &s1).await;
    assert!(
        offset >= 0.0 && offset % 4.0 == 0.0,
        "{s1} is not an occurrence of {series_start}"
    );
    assert_eq!(seconds_between(&mut db, &s1, &e1).await, 2.0);

    // It ends within 5 s; the server re-reads the conference and sends the next one.
    let doc = view.next(&mut alice).await.unwrap().1.unwrap();
    let waited = started.elapsed();
    assert_eq!(only_full(&doc).0, REC);
    let next = view.get(REC).unwrap().schedule.clone();
    assert_eq!(next.recurrence.as_deref(), Some("FREQ=SECONDLY;INTERVAL=4"));
    let (s2, e2) = (next.start.unwrap(), next.end.unwrap());
    let step = seconds_between(&mut db, &s1, &s2).await;
    assert!(
        step > 0.0 && step % 4.0 == 0.0,
        "next occurrence {s2} after {s1}"
    );
    assert_eq!(seconds_between(&mut db, &s2, &e2).await, 2.0);
    assert!(
        waited < Duration::from_secs(8),
        "rolled on after {waited:?}"
    );
    assert_eq!(view.entities(), [C1001, C1002, C1003, REC]);
}

/// `user`'s conference URIs (sorted) that `condition` (SQL over `c`) holds for.
async fn expected(db: &mut PgConnection, user: &str, condition: &str) -> Vec<String> {
    let sql = format!(
        "SELECT c.conference_uri FROM conflist_conferences c
         JOIN conflist_members m USING (conference_uri)
         WHERE m.user_uri = 'sip:{user}@example.com' AND ({condition})
         ORDER BY c.conference_uri COLLATE \"C\""
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(db)
        .await
        .unwrap()
}

/// A client asking for `event`, with its first (full) document.
async fn watching_with(url: &str, user: &str, event: &str) -> (SipWsClient, ListView) {
    let mut c = SipWsClient::connect(url).await.unwrap();
    c.event = event.to_owned();
    c.subscribe(user, 600).await.unwrap();
    let mut view = ListView::default();
    let doc = view.next(&mut c).await.unwrap().1.unwrap();
    assert_eq!((doc.state, doc.complete), (DocumentState::Full, true));
    (c, view)
}

#[tokio::test]
async fn event_parameters_bound_the_list_and_time_moves_conferences_out_of_the_window() {
    const SOON: &str = "sip:soon@conf.example.com";
    const LATER: &str = "sip:later@conf.example.com";
    const LIVE: &str = "sip:live@conf.example.com";
    let sys = system(ServerOptions::default()).await;
    let mut db = sys.db.connect().await.unwrap();
    exec(
        &mut db,
        "BEGIN;
         INSERT INTO conflist_conferences (conference_uri, display_text, starts_at, ends_at) VALUES
           ('sip:soon@conf.example.com', 'Ends in 2 s', now() - interval '10 seconds', now() + interval '2 seconds'),
           ('sip:later@conf.example.com', 'In ten days', now() + interval '10 days', now() + interval '10 days 1 hour'),
           ('sip:live@conf.example.com', 'Under way', now() - interval '1 hour', now() + interval '1 hour');
         INSERT INTO conflist_members (conference_uri, user_uri)
         SELECT u, 'sip:alice@example.com' FROM unnest(ARRAY['sip:soon@conf.example.com',
           'sip:later@conf.example.com', 'sip:live@conf.example.com']) AS u;
         COMMIT",
    )
    .await;

    // past=1: what ended more than a second ago is left out; the rest is in.
    let want = expected(
        &mut db,
        "alice",
        "c.starts_at IS NULL OR coalesce(c.ends_at, c.starts_at) >= now() - interval '1 second'",
    )
    .await;
    let started = Instant::now();
    let (mut recent, mut recent_view) =
        watching_with(&sys.proxy.ws_url, "alice", "conference-list;past=1").await;
    assert_eq!(recent_view.entities(), want);
    assert!(want.contains(&SOON.to_owned()) && !want.contains(&C1001.to_owned()));

    // ahead=86400: what starts more than a day from now is left out.
    let want = expected(
        &mut db,
        "alice",
        "c.starts_at IS NULL OR c.starts_at <= now() + interval '1 day'",
    )
    .await;
    let (_c, ahead) =
        watching_with(&sys.proxy.ws_url, "alice", "conference-list;ahead=86400").await;
    assert_eq!(ahead.entities(), want);
    assert!(ahead.get(LATER).is_none() && ahead.get(C1001).is_some());

    // max=1: only the nearest (the meeting under way longest).
    let (_c, nearest) = watching_with(&sys.proxy.ws_url, "alice", "conference-list;max=1").await;
    assert_eq!(nearest.entities(), [LIVE]);

    // A bad parameter is refused.
    let mut bad = SipWsClient::connect(&sys.proxy.ws_url).await.unwrap();
    bad.event = "conference-list;past=abc".into();
    let (r, _) = bad
        .subscribe_answer("alice", "bad-window", 600)
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason.as_str()),
        (400, "Bad Event parameter")
    );

    // Time passes, the database stays as it is: `soon` ends, and a second later it leaves.
    let doc = recent_view.next(&mut recent).await.unwrap().1.unwrap();
    assert_eq!(only_deleted(&doc), (SOON, Some(DeleteReason::OutOfWindow)));
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "left after {:?}",
        started.elapsed()
    );
    assert!(recent_view.get(LIVE).is_some());
}
