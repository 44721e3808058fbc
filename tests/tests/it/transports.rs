//! SIP over UDP, TCP and TLS (RFC 3261 §18, §26), with real processes: a subscription over
//! each, a digest sign-in over UDP and over TCP; over UDP the NOTIFY client transaction's retransmissions
//! (T1 doubling to T2, Timer F ends the dialog; §17.1.2.2) and the SUBSCRIBE server
//! transaction's handling of retransmitted requests (§17.2.2: the same final response, never
//! a second dialog).

use conflist_tests::client::document_of;
use conflist_tests::process::metric;
use conflist_tests::tls::{TestPki, test_dir};
use conflist_tests::transport_client::{SipClient, Wire};
use conflist_tests::{
    Auth, EVENT_TIMEOUT, Proxy, Server, ServerOptions, SipDgramClient, SipStreamClient, TestDb,
    set_password, spawn_proxy, spawn_server,
};
use sip::{CSeq, HeaderName, Message, Request, Response, SubscriptionState, Via};
use std::time::Duration;
use tokio::time::Instant;

const ALICE_PASSWORD: &str = "correct horse battery staple";

/// A fresh database, a server with `opts` and a proxy with `proxy_args`.
struct Stack {
    proxy: Proxy,
    server: Server,
    db: TestDb,
}

async fn stack(opts: ServerOptions, proxy_args: &[&str]) -> Stack {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &opts).await.expect("server");
    let proxy = spawn_proxy(&server, proxy_args).await.expect("proxy");
    Stack { proxy, server, db }
}

async fn udp_stack(extra: &[&str]) -> Stack {
    let mut args = vec!["--udp-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    stack(ServerOptions::default(), &args).await
}

fn udp(s: &Stack) -> &str {
    s.proxy
        .udp
        .as_deref()
        .expect("READY line names the udp listener")
}

fn top_via(headers: &sip::Headers) -> Via {
    let all = Via::parse_all(headers).expect("Via parses");
    all.into_iter().next().expect("a Via")
}

fn cseq(req: &Request) -> CSeq {
    CSeq::parse(req.headers.get(&HeaderName::CSEQ).expect("CSeq")).expect("CSeq parses")
}

fn to_tag(r: &Response) -> Option<String> {
    let to = sip::NameAddr::parse(r.headers.get(&HeaderName::TO)?).ok()?;
    to.tag().map(str::to_owned)
}

/// The 200 to a SUBSCRIBE sent by `c` came back to `c` with `c`'s Via: RFC 3581 §4 fills
/// the empty `rport` with the request's source port.
fn assert_our_via<W: Wire>(c: &SipClient<W>, r: &Response) {
    let via = top_via(&r.headers);
    assert_eq!(via.transport, c.transport(), "response Via: {via:?}");
    let port = c.local_addr().port().to_string();
    assert_eq!(
        via.params.value("rport"),
        Some(port.as_str()),
        "RFC 3581: the response's rport names our source port: {via:?}"
    );
}

/// SUBSCRIBE → 200 → NOTIFY with alice's list → 200, then unsubscribe → 200 → final NOTIFY
/// → 200. The NOTIFYs come over `c`'s transport from the proxy's `listener` address.
async fn subscribe_and_unsubscribe<W: Wire>(c: &mut SipClient<W>, listener: &str) {
    let transport = c.transport();
    let sub = c.subscribe("alice", 600).await.unwrap();
    assert_our_via(c, &sub.response);
    let mut dialog = sub.dialog;

    let n = c.recv_notify().await.unwrap();
    let body = String::from_utf8_lossy(&n.body);
    assert!(body.contains("<conference-list"), "NOTIFY body: {body}");
    assert_eq!(document_of(&n).unwrap().entity, "sip:alice@example.com");
    let via = top_via(&n.headers);
    assert_eq!(
        via.transport, transport,
        "NOTIFY Via over {transport}: {via:?}"
    );
    assert_eq!(
        format!("{}:{}", via.host, via.port.unwrap_or(0)),
        listener,
        "NOTIFY Via sent-by is the proxy's {transport} listener"
    );
    assert!(
        via.branch().is_some_and(|b| b.starts_with("z9hG4bK")),
        "NOTIFY branch: {via:?}"
    );
    let contact = n.headers.get(&HeaderName::CONTACT).expect("NOTIFY Contact");
    assert!(
        contact.contains(&format!("transport={}", transport.to_ascii_lowercase())),
        "NOTIFY Contact over {transport}: {contact}"
    );
    assert_eq!(
        n.uri.to_string(),
        format!(
            "sip:alice@{};transport={}",
            c.local_addr(),
            transport.to_ascii_lowercase()
        ),
        "NOTIFY goes to our Contact"
    );
    c.respond(&n, 200).await.unwrap();

    c.resubscribe(&mut dialog, 0).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "unsubscribe over {transport}");
    let n = c.recv_notify().await.unwrap();
    let state = SubscriptionState::parse(
        n.headers
            .get(&HeaderName::SUBSCRIPTION_STATE)
            .expect("Subscription-State"),
    )
    .unwrap();
    assert!(
        matches!(state, SubscriptionState::Terminated { .. }),
        "{state:?}"
    );
    c.respond(&n, 200).await.unwrap();
}

