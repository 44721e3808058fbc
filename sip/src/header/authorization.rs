//! Authorization credentials (RFC 3261 §20.7, §22.4, grammar `credentials` in §25.1; SHA-256
//! digests RFC 8760; Bearer tokens RFC 8898 §2.2) and the digest challenge of a
//! WWW-Authenticate header (RFC 3261 §20.44, §22.1).
//!
//! Parsing is syntax only: whether a response is right is the notifier's business.

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token, quote, unquote};

/// Longest credentials value accepted (a JWT with many claims fits easily).
pub const MAX_CREDENTIALS_LEN: usize = 8 * 1024;

/// One Authorization value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Digest username="…", realm="…", …` (RFC 3261 §25.1 `digest-response`); boxed, as
    /// it is ten times the size of a token.
    Digest(Box<DigestResponse>),
    /// `Bearer <token>` (RFC 8898 §2.2, the b64token of RFC 6750 §2.1).
    Bearer(String),
}

/// The parameters of a digest response; values unquoted. Unknown parameters are ignored
/// (RFC 3261 §25.1 `auth-param`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestResponse {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (the digest-uri, compared by the verifier as a string).
    pub uri: String,
    /// `response`, the hex digest.
    pub response: String,
    /// `algorithm`; absent means MD5 (RFC 3261 §22.4).
    pub algorithm: Option<String>,
    /// `cnonce`.
    pub cnonce: Option<String>,
    /// `opaque`.
    pub opaque: Option<String>,
    /// `qop` (a token: `auth`).
    pub qop: Option<String>,
    /// `nc`, 8 hex digits as sent.
    pub nc: Option<String>,
}

impl Credentials {
    /// Parses one Authorization (or Proxy-Authorization) value.
    pub fn parse(s: &str) -> Result<Credentials, ParseError> {
        if s.len() > MAX_CREDENTIALS_LEN {
            return Err(ParseError::BadAuthorization);
        }
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let scheme = cur.take_while(is_token);
        if !cur.skip_ws() {
            return Err(ParseError::BadAuthorization);
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let token = cur.take_while(is_b64token);
            cur.skip_ws();
            if token.is_empty() || !cur.is_eof() {
                return Err(ParseError::BadAuthorization);
            }
            return Ok(Credentials::Bearer(token.to_owned()));
        }
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(ParseError::BadAuthorization);
        }
        let mut d = DigestResponse::default();
        let (mut has_user, mut has_nonce, mut has_response) = (false, false, false);
        loop {
            cur.skip_ws();
            let name = cur.take_while(is_token);
            if name.is_empty() {
                return Err(ParseError::BadAuthorization);
            }
            cur.skip_ws();
            if !cur.eat(b'=') {
                return Err(ParseError::BadAuthorization);
            }
            cur.skip_ws();
            let value = if cur.peek() == Some(b'"') {
                unquote(
                    cur.quoted_string()
                        .map_err(|_| ParseError::BadAuthorization)?,
                )
            } else {
                let v = cur.take_while(is_token);
                if v.is_empty() {
                    return Err(ParseError::BadAuthorization);
                }
                v.to_owned()
            };
            match name.to_ascii_lowercase().as_str() {
                "username" => (d.username, has_user) = (value, true),
                "realm" => d.realm = value,
                "nonce" => (d.nonce, has_nonce) = (value, true),
                "uri" => d.uri = value,
                "response" => (d.response, has_response) = (value, true),
                "algorithm" => d.algorithm = Some(value),
                "cnonce" => d.cnonce = Some(value),
                "opaque" => d.opaque = Some(value),
                "qop" => d.qop = Some(value),
                "nc" => d.nc = Some(value),
                _ => {}
            }
            cur.skip_ws();
            if cur.is_eof() {
                break;
            }
            if !cur.eat(b',') {
                return Err(ParseError::BadAuthorization);
            }
        }
        if !(has_user && has_nonce && has_response) {
            return Err(ParseError::BadAuthorization);
        }
        Ok(Credentials::Digest(Box::new(d)))
    }
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)
}

