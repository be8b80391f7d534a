//! Write path cost: what leakwatch's write-family probes cost a program that writes.
//! - `dd if=/dev/zero of=<file> bs=512|4096 conv=notrunc` into a preallocated file on tmpfs
//!   (so every timed write lands in cached pages: the syscall path, not page allocation or
//!   disk writeback, is what is timed), writes/s from wall time;
//! - four configurations taken in turns, rotated every round: no monitor; the floor (bare
//!   per-CPU counters on the same tracepoints leakwatch attaches); the daemon with dd out of
//!   scope; the daemon with dd in scope and its payload captured;
//! - the daemon's CPU per MB captured and its event/loss accounting, and a writer that
//!   outruns it (two dd loops on two cores), where every write must be counted as processed
//!   or lost.
//!
//! Only one monitor is loaded at a time; daemon start and stop are never timed. dd runs as
//! `lw-bench-dd` (a symlink), the only name in scope, so other dd processes on the host
//! cannot enter the accounting.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leakwatch_tests::{metric, Daemon};

pub const TITLE: &str = "Write path cost";

/// What the daemon attaches for the write family, plus connect and exec: the floor gets the
/// same set, so floor and daemon differ only in what the programs do.
fn floor_tracepoints() -> Vec<&'static str> {
    leakwatch::probes::syscall_tracepoints()
}

const SIZES: [u64; 2] = [512, 4096];
/// dd runs under this name (a symlink to it), so `[scope] comms` matches this bench's dd
/// and no other dd on the host.
const WRITER: &str = "lw-bench-dd";
/// The probe whose counters account for dd's writes.
const PROBE: (&str, &str) = ("probe", "sys_enter_write");
/// Largest file one block size may use (tmpfs is memory).
const MAX_FILE: u64 = 4 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Conf {
    None,
    Floor,
    OutOfScope,
    InScope,
    Copied,
}

const CONFS: [Conf; 5] = [
    Conf::None,
    Conf::Floor,
    Conf::OutOfScope,
    Conf::InScope,
    Conf::Copied,
];

impl Conf {
    fn label(self) -> &'static str {
        match self {
            Conf::None => "no monitor",
            Conf::Floor => "floor: bare counters on the same syscall tracepoints",
            Conf::OutOfScope => "leakwatch, dd out of scope",
            Conf::InScope => "leakwatch, dd in scope, payload captured (default)",
            Conf::Copied => "leakwatch, dd in scope, every write copied (by_reference = false)",
        }
    }

    fn config(self) -> &'static str {
        match self {
            Conf::OutOfScope => "[scope]\ncomms = [\"lw-bench-none\"]\n",
            Conf::Copied => "[scope]\ncomms = [\"lw-bench-dd\"]\n[capture]\nby_reference = false\n",
            _ => "[scope]\ncomms = [\"lw-bench-dd\"]\n",
        }
    }
}

/// One block size's target file and the count that makes one run last about `secs`.
struct Target {
    bs: u64,
    count: u64,
    file: PathBuf,
}

/// What the daemon's counters said about one in-scope 4 KiB run.
#[derive(Clone, Copy, Default)]
struct Accounting {
    writes: u64,
    events: u64,
    lost: u64,
    dropped: u64,
    /// Events of other probes (connects and execs of any process) processed meanwhile.
    others: u64,
    cpu_s: f64,
    drain: Duration,
}

impl Accounting {
    fn processed_and_lost(&self) -> u64 {
        self.events + self.lost + self.dropped
    }

    fn exact(&self) -> bool {
        self.processed_and_lost() == self.writes
    }

    /// Fewer processed + lost than writes: some writes vanished without being counted.
    fn short(&self) -> bool {
        self.processed_and_lost() < self.writes
    }
}

/// writes/s per (configuration, block size), one entry per round.
#[derive(Default)]
struct Rates {
    runs: Vec<(Conf, u64, usize, f64)>,
}

