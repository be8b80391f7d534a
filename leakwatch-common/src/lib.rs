//! Types shared by the kernel programs and the daemon: `#[repr(C)]` plain-old-data records
//! that cross the ring buffer and the maps. No allocation, no std: both sides compile it.
//!
//! Every ring-buffer record starts with an [`EventHeader`] (filled by one kernel helper);
//! its `kind` says which family payload follows.
#![no_std]

/// Record kinds (`EventHeader::kind`).
pub const EVENT_EXEC: u32 = 1;
/// The kernel killed a process at exec because it carried a frozen credential.
pub const EVENT_ENFORCE: u32 = 2;
/// Bytes passed to a write-family syscall by a process in scope.
pub const EVENT_WRITE: u32 = 3;
/// A `connect` (every process, regardless of scope).
pub const EVENT_CONNECT: u32 = 4;
/// A process died after dumping core (every process).
pub const EVENT_CORE: u32 = 5;
/// An in-kernel copy (`copy_file_range`, `sendfile`, `splice`, `tee`) moved bytes.
pub const EVENT_COPY: u32 = 6;

/// Probe ids: `EventHeader::probe`, index into the per-probe counters, and the `probe` label
/// of the loss metrics. `PROBE_NAMES[id]` is the tracepoint (or pseudo-probe) name.
pub const PROBE_EXECVE: u32 = 0;
pub const PROBE_EXECVEAT: u32 = 1;
/// Kernel kill notices sent by the exec probes.
pub const PROBE_ENFORCE: u32 = 2;
pub const PROBE_WRITE: u32 = 3;
pub const PROBE_WRITEV: u32 = 4;
pub const PROBE_PWRITE64: u32 = 5;
pub const PROBE_PWRITEV: u32 = 6;
pub const PROBE_PWRITEV2: u32 = 7;
pub const PROBE_SENDTO: u32 = 8;
pub const PROBE_SENDMSG: u32 = 9;
pub const PROBE_SENDMMSG: u32 = 10;
pub const PROBE_CONNECT: u32 = 11;
/// `sched_process_exec`: the frozen check over the new image's whole argument and
/// environment area (closes the gaps of the `sys_enter_execve` check: capture limits, pages
/// not yet faulted in, strings changed by another thread after the syscall read them).
pub const PROBE_EXEC_IMAGE: u32 = 12;
/// `sched_process_exit` of a process that dumped core.
pub const PROBE_CORE: u32 = 13;
/// In-kernel copies, at syscall exit (the bytes really moved).
pub const PROBE_COPY_FILE_RANGE: u32 = 14;
pub const PROBE_SENDFILE: u32 = 15;
pub const PROBE_SPLICE: u32 = 16;
pub const PROBE_TEE: u32 = 17;
/// Writes and sends submitted through io_uring (no write syscall).
pub const PROBE_IO_URING: u32 = 18;
/// TLS plaintext: OpenSSL's `SSL_write` / `SSL_write_ex` (uprobes, record sent at return
/// with the bytes really written).
pub const PROBE_SSL_WRITE: u32 = 19;
/// `vmsplice` into a pipe: user pages handed to the pipe with no write call (a writev
/// by another name; the pipe's reader, or a `splice` on to a socket or file, moves them on).
pub const PROBE_VMSPLICE: u32 = 20;
/// TLS plaintext: Go's `crypto/tls.(*Conn).Write` (a uprobe at entry, the whole buffer).
pub const PROBE_GO_TLS_WRITE: u32 = 21;
pub const PROBE_COUNT: u32 = 22;

/// The probes that read TLS plaintext (uprobes: preemptible, fd of the socket unknown at
/// the call).
pub const fn is_tls_plaintext(probe: u32) -> bool {
    probe == PROBE_SSL_WRITE || probe == PROBE_GO_TLS_WRITE
}

