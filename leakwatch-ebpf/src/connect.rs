//! `connect` for every process (not scope-filtered; the daemon's own excepted): the
//! destination as the process asked for it, at syscall entry.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{header, maps, scope, sockaddr};

/// format: fd @16, uservaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if scope::own((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    // SAFETY: offsets from the format file; reads checked by the helper.
    let (fd, addr, len) = unsafe {
        (
            ctx.read_at::<u64>(16).unwrap_or(0),
            ctx.read_at::<u64>(24).unwrap_or(0),
            ctx.read_at::<u64>(32).unwrap_or(0) as u32 as u64,
        )
    };
    let mut ev = ConnectEvent {
        fd: fd as i32,
        peer: sockaddr::read_user(addr, len),
        ..Default::default()
    };
    header::fill(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT);
    maps::emit(
        PROBE_CONNECT,
        &ev as *const _ as *const u8,
        core::mem::size_of::<ConnectEvent>() as u64,
    );
    0
}
