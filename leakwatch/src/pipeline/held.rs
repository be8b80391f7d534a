//! By-reference capture of regular files. Once a (process, fd) has written
//! `HOLD_AFTER_CALLS` times to a regular file, the daemon opens that file itself (through
//! `/proc/PID/fd/N`, checked to be the same inode) and lists its inode in the kernel's
//! `HELD` map. From then on the kernel sends where each write lands instead of its bytes,
//! and this stage reads them back from the page cache and scans the file in order, joined
//! across writes like any stream. The writer pays no copy, and a daemon that falls behind
//! loses nothing that is still in the file.
//!
//! The kernel joins a thread's consecutive writes into runs and sends a run when the thread
//! moves on (its next write does not continue it, a bound, its exit): such a record is
//! settled, its bytes are in the file. Runs still pending are read from the kernel's
//! `RUNS` map every tick (`peek`) as far as they have settled, so a writer that goes quiet
//! mid-run, or writes slowly, is scanned within a tick or two; the record, when it comes,
//! only counts its calls and scans what was not read yet.
//! A run that follows a burst's lone writes (`WRITE_F_RUN_NEXT`) is looked up at every
//! look for `SOON`, not only at the tick, so a key further down a burst waits no tick.
//! A record the kernel sent at syscall entry (a thread's first writes after a pause, or any
//! write when `RUNS` is full) is read once settled: its thread has made a later write, or
//! `SETTLE` has passed; bytes still missing then (a write slower than that) are read again
//! until `LATE` after the last write before they count as unread. After a pause the last
//! write of each file is read once more.
//! What it cannot see: bytes overwritten or truncated away before it reads them (a short
//! read is counted in `leakwatch_held_bytes_unread_total`).
//! Writers racing on one file are read across: with O_APPEND the read runs on to the end of
//! the file, so every appended byte is scanned, and findings go to the writer whose range
//! holds them.
use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    time::{Duration, Instant},
};

use super::{write, Pipeline};
use crate::{
    classify::Target,
    detect::{stream::StreamScanner, Detector},
    events::{monotonic_ns, Task, WriteEvent},
    probes::{HeldMap, RunsMap},
};

/// Held files have writes not read yet, or a run is looked up soon (the worker looks again
/// within `SETTLE`).
pub(super) fn waiting(p: &Pipeline) -> bool {
    !p.held.soon.is_empty()
        || p.held
            .files
            .values()
            .any(|h| h.cursor.is_some_and(|c| h.until > c) || !h.inflight.is_empty())
}

/// Builds `$d`, a `Detector` over the pipeline's engine and frozen set (borrowing clones
/// of them, so `$p` stays free to change).
macro_rules! detector {
    ($p:expr, $d:ident) => {
        let (engine, frozen) = ($p.engine.clone(), $p.shared.frozen.clone());
        let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
        let $d = Detector::new(&engine, fz.as_deref());
    };
}

/// Copied calls on one (process, fd) before its file is held.
pub const HOLD_AFTER_CALLS: u32 = 16;
/// Files held at once (each is an open fd of the daemon); the least recently written go.
const MAX_HELD: usize = 256;
/// A held file unwritten this long is let go (its inode unlisted, then closed).
const IDLE_CLOSE: Duration = Duration::from_secs(10);
/// A pause after which held-back findings are reported, as for streams.
const FLUSH_AFTER: Duration = Duration::from_millis(1000);
/// Pending bytes that make a read happen before the batch ends.
const READ_AT: u64 = 1 << 20;
/// A write this far past the scanned end still continues the stream (the bytes between are
/// read too: a racing writer's); farther is a jump.
const GAP: u64 = 1 << 20;
/// Bytes per read.
const CHUNK: usize = 256 << 10;
/// Bytes before the first write by reference read again, so a key split across the switch
/// from copied to held is joined (repeats are deduplicated).
const BACKFILL: u64 = 8 << 10;
/// Writers remembered per file for attributing findings.
const WRITERS: usize = 32;
/// A write whose thread has made no later write is read this long after its entry. Short,
/// because it is what a log line waits before its alert (5 ms put 183 of 200 log lines in
/// the 5–10 ms latency bucket); a write still copying in then is read again (`LATE`).
pub const SETTLE: Duration = Duration::from_millis(1);
/// The same for a write over bytes already in the file: read too early, those would be the
/// old bytes, and nothing reads them again.
const SETTLE_IN_PLACE: Duration = Duration::from_millis(5);
/// Writes in flight tracked per file (beyond, the oldest is taken as settled).
const INFLIGHT: usize = 16;
/// Bytes of a file's last write read again after a pause.
const REREAD: u64 = 64 << 10;
/// A run after a burst's lone writes is looked up at every look until it has not changed
/// for `SOON_IDLE`, at most `SOON_FOR` after the flag; for at most `SOON_MAX` threads.
const SOON_IDLE: Duration = Duration::from_millis(20);
const SOON_FOR: Duration = Duration::from_millis(200);
const SOON_MAX: usize = 64;
/// Writes remembered per file for timing findings.
const MARKS: usize = 256;
/// Findings remembered per file against the re-read's repeats.
const REPORTED: usize = 64;

