//! Why the daemon hooks per-syscall tracepoints although detaching them makes its stop slow:
//! the same hooks taken from the raw `sys_enter` / `sys_exit` tracepoints detach at once but
//! put a program on every syscall of the host. Bare counters in every configuration (the
//! floor), so only the hook differs: attach and detach time, and what a watched and an
//! unwatched syscall cost.
use std::{
    fmt::Write as _,
    fs::OpenOptions,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use leakwatch::probes::floor::{load_raw_floor, RawHook};

use crate::write_bench::{env_or, median};

pub const TITLE: &str = "Hook choice: per-syscall tracepoints or raw sys_enter";

#[derive(Clone, Copy, PartialEq)]
enum Hooks {
    None,
    PerSyscall,
    /// With the exit hooks too (true), as the daemon has them.
    Raw(RawHook, bool),
}

const CONFIGS: [Hooks; 5] = [
    Hooks::None,
    Hooks::PerSyscall,
    Hooks::Raw(RawHook::Filter, true),
    Hooks::Raw(RawHook::Dispatch, true),
    Hooks::Raw(RawHook::Dispatch, false),
];

fn label(h: Hooks) -> &'static str {
    match h {
        Hooks::None => "none",
        Hooks::PerSyscall => "per-syscall tracepoints (what the daemon uses)",
        Hooks::Raw(RawHook::Filter, _) => "raw sys_enter/sys_exit, number looked up in an array",
        Hooks::Raw(RawHook::Dispatch, true) => "raw sys_enter/sys_exit, tail call per syscall",
        Hooks::Raw(RawHook::Dispatch, false) => {
            "raw sys_enter only, tail call per syscall (the exit hooks left out)"
        }
    }
}

/// The x86_64 syscall number of a `sys_enter_*` / `sys_exit_*` tracepoint name.
fn nr(name: &str) -> u32 {
    let call = name
        .trim_start_matches("sys_enter_")
        .trim_start_matches("sys_exit_");
    (match call {
        "execve" => libc::SYS_execve,
        "execveat" => libc::SYS_execveat,
        "write" => libc::SYS_write,
        "writev" => libc::SYS_writev,
        "pwrite64" => libc::SYS_pwrite64,
        "pwritev" => libc::SYS_pwritev,
        "pwritev2" => libc::SYS_pwritev2,
        "sendto" => libc::SYS_sendto,
        "sendmsg" => libc::SYS_sendmsg,
        "sendmmsg" => libc::SYS_sendmmsg,
        "vmsplice" => libc::SYS_vmsplice,
        "connect" => libc::SYS_connect,
        "copy_file_range" => libc::SYS_copy_file_range,
        "sendfile64" => libc::SYS_sendfile,
        "splice" => libc::SYS_splice,
        "tee" => libc::SYS_tee,
        other => panic!("no syscall number known for tracepoint {other}: add it here"),
    }) as u32
}

/// Attaches `h` the way the daemon's hook set would be taken; returns it and the time taken.
fn attach(h: Hooks) -> (Option<leakwatch::probes::Floor>, Duration) {
    let all = leakwatch::probes::all_tracepoints();
    let t0 = Instant::now();
    let f = match h {
        Hooks::None => None,
        Hooks::PerSyscall => {
            let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
            Some(leakwatch::probes::load_floor(&refs).expect("loading the floor"))
        }
        Hooks::Raw(hook, exits) => {
            let (mut enter, mut exit, mut events) = (Vec::new(), Vec::new(), Vec::new());
            for t in &all {
                let (cat, name) = t.split_once(':').expect("category:name");
                match cat {
                    "syscalls" if name.starts_with("sys_enter_") => enter.push(nr(name)),
                    "syscalls" if exits => exit.push(nr(name)),
                    "syscalls" => {}
                    _ => events.push(name),
                }
            }
            Some(load_raw_floor(hook, &enter, &exit, &events).expect("loading the raw floor"))
        }
    };
    (f, t0.elapsed())
}

/// Nanoseconds per call of `f`, over `n` calls.
fn per_call(n: u64, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        f();
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

struct Sample {
    attach: Duration,
    detach: Duration,
    unwatched: f64,
    watched: f64,
}

pub fn run() -> String {
    let rounds: usize = env_or("LW_BENCH_HOOK_ROUNDS", 7);
    let calls: u64 = env_or("LW_BENCH_HOOK_CALLS", 2_000_000);
    let null = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("opening /dev/null");
    let buf = [0u8; 512];
    let mut samples: Vec<Vec<Sample>> = CONFIGS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..CONFIGS.len() {
            let i = (round + k) % CONFIGS.len();
            let (f, attach) = attach(CONFIGS[i]);
            // SAFETY: getppid has no preconditions.
            let unwatched = per_call(calls, || unsafe {
                libc::syscall(libc::SYS_getppid);
            });
            // SAFETY: a valid fd and buffer.
            let watched = per_call(calls, || unsafe {
                libc::write(null.as_raw_fd(), buf.as_ptr().cast(), buf.len());
            });
            if let Some(f) = &f {
                // Every watched write went through the counter: the hooks were live.
                assert!(
                    f.calls().unwrap() >= calls,
                    "{}: counter missed calls",
                    label(CONFIGS[i])
                );
            }
            let t0 = Instant::now();
            drop(f);
            samples[i].push(Sample {
                attach,
                detach: t0.elapsed(),
                unwatched,
                watched,
            });
        }
        eprintln!("hooks bench: round {}/{rounds} done", round + 1);
    }
    report(&samples, rounds, calls)
}

fn report(samples: &[Vec<Sample>], rounds: usize, calls: u64) -> String {
    let mut md = String::new();
    writeln!(md, "## {TITLE}\n").unwrap();
    writeln!(
        md,
        "Produced by `cargo xtask bench --only hooks`. The daemon's {} hooks (syscalls, sched, io_uring) with a bare counter on each, taken in turn by each configuration below. Each round every configuration takes one turn (order rotated): attach, {calls} `getppid` calls (no hook watches it), {calls} 512 B writes to /dev/null (`write` is watched), detach. Medians of {rounds} rounds; ns per call on one thread.\n",
        leakwatch::probes::all_tracepoints().len()
    )
    .unwrap();
    writeln!(md, "| hooks | attach | **detach** | unwatched syscall | over none | watched syscall | over none |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
    let med = |s: &[Sample], f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let (base_u, base_w) = (
        med(&samples[0], |s| s.unwatched),
        med(&samples[0], |s| s.watched),
    );
    for (h, s) in CONFIGS.iter().zip(samples) {
        let (u, w) = (med(s, |s| s.unwatched), med(s, |s| s.watched));
        writeln!(
            md,
            "| {} | {:.1} ms | **{:.1} ms** | {u:.0} ns | +{:.0} ns | {w:.0} ns | +{:.0} ns |",
            label(*h),
            med(s, |s| s.attach.as_secs_f64() * 1e3),
            med(s, |s| s.detach.as_secs_f64() * 1e3),
            u - base_u,
            w - base_w,
        )
        .unwrap();
    }
    writeln!(md, "\nDetaching a per-syscall tracepoint waits for RCU grace periods (`tracepoint_synchronize_unregister`, under the kernel's `event_mutex`, so one at a time): that is the daemon's stop time. Raw tracepoints detach at once, but their program runs on every syscall of every process, watched or not; a per-syscall tracepoint costs an unwatched syscall only the kernel's bitmap test. leakwatch keeps per-syscall tracepoints: a slow stop costs once, a dearer unwatched syscall costs all the time.\n").unwrap();
    md
}
