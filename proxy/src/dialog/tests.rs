//! The dialog core driven without sockets: fixed seed, explicit clock.

use super::*;
use crate::notifier::{
    Answer, Challenge, Command, Credentials, Event, Notification, Outcome, Reason, State, Verdict,
    Window,
};
use sip::{Message, Request, Response, StatusCode};

fn cfg(max_dialogs: usize) -> DialogConfig {
    DialogConfig {
        local_host: "127.0.0.1:8080".into(),
        transport: Transport::Ws,
        timers: crate::transaction::Timers::default(),
        notify_timeout: Duration::from_secs(32),
        max_dialogs,
        max_route_set_size: 4096,
        flow_identity_lifetime: Duration::from_secs(600),
        notify_retry: NotifyRetry::default(),
    }
}

fn parse_req(raw: &str) -> Request {
    match sip::parse_message(raw.as_bytes()).unwrap() {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn subscribe(call_id: &str, to_tag: Option<&str>, cseq: u32, extra: &str) -> Request {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    parse_req(&format!(
        "SUBSCRIBE sip:alice@example.com SIP/2.0\r\n\
         Via: SIP/2.0/WSS abc.invalid;branch=z9hG4bK{call_id}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:alice@example.com>{to_tag}\r\n\
         From: <sip:alice@example.com>;tag=remote1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} SUBSCRIBE\r\n\
         Contact: <sip:xyz@abc.invalid;transport=ws>\r\n\
         Event: conference-list\r\n\
         {extra}Content-Length: 0\r\n\r\n"
    ))
}

fn sent(actions: &[Action]) -> Vec<&Action> {
    actions.iter().filter(|a| a.is_send()).collect()
}

fn response(a: &Action) -> &Response {
    match a {
        Action::Respond { response, .. } => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn request(a: &Action) -> &Request {
    match a {
        Action::Notify(r) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn notification(sub: &str, version: u64, state: State) -> Event {
    Event::Notification(Notification {
        sub: sub.into(),
        version,
        state,
        expires: 600,
        content_type: Some(CONTENT_TYPE.into()),
        body: format!("<v{version}/>").into_bytes(),
    })
}

fn ok(sub: &str, request_id: u64, granted: u32) -> Event {
    Event::Answer(Answer {
        sub: sub.into(),
        request_id,
        verdict: Verdict::Ok {
            granted,
            identity: None,
        },
    })
}

fn answer_to(notify: &Request, status: u16) -> Response {
    Response::for_request(notify, sip::StatusCode::new(status).unwrap())
}

/// An established dialog: returns (dialogs, subscription id, our tag).
fn established(now: Instant) -> (Dialogs, String, String) {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let actions = d.on_request(subscribe("c1", None, 1, "Expires: 600\r\n"), now);
    let Action::Route { sub, subscriber } = &actions[0] else {
        panic!("first action must route: {actions:?}")
    };
    assert_eq!(subscriber, "sip:alice@example.com");
    let sub = sub.clone();
    let actions = d.on_event(ok(&sub, 1, 600), now);
    let to = NameAddr::parse(response(&actions[0]).headers.get(&HeaderName::TO).unwrap()).unwrap();
    (d, sub, to.tag().unwrap().to_owned())
}

#[test]
fn initial_subscribe_routes_then_forwards_its_meaning() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let actions = d.on_request(
        subscribe(
            "c1",
            None,
            1,
            "Accept: application/conference-list+xml\r\nExpires: 600\r\n",
        ),
        Instant::now(),
    );
    assert_eq!(
        actions,
        vec![
            Action::Route {
                sub: "p-0-0".into(),
                subscriber: "sip:alice@example.com".into()
            },
            Action::Upstream(Command::Subscribe {
                sub: "p-0-0".into(),
                request_id: 1,
                subscriber: "sip:alice@example.com".into(),
                requester: "sip:alice@example.com".into(),
                event: "conference-list".into(),
                accept: vec!["application/conference-list+xml".into()],
                expires: Some(600),
                credentials: None,
                flow_identity: None,
                client_address: String::new(),
                window: Window::default(),
                max_body_bytes: None,
            }),
        ]
    );
}

fn with_event(event: &str) -> Request {
    let raw = subscribe("c1", None, 1, "").to_bytes();
    let raw = String::from_utf8(raw)
        .unwrap()
        .replace("Event: conference-list\r\n", &format!("Event: {event}\r\n"));
    parse_req(&raw)
}

#[test]
fn event_parameters_name_the_window_and_bad_ones_are_a_400() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let actions = d.on_request(
        with_event("conference-list;past=86400;ahead=1209600;max=200;x=y"),
        Instant::now(),
    );
    let Command::Subscribe { window, .. } = upstream_subscribe(&actions) else {
        unreachable!()
    };
    assert_eq!(
        *window,
        Window {
            past: Some(86_400),
            ahead: Some(1_209_600),
            max: Some(200)
        }
    );
    for bad in [
        "conference-list;max=-1",
        "conference-list;past",
        "conference-list;ahead=99999999999",
        "conference-list;max=1e3",
    ] {
        let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
        let actions = d.on_request(with_event(bad), Instant::now());
        let r = response(&actions[0]);
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.reason, "Bad Event parameter", "{bad}");
    }
}

#[test]
fn answer_ok_is_a_200_with_tag_contact_and_expires() {
    let now = Instant::now();
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, ""), now);
    let actions = d.on_event(ok("p-0-0", 1, 300), now);
    assert_eq!(actions.len(), 1);
    let r = response(&actions[0]);
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.headers.get(&HeaderName::EXPIRES), Some("300"));
    assert_eq!(
        r.headers.get(&HeaderName::CONTACT),
        Some("<sip:conflist@127.0.0.1:8080;transport=ws>")
    );
    let to = NameAddr::parse(r.headers.get(&HeaderName::TO).unwrap()).unwrap();
    assert_eq!(to.tag().map(str::len), Some(16));
    assert_eq!(r.headers.get(&HeaderName::CALL_ID), Some("c1"));
}

