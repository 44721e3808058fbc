//! delta-seconds values: Expires (RFC 3261 §20.19), Min-Expires (§20.23) and Max-Forwards
//! (§20.22, plain digits).

use crate::ParseError;
use crate::lex::{parse_u32_digits, trim_lws};
use crate::message::{HeaderName, Headers};

/// Parses `1*DIGIT` after trimming whitespace; values above `u32::MAX` are errors
/// (RFC 4475 §3.1.2.4).
pub fn parse_delta_seconds(s: &str) -> Result<u32, ParseError> {
    parse_u32_digits(trim_lws(s)).ok_or(ParseError::BadNumber)
}

fn first_number(headers: &Headers, name: &HeaderName) -> Result<Option<u32>, ParseError> {
    headers.get(name).map(parse_delta_seconds).transpose()
}

/// The first Expires value, if present (RFC 3261 §20.19, RFC 6665 §8.2).
pub fn expires(headers: &Headers) -> Result<Option<u32>, ParseError> {
    first_number(headers, &HeaderName::EXPIRES)
}

/// The first Min-Expires value, if present (RFC 3261 §20.23).
pub fn min_expires(headers: &Headers) -> Result<Option<u32>, ParseError> {
    first_number(headers, &HeaderName::MIN_EXPIRES)
}

/// The first Max-Forwards value, if present (RFC 3261 §20.22; not capped at 255 here).
pub fn max_forwards(headers: &Headers) -> Result<Option<u32>, ParseError> {
    first_number(headers, &HeaderName::MAX_FORWARDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_seconds() {
        assert_eq!(parse_delta_seconds(" 3600 "), Ok(3600));
        assert_eq!(parse_delta_seconds("0068"), Ok(68));
        assert_eq!(parse_delta_seconds("4294967295"), Ok(u32::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            "1 2",
            "4294967296",
            "10000000000000000000000",
        ] {
            assert_eq!(
                parse_delta_seconds(bad),
                Err(ParseError::BadNumber),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn header_helpers() {
        let mut h = Headers::new();
        assert_eq!(expires(&h), Ok(None));
        h.push(HeaderName::new("expires"), "600");
        h.push(HeaderName::MIN_EXPIRES, "60");
        h.push(HeaderName::MAX_FORWARDS, "x");
        assert_eq!(expires(&h), Ok(Some(600)));
        assert_eq!(min_expires(&h), Ok(Some(60)));
        assert_eq!(max_forwards(&h), Err(ParseError::BadNumber));
    }
}