pub const PROBE_NAMES: [&str; PROBE_COUNT as usize] = [
    "sys_enter_execve",
    "sys_enter_execveat",
    "enforce",
    "sys_enter_write",
    "sys_enter_writev",
    "sys_enter_pwrite64",
    "sys_enter_pwritev",
    "sys_enter_pwritev2",
    "sys_enter_sendto",
    "sys_enter_sendmsg",
    "sys_enter_sendmmsg",
    "sys_enter_connect",
    "sched_process_exec",
    "sched_process_exit",
    "sys_exit_copy_file_range",
    "sys_exit_sendfile64",
    "sys_exit_splice",
    "sys_exit_tee",
    "io_uring_submit_req",
    "uprobe_ssl_write",
    "sys_enter_vmsplice",
    "uprobe_go_tls_write",
];

/// Per-probe kernel counters: the `STATS` per-CPU array holds `STAT_KINDS` slots per probe,
/// at `stat_slot(probe, STAT_*)`.
/// Records written to the ring buffer.
pub const STAT_EVENTS: u32 = 0;
/// Records lost: the ring buffer had no room.
pub const STAT_LOST: u32 = 1;
/// Calls skipped because the process is out of scope (write family).
pub const STAT_SKIPPED: u32 = 2;
/// Calls whose payload was cut (capture limit, iovec limit or unreadable memory).
pub const STAT_TRUNCATED: u32 = 3;
/// Bytes not captured by those cut calls.
pub const STAT_BYTES_DROPPED: u32 = 4;
/// Processes killed in the kernel (`PROBE_ENFORCE` only).
pub const STAT_KILLS: u32 = 5;
/// Execs killed because the argument area could not be checked to its end while a
/// credential was frozen (fail closed: loop budget or unreadable memory; `PROBE_EXEC_IMAGE`).
pub const STAT_UNCHECKED: u32 = 6;
/// Calls folded into a record sent before them instead of making their own (connect
/// repeats, see `CONNECT_FOLD_NS`).
pub const STAT_FOLDED: u32 = 7;
pub const STAT_KINDS: u32 = 8;
pub const STAT_COUNT: u32 = PROBE_COUNT * STAT_KINDS;

#[inline(always)]
pub const fn stat_slot(probe: u32, stat: u32) -> u32 {
    probe * STAT_KINDS + stat
}

/// Common header of every record: who did it, filled by one kernel helper.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    pub probe: u32,
    /// Thread id (kernel pid) of the caller.
    pub pid: u32,
    /// Process id (kernel tgid).
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Family-specific `*_F_*` bits.
    pub flags: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// `comm` of the calling task.
    pub comm: [u8; 16],
}

// ---------------------------------------------------------------------------------------
// exec

/// Bytes of argv/envp text one exec event can carry (power of two: offsets are masked).
pub const EXEC_DATA_MAX: usize = 128 * 1024;
/// Bytes copied per read; longer strings are copied in several chunks.
pub const EXEC_CHUNK: usize = 4096;
/// Upper bound on loop iterations (chunks + pointer reads) per exec.
pub const EXEC_MAX_STEPS: u32 = 8192;

/// Bytes of the new image's argument area read per helper call at `sched_process_exec`.
pub const EXEC_IMAGE_CHUNK: usize = 16 * 1024;
/// `bpf_loop` budget of that walk: the kernel's maximum (`BPF_MAX_LOOPS`). One step per
/// 64 bytes, per string end and per chunk read; an exec is at most 6 MiB of strings
/// (`_STK_LIM / 4 * 3`, `bprm_stack_limits`) of at most ~700k strings (each costs a byte
/// plus an 8-byte pointer), so any exec the kernel accepts needs < 900k steps.
pub const EXEC_IMAGE_MAX_STEPS: u32 = 1 << 23;

/// `EventHeader::flags` of exec records: the argument area could not be carried whole
/// (past `EXEC_DATA_MAX`, or unreadable), so strings are missing: `bytes_dropped` says how
/// many bytes, the daemon counts the strings from the new image's /proc entries.
pub const EXEC_F_COUNT_INCOMPLETE: u32 = 2;
/// The filename could not be read.
pub const EXEC_F_NO_FILENAME: u32 = 4;
/// The kernel sent SIGKILL because a string matched a frozen credential.
pub const EXEC_F_KILLED: u32 = 8;