/// Everything the rounds collect.
#[derive(Default)]
struct Results {
    rates: Rates,
    /// In scope, 4 KiB: one per round.
    acct: Vec<Accounting>,
    /// Floor runs: (dd's writes, rise of the floor's counters).
    floor_calls: Vec<(u64, u64)>,
    /// Out of scope: rise of the write events (0 expected).
    quiet: Vec<u64>,
    /// Timed runs; those with another tracer running before or after; which tracers.
    timed: usize,
    dirty: usize,
    foreign: Vec<String>,
    /// Tracers seen before the current run; time spent waiting for tracers to go.
    seen: Vec<String>,
    waited: Duration,
}

impl Rates {
    fn of(&self, c: Conf, bs: u64) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|r| r.0 == c && r.1 == bs)
            .map(|r| r.3)
            .collect()
    }

    /// Median over rounds of `a`'s rate divided by `b`'s in the same round.
    fn ratio(&self, a: Conf, b: Conf, bs: u64) -> f64 {
        let (ra, rb) = (self.of(a, bs), self.of(b, bs));
        median(ra.iter().zip(&rb).map(|(x, y)| x / y).collect())
    }
}

pub fn run() -> String {
    let dir = scratch_dir();
    let rounds: usize = env_or("LW_BENCH_WRITE_ROUNDS", 7);
    let secs: f64 = env_or("LW_BENCH_WRITE_SECS", 1.2);
    let mut targets: Vec<Target> = SIZES.iter().map(|&bs| calibrate(&dir, bs, secs)).collect();
    let mut res = Results::default();
    for round in 0..rounds {
        for k in 0..CONFS.len() {
            let conf = CONFS[(round + k) % CONFS.len()];
            // Alternate which size goes first, too.
            let order: Vec<&Target> = if round % 2 == 0 {
                targets.iter().collect()
            } else {
                targets.iter().rev().collect()
            };
            turn(conf, round, &order, &dir, &mut res);
        }
        eprintln!("write bench: round {}/{rounds} done", round + 1);
    }
    let costs = program_costs(&dir, &targets);
    // Free the 512 B file before the outrun test needs a second 4 KiB one.
    let small = targets.remove(0);
    let _ = fs::remove_file(&small.file);
    let big = targets.remove(0);
    let outrun = outrun(&dir, &big, &mut res);
    let _ = fs::remove_dir_all(&dir);
    let mut md = report(&res, &[small, big], &outrun, rounds);
    md.push_str(&costs);
    md
}

/// One configuration's turn in a round: load it (untimed), run every size, unload it.
fn turn(conf: Conf, round: usize, targets: &[&Target], dir: &Path, res: &mut Results) {
    match conf {
        Conf::None => {
            for t in targets {
                before_run(None, res);
                res.rates.runs.push((conf, t.bs, round, rate(t)));
                after_run(None, res);
            }
        }
        Conf::Floor => {
            let floor = leakwatch::probes::load_floor(&floor_tracepoints())
                .unwrap_or_else(|e| panic!("loading the floor counters failed: {e:#}"));
            for t in targets {
                before_run(None, res);
                let c0 = floor.calls().expect("reading the floor counters");
                res.rates.runs.push((conf, t.bs, round, rate(t)));
                after_run(None, res);
                let c1 = floor.calls().expect("reading the floor counters");
                res.floor_calls.push((t.count, c1 - c0));
            }
            // `floor` goes out of scope here: its programs are detached before the next turn.
        }
        Conf::OutOfScope | Conf::InScope | Conf::Copied => {
            let mut d = start_daemon(dir, conf, round);
            let ours = d.child.as_ref().map(|c| c.id());
            for t in targets {
                before_run(ours, res);
                let before = counters(&d);
                let cpu0 = cpu_ticks(&d);
                let r = rate(t);
                after_run(ours, res);
                let drain = drain(&d);
                let cpu1 = cpu_ticks(&d);
                let after = counters(&d);
                res.rates.runs.push((conf, t.bs, round, r));
                if conf == Conf::InScope && t.bs == 4096 {
                    res.acct
                        .push(accounting(t.count, before, after, cpu1 - cpu0, drain));
                }
                if conf == Conf::OutOfScope {
                    res.quiet.push(after.0 - before.0);
                }
            }
            d.stop();
        }
    }
}

