//! `connect` for every process (not scope-filtered; the daemon's own excepted): the
//! destination as the process asked for it, at syscall entry. A connect that repeats the
//! process's last recorded connect on the same fd (same remote, within `CONNECT_FOLD_NS`:
//! a client reconnecting to its API, a pool's threads, a health check, a resolver's UDP
//! socket) is folded: counted here and carried by a later record, so a reconnect loop
//! costs the ring and the daemon one record a second instead of one per call.
use core::intrinsics::{atomic_xadd, atomic_xchg, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{args::arg, header, maps, scope, sockaddr};

const SIZE: usize = core::mem::size_of::<ConnectEvent>();

/// tgid -> its last recorded connect per fd slot. Per process, as the daemon names a
/// socket (tgid, fd): a record on an fd by any thread replaces the fd's slot (and so does
/// a record on another fd of the same slot). Dropped at exec and exit (`forget`); an entry
/// the LRU evicts takes its uncarried repeats with it (they stay counted in
/// `STAT_FOLDED`), and the daemon drains the map at stop and when it forgets its own
/// (tgid, fd) names.
#[map]
static CONNECT_LAST: LruHashMap<u32, ConnectLast> = LruHashMap::with_max_entries(8192, 0);

/// Slot 0 non-zero: the daemon drains `CONNECT_LAST` for good (it is stopping): `forget`
/// sends nothing more, so a pinned exec kill left running does not send what the daemon
/// has drained once more.
#[map]
static CONNECT_DRAINED: Array<u32> = Array::with_max_entries(1, 0);

/// format: fd @16, uservaddr @24, addrlen @32.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if scope::own(tgid) {
        return 0;
    }
    let (fd, addr, len) = (
        arg(&ctx, 16) as i32,
        arg(&ctx, 24),
        arg(&ctx, 32) as u32 as u64,
    );
    let mut peer = core::mem::MaybeUninit::<sockaddr::Aligned>::uninit();
    // SAFETY: `read_user` writes every byte of the peer (it clears it first).
    let peer = unsafe {
        sockaddr::read_user(&mut (*peer.as_mut_ptr()).0, addr, len);
        &peer.assume_init_ref().0
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let i = (fd as u32 as usize) & (CONNECT_SLOTS - 1);
    let last = CONNECT_LAST.get_ptr_mut(&tgid);
    if let Some(l) = last {
        // SAFETY: map value pointer. Two threads meet in a slot only connecting fds of
        // the same slot at the same moment: a torn slot then fails the comparison (a
        // record too many), and the count is added atomically.
        let s = unsafe { &mut (*l).slots[i] };
        if s.fd == fd
            && s.sent_ns != 0
            && now.wrapping_sub(s.sent_ns) < CONNECT_FOLD_NS
            && same(&s.peer, peer)
        {
            if s.first_ns == 0 {
                s.first_ns = now;
            }
            // SAFETY: 8-byte aligned map memory.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut s.folded, 1) };
            s.last_ns = now;
            maps::count(PROBE_CONNECT, STAT_FOLDED);
            return 0;
        }
    }
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
    ev.fd = fd;
    ev.flags = 0;
    copy_peer(&mut ev.peer, peer);
    match last {
        Some(l) => {
            // SAFETY: as above.
            let s = unsafe { &mut (*l).slots[i] };
            // The slot's repeats (this fd's, or another fd's it held) ride on this record.
            carry(ev, s);
            set(s, fd, peer, now);
        }
        None => {
            ev.folded = 0;
            ev.prev_fd = 0;
            ev.prev_first_ns = 0;
            ev.prev_last_ns = 0;
            crate::mem::zero(&mut ev.prev as *mut Peer);
            let mut l = core::mem::MaybeUninit::<ConnectLast>::uninit();
            crate::mem::zero(l.as_mut_ptr());
            // SAFETY: all-zero is a valid `ConnectLast`; filled in place (a move out of the
            // MaybeUninit compiles to a `memset` call).
            let l = unsafe {
                let l = &mut *l.as_mut_ptr();
                set(&mut l.slots[i], fd, peer, now);
                &*l
            };
            // Not over an entry another thread has just made.
            let _ = CONNECT_LAST.insert(&tgid, l, BPF_NOEXIST);
        }
    }
    maps::submit(PROBE_CONNECT, p, maps::write_wakeup(now));
    0
}

