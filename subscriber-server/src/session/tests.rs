//! The machine driven input by input with a fixed clock: no sockets, no runtime, no
//! database (documents come from a map, sign-ins and loads are answered by the test).

use super::*;
use crate::subscription::{DEFAULT_MAX_BODY_BYTES, STALE_IN_FLIGHT};
use document::{Conference, DocumentState, Entry};

const ALICE: &str = "sip:alice@example.com";
const BOB: &str = "sip:bob@example.com";

fn settings(auth: bool) -> Settings {
    Settings {
        policy: Policy {
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            sip_domain: "example.com".into(),
        },
        notify_policy: NotifyPolicy {
            min_interval: Duration::from_secs(1),
            full_only: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            show_cancelled: true,
        },
        default_window: Window::default(),
        auth,
        trust_flow_identity: true,
        proxy: "192.0.2.7:4000".into(),
    }
}

fn conf(n: u32, subject: &str) -> Conference {
    let mut c = Conference {
        entity: format!("sip:{n}@conf.example.com"),
        ..Conference::default()
    };
    c.description.subject = Some(subject.to_owned());
    c
}

/// The machine, its documents and a fixed clock.
struct Harness {
    session: Session,
    metrics: Metrics,
    docs: HashMap<String, Arc<UserDoc>>,
    now: Now,
}

impl Harness {
    fn new(auth: bool) -> Self {
        Self::with(settings(auth))
    }

    fn with(settings: Settings) -> Self {
        let metrics = Metrics::default();
        let mut docs = HashMap::new();
        for user in [ALICE, BOB] {
            docs.insert(
                user.to_owned(),
                Arc::new(UserDoc {
                    revision: 0,
                    conferences: Arc::new(vec![conf(1, "a"), conf(2, "b"), conf(3, "c")]),
                    changed_at: None,
                }),
            );
        }
        Self {
            session: Session::new(settings, metrics.clone()),
            metrics,
            docs,
            // A fixed wall-clock instant: 2027-01-15.
            now: Now {
                at: Instant::now(),
                wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            },
        }
    }

    fn feed(&mut self, input: Input) -> Vec<Output> {
        self.session.handle(input, self.now, &self.docs)
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now.after(d);
    }

    /// A new revision of `user`'s list, committed `ago` before now.
    fn change(&mut self, user: &str, conferences: Vec<Conference>, ago: Option<Duration>) {
        let revision = self.docs.get(user).map_or(0, |d| d.revision + 1);
        self.docs.insert(
            user.to_owned(),
            Arc::new(UserDoc {
                revision,
                conferences: Arc::new(conferences),
                changed_at: ago.map(|ago| self.now.wall - ago),
            }),
        );
    }

    fn changed(&mut self, user: &str) -> Vec<Output> {
        self.feed(Input::UsersChanged(HashSet::from([user.to_owned()])))
    }

    /// Subscribes `id` to `user`'s list without sign-in and completes its load.
    fn subscribed(&mut self, id: &str, user: &str) -> Vec<Output> {
        let outs = self.feed(Input::Subscribe(subscribe(id, user)));
        let ticket = load_ticket(&outs);
        self.loaded(ticket)
    }

    fn loaded(&mut self, ticket: Ticket) -> Vec<Output> {
        self.feed(Input::Loaded {
            ticket,
            result: Ok(()),
        })
    }

    fn delivered(&mut self, id: &str, version: u64) -> Vec<Output> {
        self.feed(Input::Delivered {
            id: id.into(),
            version,
            outcome: Delivery::Accepted,
        })
    }

    fn auth_count(&self, label: Label) -> u64 {
        self.metrics
            .auth
            .get_or_create(&AuthLabel::new(label))
            .get()
    }
}

fn subscribe(id: &str, user: &str) -> Subscribe {
    Subscribe {
        id: id.into(),
        request_id: 7,
        request: SubscribeRequest {
            subscriber: user.into(),
            requester: user.into(),
            event: "conference-list".into(),
            accept: vec![],
            expires: Some(600),
            window: Window::default(),
        },
        credentials: None,
        flow_identity: None,
        client_address: "198.51.100.1:5060".into(),
        resume_version: None,
        max_body_bytes: None,
    }
}

