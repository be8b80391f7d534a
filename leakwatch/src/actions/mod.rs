//! The action log: what each process did — execs, connects, writes per (process, fd),
//! findings, freezes, kills and severs — in SQLite at `STATE_DIR/actions.db`, so "what did
//! the process holding the key do since the leak" is a query (`leakwatch actions`, which
//! reads the file directly, also after the daemon died). The pipeline hands small rows to
//! a bounded queue and never waits (a full queue drops and counts); one thread writes them
//! in batched transactions and prunes by age and size, and defers a batch (at most 2 s)
//! while a freeze or kill is under way. Never payloads, never plaintext:
//! argv keeps detected credentials only as their previews, and frozen ones (see `scrub`).
mod connects;
pub mod db;
pub mod query;
mod scrub;
mod writes;

use std::{
    path::PathBuf,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, RwLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

pub use connects::ConnectLog;
pub use writes::{Over, WriteLog};

use crate::{
    config::Actions as Limits, detect::frozen::FrozenSet, metrics::Metrics, procs::ProcInfo,
    respond::Responding,
};

/// Rows queued for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Rows written per transaction, at most.
const BATCH: usize = 4096;
/// How long the writer lets rows gather after the first before writing them.
const LINGER: Duration = Duration::from_millis(100);
/// Longest the writer waits for a freeze or kill under way (see `respond::Responding`),
/// and how long after a wait that ran out it does not wait again (a stream of kills, or
/// a `--deep` sweep, must not slow the log to a batch per wait).
const DEFER_MAX: Duration = Duration::from_secs(2);
const DEFER_COOLDOWN: Duration = Duration::from_secs(10);
/// How often the log is pruned by age and size.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// One action. `detail` holds the kind's own fields (`filename`, `argv`, `remote`, `path`,
/// `bytes`, `rule`…).
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Unix time in milliseconds.
    pub ts_ms: i64,
    pub kind: &'static str,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    pub exe: String,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub fingerprint: Option<String>,
    pub detail: Map<String, Value>,
}