#[tokio::test]
async fn subscribe_over_udp() {
    let s = udp_stack(&[]).await;
    let mut c = SipDgramClient::udp(udp(&s)).await.unwrap();
    subscribe_and_unsubscribe(&mut c, udp(&s)).await;
}

#[tokio::test]
async fn subscribe_over_tcp() {
    let s = stack(ServerOptions::default(), &["--tcp-listen", "127.0.0.1:0"]).await;
    let tcp = s
        .proxy
        .tcp
        .as_deref()
        .expect("READY line names the tcp listener");
    let mut c = SipStreamClient::tcp(tcp).await.unwrap();
    subscribe_and_unsubscribe(&mut c, tcp).await;
}

/// Acceptance 5: a TLS client with a generated certificate subscribes (RFC 3261 §26.2: SIP
/// over TLS, Via transport TLS).
#[tokio::test]
async fn a_tls_client_with_a_generated_certificate_subscribes() {
    let pki = TestPki::generate(&test_dir("sip-tls")).unwrap();
    let (cert, key) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
    );
    let s = stack(
        ServerOptions::default(),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    )
    .await;
    let tls = s
        .proxy
        .tls
        .as_deref()
        .expect("READY line names the tls listener");
    let mut c = SipStreamClient::tls(tls, pki.client_config().unwrap())
        .await
        .unwrap();
    subscribe_and_unsubscribe(&mut c, tls).await;

    // A client that does not trust the certificate does not get in.
    let other = TestPki::generate(&test_dir("sip-tls-other")).unwrap();
    assert!(
        SipStreamClient::tls(tls, other.client_config().unwrap())
            .await
            .is_err(),
        "a client trusting another CA completed the handshake"
    );
}

/// A server with sign-in on and alice's password set.
async fn secured(proxy_args: &[&str]) -> Stack {
    let s = stack(
        ServerOptions {
            auth: true,
            ..ServerOptions::default()
        },
        proxy_args,
    )
    .await;
    // Demo data (and so the credentials table) exists once the server is READY.
    set_password(&s.db.url, "alice", ALICE_PASSWORD)
        .await
        .unwrap();
    s
}

/// SUBSCRIBE → 401 → SUBSCRIBE with a digest answer → 200 → NOTIFY with the list, for MD5 and
/// SHA-256; a wrong password gets 401 again and no list.
async fn signs_in<W: Wire>(mut connect: impl AsyncFnMut() -> SipClient<W>) {
    for auth in [
        Auth::md5("alice", ALICE_PASSWORD),
        Auth::sha256("alice", ALICE_PASSWORD),
    ] {
        let mut c = connect().await;
        let transport = c.transport();
        c.auth = auth.clone();
        let call_id = format!("signin-{}", rand::random::<u32>());
        let (r, cseq) = c.subscribe_answer("alice", &call_id, 600).await.unwrap();
        assert_eq!(
            cseq, 2,
            "the first SUBSCRIBE was challenged ({auth:?}, {transport})"
        );
        assert!(c.last_authorization.is_some());
        assert_eq!(r.status.as_u16(), 200, "{auth:?} over {transport}: {r:?}");
        let n = c.recv_notify().await.unwrap();
        c.respond(&n, 200).await.unwrap();
        assert_eq!(document_of(&n).unwrap().entity, "sip:alice@example.com");
    }

    let mut c = connect().await;
    c.auth = Auth::md5("alice", "wrong");
    let (r, cseq) = c
        .subscribe_answer("alice", "signin-wrong", 600)
        .await
        .unwrap();
    assert_eq!((r.status.as_u16(), cseq), (401, 2), "wrong password: {r:?}");
    // Nothing else follows: the next message is the answer to an OPTIONS.
    let branch = c.next_branch();
    let options = format!(
        "OPTIONS sip:example.com SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nTo: <sip:example.com>\r\nFrom: <sip:x@example.com>;tag=1\r\nCall-ID: after-refusal\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        c.via(&branch)
    );
    c.send_text(&options).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.headers.get(&HeaderName::CALL_ID), Some("after-refusal"));
}

