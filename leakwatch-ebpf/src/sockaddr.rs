//! A `struct sockaddr` in user memory (connect, sendto, sendmsg) as a `Peer`.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use leakwatch_common::{Peer, AF_INET, AF_INET6};

/// Reads at most `len` bytes at `ptr`: AF_INET port@2 addr@4, AF_INET6 port@2 addr@8; any
/// other family (AF_UNIX…) keeps only `family`. Fields the length does not cover stay 0.
#[inline(always)]
pub fn read_user(ptr: u64, len: u64) -> Peer {
    let mut p = Peer::default();
    if ptr == 0 || len < 2 {
        return p;
    }
    let mut raw = [0u8; 24];
    let n = if len < 24 { len } else { 24 };
    // SAFETY: n <= raw length; the helper checks the source.
    let ret = unsafe {
        bpf_probe_read_user(
            raw.as_mut_ptr() as *mut c_void,
            n as u32,
            ptr as *const c_void,
        )
    };
    if ret < 0 {
        return p;
    }
    p.family = u16::from_le_bytes([raw[0], raw[1]]);
    if (p.family == AF_INET || p.family == AF_INET6) && n >= 4 {
        p.port = u16::from_be_bytes([raw[2], raw[3]]);
    }
    if p.family == AF_INET && n >= 8 {
        p.addr[..4].copy_from_slice(&raw[4..8]);
    } else if p.family == AF_INET6 && n >= 24 {
        p.addr.copy_from_slice(&raw[8..24]);
    }
    p
}
