//! Harness for conflist's system tests: a fresh PostgreSQL database per test ([`TestDb`]),
//! the real `conflist-server` and `conflist-proxy` binaries as child processes
//! ([`spawn_server`], [`spawn_proxy`]), and a SIP-over-WebSocket client ([`SipWsClient`]).
//! Every wait is for an event (a READY line, a message) under a timeout; nothing sleeps.

#![allow(clippy::missing_panics_doc, missing_docs, reason = "test harness")]

pub mod auth;
pub mod client;
pub mod cluster;
pub mod db;
pub mod pgtls;
pub mod process;
pub mod tls;
pub mod transport_client;

pub use auth::Auth;
pub use client::{ListView, SipWsClient, Subscription};
pub use db::TestDb;
pub use process::{
    Log, Proxy, Server, ServerOptions, set_password, spawn_proxy, spawn_proxy_logged,
    spawn_proxy_to, spawn_server, start_proxy,
};
pub use transport_client::{SipDgramClient, SipStreamClient};

/// How long any single expected event may take.
pub const EVENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
