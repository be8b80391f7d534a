//! The per-CPU record buffers of the write probes and the payload copy into it: one user
//! buffer, or iovecs (writev, sendmsg, sendmmsg messages) walked with `bpf_loop`, capped,
//! with everything cut counted in `Walk`.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_user},
    macros::map,
    maps::Array,
};
use leakwatch_common::*;

/// iovec walk state (in the map value, so the callback's verifier states converge).
#[repr(C)]
pub struct Walk {
    /// Current message's iovec array, its length, next index.
    pub iov: u64,
    pub iovlen: u64,
    pub idx: u64,
    /// sendmmsg: message array, messages to walk, next message.
    pub mmsg: u64,
    pub msgs: u64,
    pub msg_idx: u64,
    /// iovecs copied so far (up to WRITE_IOV_MAX).
    pub walked: u64,
    /// Payload bytes copied; cap; where the payload starts in `buf` (after the path).
    pub off: u64,
    pub cap: u64,
    pub base: u64,
    pub total: u64,
    pub dropped: u64,
    pub iov_dropped: u64,
    pub truncated: u64,
}

impl Walk {
    /// Starts a walk: nothing copied, `cap` bytes allowed, payload at `base` in `buf`.
    /// Cleared word by word (see `mem`): a struct literal here costs a byte-wise memset.
    #[inline(always)]
    pub fn reset(&mut self, cap: u64, base: u64) {
        crate::mem::zero(self as *mut Walk);
        self.cap = cap;
        self.base = base;
    }
}

const BUF: usize = WRITE_PATH_MAX + 2 * WRITE_DATA_MAX;

/// What a write's record is built in, apart from its bytes. The tracepoints' is at the
/// head of their `Scratch`; the TLS uprobe has one per thread (`tls::TLS_THREADS`): a uprobe program
/// can be preempted, and a tracepoint program run meanwhile on its CPU must not write over
/// its record.
#[repr(C)]
pub struct Head {
    /// What `LAST_FILE` is to remember for the fd of the current call, when it is new.
    pub known: crate::fdinfo::Known,
    pub walk: Walk,
    /// Room to build a new `runs::RUNS` entry in.
    pub run: RefRun,
    /// The record: sent as `rec` and the first bytes of `buf` in one piece.
    pub rec: WriteHeader,
}

/// The tracepoints' per-CPU working memory; `head.rec` and `buf` are contiguous, so the
/// record is emitted from `rec` with one `bpf_ringbuf_output` of header + path + data bytes.
#[repr(C)]
pub struct Scratch {
    pub head: Head,
    /// Path, then payload. Sized for a payload starting anywhere up to WRITE_PATH_MAX +
    /// WRITE_DATA_MAX (the verifier cannot relate offset and length).
    pub buf: [u8; BUF],
}

/// Indexed by CPU id; the loader sizes it to the CPU count.
#[map]
pub static WRITE_SCRATCH: Array<Scratch> = Array::with_max_entries(1, 0);

/// Steps of the iovec walk: iovecs beyond WRITE_IOV_MAX are still visited to count their
/// bytes (UIO_MAXIOV = 1024), plus one step per sendmmsg message.
const WALK_STEPS: u32 = 1024 + WRITE_MMSG_MAX;
const IOVEC: u64 = 16;
/// `struct mmsghdr`: user_msghdr (56) + msg_len, padded.
const MMSGHDR: u64 = 64;

/// `struct user_msghdr` fields we use.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MsgHdr {
    pub name: u64,
    pub namelen: u64,
    pub iov: u64,
    pub iovlen: u64,
}

#[inline(always)]
pub fn read_msghdr(addr: u64) -> Option<MsgHdr> {
    let mut m = MsgHdr::default();
    // SAFETY: 32 bytes into a 32-byte stack object; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            &mut m as *mut _ as *mut c_void,
            core::mem::size_of::<MsgHdr>() as u32,
            addr as *const c_void,
        )
    };
    if ret < 0 {
        return None;
    }
    m.namelen &= 0xffff_ffff;
    Some(m)
}

