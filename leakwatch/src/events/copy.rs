//! Records of bytes that never pass through a write syscall: in-kernel copies
//! (`copy_file_range`, `sendfile`, `splice`, `tee`: both ends and the bytes moved) and
//! core dumps (a process that died after the kernel wrote its core, with its cwd).
use anyhow::{bail, Result};
use leakwatch_common::*;

use super::{write::join_path, FileKind, Task};

/// A process that dumped core; the file is complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreEvent {
    pub task: Task,
    /// The signal that made it dump.
    pub signal: i32,
    /// Its working directory (where a relative `core_pattern` puts the core), if read whole.
    pub cwd: Option<String>,
}

/// One end of a copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyEnd {
    pub fd: i32,
    pub kind: FileKind,
    pub dev: u32,
    pub ino: u64,
    /// Regular files and devices: the absolute path (None: unknown or cut).
    pub path: Option<String>,
    /// Sockets: the remote end, `ip:port`.
    pub remote: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyEvent {
    pub task: Task,
    /// Where the source was read from; None when unknown (a pipe).
    pub src_off: Option<u64>,
    pub bytes: u64,
    pub in_scope: bool,
    pub src: CopyEnd,
    pub dst: CopyEnd,
}

impl CopyEvent {
    /// The syscall (`copy_file_range`, `sendfile`, `splice`, `tee`).
    pub fn call(&self) -> &'static str {
        match self.task.probe {
            PROBE_COPY_FILE_RANGE => "copy_file_range",
            PROBE_SENDFILE => "sendfile",
            PROBE_SPLICE => "splice",
            _ => "tee",
        }
    }
}

pub(super) fn decode_core(rec: &[u8]) -> Result<CoreEvent> {
    let Some(c) = leakwatch_common::CoreEvent::read(rec) else {
        bail!("short core record")
    };
    let len = (c.cwd_len as usize).min(c.cwd.len());
    let cwd = (len > 0 && c.cwd_partial == 0).then(|| join_path(&c.cwd[..len]));
    Ok(CoreEvent {
        task: Task::from_header(&c.hdr),
        signal: (c.exit_code & 0x7f) as i32,
        cwd,
    })
}

pub(super) fn decode_copy(rec: &[u8]) -> Result<CopyEvent> {
    let Some(c) = leakwatch_common::CopyEvent::read(rec) else {
        bail!("short copy record")
    };
    let end = |e: &leakwatch_common::CopyEnd, paths: &[u8]| {
        let len = (e.path_len as usize).min(paths.len());
        let partial = e.flags & WRITE_F_PATH_PARTIAL != 0;
        CopyEnd {
            fd: e.fd,
            kind: if e.flags & WRITE_F_NO_FILE != 0 {
                FileKind::Unknown
            } else {
                FileKind::from_mode(e.file.mode)
            },
            dev: e.file.dev,
            ino: e.file.ino,
            path: (len > 0 && !partial).then(|| join_path(&paths[..len])),
            remote: (e.flags & WRITE_F_PEER != 0)
                .then(|| super::format_peer(&e.peer))
                .flatten(),
        }
    };
    Ok(CopyEvent {
        task: Task::from_header(&c.hdr),
        src_off: u64::try_from(c.src_off).ok(),
        bytes: c.bytes,
        in_scope: c.in_scope != 0,
        src: end(&c.src, &c.paths[..COPY_PATH_MAX]),
        dst: end(&c.dst, &c.paths[COPY_PATH_MAX..]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{decode, record, Event};

    #[test]
    fn copy_records_decode_both_ends() {
        let mut c = leakwatch_common::CopyEvent {
            hdr: EventHeader {
                kind: EVENT_COPY,
                probe: PROBE_COPY_FILE_RANGE,
                ..Default::default()
            },
            src_off: 4096,
            bytes: 100,
            in_scope: 1,
            _pad: 0,
            src: leakwatch_common::CopyEnd {
                fd: 3,
                path_len: 10,
                file: FileId {
                    mode: 0o100644,
                    ..Default::default()
                },
                ..Default::default()
            },
            dst: leakwatch_common::CopyEnd {
                fd: 4,
                flags: WRITE_F_PEER,
                file: FileId {
                    mode: 0o140777,
                    ..Default::default()
                },
                peer: Peer {
                    family: AF_INET,
                    port: 80,
                    addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    ..Default::default()
                },
                ..Default::default()
            },
            paths: [0; 2 * COPY_PATH_MAX],
        };
        c.paths[..10].copy_from_slice(b"a.env\0tmp\0");
        let Ok(Event::Copy(e)) = decode(&record(c, b"")) else {
            panic!("not a copy")
        };
        assert_eq!(e.call(), "copy_file_range");
        assert_eq!(e.src.path.as_deref(), Some("/tmp/a.env"));
        assert_eq!(e.src.kind, FileKind::File);
        assert_eq!(e.src_off, Some(4096));
        assert_eq!(e.dst.remote.as_deref(), Some("127.0.0.1:80"));
        assert_eq!(e.dst.kind, FileKind::Socket);
        assert!(e.in_scope);
        c.src_off = -1;
        c.src.flags = WRITE_F_PATH_PARTIAL;
        let Ok(Event::Copy(e)) = decode(&record(c, b"")) else {
            panic!("not a copy")
        };
        assert_eq!((e.src_off, e.src.path), (None, None));
        assert!(decode(&record(c, b"")[..100]).is_err());
    }

    #[test]
    fn core_records_carry_signal_and_cwd() {
        let mut c = leakwatch_common::CoreEvent {
            hdr: EventHeader {
                kind: EVENT_CORE,
                probe: PROBE_CORE,
                ..Default::default()
            },
            exit_code: 0x80 | 6,
            cwd_len: 9,
            cwd_partial: 0,
            _pad: 0,
            cwd: [0; WRITE_PATH_MAX],
        };
        c.cwd[..9].copy_from_slice(b"app\0srv\0\0");
        let Ok(Event::Core(e)) = decode(&record(c, b"")) else {
            panic!("not a core")
        };
        assert_eq!(e.signal, 6);
        assert_eq!(e.cwd.as_deref(), Some("/srv/app"));
    }
}
