use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trusted(nets: &[&str]) -> TrustedProxies {
    TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
}

#[test]
fn cidr_parses_networks_and_single_addresses() {
    let c: Cidr = "10.1.2.3/8".parse().unwrap();
    assert_eq!(c.to_string(), "10.0.0.0/8");
    assert_eq!(
        "192.0.2.7".parse::<Cidr>().unwrap().to_string(),
        "192.0.2.7/32"
    );
    assert_eq!(
        "2001:db8::1/32".parse::<Cidr>().unwrap().to_string(),
        "2001:db8::/32"
    );
    assert_eq!(
        "::ffff:10.0.0.1".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.1/32"
    );
    assert_eq!(
        "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
        "0.0.0.0/0"
    );
    assert_eq!(
        "10.0.0.0/33".parse::<Cidr>(),
        Err(CidrError::Prefix("33".into()))
    );
    assert_eq!(
        "::/129".parse::<Cidr>(),
        Err(CidrError::Prefix("129".into()))
    );
    assert_eq!(
        "10.0.0.0/x".parse::<Cidr>(),
        Err(CidrError::Prefix("x".into()))
    );
    assert_eq!(
        "lb.example.com".parse::<Cidr>(),
        Err(CidrError::Address("lb.example.com".into()))
    );
}

#[test]
fn cidr_matches_by_prefix_and_family() {
    let c: Cidr = "10.0.0.0/8".parse().unwrap();
    assert!(c.contains(ip("10.255.0.1")));
    assert!(
        c.contains(ip("::ffff:10.0.0.9")),
        "IPv4-mapped counts as IPv4"
    );
    assert!(!c.contains(ip("11.0.0.1")));
    assert!(!c.contains(ip("::1")));
    let c: Cidr = "172.16.0.0/12".parse().unwrap();
    assert!(c.contains(ip("172.31.255.255")));
    assert!(!c.contains(ip("172.32.0.0")));
    let c: Cidr = "2001:db8::/32".parse().unwrap();
    assert!(c.contains(ip("2001:db8:ffff::1")));
    assert!(!c.contains(ip("2001:db9::1")));
    assert!(!c.contains(ip("10.0.0.1")));
    assert!(
        "0.0.0.0/0"
            .parse::<Cidr>()
            .unwrap()
            .contains(ip("203.0.113.5"))
    );
    assert!("::/0".parse::<Cidr>().unwrap().contains(ip("2001:db8::5")));
    let one: Cidr = "192.0.2.7".parse().unwrap();
    assert!(one.contains(ip("192.0.2.7")));
    assert!(!one.contains(ip("192.0.2.8")));
}

#[test]
fn forwarded_for_is_ignored_from_untrusted_peers() {
    let t = trusted(&["10.0.0.0/8"]);
    assert_eq!(
        t.client_addr(ip("198.51.100.1"), ["203.0.113.9"]),
        ip("198.51.100.1")
    );
    assert_eq!(
        TrustedProxies::default().client_addr(ip("10.0.0.1"), ["203.0.113.9"]),
        ip("10.0.0.1")
    );
}

#[test]
fn forwarded_for_takes_the_right_most_untrusted_entry() {
    let t = trusted(&["10.0.0.0/8", "192.0.2.0/24"]);
    // The client claims 1.1.1.1; the outer LB (192.0.2.5) saw 203.0.113.9; the inner LB
    // (10.0.0.2, the TCP peer) saw 192.0.2.5.
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["1.1.1.1, 203.0.113.9", "192.0.2.5"]),
        ip("203.0.113.9")
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["203.0.113.9:4711"]),
        ip("203.0.113.9")
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["[2001:db8::7]:4711"]),
        ip("2001:db8::7")
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["2001:db8::7"]),
        ip("2001:db8::7")
    );
    assert_eq!(
        t.client_addr(ip("::ffff:10.0.0.2"), ["::ffff:203.0.113.9"]),
        ip("203.0.113.9")
    );
}