/// A digest challenge, printed as one WWW-Authenticate value with `qop="auth"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `opaque`, if any.
    pub opaque: Option<String>,
    /// `algorithm`, e.g. `SHA-256` or `MD5`.
    pub algorithm: String,
    /// `stale=true`: the nonce expired but the credentials were right (§22.4).
    pub stale: bool,
}

impl fmt::Display for DigestChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest realm={}, nonce={}",
            quote(&self.realm),
            quote(&self.nonce)
        )?;
        if let Some(o) = &self.opaque {
            write!(f, ", opaque={}", quote(o))?;
        }
        // The algorithm is a token; anything else would corrupt the header, so drop it.
        if !self.algorithm.is_empty() && self.algorithm.bytes().all(is_token) {
            write!(f, ", algorithm={}", self.algorithm)?;
        }
        f.write_str(", qop=\"auth\"")?;
        if self.stale {
            f.write_str(", stale=true")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_jssip_digest_response() {
        let v = r#"Digest algorithm=MD5, username="alice", realm="example.com", nonce="abc==", uri="sip:alice@example.com", response="6629fae49393a05397450978507c4ef1", opaque="xyz", qop=auth, cnonce="0a4f113b", nc=00000001"#;
        let Credentials::Digest(d) = Credentials::parse(v).unwrap() else {
            panic!("not digest")
        };
        assert_eq!(d.username, "alice");
        assert_eq!(d.realm, "example.com");
        assert_eq!(d.nonce, "abc==");
        assert_eq!(d.uri, "sip:alice@example.com");
        assert_eq!(d.response, "6629fae49393a05397450978507c4ef1");
        assert_eq!(d.algorithm.as_deref(), Some("MD5"));
        assert_eq!(d.qop.as_deref(), Some("auth"));
        assert_eq!(d.nc.as_deref(), Some("00000001"));
        assert_eq!(d.cnonce.as_deref(), Some("0a4f113b"));
        assert_eq!(d.opaque.as_deref(), Some("xyz"));
    }

    #[test]
    fn quoted_pairs_and_odd_spacing() {
        let v =
            "digest   username = \"a\\\"b\" ,realm=\"r\",nonce=\"n\",uri=\"sip:x\",response=\"00\"";
        let Credentials::Digest(d) = Credentials::parse(v).unwrap() else {
            panic!("not digest")
        };
        assert_eq!(d.username, "a\"b");
        assert_eq!(d.algorithm, None, "absent algorithm means MD5");
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            Credentials::parse("Bearer eyJhbGciOi.J9eyJzdWIi.Oi-_abc=").unwrap(),
            Credentials::Bearer("eyJhbGciOi.J9eyJzdWIi.Oi-_abc=".into())
        );
        assert!(Credentials::parse("Bearer").is_err());
        assert!(Credentials::parse("Bearer a b").is_err());
        assert!(Credentials::parse("Bearer a\"b").is_err());
    }

    #[test]
    fn rejects_malformed_and_unknown_schemes() {
        for bad in [
            "",
            "Digest",
            "Digest username=\"a\"",
            "Digest username=\"a\", nonce=\"n\"",
            "Digest username=\"a\" nonce=\"n\", response=\"r\"",
            "Digest username=\"a, nonce=\"n\", response=\"r\"",
            "Digest username=, nonce=\"n\", response=\"r\"",
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        ] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_CREDENTIALS_LEN));
        assert!(Credentials::parse(&huge).is_err());
    }

    #[test]
    fn prints_challenges() {
        let mut c = DigestChallenge {
            realm: "example.com".into(),
            nonce: "n0nce".into(),
            opaque: None,
            algorithm: "SHA-256".into(),
            stale: false,
        };
        assert_eq!(
            c.to_string(),
            r#"Digest realm="example.com", nonce="n0nce", algorithm=SHA-256, qop="auth""#
        );
        c.stale = true;
        c.opaque = Some("o".into());
        c.algorithm = "MD5".into();
        assert_eq!(
            c.to_string(),
            r#"Digest realm="example.com", nonce="n0nce", opaque="o", algorithm=MD5, qop="auth", stale=true"#
        );
    }
}
