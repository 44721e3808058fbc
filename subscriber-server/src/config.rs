//! Command line and environment configuration (every flag has a `CONFLIST_…` variable).

use crate::auth::{self, AuthConfig, bearer, digest::Algorithm};
use crate::{directory, subscription};
use clap::{Parser, Subcommand, ValueEnum};
use conflist_service::settings::{MAX_COUNT, MAX_DURATION, check_range, read_file, read_secret};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Default embedded database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite:conflist-demo.db";
/// Default `--auth-algorithms`: challenge order, MD5 last (see [`auth::DEFAULT_ALGORITHMS`]).
pub const DEFAULT_AUTH_ALGORITHMS: &str = "SHA-256,MD5";
/// Default `--nonce-lifetime`.
pub const DEFAULT_NONCE_LIFETIME: &str = "300s";
/// Default `--auth-max-failures`.
pub const DEFAULT_AUTH_MAX_FAILURES: u32 = auth::throttle::DEFAULT_MAX_FAILURES;
/// Default `--auth-failure-window`.
pub const DEFAULT_AUTH_FAILURE_WINDOW: &str = "60s";
/// Default `--jwt-leeway`.
pub const DEFAULT_JWT_LEEWAY: &str = "30s";
/// Default `--max-subscriptions-per-user`.
pub const DEFAULT_MAX_SUBSCRIPTIONS_PER_USER: usize = 100;
/// Default `--session-stall-timeout`: well past any pause of a proxy that is still reading.
pub const DEFAULT_SESSION_STALL_TIMEOUT: &str = "10s";
/// Default `--verify-interval`.
pub const DEFAULT_VERIFY_INTERVAL: &str = "5m";
/// Default `--cache-max-age`.
pub const DEFAULT_CACHE_MAX_AGE: &str = "1m";
/// Default `--drain-timeout`: time for proxies to move subscriptions away on SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: &str = "10s";
/// Longest password `user set-password` reads.
const MAX_PASSWORD_BYTES: usize = 1024;

/// Whether SUBSCRIBEs must sign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Digest or bearer credentials required (or a flow identity vouched for by the proxy).
    On,
    /// No sign-in: the From address must be the subscriber (development only).
    Off,
}

