//! The authenticator driven with an explicit clock and an in-memory credential store.

use super::*;
use std::collections::HashMap;

const NOW: u64 = 1_700_000_000;
const REALM: &str = "example.com";
const ADDR: &str = "192.0.2.7:50123";

#[derive(Debug, Default)]
struct Store(HashMap<String, StoredCredentials>);

impl Store {
    fn with(username: &str, password: &str) -> Self {
        let mut s = Store::default();
        s.0.insert(
            username.to_owned(),
            StoredCredentials {
                user_uri: format!("sip:{username}@example.com"),
                ha1_md5: Some(digest::ha1(Algorithm::Md5, username, REALM, password)),
                ha1_sha256: Some(digest::ha1(Algorithm::Sha256, username, REALM, password)),
            },
        );
        s
    }
}

impl CredentialStore for Store {
    fn lookup(
        &self,
        username: &str,
        _realm: &str,
    ) -> impl Future<Output = Result<Option<StoredCredentials>, DirectoryError>> + Send {
        std::future::ready(Ok(self.0.get(username).cloned()))
    }
}

fn config() -> AuthConfig {
    AuthConfig {
        realm: REALM.into(),
        sip_domain: "example.com".into(),
        algorithms: DEFAULT_ALGORITHMS.to_vec(),
        nonce_secret: b"nonce secret".to_vec(),
        nonce_lifetime: Duration::from_secs(300),
        max_failures: 3,
        failure_window: Duration::from_secs(60),
        bearer: None,
    }
}

/// What a client computes after a challenge.
fn answer(
    challenge: &Challenge,
    alg: Algorithm,
    username: &str,
    password: &str,
    nc: u32,
) -> Credentials {
    let mut d = DigestCredentials {
        username: username.into(),
        realm: challenge.realm.clone(),
        nonce: challenge.nonce.clone(),
        uri: "sip:alice@example.com".into(),
        response: String::new(),
        algorithm: alg.name().into(),
        qop: "auth".into(),
        nc: format!("{nc:08x}"),
        cnonce: "0a4f113b".into(),
        opaque: challenge.opaque.clone(),
        method: "SUBSCRIBE".into(),
    };
    let ha1 = digest::ha1(alg, username, &d.realm, password);
    d.response = digest::expected_response(alg, &ha1, &d);
    Credentials::Digest(Box::new(d))
}

async fn run(a: &Authenticator, c: &Credentials, store: &Store, now: u64) -> Verdict {
    a.authenticate(c, ADDR, now, store).await.unwrap()
}

fn authenticated(identity: &str) -> Verdict {
    Verdict {
        outcome: Outcome::Authenticated {
            identity: identity.into(),
        },
        label: Label::Ok,
    }
}

fn challenged(label: Label, stale: bool) -> Verdict {
    Verdict {
        outcome: Outcome::Challenge { stale },
        label,
    }
}

#[test]
fn challenge_offers_algorithms_in_order_md5_last() {
    let a = Authenticator::new(config());
    let c = a.challenge(false, NOW);
    assert_eq!(c.realm, REALM);
    assert_eq!(c.algorithms, vec!["SHA-256", "MD5"]);
    assert!(!c.opaque.is_empty());
    assert_ne!(c.nonce, a.challenge(false, NOW + 1).nonce);
    assert_eq!(a.no_credentials(), challenged(Label::Challenged, false));
}

#[tokio::test]
async fn right_password_with_either_algorithm_signs_in() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        let c = answer(&a.challenge(false, NOW), alg, "alice", "wonderland", 1);
        assert_eq!(
            run(&a, &c, &store, NOW + 5).await,
            authenticated("sip:alice@example.com"),
            "{alg}"
        );
    }
}

#[tokio::test]
async fn unknown_user_is_answered_like_a_wrong_password() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    let ch = a.challenge(false, NOW);
    let wrong = run(
        &a,
        &answer(&ch, Algorithm::Md5, "alice", "guess", 1),
        &store,
        NOW,
    )
    .await;
    let unknown = run(
        &a,
        &answer(&ch, Algorithm::Md5, "zed", "guess", 1),
        &store,
        NOW,
    )
    .await;
    assert_eq!(wrong, challenged(Label::Failed, false));
    assert_eq!(unknown, wrong);
    // Even the stale rule cannot tell them apart: an expired nonce gives the same answer.
    let later = NOW + 301;
    let wrong = run(
        &a,
        &answer(&ch, Algorithm::Md5, "alice", "guess", 2),
        &store,
        later,
    )
    .await;
    let unknown = run(
        &a,
        &answer(&ch, Algorithm::Md5, "zed", "guess", 2),
        &store,
        later,
    )
    .await;
    assert_eq!(wrong, unknown);
}

#[tokio::test]
async fn expired_nonce_with_the_right_response_is_stale() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    let ch = a.challenge(false, NOW);
    let c = answer(&ch, Algorithm::Sha256, "alice", "wonderland", 1);
    assert_eq!(
        run(&a, &c, &store, NOW + 301).await,
        challenged(Label::Stale, true)
    );
    let c = answer(&ch, Algorithm::Sha256, "alice", "nope", 1);
    assert_eq!(
        run(&a, &c, &store, NOW + 301).await,
        challenged(Label::Failed, false)
    );
}

