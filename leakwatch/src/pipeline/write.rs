//! The write stage: each write-family payload is named (`classify`), appended to its
//! (process, fd) stream (fds sharing one open file share it) and scanned with the stream's
//! tail, so a key split across writes — a JVM error log writes `NAME`, `=` and the value
//! separately — is found once. A stream that pauses reports what it held back; idle streams
//! are dropped to bound memory (counted). A process seen writing a frozen credential is
//! handed to `respond` as a holder.
use std::time::{Duration, Instant};

use super::{report::Hit, Pipeline};
use crate::actions::Over;
use crate::{
    classify::Target,
    dest::Expect,
    detect::{stream::StreamFinding, stream::StreamScanner, Detector},
    events::{Task, WriteEvent},
    fastmap::FastMap,
    procs::{ProcInfo, Procs},
    source::Source,
};

/// Streams reassembled at once; beyond this the least recently written are dropped.
pub const MAX_STREAMS: usize = 4096;
/// A pause after which a stream reports the finding it held back at its end.
const FLUSH_AFTER: Duration = Duration::from_millis(1000);
/// A stream unwritten this long is dropped (its tail is zeroized).
const IDLE_AFTER: Duration = Duration::from_secs(120);

struct Stream {
    scanner: StreamScanner,
    /// The open file's identity: `struct file` address and inode (an address alone can be
    /// reused at once by the next open of the same fd number).
    file: (u64, u64),
    /// The file's device (`s_dev`, kernel encoding).
    dev: u32,
    target: Target,
    task: Task,
    fd: i32,
    /// Length of the last call, reported with findings held back until a pause.
    last_bytes: u64,
    used: Instant,
    /// Held-back findings were reported since the last write.
    flushed: bool,
    /// Calls copied so far (a busy regular file is then held: see `held`).
    calls: u32,
    /// The stream is a crash dump or diagnostic report of this kind (see `dumps`).
    dump: Option<&'static str>,
    /// TLS plaintext (keyed apart from the socket's ciphertext).
    tls: bool,
    /// Fingerprints of its recent findings (a file it gets held for reads them again).
    found: Vec<String>,
}

/// Fingerprints a stream remembers.
const FOUND_KEPT: usize = 64;

impl Stream {
    /// The written file's (`st_dev`, inode), for `moves`.
    fn file_id(&self) -> Option<(u64, u64)> {
        Some((crate::events::user_dev(self.dev), self.file.1))
    }
}

#[derive(Default)]
pub struct Streams {
    map: FastMap<(u32, i32), Stream>,
    /// (tgid, fd) whose cut capture was last reported, for the `lost` alert window.
    truncations: FastMap<(u32, i32), Instant>,
    /// (tgid, `struct file` address) -> the fd whose stream holds that open file.
    shared: FastMap<(u32, u64), i32>,
}

impl Streams {
    /// The fd whose stream a write on `fd` joins: fds of one process that share an open
    /// file (`dup`, `2>&1`) write one stream, so a key split between them is still whole.
    /// Another fd's stream is joined only while it holds the same open file (`struct
    /// file` address and inode).
    fn stream_fd(&mut self, tgid: u32, fd: i32, file: (u64, u64)) -> i32 {
        if file.0 == 0 {
            return fd;
        }
        if let Some(&other) = self.shared.get(&(tgid, file.0)) {
            if other != fd && self.map.get(&(tgid, other)).is_some_and(|s| s.file == file) {
                return other;
            }
        }
        if self.shared.len() >= 2 * MAX_STREAMS {
            self.shared.clear();
        }
        self.shared.insert((tgid, file.0), fd);
        fd
    }
}

