//! `conflist-proxy`: parse config, set up logging, serve until SIGINT/SIGTERM.

use clap::Parser;
use conflist_proxy::Config;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(msg) = config.validate() {
        eprintln!("conflist-proxy: invalid configuration: {msg}");
        return ExitCode::from(64);
    }
    conflist_service::init_tracing(&config.log_format);
    match conflist_proxy::run(config, conflist_service::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("failed to {e:#}");
            eprintln!("conflist-proxy: failed to {e:#}");
            ExitCode::FAILURE
        }
    }
}
