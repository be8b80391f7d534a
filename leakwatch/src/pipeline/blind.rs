//! TLS blind spots: programs that connect out with a TLS stack the uprobes cannot read
//! (Go's `crypto/tls`, Java's JSSE, GnuTLS, NSS, BoringSSL or OpenSSL linked in without
//! its names exported). Checked once per executable at its first
//! inet connect; each is listed by `leakwatch status` (`tls_blind`), so the operator knows
//! which sends would go unseen.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::Serialize;

use super::Pipeline;
use crate::{events::ConnectEvent, fastmap::FastMap};

/// Programs listed at most (the oldest sighting goes first).
const MAX: usize = 256;

#[derive(Clone, Debug, Serialize)]
pub struct Blind {
    /// Why its TLS is not seen: `go`, `java`, `gnutls`, `nss`, `boringssl`,
    /// `openssl-hidden` (linked in without exporting `SSL_write`).
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
pub struct Checked(FastMap<String, Option<&'static str>>);

pub(super) fn on_connect(p: &mut Pipeline, c: &ConnectEvent) {
    use leakwatch_common::{AF_INET, AF_INET6};
    if !matches!(c.peer.family, AF_INET | AF_INET6) {
        return;
    }
    // Only the image is needed to know the answer (a cgroup path and unit per connect
    // cost more than the rest of the connect's handling).
    let exe = p.procs.exe_shared(&c.task);
    if exe.is_empty() {
        return;
    }
    let reason = match p.blind_checked.0.get(&*exe) {
        Some(r) => *r,
        None => {
            let r = reason(c.task.tgid, &exe, &p.tls.visible());
            if p.blind_checked.0.len() >= 65_536 {
                p.blind_checked.0.clear();
            }
            p.blind_checked.0.insert(exe.to_string(), r);
            r
        }
    };
    let Some(reason) = reason else { return };
    let exe = exe.to_string();
    let Ok(mut list) = p.shared.tls_blind.lock() else {
        return;
    };
    if list.len() >= MAX && !list.contains_key(&exe) {
        if let Some(oldest) = list
            .iter()
            .min_by_key(|(_, b)| b.last_ms)
            .map(|(k, _)| k.clone())
        {
            list.remove(&oldest);
        }
    }
    list.insert(
        exe,
        Blind {
            reason,
            pid: c.task.tgid,
            comm: c.task.comm.to_string(),
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
        static_tls(exe)
    }
}

/// Executables read whole for a TLS library's marks at most this long (once each).
const READ_MAX: u64 = 256 << 20;

/// A TLS library linked into `exe` without exporting OpenSSL's names: BoringSSL (Chrome,
/// Electron, many static tools) or OpenSSL built in and hidden.
fn static_tls(exe: &str) -> Option<&'static str> {
    let f = std::fs::File::open(exe).ok()?;
    if f.metadata().ok()?.len() > READ_MAX {
        return None;
    }
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, READ_MAX), &mut data).ok()?;
    let has = |s: &[u8]| memchr::memmem::find(&data, s).is_some();
    if has(b"BoringSSL") {
        Some("boringssl")
    } else if has(b"OpenSSL 3.") || has(b"OpenSSL 1.1") || has(b"ssl3_write_bytes") {
        Some("openssl-hidden")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_in_tls_libraries_are_recognised() {
        let dir = std::env::temp_dir().join(format!("lw-blind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, body: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p.to_string_lossy().into_owned()
        };
        let boring = file("boring", b"\x7fELF....BoringSSL....");
        let hidden = file("hidden", b"\x7fELF....OpenSSL 3.0.19 27 Jan 2026....");
        let plain = file("plain", b"\x7fELF....nothing here....");
        assert_eq!(static_tls(&boring), Some("boringssl"));
        assert_eq!(static_tls(&hidden), Some("openssl-hidden"));
        assert_eq!(static_tls(&plain), None);
        assert!(!is_go("/bin/true"));
        // A binary the probes are on is visible, whatever it holds.
        assert_eq!(
            reason(std::process::id(), &boring, std::slice::from_ref(&boring)),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
