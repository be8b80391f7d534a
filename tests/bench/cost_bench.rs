//! The cost of watching (`cargo xtask bench --only cost`, about 9½ minutes): what leakwatch
//! costs the programs it watches, set against no monitor and against the floor (a bare
//! counter on every tracepoint the daemon attaches), and what it costs itself.
//! - micro: fork+exec loops of `/bin/true` (50 variables / 3 KiB and 200 / 30 KiB of
//!   environment) and a loopback connect loop, each with one loop and with one per core;
//! - macro: an agent-like python workload and a C build, against no monitor, and where
//!   the agent's CPU goes with no monitor, the floor and leakwatch (see `cost_profile`);
//! - loss: exec and connect storms and a paced exec ladder, with the daemon's processed +
//!   lost + dropped set against a second counter program on the same tracepoints;
//! - the daemon's CPU per exec, per 1,000 alerting execs batch after batch, latency from
//!   the kernel event to the alert written, RSS, start-up and stop.
//!
//! Configurations take turns within each round, the order rotated every round; ratios are
//! medians over rounds of two rates from the same round.
use std::{
    fmt::Write as _,
    fs,
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use leakwatch_tests::{metric, Daemon};

use crate::{
    cost_latency::{latency, leaking, Lat, Quantiles},
    write_bench::{
        clock_ticks, cpu_model, cpu_ticks, env_or, median, median_ci, min_max, verdict_ci,
    },
};

pub const TITLE: &str = "Cost of watching";
/// Where the at-a-glance table goes once every part has run.
const SUMMARY: &str = "<!-- summary -->\n";

/// What watches a run (the TLS part takes turns over the first three too).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mon {
    None,
    /// A bare counter on the daemon's hooks (`load_floor`).
    Floor,
    Daemon,
    /// The daemon with the workload out of its scope: what a process leakwatch is not
    /// watching pays (a host where it watches the agents' cgroup only).
    OutOfScope,
}

pub const MONS: [Mon; 3] = [Mon::None, Mon::Floor, Mon::Daemon];
/// A scope that leaves the bench's workloads out (no process is called this).
const SCOPE_OUT: &str = "[scope]\ncomms = [\"lw-bench-none\"]\n";

/// One micro workload: what runs, on how many threads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    Exec { vars: usize, loops: usize },
    Connect { loops: usize },
}

const WORKS: [Work; 6] = [
    Work::Exec { vars: 50, loops: 1 },
    Work::Exec { vars: 50, loops: 2 },
    Work::Exec {
        vars: 200,
        loops: 1,
    },
    Work::Exec {
        vars: 200,
        loops: 2,
    },
    Work::Connect { loops: 1 },
    Work::Connect { loops: 2 },
];

impl Work {
    fn label(self) -> String {
        let par = |n| {
            if n == 1 {
                "1 loop"
            } else {
                "2 loops (both cores)"
            }
        };
        match self {
            Work::Exec { vars, loops } => format!(
                "fork+exec `/bin/true`, {vars} variables ({} KiB), {}",
                env_bytes(vars) / 1024,
                par(loops)
            ),
            Work::Connect { loops } => format!("TCP connect + close on loopback, {}", par(loops)),
        }
    }
}

/// A harmless environment of `n` variables: names and values no rule takes for a secret
/// (low-entropy path lists), sized like a real agent's (3 KiB at 50, 30 KiB at 200).
fn env(n: usize) -> Vec<(String, String)> {
    let per = if n <= 50 { 48 } else { 140 };
    (0..n)
        .map(|i| {
            let mut v = format!("/opt/tool{i}/bin");
            while v.len() < per {
                v.push_str(":/usr/local/share/tool/bin");
            }
            v.truncate(per);
            (format!("LW_BENCH_SETTING_{i}"), v)
        })
        .collect()
}

fn env_bytes(n: usize) -> usize {
    env(n).iter().map(|(k, v)| k.len() + v.len() + 2).sum()
}

