//! What a write went to. The kernel sends, with every write, the identity of the open file
//! behind the fd (its `struct file`, inode and mode) and, when that identity is new for the
//! (process, fd), the path it walked; sockets come with their peer. This table remembers the
//! name per (process, fd) so later writes need no path, and so a `dup2` or a reopen (a new
//! identity) renames the fd at once. Entries are bounded; a miss falls back to /proc.
use std::time::{Duration, Instant};

use leakwatch_common::Peer;

use crate::{
    events::{format_peer, ConnectEvent, FileKind, WriteEvent},
    fastmap::{FastMap, FastSet},
    source::Source,
};

/// (process, fd) entries kept before the least recently used are dropped.
const MAX_FDS: usize = 65_536;
/// Connect destinations kept (fallback for sockets the kernel could not read a peer from).
const MAX_CONNECTS: usize = 65_536;

/// Where a write went, as alerts name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    File(Option<String>),
    Socket(Option<String>),
    Pipe(String),
    Tty(String),
    /// A device that is not a terminal (/dev/null…): nothing is stored, nothing scanned.
    Device(String),
}

impl Target {
    /// The finding's source; None for writes that go nowhere a secret could be read back.
    pub fn source(&self) -> Option<Source> {
        match self {
            Target::File(_) => Some(Source::File),
            Target::Socket(_) => Some(Source::Socket),
            Target::Pipe(_) => Some(Source::Pipe),
            Target::Tty(_) => Some(Source::Tty),
            Target::Device(_) => None,
        }
    }

    /// `path` of the alert (files, pipes, terminals).
    pub fn path(&self) -> Option<&str> {
        match self {
            Target::File(p) => p.as_deref(),
            Target::Pipe(p) | Target::Tty(p) | Target::Device(p) => Some(p),
            Target::Socket(_) => None,
        }
    }

    /// `remote` of the alert (sockets).
    pub fn remote(&self) -> Option<&str> {
        match self {
            Target::Socket(r) => r.as_deref(),
            _ => None,
        }
    }

    fn named(&self) -> bool {
        match self {
            Target::File(p) | Target::Socket(p) => p.is_some(),
            _ => true,
        }
    }
}

struct Entry {
    file: u64,
    ino: u64,
    target: Target,
    /// Sockets: the peer `target` was named from, as the kernel sent it.
    peer: Option<Peer>,
    used: Instant,
    /// Sockets: the host the first bytes named (TLS SNI, HTTP `Host:`), see `dest`.
    host: Option<String>,
}

#[derive(Default)]
pub struct FdTable {
    fds: FastMap<(u32, i32), Entry>,
    /// (tgid, fd) -> where it connected, raw and as alerts name it.
    connects: FastMap<(u32, i32), (Peer, String)>,
    /// Processes the last sweep found gone: their entries go at the next one.
    gone: FastSet<u32>,
}

impl FdTable {
    pub fn new() -> FdTable {
        FdTable::default()
    }

    /// The next new connect clears the names of connects (they are never removed one by
    /// one: a process's exit is not seen here).
    pub fn connects_full(&self) -> bool {
        self.connects.len() >= MAX_CONNECTS
    }

    /// Remembers where `c` connected; returns that remote as alerts name it.
    pub fn on_connect(&mut self, c: &ConnectEvent) -> Option<&str> {
        if self.connects_full() {
            self.connects.clear();
        }
        let slot = self.connects.entry((c.task.tgid, c.fd)).or_default();
        // A client reconnecting to its server often gets the same fd number: the name
        // is made once (formatting was a tenth of the daemon's CPU in a connect loop).
        if slot.0 != c.peer || slot.1.is_empty() {
            *slot = (c.peer, format_peer(&c.peer).unwrap_or_default());
        }
        Some(slot.1.as_str()).filter(|r| !r.is_empty())
    }

    /// The remote the process connected `fd` to, if it was seen connecting it.
    pub fn connected(&self, (tgid, fd): (u32, i32)) -> Option<&str> {
        self.connects
            .get(&(tgid, fd))
            .map(|(_, r)| r.as_str())
            .filter(|r| !r.is_empty())
    }

