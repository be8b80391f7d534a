//! Where the agent's CPU goes on its core. `perf record` samples CPU 0 (where the macro
//! part pins the agent) through agent runs with no monitor, the floor and leakwatch, and
//! each sample goes into one bucket by its kernel call chain. A bucket's samples per run
//! move far less from run to run than the run's wall or CPU time, so the differences
//! between configurations say what watching costs the agent even where the ratio of run
//! times is within noise.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::cost_bench::{agent_run, daemon, load_floor, quiet};

/// Sampling rate, Hz: ~3,000 samples per one-second run.
const FREQ: u32 = 2999;
/// Agent runs per configuration: two passes over the three, this many runs each time.
const RUNS_PER_PASS: usize = 2;
const PASSES: usize = 2;

/// What a sample on CPU 0 was doing.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Bucket {
    /// A JIT'd BPF program or a helper it called (`bpf_prog_*` in the chain).
    Programs,
    /// The kernel's way into a program: the syscall tracing slow path every syscall takes
    /// once a syscall tracepoint is attached, perf's tracepoint glue, uprobe traps.
    Tracing,
    /// irq_work: a ring buffer waking its reader (and perf waking its own).
    IrqWork,
    /// One of the daemon's threads.
    Daemon,
    /// The workload itself and the kernel working for it.
    Rest,
    Idle,
}

pub const BUCKETS: [Bucket; 6] = [
    Bucket::Programs,
    Bucket::Tracing,
    Bucket::IrqWork,
    Bucket::Daemon,
    Bucket::Rest,
    Bucket::Idle,
];

impl Bucket {
    fn label(self) -> &'static str {
        match self {
            Bucket::Programs => "probe programs (JIT'd BPF and the helpers they call)",
            Bucket::Tracing => {
                "the kernel's tracing path (syscall slow path, perf glue, uprobe traps)"
            }
            Bucket::IrqWork => "irq_work (ring buffer wakeups; perf's own)",
            Bucket::Daemon => "the daemon's threads",
            Bucket::Rest => "the agent and the kernel working for it",
            Bucket::Idle => "idle",
        }
    }
}

/// Kernel functions on the way from a syscall or a breakpoint into a program.
const TRACING: [&str; 11] = [
    "syscall_trace_enter",
    "syscall_exit_work",
    "perf_syscall_enter",
    "perf_syscall_exit",
    "trace_call_bpf",
    "perf_trace_run_bpf_submit",
    "uprobe_notify_resume",
    "handle_swbp",
    "uprobe_dispatcher",
    "uretprobe_dispatcher",
    "arch_uprobe_exception_notify",
];

/// The bucket of one sample: its process and its call chain, innermost frame first.
pub fn classify(pid: u32, daemon: Option<u32>, frames: &[&str]) -> Bucket {
    if pid == 0 {
        return Bucket::Idle;
    }
    if Some(pid) == daemon {
        return Bucket::Daemon;
    }
    if frames.iter().any(|f| f.starts_with("bpf_prog_")) {
        return Bucket::Programs;
    }
    if frames.iter().any(|f| TRACING.contains(f)) {
        return Bucket::Tracing;
    }
    if frames.iter().any(|f| f.starts_with("irq_work")) {
        return Bucket::IrqWork;
    }
    Bucket::Rest
}

/// Samples per bucket (in `BUCKETS` order) of `perf script -F pid,tid,ip,sym` output:
/// a `PID/TID` line, then one `\tADDR SYMBOL` line per frame, then a blank line.
pub fn tally(script: &str, daemon: Option<u32>) -> [u64; 6] {
    let mut n = [0u64; 6];
    let mut pid: Option<u32> = None;
    let mut frames: Vec<&str> = Vec::new();
    let mut flush = |pid: &mut Option<u32>, frames: &mut Vec<&str>| {
        if let Some(p) = pid.take() {
            let b = classify(p, daemon, frames);
            n[BUCKETS.iter().position(|x| *x == b).unwrap()] += 1;
        }
        frames.clear();
    };
    for line in script.lines() {
        if line.trim().is_empty() {
            flush(&mut pid, &mut frames);
        } else if line.starts_with('\t') {
            if let Some(sym) = line.split_whitespace().nth(1) {
                frames.push(sym);
            }
        } else {
            flush(&mut pid, &mut frames);
            pid = line
                .split_whitespace()
                .next()
                .and_then(|f| f.split('/').next())
                .and_then(|p| p.parse().ok());
        }
    }
    flush(&mut pid, &mut frames);
    n
}

/// Samples per bucket and agent runs, per configuration.
#[derive(Default)]
pub struct Profile {
    /// no monitor, floor, leakwatch
    pub samples: [[u64; 6]; 3],
    pub runs: usize,
}

/// Starts `perf record` on CPU 0, itself kept on CPU 1.
fn record(out: &Path) -> Child {
    let freq = FREQ.to_string();
    let c = Command::new("taskset")
        .args([
            "-c", "1", "perf", "record", "-q", "-C", "0", "-g", "-F", &freq, "-o",
        ])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting perf failed: {e}; install linux-perf (`cargo xtask bench` does)")
        });
    // The file appears as perf starts; its events open soon after, within the 300 ms.
    let t0 = std::time::Instant::now();
    while !out.exists() && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    c
}

fn stop(mut c: Child, out: &Path, daemon: Option<u32>) -> [u64; 6] {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let st = c.wait().expect("waiting for perf");
    // perf writes its file, then raises the signal again to end.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        st.success() || st.signal() == Some(libc::SIGINT),
        "perf record ended with {st}"
    );
    let o = Command::new("perf")
        .args(["script", "-F", "pid,tid,ip,sym", "-i"])
        .arg(out)
        .stderr(Stdio::null())
        .output()
        .expect("running perf script");
    assert!(
        o.status.success(),
        "perf script failed on {}",
        out.display()
    );
    tally(&String::from_utf8_lossy(&o.stdout), daemon)
}