struct Writer {
    task: Task,
    fd: i32,
    target: Target,
    start: u64,
    end: u64,
    last_bytes: u64,
}

struct HeldFile {
    file: File,
    scanner: StreamScanner,
    /// File offset of the scanner's position 0.
    base: u64,
    /// Scanned up to here (file offset); `None` until the first write by reference.
    cursor: Option<u64>,
    /// Read up to here at the next read.
    until: u64,
    /// Some pending write appended (read on to the end of the file).
    append: bool,
    writers: VecDeque<Writer>,
    /// (thread, position, kernel time by which it is taken as settled) of writes maybe
    /// still in flight, oldest first.
    inflight: VecDeque<(u32, u64, u64)>,
    /// The last write: position and end, to read again after a pause.
    last: (u64, u64),
    /// (start, end, kernel time) of recent writes, oldest first: a finding is timed by the
    /// write that completed it, not by the writer's latest (the detection latency metric).
    marks: VecDeque<(u64, u64, u64)>,
    /// (file offset, fingerprint) of recent findings: the re-read after a pause reports
    /// only what they do not hold (a write read whole the first time is not reported twice).
    reported: VecDeque<(u64, String)>,
    /// What the backfill reads again: the file offset where writes by reference began (the
    /// bytes before it came through the copied stream), and the fingerprints that stream
    /// reported. A finding before it with one of them is that stream's, not a new one.
    backfill: (u64, Vec<String>),
    used: Instant,
    flushed: bool,
}

/// Bytes a settled write should have put in the file but the file does not hold yet are
/// read again until this long after the file's last write (a write can take longer than
/// `SETTLE`: a big one, or one throttled on dirty pages); after that they count as unread
/// (truncated, or never written).
const LATE: Duration = Duration::from_secs(1);

impl HeldFile {
    /// Forgets writes in flight that have had their time to complete; true when none is
    /// left.
    fn settle(&mut self, now: u64) -> bool {
        self.inflight.retain(|&(_, _, ready)| now < ready);
        self.inflight.is_empty()
    }
}

/// A run the kernel has not sent yet, as last seen in `RUNS`.
struct Peek {
    started_ns: u64,
    seen: Instant,
    inode: u64,
    /// File offset of the run's first call.
    start: u64,
    calls: u32,
    /// The run's end when last seen.
    end: u64,
    /// Read early up to here (`start` while nothing was).
    read_to: u64,
}

#[derive(Default)]
pub struct Held {
    map: Option<HeldMap>,
    runs: Option<RunsMap>,
    /// Thread id -> its pending run.
    peeks: HashMap<u32, Peek>,
    /// Threads whose writes went into a run after their lone ones (`WRITE_F_RUN_NEXT`):
    /// their runs are looked up at every look, not only at the tick. (flagged, last change)
    soon: HashMap<u32, (Instant, Instant)>,
    files: HashMap<u64, HeldFile>,
    /// (tgid, fd, struct file) that could not be held: not tried again.
    refused: HashMap<(u32, i32, u64), Instant>,
    buf: Vec<u8>,
}

