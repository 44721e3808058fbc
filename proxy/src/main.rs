//! `conflist-proxy`: parse config, set up logging, serve until SIGINT/SIGTERM.

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use conflist_proxy::Config;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => e.exit(),
        // A value clap cannot parse is a configuration error like any other: one line, 64.
        Err(e) => {
            eprintln!("conflist-proxy: invalid configuration: {}", first_line(&e));
            return ExitCode::from(64);
        }
    };
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

/// clap's message without its `error: ` prefix, usage and hints.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}
