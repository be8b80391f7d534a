//! The common header of every record: who made the call. One helper for every family.
use core::ffi::c_void;

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    generated::bpf_get_current_comm,
};
use leakwatch_common::EventHeader;

use crate::task;

/// Fills `h` for the current task; `flags` starts at 0.
#[inline(always)]
pub fn fill(h: &mut EventHeader, kind: u32, probe: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    h.kind = kind;
    h.probe = probe;
    h.pid = pid_tgid as u32;
    h.tgid = (pid_tgid >> 32) as u32;
    h.ppid = task::ppid();
    h.uid = uid_gid as u32;
    h.gid = (uid_gid >> 32) as u32;
    h.flags = 0;
    // SAFETY: helpers without preconditions.
    h.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    // The process's name (the leader's), as /proc/PID/comm shows it: a thread that renamed
    // itself (`lw-worker`, `HttpClient-1-Wo`) is still that process. Read in place: a
    // `[u8; 16]` returned by value costs a byte-wise memset and memcpy.
    if !task::leader_comm(&mut h.comm) {
        // SAFETY: 16 writable bytes.
        let ret = unsafe { bpf_get_current_comm(h.comm.as_mut_ptr() as *mut c_void, 16) };
        if ret < 0 {
            crate::mem::zero(&mut h.comm as *mut [u8; 16]);
        }
    }
}