/// Who wrote, as it was at the write. The kernel's comm says which image wrote: the
/// image this process was seen exec'ing under that name; else /proc, if the process still
/// runs that image (an exiting or zombie process has no /proc exe); else, for a child that
/// never exec'd (a shell's subshell), its parent's image.
pub fn describe(procs: &mut Procs, t: &Task) -> ProcInfo {
    let live = procs.live(t.tgid);
    let seen = procs.exe_seen(t.tgid, &t.comm);
    let exe = seen
        .clone()
        .or_else(|| {
            live.as_ref()
                .filter(|l| l.comm == t.comm && !l.exe.is_empty())
                .map(|l| l.exe.clone())
        })
        .or_else(|| procs.exe_seen(t.ppid, &t.comm))
        .or_else(|| {
            procs
                .live(t.ppid)
                .filter(|p| p.comm == t.comm)
                .map(|p| p.exe)
        })
        .unwrap_or_default();
    let mut info = live.unwrap_or_else(|| {
        let cgroup = procs.cgroup_path(t.cgroup_id);
        ProcInfo {
            pid: t.tgid,
            ppid: t.ppid,
            uid: t.uid,
            unit: cgroup.as_deref().and_then(crate::procs::unit_of),
            cgroup,
            ..Default::default()
        }
    });
    // The live image, while the process still runs the image it wrote from.
    if seen.is_some() && info.comm == t.comm {
        info.interpreter = crate::procs::interpreter(&exe, &info.exe);
    }
    info.comm = t.comm.to_string();
    info.exe = exe;
    info
}

pub(super) fn on_write(p: &mut Pipeline, w: WriteEvent) {
    let probe = w.task.probe as usize;
    p.counts.events.get(probe).inc_by(w.calls as u64);
    p.counts.captured.get(probe).inc_by(w.data.len() as u64);
    if crate::panics::fault_matches(&w.data) {
        // Struck holding the frozen set's write lock, as a panic while the set is replaced
        // would: the lock is poisoned, and the test shows frozen keys are still matched.
        let _held = p.shared.frozen.write();
        crate::panics::injected_fault(&w.data);
    }
    if w.tls() {
        return super::tls::on_tls(p, w);
    }
    let (target, named) = p.fds.classify(&w);
    if !named {
        p.metrics.fds_unresolved.inc();
    }
    let Some(source) = target.source() else {
        return; // /dev/null and other devices: nothing can be read back
    };
    p.counts
        .scanned
        .get(source.index())
        .inc_by(w.data.len() as u64);
    if p.is_leakwatch(&w.task) {
        return; // `leakwatch freeze` sends the key to the daemon: that is no leak
    }
    // A run read early (`calls` 0) is summarized when its record comes.
    if w.calls > 0 && p.actions.enabled() {
        let (log, procs) = (&p.actions, &mut p.procs);
        let key = (w.task.tgid, w.fd);
        let local_port = w.peer.map_or(0, |p| p.lport);
        let over = Over::of(w.fd, &target, p.fds.connected(key), local_port);
        let who = || procs.quick(&w.task);
        let (total, calls, new) = (w.total, w.calls as u64, w.new_file());
        p.write_log
            .note(log, key, over, &target, total, calls, new, who);
    }
    if w.by_ref() {
        return super::held::on_ref(p, &w, target);
    }
    if source == Source::Socket {
        p.fds.learn_host(w.task.tgid, w.fd, &w.data);
        super::tls::on_socket_write(p, &w, &target);
    }
    scan(p, w, target, source, false);
}