fn refresh(id: &str, request_id: u64, credentials: Option<Credentials>) -> Refresh {
    Refresh {
        id: id.into(),
        request_id,
        expires: Some(600),
        credentials,
        client_address: "198.51.100.1:5060".into(),
    }
}

fn bearer() -> Option<Credentials> {
    Some(Credentials::Bearer("a.b.c".into()))
}

fn signed_in(identity: &str) -> Result<Verdict, DirectoryError> {
    Ok(Verdict {
        outcome: Outcome::Authenticated {
            identity: identity.into(),
        },
        label: Label::Ok,
    })
}

fn load_ticket(outs: &[Output]) -> Ticket {
    match outs {
        [Output::Load { ticket, .. }] => *ticket,
        other => panic!("expected one load, got {other:?}"),
    }
}

fn verify_of(outs: &[Output]) -> &Verify {
    match outs {
        [Output::Verify(v)] => v,
        other => panic!("expected one verification, got {other:?}"),
    }
}

fn replies(outs: &[Output]) -> Vec<(&str, u64, &Reply)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Answer(a) => Some((a.id.as_str(), a.request_id, &a.reply)),
            _ => None,
        })
        .collect()
}

fn notifications(outs: &[Output]) -> Vec<&Notification> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Notify(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// The one Notification among `outs`.
fn notification(outs: &[Output]) -> &Notification {
    match notifications(outs)[..] {
        [n] => n,
        ref other => panic!("expected one notification, got {other:?}"),
    }
}

fn doc(n: &Notification) -> &ConferenceList {
    n.document.as_ref().unwrap()
}

fn ok(granted: u32, identity: Option<&str>) -> Reply {
    Reply::Ok {
        granted,
        identity: identity.map(str::to_owned),
    }
}

#[test]
fn a_subscribe_is_loaded_then_answered_before_its_first_notification() {
    let mut h = Harness::new(false);
    let outs = h.feed(Input::Subscribe(subscribe("s1", ALICE)));
    assert!(matches!(&outs[..], [Output::Load { user, .. }] if user == ALICE));
    assert!(
        h.session.subscription("s1").is_none(),
        "not live before its load"
    );
    assert_eq!(h.session.unanswered(), 1);

    let outs = h.loaded(load_ticket(&outs));
    assert!(
        matches!(&outs[..], [Output::Answer(_), Output::Notify(_)]),
        "the Answer first: {outs:?}"
    );
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(600, None))]);
    let n = notification(&outs);
    assert_eq!((n.version, n.state), (0, State::Active { expires: 600 }));
    assert_eq!(doc(n).state, DocumentState::Full);
    assert_eq!(doc(n).entries.len(), 3);
    assert_eq!(h.metrics.subscriptions.get(), 1);
    assert_eq!(h.session.unanswered(), 0);
    assert_eq!(
        h.session.next_deadline(),
        Some(h.now.at + Duration::from_secs(600)),
        "its expiry"
    );
}

#[test]
fn a_resumed_subscription_starts_with_full_state_at_the_next_version() {
    let mut h = Harness::new(false);
    let mut s = subscribe("s1", ALICE);
    s.resume_version = Some(41);
    let outs = h.feed(Input::Subscribe(s));
    let outs = h.loaded(load_ticket(&outs));
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(600, None))]);
    let n = notification(&outs);
    assert_eq!((n.version, n.state), (42, State::Active { expires: 600 }));
    assert_eq!(
        doc(n).state,
        DocumentState::Full,
        "whatever the client held"
    );
    assert_eq!(doc(n).version, 42);
    assert_eq!(h.metrics.subscriptions_resumed.get(), 1);

    // Then versions go on as usual: the next change is a partial, version 43.
    h.delivered("s1", 42);
    h.advance(Duration::from_secs(2));
    h.change(ALICE, vec![conf(1, "a"), conf(2, "B"), conf(3, "c")], None);
    let outs = h.changed(ALICE);
    let n = notification(&outs);
    assert_eq!((n.version, doc(n).state), (43, DocumentState::Partial));
    assert_eq!(doc(n).entries, vec![Entry::Full(conf(2, "B"))]);

    // A subscription that is not resumed is not counted.
    h.subscribed("s2", BOB);
    assert_eq!(h.metrics.subscriptions_resumed.get(), 1);
}