impl Held {
    /// Enables holding with the kernel's `HELD` and `RUNS` maps.
    pub fn new(map: HeldMap, runs: RunsMap) -> Held {
        Held {
            map: Some(map),
            runs: Some(runs),
            ..Default::default()
        }
    }
}

/// After a copied write: hold its file once its stream has written enough. `prior`: the
/// fingerprints that stream reported (the backfill does not report them again).
pub(super) fn consider(p: &mut Pipeline, w: &WriteEvent, calls: u32, prior: &[String]) {
    if calls < HOLD_AFTER_CALLS
        || p.held.map.is_none()
        || w.inode == 0
        || w.kind() != crate::events::FileKind::File
        || p.held.files.contains_key(&w.inode)
    {
        return;
    }
    let key = (w.task.tgid, w.fd, w.file.file);
    if p.held.refused.contains_key(&key) {
        return;
    }
    if p.held.files.len() >= MAX_HELD {
        detector!(p, d);
        let oldest = p
            .held
            .files
            .iter()
            .min_by_key(|(_, f)| f.used)
            .map(|(k, _)| *k);
        if let Some(k) = oldest {
            release(p, &d, k);
        }
    }
    match open_same(w) {
        Some(file) => {
            let Some(map) = p.held.map.as_mut() else {
                return;
            };
            if let Err(e) = map.insert(w.inode, 1, 0) {
                log::warn!("listing a held file in the kernel failed: {e}; its writes stay copied");
                p.held.refused.insert(key, Instant::now());
                return;
            }
            p.held.files.insert(
                w.inode,
                HeldFile {
                    file,
                    scanner: StreamScanner::new(&p.engine),
                    base: 0,
                    cursor: None,
                    until: 0,
                    append: false,
                    writers: VecDeque::new(),
                    inflight: VecDeque::new(),
                    marks: VecDeque::new(),
                    reported: VecDeque::new(),
                    backfill: (0, prior.to_vec()),
                    last: (0, 0),
                    used: Instant::now(),
                    flushed: false,
                },
            );
            p.metrics.files_held.set(p.held.files.len() as i64);
        }
        None => {
            if p.held.refused.len() >= 4096 {
                p.held.refused.clear();
            }
            p.held.refused.insert(key, Instant::now());
        }
    }
}

/// Opens the file behind the writer's fd read-only and checks it is the record's inode.
fn open_same(w: &WriteEvent) -> Option<File> {
    let path = format!("/proc/{}/fd/{}", w.task.tgid, w.fd);
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
    };
    // O_NOATIME: reading a log must not touch it; refused on files of other owners
    // without CAP_FOWNER, so fall back.
    let file = open(libc::O_NOATIME).or_else(|_| open(0)).ok()?;
    if !disk_like(&file) {
        return None;
    }
    let m = file.metadata().ok()?;
    let same_dev = crate::events::same_dev(w.file.dev, m.dev());
    (m.file_type().is_file() && m.ino() == w.file.ino && same_dev).then_some(file)
}

/// Filesystems whose files read back what was written, without side effects or waits:
/// not /proc, sysfs, cgroupfs, tracefs or debugfs (their regular files are generated, and
/// some block or act on read), nor FUSE or network filesystems (a read could hang the
/// pipeline). Writes to anything else stay copied; `moves` looks in these alone too.
/// (name in mountinfo, `statfs` magic)
pub(super) const LOCAL_FS: [(&str, i64); 9] = [
    ("tmpfs", 0x0102_1994),
    ("ext2", 0xEF53),
    ("ext3", 0xEF53),
    ("ext4", 0xEF53),
    ("xfs", 0x5846_5342),
    ("btrfs", 0x9123_683E),
    ("overlay", 0x794C_7630),
    ("f2fs", 0xF2F5_2010),
    ("zfs", 0x2FC1_2FC1),
];

