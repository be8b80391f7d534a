//! Connect records: the destination a process asked `connect` for (every process, whatever
//! the scope), and how a kernel `Peer` reads as `ip:port`.
use std::net::Ipv6Addr;

use anyhow::{bail, Result};
use leakwatch_common::*;

use super::Task;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    pub task: Task,
    pub fd: i32,
    pub peer: Peer,
    /// Repeats of an earlier connect of the process that the kernel folded.
    pub folded: Option<Folded>,
    /// The record carries only `folded` (the process exec'd or exited): no connect of its
    /// own, `fd` and `peer` are empty.
    pub folds_only: bool,
}

/// Connects the kernel counted instead of sending: each repeated the process's last
/// record on `fd` (to `peer`) within `CONNECT_FOLD_NS` of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Folded {
    pub count: u32,
    pub fd: i32,
    pub peer: Peer,
    /// How long before this record the first and the last of them were made, in ns.
    pub first_ago_ns: u64,
    pub last_ago_ns: u64,
}

impl Folded {
    /// `count` repeats of `fd` to `peer`, the first and last at `first_ns` and `last_ns`
    /// (ktime), seen at `at_ns`. A first time of 0 (a repeat folded while its slot was
    /// being carried, its own time unknown): the last stands in.
    pub fn of(
        count: u64,
        fd: i32,
        peer: Peer,
        (first_ns, last_ns): (u64, u64),
        at_ns: u64,
    ) -> Folded {
        let first_ns = if first_ns == 0 { last_ns } else { first_ns };
        Folded {
            count: count.min(u32::MAX.into()) as u32,
            fd,
            peer,
            first_ago_ns: at_ns.saturating_sub(first_ns),
            last_ago_ns: at_ns.saturating_sub(last_ns),
        }
    }
}

pub(super) fn decode(rec: &[u8]) -> Result<ConnectEvent> {
    let Some(c) = leakwatch_common::ConnectEvent::read(rec) else {
        bail!("short connect record")
    };
    let folded = (c.folded > 0).then(|| {
        let times = (c.prev_first_ns, c.prev_last_ns);
        Folded::of(c.folded.into(), c.prev_fd, c.prev, times, c.hdr.ktime_ns)
    });
    Ok(ConnectEvent {
        task: Task::from_header(&c.hdr),
        fd: c.fd,
        peer: c.peer,
        folded,
        folds_only: c.flags & CONNECT_FOLDS_ONLY != 0,
    })
}

/// `1.2.3.4:443`, `[::1]:8080`, `unix`; None for other families.
pub fn format_peer(p: &Peer) -> Option<String> {
    match p.family {
        AF_INET => Some(v4_port(
            [p.addr[0], p.addr[1], p.addr[2], p.addr[3]],
            p.port,
        )),
        AF_INET6 => {
            let a = Ipv6Addr::from(p.addr);
            match a.to_ipv4_mapped() {
                Some(v4) => Some(v4_port(v4.octets(), p.port)),
                None => Some(format!("[{a}]:{}", p.port)),
            }
        }
        AF_UNIX => Some("unix".into()),
        _ => None,
    }
}

/// `a.b.c.d:port` written digit by digit: every connect on the host is named this way,
/// and `format!` through `Ipv4Addr`'s `Display` took a sixth of the daemon's CPU in a
/// connect storm.
fn v4_port(a: [u8; 4], port: u16) -> String {
    let mut s = String::with_capacity(21);
    for (i, o) in a.into_iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        push_decimal(&mut s, o.into());
    }
    s.push(':');
    push_decimal(&mut s, port.into());
    s
}

fn push_decimal(s: &mut String, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_carries_its_folded_repeats_and_a_folds_only_record_is_no_connect() {
        let mut c = leakwatch_common::ConnectEvent {
            fd: 5,
            folded: 40,
            prev_fd: 5,
            prev_first_ns: 2_000,
            prev_last_ns: 9_000,
            ..Default::default()
        };
        c.hdr.ktime_ns = 10_000;
        c.prev.family = AF_INET;
        c.prev.port = 443;
        let e = decode(&super::super::record(c, &[])).unwrap();
        let f = e.folded.expect("folded repeats");
        assert_eq!((f.count, f.fd, f.peer.port), (40, 5, 443));
        assert_eq!((f.first_ago_ns, f.last_ago_ns), (8_000, 1_000));
        assert!(!e.folds_only);
        // A repeat folded while the slot was carried has no first time: the last stands in.
        c.prev_first_ns = 0;
        c.flags = CONNECT_FOLDS_ONLY;
        let e = decode(&super::super::record(c, &[])).unwrap();
        assert_eq!(e.folded.unwrap().first_ago_ns, 1_000);
        assert!(e.folds_only);
        c.folded = 0;
        assert_eq!(decode(&super::super::record(c, &[])).unwrap().folded, None);
    }

    #[test]
    fn peers_read_as_ip_port() {
        let mut p = Peer {
            family: AF_INET,
            port: 8080,
            ..Default::default()
        };
        p.addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(format_peer(&p).as_deref(), Some("127.0.0.1:8080"));
        let mut q = Peer {
            family: AF_INET6,
            port: 443,
            ..Default::default()
        };
        q.addr[15] = 1;
        assert_eq!(format_peer(&q).as_deref(), Some("[::1]:443"));
        q.addr[10] = 0xff;
        q.addr[11] = 0xff;
        q.addr[12..].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(format_peer(&q).as_deref(), Some("10.0.0.2:443"));
        assert_eq!(format_peer(&Peer::default()), None);
    }

    #[test]
    fn ipv4_peers_read_as_std_formats_them() {
        let octets = [0u8, 1, 9, 10, 99, 100, 199, 200, 255];
        for (i, &a) in octets.iter().enumerate() {
            for port in [0u16, 1, 9, 10, 80, 443, 8080, 9999, 10000, 65535] {
                let o = [
                    a,
                    octets[(i + 3) % 9],
                    octets[(i + 5) % 9],
                    octets[(i + 7) % 9],
                ];
                let want = format!("{}:{port}", std::net::Ipv4Addr::from(o));
                assert_eq!(v4_port(o, port), want);
            }
        }
    }
}
