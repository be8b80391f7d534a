//! A table inside a file, read a window at a time. Go's function table is tens of MB
//! (terraform's 25, anthoscli's 36) and the daemon looks into every Go program that
//! starts: read whole, one look raised the daemon's memory by as much for a moment. Walked
//! in the order Go's linker lays it out, it is still read through, but only a few windows
//! of it are held at once.
use std::{fs::File, os::unix::fs::FileExt};

/// Bytes one read brings in, and the most one `get` may ask for.
pub const WINDOW: usize = 256 << 10;

/// A table's bytes by offset: held in memory, or read from a file.
pub trait Table: Clone {
    fn len(&self) -> usize;
    /// `n` bytes at `off` (`n` <= `WINDOW`), or `None` past the end, on a read error, or
    /// (a file's) once its read budget is spent.
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
    /// Bytes read so far, and the most this window reads (twice the table, and four
    /// windows): a table walked out of the linker's order would be read again and again,
    /// so the walk gives up instead.
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
/// `max` (> 0) of them. With `cstr`, only where it stands as a whole C string: at `from`
/// or after a NUL (a match must end in its own NUL: put one in `needle`). A needle empty
/// or longer than half a window is never found. `None` on a read error.
pub fn find<T: Table>(
    t: &mut T,
    range: (usize, usize),
    needle: &[u8],
    cstr: bool,
    max: usize,
) -> Option<Vec<usize>> {
    find_by(t, range, needle, cstr, max, WINDOW)
}

/// `find`, reading `step` bytes a turn (tests use small steps).
fn find_by<T: Table>(
    t: &mut T,
    (from, to): (usize, usize),
    needle: &[u8],
    cstr: bool,
    max: usize,
    step: usize,
) -> Option<Vec<usize>> {
    let finder = memchr::memmem::Finder::new(needle);
    let mut found = Vec::new();
    // Where the matches this turn looks at may start; the byte before it comes along.
    let mut pos = from;
    while !needle.is_empty() && needle.len() <= step / 2 {
        let lead = usize::from(pos > from);
        let start = pos - lead;
        let n = step.min(to.saturating_sub(start));
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

    /// Every placement of a needle in a small region, read a few bytes a turn, against a
    /// plain search of the bytes: each match once, across every turn's edge, and the C
    /// string check at the region's start and after a NUL.
    #[test]
    fn every_match_is_found_once_whatever_turn_it_crosses() {
        let needle = b"ab\0";
        for step in [6, 7, 8, 13] {
            for at in 0..40 {
                for before in [b'x', 0] {
                    let mut data = vec![b'x'; 40 + needle.len()];
                    data[at..at + needle.len()].copy_from_slice(needle);
                    if at > 0 {
                        data[at - 1] = before;
                    }
                    for from in [0, 1, at.saturating_sub(1), at] {
                        let to = data.len();
                        let plain: Vec<usize> = memchr::memmem::find_iter(&data[from..], needle)
                            .filter(|&i| i == 0 || data[from + i - 1] == 0)
                            .collect();
                        let got = find_by(&mut &data[..], (from, to), needle, true, 16, step);
                        assert_eq!(got, Some(plain), "step {step} at {at} from {from}");
                    }
                }
            }
        }
    }

    /// The same through a file's windows, needles near window boundaries.
    #[test]
    fn a_file_read_a_window_at_a_time_finds_what_memory_finds() {
        let mut data = vec![b'x'; 3 * WINDOW + 1000];
        let mut at = vec![0usize];
        for w in 1..=3 {
            at.push(w * WINDOW - 5 * w);
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
    }

    #[test]
    fn a_window_reads_no_further_than_its_table_and_its_budget() {
        let data: Vec<u8> = (0..WINDOW * 2).map(|i| i as u8).collect();
        let f = temp(&data);
        let mut w = Window::new(&f, 10, 100);
        assert_eq!(w.get(90, 10), Some(&data[100..110]));
        assert_eq!(w.get(95, 10), None);
        assert_eq!(w.get(0, WINDOW + 1), None);
        // A read past the file's end fails part-way, over the bytes held: what was held
        // is not given out again.
        let mut w = Window::new(&f, 0, WINDOW * 3);
        assert_eq!(w.get(0, 10), Some(&data[..10]));
        assert_eq!(w.get(WINDOW * 2 - 100, 200), None);
        assert_eq!(w.get(0, 10), Some(&data[..10]));
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
