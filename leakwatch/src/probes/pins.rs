//! The exec kill outlives the daemon. While anything is frozen, the links of the programs
//! that kill a frozen credential's exec are pinned in bpffs, so a stop, a crash or a
//! restart leaves no moment in which a frozen key runs: the pinned programs keep killing
//! (with the frozen set they were given) until the next daemon has attached its own and
//! retires them. With nothing frozen nothing is pinned, and a stop leaves nothing behind.
use std::{
    ffi::CString,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{Map, MapData, PerCpuArray, RingBuf},
    programs::links::{FdLink, PinnedLink},
};
use sha2::{Digest, Sha256};

/// The programs that kill a frozen credential's exec: at syscall entry (argv and
/// environment as passed) and once the new image is in place (its argument area).
pub const KILLERS: [&str; 3] = [
    "sys_enter_execve",
    "sys_enter_execveat",
    "sched_process_exec",
];

/// Where the bpf filesystem is mounted on a systemd host.
const BPFFS: &str = "/sys/fs/bpf";
/// Every daemon's pin directory is under this one.
pub const ROOT: &str = "/sys/fs/bpf/leakwatch";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of the daemon keeping its state in `state_dir`: one per state dir,
/// since a state dir has one daemon at a time (its lock), and tests run many at once.
pub fn dir_for(state_dir: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let digest = Sha256::digest(abs.as_os_str().as_bytes());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(ROOT).join(id)
}

