//! A file read through `object`'s cache with a cap on what the cache may hold. The daemon
//! parses every file a process execs, as root: `object` keeps every table and every name
//! it reads until the look ends, and a crafted file can make a symbol walk read millions of
//! distinct names. Each read is counted with its allocation's overhead, and once the cap is
//! spent every read fails (the look finds nothing). Such a file is opened by `open_regular`.
use std::{cell::Cell, fs::File, ops::Range, path::Path};

use object::{read::ReadCache, ReadRef};

/// What one look may read: node's dynamic symbols and hash table take ~2.5 MB, a Go
/// program's symbol table walk ~2 MB.
pub const CAP: u64 = 64 << 20;
/// Files bigger than this are not looked into (the largest Go tool here is 122 MB, node
/// 99 MB).
const FILE_MAX: u64 = 512 << 20;
/// Counted for each read besides its bytes: the cache's allocation and map entry.
const OVERHEAD: u64 = 64;

pub struct Capped<'f> {
    cache: ReadCache<&'f File>,
    left: Cell<u64>,
}

impl<'f> Capped<'f> {
    /// A look into `file`, read with at most `CAP`: `None` unless it is a regular file of
    /// at most `FILE_MAX` bytes.
    pub fn look(file: &'f File) -> Option<Self> {
        let m = file.metadata().ok()?;
        (m.is_file() && m.len() <= FILE_MAX).then(|| Capped::new(file, CAP))
    }

    pub fn new(file: &'f File, cap: u64) -> Self {
        Capped {
            cache: ReadCache::new(file),
            left: Cell::new(cap),
        }
    }

    /// Takes `n` bytes (and the overhead) from what is left, or refuses and leaves nothing.
    fn take(&self, n: u64) -> Result<(), ()> {
        let cost = n.saturating_add(OVERHEAD);
        match self.left.get().checked_sub(cost) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.left.set(0);
                Err(())
            }
        }
    }
}

/// Opens `path` for reading only if it is a regular file, with its metadata. A path a
/// process exec'd may name a FIFO or a device by now: it is found with O_PATH, which opens
/// nothing (a FIFO's open waits for a writer, and opening a terminal or a device as root
/// can have side effects), and opened through that handle once it is a regular file, so
/// what was checked is what is read. `Err`: nothing could be found at `path`; `Ok(None)`:
/// not a regular file, or it could not be opened.
pub fn open_regular(path: &Path) -> std::io::Result<Option<(File, std::fs::Metadata)>> {
    use std::os::{fd::AsRawFd, unix::fs::OpenOptionsExt};
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)?;
    let Ok(m) = handle.metadata() else {
        return Ok(None);
    };
    if !m.is_file() {
        return Ok(None);
    }
    Ok(File::open(format!("/proc/self/fd/{}", handle.as_raw_fd()))
        .ok()
        .map(|f| (f, m)))
}

impl<'a> ReadRef<'a> for &'a Capped<'_> {
    fn len(self) -> Result<u64, ()> {
        (&self.cache).len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        // Counted before the cache allocates it.
        self.take(size)?;
        (&self.cache).read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        // Its length is known once it is read (the cache reads at most 4 KiB for one).
        if self.left.get() < OVERHEAD {
            return Err(());
        }
        let s = (&self.cache).read_bytes_at_until(range, delimiter)?;
        self.take(s.len() as u64)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_once_the_cap_is_spent() {
        let path = std::env::temp_dir().join(format!("leakwatch-capped-{}", std::process::id()));
        std::fs::write(&path, b"one\0two\0three\0").unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let c = Capped::new(&f, 2 * OVERHEAD + 10);
        let r = &c;
        assert_eq!(r.read_bytes_at_until(0..14, 0), Ok(&b"one"[..]));
        assert_eq!(r.read_bytes_at(4, 3), Ok(&b"two"[..]));
        // 4 bytes left: the next read is refused, and so is every one after.
        assert_eq!(r.read_bytes_at(8, 1), Err(()));
        assert_eq!(r.read_bytes_at(0, 0), Err(()));
        assert_eq!(r.len(), Ok(14));
    }
}
