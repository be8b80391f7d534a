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
use aya::programs::links::FdLink;
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
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory of the daemon keeping its state in `state_dir`: one per state dir,
/// since a state dir has one daemon at a time (its lock), and tests run many at once.
pub fn dir_for(state_dir: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let digest = Sha256::digest(abs.as_os_str().as_bytes());
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(BPFFS).join("leakwatch").join(id)
}

/// The killers' links, owned here rather than by their programs, so they can be pinned.
pub struct Pins {
    dir: PathBuf,
    links: Vec<(&'static str, FdLink)>,
    pinned: bool,
    /// Pinning failed once: said once, not on every freeze.
    warned: bool,
}

impl Pins {
    pub fn new(dir: PathBuf) -> Pins {
        Pins {
            dir,
            links: Vec::new(),
            pinned: false,
            warned: false,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn add(&mut self, prog: &'static str, link: FdLink) {
        self.links.push((prog, link));
    }

    /// True while the killers are pinned.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// Removes what an earlier daemon left pinned here (its programs leave their hooks; the
    /// kernel tears them down in the background). Called once this daemon's own killers are
    /// attached, so no exec goes unchecked in between. Returns how many were retired.
    pub fn retire_old(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            match std::fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) => log::warn!(
                    "could not remove {} (left by an earlier leakwatch): {err}; remove it by hand",
                    e.path().display()
                ),
            }
        }
        n
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
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        for (prog, link) in &self.links {
            let path = self.dir.join(prog);
            pin(link, &path)
                .with_context(|| format!("pinning {prog}'s link at {}", path.display()))?;
        }
        Ok(())
    }

    fn unpin_all(&mut self) {
        for (prog, _) in &self.links {
            let path = self.dir.join(prog);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    log::warn!("could not unpin {}: {e}; remove it by hand", path.display());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        self.pinned = false;
    }

    /// At stop: drops the daemon's references. Pinned killers stay attached (the pins hold
    /// them); unpinned ones are detached. Returns whether they stay.
    pub fn release(self) -> bool {
        if self.pinned {
            log::info!(
                "the exec kill stays attached while leakwatch is down (pinned in {}): frozen credentials still cannot run; the next start takes over",
                self.dir.display()
            );
        }
        self.pinned
    }
}

/// Pins the link behind `link` at `path` through a second descriptor (aya's `FdLink::pin`
/// consumes the link and drops it on failure, which would detach a killer).
fn pin(link: &FdLink, path: &Path) -> Result<()> {
    let id = link
        .info()
        .map_err(|e| anyhow!("reading the link's id: {e}"))?
        .id();
    #[repr(C)]
    struct ById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let fd = bpf(
        BPF_LINK_GET_FD_BY_ID,
        &ById {
            id,
            next_id: 0,
            open_flags: 0,
        },
    )
    .context("opening the link by id")?;
    // SAFETY: a new descriptor the kernel just returned, owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c = CString::new(path.as_os_str().as_bytes()).context("a NUL in the pin path")?;
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        // The kernel wants every byte past the command's fields zero: no padding left unset.
        zero: u32,
    }
    let attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
        zero: 0,
    };
    match bpf(BPF_OBJ_PIN, &attr) {
        Ok(_) => Ok(()),
        // This daemon's own pin from before an unpin that failed: replace it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            std::fs::remove_file(path)?;
            bpf(BPF_OBJ_PIN, &attr).map(|_| ()).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised bpf_attr prefix of its own size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
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
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
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
