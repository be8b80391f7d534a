//! Kernel-side freeze: the frozen-credential set, a seeded FNV-1a over any span of kernel
//! memory (computed exactly as the daemon does), and the kill that enforces a match.
//! Costs nothing while `FROZEN` is empty (`enabled()` is false).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_send_signal,
        generated::{bpf_loop, bpf_probe_read_kernel},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use leakwatch_common::*;

use crate::{header, maps};

/// Frozen credentials: keyed 64-bit hash of the exact secret bytes -> secret length.
#[map]
pub static FROZEN: HashMap<u64, u32> = HashMap::with_max_entries(FROZEN_MAX, 0);

/// Slot 0 is non-zero while `FROZEN` holds anything: lets callers skip hashing entirely.
#[map]
pub static FROZEN_ON: Array<u32> = Array::with_max_entries(1, 0);

/// Per-host seed of the candidate hash, set by the loader.
#[unsafe(no_mangle)]
static HASH_SEED: u64 = 0;

/// The candidate hash's seed (the FNV-1a start value of every string).
#[inline(always)]
pub fn seed() -> u64 {
    // SAFETY: HASH_SEED is a plain global set at load time.
    unsafe { core::ptr::read_volatile(&HASH_SEED) }
}

/// Loop state of `hash_span`: in a map value so the verifier sees unknown scalars and the
/// callback's states converge at once.
#[repr(C)]
struct HashState {
    pos: u64,
    end: u64,
    whole: u64,
    value: u64,
    seen_eq: u64,
}

#[map]
static HASH_STATE: PerCpuArray<HashState> = PerCpuArray::with_max_entries(1, 0);

const BLOCK: u64 = 64;

/// Hashes of one candidate string.
pub struct SpanHash {
    /// The whole string.
    pub whole: u64,
    /// What follows its first '=' (meaningful only when `has_eq`).
    pub value: u64,
    pub has_eq: bool,
}

#[inline(always)]
pub fn enabled() -> bool {
    matches!(FROZEN_ON.get(0), Some(on) if *on != 0)
}

#[inline(always)]
pub fn is_frozen(h: u64) -> bool {
    FROZEN.get_ptr(&h).is_some()
}

/// Longest span hashed. The bound also lets a caller pass a map-value pointer: the
/// verifier allows pointer + bounded scalar only.
pub const SPAN_MAX: u64 = 1 << 20;

/// Hashes `len` bytes of kernel memory at `addr`, 64 bytes per `bpf_loop` step. `None` if
/// any block is unreadable or the span is longer than `SPAN_MAX`.
#[inline(always)]
pub fn hash_span(addr: u64, len: u64) -> Option<SpanHash> {
    if len > SPAN_MAX {
        return None;
    }
    let sp = HASH_STATE.get_ptr_mut(0)?;
    // SAFETY: HASH_SEED is a plain global set at load time.
    let seed = unsafe { core::ptr::read_volatile(&HASH_SEED) };
    // SAFETY: this CPU's value.
    unsafe {
        *sp = HashState {
            pos: addr,
            end: addr + len,
            whole: seed,
            value: seed,
            seen_eq: 0,
        };
    }
    let blocks = len.div_ceil(BLOCK) as u32;
    // SAFETY: static callback that ignores its context.
    unsafe { bpf_loop(blocks, hash_block as *mut c_void, core::ptr::null_mut(), 0) };
    // SAFETY: as above.
    let h = unsafe { &*sp };
    if h.pos < h.end {
        return None;
    }
    Some(SpanHash {
        whole: h.whole,
        value: h.value,
        has_eq: h.seen_eq != 0,
    })
}

#[inline(never)]
unsafe extern "C" fn hash_block(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(sp) = HASH_STATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value.
    let h = unsafe { &mut *sp };
    if h.pos >= h.end {
        return 1;
    }
    let left = h.end - h.pos;
    let n = if left < BLOCK { left } else { BLOCK };
    let mut buf = [0u8; BLOCK as usize];
    // SAFETY: n <= 64 = buf length; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_kernel(
            buf.as_mut_ptr() as *mut c_void,
            n as u32,
            h.pos as *const c_void,
        )
    };
    if ret < 0 {
        return 1;
    }
    let (mut whole, mut value, mut seen) = (h.whole, h.value, h.seen_eq);
    // Constant trip count, masked index: the verifier cannot relate `n` to the buffer.
    for i in 0..BLOCK as usize {
        if i as u64 >= n {
            break;
        }
        let b = buf[i & (BLOCK as usize - 1)];
        whole = fnv1a_step(whole, b);
        // Branch-free, so the verifier walks one state per byte: `value` advances only
        // after the first '=' (which itself is not hashed).
        let keep = 0u64.wrapping_sub(seen);
        value = (fnv1a_step(value, b) & keep) | (value & !keep);
        seen |= ((b ^ b'=') as u64).wrapping_sub(1) >> 63;
    }
    h.whole = whole;
    h.value = value;
    h.seen_eq = seen;
    h.pos += n;
    0
}

/// SIGKILLs the current task (pending before the new image runs) and reports it if the ring
/// has room; the kill never depends on ring space.
#[inline(always)]
pub fn kill(exec_probe: u32, hash: u64) {
    // SAFETY: helper allowed in tracepoints.
    unsafe { bpf_send_signal(9) };
    maps::count(PROBE_ENFORCE, STAT_KILLS);
    let mut ev = EnforceEvent {
        hash,
        exec_probe,
        ..Default::default()
    };
    header::fill(&mut ev.hdr, EVENT_ENFORCE, PROBE_ENFORCE);
    maps::emit(
        PROBE_ENFORCE,
        &ev as *const _ as *const u8,
        core::mem::size_of::<EnforceEvent>() as u64,
    );
}
