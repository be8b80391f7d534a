//! A holder's TCP connections read from its own sockets: each socket fd is duplicated into
//! the daemon (pidfd_getfd, Linux 5.6+, CAP_SYS_PTRACE) and asked for its state and both
//! addresses. The sever then destroys each by an exact lookup. A SOCK_DIAG dump walks the
//! kernel's whole TCP hash table, ~2 ms per address family on this host even with no
//! sockets, which was most of a one-holder freeze's sever.
use std::{
    io,
    mem::{size_of, MaybeUninit},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::{pidfd, sever::TcpSock};

const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;

/// The TCP connections among `sockets` (fd number, socket inode) of the holder `h`
/// (its pidfd, opened and checked by the sweep). None when one of them could not be read
/// this way (no pidfd, no permission, a connection still opening): the caller then finds
/// them with a dump.
pub fn tcp_of(h: &pidfd::Target, sockets: &[(i32, u32)]) -> Option<Vec<TcpSock>> {
    let pidfd = h.fd()?;
    let mut out = Vec::new();
    for &(fd, inode) in sockets {
        // SAFETY: pidfd_getfd on a pidfd we own; returns a new fd or -1.
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if dup < 0 {
            match io::Error::last_os_error().raw_os_error() {
                // Closed since the fd table was read: nothing to cut.
                Some(libc::EBADF) => continue,
                _ => return None,
            }
        }
        // SAFETY: a fresh fd this function owns.
        let s = unsafe { OwnedFd::from_raw_fd(dup as i32) };
        if let Some(c) = connection(&s, inode)? {
            out.push(c);
        }
    }
    Some(out)
}

/// Some(None): not a TCP connection to cut (another protocol, listening, closed).
/// None: a TCP socket whose addresses cannot be read (still connecting).
fn connection(s: &OwnedFd, inode: u32) -> Option<Option<TcpSock>> {
    let domain: i32 = opt(s, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let proto: i32 = opt(s, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
    if !matches!(domain, libc::AF_INET | libc::AF_INET6) || proto != libc::IPPROTO_TCP {
        return Some(None);
    }
    // tcp_info begins with the state byte.
    let info: [u8; 8] = opt(s, libc::IPPROTO_TCP, libc::TCP_INFO)?;
    let state = info[0];
    if state == TCP_LISTEN || state == TCP_CLOSE {
        return Some(None);
    }
    let local = name(s, libc::getsockname)?;
    let remote = name(s, libc::getpeername)?;
    Some(Some(TcpSock::connected(inode, state, local, remote)))
}

fn opt<T: Copy>(s: &OwnedFd, level: i32, name: i32) -> Option<T> {
    let mut v = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: v is valid for len bytes; the kernel writes at most len.
    let r =
        unsafe { libc::getsockopt(s.as_raw_fd(), level, name, v.as_mut_ptr().cast(), &mut len) };
    // SAFETY: zero-initialised POD, possibly partly written by the kernel.
    (r == 0).then(|| unsafe { v.assume_init() })
}

type NameFn = unsafe extern "C" fn(i32, *mut libc::sockaddr, *mut libc::socklen_t) -> i32;

fn name(s: &OwnedFd, f: NameFn) -> Option<SocketAddr> {
    // SAFETY: sockaddr_storage is POD; zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: ss valid for len bytes.
    if unsafe {
        f(
            s.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel filled a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel filled a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((&ss as *const libc::sockaddr_storage).cast()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}
