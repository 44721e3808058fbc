//! Sign-in through the proxy, with real processes and PostgreSQL: digest (MD5 and SHA-256,
//! RFC 3261 §22.4, RFC 8760) and bearer tokens (RFC 8898), verified by the subscriber-server.
//! Nobody reads a conference list that is not theirs.

use conflist_tests::auth::{Challenge, DigestInput, authorization};
use conflist_tests::client::document_of;
use conflist_tests::tls::test_dir;
use conflist_tests::{
    Auth, Proxy, Server, ServerOptions, SipWsClient, TestDb, set_password, spawn_proxy,
    spawn_server,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use sip::{HeaderName, Response};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

const ALICE_PASSWORD: &str = "correct horse battery staple";
const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef";
const AUDIENCE: &str = "conflist";

/// A database with alice's and bob's passwords, a JWT secret file, and the server's flags.
struct Secured {
    db: TestDb,
    dir: PathBuf,
    args: Vec<String>,
}

async fn secured(extra: &[&str]) -> Secured {
    let db = TestDb::create().await.expect("test database");
    let dir = test_dir("auth");
    std::fs::create_dir_all(&dir).unwrap();
    let jwt = dir.join("jwt.secret");
    std::fs::write(&jwt, format!("{JWT_SECRET}\n")).unwrap();
    let nonce = dir.join("nonce.secret");
    std::fs::write(&nonce, "shared-nonce-secret\n").unwrap();
    let grpc = dir.join("grpc.secret");
    std::fs::write(&grpc, "proxy-hop-secret\n").unwrap();
    let mut args: Vec<String> = [
        "--jwt-secret-file",
        jwt.to_str().unwrap(),
        "--jwt-audience",
        AUDIENCE,
        "--auth-secret-file",
        nonce.to_str().unwrap(),
        "--grpc-secret-file",
        grpc.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Secured { db, dir, args }
}

impl Secured {
    /// A proxy in front of `server` with the proxy-hop secret.
    async fn proxy(&self, server: &Server) -> Proxy {
        let secret = self.dir.join("grpc.secret");
        spawn_proxy(server, &["--grpc-secret-file", secret.to_str().unwrap()])
            .await
            .expect("proxy")
    }

    async fn server(&self) -> Server {
        let s = spawn_server(
            &self.db.url,
            &ServerOptions {
                auth: true,
                extra_args: self.args.clone(),
                ..ServerOptions::default()
            },
        )
        .await
        .expect("server");
        // Demo data (and so the credentials table) exists once the server is READY.
        set_password(&self.db.url, "alice", ALICE_PASSWORD)
            .await
            .unwrap();
        set_password(&self.db.url, "bob", "bobs password")
            .await
            .unwrap();
        s
    }
}

async fn client(proxy: &Proxy, auth: Auth) -> SipWsClient {
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    c.auth = auth;
    c
}

/// The final answer to a SUBSCRIBE for `user`'s list, signing in with `auth`.
async fn answer(proxy: &Proxy, user: &str, auth: Auth) -> (SipWsClient, Response) {
    let mut c = client(proxy, auth).await;
    let call_id = format!("auth-{}", rand::random::<u32>());
    let (r, _) = c.subscribe_answer(user, &call_id, 600).await.unwrap();
    (c, r)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, exp_from_now: i64, aud: &str, secret: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "aud": aud,
        "iat": now(),
        "exp": (now() as i64 + exp_from_now),
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn expect_list(c: &mut SipWsClient, user: &str) {
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    let doc = document_of(&n).unwrap();
    assert_eq!(doc.entity, format!("sip:{user}@example.com"));
    assert!(!doc.entries.is_empty(), "{user}'s list is not empty");
}

/// After a refused SUBSCRIBE, the next message on the flow is the answer to an OPTIONS: no
/// NOTIFY (no list) was sent in between.
async fn no_notify_follows(c: &mut SipWsClient) {
    let options = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/WSS x.invalid;branch=z9hG4bKopt\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:x@example.com>;tag=1\r\nCall-ID: after-refusal\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    c.send_text(options).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.headers.get(&HeaderName::CALL_ID), Some("after-refusal"));
}

#[tokio::test]
async fn digest_sign_in_with_md5_and_sha256() {
    let s = secured(&[]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;

    // No credentials: 401 offering SHA-256 first and MD5 last, both qop=auth, one nonce.
    let (mut c, r) = answer(&proxy, "alice", Auth::None).await;
    assert_eq!(r.status.as_u16(), 401);
    let challenges = Challenge::all(&r).unwrap();
    let algorithms: Vec<&str> = challenges.iter().map(|c| c.algorithm.as_str()).collect();
    assert_eq!(algorithms, ["SHA-256", "MD5"]);
    for ch in &challenges {
        assert_eq!(ch.realm, "example.com");
        assert_eq!(ch.qop.as_deref(), Some("auth"));
        assert!(!ch.stale);
    }
    no_notify_follows(&mut c).await;

    // Wrong password: 401 again, and no list.
    let (mut c, r) = answer(&proxy, "alice", Auth::md5("alice", "wrong")).await;
    assert_eq!(r.status.as_u16(), 401);
    no_notify_follows(&mut c).await;

    // Right password, MD5 and SHA-256: 200 and the list.
    for auth in [
        Auth::md5("alice", ALICE_PASSWORD),
        Auth::sha256("alice", ALICE_PASSWORD),
    ] {
        let (mut c, r) = answer(&proxy, "alice", auth.clone()).await;
        assert_eq!(r.status.as_u16(), 200, "{auth:?}");
        expect_list(&mut c, "alice").await;
    }
}

#[tokio::test]
async fn bearer_tokens_are_checked_for_signature_expiry_and_audience() {
    let s = secured(&[]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;

    let (mut c, r) = answer(
        &proxy,
        "alice",
        Auth::Bearer(token("alice", 600, AUDIENCE, JWT_SECRET)),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200);
    expect_list(&mut c, "alice").await;

    let good = token("alice", 600, AUDIENCE, JWT_SECRET);
    let mut tampered = good.clone();
    // Flip one character of the signature.
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let refused = [
        ("expired", token("alice", -600, AUDIENCE, JWT_SECRET)),
        ("tampered", tampered),
        (
            "wrong key",
            token("alice", 600, AUDIENCE, "some other secret"),
        ),
        (
            "wrong audience",
            token("alice", 600, "another-service", JWT_SECRET),
        ),
    ];
    for (what, t) in refused {
        let (mut c, r) = answer(&proxy, "alice", Auth::Bearer(t)).await;
        assert_eq!(r.status.as_u16(), 401, "{what} token");
        no_notify_follows(&mut c).await;
    }
}

#[tokio::test]
async fn es256_tokens_verify_against_a_public_key_file() {
    let dir = test_dir("es256");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = dir.join("jwt-public.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let s = secured(&["--jwt-public-key-file", public.to_str().unwrap()]).await;
    // Only the public key: drop the HS256 secret flags the helper added.
    let mut s = s;
    let pos = s
        .args
        .iter()
        .position(|a| a == "--jwt-secret-file")
        .unwrap();
    s.args.drain(pos..pos + 2);
    let server = s.server().await;
    let proxy = s.proxy(&server).await;
    let claims =
        serde_json::json!({"sub": "sip:alice@example.com", "aud": AUDIENCE, "exp": now() + 600});
    let t = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    let (mut c, r) = answer(&proxy, "alice", Auth::Bearer(t)).await;
    assert_eq!(r.status.as_u16(), 200);
    expect_list(&mut c, "alice").await;
    let (_, r) = answer(
        &proxy,
        "alice",
        Auth::Bearer(token("alice", 600, AUDIENCE, JWT_SECRET)),
    )
    .await;
    assert_eq!(r.status.as_u16(), 401, "an HS256 token is not accepted");
    drop(s.dir);
}

#[tokio::test]
async fn alice_signed_in_cannot_read_bobs_list_and_spoofing_gets_nothing() {
    let s = secured(&[]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;

    let (mut c, r) = answer(&proxy, "bob", Auth::md5("alice", ALICE_PASSWORD)).await;
    assert_eq!(r.status.as_u16(), 403);
    no_notify_follows(&mut c).await;
    let (mut c, r) = answer(
        &proxy,
        "bob",
        Auth::Bearer(token("alice", 600, AUDIENCE, JWT_SECRET)),
    )
    .await;
    assert_eq!(r.status.as_u16(), 403);
    no_notify_follows(&mut c).await;

    // The spoofed SUBSCRIBE of the issue: From bob, for bob, no credentials, Expires 0.
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let req = c
        .initial_subscribe(
            "bob",
            "spoof-1",
            "Accept: application/conference-list+xml\r\nExpires: 0\r\n",
        )
        .replace("From: \"bob\" <sip:bob@", "From: <sip:bob@");
    c.send_text(&req).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 401);
    no_notify_follows(&mut c).await;
}

#[tokio::test]
async fn unknown_users_get_the_same_answer_as_wrong_passwords() {
    let s = secured(&[]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;

    // The same request on two flows; only the username of the credentials differs: a real
    // user with a wrong password, and nobody.
    let mut raw = Vec::new();
    for username in ["alice", "nosuchuser"] {
        let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
        let req = c.initial_subscribe("alice", "same-call", "Expires: 600\r\n");
        c.send_text(&req).await.unwrap();
        let challenge = Challenge::all(&c.recv_response().await.unwrap()).unwrap();
        let md5 = challenge.iter().find(|c| c.algorithm == "MD5").unwrap();
        let authz = authorization(
            md5,
            &DigestInput {
                username,
                password: "wrong",
                method: "SUBSCRIBE",
                uri: "sip:alice@example.com",
                nc: 1,
                cnonce: "c0ffee",
            },
        );
        let req = c.initial_subscribe_cseq(
            "alice",
            "same-call",
            2,
            &format!("Expires: 600\r\nAuthorization: {authz}\r\n"),
        );
        c.send_text(&req).await.unwrap();
        let bytes = c.recv_raw().await.unwrap();
        raw.push(normalise(&String::from_utf8(bytes).unwrap()));
    }
    assert!(raw[0].starts_with("SIP/2.0 401 "), "{}", raw[0]);
    assert_eq!(raw[0], raw[1], "unknown user and wrong password differ");
}

/// Masks what legitimately differs between two answers: nonces, the To-tag the proxy
/// chose, the Via branch, and the client's random id in Via and From.
fn normalise(resp: &str) -> String {
    resp.lines()
        .map(|line| {
            let mut l = line.to_owned();
            for key in ["nonce=\"", ";tag=", "branch=", "Via: SIP/2.0/WSS "] {
                if let Some(i) = l.find(key) {
                    let start = i + key.len();
                    let end = l[start..]
                        .find(['"', ';', ',', '>', ' '])
                        .map_or(l.len(), |e| start + e);
                    l.replace_range(start..end, "*");
                }
            }
            l
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn replayed_nonce_counts_are_refused_and_stale_nonces_retry() {
    let s = secured(&["--nonce-lifetime", "2s"]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;

    // Sign in, then replay the very same Authorization (same nonce, same nc) on a new flow.
    let (mut c, r) = answer(&proxy, "alice", Auth::md5("alice", ALICE_PASSWORD)).await;
    assert_eq!(r.status.as_u16(), 200);
    expect_list(&mut c, "alice").await;
    let replayed = c.last_authorization.clone().unwrap();
    let mut thief = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let req = thief.initial_subscribe(
        "alice",
        "replay-1",
        &format!("Expires: 600\r\nAuthorization: {replayed}\r\n"),
    );
    thief.send_text(&req).await.unwrap();
    let r = thief.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 401, "a replayed nonce count is refused");
    no_notify_follows(&mut thief).await;
    let (_, metrics) = conflist_tests::process::http_get(&server.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("conflist_server_auth_total{outcome=\"replayed\"} 1"),
        "the replay is counted:\n{metrics}"
    );

    // An expired nonce with a correct response: 401 with stale=true; the retry succeeds.
    let mut c = SipWsClient::connect(&proxy.ws_url).await.unwrap();
    let req = c.initial_subscribe("alice", "stale-1", "Expires: 600\r\n");
    c.send_text(&req).await.unwrap();
    let first = Challenge::all(&c.recv_response().await.unwrap()).unwrap();
    let md5 = first.iter().find(|c| c.algorithm == "MD5").unwrap().clone();
    // Let the 2 s nonce lifetime pass (time itself is what is tested here).
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let answer_with = |ch: &Challenge, cseq: u32, c: &mut SipWsClient| {
        let authz = authorization(
            ch,
            &DigestInput {
                username: "alice",
                password: ALICE_PASSWORD,
                method: "SUBSCRIBE",
                uri: "sip:alice@example.com",
                nc: 1,
                cnonce: "5eed",
            },
        );
        c.initial_subscribe_cseq(
            "alice",
            "stale-1",
            cseq,
            &format!("Expires: 600\r\nAuthorization: {authz}\r\n"),
        )
    };
    let req = answer_with(&md5, 2, &mut c);
    c.send_text(&req).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 401);
    let fresh = Challenge::all(&r).unwrap();
    assert!(
        fresh.iter().all(|c| c.stale),
        "stale=true on every challenge: {fresh:?}"
    );
    let md5 = fresh.iter().find(|c| c.algorithm == "MD5").unwrap().clone();
    assert_ne!(md5.nonce, first[0].nonce);
    let req = answer_with(&md5, 3, &mut c);
    c.send_text(&req).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 200);
    expect_list(&mut c, "alice").await;
}

#[tokio::test]
async fn a_nonce_from_one_server_is_accepted_by_another() {
    let s = secured(&[]).await;
    let first = s.server().await;
    let second = spawn_server(
        &s.db.url,
        &ServerOptions {
            auth: true,
            demo: false,
            extra_args: s.args.clone(),
            ..ServerOptions::default()
        },
    )
    .await
    .unwrap();
    let p1 = s.proxy(&first).await;
    let p2 = s.proxy(&second).await;

    let mut c1 = SipWsClient::connect(&p1.ws_url).await.unwrap();
    let req = c1.initial_subscribe("alice", "cross-1", "Expires: 600\r\n");
    c1.send_text(&req).await.unwrap();
    let challenges = Challenge::all(&c1.recv_response().await.unwrap()).unwrap();
    let sha = challenges
        .iter()
        .find(|c| c.algorithm == "SHA-256")
        .unwrap();
    let authz = authorization(
        sha,
        &DigestInput {
            username: "alice",
            password: ALICE_PASSWORD,
            method: "SUBSCRIBE",
            uri: "sip:alice@example.com",
            nc: 1,
            cnonce: "abcd",
        },
    );
    let mut c2 = SipWsClient::connect(&p2.ws_url).await.unwrap();
    let req = c2.initial_subscribe_cseq(
        "alice",
        "cross-1",
        2,
        &format!("Expires: 600\r\nAuthorization: {authz}\r\n"),
    );
    c2.send_text(&req).await.unwrap();
    assert_eq!(c2.recv_response().await.unwrap().status.as_u16(), 200);
    expect_list(&mut c2, "alice").await;
}

#[tokio::test]
async fn refreshes_on_the_signed_in_flow_need_no_credentials_but_wrong_ones_are_refused() {
    let s = secured(&[]).await;
    let server = s.server().await;
    let proxy = s.proxy(&server).await;
    let mut c = client(
        &proxy,
        Auth::Bearer(token("alice", 600, AUDIENCE, JWT_SECRET)),
    )
    .await;
    let mut dialog = c.subscribe("alice", 600).await.unwrap().dialog;
    expect_list(&mut c, "alice").await;

    // SIP.js sends its token on the initial SUBSCRIBE only: the refresh has none.
    c.resubscribe(&mut dialog, 300).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 200);
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    // A refresh that does carry credentials has them checked: a bad token is a 401, and
    // the subscription goes on as it was.
    c.resubscribe_with(&mut dialog, 300, "Authorization: Bearer not.a.token\r\n")
        .await
        .unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 401);
    c.resubscribe(&mut dialog, 300).await.unwrap();
    assert_eq!(c.recv_response().await.unwrap().status.as_u16(), 200);
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();

    // A second subscription on the same flow rides on the flow's identity.
    let (r, _) = c
        .subscribe_answer("alice", "same-flow-2", 600)
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 200);
    expect_list(&mut c, "alice").await;
    // …but only for alice's own list.
    let (r, _) = c.subscribe_answer("bob", "same-flow-3", 600).await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
}
