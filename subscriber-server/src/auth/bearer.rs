//! Bearer tokens for SIP ([RFC 8898]): JSON Web Tokens ([RFC 7519]) verified with
//! `jsonwebtoken`. Keys come from an HS256 secret, one PEM public key (RSA, EC or Ed25519,
//! detected), or a JWKS file ([RFC 7517 §5], the key chosen by the token's `kid`).
//!
//! Time claims are checked here against an explicit `now` (unix seconds), not the library's
//! clock, so tests need no sleeps: `exp` is required, `nbf` honoured when present, both with
//! a leeway. `iss` and `aud` are required and checked when configured.
//!
//! [RFC 8898]: https://www.rfc-editor.org/rfc/rfc8898
//! [RFC 7519]: https://www.rfc-editor.org/rfc/rfc7519
//! [RFC 7517 §5]: https://www.rfc-editor.org/rfc/rfc7517#section-5

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::time::Duration;

/// Default allowance for clock skew on `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default claim naming the user.
pub const DEFAULT_USER_CLAIM: &str = "sub";

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM RSA, EC (P-256/P-384) or Ed25519 public key.
    #[error("not a PEM RSA, EC or Ed25519 public key")]
    UnrecognisedPem,
    /// The JWKS is not valid JSON of the RFC 7517 shape.
    #[error("invalid JWKS: {0}")]
    Jwks(String),
    /// The JWKS holds a symmetric key (`"kty": "oct"`). A JWKS is usually published, and
    /// anyone holding an HMAC key can mint tokens; use --jwt-secret-file for a secret.
    #[error(
        "the JWKS holds a symmetric (\"kty\": \"oct\") key; put shared secrets in --jwt-secret-file"
    )]
    SymmetricKey,
    /// The JWKS holds no signature key we can use.
    #[error("the JWKS holds no usable signature key")]
    NoUsableKey,
    /// The HS256 secret is empty.
    #[error("empty secret")]
    EmptySecret,
}

/// Why a token was refused. Never shown to clients (they get a fresh challenge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// Not a JWT, or undecodable claims.
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` does not fit the key.
    #[error("algorithm not accepted")]
    WrongAlgorithm,
    /// No key with the token's `kid`.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud` or the user claim) is missing or not usable.
    #[error("missing claim {0}")]
    MissingClaim(String),
    /// Signing failed (issuing only).
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// What the verifier checks besides the signature.
#[derive(Debug, Clone)]
pub struct BearerPolicy {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required member of `aud`, when set. When unset, `aud` is not checked.
    pub audience: Option<String>,
    /// The claim naming the user (default `sub`).
    pub user_claim: String,
    /// Clock-skew allowance on `exp`/`nbf`, seconds.
    pub leeway: u64,
    /// Domain for bare user names: `alice` becomes `sip:alice@<domain>`.
    pub sip_domain: String,
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Verifies bearer tokens; holds the keys and the [`BearerPolicy`].
#[derive(Debug, Clone)]
pub struct BearerVerifier {
    keys: Vec<Key>,
    /// A JWKS: select by `kid`.
    by_kid: bool,
    policy: BearerPolicy,
}

/// Makes sure jsonwebtoken has its crypto provider (aws-lc-rs), even if another crate in the
/// build enables a second one. Installing twice is harmless.
fn install_provider() {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

impl BearerVerifier {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8], policy: BearerPolicy) -> Result<Self, KeyError> {
        install_provider();
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self {
            keys: vec![Key {
                kid: None,
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(secret),
            }],
            by_kid: false,
            policy,
        })
    }

    /// One PEM public key; EC keys verify ES256/ES384, RSA keys RS256/384/512 and PS256/384/512,
    /// Ed25519 keys EdDSA.
    pub fn public_key_pem(pem: &[u8], policy: BearerPolicy) -> Result<Self, KeyError> {
        install_provider();
        let key = if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            k
        } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            k
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            k
        } else {
            return Err(KeyError::UnrecognisedPem);
        };
        Ok(Self {
            keys: vec![Key {
                kid: None,
                algorithms: key.family().algorithms().to_vec(),
                key,
            }],
            by_kid: false,
            policy,
        })
    }

    /// A JWKS document (`{"keys": [...]}`) of public keys. A symmetric (`oct`) key refuses
    /// the whole file ([`KeyError::SymmetricKey`]); keys marked `"use": "enc"` are skipped;
    /// each key's algorithm is its `alg`, or follows from its type and curve.
    pub fn jwks(json: &[u8], policy: BearerPolicy) -> Result<Self, KeyError> {
        install_provider();
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(KeyError::SymmetricKey);
            }
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(a) => Algorithm::try_from(a).ok(),
                None => match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
                    AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        EllipticCurve::P256 => Some(Algorithm::ES256),
                        EllipticCurve::P384 => Some(Algorithm::ES384),
                        _ => None,
                    },
                    AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
                    _ => None,
                },
            };
            let (Some(alg), Ok(key)) = (alg, DecodingKey::from_jwk(jwk)) else {
                continue;
            };
            if key.family() != alg.family() {
                continue;
            }
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                algorithms: vec![alg],
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoUsableKey);
        }
        Ok(Self {
            keys,
            by_kid: true,
            policy,
        })
    }

    /// Verifies `token` at `now`; returns the address of record it names.
    pub fn verify(&self, token: &str, now: u64) -> Result<String, BearerError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| BearerError::Malformed)?;
        let key = self.select(header.kid.as_deref())?;
        if !key.algorithms.contains(&header.alg) {
            return Err(BearerError::WrongAlgorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = key.algorithms.clone();
        // Time is checked below against `now`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp"];
        match &self.policy.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.policy.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;

        let leeway = self.policy.leeway;
        let exp =
            time_claim(&claims, "exp")?.ok_or_else(|| BearerError::MissingClaim("exp".into()))?;
        if now > exp.saturating_add(leeway) {
            return Err(BearerError::Expired);
        }
        if let Some(nbf) = time_claim(&claims, "nbf")?
            && nbf > now.saturating_add(leeway)
        {
            return Err(BearerError::NotYetValid);
        }
        let user = claims
            .get(&self.policy.user_claim)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| BearerError::MissingClaim(self.policy.user_claim.clone()))?;
        Ok(address_of_record(user, &self.policy.sip_domain))
    }

    fn select(&self, kid: Option<&str>) -> Result<&Key, BearerError> {
        if !self.by_kid {
            return self.keys.first().ok_or(BearerError::UnknownKey);
        }
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .ok_or(BearerError::UnknownKey),
            // A token without `kid` is accepted only when the set leaves no choice.
            None if self.keys.len() == 1 => self.keys.first().ok_or(BearerError::UnknownKey),
            None => Err(BearerError::UnknownKey),
        }
    }
}