/// Appends a copied payload to its stream and scans it. TLS plaintext streams are keyed
/// apart from their socket's ciphertext (`tls::stream_fd`).
pub(super) fn scan(p: &mut Pipeline, w: WriteEvent, target: Target, source: Source, tls: bool) {
    // A new open file behind the fd ends the old stream.
    let ident = (w.file.file, w.file.ino);
    let key = (
        w.task.tgid,
        if tls {
            super::tls::stream_fd(w.fd)
        } else {
            p.streams.stream_fd(w.task.tgid, w.fd, ident)
        },
    );
    let now = Instant::now();
    let (engine, frozen) = (p.engine.clone(), p.shared.frozen.clone());
    let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
    let d = Detector::new(&engine, fz.as_deref());
    let mut found = Vec::new();
    // So does a datagram to another peer: bytes sent to different hosts are not one stream.
    let moved = |s: &Stream| {
        s.file != ident
            || matches!((s.target.remote(), target.remote()), (Some(a), Some(b)) if a != b)
    };
    if p.streams.map.get(&key).is_some_and(moved) {
        if let Some(mut old) = p.streams.map.remove(&key) {
            let f = old.scanner.finish(&d);
            report(p, &d, &old, f);
        }
    }
    if !p.streams.map.contains_key(&key) && p.streams.map.len() >= MAX_STREAMS {
        evict_oldest(p, &d);
    }
    let s = p.streams.map.entry(key).or_insert_with(|| Stream {
        scanner: StreamScanner::new(&p.engine),
        file: ident,
        dev: w.file.dev,
        target: target.clone(),
        task: w.task.clone(),
        fd: w.fd,
        last_bytes: w.total,
        used: now,
        flushed: false,
        calls: 0,
        dump: None,
        tls,
        found: Vec::new(),
    });
    if s.dump.is_none() {
        s.dump = super::dumps::by_content(&w.data)
            .or_else(|| target.path().and_then(super::dumps::by_name));
    }
    s.calls = s.calls.saturating_add(1);
    let calls = s.calls;
    s.target = target;
    s.task = w.task.clone();
    s.used = now;
    s.last_bytes = w.total;
    s.flushed = false;
    found.extend(s.scanner.feed(&d, &w.data));
    if w.truncated() {
        // Bytes are missing after this chunk: do not join across the gap.
        found.extend(s.scanner.finish(&d));
        s.scanner = StreamScanner::new(&p.engine);
    }
    let bytes = w.total;
    for f in &found {
        if s.found.contains(&f.finding.fingerprint) {
            continue;
        }
        if s.found.len() >= FOUND_KEPT {
            s.found.remove(0);
        }
        s.found.push(f.finding.fingerprint.clone());
    }
    if !found.is_empty() {
        let (stream_task, stream_target, fd, dump) =
            (s.task.clone(), s.target.clone(), s.fd, s.dump);
        let file = s.file_id();
        emit(
            p,
            &d,
            source,
            &stream_task,
            &stream_target,
            fd,
            dump,
            found,
            bytes,
            if tls { Via::Tls } else { Via::Copied },
            file,
        );
    }
    drop(fz);
    if !tls && calls >= super::held::HOLD_AFTER_CALLS {
        // Lent, not cloned: this runs for every later copied write of the stream.
        let prior = p
            .streams
            .map
            .get_mut(&key)
            .map(|s| std::mem::take(&mut s.found))
            .unwrap_or_default();
        super::held::consider(p, &w, calls, &prior);
        if let Some(s) = p.streams.map.get_mut(&key) {
            s.found = prior;
        }
    }
    if w.truncated() {
        // Named already (the stream holds the target): no second classify.
        if let Some(target) = p.streams.map.get(&key).map(|s| s.target.clone()) {
            lost(p, &w, &target, key, now);
        }
    }
    p.metrics.streams.set(p.streams.map.len() as i64);
}

/// The kind of crash dump the (process, fd) stream was found to be, if any.
pub(super) fn dump_of(p: &Pipeline, tgid: u32, fd: i32) -> Option<&'static str> {
    p.streams.map.get(&(tgid, fd)).and_then(|s| s.dump)
}

/// How the bytes of a finding reached the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// Copied by the kernel from the call's buffer.
    Copied,
    /// Read back from a held file (`held`).
    ByRef,
    /// TLS plaintext, copied at `SSL_write`'s return (`tls`).
    Tls,
}

/// Turns stream findings into hits; a frozen one makes the writer a holder. `dump`: the
/// stream is a crash dump or diagnostic report of that kind (its name may say so too).
/// `file`: the written file's (`st_dev`, inode), to follow a rename (`moves`).
#[allow(clippy::too_many_arguments)]
pub(super) fn emit(
    p: &mut Pipeline,
    d: &Detector,
    source: Source,
    task: &Task,
    target: &Target,
    fd: i32,
    dump: Option<&'static str>,
    found: Vec<StreamFinding>,
    bytes: u64,
    via: Via,
    file: Option<(u64, u64)>,
) {
    let dump = dump
        .or_else(|| target.path().and_then(super::dumps::by_name))
        .filter(|_| source != Source::Socket);
    let source = if dump.is_some() {
        Source::CrashDump
    } else {
        source
    };
    if let Some(f) = found.iter().find(|f| d.is_frozen(&f.finding)) {
        p.ctx.kill_holder(
            task.tgid,
            &f.finding.fingerprint,
            source,
            target.path().or(target.remote()),
        );
    }
    let crashed = dump.map(|kind| (kind, super::dumps::at_exec(p, task.tgid)));
    let host = (source == Source::Socket)
        .then(|| p.fds.host(task.tgid, fd).map(str::to_string))
        .flatten();
    let hits: Vec<(Hit, Expect)> = found
        .into_iter()
        .map(|f| {
            // A frozen credential is expected nowhere (its rule is `frozen`).
            let expected = if source == Source::Socket && !d.is_frozen(&f.finding) {
                p.dests
                    .expected(&f.finding.rule, host.as_deref(), target.remote())
            } else {
                Expect::No
            };
            let mut h = Hit::new(source, f.finding)
                .with("fd", fd)
                .with("bytes", bytes)
                .with("probe", task.probe_name())
                .with("tid", task.pid)
                .with("offset", f.offset)
                .with("by_reference", via == Via::ByRef);
            if via == Via::Tls {
                h = h.with("tls", true);
            }
            if let Some(host) = &host {
                h = h.with("host", host.as_str());
            }
            if let Some((kind, (creds, frozen))) = crashed {
                h = h
                    .with("dump", kind)
                    .with("credentials_at_exec", creds)
                    .with("frozen_at_exec", frozen);
            }
            h.path = target.path().map(str::to_string);
            h.remote = target.remote().map(str::to_string);
            (h, expected)
        })
        .collect();
    let info = describe(&mut p.procs, task);
    if let (Target::File(Some(path)), Some(file)) = (target, file) {
        let h: Vec<Hit> = hits.iter().map(|(h, _)| h.clone()).collect();
        super::moves::watch(p, &info, &h, task.ktime_ns, path, file);
    }
    super::names::report(p, &info, hits, task.ktime_ns);
}

