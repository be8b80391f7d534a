//! The frozen set across restarts names the right credential: with two keys frozen, the
//! startup sweep's kill of a process holding the second carries the second's fingerprint,
//! and only the second entry counts the kill.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use leakwatch_tests::*;

fn freeze(d: &Daemon, secret: &str) {
    let out = freeze_with(d, secret, &[]);
    assert!(
        out.status.success(),
        "freeze failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kills(d: &Daemon, fp: &str) -> u64 {
    let v = d.status();
    v["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fingerprint"] == fp)
        .unwrap_or_else(|| panic!("{fp} is not frozen: {v}"))["kills"]
        .as_u64()
        .unwrap()
}

/// `kernel_hash_verified` of the first frozen entry in `status`.
fn verified(d: &Daemon) -> Option<bool> {
    let v = d.status();
    v["frozen"][0]["kernel_hash_verified"].as_bool()
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
    // Started while no daemon runs and nothing enforces (the pinned exec kill removed, as a
    // reboot would): nothing kills it at exec.
    remove_pins(&d.state_dir());
    let mut holder = Command::new("sleep")
        .arg("300")
        .env("PAYMENTS_KEY", &b)
        .spawn()
        .unwrap();
    let pid = holder.id() as u64;
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        holder.try_wait().unwrap().is_none(),
        "the holder died before the restart: the removed exec kill still ran"
    );
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

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let mut d = Daemon::start("state-lock");
    let out = Command::new(bin())
        .arg("daemon")
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--socket")
        .arg(d.dir.join("second.sock"))
        .args(["--metrics-addr", ""])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another leakwatch daemon") && err.contains("--state-dir"),
        "{err}"
    );
    d.stop();
    d.assert_no_plaintext(&[]);
}

/// A state file whose prefix holds the whole secret: the daemon starts, says so, rewrites
/// the file without it, and the credential is still enforced at exec.
#[test]
fn a_tampered_state_file_is_repaired_and_still_enforced() {
    let mut d = Daemon::start("state-tamper");
    let (k, _) = secret("openai-project-key");
    let fp = fingerprint(&k);
    freeze(&d, &k);
    d.stop();
    let path = d.state_dir().join("frozen.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["frozen"][0]["prefix"] = serde_json::json!(k);
    v["frozen"][0]["planted"] = serde_json::json!(true);
    std::fs::write(&path, v.to_string()).unwrap();
    d.restart();
    d.wait_alert("the prefix problem", |a| {
        s(a, "kind") == "state" && s(a, "problem").contains("prefix")
    });
    d.wait_alert("the unknown field", |a| {
        s(a, "kind") == "state" && s(a, "problem").contains("`planted`")
    });
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(&k), "the planted plaintext is still on disk");
    assert!(!text.contains("planted"));
    assert_eq!(kills(&d, &fp), 0);
    // Still frozen: an exec carrying it dies in the kernel.
    let st = Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .env("OPENAI_API_KEY", &k)
        .status()
        .unwrap();
    assert!(!st.success(), "an exec with the frozen key ran");
    d.stop();
    // The harness wrote the plaintext into the state file itself (the test's tampering);
    // what matters is that leakwatch's files no longer hold it, checked here.
    d.assert_no_plaintext(&[&k]);
}

/// A wrong kernel hash in the state file (it cannot be checked against a fingerprint):
/// the first exec carrying the key is killed from userspace, the hash is recomputed from
/// it, and the kernel blocks the next one itself.
#[test]
fn a_wrong_kernel_hash_is_repaired_by_the_first_exec_it_misses() {
    let mut d = Daemon::start("state-hash");
    let (k, _) = secret("anthropic-api-key");
    freeze(&d, &k);
    d.stop();
    let path = d.state_dir().join("frozen.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let right = v["frozen"][0]["kernel_hash"].as_u64().unwrap();
    v["frozen"][0]["kernel_hash"] = serde_json::json!(right ^ 1);
    std::fs::write(&path, v.to_string()).unwrap();
    d.restart();
    assert_eq!(
        verified(&d),
        Some(false),
        "a hash read from disk is only a claim"
    );
    let run = || {
        Command::new("/bin/sh")
            .args(["-c", "exit 0"])
            .env("ANTHROPIC_API_KEY", &k)
            .status()
            .unwrap()
    };
    let _ = run(); // may run briefly: userspace kills it right after exec
    d.wait_alert("the repaired hash", |a| {
        s(a, "kind") == "state" && s(a, "problem").contains("kernel hash was wrong")
    });
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["frozen"][0]["kernel_hash"].as_u64(), Some(right));
    assert_eq!(verified(&d), Some(true));
    let st = run();
    assert!(!st.success(), "the second exec ran");
    d.wait_alert("a kernel kill", |a| {
        s(a, "kind") == "kill" && s(a, "by") == "kernel"
    });
    d.stop();
    d.assert_no_plaintext(&[&k]);
}

