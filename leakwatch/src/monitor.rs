//! The exec pipeline: a decoded exec event -> process details -> findings in argv and env
//! values (rules and frozen credentials) -> alerts, metrics and the exec history that
//! `freeze` consults. Plaintext argv/env bytes live only inside the event, zeroized on drop.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    alerts::{Alert, AlertSink},
    detect::{frozen::FrozenSet, Engine},
    events::ExecEvent,
    metrics::Metrics,
    procs::{ProcInfo, Procs},
};

/// How many recent execs with findings are remembered for `freeze` (tgid, fingerprints).
const HISTORY: usize = 65_536;

pub struct Monitor {
    engine: Engine,
    pub procs: Procs,
    sink: Arc<AlertSink>,
    metrics: Arc<Metrics>,
    dedupe: HashMap<(String, &'static str, String, u32), Instant>,
    window: Duration,
    pub frozen: Arc<RwLock<FrozenSet>>,
    /// Recent (tgid, fingerprint) pairs seen at exec, oldest first.
    pub history: Arc<RwLock<VecDeque<(u32, String)>>>,
}

/// One credential seen in an exec, before it becomes an alert.
pub struct Hit {
    rule: String,
    source: &'static str,
    pub fingerprint: String,
    redacted: String,
    var: Option<String>,
    arg_index: Option<usize>,
}

impl Monitor {
    pub fn new(
        engine: Engine,
        sink: Arc<AlertSink>,
        metrics: Arc<Metrics>,
        dedupe_seconds: u64,
    ) -> Monitor {
        Monitor {
            engine,
            procs: Procs::new(),
            sink,
            metrics,
            dedupe: HashMap::new(),
            window: Duration::from_secs(dedupe_seconds),
            frozen: Arc::new(RwLock::new(FrozenSet::new(Vec::new()))),
            history: Arc::new(RwLock::new(VecDeque::new())),
        }
    }

    /// Resolves who exec'd: live /proc data when the exec has completed, else the event's.
    pub fn describe(&mut self, ev: &ExecEvent) -> ProcInfo {
        let comm = ev.new_comm();
        let live = self.procs.live(ev.tgid);
        let mut info = ProcInfo {
            pid: ev.tgid,
            ppid: ev.ppid,
            uid: ev.uid,
            comm: comm.clone(),
            exe: ev.filename.clone(),
            cgroup: None,
            unit: None,
        };
        if let Some(l) = live {
            if l.ppid != 0 {
                info.ppid = l.ppid;
            }
            if l.comm == comm {
                info.exe = l.exe;
            }
            info.cgroup = l.cgroup;
            info.unit = l.unit;
        }
        if info.cgroup.is_none() {
            info.cgroup = self.procs.cgroup_path(ev.cgroup_id);
            info.unit = info.cgroup.as_deref().and_then(crate::procs::unit_of);
        }
        info
    }

