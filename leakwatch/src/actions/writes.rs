//! Write summaries for the action log: calls and bytes per (process, fd, target), summed
//! in the pipeline worker and recorded as one row when the fd pauses, changes target, or
//! has been written for a minute — a busy writer makes a row a minute, not one a call.
//! Sockets are summed per (process, remote) instead, whatever fd carried them: a client
//! opening a connection per request, or a server answering each on a new socket, makes a
//! row a minute per remote, not one per connection (the count is the row's `sockets`).
use std::time::{Duration, Instant};

use super::{wall_ms, ActionLog, Row};
use crate::fastmap::FastMap;
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
    fd: i32,
    sockets: u64,
    bytes: u64,
    calls: u64,
    started: Instant,
    last: Instant,
}

/// What one summary sums over, within a process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Over {
    /// One fd (files, pipes, terminals, sockets without a known peer).
    Fd(i32),
    /// Every socket to one remote the process connected to (`address:port`).
    Remote(String),
    /// Every socket from one remote host to one local port: connections the process
    /// accepted (the remote port is a client's ephemeral one, different each time).
    Served { host: String, local_port: u16 },
}

impl Over {
    /// What a write to `target` through `fd` is summed under. `connected`: the remote the
    /// process connected `fd` to, if it did; `local_port`: the socket's own port.
    pub fn of(fd: i32, target: &Target, connected: Option<&str>, local_port: u16) -> Over {
        let Some(remote) = target.remote() else {
            return Over::Fd(fd);
        };
        if connected == Some(remote) || local_port == 0 || remote == "unix" {
            return Over::Remote(remote.to_string());
        }
        let host = remote.rsplit_once(':').map_or(remote, |(h, _)| h);
        Over::Served {
            host: host.to_string(),
            local_port,
        }
    }
}

#[derive(Default)]
pub struct WriteLog {
    map: FastMap<(u32, Over), Sum>,
}

impl WriteLog {
    /// `calls` calls wrote `bytes` bytes to `target` through `fd` of process `tgid`, summed
    /// under `over`; `new_socket`: the fd holds a socket not seen before. `who` describes
    /// the writer; it is asked for only when a new summary starts.
    #[allow(clippy::too_many_arguments)]
    pub fn note(
        &mut self,
        log: &ActionLog,
        (tgid, fd): (u32, i32),
        over: Over,
        target: &Target,
        bytes: u64,
        calls: u64,
        new_socket: bool,
        who: impl FnOnce() -> ProcInfo,
    ) {
        if !log.enabled() {
            return;
        }
        let key = (tgid, over);
        let now = Instant::now();
        if let Some(s) = self.map.get(&key) {
            // Sockets summed per remote carry many targets (clients' ports).
            let moved = matches!(key.1, Over::Fd(_)) && s.target != *target;
            if moved || now.duration_since(s.started) >= SPAN {
                let s = self.map.remove(&key).expect("present");
                log.record(finish(s));
            }
        }
        if !self.map.contains_key(&key) && self.map.len() >= MAX {
            if let Some(k) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(k, _)| k.clone())
            {
                let s = self.map.remove(&k).expect("present");
                log.record(finish(s));
            }
        }
        let served = match &key.1 {
            Over::Served { host, local_port } => Some((host.clone(), *local_port)),
            _ => None,
        };
        let mut fresh = false;
        let s = self.map.entry(key).or_insert_with(|| {
            fresh = true;
            let mut row = Row::new("write", &who());
            match (served, target.remote()) {
                (Some((host, port)), _) => row = row.with("remote", host).with("local_port", port),
                (None, Some(r)) => row = row.with("remote", r),
                (None, None) => {}
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
                fd,
                sockets: target.remote().is_some() as u64,
                bytes: 0,
                calls: 0,
                started: now,
                last: now,
            }
        });
        if new_socket && !fresh {
            s.sockets += 1;
        }
        s.bytes += bytes;
        s.calls += calls;
        s.last = now;
    }

    /// Records the summaries of fds that paused (or all of them, at shutdown).
    pub fn tick(&mut self, log: &ActionLog, all: bool) {
        let now = Instant::now();
        let done: Vec<(u32, Over)> = self
            .map
            .iter()
            .filter(|(_, s)| all || now.duration_since(s.last) >= PAUSE)
            .map(|(k, _)| k.clone())
            .collect();
        for k in done {
            if let Some(s) = self.map.remove(&k) {
                log.record(finish(s));
            }
        }
    }
}

