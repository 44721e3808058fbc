//! Subscription lifetime, sans-IO: the policy that admits a SUBSCRIBE (event, accept, identity,
//! Min-Expires) and the registry of one proxy session's live subscriptions (versions and
//! expiry deadlines). No sockets, no database, no clock: `now` is passed in.
//!
//! RFC 6665 §4.2.1.1 (expiry: 423 with Min-Expires, server may shorten), §4.2.1.2 (every
//! SUBSCRIBE is answered by a NOTIFY), §4.2.2 (termination reasons).

mod notify;
mod registry;
pub mod view;

pub use notify::{DEFAULT_MAX_BODY_BYTES, NotifyPolicy, Plan, STALE_IN_FLIGHT};
pub use registry::{Delivered, Registry, Subscription};
pub use view::Window;

/// The only event package this service serves.
pub const EVENT_PACKAGE: &str = "conference-list";
/// The package's body type (and default type when a SUBSCRIBE carries no Accept).
pub const CONTENT_TYPE: &str = document::CONTENT_TYPE;

/// Expiry bounds and the served domain; from config.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Shortest positive duration granted; less is answered 423 with Min-Expires.
    pub min_expires: u32,
    /// Granted when the SUBSCRIBE names no duration.
    pub default_expires: u32,
    /// Longer requests are shortened to this.
    pub max_expires: u32,
    /// Subscribers must be addresses of record in this domain.
    pub sip_domain: String,
}

/// What a proxy asked for: the domain form of `conflist.v1.Subscribe`.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Whose list (address of record).
    pub subscriber: String,
    /// Who asks (address of record).
    pub requester: String,
    /// Event package.
    pub event: String,
    /// Acceptable media types, each `type/subtype` possibly with wildcards; empty = default.
    pub accept: Vec<String>,
    /// Requested seconds; `None` = default.
    pub expires: Option<u32>,
    /// The part of the list asked for (before the server's defaults).
    pub window: Window,
}

/// Why a request is refused; mapped to a proto AnswerStatus (and so a SIP status) in `api`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not the conference-list package (489).
    #[error("unsupported event package")]
    BadEvent,
    /// Accept excludes application/conference-list+xml (406).
    #[error("conference-list documents are not acceptable to the subscriber")]
    NotAcceptable,
    /// The requester may not see this list, or holds too many subscriptions (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Not a user of the served domain (404).
    #[error("no such user")]
    NotFound,
    /// Duration below the minimum (423).
    #[error("interval too brief")]
    IntervalTooBrief {
        /// The Min-Expires to advertise.
        min: u32,
    },
    /// Refresh of an unknown subscription (481).
    #[error("no such subscription")]
    NoSuchSubscription,
    /// The directory could not be read (503).
    #[error("service unavailable")]
    Unavailable,
}

impl Policy {
    /// Admits a new subscription: returns the granted duration (0 for a fetch).
    ///
    /// `identity` is who signed in (authentication on) and must be the subscriber; with
    /// authentication off (`None`) the claimed requester (the From address) must be.
    pub fn admit(&self, req: &SubscribeRequest, identity: Option<&str>) -> Result<u32, Rejection> {
        if req.event != EVENT_PACKAGE {
            return Err(Rejection::BadEvent);
        }
        if !req.accept.is_empty() && !req.accept.iter().any(|a| accepts_package_type(a)) {
            return Err(Rejection::NotAcceptable);
        }
        if !same_domain(&req.subscriber, &self.sip_domain) {
            return Err(Rejection::NotFound);
        }
        let asker = identity.unwrap_or(&req.requester);
        if !same_aor(asker, &req.subscriber) {
            return Err(Rejection::Forbidden(
                "only the owner may subscribe to a conference list",
            ));
        }
        self.grant(req.expires)
    }

    /// Grants a duration for a new subscription or refresh (RFC 6665 §4.2.1.1).
    pub fn grant(&self, requested: Option<u32>) -> Result<u32, Rejection> {
        match requested {
            None => Ok(self
                .default_expires
                .clamp(self.min_expires, self.max_expires)),
            Some(0) => Ok(0),
            Some(s) if s < self.min_expires => Err(Rejection::IntervalTooBrief {
                min: self.min_expires,
            }),
            Some(s) => Ok(s.min(self.max_expires)),
        }
    }
}

