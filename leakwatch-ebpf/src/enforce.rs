//! Kernel-side freeze: hash every argv string and env value of an exec (seeded FNV-1a over
//! the exact bytes, as the daemon computes it) and SIGKILL the task at `sys_enter_execve` when
//! one is in `FROZEN`, so the new image never runs. Costs nothing while `FROZEN` is empty.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_uid_gid, bpf_send_signal,
    generated::{bpf_loop, bpf_ringbuf_output},
};
use leakwatch_common::*;

use crate::{
    exec::Walk,
    maps::{count, EVENTS, FROZEN, FROZEN_ON, SCRATCH},
    task,
};

/// Per-host seed of the candidate hash, set by the loader.
#[unsafe(no_mangle)]
static HASH_SEED: u64 = 0;

const MASK: u64 = (EXEC_DATA_MAX - 1) as u64;
/// Shortest credential the kernel matches (shorter values are never frozen).
const MIN_LEN: u64 = 8;

/// Hash state, in the scratch map value for the same reason as `Walk`.
#[repr(C)]
pub struct Hash {
    seen_eq: u32,
    _pad: u32,
    pos: u64,
    end: u64,
    whole: u64,
    value: u64,
}

/// Checks the string just finished at `w.str_start..w.off - 1`; records a hit in `w.hit`.
#[inline(always)]
pub fn check(w: &mut Walk, cpu: u32) {
    if w.hit != 0 {
        return;
    }
    match FROZEN_ON.get(0) {
        Some(on) if *on != 0 => {}
        _ => return,
    }
    if w.off < w.str_start + MIN_LEN + 1 {
        return;
    }
    // SAFETY: plain global set at load time.
    let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
    let Some(sp) = SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    let (pos, end) = (w.str_start, w.off - 1);
    // SAFETY: this CPU's scratch value; the walk state is not touched while hashing.
    unsafe {
        (*sp).hash = Hash {
            seen_eq: 0,
            _pad: 0,
            pos,
            end,
            whole: seed,
            value: seed,
        };
    }
    let mut cpu_arg = cpu;
    // SAFETY: static callback, ctx is the CPU id on this stack.
    unsafe {
        bpf_loop(
            (end - pos) as u32,
            hash_step as *mut c_void,
            &mut cpu_arg as *mut u32 as *mut c_void,
            0,
        )
    };
    // SAFETY: as above.
    let h = unsafe { &(*sp).hash };
    // argv: the whole argument (or what follows its first '='); env: the value only.
    if w.phase == 0 && FROZEN.get_ptr(&h.whole).is_some() {
        w.hit = h.whole;
    } else if h.seen_eq != 0 && FROZEN.get_ptr(&h.value).is_some() {
        w.hit = h.value;
    }
}

#[inline(never)]
unsafe extern "C" fn hash_step(_i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the CPU id.
    let cpu = unsafe { *(ctx as *const u32) };
    let Some(sp) = SCRATCH.get_ptr_mut(cpu) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value; masked index inside its data.
    let sc = unsafe { &mut *sp };
    let h = &mut sc.hash;
    if h.pos >= h.end {
        return 1;
    }
    let b = sc.ev.data[(h.pos & MASK) as usize];
    h.pos += 1;
    h.whole = fnv1a_step(h.whole, b);
    if h.seen_eq != 0 {
        h.value = fnv1a_step(h.value, b);
    } else if b == b'=' {
        h.seen_eq = 1;
    }
    0
}

/// SIGKILLs the current task (pending before the new image runs) and reports it if the ring
/// has room; the kill never depends on ring space.
#[inline(always)]
pub fn kill(probe: u32, hash: u64) {
    // SAFETY: helper without preconditions beyond program type (tracepoint: allowed).
    unsafe { bpf_send_signal(9) };
    count(STAT_ENFORCE_KILLS);
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = EnforceEvent {
        kind: EVENT_ENFORCE,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        ppid: task::ppid(),
        uid: bpf_get_current_uid_gid() as u32,
        probe,
        hash,
        // SAFETY: helper without preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let size = core::mem::size_of::<EnforceEvent>() as u64;
    // SAFETY: `ev` is on this stack with `size` bytes.
    let ret = unsafe {
        bpf_ringbuf_output(
            &EVENTS as *const _ as *mut c_void,
            &mut ev as *mut _ as *mut c_void,
            size,
            0,
        )
    };
    if ret < 0 {
        count(STAT_ENFORCE_LOST);
    }
}