/// Header of an exec record, built at `sched_process_exec` from the new image; followed by
/// `data_len` bytes: the filename and its NUL, then the image's argument area
/// (`arg_bytes` bytes: argv, NUL-separated) and its environment area, as the kernel laid
/// them out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecHeader {
    pub hdr: EventHeader,
    /// Bytes of `data` after the filename's NUL that are argv; the rest is the environment.
    pub arg_bytes: u32,
    pub data_len: u32,
    /// Bytes of argv/envp text that are absent from `data`.
    pub bytes_dropped: u64,
}

/// Scratch space for one exec: header + data + one chunk of slack so masked writes stay
/// inside the map value.
#[repr(C)]
pub struct ExecScratch {
    pub hdr: ExecHeader,
    pub data: [u8; EXEC_DATA_MAX + EXEC_CHUNK],
}

/// Sent when the kernel program killed a process at exec (best effort: the kill itself never
/// depends on ring space). `hdr.probe` is `PROBE_ENFORCE`; `exec_probe` the exec probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnforceEvent {
    pub hdr: EventHeader,
    pub hash: u64,
    pub exec_probe: u32,
    pub _pad: u32,
}

/// Kernel-side frozen credential match: 64-bit keyed hash of the exact bytes.
pub const FROZEN_MAX: u32 = 4096;

// ---------------------------------------------------------------------------------------
// sockets

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// A socket's remote end (or a `sendto`/`sendmsg` destination). `family` 0: unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub family: u16,
    /// Remote port, host byte order.
    pub port: u16,
    /// Local port, host byte order (0 when unknown).
    pub lport: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes (network order), or IPv6.
    pub addr: [u8; 16],
}

/// A `connect(fd, addr)` as the process asked for it (at syscall entry), with the repeats
/// the kernel folded of an earlier record of the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    pub hdr: EventHeader,
    pub fd: i32,
    /// Connects folded since the process's last record on `prev_fd` (to `prev`): each
    /// repeated it within `CONNECT_FOLD_NS`; the first and last at `prev_first_ns` and
    /// `prev_last_ns` (ktime). Counted under `STAT_FOLDED` as well.
    pub folded: u32,
    pub peer: Peer,
    pub prev: Peer,
    pub prev_first_ns: u64,
    pub prev_last_ns: u64,
    pub prev_fd: i32,
    /// `CONNECT_FOLDS_ONLY` or 0.
    pub flags: u32,
}

/// A connect repeating the process's last recorded connect on the same fd (same remote)
/// this soon after it is folded in the kernel: counted, and carried by a later record.
pub const CONNECT_FOLD_NS: u64 = 1_000_000_000;
/// The record is no connect: the process exec'd or exited with folded repeats not yet
/// carried, and carries them (`fd` and `peer` are empty).
pub const CONNECT_FOLDS_ONLY: u32 = 1;

/// Fds per process whose connect repeats fold at once (an fd's slot is `fd % CONNECT_SLOTS`).
pub const CONNECT_SLOTS: usize = 4;

/// The last recorded connect on an fd of a process, and the repeats folded since: a slot
/// of the kernel's `CONNECT_LAST` map (tgid -> `ConnectLast`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectSlot {
    pub fd: i32,
    pub _pad: u32,
    pub peer: Peer,
    /// Folded repeats not yet carried by a record.
    pub folded: u64,
    /// ktime of the record (0: empty slot, or being replaced), of the first repeat folded
    /// since (0: none), and of the last one (the record's while there is none).
    pub sent_ns: u64,
    pub first_ns: u64,
    pub last_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectLast {
    pub slots: [ConnectSlot; CONNECT_SLOTS],
}

// ---------------------------------------------------------------------------------------
// write family

