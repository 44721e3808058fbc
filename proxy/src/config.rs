//! Command line and environment configuration (every flag has a `CONFLIST_…` variable).

use clap::Parser;
use conflist_service::settings::{MAX_COUNT, MAX_DURATION, check_range};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The server used when none is configured.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// Default `--flow-identity-lifetime`.
pub const DEFAULT_FLOW_IDENTITY_LIFETIME: &str = "10m";

/// Default `--max-route-set-size`: room for a few Record-Route entries of real proxies.
pub const DEFAULT_MAX_ROUTE_SET_SIZE: usize = 4096;

/// Default `--handshake-timeout`: TLS handshake plus HTTP upgrade request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: &str = "10s";
/// Default `--idle-timeout`: a connection without any dialog for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// Default `--max-connections-per-address`: room for a large NAT or gateway.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Default `--max-subscribes-per-address`: new subscriptions per second (burst twice that).
pub const DEFAULT_MAX_SUBSCRIBES_PER_ADDRESS: u32 = 20;
/// Default `--max-tracked-addresses`: bound of each per-address table.
pub const DEFAULT_MAX_TRACKED_ADDRESSES: usize = 65_536;
/// Default `--web-page`: the sign-in and list page is served on the WebSocket port.
pub const DEFAULT_WEB_PAGE: &str = "on";
/// Default `--web-title`.
pub const DEFAULT_WEB_TITLE: &str = "Conference list";
/// Default `--web-sip-domain`: completes a bare user name typed on the page (the server's
/// default `--sip-domain`).
pub const DEFAULT_WEB_SIP_DOMAIN: &str = "example.com";
/// Longest `--web-title`, characters.
pub const MAX_WEB_TITLE_CHARS: usize = 200;

/// A listen address, or `off` for a listener that is not wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// Not listening.
    Off,
    /// Listening here (port 0 picks a free port).
    On(SocketAddr),
}

impl ListenAddr {
    /// The address, unless off.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            Self::Off => None,
            Self::On(a) => Some(a),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(Self::Off)
        } else {
            s.parse().map(Self::On)
        }
    }
}

