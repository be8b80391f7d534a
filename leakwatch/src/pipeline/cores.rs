//! Kernel core dumps written to a file (a `core_pattern` without a pipe). The kernel
//! writes a core with no write syscall, so when a process ends after dumping (a
//! `CoreEvent`, sent once the core is complete) the file is found from the pattern and
//! scanned on a thread of its own — a core can be gigabytes and the pipeline must not
//! wait — and its findings come back through the dump inbox, like the core-handler's.
//! With a pipe pattern the handler is the one to scan: leakwatch's own reports itself;
//! another handler's core is out of reach, so it is counted and logged.
use std::{
    io::Read,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, RwLock},
    time::{Duration, Instant, SystemTime},
};

use super::Pipeline;
use crate::{
    crash::{DumpReport, Inbox},
    detect::{frozen::FrozenSet, stream::StreamScanner, Detector, Engine},
    events::CoreEvent,
};

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";
const CORE_USES_PID: &str = "/proc/sys/kernel/core_uses_pid";
/// A core file older than this when its process ended is not the one it dumped.
const FRESH: Duration = Duration::from_secs(120);
/// Cores waiting for the scanner thread; more are counted and skipped.
const WAITING: usize = 16;
/// Core notices for one process this close together are one core: where the kernel's
/// exit record has no `group_dead`, two threads exiting at once may both count as the
/// last (see the kernel's `scope::group_dead`).
const JOIN: Duration = Duration::from_secs(5);

/// One core file to scan, who dumped it, and the rules in force when it was noticed (the
/// thread outlives a reload: it once kept the rules of its start, so a SIGHUP's new rules
/// and allowlist never reached a core).
pub struct Job {
    pub path: PathBuf,
    pub report: DumpReport,
    pub engine: Arc<Engine>,
}

/// The scanner thread's input, started with the first file core.
#[derive(Default)]
pub struct Scanner {
    tx: Option<mpsc::SyncSender<Job>>,
    /// Processes whose core was noticed within `JOIN`, and when.
    recent: Vec<(u32, Instant)>,
}

pub(super) fn on_core(p: &mut Pipeline, c: CoreEvent) {
    p.metrics
        .events
        .with_label_values(&[c.task.probe_name()])
        .inc();
    if p.cores.repeat(c.task.tgid, Instant::now()) {
        return;
    }
    let pattern = std::fs::read_to_string(CORE_PATTERN)
        .map(|s| s.trim_end_matches('\n').to_string())
        .unwrap_or_default();
    let who = p.procs.quick(&c.task);
    let mut report = DumpReport {
        kind: "core".into(),
        how: "file".into(),
        pid: c.task.tgid,
        tid: c.task.pid,
        ppid: who.ppid,
        uid: c.task.uid,
        comm: who.comm.clone(),
        exe: who.exe.clone(),
        cgroup: who.cgroup.clone(),
        signal: c.signal,
        ..Default::default()
    };
    let outcome;
    if let Some(handler) = pattern.strip_prefix('|') {
        outcome = if handler.contains(" core-handler") {
            "handler"
        } else {
            log::warn!(
                "pid {} ({}) dumped core to the handler `{}`, which leakwatch cannot read; \
                 install leakwatch's (`leakwatch install --core-handler`) to scan cores",
                c.task.tgid,
                who.comm,
                handler
            );
            "other_handler"
        };
        report.path = Some(pattern.clone());
    } else {
        let uses_pid = std::fs::read_to_string(CORE_USES_PID).is_ok_and(|s| s.trim() == "1");
        let host = hostname();
        let known = Known {
            pid: c.task.tgid,
            uid: c.task.uid,
            gid: c.task.gid,
            signal: c.signal,
            host: &host,
            exe: &who.exe,
        };
        match find(&pattern, uses_pid, c.cwd.as_deref(), &known) {
            Some(path) => {
                report.path = Some(path.to_string_lossy().into_owned());
                outcome = if p.cores.send(
                    Job {
                        path,
                        report: report.clone(),
                        engine: p.engine.clone(),
                    },
                    &p.shared.frozen,
                    &p.shared.dumps,
                    &p.metrics.internal_errors,
                ) {
                    "scanned"
                } else {
                    "skipped"
                };
            }
            None => {
                log::warn!(
                    "pid {} ({}) dumped core, but no fresh file matches core_pattern `{pattern}` \
                     (cwd {:?}): not scanned",
                    c.task.tgid,
                    who.comm,
                    c.cwd
                );
                outcome = "not_found";
            }
        }
    }
    p.metrics.core_dumps.with_label_values(&[outcome]).inc();
    if p.actions.enabled() {
        let mut row = crate::actions::Row::new("core", &who)
            .with("signal", c.signal)
            .with("outcome", outcome);
        if let Some(path) = &report.path {
            row = row.with("path", path.as_str());
        }
        p.actions.record(row);
    }
}

