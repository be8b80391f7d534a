//! The frozen set across restarts names the right credential: with two keys frozen, the
//! startup sweep's kill of a process holding the second carries the second's fingerprint,
//! and only the second entry counts the kill.
use std::{
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::*;

fn freeze(d: &Daemon, secret: &str) {
    let mut c = Command::new(bin())
        .args(["freeze", "--json", "--socket"])
        .arg(d.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "freeze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kills(d: &Daemon, fp: &str) -> u64 {
    let out = Command::new(bin())
        .args(["status", "--json", "--socket"])
        .arg(d.socket())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fingerprint"] == fp)
        .unwrap_or_else(|| panic!("{fp} is not frozen: {v}"))["kills"]
        .as_u64()
        .unwrap()
}

#[test]
fn startup_sweep_kill_names_the_credential_that_matched() {
    let mut d = Daemon::start("state-blame");
    let (a, _) = secret("anthropic-api-key");
    let (b, _) = secret("stripe-secret-key");
    let (fa, fb) = (fingerprint(&a), fingerprint(&b));
    freeze(&d, &a);
    freeze(&d, &b);
    d.stop();
    // Started while no daemon runs: nothing kills it at exec.
    let mut holder = Command::new("sleep")
        .arg("300")
        .env("PAYMENTS_KEY", &b)
        .spawn()
        .unwrap();
    let pid = holder.id() as u64;
    d.restart();
    let k = d.wait_alert("the startup sweep's kill", |x| {
        s(x, "kind") == "kill" && n(x, "pid") == pid
    });
    assert_eq!(s(&k, "fingerprint"), fb, "{k:#}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while holder.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the holder survived the sweep");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(kills(&d, &fb), 1);
    assert_eq!(kills(&d, &fa), 0);
    d.stop();
    d.assert_no_plaintext(&[&a, &b]);
}
