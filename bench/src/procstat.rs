//! What a process costs, read from `/proc`: proportional set size (PSS: each page divided
//! by the number of processes sharing it, so summing PSS over a group counts every page
//! once) and CPU time (user + system).

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// PSS of `pid` in bytes (`Pss:` of `/proc/<pid>/smaps_rollup`).
pub fn pss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no Pss line in {path}"))?;
    Ok(kib * 1024)
}

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces; fields after its ')' are plain.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<f64> {
        let v: u64 = fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {} of {path}", i + 3))?;
        Ok(v as f64 / TICKS_PER_SECOND)
    };
    Ok(tick(11)? + tick(12)?)
}

/// Sum of [`pss_bytes`] over `pids` (processes that are gone count 0).
pub fn total_pss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| pss_bytes(*p).ok()).sum()
}

/// Sum of [`cpu_seconds`] over `pids` (processes that are gone count 0).
pub fn total_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p).ok()).sum()
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
}