#[test]
fn notify_is_built_in_dialog_and_waits_for_the_previous_one() {
    let now = Instant::now();
    let (mut d, sub, our_tag) = established(now);
    let actions = d.on_event(notification(&sub, 0, State::Active), now);
    let n = request(&actions[0]).clone();
    assert_eq!(n.method, Method::Notify);
    assert_eq!(n.uri.to_string(), "sip:xyz@abc.invalid;transport=ws");
    let from = NameAddr::parse(n.headers.get(&HeaderName::FROM).unwrap()).unwrap();
    let to = NameAddr::parse(n.headers.get(&HeaderName::TO).unwrap()).unwrap();
    assert_eq!(from.tag(), Some(our_tag.as_str()));
    assert_eq!(to.tag(), Some("remote1"));
    assert_eq!(n.headers.get(&HeaderName::CSEQ), Some("1 NOTIFY"));
    assert_eq!(n.headers.get(&HeaderName::EVENT), Some("conference-list"));
    assert_eq!(
        n.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("active;expires=600")
    );
    assert_eq!(n.headers.get(&HeaderName::CONTENT_TYPE), Some(CONTENT_TYPE));
    assert!(
        n.headers
            .get(&HeaderName::VIA)
            .unwrap()
            .starts_with("SIP/2.0/WS 127.0.0.1:8080;branch=z9hG4bK")
    );
    assert_eq!(n.body, b"<v0/>");

    // A newer notification waits behind the one in flight (one transaction per dialog).
    assert!(
        d.on_event(notification(&sub, 1, State::Active), now)
            .is_empty()
    );
    let actions = d.on_response(&answer_to(&n, 200), now);
    assert_eq!(
        actions[0],
        Action::Upstream(Command::Delivered {
            sub,
            version: 0,
            outcome: Outcome::Accepted
        })
    );
    let n2 = request(&actions[1]);
    assert_eq!(n2.headers.get(&HeaderName::CSEQ), Some("2 NOTIFY"));
    assert_eq!(n2.body, b"<v1/>");
    // A retransmitted or stray 200 for the first NOTIFY changes nothing.
    assert!(d.on_response(&answer_to(&n, 200), now).is_empty());
}

