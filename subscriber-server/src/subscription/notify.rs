//! What a subscription should send now, sans-IO: nothing, later (rate control), or a
//! document — full for the first Notification and whenever a partial would not be smaller
//! (or full documents are forced), otherwise the partial diff against what the client holds.
//!
//! No body exceeds [`NotifyPolicy::max_body_bytes`]: a larger state goes out as a sequence
//! (a `full` document marked `complete="false"`, then partials that add to it, the last one
//! complete), nearest conferences first, one Notification per delivery, without waiting for
//! the rate limit between the parts. Each part is planned against what the client holds
//! after the previous one, so a change that arrives meanwhile is folded into the next part.

use super::Subscription;
use super::registry::Backlog;
use super::view::{View, sort_nearest_first};
use chrono::{DateTime, Utc};
use document::{Conference, ConferenceList, DeleteReason, DocumentState, Entry};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// An unanswered Notification older than this is taken as lost: longer than the proxy's
/// NOTIFY transaction timeout (Timer F, 32 s), after which the proxy always reports an
/// outcome — unless that report itself was lost (a full proxy queue, a dropped stream).
pub const STALE_IN_FLIGHT: Duration = Duration::from_secs(60);

/// The default of `--max-notify-bytes`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// Notification policy from config.
#[derive(Debug, Clone, Copy)]
pub struct NotifyPolicy {
    /// Least time between two Notifications of one subscription (RFC 6446-style); changes
    /// inside it are coalesced into one carrying the latest state.
    pub min_interval: Duration,
    /// Never send partial documents (a state larger than one body still goes out as a
    /// full document followed by partials).
    pub full_only: bool,
    /// Most bytes of one NOTIFY body.
    pub max_body_bytes: usize,
    /// Show cancelled meetings (with their status); otherwise they are removed with
    /// reason `cancelled`.
    pub show_cancelled: bool,
}

/// The decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// The client is current and nothing is owed.
    Nothing,
    /// Not now: too soon after the last one (rate control), or a transaction is in flight
    /// (sent when it is answered; this instant is when it would count as lost).
    Defer(Instant),
    /// Send this document; the subscription already records it as sent and in flight.
    Send(ConferenceList),
}

impl Subscription {
    /// Decides what to send given the user's `latest` list at `now` (`wall`: the same
    /// instant on the wall clock, for windows and order); `owed` marks a refresh that must
    /// be answered with a NOTIFY even if nothing changed. Updates the delivery state: a
    /// document sent is recorded as sent and in flight. Bodies stay within the smaller of
    /// `policy`'s cap and the subscription's own.
    pub fn plan(
        &mut self,
        latest: &Arc<Vec<Conference>>,
        now: Instant,
        wall: DateTime<Utc>,
        owed: bool,
        mut policy: NotifyPolicy,
    ) -> Plan {
        if let Some(max) = self.max_body_bytes {
            policy.max_body_bytes = policy.max_body_bytes.min(max);
        }
        plan(self, latest, now, wall, owed, policy)
    }
}

