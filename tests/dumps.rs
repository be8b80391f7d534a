//! Crash dumps and diagnostic reports written by real runtimes, with the real probes: a
//! key in a Node diagnostic report and in a JVM fatal error log is a `crash_dump`
//! finding naming the dump and the crashed process. Every daemon sees the whole host:
//! alerts are matched only on this test's fingerprints.
use std::{fs, process::Command};

use leakwatch_tests::*;
use serde_json::Value;

fn dump_finding(d: &Daemon, fp: &str, pid: u32, what: &str) -> Value {
    wait_until(20, what, || {
        d.findings(fp)
            .into_iter()
            .find(|a| s(a, "source") == "crash_dump" && n(a, "pid") == pid as u64)
    })
}

#[test]
fn dump_node_report_with_the_key_in_its_environment() {
    let mut d = Daemon::start("dump-node");
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    // Not the default name: the report is known by its content.
    let out = d.scratch().join("diag.json");
    let mut c = Command::new("node")
        .arg("-e")
        .arg("process.report.writeReport(process.argv[1])")
        .arg(&out)
        .env("OPENAI_API_KEY", &text)
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 60, "node").success());
    assert!(fs::read_to_string(&out).unwrap().contains(&secret));
    let a = dump_finding(&d, &fp, pid, "the key in the node report");
    assert_eq!(
        s(&a, "path"),
        fs::canonicalize(&out).unwrap().to_str().unwrap(),
        "{a:#}"
    );
    assert_eq!(s(&a, "comm"), "node", "{a:#}");
    assert_eq!(s(&a, "dump"), "node-report", "{a:#}");
    assert!(
        n(&a, "credentials_at_exec") >= 1,
        "it had the key in its environment: {a:#}"
    );
    assert_eq!(a["frozen_at_exec"], false, "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn dump_jvm_fatal_error_log_with_the_key_in_a_property() {
    let mut d = Daemon::start("dump-jvm");
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let dir = d.scratch();
    fs::write(
        dir.join("Crash.java"),
        "public class Crash { public static void main(String[] a) { \
         java.util.List<long[]> l = new java.util.ArrayList<>(); \
         while (true) l.add(new long[1 << 20]); } }\n",
    )
    .unwrap();
    // Out of memory on purpose: the JVM writes hs_err_pid<pid>.log and aborts (no core).
    let mut c = Command::new("bash")
        .arg("-c")
        .arg(
            "ulimit -c 0; exec java -Xmx32m -XX:+CrashOnOutOfMemoryError \
             -XX:ErrorFile=\"$1/hs_err_pid%p.log\" -Dapp.token=\"$2\" Crash.java",
        )
        .arg("lw-jvm")
        .arg(&dir)
        .arg(&text)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    let st = wait_exit(&mut c, 60, "the crashing JVM");
    assert!(!st.success(), "the JVM was meant to crash");
    let log = dir.join(format!("hs_err_pid{pid}.log"));
    assert!(fs::read_to_string(&log).unwrap().contains(&secret));
    let a = dump_finding(&d, &fp, pid, "the key in hs_err");
    assert_eq!(
        s(&a, "path"),
        fs::canonicalize(&log).unwrap().to_str().unwrap(),
        "{a:#}"
    );
    assert_eq!(s(&a, "comm"), "java", "{a:#}");
    assert_eq!(s(&a, "dump"), "jvm-hs-err", "{a:#}");
    assert!(
        n(&a, "credentials_at_exec") >= 1,
        "the key was in its argv: {a:#}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// The kernel writes a core with no write syscall: the daemon notices the dumping exit,
/// finds the file from a file `core_pattern` and scans it.
#[test]
fn dump_core_file_from_python_abort_with_the_key_in_its_environment() {
    core_file_from_python_abort(Daemon::start("dump-core-file"));
}

/// Kernels whose `sched_process_exit` record has no `group_dead` field: the kernel program
/// tells the process's last thread by its thread group's live count instead, and a core is
/// still noticed (forced here, where the kernel has the field).
#[test]
fn dump_core_file_is_noticed_when_the_last_thread_is_told_by_the_live_count() {
    core_file_from_python_abort(forced_exit_path(
        "signal",
        "told by its thread group's live count",
    ));
}

/// Kernels whose record has `group_dead` at another offset than here: read with a helper
/// call (forced here).
#[test]
fn dump_core_file_is_noticed_when_group_dead_is_read_with_a_helper() {
    core_file_from_python_abort(forced_exit_path("helper", "read with a helper call"));
}

/// A daemon whose exit program takes another kernel's path (`LEAKWATCH_GROUP_DEAD`), checked
/// in use by its log line.
fn forced_exit_path(mode: &str, says: &str) -> Daemon {
    let d = Daemon::start_with_env(
        &format!("dump-core-{mode}"),
        &[("LEAKWATCH_GROUP_DEAD", mode)],
    );
    let log = fs::read_to_string(d.stderr_path()).unwrap();
    assert!(log.contains(says), "{mode} path not in use: {log}");
    d
}

fn core_file_from_python_abort(mut d: Daemon) {
    let (secret, text) = secret("stripe-secret-key");
    let fp = fingerprint(&secret);
    let cores = d.scratch().join("cores");
    fs::create_dir_all(&cores).unwrap();
    let _pattern = CorePattern::set(&format!("{}/core.%e.%p.%t", cores.display()));
    let (pid, core) = python_abort(&cores, ("STRIPE_API_KEY", &text));
    let a = dump_finding(&d, &fp, pid, "the key in the core file");
    assert_eq!(s(&a, "path"), core.to_str().unwrap(), "{a:#}");
    assert_eq!(s(&a, "dump"), "core", "{a:#}");
    assert_eq!(s(&a, "dump_via"), "file", "{a:#}");
    assert_eq!(s(&a, "comm"), "python3", "{a:#}");
    assert_eq!(n(&a, "signal"), 6, "SIGABRT: {a:#}");
    assert!(n(&a, "credentials_at_exec") >= 1, "{a:#}");
    assert!(d.metric("leakwatch_core_dumps_total", &[("outcome", "scanned")]) >= 1.0);
    fs::remove_file(&core).unwrap();
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// Python aborting with `env` set and core dumps on, under a file `core_pattern` naming
/// `cores`: its pid and core file.
fn python_abort(cores: &std::path::Path, env: (&str, &str)) -> (u32, std::path::PathBuf) {
    let mut c = Command::new("bash")
        .arg("-c")
        .arg("ulimit -c unlimited; exec python3 -c 'import os; os.abort()'")
        .env(env.0, env.1)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    let st = wait_exit(&mut c, 60, "python aborting");
    assert!(!st.success(), "python was meant to abort");
    let core = wait_until(10, "the core file", || {
        fs::read_dir(cores)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(&format!(".{pid}.")))
    });
    (pid, core)
}

/// The core scanner's thread outlives a reload: a core noticed after SIGHUP is scanned
/// with the rules the reload brought (it kept the rules in force when it started).
#[test]
fn dump_core_file_is_scanned_with_the_rules_of_a_reload() {
    let mut d = Daemon::start_with_config("dump-core-reload", "dedupe_seconds = 0\n");
    let cores = d.scratch().join("cores");
    fs::create_dir_all(&cores).unwrap();
    let _pattern = CorePattern::set(&format!("{}/core.%e.%p.%t", cores.display()));
    // A first core starts the scanner thread under the rules of the start.
    let scanned = |d: &Daemon| d.metric("leakwatch_core_dumps_total", &[("outcome", "scanned")]);
    let before = scanned(&d);
    let (_, first) = python_abort(&cores, ("LW_NOTHING", "1"));
    wait_until(20, "the first core scanned", || {
        (scanned(&d) > before).then_some(())
    });
    fs::remove_file(first).unwrap();
    // A rule for tokens only this test makes, brought by SIGHUP.
    let prefix = format!("lwc{}_", random_alnum(6).to_lowercase());
    let id = "core-reload-token";
    fs::write(
        d.scratch().join("leakwatch.toml"),
        format!("dedupe_seconds = 0\n{}", token_rule(id, &prefix)),
    )
    .unwrap();
    let daemon = d.child.as_ref().expect("daemon running").id();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(daemon as i32, libc::SIGHUP) }, 0);
    wait_until(15, "the reload to be applied", || {
        (d.metric("leakwatch_config_reloads_total", &[]) >= 1.0).then_some(())
    });
    let token = format!("{prefix}{}", random_alnum(32));
    let (pid, core) = python_abort(&cores, ("LW_CORE_TOKEN", &token));
    let a = dump_finding(
        &d,
        &fingerprint(&token),
        pid,
        "the new rule's finding in the core",
    );
    assert_eq!(s(&a, "rule"), id, "{a:#}");
    assert_eq!(s(&a, "path"), core.to_str().unwrap(), "{a:#}");
    fs::remove_file(&core).unwrap();
    d.stop();
    d.assert_no_plaintext(&[&token]);
}

