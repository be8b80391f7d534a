//! Maps shared by the kernel programs. Sizes here are defaults; the loader resizes the
//! per-CPU scratch array to the number of possible CPUs.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use leakwatch_common::{ExecScratch, FROZEN_MAX, STAT_COUNT};

use crate::{enforce::Hash, exec::Walk};

/// Exec records (variable size, up to ~132 KiB each) and enforcement notices.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// One exec scratch area per CPU. `PerCpuArray` values are capped at 32 KiB, so this is a
/// plain array indexed by `bpf_get_smp_processor_id()`.
#[map]
pub static SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

/// Per-CPU working memory of the exec probe: loop states and the record being built.
#[repr(C)]
pub struct Scratch {
    pub walk: Walk,
    pub hash: Hash,
    pub ev: ExecScratch,
}

/// Kernel counters (events, lost records, kills), indexed by `STAT_*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Frozen credentials: keyed 64-bit hash of the exact secret bytes -> secret length.
#[map]
pub static FROZEN: HashMap<u64, u32> = HashMap::with_max_entries(FROZEN_MAX, 0);

#[inline(always)]
pub fn count(slot: u32) {
    if let Some(p) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *p += 1 };
    }
}

/// Slot 0 is non-zero while `FROZEN` holds anything: lets `enforce` skip hashing entirely.
#[map]
pub static FROZEN_ON: Array<u32> = Array::with_max_entries(1, 0);