#[tokio::test]
async fn nonce_counts_cannot_be_replayed() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    let ch = a.challenge(false, NOW);
    let first = answer(&ch, Algorithm::Md5, "alice", "wonderland", 1);
    assert_eq!(run(&a, &first, &store, NOW).await.label, Label::Ok);
    assert_eq!(
        run(&a, &first, &store, NOW + 1).await,
        challenged(Label::Replayed, false)
    );
    let next = answer(&ch, Algorithm::Md5, "alice", "wonderland", 2);
    assert_eq!(
        run(&a, &next, &store, NOW + 2).await.label,
        Label::Ok,
        "nc moved on"
    );
}

#[tokio::test]
async fn foreign_nonces_wrong_realm_and_unoffered_algorithms_fail() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    let mut other = config();
    other.nonce_secret = b"another deployment".to_vec();
    let foreign = Authenticator::new(other).challenge(false, NOW);
    let c = answer(&foreign, Algorithm::Md5, "alice", "wonderland", 1);
    assert_eq!(
        run(&a, &c, &store, NOW).await,
        challenged(Label::Failed, false)
    );

    let mut ch = a.challenge(false, NOW);
    ch.realm = "elsewhere".into();
    let c = answer(&ch, Algorithm::Md5, "alice", "wonderland", 1);
    assert_eq!(
        run(&a, &c, &store, NOW).await,
        challenged(Label::Failed, false)
    );

    let mut sha_only = config();
    sha_only.algorithms = vec![Algorithm::Sha256];
    let a = Authenticator::new(sha_only);
    let c = answer(
        &a.challenge(false, NOW),
        Algorithm::Md5,
        "alice",
        "wonderland",
        1,
    );
    assert_eq!(
        run(&a, &c, &store, NOW).await,
        challenged(Label::Failed, false)
    );
}

#[tokio::test]
async fn failures_are_throttled_per_user_and_per_address() {
    let a = Authenticator::new(config()); // 3 per 60 s
    let store = Store::with("alice", "wonderland");
    let ch = a.challenge(false, NOW);
    for nc in 1..=3 {
        let c = answer(&ch, Algorithm::Md5, "alice", "guess", nc);
        assert_eq!(run(&a, &c, &store, NOW).await.label, Label::Failed);
    }
    // Now even the right password is refused unverified until the window ends.
    let right = answer(&ch, Algorithm::Md5, "alice", "wonderland", 4);
    assert_eq!(
        run(&a, &right, &store, NOW + 20).await,
        Verdict {
            outcome: Outcome::Throttled { retry_after: 40 },
            label: Label::Throttled
        }
    );
    // Another user from another address is unaffected; from the same address, refused.
    let bob = Store::with("bob", "builder");
    let c = answer(&ch, Algorithm::Md5, "bob", "builder", 1);
    assert_eq!(
        a.authenticate(&c, "198.51.100.1", NOW + 20, &bob)
            .await
            .unwrap()
            .label,
        Label::Ok
    );
    let c = answer(&ch, Algorithm::Md5, "bob", "builder", 2);
    assert_eq!(
        a.authenticate(&c, "192.0.2.7:1", NOW + 20, &bob)
            .await
            .unwrap()
            .label,
        Label::Throttled,
        "the address failed three times (any port)"
    );
    // After the window, alice signs in.
    let ch = a.challenge(false, NOW + 60);
    let right = answer(&ch, Algorithm::Md5, "alice", "wonderland", 1);
    assert_eq!(run(&a, &right, &store, NOW + 60).await.label, Label::Ok);
}

#[tokio::test]
async fn bearer_tokens() {
    let policy = bearer::BearerPolicy {
        issuer: None,
        audience: None,
        user_claim: "sub".into(),
        leeway: 30,
        sip_domain: "example.com".into(),
    };
    let secret = b"jwt secret for tests";
    let mut cfg = config();
    cfg.bearer = Some(BearerVerifier::hs256(secret, policy).unwrap());
    let a = Authenticator::new(cfg);
    let token = bearer::issue_hs256(
        secret,
        &bearer::TokenRequest {
            subject: "alice",
            now: NOW,
            ttl: Duration::from_secs(60),
            issuer: None,
            audience: None,
        },
    )
    .unwrap();
    let store = Store::default();
    let c = Credentials::Bearer(token.clone());
    assert_eq!(
        run(&a, &c, &store, NOW).await,
        authenticated("sip:alice@example.com")
    );
    assert_eq!(
        run(&a, &c, &store, NOW + 1000).await,
        challenged(Label::Failed, false),
        "expired"
    );
    assert!(!format!("{c:?}").contains(&token), "Debug redacts tokens");

    let without = Authenticator::new(config());
    assert_eq!(
        run(&without, &c, &store, NOW).await,
        challenged(Label::Failed, false),
        "bearer not configured"
    );
}

