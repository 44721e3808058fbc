//! The proxy's dialog core (`Dialogs`, sans-IO) driven by arbitrary sequences of client
//! requests and responses, notifier Answers and Notifications, clock jumps, shutdown and
//! close, with a fake clock. Checked after every step:
//!
//! * every message it sends prints to bytes that parse again (the client must read them);
//! * routing is consistent: `Route` names a new subscription, every command but an
//!   `Unsubscribe` and every `Unroute` one that is routed, and the routed set is exactly the
//!   live dialogs;
//! * NOTIFY CSeqs of a dialog strictly increase;
//! * after `on_timeout(now)` no deadline is left at or before `now`; after `on_close`
//!   nothing is left.
#![no_main]

use conflist_proxy::dialog::{Action, DialogConfig, Dialogs, NotifyRetry, Transport};
use conflist_proxy::transaction::Timers;
use conflist_proxy::notifier::{
    Answer, Challenge, Command, Event, Notification, Reason, State, Verdict,
};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sip::{HeaderName, Message, NameAddr, Request};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new(u.int_in_range(1..=4).unwrap_or(2));
    while !u.is_empty() {
        if h.step(&mut u).is_err() {
            break;
        }
    }
    let actions = h.dialogs.on_close();
    h.check(&actions);
    assert!(h.dialogs.is_empty(), "dialogs left after on_close");
    assert!(
        h.routed.is_empty(),
        "subscriptions still routed after on_close"
    );
});

struct Harness {
    dialogs: Dialogs,
    now: Instant,
    routed: HashSet<String>,
    /// Requests the notifier has been asked to answer: (sub, request_id).
    asked: Vec<(String, u64)>,
    /// Dialogs the client knows: (Call-ID, our To-tag), from responses with a tag.
    known: Vec<(String, String)>,
    /// NOTIFYs sent to the client, newest last.
    notifies: Vec<Request>,
    /// Highest NOTIFY CSeq per (Call-ID, From-tag).
    notify_cseq: HashMap<(String, String), u32>,
}

const CALL_IDS: [&str; 3] = ["c1", "c2", "c3"];

impl Harness {
    fn new(max_dialogs: usize) -> Self {
        let cfg = DialogConfig {
            local_host: "127.0.0.1:8080".into(),
            transport: Transport::Ws,
            timers: Timers::default(),
            notify_timeout: Duration::from_secs(32),
            max_dialogs,
            max_route_set_size: 200,
            flow_identity_lifetime: Duration::from_secs(600),
            notify_retry: NotifyRetry {
                max_retry_after: Duration::from_secs(30),
                max_retries: 2,
            },
        };
        let mut dialogs = Dialogs::new(cfg, "p-1".into(), 7);
        dialogs.set_client_address("192.0.2.1".into());
        Self {
            dialogs,
            now: Instant::now(),
            routed: HashSet::new(),
            asked: Vec::new(),
            known: Vec::new(),
            notifies: Vec::new(),
            notify_cseq: HashMap::new(),
        }
    }

