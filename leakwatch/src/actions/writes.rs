//! Write summaries for the action log: calls and bytes per (process, fd, target), summed
//! in the pipeline worker and recorded as one row when the fd pauses, changes target, or
//! has been written for a minute — a busy writer makes a row a minute, not one a call.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{wall_ms, ActionLog, Row};
use crate::{classify::Target, procs::ProcInfo};

/// A (process, fd) unwritten this long is recorded.
const PAUSE: Duration = Duration::from_secs(2);
/// A (process, fd) written this long without pause is recorded and starts a new row.
const SPAN: Duration = Duration::from_secs(60);
/// Summaries kept at once; beyond, the least recently written is recorded early.
const MAX: usize = 16_384;

struct Sum {
    row: Row,
    target: Target,
    bytes: u64,
    calls: u64,
    started: Instant,
    last: Instant,
}

#[derive(Default)]
pub struct WriteLog {
    map: HashMap<(u32, i32), Sum>,
}

impl WriteLog {
    /// `calls` calls wrote `bytes` bytes to `target` through (process, fd). `who` describes
    /// the writer; it is asked for only when a new summary starts.
    pub fn note(
        &mut self,
        log: &ActionLog,
        (tgid, fd): (u32, i32),
        target: &Target,
        bytes: u64,
        calls: u64,
        who: impl FnOnce() -> ProcInfo,
    ) {
        if !log.enabled() {
            return;
        }
        let key = (tgid, fd);
        let now = Instant::now();
        if let Some(s) = self.map.get(&key) {
            if s.target != *target || now.duration_since(s.started) >= SPAN {
                let s = self.map.remove(&key).expect("present");
                log.record(finish(s));
            }
        }
        if !self.map.contains_key(&key) && self.map.len() >= MAX {
            if let Some(k) = self.map.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k) {
                let s = self.map.remove(&k).expect("present");
                log.record(finish(s));
            }
        }
        let s = self.map.entry(key).or_insert_with(|| {
            let mut row = Row::new("write", &who()).with("fd", fd);
            if let Some(r) = target.remote() {
                row = row.with("remote", r);
            }
            if let Some(p) = target.path() {
                row = row.with("path", p);
            }
            if let Some(src) = target.source() {
                row = row.with("source", src.as_str());
            }
            Sum {
                row,
                target: target.clone(),
                bytes: 0,
                calls: 0,
                started: now,
                last: now,
            }
        });
        s.bytes += bytes;
        s.calls += calls;
        s.last = now;
    }

    /// Records the summaries of fds that paused (or all of them, at shutdown).
    pub fn tick(&mut self, log: &ActionLog, all: bool) {
        let now = Instant::now();
        let done: Vec<(u32, i32)> = self
            .map
            .iter()
            .filter(|(_, s)| all || now.duration_since(s.last) >= PAUSE)
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            if let Some(s) = self.map.remove(&k) {
                log.record(finish(s));
            }
        }
    }
}

fn finish(s: Sum) -> Row {
    let mut row = s
        .row
        .with("bytes", s.bytes)
        .with("calls", s.calls)
        .with("last_ms", wall_ms(s.last));
    // The row's time is the first write's.
    row.ts_ms = wall_ms(s.started);
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_summed_per_fd_and_target_and_recorded_when_they_pause() {
        let t = super::super::testing::TestLog::new("writes");
        let log = &t.log;
        let mut w = WriteLog::default();
        let who = || ProcInfo {
            pid: 7,
            ..Default::default()
        };
        let a = Target::File(Some("/var/log/a".into()));
        let b = Target::Socket(Some("10.0.0.1:443".into()));
        w.note(log, (7, 3), &a, 100, 1, who);
        w.note(log, (7, 3), &a, 50, 2, who);
        // The fd names another target: the first summary is recorded, a new one starts.
        w.note(log, (7, 3), &b, 10, 1, who);
        w.tick(log, false);
        w.tick(log, true);
        let rows = t.rows("write");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0]["path"], "/var/log/a");
        assert_eq!(
            (rows[0]["bytes"].as_u64(), rows[0]["calls"].as_u64()),
            (Some(150), Some(3))
        );
        assert_eq!(rows[1]["remote"], "10.0.0.1:443");
        assert_eq!(rows[1]["bytes"], 10);
    }
}
