//! By-reference capture, end to end: once a process has written enough to a regular file,
//! the daemon holds the file and the kernel sends where each write lands instead of its
//! bytes; the daemon reads them back from the page cache. Real python writers, a fresh key
//! each; every finding asserted here carries `by_reference: true`, so it came that way.
//!
//! Every daemon sees the whole host: alerts are matched only on this test's fingerprints.
//! Keys reach the programs through files, never argv or the environment.
use std::{
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use leakwatch_tests::*;
use serde_json::Value;

/// Lines written before the key: far more than the copied calls after which a file is held.
const WARMUP: usize = 300;

fn keyfile(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("key");
    fs::write(&p, text).unwrap();
    p
}

fn real(p: &Path) -> String {
    fs::canonicalize(p).unwrap().to_str().unwrap().to_string()
}

/// Waits up to 15 s for a finding of `fp` by `pid`.
fn wait_finding(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(a) = d
            .findings(fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64)
        {
            return a;
        }
        if Instant::now() > deadline {
            panic!(
                "no finding for {what} within 15 s; files held: {}, bytes unread: {}; alerts \
                 with this fingerprint: {:#?}",
                d.metric("leakwatch_files_held", &[]),
                d.metric("leakwatch_held_bytes_unread_total", &[]),
                d.alerts()
                    .into_iter()
                    .filter(|a| s(a, "fingerprint") == fp)
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This test's findings of `secret` by `pid`.
fn findings_by(d: &Daemon, secret: &str, pid: u32) -> Vec<Value> {
    d.findings(&fingerprint(secret))
        .into_iter()
        .filter(|a| n(a, "pid") == pid as u64)
        .collect()
}

/// A python writer of `out` (argv [key file, out file], `key` read, `f` the file opened
/// line-buffered in `mode`) that logs its warm-up lines, so its file is held, then runs
/// `rest`.
fn log_writer(mode: &str, rest: &str) -> String {
    format!(
        r#"
import sys, time
key = open(sys.argv[1]).read()
f = open(sys.argv[2], "{mode}", buffering=1)
for i in range({WARMUP}):
    f.write("INFO request %d served in 3 ms\n" % i)
{rest}"#
    )
}

/// Runs a python `script` with argv [key file, out file] to completion; returns its pid.
fn run(script: &str, key: &Path, out: &Path) -> u32 {
    let mut c = python()
        .arg("-c")
        .arg(script)
        .arg(key)
        .arg(out)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 60, "python writer").success());
    pid
}

fn check(a: &Value, secret: &str, rule: &str, pid: u32, out: &Path) {
    check_probe(a, secret, rule, pid, out, &["sys_enter_write"]);
}

/// `check`, with the probes the finding may name.
fn check_probe(a: &Value, secret: &str, rule: &str, pid: u32, out: &Path, probes: &[&str]) {
    assert_eq!(s(a, "kind"), "finding", "{a:#}");
    assert_eq!(s(a, "source"), "file", "{a:#}");
    assert_eq!(s(a, "rule"), rule, "{a:#}");
    assert_eq!(s(a, "fingerprint"), fingerprint(secret), "{a:#}");
    assert_eq!(n(a, "pid"), pid as u64, "{a:#}");
    assert_eq!(s(a, "comm"), "python3", "{a:#}");
    assert_eq!(s(a, "path"), real(out), "{a:#}");
    assert!(probes.contains(&s(a, "probe")), "{a:#}");
    assert_eq!(
        a.get("by_reference"),
        Some(&Value::Bool(true)),
        "the key was written after the file was held, so it must come by reference: {a:#}"
    );
    // The offset is where the key starts in the file.
    let body = fs::read(out).unwrap();
    let at = body
        .windows(secret.len())
        .position(|w| w == secret.as_bytes())
        .expect("key in the file");
    assert_eq!(
        n(a, "offset"),
        at as u64,
        "offset of the key in the file: {a:#}"
    );
}

#[test]
fn held_log_file_key_is_read_back_and_attributed() {
    let mut d = Daemon::start("h-log");
    let (secret, text) = secret("anthropic-api-key");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("agent.log");
    // Line-buffered append: one write per line, as logging does.
    let script = log_writer(
        "a",
        r#"time.sleep(0.5)
f.write("DEBUG headers {'x-api-key': '" + key + "'}\n")
for i in range(50):
    f.write("INFO request %d served in 2 ms\n" % i)
"#,
    );
    let pid = run(&script, &key, &out);
    let a = wait_finding(&d, &fingerprint(&secret), pid, "the key in a held log");
    check(&a, &secret, "anthropic-api-key", pid, &out);
    assert!(d.metric("leakwatch_captured_bytes_total", &[]) > 0.0);
    assert!(d.metric("leakwatch_scanned_bytes_total", &[("source", "file")]) > 0.0);
    // The finding's latency (kernel write time -> alert written) is in the histogram.
    let n = d.metric(
        "leakwatch_detection_latency_seconds_count",
        &[("source", "file")],
    );
    let sum = d.metric(
        "leakwatch_detection_latency_seconds_sum",
        &[("source", "file")],
    );
    assert!(
        n >= 1.0 && sum > 0.0 && sum / n < 15.0,
        "latency count {n}, sum {sum}"
    );
    assert_eq!(d.metric("leakwatch_build_info", &[]), 1.0);
    let st = d.status();
    assert!(
        st["userspace"]["files_held"].as_u64().unwrap_or(0) >= 1,
        "status shows the held file: {st:#}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_key_in_two_halves_is_found_once() {
    let mut d = Daemon::start_with_config("h-halves", "dedupe_seconds = 0\n");
    let (secret, text) = secret("openai-project-key");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("halves.log");
    let script = format!(
        r#"
import sys, time
key = open(sys.argv[1]).read()
cut = len(key) // 2 - 5
f = open(sys.argv[2], "w", buffering=1)
for i in range({WARMUP}):
    f.write("step %d ok\n" % i)
time.sleep(0.5)
f.write("OPENAI_API_KEY=" + key[:cut]); f.flush()
time.sleep(0.2)
f.write(key[cut:] + "\n"); f.flush()
time.sleep(1.5)
"#
    );
    let pid = run(&script, &key, &out);
    let a = wait_finding(
        &d,
        &fingerprint(&secret),
        pid,
        "a key split across held writes",
    );
    check(&a, &secret, "openai-project-key", pid, &out);
    std::thread::sleep(Duration::from_millis(1500));
    let found = findings_by(&d, &secret, pid);
    assert_eq!(found.len(), 1, "found exactly once: {found:#?}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_key_is_reported_once_when_its_writer_pauses() {
    // After a pause the daemon reads the file's last write again (it may have been read
    // while still copying in); a key it had already reported must not be reported twice.
    let mut d = Daemon::start_with_config("h-once", "dedupe_seconds = 0\n");
    let (secret, text) = secret("anthropic-api-key");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("once.log");
    let script = log_writer(
        "w",
        r#"time.sleep(0.5)
f.write("DEBUG key=" + key + "\n")
time.sleep(2.5)
"#,
    );
    let pid = run(&script, &key, &out);
    let a = wait_finding(&d, &fingerprint(&secret), pid, "the key before a pause");
    check(&a, &secret, "anthropic-api-key", pid, &out);
    // The re-read comes 1 s into the pause; the writer paused 2.5 s and has exited.
    std::thread::sleep(Duration::from_millis(1000));
    let found = findings_by(&d, &secret, pid);
    assert_eq!(found.len(), 1, "reported exactly once: {found:#?}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn many_keys_in_the_last_record_before_a_pause_are_each_reported_once() {
    // The file is held, then 100 key lines are written by reference: the kernel joins the
    // last ones into a run sent with the next write, 0.5 s later, so the last record read
    // before the pause spans many lines. The pause re-read goes over that record again,
    // and it must not report a line the daemon no longer remembers reporting (it keeps
    // the last 64 per file): each line once. (Before, the run's first line came twice.)
    let warmup =
        format!("for i in range({WARMUP}):\n    f.write(\"step %d ok\\n\" % i)\ntime.sleep(0.5)\n");
    each_key_line_reported_once("h-reread", 100, &warmup);
}

#[test]
fn key_found_while_copied_is_not_found_again_when_the_file_is_held() {
    // Every line holds the key: the first ones are copied, then the file is held (when
    // depends on the daemon), and the first read by reference goes back up to 8 KiB for
    // context (a key split across the switch). That read must not report the copied
    // lines a second time: each line is one finding. (Before, the last few copied lines
    // came twice.)
    each_key_line_reported_once("h-backfill", 200, "");
}

/// A python process appends `before` (python, `f` is the log), then `lines` lines each
/// holding the same key, then after a pause a second key (which shows the file was held
/// and read back); every key line must be one finding at its own offset.
fn each_key_line_reported_once(name: &str, lines: usize, before: &str) {
    let mut d = Daemon::start_with_config(name, "dedupe_seconds = 0\n");
    let (later, later_text) = secret("github-pat");
    let (secret, text) = secret("anthropic-api-key");
    let key2 = d.scratch().join("key2");
    fs::write(&key2, &later_text).unwrap();
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("lines.log");
    let script = format!(
        r#"
import sys, time
key = open(sys.argv[1]).read()
f = open(sys.argv[2], "a", buffering=1)
{before}for i in range({lines}):
    f.write("DEBUG key=" + key + "\n")
time.sleep(0.5)
f.write("DEBUG token=" + open("{}").read() + "\n")
time.sleep(2.0)
"#,
        key2.display()
    );
    let pid = run(&script, &key, &out);
    let b = wait_finding(&d, &fingerprint(&later), pid, "the key after the pause");
    check(&b, &later, "github-pat", pid, &out);
    // Past the re-read after the writer's pause.
    std::thread::sleep(Duration::from_millis(1500));
    let found = findings_by(&d, &secret, pid);
    let mut offsets: Vec<u64> = found.iter().map(|a| n(a, "offset")).collect();
    offsets.sort();
    offsets.dedup();
    assert_eq!(
        (found.len(), offsets.len()),
        (lines, lines),
        "each line reported exactly once: {offsets:?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret, &later]);
}

#[test]
fn held_last_write_before_exit_is_read() {
    // The key is the writer's very last write and it exits at once: the range is read once
    // it settles, from the daemon's own open file.
    let mut d = Daemon::start("h-exit");
    let (secret, text) = secret("github-pat");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("last.txt");
    let script = format!(
        r#"
import os, sys, time
key = open(sys.argv[1]).read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
for i in range({WARMUP}):
    os.write(fd, b"line %d\n" % i)
time.sleep(0.5)
os.write(fd, ("token=" + key + "\n").encode())
os._exit(0)
"#
    );
    let pid = run(&script, &key, &out);
    let a = wait_finding(&d, &fingerprint(&secret), pid, "the last write before exit");
    check(&a, &secret, "github-pat", pid, &out);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_rewrite_in_place_is_scanned_again() {
    // Bytes rewritten behind what was already scanned are new bytes: read them again.
    let mut d = Daemon::start("h-rewrite");
    let (secret, text) = secret("stripe-secret-key");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("state.txt");
    let script = format!(
        r#"
import os, sys, time
key = open(sys.argv[1]).read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
for i in range({WARMUP}):
    os.write(fd, b"%08d........................\n" % i)
time.sleep(0.5)
os.pwrite(fd, b"x" * 64, 1024)
os.lseek(fd, 4096, os.SEEK_SET)
os.write(fd, ("STRIPE_KEY=" + key + "\n").encode())
time.sleep(0.5)
"#
    );
    let pid = run(&script, &key, &out);
    let a = wait_finding(&d, &fingerprint(&secret), pid, "a key rewritten in place");
    // Known: when the key's run is read early (the writer sleeps), the finding can be
    // credited to the pwrite before it (same process and fd): see the session note.
    let probes = ["sys_enter_write", "sys_enter_pwrite64"];
    check_probe(&a, &secret, "stripe-secret-key", pid, &out, &probes);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_writer_of_a_frozen_key_is_killed() {
    let mut d = Daemon::start("h-frozen");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("frozen.log");
    let r = std::process::Command::new(bin())
        .args(["freeze", "--json", "--socket"])
        .arg(d.socket())
        .arg("--from-file")
        .arg(&key)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let script = format!(
        r#"
import sys, time
key = open(sys.argv[1]).read()
f = open(sys.argv[2], "a", buffering=1)
for i in range({WARMUP}):
    f.write("tick %d\n" % i)
time.sleep(0.5)
f.write("key " + key + "\n")
time.sleep(600)
"#
    );
    let mut h = python()
        .arg("-c")
        .arg(&script)
        .arg(&key)
        .arg(&out)
        .spawn()
        .unwrap();
    let pid = h.id();
    let st = wait_exit(&mut h, 20, "the writer of a frozen key");
    assert_eq!(st.signal(), Some(9), "not SIGKILLed: {st}");
    let k = d.wait_alert("kill of the writer", |a| {
        s(a, "kind") == "kill" && n(a, "pid") == pid as u64
    });
    assert_eq!(s(&k, "fingerprint"), fp, "{k:#}");
    let f = wait_finding(&d, &fp, pid, "the frozen key in a held file");
    assert_eq!(f.get("by_reference"), Some(&Value::Bool(true)), "{f:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_bytes_truncated_away_before_the_read_are_counted() {
    // The key is written and the file truncated at once, before the write settles: the
    // bytes are gone when the daemon reads, and that loss is counted, not silent.
    let mut d = Daemon::start("h-trunc");
    let (secret, text) = secret("github-pat");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("gone.txt");
    let before = d.metric("leakwatch_held_bytes_unread_total", &[]);
    let script = format!(
        r#"
import os, sys, time
key = open(sys.argv[1]).read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
for i in range({WARMUP}):
    os.write(fd, b"line %d\n" % i)
time.sleep(0.5)
line = ("token=" + key + "\n").encode()
os.write(fd, line)
os.ftruncate(fd, 0)
time.sleep(0.5)
"#
    );
    run(&script, &key, &out);
    let len = (text.len() + 7) as f64;
    let unread = wait_until(15, "the truncated bytes counted as unread", || {
        let v = d.metric("leakwatch_held_bytes_unread_total", &[]) - before;
        (v >= len).then_some(v)
    });
    assert!(unread >= len, "{unread}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_pseudo_files_stay_copied() {
    // /proc files are regular files whose reads are generated, not what was written: a
    // busy writer of one is never held, so the key in its write is still seen.
    let mut d = Daemon::start("h-proc");
    let (secret, text) = secret("github-pat");
    let key = keyfile(&d.scratch(), &text);
    let script = format!(
        r#"
import os, sys, time
key = open(sys.argv[1]).read()
fd = os.open("/proc/self/comm", os.O_WRONLY)
for i in range({WARMUP}):
    os.write(fd, b"w%d" % i)
time.sleep(0.5)
os.write(fd, key.encode())
"#
    );
    let out = d.scratch().join("unused");
    let pid = run(&script, &key, &out);
    let a = wait_finding(
        &d,
        &fingerprint(&secret),
        pid,
        "the key written to /proc/self/comm",
    );
    assert_eq!(s(&a, "source"), "file", "{a:#}");
    assert_eq!(
        a.get("by_reference"),
        Some(&Value::Bool(false)),
        "a /proc file must not be held: {a:#}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn held_key_from_a_writer_that_goes_quiet_is_found_while_it_runs() {
    // The kernel joins a thread's writes to a held file into a run and sends it when the
    // thread moves on; a writer that stops mid-run (a service that logged the key, then
    // idles) sends nothing, so the daemon reads its run from the kernel map.
    let mut d = Daemon::start("h-quiet");
    let (secret, text) = secret("anthropic-api-key");
    let key = keyfile(&d.scratch(), &text);
    let out = d.scratch().join("service.log");
    let script = log_writer(
        "w",
        r#"time.sleep(0.5)
f.write("INFO connecting\n")
f.write("DEBUG client key=" + key + " timeout=30\n")
time.sleep(60)
"#,
    );
    let mut c = Reaped(
        python()
            .arg("-c")
            .arg(&script)
            .arg(&key)
            .arg(&out)
            .spawn()
            .unwrap(),
    );
    let pid = c.0.id();
    let a = wait_finding(&d, &fingerprint(&secret), pid, "the key of a quiet writer");
    assert!(
        c.0.try_wait().unwrap().is_none(),
        "found only once the writer exited: the quiet run was not read"
    );
    check(&a, &secret, "anthropic-api-key", pid, &out);
    drop(c);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}
