//! Via (RFC 3261 §20.42, §18.2.1; WebSocket transports RFC 7118 §5).

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_token};
use crate::message::{HeaderName, Headers};
use crate::params::{Params, parse_header_params};

/// One Via value: `SIP/2.0/transport host[:port];params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, uppercased (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, `WSS` or unknown).
    pub transport: String,
    /// The sent-by host as received (IPv6 references keep their brackets).
    pub host: String,
    /// The sent-by port, if any.
    pub port: Option<u16>,
    /// Via parameters (`branch`, `received`, `rport`, ...).
    pub params: Params,
}

impl Via {
    /// Parses one Via value (already split at commas); whitespace is allowed around `/`, `:`,
    /// `;` and `=` (RFC 4475 §3.1.1.1).
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let protocol = cur.take_while(is_token);
        let version = slash_token(&mut cur)?;
        let transport = slash_token(&mut cur)?;
        if !protocol.eq_ignore_ascii_case("SIP") || version != "2.0" || !cur.skip_ws() {
            return Err(ParseError::BadVia);
        }
        let host = cur.host().ok_or(ParseError::BadVia)?.to_owned();
        cur.skip_ws();
        let port = if cur.eat(b':') {
            cur.skip_ws();
            Some(cur.port().ok_or(ParseError::BadVia)?)
        } else {
            None
        };
        let params = parse_header_params(&mut cur).map_err(|_| ParseError::BadVia)?;
        Ok(Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    /// Every Via value of `headers`, in order, split at commas.
    pub fn parse_all(headers: &Headers) -> Result<Vec<Via>, ParseError> {
        headers
            .get_split(&HeaderName::VIA)
            .map(Via::parse)
            .collect()
    }

    /// The `branch` parameter (RFC 3261 §8.1.1.7).
    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// The `received` parameter (RFC 3261 §18.2.1).
    pub fn received(&self) -> Option<&str> {
        self.params.value("received")
    }

    /// The `rport` parameter (RFC 3581): `Some(None)` when requested without a value.
    pub fn rport(&self) -> Option<Option<&str>> {
        self.params.get("rport")
    }
}

/// `SWS "/" SWS token`.
fn slash_token<'a>(cur: &mut Cursor<'a>) -> Result<&'a str, ParseError> {
    cur.skip_ws();
    if !cur.eat(b'/') {
        return Err(ParseError::BadVia);
    }
    cur.skip_ws();
    let token = cur.take_while(is_token);
    if token.is_empty() {
        return Err(ParseError::BadVia);
    }
    Ok(token)
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}", self.params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_via_with_received_and_rport() {
        let v = Via::parse(
            "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKnashd92;rport=5060;received=192.0.2.4",
        )
        .unwrap();
        assert_eq!(v.transport, "WSS");
        assert_eq!(v.host, "df7jal23ls0d.invalid");
        assert_eq!(v.port, None);
        assert_eq!(v.branch(), Some("z9hG4bKnashd92"));
        assert_eq!(v.rport(), Some(Some("5060")));
        assert_eq!(v.received(), Some("192.0.2.4"));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKnashd92;rport=5060;received=192.0.2.4"
        );
    }

    #[test]
    fn ipv6_and_flag_rport() {
        let v =
            Via::parse("SIP/2.0/udp [2001:db8::9]:5070;rport;branch=z9hG4bK1;received=2001:db8::2")
                .unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "[2001:db8::9]");
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("2001:db8::2"));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP [2001:db8::9]:5070;rport;branch=z9hG4bK1;received=2001:db8::2"
        );
    }

    #[test]
    fn whitespace_everywhere() {
        let v = Via::parse("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.host, "192.0.2.2");
        let v =
            Via::parse("SIP  / 2.0  / TCP     spindle.example.com   ;   branch  =   z9hG4bK9ikj8")
                .unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
        let v = Via::parse("SIP/2.0/TCP host : 5061").unwrap();
        assert_eq!(v.port, Some(5061));
    }

    #[test]
    fn rejects() {
        for bad in [
            "SIP/2.0/UDP 192.0.2.15;;",
            "SIP/2.0/UDP",
            "SIP/7.0/UDP host",
            "SIP/2.0 host",
            "SIP/2.0/UDPhost",
            "SIP/2.0/UDP host:99999",
            "SIP/2.0/UDP host junk",
            ";",
        ] {
            assert_eq!(Via::parse(bad), Err(ParseError::BadVia), "{bad:?}");
        }
    }

    #[test]
    fn parse_all_splits_lines_and_commas() {
        let mut h = Headers::new();
        h.push(
            HeaderName::new("v"),
            "SIP/2.0/WS a;branch=z9hG4bK1 , SIP/2.0/UDP b:5060",
        );
        h.push(HeaderName::VIA, "SIP/2.0/TLS c");
        let hosts: Vec<_> = Via::parse_all(&h)
            .unwrap()
            .into_iter()
            .map(|v| v.host)
            .collect();
        assert_eq!(hosts, vec!["a", "b", "c"]);
    }
}
