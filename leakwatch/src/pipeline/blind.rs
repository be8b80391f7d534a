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

/// Executables checked or being checked (never `Known::New`), shared by the worker and the
/// check thread.
#[derive(Clone, Default)]
struct Verdicts(Arc<Mutex<FastMap<String, Known>>>);

/// Executables checked at most before the verdicts are forgotten (and checked again).
const CHECKED_MAX: usize = 65_536;
/// Checks waiting for the thread at most; an executable met by a full queue is checked at
/// a later connect.
const WAITING: usize = 64;

/// A check for the thread: the executable, and the connect that met it first.
struct Job {
    exe: String,
    sighting: Blind,
}

/// What the check knows of an executable when one of its processes connects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Known {
    Listed(&'static str),
    Clean,
    /// Queued for the thread, or on it.
    Pending,
    /// Never met: now marked as pending, for the caller to check.
    New,
}

/// The part of the check that reads the executable runs on its own thread (started at
/// the first inet connect that needs it): it reads up to 256 MB (~20 ms per 100 MB
/// here), and on the pipeline's worker that stalled detection of every other record.
#[derive(Default)]
pub struct Checked {
    verdicts: Verdicts,
    tx: Option<std::sync::mpsc::SyncSender<Job>>,
    /// The thread could not start, or ended: no file is checked.
    broken: bool,
}

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
    let sighting = |reason| Blind {
        reason,
        pid: c.task.tgid,
        comm: c.task.comm.to_string(),
        remote: crate::events::format_peer(&c.peer).unwrap_or_default(),
        last_ms: crate::actions::now_ms() as u64,
    };
    match p.blind_checked.verdicts.look(&exe) {
        Known::Listed(reason) => list(&p.shared.tls_blind, &p.metrics, &exe, sighting(reason)),
        // The process's maps are read here, at its connect: a short run is gone by the
        // time a queued check would read them.
        Known::New => match by_maps(c.task.tgid, &exe, &p.tls.visible()) {
            Maps::Verdict(verdict) => {
                if let Some(reason) = verdict {
                    list(&p.shared.tls_blind, &p.metrics, &exe, sighting(reason));
                }
                p.blind_checked.verdicts.settle(&exe, verdict);
            }
            // Gone already: a later connect of it checks it.
            Maps::Unread => p.blind_checked.verdicts.forget(&exe),
            Maps::File => {
                let job = Job {
                    exe: exe.to_string(),
                    sighting: sighting(""),
                };
                if !p.blind_checked.send(job, &p.shared.tls_blind, &p.metrics) {
                    // Not checked: a later connect of it tries again.
                    p.blind_checked.verdicts.forget(&exe);
                }
            }
        },
        Known::Clean | Known::Pending => {}
    }
}

impl Verdicts {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<String, Known>> {
        // Nothing panics under the lock; a poisoned one still holds whole entries.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What is known of `exe`; one never met is marked as pending.
    fn look(&self, exe: &str) -> Known {
        let mut v = self.lock();
        if let Some(k) = v.get(exe) {
            return *k;
        }
        if v.len() >= CHECKED_MAX {
            v.clear();
        }
        v.insert(exe.to_string(), Known::Pending);
        Known::New
    }

    /// Records the verdict on `exe`: the reason its TLS is not seen, or `None`: clean.
    fn settle(&self, exe: &str, reason: Option<&'static str>) {
        let k = reason.map_or(Known::Clean, Known::Listed);
        self.lock().insert(exe.to_string(), k);
    }

