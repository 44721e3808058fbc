//! CSeq (RFC 3261 §20.16).

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, parse_u32_digits, trim_lws};
use crate::message::Method;

/// `seq method`. Sequence numbers up to `u32::MAX` are accepted (RFC 3261 says < 2^31);
/// larger ones are errors (RFC 4475 §3.1.2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// The sequence number.
    pub seq: u32,
    /// The method, which must match the request's (RFC 3261 §8.2, RFC 4475 §3.1.2.17).
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`.
    pub fn parse(s: &str) -> Result<CSeq, ParseError> {
        let mut cur = Cursor::new(trim_lws(s));
        let seq =
            parse_u32_digits(cur.take_while(|b| b.is_ascii_digit())).ok_or(ParseError::BadCSeq)?;
        if !cur.skip_ws() {
            return Err(ParseError::BadCSeq);
        }
        let method = Method::parse(cur.rest()).map_err(|_| ParseError::BadCSeq)?;
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let c = CSeq::parse(" 0009  INVITE ").unwrap();
        assert_eq!(
            c,
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert_eq!(c.to_string(), "9 INVITE");
        let c = CSeq::parse("4294967295 SUBSCRIBE").unwrap();
        assert_eq!(c.seq, u32::MAX);
        assert_eq!(c.to_string(), "4294967295 SUBSCRIBE");
        assert_eq!(
            CSeq::parse("29344 RE%47IST%45R").unwrap().method,
            Method::Other("RE%47IST%45R".into())
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "36893488147419103232 REGISTER",
            "4294967296 INVITE",
            "1",
            "INVITE",
            "-1 INVITE",
            "1INVITE",
            "1 INVITE x",
            "",
        ] {
            assert_eq!(CSeq::parse(bad), Err(ParseError::BadCSeq), "{bad:?}");
        }
    }
}
