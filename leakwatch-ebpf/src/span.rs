//! Several fields of one kernel object with one helper call. Each `bpf_probe_read_kernel`
//! is a call whose returns go through this kernel's return thunks (about 24 ns a read,
//! measured on the write path here); a span copies the bytes from the lowest field to the
//! end of the highest into a per-CPU buffer, and the fields are loads from it.
use core::ffi::c_void;

use aya_ebpf::{helpers::generated::bpf_probe_read_kernel, macros::map, maps::PerCpuArray};

use crate::{fdinfo::LANE_TRACEPOINT, task::kread};

/// Longest span; fields outside it (another kernel's layout) are read one by one.
const SPAN_MAX: u64 = 128;

/// Per CPU: `Span` buffers. Two, so a caller can hold one span while reading another.
#[map]
static SPANS: PerCpuArray<[u64; SPAN_MAX as usize / 8]> = PerCpuArray::with_max_entries(2, 0);

/// The bytes of the object at `base` from offset `lo` on (`len` of them; 0 when unread).
pub struct Span {
    base: u64,
    lo: u64,
    len: u64,
    buf: *const u8,
}

impl Span {
    /// Reads the bytes of `base` covering `fields` (offsets, each of a field of at most 8
    /// bytes) into buffer `slot` (0 or 1). A span too long, a failed read, or a caller that
    /// may be preempted (`fdinfo::LANE_UPROBE`: the buffers are per CPU) leaves every field
    /// to its own read in `get`.
    #[inline(always)]
    pub fn read(lane: u32, slot: u32, base: u64, fields: &[u64]) -> Span {
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for &f in fields {
            if f < lo {
                lo = f;
            }
            if f + 8 > hi {
                hi = f + 8;
            }
        }
        lo &= !7;
        let mut s = Span {
            base,
            lo,
            len: 0,
            buf: core::ptr::null(),
        };
        let len = hi.wrapping_sub(lo);
        let Some(p) = SPANS.get_ptr_mut(slot) else {
            return s;
        };
        if lane != LANE_TRACEPOINT || base == 0 || len == 0 || len > SPAN_MAX {
            return s;
        }
        // SAFETY: 0 < len <= SPAN_MAX, the buffer's size; the helper checks the source.
        let ret = unsafe {
            bpf_probe_read_kernel(p as *mut c_void, len as u32, (base + lo) as *const c_void)
        };
        if ret == 0 {
            s.len = len;
            s.buf = p as *const u8;
        }
        s
    }

    /// The `T` at offset `off` of the object: from the span when it covers it, else read.
    #[inline(always)]
    pub fn get<T: Copy + Default>(&self, off: u64) -> T {
        let size = core::mem::size_of::<T>() as u64;
        let d = off.wrapping_sub(self.lo);
        if !self.buf.is_null() && d + size <= self.len && d <= SPAN_MAX - size {
            // SAFETY: d + size <= len <= SPAN_MAX bytes of this CPU's buffer, which the
            // read filled.
            unsafe { core::ptr::read_unaligned(self.buf.add(d as usize) as *const T) }
        } else {
            kread(self.base + off)
        }
    }
}
