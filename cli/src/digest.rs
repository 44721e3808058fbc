//! The client side of digest sign-in (RFC 3261 §22.4; SHA-256 per RFC 8760): the answer to a
//! `WWW-Authenticate` challenge of a 401. Shared by the CLI and the system tests' client, and
//! written independently of the server's verifier, so each checks the other.

use anyhow::{Context, Result, bail};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use sip::{HeaderName, Response};

/// One digest challenge of a 401.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: String,
    pub qop: Option<String>,
    pub stale: bool,
}

impl Challenge {
    /// Parses `Digest realm="…", nonce="…", …` (test-grade: no escaped quotes expected).
    pub fn parse(value: &str) -> Result<Challenge> {
        let rest = value
            .trim()
            .strip_prefix("Digest ")
            .context("not a Digest challenge")?;
        let mut c = Challenge {
            realm: String::new(),
            nonce: String::new(),
            opaque: None,
            algorithm: "MD5".into(),
            qop: None,
            stale: false,
        };
        for part in split_params(rest) {
            let (k, v) = part.split_once('=').context("param without =")?;
            let v = v.trim().trim_matches('"').to_owned();
            match k.trim().to_ascii_lowercase().as_str() {
                "realm" => c.realm = v,
                "nonce" => c.nonce = v,
                "opaque" => c.opaque = Some(v),
                "algorithm" => c.algorithm = v,
                "qop" => c.qop = Some(v),
                "stale" => c.stale = v.eq_ignore_ascii_case("true"),
                _ => {}
            }
        }
        if c.nonce.is_empty() {
            bail!("challenge without nonce: {value}");
        }
        Ok(c)
    }

    /// Every digest challenge of a response, in header order.
    pub fn all(resp: &Response) -> Result<Vec<Challenge>> {
        resp.headers
            .iter()
            .filter(|(n, _)| **n == HeaderName::WWW_AUTHENTICATE)
            .map(|(_, v)| Challenge::parse(v))
            .collect()
    }
}

/// Splits on commas outside quotes.
fn split_params(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect()
}

fn hash(algorithm: &str, data: &str) -> String {
    if algorithm.eq_ignore_ascii_case("SHA-256") {
        hex::encode(Sha256::digest(data.as_bytes()))
    } else {
        hex::encode(Md5::digest(data.as_bytes()))
    }
}

/// Everything that goes into one digest response.
#[derive(Debug, Clone)]
pub struct DigestInput<'a> {
    pub username: &'a str,
    pub password: &'a str,
    pub method: &'a str,
    pub uri: &'a str,
    pub nc: u32,
    pub cnonce: &'a str,
}

/// The `Authorization` value answering `challenge` (qop=auth).
pub fn authorization(challenge: &Challenge, input: &DigestInput<'_>) -> String {
    let alg = &challenge.algorithm;
    let ha1 = hash(
        alg,
        &format!("{}:{}:{}", input.username, challenge.realm, input.password),
    );
    let ha2 = hash(alg, &format!("{}:{}", input.method, input.uri));
    let nc = format!("{:08x}", input.nc);
    let response = hash(
        alg,
        &format!("{ha1}:{}:{nc}:{}:auth:{ha2}", challenge.nonce, input.cnonce),
    );
    let mut v = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", \
         algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{}\"",
        input.username, challenge.realm, challenge.nonce, input.uri, input.cnonce
    );
    if let Some(o) = &challenge.opaque {
        v.push_str(&format!(", opaque=\"{o}\""));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5 (with the RFC's GET /dir/index.html and its nonce, nc and cnonce).
    #[test]
    fn rfc2617_example_response() {
        let c = Challenge {
            realm: "testrealm@host.com".into(),
            nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093".into(),
            opaque: Some("5ccc069c403ebaf9f0171e9517f40e41".into()),
            algorithm: "MD5".into(),
            qop: Some("auth".into()),
            stale: false,
        };
        let v = authorization(
            &c,
            &DigestInput {
                username: "Mufasa",
                password: "Circle Of Life",
                method: "GET",
                uri: "/dir/index.html",
                nc: 1,
                cnonce: "0a4f113b",
            },
        );
        assert!(
            v.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{v}"
        );
    }

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Digest realm="example.com", nonce="a,b=", algorithm=SHA-256, qop="auth", stale=true"#,
        )
        .unwrap();
        assert_eq!(c.nonce, "a,b=");
        assert_eq!(c.algorithm, "SHA-256");
        assert!(c.stale);
    }
}
