//! Clearing and copying records without `memset`/`memcpy`. Aggregate zeroing and copies
//! compile to calls into aya-ebpf's byte-at-a-time `memset`/`memcpy` (~5 instructions a
//! byte); on the write path those calls cost more than the rest of the program. Here a
//! record is cleared in 8-byte words (volatile, so LLVM cannot fuse them back into a
//! `memset`) and copied with the kernel's own memcpy through `bpf_probe_read_kernel`.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

/// Sets `*p` to all-zero bytes. `T` must be a multiple of 8 long and valid as all zeros,
/// and `p` 8-byte aligned (records and their fields at 8-byte offsets are).
#[inline(always)]
pub fn zero<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let w = p as *mut u64;
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: in bounds of `*p` (size checked above); the caller passes it aligned.
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
        i += 1;
    }
}

/// Copies `n` bytes from kernel memory `src` (a map value or the stack) to `dst` (a ring
/// reservation or a map value) with one helper call. False if the helper refused.
#[inline(always)]
pub fn copy(dst: *mut u8, src: *const u8, n: u32) -> bool {
    // SAFETY: the caller passes `n` writable bytes at `dst` and readable bytes at `src`
    // (the verifier checks both).
    unsafe { bpf_probe_read_kernel(dst as *mut c_void, n, src as *const c_void) == 0 }
}
