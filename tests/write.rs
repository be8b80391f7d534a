//! Write/connect path, end to end: the real daemon with the real eBPF write-family probes
//! sees credentials that real programs write to files, pipes and sockets, and reports each
//! with rule, source, path or remote, fingerprint, pid and comm; scope and capture limits
//! are honoured and counted; a process sending a frozen credential is killed.
//!
//! Every daemon sees the whole host, so alerts are matched only on this test's own
//! fingerprints. Keys reach the programs through files in the scratch directory, never
//! argv or the environment (the exec path would report those), except where a test says so.
//! Every test ends by checking that nothing leakwatch wrote holds the plaintext.
use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::*;
use serde_json::Value;

/// Writes `text` to `dir/name` (before any program that reads it starts).
fn keyfile(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    p
}

/// Absolute, symlink-free form of a path the test created (what the kernel's dentry walk
/// yields).
fn real(p: &Path) -> String {
    fs::canonicalize(p).unwrap().to_str().unwrap().to_string()
}

/// The binary behind a command name, as `/proc/PID/exe` shows it.
fn exe_of(prog: &str) -> String {
    let p = if prog.starts_with('/') {
        PathBuf::from(prog)
    } else {
        std::env::var_os("PATH")
            .and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join(prog))
                    .find(|p| p.exists())
            })
            .unwrap_or_else(|| panic!("{prog} not on PATH"))
    };
    real(&p)
}

fn python_exe() -> String {
    let probe = python()
        .args(["-c", "import sys; print(sys.executable)"])
        .output();
    real(Path::new(
        String::from_utf8(probe.unwrap().stdout).unwrap().trim(),
    ))
}

fn uid() -> u64 {
    // SAFETY: getuid(2) has no preconditions.
    unsafe { libc::getuid() as u64 }
}

/// Every alert carrying this fingerprint (any kind), for failure messages.
fn about(d: &Daemon, fp: &str) -> Vec<Value> {
    d.alerts()
        .into_iter()
        .filter(|a| s(a, "fingerprint") == fp)
        .collect()
}

/// Waits up to 15 s for a finding of `fp` from `source` (and `extra`); on timeout shows
/// only the alerts about this fingerprint and the write probes' counters.
fn wait_finding(
    d: &Daemon,
    fp: &str,
    source: &str,
    what: &str,
    extra: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(a) = d
            .findings(fp)
            .into_iter()
            .find(|a| s(a, "source") == source && extra(a))
        {
            return a;
        }
        if Instant::now() > deadline {
            let text = d.scrape();
            let counters: Vec<&str> = text
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.contains("sys_enter_write")
                            || l.contains("sys_enter_send")
                            || l.contains("sys_enter_pwrite")
                            || l.contains("sys_enter_connect"))
                })
                .collect();
            let lost = metric(&text, "leakwatch_lost_events_total", &[]);
            let load = if lost > 0.0 {
                format!(
                    "\nNOTE: this daemon lost {lost} ring-buffer records (host under heavy write \
                     load?): a missing finding may be ring loss, not a detection bug."
                )
            } else {
                String::new()
            };
            panic!(
                "no `{source}` finding for {what} within 15 s.{load}\nalerts with this fingerprint: \
                 {:#?}\n{} alerts in all; write-family counters:\n{counters:#?}",
                about(d, fp),
                d.alerts().len()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fields every write-path finding carries, checked against what the test knows;
/// every mismatch is listed at once.
fn check(a: &Value, secret: &str, rule: &str, source: &str, pid: u32, comm: &str) {
    let mut bad: Vec<String> = Vec::new();
    let mut want = |ok: bool, what: &str| {
        if !ok {
            bad.push(what.to_string());
        }
    };
    want(s(a, "kind") == "finding", "kind == finding");
    want(s(a, "rule") == rule, &format!("rule == {rule}"));
    want(s(a, "source") == source, &format!("source == {source}"));
    want(
        s(a, "fingerprint") == fingerprint(secret),
        "fingerprint of the secret",
    );
    want(
        n(a, "pid") == pid as u64,
        &format!("pid (tgid of the writer) == {pid}"),
    );
    want(s(a, "comm") == comm, &format!("comm == {comm}"));
    want(
        a.get("uid").and_then(Value::as_u64) == Some(uid()),
        &format!("uid == {}", uid()),
    );
    want(
        a.get("ppid").and_then(Value::as_u64).is_some(),
        "ppid present",
    );
    want(!s(a, "exe").is_empty(), "exe not empty");
    want(a.get("unit").is_some(), "unit present (null when none)");
    want(a.get("fd").and_then(Value::as_u64).is_some(), "fd present");
    want(
        a.get("tid").and_then(Value::as_u64).is_some(),
        "tid present",
    );
    want(n(a, "bytes") > 0, "bytes > 0");
    want(
        s(a, "probe").starts_with("sys_enter_"),
        "probe is a tracepoint",
    );
    let red = s(a, "redacted");
    want(!red.is_empty() && red.len() < 16, "redacted short");
    want(
        !secret.contains(red) || red.len() < 12,
        "redacted not a long part of the secret",
    );
    assert!(bad.is_empty(), "finding fails: {}\n{a:#}", bad.join("; "));
}

// ---------------------------------------------------------------------------------------
// files

/// A `#!` script exec'd by a relative path (`cd repo && ./tool`): its exec and write
/// alerts both name the script by its absolute path in `exe`, and bash in `interpreter`.
/// Before, the write alert said `./leak.sh` and the exec alert bash.
#[test]
fn write_and_exec_of_a_shebang_script_name_the_script_and_its_interpreter() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = Daemon::start("w-shebang");
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let script = scratch.join("leak.sh");
    let out = scratch.join("out.log");
    fs::write(
        &script,
        format!(
            "#!/bin/bash\necho \"token=$1\" > {}\nsleep 1\n",
            out.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new("bash")
        .arg("-c")
        .arg("cd \"$LW_DIR\" && exec ./leak.sh \"$LW_KEY\"")
        .env("LW_DIR", &scratch)
        .env("LW_KEY", &text)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "the script").success());
    let is_script = |a: &Value| n(a, "pid") == pid as u64 && s(a, "comm") == "leak.sh";
    let w = wait_finding(&d, &fp, "file", "the script's write", is_script);
    let e = wait_finding(&d, &fp, "argv", "the script's exec", is_script);
    for a in [&w, &e] {
        assert_eq!(s(a, "exe"), real(&script), "{a:#}");
        assert_eq!(s(a, "interpreter"), exe_of("bash"), "{a:#}");
    }
    assert_eq!(s(&w, "path"), real(&out), "{w:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A key written to a temp file that is then renamed into place (python's tempfile +
/// `os.replace`, as atomic-write libraries do; `sed -i`) is alerted at the temp name and
/// again at the final one, `renamed_from` the temp name.
#[test]
fn write_renamed_into_place_is_alerted_under_its_final_name() {
    let mut d = Daemon::start("w-rename");
    let scratch = d.scratch();
    let (s1, t1) = secret("github-pat");
    let (s2, t2) = secret("github-pat");
    let (fp1, fp2) = (fingerprint(&s1), fingerprint(&s2));
    let env = scratch.join(".env");
    let mut c = python()
        .arg("-c")
        .arg(
            "import os, sys, tempfile\n\
             d = os.path.dirname(sys.argv[1])\n\
             fd, tmp = tempfile.mkstemp(dir=d, prefix='.env.')\n\
             os.write(fd, ('TOKEN=' + sys.argv[2] + '\\n').encode())\n\
             os.close(fd)\n\
             os.replace(tmp, sys.argv[1])\n",
        )
        .arg(&env)
        .arg(&t1)
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut c, 30, "python atomic write").success());
    let conf = scratch.join("app.conf");
    fs::write(&conf, "token = PLACEHOLDER\n").unwrap();
    let mut c = Command::new("sed")
        .arg("-i")
        .arg(format!("s/PLACEHOLDER/{t2}/"))
        .arg(&conf)
        .spawn()
        .unwrap();
    let sed = c.id();
    assert!(wait_exit(&mut c, 30, "sed -i").success());
    for (fp, dst, what) in [(&fp1, &env, "python's"), (&fp2, &conf, "sed's")] {
        let dst = real(dst);
        let first = wait_finding(&d, fp, "file", what, |a| a.get("renamed_from").is_none());
        let tmp = s(&first, "path").to_string();
        assert!(tmp != dst && tmp.starts_with(&real(&scratch)), "{first:#}");
        let moved = wait_finding(&d, fp, "file", what, |a| a.get("renamed_from").is_some());
        assert_eq!(s(&moved, "path"), dst, "{moved:#}");
        assert_eq!(s(&moved, "renamed_from"), tmp, "{moved:#}");
        assert_eq!(n(&moved, "pid"), n(&first, "pid"), "{moved:#}");
        assert_eq!(s(&moved, "rule"), s(&first, "rule"), "{moved:#}");
    }
    assert!(
        d.findings(&fp2).iter().all(|a| n(a, "pid") == sed as u64),
        "only sed wrote the second key"
    );
    d.stop();
    d.assert_no_plaintext(&[&s1, &s2]);
}