#[test]
fn forwarded_for_falls_back_to_the_nearest_trusted_hop() {
    let t = trusted(&["10.0.0.0/8"]);
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), []),
        ip("10.0.0.2"),
        "no header"
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), [" , "]),
        ip("10.0.0.2"),
        "empty header"
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["10.0.0.9, 10.0.0.3"]),
        ip("10.0.0.9"),
        "all trusted: the left-most"
    );
    assert_eq!(
        t.client_addr(ip("10.0.0.2"), ["203.0.113.9, unknown, 10.0.0.3"]),
        ip("10.0.0.3"),
        "junk stops the walk"
    );
    assert_eq!(t.client_addr(ip("10.0.0.2"), ["unknown"]), ip("10.0.0.2"));
}

fn origins(list: &[&str]) -> OriginPolicy {
    OriginPolicy::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn origin_default_allows_non_browsers_and_same_origin_only() {
    let p = origins(&[]);
    assert!(
        p.allows(None, Some("sip.example.com")),
        "no Origin: not a browser"
    );
    assert!(p.allows(Some("https://sip.example.com"), Some("sip.example.com")));
    assert!(p.allows(Some("https://SIP.example.com"), Some("sip.example.COM")));
    assert!(p.allows(
        Some("https://sip.example.com:8443"),
        Some("sip.example.com:8443")
    ));
    assert!(p.allows(Some("https://sip.example.com"), Some("sip.example.com:443")));
    assert!(p.allows(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
    assert!(!p.allows(Some("https://evil.example"), Some("sip.example.com")));
    assert!(!p.allows(
        Some("https://sip.example.com:8443"),
        Some("sip.example.com")
    ));
    assert!(!p.allows(Some("https://sip.example.com"), None));
    assert!(!p.allows(Some("null"), Some("sip.example.com")));
    assert!(!p.allows(Some("https://a@sip.example.com"), Some("sip.example.com")));
}

#[test]
fn origin_list_and_wildcard() {
    let p = origins(&["https://app.example.com", "http://localhost:3000/"]);
    assert!(p.allows(Some("https://app.example.com"), Some("sip.example.com")));
    assert!(p.allows(Some("https://app.example.com:443"), Some("sip.example.com")));
    assert!(p.allows(Some("http://localhost:3000"), Some("sip.example.com")));
    assert!(
        !p.allows(Some("http://app.example.com"), Some("sip.example.com")),
        "scheme counts"
    );
    assert!(!p.allows(Some("https://other.example.com"), Some("sip.example.com")));
    let any = origins(&["https://app.example.com", "*"]);
    assert_eq!(any, OriginPolicy::Any);
    assert!(any.allows(Some("null"), None));
    assert_eq!(
        OriginPolicy::new(&["app.example.com".to_string()]),
        Err(OriginError("app.example.com".into()))
    );
    assert!(OriginPolicy::new(&["https://app.example.com/path".to_string()]).is_err());
}

#[test]
fn address_table_counts_per_address_and_forgets_at_zero() {
    let t = AddressTable::new(2, 10);
    let a = ip("192.0.2.1");
    let g1 = t.try_acquire(a).unwrap();
    let g2 = t.try_acquire(ip("::ffff:192.0.2.1")).unwrap();
    assert_eq!(t.count(a), 2);
    assert_eq!(t.try_acquire(a).unwrap_err(), AddressRefused::OverLimit);
    let other = t.try_acquire(ip("192.0.2.2")).unwrap();
    assert_eq!(t.addresses(), 2);
    drop(g1);
    assert_eq!(t.count(a), 1);
    let g3 = t.try_acquire(a).unwrap();
    drop(g2);
    drop(g3);
    assert_eq!(t.count(a), 0);
    assert_eq!(t.addresses(), 1, "the entry is removed at zero");
    drop(other);
    assert_eq!(t.addresses(), 0);
}

#[test]
fn address_table_is_bounded() {
    let t = AddressTable::new(5, 2);
    let _a = t.try_acquire(ip("192.0.2.1")).unwrap();
    let b = t.try_acquire(ip("192.0.2.2")).unwrap();
    assert_eq!(
        t.try_acquire(ip("192.0.2.3")).unwrap_err(),
        AddressRefused::TableFull
    );
    let _a2 = t.try_acquire(ip("192.0.2.1")).unwrap();
    drop(b);
    assert!(t.try_acquire(ip("192.0.2.3")).is_ok());
}

#[test]
fn token_bucket_bursts_then_refills_at_the_rate() {
    let t0 = Instant::now();
    let mut b = TokenBucket::full(4.0, t0);
    for _ in 0..4 {
        assert!(b.try_take(2.0, 4.0, t0));
    }
    assert!(!b.try_take(2.0, 4.0, t0));
    assert!(!b.try_take(2.0, 4.0, t0 + Duration::from_millis(400)));
    assert!(
        b.try_take(2.0, 4.0, t0 + Duration::from_millis(600)),
        "a token after 1/rate"
    );
    assert!(!b.try_take(2.0, 4.0, t0 + Duration::from_millis(600)));
    assert!(!b.is_full_at(2.0, 4.0, t0 + Duration::from_millis(1500)));
    assert!(b.is_full_at(2.0, 4.0, t0 + Duration::from_secs(60)));
    let later = t0 + Duration::from_secs(60);
    for _ in 0..4 {
        assert!(b.try_take(2.0, 4.0, later), "refill is capped at the burst");
    }
    assert!(!b.try_take(2.0, 4.0, later));
}

#[test]
fn subscribe_limiter_is_per_address_with_a_burst_of_twice_the_rate() {
    let l = SubscribeLimiter::new(3, 100);
    let now = Instant::now();
    let a = ip("192.0.2.1");
    for _ in 0..6 {
        assert_eq!(l.check(a, now), SubscribeDecision::Allowed);
    }
    assert_eq!(l.check(a, now), SubscribeDecision::OverRate);
    assert_eq!(l.check(ip("192.0.2.2"), now), SubscribeDecision::Allowed);
    assert_eq!(
        l.check(a, now + Duration::from_millis(334)),
        SubscribeDecision::Allowed
    );
    assert_eq!(
        l.check(a, now + Duration::from_millis(334)),
        SubscribeDecision::OverRate
    );
}

#[test]
fn subscribe_limiter_sweeps_full_buckets_when_the_table_is_full() {
    let l = SubscribeLimiter::new(1, 2);
    let t0 = Instant::now();
    assert_eq!(l.check(ip("192.0.2.1"), t0), SubscribeDecision::Allowed);
    assert_eq!(l.check(ip("192.0.2.2"), t0), SubscribeDecision::Allowed);
    assert_eq!(l.check(ip("192.0.2.3"), t0), SubscribeDecision::TableFull);
    // Within the refill period (burst / rate = 2 s) no second sweep is tried.
    assert_eq!(
        l.check(ip("192.0.2.3"), t0 + Duration::from_millis(1500)),
        SubscribeDecision::TableFull
    );
    // After it, both old buckets are full again and carry nothing: swept.
    let t1 = t0 + Duration::from_secs(3);
    assert_eq!(l.check(ip("192.0.2.3"), t1), SubscribeDecision::Allowed);
    assert_eq!(l.addresses(), 1);
}

#[test]
fn ipv6_clients_are_limited_by_their_64_prefix() {
    assert_eq!(
        address_key(ip("2001:db8:1:2:aaaa::1")),
        ip("2001:db8:1:2::")
    );
    assert_eq!(address_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
    let table = AddressTable::new(1, 10);
    let _first = table.try_acquire(ip("2001:db8:1:2::1")).unwrap();
    assert_eq!(
        table.try_acquire(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
        AddressRefused::OverLimit,
        "another address of the same /64 shares the cap"
    );
    assert!(table.try_acquire(ip("2001:db8:1:3::1")).is_ok());
}
