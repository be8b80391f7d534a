//! The maps every family shares: the event ring and the per-probe counters. Family state
//! (scratch areas, caches) lives in the family's own module, so nothing here depends on one.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_ringbuf_output, bpf_ringbuf_reserve, bpf_ringbuf_submit},
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
    emit_to(&EVENTS, probe, rec, size, 0)
}

/// The same, into `WRITES`, with `flags` from `write_wakeup`.
#[inline(always)]
pub fn emit_write(probe: u32, rec: *const u8, size: u64, flags: u64) -> bool {
    emit_to(&WRITES, probe, rec, size, flags)
}

/// Per CPU: ktime of the last write record that woke the reader.
#[map]
static WRITE_WOKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// At most one wakeup per CPU per this many ns for write records.
const WAKE_EVERY_NS: u64 = 1_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags for a write record at `now`: waking the reader costs an irq_work (a
/// self-IPI, ~0.5-0.8 us inside the program on this VM) and the ring's adaptive rule wakes
/// on nearly every record when the reader keeps up. So wake (forced: earlier records may
/// have been left unannounced) at most every `WAKE_EVERY_NS` per CPU; the reader polls
/// again soon after a busy turn, so nothing waits longer than that for it.
#[inline(always)]
pub fn write_wakeup(now: u64) -> u64 {
    let Some(p) = WRITE_WOKE.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; tracepoint programs do not nest on one CPU.
    unsafe {
        if now.wrapping_sub(*p) >= WAKE_EVERY_NS {
            *p = now;
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        }
    }
}

/// Reserves `N` bytes in `WRITES`; counts the loss under `probe` when the ring is full.
#[inline(always)]
pub fn reserve_write<const N: usize>(probe: u32) -> Option<*mut u8> {
    // SAFETY: constant size; the helper returns null when the ring is full.
    let p = unsafe { bpf_ringbuf_reserve(&WRITES as *const _ as *mut c_void, N as u64, 0) };
    if p.is_null() {
        count(probe, STAT_LOST);
        return None;
    }
    Some(p as *mut u8)
}

/// Submits a reservation from `reserve_write`; counts the event.
#[inline(always)]
pub fn submit_write(probe: u32, p: *mut u8, flags: u64) {
    // SAFETY: `p` is a live reservation.
    unsafe { bpf_ringbuf_submit(p as *mut c_void, flags) };
    count(probe, STAT_EVENTS);
}

#[inline(always)]
fn emit_to(ring: &RingBuf, probe: u32, rec: *const u8, size: u64, flags: u64) -> bool {
    // SAFETY: the caller passes a pointer to at least `size` readable bytes (the verifier
    // checks the bound against the map value or stack object).
    let ret = unsafe {
        bpf_ringbuf_output(
            ring as *const _ as *mut c_void,
            rec as *mut c_void,
            size,
            flags,
        )
    };
    count(probe, if ret < 0 { STAT_LOST } else { STAT_EVENTS });
    ret >= 0
}
