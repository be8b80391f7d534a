//! A table inside a file, read a window at a time. Go's function table is tens of MB
//! (terraform's 25, anthoscli's 36) and the daemon looks into every Go program that
//! starts: read whole, one look raised the daemon's memory by as much for a moment. Walked
//! in the order Go's linker lays it out, a few windows of it are enough.
use std::{fs::File, os::unix::fs::FileExt};

/// Bytes one read brings in, and the most one `get` may ask for.
pub const WINDOW: usize = 256 << 10;

/// A table's bytes by offset: held in memory, or read from a file.
pub trait Table: Clone {
    fn len(&self) -> usize;
    /// `n` bytes at `off` (`n` <= `WINDOW`), or `None` past the end or on a read error.
    fn get(&mut self, off: usize, n: usize) -> Option<&[u8]>;
}

impl Table for &[u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    fn get(&mut self, off: usize, n: usize) -> Option<&[u8]> {
        <[u8]>::get(self, off..off.checked_add(n)?)
    }
}

/// `len` bytes of `file` from `base`, one window of them held at a time.
#[derive(Clone)]
pub struct Window<'f> {
    file: &'f File,
    base: u64,
    len: usize,
    /// What `buf` holds: the table's bytes from `start`.
    start: usize,
    buf: Vec<u8>,
    /// Bytes read so far, and the most this window reads: a table walked out of the
    /// linker's order would be read again and again, so the walk gives up instead.
    read: usize,
    budget: usize,
}

impl<'f> Window<'f> {
    pub fn new(file: &'f File, base: u64, len: usize) -> Self {
        Window {
            file,
            base,
            len,
            start: 0,
            buf: Vec::new(),
            read: 0,
            budget: len.saturating_mul(2).saturating_add(4 * WINDOW),
        }
    }
}

impl Table for Window<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&mut self, off: usize, n: usize) -> Option<&[u8]> {
        let end = off.checked_add(n)?;
        if n > WINDOW || end > self.len {
            return None;
        }
        if off < self.start || end > self.start + self.buf.len() {
            let take = WINDOW.min(self.len - off);
            self.read += take;
            if self.read > self.budget {
                return None;
            }
            self.buf.resize(take, 0);
            let at = self.base.checked_add(off as u64)?;
            if self.file.read_exact_at(&mut self.buf, at).is_err() {
                // Nothing held: the old bytes were overwritten.
                self.buf.clear();
                return None;
            }
            self.start = off;
        }
        self.buf.get(off - self.start..end - self.start)
    }
}

/// Offsets from `from` of `needle` in `[from, to)` of `t`, read a window at a time, at most
/// `max` of them. With `cstr`, only where it stands as a whole C string: at `from` or after
/// a NUL (a match must end in its own NUL: put one in `needle`). `None` on a read error.
pub fn find<T: Table>(
    t: &mut T,
    (from, to): (usize, usize),
    needle: &[u8],
    cstr: bool,
    max: usize,
) -> Option<Vec<usize>> {
    let finder = memchr::memmem::Finder::new(needle);
    let mut found = Vec::new();
    // Where the matches this turn looks at may start; the byte before it comes along.
    let mut pos = from;
    while !needle.is_empty() && needle.len() <= WINDOW / 2 {
        let lead = usize::from(pos > from);
        let start = pos - lead;
        let n = WINDOW.min(to.saturating_sub(start));
        if n < needle.len() + lead {
            break;
        }
        let chunk = t.get(start, n)?;
        for i in finder.find_iter(&chunk[lead..]) {
            if !cstr || pos + i == from || chunk[lead + i - 1] == 0 {
                found.push(pos + i - from);
                if found.len() == max {
                    return Some(found);
                }
            }
        }
        if start + n >= to {
            break;
        }
        // A match starting from here on may run past this window's end.
        pos = start + n - (needle.len() - 1);
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "leakwatch-window-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    /// Needles across every window boundary, at the region's start and end, and one
    /// standing inside a longer string: the file's windows find what the bytes in memory
    /// find.
    #[test]
    fn matches_across_windows_are_found_once_each() {
        let mut data = vec![b'x'; 3 * WINDOW + 1000];
        let mut at = vec![0usize];
        for w in 1..=3 {
            at.push(w * WINDOW - 5);
        }
        at.push(data.len() - 6);
        for &a in &at {
            data[a..a + 6].copy_from_slice(b"\0name\0");
        }
        // Not a C string of its own: no NUL before it.
        data[WINDOW + 100..WINDOW + 105].copy_from_slice(b"name\0");
        let base = 17u64;
        let mut padded = vec![0xff; base as usize];
        padded.extend_from_slice(&data);
        let f = temp(&padded);
        let mut w = Window::new(&f, base, data.len());
        let whole = (0, data.len());
        let want: Vec<usize> = at.iter().map(|a| a + 1).collect();
        assert_eq!(find(&mut w, whole, b"name\0", true, 16), Some(want.clone()));
        assert_eq!(find(&mut &data[..], whole, b"name\0", true, 16), Some(want));
        let all = find(&mut w, whole, b"name\0", false, 16).unwrap();
        assert_eq!(all.len(), 6, "{all:?}");
        assert_eq!(find(&mut w, whole, b"name\0", false, 2).unwrap().len(), 2);
        // From inside a match's string: a start mid-region counts as a C string's start.
        assert_eq!(
            find(&mut w, (WINDOW + 100, data.len()), b"name\0", true, 1),
            Some(vec![0])
        );
    }

    #[test]
    fn a_window_reads_no_further_than_its_table_and_its_budget() {
        let data: Vec<u8> = (0..WINDOW * 2).map(|i| i as u8).collect();
        let f = temp(&data);
        let mut w = Window::new(&f, 10, 100);
        assert_eq!(w.get(90, 10), Some(&data[100..110]));
        assert_eq!(w.get(95, 10), None);
        assert_eq!(w.get(0, WINDOW + 1), None);
        // Past the file's end: a read error, and nothing stale kept.
        let mut w = Window::new(&f, (WINDOW * 2 - 4) as u64, 8);
        assert_eq!(w.get(0, 8), None);
        assert_eq!(w.get(0, 4), None);
        // Back and forth over a big table: given up after twice its length and change.
        let mut w = Window::new(&f, 0, WINDOW * 2);
        let mut turns = 0;
        while w.get(0, 1).is_some() && w.get(WINDOW * 2 - 1, 1).is_some() {
            turns += 1;
            assert!(turns < 100);
        }
        assert!(turns >= 4, "{turns}");
    }
}
