//! SIP status codes (RFC 3261 §7.2, §21).

use std::fmt;

/// A SIP response status code, always in 100..=699 (RFC 3261 §7.2).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct StatusCode(u16);

/// Reason phrases of RFC 3261 §21 plus RFC 3265/6665 (202, 489) and RFC 5839 (204).
const REASONS: &[(u16, &str)] = &[
    (100, "Trying"),
    (180, "Ringing"),
    (181, "Call Is Being Forwarded"),
    (182, "Queued"),
    (183, "Session Progress"),
    (200, "OK"),
    (202, "Accepted"),
    (204, "No Notification"),
    (300, "Multiple Choices"),
    (301, "Moved Permanently"),
    (302, "Moved Temporarily"),
    (305, "Use Proxy"),
    (380, "Alternative Service"),
    (400, "Bad Request"),
    (401, "Unauthorized"),
    (402, "Payment Required"),
    (403, "Forbidden"),
    (404, "Not Found"),
    (405, "Method Not Allowed"),
    (406, "Not Acceptable"),
    (407, "Proxy Authentication Required"),
    (408, "Request Timeout"),
    (410, "Gone"),
    (413, "Request Entity Too Large"),
    (414, "Request-URI Too Long"),
    (415, "Unsupported Media Type"),
    (416, "Unsupported URI Scheme"),
    (420, "Bad Extension"),
    (421, "Extension Required"),
    (423, "Interval Too Brief"),
    (480, "Temporarily Unavailable"),
    (481, "Call/Transaction Does Not Exist"),
    (482, "Loop Detected"),
    (483, "Too Many Hops"),
    (484, "Address Incomplete"),
    (485, "Ambiguous"),
    (486, "Busy Here"),
    (487, "Request Terminated"),
    (488, "Not Acceptable Here"),
    (489, "Bad Event"),
    (491, "Request Pending"),
    (493, "Undecipherable"),
    (500, "Server Internal Error"),
    (501, "Not Implemented"),
    (502, "Bad Gateway"),
    (503, "Service Unavailable"),
    (504, "Server Time-out"),
    (505, "Version Not Supported"),
    (513, "Message Too Large"),
    (600, "Busy Everywhere"),
    (603, "Decline"),
    (604, "Does Not Exist Anywhere"),
    (606, "Not Acceptable"),
];

