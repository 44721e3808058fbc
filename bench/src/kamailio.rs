//! The Kamailio 5.6 presence anchor (`shared/anchors/kamailio`) run side by side with
//! conflist: start and stop it through the anchor's `start.sh` / `stop.sh`, read the memory
//! and CPU of all its processes, and trigger a fan-out with one presence PUBLISH.
//!
//! The anchor directory comes from `CONFLIST_KAMAILIO_ANCHOR`, by default
//! `<workspace>/../shared/anchors/kamailio`. `start.sh` apt-get installs Kamailio (Debian 12:
//! 5.6.3) when it is missing, which needs root.
//!
//! # N watchers of one presentity
//!
//! Kamailio's presence module takes the presentity from the **Request-URI** of the initial
//! SUBSCRIBE (and of the PUBLISH), reduced to `user@host`: `sip:fan@127.0.0.1`,
//! `sip:fan@127.0.0.1:5072` and `sip:fan@127.0.0.1;transport=ws` are one presentity. The
//! watcher is the From URI. Subscriptions are told apart by their dialog (Call-ID, From tag,
//! the To tag Kamailio adds), so N watchers of one presentity are N SUBSCRIBEs with
//! Request-URI and To = the presentity, and each its own Call-ID and From tag; the From users
//! may differ or all be the same (the anchor runs `force_active`, so no watcher is ever
//! asked to be authorized). [`ws_subscribe`] builds such a SUBSCRIBE:
//!
//! ```text
//! SUBSCRIBE sip:fan@127.0.0.1 SIP/2.0
//! Via: SIP/2.0/WS bench.invalid;branch=z9hG4bK<call-id>-1
//! Max-Forwards: 70
//! To: <sip:fan@127.0.0.1>
//! From: <sip:w17@127.0.0.1>;tag=<tag>
//! Call-ID: <call-id>
//! CSeq: 1 SUBSCRIBE
//! Contact: <sip:w17@bench.invalid;transport=ws>
//! Event: presence
//! Accept: application/pidf+xml
//! Expires: 600
//! Content-Length: 0
//! ```
//!
//! over `ws://127.0.0.1:<ws_port>` with subprotocol `sip`. The anchor rewrites the Contact of
//! a WebSocket request to its source address (`fix_nated_contact`), so an `.invalid` Contact
//! is fine: NOTIFYs come back over the same connection. Kamailio answers 200 (not 202) and
//! sends the first NOTIFY at once, a dummy PIDF document (`force_dummy_presence`) while
//! nothing is published; that NOTIFY may overtake the 200 on the connection. Every NOTIFY
//! must be answered (200), or Kamailio drops the watcher after Timer F.
//!
//! Then [`Kamailio::publish`] sends one PUBLISH for the presentity, and every watcher gets one
//! NOTIFY whose PIDF `<note>` is `round <round>` (to tell the rounds apart). The first
//! PUBLISH of a presentity creates a publication; later ones replace its document
//! (`SIP-If-Match` with the kept `SIP-ETag`). [`Kamailio::publish_with`] leaves the etag to
//! the caller: a PUBLISH without one adds one more publication of the presentity (kept an
//! hour, `Expires: 3600`); presence_xml merges all of them into each NOTIFY, one tuple per
//! tuple id, and with the same id `t1` the NOTIFY kept the *older* publication's note (seen
//! with the smoke example): the watchers still get a NOTIFY, but not the new content.
//!
//! # Memory
//!
//! Kamailio is one main process and its forked children (14 with the anchor's defaults: 2 UDP
//! workers, 4 TCP/WS workers, the TCP main process, timers, ctl, WebSocket timers). All of
//! them share one anonymous shared mapping of `-m` MB (4000 MB by default) created before
//! the fork, where subscriptions, transactions and connections live; each also has `-M` MB
//! of private ("pkg") memory. See [`Kamailio::pss_bytes`] for how that is counted, and
//! [`Kamailio::shm_used`] for Kamailio's own count.

