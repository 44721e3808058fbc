//! Sign-in: who is asking. Digest ([RFC 3261 §22], [RFC 8760]) against HA1s in the
//! directory, bearer JWTs ([RFC 8898]), throttling of failures, and the shared secret of the
//! proxy hop.
//!
//! Layout:
//! - [`nonce`]: stateless nonces that every instance sharing the secret verifies.
//! - [`digest`]: HA1/response computation, syntax checks, nonce-count replay memory.
//! - [`bearer`]: JWT verification (HS256 secret, PEM public key, JWKS) and issuing.
//! - [`throttle`]: failed sign-ins per user and per client address in a fixed window.
//! - [`proxy`]: the gRPC interceptor for the proxy's shared secret.
//!
//! [`Authenticator`] ties them together. It is sans-IO ([`Authenticator::precheck`] then
//! [`Authenticator::finish_digest`], with `now` in unix seconds) around one directory read
//! ([`Authenticator::authenticate`]). Rules that matter for security:
//! * An unknown user is answered exactly like a known user with a wrong password: the
//!   response is checked against a dummy HA1, failures are counted alike, and the challenge
//!   has the same shape (only the nonce differs).
//! * `stale=true` only for an expired nonce with a correct response (RFC 3261 §22.4).
//! * Passwords, HA1s and tokens are never logged; user names (cut to
//!   [`LOGGED_USERNAME_CHARS`], see [`loggable`]) and outcomes are.
//! * A digest user name longer than [`throttle::MAX_USERNAME_BYTES`] is a failed sign-in
//!   without a directory read, counted against the client address only.
//!
//! [RFC 3261 §22]: https://www.rfc-editor.org/rfc/rfc3261#section-22
//! [RFC 8760]: https://www.rfc-editor.org/rfc/rfc8760
//! [RFC 8898]: https://www.rfc-editor.org/rfc/rfc8898

pub mod bearer;
pub mod digest;
pub mod nonce;
pub mod proxy;
pub mod throttle;

use crate::directory::{Directory, DirectoryError, StoredCredentials};
use crate::subscription::same_aor;
use bearer::BearerVerifier;
use digest::{Algorithm, DigestCredentials, NonceCounts};
use nonce::{NonceCheck, NonceKey};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use throttle::{Throttle, ThrottleKey};
use tracing::debug;

/// Default nonce lifetime.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);
/// Characters of a user name that go into a log line.
pub const LOGGED_USERNAME_CHARS: usize = 64;
/// Default digest algorithms, in challenge order. MD5 stays last: JsSIP and SIP.js read only
/// the last `WWW-Authenticate` and speak MD5 only.
pub const DEFAULT_ALGORITHMS: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

/// Credentials as the proxy carried them (domain form of `conflist.v1.Credentials`).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: Digest …` (boxed: it is ten strings).
    Digest(Box<DigestCredentials>),
    /// `Authorization: Bearer <jwt>`.
    Bearer(String),
}

impl Credentials {
    /// The digest user name; `None` for a bearer token (whose content is never logged).
    pub fn username(&self) -> Option<&str> {
        match self {
            Credentials::Digest(d) => Some(&d.username),
            Credentials::Bearer(_) => None,
        }
    }
}

/// `name` as it may appear in a log line: its first [`LOGGED_USERNAME_CHARS`] characters,
/// control characters replaced by `?` (a user name is client input).
pub fn loggable(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(LOGGED_USERNAME_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().nth(LOGGED_USERNAME_CHARS).is_some() {
        out.push('…');
    }
    out
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Digest(d) => f
                .debug_struct("Digest")
                .field("username", &loggable(&d.username))
                .finish_non_exhaustive(),
            Credentials::Bearer(_) => f.write_str("Bearer([redacted])"),
        }
    }
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Signed in as `identity` (an address of record).
    Authenticated {
        /// The address of record.
        identity: String,
    },
    /// 401 with a fresh challenge; `stale` per RFC 3261 §22.4.
    Challenge {
        /// The nonce had expired but the response was right: retry without asking the user.
        stale: bool,
    },
    /// Too many failures: 503 with `Retry-After: retry_after`.
    Throttled {
        /// Seconds until the window ends.
        retry_after: u32,
    },
}

