//! Ordered `;name[=value]` parameter lists for URIs (RFC 3261 §19.1.1) and headers
//! (`generic-param`, RFC 3261 §25.1).

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token, is_unreserved, is_ws, valid_escapes};

/// Ordered `(name, value)` pairs; `None` is a flag parameter such as `;lr`. Names compare
/// case-insensitively; values are stored as received (a quoted-string keeps its quotes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Params(Vec<(String, Option<String>)>);

impl Params {
    /// An empty list.
    pub fn new() -> Self {
        Params(Vec::new())
    }

    /// `None` if absent, `Some(None)` for a flag, `Some(Some(v))` for `name=v`.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `name`, if present with a value.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    /// Whether `name` is present (flag or valued).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Replaces the first `name` (dropping later duplicates) or appends it.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let mut value = Some(value.map(str::to_owned));
        self.0.retain_mut(|(n, v)| {
            if !n.eq_ignore_ascii_case(name) {
                return true;
            }
            // The first `name` takes the new value; later ones are dropped.
            match value.take() {
                Some(new) => {
                    *v = new;
                    true
                }
                None => false,
            }
        });
        if let Some(value) = value {
            self.0.push((name.to_owned(), value));
        }
    }

    /// Removes every `name`.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// All parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn push(&mut self, name: &str, value: Option<&str>) {
        self.0.push((name.to_owned(), value.map(str::to_owned)));
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, value) in &self.0 {
            write!(f, ";{name}")?;
            if let Some(v) = value {
                write!(f, "={v}")?;
            }
        }
        Ok(())
    }
}

/// RFC 3261 §25.1 `paramchar` (escapes checked separately).
fn is_uri_paramchar(b: u8) -> bool {
    is_unreserved(b) || b"[]/:&+$%".contains(&b)
}

/// Unquoted header parameter value: token or host (IPv6 with or without brackets).
fn is_header_value_char(b: u8) -> bool {
    is_token(b) || b"[]:".contains(&b)
}

/// Parses `*( SEMI generic-param )` with optional whitespace around `;` and `=`, up to the
/// end of the cursor; anything else is an error.
pub(crate) fn parse_header_params(cur: &mut Cursor<'_>) -> Result<Params, ParseError> {
    let mut params = Params::new();
    loop {
        cur.skip_ws();
        if cur.is_eof() {
            return Ok(params);
        }
        if !cur.eat(b';') {
            return Err(ParseError::BadParam);
        }
        cur.skip_ws();
        let name = cur.take_while(is_token);
        if name.is_empty() {
            return Err(ParseError::BadParam);
        }
        let mark = cur.pos();
        cur.skip_ws();
        let value = if cur.eat(b'=') {
            cur.skip_ws();
            let v = if cur.peek() == Some(b'"') {
                cur.quoted_string()?
            } else {
                cur.take_while(is_header_value_char)
            };
            if v.is_empty() {
                return Err(ParseError::BadParam);
            }
            Some(v)
        } else {
            cur.reset(mark);
            None
        };
        params.push(name, value);
    }
}

/// Parses `*( ";" uri-parameter )` (no whitespace allowed), stopping at anything that is not
/// `;`.
pub(crate) fn parse_uri_params(cur: &mut Cursor<'_>) -> Result<Params, ParseError> {
    let mut params = Params::new();
    while cur.eat(b';') {
        let name = cur.take_while(is_uri_paramchar);
        if name.is_empty() || !valid_escapes(name) {
            return Err(ParseError::BadParam);
        }
        let value = if cur.eat(b'=') {
            let v = cur.take_while(is_uri_paramchar);
            if v.is_empty() || !valid_escapes(v) {
                return Err(ParseError::BadParam);
            }
            Some(v)
        } else {
            None
        };
        params.push(name, value);
    }
    if cur.peek().is_some_and(is_ws) {
        return Err(ParseError::BadParam);
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> Result<Params, ParseError> {
        parse_header_params(&mut Cursor::new(s))
    }

    #[test]
    fn header_params_with_whitespace_and_quotes() {
        let p = header(" ;   tag    = 1918181833n ; lr;q=\"a;b\";received=2001:db8::1").unwrap();
        let items: Vec<_> = p.iter().collect();
        assert_eq!(
            items,
            vec![
                ("tag", Some("1918181833n")),
                ("lr", None),
                ("q", Some("\"a;b\"")),
                ("received", Some("2001:db8::1")),
            ]
        );
        assert_eq!(
            p.to_string(),
            ";tag=1918181833n;lr;q=\"a;b\";received=2001:db8::1"
        );
    }

    #[test]
    fn header_params_errors() {
        assert_eq!(header(";;"), Err(ParseError::BadParam));
        assert_eq!(header(";a="), Err(ParseError::BadParam));
        assert_eq!(header("x"), Err(ParseError::BadParam));
        assert_eq!(header(";a=\"open"), Err(ParseError::UnterminatedQuote));
        assert_eq!(header(""), Ok(Params::new()));
    }

    #[test]
    fn uri_params() {
        let mut c = Cursor::new(";%6C%72;n%61me=v%61lue%25%34%31;transport=ws?x=y");
        let p = parse_uri_params(&mut c).unwrap();
        assert_eq!(p.get("%6c%72"), Some(None));
        assert_eq!(p.value("N%61ME"), Some("v%61lue%25%34%31"));
        assert_eq!(p.value("transport"), Some("ws"));
        assert_eq!(c.rest(), "?x=y");
        assert_eq!(
            parse_uri_params(&mut Cursor::new(";a=%zz")),
            Err(ParseError::BadParam)
        );
        assert_eq!(
            parse_uri_params(&mut Cursor::new("; lr")),
            Err(ParseError::BadParam)
        );
    }

    #[test]
    fn get_set_remove() {
        let mut p = Params::new();
        p.set("tag", Some("1"));
        p.set("lr", None);
        p.set("TAG", Some("2"));
        assert_eq!(p.to_string(), ";tag=2;lr");
        assert_eq!(p.get("Tag"), Some(Some("2")));
        assert_eq!(p.get("lr"), Some(None));
        assert_eq!(p.value("lr"), None);
        assert!(p.contains("LR"));
        p.remove("lr");
        assert_eq!(p.to_string(), ";tag=2");
        assert_eq!(p.len(), 1);
        assert!(!p.is_empty());
    }
}
