//! In-kernel copies (`copy_file_range`, `sendfile`, `splice`, `tee`): every one is an
//! action row (source, destination, bytes); for a process in scope, the copied range of a
//! regular source file is read back here and scanned, and a credential in it is reported
//! where the bytes went — `cp creds.env /tmp/x` is a file finding at `/tmp/x`, a
//! `socket.sendfile()` a socket finding with the remote. The bytes never pass through
//! user memory, so reading the source is the only way to see them.
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
};

use super::{write::describe, Hit, Pipeline};
use crate::{
    detect::{stream::StreamScanner, Detector},
    events::{CopyEnd, CopyEvent, FileKind},
    source::Source,
};

/// Bytes of one copy read back and scanned; the rest is counted as dropped.
pub const SCAN_MAX: u64 = 16 << 20;

pub(super) fn on_copy(p: &mut Pipeline, c: CopyEvent) {
    p.metrics
        .events
        .with_label_values(&[c.task.probe_name()])
        .inc();
    // leakwatch's own copies (the core-handler passes cores on with tee/splice) are
    // neither actions of the watched nor leaks.
    if p.is_leakwatch(&c.task) {
        return;
    }
    if p.actions.enabled() {
        let who = p.procs.quick(&c.task);
        let mut row = crate::actions::Row::new("copy", &who)
            .with("call", c.call())
            .with("bytes", c.bytes)
            .with("fd", c.dst.fd)
            .with("src_fd", c.src.fd);
        if let Some(s) = place(&c.src) {
            row = row.with("src", s);
        }
        if let Some(path) = &c.dst.path {
            row = row.with("path", path.as_str());
        }
        if let Some(r) = &c.dst.remote {
            row = row.with("remote", r.as_str());
        }
        p.actions.record(row);
    }
    let (Some(dst), Some(src_path), Some(off)) = (source_of(&c.dst), &c.src.path, c.src_off) else {
        return;
    };
    if !c.in_scope || c.src.kind != FileKind::File {
        return;
    }
    let want = c.bytes.min(SCAN_MAX);
    if c.bytes > want {
        let probe = c.task.probe_name();
        p.metrics
            .capture_truncated
            .with_label_values(&[probe])
            .inc();
        p.metrics
            .capture_bytes_dropped
            .with_label_values(&[probe])
            .inc_by(c.bytes - want);
    }
    let Some(data) = read_range(src_path, &c.src, off, want) else {
        log::debug!(
            "copy from {src_path} by pid {}: source unreadable",
            c.task.tgid
        );
        p.metrics.fds_unresolved.inc();
        return;
    };
    p.metrics
        .scanned_bytes
        .with_label_values(&[dst.as_str()])
        .inc_by(data.len() as u64);
    let (engine, frozen) = (p.engine.clone(), p.shared.frozen.clone());
    let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
    let d = Detector::new(&engine, fz.as_deref());
    let mut sc = StreamScanner::new(&engine);
    let mut found = sc.feed(&d, &data);
    found.extend(sc.finish(&d));
    let frozen_fp = found
        .iter()
        .find(|f| d.is_frozen(&f.finding))
        .map(|f| f.finding.fingerprint.clone());
    drop(fz);
    if found.is_empty() {
        return;
    }
    let dump = c
        .dst
        .path
        .as_deref()
        .and_then(super::dumps::by_name)
        .or_else(|| super::dumps::by_content(&data));
    let source = match (dst, dump) {
        (Source::File, Some(_)) => Source::CrashDump,
        (s, _) => s,
    };
    let place_dst = c.dst.path.clone().or_else(|| c.dst.remote.clone());
    if let Some(fp) = frozen_fp {
        p.ctx
            .kill_holder(c.task.tgid, &fp, source, place_dst.as_deref());
    }
    let hits = found
        .into_iter()
        .map(|f| {
            let mut h = Hit::new(source, f.finding)
                .with("fd", c.dst.fd)
                .with("bytes", c.bytes)
                .with("probe", c.task.probe_name())
                .with("call", c.call())
                .with("tid", c.task.pid)
                .with("copied_from", src_path.as_str())
                .with("offset", off + f.offset);
            if let Some(kind) = dump {
                h = h.with("dump", kind);
            }
            h.path = c.dst.path.clone();
            h.remote = c.dst.remote.clone();
            h
        })
        .collect();
    let info = describe(&mut p.procs, &c.task);
    p.report.report_at(&info, hits, c.task.ktime_ns);
}

/// Where the bytes went, as a finding's source; None for ends nothing can read back
/// (devices such as /dev/null, unresolved fds).
fn source_of(e: &CopyEnd) -> Option<Source> {
    match e.kind {
        FileKind::File | FileKind::Other => Some(Source::File),
        FileKind::Socket => Some(Source::Socket),
        FileKind::Pipe => Some(Source::Pipe),
        FileKind::Char => e
            .path
            .as_deref()
            .filter(|p| p.starts_with("/dev/pts/") || p.starts_with("/dev/tty"))
            .map(|_| Source::Tty),
        FileKind::Unknown => None,
    }
}

/// An end as the action log names it.
fn place(e: &CopyEnd) -> Option<String> {
    match e.kind {
        FileKind::Pipe => Some(format!("pipe:[{}]", e.ino)),
        _ => e.path.clone().or_else(|| e.remote.clone()),
    }
}

/// The source range, if the file at `path` is still the one copied from (same inode and
/// device).
fn read_range(path: &str, src: &CopyEnd, off: u64, len: u64) -> Option<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .or_else(|_| File::open(path))
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || m.ino() != src.ino || !crate::events::same_dev(src.dev, m.dev()) {
        return None;
    }
    f.seek(SeekFrom::Start(off)).ok()?;
    let mut buf = Vec::with_capacity(len.min(m.len().saturating_sub(off)) as usize);
    f.take(len).read_to_end(&mut buf).ok()?;
    Some(buf)
}
