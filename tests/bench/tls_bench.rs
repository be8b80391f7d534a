//! TLS plaintext probes' cost, as a ratio to no monitor, in alternating rounds (median):
//! - `SSL_write` loops: a python client (`ssl`, i.e. `SSL_write_ex` in the system
//!   libssl) writing 512 B and 4 KiB records over one TLS connection to a local server
//!   that discards them — the call path the uprobes sit on, encryption and the socket
//!   write included;
//! - an HTTPS request loop: python `http.client`, one new connection and one small POST
//!   per request (handshake included), against a local TLS server answering 200.
//!
//! And kernel program time per `SSL_write` (every leakwatch program the loop triggers:
//! the entry and return uprobes and the write probe on the ciphertext), from bpf_stats in
//! an extra run. The daemon watches every process (the default scope).
use std::{
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::Stdio,
    time::Duration,
};

use leakwatch_tests::{python, test_cert, Daemon, Reaped};

use crate::{
    cost_bench::{Mon, MONS},
    write_bench::{cpu_model, median, min_max, prog_stats},
};

pub const TITLE: &str = "TLS plaintext cost";

const SERVER: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
def serve(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        data = t.recv(65536)
        if not data.startswith(b"POST"):
            # The SSL_write loop: discard, as cheaply as python can.
            while t.recv(1 << 18):
                pass
            return
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            if sep and len(body) >= n:
                t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                t.close()
                return
            d = t.recv(65536)
            if not d:
                return
            data += d
    except Exception:
        pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

const WRITES: &str = r#"
import socket, ssl, sys, time
ctx = ssl._create_unverified_context()
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))))
buf = b"x" * int(sys.argv[3])
n = int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    s.sendall(buf)
print(n / (time.perf_counter() - t))
s.close()
"#;

const REQUESTS: &str = r#"
import http.client, ssl, sys, time
ctx = ssl._create_unverified_context()
n = int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
    c.request("POST", "/v1", b'{"q": "hello"}', {"Content-Type": "application/json"})
    c.getresponse().read()
    c.close()
print(n / (time.perf_counter() - t))
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Writes(u64),
    Requests,
}

impl Load {
    fn label(self) -> String {
        match self {
            Load::Writes(b) => format!("`SSL_write` of {b} B (one connection)"),
            Load::Requests => "HTTPS request (new connection, small POST)".into(),
        }
    }

    /// Calls per timed run.
    fn count(self) -> u64 {
        match self {
            Load::Writes(_) => 40_000,
            Load::Requests => 300,
        }
    }
}

const LOADS: [Load; 3] = [Load::Writes(512), Load::Writes(4096), Load::Requests];

fn run_load(l: Load, port: u16) -> f64 {
    let (script, extra) = match l {
        Load::Writes(b) => (WRITES, b.to_string()),
        Load::Requests => (REQUESTS, String::new()),
    };
    let out = python()
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(l.count().to_string())
        .arg(extra)
        .stderr(Stdio::inherit())
        .output()
        .expect("running the python TLS client");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(f64::NAN)
}

fn server(dir: &Path) -> (Reaped, u16) {
    let (cert, key) = test_cert(dir);
    let mut c = python()
        .arg("-c")
        .arg(SERVER)
        .arg(&cert)
        .arg(&key)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (Reaped(c), line.trim().parse().expect("server port"))
}

