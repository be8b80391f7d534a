//! SIGHUP and SIGTERM, end to end: `kill -HUP` (what `systemctl reload` sends) re-reads the
//! config and applies a new `[[rule]]` to the running daemon; a bad config is refused with
//! one error, counted, and the daemon goes on with the old one; the alert file is reopened
//! (logrotate); a config error names its line and column. A stop reports everything written
//! until its probes are gone. Each test has its own rule keyword, so no other test's process
//! can match.
use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use leakwatch_tests::*;
use serde_json::Value;

fn hup(d: &Daemon) {
    let pid = d.child.as_ref().expect("daemon running").id();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
}

/// A python process writes `line` to `out`; returns its pid.
fn write_line(out: &Path, line: &str) -> u32 {
    let mut c = python()
        .args([
            "-c",
            "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')",
        ])
        .arg(out)
        // In argv the exec path sees it too; this test looks at the file finding only.
        .arg(line)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python writer").success());
    pid
}

fn wait_file_finding(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    wait_until(15, what, || {
        d.findings(fp)
            .into_iter()
            .find(|a| s(a, "source") == "file" && n(a, "pid") == pid as u64)
    })
}

fn config_path(d: &Daemon) -> std::path::PathBuf {
    d.scratch().join("leakwatch.toml")
}

#[test]
fn reload_sighup_applies_a_new_rule_and_survives_a_bad_config() {
    let prefix = format!("lwt{}_", random_alnum(6).to_lowercase());
    let id = "reload-test-token";
    let mut d = Daemon::start_with_config("r-rule", "dedupe_seconds = 0\n");
    let cfg = config_path(&d);
    fs::write(
        &cfg,
        format!("dedupe_seconds = 0\n{}", token_rule(id, &prefix)),
    )
    .unwrap();
    hup(&d);
    wait_until(15, "the reload to be applied", || {
        (d.metric("leakwatch_config_reloads_total", &[]) >= 1.0).then_some(())
    });
    let tok = format!("{prefix}{}", random_alnum(32));
    let out = d.scratch().join("out.txt");
    let pid = write_line(&out, &tok);
    let a = wait_file_finding(&d, &fingerprint(&tok), pid, "the new rule's finding");
    assert_eq!(s(&a, "rule"), id, "{a:#}");

    // A config that does not parse: refused, counted, and the daemon keeps the old one.
    fs::write(
        &cfg,
        "dedupe_seconds = 0\n[[rule]]\nid = \"broken\nregex = 1\n",
    )
    .unwrap();
    hup(&d);
    wait_until(15, "the bad reload to be counted", || {
        (d.metric("leakwatch_config_reload_failures_total", &[]) >= 1.0).then_some(())
    });
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the daemon died on a bad config"
    );
    assert_eq!(d.status()["frozen"], Value::Array(vec![]), "status answers");
    let tok2 = format!("{prefix}{}", random_alnum(32));
    let pid2 = write_line(&out, &tok2);
    let a = wait_file_finding(&d, &fingerprint(&tok2), pid2, "the old rule still in force");
    assert_eq!(s(&a, "rule"), id, "{a:#}");
    let err = fs::read_to_string(d.stderr_path()).unwrap_or_default();
    assert!(
        err.contains("SIGHUP") && err.contains("line 3"),
        "one clear error naming the line: {err}"
    );
    d.stop();
    d.assert_no_plaintext(&[&tok, &tok2]);
}

#[test]
fn reload_sighup_reopens_the_alert_file() {
    let prefix = format!("lwt{}_", random_alnum(6).to_lowercase());
    let mut d = Daemon::start_with_config("r-rotate", &token_rule("rotate-test-token", &prefix));
    let alerts = d.alerts_path();
    // Something in the file first, so the rename moves a real file.
    let first = format!("{prefix}{}", random_alnum(32));
    let out = d.scratch().join("out.txt");
    let pid = write_line(&out, &first);
    wait_file_finding(&d, &fingerprint(&first), pid, "the first finding");
    let rotated = alerts.with_extension("jsonl.1");
    fs::rename(&alerts, &rotated).unwrap();
    hup(&d);
    wait_until(15, "the reload", || {
        (d.metric("leakwatch_config_reloads_total", &[]) >= 1.0).then_some(())
    });
    let second = format!("{prefix}{}", random_alnum(32));
    let pid = write_line(&out, &second);
    // `findings` reads the path the daemon was given: the reopened file.
    let a = wait_file_finding(&d, &fingerprint(&second), pid, "a finding in the new file");
    assert_eq!(s(&a, "rule"), "rotate-test-token");
    let old = fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.contains(&fingerprint(&second)),
        "written to the old file after the reopen"
    );
    d.stop();
    d.assert_no_plaintext(&[&first, &second]);
}

