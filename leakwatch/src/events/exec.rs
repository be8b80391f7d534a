//! Typed events decoded from kernel ring-buffer records. Decoding never panics on malformed
//! input: a short or inconsistent record is an error the daemon counts and survives.
use anyhow::{bail, Result};
use leakwatch_common::*;
use zeroize::Zeroize;

/// An `execve`/`execveat`, with the strings the kernel could capture. The argv and env
/// bytes are plaintext and are zeroized on drop.
#[derive(Debug, Default)]
pub struct ExecEvent {
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// `comm` of the task before the exec.
    pub old_comm: String,
    pub filename: String,
    pub argv: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub flags: u32,
    pub strings_dropped: u32,
    pub bytes_dropped: u64,
    pub probe: u32,
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
            || self.flags & EXEC_F_COUNT_INCOMPLETE != 0
    }

    pub fn killed(&self) -> bool {
        self.flags & EXEC_F_KILLED != 0
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
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub hash: u64,
    pub cgroup_id: u64,
    pub comm: String,
}

#[derive(Debug)]
pub enum Event {
    Exec(ExecEvent),
    Enforce(EnforceNotice),
}

pub fn comm_str(c: &[u8; 16]) -> String {
    let n = c.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..n]).into_owned()
}

/// Decodes one ring-buffer record.
pub fn decode(rec: &[u8]) -> Result<Event> {
    if rec.len() < 4 {
        bail!("record of {} bytes is too short", rec.len());
    }
    match u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]) {
        EVENT_EXEC => decode_exec(rec).map(Event::Exec),
        EVENT_ENFORCE => {
            let Some(e) = EnforceEvent::read(rec) else {
                bail!("short enforce record")
            };
            Ok(Event::Enforce(EnforceNotice {
                pid: e.pid,
                tgid: e.tgid,
                ppid: e.ppid,
                uid: e.uid,
                hash: e.hash,
                cgroup_id: e.cgroup_id,
                comm: comm_str(&e.comm),
            }))
        }
        k => bail!("unknown record kind {k}"),
    }
}

fn decode_exec(rec: &[u8]) -> Result<ExecEvent> {
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
    let mut parts = data.split(|&b| b == 0);
    let filename = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut argv = Vec::with_capacity(h.argc as usize);
    for _ in 0..h.argc {
        argv.push(parts.next().unwrap_or_default().to_vec());
    }
    let mut env = Vec::with_capacity(h.envc as usize);
    for _ in 0..h.envc {
        env.push(parts.next().unwrap_or_default().to_vec());
    }
    Ok(ExecEvent {
        pid: h.pid,
        tgid: h.tgid,
        ppid: h.ppid,
        uid: h.uid,
        gid: h.gid,
        cgroup_id: h.cgroup_id,
        ktime_ns: h.ktime_ns,
        old_comm: comm_str(&h.comm),
        filename,
        argv,
        env,
        flags: h.flags,
        strings_dropped: h.strings_dropped,
        bytes_dropped: h.bytes_dropped,
        probe: h.probe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(h: ExecHeader, data: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; ExecHeader::SIZE];
        // SAFETY: v has room for the header; unaligned write of a POD value.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut ExecHeader, h) };
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn decodes_exec_strings() {
        let data = b"/usr/bin/env\0env\0A=1\0/bin/true\0PATH=/bin\0SECRET=x\0";
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"bash");
        let h = ExecHeader {
            kind: EVENT_EXEC,
            pid: 10,
            tgid: 10,
            ppid: 9,
            argc: 3,
            envc: 2,
            data_len: data.len() as u32,
            comm,
            bytes_dropped: 5,
            ..Default::default()
        };
        let Event::Exec(e) = decode(&record(h, data)).unwrap() else {
            panic!("not exec")
        };
        assert_eq!(e.filename, "/usr/bin/env");
        assert_eq!(
            e.argv,
            vec![b"env".to_vec(), b"A=1".to_vec(), b"/bin/true".to_vec()]
        );
        assert_eq!(e.env, vec![b"PATH=/bin".to_vec(), b"SECRET=x".to_vec()]);
        assert_eq!(e.old_comm, "bash");
        assert_eq!(e.new_comm(), "env");
        assert!(e.truncated());
    }

    #[test]
    fn rejects_malformed_records() {
        assert!(decode(&[1, 0]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0, 0]).is_err());
        let h = ExecHeader {
            kind: EVENT_EXEC,
            data_len: 100,
            ..Default::default()
        };
        assert!(decode(&record(h, b"short")).is_err());
    }

    #[test]
    fn missing_strings_decode_as_empty() {
        let h = ExecHeader {
            kind: EVENT_EXEC,
            argc: 3,
            data_len: 4,
            ..Default::default()
        };
        let Event::Exec(e) = decode(&record(h, b"/x\0a")).unwrap() else {
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
