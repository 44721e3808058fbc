//! Subscription-State (RFC 6665 §8.2.3, §4.1.3).

use std::fmt;

use crate::ParseError;
use crate::header::expires::parse_delta_seconds;
use crate::lex::{Cursor, is_token, is_token_str};
use crate::params::parse_header_params;

/// The state a NOTIFY reports. `active` and `pending` require `expires` here (RFC 6665 §4.1.3
/// says notifiers SHOULD include it); unknown extra parameters are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionState {
    /// `active;expires=N`.
    Active {
        /// Seconds left.
        expires: u32,
    },
    /// `pending;expires=N`.
    Pending {
        /// Seconds left.
        expires: u32,
    },
    /// `terminated[;reason=R][;retry-after=N]`.
    Terminated {
        /// Event reason value (RFC 6665 §4.1.3), e.g. `timeout`, `noresource`.
        reason: Option<String>,
        /// Seconds before retrying.
        retry_after: Option<u32>,
    },
}

fn number(v: Option<Option<&str>>) -> Result<Option<u32>, ParseError> {
    match v {
        None => Ok(None),
        Some(Some(v)) => parse_delta_seconds(v)
            .map(Some)
            .map_err(|_| ParseError::BadSubscriptionState),
        Some(None) => Err(ParseError::BadSubscriptionState),
    }
}

impl SubscriptionState {
    /// Parses one Subscription-State value; the state name is case-insensitive.
    pub fn parse(s: &str) -> Result<SubscriptionState, ParseError> {
        let mut cur = Cursor::new(s);
        cur.skip_ws();
        let state = cur.take_while(is_token).to_ascii_lowercase();
        let params = parse_header_params(&mut cur).map_err(|_| ParseError::BadSubscriptionState)?;
        let expires = number(params.get("expires"))?;
        match state.as_str() {
            "active" => Ok(SubscriptionState::Active {
                expires: expires.ok_or(ParseError::BadSubscriptionState)?,
            }),
            "pending" => Ok(SubscriptionState::Pending {
                expires: expires.ok_or(ParseError::BadSubscriptionState)?,
            }),
            "terminated" => {
                let reason = match params.get("reason") {
                    None => None,
                    Some(Some(r)) if is_token_str(r) => Some(r.to_owned()),
                    Some(_) => return Err(ParseError::BadSubscriptionState),
                };
                let retry_after = number(params.get("retry-after"))?;
                Ok(SubscriptionState::Terminated {
                    reason,
                    retry_after,
                })
            }
            _ => Err(ParseError::BadSubscriptionState),
        }
    }
}

impl fmt::Display for SubscriptionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionState::Active { expires } => write!(f, "active;expires={expires}"),
            SubscriptionState::Pending { expires } => write!(f, "pending;expires={expires}"),
            SubscriptionState::Terminated {
                reason,
                retry_after,
            } => {
                f.write_str("terminated")?;
                if let Some(r) = reason {
                    write!(f, ";reason={r}")?;
                }
                if let Some(n) = retry_after {
                    write!(f, ";retry-after={n}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn print() {
        assert_eq!(
            SubscriptionState::Active { expires: 3600 }.to_string(),
            "active;expires=3600"
        );
        assert_eq!(
            SubscriptionState::Pending { expires: 0 }.to_string(),
            "pending;expires=0"
        );
        let t = SubscriptionState::Terminated {
            reason: Some("timeout".into()),
            retry_after: None,
        };
        assert_eq!(t.to_string(), "terminated;reason=timeout");
        let t = SubscriptionState::Terminated {
            reason: Some("probation".into()),
            retry_after: Some(30),
        };
        assert_eq!(t.to_string(), "terminated;reason=probation;retry-after=30");
    }

    #[test]
    fn parse() {
        assert_eq!(
            SubscriptionState::parse("Active ; expires = 3600;x=y"),
            Ok(SubscriptionState::Active { expires: 3600 })
        );
        assert_eq!(
            SubscriptionState::parse("pending;expires=10"),
            Ok(SubscriptionState::Pending { expires: 10 })
        );
        assert_eq!(
            SubscriptionState::parse("terminated"),
            Ok(SubscriptionState::Terminated {
                reason: None,
                retry_after: None
            })
        );
        assert_eq!(
            SubscriptionState::parse("terminated;retry-after=5;reason=noresource"),
            Ok(SubscriptionState::Terminated {
                reason: Some("noresource".into()),
                retry_after: Some(5)
            })
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "active",
            "active;expires=x",
            "pending;expires",
            "waiting;expires=1",
            "",
            "terminated;reason",
            "terminated;retry-after=-1",
        ] {
            assert_eq!(
                SubscriptionState::parse(bad),
                Err(ParseError::BadSubscriptionState),
                "{bad:?}"
            );
        }
    }
}
