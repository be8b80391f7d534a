//! In-kernel copies: `copy_file_range` (cp, `cat a > b`), `sendfile` (python
//! `socket.sendfile`), `splice` and `tee` move bytes between two fds without user memory,
//! so the write probes never see them. The source offset is read at entry (the call moves
//! it), the bytes moved at exit; one record per call that moved bytes, with both ends
//! (path, or peer) read at exit, for every process: the daemon records the action and,
//! for processes in scope, reads the source range back and scans it.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{args::arg, fdinfo, header, maps, mem, scope};

/// A call between entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
struct Pending {
    src_fd: i32,
    dst_fd: i32,
    src_off: i64,
    probe: u32,
    _pad: u32,
}

/// By thread id. A thread killed inside the call leaves its entry until the id is reused
/// (LRU: bounded either way).
#[map]
static COPY_PENDING: LruHashMap<u32, Pending> = LruHashMap::with_max_entries(4096, 0);

#[map]
static COPY_SCRATCH: PerCpuArray<CopyEvent> = PerCpuArray::with_max_entries(1, 0);

/// Entry: remember the ends and where the source is read from (`off_ptr`, a user
/// `loff_t *`, or the source file's position).
#[inline(always)]
fn enter(probe: u32, src_fd: u64, off_ptr: u64, dst_fd: u64) {
    let id = bpf_get_current_pid_tgid();
    if scope::own((id >> 32) as u32) {
        return;
    }
    let src_off = if off_ptr != 0 {
        // SAFETY: user pointer, read checked by the helper.
        unsafe { bpf_probe_read_user(off_ptr as *const i64) }.unwrap_or(-1)
    } else {
        fdinfo::resolve(fdinfo::LANE_TRACEPOINT, src_fd as u32)
            .and_then(|o| fdinfo::pos_of(o.id.file, o.inode, false))
            .unwrap_or(-1)
    };
    let p = Pending {
        src_fd: src_fd as i32,
        dst_fd: dst_fd as i32,
        src_off,
        probe,
        _pad: 0,
    };
    let _ = COPY_PENDING.insert(&(id as u32), &p, 0);
}

/// Exit: a record if bytes moved.
#[inline(always)]
fn exit(ctx: &TracePointContext, probe: u32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: map value copied out before the delete.
    let Some(p) = (unsafe { COPY_PENDING.get(&tid) }).copied() else {
        return;
    };
    let _ = COPY_PENDING.remove(&tid);
    let ret = arg(ctx, 16) as i64;
    if ret <= 0 || p.probe != probe {
        return;
    }
    let Some(ev) = COPY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    mem::zero(ev);
    // SAFETY: this CPU's value.
    let e = unsafe { &mut *ev };
    header::fill(&mut e.hdr, EVENT_COPY, probe);
    e.src_off = p.src_off;
    e.bytes = ret as u64;
    e.in_scope = scope::in_scope(e.hdr.tgid).is_some() as u32;
    end(&mut e.src, p.src_fd, e.paths.as_mut_ptr());
    // SAFETY: the second half of `paths`.
    end(&mut e.dst, p.dst_fd, unsafe {
        e.paths.as_mut_ptr().add(COPY_PATH_MAX)
    });
    maps::emit(
        probe,
        ev as *const u8,
        core::mem::size_of::<CopyEvent>() as u64,
    );
}

/// One end: its file identity, and its path (regular files, devices) or peer (sockets).
#[inline(always)]
fn end(e: &mut CopyEnd, fd: i32, path: *mut u8) {
    e.fd = fd;
    let Some(o) = fdinfo::resolve(fdinfo::LANE_TRACEPOINT, fd as u32) else {
        e.flags |= WRITE_F_NO_FILE;
        return;
    };
    e.file = o.id;
    let kind = o.id.mode & fdinfo::S_IFMT;
    if kind == fdinfo::S_IFSOCK {
        if let Some(peer) = fdinfo::sock_peer(fdinfo::LANE_TRACEPOINT, o.private_data) {
            e.peer = peer;
            e.flags |= WRITE_F_PEER;
        }
        return;
    }
    if kind == fdinfo::S_IFIFO {
        return;
    }
    let Some((src, len, partial)) = fdinfo::path(o.dentry, o.mnt) else {
        e.flags |= WRITE_F_PATH_PARTIAL;
        return;
    };
    if partial {
        e.flags |= WRITE_F_PATH_PARTIAL;
    }
    if len > 0 && len <= COPY_PATH_MAX as u32 && mem::copy(path, src, len) {
        e.path_len = len;
    }
}

/// format: fd_in @16, off_in @24, fd_out @32.
#[tracepoint]
pub fn sys_enter_copy_file_range(ctx: TracePointContext) -> u32 {
    enter(
        PROBE_COPY_FILE_RANGE,
        arg(&ctx, 16),
        arg(&ctx, 24),
        arg(&ctx, 32),
    );
    0
}

#[tracepoint]
pub fn sys_exit_copy_file_range(ctx: TracePointContext) -> u32 {
    exit(&ctx, PROBE_COPY_FILE_RANGE);
    0
}

/// format: out_fd @16, in_fd @24, offset @32.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    enter(PROBE_SENDFILE, arg(&ctx, 24), arg(&ctx, 32), arg(&ctx, 16));
    0
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    exit(&ctx, PROBE_SENDFILE);
    0
}

/// format: fd_in @16, off_in @24, fd_out @32.
#[tracepoint]
pub fn sys_enter_splice(ctx: TracePointContext) -> u32 {
    enter(PROBE_SPLICE, arg(&ctx, 16), arg(&ctx, 24), arg(&ctx, 32));
    0
}

#[tracepoint]
pub fn sys_exit_splice(ctx: TracePointContext) -> u32 {
    exit(&ctx, PROBE_SPLICE);
    0
}

/// format: fdin @16, fdout @24 (pipe to pipe: no offset).
#[tracepoint]
pub fn sys_enter_tee(ctx: TracePointContext) -> u32 {
    enter(PROBE_TEE, arg(&ctx, 16), 0, arg(&ctx, 24));
    0
}

#[tracepoint]
pub fn sys_exit_tee(ctx: TracePointContext) -> u32 {
    exit(&ctx, PROBE_TEE);
    0
}
