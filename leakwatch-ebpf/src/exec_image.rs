//! The frozen check after the new image is loaded: `sched:sched_process_exec` fires once
//! the kernel has copied argv and envp into the new mm (`mm->arg_start..arg_end`, then
//! `env_start..env_end`: contiguous, NUL-separated, just written so every page is present)
//! and before the task returns to user space. The whole area is walked, whatever its size,
//! so what the `sys_enter_execve` check cannot see (strings past its capture limit or loop
//! budget, pages not yet faulted in, strings another thread rewrote after the syscall read
//! them) is matched here. A hit is SIGKILLed before the new image's first instruction.
//!
//! Same rule as `exec::check`: argv strings whole or after their first '=', env strings
//! after their first '=', strings of at least 8 bytes, seeded FNV-1a (`frozen`).
//! Called by `scope`'s `sched_process_exec` program only while a credential is frozen. A walk that cannot finish (unreadable area or
//! loop budget, which no exec the kernel accepts reaches: see `EXEC_IMAGE_MAX_STEPS`) fails
//! closed: the exec is killed and counted in `STAT_UNCHECKED`.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::PerCpuArray,
};
use leakwatch_common::*;

use crate::{frozen, maps};

const CHUNK: u64 = EXEC_IMAGE_CHUNK as u64;
const MASK: u64 = CHUNK - 1;
/// Bytes hashed per loop step (fewer when a string ends first).
const BLOCK: u64 = 64;
/// Shortest credential the kernel matches (shorter values are never frozen).
const MIN_LEN: u64 = 8;
/// Larger areas are not an exec the kernel made (6 MiB is its limit): fail closed.
const AREA_MAX: u64 = 16 << 20;

const DONE: u64 = 2;

/// Walk state and the chunk being hashed, in a map value: the verifier treats the fields as
/// unknown scalars, so the callback's states converge at once.
#[repr(C)]
struct Walk {
    /// Next byte to hash (user address) and the end of the current area.
    pos: u64,
    end: u64,
    env_start: u64,
    env_end: u64,
    /// 0 = argv area, 1 = env area, 2 = done.
    phase: u64,
    /// User addresses `buf` holds: `chunk_at..chunk_end`.
    chunk_at: u64,
    chunk_end: u64,
    seed: u64,
    /// Hashes of the current string: whole, and after its first '='.
    whole: u64,
    value: u64,
    seen_eq: u64,
    len: u64,
    hit: u64,
    failed: u64,
    buf: [u8; EXEC_IMAGE_CHUNK],
}

#[map]
static IMAGE_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Walks the new image's areas (`task::arg_env_areas`); true when it sent SIGKILL (a frozen
/// credential, or an area it could not walk to its end).
#[inline(always)]
pub fn check(areas: Option<[u64; 4]>) -> bool {
    let Some(sp) = IMAGE_WALK.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
    let w = unsafe { &mut *sp };
    w.phase = 0;
    w.chunk_at = 0;
    w.chunk_end = 0;
    w.seed = frozen::seed();
    w.whole = w.seed;
    w.value = w.seed;
    w.seen_eq = 0;
    w.len = 0;
    w.hit = 0;
    w.failed = 1;
    if let Some([arg_start, arg_end, env_start, env_end]) = areas {
        if arg_start <= arg_end
            && env_start <= env_end
            && (arg_end - arg_start) + (env_end - env_start) <= AREA_MAX
        {
            w.pos = arg_start;
            w.end = arg_end;
            w.env_start = env_start;
            w.env_end = env_end;
            w.failed = 0;
        }
    }
    if w.failed == 0 {
        // SAFETY: static callback that ignores its context.
        unsafe {
            bpf_loop(
                EXEC_IMAGE_MAX_STEPS,
                step as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    // SAFETY: as above.
    let w = unsafe { &*sp };
    if w.hit != 0 {
        frozen::kill(PROBE_EXEC_IMAGE, w.hit);
        true
    } else if w.failed != 0 || w.phase < DONE {
        maps::count(PROBE_EXEC_IMAGE, STAT_UNCHECKED);
        frozen::kill(PROBE_EXEC_IMAGE, 0);
        true
    } else {
        false
    }
}

/// One step: switch area, read the next chunk, or hash up to `BLOCK` bytes of the current
/// string (stopping after its NUL). Returns 1 to stop the loop.
#[inline(never)]
unsafe extern "C" fn step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(sp) = IMAGE_WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value.
    let w = unsafe { &mut *sp };
    if w.phase >= DONE || w.hit != 0 || w.failed != 0 {
        return 1;
    }
    if w.pos >= w.end {
        // An unterminated last string (not made by the kernel) is still checked.
        finish(w);
        if w.phase == 0 {
            w.phase = 1;
            w.pos = w.env_start;
            w.end = w.env_end;
            w.chunk_end = 0;
            return 0;
        }
        w.phase = DONE;
        return 1;
    }
    if w.pos < w.chunk_at || w.pos >= w.chunk_end {
        let left = w.end - w.pos;
        let n = if left < CHUNK { left } else { CHUNK };
        // SAFETY: n <= CHUNK = buf length; the helper checks the source.
        let ret = unsafe {
            bpf_probe_read_user(
                w.buf.as_mut_ptr() as *mut c_void,
                n as u32,
                w.pos as *const c_void,
            )
        };
        if ret < 0 {
            w.failed = 1;
            return 1;
        }
        w.chunk_at = w.pos;
        w.chunk_end = w.pos + n;
        return 0;
    }
    let off = w.pos - w.chunk_at;
    let avail = w.chunk_end - w.pos;
    let n = if avail < BLOCK { avail } else { BLOCK };
    let (mut whole, mut value, mut seen, mut len) = (w.whole, w.value, w.seen_eq, w.len);
    let mut used = n;
    let mut ended = false;
    // Constant trip count, masked index: the verifier cannot relate `n` to the buffer.
    for i in 0..BLOCK {
        if i >= n {
            break;
        }
        let b = w.buf[((off + i) & MASK) as usize];
        if b == 0 {
            used = i + 1;
            ended = true;
            break;
        }
        whole = fnv1a_step(whole, b);
        // Branch-free: `value` advances only after the first '=' (which is not hashed).
        let keep = 0u64.wrapping_sub(seen);
        value = (fnv1a_step(value, b) & keep) | (value & !keep);
        seen |= ((b ^ b'=') as u64).wrapping_sub(1) >> 63;
        len += 1;
    }
    w.whole = whole;
    w.value = value;
    w.seen_eq = seen;
    w.len = len;
    w.pos += used;
    if ended {
        finish(w);
    }
    0
}

/// The current string ended: match it, then start the next one.
#[inline(always)]
fn finish(w: &mut Walk) {
    if w.len >= MIN_LEN {
        if w.phase == 0 && frozen::is_frozen(w.whole) {
            w.hit = w.whole;
        } else if w.seen_eq != 0 && frozen::is_frozen(w.value) {
            w.hit = w.value;
        }
    }
    w.whole = w.seed;
    w.value = w.seed;
    w.seen_eq = 0;
    w.len = 0;
}
