//! The maps every family shares: the event ring and the per-probe counters. Family state
//! (scratch areas, caches) lives in the family's own module, so nothing here depends on one.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_ringbuf_output,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use leakwatch_common::{stat_slot, STAT_COUNT, STAT_EVENTS, STAT_LOST};

/// Exec records (up to ~132 KiB), kill notices and connects.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// Write-family records (up to ~66 KiB), in a ring of their own: a process writing faster
/// than the daemon reads must not crowd out exec records.
#[map]
pub static WRITES: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// Counters at `stat_slot(probe, STAT_*)`, summed over CPUs by the loader.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
pub fn add(probe: u32, stat: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(stat_slot(probe, stat)) {
        // SAFETY: this CPU's slot; a tracepoint program does not nest with itself on a CPU.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(probe: u32, stat: u32) {
    add(probe, stat, 1);
}

/// Copies `size` bytes at `rec` into `EVENTS`; counts the event or the loss under `probe`.
#[inline(always)]
pub fn emit(probe: u32, rec: *const u8, size: u64) -> bool {
    emit_to(&EVENTS, probe, rec, size)
}

/// The same, into `WRITES`.
#[inline(always)]
pub fn emit_write(probe: u32, rec: *const u8, size: u64) -> bool {
    emit_to(&WRITES, probe, rec, size)
}

#[inline(always)]
fn emit_to(ring: &RingBuf, probe: u32, rec: *const u8, size: u64) -> bool {
    // SAFETY: the caller passes a pointer to at least `size` readable bytes (the verifier
    // checks the bound against the map value or stack object).
    let ret =
        unsafe { bpf_ringbuf_output(ring as *const _ as *mut c_void, rec as *mut c_void, size, 0) };
    count(probe, if ret < 0 { STAT_LOST } else { STAT_EVENTS });
    ret >= 0
}