/// The metric label of an outcome (`conflist_server_auth_total{outcome}`); bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    /// Authenticated.
    Ok,
    /// No credentials: challenged.
    Challenged,
    /// Wrong, malformed or foreign credentials.
    Failed,
    /// Right response on an expired nonce.
    Stale,
    /// Refused without verifying (too many failures).
    Throttled,
    /// Right response, but its nonce count was already used.
    Replayed,
}

impl Label {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Ok => "ok",
            Label::Challenged => "challenged",
            Label::Failed => "failed",
            Label::Stale => "stale",
            Label::Throttled => "throttled",
            Label::Replayed => "replayed",
        }
    }
}

/// An outcome and its label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to answer.
    pub outcome: Outcome,
    /// How to count it.
    pub label: Label,
}

impl Verdict {
    fn challenge(label: Label, stale: bool) -> Self {
        Self {
            outcome: Outcome::Challenge { stale },
            label,
        }
    }
}

/// A digest challenge to send (one `WWW-Authenticate` per algorithm, in this order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// A fresh `nonce`.
    pub nonce: String,
    /// `opaque`.
    pub opaque: String,
    /// `algorithm` values, in order.
    pub algorithms: Vec<&'static str>,
    /// `stale`.
    pub stale: bool,
}

/// The first, sans-IO step of verifying credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Decided without the directory.
    Done(Verdict),
    /// Read the HA1s of (`username`, `realm`), then call [`Authenticator::finish_digest`].
    Lookup {
        /// Digest user name.
        username: String,
        /// Our realm.
        realm: String,
    },
}

/// Where HA1s come from (the directory; an in-memory map in tests).
pub trait CredentialStore {
    /// The row of (`username`, `realm`), `None` if unknown.
    fn lookup(
        &self,
        username: &str,
        realm: &str,
    ) -> impl Future<Output = Result<Option<StoredCredentials>, DirectoryError>> + Send;
}

impl CredentialStore for Directory {
    fn lookup(
        &self,
        username: &str,
        realm: &str,
    ) -> impl Future<Output = Result<Option<StoredCredentials>, DirectoryError>> + Send {
        self.credentials(username, realm)
    }
}

/// Authenticator settings (from config).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Digest realm (default: the SIP domain).
    pub realm: String,
    /// Domain of bare user names.
    pub sip_domain: String,
    /// Offered algorithms, in challenge order.
    pub algorithms: Vec<Algorithm>,
    /// Nonce MAC key, shared by every instance.
    pub nonce_secret: Vec<u8>,
    /// How long a nonce is fresh.
    pub nonce_lifetime: Duration,
    /// Failures allowed per window per user / per address.
    pub max_failures: u32,
    /// The failure window.
    pub failure_window: Duration,
    /// Bearer token verification, when configured.
    pub bearer: Option<BearerVerifier>,
}

#[derive(Debug)]
struct State {
    counts: NonceCounts,
    throttle: Throttle,
}

/// Verifies credentials and issues challenges for one realm.
#[derive(Debug)]
pub struct Authenticator {
    realm: String,
    sip_domain: String,
    algorithms: Vec<Algorithm>,
    nonces: NonceKey,
    opaque: String,
    bearer: Option<BearerVerifier>,
    /// HA1s of a random password, checked when the user is unknown (same work, same answer).
    dummy_md5: String,
    dummy_sha256: String,
    state: Mutex<State>,
}

