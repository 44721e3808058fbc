//! Command line and environment configuration (every flag has a `CONFLIST_…` variable).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

/// Default embedded database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:conflist-demo.db";

/// conflist subscriber-server: the notifier of the conference-list event package.
#[derive(Debug, Clone, Parser)]
#[command(name = "conflist-server", version, about)]
pub struct Config {
    /// Database: postgres://… (the operator's) or sqlite:… (embedded default).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// Most database connections held.
    #[arg(long, env = "CONFLIST_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// gRPC listen address for proxies (port 0 picks a free port).
    #[arg(long, env = "CONFLIST_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listen address (/livez /readyz /metrics).
    #[arg(long, env = "CONFLIST_ADMIN_LISTEN", default_value = "127.0.0.1:9101")]
    pub admin_listen: SocketAddr,
    /// SIP domain whose users' lists are served.
    #[arg(long, env = "CONFLIST_SIP_DOMAIN", default_value = "example.com")]
    pub sip_domain: String,
    /// Shortest subscription granted, seconds (shorter → 423 with Min-Expires).
    #[arg(long, env = "CONFLIST_MIN_EXPIRES", default_value_t = 60)]
    pub min_expires: u32,
    /// Duration granted when the SUBSCRIBE names none, seconds.
    #[arg(long, env = "CONFLIST_DEFAULT_EXPIRES", default_value_t = 3600)]
    pub default_expires: u32,
    /// Longest subscription granted, seconds.
    #[arg(long, env = "CONFLIST_MAX_EXPIRES", default_value_t = 7200)]
    pub max_expires: u32,
    /// How database changes are detected: log (change-log table + LISTEN), poll (snapshot
    /// diff, for databases without triggers) or off.
    #[arg(
        long,
        env = "CONFLIST_CHANGE_DETECTION",
        value_enum,
        default_value = "log"
    )]
    pub change_detection: crate::changes::Mode,
    /// Change-log read interval (a safety net beside LISTEN; SQLite's only trigger), or the
    /// snapshot interval in poll mode.
    #[arg(long, env = "CONFLIST_CHANGE_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub change_interval: Duration,
    /// Change-log rows older than this are pruned.
    #[arg(long, env = "CONFLIST_CHANGE_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub change_retention: Duration,
    /// Least time between two NOTIFYs of one subscription; changes inside it are coalesced.
    #[arg(long, env = "CONFLIST_MIN_NOTIFY_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub min_notify_interval: Duration,
    /// Always send full documents (no partial notifications).
    #[arg(long, env = "CONFLIST_FULL_DOCUMENTS")]
    pub full_documents: bool,
    /// Apply the reference schema at startup.
    #[arg(long, env = "CONFLIST_MIGRATE")]
    pub migrate: bool,
    /// Load the demo users and conferences at startup (implies --migrate).
    #[arg(long, env = "CONFLIST_DEMO_DATA")]
    pub demo_data: bool,
    /// How long shutdown waits for sessions to send their final NOTIFYs.
    #[arg(long, env = "CONFLIST_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "CONFLIST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// A one-off database task instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// One-off tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Database administration.
    #[command(subcommand)]
    Db(DbCommand),
}

/// `conflist-server db …`
#[derive(Debug, Clone, Subcommand)]
pub enum DbCommand {
    /// Apply the reference schema (tables conflist_users, conflist_conferences, conflist_members).
    Migrate,
    /// Apply the reference schema and load the demo data.
    DemoData,
    /// PostgreSQL: install the change log and triggers on your own tables. Each --watch is
    /// TABLE=SQL, the SQL giving a row's conference URI from its columns.
    Install {
        /// e.g. rooms="'sip:' || id || '@conf.example.com'" (repeatable).
        #[arg(long = "watch", required = true)]
        watches: Vec<String>,
    },
    /// PostgreSQL: remove every installed trigger and the change log.
    Uninstall,
}

impl Config {
    /// Checks relations between values; the message is printed before exit code 64.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.min_expires <= self.default_expires && self.default_expires <= self.max_expires) {
            return Err(format!(
                "expiry bounds must satisfy min <= default <= max (got {} / {} / {})",
                self.min_expires, self.default_expires, self.max_expires
            ));
        }
        if self.min_expires == 0 {
            return Err("--min-expires must be at least 1".into());
        }
        if self.change_interval.is_zero() {
            return Err("--change-interval must be positive".into());
        }
        if let Some(Command::Db(DbCommand::Install { watches })) = &self.command {
            for w in watches {
                crate::directory::changelog::Watch::parse(w).map_err(|e| e.to_string())?;
            }
        }
        if self.sip_domain.trim().is_empty() {
            return Err("--sip-domain must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_inconsistent_expiry_bounds() {
        let mut c = Config::parse_from(["conflist-server"]);
        assert!(c.validate().is_ok());
        c.min_expires = 4000;
        assert!(c.validate().unwrap_err().contains("min <= default <= max"));
    }

    #[test]
    fn parses_durations_and_subcommands() {
        let c = Config::parse_from(["x", "--shutdown-grace", "1500ms", "db", "demo-data"]);
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert!(matches!(c.command, Some(Command::Db(DbCommand::DemoData))));
    }
}
