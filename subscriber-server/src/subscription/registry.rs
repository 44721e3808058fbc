//! The live subscriptions of one proxy session: versions, what each client holds, delivery
//! and rate-control state, and the deadlines (expiry, deferred sends) — all sans-IO.

use super::view::{View, Window};
use document::{Conference, Entry};
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One live subscription as the notifier sees it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Address of record whose list this is.
    pub subscriber: String,
    /// Who signed in when it was created (`None` with authentication off); refreshes that
    /// carry credentials must sign in as the same identity.
    pub identity: Option<String>,
    /// When it ends unless refreshed.
    pub expires_at: Instant,
    /// Version the next Notification carries (per subscription, RFC 4575 style).
    next_version: u64,
    /// The list as the client holds it after the last Notification (shared with the
    /// cache while current, so an up-to-date subscription costs one pointer).
    pub sent: Option<Arc<Vec<Conference>>>,
    /// The version of the Notification awaiting the client's answer (one transaction at a
    /// time); only a `Delivered` for this version clears it.
    pub in_flight: Option<u64>,
    /// Newer state is waiting (behind the one in flight, or for the rate limit).
    pub pending: bool,
    /// A NOTIFY is owed even if nothing changed (a refresh, RFC 6665 §4.2.1.2).
    pub owed: bool,
    /// When the last Notification was sent (rate control).
    pub last_sent: Option<Instant>,
    /// The part of the list asked for.
    pub window: Window,
    /// The largest body the client's transport carries, if below the server's cap.
    pub max_body_bytes: Option<usize>,
    /// The list as this subscription shows it (window, hidden cancelled meetings), kept
    /// while it holds.
    pub view: Option<View>,
    /// The last Notification left a large state incomplete: the next part goes out as soon
    /// as it is answered, not held back by the rate limit.
    pub continuing: bool,
    /// A fetch (`Expires: 0`): it ends when its state has gone out.
    pub fetch: bool,
    /// The rest of a large state being sent in parts; while set, it (not `sent`) says what
    /// the client holds.
    pub backlog: Option<Backlog>,
}

/// The parts of a large state not sent yet.
#[derive(Debug, Clone)]
pub struct Backlog {
    /// The list the parts complete.
    pub shown: Arc<Vec<Conference>>,
    /// What the client held before the first part (`None`: nothing, a full document).
    pub base: Option<Arc<Vec<Conference>>>,
    /// The entries still to send, nearest first.
    pub rest: VecDeque<Entry>,
}

impl Backlog {
    /// What the client holds now: `shown` with the entries not sent yet undone.
    pub fn held(&self) -> Vec<Conference> {
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
            next_version: first_version,
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
        }
    }

    /// Forgets what the client holds: the next Notification is full state.
    pub fn forget_sent(&mut self) {
        self.sent = None;
        self.backlog = None;
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

    /// When the shown part of the list next changes with time alone (a conference enters
    /// or leaves the window): plan again then.
    pub fn review_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.view.as_ref().and_then(|v| v.valid_until)
    }

    /// The same subscription bound to `identity`.
    #[must_use]
    pub fn with_identity(mut self, identity: Option<String>) -> Self {
        self.identity = identity;
        self
    }

    /// The client accepted the Notification of `version`. Only the one in flight counts: a
    /// late answer to an older one (sent again as full state after [`super::STALE_IN_FLIGHT`])
    /// must not let a newer Notification overtake the one still unanswered.
    pub fn delivered(&mut self, version: u64) -> Delivered {
        if self.in_flight != Some(version) {
            return Delivered::Stale;
        }
        self.in_flight = None;
        Delivered::Current {
            follow_up: self.pending || self.owed,
        }
    }

    /// Takes the version for the next Notification (strictly increasing by one).
    pub fn take_version(&mut self) -> u64 {
        let v = self.next_version;
        self.next_version = v.saturating_add(1);
        v
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
