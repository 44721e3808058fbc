//! The server's sans-IO session logic (`conflist_server::subscription` and
//! `conflist_server::session`) under arbitrary sequences, with a fake clock and a model to
//! compare against:
//!
//! * `Policy::admit` / `grant` with arbitrary requests: never panics, grants within
//!   `[min, max]` (or 0 for a fetch), 423 only below the minimum;
//! * `Registry` inserts, refreshes, deferred sends, expiry, removal and drain agree with a
//!   plain map of id → (user, expiry);
//! * `Subscription::plan` against a simulated client that applies every document it
//!   receives: the client always ends up holding exactly the latest list, versions strictly
//!   increase, and a lost NOTIFY is followed (after `STALE_IN_FLIGHT`) by full state;
//! * the session machine (`session::Session`) fed arbitrary requests, sign-in and load
//!   outcomes (in any order), list changes, admin commands and deadlines: every request is
//!   answered at most once, a subscription's Notifications follow its OK Answer with
//!   versions up by one from 0 (or the resumed version + 1) and none after the final one,
//!   no Notification overtakes one in flight before `STALE_IN_FLIGHT`, and the cache
//!   attachments it releases match its live subscriptions.
#![no_main]

use conflist_server::auth::{Credentials, Label, Outcome, Verdict};
use conflist_server::cache::{AttachError, UserDoc};
use conflist_server::directory::DirectoryError;
use conflist_server::metrics::Metrics;
use conflist_server::session::{
    self, AdminQuery, Delivery, Input, Now, Output, Reply, Session, Settings, Ticket,
};
use conflist_server::subscription::{
    NotifyPolicy, Plan, Policy, Registry, STALE_IN_FLIGHT, SubscribeRequest, Subscription,
};
use document::{Conference, ConferenceDescription, DocumentState, apply};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = admission(&mut u);
    let _ = registry(&mut u);
    let _ = delivery(&mut u);
    let _ = machine(&mut u);
});

const USERS: [&str; 3] = [
    "sip:alice@example.com",
    "sip:bob@example.com",
    "sip:carol@other.example",
];

fn aor(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=4)? {
        0..=2 => USERS[u.int_in_range(0..=2)?].to_owned(),
        3 => "SIP:Alice@EXAMPLE.com".to_owned(),
        _ => u.arbitrary::<String>()?.chars().take(40).collect(),
    })
}

fn admission(u: &mut Unstructured<'_>) -> Result<()> {
    // Config guarantees 0 < min <= default <= max (config.rs validate).
    let mut bounds = [
        u.int_in_range(1..=100_000)?,
        u.int_in_range(1..=100_000)?,
        u.int_in_range(1..=100_000)?,
    ];
    bounds.sort_unstable();
    let policy = Policy {
        min_expires: bounds[0],
        default_expires: bounds[1],
        max_expires: bounds[2],
        sip_domain: (*u.choose(&["example.com", "EXAMPLE.COM", ""])?).to_owned(),
    };
    for _ in 0..u.int_in_range(1..=8)? {
        let req = SubscribeRequest {
            subscriber: aor(u)?,
            requester: aor(u)?,
            event: (*u.choose(&["conference-list", "presence", "", "Conference-List"])?).to_owned(),
            window: Default::default(),
            accept: (0..u.int_in_range(0..=3)?)
                .map(|_| {
                    Ok(match u.int_in_range(0..=3)? {
                        0 => "application/conference-list+xml;q=0.5".to_owned(),
                        1 => "*/*".to_owned(),
                        2 => "text/plain".to_owned(),
                        _ => u.arbitrary::<String>()?.chars().take(30).collect(),
                    })
                })
                .collect::<Result<_>>()?,
            expires: u.arbitrary()?,
        };
        let identity = if u.arbitrary()? { Some(aor(u)?) } else { None };
        if let Ok(granted) = policy.admit(&req, identity.as_deref()) {
            match req.expires {
                Some(0) => assert_eq!(granted, 0),
                _ => assert!(
                    (policy.min_expires..=policy.max_expires).contains(&granted),
                    "granted {granted} outside [{}, {}]",
                    policy.min_expires,
                    policy.max_expires
                ),
            }
        }
        let requested: Option<u32> = u.arbitrary()?;
        match (requested, policy.grant(requested)) {
            (Some(0), g) => assert_eq!(g, Ok(0)),
            (Some(s), Err(_)) => assert!(s < policy.min_expires),
            (_, Err(e)) => panic!("default refused: {e}"),
            (_, Ok(g)) => assert!((policy.min_expires..=policy.max_expires).contains(&g)),
        }
        let _ = conflist_server::subscription::same_aor(&req.subscriber, &req.requester);
    }
    Ok(())
}

