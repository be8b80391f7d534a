//! The early frozen check: `sys_enter_execve` and `sys_enter_execveat`, while a credential
//! is frozen, copy argv and envp into a per-CPU scratch area (string by string, long
//! strings chunk by chunk, driven by `bpf_loop` so the verifier cost does not grow with the
//! limits) and match each finished string against `frozen`; a hit kills the task before its
//! new image is even loaded. With nothing frozen they return at once: the exec record is
//! built later from the new image (`exec_capture`), because walking the caller's pointers
//! costs two helper calls per string (46 µs per exec of a 200-variable environment here).
//! What this walk cannot see (strings past `EXEC_DATA_MAX` or `EXEC_MAX_STEPS`, pages not
//! faulted in yet, strings rewritten after it read them) is checked again by `exec_image`.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id, bpf_probe_read_user,
        generated::{bpf_loop, bpf_probe_read_user_str},
    },
    macros::{map, tracepoint},
    maps::Array,
    programs::TracePointContext,
};
use leakwatch_common::*;

use crate::frozen;

const DATA_MASK: u64 = (EXEC_DATA_MAX - 1) as u64;

/// Loop state of the `bpf_loop` callback. It lives in the per-CPU scratch map value, not on
/// the stack: the verifier then treats it as unknown scalars and the callback's states
/// converge at once (on the stack it tracks every field precisely and runs out of budget).
#[repr(C)]
pub struct Walk {
    /// 0 = argv, 1 = envp, 2 = done.
    pub phase: u32,
    pub argv: u64,
    pub envp: u64,
    /// Index of the next pointer to read in the current array.
    pub idx: u64,
    /// Current string (0 = read the next pointer first) and how much of it is consumed.
    pub cur: u64,
    pub cur_off: u64,
    /// Where the current string starts in `data`.
    pub str_start: u64,
    /// Write offset in `data`.
    pub off: u64,
    /// Set when a string matched a frozen credential.
    pub hit: u64,
}

/// Per-CPU working memory: loop state and the record being built.
#[repr(C)]
pub struct Scratch {
    pub walk: Walk,
    pub ev: ExecScratch,
}

/// One scratch area per CPU (`PerCpuArray` values cap at 32 KiB, so a plain array indexed
/// by `bpf_get_smp_processor_id()`; the loader sizes it to the CPU count).
#[map]
pub static EXEC_SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

#[tracepoint]
pub fn sys_enter_execve(ctx: TracePointContext) -> u32 {
    // format: filename @16, argv @24, envp @32
    let _ = handle(&ctx, 24, 32, PROBE_EXECVE);
    0
}

#[tracepoint]
pub fn sys_enter_execveat(ctx: TracePointContext) -> u32 {
    // format: fd @16, filename @24, argv @32, envp @40, flags @48
    let _ = handle(&ctx, 32, 40, PROBE_EXECVEAT);
    0
}