#![warn(clippy::unwrap_used, clippy::expect_used)]

use crate::procstat;
use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::UdpSocket;
use tokio::process::Command;

/// Environment variable naming the anchor directory.
pub const ANCHOR_ENV: &str = "CONFLIST_KAMAILIO_ANCHOR";
/// The anchor directory when [`ANCHOR_ENV`] is unset.
pub const DEFAULT_ANCHOR: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/anchors/kamailio");
/// `start.sh` may apt-get install Kamailio first; then it waits at most 20 s for the ports.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// `stop.sh` SIGKILLs after 10 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// A PUBLISH without a final answer by then fails (as in the anchor's `publish.mjs`).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// RFC 3261 T1 and T2: PUBLISH retransmission over UDP (Timer E).
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// Expires of every PUBLISH (as in `publish.mjs`).
const PUBLISH_EXPIRES: u32 = 3600;

/// A running anchor Kamailio, started by [`Kamailio::start`]. Stop it with
/// [`Kamailio::stop`]; dropping it without stopping runs `stop.sh` synchronously (blocking up
/// to 10 s), so no Kamailio outlives the bench. The fields are for reading.
#[derive(Debug)]
pub struct Kamailio {
    /// PID of Kamailio's main process (from the pid file).
    pub pid: u32,
    /// Listen address (`KAM_LISTEN`, 127.0.0.1 unless given in `extra_env`).
    pub listen: IpAddr,
    /// SIP over UDP and TCP.
    pub sip_port: u16,
    /// SIP over WebSocket (`ws://listen:ws_port`, subprotocol `sip`).
    pub ws_port: u16,
    /// Runtime directory: db_text copy, `ctl.sock`, `kamailio.log`.
    pub rundir: PathBuf,
    /// The pid file `stop.sh` reads.
    pub pidfile: PathBuf,
    anchor: PathBuf,
    /// Presentity URI → SIP-ETag of its publication, for [`Kamailio::publish`].
    etags: Mutex<HashMap<String, String>>,
    stopped: bool,
}

/// The answer to one [`Kamailio::publish_with`].
#[derive(Debug, Clone)]
pub struct Published {
    /// When the PUBLISH first left our socket (just before the send); the anchor's README
    /// figures start the fan-out clock here (`publish.mjs` `sent_at_ms`).
    pub sent_at: Instant,
    /// The same moment on the wall clock, to compare with other processes' timestamps.
    pub sent_at_wall: SystemTime,
    /// When the final answer was read off the socket (about 1 ms after `sent_at` on
    /// an idle loopback). Kamailio sends the 200 first and then, in the same
    /// worker, the NOTIFYs, but this task may be scheduled later than the readers that stamp
    /// the NOTIFYs: the first NOTIFYs of a round were seen stamped up to 0.6 ms *before* it.
    pub answered_at: Instant,
    /// The same moment on the wall clock.
    pub answered_at_wall: SystemTime,
    /// The final status (always 2xx: anything else is an error).
    pub status: u16,
    /// `SIP-ETag` of the publication: pass it to the next PUBLISH to replace the document.
    pub etag: Option<String>,
    /// Retransmissions before the answer came (0 on an idle loopback).
    pub retransmissions: u32,
}

