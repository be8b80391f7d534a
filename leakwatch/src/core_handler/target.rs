//! Where the core goes on to, as the kernel would have sent it without leakwatch: a
//! previous pipe handler started with the expanded arguments, the kernel's empty
//! environment and cwd `/`; or a core file created as the kernel creates it — relative to
//! the crashed process's cwd, with its credentials (so permissions are checked as they
//! would be), unlinking an old one first, `O_CREAT|O_EXCL|O_NOFOLLOW`, mode 0600 under its
//! umask, a regular file with one link — and cut at its RLIMIT_CORE.
use std::{
    ffi::CString,
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    process::{Child, Command, Stdio},
};

use super::{crashed::Crash, pattern};

/// The kernel writes no core file under this limit (an ELF core's minimum, a page).
pub const MIN_CORE: u64 = 4096;

/// The bounded buffer between leakwatch and a previous handler (`/proc/sys/fs/pipe-max-size`
/// permitting).
pub const PIPE_SIZE: i32 = 1 << 20;

pub enum Target {
    /// A previous handler's stdin (our write end, non-blocking).
    Pipe(OwnedFd),
    /// A core file and how many bytes of it the limit allows.
    File { file: File, limit: u64 },
    /// Nothing to pass on to (RLIMIT_CORE too small for a file, as with the kernel).
    Nothing,
}

/// Where the core goes.
pub struct Opened {
    pub target: Target,
    /// The previous handler, when it is one.
    pub child: Option<Child>,
    /// Where the core is kept, for the report: the file, or `|handler args…`.
    pub path: Option<String>,
    /// Why it cannot be passed on, one sentence each.
    pub problems: Vec<String>,
}

impl Opened {
    fn nothing(problems: Vec<String>) -> Opened {
        Opened {
            target: Target::Nothing,
            child: None,
            path: None,
            problems,
        }
    }
}

/// Opens where `previous` (a core_pattern) sends this crash's core.
pub fn open(previous: &str, crash: &Crash, core_uses_pid: bool) -> Opened {
    if let Some(cmd) = previous.strip_prefix('|') {
        let mut values = crash.values.clone();
        let pidfd = cmd.contains("%F").then(|| pidfd(crash.pid)).flatten();
        if let Some(fd) = &pidfd {
            values.pidfd = fd.as_raw_fd().to_string();
        }
        let argv = pattern::pipe_argv(cmd, &values);
        let shown = format!("|{}", argv.join(" "));
        return match spawn(&argv, pidfd) {
            Ok((child, input)) => Opened {
                target: Target::Pipe(input),
                child: Some(child),
                path: Some(shown),
                problems: Vec::new(),
            },
            Err(e) => Opened::nothing(vec![format!(
                "cannot run the previous handler `{shown}`: {e}"
            )]),
        };
    }
    let path = pattern::file_path(previous, &crash.values, core_uses_pid);
    if crash.core_limit < MIN_CORE {
        // Not a problem: the operator's limit, obeyed as the kernel obeys it.
        return Opened::nothing(Vec::new());
    }
    match create(&path, crash) {
        Ok((file, shown)) => Opened {
            target: Target::File {
                file,
                limit: crash.core_limit,
            },
            child: None,
            path: Some(shown),
            problems: Vec::new(),
        },
        Err(e) => Opened::nothing(vec![format!("cannot create the core file {path}: {e}")]),
    }
}

fn pidfd(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: a fresh fd that nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn spawn(argv: &[String], pidfd: Option<OwnedFd>) -> std::io::Result<(Child, OwnedFd)> {
    let Some(prog) = argv.first() else {
        return Err(std::io::Error::other("the pattern names no program"));
    };
    // The kernel runs the helper from `/` without a PATH search.
    let prog = if prog.starts_with('/') {
        prog.clone()
    } else {
        format!("/{prog}")
    };
    let mut c = Command::new(prog);
    c.args(&argv[1..])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        // As from the kernel: no stdout or stderr (and nothing of ours held open by a
        // handler that outlives us).
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(fd) = pidfd.as_ref().map(|f| f.as_raw_fd()) {
        // SAFETY: only fcntl, async-signal-safe, between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = c.spawn()?;
    drop(pidfd);
    let input: OwnedFd = child.stdin.take().expect("stdin was piped").into();
    // SAFETY: fcntl on an fd we own.
    unsafe {
        libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
        let fl = libc::fcntl(input.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(input.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    Ok((child, input))
}

/// The file system credentials of this thread, switched for one creation and restored.
struct AsUser {
    groups: Vec<libc::gid_t>,
}

impl AsUser {
    fn become_(uid: u32, gid: u32, groups: &[u32]) -> AsUser {
        let mut saved = vec![0 as libc::gid_t; 256];
        // SAFETY: getgroups writes at most saved.len() entries. setfsuid/setfsgid and the
        // raw setgroups change only this thread's credentials.
        unsafe {
            let n = libc::getgroups(saved.len() as i32, saved.as_mut_ptr());
            saved.truncate(n.max(0) as usize);
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        AsUser { groups: saved }
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // SAFETY: as above, back to root's.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// Creates the core file as the kernel would; (file, its path for the report).
fn create(path: &str, crash: &Crash) -> Result<(File, String), String> {
    let absolute = path.starts_with('/');
    // A set-uid style dump (%d 2) goes to an absolute path only, as root, never over an
    // existing file.
    let suid_safe = crash.dumpable == 2;
    if suid_safe && !absolute {
        return Err("a set-uid dump (%d = 2) needs an absolute core_pattern, as the kernel requires: not written".into());
    }
    let dirfd = if absolute {
        libc::AT_FDCWD
    } else {
        crash
            .cwd_fd()
            .ok_or("the crashed process's cwd could not be opened, and the pattern is relative")?
    };
    let c = CString::new(path).map_err(|_| "the path has a NUL byte".to_string())?;
    let _as = (!suid_safe).then(|| AsUser::become_(crash.uid, crash.gid, &crash.groups));
    // SAFETY: unlinkat/openat/fstat on a NUL-terminated path and fds we own.
    let fd = unsafe {
        if !suid_safe {
            libc::unlinkat(dirfd, c.as_ptr(), 0);
        }
        libc::openat(
            dirfd,
            c.as_ptr(),
            libc::O_WRONLY
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOFOLLOW
                | libc::O_LARGEFILE
                | libc::O_CLOEXEC,
            (0o600 & !crash.umask) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata().map_err(|e| e.to_string())?;
    use std::os::unix::fs::MetadataExt;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err("it is not a regular file with one link".into());
    }
    let shown = if absolute {
        path.to_string()
    } else {
        std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| path.to_string())
    };
    Ok((file, shown))
}
