//! `conflist-server`: parse config, set up logging, serve until SIGINT/SIGTERM.

use clap::Parser;
use conflist_server::{Config, config::Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(msg) = config.validate() {
        eprintln!("conflist-server: invalid configuration: {msg}");
        return ExitCode::from(64);
    }
    init_tracing(&config.log_format);
    let result = match &config.command {
        Some(Command::Db(db)) => conflist_server::run_db_command(&config, db).await,
        None => conflist_server::run(config.clone(), shutdown_signal()).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("failed to {e:#}");
            eprintln!("conflist-server: failed to {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// SIGINT or SIGTERM: both drain gracefully.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
