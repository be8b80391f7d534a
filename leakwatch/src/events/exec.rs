//! Exec records: an `execve`/`execveat` with the strings the kernel captured, and the
//! notice the kernel sends when it killed one for carrying a frozen credential.
use anyhow::{bail, Result};
use leakwatch_common::*;
use zeroize::Zeroize;

use super::Task;

/// An `execve`/`execveat`, with the strings the kernel could capture. The argv and env
/// bytes are plaintext and are zeroized on drop.
#[derive(Debug, Default)]
pub struct ExecEvent {
    /// The caller; `task.comm` is the image before the exec.
    pub task: Task,
    pub filename: String,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub strings_dropped: u32,
    pub bytes_dropped: u64,
}

impl ExecEvent {
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
        for s in self.argv.iter_mut().chain(self.env.iter_mut()) {
            s.zeroize();
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
    let mut parts = data.split(|&b| b == 0);
    let filename = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut argv = Vec::with_capacity(h.argc.min(4096) as usize);
    for _ in 0..h.argc {
        argv.push(parts.next().unwrap_or_default().to_vec());
    }
    let mut env = Vec::with_capacity(h.envc.min(4096) as usize);
    for _ in 0..h.envc {
        env.push(parts.next().unwrap_or_default().to_vec());
    }
    Ok(ExecEvent {
        task: Task::from_header(&h.hdr),
        filename,
        argv,
        env,
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
        assert_eq!(
            e.argv,
            vec![b"env".to_vec(), b"A=1".to_vec(), b"/bin/true".to_vec()]
        );
        assert_eq!(e.env, vec![b"PATH=/bin".to_vec(), b"SECRET=x".to_vec()]);
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
        assert_eq!(e.argv.len(), 3);
        assert_eq!(e.argv[0], b"a");
    }

    #[test]
    fn new_comm_is_15_bytes_of_basename() {
        let mut e = ExecEvent::default();
        e.filename = "/opt/a-very-long-program-name".into();
        assert_eq!(e.new_comm(), "a-very-long-pro");
    }
}