    fn step(&mut self, u: &mut Unstructured<'_>) -> Result<()> {
        let op = u.int_in_range(0..=9)?;
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("op {op}");
        }
        let actions = match op {
            0 => {
                let len = u.int_in_range(0..=1500)?;
                let raw = u.bytes(len.min(u.len()))?;
                match sip::parse_message(raw) {
                    Ok(Message::Request(r)) => self.dialogs.on_request(r, self.now),
                    Ok(Message::Response(r)) => self.dialogs.on_response(&r, self.now),
                    Err(_) => return Ok(()),
                }
            }
            1 | 2 => match self.subscribe(u)? {
                Some(req) => self.dialogs.on_request(req, self.now),
                None => return Ok(()),
            },
            3 => match self.other_request(u)? {
                Some(req) => self.dialogs.on_request(req, self.now),
                None => return Ok(()),
            },
            4 | 5 => {
                let event = self.answer(u)?;
                self.dialogs.on_event(event, self.now)
            }
            6 => {
                let event = self.notification(u)?;
                self.dialogs.on_event(event, self.now)
            }
            7 => match self.notify_response(u)? {
                Some(resp) => self.dialogs.on_response(&resp, self.now),
                None => return Ok(()),
            },
            8 => {
                self.now += Duration::from_millis(u.int_in_range(0..=40_000)?);
                let actions = self.dialogs.on_timeout(self.now);
                if let Some(next) = self.dialogs.next_deadline() {
                    assert!(
                        next > self.now,
                        "a deadline at or before now survived on_timeout"
                    );
                }
                actions
            }
            _ => {
                if u.ratio(1, 3)? {
                    self.dialogs.on_close()
                } else {
                    self.dialogs.on_shutdown(self.now)
                }
            }
        };
        self.check(&actions);
        Ok(())
    }

    /// Checks one batch of actions and learns from it.
    fn check(&mut self, actions: &[Action]) {
        if std::env::var_os("FUZZ_TRACE").is_some() {
            for a in actions {
                eprintln!("  {a:?}");
            }
        }
        for a in actions {
            match a {
                Action::Resend(msg) => {
                    let bytes = msg.to_bytes();
                    assert!(
                        sip::parse_message(&bytes).is_ok(),
                        "resent a message that does not parse"
                    );
                }
                Action::Respond { .. } | Action::Notify(_) => {
                    let msg = match a {
                        Action::Respond { response, .. } => Message::Response(response.clone()),
                        Action::Notify(r) => Message::Request(r.clone()),
                        _ => unreachable!(),
                    };
                    let bytes = msg.to_bytes();
                    let again = sip::parse_message(&bytes).unwrap_or_else(|e| {
                        panic!(
                            "sent a message that does not parse ({e}):\n{}",
                            String::from_utf8_lossy(&bytes)
                        )
                    });
                    match again {
                        Message::Response(r) => {
                            let call_id =
                                r.headers.get(&HeaderName::CALL_ID).unwrap_or("").to_owned();
                            if let Some(tag) = r
                                .headers
                                .get(&HeaderName::TO)
                                .and_then(|t| NameAddr::parse(t).ok())
                                .and_then(|t| t.tag().map(str::to_owned))
                                && self.known.len() < 64
                            {
                                self.known.push((call_id, tag));
                            }
                        }
                        Message::Request(r) => {
                            let call_id =
                                r.headers.get(&HeaderName::CALL_ID).unwrap_or("").to_owned();
                            let from_tag = r
                                .headers
                                .get(&HeaderName::FROM)
                                .and_then(|t| NameAddr::parse(t).ok())
                                .and_then(|t| t.tag().map(str::to_owned))
                                .expect("a NOTIFY carries our From-tag");
                            let cseq =
                                sip::CSeq::parse(r.headers.get(&HeaderName::CSEQ).expect("CSeq"))
                                    .expect("our CSeq parses")
                                    .seq;
                            if let Some(prev) = self.notify_cseq.insert((call_id, from_tag), cseq) {
                                assert!(cseq > prev, "NOTIFY CSeq went from {prev} to {cseq}");
                            }
                            if self.notifies.len() >= 16 {
                                self.notifies.remove(0);
                            }
                            self.notifies.push(r);
                        }
                    }
                }
                Action::Route { sub, .. } => {
                    assert!(self.routed.insert(sub.clone()), "{sub} routed twice");
                }
                Action::Upstream(cmd) => {
                    // An Unsubscribe answers events for a subscription this connection no
                    // longer (or never) had; the shell drops it when nothing is routed.
                    assert!(
                        self.routed.contains(cmd.sub())
                            || matches!(cmd, Command::Unsubscribe { .. }),
                        "command for unrouted {}: {cmd:?}",
                        cmd.sub()
                    );
                    match cmd {
                        Command::Subscribe {
                            sub, request_id, ..
                        }
                        | Command::Refresh {
                            sub, request_id, ..
                        } => {
                            if self.asked.len() >= 64 {
                                self.asked.remove(0);
                            }
                            self.asked.push((sub.clone(), *request_id));
                        }
                        _ => {}
                    }
                }
                Action::Unroute(sub) => {
                    assert!(
                        self.routed.remove(sub),
                        "unrouted {sub}, which was not routed"
                    );
                }
                // Refused, NotifyRetry: log-and-count actions for the shell.
                _ => {}
            }
        }
        assert_eq!(
            self.routed.len(),
            self.dialogs.len(),
            "routed subscriptions and live dialogs differ"
        );
    }

    fn subscribe(&mut self, u: &mut Unstructured<'_>) -> Result<Option<Request>> {
        let (call_id, to_tag) = if !self.known.is_empty() && u.ratio(1, 2)? {
            let (c, t) = u.choose(&self.known)?.clone();
            (c, format!(";tag={t}"))
        } else {
            (u.choose(&CALL_IDS)?.to_string(), String::new())
        };
        let cseq: u32 = u.int_in_range(0..=20)?;
        let mut extra = String::new();
        if u.ratio(2, 3)? {
            extra += &format!(
                "Expires: {}\r\n",
                u.choose(&[0u32, 1, 60, 600, 3600, u32::MAX])?
            );
        }
        extra += match u.int_in_range(0..=5)? {
            0 => "",
            1 => "Event: presence\r\n",
            2 => "Event: conference-list;id=7\r\n",
            3 => "Event: ;;\r\n",
            _ => "Event: conference-list\r\n",
        };
        extra += match u.int_in_range(0..=4)? {
            0 => "Accept: application/conference-list+xml\r\n",
            1 => "Accept: text/plain\r\n",
            2 => "Accept: ,\r\n",
            _ => "",
        };
        extra += match u.int_in_range(0..=5)? {
            0 => "Authorization: Bearer abc.def.ghi\r\n",
            1 => {
                "Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"n\", uri=\"sip:alice@example.com\", response=\"0123456789abcdef0123456789abcdef\"\r\n"
            }
            2 => {
                "Authorization: Digest username=\"alice\", uri=\"sip:other@example.com\", response=\"x\"\r\n"
            }
            3 => "Authorization: Basic x\r\n",
            _ => "",
        };
        extra += match u.int_in_range(0..=4)? {
            0 => "",
            1 => "Contact: garbage\r\n",
            _ => "Contact: <sip:xyz@abc.invalid;transport=ws>\r\n",
        };
        for _ in 0..u.int_in_range(0..=3)? {
            extra += "Record-Route: <sip:edge.example.com;lr;padding=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa>\r\n";
        }
        if u.ratio(1, 8)? {
            extra += "Require: foo\r\n";
        }
        if u.ratio(1, 8)? {
            extra += "Max-Forwards: 0\r\n";
        }
        let ruri = *u.choose(&[
            "sip:alice@example.com",
            "sips:alice@example.com",
            "tel:+1555",
            "sip:example.com",
        ])?;
        let from = *u.choose(&[
            "<sip:alice@example.com>;tag=r1",
            "<sip:bob@example.com>;tag=r2",
            "<sip:alice@example.com>",
        ])?;
        Ok(parse(&format!(
            "SUBSCRIBE {ruri} SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bK{cseq}x;received=192.0.2.1\r\nMax-Forwards: 70\r\nTo: <sip:alice@example.com>{to_tag}\r\nFrom: {from}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} SUBSCRIBE\r\n{extra}Content-Length: 0\r\n\r\n"
        )))
    }

    fn other_request(&mut self, u: &mut Unstructured<'_>) -> Result<Option<Request>> {
        let method = *u.choose(&[
            "OPTIONS", "NOTIFY", "BYE", "INVITE", "CANCEL", "ACK", "FROB", "MESSAGE",
        ])?;
        let to_tag = if !self.known.is_empty() && u.ratio(1, 2)? {
            format!(";tag={}", u.choose(&self.known)?.1)
        } else {
            String::new()
        };
        let call_id = u.choose(&CALL_IDS)?;
        Ok(parse(&format!(
            "{method} sip:alice@example.com SIP/2.0\r\nVia: SIP/2.0/WSS abc.invalid;branch=z9hG4bKo\r\nMax-Forwards: 70\r\nTo: <sip:alice@example.com>{to_tag}\r\nFrom: <sip:alice@example.com>;tag=r1\r\nCall-ID: {call_id}\r\nCSeq: 5 {method}\r\nContent-Length: 0\r\n\r\n"
        )))
    }

    fn answer(&mut self, u: &mut Unstructured<'_>) -> Result<Event> {
        let (sub, request_id) = if !self.asked.is_empty() && u.ratio(7, 8)? {
            u.choose(&self.asked)?.clone()
        } else {
            (
                format!("p-1-{}", u.int_in_range(0..=3)?),
                u.int_in_range(0..=5)?,
            )
        };
        let verdict = match u.int_in_range(0..=10)? {
            0 => Verdict::Unauthorized(Challenge {
                realm: "example.com".into(),
                nonce: "abc".into(),
                opaque: u.ratio(1, 2)?.then(|| "op".into()),
                algorithms: vec!["SHA-256".into(), "MD5".into()],
                stale: u.arbitrary()?,
            }),
            1 => Verdict::Forbidden,
            2 => Verdict::NotFound,
            3 => Verdict::IntervalTooBrief {
                min: u.arbitrary()?,
            },
            4 => Verdict::BadEvent,
            5 => Verdict::NotAcceptable,
            6 => Verdict::NoSuchSubscription,
            7 => Verdict::Unavailable {
                retry_after: u.arbitrary()?,
            },
            8 => Verdict::Internal,
            _ => Verdict::Ok {
                granted: u.arbitrary()?,
                identity: u.ratio(1, 2)?.then(|| "sip:alice@example.com".into()),
            },
        };
        Ok(Event::Answer(Answer {
            sub,
            request_id,
            verdict,
        }))
    }

    fn notification(&mut self, u: &mut Unstructured<'_>) -> Result<Event> {
        let sub = if !self.routed.is_empty() && u.ratio(7, 8)? {
            let subs: Vec<&String> = self.routed.iter().collect();
            (*u.choose(&subs)?).clone()
        } else {
            format!("p-1-{}", u.int_in_range(0..=3)?)
        };
        let state = match u.int_in_range(0..=4)? {
            0 => State::Pending,
            1 => State::Terminated(*u.choose(&[
                Reason::Deactivated,
                Reason::Probation,
                Reason::Rejected,
                Reason::Timeout,
                Reason::Giveup,
                Reason::Noresource,
                Reason::Invariant,
                Reason::None,
            ])?),
            _ => State::Active,
        };
        let body_len = u.int_in_range(0..=64)?;
        Ok(Event::Notification(Notification {
            sub,
            version: u.arbitrary()?,
            state,
            expires: u.arbitrary()?,
            content_type: u
                .ratio(3, 4)?
                .then(|| "application/conference-list+xml".into()),
            body: u.bytes(body_len.min(u.len()))?.to_vec(),
        }))
    }

    /// The client's answer to one of the NOTIFYs sent (sometimes with a wrong CSeq).
    fn notify_response(&mut self, u: &mut Unstructured<'_>) -> Result<Option<sip::Response>> {
        if self.notifies.is_empty() {
            return Ok(None);
        }
        let notify = u.choose(&self.notifies)?.clone();
        let status = u.int_in_range(100..=699)?;
        let Some(code) = sip::StatusCode::new(status) else {
            return Ok(None);
        };
        let mut resp = sip::Response::for_request(&notify, code);
        if u.ratio(1, 8)? {
            resp.headers.set(HeaderName::CSEQ, "1 NOTIFY");
        }
        if u.ratio(1, 3)? {
            let after = *u.choose(&["0", "1", "29", "31", "120", "x", "5;duration=10"])?;
            resp.headers.push(HeaderName::RETRY_AFTER, after);
        }
        Ok(Some(resp))
    }
}

fn parse(raw: &str) -> Option<Request> {
    match sip::parse_message(raw.as_bytes()) {
        Ok(Message::Request(r)) => Some(r),
        _ => None,
    }
}
