//! Header names and the ordered header list (RFC 3261 §7.3).

use std::borrow::Cow;
use std::fmt;
use std::hash::{Hash, Hasher};

use crate::lex::TopLevelSplit;

/// A header field name. Compares and hashes case-insensitively (RFC 3261 §7.3.1); compact
/// forms are mapped to the long name and known names to their canonical spelling by
/// [`HeaderName::new`]; unknown names keep their original spelling.
#[derive(Debug, Clone)]
pub struct HeaderName(Cow<'static, str>);

/// Compact forms: RFC 3261 §7.3.3, RFC 6665 §8.2 (o, u), RFC 3515 (r), RFC 3892 (b),
/// RFC 4028 (x), RFC 3841 (a, j, d), RFC 4474 (y, n).
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Long names printed in their canonical spelling whatever the case received.
const KNOWN: &[&str] = &[
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow",
    "Authentication-Info",
    "Authorization",
    "CSeq",
    "Call-Info",
    "Content-Disposition",
    "Content-Language",
    "Date",
    "Error-Info",
    "Expires",
    "In-Reply-To",
    "MIME-Version",
    "Max-Forwards",
    "Min-Expires",
    "Organization",
    "Priority",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Proxy-Require",
    "Record-Route",
    "Reply-To",
    "Require",
    "Retry-After",
    "Route",
    "Server",
    "Subscription-State",
    "Timestamp",
    "Unsupported",
    "User-Agent",
    "WWW-Authenticate",
    "Warning",
];

impl HeaderName {
    /// Via (RFC 3261 §20.42).
    pub const VIA: HeaderName = HeaderName::from_static("Via");
    /// From (RFC 3261 §20.20).
    pub const FROM: HeaderName = HeaderName::from_static("From");
    /// To (RFC 3261 §20.39).
    pub const TO: HeaderName = HeaderName::from_static("To");
    /// Call-ID (RFC 3261 §20.8).
    pub const CALL_ID: HeaderName = HeaderName::from_static("Call-ID");
    /// CSeq (RFC 3261 §20.16).
    pub const CSEQ: HeaderName = HeaderName::from_static("CSeq");
    /// Contact (RFC 3261 §20.10).
    pub const CONTACT: HeaderName = HeaderName::from_static("Contact");
    /// Max-Forwards (RFC 3261 §20.22).
    pub const MAX_FORWARDS: HeaderName = HeaderName::from_static("Max-Forwards");
    /// Content-Length (RFC 3261 §20.14).
    pub const CONTENT_LENGTH: HeaderName = HeaderName::from_static("Content-Length");
    /// Content-Type (RFC 3261 §20.15).
    pub const CONTENT_TYPE: HeaderName = HeaderName::from_static("Content-Type");
    /// Event (RFC 6665 §8.2.1).
    pub const EVENT: HeaderName = HeaderName::from_static("Event");
    /// Expires (RFC 3261 §20.19).
    pub const EXPIRES: HeaderName = HeaderName::from_static("Expires");
    /// Min-Expires (RFC 3261 §20.23).
    pub const MIN_EXPIRES: HeaderName = HeaderName::from_static("Min-Expires");
    /// Accept (RFC 3261 §20.1).
    pub const ACCEPT: HeaderName = HeaderName::from_static("Accept");
    /// Allow (RFC 3261 §20.5).
    pub const ALLOW: HeaderName = HeaderName::from_static("Allow");
    /// Allow-Events (RFC 6665 §8.2.2).
    pub const ALLOW_EVENTS: HeaderName = HeaderName::from_static("Allow-Events");
    /// Subscription-State (RFC 6665 §8.2.3).
    pub const SUBSCRIPTION_STATE: HeaderName = HeaderName::from_static("Subscription-State");
    /// Supported (RFC 3261 §20.37).
    pub const SUPPORTED: HeaderName = HeaderName::from_static("Supported");
    /// Require (RFC 3261 §20.32).
    pub const REQUIRE: HeaderName = HeaderName::from_static("Require");
    /// Proxy-Require (RFC 3261 §20.29).
    pub const PROXY_REQUIRE: HeaderName = HeaderName::from_static("Proxy-Require");
    /// Record-Route (RFC 3261 §20.30).
    pub const RECORD_ROUTE: HeaderName = HeaderName::from_static("Record-Route");
    /// Route (RFC 3261 §20.34).
    pub const ROUTE: HeaderName = HeaderName::from_static("Route");
    /// User-Agent (RFC 3261 §20.41).
    pub const USER_AGENT: HeaderName = HeaderName::from_static("User-Agent");
    /// Server (RFC 3261 §20.35).
    pub const SERVER: HeaderName = HeaderName::from_static("Server");
    /// Authorization (RFC 3261 §20.7).
    pub const AUTHORIZATION: HeaderName = HeaderName::from_static("Authorization");
    /// WWW-Authenticate (RFC 3261 §20.44).
    pub const WWW_AUTHENTICATE: HeaderName = HeaderName::from_static("WWW-Authenticate");
    /// Proxy-Authorization (RFC 3261 §20.28).
    pub const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("Proxy-Authorization");
    /// Proxy-Authenticate (RFC 3261 §20.27).
    pub const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("Proxy-Authenticate");
    /// Retry-After (RFC 3261 §20.33).
    pub const RETRY_AFTER: HeaderName = HeaderName::from_static("Retry-After");
    /// Warning (RFC 3261 §20.43).
    pub const WARNING: HeaderName = HeaderName::from_static("Warning");
    /// Unsupported (RFC 3261 §20.40).
    pub const UNSUPPORTED: HeaderName = HeaderName::from_static("Unsupported");
    /// Date (RFC 3261 §20.17).
    pub const DATE: HeaderName = HeaderName::from_static("Date");
    /// Subject (RFC 3261 §20.36).
    pub const SUBJECT: HeaderName = HeaderName::from_static("Subject");

    /// A name used exactly as spelled (no compact-form mapping); for constants.
    pub const fn from_static(name: &'static str) -> HeaderName {
        HeaderName(Cow::Borrowed(name))
    }

    /// A name as received: compact forms (RFC 3261 §7.3.3) map to the long name, known names
    /// to their canonical spelling, anything else keeps its spelling.
    pub fn new(name: &str) -> HeaderName {
        if let [c] = name.as_bytes() {
            let c = c.to_ascii_lowercase();
            if let Some((_, long)) = COMPACT.iter().find(|(k, _)| *k == c) {
                return HeaderName::from_static(long);
            }
        }
        let known = COMPACT.iter().map(|(_, long)| long).chain(KNOWN);
        match known.into_iter().find(|k| k.eq_ignore_ascii_case(name)) {
            Some(k) => HeaderName::from_static(k),
            None => HeaderName(Cow::Owned(name.to_owned())),
        }
    }

    /// The name as it will be printed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq for HeaderName {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl Eq for HeaderName {}

impl Hash for HeaderName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The header lines of a message in received order, one entry per line (RFC 3261 §7.3):
/// duplicates are kept and a line `a, b` stays a single entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(HeaderName, String)>);

impl Headers {
    /// An empty list.
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// The value of the first line named `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of all lines named `name`, in order.
    pub fn get_all<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a str> + use<'a> {
        let name = name.clone();
        self.0
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Values of all lines of `name`, split at top-level commas (outside quotes and `<>`),
    /// trimmed, empty elements skipped (RFC 3261 §7.3.1). For Via, Accept, Allow, Supported,
    /// Contact, Route, Record-Route.
    pub fn get_split<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a str> + use<'a> {
        self.get_all(name).flat_map(TopLevelSplit::new)
    }

    /// Whether a line named `name` exists.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// Appends a line.
    pub fn push(&mut self, name: HeaderName, value: impl Into<String>) {
        self.0.push((name, value.into()));
    }

    /// Replaces all lines of `name` by one line, in place of the first, else appended.
    pub fn set(&mut self, name: HeaderName, value: impl Into<String>) {
        let mut value = Some(value.into());
        self.0.retain_mut(|(n, v)| {
            if *n != name {
                return true;
            }
            // The first line of `name` takes the new value; later ones are dropped.
            match value.take() {
                Some(new) => {
                    *v = new;
                    true
                }
                None => false,
            }
        });
        if let Some(value) = value {
            self.0.push((name, value));
        }
    }

    /// Removes every line named `name`.
    pub fn remove(&mut self, name: &HeaderName) {
        self.0.retain(|(n, _)| n != name);
    }

    /// All lines in order.
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &str)> {
        self.0.iter().map(|(n, v)| (n, v.as_str()))
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no lines.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn compact_forms_map_to_long_names() {
        let cases = [
            ("v", "Via"),
            ("f", "From"),
            ("t", "To"),
            ("i", "Call-ID"),
            ("m", "Contact"),
            ("l", "Content-Length"),
            ("k", "Supported"),
            ("e", "Content-Encoding"),
            ("o", "Event"),
            ("c", "Content-Type"),
            ("s", "Subject"),
            ("u", "Allow-Events"),
            ("V", "Via"),
            ("I", "Call-ID"),
        ];
        for (compact, long) in cases {
            assert_eq!(HeaderName::new(compact).as_str(), long, "{compact}");
        }
        assert_eq!(HeaderName::new("v"), HeaderName::VIA);
    }

    #[test]
    fn names_are_case_insensitive_and_canonicalised() {
        assert_eq!(HeaderName::new("MaX-fOrWaRdS").as_str(), "Max-Forwards");
        assert_eq!(HeaderName::new("cseq").as_str(), "CSeq");
        assert_eq!(HeaderName::new("X-Custom").as_str(), "X-Custom");
        assert_eq!(HeaderName::new("x-custom"), HeaderName::new("X-CUSTOM"));
        assert_eq!(HeaderName::new("x-custom").as_str(), "x-custom");
        let set: HashSet<HeaderName> = [HeaderName::new("X-A"), HeaderName::new("x-a")].into();
        assert_eq!(set.len(), 1);
    }

    fn sample() -> Headers {
        let mut h = Headers::new();
        h.push(
            HeaderName::new("v"),
            "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b",
        );
        h.push(HeaderName::CALL_ID, "abc");
        h.push(HeaderName::new("VIA"), "SIP/2.0/TCP c");
        h
    }

    #[test]
    fn get_get_all_and_split() {
        let h = sample();
        assert_eq!(h.len(), 3);
        assert_eq!(
            h.get(&HeaderName::VIA),
            Some("SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b")
        );
        assert_eq!(h.get_all(&HeaderName::VIA).count(), 2);
        assert_eq!(
            h.get_split(&HeaderName::VIA).collect::<Vec<_>>(),
            vec![
                "SIP/2.0/UDP a;branch=z9hG4bK1",
                "SIP/2.0/UDP b",
                "SIP/2.0/TCP c"
            ]
        );
        assert_eq!(h.get(&HeaderName::TO), None);
        assert!(h.contains(&HeaderName::CALL_ID));
    }

    #[test]
    fn set_replaces_in_place_of_first_and_remove() {
        let mut h = sample();
        h.set(HeaderName::VIA, "SIP/2.0/WS x");
        let lines: Vec<_> = h.iter().map(|(n, v)| (n.as_str(), v)).collect();
        assert_eq!(lines, vec![("Via", "SIP/2.0/WS x"), ("Call-ID", "abc")]);
        h.set(HeaderName::EXPIRES, "60");
        assert_eq!(h.iter().last().map(|(_, v)| v), Some("60"));
        h.remove(&HeaderName::VIA);
        assert_eq!(h.len(), 2);
        h.remove(&HeaderName::CALL_ID);
        h.remove(&HeaderName::EXPIRES);
        assert!(h.is_empty());
    }
}
