//! What a process costs, read from `/proc`: proportional set size (PSS: each page divided
//! by the number of processes sharing it, so summing PSS over a group counts every page
//! once), CPU time (user + system) and the parent, for finding a process's descendants.

use std::sync::OnceLock;

/// `AT_CLKTCK` in the ELF auxiliary vector: clock ticks per second of `/proc/<pid>/stat`.
const AT_CLKTCK: u64 = 17;

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The parent process.
    pub ppid: u32,
    /// User time, clock ticks.
    pub utime: u64,
    /// System time, clock ticks.
    pub stime: u64,
}

/// `/proc/<pid>/stat` of `pid`, if it is still there.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `pid (comm) state ppid … utime stime …`; comm may hold spaces and parentheses, so the
/// fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state): field n is fields[n - 3].
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// PSS of `pid` in bytes (`Pss:` of `/proc/<pid>/smaps_rollup`), if it is readable.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss_kb(&rollup).map(|kb| kb * 1024)
}

/// `Pss:   1234 kB` of smaps_rollup (not `Pss_Anon:` and friends).
fn parse_pss_kb(rollup: &str) -> Option<u64> {
    rollup.lines().find_map(|line| {
        line.strip_prefix("Pss:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = stat(pid)?;
    Some((s.utime + s.stime) as f64 / clock_ticks() as f64)
}

/// Sum of [`pss_bytes`] over `pids` (processes that are gone count 0).
pub fn total_pss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| pss_bytes(*p)).sum()
}

/// Sum of [`cpu_seconds`] over `pids` (processes that are gone count 0).
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// Clock ticks per second of `/proc/<pid>/stat` times: `AT_CLKTCK` from
/// `/proc/self/auxv` (what `sysconf(_SC_CLK_TCK)` returns), else 100.
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| auxv_value(&auxv, AT_CLKTCK))
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// The value of `key` in an auxiliary vector: native-endian (key, value) word pairs.
fn auxv_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| -> Option<u64> {
        let bytes: [u8; WORD] = b.try_into().ok()?;
        Some(usize::from_ne_bytes(bytes) as u64)
    };
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        (word(&pair[..WORD])? == key)
            .then(|| word(&pair[WORD..]))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(pss_bytes(me).unwrap() > 0);
        assert!(cpu_seconds(me).unwrap() >= 0.0);
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let stat = "29940 (kam ail) io) S 1 29589 28590 0 -1 4194560 2130 0 0 0 7 12 0 0 20 0 1 0 182340 4392095744 1476 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                ppid: 1,
                utime: 7,
                stime: 12
            })
        );
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn parses_pss() {
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  5760 kB\nPss:  1234 kB\nPss_Anon:  99 kB\n";
        assert_eq!(parse_pss_kb(rollup), Some(1234));
    }

    #[test]
    fn reads_clock_ticks_from_auxv() {
        let mut auxv = Vec::new();
        for (k, v) in [(6usize, 4096usize), (17, 100), (0, 0)] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(100));
        assert_eq!(auxv_value(&auxv, 99), None);
        assert!(clock_ticks() > 0);
    }
}