#[test]
fn write_bash_xtrace_after_dup2_names_the_log_file() {
    let mut d = Daemon::start("w-xtrace");
    let sink = HttpSink::start();
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let log = scratch.join("trace.log");
    // bash writes the trace to fd 2, which `exec 2>>` made the log: the fd number alone
    // does not name the file.
    let script = format!(
        "exec 2>>{log}\nset -x\ncurl -s -m 5 -o /dev/null -H \"Authorization: Bearer $(cat {key})\" {url}\n",
        log = log.display(),
        key = key.display(),
        url = sink.url()
    );
    let mut c = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "bash").success());
    assert!(
        contains(&fs::read(&log).unwrap(), secret.as_bytes()),
        "setup: bash did not trace the key into the log"
    );
    let a = wait_finding(&d, &fp, "file", "bash's xtrace line", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "github-pat", "file", pid, "bash");
    assert_eq!(s(&a, "path"), real(&log), "{a:#}");
    assert_eq!(n(&a, "fd"), 2, "{a:#}");
    assert_eq!(s(&a, "exe"), exe_of("bash"), "{a:#}");
    assert_eq!(n(&a, "ppid"), std::process::id() as u64, "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_write", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_python_logging_filehandler_names_the_log_file() {
    let mut d = Daemon::start("w-pylog");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let log = scratch.join("app.log");
    let script = r#"
import logging, sys
key = open(sys.argv[1]).read()
logging.basicConfig(filename=sys.argv[2], level=logging.INFO,
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
logging.getLogger("agent").info("loaded config %s", {"model": "claude", "api_key": key, "timeout": 30})
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&log)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    assert!(contains(&fs::read(&log).unwrap(), secret.as_bytes()));
    let a = wait_finding(&d, &fp, "file", "python's log record", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "anthropic-api-key", "file", pid, "python3");
    assert_eq!(s(&a, "path"), real(&log), "{a:#}");
    assert_eq!(s(&a, "exe"), python_exe(), "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_write", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_by_a_program_exec_d_by_fd_names_its_real_image() {
    // fexecve: the kernel names the image `/dev/fd/N`, the caller's fd. The alert must say
    // which binary wrote, not that name (nor what the daemon's own fd N is). The program
    // writes a moment after its exec and exits at once: the image is learnt at the exec and
    // must still name the writer once it is gone.
    let mut d = Daemon::start("w-fexecve");
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let out = scratch.join("copy.txt");
    let py = python_exe();
    let script = r#"
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
out = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(out, 1)
child = "import sys, time; time.sleep(0.3); sys.stdout.write(open(sys.argv[1]).read())"
os.execve(fd, ["python3", "-c", child, sys.argv[2]], {})
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&py)
        .arg(&key)
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = c.id();
    let a = wait_finding(&d, &fp, "file", "python exec'd by fd", |a| {
        n(a, "pid") == pid as u64
    });
    assert!(wait_exit(&mut c, 30, "python fexecve'd").success());
    assert!(contains(&fs::read(&out).unwrap(), secret.as_bytes()));
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    assert_eq!(s(&a, "exe"), py, "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_key_in_two_halves_is_found_once() {
    // dedupe_seconds = 0: every finding is alerted, so "once" is the reassembly's doing,
    // not the dedupe window's.
    let mut d = Daemon::start_with_config("w-halves", "dedupe_seconds = 0\n");
    let (later, later_text) = secret("github-pat");
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let key2 = keyfile(&scratch, "key2", &later_text);
    let out = scratch.join("halves.txt");
    // Two writes 200 ms apart on one fd, split inside the random part of the key; then, on
    // the same fd, a second key in one write: once that is reported, the stream up to it
    // has been scanned.
    let script = r#"
import sys, time
key, later = open(sys.argv[1]).read(), open(sys.argv[2]).read()
cut = len(key) // 2 - 7
f = open(sys.argv[3], "w")
f.write(key[:cut]); f.flush()
time.sleep(0.2)
f.write(key[cut:] + "\n"); f.flush()
f.write("next " + later + "\n"); f.flush()
"#;
    let cut = text.len() / 2 - 7;
    let second_len = text.len() - cut + 1;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&key2)
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    wait_finding(&d, &fingerprint(&later), "file", "the barrier key", |a| {
        n(a, "pid") == pid as u64
    });
    let found: Vec<Value> = d
        .findings(&fp)
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "a key written in two halves must be found exactly once: {found:#?}"
    );
    let a = &found[0];
    check(a, &secret, "openai-project-key", "file", pid, "python3");
    assert_eq!(s(a, "path"), real(&out), "{a:#}");
    assert_eq!(
        n(a, "bytes"),
        second_len as u64,
        "bytes is the length of the write that completed the key: {a:#}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret, &later]);
}

#[test]
fn write_key_split_between_fds_sharing_one_open_file_is_found() {
    let mut d = Daemon::start("w-dupfd");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let (out, other) = (scratch.join("both.log"), scratch.join("dup.log"));
    // `cmd > log 2>&1`: stdout and stderr are one open file; the first half of the key goes
    // out on stdout, the rest on stderr. Then the same on another file through an `os.dup`.
    let script = r#"
import os, sys, time
key = open(sys.argv[1]).read().encode()
cut = len(key) // 2
os.write(1, b"token=" + key[:cut]); time.sleep(0.2)
os.write(2, key[cut:] + b"\n")
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
dup = os.dup(fd)
os.write(fd, b"again=" + key[:cut]); time.sleep(0.2)
os.write(dup, key[cut:] + b"\n")
"#;
    let log = std::fs::File::create(&out).unwrap();
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&other)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    for path in [&out, &other] {
        let a = wait_finding(&d, &fp, "file", "the key split over two fds", |a| {
            n(a, "pid") == pid as u64 && s(a, "path") == real(path)
        });
        check(&a, &secret, "anthropic-api-key", "file", pid, "python3");
    }
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_halves_sent_to_two_peers_are_not_one_key() {
    let mut d = Daemon::start("w-udp-peers");
    let (split, split_text) = secret("anthropic-api-key");
    let (whole, whole_text) = secret("github-pat");
    let scratch = d.scratch();
    let (k1, k2) = (
        keyfile(&scratch, "split", &split_text),
        keyfile(&scratch, "whole", &whole_text),
    );
    let peers: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<String> = peers
        .iter()
        .map(|u| u.local_addr().unwrap().port().to_string())
        .collect();
    // One unconnected UDP socket: half the key to one peer, the rest to another (no peer
    // got the key), then a whole key to a third.
    let script = r#"
import socket, sys, time
split, whole = open(sys.argv[1]).read().encode(), open(sys.argv[2]).read().encode()
cut = len(split) // 2
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(b"token=" + split[:cut], ("127.0.0.1", int(sys.argv[3]))); time.sleep(0.1)
u.sendto(split[cut:] + b"\n", ("127.0.0.1", int(sys.argv[4]))); time.sleep(0.1)
u.sendto(b"token=" + whole + b"\n", ("127.0.0.1", int(sys.argv[5])))
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&k1)
        .arg(&k2)
        .args(&ports)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let a = wait_finding(&d, &fingerprint(&whole), "socket", "the whole key", |a| {
        n(a, "pid") == pid as u64
    });
    assert_eq!(s(&a, "remote"), format!("127.0.0.1:{}", ports[2]), "{a:#}");
    // Past the 1 s pause that reports a key held back at a stream's end.
    std::thread::sleep(Duration::from_millis(1500));
    let wrong = d.findings(&fingerprint(&split));
    assert!(
        wrong.iter().all(|a| n(a, "pid") != pid as u64),
        "no peer got the split key: {wrong:#?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&split, &whole]);
}

#[test]
fn write_fd_reused_for_another_file_keeps_each_path() {
    let mut d = Daemon::start("w-fdreuse");
    let keys: Vec<(String, String)> = [
        "anthropic-api-key",
        "github-pat",
        "gitlab-pat",
        "slack-token",
    ]
    .iter()
    .map(|r| secret(r))
    .collect();
    let scratch = d.scratch();
    // This process (in scope: the default scope is everything) writes two keys to two
    // files in a row, each open-write-close: the second open gets the first's fd number.
    let (mine_a, mine_b) = (scratch.join("mine-a.txt"), scratch.join("mine-b.txt"));
    fs::write(&mine_a, &keys[0].1).unwrap();
    fs::write(&mine_b, &keys[1].1).unwrap();
    // And python does the same, single-threaded, then exits at once.
    let k2 = keyfile(&scratch, "k2", &keys[2].1);
    let k3 = keyfile(&scratch, "k3", &keys[3].1);
    let (py_a, py_b) = (scratch.join("py-a.txt"), scratch.join("py-b.txt"));
    let script = r#"
import os, sys
fds = []
for keyfile, out in ((sys.argv[1], sys.argv[3]), (sys.argv[2], sys.argv[4])):
    key = open(keyfile).read()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (key + "\n").encode())
    os.close(fd)
    fds.append(fd)
assert fds[0] == fds[1], fds
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .args([&k2, &k3, &py_a, &py_b])
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let me = std::process::id() as u64;
    let mut wrong = Vec::new();
    for (i, (writer, path)) in [
        (me, &mine_a),
        (me, &mine_b),
        (pid as u64, &py_a),
        (pid as u64, &py_b),
    ]
    .into_iter()
    .enumerate()
    {
        let (secret, _) = &keys[i];
        let a = wait_finding(&d, &fingerprint(secret), "file", &format!("key {i}"), |a| {
            n(a, "pid") == writer
        });
        if s(&a, "path") != real(path) {
            wrong.push(format!(
                "key {i} was written to {} by pid {writer}; the finding says {} (fd {})",
                path.display(),
                s(&a, "path"),
                n(&a, "fd")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "findings name the wrong file:\n{}",
        wrong.join("\n")
    );
    d.stop();
    let all: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    d.assert_no_plaintext(&all);
}

#[test]
fn write_fd_reused_for_another_socket_names_each_peer() {
    let mut d = Daemon::start("w-sockreuse");
    let keys: Vec<(String, String)> = ["github-pat", "gitlab-pat", "slack-token"]
        .iter()
        .map(|r| secret(r))
        .collect();
    let scratch = d.scratch();
    let files: Vec<PathBuf> = keys
        .iter()
        .enumerate()
        .map(|(i, (_, text))| keyfile(&scratch, &format!("k{i}"), text))
        .collect();
    // Three TCP listeners that read until the peer closes.
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect();
    for l in listeners {
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = l.accept() {
                let _ = std::io::copy(&mut c, &mut std::io::sink());
            }
        });
    }
    // One connection after another, each closed before the next: every socket gets the
    // same fd number, and the kernel's per-fd cache must see each as a new peer.
    let script = r#"
import socket, sys
n = len(sys.argv) // 2
fds = []
for keyfile, port in zip(sys.argv[1:1 + n], sys.argv[1 + n:]):
    s = socket.create_connection(("127.0.0.1", int(port)))
    s.sendall(b"Authorization: token " + open(keyfile).read().encode() + b"\n")
    fds.append(s.fileno())
    s.close()
assert len(set(fds)) == 1, fds
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .args(&files)
        .args(&ports)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    for (i, (key, _)) in keys.iter().enumerate() {
        let a = wait_finding(&d, &fingerprint(key), "socket", &format!("key {i}"), |a| {
            n(a, "pid") == pid as u64
        });
        assert_eq!(
            s(&a, "remote"),
            format!("127.0.0.1:{}", ports[i]),
            "key {i} went to port {}: {a:#}",
            ports[i]
        );
    }
    d.stop();
    let all: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    d.assert_no_plaintext(&all);
}

#[test]
fn write_key_ending_the_last_write_is_reported_with_that_call() {
    let mut d = Daemon::start("w-tail");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let out = scratch.join("tail.txt");
    // The key is the very end of the process's only write (no newline after it), and the
    // process exits: nothing follows that could continue it.
    let script = r#"
import os, sys
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, ("export ANTHROPIC_API_KEY=" + open(sys.argv[1]).read()).encode())
"#;
    let call_len = "export ANTHROPIC_API_KEY=".len() + text.len();
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let a = wait_finding(&d, &fp, "file", "the key at the end of the write", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "anthropic-api-key", "file", pid, "python3");
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    assert_eq!(
        n(&a, "bytes"),
        call_len as u64,
        "bytes is the length of the call that completed the key: {a:#}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_dedupe_is_per_destination() {
    // Default 60 s window, keyed by (fingerprint, source, exe, ppid, path/remote): the same
    // key written twice to one file is one finding (and one suppressed repeat); to a
    // second file it is a new finding.
    let mut d = Daemon::start("w-dedupe");
    let (secret, text) = secret("gitlab-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let (a_out, b_out) = (scratch.join("a.log"), scratch.join("b.log"));
    let script = r#"
import os, sys, time
key = open(sys.argv[1]).read()
a = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(a, ("token=" + key + "\n").encode())
time.sleep(0.2)
os.write(a, ("again token=" + key + "\n").encode())
b = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(b, ("token=" + key + "\n").encode())
"#;
    let suppressed = "leakwatch_findings_suppressed_total";
    let before = d.metric(suppressed, &[]);
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&a_out)
        .arg(&b_out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let b = wait_finding(&d, &fp, "file", "the key in the second file", |a| {
        n(a, "pid") == pid as u64 && s(a, "path") == real(&b_out)
    });
    check(&b, &secret, "gitlab-pat", "file", pid, "python3");
    d.wait_metric(
        suppressed,
        &[],
        "the repeat in the first file suppressed",
        |v| v >= before + 1.0,
    );
    let in_a: Vec<Value> = d
        .findings(&fp)
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64 && s(a, "path") == real(&a_out))
        .collect();
    assert_eq!(
        in_a.len(),
        1,
        "one finding for two writes to one file: {in_a:#?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

// ---------------------------------------------------------------------------------------
// sockets

/// Runs a python `script` given a file holding `text` and the sink's port; its pid.
fn python_post(d: &Daemon, sink: &HttpSink, script: &str, text: &str) -> u32 {
    let key = keyfile(&d.scratch(), "key", text);
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(sink.port.to_string())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    pid
}

#[test]
fn write_python_http_client_post_body_to_socket() {
    let mut d = Daemon::start("w-pyhttp");
    let sink = HttpSink::start();
    let (secret, text) = secret("slack-token");
    let fp = fingerprint(&secret);
    let script = r#"
import http.client, json, sys
key = open(sys.argv[1]).read()
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[2]), timeout=10)
c.request("POST", "/v1/messages", body=json.dumps({"token": key}),
          headers={"Content-Type": "application/json"})
r = c.getresponse(); r.read()
assert r.status == 200, r.status
"#;
    let body_len = format!("{{\"token\": \"{text}\"}}").len();
    let pid = python_post(&d, &sink, script, &text);
    sink.wait_request("the POST", |r| contains(r, secret.as_bytes()));
    let a = wait_finding(&d, &fp, "socket", "http.client's body", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "slack-token", "socket", pid, "python3");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_sendto", "{a:#}");
    // http.client sends headers, then the body, in two calls: the body completes the key.
    assert_eq!(n(&a, "bytes"), body_len as u64, "{a:#}");
    assert_eq!(n(&a, "ppid"), std::process::id() as u64, "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// An agent's HTTP client compresses the request body (`Content-Encoding: gzip`, as
/// SDKs and telemetry exporters do): the key inside is found in the inflated body and
/// reported as itself, sent to the sink.
#[test]
fn write_python_gzip_request_body_is_inflated() {
    let mut d = Daemon::start("w-pygzip");
    let sink = HttpSink::start();
    let (secret, text) = secret("slack-token");
    let fp = fingerprint(&secret);
    let script = r#"
import gzip, json, sys, urllib.request
key = open(sys.argv[1]).read()
body = gzip.compress(json.dumps({"messages": [{"role": "user", "content": "use " + key}]}).encode())
req = urllib.request.Request("http://127.0.0.1:%s/v1/messages" % sys.argv[2], data=body,
    headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
assert urllib.request.urlopen(req, timeout=10).status == 200
"#;
    let pid = python_post(&d, &sink, script, &text);
    sink.wait_request("the gzip POST", |r| !contains(r, secret.as_bytes()));
    let a = wait_finding(&d, &fp, "socket", "the gzip body", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "slack-token", "socket", pid, "python3");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// An agent posts a credentials file as a form field (python `urlencode`): the AWS secret
/// key goes out with its `/` and `+` as `%2F` and `%2B`, and `=` as `%3D`. It is found as
/// itself: the rule and fingerprint it has anywhere else.
#[test]
fn write_form_encoded_secret_is_found_as_itself() {
    let mut d = Daemon::start("w-form");
    let sink = HttpSink::start();
    let (id, _) = secret("aws-access-key-id");
    let (key, _) = std::iter::repeat_with(|| secret("aws-secret-access-key"))
        .find(|(k, _)| k.contains('/') && k.contains('+'))
        .unwrap();
    let fp = fingerprint(&key);
    let creds = keyfile(
        &d.scratch(),
        "credentials",
        &format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {key}\n"),
    );
    let script = r#"
import sys, urllib.parse, urllib.request
body = urllib.parse.urlencode({"note": open(sys.argv[1]).read()}).encode()
urllib.request.urlopen(urllib.request.Request(sys.argv[2], data=body), timeout=10).read()
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&creds)
        .arg(sink.url())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    sink.wait_request("the form POST", |r| contains(r, b"%2F"));
    let a = wait_finding(&d, &fp, "socket", "the form-encoded secret key", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &key, "aws-secret-access-key", "socket", pid, "python3");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    let encoded = key.replace('/', "%2F").replace('+', "%2B");
    d.stop();
    d.assert_no_plaintext(&[&key, &encoded, &id]);
}

/// An agent attaches a `.env` to an API request the way LLM APIs take documents: base64
/// in a JSON body. The keys inside are found as themselves, at the socket.
#[test]
fn write_base64_attachment_in_a_json_body_is_decoded() {
    let mut d = Daemon::start("w-b64-json");
    let sink = HttpSink::start();
    let (key, _) = secret("anthropic-api-key");
    let (pat, _) = secret("github-pat");
    let env = keyfile(
        &d.scratch(),
        ".env",
        &format!("# local settings\nANTHROPIC_API_KEY={key}\nGITHUB_TOKEN={pat}\nDEBUG=1\n"),
    );
    let script = r#"
import base64, json, sys, urllib.request
doc = base64.b64encode(open(sys.argv[1], "rb").read()).decode()
body = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
    {"type": "document", "source": {"type": "base64", "media_type": "text/plain", "data": doc}},
    {"type": "text", "text": "why does this config fail?"}]}]}).encode()
req = urllib.request.Request(sys.argv[2], data=body, headers={"Content-Type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&env)
        .arg(sink.url())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    sink.wait_request("the JSON POST", |r| contains(r, b"\"base64\""));
    for (secret, rule) in [(&key, "anthropic-api-key"), (&pat, "github-pat")] {
        let a = wait_finding(&d, &fingerprint(secret), "socket", rule, |a| {
            n(a, "pid") == pid as u64
        });
        check(&a, secret, rule, "socket", pid, "python3");
        assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    }
    d.stop();
    d.assert_no_plaintext(&[&key, &pat]);
}

/// `base64 .env > out` (coreutils wraps at 76 columns): the key is found in the file,
/// across the line breaks of the encoding.
#[test]
fn write_wrapped_base64_of_a_key_file_is_decoded() {
    let mut d = Daemon::start("w-b64-file");
    let (key, _) = secret("anthropic-api-key");
    let scratch = d.scratch();
    let env = keyfile(
        &scratch,
        ".env",
        &format!("NOTE=\"rotated monthly, ask ops\"\nANTHROPIC_API_KEY={key}\n"),
    );
    let out = scratch.join("env.b64");
    let mut c = Command::new("bash")
        .arg("-c")
        .arg("exec base64 \"$1\" > \"$2\"")
        .arg("_")
        .arg(&env)
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "base64").success());
    assert!(contains(&fs::read(&out).unwrap(), b"\n"), "not wrapped");
    let a = wait_finding(&d, &fingerprint(&key), "file", "the encoded file", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &key, "anthropic-api-key", "file", pid, "base64");
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&key]);
}

