//! A real etcd on loopback for the fleet tests and bench: Debian's etcd-server binary
//! (unpacked by `cargo xtask`, path in LEAKWATCH_ETCD), its own data dir and free ports.
use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Etcd {
    pub dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    pub fn start(name: &str) -> Etcd {
        let dir =
            std::env::temp_dir().join(format!("leakwatch-etcd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut e = Etcd {
            dir,
            client_port: crate::free_port(),
            peer_port: crate::free_port(),
            child: None,
        };
        e.resume();
        e
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (again) on the same data dir and ports; returns once it answers.
    pub fn resume(&mut self) {
        let bin = std::env::var("LEAKWATCH_ETCD").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/tools/etcd").to_string()
        });
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).unwrap();
        let child = Command::new(&bin)
            .arg("--name")
            .arg("lw")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(self.url())
            .arg("--advertise-client-urls")
            .arg(self.url())
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("lw={peer}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start etcd ({bin}): {e}; run the tests through `cargo xtask test`, which unpacks it"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = Command::new("curl")
                .args(["-sf", "--max-time", "1"])
                .arg(format!("{}/health", self.url()))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("true"))
                .unwrap_or(false);
            if health {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 20 s (log: {})",
                self.dir.join("etcd.log").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops it (the data stays); returns once the port refuses connections.
    pub fn pause(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "etcd still answers after it was killed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Puts raw bytes under `key` through etcd's JSON gateway (what a hostile or broken
    /// writer could put there).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD;
        let body = serde_json::json!({"key": b.encode(key), "value": b.encode(value)});
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5", "-X", "POST", "-d"])
            .arg(body.to_string())
            .arg(format!("{}/v3/kv/put", self.url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "etcd put of {key} failed");
    }

    /// Every file of etcd's data dir contains none of `secrets` (the WAL and the bolt db
    /// hold every value ever put).
    pub fn assert_no_plaintext(&self, secrets: &[&str]) {
        for f in walkdir::WalkDir::new(self.dir.join("data"))
            .into_iter()
            .flatten()
        {
            if !f.file_type().is_file() {
                continue;
            }
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            for s in secrets {
                assert!(
                    !crate::contains(&bytes, s.as_bytes()),
                    "plaintext test secret found in etcd's {}",
                    f.path().display()
                );
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
