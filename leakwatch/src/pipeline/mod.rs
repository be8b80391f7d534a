//! The daemon's event pipeline, one stage per module, data flowing one way:
//!
//! ring buffers (`EVENTS`: exec, kills, connects; `WRITES`: write family) → `reader`
//! (decode by family) → bounded queue → `worker`:
//! enrich (`procs`) → classify (`classify`, writes) → detect (`detect`) → respond
//! (`respond`, frozen credentials) → report (`report`: dedupe, metrics) → `sinks`.
//!
//! The reader only drains the rings and decodes, so a slow scan never stalls the kernel
//! side. Write records the queue cannot take are dropped and counted
//! (`leakwatch_queue_dropped_total{queue="events"}`, reported by the loss poller); exec,
//! kill and connect records are rare and matter for freeze, so the reader waits for room. A new probe family adds a decoder in `events` and a
//! stage module here, and one arm in `Pipeline::handle`.
mod blind;
mod clean;
mod cmdline;
mod copies;
mod cores;
mod dumps;
mod exec;
mod h2;
mod handoff;
mod held;
mod moves;
mod names;
pub mod report;
mod tls;
mod wake;
mod write;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{RecvTimeoutError, TrySendError},
        Arc, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

pub use blind::{Blind, BlindList};
pub use exec::describe as describe_exec;
pub use report::{base_alert, Hit, Reporter};
pub use write::MAX_STREAMS;

use crate::{
    classify::FdTable,
    detect::{frozen::FrozenSet, Engine},
    events::{decode, Event},
    fastmap::FastMap,
    metrics::{Labelled, Metrics},
    procs::Procs,
    respond,
};

/// How many recent (tgid, fingerprint) pairs seen at exec are remembered for `freeze`.
pub const HISTORY: usize = 65_536;
/// Batches of decoded events (one per reader turn) waiting for the worker.
const BATCHES: usize = 1024;
/// Bytes waiting for the worker (the queue's bound: one record can be 64 KiB, and a turn
/// can bring thousands of small ones).
const QUEUE_BYTES: usize = 64 << 20;
/// What a queued record costs beyond its kernel bytes: the decoded event and the heap
/// blocks of its strings (path, payload).
const HELD_IN_MEMORY: usize = std::mem::size_of::<Queued>() + 64;

/// State the pipeline shares with `respond` (freeze reads and updates it).
#[derive(Clone, Default)]
pub struct Shared {
    pub frozen: Arc<RwLock<FrozenSet>>,
    /// Recent (tgid, fingerprint) pairs seen at exec, oldest first.
    pub history: Arc<RwLock<VecDeque<(u32, String)>>>,
    /// A reloaded config waiting for the worker (SIGHUP): taken between two batches, so
    /// every event is handled under one config or the other, never a mix.
    pub reload: Arc<std::sync::Mutex<Option<Reload>>>,
    /// Crash dumps scanned outside the write path (core-handler, file core_pattern).
    pub dumps: crate::crash::Inbox,
    /// Programs connecting out with TLS the probes cannot read (`status`).
    pub tls_blind: blind::BlindList,
    /// Freezes and kills under way: background work (the action log) waits for them.
    pub responding: crate::respond::Responding,
}

/// What a reload changes in the pipeline.
pub struct Reload {
    pub engine: Engine,
    pub dests: crate::dest::Destinations,
    pub dedupe_seconds: u64,
}

pub struct Pipeline {
    engine: Arc<Engine>,
    /// Where each rule's credential is expected to go (`dest`).
    dests: crate::dest::Destinations,
    shared: Shared,
    procs: Procs,
    fds: FdTable,
    streams: write::Streams,
    held: held::Held,
    cores: cores::Scanner,
    tls: crate::probes::tls::TlsWatch,
    tls_wait: tls::Waiting,
    h2: h2::Conns,
    /// Socket findings waiting for their host name to be checked.
    names: names::Waiting,
    moves: moves::Moves,
    blind_checked: blind::Checked,
    /// Exec strings scanned clean (see `clean`).
    clean: clean::Clean,
    report: Reporter,
    ctx: Arc<respond::Context>,
    metrics: Arc<Metrics>,
    /// The per-event counters, looked up once.
    counts: Counts,
    actions: crate::actions::ActionLog,
    write_log: crate::actions::WriteLog,
    connect_log: crate::actions::ConnectLog,
    /// The kernel's connect folds, drained into `connect_log` at stop.
    connect_folds: Option<crate::probes::ConnectFolds>,
    /// When the worker took the batch it is on: a clock for bookkeeping that counts in
    /// seconds (connect repeats), read once per batch instead of once per event.
    now: Instant,
    /// This program's executable, and which processes run it (its CLI: freeze, scan).
    own_exe: Option<String>,
    ours: HashMap<u32, bool>,
    /// Cut exec captures waiting (briefly) for a real string count.
    pending_lost: Vec<exec::Truncated>,
    /// When `fds` last dropped the entries of exited processes.
    fds_swept: Instant,
}

