//! Whose write payloads are copied. A verdict per tgid is cached in an LRU map, so the
//! steady-state cost for a process out of scope is one lookup; exec (comm changes) and
//! exit (tgid reuse) drop it. The daemon's own tgid is never in scope (feedback loop).
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::TracePointContext,
};
use leakwatch_common::{ScopeConfig, SCOPE_CGROUP_DEPTH, SCOPE_SEEN_SLOTS};

use crate::task;

/// The daemon's tgid, set by the loader.
#[unsafe(no_mangle)]
static OWN_TGID: u32 = 0;

#[map]
pub static SCOPE_CFG: Array<ScopeConfig> = Array::with_max_entries(1, 0);
#[map]
static SCOPE_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);
#[map]
static SCOPE_UIDS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static SCOPE_COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(1024, 0);
/// Per process: the verdict (`UNDECIDED` until its first write) and the parent, name,
/// uid/gid and cgroup its write and connect records carry, re-read at most every
/// `WHO_REFRESH_NS` (four kernel reads and two helper calls fewer per call).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Who {
    pub verdict: u32,
    /// `ScopeConfig::generation` the verdict was reached under; another one: decide again.
    pub generation: u32,
    pub ppid: u32,
    /// `WHO_*` bits.
    pub flags: u32,
    /// ktime of the last read of `ppid` and `comm` (0: never).
    pub at: u64,
    pub comm: [u8; 16],
    pub uid_gid: u64,
    pub cgroup_id: u64,
}

/// tgid -> Who.
#[map]
static SCOPE_VERDICT: LruHashMap<u32, Who> = LruHashMap::with_max_entries(32768, 0);

const IN: u8 = 1;
const OUT: u8 = 2;
/// The process has called `SSL_write` since its exec (set by the TLS probes): only its
/// socket writes can be ciphertext, so only its look in `TLS_THREADS`.
pub const WHO_TLS: u32 = 1;
/// How stale a cached parent, name, uid or cgroup may get (reparenting,
/// `prctl(PR_SET_NAME)`, `setuid`, a move to another cgroup).
pub const WHO_REFRESH_NS: u64 = 100_000_000;

/// Direct-mapped cache of out-of-scope processes in front of `SCOPE_VERDICT`: an array
/// lookup is inlined by the verifier, a hash lookup is a helper call and a hash, and the
/// out-of-scope path is what every unwatched process pays on every write.
#[repr(C)]
#[derive(Clone, Copy)]
struct Seen {
    tgid: u32,
    generation: u32,
}

#[map]
static SCOPE_SEEN: Array<Seen> = Array::with_max_entries(SCOPE_SEEN_SLOTS, 0);

#[inline(always)]
fn generation() -> u32 {
    SCOPE_CFG.get(0).map(|c| c.generation).unwrap_or(0)
}

#[inline(always)]
pub fn own(tgid: u32) -> bool {
    // SAFETY: plain global set at load time.
    tgid == unsafe { core::ptr::read_volatile(&OWN_TGID) }
}

/// The process was found out of scope under the current lists (one inlined array
/// lookup; false does not mean in scope).
#[inline(always)]
pub fn known_out(tgid: u32) -> bool {
    let generation = generation();
    match SCOPE_SEEN.get_ptr(tgid & (SCOPE_SEEN_SLOTS - 1)) {
        // SAFETY: array value pointer.
        Some(s) => unsafe { (*s).tgid == tgid && (*s).generation == generation && generation != 0 },
        None => false,
    }
}

/// The process's `Who` when it is in scope, `None` when it is not (its verdict is reached
/// here, at its first write after an exec or a change of lists). Callers have checked
/// `known_out`.
#[inline(always)]
pub fn in_scope(tgid: u32) -> Option<*mut Who> {
    let generation = generation();
    let seen = SCOPE_SEEN.get_ptr_mut(tgid & (SCOPE_SEEN_SLOTS - 1));
    let out = |seen: Option<*mut Seen>| {
        if let Some(s) = seen {
            // SAFETY: array value pointer; a racing CPU writes the same or another tgid.
            unsafe { *s = Seen { tgid, generation } };
        }
    };
    if let Some(v) = who(tgid) {
        // SAFETY: map value pointer returned by the lookup.
        let w = unsafe { &mut *v };
        if w.generation == generation {
            if w.verdict == IN as u32 {
                return Some(v);
            }
            out(seen);
            return None;
        }
        // Reached under other lists: decide again (the cached facts stay valid).
        w.verdict = verdict() as u32;
        w.generation = generation;
        if w.verdict == IN as u32 {
            return Some(v);
        }
        out(seen);
        return None;
    }
    let mut w = core::mem::MaybeUninit::<Who>::uninit();
    crate::mem::zero(w.as_mut_ptr());
    // SAFETY: all-zero is a valid Who.
    let mut w = unsafe { w.assume_init() };
    w.verdict = verdict() as u32;
    w.generation = generation;
    let _ = SCOPE_VERDICT.insert(&tgid, &w, 0);
    if w.verdict != IN as u32 {
        out(seen);
        return None;
    }
    who(tgid)
}

/// The process's cached `Who`, in scope, out of it or undecided (`None`: it has neither
/// written nor connected since its exec). Its facts are as fresh as `header::fill_cached`
/// keeps them.
#[inline(always)]
pub fn who(tgid: u32) -> Option<*mut Who> {
    SCOPE_VERDICT.get_ptr_mut(&tgid)
}

/// A `generation` no list ever has (the loader skips it): the verdict is still to be
/// reached, by `in_scope` at the process's first write, under the lists and the uid and
/// cgroup it has then.
pub const UNDECIDED: u32 = u32::MAX;