/// A user claim as an address of record: `sip:`/`sips:` URIs as they are, `alice@host` as
/// `sip:alice@host`, a bare `alice` as `sip:alice@<sip_domain>`.
pub fn address_of_record(user: &str, sip_domain: &str) -> String {
    let lower = user.get(..5).unwrap_or("").to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") {
        user.to_owned()
    } else if user.contains('@') {
        format!("sip:{user}")
    } else {
        format!("sip:{user}@{sip_domain}")
    }
}

/// A numeric date claim (RFC 7519 §2 NumericDate; fractions are truncated).
fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, BearerError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| BearerError::MissingClaim(name.to_owned())),
    }
}

fn map_error(kind: &ErrorKind) -> BearerError {
    match kind {
        ErrorKind::InvalidSignature => BearerError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => BearerError::WrongAlgorithm,
        ErrorKind::InvalidIssuer => BearerError::WrongIssuer,
        ErrorKind::InvalidAudience => BearerError::WrongAudience,
        ErrorKind::ExpiredSignature => BearerError::Expired,
        ErrorKind::ImmatureSignature => BearerError::NotYetValid,
        ErrorKind::MissingRequiredClaim(c) => BearerError::MissingClaim(c.clone()),
        _ => BearerError::Malformed,
    }
}

/// What `conflist-server token issue` puts in a token.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// `sub`: a bare user name or an address of record.
    pub subject: &'a str,
    /// `iat`, unix seconds.
    pub now: u64,
    /// `exp` = `now + ttl`.
    pub ttl: Duration,
    /// `iss`, when configured.
    pub issuer: Option<&'a str>,
    /// `aud`, when configured.
    pub audience: Option<&'a str>,
}

