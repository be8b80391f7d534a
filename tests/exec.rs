//! Exec path, end to end: the real daemon with the real eBPF programs sees secrets in the
//! argv and environment of real programs and reports each with rule, source, fingerprint,
//! pid and comm. Every test ends by checking nothing leakwatch wrote holds the plaintext.
use std::process::{Command, Stdio};

use leakwatch_tests::*;

#[test]
fn secret_in_env_of_env_true() {
    let mut d = Daemon::start("env");
    let (secret, _) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let st = Command::new("env")
        .arg(format!("ANTHROPIC_API_KEY={secret}"))
        .arg("/bin/true")
        .spawn()
        .unwrap();
    let pid = st.id() as u64;
    let mut st = st;
    assert!(st.wait().unwrap().success());
    // `env` gets it as an argument, then /bin/true gets it in its environment.
    let a = d.wait_alert("argv of env", |a| {
        s(a, "fingerprint") == fp && s(a, "source") == "argv"
    });
    assert_eq!(s(&a, "rule"), "anthropic-api-key");
    assert_eq!(n(&a, "pid"), pid);
    assert_eq!(s(&a, "comm"), "env");
    assert_eq!(s(&a, "kind"), "finding");
    let e = d.wait_alert("env of true", |a| {
        s(a, "fingerprint") == fp && s(a, "source") == "env"
    });
    assert_eq!(s(&e, "rule"), "anthropic-api-key");
    assert_eq!(n(&e, "pid"), pid);
    assert_eq!(s(&e, "comm"), "true");
    assert_eq!(s(&e, "var"), "ANTHROPIC_API_KEY");
    assert_eq!(n(&e, "ppid"), std::process::id() as u64);
    assert!(s(&e, "redacted").len() < 16);
    assert!(
        e.get("unit").is_some(),
        "unit must be present (null when none)"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn bearer_token_in_curl_argv() {
    let mut d = Daemon::start("curl");
    let (secret, _) = secret("github-pat");
    let fp = fingerprint(&secret);
    let mut c = Command::new("curl")
        .args(["-s", "-m", "2", "-H"])
        .arg(format!("Authorization: Bearer {secret}"))
        .arg("http://127.0.0.1:9/")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id() as u64;
    let _ = c.wait();
    let a = d.wait_alert("curl argv", |a| s(a, "fingerprint") == fp);
    assert_eq!(s(&a, "rule"), "github-pat");
    assert_eq!(s(&a, "source"), "argv");
    assert_eq!(n(&a, "pid"), pid);
    assert_eq!(s(&a, "comm"), "curl");
    assert_eq!(n(&a, "arg_index"), 5);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn secret_in_the_200th_env_var() {
    let mut d = Daemon::start("env200");
    let (secret, _) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let mut cmd = Command::new("/bin/true");
    cmd.env_clear();
    let mut rng = Rng::from_time();
    for i in 0..260 {
        if i == 199 {
            cmd.env("VAR_199_OPENAI", &secret);
        } else {
            cmd.env(format!("VAR_{i:03}"), rng.string(b"abcdefghij", 40));
        }
    }
    let mut c = cmd.spawn().unwrap();
    let pid = c.id() as u64;
    let _ = c.wait();
    let a = d.wait_alert("200th env var", |a| s(a, "fingerprint") == fp);
    assert_eq!(s(&a, "rule"), "openai-project-key");
    assert_eq!(s(&a, "source"), "env");
    assert_eq!(s(&a, "var"), "VAR_199_OPENAI");
    assert_eq!(n(&a, "pid"), pid);
    assert_eq!(s(&a, "comm"), "true");
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn pem_key_of_3_kib_in_env() {
    let mut d = Daemon::start("pem");
    let mut rng = Rng::from_time();
    let pem = leakwatch::detect::samples::pem(&mut rng, "RSA PRIVATE KEY", 48);
    assert!(pem.len() > 3 * 1024, "PEM is {} bytes", pem.len());
    let fp = pem_fingerprint(&pem);
    let mut c = Command::new("/bin/true")
        .env("TLS_KEY", &pem)
        .spawn()
        .unwrap();
    let pid = c.id() as u64;
    let _ = c.wait();
    let a = d.wait_alert("PEM in env", |a| s(a, "fingerprint") == fp);
    assert_eq!(s(&a, "rule"), "private-key");
    assert_eq!(s(&a, "source"), "env");
    assert_eq!(s(&a, "var"), "TLS_KEY");
    assert_eq!(n(&a, "pid"), pid);
    d.stop();
    // Each base64 line alone would also be a leak of the key; check the longest ones.
    let lines: Vec<&str> = pem.lines().filter(|l| l.len() == 64).collect();
    let mut all = vec![pem.as_str()];
    all.extend(lines);
    d.assert_no_plaintext(&all);
}

#[test]
fn grandchild_inherits_and_is_reported_with_lineage() {
    let mut d = Daemon::start("lineage");
    let (secret, _) = secret("stripe-secret-key");
    let fp = fingerprint(&secret);
    // Outer bash forks a bash, which forks /bin/true; `; exit 0` keeps bash from exec'ing
    // its last command in place, so there are three processes.
    let mut c = Command::new("bash")
        .args(["-c", "bash -c '/bin/true; exit 0'; exit 0"])
        .env("PAYMENTS_KEY", &secret)
        .spawn()
        .unwrap();
    let top = c.id() as u64;
    assert!(c.wait().unwrap().success());
    let a = d.wait_alert("outer bash", |a| {
        s(a, "fingerprint") == fp && n(a, "pid") == top
    });
    assert_eq!(s(&a, "comm"), "bash");
    let b = d.wait_alert("child bash", |a| {
        s(a, "fingerprint") == fp && n(a, "ppid") == top
    });
    assert_eq!(s(&b, "comm"), "bash");
    let child = n(&b, "pid");
    let g = d.wait_alert("grandchild", |a| {
        s(a, "fingerprint") == fp && n(a, "ppid") == child
    });
    assert_eq!(s(&g, "comm"), "true");
    assert_eq!(s(&g, "rule"), "stripe-secret-key");
    assert_eq!(s(&g, "source"), "env");
    assert_ne!(n(&g, "pid"), child);
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn oversized_exec_is_reported_as_truncated_not_dropped() {
    let mut d = Daemon::start("trunc");
    let mut rng = Rng::from_time();
    let marker = format!("LWTRUNC{}", rng.string(b"ABCDEFGH", 12));
    // 40 strings of 4 KiB = 160 KiB of env: more than one exec record carries (128 KiB).
    let mut c = Command::new("/bin/true");
    c.env(&marker, "1");
    for i in 0..40 {
        c.env(format!("BIG_{i}"), rng.string(b"abcdefghijklmnop", 4096));
    }
    let mut c = c.spawn().unwrap();
    let pid = c.id() as u64;
    let _ = c.wait();
    let a = d.wait_alert("truncation", |a| {
        s(a, "kind") == "lost" && n(a, "pid") == pid
    });
    assert_eq!(s(&a, "reason"), "exec_capture_truncated");
    assert!(n(&a, "bytes_dropped") > 20_000, "{a}");
    assert!(d.scrape().contains("leakwatch_exec_truncated_total"));
    d.stop();
}

/// `execvp` tries each PATH entry: the attempts that found no program are not findings;
/// the exec that ran is, once.
#[test]
fn failed_path_search_attempts_are_not_reported() {
    let mut d = Daemon::start("execvp");
    let (secret, _) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let tag = std::process::id();
    let path = format!("/lw-nonexist-{tag}-a:/lw-nonexist-{tag}-b:/usr/bin:/bin");
    let mut c = Command::new("/usr/bin/env")
        .env("LW_AGENT_KEY", &secret)
        .arg(format!("PATH={path}"))
        .arg("true")
        .spawn()
        .unwrap();
    let pid = c.id() as u64;
    assert!(c.wait().unwrap().success());
    let ran = d.wait_alert("the exec that ran", |a| {
        s(a, "fingerprint") == fp && n(a, "pid") == pid && s(a, "filename") == "/usr/bin/true"
    });
    assert_eq!(s(&ran, "source"), "env");
    // Held attempts are reported after 200 ms unless replaced: wait past that.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let attempts: Vec<String> = d
        .alerts()
        .into_iter()
        .filter(|a| s(a, "fingerprint") == fp && n(a, "pid") == pid)
        .map(|a| s(&a, "filename").to_string())
        .collect();
    assert!(
        attempts.iter().all(|f| !f.contains("lw-nonexist")),
        "failed attempts reported: {attempts:?}"
    );
    assert_eq!(
        attempts.iter().filter(|f| *f == "/usr/bin/true").count(),
        1,
        "{attempts:?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

/// 9,000 arguments are captured whole (the record is read from the new image's argument
/// area, not string by string); what does not fit the record (160 KiB of environment is
/// past its 128 KiB) is read from the new image's /proc entries and scanned: a key past
/// the capture is still found, and nothing is "lost".
#[test]
fn a_key_past_the_capture_is_found_from_proc() {
    let mut d = Daemon::start("past-capture");
    let (in_argv, _) = secret("openai-project-key");
    let (in_env, _) = secret("anthropic-api-key");
    // sh keeps running (it waits for sleep) with every argument in its /proc cmdline.
    let mut c = Command::new("/bin/sh");
    c.args(["-c", "sleep 0.8; true", "sh"]);
    for _ in 0..9000 {
        c.arg("0");
    }
    c.arg(format!("--api-key={in_argv}"));
    let mut rng = Rng::from_time();
    for i in 0..40 {
        c.env(format!("PAD_{i:02}"), rng.string(b"abcdefghijklmnop", 4096));
    }
    c.env("ZZ_AGENT_KEY", &in_env);
    let mut child = c.spawn().unwrap();
    let pid = child.id() as u64;
    for (key, source, from) in [(&in_argv, "argv", ""), (&in_env, "env", "proc")] {
        let fp = fingerprint(key);
        let a = d.wait_alert(source, |a| s(a, "fingerprint") == fp && n(a, "pid") == pid);
        assert_eq!(s(&a, "source"), source, "{a:#}");
        assert_eq!(s(&a, "from"), from, "{a:#}");
        assert_eq!(s(&a, "comm"), "sh", "{a:#}");
        if source == "argv" {
            assert_eq!(n(&a, "arg_index"), 9004, "{a:#}");
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(
        !d.alerts()
            .iter()
            .any(|a| s(a, "kind") == "lost" && n(a, "pid") == pid),
        "a recovered exec was reported lost"
    );
    assert!(metric(&d.scrape(), "leakwatch_exec_recovered_total", &[]) >= 1.0);
    d.stop();
    d.assert_no_plaintext(&[&in_argv, &in_env]);
}
