//! `conflist`, the operator CLI of the conference-list service.
//!
//! * `conflist watch sip:alice@example.com --ws ws://…` subscribes like a browser and prints
//!   the list as a table, then each change as it arrives, a removal with its reason
//!   (`--json`: one object per NOTIFY);
//! * `conflist list …` prints the list once (a fetch: SUBSCRIBE with `Expires: 0`).
//!
//! A list too large for one NOTIFY arrives in parts (a full document marked
//! `complete="false"`, then partials; a fetch's last part is the terminated NOTIFY): each part
//! is applied, and the table or the change lines are printed once the last one is in.
//! * `conflist admin subscriptions|counts|resend` calls the server's admin API.
//!
//! Layout: [`sip_client`] (SIP over WebSocket), [`conflist_cli::digest`] (the digest answer, in the library), [`view`]
//! (tables, change lines, JSON), [`admin`] (the admin API's HTTP client).
//!
//! It depends on `sip` and `document`, never on the test crate.

// No unwrap/expect on data from the network, the database or config (tests may: clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod sip_client;
mod view;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use sip::{HeaderName, Message};
use sip_client::{Auth, Client};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other failure (a bad answer, an unparseable document)
  2  bad arguments
  3  authentication failed (wrong password or token, forbidden list, refused admin token)
  4  unreachable (no connection, no answer in time, connection lost)";

/// Operator CLI of the conference-list service.
#[derive(Debug, Parser)]
#[command(name = "conflist", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Subscribe and print the list, then every change as it arrives (until Ctrl-C or the
    /// server ends the subscription).
    #[command(after_help = EXIT_CODES)]
    Watch(SubscribeArgs),
    /// Print the list once (SUBSCRIBE with Expires: 0).
    #[command(after_help = EXIT_CODES)]
    List(SubscribeArgs),
    /// Call the subscriber-server's admin API (`--admin-token-file` on the server).
    #[command(after_help = EXIT_CODES)]
    Admin(AdminArgs),
}

#[derive(Debug, Args)]
struct SubscribeArgs {
    /// Whose list: an address of record, e.g. sip:alice@example.com.
    user: String,
    /// The proxy's WebSocket URL.
    #[arg(long, env = "CONFLIST_WS", default_value = "ws://127.0.0.1:8080")]
    ws: String,
    /// Digest sign-in: a file whose first line is the password.
    #[arg(long, conflicts_with = "token")]
    password_file: Option<PathBuf>,
    /// Digest user name (default: the user part of USER).
    #[arg(long)]
    username: Option<String>,
    /// Bearer sign-in with this JWT.
    #[arg(long, env = "CONFLIST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object per NOTIFY instead of tables and change lines.
    #[arg(long)]
    json: bool,
    /// Subscription lifetime asked for (watch), seconds; refreshed at half of what is granted.
    #[arg(long, default_value_t = 3600)]
    expires: u32,
}

#[derive(Debug, Args)]
struct AdminArgs {
    #[command(subcommand)]
    what: AdminCommand,
    /// The server's admin base URL.
    #[arg(
        long,
        global = true,
        env = "CONFLIST_ADMIN",
        default_value = "http://127.0.0.1:9101"
    )]
    admin: String,
    /// A file holding the admin token (the server's --admin-token-file).
    #[arg(long, global = true, env = "CONFLIST_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Print the API's JSON answer as it is.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Live subscriptions of the instance (of one user with --user).
    Subscriptions {
        /// Only this user's, e.g. sip:alice@example.com.
        #[arg(long)]
        user: Option<String>,
    },
    /// Subscriptions, proxy sessions and users.
    Counts,
    /// Send full state to every subscription of a user (Kamailio's refreshWatchers).
    Resend {
        /// The user, e.g. sip:alice@example.com.
        #[arg(long)]
        user: String,
    },
}

/// Sign-in failed: exit code 3.
#[derive(Debug)]
struct AuthFailed(String);

impl std::fmt::Display for AuthFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "authentication failed: {}", self.0)
    }
}

impl std::error::Error for AuthFailed {}

/// The peer could not be reached or went away: exit code 4.
#[derive(Debug)]
struct Unreachable(String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unreachable: {}", self.0)
    }
}

impl std::error::Error for Unreachable {}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::select! {
        r = run(cli) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conflist: {e:#}");
            let code = if e.downcast_ref::<AuthFailed>().is_some() {
                3
            } else if e.downcast_ref::<Unreachable>().is_some() {
                4
            } else {
                1
            };
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Watch(args) => watch(&args, false).await,
        Command::List(args) => watch(&args, true).await,
        Command::Admin(args) => run_admin(&args).await,
    }
}

/// Reads the first line of a secret file.
fn first_line(flag: &str, path: &PathBuf) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        bail!("{flag} {}: the file is empty", path.display());
    }
    Ok(line.to_owned())
}

fn auth_of(args: &SubscribeArgs) -> Result<Auth> {
    if let Some(path) = &args.password_file {
        let password = first_line("--password-file", path)?;
        let username = match &args.username {
            Some(u) => u.clone(),
            None => user_part(&args.user)?.to_owned(),
        };
        return Ok(Auth::Digest { username, password });
    }
    Ok(match &args.token {
        Some(t) => Auth::Bearer(t.clone()),
        None => Auth::None,
    })
}

fn user_part(aor: &str) -> Result<&str> {
    let rest = aor
        .strip_prefix("sip:")
        .or_else(|| aor.strip_prefix("sips:"))
        .with_context(|| format!("{aor}: expected sip:user@domain"))?;
    rest.split_once('@')
        .map(|(u, _)| u)
        .filter(|u| !u.is_empty())
        .with_context(|| format!("{aor}: expected sip:user@domain"))
}

