//! Sanity checks on a request before an element acts on it (RFC 3261 §8.2, §16.3).
//!
//! Parsing ([`crate::parse_message`]) already guarantees a strict start line and a sane
//! Content-Length; this module checks the headers every request needs.

use crate::header::contact::Contact;
use crate::header::cseq::CSeq;
use crate::header::expires::parse_delta_seconds;
use crate::header::via::Via;
use crate::message::{HeaderName, Headers, Request};
use crate::name_addr::NameAddr;

/// Why a request must be refused with 400. `Display` is the reason phrase.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ValidationError {
    /// A mandatory header is absent (RFC 3261 §8.1.1), e.g. "Missing Call-ID".
    #[error("Missing {0}")]
    Missing(&'static str),
    /// A header does not parse, e.g. "Bad CSeq".
    #[error("Bad {0}")]
    Bad(&'static str),
    /// CSeq method differs from the request method (RFC 3261 §8.1.1.5, RFC 4475 §3.1.2.17).
    #[error("CSeq method mismatch")]
    CSeqMethodMismatch,
    /// A single-value header appears twice with different values (RFC 4475 §3.3.8).
    #[error("Duplicate {0}")]
    Duplicate(&'static str),
}

use ValidationError::{Bad, Duplicate, Missing};

/// Runs every check in order: Via, From, To, Call-ID, CSeq, Max-Forwards, Expires,
/// Content-Length, Contact, Date. Returns the first failure.
pub fn check_request(req: &Request) -> Result<(), ValidationError> {
    let h = &req.headers;
    check_via(h)?;
    for (name, label) in [(HeaderName::FROM, "From"), (HeaderName::TO, "To")] {
        let v = required(h, &name, label)?;
        NameAddr::parse(v).map_err(|_| Bad(label))?;
    }
    let call_id = required(h, &HeaderName::CALL_ID, "Call-ID")?;
    if call_id.is_empty() || call_id.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(Bad("Call-ID"));
    }
    let cseq = CSeq::parse(required(h, &HeaderName::CSEQ, "CSeq")?).map_err(|_| Bad("CSeq"))?;
    if cseq.method != req.method {
        return Err(ValidationError::CSeqMethodMismatch);
    }
    for (name, label) in [
        (HeaderName::MAX_FORWARDS, "Max-Forwards"),
        (HeaderName::EXPIRES, "Expires"),
        (HeaderName::CONTENT_LENGTH, "Content-Length"),
    ] {
        if let Some(v) = single(h, &name, label)? {
            parse_delta_seconds(v).map_err(|_| Bad(label))?;
        }
    }
    for v in h.get_split(&HeaderName::CONTACT) {
        Contact::parse(v).map_err(|_| Bad("Contact"))?;
    }
    if let Some(date) = single(h, &HeaderName::DATE, "Date")?
        && !is_rfc1123_gmt(date)
    {
        return Err(Bad("Date"));
    }
    Ok(())
}

/// At least one Via, every value parses (RFC 3261 §8.1.1.7, §20.42).
fn check_via(h: &Headers) -> Result<(), ValidationError> {
    let vias = Via::parse_all(h).map_err(|_| Bad("Via"))?;
    if vias.is_empty() {
        return Err(Missing("Via"));
    }
    Ok(())
}

/// The value of a single-value header; a second line with a different value is an error.
fn single<'a>(
    h: &'a Headers,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a str>, ValidationError> {
    let mut values = h.get_all(name);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.any(|v| v != first) {
        return Err(Duplicate(label));
    }
    Ok(Some(first))
}

fn required<'a>(
    h: &'a Headers,
    name: &HeaderName,
    label: &'static str,
) -> Result<&'a str, ValidationError> {
    single(h, name, label)?.ok_or(Missing(label))
}

const WKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// `wkday "," SP 2DIGIT SP month SP 4DIGIT SP 2DIGIT ":" 2DIGIT ":" 2DIGIT SP "GMT"`
/// (RFC 3261 §20.17, RFC 4475 §3.1.2.12).
fn is_rfc1123_gmt(s: &str) -> bool {
    let parts: Vec<&str> = s.split(' ').collect();
    let [wkday, day, month, year, time, zone] = parts.as_slice() else {
        return false;
    };
    let time_ok = {
        let t: Vec<&str> = time.split(':').collect();
        t.len() == 3 && t.iter().all(|p| digits(p, 2))
    };
    wkday.strip_suffix(',').is_some_and(|w| WKDAYS.contains(&w))
        && digits(day, 2)
        && MONTHS.contains(month)
        && digits(year, 4)
        && time_ok
        && *zone == "GMT"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Method, Request};
    use crate::uri::Uri;

    fn base() -> Request {
        let mut r = Request::new(
            Method::Subscribe,
            Uri::parse("sip:conf@example.com").unwrap(),
        );
        let h = &mut r.headers;
        h.push(HeaderName::VIA, "SIP/2.0/WS x.invalid;branch=z9hG4bK1");
        h.push(HeaderName::FROM, "<sip:a@example.com>;tag=1");
        h.push(HeaderName::TO, "<sip:conf@example.com>");
        h.push(HeaderName::CALL_ID, "abc@x");
        h.push(HeaderName::CSEQ, "1 SUBSCRIBE");
        h.push(HeaderName::MAX_FORWARDS, "70");
        r
    }

    fn with(name: HeaderName, value: &str) -> Request {
        let mut r = base();
        r.headers.push(name, value);
        r
    }

    fn without(name: &HeaderName) -> Request {
        let mut r = base();
        r.headers.remove(name);
        r
    }

    #[test]
    fn accepts_good_request() {
        assert_eq!(check_request(&base()), Ok(()));
        let ok = with(HeaderName::DATE, "Sat, 15 Oct 2005 04:44:56 GMT");
        assert_eq!(check_request(&ok), Ok(()));
        assert_eq!(check_request(&with(HeaderName::CONTACT, "*")), Ok(()));
        assert_eq!(check_request(&with(HeaderName::CALL_ID, "abc@x")), Ok(()));
    }

    #[test]
    fn missing_headers() {
        assert_eq!(
            check_request(&without(&HeaderName::VIA)),
            Err(Missing("Via"))
        );
        assert_eq!(
            check_request(&without(&HeaderName::FROM)),
            Err(Missing("From"))
        );
        assert_eq!(check_request(&without(&HeaderName::TO)), Err(Missing("To")));
        assert_eq!(
            check_request(&without(&HeaderName::CALL_ID)),
            Err(Missing("Call-ID"))
        );
        assert_eq!(
            check_request(&without(&HeaderName::CSEQ)),
            Err(Missing("CSeq"))
        );
        assert_eq!(check_request(&without(&HeaderName::MAX_FORWARDS)), Ok(()));
    }

    #[test]
    fn bad_and_duplicate_headers() {
        let cases = [
            (HeaderName::VIA, "SIP/2.0/UDP 192.0.2.15;;,;,,", Bad("Via")),
            (HeaderName::TO, "\"open <sip:a@b>", Duplicate("To")),
            (HeaderName::CALL_ID, "other", Duplicate("Call-ID")),
            (HeaderName::CSEQ, "2 SUBSCRIBE", Duplicate("CSeq")),
            (HeaderName::MAX_FORWARDS, "69", Duplicate("Max-Forwards")),
            (HeaderName::EXPIRES, "1e3", Bad("Expires")),
            (HeaderName::CONTACT, "sip:a@b?Route=x", Bad("Contact")),
            (
                HeaderName::DATE,
                "Fri, 01 Jan 2010 16:00:00 EST",
                Bad("Date"),
            ),
            (HeaderName::CONTENT_LENGTH, "-1", Bad("Content-Length")),
        ];
        for (name, value, err) in cases {
            assert_eq!(
                check_request(&with(name, value)),
                Err(err.clone()),
                "{value}"
            );
        }
        let mut r = without(&HeaderName::CALL_ID);
        r.headers.push(HeaderName::CALL_ID, "a b");
        assert_eq!(check_request(&r), Err(Bad("Call-ID")));
        let mut r = without(&HeaderName::FROM);
        r.headers
            .push(HeaderName::FROM, "Bell, Alexander <sip:a@b>");
        assert_eq!(check_request(&r), Err(Bad("From")));
    }

    #[test]
    fn cseq_checks() {
        let mut r = without(&HeaderName::CSEQ);
        r.headers.push(HeaderName::CSEQ, "8 INVITE");
        assert_eq!(check_request(&r), Err(ValidationError::CSeqMethodMismatch));
        let mut r = without(&HeaderName::CSEQ);
        r.headers
            .push(HeaderName::CSEQ, "36893488147419103232 SUBSCRIBE");
        assert_eq!(check_request(&r), Err(Bad("CSeq")));
    }

    #[test]
    fn display_is_a_reason_phrase() {
        assert_eq!(Missing("Call-ID").to_string(), "Missing Call-ID");
        assert_eq!(Bad("CSeq").to_string(), "Bad CSeq");
        assert_eq!(
            ValidationError::CSeqMethodMismatch.to_string(),
            "CSeq method mismatch"
        );
        assert_eq!(Duplicate("To").to_string(), "Duplicate To");
    }

    #[test]
    fn dates() {
        assert!(is_rfc1123_gmt("Sat, 15 Oct 2005 04:44:56 GMT"));
        assert!(!is_rfc1123_gmt("Sat, 15 Oct 2005 04:44:56 UTC"));
        assert!(!is_rfc1123_gmt("Sat 15 Oct 2005 04:44:56 GMT"));
        assert!(!is_rfc1123_gmt("Sat, 5 Oct 2005 04:44:56 GMT"));
        assert!(!is_rfc1123_gmt("Sat, 15 Okt 2005 04:44:56 GMT"));
        assert!(!is_rfc1123_gmt("Sat, 15 Oct 2005 4:44:56 GMT"));
    }
}
