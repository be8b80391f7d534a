//! Write-family probes (write, writev, pwrite64, pwritev, pwritev2, sendto, sendmsg,
//! sendmmsg, vmsplice): for processes in scope, one record per call with the bytes as passed
//! (iovecs concatenated, capped), what the fd refers to, and its path when the fd names a
//! different file than the last record for that (tgid, fd). Everything cut is counted.
//! Writes to a file the daemon holds go by reference and are joined into runs (`runs`).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use leakwatch_common::*;

use crate::{
    args::arg,
    fdinfo, header, maps, mem,
    payload::{copy_seg, read_msghdr, walk, Head, Scratch, WRITE_SCRATCH},
    runs, scope, sockaddr,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct FdKey {
    tgid: u32,
    fd: u32,
}

/// (tgid, fd) -> the open file the last record for it named (and what stays fixed for it,
/// so a matching fd skips most reads).
#[map]
static LAST_FILE: LruHashMap<FdKey, fdinfo::Known> = LruHashMap::with_max_entries(65536, 0);

/// Inodes (`struct inode` addresses) of regular files the daemon holds open: writes to
/// them with one buffer are sent by reference (position and length, no bytes), and the
/// daemon reads the bytes back from the page cache. Its open file pins the inode, so the
/// address cannot be reused while it is listed; the daemon unlists before it closes.
#[map]
static HELD: HashMap<u64, u8> = HashMap::with_max_entries(HELD_MAX, 0);

/// How the payload is passed.
pub enum Src {
    Buf {
        ptr: u64,
        len: u64,
    },
    /// The TLS return probe's plaintext, with its thread's frame (`tls::TLS_THREADS`), which
    /// it has looked up already: the record is built there.
    Tls {
        ptr: u64,
        len: u64,
        frame: *mut Head,
    },
    Iov {
        iov: u64,
        vlen: u64,
    },
    Msg {
        msg: u64,
    },
    Mmsg {
        mmsg: u64,
        vlen: u64,
    },
}

// Field offsets from /sys/kernel/tracing/events/syscalls/sys_enter_*/format: fd @16 always.

#[tracepoint]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    let src = Src::Buf {
        ptr: arg(&ctx, 24),
        len: arg(&ctx, 32),
    };
    handle(PROBE_WRITE, arg(&ctx, 16) as u32, src, -1, 0, 0);
    0
}

#[tracepoint]
pub fn sys_enter_pwrite64(ctx: TracePointContext) -> u32 {
    let src = Src::Buf {
        ptr: arg(&ctx, 24),
        len: arg(&ctx, 32),
    };
    handle(
        PROBE_PWRITE64,
        arg(&ctx, 16) as u32,
        src,
        arg(&ctx, 40) as i64,
        0,
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let src = Src::Iov {
        iov: arg(&ctx, 24),
        vlen: arg(&ctx, 32),
    };
    handle(PROBE_WRITEV, arg(&ctx, 16) as u32, src, -1, 0, 0);
    0
}

#[tracepoint]
pub fn sys_enter_pwritev(ctx: TracePointContext) -> u32 {
    let src = Src::Iov {
        iov: arg(&ctx, 24),
        vlen: arg(&ctx, 32),
    };
    handle(
        PROBE_PWRITEV,
        arg(&ctx, 16) as u32,
        src,
        arg(&ctx, 40) as i64,
        0,
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_pwritev2(ctx: TracePointContext) -> u32 {
    let src = Src::Iov {
        iov: arg(&ctx, 24),
        vlen: arg(&ctx, 32),
    };
    // pos -1: the file position, as for writev.
    handle(
        PROBE_PWRITEV2,
        arg(&ctx, 16) as u32,
        src,
        arg(&ctx, 40) as i64,
        0,
        0,
    );
    0
}

#[tracepoint]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    let src = Src::Buf {
        ptr: arg(&ctx, 24),
        len: arg(&ctx, 32),
    };
    // addr @48, addr_len @56 (UDP destination).
    handle(
        PROBE_SENDTO,
        arg(&ctx, 16) as u32,
        src,
        -1,
        arg(&ctx, 48),
        arg(&ctx, 56),
    );
    0
}

#[tracepoint]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let src = Src::Msg { msg: arg(&ctx, 24) };
    handle(PROBE_SENDMSG, arg(&ctx, 16) as u32, src, -1, 0, 0);
    0
}

