//! HTTP Digest as SIP uses it: [RFC 3261 §22.4], [RFC 2617 §3.2.2] with `qop=auth`, and the
//! SHA-256 algorithm of [RFC 8760] (computed as in [RFC 7616 §3.4.1]). Sans-IO and pure,
//! except [`NonceCounts`], the per-instance nonce-count replay memory.
//!
//! [RFC 3261 §22.4]: https://www.rfc-editor.org/rfc/rfc3261#section-22.4
//! [RFC 2617 §3.2.2]: https://www.rfc-editor.org/rfc/rfc2617#section-3.2.2
//! [RFC 8760]: https://www.rfc-editor.org/rfc/rfc8760
//! [RFC 7616 §3.4.1]: https://www.rfc-editor.org/rfc/rfc7616#section-3.4.1

use md5::{Digest as _, Md5};
use sha2::Sha256;
use std::collections::{BTreeSet, HashMap};
use subtle::ConstantTimeEq as _;

/// A digest algorithm we speak. The `-sess` variants are not offered and not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617; the only one many WebRTC clients, JsSIP and SIP.js, implement).
    Md5,
    /// `SHA-256` (RFC 8760).
    Sha256,
}

impl Algorithm {
    /// The token as written in `algorithm=` parameters.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parses an `algorithm=` value, case-insensitively. An absent value means MD5
    /// (RFC 2617 §3.2.1).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() || s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lowercase hex of H(`data`).
    pub fn hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data).as_slice()),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data).as_slice()),
        }
    }

    /// Length of a hex digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err("empty digest algorithm".into());
        }
        Algorithm::parse(s)
            .ok_or_else(|| format!("unsupported digest algorithm {s:?} (expected SHA-256 or MD5)"))
    }
}

/// The parameters of an `Authorization: Digest` header, as the proxy carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestCredentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce` (one of ours, if honest).
    pub nonce: String,
    /// `uri` (the digest-uri the client hashed).
    pub uri: String,
    /// `response`, hex.
    pub response: String,
    /// `algorithm`; empty = MD5.
    pub algorithm: String,
    /// `qop`; we require `auth`.
    pub qop: String,
    /// `nc`, 8 hex digits.
    pub nc: String,
    /// `cnonce`.
    pub cnonce: String,
    /// `opaque`, echoed.
    pub opaque: String,
    /// The SIP method the response was computed for (A2 = method:uri).
    pub method: String,
}

/// Why credentials cannot be checked at all (they are answered with a fresh challenge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// `algorithm` names something we do not speak or did not offer.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// `qop` missing or not `auth` (we always offer `qop="auth"`).
    #[error("qop=auth required")]
    QopRequired,
    /// `nc` missing or not 8 hex digits (or zero).
    #[error("bad nonce count")]
    BadNonceCount,
    /// `cnonce` missing.
    #[error("cnonce required")]
    CnonceRequired,
    /// `realm` is not ours.
    #[error("wrong realm")]
    WrongRealm,
    /// `response` missing.
    #[error("response missing")]
    ResponseMissing,
}

/// Credentials that passed the syntax checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The algorithm the client used.
    pub algorithm: Algorithm,
    /// The nonce count.
    pub nc: u32,
}

/// Checks the shape of `c` against our offer (`realm`, `offered` algorithms, qop=auth).
pub fn check_syntax(
    c: &DigestCredentials,
    realm: &str,
    offered: &[Algorithm],
) -> Result<Checked, DigestError> {
    if c.realm != realm {
        return Err(DigestError::WrongRealm);
    }
    let algorithm = Algorithm::parse(&c.algorithm)
        .filter(|a| offered.contains(a))
        .ok_or(DigestError::UnsupportedAlgorithm)?;
    if !c.qop.trim().eq_ignore_ascii_case("auth") {
        return Err(DigestError::QopRequired);
    }
    let nc = parse_nc(&c.nc).ok_or(DigestError::BadNonceCount)?;
    if c.cnonce.is_empty() {
        return Err(DigestError::CnonceRequired);
    }
    if c.response.is_empty() {
        return Err(DigestError::ResponseMissing);
    }
    Ok(Checked { algorithm, nc })
}

/// `nc-value = 8LHEX` (RFC 2617 §3.2.2); zero is not a count.
pub fn parse_nc(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().filter(|n| *n > 0)
}

/// HA1 = H(username ":" realm ":" password), lowercase hex (RFC 2617 §3.2.2.2).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(format!("{username}:{realm}:{password}").as_bytes())
}

/// The expected `response` for qop=auth: H(HA1:nonce:nc:cnonce:qop:H(method:uri)).
pub fn expected_response(algorithm: Algorithm, ha1: &str, c: &DigestCredentials) -> String {
    let ha2 = algorithm.hex(format!("{}:{}", c.method, c.uri).as_bytes());
    algorithm.hex(
        format!(
            "{ha1}:{}:{}:{}:{}:{ha2}",
            c.nonce,
            c.nc,
            c.cnonce,
            c.qop.trim().to_ascii_lowercase()
        )
        .as_bytes(),
    )
}

