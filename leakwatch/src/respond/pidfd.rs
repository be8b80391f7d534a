//! Handles on the processes a sweep stops and kills. A pidfd names one process, never a
//! later one given the same pid, so each holder is checked against its start time once,
//! signalled without reading /proc again, and its death is waited for with one poll(2) on
//! all of them (a pidfd turns readable when every thread of the process has exited): no
//! polling loop over /proc, and the report goes out as soon as the last one is a zombie.
//! Where pidfds are not available (before Linux 5.3), the /proc checks stand in.
use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::procscan::{self, Proc};

enum Handle {
    /// Open on the process the sweep found.
    Fd(OwnedFd),
    /// It had already exited (or its pid names another process now).
    Gone,
    /// No pidfd: signal and confirm through /proc, checking the start time each time.
    Proc,
}

pub struct Target {
    proc: Proc,
    handle: Handle,
}

impl Target {
    pub fn open(p: &Proc) -> Target {
        let handle = match open_verified(p) {
            Ok(Some(fd)) => Handle::Fd(fd),
            Ok(None) => Handle::Gone,
            Err(_) => Handle::Proc,
        };
        Target {
            proc: p.clone(),
            handle,
        }
    }

    /// The pidfd, when the process was found alive and pidfds are available.
    pub fn fd(&self) -> Option<&OwnedFd> {
        match &self.handle {
            Handle::Fd(fd) => Some(fd),
            _ => None,
        }
    }

    /// The process's real uid, asked of the pidfd (PIDFD_GET_INFO, Linux 6.13+): one ioctl
    /// instead of generating /proc/PID/status. None without a pidfd or that ioctl.
    pub fn uid(&self) -> Option<u32> {
        /// `struct pidfd_info` as of its first version (64 bytes).
        #[repr(C)]
        #[derive(Default)]
        struct PidfdInfo {
            mask: u64,
            cgroupid: u64,
            pid: u32,
            tgid: u32,
            ppid: u32,
            ruid: u32,
            rgid: u32,
            euid: u32,
            egid: u32,
            suid: u32,
            sgid: u32,
            fsuid: u32,
            fsgid: u32,
            exit_code: i32,
        }
        const PIDFD_INFO_CREDS: u64 = 2;
        // _IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)
        const PIDFD_GET_INFO: u64 = (3 << 30) | (64 << 16) | (0xFF << 8) | 11;
        let fd = self.fd()?;
        let mut info = PidfdInfo {
            mask: PIDFD_INFO_CREDS,
            ..Default::default()
        };
        // SAFETY: the ioctl writes at most size_of::<PidfdInfo>() (encoded in the request)
        // into the struct we own.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), PIDFD_GET_INFO as _, &mut info) };
        (r == 0 && info.mask & PIDFD_INFO_CREDS != 0).then_some(info.ruid)
    }

    pub fn signal(&self, sig: i32) {
        match &self.handle {
            // SAFETY: pidfd_send_signal on an fd we own, no siginfo, no flags.
            Handle::Fd(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            Handle::Gone => {}
            Handle::Proc => {
                if same(&self.proc) {
                    // SAFETY: kill(2) on a pid just verified to name the same process.
                    unsafe { libc::kill(self.proc.pid as i32, sig) };
                }
            }
        }
    }
}

/// A pidfd on the process `p` names: Ok(None) when it has exited (or its pid names another
/// process now), Err when pidfds are not available.
fn open_verified(p: &Proc) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid as libc::c_int, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: a fresh fd this function owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pid may have been reused between the scan and the open: the fd is only ours if
    // the process it names started when the one we found did.
    Ok(same(p).then_some(fd))
}

/// The start time in /proc/PID/stat still matches `p`'s.
fn same(p: &Proc) -> bool {
    procscan::stat(p.pid).is_some_and(|(q, _)| q.start_time == p.start_time)
}

/// Waits until every target is gone (every thread exited) or `deadline`; for each, whether
/// it was confirmed gone.
pub fn wait_all_gone(targets: &[Target], deadline: Instant) -> Vec<bool> {
    let mut done: Vec<bool> = targets
        .iter()
        .map(|t| matches!(t.handle, Handle::Gone))
        .collect();
    loop {
        for (i, t) in targets.iter().enumerate() {
            if !done[i] && matches!(t.handle, Handle::Proc) {
                done[i] = procscan::gone(&t.proc);
            }
        }
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut which: Vec<usize> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            if let (false, Handle::Fd(fd)) = (done[i], &t.handle) {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        let polling_proc = targets
            .iter()
            .zip(&done)
            .any(|(t, d)| !d && matches!(t.handle, Handle::Proc));
        if fds.is_empty() && !polling_proc {
            return done;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return done;
        }
        // /proc stand-ins are looked at again every millisecond.
        let wait = if polling_proc {
            left.min(Duration::from_millis(1))
        } else {
            left
        };
        // SAFETY: `fds` is a valid array of its length for the duration of the call.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                wait.as_millis().max(1) as i32,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Cannot poll: fall back to /proc for what is left.
            for (i, t) in targets.iter().enumerate() {
                if !done[i] {
                    done[i] = procscan::gone(&t.proc);
                }
            }
            return done;
        }
        for (k, f) in fds.iter().enumerate() {
            if f.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                done[which[k]] = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_of(pid: u32) -> Proc {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        procscan::parse_stat(pid, &text).unwrap().0
    }

    #[test]
    fn uid_from_the_pidfd_matches_status() {
        // A child under another real uid, so a constant cannot pass.
        let mut c = std::process::Command::new("setpriv")
            .args([
                "--reuid=4242",
                "--regid=4242",
                "--clear-groups",
                "sleep",
                "30",
            ])
            .spawn()
            .unwrap();
        let status_uid = || {
            std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                .ok()?
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse::<u32>()
                .ok()
        };
        // setpriv execs sleep once it has changed uid.
        let deadline = Instant::now() + Duration::from_secs(5);
        while status_uid() != Some(4242) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Target::open(&proc_of(c.id()));
        let got = t.uid();
        // Linux 6.13 added PIDFD_GET_INFO; older kernels answer None and /proc is read.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(['.', '-'])
            .map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        if (major, minor) >= (6, 13) {
            assert_eq!(got, Some(4242));
        } else {
            assert!(got.is_none() || got == Some(4242));
        }
        c.kill().unwrap();
        let _ = c.wait();
    }

    #[test]
    fn a_killed_child_is_confirmed_gone_and_a_live_one_is_not() {
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut doomed = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let t = [
            Target::open(&proc_of(live.id())),
            Target::open(&proc_of(doomed.id())),
        ];
        t[1].signal(libc::SIGKILL);
        let r = wait_all_gone(&t, Instant::now() + Duration::from_millis(300));
        assert_eq!(r, vec![false, true]);
        live.kill().unwrap();
        let _ = live.wait();
        let _ = doomed.wait();
    }

    #[test]
    fn a_pid_that_names_another_process_now_is_never_signalled() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut p = proc_of(c.id());
        // As if the holder found by the scan had died and its pid been reused.
        p.start_time += 1;
        let t = Target::open(&p);
        t.signal(libc::SIGKILL);
        let r = wait_all_gone(&[t], Instant::now() + Duration::from_millis(50));
        assert_eq!(r, vec![true], "the process found is gone");
        assert!(
            c.try_wait().unwrap().is_none(),
            "the new process was signalled"
        );
        c.kill().unwrap();
        let _ = c.wait();
    }
}
