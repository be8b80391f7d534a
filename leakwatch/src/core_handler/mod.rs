//! `leakwatch core-handler`: the `core_pattern` pipe handler. The kernel starts it as root
//! (from kthreadd, cwd `/`, no environment, only stdin open: the core) with the values of
//! leakwatch's pattern (`pattern::OURS`). It reads `/proc/PID` first (the crashed
//! process exists until its core is read), starts the previous handler or creates the
//! core file the previous pattern names (`target`), then pumps the core through
//! (`forward`: in-kernel copies, bounded buffers, a stalled handler given up after a
//! time limit) while a thread scans it (`scanner`) with the daemon's rules and frozen set.
//! The report (fingerprints and previews only) goes to the daemon over the control socket
//! — or, when no daemon answers, straight to the alert file — and one line to stderr, or
//! to the kernel log when the kernel gave no stderr. Exit status 0 unless the core could
//! not be passed on.
pub mod alerts;
pub mod crashed;
pub mod forward;
pub mod install;
pub mod pattern;
pub mod scanner;
pub mod settings;
pub mod target;

use std::{
    io::Write,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    crash::DumpReport,
    detect::{frozen::FrozenSet, Engine},
};
use settings::Settings;

/// How long the daemon may take to take a report.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(5);

/// Exit statuses.
pub const PASSED_ON: u8 = 0;
pub const NOT_PASSED_ON: u8 = 1;
pub const BAD_ARGS: u8 = 2;

/// Where the one line of the outcome goes.
#[derive(Clone, Copy)]
enum Log {
    Stderr,
    Kmsg,
}

impl Log {
    fn line(self, warn: bool, msg: &str) {
        match self {
            Log::Stderr => eprintln!("leakwatch core-handler: {msg}"),
            Log::Kmsg => {
                if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
                    let level = if warn { 4 } else { 6 };
                    let _ =
                        k.write_all(format!("<{level}>leakwatch core-handler: {msg}\n").as_bytes());
                }
            }
        }
    }
}

/// The kernel starts a helper with only stdin open, and Rust's runtime puts /dev/null on
/// fds 1 and 2 before `main`: whether stderr goes anywhere (else the kernel log is used).
fn has_stderr() -> bool {
    std::fs::read_link("/proc/self/fd/2").is_ok_and(|p| p != Path::new("/dev/null"))
}

/// Runs the handler; the exit status.
pub fn run(state_dir: &Path, args: &[String]) -> u8 {
    let log = if has_stderr() { Log::Stderr } else { Log::Kmsg };
    // A previous handler that closes its end must be a problem to report, not our death.
    // SAFETY: setting one signal's disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut crash = match crashed::parse(args) {
        Ok(c) => c,
        Err(e) => {
            log.line(true, &e);
            return BAD_ARGS;
        }
    };
    crash.read_proc();
    let mut problems: Vec<String> = crash.problem.iter().cloned().collect();
    let settings = match Settings::load(state_dir) {
        Ok(Some(s)) => s,
        Ok(None) => {
            problems.push(format!(
                "no {} in {}: the core went on as the kernel's default pattern `core` would send it",
                settings::FILE,
                state_dir.display()
            ));
            fallback_settings()
        }
        Err(e) => {
            problems.push(format!(
                "{e:#}: the core went on as the kernel's default pattern `core` would send it"
            ));
            fallback_settings()
        }
    };
    let timeout = settings.timeout().unwrap_or(Duration::from_secs(10));
    let unknown = pattern::unknown(&settings.previous);
    if !unknown.is_empty() {
        problems.push(format!(
            "the previous core_pattern uses {}, which core(5) does not define: dropped, as the kernel drops them",
            unknown.join(" ")
        ));
    }
    let uses_pid =
        std::fs::read_to_string("/proc/sys/kernel/core_uses_pid").is_ok_and(|s| s.trim() != "0");
    let opened = target::open(&settings.previous, &crash, uses_pid);
    problems.extend(opened.problems);
    // Nothing to pass on to is a failure unless the operator's RLIMIT_CORE asked for it.
    let mut failed = matches!(opened.target, target::Target::Nothing)
        && (settings.previous.starts_with('|') || crash.core_limit >= target::MIN_CORE);
    let (engine, frozen, config_problem) = detection(&settings, state_dir);
    problems.extend(config_problem);
    let mut scan = match scanner::ScanThread::start(engine, frozen) {
        Ok(s) => s,
        Err(e) => {
            log.line(true, &format!("cannot start the scan thread: {e}"));
            return NOT_PASSED_ON;
        }
    };
    let stdin = std::io::stdin();
    let pumped = forward::pump(stdin.as_fd(), opened.target, timeout, &mut scan);
    let scanned = scan.finish();
    if pumped.cut {
        problems.push(format!(
            "the core file was cut at {} bytes, the crashed process's RLIMIT_CORE (as the kernel cuts it)",
            pumped.forwarded
        ));
    }
    if let Some(p) = &pumped.problem {
        problems.push(p.clone());
        failed = true;
    }
    if let Some(mut c) = opened.child {
        // A handler given up on is not waited for; one that got everything gets the
        // same time limit to finish.
        let grace = if pumped.problem.is_some() {
            Duration::ZERO
        } else {
            timeout
        };
        problems.extend(wait_child(&mut c, grace));
    }
    let report = DumpReport {
        kind: "core".into(),
        how: "pipe".into(),
        pid: crash.pid,
        tid: crash.tid,
        ppid: crash.ppid,
        uid: crash.uid,
        comm: crash.values.comm.clone(),
        exe: crash.exe.clone(),
        cgroup: crash.cgroup.clone(),
        signal: crash.signal,
        path: opened.path,
        bytes: scanned.bytes,
        problems,
        hits: scanned.hits,
    };
    let delivered = deliver(&settings, &report);
    log.line(
        !report.hits.is_empty() || !report.problems.is_empty(),
        &summary(&report, pumped.forwarded, &delivered),
    );
    if failed {
        NOT_PASSED_ON
    } else {
        PASSED_ON
    }
}