#[test]
fn a_resumed_subscription_keeps_what_is_left_below_the_minimum() {
    let mut h = Harness::new(false);
    let mut s = subscribe("s1", ALICE);
    s.request.expires = Some(5);
    s.resume_version = Some(3);
    let outs = h.feed(Input::Subscribe(s));
    let outs = h.loaded(load_ticket(&outs));
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(5, None))]);
    assert_eq!(notification(&outs).version, 4);

    // A new subscription that short is still refused.
    let mut s = subscribe("s2", ALICE);
    s.request.expires = Some(5);
    let outs = h.feed(Input::Subscribe(s));
    assert!(matches!(
        replies(&outs).as_slice(),
        [("s2", 7, Reply::Rejected(Rejection::IntervalTooBrief { .. }))]
    ));
}

#[test]
fn unsubscribed_while_loading_releases_the_user_and_answers_nothing() {
    let mut h = Harness::new(false);
    let outs = h.feed(Input::Subscribe(subscribe("s1", ALICE)));
    let ticket = load_ticket(&outs);
    assert!(h.feed(Input::Unsubscribe { id: "s1".into() }).is_empty());
    // The same id again, before the first load is back: only the new load counts.
    let outs = h.feed(Input::Subscribe(subscribe("s1", ALICE)));
    let second = load_ticket(&outs);
    assert_eq!(
        h.loaded(ticket),
        vec![Output::Release { user: ALICE.into() }]
    );
    let outs = h.loaded(second);
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(600, None))]);
    assert_eq!(h.metrics.subscriptions.get(), 1);
}

#[test]
fn a_failed_or_refused_load_is_answered_and_nothing_is_live() {
    let mut h = Harness::new(false);
    let outs = h.feed(Input::Subscribe(subscribe("s1", ALICE)));
    let outs = h.feed(Input::Loaded {
        ticket: load_ticket(&outs),
        result: Err(AttachError::Directory(DirectoryError::PostgresOnly)),
    });
    assert_eq!(
        replies(&outs),
        vec![("s1", 7, &Reply::Rejected(Rejection::Unavailable))]
    );
    assert_eq!(h.metrics.directory_errors.get(), 1);

    let outs = h.feed(Input::Subscribe(subscribe("s2", ALICE)));
    let outs = h.feed(Input::Loaded {
        ticket: load_ticket(&outs),
        result: Err(AttachError::TooMany),
    });
    assert_eq!(
        replies(&outs),
        vec![("s2", 7, &Reply::Rejected(Rejection::Forbidden(TOO_MANY)))]
    );
    assert!(h.session.is_empty());
    assert_eq!(h.metrics.subscriptions.get(), 0);
}

#[test]
fn policy_refusals_and_duplicate_ids_are_answered_at_once() {
    let mut h = Harness::new(false);
    let mut s = subscribe("s1", ALICE);
    s.request.requester = BOB.into();
    let outs = h.feed(Input::Subscribe(s));
    assert!(matches!(
        replies(&outs)[..],
        [("s1", 7, Reply::Rejected(Rejection::Forbidden(_)))]
    ));
    let mut s = subscribe("s2", ALICE);
    s.request.expires = Some(10);
    let outs = h.feed(Input::Subscribe(s));
    assert_eq!(
        replies(&outs),
        vec![(
            "s2",
            7,
            &Reply::Rejected(Rejection::IntervalTooBrief { min: 60 })
        )]
    );

    h.subscribed("s3", ALICE);
    let outs = h.feed(Input::Subscribe(subscribe("s3", ALICE)));
    assert_eq!(
        replies(&outs),
        vec![("s3", 7, &Reply::Internal("duplicate subscription id"))]
    );
    let outs = h.feed(Input::Subscribe(subscribe("", ALICE)));
    assert_eq!(replies(&outs).len(), 1, "an empty id is refused too");
}