/// `cp` copies with `copy_file_range`: the bytes never pass through user memory, so the
/// daemon reads the copied range of the source and reports the key at the destination.
#[test]
fn copy_cp_of_a_file_holding_a_key_alerts_at_the_destination() {
    let mut d = Daemon::start("copy-cp");
    let (secret, text) = secret("github-pat");
    let fp = fingerprint(&secret);
    let dir = d.scratch();
    let src = dir.join("creds.env");
    let dst = dir.join("copy.env");
    // Padding first, so the key sits past the start of the copied range.
    let body = format!("{}\nGITHUB_TOKEN={text}\n", "# settings\n".repeat(500));
    let at = body.find(&secret).unwrap() as u64;
    fs::write(&src, body).unwrap();
    let mut c = Command::new("cp").arg(&src).arg(&dst).spawn().unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 20, "cp").success());
    let dst = fs::canonicalize(&dst).unwrap();
    let a = wait_until(20, "the key copied by cp", || {
        d.findings(&fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && s(a, "source") == "file")
    });
    assert_eq!(s(&a, "path"), dst.to_str().unwrap(), "{a:#}");
    assert_eq!(s(&a, "comm"), "cp", "{a:#}");
    assert_eq!(s(&a, "call"), "copy_file_range", "{a:#}");
    let src = fs::canonicalize(&src).unwrap();
    assert_eq!(s(&a, "copied_from"), src.to_str().unwrap(), "{a:#}");
    assert_eq!(n(&a, "offset"), at, "the key's offset in the file: {a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// python `socket.sendfile` uses `sendfile`: the key reaches the socket from the file
/// without a send syscall carrying it.
#[test]
fn copy_python_sendfile_of_a_file_holding_a_key_alerts_with_the_remote() {
    let mut d = Daemon::start("copy-sendfile");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let src = d.scratch().join("payload.json");
    fs::write(&src, format!("{{\"api_key\": \"{text}\"}}\n")).unwrap();
    let peer = TcpPeer::start();
    let mut c = python()
        .arg("-c")
        .arg(
            "import socket, sys\n\
             host, port = sys.argv[2].rsplit(':', 1)\n\
             s = socket.create_connection((host, int(port)))\n\
             with open(sys.argv[1], 'rb') as f: s.sendfile(f)\n\
             s.close()\n",
        )
        .arg(&src)
        .arg(peer.addr())
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 20, "python sendfile").success());
    let (got, _) = peer.next_end(10);
    assert!(contains(&got, secret.as_bytes()), "the peer got the file");
    let a = wait_until(20, "the key sent with sendfile", || {
        d.findings(&fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && s(a, "source") == "socket")
    });
    assert_eq!(s(&a, "remote"), peer.addr(), "{a:#}");
    assert_eq!(s(&a, "call"), "sendfile", "{a:#}");
    let src = fs::canonicalize(&src).unwrap();
    assert_eq!(s(&a, "copied_from"), src.to_str().unwrap(), "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// node (libuv) with `UV_USE_IO_URING=1` writes files through io_uring from its
/// `iou-sqp` thread: no write syscall carries the key, the ring submission does.
#[test]
fn io_uring_node_file_write_is_captured() {
    let mut d = Daemon::start("io-uring-node");
    let (secret, text) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let out = d.scratch().join("uring.log");
    let mut c = Command::new("node")
        .arg("-e")
        .arg(
            "const fs = require('fs');\n\
             fs.open(process.argv[1], 'w', (e, fd) => {\n\
               if (e) throw e;\n\
               fs.write(fd, 'OPENAI_API_KEY=' + process.argv[2] + '\\n', (e) => {\n\
                 if (e) throw e; fs.close(fd, () => {}); });\n\
             });",
        )
        .arg(&out)
        .arg(&text)
        .env("UV_USE_IO_URING", "1")
        .spawn()
        .unwrap();
    let pid = c.id();
    assert!(wait_exit(&mut c, 60, "node").success());
    assert!(fs::read_to_string(&out).unwrap().contains(&secret));
    let a = wait_until(20, "the key written through io_uring", || {
        d.findings(&fp)
            .into_iter()
            .find(|a| n(a, "pid") == pid as u64 && s(a, "source") == "file")
    });
    assert_eq!(
        s(&a, "path"),
        fs::canonicalize(&out).unwrap().to_str().unwrap(),
        "{a:#}"
    );
    assert_eq!(s(&a, "probe"), "io_uring_submit_req", "{a:#}");
    assert_eq!(s(&a, "comm"), "node", "{a:#}");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}