impl StatusCode {
    /// 100 Trying (RFC 3261 §21.1.1).
    pub const TRYING: StatusCode = StatusCode(100);
    /// 200 OK (RFC 3261 §21.2.1).
    pub const OK: StatusCode = StatusCode(200);
    /// 202 Accepted (RFC 6665 §8.3.1).
    pub const ACCEPTED: StatusCode = StatusCode(202);
    /// 400 Bad Request (RFC 3261 §21.4.1).
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    /// 401 Unauthorized (RFC 3261 §21.4.2).
    pub const UNAUTHORIZED: StatusCode = StatusCode(401);
    /// 403 Forbidden (RFC 3261 §21.4.4).
    pub const FORBIDDEN: StatusCode = StatusCode(403);
    /// 404 Not Found (RFC 3261 §21.4.5).
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    /// 405 Method Not Allowed (RFC 3261 §21.4.6).
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    /// 406 Not Acceptable (RFC 3261 §21.4.7).
    pub const NOT_ACCEPTABLE: StatusCode = StatusCode(406);
    /// 407 Proxy Authentication Required (RFC 3261 §21.4.8).
    pub const PROXY_AUTHENTICATION_REQUIRED: StatusCode = StatusCode(407);
    /// 408 Request Timeout (RFC 3261 §21.4.9).
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    /// 413 Request Entity Too Large (RFC 3261 §21.4.11).
    pub const REQUEST_ENTITY_TOO_LARGE: StatusCode = StatusCode(413);
    /// 415 Unsupported Media Type (RFC 3261 §21.4.13).
    pub const UNSUPPORTED_MEDIA_TYPE: StatusCode = StatusCode(415);
    /// 416 Unsupported URI Scheme (RFC 3261 §21.4.14).
    pub const UNSUPPORTED_URI_SCHEME: StatusCode = StatusCode(416);
    /// 420 Bad Extension (RFC 3261 §21.4.15).
    pub const BAD_EXTENSION: StatusCode = StatusCode(420);
    /// 423 Interval Too Brief (RFC 3261 §21.4.17).
    pub const INTERVAL_TOO_BRIEF: StatusCode = StatusCode(423);
    /// 480 Temporarily Unavailable (RFC 3261 §21.4.18).
    pub const TEMPORARILY_UNAVAILABLE: StatusCode = StatusCode(480);
    /// 481 Call/Transaction Does Not Exist (RFC 3261 §21.4.19).
    pub const CALL_DOES_NOT_EXIST: StatusCode = StatusCode(481);
    /// 482 Loop Detected (RFC 3261 §21.4.20).
    pub const LOOP_DETECTED: StatusCode = StatusCode(482);
    /// 483 Too Many Hops (RFC 3261 §21.4.21).
    pub const TOO_MANY_HOPS: StatusCode = StatusCode(483);
    /// 489 Bad Event (RFC 6665 §8.3.2).
    pub const BAD_EVENT: StatusCode = StatusCode(489);
    /// 500 Server Internal Error (RFC 3261 §21.5.1).
    pub const SERVER_INTERNAL_ERROR: StatusCode = StatusCode(500);
    /// 501 Not Implemented (RFC 3261 §21.5.2).
    pub const NOT_IMPLEMENTED: StatusCode = StatusCode(501);
    /// 503 Service Unavailable (RFC 3261 §21.5.4).
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    /// 505 Version Not Supported (RFC 3261 §21.5.6).
    pub const VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);
    /// 513 Message Too Large (RFC 3261 §21.5.7).
    pub const MESSAGE_TOO_LARGE: StatusCode = StatusCode(513);

    /// A status code; `None` outside 100..=699 (RFC 3261 §7.2, §21).
    pub const fn new(code: u16) -> Option<StatusCode> {
        if code >= 100 && code <= 699 {
            Some(StatusCode(code))
        } else {
            None
        }
    }

    /// The numeric code.
    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// The RFC 3261 §21 reason phrase, or a class name for unlisted codes.
    pub fn canonical_reason(self) -> &'static str {
        if let Some((_, reason)) = REASONS.iter().find(|(c, _)| *c == self.0) {
            return reason;
        }
        match self.0 / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        }
    }

    /// 1xx (RFC 3261 §7.2).
    pub fn is_provisional(self) -> bool {
        self.0 < 200
    }

    /// 2xx (RFC 3261 §7.2).
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }

    /// 2xx–6xx: ends the transaction (RFC 3261 §7.2).
    pub fn is_final(self) -> bool {
        self.0 >= 200
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_and_classes() {
        assert_eq!(StatusCode::new(99), None);
        assert_eq!(StatusCode::new(700), None);
        assert_eq!(StatusCode::new(202), Some(StatusCode::ACCEPTED));
        assert!(StatusCode::TRYING.is_provisional());
        assert!(!StatusCode::TRYING.is_final());
        assert!(StatusCode::OK.is_success());
        assert!(!StatusCode::BAD_EVENT.is_success());
        assert!(StatusCode::BAD_EVENT.is_final());
        assert_eq!(StatusCode::BAD_EVENT.as_u16(), 489);
        assert_eq!(StatusCode::OK.to_string(), "200");
    }

    #[test]
    fn reasons() {
        assert_eq!(StatusCode::OK.canonical_reason(), "OK");
        assert_eq!(StatusCode::BAD_EVENT.canonical_reason(), "Bad Event");
        assert_eq!(
            StatusCode::CALL_DOES_NOT_EXIST.canonical_reason(),
            "Call/Transaction Does Not Exist"
        );
        assert_eq!(
            StatusCode::new(499).map(StatusCode::canonical_reason),
            Some("Client Error")
        );
    }
}