#[test]
fn a_notification_before_the_answer_waits_for_the_200() {
    let now = Instant::now();
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, ""), now);
    assert!(
        d.on_event(notification("p-0-0", 0, State::Active), now)
            .is_empty()
    );
    let actions = d.on_event(ok("p-0-0", 1, 60), now);
    assert_eq!(sent(&actions).len(), 2);
    assert_eq!(response(&actions[0]).status.as_u16(), 200);
    assert_eq!(request(&actions[1]).method, Method::Notify);
}

#[test]
fn timer_f_fails_the_delivery_and_ends_the_dialog() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    d.on_event(notification(&sub, 0, State::Active), now);
    assert_eq!(d.next_deadline(), Some(now + Duration::from_secs(32)));
    assert!(d.on_timeout(now + Duration::from_secs(31)).is_empty());
    let actions = d.on_timeout(now + Duration::from_secs(32));
    assert_eq!(
        actions,
        vec![
            Action::Upstream(Command::Delivered {
                sub: sub.clone(),
                version: 0,
                outcome: Outcome::Timeout
            }),
            Action::Unroute(sub),
        ]
    );
    assert!(d.is_empty() && d.next_deadline().is_none());
}

#[test]
fn a_481_to_notify_rejects_and_ends_the_dialog() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let n = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    let actions = d.on_response(&answer_to(&n, 481), now);
    assert_eq!(
        actions,
        vec![
            Action::Upstream(Command::Delivered {
                sub: sub.clone(),
                version: 0,
                outcome: Outcome::Rejected
            }),
            Action::Unroute(sub),
        ]
    );
}

#[test]
fn refreshes_are_checked_and_forwarded() {
    let now = Instant::now();
    let (mut d, sub, tag) = established(now);
    let actions = d.on_request(subscribe("c1", Some(&tag), 2, "Expires: 0\r\n"), now);
    assert_eq!(
        actions,
        vec![Action::Upstream(Command::Refresh {
            sub,
            request_id: 2,
            expires: Some(0),
            credentials: None,
            client_address: String::new(),
        })]
    );
    // The same request again is a retransmission: absorbed while the notifier works on it.
    let again = d.on_request(subscribe("c1", Some(&tag), 2, "Expires: 0\r\n"), now);
    assert!(again.is_empty(), "{again:?}");
    // A new request (new branch) with that CSeq again: CSeq must increase within the
    // dialog (RFC 3261 §12.2.2).
    let mut stale = subscribe("c1", Some(&tag), 2, "");
    stale.headers.set(
        HeaderName::VIA,
        "SIP/2.0/WSS abc.invalid;branch=z9hG4bKstale".to_owned(),
    );
    let stale = d.on_request(stale, now);
    assert_eq!(response(&stale[0]).status.as_u16(), 500);
    // Unknown tag → 481.
    let unknown = d.on_request(subscribe("c1", Some("other"), 3, ""), now);
    assert_eq!(response(&unknown[0]).status.as_u16(), 481);
}

#[test]
fn a_terminal_notification_ends_the_dialog_after_its_answer() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let actions = d.on_event(
        notification(&sub, 0, State::Terminated(Reason::Timeout)),
        now,
    );
    let n = request(&actions[0]).clone();
    assert_eq!(
        n.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("terminated;reason=timeout")
    );
    let actions = d.on_response(&answer_to(&n, 200), now);
    assert_eq!(actions.last(), Some(&Action::Unroute(sub)));
    assert!(d.is_empty());
}

