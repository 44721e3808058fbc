//! The proxy ⇄ server hop seen by a caller that is not our proxy: a raw gRPC client against a
//! real `conflist-server`. The server honours `flow_identity` only from an authenticated hop,
//! refuses sessions without the shared secret when one is configured, and gives a refresh
//! that signs in as another user the answer of a wrong password.

use conflist_tests::tls::test_dir;
use conflist_tests::{EVENT_TIMEOUT, Server, ServerOptions, TestDb, spawn_server};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use proto::v1::subscription_service_client::SubscriptionServiceClient;
use proto::v1::{
    Answer, AnswerStatus, Credentials, Notification, ProxyMessage, Refresh, ServerMessage,
    Subscribe, Unsubscribe, credentials, proxy_message, server_message,
};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status, Streaming};

const HOP_SECRET: &str = "hop-secret-0123456789";
const JWT_SECRET: &str = "grpc-hop-jwt-secret-0123456789abcdef";
const ALICE: &str = "sip:alice@example.com";

/// A server with sign-in on and `extra` flags.
async fn server(db: &TestDb, extra: &[String]) -> Server {
    spawn_server(
        &db.url,
        &ServerOptions {
            auth: true,
            extra_args: extra.to_vec(),
            ..ServerOptions::default()
        },
    )
    .await
    .expect("server")
}