impl Kamailio {
    /// Runs the anchor's `start.sh <dir>/kam.pid` with `KAM_SIP_PORT` / `KAM_WS_PORT` and
    /// `extra_env` (e.g. `("KAM_CHILDREN", "4")`, `("KAM_DEBUG", "2")`; see the anchor's
    /// README), and returns once UDP, TCP and WebSocket answer. The runtime directory is
    /// `<dir>/kamailio-anchor.run` unless `extra_env` sets `KAM_RUNDIR`. Fails if a Kamailio of
    /// that pid file still runs.
    pub async fn start(
        dir: &Path,
        sip_port: u16,
        ws_port: u16,
        extra_env: &[(&str, &str)],
    ) -> Result<Kamailio> {
        let anchor = anchor_dir();
        let script = anchor.join("start.sh");
        if !script.exists() {
            bail!(
                "{} not found (set {ANCHOR_ENV} to the anchor directory)",
                script.display()
            );
        }
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("create {}", dir.display()))?;
        let dir = std::path::absolute(dir).context("absolute run directory")?;
        let pidfile = dir.join("kam.pid");
        if let Some(old) = read_pid(&pidfile)
            && is_kamailio(old)
        {
            bail!(
                "Kamailio {old} of {} still runs; stop it first",
                pidfile.display()
            );
        }
        let env = |name: &str| extra_env.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let rundir =
            env("KAM_RUNDIR").map_or_else(|| dir.join("kamailio-anchor.run"), PathBuf::from);
        let listen: IpAddr = match env("KAM_LISTEN") {
            Some(l) => l.parse().with_context(|| format!("KAM_LISTEN {l:?}"))?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };

        let mut cmd = Command::new(&script);
        cmd.arg(&pidfile)
            .env("KAM_SIP_PORT", sip_port.to_string())
            .env("KAM_WS_PORT", ws_port.to_string())
            .envs(extra_env.iter().copied())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(START_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("{} did not finish in {START_TIMEOUT:?}", script.display()))?
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let pid = read_pid(&pidfile)
            .with_context(|| format!("start.sh succeeded but {} is empty", pidfile.display()))?;
        Ok(Kamailio {
            pid,
            listen,
            sip_port,
            ws_port,
            rundir,
            pidfile,
            anchor,
            etags: Mutex::new(HashMap::new()),
            stopped: false,
        })
    }

    /// Runs `stop.sh` (SIGTERM to the main process, which ends its children; SIGKILL after
    /// 10 s) and waits until none of the processes is left; a failure is printed to stderr
    /// ([`Kamailio::try_stop`] returns it).
    pub async fn stop(self) {
        if let Err(e) = self.try_stop().await {
            eprintln!("warning: stopping Kamailio: {e:#}");
        }
    }

    /// [`Kamailio::stop`], returning what went wrong.
    pub async fn try_stop(mut self) -> Result<()> {
        let pids = self.pids();
        self.stopped = true;
        let script = self.anchor.join("stop.sh");
        let mut cmd = Command::new(&script);
        cmd.arg(&self.pidfile)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(STOP_TIMEOUT, cmd.output())
            .await
            .with_context(|| format!("{} did not finish in {STOP_TIMEOUT:?}", script.display()))?
            .with_context(|| format!("run {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // stop.sh returns once the main process is gone; children may take a moment more.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| is_kamailio(p)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Kamailio processes {left:?} still run after stop.sh");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `presentity` if it is a URI, else `sip:<presentity>@<listen>`.
    pub fn presentity_uri(&self, presentity: &str) -> String {
        if presentity.contains(':') {
            presentity.to_owned()
        } else {
            format!("sip:{presentity}@{}", self.listen)
        }
    }

    fn lock_etags(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.etags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIP over UDP/TCP: `listen:sip_port`.
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen, self.sip_port)
    }

    /// `ws://listen:ws_port` (subprotocol `sip`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", SocketAddr::new(self.listen, self.ws_port))
    }

    /// Kamailio's stdout/stderr (`KAM_DEBUG` sets how much goes there).
    pub fn log_path(&self) -> PathBuf {
        self.rundir.join("kamailio.log")
    }

    /// The main process and all its descendants, found through the parent PIDs in
    /// `/proc/<pid>/stat` (Kamailio does not get a process group of its own: it keeps the one
    /// of whoever ran `start.sh`). Sorted, the main process first.
    pub fn pids(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(stat) = procstat::stat(pid) {
                    children.entry(stat.ppid).or_default().push(pid);
                }
            }
        }
        if !is_kamailio(self.pid) {
            return Vec::new();
        }
        let mut found = vec![self.pid];
        let mut i = 0;
        while let Some(&pid) = found.get(i) {
            if let Some(kids) = children.get(&pid) {
                found.extend(kids);
            }
            i += 1;
        }
        found[1..].sort_unstable();
        found
    }

    /// Sum of `Pss:` in `/proc/<pid>/smaps_rollup` over [`Kamailio::pids`], in bytes.
    ///
    /// PSS (proportional set size) charges every resident page to the processes that map it
    /// in equal shares: a private page counts fully in its process, a page mapped by k
    /// processes counts 1/k in each. Kamailio's shared memory is one mapping inherited by all
    /// its processes, so each *touched* shm page is charged 1/k to each of the k Kamailio
    /// processes and the sum over all of them counts it exactly once; the untouched rest of
    /// the `-m` mapping (4000 MB by default) counts nothing. So the sum is: touched shm pages
    /// once + every process's touched private memory (pkg heap, stacks, data) + its share of
    /// the binary and libraries (shared with other programs too, so only a fraction). It is
    /// the figure to compare with the PSS sum of conflist's processes. It does not shrink
    /// when Kamailio frees shm (the pages stay touched), unlike [`Kamailio::shm_used`].
    /// Processes that vanish while being read count 0, and so does all of it unless this
    /// process may read Kamailio's smaps (same user, or root: start.sh runs it as the caller).
    pub fn pss_bytes(&self) -> u64 {
        procstat::total_pss(&self.pids())
    }

    /// CPU time (user + system) of [`Kamailio::pids`] so far, in seconds: fields `utime` and
    /// `stime` of `/proc/<pid>/stat`, in clock ticks (`AT_CLKTCK` of this process's auxiliary
    /// vector, i.e. `sysconf(_SC_CLK_TCK)`, 100 on Linux). Take the difference of two calls
    /// around a load; resolution is one tick per process.
    pub fn cpu_seconds(&self) -> f64 {
        procstat::total_cpu(&self.pids())
    }

    /// Kamailio's own count of shared memory in use, `real_used` of
    /// `kamcmd -s unix:<rundir>/ctl.sock core.shmmem` (allocations plus the allocator's
    /// fragment overhead), in bytes; `None` when kamcmd fails. It rises and falls with
    /// allocations (about 10 MB after start), whereas the shm part of
    /// [`Kamailio::pss_bytes`] only grows. kamcmd prints these as 32-bit signed integers, so
    /// values above 2 GiB come out negative; they are read back modulo 2^32 (exact up to the
    /// 4000 MB maximum of `-m`).
    pub async fn shm_used(&self) -> Option<u64> {
        let sock = format!("unix:{}", self.rundir.join("ctl.sock").display());
        let mut cmd = Command::new("kamcmd");
        cmd.args(["-s", &sock, "core.shmmem"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(Duration::from_secs(5), cmd.output())
            .await
            .ok()?
            .ok()?;
        if !out.status.success() {
            return None;
        }
        shmmem_field(&String::from_utf8_lossy(&out.stdout), "real_used")
    }

    /// One fan-out round: a PUBLISH for `presentity` (a URI, or a user part: `"fan"` is
    /// `sip:fan@<listen>`) whose `<note>` is `round <round>`, replacing the document of this
    /// presentity's previous [`Kamailio::publish`] (its etag is kept here). Returns, once the
    /// 200 is in, the wall-clock time **just before the PUBLISH was sent**
    /// ([`Published::sent_at_wall`]): start the fan-out clock there, as the anchor's README
    /// figures do. Every NOTIFY of the round is stamped after it, also in another process;
    /// the moment the 200 is read is not safe for that (see [`Published::answered_at`]).
    /// [`Kamailio::publish_with`] has the rest.
    pub async fn publish(&self, presentity: &str, round: usize) -> Result<SystemTime> {
        let uri = self.presentity_uri(presentity);
        let etag = self.lock_etags().get(&uri).cloned();
        let note = format!("round {round}");
        let published = match self.publish_with(&uri, &note, etag.as_deref()).await {
            // The publication expired or was dropped: start a new one.
            Err(_) if etag.is_some() => self.publish_with(&uri, &note, None).await?,
            r => r?,
        };
        if let Some(e) = &published.etag {
            self.lock_etags().insert(uri, e.clone());
        }
        Ok(published.sent_at_wall)
    }

    /// Sends one presence PUBLISH for `presentity` (a full URI, e.g. `sip:fan@127.0.0.1`)
    /// over UDP, the PIDF of the anchor's `publish.mjs` with `note` as `<note>` (an `open`
    /// tuple `t1`), and waits for the final answer (retransmitting as Timer E does; at most
    /// 5 s). `etag`: `None` creates a publication, `Some` (a previous [`Published::etag`])
    /// replaces that one's document (`SIP-If-Match`). Every watcher of the presentity gets one
    /// NOTIFY. A non-2xx answer (e.g. 412 for an unknown etag) is an error.
    pub async fn publish_with(
        &self,
        presentity: &str,
        note: &str,
        etag: Option<&str>,
    ) -> Result<Published> {
        let sock = UdpSocket::bind(SocketAddr::new(self.listen, 0))
            .await
            .context("bind the PUBLISH socket")?;
        let local = sock.local_addr()?;
        let id = format!("{:016x}", rand::random::<u64>());
        let call_id = format!("pub-{id}@{}", local.ip());
        let request = publish_request(presentity, note, etag, local, &id, &call_id);
        let target = self.sip_addr();

        let sent_at_wall = SystemTime::now();
        let sent_at = Instant::now();
        sock.send_to(request.as_bytes(), target)
            .await
            .with_context(|| format!("send PUBLISH to {target}"))?;
        let deadline = sent_at + PUBLISH_TIMEOUT;
        let mut interval = T1;
        let mut next_retransmit = sent_at + interval;
        let mut retransmissions = 0;
        let mut buf = vec![0u8; 65_536];
        loop {
            let wake = next_retransmit.min(deadline);
            let received = tokio::time::timeout_at(wake.into(), sock.recv_from(&mut buf)).await;
            let now = Instant::now();
            let (len, _) = match received {
                Ok(r) => r.context("receive the PUBLISH answer")?,
                Err(_) if now >= deadline => {
                    bail!("no final answer to PUBLISH {presentity} within {PUBLISH_TIMEOUT:?}")
                }
                Err(_) => {
                    sock.send_to(request.as_bytes(), target).await?;
                    retransmissions += 1;
                    interval = (interval * 2).min(T2);
                    next_retransmit = now + interval;
                    continue;
                }
            };
            let Ok(sip::Message::Response(resp)) = sip::parse_message(&buf[..len]) else {
                continue;
            };
            if resp.headers.get(&sip::HeaderName::CALL_ID) != Some(call_id.as_str()) {
                continue;
            }
            let status = resp.status.as_u16();
            if status < 200 {
                // A provisional answer: stop retransmitting (Timer E goes to T2), keep waiting.
                next_retransmit = now + T2;
                continue;
            }
            if !(200..300).contains(&status) {
                bail!(
                    "PUBLISH {presentity} answered {status} {}",
                    resp.reason.trim()
                );
            }
            return Ok(Published {
                sent_at,
                sent_at_wall,
                answered_at: now,
                answered_at_wall: SystemTime::now(),
                status,
                etag: resp
                    .headers
                    .get(&sip::HeaderName::new("SIP-ETag"))
                    .map(|e| e.trim().to_owned()),
                retransmissions,
            });
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Blocking, but only on an error path: a bench that bailed out must not leave
        // Kamailio (and its ports and 14 processes) behind.
        let _ = std::process::Command::new(self.anchor.join("stop.sh"))
            .arg(&self.pidfile)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// An initial presence SUBSCRIBE over WebSocket from `watcher` (a SIP URI, e.g.
/// `sip:w17@127.0.0.1`) for `presentity`, in dialog `call_id` / `from_tag` (both unique per
/// subscription). Send it over a WebSocket connection (subprotocol `sip`) to
/// [`Kamailio::ws_url`]. See the module documentation.
pub fn ws_subscribe(
    presentity: &str,
    watcher: &str,
    call_id: &str,
    from_tag: &str,
    expires: u32,
) -> String {
    let user = watcher
        .strip_prefix("sip:")
        .and_then(|u| u.split('@').next())
        .filter(|u| !u.is_empty())
        .unwrap_or("watcher");
    format!(
        "SUBSCRIBE {presentity} SIP/2.0\r\n\
         Via: SIP/2.0/WS bench.invalid;branch=z9hG4bK{call_id}-1\r\n\
         Max-Forwards: 70\r\n\
         To: <{presentity}>\r\n\
         From: <{watcher}>;tag={from_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:{user}@bench.invalid;transport=ws>\r\n\
         Event: presence\r\n\
         Accept: application/pidf+xml\r\n\
         Expires: {expires}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The PUBLISH of `publish.mjs`, with a `SIP-If-Match` when `etag` is given.
fn publish_request(
    presentity: &str,
    note: &str,
    etag: Option<&str>,
    local: SocketAddr,
    id: &str,
    call_id: &str,
) -> String {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"{}\">\r\n\
         <tuple id=\"t1\"><status><basic>open</basic></status><note>{}</note></tuple>\r\n\
         </presence>\r\n",
        xml_escape(presentity),
        xml_escape(note)
    );
    let mut msg = format!(
        "PUBLISH {presentity} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <{presentity}>;tag={id}\r\n\
         To: <{presentity}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 PUBLISH\r\n\
         Event: presence\r\n\
         Expires: {PUBLISH_EXPIRES}\r\n"
    );
    if let Some(etag) = etag {
        let _ = write!(msg, "SIP-If-Match: {etag}\r\n");
    }
    let _ = write!(
        msg,
        "Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    msg
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn anchor_dir() -> PathBuf {
    std::env::var_os(ANCHOR_ENV).map_or_else(|| PathBuf::from(DEFAULT_ANCHOR), PathBuf::from)
}

fn read_pid(pidfile: &Path) -> Option<u32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

fn is_kamailio(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "kamailio")
}

/// `name: value` of kamcmd's `core.shmmem` output, read modulo 2^32 (see `shm_used`).
fn shmmem_field(out: &str, name: &str) -> Option<u64> {
    out.lines().find_map(|line| {
        let value: i64 = line
            .trim()
            .strip_prefix(name)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()?;
        Some(if value < 0 { value + (1 << 32) } else { value } as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_shmmem() {
        let shm = "{\n\ttotal: -100663296\n\tfree: -111211048\n\tused: 8600240\n\treal_used: 10547752\n}\n";
        assert_eq!(shmmem_field(shm, "real_used"), Some(10_547_752));
        assert_eq!(shmmem_field(shm, "total"), Some(4000 * 1024 * 1024));
        assert_eq!(shmmem_field(shm, "used"), Some(8_600_240));
    }

    #[test]
    fn builds_publish_and_subscribe() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let msg = publish_request(
            "sip:fan@127.0.0.1",
            "a<b",
            Some("a.1"),
            local,
            "abc",
            "pub-abc@127.0.0.1",
        );
        let parsed = sip::parse_message(msg.as_bytes()).unwrap();
        let sip::Message::Request(r) = parsed else {
            panic!("not a request")
        };
        assert_eq!(r.method, sip::Method::Publish);
        assert_eq!(
            r.headers.get(&sip::HeaderName::new("SIP-If-Match")),
            Some("a.1")
        );
        assert!(String::from_utf8_lossy(&r.body).contains("<note>a&lt;b</note>"));
        let sub = ws_subscribe("sip:fan@127.0.0.1", "sip:w1@127.0.0.1", "c1", "t1", 600);
        let sip::Message::Request(r) = sip::parse_message(sub.as_bytes()).unwrap() else {
            panic!("not a request")
        };
        assert_eq!(r.method, sip::Method::Subscribe);
        assert_eq!(r.uri.to_string(), "sip:fan@127.0.0.1");
    }
}