/// Runs the profile in `dir`, with the agent script at `script`.
pub fn profile(dir: &Path, script: &Path) -> Profile {
    let mut samples = [[0u64; 6]; 3];
    let data: PathBuf = dir.join("perf.data");
    let runs = || {
        for _ in 0..RUNS_PER_PASS {
            let st = agent_run(dir, script).status().expect("running the agent");
            assert!(st.success(), "the agent failed: {st}");
        }
    };
    for _ in 0..PASSES {
        for (i, s) in samples.iter_mut().enumerate() {
            let _ = std::fs::remove_file(&data);
            let (floor, d) = match i {
                1 => (Some(load_floor()), None),
                2 => {
                    let (d, _) = daemon("cost-profile", "");
                    quiet(&d, 5);
                    (None, Some(d))
                }
                _ => (None, None),
            };
            let pid = d.as_ref().map(|d| d.child.as_ref().expect("daemon").id());
            let perf = record(&data);
            runs();
            let n = stop(perf, &data, pid);
            for (a, b) in s.iter_mut().zip(n) {
                *a += b;
            }
            drop(floor);
            if let Some(mut d) = d {
                d.stop();
            }
        }
    }
    let _ = std::fs::remove_file(&data);
    let p = Profile {
        samples,
        runs: RUNS_PER_PASS * PASSES,
    };
    assert!(
        p.samples[2][0] > 0,
        "perf saw no BPF program with leakwatch running: is net.core.bpf_jit_kallsyms 0?"
    );
    p
}

impl Profile {
    fn ms(&self, config: usize, bucket: usize) -> f64 {
        self.samples[config][bucket] as f64 * 1e3 / FREQ as f64 / self.runs as f64
    }

    /// CPU 0 busy per run (every bucket but idle), ms.
    fn busy(&self, config: usize) -> f64 {
        (0..5).map(|b| self.ms(config, b)).sum()
    }

    /// What a configuration adds over no monitor in the buckets a monitor causes
    /// (programs, tracing path, irq_work, daemon), as a share of no monitor's busy time.
    pub fn share(&self, config: usize) -> f64 {
        let added: f64 = (0..4).map(|b| self.ms(config, b) - self.ms(0, b)).sum();
        added / self.busy(0)
    }

    pub fn report(&self, md: &mut String) {
        writeln!(md, "**Where the agent's CPU goes.** `perf record -C 0 -g -F {FREQ}` over {} agent runs in each configuration ({PASSES} passes over the three, {RUNS_PER_PASS} runs each), every sample on CPU 0 put in one bucket by its kernel call chain (the first that matches, top to bottom; the daemon's by its pid). Bucket times are per run. A bucket's count moves far less between runs than a run's time does, so these differences say what watching costs the agent where the ratio above is within noise. **attributable** is what a configuration adds in the first four buckets over no monitor, as a share of no monitor's busy time; 1 / (1 + share) is the ratio it implies. It is a lower bound: what watching costs the agent's own code indirectly (caches, most likely) stays in the agent's bucket, whose spread from run to run hides it; 12 such profiles by hand put it at +0.6 % ± 0.4 % (mean and standard error, 2026-12-06).\n", self.runs).unwrap();
        writeln!(
            md,
            "| on CPU 0, per agent run | no monitor | floor | leakwatch | leakwatch − no monitor |"
        )
        .unwrap();
        writeln!(md, "|---|---|---|---|---|").unwrap();
        for (b, bucket) in BUCKETS.iter().enumerate() {
            let v: Vec<f64> = (0..3).map(|c| self.ms(c, b)).collect();
            writeln!(
                md,
                "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:+.1} ms |",
                bucket.label(),
                v[0],
                v[1],
                v[2],
                v[2] - v[0]
            )
            .unwrap();
        }
        let busy: Vec<f64> = (0..3).map(|c| self.busy(c)).collect();
        writeln!(
            md,
            "| busy (all but idle) | {:.0} ms | {:.0} ms | {:.0} ms | {:+.0} ms |",
            busy[0],
            busy[1],
            busy[2],
            busy[2] - busy[0]
        )
        .unwrap();
        let (f, l) = (self.share(1), self.share(2));
        writeln!(
            md,
            "| **attributable** (implied ratio) | — | {:.2} % ({:.3}) | **{:.2} % ({:.3})** | |\n",
            f * 100.0,
            1.0 / (1.0 + f),
            l * 100.0,
            1.0 / (1.0 + l)
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_bucketed_by_their_chain() {
        let script = "    0/0     \n\tffff pv_native_safe_halt\n\tffff do_idle\n\n\
             1200/1201 \n\tffff lookup_nulls_elem_raw\n\tffff bpf_prog_87b6_sys_enter_sendto\n\tffff trace_call_bpf\n\tffff perf_syscall_enter\n\n\
             1200/1201 \n\tffff syscall_trace_enter\n\tffff do_syscall_64\n\n\
             1200/1202 \n\tffff _PyEval_EvalFrameDefault\n\n\
             77/78 \n\tffff memcpy\n\n\
             1200/1201 \n\tffff irq_work_single\n\tffff __sysvec_irq_work\n";
        // Programs, Tracing, IrqWork, Daemon, Rest, Idle
        assert_eq!(tally(script, Some(77)), [1, 1, 1, 1, 1, 1]);
        // Without a daemon, its pid is just another process.
        assert_eq!(tally(script, None), [1, 1, 1, 0, 2, 1]);
    }
}
