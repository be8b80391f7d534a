//! Types shared by the kernel programs and the daemon: `#[repr(C)]` plain-old-data records
//! that cross the ring buffer and the maps. No allocation, no std: both sides compile it.
#![no_std]

/// Event kinds, first `u32` of every ring-buffer record.
pub const EVENT_EXEC: u32 = 1;
/// The kernel killed a process at exec because it carried a frozen credential.
pub const EVENT_ENFORCE: u32 = 2;

/// Bytes of argv/envp text one exec event can carry (power of two: offsets are masked).
pub const EXEC_DATA_MAX: usize = 128 * 1024;
/// Bytes copied per read; longer strings are copied in several chunks.
pub const EXEC_CHUNK: usize = 4096;
/// Upper bound on loop iterations (chunks + pointer reads) per exec.
pub const EXEC_MAX_STEPS: u32 = 8192;

/// `ExecHeader::flags`: the event came from `execveat`.
pub const EXEC_F_EXECVEAT: u32 = 1;
/// `ExecHeader::flags`: the loop budget ran out before the end of envp, so the dropped
/// counters are lower bounds.
pub const EXEC_F_COUNT_INCOMPLETE: u32 = 2;
/// `ExecHeader::flags`: the filename could not be read.
pub const EXEC_F_NO_FILENAME: u32 = 4;
/// `ExecHeader::flags`: the kernel sent SIGKILL because a string matched a frozen credential.
pub const EXEC_F_KILLED: u32 = 8;

/// Probe ids: index into the `LOST` counter map and label of `leakwatch_lost_events_total`.
pub const PROBE_EXECVE: u32 = 0;
pub const PROBE_EXECVEAT: u32 = 1;
pub const PROBE_COUNT: u32 = 2;

/// Kernel-side frozen credential match: 64-bit keyed hash of the exact bytes.
pub const FROZEN_MAX: u32 = 4096;

/// Header of an exec record; followed by `data_len` bytes: the filename, then `argc` argv
/// strings, then `envc` environment strings, each NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecHeader {
    pub kind: u32,
    pub flags: u32,
    /// Thread id (kernel pid) of the caller.
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Argv strings carried in `data`.
    pub argc: u32,
    /// Environment strings carried in `data`.
    pub envc: u32,
    /// Strings that did not fit (or could not be read) and are absent from `data`.
    pub strings_dropped: u32,
    /// Bytes of argv/envp text that are absent from `data` (including partial strings).
    pub bytes_dropped: u64,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub data_len: u32,
    pub probe: u32,
    /// `comm` of the calling task (the image before this exec).
    pub comm: [u8; 16],
}

/// Scratch space for one exec: header + data + one chunk of slack so masked writes stay
/// inside the map value.
#[repr(C)]
pub struct ExecScratch {
    pub hdr: ExecHeader,
    pub data: [u8; EXEC_DATA_MAX + EXEC_CHUNK],
}

/// Sent when the kernel program killed a process at exec (best effort: the kill itself never
/// depends on ring space).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnforceEvent {
    pub kind: u32,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub probe: u32,
    pub hash: u64,
    pub cgroup_id: u64,
    pub comm: [u8; 16],
}

/// Counters kept by the kernel, one slot each in the `STATS` per-CPU array.
pub const STAT_EXEC_EVENTS: u32 = 0;
pub const STAT_EXEC_LOST_EXECVE: u32 = 1;
pub const STAT_EXEC_LOST_EXECVEAT: u32 = 2;
pub const STAT_ENFORCE_KILLS: u32 = 3;
pub const STAT_ENFORCE_LOST: u32 = 4;
pub const STAT_COUNT: u32 = 8;

#[cfg(feature = "user")]
mod user {
    //! Userspace views of the records (aya's `Pod` is implemented by the daemon).
    use super::*;

    impl ExecHeader {
        pub const SIZE: usize = core::mem::size_of::<ExecHeader>();

        /// Reads a header from the start of a ring-buffer record, if it is long enough.
        pub fn read(bytes: &[u8]) -> Option<ExecHeader> {
            if bytes.len() < Self::SIZE {
                return None;
            }
            // SAFETY: length checked; ExecHeader is POD with no invalid bit patterns and
            // read_unaligned does not require alignment.
            Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const ExecHeader) })
        }
    }

    impl EnforceEvent {
        pub const SIZE: usize = core::mem::size_of::<EnforceEvent>();

        pub fn read(bytes: &[u8]) -> Option<EnforceEvent> {
            if bytes.len() < Self::SIZE {
                return None;
            }
            // SAFETY: as above.
            Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const EnforceEvent) })
        }
    }
}

/// 64-bit FNV-1a, seeded: the kernel and the daemon hash candidate strings the same way so
/// frozen credentials can be matched in the kernel without plaintext.
#[inline(always)]
pub fn fnv1a_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