    /// Names the target of `w`; the bool says whether it could be named (path or peer).
    pub fn classify(&mut self, w: &WriteEvent) -> (Target, bool) {
        let key = (w.task.tgid, w.fd);
        let now = Instant::now();
        if !w.new_file() {
            if let Some(e) = self.fds.get_mut(&key) {
                if e.file == w.file.file && e.ino == w.file.ino {
                    e.used = now;
                    // Datagram destinations change per call; keep the latest (compared
                    // raw: formatting an address for every send costs more than the rest).
                    if let (Target::Socket(r), Some(p)) = (&mut e.target, w.peer) {
                        if e.peer != Some(p) {
                            e.peer = Some(p);
                            if let Some(f) = format_peer(&p) {
                                *r = Some(f);
                            }
                        }
                    }
                    let t = e.target.clone();
                    let named = t.named();
                    return (t, named);
                }
            }
        }
        let peer = w.peer.as_ref().and_then(format_peer);
        let name = w.path.clone().or_else(|| proc_fd_link(w.task.tgid, w.fd));
        let target = match w.kind() {
            FileKind::Socket => {
                Target::Socket(peer.or_else(|| self.connected(key).map(str::to_string)))
            }
            FileKind::Pipe => Target::Pipe(format!("pipe:[{}]", w.file.ino)),
            FileKind::Char => {
                let p = name.unwrap_or_default();
                if is_tty(&p) {
                    Target::Tty(p)
                } else {
                    Target::Device(p)
                }
            }
            FileKind::Unknown => match name {
                // The kernel could not read the fd: /proc may still say what it is.
                Some(n) if n.starts_with("socket:") => {
                    Target::Socket(self.connected(key).map(str::to_string))
                }
                Some(n) if n.starts_with("pipe:") => Target::Pipe(n),
                Some(n) if is_tty(&n) => Target::Tty(n),
                n => Target::File(n),
            },
            FileKind::File | FileKind::Other => Target::File(name),
        };
        if self.fds.len() >= MAX_FDS {
            self.evict(now);
        }
        self.fds.insert(
            key,
            Entry {
                file: w.file.file,
                ino: w.file.ino,
                target: target.clone(),
                peer: w.peer,
                used: now,
                host: None,
            },
        );
        let named = target.named();
        (target, named)
    }

