//! TLS blind spots: programs that connect out with a TLS stack the uprobes cannot read
//! (Go's `crypto/tls`, Java's JSSE, GnuTLS, NSS). Checked once per executable at its first
//! inet connect; each is listed by `leakwatch status` (`tls_blind`), so the operator knows
//! which sends would go unseen.
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::Pipeline;
use crate::events::ConnectEvent;

/// Programs listed at most (the oldest sighting goes first).
const MAX: usize = 256;

#[derive(Clone, Debug, Serialize)]
pub struct Blind {
    /// Why its TLS is not seen: `go`, `java`, `gnutls`, `nss`.
    pub reason: &'static str,
    pub pid: u32,
    pub comm: String,
    pub remote: String,
    /// Milliseconds since the epoch of the latest connect.
    pub last_ms: u64,
}

pub type BlindList = Arc<Mutex<BTreeMap<String, Blind>>>;

/// Executables already checked: their reason, or None when their TLS is visible or they
/// show no TLS stack.
#[derive(Default)]
pub struct Checked(HashMap<String, Option<&'static str>>);

pub(super) fn on_connect(p: &mut Pipeline, c: &ConnectEvent) {
    use leakwatch_common::{AF_INET, AF_INET6};
    if !matches!(c.peer.family, AF_INET | AF_INET6) {
        return;
    }
    let who = p.procs.quick(&c.task);
    if who.exe.is_empty() {
        return;
    }
    let reason = match p.blind_checked.0.get(&who.exe) {
        Some(r) => *r,
        None => {
            let r = reason(c.task.tgid, &who.exe, &p.tls.visible());
            if p.blind_checked.0.len() >= 65_536 {
                p.blind_checked.0.clear();
            }
            p.blind_checked.0.insert(who.exe.clone(), r);
            r
        }
    };
    let Some(reason) = reason else { return };
    let Ok(mut list) = p.shared.tls_blind.lock() else {
        return;
    };
    if list.len() >= MAX && !list.contains_key(&who.exe) {
        if let Some(oldest) = list
            .iter()
            .min_by_key(|(_, b)| b.last_ms)
            .map(|(k, _)| k.clone())
        {
            list.remove(&oldest);
        }
    }
    list.insert(
        who.exe.clone(),
        Blind {
            reason,
            pid: c.task.tgid,
            comm: who.comm.clone(),
            remote: crate::events::format_peer(&c.peer).unwrap_or_default(),
            last_ms: crate::actions::now_ms() as u64,
        },
    );
    p.metrics.tls_blind.set(list.len() as i64);
}

/// Why `exe` (running as `tgid`) does TLS the probes cannot see, if it does.
fn reason(tgid: u32, exe: &str, visible: &[String]) -> Option<&'static str> {
    if visible.iter().any(|v| v == exe) {
        return None;
    }
    let maps = std::fs::read_to_string(format!("/proc/{tgid}/maps")).unwrap_or_default();
    let mapped = |name: &str| maps.lines().any(|l| l.contains(name));
    if visible.iter().any(|v| mapped(v)) {
        return None;
    }
    let base = exe.rsplit('/').next().unwrap_or(exe);
    if base == "java" || mapped("/libjvm.so") {
        Some("java")
    } else if mapped("libgnutls.so") {
        Some("gnutls")
    } else if mapped("libnss3.so") {
        Some("nss")
    } else if is_go(exe) {
        Some("go")
    } else {
        None
    }
}

/// A Go executable carries a `.go.buildinfo` section.
fn is_go(exe: &str) -> bool {
    use object::{read::ReadCache, Object};
    let Ok(f) = std::fs::File::open(exe) else {
        return false;
    };
    let cache = ReadCache::new(f);
    object::File::parse(&cache).is_ok_and(|o| o.section_by_name(".go.buildinfo").is_some())
}
