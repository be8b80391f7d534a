//! `connect` for every process (not scope-filtered; the daemon's own excepted): the
//! destination as the process asked for it, at syscall entry.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{args::arg, header, maps, scope, sockaddr};

const SIZE: usize = core::mem::size_of::<ConnectEvent>();

/// format: fd @16, uservaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if scope::own(tgid) {
        return 0;
    }
    let (fd, addr, len) = (arg(&ctx, 16), arg(&ctx, 24), arg(&ctx, 32) as u32 as u64);
    // Built in the ring, every field written: no record on the stack to clear and copy.
    let Some(p) = maps::reserve_event::<SIZE>(PROBE_CONNECT) else {
        return 0;
    };
    // SAFETY: SIZE bytes of a live reservation, 8-byte aligned.
    let ev = unsafe { &mut *(p as *mut ConnectEvent) };
    // The parent, name, uid and cgroup are cached per process (refreshed as the write
    // probes do), made at its first connect if it has not written: four kernel reads and
    // two helper calls fewer on every connect after it.
    match scope::who_or_new(tgid) {
        Some(w) => header::fill_cached(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT, pid_tgid, w),
        None => header::fill(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT),
    }
    ev.fd = fd as i32;
    ev._pad = 0;
    sockaddr::read_user(&mut ev.peer, addr, len);
    maps::submit(PROBE_CONNECT, p, maps::write_wakeup(ev.hdr.ktime_ns));
    0
}