#[test]
fn shutdown_and_close_release_everything() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let actions = d.on_shutdown(now);
    assert_eq!(
        actions[0],
        Action::Upstream(Command::Unsubscribe { sub: sub.clone() })
    );
    let n = request(&actions[1]);
    assert_eq!(
        n.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("terminated;reason=deactivated")
    );
    assert!(n.body.is_empty());
    // The proxy's own terminal NOTIFY carries no notifier version: no Delivered for it.
    assert_eq!(
        d.on_response(&answer_to(n, 200), now),
        vec![Action::Unroute(sub)]
    );

    let (mut d, sub, _) = established(now);
    assert_eq!(
        d.on_close(),
        vec![
            Action::Upstream(Command::Unsubscribe { sub: sub.clone() }),
            Action::Unroute(sub)
        ]
    );
}

#[test]
fn failed_initial_answers_end_the_dialog_with_their_status() {
    let now = Instant::now();
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, ""), now);
    let actions = d.on_event(
        Event::Answer(Answer {
            sub: "p-0-0".into(),
            request_id: 1,
            verdict: Verdict::IntervalTooBrief { min: 60 },
        }),
        now,
    );
    let r = response(&actions[0]);
    assert_eq!(r.status.as_u16(), 423);
    assert_eq!(r.headers.get(&HeaderName::MIN_EXPIRES), Some("60"));
    assert_eq!(actions[1], Action::Unroute("p-0-0".into()));
}

#[test]
fn the_dialog_limit_answers_503() {
    let now = Instant::now();
    let mut d = Dialogs::new(cfg(1), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, ""), now);
    let actions = d.on_request(subscribe("c2", None, 1, ""), now);
    let r = response(&actions[0]);
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.headers.get(&HeaderName::RETRY_AFTER), Some("30"));
    assert_eq!(
        actions[1],
        Action::Refused(Limit::DialogsPerConnection),
        "the shell counts it"
    );
}

#[test]
fn notifications_for_unknown_dialogs_unsubscribe_upstream() {
    let mut d = Dialogs::new(cfg(1), "p-0".into(), 7);
    assert_eq!(
        d.on_event(notification("gone", 3, State::Active), Instant::now()),
        vec![Action::Upstream(Command::Unsubscribe {
            sub: "gone".into()
        })]
    );
}

fn upstream_subscribe(actions: &[Action]) -> &Command {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Upstream(c @ Command::Subscribe { .. }) => Some(c),
            _ => None,
        })
        .expect("a Subscribe upstream")
}

#[test]
fn digest_and_bearer_credentials_go_upstream_parsed() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    d.set_client_address("192.0.2.7".into());
    let auth = "Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"n1\", \
                uri=\"sip:alice@example.com\", response=\"abc\", algorithm=MD5, qop=auth, \
                nc=00000001, cnonce=\"c1\"\r\n";
    let actions = d.on_request(subscribe("c1", None, 1, auth), Instant::now());
    let Command::Subscribe {
        credentials,
        client_address,
        flow_identity,
        ..
    } = upstream_subscribe(&actions)
    else {
        unreachable!()
    };
    assert_eq!(client_address, "192.0.2.7");
    assert_eq!(*flow_identity, None);
    let Some(Credentials::Digest { response, method }) = credentials else {
        panic!("digest credentials expected: {credentials:?}")
    };
    assert_eq!(method, "SUBSCRIBE");
    assert_eq!(response.username, "alice");
    assert_eq!(response.nc.as_deref(), Some("00000001"));

    let actions = d.on_request(
        subscribe("c2", None, 1, "Authorization: Bearer abc.def.ghi\r\n"),
        Instant::now(),
    );
    let Command::Subscribe { credentials, .. } = upstream_subscribe(&actions) else {
        unreachable!()
    };
    assert_eq!(
        *credentials,
        Some(Credentials::Bearer("abc.def.ghi".into()))
    );
}