/// conflist proxy: the SIP edge of the conference-list service.
#[derive(Debug, Clone, Parser)]
#[command(name = "conflist-proxy", version, about)]
pub struct Config {
    /// SIP over plain WebSocket listen address (port 0 picks a free port); `off` serves WSS
    /// only.
    #[arg(long, env = "CONFLIST_WS_LISTEN", default_value = "127.0.0.1:8080")]
    pub ws_listen: ListenAddr,
    /// SIP over secure WebSocket (TLS) listen address; needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "CONFLIST_WSS_LISTEN")]
    pub wss_listen: Option<SocketAddr>,
    /// SIP over UDP listen address (RFC 3261 §18), or `off`.
    #[arg(long, env = "CONFLIST_UDP_LISTEN", default_value = "off")]
    pub udp_listen: ListenAddr,
    /// SIP over TCP listen address, or `off`.
    #[arg(long, env = "CONFLIST_TCP_LISTEN", default_value = "off")]
    pub tcp_listen: ListenAddr,
    /// SIP over TLS listen address (RFC 3261 §26.2); needs `--tls-cert` and `--tls-key`.
    #[arg(long, env = "CONFLIST_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,
    /// RFC 3261 T1 (round-trip estimate): a NOTIFY over UDP is retransmitted after T1,
    /// 2·T1, 4·T1 … up to T2; a response is kept for retransmitted requests for 64·T1.
    #[arg(long, env = "CONFLIST_SIP_T1", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub sip_t1: Duration,
    /// RFC 3261 T2: the longest retransmission interval.
    #[arg(long, env = "CONFLIST_SIP_T2", default_value = "4s", value_parser = humantime::parse_duration)]
    pub sip_t2: Duration,
    /// RFC 3261 T4: how long a completed NOTIFY transaction over UDP absorbs repeated answers.
    #[arg(long, env = "CONFLIST_SIP_T4", default_value = "5s", value_parser = humantime::parse_duration)]
    pub sip_t4: Duration,
    /// Certificate chain (PEM, leaf first) of the WSS and TLS listeners.
    #[arg(long, env = "CONFLIST_TLS_CERT")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "CONFLIST_TLS_KEY")]
    pub tls_key: Option<std::path::PathBuf>,
    /// TLS handshake plus the HTTP upgrade request must finish within this, or the
    /// connection is dropped.
    #[arg(long, env = "CONFLIST_HANDSHAKE_TIMEOUT", default_value = DEFAULT_HANDSHAKE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Browser origins (`scheme://host[:port]`) allowed besides the request's own host;
    /// repeatable or comma-separated; `*` allows all. Requests without Origin pass.
    #[arg(
        long = "allowed-origin",
        env = "CONFLIST_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Load balancers (IP or CIDR; repeatable or comma-separated) whose `X-Forwarded-For`
    /// names the client.
    #[arg(
        long = "trusted-proxy",
        env = "CONFLIST_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::transport::limits::Cidr>,
    /// Admin HTTP listen address (/livez /readyz /metrics).
    #[arg(long, env = "CONFLIST_ADMIN_LISTEN", default_value = "127.0.0.1:9100")]
    pub admin_listen: SocketAddr,
    /// subscriber-server gRPC endpoints, comma-separated; subscribers are spread over them by
    /// rendezvous hashing. Default `http://127.0.0.1:50051` when neither this nor
    /// `--servers-dns`/`--servers-file` is given.
    #[arg(long = "server", env = "CONFLIST_SERVERS", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// `http://name:port` whose host resolves to many addresses (a Kubernetes headless
    /// Service): every address is a server. Comma-separated; re-resolved every
    /// `--discovery-interval`.
    #[arg(long, env = "CONFLIST_SERVERS_DNS", value_delimiter = ',')]
    pub servers_dns: Vec<String>,
    /// File with one server endpoint URL per line (`#` comments), read again every
    /// `--discovery-interval`: add or remove servers without restarting the proxy.
    #[arg(long, env = "CONFLIST_SERVERS_FILE")]
    pub servers_file: Option<PathBuf>,
    /// How often `--servers-dns` and `--servers-file` are read again.
    #[arg(long, env = "CONFLIST_DISCOVERY_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub discovery_interval: Duration,
    /// CA certificate (PEM) that subscriber-servers' TLS certificates must chain to; needed
    /// for `https://` servers.
    #[arg(long, env = "CONFLIST_GRPC_CA")]
    pub grpc_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to subscriber-servers (mutual TLS).
    #[arg(long, env = "CONFLIST_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of `--grpc-tls-cert`.
    #[arg(long, env = "CONFLIST_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<std::path::PathBuf>,
    /// Name the servers' certificates are checked against (default: the URL's host).
    #[arg(long, env = "CONFLIST_GRPC_TLS_DOMAIN")]
    pub grpc_tls_domain: Option<String>,
    /// File holding the shared secret sent to subscriber-servers on every session
    /// (`authorization: Bearer …` metadata).
    #[arg(long, env = "CONFLIST_GRPC_SECRET_FILE")]
    pub grpc_secret_file: Option<std::path::PathBuf>,
    /// How long an identity signed in on a connection vouches for later SUBSCRIBEs of that
    /// connection without credentials; 0 turns this off (set 0 when a gateway multiplexes
    /// many users on one connection).
    #[arg(long, env = "CONFLIST_FLOW_IDENTITY_LIFETIME", default_value = DEFAULT_FLOW_IDENTITY_LIFETIME, value_parser = humantime::parse_duration)]
    pub flow_identity_lifetime: Duration,
    /// Largest Record-Route set (bytes, all values) a dialog may store; a larger one is
    /// refused with 400.
    #[arg(long, env = "CONFLIST_MAX_ROUTE_SET_SIZE", default_value_t = DEFAULT_MAX_ROUTE_SET_SIZE)]
    pub max_route_set_size: usize,
    /// `host:port` this proxy puts in Via and Contact (default: the WebSocket listen address).
    #[arg(long, env = "CONFLIST_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Most client connections at once.
    #[arg(long, env = "CONFLIST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most connections from one client address; further ones are refused.
    #[arg(long, env = "CONFLIST_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// New SUBSCRIBEs per second from one client address (burst twice that); further ones
    /// get 503 with Retry-After.
    #[arg(long, env = "CONFLIST_MAX_SUBSCRIBES_PER_ADDRESS", default_value_t = DEFAULT_MAX_SUBSCRIBES_PER_ADDRESS)]
    pub max_subscribes_per_address: u32,
    /// Most distinct client addresses tracked by each per-address limit; a new address
    /// beyond it is refused.
    #[arg(long, env = "CONFLIST_MAX_TRACKED_ADDRESSES", default_value_t = DEFAULT_MAX_TRACKED_ADDRESSES)]
    pub max_tracked_addresses: usize,
    /// A connection without any dialog for this long is closed.
    #[arg(long, env = "CONFLIST_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
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
    /// Longest `Retry-After` honoured on an error answer to a NOTIFY: the same NOTIFY is
    /// sent again after it (RFC 6665 §4.2.2); a longer one ends the subscription.
    #[arg(long, env = "CONFLIST_NOTIFY_MAX_RETRY_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub notify_max_retry_after: Duration,
    /// Retries of one NOTIFY answered with an error and `Retry-After`; 0 ends the
    /// subscription at the first error answer.
    #[arg(long, env = "CONFLIST_NOTIFY_RETRIES", default_value_t = crate::dialog::DEFAULT_NOTIFY_RETRIES)]
    pub notify_retries: u32,
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
    /// Serve the web page (sign-in and live list) on plain `GET`s of the WebSocket port(s):
    /// `on` or `off`. Upgrades get SIP either way.
    #[arg(long, env = "CONFLIST_WEB_PAGE", default_value = DEFAULT_WEB_PAGE, value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub web_page: bool,
    /// Title and heading of the web page.
    #[arg(long, env = "CONFLIST_WEB_TITLE", default_value = DEFAULT_WEB_TITLE)]
    pub web_title: String,
    /// WebSocket URL the web page connects to (`ws://…` or `wss://…`; default: the page's own
    /// host, `wss:` when the page came over HTTPS).
    #[arg(long, env = "CONFLIST_WEB_WS_URL")]
    pub web_ws_url: Option<String>,
    /// Domain the web page adds to a bare user name (`alice` → `sip:alice@DOMAIN`).
    #[arg(long, env = "CONFLIST_WEB_SIP_DOMAIN", default_value = DEFAULT_WEB_SIP_DOMAIN)]
    pub web_sip_domain: String,
}

