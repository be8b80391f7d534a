//! Write records: the payload of one write-family call (write, writev, pwrite64, pwritev,
//! pwritev2, sendto, sendmsg, sendmmsg) by a process in scope, with what its fd named at the
//! call (file identity, the path when the fd changed, the peer of a socket).
use anyhow::{bail, Result};
use leakwatch_common::*;

use super::Task;

/// What an fd refers to, from the inode's mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Socket,
    Pipe,
    /// A character device: a terminal when its path is one, else e.g. /dev/null.
    Char,
    Other,
    /// The kernel could not resolve the fd.
    #[default]
    Unknown,
}

impl FileKind {
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o140000 => FileKind::Socket,
            0o010000 => FileKind::Pipe,
            0o020000 => FileKind::Char,
            0 => FileKind::Unknown,
            _ => FileKind::Other,
        }
    }
}

/// One write-family call. `data` is plaintext and is zeroized on drop.
#[derive(Debug, Default)]
pub struct WriteEvent {
    pub task: Task,
    pub fd: i32,
    /// Bytes the call passed.
    pub total: u64,
    /// Bytes of `total` the kernel did not copy (capture cap, iovec limit, unreadable page).
    pub bytes_dropped: u64,
    pub iov_dropped: u32,
    /// pwrite offset, or -1; by reference, where the bytes landed in the file.
    pub offset: i64,
    pub file: FileId,
    /// Kernel address of the fd's inode (0 when unresolved): how `HELD` names the file.
    pub inode: u64,
    /// Set when the fd named a new open file: its absolute path as the kernel walked it.
    pub path: Option<String>,
    pub path_partial: bool,
    /// The socket's remote end (or the datagram's destination).
    pub peer: Option<Peer>,
    pub data: Vec<u8>,
    /// Calls this event stands for: 1, or more for merged by-reference writes.
    pub calls: u32,
    /// Kernel time of the first of them (`task.ktime_ns` is the last's, which settling
    /// needs; latency is timed from the first).
    pub first_ktime_ns: u64,
}

impl WriteEvent {
    pub fn kind(&self) -> FileKind {
        if self.task.flags & WRITE_F_NO_FILE != 0 {
            FileKind::Unknown
        } else {
            FileKind::from_mode(self.file.mode)
        }
    }

    pub fn truncated(&self) -> bool {
        self.task.flags & WRITE_F_TRUNCATED != 0 || self.bytes_dropped > 0
    }

    pub fn new_file(&self) -> bool {
        self.task.flags & WRITE_F_NEW_FILE != 0
    }

    /// No payload: `total` bytes at file position `offset` of a file the daemon holds.
    pub fn by_ref(&self) -> bool {
        self.task.flags & WRITE_F_BY_REF != 0
    }

    /// TLS plaintext (`SSL_write`), before encryption.
    pub fn tls(&self) -> bool {
        self.task.flags & WRITE_F_TLS != 0
    }

    /// Every call the record stands for had returned when the kernel sent it.
    pub fn settled(&self) -> bool {
        self.task.flags & WRITE_F_SETTLED != 0
    }
}

impl Drop for WriteEvent {
    fn drop(&mut self) {
        crate::wipe::vec(&mut self.data);
    }
}

/// Joins path components sent leaf first (`app.log\0log\0var\0`) into `/var/log/app.log`.
pub fn join_path(components: &[u8]) -> String {
    let parts: Vec<&[u8]> = components
        .split(|&b| b == 0)
        .filter(|c| !c.is_empty() && *c != b"/")
        .collect();
    let mut out = String::new();
    for c in parts.iter().rev() {
        out.push('/');
        out.push_str(&String::from_utf8_lossy(c));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

pub(super) fn decode(rec: &[u8]) -> Result<WriteEvent> {
    let Some(h) = WriteHeader::read(rec) else {
        bail!("short write record")
    };
    let rest = &rec[WriteHeader::SIZE..];
    let (plen, dlen) = (h.path_len as usize, h.data_len as usize);
    if plen + dlen > rest.len() || plen > WRITE_PATH_MAX || dlen > WRITE_DATA_MAX {
        bail!(
            "write record claims {plen} path and {dlen} data bytes but carries {}",
            rest.len()
        );
    }
    let new_file = h.hdr.flags & WRITE_F_NEW_FILE != 0;
    let path = new_file.then(|| join_path(&rest[..plen]));
    let peer = (h.hdr.flags & WRITE_F_PEER != 0).then_some(h.peer);
    Ok(WriteEvent {
        task: Task::from_header(&h.hdr),
        fd: h.fd,
        total: h.total,
        bytes_dropped: h.bytes_dropped,
        iov_dropped: h.iov_dropped,
        offset: h.offset,
        file: h.file,
        inode: h.inode,
        path,
        path_partial: h.hdr.flags & WRITE_F_PATH_PARTIAL != 0,
        peer,
        data: rest[plen..plen + dlen].to_vec(),
        calls: h.calls.max(1),
        first_ktime_ns: h.hdr.ktime_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::super::{decode, record, Event};
    use super::*;

    fn header(flags: u32, path_len: u32, data_len: u32) -> WriteHeader {
        WriteHeader {
            hdr: EventHeader {
                kind: EVENT_WRITE,
                probe: PROBE_WRITEV,
                tgid: 42,
                flags,
                ..Default::default()
            },
            fd: 2,
            path_len,
            data_len,
            total: 100,
            bytes_dropped: 100 - data_len as u64,
            file: FileId {
                file: 0xffff_8880_0000_1000,
                ino: 7,
                dev: 1,
                mode: 0o100644,
            },
            ..Default::default()
        }
    }

    #[test]
    fn decodes_path_and_payload() {
        let path = b"app.log\0log\0var\0";
        let tail = [&path[..], b"hello"].concat();
        let rec = record(
            header(WRITE_F_NEW_FILE | WRITE_F_TRUNCATED, path.len() as u32, 5),
            &tail,
        );
        let Event::Write(w) = decode(&rec).unwrap() else {
            panic!("not a write")
        };
        assert_eq!(w.path.as_deref(), Some("/var/log/app.log"));
        assert_eq!(w.data, b"hello");
        assert_eq!(w.fd, 2);
        assert_eq!(w.kind(), FileKind::File);
        assert!(w.truncated());
        assert_eq!(w.task.probe_name(), "sys_enter_writev");
    }

    #[test]
    fn no_path_without_the_new_file_flag() {
        let rec = record(header(0, 0, 3), b"abc");
        let Event::Write(w) = decode(&rec).unwrap() else {
            panic!()
        };
        assert_eq!(w.path, None);
        assert!(w.peer.is_none());
    }

    #[test]
    fn rejects_lengths_beyond_the_record() {
        assert!(decode(&record(header(WRITE_F_NEW_FILE, 10, 10), b"short")).is_err());
    }

    #[test]
    fn kinds_from_mode_and_paths() {
        assert_eq!(FileKind::from_mode(0o140777), FileKind::Socket);
        assert_eq!(FileKind::from_mode(0o010600), FileKind::Pipe);
        assert_eq!(FileKind::from_mode(0o020620), FileKind::Char);
        assert_eq!(join_path(b"3\0pts\0dev\0"), "/dev/pts/3");
        assert_eq!(join_path(b"x\0/\0"), "/x");
        assert_eq!(join_path(b""), "/");
    }
}
