//! The live subscriptions of one proxy session: versions, what each client holds, delivery
//! and rate-control state, and the deadlines (expiry, deferred sends) — all sans-IO.

use super::view::{View, Window};
use document::{Conference, Entry};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// One live subscription as the notifier sees it: whose list, until when, and its delivery
/// state (what the client holds, the Notification in flight, rate control, the versions
/// sent and answered). Only its own methods and [`Subscription::plan`] change that state.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Address of record whose list this is.
    subscriber: String,
    /// Who signed in when it was created (`None` with authentication off); refreshes that
    /// carry credentials must sign in as the same identity.
    identity: Option<String>,
    /// When it ends unless refreshed (the registry indexes it).
    expires_at: Instant,
    /// When it was admitted, Unix seconds (for the admin API).
    since: u64,
    /// Version the next Notification carries (per subscription, RFC 4575 style).
    next_version: u64,
    /// The version of the last Notification (`None` before the first).
    last_version: Option<u64>,
    /// The last version the client accepted (`None` before the first answer).
    last_delivered: Option<u64>,
    /// The list as the client holds it after the last Notification (shared with the
    /// cache while current, so an up-to-date subscription costs one pointer).
    pub(super) sent: Option<Arc<Vec<Conference>>>,
    /// The version of the Notification awaiting the client's answer (one transaction at a
    /// time); only a `Delivered` for this version clears it.
    pub(super) in_flight: Option<u64>,
    /// Newer state is waiting (behind the one in flight, or for the rate limit).
    pub(super) pending: bool,
    /// A NOTIFY is owed even if nothing changed (a refresh, RFC 6665 §4.2.1.2).
    pub(super) owed: bool,
    /// When the last Notification was sent (rate control).
    pub(super) last_sent: Option<Instant>,
    /// The part of the list asked for.
    pub(super) window: Window,
    /// The largest body the client's transport carries, if below the server's cap.
    pub(super) max_body_bytes: Option<usize>,
    /// The list as this subscription shows it (window, hidden cancelled meetings), kept
    /// while it holds.
    pub(super) view: Option<View>,
    /// The last Notification left a large state incomplete: the next part goes out as soon
    /// as it is answered, not held back by the rate limit.
    pub(super) continuing: bool,
    /// A fetch (`Expires: 0`): it ends when its state has gone out.
    fetch: bool,
    /// The rest of a large state being sent in parts; while set, it (not `sent`) says what
    /// the client holds.
    pub(super) backlog: Option<Backlog>,
    /// The revision of the user's list last planned from (see [`Subscription::note_revision`]).
    revision: Option<u64>,
    /// When the oldest change not yet sent to the client was committed, if known.
    pub(super) unsent_change: Option<SystemTime>,
}

/// The parts of a large state not sent yet.
#[derive(Debug, Clone)]
pub(super) struct Backlog {
    /// The list the parts complete.
    pub(super) shown: Arc<Vec<Conference>>,
    /// What the client held before the first part (`None`: nothing, a full document).
    pub(super) base: Option<Arc<Vec<Conference>>>,
    /// The entries still to send, nearest first.
    pub(super) rest: VecDeque<Entry>,
}

impl Backlog {
    /// What the client holds now: `shown` with the entries not sent yet undone.
    pub(super) fn held(&self) -> Vec<Conference> {
        let base: HashMap<&str, &Conference> = self
            .base
            .iter()
            .flat_map(|b| b.iter())
            .map(|c| (c.entity.as_str(), c))
            .collect();
        let mut held: std::collections::BTreeMap<&str, &Conference> =
            self.shown.iter().map(|c| (c.entity.as_str(), c)).collect();
        for entry in &self.rest {
            let entity = entry.entity();
            match base.get(entity) {
                Some(before) => held.insert(entity, before),
                None => held.remove(entity),
            };
        }
        held.into_values().cloned().collect()
    }
}