#[test]
fn credentials_are_verified_then_the_signed_in_identity_is_admitted() {
    let mut h = Harness::new(true);
    let mut s = subscribe("s1", ALICE);
    s.credentials = bearer();
    let outs = h.feed(Input::Subscribe(s));
    let v = verify_of(&outs);
    assert_eq!(
        (&v.credentials, v.client_address.as_str(), &v.bound),
        (
            &Credentials::Bearer("a.b.c".into()),
            "198.51.100.1:5060",
            &None
        )
    );
    let outs = h.feed(Input::Verified {
        ticket: v.ticket,
        verdict: signed_in(ALICE),
    });
    let outs = h.loaded(load_ticket(&outs));
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(600, Some(ALICE)))]);
    assert_eq!(h.auth_count(Label::Ok), 1);
    assert_eq!(
        h.session.subscription("s1").unwrap().identity(),
        Some(ALICE)
    );

    // Signed in as bob, asking for alice's list.
    let mut s = subscribe("s2", ALICE);
    s.credentials = bearer();
    let outs = h.feed(Input::Subscribe(s));
    let ticket = verify_of(&outs).ticket;
    let outs = h.feed(Input::Verified {
        ticket,
        verdict: signed_in(BOB),
    });
    assert!(matches!(
        replies(&outs)[..],
        [("s2", 7, Reply::Rejected(Rejection::Forbidden(_)))]
    ));

    // A failed sign-in, throttling, and a directory that cannot be read.
    for (id, verdict, want) in [
        (
            "s3",
            Ok(Verdict {
                outcome: Outcome::Challenge { stale: true },
                label: Label::Stale,
            }),
            Reply::Challenge { stale: true },
        ),
        (
            "s4",
            Ok(Verdict {
                outcome: Outcome::Throttled { retry_after: 30 },
                label: Label::Throttled,
            }),
            Reply::Throttled { retry_after: 30 },
        ),
        (
            "s5",
            Err(DirectoryError::PostgresOnly),
            Reply::Rejected(Rejection::Unavailable),
        ),
    ] {
        let mut s = subscribe(id, ALICE);
        s.credentials = bearer();
        let outs = h.feed(Input::Subscribe(s));
        let ticket = verify_of(&outs).ticket;
        let outs = h.feed(Input::Verified { ticket, verdict });
        assert_eq!(replies(&outs), vec![(id, 7, &want)]);
    }
    assert_eq!(
        (h.auth_count(Label::Stale), h.auth_count(Label::Throttled)),
        (1, 1)
    );
    assert_eq!(h.metrics.directory_errors.get(), 1);
    assert_eq!(h.session.len(), 1);
}

#[test]
fn a_sign_in_that_ends_after_an_unsubscribe_is_counted_and_not_answered() {
    let mut h = Harness::new(true);
    let mut s = subscribe("s1", ALICE);
    s.credentials = bearer();
    let outs = h.feed(Input::Subscribe(s));
    let ticket = verify_of(&outs).ticket;
    h.feed(Input::Unsubscribe { id: "s1".into() });
    let outs = h.feed(Input::Verified {
        ticket,
        verdict: signed_in(ALICE),
    });
    assert!(outs.is_empty(), "no load, no answer: {outs:?}");
    assert_eq!(h.auth_count(Label::Ok), 1);
    assert_eq!(h.session.unanswered(), 0);
}

#[test]
fn without_credentials_a_challenge_unless_a_trusted_flow_vouches_for_the_subscriber() {
    let mut h = Harness::new(true);
    let outs = h.feed(Input::Subscribe(subscribe("s1", ALICE)));
    assert_eq!(
        replies(&outs),
        vec![("s1", 7, &Reply::Challenge { stale: false })]
    );
    assert_eq!(h.auth_count(Label::Challenged), 1);

    // The flow proved alice: admitted without a sign-in.
    let mut s = subscribe("s2", ALICE);
    s.flow_identity = Some("sip:alice@EXAMPLE.com".into());
    let outs = h.feed(Input::Subscribe(s));
    let outs = h.loaded(load_ticket(&outs));
    assert_eq!(
        replies(&outs),
        vec![("s2", 7, &ok(600, Some("sip:alice@EXAMPLE.com")))]
    );

    // The flow proved bob: alice's list is challenged (a gateway may carry several users).
    let mut s = subscribe("s3", ALICE);
    s.flow_identity = Some(BOB.into());
    let outs = h.feed(Input::Subscribe(s));
    assert_eq!(
        replies(&outs),
        vec![("s3", 7, &Reply::Challenge { stale: false })]
    );

    // Over an unauthenticated hop, no flow identity counts.
    let mut h = Harness::with(Settings {
        trust_flow_identity: false,
        ..settings(true)
    });
    let mut s = subscribe("s1", ALICE);
    s.flow_identity = Some(ALICE.into());
    let outs = h.feed(Input::Subscribe(s));
    assert_eq!(
        replies(&outs),
        vec![("s1", 7, &Reply::Challenge { stale: false })]
    );
}