fn scratch_dir() -> PathBuf {
    // tmpfs: overwriting cached pages costs the same every run, with no writeback.
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("leakwatch-bench-write-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let dd = ["/usr/bin/dd", "/bin/dd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("dd (coreutils) is not installed");
    std::os::unix::fs::symlink(dd, dir.join(WRITER)).unwrap();
    dir
}

pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `dd` over `count` blocks of `file` (rewritten in place) and returns its wall time.
fn dd(bs: u64, count: u64, file: &Path) -> Duration {
    let t0 = Instant::now();
    let st = Command::new(file.with_file_name(WRITER))
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg(format!("bs={bs}"))
        .arg(format!("count={count}"))
        .args(["conv=notrunc", "status=none"])
        .stdin(Stdio::null())
        .status()
        .expect("running dd");
    let t = t0.elapsed();
    assert!(st.success(), "dd bs={bs} count={count} failed: {st}");
    t
}

fn rate(t: &Target) -> f64 {
    t.count as f64 / dd(t.bs, t.count, &t.file).as_secs_f64()
}

/// Preallocates the file, then picks the count that takes about `secs` with no monitor.
fn calibrate(dir: &Path, bs: u64, secs: f64) -> Target {
    let file = dir.join(format!("dd-{bs}"));
    let probe = 100_000;
    dd(bs, probe, &file);
    let r = probe as f64 / dd(bs, probe, &file).as_secs_f64();
    let cap = (MAX_FILE.min(mem_available() / 4) / bs).max(probe);
    let count = (((r * secs) as u64 / 10_000) * 10_000).clamp(probe, cap);
    dd(bs, count, &file); // allocate every page once
    dd(bs, count, &file); // warm-up, discarded
    Target { bs, count, file }
}

fn mem_available() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024)
}

fn start_daemon(dir: &Path, conf: Conf, round: usize) -> Daemon {
    let d = dir.join(format!("daemon-{round}-{conf:?}"));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    let cfg = d.with_extension("toml");
    fs::write(&cfg, conf.config()).unwrap();
    let d = Daemon::start_in(d, &["--config", cfg.to_str().unwrap()]);
    // Let its start-up work (process scan, first scrape) finish before timing.
    std::thread::sleep(Duration::from_millis(300));
    d
}

/// (events processed, kernel ring loss, drops at the userspace event queue) for dd's write
/// probe, and events of other probes processed.
type Counters = (u64, u64, u64, u64);

fn counters(d: &Daemon) -> Counters {
    let text = d.scrape();
    let get = |name, labels| metric(&text, name, labels) as u64;
    let write = get("leakwatch_events_total", &[PROBE]);
    (
        write,
        get("leakwatch_lost_events_total", &[PROBE]),
        get("leakwatch_pipeline_dropped_total", &[PROBE]),
        get("leakwatch_events_total", &[]) - write,
    )
}

fn accounting(
    writes: u64,
    before: Counters,
    after: Counters,
    cpu_ticks: u64,
    drain: Duration,
) -> Accounting {
    Accounting {
        writes,
        events: after.0 - before.0,
        lost: after.1 - before.1,
        dropped: after.2 - before.2,
        others: after.3 - before.3,
        cpu_s: cpu_ticks as f64 / clock_ticks(),
        drain,
    }
}

/// Waits until the daemon is idle (under 10 % of a core for 600 ms: it has caught up with
/// what dd wrote), then 1.2 s more so its once-a-second loss poll has published the
/// kernel's counters; returns how long after dd it went idle. Watches CPU, not the metrics
/// endpoint: each scrape is a connect, an event that a full queue would drop.
fn drain(d: &Daemon) -> Duration {
    let t0 = Instant::now();
    let tick = Duration::from_millis(100);
    let busy = (clock_ticks() * tick.as_secs_f64() / 10.0).max(1.0) as u64;
    let mut last = cpu_ticks(d);
    let mut moved = Duration::ZERO;
    while t0.elapsed() - moved < Duration::from_millis(600)
        && t0.elapsed() < Duration::from_secs(120)
    {
        std::thread::sleep(tick);
        let now = cpu_ticks(d);
        if now - last > busy {
            moved = t0.elapsed();
        }
        last = now;
    }
    std::thread::sleep(Duration::from_millis(1200));
    moved
}

