//! What the bench binaries share: which services they run, and starting them.

use anyhow::{Context, Result};
use conflist_tests::{Proxy, Server, ServerOptions, TestDb, spawn_proxy, spawn_server};
use std::os::unix::process::CommandExt;

/// Makes the harness run the services next to this binary (so a release bench uses the
/// release services): if `CONFLIST_BIN_DIR` is unset, runs this binary again with it set
/// and does not return (set_var is unsafe, and forbidden here). Returns when it is set.
pub fn with_bin_dir() -> Result<()> {
    if std::env::var_os("CONFLIST_BIN_DIR").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("locate the bench binary")?;
    let dir = exe.parent().context("bench binary has no directory")?;
    let err = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env("CONFLIST_BIN_DIR", dir)
        .exec();
    Err(err).context("re-run the bench with CONFLIST_BIN_DIR set")
}

/// One server (`--migrate`: the reference schema and change-log triggers, no demo data;
/// otherwise its defaults plus `server_args`) and one proxy in front of it, on `db`.
pub async fn start_services(db: &TestDb, server_args: &[String]) -> Result<(Server, Proxy)> {
    let mut extra_args = vec!["--migrate".to_owned()];
    extra_args.extend(server_args.iter().cloned());
    let server = spawn_server(
        &db.url,
        &ServerOptions {
            demo: false,
            extra_args,
            ..ServerOptions::default()
        },
    )
    .await
    .context("start conflist-server")?;
    let proxy = spawn_proxy(&server, &[])
        .await
        .context("start conflist-proxy")?;
    Ok((server, proxy))
}

pub mod conference_info;
pub mod kamailio;
pub mod procstat;