#[test]
fn an_empty_method_defaults_to_subscribe() {
    let a = Authenticator::new(config());
    let store = Store::with("alice", "wonderland");
    let Credentials::Digest(mut d) = answer(
        &a.challenge(false, NOW),
        Algorithm::Md5,
        "alice",
        "wonderland",
        1,
    ) else {
        unreachable!()
    };
    d.method.clear();
    let v = a.finish_digest(&d, store.0.get("alice"), ADDR, NOW);
    assert_eq!(v.label, Label::Ok);
}

/// A store that counts how often it is asked; it knows nobody.
#[derive(Debug, Default)]
struct Counting(std::sync::atomic::AtomicUsize);

impl CredentialStore for Counting {
    fn lookup(
        &self,
        _username: &str,
        _realm: &str,
    ) -> impl Future<Output = Result<Option<StoredCredentials>, DirectoryError>> + Send {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::future::ready(Ok(None))
    }
}

#[tokio::test]
async fn overlong_user_names_fail_unlooked_up_and_count_per_address_only() {
    let a = Authenticator::new(config()); // 3 per 60 s
    let ch = a.challenge(false, NOW);
    let long = "a".repeat(throttle::MAX_USERNAME_BYTES + 1);
    let store = Counting::default();
    for nc in 1..=3 {
        let c = answer(&ch, Algorithm::Md5, &long, "guess", nc);
        assert_eq!(
            a.authenticate(&c, ADDR, NOW, &store).await.unwrap(),
            challenged(Label::Failed, false)
        );
    }
    assert_eq!(store.0.into_inner(), 0, "never looked up");
    assert_eq!(a.lock().throttle.len(), 1, "only the address is a key");
    // The address is now blocked, for every user name.
    let store = Store::with("alice", "wonderland");
    let c = answer(&ch, Algorithm::Md5, "alice", "wonderland", 4);
    assert_eq!(run(&a, &c, &store, NOW + 1).await.label, Label::Throttled);
    let c = answer(&ch, Algorithm::Md5, "alice", "wonderland", 5);
    assert_eq!(
        a.authenticate(&c, "198.51.100.1", NOW + 1, &store)
            .await
            .unwrap()
            .label,
        Label::Ok,
        "alice herself was not counted"
    );
    // A name of exactly the limit is an ordinary (unknown) user.
    let edge = "b".repeat(throttle::MAX_USERNAME_BYTES);
    let c = answer(&ch, Algorithm::Md5, &edge, "guess", 1);
    let store = Counting::default();
    assert_eq!(
        a.authenticate(&c, "198.51.100.2", NOW, &store)
            .await
            .unwrap(),
        challenged(Label::Failed, false)
    );
    assert_eq!(store.0.into_inner(), 1, "looked up like any user");
}

#[tokio::test]
async fn credentials_of_another_user_than_the_bound_one_fail_and_count() {
    let a = Authenticator::new(config()); // 3 per 60 s
    let store = Store::with("bob", "builder");
    let ch = a.challenge(false, NOW);
    for nc in 1..=3 {
        let c = answer(&ch, Algorithm::Md5, "bob", "builder", nc);
        let v = run(&a, &c, &store, NOW).await;
        assert_eq!(v, authenticated("sip:bob@example.com"));
        let v = a.require_identity(v, "sip:alice@example.com", &c, ADDR, NOW);
        assert_eq!(v, challenged(Label::Failed, false));
    }
    let c = answer(&ch, Algorithm::Md5, "bob", "builder", 4);
    assert_eq!(
        a.authenticate(&c, "198.51.100.1", NOW, &store)
            .await
            .unwrap()
            .label,
        Label::Throttled,
        "counted against bob"
    );
    // The bound identity itself passes, compared as an address of record.
    let c = answer(&ch, Algorithm::Md5, "bob", "builder", 5);
    let v = a.require_identity(
        authenticated("sip:bob@example.com"),
        "sip:bob@EXAMPLE.com",
        &c,
        ADDR,
        NOW + 60,
    );
    assert_eq!(v, authenticated("sip:bob@example.com"));
    // Non-sign-ins pass through unchanged.
    let v = a.require_identity(
        challenged(Label::Stale, true),
        "sip:alice@example.com",
        &c,
        ADDR,
        NOW + 60,
    );
    assert_eq!(v, challenged(Label::Stale, true));
}

#[test]
fn user_names_are_cut_and_cleaned_for_logs() {
    assert_eq!(loggable("alice"), "alice");
    let long = "x".repeat(8 * 1024);
    let cut = loggable(&long);
    assert_eq!(cut.chars().count(), LOGGED_USERNAME_CHARS + 1);
    assert!(cut.ends_with('…'));
    assert_eq!(loggable("a\r\nINFO forged"), "a??INFO forged");
    assert_eq!(
        loggable(&"é".repeat(64)),
        "é".repeat(64),
        "counted in characters"
    );
    let c = answer(
        &Authenticator::new(config()).challenge(false, NOW),
        Algorithm::Md5,
        &long,
        "pw",
        1,
    );
    assert!(format!("{c:?}").len() < 200, "Debug cuts the user name too");
}