#[test]
fn refreshes_behind_one_being_verified_are_answered_in_order() {
    let mut h = Harness::new(true);
    let mut s = subscribe("s1", ALICE);
    s.flow_identity = Some(ALICE.into());
    let outs = h.feed(Input::Subscribe(s));
    h.loaded(load_ticket(&outs));
    h.delivered("s1", 0);

    let outs = h.feed(Input::Refresh(refresh("s1", 10, bearer())));
    let v = verify_of(&outs);
    assert_eq!(
        v.bound.as_deref(),
        Some(ALICE),
        "held to the bound identity"
    );
    let ticket = v.ticket;
    for n in 11..11 + MAX_QUEUED_REFRESHES as u64 {
        assert!(h.feed(Input::Refresh(refresh("s1", n, None))).is_empty());
    }
    let outs = h.feed(Input::Refresh(refresh("s1", 99, None)));
    assert_eq!(
        replies(&outs),
        vec![("s1", 99, &Reply::Rejected(Rejection::Unavailable))],
        "the queue is full"
    );
    assert_eq!(h.session.unanswered(), 1 + MAX_QUEUED_REFRESHES);

    let outs = h.feed(Input::Verified {
        ticket,
        verdict: Ok(Verdict {
            outcome: Outcome::Challenge { stale: false },
            label: Label::Failed,
        }),
    });
    let answered: Vec<u64> = replies(&outs).iter().map(|(_, r, _)| *r).collect();
    assert_eq!(
        answered,
        (10..11 + MAX_QUEUED_REFRESHES as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        replies(&outs)[0].2,
        &Reply::Challenge { stale: false },
        "the failed one"
    );
    assert!(
        replies(&outs)[1..]
            .iter()
            .all(|(_, _, r)| **r == ok(600, Some(ALICE)))
    );
    assert_eq!(h.session.unanswered(), 0);
    assert!(
        h.session.subscription("s1").is_some(),
        "the subscription stays"
    );
}

#[test]
fn a_refresh_is_answered_then_owed_a_notification() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    h.delivered("s1", 0);
    h.advance(Duration::from_secs(100));
    let outs = h.feed(Input::Refresh(refresh("s1", 10, None)));
    assert!(matches!(&outs[..], [Output::Answer(_), Output::Notify(_)]));
    let n = notification(&outs);
    assert_eq!(n.version, 1);
    assert_eq!(n.state, State::Active { expires: 600 });
    assert_eq!(
        (doc(n).state, doc(n).entries.len()),
        (DocumentState::Partial, 0),
        "an empty partial: the client is current"
    );
    assert_eq!(
        h.session.subscription("s1").unwrap().expires_at(),
        h.now.at + Duration::from_secs(600)
    );

    let outs = h.feed(Input::Refresh(refresh("nope", 11, None)));
    assert_eq!(
        replies(&outs),
        vec![("nope", 11, &Reply::Rejected(Rejection::NoSuchSubscription))]
    );
}

#[test]
fn a_refresh_of_zero_ends_the_subscription_with_a_final_notification() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    let mut r = refresh("s1", 10, None);
    r.expires = Some(0);
    let outs = h.feed(Input::Refresh(r));
    assert_eq!(
        outs,
        vec![
            Output::Answer(Answer {
                id: "s1".into(),
                request_id: 10,
                reply: ok(0, None),
            }),
            Output::Release { user: ALICE.into() },
            Output::Notify(Notification {
                id: "s1".into(),
                version: 1,
                state: State::Terminated(Reason::Timeout),
                document: None,
            }),
        ]
    );
    assert!(h.session.is_empty());
    assert_eq!(h.metrics.subscriptions.get(), 0);
}

#[test]
fn a_fetch_ends_with_its_state() {
    let mut h = Harness::new(false);
    let mut s = subscribe("s1", ALICE);
    s.request.expires = Some(0);
    let outs = h.feed(Input::Subscribe(s));
    let outs = h.loaded(load_ticket(&outs));
    assert_eq!(replies(&outs), vec![("s1", 7, &ok(0, None))]);
    let n = notification(&outs);
    assert_eq!(n.state, State::Terminated(Reason::Timeout));
    assert_eq!(doc(n).entries.len(), 3);
    assert!(outs.contains(&Output::Release { user: ALICE.into() }));
    assert!(h.session.is_empty());
}