/// The process exec'd or is gone (its tgid may be reused; a new image's first connect is
/// recorded): the repeats its slots hold are sent in records of their own
/// (`CONNECT_FOLDS_ONLY`), and its entry dropped. Out of line: it runs at every exec and
/// process exit, and has work only for processes that folded.
#[inline(never)]
pub fn forget(tgid: u32) {
    let Some(l) = CONNECT_LAST.get_ptr_mut(&tgid) else {
        return;
    };
    let drained = CONNECT_DRAINED.get(0).is_some_and(|d| *d != 0);
    let pid_tgid = bpf_get_current_pid_tgid();
    for i in 0..CONNECT_SLOTS {
        // SAFETY: map value pointer; `i` < CONNECT_SLOTS.
        let s = unsafe { &mut (*l).slots[i] };
        if s.folded != 0 && !drained {
            send_folds(s, pid_tgid, tgid);
        }
    }
    let _ = CONNECT_LAST.remove(&tgid);
}

/// A record of `s`'s repeats alone. Not counted as an event (it is no call; its repeats
/// were counted as folded): a full ring loses their share in the action log's `count`,
/// not in any counter.
#[inline(never)]
fn send_folds(s: &mut ConnectSlot, pid_tgid: u64, tgid: u32) {
    let Some(p) = maps::reserve_event_uncounted::<SIZE>() else {
        return;
    };
    // SAFETY: SIZE bytes of a live reservation, 8-byte aligned.
    let ev = unsafe { &mut *(p as *mut ConnectEvent) };
    // The cached facts, not refreshed: at exec they are still the old image's.
    match scope::who(tgid) {
        Some(w) => header::fill_as_cached(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT, pid_tgid, w),
        None => header::fill(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT),
    }
    ev.fd = -1;
    ev.flags = CONNECT_FOLDS_ONLY;
    crate::mem::zero(&mut ev.peer as *mut Peer);
    carry(ev, s);
    maps::submit_uncounted(p, maps::write_wakeup(ev.hdr.ktime_ns));
}

/// Moves `s`'s folded repeats onto `ev`: taken in one exchange, since another thread
/// may be carrying or adding to the same slot.
#[inline(always)]
fn carry(ev: &mut ConnectEvent, s: &mut ConnectSlot) {
    // SAFETY: 8-byte aligned map memory.
    let n = unsafe { atomic_xchg::<u64, { AtomicOrdering::Relaxed }>(&mut s.folded, 0) };
    // More than fit would take four billion connects in a second; the rest stay counted.
    ev.folded = n.min(u32::MAX as u64) as u32;
    ev.prev_fd = s.fd;
    ev.prev_first_ns = s.first_ns;
    ev.prev_last_ns = s.last_ns;
    copy_peer(&mut ev.prev, &s.peer);
}

/// The slot now holds the record of `fd` to `peer` at `now`. `sent_ns` is cleared first
/// and set last, so another thread never finds the new fd with the old remote foldable.
#[inline(always)]
fn set(s: &mut ConnectSlot, fd: i32, peer: &Peer, now: u64) {
    // SAFETY: fields of a live map value.
    unsafe { core::ptr::write_volatile(&mut s.sent_ns, 0) };
    s.fd = fd;
    copy_peer(&mut s.peer, peer);
    s.first_ns = 0;
    s.last_ns = now;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(&mut s.sent_ns, now) };
}

/// `BPF_NOEXIST` (uapi `bpf.h`): insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

/// Peers compared and copied as three words, not byte by byte (see `mem`).
#[inline(always)]
fn same(a: &Peer, b: &Peer) -> bool {
    let (a, b) = (
        a as *const Peer as *const u64,
        b as *const Peer as *const u64,
    );
    // SAFETY: 24 bytes each; both 8-byte aligned (map value field, `sockaddr::Aligned`).
    unsafe { *a == *b && *a.add(1) == *b.add(1) && *a.add(2) == *b.add(2) }
}

#[inline(always)]
fn copy_peer(dst: &mut Peer, src: &Peer) {
    let (d, s) = (
        dst as *mut Peer as *mut u64,
        src as *const Peer as *const u64,
    );
    // SAFETY: as in `same`; ring and map fields at 8-byte offsets.
    unsafe {
        *d = *s;
        *d.add(1) = *s.add(1);
        *d.add(2) = *s.add(2);
    }
}