impl Row {
    pub fn new(kind: &'static str, who: &ProcInfo) -> Row {
        Row {
            ts_ms: now_ms(),
            kind,
            pid: who.pid,
            ppid: who.ppid,
            uid: who.uid,
            comm: who.comm.clone(),
            exe: who.exe.clone(),
            unit: who.unit.clone(),
            cgroup: who.cgroup.clone(),
            fingerprint: None,
            detail: Map::new(),
        }
    }

    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Row {
        self.detail.insert(k.into(), v.into());
        self
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The wall-clock time, in ms since the epoch, of an earlier `at`.
pub fn wall_ms(at: Instant) -> i64 {
    now_ms() - at.elapsed().as_millis() as i64
}

enum Msg {
    Row(Box<Row>),
    Flush(SyncSender<()>),
}

/// Cheap to clone; every clone feeds the same writer thread. A disabled log takes rows and
/// drops them without counting.
#[derive(Clone)]
pub struct ActionLog {
    tx: Option<SyncSender<Msg>>,
    /// The writer thread, unparked by `flush` so it does not linger.
    writer: Option<std::thread::Thread>,
    metrics: Arc<Metrics>,
    /// `[actions] argv = "none"`: exec rows carry no argv at all.
    pub argv: bool,
}

impl ActionLog {
    pub fn disabled(metrics: Arc<Metrics>) -> ActionLog {
        ActionLog {
            tx: None,
            writer: None,
            metrics,
            argv: false,
        }
    }

    /// Starts the writer thread on `STATE_DIR/actions.db`. A database that cannot be
    /// opened is logged and counted, and the daemon runs on without the log. `frozen` is
    /// the daemon's frozen set: no exec row keeps a key in it (see `scrub`). The writer
    /// waits while `responding` says a freeze or kill is under way.
    pub fn start(
        path: PathBuf,
        limits: Limits,
        metrics: Arc<Metrics>,
        frozen: Arc<RwLock<FrozenSet>>,
        responding: Responding,
    ) -> Result<(ActionLog, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let argv = limits.argv != "none";
        let t = std::thread::Builder::new()
            .name("lw-actions".into())
            .spawn({
                let metrics = metrics.clone();
                move || run(rx, &path, &limits, &metrics, &frozen, &responding)
            })
            .context("starting the action log thread")?;
        Ok((
            ActionLog {
                tx: Some(tx),
                writer: Some(t.thread().clone()),
                metrics,
                argv,
            },
            t,
        ))
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues `row`; never blocks.
    pub fn record(&self, row: Row) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(Msg::Row(Box::new(row))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .queue_dropped
                    .with_label_values(&["actions"])
                    .inc();
            }
        }
    }

    /// Waits until every row queued so far is written (shutdown, tests).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = mpsc::sync_channel(1);
        if tx.send(Msg::Flush(done)).is_ok() {
            if let Some(w) = &self.writer {
                w.unpark();
            }
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn run(
    rx: Receiver<Msg>,
    path: &std::path::Path,
    limits: &Limits,
    metrics: &Metrics,
    frozen: &RwLock<FrozenSet>,
    responding: &Responding,
) {
    let mut swept = scrub::Swept::from(&FrozenSet::read(frozen));
    let mut db = match db::Db::open(path) {
        Ok(db) => Some(db),
        Err(e) => {
            log::error!(
                "the action log {} cannot be opened: {e:#}; actions are not recorded until \
                 the daemon restarts (alerts are unaffected)",
                path.display()
            );
            metrics.actions_errors.inc();
            None
        }
    };
    let mut last_prune: Option<Instant> = None;
    let mut last_error: Option<Instant> = None;
    let mut gave_up: Option<Instant> = None;
    let mut batch: Vec<Row> = Vec::new();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut flushes = Vec::new();
        let take = |m: Msg, batch: &mut Vec<Row>, flushes: &mut Vec<SyncSender<()>>| match m {
            Msg::Row(r) => batch.push(*r),
            Msg::Flush(t) => flushes.push(t),
        };
        if let Some(m) = first {
            take(m, &mut batch, &mut flushes);
            // Rows come one per exec or connect: let them gather (parked, not woken by
            // each), so a storm costs a transaction and a wakeup per LINGER, not per row.
            // A flush (a stop, a query) unparks it at once.
            if flushes.is_empty() {
                std::thread::park_timeout(LINGER);
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut batch, &mut flushes),
                    Err(_) => break,
                }
            }
        }
        if let Some(db) = db.as_mut() {
            // Rows and the rewrite of a new key can wait a few milliseconds for a freeze or
            // kill under way, which on a 2-core host needs both cores; a flush, a full
            // batch, or a writer whose last wait ran out cannot.
            // (The frozen set is hashed only while a sweep runs, not at every turn.)
            let urgent = !flushes.is_empty()
                || batch.len() >= BATCH
                || gave_up.is_some_and(|t| t.elapsed() < DEFER_COOLDOWN);
            if !urgent
                && responding.active()
                // In a block: the guard must be gone before `wait_idle`, or a freeze
                // replacing the set would wait for this thread while it waits for the freeze.
                && (!batch.is_empty() || {
                    let f = FrozenSet::read(frozen);
                    swept.pending(&f)
                })
                && responding.wait_idle(DEFER_MAX) >= DEFER_MAX
            {
                gave_up = Some(Instant::now());
            }
            {
                let f = FrozenSet::read(frozen);
                for r in batch.iter_mut() {
                    scrub::row(r, &f);
                }
                let fresh = swept.fresh(&f);
                drop(f);
                if !fresh.is_empty() {
                    // Before this batch: its rows were checked above already.
                    match scrub::sweep(db.conn_mut(), &fresh) {
                        Ok(n) => {
                            swept.mark(&fresh);
                            if n > 0 {
                                log::info!("a newly frozen credential was rewritten out of {n} exec row(s) of the action log");
                            }
                        }
                        Err(e) => {
                            metrics.actions_errors.inc();
                            log::warn!("rewriting a frozen credential out of the action log failed: {e:#}; retrying");
                        }
                    }
                }
            }
            if !batch.is_empty() {
                match db.insert(&batch) {
                    Ok(()) => {
                        for r in &batch {
                            metrics.actions_rows.with_label_values(&[r.kind]).inc();
                        }
                    }
                    Err(e) => {
                        metrics.actions_errors.inc();
                        if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            log::error!(
                                "writing {} rows to the action log {} failed: {e:#}",
                                batch.len(),
                                path.display()
                            );
                            last_error = Some(Instant::now());
                        }
                    }
                }
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                let cutoff = now_ms() - limits.max_age_ms();
                match db.prune(cutoff, (limits.max_mb * 1e6) as u64) {
                    Ok(n) => metrics.actions_pruned.inc_by(n),
                    Err(e) => {
                        metrics.actions_errors.inc();
                        log::warn!("pruning the action log failed: {e:#}");
                    }
                }
            }
        }
        batch.clear();
        for f in flushes {
            let _ = f.send(());
        }
    }
}

