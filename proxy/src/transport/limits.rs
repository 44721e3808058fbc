//! Per-client limits of the WebSocket edge, as pure data structures the listener and the
//! connections consult: who the client is behind a trusted load balancer ([`Cidr`],
//! [`TrustedProxies`]), which browser origins may connect ([`OriginPolicy`]), how many
//! connections one address holds ([`AddressTable`]), and how fast one address may open
//! subscriptions ([`SubscribeLimiter`], a token bucket driven by an explicit `now`).
//!
//! Both per-address maps are bounded: entries go away when they no longer hold state (a
//! count of zero, a full bucket), and a full table refuses new addresses instead of growing.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Locks a table; a panic elsewhere while holding it leaves counts that are still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Why a `--trusted-proxy` value is not an address or network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse.
    #[error("{0:?} is not an IP address")]
    Address(String),
    /// The prefix length is not a number or exceeds the family's width.
    #[error("{0:?} is not a valid prefix length")]
    Prefix(String),
}

impl Cidr {
    /// True when `ip` lies in this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = mask_u128(self.prefix);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_u128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`); no prefix means one address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::Address(addr.to_owned()))?;
        let net = net.to_canonical();
        let width = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| CidrError::Prefix(p.to_owned()))?,
        };
        let net = match net {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_u32(prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_u128(prefix)).into()),
        };
        Ok(Self { net, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The load balancers whose `X-Forwarded-For` is believed (`--trusted-proxy`).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// The set; empty means no peer is trusted and `X-Forwarded-For` is always ignored.
    pub fn new(nets: Vec<Cidr>) -> Self {
        Self(nets)
    }

    /// True when `ip` is one of the trusted load balancers.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    /// The client's address: the TCP peer itself unless it is trusted; then the right-most
    /// `X-Forwarded-For` entry that is not trusted (each trusted hop appends the address it
    /// saw, so entries left of the first untrusted one are the client's own claims). When
    /// every entry is trusted, the left-most; at an unparseable entry the walk stops and the
    /// nearest trusted hop is taken. `forwarded` are the header's values in order.
    pub fn client_addr<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = forwarded
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        let mut nearest = peer;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_forwarded_addr(entry) else {
                break;
            };
            if !self.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
        nearest
    }
}

/// An `X-Forwarded-For` entry: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]:4711`; `None` for `unknown`, obfuscated names and junk.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    }
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Which browser origins may open a WebSocket (`--allowed-origin`), against cross-site
/// WebSocket hijacking: a page elsewhere must not use a visitor's browser to subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// `*`: every origin.
    Any,
    /// No Origin (non-browser clients), the request's own Host, and these origins
    /// (normalised: lower case, default port removed).
    Listed(Vec<String>),
}

/// Why an `--allowed-origin` value is not an origin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin (scheme://host[:port], or *)")]
pub struct OriginError(String);

impl OriginPolicy {
    /// The policy for the configured values; `*` among them allows every origin.
    pub fn new(allowed: &[String]) -> Result<Self, OriginError> {
        let mut listed = Vec::new();
        for a in allowed.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
            if a == "*" {
                return Ok(Self::Any);
            }
            let (scheme, authority) =
                split_origin(a.trim_end_matches('/')).ok_or_else(|| OriginError(a.to_owned()))?;
            listed.push(format!(
                "{scheme}://{}",
                strip_default_port(&scheme, &authority)
            ));
        }
        Ok(Self::Listed(listed))
    }

    /// Whether an upgrade with this `Origin` and `Host` header may proceed.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let Self::Listed(listed) = self else {
            return true;
        };
        let Some((scheme, authority)) = split_origin(origin.trim()) else {
            return false; // `null` (sandboxed frames, file:) and junk
        };
        let authority = strip_default_port(&scheme, &authority);
        if let Some(host) = host
            && strip_default_port(&scheme, &host.trim().to_ascii_lowercase()) == authority
        {
            return true;
        }
        let origin = format!("{scheme}://{authority}");
        listed.contains(&origin)
    }
}

/// `scheme://authority` in lower case, or `None` when it is not shaped like an origin.
fn split_origin(origin: &str) -> Option<(String, String)> {
    let (scheme, authority) = origin.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let authority_ok = !authority.is_empty()
        && !authority
            .chars()
            .any(|c| c == '/' || c == '?' || c == '#' || c == '@' || c.is_whitespace());
    (scheme_ok && authority_ok)
        .then(|| (scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

fn strip_default_port(scheme: &str, authority: &str) -> String {
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => return authority.to_owned(),
    };
    authority
        .strip_suffix(default)
        .unwrap_or(authority)
        .to_owned()
}

/// Why [`AddressTable::try_acquire`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressRefused {
    /// This address already holds `--max-connections-per-address` connections.
    #[error("too many connections from this address")]
    OverLimit,
    /// `--max-tracked-addresses` distinct addresses are connected; no room for another.
    #[error("too many distinct client addresses")]
    TableFull,
}

/// The key a client address is limited by: IPv4 addresses one by one, IPv6 by their /64
/// (one subscriber's allocation, RFC 6177), so rotating through a prefix gains nothing.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_u128(64)).into()),
        v4 => v4,
    }
}

/// Open connections per client address (`--max-connections-per-address`). An entry lives
/// while its count is above zero, so the map holds at most one entry per open connection and
/// never more than `max_addresses`.
#[derive(Debug, Clone)]
pub struct AddressTable {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_address: usize,
    max_addresses: usize,
}

