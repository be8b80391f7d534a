//! Exec records: an exec's new image with the strings the kernel captured from it, and
//! the notice the kernel sends when it killed an exec for carrying a frozen credential.
use anyhow::{bail, Result};
use leakwatch_common::*;

use super::Task;

/// An exec that ran (recorded at `sched_process_exec`), with the argv and env strings of
/// its new image. They are plaintext and are zeroized on drop. They stay in one buffer as
/// the kernel laid them out and are split only when read: an environment already known
/// clean (`pipeline::clean`) is never split at all.
#[derive(Debug, Default)]
pub struct ExecEvent {
    /// The process after the exec: `task.comm` is already the new image's.
    pub task: Task,
    pub filename: String,
    /// The argument area, then the environment area: NUL-terminated strings.
    strings: Vec<u8>,
    /// Where the environment starts in `strings`.
    arg_bytes: usize,
    pub bytes_dropped: u64,
}

impl ExecEvent {
    pub fn argv(&self) -> Strings<'_> {
        Strings::of(&self.strings[..self.arg_bytes])
    }

    pub fn env(&self) -> Strings<'_> {
        Strings::of(self.env_area())
    }

    /// The environment as the kernel laid it out: every variable, NUL-terminated.
    pub fn env_area(&self) -> &[u8] {
        &self.strings[self.arg_bytes..]
    }

    /// Strings captured, argv and env.
    pub fn strings_count(&self) -> usize {
        self.argv().count() + self.env().count()
    }

    /// The comm the kernel gives the new image: the filename's last component, 15 bytes.
    pub fn new_comm(&self) -> String {
        // Exec'd by fd (`/dev/fd/N`): the kernel names the task after the file's own name
        // (the record's comm, read at `sched_process_exec`), not after `N`.
        if crate::procs::by_fd(&self.filename) && !self.task.comm.is_empty() {
            return self.task.comm.to_string();
        }
        let base = self.filename.rsplit('/').next().unwrap_or(&self.filename);
        base.chars().take(15).collect()
    }

    /// Strings are missing (the areas did not fit the record, or could not be read).
    pub fn truncated(&self) -> bool {
        self.bytes_dropped > 0 || self.task.flags & EXEC_F_COUNT_INCOMPLETE != 0
    }

    pub fn killed(&self) -> bool {
        self.task.flags & EXEC_F_KILLED != 0
    }
}

impl Drop for ExecEvent {
    fn drop(&mut self) {
        // explicit_bzero: a memset the compiler may not drop; `zeroize` writes byte by byte,
        // which on a 128 KiB environment cost more than scanning it.
        // SAFETY: the buffer's own pointer and length.
        unsafe {
            libc::explicit_bzero(self.strings.as_mut_ptr().cast(), self.strings.len());
        }
    }
}

/// The kernel killed a process at exec for carrying a frozen credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnforceNotice {
    pub task: Task,
    pub hash: u64,
    /// The exec hook whose program killed (`PROBE_EXECVE`, `_EXECVEAT`, `_EXEC_IMAGE`).
    pub exec_probe: u32,
}

pub(super) fn decode_enforce(rec: &[u8]) -> Result<EnforceNotice> {
    let Some(e) = EnforceEvent::read(rec) else {
        bail!("short enforce record")
    };
    Ok(EnforceNotice {
        task: Task::from_header(&e.hdr),
        hash: e.hash,
        exec_probe: e.exec_probe,
    })
}

pub(super) fn decode_exec(rec: &[u8]) -> Result<ExecEvent> {
    let Some(h) = ExecHeader::read(rec) else {
        bail!("short exec record")
    };
    let data = &rec[ExecHeader::SIZE..];
    if h.data_len as usize > data.len() {
        bail!(
            "exec record claims {} data bytes but carries {}",
            h.data_len,
            data.len()
        );
    }
    let data = &data[..h.data_len as usize];
    let name_end = memchr::memchr(0, data).unwrap_or(data.len());
    let filename = String::from_utf8_lossy(&data[..name_end]).into_owned();
    let rest = data.get(name_end + 1..).unwrap_or_default();
    if h.arg_bytes as usize > rest.len() {
        bail!(
            "exec record claims {} argv bytes but carries {}",
            h.arg_bytes,
            rest.len()
        );
    }
    Ok(ExecEvent {
        task: Task::from_header(&h.hdr),
        filename,
        strings: rest.to_vec(),
        arg_bytes: h.arg_bytes as usize,
        bytes_dropped: h.bytes_dropped,
    })
}

