//! How full a ring buffer is, for `leakwatch_ring_fill_ratio`: the kernel's producer and
//! consumer positions, read from a read-only mapping of the ring's two control pages
//! (aya does not expose them). A second mapping is allowed and costs nothing while unread.
use std::os::fd::RawFd;

use anyhow::{bail, Result};

pub struct RingFill {
    pub name: &'static str,
    cons: *mut libc::c_void,
    prod: *mut libc::c_void,
    page: usize,
    size: u64,
}

// SAFETY: the mappings are read-only and only read with atomic loads.
unsafe impl Send for RingFill {}
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the control pages of the ring map `fd` of `size` data bytes.
    pub fn new(name: &'static str, fd: RawFd, size: u64) -> Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map = |off: usize| {
            // SAFETY: a fresh read-only shared mapping of one page of the map fd.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    page,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    off as libc::off_t,
                )
            };
            (p != libc::MAP_FAILED).then_some(p)
        };
        let (Some(cons), Some(prod)) = (map(0), map(page)) else {
            bail!(
                "mapping the {name} ring's positions failed: {}",
                std::io::Error::last_os_error()
            );
        };
        Ok(RingFill {
            name,
            cons,
            prod,
            page,
            size,
        })
    }

    /// Bytes written and not yet consumed, as a fraction of the ring.
    pub fn ratio(&self) -> f64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        // SAFETY: each page starts with the kernel's u64 position, 8-byte aligned.
        let (c, p) = unsafe {
            (
                (*(self.cons as *const AtomicU64)).load(Ordering::Acquire),
                (*(self.prod as *const AtomicU64)).load(Ordering::Acquire),
            )
        };
        p.saturating_sub(c) as f64 / self.size as f64
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: our own mappings, unmapped once.
        unsafe {
            libc::munmap(self.cons, self.page);
            libc::munmap(self.prod, self.page);
        }
    }
}
