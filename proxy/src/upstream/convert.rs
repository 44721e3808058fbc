//! `conflist.v1` ⇄ domain types, in one place.

use crate::notifier::{
    Answer, Challenge, Command, Credentials, Event, Notification, Outcome, Reason, State,
    SubscriptionId, Verdict,
};
use proto::v1::{
    self, AnswerStatus, DeliveryOutcome, ProxyMessage, ServerMessage, SubscriptionState,
    TerminationReason, proxy_message, server_message,
};

pub(super) fn to_proto(c: Command) -> ProxyMessage {
    let kind = match c {
        Command::Subscribe {
            sub,
            request_id,
            subscriber,
            requester,
            event,
            accept,
            expires,
            credentials,
            flow_identity,
            client_address,
            window,
            max_body_bytes,
        } => proxy_message::Kind::Subscribe(v1::Subscribe {
            subscription_id: sub,
            request_id,
            subscriber_uri: subscriber,
            requester_uri: requester,
            credentials: credentials.map(credentials_to_proto),
            event,
            accept,
            expires,
            resume_version: None,
            client_address,
            flow_identity: flow_identity.unwrap_or_default(),
            window: Some(v1::Window {
                past_seconds: window.past,
                ahead_seconds: window.ahead,
                max_count: window.max,
            }),
            max_body_bytes,
        }),
        Command::Refresh {
            sub,
            request_id,
            expires,
            credentials,
            client_address,
        } => proxy_message::Kind::Refresh(v1::Refresh {
            subscription_id: sub,
            request_id,
            expires,
            credentials: credentials.map(credentials_to_proto),
            client_address,
        }),
        Command::Unsubscribe { sub } => proxy_message::Kind::Unsubscribe(v1::Unsubscribe {
            subscription_id: sub,
        }),
        Command::Delivered {
            sub,
            version,
            outcome,
        } => proxy_message::Kind::Delivered(v1::Delivered {
            subscription_id: sub,
            version,
            outcome: match outcome {
                Outcome::Accepted => DeliveryOutcome::Accepted,
                Outcome::Rejected => DeliveryOutcome::Rejected,
                Outcome::Timeout => DeliveryOutcome::Timeout,
            }
            .into(),
        }),
    };
    ProxyMessage { kind: Some(kind) }
}

fn credentials_to_proto(c: Credentials) -> v1::Credentials {
    let kind = match c {
        Credentials::Bearer(token) => v1::credentials::Kind::BearerToken(token),
        Credentials::Digest {
            response: d,
            method,
        } => {
            let d = *d;
            v1::credentials::Kind::Digest(v1::DigestCredentials {
                username: d.username,
                realm: d.realm,
                nonce: d.nonce,
                uri: d.uri,
                response: d.response,
                algorithm: d.algorithm.unwrap_or_default(),
                qop: d.qop.unwrap_or_default(),
                nc: d.nc.unwrap_or_default(),
                cnonce: d.cnonce.unwrap_or_default(),
                opaque: d.opaque.unwrap_or_default(),
                method,
            })
        }
    };
    v1::Credentials { kind: Some(kind) }
}

/// The subscription and request id of a Subscribe or Refresh.
pub(super) fn request_of(m: &ProxyMessage) -> Option<(SubscriptionId, u64)> {
    match &m.kind {
        Some(proxy_message::Kind::Subscribe(s)) => Some((s.subscription_id.clone(), s.request_id)),
        Some(proxy_message::Kind::Refresh(r)) => Some((r.subscription_id.clone(), r.request_id)),
        _ => None,
    }
}

pub(super) fn from_proto(m: ServerMessage) -> Option<(SubscriptionId, Event)> {
    match m.kind? {
        server_message::Kind::Answer(a) => {
            let status = AnswerStatus::try_from(a.status).unwrap_or_default();
            let verdict = match status {
                AnswerStatus::Ok => Verdict::Ok {
                    granted: a.granted_expires,
                    identity: (!a.identity.is_empty()).then_some(a.identity),
                },
                AnswerStatus::Unauthorized => match a.challenge {
                    Some(c) if !c.nonce.is_empty() && !c.algorithms.is_empty() => {
                        Verdict::Unauthorized(Challenge {
                            realm: c.realm,
                            nonce: c.nonce,
                            opaque: (!c.opaque.is_empty()).then_some(c.opaque),
                            algorithms: c.algorithms,
                            stale: c.stale,
                        })
                    }
                    // A 401 the client could not answer helps nobody: treat it as a refusal.
                    _ => Verdict::Forbidden,
                },
                AnswerStatus::Forbidden => Verdict::Forbidden,
                AnswerStatus::NotFound => Verdict::NotFound,
                AnswerStatus::IntervalTooBrief => Verdict::IntervalTooBrief { min: a.min_expires },
                AnswerStatus::BadEvent => Verdict::BadEvent,
                AnswerStatus::NotAcceptable => Verdict::NotAcceptable,
                AnswerStatus::NoSuchSubscription => Verdict::NoSuchSubscription,
                AnswerStatus::Unavailable => Verdict::Unavailable {
                    retry_after: (a.retry_after > 0).then_some(a.retry_after),
                },
                AnswerStatus::InternalError | AnswerStatus::Unspecified => Verdict::Internal,
            };
            let sub = a.subscription_id;
            Some((
                sub.clone(),
                Event::Answer(Answer {
                    sub,
                    request_id: a.request_id,
                    verdict,
                }),
            ))
        }
        server_message::Kind::Notification(n) => {
            let state = match SubscriptionState::try_from(n.state).unwrap_or_default() {
                SubscriptionState::Active => State::Active,
                SubscriptionState::Pending => State::Pending,
                SubscriptionState::Terminated | SubscriptionState::Unspecified => {
                    State::Terminated(reason(n.reason))
                }
            };
            let sub = n.subscription_id;
            Some((
                sub.clone(),
                Event::Notification(Notification {
                    sub,
                    version: n.version,
                    state,
                    expires: n.expires,
                    content_type: (!n.content_type.is_empty()).then_some(n.content_type),
                    body: n.body,
                }),
            ))
        }
    }
}

fn reason(r: i32) -> Reason {
    match TerminationReason::try_from(r).unwrap_or_default() {
        TerminationReason::Deactivated => Reason::Deactivated,
        TerminationReason::Probation => Reason::Probation,
        TerminationReason::Rejected => Reason::Rejected,
        TerminationReason::Timeout => Reason::Timeout,
        TerminationReason::Giveup => Reason::Giveup,
        TerminationReason::Noresource => Reason::Noresource,
        TerminationReason::Invariant => Reason::Invariant,
        TerminationReason::Unspecified => Reason::None,
    }
}