/// The NUL-terminated strings of an area, in order; a last string without its NUL (cut)
/// counts too, and so do empty strings (`prog ""`).
#[derive(Clone)]
pub struct Strings<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Strings<'a> {
    pub fn of(area: &'a [u8]) -> Self {
        Strings {
            rest: (!area.is_empty()).then(|| area.strip_suffix(&[0]).unwrap_or(area)),
        }
    }
}

impl<'a> Iterator for Strings<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let r = self.rest?;
        match memchr::memchr(0, r) {
            Some(i) => {
                self.rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                self.rest = None;
                Some(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, record, Event};
    use super::*;

    fn header(arg_bytes: u32, data_len: u32) -> ExecHeader {
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"env");
        ExecHeader {
            hdr: EventHeader {
                kind: EVENT_EXEC,
                pid: 10,
                tgid: 10,
                ppid: 9,
                comm,
                ..Default::default()
            },
            arg_bytes,
            data_len,
            ..Default::default()
        }
    }

    fn exec(h: ExecHeader, data: &[u8]) -> ExecEvent {
        let Event::Exec(e) = decode(&record(h, data)).unwrap() else {
            panic!("not exec")
        };
        e
    }

    #[test]
    fn decodes_exec_strings() {
        let data = b"/usr/bin/env\0env\0A=1\0/bin/true\0PATH=/bin\0SECRET=x\0";
        let mut h = header(18, data.len() as u32);
        h.bytes_dropped = 5;
        let e = exec(h, data);
        assert_eq!(e.filename, "/usr/bin/env");
        let argv: Vec<&[u8]> = e.argv().collect();
        assert_eq!(argv, [&b"env"[..], b"A=1", b"/bin/true"]);
        let env: Vec<&[u8]> = e.env().collect();
        assert_eq!(env, [&b"PATH=/bin"[..], b"SECRET=x"]);
        assert_eq!(e.task.comm, "env");
        assert_eq!(e.task.ppid, 9);
        assert_eq!(e.new_comm(), "env");
        assert_eq!(e.strings_count(), 5);
        assert_eq!(e.env_area(), b"PATH=/bin\0SECRET=x\0");
        assert!(e.truncated());
    }

    #[test]
    fn empty_strings_are_strings_and_a_cut_last_one_counts() {
        // `prog "" x` with an environment cut inside its second variable.
        let data = b"/p\0prog\0\0x\0A=1\0B=par";
        let mut h = header(8, data.len() as u32);
        h.hdr.flags = EXEC_F_COUNT_INCOMPLETE;
        let e = exec(h, data);
        let argv: Vec<&[u8]> = e.argv().collect();
        assert_eq!(argv, [&b"prog"[..], b"", b"x"]);
        let env: Vec<&[u8]> = e.env().collect();
        assert_eq!(env, [&b"A=1"[..], b"B=par"]);
        assert!(e.truncated());
    }

    #[test]
    fn no_arguments_and_no_environment() {
        let e = exec(header(0, 3), b"/x\0");
        assert_eq!(e.argv().count(), 0);
        assert_eq!(e.env().count(), 0);
        assert!(!e.truncated());
    }

    #[test]
    fn one_empty_argument_is_a_string() {
        let e = exec(header(1, 4), b"/x\0\0");
        let argv: Vec<&[u8]> = e.argv().collect();
        assert_eq!(argv, [&b""[..]]);
        assert_eq!(e.strings_count(), 1);
    }

    #[test]
    fn rejects_a_record_shorter_than_it_claims() {
        assert!(decode(&record(header(0, 100), b"short")).is_err());
    }

    #[test]
    fn more_argv_bytes_than_carried_is_a_bad_record() {
        assert!(decode(&record(header(u32::MAX, 4), b"/x\0a")).is_err());
        assert!(decode(&record(header(2, 4), b"/x\0a")).is_err());
    }

    #[test]
    fn new_comm_is_15_bytes_of_basename() {
        let mut e = ExecEvent::default();
        e.filename = "/opt/a-very-long-program-name".into();
        assert_eq!(e.new_comm(), "a-very-long-pro");
        // By fd: the kernel's comm, taken after the exec.
        e.filename = "/dev/fd/3".into();
        e.task.comm = "cat".into();
        assert_eq!(e.new_comm(), "cat");
    }
}
