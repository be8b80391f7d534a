//! The operator commands never become a leak path themselves: a secret pasted where a
//! fingerprint goes is refused without being echoed or sent, the freeze client sends the
//! key only to a root-owned daemon, and a closed stdout ends a command without a panic.
use std::{
    fs,
    io::Write,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::*;

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut c = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(stdin).unwrap();
    c.wait_with_output().unwrap()
}

#[test]
fn a_secret_given_as_a_fingerprint_is_neither_echoed_nor_sent() {
    let (secret, _) = secret("anthropic-api-key");
    let dir = TempDir::new("cli-fp");
    // A listener that records anything it is sent: nothing must reach it.
    let sock = dir.join("control.sock");
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    l.set_nonblocking(true).unwrap();
    let s = sock.to_str().unwrap();
    for args in [
        vec!["freeze", "--fingerprint", secret.as_str(), "--socket", s],
        vec!["unfreeze", secret.as_str(), "--socket", s],
    ] {
        let out = run(&args, b"");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let text = [out.stdout, out.stderr].concat();
        assert!(
            !contains(&text, secret.as_bytes()),
            "{} echoed the secret",
            args[0]
        );
        assert!(
            String::from_utf8_lossy(&text).contains("not a fingerprint"),
            "{}",
            String::from_utf8_lossy(&text)
        );
        assert!(l.accept().is_err(), "{} connected to the socket", args[0]);
    }
}

#[test]
fn freeze_sends_nothing_to_a_socket_not_served_by_root() {
    let (secret, _) = secret("openai-project-key");
    let dir = TempDir::new("cli-peer");
    // World-writable, so the listener can run as nobody.
    Command::new("chmod")
        .arg("0777")
        .arg(&dir)
        .status()
        .unwrap();
    let sock = dir.join("control.sock");
    let got = dir.join("received");
    let script = format!(
        r#"
import os, socket
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
s.bind({sock:?}); s.listen(1)
open({ready:?}, "w").close()
c, _ = s.accept()
c.settimeout(3)
data = b""
try:
    while True:
        b = c.recv(65536)
        if not b: break
        data += b
except Exception:
    pass
open({got:?}, "wb").write(data)
"#,
        sock = sock.to_str().unwrap(),
        ready = dir.join("ready").to_str().unwrap(),
        got = got.to_str().unwrap(),
    );
    let mut listener = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dir.join("ready").exists() {
        assert!(
            Instant::now() < deadline,
            "the nobody listener did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run(
        &["freeze", "--socket", sock.to_str().unwrap()],
        secret.as_bytes(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not root") && err.contains("nothing was sent"),
        "{err}"
    );
    assert!(!contains(&out.stderr, secret.as_bytes()));
    assert!(listener.wait().unwrap().success());
    let data = fs::read(&got).unwrap();
    assert!(
        data.is_empty(),
        "the fake daemon received {} bytes",
        data.len()
    );
}

/// stdout closed before the command writes: it ends without a panic (exit 101) and, for
/// freeze, the freeze itself took effect.
#[test]
fn a_closed_stdout_is_no_panic() {
    let mut d = Daemon::start("cli-epipe");
    let (other, _) = secret("anthropic-api-key");
    let (secret, _) = secret("github-pat");
    let sock = d.socket();
    let s = sock.to_str().unwrap();
    // One frozen already, to be unfrozen; and a file with a key for scan to print.
    let other_fp = fingerprint(&other);
    assert!(freeze_with(&d, &other, &[]).status.success());
    let dir = d.scratch().join("epipe-scan");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("app.env"), format!("ANTHROPIC_API_KEY={other}\n")).unwrap();
    let dir_s = dir.to_str().unwrap().to_string();
    for (args, stdin) in [
        (vec!["rules"], Vec::new()),
        (vec!["status", "--socket", s], Vec::new()),
        (vec!["freeze", "--socket", s], secret.clone().into_bytes()),
        (
            vec!["unfreeze", other_fp.as_str(), "--socket", s],
            Vec::new(),
        ),
        (vec!["scan", dir_s.as_str()], Vec::new()),
    ] {
        let (r, w) = std::io::pipe().unwrap();
        drop(r);
        let mut c = Command::new(bin())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(w)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(&stdin).unwrap();
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let v = d.status();
    assert!(
        v["frozen"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["fingerprint"] != other_fp.as_str()),
        "the unfreeze whose output could not be printed did not take effect: {v}"
    );
    let fp = fingerprint(&secret);
    assert!(
        v["frozen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fingerprint"] == fp.as_str()),
        "the freeze whose report could not be printed did not take effect: {v}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret, &other]);
}

/// The control socket answers what it cannot parse (bytes that are not UTF-8) and closes a
/// connection that sends nothing, instead of holding it forever.
#[test]
fn control_socket_answers_garbage_and_drops_idle_clients() {
    use std::io::{BufRead, BufReader};
    let mut d = Daemon::start("cli-control");
    let mut c = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    c.write_all(b"\xff\xfe{\"op\":\n").unwrap();
    let mut line = String::new();
    BufReader::new(&c).read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["error"].as_str().unwrap().contains("malformed"), "{v}");
    let idle = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let t0 = Instant::now();
    let mut line = String::new();
    BufReader::new(&idle).read_line(&mut line).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    assert!(line.contains("no request within"), "{line}");
    d.stop();
    d.assert_no_plaintext(&[]);
}