/// `file` is on one of `LOCAL_FS`.
fn disk_like(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: an fd we own and a zeroed out-struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    LOCAL_FS.iter().any(|&(_, m)| m == st.f_type as i64)
}

/// A write by reference: `total` bytes at `offset` of a held file (a record, or with
/// `calls` 0 a run read early by `peek`).
pub(super) fn on_ref(p: &mut Pipeline, w: &WriteEvent, target: Target) {
    detector!(p, d);
    let from = w.offset.max(0) as u64;
    let end = from + w.total;
    let append = w.task.flags & leakwatch_common::WRITE_F_APPEND != 0;
    // The record of a run read early: only what was not read then is new.
    let mut pos = from;
    let early = w.calls == 0;
    if !early {
        if let Some(k) = p.held.peeks.get(&w.task.pid) {
            if k.inode == w.inode && from <= k.start && k.start <= end {
                pos = k.read_to.clamp(from, end);
                p.held.peeks.remove(&w.task.pid);
            }
        }
    }
    let Some(h) = p.held.files.get_mut(&w.inode) else {
        // Unlisted while the record was on its way: the bytes are in the file, but this
        // daemon no longer has it open.
        p.metrics.held_bytes_unread.inc_by(end - pos);
        return;
    };
    h.used = Instant::now();
    h.flushed = false;
    h.last = (from, end);
    if w.task.flags & leakwatch_common::WRITE_F_RUN_NEXT != 0 && p.held.soon.len() < SOON_MAX {
        p.held.soon.insert(w.task.pid, (h.used, h.used));
    }
    if h.marks.len() >= MARKS {
        h.marks.pop_front();
    }
    h.marks.push_back((from, end, w.first_ktime_ns));
    // This thread's earlier write has returned: it is no longer in flight.
    h.inflight.retain(|&(tid, _, _)| tid != w.task.pid);
    if !w.settled() {
        if h.inflight.len() >= INFLIGHT {
            h.inflight.pop_front();
        }
        let in_place = !append && h.cursor.is_some_and(|c| pos < h.until.max(c));
        let wait = if in_place { SETTLE_IN_PLACE } else { SETTLE };
        let ready = w.task.ktime_ns + wait.as_nanos() as u64;
        h.inflight.push_back((w.task.pid, pos, ready));
    }
    match h.writers.back_mut() {
        Some(l)
            if l.task.tgid == w.task.tgid && l.fd == w.fd && from >= l.start && from <= l.end =>
        {
            l.end = l.end.max(end);
            l.last_bytes = w.total;
            l.task = w.task.clone();
        }
        _ => {
            if h.writers.len() >= WRITERS {
                h.writers.pop_front();
            }
            h.writers.push_back(Writer {
                task: w.task.clone(),
                fd: w.fd,
                target,
                start: from,
                end,
                last_bytes: w.total,
            });
        }
    }
    let cursor = match h.cursor {
        Some(c) => c,
        None => {
            let c = pos.saturating_sub(BACKFILL);
            h.backfill.0 = pos;
            h.base = c;
            h.cursor = Some(c);
            h.until = c;
            c
        }
    };
    // Appends land at the end, so one behind the cursor was read already (a read runs on to
    // the end of the file) — unless the file was truncated since (logrotate's copytruncate).
    if append && pos < cursor && h.file.metadata().is_ok_and(|m| m.len() >= cursor) {
        pos = cursor.min(end);
    }
    if pos >= end {
        return; // nothing in it that was not read
    }
    let frontier = h.until.max(cursor);
    if pos >= cursor && pos <= frontier + GAP {
        h.until = h.until.max(end);
        h.append |= append;
        let pending = h.until - cursor;
        if pending >= READ_AT {
            read(p, &d, w.inode);
        }
    } else {
        // Behind what was scanned (a rewrite, or a racing writer's stale position) or far
        // ahead (a seek): read what is pending, then start a new stream there.
        read(p, &d, w.inode);
        let Some(h) = p.held.files.get_mut(&w.inode) else {
            return;
        };
        let found = h.scanner.finish(&d);
        report(p, &d, w.inode, found);
        let Some(h) = p.held.files.get_mut(&w.inode) else {
            return;
        };
        h.scanner = StreamScanner::new(&p.engine);
        h.base = pos;
        h.cursor = Some(pos);
        h.until = end;
        h.append = append;
        // New bytes where the backfill was (a truncated log written again): new findings,
        // and what was reported before says nothing about them.
        h.backfill.1.clear();
        h.reported.clear();
    }
}

