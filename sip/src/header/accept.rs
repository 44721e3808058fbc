//! Accept (RFC 3261 §20.1) media ranges.

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token};
use crate::message::{HeaderName, Headers};
use crate::params::{Params, parse_header_params};

/// `type/subtype;params`, where type and/or subtype may be `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// Media type as received, e.g. `application` or `*`.
    pub media_type: String,
    /// Subtype as received, e.g. `conference-info+xml` or `*`.
    pub subtype: String,
    /// Media parameters (including `q`).
    pub params: Params,
}

impl MediaRange {
    /// Parses one media range (already split at commas).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let media_type = cur.take_while(is_token);
        cur.skip_ws();
        if media_type.is_empty() || !cur.eat(b'/') {
            return Err(ParseError::BadMediaRange);
        }
        cur.skip_ws();
        let subtype = cur.take_while(is_token);
        if subtype.is_empty() {
            return Err(ParseError::BadMediaRange);
        }
        let params = parse_header_params(&mut cur).map_err(|_| ParseError::BadMediaRange)?;
        Ok(MediaRange {
            media_type: media_type.to_owned(),
            subtype: subtype.to_owned(),
            params,
        })
    }

    /// Whether this range accepts `media_type/subtype` (case-insensitive, `*` wildcards).
    pub fn matches(&self, media_type: &str, subtype: &str) -> bool {
        let part = |range: &str, value: &str| range == "*" || range.eq_ignore_ascii_case(value);
        part(&self.media_type, media_type) && part(&self.subtype, subtype)
    }
}

impl fmt::Display for MediaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}{}", self.media_type, self.subtype, self.params)
    }
}

/// All Accept ranges: `None` when there is no Accept header, `Some(vec![])` when an Accept
/// header is present but empty (RFC 3261 §20.1: then nothing is acceptable).
pub fn parse_accept(headers: &Headers) -> Result<Option<Vec<MediaRange>>, ParseError> {
    if !headers.contains(&HeaderName::ACCEPT) {
        return Ok(None);
    }
    headers
        .get_split(&HeaderName::ACCEPT)
        .map(MediaRange::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match_with_wildcards() {
        let r = MediaRange::parse("Application / Conference-Info+XML ; q=0.5").unwrap();
        assert_eq!(r.media_type, "Application");
        assert_eq!(r.subtype, "Conference-Info+XML");
        assert_eq!(r.params.value("q"), Some("0.5"));
        assert_eq!(r.to_string(), "Application/Conference-Info+XML;q=0.5");
        assert!(r.matches("application", "conference-info+xml"));
        assert!(!r.matches("application", "sdp"));
        let any_app = MediaRange::parse("application/*").unwrap();
        assert!(any_app.matches("APPLICATION", "pidf+xml"));
        assert!(!any_app.matches("text", "plain"));
        assert!(MediaRange::parse("*/*").unwrap().matches("text", "plain"));
    }

    #[test]
    fn rejects() {
        for bad in ["", "application", "application/", "/sdp", "a/b;", "a/b c"] {
            assert_eq!(
                MediaRange::parse(bad),
                Err(ParseError::BadMediaRange),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn accept_header_presence() {
        let mut h = Headers::new();
        assert_eq!(parse_accept(&h), Ok(None));
        h.push(HeaderName::ACCEPT, "");
        assert_eq!(parse_accept(&h), Ok(Some(vec![])));
        h.push(
            HeaderName::new("accept"),
            "application/sdp, application/pkcs7-mime,  multipart/mixed",
        );
        let subtypes: Vec<_> = parse_accept(&h)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|r| r.subtype)
            .collect();
        assert_eq!(subtypes, vec!["sdp", "pkcs7-mime", "mixed"]);
        h.push(HeaderName::ACCEPT, "bogus");
        assert_eq!(parse_accept(&h), Err(ParseError::BadMediaRange));
    }
}
