//! Harness for the integration tests: starts the real daemon binary (which loads the real
//! eBPF programs), waits for its alerts, and checks that nothing it wrote holds a plaintext
//! test secret. A daemon that cannot start fails the test with its stderr; nothing skips.
pub mod etcd;

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use sha2::{Digest, Sha256};

pub use leakwatch::detect::samples::{sample, Rng};

/// `sha256:` + hex, computed here independently of the daemon.
pub fn fingerprint(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The fingerprint of a PEM block (README: over its canonical form, so the same key in a
/// file, a YAML block scalar or an env var is one credential): the armour lines around the
/// body with its line breaks removed, each line ending in `\n`. Computed here from the
/// contract, independently of the daemon.
pub fn pem_fingerprint(pem: &str) -> String {
    let mut lines = pem.trim_end().lines();
    let begin = lines.next().expect("a BEGIN line");
    let rest: Vec<&str> = lines.collect();
    let (end, body) = rest.split_last().expect("an END line");
    fingerprint(&format!("{begin}\n{}\n{end}\n", body.concat()))
}

/// A fresh secret in `rule`'s format: (secret, text to embed).
pub fn secret(rule: &str) -> (String, String) {
    sample(rule, &mut Rng::from_time()).unwrap_or_else(|| panic!("no sample generator for {rule}"))
}

pub fn bin() -> PathBuf {
    let p = std::env::var_os("LEAKWATCH_BIN")
        .map(PathBuf::from)
        .expect("LEAKWATCH_BIN is not set: run the integration tests with `cargo xtask test`");
    assert!(
        p.exists(),
        "LEAKWATCH_BIN {} does not exist; run `cargo xtask build`",
        p.display()
    );
    p
}

pub struct Daemon {
    pub dir: PathBuf,
    pub child: Option<Child>,
    pub metrics: String,
    args: Vec<String>,
    /// stderr of the running daemon (its log).
    stderr: PathBuf,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts `leakwatch daemon` with everything it writes under a fresh directory.
    pub fn start(name: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("leakwatch-it-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Daemon::start_in(dir, &[])
    }

    pub fn start_in(dir: PathBuf, extra: &[&str]) -> Daemon {
        Daemon::spawned(dir, extra, &[])
    }

    fn spawned(dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut d = Daemon {
            dir,
            child: None,
            metrics: String::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            stderr: PathBuf::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    /// Starts the daemon with extra environment variables.
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawned(fresh_dir(name), &[], env)
    }

    /// The running daemon's stderr (its log).
    pub fn stderr_path(&self) -> PathBuf {
        self.stderr.clone()
    }

    /// The alert file the daemon was given.
    pub fn alerts_path(&self) -> PathBuf {
        self.dir.join("alerts.jsonl")
    }

    /// A directory for the test's own files (fixtures, key files), outside what the
    /// plaintext check scans: only what leakwatch writes lives in `dir`.
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.with_extension("scratch");
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn spawn(&mut self) {
        let run = self.dir.join(format!(
            "run-{}",
            Instant::now().elapsed().as_nanos() ^ rand::random::<u64>() as u128
        ));
        let out = fs::File::create(run.with_extension("stdout")).unwrap();
        let err_path = run.with_extension("stderr");
        self.stderr = err_path.clone();
        let err = fs::File::create(&err_path).unwrap();
        // LEAKWATCH_DAEMON_WRAP: a command to run the daemon under (xtask: setpriv with the
        // unit's capability bounding set and no_new_privs).
        let wrap = std::env::var("LEAKWATCH_DAEMON_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(w) => {
                let mut c = Command::new(w);
                c.args(wrap).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("daemon")
            .arg("--alerts")
            .arg(self.dir.join("alerts.jsonl"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning leakwatch daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&err_path).unwrap_or_default();
            // Only a whole line: the file may end in the middle of the one being written.
            let whole = text.rfind('\n').map_or("", |i| &text[..i]);
            if let Some(line) = whole.lines().find(|l| l.contains("ready:")) {
                self.metrics = line
                    .split("metrics http://")
                    .nth(1)
                    .and_then(|m| m.split('/').next())
                    .unwrap_or_else(|| panic!("no metrics address in the ready line: {line}"))
                    .to_string();
                if std::env::var_os("LEAKWATCH_DAEMON_WRAP").is_some() {
                    self.assert_confined();
                }
                return;
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("leakwatch daemon exited ({st}) before it was ready; it could not load its eBPF programs:\n{text}");
            }
            if Instant::now() > deadline {
                panic!("leakwatch daemon not ready after 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Under LEAKWATCH_DAEMON_WRAP the daemon must really run confined: no_new_privs set and
    /// a bounding set short of every capability.
    fn assert_confined(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            st.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            field("NoNewPrivs:"),
            "1",
            "daemon not under no_new_privs:\n{st}"
        );
        let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
        let own = fs::read_to_string("/proc/self/status").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        assert!(
            bnd != 0 && bnd & !own == 0 && bnd != own,
            "daemon bounding set {bnd:#x} is not narrower than the test's {own:#x}"
        );
        // The effective set is what the daemon actually has.
        let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
        assert_eq!(
            eff & !bnd,
            0,
            "effective capabilities beyond the bounding set"
        );
    }

    /// Stops with SIGTERM and asserts a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(st) = c.try_wait().unwrap() {
                    assert!(st.success(), "daemon exited with {st} on SIGTERM");
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("daemon did not stop within 10 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn alerts(&self) -> Vec<Value> {
        fs::read_to_string(self.dir.join("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"))
            })
            .collect()
    }

    /// Waits up to 15 s for an alert matching `pred`.
    pub fn wait_alert(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(a) = self.alerts().into_iter().find(|a| pred(a)) {
                return a;
            }
            if Instant::now() > deadline {
                panic!(
                    "no alert for {what} within 15 s; alerts were:\n{:#?}",
                    self.alerts()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `leakwatch status --json` against this daemon.
    pub fn status(&self) -> Value {
        let out = Command::new(bin())
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .expect("running leakwatch status");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The metrics page (Prometheus text). A failed scrape panics with how it failed, whether the daemon is
    /// still running (and if not, how it ended), where each of its threads waits, and the
    /// end of its log: an intermittent failure names its cause the first time it happens.
    pub fn scrape(&self) -> String {
        match http_fetch(&self.metrics, "/metrics") {
            Ok(body) => body,
            Err(e) => panic!(
                "metrics endpoint {}: {e}\n{}",
                self.metrics,
                self.post_mortem()
            ),
        }
    }

    /// What a failing test needs to know about the daemon: alive or how it ended (without
    /// reaping it), its threads' kernel wait channels if alive, and its last log lines.
    pub fn post_mortem(&self) -> String {
        let Some(c) = self.child.as_ref() else {
            return "the daemon is not running (stopped by the test)".into();
        };
        let pid = c.id();
        // SAFETY: waitid on our own child with WNOWAIT leaves it reapable by Child::wait.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid/si_status are valid for a CLD_* siginfo filled by waitid.
        let (spid, status) = unsafe { (info.si_pid(), info.si_status()) };
        let mut out = match (r, spid) {
            (0, 0) => format!("daemon {pid} is still running; its threads wait in:\n"),
            (0, _) if info.si_code == libc::CLD_EXITED => {
                format!("daemon {pid} exited with status {status}\n")
            }
            (0, _) => format!(
                "daemon {pid} was killed by signal {status} (si_code {})\n",
                info.si_code
            ),
            _ => format!(
                "waitid on daemon {pid} failed: {}\n",
                std::io::Error::last_os_error()
            ),
        };
        if r == 0 && spid == 0 {
            if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) {
                for t in rd.flatten() {
                    let p = t.path();
                    let read = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
                    let state = read("stat")
                        .rsplit_once(") ")
                        .map(|(_, r)| r.chars().next().unwrap_or('?'))
                        .unwrap_or('?');
                    out.push_str(&format!(
                        "  {} {:<16} {state} wchan={}\n",
                        t.file_name().to_string_lossy(),
                        read("comm").trim(),
                        read("wchan")
                    ));
                }
            }
        }
        let log = fs::read_to_string(&self.stderr).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        out.push_str("last log lines:\n");
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// Fails if any file the daemon wrote (stdout, stderr, alerts, state) contains any of
    /// the plaintext secrets.
    pub fn assert_no_plaintext(&self, secrets: &[&str]) {
        let mut files = Vec::new();
        walk(&self.dir, &mut files);
        assert!(
            files.iter().any(|f| f.ends_with("alerts.jsonl")),
            "no alert file was written"
        );
        for f in files {
            let mut bytes = Vec::new();
            if fs::File::open(&f)
                .and_then(|mut h| h.read_to_end(&mut bytes))
                .is_err()
            {
                continue; // sockets
            }
            for s in secrets {
                assert!(
                    !contains(&bytes, s.as_bytes()),
                    "plaintext test secret found in {} (leakwatch must never write one)",
                    f.display()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A daemon stopped with something frozen leaves its exec kill pinned (as it should
        // on a host); a test's must not outlive the test, passed or failed.
        leakwatch::probes::pins::remove(&leakwatch::probes::pins::dir_for(&self.state_dir()));
        remove_if_passed(&self.dir);
        remove_if_passed(&self.dir.with_extension("scratch"));
    }
}

/// Removes the exec-kill links a daemon on `state_dir` left pinned (see
/// `leakwatch::probes::pins`), as a reboot would, and returns once the kernel has detached
/// them: a test that then starts a holder must not have it killed at exec.
pub fn remove_pins(state_dir: &Path) {
    let dir = leakwatch::probes::pins::dir_for(state_dir);
    assert!(
        leakwatch::probes::pins::remove(&dir),
        "the exec kill pinned in {} was still loaded 3 s after its pins were removed",
        dir.display()
    );
}

/// A passed test's files go (every CI run used to leave ~360 directories in /tmp); a failed
/// one's stay for the post-mortem.
fn remove_if_passed(dir: &Path) {
    if !std::thread::panicking() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&p, out),
                Ok(t) if t.is_file() => out.push(p),
                _ => {}
            }
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// Field accessors for alert JSON.
pub fn s<'a>(a: &'a Value, k: &str) -> &'a str {
    a.get(k).and_then(Value::as_str).unwrap_or("")
}

pub fn n(a: &Value, k: &str) -> u64 {
    a.get(k).and_then(Value::as_u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Helpers for the write/connect path tests (tests/write.rs).

/// The daemon directory `Daemon::start(name)` would use, created empty.
/// GET `path` from `addr` (HTTP/1.0: the server closes); the body, if the server answered.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    http_fetch(addr, path).ok()
}

/// `GET path` over HTTP/1.0; the body, or which step failed and how.
pub fn http_fetch(addr: &str, path: &str) -> Result<String, String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("set_read_timeout: {e}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .map_err(|e| format!("read after {} bytes: {e}", out.len()))?;
    let out = String::from_utf8(out).map_err(|e| format!("response is not UTF-8: {e}"))?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
        _ => Err(format!(
            "not an HTTP response ({} bytes): {:?}",
            out.len(),
            &out[..out.len().min(200)]
        )),
    }
}

/// A loopback TCP port nothing listens on right now (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Puts an executable at `dst` by way of `install(1)`. Writing it from this process would
/// leave a window where a sibling test's fork holds the write fd, and exec fails with
/// ETXTBSY ("Text file busy"); `install` is the only process that ever opens it for writing.
pub fn install_exe(dst: &Path, contents: &[u8]) {
    let staged = dst.with_extension("staged");
    fs::write(&staged, contents).unwrap();
    let st = Command::new("install")
        .args(["-m", "0755"])
        .arg(&staged)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "install {} failed", dst.display());
    let _ = fs::remove_file(staged);
}

/// A directory of a test's own, and its `.scratch` sibling if the test makes one, removed
/// when the test passes (kept when it fails, for the post-mortem).
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/leakwatch-it-NAME-PID`, empty (`fresh_dir`).
    pub fn new(name: &str) -> TempDir {
        TempDir(fresh_dir(name))
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        remove_if_passed(&self.0);
        remove_if_passed(&self.0.with_extension("scratch"));
    }
}

pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("leakwatch-it-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_dir_all(dir.with_extension("scratch"));
    fs::create_dir_all(&dir).unwrap();
    dir
}

impl Daemon {
    /// Starts the daemon with `--config` pointing at a file holding `toml` (kept in the
    /// scratch directory: it is the test's input, not something leakwatch wrote).
    pub fn start_with_config(name: &str, toml: &str) -> Daemon {
        let dir = fresh_dir(name);
        let scratch = dir.with_extension("scratch");
        fs::create_dir_all(&scratch).unwrap();
        let cfg = scratch.join("leakwatch.toml");
        fs::write(&cfg, toml).unwrap();
        Daemon::start_in(dir, &["--config", cfg.to_str().unwrap()])
    }

    /// Every `finding` alert for this fingerprint so far.
    pub fn findings(&self, fp: &str) -> Vec<Value> {
        self.alerts()
            .into_iter()
            .filter(|a| s(a, "kind") == "finding" && s(a, "fingerprint") == fp)
            .collect()
    }

    /// `metric(self.scrape(), …)`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.scrape(), name, labels)
    }

    /// Polls the metrics endpoint up to 15 s until `pred(value)` holds; returns the value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        what: &str,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let v = self.metric(name, labels);
            if pred(v) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.scrape();
                let related: Vec<&str> = text.lines().filter(|l| l.contains(name)).collect();
                panic!("{what}: {name}{labels:?} is {v} after 15 s; its series:\n{related:#?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Sum of the samples of `name` whose labels include every `labels` pair, in Prometheus
/// text (the HTTP headers of a scrape are skipped). 0.0 when there is none: counters with
/// labels only appear once something counted.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) => match line.rfind('}') {
                Some(j) if j > i => ((&line[..i], &line[i + 1..j]), &line[j + 1..]),
                _ => continue,
            },
            None => match line.split_once(' ') {
                Some((n, r)) => ((n, ""), r),
                None => continue,
            },
        };
        if series.0 != name {
            continue;
        }
        let have = parse_labels(series.1);
        if !labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
        }
    }
    sum
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        val.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &body[end..];
    }
    out
}

/// Polls `f` every 20 ms for up to `secs` seconds.
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `secs` for a child to exit (kills it and fails if it does not).
pub fn wait_exit(c: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            panic!("{what} (pid {}) still running after {secs} s", c.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The system Python (`/usr/bin/python3`, comm `python3`) when present: no pyenv shim
/// scripts in front of it, so the spawned pid is python's from its first exec.
pub fn python() -> Command {
    if Path::new("/usr/bin/python3").exists() {
        Command::new("/usr/bin/python3")
    } else {
        Command::new("python3")
    }
}

/// A local HTTP/1.1 server on 127.0.0.1 (port chosen by the kernel) that reads each
/// request (Content-Length or chunked body), keeps its raw bytes, and answers `200 ok`.
pub struct HttpSink {
    pub ip: String,
    pub port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl HttpSink {
    pub fn start() -> HttpSink {
        HttpSink::start_on("127.0.0.1")
    }

    /// A sink on another loopback address (`127.0.0.2`…): a peer no name but its own
    /// resolves to.
    pub fn start_on(ip: &str) -> HttpSink {
        let l = std::net::TcpListener::bind((ip, 0)).expect("binding the HTTP sink");
        let ip = ip.to_string();
        let port = l.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = requests.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let r = r.clone();
                std::thread::spawn(move || serve_http(c, &r));
            }
        });
        HttpSink { ip, port, requests }
    }

    /// `IP:PORT`, as the daemon reports a socket's `remote`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr())
    }

    /// Waits up to 15 s for a request whose raw bytes satisfy `pred`.
    pub fn wait_request(&self, what: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        wait_until(15, what, || {
            self.requests
                .lock()
                .unwrap()
                .iter()
                .find(|r| pred(r))
                .cloned()
        })
    }
}

fn serve_http(mut c: std::net::TcpStream, out: &std::sync::Mutex<Vec<Vec<u8>>>) {
    use std::io::Write;
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let body = &buf[h + 4..];
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match len {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => true,
            };
            if done {
                break;
            }
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    out.lock().unwrap().push(buf);
    let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
}

/// How the far end of a TCP connection ended, as the server side saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEnd {
    /// `recv` failed with ECONNRESET: the peer (or leakwatch on its behalf) sent a RST.
    Reset,
    /// `recv` returned 0: an orderly FIN.
    Eof,
    /// Nothing happened within the read timeout.
    Timeout,
    Other(String),
}

/// A plain TCP server on 127.0.0.1 that reads each connection to its end and reports
/// what it received and how it ended.
pub struct TcpPeer {
    pub port: u16,
    ended: std::sync::mpsc::Receiver<(Vec<u8>, PeerEnd)>,
}

impl TcpPeer {
    pub fn start() -> TcpPeer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the TCP peer");
        let port = l.local_addr().unwrap().port();
        let (tx, ended) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut data = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let end = loop {
                        match c.read(&mut chunk) {
                            Ok(0) => break PeerEnd::Eof,
                            Ok(k) => data.extend_from_slice(&chunk[..k]),
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                                break PeerEnd::Reset
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) =>
                            {
                                break PeerEnd::Timeout
                            }
                            Err(e) => break PeerEnd::Other(e.to_string()),
                        }
                    };
                    let _ = tx.send((data, end));
                });
            }
        });
        TcpPeer { port, ended }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The next connection to end (waits up to `secs`): what it sent, how it ended.
    pub fn next_end(&self, secs: u64) -> (Vec<u8>, PeerEnd) {
        self.ended
            .recv_timeout(Duration::from_secs(secs))
            .unwrap_or_else(|_| panic!("no connection to the TCP peer ended within {secs} s"))
    }
}

/// `leakwatch freeze --json` against `d` with `secret` on stdin (and `extra` flags).
pub fn freeze_with(d: &Daemon, secret: &str, extra: &[&str]) -> std::process::Output {
    use std::io::Write;
    let mut c = Command::new(bin())
        .args(["freeze", "--json", "--socket"])
        .arg(d.socket())
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    c.wait_with_output().unwrap()
}

/// A child killed and reaped when dropped, so a test that fails leaves no load running.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/proc/sys/kernel/core_pattern` set for one test: the pattern is host-wide, so tests
/// that set it take a lock first (other test binaries run at the same time), and the
/// pattern it had is put back when the guard drops, even when the test fails.
pub struct CorePattern {
    old: String,
    _lock: std::fs::File,
}

impl CorePattern {
    pub const PATH: &'static str = "/proc/sys/kernel/core_pattern";

    pub fn set(pattern: &str) -> CorePattern {
        use std::os::fd::AsRawFd;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/leakwatch-tests-core_pattern.lock")
            .expect("opening the core_pattern lock");
        // SAFETY: flock on an fd we own; blocks until the other test is done.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let old = std::fs::read_to_string(Self::PATH).expect("reading core_pattern");
        let old = old.trim_end_matches('\n').to_string();
        std::fs::write(Self::PATH, pattern).expect("writing core_pattern");
        let now = std::fs::read_to_string(Self::PATH).unwrap_or_default();
        assert_eq!(
            now.trim_end_matches('\n'),
            pattern,
            "core_pattern did not take"
        );
        CorePattern { old, _lock: lock }
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(Self::PATH, &self.old) {
            eprintln!("could not restore core_pattern {:?}: {e}", self.old);
        }
    }
}

/// A throwaway self-signed certificate and key for a local TLS server, made in `dir` at
/// test time: (cert.pem, key.pem).
pub fn test_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("running openssl");
    assert!(st.success(), "openssl could not make a test certificate");
    (cert, key)
}

/// `leakwatch actions --json` over the daemon's state dir with `args`.
pub fn actions(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let out = std::process::Command::new(bin())
        .arg("actions")
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "leakwatch actions {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `name` found on `PATH`, as a shell would.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `n` random ASCII letters and digits (test tokens, rule keywords).
pub fn random_alnum(n: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A `[[rule]]` for tokens `<prefix>` + 32 letters and digits.
pub fn token_rule(id: &str, prefix: &str) -> String {
    format!(
        "[[rule]]\nid = \"{id}\"\ndescription = \"test token\"\nkeywords = [\"{prefix}\"]\nregex = '''(?P<secret>{prefix}[A-Za-z0-9]{{32}})'''\nentropy = 3.0\n"
    )
}
