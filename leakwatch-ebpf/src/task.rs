//! Facts about the current task that need `task_struct` field offsets. Rust has no CO-RE
//! here, so the loader reads the offsets from /sys/kernel/btf/vmlinux and sets these globals.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

#[unsafe(no_mangle)]
static OFF_TASK_REAL_PARENT: u64 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u64 = 0;

/// Thread-group id of the current task's parent, or 0 when the offsets are unknown.
#[inline(always)]
pub fn ppid() -> u32 {
    // SAFETY: globals are plain integers set at load time; reads are checked by the helper.
    unsafe {
        let off_parent = core::ptr::read_volatile(&OFF_TASK_REAL_PARENT);
        let off_tgid = core::ptr::read_volatile(&OFF_TASK_TGID);
        if off_parent == 0 || off_tgid == 0 {
            return 0;
        }
        let task = bpf_get_current_task();
        let parent: u64 = match bpf_probe_read_kernel((task + off_parent) as *const u64) {
            Ok(p) => p,
            Err(_) => return 0,
        };
        bpf_probe_read_kernel((parent + off_tgid) as *const u32).unwrap_or(0)
    }
}