    /// Forgets `exe`, to be checked at a later connect.
    fn forget(&self, exe: &str) {
        self.lock().remove(exe);
    }
}

impl Checked {
    /// Queues a file check for the thread (started on first use). False when the queue is
    /// full or the thread cannot run.
    fn send(
        &mut self,
        job: Job,
        blind: &BlindList,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> bool {
        use std::sync::mpsc::TrySendError;
        if self.broken {
            return false;
        }
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(WAITING);
            let (verdicts, blind, metrics) =
                (self.verdicts.clone(), blind.clone(), metrics.clone());
            let started = std::thread::Builder::new()
                .name("lw-blind".into())
                .spawn(move || {
                    for job in rx {
                        let r = crate::panics::guard("tls_blind", &metrics.internal_errors, || {
                            by_file(&job.exe)
                        });
                        // Listed before the verdict is: a connect after the verdict lists
                        // a newer sighting, which this older one must not overwrite.
                        if let Some(Some(reason)) = r {
                            let b = Blind {
                                reason,
                                ..job.sighting
                            };
                            list(&blind, &metrics, &job.exe, b);
                        }
                        match r {
                            Some(reason) => verdicts.settle(&job.exe, reason),
                            // A check that panicked: tried again at a later connect.
                            None => verdicts.forget(&job.exe),
                        }
                    }
                });
            if let Err(e) = started {
                log::error!(
                    "cannot start the TLS blind-spot thread ({e}); blind spots in executables are not listed"
                );
                self.broken = true;
                return false;
            }
            self.tx = Some(tx);
        }
        match self.tx.as_ref().map(|tx| tx.try_send(job)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Disconnected(_))) => {
                log::error!("the TLS blind-spot thread ended; blind spots in executables are no longer listed");
                self.broken = true;
                self.tx = None;
                false
            }
            _ => false,
        }
    }
}

/// Lists `exe` as a blind spot, seen last at `b` (the oldest sighting goes when full).
fn list(blind: &BlindList, metrics: &crate::metrics::Metrics, exe: &str, b: Blind) {
    let Ok(mut list) = blind.lock() else {
        return;
    };
    if list.len() >= MAX && !list.contains_key(exe) {
        if let Some(oldest) = list
            .iter()
            .min_by_key(|(_, b)| b.last_ms)
            .map(|(k, _)| k.clone())
        {
            list.remove(&oldest);
        }
    }
    list.insert(exe.to_string(), b);
    metrics.tls_blind.set(list.len() as i64);
}

/// What the maps of a process say of its TLS.
#[derive(Debug, PartialEq)]
enum Maps {
    /// The answer (`None`: the probes see its TLS).
    Verdict(Option<&'static str>),
    /// Only the executable itself can tell.
    File,
    /// Its maps could not be read (it is gone): nothing is known, and a file check alone
    /// would call a GnuTLS or NSS client clean.
    Unread,
}

/// What the maps of `exe` (running as `tgid`) say of its TLS.
fn by_maps(tgid: u32, exe: &str, visible: &[String]) -> Maps {
    if visible.iter().any(|v| v == exe) {
        return Maps::Verdict(None);
    }
    // Bytes: a mapped path need not be UTF-8.
    let Ok(maps) = std::fs::read(format!("/proc/{tgid}/maps")) else {
        return Maps::Unread;
    };
    let mapped = |name: &str| memchr::memmem::find(&maps, name.as_bytes()).is_some();
    if visible.iter().any(|v| mapped(v)) {
        return Maps::Verdict(None);
    }
    let base = exe.rsplit('/').next().unwrap_or(exe);
    if base == "java" || mapped("/libjvm.so") {
        Maps::Verdict(Some("java"))
    } else if mapped("libgnutls.so") {
        Maps::Verdict(Some("gnutls"))
    } else if mapped("libnss3.so") {
        Maps::Verdict(Some("nss"))
    } else {
        Maps::File
    }
}

/// What `exe` itself says of its TLS: Go's, or a TLS library linked in without its names.
fn by_file(exe: &str) -> Option<&'static str> {
    if is_go(exe) {
        Some("go")
    } else {
        static_tls(exe)
    }
}

/// Executables searched for a TLS library's marks at most this long (once each).
const READ_MAX: u64 = 256 << 20;
/// Bytes of an executable read and searched at a time: what the search holds, however big
/// the file (it read them whole: 67 MB at once for one program in a soak).
const WINDOW: usize = 1 << 20;

