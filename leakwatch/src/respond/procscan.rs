//! Finding the processes that hold a credential: /proc/PID/environ and cmdline of every
//! process, the process tree for descendants, and (with `--deep`) their writable memory
//! read with process_vm_readv, where a key set with setenv or read from a file lives.
use std::{
    cell::RefCell,
    collections::HashMap,
    fs,
    io::{ErrorKind, Read},
    os::unix::fs::MetadataExt,
};

use zeroize::Zeroize;

use crate::detect::frozen::FrozenSet;

const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Clone, Debug, Default)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub state: char,
    pub start_time: u64,
}

/// Room a thread keeps for /proc reads between calls; a larger environment grows it for
/// that read only.
const KEEP: usize = 64 << 10;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads a /proc file whole into this thread's buffer and hands the bytes to `f`; they are
/// wiped afterwards (an environment may hold a key). `fs::read` starts at 32 bytes and
/// doubles, with an fstat first: a 1 KiB environ took 9 reads, each a walk of the target's
/// memory under its mmap lock, and /proc/PID/stat 7. Here a read fills what fits, and one
/// more finds the end. `None` when the file cannot be opened or read (the process is gone).
pub fn with_file<R>(path: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    BUF.with(|cell| {
        // `f` reading /proc itself would find the buffer taken: it gets one of its own.
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let buf = match borrowed.as_mut() {
            Ok(b) => &mut **b,
            Err(_) => &mut own,
        };
        let mut file = fs::File::open(path).ok()?;
        // Wipes what was read when dropped: after `f`, and if `f` panics.
        let mut w = Wipe { buf, n: 0 };
        let ok = loop {
            if w.n == w.buf.len() {
                // Grown by hand: a reallocation would leave the bytes read so far in freed
                // memory.
                let mut bigger = vec![0; (w.buf.len() * 2).max(16 << 10)];
                bigger[..w.n].copy_from_slice(&w.buf[..w.n]);
                crate::wipe::vec(w.buf);
                *w.buf = bigger;
            }
            let n = w.n;
            match file.read(&mut w.buf[n..]) {
                Ok(0) => break true,
                Ok(k) => w.n += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        let out = ok.then(|| f(&w.buf[..w.n]));
        drop(w);
        if buf.len() > KEEP {
            buf.truncate(KEEP);
            buf.shrink_to_fit();
        }
        out
    })
}

/// The bytes `with_file` read into its buffer, wiped when this is dropped.
struct Wipe<'a> {
    buf: &'a mut Vec<u8>,
    n: usize,
}

impl Drop for Wipe<'_> {
    fn drop(&mut self) {
        self.buf[..self.n].zeroize();
    }
}

/// /proc/PID/stat of `pid`, parsed.
pub fn stat(pid: u32) -> Option<(Proc, u64)> {
    stat_at(&format!("/proc/{pid}/stat"), pid)
}

fn stat_at(path: &str, pid: u32) -> Option<(Proc, u64)> {
    // Lossy: a name is any 15 bytes (`PR_SET_NAME`), and a process must not drop out of a
    // sweep, or count as gone, for naming itself in something other than UTF-8.
    with_file(path, |b| parse_stat(pid, &String::from_utf8_lossy(b))).flatten()
}

/// Parses /proc/PID/stat (comm may hold spaces and parentheses: split at the last ')').
pub fn parse_stat(pid: u32, text: &str) -> Option<(Proc, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let flags: u64 = rest.get(6)?.parse().ok()?;
    let start_time = rest.get(19)?.parse().ok()?;
    Some((
        Proc {
            pid,
            ppid,
            comm,
            state,
            start_time,
        },
        flags,
    ))
}

/// True once `p` is gone: reaped, replaced (pid reused), or every one of its threads a
/// zombie (dead, waiting for its parent to reap it). Checking the leader alone is not
/// enough: a leader that called pthread_exit is a zombie while its other threads run.
pub fn gone(p: &Proc) -> bool {
    let stat = |path: String| stat_at(&path, p.pid);
    match stat(format!("/proc/{}/stat", p.pid)) {
        None => return true,
        Some((q, _)) if q.start_time != p.start_time => return true,
        Some(_) => {}
    }
    let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", p.pid)) else {
        return true;
    };
    tasks.flatten().all(|t| {
        match stat(format!(
            "/proc/{}/task/{}/stat",
            p.pid,
            t.file_name().to_string_lossy()
        )) {
            None => true,
            Some((t, _)) => matches!(t.state, 'Z' | 'X'),
        }
    })
}