#[test]
fn reload_config_error_at_start_names_file_line_and_column() {
    let dir = TempDir::new("r-bad");
    fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.toml");
    fs::write(&cfg, "dedupe_seconds = 5\nmetrics_addr = 9477\n").unwrap();
    let t0 = Instant::now();
    let out = Command::new(bin())
        .args(["daemon", "--config"])
        .arg(&cfg)
        .args(["--state-dir"])
        .arg(dir.join("state"))
        .args(["--socket"])
        .arg(dir.join("sock"))
        .output()
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(cfg.to_str().unwrap()) && err.contains("line 2, column 16"),
        "names the file, line and column: {err}"
    );
    assert!(err.contains("string"), "says what was expected: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

#[test]
fn reload_notifies_systemd_ready_reloading_and_stopping() {
    // What systemd's Type=notify expects on $NOTIFY_SOCKET, received by the test itself.
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("r-notify-sock");
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut d = Daemon::start_with_env("r-notify", &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notify datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    let pid = d.child.as_ref().unwrap().id();
    assert!(
        ready.lines().any(|l| l == format!("MAINPID={pid}")),
        "{ready}"
    );
    hup(&d);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1");
    d.stop();
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn reload_alert_file_rotates_by_size_keeping_the_newest() {
    let prefix = format!("lwt{}_", random_alnum(6).to_lowercase());
    let toml = format!(
        "dedupe_seconds = 0\nalerts_max_mb = 0.002\nalerts_keep = 2\n{}",
        token_rule("rotate-size-token", &prefix)
    );
    let mut d = Daemon::start_with_config("r-size", &toml);
    let toks: Vec<String> = (0..12)
        .map(|_| format!("{prefix}{}", random_alnum(32)))
        .collect();
    let keys = d.scratch().join("keys");
    fs::write(&keys, toks.join("\n")).unwrap();
    let out = d.scratch().join("out.txt");
    // One line per write, a pause between them so each alert is its own batch.
    let mut c = python()
        .args([
            "-c",
            "import sys, time\nf = open(sys.argv[2], 'a', buffering=1)\nfor k in open(sys.argv[1]).read().split():\n    f.write(k + '\\n'); time.sleep(0.05)",
        ])
        .arg(&keys)
        .arg(&out)
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut c, 30, "python writer").success());
    let alerts = d.alerts_path();
    let name = |i: u32| {
        let mut s = alerts.clone().into_os_string();
        s.push(format!(".{i}"));
        std::path::PathBuf::from(s)
    };
    // The last key's finding lands in the newest file, or the one just rotated.
    let last = fingerprint(toks.last().unwrap());
    wait_until(15, "the last finding written", || {
        [alerts.clone(), name(1)]
            .iter()
            .any(|p| fs::read_to_string(p).unwrap_or_default().contains(&last))
            .then_some(())
    });
    assert!(
        name(1).exists() && name(2).exists(),
        "two rotated files kept"
    );
    assert!(!name(3).exists(), "no third one (alerts_keep = 2)");
    for p in [alerts.clone(), name(1), name(2)] {
        let len = fs::metadata(&p).map_or(0, |m| m.len());
        assert!(
            len < 4_000,
            "{} is {len} bytes: not rotated at 2 KB",
            p.display()
        );
    }
    d.stop();
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    d.assert_no_plaintext(&refs);
}

/// Writes all but the last 40 tokens of `keys` one after another to three files (by
/// `write`, `pwrite64` and `writev` in turn), each followed by a newline but the last of
/// each file, then the last 40 to a fourth file by `write` alone; prints `written` and
/// waits to be killed, its files open. The last token of each of the three ends its write,
/// so a scanner holds it back until the next bytes or a pause; the fourth file's writes
/// are one run the kernel keeps pending until the thread writes elsewhere or exits.
const TOKEN_WRITER: &str = r#"
import os, sys, time
keys = open(sys.argv[1]).read().split()
fds = [os.open(os.path.join(sys.argv[2], n), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600) for n in ('w', 'pw', 'v', 'log')]
pos, spread = 0, keys[:-40]
for i, k in enumerate(spread):
    line = (k if i >= len(spread) - 3 else k + '\n').encode()
    if i % 3 == 0:
        os.write(fds[0], line)
    elif i % 3 == 1:
        os.pwrite(fds[1], line, pos); pos += len(line)
    else:
        os.writev(fds[2], [line])
for i in range(20):
    os.write(fds[3], b'warming up\n')
time.sleep(0.5)
for k in keys[-40:]:
    os.write(fds[3], (k + '\n').encode())
print('written', flush=True)
time.sleep(60)
"#;

#[test]
fn stop_reports_what_was_written_before_it() {
    let prefix = format!("lwt{}_", random_alnum(6).to_lowercase());
    let toml = format!(
        "dedupe_seconds = 0\n{}",
        token_rule("stop-drain-token", &prefix)
    );
    // The key file is written before the daemon starts, so only the writer's calls carry
    // the tokens.
    let dir = TempDir::new("r-stop-files");
    let toks: Vec<String> = (0..600)
        .map(|_| format!("{prefix}{}", random_alnum(32)))
        .collect();
    fs::write(dir.join("keys"), toks.join("\n")).unwrap();
    let mut d = Daemon::start_with_config("r-stop", &toml);
    let mut writer = python()
        .args(["-c", TOKEN_WRITER])
        .arg(dir.join("keys"))
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "written");
    // At once: records still in the ring or the queue, and findings held back for more
    // bytes, must be reported by the stop, not dropped with the daemon.
    d.stop();
    let _ = writer.kill();
    let _ = writer.wait();
    let found: std::collections::HashSet<String> = d
        .alerts()
        .iter()
        .filter(|a| s(a, "kind") == "finding" && s(a, "source") == "file")
        .map(|a| s(a, "fingerprint").to_string())
        .collect();
    let missed: Vec<usize> = (0..toks.len())
        .filter(|&i| !found.contains(&fingerprint(&toks[i])))
        .collect();
    assert!(
        missed.is_empty(),
        "{} of the {} tokens written before SIGTERM were not reported: #{missed:?}",
        missed.len(),
        toks.len(),
    );
    let refs: Vec<&str> = toks.iter().map(String::as_str).collect();
    d.assert_no_plaintext(&refs);
}
