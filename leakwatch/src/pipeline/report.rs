//! The last pipeline stage before the sinks: a credential seen somewhere becomes a metric
//! and, unless it repeats inside the dedupe window, a `finding` alert with the process
//! fields of the contract.
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value};

use crate::{alerts::Alert, metrics::Metrics, procs::ProcInfo, sinks::Alerts, source::Source};

/// One credential seen, before it becomes an alert.
#[derive(Clone, Debug)]
pub struct Hit {
    pub rule: String,
    pub source: Source,
    pub fingerprint: String,
    pub redacted: String,
    pub path: Option<String>,
    pub remote: Option<String>,
    /// Source-specific alert fields (`var`, `arg_index`, `fd`, `bytes`…).
    pub extra: Map<String, Value>,
    /// Sent to one of its rule's expected destinations (`dest`): recorded, not alerted.
    pub expected: bool,
}

impl Hit {
    pub fn new(source: Source, f: crate::detect::Finding) -> Hit {
        Hit {
            rule: f.rule,
            source,
            fingerprint: f.fingerprint,
            redacted: f.redacted,
            path: None,
            remote: None,
            extra: Map::new(),
            expected: false,
        }
    }

    pub fn with(mut self, k: &str, v: impl Into<Value>) -> Hit {
        self.extra.insert(k.into(), v.into());
        self
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: String,
    source: Source,
    exe: String,
    ppid: u32,
    place: Option<String>,
}

pub struct Reporter {
    alerts: Alerts,
    actions: Option<crate::actions::ActionLog>,
    /// (fingerprint, pid, source) already in the action log.
    logged: std::collections::HashSet<(String, u32, Source)>,
    metrics: Arc<Metrics>,
    seen: HashMap<Key, Instant>,
    window: Duration,
    swept: Instant,
}

impl Reporter {
    /// A reloaded config's `dedupe_seconds`.
    pub fn set_window(&mut self, dedupe_seconds: u64) {
        self.window = Duration::from_secs(dedupe_seconds);
    }

    pub fn new(alerts: Alerts, metrics: Arc<Metrics>, dedupe_seconds: u64) -> Reporter {
        Reporter {
            alerts,
            actions: None,
            logged: Default::default(),
            metrics,
            seen: HashMap::new(),
            window: Duration::from_secs(dedupe_seconds),
            swept: Instant::now(),
        }
    }

    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// Every (credential, process, source) seen also becomes a `finding` row of the action
    /// log, deduplicated per process rather than by the alert window, so a query by
    /// fingerprint finds every process that held or sent it.
    pub fn log_actions(&mut self, log: crate::actions::ActionLog) {
        self.actions = Some(log);
    }

    /// Counts every hit and alerts the ones not seen inside the window.
    pub fn report(&mut self, p: &ProcInfo, hits: Vec<Hit>) {
        self.report_at(p, hits, 0)
    }

    /// The same, for findings in the event the kernel timed at `ktime_ns` (CLOCK_MONOTONIC;
    /// 0: unknown): the sink measures event -> alert written from it.
    pub fn report_at(&mut self, p: &ProcInfo, hits: Vec<Hit>, ktime_ns: u64) {
        let now = Instant::now();
        // Swept at most once a second, not per finding: a burst of distinct keys must not
        // make every finding pay for the whole map.
        if now.duration_since(self.swept) >= Duration::from_secs(1) {
            let w = self.window;
            self.seen.retain(|_, t| now.duration_since(*t) < w);
            self.swept = now;
        }
        for h in hits {
            if !h.expected {
                self.metrics
                    .findings
                    .with_label_values(&[&h.rule, h.source.as_str()])
                    .inc();
            }
            if let Some(log) = &self.actions {
                let k = (h.fingerprint.clone(), p.pid, h.source);
                if !self.logged.contains(&k) {
                    if self.logged.len() >= 65_536 {
                        self.logged.clear();
                    }
                    let mut a = finding_alert(p, &h);
                    a.ts = String::new();
                    if h.expected {
                        a.extra.insert("expected".into(), json!(true));
                    }
                    log.record(crate::actions::from_alert(&a));
                    self.logged.insert(k);
                }
            }
            if h.expected {
                self.metrics
                    .expected_sends
                    .with_label_values(&[&h.rule])
                    .inc();
                continue;
            }
            let key = Key {
                fingerprint: h.fingerprint.clone(),
                source: h.source,
                exe: p.exe.clone(),
                ppid: p.ppid,
                place: h.path.clone().or_else(|| h.remote.clone()),
            };
            if !self.window.is_zero() {
                match self.seen.get(&key) {
                    Some(t) if now.duration_since(*t) < self.window => {
                        self.metrics.suppressed.inc();
                        continue;
                    }
                    _ => {}
                }
                self.seen.insert(key, now);
            }
            let mut a = finding_alert(p, &h);
            a.event_ktime_ns = ktime_ns;
            self.alerts.emit(a);
        }
    }
}

fn finding_alert(p: &ProcInfo, h: &Hit) -> Alert {
    let mut a = base_alert("finding", p);
    a.rule = Some(h.rule.clone());
    a.source = Some(h.source);
    a.fingerprint = Some(h.fingerprint.clone());
    a.redacted = Some(h.redacted.clone());
    a.path = h.path.clone();
    a.remote = h.remote.clone();
    a.extra.extend(h.extra.clone());
    a
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
    if let Some(i) = &p.interpreter {
        a.extra.insert("interpreter".into(), json!(i));
    }
    a
}
