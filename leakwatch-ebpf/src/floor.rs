//! Benchmark floor: a bare counter to attach to the write tracepoints, so the cost of a real
//! probe can be compared with the cheapest possible program at the same hook. Loaded only by
//! `load_floor`, never by the daemon.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
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