#[test]
fn unauthorized_answers_carry_one_challenge_per_algorithm_in_order() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let now = Instant::now();
    d.on_request(subscribe("c1", None, 1, ""), now);
    let challenge = Challenge {
        realm: "example.com".into(),
        nonce: "NONCE".into(),
        opaque: None,
        algorithms: vec!["SHA-256".into(), "MD5".into()],
        stale: true,
    };
    let actions = d.on_event(
        Event::Answer(Answer {
            sub: "p-0-0".into(),
            request_id: 1,
            verdict: Verdict::Unauthorized(challenge),
        }),
        now,
    );
    let r = response(&actions[0]);
    assert_eq!(r.status.as_u16(), 401);
    let challenges: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| **n == HeaderName::WWW_AUTHENTICATE)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        challenges,
        [
            r#"Digest realm="example.com", nonce="NONCE", algorithm=SHA-256, qop="auth", stale=true"#,
            r#"Digest realm="example.com", nonce="NONCE", algorithm=MD5, qop="auth", stale=true"#,
        ]
    );
    assert!(d.is_empty(), "a refused initial SUBSCRIBE leaves no dialog");
}

#[test]
fn the_flow_identity_rides_on_later_subscribes_without_credentials() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let now = Instant::now();
    d.on_request(subscribe("c1", None, 1, "Authorization: Bearer t\r\n"), now);
    d.on_event(
        Event::Answer(Answer {
            sub: "p-0-0".into(),
            request_id: 1,
            verdict: Verdict::Ok {
                granted: 60,
                identity: Some("sip:alice@example.com".into()),
            },
        }),
        now,
    );
    assert_eq!(d.flow_identity(now), Some("sip:alice@example.com"));
    assert_eq!(
        d.flow_identity(now + Duration::from_secs(600)),
        None,
        "it is offered for the configured lifetime only"
    );
    let actions = d.on_request(subscribe("c2", None, 1, ""), now);
    let Command::Subscribe { flow_identity, .. } = upstream_subscribe(&actions) else {
        unreachable!()
    };
    assert_eq!(flow_identity.as_deref(), Some("sip:alice@example.com"));
    // Credentials of its own take precedence: the flow identity is not sent with them.
    let actions = d.on_request(subscribe("c3", None, 1, "Authorization: Bearer u\r\n"), now);
    let Command::Subscribe { flow_identity, .. } = upstream_subscribe(&actions) else {
        unreachable!()
    };
    assert_eq!(*flow_identity, None);
    // A refused sign-in on the flow makes the proxy stop vouching for it.
    d.on_event(
        Event::Answer(Answer {
            sub: "p-0-2".into(),
            request_id: 3,
            verdict: Verdict::Unauthorized(Challenge {
                realm: "example.com".into(),
                nonce: "n".into(),
                opaque: None,
                algorithms: vec!["MD5".into()],
                stale: false,
            }),
        }),
        now,
    );
    assert_eq!(d.flow_identity(now), None);
    let actions = d.on_request(subscribe("c4", None, 1, ""), now);
    let Command::Subscribe { flow_identity, .. } = upstream_subscribe(&actions) else {
        unreachable!()
    };
    assert_eq!(*flow_identity, None);
}

#[test]
fn oversized_route_sets_and_bad_credentials_are_refused() {
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    let rr = format!(
        "Record-Route: <sip:{}@proxy.example.com;lr>\r\n",
        "x".repeat(5000)
    );
    let actions = d.on_request(subscribe("c1", None, 1, &rr), Instant::now());
    assert_eq!(response(&actions[0]).status.as_u16(), 400);
    assert_eq!(response(&actions[0]).reason, "Record-Route too large");
    assert_eq!(actions[1], Action::Refused(Limit::RouteSet));
    let actions = d.on_request(
        subscribe("c2", None, 1, "Authorization: Basic YWxpY2U6eA==\r\n"),
        Instant::now(),
    );
    assert_eq!(response(&actions[0]).reason, "Bad Authorization");
    let other_uri = "Authorization: Digest username=\"alice\", realm=\"example.com\", \
                     nonce=\"n\", uri=\"sip:bob@example.com\", response=\"r\"\r\n";
    let actions = d.on_request(subscribe("c3", None, 1, other_uri), Instant::now());
    assert_eq!(
        response(&actions[0]).reason,
        "Digest uri does not match the Request-URI"
    );
    assert!(d.is_empty());
}

