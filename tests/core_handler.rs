//! `leakwatch core-handler`, the core_pattern pipe handler: a real python crash piped
//! through it by the kernel (the key found, the core kept unchanged where the previous
//! pattern said, as the crashed user, obeying RLIMIT_CORE), a 64 MiB core passed byte for
//! byte to a previous pipe handler, a previous handler that stalls (given up in time, the
//! key still found), install/uninstall restoring the pattern exactly, and bad arguments.
//! Every test that touches the host's core_pattern holds `CorePattern` (restored on drop,
//! even when the test fails).
use std::{
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What leakwatch's pattern passes after `core-handler` (kept in step with
/// `core_handler::pattern::OURS`, which a unit test pins).
const OURS: &str = leakwatch::core_handler::pattern::OURS;

/// A short path to the binary and the state dir: core_pattern holds 127 bytes, and the
/// test paths are long. The link is named `leakwatch`, so the kernel's comm for the
/// handler is the real one.
struct Short(PathBuf);

impl Short {
    fn new(tag: &str, state: &Path) -> Short {
        let d = PathBuf::from(format!("/tmp/lwch.{}.{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink(bin(), d.join("leakwatch")).unwrap();
        std::os::unix::fs::symlink(state, d.join("s")).unwrap();
        Short(d)
    }

    fn pattern(&self) -> String {
        let p = format!(
            "|{0}/leakwatch core-handler --state-dir {0}/s {OURS}",
            self.0.display()
        );
        assert!(p.len() <= 127, "test pattern too long: {p}");
        p
    }
}

impl Drop for Short {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn settings(state: &Path, previous: &str, socket: &Path, extra: &str) {
    fs::create_dir_all(state).unwrap();
    let text = format!(
        "previous = {}\nsocket = {}\n{extra}",
        Value::from(previous),
        Value::from(socket.to_str().unwrap())
    );
    fs::write(state.join("core-handler.toml"), text).unwrap();
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The handler's report of `pid`'s core; and no finding of the key anywhere else than
/// the crashed process (the handler's own copies of the core are not leaks).
fn crash_finding(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    let a = wait_until(20, what, || {
        d.findings(fp).into_iter().find(|a| {
            s(a, "source") == "crash_dump"
                && n(a, "pid") == pid as u64
                && s(a, "dump_via") == "pipe"
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    for other in d.findings(fp) {
        assert_ne!(
            s(&other, "comm"),
            "leakwatch",
            "the handler reported: {other:#}"
        );
    }
    a
}

/// Runs python3 aborting under `ulimit -c limit` (through `wrap`, a command prefix) with
/// the key in its environment; its pid.
fn python_abort(limit: &str, wrap: &str, env: (&str, &str), cwd: &Path) -> u32 {
    let mut c = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -c {limit}; exec {wrap} /usr/bin/python3 -c 'import os; os.abort()'"
        ))
        .env(env.0, env.1)
        .current_dir(cwd)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    let st = wait_exit(&mut c, 60, "python aborting");
    assert!(!st.success(), "python was meant to abort");
    pid
}

#[test]
fn core_handler_python_abort_is_scanned_and_kept_unchanged() {
    let mut d = Daemon::start("core-pipe");
    let (secret, text) = secret("stripe-secret-key");
    let fp = fingerprint(&secret);
    let cores = d.scratch().join("cores");
    fs::create_dir_all(&cores).unwrap();
    settings(
        &d.state_dir(),
        &format!("{}/core.%e.%p", cores.display()),
        &d.socket(),
        "",
    );
    let short = Short::new("a", &d.state_dir());
    let guard = CorePattern::set(&short.pattern());
    let pid = python_abort("unlimited", "", ("STRIPE_API_KEY", &text), Path::new("/"));
    let a = crash_finding(&d, &fp, pid, "the key in the piped core");
    drop(guard);
    let core = cores.join(format!("core.python3.{pid}"));
    assert_eq!(s(&a, "path"), core.to_str().unwrap(), "{a:#}");
    assert_eq!(s(&a, "dump"), "core", "{a:#}");
    assert_eq!(s(&a, "fingerprint"), fp, "{a:#}");
    assert_eq!(s(&a, "comm"), "python3", "{a:#}");
    assert_eq!(n(&a, "signal"), 6, "SIGABRT: {a:#}");
    assert!(n(&a, "credentials_at_exec") >= 1, "{a:#}");
    let bytes = fs::read(&core).unwrap();
    assert!(
        bytes.starts_with(b"\x7fELF"),
        "the kept file is an ELF core"
    );
    assert!(
        contains(&bytes, secret.as_bytes()),
        "the kept core is the process's memory, unchanged"
    );
    assert_eq!(n(&a, "bytes"), bytes.len() as u64, "{a:#}");
    let m = fs::metadata(&core).unwrap();
    assert_eq!(m.mode() & 0o777, 0o600);
    fs::remove_file(&core).unwrap();
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A relative pattern lands in the crashed process's cwd, owned by its user, as the
/// kernel writes it; with `ulimit -c 0` no file is written but the key is still found.
#[test]
fn core_handler_writes_as_the_crashed_user_and_obeys_rlimit_core() {
    let mut d = Daemon::start("core-pipe-user");
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let cwd = d.scratch().join("cwd");
    fs::create_dir_all(&cwd).unwrap();
    fs::set_permissions(&cwd, fs::Permissions::from_mode(0o777)).unwrap();
    settings(&d.state_dir(), "core.%e.%p", &d.socket(), "");
    let short = Short::new("u", &d.state_dir());
    let guard = CorePattern::set(&short.pattern());
    let pid = python_abort(
        "unlimited",
        "setpriv --reuid 65534 --regid 65534 --clear-groups",
        ("GITHUB_TOKEN", &text),
        &cwd,
    );
    let a = crash_finding(&d, &fp, pid, "the key in the nobody core");
    let core = cwd.join(format!("core.python3.{pid}"));
    assert_eq!(s(&a, "path"), core.to_str().unwrap(), "{a:#}");
    assert_eq!(n(&a, "uid"), 65534, "{a:#}");
    let m = fs::metadata(&core).unwrap();
    assert_eq!(
        (m.uid(), m.gid()),
        (65534, 65534),
        "owned by the crashed user"
    );
    assert!(fs::read(&core).unwrap().starts_with(b"\x7fELF"));
    fs::remove_file(&core).unwrap();
    // RLIMIT_CORE 0: the kernel would write no file; the pipe still shows leakwatch the core.
    let pid = python_abort("0", "", ("GITHUB_TOKEN", &text), &cwd);
    let a = crash_finding(&d, &fp, pid, "the key in a core with RLIMIT_CORE 0");
    drop(guard);
    assert!(a.get("path").is_none(), "no file was kept: {a:#}");
    assert_eq!(
        fs::read_dir(&cwd).unwrap().count(),
        0,
        "no core file with ulimit -c 0"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A generated core: random-ish bytes, an ELF magic, and `line` at `at`.
fn synthetic_core(len: usize, at: usize, line: &str) -> Vec<u8> {
    let mut rng = Rng::from_time();
    let mut data = vec![0u8; len];
    for w in data.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
    data[..4].copy_from_slice(b"\x7fELF");
    data[at..at + line.len()].copy_from_slice(line.as_bytes());
    data
}

/// Runs the handler as the kernel would (stdin a pipe) with `values` for the pattern.
fn handler(state: &Path, values: &[String], core: &[u8]) -> (Output, Duration) {
    let t0 = Instant::now();
    let mut c = Command::new(bin())
        .arg("core-handler")
        .arg("--state-dir")
        .arg(state)
        .args(values)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = core.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = c.wait_with_output().unwrap();
    feeder.join().unwrap();
    (out, t0.elapsed())
}

fn values(pid: u32, comm: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    [
        pid.to_string(),
        pid.to_string(),
        "11".into(),
        now.to_string(),
        "0".into(),
        "0".into(),
        "1".into(),
        u64::MAX.to_string(),
        "1".into(),
        "box".into(),
        comm.into(),
    ]
    .to_vec()
}

#[test]
fn core_handler_passes_64_mib_byte_for_byte_to_the_previous_pipe_handler() {
    let mut d = Daemon::start("core-pass");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();
    let got = scratch.join("got");
    let recv = scratch.join("recv.sh");
    install_exe(&recv, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$0.args\"\nenv > \"$0.env\"\npwd >> \"$0.env\"\nexec cat > \"$1\"\n".as_bytes());
    settings(
        &d.state_dir(),
        &format!("|{} {} %p %e %s", recv.display(), got.display()),
        &d.socket(),
        "",
    );
    // The key straddles the 1 MiB boundary of the scan buffers, 32 MiB in.
    let line = format!("ANTHROPIC_API_KEY={text}\0");
    let at = (32 << 20) - 20;
    let core = synthetic_core(64 << 20, at, &line);
    let key_at = (at + line.find(&secret).unwrap()) as u64;
    let crashed = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = crashed.0.id();
    let (out, took) = handler(&d.state_dir(), &values(pid, "my app"), &core);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {err}", out.status);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let passed = fs::read(&got).unwrap();
    assert_eq!(passed.len(), core.len());
    assert_eq!(
        sha(&passed),
        sha(&core),
        "the previous handler got the core unchanged"
    );
    // Split on spaces before expansion: "my app" is one argument; the kernel's empty
    // environment and cwd `/`.
    let args = fs::read_to_string(recv.with_extension("sh.args")).unwrap();
    assert_eq!(
        args,
        format!("{}\n{pid}\nmy app\n11\n", got.display()),
        "previous handler's argv"
    );
    let env = fs::read_to_string(recv.with_extension("sh.env")).unwrap();
    assert!(
        !env.contains("LEAKWATCH_BIN"),
        "the handler's environment leaked: {env}"
    );
    assert!(env.ends_with("/\n"), "cwd /: {env}");
    let a = crash_finding(&d, &fp, pid, "the key in the 64 MiB core");
    assert_eq!(n(&a, "offset"), key_at, "{a:#}");
    assert_eq!(
        s(&a, "path"),
        format!("|{} {} {pid} my app 11", recv.display(), got.display()),
        "{a:#}"
    );
    assert_eq!(n(&a, "bytes"), core.len() as u64, "{a:#}");
    eprintln!("64 MiB through the handler in {took:?}");
    drop(passed);
    fs::remove_file(&got).unwrap();
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// A previous handler that never reads: given up after the time limit, the rest still
/// drained and scanned (the key is past what it could take), the problem reported; the
/// daemon is down, so the alert goes straight to the alert file.
#[test]
fn core_handler_gives_up_on_a_stalled_previous_handler_in_time() {
    let dir = TempDir::new("core-stall");
    let scratch = dir.with_extension("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let stall = scratch.join("stall.sh");
    let pidfile = scratch.join("stall.pid");
    install_exe(
        &stall,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 600\n",
            pidfile.display()
        )
        .as_bytes(),
    );
    let alerts = dir.join("alerts.jsonl");
    let state = dir.join("state");
    settings(
        &state,
        &format!("|{}", stall.display()),
        &dir.join("no-daemon.sock"),
        &format!(
            "alerts = {}\nforward_timeout = \"1s\"\n",
            Value::from(alerts.to_str().unwrap())
        ),
    );
    let line = format!("OPENAI_API_KEY={text}\n");
    let core = synthetic_core(16 << 20, (16 << 20) - 4096, &line);
    let crashed = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = crashed.0.id();
    let (out, took) = handler(&state, &values(pid, "stalls"), &core);
    if let Ok(p) = fs::read_to_string(&pidfile) {
        // SAFETY: kill(2) on the stalled handler this test started.
        unsafe { libc::kill(p.trim().parse().unwrap_or(0), libc::SIGKILL) };
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the core was not passed on: {err}"
    );
    assert!(
        took < Duration::from_secs(8),
        "1 s limit + slack, took {took:?}: {err}"
    );
    assert!(
        err.contains("the previous handler stopped reading after"),
        "{err}"
    );
    assert!(err.contains("alerts appended to"), "{err}");
    let text = fs::read_to_string(&alerts).unwrap();
    let a: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|a| s(a, "fingerprint") == fp)
        .unwrap_or_else(|| panic!("no alert for the key: {text}"));
    assert_eq!(s(&a, "source"), "crash_dump", "{a:#}");
    assert_eq!(n(&a, "pid"), pid as u64, "{a:#}");
    assert_eq!(s(&a, "comm"), "stalls", "{a:#}");
    assert_eq!(s(&a, "reported_by"), "core-handler", "{a:#}");
    assert!(
        a["problems"].to_string().contains("stopped reading after"),
        "{a:#}"
    );
    assert!(!text.contains(&secret), "plaintext in the alert file");
}

/// A frozen credential in a core is found by the daemon's frozen set (its state dir) and
/// reported with rule `frozen`, even when no rule knows its shape.
#[test]
fn core_handler_finds_a_frozen_credential() {
    let mut d = Daemon::start("core-frozen");
    let token = format!(
        "zq{}",
        Rng::from_time().string(b"abcdefghijklmnopqrstuvwxyz0123456789", 38)
    );
    let fp = fingerprint(&token);
    let out = freeze_with(&d, &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sink = d.scratch().join("sink.sh");
    install_exe(&sink, "#!/bin/sh\nexec cat >/dev/null\n".as_bytes());
    settings(
        &d.state_dir(),
        &format!("|{}", sink.display()),
        &d.socket(),
        "",
    );
    // No keyword next to it: only the frozen set can know it.
    let core = synthetic_core(1 << 20, 300_000, &format!("\0{token}\0"));
    let crashed = Reaped(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = crashed.0.id();
    let (out, _) = handler(&d.state_dir(), &values(pid, "holder"), &core);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = crash_finding(&d, &fp, pid, "the frozen token in the core");
    assert_eq!(s(&a, "rule"), "frozen", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&token]);
}

const COREDUMP: &str = "|/usr/lib/systemd/systemd-coredump %P %u %g %s %t 9223372036854775808 %h";

fn lw(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "leakwatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn core_handler_install_and_uninstall_restore_the_previous_pattern() {
    let root = TempDir::new("core-install");
    let file = root.join("proc/sys/kernel/core_pattern");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, format!("{COREDUMP}\n")).unwrap();
    let r = root.to_str().unwrap();
    lw(&["install", "--root", r, "--core-handler"]);
    let ours = fs::read_to_string(&file).unwrap();
    assert_eq!(
        ours.trim_end(),
        format!("|/usr/local/bin/leakwatch core-handler {OURS}")
    );
    let settings = root.join("var/lib/leakwatch/core-handler.toml");
    let st = fs::read_to_string(&settings).unwrap();
    assert!(st.contains("systemd-coredump"), "{st}");
    assert_eq!(fs::metadata(&settings).unwrap().mode() & 0o777, 0o600);
    let sysctl = root.join("etc/sysctl.d/60-leakwatch-core-handler.conf");
    let boot = fs::read_to_string(&sysctl).unwrap();
    assert!(
        boot.contains(&format!("kernel.core_pattern = {}", ours.trim_end())),
        "{boot}"
    );
    // Again: leakwatch's own pattern is never remembered as the previous one.
    let out = lw(&["install", "--root", r, "--core-handler"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("unchanged: core_pattern"), "{said}");
    assert_eq!(fs::read_to_string(&settings).unwrap(), st);
    lw(&["uninstall", "--root", r]);
    assert_eq!(fs::read_to_string(&file).unwrap().trim_end(), COREDUMP);
    assert!(!settings.exists());
    assert!(!sysctl.exists());
}

/// The same against the kernel's own file (`ROOT/proc` is the real /proc).
#[test]
fn core_handler_install_and_uninstall_on_the_real_core_pattern() {
    let root = TempDir::new("core-install-real");
    std::os::unix::fs::symlink("/proc", root.join("proc")).unwrap();
    let previous = "core.lwtest.%e.%p";
    let _guard = CorePattern::set(previous);
    let r = root.to_str().unwrap();
    lw(&["install", "--root", r, "--core-handler"]);
    let now = fs::read_to_string(CorePattern::PATH).unwrap();
    assert!(
        now.starts_with("|/usr/local/bin/leakwatch core-handler %P"),
        "{now}"
    );
    lw(&["uninstall", "--root", r]);
    assert_eq!(
        fs::read_to_string(CorePattern::PATH).unwrap().trim_end(),
        previous
    );
}

#[test]
fn core_handler_bad_arguments_are_one_sentence() {
    let state = TempDir::new("core-args");
    for args in [
        vec![],
        vec!["1".to_string(), "2".to_string()],
        values(1, "x")
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i == 2 { "SIGABRT".into() } else { v })
            .collect(),
    ] {
        let out = Command::new(bin())
            .arg("core-handler")
            .arg("--state-dir")
            .arg(&state)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains("core-handler"), "{err}");
    }
}