/// Writes `--grpc-secret-file` and `--jwt-secret-file` and returns their flags.
fn secret_flags(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let hop = dir.join("grpc.secret");
    std::fs::write(&hop, format!("{HOP_SECRET}\n")).unwrap();
    let jwt = dir.join("jwt.secret");
    std::fs::write(&jwt, format!("{JWT_SECRET}\n")).unwrap();
    [
        "--grpc-secret-file",
        hop.to_str().unwrap(),
        "--jwt-secret-file",
        jwt.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// One `Session` stream, as a proxy holds it.
struct Hop {
    tx: mpsc::Sender<ProxyMessage>,
    rx: Streaming<ServerMessage>,
}

impl Hop {
    /// Opens a session on `server`, presenting `authorization: Bearer <secret>` when given.
    async fn open(server: &Server, secret: Option<&str>) -> Result<Hop, Status> {
        let channel = Endpoint::from_shared(server.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = SubscriptionServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(secret) = secret {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {secret}").parse().unwrap());
        }
        let response = tokio::time::timeout(EVENT_TIMEOUT, client.session(request))
            .await
            .expect("session answered in time")?;
        Ok(Hop {
            tx,
            rx: response.into_inner(),
        })
    }

    async fn send(&self, kind: proxy_message::Kind) {
        self.tx
            .send(ProxyMessage { kind: Some(kind) })
            .await
            .expect("session open");
    }

    /// The next message from the server.
    async fn next(&mut self) -> server_message::Kind {
        tokio::time::timeout(EVENT_TIMEOUT, self.rx.message())
            .await
            .expect("a server message in time")
            .expect("the stream did not fail")
            .expect("the stream did not end")
            .kind
            .expect("a message kind")
    }

    async fn answer(&mut self) -> Answer {
        match self.next().await {
            server_message::Kind::Answer(a) => a,
            other => panic!("expected an Answer, got {other:?}"),
        }
    }

    async fn notification(&mut self) -> Notification {
        match self.next().await {
            server_message::Kind::Notification(n) => n,
            other => panic!("expected a Notification, got {other:?}"),
        }
    }

    /// A Subscribe for `user`'s own list from `user`, with only a flow identity or only
    /// `credentials`.
    async fn subscribe(
        &self,
        id: &str,
        request_id: u64,
        user: &str,
        flow_identity: &str,
        credentials: Option<Credentials>,
    ) {
        self.send(proxy_message::Kind::Subscribe(Subscribe {
            subscription_id: id.into(),
            request_id,
            subscriber_uri: user.into(),
            requester_uri: user.into(),
            credentials,
            event: "conference-list".into(),
            accept: vec![],
            expires: Some(600),
            resume_version: None,
            client_address: "192.0.2.10:5060".into(),
            flow_identity: flow_identity.into(),
            window: None,
            max_body_bytes: None,
        }))
        .await;
    }

    async fn unsubscribe(&self, id: &str) {
        self.send(proxy_message::Kind::Unsubscribe(Unsubscribe {
            subscription_id: id.into(),
        }))
        .await;
    }
}

fn status(a: &Answer) -> AnswerStatus {
    AnswerStatus::try_from(a.status).unwrap()
}

fn bearer(sub: &str) -> Credentials {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + 600});
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    Credentials {
        kind: Some(credentials::Kind::BearerToken(token)),
    }
}

#[tokio::test]
async fn a_flow_identity_over_an_unauthenticated_hop_is_challenged() {
    let db = TestDb::create().await.expect("test database");
    let s = server(&db, &[]).await;
    let mut hop = Hop::open(&s, None).await.expect("no secret configured");

    hop.subscribe("s1", 1, ALICE, ALICE, None).await;
    let a = hop.answer().await;
    assert_eq!(
        (a.subscription_id.as_str(), a.request_id),
        ("s1", 1),
        "{a:?}"
    );
    assert_eq!(status(&a), AnswerStatus::Unauthorized, "{a:?}");
    let challenge = a.challenge.expect("a digest challenge");
    assert!(!challenge.nonce.is_empty());
    assert_eq!(a.identity, "");

    // No subscription exists: a refresh of it is the next answer, with no Notification
    // before it (the server would have sent alice's document right after an OK).
    hop.send(proxy_message::Kind::Refresh(Refresh {
        subscription_id: "s1".into(),
        request_id: 2,
        expires: Some(600),
        credentials: None,
        client_address: "192.0.2.10:5060".into(),
    }))
    .await;
    let a = hop.answer().await;
    assert_eq!(a.request_id, 2);
    assert_eq!(status(&a), AnswerStatus::NoSuchSubscription, "{a:?}");
    hop.unsubscribe("s1").await;
}

#[tokio::test]
async fn with_a_hop_secret_only_callers_presenting_it_get_sessions() {
    let db = TestDb::create().await.expect("test database");
    let dir = test_dir("grpc-hop");
    let s = server(&db, &secret_flags(&dir)).await;

    let refused = Hop::open(&s, None).await.err().expect("no secret: refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refused = Hop::open(&s, Some("not-the-secret"))
        .await
        .err()
        .expect("wrong secret: refused");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    let mut hop = Hop::open(&s, Some(HOP_SECRET)).await.expect("the secret");
    hop.subscribe("s1", 1, ALICE, ALICE, None).await;
    let a = hop.answer().await;
    assert_eq!(status(&a), AnswerStatus::Ok, "{a:?}");
    assert_eq!(a.identity, ALICE);
    let n = hop.notification().await;
    assert_eq!(n.subscription_id, "s1");
    assert_eq!(n.version, 0);
    assert_eq!(n.content_type, document::CONTENT_TYPE);
    let doc = document::ConferenceList::parse(&n.body).unwrap();
    assert_eq!(doc.entity, ALICE);
    let mut entities: Vec<&str> = doc.entries.iter().map(document::Entry::entity).collect();
    entities.sort_unstable();
    assert_eq!(
        entities,
        [
            "sip:1001@conf.example.com",
            "sip:1002@conf.example.com",
            "sip:1003@conf.example.com"
        ],
        "alice's conferences, none of bob's others"
    );
    hop.unsubscribe("s1").await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_refresh_signed_in_as_another_user_is_unauthorized_not_forbidden() {
    let db = TestDb::create().await.expect("test database");
    let dir = test_dir("grpc-hop");
    let s = server(&db, &secret_flags(&dir)).await;
    let mut hop = Hop::open(&s, Some(HOP_SECRET)).await.expect("the secret");

    hop.subscribe("alice-1", 1, ALICE, ALICE, None).await;
    assert_eq!(status(&hop.answer().await), AnswerStatus::Ok);
    assert_eq!(hop.notification().await.version, 0);

    // bob's token is valid: it opens bob's own list…
    hop.subscribe("bob-1", 2, "sip:bob@example.com", "", Some(bearer("bob")))
        .await;
    let a = hop.answer().await;
    assert_eq!(status(&a), AnswerStatus::Ok, "{a:?}");
    assert_eq!(a.identity, "sip:bob@example.com");
    assert_eq!(hop.notification().await.subscription_id, "bob-1");

    // …but on alice's subscription it gets what a wrong password gets.
    hop.send(proxy_message::Kind::Refresh(Refresh {
        subscription_id: "alice-1".into(),
        request_id: 3,
        expires: Some(600),
        credentials: Some(bearer("bob")),
        client_address: "192.0.2.10:5061".into(),
    }))
    .await;
    let a = hop.answer().await;
    assert_eq!((a.subscription_id.as_str(), a.request_id), ("alice-1", 3));
    assert_eq!(status(&a), AnswerStatus::Unauthorized, "{a:?}");
    assert!(a.challenge.is_some_and(|c| !c.nonce.is_empty()));
    assert_eq!(a.reason, "authentication required");
    hop.unsubscribe("alice-1").await;
    hop.unsubscribe("bob-1").await;
    std::fs::remove_dir_all(&dir).ok();
}
