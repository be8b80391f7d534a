//! What an fd of the current task refers to: `files->fdt->fd[fd]` -> `struct file` ->
//! identity (`FileId`), path (dentry walk across mounts, leaf first) and, for sockets, the
//! remote end. Offsets come from kernel BTF through loader-set globals; 0 = unknown.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_probe_read_kernel_str},
    macros::map,
    maps::PerCpuArray,
};
use leakwatch_common::*;

use crate::{
    span::Span,
    task::{self, global, kread},
};

macro_rules! offsets {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        static $name: u64 = 0;
    )*};
}
offsets!(
    OFF_FILES_FDT,
    OFF_FDT_MAX_FDS,
    OFF_FDT_FD,
    OFF_FILE_INODE,
    OFF_FILE_DENTRY,
    OFF_FILE_MNT,
    OFF_FILE_PRIVATE,
    OFF_FILE_POS,
    OFF_FILE_FLAGS,
    OFF_INODE_INO,
    OFF_INODE_MODE,
    OFF_INODE_SB,
    OFF_INODE_SIZE,
    OFF_SB_DEV,
    OFF_DENTRY_PARENT,
    OFF_DENTRY_NAME,
    OFF_DENTRY_NAME_LEN,
    OFF_MOUNT_MNT,
    OFF_MOUNT_PARENT,
    OFF_MOUNT_MOUNTPOINT,
    OFF_VFSMOUNT_ROOT,
    OFF_SOCKET_SK,
    OFF_SK_FAMILY,
    OFF_SK_DADDR,
    OFF_SK_DPORT,
    OFF_SK_NUM,
    OFF_SK_V6_DADDR
);

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
const O_APPEND: u32 = 0o2000;
const O_ACCMODE: u32 = 0o3;
const O_RDONLY: u32 = 0;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFIFO: u32 = 0o010000;

/// An open file as the write probes need it.
pub struct Open {
    pub id: FileId,
    pub inode: u64,
    pub dentry: u64,
    /// `struct vfsmount *` of the file's path.
    pub mnt: u64,
    pub private_data: u64,
    /// The fd table it was found in and that table's fd array.
    pub fdt: u64,
    pub arr: u64,
}

/// What stays fixed for an open file, as cached by the write probes per (tgid, fd).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Known {
    pub file: u64,
    pub inode: u64,
    pub ino: u64,
    pub private_data: u64,
    pub dev: u32,
    /// `i_mode` when cached: the file type of an inode never changes.
    pub mode: u32,
    /// `files->fdt` and its `fd` array when cached: while the task's table is still that
    /// one, the slot is read straight from the array (its bound was checked then).
    pub fdt: u64,
    pub arr: u64,
}

/// What `known` found at the fd.
pub enum Check {
    /// The same open file: `Open` with the cached facts (no dentry or mount).
    Same(Open),
    /// Another `struct file` (table, its array, file): resolve it with `resolve_file`,
    /// without reading the table again.
    Other(u64, u64, u64),
    /// Nothing there, or the offsets are unknown.
    Gone,
}

/// `fd` of the current task as `known` describes it, checked with the fewest reads:
/// the same `struct file`, inode and inode number (as `resolve` would compare them); the
/// cached mode stands (only its type is used, and that never changes).
#[inline(always)]
pub fn known(fd: u32, known: &Known) -> Check {
    let Some((fdt, arr, file)) = slot(fd, known) else {
        return Check::Gone;
    };
    if file != known.file {
        return Check::Other(fdt, arr, file);
    }
    let inode: u64 = kread(file + global(&OFF_FILE_INODE));
    if inode == 0 || inode != known.inode {
        return Check::Other(fdt, arr, file);
    }
    let ino: u64 = kread(inode + global(&OFF_INODE_INO));
    if ino != known.ino {
        return Check::Other(fdt, arr, file);
    }
    Check::Same(Open {
        id: FileId {
            file,
            ino,
            dev: known.dev,
            mode: known.mode,
        },
        inode,
        dentry: 0,
        mnt: 0,
        private_data: known.private_data,
        fdt,
        arr,
    })
}

