//! The server's sans-IO session logic (`conflist_server::subscription`) under arbitrary
//! sequences, with a fake clock and a model to compare against:
//!
//! * `Policy::admit` / `grant` with arbitrary requests: never panics, grants within
//!   `[min, max]` (or 0 for a fetch), 423 only below the minimum;
//! * `Registry` inserts, refreshes, deferred sends, expiry, removal and drain agree with a
//!   plain map of id → (user, expiry);
//! * `plan` against a simulated client that applies every document it receives: the client
//!   always ends up holding exactly the latest list, versions strictly increase, and a lost
//!   NOTIFY is followed (after `STALE_IN_FLIGHT`) by full state.
#![no_main]

use conflist_server::subscription::{
    NotifyPolicy, Plan, Policy, Registry, STALE_IN_FLIGHT, SubscribeRequest, Subscription, plan,
};
use document::{Conference, ConferenceDescription, DocumentState, apply};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = admission(&mut u);
    let _ = registry(&mut u);
    let _ = delivery(&mut u);
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
                let in_flight_since = sub.in_flight.and(sub.last_sent);
                let wall = epoch
                    + chrono::Duration::from_std(now - start).expect("fuzz time spans are short");
                match plan(&mut sub, &latest, now, wall, owed, policy) {
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
                        assert_eq!(sub.in_flight, Some(doc.version));
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
                if sub.in_flight.is_some() {
                    assert!(
                        sub.last_sent.is_some_and(|t| t + STALE_IN_FLIGHT > now),
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
        let Plan::Send(doc) = plan(&mut sub, &latest, now, wall, false, policy) else {
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