/// `who`, made when the process has none yet (`UNDECIDED`, its facts unread): for probes
/// that record every process, in scope or not, and fill their headers from it. Made only
/// if absent, so a racing first `SSL_write` keeps its `WHO_TLS` mark.
#[inline(always)]
pub fn who_or_new(tgid: u32) -> Option<*mut Who> {
    if let Some(w) = who(tgid) {
        return Some(w);
    }
    let mut w = core::mem::MaybeUninit::<Who>::uninit();
    crate::mem::zero(w.as_mut_ptr());
    // SAFETY: all-zero is a valid Who; used in place (a move out of the MaybeUninit
    // compiles to a `memset` call).
    let w = unsafe {
        (*w.as_mut_ptr()).generation = UNDECIDED;
        w.assume_init_ref()
    };
    let _ = SCOPE_VERDICT.insert(&tgid, w, BPF_NOEXIST);
    who(tgid)
}

/// `BPF_NOEXIST` (uapi `bpf.h`): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

// Out of line (a BPF subprogram): it runs once per process and lists change, and inlined
// it put several KiB of cold code (the cgroup ancestor walk) into every write program.
#[inline(never)]
fn verdict() -> u8 {
    let Some(cfg) = SCOPE_CFG.get(0) else {
        return IN;
    };
    if cfg.cgroups == 0 && cfg.uids == 0 && cfg.comms == 0 {
        return IN;
    }
    if cfg.uids != 0
        && SCOPE_UIDS
            .get_ptr(&(bpf_get_current_uid_gid() as u32))
            .is_some()
    {
        return IN;
    }
    if cfg.comms != 0 {
        let mut comm = [0u8; 16];
        if !task::leader_comm(&mut comm) {
            comm = bpf_get_current_comm().unwrap_or([0; 16]);
        }
        if SCOPE_COMMS.get_ptr(&comm).is_some() {
            return IN;
        }
    }
    if cfg.cgroups != 0 && cgroup_listed() {
        return IN;
    }
    OUT
}

/// The caller's cgroup or one of its ancestors (cgroup v2) is in `SCOPE_CGROUPS`.
#[inline(always)]
fn cgroup_listed() -> bool {
    // SAFETY: helper without preconditions.
    let own = unsafe { bpf_get_current_cgroup_id() };
    if SCOPE_CGROUPS.get_ptr(&own).is_some() {
        return true;
    }
    // Level 0 is the root; the helper returns 0 past the caller's own level.
    for level in 0..SCOPE_CGROUP_DEPTH as i32 {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == own {
            break;
        }
        if SCOPE_CGROUPS.get_ptr(&id).is_some() {
            return true;
        }
    }
    false
}

#[inline(always)]
fn forget_current() {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // First: its records of folded connects take the (old image's) name from `Who`.
    crate::connect::forget(tgid);
    // Looked up first: a process that never wrote has no verdict, and a delete locks the
    // bucket before it looks.
    if SCOPE_VERDICT.get_ptr(&tgid).is_some() {
        let _ = SCOPE_VERDICT.remove(&tgid);
    }
    if let Some(s) = SCOPE_SEEN.get_ptr_mut(tgid & (SCOPE_SEEN_SLOTS - 1)) {
        // SAFETY: array value pointer.
        unsafe {
            if (*s).tgid == tgid {
                (*s).tgid = 0;
            }
        }
    }
}

/// The process changed image (and comm): decide again at its next write. While a credential
/// is frozen, check the new image's strings (`exec_image`); then send its exec record.
#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    forget_current();
    // Read once for both: the check and the record walk the same areas.
    let areas = crate::task::arg_env_areas();
    let killed = crate::frozen::enabled() && crate::exec_image::check(areas);
    let _ = crate::exec_capture::capture(&ctx, areas, killed);
    0
}

/// Where `group_dead` sits in the `sched_process_exit` record, from its format file (set
/// by the loader); 0: this kernel's record has no such field (older kernels), so the
/// last thread is the one that finds its thread group's `signal->live` count at 0. Bit
/// `GROUP_DEAD_BY_HELPER` asks for the helper read even at offset 32 (tests).
#[unsafe(no_mangle)]
static EXIT_GROUP_DEAD: u64 = 0;

/// The tgid may be reused: drop its verdict with its last thread. Every exiting thread
/// sends its pending run of by-reference writes.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    crate::runs::on_exit();
    crate::tls::on_exit(aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32);
    if group_dead(&ctx) {
        forget_current();
        crate::coredump::on_group_exit();
    }
    0
}

/// Is the exiting thread its process's last? The loader's global is a read-only constant
/// to the verifier, so only the branch this kernel needs is kept.
#[inline(always)]
fn group_dead(ctx: &TracePointContext) -> bool {
    use aya_ebpf::EbpfContext;
    use leakwatch_common::GROUP_DEAD_BY_HELPER;
    match crate::task::global(&EXIT_GROUP_DEAD) {
        // This layout (6.18): a direct load, not a helper call; every thread exit on the
        // host runs this.
        32 => crate::args::byte(ctx, 32) != 0,
        // No field: `do_exit` has decremented `live` before this tracepoint. Two threads
        // exiting at once may both read 0 (both then count as the last: a repeated
        // cleanup, harmless, and a dumped core noticed twice, which the daemon joins).
        0 => crate::task::live_threads() == Some(0),
        // Another layout: an offset known only at load time, which a context load cannot
        // take (it needs a constant one).
        off => crate::task::kread::<u8>(ctx.as_ptr() as u64 + (off & !GROUP_DEAD_BY_HELPER)) != 0,
    }
}