/// How often the fd table drops the entries of exited processes: a sweep asks the kernel
/// about each process it holds (a `kill(pid, 0)`; tens of ms at most, for the 131,072 the
/// two tables can hold between them).
const FDS_SWEEP: Duration = Duration::from_secs(10);

/// Whether `tgid` may still run: only "no such process" says it does not (a security
/// module may refuse the check with EACCES for a process that runs). A reused pid counts
/// as running; the fd table's identity check covers it.
fn running(tgid: u32) -> bool {
    let Ok(pid) = i32::try_from(tgid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH))
}

impl Pipeline {
    pub fn new(
        engine: Engine,
        shared: Shared,
        report: Reporter,
        ctx: Arc<respond::Context>,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        Pipeline {
            engine: Arc::new(engine),
            dests: Default::default(),
            shared,
            procs: Procs::new(),
            fds: FdTable::new(),
            streams: write::Streams::default(),
            held: held::Held::default(),
            cores: cores::Scanner::default(),
            tls: Default::default(),
            tls_wait: Default::default(),
            h2: Default::default(),
            names: Default::default(),
            moves: Default::default(),
            blind_checked: Default::default(),
            clean: Default::default(),
            report,
            ctx,
            actions: crate::actions::ActionLog::disabled(metrics.clone()),
            write_log: Default::default(),
            connect_log: Default::default(),
            connect_folds: None,
            now: Instant::now(),
            counts: Counts::new(&metrics),
            metrics,
            own_exe: std::fs::read_link("/proc/self/exe")
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            ours: HashMap::new(),
            pending_lost: Vec::new(),
            fds_swept: Instant::now(),
        }
    }

    /// Reads writes to busy regular files back from the files (see `held`), listing the
    /// files it holds in the kernel's `HELD` map.
    pub fn hold_files(&mut self, map: crate::probes::HeldMap, runs: crate::probes::RunsMap) {
        self.held = held::Held::new(map, runs);
    }

    pub fn set_destinations(&mut self, d: crate::dest::Destinations) {
        self.dests = d;
    }

    /// Checks exec'd programs for OpenSSL to attach the TLS plaintext probes to.
    pub fn watch_tls(&mut self, tls: crate::probes::tls::TlsWatch) {
        self.tls = tls;
    }

    /// Records what processes do in the action log (`actions`).
    pub fn log_actions(&mut self, log: crate::actions::ActionLog) {
        self.report.log_actions(log.clone());
        self.actions = log;
    }