/// A TLS library linked into `exe` without exporting OpenSSL's names: BoringSSL (Chrome,
/// Electron, many static tools) or OpenSSL built in and hidden. BoringSSL wins when both
/// show (its version string reads "OpenSSL 1.1.1 (compatible; BoringSSL)").
fn static_tls(exe: &str) -> Option<&'static str> {
    use memchr::memmem::Finder;
    use std::io::Read;
    let (mut f, m) = open(exe)?;
    if m.len() > READ_MAX {
        return None;
    }
    let boring = Finder::new(b"BoringSSL");
    let openssl = [
        Finder::new(b"OpenSSL 3."),
        Finder::new(b"OpenSSL 1.1"),
        Finder::new(b"ssl3_write_bytes"),
    ];
    // A mark cut by a window's end is whole in the next one, which starts with the last
    // `keep` bytes of this one.
    let keep = openssl.iter().map(|f| f.needle().len()).max()? - 1;
    let mut buf = vec![0u8; keep + WINDOW];
    let (mut have, mut hidden, mut read) = (0, false, 0u64);
    loop {
        // Not past READ_MAX, however the file grows meanwhile.
        let room = (buf.len() - have).min(usize::try_from(READ_MAX - read).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[have..have + room]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        read += n as u64;
        let hay = &buf[..have + n];
        if boring.find(hay).is_some() {
            return Some("boringssl");
        }
        hidden = hidden || openssl.iter().any(|f| f.find(hay).is_some());
        if read >= READ_MAX {
            break;
        }
        let from = hay.len().saturating_sub(keep);
        let len = hay.len() - from;
        buf.copy_within(from..from + len, 0);
        have = len;
    }
    hidden.then_some("openssl-hidden")
}

/// A Go executable carries a `.go.buildinfo` section, 64- or 32-bit (a 32-bit one is
/// never probed: `gotls` reads x86-64 only). Only the ELF and section headers are read
/// (`object::File::parse` reads the symbol tables too: megabytes in a Go program that keeps
/// them), through the capped reader every look into an executable uses.
fn is_go(exe: &str) -> bool {
    use object::{
        elf::{FileHeader32, FileHeader64},
        read::elf::FileHeader,
        Endianness,
    };
    fn has<H: FileHeader<Endian = Endianness>>(data: &crate::probes::capped::Capped) -> bool {
        let Ok(header) = H::parse(data) else {
            return false;
        };
        let Ok(endian) = header.endian() else {
            return false;
        };
        header
            .sections(endian, data)
            .is_ok_and(|s| s.section_by_name(endian, b".go.buildinfo").is_some())
    }
    let Some((f, _)) = open(exe) else {
        return false;
    };
    let Some(data) = crate::probes::capped::Capped::look(&f) else {
        return false;
    };
    has::<FileHeader64<Endianness>>(&data) || has::<FileHeader32<Endianness>>(&data)
}