#[test]
fn a_delivered_for_another_version_does_not_clear_the_one_in_flight() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    let in_flight = |h: &Harness| h.session.subscription("s1").unwrap().in_flight();
    assert_eq!(in_flight(&h), Some(0), "the first notification");
    assert!(h.delivered("s1", 5).is_empty());
    assert_eq!(
        in_flight(&h),
        Some(0),
        "a Delivered for version 5 is ignored"
    );
    assert!(h.delivered("s1", 0).is_empty());
    assert_eq!(in_flight(&h), None);
    assert_eq!(
        h.session.subscription("s1").unwrap().last_delivered(),
        Some(0)
    );
}

#[test]
fn a_refused_notification_drops_the_subscription() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    let outs = h.feed(Input::Delivered {
        id: "s1".into(),
        version: 0,
        outcome: Delivery::Rejected,
    });
    assert_eq!(outs, vec![Output::Release { user: ALICE.into() }]);
    assert!(h.session.is_empty());
}

#[test]
fn changes_wait_for_the_notification_in_flight_then_for_the_rate_limit() {
    let mut h = Harness::new(false);
    let first = h.subscribed("s1", ALICE);
    assert_eq!(notification(&first).version, 0);
    // In flight: nothing goes out, and the session looks again when it would count as lost.
    h.change(ALICE, vec![conf(1, "A"), conf(2, "b"), conf(3, "c")], None);
    assert!(h.changed(ALICE).is_empty());
    assert_eq!(h.session.next_deadline(), Some(h.now.at + STALE_IN_FLIGHT));

    // Answered at once, inside the one-second interval: deferred to its end.
    h.advance(Duration::from_millis(300));
    assert!(h.delivered("s1", 0).is_empty());
    let due = h.now.at + Duration::from_millis(700);
    assert_eq!(h.session.next_deadline(), Some(due));
    // A second change meanwhile is coalesced into the same Notification.
    h.change(ALICE, vec![conf(1, "A"), conf(2, "B"), conf(3, "c")], None);
    assert!(h.changed(ALICE).is_empty());

    h.advance(Duration::from_millis(700));
    let outs = h.feed(Input::Deadline);
    let n = notification(&outs);
    assert_eq!((n.version, doc(n).state), (1, DocumentState::Partial));
    assert_eq!(
        doc(n).entries,
        vec![Entry::Full(conf(1, "A")), Entry::Full(conf(2, "B"))]
    );
}

#[test]
fn a_notification_never_answered_is_followed_by_full_state() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    h.change(ALICE, vec![conf(1, "A")], None);
    assert!(h.changed(ALICE).is_empty());
    h.advance(STALE_IN_FLIGHT);
    let outs = h.feed(Input::Deadline);
    let n = notification(&outs);
    assert_eq!((n.version, doc(n).state), (1, DocumentState::Full));
    assert_eq!(doc(n).entries, vec![Entry::Full(conf(1, "A"))]);
}

#[test]
fn expiry_terminates_and_releases_the_user() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    h.delivered("s1", 0);
    h.advance(Duration::from_secs(600));
    let outs = h.feed(Input::Deadline);
    assert_eq!(
        outs,
        vec![
            Output::Release { user: ALICE.into() },
            Output::Notify(Notification {
                id: "s1".into(),
                version: 1,
                state: State::Terminated(Reason::Timeout),
                document: None,
            }),
        ]
    );
    assert_eq!(h.session.next_deadline(), None);
    assert_eq!(h.metrics.subscriptions.get(), 0);
}

#[test]
fn shutdown_deactivates_every_subscription_and_answers_waiting_subscribes() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    let outs = h.feed(Input::Subscribe(subscribe("s2", BOB)));
    let ticket = load_ticket(&outs);
    let outs = h.feed(Input::Shutdown);
    assert_eq!(
        outs,
        vec![
            Output::Answer(Answer {
                id: "s2".into(),
                request_id: 7,
                reply: Reply::Rejected(Rejection::Unavailable),
            }),
            Output::Notify(Notification {
                id: "s1".into(),
                version: 1,
                state: State::Terminated(Reason::Deactivated),
                document: None,
            }),
            Output::End,
        ]
    );
    assert_eq!(h.metrics.subscriptions.get(), 0);
    // Its load finishing later changes nothing but the cache's count.
    assert_eq!(h.loaded(ticket), vec![Output::Release { user: BOB.into() }]);
}