/// `watch` and `list`: subscribe, then print what arrives.
async fn watch(args: &SubscribeArgs, once: bool) -> Result<()> {
    user_part(&args.user)?;
    let auth = auth_of(args)?;
    let mut client = Client::connect(&args.ws).await?;
    let expires = if once { 0 } else { args.expires.max(1) };
    let mut list = view::Follow::default();
    'subscribe: loop {
        let (mut dialog, early) = client.subscribe(&args.user, expires, &auth).await?;
        let mut refresh_at = refresh_time(dialog.expires);
        let mut queued = early;
        loop {
            let notify = if !queued.is_empty() {
                let n = queued.remove(0);
                if !dialog.owns(&n) {
                    continue;
                }
                n
            } else {
                let msg = tokio::select! {
                    m = client.recv() => m?,
                    () = tokio::time::sleep_until(refresh_at), if !once => {
                        client.refresh(&mut dialog, expires).await?;
                        refresh_at = refresh_time(dialog.expires);
                        continue;
                    }
                };
                match msg {
                    None => bail!(Unreachable("the proxy closed the connection".into())),
                    Some(Message::Response(r))
                        if r.headers.get(&HeaderName::CALL_ID).map(str::trim)
                            != Some(dialog.call_id()) =>
                    {
                        continue; // the answer to leaving an earlier dialog
                    }
                    Some(Message::Response(r)) => {
                        // The answer to a refresh.
                        if r.status.as_u16() >= 300 {
                            bail!("refresh answered {} {}", r.status.as_u16(), r.reason);
                        }
                        if let Some(e) = r
                            .headers
                            .get(&HeaderName::EXPIRES)
                            .and_then(|e| e.trim().parse().ok())
                        {
                            dialog.expires = e;
                            refresh_at = refresh_time(e);
                        }
                        continue;
                    }
                    Some(Message::Request(r)) if r.method == sip::Method::Notify => {
                        client.respond(&r, 200).await?;
                        if !dialog.owns(&r) {
                            continue; // the last words of a dialog we left
                        }
                        r
                    }
                    Some(Message::Request(r)) => {
                        client.respond(&r, 405).await?;
                        continue;
                    }
                }
            };
            let state = notify
                .headers
                .get(&HeaderName::SUBSCRIPTION_STATE)
                .unwrap_or("")
                .to_owned();
            let terminated = state.trim_start().starts_with("terminated");
            let doc = if notify.body.is_empty() {
                None
            } else {
                Some(
                    document::ConferenceList::parse(&notify.body)
                        .map_err(|e| anyhow!("NOTIFY body is not a conference list: {e}"))?,
                )
            };
            if args.json {
                println!("{}", view::notify_json(&state, doc.as_ref()));
            }
            if let Some(doc) = &doc {
                match list.apply(doc) {
                    // A state in several NOTIFYs: printed once its last part is in.
                    Ok(Some(lines)) => {
                        if !args.json {
                            for line in lines {
                                println!("{line}");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        eprintln!("conflist: {e}; subscribing again for full state");
                        list.resubscribe();
                        client.refresh(&mut dialog, 0).await?;
                        continue 'subscribe;
                    }
                }
            }
            // A fetch ends with the last part of the list (its NOTIFY is the terminated one).
            if once && doc.is_some() && list.complete() {
                return Ok(());
            }
            if terminated {
                if once {
                    if doc.is_none() && list.complete() {
                        return Ok(());
                    }
                    bail!(
                        "the server ended the fetch ({state}) with the list incomplete ({} conferences so far)",
                        list.len()
                    );
                }
                if state.contains("deactivated") || state.contains("timeout") {
                    // RFC 6665 §4.1.3: subscribe again at once.
                    eprintln!("conflist: subscription ended ({state}); subscribing again");
                    list.resubscribe();
                    continue 'subscribe;
                }
                bail!("the server ended the subscription: {state}");
            }
        }
    }
}

fn refresh_time(granted: u32) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(u64::from(granted.max(2)) / 2)
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn run_admin(args: &AdminArgs) -> Result<()> {
    let token = match &args.admin_token_file {
        Some(p) => first_line("--admin-token-file", p)?,
        None => {
            use clap::CommandFactory as _;
            Cli::command()
                .error(
                    clap::error::ErrorKind::MissingRequiredArgument,
                    "--admin-token-file <FILE> (or CONFLIST_ADMIN_TOKEN_FILE) is required",
                )
                .exit()
        }
    };
    let (method, path) = match &args.what {
        AdminCommand::Subscriptions { user: None } => ("GET", "/admin/subscriptions".to_owned()),
        AdminCommand::Subscriptions { user: Some(u) } => {
            ("GET", format!("/admin/subscriptions?user={}", encode(u)))
        }
        AdminCommand::Counts => ("GET", "/admin/counts".to_owned()),
        AdminCommand::Resend { user } => ("POST", format!("/admin/resend?user={}", encode(user))),
    };
    let answer = admin::call(&args.admin, &token, method, &path).await?;
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    match &args.what {
        AdminCommand::Subscriptions { .. } => println!("{}", admin::subscriptions_table(&answer)),
        AdminCommand::Counts => {
            for key in ["subscriptions", "sessions", "users"] {
                println!("{key:<14} {}", answer[key]);
            }
        }
        AdminCommand::Resend { user } => {
            println!(
                "full state sent to {} subscription(s) of {user}",
                answer["resent"]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn encodes_query_values() {
        assert_eq!(encode("sip:bob@example.com"), "sip%3Abob%40example.com");
    }

    #[test]
    fn user_part_of_an_aor() {
        assert_eq!(user_part("sip:alice@example.com").unwrap(), "alice");
        assert!(user_part("alice").is_err());
    }
}
