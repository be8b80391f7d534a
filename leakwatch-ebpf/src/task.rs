//! Facts about the current task that need `task_struct` field offsets. Rust has no CO-RE
//! here, so the loader reads the offsets from /sys/kernel/btf/vmlinux and sets these globals.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_GROUP_LEADER: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_COMM: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_FILES: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_MM: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_SIGNAL: u64 = 0;
#[unsafe(no_mangle)]
static OFF_SIGNAL_LIVE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_ARG_START: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_ARG_END: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_ENV_START: u64 = 0;
#[unsafe(no_mangle)]
static OFF_MM_ENV_END: u64 = 0;

/// Reads a loader-set global (volatile: the compiler must not fold the 0 initialiser).
#[inline(always)]
pub fn global(g: &'static u64) -> u64 {
    // SAFETY: plain integer global.
    unsafe { core::ptr::read_volatile(g) }
}

/// Reads a `T` at a kernel address; 0 / default on failure.
#[inline(always)]
pub fn kread<T: Copy + Default>(addr: u64) -> T {
    // SAFETY: the helper checks the address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn current() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_current_task() }
}

/// `current->signal->live`: the thread group's threads that have not yet begun to exit;
/// None when the offsets are unknown or a read failed.
#[inline(always)]
pub fn live_threads() -> Option<u32> {
    let (off_signal, off_live) = (global(&OFF_TASK_SIGNAL), global(&OFF_SIGNAL_LIVE));
    if off_signal == 0 {
        return None;
    }
    let signal: u64 = kread(current() + off_signal);
    if signal == 0 {
        return None;
    }
    // SAFETY: the helper checks the address.
    unsafe { bpf_probe_read_kernel((signal + off_live) as *const u32) }.ok()
}

/// Thread-group id of the current task's parent, or 0 when the offsets are unknown.
#[inline(always)]
pub fn ppid() -> u32 {
    let (off_parent, off_tgid) = (global(&OFF_TASK_REAL_PARENT), global(&OFF_TASK_TGID));
    if off_parent == 0 || off_tgid == 0 {
        return 0;
    }
    let parent: u64 = kread(current() + off_parent);
    if parent == 0 {
        return 0;
    }
    kread(parent + off_tgid)
}

/// Reads the thread-group leader's `comm` into `dst` (threads rename themselves; the
/// process name is the leader's). False when the offsets are unknown or the read failed.
#[inline(always)]
pub fn leader_comm(dst: &mut [u8; 16]) -> bool {
    let (off_leader, off_comm) = (global(&OFF_TASK_GROUP_LEADER), global(&OFF_TASK_COMM));
    if off_leader == 0 || off_comm == 0 {
        return false;
    }
    let leader: u64 = kread(current() + off_leader);
    leader != 0 && crate::mem::copy(dst.as_mut_ptr(), (leader + off_comm) as *const u8, 16)
}

/// `current->files`, or 0.
#[inline(always)]
pub fn files() -> u64 {
    let off = global(&OFF_TASK_FILES);
    if off == 0 {
        return 0;
    }
    kread(current() + off)
}

/// The current task's argument and environment areas in its address space,
/// `[arg_start, arg_end, env_start, env_end]` from `current->mm`; `None` when the task has
/// no mm or the offsets are unknown.
#[inline(always)]
pub fn arg_env_areas() -> Option<[u64; 4]> {
    let off_mm = global(&OFF_TASK_MM);
    let offs = [
        global(&OFF_MM_ARG_START),
        global(&OFF_MM_ARG_END),
        global(&OFF_MM_ENV_START),
        global(&OFF_MM_ENV_END),
    ];
    if off_mm == 0 || offs.contains(&0) {
        return None;
    }
    let mm: u64 = kread(current() + off_mm);
    if mm == 0 {
        return None;
    }
    Some([
        kread(mm + offs[0]),
        kread(mm + offs[1]),
        kread(mm + offs[2]),
        kread(mm + offs[3]),
    ])
}
