//! TLS plaintext: uprobes on OpenSSL's `SSL_write` and `SSL_write_ex` (the system
//! `libssl.so.3`, and executables that carry OpenSSL and export them, like node), and on
//! Go's `crypto/tls.(*Conn).Write` (`go_tls_write`, `PROBE_GO_TLS_WRITE`). The
//! buffer is taken at entry and sent at return with the bytes really written: node calls
//! `SSL_write` again with the same buffer while the handshake is not done, and only the
//! call that wrote counts. The socket is the fd of the write or send the library makes on
//! the same thread during the call (a socket BIO: python, curl); with a memory BIO (node)
//! there is none, the record carries fd -1, and the daemon ties it to the thread's next
//! socket write. The record goes through the write path (`PROBE_SSL_WRITE`,
//! `WRITE_F_TLS`), so scope, capture caps and cut counting are the same.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap},
    programs::{ProbeContext, RetProbeContext},
};
use leakwatch_common::*;

use crate::{
    maps::{self, BPF_F_NO_PREALLOC},
    payload::Head,
    scope,
    write::{handle, Src},
};

/// A call between entry and return (`len` 0: none).
#[repr(C)]
#[derive(Clone, Copy)]
struct TlsCall {
    buf: u64,
    len: u64,
    /// `SSL_write_ex`'s `size_t *written`; 0 for `SSL_write`.
    written: u64,
    /// The socket written during the call, or -1.
    fd: i32,
    _pad: u32,
}

/// A thread's TLS state: its call in progress, and where its return probe builds the
/// record. Not a per-CPU scratch: a uprobe program runs with preemption on (only migration
/// off), so on a preemptible kernel another task can run a write tracepoint, or this
/// return probe, on the same CPU mid-record. A thread runs one at a time.
#[repr(C)]
struct TlsThread {
    call: TlsCall,
    head: Head,
}

/// By thread id: made at the thread's first `SSL_write` in scope, kept until it exits
/// (`on_exit`), so a call costs lookups and no insert or delete. Not preallocated: the
/// limit's worth of entries would pin ~10 MB of kernel memory for the few threads that
/// use TLS; an entry is allocated once per thread.
#[map]
static TLS_THREADS: HashMap<u32, TlsThread> =
    HashMap::with_max_entries(TLS_THREADS_MAX, BPF_F_NO_PREALLOC);

/// Threads that have written through OpenSSL and live, at most; past it a call is lost
/// and counted.
const TLS_THREADS_MAX: u32 = 16384;

/// A zeroed `TlsThread`, what an entry starts as (too big for the 512-byte stack).
#[map]
static ZERO_THREAD: Array<TlsThread> = Array::with_max_entries(1, 0);

/// The exiting thread's entry goes (every thread exit on the host: for most, a lookup that
/// finds none).
#[inline(always)]
pub fn on_exit(tid: u32) {
    // Most threads never call SSL_write: a lookup is lock-free, a delete locks the bucket
    // before it looks.
    if TLS_THREADS.get_ptr(&tid).is_some() {
        let _ = TLS_THREADS.remove(&tid);
    }
}

#[inline(always)]
fn enter(buf: u64, len: u64, written: u64) {
    let Some(t) = thread(PROBE_SSL_WRITE) else {
        return;
    };
    // SAFETY: map value; only this thread uses its entry.
    let c = unsafe { &mut (*t).call };
    c.buf = buf;
    c.written = written;
    c.fd = -1;
    c.len = len;
}

/// The calling thread's entry, made at its first call, when its process is in scope
/// (counted as skipped when not). Marks the process `WHO_TLS`.
#[inline(always)]
fn thread(probe: u32) -> Option<*mut TlsThread> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if scope::own(tgid) {
        return None;
    }
    if scope::known_out(tgid) {
        maps::count(probe, STAT_SKIPPED);
        return None;
    }
    // Out of scope, the plaintext would be skipped at return; in scope, mark the process
    // so its socket writes look for the call (`note_socket`). Marked at every call: the
    // mark goes with the cached verdict (exec, eviction, new scope lists).
    let Some(who) = scope::in_scope(tgid) else {
        maps::count(probe, STAT_SKIPPED);
        return None;
    };
    // SAFETY: map value pointer returned by the lookup.
    unsafe { (*who).flags |= scope::WHO_TLS };
    let tid = id as u32;
    if let Some(t) = TLS_THREADS.get_ptr_mut(&tid) {
        return Some(t);
    }
    let zero = ZERO_THREAD.get(0)?;
    if TLS_THREADS.insert(&tid, zero, 0).is_err() {
        maps::count(probe, STAT_LOST);
        return None;
    }
    TLS_THREADS.get_ptr_mut(&tid)
}

