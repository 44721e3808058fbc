//! The parse error type shared by every parser in the crate.

/// Why bytes or a header value could not be parsed.
///
/// `Display` is short, client-safe English meant to be used as the reason phrase of a
/// `400 Bad Request` (RFC 3261 §21.4.1); it never echoes input.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No bytes (or only CRLFs) where a message was expected.
    #[error("empty message")]
    Empty,
    /// The header section is not terminated by an empty line (RFC 3261 §7).
    #[error("incomplete message")]
    Incomplete,
    /// The message is larger than the caller's limit.
    #[error("message too large")]
    TooLarge,
    /// An Authorization value that is not Digest or Bearer credentials (RFC 3261 §25.1).
    #[error("bad Authorization")]
    BadAuthorization,
    /// The start line is not `Method SP Request-URI SP SIP-Version` or a Status-Line.
    #[error("bad start line")]
    BadStartLine,
    /// The method is not an RFC 3261 token (§25.1).
    #[error("bad method")]
    BadMethod,
    /// The Request-URI does not parse or carries URI headers (RFC 3261 §19.1.1).
    #[error("bad Request-URI")]
    BadRequestUri,
    /// SIP-Version other than `SIP/2.0` (RFC 3261 §7.1).
    #[error("SIP version not supported")]
    VersionNotSupported,
    /// Status code is not three digits in 100..=699 (RFC 3261 §7.2).
    #[error("bad status code")]
    BadStatusCode,
    /// The head is not valid UTF-8.
    #[error("invalid UTF-8")]
    NotUtf8,
    /// A header line without a colon, with a non-token name, or a stray continuation line.
    #[error("malformed header line")]
    BadHeader,
    /// More than [`crate::MAX_HEADERS`] header lines.
    #[error("too many header lines")]
    TooManyHeaders,
    /// Content-Length negative, non-numeric, overlarge or repeated with different values.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// Fewer body bytes than Content-Length announced (RFC 4475 §3.1.2.2).
    #[error("body shorter than Content-Length")]
    BodyTooShort,
    /// Stream transports require Content-Length (RFC 3261 §18.3).
    #[error("missing Content-Length")]
    MissingContentLength,
    /// A URI that does not follow RFC 3261 §25.1.
    #[error("bad URI")]
    BadUri,
    /// A malformed `;name=value` parameter.
    #[error("bad parameter")]
    BadParam,
    /// A quoted-string without its closing quote (RFC 4475 §3.1.2.6).
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A name-addr / addr-spec that does not follow RFC 3261 §20.10.
    #[error("bad address")]
    BadNameAddr,
    /// A Via value that does not follow RFC 3261 §20.42.
    #[error("bad Via")]
    BadVia,
    /// A CSeq value that does not follow RFC 3261 §20.16.
    #[error("bad CSeq")]
    BadCSeq,
    /// An Event value that does not follow RFC 6665 §8.2.1.
    #[error("bad Event")]
    BadEvent,
    /// A number that is not plain digits or does not fit in 32 bits.
    #[error("bad numeric value")]
    BadNumber,
    /// A media range that does not follow RFC 3261 §20.1.
    #[error("bad media range")]
    BadMediaRange,
    /// A Subscription-State that does not follow RFC 6665 §8.2.3.
    #[error("bad Subscription-State")]
    BadSubscriptionState,
}
