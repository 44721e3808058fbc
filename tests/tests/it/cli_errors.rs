//! Configuration errors, including values clap cannot parse, exit 64 with one line on
//! stderr (as the README's Configuration section says); `--help` and `--version` exit 0.

use conflist_tests::process::bin_dir;
use std::process::{Command, Output};

fn run(binary: &str, args: &[&str]) -> Output {
    let path = bin_dir().join(binary);
    assert!(
        path.exists(),
        "{} not found: build the binaries first (`cargo build --workspace --bins`)",
        path.display()
    );
    Command::new(&path)
        .args(args)
        // Nothing from the environment may make the arguments valid or invalid.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .expect("run the binary")
}

/// Exit 64, nothing on stdout, exactly one line on stderr naming `flag`, no colours.
fn assert_one_line_64(binary: &str, args: &[&str], flag: &str) {
    let out = run(binary, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{binary} {args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{binary} {args:?}: stdout not empty");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{binary} {args:?}: not one line: {stderr:?}"
    );
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert!(
        stderr.starts_with(&format!("{binary}: invalid configuration: ")),
        "{stderr:?}"
    );
    assert!(stderr.contains(flag), "{stderr:?} does not name {flag}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escapes in {stderr:?}");
}

fn assert_exits_0_on_stdout(binary: &str, arg: &str) {
    let out = run(binary, &[arg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{binary} {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty(), "{binary} {arg}: nothing on stdout");
}

#[test]
fn proxy_value_clap_cannot_parse_exits_64_with_one_line() {
    assert_one_line_64(
        "conflist-proxy",
        &["--keepalive-interval", "bogus"],
        "--keepalive-interval",
    );
    assert_one_line_64("conflist-proxy", &["--no-such-flag"], "--no-such-flag");
}

#[test]
fn proxy_value_from_the_environment_clap_cannot_parse_exits_64() {
    let out = Command::new(bin_dir().join("conflist-proxy"))
        .env_clear()
        .env("CONFLIST_KEEPALIVE_INTERVAL", "bogus")
        .output()
        .expect("run the proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr:?}");
}

#[test]
fn server_value_clap_cannot_parse_exits_64_with_one_line() {
    assert_one_line_64(
        "conflist-server",
        &["--nonce-lifetime", "bogus"],
        "--nonce-lifetime",
    );
    assert_one_line_64("conflist-server", &["--no-such-flag"], "--no-such-flag");
}

#[test]
fn help_and_version_exit_0() {
    for binary in ["conflist-proxy", "conflist-server"] {
        assert_exits_0_on_stdout(binary, "--help");
        assert_exits_0_on_stdout(binary, "--version");
    }
}

/// Logs written to a pipe (not a terminal) carry no ANSI colour codes.
#[test]
fn logs_to_a_pipe_have_no_colours() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(bin_dir().join("conflist-proxy"))
        .args([
            "--ws-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(conflist_tests::EVENT_TIMEOUT);
    child.kill().ok();
    child.wait().ok();
    let line = line.expect("a log line on stderr");
    assert!(line.contains("INFO"), "{line:?}");
    assert!(!line.contains('\u{1b}'), "ANSI escapes in {line:?}");
}