/// conflist subscriber-server: the notifier of the conference-list event package.
#[derive(Debug, Clone, Parser)]
#[command(name = "conflist-server", version, about)]
pub struct Config {
    /// Database: postgres://… (the operator's) or sqlite:… (embedded default).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
    /// PostgreSQL read replica for directory reads (conferences, members, credentials);
    /// the change log, LISTEN, pruning and migrations stay on --database-url. A change batch
    /// waits for the replica to replay past the log read, else reads the primary.
    #[arg(long, env = "CONFLIST_READ_DATABASE_URL")]
    pub read_database_url: Option<String>,
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
    /// Log mode: re-read every cached user this often, in slices, and correct lists that
    /// changed without a change-log row (`0` turns it off).
    #[arg(long, env = "CONFLIST_VERIFY_INTERVAL", default_value = DEFAULT_VERIFY_INTERVAL, value_parser = humantime::parse_duration)]
    pub verify_interval: Duration,
    /// A cached list read longer ago than this is re-read before it serves a new
    /// subscription (`0`: always re-read).
    #[arg(long, env = "CONFLIST_CACHE_MAX_AGE", default_value = DEFAULT_CACHE_MAX_AGE, value_parser = humantime::parse_duration)]
    pub cache_max_age: Duration,
    /// Least time between two NOTIFYs of one subscription; changes inside it are coalesced.
    #[arg(long, env = "CONFLIST_MIN_NOTIFY_INTERVAL", default_value = "200ms", value_parser = humantime::parse_duration)]
    pub min_notify_interval: Duration,
    /// Always send full documents (no partial notifications).
    #[arg(long, env = "CONFLIST_FULL_DOCUMENTS")]
    pub full_documents: bool,
    /// Most bytes of one NOTIFY body; a larger state goes out as several NOTIFYs (a full
    /// document marked complete="false", then partials), nearest conferences first.
    #[arg(long, env = "CONFLIST_MAX_NOTIFY_BYTES", default_value_t = subscription::DEFAULT_MAX_BODY_BYTES)]
    pub max_notify_bytes: usize,
    /// Most bytes one conference may take in a document; longer text (free text first) is
    /// truncated, logged and counted. At most a quarter of --max-notify-bytes.
    #[arg(long, env = "CONFLIST_MAX_CONFERENCE_BYTES", default_value_t = directory::DEFAULT_MAX_CONFERENCE_BYTES)]
    pub max_conference_bytes: usize,
    /// Default window for subscriptions that ask for none: leave out conferences that
    /// ended longer ago than this (e.g. `1d`). Unset: keep them.
    #[arg(long, env = "CONFLIST_WINDOW_PAST", value_parser = humantime::parse_duration)]
    pub window_past: Option<Duration>,
    /// Default window: leave out conferences that start later than this from now (e.g. `14d`).
    #[arg(long, env = "CONFLIST_WINDOW_AHEAD", value_parser = humantime::parse_duration)]
    pub window_ahead: Option<Duration>,
    /// Default window: at most this many conferences, nearest first.
    #[arg(long, env = "CONFLIST_WINDOW_MAX")]
    pub window_max: Option<usize>,
    /// Remove cancelled meetings from lists (reason="cancelled") instead of showing them
    /// with status cancelled.
    #[arg(long, env = "CONFLIST_HIDE_CANCELLED")]
    pub hide_cancelled: bool,
    /// A proxy session whose outbound messages wait this long without the proxy reading any
    /// is ended (its subscriptions are dropped; the proxy re-subscribes them elsewhere).
    #[arg(long, env = "CONFLIST_SESSION_STALL_TIMEOUT", default_value = DEFAULT_SESSION_STALL_TIMEOUT, value_parser = humantime::parse_duration)]
    pub session_stall_timeout: Duration,
    /// Apply the reference schema at startup.
    #[arg(long, env = "CONFLIST_MIGRATE")]
    pub migrate: bool,
    /// Load the demo users and conferences at startup (implies --migrate).
    #[arg(long, env = "CONFLIST_DEMO_DATA")]
    pub demo_data: bool,
    /// How long shutdown waits for sessions to send their final NOTIFYs.
    #[arg(long, env = "CONFLIST_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long gRPC health says NOT_SERVING (so proxies move this server's
    /// subscriptions away) before the rest are deactivated (`0`: no wait).
    #[arg(long, env = "CONFLIST_DRAIN_TIMEOUT", default_value = DEFAULT_DRAIN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Log format: text or json.
    #[arg(long, env = "CONFLIST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Sign-in for SUBSCRIBE: on (digest or bearer) or off (From must be the subscriber).
    #[arg(long, env = "CONFLIST_AUTH", value_enum, default_value = "on")]
    pub auth: AuthMode,
    /// Digest realm; default: the --sip-domain.
    #[arg(long, env = "CONFLIST_AUTH_REALM")]
    pub auth_realm: Option<String>,
    /// Digest algorithms offered, in challenge order (keep MD5 last for JsSIP/SIP.js).
    #[arg(long, env = "CONFLIST_AUTH_ALGORITHMS", value_delimiter = ',', default_value = DEFAULT_AUTH_ALGORITHMS)]
    pub auth_algorithms: Vec<Algorithm>,
    /// File holding the nonce MAC key, the same on every instance. Unset: a random key per
    /// process, so nonces verify only on the instance that issued them.
    #[arg(long, env = "CONFLIST_AUTH_SECRET_FILE")]
    pub auth_secret_file: Option<PathBuf>,
    /// How long a digest nonce stays fresh (an expired one with a right response → stale).
    #[arg(long, env = "CONFLIST_NONCE_LIFETIME", default_value = DEFAULT_NONCE_LIFETIME, value_parser = humantime::parse_duration)]
    pub nonce_lifetime: Duration,
    /// Failed sign-ins allowed per user and per client address in --auth-failure-window.
    #[arg(long, env = "CONFLIST_AUTH_MAX_FAILURES", default_value_t = DEFAULT_AUTH_MAX_FAILURES)]
    pub auth_max_failures: u32,
    /// The window of --auth-max-failures; beyond it, 503 with Retry-After until it ends.
    #[arg(long, env = "CONFLIST_AUTH_FAILURE_WINDOW", default_value = DEFAULT_AUTH_FAILURE_WINDOW, value_parser = humantime::parse_duration)]
    pub auth_failure_window: Duration,
    /// Bearer tokens: HS256 shared-secret file (also signs `token issue`).
    #[arg(long, env = "CONFLIST_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Bearer tokens: a PEM public key file (RSA → RS*/PS*, EC → ES256/ES384, Ed25519 → EdDSA).
    #[arg(long, env = "CONFLIST_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Bearer tokens: a JWKS file; the key is chosen by the token's `kid`.
    #[arg(long, env = "CONFLIST_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Bearer tokens: required `iss`.
    #[arg(long, env = "CONFLIST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Bearer tokens: required member of `aud`. Required with --jwt-public-key-file and
    /// --jwt-jwks-file; optional with --jwt-secret-file (unset: `aud` is not checked).
    #[arg(long, env = "CONFLIST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Bearer tokens: the claim naming the user (`sip:…` as is, `alice` → sip:alice@SIP-DOMAIN).
    #[arg(long, env = "CONFLIST_JWT_USER_CLAIM", default_value = bearer::DEFAULT_USER_CLAIM)]
    pub jwt_user_claim: String,
    /// Bearer tokens: clock-skew allowance on exp and nbf.
    #[arg(long, env = "CONFLIST_JWT_LEEWAY", default_value = DEFAULT_JWT_LEEWAY, value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// Most live subscriptions per user on this instance; beyond → 403.
    #[arg(long, env = "CONFLIST_MAX_SUBSCRIPTIONS_PER_USER", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS_PER_USER)]
    pub max_subscriptions_per_user: usize,
    /// File holding a secret every gRPC Session call must carry as
    /// `authorization: Bearer <secret>` (the proxy's --server-secret-file).
    #[arg(long, env = "CONFLIST_GRPC_SECRET_FILE")]
    pub grpc_secret_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this PEM certificate chain (needs --grpc-tls-key).
    #[arg(long, env = "CONFLIST_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The PEM private key of --grpc-tls-cert.
    #[arg(long, env = "CONFLIST_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Require proxy client certificates signed by this PEM CA (mutual TLS; needs TLS).
    #[arg(long, env = "CONFLIST_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<PathBuf>,
    /// File holding the admin token: with it, the admin port also serves the JSON admin API
    /// (`/admin/…`, `Authorization: Bearer <token>`); without it those routes answer 404.
    #[arg(long, env = "CONFLIST_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
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
    /// Digest credentials in the directory.
    #[command(subcommand)]
    User(UserCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `conflist-server user …`
#[derive(Debug, Clone, Subcommand)]
pub enum UserCommand {
    /// Read a password from standard input (first line) and store its HA1s (MD5 and
    /// SHA-256, realm --auth-realm) for sip:USERNAME@SIP-DOMAIN.
    SetPassword {
        /// The digest user name, e.g. alice.
        username: String,
    },
}

/// `conflist-server token …`
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Print an HS256 JWT for USER signed with --jwt-secret-file (sub, iat, exp, and
    /// iss/aud when --jwt-issuer/--jwt-audience are set).
    Issue {
        /// `sub`: a user name (alice) or an address of record (sip:alice@example.com).
        user: String,
        /// Lifetime of the token.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

/// Secrets and keys read from files at startup (after [`Config::validate`], before binding).
#[derive(Debug)]
pub struct Secrets {
    /// The authenticator's settings; `None` with `--auth off`.
    pub auth: Option<AuthConfig>,
    /// The proxy hop's shared secret.
    pub grpc_secret: Option<Vec<u8>>,
    /// TLS for the gRPC listener.
    pub grpc_tls: Option<ServerTlsConfig>,
    /// The admin API's bearer token (`--admin-token-file`); `None` disables the API.
    pub admin_token: Option<Vec<u8>>,
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
        self.validate_ranges()?;
        if !(self.min_expires <= self.default_expires && self.default_expires <= self.max_expires) {
            return Err(format!(
                "expiry bounds must satisfy min <= default <= max (got {} / {} / {})",
                self.min_expires, self.default_expires, self.max_expires
            ));
        }
        if let Some(Command::Db(DbCommand::Install { watches })) = &self.command {
            for w in watches {
                crate::directory::changelog::Watch::parse(w).map_err(|e| e.to_string())?;
            }
        }
        if self.sip_domain.trim().is_empty() {
            return Err("--sip-domain must not be empty".into());
        }
        if let Some(read) = &self.read_database_url
            && !(directory::is_postgres_url(read) && directory::is_postgres_url(&self.database_url))
        {
            return Err(
                "--read-database-url needs PostgreSQL: both it and --database-url must be \
                 postgres:// URLs"
                    .into(),
            );
        }
        self.validate_auth()?;
        match &self.command {
            Some(Command::User(UserCommand::SetPassword { username })) => {
                validate_username(username)?;
            }
            Some(Command::Token(TokenCommand::Issue { user, .. })) => {
                if self.jwt_secret_file.is_none() {
                    return Err("token issue needs --jwt-secret-file".into());
                }
                if user.trim().is_empty() {
                    return Err("token issue: the user must not be empty".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), String> {
        let realm = self.realm();
        if realm.trim().is_empty()
            || realm.contains(['"', '\\'])
            || realm.chars().any(char::is_control)
        {
            return Err(
                "--auth-realm must be non-empty, without quotes, backslashes or control characters"
                    .into(),
            );
        }
        if self.auth_algorithms.is_empty() {
            return Err("--auth-algorithms must name at least one algorithm".into());
        }
        for (i, a) in self.auth_algorithms.iter().enumerate() {
            if self.auth_algorithms[..i].contains(a) {
                return Err(format!("--auth-algorithms names {a} twice"));
            }
        }
        let key_sources = [
            &self.jwt_secret_file,
            &self.jwt_public_key_file,
            &self.jwt_jwks_file,
        ];
        if key_sources.iter().filter(|k| k.is_some()).count() > 1 {
            return Err(
                "choose one of --jwt-secret-file, --jwt-public-key-file, --jwt-jwks-file".into(),
            );
        }
        let audience_missing = self
            .jwt_audience
            .as_deref()
            .is_none_or(|a| a.trim().is_empty());
        if (self.jwt_public_key_file.is_some() || self.jwt_jwks_file.is_some()) && audience_missing
        {
            return Err(
                "--jwt-public-key-file and --jwt-jwks-file need --jwt-audience: the keys of a \
                 shared identity provider also sign tokens minted for other applications, \
                 which would otherwise be accepted"
                    .into(),
            );
        }
        if self.jwt_user_claim.trim().is_empty() {
            return Err("--jwt-user-claim must not be empty".into());
        }
        if self.max_subscriptions_per_user == 0 {
            return Err("--max-subscriptions-per-user must be at least 1".into());
        }
        match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err("--grpc-tls-cert and --grpc-tls-key go together".into());
            }
            (None, None) if self.grpc_client_ca.is_some() => {
                return Err("--grpc-client-ca needs --grpc-tls-cert and --grpc-tls-key".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether the proxy hop is authenticated (a shared secret, or client certificates
    /// required by mutual TLS). Only then is a proxy's `flow_identity` honoured.
    pub fn hop_authenticated(&self) -> bool {
        self.grpc_secret_file.is_some() || self.grpc_client_ca.is_some()
    }

    /// Sign-in is on, but anyone who reaches the non-loopback gRPC listener may call it
    /// (worth a startup warning).
    pub fn unauthenticated_hop_exposed(&self) -> bool {
        self.auth == AuthMode::On
            && !self.hop_authenticated()
            && !self.grpc_listen.ip().is_loopback()
    }

    /// The digest realm: --auth-realm, else the SIP domain.
    pub fn realm(&self) -> &str {
        self.auth_realm.as_deref().unwrap_or(&self.sip_domain)
    }

    /// Reads the secret and key files for serving. Errors name the flag and file, never
    /// their content; they are printed before exit code 64.
    pub fn load_secrets(&self) -> Result<Secrets, String> {
        let grpc_secret = self
            .grpc_secret_file
            .as_deref()
            .map(|p| read_secret("--grpc-secret-file", p))
            .transpose()?;
        let grpc_tls = match (&self.grpc_tls_cert, &self.grpc_tls_key) {
            (Some(cert), Some(key)) => {
                let cert = read_file("--grpc-tls-cert", cert)?;
                let key = read_file("--grpc-tls-key", key)?;
                let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
                if let Some(ca) = &self.grpc_client_ca {
                    tls = tls
                        .client_ca_root(Certificate::from_pem(read_file("--grpc-client-ca", ca)?));
                }
                // Building the acceptor parses the PEMs: bad files fail here, before binding.
                tonic::transport::Server::builder()
                    .tls_config(tls.clone())
                    .map_err(|e| format!("gRPC TLS files unusable: {e}"))?;
                Some(tls)
            }
            _ => None,
        };
        let auth = match self.auth {
            AuthMode::Off => None,
            AuthMode::On => Some(self.auth_config()?),
        };
        let admin_token = self
            .admin_token_file
            .as_deref()
            .map(|p| read_secret("--admin-token-file", p))
            .transpose()?;
        Ok(Secrets {
            auth,
            grpc_secret,
            grpc_tls,
            admin_token,
        })
    }

    fn auth_config(&self) -> Result<AuthConfig, String> {
        let nonce_secret = match &self.auth_secret_file {
            Some(p) => read_secret("--auth-secret-file", p)?,
            None => {
                tracing::warn!(
                    "no --auth-secret-file: using a random nonce key, so digest nonces verify \
                     only on this instance"
                );
                let mut key = vec![0u8; 32];
                rand::fill(&mut key[..]);
                key
            }
        };
        let policy = bearer::BearerPolicy {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            user_claim: self.jwt_user_claim.trim().to_owned(),
            leeway: self.jwt_leeway.as_secs(),
            sip_domain: self.sip_domain.clone(),
        };
        let bearer = if let Some(p) = &self.jwt_secret_file {
            let secret = read_secret("--jwt-secret-file", p)?;
            Some(
                bearer::BearerVerifier::hs256(&secret, policy)
                    .map_err(|e| format!("--jwt-secret-file: {e}"))?,
            )
        } else if let Some(p) = &self.jwt_public_key_file {
            let pem = read_file("--jwt-public-key-file", p)?;
            Some(
                bearer::BearerVerifier::public_key_pem(&pem, policy)
                    .map_err(|e| format!("--jwt-public-key-file {}: {e}", p.display()))?,
            )
        } else if let Some(p) = &self.jwt_jwks_file {
            let json = read_file("--jwt-jwks-file", p)?;
            Some(
                bearer::BearerVerifier::jwks(&json, policy)
                    .map_err(|e| format!("--jwt-jwks-file {}: {e}", p.display()))?,
            )
        } else {
            None
        };
        Ok(AuthConfig {
            realm: self.realm().to_owned(),
            sip_domain: self.sip_domain.clone(),
            algorithms: self.auth_algorithms.clone(),
            nonce_secret,
            nonce_lifetime: self.nonce_lifetime,
            max_failures: self.auth_max_failures,
            failure_window: self.auth_failure_window,
            bearer,
        })
    }

    /// The HS256 secret of `token issue`.
    pub fn jwt_secret(&self) -> Result<Vec<u8>, String> {
        match &self.jwt_secret_file {
            Some(p) => read_secret("--jwt-secret-file", p),
            None => Err("--jwt-secret-file is not set".into()),
        }
    }
}

/// A user name `user set-password` accepts: it becomes `sip:<name>@<domain>` and part of
/// HA1's `username:realm:password`, so no `@`, `:`, quotes, spaces or control characters.
pub fn validate_username(username: &str) -> Result<(), String> {
    if username.is_empty()
        || username.len() > 256
        || username.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '@' | ':' | '"' | '\\' | '<' | '>')
        })
    {
        return Err(format!(
            "invalid user name {username:?}: 1-256 characters, none of @ : \" \\ < > or spaces"
        ));
    }
    Ok(())
}

/// The first line of `input` as a password: trailing CR/LF stripped, empty refused.
pub fn password_from_input(input: &[u8]) -> Result<String, String> {
    if input.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    let text = std::str::from_utf8(input).map_err(|_| "the password is not UTF-8".to_owned())?;
    let line = text.split('\n').next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err("empty password (write it on the first line of standard input)".into());
    }
    Ok(line.to_owned())
}

/// The largest NOTIFY body allowed (the proxy accepts Notifications up to 16 MiB).
const MAX_NOTIFY_BYTES: usize = 4 * 1024 * 1024;

/// The longest subscription any expiry setting may grant, seconds (one year).
pub const MAX_EXPIRES: u32 = 365 * 24 * 3600;

impl Config {
    /// Every duration and size setting within its bounds (see the README's configuration
    /// table): one line naming the flag, its bounds and the value otherwise.
    fn validate_ranges(&self) -> Result<(), String> {
        const MS: Duration = Duration::from_millis(1);
        const S: Duration = Duration::from_secs(1);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        check_range("--db-max-connections", self.db_max_connections, 1, 10_000)?;
        check_range("--min-expires", self.min_expires, 1, MAX_EXPIRES)?;
        check_range("--default-expires", self.default_expires, 1, MAX_EXPIRES)?;
        check_range("--max-expires", self.max_expires, 1, MAX_EXPIRES)?;
        check_range("--change-interval", self.change_interval, MS, HOUR)?;
        check_range("--change-retention", self.change_retention, S, MAX_DURATION)?;
        check_range(
            "--verify-interval",
            self.verify_interval,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        check_range(
            "--cache-max-age",
            self.cache_max_age,
            Duration::ZERO,
            MAX_DURATION,
        )?;
        check_range(
            "--min-notify-interval",
            self.min_notify_interval,
            Duration::ZERO,
            HOUR,
        )?;
        check_range(
            "--max-notify-bytes",
            self.max_notify_bytes,
            4096,
            MAX_NOTIFY_BYTES,
        )?;
        check_range(
            "--max-conference-bytes",
            self.max_conference_bytes,
            1024,
            self.max_notify_bytes / 4,
        )?;
        if let Some(past) = self.window_past {
            check_range("--window-past", past, Duration::ZERO, MAX_DURATION)?;
        }
        if let Some(ahead) = self.window_ahead {
            check_range("--window-ahead", ahead, Duration::ZERO, MAX_DURATION)?;
        }
        if let Some(max) = self.window_max {
            check_range("--window-max", max, 1, MAX_COUNT)?;
        }
        check_range(
            "--session-stall-timeout",
            self.session_stall_timeout,
            MS,
            HOUR,
        )?;
        check_range(
            "--shutdown-grace",
            self.shutdown_grace,
            Duration::ZERO,
            HOUR,
        )?;
        check_range("--drain-timeout", self.drain_timeout, Duration::ZERO, HOUR)?;
        check_range("--nonce-lifetime", self.nonce_lifetime, S, MAX_DURATION)?;
        check_range("--auth-max-failures", self.auth_max_failures, 1, 1_000_000)?;
        check_range(
            "--auth-failure-window",
            self.auth_failure_window,
            S,
            MAX_DURATION,
        )?;
        check_range("--jwt-leeway", self.jwt_leeway, Duration::ZERO, DAY)?;
        check_range(
            "--max-subscriptions-per-user",
            self.max_subscriptions_per_user,
            1,
            MAX_COUNT,
        )?;
        if let Some(Command::Token(TokenCommand::Issue { ttl, .. })) = &self.command {
            check_range("token issue --ttl", *ttl, S, MAX_DURATION)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn defaults_are_within_range() {
        assert_eq!(Config::parse_from(["s"]).validate_ranges(), Ok(()));
    }

    #[test]
    fn zero_where_it_makes_no_sense_is_refused() {
        for flag in [
            "--change-interval",
            "--session-stall-timeout",
            "--nonce-lifetime",
            "--auth-failure-window",
            "--change-retention",
        ] {
            let c = Config::parse_from(["s", flag, "0s"]);
            assert!(c.validate().unwrap_err().starts_with(flag), "{flag}");
        }
        for flag in [
            "--db-max-connections",
            "--max-subscriptions-per-user",
            "--auth-max-failures",
        ] {
            let c = Config::parse_from(["s", flag, "0"]);
            assert!(c.validate().unwrap_err().starts_with(flag), "{flag}");
        }
        let c = Config::parse_from([
            "s",
            "--verify-interval",
            "0s",
            "--cache-max-age",
            "0s",
            "--min-notify-interval",
            "0s",
        ]);
        assert_eq!(c.validate_ranges(), Ok(()));
        let c = Config::parse_from([
            "s",
            "--jwt-secret-file",
            "k",
            "token",
            "issue",
            "alice",
            "--ttl",
            "400d",
        ]);
        assert!(
            c.validate_ranges()
                .unwrap_err()
                .starts_with("token issue --ttl")
        );
    }

    /// Every flag that takes a duration or a number is range-checked: one far too large is
    /// refused by `validate` with a message naming it. A flag added without a check fails here.
    #[test]
    fn every_duration_and_size_flag_is_range_checked() {
        let mut checked = 0;
        for arg in Config::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            let parses = |v: &str| Config::try_parse_from(["s", flag.as_str(), v]).is_ok();
            if parses("x") {
                continue; // free text, not a duration or a size
            }
            let huge = ["200y", "4294967295"].into_iter().find(|v| parses(v));
            let Some(huge) = huge else { continue };
            let c = Config::parse_from(["s", flag.as_str(), huge]);
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
    fn rejects_inconsistent_expiry_bounds() {
        let mut c = Config::parse_from(["conflist-server"]);
        assert!(c.validate().is_ok());
        c.min_expires = 4000;
        assert!(c.validate().unwrap_err().contains("min <= default <= max"));
    }

    #[test]
    fn auth_defaults() {
        let c = Config::parse_from(["conflist-server"]);
        assert_eq!(c.auth, AuthMode::On);
        assert_eq!(c.realm(), "example.com");
        assert_eq!(c.auth_algorithms, vec![Algorithm::Sha256, Algorithm::Md5]);
        assert_eq!(c.nonce_lifetime, Duration::from_secs(300));
        assert_eq!(c.auth_max_failures, 10);
        assert_eq!(c.auth_failure_window, Duration::from_secs(60));
        assert_eq!(c.jwt_user_claim, "sub");
        assert_eq!(c.jwt_leeway, Duration::from_secs(30));
        assert_eq!(c.max_subscriptions_per_user, 100);
        let c = Config::parse_from([
            "x",
            "--auth-realm",
            "conf.example.com",
            "--auth-algorithms",
            "md5",
        ]);
        assert_eq!(c.realm(), "conf.example.com");
        assert_eq!(c.auth_algorithms, vec![Algorithm::Md5]);
        assert!(Config::try_parse_from(["x", "--auth-algorithms", "SHA-1"]).is_err());
        assert!(Config::try_parse_from(["x", "--auth", "maybe"]).is_err());
    }

    #[test]
    fn rejects_inconsistent_auth_and_tls_flags() {
        let bad: &[&[&str]] = &[
            &["x", "--auth-algorithms", "MD5,md5"],
            &["x", "--nonce-lifetime", "0s"],
            &["x", "--auth-max-failures", "0"],
            &["x", "--jwt-secret-file", "a", "--jwt-jwks-file", "b"],
            &["x", "--jwt-public-key-file", "k.pem"],
            &["x", "--jwt-jwks-file", "k.json"],
            &["x", "--jwt-jwks-file", "k.json", "--jwt-audience", " "],
            &["x", "--grpc-tls-cert", "c.pem"],
            &["x", "--grpc-client-ca", "ca.pem"],
            &["x", "--max-subscriptions-per-user", "0"],
            &["x", "--auth-realm", "a\"b"],
            &["x", "token", "issue", "alice"],
            &["x", "user", "set-password", "al ice"],
            &["x", "user", "set-password", "alice@example.com"],
        ];
        for args in bad {
            let c = Config::parse_from(*args);
            assert!(c.validate().is_err(), "{args:?}");
        }
        let c = Config::parse_from([
            "x",
            "--jwt-secret-file",
            "s",
            "token",
            "issue",
            "alice",
            "--ttl",
            "10m",
        ]);
        assert!(c.validate().is_ok());
        assert!(matches!(
            c.command,
            Some(Command::Token(TokenCommand::Issue { ttl, .. })) if ttl == Duration::from_secs(600)
        ));
    }

    #[test]
    fn an_audience_is_required_for_identity_provider_keys_only() {
        for key in ["--jwt-public-key-file", "--jwt-jwks-file"] {
            let c = Config::parse_from(["x", key, "k", "--jwt-audience", "conflist"]);
            assert!(c.validate().is_ok(), "{key}");
            let err = Config::parse_from(["x", key, "k"]).validate().unwrap_err();
            assert!(err.contains("need --jwt-audience"), "{err}");
        }
        let c = Config::parse_from(["x", "--jwt-secret-file", "s"]);
        assert!(c.validate().is_ok(), "optional with the local HS256 secret");
    }

    #[test]
    fn the_hop_is_authenticated_by_a_secret_or_client_certificates() {
        let plain = Config::parse_from(["x"]);
        assert!(!plain.hop_authenticated());
        assert!(!plain.unauthenticated_hop_exposed(), "loopback by default");
        let exposed = Config::parse_from(["x", "--grpc-listen", "0.0.0.0:50051"]);
        assert!(exposed.unauthenticated_hop_exposed());
        let off = Config::parse_from(["x", "--grpc-listen", "0.0.0.0:50051", "--auth", "off"]);
        assert!(
            !off.unauthenticated_hop_exposed(),
            "nothing to trust with auth off"
        );
        for extra in [
            &["--grpc-secret-file", "s"][..],
            &[
                "--grpc-tls-cert",
                "c",
                "--grpc-tls-key",
                "k",
                "--grpc-client-ca",
                "ca",
            ][..],
        ] {
            let mut args = vec!["x", "--grpc-listen", "[::]:50051"];
            args.extend_from_slice(extra);
            let c = Config::parse_from(args);
            assert!(c.hop_authenticated(), "{extra:?}");
            assert!(!c.unauthenticated_hop_exposed(), "{extra:?}");
        }
        let tls_only = Config::parse_from(["x", "--grpc-tls-cert", "c", "--grpc-tls-key", "k"]);
        assert!(
            !tls_only.hop_authenticated(),
            "server TLS alone proves nothing about the caller"
        );
    }

    #[test]
    fn secrets_are_read_trimmed_and_must_not_be_empty() {
        let dir = std::env::temp_dir().join(format!("conflist-config-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret\r\n").unwrap();
        assert_eq!(read_secret("--x", &secret).unwrap(), b"s3cret");
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(read_secret("--x", &empty).unwrap_err().contains("empty"));
        assert!(read_secret("--x", &dir.join("missing")).is_err());

        let c = Config::parse_from([
            "x".as_ref(),
            "--grpc-secret-file".as_ref(),
            secret.as_os_str(),
            "--auth-secret-file".as_ref(),
            secret.as_os_str(),
        ]);
        let s = c.load_secrets().unwrap();
        assert_eq!(s.grpc_secret.as_deref(), Some(&b"s3cret"[..]));
        assert_eq!(s.auth.unwrap().nonce_secret, b"s3cret");
        let off = Config::parse_from(["x", "--auth", "off"]);
        assert!(off.load_secrets().unwrap().auth.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_come_from_the_first_line() {
        assert_eq!(
            password_from_input(b"Circle Of Life\n").unwrap(),
            "Circle Of Life"
        );
        assert_eq!(password_from_input(b"pw\r\nignored\n").unwrap(), "pw");
        assert_eq!(password_from_input(b"no newline").unwrap(), "no newline");
        assert!(password_from_input(b"\n").is_err());
        assert!(password_from_input(b"").is_err());
    }

    #[test]
    fn a_read_replica_needs_postgresql_on_both_sides() {
        let pg = "postgres://u@primary/db";
        let ok = Config::parse_from([
            "x",
            "--database-url",
            pg,
            "--read-database-url",
            "postgresql://u@replica/db",
        ]);
        assert!(ok.validate().is_ok());
        for (primary, read) in [
            ("sqlite:demo.db", "postgres://u@replica/db"),
            (pg, "sqlite:replica.db"),
        ] {
            let c =
                Config::parse_from(["x", "--database-url", primary, "--read-database-url", read]);
            assert!(
                c.validate().unwrap_err().starts_with("--read-database-url"),
                "{primary} {read}"
            );
        }
    }

    #[test]
    fn the_drain_timeout_defaults_to_ten_seconds_and_may_be_zero() {
        let c = Config::parse_from(["x"]);
        assert_eq!(c.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.read_database_url, None);
        let c = Config::parse_from(["x", "--drain-timeout", "0s"]);
        assert_eq!(c.drain_timeout, Duration::ZERO);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn parses_durations_and_subcommands() {
        let c = Config::parse_from(["x", "--shutdown-grace", "1500ms", "db", "demo-data"]);
        assert_eq!(c.shutdown_grace, Duration::from_millis(1500));
        assert!(matches!(c.command, Some(Command::Db(DbCommand::DemoData))));
    }
}