/// utime + stime of the daemon (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(d: &Daemon) -> u64 {
    let pid = d.child.as_ref().expect("daemon running").id();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("daemon stat");
    // Fields after the parenthesised comm start at field 3 (state); utime is 14, stime 15.
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Waits until the run queue is mostly idle (at most 3 s).
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(3);
    std::thread::sleep(Duration::from_millis(200));
    while Instant::now() < deadline {
        let stat = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let running: u32 = stat
            .split_whitespace()
            .nth(3)
            .and_then(|f| f.split('/').next()?.parse().ok())
            .unwrap_or(0);
        if running <= 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `comm[pid]` of processes other than this bench and `ours` that hold an eBPF program and
/// an attachment (a bpf link or a perf event): another monitor, whose programs would run in
/// every configuration.
fn foreign_tracers(ours: Option<u32>) -> Vec<String> {
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && Some(pid) != ours)
        .filter(|pid| {
            let links: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| Some(fs::read_link(e.path()).ok()?.display().to_string()))
                .collect();
            links.iter().any(|l| l.contains("bpf-prog"))
                && links
                    .iter()
                    .any(|l| l.contains("bpf_link") || l.contains("perf_event"))
        })
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{}[{pid}]", comm.trim())
        })
        .collect()
}

/// Before a timed run: waits (up to 20 s a run, 3 min in all) for other tracers to go
/// away, then for the machine to settle.
fn before_run(ours: Option<u32>, res: &mut Results) {
    let t0 = Instant::now();
    while !foreign_tracers(ours).is_empty()
        && t0.elapsed() < Duration::from_secs(20)
        && res.waited + t0.elapsed() < Duration::from_secs(180)
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    res.waited += t0.elapsed();
    res.seen = foreign_tracers(ours);
    settle();
    res.timed += 1;
}

/// After a timed run: notes the run as unclean if another tracer ran before or after it.
fn after_run(ours: Option<u32>, res: &mut Results) {
    let mut seen = std::mem::take(&mut res.seen);
    seen.extend(foreign_tracers(ours));
    if !seen.is_empty() {
        res.dirty += 1;
    }
    for t in seen {
        if !res.foreign.contains(&t) {
            res.foreign.push(t);
        }
    }
}

/// Result of the two-writer test.
struct Outrun {
    per_dd: u64,
    wall: Duration,
    acct: Accounting,
}

/// Two 4 KiB dd loops in scope at once, one per core, each on its own file (one file would
/// serialise them on the inode lock), each loop two dd runs of the timed count in a row.
fn outrun(dir: &Path, big: &Target, res: &mut Results) -> Outrun {
    let second = dir.join("dd-4096-b");
    let per_dd = big.count;
    dd(4096, per_dd, &second);
    let mut d = start_daemon(dir, Conf::InScope, 99);
    let ours = d.child.as_ref().map(|c| c.id());
    before_run(ours, res);
    let before = counters(&d);
    let cpu0 = cpu_ticks(&d);
    let t0 = Instant::now();
    let files = [big.file.clone(), second.clone()];
    let writers: Vec<_> = files
        .into_iter()
        .map(|f| std::thread::spawn(move || (dd(4096, per_dd, &f), dd(4096, per_dd, &f))))
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let wall = t0.elapsed();
    after_run(ours, res);
    let drain = drain(&d);
    let cpu1 = cpu_ticks(&d);
    let after = counters(&d);
    d.stop();
    let _ = fs::remove_file(&second);
    Outrun {
        per_dd: 2 * per_dd,
        wall,
        acct: accounting(4 * per_dd, before, after, cpu1 - cpu0, drain),
    }
}