/// [`Subscription::plan`].
fn plan(
    sub: &mut Subscription,
    latest: &Arc<Vec<Conference>>,
    now: Instant,
    wall: DateTime<Utc>,
    owed: bool,
    policy: NotifyPolicy,
) -> Plan {
    sub.owed |= owed;
    if sub.in_flight.is_some() {
        let stale_at = sub.last_sent.map(|t| t + STALE_IN_FLIGHT);
        if stale_at.is_none_or(|at| now < at) {
            sub.pending = true;
            // Look again when it would count as lost (a no-op if answered by then).
            return stale_at.map_or(Plan::Nothing, Plan::Defer);
        }
        // Whether the client got it is unknown: send full state, which a client accepts at
        // any version, so nothing is lost either way.
        sub.in_flight = None;
        sub.forget_sent();
    }
    if !sub.view.as_ref().is_some_and(|v| v.holds(latest, wall)) {
        sub.view = Some(View::new(latest, &sub.window, policy.show_cancelled, wall));
    }
    let Some(view) = sub.view.as_ref() else {
        return Plan::Nothing;
    };
    let shown = view.shown.clone();
    if let Some(backlog) = sub.backlog.take() {
        if Arc::ptr_eq(&backlog.shown, &shown) {
            return next_part(sub, backlog, now, policy);
        }
        // The list changed during a large state: diff against what the client holds now.
        sub.sent = Some(Arc::new(backlog.held()));
    }
    // The cache swaps in a new list only when it changed, so identity is enough here; a
    // new list equal to the held one yields an empty diff below, sent only when owed.
    let current = sub.sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, &shown));
    if current && !sub.owed {
        sub.pending = false;
        sub.unsent_change = None;
        return Plan::Nothing;
    }
    if !sub.owed
        && !sub.continuing
        && let Some(last) = sub.last_sent
        && now < last + policy.min_interval
    {
        sub.pending = true;
        return Plan::Defer(last + policy.min_interval);
    }
    // The parts after the first of a large state are partials even with full_only.
    let held = sub
        .sent
        .clone()
        .filter(|_| !policy.full_only || sub.continuing);
    let mut changes = match &held {
        Some(held) => {
            let changes = changes(held, &shown, &view.hidden);
            if changes.is_empty() && !sub.owed {
                // A new list equal to the held one: nothing to say.
                sub.sent = Some(shown);
                sub.pending = false;
                sub.continuing = false;
                sub.unsent_change = None;
                return Plan::Nothing;
            }
            Some(changes)
        }
        None => None,
    };
    // The partial unless the full document is no larger.
    if let Some(partial) = changes.as_ref().filter(|_| !sub.continuing) {
        let partial_len: usize = partial.iter().map(Change::len).sum();
        if partial.len() >= shown.len() || partial.iter().any(|c| matches!(c, Change::Drop(..))) {
            let full_len: usize = shown.iter().map(document::conference_len).sum();
            if partial_len >= full_len {
                changes = None;
            }
        }
    }
    let state = if changes.is_some() {
        DocumentState::Partial
    } else {
        DocumentState::Full
    };
    let mut changes = changes.unwrap_or_else(|| shown.iter().map(Change::Put).collect());
    order(&mut changes, wall);

    // As many as fit in one body, nearest first; at least one, so a state always moves on.
    let mut doc = ConferenceList {
        entity: sub.subscriber().to_owned(),
        version: sub.take_version(),
        state,
        entries: Vec::new(),
        complete: false,
    };
    let mut used = doc.envelope_len();
    let mut taken = 0;
    for change in &changes {
        let len = change.len();
        if taken > 0 && used + len > policy.max_body_bytes {
            break;
        }
        used += len;
        taken += 1;
    }
    doc.complete = taken == changes.len();
    doc.entries = changes[..taken].iter().map(Change::to_entry).collect();
    if doc.complete {
        sub.sent = Some(shown);
    } else {
        // The rest goes out part by part without diffing again, unless the list changes.
        let rest = changes[taken..].iter().map(Change::to_entry).collect();
        drop(changes);
        sub.backlog = Some(Backlog {
            shown: shown.clone(),
            // A full document replaced whatever the client held.
            base: held.clone().filter(|_| state == DocumentState::Partial),
            rest,
        });
        sub.sent = None;
    }
    sub.in_flight = Some(doc.version);
    sub.pending = !doc.complete;
    sub.continuing = !doc.complete;
    sub.owed = false;
    sub.last_sent = Some(now);
    Plan::Send(doc)
}