    /// Reports an exec: its rule findings plus `frozen`, the frozen credentials it carries
    /// (from `frozen_hits`, which the caller ran first to kill the process without delay).
    pub fn on_exec(&mut self, ev: ExecEvent, frozen: Vec<Hit>) {
        self.metrics.events.with_label_values(&["exec"]).inc();
        let hits = self.scan(&ev, frozen);
        let truncated = ev.truncated();
        if hits.is_empty() && !truncated {
            return;
        }
        let info = self.describe(&ev);
        if truncated {
            self.metrics.exec_truncated.inc();
            self.metrics
                .exec_strings_dropped
                .inc_by(ev.strings_dropped as u64);
            self.metrics.exec_bytes_dropped.inc_by(ev.bytes_dropped);
            let a = base_alert("lost", &info)
                .with("reason", "exec_capture_truncated")
                .with("strings_dropped", ev.strings_dropped)
                .with("bytes_dropped", ev.bytes_dropped)
                .with(
                    "lower_bound",
                    ev.flags & leakwatch_common::EXEC_F_COUNT_INCOMPLETE != 0,
                );
            self.emit(a);
        }
        let now = Instant::now();
        self.dedupe
            .retain(|_, t| now.duration_since(*t) < self.window);
        for h in hits {
            self.metrics
                .findings
                .with_label_values(&[&h.rule, h.source])
                .inc();
            if let Ok(mut hist) = self.history.write() {
                if hist.len() >= HISTORY {
                    hist.pop_front();
                }
                hist.push_back((ev.tgid, h.fingerprint.clone()));
            }
            let key = (h.fingerprint.clone(), h.source, info.exe.clone(), info.ppid);
            if !self.window.is_zero() && self.dedupe.contains_key(&key) {
                self.metrics.suppressed.inc();
                continue;
            }
            self.dedupe.insert(key, now);
            let mut a = base_alert("finding", &info);
            a.rule = Some(h.rule);
            a.source = Some(h.source);
            a.fingerprint = Some(h.fingerprint);
            a.redacted = Some(h.redacted);
            if let Some(v) = h.var {
                a = a.with("var", v);
            }
            if let Some(i) = h.arg_index {
                a = a.with("arg_index", i);
            }
            a = a.with("filename", ev.filename.clone()).with("tid", ev.pid);
            self.emit(a);
        }
    }

    /// Frozen credentials in the exec's argv and env values.
    pub fn frozen_hits(&self, ev: &ExecEvent) -> Vec<Hit> {
        let mut hits = Vec::new();
        let Ok(fz) = self.frozen.read() else {
            return hits;
        };
        if fz.is_empty() {
            return hits;
        }
        each_string(ev, |bytes, source, var, arg_index| {
            for h in fz.find(bytes) {
                hits.push(Hit {
                    rule: "frozen".into(),
                    source,
                    fingerprint: fz.keys()[h.key].fingerprint(),
                    redacted: crate::detect::redact(&bytes[h.start..h.end]),
                    var: var.clone(),
                    arg_index,
                });
            }
        });
        hits
    }

    /// Rule findings in argv and env values, then the frozen hits no rule already reported
    /// from the same source.
    fn scan(&self, ev: &ExecEvent, frozen: Vec<Hit>) -> Vec<Hit> {
        let mut hits = Vec::new();
        each_string(ev, |bytes, source, var, arg_index| {
            for f in self.engine.scan(bytes) {
                hits.push(Hit {
                    rule: f.rule,
                    source,
                    fingerprint: f.fingerprint,
                    redacted: f.redacted,
                    var: var.clone(),
                    arg_index,
                });
            }
        });
        for h in frozen {
            if !hits
                .iter()
                .any(|x| x.fingerprint == h.fingerprint && x.source == h.source)
            {
                hits.push(h);
            }
        }
        hits
    }

    pub fn emit(&self, a: Alert) {
        self.metrics.alerts.with_label_values(&[a.kind]).inc();
        self.sink.emit(&a);
    }
}

/// Calls `f(bytes, source, env var name, argv index)` for every argv and env string.
fn each_string(
    ev: &ExecEvent,
    mut f: impl FnMut(&[u8], &'static str, Option<String>, Option<usize>),
) {
    for (i, a) in ev.argv.iter().enumerate() {
        f(a, "argv", None, Some(i));
    }
    for e in &ev.env {
        let name = e
            .iter()
            .position(|&b| b == b'=')
            .map(|n| String::from_utf8_lossy(&e[..n]).into_owned());
        f(e, "env", name, None);
    }
}

/// An alert of `kind` filled with the process fields of the contract.
pub fn base_alert(kind: &'static str, p: &ProcInfo) -> Alert {
    let mut a = Alert::new(kind);
    a.pid = p.pid;
    a.ppid = p.ppid;
    a.uid = p.uid;
    a.comm = p.comm.clone();
    a.exe = p.exe.clone();
    a.unit = p.unit.clone();
    if let Some(c) = &p.cgroup {
        a.extra.insert("cgroup".into(), json!(c));
    }
    a
}