impl Authenticator {
    /// An authenticator with empty replay and throttle memory.
    pub fn new(config: AuthConfig) -> Self {
        let nonces = NonceKey::new(&config.nonce_secret, &config.realm, config.nonce_lifetime);
        let mut pw = [0u8; 24];
        rand::fill(&mut pw[..]);
        let pw = hex::encode(pw);
        let algorithms = if config.algorithms.is_empty() {
            DEFAULT_ALGORITHMS.to_vec()
        } else {
            config.algorithms
        };
        Self {
            dummy_md5: digest::ha1(Algorithm::Md5, "", &config.realm, &pw),
            dummy_sha256: digest::ha1(Algorithm::Sha256, "", &config.realm, &pw),
            opaque: nonces.opaque(),
            state: Mutex::new(State {
                counts: NonceCounts::new(nonces.lifetime(), digest::DEFAULT_NONCE_COUNT_CAP),
                throttle: Throttle::new(
                    config.max_failures,
                    config.failure_window,
                    throttle::DEFAULT_CAP,
                ),
            }),
            nonces,
            realm: config.realm,
            sip_domain: config.sip_domain,
            algorithms,
            bearer: config.bearer,
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A challenge with a fresh nonce issued at `now`.
    pub fn challenge(&self, stale: bool, now: u64) -> Challenge {
        Challenge {
            realm: self.realm.clone(),
            nonce: self.nonces.issue(now),
            opaque: self.opaque.clone(),
            algorithms: self.algorithms.iter().map(|a| a.name()).collect(),
            stale,
        }
    }

    /// The verdict for a request without credentials.
    pub fn no_credentials(&self) -> Verdict {
        Verdict::challenge(Label::Challenged, false)
    }

    /// Verifies `creds` from `client_address` at `now`, reading HA1s from `store`.
    pub async fn authenticate<S: CredentialStore>(
        &self,
        creds: &Credentials,
        client_address: &str,
        now: u64,
        store: &S,
    ) -> Result<Verdict, DirectoryError> {
        let verdict = match self.precheck(creds, client_address, now) {
            Step::Done(v) => v,
            Step::Lookup { username, realm } => {
                let stored = store.lookup(&username, &realm).await?;
                match creds {
                    Credentials::Digest(d) => {
                        self.finish_digest(d, stored.as_ref(), client_address, now)
                    }
                    Credentials::Bearer(_) => Verdict::challenge(Label::Failed, false),
                }
            }
        };
        Ok(verdict)
    }

    /// Step one: throttling, bearer tokens, and everything about digest credentials that
    /// does not depend on the user.
    pub fn precheck(&self, creds: &Credentials, client_address: &str, now: u64) -> Step {
        let address = ThrottleKey::address(client_address);
        let user = match creds {
            Credentials::Digest(d) => ThrottleKey::user(&d.username),
            Credentials::Bearer(_) => None,
        };
        if let Some(retry_after) = self.blocked(user.as_ref(), address.as_ref(), now) {
            return Step::Done(Verdict {
                outcome: Outcome::Throttled { retry_after },
                label: Label::Throttled,
            });
        }
        match creds {
            Credentials::Bearer(token) => Step::Done(self.bearer(token, address.as_ref(), now)),
            Credentials::Digest(d) => {
                if user.is_none() {
                    // Too long to be anyone's: not looked up and not remembered by name.
                    debug!(
                        username = %loggable(&d.username),
                        bytes = d.username.len(),
                        "digest user name too long"
                    );
                    self.count_failure(None, address.as_ref(), now);
                    return Step::Done(Verdict::challenge(Label::Failed, false));
                }
                if let Err(e) = digest::check_syntax(d, &self.realm, &self.algorithms) {
                    debug!(username = %loggable(&d.username), reason = %e, "digest credentials unusable");
                    return Step::Done(Verdict::challenge(Label::Failed, false));
                }
                if self.nonces.check(&d.nonce, now) == NonceCheck::Invalid {
                    debug!(username = %loggable(&d.username), "digest nonce not ours");
                    return Step::Done(Verdict::challenge(Label::Failed, false));
                }
                Step::Lookup {
                    username: d.username.clone(),
                    realm: self.realm.clone(),
                }
            }
        }
    }

    /// Step two: the response against the user's HA1 (`stored`, `None` = unknown user).
    pub fn finish_digest(
        &self,
        d: &DigestCredentials,
        stored: Option<&StoredCredentials>,
        client_address: &str,
        now: u64,
    ) -> Verdict {
        let Ok(checked) = digest::check_syntax(d, &self.realm, &self.algorithms) else {
            return Verdict::challenge(Label::Failed, false);
        };
        let alg = checked.algorithm;
        let real = stored.and_then(|s| {
            let ha1 = match alg {
                Algorithm::Md5 => s.ha1_md5.as_deref(),
                Algorithm::Sha256 => s.ha1_sha256.as_deref(),
            }?;
            let ha1 = ha1.trim();
            (ha1.len() == alg.hex_len() && ha1.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| ha1.to_ascii_lowercase())
        });
        let dummy = match alg {
            Algorithm::Md5 => &self.dummy_md5,
            Algorithm::Sha256 => &self.dummy_sha256,
        };
        let mut with_method = d.clone();
        if with_method.method.is_empty() {
            with_method.method = "SUBSCRIBE".into();
        }
        let matches = digest::verify(alg, real.as_deref().unwrap_or(dummy), &with_method);
        let ok = matches && real.is_some();
        if !ok {
            self.count_failure(
                ThrottleKey::user(&d.username).as_ref(),
                ThrottleKey::address(client_address).as_ref(),
                now,
            );
            debug!(username = %loggable(&d.username), "digest response wrong or user unknown");
            return Verdict::challenge(Label::Failed, false);
        }
        let issued = match self.nonces.check(&d.nonce, now) {
            NonceCheck::Fresh { issued } => issued,
            NonceCheck::Expired { .. } => return Verdict::challenge(Label::Stale, true),
            NonceCheck::Invalid => return Verdict::challenge(Label::Failed, false),
        };
        if let Err(replay) = self.lock().counts.accept(&d.nonce, issued, checked.nc, now) {
            debug!(username = %loggable(&d.username), ?replay, "digest nonce count reused");
            return Verdict::challenge(Label::Replayed, false);
        }
        let identity = stored
            .map(|s| s.user_uri.trim())
            .filter(|u| !u.is_empty())
            .map_or_else(
                || format!("sip:{}@{}", d.username, self.sip_domain),
                str::to_owned,
            );
        Verdict {
            outcome: Outcome::Authenticated { identity },
            label: Label::Ok,
        }
    }

    fn bearer(&self, token: &str, address: Option<&ThrottleKey>, now: u64) -> Verdict {
        let result = match &self.bearer {
            Some(v) => v.verify(token, now),
            None => Err(bearer::BearerError::UnknownKey),
        };
        match result {
            Ok(identity) => Verdict {
                outcome: Outcome::Authenticated { identity },
                label: Label::Ok,
            },
            Err(e) => {
                debug!(reason = %e, "bearer token refused");
                self.count_failure(None, address, now);
                Verdict::challenge(Label::Failed, false)
            }
        }
    }

    /// Turns a sign-in (by `creds` from `client_address`) that succeeded as someone other
    /// than `bound`, the identity a subscription was created with, into a failure answered
    /// and counted exactly like a wrong password. Otherwise a refresh would tell a right
    /// password for another user from a wrong one: a guessing oracle.
    pub fn require_identity(
        &self,
        verdict: Verdict,
        bound: &str,
        creds: &Credentials,
        client_address: &str,
        now: u64,
    ) -> Verdict {
        match &verdict.outcome {
            Outcome::Authenticated { identity } if !same_aor(bound, identity) => {
                let user = match creds {
                    Credentials::Digest(d) => ThrottleKey::user(&d.username),
                    Credentials::Bearer(_) => None,
                };
                self.count_failure(
                    user.as_ref(),
                    ThrottleKey::address(client_address).as_ref(),
                    now,
                );
                debug!(
                    username = %creds.username().map(loggable).unwrap_or_default(),
                    "credentials name another user than the subscription's"
                );
                Verdict::challenge(Label::Failed, false)
            }
            _ => verdict,
        }
    }

    fn count_failure(&self, user: Option<&ThrottleKey>, address: Option<&ThrottleKey>, now: u64) {
        let mut state = self.lock();
        for key in [user, address].into_iter().flatten() {
            state.throttle.fail(key, now);
        }
    }

    fn blocked(
        &self,
        user: Option<&ThrottleKey>,
        address: Option<&ThrottleKey>,
        now: u64,
    ) -> Option<u32> {
        let state = self.lock();
        let secs = [user, address]
            .into_iter()
            .flatten()
            .filter_map(|k| state.throttle.blocked(k, now))
            .max()?;
        Some(u32::try_from(secs).unwrap_or(u32::MAX))
    }

    /// Critical sections are short and never span an await.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
