//! Command line and environment configuration (every flag has a `CONFLIST_…` variable).

use clap::Parser;
use std::net::SocketAddr;
use std::time::Duration;

/// conflist proxy: the SIP edge of the conference-list service.
#[derive(Debug, Clone, Parser)]
#[command(name = "conflist-proxy", version, about)]
pub struct Config {
    /// SIP over WebSocket listen address (port 0 picks a free port).
    #[arg(long, env = "CONFLIST_WS_LISTEN", default_value = "127.0.0.1:8080")]
    pub ws_listen: SocketAddr,
    /// Admin HTTP listen address (/livez /readyz /metrics).
    #[arg(long, env = "CONFLIST_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,
    /// subscriber-server gRPC endpoints, comma-separated; subscribers are spread over them by
    /// rendezvous hashing.
    #[arg(
        long = "server",
        env = "CONFLIST_SERVERS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051"
    )]
    pub servers: Vec<String>,
    /// `host:port` this proxy puts in Via and Contact (default: the WebSocket listen address).
    #[arg(long, env = "CONFLIST_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Most client connections at once.
    #[arg(long, env = "CONFLIST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most subscriptions (dialogs) on one connection.
    #[arg(
        long,
        env = "CONFLIST_MAX_DIALOGS_PER_CONNECTION",
        default_value_t = 10_000
    )]
    pub max_dialogs_per_connection: usize,
    /// Largest SIP message accepted, bytes (larger closes the connection).
    #[arg(long, env = "CONFLIST_MAX_MESSAGE_SIZE", default_value_t = 65_536)]
    pub max_message_size: usize,
    /// NOTIFY transaction timeout (RFC 3261 Timer F = 64*T1).
    #[arg(long, env = "CONFLIST_NOTIFY_TIMEOUT", default_value = "32s", value_parser = humantime::parse_duration)]
    pub notify_timeout: Duration,
    /// WebSocket ping interval; a peer silent for two intervals is dropped.
    #[arg(long, env = "CONFLIST_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub keepalive_interval: Duration,
    /// Longest one write to a client may take before the client counts as stalled.
    #[arg(long, env = "CONFLIST_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// On shutdown, how long to wait for clients to answer their final NOTIFYs.
    #[arg(long, env = "CONFLIST_SHUTDOWN_GRACE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "CONFLIST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// Checks values; the message is printed before exit code 64.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.iter().all(|s| s.trim().is_empty()) {
            return Err("at least one --server is required".into());
        }
        for s in &self.servers {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!("--server {s:?} must be an http:// or https:// URL"));
            }
        }
        if self.max_connections == 0 || self.max_dialogs_per_connection == 0 {
            return Err("connection and dialog limits must be at least 1".into());
        }
        if self.max_message_size < 1024 {
            return Err("--max-message-size must be at least 1024".into());
        }
        if self.keepalive_interval.is_zero() || self.notify_timeout.is_zero() {
            return Err("durations must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_split_on_commas_and_are_checked() {
        let c = Config::parse_from(["p", "--server", "http://a:1,http://b:2"]);
        assert_eq!(c.servers, vec!["http://a:1", "http://b:2"]);
        assert!(c.validate().is_ok());
        let c = Config::parse_from(["p", "--server", "a:1"]);
        assert!(c.validate().unwrap_err().contains("http://"));
    }
}