/// `file(fd)`, two reads shorter while the task's fd table is the cached one.
#[inline(always)]
fn slot(fd: u32, known: &Known) -> Option<(u64, u64, u64)> {
    let files = task::files();
    if files == 0 || global(&OFF_FILE_INODE) == 0 {
        return None;
    }
    let fdt: u64 = kread(files + global(&OFF_FILES_FDT));
    if fdt == 0 || fdt != known.fdt || known.arr == 0 {
        return file(fd);
    }
    let file: u64 = kread(known.arr + fd as u64 * 8);
    (file != 0).then_some((fdt, known.arr, file))
}

/// `files->fdt->fd[fd]` of the current task with the table and its array, or `None`.
#[inline(always)]
fn file(fd: u32) -> Option<(u64, u64, u64)> {
    let files = task::files();
    if files == 0 || global(&OFF_FILE_INODE) == 0 {
        return None;
    }
    let fdt: u64 = kread(files + global(&OFF_FILES_FDT));
    if fdt == 0 {
        return None;
    }
    let max: u32 = kread(fdt + global(&OFF_FDT_MAX_FDS));
    if fd >= max {
        return None;
    }
    let arr: u64 = kread(fdt + global(&OFF_FDT_FD));
    let file: u64 = if arr == 0 {
        0
    } else {
        kread(arr + fd as u64 * 8)
    };
    if file == 0 {
        return None;
    }
    Some((fdt, arr, file))
}

/// `fd`'s `struct file` while the current task's fd table is still `fdt` (array `arr`,
/// where `fd` was in bounds): three reads. `None` otherwise. Its inode is not read: an
/// open file's inode never changes, so the same `struct file` still installed at `fd`
/// means the same inode.
#[inline(always)]
pub fn cached_file(fd: u32, fdt: u64, arr: u64) -> Option<u64> {
    let files = task::files();
    if files == 0 || arr == 0 {
        return None;
    }
    let cur: u64 = kread(files + global(&OFF_FILES_FDT));
    if cur == 0 || cur != fdt {
        return None;
    }
    let file: u64 = kread(arr + fd as u64 * 8);
    (file != 0).then_some(file)
}

/// `write_pos` when whether `file` appends is already known: one read.
#[inline(always)]
pub fn pos_of(file: u64, inode: u64, append: bool) -> Option<i64> {
    let off = if append {
        global(&OFF_INODE_SIZE)
    } else {
        global(&OFF_FILE_POS)
    };
    if off == 0 {
        return None;
    }
    Some(kread(if append { inode } else { file } + off))
}

/// Resolves `fd` of the current task; `None` if it is not open or offsets are unknown.
#[inline(always)]
pub fn resolve(lane: u32, fd: u32) -> Option<Open> {
    let (fdt, arr, file) = file(fd)?;
    Some(resolve_file(lane, fdt, arr, file))
}

/// Whether a program may use per-CPU buffers (`span::Span`): the tracepoints may (they run
/// with preemption off and never nest on a CPU); the TLS uprobe may not (it can be
/// preempted, and another program then runs on its CPU).
pub const LANE_TRACEPOINT: u32 = 0;
pub const LANE_UPROBE: u32 = 1;

#[inline(always)]
pub fn lane(probe: u32) -> u32 {
    if is_tls_plaintext(probe) {
        LANE_UPROBE
    } else {
        LANE_TRACEPOINT
    }
}