/// Largest payload the kernel copies per call (power of two: offsets are masked). The
/// configured cap (`ScopeConfig::capture_max`) is clamped to it.
pub const WRITE_DATA_MAX: usize = 64 * 1024;
/// Default per-call capture cap.
pub const WRITE_CAPTURE_DEFAULT: u32 = 16 * 1024;
/// iovecs walked per call (writev, pwritev, sendmsg); more are counted in `iov_dropped`.
pub const WRITE_IOV_MAX: u32 = 64;
/// Messages walked per `sendmmsg`.
pub const WRITE_MMSG_MAX: u32 = 16;
/// Bytes of path components a write record may carry.
pub const WRITE_PATH_MAX: usize = 1024;
/// Path components walked (dentry parents, across mounts).
pub const WRITE_PATH_DEPTH: u32 = 24;

/// `EventHeader::flags` of write records: payload cut (cap, iovec limit, unreadable page).
pub const WRITE_F_TRUNCATED: u32 = 1;
/// The fd names a different open file than the last record for this (tgid, fd) did (or it
/// is the first): `path_len` bytes of path follow the header.
pub const WRITE_F_NEW_FILE: u32 = 2;
/// `peer` is valid.
pub const WRITE_F_PEER: u32 = 4;
/// The path walk stopped at its depth or byte limit: the path is a suffix.
pub const WRITE_F_PATH_PARTIAL: u32 = 8;
/// The fd could not be resolved to a file (`file` is zero).
pub const WRITE_F_NO_FILE: u32 = 16;
/// By reference: the bytes are in a regular file the daemon holds open (`HELD`), so the
/// record carries no payload; `offset` is where they land and `total` how many there are.
pub const WRITE_F_BY_REF: u32 = 32;
/// With `WRITE_F_BY_REF`: the fd has O_APPEND, so `offset` is the end of the file at the
/// call, and a writer racing on the same file may have moved it on by then.
pub const WRITE_F_APPEND: u32 = 64;
/// Every call the record stands for had returned when it was sent (a run of by-reference
/// writes sent by its own thread's next call or exit): its bytes are in the file.
pub const WRITE_F_SETTLED: u32 = 128;
/// TLS plaintext (`PROBE_SSL_WRITE`), before encryption; `fd` is the socket the library
/// wrote the ciphertext to during the call, or -1 when it wrote none (a memory BIO: node).
pub const WRITE_F_TLS: u32 = 256;
/// A by-reference write sent alone, the last of those after a pause (`RUN_LONE_MAX`): the
/// thread's next writes go in a run, which the daemon looks up soon instead of at its tick.
pub const WRITE_F_RUN_NEXT: u32 = 512;
/// Set in the exit program's `group_dead` offset: read it with a helper call even where
/// the direct load would do (so tests run the path other record layouts take).
pub const GROUP_DEAD_BY_HELPER: u64 = 1 << 16;
/// Bytes of each ring buffer (`EVENTS`, `WRITES`) in the object; the daemon sizes them at
/// load (`[capture] events_ring_mb`, `writes_ring_mb`).
pub const RING_BYTES: u32 = 4 << 20;
/// Regular files the daemon holds open for by-reference capture, at most.
pub const HELD_MAX: u32 = 1024;

