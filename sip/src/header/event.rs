//! Event (RFC 6665 §8.2.1, §7.2).

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token, is_token_str};
use crate::params::{Params, parse_header_params};

/// `event-type *( SEMI event-param )`. The `id` parameter is pulled out into [`Event::id`];
/// the package (with any `.template`) is stored as received and is compared by callers as a
/// case-sensitive token (RFC 6665 §7.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Event package, e.g. `conference` or `presence.winfo`.
    pub package: String,
    /// The `id` parameter that distinguishes subscriptions in one dialog (RFC 6665 §8.2.1).
    pub id: Option<String>,
    /// Other parameters.
    pub params: Params,
}

impl Event {
    /// An event of `package` with no id and no parameters.
    pub fn new(package: &str) -> Event {
        Event {
            package: package.to_owned(),
            id: None,
            params: Params::new(),
        }
    }

    /// Parses one Event value.
    pub fn parse(s: &str) -> Result<Event, ParseError> {
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let package = cur.take_while(is_token);
        if package.is_empty() {
            return Err(ParseError::BadEvent);
        }
        let mut params = parse_header_params(&mut cur).map_err(|_| ParseError::BadEvent)?;
        let id = match params.get("id") {
            None => None,
            Some(Some(v)) if is_token_str(v) => Some(v.to_owned()),
            Some(_) => return Err(ParseError::BadEvent),
        };
        params.remove("id");
        Ok(Event {
            package: package.to_owned(),
            id,
            params,
        })
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.package)?;
        if let Some(id) = &self.id {
            write!(f, ";id={id}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_id_and_params() {
        let e = Event::parse("conference ; id=42;x=y").unwrap();
        assert_eq!(e.package, "conference");
        assert_eq!(e.id.as_deref(), Some("42"));
        assert_eq!(e.params.value("x"), Some("y"));
        assert!(!e.params.contains("id"));
        assert_eq!(e.to_string(), "conference;id=42;x=y");
    }

    #[test]
    fn plain_and_template() {
        assert_eq!(
            Event::parse("presence.winfo"),
            Ok(Event::new("presence.winfo"))
        );
        assert_eq!(Event::new("dialog").to_string(), "dialog");
    }

    #[test]
    fn rejects() {
        assert_eq!(Event::parse(""), Err(ParseError::BadEvent));
        assert_eq!(Event::parse("a;id"), Err(ParseError::BadEvent));
        assert_eq!(Event::parse("a;id=\"q\""), Err(ParseError::BadEvent));
        assert_eq!(Event::parse("a b"), Err(ParseError::BadEvent));
        assert_eq!(Event::parse("<x>"), Err(ParseError::BadEvent));
    }
}