/// A frozen key cannot run while the daemon is down. With something frozen the exec kill
/// stays attached (pinned) through a stop and through a crash; the next start takes it
/// over and reports the kills it made meanwhile; an empty frozen set unpins it, and a stop
/// then leaves no program behind.
#[test]
fn a_frozen_key_cannot_run_while_the_daemon_is_down() {
    use std::os::unix::process::ExitStatusExt;
    let mut d = Daemon::start("state-pinned");
    let (k, _) = secret("anthropic-api-key");
    let fp = fingerprint(&k);
    let pins = leakwatch::probes::pins::dir_for(&d.state_dir());
    assert_eq!(d.status()["exec_kill_pinned"], false, "nothing frozen");
    assert!(
        !pins.exists(),
        "{} exists with nothing frozen",
        pins.display()
    );
    assert_eq!(d.metric("leakwatch_exec_kill_pinned", &[]), 0.0);
    freeze(&d, &k);
    assert_eq!(d.status()["exec_kill_pinned"], true);
    assert_eq!(d.metric("leakwatch_exec_kill_pinned", &[]), 1.0);
    let mark = d.scratch().join("ran");
    // The key in the environment, or as an argument; the first action makes `mark`. Each
    // exec comes from a process of its own name: kernel kills are reported once per
    // credential and program name, and each kill here must be reported.
    let next = std::cell::Cell::new(0);
    let run = |in_env: bool| {
        use std::os::unix::process::CommandExt;
        next.set(next.get() + 1);
        let name = std::ffi::CString::new(format!("lw-pinned-{}", next.get())).unwrap();
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(format!("touch {}", mark.display()));
        // SAFETY: prctl(2) only, between fork and exec.
        unsafe {
            c.pre_exec(move || {
                libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                Ok(())
            });
        }
        if in_env {
            c.env("ANTHROPIC_API_KEY", &k);
        } else {
            c.args(["sh", &k]);
        }
        let mut c = c.spawn().unwrap();
        (c.id() as u64, c.wait().unwrap())
    };
    let killed = |what: &str, (pid, st): (u64, std::process::ExitStatus)| {
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{what}: {st}");
        assert!(!mark.exists(), "{what}: the frozen key ran");
        pid
    };
    // The kills made while no daemon ran reach the next start: reported (once per
    // credential and program, as any kernel kill) and each counted.
    let reported = |d: &Daemon, pids: &[u64]| {
        for &pid in pids {
            let a = d.wait_alert("a kill made while the daemon was down", |a| {
                s(a, "kind") == "kill" && n(a, "pid") == pid
            });
            assert_eq!(s(&a, "fingerprint"), fp, "{a:#}");
            assert_eq!(s(&a, "by"), "kernel", "{a:#}");
        }
    };

    let before = kills(&d, &fp);
    d.stop();
    let down = [
        killed("env, daemon stopped", run(true)),
        killed("argv, daemon stopped", run(false)),
    ];
    d.restart();
    reported(&d, &down);
    wait_until(10, "both kills made while down counted", || {
        (kills(&d, &fp) >= before + 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kills(&d, &fp), before + 2, "a kill counted twice");
    assert_eq!(d.status()["exec_kill_pinned"], true);
    let runs: Vec<_> = std::fs::read_dir(&pins).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1, "the earlier run retired: {runs:?}");
    let pinned = std::fs::read_dir(runs[0].path()).unwrap().count();
    assert_eq!(pinned, 5, "three killers, their ring and their counters");
    let before = kills(&d, &fp);
    killed("env, after the restart", run(true));

    // Through a whole restart (stop, the gap, the next start), an exec every few ms: none
    // runs, and each is counted once (the old programs' records that the new ones made
    // too are skipped).
    let during = d.scratch().join("ran-during-restart");
    let done = std::sync::atomic::AtomicBool::new(false);
    let tries = std::thread::scope(|sc| {
        let t = sc.spawn(|| {
            let mut tries = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(format!("touch {}", during.display()))
                    .env("ANTHROPIC_API_KEY", &k)
                    .status();
                tries += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            tries
        });
        std::thread::sleep(Duration::from_millis(200));
        d.restart();
        std::thread::sleep(Duration::from_millis(200));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        t.join().unwrap()
    });
    assert!(tries > 20, "only {tries} execs through the restart");
    assert!(!during.exists(), "the frozen key ran during a restart");
    // One more: the kill just before the restart.
    let want = before + 1 + tries;
    wait_until(10, "every kill through the restart counted", || {
        (kills(&d, &fp) >= want).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(kills(&d, &fp), want, "a kill counted twice");

    // A crash: nothing runs the stop path.
    let mut c = d.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let down = [
        killed("env, daemon killed", run(true)),
        killed("argv, daemon killed", run(false)),
    ];
    d.restart();
    reported(&d, &down);

    let out = Command::new(bin())
        .args(["unfreeze", &fp, "--socket"])
        .arg(d.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.status()["exec_kill_pinned"], false);
    assert_eq!(d.metric("leakwatch_exec_kill_pinned", &[]), 0.0);
    assert!(!pins.exists(), "unfrozen, still pinned");
    d.stop();
    assert!(run(true).1.success(), "unfrozen, the key is blocked still");
    assert!(mark.exists());
    d.assert_no_plaintext(&[&k]);
}