/// The killers' links, owned here rather than by their programs, so they can be pinned;
/// with them the exec ring and the counters they write, so the next daemon can read what
/// they recorded while none ran.
pub struct Pins {
    dir: PathBuf,
    /// The eBPF object, whose stamp names the build: only the same build's records can
    /// be read back.
    object: &'static [u8],
    stamp: std::sync::OnceLock<String>,
    /// This run: `<pid>_<start ns>`.
    run: String,
    links: Vec<(&'static str, FdLink)>,
    /// (probe, ns) when each killer was attached (see `Left::attached`).
    attached: Vec<(u32, u64)>,
    /// (name, kernel map id)
    maps: Vec<(&'static str, u32)>,
    pinned: bool,
    /// Pinning failed once: said once, not on every freeze.
    warned: bool,
}

/// What an earlier daemon left pinned, retired by this one: its programs are off their
/// hooks and finished when this is returned (unless `lingering`), so nothing more comes
/// into its ring.
#[derive(Default)]
pub struct Left {
    /// Links removed.
    pub links: usize,
    /// Their exec rings, to read to the end (the same build: the same record format). More
    /// than one when a daemon died between pinning its own and retiring the earlier.
    pub events: Vec<RingBuf<MapData>>,
    /// Their counters (totals since each was loaded), by the kernel id of the map.
    pub stats: Vec<(u32, super::KernelStats)>,
    /// Left by another build: what it recorded cannot be decoded here.
    pub foreign: bool,
    /// Its programs were still loaded after `RETIRE_WAIT`: records may follow the drain.
    pub lingering: bool,
    /// (probe, CLOCK_MONOTONIC ns) when this daemon's killer on that hook was attached: an
    /// old record of that hook made later was made by this daemon's program too.
    pub attached: Vec<(u32, u64)>,
}

/// How long a retired program may take to be torn down before it is reported lingering.
const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl Pins {
    pub fn new(dir: PathBuf, object: &'static [u8]) -> Pins {
        Pins {
            dir,
            object,
            stamp: std::sync::OnceLock::new(),
            // One directory per daemon run (pid and start time: pids repeat): this run pins
            // its own before it retires any other, so something is pinned at every moment.
            // (bpffs refuses `.` in names.)
            run: format!("{}_{}", std::process::id(), crate::events::monotonic_ns()),
            links: Vec::new(),
            attached: Vec::new(),
            maps: Vec::new(),
            pinned: false,
            warned: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The object's stamp, hashed only when needed (the object is ~4 MB: ~10 ms).
    fn stamp(&self) -> &str {
        self.stamp.get_or_init(|| {
            let digest = Sha256::digest(self.object);
            digest[..8].iter().map(|b| format!("{b:02x}")).collect()
        })
    }

    /// This run's directory: `<stamp>_<pid>_<start ns>`.
    fn here(&self) -> PathBuf {
        self.dir.join(format!("{}_{}", self.stamp(), self.run))
    }

    /// A killer's link, just attached.
    pub fn add(&mut self, prog: &'static str, link: FdLink) {
        let probe = match prog {
            "sys_enter_execve" => leakwatch_common::PROBE_EXECVE,
            "sys_enter_execveat" => leakwatch_common::PROBE_EXECVEAT,
            _ => leakwatch_common::PROBE_EXEC_IMAGE,
        };
        self.attached.push((probe, crate::events::monotonic_ns()));
        self.links.push((prog, link));
    }

    pub fn add_map(&mut self, name: &'static str, id: u32) {
        self.maps.push((name, id));
    }

    /// True while the killers are pinned.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Retires what earlier daemons left pinned here. Called once this daemon's own
    /// killers are attached (and pinned, when anything is frozen), so no exec goes
    /// unchecked in between. Their links are closed here, each on a thread of its own (a
    /// close returns once the kernel has torn the program down, ~50-100 ms); then each
    /// program is looked for by id until it is gone, so the ring is final when this returns.
    pub fn retire_old(&self) -> Left {
        let mut left = Left {
            attached: self.attached.clone(),
            ..Left::default()
        };
        let mut links: Vec<FdLink> = Vec::new();
        let mut stats = Vec::new();
        for sub in read_dir(&self.dir) {
            let name = sub.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (stamp, run) = name.split_once('_').unwrap_or((name, ""));
            if run == self.run {
                continue;
            }
            let same_build = stamp == self.stamp();
            left.foreign |= !same_build;
            for f in read_dir(&sub) {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let opened = match (same_build, name) {
                    (true, "EVENTS") => MapData::from_pin(&f)
                        .map_err(|e| anyhow!("{e}"))
                        .and_then(|m| RingBuf::try_from(Map::RingBuf(m)).map_err(Into::into))
                        .map(|r| left.events.push(r)),
                    (true, "STATS") => MapData::from_pin(&f)
                        .map_err(|e| anyhow!("{e}"))
                        .map(|m| stats.push(m)),
                    (_, "EVENTS" | "STATS") => Ok(()),
                    _ => PinnedLink::from_pin(&f)
                        .map_err(|e| anyhow!("{e}"))
                        .map(|l| links.push(FdLink::from(l))),
                };
                if let Err(e) = opened {
                    log::warn!(
                        "reading {} (left by an earlier leakwatch): {e:#}",
                        f.display()
                    );
                }
                if let Err(e) = std::fs::remove_file(&f) {
                    log::warn!(
                        "could not remove {} (left by an earlier leakwatch): {e}; remove it by hand",
                        f.display()
                    );
                }
            }
            let _ = std::fs::remove_dir(&sub);
        }
        left.links = links.len();
        let progs: Vec<u32> = links
            .iter()
            .filter_map(|l| l.info().ok().map(|i| i.program_id()))
            .collect();
        std::thread::scope(|s| {
            for l in links {
                s.spawn(move || drop(l));
            }
        });
        // The close is the last reference on this kernel, and returns after the teardown;
        // a kernel that frees the pin's reference later, or a pin another task still
        // holds, would leave the program running a while: wait until it is gone.
        if !wait_unloaded(&progs) {
            log::warn!("an exec kill retired from an earlier leakwatch is still loaded after {RETIRE_WAIT:?}: records it makes from now on are not read");
            left.lingering = true;
        }
        for m in stats {
            let id = m.info().map(|i| i.id()).unwrap_or(0);
            match PerCpuArray::try_from(Map::PerCpuArray(m))
                .map_err(anyhow::Error::from)
                .and_then(|a| super::stats_of(&a))
            {
                Ok(st) => left.stats.push((id, st)),
                Err(e) => log::warn!("reading the counters an earlier leakwatch left: {e:#}"),
            }
        }
        left
    }

    /// Pins the killers while `frozen` (anything is frozen), unpins them otherwise.
    pub fn sync(&mut self, frozen: bool) {
        if self.links.is_empty() || frozen == self.pinned {
            return;
        }
        if !frozen {
            self.unpin_all();
            return;
        }
        match self.pin_all() {
            Ok(()) => self.pinned = true,
            Err(e) => {
                // A half-pinned set would leave some hooks unguarded while down.
                self.unpin_all();
                if !self.warned {
                    log::warn!("frozen credentials are blocked only while the daemon runs: {e:#}");
                    self.warned = true;
                }
            }
        }
    }

    fn pin_all(&mut self) -> Result<()> {
        ensure_bpffs()?;
        let here = self.here();
        std::fs::create_dir_all(&here).with_context(|| format!("creating {}", here.display()))?;
        // The maps first: a link pinned without its ring would record what nobody reads.
        for (name, id) in &self.maps {
            let path = here.join(name);
            let fd = by_id(BPF_MAP_GET_FD_BY_ID, *id).context("opening a map by id")?;
            pin(&fd, &path).with_context(|| format!("pinning {name} at {}", path.display()))?;
        }
        for (prog, link) in &self.links {
            let path = here.join(prog);
            let id = link
                .info()
                .map_err(|e| anyhow!("reading the link's id: {e}"))?
                .id();
            let fd = by_id(BPF_LINK_GET_FD_BY_ID, id).context("opening the link by id")?;
            pin(&fd, &path)
                .with_context(|| format!("pinning {prog}'s link at {}", path.display()))?;
        }
        Ok(())
    }

    fn unpin_all(&mut self) {
        let here = self.here();
        let names = self
            .links
            .iter()
            .map(|l| l.0)
            .chain(self.maps.iter().map(|m| m.0));
        for name in names {
            let path = here.join(name);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not unpin {}: {e}; remove it by hand", path.display());
                }
            }
        }
        let _ = std::fs::remove_dir(&here);
        let _ = std::fs::remove_dir(&self.dir);
        self.pinned = false;
    }

    /// At stop, when pinned: the killers stay attached after the daemon exits.
    pub fn stays(&self) {
        if self.pinned {
            log::info!(
                "the exec kill stays attached while leakwatch is down (pinned in {}): frozen credentials still cannot run; the next start takes over and reports what it killed",
                self.here().display()
            );
        }
    }
}

/// Removes every pin under `dir` (a daemon's pin directory) and returns once the programs
/// they kept attached are gone, as after a reboot: an unlinked pin lets go of its link
/// only after an RCU grace period and a deferred put, so an exec right after the unlink
/// can still be killed. False if a program was still loaded after `RETIRE_WAIT`.
pub fn remove(dir: &Path) -> bool {
    let mut progs = Vec::new();
    for sub in read_dir(dir) {
        for f in read_dir(&sub) {
            if let Ok(l) = PinnedLink::from_pin(&f) {
                progs.extend(FdLink::from(l).info().ok().map(|i| i.program_id()));
            }
            let _ = std::fs::remove_file(&f);
        }
        let _ = std::fs::remove_dir(&sub);
    }
    let _ = std::fs::remove_dir(dir);
    wait_unloaded(&progs)
}

/// Waits up to `RETIRE_WAIT` for these programs to be unloaded; false if one still is.
fn wait_unloaded(progs: &[u32]) -> bool {
    let deadline = std::time::Instant::now() + RETIRE_WAIT;
    while progs.iter().any(|&id| prog_loaded(id)) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A new descriptor for the bpf object with this id (`cmd`: a `*_GET_FD_BY_ID`).
fn by_id(cmd: libc::c_long, id: u32) -> Result<OwnedFd> {
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let fd = bpf(
        cmd,
        &mut ById {
            id,
            next_id: 0,
            open_flags: 0,
        },
    )?;
    // SAFETY: a new descriptor the kernel just returned, owned from here on.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A program with this id is still loaded.
fn prog_loaded(id: u32) -> bool {
    match by_id(BPF_PROG_GET_FD_BY_ID, id) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.downcast_ref::<std::io::Error>()
                .and_then(|e| e.raw_os_error()),
            Some(libc::ENOENT)
        ),
    }
}

#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    // The kernel wants every byte past the command's fields zero: no padding left unset.
    zero: u32,
}

/// Pins the object behind `fd` at `path` (aya's `FdLink::pin` consumes the link and drops
/// it on failure, which would detach a killer; this pins a second descriptor).
fn pin(fd: &OwnedFd, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).context("a NUL in the pin path")?;
    let mut attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        zero: 0,
    };
    match bpf(BPF_OBJ_PIN, &mut attr) {
        Ok(_) => Ok(()),
        // This daemon's own pin from before an unpin that failed: replace it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            std::fs::remove_file(path)?;
            bpf(BPF_OBJ_PIN, &mut attr).map(|_| ()).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised bpf_attr prefix of its own size, writable
    // (some commands write fields back, e.g. `info_len`).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Mounts the bpf filesystem at /sys/fs/bpf unless one is there (systemd mounts it at boot;
/// a host without systemd may have none).
fn ensure_bpffs() -> Result<()> {
    let path = CString::new(BPFFS).expect("no NUL");
    let is_bpffs = || {
        // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
        rc == 0 && st.f_type == BPF_FS_MAGIC
    };
    if is_bpffs() {
        return Ok(());
    }
    // Under a seccomp filter (the systemd unit's filters mount(2), and a filtered call kills
    // the process) no mount is tried; systemd mounts bpffs at boot.
    let filtered = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Seccomp:") && l[8..].trim() != "0")
        })
        .unwrap_or(true);
    if filtered {
        bail!("{BPFFS} is not a bpf filesystem (systemd mounts one there at boot); mount it (`mount -t bpf bpf {BPFFS}`) so the exec kill can stay attached while leakwatch is down");
    }
    // Two daemons mounting at once would stack two bpffs, the first one's pins hidden under
    // the second: the mount is made under a lock on the directory, and checked again.
    let dir = std::fs::File::open(BPFFS).with_context(|| format!("opening {BPFFS}"))?;
    // SAFETY: flock on a descriptor this function owns; released when it is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) } != 0 {
        bail!("locking {BPFFS}: {}", std::io::Error::last_os_error());
    }
    if is_bpffs() {
        return Ok(());
    }
    let fstype = CString::new("bpf").expect("no NUL");
    let opts = CString::new("mode=0700").expect("no NUL");
    // SAFETY: NUL-terminated strings; mount copies them.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        bail!(
            "{BPFFS} is not a bpf filesystem and mounting one there failed ({}); mount it (`mount -t bpf bpf {BPFFS}`) so the exec kill can stay attached while leakwatch is down",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
