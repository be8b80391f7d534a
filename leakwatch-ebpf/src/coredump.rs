//! Core dumps: the kernel writes a core with no write syscall, so a dump is noticed at
//! the end of the process that dumped (`sched_process_exit` of its last thread, with the
//! core-dumped bit in the exit code: the core is complete by then) and the daemon finds
//! the file from `core_pattern`. The cwd goes with it, since a relative pattern (the
//! default `core`) is relative to it. Every process, regardless of scope.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use leakwatch_common::*;

use crate::{
    fdinfo, header, maps, mem,
    task::{self, global, kread},
};

#[unsafe(no_mangle)]
static OFF_TASK_EXIT_CODE: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_FS: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FS_PWD_MNT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_FS_PWD_DENTRY: u64 = 0;

/// The record is larger than the BPF stack.
#[map]
static CORE_SCRATCH: PerCpuArray<CoreEvent> = PerCpuArray::with_max_entries(1, 0);

/// `exit_code` bit set once `do_coredump` wrote a core (`coredump_finish`).
const CORE_DUMPED: u32 = 0x80;

/// Called for the last thread of a process (`group_dead`).
#[inline(always)]
pub fn on_group_exit() {
    let off = global(&OFF_TASK_EXIT_CODE);
    if off == 0 {
        return;
    }
    let cur = task::current();
    let code: u32 = kread(cur + off);
    if code & CORE_DUMPED == 0 {
        return;
    }
    let Some(p) = CORE_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    mem::zero(p);
    // SAFETY: this CPU's value.
    let ev = unsafe { &mut *p };
    header::fill(&mut ev.hdr, EVENT_CORE, PROBE_CORE);
    ev.exit_code = code;
    let (off_fs, off_mnt, off_dentry) = (
        global(&OFF_TASK_FS),
        global(&OFF_FS_PWD_MNT),
        global(&OFF_FS_PWD_DENTRY),
    );
    let fs: u64 = if off_fs != 0 { kread(cur + off_fs) } else { 0 };
    if fs != 0 && off_mnt != 0 && off_dentry != 0 {
        let (mnt, dentry): (u64, u64) = (kread(fs + off_mnt), kread(fs + off_dentry));
        if let Some((src, len, partial)) = fdinfo::path(dentry, mnt) {
            ev.cwd_partial = partial as u32;
            if len > 0 && len <= WRITE_PATH_MAX as u32 && mem::copy(ev.cwd.as_mut_ptr(), src, len) {
                ev.cwd_len = len;
            }
        }
    }
    maps::emit(
        PROBE_CORE,
        p as *const u8,
        core::mem::size_of::<CoreEvent>() as u64,
    );
}