/// The open `file` found in table `fdt` (array `arr`), every fact read: three helper
/// calls (the file's fields, the inode's, the device) instead of eight.
#[inline(always)]
pub fn resolve_file(lane: u32, fdt: u64, arr: u64, file: u64) -> Open {
    let (off_inode, off_dentry, off_mnt, off_private) = (
        global(&OFF_FILE_INODE),
        global(&OFF_FILE_DENTRY),
        global(&OFF_FILE_MNT),
        global(&OFF_FILE_PRIVATE),
    );
    let f = Span::read(
        lane,
        0,
        file,
        &[off_inode, off_dentry, off_mnt, off_private],
    );
    let inode: u64 = f.get(off_inode);
    let mut id = FileId {
        file,
        ..Default::default()
    };
    if inode != 0 {
        let (off_ino, off_mode, off_sb) = (
            global(&OFF_INODE_INO),
            global(&OFF_INODE_MODE),
            global(&OFF_INODE_SB),
        );
        let i = Span::read(lane, 1, inode, &[off_ino, off_mode, off_sb]);
        id.ino = i.get(off_ino);
        id.mode = i.get::<u16>(off_mode) as u32;
        let sb: u64 = i.get(off_sb);
        if sb != 0 {
            id.dev = kread(sb + global(&OFF_SB_DEV));
        }
    }
    Open {
        id,
        inode,
        dentry: f.get(off_dentry),
        mnt: f.get(off_mnt),
        private_data: f.get(off_private),
        fdt,
        arr,
    }
}

/// `file` was opened for writing (`O_WRONLY` or `O_RDWR`); false when unknown.
#[inline(always)]
pub fn writable(file: u64) -> bool {
    let off = global(&OFF_FILE_FLAGS);
    if off == 0 || file == 0 {
        return false;
    }
    let f: u32 = kread(file + off);
    f & O_ACCMODE != O_RDONLY
}

/// Where a `write` on `file` lands: the end of the file with O_APPEND, else the file
/// position. Read at entry, so writers racing on one file may be off by the other's length
/// (the daemon reads across such gaps). With whether it appends; `None` when the offsets
/// are unknown.
#[inline(always)]
pub fn write_pos(file: u64, inode: u64) -> Option<(i64, bool)> {
    let (pos, flags, size) = (
        global(&OFF_FILE_POS),
        global(&OFF_FILE_FLAGS),
        global(&OFF_INODE_SIZE),
    );
    if pos == 0 || flags == 0 || size == 0 {
        return None;
    }
    let f: u32 = kread(file + flags);
    Some(if f & O_APPEND != 0 {
        (kread(inode + size), true)
    } else {
        (kread(file + pos), false)
    })
}

/// Remote end of a socket file (`private_data` is its `struct socket`): two helper calls,
/// the socket's `sk` and the fields of its `sock_common`.
#[inline(always)]
pub fn sock_peer(lane: u32, private_data: u64) -> Option<Peer> {
    if private_data == 0 || global(&OFF_SOCKET_SK) == 0 {
        return None;
    }
    let sk: u64 = kread(private_data + global(&OFF_SOCKET_SK));
    if sk == 0 {
        return None;
    }
    let (off_family, off_dport, off_num, off_daddr, off_v6) = (
        global(&OFF_SK_FAMILY),
        global(&OFF_SK_DPORT),
        global(&OFF_SK_NUM),
        global(&OFF_SK_DADDR),
        global(&OFF_SK_V6_DADDR),
    );
    // The IPv6 address is read on its own (16 bytes, and only for IPv6).
    let c = Span::read(lane, 0, sk, &[off_family, off_dport, off_num, off_daddr]);
    let mut p = Peer {
        family: c.get(off_family),
        ..Default::default()
    };
    match p.family {
        AF_INET | AF_INET6 => {
            p.port = u16::from_be(c.get(off_dport));
            p.lport = c.get(off_num);
            if p.family == AF_INET {
                let a: u32 = c.get(off_daddr);
                p.addr[..4].copy_from_slice(&a.to_ne_bytes());
            } else if off_v6 != 0 {
                p.addr = kread(sk + off_v6);
            }
        }
        AF_UNIX => {}
        _ => return None,
    }
    Some(p)
}

