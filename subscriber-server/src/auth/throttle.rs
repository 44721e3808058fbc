//! Failed sign-in throttling, sans-IO: failures are counted per key (a user name, a client
//! address) in a fixed window. Once a key has `max_failures` in its window, further attempts
//! with it are refused without verifying until the window ends; the answer carries the
//! seconds left (SIP `Retry-After`, RFC 3261 §20.33).
//!
//! Per instance, like the nonce counts: one user's requests reach one instance; an address
//! spread over several instances is throttled on each.
//!
//! Memory is bounded and counting never stops:
//! * a key is stored as a 16-byte fingerprint, so an entry has the same size whatever the
//!   user name (and user names over [`MAX_USERNAME_BYTES`] never become keys at all);
//! * IPv6 clients are keyed by their /64 (one host usually holds a whole /64), IPv4 by /32;
//! * expired windows are dropped as time passes;
//! * at the cap an entry is evicted to make room: one still below the limit, oldest window
//!   first, and a blocking one only when every entry blocks. A flood of fresh keys (one
//!   failure each) therefore displaces other one-off failures, never a block, and is
//!   itself counted against the flooder's address.

use sha2::{Digest as _, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Default failures allowed per window.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// Default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most.
pub const DEFAULT_CAP: usize = 100_000;
/// Longest digest user name that is looked up or becomes a throttle key; longer ones are a
/// failed sign-in counted against the client address only.
pub const MAX_USERNAME_BYTES: usize = 256;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A digest user name (at most [`MAX_USERNAME_BYTES`]; see [`ThrottleKey::user`]).
    User(String),
    /// A client address: an IPv4 address, an IPv6 /64 prefix (`2001:db8::/64`), or the
    /// string as given when it is not an IP address.
    Address(String),
}

impl ThrottleKey {
    /// The key of digest user name `name`; `None` when it is longer than
    /// [`MAX_USERNAME_BYTES`] (such a name is refused without being remembered).
    pub fn user(name: &str) -> Option<Self> {
        (name.len() <= MAX_USERNAME_BYTES).then(|| ThrottleKey::User(name.to_owned()))
    }

    /// The key of a client address given as `ip`, `ip:port` or `[v6]:port`; `None` if empty.
    /// The port is dropped (it changes with every connection); IPv6 addresses are cut to
    /// their /64 and IPv4-mapped ones (`::ffff:192.0.2.1`) are IPv4.
    pub fn address(addr: &str) -> Option<Self> {
        let addr = addr.trim();
        if addr.is_empty() {
            return None;
        }
        let ip = addr
            .parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| addr.parse::<IpAddr>());
        let key = match ip.map(|ip| ip.to_canonical()) {
            Ok(IpAddr::V4(v4)) => v4.to_string(),
            Ok(IpAddr::V6(v6)) => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                format!("{}/64", Ipv6Addr::from(prefix))
            }
            Err(_) => addr.to_owned(),
        };
        Some(ThrottleKey::Address(key))
    }

    /// A fixed-size digest of the key: what the table stores (collisions need 2^64 work).
    fn slot(&self) -> Slot {
        let mut h = Sha256::new();
        match self {
            ThrottleKey::User(u) => {
                h.update(b"user\0");
                h.update(u.as_bytes());
            }
            ThrottleKey::Address(a) => {
                h.update(b"addr\0");
                h.update(a.as_bytes());
            }
        }
        let digest = h.finalize();
        let mut slot = [0u8; 16];
        slot.copy_from_slice(&digest[..16]);
        Slot(slot)
    }
}

/// A stored key: the first 16 bytes of SHA-256 over the key's kind and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Slot([u8; 16]);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    failures: u32,
}

/// The failure counters.
#[derive(Debug)]
pub struct Throttle {
    max_failures: u32,
    window: u64,
    cap: usize,
    entries: HashMap<Slot, Window>,
    /// Entries still below `max_failures`, as (window start, slot), oldest first: evicted
    /// first when the table is full.
    counting: BTreeSet<(u64, Slot)>,
    /// Entries that block, oldest first: evicted only when nothing else is left.
    blocking: BTreeSet<(u64, Slot)>,
}

