//! `leakwatch core-handler` on a 1 GiB core: a synthetic core (random bytes, an ELF
//! magic, environment-like strings every 64 KiB, one key in the middle) written into the
//! handler's stdin pipe as the kernel would, passed on to a previous pipe handler that
//! notes when its first and last byte arrive. Against the same previous handler fed
//! directly (no leakwatch): the delay leakwatch adds before the previous handler gets
//! the core. Peak memory is the handler's own high-water mark (`VmHWM`, polled;
//! `ru_maxrss` would count the bench's own image, copied at fork).
use std::{
    fmt::Write as _,
    io::Write as _,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use leakwatch_tests::{bin, sample, Rng};

pub const TITLE: &str = "Core handler";

const RUNS: usize = 5;

const RECEIVER: &str = "#!/bin/sh\nhead -c 1 >/dev/null\ndate +%s%N > \"$1.first\"\ncat >/dev/null\ndate +%s%N > \"$1.last\"\n";

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The synthetic core and the offset of its key.
fn core(len: usize) -> Vec<u8> {
    let mut rng = Rng::from_time();
    let mut data = vec![0u8; len];
    let mut x = rng.next_u64() | 1;
    for w in data.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
    data[..4].copy_from_slice(b"\x7fELF");
    let env = b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin\0HOME=/root\0LANG=C.UTF-8\0PWD=/srv/app\0";
    for at in (4096..len - env.len()).step_by(64 << 10) {
        data[at..at + env.len()].copy_from_slice(env);
    }
    let (_, text) = sample("github-pat", &mut rng).unwrap();
    let line = format!("GITHUB_TOKEN={text}\0");
    let at = len / 2 + 12_345;
    data[at..at + line.len()].copy_from_slice(line.as_bytes());
    data
}

/// One run: wall time of the fed process, first and last byte at the receiver since the
/// start, peak RSS (KiB), CPU time, the handler's line.
struct Run {
    wall: Duration,
    first: Duration,
    last: Duration,
    hwm_kib: u64,
    cpu: Duration,
    line: String,
}

// Reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn feed(cmd: &mut Command, data: &'static [u8], out: &Path) -> Run {
    let _ = std::fs::remove_file(out.with_extension("first"));
    let t0 = now_ns();
    let start = Instant::now();
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = c.id() as i32;
    let mut stdin = c.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(data);
    });
    let mut stderr = c.stderr.take().unwrap();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let hwm = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let h = hwm.clone();
    let poller = std::thread::spawn(move || loop {
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            return;
        };
        if let Some(kb) = st
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        {
            h.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
        }
        if st.contains("State:\tZ") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let mut status = 0;
    // SAFETY: an rusage for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    poller.join().unwrap();
    // SAFETY: wait4 on our own child.
    unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    feeder.join().unwrap();
    let line = errs.join().unwrap();
    let read = |ext: &str| -> Duration {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ns) = std::fs::read_to_string(out.with_extension(ext))
                .ok()
                .and_then(|s| s.trim().parse::<u128>().ok())
            {
                return Duration::from_nanos(ns.saturating_sub(t0) as u64);
            }
            assert!(
                Instant::now() < deadline,
                "the receiver wrote no {ext} time"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let first = read("first");
    let last = read("last");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Run {
        wall,
        first,
        last,
        hwm_kib: hwm.load(std::sync::atomic::Ordering::Relaxed),
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        line: line.trim().to_string(),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// `b - a`, signed.
fn diff(a: Duration, b: Duration) -> String {
    format!("{:+.0} ms", (b.as_secs_f64() - a.as_secs_f64()) * 1e3)
}

pub fn run() -> String {
    let mib: usize = std::env::var("LW_BENCH_CORE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("leakwatch-bench-core-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let recv = dir.join("recv.sh");
    std::fs::write(&recv, RECEIVER).unwrap();
    std::fs::set_permissions(&recv, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("got");
    std::fs::write(
        dir.join("state/core-handler.toml"),
        format!(
            "previous = \"|{} {}\"\nsocket = \"{}\"\n",
            recv.display(),
            out.display(),
            dir.join("no-daemon.sock").display()
        ),
    )
    .unwrap();
    let data: &'static [u8] = Vec::leak(core(mib << 20));
    let me = std::process::id().to_string();
    let values = [
        me.as_str(),
        me.as_str(),
        "6",
        "1733212345",
        "0",
        "0",
        "1",
        "18446744073709551615",
        "0",
        "bench",
        "bench-crash",
    ];
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        direct.push(feed(Command::new(&recv).arg(&out), data, &out));
        through.push(feed(
            Command::new(bin())
                .arg("core-handler")
                .arg("--state-dir")
                .arg(dir.join("state"))
                .args(values),
            data,
            &out,
        ));
    }
    let found = through.iter().all(|r| r.line.contains("1 credential(s)"));
    let passed = through
        .iter()
        .all(|r| r.line.contains(&format!("{} bytes passed on", data.len())));
    let wall = median(through.iter().map(|r| r.wall).collect());
    let (d_first, d_last) = (
        median(direct.iter().map(|r| r.first).collect()),
        median(direct.iter().map(|r| r.last).collect()),
    );
    let (t_first, t_last) = (
        median(through.iter().map(|r| r.first).collect()),
        median(through.iter().map(|r| r.last).collect()),
    );
    let hwm = through.iter().map(|r| r.hwm_kib).max().unwrap_or(0);
    let cpu = median(through.iter().map(|r| r.cpu).collect());
    let mut md = format!("## {TITLE}\n\n");
    writeln!(
        md,
        "`leakwatch core-handler` fed a {} MiB synthetic core (random bytes, an ELF magic, environment strings every 64 KiB, one GitHub token in the middle) through its stdin pipe, as the kernel feeds it, passing it on to a previous pipe handler (`head -c 1; date; cat >/dev/null; date`), with no daemon listening (the report is not timed). \"Direct\" is the same previous handler fed by the same writer with no leakwatch in between, as the kernel would without leakwatch. Times from spawning the process the writer feeds; median of {RUNS} runs.\n",
        mib
    )
    .unwrap();
    md.push_str("| | direct | through leakwatch | added by leakwatch |\n|---|---|---|---|\n");
    writeln!(
        md,
        "| previous handler's first byte | {} | {} | {} |",
        ms(d_first),
        ms(t_first),
        diff(d_first, t_first)
    )
    .unwrap();
    writeln!(
        md,
        "| previous handler's last byte | {} | {} | {} |",
        ms(d_last),
        ms(t_last),
        diff(d_last, t_last)
    )
    .unwrap();
    writeln!(md).unwrap();
    writeln!(
        md,
        "Handler: {} wall ({:.0} MB/s), {} CPU (user + system, with the previous handler it waits for), peak RSS {:.1} MiB (its own `VmHWM`, the highest of the runs; the core is never held whole: the scan reads 1 MiB buffers and the bytes go on by `tee`). Key found in every run: {}; every byte passed on: {}. Passing on runs at most a few MiB (the scan's four 1 MiB buffers) ahead of the scan, because stdin is read only as fast as it is scanned (that is what bounds memory): the previous handler's last byte comes when the scan ends. The first byte waits for the handler's start (rules compiled, `/proc/PID` read, the previous handler started). Directly the previous handler reads the kernel's default 64 KiB pipe, through leakwatch a 1 MiB one.\n",
        ms(wall),
        data.len() as f64 / 1e6 / wall.as_secs_f64(),
        ms(cpu),
        hwm as f64 / 1024.0,
        if found { "yes" } else { "NO" },
        if passed { "yes" } else { "NO" },
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    md
}