/// Runs `f` on `loops` threads for `secs`; returns calls per second, all threads together.
fn rate(loops: usize, secs: f64, f: impl Fn() + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..loops {
            s.spawn(|| {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    f();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

fn exec_true(vars: &[(String, String)]) {
    let st = Command::new("/bin/true")
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .status()
        .expect("running /bin/true");
    assert!(st.success());
}

/// The 50-variable environment with a fresh Anthropic key added: each exec a new finding.
fn keyed_env(rng: &mut leakwatch::detect::samples::Rng) -> Vec<(String, String)> {
    let (key, _) = leakwatch::detect::samples::sample("anthropic-api-key", rng).unwrap();
    let mut vars = env(50);
    vars.push(("ANTHROPIC_API_KEY".into(), key));
    vars
}

/// Calls `f(i)` for every i in 0..n, shared out over two threads (one per core).
fn on_two_threads(n: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

/// One connect: to a loopback listener of this thread's own, accepted at once, both ends
/// closed with a reset (SO_LINGER 0) so no TIME_WAIT piles up and no backlog overflows
/// (an overflow costs a 1 s SYN retry and measures nothing).
fn connect_once() {
    thread_local! {
        static LISTENER: TcpListener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
    }
    LISTENER.with(|l| {
        let c = TcpStream::connect(l.local_addr().unwrap()).expect("loopback connect");
        let (a, _) = l.accept().expect("accepting a loopback connection");
        reset_on_close(&c);
        reset_on_close(&a);
    });
}

/// SO_LINGER 0: close sends a reset and leaves no TIME_WAIT behind.
fn reset_on_close(c: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized option.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

fn run_work(w: Work, secs: f64) -> f64 {
    match w {
        Work::Exec { vars, loops } => {
            let e = env(vars);
            rate(loops, secs, || exec_true(&e))
        }
        Work::Connect { loops } => rate(loops, secs, connect_once),
    }
}

pub fn daemon(name: &str, toml: &str) -> (Daemon, Duration) {
    let t0 = Instant::now();
    let d = Daemon::start_with_config(name, toml);
    (d, t0.elapsed())
}

/// utime + stime of the daemon, seconds.
fn cpu_s(d: &Daemon) -> f64 {
    cpu_ticks(d) as f64 / clock_ticks()
}

/// (VmRSS, RssAnon, RssFile) of the daemon, MB (10^6).
fn rss(d: &Daemon) -> (f64, f64, f64) {
    let mb = status_mb(d);
    (mb("VmRSS:"), mb("RssAnon:"), mb("RssFile:"))
}

/// The daemon's peak RSS so far (VmHWM), MB (10^6).
fn peak_rss(d: &Daemon) -> f64 {
    status_mb(d)("VmHWM:")
}

/// A reader of the daemon's `/proc/PID/status` sizes, in MB (10^6), read once.
fn status_mb(d: &Daemon) -> impl Fn(&str) -> f64 {
    let pid = d.child.as_ref().expect("daemon running").id();
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    move |k: &str| -> f64 {
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            * 1024.0
            / 1e6
    }
}

/// Kernel memory the daemon's BPF objects hold, MB (10^6): (maps, programs), each counted
/// once by id, from the `memlock` line the kernel gives in `/proc/PID/fdinfo` for every
/// map and program fd. The maps include the two rings, whose pages are also in RssFile
/// once the daemon has read them.
fn kernel_mem(d: &Daemon) -> (f64, f64) {
    use crate::write_bench::{bpf_fdinfo, fdinfo_field};
    let pid = d.child.as_ref().expect("daemon running").id();
    // The memlock of each distinct `id_key` among the fds of `kind`.
    let sum = |kind: &str, id_key: &str| {
        let mut seen = std::collections::HashSet::new();
        bpf_fdinfo(pid, kind)
            .iter()
            .filter(|info| fdinfo_field(info, id_key).is_some_and(|id| seen.insert(id)))
            .filter_map(|info| fdinfo_field(info, "memlock"))
            .sum::<u64>() as f64
            / 1e6
    };
    (sum("bpf-map", "map_id"), sum("bpf-prog", "prog_id"))
}

/// Waits for an idle host that did not come within 5 s (see `host_quiet`): (gave up, waits).
static QUIET_GAVE_UP: (
    std::sync::atomic::AtomicUsize,
    std::sync::atomic::AtomicUsize,
) = (
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
);

/// Waits until the whole host is idle (under 3 % of its CPUs busy over 200 ms, from
/// `/proc/stat`), at most 5 s; a wait that gives up is counted (`QUIET_GAVE_UP`).
fn host_quiet() {
    use std::sync::atomic::Ordering::Relaxed;
    QUIET_GAVE_UP.1.fetch_add(1, Relaxed);
    let busy = || -> (u64, u64) {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().sum();
        // idle and iowait are fields 4 and 5.
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (total - idle, total)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (b0, t0) = busy();
        std::thread::sleep(Duration::from_millis(200));
        let (b1, t1) = busy();
        if t1 > t0 && ((b1 - b0) as f64) < 0.03 * (t1 - t0) as f64 {
            return;
        }
    }
    QUIET_GAVE_UP.0.fetch_add(1, Relaxed);
}

/// Waits until the daemon's CPU time stops rising (caught up), at most `secs`.
pub fn quiet(d: &Daemon, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = cpu_s(d);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = cpu_s(d);
        if now - last < 0.01 || Instant::now() > deadline {
            return;
        }
        last = now;
    }
}

#[derive(Default)]
struct Results {
    /// (work, monitor, round, rate)
    micro: Vec<(Work, Mon, usize, f64)>,
    /// Daemon CPU seconds per call, per work (one per round).
    cpu_per_call: Vec<(Work, f64)>,
    starts: Vec<Duration>,
    stops: Vec<Duration>,
}

impl Results {
    fn rates(&self, w: Work, m: Mon) -> Vec<f64> {
        self.micro
            .iter()
            .filter(|r| r.0 == w && r.1 == m)
            .map(|r| r.3)
            .collect()
    }

    fn ratio(&self, w: Work, a: Mon, b: Mon) -> f64 {
        let (x, y) = (self.rates(w, a), self.rates(w, b));
        median(x.iter().zip(&y).map(|(a, b)| a / b).collect())
    }
}

/// Six rounds of 0.8 s runs: seven of 1 s until 2026-12-07, cut so the part fits in 10
/// minutes. Five rounds of 1 s had the exec cells move by up to 8 % between runs on this
/// VM (the floor alone read 0.90–1.08 of no monitor); six of 0.8 s have not been measured
/// against that, so the tables give each cell's min–max.
pub fn run() -> String {
    let rounds: usize = env_or("LW_BENCH_COST_ROUNDS", 6);
    let secs: f64 = env_or("LW_BENCH_COST_SECS", 0.8);
    let t0 = Instant::now();
    // Where the part's time goes, for whoever has to keep it under 10 minutes.
    let took = |what: &str| {
        eprintln!(
            "cost bench: {what} done at {:.0} s",
            t0.elapsed().as_secs_f64()
        )
    };
    let mut res = Results::default();
    for round in 0..rounds {
        for k in 0..MONS.len() {
            let mon = MONS[(round + k) % MONS.len()];
            let mut d = None;
            let mut floor = None;
            match mon {
                Mon::None | Mon::OutOfScope => {}
                Mon::Floor => floor = Some(load_floor()),
                Mon::Daemon => {
                    let (dm, took) = daemon("cost-micro", "");
                    res.starts.push(took);
                    quiet(&dm, 5);
                    d = Some(dm);
                }
            }
            for (i, _) in WORKS.iter().enumerate() {
                // Rotate the workloads too.
                let w = WORKS[(i + round) % WORKS.len()];
                let c0 = d.as_ref().map(cpu_s);
                let r = run_work(w, secs);
                if let (Some(dm), Some(c0)) = (d.as_ref(), c0) {
                    quiet(dm, 5);
                    let calls = r * secs;
                    res.cpu_per_call.push((w, (cpu_s(dm) - c0) / calls));
                }
                res.micro.push((w, mon, round, r));
            }
            drop(floor);
            if let Some(mut dm) = d {
                let t0 = Instant::now();
                dm.stop();
                res.stops.push(t0.elapsed());
            }
        }
        eprintln!("cost bench: micro round {}/{rounds} done", round + 1);
    }
    took("micro");
    // Ten rounds (20 pairs for the agent), with the waits for an idle host: ~4.5 of the
    // part's ~9.5 minutes (issue 13 asks for under 10; it had eleven until 2026-12-07).
    let macro_ = macro_rounds(env_or("LW_BENCH_MACRO_ROUNDS", 10));
    took("macro");
    let (loss, footprint) = loss_and_footprint();
    took("loss, footprint and latency");
    let (batches, growth) = alerting_batches();
    took("alerting batches");
    let mut md = String::new();
    report_micro(&mut md, &res, rounds, secs);
    let macro_verdict = report_macro(&mut md, &macro_);
    md.push_str(&loss);
    md.push_str(&batches);
    report_footprint(&mut md, &res, &footprint);
    let summary = summary(&res, &macro_verdict, growth, &footprint);
    md.replace(SUMMARY, &summary)
}

/// The table an SRE reads first: each figure, its target, met or not.
fn summary(res: &Results, m: &MacroVerdict, growth: f64, f: &Footprint) -> String {
    let worst = |pred: fn(&Work) -> bool| {
        WORKS
            .iter()
            .filter(|w| pred(w))
            .map(|&w| res.ratio(w, Mon::Daemon, Mon::Floor))
            .fold(f64::MAX, f64::min)
    };
    let exec = worst(|w| matches!(w, Work::Exec { .. }));
    let connect = worst(|w| matches!(w, Work::Connect { .. }));
    let ok = |b: bool| if b { "met" } else { "**not met**" };
    let mut md = String::new();
    writeln!(md, "| at a glance | measured | target | |").unwrap();
    writeln!(md, "|---|---|---|---|").unwrap();
    let mut row = |what: &str, v: String, target: &str, met: &str| {
        writeln!(md, "| {what} | {v} | {target} | {met} |").unwrap();
    };
    row(
        "exec loops vs the floor (worst of 3/30 KiB env, 1 and 2 loops)",
        format!("{exec:.3}"),
        ">= 0.9",
        ok(exec >= 0.9),
    );
    row(
        "connect loops vs the floor (worst of 1 and 2 loops)",
        format!("{connect:.3}"),
        "(out of scope: >= 0.95)",
        "",
    );
    let macro_cell: Vec<String> = m
        .rows
        .iter()
        .map(|(w, r, (lo, hi), cpu)| {
            format!("{w} {r:.3} (95 % CI {lo:.3}–{hi:.3}; its CPU {cpu:.3})")
        })
        .collect();
    row(
        "agent workload and C build vs no monitor",
        macro_cell.join("; "),
        ">= 0.97",
        m.verdict,
    );
    let (floor, lw) = m.attributable;
    row(
        "agent: its core's CPU attributable to watching (perf call chains; a lower bound)",
        format!(
            "{:.2} % (implies {:.3}); the floor's {:.2} %",
            lw * 100.0,
            1.0 / (1.0 + lw),
            floor * 100.0
        ),
        "",
        "",
    );
    if let Some((wall, cpu)) = m.out_of_scope {
        row(
            "agent workload out of scope (leakwatch watching other processes) vs no monitor",
            format!("{wall:.3} (its CPU {cpu:.3})"),
            "",
            "",
        );
    }
    row(
        "RSS at idle, every family attached (peak from start)",
        format!("{:.1} MB ({:.1} MB)", f.idle_rss.0, f.start_peak),
        "< 64 MB",
        ok(f.idle_rss.0 < 64.0),
    );
    row(
        "kernel memory of its BPF maps and programs",
        format!("{:.1} MB", f.kernel_mem.0 + f.kernel_mem.1),
        "",
        "",
    );
    row(
        "CPU at idle",
        format!("{:.2} % of a core", f.idle_cpu_pct),
        "",
        "",
    );
    row(
        "latency, event to alert, idle p99 (worst of exec, log burst, HTTP body)",
        format!("<= {} ms", f.lat_idle.worst_p99()),
        "< 10 ms",
        ok(f.lat_idle.worst_p99() < 10.0),
    );
    row(
        "the same under the agent workload",
        format!("<= {} ms", f.lat_agent.worst_p99()),
        "",
        "",
    );
    row(
        "loss accounting, storms exact",
        format!("{} of {}", f.exact.0, f.exact.1),
        "all",
        ok(f.exact.0 == f.exact.1),
    );
    row(
        "CPU per 1,000 alerting execs, last 3 of 8 batches vs first 3",
        format!("{growth:.2}x"),
        "flat",
        ok(growth < 1.3),
    );
    row(
        "start (spawn to ready), stop (SIGTERM to exit)",
        format!(
            "{:.0} ms, {:.0} ms",
            median(res.starts.iter().map(|d| d.as_secs_f64() * 1e3).collect()),
            median(res.stops.iter().map(|d| d.as_secs_f64() * 1e3).collect())
        ),
        "",
        "",
    );
    md.push('\n');
    md
}

fn report_micro(md: &mut String, res: &Results, rounds: usize, secs: f64) {
    writeln!(md, "## {TITLE}\n").unwrap();
    writeln!(
        md,
        "Machine: {} x {}, kernel {}. Produced by `cargo xtask bench --only cost`. {rounds} rounds; in each, every configuration takes one turn (order rotated each round) and runs every workload for {secs} s (order rotated too). Rates are medians over rounds (min–max); a ratio is the median over rounds of the two rates from the same round. **floor**: `leakwatch::probes::load_floor` on every tracepoint the daemon attaches ({} of them: syscalls, sched, io_uring), a bare per-CPU counter; no probe on the same hooks can cost less. **leakwatch**: the daemon with no config at all (everything in scope, defaults), its start and stop untimed. The exec loop is the bench itself spawning `/bin/true` (`posix_spawn`) and waiting for it, with the environment given; the connect loop connects to a loopback listener of its own, accepts, and closes both ends with a reset.\n",
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        leakwatch::probes::all_tracepoints().len(),
    )
    .unwrap();
    md.push_str(SUMMARY);
    writeln!(md, "### Micro: exec and connect loops\n").unwrap();
    writeln!(md, "| workload | no monitor /s | floor /s | leakwatch /s | floor vs none | leakwatch vs none | **leakwatch vs floor** | daemon CPU per call |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|").unwrap();
    for w in WORKS {
        let cell = |m: Mon| {
            let v = res.rates(w, m);
            let (lo, hi) = min_max(&v);
            format!("{:.0} ({:.0}–{:.0})", median(v), lo, hi)
        };
        let cpu: Vec<f64> = res
            .cpu_per_call
            .iter()
            .filter(|c| c.0 == w)
            .map(|c| c.1)
            .collect();
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.3} | **{:.3}** | {:.1} µs |",
            w.label(),
            cell(Mon::None),
            cell(Mon::Floor),
            cell(Mon::Daemon),
            res.ratio(w, Mon::Floor, Mon::None),
            res.ratio(w, Mon::Daemon, Mon::None),
            res.ratio(w, Mon::Daemon, Mon::Floor),
            median(cpu) * 1e6
        )
        .unwrap();
    }
    let exec_min = WORKS
        .iter()
        .filter(|w| matches!(w, Work::Exec { .. }))
        .map(|&w| res.ratio(w, Mon::Daemon, Mon::Floor))
        .fold(f64::MAX, f64::min);
    writeln!(
        md,
        "\nTarget: exec >= 0.9 of the floor: {} (lowest {:.3}). Daemon CPU per call is its utime+stime over the run (until it went idle) divided by the calls: with one loop on a 2-core host, the daemon runs on the other core and costs the loop nothing until that core is busy too.\n",
        if exec_min >= 0.9 { "met" } else { "**not met**" },
        exec_min
    )
    .unwrap();
}

/// A round's wall time and CPU of one macro workload under one monitor (the mean of the
/// round's two runs where it has two).
struct Run {
    work: &'static str,
    mon: Mon,
    wall: f64,
    /// User + system CPU of the workload's processes (`children_cpu`).
    cpu: f64,
}

/// Wall time and CPU of each macro workload per (monitor, round).
struct Macro {
    runs: Vec<Run>,
    /// The agent's adjacent pairs: (wall, CPU) of no monitor over the daemon.
    pairs: Vec<(f64, f64)>,
    /// CPU accounting, one extra run of each workload (see `cpu_account`).
    cpu: Vec<Cpu>,
    /// Where the agent's CPU goes (see `cost_profile`).
    profile: crate::cost_profile::Profile,
}

/// What one run of a workload cost in CPU, without and with the daemon.
struct Cpu {
    work: &'static str,
    /// The workload's own user + system CPU (its reaped processes), no monitor.
    none_s: f64,
    /// The same with the daemon (kernel program time runs in the workload: included).
    with_s: f64,
    /// The daemon's user + system CPU for the run, until it went quiet.
    daemon_s: f64,
    /// Kernel program time over the run (bpf_stats), every program the daemon holds.
    bpf_s: f64,
}

/// Requests per agent run: about 1 s here, long enough that scheduling noise on a 2-core
/// VM does not decide the ratio.
const AGENT_REQUESTS: usize = 1500;

/// The agent. It ends without `srv.shutdown()`: that waits for `serve_forever`'s next
/// 0.5 s poll, a fixed sleep that made every run half a second longer and diluted the
/// ratio (the server thread is a daemon thread: exit ends it).
const AGENT_PY: &str = r#"
import http.server, json, logging, os, subprocess, sys, threading, urllib.request
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length']))
        out = json.dumps({"ok": True, "echo": json.loads(body)["messages"][-1]}).encode()
        self.send_response(200); self.send_header('Content-Length', str(len(out))); self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
url = 'http://127.0.0.1:%d/v1/chat' % srv.server_address[1]
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
log = logging.getLogger('agent')
history = []
for i in range(int(sys.argv[2])):
    history = (history + [{"role": "user", "content": "step %d: summarise the build log and plan the next change" % i}])[-20:]
    req = urllib.request.Request(url, data=json.dumps({"model": "m", "messages": history}).encode(), headers={'Content-Type': 'application/json'})
    reply = json.loads(urllib.request.urlopen(req).read())
    log.info('step %d reply %s', i, json.dumps(reply)[:200])
    if i % 25 == 0:
        subprocess.run(['ls', '-la', os.path.dirname(sys.argv[1])], stdout=subprocess.DEVNULL, check=True)
"#;

fn c_project(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let mut objs = Vec::new();
    for i in 0..24 {
        let mut src = "#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\n".to_string();
        for j in 0..40 {
            writeln!(src, "static int f{j}(const char *s, int n) {{ int h = {j}; for (int k = 0; k < n; k++) h = h * 31 + s[k % (int)strlen(s)]; return h ^ (n << {s}); }}", s = j % 7).unwrap();
        }
        write!(src, "int unit{i}(int n) {{ int t = 0;").unwrap();
        for j in 0..40 {
            write!(src, " t += f{j}(\"unit{i}\", n + {j});").unwrap();
        }
        src.push_str(" return t; }\n");
        fs::write(dir.join(format!("u{i}.c")), src).unwrap();
        objs.push(format!("u{i}.o"));
    }
    fs::write(
        dir.join("Makefile"),
        format!(
            "all: lib.a\nlib.a: {}\n\tar rcs $@ $^\n%.o: %.c\n\tcc -O2 -c $< -o $@\nclean:\n\trm -f *.o lib.a\n",
            objs.join(" ")
        ),
    )
    .unwrap();
}

fn timed(mut c: Command) -> f64 {
    let t0 = Instant::now();
    let out = c.output().expect("running a macro workload");
    assert!(
        out.status.success(),
        "macro workload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed().as_secs_f64()
}

/// `timed`, with the CPU (user + system) of the processes it reaped.
fn timed_cpu(c: Command) -> (f64, f64) {
    let c0 = children_cpu();
    let wall = timed(c);
    (wall, children_cpu() - c0)
}

/// The interpreter `python3` runs, resolved once: a shim in front of it (pyenv's, on this
/// host) would add ~70 ms of bash and a dozen execs to every agent run.
fn python() -> &'static Path {
    static EXE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let o = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("running python3");
        let exe = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(
            o.status.success() && !exe.is_empty(),
            "python3 did not say where its interpreter is"
        );
        exe.into()
    })
}

/// Pins a command to CPU 0 (the agent workload: see `report_macro`).
fn pinned(c: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The floor: a bare counter on every tracepoint the daemon attaches.
pub fn load_floor() -> leakwatch::probes::Floor {
    let tracepoints = leakwatch::probes::all_tracepoints();
    let names: Vec<&str> = tracepoints.iter().map(|s| s.as_str()).collect();
    leakwatch::probes::load_floor(&names)
        .unwrap_or_else(|e| panic!("loading the floor failed: {e:#}"))
}

/// Each round: the agent with no monitor and with the daemon as two adjacent pairs (none
/// then leakwatch, leakwatch then none; one daemon serves both leakwatch runs, with the
/// build between them), the build with no monitor (after them in even rounds, before them
/// in odd ones), then the agent once with the floor and once scoped out. Pairs are
/// adjacent because a run's time drifts with the host: rounds of config blocks put blocks
/// apart by ten seconds and more, and their ratios spread twice as wide.
fn macro_rounds(rounds: usize) -> Macro {
    let dir = std::env::temp_dir().join(format!("leakwatch-bench-cost-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let script = dir.join("agent.py");
    fs::write(&script, AGENT_PY).unwrap();
    let proj = dir.join("cproj");
    c_project(&proj);
    let mut m = Macro {
        runs: Vec::new(),
        pairs: Vec::new(),
        cpu: Vec::new(),
        profile: crate::cost_profile::Profile::default(),
    };
    // Each timed agent run starts on a quiet host: right after a daemon's stop the kernel is
    // still freeing its programs and maps, and after a build the daemon is still reading
    // the build's records; a run that met either varied by up to 15 %.
    let agent = || {
        host_quiet();
        timed_cpu(agent_run(&dir, &script))
    };
    let start = |toml: &str| {
        let (d, _) = daemon("cost-macro", toml);
        quiet(&d, 5);
        d
    };
    // The same waits for the build; with the daemon, for it to catch up too.
    let build = |d: Option<&Daemon>| {
        if let Some(d) = d {
            quiet(d, 5);
        }
        host_quiet();
        timed_cpu(build_run(&proj))
    };
    for round in 0..rounds {
        // The build's two runs take turns at going first, as the agent's pairs do.
        let build_first = round % 2 == 1;
        let early_build = build_first.then(|| build(None));
        let none_a = agent();
        let mut d = start("");
        let in_a = agent();
        let build_in = build(Some(&d));
        quiet(&d, 5);
        let in_b = agent();
        d.stop();
        let none_b = agent();
        let build_none = early_build.unwrap_or_else(|| build(None));
        let floor = load_floor();
        let with_floor = agent();
        drop(floor);
        let mut d = start(SCOPE_OUT);
        let out = agent();
        d.stop();
        for (none, with) in [(none_a, in_a), (none_b, in_b)] {
            m.pairs.push((none.0 / with.0, none.1 / with.1));
        }
        let mid = |a: (f64, f64), b: (f64, f64)| ((a.0 + b.0) / 2.0, (a.1 + b.1) / 2.0);
        for (work, mon, (wall, cpu)) in [
            ("agent", Mon::None, mid(none_a, none_b)),
            ("agent", Mon::Daemon, mid(in_a, in_b)),
            ("agent", Mon::Floor, with_floor),
            ("agent", Mon::OutOfScope, out),
            ("build", Mon::None, build_none),
            ("build", Mon::Daemon, build_in),
        ] {
            m.runs.push(Run {
                work,
                mon,
                wall,
                cpu,
            });
        }
        eprintln!("cost bench: macro round {}/{rounds} done", round + 1);
    }
    let t0 = Instant::now();
    m.cpu = cpu_account(&dir, &script, &proj);
    eprintln!(
        "cost bench: CPU accounts took {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    m.profile = crate::cost_profile::profile(&dir, &script);
    eprintln!(
        "cost bench: profile took {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&dir);
    m
}

/// One agent run, pinned to CPU 0 (see `report_macro`).
pub fn agent_run(dir: &Path, script: &Path) -> Command {
    let mut py = Command::new(python());
    py.arg(script)
        .arg(dir.join("agent.log"))
        .arg(AGENT_REQUESTS.to_string());
    pinned(&mut py);
    py
}

/// One build from clean: cleans now (untimed), returns the build to time.
fn build_run(proj: &Path) -> Command {
    let mut clean = Command::new("make");
    clean.arg("-C").arg(proj).arg("clean");
    timed(clean);
    let mut make = Command::new("make");
    make.arg("-C").arg(proj).arg("-j2");
    make
}

/// user + system CPU of this process's reaped children, seconds.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// One more run of each workload without and with the daemon, counting CPU instead of
/// wall time: the workload's own, the daemon's, and the kernel programs' (bpf_stats on
/// for these runs only: stats add a clock read per call, so no timed run had them).
fn cpu_account(dir: &Path, script: &Path, proj: &Path) -> Vec<Cpu> {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let agent = || agent_run(dir, script);
    let build = || build_run(proj);
    let work: [(&'static str, &dyn Fn() -> Command); 2] = [("agent", &agent), ("build", &build)];
    let mut none = Vec::new();
    for (_, w) in &work {
        none.push(timed_cpu(w()).1);
    }
    let (mut d, _) = daemon("cost-macro-cpu", "");
    quiet(&d, 5);
    let was = fs::read_to_string(SYSCTL).unwrap_or_default();
    let stats = fs::write(SYSCTL, "1").is_ok();
    let pid = d.child.as_ref().expect("daemon running").id();
    let bpf_ns = || -> u64 {
        crate::write_bench::prog_stats(pid)
            .iter()
            .map(|p| p.1)
            .sum()
    };
    let mut out = Vec::new();
    for ((name, w), none_s) in work.iter().zip(none) {
        let c = w();
        let (d0, b0) = (cpu_s(&d), bpf_ns());
        let (_, with_s) = timed_cpu(c);
        quiet(&d, 5);
        out.push(Cpu {
            work: name,
            none_s,
            with_s,
            daemon_s: cpu_s(&d) - d0,
            bpf_s: if stats {
                (bpf_ns() - b0) as f64 / 1e9
            } else {
                f64::NAN
            },
        });
    }
    let _ = fs::write(SYSCTL, was.trim());
    d.stop();
    out
}

/// The macro rows for the summary: each workload's median ratio, its interval and its CPU
/// ratio (its processes' own CPU, no monitor / leakwatch), and the verdict over both.
struct MacroVerdict {
    rows: Vec<(&'static str, f64, (f64, f64), f64)>,
    verdict: &'static str,
    /// The agent out of scope: (wall, CPU) ratio to no monitor.
    out_of_scope: Option<(f64, f64)>,
    /// The floor's and leakwatch's share of the agent's core (see `cost_profile`).
    attributable: (f64, f64),
}

fn report_macro(md: &mut String, m: &Macro) -> MacroVerdict {
    writeln!(md, "### Macro: real work, against no monitor\n").unwrap();
    let rounds = m
        .runs
        .iter()
        .filter(|r| r.work == "agent" && r.mon == Mon::None)
        .count();
    let pairs = m.pairs.len();
    let (gave_up, waits) = (
        QUIET_GAVE_UP.0.load(std::sync::atomic::Ordering::Relaxed),
        QUIET_GAVE_UP.1.load(std::sync::atomic::Ordering::Relaxed),
    );
    writeln!(md, "**agent**: python3 with a local HTTP server, run by the interpreter itself (`sys.executable`, resolved once: before 2026-12-06 every run went through this host's pyenv shim, ~70 ms of bash and a dozen execs); {AGENT_REQUESTS} chat-style POSTs with JSON bodies (the last 20 messages), each reply logged to a file, `ls` run every 25 requests; pinned to CPU 0 (the daemon is not pinned: it runs where the scheduler puts it). Pinned, because unpinned its run time depended mostly on where the scheduler put its two threads. It ends without `srv.shutdown()`: reports before 2026-12-05 timed a fixed 0.5 s shutdown sleep with every run, which diluted the ratio by a third. **build**: `make -j2` of 24 generated C files (`cc -O2`) into an archive, from clean, on both cores. {rounds} rounds; in each, in this order: the agent with no monitor; the daemon started, the agent, the build, the agent, the daemon stopped; the agent with no monitor; the build with no monitor (moved to the start of the round in every second round, so the build's two runs take turns at going first); the agent with the floor; the agent with the daemon scoped away from it (`[scope] comms` naming no process of the bench). So each round gives the agent two **adjacent pairs** (no monitor then leakwatch, leakwatch then no monitor), {pairs} in all, and the agent's ratio is the median over the pairs of no-monitor time / leakwatch time (1.0 = no cost). Adjacent, because a run's time drifts with the host: in the earlier design (every configuration's runs in a block, blocks rotated), pairs were ten seconds and more apart and the 95 % interval spanned 0.940–1.017; 30 adjacent pairs by hand gave a standard deviation of 1.7 % per pair (2026-12-06). Every timed run (agent and build) waits first for the host to be idle (under 3 % of its CPUs busy over 200 ms; at most 5 s: {gave_up} of {waits} waits gave up and ran anyway), and a run with the daemon also for the daemon to have caught up (after its start, and after the build): runs that started while the kernel was still freeing a stopped daemon's programs and maps, or while the daemon read the build's records, took up to 15 % longer (by hand, 2026-12-07: 12 pairs without the waits spread 6.2 % (one 1.27 s run among 1.06–1.17 s), with them 1.6 %). The build's ratio and the agent's other columns are per round (the mean of a round's two runs where it has two), medians over rounds. The floor splits the agent's cost: **floor vs none** is what any probe on these tracepoints costs (the syscall tracing slow path and a program call per hooked syscall), **leakwatch vs floor** what leakwatch adds to that. **out of scope** is what a process leakwatch does not watch pays on a host where it watches others (its connects, execs and exits still go through the programs; its writes stop at the scope check).\n\n**95 % CI** is the order-statistic interval of the median (no assumption on the spread; its coverage under the table). The verdict is met when the interval lies at or above the target, not met when below it, and *within noise* when it straddles it (or when too few values make no 95 % interval). **its CPU** is the same ratio over the user + system CPU of the workload's own processes (the kernel programs run in them, so their time is in it; the daemon's own CPU is not, see the next table), with its own interval; against the floor it splits what any probe on these hooks costs the workload from what leakwatch adds.\n").unwrap();
    writeln!(
        md,
        "| workload | no monitor (s) | floor (s) | leakwatch (s) | floor vs none | leakwatch vs floor | **leakwatch vs none** | 95 % CI | min–max | its CPU: floor vs none | its CPU: leakwatch vs none (95 % CI) | out of scope vs none (its CPU) |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|").unwrap();
    let mut out = MacroVerdict {
        rows: Vec::new(),
        verdict: "met",
        out_of_scope: None,
        attributable: (m.profile.share(1), m.profile.share(2)),
    };
    let mut coverage = Vec::new();
    for w in ["agent", "build"] {
        let t = |mon: Mon, cpu: bool| -> Vec<f64> {
            m.runs
                .iter()
                .filter(|r| r.work == w && r.mon == mon)
                .map(|r| if cpu { r.cpu } else { r.wall })
                .collect()
        };
        let (a, f, b) = (
            t(Mon::None, false),
            t(Mon::Floor, false),
            t(Mon::Daemon, false),
        );
        let ratio_of =
            |x: &[f64], y: &[f64]| -> Vec<f64> { x.iter().zip(y).map(|(x, y)| x / y).collect() };
        // The agent's from its adjacent pairs, the build's from its rounds.
        let (ratios, cpus) = if w == "agent" {
            (
                m.pairs.iter().map(|p| p.0).collect(),
                m.pairs.iter().map(|p| p.1).collect(),
            )
        } else {
            (
                ratio_of(&a, &b),
                ratio_of(&t(Mon::None, true), &t(Mon::Daemon, true)),
            )
        };
        let (lo, hi) = min_max(&ratios);
        let (ci_lo, ci_hi, cov) = median_ci(&ratios);
        let (cpu_lo, cpu_hi, _) = median_ci(&cpus);
        coverage.push(format!(
            "{w}: {:.1} % over {} {}",
            cov * 100.0,
            ratios.len(),
            if w == "agent" { "pairs" } else { "rounds" }
        ));
        let ratio = median(ratios.clone());
        let cpu = median(cpus);
        let floor_cpu = ratio_of(&t(Mon::None, true), &t(Mon::Floor, true));
        let out_of_scope = match t(Mon::OutOfScope, false) {
            o if o.is_empty() => "—".to_string(),
            o => {
                let r = (
                    median(ratio_of(&a, &o)),
                    median(ratio_of(&t(Mon::None, true), &t(Mon::OutOfScope, true))),
                );
                out.out_of_scope = Some(r);
                format!("{:.3} ({:.3})", r.0, r.1)
            }
        };
        out.rows.push((w, ratio, (ci_lo, ci_hi), cpu));
        out.verdict = match (out.verdict, verdict_ci(&ratios, 0.97)) {
            ("**not met**", _) | (_, "**not met**") => "**not met**",
            ("within noise", _) | (_, "within noise") => "within noise",
            _ => "met",
        };
        let cell = |v: Vec<f64>, digits: usize| {
            if v.is_empty() {
                "—".to_string()
            } else {
                format!("{:.*}", digits, median(v))
            }
        };
        writeln!(
            md,
            "| {w} | {:.2} | {} | {:.2} | {} | {} | **{ratio:.3}** | {ci_lo:.3}–{ci_hi:.3} | {lo:.3}–{hi:.3} | {} | {cpu:.3} ({cpu_lo:.3}–{cpu_hi:.3}) | {out_of_scope} |",
            median(a.clone()),
            cell(f.clone(), 2),
            median(b.clone()),
            cell(ratio_of(&a, &f), 3),
            cell(ratio_of(&f, &b), 3),
            cell(floor_cpu, 3),
        )
        .unwrap();
    }
    writeln!(
        md,
        "\nTarget >= 0.97: {} (each interval covers the median with the confidence given: {}).\n",
        out.verdict,
        coverage.join("; ")
    )
    .unwrap();
    writeln!(md, "**The same in CPU**, which this VM's scheduling noise does not move: one more run of each workload without and with the daemon. The workload's CPU is user + system of its processes (the kernel programs run in them: with the daemon it includes their time); the daemon's is its own until it went quiet; kernel program time is bpf_stats' `run_time_ns` over the daemon's programs, switched on for this run only. leakwatch's share is (daemon CPU + kernel program time) / the workload's CPU with no monitor.\n").unwrap();
    writeln!(md, "| workload | its CPU, no monitor | its CPU, with leakwatch | daemon CPU | kernel program time | **leakwatch's share** |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|").unwrap();
    for c in &m.cpu {
        writeln!(
            md,
            "| {} | {:.2} s | {:.2} s | {:.0} ms | {:.1} ms | **{:.1} %** |",
            c.work,
            c.none_s,
            c.with_s,
            c.daemon_s * 1e3,
            c.bpf_s * 1e3,
            (c.daemon_s + c.bpf_s) / c.none_s * 100.0
        )
        .unwrap();
    }
    writeln!(md).unwrap();
    m.profile.report(md);
    out
}

struct Footprint {
    settled_rss: (f64, f64, f64),
    /// Storms accounted exactly, of all.
    exact: (usize, usize),
    idle_rss: (f64, f64, f64),
    /// The highest RSS from start to idle (VmHWM), MB.
    start_peak: f64,
    /// Kernel memory of the BPF maps and programs, MB (`kernel_mem`).
    kernel_mem: (f64, f64),
    idle_cpu_pct: f64,
    load_rss: (f64, f64, f64),
    /// Latency at idle, with two exec loops busy on both cores, under the agent workload.
    lat_idle: Lat,
    lat_busy: Lat,
    lat_agent: Lat,
}

/// One storm's accounting: calls the kernel saw (the second counter), and the daemon's
/// processed, ring-lost and queue-dropped deltas for the same probe.
struct Storm {
    what: String,
    secs: f64,
    seen: u64,
    events: u64,
    /// Calls the kernel folded into a record before them (connect repeats).
    folded: u64,
    lost: u64,
    dropped: u64,
}

impl Storm {
    fn exact(&self) -> bool {
        self.events + self.folded + self.lost + self.dropped == self.seen
    }
}

/// Scrapes the daemon's metrics over one kept-alive connection: a scrape then makes no
/// connect of its own, which would land in the connect storm's accounting.
struct Scraper(std::io::BufReader<TcpStream>);

impl Scraper {
    fn new(d: &Daemon) -> Scraper {
        Scraper(std::io::BufReader::new(
            TcpStream::connect(&d.metrics).expect("connecting to the metrics endpoint"),
        ))
    }

    fn get(&mut self) -> String {
        use std::io::{BufRead, Read, Write};
        self.0
            .get_mut()
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            .expect("sending a scrape");
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).expect("reading a scrape");
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().expect("a content length");
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0u8; len];
        self.0
            .read_exact(&mut body)
            .expect("reading a scrape's body");
        String::from_utf8(body).expect("metrics are text")
    }
}

/// Processed, folded, ring-lost and queue-dropped, for `probe`.
fn counters(sc: &mut Scraper, probe: &str) -> [u64; 4] {
    let t = sc.get();
    let g = |n: &str| metric(&t, n, &[("probe", probe)]) as u64;
    [
        g("leakwatch_events_total"),
        g("leakwatch_kernel_folded_total"),
        g("leakwatch_lost_events_total"),
        g("leakwatch_pipeline_dropped_total"),
    ]
}

/// Runs `load` with a second counter on `tracepoints` and returns the accounting.
fn storm(d: &Daemon, what: &str, tracepoints: &[&str], probe: &str, load: impl FnOnce()) -> Storm {
    let floor = leakwatch::probes::load_floor(tracepoints).expect("loading the counter");
    let mut sc = Scraper::new(d);
    quiet(d, 10);
    // The loss poll runs once a second: let the last one land before reading.
    std::thread::sleep(Duration::from_millis(1200));
    let (f0, c0) = (floor.calls().unwrap(), counters(&mut sc, probe));
    let t0 = Instant::now();
    load();
    let secs = t0.elapsed().as_secs_f64();
    quiet(d, 20);
    std::thread::sleep(Duration::from_millis(1200));
    // Both counters read at the end of the same window: a call made by anyone on the host
    // while the daemon caught up is in both.
    let f1 = floor.calls().unwrap();
    let c1 = counters(&mut sc, probe);
    Storm {
        what: what.to_string(),
        secs,
        seen: f1 - f0,
        events: c1[0] - c0[0],
        folded: c1[1] - c0[1],
        lost: c1[2] - c0[2],
        dropped: c1[3] - c0[3],
    }
}

/// Exec at `per_s` from 2 threads for `secs` (paced; a thread that falls behind runs flat out).
fn paced_execs(vars: &[(String, String)], per_s: f64, secs: f64) {
    let t0 = Instant::now();
    let n = (per_s * secs) as u64;
    on_two_threads(n as usize, |i| {
        let due = t0 + Duration::from_secs_f64(i as f64 / per_s);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        exec_true(vars);
    });
}

/// Alerting execs at 20/s, each with its own key; returns the latency quantiles.
fn alerting(d: &Daemon, n: usize) -> Quantiles {
    let before = d.scrape();
    let mut rng = leakwatch::detect::samples::Rng::from_time();
    for _ in 0..n {
        exec_true(&keyed_env(&mut rng));
        std::thread::sleep(Duration::from_millis(50));
    }
    quiet(d, 10);
    latency(&before, &d.scrape(), "env")
}

fn loss_and_footprint() -> (String, Footprint) {
    // Default config: latency is what an operator sees (a finding read again, as when a
    // file switches to by-reference capture, is a repeat and not alerted twice).
    let (d, _) = daemon("cost-loss", "");
    std::thread::sleep(Duration::from_secs(12));
    let idle_rss = rss(&d);
    let start_peak = peak_rss(&d);
    let kernel_mem = kernel_mem(&d);
    let c0 = cpu_s(&d);
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu_pct = (cpu_s(&d) - c0) / 10.0 * 100.0;
    let dir = std::env::temp_dir().join(format!("leakwatch-bench-lat-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let lat = |d: &Daemon| {
        let env = alerting(d, 200);
        let (file, socket) = leaking(d, 200, &dir);
        Lat { env, file, socket }
    };
    let lat_idle = lat(&d);
    // While `load` runs in a loop on another thread.
    let under = |load: &(dyn Fn() + Sync)| {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    load();
                }
            });
            let l = lat(&d);
            stop.store(true, Ordering::Relaxed);
            l
        })
    };
    // Two exec loops keeping both cores busy.
    let e = env(50);
    let lat_busy = under(&|| {
        rate(2, 0.5, || exec_true(&e));
    });
    // The macro part's agent, run after run, pinned to CPU 0 as there.
    let script = dir.join("agent.py");
    fs::write(&script, AGENT_PY).unwrap();
    let lat_agent = under(&|| {
        timed(agent_run(&dir, &script));
    });
    let _ = fs::remove_dir_all(&dir);
    // Exec records come from sched_process_exec (every exec that ran).
    let exec_tp = ["sched:sched_process_exec"];
    let mut storms = Vec::new();
    for vars in [50, 200, 800] {
        let e = env(vars);
        storms.push(storm(
            &d,
            &format!(
                "exec storm, {vars} variables ({} KiB), 2 loops flat out, 3 s",
                env_bytes(vars) / 1024
            ),
            &exec_tp,
            "sched_process_exec",
            || {
                rate(2, 3.0, || exec_true(&e));
            },
        ));
    }
    let big = env(800);
    for per_s in [500.0, 1000.0, 2000.0, 4000.0] {
        storms.push(storm(
            &d,
            &format!(
                "paced execs, {} KiB environment, {per_s:.0}/s asked, 2 s",
                env_bytes(800) / 1024
            ),
            &exec_tp,
            "sched_process_exec",
            || paced_execs(&big, per_s, 2.0),
        ));
    }
    storms.push(storm(
        &d,
        "connect storm, 2 loops flat out, 3 s",
        &["sys_enter_connect"],
        "sys_enter_connect",
        || {
            rate(2, 3.0, connect_once);
        },
    ));
    let load_rss = rss(&d);
    // What stays once the daemon has rested 3 s after the burst and handed freed heap
    // back (`leakwatch::heap::Trim`).
    std::thread::sleep(Duration::from_secs(8));
    let settled_rss = rss(&d);
    drop(d);
    let mut md = String::new();
    writeln!(md, "### Loss, exactly\n").unwrap();
    writeln!(md, "One daemon (defaults, rings of {} MiB for events and {} MiB for writes). For each storm a second counter program is attached to the same tracepoint (`seen`: every call the kernel made, by any process on the host); the daemon's `leakwatch_events_total` (processed), `leakwatch_kernel_folded_total` (connects repeating the process's last recorded one within a second, counted in the kernel and carried by its next record), `leakwatch_lost_events_total` (ring full) and `leakwatch_pipeline_dropped_total` (userspace queue full) deltas for that probe are read once it is idle again and its once-a-second loss poll has run. Exact means processed + folded + lost + dropped = seen: nothing vanished uncounted. The write family's accounting under an outrunning writer is in the write section.\n", 4, 4).unwrap();
    writeln!(
        md,
        "| storm | calls/s | seen | processed | folded (kernel) | lost (ring) | dropped (queue) | loss | accounted |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|---|---|").unwrap();
    for s in &storms {
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {:.2} % | {} |",
            s.what,
            s.seen as f64 / s.secs,
            s.seen,
            s.events,
            s.folded,
            s.lost,
            s.dropped,
            (s.lost + s.dropped) as f64 * 100.0 / s.seen.max(1) as f64,
            if s.exact() { "exact" } else { "**NOT EXACT**" }
        )
        .unwrap();
    }
    let first = storms
        .iter()
        .filter(|s| s.what.starts_with("paced") && s.lost + s.dropped > 0)
        .map(|s| s.seen as f64 / s.secs)
        .next();
    writeln!(
        md,
        "\nFirst loss on the paced ladder: {}. Storms accounted exactly: {} of {}.\n",
        first.map_or("none up to the fastest rate".to_string(), |r| format!(
            "at about {r:.0} execs/s"
        )),
        storms.iter().filter(|s| s.exact()).count(),
        storms.len()
    )
    .unwrap();
    (
        md,
        Footprint {
            settled_rss,
            exact: (storms.iter().filter(|s| s.exact()).count(), storms.len()),
            idle_rss,
            start_peak,
            kernel_mem,
            idle_cpu_pct,
            load_rss,
            lat_idle,
            lat_busy,
            lat_agent,
        },
    )
}

/// Batches in the alerting row; the first and last `TREND` are compared.
const BATCHES: usize = 8;
const TREND: usize = 3;

/// CPU per 1,000 alerting execs, batch after batch of distinct keys: must not grow. The
/// ratio of the median of the last batches to that of the first (what it returns), and the
/// least-squares slope over all of them.
fn alerting_batches() -> (String, f64) {
    let (d, _) = daemon("cost-batches", "");
    quiet(&d, 5);
    let mut rng = leakwatch::detect::samples::Rng::from_time();
    let mut md = String::new();
    writeln!(md, "### Daemon CPU per alerting exec, batch after batch\n").unwrap();
    writeln!(md, "{BATCHES} batches of 1,000 execs of `/bin/true` from 2 loops, each exec with its own fresh Anthropic key in a 50-variable environment (so every exec is a new finding: an alert, an action-log row, a dedupe entry). Daemon CPU per batch, until it is idle again: the run time the scheduler charged its threads (`/proc/PID/task/*/schedstat`, nanoseconds; utime and stime come in 10 ms ticks, as coarse as the figure itself).\n").unwrap();
    writeln!(
        md,
        "| batch | findings so far | daemon CPU per 1,000 execs |"
    )
    .unwrap();
    writeln!(md, "|---|---|---|").unwrap();
    let mut per = Vec::new();
    for b in 0..BATCHES {
        let keys: Vec<Vec<(String, String)>> = (0..1000).map(|_| keyed_env(&mut rng)).collect();
        let c0 = run_ns(&d);
        on_two_threads(keys.len(), |i| exec_true(&keys[i]));
        quiet(&d, 10);
        // Its threads live as long as it does, so the sum only grows.
        let c = run_ns(&d).saturating_sub(c0) as f64 / 1e9;
        per.push(c);
        writeln!(md, "| {} | {} | {:.3} s |", b + 1, (b + 1) * 1000, c).unwrap();
    }
    let (lo, hi) = min_max(&per);
    let first = median(per[..TREND].to_vec());
    let last = median(per[BATCHES - TREND..].to_vec());
    writeln!(
        md,
        "\nMedian of the last {TREND} batches vs the first {TREND}: {:.2}x; least-squares slope {:+.1} % of the first batches per 1,000 findings (min {lo:.3} s, max {hi:.3} s).\n",
        last / first,
        slope(&per) / first * 100.0
    )
    .unwrap();
    let mut d = d;
    d.stop();
    (md, last / first)
}

/// The daemon's run time so far, summed over its threads, in ns. Its threads live as long
/// as it does (a freeze's would not, but none runs here).
fn run_ns(d: &Daemon) -> u64 {
    let pid = d.child.as_ref().expect("daemon running").id();
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("daemon tasks")
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Least-squares slope of `y` over its index.
fn slope(y: &[f64]) -> f64 {
    let n = y.len() as f64;
    let mx = (n - 1.0) / 2.0;
    let my = y.iter().sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, v) in y.iter().enumerate() {
        num += (i as f64 - mx) * (v - my);
        den += (i as f64 - mx).powi(2);
    }
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

fn report_footprint(md: &mut String, res: &Results, f: &Footprint) {
    writeln!(md, "### Footprint and latency\n").unwrap();
    let ms = |v: &[Duration]| {
        let x: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        let (lo, hi) = min_max(&x);
        format!("{:.0} ms ({lo:.0}–{hi:.0})", median(x))
    };
    writeln!(md, "| what | measured |").unwrap();
    writeln!(md, "|---|---|").unwrap();
    writeln!(
        md,
        "| RSS at idle (12 s after ready, every family attached) | **{:.1} MB** (anon {:.1}, file {:.1}: the binary's pages and the two rings) |",
        f.idle_rss.0, f.idle_rss.1, f.idle_rss.2
    )
    .unwrap();
    writeln!(
        md,
        "| peak RSS from start to idle (`VmHWM`: the BTF read, the object's load, the look into every program on the host for TLS) | **{:.1} MB** |",
        f.start_peak
    )
    .unwrap();
    writeln!(
        md,
        "| kernel memory of its BPF maps and programs (`memlock` in fdinfo, each counted once) | **{:.1} MB** (maps {:.1}, the two rings among them; programs {:.1}) |",
        f.kernel_mem.0 + f.kernel_mem.1,
        f.kernel_mem.0,
        f.kernel_mem.1
    )
    .unwrap();
    writeln!(
        md,
        "| CPU at idle (10 s) | {:.2} % of a core |",
        f.idle_cpu_pct
    )
    .unwrap();
    writeln!(
        md,
        "| RSS right after the loss storms | {:.1} MB (anon {:.1}, file {:.1}) |",
        f.load_rss.0, f.load_rss.1, f.load_rss.2
    )
    .unwrap();
    writeln!(
        md,
        "| RSS 8 s later (the daemon trims freed heap once it has rested 3 s) | {:.1} MB (anon {:.1}, file {:.1}) |",
        f.settled_rss.0, f.settled_rss.1, f.settled_rss.2
    )
    .unwrap();
    crate::cost_latency::report(
        md,
        &[
            ("idle", &f.lat_idle),
            ("two exec loops busy on both cores", &f.lat_busy),
            ("under the agent workload", &f.lat_agent),
        ],
    );
    writeln!(md, "| start, spawn to `ready:` | {} |", ms(&res.starts)).unwrap();
    writeln!(md, "| stop, SIGTERM to exit | {} |", ms(&res.stops)).unwrap();
    writeln!(md, "\nLatency is `leakwatch_detection_latency_seconds` (kernel event time to the alert written by the sinks), its increase over 200 alerts of each source: execs of `/bin/true` sent at 20/s with a fresh key in the environment (`source=\"env\"`), then one python process writing bursts of three lines to its log file (opened without O_APPEND), a fresh key in the third (`file`) and POSTing a JSON body with another to a local HTTP server (`socket`), 20 of each per second. At 40 a second (tried 2026-12-07, to shorten the part) the HTTP body's p99 at idle rose from <= 2.5 ms to <= 10 ms in 2 of 3 runs, most likely because sparse records then come faster than the reader's budget of early wakeups refills (100 a second, `pipeline::wake`), and it takes them in 5 ms turns. Quantiles are the histogram bucket they fall in. Under the agent workload, the macro part's agent runs again and again (pinned to CPU 0) meanwhile. The stop is the kernel's: closing each tracepoint and uprobe perf event waits for RCU grace periods (`tracepoint_synchronize_unregister`) under a kernel-wide mutex, so the detaches run one after another, ~50 ms each here (strace of a stop: 31 closes, each returning 30–40 ms after the one before, though issued from parallel threads); with `/proc/sys/kernel/rcu_expedited` set to 1 the same stop took ~1.05 s instead of ~1.65 s, a host-wide setting leakwatch leaves alone. The programs are off their hooks within milliseconds of SIGTERM (each close takes its program off before the teardown waits; by hand on 2026-12-06, a writer putting a token through `write`, `pwrite64` and `writev` in turn every ~2 ms had at most one reported after SIGTERM, in 3 stops): the rest of the stop is the kernel's teardown, after which the daemon reads its rings dry and reports what it still held (since 2026-12-06; before, it stopped reading first and dropped what was left). Targets: RSS < 64 MB at idle: {}; p99 < 10 ms at idle: {}.\n",
        if f.idle_rss.0 < 64.0 { "met" } else { "**not met**" },
        if f.lat_idle.worst_p99() < 10.0 { "met" } else { "**not met**" }).unwrap();
    writeln!(md, "**Under sustained load** (by hand, 2026-12-07, not part of this command: it takes minutes): the agent workload run back to back on CPU 0 while a loop execs `/bin/true` with a fresh GitHub token in its environment and appends a line with a fresh AWS secret to a log, about 40 a second each (with its `head`, `base64` and `tr`: ~350 short-lived processes a second), 5 minutes. Daemon RSS after it: **87.7 MB** (anon 54.9), 9 % of a core meanwhile. Before 2026-12-07 it was 104.3 MB (anon 71.5) and still rising: the fd table kept every (process, fd) that had written until it held 65,536 (~20 MB), because exits are not seen there; it now drops the entries of processes found gone at two sweeps 10 s apart (~3,900 a sweep in this load; measured with one sweep, before the wait for a second was added). heaptrack over 3 minutes of the same load: live heap at its end 42.4 MB, most of it the compiled rules; peak 44.3 MB. Before the same day the peak was 108 MB, 67 MB of it one executable read whole by the TLS blind-spot check, which now reads a file 1 MiB at a time. What is still held is bounded: the recent (process, credential) pairs kept for `freeze` (65,536), the action log's pending write and connect summaries, the process image cache (two generations of 16,384), each rule's lazy DFA cache (4 MiB at most, each).\n").unwrap();
}
