//! `name-addr` / `addr-spec` values (RFC 3261 §20.10, §20.20, §20.39, §25.1): From, To,
//! Contact, Route, Record-Route.

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token, is_ws, quote, trim_lws, unquote};
use crate::params::{Params, parse_header_params};
use crate::uri::Uri;

/// An address with optional display name and header parameters.
///
/// In `addr-spec` form (no `<>`) everything after the first `;` is a *header* parameter, and
/// the URI may not contain `?` (RFC 3261 §20.10, RFC 4475 §3.1.2.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted and unescaped (`"A \"B\""` becomes `A "B"`).
    pub display_name: Option<String>,
    /// The address.
    pub uri: Uri,
    /// Header parameters (`;tag=...`, `;expires=...`).
    pub params: Params,
}

impl NameAddr {
    /// An address with no display name and no parameters.
    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display_name: None,
            uri,
            params: Params::new(),
        }
    }

    /// Parses one value (already split at top-level commas).
    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let (display_name, uri) = if cur.peek() == Some(b'"') {
            let name = unquote(cur.quoted_string()?);
            cur.skip_ws();
            (Some(name), angle_uri(&mut cur)?)
        } else {
            let start = cur.pos();
            let words = trim_lws(cur.take_while(|b| is_token(b) || is_ws(b)));
            if cur.peek() == Some(b'<') {
                let name = (!words.is_empty()).then(|| words.to_owned());
                (name, angle_uri(&mut cur)?)
            } else {
                cur.reset(start);
                (None, addr_spec(&mut cur)?)
            }
        };
        let params = parse_header_params(&mut cur)?;
        Ok(NameAddr {
            display_name,
            uri,
            params,
        })
    }

    /// The `tag` parameter (RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }

    /// Sets or replaces the `tag` parameter.
    pub fn set_tag(&mut self, tag: &str) {
        self.params.set("tag", Some(tag));
    }
}

/// `"<" addr-spec ">"`; no whitespace inside the brackets (RFC 4475 §3.1.2.14).
fn angle_uri(cur: &mut Cursor<'_>) -> Result<Uri, ParseError> {
    if !cur.eat(b'<') {
        return Err(ParseError::BadNameAddr);
    }
    let inner = cur.take_while(|b| b != b'>');
    if !cur.eat(b'>') {
        return Err(ParseError::BadNameAddr);
    }
    Uri::parse(inner)
}

/// A bare URI up to the first `;` or whitespace; `?` is not allowed here.
fn addr_spec(cur: &mut Cursor<'_>) -> Result<Uri, ParseError> {
    let raw = cur.take_while(|b| b != b';' && !is_ws(b));
    if raw.contains('?') || raw.contains(',') {
        return Err(ParseError::BadNameAddr);
    }
    Uri::parse(raw)
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.display_name {
            write!(f, "{} ", quote(name))?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_spec_params_belong_to_header() {
        let a = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam;tag=7").unwrap();
        assert_eq!(a.display_name, None);
        assert_eq!(a.uri.to_string(), "sip:+19725552222@gw1.example.net");
        assert!(a.uri.params().is_empty());
        assert_eq!(a.params.get("unknownparam"), Some(None));
        assert_eq!(a.tag(), Some("7"));
        assert_eq!(
            a.to_string(),
            "<sip:+19725552222@gw1.example.net>;unknownparam;tag=7"
        );
    }

    #[test]
    fn name_addr_params_belong_to_uri() {
        let a = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert_eq!(a.uri.params().get("unknownparam"), Some(None));
        assert!(a.params.is_empty());
    }

    #[test]
    fn quoted_display_names_with_escapes() {
        let a = NameAddr::parse(r#""J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98asjd8"#)
            .unwrap();
        assert_eq!(a.display_name.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(a.tag(), Some("98asjd8"));
        assert_eq!(
            a.to_string(),
            r#""J Rosenberg \\\"" <sip:jdrosen@example.com>;tag=98asjd8"#
        );
        assert_eq!(NameAddr::parse(&a.to_string()), Ok(a));
    }

    #[test]
    fn token_display_names() {
        let a = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(a.display_name.as_deref(), Some("caller"));
        let a = NameAddr::parse("A. Bell <sip:a.g.bell@example.com>").unwrap();
        assert_eq!(a.display_name.as_deref(), Some("A. Bell"));
        assert_eq!(a.to_string(), "\"A. Bell\" <sip:a.g.bell@example.com>");
        let a = NameAddr::parse("<sip:x@y>").unwrap();
        assert_eq!(a.display_name, None);
    }

    #[test]
    fn set_tag() {
        let mut a = NameAddr::parse("<sip:a@b>;tag=1").unwrap();
        a.set_tag("abc");
        assert_eq!(a.to_string(), "<sip:a@b>;tag=abc");
        let mut b = NameAddr::new(Uri::parse("sip:b@c").unwrap());
        b.set_tag("x");
        assert_eq!(b.to_string(), "<sip:b@c>;tag=x");
    }

    #[test]
    fn rejects_invalid_addresses() {
        assert_eq!(
            NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>"),
            Err(ParseError::UnterminatedQuote)
        );
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert_eq!(
            NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            Err(ParseError::BadNameAddr)
        );
        assert!(NameAddr::parse("\"Joe\" <sip:joe@example.org>;;;;").is_err());
        assert!(NameAddr::parse("<sip:a@b").is_err());
        assert!(NameAddr::parse("<sip:a@b> junk").is_err());
    }

    #[test]
    fn opaque_uris() {
        let a = NameAddr::parse("isbn:2983792873").unwrap();
        assert_eq!(a.uri.scheme(), "isbn");
        let a = NameAddr::parse("<http://www.example.com>;tag=3234233").unwrap();
        assert_eq!(a.uri.opaque(), Some("//www.example.com"));
        assert_eq!(a.tag(), Some("3234233"));
    }
}
