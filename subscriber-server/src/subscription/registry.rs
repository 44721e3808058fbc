//! The live subscriptions of one proxy session, with their versions and expiry deadlines.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// One live subscription as the notifier sees it.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Address of record whose list this is.
    pub subscriber: String,
    /// When it ends unless refreshed.
    pub expires_at: Instant,
    /// Version the next Notification carries (RFC 4575-style, per subscription).
    next_version: u64,
}

impl Subscription {
    /// A subscription whose first Notification carries `first_version`.
    pub fn new(subscriber: String, expires_at: Instant, first_version: u64) -> Self {
        Self {
            subscriber,
            expires_at,
            next_version: first_version,
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

/// Subscriptions by id plus an ordered deadline index, so expiry is O(log n).
#[derive(Debug, Default)]
pub struct Registry {
    subs: HashMap<String, Subscription>,
    deadlines: BTreeSet<(Instant, String)>,
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
        self.deadlines.insert((sub.expires_at, id.clone()));
        self.subs.insert(id, sub);
    }

    /// Mutable access, e.g. to take a version.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Subscription> {
        self.subs.get_mut(id)
    }

    /// Moves the deadline of `id` to `now + granted`. False if unknown.
    pub fn refresh(&mut self, id: &str, now: Instant, granted: Duration) -> bool {
        let Some(sub) = self.subs.get_mut(id) else {
            return false;
        };
        self.deadlines.remove(&(sub.expires_at, id.to_owned()));
        sub.expires_at = now + granted;
        self.deadlines.insert((sub.expires_at, id.to_owned()));
        true
    }

    /// Removes `id`, returning it if it was live.
    pub fn remove(&mut self, id: &str) -> Option<Subscription> {
        let sub = self.subs.remove(id)?;
        self.deadlines.remove(&(sub.expires_at, id.to_owned()));
        Some(sub)
    }

    /// The earliest deadline, for the session's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Removes and returns every subscription whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<(String, Subscription)> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.deadlines.pop_first() else {
                break;
            };
            if let Some(sub) = self.subs.remove(&id) {
                out.push((id, sub));
            }
        }
        out
    }

    /// Removes and returns everything (shutdown, session end).
    pub fn drain(&mut self) -> Vec<(String, Subscription)> {
        self.deadlines.clear();
        self.subs.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_order_refresh_and_versions() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert(
            "a".into(),
            Subscription::new("sip:a@x".into(), t0 + Duration::from_secs(10), 0),
        );
        r.insert(
            "b".into(),
            Subscription::new("sip:b@x".into(), t0 + Duration::from_secs(5), 7),
        );
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(5)));

        assert!(r.refresh("b", t0, Duration::from_secs(20)));
        assert!(!r.refresh("zzz", t0, Duration::from_secs(20)));
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(10)));

        assert!(r.take_expired(t0 + Duration::from_secs(9)).is_empty());
        let gone = r.take_expired(t0 + Duration::from_secs(10));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].0, "a");
        assert_eq!(r.len(), 1);

        let b = r.get_mut("b").unwrap();
        assert_eq!((b.take_version(), b.take_version()), (7, 8));
        assert_eq!(b.remaining_secs(t0 + Duration::from_millis(19_001)), 1);
        assert_eq!(b.remaining_secs(t0 + Duration::from_secs(30)), 0);
    }

    #[test]
    fn replacing_an_id_drops_its_old_deadline() {
        let t0 = Instant::now();
        let mut r = Registry::default();
        r.insert(
            "a".into(),
            Subscription::new("s".into(), t0 + Duration::from_secs(1), 0),
        );
        r.insert(
            "a".into(),
            Subscription::new("s".into(), t0 + Duration::from_secs(9), 0),
        );
        assert!(r.take_expired(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(r.drain().len(), 1);
        assert!(r.is_empty() && r.next_deadline().is_none());
    }
}