/// With no settings file, cores go where the kernel's default pattern sends them.
fn fallback_settings() -> Settings {
    Settings {
        previous: "core".into(),
        socket: crate::config::Config::default().socket,
        config: None,
        alerts: None,
        forward_timeout: settings::FORWARD_TIMEOUT.into(),
    }
}

/// The daemon's rules (its config file) and frozen set (its state dir); the embedded
/// rules when the config cannot be read, said as a problem.
fn detection(s: &Settings, state_dir: &Path) -> (Engine, FrozenSet, Vec<String>) {
    let mut problems = Vec::new();
    let cfg = match &s.config {
        Some(p) => match crate::config::Config::load(p) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("{e:#}: scanned with the embedded rules"));
                None
            }
        },
        None => None,
    };
    let engine = cfg
        .as_ref()
        .and_then(|c| {
            c.rules()
                .and_then(|r| Engine::new(&r))
                .map_err(|e| problems.push(format!("{e:#}: scanned with the embedded rules")))
                .ok()
        })
        .unwrap_or_else(Engine::builtin);
    let frozen = match crate::scan::load_frozen(state_dir) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("{e:#}: frozen credentials were not looked for"));
            FrozenSet::default()
        }
    };
    (engine, frozen, problems)
}

/// Waits up to `grace` for the previous handler; a problem sentence when it failed or is
/// still running (it is left running: it is the operator's).
fn wait_child(c: &mut std::process::Child, grace: Duration) -> Option<String> {
    let until = std::time::Instant::now() + grace;
    loop {
        match c.try_wait() {
            Ok(Some(st)) if st.success() => return None,
            Ok(Some(st)) => return Some(format!("the previous handler exited with {st}")),
            Ok(None) if std::time::Instant::now() >= until => {
                return Some(format!(
                    "the previous handler (pid {}) was still running when leakwatch finished; left running",
                    c.id()
                ))
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Some(format!("cannot wait for the previous handler: {e}")),
        }
    }
}

/// How the report reached someone.
enum Delivered {
    Daemon,
    AlertFile(PathBuf),
    Nowhere(String),
}

/// Sends the report to the daemon; when it does not answer in time, appends `finding`
/// alerts to the alert file, if one is configured.
fn deliver(s: &Settings, r: &DumpReport) -> Delivered {
    let (tx, rx) = std::sync::mpsc::channel();
    let socket = s.socket.clone();
    let mut req = crate::control::Request::new("dump_report");
    req.dump = Some(r.clone());
    // A thread, so a daemon that accepts and never answers costs DAEMON_TIMEOUT at most.
    let _ = std::thread::Builder::new()
        .name("lw-core-report".into())
        .spawn(move || {
            let _ = tx.send(crate::control::call(&socket, &req).map(|_| ()));
        });
    let why = match rx.recv_timeout(DAEMON_TIMEOUT) {
        Ok(Ok(())) => return Delivered::Daemon,
        Ok(Err(e)) => format!("{e:#}"),
        Err(_) => format!(
            "the daemon on {} did not answer within {} s",
            s.socket.display(),
            DAEMON_TIMEOUT.as_secs()
        ),
    };
    let file = s.alerts.clone().or_else(|| {
        s.config
            .as_ref()
            .and_then(|p| crate::config::Config::load(p).ok())
            .and_then(|c| c.alerts)
    });
    match file {
        Some(f) if !r.hits.is_empty() => match alerts::append(&f, r) {
            Ok(()) => Delivered::AlertFile(f),
            Err(e) => Delivered::Nowhere(format!("{why}; and the alert file {}: {e}", f.display())),
        },
        Some(_) => Delivered::Nowhere(why),
        None => Delivered::Nowhere(format!("{why}; no alert file is configured")),
    }
}

/// The one line: who crashed, what was found, where the core went, who was told.
fn summary(r: &DumpReport, forwarded: u64, d: &Delivered) -> String {
    let mut rules: Vec<&str> = r.hits.iter().map(|h| h.rule.as_str()).collect();
    rules.sort();
    rules.dedup();
    let found = if r.hits.is_empty() {
        "no credential".to_string()
    } else {
        format!("{} credential(s) ({})", r.hits.len(), rules.join(", "))
    };
    let kept = match &r.path {
        Some(p) => format!("{forwarded} bytes passed on to {p}"),
        None => "not kept".into(),
    };
    let told = match d {
        Delivered::Daemon => "reported to the daemon".to_string(),
        Delivered::AlertFile(f) => {
            format!("daemon unreachable: alerts appended to {}", f.display())
        }
        Delivered::Nowhere(why) if r.hits.is_empty() => format!("not reported ({why})"),
        Delivered::Nowhere(why) => format!("NOT reported: {why}"),
    };
    let mut line = format!(
        "pid {} ({}) signal {}: {} bytes scanned, {found}; {kept}; {told}",
        r.pid, r.comm, r.signal, r.bytes
    );
    for p in &r.problems {
        line.push_str("; ");
        line.push_str(p);
    }
    line
}
