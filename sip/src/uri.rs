//! URIs (RFC 3261 §19.1, §25.1): `sip:`/`sips:` parsed into parts, other schemes (tel:, http:,
//! unknown ones) kept opaque.

use std::fmt;

use crate::ParseError;
use crate::lex::{Cursor, is_unreserved, valid_escapes};
use crate::params::{Params, parse_uri_params};

/// A URI. SIP/SIPS URIs expose user, host, port, parameters and headers; any other scheme is
/// kept as opaque text after the colon (RFC 3261 §19.1, RFC 4475 §3.3.2).
///
/// Equality is structural (same parts, same spelling), not RFC 3261 §19.1.4 comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    scheme: String,
    user: Option<String>,
    password: Option<String>,
    host: String,
    port: Option<u16>,
    params: Params,
    headers: Option<String>,
    opaque: Option<String>,
}

/// RFC 3261 §25.1 `user-unreserved` plus unreserved and `%`.
fn is_user_char(b: u8) -> bool {
    is_unreserved(b) || b"&=+$,;?/%".contains(&b)
}

/// RFC 3261 §25.1 password characters.
fn is_password_char(b: u8) -> bool {
    is_unreserved(b) || b"&=+$,%".contains(&b)
}

/// RFC 3261 §25.1 `hname`/`hvalue` characters plus the `=` and `&` separators.
fn is_header_char(b: u8) -> bool {
    is_unreserved(b) || b"[]/?:+$%=&".contains(&b)
}

fn valid_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn valid_part(s: &str, allowed: fn(u8) -> bool) -> bool {
    s.bytes().all(allowed) && valid_escapes(s)
}

