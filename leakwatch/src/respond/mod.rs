//! Emergency response. `freeze` persists a credential's fingerprint, loads it into the
//! kernel map, then finds every holder (environ, cmdline, exec history, optionally memory)
//! and its descendants, stops them, severs their TCP connections, kills them and confirms.
//! Afterwards the kernel kills any exec carrying it; `on_enforce` reports those, once per
//! unit. The frozen set survives restarts: `restore` reloads and sweeps again.
mod peers;
pub mod pidfd;
pub mod procscan;
mod responding;
pub mod sever;
pub mod store;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::atomic::{AtomicBool, Ordering},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::{
    alerts::now_rfc3339,
    config::Config,
    detect::{frozen::FrozenKey, frozen::FrozenSet, redact},
    events::{EnforceNotice, ExecEvent},
    metrics::Metrics,
    pipeline::{base_alert, Shared},
    probes::Probes,
    procs::{ProcInfo, Procs},
    sinks::Alerts,
    source::Source,
};
use procscan::Proc;
pub use responding::Responding;
use store::{kernel_hash, FrozenEntry, Store};

/// Memory scanned per process by `--deep`.
const DEEP_BUDGET: usize = 512 << 20;

pub struct FreezeRequest {
    pub secret: Option<Zeroizing<Vec<u8>>>,
    pub fingerprint: Option<String>,
    pub deep: bool,
    /// The `leakwatch freeze` client: never killed, nor are its ancestors (the operator's shell).
    pub client_pid: Option<u32>,
    /// A fleet entry (`fleet::watch`): fingerprint, length and prefix, no plaintext.
    pub fleet: Option<FrozenKey>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcReport {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: String,
    pub unit: Option<String>,
    /// Why it was selected: environ, cmdline, exec, memory, descendant.
    pub reason: String,
    /// Killed and confirmed gone (for killed entries).
    pub confirmed: bool,
}

impl ProcReport {
    /// The process fields of its alerts.
    fn info(&self) -> ProcInfo {
        ProcInfo {
            pid: self.pid,
            ppid: self.ppid,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            unit: self.unit.clone(),
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SeveredReport {
    pub pid: u32,
    pub local: String,
    pub remote: String,
    pub netns: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub fingerprint: String,
    pub already_frozen: bool,
    /// The kernel kills new execs carrying it (false when frozen by fingerprint alone: then
    /// userspace kills such execs right after they start).
    pub kernel_enforced: bool,
    pub killed: Vec<ProcReport>,
    pub protected: Vec<ProcReport>,
    pub severed: Vec<SeveredReport>,
    pub units: Vec<String>,
    pub errors: Vec<String>,
    pub elapsed_ms: f64,
    /// Where `elapsed_ms` went.
    pub phases_ms: Phases,
}

/// A sweep's phases, in ms: `queued` (behind another freeze or the startup sweep),
/// `persist` (store written, key in force), `scan` (every process's environment and
/// command line, `--deep` memory, the holders' pidfds and details), `find` (descendants
/// and their handles, shield, protected list), `stop`, `sever`, `kill` (SIGKILL sent until
/// every holder is confirmed gone: the kernel's teardown, which no monitor can shorten)
/// and `report` (counts, alerts).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    pub queued: f64,
    pub persist: f64,
    pub scan: f64,
    pub find: f64,
    pub stop: f64,
    pub sever: f64,
    pub kill: f64,
    pub report: f64,
}

impl Phases {
    /// The report's keys, in order (what the CLI prints and the bench describes).
    pub const NAMES: [&'static str; 8] = [
        "queued", "persist", "scan", "find", "stop", "sever", "kill", "report",
    ];
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What a fleet unfreeze did here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lift {
    Lifted,
    /// Frozen here by a local freeze: kept.
    Local,
    Absent,
}

pub struct Context {
    probes: Arc<Mutex<Probes>>,
    alerts: Alerts,
    metrics: Arc<Metrics>,
    seed: u64,
    store: Mutex<Store>,
    frozen: Arc<RwLock<FrozenSet>>,
    history: Arc<RwLock<VecDeque<(u32, String)>>>,
    dumps: crate::crash::Inbox,
    tls_blind: crate::pipeline::BlindList,
    protected: RwLock<Vec<String>>,
    /// (kernel hash, unit or exe) already reported as dying at exec.
    enforced_once: Mutex<HashSet<(u64, String)>>,
    /// Kernel kill counts changed since the store was last written (see `on_enforce`).
    kills_unsaved: AtomicBool,
    /// Freeze one credential at a time: two sweeps racing would report each other's kills.
    busy: tokio::sync::Mutex<()>,
    /// Holders seen writing a frozen credential that are being killed right now.
    killing: Mutex<HashSet<u32>>,
    /// Fingerprints whose kernel hash is known right: computed from the plaintext in this
    /// run (a freeze, a repair) or confirmed by a kernel kill. A hash read from disk is
    /// only a claim until then (it cannot be checked against a fingerprint).
    verified: Mutex<HashSet<String>>,
    /// Recent `freeze` clients and their ancestors (the responder's shell, a script piping
    /// the key in): they wrote the key on its way to freeze, which makes them no holders.
    clients: Mutex<Vec<(Instant, Vec<u32>)>>,
    /// When each credential frozen in this run was put in force (kernel monotonic ns).
    /// An exec before that is the sweep's to judge (it shields the responder), not
    /// `kill_exec`'s; keys restored at start are in force for every exec the daemon sees.
    in_force: Mutex<HashMap<String, u64>>,
    /// The fleet store as `fleet::watch` last saw it (`None`: no fleet configured).
    fleet_status: Mutex<Option<serde_json::Value>>,
    /// Set while a sweep runs, so the action log waits (see `responding`).
    responding: Responding,
}

impl Context {
    /// After a panic caught on a thread that may have held one of these locks (see
    /// `panics::guard`): a poisoned lock would make every later freeze, status or kill
    /// fail on "lock poisoned", a worse state at 3 a.m. than what one half-done update
    /// leaves behind.
    pub fn clear_poison(&self) {
        self.probes.clear_poison();
        self.store.clear_poison();
        self.frozen.clear_poison();
        self.history.clear_poison();
        self.dumps.clear_poison();
        self.tls_blind.clear_poison();
        self.protected.clear_poison();
        self.enforced_once.clear_poison();
        self.killing.clear_poison();
        self.verified.clear_poison();
        self.clients.clear_poison();
        self.in_force.clear_poison();
        self.fleet_status.clear_poison();
    }

    /// A crash dump scanned by someone else (the core-handler): queued for the pipeline,
    /// which reports it as `crash_dump` findings.
    pub fn dump_report(&self, r: crate::crash::DumpReport) -> Result<()> {
        if r.pid == 0 || r.hits.len() > crate::crash::HITS_MAX {
            bail!("a dump report needs the crashed pid and at most 4096 findings");
        }
        if !crate::crash::push(&self.dumps, r) {
            self.metrics
                .queue_dropped
                .with_label_values(&["dumps"])
                .inc();
            bail!("too many crash dump reports are waiting; this one was dropped and counted");
        }
        Ok(())
    }

    /// A reloaded config's `protected` list (SIGHUP).
    pub fn set_protected(&self, list: Vec<String>) {
        if let Ok(mut l) = self.protected.write() {
            *l = list;
        }
    }
}

/// How long a freeze client's ancestors stay shielded from write-time kills.
const CLIENT_SHIELD: Duration = Duration::from_secs(60);

/// Why a process is to be killed, and for which frozen credential.
type Reasons = HashMap<u32, (&'static str, String)>;

/// A holder's handle and who it is, gathered in the pass that found it.
struct Prepared {
    handle: pidfd::Target,
    info: ProcInfo,
}

impl Prepared {
    fn of(p: &Proc) -> Prepared {
        let handle = pidfd::Target::open(p);
        // Parent and name are the scan's; the uid comes from the pidfd where the kernel
        // tells it, which spares generating /proc/PID/status.
        let info = match handle.uid() {
            Some(uid) => crate::procs::describe(p.pid, p.ppid, uid, p.comm.clone()),
            None => info(p.pid),
        };
        Prepared { handle, info }
    }
}

impl Context {
    pub fn new(
        cfg: &Config,
        seed: u64,
        probes: Arc<Mutex<Probes>>,
        alerts: Alerts,
        metrics: Arc<Metrics>,
        shared: &Shared,
        store: Store,
    ) -> Result<Context> {
        for problem in &store.problems {
            log::error!("{problem}");
            alerts.emit(crate::alerts::Alert::new("state").with("problem", problem.clone()));
        }
        Ok(Context {
            probes,
            alerts,
            metrics,
            seed,
            store: Mutex::new(store),
            frozen: shared.frozen.clone(),
            history: shared.history.clone(),
            dumps: shared.dumps.clone(),
            tls_blind: shared.tls_blind.clone(),
            protected: RwLock::new(cfg.protected.clone()),
            enforced_once: Mutex::new(HashSet::new()),
            kills_unsaved: AtomicBool::new(false),
            busy: tokio::sync::Mutex::new(()),
            killing: Mutex::new(HashSet::new()),
            clients: Mutex::new(Vec::new()),
            in_force: Mutex::new(HashMap::new()),
            fleet_status: Mutex::new(None),
            verified: Mutex::new(HashSet::new()),
            responding: shared.responding.clone(),
        })
    }

    /// Pushes the stored set to the kernel map and the userspace matcher.
    fn publish(&self) -> Result<()> {
        let store = self
            .store
            .lock()
            .map_err(|_| anyhow::anyhow!("frozen store lock poisoned"))?;
        let mut probes = self
            .probes
            .lock()
            .map_err(|_| anyhow::anyhow!("probes lock poisoned"))?;
        probes
            .set_frozen(&store.kernel_entries())
            .context("loading the frozen set into the kernel map")?;
        self.metrics
            .exec_kill_pinned
            .set(i64::from(probes.kill_pinned()));
        drop(probes);
        FrozenSet::replace(&self.frozen, FrozenSet::new(store.keys()));
        self.metrics.frozen.set(store.frozen.len() as i64);
        Ok(())
    }

    /// At start: reload the frozen set into the kernel and sweep live processes again.
    pub async fn restore(&self) {
        if let Err(e) = self.publish() {
            log::error!("restoring the frozen set failed: {e:#}");
            return;
        }
        let keys = self.store.lock().map(|s| s.keys()).unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        let _guard = self.busy.lock().await;
        let _responding = self.responding.start();
        let set = FrozenSet::new(keys.clone());
        let fps: Vec<String> = keys.iter().map(FrozenKey::fingerprint).collect();
        let r = tokio::task::block_in_place(|| self.sweep(&set, &fps, false, None));
        log::info!(
            "restored {} frozen credential(s); startup sweep killed {} process(es), severed {} connection(s)",
            keys.len(),
            r.killed.len(),
            r.severed.len()
        );
    }

    pub async fn freeze(&self, req: FreezeRequest) -> Result<Report> {
        let t0 = Instant::now();
        let _guard = self.busy.lock().await;
        // Stopping, with the exec kill off its hooks (not pinned): a freeze now would be
        // acknowledged and not enforced until the next start.
        if self.probes.lock().is_ok_and(|p| p.kill_detached()) {
            bail!("leakwatch is stopping and its exec kill is detached: nothing was frozen; run the freeze again once it is back (it restarts within seconds under systemd)");
        }
        let queued = ms(t0.elapsed());
        // Before the key is published: the action log would start rewriting it out of old
        // rows at once, on a core the sweep needs.
        let _responding = self.responding.start();
        let (key, hash, redacted) = match (&req.secret, &req.fingerprint, &req.fleet) {
            (None, None, Some(k)) => (k.clone(), None, None),
            (Some(s), None, None) => {
                if let Some(why) = crate::detect::frozen::too_short(s.len()) {
                    bail!(why);
                }
                (
                    FrozenKey::from_secret(s),
                    Some(kernel_hash(self.seed, s)),
                    Some(redact(s)),
                )
            }
            (None, Some(fp), None) => (
                FrozenKey::from_fingerprint(fp).with_context(|| {
                    // Not echoed: a mistyped value may be the secret itself.
                    "the value given as a fingerprint is not one (not shown: it may be the secret itself); give sha256: followed by 64 hex digits".to_string()
                })?,
                None,
                None,
            ),
            _ => bail!("give either the credential (on stdin) or --fingerprint, not both"),
        };
        let fp = key.fingerprint();
        let already = {
            let mut store = self
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("frozen store lock poisoned"))?;
            match store.find(&fp) {
                Some(i) => {
                    // A fingerprint-only entry learns its length, prefix and kernel hash
                    // when the credential itself is frozen later.
                    let e = &mut store.frozen[i];
                    let mut changed = false;
                    if e.kernel_hash.is_none() && hash.is_some() {
                        e.kernel_hash = hash;
                        changed = true;
                    }
                    if e.len == 0 && key.len != 0 {
                        e.len = key.len;
                        e.prefix = String::from_utf8_lossy(&key.prefix).into_owned();
                        changed = true;
                    }
                    // Frozen here by hand: the fleet must not lift it.
                    if req.fleet.is_none() && e.fleet {
                        e.fleet = false;
                        changed = true;
                    }
                    if changed {
                        store.save()?;
                    }
                    true
                }
                None => {
                    store.frozen.push(FrozenEntry {
                        fingerprint: fp.clone(),
                        len: key.len,
                        prefix: String::from_utf8_lossy(&key.prefix).into_owned(),
                        kernel_hash: hash,
                        frozen_at: now_rfc3339(),
                        kills: 0,
                        fleet: req.fleet.is_some(),
                    });
                    store.save().context("persisting the frozen set")?;
                    false
                }
            }
        };
        // The client and its ancestors (the operator's shell, which may have written the
        // key into the pipe just now) are shielded before the key is in force: from then on
        // the write path may meet that write and kill its writer.
        if let Some(c) = req.client_pid {
            let mut chain = procscan::ancestors_live(c);
            chain.push(c);
            if let Ok(mut cl) = self.clients.lock() {
                cl.retain(|(t, _)| t.elapsed() < CLIENT_SHIELD);
                cl.push((Instant::now(), chain));
            }
        }
        if !already {
            if let Ok(mut f) = self.in_force.lock() {
                f.insert(fp.clone(), crate::events::monotonic_ns());
            }
        }
        self.publish()?;
        if hash.is_some() {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(fp.clone());
            }
        }
        let mut a = crate::alerts::Alert::new("freeze");
        a.fingerprint = Some(fp.clone());
        a.redacted = redacted;
        a.comm = "leakwatch".into();
        a.pid = std::process::id();
        self.emit(
            a.with("deep", req.deep)
                .with("kernel_enforced", hash.is_some())
                .with("fleet", req.fleet.is_some()),
        );

        log::debug!("freeze: persisted and in force after {:?}", t0.elapsed());
        let persist = ms(t0.elapsed()) - queued;
        let set = FrozenSet::new(vec![key]);
        let mut report = tokio::task::block_in_place(|| {
            self.sweep(&set, std::slice::from_ref(&fp), req.deep, req.client_pid)
        });
        (report.phases_ms.queued, report.phases_ms.persist) = (queued, persist);
        report.fingerprint = fp;
        report.already_frozen = already;
        report.kernel_enforced = self
            .store
            .lock()
            .ok()
            .and_then(|s| {
                s.find(&report.fingerprint)
                    .map(|i| s.frozen[i].kernel_hash.is_some())
            })
            .unwrap_or(false);
        report.elapsed_ms = ms(t0.elapsed());
        Ok(report)
    }

    /// A fleet unfreeze: lifts `fp` only if the fleet froze it here.
    pub fn unfreeze_fleet(&self, fp: &str) -> Result<Lift> {
        let fleet = {
            let store = self
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("frozen store lock poisoned"))?;
            store.find(fp).map(|i| store.frozen[i].fleet)
        };
        Ok(match fleet {
            None => Lift::Absent,
            Some(false) => Lift::Local,
            Some(true) => {
                self.unfreeze(fp)?;
                let mut a = crate::alerts::Alert::new("unfreeze");
                a.fingerprint = Some(fp.to_string());
                self.emit(a.with("fleet", true));
                Lift::Lifted
            }
        })
    }

    /// `fp` as frozen here: (by the fleet, kernel-enforced, kills), or `None`.
    pub fn frozen_entry(&self, fp: &str) -> Option<(bool, bool, u64)> {
        let store = self.store.lock().ok()?;
        let e = &store.frozen[store.find(fp)?];
        Some((e.fleet, e.kernel_hash.is_some(), e.kills))
    }

    /// Fingerprints frozen by the fleet on this host, and how many are frozen in all.
    pub fn fleet_fingerprints(&self) -> (Vec<String>, usize) {
        self.store
            .lock()
            .map(|s| {
                (
                    s.frozen
                        .iter()
                        .filter(|e| e.fleet)
                        .map(|e| e.fingerprint.clone())
                        .collect(),
                    s.frozen.len(),
                )
            })
            .unwrap_or_default()
    }

    /// What `fleet::watch` says of the fleet store, shown by `status`.
    pub fn set_fleet_status(&self, v: serde_json::Value) {
        if let Ok(mut f) = self.fleet_status.lock() {
            *f = Some(v);
        }
    }

    /// The sweep found frozen credential `fp` (exact bytes `plain`) in a holder: an entry
    /// without a kernel hash (frozen by fingerprint, or by the fleet) learns it, so the
    /// kernel kills the next exec carrying it before it runs.
    fn learn_kernel_hash(&self, fp: &str, plain: &[u8]) {
        if self
            .store_kernel_hash(fp, plain, |had, _| had.is_none(), true)
            .is_none()
        {
            return;
        }
        if let Ok(mut v) = self.verified.lock() {
            v.insert(fp.to_string());
        }
        match self.publish() {
            Ok(()) => log::info!("frozen credential {fp} is now enforced by the kernel at exec (learned from a holder)"),
            Err(e) => log::error!("reloading the kernel frozen map: {e:#}"),
        }
    }

    /// Stores the kernel hash of `fp`'s exact bytes `plain`, with their length (and with
    /// `prefix` their first bytes), when `stale(stored, computed)` says the stored one must
    /// go; saved, not yet loaded into the kernel. The hash it replaced, or `None` when
    /// nothing changed.
    fn store_kernel_hash(
        &self,
        fp: &str,
        plain: &[u8],
        stale: impl Fn(Option<u64>, u64) -> bool,
        prefix: bool,
    ) -> Option<Option<u64>> {
        let want = kernel_hash(self.seed, plain);
        let mut store = self.store.lock().ok()?;
        let i = store.find(fp)?;
        let e = &mut store.frozen[i];
        if !stale(e.kernel_hash, want) {
            return None;
        }
        let had = e.kernel_hash;
        e.kernel_hash = Some(want);
        e.len = plain.len();
        if prefix {
            let keep = crate::detect::frozen::PREFIX_MAX.min(plain.len() / 4);
            e.prefix = String::from_utf8_lossy(&plain[..keep]).into_owned();
        }
        let _ = store.save();
        Some(had)
    }

    pub fn unfreeze(&self, fp: &str) -> Result<bool> {
        let removed = {
            let mut store = self
                .store
                .lock()
                .map_err(|_| anyhow::anyhow!("frozen store lock poisoned"))?;
            match store.find(fp) {
                Some(i) => {
                    store.frozen.remove(i);
                    store.save()?;
                    true
                }
                None => false,
            }
        };
        if let Ok(mut f) = self.in_force.lock() {
            f.remove(fp);
        }
        self.publish()?;
        Ok(removed)
    }

    pub fn status(&self) -> serde_json::Value {
        let store = self.store.lock().ok();
        let frozen: Vec<_> = store.as_ref().map(|s| s.frozen.clone()).unwrap_or_default();
        drop(store);
        let verified = self.verified.lock().map(|v| v.clone()).unwrap_or_default();
        let stats = self
            .probes
            .lock()
            .ok()
            .and_then(|p| p.stats().ok())
            .unwrap_or_default();
        let (attached, pinned, tls_visible) = self
            .probes
            .lock()
            .map(|p| (p.attached.clone(), p.kill_pinned(), p.tls_attached.clone()))
            .unwrap_or_default();
        let mut kernel = serde_json::Map::new();
        for (i, st) in stats.per.iter().enumerate() {
            if *st != crate::probes::ProbeStats::default() {
                kernel.insert(
                    crate::events::probe_name(i as u32).into(),
                    serde_json::json!({
                        "events": st.events,
                        "lost": st.lost,
                        "skipped": st.skipped,
                        "truncated": st.truncated,
                        "bytes_dropped": st.bytes_dropped,
                        "kills": st.kills,
                        "unchecked": st.unchecked,
                    }),
                );
            }
        }
        serde_json::json!({
            "frozen": frozen.iter().map(|e| serde_json::json!({
                "fingerprint": e.fingerprint,
                "frozen_at": e.frozen_at,
                "kills": e.kills,
                "kernel_enforced": e.kernel_hash.is_some(),
                // Read from disk and not yet seen to work: a claim, not a fact.
                "kernel_hash_verified": e.kernel_hash.is_some() && verified.contains(&e.fingerprint),
                "len": e.len,
                "fleet": e.fleet,
            })).collect::<Vec<_>>(),
            // The exec kill stays attached if the daemon stops or dies (see `probes::pins`).
            "exec_kill_pinned": pinned,
            "fleet": self.fleet_status.lock().ok().and_then(|f| f.clone()),
            "probes": attached,
            // Files whose TLS plaintext the uprobes read (OpenSSL's or Go's).
            "tls_visible": tls_visible,
            "tls_blind": self.tls_blind.lock().map(|l| l.iter().map(|(exe, b)| {
                let mut v = serde_json::to_value(b).unwrap_or_default();
                v["exe"] = serde_json::json!(exe);
                v
            }).collect::<Vec<_>>()).unwrap_or_default(),
            "kernel": kernel,
            "userspace": {
                "decode_errors": self.metrics.decode_errors.get(),
                "exec_truncated": self.metrics.exec_truncated.get(),
                "findings_suppressed": self.metrics.suppressed.get(),
                "events_queue_dropped": self.metrics.queue_dropped.with_label_values(&["events"]).get(),
                "alerts_queue_dropped": self.metrics.queue_dropped.with_label_values(&["alerts"]).get(),
                "streams": self.metrics.streams.get(),
                "streams_evicted": self.metrics.streams_evicted.get(),
                "files_held": self.metrics.files_held.get(),
                "held_bytes_unread": self.metrics.held_bytes_unread.get(),
            },
        })
    }

    fn emit(&self, a: crate::alerts::Alert) {
        self.alerts.emit(a);
    }

    /// Finds holders of any key in `set`, then stops, severs, kills and confirms them.
    fn sweep(&self, set: &FrozenSet, fps: &[String], deep: bool, client: Option<u32>) -> Report {
        let me = std::process::id();
        let t0 = Instant::now();
        let procs = procscan::list();
        let seen: HashMap<u32, String> = self
            .history
            .read()
            .map(|h| {
                h.iter()
                    .filter(|(_, f)| fps.contains(f))
                    .map(|(p, f)| (*p, f.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let fp_of = |k: usize| set.keys()[k].fingerprint();
        // Reading every process's environment and command line is most of the time before
        // the first signal: on all cores.
        use rayon::prelude::*;
        // A holder's pidfd and details are gathered in the same pass, on the same core.
        let found: Vec<(u32, (&'static str, String), Prepared)> = procs
            .par_iter()
            .filter(|p| p.pid != me)
            .filter_map(|p| {
                let learn = |k: usize, plain: &[u8]| self.learn_kernel_hash(&fp_of(k), plain);
                let reason = if let Some(k) = procscan::holds_in_proc(p.pid, set, learn) {
                    Some(("environ/cmdline", fp_of(k)))
                } else if let Some(f) = seen.get(&p.pid) {
                    Some(("exec", f.clone()))
                } else if deep && Some(p.pid) != client {
                    procscan::holds_in_memory(p.pid, set, DEEP_BUDGET).map(|k| ("memory", fp_of(k)))
                } else {
                    None
                };
                reason.map(|r| (p.pid, r, Prepared::of(p)))
            })
            .collect();
        let mut reasons = Reasons::new();
        let mut prepared = HashMap::new();
        for (pid, r, pr) in found {
            reasons.insert(pid, r);
            prepared.insert(pid, pr);
        }
        log::debug!(
            "sweep: scan {:?} ({} processes, {} holders)",
            t0.elapsed(),
            procs.len(),
            reasons.len()
        );
        let scan = ms(t0.elapsed());
        let mut report = self.act(procs, reasons, prepared, client, "freeze");
        report.phases_ms.scan = scan;
        report
    }

    /// Stops, severs, kills and confirms the processes in `reasons` and what they spawned
    /// (never pid 1, the daemon, the client and its ancestors, or a protected program), and
    /// reports each kill under the credential that made it a holder.
    fn act(
        &self,
        procs: Vec<Proc>,
        mut reasons: Reasons,
        mut prepared: HashMap<u32, Prepared>,
        client: Option<u32>,
        by: &'static str,
    ) -> Report {
        let me = std::process::id();
        let t0 = Instant::now();
        let mut shield: HashSet<u32> = [1, me].into_iter().collect();
        // `freeze` recorded the client's chain among the recent clients before the key was
        // in force; the chain as this listing sees it is shielded here too.
        if let Some(c) = client {
            shield.insert(c);
            shield.extend(procscan::ancestors(&procs, c));
        }
        if let Ok(cl) = self.clients.lock() {
            for (t, chain) in cl.iter() {
                if t.elapsed() < CLIENT_SHIELD {
                    shield.extend(chain.iter().copied());
                }
            }
        }
        shield.extend(procscan::ancestors(&procs, me));
        // What a holder spawned is swept too, but a protected holder (the operator's shell,
        // the test runner) is no reason to kill everything it started.
        let roots: Vec<u32> = reasons
            .keys()
            .copied()
            .filter(|p| !shield.contains(p))
            .collect();
        let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
        for d in procscan::descendants(&procs, &roots) {
            if reasons.contains_key(&d) {
                continue;
            }
            // The credential of the nearest holder above it.
            let mut up = parent.get(&d).copied();
            while let Some(a) = up {
                if let Some((_, fp)) = reasons.get(&a) {
                    let fp = fp.clone();
                    reasons.insert(d, ("descendant", fp));
                    break;
                }
                up = parent.get(&a).copied().filter(|&pp| pp != a);
            }
        }

        let own_exe = std::fs::read_link("/proc/self/exe")
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let mut report = Report::default();
        let mut targets: Vec<(Proc, ProcReport)> = Vec::new();
        let mut fp_of_pid: HashMap<u32, String> = HashMap::new();
        // Handles and details of holders the scan did not find (descendants, a writer):
        // on all cores, before the first signal.
        {
            use rayon::prelude::*;
            let missing: Vec<(u32, Prepared)> = procs
                .par_iter()
                .filter(|p| reasons.contains_key(&p.pid) && !prepared.contains_key(&p.pid))
                .map(|p| (p.pid, Prepared::of(p)))
                .collect();
            prepared.extend(missing);
        }
        let mut handles: Vec<pidfd::Target> = Vec::new();
        for p in procs.iter().filter(|p| reasons.contains_key(&p.pid)) {
            let Some(Prepared { handle, info: i }) = prepared.remove(&p.pid) else {
                continue;
            };
            let (why, fp) = &reasons[&p.pid];
            fp_of_pid.insert(p.pid, fp.clone());
            let pr = ProcReport {
                pid: p.pid,
                ppid: p.ppid,
                comm: p.comm.clone(),
                exe: i.exe.clone(),
                unit: i.unit.clone(),
                reason: why.to_string(),
                confirmed: false,
            };
            let base = i.exe.rsplit('/').next().unwrap_or("");
            // Another leakwatch holds credentials in memory because it scans what others
            // write: that makes it no holder (its own argv or environment still would).
            let scanner =
                *why == "memory" && !i.exe.is_empty() && own_exe.as_deref() == Some(&i.exe);
            if shield.contains(&p.pid)
                || scanner
                || self
                    .protected
                    .read()
                    .map(|l| l.iter().any(|n| *n == p.comm || *n == base || *n == i.exe))
                    .unwrap_or(true)
            {
                report.protected.push(pr);
            } else {
                targets.push((p.clone(), pr));
                handles.push(handle);
            }
        }
        let t_find = t0.elapsed();
        // Stop first, so no holder forks or reconnects between the cut and the kill.
        for h in &handles {
            h.signal(libc::SIGSTOP);
        }
        let t_stop = t0.elapsed();
        self.sever_all(&targets, &handles, &mut report);
        let t_sever = t0.elapsed();
        for h in &handles {
            h.signal(libc::SIGKILL);
        }
        let gone = pidfd::wait_all_gone(&handles, Instant::now() + Duration::from_secs(3));
        let t_gone = t0.elapsed();
        for ((p, mut pr), gone) in targets.into_iter().zip(gone) {
            pr.confirmed = gone;
            if !pr.confirmed {
                report.errors.push(format!(
                    "pid {} ({}) still present after SIGKILL",
                    p.pid, p.comm
                ));
            }
            report.killed.push(pr);
        }
        log::debug!(
            "sweep: find {:?}, stop {:?}, sever {:?}, kill+confirm {:?} ({} processes)",
            t_find,
            t_stop - t_find,
            t_sever - t_stop,
            t_gone - t_sever,
            report.killed.len()
        );
        let mut units: Vec<String> = report
            .killed
            .iter()
            .filter_map(|k| k.unit.clone())
            .collect();
        units.sort();
        units.dedup();
        report.units = units;

        self.metrics
            .kills
            .with_label_values(&[by])
            .inc_by(report.killed.len() as u64);
        self.metrics
            .severed
            .inc_by(report.severed.iter().filter(|s| s.error.is_none()).count() as u64);
        if !report.killed.is_empty() {
            if let Ok(mut store) = self.store.lock() {
                for k in &report.killed {
                    if let Some(e) = store
                        .frozen
                        .iter_mut()
                        .find(|e| Some(&e.fingerprint) == fp_of_pid.get(&k.pid))
                    {
                        e.kills += 1;
                    }
                }
            }
            // Written by the saver within seconds, and at stop: an fsync here would come
            // before the report (~1 ms on this host's disk), for a counter.
            self.kills_unsaved.store(true, Ordering::Relaxed);
        }
        for k in &report.killed {
            let mut a = base_alert("kill", &k.info())
                .with("by", by)
                .with("reason", k.reason.clone())
                .with("confirmed", k.confirmed);
            a.fingerprint = fp_of_pid.get(&k.pid).cloned();
            self.emit(a);
        }
        for s in &report.severed {
            // The process fields of the holder whose connection this was.
            let mut a = match report.killed.iter().find(|k| k.pid == s.pid) {
                Some(k) => base_alert("sever", &k.info()),
                None => crate::alerts::Alert::new("sever"),
            };
            a.pid = s.pid;
            a.remote = Some(s.remote.clone());
            a.fingerprint = fp_of_pid.get(&s.pid).cloned();
            self.emit(
                a.with("local", s.local.clone())
                    .with("ok", s.error.is_none()),
            );
        }
        report.phases_ms = Phases {
            find: ms(t_find),
            stop: ms(t_stop - t_find),
            sever: ms(t_sever - t_stop),
            kill: ms(t_gone - t_sever),
            report: ms(t0.elapsed() - t_gone),
            ..Default::default()
        };
        report
    }

    /// A process was seen writing or sending the frozen credential `fp`: it is a holder.
    /// Stop it, sever its connections, kill it and what it spawned, as freeze does — on a
    /// thread of its own, so the pipeline goes on reading events meanwhile.
    pub fn kill_holder(self: &Arc<Self>, tgid: u32, fp: &str, source: Source, place: Option<&str>) {
        if tgid == std::process::id() {
            return;
        }
        let fresh = self
            .killing
            .lock()
            .map(|mut k| k.insert(tgid))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let why = if source == Source::Socket {
            "sent"
        } else {
            "wrote"
        };
        log::warn!(
            "pid {tgid} {why} a frozen credential ({fp}){}; killing it",
            place.map(|p| format!(" to {p}")).unwrap_or_default()
        );
        let (me, fp) = (self.clone(), fp.to_string());
        let run = move || {
            let _responding = me.responding.start();
            let procs = procscan::list();
            let reasons: Reasons = [(tgid, (why, fp))].into_iter().collect();
            me.act(procs, reasons, HashMap::new(), None, "write");
            if let Ok(mut k) = me.killing.lock() {
                k.remove(&tgid);
            }
        };
        if std::thread::Builder::new()
            .name("lw-kill".into())
            .spawn(run)
            .is_err()
        {
            log::error!("could not start a thread to kill pid {tgid}");
        }
    }

    /// Severs the TCP connections of every target, namespace by namespace.
    fn sever_all(
        &self,
        targets: &[(Proc, ProcReport)],
        handles: &[pidfd::Target],
        report: &mut Report,
    ) {
        use rayon::prelude::*;
        struct Holder {
            ns: u64,
            pid: u32,
            inodes: Vec<u32>,
            /// Its connections, read from its own sockets; None: a dump finds them.
            known: Option<Vec<sever::TcpSock>>,
        }
        let t0 = Instant::now();
        let own = procscan::netns(std::process::id());
        // Reading every holder's fd table and sockets is most of a sever: on all cores.
        let found: Vec<Holder> = targets
            .par_iter()
            .zip(handles)
            .filter_map(|((p, _), h)| {
                let socks = procscan::sockets(p.pid);
                (!socks.is_empty()).then(|| Holder {
                    ns: procscan::netns(p.pid).unwrap_or(0),
                    pid: p.pid,
                    inodes: socks.iter().map(|s| s.1).collect(),
                    known: peers::tcp_of(h, &socks),
                })
            })
            .collect();
        let t_fds = t0.elapsed();
        let mut by_ns: HashMap<u64, Vec<Holder>> = HashMap::new();
        for h in found {
            by_ns.entry(h.ns).or_default().push(h);
        }
        for (ns, holders) in by_ns {
            let known: Vec<sever::TcpSock> = holders
                .iter()
                .filter_map(|h| h.known.clone())
                .flatten()
                .collect();
            let unknown: Vec<u32> = holders
                .iter()
                .filter(|h| h.known.is_none())
                .flat_map(|h| h.inodes.clone())
                .collect();
            let work = move || -> std::io::Result<Vec<(sever::TcpSock, std::io::Result<()>)>> {
                let done = sever::destroy_all(&known);
                // ENOENT: the connection closed since its socket was read; nothing to cut.
                let mut cut: Vec<_> = known
                    .into_iter()
                    .zip(done)
                    .filter(|(_, r)| !matches!(r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)))
                    .collect();
                if !unknown.is_empty() {
                    cut.extend(sever::sever_inodes(&unknown)?);
                }
                Ok(cut)
            };
            let result = if Some(ns) == own {
                work()
            } else {
                sever::in_netns(holders[0].pid, work)
            };
            match result {
                Ok(cut) => {
                    for (s, r) in cut {
                        let pid = holders
                            .iter()
                            .find(|h| h.inodes.contains(&s.inode))
                            .map(|h| h.pid)
                            .unwrap_or(0);
                        report.severed.push(SeveredReport {
                            pid,
                            local: s.local.to_string(),
                            remote: s.remote.to_string(),
                            netns: ns,
                            error: r.err().map(|e| e.to_string()),
                        });
                    }
                }
                Err(e) => report.errors.push(format!(
                    "listing sockets in network namespace {ns} failed: {e}"
                )),
            }
        }
        log::debug!(
            "sever: fd tables and sockets {:?}, netlink {:?} ({} connections)",
            t_fds,
            t0.elapsed() - t_fds,
            report.severed.len()
        );
    }

    /// A fresh exec carrying the frozen credential `fp` that the kernel did not kill
    /// (frozen by fingerprint only, or embedded in a longer argument): kill it from
    /// userspace now.
    pub fn kill_exec(&self, ev: &ExecEvent, fp: String) {
        if ev.killed() {
            return;
        }
        // An exec from before the freeze, read late: the sweep, which began after the key
        // was in force, found this process in /proc and judged it, shield included (the
        // responder's own `sh -c '... KEY | leakwatch freeze'` is no holder).
        let since = self.in_force.lock().ok().and_then(|f| f.get(&fp).copied());
        if since.is_some_and(|t| ev.task.ktime_ns < t) {
            log::debug!(
                "pid {}: exec with {fp} from before it was frozen; left to the sweep",
                ev.task.tgid
            );
            return;
        }
        // SAFETY: kill(2); pid reuse within microseconds of exec is not a practical concern.
        unsafe { libc::kill(ev.task.tgid as i32, libc::SIGKILL) };
        self.metrics.kills.with_label_values(&["userspace"]).inc();
        let info = info(ev.task.tgid);
        let info = ProcInfo {
            pid: ev.task.tgid,
            ppid: ev.task.ppid,
            comm: ev.new_comm(),
            exe: ev.filename.clone(),
            ..info
        };
        let mut a = base_alert("kill", &info)
            .with("by", "userspace")
            .with("reason", "exec with a frozen credential");
        a.fingerprint = Some(fp);
        self.emit(a);
    }

    /// An exec carried the frozen credential `fp` (its exact bytes: `plain`) where the
    /// kernel matches, yet the kernel let it run: the stored kernel hash is wrong (a
    /// tampered or damaged state file) or missing. Recompute it from the bytes, reload the
    /// kernel map and say so.
    pub fn check_kernel_hash(&self, fp: &str, plain: &[u8]) {
        let fixed = self.store_kernel_hash(fp, plain, |had, want| had != Some(want), false);
        if let Ok(mut v) = self.verified.lock() {
            v.insert(fp.to_string());
        }
        let Some(had) = fixed else { return };
        if let Err(e) = self.publish() {
            log::error!("reloading the kernel frozen map: {e:#}");
        }
        let problem = format!(
            "the kernel did not block an exec carrying frozen credential {fp}: its stored kernel hash was {}; recomputed from the exec and reloaded, so the kernel blocks it again",
            if had.is_some() { "wrong" } else { "missing" }
        );
        log::error!("{problem}");
        self.emit(crate::alerts::Alert::new("state").with("problem", problem));
    }

    /// A freeze, restore or kill is under way.
    pub fn sweeping(&self) -> bool {
        self.responding.active()
    }

    /// Waits (at most `max`) until no freeze, restore or kill is under way.
    pub fn wait_sweeps(&self, max: Duration) {
        self.responding.wait_idle(max);
    }

    /// Writes kill counts kept in memory by `on_enforce` and the sweeps (called every few
    /// seconds and at shutdown).
    pub fn save_kill_counts(&self) {
        if self.kills_unsaved.swap(false, Ordering::Relaxed) {
            if let Ok(store) = self.store.lock() {
                if let Err(e) = store.save() {
                    log::warn!("saving kill counts: {e:#}");
                    self.kills_unsaved.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// The kernel killed an exec. Reported once per (credential, unit or program); repeats
    /// (a unit restarting with the old key) only count.
    pub fn on_enforce(&self, n: EnforceNotice, procs: &mut Procs) {
        self.metrics.kills.with_label_values(&["kernel"]).inc();
        let cgroup = procs.cgroup_path(n.task.cgroup_id);
        let unit = cgroup.as_deref().and_then(crate::procs::unit_of);
        let who = unit.clone().unwrap_or_else(|| n.task.comm.to_string());
        let first = self
            .enforced_once
            .lock()
            .map(|mut s| s.insert((n.hash, who)))
            .unwrap_or(true);
        let fp = {
            let mut store = match self.store.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            let i = store
                .frozen
                .iter()
                .position(|e| e.kernel_hash == Some(n.hash));
            let fp = i.map(|i| {
                store.frozen[i].kills += 1;
                store.frozen[i].fingerprint.clone()
            });
            if let (Some(fp), Ok(mut v)) = (&fp, self.verified.lock()) {
                v.insert(fp.clone());
            }
            // A unit restarting with the old key dies many times a minute: count every kill
            // in memory (status shows it at once) but write the store, with its fsync, only
            // for a new culprit; `save_kill_counts` writes the rest.
            if first {
                let _ = store.save();
            } else {
                self.kills_unsaved.store(true, Ordering::Relaxed);
            }
            fp
        };
        if !first {
            return;
        }
        let info = ProcInfo {
            interpreter: None,
            pid: n.task.tgid,
            ppid: n.task.ppid,
            uid: n.task.uid,
            comm: n.task.comm.to_string(),
            exe: String::new(),
            cgroup,
            unit: unit.clone(),
        };
        let mut a = base_alert("kill", &info).with("by", "kernel").with(
            "reason",
            match &unit {
                // Hash 0: the argument area could not be checked to its end (fail closed).
                _ if n.hash == 0 => "exec whose arguments could not be checked completely while a credential is frozen (killed, fail closed)".to_string(),
                Some(u) => format!("exec with a frozen credential; unit {u} still starts with it and will keep dying until it gets the new credential (reported once)"),
                None => "exec with a frozen credential (killed before its first instruction)".to_string(),
            },
        );
        a.fingerprint = fp;
        self.emit(a);
    }
}

/// What /proc says of `pid` now (only its pid when it is gone).
fn info(pid: u32) -> ProcInfo {
    crate::procs::read(pid).unwrap_or(ProcInfo {
        pid,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::Phases;

    #[test]
    fn phase_names_are_the_report_keys_in_order() {
        let text = serde_json::to_string(&Phases::default()).unwrap();
        let keys = serde_json::from_str::<serde_json::Value>(&text).unwrap();
        assert_eq!(
            keys.as_object().unwrap().len(),
            Phases::NAMES.len(),
            "{text}"
        );
        // Each name is a key, in the order the report writes them.
        let at: Vec<usize> = Phases::NAMES
            .iter()
            .map(|k| text.find(&format!("\"{k}\"")).expect(k))
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
