//! Connect records: the destination a process asked `connect` for (every process, whatever
//! the scope), and how a kernel `Peer` reads as `ip:port`.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Result};
use leakwatch_common::*;

use super::Task;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub task: Task,
    pub fd: i32,
    pub peer: Peer,
}

pub(super) fn decode(rec: &[u8]) -> Result<ConnectEvent> {
    let Some(c) = leakwatch_common::ConnectEvent::read(rec) else {
        bail!("short connect record")
    };
    Ok(ConnectEvent {
        task: Task::from_header(&c.hdr),
        fd: c.fd,
        peer: c.peer,
    })
}

/// `1.2.3.4:443`, `[::1]:8080`, `unix`; None for other families.
pub fn format_peer(p: &Peer) -> Option<String> {
    match p.family {
        AF_INET => {
            let a = Ipv4Addr::new(p.addr[0], p.addr[1], p.addr[2], p.addr[3]);
            Some(format!("{a}:{}", p.port))
        }
        AF_INET6 => {
            let a = Ipv6Addr::from(p.addr);
            match a.to_ipv4_mapped() {
                Some(v4) => Some(format!("{v4}:{}", p.port)),
                None => Some(format!("[{a}]:{}", p.port)),
            }
        }
        AF_UNIX => Some("unix".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