fn answer_with_retry_after(notify: &Request, status: u16, retry_after: &str) -> Response {
    let mut r = answer_to(notify, status);
    r.headers.push(HeaderName::RETRY_AFTER, retry_after);
    r
}

fn branch_of(r: &Request) -> String {
    sip::Via::parse_all(&r.headers).unwrap()[0]
        .branch()
        .unwrap()
        .to_owned()
}

#[test]
fn an_error_with_retry_after_sends_the_same_notification_again_later() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let first = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    let actions = d.on_response(&answer_with_retry_after(&first, 503, "5"), now);
    assert_eq!(
        actions,
        vec![Action::NotifyRetry {
            sub: sub.clone(),
            after: Duration::from_secs(5)
        }],
        "no Delivered: the delivery is still under way"
    );
    assert_eq!(d.next_deadline(), Some(now + Duration::from_secs(5)));
    // Still in flight: a newer notification waits behind it.
    assert!(
        d.on_event(notification(&sub, 1, State::Active), now)
            .is_empty()
    );
    // A repeated answer to the first transaction changes nothing.
    assert!(
        d.on_response(&answer_with_retry_after(&first, 503, "5"), now)
            .is_empty()
    );
    assert!(d.on_timeout(now + Duration::from_secs(4)).is_empty());

    let later = now + Duration::from_secs(5);
    let actions = d.on_timeout(later);
    let again = request(&actions[0]).clone();
    assert_eq!(actions.len(), 1);
    assert_eq!(again.headers.get(&HeaderName::CSEQ), Some("2 NOTIFY"));
    assert_ne!(branch_of(&again), branch_of(&first), "a new transaction");
    assert_eq!(again.body, b"<v0/>", "the same version");
    assert_eq!(
        again.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("active;expires=595"),
        "expires counts down from the first attempt"
    );
    assert_eq!(d.next_deadline(), Some(later + Duration::from_secs(32)));

    let actions = d.on_response(&answer_to(&again, 200), later);
    assert_eq!(
        actions[0],
        Action::Upstream(Command::Delivered {
            sub,
            version: 0,
            outcome: Outcome::Accepted
        })
    );
    let next = request(&actions[1]);
    assert_eq!(
        (next.headers.get(&HeaderName::CSEQ), next.body.as_slice()),
        (Some("3 NOTIFY"), b"<v1/>".as_slice())
    );
    assert_eq!(d.len(), 1);
}

/// The dialog after `status` + `retry_after` (if any) to its first NOTIFY, under `policy`.
fn after_error(policy: NotifyRetry, status: u16, retry_after: Option<&str>) -> Vec<Action> {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    d.cfg.notify_retry = policy;
    let n = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    let resp = match retry_after {
        Some(ra) => answer_with_retry_after(&n, status, ra),
        None => answer_to(&n, status),
    };
    d.on_response(&resp, now)
}

fn rejected(actions: &[Action]) -> bool {
    actions
        == [
            Action::Upstream(Command::Delivered {
                sub: "p-0-0".into(),
                version: 0,
                outcome: Outcome::Rejected,
            }),
            Action::Unroute("p-0-0".into()),
        ]
}

