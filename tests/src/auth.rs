//! The client side of sign-in, as browser libraries do it: RFC 3261 §22.4 digest responses
//! (MD5, and SHA-256 per RFC 8760) to a `WWW-Authenticate` challenge, and RFC 8898 bearer
//! tokens. The digest arithmetic is the operator CLI's (`conflist_cli::digest`), written
//! independently of the server's verifier so each checks the other.

pub use conflist_cli::digest::{Challenge, DigestInput, authorization};

/// How a test client signs in.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    /// No credentials at all.
    #[default]
    None,
    /// Answer digest challenges of `algorithm` (`MD5` or `SHA-256`) with this password.
    Digest {
        username: String,
        password: String,
        algorithm: &'static str,
    },
    /// Send `Authorization: Bearer <token>` on the initial SUBSCRIBE.
    Bearer(String),
}

impl Auth {
    /// Digest sign-in as `username` with MD5, as JsSIP and SIP.js do.
    pub fn md5(username: &str, password: &str) -> Auth {
        Auth::Digest {
            username: username.to_owned(),
            password: password.to_owned(),
            algorithm: "MD5",
        }
    }

    /// Digest sign-in as `username` with SHA-256 (RFC 8760).
    pub fn sha256(username: &str, password: &str) -> Auth {
        Auth::Digest {
            username: username.to_owned(),
            password: password.to_owned(),
            algorithm: "SHA-256",
        }
    }
}
