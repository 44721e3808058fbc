//! Rendezvous (highest-random-weight) hashing: each subscriber maps to the server with the
//! highest hash of (server, subscriber). Adding or removing a server moves only the
//! subscribers of that server, and needs no ring state.

use std::hash::{DefaultHasher, Hash, Hasher};

/// The candidate with the highest weight for `key`.
pub fn pick<'a, T>(key: &str, candidates: &[&'a T], name: impl Fn(&T) -> &str) -> Option<&'a T> {
    candidates
        .iter()
        .max_by_key(|c| weight(name(c), key))
        .copied()
}

fn weight(server: &str, key: &str) -> u64 {
    // DefaultHasher::new() uses fixed keys: the same on every proxy instance and run.
    let mut h = DefaultHasher::new();
    server.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

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
