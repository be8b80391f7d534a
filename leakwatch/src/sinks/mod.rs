//! Where alerts go. Producers (the pipeline, freeze, the loss poller) hand alerts to an
//! `Alerts` handle, which never blocks: a bounded queue feeds one sink thread that writes
//! them in batches to every `Sink` (JSON lines, the action log's freeze/kill/sever rows; fleet sync plugs in
//! here). An alert that does not fit the queue is counted, never dropped silently.
mod json;

use std::{
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};

pub use json::JsonLines;

use crate::{alerts::Alert, metrics::Metrics};

/// Alerts queued for the sinks before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// A destination for alerts. `write` gets every batch in order; errors are the sink's to
/// report (an alert file that cannot be written must not stop the journal copy).
pub trait Sink: Send {
    fn write(&mut self, batch: &[Alert]);
    /// Reopens files (SIGHUP, after logrotate moved them away).
    fn reopen(&mut self) {}
}

enum Msg {
    Alert(Box<Alert>),
    Flush(SyncSender<()>),
    Reopen,
}

/// Cheap to clone; every clone feeds the same sink thread.
#[derive(Clone)]
pub struct Alerts {
    tx: SyncSender<Msg>,
    metrics: Arc<Metrics>,
}

impl Alerts {
    /// Starts the sink thread.
    pub fn start(
        sinks: Vec<Box<dyn Sink>>,
        metrics: Arc<Metrics>,
    ) -> Result<(Alerts, JoinHandle<()>)> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let t = std::thread::Builder::new()
            .name("lw-sinks".into())
            .spawn({
                let metrics = metrics.clone();
                move || {
                    crate::slice::Slice::default().set(true);
                    run(rx, sinks, &metrics)
                }
            })
            .context("starting the alert sink thread")?;
        Ok((Alerts { tx, metrics }, t))
    }

    pub fn emit(&self, a: Alert) {
        self.metrics.alerts.with_label_values(&[a.kind]).inc();
        match self.tx.try_send(Msg::Alert(Box::new(a))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics
                    .queue_dropped
                    .with_label_values(&["alerts"])
                    .inc();
            }
        }
    }

    /// Sinks reopen their files after what is queued now is written (SIGHUP).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen);
    }

    /// Waits until everything emitted so far is written (shutdown, tests).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn run(rx: Receiver<Msg>, mut sinks: Vec<Box<dyn Sink>>, metrics: &Metrics) {
    let mut batch: Vec<Alert> = Vec::new();
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut flushes = Vec::new();
        let mut reopen = false;
        let mut take = |m: Msg, batch: &mut Vec<Alert>| match m {
            Msg::Alert(a) => batch.push(*a),
            Msg::Flush(t) => flushes.push(t),
            Msg::Reopen => reopen = true,
        };
        take(first, &mut batch);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => take(m, &mut batch),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            for s in sinks.iter_mut() {
                s.write(&batch);
            }
            let now = crate::events::monotonic_ns();
            for a in batch.iter().filter(|a| a.event_ktime_ns != 0) {
                let source = a.source.map_or("none", |s| s.as_str());
                metrics
                    .detection_latency
                    .with_label_values(&[source])
                    .observe(now.saturating_sub(a.event_ktime_ns) as f64 / 1e9);
            }
            batch.clear();
        }
        if reopen {
            for s in sinks.iter_mut() {
                s.reopen();
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}