/// Signs an HS256 token for `req` with `secret`.
pub fn issue_hs256(secret: &[u8], req: &TokenRequest<'_>) -> Result<String, BearerError> {
    install_provider();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(req.subject));
    claims.insert("iat".into(), Value::from(req.now));
    claims.insert(
        "exp".into(),
        Value::from(req.now.saturating_add(req.ttl.as_secs())),
    );
    if let Some(iss) = req.issuer {
        claims.insert("iss".into(), Value::from(iss));
    }
    if let Some(aud) = req.audience {
        claims.insert("aud".into(), Value::from(aud));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| BearerError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;

    const NOW: u64 = 1_700_000_000;
    const SECRET: &[u8] = b"test-secret-of-reasonable-length";
    const ES256_PRIVATE: &str = include_str!("testdata/es256-private.pem");
    const ES256_PUBLIC: &str = include_str!("testdata/es256-public.pem");
    const RS256_PRIVATE: &str = include_str!("testdata/rs256-private.pem");
    const RS256_PUBLIC: &str = include_str!("testdata/rs256-public.pem");

    fn policy() -> BearerPolicy {
        BearerPolicy {
            issuer: None,
            audience: None,
            user_claim: DEFAULT_USER_CLAIM.into(),
            leeway: 30,
            sip_domain: "example.com".into(),
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        install_provider();
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            None,
            claims,
        )
    }

    #[test]
    fn valid_hs256_token_names_the_user() {
        let v = BearerVerifier::hs256(SECRET, policy()).unwrap();
        let t = hs(&serde_json::json!({"sub": "alice", "exp": NOW + 60}));
        assert_eq!(v.verify(&t, NOW).unwrap(), "sip:alice@example.com");
        let t = hs(&serde_json::json!({"sub": "sip:bob@example.org", "exp": NOW + 60}));
        assert_eq!(v.verify(&t, NOW).unwrap(), "sip:bob@example.org");
    }

    #[test]
    fn issued_tokens_verify() {
        let mut p = policy();
        p.issuer = Some("https://idp.example.com".into());
        p.audience = Some("conflist".into());
        let v = BearerVerifier::hs256(SECRET, p).unwrap();
        let t = issue_hs256(
            SECRET,
            &TokenRequest {
                subject: "carol",
                now: NOW,
                ttl: Duration::from_secs(3600),
                issuer: Some("https://idp.example.com"),
                audience: Some("conflist"),
            },
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW + 3599).unwrap(), "sip:carol@example.com");
        assert_eq!(v.verify(&t, NOW + 3631), Err(BearerError::Expired));
    }

    #[test]
    fn expiry_and_not_before_honour_the_leeway() {
        let v = BearerVerifier::hs256(SECRET, policy()).unwrap();
        let t = hs(&serde_json::json!({"sub": "alice", "exp": NOW}));
        assert!(v.verify(&t, NOW + 30).is_ok(), "within leeway");
        assert_eq!(v.verify(&t, NOW + 31), Err(BearerError::Expired));

        let t = hs(&serde_json::json!({"sub": "alice", "exp": NOW + 600, "nbf": NOW + 100}));
        assert_eq!(v.verify(&t, NOW), Err(BearerError::NotYetValid));
        assert!(v.verify(&t, NOW + 70).is_ok(), "within leeway of nbf");

        let t = hs(&serde_json::json!({"sub": "alice"}));
        assert_eq!(
            v.verify(&t, NOW),
            Err(BearerError::MissingClaim("exp".into()))
        );
    }

    #[test]
    fn tampered_or_foreign_signatures_are_refused() {
        let v = BearerVerifier::hs256(SECRET, policy()).unwrap();
        let t = hs(&serde_json::json!({"sub": "alice", "exp": NOW + 60}));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged_claims = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"sub":"mallory","exp":1700000060}"#,
        );
        parts[1] = &forged_claims;
        assert_eq!(
            v.verify(&parts.join("."), NOW),
            Err(BearerError::BadSignature)
        );

        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another secret"),
            None,
            &serde_json::json!({"sub": "alice", "exp": NOW + 60}),
        );
        assert_eq!(v.verify(&other, NOW), Err(BearerError::BadSignature));
        assert_eq!(v.verify("not a token", NOW), Err(BearerError::Malformed));
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let mut p = policy();
        p.issuer = Some("idp".into());
        p.audience = Some("conflist".into());
        let v = BearerVerifier::hs256(SECRET, p).unwrap();
        let ok = hs(
            &serde_json::json!({"sub": "a", "exp": NOW + 60, "iss": "idp", "aud": ["x", "conflist"]}),
        );
        assert!(v.verify(&ok, NOW).is_ok());
        let t = hs(&serde_json::json!({"sub": "a", "exp": NOW + 60, "iss": "idp", "aud": "other"}));
        assert_eq!(v.verify(&t, NOW), Err(BearerError::WrongAudience));
        let t =
            hs(&serde_json::json!({"sub": "a", "exp": NOW + 60, "iss": "evil", "aud": "conflist"}));
        assert_eq!(v.verify(&t, NOW), Err(BearerError::WrongIssuer));
        let t = hs(&serde_json::json!({"sub": "a", "exp": NOW + 60, "aud": "conflist"}));
        assert_eq!(
            v.verify(&t, NOW),
            Err(BearerError::MissingClaim("iss".into()))
        );
    }

    #[test]
    fn configurable_user_claim() {
        let mut p = policy();
        p.user_claim = "preferred_username".into();
        let v = BearerVerifier::hs256(SECRET, p).unwrap();
        let t = hs(
            &serde_json::json!({"sub": "uuid-1", "preferred_username": "dave@example.com", "exp": NOW + 60}),
        );
        assert_eq!(v.verify(&t, NOW).unwrap(), "sip:dave@example.com");
        let t = hs(&serde_json::json!({"sub": "uuid-1", "exp": NOW + 60}));
        assert_eq!(
            v.verify(&t, NOW),
            Err(BearerError::MissingClaim("preferred_username".into()))
        );
    }

    #[test]
    fn es256_and_rs256_public_keys_are_detected() {
        let claims = serde_json::json!({"sub": "alice", "exp": NOW + 60});
        let es = BearerVerifier::public_key_pem(ES256_PUBLIC.as_bytes(), policy()).unwrap();
        let es_key = EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap();
        let t = sign(Algorithm::ES256, &es_key, None, &claims);
        assert_eq!(es.verify(&t, NOW).unwrap(), "sip:alice@example.com");

        let rs = BearerVerifier::public_key_pem(RS256_PUBLIC.as_bytes(), policy()).unwrap();
        let rs_key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
        let t_rs = sign(Algorithm::RS256, &rs_key, None, &claims);
        assert_eq!(rs.verify(&t_rs, NOW).unwrap(), "sip:alice@example.com");

        assert_eq!(
            es.verify(&t_rs, NOW),
            Err(BearerError::WrongAlgorithm),
            "wrong key"
        );
        // An HS256 token "signed" with the public key must not pass (algorithm confusion).
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
            None,
            &claims,
        );
        assert_eq!(rs.verify(&confused, NOW), Err(BearerError::WrongAlgorithm));
        assert!(matches!(
            BearerVerifier::public_key_pem(b"garbage", policy()),
            Err(KeyError::UnrecognisedPem)
        ));
    }

    #[test]
    fn jwks_selects_by_kid() {
        install_provider();
        let es_key = EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap();
        let rs_key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
        let mut es_jwk = Jwk::from_encoding_key(&es_key, Algorithm::ES256).unwrap();
        es_jwk.common.key_id = Some("ec-1".into());
        let mut rs_jwk = Jwk::from_encoding_key(&rs_key, Algorithm::RS256).unwrap();
        rs_jwk.common.key_id = Some("rsa-1".into());
        let set = JwkSet {
            keys: vec![es_jwk, rs_jwk],
        };
        let json = serde_json::to_vec(&set).unwrap();
        let v = BearerVerifier::jwks(&json, policy()).unwrap();

        let claims = serde_json::json!({"sub": "alice", "exp": NOW + 60});
        let t = sign(Algorithm::ES256, &es_key, Some("ec-1"), &claims);
        assert_eq!(v.verify(&t, NOW).unwrap(), "sip:alice@example.com");
        let t = sign(Algorithm::RS256, &rs_key, Some("rsa-1"), &claims);
        assert!(v.verify(&t, NOW).is_ok());
        let t = sign(Algorithm::RS256, &rs_key, Some("ec-1"), &claims);
        assert_eq!(v.verify(&t, NOW), Err(BearerError::WrongAlgorithm));
        let t = sign(Algorithm::RS256, &rs_key, Some("nope"), &claims);
        assert_eq!(v.verify(&t, NOW), Err(BearerError::UnknownKey));
        let t = sign(Algorithm::RS256, &rs_key, None, &claims);
        assert_eq!(
            v.verify(&t, NOW),
            Err(BearerError::UnknownKey),
            "two keys, no kid"
        );
        assert!(matches!(
            BearerVerifier::jwks(br#"{"keys": []}"#, policy()),
            Err(KeyError::NoUsableKey)
        ));
    }

    #[test]
    fn jwks_with_a_symmetric_key_is_refused() {
        install_provider();
        let k = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, SECRET);
        for oct in [
            serde_json::json!({"kty": "oct", "k": k, "alg": "HS256", "kid": "h"}),
            serde_json::json!({"kty": "oct", "k": k}),
            serde_json::json!({"kty": "oct", "k": k, "use": "enc"}),
        ] {
            let rs_key = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
            let mut rs_jwk =
                serde_json::to_value(Jwk::from_encoding_key(&rs_key, Algorithm::RS256).unwrap())
                    .unwrap();
            rs_jwk["kid"] = "rsa-1".into();
            let json = serde_json::to_vec(&serde_json::json!({"keys": [rs_jwk, oct]})).unwrap();
            assert!(
                matches!(
                    BearerVerifier::jwks(&json, policy()),
                    Err(KeyError::SymmetricKey)
                ),
                "{oct}"
            );
        }
    }

    #[test]
    fn user_names_become_addresses_of_record() {
        assert_eq!(
            address_of_record("alice", "example.com"),
            "sip:alice@example.com"
        );
        assert_eq!(
            address_of_record("alice@corp.example", "example.com"),
            "sip:alice@corp.example"
        );
        assert_eq!(
            address_of_record("sip:alice@x.org", "example.com"),
            "sip:alice@x.org"
        );
        assert_eq!(
            address_of_record("SIPS:alice@x.org", "example.com"),
            "SIPS:alice@x.org"
        );
    }
}