/// The fdinfo text of every fd `pid` holds whose link names `kind` (`bpf-prog`, `bpf-map`).
pub(crate) fn bpf_fdinfo(pid: u32, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if !fs::read_link(e.path()).is_ok_and(|l| l.display().to_string().contains(kind)) {
            continue;
        }
        out.push(
            fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .unwrap_or_default(),
        );
    }
    out
}

/// A numeric field (`key:` then the value) of an fdinfo text.
pub(crate) fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
}

/// (prog id, run_time_ns, run_cnt) of every eBPF program `pid` holds (needs bpf_stats on).
pub(crate) fn prog_stats(pid: u32) -> Vec<(u64, u64, u64)> {
    bpf_fdinfo(pid, "bpf-prog")
        .iter()
        .map(|info| {
            let field = |k| fdinfo_field(info, k).unwrap_or(0);
            (field("prog_id"), field("run_time_ns"), field("run_cnt"))
        })
        .collect()
}

/// (ns per call, calls) of the program that ran most between two `prog_stats` snapshots.
fn busiest(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) -> (f64, u64) {
    after
        .iter()
        .map(|&(id, ns, cnt)| {
            let (_, ns0, cnt0) = before
                .iter()
                .find(|b| b.0 == id)
                .copied()
                .unwrap_or((id, 0, 0));
            (ns - ns0, cnt - cnt0)
        })
        .max_by_key(|&(_, c)| c)
        .map_or((f64::NAN, 0), |(ns, c)| (ns as f64 / c.max(1) as f64, c))
}

/// Time the kernel spends in the program on dd's write tracepoint, per call: kernel bpf_stats
/// (`run_time_ns / run_cnt` in the program's fdinfo), switched on only for these extra runs
/// (stats add a clock read per call, so none of the rates above is taken with them on).
fn program_costs(dir: &Path, targets: &[Target]) -> String {
    const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let mut md = String::from(
        "### Where the time goes: kernel program time per write

",
    );
    let old = fs::read_to_string(SYSCTL).unwrap_or_default();
    if fs::write(SYSCTL, "1").is_err() {
        md.push_str("Not measured: `kernel.bpf_stats_enabled` could not be switched on.\n\n");
        return md;
    }
    md.push_str("`run_time_ns / run_cnt` of the program on `syscalls:sys_enter_write` (the one that ran most), from kernel bpf_stats, switched on only for these extra runs (one per configuration and size, after the rounds above; stats add a clock read per call, so no rate above was taken with them on). Compare with the per-write time budget: 1 / (no-monitor rate).\n\n| configuration | 512 B: ns per call | calls | 4 KiB: ns per call | calls |\n|---|---|---|---|---|\n");
    for conf in [Conf::Floor, Conf::OutOfScope, Conf::InScope, Conf::Copied] {
        let mut row = format!("| {} |", conf.label());
        let floor;
        let mut daemon = None;
        let pid = if conf == Conf::Floor {
            floor = Some(
                leakwatch::probes::load_floor(&floor_tracepoints())
                    .expect("loading the floor counters"),
            );
            std::process::id()
        } else {
            floor = None;
            let d = start_daemon(dir, conf, 98);
            let pid = d.child.as_ref().unwrap().id();
            daemon = Some(d);
            pid
        };
        for t in targets {
            settle();
            let before = prog_stats(pid);
            dd(t.bs, t.count, &t.file);
            let (ns, calls) = busiest(&before, &prog_stats(pid));
            write!(row, " {ns:.0} | {calls} |").unwrap();
        }
        if let Some(mut d) = daemon {
            drain(&d);
            d.stop();
        }
        drop(floor);
        writeln!(md, "{row}").unwrap();
    }
    let _ = fs::write(
        SYSCTL,
        if old.trim().is_empty() {
            "0"
        } else {
            old.trim()
        },
    );
    md.push('\n');
    md
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub(crate) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)))
}