impl Throttle {
    /// Allows `max_failures` per `window` per key; tracks at most `cap` keys.
    pub fn new(max_failures: u32, window: Duration, cap: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window: window.as_secs().max(1),
            cap: cap.max(1),
            entries: HashMap::new(),
            counting: BTreeSet::new(),
            blocking: BTreeSet::new(),
        }
    }

    /// Seconds until `key` may try again, or `None` if it may try now.
    pub fn blocked(&self, key: &ThrottleKey, now: u64) -> Option<u64> {
        let w = self.entries.get(&key.slot())?;
        let end = w.start.saturating_add(self.window);
        (now < end && w.failures >= self.max_failures).then(|| (end - now).max(1))
    }

    /// Counts a failed attempt by `key` at `now`.
    pub fn fail(&mut self, key: &ThrottleKey, now: u64) {
        self.prune(now);
        let slot = key.slot();
        let next = match self.entries.get(&slot).copied() {
            Some(w) => {
                self.unindex(slot, w);
                if now >= w.start.saturating_add(self.window) || now < w.start {
                    // The window is over (or the clock went back): a new one starts now.
                    Window {
                        start: now,
                        failures: 1,
                    }
                } else {
                    Window {
                        failures: w.failures.saturating_add(1),
                        ..w
                    }
                }
            }
            None => {
                while self.entries.len() >= self.cap {
                    let Some((_, victim)) = self
                        .counting
                        .pop_first()
                        .or_else(|| self.blocking.pop_first())
                    else {
                        break;
                    };
                    self.entries.remove(&victim);
                }
                Window {
                    start: now,
                    failures: 1,
                }
            }
        };
        self.entries.insert(slot, next);
        self.index(slot, next);
    }

    /// Drops the windows that are over at `now` (the oldest of each index).
    fn prune(&mut self, now: u64) {
        let window = self.window;
        for set in [&mut self.counting, &mut self.blocking] {
            while let Some(&(start, slot)) = set.first() {
                if now < start.saturating_add(window) {
                    break;
                }
                set.pop_first();
                self.entries.remove(&slot);
            }
        }
    }

    fn index(&mut self, slot: Slot, w: Window) {
        let set = if w.failures >= self.max_failures {
            &mut self.blocking
        } else {
            &mut self.counting
        };
        set.insert((w.start, slot));
    }

    fn unindex(&mut self, slot: Slot, w: Window) {
        self.counting.remove(&(w.start, slot));
        self.blocking.remove(&(w.start, slot));
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: &str) -> ThrottleKey {
        ThrottleKey::User(u.into())
    }

    fn addr(a: &str) -> ThrottleKey {
        ThrottleKey::address(a).unwrap()
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let mut t = Throttle::new(3, Duration::from_secs(60), 100);
        for i in 0..3 {
            assert_eq!(t.blocked(&user("alice"), 1000 + i), None);
            t.fail(&user("alice"), 1000 + i);
        }
        assert_eq!(t.blocked(&user("alice"), 1010), Some(50));
        assert_eq!(t.blocked(&user("alice"), 1059), Some(1));
        assert_eq!(t.blocked(&user("alice"), 1060), None, "window over");
        assert_eq!(t.blocked(&user("bob"), 1010), None, "per key");
        t.fail(&user("alice"), 1060);
        assert_eq!(
            t.blocked(&user("alice"), 1061),
            None,
            "a new window starts at 1"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_user_and_an_address_with_the_same_text_are_different_keys() {
        let mut t = Throttle::new(1, Duration::from_secs(60), 100);
        t.fail(&user("192.0.2.1"), 0);
        assert_eq!(t.blocked(&user("192.0.2.1"), 1), Some(59));
        assert_eq!(t.blocked(&addr("192.0.2.1"), 1), None);
    }

    #[test]
    fn addresses_drop_the_port_and_ipv6_keeps_its_64_prefix() {
        assert_eq!(
            ThrottleKey::address("192.0.2.1:5060"),
            Some(ThrottleKey::Address("192.0.2.1".into()))
        );
        assert_eq!(
            ThrottleKey::address("[2001:db8::1]:443"),
            Some(ThrottleKey::Address("2001:db8::/64".into()))
        );
        assert_eq!(
            ThrottleKey::address("2001:db8:0:0:ffff:1:2:3"),
            Some(ThrottleKey::Address("2001:db8::/64".into()))
        );
        assert_eq!(
            ThrottleKey::address("2001:db8:0:1::1"),
            Some(ThrottleKey::Address("2001:db8:0:1::/64".into())),
            "another /64"
        );
        assert_eq!(
            ThrottleKey::address("[::ffff:192.0.2.9]:1"),
            Some(ThrottleKey::Address("192.0.2.9".into())),
            "IPv4-mapped is IPv4"
        );
        assert_eq!(ThrottleKey::address(" "), None);
    }

    #[test]
    fn one_ipv6_host_cannot_escape_by_rotating_its_interface_id() {
        let mut t = Throttle::new(3, Duration::from_secs(60), 100);
        for i in 1..=3 {
            t.fail(&addr(&format!("[2001:db8:1:2::{i:x}]:5000")), 10);
        }
        assert_eq!(t.blocked(&addr("2001:db8:1:2:dead:beef:0:1"), 11), Some(59));
        assert_eq!(t.blocked(&addr("2001:db8:1:3::1"), 11), None);
    }

    #[test]
    fn long_user_names_are_not_keys() {
        assert_eq!(
            ThrottleKey::user(&"a".repeat(MAX_USERNAME_BYTES)),
            Some(user(&"a".repeat(MAX_USERNAME_BYTES)))
        );
        assert_eq!(ThrottleKey::user(&"a".repeat(MAX_USERNAME_BYTES + 1)), None);
    }

    #[test]
    fn expired_windows_are_pruned() {
        let mut t = Throttle::new(1, Duration::from_secs(60), 100);
        t.fail(&user("a"), 0);
        t.fail(&user("b"), 30);
        t.fail(&user("c"), 61);
        assert_eq!(t.len(), 2, "a's window ended at 60");
        assert_eq!(t.blocked(&user("b"), 62), Some(28));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_counting_window_and_keeps_counting() {
        let mut t = Throttle::new(2, Duration::from_secs(60), 3);
        t.fail(&user("blocked"), 0);
        t.fail(&user("blocked"), 1);
        t.fail(&user("old"), 5);
        t.fail(&user("new"), 10);
        // A fourth key at the cap, all windows live: the oldest *counting* window goes,
        // the older block stays.
        t.fail(&user("flood-1"), 20);
        assert_eq!(t.len(), 3);
        t.fail(&user("flood-1"), 21);
        assert_eq!(
            t.blocked(&user("flood-1"), 22),
            Some(58),
            "counted at the cap"
        );
        assert_eq!(t.blocked(&user("blocked"), 22), Some(38), "the block stays");
        t.fail(&user("new"), 22);
        assert_eq!(t.blocked(&user("new"), 22), Some(48), "new kept its count");
        t.fail(&user("old"), 23);
        assert_eq!(
            t.blocked(&user("old"), 23),
            None,
            "old was evicted: 1 failure"
        );

        // Only blocks left: the oldest block makes room.
        let mut t = Throttle::new(1, Duration::from_secs(60), 2);
        t.fail(&user("a"), 0);
        t.fail(&user("b"), 1);
        t.fail(&user("c"), 2);
        assert_eq!(t.len(), 2);
        assert_eq!(t.blocked(&user("a"), 3), None);
        assert_eq!(t.blocked(&user("b"), 3), Some(58));
        assert_eq!(t.blocked(&user("c"), 3), Some(59));
    }

    #[test]
    fn a_restarted_window_moves_to_the_back() {
        let mut t = Throttle::new(5, Duration::from_secs(60), 2);
        t.fail(&user("a"), 0);
        t.fail(&user("b"), 30);
        t.fail(&user("a"), 70); // a's window is over: restarts at 70; b's (30..90) lives
        t.fail(&user("c"), 71); // evicts b, now the oldest counting window
        assert_eq!(t.len(), 2);
        for _ in 0..4 {
            t.fail(&user("a"), 72);
        }
        assert_eq!(t.blocked(&user("a"), 72), Some(58), "a kept its new window");
        for _ in 0..5 {
            t.fail(&user("b"), 72);
        }
        assert_eq!(
            t.blocked(&user("c"), 72),
            None,
            "c (counting) made room for b"
        );
        assert_eq!(t.blocked(&user("a"), 72), Some(58), "a (blocking) stayed");
    }

    #[test]
    fn a_flood_of_new_keys_stays_within_the_cap_and_never_unblocks() {
        let mut t = Throttle::new(10, Duration::from_secs(60), 1000);
        for _ in 0..10 {
            t.fail(&user("alice"), 100);
        }
        for i in 0..10_000u64 {
            t.fail(&user(&format!("junk-{i}")), 100 + i / 1000);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(
            t.counting.len() + t.blocking.len(),
            1000,
            "the indexes match the table"
        );
        assert_eq!(t.blocked(&user("alice"), 110), Some(50));
    }
}
