//! Connect rows for the action log. The first connect of a process to a remote is a row at
//! once; its repeats (an HTTP client reconnecting to its API, a health check) are summed
//! and recorded as one row with `count` when they pause or after a minute — a process
//! reconnecting a thousand times a second makes a row a minute per remote, not a thousand.
//! Most repeats never reach the daemon as records: the kernel folds them and a later
//! record of the process carries their count (`folded`), summed here the same way.
use std::time::{Duration, Instant};

use leakwatch_common::Peer;

use super::{wall_ms, ActionLog, Row};
use crate::{
    events::{format_peer, Folded},
    fastmap::FastMap,
    procs::ProcInfo,
};

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

/// A (process, remote) pair, by the remote's raw address (its local port left out): a
/// repeat is looked up without hashing or comparing the formatted name.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    tgid: u32,
    family: u16,
    port: u16,
    addr: [u8; 16],
}

impl Key {
    /// Keyed as `format_peer` names the remote: an IPv4-mapped IPv6 remote as the IPv4
    /// one; every unix socket as `unix`; every family it cannot name as one unnamed remote.
    fn of(tgid: u32, p: &Peer) -> Key {
        use leakwatch_common::{AF_INET, AF_INET6, AF_UNIX};
        let mapped = || std::net::Ipv6Addr::from(p.addr).to_ipv4_mapped();
        let (family, port, addr) = match p.family {
            AF_INET6 if let Some(v4) = mapped() => {
                let mut a = [0; 16];
                a[..4].copy_from_slice(&v4.octets());
                (AF_INET, p.port, a)
            }
            AF_INET | AF_INET6 => (p.family, p.port, p.addr),
            AF_UNIX => (AF_UNIX, 0, [0; 16]),
            _ => (0, 0, [0; 16]),
        };
        Key {
            tgid,
            family,
            port,
            addr,
        }
    }
}

#[derive(Default)]
pub struct ConnectLog {
    map: FastMap<Key, Repeats>,
}

