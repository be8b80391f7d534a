//! `connect` for every process (not scope-filtered; the daemon's own excepted): the
//! destination as the process asked for it, at syscall entry.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{args::arg, header, maps, scope, sockaddr};

/// format: fd @16, uservaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if scope::own(tgid) {
        return 0;
    }
    let (fd, addr, len) = (arg(&ctx, 16), arg(&ctx, 24), arg(&ctx, 32) as u32 as u64);
    let mut ev = ConnectEvent {
        fd: fd as i32,
        peer: sockaddr::read_user(addr, len),
        ..Default::default()
    };
    // A process that wrote before has its parent, name, uid and cgroup cached (refreshed
    // as the write probes do): four kernel reads and two helper calls fewer.
    match scope::who(tgid) {
        Some(w) => header::fill_cached(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT, pid_tgid, w),
        None => header::fill(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT),
    }
    maps::emit(
        PROBE_CONNECT,
        &ev as *const _ as *const u8,
        core::mem::size_of::<ConnectEvent>() as u64,
    );
    0
}
