//! Builds in-dialog NOTIFY requests (RFC 6665 §4.2.1.4, RFC 3261 §12.2.1.1).

use super::Dialog;
use crate::notifier::{Notification, State};
use sip::{HeaderName, Headers, Method, Request, SubscriptionState};

/// The NOTIFY carrying `n` in dialog `d` (CSeq already advanced).
pub(super) fn notify(d: &Dialog, n: &Notification, via: &str, contact: &str) -> Request {
    let mut h = Headers::new();
    h.push(HeaderName::VIA, via);
    h.push(HeaderName::MAX_FORWARDS, "70");
    for route in &d.route_set {
        h.push(HeaderName::ROUTE, route.clone());
    }
    h.push(HeaderName::FROM, d.local.to_string());
    h.push(HeaderName::TO, d.remote.to_string());
    h.push(HeaderName::CALL_ID, d.call_id.clone());
    h.push(HeaderName::CSEQ, format!("{} NOTIFY", d.local_cseq));
    h.push(HeaderName::CONTACT, contact);
    h.push(HeaderName::EVENT, d.event.clone());
    let state = match n.state {
        State::Active => SubscriptionState::Active { expires: n.expires },
        State::Pending => SubscriptionState::Pending { expires: n.expires },
        State::Terminated(reason) => SubscriptionState::Terminated {
            reason: reason.token().map(str::to_owned),
            retry_after: None,
        },
    };
    h.push(HeaderName::SUBSCRIPTION_STATE, state.to_string());
    if let Some(ct) = &n.content_type {
        h.push(HeaderName::CONTENT_TYPE, ct.clone());
    }
    Request {
        method: Method::Notify,
        uri: d.remote_target.clone(),
        headers: h,
        body: n.body.clone(),
    }
}