    /// Does `t` run leakwatch itself (the `freeze` client sends the key it freezes over the
    /// control socket; `scan` prints previews)? Only processes named so are looked up.
    fn is_leakwatch(&mut self, t: &crate::events::Task) -> bool {
        if t.comm != "leakwatch" || self.own_exe.is_none() {
            return false;
        }
        if let Some(&v) = self.ours.get(&t.tgid) {
            return v;
        }
        let exe = std::fs::read_link(format!("/proc/{}/exe", t.tgid))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| self.procs.exe_seen(t.tgid, &t.comm));
        let v = exe.is_some() && exe == self.own_exe;
        if self.ours.len() >= 4096 {
            self.ours.clear();
        }
        self.ours.insert(t.tgid, v);
        v
    }

    /// Applies a pending reload, if any (called by the worker between events).
    fn take_reload(&mut self) {
        let pending = match self.shared.reload.try_lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        if let Some(r) = pending {
            self.engine = Arc::new(r.engine);
            self.dests = r.dests;
            self.report.set_window(r.dedupe_seconds);
        }
    }

    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Exec(e) => exec::on_exec(self, e),
            Event::Enforce(n) => {
                self.metrics.events.with_label_values(&["enforce"]).inc();
                self.ctx.on_enforce(n, &mut self.procs)
            }
            Event::Write(w) => write::on_write(self, w),
            Event::Copy(c) => copies::on_copy(self, c),
            Event::Core(c) => cores::on_core(self, c),
            Event::Connect(c) => {
                // A record of folded repeats alone is no call: they were counted as folded.
                if !c.folds_only {
                    self.counts.events.get(c.task.probe as usize).inc();
                }
                let logged = self.actions.enabled();
                if let (Some(f), true) = (&c.folded, logged) {
                    let procs = &mut self.procs;
                    self.connect_log
                        .folded(&self.actions, self.now, c.task.tgid, f, || {
                            procs.quick(&c.task)
                        });
                }
                if c.folds_only {
                    return;
                }
                if self.fds.connects_full() {
                    // The kernel folds repeats of what it last recorded; once the names
                    // are cleared, each fd's next connect must be a record again.
                    self.drain_folds(false);
                }
                let remote = self.fds.on_connect(&c).filter(|_| logged);
                if logged {
                    let procs = &mut self.procs;
                    self.connect_log.note(
                        &self.actions,
                        self.now,
                        c.task.tgid,
                        &c.peer,
                        remote.unwrap_or_default(),
                        c.fd,
                        || procs.quick(&c.task),
                    );
                }
                blind::on_connect(self, &c);
            }
        }
    }

    /// After a panic caught in the worker: the locks it shares with the rest of the
    /// daemon are usable again (see `respond::Context::clear_poison`, whose frozen set and
    /// exec history are `shared`'s own: `Context::new` cloned them from it).
    fn recover(&self) {
        self.ctx.clear_poison();
        self.shared.reload.clear_poison();
    }

    /// At stop, after the last record: what waits for a pause or a later record (TLS
    /// plaintext waiting for its socket, runs pending in the kernel, held-back findings of
    /// streams and held files, cut exec captures, queued crash dump reports) is reported
    /// now, not dropped with the daemon.
    fn finish(&mut self) {
        self.dump_reports();
        exec::tick(self, true);
        tls::tick(self, true);
        held::finish(self);
        write::tick(self, true);
        self.write_log.tick(&self.actions, true);
        self.drain_folds(true);
        self.connect_log.tick(&self.actions, true);
        names::tick(self, true);
    }

    /// Where `finish` finds the connect repeats still folded in the kernel.
    pub fn drain_folds_at_stop(&mut self, folds: crate::probes::ConnectFolds) {
        self.connect_folds = Some(folds);
    }

    /// The connect repeats folded in the kernel go into the action log and their entries
    /// are dropped (each process's next connect on each fd is then a record): at stop,
    /// once the probes are gone (no later record would carry them), and when the fd table
    /// forgets its connects. At stop the kernel is told first to send them no more, so a
    /// pinned exec kill left running does not send what was drained here once more. A
    /// repeat folded between an entry's read and its removal is lost to the log (the
    /// metric has it).
    fn drain_folds(&mut self, stopping: bool) {
        let Some(folds) = self.connect_folds.as_mut() else {
            return;
        };
        if stopping {
            let _ = folds.drained.set(0, 1, 0);
        }
        // A key removed meanwhile restarts the kernel's walk: each tgid taken once.
        let entries: crate::fastmap::FastMap<u32, leakwatch_common::ConnectLast> = folds
            .last
            .iter()
            .filter_map(|e| e.ok())
            .map(|(k, v)| (k, v.0))
            .collect();
        let (now, now_ns) = (Instant::now(), crate::events::monotonic_ns());
        for (tgid, last) in entries {
            let _ = folds.last.remove(&tgid);
            for s in last.slots.iter().filter(|s| s.folded != 0) {
                let times = (s.first_ns, s.last_ns);
                let f = crate::events::Folded::of(s.folded, s.fd, s.peer, times, now_ns);
                let procs = &mut self.procs;
                let who = || {
                    procs.live(tgid).unwrap_or_else(|| crate::procs::ProcInfo {
                        pid: tgid,
                        ..Default::default()
                    })
                };
                self.connect_log.folded(&self.actions, now, tgid, &f, who);
            }
        }
    }

    /// Periodic work: flush paused streams, drop idle ones, report held exec attempts.
    pub fn tick(&mut self) {
        self.write_log.tick(&self.actions, false);
        self.connect_log.tick(&self.actions, false);
        write::tick(self, false);
        tls::tick(self, false);
        held::tick(self);
        names::tick(self, false);
        moves::tick(self);
        exec::tick(self, false);
        self.dump_reports();
        if self.fds_swept.elapsed() >= FDS_SWEEP {
            let gone = self.fds.forget_exited(running);
            log::debug!("fd table: {gone} entries of exited processes dropped");
            self.fds_swept = Instant::now();
        }
    }

    /// Crash dump reports queued by the control socket and the core scanner.
    fn dump_reports(&mut self) {
        let reports: Vec<_> = match self.shared.dumps.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for r in reports {
            dumps::on_report(self, r);
        }
    }
}

/// The counters every event moves, by probe or source (see `metrics::Labelled`).
struct Counts {
    events: Labelled,
    captured: Labelled,
    scanned: Labelled,
}

impl Counts {
    fn new(m: &Metrics) -> Counts {
        use leakwatch_common::PROBE_NAMES;
        Counts {
            events: Labelled::new(&m.events, &PROBE_NAMES),
            captured: Labelled::new(&m.captured_bytes, &PROBE_NAMES),
            scanned: Labelled::new(&m.scanned_bytes, &crate::source::Source::NAMES),
        }
    }
}

struct Queued {
    ev: Event,
    bytes: usize,
}

type Ring = aya::maps::RingBuf<aya::maps::MapData>;

/// Asks the reader to stop (once every probe is detached): sets its flag and wakes its
/// poll through an eventfd in its poll set, so the stop does not wait out an idle poll.
#[derive(Clone)]
pub struct StopReader {
    flag: Arc<AtomicBool>,
    wake: Arc<std::os::fd::OwnedFd>,
}