/// Every user-space process (kernel threads skipped).
pub fn list() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    use rayon::prelude::*;
    let pids: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .collect();
    pids.into_par_iter()
        .filter_map(|pid| {
            let (p, flags) = stat(pid)?;
            (flags & PF_KTHREAD == 0).then_some(p)
        })
        .collect()
}

/// The first key of `set` (its index) that the environment or command line of `pid` holds;
/// `seen` gets it with the exact bytes found.
pub fn holds_in_proc(
    pid: u32,
    set: &FrozenSet,
    mut seen: impl FnMut(usize, &[u8]),
) -> Option<usize> {
    ["environ", "cmdline"].iter().find_map(|f| {
        with_file(&format!("/proc/{pid}/{f}"), |b| {
            let hit = set.find(b).first().copied();
            if let Some(h) = hit {
                // The exact bytes, before they are wiped: the caller may derive the kernel's hash.
                seen(h.key, &b[h.start..h.end]);
            }
            hit.map(|h| h.key)
        })
        .flatten()
    })
}

/// All descendants of `roots` (not including them), from the ppid links of `procs`.
pub fn descendants(procs: &[Proc], roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !roots.contains(&c) && !out.contains(&c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// Ancestors of `pid`, nearest first.
pub fn ancestors(procs: &[Proc], pid: u32) -> Vec<u32> {
    let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let mut out = Vec::new();
    let mut cur = pid;
    while let Some(&pp) = parent.get(&cur) {
        if pp == 0 || out.contains(&pp) {
            break;
        }
        out.push(pp);
        cur = pp;
    }
    out
}

/// The ancestors of `pid` read from /proc now (parent first), without listing every process.
pub fn ancestors_live(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut cur = pid;
    while let Some((p, _)) = stat(cur) {
        if p.ppid == 0 || out.contains(&p.ppid) {
            break;
        }
        out.push(p.ppid);
        cur = p.ppid;
    }
    out
}

/// Network namespace inode of a process.
pub fn netns(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The sockets among a process's open file descriptors: (fd, socket inode).
pub fn sockets(pid: u32) -> Vec<(i32, u32)> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let l = fs::read_link(e.path()).ok()?;
            let s = l.to_str()?;
            Some((
                fd,
                s.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()?,
            ))
        })
        .collect()
}

/// Scans the private writable mappings (heap, stack, anonymous) of `pid` for a key of `set`,
/// 1 MiB at a time with overlap, at most `budget` bytes in all; the first key found.
pub fn holds_in_memory(pid: u32, set: &FrozenSet, budget: usize) -> Option<usize> {
    let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return None;
    };
    let overlap = set
        .keys()
        .iter()
        .map(|k| k.len)
        .max()
        .unwrap_or(0)
        .max(4096);
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + overlap];
    let mut scanned = 0usize;
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let path = f.nth(3).unwrap_or("");
        if !perms.starts_with("rw") || !perms.ends_with('p') {
            continue;
        }
        if !(path.is_empty() || path == "[heap]" || path == "[stack]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        else {
            continue;
        };
        let mut at = start;
        while at < end && scanned < budget {
            let want = (end - at).min(CHUNK + overlap);
            let n = read_remote(pid, at, &mut buf[..want]);
            if n == 0 {
                break;
            }
            scanned += n;
            if let Some(h) = set.find(&buf[..n]).first() {
                crate::wipe::vec(&mut buf);
                return Some(h.key);
            }
            if n < want {
                break;
            }
            at += CHUNK;
        }
    }
    crate::wipe::vec(&mut buf);
    None
}

