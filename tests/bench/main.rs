//! `cargo xtask bench`: measures what BENCHMARKS.md reports and rewrites it.
//! - freeze latency, command to report, for 1, 10 and 100 holder processes, each holding
//!   two TCP connections (real daemon, real eBPF programs);
//! - the detection engine's throughput, recall and false positives (see `scan_bench`).
mod freeze_bench;
mod scan_bench;

use std::fmt::Write as _;

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "BENCHMARKS.md".into());
    let mut md = String::new();
    writeln!(md, "# leakwatch benchmarks\n").unwrap();
    writeln!(
        md,
        "Produced by `cargo xtask bench` on {} ({} cores, kernel {}). Rerun it to refresh this file.\n",
        hostname(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()
    )
    .unwrap();
    if std::env::var_os("LW_BENCH_SKIP_FREEZE").is_none() {
        md.push_str(&freeze_bench::run());
    }
    md.push_str(&scan_bench::run());
    std::fs::write(&out, md).expect("writing BENCHMARKS.md");
    eprintln!("wrote {out}");
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
