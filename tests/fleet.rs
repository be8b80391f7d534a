//! Fleet freeze through a real etcd (Debian's etcd-server, on loopback with its own data dir):
//! `leakwatch fleet freeze` run with no local daemon involved reaches a daemon configured for
//! the fleet, which kills the holder, severs it, kills the next exec in the kernel, and
//! acknowledges; etcd down, a restarted daemon still enforces; `fleet unfreeze` lifts it;
//! two daemons both acknowledge; malformed entries are refused; nothing plaintext reaches
//! etcd or anything leakwatch wrote.
use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::{etcd::Etcd, *};
use serde_json::Value;

fn fleet_config(etcd: &Etcd, host: &str) -> String {
    format!("[fleet]\netcd = [\"{}\"]\nhost = \"{host}\"\n", etcd.url())
}

/// `leakwatch fleet ARGS --etcd URL`, with `stdin` piped in.
fn fleet(etcd: &Etcd, args: &[&str], stdin: Option<&str>) -> Output {
    let mut c = Command::new(bin())
        .arg("fleet")
        .args(args)
        .args(["--etcd", &etcd.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        c.stdin.as_mut().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    c.wait_with_output().unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn fleet_status(etcd: &Etcd) -> Value {
    let out = fleet(etcd, &["status", "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&out)
}

/// Waits until every host in `hosts` announces itself alive in the store.
fn wait_hosts(etcd: &Etcd, hosts: &[&str]) {
    wait_until(20, "hosts alive in the fleet store", || {
        let v = fleet_status(etcd);
        let alive: Vec<&str> = v["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["host"].as_str())
            .collect();
        hosts.iter().all(|h| alive.contains(h)).then_some(())
    });
}

fn entry<'a>(v: &'a Value, fp: &str) -> Option<&'a Value> {
    v["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["fingerprint"] == fp)
}

fn ack<'a>(v: &'a Value, fp: &str, host: &str) -> Option<&'a Value> {
    entry(v, fp)?["applied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == host)
}

/// Runs `sh -c 'echo ran > MARKER'` with the key in its environment: whether it ran at all.
fn exec_with_key(dir: &Path, var: &str, secret: &str) -> (std::process::ExitStatus, bool) {
    let marker = dir.join(format!("ran-{}", rand::random::<u32>()));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("echo ran > {}", marker.display()))
        .env(var, secret)
        .status()
        .unwrap();
    (st, marker.exists())
}

fn killed(st: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    st.signal() == Some(9)
}

#[test]
fn fleet_freeze_reaches_the_daemon_survives_etcd_loss_and_unfreezes() {
    let mut etcd = Etcd::start("life");
    let host = format!("lw-life-{}", std::process::id());
    let mut d = Daemon::start_with_config("fleet-life", &fleet_config(&etcd, &host));
    wait_hosts(&etcd, &[&host]);
    let (secret, _) = secret("github-pat");
    let fp = fingerprint(&secret);
    let scratch = d.scratch();

    // A holder with the key in its environment and a connection open.
    let peer = TcpPeer::start();
    let (h, p) = peer
        .addr()
        .rsplit_once(':')
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .unwrap();
    let mut holder = Reaped(
        python()
            .args([
                "-c",
                &format!(
                    "import socket,time\ns=socket.create_connection(('{h}',{p}))\ntime.sleep(600)"
                ),
            ])
            .env("GITHUB_TOKEN", &secret)
            .spawn()
            .unwrap(),
    );
    let holder_pid = holder.0.id();
    wait_until(10, "holder connected", || {
        let out = Command::new("ss").args(["-tnp"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("pid={holder_pid},"))
            .then_some(())
    });

    // From "another machine": only etcd, no daemon socket.
    let t0 = Instant::now();
    let out = fleet(&etcd, &["freeze", "--json"], Some(&secret));
    let took = t0.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&secret));
    let r = json_of(&out);
    assert_eq!(r["complete"], true, "{r:#}");
    let a = r["entry"]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["host"] == host.as_str())
        .unwrap_or_else(|| panic!("no acknowledgement from {host}: {r:#}"));
    assert!(n(a, "kills") >= 1, "{a:#}");
    assert!(n(a, "severs") >= 1, "{a:#}");
    assert_eq!(a["kernel_enforced"], true, "{a:#}");
    assert!(took < Duration::from_secs(10), "fleet freeze took {took:?}");
    let st = wait_exit(&mut holder.0, 5, "holder killed by the fleet freeze");
    assert!(killed(st), "holder ended with {st}");
    d.wait_alert("freeze from the fleet", |a| {
        s(a, "kind") == "freeze" && s(a, "fingerprint") == fp && a["fleet"] == true
    });

    // The next exec with the key dies in the kernel before its first instruction.
    let (st, ran) = exec_with_key(&scratch, "GH_TOKEN", &secret);
    assert!(
        killed(st) && !ran,
        "exec with the frozen key: {st}, ran: {ran}"
    );

    // `fleet status` shows the acknowledgement.
    let v = fleet_status(&etcd);
    assert!(ack(&v, &fp, &host).is_some(), "{v:#}");
    assert!(entry(&v, &fp).unwrap()["pending"]
        .as_array()
        .unwrap()
        .is_empty());

    // etcd gone: said so, and the key stays dead, also across a daemon restart.
    etcd.pause();
    d.wait_metric(
        "leakwatch_fleet_connected",
        &[],
        "fleet disconnected",
        |v| v == 0.0,
    );
    d.wait_alert("fleet store lost", |a| {
        s(a, "kind") == "fleet" && s(a, "state") == "disconnected"
    });
    assert_eq!(d.status()["fleet"]["connected"], false);
    d.restart();
    let (st, ran) = exec_with_key(&scratch, "GITHUB_TOKEN", &secret);
    assert!(
        killed(st) && !ran,
        "exec with the key after a restart without etcd: {st}, ran: {ran}"
    );
    assert_eq!(d.status()["fleet"]["connected"], false);

    // etcd back: the daemon reconnects; an explicit unfreeze lifts it here.
    etcd.resume();
    d.wait_metric("leakwatch_fleet_connected", &[], "fleet reconnected", |v| {
        v == 1.0
    });
    let out = fleet(&etcd, &["unfreeze", &fp, "--json"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(10, "unfrozen on the host", || {
        let st = d.status();
        (!st["frozen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fingerprint"] == fp.as_str()))
        .then_some(())
    });
    let (st, ran) = exec_with_key(&scratch, "GITHUB_TOKEN", &secret);
    assert!(
        st.success() && ran,
        "exec after the unfreeze: {st}, ran: {ran}"
    );
    let v = fleet_status(&etcd);
    assert!(entry(&v, &fp).is_none(), "{v:#}");

    d.stop();
    d.assert_no_plaintext(&[&secret]);
    etcd.assert_no_plaintext(&[&secret]);
}

#[test]
fn two_daemons_acknowledge_and_malformed_entries_are_refused() {
    let etcd = Etcd::start("two");
    let (h1, h2) = (
        format!("lw-one-{}", std::process::id()),
        format!("lw-two-{}", std::process::id()),
    );
    let mut d1 = Daemon::start_with_config("fleet-one", &fleet_config(&etcd, &h1));
    let mut d2 = Daemon::start_with_config("fleet-two", &fleet_config(&etcd, &h2));
    wait_hosts(&etcd, &[&h1, &h2]);

    // Hostile and broken entries: refused by both, reported, never quoted whole.
    let (pasted, _) = secret("openai-project-key");
    let (other, _) = secret("slack-token");
    etcd.put_raw(&format!("/leakwatch/frozen/{pasted}"), b"{}");
    etcd.put_raw(
        &format!("/leakwatch/frozen/{}", fingerprint(&other)),
        format!(
            "{{\"fingerprint\":\"{}\",\"frozen_at\":\"x\",\"len\":3}}",
            fingerprint(&other)
        )
        .as_bytes(),
    );
    etcd.put_raw(
        &format!("/leakwatch/frozen/{}", fingerprint(&pasted)),
        format!("not json {pasted}").as_bytes(),
    );
    for d in [&d1, &d2] {
        d.wait_metric("leakwatch_fleet_refused_total", &[], "3 refused", |v| {
            v >= 3.0
        });
        d.wait_alert("refused entry", |a| {
            s(a, "kind") == "fleet" && s(a, "state") == "refused"
        });
    }
    let v = fleet_status(&etcd);
    let refused = v["refused"].as_array().unwrap();
    for h in [&h1, &h2] {
        assert!(
            refused.iter().filter(|r| r["host"] == h.as_str()).count() >= 3,
            "{v:#}"
        );
    }

    // A fingerprint-only fleet freeze: both hosts acknowledge.
    let (secret_a, _) = secret("anthropic-api-key");
    let fp_a = fingerprint(&secret_a);
    let out = fleet(&etcd, &["freeze", "--json", "--fingerprint", &fp_a], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = fleet_status(&etcd);
    for h in [&h1, &h2] {
        let a = ack(&v, &fp_a, h).unwrap_or_else(|| panic!("{h} did not acknowledge: {v:#}"));
        assert!(a["errors"].as_array().unwrap().is_empty(), "{a:#}");
    }
    for d in [&d1, &d2] {
        let st = d.status();
        assert!(
            st["frozen"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["fingerprint"] == fp_a.as_str() && e["fleet"] == true),
            "{st:#}"
        );
    }

    // `leakwatch freeze --fleet` on host one: frozen there, published, applied on two.
    let (secret_b, _) = secret("stripe-secret-key");
    let fp_b = fingerprint(&secret_b);
    let out = freeze_with(&d1, &secret_b, &["--fleet", "--etcd", &etcd.url()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(10, "host two applies the published freeze", || {
        ack(&fleet_status(&etcd), &fp_b, &h2).map(|_| ())
    });
    // Frozen on host one by hand: a fleet unfreeze lifts it on two, keeps it on one.
    let out = fleet(&etcd, &["unfreeze", &fp_b, "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(10, "lifted on host two", || {
        (!d2.status()["frozen"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["fingerprint"] == fp_b.as_str()))
        .then_some(())
    });
    assert!(d1.status()["frozen"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["fingerprint"] == fp_b.as_str()));

    // Argv is refused, as for a local freeze (a key nobody froze: a frozen one in argv
    // would get the command killed at exec, which is the point of freezing it).
    let (in_argv, _) = secret("groq-api-key");
    let out = fleet(&etcd, &["freeze", &in_argv], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(&in_argv));

    // Host two stops: it revokes its lease at once and is listed offline, not forgotten; a
    // freeze then says it is incomplete (exit 1) until the host is forgotten.
    d2.stop();
    wait_until(10, "host two listed offline", || {
        fleet_status(&etcd)["offline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["host"] == h2.as_str())
            .then_some(())
    });
    let (secret_c, _) = secret("mistral-api-key");
    let fp_c = fingerprint(&secret_c);
    let out = fleet(
        &etcd,
        &["freeze", "--json", "--wait", "2", "--fingerprint", &fp_c],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json_of(&out);
    assert_eq!(r["offline"], serde_json::json!([h2]), "{r:#}");
    assert!(ack(&fleet_status(&etcd), &fp_c, &h1).is_some());
    let human = fleet(&etcd, &["status"], None);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(&format!("{h2} OFFLINE")), "{text}");
    let out = fleet(&etcd, &["forget", &h2], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fleet_status(&etcd)["offline"]
        .as_array()
        .unwrap()
        .is_empty());

    d1.stop();
    for d in [&d1, &d2] {
        d.assert_no_plaintext(&[&secret_a, &secret_b, &pasted, &other, &in_argv]);
    }
    etcd.assert_no_plaintext(&[&secret_a, &secret_b]);
}

#[test]
fn a_broken_fleet_config_stops_the_daemon_with_one_error() {
    let dir = TempDir::new("fleet-broken");
    let cfg = dir.join("leakwatch.toml");
    std::fs::write(
        &cfg,
        "[fleet]\netcd = [\"https://127.0.0.1:1\"]\nca = \"/nonexistent/etcd-ca.pem\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .arg("daemon")
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(dir.join("control.sock"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[fleet] ca = \"/nonexistent/etcd-ca.pem\" cannot be read"),
        "{err}"
    );
    // It stopped before loading anything: no ready line.
    assert!(!err.contains("ready:"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