impl Uri {
    /// Parses a URI. Whitespace, control characters, `<`, `>` and `"` are errors anywhere.
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        if s.is_empty()
            || s.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b"<>\"".contains(&b))
        {
            return Err(ParseError::BadUri);
        }
        let (scheme, rest) = s.split_once(':').ok_or(ParseError::BadUri)?;
        if !valid_scheme(scheme) || rest.is_empty() {
            return Err(ParseError::BadUri);
        }
        let scheme = scheme.to_ascii_lowercase();
        if scheme == "sip" || scheme == "sips" {
            return Self::parse_sip(scheme, rest);
        }
        Ok(Uri {
            scheme,
            user: None,
            password: None,
            host: String::new(),
            port: None,
            params: Params::new(),
            headers: None,
            opaque: Some(rest.to_owned()),
        })
    }

    fn parse_sip(scheme: String, rest: &str) -> Result<Uri, ParseError> {
        let (userinfo, hostpart) = match rest.split_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, pw)) => (user, Some(pw)),
                    None => (u, None),
                };
                if user.is_empty()
                    || !valid_part(user, is_user_char)
                    || !password.is_none_or(|p| valid_part(p, is_password_char))
                {
                    return Err(ParseError::BadUri);
                }
                (Some(user.to_owned()), password.map(str::to_owned))
            }
        };
        let mut cur = Cursor::new(hostpart);
        let host = cur.host().ok_or(ParseError::BadUri)?.to_owned();
        let port = if cur.eat(b':') {
            Some(cur.port().ok_or(ParseError::BadUri)?)
        } else {
            None
        };
        let params = parse_uri_params(&mut cur).map_err(|_| ParseError::BadUri)?;
        let headers = if cur.eat(b'?') {
            let h = cur.rest();
            if h.is_empty() || !valid_part(h, is_header_char) {
                return Err(ParseError::BadUri);
            }
            Some(h.to_owned())
        } else if cur.is_eof() {
            None
        } else {
            return Err(ParseError::BadUri);
        };
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params,
            headers,
            opaque: None,
        })
    }

    /// The scheme, lowercased.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// `sip` or `sips` (RFC 3261 §19.1).
    pub fn is_sip(&self) -> bool {
        self.opaque.is_none()
    }

    /// The user part as received (escapes kept), SIP URIs only.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password part (deprecated by RFC 3261 §19.1.1 but legal).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The host as received (IPv6 references keep their brackets); `""` for opaque URIs.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// URI parameters (`;transport=ws;lr`); empty for opaque URIs.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Mutable URI parameters (ignored when printing an opaque URI).
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// The raw `?` headers part (RFC 3261 §19.1.1), without the `?`.
    pub fn headers(&self) -> Option<&str> {
        self.headers.as_deref()
    }

    /// Everything after `scheme:` for a non-SIP URI.
    pub fn opaque(&self) -> Option<&str> {
        self.opaque.as_deref()
    }

    /// Address of record: `sip:user@host[:port]` with scheme and host lowercased, user kept,
    /// no parameters or headers (RFC 3261 §10.2.1). `None` for non-SIP URIs.
    pub fn aor(&self) -> Option<String> {
        if !self.is_sip() {
            return None;
        }
        let mut out = format!("{}:", self.scheme);
        if let Some(user) = &self.user {
            out.push_str(user);
            out.push('@');
        }
        out.push_str(&self.host.to_ascii_lowercase());
        if let Some(port) = self.port {
            out.push_str(&format!(":{port}"));
        }
        Some(out)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(opaque) = &self.opaque {
            return f.write_str(opaque);
        }
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(pw) = &self.password {
                write!(f, ":{pw}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_sip_uri() {
        let u = Uri::parse("SIP:alice:pw@Example.COM:5070;transport=ws;lr?subject=hi&x=y").unwrap();
        assert_eq!(u.scheme(), "sip");
        assert!(u.is_sip());
        assert_eq!(u.user(), Some("alice"));
        assert_eq!(u.password(), Some("pw"));
        assert_eq!(u.host(), "Example.COM");
        assert_eq!(u.port(), Some(5070));
        assert_eq!(u.params().value("transport"), Some("ws"));
        assert_eq!(u.params().get("lr"), Some(None));
        assert_eq!(u.headers(), Some("subject=hi&x=y"));
        assert_eq!(u.aor().as_deref(), Some("sip:alice@example.com:5070"));
        assert_eq!(
            u.to_string(),
            "sip:alice:pw@Example.COM:5070;transport=ws;lr?subject=hi&x=y"
        );
    }

    #[test]
    fn ipv6_and_hostonly() {
        let u = Uri::parse("sips:[2001:db8::1]:5061").unwrap();
        assert_eq!(u.host(), "[2001:db8::1]");
        assert_eq!(u.port(), Some(5061));
        assert_eq!(u.user(), None);
        assert_eq!(u.aor().as_deref(), Some("sips:[2001:db8::1]:5061"));
        let u = Uri::parse("sip:example.com").unwrap();
        assert_eq!(u.aor().as_deref(), Some("sip:example.com"));
        assert_eq!(
            Uri::parse("sip:[::1]:5060").unwrap().to_string(),
            "sip:[::1]:5060"
        );
    }

    #[test]
    fn escapes_and_odd_users_are_kept() {
        let u = Uri::parse("sip:null-%00-null@example.com").unwrap();
        assert_eq!(u.user(), Some("null-%00-null"));
        let u = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user(), Some("user;par=u%40example.net"));
        assert_eq!(u.host(), "example.com");
        let u = Uri::parse("sip:sips%3Auser%40example.com@example.net").unwrap();
        assert_eq!(u.user(), Some("sips%3Auser%40example.com"));
        assert_eq!(
            u.aor().as_deref(),
            Some("sip:sips%3Auser%40example.com@example.net")
        );
    }

    #[test]
    fn opaque_schemes() {
        let u = Uri::parse("nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert_eq!(u.scheme(), "nobodyknowsthisscheme");
        assert!(!u.is_sip());
        assert_eq!(u.host(), "");
        assert_eq!(u.opaque(), Some("totallyopaquecontent"));
        assert_eq!(u.aor(), None);
        assert_eq!(u.to_string(), "nobodyknowsthisscheme:totallyopaquecontent");
        let t = Uri::parse("tel:+1-201-555-0123;phone-context=example.com").unwrap();
        assert_eq!(t.scheme(), "tel");
        assert!(t.params().is_empty());
        assert_eq!(
            Uri::parse("soap.beep://192.0.2.103:3002").unwrap().scheme(),
            "soap.beep"
        );
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "",
            "<sip:user@example.com>",
            "sip:user@example.com; lr",
            "sip:user@exa mple.com",
            "sip:",
            "sip:@example.com",
            "sip:user@",
            "sip:user@host:99999",
            "sip:user@host:",
            "sip:us%zzer@host",
            "sip:[::1",
            "sip:host?",
            "sip:host#frag",
            "1sip:host",
            "nocolon",
        ] {
            assert_eq!(Uri::parse(bad), Err(ParseError::BadUri), "{bad:?}");
        }
    }
}