impl Config {
    /// The static server list: `--server`, or the local default when no source is given.
    pub fn static_servers(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .servers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        if listed.is_empty() && self.servers_dns.is_empty() && self.servers_file.is_none() {
            vec![DEFAULT_SERVER.to_owned()]
        } else {
            listed
        }
    }

    /// Checks values; the message is printed before exit code 64.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_ranges()?;
        for s in self
            .servers
            .iter()
            .chain(&self.servers_dns)
            .filter(|s| !s.trim().is_empty())
        {
            if !(s.starts_with("http://") || s.starts_with("https://")) {
                return Err(format!("--server {s:?} must be an http:// or https:// URL"));
            }
        }
        if self.grpc_tls_cert.is_some() && self.grpc_ca.is_none() {
            return Err("--grpc-tls-cert needs --grpc-ca (client certificates are shown only over TLS to https:// servers)".into());
        }
        if self
            .servers
            .iter()
            .chain(&self.servers_dns)
            .any(|s| s.starts_with("https://"))
            && self.grpc_ca.is_none()
        {
            return Err(
                "https:// servers need --grpc-ca (the CA that signed their certificates)".into(),
            );
        }
        self.validate_listeners()?;
        self.validate_web()?;
        Ok(())
    }

    /// The listener and per-client limit part of [`Config::validate`].
    fn validate_listeners(&self) -> Result<(), String> {
        if self.ws_listen == ListenAddr::Off
            && self.wss_listen.is_none()
            && self.udp_listen == ListenAddr::Off
            && self.tcp_listen == ListenAddr::Off
            && self.tls_listen.is_none()
        {
            return Err(
                "nothing to listen on: --ws-listen is off and no other listener is on".into(),
            );
        }
        let secure = self.wss_listen.is_some() || self.tls_listen.is_some();
        match (secure, &self.tls_cert, &self.tls_key) {
            (true, Some(cert), Some(key)) => {
                crate::transport::tls::server_config(cert, key).map_err(|e| e.to_string())?;
            }
            (true, _, _) => {
                return Err("--wss-listen and --tls-listen need --tls-cert and --tls-key".into());
            }
            (false, None, None) => {}
            (false, _, _) => {
                return Err("--tls-cert and --tls-key need --wss-listen or --tls-listen".into());
            }
        }
        if self.sip_t2 < self.sip_t1 {
            return Err("--sip-t2 must be at least --sip-t1".into());
        }
        crate::transport::limits::OriginPolicy::new(&self.allowed_origins)
            .map_err(|e| format!("--allowed-origin: {e}"))?;
        Ok(())
    }

    /// The web page's settings, `None` with `--web-page off`; checked in [`Config::validate`].
    pub fn web(&self) -> Option<crate::web::WebSettings> {
        self.web_page.then(|| crate::web::WebSettings {
            title: self.web_title.clone(),
            ws_url: self.web_ws_url.clone(),
            sip_domain: self.web_sip_domain.clone(),
        })
    }

    /// The web page part of [`Config::validate`].
    fn validate_web(&self) -> Result<(), String> {
        let title = self.web_title.trim();
        if title.is_empty()
            || title.chars().count() > MAX_WEB_TITLE_CHARS
            || title.chars().any(char::is_control)
        {
            return Err(format!(
                "--web-title must be 1 to {MAX_WEB_TITLE_CHARS} characters without control characters"
            ));
        }
        if let Some(url) = &self.web_ws_url {
            let rest = url
                .strip_prefix("ws://")
                .or_else(|| url.strip_prefix("wss://"));
            if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
                || url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "--web-ws-url {url:?} must be a ws:// or wss:// URL with a host"
                ));
            }
        }
        let domain = &self.web_sip_domain;
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return Err(format!("--web-sip-domain {domain:?} is not a host name"));
        }
        Ok(())
    }

    /// The per-client limits' settings.
    pub fn limits(&self) -> crate::transport::limits::LimitsConfig {
        crate::transport::limits::LimitsConfig {
            trusted_proxies: self.trusted_proxies.clone(),
            allowed_origins: self.allowed_origins.clone(),
            max_connections_per_address: self.max_connections_per_address,
            max_subscribes_per_address: self.max_subscribes_per_address,
            max_tracked_addresses: self.max_tracked_addresses,
        }
    }
}