/// Path walk: state + the components, leaf first. Per-CPU; `PATH_SLACK` lets each component
/// read use a constant size at a bounded offset.
#[repr(C)]
pub struct PathBuf {
    dentry: u64,
    /// `struct mount *` (not vfsmount).
    mount: u64,
    off: u64,
    depth: u64,
    done: u64,
    partial: u64,
    pub buf: [u8; WRITE_PATH_MAX + PATH_SLACK],
}

const PATH_SLACK: usize = 256;

#[map]
static PATH: PerCpuArray<PathBuf> = PerCpuArray::with_max_entries(1, 0);

/// Walks `dentry`'s names (of the path `dentry` on `mnt`, a `struct vfsmount *`) up to the root of the task's mount tree. Returns the buffer and
/// its length and whether it was cut (depth or byte limit).
#[inline(always)]
pub fn path(dentry: u64, mnt: u64) -> Option<(*const u8, u32, bool)> {
    let p = PATH.get_ptr_mut(0)?;
    let off_mnt = global(&OFF_MOUNT_MNT);
    if dentry == 0 || mnt == 0 || global(&OFF_DENTRY_PARENT) == 0 {
        return None;
    }
    // SAFETY: this CPU's value.
    let s = unsafe { &mut *p };
    s.dentry = dentry;
    // vfsmount is embedded in struct mount: container_of.
    s.mount = mnt - off_mnt;
    s.off = 0;
    s.depth = 0;
    s.done = 0;
    s.partial = 0;
    // Crossing a mount takes a step without a component: allow twice the depth.
    // SAFETY: static callback that ignores its context.
    unsafe {
        bpf_loop(
            WRITE_PATH_DEPTH * 2,
            path_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    // SAFETY: as above.
    let s = unsafe { &*p };
    let len = if s.off > WRITE_PATH_MAX as u64 {
        WRITE_PATH_MAX as u64
    } else {
        s.off
    };
    Some((s.buf.as_ptr(), len as u32, s.done == 0 || s.partial != 0))
}

#[inline(never)]
unsafe extern "C" fn path_step(_i: u32, _ctx: *mut c_void) -> i64 {
    let Some(p) = PATH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's value.
    let s = unsafe { &mut *p };
    let vfs = s.mount + global(&OFF_MOUNT_MNT);
    let root: u64 = kread(vfs + global(&OFF_VFSMOUNT_ROOT));
    let parent: u64 = kread(s.dentry + global(&OFF_DENTRY_PARENT));
    if s.dentry == root || s.dentry == parent || parent == 0 {
        let up: u64 = kread(s.mount + global(&OFF_MOUNT_PARENT));
        if up == s.mount || up == 0 {
            s.done = 1;
            return 1;
        }
        // Continue from the mountpoint, in the parent mount.
        s.dentry = kread(s.mount + global(&OFF_MOUNT_MOUNTPOINT));
        s.mount = up;
        return 0;
    }
    if s.depth >= WRITE_PATH_DEPTH as u64 {
        s.partial = 1;
        return 1;
    }
    let name: u64 = kread(s.dentry + global(&OFF_DENTRY_NAME));
    let len: u32 = kread(s.dentry + global(&OFF_DENTRY_NAME_LEN));
    if s.off + len as u64 + 1 > WRITE_PATH_MAX as u64 {
        s.partial = 1;
        return 1;
    }
    let at = s.off;
    if at >= WRITE_PATH_MAX as u64 {
        return 1;
    }
    // SAFETY: at < WRITE_PATH_MAX and the buffer has PATH_SLACK bytes after it.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            s.buf.as_mut_ptr().add(at as usize) as *mut c_void,
            PATH_SLACK as u32,
            name as *const c_void,
        )
    };
    if n <= 0 {
        s.partial = 1;
        return 1;
    }
    s.off += n as u64;
    s.depth += 1;
    s.dentry = parent;
    0
}