#[test]
fn errors_without_a_usable_retry_after_end_the_subscription() {
    let policy = NotifyRetry::default();
    assert!(rejected(&after_error(policy, 503, None)), "no Retry-After");
    assert!(
        rejected(&after_error(policy, 500, Some("soon"))),
        "unparseable"
    );
    assert!(
        rejected(&after_error(policy, 503, Some("31"))),
        "longer than --notify-max-retry-after"
    );
    assert!(
        rejected(&after_error(policy, 481, Some("1"))),
        "481: the dialog is gone whatever else it says"
    );
    let off = NotifyRetry {
        max_retries: 0,
        ..policy
    };
    assert!(rejected(&after_error(off, 503, Some("1"))), "retries off");
    // Any other error with a Retry-After within the bound is retried; the value may carry
    // a comment and parameters (RFC 3261 §20.33).
    for (status, ra) in [
        (503, "30"),
        (480, "1 (in a meeting);duration=60"),
        (500, "0"),
    ] {
        assert!(
            matches!(
                after_error(policy, status, Some(ra)).as_slice(),
                [Action::NotifyRetry { .. }]
            ),
            "{status} Retry-After: {ra}"
        );
    }
}

#[test]
fn retries_are_bounded_then_the_subscription_ends() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let mut n = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    let mut t = now;
    for attempt in 1..=DEFAULT_NOTIFY_RETRIES {
        let actions = d.on_response(&answer_with_retry_after(&n, 503, "1"), t);
        assert!(
            matches!(actions.as_slice(), [Action::NotifyRetry { .. }]),
            "retry {attempt}: {actions:?}"
        );
        t += Duration::from_secs(1);
        n = request(&d.on_timeout(t)[0]).clone();
    }
    let actions = d.on_response(&answer_with_retry_after(&n, 503, "1"), t);
    assert!(rejected(&actions), "{actions:?}");
    assert!(d.is_empty() && d.next_deadline().is_none());
}

#[test]
fn a_retried_notify_still_times_out_and_shutdown_does_not_wait_for_a_retry() {
    let now = Instant::now();
    let (mut d, sub, _) = established(now);
    let n = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    d.on_response(&answer_with_retry_after(&n, 503, "2"), now);
    let t = now + Duration::from_secs(2);
    assert_eq!(sent(&d.on_timeout(t)).len(), 1);
    let actions = d.on_timeout(t + Duration::from_secs(32));
    assert_eq!(
        actions,
        vec![
            Action::Upstream(Command::Delivered {
                sub: sub.clone(),
                version: 0,
                outcome: Outcome::Timeout
            }),
            Action::Unroute(sub),
        ]
    );

    let (mut d, sub, _) = established(now);
    let n = request(&d.on_event(notification(&sub, 0, State::Active), now)[0]).clone();
    d.on_response(&answer_with_retry_after(&n, 503, "20"), now);
    let actions = d.on_shutdown(now);
    let last = request(&actions[1]);
    assert_eq!(
        last.headers.get(&HeaderName::SUBSCRIPTION_STATE),
        Some("terminated;reason=deactivated"),
        "the final NOTIFY goes out now"
    );
    assert_eq!(d.next_deadline(), Some(now + Duration::from_secs(32)));
}

#[test]
fn a_lost_session_answers_a_subscribe_still_waiting_for_the_notifier() {
    let now = Instant::now();
    let mut d = Dialogs::new(cfg(10), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, ""), now);
    let actions = d.on_event(
        Event::Notification(Notification::terminated(
            "p-0-0".into(),
            Reason::Deactivated,
        )),
        now,
    );
    let r = response(&actions[0]);
    assert_eq!(r.status.as_u16(), 503);
    assert_eq!(r.headers.get(&HeaderName::RETRY_AFTER), Some("1"));
    assert_eq!(actions[1], Action::Unroute("p-0-0".into()));
    assert!(d.is_empty());
}

fn udp_cfg() -> DialogConfig {
    DialogConfig {
        transport: Transport::Udp,
        ..cfg(10)
    }
}