#[inline(always)]
fn handle(ctx: &TracePointContext, a_off: usize, e_off: usize, probe: u32) -> Option<()> {
    if !frozen::enabled() {
        return None;
    }
    // SAFETY: offsets come from the tracepoint format files; reads are checked by the helper.
    let (argv, envp) = unsafe {
        (
            ctx.read_at::<u64>(a_off).ok()?,
            ctx.read_at::<u64>(e_off).ok()?,
        )
    };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let sp = EXEC_SCRATCH.get_ptr_mut(cpu)?;
    // SAFETY: `sp` is this CPU's map value; programs on one CPU do not nest for tracepoints.
    let sc = unsafe { &mut *sp };
    sc.walk = Walk {
        phase: 0,
        argv,
        envp,
        idx: 0,
        cur: 0,
        cur_off: 0,
        str_start: 0,
        off: 0,
        hit: 0,
    };
    let mut cpu_arg = cpu;
    // SAFETY: callback is a static subprogram; ctx points to the CPU id on this stack.
    unsafe {
        bpf_loop(
            EXEC_MAX_STEPS,
            walk_step as *mut c_void,
            &mut cpu_arg as *mut u32 as *mut c_void,
            0,
        );
    }
    // SAFETY: same map value as above.
    let hit = unsafe { (*sp).walk.hit };
    if hit != 0 {
        frozen::kill(probe, hit);
        aya_log_ebpf::warn!(
            ctx,
            "SIGKILL at exec: pid {} carried a frozen credential",
            (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32
        );
    }
    Some(())
}

/// One step of the walk: read the next pointer, or the next chunk of the current string.
/// Returns 1 to stop the loop.
#[inline(never)]
unsafe extern "C" fn walk_step(_i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it: the CPU id.
    let cpu = unsafe { *(ctx as *const u32) };
    let Some(sp) = EXEC_SCRATCH.get_ptr_mut(cpu) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value.
    let sc = unsafe { &mut *sp };
    let w = &mut sc.walk;
    if w.phase >= 2 {
        return 1;
    }
    if w.cur == 0 {
        let arr = if w.phase == 0 { w.argv } else { w.envp };
        let ptr = if arr == 0 {
            0
        } else {
            // SAFETY: user pointer read, checked by the helper.
            unsafe { bpf_probe_read_user((arr + w.idx * 8) as *const u64) }.unwrap_or(0)
        };
        if ptr == 0 {
            w.phase += 1;
            w.idx = 0;
            return if w.phase >= 2 { 1 } else { 0 };
        }
        w.idx += 1;
        w.cur = ptr;
        w.cur_off = 0;
        w.str_start = w.off;
        return 0;
    }
    let data = &mut sc.ev.data;
    let src = (w.cur + w.cur_off) as *const c_void;

    if w.off >= EXEC_DATA_MAX as u64 {
        // Out of room: the rest is `exec_image`'s to check.
        return 1;
    }

    // Always a full chunk at a masked offset: the verifier sees a constant size and a
    // bounded offset; a string running past EXEC_DATA_MAX spills into the slack and is cut.
    let at = w.off & DATA_MASK;
    // SAFETY: at < EXEC_DATA_MAX and the value has EXEC_CHUNK bytes of slack after it.
    let n = unsafe {
        bpf_probe_read_user_str(
            data.as_mut_ptr().add(at as usize) as *mut c_void,
            EXEC_CHUNK as u32,
            src,
        )
    };
    if n <= 0 {
        // Unreadable (page not present): check what was read of it.
        if w.cur_off != 0 {
            data[(w.off & DATA_MASK) as usize] = 0;
            w.off += 1;
            check(w, cpu);
        }
        w.cur = 0;
        return 0;
    }
    let n = n as u64;
    let more = n == EXEC_CHUNK as u64;
    if more {
        // Maybe longer than a chunk: continue over the NUL on the next step.
        w.off += n - 1;
        w.cur_off += n - 1;
    } else {
        w.off += n;
    }
    if w.off >= EXEC_DATA_MAX as u64 {
        // Cut at the end of the data area: the head is checked, the rest is `exec_image`'s.
        w.off = EXEC_DATA_MAX as u64;
        data[EXEC_DATA_MAX - 1] = 0;
        check(w, cpu);
        return 1;
    }
    if !more {
        check(w, cpu);
        w.cur = 0;
    }
    0
}

/// Shortest credential the kernel matches (shorter values are never frozen).
const MIN_LEN: u64 = 8;

/// Checks the string just finished at `w.str_start..w.off - 1`; records a hit in `w.hit`.
/// argv: the whole argument or what follows its first '='; env: the value only.
/// Not inlined: the hash callback is then verified once, not at each of the three callers.
#[inline(never)]
fn check(w: &mut Walk, cpu: u32) {
    if w.hit != 0 || !frozen::enabled() || w.off < w.str_start + MIN_LEN + 1 {
        return;
    }
    let Some(sp) = EXEC_SCRATCH.get_ptr(cpu) else {
        return;
    };
    // SAFETY: address arithmetic only; the hash reads it with bpf_probe_read_kernel.
    let base = unsafe { (*sp).ev.data.as_ptr() } as u64;
    let start = w.str_start & DATA_MASK;
    let Some(h) = frozen::hash_span(base + start, w.off - 1 - w.str_start) else {
        return;
    };
    if w.phase == 0 && frozen::is_frozen(h.whole) {
        w.hit = h.whole;
    } else if h.has_eq && frozen::is_frozen(h.value) {
        w.hit = h.value;
    }
}