/// The next part of a large state whose list has not changed since its first part.
fn next_part(
    sub: &mut Subscription,
    mut backlog: Backlog,
    now: Instant,
    policy: NotifyPolicy,
) -> Plan {
    let mut doc = ConferenceList {
        entity: sub.subscriber().to_owned(),
        version: sub.take_version(),
        state: DocumentState::Partial,
        entries: Vec::new(),
        complete: false,
    };
    let mut used = doc.envelope_len();
    while let Some(next) = backlog.rest.front() {
        let len = document::entry_len(next);
        if !doc.entries.is_empty() && used + len > policy.max_body_bytes {
            break;
        }
        used += len;
        doc.entries.extend(backlog.rest.pop_front());
    }
    doc.complete = backlog.rest.is_empty();
    if doc.complete {
        sub.sent = Some(backlog.shown);
    } else {
        sub.backlog = Some(backlog);
    }
    sub.in_flight = Some(doc.version);
    sub.pending = !doc.complete;
    sub.continuing = !doc.complete;
    sub.owed = false;
    sub.last_sent = Some(now);
    Plan::Send(doc)
}

/// One entry of a document to be, borrowed until it is chosen.
enum Change<'a> {
    /// Added or changed: the whole conference.
    Put(&'a Conference),
    /// Removed, and why.
    Drop(&'a str, DeleteReason),
}

impl Change<'_> {
    fn to_entry(&self) -> Entry {
        match self {
            Change::Put(c) => Entry::Full((*c).clone()),
            Change::Drop(entity, reason) => Entry::Deleted {
                entity: (*entity).to_owned(),
                reason: Some(*reason),
            },
        }
    }

    fn len(&self) -> usize {
        match self {
            Change::Put(c) => document::conference_len(c),
            Change::Drop(..) => document::entry_len(&self.to_entry()),
        }
    }
}

/// What takes a client from `held` to `shown`: changed and added conferences, and removed
/// ones with the reason from `hidden` (`removed` when it is not hidden but gone).
fn changes<'a>(
    held: &'a [Conference],
    shown: &'a [Conference],
    hidden: &std::collections::HashMap<String, DeleteReason>,
) -> Vec<Change<'a>> {
    let held: BTreeMap<&str, &Conference> = held.iter().map(|c| (c.entity.as_str(), c)).collect();
    let mut out = Vec::new();
    let mut present = std::collections::HashSet::with_capacity(shown.len());
    for c in shown {
        present.insert(c.entity.as_str());
        if held.get(c.entity.as_str()) != Some(&c) {
            out.push(Change::Put(c));
        }
    }
    for entity in held.keys().filter(|e| !present.contains(*e)) {
        let reason = hidden
            .get(*entity)
            .copied()
            .unwrap_or(DeleteReason::Removed);
        out.push(Change::Drop(entity, reason));
    }
    out
}