fn start_daemon(dir: &Path, round: usize) -> Daemon {
    let d = dir.join(format!("daemon-{round}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    let d = Daemon::start_in(d, &[]);
    // The TLS probes attach in the background at start: wait for libssl's.
    for _ in 0..100 {
        if d.metric("leakwatch_tls_files_total", &[("outcome", "attached")]) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    d
}

/// The floor: `cost_bench`'s counter on every tracepoint the daemon attaches, plus the same
/// counter as entry and return uprobes where the TLS probes sit in the system libssl.
fn load_floor() -> leakwatch::probes::Floor {
    let mut f = crate::cost_bench::load_floor();
    let lib = leakwatch::probes::tls::system_libssl().expect("no system libssl.so.3 on this host");
    f.attach_tls(&lib)
        .unwrap_or_else(|e| panic!("attaching the uprobe floor failed: {e:#}"));
    f
}

pub fn run() -> String {
    let rounds: usize = std::env::var("LW_BENCH_TLS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("lw-bench-tls-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let (_srv, port) = server(&dir);
    // (round, load, monitor, rate)
    let mut runs: Vec<(usize, Load, Mon, f64)> = Vec::new();
    for round in 0..rounds {
        for k in 0..MONS.len() {
            let mon = MONS[(round + k) % MONS.len()];
            let mut d = (mon == Mon::Daemon).then(|| start_daemon(&dir, round));
            let floor = (mon == Mon::Floor).then(load_floor);
            for l in LOADS {
                runs.push((round, l, mon, run_load(l, port)));
            }
            if let Some(d) = d.as_mut() {
                d.stop();
            }
            drop(floor);
        }
        eprintln!("tls bench: round {}/{rounds} done", round + 1);
    }
    let costs = kernel_costs(&dir, port);
    let _ = fs::remove_dir_all(&dir);
    let mut md = format!("## {TITLE}\n\n");
    writeln!(
        md,
        "`cargo xtask bench --only tls` on {} ({} rounds; in each, no monitor, the floor and leakwatch watching every process with the TLS probes on the system libssl take one turn each, the order rotated by one each round). Rates are medians over rounds (min–max); a ratio is the median over rounds of the two rates from the same round. **floor**: a bare per-CPU counter on every tracepoint the daemon attaches and, as entry and return uprobes, at the points of libssl where leakwatch's TLS probes sit (`SSL_write`, `SSL_write_ex`): the traps every uprobe takes, with nothing done in them. The client and server are python (`ssl`), unpinned.\n",
        cpu_model(),
        rounds
    )
    .unwrap();
    md.push_str("| load | no monitor /s | floor /s | leakwatch /s | floor vs none | leakwatch vs none | **leakwatch vs floor** |\n|---|---|---|---|---|---|---|\n");
    // The 4 KiB loop's ratio to the floor, for the verdict below.
    let mut at_4k = f64::NAN;
    for l in LOADS {
        let of = |m: Mon| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.1 == l && r.2 == m && r.3.is_finite())
                .map(|r| r.3)
                .collect()
        };
        let rate = |m: Mon| {
            let v = of(m);
            let (lo, hi) = min_max(&v);
            format!("{:.0} ({lo:.0}–{hi:.0})", median(v))
        };
        // Per round: the ratio of two monitors' rates in that round.
        let ratio = |a: Mon, b: Mon| {
            let v: Vec<f64> = (0..rounds)
                .filter_map(|r| {
                    let at = |m: Mon| runs.iter().find(|x| x.0 == r && x.1 == l && x.2 == m);
                    Some(at(a)?.3 / at(b)?.3)
                })
                .filter(|x| x.is_finite())
                .collect();
            median(v)
        };
        let vs_floor = ratio(Mon::Daemon, Mon::Floor);
        if l == Load::Writes(4096) {
            at_4k = vs_floor;
        }
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.3} | **{:.3}** |",
            l.label(),
            rate(Mon::None),
            rate(Mon::Floor),
            rate(Mon::Daemon),
            ratio(Mon::Floor, Mon::None),
            ratio(Mon::Daemon, Mon::None),
            vs_floor,
        )
        .unwrap();
    }
    writeln!(
        md,
        "\nTarget: in scope with capture at 4 KiB >= 0.8 of the floor: {} ({at_4k:.3}).\n",
        if at_4k >= 0.8 { "met" } else { "**not met**" }
    )
    .unwrap();
    md.push_str("A tight `SSL_write` loop is the worst case: each call takes the uprobe's traps (the breakpoint, the single step of the instruction it displaced, the return probe's trampoline: the floor's cost), the plaintext is copied to the ring and scanned, and on this 2-vCPU host client, server and daemon compete for the cores. An agent's HTTPS requests pay it once or twice per request (last row).\n\n");
    md.push_str(&costs);
    md
}

/// Kernel program time per `SSL_write`, with bpf_stats switched on for one extra run.
fn kernel_costs(dir: &Path, port: u16) -> String {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let mut md = String::from("### Kernel program time per `SSL_write`\n\n");
    let old = fs::read_to_string(SYSCTL).unwrap_or_default();
    let mut d = start_daemon(dir, 999);
    let pid = d.child.as_ref().map(|c| c.id()).unwrap_or(0);
    if fs::write(SYSCTL, "1").is_err() {
        md.push_str("bpf_stats could not be switched on here.\n\n");
        d.stop();
        return md;
    }
    for l in [Load::Writes(512), Load::Writes(4096)] {
        let before = prog_stats(pid);
        run_load(l, port);
        let after = prog_stats(pid);
        let ns: u64 = after
            .iter()
            .map(|&(id, ns, _)| ns - before.iter().find(|b| b.0 == id).map_or(0, |b| b.1))
            .sum();
        writeln!(
            md,
            "- {}: {:.0} ns of leakwatch programs per call (all of them, summed over the run, divided by its {} calls: the two uprobes and the write probe on the ciphertext).",
            l.label(),
            ns as f64 / l.count() as f64,
            l.count()
        )
        .unwrap();
    }
    let _ = fs::write(SYSCTL, old.trim());
    d.stop();
    md.push('\n');
    md
}
