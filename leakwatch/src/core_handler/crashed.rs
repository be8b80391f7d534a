//! Who crashed: the values the kernel put in leakwatch's pattern (`pattern::OURS`), and
//! what `/proc/PID` says while the process still exists — it does until the core is
//! read to its end, so this is read first. The cwd is kept open (a relative file
//! pattern is relative to it) before it can go away.
use std::{
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::pattern::Values;

/// The names of the values leakwatch's pattern passes, in order.
const NAMES: [&str; 11] = [
    "%P", "%I", "%s", "%t", "%u", "%g", "%d", "%c", "%C", "%h", "%e",
];

/// One crash.
#[derive(Debug, Default)]
pub struct Crash {
    /// For the previous pattern's specifiers.
    pub values: Values,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub signal: i32,
    /// 2: a set-uid style dump (the kernel writes such files as root, absolute paths only).
    pub dumpable: u32,
    /// RLIMIT_CORE's soft limit (u64::MAX: unlimited).
    pub core_limit: u64,
    pub ppid: u32,
    pub exe: String,
    pub cgroup: Option<String>,
    pub groups: Vec<u32>,
    pub umask: u32,
    /// `/proc/PID/cwd`, opened (O_PATH) while it was there.
    pub cwd: Option<OwnedFd>,
    /// What could not be read, one sentence.
    pub problem: Option<String>,
}

/// The kernel's values, checked; an error sentence for anything else.
pub fn parse(args: &[String]) -> Result<Crash, String> {
    if args.len() != NAMES.len() {
        return Err(format!(
            "core-handler takes the {} values its core_pattern gives ({}), not {} argument(s); \
             it is meant to be run by the kernel: set it up with `leakwatch install --core-handler`",
            NAMES.len(),
            NAMES.join(" "),
            args.len()
        ));
    }
    let num = |i: usize| -> Result<u64, String> {
        args[i].parse::<u64>().map_err(|_| {
            format!(
                "core-handler: {} must be a number, not {:?}; is core_pattern leakwatch's?",
                NAMES[i], args[i]
            )
        })
    };
    let (pid, tid, signal, _time, uid, gid, dumpable, limit) = (
        num(0)?,
        num(1)?,
        num(2)?,
        num(3)?,
        num(4)?,
        num(5)?,
        num(6)?,
        num(7)?,
    );
    if pid == 0 || pid > u32::MAX as u64 {
        return Err(format!("core-handler: %P must be a pid, not {:?}", args[0]));
    }
    let v = Values {
        pid: args[0].clone(),
        host_pid: args[0].clone(),
        tid: args[1].clone(),
        host_tid: args[1].clone(),
        signal: args[2].clone(),
        time: args[3].clone(),
        uid: args[4].clone(),
        gid: args[5].clone(),
        dumpable: args[6].clone(),
        core_limit: args[7].clone(),
        cpu: args[8].clone(),
        hostname: args[9].clone(),
        comm: args[10].clone(),
        exe: String::new(),
        pidfd: String::new(),
    };
    Ok(Crash {
        values: v,
        pid: pid as u32,
        tid: tid as u32,
        uid: uid as u32,
        gid: gid as u32,
        signal: signal as i32,
        dumpable: dumpable as u32,
        core_limit: limit,
        umask: 0o022,
        ..Default::default()
    })
}

/// The last number of a `/proc/…/status` field such as `NSpid:` (the innermost pid
/// namespace's view).
fn innermost(status: &str, field: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().last())
        .map(str::to_string)
}

fn field(status: &str, name: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
}

impl Crash {
    /// Fills in what `/proc/PID` knows; a problem sentence when it cannot be read (the
    /// kernel's values are used alone then).
    pub fn read_proc(&mut self) {
        let dir = format!("/proc/{}", self.pid);
        let status = match fs::read_to_string(format!("{dir}/status")) {
            Ok(s) => s,
            Err(e) => {
                self.problem = Some(format!("cannot read {dir}/status: {e}"));
                return;
            }
        };
        if let Some(p) = innermost(&status, "NSpid:") {
            self.values.pid = p;
        }
        if let Ok(t) = fs::read_to_string(format!("{dir}/task/{}/status", self.tid)) {
            if let Some(i) = innermost(&t, "NSpid:") {
                self.values.tid = i;
            }
        }
        self.ppid = field(&status, "PPid:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.groups = field(&status, "Groups:")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        if let Some(m) = field(&status, "Umask:").and_then(|m| u32::from_str_radix(&m, 8).ok()) {
            self.umask = m;
        }
        if let Ok(exe) = fs::read_link(format!("{dir}/exe")) {
            self.exe = exe.to_string_lossy().into_owned();
            self.values.exe = self.exe.clone();
        }
        self.cgroup = fs::read_to_string(format!("{dir}/cgroup"))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .map(str::to_string)
            });
        let cwd = std::ffi::CString::new(format!("{dir}/cwd")).unwrap_or_default();
        // SAFETY: open(2) on a NUL-terminated path; the fd is owned below.
        let fd = unsafe {
            libc::open(
                cwd.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh fd that nothing else owns.
            self.cwd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// The cwd fd, for `openat`.
    pub fn cwd_fd(&self) -> Option<i32> {
        self.cwd.as_ref().map(|f| f.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_kernels_values_are_checked() {
        let ok = args(&[
            "4242",
            "4243",
            "6",
            "1733212345",
            "1000",
            "100",
            "1",
            "18446744073709551615",
            "",
            "box",
            "Web Content",
        ]);
        let c = parse(&ok).unwrap();
        assert_eq!(
            (c.pid, c.tid, c.signal, c.uid, c.gid),
            (4242, 4243, 6, 1000, 100)
        );
        assert_eq!(c.core_limit, u64::MAX);
        assert_eq!(c.values.comm, "Web Content");
        let e = parse(&args(&["1", "2"])).unwrap_err();
        assert!(e.contains("not 2 argument(s)"), "{e}");
        let mut bad = ok.clone();
        bad[2] = "SIGABRT".into();
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("%s must be a number"), "{e}");
        let mut zero = ok;
        zero[0] = "0".into();
        assert!(parse(&zero).is_err());
    }

    #[test]
    fn proc_of_a_live_process_is_read() {
        let me = std::process::id().to_string();
        let mut c = parse(&args(&[
            &me, &me, "6", "1", "0", "0", "1", "0", "0", "box", "t",
        ]))
        .unwrap();
        c.read_proc();
        assert_eq!(c.problem, None);
        assert!(c.ppid > 0);
        assert!(!c.exe.is_empty());
        assert!(c.cwd.is_some());
        assert_eq!(c.values.pid, me);
    }
}
