//! The library part of `conflist-cli`: the client side of sign-in, shared with the system
//! tests' SIP client.

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

pub mod digest;