impl Scanner {
    /// Was a core of `tgid` noticed within `JOIN` before `now`? Remembers this one if not.
    fn repeat(&mut self, tgid: u32, now: Instant) -> bool {
        self.recent.retain(|&(_, t)| now.duration_since(t) < JOIN);
        if self.recent.iter().any(|&(p, _)| p == tgid) {
            return true;
        }
        self.recent.push((tgid, now));
        false
    }

    /// Queues a core for the scanner thread (started on first use). False when the queue
    /// is full or the thread cannot start.
    fn send(
        &mut self,
        job: Job,
        frozen: &Arc<RwLock<FrozenSet>>,
        inbox: &Inbox,
        errors: &prometheus::IntCounterVec,
    ) -> bool {
        if self.tx.is_none() {
            let (tx, rx) = mpsc::sync_channel::<Job>(WAITING);
            let (frozen, inbox) = (frozen.clone(), inbox.clone());
            let errors = errors.clone();
            let started = std::thread::Builder::new()
                .name("lw-cores".into())
                .spawn(move || {
                    for job in rx {
                        // A bug met while scanning one core still reports the crash.
                        let mut stopped = job.report.clone();
                        let r = crate::panics::guard("core_scan", &errors, || {
                            scan(job, &frozen)
                        })
                        .unwrap_or_else(|| {
                            stopped.problems.push(
                                "scanning it stopped on an internal error (a bug: the log names its place); findings may be missing".into(),
                            );
                            stopped
                        });
                        if !crate::crash::push(&inbox, r) {
                            log::warn!("crash dump inbox full: a core's findings were dropped");
                        }
                    }
                });
            if let Err(e) = started {
                log::error!("cannot start the core scanner thread: {e}");
                return false;
            }
            self.tx = Some(tx);
        }
        self.tx.as_ref().is_some_and(|tx| tx.try_send(job).is_ok())
    }
}

/// Reads the core once, streaming (memory bounded by the scanner's tail).
fn scan(job: Job, frozen: &RwLock<FrozenSet>) -> DumpReport {
    let engine = &*job.engine;
    let mut r = job.report;
    let mut f = match std::fs::File::open(&job.path) {
        Ok(f) => f,
        Err(e) => {
            r.problems
                .push(format!("cannot open {}: {e}", job.path.display()));
            return r;
        }
    };
    let mut sc = StreamScanner::new(engine);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                r.problems
                    .push(format!("reading {} stopped: {e}", job.path.display()));
                break;
            }
        };
        r.bytes += n as u64;
        let fz = Some(crate::detect::frozen::FrozenSet::read(frozen));
        let d = Detector::new(engine, fz.as_deref());
        crate::crash::add_hits(&mut r.hits, sc.feed(&d, &buf[..n]));
    }
    let fz = Some(crate::detect::frozen::FrozenSet::read(frozen));
    let d = Detector::new(engine, fz.as_deref());
    crate::crash::add_hits(&mut r.hits, sc.finish(&d));
    r
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What the daemon knows of a dump for `core_pattern`'s specifiers.
pub struct Known<'a> {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub signal: i32,
    pub host: &'a str,
    pub exe: &'a str,
}

