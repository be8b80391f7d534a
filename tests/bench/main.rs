//! `cargo xtask bench [--only freeze|write|tls|cost|hooks|scan|actions|core|fleet]`: measures what BENCHMARKS.md reports and
//! rewrites it.
//! - freeze latency, command to report, for 1, 10 and 100 holder processes, each holding
//!   two TCP connections (real daemon, real eBPF programs);
//! - the write path's cost to a writing program and the daemon's accounting under load
//!   (see `write_bench`);
//! - the TLS plaintext probes' cost to an HTTPS client (see `tls_bench`);
//! - exec and connect cost against the floor, macro workloads, loss, latency and footprint
//!   (see `cost_bench`);
//! - per-syscall tracepoints against raw `sys_enter`: detach time and per-call cost (see
//!   `hooks_bench`);
//! - the detection engine's throughput, recall and false positives (see `scan_bench`);
//! - `leakwatch actions` query times on a 1 GB action log (see `actions_bench`);
//! - a 1 GiB core through `leakwatch core-handler` (see `core_bench`);
//! - fleet freeze through etcd, with simulated hosts (see `fleet_bench`).
//!
//! With `--only PART` only that part runs and only its sections of BENCHMARKS.md are
//! replaced; the others are kept from the previous run.
mod actions_bench;
mod core_bench;
mod cost_bench;
mod cost_latency;
mod cost_profile;
mod fleet_bench;
mod freeze_bench;
mod hooks_bench;
mod scan_bench;
mod scan_corpus;
mod tls_bench;
mod write_bench;

use std::fmt::Write as _;

/// Parts in the order their sections appear in BENCHMARKS.md.
const PARTS: [&str; 9] = [
    "freeze", "write", "tls", "cost", "hooks", "scan", "actions", "core", "fleet",
];

fn main() {
    let (out, only) = args();
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
    if let Some(p) = &only {
        writeln!(
            md,
            "The last run was `cargo xtask bench --only {p}`: the other sections are from an earlier run.\n"
        )
        .unwrap();
    }
    let old = only
        .as_ref()
        .map(|_| std::fs::read_to_string(&out).unwrap_or_default())
        .unwrap_or_default();
    for part in PARTS {
        if only.as_deref().is_some_and(|p| p != part) {
            md.push_str(&sections_of(&old, part));
            continue;
        }
        match part {
            "freeze" if std::env::var_os("LW_BENCH_SKIP_FREEZE").is_some() => {
                md.push_str(&sections_of(&old, part))
            }
            "freeze" => md.push_str(&freeze_bench::run()),
            "write" => md.push_str(&write_bench::run()),
            "tls" => md.push_str(&tls_bench::run()),
            "cost" => md.push_str(&cost_bench::run()),
            "hooks" => md.push_str(&hooks_bench::run()),
            "actions" => md.push_str(&actions_bench::run()),
            "core" => md.push_str(&core_bench::run()),
            "fleet" => md.push_str(&fleet_bench::run()),
            _ => md.push_str(&scan_bench::run()),
        }
    }
    std::fs::write(&out, md).expect("writing BENCHMARKS.md");
    eprintln!("wrote {out}");
}

/// (output file, part given with `--only`).
fn args() -> (String, Option<String>) {
    let mut out = "BENCHMARKS.md".to_string();
    let mut only = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--only" {
            let p = it.next().unwrap_or_default();
            if !PARTS.contains(&p.as_str()) {
                eprintln!("bench: --only takes one of {}", PARTS.join(", "));
                std::process::exit(2);
            }
            only = Some(p);
        } else {
            out = a;
        }
    }
    (out, only)
}

/// Which part wrote a `## ` section.
fn part_of(title: &str) -> &'static str {
    match title {
        "Freeze latency" => "freeze",
        t if t == write_bench::TITLE => "write",
        t if t == tls_bench::TITLE => "tls",
        t if t == cost_bench::TITLE => "cost",
        t if t == hooks_bench::TITLE => "hooks",
        t if t == actions_bench::TITLE => "actions",
        t if t == core_bench::TITLE => "core",
        t if t == fleet_bench::TITLE => "fleet",
        _ => "scan",
    }
}

/// The `## ` sections of `md` (each up to the next one) that `part` wrote.
fn sections_of(md: &str, part: &str) -> String {
    let mut out = String::new();
    let mut keep = false;
    for line in md.split_inclusive('\n') {
        if let Some(title) = line.strip_prefix("## ") {
            keep = part_of(title.trim()) == part;
        } else if line.starts_with("# ") {
            keep = false;
        }
        if keep {
            out.push_str(line);
        }
    }
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}