/// The alert kinds the action log keeps from the alert stream (findings come from the
/// pipeline, before deduplication).
const FROM_ALERTS: [&str; 3] = ["freeze", "kill", "sever"];

/// Freeze, kill and sever alerts as action rows (a `Sink`).
pub struct AlertRows(pub ActionLog);

impl crate::sinks::Sink for AlertRows {
    fn write(&mut self, batch: &[crate::alerts::Alert]) {
        for a in batch.iter().filter(|a| FROM_ALERTS.contains(&a.kind)) {
            self.0.record(from_alert(a));
        }
    }
}

/// An alert as a row: its process fields, fingerprint, and the rest as detail.
pub fn from_alert(a: &crate::alerts::Alert) -> Row {
    let mut detail = a.extra.clone();
    let cgroup = detail
        .remove("cgroup")
        .and_then(|v| v.as_str().map(str::to_string));
    for (k, v) in [
        ("rule", a.rule.clone()),
        ("source", a.source.map(|s| s.as_str().to_string())),
        ("redacted", a.redacted.clone()),
        ("path", a.path.clone()),
        ("remote", a.remote.clone()),
    ] {
        if let Some(v) = v {
            detail.insert(k.into(), Value::String(v));
        }
    }
    let ts_ms = humantime::parse_rfc3339(&a.ts)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as i64);
    Row {
        ts_ms,
        kind: a.kind,
        pid: a.pid,
        ppid: a.ppid,
        uid: a.uid,
        comm: a.comm.clone(),
        exe: a.exe.clone(),
        unit: a.unit.clone(),
        cgroup,
        fingerprint: a.fingerprint.clone(),
        detail,
    }
}

/// A real action log in a fresh directory, and its rows of one kind, for unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub struct TestLog {
        pub log: ActionLog,
        dir: PathBuf,
    }

    impl TestLog {
        pub fn new(name: &str) -> TestLog {
            let dir = std::env::temp_dir().join(format!("lw-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let metrics = Arc::new(Metrics::new());
            let (log, _t) = ActionLog::start(
                dir.join("a.db"),
                Default::default(),
                metrics,
                Default::default(),
                Default::default(),
            )
            .unwrap();
            TestLog { log, dir }
        }

        /// The `detail` of every row of `kind` written so far, oldest first.
        pub fn rows(&self, kind: &str) -> Vec<Value> {
            self.log.flush();
            let c = db::open_read(&self.dir.join("a.db")).unwrap();
            let mut st = c
                .prepare("SELECT detail FROM actions WHERE kind = ?1 ORDER BY id")
                .unwrap();
            let v = st
                .query_map([kind], |r| r.get::<_, String>(0))
                .unwrap()
                .map(|s| serde_json::from_str(&s.unwrap()).unwrap())
                .collect();
            v
        }
    }

    impl Drop for TestLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
