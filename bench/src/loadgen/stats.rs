//! What a process measured ([`Tally`], merged across child processes) and the JSON summary.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by every connection task of a process.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// NOTIFY requests read (retransmissions included).
    pub(crate) notifies: AtomicU64,
    /// NOTIFYs repeating a CSeq already seen on their dialog (UDP retransmissions).
    pub(crate) notify_retransmissions: AtomicU64,
    /// NOTIFYs whose Call-ID is none of ours (answered all the same).
    pub(crate) unknown_notifies: AtomicU64,
    /// Responses we sent (200 to NOTIFY, answers to other requests).
    pub(crate) responses_sent: AtomicU64,
    /// SUBSCRIBEs sent again over UDP (Timer E).
    pub(crate) subscribe_retransmissions: AtomicU64,
    /// Messages that did not scan as SIP.
    pub(crate) malformed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Everything one process measured; children send theirs to the parent, which merges them.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Tally {
    pub(crate) clients: u64,
    pub(crate) started: u64,
    pub(crate) established: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<String, u64>,
    pub(crate) notify_before_200: u64,
    pub(crate) connections: u64,
    /// Unix ns of the first and last SUBSCRIBE dispatched, and of the last opening outcome.
    pub(crate) first_sent_ns: Option<u64>,
    pub(crate) last_sent_ns: Option<u64>,
    pub(crate) last_opened_ns: Option<u64>,
    /// Per established client: SUBSCRIBE sent → first NOTIFY read, µs.
    pub(crate) first_notify_us: Vec<u32>,
    /// Per client with a 2xx: first SUBSCRIBE sent → 2xx read, µs.
    pub(crate) ok_us: Vec<u32>,
    pub(crate) notifies_received: u64,
    pub(crate) notify_retransmissions: u64,
    pub(crate) unknown_notifies: u64,
    pub(crate) responses_sent: u64,
    pub(crate) subscribe_retransmissions: u64,
    pub(crate) malformed: u64,
    pub(crate) refreshes_sent: u64,
    pub(crate) refreshes_ok: u64,
    pub(crate) refresh_failures: BTreeMap<String, u64>,
    /// Established subscriptions that ended before we ended them, by reason.
    pub(crate) lost: BTreeMap<String, u64>,
    pub(crate) unsubscribe: bool,
    pub(crate) unsubscribed: u64,
    pub(crate) unsubscribe_failures: BTreeMap<String, u64>,
    pub(crate) unsub_first_ns: Option<u64>,
    pub(crate) unsub_last_ns: Option<u64>,
    pub(crate) hold_seconds: f64,
    pub(crate) interrupted: bool,
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k).or_default() += v;
    }
}

fn min_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

pub(crate) fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

impl Tally {
    /// Copies the shared counters in.
    pub(crate) fn take_counters(&mut self, c: &Counters) {
        self.notifies_received = Counters::get(&c.notifies);
        self.notify_retransmissions = Counters::get(&c.notify_retransmissions);
        self.unknown_notifies = Counters::get(&c.unknown_notifies);
        self.responses_sent = Counters::get(&c.responses_sent);
        self.subscribe_retransmissions = Counters::get(&c.subscribe_retransmissions);
        self.malformed = Counters::get(&c.malformed);
    }

    /// Adds another process's tally.
    pub(crate) fn merge(&mut self, o: Tally) {
        self.clients += o.clients;
        self.started += o.started;
        self.established += o.established;
        self.failed += o.failed;
        merge_map(&mut self.failures, o.failures);
        self.notify_before_200 += o.notify_before_200;
        self.connections += o.connections;
        self.first_sent_ns = min_opt(self.first_sent_ns, o.first_sent_ns);
        self.last_sent_ns = self.last_sent_ns.max(o.last_sent_ns);
        self.last_opened_ns = self.last_opened_ns.max(o.last_opened_ns);
        self.first_notify_us.extend(o.first_notify_us);
        self.ok_us.extend(o.ok_us);
        self.notifies_received += o.notifies_received;
        self.notify_retransmissions += o.notify_retransmissions;
        self.unknown_notifies += o.unknown_notifies;
        self.responses_sent += o.responses_sent;
        self.subscribe_retransmissions += o.subscribe_retransmissions;
        self.malformed += o.malformed;
        self.refreshes_sent += o.refreshes_sent;
        self.refreshes_ok += o.refreshes_ok;
        merge_map(&mut self.refresh_failures, o.refresh_failures);
        merge_map(&mut self.lost, o.lost);
        self.unsubscribe |= o.unsubscribe;
        self.unsubscribed += o.unsubscribed;
        merge_map(&mut self.unsubscribe_failures, o.unsubscribe_failures);
        self.unsub_first_ns = min_opt(self.unsub_first_ns, o.unsub_first_ns);
        self.unsub_last_ns = self.unsub_last_ns.max(o.unsub_last_ns);
        self.hold_seconds = self.hold_seconds.max(o.hold_seconds);
        self.interrupted |= o.interrupted;
    }
}