/// Removals first (they are small and take away what is no longer true), then the
/// conferences nearest first.
fn order(changes: &mut Vec<Change<'_>>, wall: DateTime<Utc>) {
    let (mut drops, puts): (Vec<_>, Vec<_>) = changes
        .drain(..)
        .partition(|c| matches!(c, Change::Drop(..)));
    let mut puts: Vec<&Conference> = puts
        .into_iter()
        .filter_map(|c| match c {
            Change::Put(c) => Some(c),
            Change::Drop(..) => None,
        })
        .collect();
    sort_nearest_first(&mut puts, wall);
    drops.sort_by(|a, b| match (a, b) {
        (Change::Drop(a, _), Change::Drop(b, _)) => a.cmp(b),
        _ => std::cmp::Ordering::Equal,
    });
    changes.extend(drops);
    changes.extend(puts.into_iter().map(Change::Put));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::Delivered;
    use document::{DocumentState, Entry};

    fn conf(n: u32, subject: &str) -> Conference {
        let mut c = Conference {
            entity: format!("sip:{n}@conf.example.com"),
            ..Conference::default()
        };
        c.description.display_text = Some(format!("Conference number {n} with a long name"));
        c.description.subject = Some(subject.to_owned());
        c
    }

    fn list(subjects: &[&str]) -> Arc<Vec<Conference>> {
        Arc::new(
            subjects
                .iter()
                .enumerate()
                .map(|(i, s)| conf(i as u32, s))
                .collect(),
        )
    }

    const POLICY: NotifyPolicy = NotifyPolicy {
        min_interval: Duration::from_millis(200),
        full_only: false,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        show_cancelled: true,
    };

    fn wall() -> DateTime<Utc> {
        crate::directory::rows::parse_time("2026-12-01T12:00:00Z").unwrap()
    }

    fn sent(plan: Plan) -> ConferenceList {
        match plan {
            Plan::Send(d) => d,
            other => panic!("expected a document, got {other:?}"),
        }
    }

    #[test]
    fn first_is_full_then_partial_then_waits_for_delivery_and_rate() {
        let t0 = Instant::now();
        let mut sub =
            Subscription::new("sip:a@example.com".into(), t0 + Duration::from_secs(60), 0);
        let v0 = list(&["a", "b", "c", "d", "e", "f"]);
        let d = sent(sub.plan(&v0, t0, wall(), false, POLICY));
        assert_eq!(
            (d.version, d.state, d.entries.len()),
            (0, DocumentState::Full, 6)
        );

        // In flight: a change only marks the subscription pending (and arms the stale check).
        let v1 = list(&["a", "B", "c", "d", "e", "f"]);
        assert_eq!(
            sub.plan(&v1, t0, wall(), false, POLICY),
            Plan::Defer(t0 + STALE_IN_FLIGHT)
        );
        assert!(sub.pending);

        // Delivered, but inside the minimum interval: deferred to last + interval.
        sub.in_flight = None;
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(
            sub.plan(&v1, t1, wall(), false, POLICY),
            Plan::Defer(t0 + Duration::from_millis(200))
        );

        // Due: a partial with only the changed conference.
        let t2 = t0 + Duration::from_millis(200);
        let d = sent(sub.plan(&v1, t2, wall(), false, POLICY));
        assert_eq!((d.version, d.state), (1, DocumentState::Partial));
        assert_eq!(d.entries, vec![Entry::Full(conf(1, "B"))]);

        // Nothing new: nothing sent.
        sub.in_flight = None;
        assert_eq!(
            sub.plan(&v1, t2 + Duration::from_secs(1), wall(), false, POLICY),
            Plan::Nothing
        );
    }

    #[test]
    fn a_refresh_is_owed_a_notify_even_when_current_and_inside_the_interval() {
        let t0 = Instant::now();
        let mut sub = Subscription::new("sip:a@example.com".into(), t0, 4);
        let v = list(&["a", "b", "c"]);
        sent(sub.plan(&v, t0, wall(), false, POLICY));
        sub.in_flight = None;
        let d = sent(sub.plan(&v, t0 + Duration::from_millis(1), wall(), true, POLICY));
        assert_eq!((d.version, d.state), (5, DocumentState::Partial));
        assert!(
            d.entries.is_empty(),
            "an empty partial: the client is current"
        );
    }

    #[test]
    fn a_notification_never_answered_does_not_block_the_subscription_forever() {
        let t0 = Instant::now();
        let mut sub = Subscription::new("sip:a@example.com".into(), t0, 0);
        sent(sub.plan(&list(&["a", "b", "c"]), t0, wall(), false, POLICY));
        let v1 = list(&["a", "B", "c"]);
        let before = t0 + STALE_IN_FLIGHT - Duration::from_millis(1);
        assert_eq!(
            sub.plan(&v1, before, wall(), false, POLICY),
            Plan::Defer(t0 + STALE_IN_FLIGHT)
        );
        // The answer (Delivered) was lost: after the stale limit, full state goes out.
        let d = sent(sub.plan(&v1, t0 + STALE_IN_FLIGHT, wall(), false, POLICY));
        assert_eq!(
            (d.version, d.state, d.entries.len()),
            (1, DocumentState::Full, 3)
        );
    }

    #[test]
    fn removals_are_deleted_entries_and_full_can_be_forced() {
        let t0 = Instant::now();
        let mut sub = Subscription::new("sip:a@example.com".into(), t0, 0);
        let before = list(&["a", "b", "c", "d"]);
        sent(sub.plan(&before, t0, wall(), false, POLICY));
        sub.in_flight = None;
        let after = Arc::new(before[..3].to_vec());
        let later = t0 + Duration::from_secs(1);
        let d = sent(sub.plan(&after, later, wall(), false, POLICY));
        assert_eq!(
            d.entries,
            vec![Entry::Deleted {
                entity: "sip:3@conf.example.com".into(),
                reason: Some(DeleteReason::Removed),
            }]
        );

        let forced = NotifyPolicy {
            full_only: true,
            ..POLICY
        };
        sub.in_flight = None;
        let d = sent(sub.plan(
            &before,
            later + Duration::from_secs(1),
            wall(),
            false,
            forced,
        ));
        assert_eq!((d.state, d.entries.len()), (DocumentState::Full, 4));
    }

    #[test]
    fn only_a_delivered_for_the_version_in_flight_clears_it() {
        use crate::subscription::Delivered;
        let t0 = Instant::now();
        let mut sub = Subscription::new("sip:a@example.com".into(), t0, 0);
        let v0 = list(&["a", "b", "c"]);
        assert_eq!(sent(sub.plan(&v0, t0, wall(), false, POLICY)).version, 0);
        assert_eq!(sub.delivered(7), Delivered::Stale, "not what is in flight");
        assert_eq!(sub.in_flight, Some(0));

        // Version 0 counts as lost; version 1 goes out as full state.
        let v1 = list(&["a", "B", "c"]);
        let d = sent(sub.plan(&v1, t0 + STALE_IN_FLIGHT, wall(), false, POLICY));
        assert_eq!((d.version, d.state), (1, DocumentState::Full));
        // The late answer to version 0 must not let version 2 overtake version 1.
        assert_eq!(sub.delivered(0), Delivered::Stale);
        assert_eq!(sub.in_flight, Some(1));
        let v2 = list(&["a", "B", "C"]);
        let later = t0 + STALE_IN_FLIGHT + Duration::from_secs(1);
        assert!(matches!(
            sub.plan(&v2, later, wall(), false, POLICY),
            Plan::Defer(_)
        ));
        assert_eq!(
            sub.delivered(1),
            Delivered::Current { follow_up: true },
            "newer state waits"
        );
        assert_eq!(sub.in_flight, None);
        assert_eq!(sub.delivered(1), Delivered::Stale, "answered once");
        assert_eq!(sent(sub.plan(&v2, later, wall(), false, POLICY)).version, 2);
    }

    fn dated(n: u32, start: &str) -> Conference {
        let mut c = conf(n, "s");
        c.schedule.start = Some(start.to_owned());
        c
    }

    #[test]
    fn a_large_state_goes_out_in_parts_nearest_first_each_within_the_cap() {
        let policy = NotifyPolicy {
            max_body_bytes: 4096,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut sub =
            Subscription::new("sip:a@example.com".into(), t0 + Duration::from_secs(60), 0);
        // 200 conferences: the last (by entity) is live now, the first ones long past.
        let latest: Arc<Vec<Conference>> = Arc::new(
            (0..200)
                .map(|n| {
                    if n == 199 {
                        dated(n, "2026-12-01T11:59:00Z")
                    } else {
                        dated(n, "2026-01-01T00:00:00Z")
                    }
                })
                .collect(),
        );
        let mut held = Vec::new();
        let mut versions = Vec::new();
        let mut parts = Vec::new();
        loop {
            let doc = sent(sub.plan(&latest, t0, wall(), false, policy));
            assert!(doc.render().len() <= 4096);
            versions.push(doc.version);
            held = document::apply(&held, None, &doc).unwrap();
            parts.push(doc.clone());
            if doc.complete {
                break;
            }
            // Answered: the next part follows at once, inside the rate-limit interval.
            assert_eq!(
                sub.delivered(doc.version),
                Delivered::Current { follow_up: true }
            );
        }
        assert!(parts.len() > 3, "{} parts", parts.len());
        assert_eq!(versions, (0..parts.len() as u64).collect::<Vec<_>>());
        assert_eq!(parts[0].state, DocumentState::Full);
        assert!(!parts[0].complete);
        assert!(parts[1..].iter().all(|p| p.state == DocumentState::Partial));
        assert_eq!(
            parts[0].entries[0].entity(),
            "sip:199@conf.example.com",
            "the live one first"
        );
        let mut want = (*latest).clone();
        want.sort_by(|a, b| a.entity.cmp(&b.entity));
        assert_eq!(held, want);
        assert!(Arc::ptr_eq(sub.sent.as_ref().unwrap(), &latest), "current");
    }

    #[test]
    fn a_change_during_a_large_state_is_folded_into_the_next_part() {
        let policy = NotifyPolicy {
            max_body_bytes: 4096,
            ..POLICY
        };
        let t0 = Instant::now();
        let mut sub =
            Subscription::new("sip:a@example.com".into(), t0 + Duration::from_secs(60), 0);
        let v0: Arc<Vec<Conference>> = Arc::new((0..100).map(|n| conf(n, "a")).collect());
        let first = sent(sub.plan(&v0, t0, wall(), false, policy));
        let mut held = document::apply(&[], None, &first).unwrap();
        let sent_first: Vec<String> = first
            .entries
            .iter()
            .map(|e| e.entity().to_owned())
            .collect();
        // One conference already sent changes, one is removed.
        let mut v1 = (*v0).clone();
        let changed = v1.iter().position(|c| c.entity == sent_first[0]).unwrap();
        v1[changed].description.subject = Some("changed".into());
        v1.retain(|c| c.entity != sent_first[1]);
        let v1 = Arc::new(v1);
        sub.delivered(first.version);
        loop {
            let doc = sent(sub.plan(&v1, t0, wall(), false, policy));
            held = document::apply(&held, None, &doc).unwrap();
            sub.delivered(doc.version);
            if doc.complete {
                break;
            }
        }
        let mut want = (*v1).clone();
        want.sort_by(|a, b| a.entity.cmp(&b.entity));
        assert_eq!(held, want);
    }

    #[test]
    fn leaving_the_window_is_a_deletion_with_its_reason() {
        let t0 = Instant::now();
        let mut sub =
            Subscription::new("sip:a@example.com".into(), t0 + Duration::from_secs(600), 0)
                .with_window(crate::subscription::Window {
                    past: Some(Duration::from_secs(60)),
                    ..Default::default()
                });
        let mut ending = dated(1, "2026-12-01T11:00:00Z");
        ending.schedule.end = Some("2026-12-01T12:00:30Z".into());
        let latest = Arc::new(vec![ending, conf(2, "undated")]);
        let d = sent(sub.plan(&latest, t0, wall(), false, POLICY));
        assert_eq!(d.entries.len(), 2);
        let review = sub.review_at().unwrap();
        assert_eq!(
            review,
            crate::directory::rows::parse_time("2026-12-01T12:01:31Z").unwrap()
        );
        sub.delivered(d.version);
        // Nothing changes before then.
        let before = review - chrono::Duration::seconds(1);
        assert_eq!(
            sub.plan(&latest, t0 + Duration::from_secs(1), before, false, POLICY),
            Plan::Nothing
        );
        let d = sent(sub.plan(&latest, t0 + Duration::from_secs(2), review, false, POLICY));
        assert_eq!(
            d.entries,
            vec![Entry::Deleted {
                entity: "sip:1@conf.example.com".into(),
                reason: Some(DeleteReason::OutOfWindow)
            }]
        );
        assert_eq!(sub.review_at(), None);
    }

    proptest::proptest! {
        /// Whatever `plan` sends — partial or full — applied in order by a client, equals the
        /// list it was planned from, with versions contiguous from 0.
        #[test]
        fn applying_every_planned_document_reproduces_each_state(
            // Subjects are non-empty: the directory maps blank text to None, as the
            // document does.
            steps in proptest::collection::vec(
                proptest::collection::btree_map(0u32..40, "[a-z<&\"]{1,6}", 0..30),
                1..12,
            ),
            full_only in proptest::bool::ANY,
            // Small bodies: most states take several Notifications.
            max_body_bytes in 400usize..4000,
        ) {
            let policy = NotifyPolicy {
                min_interval: Duration::from_millis(10),
                full_only,
                max_body_bytes,
                ..POLICY
            };
            let t0 = Instant::now();
            let mut sub = Subscription::new("sip:p@example.com".into(), t0, 0);
            let mut held: Vec<Conference> = Vec::new();
            let mut held_version: Option<u64> = None;
            for (i, step) in steps.iter().enumerate() {
                let latest: Arc<Vec<Conference>> =
                    Arc::new(step.iter().map(|(n, s)| conf(*n, s)).collect());
                let now = t0 + Duration::from_secs(i as u64 + 1);
                // Every part of the state, each answered at once, until one is complete.
                for part in 0.. {
                    proptest::prop_assert!(part < 100, "a state never completed");
                    sub.in_flight = None;
                    match sub.plan(&latest, now, wall(), false, policy) {
                        Plan::Send(doc) => {
                            let body = doc.render();
                            // One conference alone may exceed a tiny cap; never two.
                            proptest::prop_assert!(
                                body.len() <= max_body_bytes || doc.entries.len() == 1,
                                "{} bytes > {max_body_bytes}", body.len()
                            );
                            // Through the wire form, as a client sees it.
                            let doc = ConferenceList::parse(&body).unwrap();
                            if let Some(v) = held_version {
                                proptest::prop_assert_eq!(doc.version, v + 1, "contiguous");
                            }
                            held = document::apply(&held, held_version, &doc).unwrap();
                            held_version = Some(doc.version);
                            if doc.complete {
                                break;
                            }
                        }
                        Plan::Nothing => break,
                        Plan::Defer(_) => panic!("steps are a second apart, parts go at once"),
                    }
                }
                let mut want = latest.to_vec();
                want.sort_by(|a, b| a.entity.cmp(&b.entity));
                proptest::prop_assert_eq!(&held, &want);
            }
        }

        /// The list changes while a large state is going out in parts: whatever happens in
        /// between, once the parts stop the client holds the latest list, versions contiguous.
        #[test]
        fn changes_between_the_parts_of_a_large_state_are_never_lost(
            steps in proptest::collection::vec(
                proptest::collection::btree_map(0u32..40, "[a-z<&\"]{1,6}", 0..30),
                1..12,
            ),
            max_body_bytes in 400usize..4000,
        ) {
            let policy = NotifyPolicy {
                min_interval: Duration::from_millis(10),
                max_body_bytes,
                ..POLICY
            };
            let t0 = Instant::now();
            let mut sub = Subscription::new("sip:p@example.com".into(), t0, 0);
            let mut held: Vec<Conference> = Vec::new();
            let mut held_version: Option<u64> = None;
            let mut latest = Arc::new(Vec::new());
            let mut receive = |sub: &mut Subscription, latest: &Arc<Vec<Conference>>, now| {
                sub.in_flight = None;
                match sub.plan(latest, now, wall(), false, policy) {
                    Plan::Send(doc) => {
                        let body = doc.render();
                        assert!(body.len() <= max_body_bytes || doc.entries.len() == 1);
                        let doc = ConferenceList::parse(&body).unwrap();
                        held = document::apply(&held, held_version, &doc).unwrap();
                        held_version = Some(doc.version);
                        !doc.complete
                    }
                    Plan::Nothing => false,
                    Plan::Defer(_) => panic!("steps are a second apart"),
                }
            };
            for (i, step) in steps.iter().enumerate() {
                latest = Arc::new(step.iter().map(|(n, s)| conf(*n, s)).collect());
                // One part per step: the next step's change lands mid-state.
                receive(&mut sub, &latest, t0 + Duration::from_secs(i as u64 + 1));
            }
            let end = t0 + Duration::from_secs(100);
            for _ in 0..1000 {
                if !receive(&mut sub, &latest, end) {
                    break;
                }
            }
            let mut want = latest.to_vec();
            want.sort_by(|a, b| a.entity.cmp(&b.entity));
            proptest::prop_assert_eq!(&held, &want);
        }
    }
}