/// `application/conference-list+xml`, `application/*` or `*/*`, parameters ignored.
fn accepts_package_type(range: &str) -> bool {
    let essence = range.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    let (ty, sub) = (ty.trim(), sub.trim());
    (ty == "*" && sub == "*")
        || (ty.eq_ignore_ascii_case("application")
            && (sub == "*" || sub.eq_ignore_ascii_case("conference-list+xml")))
}

/// Whether two addresses of record name the same user: scheme and host compare
/// case-insensitively, the user part exactly (RFC 3261 §19.1.4).
pub fn same_aor(a: &str, b: &str) -> bool {
    fn split(aor: &str) -> Option<(&str, &str, &str)> {
        let (scheme, rest) = aor.trim().split_once(':')?;
        let (user, host) = rest.rsplit_once('@')?;
        Some((scheme, user, host))
    }
    match (split(a), split(b)) {
        (Some((sa, ua, ha)), Some((sb, ub, hb))) => {
            sa.eq_ignore_ascii_case(sb) && ua == ub && ha.eq_ignore_ascii_case(hb)
        }
        _ => a == b,
    }
}

/// `sip:alice@example.com` is in `example.com` (host compared case-insensitively).
fn same_domain(aor: &str, domain: &str) -> bool {
    aor.rsplit_once('@')
        .is_some_and(|(_, host)| host.eq_ignore_ascii_case(domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            sip_domain: "example.com".into(),
        }
    }

    fn req() -> SubscribeRequest {
        SubscribeRequest {
            subscriber: "sip:alice@example.com".into(),
            requester: "sip:alice@example.com".into(),
            event: "conference-list".into(),
            accept: vec![],
            expires: Some(600),
            window: Window::default(),
        }
    }

    #[test]
    fn grants_requested_default_and_capped_durations() {
        assert_eq!(policy().admit(&req(), None), Ok(600));
        assert_eq!(policy().grant(None), Ok(3600));
        assert_eq!(policy().grant(Some(100_000)), Ok(7200));
        assert_eq!(policy().grant(Some(0)), Ok(0), "a fetch");
        assert_eq!(
            policy().grant(Some(59)),
            Err(Rejection::IntervalTooBrief { min: 60 })
        );
    }

    #[test]
    fn rejects_other_packages_types_users_and_domains() {
        let mut r = req();
        r.event = "presence".into();
        assert_eq!(policy().admit(&r, None), Err(Rejection::BadEvent));

        let mut r = req();
        r.accept = vec!["application/pidf+xml".into(), "text/plain".into()];
        assert_eq!(policy().admit(&r, None), Err(Rejection::NotAcceptable));

        let mut r = req();
        r.requester = "sip:mallory@example.com".into();
        assert!(matches!(
            policy().admit(&r, None),
            Err(Rejection::Forbidden(_))
        ));

        let mut r = req();
        r.subscriber = "sip:alice@elsewhere.net".into();
        r.requester = r.subscriber.clone();
        assert_eq!(policy().admit(&r, None), Err(Rejection::NotFound));
    }

    #[test]
    fn with_authentication_the_identity_must_be_the_subscriber() {
        let mut r = req();
        r.requester = "sip:someone-else@example.com".into();
        assert_eq!(
            policy().admit(&r, Some("sip:alice@EXAMPLE.com")),
            Ok(600),
            "the signed-in identity counts, not From"
        );
        assert!(matches!(
            policy().admit(&req(), Some("sip:mallory@example.com")),
            Err(Rejection::Forbidden(_))
        ));
        assert!(!same_aor("sip:Alice@example.com", "sip:alice@example.com"));
        assert!(same_aor("SIP:alice@Example.COM", "sip:alice@example.com"));
    }

    #[test]
    fn accept_wildcards_and_parameters() {
        for ok in [
            "application/conference-list+xml",
            "Application/Conference-List+XML;q=0.5",
            "application/*",
            "*/*",
        ] {
            assert!(accepts_package_type(ok), "{ok}");
        }
        for bad in ["application/pidf+xml", "text/*", "garbage", ""] {
            assert!(!accepts_package_type(bad), "{bad}");
        }
    }
}
