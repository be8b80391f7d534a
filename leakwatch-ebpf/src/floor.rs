//! Benchmark floor: a bare counter to attach to the daemon's tracepoints, so the cost of a real
//! probe can be compared with the cheapest possible program at the same hook. Loaded only by
//! `load_floor`, never by the daemon.
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
    EbpfContext,
};

#[map]
static FLOOR_CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint]
pub fn floor(_ctx: TracePointContext) -> u32 {
    if let Some(p) = FLOOR_CALLS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
    0
}

/// The same counter as an entry uprobe, for the TLS probes' floor (the cost of the traps
/// themselves: breakpoint, single step of the displaced instruction).
#[uprobe]
pub fn floor_uprobe(_ctx: ProbeContext) -> u32 {
    count();
    0
}

/// And as a return probe (the return address hijacked and the trampoline taken).
#[uretprobe]
pub fn floor_uretprobe(_ctx: RetProbeContext) -> u32 {
    count();
    0
}

/// Syscall number -> bit 1: watched at entry, bit 2: at exit (the raw variants' filter).
#[map]
static FLOOR_IDS: Array<u32> = Array::with_max_entries(FLOOR_NR_MAX, 0);
/// Syscall number -> the program for its entry (the dispatcher variant).
#[map]
static FLOOR_JMP_ENTER: ProgramArray = ProgramArray::with_max_entries(FLOOR_NR_MAX, 0);
/// The same for its exit.
#[map]
static FLOOR_JMP_EXIT: ProgramArray = ProgramArray::with_max_entries(FLOOR_NR_MAX, 0);

const FLOOR_NR_MAX: u32 = 1024;
/// `offsetof(struct pt_regs, orig_ax)` on x86_64: the syscall number at `sys_exit`.
const PT_REGS_ORIG_AX: u64 = 120;

// The raw variants: the same hooks as `floor` taken from the `sys_enter` / `sys_exit` raw
// tracepoints that every syscall passes, as a daemon without per-syscall tracepoints would
// (their detach is cheap; each per-syscall one costs an RCU grace period or two). The bench
// compares what each costs a watched and an unwatched syscall.

fn count() {
    if let Some(p) = FLOOR_CALLS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { *p += 1 };
    }
}

/// The raw tracepoint's second argument: the syscall number at `sys_enter`, the return
/// value at `sys_exit`.
fn arg1(ctx: &RawTracePointContext) -> u64 {
    // SAFETY: raw tracepoint context: an array of the tracepoint's u64 arguments.
    unsafe { *(ctx.as_ptr() as *const u64).add(1) }
}

/// The syscall number at `sys_exit`, from the registers (first argument).
fn exit_nr(ctx: &RawTracePointContext) -> u32 {
    // SAFETY: as in `arg1`; the helper checks the kernel address.
    unsafe {
        let regs = *(ctx.as_ptr() as *const u64);
        bpf_probe_read_kernel((regs + PT_REGS_ORIG_AX) as *const u64).unwrap_or(u64::MAX) as u32
    }
}

fn watched(nr: u32, bit: u32) -> bool {
    FLOOR_IDS.get(nr).is_some_and(|v| *v & bit != 0)
}

/// Filter variant, entry: counts when the syscall is watched.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_raw_enter(ctx: RawTracePointContext) -> i32 {
    if watched(arg1(&ctx) as u32, 1) {
        count();
    }
    0
}

/// Filter variant, exit.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_raw_exit(ctx: RawTracePointContext) -> i32 {
    if watched(exit_nr(&ctx), 2) {
        count();
    }
    0
}

/// Dispatcher variant, entry: a tail call to the syscall's program, if it has one.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_disp_enter(ctx: RawTracePointContext) -> i32 {
    // SAFETY: an absent slot returns, nothing else happens.
    let _ = unsafe { FLOOR_JMP_ENTER.tail_call(&ctx, arg1(&ctx) as u32) };
    0
}

/// Dispatcher variant, exit.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_disp_exit(ctx: RawTracePointContext) -> i32 {
    // SAFETY: as above.
    let _ = unsafe { FLOOR_JMP_EXIT.tail_call(&ctx, exit_nr(&ctx)) };
    0
}

/// A bare counter as a raw tracepoint program: the dispatcher's target, and the raw
/// variants' probe on the non-syscall tracepoints (sched, io_uring).
#[raw_tracepoint]
pub fn floor_raw(_ctx: RawTracePointContext) -> i32 {
    count();
    0
}