fn registry(u: &mut Unstructured<'_>) -> Result<()> {
    let start = Instant::now();
    let mut now = start;
    let mut reg = Registry::default();
    let mut model: HashMap<String, (String, Instant)> = HashMap::new();
    let mut sends: HashMap<String, Instant> = HashMap::new();
    for _ in 0..u.int_in_range(0..=64)? {
        let id = format!("s{}", u.int_in_range(0..=5)?);
        match u.int_in_range(0..=8)? {
            0 | 1 => {
                let user = USERS[u.int_in_range(0..=2)?].to_owned();
                let at = now + Duration::from_secs(u.int_in_range(0..=u64::from(u32::MAX))?);
                reg.insert(
                    id.clone(),
                    Subscription::new(user.clone(), at, u.arbitrary()?),
                );
                model.insert(id.clone(), (user, at));
                sends.remove(&id);
            }
            2 => {
                let granted = Duration::from_secs(u.int_in_range(0..=u64::from(u32::MAX))?);
                let known = reg.refresh(&id, now, granted);
                assert_eq!(known, model.contains_key(&id));
                if let Some(m) = model.get_mut(&id) {
                    m.1 = now + granted;
                }
            }
            3 => {
                if model.contains_key(&id) {
                    let at = now + Duration::from_millis(u.int_in_range(0..=120_000)?);
                    reg.schedule_send(&id, at);
                    let e = sends.entry(id.clone()).or_insert(at);
                    *e = (*e).min(at);
                }
            }
            4 => {
                let mut due = reg.take_due_sends(now);
                due.sort();
                let mut want: Vec<String> = sends
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                want.sort();
                assert_eq!(due, want, "due sends");
                sends.retain(|_, at| *at > now);
            }
            5 => {
                assert_eq!(reg.remove(&id).is_some(), model.remove(&id).is_some());
                sends.remove(&id);
            }
            6 => {
                let mut gone: Vec<String> = reg
                    .take_expired(now)
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
                gone.sort();
                let mut want: Vec<String> = model
                    .iter()
                    .filter(|(_, (_, at))| *at <= now)
                    .map(|(id, _)| id.clone())
                    .collect();
                want.sort();
                assert_eq!(gone, want, "expired");
                for id in &gone {
                    model.remove(id);
                    sends.remove(id);
                }
            }
            7 => now += Duration::from_millis(u.int_in_range(0..=7_200_000)?),
            _ => {
                let user = USERS[u.int_in_range(0..=2)?];
                let mut got = reg.subs_of(user);
                got.sort();
                let mut want: Vec<String> = model
                    .iter()
                    .filter(|(_, (u, _))| u == user)
                    .map(|(id, _)| id.clone())
                    .collect();
                want.sort();
                assert_eq!(got, want, "subs_of({user})");
            }
        }
        assert_eq!(reg.len(), model.len());
        let earliest = model
            .values()
            .map(|(_, at)| *at)
            .chain(sends.values().copied())
            .min();
        assert_eq!(reg.next_deadline(), earliest, "next_deadline");
    }
    let drained = reg.drain();
    assert_eq!(drained.len(), model.len());
    assert!(reg.is_empty() && reg.next_deadline().is_none());
    Ok(())
}

