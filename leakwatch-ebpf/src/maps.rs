//! The maps every family shares: the event ring and the per-probe counters. Family state
//! (scratch areas, caches) lives in the family's own module, so nothing here depends on one.
use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    helpers::generated::{bpf_ringbuf_output, bpf_ringbuf_reserve, bpf_ringbuf_submit},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use leakwatch_common::{
    is_tls_plaintext, stat_slot, RING_BYTES, STAT_COUNT, STAT_EVENTS, STAT_LOST,
};

/// Exec records (up to ~132 KiB), kill notices and connects.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Write-family records (up to ~66 KiB), in a ring of their own: a process writing faster
/// than the daemon reads must not crowd out exec records.
#[map]
pub static WRITES: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Counters at `stat_slot(probe, STAT_*)`, summed over CPUs by the loader.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
pub fn add(probe: u32, stat: u32, n: u64) {
    let Some(p) = STATS.get_ptr_mut(stat_slot(probe, stat)) else {
        return;
    };
    if is_tls_plaintext(probe) {
        // A uprobe program runs with preemption on: another thread's `SSL_write` probe can
        // run on this CPU between a load and a store, and a plain `+=` would lose its count.
        // SAFETY: this CPU's slot, 8-byte aligned map memory.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
    } else {
        // SAFETY: this CPU's slot; tracepoint programs run with preemption off and do not
        // nest on a CPU (the probe is a constant here: only one branch is kept).
        unsafe { *p += n };
    }
}

#[inline(always)]
pub fn count(probe: u32, stat: u32) {
    add(probe, stat, 1);
}

/// Copies `size` bytes at `rec` into `EVENTS`; counts the event or the loss under `probe`.
/// Wakes the reader only as `write_wakeup` says: an exec storm otherwise wakes it (and
/// switches to it) once per exec.
#[inline(always)]
pub fn emit(probe: u32, rec: *const u8, size: u64) -> bool {
    // SAFETY: no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    emit_to(&EVENTS, probe, rec, size, write_wakeup(now))
}

/// The same, into `WRITES`, with `flags` from `write_wakeup`.
#[inline(always)]
pub fn emit_write(probe: u32, rec: *const u8, size: u64, flags: u64) -> bool {
    emit_to(&WRITES, probe, rec, size, flags)
}

/// Per CPU: ktime of the last write record that woke the reader.
#[map]
static WRITE_WOKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0 non-zero: the reader of both rings has gone to sleep and wants a wakeup with the
/// next record (set by the reader, cleared by the record that wakes it).
#[map]
pub static READER_ASLEEP: Array<u32> = Array::with_max_entries(1, 0);

/// Without a request, still wake at most this often per CPU (a record committed while the
/// reader was going to sleep waits no longer).
const WAKE_EVERY_NS: u64 = 100_000_000;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// Submit flags for a record at `now` (either ring). Waking the reader costs an irq_work (a
/// self-IPI: a VM exit here, ~0.5-0.8 us inside the program), and the ring's adaptive rule
/// wakes on nearly every record when the reader keeps up. So records wake the reader only
/// when it asked to be woken (`READER_ASLEEP`: it found the ring empty and is about to
/// sleep); while it is busy it polls, and a busy writer makes no wakeups at all. Forced:
/// records before it may have gone unannounced.
#[inline(always)]
pub fn write_wakeup(now: u64) -> u64 {
    if let Some(a) = READER_ASLEEP.get_ptr_mut(0) {
        // SAFETY: map value; a racing CPU clearing it too costs one extra wakeup.
        unsafe {
            if core::ptr::read_volatile(a) != 0 {
                core::ptr::write_volatile(a, 0);
                return BPF_RB_FORCE_WAKEUP;
            }
        }
    }
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
    reserve::<N>(&WRITES, probe)
}

/// Reserves `N` bytes in `EVENTS`; counts the loss under `probe` when the ring is full.
#[inline(always)]
pub fn reserve_event<const N: usize>(probe: u32) -> Option<*mut u8> {
    reserve::<N>(&EVENTS, probe)
}

/// Reserves `N` bytes in `EVENTS` for a record that stands for no call of its own (see
/// `connect::forget`): nothing is counted, so every probe's events, losses and folds still
/// add up to its calls.
#[inline(always)]
pub fn reserve_event_uncounted<const N: usize>() -> Option<*mut u8> {
    reserve_in::<N>(&EVENTS)
}

/// Submits a reservation from `reserve_event_uncounted`.
#[inline(always)]
pub fn submit_uncounted(p: *mut u8, flags: u64) {
    // SAFETY: `p` is a live reservation.
    unsafe { bpf_ringbuf_submit(p as *mut c_void, flags) };
}

#[inline(always)]
fn reserve<const N: usize>(ring: &RingBuf, probe: u32) -> Option<*mut u8> {
    let p = reserve_in::<N>(ring);
    if p.is_none() {
        count(probe, STAT_LOST);
    }
    p
}

#[inline(always)]
fn reserve_in<const N: usize>(ring: &RingBuf) -> Option<*mut u8> {
    // SAFETY: constant size; the helper returns null when the ring is full.
    let p = unsafe { bpf_ringbuf_reserve(ring as *const _ as *mut c_void, N as u64, 0) };
    (!p.is_null()).then_some(p as *mut u8)
}

/// Submits a reservation from `reserve_write` or `reserve_event` (the helper knows its
/// ring); counts the event.
#[inline(always)]
pub fn submit(probe: u32, p: *mut u8, flags: u64) {
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

/// `BPF_F_NO_PREALLOC` (uapi `bpf.h`): a hash map whose entries are allocated as inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;
