//! `conflist-server`: parse config, set up logging, read secrets, serve until SIGINT/SIGTERM
//! (or run a one-off `db`, `user` or `token` command).

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use conflist_server::{Config, config::Command};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        // --help and --version are not errors.
        Err(e) if !e.use_stderr() => e.exit(),
        // `conflist-server db` without a subcommand: its help, on stderr.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(64);
        }
        // A value clap cannot parse is a configuration error like any other: one line, 64.
        Err(e) => {
            eprintln!("conflist-server: invalid configuration: {}", first_line(&e));
            return ExitCode::from(64);
        }
    };
    if let Err(msg) = config.validate() {
        eprintln!("conflist-server: invalid configuration: {msg}");
        return ExitCode::from(64);
    }
    conflist_service::init_tracing(&config.log_format);
    let result = match &config.command {
        Some(Command::Db(db)) => conflist_server::run_db_command(&config, db).await,
        Some(Command::User(user)) => conflist_server::run_user_command(&config, user).await,
        Some(Command::Token(token)) => conflist_server::run_token_command(&config, token),
        None => {
            // Secret and key files are read before anything binds; unusable ones exit 64.
            let secrets = match config.load_secrets() {
                Ok(s) => s,
                Err(msg) => {
                    eprintln!("conflist-server: invalid configuration: {msg}");
                    return ExitCode::from(64);
                }
            };
            conflist_server::run_with(config.clone(), secrets, conflist_service::shutdown_signal())
                .await
        }
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

/// clap's message without its `error: ` prefix, usage and hints.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}