/// One subscription, its notifier-side state and a client that applies what it receives.
fn delivery(u: &mut Unstructured<'_>) -> Result<()> {
    let policy = NotifyPolicy {
        min_interval: Duration::from_millis(u.int_in_range(0..=5_000)?),
        full_only: u.ratio(1, 4)?,
        // Small caps too, so that states go out in several parts.
        max_body_bytes: u.int_in_range(300..=65_536)?,
        show_cancelled: u.ratio(3, 4)?,
    };
    // The wall clock moves with `now`, from a fixed instant.
    let epoch =
        chrono::DateTime::<chrono::Utc>::from_timestamp(1_795_000_000, 0).expect("a valid instant");
    let start = Instant::now();
    let mut now = start;
    let subscriber = "sip:alice@example.com".to_owned();
    let first_version: u64 = u.int_in_range(0..=3)?;
    let mut sub = Subscription::new(subscriber, now + Duration::from_secs(3600), first_version);
    let mut latest: Arc<Vec<Conference>> = Arc::new(conferences(u)?);
    // What the client holds: (version, list), after the documents it received.
    let mut client: Option<(u64, Vec<Conference>)> = None;
    let mut last_version: Option<u64> = None;
    // Versions the client received and has not answered yet (answers may come late).
    let mut answerable: Vec<u64> = Vec::new();
    for _ in 0..u.int_in_range(0..=48)? {
        match u.int_in_range(0..=5)? {
            0 => latest = Arc::new(conferences(u)?),
            1 => now += Duration::from_millis(u.int_in_range(0..=70_000)?),
            2 if !answerable.is_empty() => {
                // The client's 200 for one of them: `Delivered{version, Accepted}` (api.rs).
                let i = u.choose_index(answerable.len())?;
                let version = answerable.remove(i);
                let _ = sub.delivered(version);
            }
            _ => {
                let owed = u.ratio(1, 4)?;
                let in_flight_since = sub.in_flight().and(sub.last_sent());
                let wall = epoch
                    + chrono::Duration::from_std(now - start).expect("fuzz time spans are short");
                match sub.plan(&latest, now, wall, owed, policy) {
                    Plan::Nothing | Plan::Defer(_) => {}
                    Plan::Send(doc) => {
                        if let Some(since) = in_flight_since {
                            assert!(
                                now >= since + STALE_IN_FLIGHT,
                                "sent while an unanswered NOTIFY was in flight"
                            );
                            assert_eq!(
                                doc.state,
                                DocumentState::Full,
                                "a stale in-flight NOTIFY must be followed by full state"
                            );
                        }
                        if let Some(prev) = last_version {
                            assert_eq!(doc.version, prev + 1, "versions must go up by one");
                        }
                        last_version = Some(doc.version);
                        assert_eq!(sub.in_flight(), Some(doc.version));
                        // The wire form is what the client applies.
                        let wire = document::ConferenceList::parse(&doc.render())
                            .expect("rendered document parses");
                        if !u.ratio(1, 6)? {
                            let (held_version, held) = match &client {
                                Some((v, l)) => (Some(*v), l.as_slice()),
                                None => (None, &[][..]),
                            };
                            let next = apply(held, held_version, &wire).unwrap_or_else(|e| {
                                panic!(
                                    "client cannot apply {:?} v{}: {e}",
                                    wire.state, wire.version
                                )
                            });
                            // A part of a large state leaves the list incomplete; the
                            // last part completes it.
                            if wire.complete {
                                assert_eq!(
                                    next,
                                    canonical(&latest),
                                    "client does not hold the latest list after v{}",
                                    wire.version
                                );
                            }
                            client = Some((wire.version, next));
                            answerable.push(wire.version);
                        }
                    }
                }
                // Nothing ever answers a lost NOTIFY: the notifier must not wait on it
                // past STALE_IN_FLIGHT.
                if sub.in_flight().is_some() {
                    assert!(
                        sub.last_sent().is_some_and(|t| t + STALE_IN_FLIGHT > now),
                        "a stale in-flight NOTIFY was not replaced"
                    );
                }
            }
        }
    }
    // Settle: every answer arrives, whatever is lost is outwaited; the client converges.
    for version in answerable {
        let _ = sub.delivered(version);
    }
    now += STALE_IN_FLIGHT + policy.min_interval + Duration::from_secs(1);
    let wall = epoch + chrono::Duration::from_std(now - start).expect("fuzz time spans are short");
    // Every part of the final state, each answered at once.
    for _ in 0..10_000 {
        let Plan::Send(doc) = sub.plan(&latest, now, wall, false, policy) else {
            break;
        };
        let (held_version, held) = match &client {
            Some((v, l)) => (Some(*v), l.as_slice()),
            None => (None, &[][..]),
        };
        let next = apply(held, held_version, &doc).expect("final document applies");
        client = Some((doc.version, next));
        let _ = sub.delivered(doc.version);
        if doc.complete {
            break;
        }
    }
    if let Some((_, held)) = &client {
        assert_eq!(held, &canonical(&latest), "client did not converge");
    }
    Ok(())
}