fn finish(s: Sum) -> Row {
    let mut row = s.row;
    // A row summing several sockets has no one fd. One socket keeps its whole remote, port
    // included: a connection made before the daemon started, or one datagram peer, is not
    // known to be accepted.
    if s.sockets <= 1 {
        row = row.with("fd", s.fd);
        if let Some(r) = s.target.remote() {
            row = row.with("remote", r);
        }
    } else {
        row = row.with("sockets", s.sockets);
    }
    let mut row = row
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
        w.note(log, (7, 3), Over::Fd(3), &a, 100, 1, false, who);
        w.note(log, (7, 3), Over::Fd(3), &a, 50, 2, false, who);
        // The fd names another target: the first summary is recorded, a new one starts.
        w.note(log, (7, 3), Over::Fd(3), &b, 10, 1, true, who);
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

    #[test]
    fn sockets_are_summed_per_remote_whatever_fd_carried_them() {
        let t = super::super::testing::TestLog::new("sockets");
        let log = &t.log;
        let mut w = WriteLog::default();
        let who = || ProcInfo {
            pid: 9,
            ..Default::default()
        };
        // A client connecting per request: fds 5, 6, 5 to one server.
        let up = Target::Socket(Some("10.0.0.1:443".into()));
        for fd in [5, 6, 5] {
            let over = Over::of(fd, &up, Some("10.0.0.1:443"), 40_000 + fd as u16);
            assert_eq!(over, Over::Remote("10.0.0.1:443".into()));
            w.note(log, (9, fd), over, &up, 100, 2, true, who);
        }
        // A server answering three clients' connections (ephemeral ports) on port 8080.
        for (fd, port) in [(7, 50_001), (8, 50_002), (7, 50_003)] {
            let client = Target::Socket(Some(format!("10.0.0.2:{port}")));
            let over = Over::of(fd, &client, None, 8080);
            w.note(log, (9, fd), over, &client, 10, 1, true, who);
        }
        // One socket of a process that was not seen connecting it keeps its port.
        let old = Target::Socket(Some("10.0.0.3:5432".into()));
        w.note(
            log,
            (9, 4),
            Over::of(4, &old, None, 41_000),
            &old,
            5,
            1,
            true,
            who,
        );
        // A file: one fd.
        let f = Target::File(Some("/var/log/x".into()));
        assert_eq!(Over::of(3, &f, None, 0), Over::Fd(3));
        w.tick(log, true);
        let mut rows = t.rows("write");
        rows.sort_by_key(|r| r["remote"].as_str().unwrap_or("").to_string());
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(
            (rows[2]["remote"].as_str(), rows[2]["fd"].as_u64()),
            (Some("10.0.0.3:5432"), Some(4))
        );
        assert_eq!(rows[0]["remote"], "10.0.0.1:443");
        assert_eq!(
            (rows[0]["sockets"].as_u64(), rows[0]["calls"].as_u64()),
            (Some(3), Some(6))
        );
        assert!(rows[0].get("fd").is_none(), "{rows:?}");
        assert_eq!(rows[1]["remote"], "10.0.0.2");
        assert_eq!(rows[1]["local_port"], 8080);
        assert_eq!(
            (rows[1]["sockets"].as_u64(), rows[1]["bytes"].as_u64()),
            (Some(3), Some(30))
        );
    }
}