/// Whether `c.response` is right for `ha1`, compared in constant time (hex case ignored).
pub fn verify(algorithm: Algorithm, ha1: &str, c: &DigestCredentials) -> bool {
    let expected = expected_response(algorithm, ha1, c);
    let given = c.response.trim().to_ascii_lowercase();
    expected.as_bytes().ct_eq(given.as_bytes()).into()
}

/// Entries [`NonceCounts`] keeps at most.
pub const DEFAULT_NONCE_COUNT_CAP: usize = 100_000;

/// Why a nonce count is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// `nc` is not above the highest count already accepted for this nonce.
    CountReused,
    /// The nonce's entry may have been evicted (memory cap), so its count is unknown.
    Forgotten,
}

/// Nonce-count replay protection (RFC 2617 §3.2.2 "nc"): per nonce, the highest count
/// accepted so far. Bounded: an entry is dropped once its nonce expires, and beyond `cap`
/// the oldest nonce is evicted and every nonce issued at or before it is refused (the client
/// gets a fresh nonce), so eviction can never re-open a replay.
///
/// This memory is per server instance. That is enough because the proxy routes all of one
/// user's requests to one instance (rendezvous hashing); a re-routed user's old nonce may
/// be accepted once more by the new instance with a higher count only if the old instance
/// never saw it, which a replayed request cannot arrange.
#[derive(Debug)]
pub struct NonceCounts {
    last: HashMap<String, (u32, u64)>,
    by_issue: BTreeSet<(u64, String)>,
    lifetime: u64,
    cap: usize,
    /// Nonces issued at or before this time and not remembered are refused.
    floor: Option<u64>,
}

impl NonceCounts {
    /// An empty memory for nonces living `lifetime` seconds, holding at most `cap` entries.
    pub fn new(lifetime: u64, cap: usize) -> Self {
        Self {
            last: HashMap::new(),
            by_issue: BTreeSet::new(),
            lifetime,
            cap: cap.max(1),
            floor: None,
        }
    }