/// Nearest-rank percentile `p` (0..=100) of sorted `v`.
pub(crate) fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// µs → ms, rounded to µs.
fn ms(us: Option<u32>) -> Value {
    us.map_or(Value::Null, |us| json!(f64::from(us) / 1000.0))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn span_s(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b?.saturating_sub(a?) as f64 / 1e9)
}

/// What the run description adds to the summary.
#[derive(Debug)]
pub(crate) struct RunInfo<'a> {
    pub(crate) target: &'a str,
    pub(crate) transport: &'a str,
    pub(crate) processes: u32,
    pub(crate) dialogs_per_connection: u32,
    pub(crate) rate: f64,
}

/// The `--out` JSON.
pub(crate) fn summary(t: &mut Tally, info: &RunInfo<'_>) -> Value {
    t.first_notify_us.sort_unstable();
    t.ok_us.sort_unstable();
    let f = &t.first_notify_us;
    let o = &t.ok_us;
    let opening = span_s(t.first_sent_ns, t.last_opened_ns);
    let sending = span_s(t.first_sent_ns, t.last_sent_ns);
    let achieved = match sending {
        Some(s) if s > 0.0 && t.started > 1 => Some((t.started - 1) as f64 / s),
        _ => None,
    };
    let established_rate = match opening {
        Some(s) if s > 0.0 => Some(t.established as f64 / s),
        _ => None,
    };
    let unsubscribe = t.unsubscribe.then(|| {
        json!({
            "ok": t.unsubscribed,
            "failed": t.unsubscribe_failures,
            "seconds": span_s(t.unsub_first_ns, t.unsub_last_ns).map(round3),
        })
    });
    json!({
        "target": info.target,
        "transport": info.transport,
        "clients": t.clients,
        "processes": info.processes,
        "connections": t.connections,
        "dialogs_per_connection": info.dialogs_per_connection,
        "rate": info.rate,
        "started": t.started,
        "established": t.established,
        "failed": t.failed,
        "failures": t.failures,
        "notify_before_200": t.notify_before_200,
        "opening_seconds": opening.map(round3),
        "achieved_rate": achieved.map(|r| (r * 10.0).round() / 10.0),
        "established_rate": established_rate.map(|r| (r * 10.0).round() / 10.0),
        "first_notify_ms": {
            "p50": ms(percentile(f, 50.0)),
            "p90": ms(percentile(f, 90.0)),
            "p99": ms(percentile(f, 99.0)),
            "max": ms(f.last().copied()),
        },
        "ok_ms": {
            "p50": ms(percentile(o, 50.0)),
            "p90": ms(percentile(o, 90.0)),
            "p99": ms(percentile(o, 99.0)),
            "max": ms(o.last().copied()),
        },
        "notifies_received": t.notifies_received,
        "responses_sent": t.responses_sent,
        "notify_retransmissions": t.notify_retransmissions,
        "unknown_notifies": t.unknown_notifies,
        "subscribe_retransmissions": t.subscribe_retransmissions,
        "malformed": t.malformed,
        "refreshes": {
            "sent": t.refreshes_sent,
            "ok": t.refreshes_ok,
            "failed": t.refresh_failures,
        },
        "lost": t.lost,
        "unsubscribe": unsubscribe,
        "hold_seconds": round3(t.hold_seconds),
        "interrupted": t.interrupted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 0.0), Some(7));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&[1, 2, 3], 50.0), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 50.0), Some(2));
    }

    #[test]
    fn merges_and_summarises() {
        let mut a = Tally {
            clients: 2,
            started: 2,
            established: 1,
            failed: 1,
            first_sent_ns: Some(1_000_000_000),
            last_sent_ns: Some(1_500_000_000),
            last_opened_ns: Some(2_000_000_000),
            first_notify_us: vec![3000],
            ok_us: vec![1000],
            ..Tally::default()
        };
        bump(&mut a.failures, "timeout");
        let mut b = Tally {
            clients: 2,
            started: 2,
            established: 2,
            first_sent_ns: Some(1_100_000_000),
            last_sent_ns: Some(2_000_000_000),
            last_opened_ns: Some(3_000_000_000),
            first_notify_us: vec![1000, 2000],
            ..Tally::default()
        };
        bump(&mut b.failures, "timeout");
        bump(&mut b.failures, "503");
        a.merge(b);
        let s = summary(
            &mut a,
            &RunInfo {
                target: "udp:x:1",
                transport: "udp",
                processes: 2,
                dialogs_per_connection: 1,
                rate: 3.0,
            },
        );
        assert_eq!(s["clients"], 4);
        assert_eq!(s["established"], 3);
        assert_eq!(s["failures"]["timeout"], 2);
        assert_eq!(s["failures"]["503"], 1);
        assert_eq!(s["opening_seconds"], 2.0);
        assert_eq!(s["achieved_rate"], 3.0);
        assert_eq!(s["first_notify_ms"]["p50"], 2.0);
        assert_eq!(s["first_notify_ms"]["max"], 3.0);
        assert_eq!(s["ok_ms"]["p99"], 1.0);
        assert_eq!(s["unsubscribe"], Value::Null);
    }
}