    /// Drops the least recently used eighth of the table.
    fn evict(&mut self, now: Instant) {
        let mut ages: Vec<Duration> = self.fds.values().map(|e| now - e.used).collect();
        ages.sort_unstable();
        let cut = ages[ages.len() - ages.len() / 8 - 1];
        self.fds.retain(|_, e| now - e.used < cut);
    }

    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Drops the entries of processes found gone at two sweeps in a row (`alive` answers
    /// per tgid; asked once each per sweep). Exits are not seen here, and on a busy host
    /// short-lived processes (a shell pipeline's every stage writes) filled the table to
    /// its bounds with fds that never write again: ~20 MB held. Two sweeps, because a
    /// process's last records may still be queued when it is found gone, and they need its
    /// names. A reused pid keeps the entries: an fd's is checked against its file's
    /// identity at the next write, as before; a connect's name stays until that fd
    /// connects again, as it did before sweeps. Gives back the tables' room once they are
    /// mostly empty. Returns how many entries went.
    pub fn forget_exited(&mut self, alive: impl Fn(u32) -> bool) -> usize {
        let before = self.fds.len() + self.connects.len();
        let waited = std::mem::take(&mut self.gone);
        let mut first = FastSet::default();
        let mut known: FastMap<u32, bool> = FastMap::default();
        let mut keep = |tgid: u32| {
            *known.entry(tgid).or_insert_with(|| {
                if alive(tgid) {
                    return true;
                }
                if waited.contains(&tgid) {
                    return false;
                }
                first.insert(tgid);
                true
            })
        };
        self.fds.retain(|(tgid, _), _| keep(*tgid));
        self.connects.retain(|(tgid, _), _| keep(*tgid));
        self.gone = first;
        let (fds, connects) = (self.fds.len(), self.connects.len());
        if self.fds.capacity() > 4 * fds.max(1024) {
            self.fds.shrink_to(2 * fds);
        }
        if self.connects.capacity() > 4 * connects.max(1024) {
            self.connects.shrink_to(2 * connects);
        }
        before - self.fds.len() - self.connects.len()
    }

    /// The host a socket's first bytes named, if any.
    pub fn host(&self, tgid: u32, fd: i32) -> Option<&str> {
        self.fds.get(&(tgid, fd))?.host.as_deref()
    }

    /// Learns the host of a socket from bytes it carries (the first write, or TLS
    /// plaintext), unless it is known already.
    pub fn learn_host(&mut self, tgid: u32, fd: i32, data: &[u8]) {
        if let Some(e) = self.fds.get_mut(&(tgid, fd)) {
            if e.host.is_none() && matches!(e.target, Target::Socket(_)) {
                e.host = crate::dest::sni(data).or_else(|| crate::dest::http_host(data));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

fn is_tty(p: &str) -> bool {
    p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"
}

/// What /proc says the fd is (`/var/log/x`, `pipe:[123]`, `socket:[456]`), while it lives.
fn proc_fd_link(tgid: u32, fd: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{tgid}/fd/{fd}"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use leakwatch_common::{FileId, Peer, AF_INET, PROBE_WRITE, WRITE_F_NEW_FILE, WRITE_F_PEER};

    use super::*;
    use crate::events::Task;

    fn write(tgid: u32, fd: i32, file: u64, mode: u32, path: Option<&str>) -> WriteEvent {
        let mut w = WriteEvent::default();
        w.task = Task {
            tgid,
            flags: if path.is_some() { WRITE_F_NEW_FILE } else { 0 },
            probe: PROBE_WRITE,
            ..Default::default()
        };
        w.fd = fd;
        w.file = FileId {
            file,
            ino: file + 1,
            dev: 0,
            mode,
        };
        w.path = path.map(str::to_string);
        w
    }

    // Far above any real pid, so the /proc fallback finds nothing.
    const PID: u32 = 4_000_000_001;

    #[test]
    fn remembers_a_path_and_renames_on_a_new_identity() {
        let mut t = FdTable::new();
        let (a, named) = t.classify(&write(PID, 2, 10, 0o100644, Some("/var/log/a.log")));
        assert_eq!(a, Target::File(Some("/var/log/a.log".into())));
        assert!(named);
        // Same identity, no path sent: the table names it.
        let (a2, _) = t.classify(&write(PID, 2, 10, 0o100644, None));
        assert_eq!(a2, a);
        // dup2 onto fd 2: a new identity with its path.
        let (b, _) = t.classify(&write(PID, 2, 20, 0o100644, Some("/tmp/b")));
        assert_eq!(b.path(), Some("/tmp/b"));
        // A different identity without a path (table out of step): unnamed, never the old name.
        let (c, named) = t.classify(&write(PID, 2, 30, 0o100644, None));
        assert_eq!(c, Target::File(None));
        assert!(!named);
    }

    #[test]
    fn kinds_map_to_sources() {
        let mut t = FdTable::new();
        let (p, _) = t.classify(&write(PID, 1, 40, 0o010600, None));
        assert_eq!(p, Target::Pipe("pipe:[41]".into()));
        assert_eq!(p.source(), Some(Source::Pipe));
        let (tty, _) = t.classify(&write(PID, 3, 50, 0o020620, Some("/dev/pts/4")));
        assert_eq!(tty.source(), Some(Source::Tty));
        let (null, _) = t.classify(&write(PID, 4, 60, 0o020666, Some("/dev/null")));
        assert_eq!(null.source(), None);
    }

    #[test]
    fn sockets_take_the_kernel_peer_or_the_connect() {
        let mut t = FdTable::new();
        let mut w = write(PID, 5, 70, 0o140777, None);
        w.task.flags |= WRITE_F_PEER;
        let mut peer = Peer {
            family: AF_INET,
            port: 8443,
            ..Default::default()
        };
        peer.addr[..4].copy_from_slice(&[10, 1, 2, 3]);
        w.peer = Some(peer);
        let (s, _) = t.classify(&w);
        assert_eq!(s.remote(), Some("10.1.2.3:8443"));
        let c = ConnectEvent {
            task: Task {
                tgid: PID,
                ..Default::default()
            },
            fd: 6,
            peer,
            ..Default::default()
        };
        t.on_connect(&c);
        let (s2, named) = t.classify(&write(PID, 6, 80, 0o140777, None));
        assert_eq!(s2.remote(), Some("10.1.2.3:8443"));
        assert!(named);
    }

    #[test]
    fn a_reconnected_fd_names_its_latest_remote() {
        let mut t = FdTable::new();
        let peer = |a: u8, port: u16| {
            let mut p = Peer {
                family: AF_INET,
                port,
                ..Default::default()
            };
            p.addr[..4].copy_from_slice(&[10, 0, 0, a]);
            p
        };
        let connect = |peer: Peer| ConnectEvent {
            task: Task {
                tgid: PID,
                ..Default::default()
            },
            fd: 7,
            peer,
            ..Default::default()
        };
        assert_eq!(t.on_connect(&connect(peer(1, 443))), Some("10.0.0.1:443"));
        // The same remote again (its name is kept), then another one on the same fd.
        assert_eq!(t.on_connect(&connect(peer(1, 443))), Some("10.0.0.1:443"));
        assert_eq!(t.on_connect(&connect(peer(2, 443))), Some("10.0.0.2:443"));
        assert_eq!(t.on_connect(&connect(peer(2, 80))), Some("10.0.0.2:80"));
        assert_eq!(t.connected((PID, 7)), Some("10.0.0.2:80"));
        // A connect to no address it can name (AF_UNSPEC dissolves a UDP association):
        // the fd no longer names the old remote.
        assert_eq!(t.on_connect(&connect(Peer::default())), None);
        assert_eq!(t.connected((PID, 7)), None);
    }

    /// Entries of processes found gone at two sweeps in a row go (their last records may
    /// still be queued at the first), connects too; each process is asked about once a
    /// sweep; the living keep theirs, names included; the table's room is given back.
    #[test]
    fn a_sweep_drops_the_entries_of_exited_processes() {
        let mut t = FdTable::new();
        for tgid in 0..5000u32 {
            for fd in 0..4 {
                let key = tgid as u64 * 10 + fd as u64;
                t.classify(&write(PID - tgid, fd, key, 0o100644, Some("/x")));
            }
        }
        let connect = |tgid: u32| ConnectEvent {
            task: Task {
                tgid,
                ..Default::default()
            },
            fd: 9,
            peer: Peer {
                family: AF_INET,
                port: 443,
                ..Default::default()
            },
            ..Default::default()
        };
        for tgid in [PID, PID - 1, PID - 2] {
            t.on_connect(&connect(tgid));
        }
        let room = t.fds.capacity();
        // Only the first two processes live on.
        let sweep = |t: &mut FdTable| {
            let asked = std::cell::RefCell::new(Vec::new());
            let gone = t.forget_exited(|tgid| {
                asked.borrow_mut().push(tgid);
                tgid > PID - 2
            });
            let mut asked = asked.into_inner();
            let n = asked.len();
            asked.sort_unstable();
            asked.dedup();
            assert_eq!(asked.len(), n, "a process asked about twice");
            (gone, n)
        };
        assert_eq!(
            sweep(&mut t),
            (0, 5000),
            "found gone once: kept for its queued records"
        );
        assert_eq!(t.connected((PID - 2, 9)), Some("0.0.0.0:443"));
        assert_eq!(sweep(&mut t), (4998 * 4 + 1, 5000));
        assert_eq!(t.len(), 8);
        assert_eq!(t.connected((PID - 2, 9)), None);
        assert!(t.fds.capacity() < room / 4, "room not given back");
        assert_eq!(t.connected((PID - 1, 9)), Some("0.0.0.0:443"));
        let (again, named) = t.classify(&write(PID - 1, 3, 13, 0o100644, None));
        assert_eq!(again, Target::File(Some("/x".into())));
        assert!(named);
        assert_eq!(sweep(&mut t), (0, 2));
    }

    #[test]
    fn the_table_stays_bounded() {
        let mut t = FdTable::new();
        for i in 0..(MAX_FDS as u64 + 10) {
            t.classify(&write(PID, i as i32, 1000 + i, 0o100644, Some("/x")));
        }
        assert!(t.len() <= MAX_FDS);
    }
}