impl ConnectLog {
    /// Process `tgid` connected `fd` to `peer`, named `remote`, at about `now` (the
    /// worker's batch clock: repeats are counted in seconds); `who` is asked for only for
    /// a new row.
    #[allow(clippy::too_many_arguments)]
    pub fn note(
        &mut self,
        log: &ActionLog,
        now: Instant,
        tgid: u32,
        peer: &Peer,
        remote: &str,
        fd: i32,
        who: impl FnOnce() -> ProcInfo,
    ) {
        if !log.enabled() {
            return;
        }
        let key = Key::of(tgid, peer);
        if let Some(r) = self.map.get_mut(&key) {
            if now.duration_since(r.started) < SPAN {
                if r.count == 0 {
                    r.row.ts_ms = wall_ms(now);
                }
                r.count += 1;
                r.last = now;
                return;
            }
            let r = self.map.remove(&key).expect("present");
            record(log, r);
        }
        if self.map.len() >= MAX {
            self.tick(log, true);
        }
        let row = Row::new("connect", &who())
            .with("remote", remote.to_string())
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

    /// `f.count` repeats of `tgid`'s connect to `f.peer` that the kernel folded, learnt at
    /// `now` (`f`'s times count back from it): added to that remote's pending repeats, or
    /// pending on their own when it has none (recorded at a pause, or the log filled) —
    /// recorded at once if they have paused already, so they never absorb the connect
    /// whose record carried them.
    pub fn folded(
        &mut self,
        log: &ActionLog,
        now: Instant,
        tgid: u32,
        f: &Folded,
        who: impl FnOnce() -> ProcInfo,
    ) {
        if !log.enabled() || f.count == 0 {
            return;
        }
        let ago = |ns| now.checked_sub(Duration::from_nanos(ns)).unwrap_or(now);
        let (first, last) = (ago(f.first_ago_ns), ago(f.last_ago_ns));
        let key = Key::of(tgid, &f.peer);
        let n = u64::from(f.count);
        if let Some(r) = self.map.get_mut(&key) {
            if r.count == 0 {
                r.row.ts_ms = wall_ms(first);
            }
            r.count += n;
            r.last = r.last.max(last);
            return;
        }
        let mut row = Row::new("connect", &who())
            .with("remote", format_peer(&f.peer).unwrap_or_default())
            .with("fd", f.fd);
        row.ts_ms = wall_ms(first);
        let r = Repeats {
            row,
            count: n,
            started: first,
            last,
        };
        if now.saturating_duration_since(last) >= PAUSE {
            record(log, r);
            return;
        }
        if self.map.len() >= MAX {
            self.tick(log, true);
        }
        self.map.insert(key, r);
    }

    /// Records the repeats that paused (or all of them, at shutdown).
    pub fn tick(&mut self, log: &ActionLog, all: bool) {
        let now = Instant::now();
        let done: Vec<Key> = self
            .map
            .iter()
            .filter(|(_, r)| {
                all || now.duration_since(r.last) >= PAUSE || now.duration_since(r.started) >= SPAN
            })
            .map(|(k, _)| *k)
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

    fn v4(a: [u8; 4], port: u16, lport: u16) -> Peer {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        Peer {
            family: leakwatch_common::AF_INET,
            port,
            lport,
            addr,
            ..Default::default()
        }
    }

    #[test]
    fn a_first_connect_is_a_row_at_once_and_its_repeats_one_row() {
        let t = super::super::testing::TestLog::new("connects");
        let mut c = ConnectLog::default();
        let who = || ProcInfo {
            pid: 7,
            ..Default::default()
        };
        let mut note = |tgid: u32, p: Peer, fd: i32| {
            let remote = crate::events::format_peer(&p).unwrap_or_default();
            c.note(&t.log, Instant::now(), tgid, &p, &remote, fd, who);
        };
        // Another local port each time: the same remote.
        for fd in 3..103 {
            note(7, v4([10, 0, 0, 1], 443, 40_000 + fd as u16), fd);
        }
        // The same remote through an IPv4-mapped IPv6 socket.
        let mut mapped = v4([0; 4], 443, 0);
        mapped.family = leakwatch_common::AF_INET6;
        mapped.addr[10..].copy_from_slice(&[255, 255, 10, 0, 0, 1]);
        note(7, mapped, 103);
        note(7, v4([10, 0, 0, 2], 5432, 0), 9);
        note(8, v4([10, 0, 0, 1], 443, 0), 3);
        // Families that cannot be named (netlink, AF_UNSPEC) are one unnamed remote.
        for family in [16, 0, 40] {
            let mut p = v4([1, 2, 3, 4], 9, 0);
            p.family = family;
            note(8, p, 4);
        }
        let first = t.rows("connect");
        assert_eq!(
            first.len(),
            4,
            "one row per new (process, remote), at once: {first:?}"
        );
        assert_eq!(first[3]["remote"], "");
        assert_eq!(first[0]["fd"], 3);
        assert_eq!(first[1]["remote"], "10.0.0.2:5432");
        c.tick(&t.log, true);
        let all = t.rows("connect");
        assert_eq!(all.len(), 6, "{all:?}");
        let count = |remote: &str| {
            all[4..]
                .iter()
                .find(|r| r["remote"] == remote)
                .map(|r| r["count"].clone())
        };
        assert_eq!(count("10.0.0.1:443"), Some(100.into()), "{all:?}");
        assert_eq!(count(""), Some(2.into()), "{all:?}");
    }

    #[test]
    fn repeats_folded_in_the_kernel_join_their_remote_or_make_a_row_of_their_own() {
        let t = super::super::testing::TestLog::new("folded");
        let mut c = ConnectLog::default();
        let who = || ProcInfo {
            pid: 7,
            ..Default::default()
        };
        let (api, db) = (v4([10, 0, 0, 1], 443, 0), v4([10, 0, 0, 2], 5432, 0));
        let now = Instant::now();
        let folded = |peer: Peer, count: u32| Folded {
            count,
            fd: 3,
            peer,
            ..Default::default()
        };
        c.note(&t.log, now, 7, &api, "10.0.0.1:443", 3, who);
        // The next record carries 40 repeats of the first, then is a repeat itself.
        c.folded(&t.log, now, 7, &folded(api, 40), who);
        c.note(&t.log, now, 7, &api, "10.0.0.1:443", 3, who);
        // Repeats of a remote with none pending (a first row recorded long ago), then 0.
        c.folded(&t.log, now, 7, &folded(db, 5), who);
        c.folded(&t.log, now, 8, &folded(db, 0), who);
        assert_eq!(t.rows("connect").len(), 1, "only the first connect at once");
        // Repeats that paused 10 s ago (a burst, then quiet) are a row at once, and the
        // connect whose record carried them is a first connect of its own.
        let cache = v4([10, 0, 0, 3], 6379, 0);
        let paused = Folded {
            first_ago_ns: 10_000_000_000,
            last_ago_ns: 10_000_000_000,
            ..folded(cache, 9)
        };
        c.folded(&t.log, now, 7, &paused, who);
        c.note(&t.log, now, 7, &cache, "10.0.0.3:6379", 4, who);
        let at_once = t.rows("connect");
        assert_eq!(at_once.len(), 3, "{at_once:?}");
        assert_eq!(at_once[1]["count"], 9, "{at_once:?}");
        assert_eq!(at_once[2]["fd"], 4, "{at_once:?}");
        c.tick(&t.log, true);
        let all = t.rows("connect");
        assert_eq!(all.len(), 5, "{all:?}");
        let row = |remote: &str| all[3..].iter().find(|r| r["remote"] == remote).unwrap();
        assert_eq!(row("10.0.0.1:443")["count"], 41, "{all:?}");
        assert_eq!(row("10.0.0.2:5432")["count"], 5, "{all:?}");
        assert!(row("10.0.0.2:5432").get("fd").is_none(), "{all:?}");
    }
}