/// `exe` opened for reading, with its metadata, if it is a regular file: the path a
/// process exec'd may name a FIFO or a device by now (see `open_regular`).
fn open(exe: &str) -> Option<(std::fs::File, std::fs::Metadata)> {
    crate::probes::capped::open_regular(std::path::Path::new(exe))
        .ok()
        .flatten()
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
        // A binary the probes are on is visible, whatever it holds; java is told by its
        // name; anything else needs its file read.
        let me = std::process::id();
        assert_eq!(
            by_maps(me, &boring, std::slice::from_ref(&boring)),
            Maps::Verdict(None)
        );
        assert_eq!(
            by_maps(me, "/opt/jdk/bin/java", &[]),
            Maps::Verdict(Some("java"))
        );
        assert_eq!(by_maps(me, &boring, &[]), Maps::File);
        // A process gone by the time its connect is handled: nothing is concluded.
        assert_eq!(by_maps(u32::MAX - 1, &boring, &[]), Maps::Unread);
        assert_eq!(by_file(&boring), Some("boringssl"));
        assert_eq!(by_file("/bin/true"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An executable is checked once: the first connect marks it pending (later ones
    /// leave it be), a verdict settles it, and one forgotten (its check could not be
    /// queued) is new again at the next connect.
    #[test]
    fn an_executable_is_marked_pending_until_settled() {
        let c = Verdicts::default();
        assert_eq!(c.look("/usr/bin/a"), Known::New);
        assert_eq!(c.look("/usr/bin/a"), Known::Pending);
        c.forget("/usr/bin/a");
        assert_eq!(c.look("/usr/bin/a"), Known::New);
        c.settle("/usr/bin/a", Some("go"));
        assert_eq!(c.look("/usr/bin/a"), Known::Listed("go"));
        assert_eq!(c.look("/usr/bin/b"), Known::New);
        c.settle("/usr/bin/b", None);
        assert_eq!(c.look("/usr/bin/b"), Known::Clean);
    }

    /// File checks queued for the thread settle their executables: one with a TLS stack
    /// is listed with the connect that met it first, a clean one is not listed.
    #[test]
    fn file_checks_on_the_thread_settle_and_list() {
        let dir = std::env::temp_dir().join(format!("lw-blind-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let boring = dir.join("boring");
        std::fs::write(&boring, b"\x7fELF....BoringSSL....").unwrap();
        let boring = boring.to_string_lossy().into_owned();
        let (blind, metrics) = (
            BlindList::default(),
            Arc::new(crate::metrics::Metrics::new()),
        );
        let mut c = Checked::default();
        for exe in [boring.as_str(), "/bin/true"] {
            assert_eq!(c.verdicts.look(exe), Known::New);
            let job = Job {
                exe: exe.to_string(),
                sighting: Blind {
                    reason: "",
                    pid: std::process::id(),
                    comm: "lw-test".into(),
                    remote: "192.0.2.1:443".into(),
                    last_ms: 7,
                },
            };
            assert!(c.send(job, &blind, &metrics));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while [boring.as_str(), "/bin/true"]
            .iter()
            .any(|e| c.verdicts.look(e) == Known::Pending)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(c.verdicts.look(&boring), Known::Listed("boringssl"));
        assert_eq!(c.verdicts.look("/bin/true"), Known::Clean);
        let list = blind.lock().unwrap();
        let b = &list[&boring];
        assert_eq!(
            (b.reason, b.comm.as_str(), b.last_ms),
            ("boringssl", "lw-test", 7)
        );
        assert!(!list.contains_key("/bin/true"));
        assert_eq!(metrics.tls_blind.get(), 1);
        drop(list);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The file is searched a window at a time: a mark cut by a window's end is still
    /// found, and BoringSSL still wins when an OpenSSL mark came windows before it.
    #[test]
    fn marks_across_windows_are_found() {
        let dir = std::env::temp_dir().join(format!("lw-blind-w-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, marks: &[(usize, &[u8])]| {
            let mut body = vec![b'.'; 3 * WINDOW + 100];
            for (at, m) in marks {
                body[*at..*at + m.len()].copy_from_slice(m);
            }
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            p.to_string_lossy().into_owned()
        };
        // Every placement across the first two reads' ends (wherever the carry puts them:
        // WINDOW + 15 and 2 * WINDOW + 15 here), so a carry one byte short is caught.
        for at in WINDOW - 20..WINDOW + 20 {
            let f = file("cut", &[(at, b"ssl3_write_bytes")]);
            assert_eq!(static_tls(&f), Some("openssl-hidden"), "at {at}");
            let at = at + WINDOW;
            let f = file("cut", &[(at, b"BoringSSL")]);
            assert_eq!(static_tls(&f), Some("boringssl"), "at {at}");
        }
        let both = file(
            "both",
            &[(10, b"OpenSSL 1.1.1"), (2 * WINDOW + 50, b"BoringSSL")],
        );
        assert_eq!(static_tls(&both), Some("boringssl"));
        let last = file("last", &[(3 * WINDOW + 100 - 10, b"OpenSSL 3.")]);
        assert_eq!(static_tls(&last), Some("openssl-hidden"));
        assert_eq!(static_tls(&file("none", &[])), None);
        assert_eq!(static_tls(dir.to_str().unwrap()), None, "a directory");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Go programs are told by their section headers alone; a FIFO is not opened.
    #[test]
    fn go_programs_on_this_host_are_told() {
        let fifo = std::env::temp_dir().join(format!("lw-blind-fifo-{}", std::process::id()));
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A writer waiting in its open: a reader's open (ours, had we opened it) lets it in.
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::OpenOptions::new().write(true).open(fifo))
        };
        // Time for it to be waiting: had it not begun, a passing open would go unseen.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!is_go(fifo.to_str().unwrap()));
        assert_eq!(static_tls(fifo.to_str().unwrap()), None);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!writer.is_finished(), "the FIFO was opened");
        let reader = std::fs::File::open(&fifo).unwrap();
        writer.join().unwrap().unwrap();
        drop(reader);
        std::fs::remove_file(&fifo).unwrap();
        assert!(is_go("/usr/local/bin/docker"));
        assert!(is_go("/usr/bin/kubectl"));
        assert!(!is_go("/bin/true"));
        assert!(!is_go("/etc/hostname"));
        assert!(!is_go("/nonexistent"));
    }
}