#[test]
fn a_closed_session_forgets_everything_silently() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    h.subscribed("s2", BOB);
    assert_eq!(h.metrics.subscriptions.get(), 2);
    assert!(h.feed(Input::Closed).is_empty());
    assert!(h.session.is_empty());
    assert_eq!(h.metrics.subscriptions.get(), 0);
}

#[test]
fn the_admin_api_lists_and_a_resend_is_full_state_after_the_one_in_flight() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    h.subscribed("s2", BOB);
    let outs = h.feed(Input::Admin(AdminQuery::List {
        user: Some("sip:alice@EXAMPLE.com".into()),
    }));
    assert_eq!(
        outs,
        vec![Output::Admin(AdminAnswer::List(vec![SubscriptionInfo {
            id: "s1".into(),
            user: ALICE.into(),
            proxy: "192.0.2.7:4000".into(),
            since: 1_800_000_000,
            expires: 600,
            version: Some(0),
            last_delivered: None,
        }]))]
    );

    let outs = h.feed(Input::Admin(AdminQuery::Resend { user: ALICE.into() }));
    assert_eq!(
        outs,
        vec![Output::Admin(AdminAnswer::Resent(1))],
        "nothing overtakes the one in flight"
    );
    let outs = h.delivered("s1", 0);
    let n = notification(&outs);
    assert_eq!((n.version, doc(n).state), (1, DocumentState::Full));

    let outs = h.feed(Input::Admin(AdminQuery::List { user: None }));
    let [Output::Admin(AdminAnswer::List(list))] = &outs[..] else {
        panic!("{outs:?}")
    };
    assert_eq!(list.len(), 2);
    let s1 = list.iter().find(|s| s.id == "s1").unwrap();
    assert_eq!((s1.version, s1.last_delivered), (Some(1), Some(0)));
}

/// (count, sum) of the commit-to-notify histogram, read as `/metrics` shows it.
fn latency(h: &Harness) -> (u64, f64) {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("h", "commit to notify", h.metrics.commit_to_notify.clone());
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap()
            .to_owned()
    };
    (
        value("h_count").parse().unwrap(),
        value("h_sum").parse().unwrap(),
    )
}

#[test]
fn commit_to_notify_is_observed_once_for_the_first_notification_carrying_a_change() {
    let mut h = Harness::new(false);
    h.subscribed("s1", ALICE);
    assert_eq!(latency(&h).0, 0, "a first load is not a change");

    // Committed 2 s ago, waits behind the one in flight for 3 s more.
    h.change(ALICE, vec![conf(1, "A")], Some(Duration::from_secs(2)));
    assert!(h.changed(ALICE).is_empty());
    h.advance(Duration::from_secs(3));
    let outs = h.delivered("s1", 0);
    assert_eq!(notification(&outs).version, 1);
    assert_eq!(latency(&h).0, 1);
    assert!((latency(&h).1 - 5.0).abs() < 1e-9);

    // The same revision again (a resend, a refresh): not observed again.
    h.delivered("s1", 1);
    h.feed(Input::Refresh(refresh("s1", 10, None)));
    assert_eq!(latency(&h).0, 1);

    // A subscription admitted after the change does not count it.
    h.subscribed("s2", ALICE);
    assert_eq!(latency(&h).0, 1);

    // A change that leaves the client's view as it was carries nothing: its time is
    // forgotten, not charged to the next Notification.
    h.delivered("s1", 2);
    h.delivered("s2", 0);
    h.advance(Duration::from_secs(2));
    h.change(ALICE, vec![conf(1, "A")], Some(Duration::from_secs(1)));
    assert!(h.changed(ALICE).is_empty());
    h.advance(Duration::from_secs(60));
    h.change(ALICE, vec![conf(1, "AA")], Some(Duration::from_millis(500)));
    let outs = h.changed(ALICE);
    assert_eq!(notifications(&outs).len(), 2);
    assert_eq!(latency(&h).0, 3);
    assert!((latency(&h).1 - 6.0).abs() < 1e-9);
}
