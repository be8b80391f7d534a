//! Write floods: the writes ring under a flood shows its fill, and a flood past the loss
//! rate is accounted exactly. Apart from the write suite because every daemon with the
//! default scope copies every write on the host: beside these floods, the write suite's
//! daemons lost hundreds of thousands of records, and a test that sent its key once missed
//! it (CI, 2026-12-07). Cargo runs test binaries one after another, so nothing runs beside
//! these but each other, and `ALONE` keeps the two apart too.
use std::{
    fs,
    process::{Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use leakwatch_tests::*;

/// Held by each flood for its whole run: two floods at once would share the two cores
/// and the ring-fill test could starve the other's writers.
static ALONE: Mutex<()> = Mutex::new(());

#[test]
fn write_ring_fill_is_reported_and_rises_under_a_flood() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    // Only the flood is in scope here; the daemons of other suites never run beside it.
    let d = Daemon::start_with_config("w-ringfill", "[scope]\ncomms = [\"lw-flood\"]\n");
    for ring in ["events", "writes"] {
        let r = d.metric("leakwatch_ring_fill_ratio", &[("ring", ring)]);
        assert!((0.0..=1.0).contains(&r), "{ring}: {r}");
    }
    // A flood to /dev/null, one writer per core: every write copied into the ring. The
    // daemon's threads are niced to 19 so the floods outrun them whatever else the
    // machine runs; they write until the fill shows (killed when dropped).
    let head = d.scratch().join("lw-flood");
    std::os::unix::fs::symlink("/usr/bin/head", &head).unwrap();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut floods: Vec<Reaped> = (0..cores)
        .map(|_| {
            Reaped(
                Command::new(&head)
                    .args(["-c", "200000M", "/dev/zero"])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    renice(&d, 19);
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && floods.iter_mut().any(|f| f.0.try_wait().unwrap().is_none())
        && peak < 0.05
    {
        std::thread::sleep(Duration::from_millis(300));
        peak = peak.max(d.metric("leakwatch_ring_fill_ratio", &[("ring", "writes")]));
    }
    drop(floods);
    assert!(
        peak >= 0.05,
        "the writes ring never showed fill under a flood: {peak}"
    );
}

/// Loss, exactly: two writers that outrun a niced daemon with a 1 MiB ring make a known
/// number of write calls; every one is counted once, as processed, lost in the ring or
/// dropped from the userspace queue, and some were lost (the test provokes the loss it
/// accounts for).
#[test]
fn write_flood_past_the_loss_rate_is_accounted_exactly() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    // Only the writers are in scope: other tests' writes land in no counter read here.
    let d = Daemon::start_with_config(
        "w-accounted",
        "[scope]\ncomms = [\"lw-acct\"]\n[capture]\nwrites_ring_mb = 1\n",
    );
    let dd = d.scratch().join("lw-acct");
    std::os::unix::fs::symlink("/usr/bin/dd", &dd).unwrap();
    // Its threads niced, so the writers outrun it whatever else the machine runs.
    renice(&d, 19);
    let w = [("probe", "sys_enter_write")];
    let count = |d: &Daemon| {
        let text = d.scrape();
        let g = |n: &str| metric(&text, n, &w) as u64;
        (
            g("leakwatch_events_total"),
            g("leakwatch_lost_events_total"),
            g("leakwatch_pipeline_dropped_total"),
        )
    };
    let before = count(&d);
    // One write per block (dd reads /dev/zero, writes /dev/null), nothing else written:
    // status=none keeps its summary off stderr.
    const BLOCKS: u64 = 400_000;
    let writers: Vec<Reaped> = (0..2)
        .map(|_| {
            Reaped(
                Command::new(&dd)
                    .args(["if=/dev/zero", "of=/dev/null", "bs=4096", "status=none"])
                    .arg(format!("count={BLOCKS}"))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for mut w in writers {
        assert!(w.0.wait().unwrap().success(), "a writer failed");
    }
    let made = 2 * BLOCKS;
    // Back to its normal share, so it drains what it queued; then wait until the sum is
    // `made` and holds for 2 s (a count going past it would show), or stops moving for 5 s
    // short of it (the lost counter is polled once a second).
    renice(&d, 0);
    let sum = |c: (u64, u64, u64)| c.0 - before.0 + c.1 - before.1 + c.2 - before.2;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (count(&d), Instant::now());
    while Instant::now() < deadline {
        let still = since.elapsed();
        if still >= Duration::from_secs(5) || (sum(last) == made && still >= Duration::from_secs(2))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        let now = count(&d);
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    let (events, lost, dropped) = (last.0 - before.0, last.1 - before.1, last.2 - before.2);
    eprintln!("{made} writes: {events} processed, {lost} lost in the ring, {dropped} dropped");
    assert_eq!(
        sum(last),
        made,
        "{made} writes made, {events} processed + {lost} lost in the ring + {dropped} dropped \
         from the queue: {}",
        if sum(last) < made {
            "silent loss"
        } else {
            "counted twice"
        }
    );
    assert!(
        lost + dropped > 0,
        "no loss was provoked ({events} of {made} processed): the test proves nothing"
    );
}

/// Sets the nice value of every thread of `d`'s daemon.
fn renice(d: &Daemon, nice: i32) {
    let daemon = d.child.as_ref().unwrap().id();
    for t in fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .flatten()
    {
        let tid: u32 = t.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: setpriority on a thread of our own child.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    }
}
