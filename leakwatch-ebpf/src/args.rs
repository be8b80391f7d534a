//! Syscall tracepoint arguments, loaded straight from the tracepoint record: `read_at`
//! would be a `bpf_probe_read` helper call, and every hooked syscall on the host, watched
//! or not, pays for the arguments read before the scope check.
use aya_ebpf::{programs::TracePointContext, EbpfContext};

/// The 8-byte field at `off` (from the event's format file).
#[inline(always)]
pub fn arg(ctx: &TracePointContext, off: usize) -> u64 {
    // SAFETY: tracepoint programs may load from their context; offsets are constants from
    // the format files, within the record (the verifier checks them).
    unsafe { core::ptr::read(ctx.as_ptr().add(off) as *const u64) }
}

/// The byte at `off` (a `bool` or `u8` field).
#[inline(always)]
pub fn byte(ctx: &TracePointContext, off: usize) -> u8 {
    // SAFETY: as for `arg`.
    unsafe { core::ptr::read(ctx.as_ptr().add(off) as *const u8) }
}