impl Subscription {
    /// A subscription whose first Notification carries `first_version`.
    pub fn new(subscriber: String, expires_at: Instant, first_version: u64) -> Self {
        Self {
            subscriber,
            identity: None,
            expires_at,
            since: 0,
            next_version: first_version,
            last_version: None,
            last_delivered: None,
            sent: None,
            in_flight: None,
            pending: false,
            owed: false,
            last_sent: None,
            window: Window::default(),
            max_body_bytes: None,
            view: None,
            continuing: false,
            fetch: false,
            backlog: None,
            revision: None,
            unsent_change: None,
        }
    }

    /// The same subscription bound to `identity`.
    #[must_use]
    pub fn with_identity(mut self, identity: Option<String>) -> Self {
        self.identity = identity;
        self
    }

    /// The same subscription showing `window` of the list.
    #[must_use]
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = window;
        self.view = None;
        self
    }

    /// The same subscription with bodies of at most `max` bytes (`None`: the server's cap).
    #[must_use]
    pub fn with_max_body_bytes(mut self, max: Option<usize>) -> Self {
        self.max_body_bytes = max;
        self
    }

    /// The same subscription as a fetch (RFC 6665 §4.4.3): it ends with the last part of
    /// its state.
    #[must_use]
    pub fn with_fetch(mut self, fetch: bool) -> Self {
        self.fetch = fetch;
        self
    }

    /// The same subscription admitted at `since` (Unix seconds).
    #[must_use]
    pub fn with_since(mut self, since: u64) -> Self {
        self.since = since;
        self
    }

    /// Address of record whose list this is.
    pub fn subscriber(&self) -> &str {
        &self.subscriber
    }

    /// Who signed in when it was created (`None` with authentication off).
    pub fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// When it ends unless refreshed.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// Whether it is a fetch, which ends once its state has gone out.
    pub fn is_fetch(&self) -> bool {
        self.fetch
    }

    /// When it was admitted, Unix seconds.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// The version of the Notification awaiting the client's answer.
    pub fn in_flight(&self) -> Option<u64> {
        self.in_flight
    }

    /// When the last Notification was sent.
    pub fn last_sent(&self) -> Option<Instant> {
        self.last_sent
    }

    /// The version of the last Notification (`None` before the first).
    pub fn last_version(&self) -> Option<u64> {
        self.last_version
    }

    /// The last version the client accepted (`None` before the first answer).
    pub fn last_delivered(&self) -> Option<u64> {
        self.last_delivered
    }

    /// Forgets what the client holds: the next Notification is full state.
    pub fn forget_sent(&mut self) {
        self.sent = None;
        self.backlog = None;
    }

    /// When the shown part of the list next changes with time alone (a conference enters
    /// or leaves the window): plan again then.
    pub fn review_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.view.as_ref().and_then(|v| v.valid_until)
    }

    /// The client accepted the Notification of `version`. Only the one in flight counts: a
    /// late answer to an older one (sent again as full state after [`super::STALE_IN_FLIGHT`])
    /// must not let a newer Notification overtake the one still unanswered.
    pub fn delivered(&mut self, version: u64) -> Delivered {
        if self.in_flight != Some(version) {
            return Delivered::Stale;
        }
        self.in_flight = None;
        self.last_delivered = Some(version);
        Delivered::Current {
            follow_up: self.pending || self.owed,
        }
    }

    /// Takes the version for the next Notification (strictly increasing by one).
    pub fn take_version(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version = v.saturating_add(1);
        self.last_version = Some(v);
        v
    }

    /// The user's list is at `revision`, committed at `changed_at` (`None`: not a logged
    /// change, e.g. a load). The first revision a subscription plans from is what it was
    /// admitted with; a later one is a change the client has not seen until a Notification
    /// carries it (see [`Subscription::take_unsent_change`]).
    pub fn note_revision(&mut self, revision: u64, changed_at: Option<SystemTime>) {
        if self.revision.is_some_and(|seen| revision > seen) {
            self.unsent_change = self.unsent_change.or(changed_at);
        }
        self.revision = Some(self.revision.map_or(revision, |seen| seen.max(revision)));
    }

    /// When the oldest change the Notification just planned carries was committed: taken
    /// once, so commit-to-notify latency is observed for the first Notification only.
    pub fn take_unsent_change(&mut self) -> Option<SystemTime> {
        self.unsent_change.take()
    }

    /// Whole seconds left at `now`, rounded up so that a client never sees 0 while active.
    pub fn remaining_secs(&self, now: Instant) -> u32 {
        let left = self.expires_at.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

/// What a `Delivered{accepted}` did to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// It answered a Notification other than the one in flight (or none is): ignored.
    Stale,
    /// It answered the one in flight, which is cleared; `follow_up` when newer state or an
    /// owed NOTIFY is waiting to be sent.
    Current {
        /// Whether to plan the next Notification now.
        follow_up: bool,
    },
}