/// `vmsplice(fd, iov, nr_segs, flags)`: the iovecs go into the pipe like a `writev`. Only on
/// a write end: on a read end the call copies out of the pipe into the iovecs, whose bytes
/// at entry are whatever the buffers held (checked in `handle`).
#[tracepoint]
pub fn sys_enter_vmsplice(ctx: TracePointContext) -> u32 {
    let src = Src::Iov {
        iov: arg(&ctx, 24),
        vlen: arg(&ctx, 32),
    };
    handle(PROBE_VMSPLICE, arg(&ctx, 16) as u32, src, -1, 0, 0);
    0
}

#[tracepoint]
pub fn sys_enter_sendmmsg(ctx: TracePointContext) -> u32 {
    let src = Src::Mmsg {
        mmsg: arg(&ctx, 24),
        vlen: arg(&ctx, 32) as u32 as u64,
    };
    handle(PROBE_SENDMMSG, arg(&ctx, 16) as u32, src, -1, 0, 0);
    0
}

/// One write-family call by the current task: `fd` (the caller's), the payload, the
/// position (-1: the file's own) and a datagram destination. io_uring submissions come
/// here too (`PROBE_IO_URING`): they complete later, so they never go by reference.
#[inline(always)]
pub fn handle(
    probe: u32,
    fd: u32,
    src: Src,
    offset: i64,
    mut dest: u64,
    mut dest_len: u64,
) -> Option<()> {
    // From here on TLS plaintext is one buffer, as a `write`'s is.
    let (src, frame) = match src {
        Src::Tls { ptr, len, frame } => (Src::Buf { ptr, len }, frame),
        s => (s, core::ptr::null_mut()),
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if scope::own(tgid) {
        return None;
    }
    // Zero-length calls carry nothing.
    match src {
        Src::Buf { len: 0, .. } | Src::Iov { vlen: 0, .. } | Src::Mmsg { vlen: 0, .. } => {
            return None
        }
        _ => {}
    }
    if scope::known_out(tgid) {
        maps::count(probe, STAT_SKIPPED);
        return None;
    }
    // A call continuing its thread's run skips the rest, the scope verdict included: the
    // run began in scope and lives a few ms at most. Only `write` and `pwrite64` go by
    // reference (io_uring submissions complete later, TLS plaintext is not the file's, a
    // `sendto` on a file fails), so the others skip the lookup.
    let may_run = probe == PROBE_WRITE || probe == PROBE_PWRITE64;
    if let (Src::Buf { len, .. }, true) = (&src, may_run) {
        if runs::extend(pid_tgid as u32, fd, probe, *len, offset) {
            return None;
        }
    }
    let Some(who) = scope::in_scope(tgid) else {
        maps::count(probe, STAT_SKIPPED);
        return None;
    };
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // The TLS uprobe builds its record in a frame of its thread (see `tls::TLS_THREADS`) and
    // never needs `buf`: its fd is a socket or none, so no path, one buffer, straight into
    // the ring.
    let lane = fdinfo::lane(probe);
    let (hp, sp): (*mut Head, *mut Scratch) = if lane == fdinfo::LANE_UPROBE {
        if frame.is_null() {
            return None;
        }
        (frame, core::ptr::null_mut())
    } else {
        let sp = WRITE_SCRATCH.get_ptr_mut(cpu)?;
        // SAFETY: this CPU's scratch value; tracepoint programs do not nest on one CPU.
        (unsafe { &mut (*sp).head }, sp)
    };
    // SAFETY: this CPU's head, or this thread's frame: used only by this program run.
    let h = unsafe { &mut *hp };

    let r = &mut h.rec;
    header::fill_cached(&mut r.hdr, EVENT_WRITE, probe, pid_tgid, who);
    if is_tls_plaintext(probe) {
        r.hdr.flags |= WRITE_F_TLS;
    }
    r.fd = fd as i32;
    r.offset = offset;
    r.path_len = 0;
    r.inode = 0;
    r.calls = 1;
    mem::zero(&mut r.peer as *mut Peer);
    mem::zero(&mut r.file as *mut FileId);

    // What the fd is; its path only when it changed since the last record.
    let mut new_file = false;
    let key = FdKey { tgid, fd };
    // The entry for this (tgid, fd), if any: rewritten in place when the fd names another
    // file now (an LRU insert takes a node from the map's free lists; a process that opens
    // and closes sockets reuses the same few fd numbers).
    let mut slot: *mut fdinfo::Known = core::ptr::null_mut();
    let o = match LAST_FILE.get_ptr_mut(&key) {
        Some(s) => {
            slot = s;
            // SAFETY: map value pointer returned by the lookup.
            let k = unsafe { &mut *s };
            match fdinfo::known(fd, k) {
                fdinfo::Check::Same(o) => {
                    // The table grew since: remember the new one for the short path.
                    if o.fdt != k.fdt {
                        k.fdt = o.fdt;
                        k.arr = o.arr;
                    }
                    Some((o, true))
                }
                fdinfo::Check::Other(fdt, arr, file) => {
                    Some((fdinfo::resolve_file(lane, fdt, arr, file), false))
                }
                fdinfo::Check::Gone => None,
            }
        }
        None => fdinfo::resolve(lane, fd).map(|o| (o, false)),
    };
    // Go's fd is read through types a program may have wrapped: kept only when it names
    // a socket, else the record goes without one (-1), as node's does.
    let sock = |o: &fdinfo::Open| o.id.mode & fdinfo::S_IFMT == fdinfo::S_IFSOCK;
    let o = if probe == PROBE_GO_TLS_WRITE && !matches!(&o, Some((o, _)) if sock(o)) {
        h.rec.fd = -1;
        None
    } else {
        o
    };
    // A vmsplice on a read end reads; one on an fd that is not open fails.
    if probe == PROBE_VMSPLICE && !matches!(&o, Some((o, _)) if fdinfo::writable(o.id.file)) {
        maps::count(probe, STAT_SKIPPED);
        return None;
    }
    let (mut fdt, mut arr) = (0, 0);
    let mut ciphertext = false;
    match o {
        Some((o, same)) => {
            (fdt, arr) = (o.fdt, o.arr);
            h.rec.file = o.id;
            h.rec.inode = o.inode;
            let is_sock = sock(&o);
            // SAFETY: `who` is this process's map value (see `scope::in_scope`).
            let tls = unsafe { (*who).flags } & scope::WHO_TLS != 0;
            if is_sock && tls && !is_tls_plaintext(probe) {
                ciphertext = crate::tls::note_socket(pid_tgid as u32, fd);
            }
            if !same {
                new_file = true;
                // What LAST_FILE remembers once a record naming it reached the ring.
                let k = &mut h.known;
                k.file = o.id.file;
                k.inode = o.inode;
                k.ino = o.id.ino;
                k.dev = o.id.dev;
                k.private_data = o.private_data;
                k.mode = o.id.mode;
                k.fdt = o.fdt;
                k.arr = o.arr;
                h.rec.hdr.flags |= WRITE_F_NEW_FILE;
                // The path goes into the tracepoints' `buf` (there is none for the TLS lane,
                // whose fd is a socket): a field apart from `h`.
                if !is_sock && !sp.is_null() {
                    // SAFETY: `sp` is this CPU's scratch value.
                    let buf = unsafe { (*sp).buf.as_mut_ptr() };
                    copy_path(h, buf, &o);
                }
            }
            if is_sock {
                if let Some(p) = fdinfo::sock_peer(lane, o.private_data) {
                    h.rec.peer = p;
                    h.rec.hdr.flags |= WRITE_F_PEER;
                }
            }
        }
        None => h.rec.hdr.flags |= WRITE_F_NO_FILE,
    }
    // A socket write made inside `SSL_write` is its ciphertext: the plaintext record
    // carries the bytes. Only the socket's first record goes (a ClientHello sent by a
    // handshake `SSL_write` started names the host).
    if ciphertext && !new_file {
        maps::count(probe, STAT_SKIPPED);
        return None;
    }

    let cap = match scope::SCOPE_CFG.get(0) {
        Some(c) if c.capture_max != 0 => c.capture_max as u64,
        _ => WRITE_CAPTURE_DEFAULT as u64,
    };
    h.walk.reset(
        if cap > WRITE_DATA_MAX as u64 {
            WRITE_DATA_MAX as u64
        } else {
            cap
        },
        h.rec.path_len as u64,
    );
    let is_ref = may_run && matches!(src, Src::Buf { .. }) && by_ref(h, offset);
    if is_ref && !new_file {
        if let Src::Buf { len, .. } = src {
            // A run continued takes the fast path above; this call starts one.
            let r = &mut h.rec;
            r.total = len;
            r.bytes_dropped = 0;
            r.iov_dropped = 0;
            r.data_len = 0;
            runs::start(r, &mut h.run, fdt, arr);
            return Some(());
        }
    }
    // Runs are of regular files: a socket, pipe or terminal write (or an fd that is not
    // open) ends none, and skips the `RUNS` lookup. A run on a file whose fd number now
    // names something else is sent by the thread's next run or exit, or read by the
    // daemon's tick.
    if h.rec.file.mode & fdinfo::S_IFMT == fdinfo::S_IFREG {
        runs::end_fd(pid_tgid as u32, fd as i32);
    }
    if let Src::Buf { ptr, len } = src {
        if !is_ref && h.rec.path_len == 0 {
            // One buffer and no path: straight into a ring reservation.
            apply_dest(h, dest, dest_len);
            let cap = h.walk.cap;
            return direct(h, probe, ptr, len, cap, &key, slot, new_file);
        }
    }
    // SAFETY: as above; from here on only `sc` (its `head` is `h`) is used.
    let sc = unsafe { sp.as_mut() }?;
    match src {
        Src::Buf { len, .. } if is_ref => sc.head.walk.total = len,
        Src::Buf { ptr, len } => copy_seg(sc, ptr, len),
        // Made a `Buf` at the top.
        Src::Tls { .. } => return None,
        Src::Iov { iov, vlen } => walk(sc, cpu, iov, vlen, 0, 0),
        Src::Msg { msg } => {
            if let Some(m) = read_msghdr(msg) {
                dest = m.name;
                dest_len = m.namelen;
                walk(sc, cpu, m.iov, m.iovlen, 0, 0);
            }
        }
        Src::Mmsg { mmsg, vlen } => {
            if let Some(m) = read_msghdr(mmsg) {
                dest = m.name;
                dest_len = m.namelen;
                let msgs = if vlen > WRITE_MMSG_MAX as u64 {
                    sc.head.walk.iov_dropped += vlen - WRITE_MMSG_MAX as u64;
                    sc.head.walk.truncated = 1;
                    WRITE_MMSG_MAX as u64
                } else {
                    vlen
                };
                walk(sc, cpu, m.iov, m.iovlen, mmsg, msgs);
            }
        }
    }
    // SAFETY: same value; `walk` may have re-borrowed it inside the callback.
    let h = unsafe { &mut (*sp).head };
    apply_dest(h, dest, dest_len);
    let w = &h.walk;
    if w.total == 0 {
        return None;
    }
    let r = &mut h.rec;
    r.total = w.total;
    r.bytes_dropped = w.dropped;
    r.iov_dropped = w.iov_dropped as u32;
    let data_len = if w.off > WRITE_DATA_MAX as u64 {
        WRITE_DATA_MAX as u64
    } else {
        w.off
    };
    r.data_len = data_len as u32;
    if w.truncated != 0 {
        r.hdr.flags |= WRITE_F_TRUNCATED;
        maps::count(probe, STAT_TRUNCATED);
        maps::add(probe, STAT_BYTES_DROPPED, w.dropped);
    }
    let mut size = r.path_len as u64 + data_len;
    if size > (WRITE_PATH_MAX + WRITE_DATA_MAX) as u64 {
        size = (WRITE_PATH_MAX + WRITE_DATA_MAX) as u64;
    }
    size += core::mem::size_of::<WriteHeader>() as u64;
    let wake = maps::write_wakeup(r.hdr.ktime_ns);
    // `rec` is followed by `buf` (see `Scratch`): one output of header + path + data.
    if maps::emit_write(probe, r as *const _ as *const u8, size, wake) && new_file {
        // Remember only what reached the ring: a lost record must not hide the next path.
        remember(&key, slot, &h.known);
    }
    Some(())
}

/// Stores what `key`'s fd now names: in place when it had an entry (`slot`), else a new
/// one. In place, `file` goes last: a thread of the same process checking the entry
/// meanwhile matches only once every other field is the new file's.
#[inline(always)]
fn remember(key: &FdKey, slot: *mut fdinfo::Known, k: &fdinfo::Known) {
    if slot.is_null() {
        let _ = LAST_FILE.insert(key, k, 0);
        return;
    }
    // SAFETY: a value pointer from this program's lookup of `key`: the memory stays valid
    // while the program runs. An LRU map may hand the node to another key meanwhile (an
    // insert on another CPU); that entry then names our file, which its own fd slot does
    // not hold, so its next check fails and resolves in full.
    unsafe {
        let d = &mut *slot;
        d.inode = k.inode;
        d.ino = k.ino;
        d.private_data = k.private_data;
        d.dev = k.dev;
        d.mode = k.mode;
        d.fdt = k.fdt;
        d.arr = k.arr;
        core::ptr::write_volatile(&mut d.file, k.file);
    }
}

/// The fd is a regular file the daemon holds (see `HELD`) and where the bytes land is
/// known: the record goes by reference (position in `offset`, no bytes).
#[inline(always)]
fn by_ref(h: &mut Head, offset: i64) -> bool {
    let r = &mut h.rec;
    if r.inode == 0
        || r.file.mode & fdinfo::S_IFMT != fdinfo::S_IFREG
        || HELD.get_ptr(&r.inode).is_none()
    {
        return false;
    }
    let pos = if offset >= 0 {
        Some((offset, false))
    } else {
        fdinfo::write_pos(r.file.file, r.inode)
    };
    let Some((pos, append)) = pos else {
        return false;
    };
    r.offset = pos;
    r.hdr.flags |= if append {
        WRITE_F_BY_REF | WRITE_F_APPEND
    } else {
        WRITE_F_BY_REF
    };
    true
}

/// An explicit destination (UDP) names the peer better than the socket does.
#[inline(always)]
fn apply_dest(h: &mut Head, dest: u64, dest_len: u64) {
    if dest == 0 {
        return;
    }
    let mut a = core::mem::MaybeUninit::<sockaddr::Aligned>::uninit();
    // SAFETY: `read_user` writes every byte of the (8-byte aligned) value first.
    let p = unsafe {
        sockaddr::read_user(&mut (*a.as_mut_ptr()).0, dest, dest_len);
        &a.assume_init_ref().0
    };
    if p.family == AF_INET || p.family == AF_INET6 {
        let lport = h.rec.peer.lport;
        h.rec.peer = *p;
        h.rec.peer.lport = lport;
        h.rec.hdr.flags |= WRITE_F_PEER;
    }
}

const HDR: usize = core::mem::size_of::<WriteHeader>();

/// A single user buffer with no path: reserve a size class and copy the bytes straight
/// into it (one copy instead of scratch + `bpf_ringbuf_output`). The record is longer than
/// header + data by the class slack; the reader goes by `data_len`.
#[inline(always)]
fn direct(
    h: &mut Head,
    probe: u32,
    ptr: u64,
    len: u64,
    cap: u64,
    key: &FdKey,
    slot: *mut fdinfo::Known,
    new_file: bool,
) -> Option<()> {
    let n = if len < cap { len } else { cap };
    let r = &mut h.rec;
    r.total = len;
    r.bytes_dropped = len - n;
    r.iov_dropped = 0;
    r.data_len = 0;
    let wake = maps::write_wakeup(r.hdr.ktime_ns);
    let sent = if n <= 256 {
        class::<{ HDR + 256 }>(h, probe, ptr, n, wake)
    } else if n <= 1024 {
        class::<{ HDR + 1024 }>(h, probe, ptr, n, wake)
    } else if n <= 4096 {
        class::<{ HDR + 4096 }>(h, probe, ptr, n, wake)
    } else if n <= 16384 {
        class::<{ HDR + 16384 }>(h, probe, ptr, n, wake)
    } else {
        class::<{ HDR + WRITE_DATA_MAX }>(h, probe, ptr, n, wake)
    };
    if sent && new_file {
        remember(key, slot, &h.known);
    }
    Some(())
}

#[inline(always)]
fn class<const N: usize>(h: &mut Head, probe: u32, ptr: u64, n: u64, wake: u64) -> bool {
    let Some(p) = maps::reserve_write::<N>(probe) else {
        return false;
    };
    // The class was chosen so that n fits; the bound is for the verifier.
    let n = if n > (N - HDR) as u64 {
        (N - HDR) as u64
    } else {
        n
    };
    // SAFETY: HDR + n <= N bytes of the reservation; the helper checks the source.
    let ret =
        unsafe { bpf_probe_read_user(p.add(HDR) as *mut c_void, n as u32, ptr as *const c_void) };
    let r = &mut h.rec;
    if ret < 0 {
        // Unreadable (page not present): the bytes are lost, not silently.
        r.bytes_dropped += n;
    } else {
        r.data_len = n as u32;
    }
    if r.bytes_dropped != 0 {
        r.hdr.flags |= WRITE_F_TRUNCATED;
        maps::count(probe, STAT_TRUNCATED);
        maps::add(probe, STAT_BYTES_DROPPED, r.bytes_dropped);
    }
    // The first HDR bytes of the reservation, from the lane's head.
    mem::copy(p, r as *const WriteHeader as *const u8, HDR as u32);
    maps::submit(probe, p, wake);
    true
}

/// Copies the path `o` was opened by into `buf` (`Scratch::buf`, WRITE_PATH_MAX bytes at
/// least) and records its length in `h`.
#[inline(always)]
fn copy_path(h: &mut Head, buf: *mut u8, o: &fdinfo::Open) {
    let Some((src, len, partial)) = fdinfo::path(o.dentry, o.mnt) else {
        h.rec.hdr.flags |= WRITE_F_PATH_PARTIAL;
        return;
    };
    if partial {
        h.rec.hdr.flags |= WRITE_F_PATH_PARTIAL;
    }
    if len == 0 || len > WRITE_PATH_MAX as u32 {
        return;
    }
    // SAFETY: len <= WRITE_PATH_MAX <= buf's size; source is the per-CPU path buffer.
    let ret = unsafe { bpf_probe_read_kernel(buf as *mut c_void, len, src as *const c_void) };
    if ret == 0 {
        h.rec.path_len = len;
    }
}