fn report(p: &mut Pipeline, d: &Detector, s: &Stream, found: Vec<StreamFinding>) {
    if found.is_empty() {
        return;
    }
    if let Some(source) = s.target.source() {
        emit(
            p,
            d,
            source,
            &s.task,
            &s.target,
            s.fd,
            s.dump,
            found,
            s.last_bytes,
            if s.tls { Via::Tls } else { Via::Copied },
            s.file_id(),
        );
    }
}

fn evict_oldest(p: &mut Pipeline, d: &Detector) {
    let Some(key) = p
        .streams
        .map
        .iter()
        .min_by_key(|(_, s)| s.used)
        .map(|(k, _)| *k)
    else {
        return;
    };
    if let Some(mut s) = p.streams.map.remove(&key) {
        let f = s.scanner.finish(d);
        report(p, d, &s, f);
        p.metrics.streams_evicted.inc();
    }
}

/// Periodic: paused streams report what they held back; idle ones are dropped. `all` (at
/// stop): every stream reports what it holds back, paused or not.
pub(super) fn tick(p: &mut Pipeline, all: bool) {
    let now = Instant::now();
    let (engine, frozen) = (p.engine.clone(), p.shared.frozen.clone());
    let fz = Some(crate::detect::frozen::FrozenSet::read(&frozen));
    let d = Detector::new(&engine, fz.as_deref());
    let pausing: Vec<(u32, i32)> = p
        .streams
        .map
        .iter()
        .filter(|(_, s)| !s.flushed && (all || now.duration_since(s.used) >= FLUSH_AFTER))
        .map(|(k, _)| *k)
        .collect();
    for k in pausing {
        let Some(mut s) = p.streams.map.remove(&k) else {
            continue;
        };
        let f = s.scanner.finish(&d);
        s.flushed = true;
        report(p, &d, &s, f);
        if now.duration_since(s.used) < IDLE_AFTER {
            p.streams.map.insert(k, s);
        }
    }
    p.streams
        .map
        .retain(|_, s| now.duration_since(s.used) < IDLE_AFTER);
    p.streams
        .truncations
        .retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
    p.metrics.streams.set(p.streams.map.len() as i64);
}

/// A cut capture is a `lost` alert, once per (process, fd) a minute; metrics count all.
fn lost(p: &mut Pipeline, w: &WriteEvent, target: &Target, key: (u32, i32), now: Instant) {
    if p.streams
        .truncations
        .get(&key)
        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
    {
        return;
    }
    p.streams.truncations.insert(key, now);
    let info = describe(&mut p.procs, &w.task);
    let mut a = super::report::base_alert("lost", &info)
        .with("reason", "write_capture_truncated")
        .with("probe", w.task.probe_name())
        .with("fd", w.fd)
        .with("bytes", w.total)
        .with("bytes_dropped", w.bytes_dropped)
        .with("iov_dropped", w.iov_dropped);
    a.path = target.path().map(str::to_string);
    a.remote = target.remote().map(str::to_string);
    p.report.alerts().emit(a);
}
