//! Runs of by-reference writes. A thread's writes to a held file that continue each other
//! (same fd, file and probe, each starting where the last ended) are joined here into one
//! pending record in `RUNS`, keyed by thread id, and sent as one ring record: a busy
//! writer pays a map lookup and four reads per call (`extend`) instead of resolving its
//! fd and sending a ring record. Only the thread itself
//! sends its run — at its next write that does not continue it, at a bound
//! (`RUN_CALLS_MAX`, `RUN_BYTES_MAX`, `RUN_AGE_JIFFIES`), at a copied write to the same fd
//! while it still names a regular file, or
//! at its exit — so every call in a sent run has returned (`WRITE_F_SETTLED`), and no
//! other CPU ever writes the entry. A write after a pause (`RUN_PAUSE_JIFFIES`) starts no
//! run: it and the next few (`RUN_LONE_MAX`) are sent alone at once, so a slow writer's
//! lines, or a short burst of them, are not held until its next write.
//! The daemon reads, never writes, the runs of threads that went quiet.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_jiffies64},
    macros::map,
    maps::HashMap,
};
use leakwatch_common::*;

use crate::{fdinfo, maps, maps::BPF_F_NO_PREALLOC, mem};

/// Not preallocated: the limit's worth of entries would pin 2.4 MB of kernel memory for
/// the few threads with a run pending at any moment.
#[map]
pub static RUNS: HashMap<u32, RefRun> = HashMap::with_max_entries(RUNS_MAX, BPF_F_NO_PREALLOC);

const BPF_NOEXIST: u64 = 1;
const HDR: u32 = core::mem::size_of::<WriteHeader>() as u32;

/// The calling thread's one-buffer write of `len` bytes on `fd` (at `offset`, or -1: the
/// file position) continues its pending run: extended in place, true. The fast path of
/// every call after a run's first: no header, no fd resolution, no `HELD` lookup — one map
/// lookup and four reads (the task's files, its fd table, the fd's file, the position).
/// The file stays held for the run's short life (at most
/// `RUN_AGE_JIFFIES`); a run the daemon no longer holds the file for arrives counted as unread.
#[inline(always)]
pub fn extend(tid: u32, fd: u32, probe: u32, len: u64, offset: i64) -> bool {
    let Some(p) = RUNS.get_ptr_mut(&tid) else {
        return false;
    };
    // SAFETY: map value; only this thread writes its entry (see the module comment).
    let run = unsafe { &mut *p };
    let r = &run.rec;
    if r.calls == 0
        || r.fd != fd as i32
        || r.hdr.probe != probe
        || r.calls >= RUN_CALLS_MAX
        || r.total + len > RUN_BYTES_MAX
    {
        return false;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_jiffies64() };
    if now.wrapping_sub(run.started_jiffies) >= RUN_AGE_JIFFIES {
        return false;
    }
    // The same open file at `fd`: the same inode (the file pins it), so no read of it.
    let Some(file) = fdinfo::cached_file(fd, run.fdt, run.arr) else {
        return false;
    };
    if file != r.file.file {
        return false;
    }
    let pos = if offset >= 0 {
        offset
    } else {
        let append = r.hdr.flags & WRITE_F_APPEND != 0;
        let Some(pos) = fdinfo::pos_of(file, r.inode, append) else {
            return false;
        };
        pos
    };
    if (r.offset as u64).wrapping_add(r.total) != pos as u64 {
        return false;
    }
    run.rec.total += len;
    run.rec.calls += 1;
    run.last_len = len;
    run.last_jiffies = now;
    true
}

/// `r` is a complete by-reference record (`offset`, `total`, one call) that did not
/// continue the calling thread's run (`extend`): the run it ends is sent, and it starts the
/// next one — or, after a pause (`RUN_PAUSE_JIFFIES`) and for `RUN_LONE_MAX` writes, goes
/// alone at once, leaving an entry with no calls that dates the write. `fdt`/`arr` are where its fd was found; `spare` is
/// per-CPU room to build a new map entry in.
#[inline(always)]
pub fn start(r: &mut WriteHeader, spare: &mut RefRun, fdt: u64, arr: u64) {
    let tid = r.hdr.pid;
    let now = r.hdr.ktime_ns;
    r.calls = 1;
    // SAFETY: helper without preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    // `lone`: writes sent alone since the pause, this one included; 0 starts a run.
    let (run, fresh, lone) = match RUNS.get_ptr_mut(&tid) {
        Some(p) => {
            // SAFETY: map value; only this thread writes its entry.
            let run = unsafe { &mut *p };
            let lone = if jiffies.wrapping_sub(run.last_jiffies) >= RUN_PAUSE_JIFFIES {
                1
            } else if run.rec.calls == 0 && run.lone < RUN_LONE_MAX as u64 {
                run.lone + 1
            } else {
                0
            };
            send(run, now);
            (run, false, lone)
        }
        None => (spare, true, 1),
    };
    // Alone, the entry holds no calls: copied so, a `peek` of the daemon never sees the
    // lone write as a run of one.
    if lone != 0 {
        r.calls = 0;
    }
    mem::copy(
        &mut run.rec as *mut WriteHeader as *mut u8,
        r as *const WriteHeader as *const u8,
        HDR,
    );
    r.calls = 1;
    run.started_ns = now;
    run.started_jiffies = jiffies;
    run.last_jiffies = jiffies;
    run.last_len = r.total;
    run.fdt = fdt;
    run.arr = arr;
    run.lone = lone;
    let stored = !fresh || RUNS.insert(&tid, &*run, BPF_NOEXIST).is_ok();
    if lone == RUN_LONE_MAX as u64 {
        r.hdr.flags |= WRITE_F_RUN_NEXT;
    }
    if lone != 0 || !stored {
        // Alone: one of the first writes after a pause, or with no room for another run.
        let wake = maps::write_wakeup(now);
        maps::emit_write(
            r.hdr.probe,
            r as *const WriteHeader as *const u8,
            HDR as u64,
            wake,
        );
    }
}

/// Sends `run` to the ring; a lost record counts every call in it as lost.
#[inline(always)]
fn send(run: &mut RefRun, now: u64) {
    let rec = &mut run.rec;
    if rec.calls == 0 {
        return;
    }
    rec.hdr.flags |= WRITE_F_SETTLED;
    let wake = maps::write_wakeup(now);
    let probe = rec.hdr.probe;
    let calls = rec.calls as u64;
    if !maps::emit_write(
        probe,
        rec as *const WriteHeader as *const u8,
        HDR as u64,
        wake,
    ) && calls > 1
    {
        maps::add(probe, STAT_LOST, calls - 1);
    }
}

/// The calling thread is about to send a copied record for `fd`: its run on `fd`, if any,
/// goes first, so the daemon sees that fd's calls in order.
#[inline(always)]
pub fn end_fd(tid: u32, fd: i32) {
    finish(tid, |run| run.rec.fd == fd);
}

/// The calling thread exits: its run, if any, is sent.
#[inline(always)]
pub fn on_exit() {
    finish(bpf_get_current_pid_tgid() as u32, |_| true);
}

/// Sends and forgets the calling thread's run when `which` accepts it.
#[inline(always)]
fn finish(tid: u32, which: impl Fn(&RefRun) -> bool) {
    if let Some(p) = RUNS.get_ptr_mut(&tid) {
        // SAFETY: map value; only this thread writes its entry.
        let run = unsafe { &mut *p };
        if which(run) {
            // SAFETY: helper without preconditions.
            send(run, unsafe { bpf_ktime_get_ns() });
            let _ = RUNS.remove(&tid);
        }
    }
}