/// A thread's by-reference writes that continue each other (same fd, file and probe, each
/// starting where the last ended) are joined in the kernel into one pending run, sent as
/// one record (`WriteHeader::calls` calls) when the thread's next write does not continue
/// it, when the run reaches one of these bounds, or when the thread exits.
pub const RUN_CALLS_MAX: u32 = 1024;
pub const RUN_BYTES_MAX: u64 = 1 << 20;
/// A run this many timer ticks old is sent at the thread's next write (a slow writer's
/// records are not held back; 4-8 ms at HZ=250). Jiffies, because the fine clock costs a
/// TSC read per call in a VM and the coarse one is not offered to tracepoint programs.
/// The daemon reads runs still pending (`RefRun`) every tick of its own, and a run flagged
/// to follow lone writes (`WRITE_F_RUN_NEXT`) at every look.
pub const RUN_AGE_JIFFIES: u64 = 2;
/// A thread whose last by-reference write was at least this many ticks ago (two: one tick
/// boundary can fall between two back-to-back writes) has paused: its next writes (up to
/// `RUN_LONE_MAX`) go alone at once (the daemon reads each once settled, `SETTLE` after
/// entry) instead of waiting as a run for the write after them. A steady writer still goes in runs;
/// one that writes a line now and then is read in milliseconds, not at its next line.
pub const RUN_PAUSE_JIFFIES: u64 = 2;
/// Writes after a pause that go alone before the thread's writes are joined into runs
/// again: a burst of a few log lines (a key in the third) is read in milliseconds, not
/// when the thread next writes or the daemon's tick finds the run; a steady writer pays this
/// many records per pause.
pub const RUN_LONE_MAX: u32 = 8;
/// Threads with a pending run at once; beyond, writes are sent one record each.
pub const RUNS_MAX: u32 = 8192;

/// A thread's pending run (value of the kernel's `RUNS` map, keyed by thread id): the
/// record it will be sent as, and what the daemon needs to read it early.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RefRun {
    /// `hdr` as at the run's first call; `offset`, `total` and `calls` cover the run.
    pub rec: WriteHeader,
    /// Kernel time of the run's first call.
    pub started_ns: u64,
    /// `jiffies` at the run's first call (the age bound is checked at every call).
    pub started_jiffies: u64,
    /// Bytes of the run's last call (it may still be in flight).
    pub last_len: u64,
    /// `jiffies` at the run's last call. An entry with `rec.calls` 0 holds no run: it only
    /// remembers when the thread's last write (sent alone) was.
    pub last_jiffies: u64,
    /// Writes sent alone since the thread's last pause (up to `RUN_LONE_MAX`).
    pub lone: u64,
    /// The writer's fd table and its fd array at the first call: while the table is
    /// unchanged, a call is checked against the run with three reads.
    pub fdt: u64,
    pub arr: u64,
}

/// What the fd of a write refers to, read from `task->files` at the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileId {
    /// Address of the `struct file`: identity of the open file description.
    pub file: u64,
    pub ino: u64,
    /// `inode->i_sb->s_dev` (0 when not read).
    pub dev: u32,
    /// `inode->i_mode` (S_IFREG, S_IFSOCK, S_IFIFO, S_IFCHR…).
    pub mode: u32,
}

/// Header of a write record; followed by `path_len` bytes of path (only with
/// `WRITE_F_NEW_FILE`: NUL-terminated components, leaf first, e.g. `app.log\0log\0var\0`),
/// then `data_len` bytes of payload, in the order the call would write them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteHeader {
    pub hdr: EventHeader,
    pub fd: i32,
    pub data_len: u32,
    pub path_len: u32,
    /// iovecs (or messages) not walked.
    pub iov_dropped: u32,
    /// Calls the record stands for: 1, or a run's (`WRITE_F_BY_REF`, see `RUN_CALLS_MAX`).
    pub calls: u32,
    pub _pad: u32,
    /// Bytes the call passed (count, or the sum of iovec lengths walked and not walked when
    /// known).
    pub total: u64,
    /// Bytes of `total` not in `data`.
    pub bytes_dropped: u64,
    /// pwrite offset, or -1; with `WRITE_F_BY_REF`, the file position the bytes land at.
    pub offset: i64,
    pub file: FileId,
    pub peer: Peer,
    /// Address of the fd's `struct inode` (0 when unresolved): the key of `HELD`.
    pub inode: u64,
}

// ---------------------------------------------------------------------------------------
// scope

