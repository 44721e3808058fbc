//! Lexical helpers shared by the parsers (RFC 3261 §25.1 basic rules).
//!
//! Scanning always stops at an ASCII byte or at the end of input, so every slice boundary is a
//! `char` boundary; slicing still goes through `str::get` so nothing can panic.

use crate::ParseError;

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// RFC 3261 §25.1 `unreserved` (alphanum / mark).
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// SP or HTAB.
pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Whether `s` is a non-empty RFC 3261 token.
pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// Trims SP and HTAB at both ends.
pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Every `%` in `s` is followed by two hex digits (RFC 3261 §25.1 `escaped`).
pub(crate) fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// Parses plain ASCII digits (no sign, no spaces) into a `u32`; `None` if empty or too big.
pub(crate) fn parse_u32_digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Removes the quotes of a raw quoted-string and resolves `\x` quoted-pairs.
pub(crate) fn unquote(raw: &str) -> String {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Wraps `s` in quotes, escaping `"` and `\` (RFC 3261 §25.1 `quoted-pair`).
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A forward-only cursor over a header value.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn reset(&mut self, pos: usize) {
        self.pos = pos;
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(crate) fn is_eof(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    /// The text between `start` and the current position.
    pub(crate) fn since(&self, start: usize) -> &'a str {
        self.s.get(start..self.pos).unwrap_or("")
    }

    /// Consumes `b` if it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Skips SP/HTAB; returns whether anything was skipped.
    pub(crate) fn skip_ws(&mut self) -> bool {
        !self.take_while(is_ws).is_empty()
    }

    /// Consumes the longest run of bytes matching `f` (an ASCII-only predicate).
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.since(start)
    }

    /// Consumes a quoted-string (RFC 3261 §25.1) and returns it raw, quotes included.
    pub(crate) fn quoted_string(&mut self) -> Result<&'a str, ParseError> {
        let start = self.pos;
        if !self.eat(b'"') {
            return Err(ParseError::UnterminatedQuote);
        }
        loop {
            match self.peek() {
                None | Some(b'\r' | b'\n') => return Err(ParseError::UnterminatedQuote),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(self.since(start));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(c) if c < 0x80 && c != b'\r' && c != b'\n' => self.pos += 1,
                        _ => return Err(ParseError::UnterminatedQuote),
                    }
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// Consumes a host: `[IPv6]`, IPv4 or hostname (RFC 3261 §25.1 `host`).
    pub(crate) fn host(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if self.eat(b'[') {
            let inner = self.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
            if inner.is_empty() || !self.eat(b']') {
                return None;
            }
        } else if self
            .take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            .is_empty()
        {
            return None;
        }
        Some(self.since(start))
    }

    /// Consumes a port: 1 to 5 digits that fit in a `u16`.
    pub(crate) fn port(&mut self) -> Option<u16> {
        let digits = self.take_while(|b| b.is_ascii_digit());
        if digits.is_empty() || digits.len() > 5 {
            return None;
        }
        digits.parse().ok()
    }
}

/// Splits a header value at commas outside quoted-strings and `<...>` (RFC 3261 §7.3.1),
/// trimming each element and skipping empty ones.
#[derive(Debug, Clone)]
pub(crate) struct TopLevelSplit<'a> {
    rest: Option<&'a str>,
}

impl<'a> TopLevelSplit<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        TopLevelSplit { rest: Some(s) }
    }
}

/// Byte index of the first comma outside quotes and angle brackets.
fn top_level_comma(s: &str) -> Option<usize> {
    let (mut in_quote, mut escaped, mut in_angle) = (false, false, false);
    for (i, b) in s.bytes().enumerate() {
        if in_quote {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_quote = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => return Some(i),
            _ => {}
        }
    }
    None
}

impl<'a> Iterator for TopLevelSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let s = self.rest?;
            let piece = match top_level_comma(s) {
                Some(i) => {
                    self.rest = s.get(i + 1..);
                    s.get(..i).unwrap_or("")
                }
                None => {
                    self.rest = None;
                    s
                }
            };
            let piece = trim_lws(piece);
            if !piece.is_empty() {
                return Some(piece);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        TopLevelSplit::new(s).collect()
    }

    #[test]
    fn split_respects_quotes_and_angles() {
        assert_eq!(split("a, b ,c"), vec!["a", "b", "c"]);
        assert_eq!(
            split(r#""Bell, A" <sip:a@b>, <sip:c,d@e>;x=1"#),
            vec![r#""Bell, A" <sip:a@b>"#, "<sip:c,d@e>;x=1"]
        );
        assert_eq!(
            split(r#""x\", y" <sip:a@b>, z"#),
            vec![r#""x\", y" <sip:a@b>"#, "z"]
        );
        assert_eq!(split(" , ,"), Vec::<&str>::new());
    }

    #[test]
    fn quoted_string_and_unquote() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" <sip:x>"#);
        assert_eq!(c.quoted_string(), Ok(r#""J Rosenberg \\\"""#));
        assert_eq!(c.rest(), " <sip:x>");
        assert_eq!(unquote(r#""J Rosenberg \\\"""#), r#"J Rosenberg \""#);
        assert_eq!(quote(r#"J Rosenberg \""#), r#""J Rosenberg \\\"""#);
        assert_eq!(
            Cursor::new("\"open").quoted_string(),
            Err(ParseError::UnterminatedQuote)
        );
    }

    #[test]
    fn numbers_and_escapes() {
        assert_eq!(parse_u32_digits("0068"), Some(68));
        assert_eq!(parse_u32_digits("+5"), None);
        assert_eq!(parse_u32_digits("4294967295"), Some(4_294_967_295));
        assert_eq!(parse_u32_digits("4294967296"), None);
        assert!(valid_escapes("null-%00-null"));
        assert!(!valid_escapes("%Z%45"));
        assert!(!valid_escapes("abc%4"));
    }

    #[test]
    fn host_and_port() {
        let mut c = Cursor::new("[2001:db8::1]:5060;x");
        assert_eq!(c.host(), Some("[2001:db8::1]"));
        assert!(c.eat(b':'));
        assert_eq!(c.port(), Some(5060));
        assert_eq!(c.rest(), ";x");
        assert_eq!(Cursor::new("[::1").host(), None);
        assert_eq!(Cursor::new("70000").port(), None);
    }
}
