//! Server discovery: the static `--server` list, DNS names that resolve to many addresses
//! (a Kubernetes headless Service) and a file of endpoints. A source that cannot be read
//! keeps what it last gave, so a DNS hiccup never empties the server set.

use super::{Discovery, Inner, read};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tracing::{debug, warn};

/// What each dynamic source last gave.
#[derive(Debug, Default)]
pub(super) struct Found {
    dns: HashMap<String, BTreeSet<String>>,
    file: BTreeSet<String>,
}

/// Reads every source and makes the server set match: new endpoints are added, endpoints
/// no source gives any more are marked removed (their subscriptions move away, then their
/// sessions stop), and a removed endpoint that comes back is listed again.
pub(super) async fn sync(
    inner: &Arc<Inner>,
    statics: &[String],
    discovery: &Discovery,
    found: &mut Found,
) {
    for name in &discovery.dns {
        match resolve(name).await {
            Ok(endpoints) if !endpoints.is_empty() => {
                found.dns.insert(name.clone(), endpoints);
            }
            Ok(_) => {
                warn!(name = %name, "DNS name resolved to no address; keeping the last answer")
            }
            Err(e) => warn!(name = %name, error = %e, "DNS lookup failed; keeping the last answer"),
        }
    }
    if let Some(path) = &discovery.file {
        let file = path.clone();
        let text = tokio::task::spawn_blocking(move || std::fs::read_to_string(file))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match text {
            Ok(text) => found.file = parse_file(&text),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "servers file unreadable; keeping the last list")
            }
        }
    }
    let wanted: BTreeSet<String> = statics
        .iter()
        .cloned()
        .chain(found.dns.values().flatten().cloned())
        .chain(found.file.iter().cloned())
        .collect();
    let mut changed = false;
    let known: Vec<(String, bool)> = read(&inner.servers)
        .iter()
        .map(|s| (s.endpoint.clone(), s.removed.load(Ordering::Relaxed)))
        .collect();
    for s in read(&inner.servers).iter() {
        let listed = wanted.contains(&s.endpoint);
        if s.removed.swap(!listed, Ordering::Relaxed) == listed {
            debug!(endpoint = %s.endpoint, listed, "server listing changed");
            changed = true;
        }
    }
    for endpoint in &wanted {
        if !known.iter().any(|(e, _)| e == endpoint) {
            inner.add(endpoint.clone());
            changed = true;
        }
    }
    if changed {
        for s in read(&inner.servers).iter() {
            s.state_changed();
        }
    }
}

/// The endpoints of a servers file: one URL per line, blank lines and `#` comments skipped.
pub(super) fn parse_file(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Errors of a DNS source.
#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    /// Not `http[s]://name:port`.
    #[error("not an http:// or https:// URL with a port: {0}")]
    BadUrl(String),
    /// The lookup failed.
    #[error(transparent)]
    Lookup(#[from] std::io::Error),
}

/// Every address `scheme://name:port` resolves to, as `scheme://ip:port` endpoints.
async fn resolve(url: &str) -> Result<BTreeSet<String>, ResolveError> {
    let (scheme, host, port) = split_url(url).ok_or_else(|| ResolveError::BadUrl(url.into()))?;
    let addrs = tokio::net::lookup_host((host, port)).await?;
    Ok(addrs.map(|a| format!("{scheme}://{a}")).collect())
}

/// `http://name:port[/]` → (`http`, `name`, port).
fn split_url(url: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((scheme, host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_file_skips_blanks_and_comments() {
        let got = parse_file("# servers\nhttp://a:1\n\n  http://b:2  # second\nhttp://a:1\n");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec!["http://a:1".to_owned(), "http://b:2".to_owned()]
        );
    }

    #[test]
    fn dns_urls_need_a_scheme_and_a_port() {
        assert_eq!(
            split_url("http://conflist-server:50051"),
            Some(("http", "conflist-server", 50051))
        );
        assert_eq!(split_url("https://[::1]:7/"), Some(("https", "::1", 7)));
        assert_eq!(split_url("conflist-server:50051"), None);
        assert_eq!(split_url("http://conflist-server"), None);
        assert_eq!(split_url("ftp://x:1"), None);
    }

    #[tokio::test]
    async fn localhost_resolves_to_its_addresses() {
        let got = resolve("http://localhost:50051").await.unwrap();
        assert!(got.contains("http://127.0.0.1:50051"), "{got:?}");
    }
}