/// The worker's queue ran dry (or its timer): read what writers left behind when they
/// paused. A file still being written is read in `READ_AT` steps instead (from `on_ref`):
/// large reads cost the daemon less, and reading well behind the writer keeps it off the
/// pages (and their cache lines) the writer is still working on.
pub(super) fn read_all(p: &mut Pipeline) {
    peek_soon(p);
    detector!(p, d);
    let now = monotonic_ns();
    let pending: Vec<u64> = p
        .held
        .files
        .iter_mut()
        .filter_map(|(k, h)| {
            let paused = h.settle(now);
            (paused && h.cursor.is_some_and(|c| h.until > c || h.append)).then_some(*k)
        })
        .collect();
    for k in pending {
        read(p, &d, k);
    }
}

/// Reads and scans a held file from its cursor to `until` (with O_APPEND, to its end, at
/// most `GAP` further).
fn read(p: &mut Pipeline, d: &Detector, inode: u64) {
    let Some(h) = p.held.files.get_mut(&inode) else {
        return;
    };
    let Some(mut at) = h.cursor else { return };
    // Only what settled writes put there: stop at the first write that may be in flight.
    h.settle(monotonic_ns());
    let limit = h.inflight.iter().map(|&(_, pos, _)| pos).min();
    let mut until = h.until;
    if h.append && limit.is_none() {
        if let Ok(m) = h.file.metadata() {
            until = until.max(m.len().min(until + GAP));
        }
        h.append = false;
    }
    if let Some(l) = limit {
        until = until.min(l.max(at));
    }
    // One buffer for all reads, allocated (zeroed) once; after use only the bytes that
    // held plaintext are cleared, not the whole buffer each time.
    let mut buf = std::mem::take(&mut p.held.buf);
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut found = Vec::new();
    let mut read = 0u64;
    let mut dirty = 0;
    while at < until {
        let want = ((until - at) as usize).min(CHUNK);
        match h.file.read_at(&mut buf[..want], at) {
            Ok(0) => break,
            Ok(n) => {
                dirty = dirty.max(n);
                found.extend(h.scanner.feed(d, &buf[..n]));
                at += n as u64;
                read += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    use zeroize::Zeroize;
    buf[..dirty].zeroize();
    p.held.buf = buf;
    let unread = until.saturating_sub(at);
    h.cursor = Some(at);
    // Short of `until` at the end of the file soon after a write: that write may still be
    // copying in. Read on from `at` at the next look (`waiting`).
    if unread > 0 && h.used.elapsed() >= LATE {
        // Truncated (or unreadable) before it was read: the bytes are gone.
        h.cursor = Some(until);
        h.scanner = StreamScanner::new(&p.engine);
        h.base = until;
        p.metrics.held_bytes_unread.inc_by(unread);
    }
    h.until = h.until.max(until);
    let probe = h
        .writers
        .back()
        .map(|w| w.task.probe_name())
        .unwrap_or("sys_enter_write");
    p.metrics
        .captured_bytes
        .with_label_values(&[probe])
        .inc_by(read);
    p.metrics
        .scanned_bytes
        .with_label_values(&["file"])
        .inc_by(read);
    report(p, d, inode, found);
}

/// Findings go to the writer whose range holds them (else the latest before them).
fn report(
    p: &mut Pipeline,
    d: &Detector,
    inode: u64,
    mut found: Vec<crate::detect::stream::StreamFinding>,
) {
    if found.is_empty() {
        return;
    }
    let Some(h) = p.held.files.get_mut(&inode) else {
        return;
    };
    let (hold_at, prior) = (h.backfill.0, &h.backfill.1);
    found.retain(|f| {
        let end = h.base + f.offset + (f.finding.end - f.finding.start) as u64;
        end > hold_at || !prior.contains(&f.finding.fingerprint)
    });
    for f in &found {
        if h.reported.len() >= REPORTED {
            h.reported.pop_front();
        }
        h.reported
            .push_back((h.base + f.offset, f.finding.fingerprint.clone()));
    }
    let h = &*h;
    // (writer, kernel time of the write that completed the secret, findings)
    type Group = (usize, u64, Vec<crate::detect::stream::StreamFinding>);
    let mut by_writer: Vec<Group> = Vec::new();
    for mut f in found {
        let at = h.base + f.offset;
        f.offset = at;
        let i = h
            .writers
            .iter()
            .rposition(|w| w.start <= at && at < w.end)
            .or_else(|| h.writers.iter().rposition(|w| w.start <= at))
            .unwrap_or(h.writers.len().saturating_sub(1));
        let done = at + (f.finding.end - f.finding.start) as u64;
        let t = written_at(&h.marks, done);
        match by_writer.iter_mut().find(|(j, u, _)| *j == i && *u == t) {
            Some((_, _, v)) => v.push(f),
            None => by_writer.push((i, t, vec![f])),
        }
    }
    let hits: Vec<_> = by_writer
        .into_iter()
        .filter_map(|(i, t, v)| {
            h.writers.get(i).map(|w| {
                let mut task = w.task.clone();
                if t != 0 {
                    task.ktime_ns = t;
                }
                (task, w.target.clone(), w.fd, w.last_bytes, v)
            })
        })
        .collect();
    for (task, target, fd, bytes, v) in hits {
        if let Some(source) = target.source() {
            let dump = write::dump_of(p, task.tgid, fd);
            write::emit(
                p,
                d,
                source,
                &task,
                &target,
                fd,
                dump,
                v,
                bytes,
                write::Via::ByRef,
                None,
            );
        }
    }
}

/// Kernel time of the latest remembered write holding the byte before `done` (a rewrite's
/// write over an older one); else of the latest write when `done` is past them all, or
/// of the oldest remembered (the write was forgotten: earlier still); 0 when none is.
fn written_at(marks: &VecDeque<(u64, u64, u64)>, done: u64) -> u64 {
    let holding = marks
        .iter()
        .rev()
        .find(|&&(start, end, _)| start < done && done <= end);
    let past_all = marks.iter().all(|&(_, end, _)| end < done);
    holding
        .or(if past_all {
            marks.back()
        } else {
            marks.front()
        })
        .map_or(0, |&(_, _, t)| t)
}

/// Lets a file go: unlisted in the kernel first (later writes are copied again), then what
/// is pending is read, held-back findings reported, and the file closed.
fn release(p: &mut Pipeline, d: &Detector, inode: u64) {
    if let Some(map) = p.held.map.as_mut() {
        let _ = map.remove(&inode);
    }
    read(p, d, inode);
    if let Some(mut h) = p.held.files.remove(&inode) {
        let found = h.scanner.finish(d);
        p.held.files.insert(inode, h);
        report(p, d, inode, found);
        p.held.files.remove(&inode);
    }
    p.metrics.files_held.set(p.held.files.len() as i64);
}

/// Reads pending runs from the kernel's `RUNS` map, since a run's record comes only when
/// its thread moves on or exits (perhaps never): what has settled is scanned now — all of
/// a run unchanged since the last tick, else up to where it ended then (its thread has
/// made later calls, so those returned). It counts no calls: the record does.
fn peek(p: &mut Pipeline) {
    let Some(runs) = p.held.runs.as_ref() else {
        return;
    };
    let now = Instant::now();
    let all: Vec<_> = runs
        .iter()
        .filter_map(|item| item.ok())
        .map(|(tid, run)| (tid, run.0))
        .filter(|(_, r)| r.rec.calls != 0)
        .collect();
    let mut ready = Vec::new();
    for (tid, r) in all {
        look(p, tid, r, now, &mut ready);
    }
    // A run read early waits for its record (which takes its peek); one gone from the map
    // unread, or long gone, is forgotten.
    p.held.peeks.retain(|_, k| {
        let age = now.duration_since(k.seen);
        age <= SETTLE || (k.read_to > k.start && age < Duration::from_secs(60))
    });
    read_early(p, ready);
}

/// `peek` for the threads in `soon` only: one lookup each. A thread no longer in the map
/// has exited.
fn peek_soon(p: &mut Pipeline) {
    let Some(runs) = p.held.runs.as_ref() else {
        return;
    };
    if p.held.soon.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut found = Vec::new();
    p.held.soon.retain(|&tid, (flagged, changed)| {
        if now.duration_since(*changed) >= SOON_IDLE || now.duration_since(*flagged) >= SOON_FOR {
            return false;
        }
        match runs.get(&tid, 0) {
            Ok(run) => {
                found.push((tid, run.0));
                true
            }
            Err(_) => false,
        }
    });
    let mut ready = Vec::new();
    for (tid, r) in found {
        if look(p, tid, r, now, &mut ready) {
            if let Some((_, changed)) = p.held.soon.get_mut(&tid) {
                *changed = now;
            }
        }
    }
    read_early(p, ready);
}

/// What `tid`'s pending run `r`, seen at `now`, has settled beyond what was read: all of it
/// when unchanged since a look at least `SETTLE` before, else up to where it ended then.
/// True when the run is new or has grown since the last look.
fn look(
    p: &mut Pipeline,
    tid: u32,
    r: leakwatch_common::RefRun,
    now: Instant,
    ready: &mut Vec<(u32, leakwatch_common::RefRun, u64)>,
) -> bool {
    // No calls: no run, only when the thread's last write (sent alone) was.
    if r.rec.calls == 0 || !p.held.files.contains_key(&r.rec.inode) {
        return false;
    }
    let start = r.rec.offset.max(0) as u64;
    let end = start + r.rec.total;
    match p.held.peeks.get_mut(&tid) {
        Some(k) if k.started_ns == r.started_ns && k.inode == r.rec.inode => {
            // Too soon after the last look to tell a finished call from one in flight.
            if now.duration_since(k.seen) < SETTLE {
                return false;
            }
            k.seen = now;
            // Unchanged in both: the map copy is not atomic, a torn one differs in one.
            let same = k.calls == r.rec.calls && k.end == end;
            let settled = if same { end } else { k.end };
            (k.calls, k.end) = (r.rec.calls, end);
            if settled > k.read_to {
                ready.push((tid, r, settled));
            }
            !same
        }
        // An earlier run read in part waits for its record, which says where reading
        // resumes; unless that record was lost.
        Some(k) if k.read_to > k.start && now.duration_since(k.seen) < Duration::from_secs(1) => {
            false
        }
        _ => {
            let k = Peek {
                started_ns: r.started_ns,
                seen: now,
                inode: r.rec.inode,
                start,
                calls: r.rec.calls,
                end,
                read_to: start,
            };
            p.held.peeks.insert(tid, k);
            true
        }
    }
}

/// Reads what `look` found settled, as by-reference writes that count no calls.
fn read_early(p: &mut Pipeline, ready: Vec<(u32, leakwatch_common::RefRun, u64)>) {
    for (tid, r, settled) in ready {
        // SAFETY: `WriteHeader` is #[repr(C)] integers and integer arrays.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                &r.rec as *const leakwatch_common::WriteHeader as *const u8,
                leakwatch_common::WriteHeader::SIZE,
            )
        };
        let Ok(crate::events::Event::Write(mut w)) = crate::events::decode(bytes) else {
            continue;
        };
        let Some(k) = p.held.peeks.get_mut(&tid) else {
            continue;
        };
        w.offset = k.read_to as i64;
        w.total = settled - k.read_to;
        k.read_to = settled;
        w.calls = 0;
        w.task.flags |= leakwatch_common::WRITE_F_SETTLED;
        write::on_write(p, w);
    }
}

/// Periodic: paused files report what they held back; idle ones are let go.
pub(super) fn tick(p: &mut Pipeline) {
    peek(p);
    read_all(p);
    let now = Instant::now();
    detector!(p, d);
    let idle: Vec<u64> = p
        .held
        .files
        .iter()
        .filter(|(_, h)| now.duration_since(h.used) >= IDLE_CLOSE)
        .map(|(k, _)| *k)
        .collect();
    for k in idle {
        release(p, &d, k);
    }
    let pausing: Vec<u64> = p
        .held
        .files
        .iter()
        .filter(|(_, h)| !h.flushed && now.duration_since(h.used) >= FLUSH_AFTER)
        .map(|(k, _)| *k)
        .collect();
    for k in pausing {
        let Some(h) = p.held.files.get_mut(&k) else {
            continue;
        };
        h.flushed = true;
        let mut found = h.scanner.finish(&d);
        // The last write again, alone: read at entry + SETTLE it may have been incomplete.
        let (pos, end) = h.last;
        let mut from = pos.max(end.saturating_sub(REREAD));
        // Only as far back as `reported` still tells a repeat: the last record may be a run
        // of many writes with more findings than it keeps, and the write that may have been
        // incomplete is the last one, after them. Only when what it keeps starts inside the
        // record: otherwise (a rewrite near the start) it tells every repeat there.
        if h.reported.len() >= REPORTED {
            if let Some(oldest) = h.reported.iter().map(|(o, _)| *o).min() {
                if (pos..end).contains(&oldest) {
                    from = from.max(oldest);
                }
            }
        }
        let mut again = vec![0u8; (end - from) as usize];
        if let Ok(n) = h.file.read_at(&mut again, from) {
            let mut sc = StreamScanner::new(&p.engine);
            let mut f = sc.feed(&d, &again[..n]);
            f.extend(sc.finish(&d));
            for mut x in f {
                let at = from + x.offset;
                let fp = &x.finding.fingerprint;
                if h.reported.iter().any(|(o, g)| *o == at && g == fp)
                    || found.iter().any(|y| y.finding.fingerprint == *fp)
                {
                    continue;
                }
                // `report` adds `base`: express the offset relative to it.
                x.offset = at.saturating_sub(h.base);
                found.push(x);
            }
        }
        crate::wipe::vec(&mut again);
        report(p, &d, k, found);
    }
    p.held
        .refused
        .retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
}

/// At stop, once the probes are gone: every run still pending in `RUNS` is final, so two
/// looks `SETTLE` apart read each in full; then every file is let go (read to its end).
pub(super) fn finish(p: &mut Pipeline) {
    peek(p);
    std::thread::sleep(SETTLE * 2);
    peek(p);
    release_all(p);
}

/// Unlists every held file (daemon stop): writes are not left by reference to nobody.
fn release_all(p: &mut Pipeline) {
    detector!(p, d);
    let all: Vec<u64> = p.held.files.keys().copied().collect();
    for k in all {
        release(p, &d, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_is_timed_by_the_write_that_completed_it() {
        // Three appends, then a rewrite of the first 100 bytes.
        let marks: VecDeque<(u64, u64, u64)> =
            [(0, 100, 10), (100, 200, 20), (200, 300, 30), (0, 100, 40)].into();
        // A secret ending in the second write (one starting in the first included).
        assert_eq!(written_at(&marks, 150), 20);
        assert_eq!(written_at(&marks, 200), 20);
        assert_eq!(written_at(&marks, 201), 30);
        // In the rewritten range: the rewrite's time, not the first write's.
        assert_eq!(written_at(&marks, 50), 40);
        // Past every remembered write: the latest one.
        assert_eq!(written_at(&marks, 400), 40);
        // Before every remembered write (it was forgotten): the oldest one.
        let later: VecDeque<(u64, u64, u64)> = [(500, 600, 50), (600, 700, 60)].into();
        assert_eq!(written_at(&later, 300), 50);
        assert_eq!(written_at(&VecDeque::new(), 1), 0);
    }
}