/// The largest `--max-message-size`.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

impl Config {
    /// Every duration and size setting within its bounds (see the README's configuration
    /// table): one line naming the flag, its bounds and the value otherwise.
    fn validate_ranges(&self) -> Result<(), String> {
        const MS: Duration = Duration::from_millis(1);
        const HOUR: Duration = Duration::from_secs(3600);
        check_range("--handshake-timeout", self.handshake_timeout, MS, HOUR)?;
        check_range(
            "--flow-identity-lifetime",
            self.flow_identity_lifetime,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        check_range("--idle-timeout", self.idle_timeout, MS, MAX_DURATION)?;
        // Below the notifier's 60 s after which an unanswered NOTIFY counts as lost.
        check_range(
            "--notify-timeout",
            self.notify_timeout,
            MS,
            Duration::from_secs(60),
        )?;
        check_range(
            "--notify-max-retry-after",
            self.notify_max_retry_after,
            Duration::ZERO,
            HOUR,
        )?;
        check_range("--keepalive-interval", self.keepalive_interval, MS, HOUR)?;
        check_range(
            "--discovery-interval",
            self.discovery_interval,
            Duration::from_millis(100),
            HOUR,
        )?;
        let minute = Duration::from_secs(60);
        check_range("--sip-t1", self.sip_t1, MS, minute)?;
        check_range("--sip-t2", self.sip_t2, MS, minute)?;
        check_range("--sip-t4", self.sip_t4, MS, minute)?;
        check_range("--write-timeout", self.write_timeout, MS, HOUR)?;
        check_range(
            "--shutdown-grace",
            self.shutdown_grace,
            Duration::ZERO,
            HOUR,
        )?;
        check_range("--notify-retries", self.notify_retries, 0, 1000)?;
        check_range(
            "--max-route-set-size",
            self.max_route_set_size,
            0,
            MAX_MESSAGE_SIZE,
        )?;
        check_range("--max-connections", self.max_connections, 1, MAX_COUNT)?;
        check_range(
            "--max-connections-per-address",
            self.max_connections_per_address,
            1,
            MAX_COUNT,
        )?;
        check_range(
            "--max-subscribes-per-address",
            self.max_subscribes_per_address,
            1,
            10_000_000,
        )?;
        check_range(
            "--max-tracked-addresses",
            self.max_tracked_addresses,
            1,
            MAX_COUNT,
        )?;
        check_range(
            "--max-dialogs-per-connection",
            self.max_dialogs_per_connection,
            1,
            MAX_COUNT,
        )?;
        check_range(
            "--max-message-size",
            self.max_message_size,
            1024,
            MAX_MESSAGE_SIZE,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_are_within_range() {
        assert_eq!(Config::parse_from(["p"]).validate_ranges(), Ok(()));
    }

    #[test]
    fn zero_where_it_makes_no_sense_is_refused() {
        for flag in [
            "--idle-timeout",
            "--notify-timeout",
            "--keepalive-interval",
            "--write-timeout",
            "--handshake-timeout",
        ] {
            let c = Config::parse_from(["p", flag, "0s"]);
            assert!(c.validate().unwrap_err().starts_with(flag), "{flag}");
        }
        for flag in [
            "--max-connections",
            "--max-message-size",
            "--max-subscribes-per-address",
        ] {
            let c = Config::parse_from(["p", flag, "0"]);
            assert!(c.validate().unwrap_err().starts_with(flag), "{flag}");
        }
        let c = Config::parse_from([
            "p",
            "--flow-identity-lifetime",
            "0s",
            "--shutdown-grace",
            "0s",
        ]);
        assert_eq!(c.validate_ranges(), Ok(()));
    }

    /// Every flag that takes a duration or a number is range-checked: one far too large is
    /// refused by `validate` with a message naming it. A flag added without a check fails here.
    #[test]
    fn every_duration_and_size_flag_is_range_checked() {
        let mut checked = 0;
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let parses = |v: &str| Config::try_parse_from(["p", flag.as_str(), v]).is_ok();
            if parses("x") {
                continue; // free text, not a duration or a size
            }
            let huge = ["200y", "4294967295"].into_iter().find(|v| parses(v));
            let Some(huge) = huge else { continue };
            let c = Config::parse_from(["p", flag.as_str(), huge]);
            let err = c.validate().expect_err(&flag);
            assert!(err.starts_with(&flag), "{flag} {huge}: {err}");
            checked += 1;
        }
        assert!(checked >= 16, "only {checked} flags checked");
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
        assert_eq!(
            Config::parse_from(["p"]).static_servers(),
            vec![DEFAULT_SERVER]
        );
        let dns = Config::parse_from(["p", "--servers-dns", "http://s:50051"]);
        assert!(dns.static_servers().is_empty(), "DNS replaces the default");
        let c = Config::parse_from(["p", "--server", "a:1"]);
        assert!(c.validate().unwrap_err().contains("http://"));
    }

    fn testdata(name: &str) -> String {
        format!(
            "{}/src/transport/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn listener_and_limit_defaults() {
        let c = Config::parse_from(["p"]);
        assert_eq!(
            c.ws_listen,
            ListenAddr::On("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(c.wss_listen, None);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections_per_address, 256);
        assert_eq!(c.max_subscribes_per_address, 20);
        assert!(c.allowed_origins.is_empty() && c.trusted_proxies.is_empty());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn wss_needs_a_loadable_certificate_and_plain_may_be_off() {
        let (cert, key) = (testdata("cert.pem"), testdata("key.pem"));
        let c = Config::parse_from([
            "p",
            "--ws-listen",
            "off",
            "--wss-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        assert_eq!(c.ws_listen, ListenAddr::Off);
        assert!(c.validate().is_ok());
        let c = Config::parse_from(["p", "--ws-listen", "off"]);
        assert!(c.validate().unwrap_err().contains("nothing to listen on"));
        let c = Config::parse_from(["p", "--wss-listen", "127.0.0.1:0"]);
        assert!(c.validate().unwrap_err().contains("--tls-cert"));
        let c = Config::parse_from(["p", "--tls-cert", &cert, "--tls-key", &key]);
        assert!(c.validate().unwrap_err().contains("need --wss-listen"));
        let other = testdata("other-key.pem");
        let c = Config::parse_from([
            "p",
            "--wss-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &other,
        ]);
        assert!(c.validate().unwrap_err().contains("cannot be used"));
    }

    #[test]
    fn web_page_settings_are_checked() {
        let c = Config::parse_from(["p"]);
        assert_eq!(
            c.web(),
            Some(crate::web::WebSettings {
                title: DEFAULT_WEB_TITLE.into(),
                ws_url: None,
                sip_domain: DEFAULT_WEB_SIP_DOMAIN.into(),
            })
        );
        let c = Config::parse_from(["p", "--web-page", "off"]);
        assert_eq!(c.web(), None);
        let c = Config::parse_from([
            "p",
            "--web-title",
            "Acme <meetings>",
            "--web-ws-url",
            "wss://sip.example.com/ws",
        ]);
        assert!(c.validate().is_ok());
        assert_eq!(
            c.web().unwrap().ws_url.as_deref(),
            Some("wss://sip.example.com/ws")
        );
        assert!(Config::try_parse_from(["p", "--web-page", "maybe"]).is_err());
        for bad in [
            ["--web-ws-url", "https://x"],
            ["--web-ws-url", "ws://"],
            ["--web-ws-url", "ws://a b"],
            ["--web-title", " "],
            ["--web-title", "a\nb"],
            ["--web-sip-domain", "a b"],
        ] {
            let c = Config::parse_from(["p", bad[0], bad[1]]);
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_and_trusted_proxies_are_lists() {
        let c = Config::parse_from([
            "p",
            "--allowed-origin",
            "https://a.example.com,https://b.example.com",
            "--allowed-origin",
            "http://localhost:3000",
            "--trusted-proxy",
            "10.0.0.0/8,192.0.2.7",
        ]);
        assert_eq!(c.allowed_origins.len(), 3);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(c.validate().is_ok());
        let c = Config::parse_from(["p", "--allowed-origin", "a.example.com"]);
        assert!(c.validate().unwrap_err().contains("--allowed-origin"));
        assert!(Config::try_parse_from(["p", "--trusted-proxy", "10.0.0.0/40"]).is_err());
        let c = Config::parse_from(["p", "--max-subscribes-per-address", "0"]);
        assert!(c.validate().unwrap_err().contains("per-address"));
    }
}
