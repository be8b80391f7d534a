//! Typed events decoded from kernel ring-buffer records, one module per probe family. Every
//! record starts with the common `EventHeader`; its `kind` picks the family decoder.
//! Decoding never panics on malformed input: a short or inconsistent record is an error the
//! daemon counts and survives.
mod comm;
mod connect;
mod copy;
mod exec;
mod write;

use anyhow::{bail, Result};
use leakwatch_common::*;

pub use comm::Comm;
pub use connect::{format_peer, ConnectEvent, Folded};
pub use copy::{CopyEnd, CopyEvent, CoreEvent};
pub use exec::{EnforceNotice, ExecEvent, Strings};
pub use leakwatch_common::PROBE_COUNT;
pub use write::{FileKind, WriteEvent};

/// Who did it: the common header, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Thread id.
    pub pid: u32,
    /// Process id.
    pub tgid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: Comm,
    pub probe: u32,
    pub flags: u32,
}

impl Task {
    fn from_header(h: &EventHeader) -> Task {
        Task {
            pid: h.pid,
            tgid: h.tgid,
            ppid: h.ppid,
            uid: h.uid,
            gid: h.gid,
            cgroup_id: h.cgroup_id,
            ktime_ns: h.ktime_ns,
            comm: Comm::from_kernel(&h.comm),
            probe: h.probe,
            flags: h.flags,
        }
    }

    /// The probe's tracepoint name (metric label).
    pub fn probe_name(&self) -> &'static str {
        probe_name(self.probe)
    }
}

pub fn probe_name(probe: u32) -> &'static str {
    PROBE_NAMES
        .get(probe as usize)
        .copied()
        .unwrap_or("unknown")
}

#[derive(Debug)]
pub enum Event {
    Exec(ExecEvent),
    Enforce(EnforceNotice),
    Write(WriteEvent),
    Connect(ConnectEvent),
    Core(CoreEvent),
    Copy(CopyEvent),
}

impl Event {
    pub fn task(&self) -> &Task {
        match self {
            Event::Exec(e) => &e.task,
            Event::Enforce(n) => &n.task,
            Event::Write(w) => &w.task,
            Event::Connect(c) => &c.task,
            Event::Core(c) => &c.task,
            Event::Copy(c) => &c.task,
        }
    }

    /// When the kernel saw it (CLOCK_MONOTONIC ns): orders records from different rings.
    pub fn ktime(&self) -> u64 {
        self.task().ktime_ns
    }
}

/// The kernel's `s_dev` (major in the top 12 bits, minor in the low 20) as `stat`'s
/// `st_dev` encodes it.
pub fn user_dev(kdev: u32) -> u64 {
    libc::makedev(kdev >> 20, kdev & 0xf_ffff)
}

/// Does a userspace `st_dev` name the device the kernel recorded as `s_dev`? A kernel 0
/// (not read) matches any.
pub fn same_dev(kdev: u32, st_dev: u64) -> bool {
    kdev == 0 || user_dev(kdev) == st_dev
}

/// Now on the clock of the kernel's `ktime_ns` (CLOCK_MONOTONIC), in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Decodes one ring-buffer record.
pub fn decode(rec: &[u8]) -> Result<Event> {
    let Some(h) = EventHeader::read(rec) else {
        bail!("record of {} bytes is shorter than its header", rec.len())
    };
    if h.probe >= PROBE_COUNT {
        bail!("record names unknown probe {}", h.probe);
    }
    match h.kind {
        EVENT_EXEC => exec::decode_exec(rec).map(Event::Exec),
        EVENT_ENFORCE => exec::decode_enforce(rec).map(Event::Enforce),
        EVENT_WRITE => write::decode(rec).map(Event::Write),
        EVENT_CONNECT => connect::decode(rec).map(Event::Connect),
        EVENT_CORE => copy::decode_core(rec).map(Event::Core),
        EVENT_COPY => copy::decode_copy(rec).map(Event::Copy),
        k => bail!("unknown record kind {k}"),
    }
}

#[cfg(test)]
pub(crate) fn record<T: Copy>(h: T, tail: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; std::mem::size_of::<T>()];
    // SAFETY: v has room for the header; unaligned write of a POD value.
    unsafe { std::ptr::write_unaligned(v.as_mut_ptr() as *mut T, h) };
    v.extend_from_slice(tail);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_device_numbers_convert_to_stat_ones() {
        // sda1 (8:1) and an extended minor (259:65536).
        assert_eq!(user_dev((8 << 20) | 1), libc::makedev(8, 1));
        assert_eq!(user_dev((259 << 20) | 65536), libc::makedev(259, 65536));
        assert!(same_dev((8 << 20) | 1, libc::makedev(8, 1)));
        assert!(!same_dev((8 << 20) | 1, libc::makedev(8, 2)));
        assert!(same_dev(0, libc::makedev(8, 2)));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        assert!(decode(&[1, 0]).is_err());
        let h = EventHeader {
            kind: 99,
            ..Default::default()
        };
        assert!(decode(&record(h, b"")).is_err());
        let h = EventHeader {
            kind: EVENT_WRITE,
            probe: PROBE_COUNT,
            ..Default::default()
        };
        assert!(decode(&record(h, b"")).is_err());
    }
}
