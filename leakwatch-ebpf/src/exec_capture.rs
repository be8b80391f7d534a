//! The exec record, built at `sched:sched_process_exec` from the new image: the kernel has
//! just copied every argv and envp string into its argument area (`mm->arg_start..arg_end`)
//! and environment area (`env_start..env_end`), contiguous, NUL-separated, every page
//! present. So the capture is a few 4 KiB reads (30 KiB: 8 helper calls, ~3 µs) where
//! walking the caller's pointers at `sys_enter_execve` cost two helper calls per string
//! (46 µs for a 200-variable environment on this host). Only execs that run are recorded:
//! a failed exec made no new image (its caller still holds the strings); execs the kernel
//! starts itself (`call_usermodehelper`: core_pattern pipes, modprobe) are recorded too.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_smp_processor_id,
        generated::{bpf_loop, bpf_probe_read_kernel_str, bpf_probe_read_user},
    },
    macros::map,
    maps::PerCpuArray,
    programs::TracePointContext,
    EbpfContext,
};
use leakwatch_common::*;

use crate::{exec::EXEC_SCRATCH, header, maps};

const DATA_MASK: u64 = (EXEC_DATA_MAX - 1) as u64;
const CHUNK: u64 = EXEC_CHUNK as u64;

/// Copy state, in a map value so the verifier sees unknown scalars and the callback's
/// states converge at once.
#[repr(C)]
struct Copy {
    /// Next user address to copy and the end of the current area.
    pos: u64,
    end: u64,
    env_start: u64,
    env_end: u64,
    /// 0 = argument area, 1 = environment area, 2 = done.
    phase: u64,
    /// Write offset in `data`; where the environment starts in it.
    off: u64,
    env_off: u64,
    /// Bytes of the areas not copied (no room, or unreadable).
    dropped: u64,
    cpu: u64,
}

#[map]
static EXEC_COPY: PerCpuArray<Copy> = PerCpuArray::with_max_entries(1, 0);

/// Builds and sends the exec record of the current task's new image from its `areas`
/// (`task::arg_env_areas`); `killed`: the frozen check has just sent it SIGKILL.
#[inline(always)]
pub fn capture(ctx: &TracePointContext, areas: Option<[u64; 4]>, killed: bool) -> Option<()> {
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let sp = EXEC_SCRATCH.get_ptr_mut(cpu)?;
    // SAFETY: this CPU's value; tracepoint programs do not nest on one CPU.
    let s = unsafe { &mut (*sp).ev };
    header::fill(&mut s.hdr.hdr, EVENT_EXEC, PROBE_EXEC_IMAGE);
    if killed {
        s.hdr.hdr.flags |= EXEC_F_KILLED;
    }
    // format: __data_loc char[] filename @8 (offset in the low 16 bits).
    // SAFETY: offset from the tracepoint format file; read checked by the helper.
    let loc = unsafe { ctx.read_at::<u32>(8) }.unwrap_or(0);
    // SAFETY: destination is a chunk inside the map value; source checked by the helper.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            s.data.as_mut_ptr() as *mut c_void,
            EXEC_CHUNK as u32,
            (ctx.as_ptr() as u64 + u64::from(loc & 0xffff)) as *const c_void,
        )
    };
    let name_len = if n > 0 {
        n as u64
    } else {
        s.data[0] = 0;
        s.hdr.hdr.flags |= EXEC_F_NO_FILENAME;
        1
    };

    let c = EXEC_COPY.get_ptr_mut(0)?;
    // SAFETY: this CPU's value.
    let w = unsafe { &mut *c };
    w.phase = 0;
    w.off = name_len;
    w.env_off = name_len;
    w.dropped = 0;
    w.cpu = u64::from(cpu);
    match areas {
        Some([a0, a1, e0, e1]) if a0 <= a1 && e0 <= e1 => {
            (w.pos, w.end, w.env_start, w.env_end) = (a0, a1, e0, e1);
            // SAFETY: static callback that ignores its context.
            unsafe {
                bpf_loop(
                    EXEC_MAX_STEPS,
                    step as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                )
            };
        }
        _ => s.hdr.hdr.flags |= EXEC_F_COUNT_INCOMPLETE,
    }
    // SAFETY: as above.
    let w = unsafe { &*c };
    let h = &mut s.hdr;
    if w.dropped != 0 || w.phase < 2 {
        h.hdr.flags |= EXEC_F_COUNT_INCOMPLETE;
    }
    h.bytes_dropped = w.dropped;
    let used = if w.off > EXEC_DATA_MAX as u64 {
        EXEC_DATA_MAX as u64
    } else {
        w.off
    };
    h.data_len = used as u32;
    h.arg_bytes = (w.env_off - name_len) as u32;
    let size = core::mem::size_of::<ExecHeader>() as u64 + used;
    maps::emit(PROBE_EXEC_IMAGE, s as *const _ as *const u8, size);
    Some(())
}

/// One step: switch to the environment area, or copy the next chunk of the current one.
/// Returns 1 to stop the loop.
#[inline(never)]
unsafe extern "C" fn step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(c) = EXEC_COPY.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value.
    let w = unsafe { &mut *c };
    if w.phase >= 2 {
        return 1;
    }
    if w.pos >= w.end {
        if w.phase == 0 {
            w.phase = 1;
            w.env_off = w.off;
            w.pos = w.env_start;
            w.end = w.env_end;
            return 0;
        }
        w.phase = 2;
        return 1;
    }
    let room = (EXEC_DATA_MAX as u64).saturating_sub(w.off);
    if room == 0 {
        // Full: count the rest of both areas as dropped.
        w.dropped += w.end - w.pos;
        if w.phase == 0 {
            w.env_off = w.off;
            w.dropped += w.env_end - w.env_start;
        }
        w.phase = 2;
        return 1;
    }
    let Some(sp) = EXEC_SCRATCH.get_ptr_mut(w.cpu as u32) else {
        return 1;
    };
    let left = w.end - w.pos;
    let mut n = if left < CHUNK { left } else { CHUNK };
    if n > room {
        n = room;
    }
    let at = w.off & DATA_MASK;
    // SAFETY: at < EXEC_DATA_MAX, n <= EXEC_CHUNK and the value has EXEC_CHUNK bytes of
    // slack after EXEC_DATA_MAX; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            (*sp).ev.data.as_mut_ptr().add(at as usize) as *mut c_void,
            n as u32,
            w.pos as *const c_void,
        )
    };
    if ret < 0 {
        // Unreadable (not what the kernel leaves behind): skip this chunk, count it.
        w.dropped += n;
    } else {
        w.off += n;
    }
    w.pos += n;
    0
}