impl AddressTable {
    /// A table allowing `max_per_address` connections for each of up to `max_addresses`.
    pub fn new(max_per_address: usize, max_addresses: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_per_address,
            max_addresses,
        }
    }

    /// Counts one more connection from `ip`; the guard counts it off again when dropped.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<AddressGuard, AddressRefused> {
        let ip = address_key(ip);
        let mut counts = lock(&self.counts);
        let len = counts.len();
        match counts.get_mut(&ip) {
            Some(n) if *n >= self.max_per_address => return Err(AddressRefused::OverLimit),
            Some(n) => *n += 1,
            None if len >= self.max_addresses => return Err(AddressRefused::TableFull),
            None => {
                counts.insert(ip, 1);
            }
        }
        Ok(AddressGuard {
            counts: self.counts.clone(),
            ip,
        })
    }

    /// Connections counted for `ip` now.
    pub fn count(&self, ip: IpAddr) -> usize {
        lock(&self.counts)
            .get(&address_key(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Distinct addresses with at least one connection.
    pub fn addresses(&self) -> usize {
        lock(&self.counts).len()
    }
}

/// One connection counted in an [`AddressTable`]; dropping it counts the connection off and
/// removes the address at zero.
#[derive(Debug)]
pub struct AddressGuard {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressGuard {
    /// The address this guard counts.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst`, one per admitted request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
    }

    /// Takes a token if there is one at `now`.
    pub fn try_take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// True when the bucket would be full at `now` (it then carries no state worth keeping).
    pub fn is_full_at(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, burst, now);
        b.tokens >= burst
    }
}

/// What [`SubscribeLimiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeDecision {
    /// Within the rate.
    Allowed,
    /// This address is over its rate.
    OverRate,
    /// The table of addresses is full even after dropping idle ones.
    TableFull,
}

/// New SUBSCRIBEs per client address (`--max-subscribes-per-address`): one token bucket per
/// address, shared by all its connections, with burst twice the rate. Full buckets carry no
/// state, so they are swept when the table reaches `max_addresses` (at most once per refill
/// period, so a full table costs one pass, not one per request).
#[derive(Debug)]
pub struct SubscribeLimiter {
    state: Mutex<LimiterState>,
    rate: f64,
    burst: f64,
    max_addresses: usize,
}

#[derive(Debug, Default)]
struct LimiterState {
    buckets: HashMap<IpAddr, TokenBucket>,
    last_sweep: Option<Instant>,
}

impl SubscribeLimiter {
    /// `per_second` new SUBSCRIBEs per address (burst `2 × per_second`), `max_addresses`
    /// buckets at most.
    pub fn new(per_second: u32, max_addresses: usize) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            state: Mutex::default(),
            rate,
            burst: rate * 2.0,
            max_addresses,
        }
    }

    /// Takes one token for `ip` at `now`.
    pub fn check(&self, ip: IpAddr, now: Instant) -> SubscribeDecision {
        let ip = address_key(ip);
        let (rate, burst) = (self.rate, self.burst);
        let mut st = lock(&self.state);
        if !st.buckets.contains_key(&ip) && st.buckets.len() >= self.max_addresses {
            let refill = Duration::from_secs_f64(burst / rate);
            let due = st
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= refill);
            if due {
                st.buckets.retain(|_, b| !b.is_full_at(rate, burst, now));
                st.last_sweep = Some(now);
            }
            if st.buckets.len() >= self.max_addresses {
                return SubscribeDecision::TableFull;
            }
        }
        let bucket = st
            .buckets
            .entry(ip)
            .or_insert_with(|| TokenBucket::full(burst, now));
        if bucket.try_take(rate, burst, now) {
            SubscribeDecision::Allowed
        } else {
            SubscribeDecision::OverRate
        }
    }

    /// Addresses with a bucket now.
    pub fn addresses(&self) -> usize {
        lock(&self.state).buckets.len()
    }
}

/// Everything the edge limits per client, shared by all listeners and connections.
#[derive(Debug)]
pub struct Limits {
    /// Load balancers whose `X-Forwarded-For` names the client.
    pub trusted: TrustedProxies,
    /// Browser origins that may connect.
    pub origins: OriginPolicy,
    /// Connections per client address.
    pub connections: AddressTable,
    /// New SUBSCRIBEs per client address.
    pub subscribes: SubscribeLimiter,
}

/// The values [`Limits`] is built from (validated by `Config::validate`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// `--trusted-proxy`.
    pub trusted_proxies: Vec<Cidr>,
    /// `--allowed-origin`.
    pub allowed_origins: Vec<String>,
    /// `--max-connections-per-address`.
    pub max_connections_per_address: usize,
    /// `--max-subscribes-per-address` (per second).
    pub max_subscribes_per_address: u32,
    /// `--max-tracked-addresses`: bound of each per-address table.
    pub max_tracked_addresses: usize,
}

impl Limits {
    /// Builds the shared limit state.
    pub fn new(cfg: LimitsConfig) -> Result<Self, OriginError> {
        Ok(Self {
            trusted: TrustedProxies::new(cfg.trusted_proxies),
            origins: OriginPolicy::new(&cfg.allowed_origins)?,
            connections: AddressTable::new(
                cfg.max_connections_per_address,
                cfg.max_tracked_addresses,
            ),
            subscribes: SubscribeLimiter::new(
                cfg.max_subscribes_per_address,
                cfg.max_tracked_addresses,
            ),
        })
    }
}

#[cfg(test)]
mod tests;