    /// Accepts `nc` for `nonce` (issued at `issued`) if it is above every count accepted for
    /// it before; records it. Call only for credentials whose response verified.
    pub fn accept(&mut self, nonce: &str, issued: u64, nc: u32, now: u64) -> Result<(), Replay> {
        self.prune(now);
        if let Some((last, _)) = self.last.get_mut(nonce) {
            if nc <= *last {
                return Err(Replay::CountReused);
            }
            *last = nc;
            return Ok(());
        }
        if self.floor.is_some_and(|f| issued <= f) {
            return Err(Replay::Forgotten);
        }
        while self.last.len() >= self.cap {
            let Some((at, old)) = self.by_issue.pop_first() else {
                break;
            };
            self.last.remove(&old);
            self.floor = Some(self.floor.map_or(at, |f| f.max(at)));
            if issued <= at {
                return Err(Replay::Forgotten);
            }
        }
        self.last.insert(nonce.to_owned(), (nc, issued));
        self.by_issue.insert((issued, nonce.to_owned()));
        Ok(())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Drops the entries of nonces that expired by `now` (they can no longer authenticate).
    fn prune(&mut self, now: u64) {
        while let Some((issued, _)) = self.by_issue.first() {
            if issued.saturating_add(self.lifetime) >= now {
                break;
            }
            if let Some((_, nonce)) = self.by_issue.pop_first() {
                self.last.remove(&nonce);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5.
    fn rfc2617() -> DigestCredentials {
        DigestCredentials {
            username: "Mufasa".into(),
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            uri: "/dir/index.html".into(),
            response: "6629fae49393a05397450978507c4ef1".into(),
            algorithm: String::new(),
            qop: "auth".into(),
            nc: "00000001".into(),
            cnonce: "0a4f113b".into(),
            opaque: "5ccc069c403ebaf9f0171e9517f40e41".into(),
            method: "GET".into(),
        }
    }

    /// RFC 7616 §3.9.1.
    fn rfc7616(algorithm: &str, response: &str) -> DigestCredentials {
        DigestCredentials {
            username: "Mufasa".into(),
            realm: "http-auth@example.org".into(),
            nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
            uri: "/dir/index.html".into(),
            response: response.into(),
            algorithm: algorithm.into(),
            qop: "auth".into(),
            nc: "00000001".into(),
            cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
            opaque: "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS".into(),
            method: "GET".into(),
        }
    }

    #[test]
    fn rfc2617_md5_vector() {
        let c = rfc2617();
        let ha1 = ha1(Algorithm::Md5, &c.username, &c.realm, "Circle Of Life");
        assert_eq!(
            expected_response(Algorithm::Md5, &ha1, &c),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(verify(Algorithm::Md5, &ha1, &c));
        let mut upper = c.clone();
        upper.response = upper.response.to_ascii_uppercase();
        assert!(verify(Algorithm::Md5, &ha1, &upper), "hex case is ignored");
        let wrong = super::ha1(Algorithm::Md5, &c.username, &c.realm, "circle of life");
        assert!(!verify(Algorithm::Md5, &wrong, &c));
    }

    #[test]
    fn rfc7616_sha256_and_md5_vectors() {
        let c = rfc7616(
            "SHA-256",
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
        );
        let h = ha1(Algorithm::Sha256, &c.username, &c.realm, "Circle of Life");
        assert_eq!(h.len(), Algorithm::Sha256.hex_len());
        assert!(verify(Algorithm::Sha256, &h, &c));

        let c = rfc7616("MD5", "8ca523f5e9506fed4657c9700eebdbec");
        let h = ha1(Algorithm::Md5, &c.username, &c.realm, "Circle of Life");
        assert!(verify(Algorithm::Md5, &h, &c));
        assert!(!verify(Algorithm::Sha256, &h, &c), "algorithm matters");
    }

    #[test]
    fn syntax_requires_our_realm_offer_qop_nc_and_cnonce() {
        let offered = [Algorithm::Sha256, Algorithm::Md5];
        let c = rfc2617();
        assert_eq!(
            check_syntax(&c, "testrealm@host.com", &offered),
            Ok(Checked {
                algorithm: Algorithm::Md5,
                nc: 1
            })
        );
        assert_eq!(
            check_syntax(&c, "example.com", &offered),
            Err(DigestError::WrongRealm)
        );
        assert_eq!(
            check_syntax(&c, "testrealm@host.com", &[Algorithm::Sha256]),
            Err(DigestError::UnsupportedAlgorithm),
            "MD5 not offered"
        );
        type Edit = fn(&mut DigestCredentials);
        let cases: [(Edit, DigestError); 6] = [
            (|c| c.qop.clear(), DigestError::QopRequired),
            (|c| c.qop = "auth-int".into(), DigestError::QopRequired),
            (|c| c.nc.clear(), DigestError::BadNonceCount),
            (|c| c.nc = "00000000".into(), DigestError::BadNonceCount),
            (|c| c.cnonce.clear(), DigestError::CnonceRequired),
            (
                |c| c.algorithm = "MD5-sess".into(),
                DigestError::UnsupportedAlgorithm,
            ),
        ];
        for (edit, want) in cases {
            let mut c = rfc2617();
            edit(&mut c);
            assert_eq!(check_syntax(&c, "testrealm@host.com", &offered), Err(want));
        }
    }

    #[test]
    fn algorithm_names_parse_case_insensitively() {
        assert_eq!(Algorithm::parse(""), Some(Algorithm::Md5));
        assert_eq!(Algorithm::parse("md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::parse("SHA-512-256"), None);
        assert!("".parse::<Algorithm>().is_err());
        assert_eq!("SHA-256".parse::<Algorithm>(), Ok(Algorithm::Sha256));
    }

    #[test]
    fn nonce_counts_must_increase() {
        let mut m = NonceCounts::new(300, 10);
        assert_eq!(m.accept("n1", 1000, 1, 1000), Ok(()));
        assert_eq!(m.accept("n1", 1000, 1, 1001), Err(Replay::CountReused));
        assert_eq!(m.accept("n1", 1000, 3, 1001), Ok(()));
        assert_eq!(m.accept("n1", 1000, 2, 1001), Err(Replay::CountReused));
        assert_eq!(
            m.accept("n2", 1000, 7, 1001),
            Ok(()),
            "first use of another nonce"
        );
    }

    #[test]
    fn expired_nonces_are_forgotten() {
        let mut m = NonceCounts::new(300, 10);
        m.accept("n1", 1000, 1, 1000).unwrap();
        m.accept("n2", 1200, 1, 1200).unwrap();
        m.accept("n3", 1400, 1, 1400).unwrap();
        assert_eq!(m.len(), 2, "n1 expired at 1300 and was dropped");
    }

    #[test]
    fn eviction_at_the_cap_refuses_older_nonces() {
        let mut m = NonceCounts::new(300, 2);
        m.accept("a", 100, 1, 100).unwrap();
        m.accept("b", 101, 1, 101).unwrap();
        m.accept("c", 102, 1, 102).unwrap(); // evicts a
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.accept("a", 100, 2, 103),
            Err(Replay::Forgotten),
            "an evicted nonce cannot be replayed"
        );
        assert_eq!(m.accept("b", 101, 2, 103), Ok(()), "b is still remembered");
        assert_eq!(m.accept("d", 103, 1, 103), Ok(()));
    }
}