/// The newest fresh regular file that `pattern` (core(5)) names for this dump. Only the
/// last component may hold specifiers the daemon cannot know exactly (%t time, %e the
/// dumping thread's name, %i its id…): those match any run of characters there.
pub fn find(pattern: &str, uses_pid: bool, cwd: Option<&str>, k: &Known) -> Option<PathBuf> {
    let (dir, name) = match pattern.rfind('/') {
        Some(i) => (&pattern[..i.max(1)], &pattern[i + 1..]),
        None => (".", pattern),
    };
    let dir = exact(dir, k)?;
    let dir = if dir.starts_with('/') {
        PathBuf::from(dir)
    } else {
        Path::new(cwd?).join(dir)
    };
    let mut re = String::from("^");
    re.push_str(&matcher(name, k));
    if uses_pid && !pattern.contains("%p") {
        re.push_str(&format!(r"\.{}", k.pid));
    }
    re.push('$');
    let re = regex::Regex::new(&re).ok()?;
    let now = SystemTime::now();
    let mut best: Option<(SystemTime, PathBuf)> = None;
    for e in std::fs::read_dir(&dir).ok()?.flatten() {
        let name = e.file_name();
        if !re.is_match(&name.to_string_lossy()) {
            continue;
        }
        let Ok(m) = e.metadata() else { continue };
        let Ok(t) = m.modified() else { continue };
        let fresh = now.duration_since(t).map_or(true, |age| age <= FRESH);
        if m.is_file() && fresh && best.as_ref().is_none_or(|(bt, _)| t > *bt) {
            best = Some((t, e.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// `s` with its specifiers replaced by what is known exactly; None if one is not.
fn exact(s: &str, k: &Known) -> Option<String> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('%') => out.push('%'),
            Some(spec) => out.push_str(&known(spec, k)?),
            None => {}
        }
    }
    Some(out)
}

/// A specifier's exact value, when the daemon knows it.
fn known(spec: char, k: &Known) -> Option<String> {
    Some(match spec {
        'p' | 'P' => k.pid.to_string(),
        'u' => k.uid.to_string(),
        'g' => k.gid.to_string(),
        's' => k.signal.to_string(),
        'h' => k.host.to_string(),
        'E' if !k.exe.is_empty() => k.exe.replace('/', "!"),
        _ => return None,
    })
}

/// A regex for one path component of the pattern.
fn matcher(name: &str, k: &Known) -> String {
    let mut re = String::new();
    let mut it = name.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            re.push_str(&regex::escape(&c.to_string()));
            continue;
        }
        match it.next() {
            Some('%') => re.push('%'),
            Some(spec) => match known(spec, k) {
                Some(v) => re.push_str(&regex::escape(&v)),
                None => re.push_str(".*"),
            },
            None => {}
        }
    }
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_core_notice_of_one_process_is_joined_for_a_while() {
        let mut s = Scanner::default();
        let t = Instant::now();
        assert!(!s.repeat(7, t));
        assert!(
            s.repeat(7, t + Duration::from_millis(10)),
            "two last threads, one core"
        );
        assert!(
            !s.repeat(8, t + Duration::from_millis(10)),
            "another process"
        );
        assert!(
            !s.repeat(7, t + JOIN + Duration::from_secs(1)),
            "a later core"
        );
        assert_eq!(s.recent.len(), 1, "old notices are forgotten");
    }

    fn k() -> Known<'static> {
        Known {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            signal: 6,
            host: "box",
            exe: "/usr/bin/python3.11",
        }
    }

    #[test]
    fn patterns_name_the_fresh_core() {
        let d = std::env::temp_dir().join(format!("lw-cores-{}", std::process::id()));
        std::fs::create_dir_all(d.join("1000")).unwrap();
        for f in [
            "core.python3.4242.1733212345",
            "core.python3.4243.1",
            "core.4242",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        std::fs::write(d.join("1000/core"), b"x").unwrap();
        let dir = d.to_str().unwrap();
        let pat = format!("{dir}/core.%e.%p.%t");
        assert_eq!(
            find(&pat, false, None, &k()),
            Some(d.join("core.python3.4242.1733212345"))
        );
        // Relative, and core_uses_pid appends the pid when the pattern has none.
        assert_eq!(
            find("core", true, Some(dir), &k()),
            Some(d.join("core.4242"))
        );
        assert_eq!(find("core", false, Some(dir), &k()), None);
        // Known specifiers in the directory part.
        assert_eq!(
            find(&format!("{dir}/%u/core"), false, None, &k()),
            Some(d.join("1000/core"))
        );
        // Unknown specifiers in the directory part cannot be searched.
        assert_eq!(find(&format!("{dir}/%t/core"), false, None, &k()), None);
        // A relative pattern without a cwd cannot be found.
        assert_eq!(find("core", true, None, &k()), None);
        // %E is the exe path with ! for /.
        std::fs::write(d.join("!usr!bin!python3.11.core"), b"x").unwrap();
        assert_eq!(
            find(&format!("{dir}/%E.core"), false, None, &k()),
            Some(d.join("!usr!bin!python3.11.core"))
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