#[test]
fn over_udp_a_retransmitted_subscribe_is_absorbed_then_answered_the_same() {
    let now = Instant::now();
    let mut d = Dialogs::new(udp_cfg(), "p-0".into(), 7);
    let req = subscribe("c1", None, 1, "Expires: 600\r\n");
    let actions = d.on_request(req.clone(), now);
    let Some(Action::Upstream(Command::Subscribe { max_body_bytes, .. })) = actions.get(1) else {
        panic!("a Subscribe upstream: {actions:?}");
    };
    // A UDP flow asks for bodies that fit one datagram.
    assert_eq!(*max_body_bytes, Some(UDP_MAX_BODY_BYTES));
    // Before the notifier answered: absorbed, no second dialog.
    assert!(
        d.on_request(req.clone(), now + Duration::from_millis(500))
            .is_empty()
    );
    assert_eq!(d.len(), 1);
    let answered = d.on_event(ok("p-0-0", 1, 600), now + Duration::from_millis(600));
    let first = response(&answered[0]).clone();
    // After: the same response again, still one dialog, nothing upstream.
    let again = d.on_request(req.clone(), now + Duration::from_secs(1));
    assert_eq!(again, vec![Action::Resend(Message::Response(first))]);
    assert_eq!(d.len(), 1);
    // Timer J (64·T1) later the transaction is gone: the same request is new again (and,
    // a dialog-creating SUBSCRIBE, makes a second dialog, as the RFC has it).
    d.on_timeout(now + Duration::from_secs(33));
    let later = d.on_request(req, now + Duration::from_secs(33));
    assert!(
        matches!(later.first(), Some(Action::Route { .. })),
        "{later:?}"
    );
}

#[test]
fn over_udp_a_notify_is_retransmitted_on_timer_e_until_answered_or_timer_f() {
    let now = Instant::now();
    let mut d = Dialogs::new(udp_cfg(), "p-0".into(), 7);
    d.on_request(subscribe("c1", None, 1, "Expires: 600\r\n"), now);
    d.on_event(ok("p-0-0", 1, 600), now);
    let sent = d.on_event(notification("p-0-0", 0, State::Active), now);
    let notify = request(&sent[0]).clone();
    let mut at = Vec::new();
    while let Some(deadline) = d.next_deadline() {
        if deadline > now + Duration::from_secs(8) {
            break;
        }
        for a in d.on_timeout(deadline) {
            match a {
                Action::Resend(Message::Request(r)) => {
                    assert_eq!(r, notify, "a retransmission is the same request");
                    at.push(deadline - now);
                }
                other => panic!("only retransmissions before Timer F: {other:?}"),
            }
        }
    }
    let ms = |v: &[u64]| {
        v.iter()
            .map(|m| Duration::from_millis(*m))
            .collect::<Vec<_>>()
    };
    assert_eq!(at, ms(&[500, 1500, 3500, 7500]));
    // The answer stops them.
    let actions = d.on_response(&answer_to(&notify, 200), now + Duration::from_secs(8));
    assert!(matches!(
        actions[0],
        Action::Upstream(Command::Delivered {
            outcome: Outcome::Accepted,
            ..
        })
    ));
    assert!(
        d.on_timeout(now + Duration::from_secs(20))
            .iter()
            .all(|a| !matches!(a, Action::Resend(_))),
        "no retransmission after the answer"
    );
    // A second notification never answered ends the dialog at Timer F.
    let sent = d.on_event(
        notification("p-0-0", 1, State::Active),
        now + Duration::from_secs(20),
    );
    assert!(matches!(sent[0], Action::Notify(_)));
    let end = d.on_timeout(now + Duration::from_secs(52));
    assert!(
        end.contains(&Action::Upstream(Command::Delivered {
            sub: "p-0-0".into(),
            version: 1,
            outcome: Outcome::Timeout,
        })),
        "{end:?}"
    );
    assert!(d.is_empty());
}
