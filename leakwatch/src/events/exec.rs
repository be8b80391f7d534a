//! Exec records: an `execve`/`execveat` with the strings the kernel captured, and the
//! notice the kernel sends when it killed one for carrying a frozen credential.
use anyhow::{bail, Result};
use leakwatch_common::*;

use super::Task;

/// An `execve`/`execveat`, with the strings the kernel could capture. The argv and env
/// bytes are plaintext and are zeroized on drop. They stay in one buffer as the kernel
/// laid them out (one copy and two allocations per exec, not one per string: an exec of a
/// 200-variable environment made 200).
#[derive(Debug, Default)]
pub struct ExecEvent {
    /// The caller; `task.comm` is the image before the exec.
    pub task: Task,
    pub filename: String,
    /// The argv and env strings, NUL-separated.
    strings: Vec<u8>,
    /// Each string's (start, end) in `strings`: `argc` argv strings, then env.
    spans: Vec<(u32, u32)>,
    argc: usize,
    pub strings_dropped: u32,
    pub bytes_dropped: u64,
}

impl ExecEvent {
    pub fn argv(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans[..self.argc]
            .iter()
            .map(|&(a, b)| &self.strings[a as usize..b as usize])
    }

    pub fn env(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans[self.argc..]
            .iter()
            .map(|&(a, b)| &self.strings[a as usize..b as usize])
    }

    /// Strings captured, argv and env.
    pub fn strings_count(&self) -> usize {
        self.spans.len()
    }

    /// The comm the kernel gives the new image: the filename's last component, 15 bytes.
    pub fn new_comm(&self) -> String {
        let base = self.filename.rsplit('/').next().unwrap_or(&self.filename);
        base.chars().take(15).collect()
    }

    pub fn truncated(&self) -> bool {
        self.strings_dropped > 0
            || self.bytes_dropped > 0
            || self.task.flags & EXEC_F_COUNT_INCOMPLETE != 0
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
}

pub(super) fn decode_enforce(rec: &[u8]) -> Result<EnforceNotice> {
    let Some(e) = EnforceEvent::read(rec) else {
        bail!("short enforce record")
    };
    Ok(EnforceNotice {
        task: Task::from_header(&e.hdr),
        hash: e.hash,
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
    // Every string carried takes at least its NUL: counts beyond that are a bad record
    // (the fuzzer found that a huge argc made the decoder allocate until OOM).
    if u64::from(h.argc) + u64::from(h.envc) > data.len() as u64 + 1 {
        bail!(
            "exec record claims {} strings in {} bytes",
            u64::from(h.argc) + u64::from(h.envc),
            data.len()
        );
    }
    let name_end = memchr::memchr(0, data).unwrap_or(data.len());
    let filename = String::from_utf8_lossy(&data[..name_end]).into_owned();
    let rest = data.get(name_end + 1..).unwrap_or_default();
    let want = (h.argc as usize).saturating_add(h.envc as usize);
    let mut spans = Vec::with_capacity(want);
    let mut at = 0;
    let mut nuls = memchr::memchr_iter(0, rest);
    while spans.len() < want && at < rest.len() {
        let end = nuls.next().unwrap_or(rest.len());
        spans.push((at as u32, end as u32));
        at = end + 1;
    }
    // Strings the record counts but does not carry decode as empty.
    spans.resize(want, (0, 0));
    Ok(ExecEvent {
        task: Task::from_header(&h.hdr),
        filename,
        strings: rest.to_vec(),
        spans,
        argc: h.argc as usize,
        strings_dropped: h.strings_dropped,
        bytes_dropped: h.bytes_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, record, Event};
    use super::*;

    fn header(argc: u32, envc: u32, data_len: u32) -> ExecHeader {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        ExecHeader {
            hdr: EventHeader {
                kind: EVENT_EXEC,
                pid: 10,
                tgid: 10,
                ppid: 9,
                comm,
                ..Default::default()
            },
            argc,
            envc,
            data_len,
            ..Default::default()
        }
    }

    #[test]
    fn decodes_exec_strings() {
        let data = b"/usr/bin/env\0env\0A=1\0/bin/true\0PATH=/bin\0SECRET=x\0";
        let mut h = header(3, 2, data.len() as u32);
        h.bytes_dropped = 5;
        let Event::Exec(e) = decode(&record(h, data)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, "/usr/bin/env");
        let argv: Vec<&[u8]> = e.argv().collect();
        assert_eq!(argv, [&b"env"[..], b"A=1", b"/bin/true"]);
        let env: Vec<&[u8]> = e.env().collect();
        assert_eq!(env, [&b"PATH=/bin"[..], b"SECRET=x"]);
        assert_eq!(e.task.comm, "bash");
        assert_eq!(e.task.ppid, 9);
        assert_eq!(e.new_comm(), "env");
        assert!(e.truncated());
    }

    #[test]
    fn rejects_a_record_shorter_than_it_claims() {
        assert!(decode(&record(header(0, 0, 100), b"short")).is_err());
    }

    #[test]
    fn more_strings_than_bytes_is_a_bad_record() {
        // Found by `cargo xtask fuzz --target decode`: argc 0xffffffff allocated until OOM.
        assert!(decode(&record(header(u32::MAX, 0, 4), b"/x\0a")).is_err());
        assert!(decode(&record(header(3, 3, 4), b"/x\0a")).is_err());
    }

    #[test]
    fn missing_strings_decode_as_empty() {
        let Event::Exec(e) = decode(&record(header(3, 0, 4), b"/x\0a")).unwrap() else {
            panic!()
        };
        let argv: Vec<&[u8]> = e.argv().collect();
        assert_eq!(argv, [&b"a"[..], b"", b""]);
        assert_eq!(e.env().len(), 0);
    }

    #[test]
    fn new_comm_is_15_bytes_of_basename() {
        let mut e = ExecEvent::default();
        e.filename = "/opt/a-very-long-program-name".into();
        assert_eq!(e.new_comm(), "a-very-long-pro");
    }
}
