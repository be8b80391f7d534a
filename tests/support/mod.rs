//! Harness for the integration tests: starts the real daemon binary (which loads the real
//! eBPF programs), waits for its alerts, and checks that nothing it wrote holds a plaintext
//! test secret. A daemon that cannot start fails the test with its stderr; nothing skips.
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
        let mut d = Daemon {
            dir,
            child: None,
            metrics: String::new(),
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
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
        let err = fs::File::create(&err_path).unwrap();
        let child = Command::new(bin())
            .arg("daemon")
            .arg("--alerts")
            .arg(self.dir.join("alerts.jsonl"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--socket")
            .arg(self.socket())
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(&self.args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawning leakwatch daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(&err_path).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("ready:")) {
                if let Some(m) = line.split("metrics http://").nth(1) {
                    self.metrics = m.split('/').next().unwrap_or("").to_string();
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

    /// Prometheus text from the daemon's endpoint.
    pub fn scrape(&self) -> String {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
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
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Field accessors for alert JSON.
pub fn s<'a>(a: &'a Value, k: &str) -> &'a str {
    a.get(k).and_then(Value::as_str).unwrap_or("")
}

pub fn n(a: &Value, k: &str) -> u64 {
    a.get(k).and_then(Value::as_u64).unwrap_or(0)
}