#[tokio::test]
async fn digest_sign_in_over_udp() {
    let s = secured(&["--udp-listen", "127.0.0.1:0"]).await;
    let addr = udp(&s).to_owned();
    signs_in(async || SipDgramClient::udp(&addr).await.unwrap()).await;
}

#[tokio::test]
async fn digest_sign_in_over_tcp() {
    let s = secured(&["--tcp-listen", "127.0.0.1:0"]).await;
    let addr = s
        .proxy
        .tcp
        .clone()
        .expect("READY line names the tcp listener");
    signs_in(async || SipStreamClient::tcp(&addr).await.unwrap()).await;
}

/// Polls the gauge or counter `name` on `admin` until it is `want` or `within` has passed.
async fn settles(admin: &str, name: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = metric(admin, name).await.unwrap();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acceptance 2. Over UDP a NOTIFY nobody answers is retransmitted after T1, then at doubling
/// intervals capped at T2 (RFC 3261 §17.1.2.2: 0.5, 1, 2, 4 s with the defaults T1 500 ms,
/// T2 4 s) until Timer F (here `--notify-timeout 8s`); then no further copy comes, and the
/// dialog ends at the proxy and at the server.
///
/// Tolerance: each gap may differ from its nominal value by max(150 ms, 25 %) — tight enough
/// that a constant or non-doubling interval fails, loose enough for a shared 2-core machine.
#[tokio::test]
async fn an_unanswered_notify_is_retransmitted_until_timer_f() {
    const TIMER_F: Duration = Duration::from_secs(8);
    let s = udp_stack(&["--notify-timeout", "8s"]).await;
    let mut c = SipDgramClient::udp(udp(&s)).await.unwrap();
    c.subscribe("alice", 600).await.unwrap();
    let first = c.recv_notify().await.unwrap();
    let t0 = Instant::now();
    let branch = top_via(&first.headers).branch().map(str::to_owned);
    let seq = cseq(&first);

    // Collect everything until well past Timer F (the copy that would follow the one at
    // 7.5 s is due at 11.5 s), meanwhile checking that the proxy counts the dialog; the
    // two run concurrently so that every arrival is stamped when it comes.
    let watch_until = t0 + TIMER_F + Duration::from_millis(4_500);
    let mut arrivals = vec![Duration::ZERO];
    let collect = async {
        loop {
            let left = watch_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(m) = c.recv_within(left).await.unwrap() else {
                break;
            };
            let at = t0.elapsed();
            let Message::Request(copy) = m else {
                panic!("unexpected response at {at:?}: {m:?}");
            };
            assert_eq!(copy.method, sip::Method::Notify, "at {at:?}: {copy:?}");
            assert_eq!(
                (
                    top_via(&copy.headers).branch().map(str::to_owned),
                    cseq(&copy)
                ),
                (branch.clone(), seq.clone()),
                "at {at:?} a NOTIFY that is not a retransmission of the first (same branch \
                 and CSeq) arrived"
            );
            assert_eq!(
                copy.body, first.body,
                "a retransmission carries the same body"
            );
            arrivals.push(at);
        }
    };
    let counted = settles(&s.proxy.admin, "conflist_proxy_dialogs", 1.0, TIMER_F / 2);
    tokio::join!(collect, counted);
    eprintln!("the NOTIFY and its copies arrived at {arrivals:?}");

    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let nominal = [500u64, 1_000, 2_000, 4_000].map(Duration::from_millis);
    assert_eq!(
        gaps.len(),
        nominal.len(),
        "expected the NOTIFY and 4 retransmissions before Timer F (8 s) and none after; \
         arrival times since the first: {arrivals:?}"
    );
    for (i, (gap, want)) in gaps.iter().zip(nominal).enumerate() {
        let slack = (want / 4).max(Duration::from_millis(150));
        assert!(
            gap.abs_diff(want) <= slack,
            "gap {i} is {gap:?}, want {want:?} ± {slack:?}; arrivals: {arrivals:?}"
        );
    }
    assert!(
        arrivals.iter().all(|a| *a < TIMER_F),
        "a copy after Timer F: {arrivals:?}"
    );

    // Timer F ended the dialog; the server was told and dropped its subscription.
    let left = (t0 + TIMER_F + EVENT_TIMEOUT).saturating_duration_since(Instant::now());
    settles(&s.proxy.admin, "conflist_proxy_dialogs", 0.0, left).await;
    settles(
        &s.server.admin,
        "conflist_server_subscriptions",
        0.0,
        EVENT_TIMEOUT,
    )
    .await;
    let retransmissions = metric(
        &s.proxy.admin,
        "conflist_proxy_notify_retransmissions_total",
    )
    .await
    .unwrap();
    assert!(
        retransmissions >= 4.0,
        "conflist_proxy_notify_retransmissions_total = {retransmissions}"
    );
}

/// After a subscription was answered and its NOTIFY acknowledged, nothing arrives within a
/// second, and the proxy and the server each hold `dialogs` dialogs.
async fn quiet_with_dialogs(c: &mut SipDgramClient, s: &Stack, dialogs: f64) {
    if let Some(m) = c.recv_within(Duration::from_secs(1)).await.unwrap() {
        panic!("nothing more was due, got {m:?}");
    }
    assert_eq!(
        metric(&s.proxy.admin, "conflist_proxy_dialogs")
            .await
            .unwrap(),
        dialogs,
        "proxy dialogs"
    );
    assert_eq!(
        metric(&s.server.admin, "conflist_server_subscriptions")
            .await
            .unwrap(),
        dialogs,
        "server subscriptions"
    );
}

/// Acceptance 3. Over UDP an initial SUBSCRIBE sent again with the same bytes (same branch)
/// after its 200 gets the same response again (RFC 3261 §17.2.2: a completed non-INVITE server
/// transaction re-sends its final response) and never a second dialog or NOTIFY.
#[tokio::test]
async fn a_retransmitted_subscribe_gets_the_same_answer_and_no_second_dialog() {
    let s = udp_stack(&[]).await;
    let mut c = SipDgramClient::udp(udp(&s)).await.unwrap();
    let req = c.initial_subscribe(
        "alice",
        "retransmitted-subscribe",
        "Accept: application/conference-list+xml\r\nExpires: 600\r\n",
    );
    c.send_text(&req).await.unwrap();
    let first = c.recv_response().await.unwrap();
    assert_eq!(first.status.as_u16(), 200, "{first:?}");
    let tag = to_tag(&first).expect("200 with a To-tag");
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();

    c.send_text(&req).await.unwrap();
    let again = c.recv_response().await.unwrap();
    assert_eq!(again.status, first.status, "{again:?}");
    assert_eq!(to_tag(&again).as_deref(), Some(tag.as_str()), "same To-tag");
    for h in [
        HeaderName::VIA,
        HeaderName::CSEQ,
        HeaderName::CALL_ID,
        HeaderName::EXPIRES,
    ] {
        assert_eq!(again.headers.get(&h), first.headers.get(&h), "{h:?}");
    }
    quiet_with_dialogs(&mut c, &s, 1.0).await;
}

/// Acceptance 3, second half: a retransmission that arrives while the first copy is still
/// being served (sent back to back; the 200 needs a round trip to the server, so the copy
/// is in before it) is absorbed (RFC 3261 §17.2.2, Trying state): one 200, one NOTIFY, one
/// dialog.
#[tokio::test]
async fn a_retransmission_before_the_answer_is_absorbed() {
    let s = udp_stack(&[]).await;
    let mut c = SipDgramClient::udp(udp(&s)).await.unwrap();
    let req = c.initial_subscribe(
        "alice",
        "early-retransmission",
        "Accept: application/conference-list+xml\r\nExpires: 600\r\n",
    );
    c.send_text(&req).await.unwrap();
    c.send_text(&req).await.unwrap();
    let r = c.recv_response().await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{r:?}");
    let n = c.recv_notify().await.unwrap();
    c.respond(&n, 200).await.unwrap();
    quiet_with_dialogs(&mut c, &s, 1.0).await;
}
