//! Typed header values, one module per header (RFC 3261 §20, RFC 6665 §8.2).

pub mod accept;
pub mod authorization;
pub mod contact;
pub mod cseq;
pub mod event;
pub mod expires;
pub mod subscription_state;
pub mod via;
