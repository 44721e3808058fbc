//! What a subscription should send now, sans-IO: nothing, later (rate control), or a
//! document — full for the first Notification and whenever a partial would not be smaller
//! (or full documents are forced), otherwise the partial diff against what the client holds.

use super::Subscription;
use document::{Conference, ConferenceList};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// An unanswered Notification older than this is taken as lost: longer than the proxy's
/// NOTIFY transaction timeout (Timer F, 32 s), after which the proxy always reports an
/// outcome — unless that report itself was lost (a full proxy queue, a dropped stream).
pub const STALE_IN_FLIGHT: Duration = Duration::from_secs(60);

/// Notification policy from config.
#[derive(Debug, Clone, Copy)]
pub struct NotifyPolicy {
    /// Least time between two Notifications of one subscription (RFC 6446-style); changes
    /// inside it are coalesced into one carrying the latest state.
    pub min_interval: Duration,
    /// Never send partial documents.
    pub full_only: bool,
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

/// Decides for `sub` given the user's `latest` list at `now`; `owed` marks a refresh that
/// must be answered with a NOTIFY even if nothing changed. Updates `sub`'s delivery state.
pub fn plan(
    sub: &mut Subscription,
    latest: &Arc<Vec<Conference>>,
    now: Instant,
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
        sub.sent = None;
    }
    // The cache swaps in a new list only when it changed, so identity is enough here; a
    // new list equal to the held one yields an empty diff below, sent only when owed.
    let current = sub.sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, latest));
    if current && !sub.owed {
        sub.pending = false;
        return Plan::Nothing;
    }
    if !sub.owed
        && let Some(last) = sub.last_sent
        && now < last + policy.min_interval
    {
        sub.pending = true;
        return Plan::Defer(last + policy.min_interval);
    }
    let partial = match &sub.sent {
        Some(held) if !policy.full_only => {
            let partial = document::diff(&sub.subscriber, 0, held, latest);
            if partial.entries.is_empty() && !sub.owed {
                // A new list equal to the held one: nothing to say.
                sub.sent = Some(latest.clone());
                sub.pending = false;
                return Plan::Nothing;
            }
            Some(partial)
        }
        _ => None,
    };
    let version = sub.take_version();
    let full = || ConferenceList::full(sub.subscriber.clone(), version, latest.to_vec());
    let doc = match partial {
        Some(mut partial) => {
            partial.version = version;
            if clearly_smaller(&partial, latest.len()) {
                partial
            } else {
                let full = full();
                if document::prefer_full(&partial, &full) {
                    full
                } else {
                    partial
                }
            }
        }
        None => full(),
    };
    sub.sent = Some(latest.clone());
    sub.in_flight = Some(version);
    sub.pending = false;
    sub.owed = false;
    sub.last_sent = Some(now);
    Plan::Send(doc)
}

/// A partial without deleted entries that leaves out at least one current conference is
/// smaller than the full document (its conferences are a strict subset of the full one's),
/// so the full one need not be rendered to compare.
fn clearly_smaller(partial: &ConferenceList, current: usize) -> bool {
    partial
        .entries
        .iter()
        .all(|e| matches!(e, document::Entry::Full(_)))
        && partial.entries.len() < current
}

