//! Crash dumps found outside the write path: kernel core dumps, which the kernel writes
//! with no write syscall. Whoever scans one — the `core-handler` (core_pattern pipe) or
//! the daemon itself (a file core_pattern, after the dumping exit) — describes what it
//! found in a `DumpReport`: fingerprints and previews only, never plaintext, so a report
//! may cross the control socket. The daemon turns it into `crash_dump` findings.
use serde::{Deserialize, Serialize};

/// Reports waiting for the pipeline (the control socket and the core scanner push, the
/// pipeline worker takes them on its tick). Bounded: a crash loop must not grow it.
pub const INBOX_MAX: usize = 256;

pub type Inbox = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<DumpReport>>>;

/// One scanned dump.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DumpReport {
    /// What it is: `core`.
    pub kind: String,
    /// How it was seen: `pipe` (the core-handler) or `file` (a file core_pattern).
    pub how: String,
    /// The crashed process (pid as the host sees it), its thread that dumped, and what
    /// it was.
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    #[serde(default)]
    pub ppid: u32,
    pub uid: u32,
    #[serde(default)]
    pub comm: String,
    #[serde(default)]
    pub exe: String,
    /// Its cgroup path (v2), when it could be read while it was dumping.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The signal that made it dump.
    #[serde(default)]
    pub signal: i32,
    /// Where the dump is kept: a file path, or `|handler …` when it was passed on to
    /// another handler; None when nothing kept it.
    #[serde(default)]
    pub path: Option<String>,
    /// Bytes scanned.
    #[serde(default)]
    pub bytes: u64,
    /// Problems on the way (the previous handler stalled, the dump was cut…), one
    /// sentence each.
    #[serde(default)]
    pub problems: Vec<String>,
    #[serde(default)]
    pub hits: Vec<DumpHit>,
}

/// One credential in a dump.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DumpHit {
    /// The rule, or `frozen` for a frozen credential (as in every finding).
    pub rule: String,
    pub fingerprint: String,
    pub redacted: String,
    /// Byte offset of the credential in the dump.
    pub offset: u64,
}

/// Findings one report carries at most (the control socket refuses more).
pub const HITS_MAX: usize = 4096;

/// Appends stream findings as hits, up to `HITS_MAX`.
pub fn add_hits(hits: &mut Vec<DumpHit>, found: Vec<crate::detect::stream::StreamFinding>) {
    let room = HITS_MAX.saturating_sub(hits.len());
    hits.extend(found.into_iter().take(room).map(|f| DumpHit {
        rule: f.finding.rule,
        fingerprint: f.finding.fingerprint,
        redacted: f.finding.redacted,
        offset: f.offset,
    }));
}

/// Queues `r` for the pipeline; false when the inbox is full (the caller counts it).
pub fn push(inbox: &Inbox, r: DumpReport) -> bool {
    let Ok(mut q) = inbox.lock() else {
        return false;
    };
    if q.len() >= INBOX_MAX {
        return false;
    }
    q.push_back(r);
    true
}
