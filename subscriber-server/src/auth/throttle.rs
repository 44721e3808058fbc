//! Failed sign-in throttling, sans-IO: failures are counted per key (a user name, a client
//! address) in a fixed window. Once a key has `max_failures` in its window, further attempts
//! with it are refused without verifying until the window ends; the answer carries the
//! seconds left (SIP `Retry-After`, RFC 3261 §20.33).
//!
//! Per instance, like the nonce counts: one user's requests reach one instance; an address
//! spread over several instances is throttled on each. Memory is bounded: expired windows
//! are pruned, and at the cap new keys are not tracked (existing blocks stay in force).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Default failures allowed per window.
pub const DEFAULT_MAX_FAILURES: u32 = 10;
/// Default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked at most.
pub const DEFAULT_CAP: usize = 100_000;

/// What failures are counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    /// A digest user name.
    User(String),
    /// A client IP address (the port is dropped: it changes with every connection).
    Address(String),
}

impl ThrottleKey {
    /// The key of a client address given as `ip`, `ip:port` or `[v6]:port`; `None` if empty.
    pub fn address(addr: &str) -> Option<Self> {
        let addr = addr.trim();
        if addr.is_empty() {
            return None;
        }
        let ip = addr
            .parse::<SocketAddr>()
            .map(|s| s.ip())
            .or_else(|_| addr.parse::<IpAddr>())
            .map(|ip| ip.to_string())
            .unwrap_or_else(|_| addr.to_owned());
        Some(ThrottleKey::Address(ip))
    }
}

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
    entries: HashMap<ThrottleKey, Window>,
}

impl Throttle {
    /// Allows `max_failures` per `window` per key; tracks at most `cap` keys.
    pub fn new(max_failures: u32, window: Duration, cap: usize) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window: window.as_secs().max(1),
            cap: cap.max(1),
            entries: HashMap::new(),
        }
    }

    /// Seconds until `key` may try again, or `None` if it may try now.
    pub fn blocked(&self, key: &ThrottleKey, now: u64) -> Option<u64> {
        let w = self.entries.get(key)?;
        let end = w.start.saturating_add(self.window);
        (now < end && w.failures >= self.max_failures).then(|| (end - now).max(1))
    }

    /// Counts a failed attempt by `key` at `now`.
    pub fn fail(&mut self, key: ThrottleKey, now: u64) {
        let window = self.window;
        if let Some(w) = self.entries.get_mut(&key) {
            if now >= w.start.saturating_add(window) {
                *w = Window {
                    start: now,
                    failures: 1,
                };
            } else {
                w.failures = w.failures.saturating_add(1);
            }
            return;
        }
        if self.entries.len() >= self.cap {
            self.entries
                .retain(|_, w| now < w.start.saturating_add(window));
            if self.entries.len() >= self.cap {
                return;
            }
        }
        self.entries.insert(
            key,
            Window {
                start: now,
                failures: 1,
            },
        );
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

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let mut t = Throttle::new(3, Duration::from_secs(60), 100);
        for i in 0..3 {
            assert_eq!(t.blocked(&user("alice"), 1000 + i), None);
            t.fail(user("alice"), 1000 + i);
        }
        assert_eq!(t.blocked(&user("alice"), 1010), Some(50));
        assert_eq!(t.blocked(&user("alice"), 1059), Some(1));
        assert_eq!(t.blocked(&user("alice"), 1060), None, "window over");
        assert_eq!(t.blocked(&user("bob"), 1010), None, "per key");
        t.fail(user("alice"), 1060);
        assert_eq!(
            t.blocked(&user("alice"), 1061),
            None,
            "a new window starts at 1"
        );
    }

    #[test]
    fn addresses_drop_the_port() {
        assert_eq!(
            ThrottleKey::address("192.0.2.1:5060"),
            Some(ThrottleKey::Address("192.0.2.1".into()))
        );
        assert_eq!(
            ThrottleKey::address("[2001:db8::1]:443"),
            Some(ThrottleKey::Address("2001:db8::1".into()))
        );
        assert_eq!(
            ThrottleKey::address("2001:db8::1"),
            Some(ThrottleKey::Address("2001:db8::1".into()))
        );
        assert_eq!(ThrottleKey::address(" "), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut t = Throttle::new(1, Duration::from_secs(60), 2);
        t.fail(user("a"), 0);
        t.fail(user("b"), 0);
        t.fail(user("c"), 10);
        assert_eq!(t.len(), 2, "at the cap, live windows are kept");
        assert_eq!(t.blocked(&user("c"), 10), None);
        t.fail(user("c"), 61);
        assert_eq!(t.len(), 1, "expired windows pruned to make room");
        assert_eq!(t.blocked(&user("c"), 62), Some(59));
    }
}
