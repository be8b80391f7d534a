//! The common header of every record: who made the call. One helper for every family.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_get_current_comm,
};
use leakwatch_common::EventHeader;

use crate::{
    scope::{Who, WHO_REFRESH_NS},
    task,
};

/// Fills `h` for the current task with the parent, name, uid/gid and cgroup from `who`,
/// re-read into it first when never read or older than `WHO_REFRESH_NS`. `flags` starts
/// at 0.
#[inline(always)]
pub fn fill_cached(h: &mut EventHeader, kind: u32, probe: u32, pid_tgid: u64, who: *mut Who) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `who` is this process's map value (see `scope::in_scope`).
    let w = unsafe { &mut *who };
    if w.at == 0 || now.wrapping_sub(w.at) > WHO_REFRESH_NS {
        refresh(w, now);
    }
    copy(h, kind, probe, pid_tgid, now, w);
}

/// `fill_cached` without the refresh of facts already read: a record about the process
/// as it was before its exec, sent from the exec hook.
#[inline(always)]
pub fn fill_as_cached(h: &mut EventHeader, kind: u32, probe: u32, pid_tgid: u64, who: *mut Who) {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    let w = unsafe { &mut *who };
    if w.at == 0 {
        refresh(w, now);
    }
    copy(h, kind, probe, pid_tgid, now, w);
}

#[inline(always)]
fn refresh(w: &mut Who, now: u64) {
    w.ppid = task::ppid();
    comm(&mut w.comm);
    w.uid_gid = bpf_get_current_uid_gid();
    // SAFETY: helper without preconditions.
    w.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    w.at = now;
}

#[inline(always)]
fn copy(h: &mut EventHeader, kind: u32, probe: u32, pid_tgid: u64, now: u64, w: &Who) {
    h.kind = kind;
    h.probe = probe;
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.flags = 0;
    h.ktime_ns = now;
    h.ppid = w.ppid;
    h.uid = w.uid_gid as u32;
    h.gid = (w.uid_gid >> 32) as u32;
    h.cgroup_id = w.cgroup_id;
    // Two words, not a (byte-wise) memcpy: both arrays sit at 8-byte offsets.
    let (src, dst) = (
        w.comm.as_ptr() as *const u64,
        h.comm.as_mut_ptr() as *mut u64,
    );
    // SAFETY: 16 bytes each, 8-byte aligned.
    unsafe {
        *dst = *src;
        *dst.add(1) = *src.add(1);
    }
}

/// Fills `h` for the current task, every fact read now; `flags` starts at 0.
#[inline(always)]
pub fn fill(h: &mut EventHeader, kind: u32, probe: u32) {
    let mut w = core::mem::MaybeUninit::<Who>::uninit();
    crate::mem::zero(w.as_mut_ptr());
    // A never-read `Who` (`at` 0): `fill_cached` reads everything into it.
    fill_cached(h, kind, probe, bpf_get_current_pid_tgid(), w.as_mut_ptr());
}

/// The process's name (the leader's), as /proc/PID/comm shows it: a thread that renamed
/// itself (`lw-worker`, `HttpClient-1-Wo`) is still that process. Read in place: a
/// `[u8; 16]` returned by value costs a byte-wise memset and memcpy.
#[inline(always)]
fn comm(dst: &mut [u8; 16]) {
    if !task::leader_comm(dst) {
        // SAFETY: 16 writable bytes.
        let ret = unsafe { bpf_get_current_comm(dst.as_mut_ptr() as *mut c_void, 16) };
        if ret < 0 {
            crate::mem::zero(dst as *mut [u8; 16]);
        }
    }
}
