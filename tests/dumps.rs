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
