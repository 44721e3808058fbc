//! System tests: real `conflist-server` and `conflist-proxy` processes, a real PostgreSQL
//! database per test, a SIP-over-WebSocket client. Build the binaries first
//! (`cargo build --workspace --bins`; `scripts/test` does).

mod auth;
mod bad_input;
mod cli_errors;
mod conformance;
mod directory;
mod drain;
mod failover;
mod faults;
mod grpc_hop;
mod isolation;
mod large_lists;
mod limits;
mod live_updates;
mod logs;
mod meeting_fields;
mod operator;
mod operator_schema;
mod replica;
mod robustness;
mod shutdown;
mod sipp;
mod soak;
mod sqlite;
mod stalls;
mod subscribe;
mod tls;
mod transports;

use conflist_tests::{Proxy, Server, ServerOptions, TestDb, spawn_proxy, spawn_server};

/// A database, a server with the demo data and a proxy in front of it.
#[derive(Debug)]
pub struct System {
    pub proxy: Proxy,
    pub server: Server,
    pub db: TestDb,
}

pub async fn system(opts: ServerOptions) -> System {
    let db = TestDb::create().await.expect("test database");
    let server = spawn_server(&db.url, &opts).await.expect("server");
    let proxy = spawn_proxy(&server, &[]).await.expect("proxy");
    System { proxy, server, db }
}
