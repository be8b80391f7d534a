//! The action log with the real daemon and real programs: a holder of a fresh key and what
//! it spawned are answered by fingerprint, by process tree, by kind and by time — also
//! after the daemon was killed — and the log holds no plaintext, not even of a key frozen
//! after its exec row was written.
use std::{process::Command, time::Duration};

use leakwatch_tests::*;
use serde_json::Value;

fn has(rows: &[Value], kind: &str, pid: u64, pred: impl Fn(&Value) -> bool) -> bool {
    rows.iter()
        .any(|r| s(r, "kind") == kind && n(r, "pid") == pid && pred(r))
}

#[test]
fn actions_answer_by_fingerprint_tree_pid_kind_and_time() {
    let mut d = Daemon::start("a-log");
    let (secret, text) = secret("anthropic-api-key");
    let fp = fingerprint(&secret);
    let peer = TcpPeer::start();
    let out = d.scratch().join("agent.log");
    // A holder (the key in its environment and its argv) starts a child without the key,
    // which connects out and writes a log: the child is found only through the tree.
    let script = format!(
        "import socket, sys, time\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         s.sendall(b'hello')\n\
         s.close()\n\
         f = open(sys.argv[1], 'w')\n\
         for i in range(20):\n    f.write('INFO step %d done\\n' % i); f.flush()\n",
        peer.port
    );
    let mut holder = Command::new("bash")
        .arg("-c")
        .arg("unset AGENT_KEY; python3 -c \"$1\" \"$2\"; sleep 0.3")
        .arg("lw-holder")
        .arg(&script)
        .arg(&out)
        .arg(&text)
        .env("AGENT_KEY", &text)
        .spawn()
        .unwrap();
    let holder_pid = holder.id() as u64;
    assert!(wait_exit(&mut holder, 60, "the holder").success());
    // The child's write summary is recorded once its fd pauses (2 s), then batched.
    let rows = wait_until(20, "the child's write row by --fingerprint --tree", || {
        let rows = actions(&d, &["--fingerprint", &fp, "--tree"]);
        rows.iter()
            .any(|r| s(r, "kind") == "write" && s(r, "path").ends_with("agent.log"))
            .then_some(rows)
    });
    assert!(
        has(&rows, "finding", holder_pid, |r| s(r, "fingerprint") == fp
            && s(r, "source") == "env"),
        "the holder's finding: {rows:#?}"
    );
    let exec = rows
        .iter()
        .find(|r| s(r, "kind") == "exec" && n(r, "pid") == holder_pid && s(r, "comm") == "bash")
        .unwrap_or_else(|| panic!("the holder's exec: {rows:#?}"));
    let argv: Vec<&str> = exec["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(argv[0], "bash", "{exec:#}");
    assert!(
        argv.iter()
            .any(|a| a.starts_with("sk-ant") && a.contains('…')),
        "the key in argv is kept as its preview: {argv:?}"
    );
    let child = rows
        .iter()
        .find(|r| s(r, "kind") == "exec" && s(r, "comm") == "python3" && n(r, "ppid") == holder_pid)
        .unwrap_or_else(|| panic!("the child's exec, a descendant of the holder: {rows:#?}"));
    let child_pid = n(child, "pid");
    let remote = format!("127.0.0.1:{}", peer.port);
    assert!(
        has(&rows, "connect", child_pid, |r| s(r, "remote") == remote),
        "the child's connect: {rows:#?}"
    );
    let w = rows
        .iter()
        .find(|r| {
            s(r, "kind") == "write"
                && n(r, "pid") == child_pid
                && s(r, "path").ends_with("agent.log")
        })
        .unwrap();
    assert_eq!(s(w, "source"), "file", "{w:#}");
    assert!(n(w, "bytes") >= 20 * 16 && n(w, "calls") >= 20, "{w:#}");
    for r in &rows {
        for k in ["ts", "kind", "pid", "ppid", "comm", "exe", "unit"] {
            assert!(r.get(k).is_some(), "`{k}` missing: {r:#}");
        }
    }
    // Without --tree only the processes that held it: the holder, not the child (bash
    // unset the key before starting it).
    let own = actions(&d, &["--fingerprint", &fp]);
    assert!(own.iter().all(|r| n(r, "pid") != child_pid), "{own:#?}");
    assert!(has(&own, "finding", holder_pid, |_| true));
    // By process tree, and by kind.
    let tree = actions(
        &d,
        &[
            "--pid",
            &holder_pid.to_string(),
            "--tree",
            "--kind",
            "connect",
        ],
    );
    assert!(
        !tree.is_empty() && tree.iter().all(|r| s(r, "kind") == "connect"),
        "{tree:#?}"
    );
    assert!(has(&tree, "connect", child_pid, |_| true));
    // By time: nothing of it until an hour ago.
    let old = actions(&d, &["--pid", &holder_pid.to_string(), "--until", "1h"]);
    assert!(old.is_empty(), "{old:#?}");
    for kind in ["exec", "connect", "write", "finding"] {
        let v = d.metric("leakwatch_actions_rows_total", &[("kind", kind)]);
        assert!(v >= 1.0, "rows of kind {kind} counted: {v}");
    }
    assert!(d.metric("leakwatch_scanned_bytes_total", &[("source", "env")]) > 0.0);
    // After the daemon died (SIGKILL), the log still answers.
    let mut c = d.child.take().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    let after = actions(
        &d,
        &["--fingerprint", &fp, "--tree", "--kind", "write,exec"],
    );
    assert!(has(&after, "write", child_pid, |_| true), "{after:#?}");
    std::thread::sleep(Duration::from_millis(100));
    // The log is in the state dir, with no plaintext (nor in its WAL).
    assert!(d.state_dir().join("actions.db").exists());
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn actions_refuses_bad_input_with_one_sentence() {
    let dir = TempDir::new("a-cli");
    let run = |args: &[&str]| {
        let o = Command::new(bin())
            .arg("actions")
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let sd = dir.to_str().unwrap();
    let (code, err) = run(&["--state-dir", sd]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("no action log") && err.contains("--state-dir"),
        "{err}"
    );
    let (code, err) = run(&["--state-dir", sd, "--since", "yesterday"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--since `yesterday`"), "{err}");
    let (code, err) = run(&["--state-dir", sd, "--kind", "exec,open"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--kind `open`"), "{err}");
    let (code, err) = run(&["--state-dir", sd, "--fingerprint", "abc"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not a fingerprint"), "{err}");
}

#[test]
fn actions_record_freeze_kill_and_sever() {
    let mut d = Daemon::start("a-freeze");
    let (secret, _) = secret("openai-project-key");
    let fp = fingerprint(&secret);
    let peer = TcpPeer::start();
    let script = format!(
        "import socket, time\ns = socket.create_connection(('127.0.0.1', {}))\nprint('up', flush=True)\ntime.sleep(60)\n",
        peer.port
    );
    let mut h = python()
        .arg("-c")
        .arg(&script)
        .env("OPENAI_API_KEY", &secret)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = h.id() as u64;
    {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(h.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "up", "the holder connected");
    }
    d.wait_alert("the holder's finding", |a| {
        s(a, "fingerprint") == fp && n(a, "pid") == pid
    });
    let out = freeze_with(&d, &secret, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_exit(&mut h, 10, "the frozen holder");
    let remote = format!("127.0.0.1:{}", peer.port);
    let rows = wait_until(10, "the kill and sever rows", || {
        let r = actions(&d, &["--pid", &pid.to_string(), "--kind", "kill,sever"]);
        (has(&r, "kill", pid, |k| s(k, "fingerprint") == fp)
            && has(&r, "sever", pid, |v| s(v, "remote") == remote))
        .then_some(r)
    });
    assert!(rows.iter().all(|r| s(r, "kind") != "finding"), "{rows:#?}");
    let frozen = actions(&d, &["--fingerprint", &fp, "--kind", "freeze"]);
    assert!(
        frozen.iter().any(|r| s(r, "kind") == "freeze"),
        "the freeze itself: {frozen:#?}"
    );
    d.stop();
    d.assert_no_plaintext(&[&secret]);
}

#[test]
fn actions_forget_a_credential_frozen_after_it_ran_in_argv() {
    use rand::Rng;
    let mut d = Daemon::start("a-scrub");
    // A token no rule knows: the exec row keeps it as run, until it is frozen.
    let mut rng = rand::thread_rng();
    let token: String = std::iter::once('q')
        .chain((0..31).map(|_| rng.gen_range(b'a'..=b'z') as char))
        .collect();
    let mut c = Command::new("sh")
        .args(["-c", "exit 0", "lw-scrub-arg", &token])
        .spawn()
        .unwrap();
    let pid = c.id() as u64;
    assert!(wait_exit(&mut c, 10, "the sh run").success());
    let argv_of = |d: &Daemon| -> Option<String> {
        actions(d, &["--pid", &pid.to_string(), "--kind", "exec"])
            .into_iter()
            .find(|r| s(r, "kind") == "exec")
            .map(|r| r["argv"].to_string())
    };
    let before = wait_until(10, "the exec row", || argv_of(&d));
    assert!(
        before.contains(&token),
        "no rule knows the token, so its exec row has it as run: {before}"
    );
    let out = freeze_with(&d, &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = wait_until(10, "the exec row rewritten", || {
        argv_of(&d).filter(|a| !a.contains(&token))
    });
    assert!(
        after.contains("lw-scrub-arg") && after.contains(&token[..4]),
        "the row keeps its other arguments and the key's preview: {after}"
    );
    d.stop();
    d.assert_no_plaintext(&[&token]);
}

#[test]
fn a_password_given_as_an_argument_of_its_own_is_found_and_kept_only_as_a_preview() {
    use rand::Rng;
    let mut d = Daemon::start("a-cmdline");
    let mut rng = rand::thread_rng();
    let mut password = || -> String {
        (0..16)
            .map(|_| {
                b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"[rng.gen_range(0..57)]
                    as char
            })
            .collect()
    };
    let (curl_pass, mysql_pass) = (password(), password());
    // `-u USER:PASS` and `-pPASS` are arguments of their own: only the whole command line
    // shows whose password they are. The curl connects to a closed port.
    let user = format!("lw-cmdline:{curl_pass}");
    let mut c = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "2", "-u", &user])
        .arg(format!("http://127.0.0.1:{}/", free_port()))
        .spawn()
        .unwrap();
    let curl_pid = c.id() as u64;
    wait_exit(&mut c, 10, "curl");
    let dir = d.scratch();
    let mysql = dir.join("mysql");
    install_exe(&mysql, &std::fs::read("/bin/true").unwrap());
    let p = format!("-p{mysql_pass}");
    let mut m = Command::new(&mysql)
        .args(["-h", "db.internal", "-u", "app", &p, "prod"])
        .spawn()
        .unwrap();
    let mysql_pid = m.id() as u64;
    wait_exit(&mut m, 10, "mysql");
    for (pid, rule, pass, index) in [
        (curl_pid, "curl-user-password", &curl_pass, 7),
        (mysql_pid, "mysql-cli-password", &mysql_pass, 5),
    ] {
        let fp = fingerprint(pass);
        let a = d.wait_alert(rule, |a| s(a, "fingerprint") == fp);
        assert_eq!(
            (
                s(&a, "rule"),
                s(&a, "source"),
                n(&a, "pid"),
                n(&a, "arg_index")
            ),
            (rule, "argv", pid, index),
            "{a:#}"
        );
        let row = wait_until(10, "the exec row", || {
            actions(&d, &["--pid", &pid.to_string(), "--kind", "exec"])
                .into_iter()
                .find(|r| s(r, "kind") == "exec")
        });
        let argv = row["argv"].to_string();
        assert!(
            !argv.contains(pass.as_str()) && argv.contains(&pass[..4]),
            "the exec row keeps the password only as its preview: {argv}"
        );
    }
    d.stop();
    d.assert_no_plaintext(&[&curl_pass, &mysql_pass]);
}

/// A process reconnecting to one remote, as an HTTP client without keep-alive does: the
/// kernel folds the repeats into the records around them, and the action log still counts
/// every connect, exactly — those carried by a later connect's record, and those left when
/// the process exec'd or exited, carried by records of their own.
#[test]
fn actions_count_every_connect_the_kernel_folded() {
    let d = Daemon::start("a-fold");
    // Two bursts a pause apart (the second burst's first connect carries the first's
    // repeats), then an exit, or an exec into a new image that reconnects over the same
    // fd number to the same listener (inherited) at once, then exits.
    let script = r#"
import os, socket, sys, time
first, second, end = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    l = socket.socket(fileno=int(sys.argv[4]))
else:
    l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
    print(l.getsockname()[1], flush=True)
port = l.getsockname()[1]
fds = set()
def burst(n):
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        fds.add(c.fileno())
        a, _ = l.accept(); a.close(); c.close()
burst(first)
if second:
    time.sleep(1.3); burst(second)
assert len(fds) == 1, fds
if end.startswith("exec"):
    os.set_inheritable(l.fileno(), True)
    again = end.split(":")[1]
    os.execv(sys.executable, [sys.executable, "-c", SCRIPT, again, "0", "exit", str(l.fileno())])
"#;
    // The script passes itself to the new image.
    let script = format!("SCRIPT = {script:?}\n{script}");
    let before = d.metric(
        "leakwatch_kernel_folded_total",
        &[("probe", "sys_enter_connect")],
    );
    let mut folded_here = 0;
    for (first, second, end, after_exec) in
        [(150u64, 100u64, "exec:60", 60u64), (120, 80, "exit", 0)]
    {
        let args = [first.to_string(), second.to_string(), end.to_string()];
        let (mut c, remote) = reconnecting(&script, &args);
        let pid = c.id().to_string();
        assert!(wait_exit(&mut c, 60, "the reconnecting client").success());
        let all = first + second + after_exec;
        // Repeats are written once they pause (2 s), then batched.
        let rows = wait_until(30, &format!("{all} connects counted ({end})"), || {
            let rows = actions(&d, &["--pid", &pid, "--kind", "connect"]);
            (connects_to(&rows, &remote) >= all).then_some(rows)
        });
        assert_eq!(connects_to(&rows, &remote), all, "{end}: {rows:#?}");
        assert!(
            rows.iter().filter(|r| s(r, "remote") == remote).count() <= 5,
            "the repeats are summed, not a row each: {rows:#?}"
        );
        // At most a record a second per image: the rest were folded.
        folded_here += all - 6;
    }
    let after = d.metric(
        "leakwatch_kernel_folded_total",
        &[("probe", "sys_enter_connect")],
    );
    assert!(
        after - before >= folded_here as f64,
        "the kernel folded the repeats: {before} -> {after}, at least {folded_here} expected"
    );
}

/// A process that reconnected in a burst and then went quiet still has its repeats folded
/// in the kernel when the daemon stops: the stop puts them into the action log.
#[test]
fn actions_keep_the_connects_still_folded_when_the_daemon_stops() {
    let mut d = Daemon::start("a-fold-stop");
    let script = format!("{BURST}time.sleep(120)\n");
    let (mut c, remote) = reconnecting(&script, &["90".to_string()]);
    let pid = c.id().to_string();
    // The burst's first connect is a record; wait until the daemon has logged it.
    wait_until(20, "the first connect's row", || {
        let rows = actions(&d, &["--pid", &pid, "--kind", "connect"]);
        rows.iter().any(|r| s(r, "remote") == remote).then_some(())
    });
    d.stop();
    let rows = actions(&d, &["--pid", &pid, "--kind", "connect"]);
    let _ = c.kill();
    let _ = c.wait();
    assert_eq!(connects_to(&rows, &remote), 90, "{rows:#?}");
}

/// A process that reconnected in a burst and then exec'd into an image that never connects
/// (and keeps running): the exec itself sends the old image's folded repeats, so they are
/// in the action log while the process lives on — not only at its exit or the daemon's
/// stop — and under the name of the image that made them.
#[test]
fn actions_count_the_connects_folded_before_an_exec_while_the_process_lives() {
    let d = Daemon::start("a-fold-exec");
    let script = format!("{BURST}os.execv('/bin/sleep', ['sleep', '120'])\n");
    let (mut c, remote) = reconnecting(&script, &["75".to_string()]);
    let pid = c.id().to_string();
    let rows = wait_until(
        30,
        "75 connects counted before the exec'd image exits",
        || {
            let rows = actions(&d, &["--pid", &pid, "--kind", "connect"]);
            (connects_to(&rows, &remote) >= 75).then_some(rows)
        },
    );
    let alive = c.try_wait().unwrap().is_none();
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        alive,
        "the exec'd image was still running when the repeats were counted"
    );
    assert_eq!(connects_to(&rows, &remote), 75, "{rows:#?}");
    let sleep_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| s(r, "remote") == remote && s(r, "comm") == "sleep")
        .collect();
    assert!(
        sleep_rows.is_empty(),
        "the repeats are the old image's, not sleep's: {sleep_rows:#?}"
    );
}

/// Python that connects `argv[1]` times to a listener of its own, each time on the same fd
/// number, then prints the listener's port.
const BURST: &str = r#"
import os, socket, sys, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64)
port = l.getsockname()[1]
for _ in range(int(sys.argv[1])):
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = l.accept(); a.close(); c.close()
print(port, flush=True)
"#;

/// Starts python on `script` with `args`; returns it and the remote it reconnects to
/// (`127.0.0.1:` and the port it prints first).
fn reconnecting(script: &str, args: &[String]) -> (std::process::Child, String) {
    let mut c = python()
        .arg("-c")
        .arg(script)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    (c, format!("127.0.0.1:{}", port.trim()))
}

/// Connects to `remote` in connect rows: a first connect is one, a row of repeats its count.
fn connects_to(rows: &[Value], remote: &str) -> u64 {
    rows.iter()
        .filter(|r| s(r, "remote") == remote)
        .map(|r| r.get("count").map_or(1, |c| c.as_u64().unwrap()))
        .sum()
}
