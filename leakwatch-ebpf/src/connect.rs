//! `connect` for every process (not scope-filtered; the daemon's own excepted): the
//! destination as the process asked for it, at syscall entry. A connect that repeats its
//! thread's last recorded one (same fd, same remote, within `CONNECT_FOLD_NS`: a client
//! reconnecting to its API, a pool's thread, a health check, a resolver's UDP socket) is
//! folded: counted here and carried by the thread's next record, so a reconnect loop costs
//! the ring and the daemon one record a second instead of one per call.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{args::arg, header, maps, scope, sockaddr};

const SIZE: usize = core::mem::size_of::<ConnectEvent>();

/// A thread's last recorded connect and the repeats folded since. Only its own thread
/// reads and writes it (its connects, its exec and exit), so plain stores suffice.
#[repr(C)]
struct Last {
    fd: i32,
    _pad: u32,
    peer: Peer,
    /// Folded repeats not yet carried by a record.
    folded: u64,
    /// ktime of the record, and of the last folded repeat.
    sent_ns: u64,
    last_ns: u64,
}

/// Thread id -> its last recorded connect. Per thread, not per process: the threads of a
/// pool each reconnect over their own fd, and would take turns at being "last". Dropped
/// at the thread's exit and at exec (`forget`); an entry the LRU evicts takes its
/// uncarried repeats with it (they stay counted in `STAT_FOLDED`).
#[map]
static CONNECT_LAST: LruHashMap<u32, Last> = LruHashMap::with_max_entries(16384, 0);

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
    let tid = pid_tgid as u32;
    let last = CONNECT_LAST.get_ptr_mut(&tid);
    if let Some(l) = last {
        // SAFETY: map value pointer, this thread's own.
        let l = unsafe { &mut *l };
        if l.fd == fd && now.wrapping_sub(l.sent_ns) < CONNECT_FOLD_NS && same(&l.peer, peer) {
            l.folded += 1;
            l.last_ns = now;
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
            let l = unsafe { &mut *l };
            carry(ev, l);
            l.fd = fd;
            copy_peer(&mut l.peer, peer);
            l.sent_ns = now;
            l.last_ns = now;
        }
        None => {
            ev.folded = 0;
            ev.prev_fd = 0;
            ev.prev_last_ns = 0;
            crate::mem::zero(&mut ev.prev as *mut Peer);
            let mut l = core::mem::MaybeUninit::<Last>::uninit();
            crate::mem::zero(l.as_mut_ptr());
            // SAFETY: all-zero is a valid `Last`; filled in place (a move out of the
            // MaybeUninit compiles to a `memset` call).
            let l = unsafe {
                let l = &mut *l.as_mut_ptr();
                l.fd = fd;
                copy_peer(&mut l.peer, peer);
                l.sent_ns = now;
                l.last_ns = now;
                &*l
            };
            let _ = CONNECT_LAST.insert(&tid, l, 0);
        }
    }
    maps::submit(PROBE_CONNECT, p, maps::write_wakeup(now));
    0
}

/// The current thread exits or exec'd (its id may be reused; a new image's first connect
/// is recorded): its repeats not yet carried are sent in a record of their own
/// (`CONNECT_FOLDS_ONLY`), and its entry dropped. Out of line: every thread exit and exec
/// runs it, and it has work only for threads that folded.
#[inline(never)]
pub fn forget() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(l) = CONNECT_LAST.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: map value pointer, this thread's own.
    let l = unsafe { &mut *l };
    // Not counted as an event (it is no call; its repeats were counted as folded): a full
    // ring loses their share in the action log's `count`, not in any counter.
    if l.folded != 0 {
        if let Some(p) = maps::reserve_event_uncounted::<SIZE>() {
            // SAFETY: SIZE bytes of a live reservation, 8-byte aligned.
            let ev = unsafe { &mut *(p as *mut ConnectEvent) };
            match scope::who((pid_tgid >> 32) as u32) {
                Some(w) => {
                    header::fill_cached(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT, pid_tgid, w)
                }
                None => header::fill(&mut ev.hdr, EVENT_CONNECT, PROBE_CONNECT),
            }
            ev.fd = -1;
            ev.flags = CONNECT_FOLDS_ONLY;
            crate::mem::zero(&mut ev.peer as *mut Peer);
            carry(ev, l);
            maps::submit_uncounted(p, maps::write_wakeup(ev.hdr.ktime_ns));
        }
    }
    let _ = CONNECT_LAST.remove(&tid);
}

/// Moves `l`'s folded repeats onto `ev`.
#[inline(always)]
fn carry(ev: &mut ConnectEvent, l: &mut Last) {
    let n = l.folded.min(u32::MAX as u64);
    l.folded -= n;
    ev.folded = n as u32;
    ev.prev_fd = l.fd;
    ev.prev_last_ns = l.last_ns;
    copy_peer(&mut ev.prev, &l.peer);
}

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
