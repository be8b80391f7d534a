//! TLS plaintext uprobes: which files on this host define OpenSSL's `SSL_write` and
//! `SSL_write_ex` (the system `libssl.so.3`; executables that carry OpenSSL and export
//! them, like node) or are Go programs with `crypto/tls` (`gotls`), and attaching the
//! kernel's `tls` programs to each such file once — a uprobe on a file fires in every
//! process that maps it.
use std::{fs::File, path::Path};

use super::capped::Capped;
use anyhow::{Context as _, Result};
use aya::programs::{uprobe::UProbeScope, UProbe};

use super::Probes;

/// (program, symbol): entry probes take the buffer, the return probe sends it.
pub(super) const POINTS: [(&str, &str); 4] = [
    ("ssl_write", "SSL_write"),
    ("ssl_write_ex", "SSL_write_ex"),
    ("ssl_write_ret", "SSL_write"),
    ("ssl_write_ret", "SSL_write_ex"),
];

/// Where the system OpenSSL usually is; the loader cache names it too.
const LIBSSL: [&str; 3] = [
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib64/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

/// The system `libssl.so.3`, if any.
pub fn system_libssl() -> Option<std::path::PathBuf> {
    LIBSSL
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Where `SSL_write` and `SSL_write_ex` start in a file that defines both: file offsets,
/// where the uprobes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SslWrite {
    pub write: u64,
    pub write_ex: u64,
}

impl SslWrite {
    /// The offset of `sym` (a symbol of `POINTS`).
    fn of(&self, sym: &str) -> Option<u64> {
        match sym {
            "SSL_write" => Some(self.write),
            "SSL_write_ex" => Some(self.write_ex),
            _ => None,
        }
    }
}

/// Does the open file `f` (64-bit x86 ELF: the probes read x86-64 argument registers)
/// define, not merely import, both write functions in its dynamic symbol table, and
/// where? Looked up through the table's GNU hash, as the dynamic loader does, when it has
/// a sound one (a crafted one could divide by zero in `object`); else every symbol is
/// walked. Name by name, node's 75,000 exported symbols took 16 MB and 0.1 s at every look.
/// A hidden symbol version (`VERSYM_HIDDEN` in `.gnu.version`) is not what a caller of the
/// name gets: skipped. Only the section headers, `.dynsym`, `.gnu.hash`, `.gnu.version` and
/// the names compared are read, at most `capped::CAP` in all (`Capped::look`); object's version table is
/// not built (a crafted `.gnu.version_r` can make that walk take hours).
pub fn ssl_write(f: &File) -> Option<SslWrite> {
    use object::elf::{FileHeader64, EM_X86_64, SHT_DYNSYM, VERSYM_HIDDEN};
    use object::read::elf::{FileHeader as _, SectionHeader as _, Sym as _, VersionTable};
    let data = &Capped::look(f)?;
    let header = FileHeader64::<object::Endianness>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    if header.e_machine(endian) != EM_X86_64 {
        return None;
    }
    let sections = header.sections(endian, data).ok()?;
    let symbols = sections.symbols(endian, data, SHT_DYNSYM).ok()?;
    let sound = |h: &object::elf::GnuHashHeader<object::Endianness>| {
        let blooms = h.bloom_count.get(endian);
        h.bucket_count.get(endian) > 0 && blooms.is_power_of_two() && h.bloom_shift.get(endian) < 32
    };
    let hash = match sections.gnu_hash_header(endian, data) {
        Ok(Some(h)) if sound(h) => sections.gnu_hash(endian, data).ok().flatten(),
        _ => None,
    };
    let versym = sections.gnu_versym(endian, data).ok().flatten();
    let hidden = |i: usize| {
        versym
            .as_ref()
            .and_then(|(v, _)| v.get(i))
            .is_some_and(|v| v.0.get(endian) & VERSYM_HIDDEN != 0)
    };
    let offset = |name: &str| -> Option<u64> {
        let name = name.as_bytes();
        let walk = || {
            symbols.symbols().iter().enumerate().find_map(|(i, s)| {
                let hit = !s.is_undefined(endian)
                    && !hidden(i)
                    && s.name(endian, symbols.strings()) == Ok(name);
                hit.then_some(s)
            })
        };
        let sym = match &hash {
            // Every defined export is in the table: a name not there is not defined here
            // (most files a process execs; no walk for them).
            Some((h, _)) => match h.find(
                endian,
                name,
                object::elf::gnu_hash(name),
                None,
                &symbols,
                &VersionTable::default(),
            ) {
                None => None,
                Some((i, s)) if !s.is_undefined(endian) && !hidden(i.0) => Some(s),
                // A hidden version came first in the chain: the walk finds the default.
                Some(_) => walk(),
            },
            None => walk(),
        }?;
        let sec = sections
            .section(object::SectionIndex(usize::from(sym.st_shndx(endian))))
            .ok()?;
        let (addr, size) = (sec.sh_addr(endian), sec.sh_size(endian));
        let at = sym
            .st_value(endian)
            .checked_sub(addr)
            .filter(|&a| a < size)?;
        sec.sh_offset(endian).checked_add(at)
    };
    Some(SslWrite {
        write: offset("SSL_write")?,
        write_ex: offset("SSL_write_ex")?,
    })
}

impl Probes {
    /// The uprobe program `prog`, loaded at its first use.
    fn uprobe(&mut self, prog: &str) -> Result<&mut UProbe> {
        let p: &mut UProbe = self
            .ebpf
            .program_mut(prog)
            .with_context(|| format!("program {prog} missing"))?
            .try_into()?;
        if p.fd().is_err() {
            p.load().with_context(|| format!("loading {prog}"))?;
        }
        Ok(p)
    }

    /// Attaches the TLS plaintext probes at `at` (`ssl_write`'s) in the file `target` names
    /// (the open file that was parsed, by `/proc/self/fd`), known as `path`.
    pub fn attach_tls(&mut self, target: &Path, path: &Path, at: SslWrite) -> Result<()> {
        for (prog, sym) in POINTS {
            let offset = at
                .of(sym)
                .with_context(|| format!("no offset found for {sym}"))?;
            self.uprobe(prog)?
                .attach(offset, target, UProbeScope::AllProcesses)
                .with_context(|| format!("attaching {prog} to {sym} in {}", path.display()))?;
        }
        self.tls_attached.push(path.to_string_lossy().into_owned());
        Ok(())
    }

    /// Attaches the Go TLS probe at `offset` (`gotls::find`'s) of the file `target` names
    /// (the open file that was parsed, by `/proc/self/fd`), known as `path`.
    pub fn attach_go_tls(&mut self, target: &Path, path: &Path, offset: u64) -> Result<()> {
        self.uprobe("go_tls_write")?
            .attach(offset, target, UProbeScope::AllProcesses)
            .with_context(|| {
                format!(
                    "attaching go_tls_write to {} in {}",
                    super::gotls::WRITE,
                    path.display()
                )
            })?;
        self.tls_attached.push(path.to_string_lossy().into_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_exports_the_write_functions_and_libc_does_not() {
        let ssl = system_libssl().expect("libssl.so.3 is installed here");
        let exports = |p: &Path| File::open(p).ok().and_then(|f| ssl_write(&f));
        assert!(exports(&ssl).is_some());
        assert!(exports(Path::new("/bin/true")).is_none());
        assert!(exports(Path::new("/nonexistent")).is_none());
        assert!(exports(Path::new("/etc/hostname")).is_none());
    }

    /// The system libssl's bytes, and the file offset of each section named.
    fn libssl_with(sections: &[&str]) -> (Vec<u8>, Vec<usize>) {
        use object::{Object, ObjectSection};
        let data = std::fs::read(system_libssl().unwrap()).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let at = sections
            .iter()
            .map(|n| obj.section_by_name(n).unwrap().file_range().unwrap().0 as usize)
            .collect();
        (data, at)
    }

    /// `ssl_write` of a file holding `bytes` (a copy of libssl, altered).
    fn ssl_write_of(bytes: &[u8], tag: &str) -> Option<SslWrite> {
        let path =
            std::env::temp_dir().join(format!("leakwatch-libssl-{tag}-{}.so", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let found = ssl_write(&File::open(&path).unwrap());
        std::fs::remove_file(&path).unwrap();
        found
    }

    /// A hash table that would divide by zero (no buckets) is not used: the symbols are
    /// walked instead, and give the same offsets; a bloom filter of 3 words is refused too.
    #[test]
    fn an_unsound_hash_table_falls_back_to_the_walk() {
        let want = ssl_write(&File::open(system_libssl().unwrap()).unwrap()).unwrap();
        let (data, at) = libssl_with(&[".gnu.hash"]);
        // Header: bucket count, symbol base, bloom count, bloom shift.
        for (field, value) in [(0usize, 0u32), (8, 3)] {
            let mut bad = data.clone();
            let o = at[0] + field;
            bad[o..o + 4].copy_from_slice(&value.to_le_bytes());
            let tag = format!("hash{field}");
            assert_eq!(ssl_write_of(&bad, &tag), Some(want), "{field}");
        }
    }

    /// With no GNU hash table at all (its section typed as plain data), the symbols are
    /// walked and give the offsets the table gives.
    #[test]
    fn a_file_without_a_gnu_hash_table_is_walked() {
        use object::{Object, ObjectSection};
        let want = ssl_write(&File::open(system_libssl().unwrap()).unwrap()).unwrap();
        let (mut data, _) = libssl_with(&[]);
        let index = object::File::parse(&*data)
            .unwrap()
            .section_by_name(".gnu.hash")
            .unwrap()
            .index()
            .0;
        // ELF64 header: e_shoff at 0x28, e_shentsize at 0x3a; sh_type 4 bytes in.
        let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
        let entsize = u16::from_le_bytes([data[0x3a], data[0x3b]]) as usize;
        let at = shoff + index * entsize + 4;
        assert_eq!(
            u32::from_le_bytes(data[at..at + 4].try_into().unwrap()),
            0x6fff_fff6
        );
        data[at..at + 4].copy_from_slice(&object::elf::SHT_PROGBITS.to_le_bytes());
        assert_eq!(ssl_write_of(&data, "nohash"), Some(want));
    }

    /// A name the hash table says is not there is not looked for by a walk (the answer for
    /// almost every file a process execs): with a bloom filter that rules out every name,
    /// nothing is found, though a walk would find both functions.
    #[test]
    fn a_name_the_hash_table_rules_out_is_not_walked_for() {
        let (mut data, at) = libssl_with(&[".gnu.hash"]);
        // Header: bucket count, symbol base, bloom count (64-bit words follow it).
        let blooms = u32::from_le_bytes(data[at[0] + 8..at[0] + 12].try_into().unwrap());
        let from = at[0] + 16;
        data[from..from + 8 * blooms as usize].fill(0);
        assert_eq!(ssl_write_of(&data, "bloom0"), None);
    }

    /// A function whose symbol version is hidden (`VERSYM_HIDDEN`) is not one a caller of
    /// the name would get: through the hash table and through the walk alike, none found.
    #[test]
    fn a_hidden_symbol_version_is_not_probed() {
        use object::{Object, ObjectSymbol};
        let (mut bad, at) = libssl_with(&[".gnu.version", ".gnu.hash"]);
        let obj = object::File::parse(&*bad).unwrap();
        let index = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("SSL_write") && !s.is_undefined())
            .unwrap()
            .index()
            .0;
        drop(obj);
        bad[at[0] + 2 * index + 1] |= 0x80;
        assert_eq!(ssl_write_of(&bad, "hidden"), None, "through the hash table");
        // No buckets: the walk.
        bad[at[1]..at[1] + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(ssl_write_of(&bad, "hidden-walked"), None, "walked");
    }

    /// Through the hash table, each function is where a walk of every dynamic symbol (as
    /// `object` gives them) puts it.
    #[test]
    fn the_write_functions_are_found_where_the_symbol_table_puts_them() {
        use object::{Object, ObjectSection, ObjectSymbol};
        let mut seen = 0;
        for p in [system_libssl().unwrap(), "/usr/bin/node".into()] {
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            let obj = object::File::parse(&*data).unwrap();
            let at = |name: &str| {
                let s = obj
                    .dynamic_symbols()
                    .find(|s| s.name() == Ok(name) && !s.is_undefined())
                    .unwrap();
                let sec = obj.section_by_index(s.section_index().unwrap()).unwrap();
                s.address() - sec.address() + sec.file_range().unwrap().0
            };
            let want = SslWrite {
                write: at("SSL_write"),
                write_ex: at("SSL_write_ex"),
            };
            let f = File::open(&p).unwrap();
            assert_eq!(ssl_write(&f), Some(want), "{}", p.display());
            seen += 1;
        }
        assert!(seen > 0);
    }
}

/// What a file is to the TLS probes: it carries OpenSSL's write functions, or Go's (its
/// offset, the Go version).
enum Found {
    OpenSsl(SslWrite),
    Go(u64, String),
}

/// Directories searched at start for executables that carry OpenSSL (node, and the like).
const BIN_DIRS: [&str; 4] = ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin"];
/// Exec'd programs waiting to be checked; more are skipped (each binary is seen again at
/// its next exec).
const WAITING: usize = 1024;

/// An exec to check: the process, and the absolute path it exec'd (`None`: relative, or
/// by fd), for when the process has exited before the check.
type Exec = (u32, Option<String>);

/// Hands exec'd programs to the thread that attaches the TLS probes.
#[derive(Clone, Default)]
pub struct TlsWatch {
    tx: Option<std::sync::mpsc::SyncSender<Exec>>,
    /// Files the probes are attached to.
    visible: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
    /// Absolute paths handed over lately: an exec loop of one program costs a lookup, not
    /// a thread wakeup and a `/proc` read per exec (a new file installed at the same path
    /// is checked after at most 10 s).
    recent: crate::recent::Recent<(), 10>,
}

impl TlsWatch {
    /// Process `tgid` exec'd `filename`: check its executable (once per file).
    pub fn exec(&mut self, tgid: u32, filename: &str) {
        let Some(tx) = &self.tx else { return };
        // `/dev/fd/N` names a different image in every process that execs by fd.
        let by_path = filename.starts_with('/') && !crate::procs::by_fd(filename);
        if by_path && self.recent.get(filename).is_some() {
            return;
        }
        // Remembered only once handed over: an exec met by a full queue is not skipped
        // again for 10 s.
        let path = by_path.then(|| filename.to_string());
        if tx.try_send((tgid, path)).is_ok() && by_path {
            self.recent.insert(filename, ());
        }
    }

    /// Files whose TLS plaintext the probes see.
    pub fn visible(&self) -> Vec<String> {
        self.visible.read().map(|v| v.clone()).unwrap_or_default()
    }

    /// Starts the thread: the system libssl and the binaries in `BIN_DIRS` first, then
    /// every newly exec'd executable.
    pub fn start(
        probes: std::sync::Arc<std::sync::Mutex<Probes>>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> TlsWatch {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Exec>(WAITING);
        let visible = std::sync::Arc::new(std::sync::RwLock::new(Vec::new()));
        let seen_by_thread = visible.clone();
        let started = std::thread::Builder::new()
            .name("lw-tls".into())
            .spawn(move || {
                let mut w = Watcher {
                    probes,
                    metrics,
                    seen: Default::default(),
                    visible: seen_by_thread,
                };
                if let Some(l) = system_libssl() {
                    w.check(&l);
                }
                for dir in BIN_DIRS {
                    let Ok(rd) = std::fs::read_dir(dir) else {
                        continue;
                    };
                    // Links too (`/usr/bin/kubectl` is one here): `check` sees each file once.
                    for e in rd.flatten() {
                        w.check(&e.path());
                    }
                }
                for (tgid, path) in rx {
                    // The image the process runs, through its magic link: that file,
                    // whatever its path names by now. A short run may be over by then:
                    // then the file by the path it was exec'd by (checked like any other,
                    // through one open file).
                    if !w.check(Path::new(&format!("/proc/{tgid}/exe"))) {
                        if let Some(p) = path {
                            w.check(Path::new(&p));
                        }
                    }
                }
            });
        match started {
            Ok(_) => TlsWatch {
                tx: Some(tx),
                visible,
                recent: Default::default(),
            },
            Err(e) => {
                log::error!("cannot start the TLS probe thread ({e}); TLS plaintext is not seen");
                TlsWatch::default()
            }
        }
    }
}

struct Watcher {
    probes: std::sync::Arc<std::sync::Mutex<Probes>>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// (device, inode) of every file checked.
    seen: std::collections::HashSet<(u64, u64)>,
    visible: std::sync::Arc<std::sync::RwLock<Vec<String>>>,
}

impl Watcher {
    /// `check_file`; a bug met on one file (an ELF parser reads what any user can exec)
    /// costs that file, counted, not the watcher.
    /// False when nothing could be found at `path`.
    fn check(&mut self, path: &Path) -> bool {
        let errors = self.metrics.internal_errors.clone();
        match crate::panics::guard("tls_watch", &errors, || self.check_file(path)) {
            Some(found) => found,
            None => {
                // It may have held the probes' lock (freeze needs it) or the visible list's.
                self.probes.clear_poison();
                self.visible.clear_poison();
                true
            }
        }
    }

    fn check_file(&mut self, path: &Path) -> bool {
        use std::os::{fd::AsRawFd, unix::fs::MetadataExt};
        // One file for everything: what is checked is what is parsed and probed, however
        // the path changes meanwhile (an exec that ended before its check is checked by
        // the path it was exec'd by, which its user can point elsewhere). A device or FIFO
        // put there is never opened (`open_regular`).
        let (file, m) = match super::capped::open_regular(path) {
            Err(_) => return false,
            Ok(None) => return true,
            Ok(Some(found)) => found,
        };
        let target = format!("/proc/self/fd/{}", file.as_raw_fd());
        // By its real name: the one `/proc/PID/exe` gives (see `pipeline::blind`).
        let Ok(path) = std::fs::read_link(&target) else {
            return true;
        };
        let path = path.as_path();
        if m.mode() & 0o111 == 0 && !path.to_string_lossy().contains(".so") {
            return true;
        }
        // An image with no file (a memfd: runc re-execs itself from a new one at every
        // container start) is a new inode each time, each parsed whole and probed for good.
        if path.to_string_lossy().starts_with("/memfd:") {
            return true;
        }
        if !self.seen.insert((m.dev(), m.ino())) || self.seen.len() > 1 << 20 {
            return true;
        }
        let found = if let Some(at) = ssl_write(&file) {
            Found::OpenSsl(at)
        } else {
            match super::gotls::find(&file) {
                super::gotls::Go::Write { offset, version } => Found::Go(offset, version),
                super::gotls::Go::Unsupported(why) => {
                    log::info!(
                        "{}: a Go program whose TLS is not seen ({why})",
                        path.display()
                    );
                    return true;
                }
                _ => return true,
            }
        };
        let r = match self.probes.lock() {
            // The daemon is stopping: its probes are gone, none is added.
            Ok(p) if p.detached() => return true,
            // Attached through the open file too: a path renamed over meanwhile (to libc,
            // say) must not get a breakpoint at an offset meant for another file.
            Ok(mut p) => match &found {
                Found::OpenSsl(at) => p.attach_tls(Path::new(&target), path, *at),
                Found::Go(offset, _) => p.attach_go_tls(Path::new(&target), path, *offset),
            },
            Err(_) => return true,
        };
        let outcome = match r {
            Ok(()) => {
                match &found {
                    Found::OpenSsl(_) => {
                        log::info!("TLS plaintext probes attached to {}", path.display())
                    }
                    Found::Go(_, v) => log::info!(
                        "TLS plaintext probe attached to {} (Go {v}, crypto/tls)",
                        path.display()
                    ),
                }
                if let Ok(mut v) = self.visible.write() {
                    v.push(path.to_string_lossy().into_owned());
                }
                "attached"
            }
            Err(e) => {
                log::warn!("{e:#}: TLS plaintext written through it is not seen");
                "failed"
            }
        };
        self.metrics.tls_files.with_label_values(&[outcome]).inc();
        true
    }
}
