//! The dialog's one notification between the notifier and the client: a NOTIFY client
//! transaction ([`crate::transaction::Client`]: Timer E over UDP, Timer F everywhere), or
//! the same notification waiting out the client's `Retry-After` (RFC 6665 §4.2.2: an error
//! answer with Retry-After is not a failed NOTIFY) before going out again as a new
//! transaction, a bounded number of times ([`NotifyRetry`]).

use crate::notifier::{Notification, State};
use crate::transaction;
use sip::{HeaderName, Request, Response, StatusCode};
use std::time::Duration;
use tokio::time::Instant;

/// Default [`NotifyRetry::max_retry_after`] (`--notify-max-retry-after`).
pub const DEFAULT_NOTIFY_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Default [`NotifyRetry::max_retries`] (`--notify-retries`).
pub const DEFAULT_NOTIFY_RETRIES: u32 = 3;

/// How a NOTIFY answered with an error carrying `Retry-After` is retried. RFC 6665 §4.2.2
/// counts only a timeout or an error without Retry-After as a failed NOTIFY; the bounds keep
/// a client that always asks for more time from holding its dialog forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyRetry {
    /// Longest Retry-After honoured; an answer asking for longer ends the subscription.
    pub max_retry_after: Duration,
    /// Retries of one notification; the next error answer ends the subscription. Zero
    /// ends it at the first error, with or without Retry-After.
    pub max_retries: u32,
}

impl Default for NotifyRetry {
    fn default() -> Self {
        Self {
            max_retry_after: DEFAULT_NOTIFY_MAX_RETRY_AFTER,
            max_retries: DEFAULT_NOTIFY_RETRIES,
        }
    }
}

/// One attempt at delivering the notification.
#[derive(Debug)]
pub(super) enum Attempt {
    /// A NOTIFY transaction is open.
    Sent {
        /// Its branch (the key its answer is matched by).
        branch: String,
        /// Its CSeq.
        cseq: u32,
        /// The request, kept for Timer E retransmissions (unreliable transports only).
        request: Option<Box<Request>>,
        /// The transaction's timers.
        tx: transaction::Client,
    },
    /// Waiting until then to send the notification again after `Retry-After`.
    Waiting {
        /// When to send it.
        until: Instant,
    },
}

/// The notification being delivered.
#[derive(Debug)]
pub(super) struct InFlight {
    /// What is being delivered (with `expires` as of the latest attempt).
    pub note: Notification,
    /// The notifier's version, for `Delivered`; `None` for a body-less terminal NOTIFY the
    /// proxy made itself (shutdown, lost session), which the notifier never sent.
    pub version: Option<u64>,
    /// It ends the subscription.
    pub terminal: bool,
    /// When it was first sent: a retry counts its `expires` down from there.
    pub first_sent: Instant,
    /// Retries after `Retry-After` so far.
    pub retries: u32,
    /// The current attempt.
    pub attempt: Attempt,
}

impl InFlight {
    /// A notification about to be sent for the first time at `now`.
    pub(super) fn new(note: Notification, now: Instant) -> Self {
        let terminal = matches!(note.state, State::Terminated(_));
        let version = (note.content_type.is_some() || !terminal).then_some(note.version);
        Self {
            note,
            version,
            terminal,
            first_sent: now,
            retries: 0,
            attempt: Attempt::Waiting { until: now },
        }
    }

    /// When the dialog core must look at it again.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match &self.attempt {
            Attempt::Sent { tx, .. } => tx.deadline(),
            Attempt::Waiting { until } => Some(*until),
        }
    }

    /// The open transaction's branch, if one is open.
    pub(super) fn branch(&self) -> Option<&str> {
        match &self.attempt {
            Attempt::Sent { branch, .. } => Some(branch),
            Attempt::Waiting { .. } => None,
        }
    }

    /// The notification as the next attempt sends it: `expires` counted down from the
    /// first attempt, never 0 while still active (that reads as the end).
    pub(super) fn for_retry(&mut self, now: Instant) -> &Notification {
        if !self.terminal {
            let elapsed = now.saturating_duration_since(self.first_sent).as_secs();
            let left = u64::from(self.note.expires).saturating_sub(elapsed).max(1);
            self.note.expires = u32::try_from(left).unwrap_or(u32::MAX);
        }
        &self.note
    }

    /// How long to wait before sending it again after the error answer `resp`, if at all.
    /// RFC 6665 §4.2.2: a non-2xx answer without `Retry-After` fails the NOTIFY; one with
    /// it does not. 481 always ends the dialog (RFC 3261 §12.2.1.2), terminal notifications
    /// are not retried (the subscription ends either way), and `policy` bounds the delay
    /// and the number of attempts.
    pub(super) fn retry_delay(&self, resp: &Response, policy: NotifyRetry) -> Option<Duration> {
        if resp.status == StatusCode::CALL_DOES_NOT_EXIST
            || self.terminal
            || self.retries >= policy.max_retries
        {
            return None;
        }
        let after = Duration::from_secs(retry_after(resp)?.into());
        (after <= policy.max_retry_after).then_some(after)
    }
}

/// The delta-seconds of a response's `Retry-After` (RFC 3261 §20.33: a number, then an
/// optional comment and parameters).
fn retry_after(resp: &Response) -> Option<u32> {
    let value = resp.headers.get(&HeaderName::RETRY_AFTER)?;
    let seconds = value.split([';', '(']).next()?;
    sip::parse_delta_seconds(seconds).ok()
}