#[cfg(test)]
mod tests {
    use super::*;
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
    };

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
        let d = sent(plan(&mut sub, &v0, t0, false, POLICY));
        assert_eq!(
            (d.version, d.state, d.entries.len()),
            (0, DocumentState::Full, 6)
        );

        // In flight: a change only marks the subscription pending (and arms the stale check).
        let v1 = list(&["a", "B", "c", "d", "e", "f"]);
        assert_eq!(
            plan(&mut sub, &v1, t0, false, POLICY),
            Plan::Defer(t0 + STALE_IN_FLIGHT)
        );
        assert!(sub.pending);

        // Delivered, but inside the minimum interval: deferred to last + interval.
        sub.in_flight = None;
        let t1 = t0 + Duration::from_millis(50);
        assert_eq!(
            plan(&mut sub, &v1, t1, false, POLICY),
            Plan::Defer(t0 + Duration::from_millis(200))
        );

        // Due: a partial with only the changed conference.
        let t2 = t0 + Duration::from_millis(200);
        let d = sent(plan(&mut sub, &v1, t2, false, POLICY));
        assert_eq!((d.version, d.state), (1, DocumentState::Partial));
        assert_eq!(d.entries, vec![Entry::Full(conf(1, "B"))]);

        // Nothing new: nothing sent.
        sub.in_flight = None;
        assert_eq!(
            plan(&mut sub, &v1, t2 + Duration::from_secs(1), false, POLICY),
            Plan::Nothing
        );
    }

    #[test]
    fn a_refresh_is_owed_a_notify_even_when_current_and_inside_the_interval() {
        let t0 = Instant::now();
        let mut sub = Subscription::new("sip:a@example.com".into(), t0, 4);
        let v = list(&["a", "b", "c"]);
        sent(plan(&mut sub, &v, t0, false, POLICY));
        sub.in_flight = None;
        let d = sent(plan(
            &mut sub,
            &v,
            t0 + Duration::from_millis(1),
            true,
            POLICY,
        ));
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
        sent(plan(&mut sub, &list(&["a", "b", "c"]), t0, false, POLICY));
        let v1 = list(&["a", "B", "c"]);
        let before = t0 + STALE_IN_FLIGHT - Duration::from_millis(1);
        assert_eq!(
            plan(&mut sub, &v1, before, false, POLICY),
            Plan::Defer(t0 + STALE_IN_FLIGHT)
        );
        // The answer (Delivered) was lost: after the stale limit, full state goes out.
        let d = sent(plan(&mut sub, &v1, t0 + STALE_IN_FLIGHT, false, POLICY));
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
        sent(plan(&mut sub, &before, t0, false, POLICY));
        sub.in_flight = None;
        let after = Arc::new(before[..3].to_vec());
        let later = t0 + Duration::from_secs(1);
        let d = sent(plan(&mut sub, &after, later, false, POLICY));
        assert_eq!(
            d.entries,
            vec![Entry::Deleted {
                entity: "sip:3@conf.example.com".into()
            }]
        );

        let forced = NotifyPolicy {
            full_only: true,
            ..POLICY
        };
        sub.in_flight = None;
        let d = sent(plan(
            &mut sub,
            &before,
            later + Duration::from_secs(1),
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
        assert_eq!(sent(plan(&mut sub, &v0, t0, false, POLICY)).version, 0);
        assert_eq!(sub.delivered(7), Delivered::Stale, "not what is in flight");
        assert_eq!(sub.in_flight, Some(0));

        // Version 0 counts as lost; version 1 goes out as full state.
        let v1 = list(&["a", "B", "c"]);
        let d = sent(plan(&mut sub, &v1, t0 + STALE_IN_FLIGHT, false, POLICY));
        assert_eq!((d.version, d.state), (1, DocumentState::Full));
        // The late answer to version 0 must not let version 2 overtake version 1.
        assert_eq!(sub.delivered(0), Delivered::Stale);
        assert_eq!(sub.in_flight, Some(1));
        let v2 = list(&["a", "B", "C"]);
        let later = t0 + STALE_IN_FLIGHT + Duration::from_secs(1);
        assert!(matches!(
            plan(&mut sub, &v2, later, false, POLICY),
            Plan::Defer(_)
        ));
        assert_eq!(
            sub.delivered(1),
            Delivered::Current { follow_up: true },
            "newer state waits"
        );
        assert_eq!(sub.in_flight, None);
        assert_eq!(sub.delivered(1), Delivered::Stale, "answered once");
        assert_eq!(sent(plan(&mut sub, &v2, later, false, POLICY)).version, 2);
    }

    proptest::proptest! {
        /// Whatever `plan` sends — partial or full — applied in order by a client, equals the
        /// list it was planned from, with versions contiguous from 0.
        #[test]
        fn applying_every_planned_document_reproduces_each_state(
            // Subjects are non-empty: the directory maps blank text to None, as the
            // document does.
            steps in proptest::collection::vec(
                proptest::collection::btree_map(0u32..12, "[a-z<&\"]{1,6}", 0..8),
                1..12,
            ),
            full_only in proptest::bool::ANY,
        ) {
            let policy = NotifyPolicy { min_interval: Duration::from_millis(10), full_only };
            let t0 = Instant::now();
            let mut sub = Subscription::new("sip:p@example.com".into(), t0, 0);
            let mut held: Vec<Conference> = Vec::new();
            let mut held_version = None;
            for (i, step) in steps.iter().enumerate() {
                let latest: Arc<Vec<Conference>> =
                    Arc::new(step.iter().map(|(n, s)| conf(*n, s)).collect());
                let now = t0 + Duration::from_secs(i as u64 + 1);
                sub.in_flight = None;
                match plan(&mut sub, &latest, now, false, policy) {
                    Plan::Send(doc) => {
                        // Through the wire form, as a client sees it.
                        let doc = ConferenceList::parse(&doc.render()).unwrap();
                        held = document::apply(&held, held_version, &doc).unwrap();
                        held_version = Some(doc.version);
                    }
                    Plan::Nothing => {}
                    Plan::Defer(_) => panic!("steps are a second apart"),
                }
                let mut want = latest.to_vec();
                want.sort_by(|a, b| a.entity.cmp(&b.entity));
                proptest::prop_assert_eq!(&held, &want);
            }
        }
    }
}
