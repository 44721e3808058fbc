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
    conflist_service::init_tracing(&config.log_format);
    let result = match &config.command {
        Some(Command::Db(db)) => conflist_server::run_db_command(&config, db).await,
        None => conflist_server::run(config.clone(), conflist_service::shutdown_signal()).await,
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