/// A confidence interval for the median of `v` that assumes nothing about the spread: the
/// k-th smallest and k-th largest values, k the largest with coverage >= 95 % (the chance
/// that the true median lies outside is that of <k of n fair coin flips landing on either
/// side). Returns (low, high, coverage); with fewer than 6 values not even min–max reaches
/// 95 %, and its coverage says so.
pub(crate) fn median_ci(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, 0.0);
    }
    // P(Bin(n, 1/2) <= j) for j = 0..n.
    let mut cdf = Vec::with_capacity(n + 1);
    let (mut c, mut acc) = (1.0f64, 0.0);
    for j in 0..=n {
        if j > 0 {
            c = c * (n + 1 - j) as f64 / j as f64;
        }
        acc += c / 2f64.powi(n as i32);
        cdf.push(acc);
    }
    let coverage = |k: usize| 1.0 - 2.0 * cdf[k - 1];
    let mut k = 1;
    while k < n.div_ceil(2) && coverage(k + 1) >= 0.95 {
        k += 1;
    }
    (s[k - 1], s[n - k], coverage(k))
}

/// Whether `v`'s median meets `target` (higher is better) beyond its noise: "met" when
/// the interval of `median_ci` lies at or above it, "not met" when it lies below, else
/// "within noise".
pub(crate) fn verdict_ci(v: &[f64], target: f64) -> &'static str {
    let (lo, hi, coverage) = median_ci(v);
    if coverage < 0.95 {
        // Too few values for an interval: no claim either way.
        "within noise"
    } else if lo >= target {
        "met"
    } else if hi < target {
        "**not met**"
    } else {
        "within noise"
    }
}

fn m(rate: f64) -> String {
    format!("{:.2}M", rate / 1e6)
}

pub(crate) fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