/// What the model knows of one subscription the machine admitted.
struct Live {
    /// The version its next Notification must carry.
    next: u64,
    /// The Notification awaiting its answer, and when it was sent.
    in_flight: Option<(u64, Instant)>,
}

/// A request sent to the machine and not answered yet.
enum Asked {
    Subscribe { id: String, first: u64 },
    Refresh,
}

/// The session machine against a model of what the proxy sees.
fn machine(u: &mut Unstructured<'_>) -> Result<()> {
    const IDS: [&str; 4] = ["s0", "s1", "s2", "s3"];
    let settings = Settings {
        policy: Policy {
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            sip_domain: "example.com".into(),
        },
        notify_policy: NotifyPolicy {
            min_interval: Duration::from_millis(u.int_in_range(0..=2_000)?),
            full_only: u.ratio(1, 4)?,
            max_body_bytes: u.int_in_range(300..=65_536)?,
            show_cancelled: true,
        },
        default_window: Default::default(),
        auth: u.arbitrary()?,
        trust_flow_identity: u.arbitrary()?,
        proxy: "192.0.2.1:1".into(),
    };
    let metrics = Metrics::default();
    let mut machine = Session::new(settings, metrics.clone());
    let mut now = Now {
        at: Instant::now(),
        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
    };
    let mut docs: HashMap<String, Arc<UserDoc>> = HashMap::new();
    for user in &USERS[..2] {
        let doc = UserDoc {
            revision: 0,
            conferences: Arc::new(conferences(u)?),
            changed_at: None,
        };
        docs.insert((*user).to_owned(), Arc::new(doc));
    }
    let mut next_request = 0u64;
    let mut asked: HashMap<u64, Asked> = HashMap::new();
    let mut live: HashMap<String, Live> = HashMap::new();
    // Sign-ins and loads the machine asked for, not reported yet (`None`: a sign-in).
    let mut jobs: Vec<(Ticket, Option<String>)> = Vec::new();
    // Cache attachments per user: loads reported done, less releases.
    let mut attached: HashMap<String, usize> = HashMap::new();
    for _ in 0..u.int_in_range(0..=64)? {
        let id = IDS[u.int_in_range(0..=3)?].to_owned();
        let mut admin = false;
        let input = match u.int_in_range(0..=9)? {
            0 | 1 => {
                next_request += 1;
                let user = USERS[u.int_in_range(0..=2)?].to_owned();
                let resume_version = if u.ratio(1, 4)? {
                    Some(u.int_in_range(0..=1_000)?)
                } else {
                    None
                };
                let first = resume_version.map_or(0, |v: u64| v + 1);
                asked.insert(
                    next_request,
                    Asked::Subscribe {
                        id: id.clone(),
                        first,
                    },
                );
                Input::Subscribe(session::Subscribe {
                    id,
                    request_id: next_request,
                    request: SubscribeRequest {
                        requester: if u.ratio(7, 8)? {
                            user.clone()
                        } else {
                            aor(u)?
                        },
                        subscriber: user,
                        event: "conference-list".into(),
                        accept: vec![],
                        expires: *u.choose(&[None, Some(0), Some(30), Some(600), Some(100_000)])?,
                        window: Default::default(),
                    },
                    credentials: u.ratio(1, 2)?.then(|| Credentials::Bearer("t".into())),
                    flow_identity: if u.arbitrary()? { Some(aor(u)?) } else { None },
                    client_address: "198.51.100.1:1".into(),
                    resume_version,
                    max_body_bytes: None,
                })
            }
            2 => {
                next_request += 1;
                asked.insert(next_request, Asked::Refresh);
                Input::Refresh(session::Refresh {
                    id,
                    request_id: next_request,
                    expires: *u.choose(&[None, Some(0), Some(30), Some(600)])?,
                    credentials: u.ratio(1, 3)?.then(|| Credentials::Bearer("t".into())),
                    client_address: "198.51.100.1:1".into(),
                })
            }
            3 => {
                live.remove(&id);
                Input::Unsubscribe { id }
            }
            4 => {
                let version = match machine.subscription(&id).and_then(|s| s.in_flight()) {
                    Some(v) if u.ratio(3, 4)? => v,
                    _ => u.int_in_range(0..=3)?,
                };
                let outcome = *u.choose(&[
                    Delivery::Accepted,
                    Delivery::Accepted,
                    Delivery::Accepted,
                    Delivery::Rejected,
                    Delivery::TimedOut,
                ])?;
                if let Some(l) = live.get_mut(&id) {
                    if outcome != Delivery::Accepted {
                        live.remove(&id);
                    } else if l.in_flight.is_some_and(|(v, _)| v == version) {
                        l.in_flight = None;
                    }
                }
                Input::Delivered {
                    id,
                    version,
                    outcome,
                }
            }
            5 if !jobs.is_empty() => {
                let (ticket, load) = jobs.remove(u.choose_index(jobs.len())?);
                match load {
                    Some(user) => {
                        let result = match u.int_in_range(0..=5)? {
                            0 => Err(AttachError::TooMany),
                            1 => Err(AttachError::Directory(DirectoryError::PostgresOnly)),
                            _ => {
                                *attached.entry(user).or_default() += 1;
                                Ok(())
                            }
                        };
                        Input::Loaded { ticket, result }
                    }
                    None => {
                        let verdict = match u.int_in_range(0..=4)? {
                            0 => Err(DirectoryError::PostgresOnly),
                            1 => Ok(Verdict {
                                outcome: Outcome::Challenge {
                                    stale: u.arbitrary()?,
                                },
                                label: Label::Failed,
                            }),
                            2 => Ok(Verdict {
                                outcome: Outcome::Throttled { retry_after: 9 },
                                label: Label::Throttled,
                            }),
                            _ => Ok(Verdict {
                                outcome: Outcome::Authenticated { identity: aor(u)? },
                                label: Label::Ok,
                            }),
                        };
                        Input::Verified { ticket, verdict }
                    }
                }
            }
            6 => {
                let user = USERS[u.int_in_range(0..=1)?].to_owned();
                let revision = docs.get(&user).map_or(0, |d| d.revision + 1);
                let ago = Duration::from_millis(u.int_in_range(0..=10_000)?);
                let doc = UserDoc {
                    revision,
                    conferences: Arc::new(conferences(u)?),
                    changed_at: u.arbitrary::<bool>()?.then(|| now.wall - ago),
                };
                docs.insert(user.clone(), Arc::new(doc));
                Input::UsersChanged(HashSet::from([user]))
            }
            7 => {
                admin = true;
                Input::Admin(if u.arbitrary()? {
                    AdminQuery::List { user: None }
                } else {
                    AdminQuery::Resend {
                        user: USERS[u.int_in_range(0..=2)?].to_owned(),
                    }
                })
            }
            _ => {
                now = now.after(Duration::from_millis(u.int_in_range(0..=90_000)?));
                Input::Deadline
            }
        };
        let outputs = machine.handle(input, now, &docs);
        let admin_answers = outputs
            .iter()
            .filter(|o| matches!(o, Output::Admin(_)))
            .count();
        assert_eq!(
            admin_answers,
            usize::from(admin),
            "one admin answer per command"
        );
        for output in outputs {
            match output {
                Output::Answer(a) => {
                    let request = asked.remove(&a.request_id);
                    assert!(request.is_some(), "answered twice or never asked: {a:?}");
                    if let (Some(Asked::Subscribe { id, first }), Reply::Ok { .. }) =
                        (request, &a.reply)
                    {
                        assert_eq!(id, a.id);
                        let fresh = live.insert(
                            id,
                            Live {
                                next: first,
                                in_flight: None,
                            },
                        );
                        assert!(fresh.is_none(), "admitted twice: {}", a.id);
                    }
                }
                Output::Notify(n) => {
                    let Some(l) = live.get_mut(&n.id) else {
                        panic!("a Notification before its OK Answer or after its end: {n:?}")
                    };
                    assert_eq!(n.version, l.next, "versions go up by one");
                    l.next += 1;
                    match n.state {
                        session::State::Terminated(_) => {
                            live.remove(&n.id);
                        }
                        session::State::Active { .. } => {
                            if let Some((v, at)) = l.in_flight {
                                assert!(
                                    now.at >= at + STALE_IN_FLIGHT,
                                    "v{} overtook v{v} in flight",
                                    n.version
                                );
                            }
                            l.in_flight = Some((n.version, now.at));
                        }
                    }
                }
                Output::Verify(v) => jobs.push((v.ticket, None)),
                Output::Load { ticket, user } => jobs.push((ticket, Some(user))),
                Output::Release { user } => {
                    let n = attached.entry(user).or_default();
                    assert!(*n > 0, "released more than was attached");
                    *n -= 1;
                }
                Output::Admin(_) => {}
                Output::End => panic!("ended without a shutdown"),
            }
        }
        // The cache holds each user once per live subscription of this session.
        for user in &USERS {
            let held = IDS
                .iter()
                .filter(|id| {
                    machine
                        .subscription(id)
                        .is_some_and(|s| s.subscriber() == *user)
                })
                .count();
            assert_eq!(
                attached.get(*user).copied().unwrap_or(0),
                held,
                "attachments of {user}"
            );
        }
        assert_eq!(metrics.subscriptions.get(), machine.len() as i64);
    }
    // Shutdown: every live subscription ends, deactivated, and the session ends last.
    let outputs = machine.handle(Input::Shutdown, now, &docs);
    assert_eq!(outputs.last(), Some(&Output::End));
    for output in &outputs {
        if let Output::Notify(n) = output {
            assert_eq!(
                n.state,
                session::State::Terminated(session::Reason::Deactivated)
            );
            let l = live.remove(&n.id).expect("a live subscription");
            assert_eq!(n.version, l.next);
        }
    }
    assert!(
        live.is_empty(),
        "not deactivated: {:?}",
        live.keys().collect::<Vec<_>>()
    );
    assert_eq!(metrics.subscriptions.get(), 0);
    Ok(())
}

/// The list as a client holds it after rendering and parsing: sorted by entity.
fn canonical(list: &[Conference]) -> Vec<Conference> {
    let doc = document::ConferenceList::full("x", 0, list.to_vec());
    let wire = document::ConferenceList::parse(&doc.render()).expect("full document parses");
    apply(&[], None, &wire).expect("full applies")
}

fn conferences(u: &mut Unstructured<'_>) -> Result<Vec<Conference>> {
    let mut by: BTreeMap<String, Conference> = BTreeMap::new();
    for _ in 0..u.int_in_range(0..=5)? {
        let n = u.int_in_range(0..=5)?;
        let c = Conference {
            entity: format!("sip:conf{n}@example.com"),
            description: ConferenceDescription {
                subject: match u.int_in_range(0..=2)? {
                    0 => None,
                    1 => Some("weekly".into()),
                    _ => Some(format!("s{}", u.int_in_range(0..=3)?)),
                },
                maximum_user_count: u.ratio(1, 3)?.then_some(10),
                ..ConferenceDescription::default()
            },
            role: u.ratio(1, 2)?.then(|| "participant".into()),
            ..Conference::default()
        };
        by.insert(c.entity.clone(), c);
    }
    Ok(by.into_values().collect())
}