/// Go's `func (c *crypto/tls.Conn) Write(b []byte) (int, error)`, at entry. Go (1.17 and
/// later) passes arguments in registers on x86-64: the receiver in RAX, `b`'s pointer and
/// length in RBX and RCX. No return probe: a uretprobe rewrites the return address on the
/// stack, which Go moves when it grows a goroutine's stack. So the whole buffer is sent
/// at entry (`Write` writes it all or fails with the connection). Its socket is read from
/// the `Conn` (`go_conn_fd`); `write::handle` keeps it only if it names a socket, and
/// otherwise sends -1, which the daemon ties to the thread's next socket write, as for
/// node's memory BIO. Unlike that pairing, the `Conn`'s fd stays right when the goroutine
/// moves to another thread before its write (it parks when the socket is full).
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the task's saved registers.
    let (conn, buf, len) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx) };
    if len == 0 || len > i64::MAX as u64 {
        return 0;
    }
    let fd = go_conn_fd(conn).unwrap_or(u32::MAX);
    let Some(t) = thread(PROBE_GO_TLS_WRITE) else {
        return 0;
    };
    handle(
        PROBE_GO_TLS_WRITE,
        fd,
        Src::Tls {
            ptr: buf,
            len,
            // SAFETY: map value, this thread's.
            frame: unsafe { &mut (*t).head },
        },
        -1,
        0,
        0,
    );
    0
}

/// The fd under a `*crypto/tls.Conn`, if its layout is the one every Go release since 1.9
/// has: the `Conn` begins with its `net.Conn` interface (type word, data word); for a
/// `*net.TCPConn` or `*net.UnixConn` the data points at a `conn` whose first word is the
/// `*netFD`, which begins with a `poll.FD`, whose `Sysfd` follows the 16-byte `fdMutex`.
/// Another `net.Conn` (a wrapper, as proxies and tracing libraries make) puts other
/// memory there, whose third word can be any number, another socket's fd included. So
/// the number counts only when the `poll.FD`'s poll descriptor agrees: its `runtimeCtx`
/// (at 24, or at 32 since Go 1.21 put `SysFile` before it) points at the runtime's
/// `pollDesc`, whose `fd` follows its `link` (in every Go the probe reads, 1.18 on). Else
/// the caller sends -1, which the daemon ties to the thread's next socket write. A
/// heuristic: a wrapper whose memory held both the number and such a pointer would pass.
fn go_conn_fd(conn: u64) -> Option<u32> {
    // SAFETY: bpf_probe_read_user checks every address.
    let read = |at: u64| unsafe { bpf_probe_read_user(at as *const u64) }.ok();
    let data = read(conn + 8)?;
    let netfd = read(data)?;
    let sysfd = read(netfd + 16)?;
    if sysfd >= 1 << 24 {
        return None;
    }
    for at in [24, 32] {
        let ctx = read(netfd + at).unwrap_or(0);
        if ctx != 0 && read(ctx + 8) == Some(sysfd) {
            return Some(sysfd as u32);
        }
    }
    None
}

/// `SSL_write(SSL *ssl, const void *buf, int num)`.
#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    let (buf, num): (u64, i32) = (ctx.arg(1).unwrap_or(0), ctx.arg(2).unwrap_or(0));
    if num > 0 {
        enter(buf, num as u64, 0);
    }
    0
}

/// `SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    let (buf, num, written): (u64, u64, u64) = (
        ctx.arg(1).unwrap_or(0),
        ctx.arg(2).unwrap_or(0),
        ctx.arg(3).unwrap_or(0),
    );
    if written != 0 {
        enter(buf, num, written);
    }
    0
}

/// Both return 1 or more on success: `SSL_write` the bytes written, `SSL_write_ex` 1 with
/// the count in `*written`.
#[uretprobe]
pub fn ssl_write_ret(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(t) = TLS_THREADS.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: map value; only this thread uses its entry. The call ends here.
    let c = unsafe {
        let c = (*t).call;
        (*t).call.len = 0;
        c
    };
    if c.len == 0 {
        return 0;
    }
    let rc: i64 = ctx.ret::<i32>() as i64;
    if rc <= 0 {
        return 0;
    }
    let n = if c.written != 0 {
        // SAFETY: user pointer; the helper checks it.
        unsafe { bpf_probe_read_user(c.written as *const u64) }.unwrap_or(0)
    } else {
        rc as u64
    };
    let n = if n > c.len { c.len } else { n };
    if n == 0 {
        return 0;
    }
    handle(
        PROBE_SSL_WRITE,
        c.fd as u32,
        Src::Tls {
            ptr: c.buf,
            len: n,
            // SAFETY: map value, this thread's.
            frame: unsafe { &mut (*t).head },
        },
        -1,
        0,
        0,
    );
    0
}

/// Called by the write probes for a socket write of a process in scope marked `WHO_TLS`:
/// if the thread is inside an `SSL_write`, this is its ciphertext, and the fd its socket.
/// True in that case.
#[inline(always)]
pub fn note_socket(tid: u32, fd: u32) -> bool {
    let Some(t) = TLS_THREADS.get_ptr_mut(&tid) else {
        return false;
    };
    // SAFETY: map value pointer returned by the lookup.
    let c = unsafe { &mut (*t).call };
    if c.len == 0 {
        return false;
    }
    if c.fd < 0 {
        c.fd = fd as i32;
    }
    c.fd == fd as i32
}