/// Appends up to `len` bytes at user address `src` to the payload, counting what is cut.
#[inline(always)]
pub fn copy_seg(sc: &mut Scratch, src: u64, len: u64) {
    let w = &mut sc.head.walk;
    w.total += len;
    let room = if w.cap > w.off { w.cap - w.off } else { 0 };
    let n = if len < room { len } else { room };
    if n < len {
        w.dropped += len - n;
        w.truncated = 1;
    }
    if n == 0 {
        return;
    }
    let pos = w.base + w.off;
    if pos > (WRITE_PATH_MAX + WRITE_DATA_MAX) as u64 || n > WRITE_DATA_MAX as u64 {
        w.dropped += n;
        w.truncated = 1;
        return;
    }
    // SAFETY: pos + n <= BUF (bounds checked above); the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            sc.buf.as_mut_ptr().add(pos as usize) as *mut c_void,
            n as u32,
            src as *const c_void,
        )
    };
    let w = &mut sc.head.walk;
    if ret < 0 {
        // Unreadable (page not present): the bytes are lost, not silently.
        w.dropped += n;
        w.truncated = 1;
    } else {
        w.off += n;
    }
}

/// Walks the iovecs (and, for sendmmsg, the following messages) with `bpf_loop`.
#[inline(always)]
pub fn walk(sc: &mut Scratch, cpu: u32, iov: u64, iovlen: u64, mmsg: u64, msgs: u64) {
    let w = &mut sc.head.walk;
    w.iov = iov;
    w.iovlen = iovlen;
    w.mmsg = mmsg;
    w.msgs = msgs;
    w.msg_idx = 1;
    let mut cpu_arg = cpu;
    // SAFETY: static callback; ctx is the CPU id on this stack.
    unsafe {
        bpf_loop(
            WALK_STEPS,
            walk_step as *mut c_void,
            &mut cpu_arg as *mut u32 as *mut c_void,
            0,
        )
    };
    let Some(sp) = WRITE_SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    // SAFETY: this CPU's value.
    let w = unsafe { &mut (*sp).head.walk };
    // Budget ran out: what was not visited is dropped, its size unknown.
    let left = w.iovlen.saturating_sub(w.idx)
        + if w.mmsg != 0 {
            w.msgs.saturating_sub(w.msg_idx)
        } else {
            0
        };
    if left != 0 {
        w.iov_dropped += left;
        w.truncated = 1;
    }
}

#[inline(never)]
unsafe extern "C" fn walk_step(_i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the CPU id.
    let cpu = unsafe { *(ctx as *const u32) };
    let Some(sp) = WRITE_SCRATCH.get_ptr_mut(cpu) else {
        return 1;
    };
    // SAFETY: this CPU's value.
    let sc = unsafe { &mut *sp };
    let w = &mut sc.head.walk;
    if w.idx >= w.iovlen {
        if w.mmsg == 0 || w.msg_idx >= w.msgs {
            return 1;
        }
        let Some(m) = read_msghdr(w.mmsg + w.msg_idx * MMSGHDR) else {
            w.iov_dropped += w.msgs - w.msg_idx;
            w.truncated = 1;
            w.msg_idx = w.msgs;
            return 1;
        };
        w.msg_idx += 1;
        w.iov = m.iov;
        w.iovlen = m.iovlen;
        w.idx = 0;
        return 0;
    }
    let mut v = [0u64; 2];
    // SAFETY: 16 bytes into a 16-byte stack array; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            v.as_mut_ptr() as *mut c_void,
            IOVEC as u32,
            (w.iov + w.idx * IOVEC) as *const c_void,
        )
    };
    w.idx += 1;
    if ret < 0 {
        w.iov_dropped += 1;
        w.truncated = 1;
        return 0;
    }
    if w.walked >= WRITE_IOV_MAX as u64 {
        // Past the iovec limit: count the bytes only.
        w.total += v[1];
        w.dropped += v[1];
        w.iov_dropped += 1;
        w.truncated = 1;
        return 0;
    }
    w.walked += 1;
    copy_seg(sc, v[0], v[1]);
    0
}