fn read_remote(pid: u32, addr: usize, dst: &mut [u8]) -> usize {
    let local = libc::iovec {
        iov_base: dst.as_mut_ptr() as *mut libc::c_void,
        iov_len: dst.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: dst.len(),
    };
    // SAFETY: `local` points to `dst`, valid for its length; the kernel checks `remote`.
    let n = unsafe { libc::process_vm_readv(pid as i32, &local, 1, &remote, 1, 0) };
    if n < 0 {
        0
    } else {
        n as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_file_wipes_what_it_read_when_the_reader_panics() {
        let dir = std::env::temp_dir().join(format!("lw-procscan-wipe-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("environ");
        fs::write(&p, b"HOME=/root\0API_KEY=marker-3f9c2a\0").unwrap();
        let path = p.to_str().unwrap().to_string();
        // Same thread: the buffer checked is the one the read used.
        let r = std::panic::catch_unwind(|| with_file(&path, |_| panic!("reader failed")));
        assert!(r.is_err());
        BUF.with(|b| {
            let b = b.borrow();
            assert!(b.len() >= 16 << 10, "the thread's buffer was used");
            assert!(b.iter().all(|&x| x == 0), "bytes left after a panic");
        });
        // And after a normal read.
        assert_eq!(with_file(&path, |b| b.len()), Some(33));
        BUF.with(|b| assert!(b.borrow().iter().all(|&x| x == 0)));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn with_file_reads_whole_files_of_any_size_and_none_when_missing() {
        let dir = std::env::temp_dir().join(format!("lw-procscan-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // Past the first 16 KiB and past what a thread keeps (64 KiB).
        for len in [0usize, 5, 16 << 10, (16 << 10) + 1, 100_000] {
            let p = dir.join(format!("f{len}"));
            let want: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            fs::write(&p, &want).unwrap();
            let got = with_file(p.to_str().unwrap(), |b| b.to_vec()).unwrap();
            assert_eq!(got, want, "{len} bytes");
        }
        assert!(with_file(dir.join("missing").to_str().unwrap(), |b| b.len()).is_none());
        // A read inside `f` gets a buffer of its own.
        let p = dir.join("f5");
        let nested = with_file(p.to_str().unwrap(), |outer| {
            (
                outer.to_vec(),
                with_file(p.to_str().unwrap(), |inner| inner.to_vec()),
            )
        })
        .unwrap();
        assert_eq!(nested.1.as_deref(), Some(&nested.0[..]));
        // /proc itself: this process's stat parses.
        assert_eq!(stat(std::process::id()).unwrap().0.pid, std::process::id());
        // A name that is not UTF-8 (any bytes but NUL may be set with PR_SET_NAME).
        let p = dir.join("stat");
        let mut line =
            b"4242 (a\xff\xfe) b) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0"
                .to_vec();
        line.extend_from_slice(b" 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n");
        fs::write(&p, &line).unwrap();
        let (q, _) =
            stat_at(p.to_str().unwrap(), 4242).expect("a stat line with a non-UTF-8 name parses");
        assert_eq!((q.ppid, q.start_time, q.state), (1, 777, 'S'));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn live_ancestors_start_with_the_parent_and_agree_with_the_listing() {
        let me = std::process::id();
        let live = ancestors_live(me);
        // SAFETY: getppid has no preconditions.
        assert_eq!(
            live.first().copied(),
            Some(unsafe { libc::getppid() } as u32)
        );
        assert_eq!(live, ancestors(&list(), me));
    }

    #[test]
    fn stat_with_odd_comm() {
        let t =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 50";
        let (p, flags) = parse_stat(1234, t).unwrap();
        assert_eq!(p.comm, "a b) c)");
        assert_eq!(p.ppid, 1);
        assert_eq!(p.state, 'S');
        assert_eq!(flags, 4194560);
        assert_eq!(p.start_time, 98765);
    }

    #[test]
    fn a_killed_child_counts_as_gone_before_it_is_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let me = list().into_iter().find(|p| p.pid == pid).unwrap();
        assert!(!gone(&me), "a sleeping child is alive");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let t = std::time::Instant::now();
        while !gone(&me) {
            assert!(
                t.elapsed().as_secs() < 5,
                "killed child never counted as gone"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Not reaped yet: the pid still exists, as a zombie.
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        child.wait().unwrap();
        assert!(gone(&me));
    }

    #[test]
    fn tree_walks() {
        let mk = |pid, ppid| Proc {
            pid,
            ppid,
            ..Default::default()
        };
        let procs = vec![mk(1, 0), mk(10, 1), mk(11, 10), mk(12, 11), mk(20, 1)];
        let mut d = descendants(&procs, &[10]);
        d.sort();
        assert_eq!(d, vec![11, 12]);
        assert_eq!(ancestors(&procs, 12), vec![11, 10, 1]);
    }

    #[test]
    fn lists_self_not_kernel_threads() {
        let l = list();
        assert!(l.iter().any(|p| p.pid == std::process::id()));
        assert!(!l.iter().any(|p| p.pid == 2), "kthreadd listed");
    }
}
