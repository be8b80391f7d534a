//! Connect rows for the action log. The first connect of a process to a remote is a row at
//! once; its repeats (an HTTP client reconnecting to its API, a health check) are summed
//! and recorded as one row with `count` when they pause or after a minute — a process
//! reconnecting a thousand times a second makes a row a minute per remote, not a thousand.
use std::time::{Duration, Instant};

use super::{now_ms, wall_ms, ActionLog, Row};
use crate::{fastmap::FastMap, procs::ProcInfo};

/// Repeats of a (process, remote) unseen this long are recorded.
const PAUSE: Duration = Duration::from_secs(2);
/// Repeats are recorded at least this often.
const SPAN: Duration = Duration::from_secs(60);
/// (process, remote) pairs followed at once; past it every pending summary is recorded.
const MAX: usize = 16_384;

struct Repeats {
    row: Row,
    count: u64,
    started: Instant,
    last: Instant,
}

#[derive(Default)]
pub struct ConnectLog {
    map: FastMap<(u32, String), Repeats>,
    /// The lookup key's string, kept between calls: a repeat allocates nothing.
    key: String,
}

impl ConnectLog {
    /// Process `tgid` connected `fd` to `remote` at about `now` (the worker's batch clock:
    /// repeats are counted in seconds); `who` is asked for only for a new row.
    pub fn note(
        &mut self,
        log: &ActionLog,
        now: Instant,
        tgid: u32,
        remote: &str,
        fd: i32,
        who: impl FnOnce() -> ProcInfo,
    ) {
        if !log.enabled() {
            return;
        }
        let mut s = std::mem::take(&mut self.key);
        s.clear();
        s.push_str(remote);
        let key = (tgid, s);
        if let Some(r) = self.map.get_mut(&key) {
            if now.duration_since(r.started) < SPAN {
                if r.count == 0 {
                    r.row.ts_ms = now_ms();
                }
                r.count += 1;
                r.last = now;
                self.key = key.1;
                return;
            }
            let r = self.map.remove(&key).expect("present");
            record(log, r);
        }
        if self.map.len() >= MAX {
            self.tick(log, true);
        }
        let row = Row::new("connect", &who())
            .with("remote", key.1.clone())
            .with("fd", fd);
        log.record(row.clone());
        self.map.insert(
            key,
            Repeats {
                row,
                count: 0,
                started: now,
                last: now,
            },
        );
    }

    /// Records the repeats that paused (or all of them, at shutdown).
    pub fn tick(&mut self, log: &ActionLog, all: bool) {
        let now = Instant::now();
        let done: Vec<(u32, String)> = self
            .map
            .iter()
            .filter(|(_, r)| {
                all || now.duration_since(r.last) >= PAUSE || now.duration_since(r.started) >= SPAN
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some(r) = self.map.remove(&k) {
                record(log, r);
            }
        }
    }
}

/// The repeats as one row (none if the first connect had no repeat).
fn record(log: &ActionLog, r: Repeats) {
    if r.count == 0 {
        return;
    }
    let mut row = r
        .row
        .with("count", r.count)
        .with("last_ms", wall_ms(r.last));
    row.detail.remove("fd");
    log.record(row);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_connect_is_a_row_at_once_and_its_repeats_one_row() {
        let t = super::super::testing::TestLog::new("connects");
        let mut c = ConnectLog::default();
        let who = || ProcInfo {
            pid: 7,
            ..Default::default()
        };
        for fd in 3..103 {
            c.note(&t.log, Instant::now(), 7, "10.0.0.1:443", fd, who);
        }
        c.note(&t.log, Instant::now(), 7, "10.0.0.2:5432", 9, who);
        let first = t.rows("connect");
        assert_eq!(first.len(), 2, "one row per new remote, at once: {first:?}");
        assert_eq!(first[0]["fd"], 3);
        c.tick(&t.log, true);
        let all = t.rows("connect");
        assert_eq!(all.len(), 3, "{all:?}");
        assert_eq!(all[2]["remote"], "10.0.0.1:443");
        assert_eq!(all[2]["count"], 99, "the repeats: {all:?}");
    }
}