impl StopReader {
    pub fn new() -> Result<StopReader> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd(2) with valid flags.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("creating the event reader's stop eventfd");
        }
        Ok(StopReader {
            flag: Arc::new(AtomicBool::new(false)),
            // SAFETY: a new fd, owned by nothing else.
            wake: Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        })
    }

    pub fn stop(&self) {
        use std::os::fd::AsRawFd;
        self.flag.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 bytes from a live buffer to an eventfd this value owns. Never read
        // back: it stays readable, and the reader no longer sleeps once stopping.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// Starts the reader (rings → decode → queue) and the worker (queue → stages) threads.
pub fn start(
    events: Ring,
    writes: Ring,
    left: (Vec<Ring>, Vec<(u32, u64)>),
    asleep: aya::maps::Array<aya::maps::MapData, u32>,
    mut pipeline: Pipeline,
    stop: StopReader,
) -> Result<(JoinHandle<()>, JoinHandle<()>)> {
    let (tx, rx) = handoff::bounded::<Vec<Queued>>(BATCHES);
    let queued = Arc::new(AtomicUsize::new(0));
    let metrics = pipeline.metrics.clone();
    let reader = {
        let (stop, queued) = (stop.clone(), queued.clone());
        std::thread::Builder::new()
            .name("lw-events".into())
            .spawn(move || {
                let (rings, attached) = left;
                for ring in rings {
                    drain_left(ring, &attached, &tx, &queued, &metrics);
                }
                read([events, writes], asleep, &tx, &queued, &metrics, &stop)
            })
            .context("starting the event reader thread")?
    };
    let worker = std::thread::Builder::new()
        .name("lw-pipeline".into())
        .spawn(move || {
            crate::slice::Slice::default().set(true);
            work(&mut pipeline, rx, &queued)
        })
        .context("starting the pipeline thread")?;
    Ok((reader, worker))
}

/// Reads to its end, once, the ring an earlier daemon's pinned exec kill wrote while no
/// daemon ran (see `probes::pins`): its exec records and kill notices, before any live one.
/// A record its exec hook made after this daemon's program on that hook was attached
/// (`attached`: probe, ns) is skipped: that program made it too.
fn drain_left(
    mut ring: Ring,
    attached: &[(u32, u64)],
    tx: &handoff::Sender<Vec<Queued>>,
    queued: &AtomicUsize,
    m: &Metrics,
) {
    let (mut n, mut twice) = (0, 0);
    loop {
        let mut batch = Vec::new();
        while let Some(item) = ring.next() {
            n += 1;
            if decoded(&item, m, &mut batch)
                && batch.last().is_some_and(|q| made_twice(&q.ev, attached))
            {
                batch.pop();
                twice += 1;
            }
            if batch.len() == 4096 {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        // No writes in this ring: every record waits for room, none comes back.
        let _ = enqueue(batch, tx, queued, m);
    }
    if n != 0 {
        log::info!("read {n} records the pinned exec kill made while leakwatch was down ({twice} made again by this daemon's programs, skipped)");
    }
}

/// A ring record decoded onto the end of `batch` (true); a malformed one is counted and
/// dropped, and so is one the decoder panicked on (a bug met on one record): the reader
/// goes on. The event is pushed inside the guarded call: returned through it, the event
/// (~250 bytes) was copied four times on its way into the batch, the reader's largest
/// cost in an event storm (perf).
fn decoded(item: &[u8], m: &Metrics, batch: &mut Vec<Queued>) -> bool {
    let pushed = crate::panics::guard("decode", &m.internal_errors, || match decode(item) {
        Ok(ev) => {
            batch.push(Queued {
                ev,
                bytes: item.len() + HELD_IN_MEMORY,
            });
            Ok(())
        }
        Err(e) => Err(e),
    });
    match pushed {
        Some(Ok(())) => true,
        Some(Err(e)) => {
            m.decode_errors.inc();
            log::warn!("dropped a malformed kernel record: {e}");
            false
        }
        None => false,
    }
}

fn made_twice(ev: &Event, attached: &[(u32, u64)]) -> bool {
    let hook = match ev {
        Event::Exec(e) => e.task.probe,
        Event::Enforce(n) => n.exec_probe,
        _ => return false,
    };
    attached
        .iter()
        .any(|&(probe, at)| probe == hook && ev.ktime() > at)
}

/// The reader runs on its own OS thread: a burst of events must never delay the control
/// socket (a freeze at 3 a.m. during an exec storm) or the metrics endpoint.
fn read(
    mut rings: [Ring; 2],
    mut asleep: aya::maps::Array<aya::maps::MapData, u32>,
    tx: &handoff::Sender<Vec<Queued>>,
    queued: &AtomicUsize,
    metrics: &Metrics,
    stop: &StopReader,
) {
    use std::os::fd::AsRawFd;
    let mut pfds = [
        rings[0].as_raw_fd(),
        rings[1].as_raw_fd(),
        stop.wake.as_raw_fd(),
    ]
    .map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    // Records wake this thread only when it asked (`wake`): after a turn that read
    // something it looks again in BUSY_POLL_MS, unless the turn was sparse traffic; after
    // an empty one it asks the next record to wake it and sleeps. poll() sees records
    // already in the ring, so one committed before the request was seen is not missed.
    // Asking, it also asks for a short time slice (its wakeup then preempts the process
    // that just exec'd); taking turns, it keeps the default one and never preempts the
    // workload.
    let mut busy = false;
    let mut sparse = false;
    let mut wake = wake::Wake::new(Instant::now());
    let mut slice = crate::slice::Slice::default();
    let mut held_back: Vec<Queued> = Vec::new();
    // Records in the last turn: the next batch starts that large, not grown by copying.
    let mut last_records = 0;
    // Asked to stop once every probe is detached (see `daemon`): no record can come any
    // more, so the rings are read dry before the thread ends, none left unread.
    let mut stopping = false;
    loop {
        stopping |= stop.flag.load(Ordering::Relaxed);
        let timeout = if stopping {
            0
        } else if busy {
            wake::BUSY_POLL_MS
        } else {
            200
        };
        slice.set(!busy || sparse);
        if !busy || sparse {
            if let Err(e) = asleep.set(0, 1, 0) {
                log::warn!("asking the write probes for a wakeup failed: {e}");
            }
        }
        // This poll waited for a wakeup, not a turn.
        let from_idle = !busy;
        busy = false;
        // SAFETY: three valid pollfds; the rings and the eventfd outlive this call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 3, timeout) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::error!(
                "polling the event ring buffers failed: {}; no more events will be read",
                std::io::Error::last_os_error()
            );
            return;
        }
        // One batch from both rings, in kernel time order: a short-lived process's exec
        // (EVENTS) must reach the stages before its writes (WRITES) do.
        let mut batch: Vec<Queued> = Vec::with_capacity(last_records);
        // (thread, fd) -> index in `batch` of its latest by-reference write.
        let mut runs: FastMap<(u32, i32), usize> = FastMap::default();
        let mut records = 0;
        for ring in rings.iter_mut() {
            // Bounded per turn, so a flood on one ring never starves the other.
            for _ in 0..4096 {
                let Some(item) = ring.next() else { break };
                busy = true;
                records += 1;
                // A by-reference write continuing its stream's last one is folded into it
                // from its header alone: no decode, no allocation.
                if let Some(h) = leakwatch_common::WriteHeader::read(&item) {
                    if continues(&mut batch, &runs, &h) {
                        continue;
                    }
                }
                if decoded(&item, metrics, &mut batch) {
                    if let Some(Queued {
                        ev: Event::Write(w),
                        ..
                    }) = batch.last()
                    {
                        let key = (w.task.pid, w.fd);
                        if w.by_ref() {
                            runs.insert(key, batch.len() - 1);
                        } else {
                            runs.remove(&key);
                        }
                    }
                }
            }
        }
        sparse = busy && wake.early(records, from_idle, Instant::now());
        last_records = batch.len();
        // A record is a few hundred bytes: moved only where there is something to do
        // (a batch from one ring is usually in order already; it goes as it is when nothing
        // was held back and nothing is refused, see `enqueue`).
        if !batch.is_sorted_by_key(|q| q.ev.ktime()) {
            batch.sort_by_key(|q| q.ev.ktime());
        }
        // Writes by reference held back from a full queue go first, merged with their
        // continuation.
        let all = if held_back.is_empty() {
            batch
        } else {
            let mut all = std::mem::take(&mut held_back);
            all.extend(batch);
            all
        };
        held_back = enqueue(merge_refs(all), tx, queued, metrics);
        busy |= !held_back.is_empty();
        if stopping && !busy {
            return;
        }
    }
}

/// A by-reference write as the run it may continue sees it (from a raw header or a decoded
/// event).
struct RefWrite {
    pid: u32,
    tgid: u32,
    fd: i32,
    probe: u32,
    inode: u64,
    offset: i64,
    total: u64,
    calls: u32,
    ktime_ns: u64,
    flags: u32,
}

/// Folds `w` into its (thread, fd)'s run in `batch` (`runs`: index of each run's entry) when
/// it starts where that run ended, on the same file, from the same probe.
fn fold(batch: &mut [Queued], runs: &FastMap<(u32, i32), usize>, w: &RefWrite) -> bool {
    let Some(&i) = runs.get(&(w.pid, w.fd)) else {
        return false;
    };
    let Some(Queued {
        ev: Event::Write(last),
        ..
    }) = batch.get_mut(i)
    else {
        return false;
    };
    if last.inode != w.inode
        || last.task.tgid != w.tgid
        || last.task.probe != w.probe
        || last.offset.checked_add(last.total as i64) != Some(w.offset)
    {
        return false;
    }
    last.total += w.total;
    last.calls += w.calls;
    last.task.ktime_ns = w.ktime_ns;
    // Settled only if the later part is: its last call may still be in flight.
    let settled = leakwatch_common::WRITE_F_SETTLED;
    last.task.flags = (last.task.flags | w.flags) & !settled | w.flags & settled;
    true
}

/// `h` is a by-reference write continuing its (thread, fd)'s latest one in `batch`: folded
/// in from its header alone, without decoding or allocating.
fn continues(
    batch: &mut [Queued],
    runs: &FastMap<(u32, i32), usize>,
    h: &leakwatch_common::WriteHeader,
) -> bool {
    use leakwatch_common::{EVENT_WRITE, WRITE_F_BY_REF, WRITE_F_NEW_FILE};
    if h.hdr.kind != EVENT_WRITE
        || h.hdr.flags & WRITE_F_BY_REF == 0
        || h.hdr.flags & WRITE_F_NEW_FILE != 0
        || h.path_len != 0
        || h.data_len != 0
    {
        return false;
    }
    let w = RefWrite {
        pid: h.hdr.pid,
        tgid: h.hdr.tgid,
        fd: h.fd,
        probe: h.hdr.probe,
        inode: h.inode,
        offset: h.offset,
        total: h.total,
        calls: h.calls.max(1),
        ktime_ns: h.hdr.ktime_ns,
        flags: h.hdr.flags,
    };
    fold(batch, runs, &w)
}

/// Joins by-reference writes that continue each other (same thread, fd and file, each
/// starting where that stream's last one ended, other streams' records in between allowed)
/// into one, counting the calls: a busy writer's batch becomes one queue entry instead of
/// thousands. Any other record of the same (thread, fd) ends its run.
fn merge_refs(batch: Vec<Queued>) -> Vec<Queued> {
    let by_ref = |q: &Queued| matches!(&q.ev, Event::Write(w) if w.by_ref() && !w.new_file());
    if batch.iter().filter(|q| by_ref(q)).nth(1).is_none() {
        // Fewer than two: nothing to fold.
        return batch;
    }
    let mut out: Vec<Queued> = Vec::with_capacity(batch.len());
    // (thread, fd) -> index in `out` of its run's entry.
    let mut runs: FastMap<(u32, i32), usize> = FastMap::default();
    for q in batch {
        let Event::Write(w) = &q.ev else {
            out.push(q);
            continue;
        };
        let key = (w.task.pid, w.fd);
        if !w.by_ref() || w.new_file() {
            runs.remove(&key);
            out.push(q);
            continue;
        }
        let r = RefWrite {
            pid: w.task.pid,
            tgid: w.task.tgid,
            fd: w.fd,
            probe: w.task.probe,
            inode: w.inode,
            offset: w.offset,
            total: w.total,
            calls: w.calls,
            ktime_ns: w.task.ktime_ns,
            flags: w.task.flags,
        };
        if fold(&mut out, &runs, &r) {
            continue;
        }
        runs.insert(key, out.len());
        out.push(q);
    }
    out
}

/// Queues one turn's records as one batch (one hand-off and at most one wakeup per turn,
/// not per record). A write by reference that finds no room comes back to the caller, to
/// be held and merged with what follows: it is tiny and stands for bytes still in the
/// file, so it is never dropped, and holding it keeps the reader draining the ring. Other
/// writes are dropped when there is no room (counted); exec, kill and connect records wait
/// for room.
fn enqueue(
    batch: Vec<Queued>,
    tx: &handoff::Sender<Vec<Queued>>,
    queued: &AtomicUsize,
    metrics: &Metrics,
) -> Vec<Queued> {
    let mut back = Vec::new();
    // Records that are not writes always go, so one among them means the send waits.
    let must_keep = batch.iter().any(|q| !matches!(q.ev, Event::Write(_)));
    let bytes: usize = batch.iter().map(|q| q.bytes).sum();
    // Room for all of it (the usual case): the batch goes as it is, not copied.
    let out = if queued.load(Ordering::Relaxed) + bytes <= QUEUE_BYTES {
        queued.fetch_add(bytes, Ordering::Relaxed);
        batch
    } else {
        admit(batch, queued, metrics, &mut back)
    };
    if out.is_empty() {
        return back;
    }
    let unsent = if must_keep {
        tx.send(out).err().map(|e| e.0)
    } else {
        match tx.try_send(out) {
            Ok(()) => None,
            Err(TrySendError::Full(v)) | Err(TrySendError::Disconnected(v)) => Some(v),
        }
    };
    for q in unsent.into_iter().flatten() {
        queued.fetch_sub(q.bytes, Ordering::Relaxed);
        refused(q, &mut back, metrics);
    }
    // Held back in kernel order, so runs still merge with what follows.
    back.sort_by_key(|q| q.ev.ktime());
    back
}

/// What of `batch` the queue has room for, in order; writes without room go to `refused`.
fn admit(
    batch: Vec<Queued>,
    queued: &AtomicUsize,
    metrics: &Metrics,
    back: &mut Vec<Queued>,
) -> Vec<Queued> {
    let mut out = Vec::with_capacity(batch.len());
    for q in batch {
        let keep = !matches!(q.ev, Event::Write(_));
        if !keep && queued.load(Ordering::Relaxed) + q.bytes > QUEUE_BYTES {
            refused(q, back, metrics);
            continue;
        }
        queued.fetch_add(q.bytes, Ordering::Relaxed);
        out.push(q);
    }
    out
}

/// A record the queue had no room for: held back if it is a write by reference, else
/// dropped and counted.
fn refused(q: Queued, back: &mut Vec<Queued>, metrics: &Metrics) {
    let (by_ref, calls) = match &q.ev {
        Event::Write(w) => (w.by_ref(), w.calls as u64),
        // Folded repeats alone: no call of its own (they are counted as folded).
        Event::Connect(c) if c.folds_only => (false, 0),
        _ => (false, 1),
    };
    if by_ref {
        back.push(q);
        return;
    }
    metrics
        .queue_dropped
        .with_label_values(&["events"])
        .inc_by(calls);
    metrics
        .pipeline_dropped
        .with_label_values(&[q.ev.task().probe_name()])
        .inc_by(calls);
}

/// The worker's loop. A panic in its own code drops the one record (or periodic pass) it
/// was on, counted by `panics::guard`; detection goes on instead of ending with the thread.
fn work(p: &mut Pipeline, rx: handoff::Receiver<Vec<Queued>>, queued: &AtomicUsize) {
    use crate::panics::guard;
    let period = Duration::from_millis(250);
    let mut last_tick = Instant::now();
    let errors = p.metrics.internal_errors.clone();
    let handle = |p: &mut Pipeline, batch: Vec<Queued>| {
        // A reload that came while the worker waited applies to this batch already (the
        // daemon reports a reload done only once the worker has taken it); one that comes
        // during a batch, to the next.
        p.take_reload();
        p.now = Instant::now();
        for q in batch {
            queued.fetch_sub(q.bytes, Ordering::Relaxed);
            let stage = match &q.ev {
                Event::Exec(_) => "exec",
                Event::Enforce(_) => "enforce",
                Event::Write(_) => "write",
                Event::Connect(_) => "connect",
                Event::Core(_) => "core",
                Event::Copy(_) => "copy",
            };
            if guard(stage, &errors, || p.handle(q.ev)).is_none() {
                p.recover();
            }
        }
    };
    let periodic = |p: &mut Pipeline, f: fn(&mut Pipeline)| {
        if guard("periodic", &errors, || f(p)).is_none() {
            p.recover();
        }
    };
    loop {
        // Writes by reference wait to settle: look again soon while some are pending.
        let wait = if held::waiting(p) {
            held::SETTLE
        } else {
            period
        };
        p.take_reload();
        match rx.recv_timeout(wait) {
            Ok(batch) => {
                handle(p, batch);
                // Drain what is queued, then read the held files' settled writes at once.
                while let Ok(batch) = rx.try_recv() {
                    handle(p, batch);
                }
                periodic(p, held::read_all);
            }
            Err(RecvTimeoutError::Timeout) => {
                periodic(p, held::read_all);
            }
            Err(RecvTimeoutError::Disconnected) => {
                periodic(p, Pipeline::finish);
                return;
            }
        }
        if last_tick.elapsed() >= period {
            periodic(p, Pipeline::tick);
            last_tick = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::WriteEvent;
    use leakwatch_common::{WRITE_F_APPEND, WRITE_F_BY_REF};

    fn by_ref(pid: u32, fd: i32, offset: i64, total: u64, flags: u32) -> Queued {
        let mut w = WriteEvent::default();
        (w.fd, w.offset, w.total, w.inode, w.calls) = (fd, offset, total, 7, 1);
        w.task.pid = pid;
        w.task.flags = WRITE_F_BY_REF | flags;
        Queued {
            ev: Event::Write(w),
            bytes: 160,
        }
    }

    #[test]
    fn a_refused_record_of_folded_connects_alone_counts_no_call() {
        let m = Metrics::new();
        let connect = |folds_only| Queued {
            ev: Event::Connect(crate::events::ConnectEvent {
                task: crate::events::Task {
                    probe: leakwatch_common::PROBE_CONNECT,
                    ..Default::default()
                },
                folds_only,
                ..Default::default()
            }),
            bytes: 160,
        };
        let mut back = Vec::new();
        refused(connect(true), &mut back, &m);
        let dropped = || {
            m.pipeline_dropped
                .with_label_values(&["sys_enter_connect"])
                .get()
        };
        assert_eq!(dropped(), 0);
        refused(connect(false), &mut back, &m);
        assert_eq!(dropped(), 1);
        assert!(back.is_empty());
    }

    #[test]
    fn a_decoded_record_is_pushed_and_a_malformed_one_counted_and_dropped() {
        use leakwatch_common::{ConnectEvent, EventHeader, EVENT_CONNECT, PROBE_CONNECT};
        let m = Metrics::new();
        let mut c = ConnectEvent {
            hdr: EventHeader {
                kind: EVENT_CONNECT,
                probe: PROBE_CONNECT,
                tgid: 42,
                ..Default::default()
            },
            fd: 5,
            ..Default::default()
        };
        c.hdr.comm[..4].copy_from_slice(b"curl");
        let rec = crate::events::record(c, &[]);
        let mut batch = Vec::new();
        assert!(decoded(&rec, &m, &mut batch));
        assert!(!decoded(&rec[..8], &m, &mut batch), "a short record");
        let mut unknown = c;
        unknown.hdr.kind = 999;
        assert!(!decoded(
            &crate::events::record(unknown, &[]),
            &m,
            &mut batch
        ));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].bytes, rec.len() + HELD_IN_MEMORY);
        let Event::Connect(e) = &batch[0].ev else {
            panic!("not a connect: {:?}", batch[0].ev)
        };
        assert_eq!((e.task.tgid, e.fd, e.task.comm.as_str()), (42, 5, "curl"));
        assert_eq!(m.decode_errors.get(), 2);
    }

    fn ranges(v: &[Queued]) -> Vec<(i64, u64, u32)> {
        v.iter()
            .map(|q| match &q.ev {
                Event::Write(w) => (w.offset, w.total, w.calls),
                _ => panic!("not a write"),
            })
            .collect()
    }

    #[test]
    fn contiguous_by_reference_writes_merge_and_count_their_calls() {
        let batch = vec![
            by_ref(1, 3, 0, 4096, 0),
            by_ref(1, 3, 4096, 4096, WRITE_F_APPEND),
            by_ref(1, 3, 8192, 100, 0),
            // A gap, another thread, another fd: each starts a new entry.
            by_ref(1, 3, 9000, 10, 0),
            by_ref(2, 3, 9010, 10, 0),
            by_ref(2, 4, 9020, 10, 0),
        ];
        let out = merge_refs(batch);
        assert_eq!(
            ranges(&out),
            vec![(0, 8292, 3), (9000, 10, 1), (9010, 10, 1), (9020, 10, 1)]
        );
        let Event::Write(w) = &out[0].ev else {
            panic!()
        };
        assert_ne!(
            w.task.flags & WRITE_F_APPEND,
            0,
            "flags of merged calls kept"
        );
    }

    #[test]
    fn interleaved_streams_each_merge() {
        let batch = vec![
            by_ref(1, 3, 0, 10, 0),
            by_ref(2, 3, 100, 10, 0),
            by_ref(1, 3, 10, 10, 0),
            by_ref(2, 3, 110, 10, 0),
        ];
        assert_eq!(ranges(&merge_refs(batch)), vec![(0, 20, 2), (100, 20, 2)]);
    }

    #[test]
    fn a_continuing_record_is_folded_in_from_its_header() {
        let mut batch = vec![by_ref(1, 3, 0, 4096, 0)];
        let runs: FastMap<(u32, i32), usize> = [((1, 3), 0)].into_iter().collect();
        let mut h = leakwatch_common::WriteHeader {
            fd: 3,
            offset: 4096,
            total: 4096,
            inode: 7,
            ..Default::default()
        };
        h.hdr.kind = leakwatch_common::EVENT_WRITE;
        h.hdr.pid = 1;
        h.hdr.flags = WRITE_F_BY_REF;
        assert!(continues(&mut batch, &runs, &h));
        assert_eq!(ranges(&batch), vec![(0, 8192, 2)]);
        // Not where the run ended, another file, or carrying bytes: decoded on its own.
        h.offset = 100;
        assert!(!continues(&mut batch, &runs, &h));
        h.offset = 8192;
        h.inode = 8;
        assert!(!continues(&mut batch, &runs, &h));
        h.inode = 7;
        h.data_len = 1;
        assert!(!continues(&mut batch, &runs, &h));
    }

    #[test]
    fn kernel_runs_fold_with_their_calls_and_settled_only_if_the_last_part_is() {
        use leakwatch_common::WRITE_F_SETTLED;
        // Two runs the kernel sent (1000 and 24 calls), then a lone unsettled call.
        let mut a = by_ref(1, 3, 0, 4096, WRITE_F_SETTLED);
        let mut b = by_ref(1, 3, 4096, 100, WRITE_F_SETTLED);
        if let (Event::Write(x), Event::Write(y)) = (&mut a.ev, &mut b.ev) {
            (x.calls, y.calls) = (1000, 24);
        }
        let out = merge_refs(vec![a, b]);
        assert_eq!(ranges(&out), vec![(0, 4196, 1024)]);
        let Event::Write(w) = &out[0].ev else {
            panic!()
        };
        assert!(w.settled());
        let c = by_ref(1, 3, 4196, 10, 0);
        let out = merge_refs(out.into_iter().chain([c]).collect());
        let Event::Write(w) = &out[0].ev else {
            panic!()
        };
        assert_eq!((w.total, w.calls), (4206, 1025));
        assert!(!w.settled(), "its last call may still be in flight");
    }

    #[test]
    fn copied_writes_are_never_merged() {
        let mut a = by_ref(1, 3, 0, 10, 0);
        if let Event::Write(w) = &mut a.ev {
            w.task.flags = 0;
        }
        let b = by_ref(1, 3, 10, 10, 0);
        assert_eq!(merge_refs(vec![a, b]).len(), 2);
    }
}
