//! Stateless digest nonces (RFC 7616 §3.3 suggests "time-stamp H(time-stamp ":" ETag ":"
//! secret-data)"; RFC 3261 §22.4 leaves the format to the server).
//!
//! A nonce is `base64url(timestamp || salt || mac)` without padding, where `timestamp` is the
//! issue time in unix seconds as 8 big-endian bytes, `salt` 8 random bytes, and `mac` the
//! first 16 bytes of HMAC-SHA256(secret, timestamp || salt || realm). Any instance that
//! shares the secret verifies any other instance's nonces without shared state; the issue
//! time tells freshness. The salt makes every challenge's nonce unique: without it, all
//! clients challenged in the same second would share one nonce, and the per-nonce count
//! replay check ([`super::digest::NonceCounts`]) would refuse all but the first of them.
//! Sans-IO: `now` (unix seconds) is passed in; the salt is the only randomness.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use std::time::Duration;

/// Bytes of the MAC kept in a nonce (128 bits).
const MAC_LEN: usize = 16;
/// Bytes of random salt.
const SALT_LEN: usize = 8;
/// Bytes of the stamped part (timestamp and salt).
const STAMP_LEN: usize = 8 + SALT_LEN;
/// Bytes of a decoded nonce.
const NONCE_LEN: usize = STAMP_LEN + MAC_LEN;

/// What a presented nonce is worth at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by us (or a peer with the same secret) within the lifetime.
    Fresh {
        /// Issue time, unix seconds.
        issued: u64,
    },
    /// Ours, but older than the lifetime: a correct response earns `stale=true`.
    Expired {
        /// Issue time, unix seconds.
        issued: u64,
    },
    /// Not ours: wrong MAC, wrong realm, or not a nonce at all.
    Invalid,
}

/// Issues and checks nonces for one realm under one secret.
#[derive(Clone)]
pub struct NonceKey {
    mac: Hmac<Sha256>,
    realm: String,
    lifetime: u64,
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceKey")
            .field("realm", &self.realm)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl NonceKey {
    /// A key over `secret` (any length; HMAC hashes long keys) for `realm`; nonces older
    /// than `lifetime` are [`NonceCheck::Expired`].
    pub fn new(secret: &[u8], realm: &str, lifetime: Duration) -> Self {
        // HMAC accepts keys of every length; the error arm cannot happen.
        let mac = Hmac::<Sha256>::new_from_slice(secret)
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        Self {
            mac,
            realm: realm.to_owned(),
            lifetime: lifetime.as_secs().max(1),
        }
    }

    /// The lifetime in seconds.
    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    /// A new nonce stamped `now`.
    pub fn issue(&self, now: u64) -> String {
        let mut salt = [0u8; SALT_LEN];
        rand::fill(&mut salt[..]);
        self.issue_salted(now, salt)
    }

    fn issue_salted(&self, now: u64, salt: [u8; SALT_LEN]) -> String {
        let mut raw = [0u8; NONCE_LEN];
        raw[..8].copy_from_slice(&now.to_be_bytes());
        raw[8..STAMP_LEN].copy_from_slice(&salt);
        let tag = self.tag(&raw[..STAMP_LEN]).finalize().into_bytes();
        raw[STAMP_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `nonce` at `now`. The MAC is compared in constant time.
    pub fn check(&self, nonce: &str, now: u64) -> NonceCheck {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce.as_bytes()) else {
            return NonceCheck::Invalid;
        };
        if raw.len() != NONCE_LEN {
            return NonceCheck::Invalid;
        }
        let (stamp, mac) = raw.split_at(STAMP_LEN);
        if self.tag(stamp).verify_truncated_left(mac).is_err() {
            return NonceCheck::Invalid;
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(&stamp[..8]);
        let issued = u64::from_be_bytes(be);
        // A peer instance whose clock runs a little ahead may stamp a nonce "in the future";
        // within one lifetime of skew it is still fresh.
        let age_ok = now.saturating_sub(issued) <= self.lifetime;
        let skew_ok = issued.saturating_sub(now) <= self.lifetime;
        if age_ok && skew_ok {
            NonceCheck::Fresh { issued }
        } else {
            NonceCheck::Expired { issued }
        }
    }

    /// An `opaque` value (RFC 7616 §3.3) that every instance sharing the secret derives alike.
    pub fn opaque(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"opaque\0");
        mac.update(self.realm.as_bytes());
        let tag = mac.finalize().into_bytes();
        URL_SAFE_NO_PAD.encode(&tag[..12])
    }

    fn tag(&self, stamp: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(stamp);
        mac.update(self.realm.as_bytes());
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    fn key() -> NonceKey {
        NonceKey::new(b"shared secret", "example.com", Duration::from_secs(300))
    }

    #[test]
    fn fresh_until_the_lifetime_then_expired() {
        let k = key();
        let n = k.issue(T0);
        assert_eq!(n.len(), 43, "32 bytes in unpadded base64url");
        assert_ne!(n, k.issue(T0), "unique even within one second");
        assert_eq!(k.check(&n, T0), NonceCheck::Fresh { issued: T0 });
        assert_eq!(k.check(&n, T0 + 300), NonceCheck::Fresh { issued: T0 });
        assert_eq!(k.check(&n, T0 + 301), NonceCheck::Expired { issued: T0 });
        assert_eq!(
            k.check(&n, T0 - 10),
            NonceCheck::Fresh { issued: T0 },
            "small clock skew between instances"
        );
    }

    #[test]
    fn another_instance_with_the_same_secret_accepts_it() {
        let n = key().issue_salted(T0, [7; SALT_LEN]);
        assert_eq!(
            n,
            key().issue_salted(T0, [7; SALT_LEN]),
            "deterministic given the salt"
        );
        assert_eq!(key().check(&n, T0 + 1), NonceCheck::Fresh { issued: T0 });
        assert_eq!(key().opaque(), key().opaque());
    }

    #[test]
    fn wrong_secret_realm_or_tampering_is_invalid() {
        let n = key().issue(T0);
        let other_secret = NonceKey::new(b"other", "example.com", Duration::from_secs(300));
        let other_realm = NonceKey::new(b"shared secret", "example.org", Duration::from_secs(300));
        assert_eq!(other_secret.check(&n, T0), NonceCheck::Invalid);
        assert_eq!(other_realm.check(&n, T0), NonceCheck::Invalid);

        // Move the timestamp forward: the MAC no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
        raw[7] ^= 1;
        assert_eq!(
            key().check(&URL_SAFE_NO_PAD.encode(&raw), T0),
            NonceCheck::Invalid
        );

        for junk in ["", "not base64!", "AAAA", &n[..42]] {
            assert_eq!(key().check(junk, T0), NonceCheck::Invalid, "{junk:?}");
        }
    }
}
