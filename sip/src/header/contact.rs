//! Contact (RFC 3261 §20.10): a list of name-addrs, or the `*` wildcard of REGISTER (§10.2.2).

use std::fmt;

use crate::ParseError;
use crate::message::{HeaderName, Headers};
use crate::name_addr::NameAddr;

/// One Contact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    /// `*` (REGISTER only, RFC 3261 §10.2.2).
    Wildcard,
    /// An address with header parameters (`expires`, `q`, ...).
    Addr(Box<NameAddr>),
}

impl Contact {
    /// Parses one Contact value (already split at commas).
    pub fn parse(s: &str) -> Result<Contact, ParseError> {
        if s.trim_matches([' ', '\t']) == "*" {
            Ok(Contact::Wildcard)
        } else {
            NameAddr::parse(s).map(|a| Contact::Addr(Box::new(a)))
        }
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Wildcard => f.write_str("*"),
            Contact::Addr(a) => write!(f, "{a}"),
        }
    }
}

/// Every Contact value of `headers`, in order, split at top-level commas.
pub fn parse_contacts(headers: &Headers) -> Result<Vec<Contact>, ParseError> {
    headers
        .get_split(&HeaderName::CONTACT)
        .map(Contact::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_wildcard() {
        let mut h = Headers::new();
        h.push(
            HeaderName::new("m"),
            "\"Bell, A\" <sip:a@b>;expires=60, sip:c@d;q=0.5",
        );
        h.push(HeaderName::CONTACT, " * ");
        let c = parse_contacts(&h).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].to_string(), "\"Bell, A\" <sip:a@b>;expires=60");
        assert_eq!(c[1].to_string(), "<sip:c@d>;q=0.5");
        assert_eq!(c[2], Contact::Wildcard);
        assert!(Contact::parse("sip:a@b?x=y").is_err());
    }
}