fn report(res: &Results, targets: &[Target], out: &Outrun, rounds: usize) -> String {
    let rates = &res.rates;
    let mut md = format!("## {TITLE}\n\n");
    let counts: Vec<String> = targets
        .iter()
        .map(|t| format!("{} blocks of {} B", t.count, t.bs))
        .collect();
    writeln!(
        md,
        "`dd if=/dev/zero of=FILE bs=512|4096 conv=notrunc status=none` ({}) into a file on tmpfs that was written once beforehand, so every timed write replaces cached pages: the syscall path is timed, not page allocation or disk writeback. Rate = writes / wall time of dd (one read and one write per block). {rounds} rounds; in each round every configuration takes one turn, the order rotated by one each round; daemon start (until its `ready:` line) and stop, and loading the floor, are not timed; only one monitor is loaded at a time. Rates are the median over rounds (min, max); a ratio is the median over rounds of the two configurations' rates in the same round. Machine: {} x {}.\n",
        counts.join(", "),
        cpu_model(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    )
    .unwrap();
    writeln!(md, "- **floor**: `leakwatch::probes::load_floor`: a bare per-CPU counter on each of `syscalls:{}`, the tracepoints leakwatch attaches for the write family, connect and exec. No monitor can cost less.", floor_tracepoints().join("`, `")).unwrap();
    writeln!(md, "- **out of scope**: `[scope] comms = [\"lw-bench-none\"]`, so dd is not watched; **in scope**: `[scope] comms = [\"lw-bench-dd\"]` (dd runs through a symlink of that name, so no other dd on the host is in scope), default `[capture]`: max_bytes 16384, and `by_reference = true`, so after dd's first 16 writes (copied whole into the ring) the daemon holds the file and every later write goes by reference: the kernel extends dd's pending run (position and length, one map lookup and four reads per call) and sends it as one record per 1,024 calls, 1 MiB or two timer ticks, and the daemon reads the bytes back from the page cache; **every write copied**: the same with `by_reference = false`, each 4 KiB write copied whole into the ring (what sockets, pipes and vectored writes always get).\n").unwrap();
    if res.foreign.is_empty() {
        writeln!(md, "No other tracer (a process holding an eBPF program and a bpf link or perf event) was running before or after any of the {} timed runs.\n", res.timed).unwrap();
    } else {
        writeln!(md, "**Warning**: other tracers (processes holding an eBPF program and a bpf link or perf event: {}) were running around {} of the {} timed runs; their programs then ran in whatever configuration was being timed, so these numbers are not clean.\n", res.foreign.join(", "), res.dirty, res.timed).unwrap();
    }
    md.push_str("| configuration | 512 B writes/s | min | max | vs none | vs floor | 4 KiB writes/s | min | max | vs none | vs floor |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in CONFS {
        let mut row = format!("| {} |", c.label());
        for bs in SIZES {
            let v = rates.of(c, bs);
            let (lo, hi) = min_max(&v);
            let vs_floor = if matches!(c, Conf::OutOfScope | Conf::InScope | Conf::Copied) {
                format!("{:.3}", rates.ratio(c, Conf::Floor, bs))
            } else {
                String::new()
            };
            write!(
                row,
                " {} | {} | {} | {:.3} | {vs_floor} |",
                m(median(v.clone())),
                m(lo),
                m(hi),
                rates.ratio(c, Conf::None, bs)
            )
            .unwrap();
        }
        writeln!(md, "{row}").unwrap();
    }
    let out_ok = SIZES
        .iter()
        .all(|&bs| rates.ratio(Conf::OutOfScope, Conf::Floor, bs) >= 0.95);
    let in4 = rates.ratio(Conf::InScope, Conf::Floor, 4096);
    writeln!(
        md,
        "\nTargets: out of scope >= 0.95 of the floor (both sizes: {:.3} at 512 B, {:.3} at 4 KiB): {}; in scope with capture at 4 KiB >= 0.8 of the floor ({in4:.3}): {}.\n",
        rates.ratio(Conf::OutOfScope, Conf::Floor, 512),
        rates.ratio(Conf::OutOfScope, Conf::Floor, 4096),
        super::scan_bench::met(out_ok),
        super::scan_bench::met(in4 >= 0.8),
    )
    .unwrap();
    writeln!(
        md,
        "With every write copied (`by_reference = false`), 4 KiB: {:.3} of the floor.\n",
        rates.ratio(Conf::Copied, Conf::Floor, 4096)
    )
    .unwrap();
    let floor_saw_all = res.floor_calls.iter().all(|(w, c)| c >= w);
    writeln!(
        md,
        "Checks: the floor's counters rose by at least dd's writes in every run: {}; out-of-scope runs, `leakwatch_events_total{{probe=\"sys_enter_write\"}}` rose by {} in all (0 expected: dd is not watched).\n",
        if floor_saw_all { "yes" } else { "**no** (the floor did not see every write)" },
        res.quiet.iter().sum::<u64>()
    )
    .unwrap();
    md.push_str(&accounting_table(&res.acct));
    md.push_str(&outrun_section(out));
    md
}

fn accounting_table(acct: &[Accounting]) -> String {
    let mut md = String::from("### Daemon CPU and accounting, in scope, 4 KiB\n\n");
    md.push_str("Per round: dd's writes, the daemon's `leakwatch_events_total{probe=\"sys_enter_write\"}`, `leakwatch_lost_events_total{probe=\"sys_enter_write\"}` (ring buffer full) and `leakwatch_pipeline_dropped_total{probe=\"sys_enter_write\"}` (userspace queue full) deltas, read once the daemon went idle after dd finished (\"caught up\": how long after dd that took) and its once-a-second loss poll had run, and the daemon's utime+stime (`/proc/PID/stat`, all threads) over the same span. A sum below the writes is silent loss; one above them would be double counting. MB = 10^6 bytes of payload (writes x 4096).\n\n");
    md.push_str("| round | writes | events | lost (ring) | dropped (queue) | accounted | daemon CPU | CPU per MB | caught up after |\n|---|---|---|---|---|---|---|---|---|\n");
    for (i, a) in acct.iter().enumerate() {
        writeln!(md, "{}", acct_row(&(i + 1).to_string(), a)).unwrap();
    }
    let per_mb: Vec<f64> = acct.iter().map(cpu_per_mb).collect();
    let (lo, hi) = min_max(&per_mb);
    writeln!(
        md,
        "\nDaemon CPU per MB captured: **{:.2} ms** (median; min {:.2}, max {:.2}). Accounting exact (events + lost + dropped = writes) in {} of {} rounds; rounds where writes are missing (silent loss): {}.\n",
        median(per_mb.clone()) * 1e3,
        lo * 1e3,
        hi * 1e3,
        acct.iter().filter(|a| a.exact()).count(),
        acct.len(),
        acct.iter().filter(|a| a.short()).count()
    )
    .unwrap();
    md
}

fn cpu_per_mb(a: &Accounting) -> f64 {
    a.cpu_s / (a.writes as f64 * 4096.0 / 1e6)
}

fn acct_row(name: &str, a: &Accounting) -> String {
    let sum = a.processed_and_lost();
    let verdict = if a.exact() {
        "exact".to_string()
    } else if sum > a.writes {
        format!(
            "not exact: {} more than writes (counted twice? {} other events were processed meanwhile)",
            sum - a.writes,
            a.others
        )
    } else {
        format!("**{} writes missing: silent loss**", a.writes - sum)
    };
    format!(
        "| {name} | {} | {} | {} | {} | {verdict} | {:.2} s | {:.2} ms | {:.0} ms |",
        a.writes,
        a.events,
        a.lost,
        a.dropped,
        a.cpu_s,
        cpu_per_mb(a) * 1e3,
        a.drain.as_secs_f64() * 1e3
    )
}

fn outrun_section(o: &Outrun) -> String {
    let mut md = String::from("### A writer that outruns the daemon\n\n");
    let rate = o.acct.writes as f64 / o.wall.as_secs_f64();
    writeln!(
        md,
        "Two dd loops in scope at once (bs=4096, {} writes each: two dd runs in a row, each loop on its own tmpfs file), one per core, so the daemon competes with both for CPU: {} writes in {:.2} s ({} writes/s together). Every write must be counted as processed (`events`) or lost (kernel ring loss `lost`, userspace queue `dropped`); loss is fine, silent loss is not.\n",
        o.per_dd,
        o.acct.writes,
        o.wall.as_secs_f64(),
        m(rate)
    )
    .unwrap();
    md.push_str("| test | writes | events | lost (ring) | dropped (queue) | accounted | daemon CPU | CPU per MB | caught up after |\n|---|---|---|---|---|---|---|---|---|\n");
    writeln!(md, "{}", acct_row("2 x dd", &o.acct)).unwrap();
    let lost = o.acct.lost + o.acct.dropped;
    writeln!(
        md,
        "\nAccounting: {}; {} of {} writes ({:.1} %) were not processed.\n",
        if o.acct.exact() {
            "exact, every write is counted"
        } else if o.acct.short() {
            "**does not add up: writes are missing** (see the row above)"
        } else {
            "**not exact**: more events than writes (records counted twice?)"
        },
        lost,
        o.acct.writes,
        100.0 * lost as f64 / o.acct.writes.max(1) as f64
    )
    .unwrap();
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_ci_widens_to_reach_95_percent() {
        // 7 values: only min–max covers >= 95 % (98.4 %; the 2nd–6th cover 87.5 %).
        let v = [5.0, 1.0, 7.0, 3.0, 2.0, 6.0, 4.0];
        let (lo, hi, cov) = median_ci(&v);
        assert_eq!((lo, hi), (1.0, 7.0));
        assert!((cov - 0.984375).abs() < 1e-9, "{cov}");
        // 9 values: 2nd–8th (96.1 %).
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        let (lo, hi, cov) = median_ci(&v);
        assert_eq!((lo, hi), (2.0, 8.0));
        assert!((cov - 0.9609375).abs() < 1e-9, "{cov}");
        // 5 values: min–max is all there is, and it says it covers less.
        let (_, _, cov) = median_ci(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(cov < 0.95);
    }

    #[test]
    fn verdict_ci_says_within_noise_when_the_interval_straddles() {
        let v = [0.95, 0.96, 0.98, 0.99, 1.0, 1.01, 0.97];
        assert_eq!(verdict_ci(&v, 0.97), "within noise");
        assert_eq!(verdict_ci(&v, 0.9), "met");
        assert_eq!(verdict_ci(&v, 1.05), "**not met**");
        // Five values cannot make a 95 % interval: no claim.
        assert_eq!(verdict_ci(&v[..5], 0.9), "within noise");
    }
}
