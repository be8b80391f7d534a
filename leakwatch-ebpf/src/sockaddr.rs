//! A `struct sockaddr` in user memory (connect, sendto, sendmsg) as a `Peer`.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use leakwatch_common::{Peer, AF_INET, AF_INET6};

/// Reads at most `len` bytes at `ptr` into `p`: AF_INET port@2 addr@4, AF_INET6 port@2
/// addr@8; any other family (AF_UNIX…) keeps only `family`. Fields the length does not
/// cover are 0. `p` must be 8-byte aligned (a record field at an 8-byte offset): it is
/// cleared in words, as is the buffer, since aggregate zeroing compiles to a call of the
/// byte-at-a-time `memset` (see `mem`), and this runs on every connect on the host.
#[inline(always)]
pub fn read_user(p: &mut Peer, ptr: u64, len: u64) {
    crate::mem::zero(p as *mut Peer);
    if ptr == 0 || len < 2 {
        return;
    }
    let mut words = core::mem::MaybeUninit::<[u64; 3]>::uninit();
    crate::mem::zero(words.as_mut_ptr());
    let n = if len < 24 { len } else { 24 };
    // SAFETY: n <= 24 bytes of `words`; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            words.as_mut_ptr() as *mut c_void,
            n as u32,
            ptr as *const c_void,
        )
    };
    if ret < 0 {
        return;
    }
    // SAFETY: 24 bytes, zeroed and then (partly) read into; any value is valid.
    let raw: [u8; 24] = unsafe { core::mem::transmute(words.assume_init()) };
    p.family = u16::from_le_bytes([raw[0], raw[1]]);
    if (p.family == AF_INET || p.family == AF_INET6) && n >= 4 {
        p.port = u16::from_be_bytes([raw[2], raw[3]]);
    }
    if p.family == AF_INET && n >= 8 {
        p.addr[..4].copy_from_slice(&raw[4..8]);
    } else if p.family == AF_INET6 && n >= 24 {
        p.addr.copy_from_slice(&raw[8..24]);
    }
}

/// A `Peer` on the stack that `read_user` may clear in words.
#[repr(C, align(8))]
pub struct Aligned(pub Peer);