/// Subscriptions by id, by user, and ordered deadline indexes.
#[derive(Debug, Default)]
pub struct Registry {
    subs: HashMap<String, Subscription>,
    by_user: HashMap<String, HashSet<String>>,
    expiries: BTreeSet<(Instant, String)>,
    sends: BTreeSet<(Instant, String)>,
    send_at: HashMap<String, Instant>,
}

impl Registry {
    /// Number of live subscriptions.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// True when nothing is live.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Whether `id` is live.
    pub fn contains(&self, id: &str) -> bool {
        self.subs.contains_key(id)
    }

    /// Adds (or replaces) a subscription.
    pub fn insert(&mut self, id: String, sub: Subscription) {
        self.remove(&id);
        self.expiries.insert((sub.expires_at, id.clone()));
        self.by_user
            .entry(sub.subscriber.clone())
            .or_default()
            .insert(id.clone());
        self.subs.insert(id, sub);
    }

    /// Read access.
    pub fn get(&self, id: &str) -> Option<&Subscription> {
        self.subs.get(id)
    }

    /// Every live subscription, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Subscription)> {
        self.subs.iter().map(|(id, sub)| (id.as_str(), sub))
    }

    /// Mutable access.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        self.subs.get_mut(id)
    }

    /// The ids of `user`'s subscriptions.
    pub fn subs_of(&self, user: &str) -> Vec<String> {
        self.by_user
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Moves the deadline of `id` to `now + granted`. False if unknown.
    pub fn refresh(&mut self, id: &str, now: Instant, granted: Duration) -> bool {
        let Some(sub) = self.subs.get_mut(id) else {
            return false;
        };
        self.expiries.remove(&(sub.expires_at, id.to_owned()));
        sub.expires_at = now + granted;
        self.expiries.insert((sub.expires_at, id.to_owned()));
        true
    }

    /// Arranges a deferred send of `id` at `at` (rate control); an earlier one stays.
    pub fn schedule_send(&mut self, id: &str, at: Instant) {
        if self.send_at.get(id).is_some_and(|t| *t <= at) {
            return;
        }
        if let Some(old) = self.send_at.insert(id.to_owned(), at) {
            self.sends.remove(&(old, id.to_owned()));
        }
        self.sends.insert((at, id.to_owned()));
    }

    /// Ids whose deferred send is due at `now`.
    pub fn take_due_sends(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.sends.first() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.sends.pop_first() else {
                break;
            };
            self.send_at.remove(&id);
            out.push(id);
        }
        out
    }

    /// Removes `id`, returning it if it was live.
    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        let sub = self.subs.remove(id)?;
        self.expiries.remove(&(sub.expires_at, id.to_owned()));
        if let Some(at) = self.send_at.remove(id) {
            self.sends.remove(&(at, id.to_owned()));
        }
        if let Some(set) = self.by_user.get_mut(&sub.subscriber) {
            set.remove(id);
            if set.is_empty() {
                self.by_user.remove(&sub.subscriber);
            }
        }
        Some(sub)
    }

    /// The earliest deadline (expiry or deferred send), for the session's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        let e = self.expiries.first().map(|(at, _)| *at);
        let s = self.sends.first().map(|(at, _)| *at);
        match (e, s) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns every subscription whose expiry is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, Subscription)> {
        let mut ids = Vec::new();
        for (at, id) in &self.expiries {
            if *at > now {
                break;
            }
            ids.push(id.clone());
        }
        ids.into_iter()
            .filter_map(|id| self.remove(&id).map(|s| (id, s)))
            .collect()
    }

    /// Removes and returns everything (shutdown, session end).
    pub fn drain(&mut self) -> Vec<(String, Subscription)> {
        self.expiries.clear();
        self.sends.clear();
        self.send_at.clear();
        self.by_user.clear();
        self.subs.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(user: &str, at: Instant, v: u64) -> Subscription {
        Subscription::new(user.into(), at, v)
    }

    #[test]
    fn expiry_order_refresh_and_versions() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert("a".into(), sub("sip:a@x", t0 + Duration::from_secs(10), 0));
        r.insert("b".into(), sub("sip:b@x", t0 + Duration::from_secs(5), 7));
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(5)));

        assert!(r.refresh("b", t0, Duration::from_secs(20)));
        assert!(!r.refresh("zzz", t0, Duration::from_secs(20)));
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(10)));

        assert!(r.take_expired(t0 + Duration::from_secs(9)).is_empty());
        let gone = r.take_expired(t0 + Duration::from_secs(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "a");
        assert_eq!(r.len(), 1);
        assert!(r.subs_of("sip:a@x").is_empty());

        let b = r.get_mut("b").unwrap();
        assert_eq!((b.take_version(), b.take_version()), (7, 8));
        assert_eq!(b.remaining_secs(t0 + Duration::from_millis(19_001)), 1);
        assert_eq!(b.remaining_secs(t0 + Duration::from_secs(30)), 0);
    }

    #[test]
    fn deferred_sends_keep_the_earliest_and_leave_with_their_subscription() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert("a".into(), sub("u", t0 + Duration::from_secs(100), 0));
        r.insert("b".into(), sub("u", t0 + Duration::from_secs(100), 0));
        assert_eq!(r.subs_of("u").len(), 2);
        r.schedule_send("a", t0 + Duration::from_millis(200));
        r.schedule_send("a", t0 + Duration::from_millis(300));
        r.schedule_send("b", t0 + Duration::from_millis(100));
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_millis(100)));
        r.remove("b");
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_millis(200)));
        assert!(r.take_due_sends(t0 + Duration::from_millis(199)).is_empty());
        assert_eq!(
            r.take_due_sends(t0 + Duration::from_millis(200)),
            vec!["a".to_owned()]
        );
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(100)));
    }

    #[test]
    fn a_revision_after_the_first_is_an_unsent_change_until_taken() {
        let t0 = Instant::now();
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let mut s = sub("u", t0, 0);
        s.note_revision(3, Some(at(100)));
        assert_eq!(s.take_unsent_change(), None, "what it was admitted with");
        s.note_revision(4, Some(at(101)));
        s.note_revision(5, Some(at(102)));
        assert_eq!(s.take_unsent_change(), Some(at(101)), "the oldest not sent");
        assert_eq!(s.take_unsent_change(), None, "taken once");
        s.note_revision(5, Some(at(102)));
        s.note_revision(4, Some(at(101)));
        assert_eq!(s.take_unsent_change(), None, "nothing newer");
    }

    #[test]
    fn replacing_an_id_drops_its_old_deadline() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert("a".into(), sub("s", t0 + Duration::from_secs(1), 0));
        r.insert("a".into(), sub("s", t0 + Duration::from_secs(9), 0));
        assert!(r.take_expired(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(r.drain().len(), 1);
        assert!(r.is_empty() && r.next_deadline().is_none());
    }
}