#[test]
fn write_curl_bearer_header_to_socket() {
    let mut d = Daemon::start("w-curl");
    let sink = HttpSink::start();
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    // Here the key is in curl's argv on purpose (that is how curl is used): the exec path
    // reports it too; this test is about the socket finding.
    let mut c = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-H"])
        .arg(format!("Authorization: Bearer {text}"))
        .arg(sink.url())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "curl").success());
    sink.wait_request("curl's request", |r| contains(r, secret.as_bytes()));
    let a = wait_finding(&d, &fp, "socket", "curl's request", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "github-pat", "socket", pid, "curl");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_sendto", "{a:#}");
    assert_eq!(s(&a, "exe"), exe_of("curl"), "{a:#}");
    let argv = wait_finding(&d, &fp, "argv", "curl's argv", |a| {
        n(a, "pid") == pid as u64
    });
    assert_eq!(s(&argv, "comm"), "curl");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_basic_auth_is_found_as_the_credential_inside() {
    let mut d = Daemon::start("w-basic");
    let sink = HttpSink::start();
    // curl -u USER:KEY and python with a token as the user name (requests' `auth=(key, "")`)
    // send only base64 of USER:PASSWORD: the finding is the key's, by its own rule.
    let (curl_key, _) = secret("anthropic-api-key");
    let mut c = Command::new("curl")
        .args(["-s", "-m", "5", "-o", "/dev/null", "-u"])
        .arg(format!("apikey:{curl_key}"))
        .arg(sink.url())
        .spawn()
        .unwrap();
    let curl_pid = c.id();
    assert!(wait_exit(&mut c, 30, "curl").success());
    let (py_key, _) = secret("github-pat");
    let script = "import base64, http.client, os, sys\n\
        h, p = sys.argv[1].rsplit(':', 1)\n\
        c = http.client.HTTPConnection(h, int(p))\n\
        auth = base64.b64encode(os.environ.pop('LW_KEY').encode() + b':').decode()\n\
        c.request('GET', '/v1/models', headers={'Authorization': 'Basic ' + auth})\n\
        c.getresponse().read()\n";
    let mut py = python()
        .args(["-c", script, &sink.addr()])
        .env("LW_KEY", &py_key)
        .spawn()
        .unwrap();
    let py_pid = py.id();
    assert!(wait_exit(&mut py, 30, "python").success());
    for (key, rule, pid, comm) in [
        (&curl_key, "anthropic-api-key", curl_pid, "curl"),
        (&py_key, "github-pat", py_pid, "python3"),
    ] {
        let fp = fingerprint(key);
        let a = wait_finding(&d, &fp, "socket", comm, |a| n(a, "pid") == pid as u64);
        check(&a, key, rule, "socket", pid, comm);
        assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    }
    d.stop();
    d.assert_no_plaintext(&[&curl_key, &py_key]);
}

#[test]
fn write_node_http_request_body_via_writev() {
    let mut d = Daemon::start("w-node");
    let sink = HttpSink::start();
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    // No Content-Length: node sends chunked, as one writev of 5 iovecs (body in iov[2]).
    let js = scratch.join("post.js");
    fs::write(
        &js,
        r#"
const http = require('http');
const key = require('fs').readFileSync(process.argv[2], 'utf8');
const req = http.request({host: '127.0.0.1', port: +process.argv[3], method: 'POST', path: '/v1',
                          headers: {'Content-Type': 'application/json'}},
  res => { res.resume(); res.on('end', () => process.exit(res.statusCode === 200 ? 0 : 1)); });
req.write(JSON.stringify({token: key}));
req.end();
"#,
    )
    .unwrap();
    let mut c = Command::new("node")
        .arg(&js)
        .arg(&key)
        .arg(sink.port.to_string())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "node").success());
    sink.wait_request("node's POST", |r| contains(r, secret.as_bytes()));
    let a = wait_finding(&d, &fp, "socket", "node's request body", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "anthropic-api-key", "socket", pid, "node");
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_writev", "{a:#}");
    assert_eq!(s(&a, "exe"), exe_of("node"), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_java_httpurlconnection_post_from_its_main_thread() {
    let mut d = Daemon::start("w-java");
    let sink = HttpSink::start();
    let (secret, text) = secret("huggingface-token");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let src = scratch.join("Post.java");
    fs::write(
        &src,
        r#"
import java.io.OutputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.file.Files;
import java.nio.file.Path;

public class Post {
    public static void main(String[] a) throws Exception {
        String key = Files.readString(Path.of(a[0]));
        HttpURLConnection c = (HttpURLConnection) new URL("http://127.0.0.1:" + a[1] + "/v1").openConnection();
        c.setRequestMethod("POST");
        c.setDoOutput(true);
        c.setRequestProperty("Content-Type", "application/json");
        try (OutputStream o = c.getOutputStream()) {
            o.write(("{\"token\":\"" + key + "\"}").getBytes("UTF-8"));
        }
        System.exit(c.getResponseCode() == 200 ? 0 : 1);
    }
}
"#,
    )
    .unwrap();
    let mut c = Command::new("java")
        .arg(&src)
        .arg(&key)
        .arg(sink.port.to_string())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 90, "java").success());
    sink.wait_request("java's POST", |r| contains(r, secret.as_bytes()));
    let a = wait_finding(&d, &fp, "socket", "java's request body", |a| {
        n(a, "pid") == pid as u64
    });
    // The launcher runs main() on a second thread (tid = pid + 1 here): it inherits the
    // launcher's comm `java` (HotSpot renames only its own threads: "GC Thread#0", "C2
    // CompilerThre"…), and it makes both writes (headers, then body), as strace shows. So
    // comm is `java` whether the daemon reports the thread's comm or the process's, and
    // tid differs from pid.
    check(&a, &secret, "huggingface-token", "socket", pid, "java");
    assert_ne!(
        n(&a, "tid"),
        pid as u64,
        "the write came from a JVM thread: {a:#}"
    );
    assert_eq!(s(&a, "remote"), sink.addr(), "{a:#}");
    assert_eq!(s(&a, "probe"), "sys_enter_write", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// python: a worker thread renames itself `lw-worker`, writes its tid to argv[3] and
/// `token: KEY` (KEY read from argv[1]) to the file argv[2].
const NAMED_THREAD_WRITER: &str = r#"
import ctypes, os, sys, threading
def work():
    ctypes.CDLL(None).prctl(15, b"lw-worker", 0, 0, 0)  # PR_SET_NAME
    open(sys.argv[3], "w").write(str(threading.get_native_id()))
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, ("token: " + open(sys.argv[1]).read() + "\n").encode())
t = threading.Thread(target=work)
t.start()
t.join()
"#;

#[test]
fn write_from_a_named_thread_is_the_process_with_its_exe() {
    let mut d = Daemon::start("w-thread");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let (out, tid_file) = (scratch.join("thread.log"), scratch.join("tid"));
    // A worker thread that names itself (as JVM, node and Go runtimes name theirs) writes.
    let mut c = python()
        .arg("-c")
        .arg(NAMED_THREAD_WRITER)
        .arg(&key)
        .arg(&out)
        .arg(&tid_file)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let tid: u64 = fs::read_to_string(&tid_file).unwrap().parse().unwrap();
    assert_ne!(tid, pid as u64);
    let a = wait_finding(&d, &fp, "file", "the worker thread's write", |a| {
        n(a, "pid") == pid as u64
    });
    // `comm` may be the process's (python3) or the writing thread's (lw-worker): the
    // contract does not say. `exe` is the process's image either way.
    let comm = s(&a, "comm").to_string();
    assert!(
        comm == "python3" || comm == "lw-worker",
        "comm is neither the process's nor the thread's: {a:#}"
    );
    eprintln!("write_from_a_named_thread: daemon reports comm {comm:?}");
    check(&a, &secret, "anthropic-api-key", "file", pid, &comm);
    assert_eq!(n(&a, "tid"), tid, "{a:#}");
    assert_eq!(s(&a, "exe"), python_exe(), "{a:#}");
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

// ---------------------------------------------------------------------------------------
// pipes

#[test]
fn write_through_a_pipe_is_found_on_the_pipe_and_in_the_file() {
    let mut d = Daemon::start("w-pipe");
    let (secret, text) = secret("gitlab-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let out = scratch.join("out.txt");
    let ino = scratch.join("pipe-name");
    // `read` and `printf` are builtins: the key is in no argv or environment. The left
    // side (a forked sh) writes it to the pipe; cat copies it to the file. readlink names
    // the pipe (`pipe:[INODE]`) from the read side.
    let script = format!(
        "read -r K < {key}; printf '%s\\n' \"$K\" | {{ readlink /proc/self/fd/0 > {ino}; exec cat > {out}; }}",
        key = key.display(),
        ino = ino.display(),
        out = out.display()
    );
    let mut c = Command::new("sh").arg("-c").arg(&script).spawn().unwrap();
    let sh = c.id();
    assert!(wait_exit(&mut c, 30, "sh").success());
    assert!(contains(&fs::read(&out).unwrap(), secret.as_bytes()));
    let pipe = fs::read_to_string(&ino).unwrap().trim().to_string();
    assert!(pipe.starts_with("pipe:["), "setup: {pipe}");

    let p = wait_finding(&d, &fp, "pipe", "printf into the pipe", |a| {
        n(a, "ppid") == sh as u64
    });
    let writer = n(&p, "pid") as u32;
    check(&p, &secret, "gitlab-pat", "pipe", writer, "sh");
    assert_ne!(writer, sh, "the pipeline's left side is a forked sh: {p:#}");
    assert_eq!(s(&p, "path"), pipe, "{p:#}");
    assert_eq!(n(&p, "fd"), 1, "{p:#}");
    assert_eq!(s(&p, "exe"), exe_of("sh"), "{p:#}");

    let f = wait_finding(&d, &fp, "file", "cat into the file", |a| {
        n(a, "ppid") == sh as u64
    });
    check(
        &f,
        &secret,
        "gitlab-pat",
        "file",
        n(&f, "pid") as u32,
        "cat",
    );
    assert_ne!(n(&f, "pid") as u32, writer, "{f:#}");
    assert_eq!(s(&f, "path"), real(&out), "{f:#}");
    assert_eq!(n(&f, "fd"), 1, "{f:#}");
    assert_eq!(s(&f, "exe"), exe_of("cat"), "{f:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

// ---------------------------------------------------------------------------------------
// scope

const WRITER: &str = r#"
import os, sys
key = open(sys.argv[1]).read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, ("api_key = " + key + "\n").encode())
for _ in range(int(sys.argv[3])):
    os.write(fd, b".")
"#;

#[test]
fn write_out_of_scope_process_is_skipped_in_the_kernel() {
    let mut d = Daemon::start_with_config("w-noscope", "[scope]\ncomms = [\"lw-nonexistent\"]\n");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let skipped = "leakwatch_kernel_skipped_total";
    let events = "leakwatch_events_total";
    let w = [("probe", "sys_enter_write")];
    let (skipped0, events0) = (d.metric(skipped, &w), d.metric(events, &w));
    let mut c = python()
        .arg("-c")
        .arg(WRITER)
        .arg(&key)
        .arg(scratch.join("out.txt"))
        .arg("2000")
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut c, 30, "python").success());
    // 2001 writes by python alone, every one out of scope.
    d.wait_metric(skipped, &w, "python's writes skipped", |v| {
        v >= skipped0 + 2001.0
    });
    // Nothing on the host matches the scope: no write record may reach the daemon. Give a
    // record that did slip through time to be scanned before looking for its finding.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        about(&d, &fp),
        Vec::<Value>::new(),
        "an out-of-scope write was reported"
    );
    let events1 = d.metric(events, &w);
    assert_eq!(
        events1, events0,
        "write records were processed although no process is in scope"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_scope_is_in_force_from_the_first_record() {
    // A busy out-of-scope writer runs while the daemon starts: probes attached before the
    // [scope] lists are loaded would copy its payloads in that window.
    let busy = Reaped(
        python()
            .arg("-c")
            .arg("import os\nfd = os.open('/dev/null', os.O_WRONLY)\nfor _ in range(100_000_000):\n    os.write(fd, b'x')\n")
            .spawn()
            .unwrap(),
    );
    let mut d =
        Daemon::start_with_config("w-scopestart", "[scope]\ncomms = [\"lw-nonexistent\"]\n");
    let w = [("probe", "sys_enter_write")];
    d.wait_metric(
        "leakwatch_kernel_skipped_total",
        &w,
        "the busy writer's calls skipped",
        |v| v > 1000.0,
    );
    drop(busy);
    // Nothing on the host matches the scope at any time: not one write record may ever
    // be processed. Watch for 3 s while anything queued at start drains.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let events = d.metric("leakwatch_events_total", &w);
        assert_eq!(
            events, 0.0,
            "{events} write records were processed although no process was ever in scope \
             (captured before [scope] was loaded?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.stop();
}

#[test]
fn write_in_scope_by_comm_only() {
    let mut d = Daemon::start_with_config("w-comm", "[scope]\ncomms = [\"python3\"]\n");
    let (other, other_text) = secret("huggingface-token");
    let (secret, text) = secret("github-fine-grained-pat");
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let key2 = keyfile(&scratch, "key2", &other_text);
    // Out of scope first: sh (builtin printf) and dd write the other key.
    let script = format!(
        "read -r K < {k2}; printf 'token=%s\\n' \"$K\" > {o1}; dd if={k2} of={o2} status=none",
        k2 = key2.display(),
        o1 = scratch.join("sh.txt").display(),
        o2 = scratch.join("dd.txt").display()
    );
    assert!(Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    assert!(contains(
        &fs::read(scratch.join("dd.txt")).unwrap(),
        other.as_bytes()
    ));
    // Then python, in scope: once its finding is in, the earlier writes were seen too.
    let out = scratch.join("py.txt");
    let mut c = python()
        .arg("-c")
        .arg(WRITER)
        .arg(&key)
        .arg(&out)
        .arg("0")
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let a = wait_finding(&d, &fingerprint(&secret), "file", "python's write", |a| {
        n(a, "pid") == pid as u64
    });
    check(
        &a,
        &secret,
        "github-fine-grained-pat",
        "file",
        pid,
        "python3",
    );
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    assert_eq!(
        about(&d, &fingerprint(&other)),
        Vec::<Value>::new(),
        "sh/dd are out of scope (comms = [\"python3\"]) but were reported"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret, &other]);
}

#[test]
fn write_renamed_thread_of_an_in_scope_process_is_in_scope() {
    // `comms` names processes: a worker thread that renamed itself (java's
    // "HttpClient-1-Wo", node's libuv workers) is still the listed process.
    let mut d = Daemon::start_with_config("w-commthr", "[scope]\ncomms = [\"python3\"]\n");
    let (secret, text) = secret("slack-token");
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let (out, tid_file) = (scratch.join("thread.log"), scratch.join("tid"));
    let mut c = python()
        .arg("-c")
        .arg(NAMED_THREAD_WRITER)
        .arg(&key)
        .arg(&out)
        .arg(&tid_file)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let tid: u64 = fs::read_to_string(&tid_file).unwrap().parse().unwrap();
    let a = wait_finding(
        &d,
        &fingerprint(&secret),
        "file",
        "the renamed thread of python3",
        |a| n(a, "pid") == pid as u64,
    );
    assert_eq!(n(&a, "tid"), tid, "{a:#}");
    assert_eq!(s(&a, "path"), real(&out), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A cgroup2 directory for the test, removed (after its processes exit) on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(rel: &str) -> Cgroup {
        let p = Path::new("/sys/fs/cgroup/unified").join(rel.trim_start_matches('/'));
        fs::create_dir_all(&p).expect("creating a cgroup v2 directory");
        Cgroup(p)
    }

    /// `sh -c` that moves itself into this cgroup, then execs `python3 -c SCRIPT ARGS…`.
    fn python(&self, script: &str) -> Command {
        let py = python().get_program().to_str().unwrap().to_string();
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {py} -c \"$0\" \"$@\"",
                self.0.display()
            ))
            .arg(script);
        c
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn write_in_scope_by_unit_cgroup_or_uid() {
    let tag = std::process::id();
    let unit = format!("lwtest-{tag}.service");
    // Created before the daemon starts, so resolving [scope] at start finds them.
    let unit_cg = Cgroup::new(&unit);
    let unit_sub = Cgroup::new(&format!("{unit}/worker"));
    let plain = Cgroup::new(&format!("leakwatch-it-scope-{tag}"));
    let config = format!(
        "[scope]\nunits = [\"{unit}\"]\ncgroups = [\"/leakwatch-it-scope-{tag}\"]\nuids = [65534]\n"
    );
    let mut d = Daemon::start_with_config("w-scope3", &config);
    let rules = [
        "anthropic-api-key",
        "github-pat",
        "gitlab-pat",
        "slack-token",
    ];
    let keys: Vec<(String, String)> = rules.iter().map(|r| secret(r)).collect();
    let scratch = d.scratch();
    // Writable by uid 65534 too.
    use std::os::unix::fs::PermissionsExt;
    let out_dir = scratch.join("out");
    fs::create_dir_all(&out_dir).unwrap();
    fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755)).unwrap();
    let files: Vec<PathBuf> = keys
        .iter()
        .enumerate()
        .map(|(i, (_, text))| {
            let k = keyfile(&scratch, &format!("key{i}"), text);
            fs::set_permissions(&k, fs::Permissions::from_mode(0o644)).unwrap();
            k
        })
        .collect();
    let outs: Vec<PathBuf> = (0..4).map(|i| out_dir.join(format!("w{i}.txt"))).collect();
    // 0: root, in the root cgroup: out of scope (runs first; the others are its barrier).
    let mut cmds: Vec<Command> = Vec::new();
    let mut c0 = python();
    c0.arg("-c").arg(WRITER);
    cmds.push(c0);
    // 1: in a sub-cgroup of the unit; 2: in the listed cgroup; 3: uid 65534, root cgroup.
    cmds.push(unit_sub.python(WRITER));
    cmds.push(plain.python(WRITER));
    let mut c3 = python();
    c3.arg("-c").arg(WRITER);
    use std::os::unix::process::CommandExt;
    c3.uid(65534).gid(65534);
    cmds.push(c3);
    let mut pids = Vec::new();
    for (i, mut c) in cmds.into_iter().enumerate() {
        let mut ch = c.arg(&files[i]).arg(&outs[i]).arg("0").spawn().unwrap();
        pids.push(ch.id());
        assert!(wait_exit(&mut ch, 30, &format!("writer {i}")).success());
        assert!(contains(&fs::read(&outs[i]).unwrap(), keys[i].0.as_bytes()));
    }
    let u = wait_finding(
        &d,
        &fingerprint(&keys[1].0),
        "file",
        "the unit's worker",
        |a| n(a, "pid") == pids[1] as u64,
    );
    check(&u, &keys[1].0, rules[1], "file", pids[1], "python3");
    assert_eq!(s(&u, "unit"), unit, "{u:#}");
    assert_eq!(s(&u, "path"), real(&outs[1]), "{u:#}");
    let g = wait_finding(
        &d,
        &fingerprint(&keys[2].0),
        "file",
        "the listed cgroup",
        |a| n(a, "pid") == pids[2] as u64,
    );
    check(&g, &keys[2].0, rules[2], "file", pids[2], "python3");
    assert!(g["unit"].is_null(), "{g:#}");
    let n3 = wait_finding(&d, &fingerprint(&keys[3].0), "file", "uid 65534", |a| {
        n(a, "pid") == pids[3] as u64
    });
    assert_eq!(n(&n3, "uid"), 65534, "{n3:#}");
    assert_eq!(s(&n3, "comm"), "python3", "{n3:#}");
    assert_eq!(s(&n3, "path"), real(&outs[3]), "{n3:#}");
    let root_writes: Vec<Value> = d
        .findings(&fingerprint(&keys[0].0))
        .into_iter()
        .filter(|a| n(a, "pid") == pids[0] as u64)
        .collect();
    assert_eq!(
        root_writes,
        Vec::<Value>::new(),
        "a root process in the root cgroup matches none of the lists, yet was reported"
    );
    d.stop();
    drop((unit_sub, unit_cg, plain));
    let all: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    d.assert_no_plaintext(&all);
}

// ---------------------------------------------------------------------------------------
// terminals, and the rest of the write family

#[test]
fn write_to_a_terminal_is_a_tty_finding() {
    let mut d = Daemon::start("w-tty");
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let name = scratch.join("tty-name");
    // A pseudo-terminal pair: the key goes to the terminal side, as a program printing to
    // its controlling terminal would.
    let script = r#"
import os, pty, sys
m, s = pty.openpty()
open(sys.argv[2], "w").write(os.ttyname(s))
os.write(s, ("OPENAI_API_KEY=" + open(sys.argv[1]).read() + "\n").encode())
os.read(m, 65536)
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(&name)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let tty = fs::read_to_string(&name).unwrap();
    assert!(tty.starts_with("/dev/pts/"), "setup: {tty}");
    let a = wait_finding(&d, &fp, "tty", "the write to the terminal", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &secret, "openai-project-key", "tty", pid, "python3");
    assert_eq!(s(&a, "path"), tty, "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_each_write_family_syscall_reports_its_probe() {
    let mut d = Daemon::start("w-probes");
    let cases = [
        ("sys_enter_pwrite64", "file", "anthropic-api-key"),
        ("sys_enter_pwritev", "file", "github-pat"),
        ("sys_enter_pwritev2", "file", "gitlab-pat"),
        ("sys_enter_writev", "file", "slack-token"),
        ("sys_enter_sendmsg", "socket", "openai-project-key"),
        ("sys_enter_sendmmsg", "socket", "huggingface-token"),
    ];
    let keys: Vec<(String, String)> = cases.iter().map(|(_, _, r)| secret(r)).collect();
    let scratch = d.scratch();
    let keyfiles: Vec<PathBuf> = keys
        .iter()
        .enumerate()
        .map(|(i, (_, t))| keyfile(&scratch, &format!("key{i}"), t))
        .collect();
    let outs: Vec<PathBuf> = (0..4)
        .map(|i| scratch.join(format!("out{i}.txt")))
        .collect();
    // Datagram receivers: sendmsg to an IPv4 address given per message, sendmmsg on a
    // socket connected to IPv6 loopback.
    let udp4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp6 = std::net::UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
    let (p4, p6) = (
        udp4.local_addr().unwrap().port(),
        udp6.local_addr().unwrap().port(),
    );
    // Each key is split across two iovecs where the call takes several, so the probe
    // must join them.
    let script = r#"
import ctypes, os, socket, sys
keys = [open(p).read() for p in sys.argv[1:7]]
outs = sys.argv[7:11]
p4, p6 = int(sys.argv[11]), int(sys.argv[12])
def opened(p):
    return os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
def halves(k):
    b = ("key=" + k + "\n").encode()
    return [b[:len(b) // 2], b[len(b) // 2:]]
assert os.pwrite(opened(outs[0]), ("key=" + keys[0] + "\n").encode(), 0) > 0
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
def iovecs(bufs):
    keep = [ctypes.create_string_buffer(b, len(b)) for b in bufs]
    return keep, (iovec * len(keep))(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(b)) for b in keep])
libc = ctypes.CDLL(None, use_errno=True)
# CPython's os.pwritev always issues pwritev2; glibc's pwritev is the pwritev syscall.
keep, iov = iovecs(halves(keys[1]))
libc.pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_long]
assert libc.pwritev(opened(outs[1]), iov, 2, 0) > 0, ctypes.get_errno()
assert os.pwritev(opened(outs[2]), halves(keys[2]), 0, os.RWF_SYNC) > 0
assert os.writev(opened(outs[3]), halves(keys[3])) > 0
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
assert u4.sendmsg(halves(keys[4]), [], 0, ("127.0.0.1", p4)) > 0
class msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.connect(("::1", p6))
keep, iov = iovecs(halves(keys[5]))
msgs = (mmsghdr * 1)()
msgs[0].hdr.iov = ctypes.cast(iov, ctypes.POINTER(iovec))
msgs[0].hdr.iovlen = 2
assert libc.sendmmsg(u6.fileno(), msgs, 1, 0) == 1, ctypes.get_errno()
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .args(&keyfiles)
        .args(&outs)
        .arg(p4.to_string())
        .arg(p6.to_string())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let mut buf = [0u8; 2048];
    let (got, _) = udp4.recv_from(&mut buf).unwrap();
    assert!(
        contains(&buf[..got], keys[4].0.as_bytes()),
        "setup: sendmsg"
    );
    let (got, _) = udp6.recv_from(&mut buf).unwrap();
    assert!(
        contains(&buf[..got], keys[5].0.as_bytes()),
        "setup: sendmmsg"
    );
    let mut wrong = Vec::new();
    for (i, (probe, source, rule)) in cases.iter().enumerate() {
        let secret = &keys[i].0;
        let fp = fingerprint(secret);
        let deadline = Instant::now() + Duration::from_secs(15);
        let a = loop {
            if let Some(a) = d
                .findings(&fp)
                .into_iter()
                .find(|a| n(a, "pid") == pid as u64)
            {
                break Some(a);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(a) = a else {
            wrong.push(format!("{probe}: no finding for its key"));
            continue;
        };
        let want_where = match i {
            0..=3 => real(&outs[i]),
            4 => format!("127.0.0.1:{p4}"),
            _ => format!("[::1]:{p6}"),
        };
        let got_where = if *source == "file" {
            s(&a, "path")
        } else {
            s(&a, "remote")
        };
        if s(&a, "probe") != *probe
            || s(&a, "source") != *source
            || s(&a, "rule") != *rule
            || got_where != want_where
            || s(&a, "comm") != "python3"
        {
            wrong.push(format!(
                "{probe}: want source {source}, rule {rule}, {want_where}; got {a}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    d.stop();
    let all: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
    d.assert_no_plaintext(&all);
}

#[test]
fn write_vmsplice_into_a_pipe_is_a_pipe_finding_and_into_user_memory_is_not() {
    let mut d = Daemon::start("w-vmsplice");
    let (sent, sent_text) = secret("anthropic-api-key");
    let (stale, stale_text) = secret("github-pat");
    let scratch = d.scratch();
    let (ka, kb) = (
        keyfile(&scratch, "sent", &sent_text),
        keyfile(&scratch, "stale", &stale_text),
    );
    // First a vmsplice on the read end: it copies out of the pipe into a buffer that held
    // the stale key (a read, not a leak). Then one on the write end with the key split
    // across two iovecs, read back through the pipe.
    let script = r#"
import ctypes, os, sys
sent, stale = open(sys.argv[1]).read(), open(sys.argv[2]).read()
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
libc.vmsplice.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
libc.vmsplice.restype = ctypes.c_ssize_t
r, w = os.pipe()
os.write(w, b"x" * 64)
old = ctypes.create_string_buffer(("key=" + stale + "\n").encode(), 4096)
iov = iovec(ctypes.cast(old, ctypes.c_void_p), len(old.raw))
assert libc.vmsplice(r, ctypes.byref(iov), 1, 0) == 64, ctypes.get_errno()
data = ("key=" + sent + "\n").encode()
half = len(data) // 2
bufs = [ctypes.create_string_buffer(data[:half], half),
        ctypes.create_string_buffer(data[half:], len(data) - half)]
iovs = (iovec * 2)(*[iovec(ctypes.cast(b, ctypes.c_void_p), len(b.raw)) for b in bufs])
assert libc.vmsplice(w, iovs, 2, 0) == len(data), ctypes.get_errno()
assert os.read(r, 4096) == data
"#;
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&ka)
        .arg(&kb)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let a = wait_finding(&d, &fingerprint(&sent), "pipe", "the vmsplice", |a| {
        n(a, "pid") == pid as u64
    });
    check(&a, &sent, "anthropic-api-key", "pipe", pid, "python3");
    assert_eq!(s(&a, "probe"), "sys_enter_vmsplice", "{a:#}");
    // Records of one process arrive in order: the read came first.
    let read: Vec<Value> = d
        .findings(&fingerprint(&stale))
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64)
        .collect();
    assert_eq!(
        read,
        Vec::<Value>::new(),
        "a vmsplice reading from the pipe was reported as a write of its buffer"
    );
    d.stop();
    d.assert_no_plaintext(&[&sent, &stale]);
}

// ---------------------------------------------------------------------------------------
// frozen credentials

#[test]
fn write_sender_of_a_frozen_key_is_killed_and_cut() {
    let mut d = Daemon::start("w-frozen");
    let peer = TcpPeer::start();
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let key = keyfile(&d.scratch(), "key", &text);
    // --from-file: the test itself never writes the key after the freeze (on a pipe to the
    // client it would be a write of a frozen key by this process).
    let out = Command::new(bin())
        .args(["freeze", "--json", "--socket"])
        .arg(d.socket())
        .arg("--from-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "freeze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("freeze --json prints JSON");
    assert_eq!(r["fingerprint"], fp.as_str());
    // Reads the key after the freeze (no environ/cmdline holder), connects, sends it, and
    // sends it again every second, as a client retrying would: this daemon sees the whole
    // host, and a flood on it can fill its ring while one send's record is on its way
    // (lost, and counted: 270,627 once, in CI, beside the floods now in tests/flood.rs).
    let script = r#"
import socket, sys, time
key = open(sys.argv[1]).read()
c = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
for _ in range(600):
    c.sendall(("x-api-key: " + key + "\n").encode())
    time.sleep(1)
"#;
    let mut h = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(peer.port.to_string())
        .spawn()
        .unwrap();
    let pid = h.id();
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = h.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = h.kill();
            let _ = h.wait();
            let lost = d.metric("leakwatch_lost_events_total", &[]);
            panic!(
                "the process that sent the frozen key (pid {pid}) still ran after 15 s; \
                 ring records lost by this daemon: {lost}; alerts with its fingerprint: {:#?}",
                about(&d, &fp)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.signal(), Some(9), "not SIGKILLed: {st}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let (data, end) = peer.next_end(15);
    eprintln!(
        "write_sender_of_a_frozen_key_is_killed_and_cut: peer saw {end:?} after {} bytes (key received: {})",
        data.len(),
        contains(&data, secret.as_bytes())
    );
    assert!(
        matches!(end, PeerEnd::Reset | PeerEnd::Eof),
        "the peer's connection neither reset nor closed: {end:?}"
    );

    let k = d.wait_alert("kill of the sender", |a| {
        s(a, "kind") == "kill" && n(a, "pid") == pid as u64
    });
    assert_eq!(s(&k, "by"), "write", "{k:#}");
    assert_eq!(s(&k, "fingerprint"), fp, "{k:#}");
    let f = wait_finding(&d, &fp, "socket", "the frozen key on the socket", |a| {
        n(a, "pid") == pid as u64
    });
    assert!(
        ["frozen", "anthropic-api-key"].contains(&s(&f, "rule")),
        "rule: {f:#}"
    );
    assert_eq!(s(&f, "remote"), peer.addr(), "{f:#}");
    assert_eq!(s(&f, "comm"), "python3", "{f:#}");
    let sv = d.wait_alert("sever of the sender's connection", |a| {
        s(a, "kind") == "sever" && n(a, "pid") == pid as u64
    });
    assert_eq!(s(&sv, "remote"), peer.addr(), "{sv:#}");
    if end == PeerEnd::Eof {
        eprintln!("NOTE: a sever alert was emitted but the peer saw EOF, not a reset: {sv:#}");
    }
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_freeze_client_request_is_not_a_finding() {
    // `leakwatch freeze` hands the credential (base64) to the daemon over its control
    // socket: that is the response to a leak, not a leak; alerting on it would page the
    // operator (LeakwatchCredentialLeaked) for every freeze.
    let mut d = Daemon::start("w-freezecli");
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let key = keyfile(&d.scratch(), "key", &text);
    let client = Command::new(bin())
        .args(["freeze", "--json", "--socket"])
        .arg(d.socket())
        .arg("--from-file")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cpid = client.id() as u64;
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "freeze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_alert("freeze alert", |a| {
        s(a, "kind") == "freeze" && s(a, "fingerprint") == fp
    });
    // The client's send was made before the freeze alert; give its record time to be
    // scanned.
    std::thread::sleep(Duration::from_secs(2));
    let by_client: Vec<Value> = d
        .alerts()
        .into_iter()
        .filter(|a| s(a, "kind") == "finding" && n(a, "pid") == cpid)
        .collect();
    assert_eq!(
        by_client,
        Vec::<Value>::new(),
        "the freeze client's own request was reported as a leak"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn write_responder_piping_the_key_into_freeze_is_not_killed() {
    // The operator's tool (here python, standing in for a shell) pipes the key into
    // `leakwatch freeze`, as `leakwatch freeze < key` or `... | leakwatch freeze` do. Its
    // write happened before the key was frozen, and it is the freeze client's parent:
    // "the freeze client and its ancestors (your shell) are never killed".
    let mut d = Daemon::start("w-responder");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let key = keyfile(&scratch, "key", &text);
    let script = r#"
import subprocess, sys, time
key = open(sys.argv[1]).read()
c = subprocess.Popen([sys.argv[2], "freeze", "--json", "--socket", sys.argv[3]],
                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
c.stdin.write(key.encode())  # no newline, as `printf %s "$KEY" |` would
c.stdin.close()
assert c.wait() == 0
time.sleep(3)
"#;
    let mut r = python()
        .arg("-c")
        .arg(script)
        .arg(&key)
        .arg(bin())
        .arg(d.socket())
        .spawn()
        .unwrap();
    let pid = r.id();
    let st = wait_exit(&mut r, 30, "the responder");
    d.wait_alert("freeze alert", |a| {
        s(a, "kind") == "freeze" && s(a, "fingerprint") == fp
    });
    let kills: Vec<Value> = d
        .alerts()
        .into_iter()
        .filter(|a| s(a, "kind") == "kill" && n(a, "pid") == pid as u64)
        .collect();
    assert!(
        st.success() && kills.is_empty(),
        "the responder that piped the key into freeze was killed ({st}): {kills:#?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

// ---------------------------------------------------------------------------------------
// capture limits

#[test]
fn write_truncated_capture_is_counted_and_alerted() {
    let mut d = Daemon::start_with_config("w-trunc", "[capture]\nmax_bytes = 4096\n");
    let (past, past_text) = secret("anthropic-api-key");
    let (within, within_text) = secret("github-pat");
    let scratch = d.scratch();
    let k1 = keyfile(&scratch, "key1", &past_text);
    let k2 = keyfile(&scratch, "key2", &within_text);
    let (a_out, b_out) = (scratch.join("a.log"), scratch.join("b.log"));
    // One 64 KiB write each: A has its key at 10 KiB (past the 4 KiB capture), B at 1 KiB
    // (inside it: the control that capture and scanning work in this configuration).
    let script = r#"
import os, sys
def buf(key, at):
    line = b"2026-11-23 12:00:00 INFO worker: heartbeat ok\n"
    data = bytearray((line * (65536 // len(line) + 1))[:65536])
    k = b"\n" + key.encode() + b"\n"
    data[at:at + len(k)] = k
    return bytes(data)
for keyfile, out, at in ((sys.argv[1], sys.argv[3], 10240), (sys.argv[2], sys.argv[4], 1024)):
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    assert os.write(fd, buf(open(keyfile).read(), at)) == 65536
    os.close(fd)
"#;
    let dropped = "leakwatch_capture_bytes_dropped_total";
    let truncated = "leakwatch_capture_truncated_total";
    let w = [("probe", "sys_enter_write")];
    let (dropped0, truncated0) = (d.metric(dropped, &w), d.metric(truncated, &w));
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(&k1)
        .arg(&k2)
        .arg(&a_out)
        .arg(&b_out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 30, "python").success());
    let b = wait_finding(
        &d,
        &fingerprint(&within),
        "file",
        "the key inside the capture",
        |a| n(a, "pid") == pid as u64,
    );
    check(&b, &within, "github-pat", "file", pid, "python3");
    assert_eq!(s(&b, "path"), real(&b_out), "{b:#}");
    // Only python's writes count: this test process wrote the key file and is in scope.
    let past_by_python: Vec<Value> = d
        .findings(&fingerprint(&past))
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64)
        .collect();
    assert_eq!(
        past_by_python,
        Vec::<Value>::new(),
        "the key 10 KiB into the write was past the 4 KiB capture, yet reported"
    );
    let lost = d.wait_alert("lost alert for python's truncated write", |a| {
        s(a, "kind") == "lost"
            && s(a, "reason") == "write_capture_truncated"
            && n(a, "pid") == pid as u64
    });
    assert!(
        n(&lost, "bytes_dropped") >= 65536 - 4096,
        "bytes_dropped: {lost:#}"
    );
    // Both 64 KiB writes lost 60 KiB each.
    d.wait_metric(dropped, &w, "bytes dropped by python's writes", |v| {
        v >= dropped0 + 2.0 * (65536.0 - 4096.0)
    });
    d.wait_metric(truncated, &w, "python's writes counted as truncated", |v| {
        v >= truncated0 + 2.0
    });
    d.stop();
    d.assert_no_plaintext(&[&past, &within]);
}

// ---------------------------------------------------------------------------------------
// configuration

#[test]
fn write_invalid_scope_and_capture_config_exits_2_naming_the_field() {
    let dir = TempDir::new("w-badcfg");
    let cases = [
        ("[capture]\nmax_bytes = 0\n", "max_bytes"),
        ("[capture]\nmax_bytes = 65537\n", "max_bytes"),
        ("[capture]\nmax_byte = 4096\n", "max_byte"),
        ("[scope]\ncomms = [\"a-comm-of-16-byt\"]\n", "comms"),
        ("[scope]\nunit = [\"agent.service\"]\n", "unit"),
    ];
    for (i, (toml, field)) in cases.iter().enumerate() {
        let cfg = dir.join(format!("bad-{i}.toml"));
        fs::write(&cfg, toml).unwrap();
        let mut c = Command::new(bin())
            .arg("daemon")
            .arg("--config")
            .arg(&cfg)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join(format!("control-{i}.sock")))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join(format!("bad-{i}.stderr"))).unwrap())
            .spawn()
            .unwrap();
        let st = wait_exit(&mut c, 30, &format!("daemon with {toml:?}"));
        let err = fs::read_to_string(dir.join(format!("bad-{i}.stderr"))).unwrap();
        assert_eq!(st.code(), Some(2), "{toml:?}: {st}, stderr:\n{err}");
        assert!(
            err.contains(field),
            "{toml:?}: stderr does not name `{field}`:\n{err}"
        );
        assert!(
            err.trim().lines().count() <= 2,
            "{toml:?}: expected one sentence, got:\n{err}"
        );
    }
}

/// A bug in the write stage (injected with `LEAKWATCH_FAULT_PANIC`: a write holding its
/// mark panics, with the write's bytes in the panic message) costs the one record it met:
/// it is counted under `stage="write"`, the log names the place but not the bytes, and a
/// later leak is still found.
#[test]
fn a_panic_in_the_write_stage_costs_one_record_and_is_counted() {
    let mark = format!("lw-fault-{:016x}", rand::random::<u64>());
    let mut d = Daemon::start_with_env("w-panic", &[("LEAKWATCH_FAULT_PANIC", &mark)]);
    let (first, first_text) = secret("anthropic-api-key");
    let (second, second_text) = secret("openai-project-key");
    let scratch = d.scratch();
    // The mark only ever whole in python's write: argv carries it in two halves.
    let (a, b) = mark.split_at(5);
    let write = |key: &Path, out: &Path, halves: (&str, &str)| {
        let script = "import sys; k = open(sys.argv[1]).read(); \
                      open(sys.argv[2], 'w').write(sys.argv[3] + sys.argv[4] + ' key=' + k + '\\n')";
        let mut c = python()
            .arg("-c")
            .arg(script)
            .arg(key)
            .arg(out)
            .args([halves.0, halves.1])
            .spawn()
            .unwrap();
        assert!(wait_exit(&mut c, 30, "python").success());
    };
    let k1 = keyfile(&scratch, "k1", &first_text);
    write(&k1, &scratch.join("one.log"), (a, b));
    d.wait_metric(
        "leakwatch_internal_errors_total",
        &[("stage", "write")],
        "the injected panic counted",
        |v| v >= 1.0,
    );
    let k2 = keyfile(&scratch, "k2", &second_text);
    let out2 = scratch.join("two.log");
    write(&k2, &out2, ("no", "mark"));
    let a2 = wait_finding(
        &d,
        &fingerprint(&second),
        "file",
        "the leak after the panic",
        // Not the test's own write of the key file: held while its end might continue
        // the key, it can come out before python's line does.
        |a| s(a, "path") == real(&out2),
    );
    assert_eq!(s(&a2, "path"), real(&out2), "{a2:#}");
    // The panic struck with the frozen set's lock held. A key frozen after it is still
    // recognised in what is written: a random string no rule knows, written with no name
    // before it, is found only through the frozen set.
    let third = format!("lwfz{:032x}", rand::random::<u128>());
    // Written before the freeze: the test itself never writes a frozen key.
    let k3 = keyfile(&scratch, "k3", &third);
    let out = freeze_with(&d, &third, &[]);
    assert!(
        out.status.success(),
        "freeze after the panic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out3 = scratch.join("three.log");
    let mut c = python()
        .arg("-c")
        .arg("import sys; open(sys.argv[2], 'w').write('data ' + open(sys.argv[1]).read() + '\\n')")
        .arg(&k3)
        .arg(&out3)
        .spawn()
        .unwrap();
    // A process that writes a frozen key is killed: it may be gone before it exits.
    let st = wait_exit(&mut c, 30, "python");
    assert!(
        st.success() || std::os::unix::process::ExitStatusExt::signal(&st) == Some(9),
        "python: {st:?}"
    );
    let a3 = wait_finding(
        &d,
        &fingerprint(&third),
        "file",
        "the key frozen after the panic, written by python",
        // Not the test's own write of the key file.
        |a| s(a, "path") == real(&out3),
    );
    assert_eq!(s(&a3, "comm"), "python3", "{a3:#}");
    let log = fs::read_to_string(d.stderr_path()).unwrap();
    assert!(
        log.contains("panicked at") && log.contains("message withheld"),
        "the panic is logged by place, its message withheld:\n{log}"
    );
    assert!(
        !log.contains(&mark),
        "the panic message (the write's bytes) was logged"
    );
    for stage in ["exec", "connect", "periodic", "tls_watch"] {
        assert_eq!(
            d.metric("leakwatch_internal_errors_total", &[("stage", stage)]),
            0.0,
            "{stage}"
        );
    }
    d.stop();
    d.assert_no_plaintext(&[&first, &second, &third]);
}