/// Slot 0 of the `SCOPE_CFG` array: which lists the kernel consults to decide whose write
/// payloads are copied. A process is in scope when it matches any enabled list; with no
/// list enabled every process is (except the daemon itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeConfig {
    /// Non-zero: match the caller's cgroup and its ancestors against `SCOPE_CGROUPS`.
    pub cgroups: u32,
    /// Non-zero: match the caller's uid against `SCOPE_UIDS`.
    pub uids: u32,
    /// Non-zero: match the caller's comm against `SCOPE_COMMS`.
    pub comms: u32,
    /// Per-call capture cap in bytes (clamped to `WRITE_DATA_MAX`; 0 = default).
    pub capture_max: u32,
    /// Bumped by every update: verdicts cached under another generation are stale.
    pub generation: u32,
    pub _pad: u32,
}

/// Slots of the direct-mapped out-of-scope cache (`SCOPE_SEEN`, indexed by tgid).
pub const SCOPE_SEEN_SLOTS: u32 = 1 << 16;

/// Cgroup levels walked upwards when matching `SCOPE_CGROUPS`.
pub const SCOPE_CGROUP_DEPTH: u32 = 16;

#[cfg(feature = "user")]
mod user {
    //! Userspace views of the records (aya's `Pod` is implemented by the daemon).
    use super::*;

    /// Reads a POD record from the start of `bytes`, if it is long enough.
    ///
    /// # Safety
    /// `T` must be a `#[repr(C)]` type made only of integers and arrays of integers.
    unsafe fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
        if bytes.len() < core::mem::size_of::<T>() {
            return None;
        }
        // SAFETY: length checked; read_unaligned does not require alignment; the caller
        // guarantees every bit pattern is valid.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }

    macro_rules! pod_read {
        ($($t:ty),*) => {$(
            impl $t {
                pub const SIZE: usize = core::mem::size_of::<$t>();
                /// Reads the record from the start of a ring-buffer item, if long enough.
                pub fn read(bytes: &[u8]) -> Option<$t> {
                    // SAFETY: integers and integer arrays only.
                    unsafe { read_pod(bytes) }
                }
            }
        )*};
    }
    pod_read!(
        EventHeader,
        ExecHeader,
        EnforceEvent,
        ConnectEvent,
        WriteHeader,
        RefRun,
        CoreEvent,
        CopyEvent
    );
}

/// 64-bit FNV-1a, seeded: the kernel and the daemon hash candidate strings the same way so
/// frozen credentials can be matched in the kernel without plaintext.
#[inline(always)]
pub fn fnv1a_step(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

// ---------------------------------------------------------------------------------------
// crash dumps and in-kernel copies

/// A process whose last thread exited with the core-dumped bit (`exit_code & 0x80`): the
/// kernel has written its core by then. `cwd` (leaf-first components, as in write records)
/// is where a relative `core_pattern` put it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CoreEvent {
    pub hdr: EventHeader,
    pub exit_code: u32,
    pub cwd_len: u32,
    /// The cwd walk stopped at its depth or byte limit.
    pub cwd_partial: u32,
    pub _pad: u32,
    pub cwd: [u8; WRITE_PATH_MAX],
}

/// One end of an in-kernel copy, read at syscall entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyEnd {
    pub fd: i32,
    /// `WRITE_F_PEER`, `WRITE_F_PATH_PARTIAL`, `WRITE_F_NO_FILE`.
    pub flags: u32,
    pub path_len: u32,
    pub _pad: u32,
    pub file: FileId,
    pub peer: Peer,
}

/// Bytes of path each end of a copy record may carry.
pub const COPY_PATH_MAX: usize = WRITE_PATH_MAX;

/// An in-kernel copy that moved `bytes` (> 0) from `src` at `src_off` to `dst`: the
/// bytes never pass through user memory, so the daemon reads the source range itself.
/// `paths` holds the source path at 0 and the destination's at `COPY_PATH_MAX`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CopyEvent {
    pub hdr: EventHeader,
    /// Source offset at the call (`*off_in`, or the file position), -1 when unknown.
    pub src_off: i64,
    pub bytes: u64,
    /// Non-zero: the caller is in scope (its copies are scanned, not only recorded).
    pub in_scope: u32,
    pub _pad: u32,
    pub src: CopyEnd,
    pub dst: CopyEnd,
    pub paths: [u8; 2 * COPY_PATH_MAX],
}
