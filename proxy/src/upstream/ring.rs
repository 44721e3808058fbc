//! Rendezvous (highest-random-weight) hashing: each subscriber maps to the server with the
//! highest hash of (server, subscriber). Adding or removing a server moves only the
//! subscribers of that server, and needs no ring state.
//!
//! The weight is a named, fixed function — the first 8 bytes (big-endian) of
//! SHA-256(server ‖ 0x00 ‖ subscriber) — so every proxy, whatever Rust release built it,
//! sends a subscriber to the same server (`std`'s `DefaultHasher` promises no stable output).

use sha2::{Digest, Sha256};

/// The candidate with the highest weight for `key`.
pub fn pick<'a, T>(key: &str, candidates: &[&'a T], name: impl Fn(&T) -> &str) -> Option<&'a T> {
    candidates
        .iter()
        .max_by_key(|c| weight(name(c), key))
        .copied()
}

/// SHA-256(server ‖ 0x00 ‖ key), first 8 bytes big-endian (the NUL keeps `("ab", "c")` and
/// `("a", "bc")` apart: neither a URL nor a SIP URI holds one).
fn weight(server: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(server.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_is_the_documented_function() {
        // Known answers (Python: int.from_bytes(sha256(s + b"\0" + k).digest()[:8], "big")):
        // a change here moves users between servers on a rolling upgrade.
        assert_eq!(
            weight("http://a", "sip:alice@example.com"),
            17_984_775_319_806_967_120
        );
        assert_eq!(
            weight("http://10.0.0.7:50051", "sip:bob@example.com"),
            1_214_760_268_824_125_534
        );
    }

    #[test]
    fn stable_and_moves_only_the_removed_servers_keys() {
        let a = "http://a".to_owned();
        let b = "http://b".to_owned();
        let c = "http://c".to_owned();
        let all = [&a, &b, &c];
        let two = [&a, &b];
        let mut moved = 0;
        let mut per_server = [0usize; 3];
        for i in 0..3000 {
            let key = format!("sip:user{i}@example.com");
            let with_c = pick(&key, &all, |s| s.as_str()).unwrap();
            assert_eq!(with_c, pick(&key, &all, |s| s.as_str()).unwrap(), "stable");
            let without_c = pick(&key, &two, |s| s.as_str()).unwrap();
            if *with_c != c {
                assert_eq!(with_c, without_c, "only c's keys may move");
            } else {
                moved += 1;
            }
            per_server[all.iter().position(|s| *s == with_c).unwrap()] += 1;
        }
        assert!(
            per_server.iter().all(|&n| n > 800),
            "roughly even: {per_server:?}"
        );
        assert_eq!(moved, per_server[2]);
        assert!(pick::<String>("k", &[], |s| s.as_str()).is_none());
    }
}
