//! A task's name (`comm`) kept inline: every decoded event carries one, and a heap block per
//! event (allocated by the reader, freed by the worker) was a few % of the daemon's CPU in
//! an event storm.

use std::{fmt, ops::Deref};

/// Bytes a name can hold: the kernel's 15 and more. A sequence that is not UTF-8 reads as
/// U+FFFD (three bytes, as `from_utf8_lossy` gives one per invalid sequence); a name with
/// five or more of them is cut at a character boundary (the comm in alerts and rows is
/// shorter than `from_utf8_lossy` made it; it was never a name /proc gives as text).
const CAP: usize = 23;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm {
    len: u8,
    buf: [u8; CAP],
}

impl Comm {
    /// The kernel's NUL-padded name.
    pub fn from_kernel(c: &[u8; 16]) -> Comm {
        let n = c.iter().position(|&b| b == 0).unwrap_or(16);
        match std::str::from_utf8(&c[..n]) {
            Ok(s) => Comm::from(s),
            Err(_) => Comm::from(&*String::from_utf8_lossy(&c[..n])),
        }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `buf[..len]` is always a whole UTF-8 string (see `From<&str>`).
        unsafe { std::str::from_utf8_unchecked(&self.buf[..self.len as usize]) }
    }
}

impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        let mut n = s.len().min(CAP);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        let mut buf = [0; CAP];
        buf[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm { len: n as u8, buf }
    }
}

impl Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialEq<String> for Comm {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<Comm> for String {
    fn eq(&self, o: &Comm) -> bool {
        self == o.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(b: &[u8]) -> [u8; 16] {
        let mut c = [0; 16];
        c[..b.len()].copy_from_slice(b);
        c
    }

    #[test]
    fn names_read_as_the_kernel_wrote_them() {
        assert_eq!(Comm::from_kernel(&kernel(b"python3")), "python3");
        assert_eq!(Comm::from_kernel(&kernel(b"")), "");
        let full = [b'a'; 16];
        assert_eq!(Comm::from_kernel(&full).as_str(), "a".repeat(16));
        assert_eq!(
            Comm::from_kernel(&kernel("Web Cöntent".as_bytes())),
            "Web Cöntent"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_read_as_replacement_characters_cut_whole() {
        assert_eq!(Comm::from_kernel(&kernel(b"ab\xffc")), "ab\u{fffd}c");
        // 15 bad bytes would be 45 bytes of U+FFFD: cut at a character boundary.
        let bad = Comm::from_kernel(&kernel(&[0xff; 15]));
        assert_eq!(bad.as_str(), "\u{fffd}".repeat(CAP / 3));
        assert_eq!(Comm::from("é".repeat(20).as_str()).len(), CAP - CAP % 2);
    }
}
